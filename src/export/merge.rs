//! Folding adapters into the base: W' = W + s·B·A for every adapted layer, written as an HF
//! model directory transformers loads (safetensors, sharded with `model.safetensors.index.json`
//! above `max_shard_bytes`; config.json; tokenizer files). Streams the base tensor by tensor, so
//! peak memory is about one shard plus the adapters. From a GGUF base the output is the
//! dequantised HF layout, with config.json and tokenizer.json rebuilt from the GGUF metadata.
//! Built in a temp directory beside `out` and renamed into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype as StDtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use crate::dtype::Dtype;
use crate::lora::targets::{self, TargetError};
use crate::model::decoder_config::{DecoderConfig, Family, RopeScaling};
use crate::model::moe::{MoeConfig, Routing};
use crate::peft::folder::{
    PeftError, WEIGHTS_FILE, fused_expert_fold, read_adapter_tensors, read_lora,
};
use crate::peft::{factor_key, magnitude_key};
use crate::source::ModelFiles;
use crate::weights::WeightsError;
use crate::weights::host::{HostTensors, for_each_tensor};
use crate::weights::safetensors::encode;
use crate::weights::tensor::HostTensor;
use crate::weights::tokenizer::ModelTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error(transparent)]
    Targets(#[from] TargetError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MergeError + '_ {
    |source| MergeError::Io {
        path: path.into(),
        source,
    }
}

/// One adapter, ready to fold: s, B [out, r], A [r, in], and DoRA's magnitude m [out].
struct Fold {
    scale: f32,
    a: HostTensor,
    b: HostTensor,
    magnitude: Option<HostTensor>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Merged {
    pub tensors: usize,
    pub folded: usize,
    pub shards: usize,
    pub bytes: u64,
}

/// W += s·B·A in place; W [out, in] row-major. DoRA (PEFT's merge): then each row times
/// m / ‖row‖, the norm taken in f64 of the f32 sum.
fn fold(w: &mut HostTensor, f: &Fold) -> Result<(), String> {
    let (out, inp, r) = (f.b.shape[0], f.a.shape[1], f.a.shape[0]);
    if w.shape != [out, inp] || f.b.shape[1] != r {
        return Err(format!(
            "adapter shapes B {:?} · A {:?} do not fit the base weight {:?}",
            f.b.shape, f.a.shape, w.shape
        ));
    }
    for o in 0..out {
        let row = &mut w.values[o * inp..(o + 1) * inp];
        for k in 0..r {
            let coef = f.scale * f.b.values[o * r + k];
            let a_row = &f.a.values[k * inp..(k + 1) * inp];
            for (x, a) in row.iter_mut().zip(a_row) {
                *x += coef * a;
            }
        }
        if let Some(m) = &f.magnitude {
            let norm = row
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                .sqrt();
            let factor = (f64::from(m.values[o]) / norm) as f32;
            row.iter_mut().for_each(|x| *x *= factor);
        }
    }
    Ok(())
}

/// Adapter tensor `key` ([`HostTensors::take`]'s `saved` shape; `dims` as the model holds
/// it), or a fused expert's from the folder's per-expert gate_proj and up_proj.
fn take_factor(
    t: &mut HostTensors,
    key: &str,
    dims: [usize; 2],
    saved: Vec<usize>,
) -> Result<HostTensor, WeightsError> {
    if !t.contains(key)
        && let Some(h) = crate::peft::folder::fused_expert_factor(t, key, dims)?
    {
        return Ok(h);
    }
    t.take(key, &saved)
}

/// (`…mlp`, parameter name) of a fused 3-D experts tensor (`…mlp.experts.gate_up_proj`
/// [E, 2I, H] or `…mlp.experts.down_proj`; GraniteMoE's `…block_sparse_moe.input_linear.weight`
/// and `output_linear.weight`).
fn fused_experts<'a>(name: &'a str, t: &HostTensor) -> Option<(&'a str, &'a str)> {
    if t.shape.len() != 3 {
        return None;
    }
    if let Some(stem) = name.strip_suffix(".input_linear.weight") {
        return Some((stem, "gate_up_proj"));
    }
    if let Some(stem) = name.strip_suffix(".output_linear.weight") {
        return Some((stem, "down_proj"));
    }
    let (stem, param) = name.rsplit_once(".experts.")?;
    matches!(param, "gate_up_proj" | "down_proj").then_some((stem, param))
}

