//! LoRA training throughput on SmolLM2-135M-Instruct (the pinned GGUF, f32) on the CPU backend:
//! workload W1 (batch 4×256) or W2 (`-- w2`: batch 1×1024), r=8 α=16 dropout 0.05 on the seven
//! Llama targets, AdamW lr 2e-4. One warm-up step, then 5 timed steps; prints one JSON object
//! (tokens/s, s/step min and median, FLOP/s at 6·N_base… see below, peak RSS). Not a test.
//! Run: cargo bench --bench train [-- w2] [chat] [ckpt [keepq|bf16]] [dora] [with-reference]
//! [model=HF_DIR] [device=cpu|wgpu|vulkan|cuda] [compute=f32|bf16|f16|auto] [quantize=q4_0|…]
//! [dropout=P] [attention=tiles] (the last six for the GPU benchmark, benches/gpu/run.sh); the
//! PEFT side: tools/reference/bench_peft.py [w2] [dora]. `dora` trains DoRA adapters. `chat` labels only the second half of each row, as
//! supervised chat data does; `ckpt` trains with gradient checkpointing (block recompute);
//! `keepq` keeps the GGUF's Q4_1 linear weights in their blocks (`model.keep_quantized`), `bf16`
//! stores them in bf16 (`model.dtype`).
//! The bench first measures the backend's own sgemm peak (1024³, the matmul every linear layer
//! runs) and reports utilisation against it. `with-reference` then runs the PEFT script on the
//! same GGUF (with $PYTHON, default python3, which needs torch, transformers and peft) and
//! prints both results with their ratios.

#[path = "../tests/common/artifacts.rs"]
mod artifacts;

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

use lora_tune::data::batch::Batch;
use lora_tune::device::{DeviceChoice, compute_dtype, select};
use lora_tune::dtype::{ComputeDtype, Dtype};
use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::recipe::{LoraSection, Quantize};
use lora_tune::train::loss_scale::LossScale;
use lora_tune::train::metrics::peak_rss_bytes;
use lora_tune::train::optim::{AdamW, AdamWConfig};
use lora_tune::train::step::{Share, train_step_share};

