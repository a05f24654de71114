//! The float types a user chooses: how a frozen base is stored (`model.dtype`) and what an
//! export's tensors are written in (`export.dtype`, `--dtype`). One type for the recipe, the CLI
//! and the writers; a file format that tags dtypes its own way maps from this one
//! (safetensors' `BF16`, transformers' `torch_dtype`, GGUF's ggml type ids).

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
    /// transformers' `torch_dtype` name, as config.json writes it.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }
}
