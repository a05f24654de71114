//! Peak host memory of a training run, predicted from the model's dimensions and the largest
//! micro-batch before anything loads, so `plan` can show it and a run that cannot fit is
//! refused up front instead of being killed by the OOM killer halfway.
//!
//! Peak = frozen base (an f32 copy of every weight)
//!      + adapters (parameters, gradients, two AdamW moments)
//!      + what one micro-batch keeps alive for backward: per layer, buffers that grow with the
//!        tokens T = B·S (hidden- and MLP-sized) and with B·H·S² (attention scores), then the
//!        logits over the vocabulary at one chunk of labelled positions.
//! The buffer counts are those of the hand-derived step's tape (`train::derived::layer`), per
//! token and layer: 4 hidden-sized f32 buffers (the layer's input and the residual after
//! attention — the norms' inputs; their outputs are recomputed for the adapters that read them —
//! q after RoPE, the attention output), k and v after RoPE
//! once per key/value head (not repeated to every query head) and 2 MLP-sized ones (gate and up; down's input act(gate)·up is
//! recomputed from them in backward) — LoRA dropout masks are not kept, backward draws them
//! again from their stream state; one
//! score-sized buffer per layer and head (the softmax); and per scored position of the head's
//! chunk 2 vocabulary-sized ones on flex (the logits with the cross-entropy's gradient written
//! over them, `kernels::nll_and_gradient`, and the scaled gradient), 4 with the generic ops a
//! GPU runs (the logits, their exp, the probabilities, the gradient). On SmolLM2-135M on the
//! flex backend they predict the peak RSS within −3 % … −1.5 % at 4x256, 1x1024 and 2x512
//! (`benches/memory.sh`, BENCHMARKS.md, 2026-12-04).
//!
//! With gradient checkpointing backward keeps each layer's input (one hidden-sized buffer per
//! token and layer) and then holds either the logits of one chunk of labelled positions or one
//! layer's recomputed tape with its backward's two score-sized gradients, never both: peak =
//! weights + adapters + inputs + max(logit chunk, one layer).
//!
//! `model.keep_quantized` changes only the weights term, which [`frozen_base_bytes`] computes from
//! the GGUF header (packed bytes, plus two chunks of decoded values).
//!
//! On a GPU the same terms predict device memory, less the host's: no load peak, and half-precision
//! products multiply the stored weights without widening them ([`BaseBytes::weights`]); `plan`
//! prints it per products dtype. Not yet checked against a GPU's allocator.

use std::collections::HashSet;

use crate::dtype::Dtype;
use crate::lora::targets::LinearSite;
use crate::model::BaseStorage;
use crate::model::decoder_config::{DecoderConfig, NormPlacement};
use crate::source::ModelFiles;
use crate::weights::blocks;
use crate::weights::gguf::GgufFile;
use crate::weights::quantize::for_rows_of;

/// Scored positions per head pass (`train::derived::head`, evaluation): as many as keep one
/// [chunk, vocab] f32 buffer near 2²⁴ values (64 MB), at most 256 and at least 16 — 256 rows of
/// SmolLM2's 49,152-word vocabulary, 110 of Qwen2.5's 151,936 (a whole 2×256 batch's buffers
/// would be 311 MB there). Here because the estimate counts it.
pub fn logit_chunk(vocab: usize) -> usize {
    ((1usize << 24) / vocab.max(1)).clamp(16, 256)
}

const F32: u64 = 4;
const HIDDEN_BUFFERS: u64 = 4;
const MLP_BUFFERS: u64 = 2;
/// Hidden-sized buffers a routed (token, expert) pair keeps: its gathered input and its
/// expert's output.
const ROUTED_HIDDEN_BUFFERS: u64 = 2;
const SCORE_BUFFERS: u64 = 1;
/// A layer's backward also holds the softmax's two gradients (dP, dS) for a moment.
const BACKWARD_SCORE_BUFFERS: u64 = 2;
const FLEX_LOGIT_BUFFERS: u64 = 2;
const GENERIC_LOGIT_BUFFERS: u64 = 4;
/// Adapter parameters, their gradients, AdamW's two moments.
const ADAPTER_COPIES: u64 = 4;

