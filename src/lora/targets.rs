//! Target selection with PEFT's rules (peft `check_target_module_exists`, `get_pattern_key`):
//! a list targets a module whose path equals a name or ends with `.name`; a single string is a
//! regex the whole path must match; `all-linear` is every linear layer but the LM head.
//! `layers` keeps only those layer indices; `rank_pattern` / `alpha_pattern` keys are regexes
//! matched as `(.*\.)?(key)$`. Knows module paths and shapes, not tensors.

use regex::Regex;

use crate::recipe::{LoraSection, Targets};

/// A linear layer of the base model, as the model describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearSite {
    /// HF module path, e.g. `model.layers.3.self_attn.q_proj`.
    pub path: String,
    /// Decoder layer index; None for layers outside the stack (the LM head).
    pub layer: Option<usize>,
    pub in_features: usize,
    pub out_features: usize,
}

impl LinearSite {
    /// The last path component, e.g. `q_proj`.
    pub fn name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }
}

/// A targeted linear layer with its rank and α.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetLayer {
    pub site: LinearSite,
    pub rank: u32,
    pub alpha: f64,
}

impl TargetLayer {
    /// s = α/r, or α/√r with rsLoRA.
    pub fn scale(&self, rslora: bool) -> f64 {
        let r = f64::from(self.rank);
        if rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }

    /// Trainable parameters of A [r, in] and B [out, r].
    pub fn parameters(&self) -> u64 {
        u64::from(self.rank) * (self.site.in_features + self.site.out_features) as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("`{pattern}` is not a valid regex: {detail}")]
    BadRegex { pattern: String, detail: String },
    #[error(
        "lora.targets {targets} match no linear layer of this model; its linear layers are: {available}"
    )]
    NothingMatched { targets: String, available: String },
    #[error(
        "module `{module}` matches both `{first}` and `{second}` in lora.{table}; make the patterns disjoint"
    )]
    Ambiguous {
        module: String,
        first: String,
        second: String,
        table: &'static str,
    },
    #[error(
        "`{module}` is a GraniteMoE expert, which PEFT adapts through target_parameters: {what} is not possible there (its ParamWrapper refuses it); set {fix} or leave the experts out of lora.targets"
    )]
    TargetParameter {
        module: String,
        what: &'static str,
        fix: &'static str,
    },
}

/// A GraniteMoE expert's parameter (`…block_sparse_moe.experts.{e}.gate_up_proj` /
/// `down_proj`): its checkpoints have no per-expert modules, so PEFT adapts these through
/// `target_parameters`, which allows no dropout and no DoRA.
pub fn is_target_parameter(path: &str) -> bool {
    let Some((_, rest)) = path.split_once(".block_sparse_moe.experts.") else {
        return false;
    };
    rest.ends_with(".gate_up_proj") || rest.ends_with(".down_proj")
}

/// Phi-3's fused attention and MLP projections: what the default targets (the seven Llama
/// projections) mean on a model that has them.
const FUSED_PROJECTIONS: [&str; 4] = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"];

/// The adapted layers of `sites` under `lora`, in model order.
pub fn select(sites: &[LinearSite], lora: &LoraSection) -> Result<Vec<TargetLayer>, TargetError> {
    // The default names every attention and MLP projection; with fused ones those are Phi-3's
    // four (the seven Llama names would match only o_proj and down_proj there).
    if lora.targets == Targets::default() && sites.iter().any(|s| s.name() == "qkv_proj") {
        let fused = LoraSection {
            targets: Targets::Modules(FUSED_PROJECTIONS.map(String::from).to_vec()),
            ..lora.clone()
        };
        return select(sites, &fused);
    }
    // Mixtral's experts are w1, w3 and w2: the default adapts them too.
    if lora.targets == Targets::default() && sites.iter().any(|s| s.name() == "w1") {
        let names = ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"];
        let mixtral = LoraSection {
            targets: Targets::Modules(names.map(String::from).to_vec()),
            ..lora.clone()
        };
        return select(sites, &mixtral);
    }
    let regex = |p: &str, anchored: String| {
        Regex::new(&anchored).map_err(|e| TargetError::BadRegex {
            pattern: p.into(),
            detail: e.to_string(),
        })
    };
    let whole = match &lora.targets {
        Targets::Regex(p) => Some(regex(p, format!("^(?:{p})$"))?),
        _ => None,
    };
    let ranks = patterns(&lora.rank_pattern, &regex)?;
    let alphas = patterns(&lora.alpha_pattern, &regex)?;
    let mut out = Vec::new();
    for site in sites {
        let targeted = match &lora.targets {
            Targets::AllLinear => site.name() != "lm_head",
            Targets::Regex(_) => whole.as_ref().is_some_and(|r| r.is_match(&site.path)),
            Targets::Modules(names) => {
                let names_it = |n: &str| names.iter().any(|m| m == n);
                let named = names
                    .iter()
                    .any(|n| site.path == *n || site.path.ends_with(&format!(".{n}")))
                    // A fused expert's gate_up_proj is PEFT's gate_proj and up_proj together
                    // (`peft::folder::per_expert_form`).
                    || (site.name() == "gate_up_proj"
                        && site.path.contains(".experts.")
                        && names_it("gate_proj")
                        && names_it("up_proj"));
                let in_layers = match (&lora.layers, site.layer) {
                    (None, _) => true,
                    (Some(keep), Some(layer)) => keep.iter().any(|&k| k as usize == layer),
                    (Some(_), None) => false,
                };
                named && in_layers
            }
        };
        if !targeted {
            continue;
        }
        let rank = lookup(&ranks, &site.path, "rank_pattern")?.unwrap_or(lora.rank);
        let alpha = lookup(&alphas, &site.path, "alpha_pattern")?.unwrap_or(lora.alpha);
        out.push(TargetLayer {
            site: site.clone(),
            rank,
            alpha,
        });
    }
    if let Some(expert) = out.iter().find(|t| is_target_parameter(&t.site.path)) {
        let refused = match (lora.dropout > 0.0, lora.use_dora) {
            (true, _) => Some(("lora.dropout > 0", "lora.dropout = 0")),
            (_, true) => Some(("DoRA", "lora.use_dora = false")),
            _ => None,
        };
        if let Some((what, fix)) = refused {
            return Err(TargetError::TargetParameter {
                module: expert.site.path.clone(),
                what,
                fix,
            });
        }
    }
    if out.is_empty() {
        let mut names: Vec<&str> = sites.iter().map(LinearSite::name).collect();
        names.sort();
        names.dedup();
        let targets = match &lora.targets {
            Targets::AllLinear => "\"all-linear\"".to_string(),
            Targets::Regex(p) => format!("{p:?}"),
            Targets::Modules(m) => format!("{m:?}"),
        };
        let layers = lora
            .layers
            .as_ref()
            .map(|l| format!(" (layers {l:?})"))
            .unwrap_or_default();
        return Err(TargetError::NothingMatched {
            targets: targets + &layers,
            available: names.join(", "),
        });
    }
    Ok(out)
}

