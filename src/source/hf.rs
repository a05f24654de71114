//! `hf://org/name[@revision][/file]`: the Hugging Face hub and its cache, laid out and looked up
//! as transformers does (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`;
//! `HF_HUB_OFFLINE=1` reads the cache only). Downloads go through the `hf-hub` crate.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::{ModelFiles, SourceError};

/// Files of an HF model directory we use besides the weights; absent ones are fine.
const OPTIONAL: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// Fetches one file of the repo: from the cache only, or through the hub.
type Getter<'a> = Box<dyn Fn(&str) -> Result<PathBuf, SourceError> + 'a>;

pub fn resolve(
    repo: &str,
    revision: Option<&str>,
    file: Option<&str>,
) -> Result<ModelFiles, SourceError> {
    let err = |detail: String| SourceError::Hf {
        repo: repo.into(),
        detail,
    };
    let cache = Cache::new(hub_cache_dir());
    let handle = Repo::with_revision(
        repo.into(),
        RepoType::Model,
        revision.unwrap_or("main").into(),
    );
    let get: Getter<'_> = if offline() {
        let cached = cache.repo(handle.clone());
        Box::new(move |name: &str| {
            cached.get(name).ok_or_else(|| {
                err(format!(
                    "`{name}` is not in the HF cache and HF_HUB_OFFLINE is set"
                ))
            })
        })
    } else {
        let api = ApiBuilder::from_cache(cache)
            .with_progress(true)
            .build()
            .map_err(|e| err(e.to_string()))?
            .repo(handle.clone());
        Box::new(move |name: &str| api.get(name).map_err(|e| err(format!("{name}: {e}"))))
    };
    if let Some(file) = file {
        return ModelFiles::classify(&get(file)?);
    }
    let config = get("config.json")?;
    match get("model.safetensors") {
        Ok(_) => {}
        Err(single) => {
            let index = get("model.safetensors.index.json").map_err(|_| single)?;
            for shard in shard_names(&index).map_err(err)? {
                get(&shard)?;
            }
        }
    }
    for name in OPTIONAL {
        let _ = get(name);
    }
    let dir = config.parent().map(PathBuf::from).unwrap_or_default();
    Ok(ModelFiles::Dir(dir))
}

/// The shard file names a `model.safetensors.index.json` refers to, each once.
fn shard_names(index: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{}: no `weight_map` object", index.display()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return dir.into();
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}
