//! A decoder's shape read from a GGUF file's `<arch>.*` metadata and RoPE tensors instead of
//! config.json: the key names llama.cpp's converter writes per architecture, and every key that
//! would change the computation read or refused by name.

use super::decoder_config::{
    DecoderConfig, Deltas, Family, LongRope, NormPlacement, QkNorm, RopeScaling, SlidingWindow,
};
use super::mlp::{Activation, LLAMA_PROJECTIONS, MIXTRAL_PROJECTIONS};
use super::moe::{ExpertLayout, MoeConfig, Routing};
use crate::weights::WeightsError;
use crate::weights::gguf::{GgufFile, MetaValue};

impl DecoderConfig {
    /// Reads a GGUF file's `<arch>.*` metadata (llama, qwen2, qwen3, phi3, granite, olmo2,
    /// gemma2, gemma3), as llama.cpp's converter writes it and llama.cpp reads it.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, WeightsError> {
        let err = |detail: String| WeightsError::format(&file.path, detail);
        let arch = file
            .get("general.architecture")
            .and_then(MetaValue::as_str)
            .unwrap_or("?");
        let family = match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            "phi3" => Family::Phi3,
            "granite" => Family::Granite,
            "olmo2" => Family::Olmo2,
            "gemma2" => Family::Gemma2,
            "gemma3" => Family::Gemma3,
            "qwen3moe" => Family::Qwen3Moe,
            "qwen2moe" => Family::Qwen2Moe,
            "olmoe" => Family::Olmoe,
            "granitemoe" => Family::GraniteMoe,
            _ => {
                return Err(err(format!(
                    "GGUF architecture `{arch}` is not supported (llama, qwen2, qwen3, phi3, granite, olmo2, gemma2, gemma3, and the mixtures of experts qwen3moe, qwen2moe, olmoe, granitemoe and llama with experts (Mixtral) are)"
                )));
            }
        };
        let int = |key: &str| {
            file.get(&format!("{arch}.{key}"))
                .and_then(MetaValue::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| err(format!("{arch}.{key} is missing")))
        };
        let float = |key: &str| match file.get(&format!("{arch}.{key}")) {
            Some(MetaValue::F32(v)) => Some(f64::from(*v)),
            Some(MetaValue::F64(v)) => Some(*v),
            _ => None,
        };
        let vocab_size = match file.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(tokens)) => tokens.len(),
            _ => int("vocab_size")?,
        };
        let hidden_size = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let has = |name: &str| file.tensors.iter().any(|t| t.name == name);
        // Llama 3.1+ GGUFs carry their RoPE scaling as a tensor of per-frequency divisors.
        let rope_scaling = match file.tensors.iter().find(|t| t.name == "rope_freqs.weight") {
            Some(t) => RopeScaling::FreqFactors(file.dequantize(t)?),
            None => RopeScaling::None,
        };
        // Metadata that changes the computation and is not implemented: refused by name.
        let text = |key: &str| {
            file.get(&format!("{arch}.{key}"))
                .and_then(MetaValue::as_str)
        };
        let kind = text("rope.scaling.type").filter(|k| *k != "none");
        let factor = float("rope.scaling.factor").filter(|f| *f != 0.0 && *f != 1.0);
        // Gemma 3's global layers: linear scaling (llama.cpp leaves its window layers unscaled).
        let gemma3_linear = family == Family::Gemma3 && kind.is_none_or(|k| k == "linear");
        let rope_scaling = match (kind, factor) {
            (_, Some(factor)) if gemma3_linear => RopeScaling::Linear { factor },
            (Some(kind), _) if !gemma3_linear => {
                return Err(err(format!(
                    "{arch}.rope.scaling.type = {kind:?}: RoPE scaling from GGUF metadata is implemented for gemma3 (linear) only; use the model's HF directory"
                )));
            }
            (_, Some(factor)) => {
                return Err(err(format!(
                    "{arch}.rope.scaling.factor = {factor}: RoPE scaling from GGUF metadata is implemented for gemma3 (linear) only; use the model's HF directory"
                )));
            }
            _ => rope_scaling,
        };
        let present = |key: &str| int(key).ok();
        let layers = int("block_count")?;
        let moe = match present("expert_count").filter(|&n| n > 0) {
            Some(experts) => Some(gguf_moe(file, arch, experts, layers)?),
            None if family.is_moe() => {
                return Err(err(format!("{arch}.expert_count is missing")));
            }
            None => None,
        };
        let family = match (family, &moe) {
            (Family::Llama, Some(_)) => Family::Mixtral,
            (family, Some(_)) if !family.is_moe() => {
                return Err(err(format!(
                    "{arch}.expert_count: experts in a `{arch}` file are not read (llama with experts, qwen3moe, qwen2moe, olmoe and granitemoe are)"
                )));
            }
            (family, _) => family,
        };
        // As llama.cpp: the head width is key_length (default hidden / heads); RoPE's
        // dimension_count may cover only part of it.
        let head_dim = present("attention.key_length").unwrap_or(hidden_size / heads.max(1));
        let rotary_dim = present("rope.dimension_count").filter(|&r| r != head_dim);
        if let (Some(rotary), false) = (rotary_dim, family == Family::Phi3) {
            // llama.cpp's converter permutes a `llama` file's Q/K rows over the whole head.
            return Err(err(format!(
                "{arch}.rope.dimension_count = {rotary} with heads of {head_dim}: partial rotary embeddings are implemented for phi3 files only"
            )));
        }
        // Phi-3's LongRoPE: the factor tensors and the attention factor.
        let factors = |name: &str| -> Result<Option<Vec<f64>>, WeightsError> {
            match file.tensors.iter().find(|t| t.name == name) {
                Some(t) => Ok(Some(
                    file.dequantize(t)?.into_iter().map(f64::from).collect(),
                )),
                None => Ok(None),
            }
        };
        let rope_scaling = match (
            factors("rope_factors_short.weight")?,
            factors("rope_factors_long.weight")?,
        ) {
            (Some(short_factor), Some(long_factor)) => RopeScaling::LongRope(LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: present("rope.scaling.original_context_length")
                    .ok_or_else(|| err(format!("{arch}.rope.scaling.original_context_length is missing for its LongRoPE factors")))?,
                attention_factor: float("rope.scaling.attn_factor").unwrap_or(1.0),
            }),
            (None, None) => rope_scaling,
            _ => {
                return Err(err(
                    "rope_factors_short.weight and rope_factors_long.weight come together".into(),
                ));
            }
        };
        let gemma = matches!(family, Family::Gemma2 | Family::Gemma3);
        let sliding_window = if gemma {
            gemma_window(file, arch, family, layers)?
        } else {
            present("attention.sliding_window")
                .filter(|&w| w > 0)
                .map(|w| SlidingWindow::everywhere(w, layers))
        };
        let gemma_deltas = |d: Deltas| -> Deltas {
            // As llama.cpp: scores scaled by head_dim^-½, or (hidden / heads)^-½ for the 27B
            // models (46 Gemma 2 / 62 Gemma 3 layers) — what each size's query_pre_attn_scalar is.
            let big = layers == if family == Family::Gemma2 { 46 } else { 62 };
            let scaled_dim = if big { hidden_size / heads } else { head_dim };
            let positive = |v: Option<f64>| v.filter(|&c| c > 0.0);
            Deltas {
                norms: NormPlacement::Sandwich,
                // The converter stores 1 + w; `gguf_names` takes the one off again.
                norm_weight_offset: true,
                embedding_multiplier: (hidden_size as f64).sqrt(),
                attention_scale: Some((scaled_dim as f64).powf(-0.5)),
                // llama.cpp's defaults where the keys are absent: Gemma 2 caps at 50 and 30.
                attention_softcap: (family == Family::Gemma2)
                    .then(|| float("attn_logit_softcapping").unwrap_or(50.0))
                    .and_then(|c| positive(Some(c))),
                logit_softcap: positive(
                    float("final_logit_softcapping").or((family == Family::Gemma2).then_some(30.0)),
                ),
                activation: Activation::GeluTanh,
                // Window layers' RoPE base: Gemma 3's own (10⁴ by default), Gemma 2's the global.
                local_rope_theta: match family {
                    Family::Gemma3 => Some(float("rope.freq_base_swa").unwrap_or(10_000.0)),
                    _ => float("rope.freq_base_swa"),
                },
                ..d
            }
        };
        let config = Self {
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: int("context_length").unwrap_or(2048),
            tie_word_embeddings: !has("output.weight"),
            qkv_bias: has("blk.0.attn_q.bias"),
            moe,
            deltas: Deltas {
                sliding_window,
                // q/k RMSNorms: per head (Qwen3: head_dim wide) or over the projection (OLMo2).
                qk_norm: match file
                    .tensors
                    .iter()
                    .find(|t| t.name == "blk.0.attn_q_norm.weight")
                {
                    Some(t) if t.n_elements() == head_dim as u64 => QkNorm::PerHead,
                    Some(_) => QkNorm::Projection,
                    None => QkNorm::None,
                },
                // OLMo2 normalises after each block: post_attention_norm / post_ffw_norm only.
                norms: if has("blk.0.post_ffw_norm.weight") && !has("blk.0.attn_norm.weight") {
                    NormPlacement::Post
                } else {
                    NormPlacement::Pre
                },
                // Granite's scalars, as llama.cpp's converter names them.
                embedding_multiplier: float("embedding_scale").unwrap_or(1.0),
                attention_scale: matches!(family, Family::Granite | Family::GraniteMoe)
                    .then(|| float("attention.scale").unwrap_or(1.0)),
                residual_multiplier: float("residual_scale").unwrap_or(1.0),
                logits_scaling: float("logit_scale").unwrap_or(1.0),
                fused_projections: has("blk.0.attn_qkv.weight"),
                rotary_dim,
                ..Deltas::default()
            },
            family,
        };
        let config = if gemma {
            Self {
                deltas: gemma_deltas(config.deltas),
                ..config
            }
        } else {
            config
        };
        config.validated(&file.path)
    }
}

