//! `lora-tune RECIPE`: prepare, start the device, train, export.

use std::path::Path;

use super::NotYetImplemented;
use super::plan::prepare;
use crate::device::{self, DeviceChoice};

pub fn run(recipe: &Path, device: DeviceChoice, resume: Option<&Path>) -> anyhow::Result<()> {
    prepare(recipe)?;
    let selected = device::select(device)?;
    println!("device: {} ({})", selected.name, selected.why);
    if let Some(dir) = resume {
        println!("resume: {}", dir.display());
    }
    Err(NotYetImplemented {
        command: "train",
        pending: "the Llama model (issue #3) and the LoRA training loop (issue #4) have not landed; everything above is resolved and checked",
    }
    .into())
}
