//! Every config.json field of the Llama-family decoders that changes the computation is read or
//! refused with its name and value, never ignored: this walks the list (activation, MLP biases,
//! attention dropout, RoPE type, sliding windows, Gemma 2's fields, model types), on the tiny
//! Llama's config.json with one field changed; and a model whose window is shorter than the
//! data trains through the binary.

mod common;

use std::path::Path;

use lora_tune::model::decoder_config::{DecoderConfig, QkNorm, RopeScaling};
use lora_tune::model::mlp::Activation;
use lora_tune::model::read_decoder_config;
use lora_tune::weights::gguf::{GgufFile, MetaValue};
use lora_tune::weights::gguf_writer::{self, TensorType};
use serde_json::{Value, json};

/// The tiny Llama's config.json with `changes` applied (null removes a key).
fn config_with(changes: Value) -> Result<DecoderConfig, String> {
    changed_config(changes, true)
}

/// The same, null written as null.
fn config_with_nulls(changes: Value) -> Result<DecoderConfig, String> {
    changed_config(changes, false)
}

fn changed_config(changes: Value, null_removes: bool) -> Result<DecoderConfig, String> {
    let base = Path::new(common::TINY_LLAMA).join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(base).unwrap()).unwrap();
    for (key, value) in changes.as_object().unwrap() {
        match value {
            Value::Null if null_removes => config.as_object_mut().unwrap().remove(key),
            v => config
                .as_object_mut()
                .unwrap()
                .insert(key.clone(), v.clone()),
        };
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    read_decoder_config(&path).map_err(|e| e.to_string())
}

