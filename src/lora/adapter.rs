//! The low-rank adapter of one linear layer: trainable A [r, in] and B [out, r] beside a frozen
//! W [out, in], adding `s·((drop(x)·Aᵀ)·Bᵀ)` to `x·Wᵀ`. W + s·B·A is never materialised while
//! training (that would cost a W-sized tensor and gradient per layer per step). PEFT layout, so
//! adapters save, load and merge without transposes.

use std::cell::Cell;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

use crate::kernels::{add_matmul_nt, matmul_nt};
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
    /// PiSSA / OLoRA: the initial A and B, which the base weight lacks; exports subtract them
    /// again (`peft::conversion`).
    pub initial: Option<Box<[Tensor<2>; 2]>>,
    /// DoRA: the trained magnitude m [1, out] (PEFT's `lora_magnitude_vector`), which rescales
    /// each output row of the adapted weight W + s·B·A to m / ‖W + s·B·A‖.
    pub magnitude: Option<Tensor<2>>,
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
            // Replaced from the base weight by `AdaptedModel::attach_adapters`.
            LoraInit::Pissa | LoraInit::Olora => vec![0.0; rank * in_features],
        };
        Self {
            a: Tensor::from_data(TensorData::new(a, [rank, in_features]), device),
            b: Tensor::zeros([out_features, rank], device),
            scale,
            dropout: 0.0,
            training: false,
            dropout_rng: Cell::new(seed),
            initial: None,
            magnitude: None,
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The next dropout mask for an input shaped like `x` (advancing the stream), or None when
    /// not training or without dropout.
    pub fn dropout_mask(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        (self.training && self.dropout > 0.0)
            .then(|| dropout_mask(self.dropout, x.dims(), &self.dropout_rng, &x.device()))
    }

    /// The mask [`Self::dropout_mask`] drew of `shape` from the stream state `stream` (read
    /// before that draw), drawn again; the adapter's own stream does not move.
    pub fn redraw_mask(&self, stream: u64, shape: [usize; 2], device: &Device) -> Tensor<2> {
        dropout_mask(self.dropout, shape, &Cell::new(stream), device)
    }

    /// x: [n, in], `base` = x·Wᵀ [n, out] (without bias; `w` is W [out, in], decoded once by
    /// the caller, and `frozen` multiplies by Wᵀ as the base's product does — in its compute
    /// dtype) → the adapted output base + s·drop(x)·Aᵀ·Bᵀ.
    ///
    /// DoRA (PEFT's `DoraLinearLayer.forward`): with c = m / ‖W + s·B·A‖ per output row, the norm
    /// detached as the paper and PEFT do, the contribution is (c − 1)·(drop(x)·Wᵀ) +
    /// c·s·drop(x)·Aᵀ·Bᵀ, so the layer computes c·(W + s·B·A) on the dropped input plus W on the
    /// rest; without dropout drop(x)·Wᵀ is `base` itself.
    pub fn forward(
        &self,
        x: Tensor<2>,
        w: &Tensor<2>,
        base: Tensor<2>,
        frozen: impl FnOnce(Tensor<2>) -> Tensor<2>,
    ) -> Tensor<2> {
        let mask = self.dropout_mask(&x);
        let x = match &mask {
            Some(mask) => x * mask.clone(),
            None => x,
        };
        // The scale multiplies the r-wide intermediate, not the out-wide result.
        let u = matmul_nt(x.clone(), self.a.clone()).mul_scalar(self.scale);
        let Some(m) = &self.magnitude else {
            return add_matmul_nt(base, &u, &self.b);
        };
        let lora = matmul_nt(u, self.b.clone());
        let [n, out] = base.dims();
        let c = (m.clone() / self.dora_norm(w.clone()).detach()).expand([n, out]);
        let base_dropped = match mask {
            Some(_) => frozen(x),
            None => base.clone(),
        };
        base + ((c.clone() - 1.0) * base_dropped + c * lora)
    }

    /// DoRA: ‖W + s·B·A‖ of each output row, [1, out] (PEFT's `get_weight_norm`), in f32
    /// whatever W's dtype (autocast computes norms in f32 too).
    pub fn dora_norm(&self, w: Tensor<2>) -> Tensor<2> {
        let out = w.dims()[0];
        let delta = self.b.clone().matmul(self.a.clone()).mul_scalar(self.scale);
        (w.cast(FloatDType::F32) + delta)
            .powi_scalar(2)
            .sum_dim(1)
            .sqrt()
            .reshape([1, out])
    }
}

/// Inverted-dropout mask: 0 with probability p, else 1/(1−p). Drawn on the host with
/// splitmix64 from `rng` (32 bits per element): burn's own `random` runs ChaCha per element on
/// one thread and was 13% of a SmolLM2 training step. splitmix64's state advances by a constant
/// per draw, so draw k is a function of k alone and the mask fills in parallel chunks with
/// exactly the values one sequential stream would give.
pub fn dropout_mask(p: f64, shape: [usize; 2], rng: &Cell<u64>, device: &Device) -> Tensor<2> {
    const PAIRS: usize = 8192; // draws per parallel chunk
    let threshold = (p * 4_294_967_296.0) as u64; // P(r < threshold) = p
    let keep = 1.0 - threshold as f64 / 4_294_967_296.0;
    let kept = (1.0 / keep) as f32;
    let n = shape[0] * shape[1];
    let start = rng.get();
    let mut values = vec![0.0f32; n];
    values
        .par_chunks_mut(2 * PAIRS)
        .enumerate()
        .for_each(|(chunk, values)| {
            let mut state = start.wrapping_add(((chunk * PAIRS) as u64).wrapping_mul(GOLDEN_GAMMA));
            for pair in values.chunks_mut(2) {
                let r = splitmix64(&mut state);
                for (v, half) in pair.iter_mut().zip([r & 0xFFFF_FFFF, r >> 32]) {
                    *v = if half < threshold { 0.0 } else { kept };
                }
            }
        });
    rng.set(start.wrapping_add((n.div_ceil(2) as u64).wrapping_mul(GOLDEN_GAMMA)));
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// splitmix64's state increment.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64: advances `state` and returns the next 64 random bits.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel chunks give what one sequential splitmix64 stream gives, and leave the
    /// stream where it would be (an odd count crosses a chunk boundary mid-pair).
    #[test]
    fn parallel_dropout_masks_equal_one_sequential_stream() {
        let device = burn::tensor::Device::default();
        let (p, shape) = (0.3, [37, 1001]);
        let rng = Cell::new(12345);
        let got = dropout_mask(p, shape, &rng, &device);
        let got: Vec<f32> = got.into_data().try_to_vec::<f32>().unwrap();
        let threshold = (p * 4_294_967_296.0) as u64;
        let kept = (1.0 / (1.0 - threshold as f64 / 4_294_967_296.0)) as f32;
        let mut state = 12345u64;
        let mut want = Vec::new();
        while want.len() < shape[0] * shape[1] {
            let r = splitmix64(&mut state);
            for half in [r & 0xFFFF_FFFF, r >> 32] {
                want.push(if half < threshold { 0.0 } else { kept });
            }
        }
        want.truncate(shape[0] * shape[1]);
        assert_eq!(got, want);
        assert_eq!(rng.get(), state);
        let dropped = got.iter().filter(|&&v| v == 0.0).count() as f64 / got.len() as f64;
        assert!((dropped - p).abs() < 0.01, "{dropped}");
    }
}
