//! A frozen linear layer with its optional adapter, forward keeping what backward needs and
//! backward written out: the base gets no gradient (it is frozen), so backward is the input
//! gradient dy·W plus, for the adapter with u = s·drop(x)·Aᵀ kept from the forward,
//! dB = dyᵀ·u, dA = (s·dy·B)ᵀ·drop(x) and its share of the input gradient (s·dy·B)·A ⊙ mask.
//!
//! DoRA (`LoraAdapter::forward`): y = x·Wᵀ + (c − 1)·(drop(x)·Wᵀ) + c·(u·Bᵀ) with
//! c = m / n and the row norms n = ‖W + s·B·A‖ held constant (detached). With g = c·dy the
//! adapter's gradients are LoRA's on g; dm = Σ_rows dy·(drop(x)·Wᵀ + u·Bᵀ) / n; and the input
//! gradient gains ((c − 1)·dy)·W ⊙ mask (without dropout: g·W in place of dy·W).

use burn::tensor::Tensor;

use crate::kernels::{self, DropoutMask, add_matmul_nt, matmul, matmul_nt};
use crate::model::frozen::{frozen_product, frozen_product_nt};
use crate::model::linear::Linear;

/// What a linear layer's backward needs from its forward.
#[derive(Debug, Clone)]
pub struct LinearTape {
    /// The input [n, in] (a handle shared with the other layers reading it), kept only where
    /// an adapter's gradients need it: a frozen layer's input gradient is dy·W alone. None
    /// also where the caller recomputes it for backward ([`LinearTape::forget_input`]).
    x: Option<Tensor<2>>,
    adapter: Option<AdapterTape>,
}

#[derive(Debug, Clone)]
struct AdapterTape {
    /// s·drop(x)·Aᵀ [n, r].
    u: Tensor<2>,
    /// The dropout mask, when one was drawn: a stream position, so backward applies the same
    /// mask again instead of keeping [n, in] floats per adapter — a third of a layer's tape with
    /// dropout on.
    mask: Option<DropoutMask>,
    /// DoRA's row norms n [1, out] and scales c = m / n [1, out].
    dora: Option<[Tensor<2>; 2]>,
}

/// The gradients of one adapter's trained tensors, in `AdaptedModel::params_mut` order: dA
/// [r, in], dB [out, r], and with DoRA dm [1, out].
pub type FactorGradients = Vec<Tensor<2>>;

/// Sums two adapters' gradient lists (chunks of one layer), either of which may be absent.
pub fn add(a: Option<FactorGradients>, b: Option<FactorGradients>) -> Option<FactorGradients> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.into_iter().zip(b).map(|(a, b)| a + b).collect()),
        (kept, new) => kept.or(new),
    }
}

/// x [n, in] → x·Wᵀ + b (+ the adapter's contribution) [n, out], drawing the adapter's dropout
/// mask as `LoraAdapter::forward` does (same stream, same shape), so both paths see the same
/// masks.
pub fn forward(linear: &Linear, x: Tensor<2>) -> (Tensor<2>, LinearTape) {
    let [n, _] = x.dims();
    let out = linear.weight.dims()[0];
    let with_bias = |y: Tensor<2>| match &linear.bias {
        Some(bias) => y + bias.clone().reshape([1, out]).expand([n, out]),
        None => y,
    };
    // DoRA multiplies by W up to three times: decoded once for them all. Otherwise the one
    // product decodes it (a large kept-quantised matrix a chunk of rows at a time).
    let dora = linear.lora.as_ref().is_some_and(|l| l.magnitude.is_some());
    let w = dora.then(|| linear.weight.in_dtype(linear.compute));
    let base = match &w {
        Some(w) => frozen_product_nt(x.clone(), w.clone(), linear.compute),
        None => linear.weight.product_nt(x.clone(), linear.compute),
    };
    let Some(lora) = &linear.lora else {
        let tape = LinearTape {
            x: None,
            adapter: None,
        };
        return (with_bias(base), tape);
    };
    let mask = lora.dropout_mask(&x);
    let dropped = match mask {
        Some(m) => kernels::dropout(x.clone(), m),
        None => x.clone(),
    };
    let u = matmul_nt(dropped.clone(), lora.a.clone()).mul_scalar(lora.scale);
    let (y, dora) = match &lora.magnitude {
        None => (add_matmul_nt(base, &u, &lora.b), None),
        Some(m) => {
            let lora_out = matmul_nt(u.clone(), lora.b.clone());
            let w = w.expect("decoded for DoRA above");
            let norm = lora.dora_norm(w.clone());
            let c = m.clone() / norm.clone();
            let wide = c.clone().expand([n, out]);
            let base_dropped = match &mask {
                Some(_) => frozen_product_nt(dropped, w, linear.compute),
                None => base.clone(),
            };
            // Summed in `LoraAdapter::forward`'s order, so a recomputed pass rounds alike.
            let y = base + ((wide.clone() - 1.0) * base_dropped + wide * lora_out);
            (y, Some([norm, c]))
        }
    };
    let adapter = Some(AdapterTape { u, mask, dora });
    (
        with_bias(y),
        LinearTape {
            x: Some(x),
            adapter,
        },
    )
}

