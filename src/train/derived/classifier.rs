//! A sequence classifier's step derived by hand: the body's layers (BERT's
//! [`super::encoder`], or a decoder's through [`DecoderPass`] and its final norm), the pooling
//! (BERT's pooler tanh(dense(h[CLS])), a decoder's last real token, or the mean over real
//! tokens), the head's dropout and the linear head trained in full (weight and bias
//! gradients), and the cross-entropy over the rows' classes.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::DecoderPass;
use super::encoder::{self, EncoderTape};
use super::layer::Shape;
use super::linear;
use super::ops::rms_norm_backward;
use crate::data::batch::Batch;
use crate::kernels;
use crate::model::bert::Bert;
use crate::model::classifier::{
    Body, ClassHead, SequenceClassifier, last_tokens, mean_pool, mean_weights,
};
use crate::model::decoder::Decoder;
use crate::recipe::Pooling;
use crate::train::autograd::{Gradients, Seed};
use crate::train::cross_entropy::nll_sum_and_gradient;
use crate::train::{TrainError, scalar};
use crate::transfer;

/// `Objective::loss_and_gradients` for a sequence classifier: Σ cross-entropy / `seed.denominator`
/// and the gradient of every trained tensor in `AdaptedModel::params_mut` order (A then B per
/// adapter, the pooler's included, then the head's weight and bias); None when `batch` has no
/// classes.
pub fn loss_and_gradients(
    model: &SequenceClassifier,
    batch: &Batch,
    seed: Seed,
) -> Result<Option<Gradients>, TrainError> {
    if batch.classes.is_empty() {
        return Ok(None);
    }
    match &model.body {
        Body::Bert(bert) => bert_step(bert, &model.head, model.pooling, batch, seed),
        Body::Decoder(decoder) => decoder_step(decoder, &model.head, model.pooling, batch, seed),
    }
    .map(Some)
}

fn bert_step(
    bert: &Bert,
    head: &ClassHead,
    pooling: Pooling,
    batch: &Batch,
    seed: Seed,
) -> Result<Gradients, TrainError> {
    // Only padding keys are masked: a row with one real token lets every query attend it.
    let real = batch
        .attention_mask
        .iter()
        .all(|r| r.iter().any(|&m| m != 0));
    let shape = Shape::of(batch, real);
    let (b, s, h) = (shape.b, shape.s, bert.config.hidden_size);
    let device = bert.device().clone();
    let padding = bert.padding_mask(&batch.attention_mask);
    let lowest = (bert.layers.iter()).position(|l| l.linears().iter().any(|l| l.lora.is_some()));
    let mut x = bert.embed(&batch.input_ids).reshape([b * s, h]);
    let mut tapes: Vec<EncoderTape> = Vec::new();
    for (i, layer) in bert.layers.iter().enumerate() {
        if lowest.is_none_or(|lowest| i < lowest) {
            x = layer
                .forward(x.reshape([b, s, h]), &padding)
                .reshape([b * s, h]);
        } else {
            let (y, tape) = encoder::forward(layer, x, shape, &padding);
            tapes.push(tape);
            x = y;
        }
    }

    // Pooling: the pooler on each row's first token, or the mean over its real tokens.
    let firsts: Vec<i64> = (0..b).map(|r| (r * s) as i64).collect();
    let firsts = transfer::upload::<1, Int>(TensorData::new(firsts, [b]), &device);
    let (pooled, pooler_tape) = match (pooling, &bert.pooler) {
        (Pooling::Cls, Some(pooler)) => {
            let (dense, tape) = linear::forward(pooler, x.clone().select(0, firsts.clone()));
            (dense.tanh(), Some(tape))
        }
        _ => (mean_pool(x.reshape([b, s, h]), &batch.attention_mask), None),
    };
    let (loss, dpooled, head_grads) = head_backward(head, pooled.clone(), batch, seed)?;

    // Back through the pooling to the last hidden states.
    let (dhidden, pooler_grads) = match (pooler_tape, &bert.pooler) {
        (Some(tape), Some(pooler)) => {
            let dtanh = dpooled * (pooled.clone() * pooled).neg().add_scalar(1.0);
            let (dfirst, grads) = linear::backward(pooler, tape, dtanh);
            let zeros = Tensor::zeros([b * s, h], &device);
            let dhidden = zeros.select_assign(0, firsts, dfirst, IndexingUpdateOp::Add);
            (dhidden, grads)
        }
        _ => (
            mean_pool_backward(dpooled, &batch.attention_mask, [b, s, h]),
            None,
        ),
    };

    let mut per_layer = Vec::with_capacity(tapes.len());
    if let Some(lowest) = lowest {
        let mut dy = dhidden;
        for (i, tape) in tapes.into_iter().enumerate().rev() {
            let layer = &bert.layers[lowest + i];
            let (dx, grads) = encoder::backward(layer, tape, dy.clone(), shape, &padding, i > 0);
            per_layer.push(grads);
            if let Some(dx) = dx {
                dy = dx;
            }
        }
    }
    let factors = per_layer.into_iter().rev().flatten().chain([pooler_grads]);
    let mut grads: Vec<Tensor<2>> = factors.flatten().flatten().collect();
    grads.extend(head_grads);
    Ok((loss, grads))
}

