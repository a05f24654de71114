//! `lora-tune export --adapter DIR --format peft|gguf --out PATH`: a checkpoint or run directory
//! → a clean PEFT adapter folder, or a llama.cpp LoRA GGUF. The adapters are already PEFT's tensors and config, so this
//! validates them (the config must describe adapters we can represent, the safetensors header
//! must be sound) and copies each file atomically. An existing `--out` needs `--force`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::ExportDtype;
use crate::export::peft::{CLASS_MAP_FILE, CONFIG_FILE, WEIGHTS_FILE, read_config};
use crate::export::{gguf_lora, merge, servability};
use crate::lora::peft_config::PeftConfig;
use crate::recipe::Dtype;
use crate::source::ModelFiles;
use crate::source::{Fetcher, Source};
use crate::train::checkpoint;
use crate::weights::gguf_writer::TensorType;
use crate::weights::host::HostTensors;
use crate::weights::safetensors::StFile;

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
    let config = read_config(&dir)?;
    config
        .lora_section()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}", dir.join(CONFIG_FILE).display()))?;
    Ok((dir, config))
}

pub fn run(adapter: &Path, out: &Path, dtype: Dtype, force: bool) -> anyhow::Result<()> {
    let (dir, config) = adapter_folder(adapter)?;
    report(&servability::check_adapter(&config));
    let weights = StFile::open(&dir.join(WEIGHTS_FILE))?;
    // A classifier (SEQ_CLS) also saves its head in full, as PEFT's modules_to_save.
    let head = |name: &str| {
        config.task_type.as_deref() == Some("SEQ_CLS")
            && ["classifier", "score"].iter().any(|m| {
                name == format!("base_model.model.{m}.weight")
                    || name == format!("base_model.model.{m}.bias")
            })
    };
    anyhow::ensure!(
        weights
            .tensors
            .iter()
            .all(|t| t.name.contains(".lora_") || head(&t.name)),
        "{}: holds tensors that are not LoRA factors (or a SEQ_CLS head)",
        weights.path.display()
    );
    let occupied = out.read_dir().is_ok_and(|mut d| d.next().is_some());
    anyhow::ensure!(
        !occupied || force,
        "{} exists and is not empty; pass --force to replace its adapter files",
        out.display()
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::atomic::remove_stale_temps(out);
    let names: &[&str] = if dtype == Dtype::F32 {
        &[WEIGHTS_FILE, CONFIG_FILE, CLASS_MAP_FILE, "README.md"]
    } else {
        // Checkpoints hold f32: convert the tensors, copy the rest.
        let tensors = HostTensors::read(&dir.join(WEIGHTS_FILE))?.into_entries();
        crate::weights::safetensors::write(
            &out.join(WEIGHTS_FILE),
            &tensors,
            dtype,
            &[("format", "pt")],
        )?;
        &[CONFIG_FILE, CLASS_MAP_FILE, "README.md"]
    };
    for &name in names {
        let from = dir.join(name);
        if !from.is_file() {
            continue; // checkpoints carry no model card; LMs no classifier.json
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

/// `export --format gguf`: the llama.cpp LoRA of a PEFT folder. Reads only the base's header
/// (architecture, head counts), never its weights.
/// The base model files: `--base`, else the adapter's `base_model_name_or_path`.
pub(super) fn resolve_base(config: &PeftConfig, base: Option<&str>) -> anyhow::Result<ModelFiles> {
    let reference = base
        .map(str::to_string)
        .or_else(|| config.base_model_name_or_path.clone())
        .context("the adapter names no base model; pass --base MODEL")?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    // PEFT writes hub repos as `org/name`; here that is a hub reference unless such a path exists.
    let uri = if !reference.contains("://")
        && !Path::new(&reference).exists()
        && reference.matches('/').count() == 1
    {
        format!("hf://{reference}")
    } else {
        reference.clone()
    };
    Fetcher::new()
        .resolve(&Source::parse(&uri, None, &cwd)?)
        .with_context(|| format!("resolving the base model {reference} (or pass --base MODEL)"))
}

/// An adapter folder and its base, checked for an export that needs the base's header.
struct BaseExport {
    dir: PathBuf,
    config: PeftConfig,
    files: ModelFiles,
    base_config: crate::model::config::LlamaConfig,
}

fn base_export(
    adapter: &Path,
    out: &Path,
    base: Option<&str>,
    force: bool,
) -> anyhow::Result<BaseExport> {
    let (dir, config) = adapter_folder(adapter)?;
    anyhow::ensure!(
        config.task_type.as_deref() != Some("SEQ_CLS"),
        "{}: a classifier adapter (task_type SEQ_CLS) exports as a PEFT folder only; GGUF LoRA and merged models are causal-LM formats",
        dir.display()
    );
    anyhow::ensure!(
        !out.exists() || force,
        "{} exists; pass --force to replace it",
        out.display()
    );
    let files = resolve_base(&config, base)?;
    let base_config = crate::model::config_of(&files)?;
    report(&servability::check(&config, &base_config));
    Ok(BaseExport {
        dir,
        config,
        files,
        base_config,
    })
}

pub fn run_gguf(
    adapter: &Path,
    out: &Path,
    base: Option<&str>,
    dtype: ExportDtype,
    force: bool,
) -> anyhow::Result<()> {
    let BaseExport {
        dir,
        config,
        files: _,
        base_config,
    } = base_export(adapter, out, base, force)?;
    let adapters = HostTensors::read(&dir.join(WEIGHTS_FILE))?.into_entries();
    let name = dir
        .file_name()
        .map_or("adapter".into(), |n| n.to_string_lossy().into_owned());
    let ty = match dtype {
        ExportDtype::F32 => TensorType::F32,
        ExportDtype::Bf16 => TensorType::Bf16,
        ExportDtype::F16 => TensorType::F16,
        ExportDtype::Q8_0 => TensorType::Q8_0,
    };
    gguf_lora::write(out, &base_config, adapters, &config, &name, ty)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "export: {} → {} (llama.cpp LoRA, {} base, alpha {})",
        dir.display(),
        out.display(),
        base_config.gguf_architecture(),
        gguf_lora::gguf_alpha(&config)
    );
    println!(
        "       serve: llama-server -m BASE.gguf --lora {}",
        out.display()
    );
    Ok(())
}

/// `merge` / `export --format merged`: the base with the adapters folded in, as an HF directory.
pub fn run_merged(
    adapter: &Path,
    out: &Path,
    base: Option<&str>,
    dtype: Dtype,
    max_shard_mb: u64,
    force: bool,
) -> anyhow::Result<()> {
    let BaseExport {
        dir,
        config: _,
        files,
        base_config,
    } = base_export(adapter, out, base, force)?;
    let tokenizer = match &files {
        ModelFiles::Gguf(_) => Some(crate::model::tokenizer_of(&files)?),
        _ => None, // an HF directory's tokenizer files are copied as they are
    };
    let started = std::time::Instant::now();
    let merged = merge::merge(
        &files,
        &base_config,
        tokenizer.as_ref(),
        &dir,
        out,
        dtype,
        max_shard_mb.max(1) * 1_000_000,
    )
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("merging {} into {}", dir.display(), files.path().display()))?;
    println!(
        "merge: {} + {} → {} ({} tensors, {} with adapters folded in, {} shard(s), {:.1} MB {dtype:?}, {:.1} s)",
        files.path().display(),
        dir.display(),
        out.display(),
        merged.tensors,
        merged.folded,
        merged.shards,
        merged.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `export --check`: the servability report of an adapter folder against its base.
pub fn check(adapter: &Path, base: Option<&str>) -> anyhow::Result<()> {
    let (dir, config) = adapter_folder(adapter)?;
    let files = resolve_base(&config, base)?;
    let base_config = crate::model::config_of(&files)?;
    let findings = servability::check(&config, &base_config);
    println!(
        "check: {} (r={}, base {})",
        dir.display(),
        servability::max_rank(&config),
        files.path().display()
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

/// Servability findings, printed before an export. They stop nothing here (the file is still
/// valid for the other servers); `--check` turns errors into a failure.
fn report(findings: &[servability::Finding]) {
    for f in findings {
        println!("check: {f}");
    }
}
