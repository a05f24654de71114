//! The console side of [`crate::prepare`], shared by the recipe-driven commands (`run`, `eval`,
//! `plan`; not a command itself): each preparation step, then the lines that say what it found.

use std::path::Path;
use std::time::Instant;

use crate::data::dataset::{DataStats, Dataset};
use crate::device::{self, DeviceChoice, Selected};
use crate::dtype::{ComputeDtype, Dtype};
use crate::lora::report::thousands;
use crate::memory::{self, MemoryCheck};
use crate::model::TaskModel;
use crate::model::adapted::AdaptedModel;
use crate::model::frozen::FrozenWeight;
use crate::plan::{Plan, Stop, Warmup};
use crate::prepare::Prepared;
use crate::recipe::Targets;
use crate::weights::quantize;

/// A recipe prepared, its device started and its data encoded for that device.
pub struct Loaded {
    pub prepared: Prepared,
    /// None for `plan`, which encodes as for the CPU (its memory estimate is the CPU's).
    pub device: Option<Selected>,
    pub train: Dataset,
    pub eval: Option<Dataset>,
}

/// Prepares the recipe and encodes the data (bad data stops here, before any device starts),
/// starts `device` (when given) and pads the data as that device wants it (no weights load),
/// printing each step.
pub fn load(recipe: &Path, device: Option<DeviceChoice>) -> anyhow::Result<Loaded> {
    let prepared = Prepared::load(recipe)?;
    print_prepared(&prepared);
    let tokenizer = prepared.tokenizer()?;
    let (mut train, mut eval) = prepared.load_data(&tokenizer)?;
    let device = device.map(device::select).transpose()?;
    if let Some(selected) = &device {
        println!("device: {} ({})", selected.name, selected.why);
        crate::train::interrupt::note_device(&selected.name);
        if let Some(dir) = &selected.autotune {
            println!(
                "autotune: kernel choices kept in {} ({} so far); a shape seen before is not tuned again",
                dir.display(),
                crate::cache::decisions(dir)
            );
        }
    }
    let bucket = (prepared.plan.data).bucket(device.as_ref().is_none_or(|d| d.on_cpu));
    for data in std::iter::once(&mut train).chain(eval.as_mut()) {
        data.set_padding(bucket);
    }
    let batch_size = prepared.plan.train.batch_size as usize;
    let seed = prepared.plan.train.seed;
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
    Ok(Loaded {
        prepared,
        device,
        train,
        eval,
    })
}

