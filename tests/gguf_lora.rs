//! The llama.cpp LoRA GGUF we write equals what llama.cpp's `convert_lora_to_gguf.py` writes for
//! the same PEFT folder (tests/fixtures/lora/gguf/tiny-lora.gguf, made by
//! tools/reference/gguf_lora.py from PEFT's own folder): metadata, tensor names, ggml shapes and
//! types, and values (Q/K B rows permuted for the `llama` architecture) — read back by our reader.

mod common;

use common::tiny;

use std::collections::BTreeMap;
use std::path::Path;

use lora_tune::export::gguf_lora;
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::model::decoder::Decoder;
use lora_tune::peft::folder as peft;
use lora_tune::weights::gguf::{GgufFile, MetaValue};
use lora_tune::weights::gguf_writer::TensorType;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The tiny model `base` with PEFT's folder `lora/<peft>` applied.
fn adapted_tiny(base: &str, peft: &str) -> Decoder {
    let mut model = tiny::named(base);
    let sites = model.config.linear_sites();
    model
        .apply_peft_folder(&sites, &tiny::fixture(&format!("lora/{peft}")))
        .unwrap();
    model
}

fn metadata(f: &GgufFile) -> BTreeMap<String, MetaValue> {
    f.metadata
        .iter()
        .filter(|(k, _)| k != "general.name") // the converter names it after the folder
        .cloned()
        .collect()
}

/// Writes the tiny Llama's adapter as `ty` and returns (model, ours, llama.cpp's `fixture`),
/// checked equal in metadata, names, dims, types and raw tensor bytes.
fn compare_with_converter(ty: TensorType, fixture: &str) -> (Decoder, GgufFile, GgufFile) {
    compare_with_converter_on("tiny-llama", "peft", ty, fixture)
}

/// The same for the tiny model `base` with PEFT's folder `lora/<peft>`.
fn compare_with_converter_on(
    base: &str,
    peft: &str,
    ty: TensorType,
    fixture: &str,
) -> (Decoder, GgufFile, GgufFile) {
    let mut model = adapted_tiny(base, peft);
    let folder = Path::new(ROOT).join("tests/fixtures/lora").join(peft);
    let config = peft::read_config(&folder).unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("adapter.gguf");
    let adapters = model.adapter_tensors().unwrap();
    gguf_lora::write(&path, &model.config, adapters, &config, "tiny", ty).unwrap();
    let ours = GgufFile::open(&path).unwrap();
    let theirs = GgufFile::open(
        &Path::new(ROOT)
            .join("tests/fixtures/lora/gguf")
            .join(fixture),
    )
    .unwrap();
    assert_eq!(metadata(&ours), metadata(&theirs));
    assert_eq!(ours.get("adapter.lora.alpha"), Some(&MetaValue::F32(8.0)));
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for want in &theirs.tensors {
        let got = ours
            .tensors
            .iter()
            .find(|t| t.name == want.name)
            .unwrap_or_else(|| panic!("{} missing", want.name));
        assert_eq!(
            (&got.dims, got.ggml_type),
            (&want.dims, want.ggml_type),
            "{}",
            want.name
        );
        assert!(
            ours.tensor_bytes(got) == theirs.tensor_bytes(want),
            "{}: bytes differ",
            want.name
        );
    }
    (model, ours, theirs)
}

#[test]
fn q8_0_gguf_lora_equals_llama_cpp_converter_output() {
    let (_, ours, _) = compare_with_converter(TensorType::Q8_0, "tiny-lora-q8_0.gguf");
    // lora_a rows (in = 64 or 96) quantise; lora_b rows (r = 4) fall back to F16, as llama.cpp's.
    let ty = |n: &str| {
        ours.tensors
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .ggml_type
            .name()
    };
    assert_eq!(ty("blk.0.attn_q.weight.lora_a"), Some("Q8_0"));
    assert_eq!(ty("blk.0.attn_q.weight.lora_b"), Some("F16"));
}

