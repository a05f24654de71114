//! DPO against TRL's own DPOTrainer (tools/reference/dpo_train.py, trl 1.16.0 + peft 0.21.2 +
//! transformers 5.23 on the tiny Llama, fixtures in tests/fixtures/lora/dpo): the pairs'
//! tokens, the reference log-probabilities, the first step's gradients and ten optimiser steps
//! with every metric TRL logs under the same name.

mod common;

use std::path::Path;

use common::tiny;
use lora_tune::data::batch::{Batch, IGNORE, Pairs};
use lora_tune::data::dataset::{Dataset, Layout};
use lora_tune::data::encode::{Encoded, Encoder};
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
    let raw: Vec<Value> = tiny::json(&dir().join("batches.json"));
    let rows = |v: &Value| -> Vec<Vec<i64>> {
        (v.as_array().unwrap().iter())
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    raw.iter()
        .map(|b| {
            let (ids, mask, completion) = (
                rows(&b["input_ids"]),
                rows(&b["attention_mask"]),
                rows(&b["completion_mask"]),
            );
            let labels = (ids.iter().zip(&completion))
                .map(|(r, c)| {
                    r.iter()
                        .zip(c)
                        .map(|(&id, &m)| if m == 1 { id } else { IGNORE })
                        .collect()
                })
                .collect();
            let reference = [
                floats(&b["ref_chosen_logps"]),
                floats(&b["ref_rejected_logps"]),
            ]
            .concat();
            Batch {
                input_ids: ids
                    .iter()
                    .map(|r| r.iter().map(|&t| t as u32).collect())
                    .collect(),
                attention_mask: mask
                    .iter()
                    .map(|r| r.iter().map(|&m| m as u8).collect())
                    .collect(),
                labels,
                classes: Vec::new(),
                pairs: Some(Pairs {
                    count: ids.len() / 2,
                    reference,
                }),
            }
        })
        .collect()
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
    ten_dpo_steps(false);
}

/// The same ten steps recomputing each layer in backward (`train.gradient_checkpointing`).
#[test]
fn ten_dpo_steps_with_gradient_checkpointing_equal_trls() {
    ten_dpo_steps(true);
}

fn ten_dpo_steps(gradient_checkpointing: bool) {
    let mut model = model();
    model.gradient_checkpointing = gradient_checkpointing;
    let batches = trl_batches();
    let trajectory: Vec<Value> = tiny::json(&dir().join("trajectory.json"));
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
    let mut want = HostTensors::read(&dir().join("final.safetensors")).unwrap();
    let mut worst = 0.0f32;
    for (key, t) in model.adapter_tensors().unwrap() {
        let w = want.take(&key, &t.shape).unwrap();
        let scale = w.values.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in t.values.iter().zip(&w.values) {
            worst = worst.max((a - b).abs() / scale.max(1e-9));
        }
    }
    want.finish().unwrap();
    // TRL's reference and ours differ in the last bits (proof 2): 1.3e-5 after ten steps.
    assert!(worst < 2e-5, "final adapters off TRL's by {worst}");
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
    let raw: Vec<Value> = tiny::json(&dir.join("batches.json"));
    let rows = |v: &Value| -> Vec<Vec<i64>> {
        (v.as_array().unwrap().iter())
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    let batches: Vec<Batch> = raw
        .iter()
        .map(|b| {
            let ids = rows(&b["input_ids"]);
            Batch {
                pairs: Some(Pairs {
                    count: ids.len() / 2,
                    reference: Vec::new(),
                }),
                input_ids: ids
                    .iter()
                    .map(|r| r.iter().map(|&t| t as u32).collect())
                    .collect(),
                attention_mask: (rows(&b["attention_mask"]).iter())
                    .map(|r| r.iter().map(|&m| m as u8).collect())
                    .collect(),
                labels: rows(&b["labels"]),
                classes: Vec::new(),
            }
        })
        .collect();
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
    let mut want = HostTensors::read(&dir.join("final.safetensors")).unwrap();
    let mut worst = 0.0f32;
    for (key, t) in model.adapter_tensors().unwrap() {
        let w = want.take(&key, &t.shape).unwrap();
        let scale = w.values.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in t.values.iter().zip(&w.values) {
            worst = worst.max((a - b).abs() / scale.max(1e-9));
        }
    }
    want.finish().unwrap();
    assert!(worst < 1e-5, "final adapters off CPOTrainer's by {worst}");
}
