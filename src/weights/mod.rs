//! Checkpoint files → named tensors. `gguf` and `safetensors` read headers with every size
//! checked against the file; [`Inventory`] lists any model file or directory uniformly for
//! `inspect` and `plan`. Knows file formats, not architectures.

pub mod blocks;
pub mod dequant;
pub mod ggml_type;
pub mod gguf;
pub mod gguf_names;
pub mod gguf_writer;
pub mod granite_moe;
pub mod host;
pub mod pretokenizer;
pub mod quantize;
pub mod safetensors;
pub mod tensor;
pub mod tokenizer;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Format { path: PathBuf, detail: String },
}

impl WeightsError {
    pub fn format(path: &Path, detail: String) -> Self {
        Self::Format {
            path: path.into(),
            detail,
        }
    }
}

/// One tensor as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    /// In the file's own order: PyTorch order for safetensors, ggml order for GGUF.
    pub shape: Vec<u64>,
    /// The shard holding it, for sharded directories.
    pub file: Option<String>,
}

impl TensorEntry {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// Everything `inspect` shows of a model file or directory.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// `gguf v3`, `safetensors`, or `safetensors (N shards)`.
    pub format: String,
    pub files: Vec<PathBuf>,
    /// Format metadata (GGUF key/values, safetensors `__metadata__`, config.json scalars).
    pub metadata: Vec<(String, String)>,
    pub tensors: Vec<TensorEntry>,
    /// How `shape` is ordered, for the listing's header.
    pub shape_order: &'static str,
}

impl Inventory {
    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(TensorEntry::n_elements).sum()
    }

    /// Lists a `.gguf` or `.safetensors` file, or an HF-layout model directory.
    pub fn read(path: &Path) -> Result<Self, WeightsError> {
        if path.is_dir() {
            return Self::from_dir(path);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("gguf") => Self::from_gguf(path),
            Some("safetensors") => {
                Self::from_safetensors(vec![safetensors::StFile::open(path)?], Vec::new())
            }
            _ => Err(WeightsError::format(
                path,
                "not a .gguf or .safetensors file, nor a model directory".into(),
            )),
        }
    }

    fn from_gguf(path: &Path) -> Result<Self, WeightsError> {
        let file = gguf::GgufFile::open(path)?;
        let metadata = file
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let tensors = file
            .tensors
            .iter()
            .map(|t| TensorEntry {
                name: t.name.clone(),
                dtype: t.ggml_type.to_string(),
                shape: t.dims.clone(),
                file: None,
            })
            .collect();
        Ok(Self {
            format: format!("gguf v{}", file.version),
            files: vec![path.into()],
            metadata,
            tensors,
            shape_order: "ggml order, innermost first",
        })
    }

    fn from_dir(dir: &Path) -> Result<Self, WeightsError> {
        let config_path = dir.join("config.json");
        let mut metadata = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&config_path) {
            let config: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| WeightsError::format(&config_path, format!("invalid JSON: {e}")))?;
            for (k, v) in config.as_object().into_iter().flatten() {
                if !v.is_object() {
                    metadata.push((format!("config.{k}"), v.to_string()));
                }
            }
        }
        Self::from_safetensors(safetensors::open_dir(dir)?, metadata)
    }

    fn from_safetensors(
        files: Vec<safetensors::StFile>,
        mut metadata: Vec<(String, String)>,
    ) -> Result<Self, WeightsError> {
        let sharded = files.len() > 1;
        let mut tensors = Vec::new();
        for file in &files {
            let shard = file
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            metadata.extend(file.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
            tensors.extend(file.tensors.iter().map(|t| TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.clone(),
                file: if sharded { shard.clone() } else { None },
            }));
        }
        tensors.sort_by(|a, b| {
            safetensors::natural_key(&a.name).cmp(&safetensors::natural_key(&b.name))
        });
        Ok(Self {
            format: if sharded {
                format!("safetensors ({} shards)", files.len())
            } else {
                "safetensors".into()
            },
            files: files.iter().map(|f| f.path.clone()).collect(),
            metadata,
            tensors,
            shape_order: "row-major, outermost first",
        })
    }
}
