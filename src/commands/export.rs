//! `lora-tune export --adapter DIR --format peft --out DIR`: a checkpoint or run directory → a
//! clean PEFT adapter folder. The adapters are already PEFT's tensors and config, so this
//! validates them (the config must describe adapters we can represent, the safetensors header
//! must be sound) and copies each file atomically. An existing `--out` needs `--force`.

use std::path::Path;

use anyhow::Context;

use crate::export::peft::{CONFIG_FILE, WEIGHTS_FILE, read_config};
use crate::train::checkpoint;
use crate::weights::safetensors::StFile;

pub fn run(adapter: &Path, out: &Path, force: bool) -> anyhow::Result<()> {
    // A run directory means its latest checkpoint, unless it holds an exported folder itself.
    let dir = if adapter.join(CONFIG_FILE).is_file() {
        adapter.to_path_buf()
    } else {
        checkpoint::find(adapter)?
    };
    let config = read_config(&dir)?;
    config
        .lora_section()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}", dir.join(CONFIG_FILE).display()))?;
    let weights = StFile::open(&dir.join(WEIGHTS_FILE))?;
    anyhow::ensure!(
        weights.tensors.iter().all(|t| t.name.contains(".lora_")),
        "{}: holds tensors that are not LoRA factors",
        weights.path.display()
    );
    let occupied = out.read_dir().is_ok_and(|mut d| d.next().is_some());
    anyhow::ensure!(
        !occupied || force,
        "{} exists and is not empty; pass --force to replace its adapter files",
        out.display()
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for name in [WEIGHTS_FILE, CONFIG_FILE, "README.md"] {
        let from = dir.join(name);
        if !from.is_file() {
            continue; // checkpoints carry no model card
        }
        let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        let to = out.join(name);
        crate::atomic::write_atomic(&to, |f| std::io::Write::write_all(f, &bytes))
            .with_context(|| format!("writing {}", to.display()))?;
    }
    println!(
        "export: {} → {} (PEFT: r={}, alpha={}, {} tensors)",
        dir.display(),
        out.display(),
        config.r,
        config.lora_alpha,
        weights.tensors.len()
    );
    Ok(())
}
