//! The PEFT adapter folder — `adapter_config.json` + `adapter_model.safetensors` (PEFT key
//! names, f32/bf16/f16, `{"format": "pt"}` metadata) + a README model card, and a classifier's
//! `classifier.json` — as `save_pretrained` writes it, so PEFT, vLLM, TGI and LoRAX load it as it
//! is; and its config read back (`model::adapters` puts a folder's tensors on a model). Every
//! file is written atomically (temp + fsync + rename): a crash leaves the old file or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::{ConfigError, PeftConfig};
use crate::dtype::Dtype;
use crate::recipe::{LoraSection, Pooling};
use crate::weights::WeightsError;
use crate::weights::host::HostTensors;
use crate::weights::safetensors;
use crate::weights::tensor::HostTensor;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PiSSA / OLoRA checkpoints: the adapters as initialised (PEFT keys), which the export to a
/// plain LoRA subtracts ([`super::conversion`]).
pub const INITIAL_WEIGHTS_FILE: &str = "initial_adapter_model.safetensors";
/// A classifier's labels (id2label / label2id as transformers' config.json writes them) and
/// pooling. PEFT's own config has no place for them: it warns on and drops unknown keys.
pub const CLASS_MAP_FILE: &str = "classifier.json";

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
    #[error("{}: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
}

/// Writes `adapters` (PEFT keys) in `dtype` with `config` (and a model card) into `dir`.
pub fn write(
    dir: &Path,
    adapters: &[(String, HostTensor)],
    dtype: Dtype,
    config: &PeftConfig,
    readme: Option<&str>,
) -> Result<(), PeftError> {
    std::fs::create_dir_all(dir).map_err(|source| PeftError::Io {
        path: dir.into(),
        source,
    })?;
    safetensors::write(
        &dir.join(WEIGHTS_FILE),
        &per_expert_form(adapters),
        dtype,
        &[("format", "pt")],
    )?;
    write_text(&dir.join(CONFIG_FILE), &config.to_json())?;
    if let Some(text) = readme {
        write_text(&dir.join("README.md"), text)?;
    }
    Ok(())
}

/// Fused experts' adapters (`…mlp.experts.{e}.gate_up_proj`: A [r, in], B [2I, r], DoRA's
/// magnitude over the 2I rows) in PEFT's per-expert form: `gate_proj` and `up_proj` each with
/// that A and its half of the rows — the same products, under the module names PEFT (which
/// fuses them again on transformers 5, as a rank-2r adapter) and the servers know.
pub fn per_expert_form(adapters: &[(String, HostTensor)]) -> Vec<(String, HostTensor)> {
    let mut out = Vec::with_capacity(adapters.len());
    for (key, t) in target_parameters_form(adapters) {
        match split_gate_up(&key, &t).filter(|_| key.contains(".mlp.experts.")) {
            Some(halves) => out.extend(halves),
            None => out.push((key, t)),
        }
    }
    out
}

/// A fused expert's adapter factor (`…experts.{e}.gate_up_proj.<factor>`) as the gate's and
/// the up's: A shared, B's rows (DoRA's magnitude entries) split, the gate's half first as the
/// fused rows lie. None for any other key.
pub fn split_gate_up(key: &str, t: &HostTensor) -> Option<[(String, HostTensor); 2]> {
    let (module, factor) = key
        .split_once(".gate_up_proj.")
        .filter(|(module, _)| module.contains(".experts."))?;
    let name = |m: &str| format!("{module}.{m}.{factor}");
    if factor.starts_with("lora_A") {
        return Some([(name("gate_proj"), t.clone()), (name("up_proj"), t.clone())]);
    }
    let mut shape = t.shape.clone();
    let rows = if shape.len() == 2 && shape[0] == 1 {
        1
    } else {
        0
    };
    shape[rows] /= 2;
    let (gate, up) = t.values.split_at(t.values.len() / 2);
    let half = |values: &[f32]| HostTensor {
        shape: shape.clone(),
        values: values.to_vec(),
    };
    Some([(name("gate_proj"), half(gate)), (name("up_proj"), half(up))])
}

