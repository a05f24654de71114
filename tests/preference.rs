//! DPO against TRL's own DPOTrainer (tools/reference/dpo_train.py, trl 1.16.0 + peft 0.21.2 +
//! transformers 5.23 on the tiny Llama, fixtures in tests/fixtures/lora/dpo): the pairs'
//! tokens, the reference log-probabilities, the first step's gradients and ten optimiser steps
//! with every metric TRL logs under the same name.

mod common;

use std::path::Path;

use common::tiny;
use lora_tune::data::batch::{Batch, IGNORE, Pairs};
use lora_tune::data::dataset::{Dataset, Layout};
use lora_tune::data::encode::{Encoded, Encoder, Fit};
use lora_tune::data::rows::read_rows;
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::model::decoder::Decoder;
use lora_tune::recipe::{DataFormat, Truncation};
use lora_tune::train::autograd::Seed;
use lora_tune::train::loss::Objective;
use lora_tune::train::preference::{Method, PreferenceLoss, compute_reference};
use lora_tune::train::step::train_step;
use lora_tune::weights::host::HostTensors;
use serde_json::Value;

const MAX_LENGTH: usize = 48;

fn dir() -> std::path::PathBuf {
    tiny::fixture("lora/dpo")
}

fn dpo() -> PreferenceLoss {
    PreferenceLoss {
        method: Method::Dpo,
        beta: 0.1,
        simpo_gamma: 0.5,
        sft_weight: 0.0,
    }
}

/// The tiny Llama with the fixture's initial adapters and DPO's loss.
fn model() -> Decoder {
    let mut model = tiny::named_with_adapters("tiny-llama", &tiny::lora(), 0);
    model
        .load_adapter_weights(&dir().join("init.safetensors"))
        .unwrap();
    model.preference = Some(dpo());
    model
}

/// TRL's micro-batches in order, as our preference batches (labels on the completion mask;
/// TRL's reference log-probabilities).
fn trl_batches() -> Vec<Batch> {
    trl_batches_of("dpo")
}

/// [`trl_batches`] of the run in tests/fixtures/lora/`fixture`.
fn trl_batches_of(fixture: &str) -> Vec<Batch> {
    tiny::trl_preference_batches(fixture)
}

/// The largest difference between the model's adapters and the PEFT tensors in `file`,
/// relative to each tensor's largest value; every tensor of `file` matched.
fn final_gap(model: &mut Decoder, file: &Path) -> f32 {
    let mut want = HostTensors::read(file).unwrap();
    let mut worst = 0.0f32;
    for (key, t) in model.adapter_tensors().unwrap() {
        let w = want.take(&key, &t.shape).unwrap();
        let scale = w.values.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in t.values.iter().zip(&w.values) {
            worst = worst.max((a - b).abs() / scale.max(1e-9));
        }
    }
    want.finish().unwrap();
    worst
}

/// A preference batch's rows as pair examples again (chosen with its rejected).
fn pair_examples(batch: &Batch) -> Vec<Encoded> {
    let n = batch.pairs.as_ref().unwrap().count;
    let row = |r: usize| Encoded {
        ids: batch.input_ids[r].clone(),
        labels: batch.labels[r].clone(),
        class: None,
        rejected: None,
    };
    (0..n)
        .map(|i| Encoded {
            rejected: Some(Box::new(row(n + i))),
            ..row(i)
        })
        .collect()
}

fn layout() -> Layout {
    Layout {
        pad_id: 2,
        pad_to_multiple_of: 1,
        max_len: MAX_LENGTH,
        pack_to: None,
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-6)
}

