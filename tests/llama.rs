//! The burn Llama-family decoder equals transformers: tiny random Llama (GQA, untied, llama3
//! RoPE) and Qwen2 (q/k/v biases, tied) logits to ≤1e-4, and the real SmolLM2 GGUF to ≤1e-3
//! with the identical greedy continuation (generated over the KV cache). Golden: tools/reference/llama_fixtures.py
//! (transformers 5.23.0, torch 2.15.0, f32 eager attention, seed 16).

mod common;

use common::{artifacts, cpu};

use std::path::Path;

use burn::tensor::Tensor;
use lora_tune::model::decoder::Decoder;
use lora_tune::model::decoder_config::{DecoderConfig, NormPlacement, QkNorm, RopeScaling};
use lora_tune::model::generate::{Sampling, generate};
use lora_tune::model::mlp::Activation;
use lora_tune::weights::gguf::GgufFile;
use lora_tune::weights::host::HostTensors;
use safetensors::SafeTensors;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/llama");

fn to_vec(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn ints(st: &SafeTensors, name: &str) -> Vec<Vec<i64>> {
    let v = st.tensor(name).unwrap();
    let cols = v.shape()[1];
    let flat: Vec<i64> = v
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    flat.chunks(cols).map(<[i64]>::to_vec).collect()
}

/// The token ids and attention mask of a reference.safetensors.
fn reference_inputs(st: &SafeTensors) -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let rows = |name: &str| ints(st, name);
    let ids = (rows("input_ids").iter())
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect();
    let mask = (rows("attention_mask").iter())
        .map(|r| r.iter().map(|&t| t as u8).collect())
        .collect();
    (ids, mask)
}

fn check_tiny(name: &str) {
    let dir = Path::new(FIXTURES).join(name);
    let config = lora_tune::model::read_decoder_config(&dir.join("config.json")).unwrap();
    let model = Decoder::load(config, HostTensors::read(&dir).unwrap(), &cpu()).unwrap();
    assert_reference_logits(&model, &dir, name, 1e-4);
}

/// `model`'s logits on the inputs of `dir`/reference.safetensors within `tolerance` of the
/// logits transformers computed there.
fn assert_reference_logits(model: &Decoder, dir: &Path, name: &str, tolerance: f32) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ids, mask) = reference_inputs(&st);
    let want: Vec<f32> = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let got = to_vec(model.forward(&ids, &mask));
    assert_eq!(got.len(), want.len());
    let max = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    eprintln!("{name}: max |Δlogit| vs transformers = {max:e}");
    assert!(max <= tolerance, "{name}: max |Δlogit| = {max}");
}

#[test]
fn tiny_llama_with_gqa_untied_head_and_llama3_rope_matches_transformers() {
    check_tiny("tiny-llama");
}

#[test]
fn tiny_qwen2_with_qkv_bias_and_tied_embeddings_matches_transformers() {
    check_tiny("tiny-qwen2");
}

#[test]
fn a_checkpoint_with_an_unexpected_tensor_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(FIXTURES).join("tiny-qwen2");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    // Qwen2 weights under a Llama config without biases: the bias tensors are left over.
    let mut config = lora_tune::model::read_decoder_config(&src.join("config.json")).unwrap();
    config.qkv_bias = false;
    let err = Decoder::load(config, HostTensors::read(&src).unwrap(), &cpu())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not use") && err.contains("q_proj.bias"),
        "{err}"
    );
}

