//! `lora-tune plan RECIPE`: validate, resolve the model, encode the data and print what a run
//! would do — parameters, data statistics and the predicted peak memory — loading no weights.

use std::path::Path;

use super::session;
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
    let Some((estimate, shape)) = loaded.prepared.memory_estimate(&loaded.train) else {
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
    Ok(())
}
