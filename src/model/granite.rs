//! Granite (IBM Granite 3.x): a Llama-family decoder with four scalars — token embeddings times
//! `embedding_multiplier`, attention scores scaled by `attention_multiplier` (not 1/√head_dim),
//! each attention and MLP output times `residual_multiplier` before the residual add, and the
//! logits divided by `logits_scaling`. Source: transformers `models/granite/modeling_granite.py`.

use std::path::Path;

use serde::Deserialize;

use super::decoder_config::{DecoderConfig, Deltas, Family};
use super::llama::LlamaJson;
use super::moe::{MoeConfig, Routing};
use crate::weights::WeightsError;

/// Granite's own fields, with transformers' `GraniteConfig` defaults.
#[derive(Deserialize)]
struct GraniteJson {
    #[serde(default = "one")]
    embedding_multiplier: f64,
    #[serde(default = "one")]
    attention_multiplier: f64,
    #[serde(default = "one")]
    residual_multiplier: f64,
    #[serde(default = "one")]
    logits_scaling: f64,
}

fn one() -> f64 {
    1.0
}

/// A GraniteMoE config.json: Granite's four scalars over a mixture of experts in every layer
/// (`num_local_experts` of `intermediate_size`, `num_experts_per_tok`), routed by a softmax over
/// the top k router logits. Source: transformers `models/granitemoe/modeling_granitemoe.py`.
pub fn moe_config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let mut config = config(path, text)?;
    let (layers, width) = (config.num_hidden_layers, config.intermediate_size);
    let mut moe = MoeConfig::from_json(path, text, layers, width, false)?;
    moe.routing = Routing::TopKSoftmax;
    moe.block = "block_sparse_moe";
    config.moe = Some(moe);
    config.family = Family::GraniteMoe;
    Ok(config)
}

/// A Granite config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let extra: GraniteJson = serde_json::from_str(text)
        .map_err(|e| WeightsError::format(path, format!("not a Granite config: {e}")))?;
    if extra.logits_scaling == 0.0 {
        return Err(WeightsError::format(path, "logits_scaling = 0".into()));
    }
    let mut config = LlamaJson::parse(path, text)?.resolve(path, false)?;
    config.deltas = Deltas {
        embedding_multiplier: extra.embedding_multiplier,
        attention_scale: Some(extra.attention_multiplier),
        residual_multiplier: extra.residual_multiplier,
        logits_scaling: extra.logits_scaling,
        ..config.deltas
    };
    config.family = Family::Granite;
    Ok(config)
}
