//! Architectures, candle-transformers' shape: shared blocks — the frozen linear with its adapter
//! ([`linear`], [`frozen`]), norms ([`norm`]), RoPE ([`rope`]), grouped-query attention with its
//! KV cache ([`attention`]), the gated MLP ([`mlp`]), routed experts ([`moe`]) — and one small
//! file per family for its config and deltas: [`llama`], [`mistral`], [`qwen2`], [`qwen3`],
//! [`granite`] (and GraniteMoE), [`olmo2`], [`gemma2`], [`gemma3`], [`phi3`], [`qwen2_moe`],
//! [`qwen3_moe`], [`mixtral`], [`olmoe`] read into one [`decoder_config`] that the Llama-family
//! [`decoder`] is built from; [`bert`], the encoder. Sequence classification on
//! either ([`classifier`]), adapters on any ([`adapted`]), generation ([`generate`]).
//! [`load`] and [`load_classifier`] build them from resolved model files.

pub mod adapted;
pub mod attention;
pub mod bert;
pub mod classifier;
pub mod decoder;
pub mod decoder_config;
pub mod frozen;
pub mod gemma2;
pub mod gemma3;
pub mod generate;
pub mod gguf_config;
pub mod granite;
pub mod linear;
pub mod llama;
pub mod mistral;
pub mod mixtral;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod olmo2;
pub mod olmoe;
pub mod phi3;
pub mod qwen2;
pub mod qwen2_moe;
pub mod qwen3;
pub mod qwen3_moe;
pub mod rope;

use std::path::Path;

use burn::tensor::Device;

use crate::dtype::Dtype;
use crate::source::ModelFiles;
use crate::weights::WeightsError;
use crate::weights::blocks::BlockFormat;
use crate::weights::gguf::GgufFile;
use crate::weights::host::HostTensors;
use crate::weights::tokenizer::ModelTokenizer;
use bert::{Bert, BertConfig};
use classifier::{Body, ClassifierError, SequenceClassifier};
use decoder::Decoder;
use decoder_config::DecoderConfig;

/// Why a model could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {source}", path.display())]
    Classifier {
        path: std::path::PathBuf,
        source: ClassifierError,
    },
}

/// The shape of either architecture, read from headers only.
// One per run: the size difference of the variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Decoder(DecoderConfig),
    Bert(BertConfig),
}

impl ModelConfig {
    /// The linear layers adapters may sit on. Mean pooling skips BERT's pooler, so its
    /// `pooler.dense` is not among them (an adapter there would never get a gradient).
    pub fn linear_sites(
        &self,
        pooling: crate::recipe::Pooling,
    ) -> Vec<crate::lora::targets::LinearSite> {
        match self {
            Self::Decoder(c) => c.linear_sites(),
            Self::Bert(c) => {
                let mut sites = c.linear_sites();
                if pooling == crate::recipe::Pooling::Mean {
                    sites.retain(|s| s.path != format!("{}.pooler.dense", bert::PREFIX));
                }
                sites
            }
        }
    }

    pub fn parameter_count(&self) -> u64 {
        match self {
            Self::Decoder(c) => c.parameter_count(),
            Self::Bert(c) => c.parameter_count(),
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Decoder(c) => c.hidden_size,
            Self::Bert(c) => c.hidden_size,
        }
    }

    /// Parameters of a classification head over `labels` classes (BERT's `classifier` has a
    /// bias, a decoder's `score` has none).
    pub fn head_parameters(&self, labels: usize) -> u64 {
        let bias = matches!(self, Self::Bert(_)) as usize;
        (labels * (self.hidden_size() + bias)) as u64
    }

