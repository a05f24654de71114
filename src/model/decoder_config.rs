//! The shape of a Llama-family decoder, one runtime [`LlamaConfig`] whichever family file
//! (`llama`, `mistral`, `qwen2`) read its config.json; and the same read from a GGUF file's
//! `<arch>.*` metadata. Field names follow config.json. Also what the shape implies: the linear
//! layers LoRA may target, the parameter count, llama.cpp's architecture name.

use std::path::Path;

use serde::Deserialize;

use super::mlp::Activation;
use crate::lora::targets::LinearSite;
use crate::weights::WeightsError;
use crate::weights::gguf::{GgufFile, MetaValue};

/// Llama 3 frequency-dependent RoPE scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Phi-3's LongRoPE (`rope_type = "longrope"`): per-frequency divisors for positions within
/// the original context and past it, and a factor on cos and sin.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    pub original_max_position_embeddings: usize,
    pub attention_factor: f64,
}

/// How RoPE's inverse frequencies are rescaled (transformers' `rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `default`.
    None,
    /// `llama3`: frequency-dependent.
    Llama3(Llama3Scaling),
    /// `linear`: every frequency divided by `factor` (Gemma 3's global layers).
    Linear { factor: f64 },
    /// `longrope` (Phi-3).
    LongRope(LongRope),
    /// A GGUF's `rope_freqs.weight`: frequency i divided by factor i (how llama.cpp's converter
    /// stores Llama 3's scaling, and how llama.cpp applies it).
    FreqFactors(Vec<f32>),
}

/// Which RMSNorm q and k pass through before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Over each head's dimensions, one weight of head_dim shared by the heads (Qwen3).
    PerHead,
    /// Over the whole projection, weights of heads·head_dim (OLMo2).
    Projection,
}

/// Where a decoder layer normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// x + attn(norm(x)), then x + mlp(norm(x)): `input_layernorm`, `post_attention_layernorm`.
    Pre,
    /// x + norm(attn(x)), then x + norm(mlp(x)): `post_attention_layernorm`,
    /// `post_feedforward_layernorm` (OLMo2).
    Post,
    /// x + norm(attn(norm(x))), then x + norm(mlp(norm(x))): `input_layernorm`,
    /// `post_attention_layernorm`, `pre_feedforward_layernorm`, `post_feedforward_layernorm`
    /// (Gemma 2 and 3).
    Sandwich,
}

/// The family a config came from: what llama.cpp calls the architecture, and what a merged
/// model's config.json is written as when the base was a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama, Mistral, SmolLM (llama.cpp writes them all as `llama`).
    Llama,
    Qwen2,
    Qwen3,
    Granite,
    Olmo2,
    Gemma2,
    Gemma3,
    Phi3,
}

impl Family {
    /// llama.cpp's `general.architecture`.
    pub fn gguf_architecture(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Granite => "granite",
            Self::Olmo2 => "olmo2",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }
}

/// The departures from Llama's computation a family file may set; the default is Llama's.
#[derive(Debug, Clone, PartialEq)]
pub struct Deltas {
    /// An RMSNorm on q and k before RoPE (Qwen3, OLMo2).
    pub qk_norm: QkNorm,
    /// Where a layer's norms sit: before each block (Llama) or after it (OLMo2).
    pub norms: NormPlacement,
    /// Scalars (1 and None in Llama): token embeddings are multiplied by
    /// `embedding_multiplier` (Granite's; √hidden in Gemma), attention scores scaled by
    /// `attention_scale` instead of 1/√head_dim (Granite's `attention_multiplier`, Gemma's
    /// `query_pre_attn_scalar`^-½), each block's output by `residual_multiplier` before it
    /// joins the residual stream, and the logits divided by `logits_scaling` (Granite).
    pub embedding_multiplier: f64,
    pub attention_scale: Option<f64>,
    pub residual_multiplier: f64,
    pub logits_scaling: f64,
    /// Gemma's soft caps, c·tanh(x / c): on the attention scores before the mask
    /// (`attn_logit_softcapping`) and on the logits (`final_logit_softcapping`).
    pub attention_softcap: Option<f64>,
    pub logit_softcap: Option<f64>,
    /// Gemma's RMSNorms multiply by (1 + w): the stored weights are offset by one at load.
    pub norm_weight_offset: bool,
    /// The gated MLP's activation (`hidden_act`, Gemma's `hidden_activation`).
    pub activation: Activation,
    /// RoPE's base in the sliding-window layers where it differs from `rope_theta` (Gemma 3's
    /// `rope_parameters.sliding_attention`, unscaled).
    pub local_rope_theta: Option<f64>,
    /// RoPE rotates only the first this many dimensions of each head
    /// (`partial_rotary_factor` · head_dim; Phi-4-mini); None: all of them.
    pub rotary_dim: Option<usize>,
    /// q, k and v come from one `qkv_proj`, gate and up from one `gate_up_proj` (Phi-3): LoRA
    /// adapts each fused linear as one, as PEFT does.
    pub fused_projections: bool,
    /// The layers whose attention reaches back only a window of positions (Mistral's
    /// `sliding_window`, Qwen2's with `use_sliding_window`, `layer_types`).
    pub sliding_window: Option<SlidingWindow>,
}

