//! The training loop equals PEFT step by step on the tiny random Llama: 10 AdamW steps, each
//! accumulating two micro-batches of different padded lengths with the loss normalised by the
//! step's labelled tokens, global-norm clipping that binds, and a linear warmup schedule.
//! Per-step loss and gradient norm within 1e-4 relative, final A/B within 1e-4; the frozen base
//! is bit-identical afterwards. Golden: tools/reference/lora_train.py (transformers 5.23.0,
//! peft 0.21.2, torch 2.15.0). The same on the real SmolLM2 GGUF for 3 steps of 2×64 (≤1e-3;
//! tools/reference/lora_train_smollm2.py), and resume-from-checkpoint equal to the whole run.

mod common;

use lora_tune::model::frozen::FrozenWeight;

use common::{artifacts, cpu, tiny};

use std::path::Path;

use burn::tensor::Tensor;
use lora_tune::data::batch::Batch;
use lora_tune::dtype::Dtype;
use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::BaseStorage;
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::model::decoder::Decoder;
use lora_tune::recipe::{LoraSection, Schedule};
use lora_tune::train::optim::{AdamW, AdamWConfig};
use lora_tune::train::schedule::LrSchedule;
use lora_tune::train::step::train_step;
use lora_tune::weights::host::HostTensors;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// tiny-llama with r=4, α=8, no dropout on the seven Llama targets, A/B from `init`.
fn adapted_tiny_llama(init: &Path) -> Decoder {
    tiny::adapted_on(init, &cpu())
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

#[test]
fn ten_steps_with_accumulation_and_clipping_equal_peft() {
    tiny::assert_ten_steps_equal_peft(&cpu(), "flex", false);
}

#[test]
fn ten_steps_with_gradient_checkpointing_equal_peft() {
    tiny::assert_ten_steps_equal_peft(&cpu(), "flex, gradient checkpointing", true);
}

/// The hand-derived step (`train::derived`), with and without gradient checkpointing, gives
/// autodiff's losses and gradients (`whole_graph_gradients`, the oracle) — with LoRA dropout
/// (each adapter's mask stream is rewound for the recompute), a packed row, padding,
/// accumulation, a layer without adapters below one with them, an adapter on the untied LM head,
/// and the head's cross-entropy in chunks — step after step of AdamW. The adapters after five
/// steps with and without checkpointing agree within 5e-5: the checkpointed first pass runs the
/// no-gradient attention and SwiGLU kernels (`kernels`), whose rounding differs from the taped
/// forward's by ≈1e-7, and AdamW moves a coordinate by about lr whatever its gradient's size.
#[test]
fn the_derived_step_equals_autodiff() {
    derived_step_equals_autodiff_on(
        "tiny-llama",
        r"model\.layers\.1\..*|lm_head",
        [1e-5, 5e-5],
        false,
    );
}

/// The same on Gemma 2 with adapters in layer 0, whose attention has the sliding window (4, so
/// the 8- and 9-token rows reach past it): the gradient passes back through layer 1's soft caps,
/// sandwich norms and GeGLU.
#[test]
fn the_derived_step_equals_autodiff_on_gemma2() {
    derived_step_equals_autodiff_on(
        "tiny-gemma2",
        r"model\.layers\.0\..*|lm_head",
        [1e-5; 2],
        false,
    );
}

/// And on Gemma 3, adapters in its local layer 0: the backward passes through the global
/// layer's RoPE table and q/k norms, then the local layer's. Within 1e-6 without
/// checkpointing; with it, the first pass runs the backend's fused attention, whose rounding
/// (≈1e-7 in the hidden states) the per-head q norms over 16 dimensions amplify in q_proj's B
/// gradient to 3.6e-5 (with the taped forward in that pass instead, the two agree to 6e-7), and
/// AdamW, which moves a coordinate by about lr whatever its gradient's size, turns into 2.1e-4
/// in the adapters after five steps.
#[test]
fn the_derived_step_equals_autodiff_on_gemma3() {
    derived_step_equals_autodiff_on(
        "tiny-gemma3",
        r"model\.layers\.0\..*|lm_head",
        [5e-5, 5e-4],
        false,
    );
}

/// And on Phi-3, adapters in layer 0: the fused qkv_proj and gate_up_proj take their parts'
/// gradients side by side; RoPE over half of each head, and the 8- and 9-token rows reach past
/// LongRoPE's original context (8), so the long factors are in play.
#[test]
fn the_derived_step_equals_autodiff_on_phi3() {
    derived_step_equals_autodiff_on(
        "tiny-phi3",
        r"model\.layers\.0\..*|lm_head",
        [1e-5; 2],
        false,
    );
}

/// And with DoRA: the magnitude's gradient, c·dy into A and B, and the dropped input's base
/// path ((c − 1)·dy)·W ⊙ mask — with dropout on, on Llama and on Phi-3's fused projections.
#[test]
fn the_derived_dora_step_equals_autodiff() {
    derived_step_equals_autodiff_on(
        "tiny-llama",
        r"model\.layers\.1\..*|lm_head",
        [1e-5, 5e-5],
        true,
    );
    derived_step_equals_autodiff_on("tiny-phi3", r"model\.layers\.0\..*", [1e-5, 5e-5], true);
}

/// The same with bf16 products (DoRA's base-path products included): autodiff differentiates
/// through the same bf16 products, so only f32 summation orders differ — amplified where a
/// value lands on the other side of a bf16 rounding boundary.
#[test]
fn the_derived_step_equals_autodiff_in_bf16_products() {
    for use_dora in [false, true] {
        let targets = r"model\.layers\.1\..*|lm_head";
        derived_step_equals_autodiff_in("tiny-llama", targets, [1e-2, 2e-2], use_dora, Dtype::Bf16);
    }
}

/// Gradients of `name` with adapters on `targets` (DoRA with `use_dora`) within `tolerance[0]`
/// of autodiff's, and the adapters after five steps with and without checkpointing within
/// `tolerance[1]` (relative to each tensor's largest).
fn derived_step_equals_autodiff_on(name: &str, targets: &str, tolerance: [f32; 2], use_dora: bool) {
    derived_step_equals_autodiff_in(name, targets, tolerance, use_dora, Dtype::F32);
}

/// [`derived_step_equals_autodiff_on`] with the frozen products in `compute`.
fn derived_step_equals_autodiff_in(
    name: &str,
    targets: &str,
    tolerance: [f32; 2],
    use_dora: bool,
    compute: Dtype,
) {
    derived_step_equals_autodiff_with(name, targets, tolerance, use_dora, compute, 0.0);
}

/// [`derived_step_equals_autodiff_in`] with the router load-balancing loss at
/// `router_aux_loss_coef`.
fn derived_step_equals_autodiff_with(
    name: &str,
    targets: &str,
    tolerance: [f32; 2],
    use_dora: bool,
    compute: Dtype,
    router_aux_loss_coef: f64,
) {
    use lora_tune::recipe::Targets;
    use lora_tune::train::autograd::{Seed, sum, whole_graph_gradients};
    use lora_tune::train::derived::loss_and_gradients_chunked;
    use lora_tune::train::loss::Objective;
    use lora_tune::train::step::accumulate_gradients;
    let lora = LoraSection {
        rank: 4,
        alpha: 8.0,
        dropout: 0.2,
        targets: Targets::Regex(targets.into()),
        use_dora,
        ..LoraSection::default()
    };
    let (mut plain, mut recomputing) = (
        tiny::named_with_adapters(name, &lora, 3),
        tiny::named_with_adapters(name, &lora, 3),
    );
    recomputing.gradient_checkpointing = true;
    plain.compute_in(compute);
    recomputing.compute_in(compute);
    plain.router_aux_loss_coef = router_aux_loss_coef;
    recomputing.router_aux_loss_coef = router_aux_loss_coef;
    let per_layer = plain.layers[0].linears().len();
    let per_adapter = if use_dora { 3 } else { 2 };
    let adapted = per_layer + usize::from(targets.contains("lm_head"));
    assert_eq!(
        plain.params_mut().len(),
        per_adapter * adapted,
        "one layer's linears (and lm_head)"
    );
    for m in [&mut plain, &mut recomputing] {
        m.set_training(true);
        tiny::nonzero_b(m);
    }
    let mut batches = tiny::train_batches();
    // A packed row: two examples that must not attend to each other, then padding.
    batches.push(Batch {
        input_ids: vec![vec![5, 17, 33, 9, 41, 12, 88, 0]],
        attention_mask: vec![vec![1, 1, 1, 2, 2, 2, 2, 0]],
        labels: vec![vec![-100, 17, 33, -100, 41, 12, 88, -100]],
        classes: Vec::new(),
        pairs: None,
    });
    let adamw = AdamWConfig {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
        loraplus_lr_ratio: None,
    };
    let (mut opt_plain, mut opt_recomputing) = (AdamW::new(adamw), AdamW::new(adamw));
    let keys: Vec<String> = plain.params_mut().into_iter().map(|(k, _)| k).collect();
    for step in 0..5u64 {
        let micro = [
            batches[step as usize % batches.len()].clone(),
            batches[batches.len() - 1].clone(),
        ];
        let seed = 100 + step;
        let denominator = Seed::mean_over(micro.iter().map(Batch::loss_tokens).sum());
        plain.seed_dropout(seed);
        let mut want = (0.0, Vec::new());
        for batch in &micro {
            let (loss, grads) =
                whole_graph_gradients(&mut plain, |m| m.loss_sum(batch), denominator)
                    .unwrap()
                    .unwrap();
            want = (want.0 + loss, sum(want.1, grads));
        }
        for (w, key) in want.1.iter().zip(&keys) {
            let w = tiny::values(w);
            // (An expert no token of these micro-batches reached has none.)
            let routed_around = key.contains(".mlp.experts.");
            assert!(
                routed_around || w.iter().any(|&v| v != 0.0),
                "{key}: no autodiff gradient"
            );
        }
        let mut derived = Vec::new();
        for (what, m) in [("derived", &mut plain), ("recomputed", &mut recomputing)] {
            m.seed_dropout(seed);
            derived.push((what, accumulate_gradients(m, &micro).unwrap()));
        }
        // The head in chunks of 7 scored positions (a step has 20–40): the same again.
        recomputing.seed_dropout(seed);
        let mut chunked = (0.0, Vec::new());
        for batch in &micro {
            let (loss, grads) = loss_and_gradients_chunked(&recomputing, batch, denominator, 7)
                .unwrap()
                .unwrap();
            chunked = (chunked.0 + loss, sum(chunked.1, grads));
        }
        derived.push(("head in chunks of 7", chunked));
        for (what, (loss, got)) in &derived {
            assert!(
                rel(*loss, want.0) < 1e-6,
                "step {step}, {what}: loss {loss} vs autodiff {}",
                want.0
            );
            assert_eq!(got.len(), want.1.len(), "{what}");
            let mut worst = 0.0f32;
            for ((key, g), w) in keys.iter().zip(got).zip(&want.1) {
                let d = relative_difference(&tiny::values(g), &tiny::values(w));
                assert!(
                    d <= tolerance[0],
                    "step {step}, {what}: {key} differs by {d}"
                );
                worst = worst.max(d);
            }
            eprintln!(
                "step {step}, {what}: loss {loss:.6} (autodiff {:.6}), worst gradient difference {worst:e}",
                want.0
            );
        }
        for (m, opt) in [
            (&mut plain, &mut opt_plain),
            (&mut recomputing, &mut opt_recomputing),
        ] {
            m.seed_dropout(seed);
            train_step(m, &micro, opt, 1e-2, 1.0).unwrap();
        }
    }
    let (want, got) = (
        plain.adapter_tensors().unwrap(),
        recomputing.adapter_tensors().unwrap(),
    );
    for ((key, a), (_, b)) in got.iter().zip(&want) {
        let d = relative_difference(&a.values, &b.values);
        assert!(d <= tolerance[1], "{key}: {d} after five steps");
    }
}

/// max |got − want| over max |want|.
fn relative_difference(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale.max(f32::MIN_POSITIVE)
}

/// A small synthetic dataset: 10 rows of 5–12 tokens with an unlabelled 2-token prompt.
fn synthetic_dataset() -> lora_tune::data::dataset::Dataset {
    let examples = (0..10u32)
        .map(|i| tiny::example(i, 5 + (i as usize * 7) % 8))
        .collect();
    let layout = lora_tune::data::dataset::Layout {
        pad_id: 0,
        pad_to_multiple_of: 1,
        max_len: 64,
        pack_to: None,
    };
    lora_tune::data::dataset::Dataset::new("synthetic".as_ref(), examples, Vec::new(), 0, layout)
}

fn settings(out: &Path) -> lora_tune::train::trainer::Settings {
    lora_tune::train::trainer::Settings {
        schedule: LrSchedule {
            kind: Schedule::Cosine,
            peak: 1e-2,
            warmup_steps: 1,
            total_steps: 6,
        },
        adamw: AdamWConfig {
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            loraplus_lr_ratio: None,
        },
        batch_size: 3,
        grad_accum: 2,
        max_grad_norm: 1.0,
        seed: 5,
        eval_every: Some(2),
        checkpoint_every: Some(3),
        out_dir: out.into(),
        peft_config: None,
        class_map: None,
        progress: false,
        skip_nonfinite: false,
        early_stopping: None,
        keep_best: false,
        tensorboard: false,
        loss_scale: Default::default(),
    }
}

fn fresh_model() -> Decoder {
    let lora = LoraSection {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1, // resume must replay the dropout draws too
        ..LoraSection::default()
    };
    tiny::with_adapters(&lora, 5)
}

fn losses(out: &Path) -> Vec<(u64, f64, Option<f64>)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["eval_loss"].as_f64(),
            )
        })
        .collect()
}

