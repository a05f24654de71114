//! The low-rank adapter of one linear layer: trainable A [r, in] and B [out, r] beside a frozen
//! W [out, in], adding `s·((drop(x)·Aᵀ)·Bᵀ)` to `x·Wᵀ`. W + s·B·A is never materialised while
//! training (that would cost a W-sized tensor and gradient per layer per step). PEFT layout, so
//! adapters save, load and merge without transposes.

use std::cell::Cell;

use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::recipe::LoraInit;

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// [r, in]
    pub a: Tensor<2>,
    /// [out, r]
    pub b: Tensor<2>,
    /// α/r, or α/√r with rsLoRA.
    pub scale: f64,
    /// Probability of zeroing an input element on the LoRA path (training only).
    pub dropout: f64,
    /// Training mode: dropout active. Toggled for the whole model by `AdaptedModel::set_training`.
    pub training: bool,
    /// State of the dropout mask generator; the trainer reseeds it from (seed, step, adapter)
    /// so a resumed run draws the same masks.
    pub dropout_rng: Cell<u64>,
}

impl LoraAdapter {
    /// A fresh adapter as PEFT initialises one: B = 0 (so the adapted layer starts equal to the
    /// base) and A kaiming-uniform with a=√5, i.e. U(-1/√in, 1/√in), or N(0, 1/r) for `gaussian`.
    /// Drawn on the host from `seed` so every backend starts from the same numbers.
    pub fn init(
        rank: usize,
        in_features: usize,
        out_features: usize,
        scale: f64,
        init: LoraInit,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let a: Vec<f32> = match init {
            LoraInit::Kaiming => {
                let bound = 1.0 / (in_features as f64).sqrt();
                (0..rank * in_features)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect()
            }
            LoraInit::Gaussian => {
                let std = 1.0 / rank as f64;
                (0..rank * in_features)
                    .map(|_| (standard_normal(&mut rng) * std) as f32)
                    .collect()
            }
        };
        Self {
            a: Tensor::from_data(TensorData::new(a, [rank, in_features]), device),
            b: Tensor::zeros([out_features, rank], device),
            scale,
            dropout: 0.0,
            training: false,
            dropout_rng: Cell::new(seed),
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// x: [n, in] → the adapter's contribution [n, out].
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = if self.training && self.dropout > 0.0 {
            let mask = dropout_mask(self.dropout, x.dims(), &self.dropout_rng, &x.device());
            x * mask
        } else {
            x
        };
        // The scale multiplies the r-wide intermediate, not the out-wide result.
        x.matmul(self.a.clone().transpose())
            .mul_scalar(self.scale)
            .matmul(self.b.clone().transpose())
    }
}

/// Inverted-dropout mask: 0 with probability p, else 1/(1−p). Drawn on the host with
/// splitmix64 from `rng` (32 bits per element): burn's own `random` runs ChaCha per element on
/// one thread and was 13% of a SmolLM2 training step.
pub fn dropout_mask(p: f64, shape: [usize; 2], rng: &Cell<u64>, device: &Device) -> Tensor<2> {
    let threshold = (p * 4_294_967_296.0) as u64; // P(r < threshold) = p
    let keep = 1.0 - threshold as f64 / 4_294_967_296.0;
    let kept = (1.0 / keep) as f32;
    let n = shape[0] * shape[1];
    let mut state = rng.get();
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        let r = splitmix64(&mut state);
        for half in [r & 0xFFFF_FFFF, r >> 32] {
            values.push(if half < threshold { 0.0 } else { kept });
        }
    }
    values.truncate(n);
    rng.set(state);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// splitmix64: advances `state` and returns the next 64 random bits.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Box–Muller: one N(0, 1) draw from two uniforms.
pub fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
