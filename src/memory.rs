//! Peak host memory of a training run, predicted from the model's dimensions and the largest
//! micro-batch before anything loads, so `plan` can show it and a run that cannot fit is
//! refused up front instead of being killed by the OOM killer halfway.
//!
//! Peak = frozen base (an f32 copy of every weight)
//!      + adapters (parameters, gradients, two AdamW moments)
//!      + what one micro-batch keeps alive for backward: per layer, buffers that grow with the
//!        tokens T = B·S (hidden- and MLP-sized) and with B·H·S² (attention scores), then the
//!        logits over the vocabulary at the labelled positions.
//! The buffer counts are fitted to the peak RSS of SmolLM2-135M on the flex backend over
//! micro-batch shapes from 1x128 to 1x1024 (`benches/memory.sh` measures them; BENCHMARKS.md
//! lists nine measured peaks, each within 4 % of the prediction). Per token that is 17
//! hidden-sized and 6 MLP-sized f32 buffers per layer (the residual stream, norm inputs and
//! outputs, q/k/v/o and RoPE, repeat_kv; gate, up, SiLU, the product) and 4 vocabulary-sized
//! ones per labelled token (logits, log-softmax, its exp, the gradient); 3 score-sized ones per layer and head
//! (scores, masked, softmax).
//!
//! With gradient checkpointing (`train::recompute`) backward keeps each layer's input (one
//! hidden-sized buffer per token and layer) and then holds either the logits of one chunk of
//! labelled positions or one layer's recomputed activations, never both: peak = weights +
//! adapters + inputs + max(logit chunk, one layer). Within 13 % of the measured peaks from 1x128
//! to 4x512 (BENCHMARKS.md).
//!
//! `model.keep_quantized` changes only the weights term, which `commands::plan` computes from the
//! GGUF header (packed bytes, plus one layer decoded to f32 while it is recomputed).

use crate::model::config::LlamaConfig;
use crate::train::recompute::LOGIT_CHUNK;

const F32: u64 = 4;
const HIDDEN_BUFFERS: u64 = 17;
const MLP_BUFFERS: u64 = 6;
const SCORE_BUFFERS: u64 = 3;
const LOGIT_BUFFERS: u64 = 4;
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
    /// Vocabulary-sized buffers at the labelled positions (one chunk of them with checkpointing).
    pub logits: u64,
    /// With gradient checkpointing: one layer's activations while it is recomputed, which are
    /// never alive together with the logits. 0 without.
    pub recomputed_layer: u64,
    /// The load's own peak where it can exceed training's: a 16-bit base (`model.dtype`) is read
    /// in f32 and narrowed matrix by matrix, and the freed f32 pages mostly stay with the
    /// process, so loading holds about the f32 checkpoint plus the stored weights. 0 otherwise.
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
    /// Training `trainable` adapter parameters on `config` with micro-batches up to `shape`.
    pub fn training(config: &LlamaConfig, trainable: u64, shape: BatchShape) -> Self {
        let (b, s) = (shape.batch as u64, shape.seq as u64);
        let tokens = b * s;
        let layers = config.num_hidden_layers as u64;
        let per_token_layer = HIDDEN_BUFFERS * config.hidden_size as u64
            + MLP_BUFFERS * config.intermediate_size as u64;
        let scores = SCORE_BUFFERS * b * config.num_attention_heads as u64 * s * s;
        let one_layer = (tokens * per_token_layer + scores) * F32;
        let logits = |scored: usize| LOGIT_BUFFERS * scored as u64 * config.vocab_size as u64 * F32;
        let (weights, adapters) = (
            config.parameter_count() * F32,
            ADAPTER_COPIES * trainable * F32,
        );
        if shape.checkpointing {
            Self {
                weights,
                adapters,
                activations: layers * tokens * config.hidden_size as u64 * F32,
                logits: logits(shape.scored.min(LOGIT_CHUNK)),
                recomputed_layer: one_layer,
                loading: 0,
            }
        } else {
            Self {
                weights,
                adapters,
                activations: layers * one_layer,
                logits: logits(shape.scored),
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
            format!("; loading the 16-bit base holds {}", gb(self.loading))
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