#[test]
fn resume_from_a_checkpoint_continues_exactly() {
    resume_continues_exactly(Dtype::F32, &settings);
}

/// f16 products with loss scaling: the scale starts so high that the first steps overflow and
/// are skipped. A resume that restarted the scale would skip again after the checkpoint. From
/// 2^26 every step before the checkpoint is skipped: it holds no AdamW moments yet.
#[test]
fn resume_with_f16_products_continues_the_loss_scale_exactly() {
    use lora_tune::train::loss_scale::LossScale;
    for (start, skipped_before_checkpoint) in [(22, 1..=2), (26, 3..=3)] {
        let scaled = |out: &Path| lora_tune::train::trainer::Settings {
            loss_scale: LossScale::starting_at(2f64.powi(start)),
            ..settings(out)
        };
        let (summary, metrics) = resume_continues_exactly(Dtype::F16, &scaled);
        let scale = summary.loss_scale.expect("f16 products scale the loss");
        let overflowed: Vec<u64> = metrics
            .iter()
            .filter(|r| r["overflowed"] == true)
            .map(|r| r["step"].as_u64().unwrap())
            .collect();
        eprintln!(
            "from 2^{start}: overflowed at steps {overflowed:?}, scale at the end {}",
            scale.scale
        );
        let before = overflowed.iter().filter(|&&s| s <= 3).count();
        assert!(
            skipped_before_checkpoint.contains(&before),
            "{overflowed:?}"
        );
        assert_eq!(scale.skipped, overflowed.len() as u64);
        assert_eq!(scale.scale, 2f64.powi(start - overflowed.len() as i32));
    }
}

