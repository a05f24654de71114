//! Will the servers load it? What vLLM, TGI / LoRAX and llama.cpp accept, checked against an
//! adapter's config and its base before any export, with the command that serves it. Errors for
//! what cannot work, warnings for what needs a flag (DESIGN.md §5).

use std::fmt;
use std::path::Path;

use crate::model::decoder_config::DecoderConfig;
use crate::peft::config::PeftConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub server: &'static str,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.server, self.message)
    }
}

/// vLLM's `--max-lora-rank` choices.
const VLLM_RANKS: [u32; 9] = [1, 8, 16, 32, 64, 128, 256, 320, 512];

/// The largest rank of any adapted layer as exported: a PiSSA / OLoRA adapter exports as a
/// plain LoRA of twice its rank (`peft::conversion`).
pub fn max_rank(config: &PeftConfig) -> u32 {
    let doubled = if crate::peft::conversion::needs_conversion(config) {
        2
    } else {
        1
    };
    doubled
        * config
            .rank_pattern
            .values()
            .copied()
            .chain([config.r])
            .max()
            .unwrap_or(config.r)
}

/// The smallest `--max-lora-rank` vLLM accepts for these adapters, if any.
pub fn vllm_rank_bucket(config: &PeftConfig) -> Option<u32> {
    let r = max_rank(config);
    VLLM_RANKS.into_iter().find(|&b| b >= r)
}

/// The command that serves the adapter folder `dir` as `name` with vLLM, at the smallest
/// `--max-lora-rank` bucket that holds its largest rank.
pub fn vllm_command(config: &PeftConfig, name: &str, dir: &Path) -> String {
    let bucket = vllm_rank_bucket(config).unwrap_or(config.r);
    let base = config.base_model_name_or_path.as_deref().unwrap_or("");
    // vLLM wants the base as a hub id or HF directory, not our pip:// or GGUF reference.
    let (base, note) = if base.contains("://") || base.ends_with(".gguf") || base.is_empty() {
        (
            "HF_BASE",
            format!("  # HF_BASE: the Hugging Face id of {base}"),
        )
    } else {
        (base, String::new())
    };
    format!(
        "vllm serve {base} --enable-lora --lora-modules {name}={} --max-lora-rank {bucket}{note}",
        dir.display()
    )
}

/// What the adapter config alone decides (no base needed).
pub fn check_adapter(config: &PeftConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |level, server, message: String| {
        out.push(Finding {
            level,
            server,
            message,
        })
    };
    let r = max_rank(config);
    match vllm_rank_bucket(config) {
        None => add(
            Level::Error,
            "vLLM",
            format!("rank {r} is above vLLM's largest --max-lora-rank (512)"),
        ),
        Some(b) if b > 16 => add(
            Level::Warning,
            "vLLM",
            format!(
                "rank {r} is above vLLM's default --max-lora-rank 16: serve with --max-lora-rank {b}"
            ),
        ),
        Some(_) => {}
    }
    if config.use_dora {
        // PEFT and transformers load DoRA; the servers' LoRA paths apply A and B only.
        let merged = "serve the merged export (export.formats = [\"merged\"]) instead";
        add(
            Level::Error,
            "vLLM",
            format!(
                "DoRA adapters are not supported (its loader rejects lora_magnitude_vector, vllm#6983): {merged}"
            ),
        );
        add(
            Level::Error,
            "llama.cpp",
            format!("a GGUF LoRA carries no DoRA magnitudes: {merged}"),
        );
        add(
            Level::Warning,
            "TGI/LoRAX",
            format!(
                "no DoRA path (LoRAX: lorax#304 is open; their kernels apply A and B only): {merged}"
            ),
        );
    }
    if config.bias != "none" {
        add(
            Level::Error,
            "vLLM",
            format!("bias = {:?} is not supported", config.bias),
        );
    }
    if config
        .modules_to_save
        .as_ref()
        .is_some_and(|m| !m.is_empty())
    {
        add(
            Level::Error,
            "vLLM",
            "modules_to_save is not supported".into(),
        );
    }
    if !config.alpha_pattern.is_empty() {
        add(
            Level::Error,
            "llama.cpp",
            "alpha_pattern: a GGUF LoRA carries one alpha for every layer".into(),
        );
    }
    if config.use_rslora {
        add(
            Level::Warning,
            "llama.cpp",
            format!(
                "rsLoRA: the GGUF stores alpha = {:.4} (α·√r) so llama.cpp's alpha / r equals α/√r; a converter that copies lora_alpha would not",
                config.lora_alpha * f64::from(config.r).sqrt()
            ),
        );
    }
    out
}

