//! Causal-LM loss as a sum, so gradient accumulation can divide by the labelled tokens of the
//! whole optimiser step (not a mean of per-micro-batch means, which over-weights short batches).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::batch::IGNORE;

/// Σ −log p(labels[t+1] | ids[..=t]) over labelled positions. logits: [b, s, vocab] → [1].
pub fn next_token_nll_sum(logits: Tensor<3>, labels: &[Vec<i64>]) -> Tensor<1> {
    let [b, s, v] = logits.dims();
    let device = logits.device();
    if s < 2 {
        return Tensor::zeros([1], &device); // nothing to predict
    }
    let n = b * (s - 1);
    let (mut targets, mut weights) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for row in labels {
        for &l in &row[1..] {
            let scored = l != IGNORE;
            targets.push(if scored { l } else { 0 });
            weights.push(if scored { 1.0f32 } else { 0.0 });
        }
    }
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let weights = Tensor::<2>::from_data(TensorData::new(weights, [n, 1]), &device);
    let log_probs = log_softmax(logits.narrow(1, 0, s - 1).reshape([n, v]), 1);
    (log_probs.gather(1, targets) * weights).sum().neg()
}
