//! The training loop equals PEFT step by step on the tiny random Llama: 10 AdamW steps, each
//! accumulating two micro-batches of different padded lengths with the loss normalised by the
//! step's labelled tokens, global-norm clipping that binds, and a linear warmup schedule.
//! Per-step loss and gradient norm within 1e-4 relative, final A/B within 1e-4; the frozen base
//! is bit-identical afterwards. Golden: tools/reference/lora_train.py (transformers 5.23.0,
//! peft 0.21.2, torch 2.15.0).

use std::path::Path;

use burn::tensor::{Device, Tensor};
use lora_tune::data::batch::Batch;
use lora_tune::device::{DeviceChoice, select};
use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::adapters::host;
use lora_tune::model::config::LlamaConfig;
use lora_tune::model::llama::Llama;
use lora_tune::recipe::{LoraSection, Schedule};
use lora_tune::train::optim::{AdamW, AdamWConfig};
use lora_tune::train::schedule::LrSchedule;
use lora_tune::train::step::train_step;
use lora_tune::weights::host::HostTensors;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn cpu() -> Device {
    select(DeviceChoice::Cpu).unwrap().device
}

/// tiny-llama with r=4, α=8, no dropout on the seven Llama targets, A/B from `init`.
fn adapted_tiny_llama(init: &Path) -> Llama {
    let dir = Path::new(ROOT).join("tests/fixtures/llama/tiny-llama");
    let config = LlamaConfig::from_json_file(&dir.join("config.json")).unwrap();
    let lora = LoraSection {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraSection::default()
    };
    let adapted = select_targets(&config.linear_sites(), &lora).unwrap();
    let mut model = Llama::load(config, HostTensors::read(&dir).unwrap(), &cpu()).unwrap();
    model.attach_adapters(&adapted, &lora, 0).unwrap();
    model.load_adapter_weights(init).unwrap();
    model
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    host(t).unwrap().values
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

#[test]
fn ten_steps_with_accumulation_and_clipping_equal_peft() {
    let fixtures = Path::new(ROOT).join("tests/fixtures/lora/train");
    let mut model = adapted_tiny_llama(&fixtures.join("init.safetensors"));
    let base_before: Vec<Vec<f32>> = model
        .linears_mut()
        .iter()
        .map(|(_, l)| values(&l.weight))
        .collect();
    let embed_before = values(&model.embed_tokens);

    let batches: Vec<Batch> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("batches.json")).unwrap())
            .unwrap();
    let trajectory: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("trajectory.json")).unwrap())
            .unwrap();
    let schedule = LrSchedule {
        kind: Schedule::Linear,
        peak: 5e-3,
        warmup_steps: 2,
        total_steps: 10,
    };
    let mut optimizer = AdamW::new(AdamWConfig {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
    });
    for (step, want) in trajectory.iter().enumerate() {
        let micro = &batches[step * 2..step * 2 + 2];
        let lr = schedule.lr(step as u64);
        assert!(rel(lr, want["lr"].as_f64().unwrap()) < 1e-12 || lr == 0.0);
        let stats = train_step(&mut model, micro, &mut optimizer, lr, 0.05).unwrap();
        eprintln!(
            "step {}: loss {:.7} (PEFT {}), grad norm {:.6} (PEFT {})",
            step + 1,
            stats.loss,
            want["loss"],
            stats.grad_norm,
            want["grad_norm"]
        );
        let (loss, norm) = (
            want["loss"].as_f64().unwrap(),
            want["grad_norm"].as_f64().unwrap(),
        );
        assert_eq!(stats.loss_tokens as u64, want["tokens"].as_u64().unwrap());
        assert!(
            rel(stats.loss, loss) < 1e-4,
            "step {}: loss {} vs PEFT {loss}",
            step + 1,
            stats.loss
        );
        assert!(
            rel(stats.grad_norm, norm) < 1e-4,
            "step {}: grad norm {} vs PEFT {norm}",
            step + 1,
            stats.grad_norm
        );
    }

    let want = HostTensors::read(&fixtures.join("final.safetensors")).unwrap();
    let mut want = want;
    let got = model.adapter_tensors().unwrap();
    let (mut worst, mut largest_b) = (0.0f32, 0.0f32);
    for (key, t) in &got {
        let w = want.take(key, &t.shape).unwrap();
        let scale = w.values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if key.contains("lora_B") {
            largest_b = largest_b.max(scale);
        }
        for (a, b) in t.values.iter().zip(&w.values) {
            worst = worst.max((a - b).abs() / scale.max(1e-6));
        }
    }
    want.finish().unwrap();
    eprintln!("final A/B: worst relative difference {worst:e}; largest |B| {largest_b}");
    // B starts at zero: training must have moved it, or the comparison proves nothing.
    assert!(largest_b > 1e-3, "B barely moved ({largest_b})");
    assert!(
        worst < 1e-4,
        "final adapters differ from PEFT's by {worst} (relative to each tensor's max)"
    );

    let base_after: Vec<Vec<f32>> = model
        .linears_mut()
        .iter()
        .map(|(_, l)| values(&l.weight))
        .collect();
    assert!(base_before == base_after, "a frozen base weight changed");
    assert!(
        embed_before == values(&model.embed_tokens),
        "the embedding changed"
    );
}
