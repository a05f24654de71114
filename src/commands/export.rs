//! `lora-tune export --adapter DIR --format peft|gguf|merged --out PATH`, `lora-tune merge` and
//! `export --check`: a PEFT folder, checkpoint or run directory → the same entry point a training
//! run exports through ([`crate::export::export`]). An existing `--out` needs `--force`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::export::{self, Base, Exported, Request, servability};
use crate::peft::config::PeftConfig;
use crate::peft::folder::{CONFIG_FILE, read_lora};
use crate::recipe::ExportFormat;
use crate::source::Fetcher;
use crate::train::checkpoint;
use crate::weights::gguf_writer::TensorType;

/// What `export` / `merge` were asked to write.
pub struct ExportArgs<'a> {
    pub adapter: &'a Path,
    pub format: ExportFormat,
    pub out: &'a Path,
    pub dtype: TensorType,
    pub base: Option<&'a str>,
    pub max_shard_mb: u64,
    pub force: bool,
}

pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let (dir, config) = adapter_folder(args.adapter)?;
    let out = args.out;
    let needs_base = args.format != ExportFormat::Peft;
    anyhow::ensure!(
        !(needs_base && export::is_classifier(&config)),
        "{}: a classifier adapter (task_type SEQ_CLS) exports as a PEFT folder only; GGUF LoRA and merged models are causal-LM formats",
        dir.display()
    );
    if needs_base {
        anyhow::ensure!(
            !out.exists() || args.force,
            "{} exists; pass --force to replace it",
            out.display()
        );
    } else {
        // A PEFT folder's files are replaced one by one; other files in it stay.
        let occupied = out.read_dir().is_ok_and(|mut d| d.next().is_some());
        anyhow::ensure!(
            !occupied || args.force,
            "{} exists and is not empty; pass --force to replace its adapter files",
            out.display()
        );
    }
    let base = match needs_base {
        true => Some(resolve_base(&config, args.base)?),
        false => None,
    };
    let findings = match &base {
        Some(base) => servability::check(&config, &base.config),
        None => servability::check_adapter(&config),
    };
    for f in &findings {
        println!("check: {f}");
    }
    let name = dir
        .file_name()
        .map_or("adapter".into(), |n| n.to_string_lossy().into_owned());
    let started = std::time::Instant::now();
    let request = Request {
        adapter: &dir,
        format: args.format,
        out: args.out,
        dtype: args.dtype,
        max_shard_bytes: args.max_shard_mb.max(1) * 1_000_000,
        base: base.as_ref(),
        name: &name,
        card: None,
    };
    let exported = export::export(&request)
        .with_context(|| format!("exporting {} to {}", dir.display(), out.display()))?;
    let out = out.display();
    match exported {
        Exported::Peft { tensors } => println!(
            "export: {} → {out} (PEFT: r={}, alpha={}, {tensors} tensors)",
            dir.display(),
            config.r,
            config.lora_alpha,
        ),
        Exported::Gguf {
            architecture,
            alpha,
        } => {
            println!(
                "export: {} → {out} (llama.cpp LoRA, {architecture} base, alpha {alpha})",
                dir.display(),
            );
            println!("       serve: llama-server -m BASE.gguf --lora {out}");
        }
        Exported::Merged(merged) => println!(
            "merge: {} + {} → {out} ({} tensors, {} with adapters folded in, {} shard(s), {:.1} MB {:?}, {:.1} s)",
            base.as_ref()
                .map_or(String::new(), |b| b.files.path().display().to_string()),
            dir.display(),
            merged.tensors,
            merged.folded,
            merged.shards,
            merged.bytes as f64 / 1e6,
            args.dtype,
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

/// `export --check`: the servability report of an adapter folder against its base.
pub fn check(adapter: &Path, base: Option<&str>) -> anyhow::Result<()> {
    let (dir, config) = adapter_folder(adapter)?;
    let base = resolve_base(&config, base)?;
    let findings = servability::check(&config, &base.config);
    println!(
        "check: {} (r={}, base {})",
        dir.display(),
        servability::max_rank(&config),
        base.files.path().display()
    );
    for f in &findings {
        println!("  {f}");
    }
    if let Some(bucket) = servability::vllm_rank_bucket(&config) {
        println!(
            "  vLLM:      vllm serve HF_BASE --enable-lora --lora-modules NAME={} --max-lora-rank {bucket}",
            dir.display()
        );
    }
    println!(
        "  llama.cpp: lora-tune export --adapter {} --format gguf --out ADAPTER.gguf; llama-server -m BASE.gguf --lora ADAPTER.gguf",
        dir.display()
    );
    let errors = findings
        .iter()
        .filter(|f| f.level == servability::Level::Error)
        .count();
    anyhow::ensure!(
        errors == 0,
        "{errors} problem(s) above stop a server from loading this adapter"
    );
    println!("  ok: loadable by vLLM, TGI/LoRAX and llama.cpp");
    Ok(())
}

/// The PEFT folder `adapter` names (a run directory means its latest checkpoint, unless it
/// holds an exported folder itself) and its config, checked to be adapters we can represent.
fn adapter_folder(adapter: &Path) -> anyhow::Result<(PathBuf, PeftConfig)> {
    anyhow::ensure!(
        adapter.is_dir(),
        "{}: not a directory; --adapter takes a PEFT folder (adapter_config.json + adapter_model.safetensors), a checkpoint or a run directory",
        adapter.display()
    );
    let dir = if adapter.join(CONFIG_FILE).is_file() {
        adapter.to_path_buf()
    } else {
        checkpoint::find(adapter)?
    };
    let (config, _) = read_lora(&dir)?;
    Ok((dir, config))
}

/// The base model (`--base`, else the adapter's `base_model_name_or_path`), its header read.
fn resolve_base(config: &PeftConfig, base: Option<&str>) -> anyhow::Result<Base> {
    let named = config.base_model_name_or_path.as_deref();
    Ok(Base::read(Fetcher::new().resolve_base(base, named)?)?)
}
