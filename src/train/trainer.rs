//! The training loop: micro-batches from the dataset's seeded stream, one optimiser step each
//! `grad_accum` of them, eval every N steps and at the end, checkpoints every N steps and at the
//! end, metrics per step, an indicatif bar. Resuming loads a checkpoint and continues at its
//! step with the same batches, learning rates and dropout draws as the uninterrupted run.
//! In a data-parallel job every rank runs this loop in lockstep on its share of each step
//! (`step::Share`); rank 0 alone prints and writes metrics and checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use super::TrainError;
use super::checkpoint::{self, TrainerState};
use super::early_stopping::{Best, EarlyStopping};
use super::evaluate::{Eval, evaluate};
use super::loss::Objective;
use super::loss_scale::LossScale;
use super::metrics::{MetricsLog, StepRecord};
use super::optim::{AdamW, AdamWConfig};
use super::progress::Progress;
use super::schedule::LrSchedule;
use super::step::{Share, StepStats, train_step_share};
use crate::data::dataset::Dataset;
use crate::distributed;
use crate::dtype::Dtype;
use crate::peft::config::PeftConfig;
use crate::peft::folder::ClassMap;
use crate::plan::{Plan, Stop, Warmup};
use crate::recipe::ReportTo;

#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: LrSchedule,
    pub adamw: AdamWConfig,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub eval_every: Option<u64>,
    pub checkpoint_every: Option<u64>,
    pub out_dir: PathBuf,
    /// Written into every checkpoint, making each a PEFT adapter folder.
    pub peft_config: Option<PeftConfig>,
    /// A classifier's labels, written into every checkpoint beside the adapters.
    pub class_map: Option<ClassMap>,
    /// Show the progress bar (off in tests).
    pub progress: bool,
    /// Skip (no update) a step whose loss or gradient is non-finite instead of stopping.
    pub skip_nonfinite: bool,
    /// Compare the evaluations during training (early stopping, `keep_best`).
    pub early_stopping: Option<EarlyStopping>,
    /// Checkpoint each new best evaluation and export the best instead of the last.
    pub keep_best: bool,
    /// Write a TensorBoard event file beside metrics.jsonl.
    pub tensorboard: bool,
    /// Where f16 products' loss scaling starts (torch's `GradScaler` default); unused unless
    /// the model's products are f16.
    pub loss_scale: LossScale,
}

