//! A recipe validated and resolved: every value range checked (with the recipe's file:line:key),
//! relative paths made absolute against the recipe's directory, exclusive options settled.
//! `commands` run a [`Plan`], never a raw recipe. Pure: reads no weights, touches no device.

use std::path::{Path, PathBuf};

use crate::dtype::{ComputeDtype, Dtype};
use crate::model::BaseStorage;
use crate::recipe::{
    BestMetric, DataFormat, DataSection, ExportFormat, ExportSection, LoraSection, Pooling,
    PreferenceReference, PreferenceSection, RecipeError, RecipeFile, Targets, Task, TrainMethod,
    TrainSection,
};
use crate::source::Source;
use crate::weights::blocks::BlockFormat;

/// When training stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    MaxSteps(u32),
    Epochs(f64),
}

/// Warmup length, before it is turned into steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    Steps(u32),
    Ratio(f64),
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Recipe file name without `.toml`; names the default output directory.
    pub name: String,
    pub recipe_path: PathBuf,
    /// Model sources in the order they are tried.
    pub sources: Vec<Source>,
    pub dtype: Dtype,
    /// What the frozen base's products compute in, before the device resolves `auto`.
    pub compute_dtype: ComputeDtype,
    pub keep_quantized: bool,
    pub quantize: Option<BlockFormat>,
    pub quantize_embeddings: Option<BlockFormat>,
    pub task: Task,
    pub pooling: Pooling,
    pub lora: LoraSection,
    /// Paths absolute.
    pub data: DataSection,
    pub train: TrainSection,
    pub stop: Stop,
    pub warmup: Warmup,
    pub export: ExportSection,
    /// Where exports go, absolute.
    pub out_dir: PathBuf,
    /// `train.method = "dpo" | "simpo"`: the `[preference]` section (its defaults where
    /// absent); None for SFT.
    pub preference: Option<PreferenceSection>,
}

impl Plan {
    /// The loss of a preference run (`train.method = "dpo" | "simpo"`); None for SFT.
    pub fn preference_loss(&self) -> Option<crate::train::preference::PreferenceLoss> {
        use crate::train::preference::{Method, PreferenceLoss};
        let p = self.preference.as_ref()?;
        Some(PreferenceLoss {
            method: match self.train.method {
                TrainMethod::Simpo => Method::Simpo,
                _ => Method::Dpo,
            },
            beta: p.beta,
            simpo_gamma: p.simpo_gamma,
            sft_weight: p.sft_weight,
        })
    }

    /// DPO against the adapter the run starts from (`preference.reference =
    /// "initial_adapter"`).
    pub fn initial_adapter_reference(&self) -> bool {
        self.train.method == TrainMethod::Dpo
            && (self.preference.as_ref())
                .is_some_and(|p| p.reference == PreferenceReference::InitialAdapter)
    }

    /// How the run holds the frozen base's linear weights.
    pub fn base_storage(&self) -> BaseStorage {
        BaseStorage {
            keep_quantized: self.keep_quantized,
            quantize: self.quantize,
            quantize_embeddings: self.quantize_embeddings,
            // Products in a half type take their weights in it, stored so from the load on.
            dense: self.compute_dtype.half().unwrap_or(self.dtype),
        }
    }

