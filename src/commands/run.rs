//! `lora-tune RECIPE`: prepare, read and encode the data (before any weights load, so bad data
//! fails fast), start the device, load the model, attach adapters, train, report.
//! `lora-tune eval RECIPE --adapter DIR` shares everything up to the adapters.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use super::plan::{Prepared, load_data, memory_estimate, prepare};
use crate::data::dataset::Dataset;
use crate::device::{self, DeviceChoice};
use crate::export::{gguf_lora, merge, peft, servability};
use crate::lora::peft_config::PeftConfig;
use crate::lora::targets::Adapted;
use crate::memory;
use crate::model::TaskModel;
use crate::model::adapters::AdaptedModel;
use crate::model::frozen::FrozenWeight;
use crate::plan::{Plan, Stop, Warmup};
use crate::recipe::Dtype;
use crate::recipe::ExportFormat;
use crate::source::ModelFiles;
use crate::source::ModelRef;
use crate::train::metrics::peak_rss_bytes;
use crate::train::optim::AdamWConfig;
use crate::train::schedule::LrSchedule;
use crate::train::trainer::{Settings, Summary, evaluate, steps_for_epochs, train};
use crate::weights::gguf_writer::TensorType;

/// Everything a recipe-driven command needs, loaded.
struct Session {
    prepared: Prepared,
    model: TaskModel,
    train: Dataset,
    eval: Option<Dataset>,
}

/// Whether a CPU training run's predicted peak memory is checked before the model loads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryCheck {
    Off,
    /// Against what the system has available now.
    Available,
    /// Against a budget in bytes (`--max-memory`).
    Budget(u64),
}

impl MemoryCheck {
    pub fn from_flags(off: bool, max_memory_gb: Option<f64>) -> Self {
        match (off, max_memory_gb) {
            (true, _) => Self::Off,
            (false, Some(gb)) => Self::Budget((gb.max(0.0) * 1e9) as u64),
            (false, None) => Self::Available,
        }
    }

    fn limit(self) -> Option<(u64, &'static str)> {
        match self {
            Self::Off => None,
            Self::Available => memory::available_bytes().map(|b| (b, "are available")),
            Self::Budget(b) => Some((b, "are allowed (--max-memory)")),
        }
    }
}

