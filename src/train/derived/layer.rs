//! A decoder layer's forward keeping what backward needs, and its backward written out:
//! grouped-query attention ([`super::attention`], key/value gradients summed over the query
//! heads that share them, sliding windows, soft-capped scores), RoPE, q/k norms, the gated MLP
//! (SwiGLU, GeGLU), norms before and/or after each block and the residuals. Every linear layer goes through [`super::linear`].
//! Source of the forward it inverts: `model::decoder`, `model::attention`, `model::mlp`.

use burn::tensor::Tensor;

use super::attention::{self, AttentionCore, Mask};
use super::linear::{self, FactorGradients, LinearTape};
use super::moe::{self, MoeTape};
use super::ops::{activation_and_derivative, rms_norm_backward, rope_backward};
use crate::data::batch::Batch;
use crate::kernels;
use crate::model::attention::{Attention, QkvProjection};
use crate::model::decoder::{DecoderLayer, LayerInputs, LayerNorms};
use crate::model::decoder_config::QkNorm;
use crate::model::mlp::{Activation, FeedForward, GateUpProjection, Mlp};
use crate::model::moe::Routes;
use crate::model::norm::RmsNorm;

/// The adapters' gradients of a layer, in `DecoderLayer::linears_mut` order.
pub type LayerGradients = Vec<Option<FactorGradients>>;

/// Rows and columns of the batch (x is [b·s, hidden]) and the score masked keys get
/// (`attention::masked_score`).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub b: usize,
    pub s: usize,
    pub masked: f32,
}

