//! Causal-LM loss as a sum, so gradient accumulation can divide by the labelled tokens of the
//! whole optimiser step (not a mean of per-micro-batch means, which over-weights short batches).
//! Logits are computed only where a label follows: prompts, system turns and padding (often
//! half of a chat batch) cost no head matmul and no vocabulary-sized activations.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::batch::{Batch, IGNORE};
use crate::model::llama::Llama;

/// Σ −log p(labels[t+1] | ids[..=t]) over the labelled positions of `batch` → [1]; None when
/// nothing in it is labelled.
pub fn next_token_nll_sum(model: &Llama, batch: &Batch) -> Option<Tensor<1>> {
    let (at, targets) = scored_positions(&batch.labels);
    if at.is_empty() {
        return None;
    }
    let logits = model.logits_at(&batch.input_ids, &batch.attention_mask, &at);
    let n = at.len();
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), model.device());
    Some(log_softmax(logits, 1).gather(1, targets).sum().neg())
}

/// Flat positions (row · s + t) whose next label is scored, and those labels.
fn scored_positions(labels: &[Vec<i64>]) -> (Vec<i64>, Vec<i64>) {
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
