//! The model's tokenizer as a `tokenizers::Tokenizer` (the Rust library transformers itself runs):
//! from `tokenizer.json` (+ `tokenizer_config.json`) in an HF directory, or rebuilt from a GGUF
//! file's `tokenizer.ggml.*` metadata for `gpt2` BPE vocabularies: the split llama.cpp uses for
//! the file's `tokenizer.ggml.pre` ([`super::pretokenizer`]), GPT-2's byte-level mapping and
//! decoder, control tokens as special tokens.
//! Knows token ids and special tokens; chat templates are rendered by `data`.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::WeightsError;
use super::gguf::{GgufFile, MetaValue};
use super::pretokenizer::{self, PreTokenizer};

/// A tokenizer and the special tokens a chat model needs.
pub struct ModelTokenizer {
    pub tokenizer: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// Prepend BOS when encoding with special tokens (GGUF `tokenizer.ggml.add_bos_token`;
    /// tokenizer.json files do this in their own post-processor instead).
    pub add_bos: bool,
    /// Append EOS likewise (`tokenizer.ggml.add_eos_token`).
    pub add_eos: bool,
    /// Jinja chat template, if the model ships one.
    pub chat_template: Option<String>,
}

impl ModelTokenizer {
    /// Token ids of `text`; special-token strings in the text become their ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| e.to_string())?;
        let mut ids = encoding.get_ids().to_vec();
        if let Some(bos) = self.bos_id.filter(|_| add_special_tokens && self.add_bos) {
            ids.insert(0, bos);
        }
        if let Some(eos) = self.eos_id.filter(|_| add_special_tokens && self.add_eos) {
            ids.push(eos);
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| e.to_string())
    }

    /// Rebuilds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, WeightsError> {
        let err = |detail: String| WeightsError::format(&file.path, detail);
        let model = file.get("tokenizer.ggml.model").and_then(MetaValue::as_str);
        if model != Some("gpt2") {
            return Err(err(format!(
                "tokenizer.ggml.model is {model:?}; only gpt2-style BPE tokenizers are rebuilt from GGUF (use the model's HF directory with tokenizer.json instead)"
            )));
        }
        let pre = file.get("tokenizer.ggml.pre").and_then(MetaValue::as_str);
        let pre = pretokenizer::for_name(pre).map_err(|e| err(e.to_string()))?;
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let merges = strings(file, "tokenizer.ggml.merges")?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges: Merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| err("tokenizer.ggml.merges has an entry without a space".into()))?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(|e| {
                err(format!(
                    "tokenizer.ggml.* do not form a BPE vocabulary: {e}"
                ))
            })?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(byte_level_after(&pre).map_err(err)?));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        // ggml token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
            Some(MetaValue::Array(items)) => {
                items.iter().map(|v| v.as_u64().unwrap_or(1)).collect()
            }
            _ => vec![1; tokens.len()],
        };
        let added = |kind: u64, special: bool| -> Vec<AddedToken> {
            types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| **t == kind)
                .map(|(_, tok)| AddedToken::from(tok.to_string(), special).normalized(false))
                .collect()
        };
        tokenizer.add_special_tokens(&added(3, true));
        tokenizer.add_tokens(&added(4, false));
        let id = |key: &str| file.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
        Ok(Self {
            tokenizer,
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_id: id("tokenizer.ggml.eos_token_id"),
            pad_id: id("tokenizer.ggml.padding_token_id"),
            add_bos: match file.get("tokenizer.ggml.add_bos_token") {
                Some(MetaValue::Bool(add)) => *add,
                _ => pre.add_bos,
            },
            add_eos: matches!(
                file.get("tokenizer.ggml.add_eos_token"),
                Some(MetaValue::Bool(true))
            ),
            chat_template: file
                .get("tokenizer.chat_template")
                .and_then(MetaValue::as_str)
                .map(String::from),
        })
    }

    /// Loads `tokenizer.json` and the special tokens and chat template of `tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, WeightsError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(WeightsError::format(
                &path,
                "missing: the model directory needs its tokenizer.json (copy it from the model's repository, next to config.json)".into(),
            ));
        }
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| WeightsError::format(&path, format!("not a tokenizers JSON file: {e}")))?;
        // Lengths are the data pipeline's business: padding or truncation baked into a
        // tokenizer.json (all-MiniLM-L6-v2 pads and truncates to 128) would silently cut rows.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| WeightsError::format(&path, e.to_string()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| WeightsError::format(&config_path, format!("invalid JSON: {e}")))?,
            Err(_) => serde_json::Value::Null,
        };
        // A special token is written either as a string or as {"content": "…"}.
        let id = |key: &str| {
            let v = &config[key];
            let text = v.as_str().or_else(|| v["content"].as_str())?;
            tokenizer.token_to_id(text)
        };
        Ok(Self {
            bos_id: id("bos_token"),
            eos_id: id("eos_token"),
            pad_id: id("pad_token"),
            add_bos: false,
            add_eos: false,
            chat_template: config["chat_template"].as_str().map(String::from),
            tokenizer,
        })
    }
}

/// `pre`'s splits, each isolating its matches, then GPT-2's byte-to-character mapping (with no
/// split of its own), as llama.cpp tokenizes a BPE vocabulary.
fn byte_level_after(pre: &PreTokenizer) -> Result<Sequence, String> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre.splits.len() + 1);
    for re in pre.splits {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("pre-tokenizer expression {re:?}: {e}"))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(steps))
}

/// A metadata array of strings, borrowed.
fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, WeightsError> {
    match file.get(key) {
        Some(MetaValue::Array(items)) => items
            .iter()
            .map(MetaValue::as_str)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| WeightsError::format(&file.path, format!("{key} holds a non-string"))),
        _ => Err(WeightsError::format(
            &file.path,
            format!("{key} is missing: the file carries no tokenizer"),
        )),
    }
}
