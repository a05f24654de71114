//! Sequence classification: an encoder (BERT) or decoder (Llama family) body, pooled to one
//! vector per sequence, dropout, and a linear head over the labels the training data holds.
//! The layouts are transformers': `BertForSequenceClassification` (pooler on [CLS], head
//! `classifier` with bias) and `LlamaForSequenceClassification` (the last non-padding token,
//! head `score` without bias). The head is trained in full and saved as PEFT saves
//! `modules_to_save` (`base_model.model.classifier.weight`, …).

use std::cell::Cell;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::adapted::{AdaptedModel, Parts, stream_seed};
use super::bert::Bert;
use super::decoder::Decoder;
use crate::kernels::{self, DropoutMask};
use crate::lora::adapter::standard_normal;
use crate::peft::full_key;
use crate::recipe::Pooling;
use crate::transfer;

/// Why a classifier cannot be built on a body.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error(
        "the checkpoint has no pooler (pooler.dense) for model.pooling = \"cls\"; use model.pooling = \"mean\""
    )]
    NoPooler,
    #[error("classification needs at least two labels; the training data has {0}")]
    TooFewLabels(usize),
}

/// The model under the head.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one model per process, never in a collection
pub enum Body {
    Bert(Bert),
    Decoder(Decoder),
}

/// The trainable linear head: logits = drop(pooled)·Wᵀ + b.
#[derive(Debug, Clone)]
pub struct ClassHead {
    /// `classifier` (BERT) or `score` (Llama): the module name transformers gives it.
    pub name: &'static str,
    /// [labels, hidden]
    pub weight: Tensor<2>,
    /// [1, labels]; None for a decoder's `score`.
    pub bias: Option<Tensor<2>>,
    pub dropout: f64,
    pub training: bool,
    pub dropout_rng: Cell<u64>,
}

impl ClassHead {
    /// The next dropout mask for pooled vectors shaped like `pooled` (advancing the stream), or
    /// None when not training or without dropout.
    pub fn dropout_mask(&self, pooled: &Tensor<2>) -> Option<DropoutMask> {
        (self.training && self.dropout > 0.0)
            .then(|| DropoutMask::draw(self.dropout, pooled.dims(), &self.dropout_rng))
    }
}

#[derive(Debug, Clone)]
pub struct SequenceClassifier {
    pub body: Body,
    pub head: ClassHead,
    pub pooling: Pooling,
    /// Class names; a class's index is its logit's position.
    pub labels: Vec<String>,
}

impl SequenceClassifier {
    /// A fresh head on `body` for `labels`, initialised as transformers does (weights
    /// N(0, 0.02²), bias 0) from `seed`. CLS pooling on BERT needs the checkpoint's pooler.
    pub fn new(
        mut body: Body,
        labels: Vec<String>,
        pooling: Pooling,
        seed: u64,
    ) -> Result<Self, ClassifierError> {
        if let (Body::Bert(b), Pooling::Mean) = (&mut body, pooling) {
            b.pooler = None; // unused: mean pooling reads the last hidden states
        }
        let (name, hidden, bias, dropout, device) = match &body {
            Body::Bert(b) => {
                if pooling == Pooling::Cls && b.pooler.is_none() {
                    return Err(ClassifierError::NoPooler);
                }
                (
                    "classifier",
                    b.config.hidden_size,
                    true,
                    b.config.classifier_dropout(),
                    b.device().clone(),
                )
            }
            Body::Decoder(l) => (
                "score",
                l.config.hidden_size,
                false,
                0.0,
                l.device().clone(),
            ),
        };
        if labels.len() < 2 {
            return Err(ClassifierError::TooFewLabels(labels.len()));
        }
        let n = labels.len();
        let mut rng = StdRng::seed_from_u64(stream_seed(seed, u64::MAX));
        let w: Vec<f32> = (0..n * hidden)
            .map(|_| (standard_normal(&mut rng) * 0.02) as f32)
            .collect();
        Ok(Self {
            head: ClassHead {
                name,
                weight: transfer::upload(TensorData::new(w, [n, hidden]), &device),
                bias: bias.then(|| Tensor::zeros([1, n], &device)),
                dropout,
                training: false,
                dropout_rng: Cell::new(seed),
            },
            body,
            pooling,
            labels,
        })
    }

