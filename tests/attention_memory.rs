//! Training attention's tiled layout (the one GPU backends run) keeps no S×S buffer: one layer's
//! attention — forward keeping what backward needs, then backward — grows linearly in S from
//! 256 to 2048 tokens, while the materialised layout (the oracle) grows quadratically, which
//! shows the measurement can tell them apart.
//!
//! Measured as the peak resident memory (VmHWM) of a child process of this test binary per
//! (layout, S), on flex, which allocates each tensor as it is computed: the same code the GPU
//! runs (`forward_tiled` is called by name). Not on llvmpipe: there cubecl's fused-matmul
//! autotune compiles candidates for over 6 s from S = 512 on, and wgpu's GL backend then panics
//! on its 6-second context-lock timeout; a card's pool figures come from benches/gpu.

mod common;

use burn::tensor::{Device, Distribution, Tensor};
use lora_tune::model::attention::MaskSource;
use lora_tune::train::derived::attention::{Mask, backward, forward_materialised, forward_tiled};

const CHILD: &str = "LORA_TUNE_ATTENTION_MEMORY_CHILD";
const LENGTHS: [usize; 4] = [256, 512, 1024, 2048];
const HEADS: usize = 4;
const HEAD_DIM: usize = 16;

/// In a child: one layer's attention at `s` tokens; prints `peak <bytes>`.
fn measure(layout: &str, s: usize) {
    let device = Device::flex();
    let normal = |seed| {
        Tensor::<4>::random(
            [1, HEADS, s, HEAD_DIM],
            Distribution::Normal(0.0, seed),
            &device,
        )
    };
    let (q, k, v, dout) = (normal(0.1), normal(0.2), normal(0.3), normal(0.4));
    // Two packed examples and a little padding: the decoder's mask, built on the device.
    let row: Vec<u8> = (0..s)
        .map(|j| match j {
            j if j < s / 3 => 1,
            j if j < s - 8 => 2,
            _ => 0,
        })
        .collect();
    let source = MaskSource::new(&[row], s, 0, None, &device);
    let mask = Mask::Source(&source);
    let (out, core) = match layout {
        "tiled" => forward_tiled(q, k, v, mask, f32::MIN, true),
        _ => forward_materialised(
            q,
            k,
            v,
            source.full().expand([1, HEADS, s, s]),
            f32::MIN,
            None,
        ),
    };
    let (dq, dk, dv) = backward(core, dout, out.clone(), mask);
    let total = out.sum() + dq.sum() + dk.sum() + dv.sum();
    let total: f32 = total.into_scalar();
    assert!(total.is_finite(), "{layout} at {s}: {total}");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap();
    let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap();
    // On its own line: the harness prints the test's name without a newline before it.
    println!("\npeak {}", kb * 1024);
}

fn peak(layout: &str, s: usize) -> u64 {
    let test = "attention_memory_grows_linearly_in_the_sequence";
    common::figure_from_child(test, CHILD, &format!("{layout}:{s}"), "peak")
}

#[test]
fn attention_memory_grows_linearly_in_the_sequence() {
    if let Ok(child) = std::env::var(CHILD) {
        let (layout, s) = child.split_once(':').unwrap();
        return measure(layout, s.parse().unwrap());
    }
    let mb = |b: u64| b as f64 / 1e6;
    let mut figures = Vec::new();
    for layout in ["tiled", "materialised"] {
        let bytes: Vec<u64> = LENGTHS.iter().map(|&s| peak(layout, s)).collect();
        let shown: Vec<String> = (LENGTHS.iter().zip(&bytes))
            .map(|(s, b)| format!("S {s}: {:.1} MB", mb(*b)))
            .collect();
        eprintln!("{layout}: {}", shown.join(", "));
        figures.push(bytes);
    }
    // From 1024 to 2048 tokens: linear growth at most doubles what the step adds; a [s, s]
    // buffer quadruples it. Every figure carries the process's fixed costs (code, allocator).
    let growth = |b: &[u64]| (b[3] - b[2]) as f64 / (b[2] - b[1]).max(1) as f64;
    let (tiled, materialised) = (growth(&figures[0]), growth(&figures[1]));
    eprintln!("growth 1024→2048 over 512→1024: tiled {tiled:.2}, materialised {materialised:.2}");
    assert!(
        tiled <= 2.5,
        "tiled attention grows faster than linearly: {tiled:.2}"
    );
    assert!(
        materialised >= 3.0,
        "the oracle should grow quadratically: {materialised:.2}"
    );
    let added = |b: &[u64]| b[3] - b[0];
    assert!(
        added(&figures[0]) * 3 < added(&figures[1]),
        "from 256 to 2048 tokens the tiled layout should add far less than the materialised one"
    );
}
