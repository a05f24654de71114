//! The PEFT adapter folder: what we write equals what PEFT's `save_pretrained` wrote for the same
//! config and weights (every field we write, tensor names, shapes, dtype, bytes, metadata), and
//! PEFT's own folder read back onto the base gives PEFT's logits. Golden:
//! tools/reference/peft_export.py (transformers 5.23.0, peft 0.21.2) on the tiny Llama with the
//! trained adapters of tests/fixtures/lora/train/final.safetensors.

mod common;

use common::tiny;

use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::peft::config::PeftConfig;
use lora_tune::peft::folder as peft;
use safetensors::SafeTensors;

fn lora_fixture(name: &str) -> std::path::PathBuf {
    tiny::fixture(&format!("lora/{name}"))
}

#[test]
fn written_folder_equals_what_peft_saves() {
    written_folder_equals_what_peft_saves_on("tiny-llama", "train", "peft");
}

/// Gemma 2's folder: the same module paths and config as PEFT's for Gemma2ForCausalLM.
#[test]
fn written_gemma2_folder_equals_what_peft_saves() {
    written_folder_equals_what_peft_saves_on("tiny-gemma2", "train-gemma2", "peft-gemma2");
}

#[test]
fn written_gemma3_folder_equals_what_peft_saves() {
    written_folder_equals_what_peft_saves_on("tiny-gemma3", "train-gemma3", "peft-gemma3");
}

#[test]
fn written_phi3_folder_equals_what_peft_saves() {
    written_folder_equals_what_peft_saves_on("tiny-phi3", "train-phi3", "peft-phi3");
}

/// The tiny model `base` with the adapters of `lora/<trained>/final.safetensors`, written, equals
/// PEFT's folder `lora/<peft>`.
fn written_folder_equals_what_peft_saves_on(base: &str, trained: &str, peft_dir: &str) {
    let (out, _) = written_folder(base, trained, base);

    let ours: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let theirs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lora_fixture(&format!("{peft_dir}/adapter_config.json"))).unwrap(),
    )
    .unwrap();
    let sorted = |v: &serde_json::Value| {
        let mut names: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    for (key, value) in ours.as_object().unwrap() {
        match key.as_str() {
            "base_model_name_or_path" => assert_eq!(value, base),
            // A Python set: PEFT writes it in hash order.
            "target_modules" => assert_eq!(sorted(value), sorted(&theirs[key])),
            _ => assert_eq!(value, &theirs[key], "adapter_config.json field `{key}`"),
        }
    }
    // The raw text too: sorted keys, two-space indent, integer alpha, as PEFT writes it.
    let text = std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap();
    assert!(
        text.contains("\n  \"lora_alpha\": 8,\n") && text.contains("\"r\": 4,"),
        "{text}"
    );

    assert_same_adapter_tensors(
        &out.path().join("adapter_model.safetensors"),
        &lora_fixture(&format!("{peft_dir}/adapter_model.safetensors")),
    );
}

/// The tiny model `base` with [`tiny::lora`] adapters holding `lora/<trained>/final.safetensors`,
/// written as a PEFT folder whose base is `name`; the folder's dir and the model.
fn written_folder(
    base: &str,
    trained: &str,
    name: &str,
) -> (tempfile::TempDir, lora_tune::model::decoder::Decoder) {
    let lora = tiny::lora();
    let mut model = tiny::named_with_adapters(base, &lora, 0);
    let adapted = select_targets(&model.config.linear_sites(), &lora).unwrap();
    (model.load_adapter_weights(&lora_fixture(&format!("{trained}/final.safetensors")))).unwrap();
    let config = PeftConfig::new(&lora, &adapted, name.into(), None);
    let out = tempfile::tempdir().unwrap();
    let adapters = model.adapter_tensors().unwrap();
    let f32 = lora_tune::dtype::Dtype::F32;
    peft::write(out.path(), &adapters, f32, &config, None).unwrap();
    (out, model)
}

