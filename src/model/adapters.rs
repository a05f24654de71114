//! Putting LoRA adapters on a loaded model and moving their weights in and out under PEFT's key
//! names (`base_model.model.<module path>.lora_A.weight` [r, in], `.lora_B.weight` [out, r]), so
//! a checkpoint, an `init_from` adapter and a PEFT export are the same tensors.

use std::path::Path;

use burn::tensor::{Tensor, TensorData};

use super::llama::Llama;
use crate::lora::adapter::{LoraAdapter, splitmix64};
use crate::lora::targets::Adapted;
use crate::recipe::LoraSection;
use crate::weights::WeightsError;
use crate::weights::host::{HostTensor, HostTensors};

/// PEFT's name for an adapter factor (`A` or `B`) of the module at `path`.
pub fn peft_key(path: &str, factor: char) -> String {
    format!("base_model.model.{path}.lora_{factor}.weight")
}

impl Llama {
    /// Adds a freshly initialised adapter to every layer in `adapted` (from `lora::targets`).
    /// Each adapter draws its init from its own stream of `seed`.
    pub fn attach_adapters(
        &mut self,
        adapted: &[Adapted],
        lora: &LoraSection,
        seed: u64,
    ) -> Result<(), String> {
        let device = self.device().clone();
        let mut linears = self.linears_mut();
        for (n, target) in adapted.iter().enumerate() {
            let (_, linear) = linears
                .iter_mut()
                .find(|(path, _)| *path == target.site.path)
                .ok_or_else(|| {
                    format!(
                        "`{}` is not a separate linear layer of this model (a tied LM head shares the embedding)",
                        target.site.path
                    )
                })?;
            let mut adapter = LoraAdapter::init(
                target.rank as usize,
                target.site.in_features,
                target.site.out_features,
                target.scale(lora.rslora),
                lora.init,
                stream_seed(seed, n as u64),
                &device,
            );
            adapter.dropout = lora.dropout;
            linear.lora = Some(adapter);
        }
        Ok(())
    }

    /// Reseeds every adapter's dropout masks from `seed` (the trainer passes one per step).
    pub fn seed_dropout(&mut self, seed: u64) {
        for (n, (_, a)) in self.adapters_mut().into_iter().enumerate() {
            a.dropout_rng.set(stream_seed(seed, n as u64));
        }
    }

    /// Replaces every adapter's A and B with the tensors in `file` (PEFT keys); a missing,
    /// misshapen or unused tensor is an error naming it.
    pub fn load_adapter_weights(&mut self, file: &Path) -> Result<(), WeightsError> {
        let mut tensors = HostTensors::read(file)?;
        let device = self.device().clone();
        for (path, adapter) in self.adapters_mut() {
            let (a_shape, b_shape) = (adapter.a.dims(), adapter.b.dims());
            let a = tensors.take(&peft_key(&path, 'A'), &a_shape)?;
            let b = tensors.take(&peft_key(&path, 'B'), &b_shape)?;
            adapter.a = Tensor::from_data(TensorData::new(a.values, a_shape), &device);
            adapter.b = Tensor::from_data(TensorData::new(b.values, b_shape), &device);
        }
        tensors.finish()
    }

    /// Every adapter factor on the host under its PEFT key, in model order (A then B).
    pub fn adapter_tensors(&mut self) -> Result<Vec<(String, HostTensor)>, WeightsError> {
        let mut out = Vec::new();
        for (path, adapter) in self.adapters_mut() {
            for (factor, t) in [('A', &adapter.a), ('B', &adapter.b)] {
                out.push((peft_key(&path, factor), host(t)?));
            }
        }
        Ok(out)
    }
}

/// A tensor's values on the host.
pub fn host<const D: usize>(t: &Tensor<D>) -> Result<HostTensor, WeightsError> {
    let shape = t.dims().to_vec();
    let fail =
        |e: String| WeightsError::format(Path::new("<device>"), format!("reading back: {e}"));
    let values = t
        .clone()
        .inner()
        .try_into_data()
        .map_err(|e| fail(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| fail(format!("{e:?}")))?;
    Ok(HostTensor { shape, values })
}

/// Independent, reproducible seeds per (seed, stream): splitmix64 of their mix.
pub fn stream_seed(seed: u64, stream: u64) -> u64 {
    let mut state = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    splitmix64(&mut state)
}
