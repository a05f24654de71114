//! The PEFT adapter folder format, read and written in one place: the key names tensors carry
//! (`base_model.model.<module path>.lora_A.weight`), `adapter_config.json` ([`config`]) and the
//! folder's files ([`folder`]), and a PiSSA / OLoRA adapter's conversion to a plain LoRA
//! ([`conversion`]). Training's checkpoints and every export are this format; it
//! knows nothing of models or training.

pub mod config;
pub mod conversion;
pub mod folder;

/// What PEFT puts before an HF module path in every key it saves.
pub const KEY_PREFIX: &str = "base_model.model.";

/// PEFT's key for an adapter factor (`A` [r, in] or `B` [out, r]) of the module at `path`.
pub fn factor_key(path: &str, factor: char) -> String {
    format!("{KEY_PREFIX}{path}.lora_{factor}.weight")
}

/// The suffix of DoRA's magnitude vector's key.
pub const MAGNITUDE: &str = ".lora_magnitude_vector";

/// PEFT's key for DoRA's magnitude vector [out] of the adapter on the module at `path`.
pub fn magnitude_key(path: &str) -> String {
    format!("{KEY_PREFIX}{path}{MAGNITUDE}")
}

/// PEFT's key for a tensor saved in full (`modules_to_save`, e.g. a classifier head's
/// `weight` / `bias`) of the module at `path`.
pub fn full_key(path: &str, tensor: &str) -> String {
    format!("{KEY_PREFIX}{path}.{tensor}")
}

/// The HF module path and factor (`A` or `B`) of an adapter key; None for any other key.
pub fn parse_factor_key(key: &str) -> Option<(&str, char)> {
    let rest = key.strip_prefix(KEY_PREFIX)?.strip_suffix(".weight")?;
    let (path, factor) = rest.rsplit_once(".lora_")?;
    match factor {
        "A" => Some((path, 'A')),
        "B" => Some((path, 'B')),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_keys_round_trip() {
        let key = factor_key("model.layers.3.self_attn.q_proj", 'B');
        assert_eq!(
            key,
            "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight"
        );
        assert_eq!(
            parse_factor_key(&key),
            Some(("model.layers.3.self_attn.q_proj", 'B'))
        );
        assert_eq!(parse_factor_key("base_model.model.classifier.weight"), None);
    }
}