/// Proof 1: our encoder gives each pair TRL's tokens — the prompt with its completion
/// tokenised as one text, EOS appended — cut to max_length from the end, the completion
/// labelled; the pair whose prompt fills max_length is dropped, as TRL drops it.
#[test]
fn pairs_tokenise_as_trl_does() {
    let files = lora_tune::source::ModelFiles::Dir(tiny::fixture("llama/tiny-llama"));
    let tokenizer = lora_tune::model::tokenizer_of(&files).unwrap();
    let encoder = Encoder {
        tokenizer: &tokenizer,
        template: None,
        train_on_inputs: false,
        max_len: MAX_LENGTH,
        truncation: Truncation::Truncate,
        labels: None,
    };
    let (rows, bad) = read_rows(&dir().join("pairs.jsonl"), DataFormat::Auto, true).unwrap();
    assert!(bad.is_empty());
    let trl: Vec<Value> = tiny::json(&dir().join("tokenized.json"));
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (mut dropped, mut trl) = (0, trl.iter());
    for row in &rows {
        let encoded = encoder.encode(&row.example);
        if let Err(why) = &encoded {
            // TRL drops the pair (its tokenized dataset has no entry for it).
            assert!(
                why.contains("preference.max_length"),
                "line {}: {why}",
                row.line
            );
            dropped += 1;
            continue;
        }
        let want = trl.next().unwrap();
        let prompt = ids(&want["prompt_ids"]);
        let expect = |completion: &Value| -> Encoded {
            let mut all = [prompt.clone(), ids(completion)].concat();
            all.truncate(MAX_LENGTH);
            let labels = (all.iter().enumerate())
                .map(|(t, &id)| {
                    if t < prompt.len() {
                        IGNORE
                    } else {
                        i64::from(id)
                    }
                })
                .collect();
            Encoded {
                ids: all,
                labels,
                class: None,
                rejected: None,
            }
        };
        let (mut got, _) = encoded.unwrap();
        let rejected = *got.rejected.take().unwrap();
        assert_eq!(got, expect(&want["chosen_ids"]), "line {}", row.line);
        assert_eq!(rejected, expect(&want["rejected_ids"]), "line {}", row.line);
    }
    assert_eq!((dropped, trl.next()), (1, None));
}

/// Proof 2: the reference log-probabilities — the model with its adapters taken off, computed
/// once for the data — equal TRL's `ref_chosen_logps` / `ref_rejected_logps` on its batches,
/// and the adapters are back in place afterwards.
#[test]
fn reference_log_probabilities_equal_trls() {
    let mut model = model();
    // A non-zero adapter, so switching it off matters.
    tiny::nonzero_b(&mut model);
    let values = |m: &mut Decoder| -> Vec<Vec<f32>> {
        m.adapter_tensors()
            .unwrap()
            .into_iter()
            .map(|(_, t)| t.values)
            .collect()
    };
    let before = values(&mut model);
    for batch in trl_batches().iter().take(6) {
        let pairs = batch.pairs.as_ref().unwrap();
        let mut data = Dataset::new(
            Path::new("trl"),
            pair_examples(batch),
            Vec::new(),
            0,
            layout(),
        );
        compute_reference(&mut model, &mut data, 2, true).unwrap();
        let got: Vec<f64> = (0..2)
            .flat_map(|k| data.reference.iter().map(move |r| r[k]))
            .collect();
        for (g, w) in got.iter().zip(&pairs.reference) {
            assert!(
                (g - w).abs() < 2e-4 * w.abs().max(1.0),
                "{got:?} vs TRL {:?}",
                pairs.reference
            );
        }
    }
    assert!(values(&mut model) == before, "the adapters are not back");
}