/// Folds each expert's adapter (`{stem}.experts.{e}.{param}.weight` in `folds`) into its slice
/// of the fused tensor `t` [E, out, in]; → how many were folded.
fn fold_experts(
    t: &mut HostTensor,
    folds: &BTreeMap<String, Fold>,
    stem: &str,
    param: &str,
) -> Result<usize, String> {
    let (experts, out, inp) = (t.shape[0], t.shape[1], t.shape[2]);
    let mut folded = 0;
    for e in 0..experts {
        let Some(f) = folds.get(&format!("{stem}.experts.{e}.{param}.weight")) else {
            continue;
        };
        let slice = e * out * inp..(e + 1) * out * inp;
        let mut w = HostTensor {
            shape: vec![out, inp],
            values: t.values[slice.clone()].to_vec(),
        };
        fold(&mut w, f)?;
        t.values[slice].copy_from_slice(&w.values);
        folded += 1;
    }
    Ok(folded)
}

/// Tensors of the shard being filled.
#[derive(Default)]
struct Shard {
    tensors: Vec<(String, Vec<usize>, StDtype, Vec<u8>)>,
    bytes: u64,
}

fn write_shard(path: &Path, shard: &Shard) -> Result<(), MergeError> {
    let views = shard
        .tensors
        .iter()
        .map(|(name, shape, dtype, raw)| {
            TensorView::new(*dtype, shape.clone(), raw)
                .map(|v| (name.as_str(), v))
                .map_err(|e| MergeError::Invalid(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| MergeError::Invalid(format!("{}: {e}", path.display())))?;
    crate::atomic::write_atomic(path, |f| std::io::Write::write_all(f, &bytes)).map_err(io(path))
}

/// Merges the PEFT folder `adapter` into the base `files` (config `config`; `tok` rebuilds the
/// tokenizer files of a GGUF base, an HF base's are copied) and writes the HF directory `out`.
pub fn merge(
    files: &ModelFiles,
    config: &DecoderConfig,
    tok: Option<&ModelTokenizer>,
    adapter: &Path,
    out: &Path,
    dtype: Dtype,
    max_shard_bytes: u64,
) -> Result<Merged, MergeError> {
    if matches!(files, ModelFiles::Gguf(_))
        && matches!(config.rope_scaling, RopeScaling::FreqFactors(_))
    {
        // A config.json written from such a file would lose the scaling (transformers reads
        // `rope_scaling` parameters, not per-frequency factors): refused, not silently dropped.
        return Err(MergeError::Invalid(
            "the GGUF base scales RoPE with rope_freqs.weight, which config.json cannot express; merge onto the model's HF directory (its config.json has the rope_scaling)".into(),
        ));
    }
    let local = config.deltas.local_rope_theta;
    if config.family == Family::Gemma2 && local.is_some_and(|t| t != config.rope_theta) {
        // Gemma2Config has one RoPE base for every layer.
        return Err(MergeError::Invalid(format!(
            "the gemma2 GGUF base gives its window layers their own RoPE base ({}), which a Gemma 2 config.json cannot express; merge onto the model's HF directory",
            local.unwrap_or_default()
        )));
    }
    let (_, lora) = read_lora(adapter)?;
    let adapted = targets::select(&config.linear_sites(), &lora)?;
    let mut factors = read_adapter_tensors(&adapter.join(WEIGHTS_FILE))?;
    let mut folds = BTreeMap::new();
    for a in &adapted {
        let (r, site) = (a.rank as usize, &a.site);
        let take = |t: &mut HostTensors, f: char, shape: [usize; 2]| {
            take_factor(t, &factor_key(&site.path, f), shape, shape.to_vec())
        };
        let magnitude = match lora.use_dora {
            true => Some(take_factor(
                &mut factors,
                &magnitude_key(&site.path),
                [1, site.out_features],
                vec![site.out_features],
            )?),
            false => None,
        };
        let (a_, b_) = match fused_expert_fold(
            &mut factors,
            &site.path,
            [r, site.in_features],
            site.out_features / 2,
        )? {
            Some(pair) => pair,
            None => (
                take(&mut factors, 'A', [r, site.in_features])?,
                take(&mut factors, 'B', [site.out_features, r])?,
            ),
        };
        let fold = Fold {
            scale: a.scale(lora.rslora) as f32,
            a: a_,
            b: b_,
            magnitude,
        };
        folds.insert(format!("{}.weight", site.path), fold);
    }
    factors.finish()?;

    // A killed merge's half-written directory.
    crate::atomic::remove_stale_temps(match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    });
    let tmp = crate::atomic::temp_path_beside(out);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = (|| -> Result<Merged, MergeError> {
        let mut shard = Shard::default();
        let mut shards: Vec<(PathBuf, Vec<String>)> = Vec::new();
        let (mut tensors, mut folded, mut total) = (0, 0, 0u64);
        let flush = |shard: &mut Shard, shards: &mut Vec<(PathBuf, Vec<String>)>| {
            if shard.tensors.is_empty() {
                return Ok(());
            }
            let path = tmp.join(format!("shard-{}.safetensors", shards.len()));
            write_shard(&path, shard)?;
            shards.push((path, shard.tensors.iter().map(|t| t.0.clone()).collect()));
            *shard = Shard::default();
            Ok::<(), MergeError>(())
        };
        for_each_tensor(files.path(), |name, mut t| {
            let fail = |e: String| WeightsError::format(files.path(), format!("{name}: {e}"));
            if let Some(f) = folds.get(&name) {
                fold(&mut t, f).map_err(fail)?;
                folded += 1;
            } else if let Some((stem, param)) = fused_experts(&name, &t) {
                folded += fold_experts(&mut t, &folds, stem, param).map_err(fail)?;
            }
            let (dt, raw) = encode(&t.values, dtype);
            let size = raw.len() as u64;
            if shard.bytes + size > max_shard_bytes {
                flush(&mut shard, &mut shards)
                    .map_err(|e| WeightsError::format(&tmp, e.to_string()))?;
            }
            shard.bytes += size;
            total += size;
            tensors += 1;
            shard.tensors.push((name, t.shape, dt, raw));
            Ok(())
        })?;
        flush(&mut shard, &mut shards)?;
        if folded != folds.len() {
            return Err(MergeError::Invalid(format!(
                "folded {folded} of {} adapted layers: the base lacks some adapted weights",
                folds.len()
            )));
        }
        let n = shards.len();
        if n == 1 {
            let to = tmp.join("model.safetensors");
            std::fs::rename(&shards[0].0, &to).map_err(io(&to))?;
        } else {
            let mut weight_map = serde_json::Map::new();
            for (i, (path, names)) in shards.iter().enumerate() {
                let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
                std::fs::rename(path, tmp.join(&file)).map_err(io(path))?;
                for name in names {
                    weight_map.insert(name.clone(), json!(file));
                }
            }
            let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            write_json(&tmp.join("model.safetensors.index.json"), &index)?;
        }
        write_config_and_tokenizer(files, config, tok, &tmp, dtype)?;
        Ok(Merged {
            tensors,
            folded,
            shards: n,
            bytes: total,
        })
    })();
    let merged = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(merged)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), MergeError> {
    let text = serde_json::to_string_pretty(value).expect("json values serialise") + "\n";
    crate::atomic::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes()))
        .map_err(io(path))
}