/// Bytes, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub adapters: u64,
    /// Kept for backward through the whole pass: every layer's activations, or with gradient
    /// checkpointing each layer's input.
    pub activations: u64,
    /// Vocabulary-sized buffers at one chunk of the labelled positions.
    pub logits: u64,
    /// With gradient checkpointing: one layer's activations while it is recomputed, which are
    /// never alive together with the logits. 0 without.
    pub recomputed_layer: u64,
    /// The load's own peak where it can exceed training's: a GGUF base stored otherwise than
    /// as f32 without `keep_quantized` is dequantised whole before the model takes it, so
    /// loading holds the f32 checkpoint plus the stored weights. 0 otherwise (safetensors are
    /// read tensor by tensor as they are taken).
    pub loading: u64,
}

/// The largest micro-batch a run will see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub batch: usize,
    pub seq: usize,
    /// Labelled tokens (where logits are computed), at most batch · seq.
    pub scored: usize,
    /// `train.gradient_checkpointing`: only one layer's activations are alive at a time.
    pub checkpointing: bool,
}

impl MemoryEstimate {
    /// Training `trainable` adapter parameters on `config` with micro-batches up to `shape`, on
    /// the CPU (flex) or with a GPU backend's generic ops.
    pub fn training(
        config: &DecoderConfig,
        trainable: u64,
        shape: BatchShape,
        on_cpu: bool,
    ) -> Self {
        let (b, s) = (shape.batch as u64, shape.seq as u64);
        let tokens = b * s;
        let layers = config.num_hidden_layers as u64;
        // Of the hidden-sized buffers two are norm inputs (their outputs are recomputed); Gemma's
        // sandwich norms keep two more.
        let sandwich = u64::from(config.deltas.norms == NormPlacement::Sandwich);
        // k and v after RoPE, once per key/value head.
        let kv = (2 * config.num_key_value_heads * config.head_dim) as u64;
        let per_token_layer = |layer: usize| {
            let mlp = match config.sparse(layer) {
                // Each routed pair keeps its gathered input, its expert's gate and up, and its
                // expert's output; each token its router probabilities.
                Some(moe) => {
                    let pair = MLP_BUFFERS * moe.expert_intermediate_size as u64
                        + ROUTED_HIDDEN_BUFFERS * config.hidden_size as u64;
                    moe.top_k as u64 * pair + moe.num_experts as u64
                }
                None => MLP_BUFFERS * config.intermediate_size as u64,
            };
            (HIDDEN_BUFFERS + 2 * sandwich) * config.hidden_size as u64 + kv + mlp
        };
        // A soft cap keeps its slope at every score beside the probabilities.
        let softcap = u64::from(config.deltas.attention_softcap.is_some());
        // [s, s] attention buffers: flex materialises them; a GPU's attention kernels keep
        // none (Gemma 2's soft cap takes the materialised layout there too).
        let score = match on_cpu || softcap == 1 {
            true => b * config.num_attention_heads as u64 * s * s,
            false => 0,
        };
        let layer_bytes = |layer: usize| {
            (tokens * per_token_layer(layer) + (SCORE_BUFFERS + softcap) * score) * F32
        };
        let one_layer = (0..config.num_hidden_layers)
            .map(layer_bytes)
            .max()
            .unwrap_or(0);
        let all_layers: u64 = (0..config.num_hidden_layers).map(layer_bytes).sum();
        let logit_buffers = match on_cpu {
            true => FLEX_LOGIT_BUFFERS,
            false => GENERIC_LOGIT_BUFFERS,
        };
        let logits = |scored: usize| logit_buffers * scored as u64 * config.vocab_size as u64 * F32;
        let (weights, adapters) = (
            config.parameter_count() * F32,
            ADAPTER_COPIES * trainable * F32,
        );
        if shape.checkpointing {
            Self {
                weights,
                adapters,
                activations: layers * tokens * config.hidden_size as u64 * F32,
                logits: logits(shape.scored.min(logit_chunk(config.vocab_size))),
                recomputed_layer: one_layer + BACKWARD_SCORE_BUFFERS * score * F32,
                loading: 0,
            }
        } else {
            Self {
                weights,
                adapters,
                activations: all_layers,
                logits: logits(shape.scored.min(logit_chunk(config.vocab_size))),
                recomputed_layer: 0,
                loading: 0,
            }
        }
    }

    pub fn total(&self) -> u64 {
        let training = self.weights
            + self.adapters
            + self.activations
            + self.logits.max(self.recomputed_layer);
        training.max(self.loading)
    }

