//! The tiny random Llama fixture and what the reference scripts computed on it: the base model,
//! the same with fresh adapters, the first training micro-batch, and PEFT's adapted logits on it.

#![allow(dead_code)] // each test binary uses the part it needs

use std::path::{Path, PathBuf};

use lora_tune::device::{DeviceChoice, select};
use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::adapters::host;
use lora_tune::model::config::LlamaConfig;
use lora_tune::model::llama::Llama;
use lora_tune::recipe::LoraSection;
use lora_tune::weights::host::HostTensors;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn base() -> Llama {
    let dir = fixture("llama/tiny-llama");
    let config = LlamaConfig::from_json_file(&dir.join("config.json")).unwrap();
    let device = select(DeviceChoice::Cpu).unwrap().device;
    Llama::load(config, HostTensors::read(&dir).unwrap(), &device).unwrap()
}

/// The base with fresh adapters as `lora` describes, initialised from `seed`.
pub fn with_adapters(lora: &LoraSection, seed: u64) -> Llama {
    let mut model = base();
    let adapted = select_targets(&model.config.linear_sites(), lora).unwrap();
    model.attach_adapters(&adapted, lora, seed).unwrap();
    model
}

/// The first micro-batch of tools/reference/lora_train.py: token ids and attention mask.
pub fn first_batch() -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let text = std::fs::read_to_string(fixture("lora/train/batches.json")).unwrap();
    let batches: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows =
        |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(batches[0][k].clone()).unwrap() };
    (
        rows("input_ids")
            .iter()
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect(),
        rows("attention_mask")
            .iter()
            .map(|r| r.iter().map(|&t| t as u8).collect())
            .collect(),
    )
}

/// `model`'s logits on the first batch equal PEFT's adapted logits (tools/reference/
/// peft_export.py) to ≤1e-4; prints the figure under `what`.
pub fn assert_peft_logits(model: &Llama, what: &str) {
    let (ids, mask) = first_batch();
    let got = host(&model.forward(&ids, &mask)).unwrap().values;
    let want = HostTensors::read(&fixture("lora/peft/logits.safetensors"))
        .unwrap()
        .take("logits", &[2, 9, 256])
        .unwrap()
        .values;
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{what}: max |Δlogit| vs PEFT {worst:e}");
    assert!(worst < 1e-4, "{what}: {worst}");
}
