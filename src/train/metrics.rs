//! What a run reports: one JSON object per optimiser step appended to `<out>/metrics.jsonl` (and
//! with `train.report_to = ["tensorboard"]` to a TensorBoard event file), and at the end the
//! loss curve as `<out>/loss.svg` (train loss per step, eval loss as dots).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tensorboard::EventFile;

/// The per-step metrics file in a run's output folder.
pub const FILE: &str = "metrics.jsonl";
/// The loss curve beside it.
pub const PLOT: &str = "loss.svg";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    /// NaN/Inf (a skipped step) is written as JSON null.
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    pub lr: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    /// Unpadded tokens in this step.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// f16 products: the loss scale the step's gradients were computed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// f16 products: the gradients overflowed at that scale and the step applied no update.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overflowed: bool,
    /// Seconds since the Unix epoch when the step ended.
    #[serde(default)]
    pub wall_time: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_perplexity: Option<f64>,
    /// Classification runs: accuracy, macro-F1, per-class scores, confusion matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_classes: Option<super::classes::ClassMetrics>,
    /// Runs that compare evaluations: the step of the best one so far (on eval steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_step: Option<u64>,
    /// Early stopping ended the run after this step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped_early: bool,
    /// Preference runs: the step's rewards, log-probabilities and logits under TRL's names
    /// (`rewards/chosen`, …), and on eval steps their `eval/` twins.
    #[serde(default, flatten)]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// A preference micro-batch's metrics under TRL's names (each the mean over its pairs;
/// `logits/*` over its completion tokens); a step's are the mean over its micro-batches, as
/// TRL averages what each loss computation logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    #[serde(rename = "logits/chosen")]
    pub logits_chosen: f64,
    #[serde(rename = "logits/rejected")]
    pub logits_rejected: f64,
    /// The micro-batch's loss (its mean over pairs; the step's loss is logged as `loss`).
    #[serde(skip)]
    pub loss: f64,
}

impl PreferenceMetrics {
    /// Every metric (the loss last), for sums across micro-batches and ranks.
    pub fn fields(&mut self) -> [&mut f64; 9] {
        [
            &mut self.rewards_chosen,
            &mut self.rewards_rejected,
            &mut self.rewards_accuracies,
            &mut self.rewards_margins,
            &mut self.logps_chosen,
            &mut self.logps_rejected,
            &mut self.logits_chosen,
            &mut self.logits_rejected,
            &mut self.loss,
        ]
    }

    /// The metrics by TRL's names, each after `prefix` (`""` or `"eval/"`).
    pub fn named(&self, prefix: &str) -> impl Iterator<Item = (String, f64)> + use<> {
        let value = serde_json::to_value(self).expect("plain struct");
        let map = value.as_object().cloned().unwrap_or_default();
        let prefix = prefix.to_string();
        map.into_iter()
            .filter_map(move |(k, v)| Some((format!("{prefix}{k}"), v.as_f64()?)))
    }

    /// The mean of each metric over `all`; None for none.
    pub fn mean(all: &[Self]) -> Option<Self> {
        let ones = vec![1.0; all.len()];
        Self::weighted_mean(all, &ones)
    }

    /// Each metric's mean over `all` weighted by `weights`; None for none.
    pub fn weighted_mean(all: &[Self], weights: &[f64]) -> Option<Self> {
        let mut mean = Self::default();
        let total: f64 = weights.iter().sum();
        if all.is_empty() || total == 0.0 {
            return None;
        }
        for (other, &w) in all.iter().zip(weights) {
            let mut other = other.clone();
            for (m, o) in mean.fields().into_iter().zip(other.fields()) {
                *m += *o * w / total;
            }
        }
        Some(mean)
    }
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub struct MetricsLog {
    pub path: PathBuf,
    pub records: Vec<StepRecord>,
    /// The same scalars for TensorBoard (`train.report_to`).
    pub tensorboard: Option<EventFile>,
}

impl MetricsLog {
    /// Opens `<out>/metrics.jsonl`, keeping the records of steps ≤ `resume_step` (a resumed run
    /// rewrites the steps after its checkpoint) and dropping the rest; with `tensorboard` the
    /// event file too.
    pub fn open(out: &Path, resume_step: u64, tensorboard: bool) -> std::io::Result<Self> {
        let path = out.join(FILE);
        let records: Vec<StepRecord> = if resume_step > 0 {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<StepRecord>(l).ok())
                .filter(|r| r.step <= resume_step)
                .collect()
        } else {
            Vec::new()
        };
        let tensorboard = match tensorboard {
            true => Some(EventFile::create(out, &records, unix_time())?),
            false => None,
        };
        let log = Self {
            path,
            records,
            tensorboard,
        };
        log.rewrite()?;
        Ok(log)
    }

    fn rewrite(&self) -> std::io::Result<()> {
        crate::atomic::write_atomic(&self.path, |f| {
            for r in &self.records {
                writeln!(f, "{}", serde_json::to_string(r).expect("plain struct"))?;
            }
            Ok(())
        })
    }

    pub fn append(&mut self, record: StepRecord) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        writeln!(
            f,
            "{}",
            serde_json::to_string(&record).expect("plain struct")
        )?;
        if let Some(events) = &mut self.tensorboard {
            events.append(&record)?;
        }
        self.records.push(record);
        Ok(())
    }

    /// Writes the loss curve next to the metrics.
    pub fn write_svg(&self, title: &str) -> std::io::Result<PathBuf> {
        let path = self.path.with_file_name(PLOT);
        let svg = loss_svg(&self.records, title);
        crate::atomic::write_atomic(&path, |f| f.write_all(svg.as_bytes()))?;
        Ok(path)
    }
}

/// A self-contained SVG line chart of train loss (and eval loss points) against step.
pub fn loss_svg(records: &[StepRecord], title: &str) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 400.0, 60.0, 20.0, 30.0, 40.0);
    let points: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.loss)).collect();
    let evals: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.eval_loss.map(|l| (r.step as f64, l)))
        .collect();
    let all = points.iter().chain(&evals);
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all.filter(|(_, y)| y.is_finite()) {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| left + (x / x1) * (w - left - right);
    let sy = |y: f64| top + (y1 - y) / (y1 - y0) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">{}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        escape(title),
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * f64::from(i) / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.3}</text>\n",
            left - 6.0,
            sy(y) + 4.0
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">step (last {})</text>\n",
        (left + w - right) / 2.0,
        h - 10.0,
        x1
    );
    let line: Vec<String> = points
        .iter()
        .filter(|(_, y)| y.is_finite())
        .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
        .collect();
    s += &format!(
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n",
        line.join(" ")
    );
    for (x, y) in evals {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#d62728\"/>\n",
            sx(x),
            sy(y)
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#1f77b4\">train loss</text><text x=\"{}\" y=\"{}\" fill=\"#d62728\">eval loss</text>\n</svg>\n",
        w - 200.0,
        top + 12.0,
        w - 110.0,
        top + 12.0
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Peak resident memory of this process so far (Linux VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
