//! What a model is trained to minimise ([`Objective`]): for a causal LM the next-token loss, for a
//! sequence classifier the cross-entropy of its class logits. Causal-LM loss as a sum, so gradient accumulation can divide by the labelled tokens of the
//! whole optimiser step (not a mean of per-micro-batch means, which over-weights short batches).
//! Logits are computed only where a label follows: prompts, system turns and padding (often
//! half of a chat batch) cost no head matmul and no vocabulary-sized activations.

use burn::tensor::Tensor;

use super::TrainError;
use super::autograd::{Gradients, Seed, whole_graph_gradients};
use super::cross_entropy::{next_token_nll_sum, nll_sum};
use super::metrics::PreferenceMetrics;
use super::preference::PairOutcome;
use crate::data::batch::Batch;
use crate::model::TaskModel;
use crate::model::adapted::AdaptedModel;
use crate::model::classifier::{Body, SequenceClassifier};
use crate::model::decoder::Decoder;

/// A model with a loss: the sum over a batch's scored targets (labelled next tokens, or one
/// class per row), so accumulation divides by the targets of the whole optimiser step.
pub trait Objective: AdaptedModel {
    /// Σ loss over `batch`'s targets → [1]; None when nothing in it is scored.
    fn loss_sum(&self, batch: &Batch) -> Option<Tensor<1>>;

    /// `loss_sum(batch) / seed.denominator` and its gradient (times `seed.loss_scale`) for every trained tensor
    /// (`params_mut` order); None when nothing in `batch` is scored. One autodiff backward
    /// through the whole graph unless the model derives its step by hand (a decoder:
    /// `train::derived`, with or without `gradient_checkpointing`).
    fn loss_and_gradients(
        &mut self,
        batch: &Batch,
        seed: Seed,
    ) -> Result<Option<Gradients>, TrainError> {
        whole_graph_gradients(self, |m| m.loss_sum(batch), seed)
    }

    /// Class logits [rows, labels] for a classifier (evaluation metrics); None for an LM.
    fn class_logits(&self, _batch: &Batch) -> Option<Tensor<2>> {
        None
    }

    /// A classifier's class names, in logit order; None for an LM.
    fn labels(&self) -> Option<&[String]> {
        None
    }

    /// The metrics of the preference micro-batches computed since the last call (drained).
    fn take_preference_metrics(&self) -> Vec<PreferenceMetrics> {
        Vec::new()
    }

    /// A preference batch's loss and metrics, forward only (evaluation); None for a model
    /// without a preference loss.
    fn preference_outcome(&self, _batch: &Batch) -> Option<Result<PairOutcome, TrainError>> {
        None
    }
}

impl Objective for Decoder {
    fn loss_sum(&self, batch: &Batch) -> Option<Tensor<1>> {
        match &batch.pairs {
            Some(_) => super::preference::loss_sum(self, batch),
            None => next_token_nll_sum(self, batch),
        }
    }

    fn take_preference_metrics(&self) -> Vec<PreferenceMetrics> {
        self.preference_metrics.take()
    }

    fn preference_outcome(&self, batch: &Batch) -> Option<Result<PairOutcome, TrainError>> {
        super::preference::outcome(self, batch)
    }

    fn loss_and_gradients(
        &mut self,
        batch: &Batch,
        seed: Seed,
    ) -> Result<Option<Gradients>, TrainError> {
        super::derived::loss_and_gradients(self, batch, seed)
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

    /// Derived by hand (`train::derived::classifier`), except under an adapted `lm_head` a
    /// classifier never uses (autodiff then names it: it gets no gradient).
    fn loss_and_gradients(
        &mut self,
        batch: &Batch,
        seed: Seed,
    ) -> Result<Option<Gradients>, TrainError> {
        match &self.body {
            Body::Decoder(d) if d.lm_head.as_ref().is_some_and(|h| h.lora.is_some()) => {
                whole_graph_gradients(self, |m| m.loss_sum(batch), seed)
            }
            _ => super::derived::classifier::loss_and_gradients(self, batch, seed),
        }
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
        seed: Seed,
    ) -> Result<Option<Gradients>, TrainError> {
        match self {
            Self::Lm(m) => m.loss_and_gradients(batch, seed),
            Self::Classifier(m) => m.loss_and_gradients(batch, seed),
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

    fn take_preference_metrics(&self) -> Vec<PreferenceMetrics> {
        match self {
            Self::Lm(m) => m.take_preference_metrics(),
            Self::Classifier(_) => Vec::new(),
        }
    }

    fn preference_outcome(&self, batch: &Batch) -> Option<Result<PairOutcome, TrainError>> {
        match self {
            Self::Lm(m) => m.preference_outcome(batch),
            Self::Classifier(_) => None,
        }
    }
}