impl Shape {
    /// `batch`'s rows and columns; `every_query_sees_a_key` as `attention::masked_score` takes it.
    pub fn of(batch: &Batch, every_query_sees_a_key: bool) -> Self {
        Self {
            b: batch.input_ids.len(),
            s: batch.input_ids.first().map_or(0, Vec::len),
            masked: attention::masked_score(every_query_sees_a_key),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LayerTape {
    /// The inputs of the layer's norms, in [`LayerNorms`]' order (None where it has none).
    norm_inputs: [Option<Tensor<2>>; 4],
    attention: AttentionTape,
    mlp: FeedForwardTape,
}

/// A dense MLP's tape, or a mixture of experts'.
#[allow(clippy::large_enum_variant)] // burn tensor handles; one per layer
#[derive(Debug, Clone)]
enum FeedForwardTape {
    Dense(MlpTape),
    Sparse(MoeTape),
}

#[derive(Debug, Clone)]
struct AttentionTape {
    /// q, k, v's projections (one when fused), then o's.
    qkv: Vec<LinearTape>,
    o: LinearTape,
    /// The attention's output [b·s, h·d] (o's input).
    out: Tensor<2>,
    /// The q and k norms' inputs, rows as the norm sees them.
    qk_norm_inputs: [Option<Tensor<2>>; 2],
    /// After RoPE, k and v repeated to every query head.
    core: AttentionCore,
}

#[derive(Debug, Clone)]
pub struct MlpTape {
    /// gate's and up's projections (one when fused), then down's.
    gate_up: Vec<LinearTape>,
    down: LinearTape,
    gate: Tensor<2>,
    up: Tensor<2>,
}

/// `DecoderLayer::forward` on x [b·s, hidden], keeping its tape.
/// `routes`: a mixture-of-experts layer's routes from an earlier forward of the same input (a
/// checkpointed layer's recompute), used instead of routing again.
pub fn forward(
    layer: &DecoderLayer,
    x: Tensor<2>,
    shape: Shape,
    inputs: &LayerInputs,
    routes: Option<Routes>,
) -> (Tensor<2>, LayerTape) {
    let m = layer.residual_multiplier;
    let LayerNorms {
        attention_in,
        attention_out,
        mlp_in,
        mlp_out,
    } = &layer.norms;
    let (a, attention_in_x) = norm_forward(attention_in, x.clone());
    let (a, mut attention) = attention_forward(layer, a, shape, inputs);
    let (a, attention_out_x) = norm_forward(attention_out, a);
    let mid = x + scaled(a, m);
    let (f, mlp_in_x) = norm_forward(mlp_in, mid.clone());
    let (f, mut mlp) = match &layer.mlp {
        FeedForward::Dense(dense) => {
            let (f, tape) = mlp_forward(dense, f);
            (f, FeedForwardTape::Dense(tape))
        }
        FeedForward::Sparse(sparse) => {
            let (f, tape) = moe::forward(sparse, f, routes);
            (f, FeedForwardTape::Sparse(tape))
        }
    };
    // q/k/v's and gate/up's adapters read a norm's output: the tape keeps the norm's input
    // (for its own backward) and recomputes the output for them, one hidden-sized buffer per
    // token less for each norm.
    if attention_in.is_some() {
        attention.qkv = attention
            .qkv
            .into_iter()
            .map(LinearTape::forget_input)
            .collect();
    }
    // (Experts keep their own inputs: each reads a gathered subset of the tokens.)
    if let (Some(_), FeedForwardTape::Dense(mlp)) = (mlp_in, &mut mlp) {
        mlp.gate_up = std::mem::take(&mut mlp.gate_up)
            .into_iter()
            .map(LinearTape::forget_input)
            .collect();
    }
    let (f, mlp_out_x) = norm_forward(mlp_out, f);
    let tape = LayerTape {
        norm_inputs: [attention_in_x, attention_out_x, mlp_in_x, mlp_out_x],
        attention,
        mlp,
    };
    (mid + scaled(f, m), tape)
}

impl LayerTape {
    /// The routes of a mixture-of-experts layer's forward.
    pub fn routes(self) -> Option<Routes> {
        match self.mlp {
            FeedForwardTape::Sparse(tape) => Some(tape.routes()),
            FeedForwardTape::Dense(_) => None,
        }
    }

    /// [`Self::routes`], borrowed.
    pub fn routes_ref(&self) -> Option<&Routes> {
        match &self.mlp {
            FeedForwardTape::Sparse(tape) => Some(tape.routes_ref()),
            FeedForwardTape::Dense(_) => None,
        }
    }
}

/// dy [b·s, hidden] → the input gradient (when `need_dx`) and the adapters' gradients.
/// `router_dprobs`: in a mixture-of-experts layer, the router load-balancing loss's gradient
/// with respect to its probabilities over every expert, [b·s, E].
pub fn backward(
    layer: &DecoderLayer,
    tape: LayerTape,
    dy: Tensor<2>,
    shape: Shape,
    inputs: &LayerInputs,
    need_dx: bool,
    router_dprobs: Option<Tensor<2>>,
) -> (Option<Tensor<2>>, LayerGradients) {
    let m = layer.residual_multiplier;
    let LayerNorms {
        attention_in,
        attention_out,
        mlp_in,
        mlp_out,
    } = &layer.norms;
    let [attention_in_x, attention_out_x, mlp_in_x, mlp_out_x] = tape.norm_inputs;
    let (mut attention_tape, mut mlp_tape) = (tape.attention, tape.mlp);
    if let FeedForwardTape::Dense(tape) = &mut mlp_tape {
        tape.gate_up = with_norm_output(std::mem::take(&mut tape.gate_up), mlp_in, &mlp_in_x);
    }
    attention_tape.qkv = with_norm_output(attention_tape.qkv, attention_in, &attention_in_x);
    let df = norm_backward(mlp_out, mlp_out_x, scaled(dy.clone(), m));
    let (df, mlp) = match (&layer.mlp, mlp_tape) {
        (FeedForward::Dense(dense), FeedForwardTape::Dense(tape)) => {
            let (df, (gate_up, down)) = mlp_backward(dense, tape, df);
            (df, gate_up.into_iter().chain([down]).collect())
        }
        (FeedForward::Sparse(sparse), FeedForwardTape::Sparse(tape)) => {
            moe::backward(sparse, tape, df, router_dprobs)
        }
        _ => unreachable!("a layer's tape comes from its own forward"),
    };
    let dmid = dy + norm_backward(mlp_in, mlp_in_x, df);
    let da = norm_backward(attention_out, attention_out_x, scaled(dmid.clone(), m));
    let (da, attention) = attention_backward(layer, attention_tape, da, shape, inputs, need_dx);
    let dx = da.map(|da| dmid + norm_backward(attention_in, attention_in_x, da));
    let (qkv, o) = attention;
    // `DecoderLayer::named_linears`' order: Phi-3's fused layers list o_proj first.
    let mut grads: LayerGradients = match layer.self_attn.qkv {
        QkvProjection::Fused { .. } => [o].into_iter().chain(qkv).collect(),
        QkvProjection::Separate { .. } => qkv.into_iter().chain([o]).collect(),
    };
    grads.extend(mlp);
    (dx, grads)
}

/// Gives `tapes` that need their input back `norm`'s output, recomputed from its input x (the
/// tapes forgot it in forward); `tapes` as they are without a norm.
fn with_norm_output(
    tapes: Vec<LinearTape>,
    norm: &Option<RmsNorm>,
    x: &Option<Tensor<2>>,
) -> Vec<LinearTape> {
    let (Some(norm), Some(x)) = (norm, x) else {
        return tapes;
    };
    if !tapes.iter().any(LinearTape::needs_input) {
        return tapes;
    }
    let output = norm.forward_rows(x.clone());
    let give = |tape: LinearTape| match tape.needs_input() {
        true => tape.with_input(output.clone()),
        false => tape,
    };
    tapes.into_iter().map(give).collect()
}

/// x through `norm` if the layer has it, with the norm's input kept.
fn norm_forward(norm: &Option<RmsNorm>, x: Tensor<2>) -> (Tensor<2>, Option<Tensor<2>>) {
    match norm {
        Some(norm) => (norm.forward_rows(x.clone()), Some(x)),
        None => (x, None),
    }
}

fn norm_backward(norm: &Option<RmsNorm>, x: Option<Tensor<2>>, dy: Tensor<2>) -> Tensor<2> {
    match (norm, x) {
        (Some(norm), Some(x)) => rms_norm_backward(norm, x, dy),
        _ => dy,
    }
}

fn scaled(t: Tensor<2>, m: f64) -> Tensor<2> {
    if m == 1.0 { t } else { t.mul_scalar(m) }
}

fn attention_forward(
    layer: &DecoderLayer,
    x: Tensor<2>,
    Shape { b, s, masked }: Shape,
    inputs: &LayerInputs,
) -> (Tensor<2>, AttentionTape) {
    let attn = &layer.self_attn;
    let (h, kv, d) = (attn.n_heads, attn.n_kv_heads, attn.head_dim);
    let ([q, k, v], qkv_tapes) = qkv_forward(&attn.qkv, x, [h * d, kv * d]);
    let (q, q_rows) = qk_norm(attn, &attn.q_norm, q, h);
    let (k, k_rows) = qk_norm(attn, &attn.k_norm, k, kv);
    let heads = |t: Tensor<2>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
    let rope = inputs.rope_of(layer);
    let q = rope.apply(heads(q, h)).mul_scalar(attn.scale);
    let (k, v) = (rope.apply(heads(k, kv)), heads(v, kv));
    let mask = Mask::Source(inputs.mask_of(layer));
    // Query head i reads key/value head i / (h / kv), as HF's repeat_kv orders them.
    let (out, core) = attention::forward(q, k, v, mask, masked, attn.softcap, true);
    let out = out.swap_dims(1, 2).reshape([b * s, h * d]);
    let (y, o_tape) = linear::forward(&attn.o_proj, out.clone());
    let tape = AttentionTape {
        qkv: qkv_tapes,
        o: o_tape,
        out,
        qk_norm_inputs: [q_rows, k_rows],
        core,
    };
    (y, tape)
}

fn attention_backward(
    layer: &DecoderLayer,
    tape: AttentionTape,
    dy: Tensor<2>,
    Shape { b, s, .. }: Shape,
    inputs: &LayerInputs,
    need_dx: bool,
) -> (Option<Tensor<2>>, AttentionGradients) {
    let attn = &layer.self_attn;
    let (h, kv, d) = (attn.n_heads, attn.n_kv_heads, attn.head_dim);
    let out = tape.out;
    let (dout, o) = linear::backward(&attn.o_proj, tape.o, dy);
    let heads = |t: Tensor<2>| t.reshape([b, s, h, d]).swap_dims(1, 2); // [b, h, s, d]
    let (dq, dk, dv) = attention::backward(
        tape.core,
        heads(dout),
        heads(out),
        Mask::Source(inputs.mask_of(layer)),
    );
    let dq = dq.mul_scalar(attn.scale);
    let flat = |t: Tensor<4>, n: usize| t.swap_dims(1, 2).reshape([b * s, n * d]);
    let [q_rows, k_rows] = tape.qk_norm_inputs;
    let dq = qk_norm_backward(
        &attn.q_norm,
        q_rows,
        flat(rope_backward(inputs.rope_of(layer), dq), h),
    );
    let dk = qk_norm_backward(
        &attn.k_norm,
        k_rows,
        flat(rope_backward(inputs.rope_of(layer), dk), kv),
    );
    let (dx, qkv) = qkv_backward(&attn.qkv, tape.qkv, [dq, dk, flat(dv, kv)], need_dx);
    (dx, (qkv, o))
}

/// The gradients of q, k and v's projections (in their order) and of o's.
type AttentionGradients = (Vec<Option<FactorGradients>>, Option<FactorGradients>);

/// q, k and v [n, width] from x [n, hidden], with their projections' tapes.
fn qkv_forward(
    qkv: &QkvProjection,
    x: Tensor<2>,
    [q, kv]: [usize; 2],
) -> ([Tensor<2>; 3], Vec<LinearTape>) {
    match qkv {
        QkvProjection::Separate {
            q_proj,
            k_proj,
            v_proj,
        } => {
            let (q, q_tape) = linear::forward(q_proj, x.clone());
            let (k, k_tape) = linear::forward(k_proj, x.clone());
            let (v, v_tape) = linear::forward(v_proj, x);
            ([q, k, v], vec![q_tape, k_tape, v_tape])
        }
        QkvProjection::Fused { qkv_proj } => {
            let (y, tape) = linear::forward(qkv_proj, x);
            let parts = [
                y.clone().narrow(1, 0, q),
                y.clone().narrow(1, q, kv),
                y.narrow(1, q + kv, kv),
            ];
            (parts, vec![tape])
        }
    }
}

/// dq, dk, dv [n, width] → dx (when `need_dx`) and the projections' factor gradients; a fused
/// projection takes them side by side.
fn qkv_backward(
    qkv: &QkvProjection,
    tapes: Vec<LinearTape>,
    [dq, dk, dv]: [Tensor<2>; 3],
    need_dx: bool,
) -> (Option<Tensor<2>>, Vec<Option<FactorGradients>>) {
    match qkv {
        QkvProjection::Separate {
            q_proj,
            k_proj,
            v_proj,
        } => {
            let [q_tape, k_tape, v_tape]: [LinearTape; 3] =
                tapes.try_into().expect("three projection tapes");
            let (dxq, q) = linear::backward_if(q_proj, q_tape, dq, need_dx);
            let (dxk, k) = linear::backward_if(k_proj, k_tape, dk, need_dx);
            let (dxv, v) = linear::backward_if(v_proj, v_tape, dv, need_dx);
            let dx = [dxq, dxk, dxv].into_iter().flatten().reduce(|a, b| a + b);
            (dx, vec![q, k, v])
        }
        QkvProjection::Fused { qkv_proj } => {
            let tape = tapes.into_iter().next().expect("one projection tape");
            let (dx, grads) =
                linear::backward_if(qkv_proj, tape, Tensor::cat(vec![dq, dk, dv], 1), need_dx);
            (dx, vec![grads])
        }
    }
}

/// q or k [n, heads·d] through its RMSNorm (per head or over the projection) → same, and the
/// norm's input as rows.
fn qk_norm(
    attn: &Attention,
    norm: &Option<RmsNorm>,
    t: Tensor<2>,
    heads: usize,
) -> (Tensor<2>, Option<Tensor<2>>) {
    let [n, width] = t.dims();
    match (norm, attn.qk_norm) {
        (Some(norm), QkNorm::PerHead) => {
            let rows = t.reshape([n * heads, attn.head_dim]);
            (
                norm.forward_rows(rows.clone()).reshape([n, width]),
                Some(rows),
            )
        }
        (Some(norm), QkNorm::Projection) => (norm.forward_rows(t.clone()), Some(t)),
        _ => (t, None),
    }
}

fn qk_norm_backward(norm: &Option<RmsNorm>, rows: Option<Tensor<2>>, dy: Tensor<2>) -> Tensor<2> {
    match (norm, rows) {
        (Some(norm), Some(rows)) => {
            let dims = dy.dims();
            rms_norm_backward(norm, rows.clone(), dy.reshape(rows.dims())).reshape(dims)
        }
        _ => dy,
    }
}

pub fn mlp_forward(mlp: &Mlp, x: Tensor<2>) -> (Tensor<2>, MlpTape) {
    let (gate, up, gate_up) = match &mlp.gate_up {
        GateUpProjection::Separate { gate_proj, up_proj } => {
            let (gate, gate_tape) = linear::forward(gate_proj, x.clone());
            let (up, up_tape) = linear::forward(up_proj, x);
            (gate, up, vec![gate_tape, up_tape])
        }
        GateUpProjection::Fused { gate_up_proj } => {
            let (y, tape) = linear::forward(gate_up_proj, x);
            let w = y.dims()[1] / 2;
            (y.clone().narrow(1, 0, w), y.narrow(1, w, w), vec![tape])
        }
    };
    // down's input act(gate)·up is recomputed from gate and up (kept for the activation's
    // backward anyway) rather than kept: one intermediate-sized buffer per token less.
    let (y, down) = linear::forward(
        &mlp.down_proj,
        mlp.activation.gated(gate.clone(), up.clone()),
    );
    let down = down.forget_input();
    let tape = MlpTape {
        gate_up,
        down,
        gate,
        up,
    };
    (y, tape)
}

/// The MLP always passes its input gradient on: below it in the layer is the attention block.
/// → dx and the gradients of gate's and up's projections (one when fused) and of down's.
pub fn mlp_backward(
    mlp: &Mlp,
    tape: MlpTape,
    dy: Tensor<2>,
) -> (
    Tensor<2>,
    (Vec<Option<FactorGradients>>, Option<FactorGradients>),
) {
    let down = match tape.down.needs_input() {
        true => {
            let act = mlp.activation.gated(tape.gate.clone(), tape.up.clone());
            tape.down.with_input(act)
        }
        false => tape.down,
    };
    let (dhidden, down) = linear::backward(&mlp.down_proj, down, dy);
    let fused = match mlp.activation {
        Activation::Silu => kernels::silu_gate_backward(&tape.gate, &tape.up, &dhidden),
        _ => None,
    };
    let (dgate, dup) = fused.unwrap_or_else(|| {
        let (activated, derivative) = activation_and_derivative(mlp.activation, tape.gate);
        (dhidden.clone() * tape.up * derivative, dhidden * activated)
    });
    match &mlp.gate_up {
        GateUpProjection::Separate { gate_proj, up_proj } => {
            let [gate_tape, up_tape]: [LinearTape; 2] =
                tape.gate_up.try_into().expect("two projection tapes");
            let (dxg, gate) = linear::backward(gate_proj, gate_tape, dgate);
            let (dxu, up) = linear::backward(up_proj, up_tape, dup);
            (dxg + dxu, (vec![gate, up], down))
        }
        GateUpProjection::Fused { gate_up_proj } => {
            let gate_up_tape = tape
                .gate_up
                .into_iter()
                .next()
                .expect("one projection tape");
            let dboth = Tensor::cat(vec![dgate, dup], 1);
            let (dx, grads) = linear::backward(gate_up_proj, gate_up_tape, dboth);
            (dx, (vec![grads], down))
        }
    }
}
