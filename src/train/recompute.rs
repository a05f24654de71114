//! Block-level gradient checkpointing for decoders: the forward runs without an autodiff graph,
//! keeping only each decoder layer's input; backward then goes layer by layer from the top,
//! recomputing one layer under autodiff and pulling the incoming gradient g through it with the
//! surrogate Σ(layer(x)·g), whose gradient is exactly the layer's vector-Jacobian product. Live
//! activations shrink from every layer's (attention scores included) to one layer's plus a
//! hidden-sized input per layer, for one extra forward of the layers. burn's own per-op
//! checkpointing cannot do this (DESIGN.md §3).
//!
//! Each adapter's dropout stream is rewound before its layer is recomputed, so the masks — and
//! therefore the losses and gradients — are those of the plain path (`autograd::whole_graph_gradients`).

use burn::tensor::Tensor;

use super::TrainError;
use super::autograd::{Gradients, gradients_of, release, sum, track};
use super::cross_entropy::{nll_sum, scored_positions};
use crate::data::batch::Batch;
use crate::memory::LOGIT_CHUNK;
use crate::model::adapted::adapter_factors;
use crate::model::decoder::{Decoder, DecoderLayer};
use crate::model::linear::Linear;

/// `Objective::loss_and_gradients` for a decoder, recomputing each layer in backward.
pub fn loss_and_gradients(
    model: &mut Decoder,
    batch: &Batch,
    denominator: usize,
) -> Result<Option<Gradients>, TrainError> {
    loss_and_gradients_chunked(model, batch, denominator, LOGIT_CHUNK)
}

/// [`loss_and_gradients`] with `logit_chunk` scored positions per head pass.
pub fn loss_and_gradients_chunked(
    model: &mut Decoder,
    batch: &Batch,
    denominator: usize,
    logit_chunk: usize,
) -> Result<Option<Gradients>, TrainError> {
    let (at, targets) = scored_positions(&batch.labels);
    if at.is_empty() {
        return Ok(None);
    }
    let inputs = model.layer_inputs(&batch.attention_mask);

    // Forward without a graph (the adapters are plain tensors between steps).
    let mut x = model.embed(&batch.input_ids);
    let mut saved = Vec::with_capacity(model.layers.len());
    for layer in &mut model.layers {
        saved.push((x.clone(), dropout_streams(layer)));
        x = layer.forward(x, &inputs.rope, &inputs.mask, None);
    }

    // The top: final norm, head and loss, `logit_chunk` scored positions at a time, so only
    // that many rows of vocabulary-sized buffers are alive (chunked cross-entropy); the
    // gradient with respect to x is the sum over the chunks.
    let top = x.autodiff().require_grad();
    let (mut loss, mut head_grads, mut g) = (0.0, Vec::new(), None);
    for (at, targets) in at.chunks(logit_chunk).zip(targets.chunks(logit_chunk)) {
        track(head_adapter(&mut model.lm_head));
        let logits = model.head_at(model.norm.forward(top.clone()), at);
        let chunk = nll_sum(logits, targets.to_vec()).div_scalar(denominator as f64);
        let mut grads = chunk.backward();
        loss += super::scalar(chunk.inner())?;
        let got = gradients_of(head_adapter(&mut model.lm_head), &grads);
        release(head_adapter(&mut model.lm_head));
        head_grads = sum(head_grads, got?);
        let dx = top
            .grad_remove(&mut grads)
            .ok_or_else(|| TrainError::MissingGradient("the last hidden state".into()))?;
        g = Some(match g {
            Some(g) => g + dx,
            None => dx,
        });
    }
    let mut g: Tensor<3> = g.ok_or(TrainError::NoLossTokens)?;

    // Down the layers to the lowest one with adapters (below it nothing trains), recomputing
    // each with its saved input and dropout streams.
    let mut per_layer = vec![Vec::new(); model.layers.len()];
    let lowest =
        (0..model.layers.len()).find(|&i| !layer_params(&mut model.layers[i], i).is_empty());
    let Some(lowest) = lowest else {
        return Ok(Some((loss, head_grads)));
    };
    for (i, (input, streams)) in saved.into_iter().enumerate().skip(lowest).rev() {
        let layer = &mut model.layers[i];
        rewind_dropout(layer, &streams);
        track(layer_params(layer, i));
        let input = if i > lowest {
            input.autodiff().require_grad()
        } else {
            input // no gradient needed below the lowest adapted layer
        };
        let out = layer.forward(input.clone(), &inputs.rope, &inputs.mask, None);
        let mut grads = (out * g.clone()).sum().backward();
        let got = gradients_of(layer_params(layer, i), &grads);
        release(layer_params(layer, i));
        per_layer[i] = got?;
        if i > lowest {
            g = input
                .grad_remove(&mut grads)
                .ok_or_else(|| TrainError::MissingGradient(format!("layer {i}'s input")))?;
        }
    }
    let mut all: Vec<Tensor<2>> = per_layer.into_iter().flatten().collect();
    all.extend(head_grads);
    Ok(Some((loss, all)))
}

/// Layer `i`'s adapter factors under their PEFT keys, in `AdaptedModel::params_mut` order.
fn layer_params(layer: &mut DecoderLayer, i: usize) -> Vec<(String, &mut Tensor<2>)> {
    let linears = layer.linears_mut();
    adapter_factors(linears.map(|(name, l)| (format!("model.layers.{i}.{name}"), l)))
}

/// An untied LM head's adapter factors, when it has one.
fn head_adapter(head: &mut Option<Linear>) -> Vec<(String, &mut Tensor<2>)> {
    adapter_factors(head.as_mut().map(|h| ("lm_head".to_string(), h)))
}

/// The dropout stream state of each of the layer's adapters, before its forward.
fn dropout_streams(layer: &mut DecoderLayer) -> Vec<u64> {
    layer
        .linears_mut()
        .into_iter()
        .filter_map(|(_, l)| l.lora.as_ref().map(|a| a.dropout_rng.get()))
        .collect()
}

fn rewind_dropout(layer: &mut DecoderLayer, streams: &[u64]) {
    let adapters = layer
        .linears_mut()
        .into_iter()
        .filter_map(|(_, l)| l.lora.as_ref());
    for (adapter, &state) in adapters.zip(streams) {
        adapter.dropout_rng.set(state);
    }
}
