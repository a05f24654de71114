//! Evaluation: the mean loss over every target of a dataset (labelled tokens, or one class per
//! row), dropout off and no autodiff; for a classifier each row's prediction and the class
//! metrics. In a data-parallel job the batches are split round-robin across the ranks and the
//! sums (loss, targets, a classifier's confusion counts) reduced, so every rank holds the job's
//! evaluation.

use super::classes::ClassMetrics;
use super::loss::Objective;
use super::metrics::PreferenceMetrics;
use super::{TrainError, scalar};
use crate::data::dataset::Dataset;
use crate::distributed::{self, Ranks};
use crate::model::adapted::host;

#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    pub loss: f64,
    pub perplexity: f64,
    /// A classifier's accuracy, F1 and confusion matrix.
    pub classes: Option<ClassMetrics>,
    /// Preference pairs: the rewards, log-probabilities and logits, each the mean over the
    /// pairs (the loss is the pairs' mean loss).
    pub preference: Option<PreferenceMetrics>,
}

impl Eval {
    /// One line: loss and perplexity, or loss, accuracy and macro-F1 for a classifier.
    pub fn brief(&self) -> String {
        if let Some(p) = &self.preference {
            return format!(
                "loss {:.4}, reward accuracy {:.4}, margin {:.4}",
                self.loss, p.rewards_accuracies, p.rewards_margins
            );
        }
        match &self.classes {
            Some(c) => format!(
                "loss {:.4}, accuracy {:.4}, macro-F1 {:.4}",
                self.loss, c.accuracy, c.macro_f1
            ),
            None => format!("loss {:.4}, perplexity {:.2}", self.loss, self.perplexity),
        }
    }
}

/// Mean loss over every target of `data` (labelled tokens, or rows for a classifier, whose
/// predictions are scored too), dropout off, no autodiff; shared by the ranks of a job.
pub fn evaluate(
    model: &mut impl Objective,
    data: &Dataset,
    batch_size: usize,
) -> Result<Eval, TrainError> {
    let ranks = distributed::ranks();
    if data.examples.first().is_some_and(|e| e.rejected.is_some()) {
        return evaluate_pairs(model, data, batch_size, ranks);
    }
    let (mut sum, mut targets, predictions) = score_share(model, data, batch_size, ranks)?;
    let mut pairs: Vec<(u32, u32)> = predictions.iter().map(|p| (p.gold, p.predicted)).collect();
    if ranks.is_parallel() {
        // [loss sum, targets, confusion counts row-major]: exact in f64 up to 2^53 rows.
        let n = model.labels().map_or(0, <[String]>::len);
        let mut sums = vec![0.0; 2 + n * n];
        sums[0] = sum;
        sums[1] = targets as f64;
        for &(gold, predicted) in &pairs {
            sums[2 + gold as usize * n + predicted as usize] += 1.0;
        }
        distributed::sum_f64(&mut sums);
        (sum, targets) = (sums[0], sums[1] as usize);
        pairs = (0..n * n)
            .flat_map(|k| {
                let pair = ((k / n) as u32, (k % n) as u32);
                std::iter::repeat_n(pair, sums[2 + k] as usize)
            })
            .collect();
    }
    let loss = sum / targets.max(1) as f64;
    let classes = model
        .labels()
        .map(|labels| ClassMetrics::new(labels, &pairs));
    Ok(Eval {
        loss,
        perplexity: loss.exp(),
        classes,
        preference: None,
    })
}

/// Preference pairs: the loss and every metric averaged over the pairs (each micro-batch's
/// means weighted by its pairs), summed across the ranks of a job.
fn evaluate_pairs(
    model: &mut impl Objective,
    data: &Dataset,
    batch_size: usize,
    ranks: Ranks,
) -> Result<Eval, TrainError> {
    model.set_training(false);
    // [pairs, Σ pairs · metric …]
    let mut sums = vec![0.0; 10];
    let batches = data.in_order(batch_size).into_iter().enumerate();
    let mut result = Ok(());
    for (_, batch) in batches.filter(|(i, _)| ranks.owns(*i)) {
        let Some(outcome) = model.preference_outcome(&batch) else {
            continue;
        };
        let mut m = match outcome {
            Ok(out) => out.metrics,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let n = batch.pairs.as_ref().map_or(0, |p| p.count) as f64;
        sums[0] += n;
        for (sum, v) in sums[1..].iter_mut().zip(m.fields()) {
            *sum += n * *v;
        }
    }
    model.set_training(true);
    result?;
    if ranks.is_parallel() {
        distributed::sum_f64(&mut sums);
    }
    let mut mean = PreferenceMetrics::default();
    for (field, sum) in mean.fields().into_iter().zip(&sums[1..]) {
        *field = sum / sums[0].max(1.0);
    }
    Ok(Eval {
        loss: mean.loss,
        perplexity: f64::NAN,
        classes: None,
        preference: Some(mean),
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
) -> Result<(f64, usize, Vec<Prediction>), TrainError> {
    score_share(model, data, batch_size, Ranks::SOLO)
}

/// [`score`] over the batches `ranks` gives this process.
fn score_share(
    model: &mut impl Objective,
    data: &Dataset,
    batch_size: usize,
    ranks: Ranks,
) -> Result<(f64, usize, Vec<Prediction>), TrainError> {
    model.set_training(false);
    let (mut sum, mut targets, mut predictions) = (0.0, 0usize, Vec::new());
    let batches = data.in_order(batch_size).into_iter().enumerate();
    for (_, batch) in batches.filter(|(i, _)| ranks.owns(*i)) {
        match model.class_logits(&batch) {
            Some(logits) => {
                let logits = host(&logits).map_err(|e| TrainError::Readback(e.to_string()))?;
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