/// A mixture-of-experts file's routing and experts as llama.cpp reads them: every layer sparse
/// (`ffn_gate_inp` in each; llama.cpp has no dense layers for these architectures), the top
/// k renormalised as llama.cpp hard-codes it per architecture (`qwen3moe` and `llama`
/// (Mixtral) yes, `qwen2moe` and `olmoe` no), each expert `expert_feed_forward_length` wide
/// (`feed_forward_length` where the converter writes only that: OLMoE, Mixtral), Qwen2-MoE's
/// shared expert `expert_shared_feed_forward_length` wide.
fn gguf_moe(
    file: &GgufFile,
    arch: &str,
    num_experts: usize,
    layers: usize,
) -> Result<MoeConfig, WeightsError> {
    let err = |detail: String| WeightsError::format(&file.path, detail);
    let int = |key: &str| {
        file.get(&format!("{arch}.{key}"))
            .and_then(MetaValue::as_u64)
            .map(|v| v as usize)
    };
    let top_k = int("expert_used_count")
        .ok_or_else(|| err(format!("{arch}.expert_used_count is missing")))?;
    if top_k == 0 || top_k > num_experts {
        return Err(err(format!(
            "{arch}.expert_used_count = {top_k} of {num_experts} experts: expected 1 to {num_experts}"
        )));
    }
    let expert_intermediate_size = int("expert_feed_forward_length")
        .or_else(|| int("feed_forward_length"))
        .ok_or_else(|| err(format!("{arch}.expert_feed_forward_length is missing")))?;
    let granite = arch == "granitemoe";
    if let (true, Some(width)) = (granite, int("expert_shared_feed_forward_length")) {
        return Err(err(format!(
            "{arch}.expert_shared_feed_forward_length = {width}: this is a GraniteMoeShared model (a shared expert beside the routed ones), which is not implemented; GraniteMoE without one is"
        )));
    }
    let has = |name: String| file.tensors.iter().any(|t| t.name == name);
    if let Some(dense) = (0..layers).find(|l| !has(format!("blk.{l}.ffn_gate_inp.weight"))) {
        return Err(err(format!(
            "layer {dense} has no router (blk.{dense}.ffn_gate_inp.weight): llama.cpp reads every layer of a `{arch}` file as a mixture of experts"
        )));
    }
    let shared = int("expert_shared_feed_forward_length");
    if shared.is_some() != has("blk.0.ffn_gate_inp_shexp.weight".into()) {
        return Err(err(format!(
            "{arch}.expert_shared_feed_forward_length and the shared expert's tensors (ffn_*_shexp, ffn_gate_inp_shexp) come together"
        )));
    }
    let mixtral = arch == "llama";
    Ok(MoeConfig {
        num_experts,
        top_k,
        expert_intermediate_size,
        // llama.cpp: a softmax over all experts, the top k renormalised — for GraniteMoE the
        // same weights as its softmax over the top k logits.
        routing: match granite {
            true => Routing::TopKSoftmax,
            false => Routing::SoftmaxTopK {
                renormalize: matches!(arch, "qwen3moe" | "llama"),
            },
        },
        shared_expert_intermediate_size: shared,
        sparse_layers: vec![true; layers],
        layout: match granite {
            true => ExpertLayout::GraniteFused,
            false => ExpertLayout::PerExpert,
        },
        block: if mixtral || granite {
            "block_sparse_moe"
        } else {
            "mlp"
        },
        names: if mixtral {
            MIXTRAL_PROJECTIONS
        } else {
            LLAMA_PROJECTIONS
        },
    })
}

