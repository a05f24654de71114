//! The model's tokenizer as a `tokenizers::Tokenizer` (the Rust library transformers itself runs):
//! from `tokenizer.json` (+ `tokenizer_config.json`) in an HF directory, or rebuilt from a GGUF
//! file's `tokenizer.ggml.*` metadata: `gpt2` BPE vocabularies with the split llama.cpp uses for
//! the file's `tokenizer.ggml.pre` ([`super::pretokenizer`]), GPT-2's byte-level mapping and
//! decoder; `llama` SentencePiece vocabularies as BPE over merges ranked by score, with byte
//! fallback; control tokens as special tokens.
//! Knows token ids and special tokens; chat templates are rendered by `data`.

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::replace::Replace as DecoderReplace;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Sequence as NormalizerSequence};
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

    /// Rebuilds the tokenizer stored in a GGUF file's metadata: a `gpt2` byte-level BPE
    /// vocabulary, or a `llama` SentencePiece one.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, WeightsError> {
        let err = |detail: String| WeightsError::format(&file.path, detail);
        let model = file.get("tokenizer.ggml.model").and_then(MetaValue::as_str);
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let (mut tokenizer, default_add_bos) = match model {
            Some("gpt2") => (byte_level_bpe(file, &tokens)?, None),
            // llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
            Some("llama") => (sentencepiece(file, &tokens)?, Some(true)),
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.model is {other:?}; the gpt2 (BPE) and llama (SentencePiece) tokenizers are rebuilt from GGUF (use the model's HF directory with tokenizer.json instead)"
                )));
            }
        };
        let pre_add_bos = match model {
            Some("gpt2") => {
                let pre = file.get("tokenizer.ggml.pre").and_then(MetaValue::as_str);
                pretokenizer::for_name(pre)
                    .map_err(|e| err(e.to_string()))?
                    .add_bos
            }
            _ => default_add_bos.unwrap_or(false),
        };
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
                _ => pre_add_bos,
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

/// A `gpt2` vocabulary: byte-level BPE over its merges, split as llama.cpp splits for the
/// file's `tokenizer.ggml.pre`.
fn byte_level_bpe(file: &GgufFile, tokens: &[&str]) -> Result<Tokenizer, WeightsError> {
    let err = |detail: String| WeightsError::format(&file.path, detail);
    let pre = file.get("tokenizer.ggml.pre").and_then(MetaValue::as_str);
    let pre = pretokenizer::for_name(pre).map_err(|e| err(e.to_string()))?;
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
    Ok(tokenizer)
}

/// A `llama` (SentencePiece) vocabulary as llama.cpp tokenizes it: spaces become `▁` (one
/// prepended unless `tokenizer.ggml.add_space_prefix` is false), then the adjacent pair whose
/// joined piece scores highest is merged until none is in the vocabulary, and characters
/// outside it fall back to their `<0xXX>` bytes. Built as transformers' GGUF converter builds
/// it: BPE whose merges are every split of every piece, ranked by the piece's score.
fn sentencepiece(file: &GgufFile, tokens: &[&str]) -> Result<Tokenizer, WeightsError> {
    let err = |detail: String| WeightsError::format(&file.path, detail);
    let scores: Vec<f32> = match file.get("tokenizer.ggml.scores") {
        Some(MetaValue::Array(items)) => items
            .iter()
            .map(|v| match v {
                MetaValue::F32(x) => Some(*x),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| err("tokenizer.ggml.scores holds a non-f32".into()))?,
        _ => {
            return Err(err(
                "tokenizer.ggml.scores is missing: a SentencePiece vocabulary needs its scores"
                    .into(),
            ));
        }
    };
    if scores.len() != tokens.len() {
        return Err(err(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(&scores) {
        let mut local: Vec<(&str, &str)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| vocab.contains_key(*l) && vocab.contains_key(*r))
            .collect();
        local.sort_by_key(|(l, r)| (vocab[*l], vocab[*r]));
        merges.extend(local.into_iter().map(|(l, r)| (l, r, score)));
    }
    // Highest score first, then longer left and right pieces (transformers' order; stable).
    merges.sort_by(|a, b| {
        (b.2, b.0.chars().count(), b.1.chars().count())
            .partial_cmp(&(a.2, a.0.chars().count(), a.1.chars().count()))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let merges: Merges = merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect();
    let unk = file
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(MetaValue::as_u64)
        .and_then(|id| tokens.get(id as usize))
        .unwrap_or(&"<unk>");
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.to_string())
        .byte_fallback(true)
        .fuse_unk(true)
        .build()
        .map_err(|e| {
            err(format!(
                "tokenizer.ggml.* do not form a SentencePiece vocabulary: {e}"
            ))
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    let space_prefix = !matches!(
        file.get("tokenizer.ggml.add_space_prefix"),
        Some(MetaValue::Bool(false))
    );
    let replace = Replace::new(" ", "▁").map_err(|e| err(e.to_string()))?;
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(replace.into());
    tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderReplace::new("▁", " ")
            .map_err(|e| err(e.to_string()))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
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
