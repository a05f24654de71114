//! `lora-tune plan RECIPE`: validate, resolve the model, encode the data and print what a run
//! would do — parameters, data statistics and the predicted peak memory — loading no weights.

use std::path::Path;

use super::session;
use crate::dtype::{ComputeDtype, Dtype};
use crate::memory;

/// `ranks`: the data-parallel job to describe (1: a single process).
pub fn run(recipe: &Path, ranks: usize) -> anyhow::Result<()> {
    let loaded = session::load(recipe, None)?;
    if ranks > 1 {
        println!(
            "       {}",
            session::data_parallel_line(&loaded.prepared.plan, ranks)
        );
    }
    let prepared = &loaded.prepared;
    // On the CPU `auto` products are f32 (`device::compute_dtype`).
    let cpu_products = prepared.plan.compute_dtype.half().unwrap_or(Dtype::F32);
    let Some((estimate, shape)) = prepared.memory_estimate(&loaded.train, true, cpu_products)
    else {
        println!(
            "memory: not predicted for BERT encoders yet (the formula is fitted to Llama-family decoders)"
        );
        return Ok(());
    };
    let per_rank = if ranks > 1 {
        " per rank (each loads the model)"
    } else {
        ""
    };
    println!("memory: peak ≈ {}{per_rank}", estimate.render(shape));
    if let Some(available) = memory::available_bytes() {
        let verdict = if estimate.total() > available {
            "does NOT fit on the CPU: a run is refused unless --no-memory-check"
        } else {
            "fits on the CPU"
        };
        println!("        {} available now: {verdict}", memory::gb(available));
    }
    // A GPU's `auto` takes bf16 where the backend has bf16 arithmetic (CUDA, Metal), f16 (the
    // same size) on Vulkan with f16 cooperative matrices, f32 elsewhere (`device::compute_dtype`);
    // an explicit dtype is what it says.
    let gpu = match prepared.plan.compute_dtype.half() {
        Some(half) => vec![(half, "")],
        None if prepared.plan.compute_dtype == ComputeDtype::F32 => vec![(Dtype::F32, "")],
        None => vec![
            (
                Dtype::Bf16,
                " (auto on CUDA, Metal; f16, the same size, on Vulkan with f16 tensor cores)",
            ),
            (
                Dtype::F32,
                " (auto elsewhere: wgpu's GL, Vulkan without f16 cooperative matrices)",
            ),
        ],
    };
    for (products, which) in gpu {
        if let Some((estimate, shape)) = prepared.memory_estimate(&loaded.train, false, products) {
            println!(
                "        on a GPU with {} products{which}: device memory ≈ {}",
                products.name(),
                estimate.render(shape)
            );
        }
    }
    println!(
        "        (the GPU figures are the same formula without the host's load and widening terms; not yet checked on a GPU)"
    );
    Ok(())
}
