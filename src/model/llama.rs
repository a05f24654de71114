//! Llama (Llama 2/3, SmolLM, TinyLlama): its config.json read into the runtime
//! [`LlamaConfig`] — the schema Mistral and Qwen2 extend ([`LlamaJson`]). A field that would
//! change the computation is read or refused by name and value, never ignored: the activation,
//! MLP biases, attention dropout, RoPE types. transformers 5 writes RoPE settings under
//! `rope_parameters`, older files use top-level `rope_theta` / `rope_scaling`: both are read
//! (DESIGN.md §6 — a reader of only one silently uses theta 10000).
//! Source: transformers `models/llama/configuration_llama.py`.

use std::path::Path;

use serde::Deserialize;

use super::decoder_config::{DecoderConfig, Deltas, Family, RopeScaling};
use super::mlp::Activation;
use crate::weights::WeightsError;

/// config.json as a Llama-family checkpoint writes it: the fields read, and those refused
/// unless they have their no-op value. Others (ids, init ranges, `use_cache`) do not change
/// what is computed.
#[derive(Deserialize)]
pub struct LlamaJson {
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub mlp_bias: Option<bool>,
    pub attention_dropout: Option<f64>,
}

impl LlamaJson {
    pub fn parse(path: &Path, text: &str) -> Result<Self, WeightsError> {
        serde_json::from_str(text)
            .map_err(|e| WeightsError::format(path, format!("not a Llama-family config: {e}")))
    }

    /// The runtime config; `qkv_bias` when the family always has q/k/v biases (Qwen2).
    pub fn resolve(self, path: &Path, qkv_bias: bool) -> Result<DecoderConfig, WeightsError> {
        let err = |detail: String| WeightsError::format(path, detail);
        let act = self.hidden_act.as_deref().unwrap_or("silu");
        let activation = Activation::from_hf(act)
            .ok_or_else(|| err(format!("hidden_act = {act:?}: {}", Activation::SUPPORTED)))?;
        if self.mlp_bias == Some(true) {
            return Err(err("mlp_bias = true: MLP biases are not implemented".into()));
        }
        if let Some(p) = self.attention_dropout.filter(|&p| p != 0.0) {
            return Err(err(format!(
                "attention_dropout = {p}: dropout on attention weights is not implemented (0.0 is)"
            )));
        }
        // rope_parameters (transformers 5) wins over the older top-level fields.
        let rope = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let (rope_theta, rope_scaling) = rope_parameters(path, rope, self.rope_theta, 10_000.0)?;
        let heads = self.num_attention_heads;
        DecoderConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / heads.max(1)),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias: qkv_bias || self.attention_bias.unwrap_or(false),
            deltas: Deltas {
                activation,
                ..Deltas::default()
            },
            moe: None,
            family: if qkv_bias {
                Family::Qwen2
            } else {
                Family::Llama
            },
        }
        .validated(path)
    }
}

/// RoPE's base and scaling from one `rope_parameters` (or older `rope_scaling`) object, with
/// `theta` (top-level `rope_theta`) or else `default_theta` where it names no base.
pub fn rope_parameters(
    path: &Path,
    rope: Option<&serde_json::Value>,
    theta: Option<f64>,
    default_theta: f64,
) -> Result<(f64, RopeScaling), WeightsError> {
    let err = |detail: String| WeightsError::format(path, detail);
    let rope_theta = rope
        .and_then(|r| r.get("rope_theta"))
        .and_then(serde_json::Value::as_f64)
        .or(theta)
        .unwrap_or(default_theta);
    let rope_type = rope
        .and_then(|r| r.get("rope_type").or(r.get("type")))
        .and_then(|t| t.as_str());
    let scaling = match rope_type {
        None | Some("default") => RopeScaling::None,
        Some("llama3") => RopeScaling::Llama3(
            serde_json::from_value(rope.cloned().unwrap_or_default())
                .map_err(|e| err(format!("llama3 rope scaling: {e}")))?,
        ),
        Some("linear") => match rope.and_then(|r| r.get("factor")).and_then(|f| f.as_f64()) {
            Some(factor) if factor > 0.0 => RopeScaling::Linear { factor },
            other => {
                return Err(err(format!(
                    "linear rope scaling needs a positive factor (got {other:?})"
                )));
            }
        },
        Some(other) => {
            return Err(err(format!(
                "rope_type `{other}` is not supported (default, llama3, linear are)"
            )));
        }
    };
    Ok((rope_theta, scaling))
}

/// A Llama config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    LlamaJson::parse(path, text)?.resolve(path, false)
}