/// DPO: every pair's reference log-probabilities, train and eval, from `model` as it is now —
/// with its adapters taken off, or as loaded for `preference.reference = "initial_adapter"`
/// (the caller loads `lora.init_from` first). Nothing for SFT and SimPO.
pub fn compute_references(loaded: &mut Loaded, model: &mut TaskModel) -> anyhow::Result<()> {
    let plan = &loaded.prepared.plan;
    let TaskModel::Lm(lm) = model else {
        return Ok(());
    };
    if plan.train.method != crate::recipe::TrainMethod::Dpo {
        return Ok(());
    }
    let initial = plan.initial_adapter_reference();
    let started = Instant::now();
    let batch_size = plan.train.batch_size as usize;
    for data in std::iter::once(&mut loaded.train).chain(loaded.eval.as_mut()) {
        crate::train::preference::compute_reference(lm, data, batch_size, !initial)?;
    }
    println!(
        "reference: every pair's log-probabilities under {} ({:.1} s)",
        match initial {
            true => "the initial adapter",
            false => "the base, adapters off",
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Refuses a CPU run predicted not to fit, loads the model with fresh adapters onto the
/// device [`load`] started (the CPU when none); prints what was loaded.
pub fn open_model(loaded: &Loaded, memory_check: MemoryCheck) -> anyhow::Result<TaskModel> {
    let prepared = &loaded.prepared;
    let selected = match &loaded.device {
        Some(selected) => selected.clone(),
        None => device::select(DeviceChoice::Cpu)?,
    };
    let (compute, why) = device::compute_dtype(&selected, prepared.plan.compute_dtype)?;
    // In a data-parallel job rank 0 checks for every rank on its machine (they load at once).
    let leads = crate::distributed::ranks().leads();
    if let (true, true, Some((estimate, shape))) = (
        selected.on_cpu,
        leads,
        prepared.memory_estimate(&loaded.train, true, compute),
    ) {
        memory_check.refuse_over(&estimate, shape)?;
    }
    let scaling = match compute {
        Dtype::F16 => "; the loss is scaled dynamically (f16's range)",
        _ => "",
    };
    println!(
        "compute: frozen products in {} ({why}){scaling}",
        compute.name()
    );
    let started = Instant::now();
    let mut model = prepared.load_model(&selected.device, compute)?;
    let seconds = started.elapsed().as_secs_f64();
    model.compute_in(compute);
    match &mut model {
        TaskModel::Lm(lm) => {
            let storage = prepared.base_storage(compute);
            if storage != Default::default() {
                let weights: Vec<&FrozenWeight> = lm
                    .linears_mut()
                    .into_iter()
                    .map(|(_, l)| &l.weight)
                    .collect();
                let kept = weights
                    .iter()
                    .filter(|w| matches!(w, FrozenWeight::Blocks(_)))
                    .count();
                let f32_bytes = |w: &&FrozenWeight| (w.dims()[0] * w.dims()[1] * 4) as u64;
                let how = match prepared.plan.quantize {
                    Some(format) => {
                        // Rows that are not whole super-blocks take llama.cpp's fallback.
                        let fallback_cols: Vec<usize> = weights
                            .iter()
                            .filter(|w| matches!(w, FrozenWeight::Blocks(_)))
                            .map(|w| w.dims()[1])
                            .filter(|&cols| quantize::for_rows_of(format, cols) != format)
                            .collect();
                        match fallback_cols.first() {
                            None => format!("in {format:?} blocks (model.quantize)"),
                            Some(&cols) => format!(
                                "in blocks (model.quantize): {} in {format:?}, {} in {:?} (rows of {cols} values are not whole 256-value super-blocks: llama.cpp's quantiser falls back the same way)",
                                kept - fallback_cols.len(),
                                fallback_cols.len(),
                                quantize::for_rows_of(format, cols),
                            ),
                        }
                    }
                    None => "kept in their GGUF blocks".into(),
                };
                let stored = storage.dense.name();
                let held = match kept {
                    0 => format!("{} linear weights stored as {stored}", weights.len()),
                    _ => format!(
                        "{kept} of {} linear weights {how}, the rest stored as {stored}",
                        weights.len()
                    ),
                };
                println!(
                    "frozen base: {held}: {} instead of {} in f32",
                    memory::gb(weights.iter().map(|w| w.resident_bytes()).sum()),
                    memory::gb(weights.iter().map(f32_bytes).sum()),
                );
                if let FrozenWeight::Blocks(_) = &lm.embed_tokens {
                    let how = match prepared.plan.quantize_embeddings {
                        Some(format) => format!("in {format:?} blocks (model.quantize_embeddings)"),
                        None => "kept in its GGUF blocks".into(),
                    };
                    println!(
                        "embedding{}: {how}, rows decoded per lookup{}: {} instead of {} in f32",
                        if lm.lm_head.is_none() {
                            " and tied head"
                        } else {
                            ""
                        },
                        if lm.lm_head.is_none() {
                            " and chunk by chunk for the head"
                        } else {
                            ""
                        },
                        memory::gb(lm.embed_tokens.resident_bytes()),
                        memory::gb(f32_bytes(&&lm.embed_tokens)),
                    );
                }
            }
            let c = &lm.config;
            println!(
                "loaded: {} layers, hidden {}, {} heads / {} kv heads, vocab {}, in {seconds:.1} s",
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
                c.vocab_size,
            );
        }
        TaskModel::Classifier(m) => println!(
            "loaded: {} with a {}-class head, in {seconds:.1} s",
            prepared.config.describe(),
            m.labels.len()
        ),
    }
    Ok(model)
}

/// Every line indented under the command's labels.
pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("       {l}\n")).collect()
}

fn print_prepared(prepared: &Prepared) {
    let (plan, model, inventory) = (&prepared.plan, &prepared.model, &prepared.inventory);
    println!("recipe: {}", plan.recipe_path.display());
    for (reference, why) in &model.skipped {
        println!("model: skipped {reference}: {why}");
    }
    println!(
        "model: {} → {}",
        model.source.reference,
        model.files.path().display()
    );
    let products = match plan.compute_dtype {
        ComputeDtype::Auto => "products in bf16 where the device has bf16 arithmetic, else f32",
        ComputeDtype::F32 => "products in f32",
        ComputeDtype::F16 => {
            "products in f16 with dynamic loss scaling (on the CPU slower than f32: every product is converted)"
        }
        ComputeDtype::Bf16 => {
            "products in bf16 (on the CPU slower than f32: every product is converted)"
        }
    };
    println!(
        "       {}, {} tensors, {} parameters; linear weights stored as {}, {products}",
        inventory.format,
        inventory.tensors.len(),
        thousands(inventory.parameters()),
        plan.base_storage().dense.name(),
    );
    print_settings(plan);
    println!("       {}", prepared.config.describe());
    if let Some(labels) = &prepared.labels {
        println!(
            "task:  classification, {} classes ({}), {:?} pooling; the head trains in full",
            labels.len(),
            labels.join(", "),
            plan.pooling,
        );
    }
    print!("{}", prepared.report.render());
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
        "data:  {name}: {} {}, {} tokens (longest {}), {targets}, {} truncated, {} skipped",
        thousands(stats.examples as u64),
        if stats.pairs { "pairs" } else { "rows" },
        thousands(stats.tokens as u64),
        stats.longest,
        stats.truncated,
        stats.skipped
    );
    if stats.prompt_splits > 0 {
        println!(
            "       warning: {} pairs' prompt tokens are not a prefix of prompt + completion (the tokenizer merged across the boundary, or the template renders the prompt alone differently); their completions start where the tokens part, as TRL's — the model trains on a context that differs from what it sees at inference; end prompts on a token boundary or use a template that renders the prompt the same way in both",
            thousands(stats.prompt_splits as u64)
        );
    }
    let unit = match (stats.pairs, stats.packed) {
        (true, _) => " pairs (a chosen and a rejected row each)",
        (false, true) => " sequences (packed)",
        (false, false) => " sequences",
    };
    println!(
        "       {}{unit} → {} micro-batches of {}, {:.1}% of batch tokens are padding",
        thousands(stats.sequences as u64),
        stats.batches,
        stats.batch_size,
        100.0 * stats.padding_fraction()
    );
}

