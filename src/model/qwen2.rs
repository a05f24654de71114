//! Qwen2 / Qwen2.5: a Llama-family decoder with biases on the q, k and v projections, and a
//! sliding window on the layers from `max_window_layers` on when `use_sliding_window` is set
//! (transformers 5 lists each layer's kind in `layer_types`). Source: transformers
//! `models/qwen2/configuration_qwen2.py`.

use std::path::Path;

use serde::Deserialize;

use super::decoder_config::DecoderConfig;
use super::llama::LlamaJson;
use crate::weights::WeightsError;

/// transformers' `Qwen2Config.sliding_window` when config.json does not set it.
const DEFAULT_WINDOW: usize = 4096;

#[derive(Deserialize)]
struct Qwen2Json {
    use_sliding_window: Option<bool>,
    sliding_window: Option<usize>,
    max_window_layers: Option<usize>,
    num_hidden_layers: usize,
    layer_types: Option<Vec<String>>,
}

/// A Qwen2 config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let mut config = LlamaJson::parse(path, text)?.resolve(path, true)?;
    config.deltas.sliding_window = sliding_window(path, text)?;
    Ok(config)
}

/// The window of the layers that have one (Qwen2's and Qwen3's rule), or None.
pub fn sliding_window(path: &Path, text: &str) -> Result<Option<usize>, WeightsError> {
    let extra: Qwen2Json = serde_json::from_str(text)
        .map_err(|e| WeightsError::format(path, format!("not a Qwen2-style config: {e}")))?;
    let windowed = match &extra.layer_types {
        Some(types) => types.iter().any(|t| t == "sliding_attention"),
        None => {
            extra.use_sliding_window == Some(true)
                && extra.max_window_layers.unwrap_or(0) < extra.num_hidden_layers
        }
    };
    // The window is the tightest limit any layer has; sequences within it are unaffected.
    Ok(windowed.then_some(extra.sliding_window.unwrap_or(DEFAULT_WINDOW)))
}
