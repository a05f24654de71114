//! lora-tune: LoRA fine-tuning of real open models on burn, on any GPU (wgpu) or the CPU.
//!
//! Modules in dependency order (each may use only those above it; see ../shared/DESIGN.md §2):
//! - [`atomic`]: every file we write goes through `write_atomic` (temp file + fsync + rename).
//! - [`recipe`]: the TOML recipe as written, with errors that name file, line and key.
//! - [`device`]: `--device auto|cpu|wgpu|…` → a burn `Device`, saying why.
//! - [`data`]: chat templates (and, with the dataset issue, formats, masks, batches).
//! - [`source`]: a model reference (path, `hf://`, `pip://`) → local files, sha256-verified.
//! - [`weights`]: read checkpoint headers (safetensors, GGUF) into named tensor listings.
//! - [`lora`]: target selection (PEFT rules) and the trainable-parameter report.
//! - [`model`]: architectures (Llama-family decoders, BERT encoders, sequence classifiers on
//!   either) in burn, HF layout, loaded from `weights`.
//! - [`plan`]: a recipe validated and resolved (defaults, absolute paths) into a `Plan`.
//! - [`cli`] and [`commands`]: clap definitions and one file per subcommand (wiring only).

pub mod atomic;
pub mod cli;
pub mod commands;
pub mod data;
pub mod device;
pub mod export;
pub mod lora;
pub mod memory;
pub mod model;
pub mod plan;
pub mod recipe;
pub mod source;
pub mod train;
pub mod weights;
