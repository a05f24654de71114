//! A micro-batch as the training loop consumes it: equal-length rows of token ids, an attention
//! mask and labels in HF's convention (aligned with the ids, -100 = no loss; position t is
//! scored on predicting `labels[t + 1]`).

/// Label value that contributes no loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    /// 1 = real token, 0 = padding.
    pub attention_mask: Vec<Vec<u8>>,
    pub labels: Vec<Vec<i64>>,
    /// Sequence classification: each row's class (then `labels` are all IGNORE); empty for a
    /// causal-LM batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<u32>,
    /// A preference batch (`train.method = "dpo" | "simpo"`); None otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<Pairs>,
}

/// A preference batch's layout: the first `count` rows are the chosen sequences, the next
/// `count` the rejected ones, pair by pair (TRL's order). `reference`: the reference model's
/// log-probability sum over each row's completion (DPO), empty without a reference (SimPO).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pairs {
    pub count: usize,
    pub reference: Vec<f64>,
}

impl Batch {
    /// Targets that carry loss (the loss denominator): labelled positions after the first of
    /// each row, one class per row for classification, 1 for a preference micro-batch.
    pub fn loss_tokens(&self) -> usize {
        if !self.classes.is_empty() {
            return self.classes.len();
        }
        // A preference micro-batch's loss is already its pairs' mean; a step averages its
        // micro-batches (transformers' Trainer divides each by the accumulation steps).
        if self.pairs.is_some() {
            return 1;
        }
        self.labels
            .iter()
            .map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE).count())
            .sum()
    }

    /// Real (unpadded) tokens, for throughput figures.
    pub fn real_tokens(&self) -> usize {
        self.attention_mask
            .iter()
            .map(|row| row.iter().filter(|&&m| m != 0).count())
            .sum()
    }
}
