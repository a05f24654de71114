//! Backward of the small operations the blocks share: RMSNorm and LayerNorm (whose forwards are
//! `model::norm`'s, on rows), rotary embeddings, the SiLU gate and the exact GELU. Each backward
//! takes what its forward kept and the output gradient.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

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
pub fn rope_backward(rope: &RopeTables, dy: Tensor<4>) -> Tensor<4> {
    let [b, h, s, d] = dy.dims();
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
