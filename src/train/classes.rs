//! Classification metrics from (gold, predicted) class pairs: accuracy, macro-F1 (the unweighted
//! mean of per-class F1, scikit-learn's `f1_score(average="macro")` with zero_division=0),
//! per-class precision / recall / F1 / support, and the confusion matrix (rows gold, columns
//! predicted, as scikit-learn's `confusion_matrix`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Gold examples of this class.
    pub support: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScore>,
    /// confusion[gold][predicted]
    pub confusion: Vec<Vec<u64>>,
}

impl ClassMetrics {
    /// Scores `pairs` of (gold, predicted) class indices into `labels`.
    pub fn new(labels: &[String], pairs: &[(u32, u32)]) -> Self {
        let n = labels.len();
        let mut confusion = vec![vec![0u64; n]; n];
        for &(gold, predicted) in pairs {
            confusion[gold as usize][predicted as usize] += 1;
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class: Vec<ClassScore> = labels
            .iter()
            .enumerate()
            .map(|(c, label)| {
                let hit = confusion[c][c];
                let support: u64 = confusion[c].iter().sum();
                let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
                let (precision, recall) = (ratio(hit, predicted), ratio(hit, support));
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassScore {
                    label: label.clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect();
        let correct: u64 = (0..n).map(|c| confusion[c][c]).sum();
        Self {
            accuracy: ratio(correct, pairs.len() as u64),
            macro_f1: per_class.iter().map(|s| s.f1).sum::<f64>() / n.max(1) as f64,
            per_class,
            confusion,
        }
    }

    /// The per-class table and the confusion matrix, for the console.
    pub fn render(&self) -> String {
        let width = self
            .per_class
            .iter()
            .map(|s| s.label.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("{:width$}  precision  recall     f1  support\n", "class");
        for s in &self.per_class {
            out += &format!(
                "{:width$}  {:9.3}  {:6.3}  {:5.3}  {:7}\n",
                s.label, s.precision, s.recall, s.f1, s.support
            );
        }
        out += &format!(
            "accuracy {:.4}, macro-F1 {:.4}\nconfusion (rows gold, columns predicted, in the order above):\n",
            self.accuracy, self.macro_f1
        );
        for (s, row) in self.per_class.iter().zip(&self.confusion) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:4}")).collect();
            out += &format!("{:width$} {}\n", s.label, cells.join(""));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scikit_learn_on_a_small_case() {
        // sklearn: y_true=[0,0,1,1,2,2,2], y_pred=[0,1,1,1,2,0,0]
        // accuracy 4/7; per-class f1 [0.4, 0.8, 0.5]; macro 1.7/3
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let pairs = [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0), (2, 0)];
        let m = ClassMetrics::new(&labels, &pairs);
        assert!((m.accuracy - 4.0 / 7.0).abs() < 1e-12);
        let f1: Vec<f64> = m.per_class.iter().map(|s| s.f1).collect();
        for (got, want) in f1.iter().zip([0.4, 0.8, 0.5]) {
            assert!((got - want).abs() < 1e-12, "{f1:?}");
        }
        assert!((m.macro_f1 - 1.7 / 3.0).abs() < 1e-12);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![2, 0, 1]]
        );
        assert_eq!(m.per_class[2].support, 3);
        assert!(m.render().contains("macro-F1 0.5667"));
    }

    #[test]
    fn a_class_never_predicted_scores_zero_not_nan() {
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let m = ClassMetrics::new(&labels, &[(0, 0), (1, 0)]);
        assert_eq!(m.per_class[1].precision, 0.0);
        assert_eq!(m.per_class[1].f1, 0.0);
        assert!((m.macro_f1 - (2.0 / 3.0) / 2.0).abs() < 1e-12);
    }
}
