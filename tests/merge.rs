//! `merge`: the tiny Llama with PEFT's adapter folded in, written sharded, loads back (our loader
//! here; transformers in tools/reference/peft_export.py `merged`) and gives PEFT's adapted logits;
//! a merge that fails part-way leaves neither the output nor a temp directory behind.

mod common;

use common::tiny;

use std::path::Path;

use lora_tune::device::{DeviceChoice, select};
use lora_tune::dtype::Dtype;
use lora_tune::export::merge::merge;
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::model::decoder::Decoder;
use lora_tune::source::ModelFiles;
use lora_tune::weights::host::HostTensors;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn tiny_dir() -> std::path::PathBuf {
    Path::new(ROOT).join("tests/fixtures/llama/tiny-llama")
}

#[test]
fn merged_sharded_model_gives_the_adapted_logits() {
    let config = lora_tune::model::read_decoder_config(&tiny_dir().join("config.json")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let merged_dir = out.path().join("merged");
    let adapter = Path::new(ROOT).join("tests/fixtures/lora/peft");
    let m = merge(
        &ModelFiles::Dir(tiny_dir()),
        &config,
        None,
        &adapter,
        &merged_dir,
        Dtype::F32,
        100_000, // bytes: forces several shards
    )
    .unwrap();
    assert_eq!(m.folded, 14);
    assert!(m.shards > 1, "{m:?}");
    assert!(merged_dir.join("model.safetensors.index.json").is_file());
    assert!(merged_dir.join("config.json").is_file());

    let device = select(DeviceChoice::Cpu).unwrap().device;
    let config = lora_tune::model::read_decoder_config(&merged_dir.join("config.json")).unwrap();
    let model = Decoder::load(config, HostTensors::read(&merged_dir).unwrap(), &device).unwrap();
    tiny::assert_peft_logits(&model, "merged tiny model");
}

/// DoRA (PEFT's ten trained steps, tools/reference/lora_train.py dora): each row of W + s·B·A
/// rescaled to its magnitude, as PEFT's merge_and_unload, reloads to PEFT's adapted logits; and
/// the same folder applied unmerged gives them too.
#[test]
fn merged_dora_model_gives_the_adapted_logits() {
    let config = lora_tune::model::read_decoder_config(&tiny_dir().join("config.json")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let merged_dir = out.path().join("merged");
    let adapter = Path::new(ROOT).join("tests/fixtures/lora/train-dora/peft");
    let files = ModelFiles::Dir(tiny_dir());
    let m = merge(
        &files,
        &config,
        None,
        &adapter,
        &merged_dir,
        Dtype::F32,
        u64::MAX,
    )
    .unwrap();
    assert_eq!(m.folded, 14);
    let device = select(DeviceChoice::Cpu).unwrap().device;
    let merged_config =
        lora_tune::model::read_decoder_config(&merged_dir.join("config.json")).unwrap();
    let model = Decoder::load(
        merged_config,
        HostTensors::read(&merged_dir).unwrap(),
        &device,
    );
    tiny::assert_peft_logits_of(&model.unwrap(), "lora/train-dora", "merged DoRA model");

    let mut unmerged = tiny::named("tiny-llama");
    let sites = unmerged.config.linear_sites();
    unmerged.apply_peft_folder(&sites, &adapter).unwrap();
    tiny::assert_peft_logits_of(&unmerged, "lora/train-dora", "PEFT's DoRA folder applied");
}

/// Gemma 2 and 3: the (1 + w) norms are copied as stored (the offset is the loader's), so the
/// merged model reloads to PEFT's adapted logits (transformers: tools/reference/peft_export.py
/// gemma2|gemma3 merged DIR).
#[test]
fn merged_gemma_models_give_the_adapted_logits() {
    merged_gives_the_adapted_logits("gemma2", 14);
    merged_gives_the_adapted_logits("gemma3", 14);
}

/// Phi-3: B·A folded into the fused qkv_proj and gate_up_proj.
#[test]
fn merged_phi3_gives_the_adapted_logits() {
    merged_gives_the_adapted_logits("phi3", 8);
}

fn merged_gives_the_adapted_logits(family: &str, folded: usize) {
    let (base, peft) = (format!("tiny-{family}"), format!("lora/peft-{family}"));
    merged_gives_peft_logits(&base, &peft, &peft, folded);
}

/// Golden: tools/reference/moe_train.py (peft 0.21.2). PEFT's per-expert folder of the trained
/// Qwen3-MoE adapters merged into the base stored per expert (each expert's gate_proj, up_proj
/// and down_proj folded) and into the same base stored fused (gate and up, with their own A,
/// folded into their rows of the 3-D gate_up_proj; the 3-D layout kept): both reload to PEFT's
/// adapted logits.
#[test]
fn merged_mixtures_of_experts_keep_their_layout_and_give_the_adapted_logits() {
    let (adapter, logits) = ("lora/train-qwen3-moe/peft", "lora/train-qwen3-moe");
    // 8 attention linears; 24 expert linears per expert, or 16 slices of the 3-D tensors.
    merged_gives_peft_logits("tiny-qwen3-moe", adapter, logits, 32);
    merged_gives_peft_logits("tiny-qwen3-moe-fused", adapter, logits, 24);
    // GraniteMoE's PEFT folder (target_parameters form) into its 3-D input_linear /
    // output_linear, and into the same tensors under transformers 5's names.
    let (adapter, logits) = (
        "lora/train-granitemoe-fused/peft",
        "lora/train-granitemoe-fused",
    );
    merged_gives_peft_logits("tiny-granitemoe", adapter, logits, 24);
    merged_gives_peft_logits("tiny-granitemoe-fused", adapter, logits, 24);
}

/// The PEFT folder `adapter` merged into tests/fixtures/llama/`base` folds `folded` tensors
/// (or slices) and reloads to the logits of `logits`/logits.safetensors.
fn merged_gives_peft_logits(base: &str, adapter: &str, logits: &str, folded: usize) {
    let dir = Path::new(ROOT).join(format!("tests/fixtures/llama/{base}"));
    let config = lora_tune::model::read_decoder_config(&dir.join("config.json")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let merged_dir = out.path().join("merged");
    let adapter = Path::new(ROOT).join(format!("tests/fixtures/{adapter}"));
    let m = merge(
        &ModelFiles::Dir(dir),
        &config,
        None,
        &adapter,
        &merged_dir,
        Dtype::F32,
        100_000_000,
    )
    .unwrap();
    assert_eq!(m.folded, folded, "{base}");
    let device = select(DeviceChoice::Cpu).unwrap().device;
    let merged = lora_tune::model::read_decoder_config(&merged_dir.join("config.json")).unwrap();
    let layout =
        |c: &lora_tune::model::decoder_config::DecoderConfig| c.moe.as_ref().map(|m| m.layout);
    assert_eq!(layout(&merged), layout(&config), "{base}");
    let model = Decoder::load(merged, HostTensors::read(&merged_dir).unwrap(), &device).unwrap();
    let what = format!("merged {base}");
    tiny::assert_peft_logits_of(&model, logits, &what);
}

/// `qwen3`, `granite`, `olmo2` and `phi3` GGUF bases: the merged directory's config.json is its
/// family's (written from the GGUF's metadata: Granite's four scalars, OLMo2's model type,
/// Phi-3's fused projections, rotated share of each head and LongRoPE factors) and
/// reloads to PEFT's adapted logits (transformers: tools/reference/peft_export.py FAMILY merged
/// DIR). The tiny GGUFs have no merges, so the tokenizer written beside them is tiny-llama's.
#[test]
fn merged_from_family_ggufs_gives_the_adapted_logits() {
    for (family, folded) in [("qwen3", 14), ("granite", 14), ("olmo2", 14), ("phi3", 8)] {
        let gguf = format!("tests/fixtures/llama/tiny-{family}.gguf");
        let out = tempfile::tempdir().unwrap();
        let merged_dir = out.path().join("merged");
        let adapter = format!("peft-{family}");
        let m = merge_onto_gguf(&Path::new(ROOT).join(gguf), &adapter, &merged_dir);
        assert_eq!(m.folded, folded);
        let text = std::fs::read_to_string(merged_dir.join("config.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["model_type"], family);
        let device = select(DeviceChoice::Cpu).unwrap().device;
        let config =
            lora_tune::model::read_decoder_config(&merged_dir.join("config.json")).unwrap();
        let model =
            Decoder::load(config, HostTensors::read(&merged_dir).unwrap(), &device).unwrap();
        let what = format!("merged from tiny-{family}.gguf");
        tiny::assert_peft_logits_of(&model, &format!("lora/peft-{family}"), &what);
    }
}

/// Mixture-of-experts GGUF bases (tools/reference/gguf_fixtures.py): PEFT's per-expert folders
/// of the trained adapters (tools/reference/moe_train.py) folded into the experts read out of
/// the stacked ffn_*_exps tensors; the merged directory is its family's checkpoint (per
/// expert; GraniteMoE's 3-D input_linear / output_linear) with the config llama.cpp's reading
/// implies, and reloads to PEFT's adapted logits.
#[test]
fn merged_from_moe_ggufs_gives_the_adapted_logits() {
    for (name, model_type, train) in [
        ("tiny-qwen3-moe", "qwen3_moe", "train-qwen3-moe"),
        ("tiny-qwen2-moe", "qwen2_moe", "train-qwen2-moe"),
        ("tiny-olmoe", "olmoe", "train-olmoe"),
        ("tiny-mixtral", "mixtral", "train-mixtral"),
        // The target_parameters folder into the input_linear joined from ffn_gate/up_exps.
        ("tiny-granitemoe", "granitemoe", "train-granitemoe-fused"),
    ] {
        let gguf = Path::new(ROOT).join(format!("tests/fixtures/llama/{name}.gguf"));
        let out = tempfile::tempdir().unwrap();
        let merged_dir = out.path().join("merged");
        let m = merge_onto_gguf(&gguf, &format!("{train}/peft"), &merged_dir);
        assert!(m.folded > 8, "{name}: {m:?}");
        let text = std::fs::read_to_string(merged_dir.join("config.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["model_type"], model_type, "{name}");
        let device = select(DeviceChoice::Cpu).unwrap().device;
        let config =
            lora_tune::model::read_decoder_config(&merged_dir.join("config.json")).unwrap();
        let hf = lora_tune::model::read_decoder_config(
            &Path::new(ROOT).join(format!("tests/fixtures/llama/{name}/config.json")),
        )
        .unwrap();
        assert_eq!(config.moe, hf.moe, "{name}");
        let model =
            Decoder::load(config, HostTensors::read(&merged_dir).unwrap(), &device).unwrap();
        let what = format!("merged from {name}.gguf");
        tiny::assert_peft_logits_of(&model, &format!("lora/{train}"), &what);
    }
}

/// `gemma2` and `gemma3` GGUF bases (tools/reference/gemma_gguf_fixtures.py): the merged
/// config.json says what llama.cpp computes from the file — `query_pre_attn_scalar` = head_dim,
/// the window per layer as `layer_types`, Gemma 3's RoPE per layer kind, Gemma 2's tied head —
/// and the merged model gives PEFT's logits on the GGUF's transformers twin (by hand,
/// `gemma_gguf_fixtures.py merged DIR2 DIR3` loads both in transformers).
#[test]
fn merged_from_gemma_ggufs_gives_the_adapted_logits() {
    let cases = [
        (
            "tiny-gemma2",
            "peft-gemma2",
            "peft-gemma2-gguf",
            "gemma2",
            14,
        ),
        (
            "tiny-gemma3-6l",
            "peft-gemma3-6l",
            "peft-gemma3-6l",
            "gemma3_text",
            42,
        ),
    ];
    for (gguf, adapter, logits, model_type, folded) in cases {
        let out = tempfile::tempdir().unwrap();
        let merged_dir = out.path().join("merged");
        let path = Path::new(ROOT).join(format!("tests/fixtures/llama/{gguf}.gguf"));
        let m = merge_onto_gguf(&path, adapter, &merged_dir);
        assert_eq!(m.folded, folded);
        let text = std::fs::read_to_string(merged_dir.join("config.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["model_type"], model_type);
        assert_eq!(json["query_pre_attn_scalar"], 16);
        let from_gguf = lora_tune::model::config_of(&ModelFiles::Gguf(path)).unwrap();
        let config =
            lora_tune::model::read_decoder_config(&merged_dir.join("config.json")).unwrap();
        assert_eq!(
            config.deltas.sliding_window,
            from_gguf.deltas.sliding_window
        );
        assert_eq!(config.rope_scaling, from_gguf.rope_scaling);
        assert_eq!(
            config.deltas.local_rope_theta,
            from_gguf.deltas.local_rope_theta
        );
        let device = select(DeviceChoice::Cpu).unwrap().device;
        let model =
            Decoder::load(config, HostTensors::read(&merged_dir).unwrap(), &device).unwrap();
        let what = format!("merged from {gguf}.gguf");
        tiny::assert_peft_logits_of(&model, &format!("lora/{logits}"), &what);
    }
}

/// A `llama` GGUF with a sliding window (llama.cpp's converter drops Mistral's, other writers
/// keep it): the merged config.json is a Mistral one with the window, not a Llama one without.
#[test]
fn a_windowed_llama_gguf_merges_as_mistral() {
    use lora_tune::weights::gguf::{GgufFile, MetaValue};
    use lora_tune::weights::gguf_writer::{self, OutTensor, TensorType};
    let src =
        GgufFile::open(&Path::new(ROOT).join("tests/fixtures/llama/tiny-llama.gguf")).unwrap();
    // The scalars (the tokenizer's arrays are not needed: the merge is given tiny-llama's).
    let mut metadata: Vec<(&str, MetaValue)> = (src.metadata.iter())
        .filter(|(_, v)| !matches!(v, MetaValue::Array(_)))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    metadata.push(("llama.attention.sliding_window", MetaValue::U32(4)));
    // Without rope_freqs, whose factors a config.json cannot carry (refused elsewhere).
    let tensors: Vec<OutTensor> = (src.tensors.iter())
        .filter(|t| t.name != "rope_freqs.weight")
        .map(|t| OutTensor {
            name: t.name.clone(),
            shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
            values: src.dequantize(t).unwrap(),
        })
        .collect();
    let out = tempfile::tempdir().unwrap();
    let gguf = out.path().join("windowed.gguf");
    gguf_writer::write(&gguf, &metadata, &tensors, TensorType::F32).unwrap();
    let merged_dir = out.path().join("merged");
    merge_onto_gguf(&gguf, "peft", &merged_dir);
    let config = lora_tune::model::config_of(&ModelFiles::Gguf(gguf)).unwrap();
    let text = std::fs::read_to_string(merged_dir.join("config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (&json["model_type"], &json["sliding_window"]),
        (&"mistral".into(), &4.into())
    );
    let merged = lora_tune::model::read_decoder_config(&merged_dir.join("config.json")).unwrap();
    assert_eq!(merged.deltas.sliding_window, config.deltas.sliding_window);
}

/// Merges lora/`adapter` onto the GGUF `gguf` into `out`. The tiny GGUFs have no BPE merges,
/// so the tokenizer written beside the model is tiny-llama's.
fn merge_onto_gguf(gguf: &Path, adapter: &str, out: &Path) -> lora_tune::export::merge::Merged {
    let files = ModelFiles::Gguf(gguf.to_path_buf());
    let config = lora_tune::model::config_of(&files).unwrap();
    let tok = lora_tune::model::tokenizer_of(&ModelFiles::Dir(tiny_dir())).unwrap();
    let adapter = Path::new(ROOT).join("tests/fixtures/lora").join(adapter);
    merge(
        &files,
        &config,
        Some(&tok),
        &adapter,
        out,
        Dtype::F32,
        1 << 30,
    )
    .unwrap()
}

#[test]
fn merging_onto_a_gguf_with_rope_freqs_is_refused() {
    assert_merge_refused("tiny-llama.gguf", "peft", "rope_freqs.weight");
}

/// Merging lora/`adapter` onto tests/fixtures/llama/`gguf` fails with a message containing
/// `why`, and writes nothing.
fn assert_merge_refused(gguf: &str, adapter: &str, why: &str) {
    let files = ModelFiles::Gguf(Path::new(ROOT).join("tests/fixtures/llama").join(gguf));
    let config = lora_tune::model::config_of(&files).unwrap();
    let out = tempfile::tempdir().unwrap();
    let adapter = Path::new(ROOT).join("tests/fixtures/lora").join(adapter);
    let merged = out.path().join("merged");
    let result = merge(
        &files,
        &config,
        None,
        &adapter,
        &merged,
        Dtype::F32,
        1 << 30,
    );
    let err = result.unwrap_err().to_string();
    assert!(err.contains(why), "{err}");
    assert!(!merged.exists());
}

#[test]
fn failed_merge_leaves_nothing_behind() {
    // A base missing one adapted weight: the merge streams and writes shards, then finds a fold
    // it could not do. Neither the output nor the temp directory may remain.
    let out = tempfile::tempdir().unwrap();
    let base = out.path().join("base");
    std::fs::create_dir(&base).unwrap();
    std::fs::copy(tiny_dir().join("config.json"), base.join("config.json")).unwrap();
    let bytes = std::fs::read(tiny_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "model.layers.1.mlp.down_proj.weight")
        .collect();
    safetensors::serialize_to_file(kept, None, &base.join("model.safetensors")).unwrap();

    let target = out.path().join("merged");
    let config = lora_tune::model::read_decoder_config(&base.join("config.json")).unwrap();
    let adapter = Path::new(ROOT).join("tests/fixtures/lora/peft");
    let err = merge(
        &ModelFiles::Dir(base),
        &config,
        None,
        &adapter,
        &target,
        Dtype::F32,
        100_000,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("folded 13 of 14"), "{err}");
    let mut left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["base"], "left behind: {left:?}");
}
