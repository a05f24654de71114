//! Cross-entropy sums: over a causal LM's labelled next tokens (logits only where a label
//! follows) and over class logits. Sums, not means, so accumulation can divide by the labelled
//! tokens of the whole optimiser step.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::data::batch::{Batch, IGNORE};
use crate::kernels;
use crate::memory::logit_chunk;
use crate::model::decoder::Decoder;
use crate::transfer;

/// Σ −log p(labels[t+1] | ids[..=t]) over the labelled positions of `batch` → [1]; None when
/// nothing in it is labelled.
pub fn next_token_nll_sum(model: &Decoder, batch: &Batch) -> Option<Tensor<1>> {
    let (at, targets) = scored_positions(&batch.labels);
    if at.is_empty() {
        return None;
    }
    let (hidden, load) = match model.router_aux_loss_coef {
        0.0 => (model.hidden(&batch.input_ids, &batch.attention_mask), None),
        _ => model.hidden_and_router_load(&batch.input_ids, &batch.attention_mask),
    };
    // A chunk of positions at a time, as the training step's head: one [chunk, vocab] buffer
    // instead of a batch-sized one (200 MB for a 4×256 batch of SmolLM2).
    let chunk = logit_chunk(model.config.vocab_size);
    let nll = at
        .chunks(chunk)
        .zip(targets.chunks(chunk))
        .map(|(at, targets)| nll_sum(model.head_at(hidden.clone(), at), targets.to_vec()))
        .reduce(|total, chunk| total + chunk)?;
    // The router loss weighs as much as the micro-batch's labelled tokens: summed over a
    // step and divided by its labelled tokens, coef · the token-weighted mean router loss.
    Some(match load {
        Some(load) => nll + load.loss().mul_scalar(router_weight(model, at.len())),
        None => nll,
    })
}

/// The router load-balancing loss's weight in a micro-batch's loss sum of `scored` labelled
/// tokens (`Decoder::router_aux_loss_coef` per token).
pub fn router_weight(model: &Decoder, scored: usize) -> f64 {
    model.router_aux_loss_coef * scored as f64
}

/// Σ −log softmax(logits)[target] over the rows of logits [n, vocab] → [1].
pub fn nll_sum(logits: Tensor<2>, targets: Vec<i64>) -> Tensor<1> {
    if let Some(rows) = kernels::nll_rows(&logits, &targets) {
        return sum_on(&rows, &logits.device());
    }
    let n = targets.len();
    let targets = transfer::upload::<2, Int>(TensorData::new(targets, [n, 1]), &logits.device());
    log_softmax(logits, 1).gather(1, targets).sum().neg()
}

/// Flat positions (row · s + t) whose next label is scored, and those labels.
pub fn scored_positions(labels: &[Vec<i64>]) -> (Vec<i64>, Vec<i64>) {
    let (mut at, mut targets) = (Vec::new(), Vec::new());
    for (r, row) in labels.iter().enumerate() {
        for (t, &l) in row.iter().enumerate().skip(1) {
            if l != IGNORE {
                at.push((r * row.len() + t - 1) as i64);
                targets.push(l);
            }
        }
    }
    (at, targets)
}

/// [`nll_sum`] and its gradient with respect to the logits, softmax(logits) − onehot(targets),
/// from one exponential pass (the hand-derived step's head).
pub fn nll_sum_and_gradient(logits: Tensor<2>, targets: Vec<i64>) -> (Tensor<1>, Tensor<2>) {
    let device = logits.device();
    let logits = match kernels::nll_and_gradient(logits, &targets) {
        Ok((rows, gradient)) => return (sum_on(&rows, &device), gradient),
        Err(logits) => *logits,
    };
    let [n, v] = logits.dims();
    let targets = transfer::upload::<2, Int>(TensorData::new(targets, [n, 1]), &device);
    let shifted = logits.clone() - logits.max_dim(1).expand([n, v]);
    let exp = shifted.clone().exp();
    let total = exp.clone().sum_dim(1); // [n, 1]
    let nll = total.clone().log() - shifted.gather(1, targets.clone());
    let probs = exp / total.expand([n, v]);
    let minus_one = Tensor::full([n, 1], -1.0, &device);
    let gradient = probs.scatter(1, targets, minus_one, IndexingUpdateOp::Add);
    (nll.sum(), gradient)
}

/// Σ rows (in f64) as a [1] tensor on `device`.
fn sum_on(rows: &[f32], device: &Device) -> Tensor<1> {
    let total = rows.iter().map(|&r| f64::from(r)).sum::<f64>() as f32;
    transfer::upload(TensorData::new(vec![total], [1]), device)
}
