//! One optimiser step: forward and backward of each micro-batch with the adapters tracked (the
//! frozen base stays outside autodiff, so it gets no gradient and saves no activations for one),
//! gradients summed across micro-batches, the loss normalised by the labelled tokens of the whole
//! step, global-norm clipping, then AdamW.

use burn::tensor::Tensor;

use super::loss::Objective;
use super::optim::{AdamW, clip_coefficient, global_norm};
use super::{TrainError, scalar};
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

/// Accumulated gradients of every trained tensor (`AdaptedModel::params_mut` order: A then B
/// per adapter, then a classifier's head).
pub fn accumulate_gradients(
    model: &mut impl Objective,
    micro_batches: &[Batch],
) -> Result<(f64, Vec<Tensor<2>>), TrainError> {
    let loss_tokens: usize = micro_batches.iter().map(Batch::loss_tokens).sum();
    if loss_tokens == 0 {
        return Err(TrainError::NoLossTokens);
    }
    for (_, t) in model.params_mut() {
        *t = t.clone().inner().autodiff().require_grad(); // a leaf whose gradient is kept
    }
    let mut total = 0.0;
    let mut sums: Vec<Option<Tensor<2>>> = Vec::new();
    for batch in micro_batches {
        let Some(loss) = model.loss_sum(batch) else {
            continue; // nothing labelled here: no loss, no gradient
        };
        let loss = loss.div_scalar(loss_tokens as f64);
        let grads = loss.backward();
        total += scalar(loss.inner())?;
        let params = model.params_mut();
        sums.resize(params.len(), None);
        for ((key, t), slot) in params.into_iter().zip(&mut sums) {
            let g = t
                .grad(&grads)
                .ok_or_else(|| TrainError::MissingGradient(key.clone()))?;
            *slot = Some(match slot.take() {
                Some(s) => s + g,
                None => g,
            });
        }
    }
    for (_, t) in model.params_mut() {
        *t = t.clone().inner(); // drop the autodiff association
    }
    Ok((total, sums.into_iter().flatten().collect()))
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
    let mut params: Vec<&mut Tensor<2>> = model.params_mut().into_iter().map(|(_, t)| t).collect();
    optimizer.step(&mut params, grads, lr);
    Ok(StepStats {
        loss,
        grad_norm,
        loss_tokens: micro_batches.iter().map(Batch::loss_tokens).sum(),
        tokens: micro_batches.iter().map(Batch::real_tokens).sum(),
    })
}