/// Proof 3: at the initial adapters (B = 0) the first micro-batch's DPO loss is ln 2 with no
/// reward or margin; dL/dA is exactly 0 and dL/dB equals PEFT + TRL's.
#[test]
fn first_step_is_ln_2_with_zero_a_gradients_and_trls_b_gradients() {
    let mut model = model();
    let mut batch = trl_batches()[0].clone();
    // Our own reference (the adapters off): at B = 0 the policy is it, bit for bit.
    let pairs = batch.pairs.clone().unwrap();
    let examples = pair_examples(&batch);
    let mut data = Dataset::new(Path::new("trl"), examples, Vec::new(), 0, layout());
    compute_reference(&mut model, &mut data, 2, true).unwrap();
    let ours: Vec<f64> = (0..2)
        .flat_map(|k| data.reference.iter().map(move |r| r[k]))
        .collect();
    batch.pairs = Some(Pairs {
        reference: ours,
        ..pairs
    });
    let batch = &batch;
    let (loss, grads) = model
        .loss_and_gradients(batch, Seed::mean_over(1))
        .unwrap()
        .unwrap();
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-6, "loss {loss}");
    let metrics = model.take_preference_metrics();
    assert_eq!(metrics.len(), 1);
    assert_eq!(
        (metrics[0].rewards_margins, metrics[0].rewards_accuracies),
        (0.0, 0.0)
    );
    let mut want = HostTensors::read(&dir().join("step0.safetensors")).unwrap();
    let names: Vec<String> = model.params_mut().into_iter().map(|(k, _)| k).collect();
    let mut worst = 0.0f32;
    for (key, g) in names.iter().zip(&grads) {
        let got = tiny::values(g);
        let w = want.take(key, &g.dims()).unwrap();
        if key.contains("lora_A") {
            assert!(got.iter().all(|&v| v == 0.0), "{key}: dL/dA should be 0");
            continue;
        }
        let scale = w.values.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(&w.values) {
            worst = worst.max((a - b).abs() / scale.max(1e-9));
        }
    }
    assert!(worst < 1e-4, "dL/dB off TRL's by {worst}");
}

/// Proof 4: TRL's ten steps (its micro-batches replayed, 2 per step; the last micro-batch of
/// each epoch holds one pair): loss, gradient norm and every reward / log-prob / logit metric
/// of each step, and the final adapters, equal TRL's — by the derived step, and its autodiff
/// oracle agrees.
#[test]
fn ten_dpo_steps_equal_trls() {
    ten_dpo_steps("dpo", 0.0, false);
}

/// The same ten steps recomputing each layer in backward (`train.gradient_checkpointing`).
#[test]
fn ten_dpo_steps_with_gradient_checkpointing_equal_trls() {
    ten_dpo_steps("dpo", 0.0, true);
}

/// `preference.sft_weight = 0.5`: TRL's loss_type ["sigmoid", "sft"] with weights [1, 0.5]
/// (tools/reference/dpo_train.py dpo-sft).
#[test]
fn ten_dpo_steps_with_an_sft_term_equal_trls() {
    ten_dpo_steps("dpo-sft", 0.5, false);
}

