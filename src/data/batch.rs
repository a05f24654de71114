//! A micro-batch as the training loop consumes it: equal-length rows of token ids, an attention
//! mask and labels in HF's convention (aligned with the ids, -100 = no loss; position t is
//! scored on predicting `labels[t + 1]`).

/// Label value that contributes no loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    pub input_ids: Vec<Vec<u32>>,
    /// 1 = real token, 0 = padding.
    pub attention_mask: Vec<Vec<u8>>,
    pub labels: Vec<Vec<i64>>,
    /// Sequence classification: each row's class (then `labels` are all IGNORE); empty for a
    /// causal-LM batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<u32>,
}

impl Batch {
    /// Targets that carry loss (the loss denominator): labelled positions after the first of
    /// each row, or one class per row for classification.
    pub fn loss_tokens(&self) -> usize {
        if !self.classes.is_empty() {
            return self.classes.len();
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
