//! The low-rank adapter of one linear layer: trainable A [r, in] and B [out, r] beside a frozen
//! W [out, in], adding `s·((drop(x)·Aᵀ)·Bᵀ)` to `x·Wᵀ`. W + s·B·A is never materialised while
//! training (that would cost a W-sized tensor and gradient per layer per step). PEFT layout, so
//! adapters save, load and merge without transposes.

use std::cell::Cell;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::kernels::{self, DropoutMask, add_matmul_nt, matmul_nt};
use crate::recipe::LoraInit;
use crate::transfer;

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
            a: transfer::upload(TensorData::new(a, [rank, in_features]), device),
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
    /// not training or without dropout. A mask is a stream position, not a tensor: applying it
    /// again (backward) gives the same elements on every backend.
    pub fn dropout_mask(&self, x: &Tensor<2>) -> Option<DropoutMask> {
        (self.training && self.dropout > 0.0)
            .then(|| DropoutMask::draw(self.dropout, x.dims(), &self.dropout_rng))
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
        let Some(m) = &self.magnitude else {
            return self.add_low_rank(x, base);
        };
        let mask = self.dropout_mask(&x);
        let x = match mask {
            Some(mask) => kernels::dropout(x, mask),
            None => x,
        };
        let u = matmul_nt(x.clone(), self.a.clone()).mul_scalar(self.scale);
        let lora = matmul_nt(u, self.b.clone());
        let [n, out] = base.dims();
        let c = (m.clone() / self.dora_norm(w.clone()).detach()).expand([n, out]);
        let base_dropped = match mask {
            Some(_) => frozen(x),
            None => base.clone(),
        };
        base + ((c.clone() - 1.0) * base_dropped + c * lora)
    }

    /// LoRA without DoRA: base + s·(drop(x)·Aᵀ)·Bᵀ, which needs no W.
    pub fn add_low_rank(&self, x: Tensor<2>, base: Tensor<2>) -> Tensor<2> {
        let x = match self.dropout_mask(&x) {
            Some(mask) => kernels::dropout(x, mask),
            None => x,
        };
        // The scale multiplies the r-wide intermediate, not the out-wide result.
        let u = matmul_nt(x, self.a.clone()).mul_scalar(self.scale);
        add_matmul_nt(base, &u, &self.b)
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

/// Box–Muller: one N(0, 1) draw from two uniforms.
pub fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
