//! Each class of bad input, through the real binary on copies of the tiny Llama fixture: one
//! clear message (what, where, what to do), exit code 1, no panic, and nothing written — the
//! working directory holds exactly what it held before.

mod common;

use std::path::{Path, PathBuf};

/// Every file under `dir` with its size, for a before/after comparison.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), meta.len()));
        }
    }
    out.sort();
    out
}

/// A working directory with a copy of the tiny model, a dataset and a recipe that trains.
fn workdir() -> tempfile::TempDir {
    common::tiny_workdir(
        "[model]\nsource = \"model\"\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 32\n\n[train]\nmax_steps = 1\nbatch_size = 2\n\n[export]\nout_dir = \"out\"\n",
    )
}

fn run(dir: &Path, extra: &[&str]) -> std::process::Output {
    common::run(dir, &[&["recipe.toml", "--device", "cpu"], extra].concat())
}

/// Breaks one thing in a fresh [`workdir`] with `spoil`, runs the recipe, checks the contract
/// and returns stderr.
fn run_spoiled(spoil: impl FnOnce(&Path)) -> String {
    run_refused(spoil, &[])
}

fn run_refused(spoil: impl FnOnce(&Path), extra: &[&str]) -> String {
    let tmp = workdir();
    let dir = tmp.path();
    spoil(dir);
    let before = listing(dir);
    let out = run(dir, extra);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.join("out").exists(), "{stderr}");
    assert_eq!(listing(dir), before, "something was written: {stderr}");
    stderr
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// The control: unspoiled, the same directory trains to the end, so each case below fails for
/// its own reason only.
#[test]
fn the_unspoiled_workdir_trains() {
    let tmp = workdir();
    let out = run(tmp.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tmp.path().join("out/adapter_model.safetensors").is_file());
}

#[test]
fn truncated_weights() {
    let err = run_spoiled(|d| {
        let path = d.join("model/model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert!(err.contains("model/model.safetensors"), "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn weights_that_are_not_safetensors() {
    let err = run_spoiled(|d| {
        std::fs::write(
            d.join("model/model.safetensors"),
            "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n",
        )
        .unwrap();
    });
    assert!(err.contains("model/model.safetensors"), "{err}");
    assert!(err.contains("Git LFS pointer"), "{err}");
}

#[test]
fn corrupt_gguf() {
    let err = run_spoiled(|d| {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes()); // tensors
        bytes.extend(1u64.to_le_bytes());
        bytes.resize(64, 0);
        std::fs::write(d.join("model.gguf"), bytes).unwrap();
        edit(
            &d.join("recipe.toml"),
            "source = \"model\"",
            "source = \"model.gguf\"",
        );
    });
    assert!(err.contains("model.gguf"), "{err}");
}

#[test]
fn wrong_architecture() {
    let err = run_spoiled(|d| {
        edit(
            &d.join("model/config.json"),
            "\"model_type\": \"llama\"",
            "\"model_type\": \"gpt2\"",
        );
    });
    assert!(err.contains("model/config.json"), "{err}");
    assert!(
        err.contains("model_type `gpt2` is not a supported decoder"),
        "{err}"
    );
}

#[test]
fn weights_of_another_shape() {
    let err = run_spoiled(|d| {
        edit(
            &d.join("model/config.json"),
            "\"intermediate_size\": 96",
            "\"intermediate_size\": 128",
        );
    });
    assert!(err.contains("model.layers.0.mlp"), "{err}");
    assert!(err.contains("96") && err.contains("128"), "{err}");
}

#[test]
fn missing_tokenizer() {
    let err = run_spoiled(|d| std::fs::remove_file(d.join("model/tokenizer.json")).unwrap());
    assert!(err.contains("model/tokenizer.json: missing"), "{err}");
}

#[test]
fn malformed_recipe() {
    let err = run_spoiled(|d| edit(&d.join("recipe.toml"), "max_len = 32", "max_len = \"long\""));
    assert!(
        err.contains("recipe.toml:6:") && err.contains("data.max_len"),
        "{err}"
    );
}

#[test]
fn no_usable_rows() {
    let err = run_spoiled(|d| {
        std::fs::write(d.join("train.jsonl"), "{\"text\": 3}\nnot json\n").unwrap()
    });
    assert!(
        err.contains("train.jsonl") && err.contains("no usable rows"),
        "{err}"
    );
    assert!(err.contains("train.jsonl:1"), "{err}");
}

#[test]
fn a_bad_row_in_strict_mode() {
    let err = run_spoiled(|d| {
        let path = d.join("train.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"text\": \"unterminated\n");
        std::fs::write(&path, text).unwrap();
        edit(
            &d.join("recipe.toml"),
            "max_len = 32",
            "max_len = 32\nstrict = true",
        );
    });
    assert!(err.contains("train.jsonl:7"), "{err}");
}

/// A run predicted not to fit is refused before the model loads, with the estimate and what to
/// do; `--no-memory-check` runs it anyway.
#[test]
fn a_run_that_cannot_fit_in_memory() {
    let err = run_refused(|_| {}, &["--max-memory", "0.001"]);
    assert!(
        err.contains("peak memory is predicted at ") && err.contains(" MB (weights 0.4 MB"),
        "{err}"
    );
    assert!(
        err.contains("but 1.0 MB are allowed (--max-memory)"),
        "{err}"
    );
    assert!(err.contains("lower train.batch_size"), "{err}");
    assert!(err.contains("--no-memory-check"), "{err}");
    let tmp = workdir();
    let out = run(tmp.path(), &["--max-memory", "0.001", "--no-memory-check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A spoiled adapter folder (truncated weights, malformed config) given to `export`, `merge`
/// and `generate`: one message naming the file, exit 1, nothing written.
#[test]
fn a_spoiled_adapter_folder() {
    let tmp = workdir();
    let dir = tmp.path();
    assert!(run(dir, &[]).status.success());
    let adapter = dir.join("out");
    let lora_tune = |args: &[&str]| {
        let before = listing(dir);
        let out = common::lora_tune(dir).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(listing(dir), before, "{args:?} wrote something: {stderr}");
        stderr
    };
    let commands = [
        "export --adapter out --format gguf --out x.gguf",
        "merge --base model --adapter out --out merged",
        "generate --base model --adapter out --prompt hi",
    ]
    .map(|c| c.split(' ').collect::<Vec<_>>());

    let weights = adapter.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
    for args in &commands {
        let err = lora_tune(args);
        assert!(
            err.contains("out/adapter_model.safetensors"),
            "{args:?}: {err}"
        );
        assert!(err.contains("truncated"), "{args:?}: {err}");
    }

    std::fs::write(&weights, &bytes).unwrap();
    edit(
        &adapter.join("adapter_config.json"),
        "\"r\":",
        "\"r\" 8,\"x\":",
    );
    for args in &commands {
        let err = lora_tune(args);
        assert!(err.contains("out/adapter_config.json"), "{args:?}: {err}");
        assert!(err.contains("line"), "{args:?}: {err}");
    }
}