impl Settings {
    /// The recipe's training settings for `train` (epochs become steps, a warmup ratio becomes
    /// steps as transformers rounds it). `peft_config` makes each checkpoint a PEFT folder;
    /// `class_map` is a classifier's.
    pub fn from_plan(
        plan: &Plan,
        train: &Dataset,
        peft_config: Option<PeftConfig>,
        class_map: Option<ClassMap>,
    ) -> Self {
        let t = &plan.train;
        let (batch_size, grad_accum) = (t.batch_size as usize, t.grad_accum as usize);
        let total_steps = match plan.stop {
            Stop::MaxSteps(n) => u64::from(n),
            Stop::Epochs(e) => steps_for_epochs(train, batch_size, grad_accum, e),
        };
        let warmup_steps = match plan.warmup {
            Warmup::Steps(n) => u64::from(n),
            Warmup::Ratio(r) => (r * total_steps as f64).ceil() as u64,
        };
        Self {
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
                loraplus_lr_ratio: t.loraplus_lr_ratio,
            },
            batch_size,
            grad_accum,
            max_grad_norm: t.max_grad_norm,
            seed: t.seed,
            eval_every: t.eval_every.map(u64::from),
            checkpoint_every: t.checkpoint_every.map(u64::from),
            out_dir: plan.out_dir.clone(),
            peft_config,
            class_map,
            progress: true,
            skip_nonfinite: t.skip_nonfinite,
            early_stopping: (t.early_stopping_patience.is_some() || t.keep_best).then(|| {
                EarlyStopping {
                    metric: t.metric_for_best_model.unwrap_or_default(),
                    patience: t.early_stopping_patience,
                    threshold: t.early_stopping_threshold.unwrap_or(0.0),
                }
            }),
            keep_best: t.keep_best,
            tensorboard: t.report_to.contains(&ReportTo::Tensorboard),
            loss_scale: LossScale::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub first_step: u64,
    /// Stopped early on Ctrl-C / SIGTERM, after writing a checkpoint.
    pub interrupted: bool,
    /// Stopped by early stopping (patience spent) at `steps`.
    pub stopped_early: bool,
    /// The best evaluation during training, where evaluations are compared.
    pub best: Option<Best>,
    /// What to export: the best evaluation's checkpoint with `keep_best`, else the last one
    /// written (none when a resumed run had nothing left to do).
    pub export_from: Option<PathBuf>,
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// Eval before the first step (fresh runs only), then after the last.
    pub eval_before: Option<Eval>,
    pub eval: Option<Eval>,
    pub tokens: u64,
    pub seconds: f64,
    pub last_checkpoint: Option<PathBuf>,
    /// Steps skipped for non-finite values (`skip_nonfinite`), with their rows.
    pub skipped: Vec<SkippedStep>,
    /// f16 products: the loss scale at the end, and the steps skipped for overflowed gradients
    /// over the whole run (resumes included).
    pub loss_scale: Option<LossScale>,
    pub metrics: PathBuf,
    pub plot: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SkippedStep {
    pub step: u64,
    /// `file:line` of every row in the step's batches.
    pub rows: Vec<String>,
}

/// Steps needed for `epochs` passes over `train`.
pub fn steps_for_epochs(train: &Dataset, batch_size: usize, grad_accum: usize, epochs: f64) -> u64 {
    let micro = (train.batches_per_epoch(batch_size) as f64 * epochs).ceil() as u64;
    micro.div_ceil(grad_accum as u64).max(1)
}

/// Trains `model`'s adapters on `train`; `resume` is a checkpoint or run directory.
pub fn train(
    model: &mut impl Objective,
    train: &Dataset,
    eval: Option<&Dataset>,
    settings: &Settings,
    resume: Option<&Path>,
) -> anyhow::Result<Summary> {
    let ranks = distributed::ranks();
    let leads = ranks.leads();
    std::fs::create_dir_all(&settings.out_dir)
        .with_context(|| format!("creating {}", settings.out_dir.display()))?;
    if leads {
        // What a killed run was writing (checkpoint dirs, adapter files) is garbage now.
        crate::atomic::remove_stale_temps(&settings.out_dir);
        crate::atomic::remove_stale_temps(&settings.out_dir.join("checkpoints"));
    }
    let total = settings.schedule.total_steps;
    let mut state = TrainerState {
        step: 0,
        total_steps: total,
        seed: settings.seed,
        batch_size: settings.batch_size,
        grad_accum: settings.grad_accum,
        train_examples: train.examples.len(),
        tokens: 0,
        best: None,
        loss_scale: None,
    };
    let mut optimizer = AdamW::new(settings.adamw);
    let resumed = match resume {
        Some(dir) => Some(resume_from(dir, model, &mut optimizer, &mut state)?),
        None => None,
    };
    // f16 products scale the loss: from the checkpoint's scale, or from the start.
    state.loss_scale = match model.compute_dtype() {
        Dtype::F16 => Some(state.loss_scale.unwrap_or(settings.loss_scale)),
        _ => None,
    };
    if let (Some(rule), Some(best), Some(dir)) = (&settings.early_stopping, state.best, resume)
        && let Some(why) = rule.cannot_continue(best, settings.keep_best, &settings.out_dir)
    {
        anyhow::bail!("cannot resume from {}: {why}", dir.display());
    }
    let first_step = state.step;
    let mut metrics = leads
        .then(|| MetricsLog::open(&settings.out_dir, first_step, settings.tensorboard))
        .transpose()
        .with_context(|| format!("writing {}/metrics.jsonl", settings.out_dir.display()))?;
    let progress = Progress::new(total, first_step, settings.progress && leads);
    if let Some(line) = resumed {
        progress.always(line);
    }
    model.set_training(true);
    let eval_before = match eval.filter(|_| first_step == 0) {
        Some(data) => {
            let e = evaluate(model, data, settings.batch_size)?;
            progress.say(format!("step 0: eval {}", e.brief()));
            Some(e)
        }
        None => None,
    };
    let started = Instant::now();
    let (mut first_loss, mut last_loss, mut last_eval, mut last_checkpoint) =
        (None, None, None, None);
    let mut run_tokens = 0u64;
    let mut skipped = Vec::new();
    let mut stopped_early = (settings.early_stopping).is_some_and(|r| r.spent(state.best));
    while state.step < total && !stopped_early {
        let step = state.step;
        let micro: Vec<_> = (0..settings.grad_accum)
            .map(|j| {
                let index = step as usize * settings.grad_accum + j;
                train.micro_batch(index, settings.batch_size, settings.seed)
            })
            .collect();
        // Dropout draws depend on (seed, step, micro-batch) only, so a resumed run repeats them
        // and a micro-batch draws the same masks on whichever rank computes it.
        let share = Share {
            ranks,
            dropout_seed: Some(crate::model::adapted::stream_seed(settings.seed, step)),
        };
        let lr = settings.schedule.lr(step);
        let step_started = Instant::now();
        let rows = || step_rows(train, settings, step);
        let stats = match train_step_share(
            model,
            &micro,
            share,
            &mut optimizer,
            lr,
            settings.max_grad_norm,
            state.loss_scale.as_mut(),
        ) {
            Ok(stats) => {
                if stats.overflowed {
                    // torch's GradScaler skips such a step too; the scale halved for the next.
                    progress.always(format!(
                        "step {}: skipped, f16 gradients overflowed at loss scale {}; now {}",
                        step + 1,
                        stats.loss_scale.unwrap_or(1.0),
                        state.loss_scale.map_or(1.0, |s| s.scale),
                    ));
                }
                stats
            }
            Err(
                TrainError::NonFinite { loss, grad_norm }
                | TrainError::HalfOverflow { loss, grad_norm },
            ) if settings.skip_nonfinite => {
                // No update was applied: the adapters and optimiser are as before the step.
                let rows = rows();
                let rows_text = rows.join(", ");
                progress.always(format!(
                    "step {}: skipped, non-finite loss {loss} / gradient norm {grad_norm} (rows {rows_text})",
                    step + 1,
                ));
                skipped.push(SkippedStep {
                    step: step + 1,
                    rows,
                });
                StepStats {
                    loss,
                    grad_norm,
                    loss_tokens: 0,
                    tokens: 0,
                    loss_scale: state.loss_scale.map(|s| s.scale),
                    overflowed: false,
                }
            }
            Err(e) => {
                // Name the rows behind the step and where a resume would start.
                let rows = rows();
                let checkpoint = checkpoint::find(&settings.out_dir)
                    .map_or_else(|_| "none yet".to_string(), |d| d.display().to_string());
                return Err(anyhow::Error::new(e).context(format!(
                    "step {} (rows {}; last checkpoint: {checkpoint})",
                    step + 1,
                    if rows.is_empty() {
                        "unknown".into()
                    } else {
                        rows.join(", ")
                    }
                )));
            }
        };
        state.step += 1;
        state.tokens += stats.tokens as u64;
        run_tokens += stats.tokens as u64;
        if stats.loss.is_finite() {
            first_loss.get_or_insert(stats.loss);
            last_loss = Some(stats.loss);
        }
        let mut record = StepRecord {
            step: state.step,
            loss: stats.loss,
            lr,
            grad_norm: stats.grad_norm,
            tokens: stats.tokens,
            loss_scale: stats.loss_scale,
            overflowed: stats.overflowed,
            tokens_per_s: stats.tokens as f64 / step_started.elapsed().as_secs_f64(),
            elapsed_s: started.elapsed().as_secs_f64(),
            wall_time: super::metrics::unix_time(),
            eval_loss: None,
            eval_perplexity: None,
            eval_classes: None,
            best_step: None,
            stopped_early: false,
            metrics: step_preference_metrics(
                model.take_preference_metrics(),
                micro.first().is_some_and(|b| b.pairs.is_some()),
                ranks,
            )
            .map(|m| m.named("").collect())
            .unwrap_or_default(),
        };
        let due = |every: Option<u64>| every.is_some_and(|n| n > 0 && state.step.is_multiple_of(n));
        let mut new_best = false;
        if let Some(eval) = eval.filter(|_| due(settings.eval_every) || state.step == total) {
            let e = evaluate(model, eval, settings.batch_size)?;
            progress.say(format!("step {}: eval {}", state.step, e.brief()));
            record.eval_loss = Some(e.loss);
            record.eval_perplexity = e.preference.is_none().then_some(e.perplexity);
            record.eval_classes = e.classes.clone();
            if let Some(p) = &e.preference {
                record.metrics.extend(p.named("eval/"));
            }
            if let Some(rule) = &settings.early_stopping {
                let verdict = rule.observe(&mut state.best, state.step, &e);
                new_best = verdict.new_best;
                record.best_step = state.best.map(|b| b.step);
                if verdict.stop {
                    stopped_early = true;
                    record.stopped_early = true;
                    progress.say(format!(
                        "step {}: stopping early, {} not improved for {} evaluations (best: step {})",
                        state.step,
                        rule.metric.name(),
                        state.best.map_or(0, |b| b.stale_evals),
                        record.best_step.unwrap_or(0)
                    ));
                }
            }
            last_eval = Some(e);
        }
        let mut line = format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            stats.loss,
            lr,
            run_tokens as f64 / started.elapsed().as_secs_f64()
        );
        if let (Some(margin), Some(accuracy)) = (
            record.metrics.get("rewards/margins"),
            record.metrics.get("rewards/accuracies"),
        ) {
            line += &format!(" margin {margin:.4} accuracy {accuracy:.2}");
        }
        progress.step(state.step, line);
        if let Some(metrics) = &mut metrics {
            metrics.append(record)?;
        }
        // Every rank stops at the same step, whichever of them was signalled.
        let stop = distributed::any(super::interrupt::requested()) || stopped_early;
        // With keep_best every new best is checkpointed: it may be the one exported.
        let best_due = new_best && settings.keep_best;
        if due(settings.checkpoint_every) || state.step == total || stop || best_due {
            last_checkpoint = Some(save_checkpoint(model, &optimizer, &state, settings)?);
        }
        if stop {
            break;
        }
        super::interrupt::inject_failure_after(state.step);
    }
    progress.finish();
    model.set_training(false);
    let title = format!("loss — {}", settings.out_dir.display());
    let plot = match &metrics {
        Some(metrics) => metrics.write_svg(&title)?,
        None => settings.out_dir.join(super::metrics::PLOT),
    };
    let export_from = match state.best.filter(|_| settings.keep_best) {
        Some(best) => Some(checkpoint::dir_of(&settings.out_dir, best.step)),
        None => last_checkpoint.clone(),
    };
    Ok(Summary {
        first_step,
        interrupted: state.step < total && !stopped_early,
        stopped_early,
        best: state.best,
        export_from,
        steps: state.step,
        first_loss,
        last_loss,
        eval_before,
        eval: last_eval,
        tokens: run_tokens,
        seconds: started.elapsed().as_secs_f64(),
        last_checkpoint,
        skipped,
        loss_scale: state.loss_scale,
        metrics: settings.out_dir.join(super::metrics::FILE),
        plot,
    })
}

/// Rank 0 writes the checkpoint of `state`, once every rank has shown it holds the same
/// adapters (replicated updates of identical sums stay identical; this proves it); its folder.
fn save_checkpoint(
    model: &mut impl Objective,
    optimizer: &AdamW,
    state: &TrainerState,
    settings: &Settings,
) -> anyhow::Result<PathBuf> {
    let ranks = distributed::ranks();
    if ranks.is_parallel() {
        let fingerprint = adapter_fingerprint(model)?;
        anyhow::ensure!(
            distributed::agree(fingerprint),
            "step {}: the ranks' adapters differ (rank {} holds fingerprint {fingerprint:016x}); the MPI library's sums are not identical on every rank, so this job cannot continue; the last checkpoint is intact",
            state.step,
            ranks.rank
        );
    }
    let dir = if ranks.leads() {
        checkpoint::save(
            &settings.out_dir,
            model,
            optimizer,
            state,
            settings.peft_config.as_ref(),
            settings.class_map.as_ref(),
        )?
    } else {
        checkpoint::dir_of(&settings.out_dir, state.step)
    };
    super::interrupt::note_checkpoint(&dir);
    Ok(dir)
}

/// FNV-1a over the bits of every trained tensor.
fn adapter_fingerprint(model: &mut impl Objective) -> anyhow::Result<u64> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (_, t) in model.params_mut() {
        for v in crate::model::adapted::host(t)?.values {
            for b in v.to_bits().to_le_bytes() {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    Ok(hash)
}

/// Loads the checkpoint `dir` names into `model` and `optimizer` and makes it `state`, refusing
/// one whose settings differ (`state` holds this run's); the line that says so.
fn resume_from(
    dir: &Path,
    model: &mut impl Objective,
    optimizer: &mut AdamW,
    state: &mut TrainerState,
) -> anyhow::Result<String> {
    let dir = checkpoint::find(dir)?;
    let saved = checkpoint::load(&dir, model, optimizer)
        .with_context(|| format!("resuming from {}", dir.display()))?;
    if let Some(why) = saved.mismatch(state) {
        anyhow::bail!("cannot resume from {}: {why}", dir.display());
    }
    let line = format!(
        "resume: {} (step {} of {})",
        dir.display(),
        saved.step,
        state.total_steps
    );
    *state = saved;
    Ok(line)
}

/// The `file:line` of every row behind optimiser step `step`, for messages about it.
fn step_rows(train: &Dataset, settings: &Settings, step: u64) -> Vec<String> {
    (0..settings.grad_accum)
        .flat_map(|j| {
            let index = step as usize * settings.grad_accum + j;
            train.micro_batch_sources(index, settings.batch_size, settings.seed)
        })
        .map(String::from)
        .collect()
}

/// A preference step's metrics: the mean over its micro-batches of what each logged, across
/// the ranks of a job (each computed its share; one sum of [micro-batches, Σ metrics…] per
/// step). None for a step of other batches.
fn step_preference_metrics(
    mine: Vec<super::metrics::PreferenceMetrics>,
    preference: bool,
    ranks: distributed::Ranks,
) -> Option<super::metrics::PreferenceMetrics> {
    if !preference {
        return None;
    }
    let mut sums = vec![0.0; 10];
    for mut m in mine {
        sums[0] += 1.0;
        for (sum, v) in sums[1..].iter_mut().zip(m.fields()) {
            *sum += *v;
        }
    }
    if ranks.is_parallel() {
        distributed::sum_f64(&mut sums);
    }
    if sums[0] == 0.0 {
        return None;
    }
    let mut mean = super::metrics::PreferenceMetrics::default();
    for (field, sum) in mean.fields().into_iter().zip(&sums[1..]) {
        *field = sum / sums[0];
    }
    Some(mean)
}
