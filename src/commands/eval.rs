//! `lora-tune eval RECIPE [--adapter DIR]`: loss and perplexity on the eval split (a classifier's
//! accuracy, macro-F1 and confusion matrix too), of the base model or with a trained adapter.

use std::path::Path;

use anyhow::Context;

use super::session::{self, indent};
use crate::device::DeviceChoice;
use crate::memory::MemoryCheck;
use crate::model::adapted::AdaptedModel;
use crate::peft::folder::{WEIGHTS_FILE, read_class_map};
use crate::train::checkpoint;
use crate::train::evaluate::evaluate;

pub fn run(recipe: &Path, adapter: Option<&Path>, device: DeviceChoice) -> anyhow::Result<()> {
    let loaded = session::load(recipe, Some(device))?;
    let mut model = session::open_model(&loaded, MemoryCheck::Off)?;
    let (data, which) = match &loaded.eval {
        Some(eval) => (eval, "eval split"),
        None => (&loaded.train, "train set (no eval split in the recipe)"),
    };
    match adapter {
        Some(dir) => {
            let dir = checkpoint::find(dir).unwrap_or_else(|_| dir.into());
            if let Some(labels) = &loaded.prepared.labels {
                let trained = read_class_map(&dir)
                    .with_context(|| format!("--adapter {}", dir.display()))?
                    .labels();
                anyhow::ensure!(
                    &trained == labels,
                    "--adapter {}: trained on the labels [{}], but the recipe's data has [{}]",
                    dir.display(),
                    trained.join(", "),
                    labels.join(", ")
                );
            }
            model
                .load_adapter_weights(&dir.join(WEIGHTS_FILE))
                .with_context(|| format!("--adapter {}", dir.display()))?;
            println!("adapter: {}", dir.display());
        }
        None => {
            // Fresh PiSSA / OLoRA adapters hold what the base weights lack: with them the model
            // is the base. Other inits start with B = 0; the zero scale makes that explicit.
            if !loaded.prepared.plan.lora.init.reads_base() {
                for (_, a) in model.adapters_mut() {
                    a.scale = 0.0;
                }
            }
            println!("adapter: none (base model)");
        }
    }
    let batch_size = loaded.prepared.plan.train.batch_size as usize;
    let e = evaluate(&mut model, data, batch_size)?;
    println!("eval:  {which}: {}", e.brief());
    if let Some(classes) = &e.classes {
        print!("{}", indent(&classes.render()));
    }
    Ok(())
}