/// Trains 6 steps, then again from the whole run's step-3 checkpoint in a fresh model with
/// products in `compute`: the same losses, evaluations and adapters, bit for bit. The resumed
/// run's summary and metrics records.
fn resume_continues_exactly(
    compute: Dtype,
    settings: &dyn Fn(&Path) -> lora_tune::train::trainer::Settings,
) -> (lora_tune::train::trainer::Summary, Vec<serde_json::Value>) {
    use lora_tune::train::trainer::train;
    let data = synthetic_dataset();
    let (whole, resumed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fresh_model = || {
        let mut model = fresh_model();
        model.compute_in(compute);
        model
    };

    let mut model = fresh_model();
    let summary = train(
        &mut model,
        &data,
        Some(&data),
        &settings(whole.path()),
        None,
    )
    .unwrap();
    assert_eq!(summary.steps, 6);
    let want = model.adapter_tensors().unwrap();

    // A run stopped after step 3: only its checkpoint and metrics up to there survive.
    let stopped = resumed.path();
    let ck = stopped.join("checkpoints");
    std::fs::create_dir_all(&ck).unwrap();
    let from = whole.path().join("checkpoints/step-000003");
    let to = ck.join("step-000003");
    std::fs::create_dir(&to).unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
    let metrics = std::fs::read_to_string(whole.path().join("metrics.jsonl")).unwrap();
    let head: Vec<&str> = metrics.lines().take(3).collect();
    std::fs::write(stopped.join("metrics.jsonl"), head.join("\n") + "\n").unwrap();

    let mut model = fresh_model(); // a new process: fresh init, then the checkpoint
    let summary = train(
        &mut model,
        &data,
        Some(&data),
        &settings(stopped),
        Some(stopped),
    )
    .unwrap();
    assert_eq!((summary.first_step, summary.steps), (3, 6));
    assert_eq!(
        losses(whole.path()),
        losses(stopped),
        "resumed losses differ"
    );
    let got = model.adapter_tensors().unwrap();
    for ((k, a), (_, b)) in got.iter().zip(&want) {
        assert_eq!(a.values, b.values, "{k} differs after resume");
    }
    assert!(stopped.join("loss.svg").is_file());
    let metrics = std::fs::read_to_string(whole.path().join("metrics.jsonl")).unwrap();
    let records = metrics.lines().map(|l| serde_json::from_str(l).unwrap());
    (summary, records.collect())
}

#[test]
fn resume_refuses_a_checkpoint_from_other_settings() {
    use lora_tune::train::trainer::train;
    let data = synthetic_dataset();
    let out = tempfile::tempdir().unwrap();
    let mut s = settings(out.path());
    s.schedule.total_steps = 3;
    s.schedule.warmup_steps = 0;
    train(&mut fresh_model(), &data, None, &s, None).unwrap();
    let mut other = settings(out.path());
    other.batch_size = 2;
    let err = train(&mut fresh_model(), &data, None, &other, Some(out.path())).unwrap_err();
    assert!(
        format!("{err:#}").contains("train.batch_size was 3 in the checkpoint and is 2 now"),
        "{err:#}"
    );
}

/// The reference script's A init: (2·frac((n·1000003 + k)·φ⁻¹) − 1)/√in in f64, then f32.
fn formula_a(n: usize, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|k| {
            let x = (n as f64 * 1_000_003.0 + k as f64) * 0.618_033_988_749_894_9;
            ((2.0 * (x - x.floor()) - 1.0) / (cols as f64).sqrt()) as f32
        })
        .collect()
}

#[test]
fn smollm2_three_steps_equal_peft() {
    smollm2_three_steps(false, BaseStorage::default(), 1e-3);
}

#[test]
fn smollm2_three_steps_with_gradient_checkpointing_equal_peft() {
    smollm2_three_steps(true, BaseStorage::default(), 1e-3);
}

/// `model.keep_quantized`: the base's Q4_1 linears stay in their blocks, decoded per matmul.
#[test]
fn smollm2_three_steps_from_kept_q4_1_blocks_equal_peft() {
    let storage = BaseStorage {
        keep_quantized: true,
        ..Default::default()
    };
    smollm2_three_steps(true, storage, 1e-3);
}

/// `model.dtype = "bf16"`: with the linears rounded to bf16 the loss curve and gradient norms
/// stay within 1e-2 of PEFT's f32 run (measured: 4e-5 and 2e-3). The adapters themselves are
/// not compared: after three AdamW steps they differ by 7.5 % (relative Frobenius), Adam's
/// m/(√v + ε) turning the rounding of near-zero gradients into full-size updates.
#[test]
fn smollm2_three_steps_on_a_bf16_base_stay_within_1e_2_of_peft_f32() {
    let storage = BaseStorage {
        dense: Dtype::Bf16,
        ..Default::default()
    };
    smollm2_three_steps(true, storage, 1e-2);
}

fn smollm2_three_steps(gradient_checkpointing: bool, storage: BaseStorage, tolerance: f64) {
    let keep_quantized = storage.keep_quantized;
    use burn::tensor::TensorData;
    let fixtures = Path::new(ROOT).join("tests/fixtures/lora/smollm2");
    let mut model = lora_tune::model::load(&artifacts::smollm2(), &cpu(), storage).unwrap();
    let kept = model
        .linears_mut()
        .iter()
        .filter(|(_, l)| matches!(l.weight, FrozenWeight::Blocks(_)))
        .count();
    assert_eq!(kept, if keep_quantized { 30 * 7 } else { 0 });
    model.gradient_checkpointing = gradient_checkpointing;
    let lora = LoraSection {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        ..LoraSection::default()
    };
    let adapted = select_targets(&model.config.linear_sites(), &lora).unwrap();
    model.attach_adapters(&adapted, &lora, 0).unwrap();
    let device = cpu();
    for (n, (_, a)) in model.adapters_mut().into_iter().enumerate() {
        let [r, cols] = a.a.dims();
        a.a = Tensor::from_data(TensorData::new(formula_a(n, r, cols), [r, cols]), &device);
    }
    let batches: Vec<Batch> = tiny::json(&fixtures.join("batches.json"));
    let trajectory: Vec<serde_json::Value> = tiny::json(&fixtures.join("trajectory.json"));
    let mut optimizer = AdamW::new(AdamWConfig {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
        loraplus_lr_ratio: None,
    });
    for (step, want) in trajectory.iter().enumerate() {
        let stats =
            train_step(&mut model, &batches[step..=step], &mut optimizer, 1e-3, 1.0).unwrap();
        let (loss, norm) = (
            want["loss"].as_f64().unwrap(),
            want["grad_norm"].as_f64().unwrap(),
        );
        eprintln!(
            "SmolLM2 step {}: loss {:.6} (PEFT {loss:.6}), grad norm {:.5} (PEFT {norm:.5})",
            step + 1,
            stats.loss,
            stats.grad_norm
        );
        assert!(rel(stats.loss, loss) < tolerance, "step {}: loss", step + 1);
        assert!(
            rel(stats.grad_norm, norm) < tolerance,
            "step {}: grad norm",
            step + 1
        );
    }
    // Relative Frobenius error per tensor. Elementwise, entries whose gradients are near zero
    // differ by up to ~2% of one step (1e-3): Adam's m/(√v + ε) turns f32 rounding of a tiny
    // gradient into a full-size update either way.
    let mut want = HostTensors::read(&fixtures.join("final.safetensors")).unwrap();
    let mut worst = 0.0f64;
    for (key, t) in model.adapter_tensors().unwrap() {
        if !want.contains(&key) {
            continue; // the fixture keeps layers 0 and 29 (q_proj, down_proj)
        }
        let w = want.take(&key, &t.shape).unwrap();
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for (a, b) in t.values.iter().zip(&w.values) {
            diff += f64::from(a - b).powi(2);
            norm += f64::from(*b).powi(2);
        }
        worst = worst.max((diff / norm).sqrt());
    }
    want.finish().unwrap();
    eprintln!("SmolLM2 final A/B: worst relative Frobenius error {worst:e}");
    if storage.dense == Dtype::F32 {
        assert!(worst < tolerance, "final adapters differ by {worst}");
    }
}

