//! SmolLM2-135M-Instruct (the pinned GGUF) on the CPU backend: load time, forward (prefill)
//! tokens/s, evaluation tokens/s (the loss of W1's 4×256 batch, every next token labelled, through
//! the model with r=8 adapters on the seven Llama targets, no gradient, as `lora-tune eval` and
//! a run's evaluation compute it) and KV-cache decode tokens/s, printed as one JSON object.
//! Not a test. Run: cargo bench --bench forward; the PyTorch side:
//! tools/reference/bench_forward.py GGUF_DIR.

#[path = "../tests/common/artifacts.rs"]
mod artifacts;

use std::time::Instant;

use burn::tensor::Tensor;
use lora_tune::data::batch::Batch;
use lora_tune::device::{DeviceChoice, select};
use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::model::generate::{Sampling, generate};
use lora_tune::recipe::LoraSection;
use lora_tune::train::loss::Objective;

fn main() -> anyhow::Result<()> {
    lora_tune::allocator::keep_freed_pages(); // as the binary does
    let files = artifacts::smollm2();
    let device = select(DeviceChoice::Cpu)?.device;

    let t = Instant::now();
    let tok = lora_tune::model::tokenizer_of(&files)?;
    let model = lora_tune::model::load(&files, &device, lora_tune::model::BaseStorage::default())?;
    let load_s = t.elapsed().as_secs_f64();

    // Prefill: batch 1 × 256 tokens of real text, 5 timed runs after one warm-up.
    let text = "Customer support tickets need fast, accurate answers. ".repeat(40);
    let mut ids = tok.encode(&text, true).map_err(anyhow::Error::msg)?;
    ids.truncate(256);
    let mut times = Vec::new();
    for run in 0..6 {
        let t = Instant::now();
        let logits: Tensor<3> = model.forward(std::slice::from_ref(&ids), &[vec![1; ids.len()]]);
        let _ = logits.into_data(); // wait for the result
        if run > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];

    // Decode: 64 greedy tokens after a 16-token prompt, over the KV cache.
    let prompt = &ids[..16];
    let t = Instant::now();
    let new =
        generate(&model, prompt, 64, &[], Sampling::GREEDY, |_| {}).map_err(anyhow::Error::msg)?;
    let decode_s = t.elapsed().as_secs_f64();

    // Evaluation: W1's token ids (benches/train.rs), 4 × 256, through the adapted model.
    let mut adapted = model.clone();
    let lora = LoraSection {
        rank: 8,
        alpha: 16.0,
        ..LoraSection::default()
    };
    let sites = select_targets(&adapted.config.linear_sites(), &lora)?;
    adapted
        .attach_adapters(&sites, &lora, 42)
        .map_err(anyhow::Error::msg)?;
    let rows: Vec<Vec<u32>> = (0..4)
        .map(|r| {
            (0..256)
                .map(|j| ((r * 7919 + j * 104_729) % 49_000 + 100) as u32)
                .collect()
        })
        .collect();
    // Every next token labelled, as evaluation of a plain-text set scores it.
    let batch = Batch {
        labels: rows
            .iter()
            .map(|r| r.iter().map(|&t| i64::from(t)).collect())
            .collect(),
        attention_mask: vec![vec![1; 256]; 4],
        input_ids: rows,
        ..Batch::default()
    };
    adapted.set_training(false);
    let mut eval_times = Vec::new();
    for run in 0..4 {
        let t = Instant::now();
        let _ = adapted.loss_sum(&batch).expect("labelled").into_data();
        if run > 0 {
            eval_times.push(t.elapsed().as_secs_f64());
        }
    }
    eval_times.sort_by(f64::total_cmp);
    let eval_median = eval_times[eval_times.len() / 2];

    println!(
        "{}",
        serde_json::json!({
            "model": "SmolLM2-135M-Instruct Q4_1 GGUF (dequantised to f32)",
            "device": "cpu (flex)",
            "load_s": load_s,
            "forward_tokens": ids.len(),
            "forward_s_min": times[0],
            "forward_s_median": median,
            "forward_tokens_per_s": ids.len() as f64 / median,
            "eval_tokens": 4 * 256,
            "eval_s_median": eval_median,
            "eval_tokens_per_s": 1024.0 / eval_median,
            "decode_tokens": new.len(),
            "decode_tokens_per_s": new.len() as f64 / decode_s,
        })
    );
    Ok(())
}