    /// One line for the console.
    pub fn describe(&self) -> String {
        match self {
            Self::Decoder(c) => {
                let dense = format!(
                    "Llama-family decoder: {} layers, hidden {}, {} heads / {} kv heads, vocab {}",
                    c.num_hidden_layers,
                    c.hidden_size,
                    c.num_attention_heads,
                    c.num_key_value_heads,
                    c.vocab_size
                );
                let Some(moe) = &c.moe else { return dense };
                let thousands = crate::lora::report::thousands;
                format!(
                    "{dense}\n       mixture of experts in {} of {} layers: {} experts of {}, top {}, {}; {} parameters, {} active per token",
                    moe.sparse_layers.iter().filter(|&&s| s).count(),
                    c.num_hidden_layers,
                    moe.num_experts,
                    moe.expert_intermediate_size,
                    moe.top_k,
                    match moe.layout {
                        moe::ExpertLayout::PerExpert => "stored per expert",
                        moe::ExpertLayout::Fused | moe::ExpertLayout::GraniteFused => {
                            "stored fused (adapted as gate_up_proj)"
                        }
                    },
                    thousands(c.parameter_count()),
                    thousands(c.active_parameters()),
                )
            }
            Self::Bert(c) => format!(
                "BERT encoder: {} layers, hidden {}, {} heads, vocab {}",
                c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.vocab_size
            ),
        }
    }
}

/// The architecture of an HF directory (config.json's `model_type`) or GGUF file (Llama only).
pub fn architecture_of(files: &ModelFiles) -> Result<ModelConfig, WeightsError> {
    if let ModelFiles::Dir(dir) = files {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| WeightsError::Io {
            path: path.clone(),
            source,
        })?;
        let model_type = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["model_type"].as_str().map(String::from));
        if model_type.as_deref() == Some("bert") {
            return Ok(ModelConfig::Bert(BertConfig::from_json(&path, &text)?));
        }
    }
    config_of(files).map(ModelConfig::Decoder)
}

/// A decoder's config.json, read by its family's file (`model_type`; none means llama).
pub fn read_decoder_config(path: &Path) -> Result<DecoderConfig, WeightsError> {
    let text = std::fs::read_to_string(path).map_err(|source| WeightsError::Io {
        path: path.into(),
        source,
    })?;
    let model_type = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["model_type"].as_str().map(String::from));
    let mut config = match model_type.as_deref().unwrap_or("llama") {
        "llama" => llama::config(path, &text),
        "mistral" => mistral::config(path, &text),
        "qwen2" => qwen2::config(path, &text),
        "qwen3" => qwen3::config(path, &text),
        "granite" => granite::config(path, &text),
        "olmo2" => olmo2::config(path, &text),
        "gemma2" => gemma2::config(path, &text),
        "gemma3_text" => gemma3::config(path, &text),
        "phi3" => phi3::config(path, &text),
        "mixtral" => mixtral::config(path, &text),
        "granitemoe" => granite::moe_config(path, &text),
        "qwen2_moe" => qwen2_moe::config(path, &text),
        "qwen3_moe" => qwen3_moe::config(path, &text),
        "olmoe" => olmoe::config(path, &text),
        other => Err(WeightsError::format(path, unsupported(other))),
    }?;
    if let (Some(moe), Some(dir)) = (&mut config.moe, path.parent()) {
        moe.layout = moe::ExpertLayout::of_checkpoint(dir)?;
        if moe.layout == moe::ExpertLayout::Fused && moe.names != mlp::LLAMA_PROJECTIONS {
            return Err(WeightsError::format(
                dir,
                "this Mixtral checkpoint holds transformers 5's fused experts (mlp.experts.gate_up_proj), which are not read for Mixtral; use the per-expert checkpoint (block_sparse_moe.experts.{e}.w1/w2/w3) that save_pretrained writes".into(),
            ));
        }
    }
    Ok(config)
}

/// Why `model_type` is refused.
fn unsupported(model_type: &str) -> String {
    let why = match model_type {
        "gpt_oss" => {
            "gpt-oss is not supported: its MXFP4 experts, router bias and attention sinks are not implemented"
        }
        "deepseek_v2" | "deepseek_v3" => {
            "DeepSeek-V2/V3 are not supported: multi-head latent attention (MLA) is not implemented"
        }
        "granitemoeshared" | "granitemoehybrid" => {
            "this mixture-of-experts family is not implemented yet (granitemoe, mixtral, qwen2_moe, qwen3_moe and olmoe are)"
        }
        _ => "",
    };
    format!(
        "model_type `{model_type}` is not a supported decoder (llama, mistral, qwen2, qwen3, granite, olmo2, gemma2, gemma3_text, phi3, granitemoe, mixtral, qwen2_moe, qwen3_moe, olmoe){}{why}",
        if why.is_empty() { "" } else { ": " }
    )
}

