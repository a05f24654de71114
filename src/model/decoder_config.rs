//! The shape of a Llama-family decoder, one runtime [`DecoderConfig`] whichever family file
//! (`llama`, `mistral`, `qwen2`, `qwen3`, `granite`, `olmo2`, `gemma2`, `gemma3`, `phi3`) read its
//! config.json, or `gguf_config` a GGUF file's metadata. Field names follow config.json. Also what the shape implies: the linear
//! layers LoRA may target, the parameter count, llama.cpp's architecture name.

use std::path::Path;

use serde::Deserialize;

use super::mlp::Activation;
use super::moe::MoeConfig;
use crate::lora::targets::LinearSite;
use crate::weights::WeightsError;

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
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
    Mixtral,
    GraniteMoe,
}

impl Family {
    /// The mixture-of-experts families.
    pub fn is_moe(self) -> bool {
        matches!(
            self,
            Self::Qwen2Moe | Self::Qwen3Moe | Self::Olmoe | Self::Mixtral | Self::GraniteMoe
        )
    }

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
            Self::Qwen2Moe => "qwen2moe",
            Self::Qwen3Moe => "qwen3moe",
            Self::Olmoe => "olmoe",
            // llama.cpp writes Mixtral as `llama` with expert tensors.
            Self::Mixtral => "llama",
            Self::GraniteMoe => "granitemoe",
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
    /// Mixture-of-experts layers (Qwen3-MoE, OLMoE); None in a dense decoder.
    pub moe: Option<MoeConfig>,
    pub family: Family,
}

impl DecoderConfig {
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
            let modules: &[(&str, usize, usize)] = if let Some(moe) = self.sparse(layer) {
                let attention = [
                    ("self_attn.q_proj".to_string(), h, q),
                    ("self_attn.k_proj".to_string(), h, kv),
                    ("self_attn.v_proj".to_string(), h, kv),
                    ("self_attn.o_proj".to_string(), q, h),
                ];
                let experts = (0..moe.num_experts).flat_map(|e| {
                    let modules = moe.expert_modules(h).into_iter();
                    let block = moe.block;
                    modules.map(move |(m, i, o)| (format!("{block}.experts.{e}.{m}"), i, o))
                });
                let shared = moe.shared_expert_intermediate_size.map(|w| {
                    [
                        ("mlp.shared_expert.gate_proj".to_string(), h, w),
                        ("mlp.shared_expert.up_proj".to_string(), h, w),
                        ("mlp.shared_expert.down_proj".to_string(), w, h),
                        ("mlp.shared_expert_gate".to_string(), h, 1),
                    ]
                });
                let all = attention
                    .into_iter()
                    .chain(experts)
                    .chain(shared.into_iter().flatten());
                for (m, in_features, out_features) in all {
                    sites.push(LinearSite {
                        path: format!("model.layers.{layer}.{m}"),
                        layer: Some(layer),
                        in_features,
                        out_features,
                    });
                }
                continue;
            } else if self.deltas.fused_projections {
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
        let routers: usize = (0..self.num_hidden_layers)
            .filter_map(|layer| self.sparse(layer))
            .map(|moe| moe.num_experts * h)
            .sum();
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        (self.vocab_size * h + linear + biases + norms + routers + head) as u64
    }

    /// Parameters one token passes through: all but the experts a token is not routed to
    /// (`parameter_count` in a dense model).
    pub fn active_parameters(&self) -> u64 {
        let idle: usize = (0..self.num_hidden_layers)
            .filter_map(|layer| self.sparse(layer))
            .map(|moe| {
                let expert: usize = (moe.expert_modules(self.hidden_size).iter())
                    .map(|(_, i, o)| i * o)
                    .sum();
                (moe.num_experts - moe.top_k) * expert
            })
            .sum();
        self.parameter_count() - idle as u64
    }

    /// The layer's experts, where `layer` is a mixture-of-experts layer.
    pub fn sparse(&self, layer: usize) -> Option<&MoeConfig> {
        self.moe.as_ref().filter(|moe| moe.sparse_layers[layer])
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
