//! A checkpoint's tensors in host memory as f32, by HF name, with the completeness check burn-store
//! does not do: every tensor a model asks for must exist with the right shape, and every tensor
//! in the file must be used or knowingly ignored. Reads safetensors (f32/f16/bf16; single file or
//! sharded dir) and GGUF (dequantised, renamed and un-permuted to the HF basis).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::UncheckedAdvice;
use safetensors::tensor::TensorView;
use safetensors::{Dtype as StDtype, SafeTensors};

use super::WeightsError;
use super::blocks::hf_blocks;
use super::blocks::{BlockFormat, BlockMatrix};
use super::gguf::{GgufFile, GgufTensor};
use super::gguf_names::{expert_slices, hf_tensor};
use super::granite_moe::{self, ExpertJoin};
use super::quantize::{for_rows_of, quantize_rows};
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

/// A safetensors tensor not yet read: where its bytes lie in one of the mapped files. It is
/// decoded when taken, so a load holds one tensor in f32 at a time rather than the whole
/// checkpoint (a 1.5B bf16 base quantised at load peaked at 12.4 GB when every tensor was read
/// into f32 first), and the file's pages it read are let go at once.
struct Mapped {
    file: usize,
    start: usize,
    len: usize,
    dtype: StDtype,
    shape: Vec<usize>,
}

