//! Target selection and the parameter report equal PEFT's `print_trainable_parameters`, byte
//! for byte. Golden: tools/reference/lora_report.py (peft 0.21.2, transformers 5.23.0).

mod common;

use common::artifacts;

use std::path::Path;

use lora_tune::lora::report::ParameterReport;
use lora_tune::lora::targets::select;
use lora_tune::model::decoder_config::DecoderConfig;
use lora_tune::recipe::{LoraSection, Targets};
use lora_tune::weights::gguf::GgufFile;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn config(model: &str) -> DecoderConfig {
    if model == "smollm2" {
        let files = artifacts::smollm2();
        return DecoderConfig::from_gguf(&GgufFile::open(files.path()).unwrap()).unwrap();
    }
    lora_tune::model::read_decoder_config(
        &Path::new(FIXTURES)
            .join("llama")
            .join(model)
            .join("config.json"),
    )
    .unwrap()
}

fn lora(case: &serde_json::Value) -> LoraSection {
    let targets = match &case["targets"] {
        serde_json::Value::String(s) if s == "all-linear" => Targets::AllLinear,
        serde_json::Value::String(s) => Targets::Regex(s.clone()),
        list => Targets::Modules(serde_json::from_value(list.clone()).unwrap()),
    };
    LoraSection {
        rank: case["rank"].as_u64().unwrap() as u32,
        alpha: case["alpha"].as_f64().unwrap_or(16.0),
        targets,
        layers: serde_json::from_value(case["layers"].clone()).unwrap(),
        rank_pattern: serde_json::from_value(case.get("rank_pattern").cloned().unwrap_or_default())
            .unwrap_or_default(),
        ..LoraSection::default()
    }
}

#[test]
fn report_line_equals_peft_for_every_config() {
    let text = std::fs::read_to_string(format!("{FIXTURES}/lora/report.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 15);
    for case in &cases {
        let config = config(case["model"].as_str().unwrap());
        let adapted = select(&config.linear_sites(), &lora(&case["lora"])).unwrap();
        let report = ParameterReport::new(&adapted, config.parameter_count());
        assert_eq!(report.peft_line(), case["line"].as_str().unwrap(), "{case}");
    }
}

#[test]
fn a_target_matching_nothing_names_the_real_modules() {
    let l = LoraSection {
        targets: Targets::Modules(vec!["query".into(), "value".into()]),
        ..LoraSection::default()
    };
    let err = select(&config("tiny-llama").linear_sites(), &l)
        .unwrap_err()
        .to_string();
    assert!(err.contains("match no linear layer"), "{err}");
    assert!(
        err.contains("down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
        "{err}"
    );
}
