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
use super::cross_entropy::scored_positions;
use crate::data::batch::Batch;
use crate::memory::logit_chunk;
use crate::model::decoder::{Decoder, DecoderLayer, LayerInputs};
use crate::model::mlp::FeedForward;
use crate::model::moe::Routes;

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
    let (at, targets) = scored_positions(&batch.labels);
    if at.is_empty() {
        return Ok(None);
    }
    let (x, pass) = DecoderPass::forward(model, batch);
    let head = head::backward(model, &x, &at, &targets, seed, logit_chunk)?;
    let factors = pass
        .backward(model, head.dx)
        .into_iter()
        .chain([head.adapter]);
    let grads = factors.flatten().flatten().collect();
    Ok(Some((head.loss, grads)))
}

/// A decoder's layers forward, keeping what their backward needs (for the LM head or a
/// classifier's pooling on top).
pub struct DecoderPass {
    inputs: LayerInputs,
    shape: Shape,
    /// The lowest layer with adapters: below it nothing trains (plain forward, no backward).
    lowest: Option<usize>,
    kept: Vec<Kept>,
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
        for (i, layer) in model.layers.iter().enumerate() {
            if lowest.is_none_or(|lowest| i < lowest) {
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
                kept.push(Kept::Input(x, streams, routes));
                x = y;
            } else {
                let (y, tape) = layer::forward(layer, x, shape, &inputs, None);
                kept.push(Kept::Tape(tape));
                x = y;
            }
        }
        let pass = Self {
            inputs,
            shape,
            lowest,
            kept,
        };
        (x, pass)
    }

    /// The gradient of the last layer's output → every adapter's factor gradients, layer by
    /// layer in `Decoder::linears_mut` order (recomputing each tape under checkpointing).
    pub fn backward(self, model: &Decoder, dy: Tensor<2>) -> Vec<Option<FactorGradients>> {
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
            let (dx, grads) = layer::backward(layer, tape, dy.clone(), shape, inputs, i > 0);
            per_layer.push(grads);
            if let Some(dx) = dx {
                dy = dx;
            }
        }
        per_layer.into_iter().rev().flatten().collect()
    }
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
