//! The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM2, TinyLlama) in burn, in HF
//! layout: field names are the checkpoint's, every weight is [out, in], so loading needs no
//! transposes. Pre-norm blocks: x + attn(rms(x)), then x + mlp(rms(x)); SwiGLU MLP; grouped-
//! query attention with HF rotate_half RoPE; causal + padding mask; tied or separate LM head.
//! Source: transformers `models/llama/modeling_llama.py` (eager attention path).

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::attention::{
    Attention, KvCache, LayerCache, MaskSource, QkvProjection, positions, softcap,
};
use super::decoder_config::{DecoderConfig, NormPlacement, QkNorm};
use super::frozen::FrozenWeight;
use super::linear::{Linear, take1};
use super::mlp::{FeedForward, GateUpProjection, LLAMA_PROJECTIONS, Mlp};
use super::moe::{RouterLoad, Routes, SparseMoe, token_mask};
use super::norm::RmsNorm;
use super::rope::{RopeFrequencies, RopeTables};
use crate::dtype::Dtype;
use crate::transfer;
use crate::weights::WeightsError;
use crate::weights::host::HostTensors;

/// A layer's RMSNorms by where they sit (which of them a family has: [`NormPlacement`]).
#[derive(Debug, Clone)]
pub struct LayerNorms {
    /// On attention's input (`input_layernorm`; Llama, Gemma).
    pub attention_in: Option<RmsNorm>,
    /// On attention's output (`post_attention_layernorm` in OLMo2 and Gemma).
    pub attention_out: Option<RmsNorm>,
    /// On the MLP's input (Llama's `post_attention_layernorm`, Gemma's
    /// `pre_feedforward_layernorm`).
    pub mlp_in: Option<RmsNorm>,
    /// On the MLP's output (`post_feedforward_layernorm`; OLMo2, Gemma).
    pub mlp_out: Option<RmsNorm>,
}

impl LayerNorms {
    /// The norms the layer has.
    pub fn all(&self) -> impl Iterator<Item = &RmsNorm> {
        [
            &self.attention_in,
            &self.attention_out,
            &self.mlp_in,
            &self.mlp_out,
        ]
        .into_iter()
        .flatten()
    }

    /// The checkpoint names of [attention_in, attention_out, mlp_in, mlp_out] under `placement`.
    pub fn names(placement: NormPlacement) -> [Option<&'static str>; 4] {
        match placement {
            NormPlacement::Pre => [
                Some("input_layernorm"),
                None,
                Some("post_attention_layernorm"),
                None,
            ],
            NormPlacement::Post => [
                None,
                Some("post_attention_layernorm"),
                None,
                Some("post_feedforward_layernorm"),
            ],
            NormPlacement::Sandwich => [
                Some("input_layernorm"),
                Some("post_attention_layernorm"),
                Some("pre_feedforward_layernorm"),
                Some("post_feedforward_layernorm"),
            ],
        }
    }
}

/// `norm` applied to x, or x itself without one.
pub fn maybe_norm(norm: &Option<RmsNorm>, x: Tensor<3>) -> Tensor<3> {
    match norm {
        Some(norm) => norm.forward(x),
        None => x,
    }
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub norms: LayerNorms,
    pub self_attn: Attention,
    pub mlp: FeedForward,
    /// Scales each block's output before the residual add (Granite; 1 elsewhere).
    pub residual_multiplier: f64,
    /// Attention limited to the model's sliding window ([`LayerInputs::mask_of`]).
    pub sliding: bool,
}

impl DecoderLayer {
    /// x: [b, s, hidden] → same, with the norms before and/or after each block
    /// ([`LayerNorms`]).
    pub fn forward(
        &self,
        x: Tensor<3>,
        inputs: &LayerInputs,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        self.forward_routed(x, inputs, cache).0
    }

    /// [`Self::forward`], and a sparse MLP's routes.
    pub fn forward_routed(
        &self,
        x: Tensor<3>,
        inputs: &LayerInputs,
        cache: Option<&mut LayerCache>,
    ) -> (Tensor<3>, Option<Routes>) {
        let (rope, mask) = (inputs.rope_of(self), inputs.mask_of(self));
        let scaled = |t: Tensor<3>| match self.residual_multiplier {
            1.0 => t,
            m => t.mul_scalar(m),
        };
        let n = &self.norms;
        let attn_in = maybe_norm(&n.attention_in, x.clone());
        let attn = self.self_attn.forward(attn_in, rope, &mask.full(), cache);
        let x = x + scaled(maybe_norm(&n.attention_out, attn));
        let (mlp, routes) = self.mlp.forward_routed(maybe_norm(&n.mlp_in, x.clone()));
        (x + scaled(maybe_norm(&n.mlp_out, mlp)), routes)
    }

