//! Dataset rows from JSONL (one JSON object per line), CSV (a header row naming the fields; a
//! `messages` column holds the JSON list), or a directory of such files (sorted by name). The
//! format is detected from the first row's fields (or forced by `format =`). A bad row is
//! reported as `file:line: what is wrong` and either aborts (`strict`) or is skipped and counted.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::template::Message;
use crate::recipe::DataFormat;

/// Longest JSONL line or CSV record we read; longer ones are rejected rather than buffered
/// without bound.
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
    /// A text and its class. A causal LM learns to answer the text with the label.
    Classification { text: String, label: String },
    /// A prompt and two completions, the preferred first (`train.method = "dpo" | "simpo"`).
    Preference {
        prompt: String,
        chosen: String,
        rejected: String,
    },
    /// The same as conversations: the prompt's turns, and each completion's assistant turns.
    ChatPreference {
        prompt: Vec<Message>,
        chosen: Vec<Message>,
        rejected: Vec<Message>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub file: PathBuf,
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

/// The distinct labels of the classification rows in `path`, sorted: a classifier's classes,
/// in logit order.
pub fn class_labels(
    path: &Path,
    format: DataFormat,
    strict: bool,
) -> Result<Vec<String>, DataError> {
    let (rows, _) = read_rows(path, format, strict)?;
    let mut labels: Vec<String> = rows
        .into_iter()
        .filter_map(|r| match r.example {
            Example::Classification { label, .. } => Some(label),
            _ => None,
        })
        .collect();
    labels.sort();
    labels.dedup();
    Ok(labels)
}

/// Every usable row of a JSONL or CSV file, or of every such file in a directory, and the bad
/// ones (none when `strict`, which errors instead).
pub fn read_rows(
    path: &Path,
    format: DataFormat,
    strict: bool,
) -> Result<(Vec<Row>, Vec<BadRow>), DataError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| DataError::Io {
                path: path.into(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl" || x == "csv"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.into()]
    };
    let (mut rows, mut bad) = (Vec::new(), Vec::new());
    let mut format = format;
    for file in &files {
        if file.extension().is_some_and(|x| x == "csv") {
            read_csv(file, &mut format, strict, &mut rows, &mut bad)?;
        } else {
            read_jsonl(file, &mut format, strict, &mut rows, &mut bad)?;
        }
    }
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.into(),
            skipped: bad.len(),
            first: bad.first().map_or_else(
                || "no rows (a directory needs .jsonl or .csv files)".into(),
                ToString::to_string,
            ),
        });
    }
    Ok((rows, bad))
}

/// Keeps a parsed row or records why not.
fn keep(
    parsed: Result<Example, String>,
    file: &Path,
    line: usize,
    strict: bool,
    rows: &mut Vec<Row>,
    bad: &mut Vec<BadRow>,
) -> Result<(), DataError> {
    match parsed {
        Ok(example) => rows.push(Row {
            file: file.into(),
            line,
            example,
        }),
        Err(why) => {
            let b = BadRow {
                file: file.into(),
                line,
                why,
            };
            if strict {
                return Err(DataError::Strict(b));
            }
            bad.push(b);
        }
    }
    Ok(())
}

fn read_csv(
    path: &Path,
    format: &mut DataFormat,
    strict: bool,
    rows: &mut Vec<Row>,
    bad: &mut Vec<BadRow>,
) -> Result<(), DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.into(),
        source,
    })?;
    let since_record = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(RecordLimit {
            inner: file,
            since_record: since_record.clone(),
        });
    let headers = reader
        .headers()
        .map_err(|e| DataError::Format {
            path: path.into(),
            detail: format!("reading the header row: {e}"),
        })?
        .clone();
    let mut last_line = 1; // the header
    for record in reader.records() {
        let (line, parsed) = match record {
            Ok(r) => {
                let line = r.position().map_or(0, |p| p.line() as usize);
                let mut obj = serde_json::Map::new();
                for (name, value) in headers.iter().zip(r.iter()) {
                    let v = if name == "messages" {
                        serde_json::from_str(value).unwrap_or(Value::String(value.into()))
                    } else {
                        Value::String(value.into())
                    };
                    obj.insert(name.into(), v);
                }
                (line, parse_object(&obj, format))
            }
            // The reader cannot go on past an oversized record: the file is refused.
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(DataError::Format {
                    path: path.into(),
                    detail: format!("after line {last_line}: {e}"),
                });
            }
            Err(e) => (
                e.position().map_or(0, |p| p.line() as usize),
                Err(format!("not a valid CSV record: {e}")),
            ),
        };
        since_record.set(0);
        last_line = line;
        keep(parsed, path, line, strict, rows, bad)?;
    }
    Ok(())
}

