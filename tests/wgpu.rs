//! The wgpu backend — the product's GPU path — computes what PEFT and the flex backend compute, on
//! the tiny Llama fixtures: adapted logits (PEFT's folder read back), LoRA gradients equal to
//! flex's, and the ten PEFT training steps (accumulation, clipping, AdamW) with and without
//! gradient checkpointing — all through the hand-derived step — and on the tiny BERT the derived
//! classifier step's gradients equal to flex's. Merging is host-side arithmetic and needs no
//! device.
//! The gradient and training checks also guard burn #5162 (NaN or zero gradients on wgpu when
//! only the LoRA factors are tracked).
//!
//! Without a GPU this runs on Mesa's llvmpipe through wgpu's GL backend (`.ci/run` installs
//! libegl1, libegl-mesa0, libgl1-mesa-dri). Where wgpu cannot start, these tests fail with the
//! reason; `LORA_TUNE_SKIP_WGPU=1` opts out explicitly.

mod common;

use common::tiny;

use burn::tensor::{Device, Tensor};
use lora_tune::device::{DeviceChoice, select};
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::model::adapted::host;
use lora_tune::train::step::accumulate_gradients;

fn wgpu() -> Option<Device> {
    common::device_panics_end_the_process();
    if std::env::var_os("LORA_TUNE_SKIP_WGPU").is_some() {
        eprintln!("wgpu tests skipped: LORA_TUNE_SKIP_WGPU is set");
        return None;
    }
    match select(DeviceChoice::Wgpu) {
        Ok(selected) => {
            eprintln!("device: {}", selected.name);
            Some(selected.device)
        }
        Err(e) => panic!(
            "wgpu did not start: {e}. Install a GPU driver or Mesa's EGL/GL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri), or set LORA_TUNE_SKIP_WGPU=1 to opt out"
        ),
    }
}

#[test]
fn peft_folder_logits_on_wgpu() {
    let Some(device) = wgpu() else { return };
    let mut model = tiny::base_on(&device);
    let sites = model.config.linear_sites();
    model
        .apply_peft_folder(&sites, &tiny::fixture("lora/peft"))
        .unwrap();
    tiny::assert_peft_logits(&model, "wgpu, PEFT folder");
}

#[test]
fn packed_blocks_decode_like_gguf_py_on_wgpu() {
    let Some(device) = wgpu() else { return };
    tiny::assert_packed_blocks_decode_like_gguf_py(&device);
}