    /// The layer's linear layers, in [`Self::linears_mut`]'s order.
    pub fn linears(&self) -> Vec<&Linear> {
        self.named_linears().into_iter().map(|(_, l)| l).collect()
    }

    /// The layer's linear layers with their paths inside it, in HF module order (Phi-3 defines
    /// `o_proj` before `qkv_proj`): seven, or four with fused projections.
    pub fn named_linears(&self) -> Vec<(String, &Linear)> {
        let (a, m) = (&self.self_attn, &self.mlp);
        let attn = a
            .qkv
            .named()
            .into_iter()
            .map(|(n, l)| (format!("self_attn.{n}"), l));
        let o = ("self_attn.o_proj".to_string(), &a.o_proj);
        let mut all: Vec<(String, &Linear)> = match a.qkv {
            QkvProjection::Fused { .. } => std::iter::once(o).chain(attn).collect(),
            QkvProjection::Separate { .. } => attn.chain(std::iter::once(o)).collect(),
        };
        all.extend(m.named());
        all
    }

    /// [`Self::named_linears`], mutable.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let fused = matches!(self.self_attn.qkv, QkvProjection::Fused { .. });
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        let attn = a
            .qkv
            .named_mut()
            .into_iter()
            .map(|(n, l)| (format!("self_attn.{n}"), l));
        let o = ("self_attn.o_proj".to_string(), &mut a.o_proj);
        let mut all: Vec<(String, &mut Linear)> = if fused {
            std::iter::once(o).chain(attn).collect()
        } else {
            attn.chain(std::iter::once(o)).collect()
        };
        all.extend(m.named_mut());
        all
    }
}

/// What every layer shares for one batch: each token's rotary tables and the attention masks.
#[derive(Debug, Clone)]
pub struct LayerInputs {
    pub rope: RopeTables,
    /// Causal, padding and packing, [b, 1, s, t] (built on the device, as a whole or by block).
    pub mask: MaskSource,
    /// The same with the sliding window's limit, for the layers that have one.
    pub windowed_mask: Option<MaskSource>,
    /// The sliding-window layers' own rotary tables (Gemma 3).
    pub local_rope: Option<RopeTables>,
}

impl LayerInputs {
    /// `mask` and `window` as [`MaskSource::new`] takes them (`start` positions already
    /// cached), with the rotary tables of `positions`.
    fn new(
        model: &Decoder,
        positions: &[Vec<usize>],
        attention_mask: &[Vec<u8>],
        s: usize,
        start: usize,
    ) -> Self {
        let device = &model.device;
        let window = model.config.deltas.sliding_window.as_ref();
        Self {
            rope: model.rope.tables(positions, device),
            mask: MaskSource::new(attention_mask, s, start, None, device),
            windowed_mask: window
                .map(|w| MaskSource::new(attention_mask, s, start, Some(w.size), device)),
            local_rope: (model.local_rope.as_ref()).map(|rope| rope.tables(positions, device)),
        }
    }

    /// The rotary tables `layer` rotates q and k with.
    pub fn rope_of(&self, layer: &DecoderLayer) -> &RopeTables {
        match (&self.local_rope, layer.sliding) {
            (Some(local), true) => local,
            _ => &self.rope,
        }
    }