#[test]
fn smollm2_gguf_matches_transformers_logits_and_greedy_continuation() {
    let files = artifacts::smollm2();
    let gguf = GgufFile::open(files.path()).unwrap();
    let config = DecoderConfig::from_gguf(&gguf).unwrap();
    assert_eq!(
        (
            config.num_hidden_layers,
            config.hidden_size,
            config.num_key_value_heads
        ),
        (30, 576, 3)
    );
    assert_eq!(
        (config.rope_theta, config.tie_word_embeddings),
        (100000.0, true)
    );
    let model = Decoder::load(config, HostTensors::read(files.path()).unwrap(), &cpu()).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/smollm2.json")).unwrap())
            .unwrap();
    for case in golden.as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let vocab = model.config.vocab_size;
        let logits = to_vec(model.forward(std::slice::from_ref(&ids), &[vec![1; ids.len()]]));
        let fixed: Vec<usize> = case["fixed_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let mut max = 0f32;
        for (pos, row) in case["fixed_logits"].as_array().unwrap().iter().enumerate() {
            for (k, want) in row.as_array().unwrap().iter().enumerate() {
                max =
                    max.max((logits[pos * vocab + fixed[k]] - want.as_f64().unwrap() as f32).abs());
            }
        }
        let last = &logits[(ids.len() - 1) * vocab..ids.len() * vocab];
        for pair in case["top20_last"].as_array().unwrap() {
            let (id, want) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap() as f32,
            );
            max = max.max((last[id] - want).abs());
        }
        assert!(max <= 1e-3, "{prompt:?}: max |Δlogit| = {max}");

        // Greedy decoding over the KV cache, stopping at EOS (<|im_end|> = 2) as HF does.
        let want: Vec<u32> = case["greedy32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = generate(&model, &ids, 32, &[2], Sampling::GREEDY, |_| {}).unwrap();
        assert_eq!(got, want, "{prompt:?}");
    }
}

/// A sharded checkpoint (model.safetensors.index.json + 2 shards) loads to the same logits as
/// the single file it was split from.
#[test]
fn sharded_safetensors_load_identically() {
    let src = Path::new(FIXTURES).join("tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut weight_map = serde_json::Map::new();
    let mut shards: [Vec<(String, safetensors::tensor::TensorView)>; 2] = [Vec::new(), Vec::new()];
    for (i, (name, view)) in st.iter().enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.to_string(), shard.into());
        shards[i % 2].push((name.to_string(), view));
    }
    for (i, tensors) in shards.into_iter().enumerate() {
        let path = dir
            .path()
            .join(format!("model-0000{}-of-00002.safetensors", i + 1));
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let logits = |d: &Path| {
        let config = lora_tune::model::read_decoder_config(&d.join("config.json")).unwrap();
        let model = Decoder::load(config, HostTensors::read(d).unwrap(), &cpu()).unwrap();
        to_vec(model.forward(&[vec![5, 17, 42]], &[vec![1, 1, 1]]))
    };
    assert_eq!(logits(dir.path()), logits(&src));
}

/// Llama 3.1+ GGUFs: llama.cpp's converter stores Llama 3's RoPE scaling as the
/// `rope_freqs.weight` tensor (tools/reference/gguf_fixtures.py on tiny-llama); read and
/// applied, the GGUF gives the HF checkpoint's transformers logits.
#[test]
fn tiny_llama_gguf_with_rope_freqs_matches_transformers() {
    let model = tiny_gguf("tiny-llama");
    let RopeScaling::FreqFactors(f) = &model.config.rope_scaling else {
        panic!("{:?}", model.config.rope_scaling)
    };
    assert_eq!(f.len(), 8);
    let dir = Path::new(FIXTURES).join("tiny-llama");
    assert_reference_logits(&model, &dir, "tiny-llama.gguf (rope_freqs)", 1e-5);
}

/// A `qwen3` GGUF (tiny-qwen3 converted by llama.cpp's `convert_hf_to_gguf.py`): its metadata,
/// `attn_q_norm` / `attn_k_norm` and unpermuted Q/K give the HF checkpoint's transformers logits.
#[test]
fn tiny_qwen3_gguf_matches_transformers() {
    let model = tiny_gguf("tiny-qwen3");
    let c = &model.config;
    assert_eq!(
        (c.deltas.qk_norm, c.head_dim, c.qkv_bias),
        (QkNorm::PerHead, 32, false)
    );
    assert_eq!(c.gguf_architecture(), "qwen3");
    let dir = Path::new(FIXTURES).join("tiny-qwen3");
    assert_reference_logits(&model, &dir, "tiny-qwen3.gguf", 1e-5);
}

