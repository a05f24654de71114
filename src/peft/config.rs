//! `adapter_config.json` as PEFT writes and reads it (peft 0.21 `LoraConfig`, `save_pretrained`):
//! keys sorted, two-space indent, α written as an integer when it is one. We write the fields
//! every PEFT release since 0.6 and vLLM / TGI / LoRAX understand; PEFT fills the rest with its
//! defaults, which equal what it saves for the same config (checked against a folder PEFT saved).
//! Reading accepts PEFT's full field set and refuses what our adapters cannot represent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::lora::targets::{TargetLayer, is_target_parameter};
use crate::recipe::{LoraInit, LoraSection, Targets};

/// Why an `adapter_config.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is not supported by lora-tune's adapters")]
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    #[serde(default, serialize_with = "whole_as_int_map")]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default = "none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "yes")]
    pub inference_mode: bool,
    /// `true` (kaiming, PEFT's default), `"gaussian"`, `"pissa"` or `"olora"`.
    #[serde(default = "init_default")]
    pub init_lora_weights: Value,
    #[serde(default)]
    pub layers_pattern: Option<Value>,
    /// One index or a list.
    #[serde(default)]
    pub layers_to_transform: Option<Value>,
    #[serde(serialize_with = "whole_as_int")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    pub peft_type: String,
    pub r: u32,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, u32>,
    #[serde(default)]
    pub revision: Option<String>,
    /// A list of module names or one regex string.
    pub target_modules: Value,
    /// 3-D expert parameters adapted in PEFT's `target_parameters` form
    /// (`block_sparse_moe.experts.gate_up_proj`; GraniteMoE, whose checkpoints have no
    /// per-expert modules), innermost wrapper first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_parameters: Option<Vec<String>>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub use_rslora: bool,
}

fn none() -> String {
    "none".into()
}
fn yes() -> bool {
    true
}
fn init_default() -> Value {
    Value::Bool(true)
}

/// PEFT keeps α as the user gave it; recipes mostly give integers, so 16 is written `16`.
fn whole_as_int<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

fn whole_as_int_map<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, v) in m {
        let v = if v.fract() == 0.0 && v.abs() < 1e15 {
            Value::from(*v as i64)
        } else {
            Value::from(*v)
        };
        map.serialize_entry(k, &v)?;
    }
    map.end()
}

impl PeftConfig {
    /// The config of adapters trained from `lora` on the layers `adapted`, for the base model
    /// `base` (a hub repo id or the reference the recipe used) at `revision`.
    pub fn new(
        lora: &LoraSection,
        adapted: &[TargetLayer],
        base: String,
        revision: Option<String>,
    ) -> Self {
        let target_modules = match &lora.targets {
            Targets::Regex(r) => Value::from(r.clone()),
            // PEFT saves the names it matched ("all-linear" expands), as a set: we sort them.
            // Fused experts' gate_up_proj is written as gate_proj and up_proj
            // (`folder::per_expert_form`).
            Targets::Modules(_) | Targets::AllLinear => {
                let names = adapted.iter().flat_map(|a| {
                    if is_target_parameter(&a.site.path) {
                        return vec![];
                    }
                    match (a.site.name(), a.site.path.contains(".mlp.experts.")) {
                        ("gate_up_proj", true) => vec!["gate_proj", "up_proj"],
                        (name, _) => vec![name],
                    }
                });
                let mut names: Vec<&str> = names.collect();
                names.sort_unstable();
                names.dedup();
                Value::from(names)
            }
        };
        let parameters: Vec<String> = ["gate_up_proj", "down_proj"]
            .into_iter()
            .filter(|p| {
                adapted
                    .iter()
                    .any(|a| is_target_parameter(&a.site.path) && a.site.name() == *p)
            })
            .map(|p| format!("block_sparse_moe.experts.{p}"))
            .collect();
        Self {
            target_parameters: (!parameters.is_empty()).then_some(parameters),
            alpha_pattern: lora.alpha_pattern.clone(),
            base_model_name_or_path: Some(base),
            bias: none(),
            fan_in_fan_out: false,
            inference_mode: true,
            init_lora_weights: match lora.init {
                LoraInit::Kaiming => Value::Bool(true),
                LoraInit::Gaussian => Value::from("gaussian"),
                LoraInit::Pissa => Value::from("pissa"),
                LoraInit::Olora => Value::from("olora"),
            },
            layers_pattern: None,
            layers_to_transform: lora.layers.as_ref().map(|l| Value::from(l.clone())),
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            modules_to_save: None,
            peft_type: "LORA".into(),
            r: lora.rank,
            rank_pattern: lora.rank_pattern.clone(),
            revision,
            target_modules,
            task_type: Some("CAUSAL_LM".into()),
            use_dora: lora.use_dora,
            use_rslora: lora.rslora,
        }
    }

