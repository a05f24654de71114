//! The low-rank adapter of one linear layer: trainable A [r, in] and B [out, r] beside a frozen
//! W [out, in], adding `s·((drop(x)·Aᵀ)·Bᵀ)` to `x·Wᵀ`. W + s·B·A is never materialised while
//! training (that would cost a W-sized tensor and gradient per layer per step). PEFT layout, so
//! adapters save, load and merge without transposes.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
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
    /// Training mode: dropout active. Toggled for the whole model by `Llama::set_training`.
    pub training: bool,
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
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// x: [n, in] → the adapter's contribution [n, out].
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = if self.training && self.dropout > 0.0 {
            let keep = 1.0 - self.dropout;
            let mask = Tensor::<2>::random(x.dims(), Distribution::Bernoulli(keep), &x.device());
            x * mask.div_scalar(keep)
        } else {
            x
        };
        x.matmul(self.a.clone().transpose())
            .matmul(self.b.clone().transpose())
            .mul_scalar(self.scale)
    }

    /// Makes A and B autodiff leaves whose gradients the next backward pass retains.
    pub fn track(&mut self) {
        self.a = self.a.clone().inner().autodiff().require_grad();
        self.b = self.b.clone().inner().autodiff().require_grad();
    }

    /// Drops the autodiff association (evaluation, export, optimiser updates).
    pub fn untrack(&mut self) {
        self.a = self.a.clone().inner();
        self.b = self.b.clone().inner();
    }
}

/// Box–Muller: one N(0, 1) draw from two uniforms.
fn standard_normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