/// `ours` holds the tensors of `theirs` (names, dtypes, shapes, bytes), with `{"format": "pt"}`.
fn assert_same_adapter_tensors(ours: &std::path::Path, theirs: &std::path::Path) {
    let (ours_bytes, theirs) = (std::fs::read(ours).unwrap(), std::fs::read(theirs).unwrap());
    let (ours, theirs) = (
        SafeTensors::deserialize(&ours_bytes).unwrap(),
        SafeTensors::deserialize(&theirs).unwrap(),
    );
    let mut names: Vec<String> = ours.names().into_iter().map(String::from).collect();
    let mut want: Vec<String> = theirs.names().into_iter().map(String::from).collect();
    names.sort();
    want.sort();
    assert_eq!(names, want);
    for name in &names {
        let (a, b) = (ours.tensor(name).unwrap(), theirs.tensor(name).unwrap());
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{name}");
        assert_eq!(a.data(), b.data(), "{name}: values differ");
    }
    let (_, meta) = SafeTensors::read_metadata(&ours_bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
}

#[test]
fn peft_saved_folder_reads_back_to_peft_logits() {
    let mut model = tiny::base();
    let sites = model.config.linear_sites();
    let config = model
        .apply_peft_folder(&sites, &lora_fixture("peft"))
        .unwrap();
    assert_eq!((config.r, config.lora_alpha), (4, 8.0));
    assert_eq!(model.adapters_mut().len(), 14);
    tiny::assert_peft_logits(&model, "PEFT folder read back");
}

#[test]
fn peft_saved_family_folders_read_back_to_peft_logits() {
    for (family, adapted) in [("gemma2", 14), ("gemma3", 14), ("phi3", 8)] {
        let mut model = tiny::named(&format!("tiny-{family}"));
        let sites = model.config.linear_sites();
        model
            .apply_peft_folder(&sites, &lora_fixture(&format!("peft-{family}")))
            .unwrap();
        assert_eq!(model.adapters_mut().len(), adapted);
        let what = format!("{family} PEFT folder read back");
        tiny::assert_peft_logits_of(&model, &format!("lora/peft-{family}"), &what);
    }
}

#[test]
fn configs_we_cannot_represent_are_refused() {
    let text = std::fs::read_to_string(lora_fixture("peft/adapter_config.json")).unwrap();
    for (from, to, want) in [
        ("\"bias\": \"none\"", "\"bias\": \"all\"", "bias"),
        (
            "\"modules_to_save\": null",
            "\"modules_to_save\": [\"lm_head\"]",
            "modules_to_save",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let config = PeftConfig::from_json(&text.replace(from, to)).unwrap();
        let err = config.lora_section().unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// Golden: tools/reference/moe_train.py (peft 0.21.2). The trained adapters on attention and on
/// every expert of Qwen3-MoE, Qwen2-MoE (and its shared expert), Mixtral, GraniteMoE (PEFT's
/// target_parameters form: one A [r·E, in] and B [out, r·E] per 3-D parameter) and OLMoE, written,
/// hold the tensors PEFT's `save_pretrained` wrote for them (per-expert keys
/// `…mlp.experts.{e}.gate_proj.lora_A.weight`, Mixtral's `…block_sparse_moe.experts.{e}.w1…`,
/// as its checkpoints name the block) with its target
/// modules; PEFT's folder read back gives PEFT's logits. (moe_train.py loads that folder onto
/// the stock transformers model, whose experts are fused, to the same logits — not Qwen2-MoE's,
/// whose expert adapters PEFT 0.21.2 leaves out there.)
#[test]
fn mixture_of_experts_folders_equal_what_peft_saves() {
    for (base, trained) in [
        ("tiny-qwen3-moe", "train-qwen3-moe"),
        ("tiny-qwen2-moe", "train-qwen2-moe"),
        ("tiny-mixtral", "train-mixtral"),
        ("tiny-granitemoe", "train-granitemoe-fused"),
        ("tiny-olmoe", "train-olmoe"),
    ] {
        let (out, _) = written_folder(base, trained, base);
        let theirs = lora_fixture(&format!("{trained}/peft"));
        assert_same_adapter_tensors(
            &out.path().join("adapter_model.safetensors"),
            &theirs.join("adapter_model.safetensors"),
        );
        let targets = |dir: &std::path::Path| {
            let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut names: Vec<String> = (v["target_modules"].as_array().unwrap().iter())
                .map(|n| n.as_str().unwrap().to_string())
                .collect();
            names.sort();
            // GraniteMoE's experts: PEFT's target_parameters, in order.
            (
                names,
                v.get("target_parameters").cloned().filter(|p| !p.is_null()),
            )
        };
        assert_eq!(targets(out.path()), targets(&theirs), "{base}");

        let mut read_back = tiny::named(base);
        let sites = read_back.config.linear_sites();
        read_back.apply_peft_folder(&sites, &theirs).unwrap();
        let what = format!("{base} PEFT folder read back");
        tiny::assert_peft_logits_of(&read_back, &format!("lora/{trained}"), &what);
    }
}

/// A fused-layout model's expert adapters (one per expert on `gate_up_proj`, as PEFT's
/// target_parameters trains them) are written in the per-expert form, gate_proj and up_proj
/// sharing A: read back onto the same model stored per expert, they give the same logits.
#[test]
fn fused_expert_adapters_are_written_per_expert() {
    let trained = "train-qwen3-moe-fused";
    let (out, fused) = written_folder("tiny-qwen3-moe-fused", trained, "tiny-qwen3-moe");
    let config = lora_tune::peft::folder::read_config(out.path()).unwrap();
    let names = config.target_modules.as_array().unwrap().clone();
    assert!(names.iter().any(|n| n == "gate_proj") && !names.iter().any(|n| n == "gate_up_proj"));

    let mut per_expert = tiny::named("tiny-qwen3-moe");
    let sites = per_expert.config.linear_sites();
    per_expert.apply_peft_folder(&sites, out.path()).unwrap();
    let batch = &tiny::train_batches()[0];
    let logits = |m: &lora_tune::model::decoder::Decoder| {
        tiny::values(
            &m.forward(&batch.input_ids, &batch.attention_mask)
                .reshape([-1, 1]),
        )
    };
    let (want, got) = (logits(&fused), logits(&per_expert));
    let max = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    eprintln!("fused adapters written per expert, read back: max |Δlogit| {max:e}");
    assert!(max < 1e-5, "{max}");
}

/// GraniteMoE's experts are adapted in PEFT's target_parameters form, whose ParamWrapper takes
/// no dropout and no DoRA: a recipe asking for either on them is refused before training.
#[test]
fn dropout_or_dora_on_granitemoe_experts_is_refused_by_name() {
    let model = tiny::named("tiny-granitemoe");
    let sites = model.config.linear_sites();
    for (lora, what) in [
        (
            lora_tune::recipe::LoraSection {
                dropout: 0.1,
                ..tiny::lora()
            },
            "lora.dropout > 0",
        ),
        (
            lora_tune::recipe::LoraSection {
                use_dora: true,
                ..tiny::lora()
            },
            "DoRA",
        ),
    ] {
        let err = select_targets(&sites, &lora).unwrap_err().to_string();
        assert!(
            err.contains(what) && err.contains("target_parameters"),
            "{err}"
        );
    }
    assert!(select_targets(&sites, &tiny::lora()).is_ok());
}
