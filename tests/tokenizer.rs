//! SmolLM2's tokenizer rebuilt from its GGUF gives the ids transformers gives, on real text.
//! Golden: tools/reference/tokenizer_fixtures.py (transformers 5.23.0, tokenizer from the GGUF).

mod common;

use common::artifacts;

use lora_tune::data::template::{Message, render_chat};
use lora_tune::weights::gguf::GgufFile;
use lora_tune::weights::tokenizer::ModelTokenizer;

fn smollm2_tokenizer() -> ModelTokenizer {
    let files = artifacts::smollm2();
    ModelTokenizer::from_gguf(&GgufFile::open(files.path()).unwrap()).unwrap()
}

#[test]
fn ids_equal_transformers_on_real_text_chat_and_edge_cases() {
    let tok = smollm2_tokenizer();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokenizer/smollm2.json"
    );
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let (name, text) = (
            case["name"].as_str().unwrap(),
            case["text"].as_str().unwrap(),
        );
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, true).unwrap();
        let first_diff = got.iter().zip(&want).position(|(g, w)| g != w);
        assert_eq!(got, want, "{name}: first difference at {first_diff:?}");
        // Byte-level BPE round-trips text exactly.
        assert_eq!(tok.decode(&got, false).unwrap(), text, "{name}");
    }
}

#[test]
fn special_tokens_and_chat_template_come_from_the_gguf() {
    let tok = smollm2_tokenizer();
    // SmolLM2: <|im_start|> = 1 is BOS, <|im_end|> = 2 is both EOS and pad; no BOS on plain text.
    assert_eq!(
        (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos),
        (Some(1), Some(2), Some(2), false)
    );
    assert_eq!(tok.encode("<|im_end|>", true).unwrap(), vec![2]);
    let template = tok.chat_template.as_deref().unwrap();
    assert!(
        template.contains("<|im_start|>") && template.contains("add_generation_prompt"),
        "{template}"
    );
}

/// all-MiniLM-L6-v2's tokenizer.json pads and truncates to 128; from_dir turns both off.
/// Golden: tokenizers (Python) on the same file with no_padding()/no_truncation().
#[test]
fn hf_dir_tokenizer_loads_without_baked_in_padding() {
    let files = artifacts::minilm();
    let tok = ModelTokenizer::from_dir(files.path()).unwrap();
    let ids = tok
        .encode("Hello world, route this ticket to billing!", true)
        .unwrap();
    assert_eq!(
        ids,
        [
            101, 7592, 2088, 1010, 2799, 2023, 7281, 2000, 25640, 999, 102
        ]
    );
    assert_eq!(tok.pad_id, Some(0));
    let long = "word ".repeat(300);
    assert!(
        tok.encode(&long, true).unwrap().len() > 300,
        "truncation to 128 is still on"
    );
}

/// The GGUF's ChatML template rendered by minijinja equals transformers' apply_chat_template.
#[test]
fn chat_template_renders_as_transformers_does() {
    let tok = smollm2_tokenizer();
    let template = tok.chat_template.as_deref().unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokenizer/smollm2.json"
    );
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let eval = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/datasets/tallyhub_single_turn_eval.jsonl"
    ))
    .unwrap();
    for (i, line) in eval.lines().take(3).enumerate() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let messages: Vec<Message> = serde_json::from_value(row["messages"].clone()).unwrap();
        let want = cases
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == format!("support-ticket-{i}-chatml"))
            .unwrap();
        let got = render_chat(template, &messages, false, "<|im_start|>", "<|im_end|>").unwrap();
        assert_eq!(got, want["text"].as_str().unwrap());
    }
    // No system turn: SmolLM2's template inserts its default one (printed by transformers 5.23.0).
    let user = [Message {
        role: "user".into(),
        content: "Hi".into(),
    }];
    assert_eq!(
        render_chat(template, &user, true, "<|im_start|>", "<|im_end|>").unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}
