//! A recipe's data, encoded: train and eval examples with their `file:line`, what was skipped or
//! truncated, the sequences they form (one example each, or several when packed), and the
//! deterministic stream of micro-batches the training loop draws from (shuffled per epoch from
//! the seed alone, so a resumed run sees exactly the batches the uninterrupted one did).

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::batch::{Batch, IGNORE, Pairs};
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
    /// Where each example came from, `file:line` (empty for examples built in code).
    pub sources: Vec<String>,
    /// The training sequences: indices into `examples`, one each unless packed.
    pub sequences: Vec<Vec<usize>>,
    pub layout: Layout,
    /// Preference pairs whose prompt tokens are not a prefix of their sequences
    /// ([`Fit::PromptSplit`]).
    pub prompt_splits: usize,
    /// Preference pairs: the reference model's log-probability sums of each example's chosen
    /// and rejected completions ([`crate::train::preference`]); empty until computed, and for
    /// SimPO.
    pub reference: Vec<[f64; 2]>,
}

/// How encoded examples become the equal-length rows of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub pad_id: u32,
    /// Rows are padded to a multiple of this (bucketing keeps the shapes, and so GPU kernel
    /// variants, few). 1 = pad to the longest row only.
    pub pad_to_multiple_of: usize,
    /// Rows hold at most this many tokens (data.max_len): bucketing never pads past it (an
    /// encoder has no positions there).
    pub max_len: usize,
    /// Pack several examples into sequences of at most this many tokens.
    pub pack_to: Option<usize>,
}

/// Most examples one packed sequence holds: the attention mask numbers them in a u8.
pub const MAX_PACKED: usize = u8::MAX as usize;