/// The loss computed from logits at labelled positions only equals the cross-entropy over the
/// full [b, s, vocab] logits, computed here on the host in f64.
#[test]
fn the_loss_over_labelled_positions_equals_the_full_logits_cross_entropy() {
    use lora_tune::train::cross_entropy::next_token_nll_sum;
    let fixtures = Path::new(ROOT).join("tests/fixtures/lora/train");
    let model = adapted_tiny_llama(&fixtures.join("init.safetensors"));
    for b in &tiny::train_batches() {
        let got = lora_tune::train::scalar(next_token_nll_sum(&model, b).unwrap()).unwrap();
        let logits = model.forward(&b.input_ids, &b.attention_mask);
        let [rows, s, v] = logits.dims();
        let values = lora_tune::model::adapted::host(&logits).unwrap().values;
        let mut want = 0.0f64;
        for r in 0..rows {
            for t in 1..s {
                let Ok(target) = usize::try_from(b.labels[r][t]) else {
                    continue; // IGNORE
                };
                let row = &values[(r * s + t - 1) * v..][..v];
                let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (x as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                want += lse - row[target] as f64;
            }
        }
        assert!(rel(got, want) < 1e-5, "{got} vs {want}");
    }
}

#[test]
fn only_adapters_receive_gradients() {
    use lora_tune::train::cross_entropy::next_token_nll_sum;
    let fixtures = Path::new(ROOT).join("tests/fixtures/lora/train");
    let mut model = adapted_tiny_llama(&fixtures.join("init.safetensors"));
    let batches = tiny::train_batches();
    for (_, t) in model.params_mut() {
        *t = t.clone().inner().autodiff().require_grad();
    }
    let b = &batches[0];
    let grads = next_token_nll_sum(&model, b).unwrap().backward();
    let mut adapters = 0;
    for (path, l) in model.linears_mut() {
        assert!(
            l.weight.dense().grad(&grads).is_none(),
            "{path}: frozen weight got a gradient"
        );
        match &l.lora {
            Some(a) => {
                assert!(
                    a.a.grad(&grads).is_some() && a.b.grad(&grads).is_some(),
                    "{path}"
                );
                adapters += 1;
            }
            None => assert_eq!(path, "lm_head"), // not a target
        }
    }
    assert_eq!(adapters, 2 * 7);
    let lora_tune::model::frozen::FrozenWeight::Dense(embedding) = &model.embed_tokens else {
        panic!("an f32 checkpoint's embedding is dense");
    };
    assert!(embedding.grad(&grads).is_none());
    for layer in &model.layers {
        for norm in layer.norms.all() {
            assert!(norm.weight.grad(&grads).is_none());
        }
    }
    assert!(model.norm.weight.grad(&grads).is_none());
}

/// A non-finite loss stops the run naming the step, the rows of its batch and the last
/// checkpoint (here: none yet), instead of training on garbage.
#[test]
fn a_non_finite_step_names_its_rows() {
    use lora_tune::train::trainer::train;
    let out = tempfile::tempdir().unwrap();
    let mut model = fresh_model();
    // Poison the embedding: every logit, so the first step's loss, becomes NaN.
    model.embed_tokens = FrozenWeight::Dense(model.embed_tokens.dense().mul_scalar(f32::NAN));
    let mut data = synthetic_dataset();
    data.sources = (1..=data.examples.len())
        .map(|line| format!("synthetic.jsonl:{line}"))
        .collect();
    let err = train(&mut model, &data, None, &settings(out.path()), None).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("step 1 (rows synthetic.jsonl:"), "{msg}");
    assert!(msg.contains("last checkpoint: none yet"), "{msg}");
    assert!(msg.contains("non-finite values"), "{msg}");
    // The rows named are the ones step 1 trained on: two micro-batches of three.
    let named = msg.matches("synthetic.jsonl:").count();
    assert_eq!(named, 6, "{msg}");
}

/// With `skip_nonfinite`, exactly the steps whose batches hold the poisoned row are skipped:
/// named with their rows, no update applied (the step's checkpoint equals the one before), and
/// the run goes on and ends with finite adapters.
#[test]
fn skip_nonfinite_skips_exactly_the_poisoned_steps() {
    use lora_tune::train::trainer::train;
    let out = tempfile::tempdir().unwrap();
    let mut model = fresh_model();
    // Token 255 appears in no synthetic row but the one poisoned below; its embedding is NaN.
    let [vocab, hidden] = model.embed_tokens.dims();
    let mask: Vec<f32> = (0..vocab * hidden)
        .map(|i| if i / hidden == 255 { f32::NAN } else { 1.0 })
        .collect();
    let device = model.device().clone();
    model.embed_tokens = FrozenWeight::Dense(
        model.embed_tokens.dense()
            * Tensor::<2>::from_data(
                burn::tensor::TensorData::new(mask, [vocab, hidden]),
                &device,
            ),
    );
    let mut data = synthetic_dataset();
    data.examples[7].ids[3] = 255;
    data.sources = (1..=data.examples.len())
        .map(|line| format!("synthetic.jsonl:{line}"))
        .collect();
    let mut s = settings(out.path());
    s.skip_nonfinite = true;
    s.checkpoint_every = Some(1);
    let poisoned: Vec<u64> = (0..s.schedule.total_steps)
        .filter(|&step| {
            (0..s.grad_accum).any(|j| {
                data.micro_batch_sources(step as usize * s.grad_accum + j, s.batch_size, s.seed)
                    .contains(&"synthetic.jsonl:8")
            })
        })
        .map(|step| step + 1)
        .collect();
    assert!(
        !poisoned.is_empty() && poisoned.len() < 6,
        "{poisoned:?}: the test needs both kinds of step"
    );

    let summary = train(&mut model, &data, None, &s, None).unwrap();
    let skipped: Vec<u64> = summary.skipped.iter().map(|k| k.step).collect();
    assert_eq!(skipped, poisoned);
    assert!(
        summary
            .skipped
            .iter()
            .all(|k| k.rows.iter().any(|r| r == "synthetic.jsonl:8"))
    );
    assert_eq!(summary.steps, 6);
    let adapters = |step: u64| {
        std::fs::read(out.path().join(format!(
            "checkpoints/step-{step:06}/adapter_model.safetensors"
        )))
        .unwrap()
    };
    for step in 1..=6 {
        if step > 1 && poisoned.contains(&step) {
            assert_eq!(
                adapters(step),
                adapters(step - 1),
                "step {step} changed the adapters"
            );
        } else if step > 1 {
            assert_ne!(
                adapters(step),
                adapters(step - 1),
                "step {step} trained nothing"
            );
        }
    }
    for (_, t) in model.adapter_tensors().unwrap() {
        assert!(t.values.iter().all(|v| v.is_finite()));
    }
    // metrics.jsonl keeps the skipped steps (loss null) and reads back on resume.
    let log = lora_tune::train::metrics::MetricsLog::open(out.path(), 6, false).unwrap();
    assert_eq!(log.records.len(), 6);
    for r in &log.records {
        assert_eq!(r.loss.is_finite(), !poisoned.contains(&r.step), "{r:?}");
    }
}