/// Gemma 2: `general.architecture = gemma2` and no Q/K permutation (llama.cpp permutes only
/// for `llama`), as its converter writes for PEFT's folder on tiny-gemma2.
#[test]
fn gemma2_gguf_lora_equals_llama_cpp_converter_output() {
    let (_, ours, _) = compare_with_converter_on(
        "tiny-gemma2",
        "peft-gemma2",
        TensorType::F32,
        "tiny-gemma2-lora.gguf",
    );
    assert_eq!(
        ours.get("general.architecture"),
        Some(&MetaValue::String("gemma2".into()))
    );
}

#[test]
fn gemma3_gguf_lora_equals_llama_cpp_converter_output() {
    let (_, ours, _) = compare_with_converter_on(
        "tiny-gemma3",
        "peft-gemma3",
        TensorType::F32,
        "tiny-gemma3-lora.gguf",
    );
    assert_eq!(
        ours.get("general.architecture"),
        Some(&MetaValue::String("gemma3".into()))
    );
}

/// Phi-3: `phi3`, the fused layers under llama.cpp's names (attn_qkv, ffn_up for gate_up_proj).
#[test]
fn phi3_gguf_lora_equals_llama_cpp_converter_output() {
    let (_, ours, _) = compare_with_converter_on(
        "tiny-phi3",
        "peft-phi3",
        TensorType::F32,
        "tiny-phi3-lora.gguf",
    );
    assert_eq!(
        ours.get("general.architecture"),
        Some(&MetaValue::String("phi3".into()))
    );
    assert!(
        ours.tensors
            .iter()
            .any(|t| t.name == "blk.0.attn_qkv.weight.lora_a")
    );
}

/// Mixtures of experts (tools/reference/gguf_lora.py qwen3-moe|qwen2-moe|olmoe|mixtral): PEFT's
/// per-expert folders of the trained adapters become 3-D `ffn_*_exps.weight.lora_a` [E, r, in]
/// and `lora_b` [E, out, r], Qwen2-MoE's shared expert `ffn_*_shexp`, Mixtral's w1/w3/w2 the
/// same stacks under `llama` — byte-equal to llama.cpp's converter. (A fused base's adapters
/// reach the writer per expert: exports read the PEFT folder, which is in the per-expert form.)
#[test]
fn moe_gguf_loras_equal_llama_cpp_converter_output() {
    for (base, family) in [
        ("tiny-qwen3-moe", "qwen3-moe"),
        ("tiny-qwen2-moe", "qwen2-moe"),
        ("tiny-olmoe", "olmoe"),
        ("tiny-mixtral", "mixtral"),
    ] {
        let peft = format!("train-{family}/peft");
        let fixture = format!("tiny-{family}-lora.gguf");
        let (_, ours, _) = compare_with_converter_on(base, &peft, TensorType::F32, &fixture);
        let stacked = ours
            .tensors
            .iter()
            .find(|t| t.name == "blk.1.ffn_down_exps.weight.lora_b")
            .unwrap_or_else(|| panic!("{base}: no stacked expert adapter"));
        assert_eq!(stacked.dims, [4, 64, 4], "{base}"); // ggml order: r, out, experts
    }
}