    /// Validates `file` and resolves it; `cwd` anchors the default output directory.
    pub fn resolve(file: &RecipeFile, cwd: &Path) -> Result<Self, RecipeError> {
        let recipe = &file.recipe;
        let check = |ok: bool, key: &str, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(file.error(key, msg))
            }
        };

        check(
            !recipe.model.source.0.is_empty(),
            "model.source",
            "needs at least one model reference",
        )?;
        let sources = recipe
            .model
            .source
            .0
            .iter()
            .map(|e| Source::parse(&e.uri, e.sha256.as_deref(), file.dir()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file.error("model.source", e.to_string()))?;

        check(
            recipe.lora.rank >= 1,
            "lora.rank",
            "must be at least 1 (typical: 4 to 64)",
        )?;
        check(
            recipe.lora.alpha.is_finite() && recipe.lora.alpha > 0.0,
            "lora.alpha",
            "must be a positive number (typical: 2 × rank)",
        )?;
        check(
            (0.0..1.0).contains(&recipe.lora.dropout),
            "lora.dropout",
            "must be in [0, 1)",
        )?;
        if let Targets::Modules(names) = &recipe.lora.targets {
            check(
                !names.is_empty(),
                "lora.targets",
                r#"is empty; name modules such as ["q_proj", "v_proj"] or use "all-linear""#,
            )?;
        }
        if let Targets::Regex(pattern) = &recipe.lora.targets {
            regex::Regex::new(pattern)
                .map_err(|e| file.error("lora.targets", format!("is not a valid regex: {e}")))?;
            // PEFT ignores layers_to_transform for a regex target; refusing beats diverging.
            check(
                recipe.lora.layers.is_none(),
                "lora.layers",
                "cannot combine with a regex `targets`; put the layer indices in the regex",
            )?;
        }
        let pattern_keys = [
            (
                "lora.rank_pattern",
                recipe.lora.rank_pattern.keys().collect::<Vec<_>>(),
            ),
            (
                "lora.alpha_pattern",
                recipe.lora.alpha_pattern.keys().collect(),
            ),
        ];
        for (table, keys) in pattern_keys {
            for key in keys {
                regex::Regex::new(key)
                    .map_err(|e| file.error(table, format!("`{key}` is not a valid regex: {e}")))?;
            }
        }
        check(
            recipe.lora.rank_pattern.values().all(|&r| r >= 1),
            "lora.rank_pattern",
            "every rank must be at least 1",
        )?;
        check(
            recipe
                .lora
                .alpha_pattern
                .values()
                .all(|&a| a.is_finite() && a > 0.0),
            "lora.alpha_pattern",
            "every alpha must be positive",
        )?;

        let mut lora = recipe.lora.clone();
        if let Some(dir) = &lora.init_from {
            let dir = existing(file, "lora.init_from", dir)?;
            check(
                dir.join("adapter_model.safetensors").is_file(),
                "lora.init_from",
                "must be a PEFT adapter directory holding adapter_model.safetensors",
            )?;
            lora.init_from = Some(dir);
        }

        let mut data = recipe.data.clone();
        if let Some(t) = &data.template {
            check(
                crate::data::template::named(t).is_some() || t.contains("{%") || t.contains("{{"),
                "data.template",
                "must be `chatml`, `llama3` or an inline Jinja template",
            )?;
        }
        data.train = existing(file, "data.train", &data.train)?;
        if let Some(eval) = &data.eval {
            data.eval = Some(existing(file, "data.eval", eval)?);
            check(
                data.eval_fraction.is_none(),
                "data.eval_fraction",
                "give either `eval` or `eval_fraction`, not both",
            )?;
        }
        if let Some(f) = data.eval_fraction {
            check(
                f > 0.0 && f < 1.0,
                "data.eval_fraction",
                "must be in (0, 1), e.g. 0.1",
            )?;
        }
        check(
            data.max_len >= 2,
            "data.max_len",
            "must be at least 2 tokens",
        )?;

        let train = &recipe.train;
        check(
            train.lr.is_finite() && train.lr > 0.0,
            "train.lr",
            "must be a positive number (typical: 1e-4 to 3e-4)",
        )?;
        check(
            train.weight_decay.is_finite() && train.weight_decay >= 0.0,
            "train.weight_decay",
            "must be 0 or more",
        )?;
        check(
            train
                .loraplus_lr_ratio
                .is_none_or(|r| r.is_finite() && r > 0.0),
            "train.loraplus_lr_ratio",
            "must be a positive number (LoRA+'s paper suggests 16)",
        )?;
        check(
            train.betas.iter().all(|b| (0.0..1.0).contains(b)),
            "train.betas",
            "both must be in [0, 1)",
        )?;
        check(
            train.eps.is_finite() && train.eps > 0.0,
            "train.eps",
            "must be positive",
        )?;
        check(
            train.batch_size >= 1,
            "train.batch_size",
            "must be at least 1",
        )?;
        check(
            train.grad_accum >= 1,
            "train.grad_accum",
            "must be at least 1",
        )?;
        check(
            train.max_grad_norm > 0.0,
            "train.max_grad_norm",
            "must be positive; use inf to disable clipping",
        )?;
        check(
            train.eval_every != Some(0),
            "train.eval_every",
            "must be at least 1",
        )?;
        check(
            train.router_aux_loss_coef.is_finite() && train.router_aux_loss_coef >= 0.0,
            "train.router_aux_loss_coef",
            "must be 0 (off) or positive",
        )?;
        check(
            train.checkpoint_every != Some(0),
            "train.checkpoint_every",
            "must be at least 1",
        )?;
        let has_eval = data.eval.is_some() || data.eval_fraction.is_some();
        check(
            train.early_stopping_patience != Some(0),
            "train.early_stopping_patience",
            "must be at least 1 (evaluations without improvement)",
        )?;
        if train.early_stopping_patience.is_some() {
            check(
                has_eval,
                "train.early_stopping_patience",
                "needs an eval split: set data.eval or data.eval_fraction",
            )?;
            check(
                train.eval_every.is_some(),
                "train.early_stopping_patience",
                "needs train.eval_every: early stopping compares the evaluations made during training",
            )?;
        }
        if let Some(t) = train.early_stopping_threshold {
            check(
                train.early_stopping_patience.is_some(),
                "train.early_stopping_threshold",
                "only applies with train.early_stopping_patience; set that too or drop this",
            )?;
            check(
                t.is_finite() && t >= 0.0,
                "train.early_stopping_threshold",
                "must be 0 or more",
            )?;
        }
        check(
            !train.keep_best || has_eval,
            "train.keep_best",
            "needs an eval split to pick the best checkpoint: set data.eval or data.eval_fraction",
        )?;
        if let Some(metric) = train.metric_for_best_model {
            check(
                train.early_stopping_patience.is_some() || train.keep_best,
                "train.metric_for_best_model",
                "only applies with train.early_stopping_patience or train.keep_best; set one or drop this",
            )?;
            let preference = train.method != TrainMethod::Sft;
            check(
                metric == BestMetric::Loss
                    || recipe.model.task == Task::Classification
                    || (preference && metric == BestMetric::Accuracy),
                "train.metric_for_best_model",
                r#"accuracy and macro_f1 are for model.task = "classification" (a preference run compares "loss" or "accuracy", its eval/rewards/accuracies); a causal LM compares "loss""#,
            )?;
        }
        let stop = match (train.max_steps, train.epochs) {
            (Some(_), Some(_)) => {
                return Err(file.error(
                    "train.epochs",
                    "give either `max_steps` or `epochs`, not both",
                ));
            }
            (Some(0), None) => return Err(file.error("train.max_steps", "must be at least 1")),
            (Some(n), None) => Stop::MaxSteps(n),
            (None, Some(e)) if !(e.is_finite() && e > 0.0) => {
                return Err(file.error("train.epochs", "must be positive"));
            }
            (None, Some(e)) => Stop::Epochs(e),
            (None, None) => Stop::Epochs(1.0),
        };
        let warmup = match (train.warmup_steps, train.warmup_ratio) {
            (Some(_), Some(_)) => {
                return Err(file.error(
                    "train.warmup_ratio",
                    "give either `warmup_steps` or `warmup_ratio`, not both",
                ));
            }
            (Some(n), None) => Warmup::Steps(n),
            (None, Some(f)) if !(0.0..1.0).contains(&f) => {
                return Err(file.error("train.warmup_ratio", "must be in [0, 1)"));
            }
            (None, Some(f)) => Warmup::Ratio(f),
            (None, None) => Warmup::Steps(0),
        };

        let export = &recipe.export;
        check(
            !export.formats.is_empty(),
            "export.formats",
            r#"is empty; use any of "peft", "gguf", "merged""#,
        )?;
        check(
            no_repeats(&export.formats),
            "export.formats",
            "lists a format twice",
        )?;

        let compute = recipe.model.compute_dtype;
        check(
            !(compute == ComputeDtype::Bf16 && recipe.model.dtype == Dtype::F16),
            "model.dtype",
            r#"= "f16" with compute_dtype = "bf16" would round the weights twice; store them as "bf16" or "f32""#,
        )?;

        if recipe.model.task == Task::Classification {
            check(
                matches!(data.format, DataFormat::Classification | DataFormat::Auto),
                "data.format",
                r#"must be "classification" (rows of text and label) for model.task = "classification""#,
            )?;
            check(
                !data.packing,
                "data.packing",
                r#"must be false for model.task = "classification": each row is classified alone"#,
            )?;
            check(
                !train.gradient_checkpointing,
                "train.gradient_checkpointing",
                "is for causal-LM decoders; a classifier trains with it off",
            )?;
            check(
                train.router_aux_loss_coef == 0.0,
                "train.router_aux_loss_coef",
                "is for causal-LM mixtures of experts; a classifier trains without it",
            )?;
            // A classifier's backward is autodiff's, whose graph keeps every widened weight.
            check(
                recipe.model.dtype == Dtype::F32,
                "model.dtype",
                "bf16/f16 storage is for causal-LM decoders (a classifier's backward would keep every layer's widened f32 weights); use f32",
            )?;
            check(
                !recipe.model.keep_quantized,
                "model.keep_quantized",
                "is for causal-LM decoders from GGUF files; drop it for a classifier",
            )?;
            check(
                recipe.model.quantize.is_none(),
                "model.quantize",
                "is for causal-LM decoders; drop it for a classifier",
            )?;
            check(
                recipe.model.quantize_embeddings.is_none(),
                "model.quantize_embeddings",
                "is for causal-LM decoders; drop it for a classifier",
            )?;
            check(
                export.formats.iter().all(|f| *f == ExportFormat::Peft),
                "export.formats",
                r#"a classifier exports "peft" only (GGUF LoRA and merged models are for causal LMs)"#,
            )?;
        }
        check(
            data.pad_to_multiple_of != Some(0),
            "data.pad_to_multiple_of",
            "must be at least 1 (1 = pad to the longest row only)",
        )?;

        if recipe.lora.init.reads_base() {
            check(
                !recipe.lora.use_dora,
                "lora.use_dora",
                "PiSSA / OLoRA with DoRA is not offered: PEFT's conversion to a plain LoRA drops the magnitudes, so the export would not be what PEFT makes; use one of the two",
            )?;
            check(
                !recipe.model.keep_quantized && recipe.model.quantize.is_none(),
                "lora.init",
                "PiSSA / OLoRA take the adapter out of the base weight, which model.keep_quantized / model.quantize keep in blocks; drop those, or use kaiming / gaussian",
            )?;
        }

        // Settings that only work together: refused alone, never silently ignored.
        if recipe.lora.use_dora {
            check(
                !export.formats.contains(&ExportFormat::Gguf),
                "export.formats",
                r#"llama.cpp's LoRA GGUF has no DoRA magnitudes: drop "gguf" (export "merged" and convert that to GGUF instead) or set lora.use_dora = false"#,
            )?;
        }
        for (key, path) in [
            ("data.train", Some(&data.train)),
            ("data.eval", data.eval.as_ref()),
        ] {
            if let Some(path) = path {
                check(
                    path.is_dir()
                        || path
                            .extension()
                            .is_some_and(|x| x == "jsonl" || x == "json" || x == "csv"),
                    key,
                    "must be a .jsonl or .csv file, or a directory of them",
                )?;
            }
        }

        let preference = match train.method {
            TrainMethod::Sft => {
                check(
                    recipe.preference.is_none(),
                    "preference",
                    r#"is read with train.method = "dpo" or "simpo"; set the method or remove the section"#,
                )?;
                None
            }
            _ => Some(preference_plan(file, &recipe.preference, &data, train)?),
        };

        let name = file
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        let out_dir = match &export.out_dir {
            Some(dir) => lexically_normal(&file.dir().join(dir)),
            None => cwd.join("adapters").join(&name),
        };
        Ok(Self {
            name,
            recipe_path: file.path.clone(),
            sources,
            dtype: recipe.model.dtype,
            compute_dtype: compute,
            keep_quantized: recipe.model.keep_quantized,
            quantize: recipe.model.quantize.map(|q| q.format()),
            quantize_embeddings: recipe.model.quantize_embeddings.map(|q| q.format()),
            task: recipe.model.task,
            pooling: recipe.model.pooling,
            lora,
            data,
            train: train.clone(),
            stop,
            warmup,
            export: export.clone(),
            out_dir,
            preference,
        })
    }
}