#[test]
fn lora_gradients_on_wgpu_equal_flex() {
    let Some(device) = wgpu() else { return };
    let (ids, mask) = tiny::first_batch();
    let labels: Vec<Vec<i64>> = ids
        .iter()
        .zip(&mask)
        .map(|(row, m)| {
            row.iter()
                .zip(m)
                .map(|(&t, &m)| if m == 0 { -100 } else { i64::from(t) })
                .collect()
        })
        .collect();
    let batch = lora_tune::data::batch::Batch {
        input_ids: ids,
        attention_mask: mask,
        labels,
        ..Default::default()
    };
    let grads = |device: &Device| {
        let mut model = tiny::adapted_on(&tiny::fixture("lora/train/final.safetensors"), device);
        let (loss, grads) = accumulate_gradients(&mut model, std::slice::from_ref(&batch)).unwrap();
        let values: Vec<Vec<f32>> = grads
            .iter()
            .map(|g: &Tensor<2>| host(g).unwrap().values)
            .collect();
        (loss, values)
    };
    let (flex_loss, flex) = grads(&select(DeviceChoice::Cpu).unwrap().device);
    let (wgpu_loss, got) = grads(&device);
    assert_eq!(flex.len(), 28, "A and B of 14 adapters");
    let worst = worst_relative(&got, &flex);
    eprintln!("loss flex {flex_loss} wgpu {wgpu_loss}; gradients worst relative {worst:e}");
    assert!((flex_loss - wgpu_loss).abs() / flex_loss < 1e-5);
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn ten_training_steps_equal_peft_on_wgpu() {
    let Some(device) = wgpu() else { return };
    tiny::assert_ten_steps_equal_peft(&device, "wgpu", false);
}

#[test]
fn ten_training_steps_with_gradient_checkpointing_equal_peft_on_wgpu() {
    let Some(device) = wgpu() else { return };
    tiny::assert_ten_steps_equal_peft(&device, "wgpu, gradient checkpointing", true);
}

/// DoRA's ten PEFT steps (row norms, the magnitude's gradient) on wgpu too.
#[test]
fn ten_dora_steps_equal_peft_on_wgpu() {
    let Some(device) = wgpu() else { return };
    let run = tiny::PeftRun {
        fixtures: "lora/train-dora",
        init: "lora/train-dora",
        loraplus_lr_ratio: None,
        use_dora: true,
        router_aux_loss_coef: 0.0,
    };
    tiny::assert_ten_steps_equal_peft_run("tiny-llama", &run, &device, "wgpu, DoRA", false);
}

/// The hand-derived BERT classifier step (encoder, pooler, head; erf, LayerNorm, padded
/// attention) gives flex's loss and gradients on wgpu.
#[test]
fn classifier_gradients_on_wgpu_equal_flex() {
    use lora_tune::lora::targets::select as select_targets;
    use lora_tune::model::classifier::{Body, SequenceClassifier};
    use lora_tune::recipe::{LoraSection, Pooling, Targets};
    let Some(device) = wgpu() else { return };
    let batch = tiny::seq_cls_batch();
    let lora = LoraSection {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: Targets::Regex(r".*(query|key|value|dense)".into()),
        ..LoraSection::default()
    };
    let grads = |device: &Device| {
        let bert = tiny::bert_at(&tiny::fixture("bert/tiny-bert"), device);
        let adapted = select_targets(&bert.config.linear_sites(), &lora).unwrap();
        let labels = ["a", "b", "c"].map(String::from).to_vec();
        let mut model = SequenceClassifier::new(Body::Bert(bert), labels, Pooling::Cls, 1).unwrap();
        model.attach_adapters(&adapted, &lora, 1).unwrap();
        tiny::nonzero_b(&mut model);
        model.set_training(true);
        model.seed_dropout(3);
        let (loss, grads) = accumulate_gradients(&mut model, std::slice::from_ref(&batch)).unwrap();
        let values: Vec<Vec<f32>> = grads.iter().map(|g| host(g).unwrap().values).collect();
        (loss, values)
    };
    let (flex_loss, flex) = grads(&select(DeviceChoice::Cpu).unwrap().device);
    let (wgpu_loss, got) = grads(&device);
    let worst = worst_relative(&got, &flex);
    eprintln!(
        "classifier loss flex {flex_loss} wgpu {wgpu_loss}; gradients worst relative {worst:e}"
    );
    assert!((flex_loss - wgpu_loss).abs() / flex_loss < 1e-5);
    assert!(worst < 1e-4, "{worst}");
}

/// The largest |wgpu − flex| of each gradient over that gradient's largest |flex| entry; every
/// wgpu value finite, no flex gradient all zero (the check would prove nothing).
fn worst_relative(wgpu: &[Vec<f32>], flex: &[Vec<f32>]) -> f32 {
    assert_eq!(wgpu.len(), flex.len());
    let mut worst = 0.0f32;
    for (g, f) in wgpu.iter().zip(flex) {
        assert!(
            g.iter().all(|v| v.is_finite()),
            "non-finite gradient on wgpu"
        );
        let scale = f.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            scale > 0.0,
            "a flex gradient is all zero: the check would prove nothing"
        );
        for (a, b) in g.iter().zip(f) {
            worst = worst.max((a - b).abs() / scale);
        }
    }
    worst
}

