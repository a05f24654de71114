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
}

impl Batch {
    /// Tokens that carry loss: labelled positions after the first of each row.
    pub fn loss_tokens(&self) -> usize {
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
