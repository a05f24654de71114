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

/// A micro-batch's share of the step's loss and the gradient of every trained tensor
/// (`AdaptedModel::params_mut` order: A then B per adapter, then a classifier's head).
pub type Gradients = (f64, Vec<Tensor<2>>);

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

/// Elementwise sums of two gradient lists; an empty list is zero.
pub fn sum(a: Vec<Tensor<2>>, b: Vec<Tensor<2>>) -> Vec<Tensor<2>> {
    if a.is_empty() {
        return b;
    }
    a.into_iter().zip(b).map(|(a, b)| a + b).collect()
}

/// `Objective::loss_and_gradients` by one backward pass through the whole graph: every trained
/// tensor becomes an autodiff leaf for the pass, and a plain tensor again after it.
pub fn whole_graph_gradients(
    model: &mut (impl Objective + ?Sized),
    batch: &Batch,
    denominator: usize,
) -> Result<Option<Gradients>, TrainError> {
    track(model.params_mut());
    let result = match model.loss_sum(batch) {
        None => Ok(None),
        Some(loss) => {
            let loss = loss.div_scalar(denominator as f64);
            let grads = loss.backward();
            gradients_of(model.params_mut(), &grads)
                .and_then(|g| Ok(Some((scalar(loss.inner())?, g))))
        }
    };
    release(model.params_mut());
    result
}

/// Makes each tensor an autodiff leaf whose gradient is kept.
pub fn track<'a>(params: impl IntoIterator<Item = (String, &'a mut Tensor<2>)>) {
    for (_, t) in params {
        *t = t.clone().inner().autodiff().require_grad();
    }
}

/// Drops the tensors' autodiff association (the graph of a finished pass goes with it).
pub fn release<'a>(params: impl IntoIterator<Item = (String, &'a mut Tensor<2>)>) {
    for (_, t) in params {
        *t = t.clone().inner();
    }
}

/// The gradient of each tracked tensor in `grads`.
pub fn gradients_of<'a>(
    params: impl IntoIterator<Item = (String, &'a mut Tensor<2>)>,
    grads: &burn::tensor::Gradients,
) -> Result<Vec<Tensor<2>>, TrainError> {
    params
        .into_iter()
        .map(|(key, t)| t.grad(grads).ok_or(TrainError::MissingGradient(key)))
        .collect()
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
