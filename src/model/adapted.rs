//! Putting LoRA adapters on a loaded model and moving their weights in and out under PEFT's key
//! names ([`crate::peft`]: `base_model.model.<module path>.lora_A.weight` [r, in],
//! `.lora_B.weight` [out, r]), so a checkpoint, an `init_from` adapter and a PEFT export are the
//! same tensors.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use super::decoder::Decoder;
use super::frozen::FrozenWeight;
use super::linear::Linear;
use crate::dtype::Dtype;
use crate::kernels::splitmix64;
use crate::lora::adapter::LoraAdapter;
use crate::lora::targets::{self, LinearSite, TargetLayer};
use crate::peft::config::PeftConfig;
use crate::peft::folder::{self as peft_folder, PeftError};
use crate::peft::{MAGNITUDE, factor_key, magnitude_key};
use crate::recipe::{LoraInit, LoraSection};
use crate::transfer;
use crate::weights::WeightsError;
use crate::weights::tensor::HostTensor;
use burn::tensor::Float;

/// Why adapters could not be put on a model.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(
        "`{0}` is not a separate linear layer of this model (a tied LM head shares the embedding)"
    )]
    NotALinear(String),
    #[error("{}: {source}", dir.display())]
    Targets {
        dir: std::path::PathBuf,
        source: targets::TargetError,
    },
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(
        "`{0}`: PiSSA / OLoRA (lora.init) take the adapter out of the base weight, which is kept in quantised blocks here; drop model.keep_quantized / model.quantize"
    )]
    NeedsDenseBase(String),
    #[error(
        "`{path}`: PiSSA / OLoRA (lora.init) need a rank no larger than the weight's smaller side ({shape:?}); lower lora.rank (or its rank_pattern) to at most {}",
        shape[0].min(shape[1])
    )]
    RankTooLarge {
        path: String,
        rank: usize,
        shape: [usize; 2],
    },
}

/// A then B (then DoRA's magnitude) of each adapter among `linears` (module path, layer), under
/// their PEFT keys.
pub fn adapter_factors<'a>(
    linears: impl IntoIterator<Item = (String, &'a mut Linear)>,
) -> Vec<(String, &'a mut Tensor<2>)> {
    let mut out = Vec::new();
    for (path, l) in linears {
        if let Some(a) = l.lora.as_mut() {
            out.push((factor_key(&path, 'A'), &mut a.a));
            out.push((factor_key(&path, 'B'), &mut a.b));
            if let Some(m) = a.magnitude.as_mut() {
                out.push((magnitude_key(&path), m));
            }
        }
    }
    out
}

