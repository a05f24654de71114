//! The autodiff plumbing every gradient path shares: trained tensors become autodiff leaves for
//! one pass ([`track`]) and plain tensors after it ([`release`]), their gradients are read back
//! ([`gradients_of`]) and summed across passes ([`sum`]); [`whole_graph_gradients`] is the plain
//! path, one backward through the whole graph. Knows no loss: callers pass it.

use burn::tensor::Tensor;

use super::{TrainError, scalar};
use crate::model::adapted::AdaptedModel;

/// A micro-batch's share of the step's loss and the gradient of every trained tensor
/// (`AdaptedModel::params_mut` order: A then B per adapter, then a classifier's head).
pub type Gradients = (f64, Vec<Tensor<2>>);

/// Where a micro-batch's backward starts: its loss sum divided by the scored targets of the
/// whole step, and the gradient multiplied by the loss scale (f16 products' dynamic loss
/// scaling, `train::loss_scale`; 1 otherwise). The returned loss is never scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seed {
    pub denominator: usize,
    pub loss_scale: f64,
}

impl Seed {
    /// The loss sum over `denominator` targets, unscaled.
    pub fn mean_over(denominator: usize) -> Self {
        Self {
            denominator,
            loss_scale: 1.0,
        }
    }

    /// The gradient `d` of a loss sum (already divided by `divisor`, a logit scaling, where
    /// the caller has one) → the gradient backward starts from. The scale is a power of two:
    /// multiplying by it after the division changes no bits but the exponent.
    pub fn gradient<const D: usize>(&self, d: Tensor<D>, divisor: f64) -> Tensor<D> {
        let d = d.div_scalar(self.denominator as f64 * divisor);
        if self.loss_scale == 1.0 {
            d
        } else {
            d.mul_scalar(self.loss_scale)
        }
    }
}

/// Elementwise sums of two gradient lists; an empty list is zero.
pub fn sum(a: Vec<Tensor<2>>, b: Vec<Tensor<2>>) -> Vec<Tensor<2>> {
    if a.is_empty() {
        return b;
    }
    a.into_iter().zip(b).map(|(a, b)| a + b).collect()
}

/// `loss(model) / seed.denominator` and its gradient (times `seed.loss_scale`) for every trained tensor, by one backward pass
/// through the whole graph (`Objective::loss_and_gradients`' plain path): every trained tensor
/// becomes an autodiff leaf for the pass, and a plain tensor again after it. None when `loss`
/// scores nothing.
pub fn whole_graph_gradients<M: AdaptedModel + ?Sized>(
    model: &mut M,
    loss: impl FnOnce(&M) -> Option<Tensor<1>>,
    seed: Seed,
) -> Result<Option<Gradients>, TrainError> {
    track(model.params_mut());
    let result = match loss(model) {
        None => Ok(None),
        Some(loss) => {
            let loss = loss.div_scalar(seed.denominator as f64);
            let grads = match seed.loss_scale {
                1.0 => loss.backward(),
                scale => loss.clone().mul_scalar(scale).backward(),
            };
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

/// The gradient of each tracked tensor in `grads`. An expert's adapter that no token was
/// routed to has none: its gradient is zero (as the derived step gives it); any other tensor
/// without one is an error.
pub fn gradients_of<'a>(
    params: impl IntoIterator<Item = (String, &'a mut Tensor<2>)>,
    grads: &burn::tensor::Gradients,
) -> Result<Vec<Tensor<2>>, TrainError> {
    params
        .into_iter()
        .map(|(key, t)| match t.grad(grads) {
            Some(g) => Ok(g),
            None if key.contains(".experts.") => Ok(t.clone().inner().zeros_like()),
            None => Err(TrainError::MissingGradient(key)),
        })
        .collect()
}
