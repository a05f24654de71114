//! The real models of DESIGN.md §4 (see artifacts/), inspected tensor by tensor.

mod common;

use common::artifacts;

use artifacts::{minilm, smollm2};
use lora_tune::source::ModelFiles;
use lora_tune::weights::Inventory;

fn tensor<'a>(inv: &'a Inventory, name: &str) -> &'a lora_tune::weights::TensorEntry {
    inv.tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

#[test]
fn smollm2_gguf_tensor_table() {
    let files = smollm2();
    assert!(matches!(files, ModelFiles::Gguf(_)));
    let inv = Inventory::read(files.path()).unwrap();
    assert_eq!(inv.format, "gguf v3");
    assert_eq!(inv.tensors.len(), 272);
    let q = tensor(&inv, "blk.0.attn_q.weight");
    assert_eq!(
        (q.dtype.as_str(), q.shape.as_slice()),
        ("Q4_1", &[576, 576][..])
    );
    let k = tensor(&inv, "blk.29.attn_k.weight");
    assert_eq!(
        (k.dtype.as_str(), k.shape.as_slice()),
        ("Q4_1", &[576, 192][..])
    );
    let emb = tensor(&inv, "token_embd.weight");
    assert_eq!(
        (emb.dtype.as_str(), emb.shape.as_slice()),
        ("Q8_0", &[576, 49152][..])
    );
    let norm = tensor(&inv, "output_norm.weight");
    assert_eq!(
        (norm.dtype.as_str(), norm.shape.as_slice()),
        ("F32", &[576][..])
    );
    assert!(
        inv.tensors.iter().all(|t| t.name != "output.weight"),
        "tied embeddings: no output.weight"
    );
    // 134,515,008 = the HF model's parameters without the tied lm_head counted twice.
    assert_eq!(inv.parameters(), 134_515_008);
    let meta = |k: &str| {
        inv.metadata
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(meta("general.architecture"), Some("\"llama\""));
    assert_eq!(meta("llama.block_count"), Some("30"));
    assert_eq!(meta("llama.attention.head_count_kv"), Some("3"));
    assert_eq!(meta("tokenizer.ggml.tokens"), Some("[string; 49152 items]"));
}

#[test]
fn minilm_safetensors_tensor_table() {
    let files = minilm();
    assert!(matches!(files, ModelFiles::Dir(_)));
    let inv = Inventory::read(files.path()).unwrap();
    assert_eq!(inv.format, "safetensors");
    assert_eq!(inv.tensors.len(), 104);
    let emb = tensor(&inv, "embeddings.word_embeddings.weight");
    assert_eq!(
        (emb.dtype.as_str(), emb.shape.as_slice()),
        ("F32", &[30522, 384][..])
    );
    let q = tensor(&inv, "encoder.layer.5.attention.self.query.weight");
    assert_eq!(
        (q.dtype.as_str(), q.shape.as_slice()),
        ("F32", &[384, 384][..])
    );
    let ffn = tensor(&inv, "encoder.layer.0.intermediate.dense.weight");
    assert_eq!(ffn.shape, vec![1536, 384]);
    // 22,713,216 weights + the 512-entry `embeddings.position_ids` buffer.
    assert_eq!(inv.parameters(), 22_713_728);
    assert!(
        inv.metadata
            .iter()
            .any(|(k, v)| k == "config.model_type" && v == "\"bert\"")
    );
}

#[test]
fn truncated_real_gguf_is_an_error_naming_the_tensor_not_a_panic() {
    let files = smollm2();
    let bytes = std::fs::read(files.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for len in [10, 3_000, 1_000_000, bytes.len() - 1] {
        let cut = dir.path().join(format!("cut-{len}.gguf"));
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let err = Inventory::read(&cut)
            .err()
            .unwrap_or_else(|| panic!("{len} bytes accepted"))
            .to_string();
        assert!(err.contains(&cut.display().to_string()), "{err}");
        assert!(
            err.contains("truncated") || err.contains("too short"),
            "{len}: {err}"
        );
    }
}

#[test]
fn truncated_real_safetensors_is_an_error_not_a_panic() {
    let files = minilm();
    let bytes = std::fs::read(files.path().join("model.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for len in [4, 100, bytes.len() / 2] {
        let cut = dir.path().join("model.safetensors");
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let err = Inventory::read(&cut)
            .err()
            .unwrap_or_else(|| panic!("{len} bytes accepted"))
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }
}
