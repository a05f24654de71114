//! AdamW with PyTorch's semantics (`torch.optim.AdamW`: decoupled weight decay p ← p·(1 − lr·λ),
//! bias-corrected moments, ε added after the square root) and global-norm gradient clipping as
//! `torch.nn.utils.clip_grad_norm_`. Written here because burn's AdamW differs in defaults and
//! its clipping is per tensor. Works on plain (non-autodiff) tensors.

use burn::tensor::Tensor;

use super::{TrainError, scalar};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments {
    pub exp_avg: Tensor<2>,
    pub exp_avg_sq: Tensor<2>,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Updates taken so far (PyTorch's per-parameter `step`; equal for all our parameters).
    pub steps: u64,
    /// One entry per parameter, in the caller's fixed order; empty until the first update.
    pub moments: Vec<Moments>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            steps: 0,
            moments: Vec::new(),
        }
    }

    /// One update of every parameter with its gradient, at learning rate `lr`.
    pub fn step(&mut self, params: &mut [&mut Tensor<2>], grads: Vec<Tensor<2>>, lr: f64) {
        let [b1, b2] = self.config.betas;
        if self.moments.is_empty() {
            self.moments = params
                .iter()
                .map(|p| Moments {
                    exp_avg: p.zeros_like(),
                    exp_avg_sq: p.zeros_like(),
                })
                .collect();
        }
        self.steps += 1;
        let t = self.steps as i32;
        let step_size = lr / (1.0 - b1.powi(t));
        let bias_correction2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for ((p, g), m) in params.iter_mut().zip(grads).zip(&mut self.moments) {
            let decayed = p.clone().mul_scalar(1.0 - lr * self.config.weight_decay);
            m.exp_avg = m.exp_avg.clone().mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
            m.exp_avg_sq =
                m.exp_avg_sq.clone().mul_scalar(b2) + (g.clone() * g).mul_scalar(1.0 - b2);
            let denom = m
                .exp_avg_sq
                .clone()
                .sqrt()
                .div_scalar(bias_correction2_sqrt)
                .add_scalar(self.config.eps);
            **p = decayed - (m.exp_avg.clone() / denom).mul_scalar(step_size);
        }
    }
}

/// The L2 norm of all gradients taken as one vector.
pub fn global_norm(grads: &[Tensor<2>]) -> Result<f64, TrainError> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let squares: Vec<Tensor<1>> = grads
        .iter()
        .map(|g| g.clone().powi_scalar(2).sum())
        .collect();
    Ok(scalar(Tensor::cat(squares, 0).sum())?.sqrt())
}

/// PyTorch's clip coefficient: max_norm / (norm + 1e-6), capped at 1 (∞ disables clipping).
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm.is_finite() {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}
