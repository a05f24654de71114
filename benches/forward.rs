//! SmolLM2-135M-Instruct (the pinned GGUF) on the CPU backend: load time, forward (prefill)
//! tokens/s and KV-cache decode tokens/s, printed as one JSON object. Not a test.
//! Run: cargo bench --bench forward

#[path = "../tests/artifacts/mod.rs"]
mod artifacts;

use std::time::Instant;

use burn::tensor::Tensor;
use lora_tune::device::{DeviceChoice, select};
use lora_tune::model::generate::{Sampling, generate};

fn main() -> anyhow::Result<()> {
    let files = artifacts::smollm2();
    let device = select(DeviceChoice::Cpu)?.device;

    let t = Instant::now();
    let (model, tok) = lora_tune::model::load(&files, &device)?;
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
            "decode_tokens": new.len(),
            "decode_tokens_per_s": new.len() as f64 / decode_s,
        })
    );
    Ok(())
}
