//! Qwen2 / Qwen2.5: a Llama-family decoder with biases on the q, k and v projections, and a
//! sliding window on the layers from `max_window_layers` on when `use_sliding_window` is set
//! (transformers 5 lists each layer's kind in `layer_types`). Source: transformers
//! `models/qwen2/configuration_qwen2.py`.

use std::path::Path;

use serde::Deserialize;

use super::decoder_config::{DecoderConfig, SlidingWindow};
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
    config.validated(path)
}

/// The window and the layers that have it (Qwen2's and Qwen3's rule, as their configs'
/// `__post_init__`): none unless `use_sliding_window`; the layers `layer_types` marks
/// `sliding_attention`, or else those from `max_window_layers` on.
pub fn sliding_window(path: &Path, text: &str) -> Result<Option<SlidingWindow>, WeightsError> {
    let extra: Qwen2Json = serde_json::from_str(text)
        .map_err(|e| WeightsError::format(path, format!("not a Qwen2-style config: {e}")))?;
    if extra.use_sliding_window != Some(true) {
        return Ok(None);
    }
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| WeightsError::format(path, format!("not a Qwen2-style config: {e}")))?;
    // An explicit null is no window; absent is the config class's default.
    let Some(size) = (match json.get("sliding_window") {
        Some(serde_json::Value::Null) => None,
        _ => Some(extra.sliding_window.unwrap_or(DEFAULT_WINDOW)),
    }) else {
        return Ok(None);
    };
    let n = extra.num_hidden_layers;
    let types = extra.layer_types.unwrap_or_else(|| {
        let from = extra.max_window_layers.unwrap_or(28);
        (0..n)
            .map(|i| {
                if i >= from {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
                .to_string()
            })
            .collect()
    });
    Ok(SlidingWindow::from_layer_types(size, &types))
}