/// A query at position i attends keys j with i − `size` < j ≤ i (transformers'
/// `sliding_window_overlay`) in the layers marked in `layers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindow {
    pub size: usize,
    /// One entry per layer: true where the window applies.
    pub layers: Vec<bool>,
}

impl SlidingWindow {
    /// `size` on every one of `n` layers (Mistral; GGUF files).
    pub fn everywhere(size: usize, n: usize) -> Self {
        Self {
            size,
            layers: vec![true; n],
        }
    }

    /// The window from transformers' `layer_types` (`"sliding_attention"` /
    /// `"full_attention"`), or None when no layer has one.
    pub fn from_layer_types(size: usize, types: &[String]) -> Option<Self> {
        let layers: Vec<bool> = types.iter().map(|t| t == "sliding_attention").collect();
        layers.contains(&true).then_some(Self { size, layers })
    }
}

impl Default for Deltas {
    fn default() -> Self {
        Self {
            qk_norm: QkNorm::None,
            norms: NormPlacement::Pre,
            embedding_multiplier: 1.0,
            attention_scale: None,
            residual_multiplier: 1.0,
            logits_scaling: 1.0,
            attention_softcap: None,
            logit_softcap: None,
            norm_weight_offset: false,
            activation: Activation::Silu,
            local_rope_theta: None,
            rotary_dim: None,
            fused_projections: false,
            sliding_window: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// What the families beyond Llama change in the computation.
    pub deltas: Deltas,
    pub family: Family,
}

impl DecoderConfig {
    /// Reads the `llama`, `qwen2` or `qwen3` metadata of a GGUF file, as transformers maps it.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, WeightsError> {
        let err = |detail: String| WeightsError::format(&file.path, detail);
        let arch = file
            .get("general.architecture")
            .and_then(MetaValue::as_str)
            .unwrap_or("?");
        let family = match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "phi3" => Family::Phi3,
            "granite" => Family::Granite,
            "olmo2" => Family::Olmo2,
            _ => {
                return Err(err(format!(
                    "GGUF architecture `{arch}` is not supported (llama, qwen2, qwen3, phi3, granite, olmo2 are)"
                )));
            }
        };
        let int = |key: &str| {
            file.get(&format!("{arch}.{key}"))
                .and_then(MetaValue::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| err(format!("{arch}.{key} is missing")))
        };
        let float = |key: &str| match file.get(&format!("{arch}.{key}")) {
            Some(MetaValue::F32(v)) => Some(f64::from(*v)),
            Some(MetaValue::F64(v)) => Some(*v),
            _ => None,
        };
        let vocab_size = match file.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(tokens)) => tokens.len(),
            _ => int("vocab_size")?,
        };
        let hidden_size = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let has = |name: &str| file.tensors.iter().any(|t| t.name == name);
        // Llama 3.1+ GGUFs carry their RoPE scaling as a tensor of per-frequency divisors.
        let rope_scaling = match file.tensors.iter().find(|t| t.name == "rope_freqs.weight") {
            Some(t) => RopeScaling::FreqFactors(file.dequantize(t)?),
            None => RopeScaling::None,
        };
        // Metadata that changes the computation and is not implemented: refused by name.
        let text = |key: &str| {
            file.get(&format!("{arch}.{key}"))
                .and_then(MetaValue::as_str)
        };
        if let Some(kind) = text("rope.scaling.type").filter(|k| *k != "none") {
            return Err(err(format!(
                "{arch}.rope.scaling.type = {kind:?}: RoPE scaling from GGUF metadata is not implemented; use the model's HF directory"
            )));
        }
        if let Some(factor) = float("rope.scaling.factor").filter(|f| *f != 0.0 && *f != 1.0) {
            return Err(err(format!(
                "{arch}.rope.scaling.factor = {factor}: RoPE scaling from GGUF metadata is not implemented; use the model's HF directory"
            )));
        }
        let present = |key: &str| int(key).ok();
        if let Some(experts) = present("expert_count").filter(|&n| n > 0) {
            return Err(err(format!(
                "{arch}.expert_count = {experts}: mixture-of-experts layers are not implemented"
            )));
        }
        // As llama.cpp: the head width is key_length (default hidden / heads); RoPE's
        // dimension_count may cover only part of it.
        let head_dim = present("attention.key_length").unwrap_or(hidden_size / heads.max(1));
        let rotary_dim = present("rope.dimension_count").filter(|&r| r != head_dim);
        if let (Some(rotary), false) = (rotary_dim, family == Family::Phi3) {
            // llama.cpp's converter permutes a `llama` file's Q/K rows over the whole head.
            return Err(err(format!(
                "{arch}.rope.dimension_count = {rotary} with heads of {head_dim}: partial rotary embeddings are implemented for phi3 files only"
            )));
        }
        // Phi-3's LongRoPE: the factor tensors and the attention factor.
        let factors = |name: &str| -> Result<Option<Vec<f64>>, WeightsError> {
            match file.tensors.iter().find(|t| t.name == name) {
                Some(t) => Ok(Some(
                    file.dequantize(t)?.into_iter().map(f64::from).collect(),
                )),
                None => Ok(None),
            }
        };
        let rope_scaling = match (
            factors("rope_factors_short.weight")?,
            factors("rope_factors_long.weight")?,
        ) {
            (Some(short_factor), Some(long_factor)) => RopeScaling::LongRope(LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: present("rope.scaling.original_context_length")
                    .ok_or_else(|| err(format!("{arch}.rope.scaling.original_context_length is missing for its LongRoPE factors")))?,
                attention_factor: float("rope.scaling.attn_factor").unwrap_or(1.0),
            }),
            (None, None) => rope_scaling,
            _ => {
                return Err(err(
                    "rope_factors_short.weight and rope_factors_long.weight come together".into(),
                ));
            }
        };
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: int("context_length").unwrap_or(2048),
            tie_word_embeddings: !has("output.weight"),
            qkv_bias: has("blk.0.attn_q.bias"),
            deltas: Deltas {
                sliding_window: present("attention.sliding_window")
                    .filter(|&w| w > 0)
                    .map(|w| SlidingWindow::everywhere(w, int("block_count").unwrap_or(0))),
                // q/k RMSNorms: per head (Qwen3: head_dim wide) or over the projection (OLMo2).
                qk_norm: match file
                    .tensors
                    .iter()
                    .find(|t| t.name == "blk.0.attn_q_norm.weight")
                {
                    Some(t) if t.n_elements() == head_dim as u64 => QkNorm::PerHead,
                    Some(_) => QkNorm::Projection,
                    None => QkNorm::None,
                },
                // OLMo2 normalises after each block: post_attention_norm / post_ffw_norm only.
                norms: if has("blk.0.post_ffw_norm.weight") && !has("blk.0.attn_norm.weight") {
                    NormPlacement::Post
                } else {
                    NormPlacement::Pre
                },
                // Granite's scalars, as llama.cpp's converter names them.
                embedding_multiplier: float("embedding_scale").unwrap_or(1.0),
                attention_scale: (family == Family::Granite)
                    .then(|| float("attention.scale").unwrap_or(1.0)),
                residual_multiplier: float("residual_scale").unwrap_or(1.0),
                logits_scaling: float("logit_scale").unwrap_or(1.0),
                fused_projections: has("blk.0.attn_qkv.weight"),
                rotary_dim,
                ..Deltas::default()
            },
            family,
        })
        .and_then(|c: Self| c.validated(&file.path))
    }

    /// llama.cpp's architecture name (Llama, Mistral and SmolLM are all `llama` there).
    pub fn gguf_architecture(&self) -> &'static str {
        self.family.gguf_architecture()
    }

    /// Every linear layer in HF module order, with its shape: the sites LoRA may target.
    pub fn linear_sites(&self) -> Vec<LinearSite> {
        let (h, q, kv, ff) = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
            self.intermediate_size,
        );
        let mut sites = Vec::with_capacity(self.num_hidden_layers * 7 + 1);
        for layer in 0..self.num_hidden_layers {
            // HF module order: Phi-3 defines o_proj before qkv_proj.
            let modules: &[(&str, usize, usize)] = if self.deltas.fused_projections {
                &[
                    ("self_attn.o_proj", q, h),
                    ("self_attn.qkv_proj", h, q + 2 * kv),
                    ("mlp.gate_up_proj", h, 2 * ff),
                    ("mlp.down_proj", ff, h),
                ]
            } else {
                &[
                    ("self_attn.q_proj", h, q),
                    ("self_attn.k_proj", h, kv),
                    ("self_attn.v_proj", h, kv),
                    ("self_attn.o_proj", q, h),
                    ("mlp.gate_proj", h, ff),
                    ("mlp.up_proj", h, ff),
                    ("mlp.down_proj", ff, h),
                ]
            };
            for &(m, in_features, out_features) in modules {
                let path = format!("model.layers.{layer}.{m}");
                sites.push(LinearSite {
                    path,
                    layer: Some(layer),
                    in_features,
                    out_features,
                });
            }
        }
        sites.push(LinearSite {
            path: "lm_head".into(),
            layer: None,
            in_features: h,
            out_features: self.vocab_size,
        });
        sites
    }

    /// Parameters of the model, a tied head counted once (as `sum(p.numel() for p in
    /// model.parameters())`).
    pub fn parameter_count(&self) -> u64 {
        let (h, q, kv) = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        );
        let linear: usize = self
            .linear_sites()
            .iter()
            .filter(|s| s.layer.is_some())
            .map(|s| s.in_features * s.out_features)
            .sum();
        let biases = if self.qkv_bias {
            (q + 2 * kv) * self.num_hidden_layers
        } else {
            0
        };
        let qk_norms = self.num_hidden_layers
            * match self.deltas.qk_norm {
                QkNorm::None => 0,
                QkNorm::PerHead => 2 * self.head_dim,
                QkNorm::Projection => q + kv,
            };
        let per_layer = match self.deltas.norms {
            NormPlacement::Pre | NormPlacement::Post => 2,
            NormPlacement::Sandwich => 4,
        };
        let norms = h * (per_layer * self.num_hidden_layers + 1) + qk_norms;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        (self.vocab_size * h + linear + biases + norms + head) as u64
    }

    pub fn validated(self, path: &Path) -> Result<Self, WeightsError> {
        let heads_ok = self.num_attention_heads > 0
            && self.num_key_value_heads > 0
            && self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
            && self.head_dim.is_multiple_of(2);
        if !heads_ok {
            return Err(WeightsError::format(
                path,
                format!(
                    "{} attention heads / {} key-value heads / head_dim {} do not form grouped-query attention",
                    self.num_attention_heads, self.num_key_value_heads, self.head_dim
                ),
            ));
        }
        let rotated = self.deltas.rotary_dim.unwrap_or(self.head_dim);
        if let RopeScaling::FreqFactors(f) = &self.rope_scaling
            && (f.len() != rotated / 2 || f.iter().any(|&x| !(x.is_finite() && x > 0.0)))
        {
            return Err(WeightsError::format(
                path,
                format!(
                    "rope_freqs.weight holds {} factors; {} positive ones (half the rotated head dimensions) are needed",
                    f.len(),
                    rotated / 2
                ),
            ));
        }
        if let Some(r) = self.deltas.rotary_dim
            && (r == 0 || r % 2 != 0 || r > self.head_dim)
        {
            return Err(WeightsError::format(
                path,
                format!(
                    "partial rotary embeddings over {r} of {} head dimensions: need an even count up to head_dim",
                    self.head_dim
                ),
            ));
        }
        if let Some(w) = &self.deltas.sliding_window
            && (w.size == 0 || w.layers.len() != self.num_hidden_layers)
        {
            return Err(WeightsError::format(
                path,
                format!(
                    "a sliding window of {} over {} layer types does not fit {} layers",
                    w.size,
                    w.layers.len(),
                    self.num_hidden_layers
                ),
            ));
        }
        Ok(self)
    }
}