fn main() -> anyhow::Result<()> {
    lora_tune::allocator::keep_freed_pages(); // as the binary does
    let w2 = std::env::args().any(|a| a == "w2");
    // `chat`: like supervised chat data, only the second half of each row (the answer) is
    // labelled; the loss computes logits at labelled positions only.
    let chat = std::env::args().any(|a| a == "chat");
    let checkpointing = std::env::args().any(|a| a == "ckpt");
    let keep_quantized = std::env::args().any(|a| a == "keepq");
    let bf16 = std::env::args().any(|a| a == "bf16");
    let with_reference = std::env::args().any(|a| a == "with-reference");
    let dora = std::env::args().any(|a| a == "dora");
    // The GPU benchmark's settings (benches/gpu/run.sh): another model directory, device, product
    // dtype, and a base quantised at load.
    let setting = |key: &str| {
        std::env::args().find_map(|a| a.strip_prefix(&format!("{key}=")).map(str::to_owned))
    };
    let (rows, len) = if w2 { (1, 1024) } else { (4, 256) };
    let files = match setting("model") {
        Some(dir) => artifacts::fetch(&dir, None),
        None => artifacts::smollm2(),
    };
    let choice: DeviceChoice = setting("device").as_deref().unwrap_or("cpu").parse()?;
    let selected = select(choice)?;
    let device = selected.device.clone();
    // As a run resolves `model.compute_dtype`: bf16 is refused where the device has none.
    let compute = match setting("compute").as_deref() {
        None | Some("f32") => ComputeDtype::F32,
        Some("bf16") => ComputeDtype::Bf16,
        Some("f16") => ComputeDtype::F16,
        Some("auto") => ComputeDtype::Auto,
        Some(other) => anyhow::bail!("compute={other}: f32, bf16, f16 or auto"),
    };
    let (compute, _) = compute_dtype(&selected, compute)?;
    let quantize = match setting("quantize") {
        Some(q) => Some(serde_json::from_value::<Quantize>(serde_json::json!(q))?.format()),
        None => None,
    };
    let peak = sgemm_gflops(&device);
    let mut model = lora_tune::model::load(
        &files,
        &device,
        lora_tune::model::BaseStorage {
            keep_quantized,
            quantize,
            // Half products take their weights in their own type, as a run loads them.
            dense: match compute {
                Dtype::F32 if bf16 => Dtype::Bf16,
                dtype => dtype,
            },
            quantize_embeddings: None,
        },
    )?;
    model.compute_in(compute);
    // attention=tiles: training attention as tiles of autotuned matmuls instead of our kernels.
    lora_tune::train::derived::attention::use_kernels(
        setting("attention").as_deref() != Some("tiles"),
    );
    // dropout=0 exposes what dropout still costs (benches/gpu/run.sh).
    let dropout = match setting("dropout") {
        Some(p) => p.parse()?,
        None => 0.05,
    };
    let lora = LoraSection {
        rank: 8,
        alpha: 16.0,
        dropout,
        use_dora: dora,
        ..LoraSection::default()
    };
    let adapted = select_targets(&model.config.linear_sites(), &lora)?;
    model
        .attach_adapters(&adapted, &lora, 42)
        .map_err(anyhow::Error::msg)?;
    model.set_training(true);
    model.gradient_checkpointing = checkpointing;
    let trainable: u64 = adapted.iter().map(|a| a.parameters()).sum();
    let base = model.config.parameter_count();

    // Deterministic token ids across the vocabulary, every position labelled (or, with `chat`,
    // the second half).
    let ids: Vec<Vec<u32>> = (0..rows)
        .map(|r| {
            (0..len)
                .map(|j| ((r * 7919 + j * 104_729) % 49_000 + 100) as u32)
                .collect()
        })
        .collect();
    anyhow::ensure!(
        model.config.vocab_size >= 49_100,
        "the bench's token ids need a vocabulary of at least 49,100 (SmolLM2's 49,152)"
    );
    let batch = Batch {
        labels: ids
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(j, &t)| {
                        if chat && j < len / 2 {
                            lora_tune::data::batch::IGNORE
                        } else {
                            i64::from(t)
                        }
                    })
                    .collect()
            })
            .collect(),
        attention_mask: vec![vec![1; len]; rows],
        input_ids: ids,
        ..Batch::default()
    };
    let mut optimizer = AdamW::new(AdamWConfig {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
        loraplus_lr_ratio: None,
    });
    // f16 products train with the loss scaling a run does (its check and unscaling included).
    let mut loss_scale = (compute == Dtype::F16).then(LossScale::default);
    let mut times = Vec::new();
    for step in 0..6 {
        let t = Instant::now();
        let stats = train_step_share(
            &mut model,
            std::slice::from_ref(&batch),
            Share::ALL,
            &mut optimizer,
            2e-4,
            1.0,
            loss_scale.as_mut(),
        )?;
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        eprintln!(
            "step {step}: loss {:.4} in {:.2} s",
            stats.loss,
            t.elapsed().as_secs_f64()
        );
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tokens = (rows * len) as f64;
    // Forward + backward through the frozen base ≈ 4·N FLOPs per token (no weight gradients).
    let flops = 4.0 * base as f64 * tokens / median;
    let ours = serde_json::json!({
            "workload": format!("{}{}{}", if w2 { "W2 1x1024" } else { "W1 4x256" }, if chat { ", answer half labelled" } else { "" }, if dora { " DoRA" } else { "" }),
            "gradient_checkpointing": checkpointing,
            "linear_weights_bf16": bf16,
            "model": match setting("model") {
                Some(dir) => dir,
                None if keep_quantized => "SmolLM2-135M-Instruct Q4_1 GGUF (linears kept in Q4_1 blocks, decoded per matmul)".into(),
                None => "SmolLM2-135M-Instruct Q4_1 GGUF (dequantised to f32)".into(),
            },
            "device": selected.name,
            "compute": compute.name(),
            "loss_scale": loss_scale.map(|s| s.scale),
            "lora_dropout": dropout,
            "quantize": setting("quantize"),
            "base_params": base,
            "trainable_params": trainable,
            "tokens_per_step": tokens,
            "s_per_step_min": times[0],
            "s_per_step_median": median,
            "tokens_per_s": tokens / median,
            "gflop_per_s_4n": flops / 1e9,
            "sgemm_gflop_per_s_1024": peak,
            "utilisation": flops / 1e9 / peak,
            "peak_rss_gb": peak_rss_bytes().map(|b| b as f64 / 1e9),
            // GPU backends: what their allocator holds after the steps (none on flex).
            "device_memory_reserved_gb": device.memory_pool_usage().map(|u| u.bytes_reserved as f64 / 1e9),
    });
    if !with_reference {
        println!("{ours}");
        return Ok(());
    }
    let gguf_dir = files.path().parent().unwrap_or(files.path()).to_path_buf();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/reference/bench_peft.py");
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(script).arg(&gguf_dir);
    cmd.args(w2.then_some("w2")).args(dora.then_some("dora"));
    cmd.args(setting("model").map(|dir| format!("model={dir}")));
    cmd.args(setting("dropout").map(|p| format!("dropout={p}")));
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{python} {script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ratio = |key: &str| Some(ours[key].as_f64()? / reference[key].as_f64()?);
    println!(
        "{}",
        serde_json::json!({
            "lora_tune": ours,
            "reference": reference,
            "tokens_per_s_ratio": ratio("tokens_per_s"),
            "peak_rss_ratio": ratio("peak_rss_gb"),
        })
    );
    Ok(())
}

/// GFLOP/s of the backend's f32 matmul on 1024×1024 operands (median of 5 after a warm-up).
fn sgemm_gflops(device: &Device) -> f64 {
    let n = 1024;
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    let mut times = Vec::new();
    for run in 0..6 {
        let t = Instant::now();
        let _ = a.clone().matmul(b.clone()).into_data();
        if run > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / times[times.len() / 2] / 1e9
}
