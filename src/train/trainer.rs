//! The training loop: micro-batches from the dataset's seeded stream, one optimiser step each
//! `grad_accum` of them, eval every N steps and at the end, checkpoints every N steps and at the
//! end, metrics per step, an indicatif bar. Resuming loads a checkpoint and continues at its
//! step with the same batches, learning rates and dropout draws as the uninterrupted run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::checkpoint::{self, TrainerState};
use super::classes::ClassMetrics;
use super::loss::Objective;
use super::metrics::{MetricsLog, StepRecord};
use super::optim::{AdamW, AdamWConfig};
use super::schedule::LrSchedule;
use super::step::StepStats;
use super::step::train_step;
use super::{TrainError, scalar};
use crate::data::dataset::Dataset;
use crate::export::peft::ClassMap;
use crate::lora::peft_config::PeftConfig;
use crate::model::adapters::host;

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
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub first_step: u64,
    /// Stopped early on Ctrl-C / SIGTERM, after writing a checkpoint.
    pub interrupted: bool,
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
    pub metrics: PathBuf,
    pub plot: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SkippedStep {
    pub step: u64,
    /// `file:line` of every row in the step's batches.
    pub rows: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    pub loss: f64,
    pub perplexity: f64,
    /// A classifier's accuracy, F1 and confusion matrix.
    pub classes: Option<ClassMetrics>,
}

impl Eval {
    /// One line: loss and perplexity, or loss, accuracy and macro-F1 for a classifier.
    pub fn brief(&self) -> String {
        match &self.classes {
            Some(c) => format!(
                "loss {:.4}, accuracy {:.4}, macro-F1 {:.4}",
                self.loss, c.accuracy, c.macro_f1
            ),
            None => format!("loss {:.4}, perplexity {:.2}", self.loss, self.perplexity),
        }
    }
}

/// Steps needed for `epochs` passes over `train`.
pub fn steps_for_epochs(train: &Dataset, batch_size: usize, grad_accum: usize, epochs: f64) -> u64 {
    let micro = (train.batches_per_epoch(batch_size) as f64 * epochs).ceil() as u64;
    micro.div_ceil(grad_accum as u64).max(1)
}

/// Mean loss over every target of `data` (labelled tokens, or rows for a classifier, whose
/// predictions are scored too), dropout off, no autodiff.
pub fn evaluate(
    model: &mut impl Objective,
    data: &Dataset,
    batch_size: usize,
) -> anyhow::Result<Eval> {
    let (sum, targets, predictions) = score(model, data, batch_size)?;
    let loss = sum / targets.max(1) as f64;
    let classes = model.labels().map(|labels| {
        let pairs: Vec<(u32, u32)> = predictions.iter().map(|p| (p.gold, p.predicted)).collect();
        ClassMetrics::new(labels, &pairs)
    });
    Ok(Eval {
        loss,
        perplexity: loss.exp(),
        classes,
    })
}

/// One classified row: its gold class, the predicted one and the class probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub gold: u32,
    pub predicted: u32,
    pub probabilities: Vec<f64>,
}

/// The loss sum, the targets it is over, and (classifiers) every row's prediction, in order.
pub fn score(
    model: &mut impl Objective,
    data: &Dataset,
    batch_size: usize,
) -> anyhow::Result<(f64, usize, Vec<Prediction>)> {
    model.set_training(false);
    let (mut sum, mut targets, mut predictions) = (0.0, 0usize, Vec::new());
    for batch in data.in_order(batch_size) {
        match model.class_logits(&batch) {
            Some(logits) => {
                let logits = host(&logits)?;
                let n = logits.shape[1];
                for (row, &gold) in logits.values.chunks(n).zip(&batch.classes) {
                    let p = softmax(row);
                    sum -= p[gold as usize].ln();
                    let predicted = (0..n).fold(0, |best, c| if p[c] > p[best] { c } else { best });
                    predictions.push(Prediction {
                        gold,
                        predicted: predicted as u32,
                        probabilities: p,
                    });
                }
            }
            None => {
                if let Some(nll) = model.loss_sum(&batch) {
                    sum += scalar(nll)?;
                }
            }
        }
        targets += batch.loss_tokens();
    }
    model.set_training(true);
    Ok((sum, targets, predictions))
}

/// softmax in f64 (max-subtracted).
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64;
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / total).collect()
}

