//! Backward of the small operations the blocks share: RMSNorm and LayerNorm (whose forwards are
//! `model::norm`'s, on rows), rotary embeddings, the gates' activations (SiLU, GELU exact and tanh) and soft caps. Each backward
//! takes what its forward kept and the output gradient.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use crate::model::mlp::{Activation, GELU_TANH};
use crate::model::norm::{LayerNorm, RmsNorm};
use crate::model::rope::RopeTables;

/// y = w·x·r with r = 1/√(mean(x²) + ε): dx = r·(g − x̂·mean(g·x̂)), g = w·dy, x̂ = x·r.
pub fn rms_norm_backward(norm: &RmsNorm, x: Tensor<2>, dy: Tensor<2>) -> Tensor<2> {
    let [n, d] = x.dims();
    let r = norm.inverse_rms(x.clone()).expand([n, d]);
    let g = dy * norm.weight.clone().reshape([1, d]).expand([n, d]);
    let normed = x * r.clone();
    let mean = (g.clone() * normed.clone()).mean_dim(1).expand([n, d]);
    (g - normed * mean) * r
}

/// `RopeTables::apply` is y = x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁]; its
/// transpose: dx = dy·cos + [g₂, −g₁] where g = dy·sin.
/// Dimensions past the rotated ones (partial rotary) pass their gradient through.
pub fn rope_backward(rope: &RopeTables, dy: Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = dy.dims();
    let r = rope.rotary_dim();
    if r < d {
        let rotated = rope_backward(rope, dy.clone().narrow(3, 0, r));
        return Tensor::cat(vec![rotated, dy.narrow(3, r, d - r)], 3);
    }
    let cos = rope.cos.clone().expand([b, h, s, d]);
    let g = dy.clone() * rope.sin.clone().expand([b, h, s, d]);
    let g1 = g.clone().narrow(3, 0, d / 2);
    let g2 = g.narrow(3, d / 2, d / 2);
    dy * cos + Tensor::cat(vec![g2, g1.neg()], 3)
}

/// silu(x) = x·σ(x) and its derivative σ(x)·(1 + x·(1 − σ(x))), from one sigmoid.
pub fn silu_and_derivative(x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let sig = sigmoid(x.clone());
    let silu = x.clone() * sig.clone();
    let derivative = sig.clone() * (x * (sig.neg() + 1.0) + 1.0);
    (silu, derivative)
}

/// The gated MLP's activation of x and its derivative.
pub fn activation_and_derivative(activation: Activation, x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    match activation {
        Activation::Silu => silu_and_derivative(x),
        Activation::GeluTanh => gelu_tanh_and_derivative(x),
        Activation::Gelu => {
            let (gelu, cdf) = gelu_and_cdf(x.clone());
            (gelu, gelu_derivative(x, cdf))
        }
    }
}

/// ½x(1 + t) with t = tanh(k(x + c·x³)), and its derivative
/// ½(1 + t) + ½x(1 − t²)·k(1 + 3c·x²), from one tanh.
pub fn gelu_tanh_and_derivative(x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let (k, c) = GELU_TANH;
    let square = x.clone().powi_scalar(2);
    let t = (x.clone() * (square.clone().mul_scalar(c) + 1.0))
        .mul_scalar(k)
        .tanh();
    let half_x = x.mul_scalar(0.5);
    let gelu = half_x.clone() * (t.clone() + 1.0);
    let slope = (square.mul_scalar(3.0 * c) + 1.0).mul_scalar(k);
    let derivative =
        (t.clone() + 1.0).mul_scalar(0.5) + half_x * (t.powi_scalar(2).neg() + 1.0) * slope;
    (gelu, derivative)
}

/// The derivative of c·tanh(x / c) given its value y: 1 − (y / c)².
pub fn softcap_derivative<const D: usize>(capped: Tensor<D>, cap: f64) -> Tensor<D> {
    capped.div_scalar(cap).powi_scalar(2).neg() + 1.0
}

/// y = w·x̂ + b with x̂ = (x − mean)·r, r = 1/√(var + ε):
/// dx = r·(g − mean(g) − x̂·mean(g·x̂)), g = w·dy.
pub fn layer_norm_backward(norm: &LayerNorm, x: Tensor<2>, dy: Tensor<2>) -> Tensor<2> {
    let [n, d] = x.dims();
    let (normed, r) = norm.standardise(x);
    let g = dy * norm.weight.clone().reshape([1, d]).expand([n, d]);
    let mean = g.clone().mean_dim(1).expand([n, d]);
    let mean_normed = (g.clone() * normed.clone()).mean_dim(1).expand([n, d]);
    (g - mean - normed * mean_normed) * r
}

/// The exact GELU, x·Φ(x), and Φ(x) (the normal CDF) for its backward: one erf pass where
/// calling GELU and then its derivative would take two (erf is scalar in flex, 15 % of a BERT
/// step when computed twice).
pub fn gelu_and_cdf(x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let cdf = (x.clone().mul_scalar(std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0).mul_scalar(0.5);
    (x * cdf.clone(), cdf)
}

/// The exact GELU's derivative, Φ(x) + x·φ(x), with φ the normal density.
pub fn gelu_derivative(x: Tensor<2>, cdf: Tensor<2>) -> Tensor<2> {
    let density = x
        .clone()
        .powi_scalar(2)
        .mul_scalar(-0.5)
        .exp()
        .mul_scalar(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    cdf + x * density
}