/// `model.compute_dtype` on wgpu follows what the adapter reports: llvmpipe's GL backend has no
/// bf16 arithmetic (WGSL has no bf16) and no f16 tensor cores, so `auto` computes in f32 and
/// `bf16` is refused with the reason; on an adapter that reports bf16 arithmetic, both take bf16,
/// and on one with only f16 tensor cores (Vulkan) `auto` takes f16.
#[test]
fn compute_dtype_on_wgpu_follows_the_adapter() {
    use lora_tune::dtype::{ComputeDtype, Dtype};
    let Some(device) = wgpu() else { return };
    let selected = select(DeviceChoice::Wgpu).unwrap();
    for (choice, dtype) in [
        (ComputeDtype::Bf16, Dtype::Bf16),
        (ComputeDtype::F16, Dtype::F16),
    ] {
        let has = selected.device.supports_dtype(dtype.float());
        let (auto, why) = lora_tune::device::compute_dtype(&selected, ComputeDtype::Auto).unwrap();
        let asked = lora_tune::device::compute_dtype(&selected, choice);
        if dtype == Dtype::Bf16 {
            let f16_cores = selected.device.supports_dtype(Dtype::F16.float())
                && lora_tune::device::f16_tensor_cores(&selected.device);
            let want = match (has, f16_cores) {
                (true, _) => Dtype::Bf16,
                (false, true) => Dtype::F16,
                (false, false) => Dtype::F32,
            };
            assert_eq!(auto, want, "{why}");
        }
        if has {
            eprintln!(
                "{}: general {} arithmetic: training with it",
                selected.name,
                dtype.name()
            );
            assert_eq!(asked.unwrap().0, dtype);
            assert_half_gradients_follow_flex(&device, dtype);
        } else {
            // llvmpipe's GL adapter has neither SHADER_F16 nor bf16 arithmetic.
            let err = asked.unwrap_err().to_string();
            eprintln!(
                "{}: no general {} arithmetic, refused: {err}",
                selected.name,
                dtype.name()
            );
            assert!(
                err.contains("model.compute_dtype")
                    && err.contains(dtype.name())
                    && err.contains("f32"),
                "{err}"
            );
        }
    }
}

/// Gradients of one micro-batch with products in `dtype` on `device` against flex's in the
/// same dtype: the same rounding, so close; f32 compute's differ by more.
fn assert_half_gradients_follow_flex(device: &Device, dtype: lora_tune::dtype::Dtype) {
    let batch = tiny::train_batches().remove(0);
    let grads = |device: &Device, dtype| {
        let mut model = tiny::adapted_on(&tiny::fixture("lora/train/final.safetensors"), device);
        model.compute_in(dtype);
        let (_, grads) = accumulate_gradients(&mut model, std::slice::from_ref(&batch)).unwrap();
        grads
            .iter()
            .map(|g: &Tensor<2>| host(g).unwrap().values)
            .collect::<Vec<_>>()
    };
    let flex = &select(DeviceChoice::Cpu).unwrap().device;
    let want = grads(flex, dtype);
    let got = grads(device, dtype);
    let f32_gap = worst_relative(&grads(flex, lora_tune::dtype::Dtype::F32), &want);
    let gap = worst_relative(&got, &want);
    eprintln!(
        "{}: wgpu vs flex {gap:e}; f32 vs {0} {f32_gap:e}",
        dtype.name()
    );
    assert!(gap < f32_gap, "{gap} vs {f32_gap}");
}

/// A run on wgpu end to end through the binary: what `auto` picked for the products and why,
/// and the device memory the allocator holds at the end (GPU backends report their pools;
/// flex prints no such line).
#[test]
fn a_run_on_wgpu_says_its_compute_dtype_and_device_memory() {
    if wgpu().is_none() {
        return;
    }
    let recipe = "[model]\nsource = \"model\"\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 32\n\n[train]\nmax_steps = 2\nbatch_size = 2\n\n[export]\nout_dir = \"out\"\n";
    let tmp = common::tiny_workdir(recipe);
    let out = common::run(tmp.path(), &["recipe.toml", "--device", "wgpu"]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("compute: frozen products in f32 (") && stdout.contains("no general bf16"),
        "{stdout}"
    );
    assert!(stdout.contains("device memory: "), "{stdout}");
    let tmp = common::tiny_workdir(recipe);
    let cpu = common::run(tmp.path(), &["recipe.toml", "--device", "cpu"]);
    let (stdout, stderr) = common::text(&cpu);
    assert_eq!(cpu.status.code(), Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("device memory: "), "{stdout}");
}

