//! The BERT-family encoder (BERT, MiniLM, all-MiniLM-L6-v2) in burn, in HF layout: word +
//! position + token-type embeddings and a LayerNorm, then post-LN layers — a = LN(x + attn(x)),
//! y = LN(a + dense(gelu(dense(a)))) — and the pooler (tanh of a dense layer on the first token)
//! that `BertForSequenceClassification` classifies from. Bidirectional attention with a padding
//! mask. Module paths are those of `BertForSequenceClassification` (`bert.encoder.layer.N…`),
//! so adapters carry PEFT's key names; checkpoints saved as a bare `BertModel` (no `bert.`
//! prefix, as all-MiniLM-L6-v2) load too. Source: transformers `models/bert/modeling_bert.py`.

use std::path::Path;

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::Deserialize;

use super::linear::{Linear, take1, take2};
use super::norm::LayerNorm;
use crate::lora::targets::LinearSite;
use crate::transfer;
use crate::weights::WeightsError;
use crate::weights::host::HostTensors;

/// The encoder's shape, from config.json (only the fields we use).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
    /// Dropout before the classifier (`classifier_dropout`, else `hidden_dropout_prob`).
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu_name() -> String {
    "gelu".into()
}
fn dropout() -> f64 {
    0.1
}

/// The module path prefix of the encoder inside `BertForSequenceClassification`.
pub const PREFIX: &str = "bert";

impl BertConfig {
    /// Parses an HF config.json whose `model_type` is `bert`.
    pub fn from_json(path: &Path, text: &str) -> Result<Self, WeightsError> {
        let err = |detail: String| WeightsError::format(path, detail);
        let c: Self =
            serde_json::from_str(text).map_err(|e| err(format!("not a BERT config: {e}")))?;
        if c.hidden_act != "gelu" {
            return Err(err(format!(
                "hidden_act `{}` is not supported (only BERT's exact `gelu`)",
                c.hidden_act
            )));
        }
        if let Some(kind) = c
            .position_embedding_type
            .as_deref()
            .filter(|k| *k != "absolute")
        {
            return Err(err(format!(
                "position_embedding_type `{kind}` is not supported (only `absolute`)"
            )));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        Ok(c)
    }

    pub fn classifier_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// Every linear layer, in model order, with its `BertForSequenceClassification` path.
    pub fn linear_sites(&self) -> Vec<LinearSite> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let mut sites = Vec::with_capacity(self.num_hidden_layers * 6 + 1);
        for layer in 0..self.num_hidden_layers {
            for (m, inp, out) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", h, i),
                ("output.dense", i, h),
            ] {
                sites.push(LinearSite {
                    path: format!("{PREFIX}.encoder.layer.{layer}.{m}"),
                    layer: Some(layer),
                    in_features: inp,
                    out_features: out,
                });
            }
        }
        sites.push(LinearSite {
            path: format!("{PREFIX}.pooler.dense"),
            layer: None,
            in_features: h,
            out_features: h,
        });
        sites
    }

    /// Parameters of the encoder with its pooler.
    pub fn parameter_count(&self) -> u64 {
        let (h, i) = (self.hidden_size as u64, self.intermediate_size as u64);
        let embeddings =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) as u64 * h
                + 2 * h;
        let layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
        embeddings + self.num_hidden_layers as u64 * layer + h * h + h
    }
}

#[derive(Debug, Clone)]
pub struct BertLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    /// `attention.output.dense` and its LayerNorm.
    pub attention_output: Linear,
    pub attention_norm: LayerNorm,
    pub intermediate: Linear,
    /// `output.dense` and its LayerNorm.
    pub output: Linear,
    pub output_norm: LayerNorm,
    pub n_heads: usize,
}

impl BertLayer {
    /// The layer's six linear layers, in `Bert::linears_mut`'s order.
    pub fn linears(&self) -> [&Linear; 6] {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
    }

    /// x: [b, s, h], mask: [b, 1, 1, s] (true = padding key) → [b, s, h].
    pub fn forward(&self, x: Tensor<3>, mask: &Tensor<4, Bool>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let (n, d) = (self.n_heads, h / self.n_heads);
        let heads = |t: Tensor<3>| t.reshape([b, s, n, d]).swap_dims(1, 2); // [b, n, s, d]
        let q = heads(self.query.forward(x.clone()));
        let k = heads(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x.clone()));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (d as f64).sqrt()); // [b, n, s, s]
        let scores = scores.mask_fill(mask.clone().expand([b, n, s, s]), f32::MIN);
        let context = softmax(scores, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, s, h]);
        let a = self
            .attention_norm
            .forward(self.attention_output.forward(context) + x);
        let y = self
            .output
            .forward(gelu(self.intermediate.forward(a.clone())));
        self.output_norm.forward(y + a)
    }
}

#[derive(Debug, Clone)]
pub struct Bert {
    pub config: BertConfig,
    /// [vocab, h], [max_positions, h], [type_vocab, h]
    pub word_embeddings: Tensor<2>,
    pub position_embeddings: Tensor<2>,
    pub token_type_embeddings: Tensor<2>,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<BertLayer>,
    /// `pooler.dense`; None when the checkpoint has no pooler (then only mean pooling works).
    pub pooler: Option<Linear>,
    device: Device,
}

