//! `lora-tune plan RECIPE`: validate, resolve the model, print what a run would do. Also the
//! preparation every recipe-driven command shares ([`prepare`]).

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;

use crate::data::dataset::{DataStats, Dataset, in_eval_split};
use crate::data::encode::Encoder;
use crate::data::template;
use crate::lora::report::{ParameterReport, thousands};
use crate::lora::targets::{self, Adapted, LinearSite};
use crate::memory::{self, BatchShape, MemoryEstimate};
use crate::model::config::LlamaConfig;
use crate::model::{BaseStorage, ModelConfig};
use crate::plan::{Plan, Stop, Warmup};
use crate::recipe::{DataSection, RecipeFile, Targets, Task};
use crate::source::{Fetcher, ModelFiles, Resolution};
use crate::weights::Inventory;
use crate::weights::blocks;
use crate::weights::gguf::GgufFile;
use crate::weights::host::Storage;

pub fn run(recipe: &Path) -> anyhow::Result<()> {
    let prepared = prepare(recipe)?;
    let (train, _) = load_data(&prepared)?;
    let Some((estimate, shape)) = memory_estimate(&prepared, &train) else {
        println!(
            "memory: not predicted for BERT encoders yet (the formula is fitted to Llama-family decoders)"
        );
        return Ok(());
    };
    println!("memory: peak ≈ {}", estimate.render(shape));
    if let Some(available) = memory::available_bytes() {
        let verdict = if estimate.total() > available {
            "does NOT fit on the CPU: a run is refused unless --no-memory-check"
        } else {
            "fits on the CPU"
        };
        println!("        {} available now: {verdict}", memory::gb(available));
    }
    Ok(())
}

/// Predicted peak memory of training on `train` (its largest micro-batch); None for an encoder.
pub fn memory_estimate(
    prepared: &Prepared,
    train: &Dataset,
) -> Option<(MemoryEstimate, BatchShape)> {
    let ModelConfig::Llama(config) = &prepared.config else {
        return None;
    };
    let batch = (prepared.plan.train.batch_size as usize).min(train.sequences.len());
    let shape = BatchShape {
        batch,
        seq: train.longest_padded(),
        scored: train.most_loss_tokens(batch),
        checkpointing: prepared.plan.train.gradient_checkpointing,
    };
    let trainable = prepared.adapted.iter().map(Adapted::parameters).sum();
    let mut estimate = MemoryEstimate::training(config, trainable, shape);
    (estimate.weights, estimate.loading) = frozen_base_bytes(prepared, config, estimate.weights);
    Some((estimate, shape))
}

/// The base's bytes from its f32 bytes when `model.keep_quantized` packs a GGUF's block-quantised
/// linear weights and `model.dtype` stores the other linear weights in 16 bits; plus what
/// widening holds: one layer's weights in f32 (kept for that layer's backward while it is
/// recomputed) and the largest one's codes and values. Also the load's peak for a 16-bit base
/// (the f32 checkpoint as read plus the narrowed linears; `MemoryEstimate::loading`), else 0.
fn frozen_base_bytes(prepared: &Prepared, config: &LlamaConfig, f32_bytes: u64) -> (u64, u64) {
    let storage = prepared.plan.base_storage();
    if storage == BaseStorage::default() {
        return (f32_bytes, 0);
    }
    let sites = config.linear_sites();
    let bytes = |s: &LinearSite| (s.in_features * s.out_features * 4) as u64;
    let linear: Vec<&LinearSite> = sites
        .iter()
        .filter(|s| s.layer.is_some() || !config.tie_word_embeddings)
        .collect();
    let linear_f32: u64 = linear.iter().map(|s| bytes(s)).sum();
    let (kept_f32, kept_packed) = match &prepared.model.files {
        ModelFiles::Gguf(path) if storage.keep_quantized => match GgufFile::open(path) {
            Ok(file) => {
                let names: HashSet<String> = linear
                    .iter()
                    .map(|s| format!("{}.weight", s.path))
                    .collect();
                blocks::kept_bytes(&file, |name| names.contains(name))
            }
            Err(_) => (0, 0), // the load reports what is wrong with it
        },
        _ => (0, 0),
    };
    let dense_f32 = linear_f32 - kept_f32;
    let dense = match storage.dense {
        Storage::F32 => dense_f32,
        Storage::Bf16 | Storage::F16 => dense_f32 / 2,
    };
    if dense == dense_f32 && kept_f32 == 0 {
        return (f32_bytes, 0); // nothing is stored differently
    }
    let one_layer: u64 = sites.iter().filter(|s| s.layer == Some(0)).map(bytes).sum();
    let largest = linear.iter().map(|s| bytes(s)).max().unwrap_or(0);
    let weights = f32_bytes - linear_f32 + kept_packed + dense + one_layer + 2 * largest;
    let loading = if storage.dense == Storage::F32 {
        0
    } else {
        f32_bytes + dense
    };
    (weights, loading)
}

