//! A recipe's data, encoded: train and eval examples with what was skipped or truncated, and
//! the deterministic stream of micro-batches the training loop draws from (shuffled per epoch
//! from the seed alone, so a resumed run sees exactly the batches the uninterrupted one did).

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::batch::{Batch, IGNORE};
use super::encode::{Encoded, Encoder, Fit};
use super::rows::{BadRow, DataError, read_rows};
use crate::recipe::DataSection;

#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub examples: Vec<Encoded>,
    /// Rows that could not be used (bad JSON, missing fields, too long, …).
    pub skipped: Vec<BadRow>,
    pub truncated: usize,
}

impl Dataset {
    /// Reads and encodes `path`; `keep` picks rows by index (for a held-out split).
    pub fn load(
        path: &Path,
        data: &DataSection,
        encoder: &Encoder,
        keep: &dyn Fn(usize) -> bool,
    ) -> Result<Self, DataError> {
        let (rows, mut skipped) = read_rows(path, data.format, data.strict)?;
        let (mut examples, mut truncated) = (Vec::new(), 0);
        for (i, row) in rows.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            match encoder.encode(&row.example) {
                Ok((enc, fit)) => {
                    truncated += usize::from(fit == Fit::Truncated);
                    examples.push(enc);
                }
                Err(why) => {
                    let bad = BadRow {
                        file: row.file.clone(),
                        line: row.line,
                        why,
                    };
                    if data.strict {
                        return Err(DataError::Strict(bad));
                    }
                    skipped.push(bad);
                }
            }
        }
        if examples.is_empty() {
            return Err(DataError::Empty {
                path: path.into(),
                skipped: skipped.len(),
                first: skipped
                    .first()
                    .map_or_else(|| "no rows selected".into(), ToString::to_string),
            });
        }
        Ok(Self {
            path: path.into(),
            examples,
            skipped,
            truncated,
        })
    }

    pub fn tokens(&self) -> usize {
        self.examples.iter().map(|e| e.ids.len()).sum()
    }

    pub fn loss_tokens(&self) -> usize {
        self.examples.iter().map(Encoded::loss_tokens).sum()
    }

    /// Micro-batches per epoch.
    pub fn batches_per_epoch(&self, batch_size: usize) -> usize {
        self.examples.len().div_ceil(batch_size)
    }

    /// Micro-batch `index` of the endless stream: epoch e = index / batches_per_epoch, rows in an
    /// order shuffled from (seed, e).
    pub fn micro_batch(&self, index: usize, batch_size: usize, seed: u64, pad_id: u32) -> Batch {
        let per_epoch = self.batches_per_epoch(batch_size);
        let (epoch, k) = (index / per_epoch, index % per_epoch);
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
        ));
        let end = ((k + 1) * batch_size).min(order.len());
        let rows: Vec<&Encoded> = order[k * batch_size..end]
            .iter()
            .map(|&i| &self.examples[i])
            .collect();
        pad(&rows, pad_id)
    }

    /// The whole set in file order, for evaluation.
    pub fn in_order(&self, batch_size: usize, pad_id: u32) -> Vec<Batch> {
        self.examples
            .chunks(batch_size)
            .map(|c| pad(&c.iter().collect::<Vec<_>>(), pad_id))
            .collect()
    }
}

/// Right-pads rows to the longest (padding is masked out of attention and loss).
pub fn pad(rows: &[&Encoded], pad_id: u32) -> Batch {
    let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let mut batch = Batch {
        input_ids: Vec::with_capacity(rows.len()),
        attention_mask: Vec::with_capacity(rows.len()),
        labels: Vec::with_capacity(rows.len()),
    };
    for r in rows {
        let fill = len - r.ids.len();
        let mut ids = r.ids.clone();
        ids.resize(len, pad_id);
        let mut labels = r.labels.clone();
        labels.resize(len, IGNORE);
        let mut mask = vec![1u8; r.ids.len()];
        mask.resize(r.ids.len() + fill, 0);
        batch.input_ids.push(ids);
        batch.attention_mask.push(mask);
        batch.labels.push(labels);
    }
    batch
}

/// A seeded held-out split: row i goes to eval when its hash falls under `fraction`.
pub fn in_eval_split(seed: u64, fraction: f64) -> impl Fn(usize) -> bool {
    move |i: usize| {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0xE7A1).wrapping_add(i as u64));
        rand::RngExt::random::<f64>(&mut rng) < fraction
    }
}
