//! The training step derived by hand, for causal LMs (here, over [`DecoderPass`]) and sequence
//! classifiers on BERT or decoder bodies ([`classifier`]). The base is frozen, so backward
//! through a block needs only the input gradient and each adapter's dA and dB — a handful of
//! known products — not burn's generic autodiff graph over the network (which costs 1.7× a plain
//! forward and keeps more buffers). The forward keeps exactly what backward needs ([`layer::LayerTape`]), or
//! under `gradient_checkpointing` only each layer's input, rewinding the adapters' dropout
//! streams and recomputing the tape in backward; the head's cross-entropy runs in chunks.
//! Autodiff (`train::autograd::whole_graph_gradients`) stays as the oracle the tests compare
//! this against.

pub mod attention;
pub mod classifier;
pub mod encoder;
pub mod head;
pub mod layer;
pub mod linear;
pub mod moe;
pub mod ops;

use burn::tensor::Tensor;

use self::layer::{LayerTape, Shape};
use self::linear::FactorGradients;
use super::TrainError;
use super::autograd::{Gradients, Seed};
use super::cross_entropy::{router_weight, scored_positions};
use super::scalar;
use crate::data::batch::Batch;
use crate::memory::logit_chunk;
use crate::model::decoder::{Decoder, DecoderLayer, LayerInputs};
use crate::model::mlp::FeedForward;
use crate::model::moe::{RouterLoad, Routes, token_mask};

/// `Objective::loss_and_gradients` for a decoder: `loss / seed.denominator` and the gradient of every
/// trained tensor in `AdaptedModel::params_mut` order; None when nothing in `batch` is scored.
pub fn loss_and_gradients(
    model: &Decoder,
    batch: &Batch,
    seed: Seed,
) -> Result<Option<Gradients>, TrainError> {
    loss_and_gradients_chunked(model, batch, seed, logit_chunk(model.config.vocab_size))
}

/// What the forward leaves for a layer's backward.
#[allow(clippy::large_enum_variant)] // burn tensor handles; one per layer, never moved in bulk
enum Kept {
    Tape(LayerTape),
    /// Gradient checkpointing: the layer's input, its adapters' dropout stream states and, in
    /// a mixture-of-experts layer, its routes — the recompute reuses them, so a token whose
    /// top k is nearly tied cannot switch experts between the forward and its recompute.
    Input(Tensor<2>, Vec<u64>, Option<Routes>),
}

/// [`loss_and_gradients`] with `logit_chunk` scored positions per head pass.
pub fn loss_and_gradients_chunked(
    model: &Decoder,
    batch: &Batch,
    seed: Seed,
    logit_chunk: usize,
) -> Result<Option<Gradients>, TrainError> {
    if batch.pairs.is_some() {
        return crate::train::preference::loss_and_gradients(model, batch, seed, logit_chunk);
    }
    let (at, targets) = scored_positions(&batch.labels);
    if at.is_empty() {
        return Ok(None);
    }
    let (x, pass) = DecoderPass::forward(model, batch);
    let head = head::backward(model, &x, &at, &targets, seed, logit_chunk)?;
    let (router_loss, router_dprobs) = match pass.router_loss(model, at.len(), seed)? {
        Some((loss, dprobs)) => (loss, Some(dprobs)),
        None => (0.0, None),
    };
    let factors = pass
        .backward(model, head.dx, router_dprobs)
        .into_iter()
        .chain([head.adapter]);
    let grads = factors.flatten().flatten().collect();
    Ok(Some((head.loss + router_loss, grads)))
}

/// A decoder's layers forward, keeping what their backward needs (for the LM head or a
/// classifier's pooling on top).
pub struct DecoderPass {
    inputs: LayerInputs,
    shape: Shape,
    /// The lowest layer with adapters: below it nothing trains (plain forward, no backward).
    lowest: Option<usize>,
    kept: Vec<Kept>,
    /// With `router_aux_loss_coef`: the sparse layers' router load over the batch's tokens,
    /// and the tokens' mask [b·s].
    router: Option<(RouterLoad, Tensor<1>)>,
}

impl DecoderPass {
    /// Embeddings and layers → the last layer's output [b·s, hidden] (before the final norm).
    pub fn forward(model: &Decoder, batch: &Batch) -> (Tensor<2>, Self) {
        let inputs = model.layer_inputs(&batch.attention_mask);
        // Every query attends some key (`causal_padding_mask`).
        let shape = Shape::of(batch, true);
        let hidden = model.config.hidden_size;
        let lowest = model.layers.iter().position(has_adapters);
        let mut x = model
            .embed(&batch.input_ids)
            .reshape([shape.b * shape.s, hidden]);
        let mut kept = Vec::new();
        let mask = (model.router_aux_loss_coef != 0.0 && model.config.moe.is_some())
            .then(|| token_mask(&batch.attention_mask, &x.device()));
        let mut router: Option<(RouterLoad, Tensor<1>)> = None;
        let mut count = |layer: &DecoderLayer, routes: Option<&Routes>| {
            if let (Some((mask, kept)), Some(routes), FeedForward::Sparse(moe)) =
                (&mask, routes, &layer.mlp)
            {
                let this = routes.load(moe.routing, mask, *kept);
                router = Some(match router.take() {
                    Some((load, mask)) => (load + this, mask),
                    None => (this, mask.clone()),
                });
            }
        };
        for (i, layer) in model.layers.iter().enumerate() {
            let sparse = matches!(layer.mlp, FeedForward::Sparse(_));
            if lowest.is_none_or(|lowest| i < lowest) && sparse && mask.is_some() {
                // Nothing below trains, but the router loss counts this layer's routes.
                let (y, tape) = layer::forward(layer, x, shape, &inputs, None);
                count(layer, tape.routes_ref());
                x = y;
            } else if lowest.is_none_or(|lowest| i < lowest) {
                x = plain_forward(layer, x, shape, &inputs);
            } else if model.gradient_checkpointing {
                let streams = dropout_streams(layer);
                let (y, routes) = match &layer.mlp {
                    // The tape's forward, to keep its routes (the tape itself is let go).
                    FeedForward::Sparse(_) => {
                        let (y, tape) = layer::forward(layer, x.clone(), shape, &inputs, None);
                        (y, tape.routes())
                    }
                    FeedForward::Dense(_) => {
                        (plain_forward(layer, x.clone(), shape, &inputs), None)
                    }
                };
                count(layer, routes.as_ref());
                kept.push(Kept::Input(x, streams, routes));
                x = y;
            } else {
                let (y, tape) = layer::forward(layer, x, shape, &inputs, None);
                count(layer, tape.routes_ref());
                kept.push(Kept::Tape(tape));
                x = y;
            }
        }
        let pass = Self {
            inputs,
            shape,
            lowest,
            kept,
            router,
        };
        (x, pass)
    }