/// dy [n, out] → the input gradient [n, in] and the adapter's gradients.
pub fn backward(
    linear: &Linear,
    tape: LinearTape,
    dy: Tensor<2>,
) -> (Tensor<2>, Option<FactorGradients>) {
    let (dx, grads) = backward_if(linear, tape, dy, true);
    (dx.expect("asked for"), grads)
}

/// [`backward`] when `need_dx`, else only the adapter's gradients (the lowest adapted layer
/// needs no input gradient).
pub fn backward_if(
    linear: &Linear,
    tape: LinearTape,
    dy: Tensor<2>,
    with_dx: bool,
) -> (Option<Tensor<2>>, Option<FactorGradients>) {
    let (Some(lora), Some(adapter)) = (&linear.lora, tape.adapter) else {
        let dx = with_dx.then(|| linear.weight.product(dy, linear.compute));
        return (dx, None);
    };
    // DoRA's products share one decoding; LoRA's one product decodes as it goes.
    let w = adapter
        .dora
        .is_some()
        .then(|| linear.weight.in_dtype(linear.compute));
    let w = || w.clone().expect("decoded above");
    let [n, out] = dy.dims();
    let mask = adapter.mask;
    let x = tape.x.expect("an adapted layer's tape holds its input");
    let dropped = match mask {
        Some(m) => kernels::dropout(x, m),
        None => x,
    };
    // DoRA: the adapter sees c·dy; m its own gradient; the base path its share.
    let (g, dm, base_dx) = match &adapter.dora {
        None => (
            dy.clone(),
            None,
            with_dx.then(|| linear.weight.product(dy, linear.compute)),
        ),
        Some([norm, c]) => {
            let wide = c.clone().expand([n, out]);
            let g = dy.clone() * wide.clone();
            let compute = linear.compute;
            let v = frozen_product_nt(dropped.clone(), w(), compute)
                + matmul_nt(adapter.u.clone(), lora.b.clone());
            let dm = (dy.clone() * v).sum_dim(0) / norm.clone();
            let base_dx = with_dx.then(|| match mask {
                None => frozen_product(g.clone(), w(), compute),
                Some(mask) => {
                    let dropped = frozen_product((wide - 1.0) * dy.clone(), w(), compute);
                    frozen_product(dy, w(), compute) + kernels::dropout(dropped, mask)
                }
            });
            (g, Some(dm), base_dx)
        }
    };
    let db = matmul(g.clone().transpose(), adapter.u);
    let du = matmul(g, lora.b.clone()).mul_scalar(lora.scale); // [n, r]
    let da = matmul(du.clone().transpose(), dropped);
    let dx = base_dx.map(|base| {
        let through = matmul(du, lora.a.clone());
        base + match mask {
            Some(m) => kernels::dropout(through, m),
            None => through,
        }
    });
    let mut grads = vec![da, db];
    grads.extend(dm);
    (dx, Some(grads))
}

impl LinearTape {
    /// The tape without the layer's input, for a caller that recomputes it more cheaply than
    /// it keeps it; [`with_input`](Self::with_input) gives it back before backward.
    pub fn forget_input(self) -> Self {
        Self { x: None, ..self }
    }

    /// Whether backward needs the input back ([`with_input`](Self::with_input)).
    pub fn needs_input(&self) -> bool {
        self.adapter.is_some()
    }

    /// The tape with its input [n, in] given back.
    pub fn with_input(self, x: Tensor<2>) -> Self {
        Self { x: Some(x), ..self }
    }
}
