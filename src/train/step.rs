//! One optimiser step: forward and backward of each micro-batch with the adapters tracked (the
//! frozen base stays outside autodiff, so it gets no gradient and saves no activations for one),
//! gradients summed across micro-batches, the loss normalised by the labelled tokens of the whole
//! step, global-norm clipping, then AdamW. In a data-parallel job ([`crate::distributed`]) each
//! rank computes its round-robin share of the micro-batches and the loss and gradient sums are
//! all-reduced once, before clipping: every rank then applies the same update to the same
//! adapters, and the step is the single process's up to the order of one f32 sum.

use burn::tensor::{Device, Tensor, TensorData};

use super::TrainError;
use super::autograd::{Gradients, Seed, sum};
use super::loss::Objective;
use super::loss_scale::LossScale;
use super::optim::{AdamW, clip_coefficient, global_norm};
use crate::data::batch::Batch;
use crate::distributed::{self, Ranks};
use crate::model::adapted::{host, stream_seed};
use crate::transfer;

/// Which of a step's micro-batches this process computes, and how their dropout is drawn.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    pub ranks: Ranks,
    /// Reseed dropout per micro-batch from (this seed, its index in the step), so a micro-batch
    /// draws the same masks on whichever rank computes it; None leaves the streams as they are.
    pub dropout_seed: Option<u64>,
}

impl Share {
    /// Every micro-batch, in this process, with the model's dropout streams as they are.
    pub const ALL: Self = Self {
        ranks: Ranks::SOLO,
        dropout_seed: None,
    };
}

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
    /// f16 loss scaling: the scale this step's gradients were computed at, and whether they
    /// overflowed (the step then applied no update).
    pub loss_scale: Option<f64>,
    pub overflowed: bool,
}

/// Accumulated loss and gradients of a step's micro-batches.
pub fn accumulate_gradients(
    model: &mut impl Objective,
    micro_batches: &[Batch],
) -> Result<Gradients, TrainError> {
    accumulate_share(model, micro_batches, Share::ALL, 1.0)
}

/// The loss and gradient sums of `share`'s micro-batches, normalised by the labelled tokens of
/// all of them (every rank counts those itself: each builds the whole step's batches) and
/// multiplied by `loss_scale` (1 unless f16); then, in a job of several ranks, summed across
/// the job.
pub fn accumulate_share(
    model: &mut impl Objective,
    micro_batches: &[Batch],
    share: Share,
    loss_scale: f64,
) -> Result<Gradients, TrainError> {
    let loss_tokens: usize = micro_batches.iter().map(Batch::loss_tokens).sum();
    if loss_tokens == 0 {
        return Err(TrainError::NoLossTokens);
    }
    let seed = Seed {
        denominator: loss_tokens,
        loss_scale,
    };
    let mut total = 0.0;
    let mut sums: Vec<Tensor<2>> = Vec::new();
    for (j, batch) in micro_batches.iter().enumerate() {
        if !share.ranks.owns(j) {
            continue;
        }
        if let Some(seed) = share.dropout_seed {
            model.seed_dropout(stream_seed(seed, j as u64));
        }
        let Some((loss, grads)) = model.loss_and_gradients(batch, seed)? else {
            continue; // nothing labelled here: no loss, no gradient
        };
        total += loss;
        sums = sum(sums, grads);
    }
    if share.ranks.is_parallel() {
        let params = model.params_mut();
        let shapes: Vec<[usize; 2]> = params.iter().map(|(_, t)| t.dims()).collect();
        if let Some((_, first)) = params.first() {
            let device = first.device();
            return all_reduce(total, sums, &shapes, &device);
        }
    }
    Ok((total, sums))
}

/// The job's sums of every rank's loss and gradients (a rank without a micro-batch passes none:
/// zeros of `shapes`), through the host in one flat f32 buffer: one all-reduce per step. `device`
/// receives the summed gradients.
pub fn all_reduce(
    loss: f64,
    grads: Vec<Tensor<2>>,
    shapes: &[[usize; 2]],
    device: &Device,
) -> Result<Gradients, TrainError> {
    let total: usize = shapes.iter().map(|[r, c]| r * c).sum();
    let mut flat = Vec::with_capacity(total);
    if grads.is_empty() {
        flat.resize(total, 0.0);
    }
    for g in &grads {
        let g = host(g).map_err(|e| TrainError::Readback(e.to_string()))?;
        flat.extend_from_slice(&g.values);
    }
    distributed::sum_f32(&mut flat);
    let mut loss = [loss];
    distributed::sum_f64(&mut loss);
    let mut offset = 0;
    let grads = shapes
        .iter()
        .map(|&shape| {
            let n = shape[0] * shape[1];
            let values = flat[offset..offset + n].to_vec();
            offset += n;
            transfer::upload(TensorData::new(values, shape), device)
        })
        .collect();
    Ok((loss[0], grads))
}

/// One full optimiser step at learning rate `lr`.
pub fn train_step(
    model: &mut impl Objective,
    micro_batches: &[Batch],
    optimizer: &mut AdamW,
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepStats, TrainError> {
    train_step_share(
        model,
        micro_batches,
        Share::ALL,
        optimizer,
        lr,
        max_grad_norm,
        None,
    )
}

/// [`train_step`] computing `share`'s micro-batches (the trainer's entry point), under
/// `loss_scale` where the products are f16: gradients scaled, unscaled before clipping, the
/// step skipped (no update) when they overflowed, and the scale updated either way.
pub fn train_step_share(
    model: &mut impl Objective,
    micro_batches: &[Batch],
    share: Share,
    optimizer: &mut AdamW,
    lr: f64,
    max_grad_norm: f64,
    loss_scale: Option<&mut LossScale>,
) -> Result<StepStats, TrainError> {
    let scale = loss_scale.as_ref().map(|s| s.scale);
    let (loss, grads) = accumulate_share(model, micro_batches, share, scale.unwrap_or(1.0))?;
    let grads: Vec<Tensor<2>> = match scale {
        Some(s) if s != 1.0 => grads.into_iter().map(|g| g.mul_scalar(1.0 / s)).collect(),
        _ => grads,
    };
    let grad_norm = global_norm(&grads)?;
    let mut stats = StepStats {
        loss,
        grad_norm,
        loss_tokens: micro_batches.iter().map(Batch::loss_tokens).sum(),
        tokens: micro_batches.iter().map(Batch::real_tokens).sum(),
        loss_scale: scale,
        overflowed: false,
    };
    if !loss.is_finite() {
        // The forward itself overflowed: no loss scale fixes that.
        return Err(match scale {
            Some(_) => TrainError::HalfOverflow { loss, grad_norm },
            None => TrainError::NonFinite { loss, grad_norm },
        });
    }
    match loss_scale {
        // Overflowed scaled gradients: no update, a smaller scale next step (torch's skip).
        Some(loss_scale) => {
            loss_scale.update(grad_norm.is_finite());
            stats.overflowed = !grad_norm.is_finite();
            if stats.overflowed {
                return Ok(stats);
            }
        }
        None if !grad_norm.is_finite() => {
            return Err(TrainError::NonFinite { loss, grad_norm });
        }
        None => {}
    }
    let coef = clip_coefficient(grad_norm, max_grad_norm);
    let grads = grads.into_iter().map(|g| g.mul_scalar(coef)).collect();
    optimizer.step(model.params_mut(), grads, lr);
    Ok(stats)
}