/// Every linear layer with its module path, and the fully trained tensors under their PEFT keys.
pub type Parts<'a> = (
    Vec<(String, &'a mut Linear)>,
    Vec<(String, &'a mut Tensor<2>)>,
);

/// A model whose adapters (and, for a classifier, head) train on a frozen base. The provided
/// methods attach adapters, reseed their dropout and move every trained tensor in and out under
/// its PEFT key, for any architecture that lists its linear layers.
pub trait AdaptedModel {
    fn device(&self) -> &Device;

    /// Every linear layer with its HF module path, in model order; and the tensors trained in
    /// full besides the adapters (a classification head) under their PEFT keys, a bias held as
    /// [1, n] and saved as [n] — none for a causal LM. One call so both borrow `self` at once.
    fn parts_mut(&mut self) -> Parts<'_>;

    /// Training mode switches dropout on; evaluation and generation run with it off.
    fn set_training(&mut self, training: bool) {
        for (_, a) in self.adapters_mut() {
            a.training = training;
        }
    }

    /// Runs every frozen product in `dtype` (`model.compute_dtype`, `Linear::compute_in`).
    fn compute_in(&mut self, dtype: Dtype) {
        let (linears, _) = self.parts_mut();
        for (_, linear) in linears {
            linear.compute_in(dtype);
        }
    }

    /// What the frozen products compute in (every linear alike); f32 without linears.
    fn compute_dtype(&mut self) -> Dtype {
        let (linears, _) = self.parts_mut();
        linears.first().map_or(Dtype::F32, |(_, l)| l.compute)
    }

    /// Reseeds every dropout mask stream from `seed` (the trainer passes one per step).
    fn seed_dropout(&mut self, seed: u64) {
        for (n, (_, a)) in self.adapters_mut().into_iter().enumerate() {
            a.dropout_rng.set(stream_seed(seed, n as u64));
        }
    }

    /// The adapters in model order, with the module path each sits on.
    fn adapters_mut(&mut self) -> Vec<(String, &mut LoraAdapter)> {
        let (linears, _) = self.parts_mut();
        linears
            .into_iter()
            .filter_map(|(path, l)| l.lora.as_mut().map(|a| (path, a)))
            .collect()
    }

    /// Every trained tensor under its PEFT key: A then B of each adapter, then the heads.
    fn params_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        let (linears, heads) = self.parts_mut();
        let mut out = adapter_factors(linears);
        out.extend(heads);
        out
    }

    /// Adds a freshly initialised adapter to every layer in `adapted` (from `lora::targets`).
    /// Each adapter draws its init from its own stream of `seed`; PiSSA and OLoRA take it from
    /// the layer's weight instead, which keeps the residual.
    fn attach_adapters(
        &mut self,
        adapted: &[TargetLayer],
        lora: &LoraSection,
        seed: u64,
    ) -> Result<(), AdapterError> {
        let device = self.device().clone();
        let (mut linears, _) = self.parts_mut();
        for (n, target) in adapted.iter().enumerate() {
            let (_, linear) = linears
                .iter_mut()
                .find(|(path, _)| *path == target.site.path)
                .ok_or_else(|| AdapterError::NotALinear(target.site.path.clone()))?;
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
            if lora.init.reads_base() {
                slice_base(linear, &mut adapter, lora.init, &target.site.path)?;
            }
            if lora.use_dora {
                // PEFT's DoRA init: m = ‖W + s·B·A‖ per output row, so the layer starts as W.
                adapter.magnitude = Some(adapter.dora_norm(linear.weight.dense()));
            }
            linear.lora = Some(adapter);
        }
        Ok(())
    }

    /// Replaces every trained tensor with the one in `file` (PEFT keys); a missing, misshapen
    /// or unused tensor is an error naming it.
    fn load_adapter_weights(&mut self, file: &Path) -> Result<(), WeightsError> {
        let mut tensors = peft_folder::read_adapter_tensors(file)?;
        let device = self.device().clone();
        for (key, t) in self.params_mut() {
            let dims = t.dims();
            let h = match tensors.contains(&key) {
                true => tensors.take(&key, &saved_shape(&key, dims))?,
                false => match peft_folder::fused_expert_factor(&mut tensors, &key, dims)? {
                    Some(h) => h,
                    None => tensors.take(&key, &saved_shape(&key, dims))?,
                },
            };
            *t = transfer::upload(TensorData::new(h.values, dims), &device);
        }
        tensors.finish()
    }

    /// Puts the adapters of the PEFT folder `dir` on this model (which must have none yet;
    /// `sites` are its linear layers): the layers its config targets, with its ranks and
    /// scales, and its trained A/B (and a classifier's head).
    fn apply_peft_folder(
        &mut self,
        sites: &[LinearSite],
        dir: &Path,
    ) -> Result<PeftConfig, AdapterError> {
        let (config, lora) = peft_folder::read_lora(dir)?;
        let adapted = targets::select(sites, &lora).map_err(|source| AdapterError::Targets {
            dir: dir.into(),
            source,
        })?;
        self.attach_adapters(&adapted, &lora, 0)?;
        self.load_adapter_weights(&dir.join(peft_folder::WEIGHTS_FILE))?;
        Ok(config)
    }

    /// PiSSA / OLoRA: each adapter's initial A and B on the host under their PEFT keys, which a
    /// checkpoint keeps for the export's conversion to a plain LoRA; empty for other inits.
    fn initial_adapter_tensors(&mut self) -> Result<Vec<(String, HostTensor)>, WeightsError> {
        let mut out = Vec::new();
        for (path, adapter) in self.adapters_mut() {
            if let Some(initial) = &adapter.initial {
                for (factor, t) in ['A', 'B'].into_iter().zip(initial.iter()) {
                    out.push((factor_key(&path, factor), host(t)?));
                }
            }
        }
        Ok(out)
    }

    /// Every trained tensor on the host under its PEFT key, in model order.
    fn adapter_tensors(&mut self) -> Result<Vec<(String, HostTensor)>, WeightsError> {
        let mut out = Vec::new();
        for (key, t) in self.params_mut() {
            let mut h = host(t)?;
            h.shape = saved_shape(&key, t.dims());
            out.push((key, h));
        }
        Ok(out)
    }
}

