//! Tokenizers rebuilt from GGUF files give llama.cpp's ids: SmolLM2's on real text (golden:
//! tools/reference/llama_cpp_tokenizer_fixtures.py, llama.cpp through llama-cpp-python 0.3.36),
//! and every BPE vocabulary llama.cpp ships test vectors for. transformers' GGUF converter
//! (tools/reference/tokenizer_fixtures.py, transformers 5.23.0) agrees except where it drops
//! SmolLM's digit split.

mod common;

use common::artifacts;

use lora_tune::data::template::{Message, render_chat};
use lora_tune::weights::gguf::GgufFile;
use lora_tune::weights::tokenizer::ModelTokenizer;

fn smollm2_tokenizer() -> ModelTokenizer {
    let files = artifacts::smollm2();
    ModelTokenizer::from_gguf(&GgufFile::open(files.path()).unwrap()).unwrap()
}

/// `[(name, text, ids)]` of a fixture under tests/fixtures/tokenizer/; `texts` supplies the
/// texts of a fixture that carries ids only.
fn fixture_cases(file: &str) -> Vec<(String, String, Vec<u32>)> {
    let path = common::fixture(&format!("tokenizer/{file}"));
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("tokenizer/smollm2.json")).unwrap(),
    )
    .unwrap();
    cases
        .as_array()
        .unwrap()
        .iter()
        .zip(texts.as_array().unwrap())
        .map(|(case, with_text)| {
            assert_eq!(case["name"], with_text["name"]);
            let ids = case["ids"].as_array().unwrap().iter();
            (
                case["name"].as_str().unwrap().to_string(),
                with_text["text"].as_str().unwrap().to_string(),
                ids.map(|v| v.as_u64().unwrap() as u32).collect(),
            )
        })
        .collect()
}

#[test]
fn smollm2_ids_equal_llama_cpp_on_real_text_chat_and_edge_cases() {
    let tok = smollm2_tokenizer();
    let cases = fixture_cases("smollm2-llama-cpp.json");
    assert_eq!(cases.len(), 10);
    for (name, text, want) in cases {
        let got = tok.encode(&text, true).unwrap();
        let first_diff = got.iter().zip(&want).position(|(g, w)| g != w);
        assert_eq!(got, want, "{name}: first difference at {first_diff:?}");
        // Byte-level BPE round-trips text exactly.
        assert_eq!(tok.decode(&got, false).unwrap(), text, "{name}");
    }
}

/// transformers builds SmolLM2's GGUF tokenizer with GPT-2's split alone, where SmolLM's own
/// tokenizer (and llama.cpp's `smollm`) first isolates each digit: the two differ only where a
/// run of whitespace precedes a digit, as in the licence's indented section numbers
/// ("\n\n   1." is `\n\n  `, ` `, `1` there and `\n\n   `, `1` here).
#[test]
fn smollm2_ids_equal_transformers_except_whitespace_before_digits() {
    let tok = smollm2_tokenizer();
    for (name, text, want) in fixture_cases("smollm2.json") {
        let got = tok.encode(&text, true).unwrap();
        if name == "apache-2.0-licence" {
            assert_ne!(
                got, want,
                "the known difference went away: update this test"
            );
            assert_eq!(tok.decode(&want, false).unwrap(), text);
        } else {
            assert_eq!(got, want, "{name}");
        }
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

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// llama.cpp's own tokenizer test vectors (tests/test-tokenizer-0: add_special false,
/// parse_special false) for every BPE vocabulary it ships them for, through the tokenizer
/// rebuilt from each `ggml-vocab-NAME.gguf` with its `tokenizer.ggml.pre`.
#[test]
fn bpe_vocabularies_split_as_llama_cpp_on_its_test_vectors() {
    vocabularies_split_as_llama_cpp(&[
        "gpt-2",
        "mpt",
        "llama-bpe",
        "qwen2",
        "qwen35",
        "starcoder",
        "refact",
        "command-r",
        "deepseek-llm",
        "deepseek-coder",
        "falcon",
    ]);
}

/// The same for the SentencePiece (`tokenizer.ggml.model = "llama"`) vocabularies llama.cpp
/// ships vectors for: Llama 2's (also Mistral's) and Phi-3's.
#[test]
fn sentencepiece_vocabularies_split_as_llama_cpp_on_its_test_vectors() {
    vocabularies_split_as_llama_cpp(&["llama-spm", "phi-3"]);
    // Decoding gives the text back (the prepended space stripped), BOS added as llama.cpp does.
    let gguf = artifacts::llama_cpp_vocab_dir().join("ggml-vocab-llama-spm.gguf");
    let tok = ModelTokenizer::from_gguf(&GgufFile::open(&gguf).unwrap()).unwrap();
    for text in [
        "Hello world",
        " Hello, world!",
        "нещо на Български",
        "🦙 Äpfel\n\n x",
    ] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{ids:?}");
    }
    let with_bos = tok.encode("Hello", true).unwrap();
    assert_eq!(with_bos[0], 1, "{with_bos:?}");
}

fn vocabularies_split_as_llama_cpp(names: &[&str]) {
    let dir = artifacts::llama_cpp_vocab_dir();
    let mut failures = Vec::new();
    let mut checked = 0;
    for &name in names {
        let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
        let tok = match ModelTokenizer::from_gguf(&GgufFile::open(&gguf).unwrap()) {
            Ok(tok) => tok,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let inp = std::fs::read_to_string(gguf.with_extension("gguf.inp")).unwrap();
        let out = std::fs::read_to_string(gguf.with_extension("gguf.out")).unwrap();
        // As test-tokenizer-0.cpp reads it: a separator at the very end closes the last text.
        let inp = inp.strip_suffix(SEPARATOR).unwrap_or(&inp);
        let texts: Vec<&str> = inp.split(SEPARATOR).collect();
        let wants: Vec<&str> = out.lines().collect();
        assert_eq!(texts.len(), wants.len(), "{name}: .inp and .out disagree");
        for (text, want) in texts.iter().zip(wants) {
            let want: Vec<u32> = want
                .split_whitespace()
                .map(|id| id.parse().unwrap())
                .collect();
            let got = tok.encode(text, false).unwrap();
            checked += 1;
            if got != want {
                failures.push(format!("{name}: {text:?}: got {got:?}, llama.cpp {want:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The bug this guards against: a Qwen2.5 GGUF split "mid-cycle" as `-`, `cycle` (GPT-2's
/// split) where transformers and llama.cpp keep `-cycle` whole.
#[test]
fn qwen2_keeps_punctuation_with_the_word_that_follows() {
    let dir = artifacts::llama_cpp_vocab_dir();
    let tok =
        ModelTokenizer::from_gguf(&GgufFile::open(&dir.join("ggml-vocab-qwen2.gguf")).unwrap())
            .unwrap();
    let ids = tok.encode("mid-cycle", false).unwrap();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| tok.tokenizer.id_to_token(id).unwrap())
        .collect();
    assert_eq!(
        pieces.last().map(String::as_str),
        Some("-cycle"),
        "{pieces:?}"
    );
}