    /// The mask `layer` attends through.
    pub fn mask_of(&self, layer: &DecoderLayer) -> &MaskSource {
        match (&self.windowed_mask, layer.sliding) {
            (Some(windowed), true) => windowed,
            _ => &self.mask,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    pub config: DecoderConfig,
    /// [vocab, hidden]: f32, or a GGUF's blocks (`model.keep_quantized`), which the lookup
    /// decodes row by row and the tied head chunk by chunk.
    pub embed_tokens: FrozenWeight,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// None when tied: logits = h·Eᵀ.
    pub lm_head: Option<Linear>,
    /// Training recomputes each decoder layer in backward instead of keeping its activations
    /// (transformers' `gradient_checkpointing`; `train::derived`). Off by default.
    pub gradient_checkpointing: bool,
    /// Training adds this times the router load-balancing loss ([`RouterLoad`]) of a mixture
    /// of experts (`train.router_aux_loss_coef`). 0 by default.
    pub router_aux_loss_coef: f64,
    /// Preference tuning (`train.method = "dpo" | "simpo"`): the loss of preference batches.
    pub preference: Option<crate::train::preference::PreferenceLoss>,
    /// The metrics of the preference micro-batches computed since the trainer last took them.
    pub preference_metrics: std::cell::RefCell<Vec<crate::train::metrics::PreferenceMetrics>>,
    /// What the tied head's product computes in (`AdaptedModel::compute_in`); the linears carry
    /// their own.
    pub compute: Dtype,
    rope: RopeFrequencies,
    /// The sliding-window layers' own (Gemma 3).
    local_rope: Option<RopeFrequencies>,
    device: Device,
}

impl Decoder {
    /// Builds the model from `w`, taking every tensor it needs; `w.finish()` then proves nothing
    /// in the checkpoint was left unused.
    pub fn load(
        config: DecoderConfig,
        mut w: HostTensors,
        device: &Device,
    ) -> Result<Self, WeightsError> {
        let c = &config;
        let (hd, q_out, kv_out) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        // Gemma's RMSNorm multiplies by (1 + w): the offset is folded in once here.
        let offset = if c.deltas.norm_weight_offset {
            1.0
        } else {
            0.0
        };
        let rms = |w: &mut HostTensors, name: &str, size: usize| -> Result<RmsNorm, WeightsError> {
            let weight = take1(w, name, size, device)?;
            Ok(RmsNorm {
                weight: if offset == 0.0 {
                    weight
                } else {
                    weight.add_scalar(offset)
                },
                eps: c.rms_norm_eps,
            })
        };
        let norm = |w: &mut HostTensors, at: &str| rms(w, &format!("{at}.weight"), hd);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let at = format!("model.layers.{i}");
            let attn = |m: &str, out: usize, bias: bool, w: &mut HostTensors| {
                let shape = if m == "o_proj" {
                    [hd, q_out]
                } else {
                    [out, hd]
                };
                Linear::load(w, &format!("{at}.self_attn.{m}"), shape, bias, device)
            };
            let head_norm = |w: &mut HostTensors, m: &str, width: usize| {
                let size = match c.deltas.qk_norm {
                    QkNorm::None => return Ok(None),
                    QkNorm::PerHead => c.head_dim,
                    QkNorm::Projection => width,
                };
                rms(w, &format!("{at}.self_attn.{m}.weight"), size).map(Some)
            };
            let mlp = |m: &str, shape: [usize; 2], w: &mut HostTensors| {
                Linear::load(w, &format!("{at}.mlp.{m}"), shape, false, device)
            };
            layers.push(DecoderLayer {
                norms: {
                    let [attention_in, attention_out, mlp_in, mlp_out] =
                        LayerNorms::names(c.deltas.norms)
                            .map(|name| name.map(|n| norm(&mut w, &format!("{at}.{n}"))));
                    LayerNorms {
                        attention_in: attention_in.transpose()?,
                        attention_out: attention_out.transpose()?,
                        mlp_in: mlp_in.transpose()?,
                        mlp_out: mlp_out.transpose()?,
                    }
                },
                self_attn: Attention {
                    qkv: if c.deltas.fused_projections {
                        QkvProjection::Fused {
                            qkv_proj: attn("qkv_proj", q_out + 2 * kv_out, c.qkv_bias, &mut w)?,
                        }
                    } else {
                        QkvProjection::Separate {
                            q_proj: attn("q_proj", q_out, c.qkv_bias, &mut w)?,
                            k_proj: attn("k_proj", kv_out, c.qkv_bias, &mut w)?,
                            v_proj: attn("v_proj", kv_out, c.qkv_bias, &mut w)?,
                        }
                    },
                    o_proj: attn("o_proj", hd, false, &mut w)?,
                    qk_norm: c.deltas.qk_norm,
                    q_norm: head_norm(&mut w, "q_norm", q_out)?,
                    k_norm: head_norm(&mut w, "k_norm", kv_out)?,
                    scale: c
                        .deltas
                        .attention_scale
                        .unwrap_or(1.0 / (c.head_dim as f64).sqrt()),
                    softcap: c.deltas.attention_softcap,
                    n_heads: c.num_attention_heads,
                    n_kv_heads: c.num_key_value_heads,
                    head_dim: c.head_dim,
                },
                mlp: match &c.moe {
                    Some(moe) if moe.sparse_layers[i] => FeedForward::Sparse(SparseMoe::load(
                        &mut w,
                        &format!("{at}.{}", moe.block),
                        moe,
                        hd,
                        c.deltas.activation,
                        device,
                    )?),
                    _ => FeedForward::Dense(Mlp {
                        gate_up: if c.deltas.fused_projections {
                            let shape = [2 * c.intermediate_size, hd];
                            GateUpProjection::Fused {
                                gate_up_proj: mlp("gate_up_proj", shape, &mut w)?,
                            }
                        } else {
                            GateUpProjection::Separate {
                                gate_proj: mlp("gate_proj", [c.intermediate_size, hd], &mut w)?,
                                up_proj: mlp("up_proj", [c.intermediate_size, hd], &mut w)?,
                            }
                        },
                        down_proj: mlp("down_proj", [hd, c.intermediate_size], &mut w)?,
                        activation: c.deltas.activation,
                        names: LLAMA_PROJECTIONS,
                    }),
                },
                residual_multiplier: c.deltas.residual_multiplier,
                sliding: c
                    .deltas
                    .sliding_window
                    .as_ref()
                    .is_some_and(|w| w.layers[i]),
            });
        }
        let embed_tokens = FrozenWeight::new(
            w.take_embedding("model.embed_tokens.weight", [c.vocab_size, hd])?,
            device,
        );
        let norm = norm(&mut w, "model.norm")?;
        let lm_head = if c.tie_word_embeddings {
            w.ignore("lm_head.weight"); // some tied checkpoints store the copy anyway
            None
        } else {
            Some(Linear::load(
                &mut w,
                "lm_head",
                [c.vocab_size, hd],
                false,
                device,
            )?)
        };
        w.finish()?;
        let (rope, local_rope) = (RopeFrequencies::global(c), RopeFrequencies::local(c));
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            gradient_checkpointing: false,
            router_aux_loss_coef: 0.0,
            preference: None,
            preference_metrics: Default::default(),
            compute: Dtype::F32,
            rope,
            local_rope,
            device: device.clone(),
        })
    }

    /// Every linear layer with its HF module path, in the order of `LlamaConfig::linear_sites`.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut all = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let named = layer.linears_mut();
            all.extend(
                named
                    .into_iter()
                    .map(|(n, l)| (format!("model.layers.{i}.{n}"), l)),
            );
        }
        if let Some(head) = &mut self.lm_head {
            all.push(("lm_head".to_string(), head));
        }
        all
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// ids: one row per sequence, all of length s; attention_mask (same shape): 0 = padding,
    /// otherwise the number of the example the token belongs to (all 1 unless packed: a packed
    /// row's examples never attend to each other and each starts at position 0).
    /// → logits [batch, s, vocab].
    pub fn forward(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u8>]) -> Tensor<3> {
        self.head(self.hidden(ids, attention_mask))
    }

    /// The head at flat positions `at` (row · s + column) of final-norm hidden states
    /// x [b, s, hidden] → [at.len(), vocab]. The loss needs logits only where a label follows;
    /// skipping the rest saves the head's matmul and the vocabulary-sized buffers autodiff keeps
    /// for them.
    pub fn head_at(&self, x: Tensor<3>, at: &[i64]) -> Tensor<2> {
        let [b, s, hd] = x.dims();
        let at_ =
            transfer::upload::<1, Int>(TensorData::new(at.to_vec(), [at.len()]), &self.device);
        let x = x
            .reshape([b * s, hd])
            .select(0, at_)
            .reshape([1, at.len(), hd]);
        let logits = self.head(x);
        let v = logits.dims()[2];
        logits.reshape([at.len(), v])
    }

    /// The final-norm hidden states of a batch, [batch, s, hidden].
    pub fn hidden(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u8>]) -> Tensor<3> {
        let inputs = self.layer_inputs(attention_mask);
        self.run(ids, &inputs, None)
    }

    /// [`Self::hidden`], and the router load of its sparse layers over the unpadded tokens
    /// (None without any).
    pub fn hidden_and_router_load(
        &self,
        ids: &[Vec<u32>],
        attention_mask: &[Vec<u8>],
    ) -> (Tensor<3>, Option<RouterLoad>) {
        let inputs = self.layer_inputs(attention_mask);
        let (mask, kept) = token_mask(attention_mask, &self.device);
        let mut load: Option<RouterLoad> = None;
        let mut x = self.embed(ids);
        for layer in &self.layers {
            let (y, routes) = layer.forward_routed(x, &inputs, None);
            if let (Some(routes), FeedForward::Sparse(moe)) = (routes, &layer.mlp) {
                let this = routes.load(moe.routing, &mask, kept);
                load = Some(match load {
                    Some(load) => load + this,
                    None => this,
                });
            }
            x = y;
        }
        (self.norm.forward(x), load)
    }

    /// The rotary tables and causal/padding/packing mask of a batch (`hidden`'s arguments).
    pub fn layer_inputs(&self, attention_mask: &[Vec<u8>]) -> LayerInputs {
        let s = attention_mask.first().map_or(0, Vec::len);
        let positions: Vec<Vec<usize>> = attention_mask.iter().map(|m| positions(m)).collect();
        LayerInputs::new(self, &positions, attention_mask, s, 0)
    }

    /// Token embeddings [b, s, hidden] of equal-length rows.
    pub fn embed(&self, ids: &[Vec<u32>]) -> Tensor<3> {
        let (b, s) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat: Vec<i64> = ids.iter().flatten().map(|&t| i64::from(t)).collect();
        let flat = transfer::upload::<1, Int>(TensorData::new(flat, [b * s]), &self.device);
        let x = (self.embed_tokens.rows(flat)).reshape([b, s, self.config.hidden_size]);
        match self.config.deltas.embedding_multiplier {
            1.0 => x,
            m => x.mul_scalar(m),
        }
    }

    /// The LM head (or the tied embedding), logits divided by Granite's `logits_scaling` and
    /// soft-capped as Gemma 2's: [b, s, hidden] → [b, s, vocab].
    fn head(&self, x: Tensor<3>) -> Tensor<3> {
        let logits = self.unscaled_head(x);
        let logits = match self.config.deltas.logits_scaling {
            1.0 => logits,
            d => logits.div_scalar(d),
        };
        match self.config.deltas.logit_softcap {
            Some(cap) => softcap(logits, cap),
            None => logits,
        }
    }

    fn unscaled_head(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => {
                let [b, s, hd] = x.dims();
                let v = self.config.vocab_size;
                let x = x.reshape([b * s, hd]);
                (self.embed_tokens.product_nt(x, self.compute)).reshape([b, s, v])
            }
        }
    }

    /// Whether a cache of `cached` positions must be recomputed before the sequence grows to
    /// `total`: LongRoPE switches to its long factors once the positions pass the original
    /// context, and transformers then rotates every key again (Phi-3's
    /// `prepare_inputs_for_generation` drops a cache that holds only short-factor keys).
    pub fn cache_outdated(&self, cached: usize, total: usize) -> bool {
        self.rope
            .long
            .as_ref()
            .is_some_and(|(_, original)| cached <= *original && total > *original)
    }

    /// Feeds `ids` (one sequence) after the positions in `cache`, appending to it.
    /// → logits of the last position, [vocab].
    pub fn forward_cached(&self, ids: &[u32], cache: &mut KvCache) -> Tensor<1> {
        if cache.layers.is_empty() {
            cache.layers = vec![LayerCache::default(); self.layers.len()];
        }
        let start = cache.len;
        let positions = [(start..start + ids.len()).collect()];
        let inputs = LayerInputs::new(
            self,
            &positions,
            &[vec![1; start + ids.len()]],
            ids.len(),
            start,
        );
        let logits = self.head(self.run(&[ids.to_vec()], &inputs, Some(&mut cache.layers)));
        cache.len += ids.len();
        let v = self.config.vocab_size;
        logits.narrow(1, ids.len() - 1, 1).reshape([v])
    }

    /// The decoder proper: embeddings, layers (rotating by each token's position), final norm.
    fn run(
        &self,
        ids: &[Vec<u32>],
        inputs: &LayerInputs,
        mut cache: Option<&mut Vec<LayerCache>>,
    ) -> Tensor<3> {
        let mut x = self.embed(ids);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[i]);
            x = layer.forward(x, inputs, layer_cache);
        }
        self.norm.forward(x)
    }
}