impl Dataset {
    /// Reads and encodes `path`; `keep` picks rows by index (for a held-out split).
    pub fn load(
        path: &Path,
        data: &DataSection,
        encoder: &Encoder,
        keep: &dyn Fn(usize) -> bool,
    ) -> Result<Self, DataError> {
        let (rows, mut skipped) = read_rows(path, data.format, data.strict)?;
        let (mut examples, mut sources, mut truncated) = (Vec::new(), Vec::new(), 0);
        let mut prompt_splits = 0;
        for (i, row) in rows.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            match encoder.encode(&row.example) {
                Ok((enc, fit)) => {
                    truncated += usize::from(fit.truncated());
                    prompt_splits += usize::from(matches!(fit, Fit::PromptSplit { .. }));
                    examples.push(enc);
                    sources.push(format!("{}:{}", row.file.display(), row.line));
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
        // Parse and encode problems, in file order.
        skipped.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        if examples.is_empty() {
            return Err(DataError::Empty {
                path: path.into(),
                skipped: skipped.len(),
                first: skipped
                    .first()
                    .map_or_else(|| "no rows selected".into(), ToString::to_string),
            });
        }
        let tok = encoder.tokenizer;
        let layout = Layout {
            pad_id: tok.pad_id.or(tok.eos_id).unwrap_or(0),
            pad_to_multiple_of: 1, // until the device is known: `set_padding`
            max_len: encoder.max_len,
            pack_to: data.packing.then_some(encoder.max_len),
        };
        let mut set = Self::new(path, examples, skipped, truncated, layout);
        set.sources = sources;
        set.prompt_splits = prompt_splits;
        Ok(set)
    }

    pub fn new(
        path: &Path,
        examples: Vec<Encoded>,
        skipped: Vec<BadRow>,
        truncated: usize,
        layout: Layout,
    ) -> Self {
        let sequences = match layout.pack_to {
            Some(capacity) => pack(&examples, capacity),
            None => (0..examples.len()).map(|i| vec![i]).collect(),
        };
        Self {
            path: path.into(),
            examples,
            skipped,
            truncated,
            sources: Vec::new(),
            sequences,
            layout,
            prompt_splits: 0,
            reference: Vec::new(),
        }
    }

    pub fn tokens(&self) -> usize {
        self.examples
            .iter()
            .flat_map(Encoded::rows)
            .map(|e| e.ids.len())
            .sum()
    }

    pub fn loss_tokens(&self) -> usize {
        self.examples
            .iter()
            .flat_map(Encoded::rows)
            .map(Encoded::loss_tokens)
            .sum()
    }

    /// Preference pairs: each example is a chosen sequence with its rejected one.
    pub fn is_pairs(&self) -> bool {
        self.examples.first().is_some_and(|e| e.rejected.is_some())
    }

    pub fn stats(&self, batch_size: usize, seed: u64) -> DataStats {
        let batches = self.batches_per_epoch(batch_size);
        let batch_tokens = (0..batches)
            .map(|i| {
                let b = self.micro_batch(i, batch_size, seed);
                b.input_ids.len() * b.input_ids.first().map_or(0, Vec::len)
            })
            .sum();
        DataStats {
            examples: self.examples.len(),
            tokens: self.tokens(),
            loss_tokens: self.loss_tokens(),
            longest: (self.examples.iter().flat_map(Encoded::rows))
                .map(|e| e.ids.len())
                .max()
                .unwrap_or(0),
            truncated: self.truncated,
            skipped: self.skipped.len(),
            sequences: self.sequences.len(),
            packed: self.layout.pack_to.is_some(),
            pairs: self.is_pairs(),
            prompt_splits: self.prompt_splits,
            batch_size,
            batches,
            batch_tokens,
        }
    }

    /// Pads batches to a multiple of `pad_to_multiple_of` from now on (1 = the longest row).
    pub fn set_padding(&mut self, pad_to_multiple_of: usize) {
        self.layout.pad_to_multiple_of = pad_to_multiple_of.max(1);
    }

    /// The padded length of the longest micro-batch any epoch can draw.
    pub fn longest_padded(&self) -> usize {
        self.sequences
            .iter()
            .map(|s| match self.is_pairs() {
                // A pair's two rows are padded to the longer.
                true => s
                    .iter()
                    .flat_map(|&i| self.examples[i].rows())
                    .map(|e| e.ids.len())
                    .max()
                    .unwrap_or(0),
                false => s.iter().map(|&i| self.examples[i].ids.len()).sum::<usize>(),
            })
            .max()
            .unwrap_or(0)
            .next_multiple_of(self.layout.pad_to_multiple_of)
            .min(self.layout.max_len.max(1))
    }

    /// The most labelled tokens a micro-batch of `batch_size` sequences can hold (the loss
    /// computes logits at those positions only).
    pub fn most_loss_tokens(&self, batch_size: usize) -> usize {
        let mut per_sequence: Vec<usize> = self
            .sequences
            .iter()
            .map(|s| {
                (s.iter().flat_map(|&i| self.examples[i].rows()))
                    .map(Encoded::loss_tokens)
                    .sum()
            })
            .collect();
        per_sequence.sort_unstable_by(|a, b| b.cmp(a));
        per_sequence.iter().take(batch_size).sum()
    }

    /// Micro-batches per epoch.
    pub fn batches_per_epoch(&self, batch_size: usize) -> usize {
        self.sequences.len().div_ceil(batch_size)
    }

    /// Micro-batch `index` of the endless stream: epoch e = index / batches_per_epoch,
    /// sequences in an order shuffled from (seed, e).
    pub fn micro_batch(&self, index: usize, batch_size: usize, seed: u64) -> Batch {
        let rows: Vec<&[usize]> = self
            .micro_batch_sequences(index, batch_size, seed)
            .into_iter()
            .map(|i| self.sequences[i].as_slice())
            .collect();
        self.batch(&rows)
    }

    /// `file:line` of every example in micro-batch `index` (for messages about that batch).
    pub fn micro_batch_sources(&self, index: usize, batch_size: usize, seed: u64) -> Vec<&str> {
        self.micro_batch_sequences(index, batch_size, seed)
            .into_iter()
            .flat_map(|i| &self.sequences[i])
            .filter_map(|&e| self.sources.get(e).map(String::as_str))
            .collect()
    }

    /// The sequences of micro-batch `index`: epoch e = index / batches_per_epoch, in an order
    /// shuffled from (seed, e).
    fn micro_batch_sequences(&self, index: usize, batch_size: usize, seed: u64) -> Vec<usize> {
        let per_epoch = self.batches_per_epoch(batch_size);
        let (epoch, k) = (index / per_epoch, index % per_epoch);
        let mut order: Vec<usize> = (0..self.sequences.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9),
        ));
        let end = ((k + 1) * batch_size).min(order.len());
        order[k * batch_size..end].to_vec()
    }

    /// The sequences in order, for evaluation (packing does not change the loss).
    pub fn in_order(&self, batch_size: usize) -> Vec<Batch> {
        self.sequences
            .chunks(batch_size)
            .map(|c| self.batch(&c.iter().map(Vec::as_slice).collect::<Vec<_>>()))
            .collect()
    }

    /// Right-padded rows, one per sequence of example indices. A packed row's attention mask
    /// numbers its examples 1, 2, … so attention never crosses them and positions restart; each
    /// example's first label is dropped so nothing is predicted across a boundary.
    fn batch(&self, sequences: &[&[usize]]) -> Batch {
        if self.is_pairs() {
            return self.pair_batch(sequences);
        }
        let longest = sequences
            .iter()
            .map(|s| s.iter().map(|&i| self.examples[i].ids.len()).sum::<usize>())
            .max()
            .unwrap_or(0);
        let len = longest
            .next_multiple_of(self.layout.pad_to_multiple_of)
            .min(self.layout.max_len.max(longest));
        let mut batch = Batch {
            input_ids: Vec::with_capacity(sequences.len()),
            attention_mask: Vec::with_capacity(sequences.len()),
            labels: Vec::with_capacity(sequences.len()),
            ..Batch::default()
        };
        for seq in sequences {
            let (mut ids, mut mask, mut labels) = (
                Vec::with_capacity(len),
                Vec::with_capacity(len),
                Vec::with_capacity(len),
            );
            for (n, &i) in seq.iter().enumerate() {
                let e = &self.examples[i];
                ids.extend_from_slice(&e.ids);
                mask.extend(std::iter::repeat_n(n as u8 + 1, e.ids.len()));
                labels.push(IGNORE);
                labels.extend_from_slice(&e.labels[1..]);
                batch.classes.extend(e.class); // classification rows are never packed
            }
            ids.resize(len, self.layout.pad_id);
            mask.resize(len, 0);
            labels.resize(len, IGNORE);
            batch.input_ids.push(ids);
            batch.attention_mask.push(mask);
            batch.labels.push(labels);
        }
        batch
    }
}

