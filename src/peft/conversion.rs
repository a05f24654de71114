//! A PiSSA / OLoRA adapter turned back into a plain LoRA that loads on the original base, as
//! PEFT's `save_pretrained(path_initial_model_for_weight_conversion=…)` writes it. Training left
//! the base at W − s·B₀·A₀ and learnt B·A, so the update to W is s·(B·A − B₀·A₀): the rank-2r
//! adapter A' = [A; A₀], B' = [B, −B₀], with r and α doubled (α·√2 with rsLoRA: the same
//! scale), `rank_pattern` / `alpha_pattern` likewise, and `init_lora_weights = true`.

use std::collections::BTreeMap;
use std::path::Path;

use super::config::PeftConfig;
use super::folder::{self, CLASS_MAP_FILE, INITIAL_WEIGHTS_FILE, PeftError, WEIGHTS_FILE};
use crate::dtype::Dtype;
use crate::weights::host::HostTensors;
use crate::weights::tensor::HostTensor;

/// Writes the plain-LoRA form of the PiSSA / OLoRA folder `from` (a lora-tune checkpoint, which
/// keeps the initial adapters in `initial_adapter_model.safetensors`) into the new folder `to`.
pub fn to_plain_lora(from: &Path, to: &Path) -> Result<(), PeftError> {
    let invalid = |detail: String| PeftError::Invalid {
        path: from.into(),
        detail,
    };
    let config = folder::read_config(from)?;
    if config.use_rslora && (!config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty()) {
        return Err(invalid(
            "a PiSSA / OLoRA adapter with rsLoRA and rank_pattern / alpha_pattern cannot be converted to a plain LoRA (PEFT refuses it too)".into(),
        ));
    }
    let initial_path = from.join(INITIAL_WEIGHTS_FILE);
    if !initial_path.is_file() {
        return Err(invalid(format!(
            "init_lora_weights = {} needs the initial adapter ({INITIAL_WEIGHTS_FILE}, which lora-tune checkpoints keep) to convert to a plain LoRA for the original base; with PEFT, convert it by save_pretrained(path_initial_model_for_weight_conversion=…)",
            config.init_lora_weights
        )));
    }
    let mut initial: BTreeMap<String, HostTensor> = HostTensors::read(&initial_path)?
        .into_entries()
        .into_iter()
        .collect();
    let mut converted = Vec::new();
    for (key, t) in HostTensors::read(&from.join(WEIGHTS_FILE))?.into_entries() {
        let is_a = key.contains(".lora_A.");
        if !is_a && !key.contains(".lora_B.") {
            converted.push((key, t)); // a classifier head, saved in full
            continue;
        }
        let t0 = initial
            .remove(&key)
            .filter(|t0| t0.shape == t.shape)
            .ok_or_else(|| {
                invalid(format!(
                    "{INITIAL_WEIGHTS_FILE} lacks `{key}` {:?}",
                    t.shape
                ))
            })?;
        converted.push((
            key,
            if is_a {
                stack_rows(&t, &t0)
            } else {
                side_by_side(&t, &t0)
            },
        ));
    }
    if let Some(key) = initial.keys().next() {
        return Err(invalid(format!(
            "{INITIAL_WEIGHTS_FILE} has `{key}`, which the adapter lacks"
        )));
    }
    folder::write(to, &converted, Dtype::F32, &plain_config(&config), None)?;
    let class_map = from.join(CLASS_MAP_FILE);
    if class_map.is_file() {
        folder::write_class_map(to, &folder::read_class_map(from)?)?;
    }
    Ok(())
}

/// The config of the plain LoRA a PiSSA / OLoRA adapter converts to: r and α doubled (α·√2
/// with rsLoRA), the patterns likewise, `init_lora_weights = true`.
pub fn plain_config(config: &PeftConfig) -> PeftConfig {
    let mut plain = config.clone();
    let alpha_factor = if config.use_rslora {
        std::f64::consts::SQRT_2
    } else {
        2.0
    };
    plain.init_lora_weights = serde_json::Value::Bool(true);
    plain.r *= 2;
    plain.lora_alpha *= alpha_factor;
    plain.rank_pattern.values_mut().for_each(|r| *r *= 2);
    plain.alpha_pattern.values_mut().for_each(|a| *a *= 2.0);
    plain
}

/// [A; A₀]: [2r, in].
fn stack_rows(a: &HostTensor, a0: &HostTensor) -> HostTensor {
    let values = a.values.iter().chain(&a0.values).copied().collect();
    HostTensor {
        shape: vec![2 * a.shape[0], a.shape[1]],
        values,
    }
}

/// [B, −B₀]: [out, 2r].
fn side_by_side(b: &HostTensor, b0: &HostTensor) -> HostTensor {
    let r = b.shape[1];
    let values = b
        .values
        .chunks(r)
        .zip(b0.values.chunks(r))
        .flat_map(|(row, row0)| row.iter().copied().chain(row0.iter().map(|v| -v)))
        .collect();
    HostTensor {
        shape: vec![b.shape[0], 2 * r],
        values,
    }
}

/// Whether the folder's adapters were initialised from the base weight (PiSSA / OLoRA).
pub fn needs_conversion(config: &PeftConfig) -> bool {
    matches!(config.init_lora_weights.as_str(), Some("pissa" | "olora"))
}