/// A decoder body: the layers ([`DecoderPass`]), the final RMSNorm, then each row's last real
/// token (transformers' `*ForSequenceClassification`) or the mean over its real tokens.
fn decoder_step(
    decoder: &Decoder,
    head: &ClassHead,
    pooling: Pooling,
    batch: &Batch,
    seed: Seed,
) -> Result<Gradients, TrainError> {
    let (b, s) = (
        batch.input_ids.len(),
        batch.input_ids.first().map_or(0, Vec::len),
    );
    let h = decoder.config.hidden_size;
    let device = decoder.device().clone();
    let (x, pass) = DecoderPass::forward(decoder, batch);
    let normed = decoder.norm.forward_rows(x.clone());
    let lasts = last_tokens(&batch.attention_mask, &device);
    let pooled = match pooling {
        Pooling::Cls => normed.select(0, lasts.clone()),
        Pooling::Mean => mean_pool(normed.reshape([b, s, h]), &batch.attention_mask),
    };
    let (loss, dpooled, head_grads) = head_backward(head, pooled, batch, seed)?;
    let dnormed = match pooling {
        Pooling::Cls => {
            let zeros = Tensor::zeros([b * s, h], &device);
            zeros.select_assign(0, lasts, dpooled, IndexingUpdateOp::Add)
        }
        Pooling::Mean => mean_pool_backward(dpooled, &batch.attention_mask, [b, s, h]),
    };
    let dx = rms_norm_backward(&decoder.norm, x, dnormed);
    let factors = pass.backward(decoder, dx, None);
    let mut grads: Vec<Tensor<2>> = factors.into_iter().flatten().flatten().collect();
    grads.extend(head_grads);
    Ok((loss, grads))
}

/// logits = drop(pooled)·Wᵀ + b and the cross-entropy over the rows' classes → Σ loss /
/// `seed.denominator`, the gradient of `pooled`, and the head's weight (and bias) gradients.
fn head_backward(
    head: &ClassHead,
    pooled: Tensor<2>,
    batch: &Batch,
    seed: Seed,
) -> Result<(f64, Tensor<2>, Vec<Tensor<2>>), TrainError> {
    let mask = head.dropout_mask(&pooled);
    let dropped = match &mask {
        Some(m) => kernels::dropout(pooled, *m),
        None => pooled,
    };
    let logits = dropped.clone().matmul(head.weight.clone().transpose());
    let logits = match &head.bias {
        Some(bias) => logits.clone() + bias.clone().expand(logits.dims()),
        None => logits,
    };
    let classes = batch.classes.iter().map(|&c| i64::from(c)).collect();
    let (nll, dlogits) = nll_sum_and_gradient(logits, classes);
    let loss = scalar(nll.div_scalar(seed.denominator as f64))?;
    let dlogits = seed.gradient(dlogits, 1.0);
    let mut grads = vec![dlogits.clone().transpose().matmul(dropped)];
    if head.bias.is_some() {
        grads.push(dlogits.clone().sum_dim(0));
    }
    let dpooled = dlogits.matmul(head.weight.clone());
    let dpooled = match mask {
        Some(m) => kernels::dropout(dpooled, m),
        None => dpooled,
    };
    Ok((loss, dpooled, grads))
}

/// `mean_pool`'s transpose: dpooled [b, h] → [b·s, h].
fn mean_pool_backward(
    dpooled: Tensor<2>,
    attention_mask: &[Vec<u8>],
    [b, s, h]: [usize; 3],
) -> Tensor<2> {
    let weights = mean_weights(attention_mask, &dpooled.device());
    let dx = weights.swap_dims(1, 2).matmul(dpooled.reshape([b, 1, h]));
    dx.reshape([b * s, h])
}