/// Golden: tools/reference/lora_train.py loraplus (PEFT's `create_loraplus_optimizer`, ratio 16,
/// `loraplus_weight_decay` 0.01): the B factors at 16 × lr, the A factors at lr.
#[test]
fn ten_loraplus_steps_equal_peft() {
    let run = tiny::PeftRun {
        fixtures: "lora/train-loraplus",
        init: "lora/train",
        loraplus_lr_ratio: Some(16.0),
        use_dora: false,
        router_aux_loss_coef: 0.0,
    };
    tiny::assert_ten_steps_equal_peft_run("tiny-llama", &run, &cpu(), "LoRA+", false);
}

/// Golden: tools/reference/lora_train.py dora (PEFT with `use_dora=True`): the same ten steps
/// with each layer's magnitude vector trained beside A and B, by the hand-derived step, with and
/// without gradient checkpointing; the magnitudes start as PEFT's (‖W‖ per row) and end equal.
#[test]
fn ten_dora_steps_equal_peft() {
    for checkpointing in [false, true] {
        let run = tiny::PeftRun {
            fixtures: "lora/train-dora",
            init: "lora/train-dora",
            loraplus_lr_ratio: None,
            use_dora: true,
            router_aux_loss_coef: 0.0,
        };
        let what = if checkpointing {
            "DoRA, gradient checkpointing"
        } else {
            "DoRA"
        };
        tiny::assert_ten_steps_equal_peft_run("tiny-llama", &run, &cpu(), what, checkpointing);
    }
}

/// The DoRA magnitudes lora-tune initialises are PEFT's: ‖W‖ of each output row.
#[test]
fn dora_magnitudes_start_as_peft_s() {
    let lora = LoraSection {
        use_dora: true,
        ..tiny::lora()
    };
    let mut model = tiny::named("tiny-llama");
    let adapted = select_targets(&model.config.linear_sites(), &lora).unwrap();
    model.attach_adapters(&adapted, &lora, 0).unwrap();
    let mut want = HostTensors::read(&tiny::fixture("lora/train-dora/init.safetensors")).unwrap();
    let mut magnitudes = 0;
    let mut worst = 0.0f32;
    for (key, t) in model.adapter_tensors().unwrap() {
        let w = want.take(&key, &t.shape).unwrap();
        if key.ends_with("lora_magnitude_vector") {
            magnitudes += 1;
            for (a, b) in t.values.iter().zip(&w.values) {
                worst = worst.max((a - b).abs() / b.abs());
            }
        }
    }
    assert_eq!(magnitudes, 14);
    eprintln!("DoRA initial magnitudes within {worst:e} of PEFT's");
    assert!(worst < 1e-6, "{worst}");
}

/// Golden: tools/reference/lora_train.py granite (peft 0.21.2 on tiny-granite): the same ten
/// steps through Granite's embedding, attention, residual and logit scalars, with and without
/// gradient checkpointing.
#[test]
fn ten_steps_on_tiny_granite_equal_peft() {
    let (name, fixtures) = ("tiny-granite", "lora/train-granite");
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), "granite", false);
    let what = "granite, gradient checkpointing";
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), what, true);
}

/// Golden: tools/reference/lora_train.py olmo2 (peft 0.21.2 on tiny-olmo2): the same ten steps
/// through OLMo2's post-block norms and projection-wide q/k norms, with and without gradient
/// checkpointing.
#[test]
fn ten_steps_on_tiny_olmo2_equal_peft() {
    let (name, fixtures) = ("tiny-olmo2", "lora/train-olmo2");
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), "olmo2", false);
    let what = "olmo2, gradient checkpointing";
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), what, true);
}

/// Golden: tools/reference/lora_train.py qwen3 (peft 0.21.2 on tiny-qwen3): the same ten steps
/// through Qwen3's per-head q/k norms, with and without gradient checkpointing.
#[test]
fn ten_steps_on_tiny_qwen3_equal_peft() {
    tiny::assert_ten_steps_equal_peft_on("tiny-qwen3", "lora/train-qwen3", &cpu(), "qwen3", false);
    tiny::assert_ten_steps_equal_peft_on(
        "tiny-qwen3",
        "lora/train-qwen3",
        &cpu(),
        "qwen3, gradient checkpointing",
        true,
    );
}

/// Golden: tools/reference/lora_train.py mistral (peft 0.21.2 on tiny-mistral, sliding window
/// 4): the same ten steps on rows of 6 and 9 tokens, which reach past the window, with and
/// without gradient checkpointing.
#[test]
fn ten_steps_on_tiny_mistral_with_its_window_equal_peft() {
    let (name, fixtures) = ("tiny-mistral", "lora/train-mistral");
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), "mistral", false);
    let what = "mistral, gradient checkpointing";
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), what, true);
}

/// Golden: tools/reference/lora_train.py llama-gelu (peft 0.21.2 on tiny-llama-gelu): the same
/// ten steps through a tanh-GELU gated MLP.
#[test]
fn ten_steps_on_tiny_llama_with_a_gelu_mlp_equal_peft() {
    let (name, fixtures) = ("tiny-llama-gelu", "lora/train-llama-gelu");
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), "llama-gelu", false);
}

/// Golden: tools/reference/lora_train.py gemma2 (peft 0.21.2 on tiny-gemma2): the same ten
/// steps through Gemma 2's scaled embeddings, sandwich (1 + w) norms, GeGLU, soft-capped scores
/// and logits and its window on alternate layers, with and without gradient checkpointing.
#[test]
fn ten_steps_on_tiny_gemma2_equal_peft() {
    let (name, fixtures) = ("tiny-gemma2", "lora/train-gemma2");
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), "gemma2", false);
    let what = "gemma2, gradient checkpointing";
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), what, true);
}

/// Golden: tools/reference/lora_train.py gemma3 (peft 0.21.2 on tiny-gemma3): the same ten
/// steps through Gemma 3's per-head q/k norms and its two RoPE tables (local layer 0 with the
/// window, global layer 1 with linear scaling), with and without gradient checkpointing.
#[test]
fn ten_steps_on_tiny_gemma3_equal_peft() {
    let (name, fixtures) = ("tiny-gemma3", "lora/train-gemma3");
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), "gemma3", false);
    let what = "gemma3, gradient checkpointing";
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), what, true);
}