/// A Gemma config.json's own fields, for what llama.cpp computes from a `gemma2` / `gemma3`
/// file: the activation, the score scale as `query_pre_attn_scalar`, the soft caps, the window
/// per layer as `layer_types`, and Gemma 3's RoPE per layer kind.
fn gemma_fields(value: &mut serde_json::Value, c: &DecoderConfig) {
    let d = &c.deltas;
    value["hidden_act"] = json!("gelu_pytorch_tanh");
    value["hidden_activation"] = json!("gelu_pytorch_tanh");
    if let Some(scale) = d.attention_scale {
        // scale = scalar^-½; Gemma's configs type it as a whole number (every real size is).
        let scalar = 1.0 / (scale * scale);
        let rounded = scalar.round();
        value["query_pre_attn_scalar"] = if (scalar - rounded).abs() < 1e-6 {
            json!(rounded as u64)
        } else {
            json!(scalar)
        };
    }
    value["attn_logit_softcapping"] = json!(d.attention_softcap);
    value["final_logit_softcapping"] = json!(d.logit_softcap);
    let layer_types: Vec<&str> = (0..c.num_hidden_layers)
        .map(|i| match &d.sliding_window {
            Some(w) if w.layers[i] => "sliding_attention",
            _ => "full_attention",
        })
        .collect();
    value["layer_types"] = json!(layer_types);
    value["sliding_window"] = json!(d.sliding_window.as_ref().map(|w| w.size));
    if c.family == Family::Gemma3 {
        let full = match c.rope_scaling {
            RopeScaling::Linear { factor } => {
                json!({"rope_type": "linear", "factor": factor, "rope_theta": c.rope_theta})
            }
            _ => json!({"rope_type": "default", "rope_theta": c.rope_theta}),
        };
        let local = d.local_rope_theta.unwrap_or(c.rope_theta);
        value["rope_parameters"] = json!({
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        });
        if let Some(o) = value.as_object_mut() {
            o.remove("rope_theta");
        }
    }
}