    /// The router load-balancing loss's part of a micro-batch with `scored` labelled tokens
    /// (`cross_entropy::router_weight`): its loss over the seed's denominator and, seeded as
    /// the head's loss is, its
    /// gradient with respect to every sparse layer's router probabilities — the same [b·s, E]
    /// for each, coef · scored · E · mask_t · T_e / R². None without the loss.
    fn router_loss(
        &self,
        model: &Decoder,
        scored: usize,
        seed: Seed,
    ) -> Result<Option<(f64, Tensor<2>)>, TrainError> {
        let Some((load, mask)) = &self.router else {
            return Ok(None);
        };
        let weight = router_weight(model, scored);
        // Divided as the head's loss is (`Seed`): the step's mean.
        let loss = weight * scalar(load.loss())? / seed.denominator as f64;
        let experts = load.pairs.dims()[0] as f64;
        let dprobs = mask.clone().unsqueeze_dim::<2>(1) * load.pairs.clone().unsqueeze_dim(0);
        let dprobs = dprobs.mul_scalar(weight * experts / (load.rows * load.rows));
        Ok(Some((loss, seed.gradient(dprobs, 1.0))))
    }

    /// The gradient of the last layer's output → every adapter's factor gradients, layer by
    /// layer in `Decoder::linears_mut` order (recomputing each tape under checkpointing).
    /// `router_dprobs`: [`Self::router_loss`]'s gradient, for every sparse layer.
    pub fn backward(
        self,
        model: &Decoder,
        dy: Tensor<2>,
        router_dprobs: Option<Tensor<2>>,
    ) -> Vec<Option<FactorGradients>> {
        let Some(lowest) = self.lowest else {
            return Vec::new();
        };
        let (shape, inputs) = (self.shape, &self.inputs);
        let mut per_layer = Vec::with_capacity(self.kept.len());
        let mut dy = dy;
        for (i, kept) in self.kept.into_iter().enumerate().rev() {
            let layer = &model.layers[lowest + i];
            let tape = match kept {
                Kept::Tape(tape) => tape,
                Kept::Input(x, streams, routes) => {
                    rewind_dropout(layer, &streams);
                    layer::forward(layer, x, shape, inputs, routes).1
                }
            };
            let dprobs = router_dprobs.clone();
            let (dx, grads) =
                layer::backward(layer, tape, dy.clone(), shape, inputs, i > 0, dprobs);
            per_layer.push(grads);
            if let Some(dx) = dx {
                dy = dx;
            }
        }
        per_layer.into_iter().rev().flatten().collect()
    }
}

/// The last layer's output [b·s, hidden] for `batch` through every layer's taped forward, each
/// tape dropped at once: the training forward's exact arithmetic (a reference pass over the
/// same weights then gives the policy's log-probabilities bit for bit where the adapters add
/// nothing), without keeping anything.
pub fn taped_forward(model: &Decoder, batch: &Batch) -> Tensor<2> {
    let inputs = model.layer_inputs(&batch.attention_mask);
    let shape = Shape::of(batch, true);
    let hidden = model.config.hidden_size;
    let mut x = model
        .embed(&batch.input_ids)
        .reshape([shape.b * shape.s, hidden]);
    for layer in &model.layers {
        x = layer::forward(layer, x, shape, &inputs, None).0;
    }
    x
}

/// `DecoderLayer::forward` (no tape; the backend's fused attention) on x [b·s, hidden].
fn plain_forward(
    layer: &DecoderLayer,
    x: Tensor<2>,
    Shape { b, s, .. }: Shape,
    inputs: &LayerInputs,
) -> Tensor<2> {
    let hidden = x.dims()[1];
    let y = layer.forward(x.reshape([b, s, hidden]), inputs, None);
    y.reshape([b * s, hidden])
}

fn has_adapters(layer: &DecoderLayer) -> bool {
    layer.linears().iter().any(|l| l.lora.is_some())
}

/// The dropout stream state of each of the layer's adapters, before its forward.
fn dropout_streams(layer: &DecoderLayer) -> Vec<u64> {
    let adapters = layer.linears().into_iter().filter_map(|l| l.lora.as_ref());
    adapters.map(|a| a.dropout_rng.get()).collect()
}

fn rewind_dropout(layer: &DecoderLayer, streams: &[u64]) {
    let adapters = layer.linears().into_iter().filter_map(|l| l.lora.as_ref());
    for (adapter, &state) in adapters.zip(streams) {
        adapter.dropout_rng.set(state);
    }
}