/// Dropout on the device (the cubecl kernel, 64-bit splitmix64 in 32-bit halves) gives the
/// bits flex's host draw gives: odd and even element counts, a stream whose low half carries
/// into the high one, and several rates. Without this every PEFT-parity fixture with dropout
/// would hold on one backend only.
#[test]
fn device_dropout_equals_the_host_draw_bit_for_bit() {
    use lora_tune::kernels::{DropoutMask, dropout};
    let Some(device) = wgpu() else { return };
    let flex = Device::flex();
    for (shape, p, stream) in [
        ([37, 101], 0.1, 12345u64),
        ([64, 576], 0.05, 0xFFFF_FFF0_FFFF_FFF0),
        ([3, 5], 0.5, u64::MAX - 3),
        ([128, 1536], 0.3, 0x0123_4567_89AB_CDEF),
    ] {
        let n = shape[0] * shape[1];
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() - 0.1).collect();
        let x = |d: &Device| {
            Tensor::<2>::from_data(burn::tensor::TensorData::new(values.clone(), shape), d)
        };
        let mask = DropoutMask { p, stream };
        let want = tiny::values(&dropout(x(&flex), mask));
        let got = tiny::values(&dropout(x(&device), mask));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "{shape:?} p={p} stream={stream:#x}"
        );
        let dropped = want.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!(
            (dropped - p).abs() < 0.05 + 2.0 / (n as f64).sqrt(),
            "{dropped} vs {p}"
        );
    }
}