/// A GGUF mixture of experts' fields, as its family's config class names them: every layer
/// sparse (as llama.cpp reads these files), the routing llama.cpp hard-codes, no router loss.
fn moe_fields(value: &mut serde_json::Value, c: &DecoderConfig, moe: &MoeConfig) {
    let renormalize = matches!(moe.routing, Routing::SoftmaxTopK { renormalize: true });
    value["num_experts_per_tok"] = json!(moe.top_k);
    value["output_router_logits"] = json!(false);
    match c.family {
        // Mixtral, GraniteMoE and OLMoE: the experts' width is `intermediate_size`.
        Family::GraniteMoe => {
            value["num_local_experts"] = json!(moe.num_experts);
            value["intermediate_size"] = json!(moe.expert_intermediate_size);
        }
        Family::Mixtral => {
            value["num_local_experts"] = json!(moe.num_experts);
            value["intermediate_size"] = json!(moe.expert_intermediate_size);
            value["router_jitter_noise"] = json!(0.0);
            if c.deltas.sliding_window.is_none() {
                value["sliding_window"] = serde_json::Value::Null;
            }
        }
        Family::Olmoe => {
            value["num_experts"] = json!(moe.num_experts);
            value["intermediate_size"] = json!(moe.expert_intermediate_size);
            value["norm_topk_prob"] = json!(renormalize);
            value["clip_qkv"] = serde_json::Value::Null;
        }
        _ => {
            value["num_experts"] = json!(moe.num_experts);
            value["moe_intermediate_size"] = json!(moe.expert_intermediate_size);
            value["norm_topk_prob"] = json!(renormalize);
            value["decoder_sparse_step"] = json!(1);
            value["mlp_only_layers"] = json!([]);
            if let Some(width) = moe.shared_expert_intermediate_size {
                value["shared_expert_intermediate_size"] = json!(width);
            }
            if c.family == Family::Qwen2Moe {
                value["qkv_bias"] = json!(c.qkv_bias);
            }
        }
    }
}