/// Right padding longer than the window: a padding query then sees no real key inside the
/// window; it attends only itself (`causal_padding_mask`), so nothing turns into NaN and the
/// real tokens' loss and gradients are those of the unpadded row (tiny Gemma 2, window 4).
#[test]
fn padding_past_the_window_changes_nothing() {
    use lora_tune::train::autograd::Seed;
    use lora_tune::train::derived::loss_and_gradients;
    let mut model = tiny::named_with_adapters("tiny-gemma2", &tiny::lora(), 5);
    tiny::nonzero_b(&mut model);
    let row = |pad: usize| Batch {
        input_ids: vec![[vec![7, 19, 3], vec![0; pad]].concat()],
        attention_mask: vec![[vec![1; 3], vec![0; pad]].concat()],
        labels: vec![[vec![-100, 19, 3], vec![-100; pad]].concat()],
        classes: Vec::new(),
        pairs: None,
    };
    let (want_loss, want) = loss_and_gradients(&model, &row(0), Seed::mean_over(2))
        .unwrap()
        .unwrap();
    let (loss, got) = loss_and_gradients(&model, &row(9), Seed::mean_over(2))
        .unwrap()
        .unwrap();
    assert!(
        loss.is_finite() && rel(loss, want_loss) < 1e-6,
        "{loss} vs {want_loss}"
    );
    for (g, w) in got.iter().zip(&want) {
        let d = relative_difference(&tiny::values(g), &tiny::values(w));
        assert!(d < 1e-5, "gradients differ by {d}");
    }
    let logits = tiny::values(&model.forward(&row(9).input_ids, &row(9).attention_mask));
    assert!(logits.iter().all(|v| v.is_finite()));
}

/// Golden: tools/reference/lora_train.py phi3 (peft 0.21.2 on tiny-phi3, targets qkv_proj,
/// o_proj, gate_up_proj, down_proj — what the default targets select there): the same ten steps
/// through the fused projections, partial rotary and LongRoPE (6-token micro-batches with the
/// short factors, 9-token ones with the long), with and without gradient checkpointing.
#[test]
fn ten_steps_on_tiny_phi3_equal_peft() {
    let (name, fixtures) = ("tiny-phi3", "lora/train-phi3");
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), "phi3", false);
    let what = "phi3, gradient checkpointing";
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), what, true);
}

/// `lora.init = "pissa"` and `"olora"` as PEFT's `pissa_init` / `olora_init` on tiny-llama
/// (golden: tools/reference/pissa.py): the initial A and B equal PEFT's up to each component's
/// sign (singular vectors and Householder columns have none of their own; A row and B column
/// flip together), the base keeps PEFT's residual W − s·B·A; the ten PEFT steps from our own
/// init give PEFT's losses (AdamW is sign-equivariant coordinate by coordinate); and a checkpoint
/// exports as PEFT's `path_initial_model_for_weight_conversion` converts: a rank-8 plain LoRA
/// with the same ΔW, whose logits on the original base equal PEFT's on its own conversion.
#[test]
fn pissa_and_olora_init_train_and_convert_as_peft() {
    use lora_tune::export::{Request, export};
    use lora_tune::peft::config::PeftConfig;
    use lora_tune::recipe::{ExportFormat, LoraInit};
    use lora_tune::train::checkpoint::{self, TrainerState};
    use lora_tune::weights::gguf_writer::TensorType;

    for (init, name) in [(LoraInit::Pissa, "pissa"), (LoraInit::Olora, "olora")] {
        let fixtures = tiny::fixture(&format!("lora/init-{name}"));
        let lora = LoraSection {
            init,
            ..tiny::lora()
        };
        let mut model = tiny::named("tiny-llama");
        let adapted = select_targets(&model.config.linear_sites(), &lora).unwrap();
        model.attach_adapters(&adapted, &lora, 0).unwrap();

        let mut want = HostTensors::read(&fixtures.join("init.safetensors")).unwrap();
        let ours: std::collections::BTreeMap<String, _> =
            model.adapter_tensors().unwrap().into_iter().collect();
        let mut worst = 0.0f32;
        for (key, a) in &ours {
            let Some(path) = key.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let b_key = format!("{path}.lora_B.weight");
            let b = &ours[&b_key];
            let (want_a, want_b) = (
                want.take(key, &a.shape).unwrap(),
                want.take(&b_key, &b.shape).unwrap(),
            );
            let [r, cols] = [a.shape[0], a.shape[1]];
            let largest = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let (scale_a, scale_b) = (largest(&want_a.values), largest(&want_b.values));
            for k in 0..r {
                let row = |t: &[f32]| t[k * cols..][..cols].to_vec();
                let column = |t: &[f32]| t.iter().skip(k).step_by(r).copied().collect::<Vec<_>>();
                let (ours_a, theirs_a) = (row(&a.values), row(&want_a.values));
                let dot: f32 = ours_a.iter().zip(&theirs_a).map(|(x, y)| x * y).sum();
                let sign = dot.signum();
                let pairs = [
                    (ours_a, theirs_a, scale_a),
                    (column(&b.values), column(&want_b.values), scale_b),
                ];
                for (o, t, scale) in pairs {
                    for (x, y) in o.iter().zip(&t) {
                        worst = worst.max((sign * x - y).abs() / scale);
                    }
                }
            }
        }
        want.finish().unwrap();
        eprintln!("{name}: initial A and B equal to PEFT's up to sign within {worst:e}");
        assert!(worst < 1e-4, "{name}: initial A/B differ by {worst}");

        // B·A and the residual are sign-free.
        let residual = HostTensors::read(&fixtures.join("residual.safetensors")).unwrap();
        let mut residual = residual;
        let mut worst = 0.0f32;
        for (path, linear) in model.linears_mut() {
            if !path.starts_with("model.layers.0.") {
                continue;
            }
            let got = tiny::values(&linear.weight.dense());
            let w = residual
                .take(&format!("{path}.weight"), &linear.weight.dims())
                .unwrap()
                .values;
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in got.iter().zip(&w) {
                worst = worst.max((a - b).abs() / scale);
            }
        }
        residual.finish().unwrap();
        eprintln!("{name}: residual base weights within {worst:e} of PEFT's");
        // PEFT decomposes in f32 and we in f64: torch's own f64 SVD differs from its f32 one by
        // the same 2.9e-5 on PiSSA's residual (checked by hand with tools/reference/pissa.py's
        // inputs), so the bound is the f32 decomposition's rounding, not ours.
        assert!(worst < 1e-4, "{name}: residual differs by {worst}");

        // PEFT's ten steps from our own init.
        let trajectory: Vec<serde_json::Value> = tiny::json(&fixtures.join("trajectory.json"));
        let batches = tiny::train_batches();
        let (schedule, mut optimizer) = tiny::reference_optimiser(None);
        for (step, want) in trajectory.iter().enumerate() {
            let micro = &batches[step * 2..step * 2 + 2];
            let stats = train_step(
                &mut model,
                micro,
                &mut optimizer,
                schedule.lr(step as u64),
                0.05,
            )
            .unwrap();
            let loss = want["loss"].as_f64().unwrap();
            assert!(
                rel(stats.loss, loss) < 1e-4,
                "{name} step {}: loss {} vs PEFT {loss}",
                step + 1,
                stats.loss
            );
        }

        // Checkpoint, export, and the converted adapter against PEFT's conversion.
        let out = tempfile::tempdir().unwrap();
        let config = PeftConfig::new(&lora, &adapted, "tiny-llama".into(), None);
        let state = TrainerState {
            step: 10,
            total_steps: 10,
            seed: 0,
            batch_size: 2,
            grad_accum: 2,
            train_examples: 20,
            tokens: 0,
            best: None,
            loss_scale: None,
        };
        let ckpt = checkpoint::save(
            out.path(),
            &mut model,
            &optimizer,
            &state,
            Some(&config),
            None,
        )
        .unwrap();
        let exported = out.path().join("export");
        export(&Request {
            adapter: &ckpt,
            format: ExportFormat::Peft,
            out: &exported,
            dtype: TensorType::F32,
            max_shard_bytes: u64::MAX,
            base: None,
            name: "tiny",
            card: None,
        })
        .unwrap();
        let ours = lora_tune::peft::folder::read_config(&exported).unwrap();
        assert_eq!((ours.r, ours.lora_alpha), (8, 16.0));
        assert_eq!(ours.init_lora_weights, serde_json::Value::Bool(true));
        let delta = |dir: &Path| -> Vec<(String, Vec<f32>)> {
            let t: std::collections::BTreeMap<_, _> =
                HostTensors::read(&dir.join("adapter_model.safetensors"))
                    .unwrap()
                    .into_entries()
                    .into_iter()
                    .collect();
            t.iter()
                .filter_map(|(k, a)| {
                    let path = k.strip_suffix(".lora_A.weight")?;
                    let b = &t[&format!("{path}.lora_B.weight")];
                    let (r, cols, rows) = (a.shape[0], a.shape[1], b.shape[0]);
                    let ba = (0..rows * cols)
                        .map(|n| {
                            (0..r)
                                .map(|k| b.values[n / cols * r + k] * a.values[k * cols + n % cols])
                                .sum::<f32>()
                                * 2.0
                        })
                        .collect();
                    Some((path.to_string(), ba))
                })
                .collect()
        };
        let (got, want) = (delta(&exported), delta(&fixtures.join("converted")));
        assert_eq!(got.len(), 14);
        let mut worst = 0.0f32;
        for ((path, g), (wpath, w)) in got.iter().zip(&want) {
            assert_eq!(path, wpath);
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in g.iter().zip(w) {
                worst = worst.max((a - b).abs() / scale);
            }
        }
        eprintln!("{name}: exported ΔW within {worst:e} of PEFT's converted adapter");
        assert!(worst < 1e-3, "{name}: ΔW differs by {worst}");

        let mut original = tiny::named("tiny-llama");
        let sites = original.config.linear_sites();
        original.apply_peft_folder(&sites, &exported).unwrap();
        tiny::assert_peft_logits_of(
            &original,
            &format!("lora/init-{name}"),
            &format!("{name} export on the original base"),
        );
    }
}

