//! OLMo 2: a Llama-family decoder that normalises after each block instead of before
//! (`post_attention_layernorm` on the attention output, `post_feedforward_layernorm` on the MLP
//! output, no `input_layernorm`) and puts an RMSNorm over the whole q and k projections before
//! RoPE. Source: transformers `models/olmo2/modeling_olmo2.py`.

use std::path::Path;

use super::decoder_config::{DecoderConfig, Deltas, Family, NormPlacement, QkNorm};
use super::llama::LlamaJson;
use crate::weights::WeightsError;

/// An OLMo2 config.json (`text`, read from `path`).
pub fn config(path: &Path, text: &str) -> Result<DecoderConfig, WeightsError> {
    let mut config = LlamaJson::parse(path, text)?.resolve(path, false)?;
    config.deltas = Deltas {
        qk_norm: QkNorm::Projection,
        norms: NormPlacement::Post,
        ..config.deltas
    };
    config.family = Family::Olmo2;
    config.validated(path)
}
