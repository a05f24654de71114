//! The model card (README.md) a run writes into its PEFT folder: what was trained on what, the
//! figures, and how to load and serve it, with the front matter the Hugging Face hub reads.

use std::path::Path;

use super::servability::vllm_command;
use crate::peft::config::PeftConfig;
use crate::peft::conversion;
use crate::peft::folder::CLASS_MAP_FILE;

pub const FILE: &str = "README.md";

/// A finished run, as the card tells it.
pub struct ModelCard<'a> {
    pub name: &'a str,
    pub recipe: &'a Path,
    pub data: &'a Path,
    pub trainable: u64,
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// `eval loss … before training → loss …`, or `no eval split`.
    pub eval: String,
    /// Where the adapter folder is.
    pub dir: &'a Path,
}

impl ModelCard<'_> {
    pub fn render(&self, config: &PeftConfig) -> String {
        // PiSSA / OLoRA: the card describes the plain LoRA the folder holds after export.
        let (plain, init_note) = match conversion::needs_conversion(config) {
            true => (
                Some(conversion::plain_config(config)),
                format!(
                    "- initialised with {} at rank {}; exported as this plain LoRA for the original base\n",
                    config.init_lora_weights, config.r
                ),
            ),
            false => (None, String::new()),
        };
        let config = plain.as_ref().unwrap_or(config);
        let base = config.base_model_name_or_path.as_deref().unwrap_or("?");
        let classifier = super::is_classifier(config);
        let auto = if classifier {
            "AutoPeftModelForSequenceClassification"
        } else {
            "AutoPeftModelForCausalLM"
        };
        let loss = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        format!(
            "---\nbase_model: {base}\nlibrary_name: peft\ntags:\n- lora\n- lora-tune\n---\n\n\
             # {name}\n\n\
             LoRA adapter for `{base}`, trained by lora-tune {version} with the recipe `{recipe}` on \
             `{data}`.\n\n\
             - r = {r}, alpha = {alpha}{rs}, dropout {dropout}, targets: {targets}; {trainable} trainable parameters\n\
             {init_note}\
             - {steps} optimiser steps; train loss {first} → {last}; {eval}\n\n\
             ## Use\n\n\
             ```python\n{pre}from peft import {auto}\nmodel = {auto}.from_pretrained(\"{dir}\"{args})\n```\n\n\
             ```sh\n{vllm}\n```\n",
            name = self.name,
            version = env!("CARGO_PKG_VERSION"),
            recipe = self.recipe.display(),
            data = self.data.display(),
            r = config.r,
            alpha = config.lora_alpha,
            rs = if config.use_rslora { " (rsLoRA)" } else { "" },
            dropout = config.lora_dropout,
            targets = config.target_modules,
            trainable = self.trainable,
            steps = self.steps,
            first = loss(self.first_loss),
            last = loss(self.last_loss),
            eval = self.eval,
            dir = self.dir.display(),
            vllm = vllm_command(config, self.name, self.dir),
            pre = if classifier {
                format!(
                    "import json\nlabels = json.load(open(\"{}/{CLASS_MAP_FILE}\"))\n",
                    self.dir.display()
                )
            } else {
                String::new()
            },
            args = if classifier {
                ", num_labels=len(labels[\"id2label\"]), id2label=labels[\"id2label\"], label2id=labels[\"label2id\"]"
            } else {
                ""
            },
        )
    }
}
