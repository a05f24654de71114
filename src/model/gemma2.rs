//! Gemma 2: a Llama-family decoder with token embeddings times √hidden, RMSNorms that multiply
//! by (1 + w), a norm before and after both attention and MLP (sandwich), a GeGLU MLP
//! (`hidden_activation`, tanh-approximated GELU), attention scores scaled by
//! `query_pre_attn_scalar`^-½ and soft-capped (`attn_logit_softcapping`), soft-capped logits
//! (`final_logit_softcapping`), and a sliding window on every other layer (`layer_types`).
//! Gemma 3 ([`super::gemma3`]) reads the same fields with its own defaults ([`GemmaDefaults`]).
//! Source: transformers `models/gemma2/{configuration,modeling}_gemma2.py`.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::decoder_config::{DecoderConfig, Deltas, Family, NormPlacement, SlidingWindow};
use super::llama::LlamaJson;
use super::mlp::Activation;
use crate::weights::WeightsError;

/// Gemma2Config's (and Gemma3TextConfig's) own fields; the soft caps and the window are read
/// from the JSON value, where null (none) and absent (the default) differ.
#[derive(Deserialize)]
struct GemmaJson {
    hidden_activation: Option<String>,
    query_pre_attn_scalar: Option<f64>,
    layer_types: Option<Vec<String>>,
    use_bidirectional_attention: Option<bool>,
    tie_word_embeddings: Option<bool>,
    head_dim: Option<usize>,
    num_hidden_layers: usize,
}

/// What Gemma 2 and Gemma 3 configs default to where they differ.
pub struct GemmaDefaults {
    /// `attn_logit_softcapping`, `final_logit_softcapping` when absent.
    pub softcaps: (Option<f64>, Option<f64>),
    /// Every `pattern`-th layer has full attention, the others the window (without
    /// `layer_types`).
    pub pattern: usize,
    pub family: Family,
}

/// A Gemma 2 config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let defaults = GemmaDefaults {
        softcaps: (Some(50.0), Some(30.0)),
        pattern: 2,
        family: Family::Gemma2,
    };
    gemma_config(path, text, &defaults)
}

/// The fields Gemma 2 and 3 share, read with `defaults`.
pub fn gemma_config(
    path: &Path,
    text: &str,
    defaults: &GemmaDefaults,
) -> Result<DecoderConfig, WeightsError> {
    let err = |detail: String| WeightsError::format(path, detail);
    let extra: GemmaJson =
        serde_json::from_str(text).map_err(|e| err(format!("not a Gemma config: {e}")))?;
    let json: Value =
        serde_json::from_str(text).map_err(|e| err(format!("not a Gemma config: {e}")))?;
    if extra.use_bidirectional_attention == Some(true) {
        return Err(err(
            "use_bidirectional_attention = true: only causal attention is implemented".into(),
        ));
    }
    let mut llama = LlamaJson::parse(path, text)?;
    // Gemma2Config's defaults where they differ from Llama's.
    llama.tie_word_embeddings = Some(extra.tie_word_embeddings.unwrap_or(true));
    llama.head_dim = Some(extra.head_dim.unwrap_or(256));
    llama.hidden_act = None; // Gemma's MLP reads hidden_activation
    let mut config = llama.resolve(path, false)?;
    let act = extra
        .hidden_activation
        .as_deref()
        .unwrap_or("gelu_pytorch_tanh");
    let activation = Activation::from_hf(act).ok_or_else(|| {
        err(format!(
            "hidden_activation = {act:?}: {}",
            Activation::SUPPORTED
        ))
    })?;
    let optional = |key: &str, default: Option<f64>| -> Result<Option<f64>, WeightsError> {
        match json.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(c) if c > 0.0 => Ok(Some(c)),
                _ => Err(err(format!(
                    "{key} = {v}: expected a positive number or null"
                ))),
            },
        }
    };
    let n = extra.num_hidden_layers;
    let layer_types = extra.layer_types.unwrap_or_else(|| {
        (0..n)
            .map(|i| {
                if (i + 1) % defaults.pattern != 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
                .into()
            })
            .collect()
    });
    let sliding_window = optional("sliding_window", Some(4096.0))?
        .and_then(|size| SlidingWindow::from_layer_types(size as usize, &layer_types));
    let scalar = extra.query_pre_attn_scalar.unwrap_or(256.0);
    if scalar <= 0.0 {
        return Err(err(format!(
            "query_pre_attn_scalar = {scalar}: expected > 0"
        )));
    }
    config.deltas = Deltas {
        norms: NormPlacement::Sandwich,
        norm_weight_offset: true,
        embedding_multiplier: (config.hidden_size as f64).sqrt(),
        attention_scale: Some(scalar.powf(-0.5)),
        attention_softcap: optional("attn_logit_softcapping", defaults.softcaps.0)?,
        logit_softcap: optional("final_logit_softcapping", defaults.softcaps.1)?,
        activation,
        sliding_window,
        ..config.deltas
    };
    config.family = defaults.family;
    config.validated(path)
}