/// GraniteMoE's experts (`…block_sparse_moe.experts.{e}.gate_up_proj` / `down_proj`; its
/// checkpoints have no per-expert modules) in PEFT's `target_parameters` form: one adapter per
/// targeted 3-D parameter, A [r·E, in] expert-major and B [out, r·E] expert-minor
/// (`ParamWrapper.get_delta_weight`), keyed `…experts.lora_A.weight`, the parameter targeted
/// first innermost (`…experts.base_layer.lora_A.weight` when both are).
fn target_parameters_form(adapters: &[(String, HostTensor)]) -> Vec<(String, HostTensor)> {
    let mut groups: BTreeMap<ParameterFactor, Vec<(usize, &HostTensor)>> = BTreeMap::new();
    let mut out = Vec::with_capacity(adapters.len());
    for (key, t) in adapters {
        match target_parameter_of(key) {
            Some((stem, e, param, factor)) => groups
                .entry((stem.to_string(), param, factor.to_string()))
                .or_default()
                .push((e, t)),
            None => out.push((key.clone(), t.clone())),
        }
    }
    let params_of = |stem: &str| {
        TARGET_PARAMETERS
            .into_iter()
            .filter(|p| groups.keys().any(|(s, q, _)| s == stem && q == p))
            .collect::<Vec<_>>()
    };
    for ((stem, param, factor), mut experts) in groups.clone() {
        experts.sort_by_key(|(e, _)| *e);
        let params = params_of(&stem);
        let depth = params.len() - 1 - params.iter().position(|p| *p == param).unwrap_or(0);
        let key = format!("{stem}{}.{factor}", ".base_layer".repeat(depth));
        let n = experts.len();
        let t = if factor.starts_with("lora_A") {
            let [r, inp] = [experts[0].1.shape[0], experts[0].1.shape[1]];
            let values = experts.iter().flat_map(|(_, t)| t.values.clone()).collect();
            HostTensor {
                shape: vec![r * n, inp],
                values,
            }
        } else {
            let [rows, r] = [experts[0].1.shape[0], experts[0].1.shape[1]];
            let mut values = vec![0f32; rows * r * n];
            for (e, (_, t)) in experts.iter().enumerate() {
                for row in 0..rows {
                    for j in 0..r {
                        values[row * r * n + j * n + e] = t.values[row * r + j];
                    }
                }
            }
            HostTensor {
                shape: vec![rows, r * n],
                values,
            }
        };
        out.push((key, t));
    }
    out
}