fn print_settings(plan: &Plan) {
    let lora = &plan.lora;
    let scale = if lora.rslora {
        lora.alpha / f64::from(lora.rank).sqrt()
    } else {
        lora.alpha / f64::from(lora.rank)
    };
    let targets = match &lora.targets {
        Targets::AllLinear => "all-linear".to_string(),
        Targets::Modules(m) => m.join(","),
        Targets::Regex(r) => format!("regex {r:?}"),
    };
    println!(
        "lora:  r={} alpha={} scale={scale} dropout={} init={:?}{} targets={targets}",
        lora.rank,
        lora.alpha,
        lora.dropout,
        lora.init,
        if lora.rslora { " rslora" } else { "" }
    );
    let data = &plan.data;
    println!(
        "data:  train={} eval={} format={:?} max_len={} packing={}",
        data.train.display(),
        data.eval
            .as_ref()
            .map(|p| p.display().to_string())
            .or(data.eval_fraction.map(|f| format!("{f} of train")))
            .unwrap_or_else(|| "none".into()),
        data.format,
        data.max_len,
        data.packing
    );
    let train = &plan.train;
    let stop = match plan.stop {
        Stop::MaxSteps(n) => format!("{n} steps"),
        Stop::Epochs(e) => format!("{e} epochs"),
    };
    let warmup = match plan.warmup {
        Warmup::Steps(n) => format!("{n} steps"),
        Warmup::Ratio(r) => format!("{r} of steps"),
    };
    let loraplus = train
        .loraplus_lr_ratio
        .map_or(String::new(), |r| format!(" (LoRA+: B at {r}× lr)"));
    let router = match train.router_aux_loss_coef {
        0.0 => String::new(),
        c => format!(" router-loss={c}"),
    };
    println!(
        "train: adamw lr={}{loraplus} {:?} warmup={warmup} stop={stop} batch={}x{} clip={} seed={}{router}",
        train.lr,
        train.schedule,
        train.batch_size,
        train.grad_accum,
        train.max_grad_norm,
        train.seed
    );
    if let Some(p) = &plan.preference {
        let method = match train.method {
            crate::recipe::TrainMethod::Simpo => {
                format!("SimPO (beta {}, gamma {})", p.beta, p.simpo_gamma)
            }
            _ => format!(
                "DPO (sigmoid, beta {}) against {}",
                p.beta,
                match plan.initial_adapter_reference() {
                    true => "the initial adapter",
                    false => "the base (adapters off)",
                }
            ),
        };
        let sft = match p.sft_weight {
            0.0 => String::new(),
            w => format!(", + {w} × the chosen completions' NLL"),
        };
        println!(
            "       preference: {method}{sft}; pairs cut to {} tokens",
            p.max_length.unwrap_or(plan.data.max_len)
        );
    }
    if train.early_stopping_patience.is_some() || train.keep_best {
        let metric = train.metric_for_best_model.unwrap_or_default().name();
        let patience = train.early_stopping_patience.map_or(String::new(), |p| {
            let threshold = train.early_stopping_threshold.unwrap_or(0.0);
            format!(" stop after {p} evaluations without an improvement > {threshold};")
        });
        let keep = if train.keep_best {
            " export the best checkpoint"
        } else {
            " export the last checkpoint"
        };
        println!("best:  by {metric}:{patience}{keep}");
    }
    let formats: Vec<String> = plan
        .export
        .formats
        .iter()
        .map(|f| format!("{f:?}").to_lowercase())
        .collect();
    println!("export: {} → {}", formats.join(","), plan.out_dir.display());
}

/// How a data-parallel job of `ranks` splits each optimiser step (one line for `plan` and runs).
pub fn data_parallel_line(plan: &crate::plan::Plan, ranks: usize) -> String {
    let (batch, accum) = (
        plan.train.batch_size as usize,
        plan.train.grad_accum as usize,
    );
    let per_rank = accum.div_ceil(ranks);
    let idle = if accum < ranks {
        format!(
            "; {} of the {ranks} ranks idle each step: raise train.grad_accum to {ranks} or a multiple of it (and lower train.batch_size to keep the global batch)",
            ranks - accum
        )
    } else if !accum.is_multiple_of(ranks) {
        format!("; uneven: raise train.grad_accum to a multiple of {ranks} for balanced ranks")
    } else {
        String::new()
    };
    format!(
        "data-parallel over {ranks} ranks: each step's {accum} micro-batches of {batch} go round-robin, up to {per_rank}x{batch} sequences per rank, {} per step in all (the single-process batch){idle}",
        batch * accum
    )
}