fn read_jsonl(
    path: &Path,
    format: &mut DataFormat,
    strict: bool,
    rows: &mut Vec<Row>,
    bad: &mut Vec<BadRow>,
) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: path.into(),
        source,
    };
    let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
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
            parse_row(&buf, format)
        };
        keep(parsed, path, line, strict, rows, bad)?;
    }
    Ok(())
}

/// Passes reads through until more than [`MAX_LINE_BYTES`] arrive since the counter was last
/// reset (after each CSV record), so one record cannot be buffered without bound.
struct RecordLimit<R> {
    inner: R,
    since_record: std::rc::Rc<std::cell::Cell<usize>>,
}

impl<R: Read> Read for RecordLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.since_record.get() > MAX_LINE_BYTES {
            return Err(std::io::Error::other(format!(
                "a CSV record longer than {} MiB",
                MAX_LINE_BYTES >> 20
            )));
        }
        let n = self.inner.read(buf)?;
        self.since_record.set(self.since_record.get() + n);
        Ok(n)
    }
}

/// Parses one line; the first row fixes `format` when it is `auto`.
fn parse_row(bytes: &[u8], format: &mut DataFormat) -> Result<Example, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or("expected a JSON object, e.g. {\"messages\": [...]}")?;
    parse_object(obj, format)
}

/// A row's fields as an example; the first row fixes `format` when it is `auto`.
fn parse_object(
    obj: &serde_json::Map<String, Value>,
    format: &mut DataFormat,
) -> Result<Example, String> {
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
        DataFormat::Classification => Ok(Example::Classification {
            text: nonempty("text")?,
            label: match obj.get("label") {
                Some(Value::Number(n)) => n.to_string(),
                _ => nonempty("label")?,
            },
        }),
        DataFormat::Preference => preference(obj, &text),
        DataFormat::Auto => unreachable!("detected above"),
    }
}

/// A conversational preference row: `chosen` and `rejected` message lists, and a `prompt`
/// list or else the turns they share at the start (TRL's `extract_prompt`); each completion
/// must then be assistant turns.
fn chat_preference(obj: &serde_json::Map<String, Value>) -> Result<Example, String> {
    let list = |key: &str| -> Result<Vec<Message>, String> {
        match obj.get(key) {
            Some(Value::Array(l)) => message_list(key, l),
            Some(_) => Err(format!(
                "field `{key}` must be a list of messages, as `chosen` is"
            )),
            None => Err(format!("missing field `{key}`")),
        }
    };
    let (mut chosen, mut rejected) = (list("chosen")?, list("rejected")?);
    let prompt = match obj.get("prompt") {
        Some(_) => list("prompt")?,
        None => {
            let shared = chosen
                .iter()
                .zip(&rejected)
                .take_while(|(c, r)| c == r)
                .count();
            let prompt = chosen[..shared].to_vec();
            chosen.drain(..shared);
            rejected.drain(..shared);
            prompt
        }
    };
    for (key, turns) in [("chosen", &chosen), ("rejected", &rejected)] {
        if turns.is_empty() || turns.iter().any(|m| m.role != "assistant") {
            return Err(format!(
                "`{key}` after the prompt must be one or more assistant turns"
            ));
        }
    }
    if prompt.is_empty() {
        return Err("a conversational pair needs a prompt (a user turn)".into());
    }
    if chosen == rejected {
        return Err("`chosen` and `rejected` are the same: the pair teaches nothing".into());
    }
    Ok(Example::ChatPreference {
        prompt,
        chosen,
        rejected,
    })
}

