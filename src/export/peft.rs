//! The PEFT adapter folder — `adapter_config.json` + `adapter_model.safetensors` (f32, PEFT key
//! names, f32/bf16/f16, `{"format": "pt"}` metadata) + a README model card — as `save_pretrained` writes it, so
//! PEFT, vLLM, TGI and LoRAX load it as it is; and the same folder read back onto a base model
//! (`generate --adapter`, `eval --adapter`, `lora.init_from`, checkpoints). Every file is
//! written atomically (temp + fsync + rename): a crash leaves the old file or the new one.

use std::path::{Path, PathBuf};

use crate::lora::peft_config::PeftConfig;
use crate::lora::targets;
use crate::model::llama::Llama;
use crate::recipe::Dtype;
use crate::weights::WeightsError;
use crate::weights::host::HostTensor;
use crate::weights::safetensors;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

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
    PeftConfig::from_json(&text).map_err(|detail| PeftError::Invalid { path, detail })
}

/// Puts the adapters of the PEFT folder `dir` on `model` (which must have none yet): the layers
/// its config targets, with its ranks and scales, and its trained A/B.
pub fn apply(model: &mut Llama, dir: &Path) -> Result<PeftConfig, PeftError> {
    let config = read_config(dir)?;
    let invalid = |detail: String| PeftError::Invalid {
        path: dir.join(CONFIG_FILE),
        detail,
    };
    let lora = config.lora_section().map_err(invalid)?;
    let adapted =
        targets::select(&model.config.linear_sites(), &lora).map_err(|e| invalid(e.to_string()))?;
    model.attach_adapters(&adapted, &lora, 0).map_err(invalid)?;
    model.load_adapter_weights(&dir.join(WEIGHTS_FILE))?;
    Ok(config)
}