/// A `phi3` GGUF (tiny-phi3 converted by llama.cpp's converter): fused attn_qkv, ffn_up holding
/// gate and up, RoPE over 8 of 16 dimensions, LongRoPE from the factor tensors and attn_factor —
/// the HF checkpoint's transformers logits and greedy tokens (generation passes LongRoPE's
/// original context, 8).
#[test]
fn tiny_phi3_gguf_matches_transformers() {
    let model = tiny_gguf("tiny-phi3");
    let c = &model.config;
    assert!(c.deltas.fused_projections);
    assert_eq!((c.head_dim, c.deltas.rotary_dim), (16, Some(8)));
    assert!(matches!(c.rope_scaling, RopeScaling::LongRope(_)));
    let dir = Path::new(FIXTURES).join("tiny-phi3");
    assert_reference_logits(&model, &dir, "tiny-phi3.gguf", 1e-5);
    greedy_equals_transformers_with(&model, &dir, "tiny-phi3.gguf");
}

/// `granite` and `olmo2` GGUFs written by llama.cpp's converter: Granite's scalars
/// (attention.scale, embedding_scale, residual_scale, logit_scale) and Q/K un-permuted as for
/// `llama`; OLMo2's post-block norms and projection-wide q/k norms. Each gives its HF
/// checkpoint's transformers logits and greedy tokens.
#[test]
fn tiny_granite_and_olmo2_ggufs_match_transformers() {
    for (name, family) in [("tiny-granite", "granite"), ("tiny-olmo2", "olmo2")] {
        let model = tiny_gguf(name);
        let dir = Path::new(FIXTURES).join(name);
        let hf = lora_tune::model::read_decoder_config(&dir.join("config.json")).unwrap();
        assert_eq!(model.config.gguf_architecture(), family);
        assert_eq!(model.config.deltas.norms, hf.deltas.norms, "{name}");
        assert_eq!(model.config.deltas.qk_norm, hf.deltas.qk_norm, "{name}");
        let what = format!("{name}.gguf");
        assert_reference_logits(&model, &dir, &what, 1e-5);
        greedy_equals_transformers_with(&model, &dir, &what);
    }
}

/// `gemma2` and `gemma3` GGUFs written by llama.cpp's converter
/// (tools/reference/gemma_gguf_fixtures.py): llama.cpp's reading of them — norms stored as
/// 1 + w, scores scaled by head_dim^-½ (the file has no query_pre_attn_scalar), Gemma 2's
/// dropped lm_head (tied), the window on every 2nd / all but every 6th layer, Gemma 3's local
/// RoPE base and linear scaling on its global layer — gives the logits and greedy tokens of the
/// transformers twin, which the script checked against llama.cpp's own logits (≤ 9.4e-4, ggml's
/// approximate GELU).
#[test]
fn tiny_gemma_ggufs_give_what_llama_cpp_computes() {
    use lora_tune::model::decoder_config::NormPlacement;
    for (name, family, tied, windowed) in [
        ("tiny-gemma2", "gemma2", true, vec![true, false]),
        (
            "tiny-gemma3-6l",
            "gemma3",
            false,
            vec![true, true, true, true, true, false],
        ),
    ] {
        let model = tiny_gguf(name);
        let c = &model.config;
        assert_eq!(c.gguf_architecture(), family);
        assert_eq!(c.tie_word_embeddings, tied, "{name}");
        assert_eq!(c.deltas.norms, NormPlacement::Sandwich);
        let window = c.deltas.sliding_window.as_ref().unwrap();
        assert_eq!((window.size, &window.layers), (4, &windowed), "{name}");
        let dir = Path::new(FIXTURES).join(format!("{name}-gguf"));
        let what = format!("{name}.gguf");
        assert_reference_logits(&model, &dir, &what, 1e-5);
        greedy_equals_transformers_with(&model, &dir, &what);
    }
}

#[test]
fn tiny_qwen3_with_head_norms_and_explicit_head_dim_matches_transformers() {
    check_tiny("tiny-qwen3");
}

#[test]
fn tiny_granite_with_its_four_multipliers_matches_transformers() {
    check_tiny("tiny-granite");
}