/// A preference row: strings `chosen` and `rejected`, and `prompt` or else the prompt TRL's
/// `extract_prompt` takes — their longest common prefix (by character), less a space it ends
/// on. Refused when the completions are the same.
fn preference(
    obj: &serde_json::Map<String, Value>,
    text: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Example, String> {
    if obj.get("chosen").is_some_and(Value::is_array) {
        return chat_preference(obj);
    }
    let (chosen, rejected) = (text("chosen")?, text("rejected")?);
    let (prompt, chosen, rejected) = match obj.get("prompt") {
        Some(_) => (text("prompt")?, chosen, rejected),
        None => {
            let (c, r): (Vec<char>, Vec<char>) =
                (chosen.chars().collect(), rejected.chars().collect());
            // TRL's loop: the first differing index (the last shared one when a completion ends
            // first), one back when the character before it is a space.
            let shorter = c.len().min(r.len());
            let mut at = shorter.saturating_sub(1);
            if let Some(i) = (0..shorter).find(|&i| c[i] != r[i]) {
                at = if i > 0 && c[i - 1] == ' ' { i - 1 } else { i };
            }
            let cut = |v: &[char]| -> (String, String) {
                (v[..at].iter().collect(), v[at..].iter().collect())
            };
            let ((prompt, chosen), (_, rejected)) = (cut(&c), cut(&r));
            (prompt, chosen, rejected)
        }
    };
    if chosen.trim().is_empty() || rejected.trim().is_empty() {
        return Err("an empty `chosen` or `rejected` completion".into());
    }
    if chosen == rejected {
        return Err("`chosen` and `rejected` are the same: the pair teaches nothing".into());
    }
    Ok(Example::Preference {
        prompt,
        chosen,
        rejected,
    })
}

fn detect(obj: &serde_json::Map<String, Value>) -> Result<DataFormat, String> {
    let has = |k: &str| obj.contains_key(k);
    Ok(if has("chosen") && has("rejected") {
        DataFormat::Preference
    } else if has("messages") {
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
            "cannot tell the format from fields {fields:?}; expected messages | prompt+completion | instruction+output | text | chosen+rejected (or set data.format)"
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
    messages.extend(message_list("messages", list)?);
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("the conversation has no assistant turn to learn from".into());
    }
    Ok(messages)
}

/// The messages of list field `field`: each a `{role, content}` of a known role, no empty
/// assistant turn.
fn message_list(field: &str, list: &[Value]) -> Result<Vec<Message>, String> {
    let mut messages = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let text = |k: &str| m.get(k).and_then(Value::as_str);
        let (Some(role), Some(content)) = (text("role"), text("content")) else {
            return Err(format!(
                "{field}[{i}] needs string fields `role` and `content`"
            ));
        };
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!(
                "{field}[{i}]: unknown role `{role}` (system, user or assistant)"
            ));
        }
        if role == "assistant" && content.trim().is_empty() {
            return Err(format!("{field}[{i}]: empty assistant turn"));
        }
        messages.push(Message {
            role: role.into(),
            content: content.into(),
        });
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
        read_rows(&path, DataFormat::Auto, strict)
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
    fn overlong_lines_and_records_are_rejected_not_buffered() {
        // Past the limit by more than the CSV reader's read-ahead buffer.
        let long = "x".repeat(MAX_LINE_BYTES + (64 << 10));
        let (rows, bad) = read(
            &format!("{{\"text\":\"a\"}}\n{{\"text\":\"{long}\"}}\n{{\"text\":\"b\"}}\n"),
            false,
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].line, 3, "line numbers go on after the long line");
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0]
                .to_string()
                .ends_with("d.jsonl:2: line longer than 16 MiB"),
            "{}",
            bad[0]
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, format!("text\nshort\n\"{long}\"\nlater\n")).unwrap();
        let Err(err) = read_rows(&path, DataFormat::Auto, false) else {
            panic!("a CSV record over the limit was read");
        };
        let err = err.to_string();
        assert!(
            err.contains("d.csv: after line 2") && err.contains("longer than 16 MiB"),
            "{err}"
        );
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

    #[test]
    fn csv_and_directories_read_like_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.csv"),
            "prompt,completion\n\"Say hi, politely\",\" Hello!\"\n\"multi\nline\",\" ok\"\nonly-one-field\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.jsonl"),
            "{\"prompt\":\"p\",\"completion\":\" c\"}\n{\"prompt\":\"p\"}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (rows, bad) = read_rows(dir.path(), DataFormat::Auto, false).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0].example,
            Example::PromptCompletion {
                prompt: "Say hi, politely".into(),
                completion: " Hello!".into()
            }
        );
        assert!(rows[2].file.ends_with("b.jsonl"));
        let lines: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("a.csv:5:") && lines[0].contains("CSV"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("b.jsonl:2: missing field `completion`"),
            "{lines:?}"
        );
    }
}
