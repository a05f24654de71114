//! The llama.cpp LoRA adapter GGUF, written natively (what `convert_lora_to_gguf.py` writes from
//! a PEFT folder): `general.type = "adapter"`, `general.architecture` of the base,
//! `adapter.type = "lora"`, `adapter.lora.alpha`, and per adapted layer
//! `blk.N.<module>.weight.lora_a` (PyTorch [r, in]) and `.lora_b` ([out, r]). For `llama` (and
//! `granite`) bases the rows of Q/K's B are permuted as the base's Q/K rows are (llama.cpp's interleaved RoPE).
//! llama.cpp scales by alpha / r with r read from the tensors, so rsLoRA's α/√r is written as
//! α·√r, and a per-module `alpha_pattern` cannot be expressed. A mixture of experts' adapters
//! are stacked per layer and projection as its base stacks the experts: `ffn_{gate,up,down}_exps
//! .weight.lora_a` [E, r, in] and `.lora_b` [E, out, r], expert after expert (a fused
//! gate_up adapter, GraniteMoE's, split into gate and up as the converter splits the base).

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::decoder_config::DecoderConfig;
use crate::peft::config::PeftConfig;
use crate::peft::folder::split_gate_up;
use crate::peft::parse_factor_key;
use crate::weights::gguf::MetaValue;
use crate::weights::gguf_names::{gguf_expert_module, gguf_module, permute_rows, permuted_heads};
use crate::weights::gguf_writer::{self, OutTensor, TensorType};
use crate::weights::tensor::HostTensor;

#[derive(Debug, thiserror::Error)]
pub enum GgufLoraError {
    #[error("{0}")]
    Unsupported(String),
    #[error("`{0}` is not an adapter factor key (base_model.model.<path>.lora_A/B.weight)")]
    NotAFactor(String),
    #[error("`{0}` has no llama.cpp counterpart")]
    NoCounterpart(String),
    #[error("`{key}`: {detail}")]
    Permute { key: String, detail: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Why these adapters cannot be a llama.cpp LoRA, if they cannot.
pub fn unsupported(config: &PeftConfig) -> Option<String> {
    if config.use_dora {
        return Some(
            "DoRA: a llama.cpp LoRA has no magnitude vectors; export the merged model and convert that instead".into(),
        );
    }
    if !config.alpha_pattern.is_empty() {
        return Some(
            "alpha_pattern: llama.cpp applies one alpha to every layer of an adapter".into(),
        );
    }
    None
}

/// The alpha llama.cpp must see so that its alpha / r equals our scale.
pub fn gguf_alpha(config: &PeftConfig) -> f64 {
    if config.use_rslora {
        config.lora_alpha * f64::from(config.r).sqrt()
    } else {
        config.lora_alpha
    }
}

/// Writes `adapters` (PEFT keys → A/B, e.g. `Llama::adapter_tensors` or a PEFT folder's file)
/// of a base with `base` config as a llama.cpp LoRA at `path`.
pub fn write(
    path: &Path,
    base: &DecoderConfig,
    adapters: Vec<(String, HostTensor)>,
    config: &PeftConfig,
    name: &str,
    ty: TensorType,
) -> Result<(), GgufLoraError> {
    if let Some(why) = unsupported(config) {
        return Err(GgufLoraError::Unsupported(why));
    }
    let arch = base.gguf_architecture();
    let (heads, kv_heads) = (base.num_attention_heads, base.num_key_value_heads);
    let mut tensors = Vec::new();
    // (stacked tensor name) → each expert's factor, in expert order.
    let mut stacked: BTreeMap<String, BTreeMap<usize, HostTensor>> = BTreeMap::new();
    // A fused expert's gate_up adapter (GraniteMoE's) as llama.cpp's separate gate and up.
    let adapters = adapters
        .into_iter()
        .flat_map(|(key, t)| match split_gate_up(&key, &t) {
            Some(halves) => halves.to_vec(),
            None => vec![(key, t)],
        });
    for (key, t) in adapters {
        let (path, factor) =
            parse_factor_key(&key).ok_or_else(|| GgufLoraError::NotAFactor(key.clone()))?;
        if let Some((module, expert)) = gguf_expert_module(path) {
            let name = format!("{module}.weight.lora_{}", factor.to_ascii_lowercase());
            stacked.entry(name).or_default().insert(expert, t);
            continue;
        }
        let module =
            gguf_module(path).ok_or_else(|| GgufLoraError::NoCounterpart(path.to_string()))?;
        let gguf_name = format!("{module}.weight.lora_{}", factor.to_ascii_lowercase());
        let mut values = t.values;
        let permuted = permuted_heads(&format!("{module}.weight"), heads, kv_heads);
        // llama.cpp's converter permutes Q/K for `llama` and for Granite (its GraniteModel is a
        // LlamaModel); Qwen's RoPE is rotate_half already.
        if let Some(h) =
            permuted.filter(|_| matches!(arch, "llama" | "granite" | "granitemoe") && factor == 'B')
        {
            values = permute_rows(&values, t.shape[0], t.shape[1], h)
                .map_err(|detail| GgufLoraError::Permute { key, detail })?;
        }
        tensors.push(OutTensor {
            name: gguf_name,
            shape: t.shape,
            values,
        });
    }
    let experts = base.moe.as_ref().map_or(0, |m| m.num_experts);
    for (name, by_expert) in stacked {
        tensors.push(stack_experts(name, by_expert, experts)?);
    }
    let metadata = [
        ("general.architecture", MetaValue::String(arch.into())),
        ("general.type", MetaValue::String("adapter".into())),
        ("adapter.type", MetaValue::String("lora".into())),
        ("general.name", MetaValue::String(name.into())),
        (
            "adapter.lora.alpha",
            MetaValue::F32(gguf_alpha(config) as f32),
        ),
        ("general.quantization_version", MetaValue::U32(2)),
    ];
    gguf_writer::write(path, &metadata, &tensors, ty).map_err(|source| GgufLoraError::Io {
        path: path.into(),
        source,
    })
}

/// One layer's projection adapters of every expert as one [E, …] tensor; refused unless each of
/// the base's `experts` has one of the same shape (llama.cpp applies a stacked tensor whole).
fn stack_experts(
    name: String,
    by_expert: BTreeMap<usize, HostTensor>,
    experts: usize,
) -> Result<OutTensor, GgufLoraError> {
    let shape = by_expert.values().next().map(|t| t.shape.clone());
    let whole = by_expert.keys().copied().eq(0..experts)
        && by_expert.values().all(|t| Some(&t.shape) == shape.as_ref());
    let (Some(shape), true) = (shape, whole) else {
        return Err(GgufLoraError::Unsupported(format!(
            "{name}: llama.cpp stacks every expert's adapter into one tensor, so all {experts} experts need one of the same shape ({} have one)",
            by_expert.len()
        )));
    };
    Ok(OutTensor {
        name,
        shape: [vec![experts], shape].concat(),
        values: by_expert.into_values().flat_map(|t| t.values).collect(),
    })
}
