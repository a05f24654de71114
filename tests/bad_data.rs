//! Every kind of bad row is reported as `file:line: what is wrong` through the path a run takes
//! (read, encode with SmolLM2's real tokenizer and template): skipped and counted by default,
//! the first one aborts with `strict = true`, a file with no usable row is an error — and the
//! command stops before any weights load.

mod common;

use common::artifacts;

use std::path::Path;

use lora_tune::data::dataset::Dataset;
use lora_tune::data::encode::Encoder;
use lora_tune::recipe::DataSection;

const LONG: &str = "Please read this very long question carefully before you answer it. ";

fn chat(turns: &[(&str, &str)]) -> String {
    let messages: Vec<serde_json::Value> = turns
        .iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    serde_json::json!({ "messages": messages }).to_string()
}

/// A chat file whose line N holds bad case N (line 1 is good).
fn chat_file() -> String {
    [
        chat(&[
            ("user", "Where is my order?"),
            ("assistant", "It ships today."),
        ]),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}".into(),
        "{\"messages\": [{\"role\": \"user\"}, {\"role\": \"assistant\", \"content\": \"ok\"}]}"
            .into(),
        chat(&[("robot", "beep"), ("assistant", "ok")]),
        chat(&[("user", "Hello?"), ("assistant", "  ")]),
        chat(&[("user", &LONG.repeat(8)), ("assistant", "Sure.")]),
        chat(&[("user", "Anyone there?")]),
        "[1, 2, 3]".into(),
    ]
    .join("\n")
}

const CHAT_WANT: [&str; 7] = [
    "chat.jsonl:2: not valid JSON: EOF while parsing",
    "chat.jsonl:3: messages[0] needs string fields `role` and `content`",
    "chat.jsonl:4: messages[0]: unknown role `robot` (system, user or assistant)",
    "chat.jsonl:5: messages[1]: empty assistant turn",
    "chat.jsonl:6: no trained tokens within data.max_len = 64 (the prompt alone fills it)",
    "chat.jsonl:7: the conversation has no assistant turn to learn from",
    "chat.jsonl:8: expected a JSON object",
];

fn completion_file() -> String {
    [
        r#"{"prompt": "Classify: refund request", "completion": " billing"}"#.to_string(),
        r#"{"prompt": "Classify: login fails"}"#.into(),
        r#"{"prompt": "Classify: parcel lost", "completion": ""}"#.into(),
        serde_json::json!({"prompt": LONG.repeat(8), "completion": " account"}).to_string(),
        r#"{"prompt": 7, "completion": " x"}"#.into(),
    ]
    .join("\n")
}

const COMPLETION_WANT: [&str; 4] = [
    "pc.jsonl:2: missing field `completion` (format PromptCompletion)",
    "pc.jsonl:3: field `completion` is empty",
    "pc.jsonl:4: no trained tokens within data.max_len = 64 (the prompt alone fills it)",
    "pc.jsonl:5: field `prompt` must be a string",
];

fn section(strict: bool) -> DataSection {
    toml::from_str(&format!(
        "train = \"unused\"\nmax_len = 64\nstrict = {strict}\n"
    ))
    .unwrap()
}

fn load(path: &Path, strict: bool) -> Result<Dataset, String> {
    let tok = lora_tune::model::tokenizer_of(&artifacts::smollm2()).unwrap();
    let encoder = Encoder {
        tokenizer: &tok,
        template: tok.chat_template.as_deref(),
        train_on_inputs: false,
        max_len: 64,
        truncation: lora_tune::recipe::Truncation::Truncate,
        labels: None,
    };
    Dataset::load(path, &section(strict), &encoder, &|_| true).map_err(|e| e.to_string())
}

#[test]
fn each_bad_row_is_skipped_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, want) in [
        ("chat.jsonl", chat_file(), &CHAT_WANT[..]),
        ("pc.jsonl", completion_file(), &COMPLETION_WANT[..]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let data = load(&path, false).unwrap();
        assert_eq!(data.examples.len(), 1, "{name}: only line 1 is usable");
        let got: Vec<String> = data.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.ends_with(w) || g.contains(w), "got {g:?}, wanted {w:?}");
        }
        // strict: the first bad row stops it, with its location.
        let err = load(&path, true).unwrap_err();
        assert!(err.contains(want[0]), "{err}");
        assert!(err.contains("data.strict = true"), "{err}");
    }
}

#[test]
fn a_file_with_no_usable_row_is_an_error_naming_the_first_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.jsonl");
    let bad_only: Vec<String> = chat_file().lines().skip(1).map(String::from).collect();
    std::fs::write(&path, bad_only.join("\n")).unwrap();
    let err = load(&path, false).unwrap_err();
    assert!(err.contains("no usable rows (7 skipped)"), "{err}");
    assert!(err.contains("chat.jsonl:1: not valid JSON"), "{err}");
}

#[test]
fn a_run_on_bad_data_stops_before_loading_weights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chat.jsonl"), chat_file()).unwrap();
    let model = artifacts::smollm2();
    let recipe = dir.path().join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[model]\nsource = {:?}\n\n[data]\ntrain = \"chat.jsonl\"\nmax_len = 64\nstrict = true\n",
            model.path()
        ),
    )
    .unwrap();
    let out = common::run(
        Path::new("."),
        &[recipe.to_str().unwrap(), "--device", "cpu"],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains(CHAT_WANT[0]), "{stderr}");
    assert!(
        !stdout.contains("loaded:") && !stdout.contains("device:"),
        "{stdout}"
    );
    assert!(!dir.path().join("out").exists());
}
