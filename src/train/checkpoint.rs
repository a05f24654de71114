//! Resumable checkpoints: `<out>/checkpoints/step-NNNNNN/` holds the adapters (PEFT keys, so any
//! checkpoint is also an adapter; with PiSSA / OLoRA also the initial ones, for the export's
//! conversion), the AdamW moments and `trainer_state.json` (step, optimiser
//! step count, f16's loss scale, and the settings that fix the data order). The directory is built under a temp
//! name and renamed into place, so a `step-*` directory is always complete. The data position
//! and dropout RNG are functions of (seed, step), so resuming replays exactly.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::early_stopping::Best;
use super::loss_scale::LossScale;
use super::optim::{AdamW, Moments};
use crate::dtype::Dtype;
use crate::model::adapted::{AdaptedModel, host};
use crate::peft::config::PeftConfig;
use crate::peft::folder::{self as peft, INITIAL_WEIGHTS_FILE, WEIGHTS_FILE};
use crate::transfer;
use crate::weights::WeightsError;
use crate::weights::host::HostTensors;
use crate::weights::safetensors::write;

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

/// Where the run is and what must match for a resume to continue it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: u64,
    pub total_steps: u64,
    pub seed: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub train_examples: usize,
    /// Tokens processed so far (for throughput figures across resumes).
    pub tokens: u64,
    /// The best evaluation so far and the early-stopping count (runs that compare evaluations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<Best>,
    /// f16 products' loss scale, so a resumed run scales and skips as the uninterrupted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

impl TrainerState {
    /// Why `self` (from a checkpoint) cannot continue a run configured as `now`, if it cannot.
    pub fn mismatch(&self, now: &TrainerState) -> Option<String> {
        let fields = [
            ("train.seed", self.seed, now.seed),
            (
                "train.batch_size",
                self.batch_size as u64,
                now.batch_size as u64,
            ),
            (
                "train.grad_accum",
                self.grad_accum as u64,
                now.grad_accum as u64,
            ),
            (
                "training examples",
                self.train_examples as u64,
                now.train_examples as u64,
            ),
            ("total steps", self.total_steps, now.total_steps),
        ];
        fields.iter().find(|(_, a, b)| a != b).map(|(what, a, b)| {
            format!("{what} was {a} in the checkpoint and is {b} now; a resume must use the same recipe and data")
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Peft(#[from] peft::PeftError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.into(),
        source,
    }
}

/// Writes a checkpoint of `model` and `optimizer` at `state.step` under `out/checkpoints/`.
pub fn save(
    out: &Path,
    model: &mut impl AdaptedModel,
    optimizer: &AdamW,
    state: &TrainerState,
    config: Option<&PeftConfig>,
    class_map: Option<&peft::ClassMap>,
) -> Result<PathBuf, CheckpointError> {
    let dest = dir_of(out, state.step);
    let root = dest.parent().expect("under checkpoints/");
    std::fs::create_dir_all(root).map_err(io(root))?;
    let tmp = crate::atomic::temp_path_beside(&dest);
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        let adapters = model.adapter_tensors()?;
        match config {
            // With its config a checkpoint is a complete PEFT adapter folder.
            Some(config) => peft::write(&tmp, &adapters, Dtype::F32, config, None)?,
            None => write(
                &tmp.join(WEIGHTS_FILE),
                &adapters,
                Dtype::F32,
                &[("format", "pt")],
            )?,
        }
        if let Some(map) = class_map {
            peft::write_class_map(&tmp, map)?;
        }
        let initial = model.initial_adapter_tensors()?;
        if !initial.is_empty() {
            write(
                &tmp.join(INITIAL_WEIGHTS_FILE),
                &initial,
                Dtype::F32,
                &[("format", "pt")],
            )?;
        }
        let mut moments = Vec::with_capacity(optimizer.moments.len() * 2);
        for ((key, _), m) in adapters.iter().zip(&optimizer.moments) {
            moments.push((format!("{key}.exp_avg"), host(&m.exp_avg)?));
            moments.push((format!("{key}.exp_avg_sq"), host(&m.exp_avg_sq)?));
        }
        let steps = optimizer.steps.to_string();
        write(
            &tmp.join(OPTIMIZER_FILE),
            &moments,
            Dtype::F32,
            &[("adamw_steps", &steps)],
        )?;
        let json = serde_json::to_string_pretty(state).expect("plain struct serialises");
        let path = tmp.join(STATE_FILE);
        crate::atomic::write_atomic(&path, |f| std::io::Write::write_all(f, json.as_bytes()))
            .map_err(io(&path))?;
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?; // a re-run of the same step
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| dest)
}

/// The checkpoint directory of `step` in the run directory `out`.
pub fn dir_of(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:06}"))
}

/// `dir` itself when it is a checkpoint, else the latest checkpoint of the run directory `dir`.
pub fn find(dir: &Path) -> Result<PathBuf, CheckpointError> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(dir.into());
    }
    let root = dir.join("checkpoints");
    let latest = std::fs::read_dir(&root)
        .map_err(io(&root))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step: u64 = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .max_by_key(|(step, _)| *step);
    latest
        .map(|(_, p)| p)
        .ok_or_else(|| CheckpointError::Invalid {
            path: dir.into(),
            detail: "no complete checkpoint here (expected checkpoints/step-N/trainer_state.json)"
                .into(),
        })
}

/// Loads the checkpoint `dir` into `model` and returns the optimiser and trainer state.
pub fn load(
    dir: &Path,
    model: &mut impl AdaptedModel,
    optimizer: &mut AdamW,
) -> Result<TrainerState, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    model.load_adapter_weights(&dir.join(WEIGHTS_FILE))?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let steps = crate::weights::safetensors::StFile::open(&opt_path)?
        .metadata
        .get("adamw_steps")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CheckpointError::Invalid {
            path: opt_path.clone(),
            detail: "metadata `adamw_steps` is missing".into(),
        })?;
    if steps == 0 {
        // No update yet (every step so far skipped): AdamW has no moments to restore.
        *optimizer = AdamW::new(optimizer.config);
        return Ok(state);
    }
    let mut moments = HostTensors::read(&opt_path)?;
    let device = model.device().clone();
    let mut restored = Vec::new();
    for (key, t) in model.params_mut() {
        let shape = t.dims();
        let mut take = |suffix: &str| -> Result<Tensor<2>, WeightsError> {
            let h = moments.take(&format!("{key}.{suffix}"), &shape)?;
            Ok(transfer::upload(TensorData::new(h.values, shape), &device))
        };
        restored.push(Moments {
            exp_avg: take("exp_avg")?,
            exp_avg_sq: take("exp_avg_sq")?,
        });
    }
    moments.finish()?;
    optimizer.moments = restored;
    optimizer.steps = steps;
    Ok(state)
}
