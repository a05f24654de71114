//! What a run hands back, from one entry point ([`export`]) that a training run and
//! `lora-tune export` / `merge` both call: a PEFT adapter folder (copied from a complete PEFT
//! folder such as the run's last checkpoint, in the chosen dtype), a llama.cpp LoRA GGUF
//! ([`gguf_lora`]), or a merged HF model ([`merge`]). [`servability`] says which servers will
//! load the result; [`card`] writes a run's model card. The PEFT format itself is
//! [`crate::peft`].

pub mod card;
pub mod gguf_lora;
pub mod merge;
pub mod servability;

use std::path::{Path, PathBuf};

use crate::model::decoder_config::DecoderConfig;
use crate::peft::config::PeftConfig;
use crate::peft::conversion;
use crate::peft::folder::{
    self, CLASS_MAP_FILE, CONFIG_FILE, PeftError, WEIGHTS_FILE, read_adapter_tensors,
};
use crate::peft::full_key;
use crate::recipe::ExportFormat;
use crate::source::ModelFiles;
use crate::weights::WeightsError;
use crate::weights::gguf_writer::TensorType;
use crate::weights::host::HostTensors;
use crate::weights::safetensors::StFile;

/// Merged models are sharded above this size unless asked otherwise (`--max-shard-mb`), as
/// transformers' `save_pretrained` does.
pub const DEFAULT_MAX_SHARD_MB: u64 = 5000;

/// The base model an export reads: its header for a GGUF LoRA, its weights for a merge.
pub struct Base {
    pub files: ModelFiles,
    pub config: DecoderConfig,
}

impl Base {
    /// Reads `files`' config (headers only).
    pub fn read(files: ModelFiles) -> Result<Self, WeightsError> {
        let config = crate::model::config_of(&files)?;
        Ok(Self { files, config })
    }
}