type Patterns<T> = Vec<(String, Regex, T)>;

fn patterns<T: Copy>(
    table: &std::collections::BTreeMap<String, T>,
    regex: &impl Fn(&str, String) -> Result<Regex, TargetError>,
) -> Result<Patterns<T>, TargetError> {
    table
        .iter()
        .map(|(k, &v)| Ok((k.clone(), regex(k, format!("^(?:.*\\.)?(?:{k})$"))?, v)))
        .collect()
}

/// The value of the one pattern matching `path`; two matches are an error (PEFT would silently
/// take the first in dict order, which a TOML table does not keep).
fn lookup<T: Copy>(
    patterns: &Patterns<T>,
    path: &str,
    table: &'static str,
) -> Result<Option<T>, TargetError> {
    let mut hits = patterns.iter().filter(|(_, r, _)| r.is_match(path));
    let Some((first, _, value)) = hits.next() else {
        return Ok(None);
    };
    if let Some((second, _, _)) = hits.next() {
        return Err(TargetError::Ambiguous {
            module: path.into(),
            first: first.clone(),
            second: second.clone(),
            table,
        });
    }
    Ok(Some(*value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sites() -> Vec<LinearSite> {
        let mut v = Vec::new();
        for layer in 0..2 {
            for (m, i, o) in [
                ("self_attn.q_proj", 8, 8),
                ("self_attn.v_proj", 8, 4),
                ("mlp.down_proj", 16, 8),
            ] {
                v.push(LinearSite {
                    path: format!("model.layers.{layer}.{m}"),
                    layer: Some(layer),
                    in_features: i,
                    out_features: o,
                });
            }
        }
        v.push(LinearSite {
            path: "lm_head".into(),
            layer: None,
            in_features: 8,
            out_features: 32,
        });
        v
    }

    fn lora(targets: Targets) -> LoraSection {
        LoraSection {
            targets,
            ..LoraSection::default()
        }
    }

    #[test]
    fn list_matches_by_suffix_and_all_linear_skips_the_head() {
        let got = select(&sites(), &lora(Targets::Modules(vec!["q_proj".into()]))).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|a| a.site.name() == "q_proj"));
        let all = select(&sites(), &lora(Targets::AllLinear)).unwrap();
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let got = select(&sites(), &lora(Targets::Regex(r".*\.1\..*_proj".into()))).unwrap();
        assert_eq!(got.len(), 3);
        assert!(select(&sites(), &lora(Targets::Regex("q_proj".into()))).is_err());
    }

    #[test]
    fn layers_and_rank_pattern_apply() {
        let mut l = lora(Targets::Modules(vec!["q_proj".into(), "v_proj".into()]));
        l.layers = Some(vec![1]);
        l.rank_pattern.insert("v_proj".into(), 2);
        let got = select(&sites(), &l).unwrap();
        let ranks: Vec<(String, u32)> = got.iter().map(|a| (a.site.path.clone(), a.rank)).collect();
        assert_eq!(
            ranks,
            [
                ("model.layers.1.self_attn.q_proj".into(), 8),
                ("model.layers.1.self_attn.v_proj".into(), 2)
            ]
        );
    }

    #[test]
    fn nothing_matched_lists_the_available_names() {
        let err = select(&sites(), &lora(Targets::Modules(vec!["query".into()])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"query\"") && err.contains("down_proj, lm_head, q_proj, v_proj"),
            "{err}"
        );
    }

    #[test]
    fn overlapping_patterns_are_refused() {
        let mut l = lora(Targets::AllLinear);
        l.rank_pattern.insert("q_proj".into(), 2);
        l.rank_pattern
            .insert(r"layers\.0\.self_attn\.q_proj".into(), 4);
        assert!(
            select(&sites(), &l)
                .unwrap_err()
                .to_string()
                .contains("matches both")
        );
    }
}