/// Tensors not yet taken by the model, and where they came from (for messages).
pub struct HostTensors {
    pub origin: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
    /// A safetensors checkpoint's tensors, by name, still in `files`.
    mapped: BTreeMap<String, Mapped>,
    files: Vec<StFile>,
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
    /// Every tensor of a safetensors dir or file (mapped, read when taken), or of a GGUF file
    /// (dequantised now), by HF name.
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        let mut tensors = BTreeMap::new();
        let mut mapped = BTreeMap::new();
        let files = if path.extension().is_some_and(|e| e == "gguf") {
            read_gguf(&GgufFile::open(path)?, &mut |name, t| {
                tensors.insert(name, t);
                Ok(())
            })?;
            Vec::new()
        } else {
            let files = match path.is_dir() {
                true => open_dir(path)?,
                false => vec![StFile::open(path)?],
            };
            for (index, file) in files.iter().enumerate() {
                for (name, view) in safetensors_views(file)? {
                    let start = view.data().as_ptr() as usize - file.map.as_ptr() as usize;
                    let entry = Mapped {
                        file: index,
                        start,
                        len: view.data().len(),
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                    };
                    mapped.insert(name, entry);
                }
            }
            files
        };
        Ok(Self {
            origin: path.into(),
            tensors,
            mapped,
            files,
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
        let mut granite = granite_moe::is_granite_moe(&file).then(ExpertJoin::default);
        for tensor in &file.tensors {
            // GraniteMoE's gate and up are kept together or not at all (one matrix per expert).
            let together = granite_moe::other_half(&file, tensor)
                .is_none_or(|other| other.ggml_type == tensor.ggml_type);
            let kept = match together {
                true => hf_blocks(&file, tensor)?,
                false => Vec::new(),
            };
            if kept.is_empty() {
                tensors.extend(gguf_tensor(&file, tensor, &mut granite)?);
            }
            blocks.extend(kept);
        }
        let fail = |e: String| WeightsError::format(path, e);
        if let Some(join) = granite {
            join.finish().map_err(fail)?;
            granite_moe::join_blocks(&mut blocks).map_err(fail)?;
        }
        Ok(Self {
            origin: path.into(),
            tensors,
            mapped: BTreeMap::new(),
            files: Vec::new(),
            blocks,
            storage: Dtype::F32,
            quantize: None,
            quantize_embeddings: None,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
            || self.mapped.contains_key(name)
            || self.blocks.contains_key(name)
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
        match (self.blocks.remove(name), format) {
            (Some(b), _) if [b.rows, b.cols] == shape => Ok(FrozenMatrix::Blocks(b)),
            (Some(b), _) => Err(self.wrong_shape(name, &[b.rows, b.cols], &shape)),
            (None, Some(format)) => self.quantized(name, key, format, shape),
            (None, None) => Ok(FrozenMatrix::Dense(self.take(name, &shape)?, dense)),
        }
    }

    /// Matrix `name` quantised into `format`'s blocks (llama.cpp's fallback where rows are not
    /// whole super-blocks); `key` names the setting in errors. It is read (a mapped matrix) and
    /// quantised [`QUANTIZED_ROWS`] values at a time, each chunk's blocks appended in place, so
    /// quantising at load never holds a whole matrix in f32 or in ggml's bytes.
    fn quantized(
        &mut self,
        name: &str,
        key: &str,
        format: BlockFormat,
        shape: [usize; 2],
    ) -> Result<FrozenMatrix, WeightsError> {
        let origin = self.origin.clone();
        let fail = |e: String| {
            WeightsError::format(&origin, format!("tensor `{name}`: {key} = {format:?}: {e}"))
        };
        let [rows, cols] = shape;
        let format = for_rows_of(format, cols);
        enum Source {
            Mapped(Mapped),
            Read(HostTensor),
        }
        let source = match self.mapped.remove(name) {
            Some(m) if m.shape != shape => return Err(self.wrong_shape(name, &m.shape, &shape)),
            Some(m) => Source::Mapped(m),
            None => Source::Read(self.take(name, &shape)?),
        };
        let per_chunk = (QUANTIZED_ROWS / cols).max(1);
        let mut blocks = BlockMatrix::with_capacity(format, rows, cols);
        for first in (0..rows).step_by(per_chunk) {
            let n = per_chunk.min(rows - first);
            let values = match &source {
                Source::Mapped(m) => {
                    let map = &self.files[m.file].map;
                    let (start, len) = (m.start + first * (m.len / rows), n * (m.len / rows));
                    let values = decode(m.dtype, &map[start..start + len])
                        .expect("dtypes are checked when the file is read");
                    release_pages(map, start, len);
                    Cow::Owned(values)
                }
                Source::Read(t) => Cow::Borrowed(&t.values[first * cols..(first + n) * cols]),
            };
            let bytes = quantize_rows(format, &values, cols).map_err(fail)?;
            blocks.append_rows(BlockMatrix::from_ggml(format, &bytes, n, cols).map_err(fail)?);
        }
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
            None if self.mapped.contains_key(name) => self.decode(name),
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

    /// Mapped tensor `name`'s values, removed from the map; the file's pages holding it are let
    /// go (a read-only file mapping reads them again if ever touched).
    fn decode(&mut self, name: &str) -> HostTensor {
        let m = self.mapped.remove(name).expect("a mapped tensor");
        let map = &self.files[m.file].map;
        // A chunk at a time, each chunk's pages let go once read: a vocabulary-sized matrix
        // does not hold its file pages beside its values (0.93 GB each at 1.5B).
        let element = m.len / m.shape.iter().product::<usize>().max(1);
        let chunk = QUANTIZED_ROWS * element.max(1);
        let mut values = Vec::with_capacity(m.len / element.max(1));
        for start in (m.start..m.start + m.len).step_by(chunk) {
            let len = chunk.min(m.start + m.len - start);
            values.extend(
                decode(m.dtype, &map[start..start + len])
                    .expect("dtypes are checked when the file is read"),
            );
            release_pages(map, start, len);
        }
        HostTensor {
            shape: m.shape,
            values,
        }
    }

    /// Every tensor not yet taken, by name (sorted).
    pub fn into_entries(mut self) -> Vec<(String, HostTensor)> {
        for (name, b) in std::mem::take(&mut self.blocks) {
            self.tensors.insert(name, dequantized(&b));
        }
        let names: Vec<String> = self.mapped.keys().cloned().collect();
        for name in names {
            let t = self.decode(&name);
            self.tensors.insert(name, t);
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
        let mapped = self
            .mapped
            .into_iter()
            .map(|(k, t)| (k.strip_prefix(prefix).map_or(k.clone(), String::from), t))
            .collect();
        Self {
            origin: self.origin,
            tensors,
            mapped,
            files: self.files,
            blocks,
            storage: self.storage,
            quantize: self.quantize,
            quantize_embeddings: self.quantize_embeddings,
        }
    }

    /// Splits 3-D tensor `name` ([n, rows, cols]; transformers 5's fused experts) into n
    /// matrices named `part(i)`, without reading it: a mapped tensor becomes n mapped slices.
    pub fn unstack(
        &mut self,
        name: &str,
        shape: [usize; 3],
        part: impl Fn(usize) -> String,
    ) -> Result<(), WeightsError> {
        let [n, rows, cols] = shape;
        match self.mapped.remove(name) {
            Some(m) if m.shape != shape => Err(self.wrong_shape(name, &m.shape, &shape)),
            Some(m) => {
                let len = m.len / n.max(1);
                for i in 0..n {
                    let slice = Mapped {
                        start: m.start + i * len,
                        len,
                        shape: vec![rows, cols],
                        ..m
                    };
                    self.mapped.insert(part(i), slice);
                }
                Ok(())
            }
            None => {
                let t = self.take(name, &shape)?;
                for (i, values) in t.values.chunks_exact(rows * cols).enumerate() {
                    let shape = vec![rows, cols];
                    let values = values.to_vec();
                    self.tensors.insert(part(i), HostTensor { shape, values });
                }
                Ok(())
            }
        }
    }

    /// The names of the tensors not yet taken.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = (self.tensors.keys())
            .chain(self.mapped.keys())
            .chain(self.blocks.keys())
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Removes and returns `name` whatever its shape.
    pub fn take_any(&mut self, name: &str) -> Result<HostTensor, WeightsError> {
        let shape = match (
            self.mapped.get(name),
            self.tensors.get(name),
            self.blocks.get(name),
        ) {
            (Some(m), _, _) => m.shape.clone(),
            (_, Some(t), _) => t.shape.clone(),
            (_, _, Some(b)) => vec![b.rows, b.cols],
            _ => Vec::new(),
        };
        self.take(name, &shape)
    }

    /// Adds a tensor (one a caller derived from others it took).
    pub fn insert(&mut self, name: String, t: HostTensor) {
        self.tensors.insert(name, t);
    }

    /// Drops a tensor the model knowingly does not use (e.g. a tied `lm_head.weight` copy).
    pub fn ignore(&mut self, name: &str) {
        self.tensors.remove(name);
        self.mapped.remove(name);
        self.blocks.remove(name);
    }

    /// Fails if any tensor was neither taken nor ignored: it would be silently lost otherwise.
    pub fn finish(self) -> Result<(), WeightsError> {
        if self.tensors.is_empty() && self.mapped.is_empty() && self.blocks.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.extend(self.mapped.keys().map(String::as_str));
        names.extend(self.blocks.keys().map(String::as_str));
        names.sort();
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

/// Values a mapped tensor is read in, at most (a matrix quantised at load: whole rows, at least
/// one).
const QUANTIZED_ROWS: usize = 1 << 20;

/// Lets the mapped file's pages in `start..start + len` go from this process's memory once read
/// (they count in its resident set until the kernel needs them back).
fn release_pages(map: &memmap2::Mmap, start: usize, len: usize) {
    // SAFETY: the mapping is read-only and file-backed, so dropping its pages loses nothing: a
    // later read faults them in from the file again.
    let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, len) };
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
    for (name, view) in safetensors_views(file)? {
        let values = decode(view.dtype(), view.data()).expect("checked by safetensors_views");
        let shape = view.shape().to_vec();
        visit(name, HostTensor { shape, values })?;
    }
    Ok(())
}

/// The weights of a safetensors file (integer buffers such as BERT's `position_ids` are not
/// weights and are left out), each in a dtype [`decode`] reads.
fn safetensors_views(file: &StFile) -> Result<Vec<(String, TensorView<'_>)>, WeightsError> {
    let st = SafeTensors::deserialize(&file.map).map_err(|e| {
        WeightsError::format(&file.path, format!("not a valid safetensors file: {e}"))
    })?;
    let mut views = Vec::new();
    for (name, view) in st.tensors() {
        match view.dtype() {
            StDtype::F32 | StDtype::F16 | StDtype::BF16 => views.push((name, view)),
            StDtype::I64 | StDtype::I32 => {}
            other => {
                return Err(WeightsError::format(
                    &file.path,
                    format!("tensor `{name}` has dtype {other:?}; f32, f16 and bf16 are read"),
                ));
            }
        }
    }
    Ok(views)
}

/// Little-endian f32, f16 or bf16 bytes as f32 values; None for another dtype.
fn decode(dtype: StDtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
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
        _ => return None,
    })
}

fn read_gguf(file: &GgufFile, visit: &mut Visit) -> Result<(), WeightsError> {
    let mut granite = granite_moe::is_granite_moe(file).then(ExpertJoin::default);
    for tensor in &file.tensors {
        for (name, t) in gguf_tensor(file, tensor, &mut granite)? {
            visit(name, t)?;
        }
    }
    match granite {
        Some(join) => join
            .finish()
            .map_err(|e| WeightsError::format(&file.path, e)),
        None => Ok(()),
    }
}

/// [`visit_gguf_tensor`], but a GraniteMoE file's stacked experts as its checkpoints hold them
/// (`granite`: the file's [`ExpertJoin`]).
fn gguf_tensor(
    file: &GgufFile,
    tensor: &GgufTensor,
    granite: &mut Option<ExpertJoin>,
) -> Result<Vec<(String, HostTensor)>, WeightsError> {
    let Some(join) = granite.as_mut().filter(|_| tensor.dims.len() == 3) else {
        return visit_gguf_tensor(file, tensor);
    };
    let fail = |e: String| WeightsError::format(&file.path, e);
    let t = hf_tensor(file, tensor)?.ok_or_else(|| {
        fail(format!(
            "tensor `{}` has no GraniteMoE counterpart",
            tensor.name
        ))
    })?;
    Ok(join.join(t).map_err(fail)?.into_iter().collect())
}

/// One GGUF tensor dequantised in the HF basis (a stacked expert tensor as one matrix per
/// expert); nothing for `rope_freqs` (recomputed from the config, as transformers does); an
/// error for a tensor these architectures do not have.
fn visit_gguf_tensor(
    file: &GgufFile,
    tensor: &GgufTensor,
) -> Result<Vec<(String, HostTensor)>, WeightsError> {
    match hf_tensor(file, tensor)? {
        Some(t) => {
            let slices = match t.shape.as_slice() {
                &[experts, _, _] => expert_slices(&t.name, experts),
                _ => None,
            };
            let Some(names) = slices else {
                let (shape, values) = (t.shape, t.values);
                return Ok(vec![(t.name, HostTensor { shape, values })]);
            };
            let shape = t.shape[1..].to_vec();
            let each = shape.iter().product::<usize>().max(1);
            Ok(names
                .into_iter()
                .zip(t.values.chunks_exact(each))
                .map(|(name, values)| {
                    let (shape, values) = (shape.clone(), values.to_vec());
                    (name, HostTensor { shape, values })
                })
                .collect())
        }
        // RoPE tables HF recomputes from config (Llama 3's factors, Phi-3's LongRoPE ones): read
        // by `DecoderConfig::from_gguf`.
        None if matches!(
            tensor.name.as_str(),
            "rope_freqs.weight" | "rope_factors_long.weight" | "rope_factors_short.weight"
        ) =>
        {
            Ok(Vec::new())
        }
        None => Err(WeightsError::format(
            &file.path,
            format!("tensor `{}` has no Llama/Qwen2 counterpart", tensor.name),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::quantize::quantize;
    use crate::weights::safetensors::write;

    /// A matrix quantised at load from the mapped file, a few rows at a time and rows in
    /// parallel, is the matrix quantised whole, byte for byte: several chunks and a part.
    #[test]
    fn a_mapped_matrix_quantised_in_chunks_equals_it_quantised_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let (rows, cols) = (1100, 2048); // 512 rows a chunk
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37).sin() * (1.0 + (i % 7) as f32))
            .collect();
        let shape = vec![rows, cols];
        let matrix = HostTensor {
            shape,
            values: values.clone(),
        };
        write(&path, &[("w".into(), matrix)], Dtype::F32, &[]).unwrap();
        for format in [BlockFormat::Q4K, BlockFormat::Q6K, BlockFormat::Q8_0] {
            let mut read = HostTensors::read(&path)
                .unwrap()
                .quantizing_frozen(Some(format));
            let FrozenMatrix::Blocks(got) = read.take_frozen("w", [rows, cols]).unwrap() else {
                panic!("{format:?}: not quantised");
            };
            read.finish().unwrap();
            let bytes = quantize(format, &values).unwrap();
            let want = BlockMatrix::from_ggml(format, &bytes, rows, cols).unwrap();
            assert_eq!(got.words, want.words, "{format:?}");
            assert_eq!(got.scales, want.scales, "{format:?}");
            assert_eq!(got.offsets, want.offsets, "{format:?}");
        }
    }
}