/// GraniteMoE (`granitemoe`): llama.cpp's converter splits each layer's input_linear into
/// ffn_gate_exps and ffn_up_exps and cannot convert a target_parameters folder, so the fused
/// gate_up adapter of each expert is written as the two stacks llama.cpp applies to those
/// halves: the same A for both, B's gate rows and up rows — each expert's gate and up products
/// are the fused product's rows. Attention Q/K B rows are permuted (its converter is Llama's).
/// llama.cpp itself gives PEFT's adapted logits with this file on tiny-granitemoe.gguf
/// (tools/reference/moe_llama_cpp.py).
#[test]
fn granitemoe_gguf_lora_splits_each_experts_gate_up_adapter() {
    let mut model = adapted_tiny("tiny-granitemoe", "train-granitemoe-fused/peft");
    let folder = Path::new(ROOT).join("tests/fixtures/lora/train-granitemoe-fused/peft");
    let config = peft::read_config(&folder).unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("adapter.gguf");
    let adapters = model.adapter_tensors().unwrap();
    gguf_lora::write(
        &path,
        &model.config,
        adapters.clone(),
        &config,
        "t",
        TensorType::F32,
    )
    .unwrap();
    let ours = GgufFile::open(&path).unwrap();
    let arch = ours.get("general.architecture").and_then(MetaValue::as_str);
    assert_eq!(arch, Some("granitemoe"));
    // 2 layers × (4 attention + 3 expert stacks) × (A, B).
    assert_eq!(ours.tensors.len(), 2 * 7 * 2);
    let tensor = |name: &str| {
        let t = ours.tensors.iter().find(|t| t.name == name);
        let t = t.unwrap_or_else(|| panic!("{name} missing"));
        (t.dims.clone(), ours.dequantize(t).unwrap())
    };
    let (r, experts, hidden, width) = (4, 4, 64, 32);
    for layer in 0..2 {
        let fused = |f: char| {
            let key = |e| {
                format!(
                    "base_model.model.model.layers.{layer}.block_sparse_moe.experts.{e}.gate_up_proj.lora_{f}.weight"
                )
            };
            (0..experts)
                .map(|e| {
                    adapters
                        .iter()
                        .find(|(k, _)| *k == key(e))
                        .unwrap()
                        .1
                        .clone()
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (fused('A'), fused('B'));
        for (half, rows) in [("gate", 0..width), ("up", width..2 * width)] {
            let (a_dims, got_a) = tensor(&format!("blk.{layer}.ffn_{half}_exps.weight.lora_a"));
            let (b_dims, got_b) = tensor(&format!("blk.{layer}.ffn_{half}_exps.weight.lora_b"));
            assert_eq!(a_dims, [hidden as u64, r as u64, experts as u64]);
            assert_eq!(b_dims, [r as u64, width as u64, experts as u64]);
            for e in 0..experts {
                assert_eq!(got_a[e * r * hidden..(e + 1) * r * hidden], a[e].values[..]);
                let want = &b[e].values[rows.start * r..rows.end * r];
                assert_eq!(
                    got_b[e * width * r..(e + 1) * width * r],
                    want[..],
                    "{half} {e}"
                );
            }
        }
    }
    // Q's B rows as llama.cpp's converter permutes them.
    let (_, q) = tensor("blk.0.attn_q.weight.lora_b");
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let hf = &adapters.iter().find(|(k, _)| k == key).unwrap().1;
    let permuted = lora_tune::weights::gguf_names::permute_rows(&hf.values, 64, r, 4).unwrap();
    assert_eq!(q, permuted);
    assert_ne!(q, hf.values);
}

#[test]
fn gguf_lora_equals_llama_cpp_converter_output() {
    let (mut model, _, theirs) = compare_with_converter(TensorType::F32, "tiny-lora.gguf");
    // The permutation is not a no-op on this model, so the comparison above covers it.
    let q = theirs
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight.lora_b")
        .unwrap();
    let raw = model.adapter_tensors().unwrap();
    let hf = &raw
        .iter()
        .find(|(k, _)| k.ends_with("layers.0.self_attn.q_proj.lora_B.weight"))
        .unwrap()
        .1;
    assert_ne!(theirs.dequantize(q).unwrap(), hf.values);
}

#[test]
fn rslora_alpha_is_rewritten_and_alpha_pattern_refused() {
    let mut config = peft::read_config(&Path::new(ROOT).join("tests/fixtures/lora/peft")).unwrap();
    config.use_rslora = true;
    config.r = 16;
    config.lora_alpha = 16.0;
    // llama.cpp scales by alpha / r: α·√r / r = α/√r.
    assert_eq!(gguf_lora::gguf_alpha(&config), 64.0);
    config.alpha_pattern.insert("q_proj".into(), 32.0);
    assert!(
        gguf_lora::unsupported(&config)
            .unwrap()
            .contains("alpha_pattern")
    );
}
