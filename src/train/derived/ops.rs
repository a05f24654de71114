//! Backward of the small operations decoder blocks share: RMSNorm, rotary embeddings and the
//! SiLU gate. Each takes what its forward kept and the output gradient.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use crate::model::norm::RmsNorm;
use crate::model::rope::RopeTables;

/// RMSNorm over the last dimension of x [rows, d] (`RmsNorm::forward`, in two dimensions).
pub fn rms_norm(norm: &RmsNorm, x: Tensor<2>) -> Tensor<2> {
    let [n, d] = x.dims();
    let r = inverse_rms(norm, x.clone());
    x * r.expand([n, d]) * norm.weight.clone().reshape([1, d]).expand([n, d])
}

/// y = w·x·r with r = 1/√(mean(x²) + ε): dx = r·(g − x̂·mean(g·x̂)), g = w·dy, x̂ = x·r.
pub fn rms_norm_backward(norm: &RmsNorm, x: Tensor<2>, dy: Tensor<2>) -> Tensor<2> {
    let [n, d] = x.dims();
    let r = inverse_rms(norm, x.clone()).expand([n, d]);
    let g = dy * norm.weight.clone().reshape([1, d]).expand([n, d]);
    let normed = x * r.clone();
    let mean = (g.clone() * normed.clone()).mean_dim(1).expand([n, d]);
    (g - normed * mean) * r
}

/// 1/√(mean(x²) + ε) per row → [rows, 1].
fn inverse_rms(norm: &RmsNorm, x: Tensor<2>) -> Tensor<2> {
    (x.powi_scalar(2).mean_dim(1) + norm.eps).sqrt().recip()
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
