//! A BERT encoder layer's forward keeping what backward needs, and its backward written out:
//! self-attention ([`super::attention`], padding keys masked), the post-residual LayerNorms and
//! the exact-GELU feed-forward block. Every linear layer goes through [`super::linear`].
//! Source of the forward it inverts: `model::bert` (`BertLayer::forward`).

use burn::tensor::{Bool, Tensor};

use super::attention::{self, AttentionCore, Mask};
use super::layer::Shape;
use super::linear::{self, FactorGradients, LinearTape};
use super::ops::{gelu_and_cdf, gelu_derivative, layer_norm_backward};
use crate::model::bert::BertLayer;

/// The adapters' gradients of a layer: query, key, value, attention output, intermediate,
/// output (`Bert::linears_mut` order).
pub type EncoderGradients = [Option<FactorGradients>; 6];

#[derive(Debug, Clone)]
pub struct EncoderTape {
    projections: [LinearTape; 6],
    core: AttentionCore,
    /// The attention's output [b·s, h] (the attention-output projection's input).
    context: Tensor<2>,
    /// The two LayerNorms' inputs (attention output + x, feed-forward output + its input).
    norm_inputs: [Tensor<2>; 2],
    /// The intermediate projection's output, before GELU, and Φ of it.
    intermediate: Tensor<2>,
    cdf: Tensor<2>,
}

/// `BertLayer::forward` on x [b·s, h] with the padding mask [b, 1, 1, s], keeping its tape.
pub fn forward(
    layer: &BertLayer,
    x: Tensor<2>,
    Shape { b, s, masked }: Shape,
    padding: &Tensor<4, Bool>,
) -> (Tensor<2>, EncoderTape) {
    let [_, h] = x.dims();
    let (n, d) = (layer.n_heads, h / layer.n_heads);
    let heads = |t: Tensor<2>| t.reshape([b, s, n, d]).swap_dims(1, 2);
    let (q, q_tape) = linear::forward(&layer.query, x.clone());
    let (k, k_tape) = linear::forward(&layer.key, x.clone());
    let (v, v_tape) = linear::forward(&layer.value, x.clone());
    let scale = 1.0 / (d as f64).sqrt();
    let (q, k, v) = (heads(q).mul_scalar(scale), heads(k), heads(v));
    let (context, core) = attention::forward(q, k, v, Mask::Whole(padding), masked, None, false);
    let context = context.swap_dims(1, 2).reshape([b * s, h]);
    let (attended, ao_tape) = linear::forward(&layer.attention_output, context.clone());
    let first = attended + x;
    let a = layer.attention_norm.forward_rows(first.clone());
    let (intermediate, i_tape) = linear::forward(&layer.intermediate, a.clone());
    let (activated, cdf) = gelu_and_cdf(intermediate.clone());
    let (y, o_tape) = linear::forward(&layer.output, activated);
    let second = y + a;
    let out = layer.output_norm.forward_rows(second.clone());
    let tape = EncoderTape {
        projections: [q_tape, k_tape, v_tape, ao_tape, i_tape, o_tape],
        core,
        context,
        norm_inputs: [first, second],
        intermediate,
        cdf,
    };
    (out, tape)
}

/// dy [b·s, h] → the input gradient (when `need_dx`) and the adapters' gradients.
pub fn backward(
    layer: &BertLayer,
    tape: EncoderTape,
    dy: Tensor<2>,
    Shape { b, s, .. }: Shape,
    padding: &Tensor<4, Bool>,
    need_dx: bool,
) -> (Option<Tensor<2>>, EncoderGradients) {
    let [_, h] = dy.dims();
    let (n, d) = (layer.n_heads, h / layer.n_heads);
    let [q_tape, k_tape, v_tape, ao_tape, i_tape, o_tape] = tape.projections;
    let [first, second] = tape.norm_inputs;
    let dsecond = layer_norm_backward(&layer.output_norm, second, dy);
    let (dactivated, output) = linear::backward(&layer.output, o_tape, dsecond.clone());
    let dintermediate = dactivated * gelu_derivative(tape.intermediate, tape.cdf);
    let (da, intermediate) = linear::backward(&layer.intermediate, i_tape, dintermediate);
    let dfirst = layer_norm_backward(&layer.attention_norm, first, da + dsecond);
    let context = tape.context;
    let (dcontext, attention_output) =
        linear::backward(&layer.attention_output, ao_tape, dfirst.clone());
    let heads = |t: Tensor<2>| t.reshape([b, s, n, d]).swap_dims(1, 2);
    let mask = Mask::Whole(padding);
    let (dq, dk, dv) = attention::backward(tape.core, heads(dcontext), heads(context), mask);
    let flat = |t: Tensor<4>| t.swap_dims(1, 2).reshape([b * s, h]);
    let dq = dq.mul_scalar(1.0 / (d as f64).sqrt());
    let (dxq, query) = linear::backward_if(&layer.query, q_tape, flat(dq), need_dx);
    let (dxk, key) = linear::backward_if(&layer.key, k_tape, flat(dk), need_dx);
    let (dxv, value) = linear::backward_if(&layer.value, v_tape, flat(dv), need_dx);
    let dx = [dxq, dxk, dxv]
        .into_iter()
        .flatten()
        .reduce(|a, b| a + b)
        .map(|d| d + dfirst);
    let grads = [query, key, value, attention_output, intermediate, output];
    (dx, grads)
}
