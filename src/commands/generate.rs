//! `lora-tune generate`: resolve and load the model, render the prompt, stream the continuation.

use std::io::Write;
use std::time::Instant;

use std::path::Path;

use anyhow::Context;

use crate::data::template::{self, Message, render_chat};
use crate::device::{self, DeviceChoice};
use crate::model::adapted::AdaptedModel;
use crate::model::generate::{Sampling, generate};
use crate::peft::folder::read_config;
use crate::source::Fetcher;

pub fn run(
    base: Option<&str>,
    adapter: Option<&Path>,
    prompt: &str,
    // Some: render the prompt as a user turn, in this template (None: the model's own).
    chat: Option<Option<&str>>,
    max_new: usize,
    sampling: Sampling,
    device: DeviceChoice,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        sampling.temperature >= 0.0,
        "--temperature must be 0 (greedy) or more"
    );
    anyhow::ensure!(
        sampling.top_p > 0.0 && sampling.top_p <= 1.0,
        "--top-p must be in (0, 1]"
    );
    anyhow::ensure!(
        base.is_some() || adapter.is_some(),
        "name the model: --base MODEL, or --adapter DIR to use the base the adapter names"
    );
    let named = match adapter {
        Some(dir) if base.is_none() => {
            read_config(dir)
                .with_context(|| format!("--adapter {}", dir.display()))?
                .base_model_name_or_path
        }
        _ => None,
    };
    let files = Fetcher::new().resolve_base(base, named.as_deref())?;
    let selected = device::select(device)?;
    eprintln!("device: {} ({})", selected.name, selected.why);
    let started = Instant::now();
    let tok = crate::model::tokenizer_of(&files)?;
    let mut model = crate::model::load(
        &files,
        &selected.device,
        crate::model::BaseStorage::default(),
    )
    .with_context(|| format!("loading {}", files.path().display()))?;
    eprintln!(
        "loaded {} in {:.1} s",
        files.path().display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = adapter {
        let sites = model.config.linear_sites();
        let config = model
            .apply_peft_folder(&sites, dir)
            .with_context(|| format!("--adapter {}", dir.display()))?;
        eprintln!(
            "adapter: {} (r={}, alpha={}, {} adapted layers)",
            dir.display(),
            config.r,
            config.lora_alpha,
            model.adapters_mut().len()
        );
    }

    let (text, add_special) = if let Some(chosen) = chat {
        let template = template::choose(chosen, tok.chat_template.as_deref()).context(
            "this model ships no chat template; name one with --template (e.g. gemma) or drop --chat",
        )?;
        let name = |id: Option<u32>| {
            id.and_then(|i| tok.tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        let messages = [Message {
            role: "user".into(),
            content: prompt.into(),
        }];
        // As apply_chat_template(tokenize=True): the template writes the special tokens itself.
        (
            render_chat(
                template,
                &messages,
                true,
                &name(tok.bos_id),
                &name(tok.eos_id),
            )?,
            false,
        )
    } else {
        (prompt.to_string(), true)
    };
    let ids = tok
        .encode(&text, add_special)
        .map_err(|e| anyhow::anyhow!("encoding the prompt: {e}"))?;
    let stop: Vec<u32> = tok.eos_id.into_iter().collect();

    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut generated = Vec::new();
    let mut shown = 0;
    let new = generate(&model, &ids, max_new, &stop, sampling, |id| {
        generated.push(id);
        // Decode everything so far and print what is new, holding back a partial UTF-8 char.
        if let Ok(text) = tok.decode(&generated, true)
            && !text.ends_with('\u{FFFD}')
            && let Some(fresh) = text.get(shown..).filter(|f| !f.is_empty())
        {
            let _ = write!(out, "{fresh}");
            let _ = out.flush();
            shown = text.len();
        }
    })?;
    writeln!(out)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} prompt tokens, {} new tokens in {secs:.2} s ({:.1} tokens/s)",
        ids.len(),
        new.len(),
        new.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}
