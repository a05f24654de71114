//! lora-tune: LoRA fine-tuning of real open models on burn, on any GPU (wgpu) or the CPU.
//!
//! Modules in dependency order: each uses only modules above it, and no two files import each
//! other (see ../shared/DESIGN.md §2).
//! - [`allocator`]: freed buffers keep their pages (glibc's malloc tunables), set first in `main`.
//! - [`atomic`]: every file we write goes through `write_atomic` (temp file + fsync + rename).
//! - [`cache`]: the tool's cache directory, and cubecl's autotune results kept there per GPU
//!   adapter and driver.
//! - [`dtype`]: the float types a user picks (base storage, products, exports), one type for all.
//! - [`recipe`]: the TOML recipe as written, with errors that name file, line and key.
//! - [`distributed`]: which rank of an `mpirun` job this process is, and the collectives (sums,
//!   a barrier) data-parallel training needs; a job of one without a launcher.
//! - [`device`]: `--device auto|cpu|wgpu|…` → a burn `Device`, saying why.
//! - [`transfer`]: every host ↔ device copy, counted in a ledger (a GPU step moves its batch
//!   and a few scalars).
//! - [`kernels`]: our own kernels where a backend is slow or a step would leave the device, one
//!   file per backend family (flex, cube), each beside its generic oracle.
//! - [`source`]: a model reference (path, `hf://`, `pip://`) → local files, sha256-verified.
//! - [`weights`]: checkpoint files (safetensors, GGUF) → named host tensors, GGUF blocks and
//!   names, tokenizers; the safetensors and GGUF writers.
//! - [`data`]: dataset rows and formats, chat templates, token ids + loss masks, packing, batches.
//! - [`lora`]: the adapter of one layer, target selection (PEFT's rules), the parameter report.
//! - [`peft`]: the PEFT adapter folder format (keys, `adapter_config.json`, the folder's files).
//! - [`model`]: shared blocks and one file per family (Llama, Mistral, Qwen2 decoders; BERT),
//!   sequence classifiers on either, adapters on any, generation.
//! - [`plan`]: a recipe validated and resolved (defaults, absolute paths) into a `Plan`.
//! - [`memory`]: peak memory of a training run, predicted before anything loads.
//! - [`prepare`]: what every recipe-driven command does before training (model resolved,
//!   adapters chosen, data encoded, model loaded).
//! - [`train`] and [`export`], siblings: the training step and loop; the PEFT folder, GGUF LoRA
//!   and merged model a run or `lora-tune export` writes, through one entry point.
//! - [`cli`] and [`commands`]: clap definitions and one file per subcommand (wiring only).

pub mod allocator;
pub mod atomic;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod data;
pub mod device;
pub mod distributed;
pub mod dtype;
pub mod export;
pub mod kernels;
pub mod lora;
pub mod memory;
pub mod model;
pub mod peft;
pub mod plan;
pub mod prepare;
pub mod recipe;
pub mod source;
pub mod train;
pub mod transfer;
pub mod weights;