#[test]
fn fields_that_change_the_computation_are_refused_by_name_and_value() {
    let refused = [
        (json!({"hidden_act": "relu"}), "hidden_act = \"relu\""),
        (json!({"mlp_bias": true}), "mlp_bias = true"),
        (json!({"attention_dropout": 0.1}), "attention_dropout = 0.1"),
        (
            json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}),
            "rope_type `yarn`",
        ),
        (json!({"model_type": "gemma3"}), "model_type `gemma3`"),
        (
            json!({"model_type": "gemma3_text", "rope_parameters": {
                "sliding_attention": {"rope_type": "linear", "factor": 2.0}}}),
            "scaling Linear { factor: 2.0 } on the local layers",
        ),
        (
            json!({"rope_parameters": {"rope_type": "linear"}}),
            "linear rope scaling needs a positive factor",
        ),
        (
            json!({"model_type": "gemma2", "hidden_activation": "relu"}),
            "hidden_activation = \"relu\"",
        ),
        (
            json!({"model_type": "gemma2", "use_bidirectional_attention": true}),
            "use_bidirectional_attention = true",
        ),
        (
            json!({"model_type": "gemma2", "attn_logit_softcapping": -1.0}),
            "attn_logit_softcapping = -1",
        ),
        (
            json!({"model_type": "phi3", "resid_pdrop": 0.1}),
            "resid_pdrop = 0.1",
        ),
        (
            json!({"model_type": "phi3", "original_max_position_embeddings": 64, "rope_parameters": null,
                   "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}}),
            "longrope short_factor: expected 8 numbers",
        ),
        (json!({"model_type": "phi4mm"}), "model_type `phi4mm`"),
        (
            json!({"model_type": "gpt_oss"}),
            "MXFP4 experts, router bias and attention sinks",
        ),
        (
            json!({"model_type": "deepseek_v3"}),
            "multi-head latent attention",
        ),
        (
            json!({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
                   "output_router_logits": true}),
            "output_router_logits = true",
        ),
        (
            json!({"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 6}),
            "num_experts_per_tok = 6 of 4 experts",
        ),
        (
            json!({"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
                   "mlp_only_layers": [7]}),
            "mlp_only_layers names layer 7",
        ),
        (
            json!({"model_type": "olmoe", "num_experts": 4, "num_experts_per_tok": 2,
                   "clip_qkv": 8.0}),
            "clip_qkv = 8.0",
        ),
        (
            json!({"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2,
                   "router_jitter_noise": 0.01}),
            "router_jitter_noise = 0.01",
        ),
        (
            json!({"model_type": "granitemoeshared"}),
            "not implemented yet",
        ),
    ];
    let mut failures = Vec::new();
    for (change, wanted) in refused {
        match config_with(change.clone()) {
            Ok(_) => failures.push(format!("{change} was accepted")),
            Err(e) if !e.contains(wanted) => failures.push(format!("{change}: {e}")),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Their no-op values are accepted.
    let accepted = json!({"hidden_act": "silu", "mlp_bias": false, "attention_dropout": 0.0});
    assert!(config_with(accepted).is_ok());
    // Implemented: the GELU gates.
    for act in ["gelu", "gelu_pytorch_tanh", "gelu_new", "swish"] {
        assert!(config_with(json!({ "hidden_act": act })).is_ok(), "{act}");
    }
}

#[test]
fn gemma3_fields_are_read_with_transformers_defaults() {
    // The older form: top-level rope_theta / rope_local_base_freq / rope_scaling; 12 layers so
    // the default pattern (5 local, 1 global) shows.
    let c = config_with(json!({
        "model_type": "gemma3_text", "num_hidden_layers": 12, "rope_parameters": null,
        "rope_local_base_freq": 20000.0, "rope_theta": 2000000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0}
    }))
    .unwrap();
    let d = &c.deltas;
    assert_eq!((d.attention_softcap, d.logit_softcap), (None, None));
    assert_eq!(d.qk_norm, QkNorm::PerHead);
    let global = [false, false, false, false, false, true];
    let window = d.sliding_window.clone().unwrap();
    assert_eq!(
        window.layers,
        [global.map(|g| !g), global.map(|g| !g)].concat()
    );
    assert_eq!(
        (c.rope_theta, c.rope_scaling.clone()),
        (2e6, RopeScaling::Linear { factor: 8.0 })
    );
    assert_eq!(d.local_rope_theta, Some(20000.0));
    assert_eq!(c.gguf_architecture(), "gemma3");
    // transformers 5's form, and its defaults (1e6 global, 1e4 local).
    let c = config_with(json!({"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}}))
    .unwrap();
    assert_eq!((c.rope_theta, c.rope_scaling), (1e6, RopeScaling::None));
    assert_eq!(c.deltas.local_rope_theta, Some(1e4));
}

#[test]
fn phi3_fields_are_read_as_transformers_reads_them() {
    // Phi-3.5 / Phi-4-mini's older form: `rope_scaling` of type "su" (read as longrope),
    // top-level partial_rotary_factor and original_max_position_embeddings.
    let short: Vec<f64> = (0..6).map(|i| 1.0 + f64::from(i)).collect();
    let c = config_with(json!({
        "model_type": "phi3", "partial_rotary_factor": 0.75, "sliding_window": 32, "rope_parameters": null,
        "original_max_position_embeddings": 64, "max_position_embeddings": 256,
        "rope_scaling": {"type": "su", "short_factor": short, "long_factor": short}
    }))
    .unwrap();
    let d = &c.deltas;
    assert!(d.fused_projections);
    assert_eq!(d.rotary_dim, Some(12), "0.75 of head_dim 16");
    let window = d.sliding_window.clone().unwrap();
    assert_eq!((window.size, window.layers), (32, vec![true, true]));
    let RopeScaling::LongRope(l) = &c.rope_scaling else {
        panic!("{:?}", c.rope_scaling)
    };
    assert_eq!(l.original_max_position_embeddings, 64);
    let want = (1.0 + 4f64.ln() / 64f64.ln()).sqrt();
    assert!((l.attention_factor - want).abs() < 1e-12, "factor 256 / 64");
    assert_eq!(c.gguf_architecture(), "phi3");
    let names: Vec<String> = c
        .linear_sites()
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    assert_eq!(
        &names[..4],
        ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"]
    );
    // Without scaling: plain RoPE over all of each head.
    let plain = config_with(json!({"model_type": "phi3", "rope_parameters": null})).unwrap();
    assert_eq!(
        (plain.rope_scaling, plain.deltas.rotary_dim),
        (RopeScaling::None, None)
    );
}

#[test]
fn gemma2_fields_are_read_with_transformers_defaults() {
    let c =
        config_with(json!({"model_type": "gemma2", "head_dim": null, "tie_word_embeddings": null}))
            .unwrap();
    let d = &c.deltas;
    assert_eq!((c.head_dim, c.tie_word_embeddings), (256, true));
    assert_eq!(
        (d.attention_softcap, d.logit_softcap),
        (Some(50.0), Some(30.0))
    );
    assert_eq!(
        d.attention_scale,
        Some(1.0 / 16.0),
        "query_pre_attn_scalar 256"
    );
    assert_eq!(d.embedding_multiplier, 8.0, "√64");
    assert_eq!(d.activation, Activation::GeluTanh);
    let window = d.sliding_window.clone().unwrap();
    assert_eq!((window.size, window.layers), (4096, vec![true, false]));
    assert_eq!(c.gguf_architecture(), "gemma2");
    let uncapped = config_with_nulls(json!({
        "model_type": "gemma2", "attn_logit_softcapping": null, "final_logit_softcapping": null,
        "sliding_window": null
    }))
    .unwrap();
    let d = &uncapped.deltas;
    assert_eq!((d.attention_softcap, d.logit_softcap), (None, None));
    assert_eq!(d.sliding_window, None);
}

/// The window's size and the layers it applies to, of the tiny Llama's config with `change`.
fn window(change: Value) -> Option<(usize, Vec<bool>)> {
    let window = config_with(change).unwrap().deltas.sliding_window;
    window.map(|w| (w.size, w.layers))
}

#[test]
fn sliding_windows_are_read_as_transformers_reads_them() {
    assert_eq!(window(json!({})), None, "Llama has no window");
    let mistral = |w: Value| json!({"model_type": "mistral", "sliding_window": w});
    assert_eq!(window(mistral(json!(16))), Some((16, vec![true, true])));
    assert_eq!(
        window(mistral(Value::Null)),
        Some((4096, vec![true, true])),
        "absent: MistralConfig's default"
    );
    let qwen2 = |extra: Value| {
        let mut v = json!({"model_type": "qwen2", "sliding_window": 16});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    assert_eq!(window(qwen2(json!({"use_sliding_window": false}))), None);
    let all_layers = json!({"use_sliding_window": true, "max_window_layers": 0});
    assert_eq!(window(qwen2(all_layers)), Some((16, vec![true, true])));
    let upper = json!({"use_sliding_window": true, "max_window_layers": 1});
    assert_eq!(window(qwen2(upper)), Some((16, vec![false, true])));
    let no_layer = json!({"use_sliding_window": true, "max_window_layers": 2});
    assert_eq!(
        window(qwen2(no_layer)),
        None,
        "max_window_layers covers every layer"
    );
    let default_layers = json!({"use_sliding_window": true});
    assert_eq!(
        window(qwen2(default_layers)),
        None,
        "max_window_layers defaults to 28"
    );
    let typed =
        json!({"use_sliding_window": true, "layer_types": ["full_attention", "sliding_attention"]});
    assert_eq!(window(qwen2(typed)), Some((16, vec![false, true])));
    let unused = json!({"layer_types": ["full_attention", "sliding_attention"]});
    assert_eq!(
        window(qwen2(unused)),
        None,
        "no use_sliding_window, no window"
    );
    let short = json!({"use_sliding_window": true, "layer_types": ["sliding_attention"]});
    let err = config_with(qwen2(short)).unwrap_err();
    assert!(err.contains("1 layer types does not fit 2 layers"), "{err}");
    assert!(
        config_with(json!({"model_type": "qwen2"}))
            .unwrap()
            .qkv_bias
    );
}

/// Rows longer than the window train (the window is computed; tests/llama.rs and
/// tests/lora_train.rs prove it against transformers and PEFT).
#[test]
fn a_model_whose_window_is_shorter_than_the_rows_trains() {
    let tmp = common::tiny_workdir(
        "[model]\nsource = \"model\"\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 32\n\n[train]\nmax_steps = 1\nbatch_size = 2\n\n[export]\nout_dir = \"out\"\n",
    );
    let config = tmp.path().join("model/config.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["model_type"] = json!("mistral");
    json["sliding_window"] = json!(4);
    std::fs::write(&config, json.to_string()).unwrap();
    let out = common::run(tmp.path(), &["recipe.toml", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", common::text(&out));
    assert!(tmp.path().join("out/adapter_model.safetensors").exists());
}

/// A GGUF holding only the metadata of a 2-layer `llama`, `extra` added or replacing a key;
/// its config as read.
fn gguf_config_with(extra: &[(&str, MetaValue)]) -> Result<DecoderConfig, String> {
    gguf_config_of("llama", extra)
}

/// [`gguf_config_with`] for the architecture `arch`.
fn gguf_config_of(arch: &str, extra: &[(&str, MetaValue)]) -> Result<DecoderConfig, String> {
    let base = [
        ("vocab_size", 256),
        ("embedding_length", 64),
        ("feed_forward_length", 96),
        ("block_count", 2),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 2),
        ("rope.dimension_count", 16),
    ]
    .map(|(key, v)| (format!("{arch}.{key}"), MetaValue::U32(v)));
    let mut metadata: Vec<(&str, MetaValue)> =
        vec![("general.architecture", MetaValue::String(arch.into()))];
    metadata.extend(
        base.iter()
            .filter(|(key, _)| !extra.iter().any(|(k, _)| k == key))
            .map(|(k, v)| (k.as_str(), v.clone())),
    );
    metadata.extend(extra.iter().cloned());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    gguf_writer::write(&path, &metadata, &[], TensorType::F32).unwrap();
    DecoderConfig::from_gguf(&GgufFile::open(&path).unwrap()).map_err(|e| e.to_string())
}

#[test]
fn gguf_metadata_that_changes_the_computation_is_read_or_refused_by_name() {
    let config = gguf_config_with(&[]).unwrap();
    assert_eq!((config.head_dim, config.deltas.sliding_window), (16, None));
    let refused: [(&[(&str, MetaValue)], &str); 5] = [
        (
            &[(
                "llama.rope.scaling.type",
                MetaValue::String("linear".into()),
            )],
            "llama.rope.scaling.type = \"linear\"",
        ),
        (
            &[("llama.rope.scaling.factor", MetaValue::F32(4.0))],
            "llama.rope.scaling.factor = 4",
        ),
        (
            &[("llama.expert_count", MetaValue::U32(8))],
            "llama.expert_used_count is missing",
        ),
        (
            &[
                ("llama.expert_count", MetaValue::U32(8)),
                ("llama.expert_used_count", MetaValue::U32(2)),
            ],
            "layer 0 has no router (blk.0.ffn_gate_inp.weight)",
        ),
        (
            &[
                ("llama.attention.key_length", MetaValue::U32(16)),
                ("llama.rope.dimension_count", MetaValue::U32(8)),
            ],
            "llama.rope.dimension_count = 8 with heads of 16",
        ),
    ];
    let mut failures = Vec::new();
    for (extra, wanted) in refused {
        match gguf_config_with(extra) {
            Ok(_) => failures.push(format!("{wanted}: accepted")),
            Err(e) if !e.contains(wanted) => failures.push(format!("{wanted}: {e}")),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // GraniteMoeShared converts to `granitemoe` with a shared expert's width.
    let shared = gguf_config_of(
        "granitemoe",
        &[
            ("granitemoe.expert_count", MetaValue::U32(4)),
            ("granitemoe.expert_used_count", MetaValue::U32(2)),
            (
                "granitemoe.expert_shared_feed_forward_length",
                MetaValue::U32(64),
            ),
        ],
    );
    let shared = shared.unwrap_err();
    assert!(shared.contains("GraniteMoeShared"), "{shared}");
    let none = gguf_config_with(&[("llama.rope.scaling.type", MetaValue::String("none".into()))]);
    assert!(none.is_ok(), "{none:?}");
    let window = gguf_config_with(&[("llama.attention.sliding_window", MetaValue::U32(32))]);
    let window = window.unwrap().deltas.sliding_window.unwrap();
    assert_eq!((window.size, window.layers), (32, vec![true, true]));
}

#[test]
fn granite_scalars_are_read_with_transformers_defaults() {
    let config = config_with(json!({"model_type": "granite"})).unwrap();
    let scalars = (
        config.deltas.embedding_multiplier,
        config.deltas.attention_scale,
        config.deltas.residual_multiplier,
        config.deltas.logits_scaling,
    );
    assert_eq!(
        scalars,
        (1.0, Some(1.0), 1.0, 1.0),
        "GraniteConfig's defaults"
    );
    assert_eq!(config.gguf_architecture(), "granite");
    let config = config_with(json!({"model_type": "granite", "logits_scaling": 16.0})).unwrap();
    assert_eq!(config.deltas.logits_scaling, 16.0);
}