impl Bert {
    /// Builds the encoder from `w` (keys with or without the `bert.` prefix); a classifier
    /// stored beside it is ignored (the head is built from the data's labels).
    pub fn load(config: BertConfig, w: HostTensors, device: &Device) -> Result<Self, WeightsError> {
        let mut w = w.strip_prefix(&format!("{PREFIX}."));
        for ignored in [
            "embeddings.position_ids",
            "classifier.weight",
            "classifier.bias",
        ] {
            w.ignore(ignored);
        }
        let c = &config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let norm = |w: &mut HostTensors, at: &str| -> Result<LayerNorm, WeightsError> {
            Ok(LayerNorm {
                weight: take1(w, &format!("{at}.weight"), h, device)?,
                bias: take1(w, &format!("{at}.bias"), h, device)?,
                eps: c.layer_norm_eps,
            })
        };
        let word_embeddings = take2(
            &mut w,
            "embeddings.word_embeddings.weight",
            [c.vocab_size, h],
            device,
        )?;
        let position_embeddings = take2(
            &mut w,
            "embeddings.position_embeddings.weight",
            [c.max_position_embeddings, h],
            device,
        )?;
        let token_type_embeddings = take2(
            &mut w,
            "embeddings.token_type_embeddings.weight",
            [c.type_vocab_size, h],
            device,
        )?;
        let embeddings_norm = norm(&mut w, "embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            let at = format!("encoder.layer.{n}");
            let mut linear = |m: &str, shape: [usize; 2]| {
                Linear::load(&mut w, &format!("{at}.{m}"), shape, true, device)
            };
            let (query, key, value) = (
                linear("attention.self.query", [h, h])?,
                linear("attention.self.key", [h, h])?,
                linear("attention.self.value", [h, h])?,
            );
            let attention_output = linear("attention.output.dense", [h, h])?;
            let intermediate = linear("intermediate.dense", [i, h])?;
            let output = linear("output.dense", [h, i])?;
            layers.push(BertLayer {
                query,
                key,
                value,
                attention_output,
                attention_norm: norm(&mut w, &format!("{at}.attention.output.LayerNorm"))?,
                intermediate,
                output,
                output_norm: norm(&mut w, &format!("{at}.output.LayerNorm"))?,
                n_heads: c.num_attention_heads,
            });
        }
        let pooler = if w.contains("pooler.dense.weight") {
            Some(Linear::load(&mut w, "pooler.dense", [h, h], true, device)?)
        } else {
            None
        };
        w.finish()?;
        Ok(Self {
            config,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            layers,
            pooler,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every linear layer with its module path, in the order of `BertConfig::linear_sites`.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut all = Vec::with_capacity(self.layers.len() * 6 + 1);
        for (n, l) in self.layers.iter_mut().enumerate() {
            let named = [
                ("attention.self.query", &mut l.query),
                ("attention.self.key", &mut l.key),
                ("attention.self.value", &mut l.value),
                ("attention.output.dense", &mut l.attention_output),
                ("intermediate.dense", &mut l.intermediate),
                ("output.dense", &mut l.output),
            ];
            all.extend(named.map(|(m, l)| (format!("{PREFIX}.encoder.layer.{n}.{m}"), l)));
        }
        if let Some(pooler) = &mut self.pooler {
            all.push((format!("{PREFIX}.pooler.dense"), pooler));
        }
        all
    }

    /// ids: equal-length rows; attention_mask: 0 = padding. Token types are all 0 (one
    /// segment). → last hidden states [b, s, h].
    pub fn forward(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u8>]) -> Tensor<3> {
        let mut x = self.embed(ids);
        let mask = self.padding_mask(attention_mask);
        for layer in &self.layers {
            x = layer.forward(x, &mask);
        }
        x
    }

    /// The embeddings' output (words + positions + token type 0, normed): [b, s, h].
    pub fn embed(&self, ids: &[Vec<u32>]) -> Tensor<3> {
        let (b, s) = (ids.len(), ids.first().map_or(0, Vec::len));
        let h = self.config.hidden_size;
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| i64::from(t)).collect();
        let flat = transfer::upload::<1, Int>(TensorData::new(flat, [b * s]), &self.device);
        let words = self
            .word_embeddings
            .clone()
            .select(0, flat)
            .reshape([b, s, h]);
        let positions = self
            .position_embeddings
            .clone()
            .narrow(0, 0, s)
            .reshape([1, s, h]);
        let types = self
            .token_type_embeddings
            .clone()
            .narrow(0, 0, 1)
            .reshape([1, 1, h]);
        self.embeddings_norm
            .forward(words + positions.expand([b, s, h]) + types.expand([b, s, h]))
    }

    /// [b, 1, 1, s]: true where a key is padding.
    pub fn padding_mask(&self, attention_mask: &[Vec<u8>]) -> Tensor<4, Bool> {
        let (b, s) = (
            attention_mask.len(),
            attention_mask.first().map_or(0, Vec::len),
        );
        let padding: Vec<bool> = attention_mask.iter().flatten().map(|&m| m == 0).collect();
        transfer::upload(TensorData::new(padding, [b, 1, 1, s]), &self.device)
    }

    /// The pooler's output: tanh(dense(h[:, 0])), [b, h]. None without pooler weights.
    pub fn pool(&self, hidden: Tensor<3>) -> Option<Tensor<2>> {
        let [b, _, h] = hidden.dims();
        let first = hidden.narrow(1, 0, 1); // [b, 1, h]
        let pooler = self.pooler.as_ref()?;
        Some(pooler.forward(first).reshape([b, h]).tanh())
    }
}