/// `model.compute_dtype = "bf16"`: every frozen product in bf16 (both operands rounded, summed
/// in f32, the result rounded, as tensor cores and torch autocast compute it), the rest f32.
/// Golden: tools/reference/lora_train.py bf16, the ten PEFT steps under
/// `torch.autocast("cpu", bfloat16)` from the same adapters. Losses within 1e-2 (issue #22's
/// bound), and the run must follow autocast's more closely than f32 compute does — in the
/// losses and in the final adapters — or the bf16 path would not be what is compared.
#[test]
fn ten_steps_in_bf16_compute_follow_peft_under_autocast() {
    let fixture = "tests/fixtures/lora/train-bf16";
    let (steps, bf16_loss_gap, bf16_adapter_gap) =
        follow_autocast(fixture, Dtype::Bf16, None, false);
    let (_, f32_loss_gap, f32_adapter_gap) = follow_autocast(fixture, Dtype::F32, None, false);
    let losses: Vec<f64> = steps.iter().map(|s| s.loss).collect();
    eprintln!(
        "against PEFT under autocast: bf16 compute losses {bf16_loss_gap:e}, adapters \
         {bf16_adapter_gap:e} (relative Frobenius); f32 compute {f32_loss_gap:e}, \
         {f32_adapter_gap:e}; losses {losses:?}"
    );
    assert!(bf16_loss_gap <= 1e-2, "{bf16_loss_gap}");
    assert!(
        bf16_loss_gap < f32_loss_gap,
        "{bf16_loss_gap} vs {f32_loss_gap}"
    );
    assert!(
        bf16_adapter_gap < f32_adapter_gap,
        "{bf16_adapter_gap} vs {f32_adapter_gap}"
    );
}

/// DoRA with bf16 products: the base path's products (the dropped input's, the input gradient's)
/// in bf16, the weight norm and the magnitude's gradient in f32. Golden:
/// tools/reference/lora_train.py dora-bf16, PEFT's DoRA steps under `torch.autocast(bf16)`.
#[test]
fn ten_dora_steps_in_bf16_compute_follow_peft_under_autocast() {
    let fixture = "tests/fixtures/lora/train-dora-bf16";
    let (_, bf16_loss_gap, bf16_gap) = follow_autocast(fixture, Dtype::Bf16, None, true);
    let (_, f32_loss_gap, f32_gap) = follow_autocast(fixture, Dtype::F32, None, true);
    eprintln!(
        "DoRA against PEFT under autocast: bf16 compute losses {bf16_loss_gap:e}, adapters \
         {bf16_gap:e}; f32 compute {f32_loss_gap:e}, {f32_gap:e}"
    );
    assert!(bf16_loss_gap <= 1e-2, "{bf16_loss_gap}");
    assert!(
        bf16_loss_gap < f32_loss_gap,
        "{bf16_loss_gap} vs {f32_loss_gap}"
    );
    assert!(bf16_gap < f32_gap, "{bf16_gap} vs {f32_gap}");
}

/// `model.compute_dtype = "f16"`: products in f16 with dynamic loss scaling. Golden:
/// tools/reference/lora_train.py f16, PEFT under `torch.autocast("cpu", float16)` with
/// torch.amp.GradScaler from a scale of 2^22, where steps 1 and 2 overflow and are skipped,
/// and its adapters outside autocast (f32, as ours: stock autocast runs them in f16).
/// The run must scale and skip at the same steps, and follow the losses within 1e-2; its final
/// adapters must be closer to the fixture's than an f32 run's, which skips nothing.
#[test]
fn ten_steps_in_f16_compute_scale_and_skip_as_torch_grad_scaler() {
    use lora_tune::train::loss_scale::LossScale;
    let fixture = "tests/fixtures/lora/train-f16";
    let trajectory: Vec<serde_json::Value> =
        tiny::json(&Path::new(ROOT).join(fixture).join("trajectory.json"));
    let first = trajectory[0]["loss_scale"].as_f64().unwrap();
    let (steps, f16_loss_gap, f16_adapter_gap) = follow_autocast(
        fixture,
        Dtype::F16,
        Some(LossScale::starting_at(first)),
        false,
    );
    let (_, f32_loss_gap, f32_adapter_gap) = follow_autocast(fixture, Dtype::F32, None, false);
    eprintln!(
        "against PEFT under f16 autocast + GradScaler: f16 compute losses {f16_loss_gap:e}, \
         adapters {f16_adapter_gap:e}; f32 compute {f32_loss_gap:e}, {f32_adapter_gap:e}"
    );
    for (got, want) in steps.iter().zip(&trajectory) {
        let step = &want["step"];
        assert_eq!(
            got.loss_scale,
            want["loss_scale"].as_f64(),
            "step {step}: scale"
        );
        assert_eq!(
            Some(got.overflowed),
            want["skipped"].as_bool(),
            "step {step}"
        );
    }
    assert!(steps.iter().filter(|s| s.overflowed).count() == 2);
    assert!(f16_loss_gap <= 1e-2, "{f16_loss_gap}");
    assert!(
        f16_adapter_gap < f32_adapter_gap,
        "{f16_adapter_gap} vs {f32_adapter_gap}"
    );
}

