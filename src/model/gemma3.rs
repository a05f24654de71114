//! Gemma 3 (text: `gemma3_text`, Gemma3ForCausalLM): Gemma 2's layers ([`super::gemma2`]) with
//! an RMSNorm (1 + w) over each head of q and k before RoPE, no soft caps by default, five
//! sliding-window layers to one global (`sliding_window_pattern` 6 or `layer_types`), and RoPE
//! per layer kind: the global layers' base and scaling (`rope_parameters.full_attention`, or the
//! older `rope_theta` + `rope_scaling`; linear in the 4B+ models), the local layers' own base
//! (`rope_parameters.sliding_attention`, or `rope_local_base_freq`).
//! Source: transformers `models/gemma3/{configuration,modeling}_gemma3.py`.

use std::path::Path;

use serde_json::Value;

use super::decoder_config::{DecoderConfig, Family, QkNorm, RopeScaling};
use super::gemma2::{GemmaDefaults, gemma_config};
use super::llama::rope_parameters;
use crate::weights::WeightsError;

/// A Gemma 3 text config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let err = |detail: String| WeightsError::format(path, detail);
    let json: Value =
        serde_json::from_str(text).map_err(|e| err(format!("not a Gemma 3 config: {e}")))?;
    let pattern = match json.get("sliding_window_pattern") {
        None | Some(Value::Null) => 6,
        Some(v) => v
            .as_u64()
            .filter(|&p| p > 0)
            .ok_or_else(|| err(format!("sliding_window_pattern = {v}: expected a count")))?
            as usize,
    };
    let defaults = GemmaDefaults {
        softcaps: (None, None),
        pattern,
        family: Family::Gemma3,
    };
    let mut config = gemma_config(path, text, &defaults)?;
    let number = |key: &str| json.get(key).and_then(Value::as_f64);
    let params = json.get("rope_parameters").filter(|p| !p.is_null());
    let per_kind = params
        .filter(|p| p.get("full_attention").is_some() || p.get("sliding_attention").is_some());
    let (full, sliding) = match per_kind {
        Some(p) => (p.get("full_attention"), p.get("sliding_attention")),
        // Older files: the top-level fields, `rope_scaling` for the global layers.
        None => (
            params.or(json.get("rope_scaling")).filter(|p| !p.is_null()),
            None,
        ),
    };
    let (theta, scaling) = rope_parameters(path, full, number("rope_theta"), 1_000_000.0)?;
    let (local_theta, local_scaling) =
        rope_parameters(path, sliding, number("rope_local_base_freq"), 10_000.0)?;
    if local_scaling != RopeScaling::None {
        return Err(err(format!(
            "rope_parameters.sliding_attention: scaling {local_scaling:?} on the local layers is not implemented"
        )));
    }
    config.rope_theta = theta;
    config.rope_scaling = scaling;
    config.deltas.local_rope_theta = Some(local_theta);
    config.deltas.qk_norm = QkNorm::PerHead;
    config.validated(path)
}
