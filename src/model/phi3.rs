//! Phi-3 / Phi-3.5 / Phi-4-mini: a Llama-family decoder whose q, k and v come from one fused
//! `qkv_proj` and gate and up from one `gate_up_proj` (adapted as one linear each, as PEFT
//! does), RoPE over the first `partial_rotary_factor` of each head (Phi-4-mini: 0.75), LongRoPE
//! scaling (`rope_type = "longrope"`, older `su` / `yarn`: short and long factors and an
//! attention factor on cos and sin), and an optional sliding window on every layer. Residual
//! and embedding dropout (`resid_pdrop`, `embd_pdrop`) are refused unless 0.
//! Source: transformers `models/phi3/{configuration,modeling}_phi3.py`,
//! `modeling_rope_utils.py` (`_compute_longrope_parameters`).

use std::path::Path;

use serde_json::Value;

use super::decoder_config::{DecoderConfig, Family, LongRope, RopeScaling, SlidingWindow};
use super::llama::LlamaJson;
use crate::weights::WeightsError;

/// A Phi-3 config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let err = |detail: String| WeightsError::format(path, detail);
    let json: Value =
        serde_json::from_str(text).map_err(|e| err(format!("not a Phi-3 config: {e}")))?;
    for key in ["resid_pdrop", "embd_pdrop"] {
        if let Some(p) = json.get(key).and_then(Value::as_f64).filter(|&p| p != 0.0) {
            return Err(err(format!(
                "{key} = {p}: dropout in the frozen base is not implemented (0.0 is)"
            )));
        }
    }
    // transformers 5 writes `rope_parameters`, older files `rope_scaling` (null: default);
    // Phi3Config takes `rope_scaling` first.
    let rope = ["rope_scaling", "rope_parameters"]
        .iter()
        .find_map(|k| json.get(*k).filter(|v| !v.is_null()));
    let number = |key: &str| {
        rope.and_then(|r| r.get(key))
            .or(json.get(key))
            .and_then(Value::as_f64)
    };
    let rope_type = rope
        .and_then(|r| r.get("rope_type").or(r.get("type")))
        .and_then(Value::as_str);
    let long = matches!(rope_type, Some("longrope" | "su" | "yarn"));
    // The Llama reader handles the other RoPE types (and refuses unknown ones); LongRoPE is
    // read here.
    let mut llama = LlamaJson::parse(path, text)?;
    (llama.rope_parameters, llama.rope_scaling) = match long {
        true => (None, None),
        false => (rope.cloned(), None),
    };
    llama.rope_theta = number("rope_theta").or(llama.rope_theta);
    let mut config = llama.resolve(path, false)?;
    let d = config.head_dim;
    let partial = number("partial_rotary_factor").unwrap_or(1.0);
    let rotary_dim = (d as f64 * partial) as usize;
    if long {
        let original = number("original_max_position_embeddings")
            .ok_or_else(|| err("longrope needs original_max_position_embeddings".into()))?;
        let factors = |key: &str| -> Result<Vec<f64>, WeightsError> {
            let list = rope.and_then(|r| r.get(key)).and_then(Value::as_array);
            let values: Option<Vec<f64>> = list.and_then(|l| l.iter().map(Value::as_f64).collect());
            match values {
                Some(v) if v.len() == rotary_dim / 2 => Ok(v),
                other => Err(err(format!(
                    "longrope {key}: expected {} numbers (half the rotated dimensions), got {:?}",
                    rotary_dim / 2,
                    other.map(|v| v.len())
                ))),
            }
        };
        let factor = number("factor").unwrap_or(config.max_position_embeddings as f64 / original);
        let attention_factor = number("attention_factor").unwrap_or(if factor <= 1.0 {
            1.0
        } else {
            (1.0 + factor.ln() / original.ln()).sqrt()
        });
        config.rope_scaling = RopeScaling::LongRope(LongRope {
            short_factor: factors("short_factor")?,
            long_factor: factors("long_factor")?,
            original_max_position_embeddings: original as usize,
            attention_factor,
        });
    }
    config.deltas.fused_projections = true;
    config.deltas.rotary_dim = (rotary_dim != d).then_some(rotary_dim);
    // Phi3Attention passes the config's window to every layer.
    let window = json.get("sliding_window").and_then(Value::as_u64);
    let layers = config.num_hidden_layers;
    config.deltas.sliding_window = window.map(|w| SlidingWindow::everywhere(w as usize, layers));
    config.family = Family::Phi3;
    config.validated(path)
}