/// Loads the data, starts the device and loads the model. A CPU training run whose predicted
/// peak exceeds `memory_check`'s limit is refused first.
fn open_session(
    prepared: Prepared,
    device: DeviceChoice,
    memory_check: MemoryCheck,
) -> anyhow::Result<Session> {
    let (plan, files) = (&prepared.plan, &prepared.model.files);
    let (train, eval) = load_data(&prepared)?;

    let selected = device::select(device)?;
    println!("device: {} ({})", selected.name, selected.why);
    let estimate = memory_estimate(&prepared, &train);
    if let (Some((limit, which)), Some((estimate, shape))) =
        (memory_check.limit().filter(|_| selected.on_cpu), estimate)
    {
        let recompute = if shape.checkpointing {
            ""
        } else {
            "set train.gradient_checkpointing = true, "
        };
        anyhow::ensure!(
            estimate.total() <= limit,
            "this run's peak memory is predicted at {} but {} {which}; {recompute}lower train.batch_size (raise train.grad_accum to keep the effective batch) or data.max_len, close other programs, or pass --no-memory-check to try anyway",
            estimate.render(shape),
            memory::gb(limit)
        );
    }
    let started = Instant::now();
    let load = || -> Result<TaskModel, crate::weights::WeightsError> {
        Ok(match &prepared.labels {
            None => {
                let mut lm = crate::model::load(files, &selected.device, plan.base_storage())?.0;
                lm.gradient_checkpointing = plan.train.gradient_checkpointing;
                TaskModel::Lm(lm)
            }
            Some(labels) => TaskModel::Classifier(
                crate::model::load_classifier(
                    files,
                    &selected.device,
                    labels.clone(),
                    plan.pooling,
                    plan.train.seed,
                )?
                .0,
            ),
        })
    };
    let mut model = load().with_context(|| format!("loading {}", files.path().display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let storage = plan.base_storage();
    if let (TaskModel::Lm(lm), false) = (&mut model, storage == Default::default()) {
        let weights: Vec<_> = lm
            .linears_mut()
            .into_iter()
            .map(|(_, l)| &l.weight)
            .collect();
        let kept = weights
            .iter()
            .filter(|w| matches!(w, FrozenWeight::Blocks(_)))
            .count();
        let f32_bytes = |w: &&FrozenWeight| (w.dims()[0] * w.dims()[1] * 4) as u64;
        println!(
            "frozen base: {kept} of {} linear weights kept in their GGUF blocks, the rest stored as {:?}: {} instead of {} in f32",
            weights.len(),
            plan.dtype,
            memory::gb(weights.iter().map(|w| w.resident_bytes()).sum()),
            memory::gb(weights.iter().map(f32_bytes).sum()),
        );
    }
    match &model {
        TaskModel::Lm(m) => {
            let c = &m.config;
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
    model
        .attach_adapters(&prepared.adapted, &plan.lora, plan.train.seed)
        .map_err(anyhow::Error::msg)?;
    Ok(Session {
        prepared,
        model,
        train,
        eval,
    })
}

pub fn run(
    recipe: &Path,
    device: DeviceChoice,
    resume: Option<&Path>,
    force: bool,
    memory_check: MemoryCheck,
) -> anyhow::Result<()> {
    let prepared = prepare(recipe)?;
    let out_dir = &prepared.plan.out_dir;
    let earlier_run = [peft::WEIGHTS_FILE, "checkpoints"]
        .iter()
        .any(|f| out_dir.join(f).exists());
    if resume.is_none() && earlier_run {
        anyhow::ensure!(
            force,
            "{} already holds an earlier run (adapters or checkpoints); continue it with --resume {}, replace it with --force, or set export.out_dir",
            out_dir.display(),
            out_dir.display()
        );
        // Stale checkpoints would let a later --resume pick up the old run.
        let old = out_dir.join("checkpoints");
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    // A run killed before its first checkpoint has nothing to resume: it starts over.
    let resume = resume.filter(|dir| {
        let nothing_yet = crate::train::checkpoint::find(dir).is_err() && same_dir(dir, out_dir);
        if nothing_yet {
            println!(
                "resume: no complete checkpoint in {} yet; starting from step 0",
                dir.display()
            );
        }
        !nothing_yet
    });
    let mut s = open_session(prepared, device, memory_check)?;
    let plan = &s.prepared.plan;
    if let Some(dir) = plan.lora.init_from.as_ref().filter(|_| resume.is_none()) {
        let file = dir.join(crate::train::checkpoint::ADAPTER_FILE);
        s.model
            .load_adapter_weights(&file)
            .with_context(|| format!("lora.init_from: {}", dir.display()))?;
        println!("init:  adapters from {}", dir.display());
    }
    let mut peft_config = PeftConfig::new(
        &plan.lora,
        &s.prepared.adapted,
        base_model_name(&s.prepared.model.source.reference),
        hub_revision(&s.prepared.model.source.reference),
    );
    if s.prepared.labels.is_some() {
        peft_config = peft_config.for_classification();
    }
    let t = &plan.train;
    let (batch_size, grad_accum) = (t.batch_size as usize, t.grad_accum as usize);
    let total_steps = match plan.stop {
        Stop::MaxSteps(n) => u64::from(n),
        Stop::Epochs(e) => steps_for_epochs(&s.train, batch_size, grad_accum, e),
    };
    let warmup_steps = match plan.warmup {
        Warmup::Steps(n) => u64::from(n),
        Warmup::Ratio(r) => (r * total_steps as f64).ceil() as u64, // as transformers
    };
    let settings = Settings {
        schedule: LrSchedule {
            kind: t.schedule,
            peak: t.lr,
            warmup_steps,
            total_steps,
        },
        adamw: AdamWConfig {
            betas: t.betas,
            eps: t.eps,
            weight_decay: t.weight_decay,
        },
        batch_size,
        grad_accum,
        max_grad_norm: t.max_grad_norm,
        seed: t.seed,
        eval_every: t.eval_every.map(u64::from),
        checkpoint_every: t.checkpoint_every.map(u64::from),
        out_dir: plan.out_dir.clone(),
        peft_config: Some(peft_config.clone()),
        class_map: s
            .prepared
            .labels
            .as_ref()
            .map(|l| peft::ClassMap::new(l, plan.pooling)),
        progress: true,
        skip_nonfinite: t.skip_nonfinite,
    };
    println!(
        "train: {total_steps} steps of {batch_size}x{grad_accum} sequences, warmup {warmup_steps}, out {}",
        plan.out_dir.display()
    );
    crate::train::interrupt::install();
    let summary = train(&mut s.model, &s.train, s.eval.as_ref(), &settings, resume)?;
    print_summary(&summary);
    if summary.interrupted {
        anyhow::bail!(
            "interrupted after step {} of {total_steps}; checkpoint {}; continue with: lora-tune {} --resume {}",
            summary.steps,
            summary
                .last_checkpoint
                .as_ref()
                .map_or("none".into(), |d| d.display().to_string()),
            plan.recipe_path.display(),
            plan.out_dir.display()
        );
    }
    let formats = &plan.export.formats;
    let adapters = s.model.adapter_tensors()?; // read back from the device once for all formats
    let lm = match &s.model {
        TaskModel::Lm(m) => Some(m),
        TaskModel::Classifier(_) => None,
    };
    if let Some(m) = lm {
        for finding in servability::check(&peft_config, &m.config) {
            println!("check: {finding}");
        }
    }
    if formats.contains(&ExportFormat::Peft) {
        let card = model_card(plan, &peft_config, &summary, &s.prepared.adapted);
        peft::write(
            &plan.out_dir,
            &adapters,
            plan.export.dtype,
            &peft_config,
            Some(&card),
        )
        .with_context(|| format!("exporting to {}", plan.out_dir.display()))?;
        if let TaskModel::Classifier(c) = &s.model {
            if plan.pooling == crate::recipe::Pooling::Mean {
                println!(
                    "check: model.pooling = \"mean\": transformers' *ForSequenceClassification pool the first (BERT) or last (decoder) token, so PEFT loads this folder but predicts differently; `lora-tune predict` reads the pooling from classifier.json"
                );
            }
            peft::write_class_map(&plan.out_dir, &peft::ClassMap::new(&c.labels, plan.pooling))
                .with_context(|| format!("exporting to {}", plan.out_dir.display()))?;
        }
        println!(
            "export: PEFT adapter folder {} (adapter_config.json, adapter_model.safetensors, README.md)",
            plan.out_dir.display()
        );
        println!(
            "       serve: {}",
            vllm_command(&peft_config, &plan.name, &plan.out_dir)
        );
    }
    let Some(lm) = lm else {
        return Ok(()); // a classifier exports PEFT only (checked in the plan)
    };
    if formats.contains(&ExportFormat::Gguf) {
        let path = plan.out_dir.join(format!("{}.lora.gguf", plan.name));
        gguf_lora::write(
            &path,
            &lm.config,
            adapters,
            &peft_config,
            &plan.name,
            match plan.export.dtype {
                Dtype::F32 => TensorType::F32,
                Dtype::Bf16 => TensorType::Bf16,
                Dtype::F16 => TensorType::F16,
            },
        )
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("exporting to {}", path.display()))?;
        println!("export: llama.cpp LoRA {}", path.display());
        println!(
            "       serve: llama-server -m BASE.gguf --lora {}",
            path.display()
        );
    }
    if formats.contains(&ExportFormat::Merged) {
        // The last checkpoint is a complete PEFT folder of the final adapters.
        let adapter = summary
            .last_checkpoint
            .as_ref()
            .context("no checkpoint to merge")?;
        let files = &s.prepared.model.files;
        let tokenizer = match files {
            ModelFiles::Gguf(_) => Some(crate::model::tokenizer_of(files)?),
            _ => None,
        };
        let out = plan.out_dir.join("merged");
        let m = merge::merge(
            files,
            &lm.config,
            tokenizer.as_ref(),
            adapter,
            &out,
            Dtype::F32,
            5_000_000_000,
        )
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("merging into {}", out.display()))?;
        println!(
            "export: merged model {} ({} tensors, {} folded, {} shard(s))",
            out.display(),
            m.tensors,
            m.folded,
            m.shards
        );
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn print_summary(s: &Summary) {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    println!("done:  steps {}..{}", s.first_step + 1, s.steps);
    println!("       train loss {} → {}", f(s.first_loss), f(s.last_loss));
    if let Some(e) = &s.eval {
        let before = s
            .eval_before
            .as_ref()
            .map_or(String::new(), |b| format!("{} → ", b.brief()));
        println!("       eval {before}{}", e.brief());
        if let Some(classes) = &e.classes {
            print!("{}", indent(&classes.render()));
        }
    }
    println!(
        "       {} tokens in {:.1} s ({:.0} tok/s), peak RSS {}",
        s.tokens,
        s.seconds,
        s.tokens as f64 / s.seconds.max(1e-9),
        peak_rss_bytes().map_or("?".into(), |b| format!("{:.2} GB", b as f64 / 1e9))
    );
    if !s.skipped.is_empty() {
        let steps: Vec<String> = s.skipped.iter().map(|k| k.step.to_string()).collect();
        println!(
            "       skipped {} non-finite step(s): {} (train.skip_nonfinite)",
            s.skipped.len(),
            steps.join(", ")
        );
    }
    if let Some(dir) = &s.last_checkpoint {
        println!("       checkpoint {}", dir.display());
    }
    println!("       metrics {}", s.metrics.display());
    println!("       loss curve {}", s.plot.display());
}

/// `lora-tune eval RECIPE [--adapter DIR]`: loss and perplexity on the eval split, of the base
/// model (no adapter) or with a trained adapter / checkpoint.
pub fn eval(recipe: &Path, adapter: Option<&Path>, device: DeviceChoice) -> anyhow::Result<()> {
    let mut s = open_session(prepare(recipe)?, device, MemoryCheck::Off)?;
    let data = s.eval.as_ref().unwrap_or(&s.train);
    let which = if s.eval.is_some() {
        "eval split"
    } else {
        "train set (no eval split in the recipe)"
    };
    match adapter {
        Some(dir) => {
            let dir = crate::train::checkpoint::find(dir).unwrap_or_else(|_| dir.into());
            if let Some(labels) = &s.prepared.labels {
                let trained = peft::read_class_map(&dir)
                    .with_context(|| format!("--adapter {}", dir.display()))?
                    .labels();
                anyhow::ensure!(
                    &trained == labels,
                    "--adapter {}: trained on the labels [{}], but the recipe's data has [{}]",
                    dir.display(),
                    trained.join(", "),
                    labels.join(", ")
                );
            }
            s.model
                .load_adapter_weights(&dir.join(crate::train::checkpoint::ADAPTER_FILE))
                .with_context(|| format!("--adapter {}", dir.display()))?;
            println!("adapter: {}", dir.display());
        }
        None => {
            for (_, a) in s.model.adapters_mut() {
                a.scale = 0.0; // B = 0 already; make the base-only intent explicit
            }
            println!("adapter: none (base model)");
        }
    }
    let e = evaluate(
        &mut s.model,
        data,
        s.prepared.plan.train.batch_size as usize,
    )?;
    println!("eval:  {which}: {}", e.brief());
    if let Some(classes) = &e.classes {
        print!("{}", indent(&classes.render()));
    }
    Ok(())
}

/// Every line indented under the command's labels.
fn indent(text: &str) -> String {
    text.lines().map(|l| format!("       {l}\n")).collect()
}

/// The id PEFT and servers know the base by: the hub repo for `hf://`, else the reference.
fn base_model_name(reference: &ModelRef) -> String {
    match reference {
        ModelRef::Hf { repo, .. } => repo.clone(),
        other => other.to_string(),
    }
}

fn hub_revision(reference: &ModelRef) -> Option<String> {
    match reference {
        ModelRef::Hf { revision, .. } => revision.clone(),
        _ => None,
    }
}

/// vLLM's `--max-lora-rank` buckets; the smallest that holds our largest rank.
fn vllm_command(config: &PeftConfig, name: &str, dir: &Path) -> String {
    let bucket = servability::vllm_rank_bucket(config).unwrap_or(config.r);
    let base = config.base_model_name_or_path.as_deref().unwrap_or("");
    // vLLM wants the base as a hub id or HF directory, not our pip:// or GGUF reference.
    let (base, note) = if base.contains("://") || base.ends_with(".gguf") || base.is_empty() {
        (
            "HF_BASE",
            format!("  # HF_BASE: the Hugging Face id of {base}"),
        )
    } else {
        (base, String::new())
    };
    format!(
        "vllm serve {base} --enable-lora --lora-modules {name}={} --max-lora-rank {bucket}{note}",
        dir.display()
    )
}

/// A short model card: what was trained on what, the figures, how to use it.
fn model_card(plan: &Plan, config: &PeftConfig, s: &Summary, adapted: &[Adapted]) -> String {
    let base = config.base_model_name_or_path.as_deref().unwrap_or("?");
    let trainable: u64 = adapted.iter().map(Adapted::parameters).sum();
    let eval = s.eval.as_ref().map_or("no eval split".into(), |e| {
        let before = s.eval_before.as_ref().map_or(String::new(), |b| {
            format!("{} before training → ", b.brief())
        });
        format!("eval {before}{}", e.brief())
    });
    let classifier = config.task_type.as_deref() == Some("SEQ_CLS");
    let auto = if classifier {
        "AutoPeftModelForSequenceClassification"
    } else {
        "AutoPeftModelForCausalLM"
    };
    format!(
        "---\nbase_model: {base}\nlibrary_name: peft\ntags:\n- lora\n- lora-tune\n---\n\n\
         # {name}\n\n\
         LoRA adapter for `{base}`, trained by lora-tune {version} with the recipe `{recipe}` on \
         `{data}`.\n\n\
         - r = {r}, alpha = {alpha}{rs}, dropout {dropout}, targets: {targets}; {trainable} trainable parameters\n\
         - {steps} optimiser steps; train loss {first} → {last}; {eval}\n\n\
         ## Use\n\n\
         ```python\n{pre}from peft import {auto}\nmodel = {auto}.from_pretrained(\"{dir}\"{args})\n```\n\n\
         ```sh\n{vllm}\n```\n",
        name = plan.name,
        version = env!("CARGO_PKG_VERSION"),
        recipe = plan.recipe_path.display(),
        data = plan.data.train.display(),
        r = config.r,
        alpha = config.lora_alpha,
        rs = if config.use_rslora { " (rsLoRA)" } else { "" },
        dropout = config.lora_dropout,
        targets = config.target_modules,
        steps = s.steps,
        first = s.first_loss.map_or("-".into(), |v| format!("{v:.4}")),
        last = s.last_loss.map_or("-".into(), |v| format!("{v:.4}")),
        dir = plan.out_dir.display(),
        vllm = vllm_command(config, &plan.name, &plan.out_dir),
        pre = if classifier {
            format!(
                "import json\nlabels = json.load(open(\"{}/{}\"))\n",
                plan.out_dir.display(),
                peft::CLASS_MAP_FILE
            )
        } else {
            String::new()
        },
        args = if classifier {
            ", num_labels=len(labels[\"id2label\"]), id2label=labels[\"id2label\"], label2id=labels[\"label2id\"]"
        } else {
            ""
        },
    )
}