fn ten_dpo_steps(fixture: &str, sft_weight: f64, gradient_checkpointing: bool) {
    let mut model = model();
    model.gradient_checkpointing = gradient_checkpointing;
    model.preference = Some(PreferenceLoss {
        sft_weight,
        ..dpo()
    });
    let batches = trl_batches_of(fixture);
    let trajectory: Vec<Value> = tiny::json(&dir_of(fixture).join("trajectory.json"));
    let (schedule, mut optimizer) = tiny::reference_optimiser(None);
    for (step, want) in trajectory.iter().enumerate() {
        let micro = &batches[step * 2..step * 2 + 2];
        let lr = schedule.lr(step as u64);
        assert!(rel(lr, want["learning_rate"].as_f64().unwrap()) < 1e-9 || lr == 0.0);
        if step == 4 {
            // The derived step against autodiff on a trained adapter.
            let derived = model
                .loss_and_gradients(&micro[0], Seed::mean_over(1))
                .unwrap()
                .unwrap();
            let oracle = lora_tune::train::autograd::whole_graph_gradients(
                &mut model,
                |m| m.loss_sum(&micro[0]),
                Seed::mean_over(1),
            )
            .unwrap()
            .unwrap();
            assert!(rel(derived.0, oracle.0) < 1e-5);
            for (d, o) in derived.1.iter().zip(&oracle.1) {
                let (d, o) = (tiny::values(d), tiny::values(o));
                let scale = o.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in d.iter().zip(&o) {
                    assert!(
                        (a - b).abs() <= 1e-4 * scale + 1e-9,
                        "derived {a} vs autodiff {b}"
                    );
                }
            }
            model.take_preference_metrics();
        }
        let stats = train_step(&mut model, micro, &mut optimizer, lr, 0.05).unwrap();
        let metrics =
            lora_tune::train::metrics::PreferenceMetrics::mean(&model.take_preference_metrics())
                .unwrap();
        let got = serde_json::to_value(&metrics).unwrap();
        eprintln!(
            "step {}: loss {:.7} (TRL {}), grad norm {:.6} (TRL {})",
            step + 1,
            stats.loss,
            want["loss"],
            stats.grad_norm,
            want["grad_norm"]
        );
        assert!(
            rel(stats.loss, want["loss"].as_f64().unwrap()) < 1e-5,
            "step {}",
            step + 1
        );
        assert!(
            rel(stats.grad_norm, want["grad_norm"].as_f64().unwrap()) < 1e-4,
            "step {}",
            step + 1
        );
        for (name, value) in got.as_object().unwrap() {
            let (g, w) = (value.as_f64().unwrap(), want[name].as_f64().unwrap());
            // While the policy is the reference (steps 1–2: no update yet) TRL's margins are 0
            // exactly and ours (TRL's reference, our policy) within rounding: no accuracy.
            if name == "rewards/accuracies" && want["rewards/margins"].as_f64() == Some(0.0) {
                continue;
            }
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1e-2),
                "step {}: {name} {g} vs TRL {w}",
                step + 1
            );
        }
    }
    let worst = final_gap(&mut model, &dir_of(fixture).join("final.safetensors"));
    eprintln!("{fixture}: final adapters within {worst:e} of TRL's");
    // Measured: 1.3e-5 (8.8e-6 with checkpointing), 2.9e-5 with the SFT term — f32 rounding
    // that AdamW's normalisation magnifies where a gradient is near 0 (the losses and norms
    // agree to ≤ 1e-6 every step).
    assert!(worst < 5e-5, "final adapters off TRL's by {worst}");
}

/// SimPO against TRL's CPOTrainer (`loss_type = "simpo"`, `cpo_alpha = 0`, β 2, γ 0.5;
/// tools/reference/dpo_train.py simpo): its micro-batches replayed (CPOTrainer tokenises the
/// older way, so its batches are the comparison), no reference; ten steps' loss, gradient norm,
/// rewards (β × the mean log-probability) and mean log-probabilities, and the final adapters.
/// `logits/*` are left out: CPOTrainer averages every position's logits, DPOTrainer (and
/// lora-tune) the completion tokens'.
#[test]
fn ten_simpo_steps_equal_cpo_trainers() {
    let dir = tiny::fixture("lora/simpo");
    let mut model = tiny::named_with_adapters("tiny-llama", &tiny::lora(), 0);
    model
        .load_adapter_weights(&dir.join("init.safetensors"))
        .unwrap();
    model.preference = Some(PreferenceLoss {
        method: Method::Simpo,
        beta: 2.0,
        simpo_gamma: 0.5,
        sft_weight: 0.0,
    });
    let batches = tiny::trl_preference_batches("simpo");
    let trajectory: Vec<Value> = tiny::json(&dir.join("trajectory.json"));
    let (schedule, mut optimizer) = tiny::reference_optimiser(None);
    for (step, want) in trajectory.iter().enumerate() {
        let micro = &batches[step * 2..step * 2 + 2];
        let lr = schedule.lr(step as u64);
        let stats = train_step(&mut model, micro, &mut optimizer, lr, 0.05).unwrap();
        let metrics =
            lora_tune::train::metrics::PreferenceMetrics::mean(&model.take_preference_metrics())
                .unwrap();
        eprintln!(
            "step {}: loss {:.7} (CPO {}), grad norm {:.6} (CPO {})",
            step + 1,
            stats.loss,
            want["loss"],
            stats.grad_norm,
            want["grad_norm"]
        );
        assert!(
            rel(stats.loss, want["loss"].as_f64().unwrap()) < 1e-5,
            "step {}",
            step + 1
        );
        assert!(
            rel(stats.grad_norm, want["grad_norm"].as_f64().unwrap()) < 1e-4,
            "step {}",
            step + 1
        );
        for (name, value) in serde_json::to_value(&metrics).unwrap().as_object().unwrap() {
            if name.starts_with("logits/") {
                continue;
            }
            let (g, w) = (value.as_f64().unwrap(), want[name].as_f64().unwrap());
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1e-2),
                "step {}: {name} {g} vs CPO {w}",
                step + 1
            );
        }
    }
    let worst = final_gap(&mut model, &dir.join("final.safetensors"));
    eprintln!("simpo: final adapters within {worst:e} of CPOTrainer's");
    assert!(worst < 1e-5, "final adapters off CPOTrainer's by {worst}");
}

