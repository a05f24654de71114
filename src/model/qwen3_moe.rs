//! Qwen3-MoE: Qwen3's attention (per-head q/k norms, no biases) over mixture-of-experts MLPs
//! in the layers `decoder_sparse_step` and `mlp_only_layers` pick, the others dense. Source:
//! transformers `models/qwen3_moe/modeling_qwen3_moe.py`.

use std::path::Path;

use super::decoder_config::{DecoderConfig, Family};
use super::moe::MoeConfig;
use super::qwen3;
use crate::weights::WeightsError;

/// A Qwen3-MoE config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let mut config = qwen3::config(path, text)?;
    let (layers, dense) = (config.num_hidden_layers, config.intermediate_size);
    config.moe = Some(MoeConfig::from_json(path, text, layers, dense, false)?);
    config.family = Family::Qwen3Moe;
    Ok(config)
}