    /// One line: the total and its parts.
    pub fn render(&self, shape: BatchShape) -> String {
        format!(
            "{} (weights {}, adapters + optimizer {}, activations {} and logits {}{} for a {}x{} micro-batch{})",
            gb(self.total()),
            gb(self.weights),
            gb(self.adapters),
            gb(self.activations),
            gb(self.logits),
            if shape.checkpointing {
                format!(" or one recomputed layer {}", gb(self.recomputed_layer))
            } else {
                String::new()
            },
            shape.batch,
            shape.seq,
            if shape.checkpointing {
                ", gradient checkpointing"
            } else {
                ""
            }
        ) + &if self.loading > 0 {
            format!("; loading the GGUF whole holds {}", gb(self.loading))
        } else {
            String::new()
        }
    }
}

/// `3.53 GB`, or `12.4 MB` below a gigabyte.
pub fn gb(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// Whether a CPU training run's predicted peak memory is checked before the model loads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryCheck {
    Off,
    /// Against what the system has available now.
    Available,
    /// Against a budget in bytes (`--max-memory`).
    Budget(u64),
}

/// A run predicted not to fit: the numbers and what to lower.
#[derive(Debug, thiserror::Error)]
#[error(
    "this run's peak memory is predicted at {predicted} but {limit} {which}; {recompute}lower train.batch_size (raise train.grad_accum to keep the effective batch) or data.max_len, close other programs, or pass --no-memory-check to try anyway"
)]
pub struct WouldNotFit {
    predicted: String,
    limit: String,
    which: &'static str,
    recompute: &'static str,
}

impl MemoryCheck {
    pub fn from_flags(off: bool, max_memory_gb: Option<f64>) -> Self {
        match (off, max_memory_gb) {
            (true, _) => Self::Off,
            (false, Some(gb)) => Self::Budget((gb.max(0.0) * 1e9) as u64),
            (false, None) => Self::Available,
        }
    }

    /// The limit in bytes and how to say it; None when nothing is checked.
    fn limit(self) -> Option<(u64, &'static str)> {
        match self {
            Self::Off => None,
            // Ranks of a data-parallel job on this machine each load a copy of the model.
            Self::Available => match crate::distributed::ranks().local_size as u64 {
                1 => available_bytes().map(|b| (b, "are available")),
                n => {
                    available_bytes().map(|b| (b / n, "are available to each rank on this machine"))
                }
            },
            Self::Budget(b) => Some((b, "are allowed (--max-memory)")),
        }
    }

    /// Refuses a run whose `estimate` exceeds the limit.
    pub fn refuse_over(
        self,
        estimate: &MemoryEstimate,
        shape: BatchShape,
    ) -> Result<(), WouldNotFit> {
        match self.limit() {
            Some((limit, which)) if estimate.total() > limit => Err(WouldNotFit {
                predicted: estimate.render(shape),
                limit: gb(limit),
                which,
                recompute: if shape.checkpointing {
                    ""
                } else {
                    "set train.gradient_checkpointing = true, "
                },
            }),
            _ => Ok(()),
        }
    }
}

/// Memory this process may still use: MemAvailable, capped by a cgroup (v2) limit. None where
/// neither can be read (not Linux).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let mut available = kb * 1024;
    let cgroup = |file: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{file}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
        available = available.min(max.saturating_sub(current));
    }
    Some(available)
}

/// What the frozen base occupies ([`frozen_base_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseBytes {
    /// As stored: packed blocks, 16-bit or f32 matrices, the rest f32.
    pub stored: u64,
    /// What widening a weight for its product holds: for a dense base narrower than f32 one
    /// layer's weights in f32, and the largest one's (or a chunk of blocks') codes and values.
    /// A GPU multiplying half-precision weights in their own type widens none (only blocks).
    pub widening: u64,
    /// Blocks among the stored weights: they decode for every product, whatever its type.
    pub blocks: bool,
    /// The load's host-side peak for a GGUF base dequantised whole and then stored otherwise
    /// (the f32 checkpoint plus the stored weights; `MemoryEstimate::loading`), else 0.
    pub loading: u64,
}