/// Bad preference rows, in JSONL and CSV, are reported by `file:line` and counted (skipped by
/// default, the first one stops a strict load), as SFT's are; an implicit prompt is the shared
/// prefix of chosen and rejected, as TRL's `extract_prompt` takes it.
#[test]
fn bad_pairs_are_reported_by_file_and_line() {
    let files = lora_tune::source::ModelFiles::Dir(tiny::fixture("llama/tiny-llama"));
    let tokenizer = lora_tune::model::tokenizer_of(&files).unwrap();
    let encoder = Encoder {
        tokenizer: &tokenizer,
        template: None,
        train_on_inputs: false,
        max_len: 32,
        truncation: Truncation::Truncate,
        labels: None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let long = "a very long prompt ".repeat(3);
    let jsonl = [
        r#"{"prompt": "Q: hi?", "chosen": " Hello.", "rejected": " Go away."}"#.to_string(),
        r#"{"prompt": "Q: hi?", "chosen": " Hello."}"#.into(),
        r#"{"prompt": "Q: hi?", "chosen": " Same.", "rejected": " Same."}"#.into(),
        r#"{"prompt": "Q: hi?", "chosen": 3, "rejected": " No."}"#.into(),
        serde_json::json!({"prompt": long, "chosen": " A.", "rejected": " B."}).to_string(),
        r#"{"chosen": [{"role": "user", "content": "hi"}], "rejected": [{"role": "user", "content": "yo"}]}"#.into(),
        r#"{"chosen": "Q: why? Because.", "rejected": "Q: why? No idea."}"#.into(),
    ]
    .join("\n");
    let path = tmp.path().join("pairs.jsonl");
    std::fs::write(&path, jsonl).unwrap();
    let section: lora_tune::recipe::DataSection =
        toml::from_str("train = \"unused\"\nmax_len = 32\n").unwrap();
    let data = Dataset::load(&path, &section, &encoder, &|_| true).unwrap();
    let skipped: Vec<String> = data.skipped.iter().map(|b| b.to_string()).collect();
    let want = [
        "pairs.jsonl:2: missing field `rejected`",
        "pairs.jsonl:3: `chosen` and `rejected` are the same",
        "pairs.jsonl:4: field `chosen` must be a string",
        "pairs.jsonl:5: the prompt alone is",
        "pairs.jsonl:6: `chosen` after the prompt must be one or more assistant turns",
    ];
    assert_eq!(skipped.len(), want.len(), "{skipped:?}");
    for (got, want) in skipped.iter().zip(want) {
        assert!(got.contains(want), "{got} should say {want}");
    }
    // Line 7: the implicit prompt "Q: why?" (the space before the completions goes with them).
    assert_eq!(data.examples.len(), 2);
    let (rows, _) = read_rows(&path, DataFormat::Auto, false).unwrap();
    match &rows.last().unwrap().example {
        lora_tune::data::rows::Example::Preference {
            prompt,
            chosen,
            rejected,
        } => assert_eq!(
            (prompt.as_str(), chosen.as_str(), rejected.as_str()),
            ("Q: why?", " Because.", " No idea.")
        ),
        other => panic!("{other:?}"),
    }
    // A strict load stops at the first.
    let strict: lora_tune::recipe::DataSection =
        toml::from_str("train = \"unused\"\nmax_len = 32\nstrict = true\n").unwrap();
    let err = Dataset::load(&path, &strict, &encoder, &|_| true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pairs.jsonl:2: missing field `rejected`"),
        "{err}"
    );
    // CSV: the same fields as columns.
    let csv = tmp.path().join("pairs.csv");
    std::fs::write(
        &csv,
        "prompt,chosen,rejected\nQ: hi?, Hello., Go away.\nQ: hi?, Same., Same.\n",
    )
    .unwrap();
    let data = Dataset::load(&csv, &section, &encoder, &|_| true).unwrap();
    assert_eq!(data.examples.len(), 1);
    assert!(
        data.skipped[0]
            .to_string()
            .contains("pairs.csv:3: `chosen` and `rejected` are the same")
    );
}

/// The whole path through the binary: a DPO recipe on the tiny Llama computes the reference,
/// trains with an eval split, logs TRL's metric names and their `eval/` twins, exports every
/// format, resumes from a mid-run checkpoint to the same adapters bit for bit, and `eval`
/// reports an adapter's reward accuracy; SFT rows under DPO and pairs under SFT are refused.
#[test]
fn dpo_runs_through_the_binary_resumes_exactly_and_evaluates() {
    let recipe = |out: &str, method: &str| {
        format!(
            "[model]\nsource = \"model\"\n\n[lora]\nrank = 4\ndropout = 0.0\n\n[data]\ntrain = \"pairs.jsonl\"\nmax_len = 64\neval_fraction = 0.3\n\n[train]\nmethod = \"{method}\"\nmax_steps = 6\nbatch_size = 2\nlr = 5e-3\neval_every = 3\ncheckpoint_every = 3\nseed = 3\n\n[preference]\nbeta = 0.1\n\n[export]\nout_dir = \"{out}\"\nformats = [\"peft\", \"gguf\", \"merged\"]\n"
        )
    };
    let tmp = common::tiny_workdir(&recipe("whole", "dpo"));
    let dir = tmp.path();
    std::fs::copy(dir_of("dpo").join("pairs.jsonl"), dir.join("pairs.jsonl")).unwrap();
    let run = |args: &[&str]| {
        let out = common::run(dir, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&["recipe.toml", "--device", "cpu"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("reference: every pair's log-probabilities under the base"),
        "{text}"
    );
    assert!(
        text.contains("margin") && text.contains("reward accuracy"),
        "{text}"
    );
    let whole = dir.join("whole");
    for f in [
        "adapter_model.safetensors",
        "recipe.lora.gguf",
        "merged/config.json",
    ] {
        assert!(whole.join(f).exists(), "{f}");
    }
    let metrics = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    let records: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6);
    for name in [
        "rewards/chosen",
        "rewards/margins",
        "logps/rejected",
        "logits/chosen",
    ] {
        assert!(records.iter().all(|r| r[name].is_f64()), "{name}");
    }
    assert!(
        records[2]["eval/rewards/accuracies"].is_f64(),
        "{:?}",
        records[2]
    );

    // Stopped after step 3: its checkpoint and first three records; resumed to step 6.
    std::fs::write(dir.join("resumed.toml"), recipe("resumed", "dpo")).unwrap();
    let to = dir.join("resumed/checkpoints/step-000003");
    std::fs::create_dir_all(&to).unwrap();
    for f in std::fs::read_dir(whole.join("checkpoints/step-000003")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
    let head: Vec<&str> = metrics.lines().take(3).collect();
    std::fs::write(dir.join("resumed/metrics.jsonl"), head.join("\n") + "\n").unwrap();
    let (code, text) = run(&["resumed.toml", "--device", "cpu", "--resume", "resumed"]);
    assert_eq!(code, Some(0), "{text}");
    let adapters = |d: &str| std::fs::read(dir.join(d).join("adapter_model.safetensors")).unwrap();
    assert!(
        adapters("whole") == adapters("resumed"),
        "the resumed run's adapters differ"
    );

    let (code, text) = run(&[
        "eval",
        "recipe.toml",
        "--adapter",
        "whole",
        "--device",
        "cpu",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("reward accuracy"), "{text}");

    // DPO on from the trained adapter against itself: its first step sees the policy equal to
    // the reference, bit for bit (ln 2, no margin).
    let continued = recipe("continued", "dpo")
        .replace(
            "[lora]\nrank = 4\n",
            "[lora]\nrank = 4\ninit_from = \"whole\"\n",
        )
        .replace(
            "[preference]\nbeta = 0.1\n",
            "[preference]\nbeta = 0.1\nreference = \"initial_adapter\"\n",
        );
    std::fs::write(dir.join("continued.toml"), continued).unwrap();
    let (code, text) = run(&["continued.toml", "--device", "cpu"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("under the initial adapter"), "{text}");
    let first = std::fs::read_to_string(dir.join("continued/metrics.jsonl")).unwrap();
    let first: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(first["rewards/margins"].as_f64(), Some(0.0), "{first}");
    assert!(
        (first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6,
        "{first}"
    );

    // Pairs under SFT, text rows under DPO.
    std::fs::write(
        dir.join("sft.toml"),
        recipe("sft", "sft").replace("[preference]\nbeta = 0.1\n", ""),
    )
    .unwrap();
    let (code, text) = run(&["sft.toml", "--device", "cpu"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("train.method = \"dpo\" or \"simpo\""),
        "{text}"
    );
    std::fs::write(
        dir.join("text.toml"),
        recipe("text", "dpo").replace("pairs.jsonl", "train.jsonl"),
    )
    .unwrap();
    let (code, text) = run(&["text.toml", "--device", "cpu"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("data.format") || text.contains("not preference rows"),
        "{text}"
    );
}

fn dir_of(name: &str) -> std::path::PathBuf {
    tiny::fixture(&format!("lora/{name}"))
}

/// Proof 1, conversational: with SmolLM2's own tokenizer and ChatML template (its default
/// system prompt where a row has none), explicit and implicit prompts, multi-turn prompts and
/// string rows (one whose prompt tokens merge into its completion) tokenise as TRL 1.16's
/// DPOTrainer prepares them — the prompt rendered with the
/// generation prompt, prompt + completion rendered whole, the completion where they part
/// (tools/reference/dpo_chat_pairs.py).
#[test]
fn conversational_pairs_tokenise_as_trl_does() {
    let tokenizer = lora_tune::model::tokenizer_of(&common::artifacts::smollm2()).unwrap();
    let encoder = Encoder {
        tokenizer: &tokenizer,
        template: tokenizer.chat_template.as_deref(),
        train_on_inputs: false,
        max_len: 4096,
        truncation: Truncation::Truncate,
        labels: None,
    };
    let data = tiny::fixture("data");
    let (rows, bad) = read_rows(&data.join("preference.jsonl"), DataFormat::Auto, true).unwrap();
    assert!(bad.is_empty());
    let want: Vec<Value> = tiny::json(&data.join("preference_expected.json"));
    assert_eq!(rows.len(), want.len());
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for (i, (row, want)) in rows.iter().zip(&want).enumerate() {
        let (mut got, fit) = encoder.encode(&row.example).unwrap();
        // The last row's prompt ends inside a word ("Amster|dam"): its tokens merge across the
        // boundary, the completion starts where they part, and the pair is counted.
        let split = i == rows.len() - 1;
        assert_eq!(
            fit == Fit::PromptSplit { truncated: false },
            split,
            "line {}",
            row.line
        );
        assert_eq!(fit == Fit::Whole, !split, "line {}", row.line);
        let rejected = *got.rejected.take().unwrap();
        let prompt = ids(&want["prompt_ids"]);
        for (seq, completion) in [(got, "chosen_ids"), (rejected, "rejected_ids")] {
            assert_eq!(
                seq.ids,
                [prompt.clone(), ids(&want[completion])].concat(),
                "line {}",
                row.line
            );
            let start = seq.labels.iter().position(|&l| l != IGNORE).unwrap();
            assert_eq!(start, prompt.len(), "line {}: completion start", row.line);
        }
    }
}
