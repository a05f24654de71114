//! What every recipe-driven command (`run`, `plan`, `eval`) does before training: the recipe
//! validated into a [`Plan`], its model resolved and its header read, the adapters chosen
//! (PEFT's rules), the classes of a classifier read from its data ([`Prepared::load`]); then the
//! data encoded with the model's tokenizer and template ([`Prepared::load_data`]), the peak memory
//! predicted ([`Prepared::memory_estimate`]) and the model loaded with its adapters
//! ([`Prepared::load_model`]). No weights load before the last step, so a bad recipe, model
//! reference or data row fails in seconds. Prints nothing: `commands` shows what each step found.

use std::path::Path;

use anyhow::Context;
use burn::tensor::Device;

use crate::data::dataset::{Dataset, in_eval_split};
use crate::data::encode::Encoder;
use crate::data::template;
use crate::dtype::Dtype;
use crate::lora::report::ParameterReport;
use crate::lora::targets::{self, TargetLayer};
use crate::memory::{self, BatchShape, MemoryEstimate};
use crate::model::BaseStorage;
use crate::model::adapted::AdaptedModel;
use crate::model::{ModelConfig, TaskModel};
use crate::peft::config::PeftConfig;
use crate::plan::Plan;
use crate::recipe::{DataSection, RecipeFile, Task};
use crate::source::{Fetcher, Resolution};
use crate::weights::Inventory;
use crate::weights::tokenizer::ModelTokenizer;

/// A recipe validated, its model resolved and its adapters chosen (no weights loaded).
pub struct Prepared {
    pub plan: Plan,
    pub model: Resolution,
    /// The model files' listing (format, tensors, parameters).
    pub inventory: Inventory,
    pub config: ModelConfig,
    pub adapted: Vec<TargetLayer>,
    /// A classifier's classes (the training data's labels, sorted); None for a causal LM.
    pub labels: Option<Vec<String>>,
    /// PEFT's trainable-parameter report, a classifier's head included.
    pub report: ParameterReport,
}

impl Prepared {
    /// Loads and validates the recipe, resolves the model, reads its header, chooses the
    /// adapters; a classifier also reads its classes from the training data.
    pub fn load(recipe: &Path) -> anyhow::Result<Self> {
        let file = RecipeFile::load(recipe)?;
        let cwd = std::env::current_dir().context("reading the current directory")?;
        let plan = Plan::resolve(&file, &cwd)?;
        let model = Fetcher::new().resolve_first(&plan.sources)?;
        let inventory = Inventory::read(model.files.path())
            .with_context(|| format!("reading {}", model.files.path().display()))?;
        let config = crate::model::architecture_of(&model.files)?;
        if let ModelConfig::Bert(c) = &config {
            anyhow::ensure!(
                plan.task == Task::Classification,
                "{}: model.task: a BERT encoder has no language-model head; set model.task = \"classification\"",
                plan.recipe_path.display()
            );
            anyhow::ensure!(
                plan.data.max_len as usize <= c.max_position_embeddings,
                "{}: data.max_len = {} exceeds the encoder's max_position_embeddings ({}); lower data.max_len",
                plan.recipe_path.display(),
                plan.data.max_len,
                c.max_position_embeddings
            );
        }
        let experts = matches!(&config, ModelConfig::Decoder(d) if d.moe.is_some());
        anyhow::ensure!(
            plan.train.router_aux_loss_coef == 0.0 || experts,
            "{}: train.router_aux_loss_coef = {}: the router load-balancing loss is for mixtures of experts, and {} has no routed layers; remove the key",
            plan.recipe_path.display(),
            plan.train.router_aux_loss_coef,
            model.files.path().display()
        );
        let adapted = targets::select(&config.linear_sites(plan.pooling), &plan.lora)
            .with_context(|| format!("choosing LoRA targets ({})", plan.recipe_path.display()))?;
        let labels = match plan.task {
            Task::CausalLm => None,
            Task::Classification => {
                let d = &plan.data;
                Some(crate::data::rows::class_labels(
                    &d.train, d.format, d.strict,
                )?)
            }
        };
        let mut report = ParameterReport::new(&adapted, config.parameter_count());
        if plan.lora.use_dora {
            report = report.with_dora(&adapted);
        }
        if let Some(labels) = &labels {
            let head = match config {
                ModelConfig::Bert(_) => "classifier",
                ModelConfig::Decoder(_) => "score",
            };
            report = report.with_head(head, config.head_parameters(labels.len()));
        }
        Ok(Self {
            plan,
            model,
            inventory,
            config,
            adapted,
            labels,
            report,
        })
    }

    /// The PEFT config the run's adapters are saved with (each checkpoint and the export).
    pub fn peft_config(&self) -> PeftConfig {
        let reference = &self.model.source.reference;
        let config = PeftConfig::new(
            &self.plan.lora,
            &self.adapted,
            reference.peft_name(),
            reference.revision(),
        );
        match self.labels {
            Some(_) => config.for_classification(),
            None => config,
        }
    }

    /// The model's tokenizer (headers only, no weights).
    pub fn tokenizer(&self) -> anyhow::Result<ModelTokenizer> {
        let files = &self.model.files;
        crate::model::tokenizer_of(files)
            .with_context(|| format!("reading the tokenizer of {}", files.path().display()))
    }