/// A recipe validated, its model resolved and its adapters chosen (no weights loaded).
pub struct Prepared {
    pub plan: Plan,
    pub model: Resolution,
    pub config: ModelConfig,
    pub adapted: Vec<Adapted>,
    /// A classifier's classes (the training data's labels, sorted); None for a causal LM.
    pub labels: Option<Vec<String>>,
}

/// Loads and validates the recipe, resolves the model, reads its header; prints each step.
pub fn prepare(recipe: &Path) -> anyhow::Result<Prepared> {
    let file = RecipeFile::load(recipe)?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let plan = Plan::resolve(&file, &cwd)?;
    println!("recipe: {}", plan.recipe_path.display());
    let model = Fetcher::new().resolve_first(&plan.sources)?;
    for (reference, why) in &model.skipped {
        println!("model: skipped {reference}: {why}");
    }
    println!(
        "model: {} → {}",
        model.source.reference,
        model.files.path().display()
    );
    let inventory = Inventory::read(model.files.path())
        .with_context(|| format!("reading {}", model.files.path().display()))?;
    println!(
        "       {}, {} tensors, {} parameters, compute dtype {:?}",
        inventory.format,
        inventory.tensors.len(),
        thousands(inventory.parameters()),
        plan.dtype
    );
    print_settings(&plan);
    let config = crate::model::architecture_of(&model.files)?;
    println!("       {}", config.describe());
    if matches!(config, ModelConfig::Bert(_)) && plan.task != Task::Classification {
        anyhow::bail!(
            "{}: model.task: a BERT encoder has no language-model head; set model.task = \"classification\"",
            plan.recipe_path.display()
        );
    }
    if let ModelConfig::Bert(c) = &config {
        anyhow::ensure!(
            plan.data.max_len as usize <= c.max_position_embeddings,
            "{}: data.max_len = {} exceeds the encoder's max_position_embeddings ({}); lower data.max_len",
            plan.recipe_path.display(),
            plan.data.max_len,
            c.max_position_embeddings
        );
    }
    let adapted = targets::select(&config.linear_sites(plan.pooling), &plan.lora)
        .with_context(|| format!("choosing LoRA targets ({})", plan.recipe_path.display()))?;
    let labels = match plan.task {
        Task::CausalLm => None,
        Task::Classification => {
            let d = &plan.data;
            let labels = crate::data::rows::class_labels(&d.train, d.format, d.strict)?;
            println!(
                "task:  classification, {} classes ({}), {:?} pooling; the head trains in full",
                labels.len(),
                labels.join(", "),
                plan.pooling,
            );
            Some(labels)
        }
    };
    let mut report = ParameterReport::new(&adapted, config.parameter_count());
    if let Some(labels) = &labels {
        let head = match config {
            ModelConfig::Bert(_) => "classifier",
            ModelConfig::Llama(_) => "score",
        };
        report = report.with_head(head, config.head_parameters(labels.len()));
    }
    print!("{}", report.render());
    Ok(Prepared {
        plan,
        model,
        config,
        adapted,
        labels,
    })
}

