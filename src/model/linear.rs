//! The frozen linear layer every architecture is built from, in HF layout (weight [out, in]),
//! with an optional trainable low-rank adapter; and the loaders that take one named tensor of a
//! checked shape out of a checkpoint.

use burn::tensor::{Device, Tensor, TensorData};

use super::frozen::{FrozenWeight, frozen_product_nt};
use crate::dtype::Dtype;
use crate::lora::adapter::LoraAdapter;
use crate::transfer;
use crate::weights::WeightsError;
use crate::weights::host::HostTensors;

/// Frozen linear layer in HF layout, with an optional trainable low-rank adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    /// [out, in]
    pub weight: FrozenWeight,
    /// [out]
    pub bias: Option<Tensor<1>>,
    pub lora: Option<LoraAdapter>,
    /// What the product with `weight` computes in (`model.compute_dtype`); f32 at load.
    pub compute: Dtype,
}

impl Linear {
    pub fn load(
        w: &mut HostTensors,
        at: &str,
        shape: [usize; 2],
        bias: bool,
        device: &Device,
    ) -> Result<Self, WeightsError> {
        Ok(Self {
            weight: FrozenWeight::new(w.take_frozen(&format!("{at}.weight"), shape)?, device),
            bias: if bias {
                Some(take1(w, &format!("{at}.bias"), shape[0], device)?)
            } else {
                None
            },
            lora: None,
            compute: Dtype::F32,
        })
    }

    /// Runs the frozen product in `dtype` (`model.compute_dtype`): a dense weight is stored in
    /// it, a kept-quantised one decodes per product; f32 leaves the weight as stored.
    pub fn compute_in(&mut self, dtype: Dtype) {
        self.compute = dtype;
        if dtype != Dtype::F32 {
            self.weight.store_as(dtype);
        }
    }

    /// x: [batch, seq, in] → [batch, seq, out]; y = x·Wᵀ + b (+ the adapter's s·(x·Aᵀ)·Bᵀ).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let [out, inp] = self.weight.dims();
        let x = x.reshape([b * s, inp]);
        let y = match &self.lora {
            // DoRA reads W again: decoded once for both.
            Some(lora) if lora.magnitude.is_some() => {
                let w = self.weight.in_dtype(self.compute);
                let y = frozen_product_nt(x.clone(), w.clone(), self.compute); // [b·s, out]
                let frozen = |x| frozen_product_nt(x, w.clone(), self.compute);
                lora.forward(x, &w, y, frozen)
            }
            // LoRA needs no W: x·Wᵀ decodes a large kept-quantised matrix chunk by chunk.
            Some(lora) => lora.add_low_rank(x.clone(), self.weight.product_nt(x, self.compute)),
            None => self.weight.product_nt(x, self.compute),
        };
        let y = match &self.bias {
            Some(bias) => y + bias.clone().reshape([1, out]).expand([b * s, out]),
            None => y,
        };
        y.reshape([b, s, out])
    }
}

pub fn take2(
    w: &mut HostTensors,
    name: &str,
    shape: [usize; 2],
    device: &Device,
) -> Result<Tensor<2>, WeightsError> {
    let t = w.take(name, &shape)?;
    Ok(transfer::upload(TensorData::new(t.values, shape), device))
}

pub fn take1(
    w: &mut HostTensors,
    name: &str,
    len: usize,
    device: &Device,
) -> Result<Tensor<1>, WeightsError> {
    let t = w.take(name, &[len])?;
    Ok(transfer::upload(TensorData::new(t.values, [len]), device))
}