    /// Reads and encodes the recipe's train and eval data with `tokenizer` and the model's (or
    /// the recipe's) chat template, padded to each batch's longest row until
    /// `Dataset::set_padding` says what the device wants; no weights load.
    pub fn load_data(
        &self,
        tokenizer: &ModelTokenizer,
    ) -> anyhow::Result<(Dataset, Option<Dataset>)> {
        let d = &self.plan.data;
        let encoder = Encoder {
            tokenizer,
            template: template::choose(d.template.as_deref(), tokenizer.chat_template.as_deref()),
            train_on_inputs: d.train_on_inputs,
            max_len: (self.plan.preference.as_ref())
                .and_then(|p| p.max_length)
                .unwrap_or(d.max_len) as usize,
            truncation: d.truncation,
            labels: self.labels.as_deref(),
        };
        // Evaluation scores each example alone; packing is for training throughput only.
        let eval_section = &DataSection {
            packing: false,
            ..d.clone()
        };
        let (train, eval) = match (&d.eval, d.eval_fraction) {
            (Some(eval), _) => (
                Dataset::load(&d.train, d, &encoder, &|_| true)?,
                Some(Dataset::load(eval, eval_section, &encoder, &|_| true)?),
            ),
            (None, Some(fraction)) => {
                let held_out = in_eval_split(self.plan.train.seed, fraction);
                (
                    Dataset::load(&d.train, d, &encoder, &|i| !held_out(i))?,
                    Some(Dataset::load(&d.train, eval_section, &encoder, &held_out)?),
                )
            }
            (None, None) => (Dataset::load(&d.train, d, &encoder, &|_| true)?, None),
        };
        for data in std::iter::once(&train).chain(eval.as_ref()) {
            let pairs = data
                .examples
                .iter()
                .filter(|e| e.rejected.is_some())
                .count();
            let path = data.path.display();
            match &self.plan.preference {
                Some(_) => anyhow::ensure!(
                    pairs == data.examples.len(),
                    "{path}: train.method = \"{}\" compares pairs, and {} of its rows are not preference rows (prompt, chosen, rejected)",
                    format!("{:?}", self.plan.train.method).to_lowercase(),
                    data.examples.len() - pairs
                ),
                None => anyhow::ensure!(
                    pairs == 0,
                    "{path}: preference rows (chosen, rejected) train with train.method = \"dpo\" or \"simpo\"; set it, or give SFT rows"
                ),
            }
        }
        Ok((train, eval))
    }

    /// Predicted peak memory of training on `train` (its largest micro-batch) with the frozen
    /// products in `products`: host memory on the CPU (`on_cpu`: the load's peak and flex's
    /// widening included), else device memory on a GPU. None for an encoder, whose memory the
    /// formula was not fitted to.
    pub fn memory_estimate(
        &self,
        train: &Dataset,
        on_cpu: bool,
        products: Dtype,
    ) -> Option<(MemoryEstimate, BatchShape)> {
        let ModelConfig::Decoder(config) = &self.config else {
            return None;
        };
        let t = &self.plan.train;
        // A preference micro-batch holds each pair's chosen and rejected rows.
        let rows_per = if train.is_pairs() { 2 } else { 1 };
        let batch = rows_per * (t.batch_size as usize).min(train.sequences.len());
        let shape = BatchShape {
            batch,
            seq: train.longest_padded(),
            scored: train.most_loss_tokens(batch),
            checkpointing: t.gradient_checkpointing,
        };
        // A and B (and DoRA's magnitudes): PEFT's trainable count, a decoder having no head.
        let trainable = self.report.trainable;
        let mut estimate = MemoryEstimate::training(config, trainable, shape, on_cpu);
        if self.plan.lora.init.reads_base() {
            // PiSSA / OLoRA keep the initial A and B for the export's conversion.
            estimate.adapters += trainable * 4;
        }
        let storage = self.base_storage(products);
        let base = memory::frozen_base_bytes(storage, &self.model.files, config, estimate.weights);
        estimate.weights = base.weights(on_cpu, products);
        if on_cpu {
            estimate.weights += memory::tied_head_widening(config, products, shape.scored);
            estimate.loading = base.loading;
        }
        Some((estimate, shape))
    }

    /// How the base is held with the frozen products in `products`: the plan's storage, the
    /// dense matrices in the products' half type where they compute in one (narrowed as they
    /// load, so a device never holds the f32 base).
    pub fn base_storage(&self, products: Dtype) -> BaseStorage {
        let planned = self.plan.base_storage();
        BaseStorage {
            dense: match products {
                Dtype::F32 => planned.dense,
                half => half,
            },
            ..planned
        }
    }

    /// Loads the model the recipe trains onto `device` (a causal LM, or a classifier with a
    /// fresh head over the data's classes) with its frozen products in `products`, and puts
    /// fresh adapters on the chosen layers.
    pub fn load_model(&self, device: &Device, products: Dtype) -> anyhow::Result<TaskModel> {
        let (plan, files) = (&self.plan, &self.model.files);
        let load = || -> Result<TaskModel, crate::model::LoadError> {
            Ok(match &self.labels {
                None => {
                    let mut lm = crate::model::load(files, device, self.base_storage(products))?;
                    lm.gradient_checkpointing = plan.train.gradient_checkpointing;
                    lm.router_aux_loss_coef = plan.train.router_aux_loss_coef;
                    lm.preference = plan.preference_loss();
                    TaskModel::Lm(lm)
                }
                Some(labels) => TaskModel::Classifier(crate::model::load_classifier(
                    files,
                    device,
                    labels.clone(),
                    plan.pooling,
                    plan.train.seed,
                )?),
            })
        };
        let mut model = load().with_context(|| format!("loading {}", files.path().display()))?;
        model.attach_adapters(&self.adapted, &plan.lora, plan.train.seed)?;
        Ok(model)
    }
}