#[test]
fn tiny_olmo2_with_post_norms_and_projection_qk_norms_matches_transformers() {
    check_tiny("tiny-olmo2");
}

#[test]
fn tiny_olmo2_generates_what_transformers_generates() {
    let config = greedy_equals_transformers("tiny-olmo2");
    assert_eq!(
        (config.deltas.qk_norm, config.deltas.norms),
        (QkNorm::Projection, NormPlacement::Post)
    );
}

#[test]
fn tiny_qwen3_generates_what_transformers_generates() {
    let config = greedy_equals_transformers("tiny-qwen3");
    assert!(config.deltas.qk_norm == QkNorm::PerHead && config.head_dim == 32 && !config.qkv_bias);
}

#[test]
fn tiny_granite_generates_what_transformers_generates() {
    let config = greedy_equals_transformers("tiny-granite");
    let scalars = (
        config.deltas.embedding_multiplier,
        config.deltas.attention_scale,
        config.deltas.residual_multiplier,
        config.deltas.logits_scaling,
    );
    assert_eq!(scalars, (12.0, Some(0.1), 0.22, 8.0));
}

#[test]
fn tiny_mistral_with_a_window_shorter_than_the_rows_matches_transformers() {
    check_tiny("tiny-mistral");
}

/// The KV cache holds keys past the window; the mask hides them, as transformers' does.
#[test]
fn tiny_mistral_generates_past_its_window_what_transformers_generates() {
    let config = greedy_equals_transformers("tiny-mistral");
    let window = config.deltas.sliding_window.unwrap();
    assert_eq!((window.size, window.layers), (4, vec![true, true]));
}

#[test]
fn tiny_llama_with_a_tanh_gelu_mlp_matches_transformers() {
    check_tiny("tiny-llama-gelu");
    let config = greedy_equals_transformers("tiny-llama-gelu");
    assert_eq!(config.deltas.activation, Activation::GeluTanh);
}

#[test]
fn tiny_gemma2_with_soft_caps_sandwich_norms_and_a_window_matches_transformers() {
    check_tiny("tiny-gemma2");
}

#[test]
fn tiny_gemma2_generates_what_transformers_generates() {
    let config = greedy_equals_transformers("tiny-gemma2");
    let d = &config.deltas;
    assert_eq!(
        (d.norms, d.attention_softcap, d.logit_softcap),
        (NormPlacement::Sandwich, Some(5.0), Some(3.0))
    );
    let window = d.sliding_window.clone().unwrap();
    assert_eq!((window.size, window.layers), (4, vec![true, false]));
    assert_eq!(d.attention_scale, Some(24f64.powf(-0.5)));
    assert_eq!(d.embedding_multiplier, 8.0);
}

#[test]
fn tiny_gemma3_with_head_norms_and_rope_per_layer_kind_matches_transformers() {
    check_tiny("tiny-gemma3");
}

#[test]
fn tiny_gemma3_generates_what_transformers_generates() {
    let config = greedy_equals_transformers("tiny-gemma3");
    let d = &config.deltas;
    assert_eq!(
        (d.qk_norm, d.attention_softcap, d.logit_softcap),
        (QkNorm::PerHead, None, None)
    );
    assert_eq!(d.local_rope_theta, Some(10_000.0));
    assert_eq!(
        (config.rope_theta, config.rope_scaling),
        (1e6, RopeScaling::Linear { factor: 4.0 })
    );
}

#[test]
fn tiny_phi3_with_fused_projections_partial_rotary_and_longrope_matches_transformers() {
    check_tiny("tiny-phi3");
}

/// Generation crosses LongRoPE's original context (8): the calls past it rotate with the long
/// factors while the cache keeps what the short ones rotated, as transformers does.
#[test]
fn tiny_phi3_generates_what_transformers_generates() {
    let config = greedy_equals_transformers("tiny-phi3");
    let d = &config.deltas;
    assert!(d.fused_projections);
    assert_eq!(d.rotary_dim, Some(8));
    let RopeScaling::LongRope(l) = &config.rope_scaling else {
        panic!("{:?}", config.rope_scaling)
    };
    assert_eq!(l.original_max_position_embeddings, 8);
    assert!((l.attention_factor - (1.0 + 16f64.ln() / 8f64.ln()).sqrt()).abs() < 1e-12);
}

