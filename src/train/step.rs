//! One optimiser step: forward and backward of each micro-batch with the adapters tracked (the
//! frozen base stays outside autodiff, so it gets no gradient and saves no activations for one),
//! gradients summed across micro-batches, the loss normalised by the labelled tokens of the whole
//! step, global-norm clipping, then AdamW.

use burn::tensor::Tensor;

use super::TrainError;
use super::autograd::{Gradients, sum};
use super::loss::Objective;
use super::optim::{AdamW, clip_coefficient, global_norm};
use crate::data::batch::Batch;

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean next-token loss over the step's labelled tokens.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Labelled tokens (the loss denominator).
    pub loss_tokens: usize,
    /// Unpadded tokens processed.
    pub tokens: usize,
}

/// Accumulated loss and gradients of a step's micro-batches.
pub fn accumulate_gradients(
    model: &mut impl Objective,
    micro_batches: &[Batch],
) -> Result<Gradients, TrainError> {
    let loss_tokens: usize = micro_batches.iter().map(Batch::loss_tokens).sum();
    if loss_tokens == 0 {
        return Err(TrainError::NoLossTokens);
    }
    let mut total = 0.0;
    let mut sums: Vec<Tensor<2>> = Vec::new();
    for batch in micro_batches {
        let Some((loss, grads)) = model.loss_and_gradients(batch, loss_tokens)? else {
            continue; // nothing labelled here: no loss, no gradient
        };
        total += loss;
        sums = sum(sums, grads);
    }
    Ok((total, sums))
}

/// One full optimiser step at learning rate `lr`.
pub fn train_step(
    model: &mut impl Objective,
    micro_batches: &[Batch],
    optimizer: &mut AdamW,
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepStats, TrainError> {
    let (loss, grads) = accumulate_gradients(model, micro_batches)?;
    let grad_norm = global_norm(&grads)?;
    if !loss.is_finite() || !grad_norm.is_finite() {
        return Err(TrainError::NonFinite { loss, grad_norm });
    }
    let coef = clip_coefficient(grad_norm, max_grad_norm);
    let grads = grads.into_iter().map(|g| g.mul_scalar(coef)).collect();
    optimizer.step(model.params_mut(), grads, lr);
    Ok(StepStats {
        loss,
        grad_norm,
        loss_tokens: micro_batches.iter().map(Batch::loss_tokens).sum(),
        tokens: micro_batches.iter().map(Batch::real_tokens).sum(),
    })
}
