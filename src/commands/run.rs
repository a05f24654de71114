//! `lora-tune RECIPE`: prepare, read and encode the data (before any weights load, so bad data
//! fails fast), start the device, load the model with its adapters, train, then export the last
//! checkpoint in every format the recipe names.

use std::path::Path;

use anyhow::Context;

use super::session::{self, indent};
use crate::device::DeviceChoice;
use crate::distributed;
use crate::export::card::ModelCard;
use crate::export::{self, Base, Exported, Request, servability};
use crate::memory::MemoryCheck;
use crate::model::TaskModel;
use crate::model::adapted::AdaptedModel;
use crate::peft::folder::{ClassMap, WEIGHTS_FILE};
use crate::plan::Plan;
use crate::recipe::{ExportFormat, Pooling};
use crate::train::checkpoint;
use crate::train::metrics::peak_rss_bytes;
use crate::train::trainer::{Settings, Summary, train};

pub fn run(
    recipe: &Path,
    device: DeviceChoice,
    resume: Option<&Path>,
    force: bool,
    memory_check: MemoryCheck,
) -> anyhow::Result<()> {
    // Under mpirun rank 0 fetches the model and clears an old run first; the others follow.
    let ranks = distributed::ranks();
    let mut loaded = distributed::leader_first(|| session::load(recipe, Some(device)))?;
    let plan = &loaded.prepared.plan;
    let resume = distributed::leader_first(|| clear_or_resume(&plan.out_dir, resume, force))?;
    let mut model = session::open_model(&loaded, memory_check)?;
    // DPO against the initial adapter needs it for the reference, resumed or not.
    let initial_reference = plan.initial_adapter_reference();
    if let Some(dir) =
        (plan.lora.init_from.as_ref()).filter(|_| resume.is_none() || initial_reference)
    {
        // PiSSA / OLoRA adapters only continue on the base their init left behind.
        let (_, from) = crate::peft::folder::read_lora(dir)?;
        anyhow::ensure!(
            from.init == plan.lora.init || !(from.init.reads_base() || plan.lora.init.reads_base()),
            "lora.init_from: {} was initialised with {} and this recipe says lora.init = \"{}\"; PiSSA / OLoRA adapters continue only with the same init (the base holds the residual)",
            dir.display(),
            from.init.name(),
            plan.lora.init.name()
        );
        model
            .load_adapter_weights(&dir.join(WEIGHTS_FILE))
            .with_context(|| format!("lora.init_from: {}", dir.display()))?;
        println!("init:  adapters from {}", dir.display());
    }
    session::compute_references(&mut loaded, &mut model)?;
    let plan = &loaded.prepared.plan;
    let prepared = &loaded.prepared;
    let peft_config = prepared.peft_config();
    let class_map = (prepared.labels.as_ref()).map(|l| ClassMap::new(l, plan.pooling));
    let settings = Settings::from_plan(plan, &loaded.train, Some(peft_config.clone()), class_map);
    println!(
        "train: {} steps of {}x{} {}, warmup {}, out {}",
        settings.schedule.total_steps,
        settings.batch_size,
        settings.grad_accum,
        if loaded.train.is_pairs() {
            "pairs"
        } else {
            "sequences"
        },
        settings.schedule.warmup_steps,
        plan.out_dir.display()
    );
    if ranks.is_parallel() {
        println!("       {}", session::data_parallel_line(plan, ranks.size));
    }
    crate::train::interrupt::install();
    let launcher = if ranks.is_parallel() {
        "mpirun -np N "
    } else {
        ""
    };
    let resume_command = format!(
        "{launcher}lora-tune {} --resume {}",
        plan.recipe_path.display(),
        plan.out_dir.display()
    );
    crate::train::interrupt::set_resume_command(resume_command.clone());
    let autotune = loaded.device.as_ref().and_then(|d| d.autotune.clone());
    let tuned_before = autotune.as_deref().map_or(0, crate::cache::decisions);
    let summary = train(
        &mut model,
        &loaded.train,
        loaded.eval.as_ref(),
        &settings,
        resume,
    )?;
    // Every rank left the loop at the same step: no collective follows.
    distributed::done_communicating();
    if !ranks.leads() {
        return Ok(()); // rank 0 reports the run and exports it
    }
    print_summary(&summary, plan);
    // GPU backends report their allocator's pools (flex does not): what the run holds there.
    if let Some(usage) = loaded
        .device
        .as_ref()
        .and_then(|d| d.device.memory_pool_usage())
    {
        println!(
            "       device memory: {} reserved by the allocator at the end, {} in use",
            crate::memory::gb(usage.bytes_reserved),
            crate::memory::gb(usage.bytes_in_use),
        );
    }
    if let Some(dir) = &autotune {
        match crate::cache::decisions(dir).saturating_sub(tuned_before) {
            0 => println!("       autotune: no kernel was tuned; every choice came from the cache"),
            n => println!(
                "       autotune: {n} kernel choices tuned in this run, kept for the next in {}",
                dir.display()
            ),
        }
    }
    if summary.interrupted {
        anyhow::bail!(
            "interrupted after step {} of {}; checkpoint {}; continue with: {resume_command}",
            summary.steps,
            settings.schedule.total_steps,
            summary
                .last_checkpoint
                .as_ref()
                .map_or("none".into(), |d| d.display().to_string()),
        );
    }
    // The last checkpoint (or with keep_best the best one) is a complete PEFT folder of the
    // adapters: every format is exported from it by the same entry point as `lora-tune export`.
    let last = match &summary.export_from {
        Some(dir) => dir.clone(),
        None => checkpoint::find(&plan.out_dir)?, // a resumed run that was already done
    };
    let base = match &model {
        TaskModel::Lm(lm) => Some(Base {
            files: prepared.model.files.clone(),
            config: lm.config.clone(),
        }),
        TaskModel::Classifier(_) => None, // a classifier exports PEFT only (checked in the plan)
    };
    if plan.lora.init.reads_base() {
        println!(
            "check: lora.init = \"{}\": exported as a plain LoRA of rank {} for the original base (ΔW = s·(B·A − B₀·A₀), as PEFT's path_initial_model_for_weight_conversion); checkpoints keep the {} form",
            plan.lora.init.name(),
            2 * plan.lora.rank,
            plan.lora.init.name()
        );
    }
    if let Some(base) = &base {
        for finding in servability::check(&peft_config, &base.config) {
            println!("check: {finding}");
        }
    }
    let card = ModelCard {
        name: &plan.name,
        recipe: &plan.recipe_path,
        data: &plan.data.train,
        trainable: prepared.report.trainable,
        steps: summary.steps,
        first_loss: summary.first_loss,
        last_loss: summary.last_loss,
        eval: summary.eval.as_ref().map_or("no eval split".into(), |e| {
            let before = summary.eval_before.as_ref().map_or(String::new(), |b| {
                format!("{} before training → ", b.brief())
            });
            let best = summary
                .best
                .filter(|_| plan.train.keep_best)
                .map_or(String::new(), |b| {
                    format!(
                        "; exported: the best evaluation, step {} ({:.4})",
                        b.step, b.value
                    )
                });
            format!("eval {before}{}{best}", e.brief())
        }),
        dir: &plan.out_dir,
    }
    .render(&peft_config);
    for &format in &plan.export.formats {
        if format != ExportFormat::Peft && base.is_none() {
            continue;
        }
        let out = match format {
            ExportFormat::Peft => plan.out_dir.clone(),
            ExportFormat::Gguf => plan.out_dir.join(format!("{}.lora.gguf", plan.name)),
            ExportFormat::Merged => plan.out_dir.join("merged"),
        };
        let request = Request {
            adapter: &last,
            format,
            out: &out,
            dtype: plan.export.dtype.into(),
            max_shard_bytes: export::DEFAULT_MAX_SHARD_MB * 1_000_000,
            base: base.as_ref(),
            name: &plan.name,
            card: Some(&card),
        };
        let exported =
            export::export(&request).with_context(|| format!("exporting to {}", out.display()))?;
        print_export(plan, &peft_config, &out, &exported);
    }
    Ok(())
}

