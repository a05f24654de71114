//! The PEFT adapter folder — `adapter_config.json` + `adapter_model.safetensors` (PEFT key
//! names, f32/bf16/f16, `{"format": "pt"}` metadata) + a README model card, and a classifier's
//! `classifier.json` — as `save_pretrained` writes it, so PEFT, vLLM, TGI and LoRAX load it as it
//! is; and its config read back (`model::adapters` puts a folder's tensors on a model). Every
//! file is written atomically (temp + fsync + rename): a crash leaves the old file or the new one.

use std::path::{Path, PathBuf};

use super::config::{ConfigError, PeftConfig};
use crate::dtype::Dtype;
use crate::recipe::{LoraSection, Pooling};
use crate::weights::WeightsError;
use crate::weights::safetensors;
use crate::weights::tensor::HostTensor;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PiSSA / OLoRA checkpoints: the adapters as initialised (PEFT keys), which the export to a
/// plain LoRA subtracts ([`super::conversion`]).
pub const INITIAL_WEIGHTS_FILE: &str = "initial_adapter_model.safetensors";
/// A classifier's labels (id2label / label2id as transformers' config.json writes them) and
/// pooling. PEFT's own config has no place for them: it warns on and drops unknown keys.
pub const CLASS_MAP_FILE: &str = "classifier.json";

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
    #[error("{}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
}

/// Writes `adapters` (PEFT keys) in `dtype` with `config` (and a model card) into `dir`.
pub fn write(
    dir: &Path,
    adapters: &[(String, HostTensor)],
    dtype: Dtype,
    config: &PeftConfig,
    readme: Option<&str>,
) -> Result<(), PeftError> {
    std::fs::create_dir_all(dir).map_err(|source| PeftError::Io {
        path: dir.into(),
        source,
    })?;
    safetensors::write(
        &dir.join(WEIGHTS_FILE),
        adapters,
        dtype,
        &[("format", "pt")],
    )?;
    write_text(&dir.join(CONFIG_FILE), &config.to_json())?;
    if let Some(text) = readme {
        write_text(&dir.join("README.md"), text)?;
    }
    Ok(())
}

/// What `classifier.json` holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassMap {
    pub id2label: std::collections::BTreeMap<String, String>,
    pub label2id: std::collections::BTreeMap<String, u32>,
    pub pooling: Pooling,
}

impl ClassMap {
    /// The map of `labels`, in logit order.
    pub fn new(labels: &[String], pooling: Pooling) -> Self {
        Self {
            id2label: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
            label2id: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as u32))
                .collect(),
            pooling,
        }
    }

    /// The labels in id order.
    pub fn labels(&self) -> Vec<String> {
        let mut by_id: Vec<(u32, &String)> = self.label2id.iter().map(|(l, &i)| (i, l)).collect();
        by_id.sort();
        by_id.into_iter().map(|(_, l)| l.clone()).collect()
    }
}

/// Writes `classifier.json` into `dir`.
pub fn write_class_map(dir: &Path, map: &ClassMap) -> Result<(), PeftError> {
    let json = serde_json::to_string_pretty(map).expect("plain data serialises") + "\n";
    write_text(&dir.join(CLASS_MAP_FILE), &json)
}

/// Reads `classifier.json` of a classifier's adapter folder.
pub fn read_class_map(dir: &Path) -> Result<ClassMap, PeftError> {
    let path = dir.join(CLASS_MAP_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| PeftError::Io {
        path: path.clone(),
        source,
    })?;
    let map: ClassMap = serde_json::from_str(&text).map_err(|e| PeftError::Invalid {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let ids: Vec<u32> = map.label2id.values().copied().collect();
    if map.label2id.len() < 2 || (0..map.label2id.len() as u32).any(|i| !ids.contains(&i)) {
        return Err(PeftError::Invalid {
            path,
            detail: "label2id must number at least two labels 0, 1, …".into(),
        });
    }
    Ok(map)
}

fn write_text(path: &Path, text: &str) -> Result<(), PeftError> {
    crate::atomic::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes())).map_err(
        |source| PeftError::Io {
            path: path.into(),
            source,
        },
    )
}

/// The config of the PEFT folder `dir`.
pub fn read_config(dir: &Path) -> Result<PeftConfig, PeftError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| PeftError::Io {
        path: path.clone(),
        source,
    })?;
    PeftConfig::from_json(&text).map_err(|source| PeftError::Config { path, source })
}

/// The config of the PEFT folder `dir` and the `[lora]` section that rebuilds its adapters; an
/// error when lora-tune's adapters cannot represent them.
pub fn read_lora(dir: &Path) -> Result<(PeftConfig, LoraSection), PeftError> {
    let config = read_config(dir)?;
    let lora = config.lora_section().map_err(|source| PeftError::Config {
        path: dir.join(CONFIG_FILE),
        source,
    })?;
    Ok((config, lora))
}
