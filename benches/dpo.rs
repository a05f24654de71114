//! DPO throughput and memory on SmolLM2-135M-Instruct (the pinned GGUF, f32) on the CPU: 4
//! pairs a step, each sequence 256 tokens (a 128-token prompt shared by the pair, a 128-token
//! completion each), LoRA r=8 α=16 on the seven Llama targets, dropout 0 (TRL's DPOConfig
//! turns dropout off by default), AdamW lr 5e-6, β 0.1. The reference log-probabilities (the
//! base, adapters off) are computed once, as a run does, and timed apart; then one warm-up and
//! 5 timed steps. Prints one JSON object (pairs/s, s/step, the reference pass, peak RSS). Not a
//! test. Run: cargo bench --bench dpo [-- with-reference] — `with-reference` then runs
//! tools/reference/bench_trl_dpo.py (TRL's DPOTrainer with a PEFT model and no ref_model, the
//! same ids, 2 threads; with $PYTHON, default python3) and prints both with their ratios.

#[path = "../tests/common/artifacts.rs"]
mod artifacts;

use std::time::Instant;

use lora_tune::data::batch::{Batch, IGNORE, Pairs};
use lora_tune::data::dataset::{Dataset, Layout};
use lora_tune::data::encode::Encoded;
use lora_tune::device::{DeviceChoice, select};
use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::adapted::AdaptedModel;
use lora_tune::recipe::LoraSection;
use lora_tune::train::metrics::peak_rss_bytes;
use lora_tune::train::optim::{AdamW, AdamWConfig};
use lora_tune::train::preference::{Method, PreferenceLoss, compute_reference};
use lora_tune::train::step::train_step;

const PAIRS: usize = 4;
const PROMPT: usize = 128;
const LEN: usize = 256;

/// The bench's token ids: row r of 2·PAIRS (chosen rows, then rejected), the pair's prompt
/// then its own completion (bench_trl_dpo.py builds the same).
fn row(r: usize) -> Vec<u32> {
    let id = |r: usize, j: usize| ((r * 7919 + j * 104_729) % 49_000 + 100) as u32;
    (0..LEN)
        .map(|j| {
            if j < PROMPT {
                id(r % PAIRS, j)
            } else {
                id(r, j)
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    lora_tune::allocator::keep_freed_pages(); // as the binary does
    let with_reference = std::env::args().any(|a| a == "with-reference");
    let files = artifacts::smollm2();
    let device = select(DeviceChoice::Cpu)?.device;
    let mut model = lora_tune::model::load(&files, &device, Default::default())?;
    let lora = LoraSection {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        ..LoraSection::default()
    };
    let adapted = select_targets(&model.config.linear_sites(), &lora)?;
    model
        .attach_adapters(&adapted, &lora, 42)
        .map_err(anyhow::Error::msg)?;
    model.set_training(true);
    model.preference = Some(PreferenceLoss {
        method: Method::Dpo,
        beta: 0.1,
        simpo_gamma: 0.5,
        sft_weight: 0.0,
    });
    let encoded = |r: usize| {
        let ids = row(r);
        let labels = (ids.iter().enumerate())
            .map(|(j, &t)| if j < PROMPT { IGNORE } else { i64::from(t) })
            .collect();
        Encoded {
            ids,
            labels,
            class: None,
            rejected: None,
        }
    };
    let examples = (0..PAIRS)
        .map(|i| Encoded {
            rejected: Some(Box::new(encoded(PAIRS + i))),
            ..encoded(i)
        })
        .collect();
    let layout = Layout {
        pad_id: 0,
        pad_to_multiple_of: 1,
        max_len: LEN,
        pack_to: None,
    };
    let mut data = Dataset::new(
        std::path::Path::new("bench"),
        examples,
        Vec::new(),
        0,
        layout,
    );
    let t = Instant::now();
    compute_reference(&mut model, &mut data, PAIRS, true)?;
    let reference_s = t.elapsed().as_secs_f64();
    let batch: Batch = data.in_order(PAIRS).remove(0);
    anyhow::ensure!(batch.pairs.as_ref().map(|p: &Pairs| p.count) == Some(PAIRS));
    let mut optimizer = AdamW::new(AdamWConfig {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
        loraplus_lr_ratio: None,
    });
    let mut times = Vec::new();
    for step in 0..6 {
        let t = Instant::now();
        let stats = train_step(
            &mut model,
            std::slice::from_ref(&batch),
            &mut optimizer,
            5e-6,
            1.0,
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
    let ours = serde_json::json!({
        "workload": format!("DPO, {PAIRS} pairs x {LEN} tokens ({PROMPT}-token prompts), r=8 on 7 targets"),
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (dequantised to f32)",
        "reference_pass_s": reference_s,
        "s_per_step_min": times[0],
        "s_per_step_median": median,
        "pairs_per_s": PAIRS as f64 / median,
        "peak_rss_gb": peak_rss_bytes().map(|b| b as f64 / 1e9),
    });
    if !with_reference {
        println!("{ours}");
        return Ok(());
    }
    let gguf_dir = files.path().parent().unwrap_or(files.path()).to_path_buf();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tools/reference/bench_trl_dpo.py"
    );
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(&gguf_dir)
        .output()?;
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
            "pairs_per_s_ratio": ratio("pairs_per_s"),
            "peak_rss_ratio": ratio("peak_rss_gb"),
        })
    );
    Ok(())
}
