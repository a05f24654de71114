//! The tool's cache directory and what lives there besides fetched models (`source/`): the
//! autotune results of cubecl's kernels, one folder per GPU adapter and driver, so a second run
//! on the same card starts with every kernel already chosen instead of benchmarking them again
//! (without it every process re-tunes every product and fused kernel). Knows no model.

use std::path::{Path, PathBuf};

/// `$LORA_TUNE_CACHE`, else `$XDG_CACHE_HOME/lora-tune`, else `~/.cache/lora-tune`.
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LORA_TUNE_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("lora-tune")
}

/// The autotune folder of one adapter: `autotune/<adapter and driver, as a file name>`.
pub fn autotune_dir(adapter: &str) -> PathBuf {
    let name: String = adapter
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "-_.".contains(c) {
            true => c,
            false => '_',
        })
        .collect();
    dir().join("autotune").join(name)
}

/// The file cubecl writes one JSON line to per tuning decision (`autotune.decisions`): the lines
/// a run adds are the kernels it had to tune.
pub fn decisions_file(autotune_dir: &Path) -> PathBuf {
    autotune_dir.join("decisions.jsonl")
}

/// Points cubecl's persistent store (autotune results) at [`autotune_dir`]`(adapter)` and its
/// decision log beside them, before the device starts: cubecl reads its configuration once per
/// process. A `cubecl.toml` of the user's own (or an earlier configuration) wins: then None.
#[cfg(feature = "cube")]
pub fn use_autotune_dir(adapter: &str) -> Option<PathBuf> {
    use burn_cubecl::cubecl::config::cache::CacheConfig;
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    if ["cubecl.toml", "CubeCL.toml", "burn.toml", "Burn.toml"]
        .iter()
        .any(|f| Path::new(f).exists())
    {
        return None;
    }
    let dir = autotune_dir(adapter);
    std::fs::create_dir_all(&dir).ok()?;
    let mut config = CubeClRuntimeConfig::default();
    config.environment.path = CacheConfig::Directory(dir.clone());
    config.autotune.decisions.file = Some(decisions_file(&dir));
    config.autotune.logger.file = Some(dir.join("autotune.log"));
    CubeClRuntimeConfig::try_set(config.override_from_env()).then_some(dir)
}

/// How many tuning decisions the folder's log holds (0 without one).
pub fn decisions(autotune_dir: &Path) -> usize {
    std::fs::read_to_string(decisions_file(autotune_dir)).map_or(0, |s| s.lines().count())
}
