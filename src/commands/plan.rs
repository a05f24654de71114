//! `lora-tune plan RECIPE`: validate, resolve the model, encode the data and print what a run
//! would do — parameters, data statistics and the predicted peak memory — loading no weights.

use std::path::Path;

use super::session;
use crate::memory;

pub fn run(recipe: &Path) -> anyhow::Result<()> {
    let loaded = session::load(recipe, None)?;
    let Some((estimate, shape)) = loaded.prepared.memory_estimate(&loaded.train) else {
        println!(
            "memory: not predicted for BERT encoders yet (the formula is fitted to Llama-family decoders)"
        );
        return Ok(());
    };
    println!("memory: peak ≈ {}", estimate.render(shape));
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