impl Dataset {
    /// Preference pairs (never packed: one example per sequence): the chosen rows, then the
    /// rejected rows in the same order, all right-padded to the longest of them (TRL's
    /// collator), with the pairs' reference log-probabilities where computed.
    fn pair_batch(&self, sequences: &[&[usize]]) -> Batch {
        let pairs: Vec<usize> = sequences.iter().flat_map(|s| s.iter().copied()).collect();
        let chosen = pairs.iter().map(|&i| &self.examples[i]);
        let rejected = pairs
            .iter()
            .filter_map(|&i| self.examples[i].rejected.as_deref());
        let rows: Vec<&Encoded> = chosen.chain(rejected).collect();
        let longest = rows.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let len = longest
            .next_multiple_of(self.layout.pad_to_multiple_of)
            .min(self.layout.max_len.max(longest));
        let mut batch = Batch::default();
        for e in rows {
            let pad = len - e.ids.len();
            let mut ids = e.ids.clone();
            ids.extend(std::iter::repeat_n(self.layout.pad_id, pad));
            let mut mask = vec![1u8; e.ids.len()];
            mask.resize(len, 0);
            let mut labels = e.labels.clone();
            labels.resize(len, IGNORE);
            batch.input_ids.push(ids);
            batch.attention_mask.push(mask);
            batch.labels.push(labels);
        }
        let reference = match self.reference.is_empty() {
            true => Vec::new(),
            false => {
                let half = |k: usize| pairs.iter().map(move |&i| self.reference[i][k]);
                half(0).chain(half(1)).collect()
            }
        };
        batch.pairs = Some(Pairs {
            count: pairs.len(),
            reference,
        });
        batch
    }
}

/// Best-fit decreasing: longest examples first, each into the fullest sequence it still fits
/// (at most [`MAX_PACKED`] per sequence). Deterministic; done once, sequences shuffle per epoch.
fn pack(examples: &[Encoded], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(examples[i].ids.len()), i));
    let mut sequences: Vec<Vec<usize>> = Vec::new();
    // (room left, sequence) for sequences that can take more examples.
    let mut open = std::collections::BTreeSet::new();
    for i in order {
        let len = examples[i].ids.len();
        let fit = open.range((len, 0)..).next().copied();
        let (room, s) = match fit {
            Some((room, s)) => {
                open.remove(&(room, s));
                (room, s)
            }
            None => {
                sequences.push(Vec::new());
                (capacity.max(len), sequences.len() - 1)
            }
        };
        sequences[s].push(i);
        if sequences[s].len() < MAX_PACKED {
            open.insert((room - len, s));
        }
    }
    sequences
}

/// What `lora-tune plan` reports about a set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataStats {
    pub examples: usize,
    pub tokens: usize,
    pub loss_tokens: usize,
    pub longest: usize,
    pub truncated: usize,
    pub skipped: usize,
    pub sequences: usize,
    pub packed: bool,
    /// Preference pairs (each sequence a chosen and a rejected row).
    pub pairs: bool,
    /// Pairs whose prompt tokens are not a prefix of their sequences.
    pub prompt_splits: usize,
    pub batch_size: usize,
    /// Micro-batches per epoch, and the tokens they hold including padding (first epoch's order).
    pub batches: usize,
    pub batch_tokens: usize,
}

impl DataStats {
    pub fn trained_fraction(&self) -> f64 {
        self.loss_tokens as f64 / self.tokens.max(1) as f64
    }

    pub fn padding_fraction(&self) -> f64 {
        1.0 - self.tokens as f64 / self.batch_tokens.max(1) as f64
    }
}

/// A seeded held-out split: row i goes to eval when its hash falls under `fraction`.
pub fn in_eval_split(seed: u64, fraction: f64) -> impl Fn(usize) -> bool {
    move |i: usize| {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0xE7A1).wrapping_add(i as u64));
        rand::RngExt::random::<f64>(&mut rng) < fraction
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_split_is_seeded_and_near_its_fraction() {
        let held_out = in_eval_split(42, 0.1);
        let picked: Vec<usize> = (0..2000).filter(|&i| held_out(i)).collect();
        assert!((170..230).contains(&picked.len()), "{}", picked.len());
        let again: Vec<usize> = (0..2000).filter(|&i| in_eval_split(42, 0.1)(i)).collect();
        assert_eq!(picked, again, "same seed, same split");
        let other: Vec<usize> = (0..2000).filter(|&i| in_eval_split(7, 0.1)(i)).collect();
        assert_ne!(picked, other, "another seed, another split");
    }
}
