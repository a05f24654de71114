//! `lora-tune plan RECIPE`: validate, resolve the model, print what a run would do. Also the
//! preparation every recipe-driven command shares ([`prepare`]).

use std::path::Path;

use anyhow::Context;

use super::NotYetImplemented;
use crate::lora::report::{ParameterReport, thousands};
use crate::lora::targets::{self, Adapted};
use crate::plan::{Plan, Stop, Warmup};
use crate::recipe::{RecipeFile, Targets};
use crate::source::{Fetcher, Resolution};
use crate::weights::Inventory;

pub fn run(recipe: &Path) -> anyhow::Result<()> {
    prepare(recipe)?;
    Err(NotYetImplemented {
        command: "plan",
        pending: "the memory estimate (and refusing runs that would not fit) arrives with issue #10; above: everything else a run resolves",
    }
    .into())
}

/// A recipe validated, its model resolved and its adapters chosen (no weights loaded).
pub struct Prepared {
    pub plan: Plan,
    pub model: Resolution,
    pub adapted: Vec<Adapted>,
}

/// Loads and validates the recipe, resolves the model, reads its header; prints each step.
pub fn prepare(recipe: &Path) -> anyhow::Result<Prepared> {
    let file = RecipeFile::load(recipe)?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let plan = Plan::resolve(&file, &cwd)?;
    println!("recipe: {}", plan.recipe_path.display());
    let model = Fetcher::new().resolve_first(&plan.sources)?;
    for (reference, why) in &model.skipped {
        println!("model: skipped {reference}: {why}");
    }
    println!(
        "model: {} → {}",
        model.source.reference,
        model.files.path().display()
    );
    let inventory = Inventory::read(model.files.path())
        .with_context(|| format!("reading {}", model.files.path().display()))?;
    println!(
        "       {}, {} tensors, {} parameters, compute dtype {:?}",
        inventory.format,
        inventory.tensors.len(),
        thousands(inventory.parameters()),
        plan.dtype
    );
    print_settings(&plan);
    let config = crate::model::config_of(&model.files)?;
    let adapted = targets::select(&config.linear_sites(), &plan.lora)
        .with_context(|| format!("choosing LoRA targets ({})", plan.recipe_path.display()))?;
    print!(
        "{}",
        ParameterReport::new(&adapted, config.parameter_count()).render()
    );
    Ok(Prepared {
        plan,
        model,
        adapted,
    })
}

fn print_settings(plan: &Plan) {
    let l = &plan.lora;
    let scale = if l.rslora {
        l.alpha / f64::from(l.rank).sqrt()
    } else {
        l.alpha / f64::from(l.rank)
    };
    let targets = match &l.targets {
        Targets::AllLinear => "all-linear".to_string(),
        Targets::Modules(m) => m.join(","),
        Targets::Regex(r) => format!("regex {r:?}"),
    };
    println!(
        "lora:  r={} alpha={} scale={scale} dropout={} init={:?}{} targets={targets}",
        l.rank,
        l.alpha,
        l.dropout,
        l.init,
        if l.rslora { " rslora" } else { "" }
    );
    let d = &plan.data;
    println!(
        "data:  train={} eval={} format={:?} max_len={} packing={}",
        d.train.display(),
        d.eval
            .as_ref()
            .map(|p| p.display().to_string())
            .or(d.eval_fraction.map(|f| format!("{f} of train")))
            .unwrap_or_else(|| "none".into()),
        d.format,
        d.max_len,
        d.packing
    );
    let t = &plan.train;
    let stop = match plan.stop {
        Stop::MaxSteps(n) => format!("{n} steps"),
        Stop::Epochs(e) => format!("{e} epochs"),
    };
    let warmup = match plan.warmup {
        Warmup::Steps(n) => format!("{n} steps"),
        Warmup::Ratio(r) => format!("{r} of steps"),
    };
    println!(
        "train: adamw lr={} {:?} warmup={warmup} stop={stop} batch={}x{} clip={} seed={}",
        t.lr, t.schedule, t.batch_size, t.grad_accum, t.max_grad_norm, t.seed
    );
    let formats: Vec<String> = plan
        .export
        .formats
        .iter()
        .map(|f| format!("{f:?}").to_lowercase())
        .collect();
    println!("export: {} → {}", formats.join(","), plan.out_dir.display());
}
