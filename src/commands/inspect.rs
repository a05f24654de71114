//! `lora-tune inspect MODEL`: resolve the reference, then print the tensor table and metadata.

use std::collections::BTreeMap;

use anyhow::Context;

use crate::lora::report::thousands;
use crate::source::{Fetcher, Source};
use crate::weights::Inventory;

pub fn run(model: &str) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let source = Source::parse(model, None, &cwd)?;
    let files = Fetcher::new()
        .resolve(&source)
        .with_context(|| format!("resolving {model}"))?;
    let inv = Inventory::read(files.path())
        .with_context(|| format!("inspecting {}", files.path().display()))?;
    print!("{}", render(&inv));
    Ok(())
}

/// The listing, as text: summary, metadata, tensor table, totals by dtype.
pub fn render(inv: &Inventory) -> String {
    let mut out = String::new();
    let files: Vec<String> = inv.files.iter().map(|f| f.display().to_string()).collect();
    out += &format!("{}\n", files.join("\n"));
    out += &format!(
        "format: {} | tensors: {} | parameters: {}\n",
        inv.format,
        inv.tensors.len(),
        thousands(inv.parameters())
    );
    if !inv.metadata.is_empty() {
        out += &format!("\nmetadata ({} keys):\n", inv.metadata.len());
        for (k, v) in &inv.metadata {
            out += &format!("  {k} = {v}\n");
        }
    }
    let name_w = inv
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    out += &format!("\ntensors (shape {}):\n", inv.shape_order);
    out += &format!(
        "  {:name_w$}  {:7}  {:18}  {:>13}\n",
        "name", "dtype", "shape", "parameters"
    );
    let mut by_dtype: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in &inv.tensors {
        let shape = format!("{:?}", t.shape);
        let shard = t
            .file
            .as_deref()
            .map(|f| format!("  {f}"))
            .unwrap_or_default();
        out += &format!(
            "  {:name_w$}  {:7}  {:18}  {:>13}{shard}\n",
            t.name,
            t.dtype,
            shape,
            thousands(t.n_elements())
        );
        let e = by_dtype.entry(&t.dtype).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
    }
    out += "\nby dtype:\n";
    for (dtype, (n, params)) in by_dtype {
        out += &format!(
            "  {dtype:7}  {n:>4} tensors  {:>13} parameters\n",
            thousands(params)
        );
    }
    out
}