    /// ids, attention_mask (0 = padding): equal-length rows → logits [b, labels].
    pub fn logits(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u8>]) -> Tensor<2> {
        let pooled = match (&self.body, self.pooling) {
            (Body::Bert(bert), Pooling::Cls) => {
                let hidden = bert.forward(ids, attention_mask);
                bert.pool(hidden)
                    .expect("checked in new: the pooler exists")
            }
            (Body::Bert(bert), Pooling::Mean) => {
                mean_pool(bert.forward(ids, attention_mask), attention_mask)
            }
            (Body::Decoder(llama), Pooling::Cls) => {
                last_token(llama.hidden(ids, attention_mask), attention_mask)
            }
            (Body::Decoder(llama), Pooling::Mean) => {
                mean_pool(llama.hidden(ids, attention_mask), attention_mask)
            }
        };
        let h = &self.head;
        let pooled = match h.dropout_mask(&pooled) {
            Some(mask) => kernels::dropout(pooled, mask),
            None => pooled,
        };
        let logits = pooled.matmul(h.weight.clone().transpose()); // [b, labels]
        match &h.bias {
            Some(bias) => {
                let dims = logits.dims();
                logits + bias.clone().expand(dims)
            }
            None => logits,
        }
    }

    fn device(&self) -> &Device {
        match &self.body {
            Body::Bert(b) => b.device(),
            Body::Decoder(l) => l.device(),
        }
    }
}

/// The mean of each row's real (unpadded) hidden states: [b, s, h] → [b, h].
pub fn mean_pool(hidden: Tensor<3>, attention_mask: &[Vec<u8>]) -> Tensor<2> {
    let [b, _, h] = hidden.dims();
    let weights = mean_weights(attention_mask, &hidden.device());
    weights.matmul(hidden).reshape([b, h]) // [b, 1, s]·[b, s, h]
}

/// Mean pooling as a product: [b, 1, s], 1/n at each of a row's n real tokens, 0 at padding.
pub fn mean_weights(attention_mask: &[Vec<u8>], device: &Device) -> Tensor<3> {
    let (b, s) = (
        attention_mask.len(),
        attention_mask.first().map_or(0, Vec::len),
    );
    let weights: Vec<f32> = attention_mask
        .iter()
        .flat_map(|row| {
            let n = row.iter().filter(|&&m| m != 0).count().max(1) as f32;
            row.iter().map(move |&m| if m != 0 { 1.0 / n } else { 0.0 })
        })
        .collect();
    transfer::upload(TensorData::new(weights, [b, 1, s]), device)
}

/// Each row's hidden state at its last real token: [b, s, h] → [b, h].
fn last_token(hidden: Tensor<3>, attention_mask: &[Vec<u8>]) -> Tensor<2> {
    let [b, s, h] = hidden.dims();
    let at = last_tokens(attention_mask, &hidden.device());
    hidden.reshape([b * s, h]).select(0, at)
}

/// The flat position (row · s + column) of each row's last real token → [b].
pub fn last_tokens(attention_mask: &[Vec<u8>], device: &Device) -> Tensor<1, Int> {
    let s = attention_mask.first().map_or(0, Vec::len);
    let at: Vec<i64> = attention_mask
        .iter()
        .enumerate()
        .map(|(r, row)| (r * s + row.iter().rposition(|&m| m != 0).unwrap_or(0)) as i64)
        .collect();
    let n = at.len();
    transfer::upload(TensorData::new(at, [n]), device)
}

impl AdaptedModel for SequenceClassifier {
    fn device(&self) -> &Device {
        SequenceClassifier::device(self)
    }

    fn parts_mut(&mut self) -> Parts<'_> {
        let linears = match &mut self.body {
            Body::Bert(b) => b.linears_mut(),
            Body::Decoder(l) => l.linears_mut(),
        };
        let h = &mut self.head;
        // PEFT saves modules_to_save under the module's own path.
        let mut heads = vec![(full_key(h.name, "weight"), &mut h.weight)];
        if let Some(bias) = &mut h.bias {
            heads.push((full_key(h.name, "bias"), bias));
        }
        (linears, heads)
    }

    fn set_training(&mut self, training: bool) {
        for (_, a) in self.adapters_mut() {
            a.training = training;
        }
        self.head.training = training;
    }

    fn seed_dropout(&mut self, seed: u64) {
        for (n, (_, a)) in self.adapters_mut().into_iter().enumerate() {
            a.dropout_rng.set(stream_seed(seed, n as u64));
        }
        self.head.dropout_rng.set(stream_seed(seed, u64::MAX));
    }
}
