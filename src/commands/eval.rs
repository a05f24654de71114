//! `lora-tune eval RECIPE [--adapter DIR]`: loss and perplexity on the eval split (a classifier's
//! accuracy, macro-F1 and confusion matrix too), of the base model or with a trained adapter.

use std::path::Path;

use anyhow::Context;

use super::session::{self, indent};
use crate::device::DeviceChoice;
use crate::memory::MemoryCheck;
use crate::model::adapted::AdaptedModel;
use crate::peft::config::PeftConfig;
use crate::peft::conversion::needs_conversion;
use crate::peft::folder::{WEIGHTS_FILE, read_class_map, read_config};
use crate::train::checkpoint;
use crate::train::evaluate::evaluate;
use serde_json::json;

pub fn run(recipe: &Path, adapter: Option<&Path>, device: DeviceChoice) -> anyhow::Result<()> {
    let mut loaded = session::load(recipe, Some(device))?;
    let mut model = session::open_model(&loaded, MemoryCheck::Off)?;
    // DPO's reference comes first: the base, or the adapter the recipe starts from.
    let plan = &loaded.prepared.plan;
    if let Some(dir) = (plan.lora.init_from.as_ref()).filter(|_| plan.initial_adapter_reference()) {
        model
            .load_adapter_weights(&dir.join(WEIGHTS_FILE))
            .with_context(|| format!("lora.init_from: {}", dir.display()))?;
    }
    session::compute_references(&mut loaded, &mut model)?;
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
            same_adapters(&loaded.prepared.peft_config(), &dir)?;
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

/// `eval` puts the recipe's adapters on the model and loads the folder's tensors into them:
/// refuses a folder whose config says they differ, naming the field.
fn same_adapters(recipe: &PeftConfig, dir: &Path) -> anyhow::Result<()> {
    let folder = read_config(dir).with_context(|| format!("--adapter {}", dir.display()))?;
    let fields = [
        ("r", json!(recipe.r), json!(folder.r)),
        (
            "lora_alpha",
            json!(recipe.lora_alpha),
            json!(folder.lora_alpha),
        ),
        (
            "target_modules",
            names(&recipe.target_modules),
            names(&folder.target_modules),
        ),
        (
            "rank_pattern",
            json!(recipe.rank_pattern),
            json!(folder.rank_pattern),
        ),
        ("use_dora", json!(recipe.use_dora), json!(folder.use_dora)),
        (
            "init (PiSSA / OLoRA)",
            json!(needs_conversion(recipe)),
            json!(needs_conversion(&folder)),
        ),
    ];
    match fields.iter().find(|(_, a, b)| a != b) {
        None => Ok(()),
        Some((what, ours, theirs)) => anyhow::bail!(
            "--adapter {}: its adapter_config.json has {what} = {theirs} where the recipe's [lora] gives {ours}; eval loads the tensors into the recipe's adapters, so evaluate with the recipe it was trained with (an exported PiSSA / OLoRA folder is a plain LoRA of twice the rank)",
            dir.display()
        ),
    }
}

/// `target_modules` as a sorted list (PEFT saves its set in any order), or the regex string.
fn names(targets: &serde_json::Value) -> serde_json::Value {
    match targets.as_array() {
        Some(list) => {
            let mut names: Vec<String> = list.iter().map(ToString::to_string).collect();
            names.sort();
            json!(names)
        }
        None => targets.clone(),
    }
}
