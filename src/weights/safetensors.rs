//! safetensors headers: one file, or the shards a `model.safetensors.index.json` names. The file
//! is memory-mapped; the `safetensors` crate checks header length, JSON and every data offset
//! against the file size. Tensor loading and the completeness check build on this; [`write`]
//! writes adapters, optimiser state and exports.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::View;
use safetensors::{Dtype as StDtype, SafeTensors};

use super::WeightsError;
use super::tensor::HostTensor;
use crate::dtype::Dtype;

/// One tensor's header entry; `shape` is row-major, outermost first (PyTorch order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
}

/// A mapped safetensors file with its parsed header.
pub struct StFile {
    pub path: PathBuf,
    pub tensors: Vec<StTensor>,
    pub metadata: BTreeMap<String, String>,
    pub map: Mmap,
}

impl StFile {
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.into(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(WeightsError::format(
                path,
                format!("{len} bytes is too short for a safetensors header"),
            ));
        }
        // SAFETY: read-only map; see gguf.rs.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (_, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            WeightsError::format(
                path,
                format!(
                    "not a valid safetensors file ({e}); is it truncated or a Git LFS pointer?"
                ),
            )
        })?;
        let mut tensors: Vec<StTensor> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| StTensor {
                name,
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.iter().map(|&d| d as u64).collect(),
            })
            .collect();
        tensors.sort_by_cached_key(|t| natural_key(&t.name));
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(Self {
            path: path.into(),
            tensors,
            metadata,
            map,
        })
    }
}

/// The files of an HF model directory: `model.safetensors`, or the shards of the index with
/// the tensor → shard map checked against each shard's own header.
pub fn open_dir(dir: &Path) -> Result<Vec<StFile>, WeightsError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![StFile::open(&single)?]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(WeightsError::format(
            dir,
            "no model.safetensors or model.safetensors.index.json here; PyTorch .bin checkpoints are not read — convert them to safetensors first".into(),
        ));
    }
    let weight_map = read_index(&index)?;
    let mut shards: Vec<&String> = weight_map.values().collect();
    shards.sort();
    shards.dedup();
    let files = shards
        .iter()
        .map(|s| StFile::open(&dir.join(s)))
        .collect::<Result<Vec<_>, _>>()?;
    let by_shard: HashMap<&Path, &StFile> = files.iter().map(|f| (f.path.as_path(), f)).collect();
    for (tensor, shard) in &weight_map {
        let file = by_shard[dir.join(shard).as_path()];
        if !file.tensors.iter().any(|t| &t.name == tensor) {
            return Err(WeightsError::format(
                &index,
                format!("says `{tensor}` is in {shard}, but that shard has no such tensor"),
            ));
        }
    }
    Ok(files)
}

/// `weight_map` of an index file: tensor name → shard file name.
pub fn read_index(index: &Path) -> Result<BTreeMap<String, String>, WeightsError> {
    let text = std::fs::read_to_string(index).map_err(|source| WeightsError::Io {
        path: index.into(),
        source,
    })?;
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| WeightsError::format(index, format!("not a safetensors index: {e}")))?;
    for shard in parsed.weight_map.values() {
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(WeightsError::format(
                index,
                format!("shard name `{shard}` must be a plain file name"),
            ));
        }
    }
    Ok(parsed.weight_map)
}

/// Sort key that orders `layers.10` after `layers.9`.
pub fn natural_key(name: &str) -> Vec<(u64, String)> {
    name.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (u64::MAX, part.to_string()),
        })
        .collect()
}

/// Row-major f32 values as `dtype` bytes (little-endian), with the safetensors dtype tag.
pub fn encode(values: &[f32], dtype: Dtype) -> (StDtype, Vec<u8>) {
    use half::{bf16, f16};
    match dtype {
        Dtype::F32 => (
            StDtype::F32,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        Dtype::Bf16 => (
            StDtype::BF16,
            values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
        Dtype::F16 => (
            StDtype::F16,
            values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    }
}

/// Writes tensors as a safetensors file in `dtype`, atomically (temp file + fsync + rename).
/// PEFT and transformers read the `{"format": "pt"}` metadata key; pass it in `metadata`.
pub fn write(
    path: &Path,
    tensors: &[(String, HostTensor)],
    dtype: Dtype,
    metadata: &[(&str, &str)],
) -> Result<(), WeightsError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if t.shape.iter().product::<usize>() != t.values.len() {
            let message = format!(
                "tensor `{name}`: shape {:?} does not hold {} values",
                t.shape,
                t.values.len()
            );
            return Err(WeightsError::format(path, message));
        }
        views.push((name.as_str(), Encoded { tensor: t, dtype }));
    }
    let info = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    crate::atomic::write_atomic_at(path, |tmp| {
        safetensors::serialize_to_file(views, Some(info), tmp).map_err(std::io::Error::other)
    })
    .map_err(|source| WeightsError::Io {
        path: path.into(),
        source,
    })
}

/// A tensor to write, encoded into `dtype`'s bytes only when the writer asks for them: a file
/// of many tensors holds one tensor's bytes at a time (a 1.5B run's checkpoint added three
/// copies of its adapters and optimiser state when every tensor was encoded first).
struct Encoded<'a> {
    tensor: &'a HostTensor,
    dtype: Dtype,
}

impl View for Encoded<'_> {
    fn dtype(&self) -> StDtype {
        match self.dtype {
            Dtype::F32 => StDtype::F32,
            Dtype::Bf16 => StDtype::BF16,
            Dtype::F16 => StDtype::F16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(encode(&self.tensor.values, self.dtype).1)
    }

    fn data_len(&self) -> usize {
        let bytes = match self.dtype {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        };
        self.tensor.values.len() * bytes
    }
}