/// Refuses to train over an earlier run unless resuming or forced (a forced run drops the old
/// checkpoints, which a later --resume would pick up); the resume directory, if any is left.
fn clear_or_resume<'a>(
    out_dir: &Path,
    resume: Option<&'a Path>,
    force: bool,
) -> anyhow::Result<Option<&'a Path>> {
    let earlier_run = [WEIGHTS_FILE, "checkpoints"]
        .iter()
        .any(|f| out_dir.join(f).exists());
    if resume.is_none() && earlier_run {
        anyhow::ensure!(
            force,
            "{} already holds an earlier run (adapters or checkpoints); continue it with --resume {}, replace it with --force, or set export.out_dir",
            out_dir.display(),
            out_dir.display()
        );
        let old = out_dir.join("checkpoints");
        if old.exists() {
            std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    // A run killed before its first checkpoint has nothing to resume: it starts over.
    Ok(resume.filter(|dir| {
        let same_dir =
            matches!((dir.canonicalize(), out_dir.canonicalize()), (Ok(a), Ok(b)) if a == b);
        let nothing_yet = checkpoint::find(dir).is_err() && same_dir;
        if nothing_yet {
            println!(
                "resume: no complete checkpoint in {} yet; starting from step 0",
                dir.display()
            );
        }
        !nothing_yet
    }))
}

fn print_export(
    plan: &Plan,
    config: &crate::peft::config::PeftConfig,
    out: &Path,
    exported: &Exported,
) {
    match exported {
        Exported::Peft { .. } => {
            if config.task_type.as_deref() == Some("SEQ_CLS") && plan.pooling == Pooling::Mean {
                println!(
                    "check: model.pooling = \"mean\": transformers' *ForSequenceClassification pool the first (BERT) or last (decoder) token, so PEFT loads this folder but predicts differently; `lora-tune predict` reads the pooling from classifier.json"
                );
            }
            println!(
                "export: PEFT adapter folder {} (adapter_config.json, adapter_model.safetensors, README.md)",
                out.display()
            );
            println!(
                "       serve: {}",
                servability::vllm_command(config, &plan.name, out)
            );
        }
        Exported::Gguf { .. } => {
            println!("export: llama.cpp LoRA {}", out.display());
            println!(
                "       serve: llama-server -m BASE.gguf --lora {}",
                out.display()
            );
        }
        Exported::Merged(m) => println!(
            "export: merged model {} ({} tensors, {} folded, {} shard(s), {:?})",
            out.display(),
            m.tensors,
            m.folded,
            m.shards,
            plan.export.dtype
        ),
    }
}

fn print_summary(summary: &Summary, plan: &Plan) {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    println!("done:  steps {}..{}", summary.first_step + 1, summary.steps);
    if summary.stopped_early {
        println!(
            "       stopped early after step {}: no improvement for {} evaluations (train.early_stopping_patience)",
            summary.steps,
            summary.best.map_or(0, |b| b.stale_evals)
        );
    }
    println!(
        "       train loss {} → {}",
        f(summary.first_loss),
        f(summary.last_loss)
    );
    if let Some(e) = &summary.eval {
        let before = summary
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
        summary.tokens,
        summary.seconds,
        summary.tokens as f64 / summary.seconds.max(1e-9),
        peak_rss_bytes().map_or("?".into(), |b| format!("{:.2} GB", b as f64 / 1e9))
    );
    if !summary.skipped.is_empty() {
        let steps: Vec<String> = summary.skipped.iter().map(|k| k.step.to_string()).collect();
        println!(
            "       skipped {} non-finite step(s): {} (train.skip_nonfinite)",
            summary.skipped.len(),
            steps.join(", ")
        );
    }
    if let Some(s) = summary.loss_scale {
        println!(
            "       f16 loss scale {} at the end; {} step(s) skipped for overflowed gradients (see metrics.jsonl's `overflowed`)",
            s.scale, s.skipped
        );
    }
    if let Some(dir) = &summary.last_checkpoint {
        println!("       checkpoint {}", dir.display());
    }
    if let Some(best) = summary.best {
        let metric = plan.train.metric_for_best_model.unwrap_or_default();
        let exported = match &summary.export_from {
            Some(dir) if plan.train.keep_best => format!(", exported from {}", dir.display()),
            _ => String::new(),
        };
        println!(
            "       best {} {:.4} at step {}{exported}",
            metric.name(),
            best.value,
            best.step
        );
    }
    println!("       metrics {}", summary.metrics.display());
    println!("       loss curve {}", summary.plot.display());
}