/// (stem `…experts`, parameter, factor): one of a target_parameters folder's tensors.
type ParameterFactor = (String, &'static str, String);

/// The 3-D expert parameters PEFT's `target_parameters` adapts here, innermost first.
const TARGET_PARAMETERS: [&str; 2] = ["gate_up_proj", "down_proj"];

/// (stem `…block_sparse_moe.experts`, expert, parameter, factor) of a GraniteMoE expert's
/// adapter key.
fn target_parameter_of(key: &str) -> Option<(&str, usize, &'static str, &str)> {
    let (stem, rest) = key.split_once(".block_sparse_moe.experts.")?;
    let (e, rest) = rest.split_once('.')?;
    let e: usize = e.parse().ok()?;
    let (param, factor) = rest.split_once('.')?;
    let param = TARGET_PARAMETERS.into_iter().find(|p| *p == param)?;
    let stem = &key[..stem.len() + ".block_sparse_moe.experts".len()];
    Some((stem, e, param, factor))
}

/// The adapter tensors of `file` (a folder's adapter_model.safetensors), with a
/// `target_parameters` folder's 3-D adapters split into the per-expert tensors lora-tune's
/// experts take.
pub fn read_adapter_tensors(file: &Path) -> Result<HostTensors, WeightsError> {
    let mut tensors = HostTensors::read(file)?;
    let config = file.parent().map(|d| d.join(CONFIG_FILE));
    let Some(config) = config
        .filter(|c| c.exists())
        .and_then(|c| read_config(c.parent()?).ok())
    else {
        return Ok(tensors);
    };
    if let Some(params) = &config.target_parameters {
        let params: Vec<&'static str> = params
            .iter()
            .filter_map(|p| TARGET_PARAMETERS.into_iter().find(|t| p.ends_with(t)))
            .collect();
        expand_target_parameters(&mut tensors, &params, config.r as usize)?;
    }
    Ok(tensors)
}

/// The inverse of [`target_parameters_form`]: each `…experts[.base_layer].lora_{A,B}.weight`
/// of `tensors` (adapters on `params`, the folder's `target_parameters` in order, of rank `r`)
/// split into per-expert tensors under the keys lora-tune's experts have.
pub fn expand_target_parameters(
    tensors: &mut HostTensors,
    params: &[&'static str],
    r: usize,
) -> Result<(), WeightsError> {
    let keys: Vec<String> = tensors
        .names()
        .into_iter()
        .filter(|k| k.contains(".block_sparse_moe.experts.") && !k.contains(".experts.0."))
        .filter(|k| {
            let after = k.split(".block_sparse_moe.experts.").nth(1).unwrap_or("");
            after.starts_with("lora_") || after.starts_with("base_layer.")
        })
        .collect();
    for key in keys {
        let (stem, rest) = key.split_once(".experts.").expect("filtered above");
        let depth = rest.matches("base_layer.").count();
        let factor = rest.trim_start_matches("base_layer.");
        let Some(&param) = params
            .len()
            .checked_sub(1 + depth)
            .and_then(|i| params.get(i))
        else {
            continue;
        };
        let t = tensors.take_any(&key)?;
        let fail =
            |detail: String| WeightsError::format(&tensors.origin, format!("`{key}`: {detail}"));
        if t.shape.len() != 2 || r == 0 {
            return Err(fail(format!(
                "shape {:?} is not a target_parameters adapter",
                t.shape
            )));
        }
        let a = factor.starts_with("lora_A");
        let n = if a { t.shape[0] / r } else { t.shape[1] / r };
        if n == 0 || (if a { t.shape[0] } else { t.shape[1] }) != n * r {
            return Err(fail(format!(
                "shape {:?} does not hold rank {r} for each expert",
                t.shape
            )));
        }
        for e in 0..n {
            let name = format!("{stem}.experts.{e}.{param}.{factor}");
            let part = if a {
                let cols = t.shape[1];
                HostTensor {
                    shape: vec![r, cols],
                    values: t.values[e * r * cols..(e + 1) * r * cols].to_vec(),
                }
            } else {
                let rows = t.shape[0];
                let mut values = Vec::with_capacity(rows * r);
                for row in 0..rows {
                    for j in 0..r {
                        values.push(t.values[row * r * n + j * n + e]);
                    }
                }
                HostTensor {
                    shape: vec![rows, r],
                    values,
                }
            };
            tensors.insert(name, part);
        }
    }
    Ok(())
}

/// The inverse of [`per_expert_form`] for one trained tensor `key` of a fused expert
/// (`…mlp.experts.{e}.gate_up_proj.lora_A.weight`, dims as the model holds it): taken from the
/// folder's gate_proj and up_proj tensors, which must share A (a folder trained per expert
/// whose two A differ is a rank-2r adapter here, and is refused). None for any other key.
pub fn fused_expert_factor(
    tensors: &mut HostTensors,
    key: &str,
    dims: [usize; 2],
) -> Result<Option<HostTensor>, WeightsError> {
    let Some((module, factor)) = key
        .split_once(".gate_up_proj.")
        .filter(|(module, _)| module.contains(".mlp.experts."))
    else {
        return Ok(None);
    };
    let name = |m: &str| format!("{module}.{m}.{factor}");
    let magnitude = factor.starts_with("lora_magnitude_vector");
    let half: Vec<usize> = match (factor.starts_with("lora_A"), magnitude) {
        (true, _) => dims.to_vec(),
        (false, true) => vec![dims[1] / 2],
        (false, false) => vec![dims[0] / 2, dims[1]],
    };
    let (gate, up) = (
        tensors.take(&name("gate_proj"), &half)?,
        tensors.take(&name("up_proj"), &half)?,
    );
    if factor.starts_with("lora_A") {
        if gate.values != up.values {
            return Err(WeightsError::format(
                &tensors.origin,
                format!(
                    "`{}` and `{}` differ: these adapters were trained on separate gate and up projections, which this model holds fused (its experts' gate_up_proj); load them onto the checkpoint stored per expert",
                    name("gate_proj"),
                    name("up_proj")
                ),
            ));
        }
        return Ok(Some(gate));
    }
    let mut values = gate.values;
    values.extend(up.values);
    let shape = match magnitude {
        true => vec![dims[1]],
        false => dims.to_vec(),
    };
    Ok(Some(HostTensor { shape, values }))
}

/// A fused expert `module` (`…mlp.experts.{e}.gate_up_proj`, rank r) folded from the folder's
/// per-expert gate_proj and up_proj adapters, which may each have their own A: (A [2r, in] =
/// [A_gate; A_up], B [2I, 2r] block-diagonal), so s·B·A adds s·B_gate·A_gate to the gate rows
/// and s·B_up·A_up to the up rows (what a merge needs; PEFT converts per-expert adapters to
/// fused experts the same way). None where the folder has no such pair.
pub fn fused_expert_fold(
    tensors: &mut HostTensors,
    module: &str,
    [r, inp]: [usize; 2],
    half_out: usize,
) -> Result<Option<(HostTensor, HostTensor)>, WeightsError> {
    let Some(stem) = module
        .strip_suffix(".gate_up_proj")
        .filter(|stem| stem.contains(".mlp.experts."))
    else {
        return Ok(None);
    };
    let key = |m: &str, f: char| super::factor_key(&format!("{stem}.{m}"), f);
    if !tensors.contains(&key("gate_proj", 'A')) {
        return Ok(None);
    }
    let mut a = Vec::with_capacity(2 * r * inp);
    let mut b = vec![0f32; 2 * half_out * 2 * r];
    for (i, m) in ["gate_proj", "up_proj"].into_iter().enumerate() {
        a.extend(tensors.take(&key(m, 'A'), &[r, inp])?.values);
        let part = tensors.take(&key(m, 'B'), &[half_out, r])?.values;
        for (row, values) in part.chunks_exact(r).enumerate() {
            let at = (i * half_out + row) * 2 * r + i * r;
            b[at..at + r].copy_from_slice(values);
        }
    }
    let a = HostTensor {
        shape: vec![2 * r, inp],
        values: a,
    };
    let b = HostTensor {
        shape: vec![2 * half_out, 2 * r],
        values: b,
    };
    Ok(Some((a, b)))
}

/// What `classifier.json` holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassMap {
    pub id2label: std::collections::BTreeMap<String, String>,
    pub label2id: std::collections::BTreeMap<String, u32>,
    pub pooling: Pooling,
}

impl ClassMap {
    /// The map of `labels`, in logit order.
    pub fn new(labels: &[String], pooling: Pooling) -> Self {
        Self {
            id2label: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
            label2id: labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as u32))
                .collect(),
            pooling,
        }
    }

    /// The labels in id order.
    pub fn labels(&self) -> Vec<String> {
        let mut by_id: Vec<(u32, &String)> = self.label2id.iter().map(|(l, &i)| (i, l)).collect();
        by_id.sort();
        by_id.into_iter().map(|(_, l)| l.clone()).collect()
    }
}