/// The config of an HF directory or GGUF file, reading headers only (no weights).
pub fn config_of(files: &ModelFiles) -> Result<DecoderConfig, WeightsError> {
    match files {
        ModelFiles::Gguf(path) => DecoderConfig::from_gguf(&GgufFile::open(path)?),
        ModelFiles::Dir(dir) => read_decoder_config(&dir.join("config.json")),
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

/// How a causal LM's frozen linear weights are held (`model.keep_quantized`, `model.dtype`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BaseStorage {
    /// A GGUF's block-quantised linear weights stay packed (`frozen::FrozenWeight::Blocks`).
    pub keep_quantized: bool,
    /// The decoder layers' other linear weights are quantised into these blocks at load
    /// (`model.quantize`).
    pub quantize: Option<BlockFormat>,
    /// The other linear weights are stored as this.
    pub dense: Dtype,
    /// The token embedding and an untied LM head are quantised into these blocks at load
    /// (`model.quantize_embeddings`).
    pub quantize_embeddings: Option<BlockFormat>,
}

/// A causal LM from an HF directory or a GGUF file (its tokenizer: [`tokenizer_of`]).
pub fn load(
    files: &ModelFiles,
    device: &Device,
    storage: BaseStorage,
) -> Result<Decoder, WeightsError> {
    let config = config_of(files)?;
    let weights = if storage.keep_quantized {
        HostTensors::read_keeping_blocks(files.path())?
    } else {
        HostTensors::read(files.path())?
    };
    let weights = weights
        .storing_frozen_as(storage.dense)
        .quantizing_frozen(storage.quantize)
        .quantizing_embeddings(storage.quantize_embeddings);
    Decoder::load(config, weights, device)
}

/// A sequence classifier over `labels`: a BERT encoder or a Llama-family decoder with a fresh
/// head (seeded from `seed`).
pub fn load_classifier(
    files: &ModelFiles,
    device: &Device,
    labels: Vec<String>,
    pooling: crate::recipe::Pooling,
    seed: u64,
) -> Result<SequenceClassifier, LoadError> {
    let body = match architecture_of(files)? {
        ModelConfig::Bert(config) => Body::Bert(Bert::load(
            config,
            HostTensors::read(files.path())?,
            device,
        )?),
        ModelConfig::Decoder(_) => Body::Decoder(load(files, device, BaseStorage::default())?),
    };
    SequenceClassifier::new(body, labels, pooling, seed).map_err(|source| LoadError::Classifier {
        path: files.path().into(),
        source,
    })
}

/// The model a recipe trains: a causal LM, or a sequence classifier (`model.task`).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one model per process, never in a collection
pub enum TaskModel {
    Lm(Decoder),
    Classifier(SequenceClassifier),
}

impl adapted::AdaptedModel for TaskModel {
    fn device(&self) -> &Device {
        match self {
            Self::Lm(m) => m.device(),
            Self::Classifier(m) => adapted::AdaptedModel::device(m),
        }
    }

    fn parts_mut(&mut self) -> adapted::Parts<'_> {
        match self {
            Self::Lm(m) => m.parts_mut(),
            Self::Classifier(m) => m.parts_mut(),
        }
    }

    fn set_training(&mut self, training: bool) {
        match self {
            Self::Lm(m) => m.set_training(training),
            Self::Classifier(m) => m.set_training(training),
        }
    }

    fn seed_dropout(&mut self, seed: u64) {
        match self {
            Self::Lm(m) => m.seed_dropout(seed),
            Self::Classifier(m) => m.seed_dropout(seed),
        }
    }

    fn compute_in(&mut self, dtype: Dtype) {
        match self {
            Self::Lm(m) => m.compute_in(dtype),
            Self::Classifier(m) => m.compute_in(dtype),
        }
    }
}
