//! Early stopping and the best checkpoint, as transformers' `EarlyStoppingCallback` and
//! `Trainer._determine_best_metric`: after each evaluation during training, the evaluations
//! without an improvement larger than the threshold are counted against the best so far, then
//! the best moves on any strict improvement; training stops when the count reaches the
//! patience. The evaluation before the first step does not take part.

use serde::{Deserialize, Serialize};

use super::evaluate::Eval;
use crate::recipe::BestMetric;

/// What the recipe asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    pub metric: BestMetric,
    /// Stop after this many evaluations without improvement; `None` never stops.
    pub patience: Option<u32>,
    /// An improvement must exceed this to reset the count.
    pub threshold: f64,
}

/// The best evaluation so far and the count against it; saved in every checkpoint so a resumed
/// run continues the same decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// What `value` measures (a resume with another metric is refused).
    #[serde(default)]
    pub metric: BestMetric,
    /// The optimiser step of the best evaluation.
    pub step: u64,
    pub value: f64,
    /// Evaluations since the last improvement larger than the threshold.
    pub stale_evals: u32,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// This evaluation is the new best.
    pub new_best: bool,
    /// Patience is spent: stop training.
    pub stop: bool,
}

impl EarlyStopping {
    /// Why a run resumed with this rule cannot continue from `best` (the checkpoint's), if it
    /// cannot: another metric chose it, or `keep_best` finds no checkpoint of it under `out`.
    pub fn cannot_continue(
        &self,
        best: Best,
        keep_best: bool,
        out: &std::path::Path,
    ) -> Option<String> {
        if best.metric != self.metric {
            return Some(format!(
                "its best evaluation was chosen by {} and train.metric_for_best_model now says {}; resume with the same metric",
                best.metric.name(),
                self.metric.name()
            ));
        }
        let kept = super::checkpoint::dir_of(out, best.step).is_dir();
        (keep_best && !kept).then(|| {
            format!(
                "train.keep_best: the best evaluation (step {}) has no checkpoint, as the run began without keep_best; resume without it or start again",
                best.step
            )
        })
    }

    /// Patience was already spent at `best` (a resumed run that had stopped early).
    pub fn spent(&self, best: Option<Best>) -> bool {
        let stale = best.map_or(0, |b| b.stale_evals);
        self.patience.is_some_and(|p| stale >= p)
    }

    /// Takes the evaluation at `step` into `best`.
    pub fn observe(&self, best: &mut Option<Best>, step: u64, eval: &Eval) -> Verdict {
        let value = self.metric.of(eval);
        let better = |than: f64| match self.metric.greater_is_better() {
            true => value > than,
            false => value < than,
        };
        let stale_evals = match best {
            Some(b) if !(better(b.value) && (value - b.value).abs() > self.threshold) => {
                b.stale_evals + 1
            }
            _ => 0,
        };
        let new_best = best.is_none_or(|b| better(b.value));
        *best = Some(match *best {
            Some(b) if !new_best => Best { stale_evals, ..b },
            _ => Best {
                metric: self.metric,
                step,
                value,
                stale_evals,
            },
        });
        Verdict {
            new_best,
            stop: self.patience.is_some_and(|p| stale_evals >= p),
        }
    }
}

impl BestMetric {
    /// This metric of `eval` (a classifier's scores exist whenever this metric is allowed).
    pub fn of(self, eval: &Eval) -> f64 {
        let classes = eval.classes.as_ref();
        match self {
            BestMetric::Loss => eval.loss,
            // A preference run's accuracy is TRL's `eval/rewards/accuracies`.
            BestMetric::Accuracy => match &eval.preference {
                Some(p) => p.rewards_accuracies,
                None => classes.map_or(f64::NAN, |c| c.accuracy),
            },
            BestMetric::MacroF1 => classes.map_or(f64::NAN, |c| c.macro_f1),
        }
    }

    pub fn greater_is_better(self) -> bool {
        self != BestMetric::Loss
    }

    /// As metrics and messages name it.
    pub fn name(self) -> &'static str {
        match self {
            BestMetric::Loss => "eval loss",
            BestMetric::Accuracy => "eval accuracy",
            BestMetric::MacroF1 => "eval macro-F1",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::classes::ClassMetrics;

    fn eval(metric: BestMetric, value: f64) -> Eval {
        let classes = ClassMetrics {
            accuracy: value,
            macro_f1: value,
            per_class: Vec::new(),
            confusion: Vec::new(),
        };
        Eval {
            loss: value,
            perplexity: value.exp(),
            classes: (metric != BestMetric::Loss).then_some(classes),
            preference: None,
        }
    }

    /// Golden: tools/reference/early_stopping.py (transformers 5.23.0's EarlyStoppingCallback and
    /// Trainer._determine_best_metric on the same metric sequences): the same evaluation stops
    /// training and the same one is best.
    #[test]
    fn stops_and_picks_the_best_as_transformers() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/train/early_stopping.json"
        );
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(cases.len(), 7);
        for case in cases {
            let metric: BestMetric = serde_json::from_value(case["metric"].clone()).unwrap();
            let rule = EarlyStopping {
                metric,
                patience: Some(case["patience"].as_u64().unwrap() as u32),
                threshold: case["threshold"].as_f64().unwrap(),
            };
            let mut best = None;
            let mut stopped_after = None;
            for (n, v) in case["values"].as_array().unwrap().iter().enumerate() {
                let step = n as u64 + 1;
                if rule
                    .observe(&mut best, step, &eval(metric, v.as_f64().unwrap()))
                    .stop
                {
                    stopped_after = Some(step);
                    break;
                }
            }
            assert_eq!(stopped_after, case["stopped_after"].as_u64(), "{case}");
            assert_eq!(best.map(|b| b.step), case["best"].as_u64(), "{case}");
        }
    }

    /// A preference run compares its eval loss, or with `accuracy` its eval reward accuracy
    /// (`eval/rewards/accuracies`): greater is better, the loss's direction is not taken.
    #[test]
    fn a_preference_runs_accuracy_is_its_reward_accuracy() {
        let pairs = |loss: f64, accuracy: f64| Eval {
            loss,
            perplexity: f64::NAN,
            classes: None,
            preference: Some(crate::train::metrics::PreferenceMetrics {
                rewards_accuracies: accuracy,
                loss,
                ..Default::default()
            }),
        };
        assert_eq!(BestMetric::Accuracy.of(&pairs(0.6, 0.8)), 0.8);
        assert_eq!(BestMetric::Loss.of(&pairs(0.6, 0.8)), 0.6);
        let rule = EarlyStopping {
            metric: BestMetric::Accuracy,
            patience: Some(1),
            threshold: 0.0,
        };
        let mut best = None;
        assert!(rule.observe(&mut best, 1, &pairs(0.69, 0.5)).new_best);
        // The loss rose but the accuracy improved: a new best.
        assert!(rule.observe(&mut best, 2, &pairs(0.70, 0.9)).new_best);
        assert!(rule.observe(&mut best, 3, &pairs(0.50, 0.8)).stop);
        assert_eq!(best.map(|b| b.step), Some(2));
    }
}