/// Writes `classifier.json` into `dir`.
pub fn write_class_map(dir: &Path, map: &ClassMap) -> Result<(), PeftError> {
    let json = serde_json::to_string_pretty(map).expect("plain data serialises") + "\n";
    write_text(&dir.join(CLASS_MAP_FILE), &json)
}

/// Reads `classifier.json` of a classifier's adapter folder.
pub fn read_class_map(dir: &Path) -> Result<ClassMap, PeftError> {
    let path = dir.join(CLASS_MAP_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| PeftError::Io {
        path: path.clone(),
        source,
    })?;
    let map: ClassMap = serde_json::from_str(&text).map_err(|e| PeftError::Invalid {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let ids: Vec<u32> = map.label2id.values().copied().collect();
    if map.label2id.len() < 2 || (0..map.label2id.len() as u32).any(|i| !ids.contains(&i)) {
        return Err(PeftError::Invalid {
            path,
            detail: "label2id must number at least two labels 0, 1, …".into(),
        });
    }
    Ok(map)
}

fn write_text(path: &Path, text: &str) -> Result<(), PeftError> {
    crate::atomic::write_atomic(path, |f| std::io::Write::write_all(f, text.as_bytes())).map_err(
        |source| PeftError::Io {
            path: path.into(),
            source,
        },
    )
}

/// The config of the PEFT folder `dir`.
pub fn read_config(dir: &Path) -> Result<PeftConfig, PeftError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| PeftError::Io {
        path: path.clone(),
        source,
    })?;
    PeftConfig::from_json(&text).map_err(|source| PeftError::Config { path, source })
}

/// The config of the PEFT folder `dir` and the `[lora]` section that rebuilds its adapters; an
/// error when lora-tune's adapters cannot represent them.
pub fn read_lora(dir: &Path) -> Result<(PeftConfig, LoraSection), PeftError> {
    let config = read_config(dir)?;
    let lora = config.lora_section().map_err(|source| PeftError::Config {
        path: dir.join(CONFIG_FILE),
        source,
    })?;
    Ok((config, lora))
}