/// The tiny model `name` generates transformers' 12 greedy tokens after each prompt of its
/// greedy.json (golden: tools/reference/family_fixtures.py); its config, for further checks.
fn greedy_equals_transformers(name: &str) -> DecoderConfig {
    let dir = Path::new(FIXTURES).join(name);
    let config = lora_tune::model::read_decoder_config(&dir.join("config.json")).unwrap();
    let model = Decoder::load(config.clone(), HostTensors::read(&dir).unwrap(), &cpu()).unwrap();
    greedy_equals_transformers_with(&model, &dir, name);
    config
}

/// `model` generates the 12 greedy tokens of `dir`/greedy.json after each of its prompts.
fn greedy_equals_transformers_with(model: &Decoder, dir: &Path, name: &str) {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("greedy.json")).unwrap()).unwrap();
    let sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    for case in cases.as_array().unwrap() {
        let ids = |key: &str| -> Vec<u32> {
            case[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let got = generate(model, &ids("prompt"), 12, &[], sampling, |_| {}).unwrap();
        assert_eq!(got, ids("greedy"), "{name}: prompt {:?}", ids("prompt"));
    }
}

/// tests/fixtures/llama/`name`.gguf (written by llama.cpp's converter), loaded on the CPU.
fn tiny_gguf(name: &str) -> Decoder {
    let files =
        lora_tune::source::ModelFiles::Gguf(Path::new(FIXTURES).join(format!("{name}.gguf")));
    let storage = lora_tune::model::BaseStorage::default();
    lora_tune::model::load(&files, &cpu(), storage).unwrap()
}

/// Golden: tools/reference/moe_fixtures.py. Qwen3-MoE (norm_topk_prob true; false with
/// decoder_sparse_step and mlp_only_layers), Qwen2-MoE (a shared expert) and OLMoE, each read
/// from the per-expert checkpoint transformers saves and from transformers 5's fused 3-D
/// layout, Mixtral per expert (w1/w3/w2 under block_sparse_moe) and GraniteMoE (a softmax over
/// the top-k logits; its 3-D input_linear / output_linear, and transformers 5's names for
/// them): logits ≤ 1e-5, the 12
/// greedy tokens, and every sparse layer's routes.
#[test]
fn tiny_mixtures_of_experts_in_both_layouts_match_transformers() {
    let names = [
        "tiny-qwen3-moe",
        "tiny-olmoe",
        "tiny-qwen3-moe-sparse",
        "tiny-qwen2-moe",
        "tiny-qwen2-moe-sparse",
        "tiny-mixtral",
        "tiny-granitemoe",
    ];
    for name in names {
        // Mixtral is read per expert only.
        let layouts: &[&str] = if name == "tiny-mixtral" {
            &[""]
        } else {
            &["", "-fused"]
        };
        for &layout in layouts {
            let dir = Path::new(FIXTURES).join(format!("{name}{layout}"));
            let config = lora_tune::model::read_decoder_config(&dir.join("config.json")).unwrap();
            let moe = config.moe.clone().unwrap();
            let fused = moe.layout != lora_tune::model::moe::ExpertLayout::PerExpert;
            // GraniteMoE's own checkpoint is 3-D too.
            let granite = name == "tiny-granitemoe";
            assert_eq!(fused, granite || !layout.is_empty(), "{name}{layout}");
            let model = Decoder::load(config, HostTensors::read(&dir).unwrap(), &cpu()).unwrap();
            let reference = Path::new(FIXTURES).join(name);
            let what = format!("{name}{layout}");
            assert_reference_logits(&model, &reference, &what, 1e-5);
            greedy_equals_transformers_with(&model, &reference, &what);
            routes_equal_transformers(&model, &reference, &what);
        }
    }
}

/// The mixtures of experts as GGUF files written by llama.cpp's converter
/// (tools/reference/gguf_fixtures.py): `qwen3moe` from both on-disk layouts, `qwen2moe` with
/// its shared expert, `olmoe`, Mixtral as `llama` with experts (Q/K permuted, experts named
/// w1/w3/w2 under block_sparse_moe), and `granitemoe` (Q/K permuted, each layer's
/// input_linear split into ffn_gate_exps and ffn_up_exps, joined back on reading). The stacked ffn_*_exps tensors are read one expert at a
/// time, and the routing is renormalised as llama.cpp hard-codes it per architecture, which is
/// what these fixtures' configs say: each gives its HF checkpoint's transformers logits,
/// greedy tokens and routes. With `keep_quantized` an expert's blocks are split the same way.
#[test]
fn tiny_mixtures_of_experts_from_gguf_match_transformers() {
    use lora_tune::model::moe::Routing;
    let renormalized = |renormalize| Routing::SoftmaxTopK { renormalize };
    for (name, reference, family, routing) in [
        (
            "tiny-qwen3-moe",
            "tiny-qwen3-moe",
            "qwen3moe",
            renormalized(true),
        ),
        (
            "tiny-qwen3-moe-fused",
            "tiny-qwen3-moe",
            "qwen3moe",
            renormalized(true),
        ),
        (
            "tiny-qwen2-moe",
            "tiny-qwen2-moe",
            "qwen2moe",
            renormalized(false),
        ),
        ("tiny-olmoe", "tiny-olmoe", "olmoe", renormalized(false)),
        ("tiny-mixtral", "tiny-mixtral", "llama", renormalized(true)),
        // llama.cpp's softmax, top k, renormalised: GraniteMoE's softmax over the top k.
        (
            "tiny-granitemoe",
            "tiny-granitemoe",
            "granitemoe",
            Routing::TopKSoftmax,
        ),
    ] {
        let model = tiny_gguf(name);
        let c = &model.config;
        assert_eq!(c.gguf_architecture(), family, "{name}");
        let moe = c.moe.as_ref().unwrap();
        let hf = lora_tune::model::read_decoder_config(
            &Path::new(FIXTURES).join(reference).join("config.json"),
        )
        .unwrap();
        let hf_moe = hf.moe.as_ref().unwrap();
        assert_eq!(c.family, hf.family, "{name}");
        assert_eq!(moe.routing, routing, "{name}");
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.expert_intermediate_size),
            (
                hf_moe.num_experts,
                hf_moe.top_k,
                hf_moe.expert_intermediate_size
            ),
            "{name}"
        );
        assert_eq!(
            (moe.shared_expert_intermediate_size, moe.block, moe.names),
            (
                hf_moe.shared_expert_intermediate_size,
                hf_moe.block,
                hf_moe.names
            ),
            "{name}"
        );
        let dir = Path::new(FIXTURES).join(reference);
        let what = format!("{name}.gguf");
        assert_reference_logits(&model, &dir, &what, 1e-5);
        greedy_equals_transformers_with(&model, &dir, &what);
        routes_equal_transformers(&model, &dir, &what);
    }
}

