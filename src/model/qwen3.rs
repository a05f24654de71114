//! Qwen3: a Llama-family decoder whose q and k pass through an RMSNorm over each head's
//! dimensions before RoPE (`q_norm`, `k_norm`), with an explicit `head_dim`, no q/k/v biases
//! unless `attention_bias` says so, and Qwen2's sliding-window rule. Source: transformers
//! `models/qwen3/modeling_qwen3.py` (`Qwen3Attention`).

use std::path::Path;

use super::decoder_config::{DecoderConfig, Deltas, Family, QkNorm};
use super::llama::LlamaJson;
use super::qwen2::sliding_window;
use crate::weights::WeightsError;

/// A Qwen3 config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let mut config = LlamaJson::parse(path, text)?.resolve(path, false)?;
    config.deltas = Deltas {
        qk_norm: QkNorm::PerHead,
        sliding_window: sliding_window(path, text)?,
        ..config.deltas
    };
    config.family = Family::Qwen3;
    config.validated(path)
}