impl BaseBytes {
    /// The weights term with the products in `products`, on the CPU (flex) or a GPU. Weights
    /// widen for f32 products of a narrower base, for blocks always, and on flex for bf16
    /// products too (flex converts them to f32; it multiplies f16 natively through gemm).
    pub fn weights(&self, on_cpu: bool, products: Dtype) -> u64 {
        let widens = products == Dtype::F32 || self.blocks || on_cpu && products == Dtype::Bf16;
        self.stored + if widens { self.widening } else { 0 }
    }
}

/// What the tied head's half products hold on flex beside the f32 logits of a chunk of
/// `scored` positions: the [vocab, hidden] embedding cast to the half type and the product's
/// own output — for bf16 also both widened to f32 (flex multiplies bf16 by converting to f32
/// and back; f16 natively). ≈ 245 MB for bf16 and 82 MB for f16 on SmolLM2-135M.
pub fn tied_head_widening(config: &DecoderConfig, products: Dtype, scored: usize) -> u64 {
    let table = (config.vocab_size * config.hidden_size) as u64;
    let logits = (scored.min(logit_chunk(config.vocab_size)) * config.vocab_size) as u64;
    match products {
        _ if !config.tie_word_embeddings => 0,
        Dtype::F32 => 0,
        Dtype::Bf16 => (table + logits) * (2 + F32),
        Dtype::F16 => (table + logits) * 2,
    }
}

