//! A checkpoint's tensors in host memory as f32, by HF name, with the completeness check burn-store
//! does not do: every tensor a model asks for must exist with the right shape, and every tensor
//! in the file must be used or knowingly ignored. Reads safetensors (f32/f16/bf16; single file or
//! sharded dir) and GGUF (dequantised, renamed and un-permuted to the HF basis).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::WeightsError;
use super::gguf::GgufFile;
use super::gguf_names::hf_tensor;
use super::safetensors::{StFile, open_dir};

/// Row-major values and their shape (PyTorch order).
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Tensors not yet taken by the model, and where they came from (for messages).
pub struct HostTensors {
    pub origin: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
}

impl HostTensors {
    /// Every tensor of a safetensors dir or file, or of a GGUF file (HF names).
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        let mut tensors = BTreeMap::new();
        for_each_tensor(path, |name, t| {
            tensors.insert(name, t);
            Ok(())
        })?;
        Ok(Self {
            origin: path.into(),
            tensors,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns `name`, refusing a missing tensor or a wrong shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, WeightsError> {
        let t = self.tensors.remove(name).ok_or_else(|| {
            WeightsError::format(
                &self.origin,
                format!("tensor `{name}` is missing; is this the architecture config.json says?"),
            )
        })?;
        if t.shape != shape {
            return Err(WeightsError::format(
                &self.origin,
                format!(
                    "tensor `{name}` is {:?}, expected {shape:?}; does config.json belong to these weights?",
                    t.shape
                ),
            ));
        }
        Ok(t)
    }

    /// Every tensor not yet taken, by name (sorted).
    pub fn into_entries(self) -> Vec<(String, HostTensor)> {
        self.tensors.into_iter().collect()
    }

    /// The same tensors with `prefix` removed from the names that carry it (a BERT checkpoint
    /// saved from `BertForSequenceClassification` says `bert.embeddings…`, a bare `BertModel`
    /// says `embeddings…`).
    pub fn strip_prefix(self, prefix: &str) -> Self {
        let tensors = self
            .tensors
            .into_iter()
            .map(|(k, t)| (k.strip_prefix(prefix).map_or(k.clone(), String::from), t))
            .collect();
        Self {
            origin: self.origin,
            tensors,
        }
    }

    /// Drops a tensor the model knowingly does not use (e.g. a tied `lm_head.weight` copy).
    pub fn ignore(&mut self, name: &str) {
        self.tensors.remove(name);
    }

    /// Fails if any tensor was neither taken nor ignored: it would be silently lost otherwise.
    pub fn finish(self) -> Result<(), WeightsError> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.tensors.keys().map(String::as_str).take(8).collect();
        Err(WeightsError::format(
            &self.origin,
            format!(
                "{} tensor(s) the model does not use: {}; the checkpoint has parts this architecture lacks",
                self.tensors.len(),
                names.join(", ")
            ),
        ))
    }
}

/// Visits every tensor of a safetensors dir or file, or of a GGUF file (HF names and basis),
/// one at a time as f32: a caller that writes each out holds about one tensor in memory.
pub fn for_each_tensor(
    path: &Path,
    mut visit: impl FnMut(String, HostTensor) -> Result<(), WeightsError>,
) -> Result<(), WeightsError> {
    if path.is_dir() {
        for file in open_dir(path)? {
            read_safetensors(&file, &mut visit)?;
        }
        Ok(())
    } else if path.extension().is_some_and(|e| e == "gguf") {
        read_gguf(&GgufFile::open(path)?, &mut visit)
    } else {
        read_safetensors(&StFile::open(path)?, &mut visit)
    }
}

type Visit<'a> = dyn FnMut(String, HostTensor) -> Result<(), WeightsError> + 'a;

fn read_safetensors(file: &StFile, visit: &mut Visit) -> Result<(), WeightsError> {
    let st = SafeTensors::deserialize(&file.map).map_err(|e| {
        WeightsError::format(&file.path, format!("not a valid safetensors file: {e}"))
    })?;
    for (name, view) in st.iter() {
        let bytes = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            // Integer buffers (BERT's position_ids) are not weights.
            Dtype::I64 | Dtype::I32 => continue,
            other => {
                return Err(WeightsError::format(
                    &file.path,
                    format!("tensor `{name}` has dtype {other:?}; f32, f16 and bf16 are read"),
                ));
            }
        };
        visit(
            name.to_string(),
            HostTensor {
                shape: view.shape().to_vec(),
                values,
            },
        )?;
    }
    Ok(())
}

fn read_gguf(file: &GgufFile, visit: &mut Visit) -> Result<(), WeightsError> {
    for tensor in &file.tensors {
        match hf_tensor(file, tensor)? {
            Some(t) => visit(
                t.name,
                HostTensor {
                    shape: t.shape,
                    values: t.values,
                },
            )?,
            // rope_freqs is recomputed from the config, as transformers does.
            None if tensor.name == "rope_freqs.weight" => {}
            None => {
                return Err(WeightsError::format(
                    &file.path,
                    format!("tensor `{}` has no Llama/Qwen2 counterpart", tensor.name),
                ));
            }
        }
    }
    Ok(())
}