/// config.json and the tokenizer: copied from an HF base (dtype updated), rebuilt for a GGUF one.
fn write_config_and_tokenizer(
    files: &ModelFiles,
    config: &DecoderConfig,
    tok: Option<&ModelTokenizer>,
    out: &Path,
    dtype: Dtype,
) -> Result<(), MergeError> {
    if let ModelFiles::Dir(dir) = files {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let mut value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| MergeError::Invalid(format!("{}: {e}", path.display())))?;
        value["torch_dtype"] = json!(dtype.torch_name());
        write_json(&out.join("config.json"), &value)?;
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
        ] {
            if dir.join(name).is_file() {
                std::fs::copy(dir.join(name), out.join(name)).map_err(io(&dir.join(name)))?;
            }
        }
        return Ok(());
    }
    let tok = tok.ok_or_else(|| {
        MergeError::Invalid("a GGUF base needs its tokenizer to write tokenizer.json".into())
    })?;
    let c = config;
    // The families a GGUF base can be (`DecoderConfig::from_gguf`); a `llama` file with a
    // window is a Mistral (LlamaConfig has none).
    let window = c.deltas.sliding_window.as_ref();
    let (class, model_type) = match c.family {
        Family::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Family::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        Family::Granite => ("GraniteForCausalLM", "granite"),
        Family::Olmo2 => ("Olmo2ForCausalLM", "olmo2"),
        Family::Phi3 => ("Phi3ForCausalLM", "phi3"),
        Family::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
        Family::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
        Family::Qwen3Moe => ("Qwen3MoeForCausalLM", "qwen3_moe"),
        Family::Qwen2Moe => ("Qwen2MoeForCausalLM", "qwen2_moe"),
        Family::Olmoe => ("OlmoeForCausalLM", "olmoe"),
        Family::Mixtral => ("MixtralForCausalLM", "mixtral"),
        Family::GraniteMoe => ("GraniteMoeForCausalLM", "granitemoe"),
        _ if window.is_some() => ("MistralForCausalLM", "mistral"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let mut value = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.qkv_bias,
        "torch_dtype": dtype.torch_name(),
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
    });
    let gemma = matches!(c.family, Family::Gemma2 | Family::Gemma3);
    if gemma {
        gemma_fields(&mut value, c);
    } else if let Some(w) = window {
        // Other GGUF files window every layer.
        value["sliding_window"] = json!(w.size);
        if matches!(c.family, Family::Qwen2 | Family::Qwen3) {
            value["use_sliding_window"] = json!(true);
            value["max_window_layers"] = json!(0);
        }
    }
    if matches!(c.family, Family::Granite | Family::GraniteMoe) {
        let d = &c.deltas;
        value["embedding_multiplier"] = json!(d.embedding_multiplier);
        value["attention_multiplier"] = json!(d.attention_scale.unwrap_or(1.0));
        value["residual_multiplier"] = json!(d.residual_multiplier);
        value["logits_scaling"] = json!(d.logits_scaling);
    }
    if c.family == Family::Phi3 {
        // Phi3Config: the fused projections are its layout; the rotated share of each head;
        // LongRoPE's factors with the GGUF's attention factor written out (transformers would
        // otherwise derive it from the context lengths).
        value["attention_dropout"] = json!(0.0);
        value["resid_pdrop"] = json!(0.0);
        value["embd_pdrop"] = json!(0.0);
        if let Some(rotary) = c.deltas.rotary_dim {
            value["partial_rotary_factor"] = json!(rotary as f64 / c.head_dim as f64);
        }
        if let RopeScaling::LongRope(l) = &c.rope_scaling {
            value["original_max_position_embeddings"] = json!(l.original_max_position_embeddings);
            value["rope_scaling"] = json!({
                "rope_type": "longrope",
                "type": "longrope",
                "short_factor": l.short_factor,
                "long_factor": l.long_factor,
                "factor": c.max_position_embeddings as f64 / l.original_max_position_embeddings as f64,
                "attention_factor": l.attention_factor,
            });
        }
    }
    if let Some(moe) = &c.moe {
        moe_fields(&mut value, c, moe);
    }
    if let RopeScaling::Llama3(s) = c.rope_scaling {
        value["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    write_json(&out.join("config.json"), &value)?;
    tok.tokenizer
        .save(out.join("tokenizer.json"), false)
        .map_err(|e| MergeError::Invalid(format!("tokenizer.json: {e}")))?;
    let name = |id: Option<u32>| id.and_then(|i| tok.tokenizer.id_to_token(i));
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(tok.bos_id),
        "eos_token": name(tok.eos_id),
        "pad_token": name(tok.pad_id),
        "add_bos_token": tok.add_bos,
        "add_eos_token": tok.add_eos,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(t) = &tok.chat_template {
        tc["chat_template"] = json!(t);
    }
    write_json(&out.join("tokenizer_config.json"), &tc)
}