/// The base's bytes from its f32 bytes when `model.keep_quantized` packs a GGUF's block-quantised
/// linear weights, `model.quantize` packs the layers' others and `model.dtype` (or half
/// products) stores the rest in 16 bits.
pub fn frozen_base_bytes(
    storage: BaseStorage,
    files: &ModelFiles,
    config: &DecoderConfig,
    f32_bytes: u64,
) -> BaseBytes {
    let unchanged = BaseBytes {
        stored: f32_bytes,
        widening: 0,
        blocks: false,
        loading: 0,
    };
    if storage == BaseStorage::default() {
        return unchanged;
    }
    let vocab_values = (config.vocab_size * config.hidden_size) as u64;
    let sites = config.linear_sites();
    let bytes = |s: &LinearSite| (s.in_features * s.out_features * 4) as u64;
    let linear: Vec<&LinearSite> = sites
        .iter()
        .filter(|s| s.layer.is_some() || !config.tie_word_embeddings)
        .collect();
    let linear_f32: u64 = linear.iter().map(|s| bytes(s)).sum();
    let (kept_f32, kept_packed) = match files {
        ModelFiles::Gguf(path) if storage.keep_quantized => match GgufFile::open(path) {
            Ok(file) => {
                let names: HashSet<String> = linear
                    .iter()
                    .map(|s| format!("{}.weight", s.path))
                    .collect();
                blocks::kept_bytes(&file, |name| names.contains(name))
            }
            Err(_) => (0, 0), // the load reports what is wrong with it
        },
        _ => (0, 0),
    };
    // The embedding (and so a tied head) stays in its blocks too; it is no linear site.
    let (embedding_f32, embedding_packed) = match files {
        ModelFiles::Gguf(path) if storage.keep_quantized => match GgufFile::open(path) {
            Ok(file) => blocks::kept_bytes(&file, |name| name == "model.embed_tokens.weight"),
            Err(_) => (0, 0),
        },
        _ => (0, 0),
    };
    // `model.quantize_embeddings` packs the embedding (unless the GGUF keeps it) and an untied
    // head (unless the GGUF keeps it: then it is among `kept_f32`).
    let head_kept = kept_f32 > 0 && !config.tie_word_embeddings && {
        let head = |s: &&&LinearSite| s.layer.is_none();
        let head_bytes: u64 = linear.iter().filter(head).map(|s| bytes(s)).sum();
        match files {
            ModelFiles::Gguf(path) => GgufFile::open(path)
                .map(|f| blocks::kept_bytes(&f, |n| n == "lm_head.weight").0 == head_bytes)
                .unwrap_or(false),
            _ => false,
        }
    };
    let (embedding_f32, embedding_packed, head_f32, head_packed) = match storage.quantize_embeddings
    {
        Some(format) => {
            let packed = for_rows_of(format, config.hidden_size).packed_bytes(vocab_values);
            let (e_f32, e_packed) = match embedding_f32 {
                0 => (vocab_values * 4, packed),
                _ => (embedding_f32, embedding_packed),
            };
            match config.tie_word_embeddings || head_kept {
                true => (e_f32, e_packed, 0, 0),
                false => (e_f32, e_packed, vocab_values * 4, packed),
            }
        }
        None => (embedding_f32, embedding_packed, 0, 0),
    };
    // `model.quantize` packs the layers' linears a GGUF does not already keep packed.
    let layer_f32: u64 = linear
        .iter()
        .filter(|s| s.layer.is_some())
        .map(|s| bytes(s))
        .sum();
    let (quantized_f32, quantized_packed) = match storage.quantize {
        Some(format) => {
            // Each linear in its format (llama.cpp's fallback where rows are not whole
            // super-blocks), scaled down by what a GGUF already keeps packed.
            let packed: u64 = linear
                .iter()
                .filter(|s| s.layer.is_some())
                .map(|s| for_rows_of(format, s.in_features).packed_bytes(bytes(s) / 4))
                .sum();
            let f32_bytes = layer_f32.saturating_sub(kept_f32);
            let share = f32_bytes as f64 / layer_f32.max(1) as f64;
            (f32_bytes, (packed as f64 * share) as u64)
        }
        None => (0, 0),
    };
    let (kept_f32, kept_packed) = (kept_f32 + quantized_f32, kept_packed + quantized_packed);
    let dense_f32 = linear_f32 - kept_f32 - head_f32;
    let dense = match storage.dense {
        Dtype::F32 => dense_f32,
        Dtype::Bf16 | Dtype::F16 => dense_f32 / 2,
    };
    if dense == dense_f32 && kept_f32 + head_f32 + embedding_f32 == 0 {
        return unchanged; // nothing is stored differently
    }
    // A dense base narrower than its products holds about one layer's weights widened to f32
    // (freed pages the allocator keeps; measured on a 1.5B bf16 base). Blocks decode per
    // product a chunk at a time and hold no widened layer: a 7B-shaped q4_k base peaked 0.9 GB
    // under an estimate that counted one.
    let one_layer: u64 = match dense < dense_f32 {
        true => sites.iter().filter(|s| s.layer == Some(0)).map(bytes).sum(),
        false => 0,
    };
    // Blocks decode for a product at most `DECODED_VALUES` at a time.
    let chunk = 4 * crate::model::frozen::DECODED_VALUES as u64;
    let largest = (linear.iter().map(|s| bytes(s)).max().unwrap_or(0)).min(chunk);
    let (kept_f32, kept_packed) = (kept_f32 + head_f32, kept_packed + head_packed);
    // The head in blocks (the tied embedding, or an untied head kept or quantised) decodes
    // chunk by chunk for the logits: two chunks' decoding on top (measured with SmolLM2's kept
    // Q8_0 embedding).
    let head_in_blocks = match config.tie_word_embeddings {
        true => embedding_f32 > 0,
        false => head_kept || head_f32 > 0,
    };
    let head_decoding = match head_in_blocks {
        true => 2 * (vocab_values * 4).min(chunk),
        false => 0,
    };
    let stored = f32_bytes - linear_f32 + kept_packed + dense - embedding_f32 + embedding_packed;
    BaseBytes {
        stored,
        widening: one_layer + 2 * largest + head_decoding,
        blocks: kept_f32 + embedding_f32 > 0,
        // A GGUF read without keeping its blocks is dequantised whole before the model takes
        // it; a safetensors checkpoint is read tensor by tensor as the model takes it (and
        // quantised a chunk of rows at a time), which holds about one matrix on top.
        loading: match files {
            ModelFiles::Gguf(_) if !storage.keep_quantized => f32_bytes + stored,
            _ => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_widen_only_where_a_product_converts_them() {
        let dense = BaseBytes {
            stored: 100,
            widening: 10,
            blocks: false,
            loading: 0,
        };
        assert_eq!(
            dense.weights(true, Dtype::Bf16),
            110,
            "flex widens bf16 products"
        );
        assert_eq!(
            dense.weights(true, Dtype::F16),
            100,
            "gemm multiplies f16 natively"
        );
        assert_eq!(
            dense.weights(false, Dtype::F32),
            110,
            "a half base widened for f32 products"
        );
        assert_eq!(dense.weights(false, Dtype::Bf16), 100);
        assert_eq!(dense.weights(false, Dtype::F16), 100);
        let blocks = BaseBytes {
            blocks: true,
            ..dense
        };
        assert_eq!(
            blocks.weights(false, Dtype::Bf16),
            110,
            "blocks decode per product"
        );
    }
}
