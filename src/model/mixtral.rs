//! Mixtral: Mistral's attention (a sliding window only where config.json sets one) over a
//! mixture of experts in every layer — a softmax over all experts, the top k renormalised —
//! stored as the Hub holds it, per expert under `block_sparse_moe` (`gate` the router, `w1`
//! gate, `w3` up, `w2` down). Source: transformers `models/mixtral/modeling_mixtral.py`,
//! `configuration_mixtral.py`.

use std::path::Path;

use super::decoder_config::{DecoderConfig, Family};
use super::mistral;
use super::mlp::MIXTRAL_PROJECTIONS;
use super::moe::{MoeConfig, Routing};
use crate::weights::WeightsError;

/// A Mixtral config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| WeightsError::format(path, format!("not a config.json: {e}")))?;
    if let Some(noise) = json
        .get("router_jitter_noise")
        .and_then(serde_json::Value::as_f64)
        .filter(|&n| n != 0.0)
    {
        return Err(WeightsError::format(
            path,
            format!(
                "router_jitter_noise = {noise}: multiplying the router's input by training noise is not implemented (0.0 is)"
            ),
        ));
    }
    let mut config = mistral::with_window_default(path, text, None)?;
    let (layers, width) = (config.num_hidden_layers, config.intermediate_size);
    let mut moe = MoeConfig::from_json(path, text, layers, width, true)?;
    moe.routing = Routing::SoftmaxTopK { renormalize: true };
    moe.block = "block_sparse_moe";
    moe.names = MIXTRAL_PROJECTIONS;
    config.moe = Some(moe);
    config.family = Family::Mixtral;
    Ok(config)
}