/// A failure in another thread of a training run (what wgpu's device thread did on llvmpipe,
/// after which the run waited for good) ends the process at once, with the device, what failed
/// and the last complete checkpoint, and a resume continues from it.
#[test]
fn a_failed_device_thread_ends_the_run_naming_the_last_checkpoint() {
    if wgpu().is_none() {
        return;
    }
    let recipe = "[model]\nsource = \"model\"\n\n[data]\ntrain = \"train.jsonl\"\nmax_len = 32\n\n[train]\nmax_steps = 4\nbatch_size = 2\ncheckpoint_every = 1\n\n[export]\nout_dir = \"out\"\n";
    let tmp = common::tiny_workdir(recipe);
    let mut child = common::lora_tune(tmp.path())
        .args(["recipe.toml", "--device", "wgpu"])
        .env("LORA_TUNE_INJECT_FAILURE", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed().as_secs() > 300 {
            child.kill().unwrap();
            panic!("the run did not end after its device thread failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = common::text(&out);
    assert_eq!(status.code(), Some(101), "{stdout}{stderr}");
    let checkpoint = tmp.path().join("out/checkpoints/step-000002");
    for part in [
        "error: ",
        "the device thread failed",
        "injected failure after step 2",
        "last complete checkpoint: ",
        "checkpoints/step-000002;",
        "recipe.toml --resume ",
    ] {
        assert!(stderr.contains(part), "missing {part:?} in:\n{stderr}");
    }
    assert!(checkpoint.join("adapter_model.safetensors").is_file());
    let resumed = common::run(
        tmp.path(),
        &["recipe.toml", "--device", "wgpu", "--resume", "out"],
    );
    let (stdout, stderr) = common::text(&resumed);
    assert_eq!(resumed.status.code(), Some(0), "{stdout}{stderr}");
}

/// The transfer ledger over one W1-shaped training step on wgpu (2 packed rows of 128 tokens,
/// dropout on every adapter, the derived step, AdamW): up go the batch's O(tokens) integers
/// (ids, labels, positions, example numbers), down come a few scalars (the loss, the gradient
/// norm). Before the step stayed on the device, each adapter's dropout mask ([tokens, in] f32),
/// the rotary tables ([tokens, head_dim] f32, twice) and the [b, s, s] attention mask went up
/// every step: each alone is past the bound asserted here.
#[test]
fn a_training_step_on_wgpu_moves_its_batch_and_a_few_scalars() {
    use lora_tune::model::adapted::AdaptedModel;
    use lora_tune::train::step::train_step;
    use lora_tune::transfer::ledger;
    let Some(device) = wgpu() else { return };
    let lora = lora_tune::recipe::LoraSection {
        dropout: 0.1,
        ..tiny::lora()
    };
    let mut model = tiny::with_adapters_on(&lora, 7, &device);
    model.set_training(true);
    let (b, s) = (2usize, 128usize);
    let row = |r: usize| {
        let (first, second) = (tiny::example(r as u32, 64), tiny::example(9 + r as u32, 64));
        let ids = [first.ids, second.ids].concat();
        let labels = [first.labels, second.labels].concat();
        let examples = [vec![1u8; 64], vec![2u8; 64]].concat();
        (ids, labels, examples)
    };
    let rows: Vec<_> = (0..b).map(row).collect();
    let batch = lora_tune::data::batch::Batch {
        input_ids: rows.iter().map(|r| r.0.clone()).collect(),
        labels: rows.iter().map(|r| r.1.clone()).collect(),
        attention_mask: rows.iter().map(|r| r.2.clone()).collect(),
        ..Default::default()
    };
    let (_, mut optimizer) = tiny::reference_optimiser(None);
    let micro = std::slice::from_ref(&batch);
    // The first step builds what later steps reuse (the rotary table, AdamW's moments).
    train_step(&mut model, micro, &mut optimizer, 1e-3, 1.0).unwrap();
    let before = ledger();
    let stats = train_step(&mut model, micro, &mut optimizer, 1e-3, 1.0).unwrap();
    let moved = ledger() - before;
    let tokens = (b * s) as u64;
    let hidden = model.config.hidden_size as u64;
    eprintln!(
        "one step of {tokens} tokens (loss {:.4}): {} uploads, {} bytes ({:.1} per token); {} downloads, {} bytes; tokens × hidden × 4 = {} bytes",
        stats.loss,
        moved.uploads,
        moved.uploaded_bytes,
        moved.uploaded_bytes as f64 / tokens as f64,
        moved.downloads,
        moved.downloaded_bytes,
        tokens * hidden * 4
    );
    assert!(moved.uploads > 0, "the batch itself must go up");
    assert!(
        moved.uploaded_bytes <= 64 * tokens + 4096,
        "{} bytes up for {tokens} tokens",
        moved.uploaded_bytes
    );
    assert!(
        moved.downloads <= 8 && moved.downloaded_bytes <= 256,
        "{moved:?}"
    );
}

/// Training attention's own kernels (forward, dq, dk/dv; the mask computed from per-token codes)
/// give flex's materialised layout's output and gradients (≤ 1e-5 of each tensor's largest
/// entry) with packed examples, right and left padding (padding queries with and without a real
/// key in reach), a sliding window, grouped key/value heads, and several query cubes and key
/// tiles. dk and dv come back at the key/value heads, summed over their query heads.
#[test]
fn training_attention_kernels_equal_the_materialised_oracle_on_wgpu() {
    use burn::tensor::{Distribution, TensorData};
    use lora_tune::kernels::attention_forward;
    use lora_tune::model::attention::MaskSource;
    use lora_tune::train::derived::attention::{Mask, backward, forward, masked_score};
    let Some(device) = wgpu() else { return };
    let flex = Device::flex();
    for (s, d, h, kv, window) in [
        (150, 16, 4, 2, None),
        (150, 16, 2, 2, Some(40)),
        (70, 64, 3, 1, None),
    ] {
        // Row 0: two packed examples then padding; row 1: left padding then one example.
        let rows: Vec<Vec<u8>> = vec![
            (0..s)
                .map(|j| match j {
                    _ if j < s / 3 => 1,
                    _ if j + 20 < s => 2,
                    _ => 0,
                })
                .collect(),
            (0..s).map(|j| u8::from(j >= 17)).collect(),
        ];
        let b = rows.len();
        let normal = |shape: [usize; 4]| {
            let t = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &flex);
            t.into_data()
        };
        let (q, k, v, dout) = (
            normal([b, h, s, d]),
            normal([b, kv, s, d]),
            normal([b, kv, s, d]),
            normal([b, h, s, d]),
        );
        let run = |on: &Device| {
            let up = |x: &TensorData| Tensor::<4>::from_data(x.clone(), on);
            let source = MaskSource::new(&rows, s, 0, window, on);
            let mask = Mask::Source(&source);
            let (out, core) = forward(up(&q), up(&k), up(&v), mask, masked_score(true), None, true);
            let (dq, dk, dv) = backward(core, up(&dout), out.clone(), mask);
            [out, dq, dk, dv].map(|t| tiny::values(&t))
        };
        let source = MaskSource::new(&rows, s, 0, window, &device);
        let up = |x: &TensorData| Tensor::<4>::from_data(x.clone(), &device);
        let codes = source.codes().expect("codes on wgpu");
        assert!(attention_forward(&up(&q), &up(&k), &up(&v), &codes).is_some());
        let (want, got) = (run(&flex), run(&device));
        for (name, g, w) in ["out", "dq", "dk", "dv"]
            .into_iter()
            .zip(got)
            .zip(want)
            .map(|((n, g), w)| (n, g, w))
        {
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = g
                .iter()
                .zip(&w)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!(
                "s {s}, d {d}, h {h}/{kv}, window {window:?}: {name} {:.2e}",
                worst / scale
            );
            assert!(
                worst <= 1e-5 * scale,
                "s {s}, d {d}, h {h}/{kv}, window {window:?}: {name} {}",
                worst / scale
            );
        }
    }
}

const MEMORY_CHILD: &str = "LORA_TUNE_WGPU_ATTENTION_MEMORY_CHILD";

/// One layer's training attention on the device through our kernels — forward keeping what
/// backward needs, then backward — reserves device memory linearly in the sequence from 256
/// to 2048 tokens: each S runs in a child process of this test binary, which reports its
/// allocator's reserved bytes (wgpu's pools; a [4, S, S] f32 buffer is 67 MB at 2048).
#[test]
fn attention_kernels_device_memory_grows_linearly_in_the_sequence() {
    use burn::tensor::Distribution;
    use lora_tune::model::attention::MaskSource;
    use lora_tune::train::derived::attention::{Mask, backward, forward, masked_score};
    const LENGTHS: [usize; 4] = [256, 512, 1024, 2048];
    let Some(device) = wgpu() else { return };
    if let Ok(s) = std::env::var(MEMORY_CHILD) {
        let s: usize = s.parse().unwrap();
        let (h, kv, d) = (4, 2, 16);
        let normal =
            |heads| Tensor::<4>::random([1, heads, s, d], Distribution::Normal(0.0, 0.5), &device);
        let (q, k, v, dout) = (normal(h), normal(kv), normal(kv), normal(h));
        let row: Vec<u8> = (0..s)
            .map(|j| match j {
                j if j < s / 3 => 1,
                j if j < s - 8 => 2,
                _ => 0,
            })
            .collect();
        let source = MaskSource::new(&[row], s, 0, None, &device);
        let mask = Mask::Source(&source);
        let (out, core) = forward(q, k, v, mask, masked_score(true), None, true);
        let (dq, dk, dv) = backward(core, dout, out.clone(), mask);
        let total: f32 = (out.sum() + dq.sum() + dk.sum() + dv.sum()).into_scalar();
        assert!(total.is_finite(), "{total}");
        let usage = device.memory_pool_usage().expect("wgpu reports its pools");
        println!("\nreserved {}", usage.bytes_reserved);
        return;
    }
    let test = "attention_kernels_device_memory_grows_linearly_in_the_sequence";
    let reserved =
        |s: usize| common::figure_from_child(test, MEMORY_CHILD, &s.to_string(), "reserved");
    let bytes: Vec<u64> = LENGTHS.iter().map(|&s| reserved(s)).collect();
    let shown: Vec<String> = (LENGTHS.iter().zip(&bytes))
        .map(|(s, b)| format!("S {s}: {:.2} MB", *b as f64 / 1e6))
        .collect();
    eprintln!("device memory reserved: {}", shown.join(", "));
    // The pools reserve in pages of a few MB, so the figures move in steps; what matters is
    // that 256 → 2048 tokens adds far less than one [4, 2048, 2048] f32 score buffer (67 MB),
    // which any s × t layout keeps at least once.
    let added = bytes[3].saturating_sub(bytes[0]);
    let scores = (4 * 2048 * 2048 * 4) as u64;
    assert!(
        added * 4 < scores,
        "{:.1} MB added from 256 to 2048 tokens",
        added as f64 / 1e6
    );
}

/// Golden: tools/reference/moe_train.py. Qwen3-MoE's ten PEFT steps with adapters on every
/// expert on wgpu: the routes come down (n·k integers per layer), the grouped expert products,
/// the scatter back and the routing weights' backward run on the device; and the same with the
/// router load-balancing loss at 0.1 (moe_train.py qwen3-moe-aux), its expert counts scattered
/// on the device too.
#[test]
fn ten_mixture_of_experts_steps_equal_peft_on_wgpu() {
    let Some(device) = wgpu() else { return };
    let (name, fixtures) = ("tiny-qwen3-moe", "lora/train-qwen3-moe");
    tiny::assert_ten_steps_equal_peft_on(name, fixtures, &device, "wgpu, qwen3-moe", false);
    let run = tiny::PeftRun {
        fixtures: "lora/train-qwen3-moe-aux",
        init: "lora/train-qwen3-moe-aux",
        loraplus_lr_ratio: None,
        use_dora: false,
        router_aux_loss_coef: 0.1,
    };
    let what = "wgpu, qwen3-moe with the router loss";
    tiny::assert_ten_steps_equal_peft_run(name, &run, &device, what, false);
}

/// A DPO micro-batch (TRL's first, tests/fixtures/lora/dpo, with its reference log-probs) on
/// wgpu: the preference loss and every adapter's gradient equal flex's.
#[test]
fn dpo_gradients_on_wgpu_equal_flex() {
    let Some(device) = wgpu() else { return };
    let batch = tiny::trl_preference_batches("dpo").remove(0);
    let grads = |device: &Device| {
        let mut model = tiny::adapted_on(&tiny::fixture("lora/train/final.safetensors"), device);
        model.preference = Some(lora_tune::train::preference::PreferenceLoss {
            method: lora_tune::train::preference::Method::Dpo,
            beta: 0.1,
            simpo_gamma: 0.5,
            sft_weight: 0.0,
        });
        let (loss, grads) = accumulate_gradients(&mut model, std::slice::from_ref(&batch)).unwrap();
        let values: Vec<Vec<f32>> = grads
            .iter()
            .map(|g: &Tensor<2>| host(g).unwrap().values)
            .collect();
        (loss, values)
    };
    let (flex_loss, flex) = grads(&select(DeviceChoice::Cpu).unwrap().device);
    let (wgpu_loss, got) = grads(&device);
    let worst = worst_relative(&got, &flex);
    eprintln!("DPO loss flex {flex_loss} wgpu {wgpu_loss}; gradients worst relative {worst:e}");
    assert!((flex_loss - wgpu_loss).abs() / flex_loss < 1e-5);
    assert!(worst < 1e-4, "{worst}");
}