/// Everything, for adapters on `base`: the config's findings plus the base's.
pub fn check(config: &PeftConfig, base: &DecoderConfig) -> Vec<Finding> {
    let mut out = check_adapter(config);
    let mut add = |level, server, message: String| {
        out.push(Finding {
            level,
            server,
            message,
        })
    };
    // Which architectures load LoRA adapters, read from the servers' model switches: TGI's
    // `models/__init__.py` (flash models whose linears are multi-adapter layers; Mistral files
    // are `llama` here) and LoRAX's `lorax_server/models/__init__.py` (its flash models).
    let arch = base.gguf_architecture();
    let servers: [(&'static str, &[&str]); 2] = [
        (
            "TGI",
            &["llama", "qwen2", "gemma2", "gemma3", "phi3", "granite"],
        ),
        ("LoRAX", &["llama", "qwen2", "gemma2", "phi3", "granite"]),
    ];
    for (server, archs) in servers {
        if !archs.contains(&arch) {
            add(
                Level::Error,
                server,
                format!(
                    "architecture {arch} has no LoRA support there (it has for {})",
                    archs.join(", ")
                ),
            );
        }
    }
    let experts = base
        .moe
        .as_ref()
        .map(|moe| moe.expert_modules(base.hidden_size));
    let targets_experts = experts.is_some_and(|modules| {
        let named = |m: &str| match &config.target_modules {
            serde_json::Value::Array(names) => names.iter().any(|n| n == m),
            serde_json::Value::String(s) => s == "all-linear" || s.contains(m),
            _ => false,
        };
        modules.iter().any(|(m, _, _)| named(m))
    });
    if targets_experts {
        add(
            Level::Warning,
            "vLLM",
            "LoRA on the experts needs vLLM ≥ 0.11.2 (LoRA on FusedMoE layers); older versions serve adapters on attention only".into(),
        );
    }
    let targets_head = match &config.target_modules {
        serde_json::Value::Array(names) => names.iter().any(|n| n == "lm_head"),
        serde_json::Value::String(s) => s.contains("lm_head"),
        _ => false,
    };
    if targets_head && base.tie_word_embeddings {
        add(
            Level::Error,
            "llama.cpp",
            "an lm_head adapter on a model with tied embeddings has no separate output tensor"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::targets::TargetLayer;
    use crate::model::decoder_config::{Deltas, Family, RopeScaling};
    use crate::recipe::LoraSection;

    fn base() -> DecoderConfig {
        DecoderConfig {
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            qkv_bias: false,
            deltas: Deltas::default(),
            moe: None,
            family: Family::Llama,
        }
    }

    fn config(rank: u32) -> PeftConfig {
        let lora = LoraSection {
            rank,
            ..LoraSection::default()
        };
        PeftConfig::new(&lora, &[] as &[TargetLayer], "b".into(), None)
    }

    #[test]
    fn vllm_rank_buckets() {
        assert!(check(&config(8), &base()).is_empty());
        let w = check(&config(24), &base());
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].level, Level::Warning);
        assert!(w[0].message.contains("--max-lora-rank 32"), "{}", w[0]);
        let e = check(&config(600), &base());
        assert_eq!(e[0].level, Level::Error);
        assert_eq!(vllm_rank_bucket(&config(600)), None);
    }

    #[test]
    fn what_servers_refuse() {
        let mut c = config(8);
        c.use_dora = true;
        c.bias = "all".into();
        c.modules_to_save = Some(vec!["score".into()]);
        c.alpha_pattern.insert("q_proj".into(), 32.0);
        c.target_modules = serde_json::json!(["q_proj", "lm_head"]);
        let errors: Vec<String> = check(&c, &base()).iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 7, "{errors:#?}");
        assert_eq!(
            errors.iter().filter(|e| e.starts_with("error: ")).count(),
            6,
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("DoRA") && e.contains("TGI/LoRAX"))
        );
        assert!(errors.iter().any(|e| e.contains("tied embeddings")));
    }

    #[test]
    fn architectures_each_server_loads_adapters_for() {
        let servers = |family| -> Vec<&'static str> {
            let base = DecoderConfig { family, ..base() };
            check(&config(8), &base).iter().map(|f| f.server).collect()
        };
        assert!(servers(Family::Gemma2).is_empty());
        assert_eq!(servers(Family::Gemma3), ["LoRAX"]);
        assert_eq!(servers(Family::Qwen3), ["TGI", "LoRAX"]);
        assert_eq!(servers(Family::Olmo2), ["TGI", "LoRAX"]);
        assert!(servers(Family::Phi3).is_empty() && servers(Family::Granite).is_empty());
    }
}