/// Trains `model`'s adapters on `train`; `resume` is a checkpoint or run directory.
pub fn train(
    model: &mut impl Objective,
    train: &Dataset,
    eval: Option<&Dataset>,
    s: &Settings,
    resume: Option<&Path>,
) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&s.out_dir)
        .with_context(|| format!("creating {}", s.out_dir.display()))?;
    // What a killed run was writing (checkpoint dirs, adapter files) is garbage now.
    crate::atomic::remove_stale_temps(&s.out_dir);
    crate::atomic::remove_stale_temps(&s.out_dir.join("checkpoints"));
    let total = s.schedule.total_steps;
    let mut state = TrainerState {
        step: 0,
        total_steps: total,
        seed: s.seed,
        batch_size: s.batch_size,
        grad_accum: s.grad_accum,
        train_examples: train.examples.len(),
        tokens: 0,
    };
    let mut optimizer = AdamW::new(s.adamw);
    if let Some(dir) = resume {
        let dir = checkpoint::find(dir)?;
        let saved = checkpoint::load(&dir, model, &mut optimizer)
            .with_context(|| format!("resuming from {}", dir.display()))?;
        if let Some(why) = saved.mismatch(&state) {
            anyhow::bail!("cannot resume from {}: {why}", dir.display());
        }
        println!("resume: {} (step {} of {total})", dir.display(), saved.step);
        state = saved;
    }
    let first_step = state.step;
    let mut metrics = MetricsLog::open(&s.out_dir, first_step)
        .with_context(|| format!("writing {}/metrics.jsonl", s.out_dir.display()))?;
    let bar = progress_bar(total, first_step, s.progress);
    model.set_training(true);
    let eval_before = match eval.filter(|_| first_step == 0) {
        Some(data) => {
            let e = evaluate(model, data, s.batch_size)?;
            say(&bar, s.progress, format!("step 0: eval {}", e.brief()));
            Some(e)
        }
        None => None,
    };
    let started = Instant::now();
    let (mut first_loss, mut last_loss, mut last_eval, mut last_checkpoint) =
        (None, None, None, None);
    let mut run_tokens = 0u64;
    let mut skipped = Vec::new();
    while state.step < total {
        let step = state.step;
        let micro: Vec<_> = (0..s.grad_accum)
            .map(|j| {
                let index = step as usize * s.grad_accum + j;
                train.micro_batch(index, s.batch_size, s.seed)
            })
            .collect();
        // Dropout draws depend on (seed, step) only, so a resumed run repeats them.
        model.seed_dropout(crate::model::adapters::stream_seed(s.seed, step));
        let lr = s.schedule.lr(step);
        let step_started = Instant::now();
        // The rows behind the step, for messages about it.
        let rows = || -> Vec<String> {
            (0..s.grad_accum)
                .flat_map(|j| {
                    let index = step as usize * s.grad_accum + j;
                    train.micro_batch_sources(index, s.batch_size, s.seed)
                })
                .map(String::from)
                .collect()
        };
        let stats = match train_step(model, &micro, &mut optimizer, lr, s.max_grad_norm) {
            Ok(stats) => stats,
            Err(TrainError::NonFinite { loss, grad_norm }) if s.skip_nonfinite => {
                // No update was applied: the adapters and optimiser are as before the step.
                let rows = rows();
                say(
                    &bar,
                    true,
                    format!(
                        "step {}: skipped, non-finite loss {loss} / gradient norm {grad_norm} (rows {})",
                        step + 1,
                        rows.join(", ")
                    ),
                );
                skipped.push(SkippedStep {
                    step: step + 1,
                    rows,
                });
                StepStats {
                    loss,
                    grad_norm,
                    loss_tokens: 0,
                    tokens: 0,
                }
            }
            Err(e) => {
                // Name the rows behind the step and where a resume would start.
                let rows = rows();
                let checkpoint = checkpoint::find(&s.out_dir)
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
            tokens_per_s: stats.tokens as f64 / step_started.elapsed().as_secs_f64(),
            elapsed_s: started.elapsed().as_secs_f64(),
            eval_loss: None,
            eval_perplexity: None,
            eval_classes: None,
        };
        let due = |every: Option<u64>| every.is_some_and(|n| n > 0 && state.step.is_multiple_of(n));
        if let Some(eval) = eval.filter(|_| due(s.eval_every) || state.step == total) {
            let e = evaluate(model, eval, s.batch_size)?;
            say(
                &bar,
                s.progress,
                format!("step {}: eval {}", state.step, e.brief()),
            );
            record.eval_loss = Some(e.loss);
            record.eval_perplexity = Some(e.perplexity);
            record.eval_classes = e.classes.clone();
            last_eval = Some(e);
        }
        let line = format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            stats.loss,
            lr,
            run_tokens as f64 / started.elapsed().as_secs_f64()
        );
        // Without a terminal the bar is hidden: log about 50 lines per run instead.
        if s.progress && bar.is_hidden() && state.step.is_multiple_of(total.div_ceil(50).max(1)) {
            println!("step {}/{total}: {line}", state.step);
        }
        bar.set_message(line);
        bar.set_position(state.step);
        metrics.append(record)?;
        let stop = super::interrupt::requested();
        if due(s.checkpoint_every) || state.step == total || stop {
            let dir = checkpoint::save(
                &s.out_dir,
                model,
                &optimizer,
                &state,
                s.peft_config.as_ref(),
                s.class_map.as_ref(),
            )?;
            last_checkpoint = Some(dir);
        }
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    model.set_training(false);
    let plot = metrics.write_svg(&format!("loss — {}", s.out_dir.display()))?;
    Ok(Summary {
        first_step,
        interrupted: state.step < total,
        steps: state.step,
        first_loss,
        last_loss,
        eval_before,
        eval: last_eval,
        tokens: run_tokens,
        seconds: started.elapsed().as_secs_f64(),
        last_checkpoint,
        skipped,
        metrics: metrics.path,
        plot,
    })
}

/// A line above the bar, or on stdout when the bar is hidden (not a terminal).
fn say(bar: &ProgressBar, progress: bool, line: String) {
    if !progress {
        return;
    }
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

fn progress_bar(total: u64, at: u64, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if visible && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
            .expect("static template"),
    );
    bar.set_position(at);
    bar
}