/// A Gemma file's window as llama.cpp reads it: `attention.sliding_window` (Gemma 2: 4096 when
/// absent; Gemma 3: no window when absent or 0) on the layers `attention.sliding_window_pattern`
/// names — a per-layer array, or every n-th layer global (n = 2 for Gemma 2, 6 for Gemma 3 when
/// absent; the converters write neither).
fn gemma_window(
    file: &GgufFile,
    arch: &str,
    family: Family,
    layers: usize,
) -> Result<Option<SlidingWindow>, WeightsError> {
    let key = |k: &str| file.get(&format!("{arch}.{k}"));
    let size = match key("attention.sliding_window").and_then(MetaValue::as_u64) {
        Some(0) => return Ok(None),
        Some(size) => size as usize,
        None if family == Family::Gemma2 => 4096,
        None => return Ok(None),
    };
    let pattern = key("attention.sliding_window_pattern");
    let windowed: Vec<bool> = match pattern {
        Some(MetaValue::Array(flags)) => {
            let flags: Option<Vec<bool>> = flags
                .iter()
                .map(|f| match f {
                    MetaValue::Bool(b) => Some(*b),
                    other => other.as_u64().map(|v| v != 0),
                })
                .collect();
            match flags {
                Some(f) if f.len() == layers => f,
                _ => {
                    return Err(WeightsError::format(
                        &file.path,
                        format!("{arch}.attention.sliding_window_pattern: expected {layers} flags"),
                    ));
                }
            }
        }
        other => {
            let default = if family == Family::Gemma2 { 2 } else { 6 };
            let n = match other {
                Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    WeightsError::format(
                        &file.path,
                        format!("{arch}.attention.sliding_window_pattern: expected a count"),
                    )
                })?,
                None => default,
            };
            // llama_hparams::set_swa_pattern: 0 windows every layer.
            (0..layers).map(|il| n == 0 || il % n < n - 1).collect()
        }
    };
    Ok(windowed.contains(&true).then_some(SlidingWindow {
        size,
        layers: windowed,
    }))
}