/// One export: a complete PEFT folder in, one format out.
pub struct Request<'a> {
    /// A PEFT folder: an exported one, or a checkpoint (always complete).
    pub adapter: &'a Path,
    pub format: ExportFormat,
    /// A folder for `peft` and `merged`, a `.gguf` file for `gguf`.
    pub out: &'a Path,
    /// The floats for every format; Q8_0 for `gguf` only.
    pub dtype: TensorType,
    /// Merged shards above this many bytes.
    pub max_shard_bytes: u64,
    /// Needed by `gguf` (its architecture and head counts) and `merged` (its weights).
    pub base: Option<&'a Base>,
    /// The GGUF LoRA's `general.name`.
    pub name: &'a str,
    /// A PEFT folder's README.md; None copies the adapter's own, if any.
    pub card: Option<&'a str>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub enum Exported {
    Peft {
        tensors: usize,
    },
    Gguf {
        architecture: &'static str,
        alpha: f64,
    },
    Merged(merge::Merged),
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: holds tensors that are not LoRA factors (or a SEQ_CLS head)", .0.display())]
    NotAdapters(PathBuf),
    #[error(
        "{}: a classifier adapter (task_type SEQ_CLS) exports as a PEFT folder only; GGUF LoRA and merged models are causal-LM formats",
        .0.display()
    )]
    ClassifierFormat(PathBuf),
    #[error("--format {0:?} needs the base model; pass --base MODEL")]
    NoBase(ExportFormat),
    #[error(
        "dtype q8_0 is for the gguf format; PEFT folders and merged models take f32, bf16 or f16"
    )]
    NotAFloat,
    #[error(transparent)]
    GgufLora(#[from] gguf_lora::GgufLoraError),
    #[error(transparent)]
    Merge(#[from] merge::MergeError),
}

/// Writes `request.adapter` in `request.format` to `request.out`. The caller decides whether
/// `out` may be replaced; every file is written atomically.
pub fn export(request: &Request) -> Result<Exported, ExportError> {
    let (config, _) = folder::read_lora(request.adapter)?;
    if conversion::needs_conversion(&config) {
        // PiSSA / OLoRA: every format is written from the plain-LoRA form, which loads on the
        // original base (a temp folder beside the output, removed after).
        let plain = crate::atomic::temp_path_beside(request.out);
        let exported = conversion::to_plain_lora(request.adapter, &plain)
            .map_err(ExportError::from)
            .and_then(|()| {
                export(&Request {
                    adapter: &plain,
                    ..*request
                })
            });
        let _ = std::fs::remove_dir_all(&plain);
        return exported;
    }
    let classifier = is_classifier(&config);
    if classifier && request.format != ExportFormat::Peft {
        return Err(ExportError::ClassifierFormat(request.adapter.into()));
    }
    let float = request.dtype.float();
    match request.format {
        ExportFormat::Peft => {
            let float = float.ok_or(ExportError::NotAFloat)?;
            peft_folder(request, &config, float)
        }
        ExportFormat::Gguf => {
            let base = request.base.ok_or(ExportError::NoBase(request.format))?;
            // A target_parameters folder's 3-D adapters as the per-expert ones.
            let adapters =
                read_adapter_tensors(&request.adapter.join(WEIGHTS_FILE))?.into_entries();
            gguf_lora::write(
                request.out,
                &base.config,
                adapters,
                &config,
                request.name,
                request.dtype,
            )?;
            Ok(Exported::Gguf {
                architecture: base.config.gguf_architecture(),
                alpha: gguf_lora::gguf_alpha(&config),
            })
        }
        ExportFormat::Merged => {
            let base = request.base.ok_or(ExportError::NoBase(request.format))?;
            let float = float.ok_or(ExportError::NotAFloat)?;
            let tokenizer = match &base.files {
                ModelFiles::Gguf(_) => Some(crate::model::tokenizer_of(&base.files)?),
                _ => None, // an HF directory's tokenizer files are copied as they are
            };
            let merged = merge::merge(
                &base.files,
                &base.config,
                tokenizer.as_ref(),
                request.adapter,
                request.out,
                float,
                request.max_shard_bytes,
            )?;
            Ok(Exported::Merged(merged))
        }
    }
}

/// A classifier (SEQ_CLS) saves its head in full, as PEFT's modules_to_save.
pub fn is_classifier(config: &PeftConfig) -> bool {
    config.task_type.as_deref() == Some("SEQ_CLS")
}

/// The PEFT folder: the adapter's tensors in `dtype` (a copy of the file in f32), its config,
/// a classifier's class map and the model card.
fn peft_folder(
    request: &Request,
    config: &PeftConfig,
    dtype: crate::dtype::Dtype,
) -> Result<Exported, ExportError> {
    let (from, out) = (request.adapter, request.out);
    let weights = StFile::open(&from.join(WEIGHTS_FILE))?;
    let head = |name: &str| {
        is_classifier(config)
            && ["classifier", "score"]
                .iter()
                .any(|m| name == full_key(m, "weight") || name == full_key(m, "bias"))
    };
    if !weights
        .tensors
        .iter()
        .all(|t| t.name.contains(".lora_") || head(&t.name))
    {
        return Err(ExportError::NotAdapters(weights.path.clone()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    crate::atomic::remove_stale_temps(out);
    let mut copied = vec![CONFIG_FILE, CLASS_MAP_FILE];
    if dtype == crate::dtype::Dtype::F32 {
        copied.push(WEIGHTS_FILE);
    } else {
        // Checkpoints hold f32: convert the tensors.
        let tensors = HostTensors::read(&from.join(WEIGHTS_FILE))?.into_entries();
        crate::weights::safetensors::write(
            &out.join(WEIGHTS_FILE),
            &tensors,
            dtype,
            &[("format", "pt")],
        )?;
    }
    match request.card {
        Some(card) => {
            let to = out.join(card::FILE);
            crate::atomic::write_atomic(&to, |f| std::io::Write::write_all(f, card.as_bytes()))
                .map_err(io(&to))?;
        }
        None => copied.push(card::FILE),
    }
    for name in copied {
        let source = from.join(name);
        if !source.is_file() {
            continue; // checkpoints carry no model card; LMs no classifier.json
        }
        if same_file(&source, &out.join(name)) {
            continue; // exporting a folder onto itself
        }
        let bytes = std::fs::read(&source).map_err(io(&source))?;
        let to = out.join(name);
        crate::atomic::write_atomic(&to, |f| std::io::Write::write_all(f, &bytes))
            .map_err(io(&to))?;
    }
    Ok(Exported::Peft {
        tensors: weights.tensors.len(),
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}