/// `model.keep_quantized` on a mixture of experts, on files llama.cpp quantised itself
/// (`llama_model_quantize`, tools/reference/gguf_fixtures.py): tiny-qwen3-moe.gguf and
/// tiny-granitemoe.gguf (each expert's gate and up blocks joined into one matrix) in Q8_0, and
/// a Qwen3-MoE wide enough for the K-quants in Q4_K_M (experts in Q4_K, layer 1's down
/// projections in Q6_K). Each expert's slice of the stacked tensors stays in its blocks —
/// every linear of the four experts and the attention, in both layers, and the head — and the
/// logits equal the dequantised load's; the router stays f32, as the files store it.
#[test]
fn kept_expert_blocks_give_the_dequantised_logits() {
    use lora_tune::model::BaseStorage;
    use lora_tune::model::frozen::FrozenWeight;
    let bytes = std::fs::read(Path::new(FIXTURES).join("tiny-qwen3-moe/reference.safetensors"));
    let bytes = bytes.unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ids, mask) = reference_inputs(&st);
    // Each layer's attention (4) and experts (4 × gate, up, down; GraniteMoE's gate and up
    // joined into one gate_up_proj per expert), and the untied head.
    for (file, linears) in [
        ("tiny-qwen3-moe-q8_0.gguf", 2 * (4 + 4 * 3) + 1),
        ("small-qwen3-moe-q4_k_m.gguf", 2 * (4 + 4 * 3) + 1),
        ("tiny-granitemoe-q8_0.gguf", 2 * (4 + 4 * 2) + 1),
    ] {
        let files = lora_tune::source::ModelFiles::Gguf(Path::new(FIXTURES).join(file));
        let keep = BaseStorage {
            keep_quantized: true,
            ..Default::default()
        };
        let mut kept = lora_tune::model::load(&files, &cpu(), keep).unwrap();
        let dense = lora_tune::model::load(&files, &cpu(), BaseStorage::default()).unwrap();
        let blocks: Vec<String> = kept
            .linears_mut()
            .iter()
            .filter(|(_, l)| matches!(l.weight, FrozenWeight::Blocks(_)))
            .map(|(name, _)| name.clone())
            .collect();
        assert_eq!(blocks.len(), linears, "{file}: {blocks:?}");
        let (got, want) = (
            to_vec(kept.forward(&ids, &mask)),
            to_vec(dense.forward(&ids, &mask)),
        );
        let scale = want.iter().fold(0f32, |m, w| m.max(w.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        assert!(
            worst <= 1e-6 * scale,
            "{file}: logits off by {worst} of {scale}"
        );
    }
}

/// Qwen3-MoE's `decoder_sparse_step` 2 and `mlp_only_layers` [3] leave one sparse layer of four.
#[test]
fn decoder_sparse_step_and_mlp_only_layers_pick_the_sparse_layers() {
    let dir = Path::new(FIXTURES).join("tiny-qwen3-moe-sparse");
    let config = lora_tune::model::read_decoder_config(&dir.join("config.json")).unwrap();
    let moe = config.moe.as_ref().unwrap();
    assert_eq!(moe.sparse_layers, [false, true, false, false]);
    let sparse = lora_tune::model::moe::Routing::SoftmaxTopK { renormalize: false };
    assert_eq!((moe.num_experts, moe.top_k, moe.routing), (4, 2, sparse));
}

/// Each sparse layer's chosen experts and routing weights for the reference tokens equal the
/// ones transformers' router gave (`routes.L.experts` / `routes.L.weights`).
fn routes_equal_transformers(model: &Decoder, dir: &Path, name: &str) {
    use lora_tune::model::mlp::FeedForward;
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ids, mask) = reference_inputs(&st);
    let inputs = model.layer_inputs(&mask);
    let mut x = model.embed(&ids);
    let mut checked = 0;
    for (i, layer) in model.layers.iter().enumerate() {
        if let FeedForward::Sparse(moe) = &layer.mlp {
            let n = &layer.norms;
            let attn_in = n.attention_in.as_ref().unwrap().forward(x.clone());
            let (rope, mask) = (inputs.rope_of(layer), inputs.mask_of(layer));
            let attn = layer.self_attn.forward(attn_in, rope, &mask.full(), None);
            let mid = x.clone() + attn.mul_scalar(layer.residual_multiplier);
            let [b, s, h] = mid.dims();
            let moe_in = n.mlp_in.as_ref().unwrap().forward(mid).reshape([b * s, h]);
            let routes = moe.route(moe_in);
            let got: Vec<i64> = routes
                .chosen
                .into_data()
                .convert::<i64>()
                .try_to_vec()
                .unwrap();
            let want = ints(&st, &format!("routes.{i}.experts")).concat();
            assert_eq!(got, want, "{name}: layer {i}'s experts");
            let got: Vec<f32> = routes.weights.into_data().try_to_vec().unwrap();
            let want: Vec<f32> = (st.tensor(&format!("routes.{i}.weights")).unwrap().data())
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let max = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(
                max < 1e-6,
                "{name}: layer {i}'s routing weights differ by {max}"
            );
            checked += 1;
        }
        x = layer.forward(x, &inputs, None);
    }
    assert!(checked > 0, "{name}: no sparse layer");
}
