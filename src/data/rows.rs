//! Dataset rows from JSONL: one JSON object per line, its format detected from the first row's
//! fields (or forced by `format =`). A bad row is reported as `file:line: what is wrong` and
//! either aborts (`strict`) or is skipped and counted.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::template::Message;
use crate::recipe::DataFormat;

/// Longest line we read; longer ones are rejected rather than buffered without bound.
const MAX_LINE_BYTES: usize = 16 << 20;

/// One training example, whatever file format it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Example {
    /// Plain text: every token is trained on.
    Text(String),
    /// A prompt (not trained on by default) and its completion.
    PromptCompletion { prompt: String, completion: String },
    /// A conversation: assistant turns are trained on by default.
    Chat(Vec<Message>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based line in the file, for messages.
    pub line: usize,
    pub example: Example,
}

/// A row we could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub file: PathBuf,
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.why)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} (data.strict = true stops at the first bad row)")]
    Strict(BadRow),
    #[error("{}: no usable rows ({skipped} skipped); first problem: {first}", path.display())]
    Empty {
        path: PathBuf,
        skipped: usize,
        first: String,
    },
    #[error("{}: {detail}", path.display())]
    Format { path: PathBuf, detail: String },
}

/// Every usable row of a JSONL file and the bad ones (empty when `strict`, which errors instead).
pub fn read_jsonl(
    path: &Path,
    format: DataFormat,
    strict: bool,
) -> Result<(Vec<Row>, Vec<BadRow>), DataError> {
    let io = |source| DataError::Io {
        path: path.into(),
        source,
    };
    let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
    let (mut rows, mut bad) = (Vec::new(), Vec::new());
    let mut format = format;
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io)?;
        if n == 0 {
            break;
        }
        line += 1;
        let parsed = if buf.len() > MAX_LINE_BYTES && !buf.ends_with(b"\n") {
            // Skip the rest of the over-long line.
            let mut rest = Vec::new();
            while reader.read_until(b'\n', &mut rest).map_err(io)? > 0 && !rest.ends_with(b"\n") {
                rest.clear();
            }
            Err(format!("line longer than {} MiB", MAX_LINE_BYTES >> 20))
        } else if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            parse_row(&buf, &mut format)
        };
        match parsed {
            Ok(example) => rows.push(Row { line, example }),
            Err(why) => {
                let b = BadRow {
                    file: path.into(),
                    line,
                    why,
                };
                if strict {
                    return Err(DataError::Strict(b));
                }
                bad.push(b);
            }
        }
    }
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.into(),
            skipped: bad.len(),
            first: bad
                .first()
                .map_or_else(|| "the file has no rows".into(), ToString::to_string),
        });
    }
    Ok((rows, bad))
}

/// Parses one line; the first row fixes `format` when it is `auto`.
fn parse_row(bytes: &[u8], format: &mut DataFormat) -> Result<Example, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or("expected a JSON object, e.g. {\"messages\": [...]}")?;
    if *format == DataFormat::Auto {
        *format = detect(obj)?;
    }
    let text = |key: &str| -> Result<String, String> {
        match obj.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("field `{key}` must be a string")),
            None => Err(format!("missing field `{key}` (format {format:?})")),
        }
    };
    let nonempty = |key: &str| -> Result<String, String> {
        let s = text(key)?;
        if s.trim().is_empty() {
            Err(format!("field `{key}` is empty"))
        } else {
            Ok(s)
        }
    };
    match format {
        DataFormat::Text => Ok(Example::Text(nonempty("text")?)),
        DataFormat::PromptCompletion => Ok(Example::PromptCompletion {
            prompt: text("prompt")?,
            completion: nonempty("completion")?,
        }),
        DataFormat::Alpaca => {
            let input = obj.get("input").and_then(Value::as_str).unwrap_or("");
            Ok(Example::PromptCompletion {
                prompt: alpaca_prompt(&nonempty("instruction")?, input),
                completion: nonempty("output")?,
            })
        }
        DataFormat::Chat => chat(obj).map(Example::Chat),
        DataFormat::Classification => {
            Err("classification rows need the encoder/classification support of issue #7".into())
        }
        DataFormat::Auto => unreachable!("detected above"),
    }
}

fn detect(obj: &serde_json::Map<String, Value>) -> Result<DataFormat, String> {
    let has = |k: &str| obj.contains_key(k);
    Ok(if has("messages") {
        DataFormat::Chat
    } else if has("prompt") && has("completion") {
        DataFormat::PromptCompletion
    } else if has("instruction") && has("output") {
        DataFormat::Alpaca
    } else if has("text") && has("label") {
        DataFormat::Classification
    } else if has("text") {
        DataFormat::Text
    } else {
        let fields: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(format!(
            "cannot tell the format from fields {fields:?}; expected messages | prompt+completion | instruction+output | text (or set data.format)"
        ));
    })
}

fn chat(obj: &serde_json::Map<String, Value>) -> Result<Vec<Message>, String> {
    let list = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("missing field `messages` (a list of {\"role\", \"content\"})")?;
    let mut messages = Vec::with_capacity(list.len() + 1);
    if let Some(system) = obj.get("system").and_then(Value::as_str) {
        messages.push(Message {
            role: "system".into(),
            content: system.into(),
        });
    }
    for (i, m) in list.iter().enumerate() {
        let field = |k: &str| m.get(k).and_then(Value::as_str);
        let (Some(role), Some(content)) = (field("role"), field("content")) else {
            return Err(format!(
                "messages[{i}] needs string fields `role` and `content`"
            ));
        };
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!(
                "messages[{i}]: unknown role `{role}` (system, user or assistant)"
            ));
        }
        if role == "assistant" && content.trim().is_empty() {
            return Err(format!("messages[{i}]: empty assistant turn"));
        }
        messages.push(Message {
            role: role.into(),
            content: content.into(),
        });
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("the conversation has no assistant turn to learn from".into());
    }
    Ok(messages)
}

/// The Stanford Alpaca prompt.
fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, strict: bool) -> Result<(Vec<Row>, Vec<BadRow>), DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, text).unwrap();
        read_jsonl(&path, DataFormat::Auto, strict)
    }

    #[test]
    fn bad_rows_are_counted_with_their_line() {
        let (rows, bad) = read(
            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello\"}]}\n\n{oops\n{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n",
            false,
        )
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 3);
        assert!(
            bad[0].to_string().contains("d.jsonl:3: not valid JSON"),
            "{}",
            bad[0]
        );
        assert!(bad[1].why.contains("unknown role `robot`"), "{}", bad[1]);
    }

    #[test]
    fn strict_stops_at_the_first_bad_row_and_empty_is_an_error() {
        let err = read("{\"text\":\"a\"}\n{\"text\":3}\n", true).unwrap_err();
        assert!(
            err.to_string()
                .contains(":2: field `text` must be a string"),
            "{err}"
        );
        let err = read("{\"prompt\":\"a\"}\n", false).unwrap_err();
        assert!(
            err.to_string().contains("no usable rows (1 skipped)"),
            "{err}"
        );
    }
}
