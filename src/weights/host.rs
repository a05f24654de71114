//! A checkpoint's tensors in host memory as f32, by HF name, with the completeness check burn-store
//! does not do: every tensor a model asks for must exist with the right shape, and every tensor
//! in the file must be used or knowingly ignored. Reads safetensors (f32/f16/bf16; single file or
//! sharded dir) and GGUF (dequantised, renamed and un-permuted to the HF basis).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype as StDtype, SafeTensors};

use super::WeightsError;
use super::blocks::hf_blocks;
use super::blocks::{BlockFormat, BlockMatrix};
use super::gguf::{GgufFile, GgufTensor};
use super::gguf_names::hf_tensor;
use super::quantize::{for_rows_of, quantize};
use super::safetensors::{StFile, open_dir};
use super::tensor::HostTensor;
use crate::dtype::Dtype;

/// A frozen matrix as the model receives it: values to store in a [`Dtype`], or a GGUF matrix
/// kept in its blocks.
#[derive(Debug, Clone)]
pub enum FrozenMatrix {
    Dense(HostTensor, Dtype),
    Blocks(BlockMatrix),
}

/// Tensors not yet taken by the model, and where they came from (for messages).
pub struct HostTensors {
    pub origin: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
    /// GGUF matrices kept in their blocks (`read_keeping_blocks`); `take` dequantises them.
    blocks: BTreeMap<String, BlockMatrix>,
    /// What `take_frozen` asks the model to store dense matrices as.
    storage: Dtype,
    /// Dense layer matrices `take_frozen` quantises into blocks (`model.quantize`).
    quantize: Option<BlockFormat>,
    /// The token embedding and the LM head, likewise (`model.quantize_embeddings`).
    quantize_embeddings: Option<BlockFormat>,
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
            blocks: BTreeMap::new(),
            storage: Dtype::F32,
            quantize: None,
            quantize_embeddings: None,
        })
    }

    /// As [`read`](Self::read), but a GGUF file's block-quantised matrices (every `BlockFormat`) stay in their blocks
    /// until taken: [`take_frozen`](Self::take_frozen) hands them over packed.
    pub fn read_keeping_blocks(path: &Path) -> Result<Self, WeightsError> {
        if path.extension().is_none_or(|e| e != "gguf") {
            return Self::read(path);
        }
        let file = GgufFile::open(path)?;
        let (mut tensors, mut blocks) = (BTreeMap::new(), BTreeMap::new());
        for tensor in &file.tensors {
            if let Some((name, b)) = hf_blocks(&file, tensor)? {
                blocks.insert(name, b);
            } else if let Some(t) = visit_gguf_tensor(&file, tensor)? {
                tensors.insert(t.0, t.1);
            }
        }
        Ok(Self {
            origin: path.into(),
            tensors,
            blocks,
            storage: Dtype::F32,
            quantize: None,
            quantize_embeddings: None,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.blocks.contains_key(name)
    }

    /// Removes and returns matrix `name`, in its blocks when it was kept in them.
    pub fn take_frozen(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<FrozenMatrix, WeightsError> {
        // The LM head stays dense unless `model.quantize_embeddings` asks, as QLoRA keeps it.
        let (key, format) = match name {
            "lm_head.weight" => ("model.quantize_embeddings", self.quantize_embeddings),
            _ => ("model.quantize", self.quantize),
        };
        self.take_matrix(name, shape, (key, format), self.storage)
    }

    /// A token embedding: kept in its blocks when it was read so (`model.keep_quantized`), else
    /// quantised (`model.quantize_embeddings`), else f32 — `model.dtype` and `model.quantize`
    /// are for the linear layers.
    pub fn take_embedding(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<FrozenMatrix, WeightsError> {
        let quantize = ("model.quantize_embeddings", self.quantize_embeddings);
        self.take_matrix(name, shape, quantize, Dtype::F32)
    }

    /// Matrix `name`: its kept blocks, else its values quantised into the format `quantize`'s
    /// key asks for, else dense values to store as `dense`.
    fn take_matrix(
        &mut self,
        name: &str,
        shape: [usize; 2],
        (key, format): (&str, Option<BlockFormat>),
        dense: Dtype,
    ) -> Result<FrozenMatrix, WeightsError> {
        match self.blocks.remove(name) {
            Some(b) if [b.rows, b.cols] == shape => Ok(FrozenMatrix::Blocks(b)),
            Some(b) => Err(self.wrong_shape(name, &[b.rows, b.cols], &shape)),
            None => {
                let t = self.take(name, &shape)?;
                match format {
                    Some(format) => self.quantized(name, key, format, t, shape),
                    None => Ok(FrozenMatrix::Dense(t, dense)),
                }
            }
        }
    }

    /// `t` quantised into `format`'s blocks (llama.cpp's fallback where rows are not whole
    /// super-blocks); `key` names the setting in errors.
    fn quantized(
        &self,
        name: &str,
        key: &str,
        format: BlockFormat,
        t: HostTensor,
        shape: [usize; 2],
    ) -> Result<FrozenMatrix, WeightsError> {
        let fail = |e: String| {
            WeightsError::format(
                &self.origin,
                format!("tensor `{name}`: {key} = {format:?}: {e}"),
            )
        };
        let format = for_rows_of(format, shape[1]);
        let bytes = quantize(format, &t.values).map_err(fail)?;
        let blocks = BlockMatrix::from_ggml(format, &bytes, shape[0], shape[1]).map_err(fail)?;
        Ok(FrozenMatrix::Blocks(blocks))
    }

    /// The token embedding and the LM head are quantised into `format`'s blocks.
    pub fn quantizing_embeddings(self, quantize_embeddings: Option<BlockFormat>) -> Self {
        Self {
            quantize_embeddings,
            ..self
        }
    }

    /// Dense frozen matrices other than the LM head are quantised into `format`'s blocks.
    pub fn quantizing_frozen(self, quantize: Option<BlockFormat>) -> Self {
        Self { quantize, ..self }
    }

    /// Frozen matrices `take_frozen` hands over dense are to be stored as `storage`.
    pub fn storing_frozen_as(self, storage: Dtype) -> Self {
        Self { storage, ..self }
    }

    fn wrong_shape(&self, name: &str, got: &[usize], shape: &[usize]) -> WeightsError {
        WeightsError::format(
            &self.origin,
            format!(
                "tensor `{name}` is {got:?}, expected {shape:?}; does config.json belong to these weights?"
            ),
        )
    }

    /// Removes and returns `name`, refusing a missing tensor or a wrong shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, WeightsError> {
        let t = match self.blocks.remove(name) {
            Some(b) => dequantized(&b),
            None => self.tensors.remove(name).ok_or_else(|| {
                WeightsError::format(
                    &self.origin,
                    format!(
                        "tensor `{name}` is missing; is this the architecture config.json says?"
                    ),
                )
            })?,
        };
        if t.shape != shape {
            return Err(self.wrong_shape(name, &t.shape, shape));
        }
        Ok(t)
    }

    /// Every tensor not yet taken, by name (sorted).
    pub fn into_entries(mut self) -> Vec<(String, HostTensor)> {
        for (name, b) in std::mem::take(&mut self.blocks) {
            self.tensors.insert(name, dequantized(&b));
        }
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
        let blocks = self
            .blocks
            .into_iter()
            .map(|(k, t)| (k.strip_prefix(prefix).map_or(k.clone(), String::from), t))
            .collect();
        Self {
            origin: self.origin,
            tensors,
            blocks,
            storage: self.storage,
            quantize: self.quantize,
            quantize_embeddings: self.quantize_embeddings,
        }
    }

    /// Drops a tensor the model knowingly does not use (e.g. a tied `lm_head.weight` copy).
    pub fn ignore(&mut self, name: &str) {
        self.tensors.remove(name);
        self.blocks.remove(name);
    }

    /// Fails if any tensor was neither taken nor ignored: it would be silently lost otherwise.
    pub fn finish(self) -> Result<(), WeightsError> {
        if self.tensors.is_empty() && self.blocks.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.extend(self.blocks.keys().map(String::as_str));
        Err(WeightsError::format(
            &self.origin,
            format!(
                "{} tensor(s) the model does not use: {}; the checkpoint has parts this architecture lacks",
                names.len(),
                names[..names.len().min(8)].join(", ")
            ),
        ))
    }
}

/// A kept matrix as f32 values, for a caller that wants it dense.
fn dequantized(b: &BlockMatrix) -> HostTensor {
    HostTensor {
        shape: vec![b.rows, b.cols],
        values: b.dequantize(),
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
            StDtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StDtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            // Integer buffers (BERT's position_ids) are not weights.
            StDtype::I64 | StDtype::I32 => continue,
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
        if let Some((name, t)) = visit_gguf_tensor(file, tensor)? {
            visit(name, t)?;
        }
    }
    Ok(())
}

/// One GGUF tensor dequantised in the HF basis; None for `rope_freqs` (recomputed from the
/// config, as transformers does); an error for a tensor these architectures do not have.
fn visit_gguf_tensor(
    file: &GgufFile,
    tensor: &GgufTensor,
) -> Result<Option<(String, HostTensor)>, WeightsError> {
    match hf_tensor(file, tensor)? {
        Some(t) => Ok(Some((
            t.name,
            HostTensor {
                shape: t.shape,
                values: t.values,
            },
        ))),
        // RoPE tables HF recomputes from config (Llama 3's factors, Phi-3's LongRoPE ones): read
        // by `DecoderConfig::from_gguf`.
        None if matches!(
            tensor.name.as_str(),
            "rope_freqs.weight" | "rope_factors_long.weight" | "rope_factors_short.weight"
        ) =>
        {
            Ok(None)
        }
        None => Err(WeightsError::format(
            &file.path,
            format!("tensor `{}` has no Llama/Qwen2 counterpart", tensor.name),
        )),
    }
}
