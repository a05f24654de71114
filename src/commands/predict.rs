//! `lora-tune predict --adapter DIR FILE`: classify every row of a JSONL/CSV file (`text`, and
//! `label` when known) with a trained classifier adapter, write one JSON line per row (the
//! predicted label and every class's probability), and score the rows that carry a label.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::data::dataset::{Dataset, Layout};
use crate::data::encode::Encoder;
use crate::data::rows::{Example, read_rows};
use crate::device::{self, DeviceChoice};
use crate::model::TaskModel;
use crate::model::adapted::AdaptedModel;
use crate::peft::folder::{read_class_map, read_config};
use crate::recipe::{DataFormat, Truncation};
use crate::source::Fetcher;
use crate::train::classes::ClassMetrics;
use crate::train::evaluate::score;

pub struct PredictArgs<'a> {
    pub adapter: &'a Path,
    pub file: &'a Path,
    pub out: &'a Path,
    pub base: Option<&'a str>,
    pub max_len: usize,
    pub batch_size: usize,
}

pub fn run(args: &PredictArgs, device: DeviceChoice) -> anyhow::Result<()> {
    let dir = args.adapter;
    let config = read_config(dir).with_context(|| format!("--adapter {}", dir.display()))?;
    anyhow::ensure!(
        config.task_type.as_deref() == Some("SEQ_CLS"),
        "--adapter {}: task_type is {:?}, not a classifier (SEQ_CLS); `predict` needs an adapter trained with model.task = \"classification\"",
        dir.display(),
        config.task_type
    );
    let map = read_class_map(dir).with_context(|| format!("--adapter {}", dir.display()))?;
    let labels = map.labels();
    let files =
        Fetcher::new().resolve_base(args.base, config.base_model_name_or_path.as_deref())?;

    // Rows first: a bad file fails before any weights load.
    let (rows, skipped) = read_rows(args.file, DataFormat::Auto, false)?;
    for bad in skipped.iter().take(5) {
        eprintln!("skipped {bad}");
    }
    let mut gold = Vec::with_capacity(rows.len());
    let examples: Vec<Example> = rows
        .iter()
        .map(|row| match &row.example {
            Example::Classification { text, label } => {
                gold.push(Some(label.clone()));
                Ok(Example::Classification {
                    text: text.clone(),
                    label: label.clone(),
                })
            }
            Example::Text(text) => {
                gold.push(None);
                // Unlabelled: any class stands in; its row is not scored.
                Ok(Example::Classification {
                    text: text.clone(),
                    label: labels[0].clone(),
                })
            }
            _ => Err(anyhow::anyhow!(
                "{}:{}: `predict` reads rows with a `text` field (and optionally `label`)",
                row.file.display(),
                row.line
            )),
        })
        .collect::<anyhow::Result<_>>()?;

    let selected = device::select(device)?;
    eprintln!("device: {} ({})", selected.name, selected.why);
    let started = Instant::now();
    let tokenizer = crate::model::tokenizer_of(&files)?;
    let classifier =
        crate::model::load_classifier(&files, &selected.device, labels.clone(), map.pooling, 0)
            .with_context(|| format!("loading {}", files.path().display()))?;
    let mut model = TaskModel::Classifier(classifier);
    let sites = crate::model::architecture_of(&files)?.linear_sites(map.pooling);
    model
        .apply_peft_folder(&sites, dir)
        .with_context(|| format!("--adapter {}", dir.display()))?;
    eprintln!(
        "loaded {} + {} in {:.1} s",
        files.path().display(),
        dir.display(),
        started.elapsed().as_secs_f64()
    );

    // An encoder has no positions past max_position_embeddings: longer rows are truncated there.
    let max_len = match &model {
        TaskModel::Classifier(c) => match &c.body {
            crate::model::classifier::Body::Bert(b) => {
                args.max_len.min(b.config.max_position_embeddings)
            }
            crate::model::classifier::Body::Decoder(_) => args.max_len,
        },
        TaskModel::Lm(_) => args.max_len,
    };
    let encoder = Encoder {
        tokenizer: &tokenizer,
        template: None,
        train_on_inputs: false,
        max_len,
        truncation: Truncation::Truncate,
        labels: Some(&labels),
    };
    let mut encoded = Vec::with_capacity(examples.len());
    for (row, example) in rows.iter().zip(&examples) {
        let (e, _) = encoder
            .encode(example)
            .map_err(|why| anyhow::anyhow!("{}:{}: {why}", row.file.display(), row.line))?;
        encoded.push(e);
    }
    let layout = Layout {
        pad_id: tokenizer.pad_id.unwrap_or(0),
        pad_to_multiple_of: 1,
        max_len,
        pack_to: None,
    };
    let data = Dataset::new(args.file, encoded, Vec::new(), 0, layout);
    let started = Instant::now();
    let (_, _, predictions) = score(&mut model, &data, args.batch_size)?;
    let seconds = started.elapsed().as_secs_f64();

    crate::atomic::write_atomic(args.out, |f| {
        for (row, (p, gold)) in rows.iter().zip(predictions.iter().zip(&gold)) {
            let probabilities: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .zip(&p.probabilities)
                .map(|(l, &v)| (l.clone(), serde_json::Value::from(v)))
                .collect();
            let line = serde_json::json!({
                "source": format!("{}:{}", row.file.display(), row.line),
                "label": labels[p.predicted as usize],
                "gold": gold,
                "probabilities": probabilities,
            });
            writeln!(f, "{line}")?;
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "predict: {} rows in {:.1} s ({:.1} rows/s) → {}",
        predictions.len(),
        seconds,
        predictions.len() as f64 / seconds.max(1e-9),
        args.out.display()
    );
    let scored: Vec<(u32, u32)> = predictions
        .iter()
        .zip(&gold)
        .filter(|(_, g)| g.is_some())
        .map(|(p, _)| (p.gold, p.predicted))
        .collect();
    if !scored.is_empty() {
        println!("{} rows carry a label:", scored.len());
        print!("{}", ClassMetrics::new(&labels, &scored).render());
    }
    Ok(())
}
