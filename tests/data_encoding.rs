//! Data encoding equals the HF side on SmolLM2's real tokenizer and ChatML template: token ids and
//! loss labels of every row in tests/fixtures/data/*.jsonl (chat with and without a system turn —
//! the template's default system prompt — multi-turn with two assistant turns, the `system`
//! field, text with non-ASCII, prompt_completion, alpaca). Golden: tools/reference/data_fixtures.py
//! (transformers 5.23.0 tokenising the whole rendered chat once, with offsets).

mod common;

use common::artifacts;

use std::path::Path;

use lora_tune::data::encode::Encoder;
use lora_tune::data::rows::read_rows;
use lora_tune::data::template::Message;
use lora_tune::recipe::{DataFormat, Truncation};
use lora_tune::weights::tokenizer::ModelTokenizer;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/data");

/// SmolLM2's own template, completions/assistant turns only, no truncation in practice.
fn chatml_encoder(tok: &ModelTokenizer) -> Encoder<'_> {
    Encoder {
        tokenizer: tok,
        template: tok.chat_template.as_deref(),
        train_on_inputs: false,
        max_len: 4096,
        truncation: Truncation::Truncate,
        labels: None,
    }
}

#[test]
fn ids_and_labels_equal_transformers() {
    let tok = lora_tune::model::tokenizer_of(&artifacts::smollm2()).unwrap();
    let encoder = chatml_encoder(&tok);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(DATA).join("expected.json")).unwrap(),
    )
    .unwrap();
    let mut rows_checked = 0;
    for (file, want) in expected.as_object().unwrap() {
        let (rows, bad) = read_rows(&Path::new(DATA).join(file), DataFormat::Auto, true).unwrap();
        assert!(bad.is_empty());
        assert_eq!(rows.len(), want.as_array().unwrap().len(), "{file}");
        for (row, want) in rows.iter().zip(want.as_array().unwrap()) {
            let (enc, _) = encoder.encode(&row.example).unwrap();
            let ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
            let labels: Vec<i64> = serde_json::from_value(want["labels"].clone()).unwrap();
            assert_eq!(enc.ids, ids, "{file}:{}: token ids", row.line);
            assert_eq!(enc.labels, labels, "{file}:{}: labels", row.line);
            rows_checked += 1;
        }
    }
    assert_eq!(rows_checked, 10);
}

#[test]
fn train_on_inputs_labels_everything_and_max_len_truncates_or_drops() {
    let tok = lora_tune::model::tokenizer_of(&artifacts::smollm2()).unwrap();
    let (rows, _) = read_rows(&Path::new(DATA).join("chat.jsonl"), DataFormat::Auto, true).unwrap();
    let mut encoder = Encoder {
        tokenizer: &tok,
        template: tok.chat_template.as_deref(),
        train_on_inputs: true,
        max_len: 4096,
        truncation: Truncation::Truncate,
        labels: None,
    };
    let (enc, _) = encoder.encode(&rows[0].example).unwrap();
    assert!(enc.labels.iter().all(|&l| l >= 0));
    encoder.train_on_inputs = false;
    encoder.max_len = 45; // row 1 is 50 tokens; its answer starts before 45
    let (enc, fit) = encoder.encode(&rows[0].example).unwrap();
    assert_eq!(
        (enc.ids.len(), fit),
        (45, lora_tune::data::encode::Fit::Truncated)
    );
    encoder.truncation = Truncation::Drop;
    let err = encoder.encode(&rows[0].example).unwrap_err();
    assert!(err.contains("over data.max_len = 45"), "{err}");
    encoder.truncation = Truncation::Truncate;
    encoder.max_len = 20; // the prompt alone fills it: nothing left to learn from
    let err = encoder.encode(&rows[0].example).unwrap_err();
    assert!(err.contains("the prompt alone fills it"), "{err}");
}

#[test]
fn classification_rows_train_a_causal_lm_to_answer_with_the_label() {
    let tok = lora_tune::model::tokenizer_of(&artifacts::smollm2()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.jsonl");
    std::fs::write(
        &path,
        "{\"text\": \"Where is order TH-48213?\", \"label\": \"shipping\"}\n{\"text\": \"x\", \"label\": \"\"}\n",
    )
    .unwrap();
    let (rows, bad) = read_rows(&path, DataFormat::Auto, false).unwrap();
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0]
            .to_string()
            .contains("routing.jsonl:2: field `label` is empty"),
        "{}",
        bad[0]
    );
    let chat = lora_tune::data::rows::Example::Chat(vec![
        Message {
            role: "user".into(),
            content: "Where is order TH-48213?".into(),
        },
        Message {
            role: "assistant".into(),
            content: "shipping".into(),
        },
    ]);
    let encoder = chatml_encoder(&tok);
    // With a chat template: exactly the user/assistant chat, so the parity with transformers
    // proven above for chats covers it.
    assert_eq!(
        encoder.encode(&rows[0].example).unwrap(),
        encoder.encode(&chat).unwrap()
    );
    let (enc, _) = encoder.encode(&rows[0].example).unwrap();
    let trained: Vec<u32> = enc
        .ids
        .iter()
        .zip(&enc.labels)
        .filter(|(_, l)| **l >= 0)
        .map(|(&t, _)| t)
        .collect();
    assert_eq!(
        tok.tokenizer.decode(&trained, false).unwrap(),
        "shipping<|im_end|>\n"
    );
}