/// `[preference]` for `train.method = "dpo" | "simpo"`, checked with what it must go with.
fn preference_plan(
    file: &RecipeFile,
    section: &Option<PreferenceSection>,
    data: &DataSection,
    train: &TrainSection,
) -> Result<PreferenceSection, RecipeError> {
    let recipe = &file.recipe;
    let check = |ok: bool, key: &str, msg: &str| match ok {
        true => Ok(()),
        false => Err(file.error(key, msg)),
    };
    let p = section.clone().unwrap_or_default();
    check(
        matches!(data.format, DataFormat::Preference | DataFormat::Auto),
        "data.format",
        r#"must be "preference" (rows of prompt, chosen and rejected) for a preference method"#,
    )?;
    check(
        !data.packing,
        "data.packing",
        "must be false for a preference method: each pair's two sequences are compared whole (TRL does not pack them either)",
    )?;
    check(
        recipe.model.task == Task::CausalLm,
        "model.task",
        "a preference method trains a causal LM",
    )?;
    check(
        train.router_aux_loss_coef == 0.0,
        "train.router_aux_loss_coef",
        "is not combined with a preference method yet; remove it",
    )?;
    check(
        p.beta.is_finite() && p.beta > 0.0,
        "preference.beta",
        "must be a positive number (DPO: 0.1 to 0.5; SimPO: 2 to 10)",
    )?;
    check(
        p.simpo_gamma.is_finite(),
        "preference.simpo_gamma",
        "must be a finite number",
    )?;
    check(
        p.sft_weight.is_finite() && p.sft_weight >= 0.0,
        "preference.sft_weight",
        "must be 0 or more",
    )?;
    check(
        p.max_length.is_none_or(|m| m >= 2),
        "preference.max_length",
        "must be at least 2 (a prompt token and a completion token)",
    )?;
    // Keys the other method does not read: refused when set away from their defaults.
    let defaults = PreferenceSection::default();
    check(
        train.method == TrainMethod::Simpo || p.simpo_gamma == defaults.simpo_gamma,
        "preference.simpo_gamma",
        r#"is SimPO's margin; train.method = "dpo" does not read it — remove it or set train.method = "simpo""#,
    )?;
    check(
        train.method == TrainMethod::Dpo || p.reference == defaults.reference,
        "preference.reference",
        r#"is DPO's; SimPO has no reference model — remove it or set train.method = "dpo""#,
    )?;
    if train.method == TrainMethod::Dpo {
        match p.reference {
            PreferenceReference::Base => check(
                recipe.lora.init_from.is_none(),
                "lora.init_from",
                r#"with DPO's preference.reference = "base": the adapters switched off are not the model the run starts from, so the first step would already be off its reference; set preference.reference = "initial_adapter" (the adapter from init_from, frozen) or train a fresh adapter"#,
            )?,
            PreferenceReference::InitialAdapter => check(
                recipe.lora.init_from.is_some(),
                "preference.reference",
                r#"= "initial_adapter" needs lora.init_from (the adapter to start from); a fresh adapter starts as the base, reference = "base""#,
            )?,
        }
        check(
            !recipe.lora.init.reads_base(),
            "lora.init",
            "PiSSA / OLoRA move part of the base into the adapter, so the adapters switched off are not the base DPO compares with; use kaiming or gaussian",
        )?;
    }
    Ok(p)
}

fn no_repeats(formats: &[ExportFormat]) -> bool {
    formats
        .iter()
        .enumerate()
        .all(|(i, f)| !formats[..i].contains(f))
}

/// `a/b/../c` → `a/c`, without touching the file system (the path may not exist yet).
fn lexically_normal(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `path` made absolute against the recipe's directory, refused if it does not exist.
fn existing(file: &RecipeFile, key: &str, path: &Path) -> Result<PathBuf, RecipeError> {
    let full = lexically_normal(&file.dir().join(path));
    if full.exists() {
        Ok(full)
    } else {
        Err(file.error(
            key,
            format!(
                "{} does not exist (paths are relative to the recipe file)",
                full.display()
            ),
        ))
    }
}
