//! OLMoE: a Llama-family decoder with pre-norm blocks, an RMSNorm over the whole q and k
//! projections before RoPE (as OLMo 2) and a mixture of experts, each `intermediate_size` wide,
//! in every layer. Source: transformers `models/olmoe/modeling_olmoe.py`.

use std::path::Path;

use super::decoder_config::{DecoderConfig, Deltas, Family, QkNorm};
use super::llama::LlamaJson;
use super::moe::MoeConfig;
use crate::weights::WeightsError;

/// An OLMoE config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| WeightsError::format(path, format!("not a config.json: {e}")))?;
    if let Some(clip) = json.get("clip_qkv").filter(|v| !v.is_null()) {
        return Err(WeightsError::format(
            path,
            format!("clip_qkv = {clip}: clamping q, k and v is not implemented (null is)"),
        ));
    }
    let mut config = LlamaJson::parse(path, text)?.resolve(path, false)?;
    config.deltas = Deltas {
        qk_norm: QkNorm::Projection,
        ..config.deltas
    };
    let (layers, width) = (config.num_hidden_layers, config.intermediate_size);
    config.moe = Some(MoeConfig::from_json(path, text, layers, width, false)?);
    config.family = Family::Olmoe;
    config.validated(path)
}