/// PiSSA / OLoRA: sets `adapter`'s A and B from `linear`'s weight (module `path`) and leaves
/// the residual there, in the weight's own dtype (as PEFT casts it back).
fn slice_base(
    linear: &mut Linear,
    adapter: &mut LoraAdapter,
    init: LoraInit,
    path: &str,
) -> Result<(), AdapterError> {
    let FrozenWeight::Dense(w) = &linear.weight else {
        return Err(AdapterError::NeedsDenseBase(path.into()));
    };
    let (dtype, device) = (w.dtype(), w.device());
    let shape = [w.dims()[0], w.dims()[1]];
    let rank = adapter.rank();
    if rank > shape[0].min(shape[1]) {
        return Err(AdapterError::RankTooLarge {
            path: path.into(),
            rank,
            shape,
        });
    }
    let values = host(&linear.weight.dense())?.values;
    let slice = crate::lora::init::slice_of(init, &values, shape, rank, adapter.scale)
        .expect("a base-reading init");
    let tensor = |v: Vec<f32>, dims: [usize; 2]| {
        transfer::upload::<2, Float>(TensorData::new(v, dims), &device)
    };
    adapter.a = tensor(slice.a, [rank, shape[1]]);
    adapter.b = tensor(slice.b, [shape[0], rank]);
    adapter.initial = Some(Box::new([adapter.a.clone(), adapter.b.clone()]));
    linear.weight = FrozenWeight::Dense(tensor(slice.residual, shape).cast(dtype));
    Ok(())
}

/// The shape a trained tensor has in a file: a head's bias and DoRA's magnitude, held as
/// [1, n], are saved as [n].
pub fn saved_shape(key: &str, dims: [usize; 2]) -> Vec<usize> {
    if key.ends_with(".bias") || key.ends_with(MAGNITUDE) {
        vec![dims[0] * dims[1]]
    } else {
        dims.to_vec()
    }
}

impl AdaptedModel for Decoder {
    fn device(&self) -> &Device {
        Decoder::device(self)
    }

    fn parts_mut(&mut self) -> Parts<'_> {
        (self.linears_mut(), Vec::new())
    }

    /// The linears' products, and the tied head's (its embedding cast per product; the
    /// lookup stays f32).
    fn compute_in(&mut self, dtype: Dtype) {
        self.compute = dtype;
        for (_, linear) in self.linears_mut() {
            linear.compute_in(dtype);
        }
    }
}

/// A tensor's values on the host.
pub fn host<const D: usize>(t: &Tensor<D>) -> Result<HostTensor, WeightsError> {
    let shape = t.dims().to_vec();
    let fail =
        |e: String| WeightsError::format(Path::new("<device>"), format!("reading back: {e}"));
    let values = transfer::download(t.clone().inner())
        .map_err(fail)?
        .try_into_vec::<f32>()
        .map_err(|e| fail(format!("{e:?}")))?;
    Ok(HostTensor { shape, values })
}

/// Independent, reproducible seeds per (seed, stream): splitmix64 of their mix.
pub fn stream_seed(seed: u64, stream: u64) -> u64 {
    let mut state = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    splitmix64(&mut state)
}
