//! What a model is trained to minimise ([`Objective`]): for a causal LM the next-token loss, for a
//! sequence classifier the cross-entropy of its class logits. Causal-LM loss as a sum, so gradient accumulation can divide by the labelled tokens of the
//! whole optimiser step (not a mean of per-micro-batch means, which over-weights short batches).
//! Logits are computed only where a label follows: prompts, system turns and padding (often
//! half of a chat batch) cost no head matmul and no vocabulary-sized activations.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use super::TrainError;
use super::step::{Gradients, whole_graph_gradients};
use crate::data::batch::{Batch, IGNORE};
use crate::model::TaskModel;
use crate::model::adapters::AdaptedModel;
use crate::model::classifier::SequenceClassifier;
use crate::model::llama::Llama;

/// A model with a loss: the sum over a batch's scored targets (labelled next tokens, or one
/// class per row), so accumulation divides by the targets of the whole optimiser step.
pub trait Objective: AdaptedModel {
    /// Σ loss over `batch`'s targets → [1]; None when nothing in it is scored.
    fn loss_sum(&self, batch: &Batch) -> Option<Tensor<1>>;

    /// `loss_sum(batch) / denominator` and its gradient for every trained tensor
    /// (`params_mut` order); None when nothing in `batch` is scored. One backward through the
    /// whole graph unless the model trades compute for memory (a decoder's
    /// `gradient_checkpointing`).
    fn loss_and_gradients(
        &mut self,
        batch: &Batch,
        denominator: usize,
    ) -> Result<Option<Gradients>, TrainError> {
        whole_graph_gradients(self, batch, denominator)
    }

    /// Class logits [rows, labels] for a classifier (evaluation metrics); None for an LM.
    fn class_logits(&self, _batch: &Batch) -> Option<Tensor<2>> {
        None
    }

    /// A classifier's class names, in logit order; None for an LM.
    fn labels(&self) -> Option<&[String]> {
        None
    }
}

impl Objective for Llama {
    fn loss_sum(&self, batch: &Batch) -> Option<Tensor<1>> {
        next_token_nll_sum(self, batch)
    }

    fn loss_and_gradients(
        &mut self,
        batch: &Batch,
        denominator: usize,
    ) -> Result<Option<Gradients>, TrainError> {
        if self.gradient_checkpointing {
            super::recompute::loss_and_gradients(self, batch, denominator)
        } else {
            whole_graph_gradients(self, batch, denominator)
        }
    }
}

impl Objective for SequenceClassifier {
    /// Σ −log softmax(logits)[class] over the rows (torch's cross_entropy, reduction "sum").
    fn loss_sum(&self, batch: &Batch) -> Option<Tensor<1>> {
        if batch.classes.is_empty() {
            return None;
        }
        let logits = self.logits(&batch.input_ids, &batch.attention_mask);
        let classes = batch.classes.iter().map(|&c| i64::from(c)).collect();
        Some(nll_sum(logits, classes))
    }

    fn class_logits(&self, batch: &Batch) -> Option<Tensor<2>> {
        Some(self.logits(&batch.input_ids, &batch.attention_mask))
    }

    fn labels(&self) -> Option<&[String]> {
        Some(&self.labels)
    }
}

impl Objective for TaskModel {
    fn loss_sum(&self, batch: &Batch) -> Option<Tensor<1>> {
        match self {
            Self::Lm(m) => m.loss_sum(batch),
            Self::Classifier(m) => m.loss_sum(batch),
        }
    }

    fn loss_and_gradients(
        &mut self,
        batch: &Batch,
        denominator: usize,
    ) -> Result<Option<Gradients>, TrainError> {
        match self {
            Self::Lm(m) => m.loss_and_gradients(batch, denominator),
            Self::Classifier(m) => m.loss_and_gradients(batch, denominator),
        }
    }

    fn class_logits(&self, batch: &Batch) -> Option<Tensor<2>> {
        match self {
            Self::Lm(m) => m.class_logits(batch),
            Self::Classifier(m) => m.class_logits(batch),
        }
    }

    fn labels(&self) -> Option<&[String]> {
        match self {
            Self::Lm(m) => m.labels(),
            Self::Classifier(m) => m.labels(),
        }
    }
}

/// Σ −log p(labels[t+1] | ids[..=t]) over the labelled positions of `batch` → [1]; None when
/// nothing in it is labelled.
pub fn next_token_nll_sum(model: &Llama, batch: &Batch) -> Option<Tensor<1>> {
    let (at, targets) = scored_positions(&batch.labels);
    if at.is_empty() {
        return None;
    }
    let logits = model.logits_at(&batch.input_ids, &batch.attention_mask, &at);
    Some(nll_sum(logits, targets))
}

/// Σ −log softmax(logits)[target] over the rows of logits [n, vocab] → [1].
pub fn nll_sum(logits: Tensor<2>, targets: Vec<i64>) -> Tensor<1> {
    let n = targets.len();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &logits.device());
    log_softmax(logits, 1).gather(1, targets).sum().neg()
}

/// Flat positions (row · s + t) whose next label is scored, and those labels.
pub fn scored_positions(labels: &[Vec<i64>]) -> (Vec<i64>, Vec<i64>) {
    let (mut at, mut targets) = (Vec::new(), Vec::new());
    for (r, row) in labels.iter().enumerate() {
        for (t, &l) in row.iter().enumerate().skip(1) {
            if l != IGNORE {
                at.push((r * row.len() + t - 1) as i64);
                targets.push(l);
            }
        }
    }
    (at, targets)
}
