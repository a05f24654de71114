//! How a GGUF's BPE tokenizer splits text before the merges, by the name in
//! `tokenizer.ggml.pre`: llama.cpp's split expressions for that name (llama-vocab.cpp,
//! `llm_tokenizer_bpe`, as vendored in llama-cpp-python 0.3.36), applied in turn, each keeping its
//! matches and the text between them as separate pieces; and whether a piece that is itself a
//! token skips the merges (`ignore_merges`, Llama 3). A name whose splitting is not implemented
//! here is refused by name: a wrong split trains on token sequences the model never saw.
//! Proven against llama.cpp's own tokenizer test vectors (tests/tokenizer.rs).

/// The pre-tokenizer of one `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizer {
    /// Split expressions, applied in order; each isolates its matches.
    pub splits: &'static [&'static str],
    /// A piece found whole in the vocabulary is that token (no merges).
    pub ignore_merges: bool,
    /// llama.cpp adds BOS when the file does not say (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
}

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// Non-ASCII characters as \x{…} escapes: some of these ranges start or end at characters that
// Unicode normalisation would rewrite (Ω, K, ΐ), so they must not travel as literals.
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+";
const CJK: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+";

const fn pre(splits: &'static [&'static str]) -> PreTokenizer {
    PreTokenizer {
        splits,
        ignore_merges: false,
        add_bos: false,
    }
}

/// A `tokenizer.ggml.pre` this reader does not split as llama.cpp does.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "tokenizer.ggml.pre is missing (llama.cpp falls back to a generic split and warns that quality degrades); use the model's HF directory with tokenizer.json, or a GGUF converted by a current llama.cpp"
    )]
    Missing,
    #[error(
        "tokenizer.ggml.pre = {0:?}: this pre-tokenizer is not implemented (llama.cpp's gpt-2, llama-bpe, qwen2, qwen35, starcoder, refact, command-r, smollm, deepseek-llm, deepseek-coder, falcon, mpt and their aliases are); use the model's HF directory with tokenizer.json"
    )]
    Unknown(String),
}

/// The pre-tokenizer llama.cpp uses for `name`, or why it is refused.
pub fn for_name(name: Option<&str>) -> Result<PreTokenizer, Refused> {
    let Some(name) = name else {
        return Err(Refused::Missing);
    };
    Ok(match name {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreTokenizer {
            ignore_merges: true,
            add_bos: true,
            ..pre(&[LLAMA3])
        },
        "dbrx" | "smaug-bpe" => pre(&[LLAMA3]),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais" | "trillion"
        | "granite-docling" | "exaone4" => pre(&[GPT2]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => pre(&[r"\p{N}", GPT2]),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => pre(&[QWEN2]),
        "qwen35" => pre(&[QWEN35]),
        "deepseek-llm" => pre(&[
            r"[\r\n]",
            DEEPSEEK_LLM_LETTERS,
            r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
            r"\s+$",
            CJK,
            r"\p{N}+",
        ]),
        "deepseek-coder" => pre(&[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"]),
        "falcon" => pre(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
        other => return Err(Refused::Unknown(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_expression_compiles() {
        for name in [
            "llama-bpe",
            "gpt-2",
            "smollm",
            "qwen2",
            "qwen35",
            "deepseek-llm",
            "deepseek-coder",
            "falcon",
        ] {
            for re in for_name(Some(name)).unwrap().splits {
                assert!(fancy_regex_ok(re), "{name}: {re}");
            }
        }
    }

    fn fancy_regex_ok(re: &str) -> bool {
        tokenizers::pre_tokenizers::split::Split::new(
            tokenizers::pre_tokenizers::split::SplitPattern::Regex(re.into()),
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .is_ok()
    }

    #[test]
    fn unknown_and_missing_names_are_refused_by_name() {
        let err = for_name(Some("kimi-k2")).unwrap_err().to_string();
        assert!(err.contains("\"kimi-k2\""), "{err}");
        let err = for_name(None).unwrap_err().to_string();
        assert!(err.contains("tokenizer.ggml.pre is missing"), "{err}");
    }
}