/// Ten steps of tiny-llama from lora/train's initial adapters (lora/train-dora's with
/// `use_dora`) with products in `compute` (and `loss_scale` where given), against the PEFT
/// trajectory and final adapters in `fixture`: each step's stats, the largest relative loss
/// difference, and the final adapters' relative Frobenius distance.
fn follow_autocast(
    fixture: &str,
    compute: Dtype,
    mut loss_scale: Option<lora_tune::train::loss_scale::LossScale>,
    use_dora: bool,
) -> (Vec<lora_tune::train::step::StepStats>, f64, f64) {
    use lora_tune::train::step::{Share, train_step_share};
    let fixtures = Path::new(ROOT).join(fixture);
    let trajectory: Vec<serde_json::Value> = tiny::json(&fixtures.join("trajectory.json"));
    let mut model = tiny::named_on("tiny-llama", &cpu());
    let lora = LoraSection {
        use_dora,
        ..tiny::lora()
    };
    let adapted = select_targets(&model.config.linear_sites(), &lora).unwrap();
    model.attach_adapters(&adapted, &lora, 0).unwrap();
    let init = if use_dora { "train-dora" } else { "train" };
    let init = Path::new(ROOT).join(format!("tests/fixtures/lora/{init}/init.safetensors"));
    model.load_adapter_weights(&init).unwrap();
    model.compute_in(compute);
    let batches = tiny::train_batches();
    let (schedule, mut optimizer) = tiny::reference_optimiser(None);
    let steps: Vec<_> = (0..trajectory.len())
        .map(|step| {
            let micro = &batches[step * 2..step * 2 + 2];
            let lr = schedule.lr(step as u64);
            let (share, scale) = (Share::ALL, loss_scale.as_mut());
            train_step_share(&mut model, micro, share, &mut optimizer, lr, 0.05, scale).unwrap()
        })
        .collect();
    let distance = tiny::relative_distance(&mut model, &fixtures.join("final.safetensors"));
    let loss_gap = steps
        .iter()
        .zip(&trajectory)
        .map(|(g, w)| rel(g.loss, w["loss"].as_f64().unwrap()))
        .fold(0.0, f64::max);
    (steps, loss_gap, distance)
}

/// Golden: tools/reference/moe_train.py (peft 0.21.2): the ten steps with adapters on attention
/// and on every expert — Qwen3-MoE per expert (target_modules on per-expert modules) and fused
/// (target_parameters on transformers 5's 3-D experts, mapped to per-expert keys), OLMoE per
/// expert, Qwen2-MoE per expert with its shared expert adapted too, Mixtral's w1/w3/w2 — through the router's
/// weights, the grouped expert products and the scatter back,
/// with and without gradient checkpointing.
#[test]
fn ten_steps_on_tiny_mixtures_of_experts_equal_peft() {
    for (name, fixtures) in [
        ("tiny-qwen3-moe", "lora/train-qwen3-moe"),
        ("tiny-qwen3-moe-fused", "lora/train-qwen3-moe-fused"),
        ("tiny-qwen2-moe", "lora/train-qwen2-moe"),
        ("tiny-mixtral", "lora/train-mixtral"),
        ("tiny-granitemoe", "lora/train-granitemoe-fused"),
        ("tiny-olmoe", "lora/train-olmoe"),
    ] {
        for checkpointing in [false, true] {
            let what = format!("{name}, checkpointing {checkpointing}");
            tiny::assert_ten_steps_equal_peft_on(name, fixtures, &cpu(), &what, checkpointing);
        }
    }
}

/// Golden: tools/reference/moe_train.py qwen3-moe-aux|mixtral-aux (transformers'
/// `output_router_logits` loss, `load_balancing_loss_func` over every sparse layer and the
/// attention mask, at router_aux_loss_coef 0.1, each micro-batch weighted by its share of the
/// step's labelled tokens): the ten steps' losses, gradient norms and final adapters, with and
/// without gradient checkpointing. The loss moves the adapters through the router's input
/// only (the router is frozen), so the plain runs' adapters are checked to be far from these.
#[test]
fn ten_steps_with_the_router_load_balancing_loss_equal_peft() {
    for (name, fixtures) in [
        ("tiny-qwen3-moe", "lora/train-qwen3-moe-aux"),
        ("tiny-mixtral", "lora/train-mixtral-aux"),
    ] {
        for checkpointing in [false, true] {
            let run = tiny::PeftRun {
                fixtures,
                init: fixtures,
                loraplus_lr_ratio: None,
                use_dora: false,
                router_aux_loss_coef: 0.1,
            };
            let what = format!("{name} with the router loss, checkpointing {checkpointing}");
            tiny::assert_ten_steps_equal_peft_run(name, &run, &cpu(), &what, checkpointing);
        }
        let read = |f: &str| HostTensors::read(&tiny::fixture(f).join("final.safetensors"));
        let (aux, plain) = (
            read(fixtures).unwrap(),
            read(fixtures.trim_end_matches("-aux")),
        );
        let mut plain = plain.unwrap();
        let worst = aux
            .into_entries()
            .into_iter()
            .map(|(k, t)| relative_difference(&t.values, &plain.take(&k, &t.shape).unwrap().values))
            .fold(0f32, f32::max);
        assert!(
            worst > 1e-3,
            "{name}: the router loss moved no adapter ({worst})"
        );
    }
}

/// The router load-balancing loss's hand-derived gradient (through each sparse layer's softmax
/// into the router's input, the layers below the lowest adapter counted but not
/// backpropagated) equals autodiff's, with dropout, packing and checkpointing.
#[test]
fn the_derived_step_with_the_router_loss_equals_autodiff() {
    let targets = r"model\.layers\.1\..*|lm_head";
    derived_step_equals_autodiff_with("tiny-qwen3-moe", targets, [1e-5; 2], false, Dtype::F32, 0.5);
    let targets = r"model\.layers\.0\..*";
    derived_step_equals_autodiff_with("tiny-mixtral", targets, [1e-5; 2], false, Dtype::F32, 0.5);
    derived_step_equals_autodiff_with("tiny-qwen2-moe", targets, [1e-5; 2], false, Dtype::F32, 0.5);
}

/// The hand-derived MoE backward (experts' adapters, the routing weights through the top-k
/// softmax with and without renormalisation, the router's input gradient; Qwen2-MoE's shared
/// expert and its gate; Mixtral's w1/w3/w2) equals autodiff's, with dropout on the experts'
/// adapters; with checkpointing too, whose recompute reuses the forward's routes (routing again
/// in the recompute gave Mixtral's gradients a 1.2e-5 difference and Qwen3-MoE's adapters 2.3e-5
/// after five steps: the forward's fused attention and the recompute's differ in the last bits,
/// enough to move a near-tied top k).
#[test]
fn the_derived_step_equals_autodiff_on_mixtures_of_experts() {
    let targets = r"model\.layers\.1\..*|lm_head";
    derived_step_equals_autodiff_on("tiny-qwen3-moe", targets, [1e-5; 2], false);
    let targets = r"model\.layers\.0\..*";
    derived_step_equals_autodiff_on("tiny-olmoe-fused", targets, [1e-5; 2], false);
    // Qwen2-MoE's shared expert and its sigmoid gate (an adapter on shared_expert_gate too).
    derived_step_equals_autodiff_on("tiny-qwen2-moe", targets, [1e-5; 2], false);
    derived_step_equals_autodiff_on("tiny-mixtral", targets, [1e-5; 2], false);
    // (GraniteMoE's experts take no dropout, which this check draws: its top-k softmax's
    // backward is proven by its ten PEFT steps.)
}
