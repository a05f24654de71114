//! A frozen linear layer with its optional adapter, forward keeping what backward needs and
//! backward written out: the base gets no gradient (it is frozen), so backward is the input
//! gradient dy·W plus, for the adapter with u = s·drop(x)·Aᵀ kept from the forward,
//! dB = dyᵀ·u, dA = (s·dy·B)ᵀ·drop(x) and its share of the input gradient (s·dy·B)·A ⊙ mask.

use burn::tensor::Tensor;

use crate::model::linear::Linear;

/// What a linear layer's backward needs from its forward.
#[derive(Debug, Clone)]
pub struct LinearTape {
    /// The input [n, in] (a handle shared with the other layers reading it).
    x: Tensor<2>,
    adapter: Option<AdapterTape>,
}

#[derive(Debug, Clone)]
struct AdapterTape {
    /// s·drop(x)·Aᵀ [n, r].
    u: Tensor<2>,
    /// The inverted-dropout mask [n, in], when dropout was drawn.
    mask: Option<Tensor<2>>,
}

/// dA [r, in] and dB [out, r] of one adapter.
pub type FactorGradients = (Tensor<2>, Tensor<2>);

/// x [n, in] → x·Wᵀ + b (+ s·drop(x)·Aᵀ·Bᵀ) [n, out], drawing the adapter's dropout mask as
/// `LoraAdapter::forward` does (same stream, same shape), so both paths see the same masks.
pub fn forward(linear: &Linear, x: Tensor<2>) -> (Tensor<2>, LinearTape) {
    let [n, _] = x.dims();
    let out = linear.weight.dims()[0];
    let y = x.clone().matmul(linear.weight.dense().transpose());
    let y = match &linear.bias {
        Some(bias) => y + bias.clone().reshape([1, out]).expand([n, out]),
        None => y,
    };
    let Some(lora) = &linear.lora else {
        return (y, LinearTape { x, adapter: None });
    };
    let mask = lora.dropout_mask(&x);
    let dropped = match &mask {
        Some(m) => x.clone() * m.clone(),
        None => x.clone(),
    };
    let u = dropped
        .matmul(lora.a.clone().transpose())
        .mul_scalar(lora.scale);
    let y = y + u.clone().matmul(lora.b.clone().transpose());
    let adapter = Some(AdapterTape { u, mask });
    (y, LinearTape { x, adapter })
}

/// dy [n, out] → the input gradient [n, in] and the adapter's factor gradients.
pub fn backward(
    linear: &Linear,
    tape: LinearTape,
    dy: Tensor<2>,
) -> (Tensor<2>, Option<FactorGradients>) {
    let dx = dy.clone().matmul(linear.weight.dense());
    let (through, grads) = adapter_backward(linear, tape, dy, true);
    (through.map_or(dx.clone(), |t| dx + t), grads)
}

/// [`backward`] when `need_dx`, else only the factor gradients (the lowest adapted layer needs
/// no input gradient).
pub fn backward_if(
    linear: &Linear,
    tape: LinearTape,
    dy: Tensor<2>,
    need_dx: bool,
) -> (Option<Tensor<2>>, Option<FactorGradients>) {
    if need_dx {
        let (dx, grads) = backward(linear, tape, dy);
        (Some(dx), grads)
    } else {
        (None, adapter_backward(linear, tape, dy, false).1)
    }
}

/// The adapter's factor gradients and, when `with_dx`, its share of the input gradient.
fn adapter_backward(
    linear: &Linear,
    tape: LinearTape,
    dy: Tensor<2>,
    with_dx: bool,
) -> (Option<Tensor<2>>, Option<FactorGradients>) {
    let (Some(lora), Some(adapter)) = (&linear.lora, tape.adapter) else {
        return (None, None);
    };
    let db = dy.clone().transpose().matmul(adapter.u);
    let du = dy.matmul(lora.b.clone()).mul_scalar(lora.scale); // [n, r]
    let dropped = match &adapter.mask {
        Some(m) => tape.x * m.clone(),
        None => tape.x,
    };
    let da = du.clone().transpose().matmul(dropped);
    let dx = with_dx.then(|| {
        let through = du.matmul(lora.a.clone());
        match adapter.mask {
            Some(m) => through * m,
            None => through,
        }
    });
    (dx, Some((da, db)))
}

impl LinearTape {
    /// The layer's input [n, in].
    pub fn input(&self) -> Tensor<2> {
        self.x.clone()
    }
}
