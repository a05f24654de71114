//! AdamW with PyTorch's semantics (`torch.optim.AdamW`: decoupled weight decay p ← p·(1 − lr·λ),
//! bias-corrected moments, ε added after the square root) and global-norm gradient clipping as
//! `torch.nn.utils.clip_grad_norm_`. Written here because burn's AdamW differs in defaults and
//! its clipping is per tensor. Works on plain (non-autodiff) tensors. With LoRA+ the parameters
//! fall into PEFT's `create_loraplus_optimizer` groups (see [`AdamWConfig::group`]).

use burn::tensor::Tensor;

use super::{TrainError, scalar};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// LoRA+: B factors (and 1-D tensors) learn at this × lr.
    pub loraplus_lr_ratio: Option<f64>,
}

/// How one parameter is updated: its learning rate as a multiple of the schedule's, and its
/// decoupled weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamGroup {
    pub lr_scale: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// The group of the parameter saved under PEFT key `key`. Without LoRA+ every parameter is
    /// alike. With it, PEFT's groups: `lora_B` factors and 1-D tensors (a head's bias, DoRA's
    /// magnitude, held as [1, n] here) at ratio × lr; biases without weight decay (PEFT's `groupB_no_decay`); the
    /// rest (A factors, a head's weight) at lr. `weight_decay` plays PEFT's
    /// `loraplus_weight_decay`.
    pub fn group(&self, key: &str) -> ParamGroup {
        let Some(ratio) = self.loraplus_lr_ratio else {
            return ParamGroup {
                lr_scale: 1.0,
                weight_decay: self.weight_decay,
            };
        };
        let bias = key.ends_with(".bias");
        let one_dimensional = bias || key.ends_with(crate::peft::MAGNITUDE);
        let b_side = one_dimensional || key.contains(".lora_B.");
        ParamGroup {
            lr_scale: if b_side { ratio } else { 1.0 },
            weight_decay: if bias { 0.0 } else { self.weight_decay },
        }
    }
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

    /// One update of every parameter (under its PEFT key) with its gradient, at learning rate
    /// `lr` scaled by the parameter's group.
    pub fn step(&mut self, params: Vec<(String, &mut Tensor<2>)>, grads: Vec<Tensor<2>>, lr: f64) {
        let [b1, b2] = self.config.betas;
        if self.moments.is_empty() {
            self.moments = params
                .iter()
                .map(|(_, p)| Moments {
                    exp_avg: p.zeros_like(),
                    exp_avg_sq: p.zeros_like(),
                })
                .collect();
        }
        self.steps += 1;
        let t = self.steps as i32;
        let bias_correction2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for (((key, p), g), m) in params.into_iter().zip(grads).zip(&mut self.moments) {
            let group = self.config.group(&key);
            let lr = lr * group.lr_scale;
            let step_size = lr / (1.0 - b1.powi(t));
            let decayed = p.clone().mul_scalar(1.0 - lr * group.weight_decay);
            m.exp_avg = m.exp_avg.clone().mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
            m.exp_avg_sq =
                m.exp_avg_sq.clone().mul_scalar(b2) + (g.clone() * g).mul_scalar(1.0 - b2);
            let denom = m
                .exp_avg_sq
                .clone()
                .sqrt()
                .div_scalar(bias_correction2_sqrt)
                .add_scalar(self.config.eps);
            *p = decayed - (m.exp_avg.clone() / denom).mul_scalar(step_size);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// PEFT's `create_loraplus_optimizer` groups, by key.
    #[test]
    fn loraplus_groups_follow_peft() {
        let config = AdamWConfig {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.1,
            loraplus_lr_ratio: Some(16.0),
        };
        let group = |key: &str| {
            let g = config.group(key);
            (g.lr_scale, g.weight_decay)
        };
        let layer = "base_model.model.model.layers.0.self_attn.q_proj";
        assert_eq!(group(&format!("{layer}.lora_A.weight")), (1.0, 0.1));
        assert_eq!(group(&format!("{layer}.lora_B.weight")), (16.0, 0.1));
        // A classifier head: the weight with the A factors, the bias with B and no decay.
        assert_eq!(group("base_model.model.classifier.weight"), (1.0, 0.1));
        assert_eq!(group("base_model.model.classifier.bias"), (16.0, 0.0));
        let plain = AdamWConfig {
            loraplus_lr_ratio: None,
            ..config
        };
        let g = plain.group("base_model.model.classifier.bias");
        assert_eq!((g.lr_scale, g.weight_decay), (1.0, 0.1));
    }
}
