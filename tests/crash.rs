//! Crash safety on the tiny Llama fixture through the real binary: a training run SIGKILLed at
//! several moments (before its first checkpoint, while a checkpoint is half written, mid-run,
//! while loading) and stopped once with SIGTERM, resumed each time, ends with the adapter and
//! losses of the uninterrupted run; a merge that fails or is killed mid-write leaves no partial
//! output.

#![cfg(unix)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/llama/tiny-llama"
);
const STEPS: u64 = 40;

/// A recipe for `STEPS` checkpointed steps on the tiny model, writing to `<dir>/<name>`.
fn recipe(dir: &Path, name: &str) -> PathBuf {
    let rows = common::ticket_rows(24);
    std::fs::write(dir.join("train.jsonl"), rows.join("\n")).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[model]\nsource = {TINY:?}\n\n[lora]\nrank = 4\ndropout = 0.1\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 64\n\n[train]\nmax_steps = {STEPS}\nbatch_size = 2\nlr = 1e-3\ncheckpoint_every = 1\n\n[export]\nout_dir = \"{name}\"\n"
        ),
    )
    .unwrap();
    path
}

fn start(recipe: &Path, resume: Option<&Path>) -> Child {
    let mut cmd = common::lora_tune(Path::new("."));
    cmd.arg(recipe).args(["--device", "cpu"]);
    if let Some(dir) = resume {
        cmd.arg("--resume").arg(dir);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Polls until `ready` holds, then sends `sig` and waits for the run; fails if the run ends
/// by itself first.
fn signal_when(mut child: Child, sig: &str, mut ready: impl FnMut() -> bool) -> Output {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run ended ({status}) before the {sig} point: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if ready() {
            signal(&child, sig);
            return child.wait_with_output().unwrap();
        }
        assert!(Instant::now() < deadline, "{sig} point never reached");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// [`signal_when`] with SIGKILL; returns the exit status.
fn kill_when(child: Child, ready: impl FnMut() -> bool) -> ExitStatus {
    signal_when(child, "-KILL", ready).status
}

fn finish(child: Child) -> Output {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (step, loss, grad_norm, lr) of every metrics.jsonl line.
fn steps(run: &Path) -> Vec<(u64, String, String, String)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let f = |k: &str| v[k].to_string();
            (
                v["step"].as_u64().unwrap(),
                f("loss"),
                f("grad_norm"),
                f("lr"),
            )
        })
        .collect()
}

fn latest_step(run: &Path) -> u64 {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_prefix("step-")?.parse().ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn killed_at_several_moments_then_resumed_equals_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = recipe(tmp.path(), "whole");
    finish(start(&whole, None));

    let cut = recipe(tmp.path(), "cut");
    let run = tmp.path().join("cut");
    let killed = |status: ExitStatus| assert_eq!(status.signal(), Some(9), "{status}");

    // 1. Early: as soon as metrics.jsonl appears (usually before the first checkpoint; a
    //    resume with no checkpoint yet starts over).
    killed(kill_when(start(&cut, None), || {
        run.join("metrics.jsonl").exists()
    }));
    assert!(!run.join("adapter_model.safetensors").exists());

    // 2. While a checkpoint is half written: freeze the run as soon as a temp step directory
    //    appears, and kill it only if the directory is still there (else let it go on).
    let mut child = start(&cut, Some(&run));
    let checkpoints = run.join("checkpoints");
    let half_written = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) without a checkpoint caught mid-write");
        }
        if !common::temps(&checkpoints).is_empty() {
            signal(&child, "-STOP");
            let seen = common::temps(&checkpoints);
            if !seen.is_empty() {
                signal(&child, "-KILL");
                killed(child.wait().unwrap());
                break seen;
            }
            signal(&child, "-CONT");
        }
        std::thread::sleep(Duration::from_micros(50));
    };
    let at = latest_step(&run);
    assert!(at < STEPS, "caught at step {at}");
    // The half-written directory is left, and ignored: the latest complete checkpoint wins.
    assert_eq!(common::temps(&checkpoints), half_written);

    // 3. Mid-run, ten steps further on.
    killed(kill_when(start(&cut, Some(&run)), || {
        latest_step(&run) >= (at + 10).min(STEPS - 10)
    }));
    // The resume removed the half-written directory (this kill may have left one of its own).
    let left = common::temps(&checkpoints);
    assert!(
        half_written.iter().all(|t| !left.contains(t)),
        "{left:?} still holds {half_written:?}"
    );

    // 4. SIGTERM (as a scheduler sends it): the step finishes, a checkpoint is written, the run
    //    exits 1 saying how to resume.
    let at = latest_step(&run);
    let out = signal_when(start(&cut, Some(&run)), "-TERM", || {
        latest_step(&run) >= (at + 3).min(STEPS - 10)
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");

    // 5. While loading, a few milliseconds after the start.
    let started = Instant::now();
    killed(kill_when(start(&cut, Some(&run)), || {
        started.elapsed() > Duration::from_millis(5)
    }));

    // 6. To the end.
    finish(start(&cut, Some(&run)));
    assert_eq!(
        std::fs::read(run.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(tmp.path().join("whole/adapter_model.safetensors")).unwrap(),
        "the resumed run's adapter differs from the uninterrupted run's"
    );
    let (got, want) = (steps(&run), steps(&tmp.path().join("whole")));
    assert_eq!(got.len() as u64, STEPS);
    assert_eq!(got, want, "losses differ from the uninterrupted run");
    assert!(common::temps(&run).is_empty() && common::temps(&checkpoints).is_empty());
}

/// A merge that hits a write error (file size limit, as a full disk would) fails with the path
/// and the reason and leaves nothing; one killed mid-write (SIGXFSZ) leaves no output directory,
/// and the next merge removes its half-written temp directory.
#[test]
fn a_merge_that_fails_or_dies_mid_write_leaves_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = recipe(tmp.path(), "run");
    std::fs::write(
        &whole,
        std::fs::read_to_string(&whole)
            .unwrap()
            .replace(&format!("max_steps = {STEPS}"), "max_steps = 2"),
    )
    .unwrap();
    finish(start(&whole, None));
    let merged = tmp.path().join("merged");
    // The tiny base is 380 kB in f32; 100 blocks of 512 bytes cut the weights file short.
    let merge = |limits: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("{limits} exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_lora-tune"))
            .args(["merge", "--base", TINY, "--adapter"])
            .arg(tmp.path().join("run"))
            .arg("--out")
            .arg(&merged)
            .output()
            .unwrap()
    };

    // SIGXFSZ ignored: the write fails with EFBIG, reported as an error.
    let out = merge("trap '' XFSZ; ulimit -f 100;");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    assert!(!merged.exists(), "partial output after a failed merge");
    assert!(
        common::temps(tmp.path()).is_empty(),
        "{:?}",
        common::temps(tmp.path())
    );

    // SIGXFSZ's default: the process dies mid-write.
    let out = merge("ulimit -f 100;");
    assert_eq!(out.status.signal(), Some(25), "{out:?}"); // SIGXFSZ
    assert!(!merged.exists(), "partial output after a killed merge");
    assert_eq!(
        common::temps(tmp.path()).len(),
        1,
        "the killed merge's temp directory"
    );

    let out = merge("");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(merged.join("model.safetensors").is_file());
    assert!(
        common::temps(tmp.path()).is_empty(),
        "{:?}",
        common::temps(tmp.path())
    );
}