/// Reads and encodes the recipe's train and eval data with the model's tokenizer and template
/// (no weights load); prints each set's statistics and its first skipped rows.
pub fn load_data(prepared: &Prepared) -> anyhow::Result<(Dataset, Option<Dataset>)> {
    let (plan, files) = (&prepared.plan, &prepared.model.files);
    let tokenizer = crate::model::tokenizer_of(files)
        .with_context(|| format!("reading the tokenizer of {}", files.path().display()))?;
    let d = &plan.data;
    let encoder = Encoder {
        tokenizer: &tokenizer,
        template: template::choose(d.template.as_deref(), tokenizer.chat_template.as_deref()),
        train_on_inputs: d.train_on_inputs,
        max_len: d.max_len as usize,
        truncation: d.truncation,
        labels: prepared.labels.as_deref(),
    };
    let seed = plan.train.seed;
    // Evaluation scores each example alone; packing is for training throughput only.
    let e = &DataSection {
        packing: false,
        ..d.clone()
    };
    let (train, eval) = match (&d.eval, d.eval_fraction) {
        (Some(eval), _) => (
            Dataset::load(&d.train, d, &encoder, &|_| true)?,
            Some(Dataset::load(eval, e, &encoder, &|_| true)?),
        ),
        (None, Some(f)) => {
            let held_out = in_eval_split(seed, f);
            (
                Dataset::load(&d.train, d, &encoder, &|i| !held_out(i))?,
                Some(Dataset::load(&d.train, e, &encoder, &held_out)?),
            )
        }
        (None, None) => (Dataset::load(&d.train, d, &encoder, &|_| true)?, None),
    };
    let batch_size = plan.train.batch_size as usize;
    let classification = prepared.labels.is_some();
    print_data_stats("train", &train.stats(batch_size, seed), classification);
    if let Some(eval) = &eval {
        print_data_stats("eval", &eval.stats(batch_size, seed), classification);
    }
    for bad in train
        .skipped
        .iter()
        .chain(eval.iter().flat_map(|e| &e.skipped))
        .take(5)
    {
        println!("       skipped {bad}");
    }
    Ok((train, eval))
}

fn print_data_stats(name: &str, stats: &DataStats, classification: bool) {
    // A classifier scores one class per row, not tokens.
    let targets = if classification {
        "one class each".to_string()
    } else {
        format!(
            "{:.1}% trained / {:.1}% masked",
            100.0 * stats.trained_fraction(),
            100.0 * (1.0 - stats.trained_fraction())
        )
    };
    println!(
        "data:  {name}: {} rows, {} tokens (longest {}), {targets}, {} truncated, {} skipped",
        thousands(stats.examples as u64),
        thousands(stats.tokens as u64),
        stats.longest,
        stats.truncated,
        stats.skipped
    );
    println!(
        "       {} sequences{} → {} micro-batches of {}, {:.1}% of batch tokens are padding",
        thousands(stats.sequences as u64),
        if stats.packed { " (packed)" } else { "" },
        stats.batches,
        stats.batch_size,
        100.0 * stats.padding_fraction()
    );
}

fn print_settings(plan: &Plan) {
    let l = &plan.lora;
    let scale = if l.rslora {
        l.alpha / f64::from(l.rank).sqrt()
    } else {
        l.alpha / f64::from(l.rank)
    };
    let targets = match &l.targets {
        Targets::AllLinear => "all-linear".to_string(),
        Targets::Modules(m) => m.join(","),
        Targets::Regex(r) => format!("regex {r:?}"),
    };
    println!(
        "lora:  r={} alpha={} scale={scale} dropout={} init={:?}{} targets={targets}",
        l.rank,
        l.alpha,
        l.dropout,
        l.init,
        if l.rslora { " rslora" } else { "" }
    );
    let d = &plan.data;
    println!(
        "data:  train={} eval={} format={:?} max_len={} packing={}",
        d.train.display(),
        d.eval
            .as_ref()
            .map(|p| p.display().to_string())
            .or(d.eval_fraction.map(|f| format!("{f} of train")))
            .unwrap_or_else(|| "none".into()),
        d.format,
        d.max_len,
        d.packing
    );
    let t = &plan.train;
    let stop = match plan.stop {
        Stop::MaxSteps(n) => format!("{n} steps"),
        Stop::Epochs(e) => format!("{e} epochs"),
    };
    let warmup = match plan.warmup {
        Warmup::Steps(n) => format!("{n} steps"),
        Warmup::Ratio(r) => format!("{r} of steps"),
    };
    println!(
        "train: adamw lr={} {:?} warmup={warmup} stop={stop} batch={}x{} clip={} seed={}",
        t.lr, t.schedule, t.batch_size, t.grad_accum, t.max_grad_norm, t.seed
    );
    let formats: Vec<String> = plan
        .export
        .formats
        .iter()
        .map(|f| format!("{f:?}").to_lowercase())
        .collect();
    println!("export: {} → {}", formats.join(","), plan.out_dir.display());
}
