//! The float types a user chooses: how a frozen base is stored (`model.dtype`), what its products
//! compute in (`model.compute_dtype`) and what an export's tensors are written in
//! (`export.dtype`, `--dtype`). One type for the recipe, the CLI
//! and the writers; a file format that tags dtypes its own way maps from this one
//! (safetensors' `BF16`, transformers' `torch_dtype`, GGUF's ggml type ids).

use burn::tensor::FloatDType;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Dtype {
    /// The name a recipe spells it with.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// burn's float type for it.
    pub fn float(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }

    /// transformers' `torch_dtype` name, as config.json writes it.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }
}

/// What the frozen base's matrix products compute in (`model.compute_dtype`); the device decides
/// `auto` (`device::compute_dtype`). Norms, softmax, RoPE, the loss, the adapters, their
/// gradients and AdamW's moments stay f32 — torch autocast's split. f16 trains with dynamic
/// loss scaling (`train::loss_scale`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// bf16 where the device has general bf16 arithmetic, else f32.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    /// The half type asked for explicitly; None for f32 and `auto` (the device decides).
    pub fn half(self) -> Option<Dtype> {
        match self {
            Self::Bf16 => Some(Dtype::Bf16),
            Self::F16 => Some(Dtype::F16),
            Self::Auto | Self::F32 => None,
        }
    }
}
