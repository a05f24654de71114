//! Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases by `qkv_bias`)
//! over mixture-of-experts MLPs in the layers `decoder_sparse_step` and `mlp_only_layers`
//! pick, each with a shared expert every token passes through, scaled by
//! sigmoid(`shared_expert_gate`(x)). Source: transformers
//! `models/qwen2_moe/modeling_qwen2_moe.py`, `configuration_qwen2_moe.py`.

use std::path::Path;

use serde::Deserialize;

use super::decoder_config::{DecoderConfig, Deltas, Family, SlidingWindow};
use super::llama::LlamaJson;
use super::moe::MoeConfig;
use crate::weights::WeightsError;

#[derive(Deserialize)]
struct Qwen2MoeJson {
    qkv_bias: Option<bool>,
    use_sliding_window: Option<bool>,
    sliding_window: Option<usize>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    shared_expert_intermediate_size: Option<usize>,
}

/// A Qwen2-MoE config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let err = |detail: String| WeightsError::format(path, detail);
    let extra: Qwen2MoeJson =
        serde_json::from_str(text).map_err(|e| err(format!("not a Qwen2-MoE config: {e}")))?;
    let mut config = LlamaJson::parse(path, text)?.resolve(path, extra.qkv_bias.unwrap_or(true))?;
    let layers = config.num_hidden_layers;
    let mut moe = MoeConfig::from_json(path, text, layers, config.intermediate_size, false)?;
    // The class default (5632) where config.json does not say.
    moe.shared_expert_intermediate_size =
        Some(extra.shared_expert_intermediate_size.unwrap_or(5632));
    // Qwen2MoeConfig: a window (default 4096) on the layers `layer_types` marks, by default
    // every other one (0, 2, …) below `max_window_layers`, only with `use_sliding_window`.
    let sliding_window = match extra.use_sliding_window {
        Some(true) => {
            let types = extra.layer_types.unwrap_or_else(|| {
                let below = extra.max_window_layers.unwrap_or(28);
                (0..layers)
                    .map(|i| match i % 2 == 0 && i < below {
                        true => "sliding_attention".to_string(),
                        false => "full_attention".to_string(),
                    })
                    .collect()
            });
            SlidingWindow::from_layer_types(extra.sliding_window.unwrap_or(4096), &types)
        }
        _ => None,
    };
    config.deltas = Deltas {
        sliding_window,
        ..config.deltas
    };
    config.moe = Some(moe);
    config.family = Family::Qwen2Moe;
    config.validated(path)
}
