//! Mistral: a Llama-family decoder whose attention may be limited to a sliding window
//! (`sliding_window`; Mistral 7B v0.1 has 4096, later versions none). Source: transformers
//! `models/mistral/configuration_mistral.py`.

use std::path::Path;

use super::decoder_config::{DecoderConfig, SlidingWindow};
use super::llama::LlamaJson;
use crate::weights::WeightsError;

/// transformers' `MistralConfig.sliding_window` when config.json does not set it (null: none).
const DEFAULT_WINDOW: usize = 4096;

/// A Mistral config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    with_window_default(path, text, Some(DEFAULT_WINDOW))
}

/// A Mistral-style config.json whose absent `sliding_window` means `default` (Mixtral's: none).
pub fn with_window_default(
    path: &Path,
    text: &str,
    default: Option<usize>,
) -> Result<DecoderConfig, WeightsError> {
    let mut config = LlamaJson::parse(path, text)?.resolve(path, false)?;
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| WeightsError::format(path, format!("not a Mistral config: {e}")))?;
    let sliding_window = match json.get("sliding_window") {
        None => default,
        Some(serde_json::Value::Null) => None,
        Some(w) => Some(w.as_u64().ok_or_else(|| {
            WeightsError::format(path, format!("sliding_window = {w}: expected a length"))
        })? as usize),
    };
    // Every Mistral layer has the window (its `layer_types`, if any, are not read by
    // MistralAttention).
    let layers = config.num_hidden_layers;
    config.deltas.sliding_window = sliding_window.map(|w| SlidingWindow::everywhere(w, layers));
    config.validated(path)
}
