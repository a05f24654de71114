//! Architectures built from config: the Llama-family decoder ([`llama`]), its config, RoPE and
//! generation; [`load`] builds one from resolved model files.

pub mod adapters;
pub mod config;
pub mod generate;
pub mod llama;
pub mod rope;

use burn::tensor::Device;

use crate::source::ModelFiles;
use crate::weights::WeightsError;
use crate::weights::gguf::GgufFile;
use crate::weights::host::HostTensors;
use crate::weights::tokenizer::ModelTokenizer;
use config::LlamaConfig;
use llama::Llama;

/// The config of an HF directory or GGUF file, reading headers only (no weights).
pub fn config_of(files: &ModelFiles) -> Result<LlamaConfig, WeightsError> {
    match files {
        ModelFiles::Gguf(path) => LlamaConfig::from_gguf(&GgufFile::open(path)?),
        ModelFiles::Dir(dir) => LlamaConfig::from_json_file(&dir.join("config.json")),
        ModelFiles::Safetensors(path) => Err(WeightsError::format(
            path,
            "a lone .safetensors file has no config.json; point at the model's directory".into(),
        )),
    }
}

/// The tokenizer alone (headers only, no weights), so data can be checked before a load.
pub fn tokenizer_of(files: &ModelFiles) -> Result<ModelTokenizer, WeightsError> {
    match files {
        ModelFiles::Gguf(path) => ModelTokenizer::from_gguf(&GgufFile::open(path)?),
        ModelFiles::Dir(dir) => ModelTokenizer::from_dir(dir),
        ModelFiles::Safetensors(path) => Err(WeightsError::format(
            path,
            "a lone .safetensors file has no tokenizer; point at the model's directory".into(),
        )),
    }
}

/// A causal LM and its tokenizer from an HF directory or a GGUF file.
pub fn load(files: &ModelFiles, device: &Device) -> Result<(Llama, ModelTokenizer), WeightsError> {
    let (config, tokenizer) = match files {
        ModelFiles::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            (
                LlamaConfig::from_gguf(&gguf)?,
                ModelTokenizer::from_gguf(&gguf)?,
            )
        }
        ModelFiles::Dir(dir) => (
            LlamaConfig::from_json_file(&dir.join("config.json"))?,
            ModelTokenizer::from_dir(dir)?,
        ),
        ModelFiles::Safetensors(path) => {
            return Err(WeightsError::format(
                path,
                "a lone .safetensors file has no config.json or tokenizer; point at the model's directory".into(),
            ));
        }
    };
    let model = Llama::load(config, HostTensors::read(files.path())?, device)?;
    Ok((model, tokenizer))
}