    /// The same adapters on a sequence classifier: PEFT's `SEQ_CLS` task, whose heads
    /// (`classifier` on BERT, `score` on decoders) are saved in full — PEFT lists both names.
    pub fn for_classification(mut self) -> Self {
        self.task_type = Some("SEQ_CLS".into());
        self.modules_to_save = Some(vec!["classifier".into(), "score".into()]);
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises") + "\n"
    }

    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// How the adapters were initialised, where it matters once they are trained: PiSSA and
    /// OLoRA left the base weight reduced by the initial adapter, which loading repeats (as PEFT
    /// does); other inits that change the base are refused by name.
    fn init(&self) -> Result<LoraInit, ConfigError> {
        let name = self.init_lora_weights.as_str().unwrap_or_default();
        match name {
            "gaussian" => Ok(LoraInit::Gaussian),
            "pissa" => Ok(LoraInit::Pissa),
            "olora" => Ok(LoraInit::Olora),
            _ if name.starts_with("pissa_niter_") || name == "loftq" || name == "corda" => {
                Err(ConfigError::Unsupported(format!(
                    "init_lora_weights = {name:?} (it changes the base weight in a way lora-tune does not repeat; \"pissa\" and \"olora\" are supported)"
                )))
            }
            _ => Ok(LoraInit::Kaiming), // B and A are replaced by the trained values
        }
    }

    /// The `[lora]` section that rebuilds these adapters, or why our adapters cannot.
    pub fn lora_section(&self) -> Result<LoraSection, ConfigError> {
        let refuse = |what: &str| Err(ConfigError::Unsupported(what.to_string()));
        let invalid = |what: &str| ConfigError::Invalid(what.to_string());
        if self.peft_type != "LORA" {
            return refuse(&format!("peft_type {:?}", self.peft_type));
        }
        if self.bias != "none" {
            return refuse(&format!("bias = {:?}", self.bias));
        }
        if self.fan_in_fan_out {
            return refuse("fan_in_fan_out = true (Conv1D layouts)");
        }
        // A classifier's head is the only fully trained module we represent.
        let head = |m: &String| {
            self.task_type.as_deref() == Some("SEQ_CLS") && (m == "classifier" || m == "score")
        };
        if self
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.iter().all(head))
        {
            return refuse("modules_to_save (other than a SEQ_CLS head)");
        }
        if self.layers_pattern.as_ref().is_some_and(|p| !p.is_null()) {
            return refuse("layers_pattern");
        }
        let targets = match &self.target_modules {
            Value::String(s) if s == "all-linear" => Targets::AllLinear,
            Value::String(s) => Targets::Regex(s.clone()),
            Value::Array(names) => Targets::Modules(
                names
                    .iter()
                    .map(|n| {
                        n.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| invalid("target_modules: names must be strings"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => {
                return Err(invalid(&format!(
                    "target_modules: expected a list or a string, got {other}"
                )));
            }
        };
        let targets = match &self.target_parameters {
            None => targets,
            Some(params) if params.is_empty() => targets,
            Some(params) => {
                let Targets::Modules(names) = targets else {
                    return refuse("target_parameters beside a regex or all-linear target_modules");
                };
                let mut experts = Vec::new();
                for p in params {
                    match p.rsplit_once("experts.") {
                        Some((_, param)) if ["gate_up_proj", "down_proj"].contains(&param) => {
                            experts.push(param.to_string())
                        }
                        _ => {
                            return refuse(&format!(
                                "target_parameters {p:?} (the experts' gate_up_proj and down_proj are)"
                            ));
                        }
                    }
                }
                // The named modules, and the experts' parameters as lora-tune's per-expert
                // layers (`…block_sparse_moe.experts.{e}.gate_up_proj`).
                let escape = |n: &String| regex::escape(n);
                let modules = names.iter().map(escape).collect::<Vec<_>>().join("|");
                let params = experts.iter().map(escape).collect::<Vec<_>>().join("|");
                let mut regex = format!(r"(?:.*\.)?block_sparse_moe\.experts\.\d+\.(?:{params})");
                if !modules.is_empty() {
                    regex = format!(r"(?:.*\.)?(?:{modules})|{regex}");
                }
                Targets::Regex(regex)
            }
        };
        let layers = match &self.layers_to_transform {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(vec![
                n.as_u64()
                    .ok_or_else(|| invalid("layers_to_transform: not an index"))?
                    as u32,
            ]),
            Some(Value::Array(v)) => Some(
                v.iter()
                    .map(|n| {
                        n.as_u64()
                            .map(|n| n as u32)
                            .ok_or_else(|| invalid("layers_to_transform: not an index"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(other) => {
                return Err(invalid(&format!("layers_to_transform: unexpected {other}")));
            }
        };
        Ok(LoraSection {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets,
            layers,
            rslora: self.use_rslora,
            init: self.init()?,
            use_dora: self.use_dora,
            rank_pattern: self.rank_pattern.clone(),
            alpha_pattern: self.alpha_pattern.clone(),
            init_from: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PiSSA / OLoRA folders rebuild with their init (loading repeats it on the base); inits
    /// that change the base in ways we do not repeat are refused by name.
    #[test]
    fn base_changing_inits_are_repeated_or_refused() {
        let config = |init: Value| {
            let mut c = PeftConfig::new(&LoraSection::default(), &[], "base".into(), None);
            c.init_lora_weights = init;
            c.lora_section().map(|l| l.init)
        };
        assert_eq!(config(Value::Bool(true)).unwrap(), LoraInit::Kaiming);
        assert_eq!(config("gaussian".into()).unwrap(), LoraInit::Gaussian);
        assert_eq!(config("pissa".into()).unwrap(), LoraInit::Pissa);
        assert_eq!(config("olora".into()).unwrap(), LoraInit::Olora);
        for refused in ["pissa_niter_4", "loftq", "corda"] {
            let err = config(refused.into()).unwrap_err().to_string();
            assert!(err.contains(refused), "{err}");
        }
    }
}
