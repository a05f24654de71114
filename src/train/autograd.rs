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

/// Elementwise sums of two gradient lists; an empty list is zero.
pub fn sum(a: Vec<Tensor<2>>, b: Vec<Tensor<2>>) -> Vec<Tensor<2>> {
    if a.is_empty() {
        return b;
    }
    a.into_iter().zip(b).map(|(a, b)| a + b).collect()
}

/// `loss(model) / denominator` and its gradient for every trained tensor, by one backward pass
/// through the whole graph (`Objective::loss_and_gradients`' plain path): every trained tensor
/// becomes an autodiff leaf for the pass, and a plain tensor again after it. None when `loss`
/// scores nothing.
pub fn whole_graph_gradients<M: AdaptedModel + ?Sized>(
    model: &mut M,
    loss: impl FnOnce(&M) -> Option<Tensor<1>>,
    denominator: usize,
) -> Result<Option<Gradients>, TrainError> {
    track(model.params_mut());
    let result = match loss(model) {
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
