//! The BERT encoder and sequence classification against transformers + PEFT
//! (tools/reference/bert_fixtures.py): all-MiniLM-L6-v2's hidden states and sentence-transformers
//! embeddings; on a tiny random BERT, `BertForSequenceClassification` logits with a fresh head,
//! three PEFT SEQ_CLS training steps (LoRA on query/key/value/dense + the classifier trained in
//! full), and the adapter folder PEFT saves after them; and `LlamaForSequenceClassification`'s
//! logits (last-token pooling, `score` head) on the tiny Llama.

mod common;

use common::{artifacts, cpu, tiny};

use std::path::PathBuf;

use burn::tensor::Tensor;
use lora_tune::data::batch::Batch;
use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::adapted::{AdaptedModel, host};
use lora_tune::model::bert::Bert;
use lora_tune::model::classifier::{Body, SequenceClassifier};
use lora_tune::peft::config::PeftConfig;
use lora_tune::peft::folder as peft;
use lora_tune::recipe::{LoraSection, Pooling, Targets};
use lora_tune::train::optim::{AdamW, AdamWConfig};
use lora_tune::train::step::train_step;
use lora_tune::weights::host::HostTensors;

fn bert_fixture(rel: &str) -> PathBuf {
    tiny::fixture(&format!("bert/{rel}"))
}

fn load_bert(dir: &std::path::Path) -> Bert {
    tiny::bert_at(dir, &cpu())
}

/// The reference script's adapters: r=4, α=8, no dropout, PEFT's SEQ_CLS targets.
fn lora() -> LoraSection {
    LoraSection {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: Targets::Modules(
            ["query", "key", "value", "dense"]
                .map(String::from)
                .to_vec(),
        ),
        ..LoraSection::default()
    }
}

/// The tiny classifier with the trained tensors of `file` (PEFT keys: adapters and head).
fn classifier(file: &str) -> SequenceClassifier {
    let bert = load_bert(&bert_fixture("tiny-bert"));
    let adapted = select_targets(&bert.config.linear_sites(), &lora()).unwrap();
    let labels = ["a", "b", "c"].map(String::from).to_vec();
    let mut model = SequenceClassifier::new(Body::Bert(bert), labels, Pooling::Cls, 0).unwrap();
    model.attach_adapters(&adapted, &lora(), 0).unwrap();
    model
        .load_adapter_weights(&bert_fixture(&format!("seq_cls/{file}")))
        .unwrap();
    model
}

/// The reference script's optimiser: AdamW at PEFT's defaults with weight decay 0.01.
fn reference_adamw() -> AdamW {
    AdamW::new(AdamWConfig {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
        loraplus_lr_ratio: None,
    })
}

fn batch() -> Batch {
    tiny::seq_cls_batch()
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    host(t).unwrap().values
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn reference(file: &str, name: &str) -> Vec<f32> {
    HostTensors::read(&bert_fixture(file))
        .unwrap()
        .into_entries()
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("{file} has no {name}"))
        .1
        .values
}

#[test]
fn tiny_classifier_logits_equal_transformers() {
    let b = batch();
    let model = classifier("init.safetensors");
    let got = values(&model.logits(&b.input_ids, &b.attention_mask));
    let want = reference("seq_cls/logits_init.safetensors", "logits");
    let d = max_diff(&got, &want);
    eprintln!("tiny BERT classifier logits: max |Δ| {d:e}");
    assert!(d < 1e-6, "max |Δlogit| {d}");
}

#[test]
fn three_seq_cls_steps_equal_peft() {
    #[derive(serde::Deserialize)]
    struct Step {
        loss: f64,
        grad_norm: f64,
    }
    let trajectory: Vec<Step> = tiny::json(&bert_fixture("seq_cls/trajectory.json"));
    let b = batch();
    let mut model = classifier("init.safetensors");
    model.set_training(true);
    let mut optimizer = reference_adamw();
    for (i, want) in trajectory.iter().enumerate() {
        let got = train_step(
            &mut model,
            std::slice::from_ref(&b),
            &mut optimizer,
            1e-2,
            1.0,
        )
        .unwrap();
        let rel = |g: f64, w: f64| (g - w).abs() / w.abs();
        eprintln!(
            "step {}: loss rel Δ {:e}, grad norm rel Δ {:e}",
            i + 1,
            rel(got.loss, want.loss),
            rel(got.grad_norm, want.grad_norm)
        );
        assert!(
            rel(got.loss, want.loss) < 1e-6,
            "step {}: loss {} vs {}",
            i + 1,
            got.loss,
            want.loss
        );
        assert!(
            rel(got.grad_norm, want.grad_norm) < 1e-6,
            "step {}: grad norm {} vs {}",
            i + 1,
            got.grad_norm,
            want.grad_norm
        );
    }
    // Every trained tensor (adapters and the classifier head) as PEFT left it.
    let want = HostTensors::read(&bert_fixture("seq_cls/final.safetensors")).unwrap();
    let mut want: std::collections::BTreeMap<String, Vec<f32>> = want
        .into_entries()
        .into_iter()
        .map(|(k, t)| (k, t.values))
        .collect();
    let got = model.adapter_tensors().unwrap();
    assert_eq!(got.len(), want.len());
    for (key, t) in &got {
        let w = want
            .remove(key)
            .unwrap_or_else(|| panic!("PEFT has no {key}"));
        let d = max_diff(&t.values, &w);
        eprintln!("after 3 steps, {key}: max |Δ| {d:e}");
        assert!(d < 2e-6, "{key}: max |Δ| {d}");
    }
    model.set_training(false);
    let logits = values(&model.logits(&b.input_ids, &b.attention_mask));
    let d = max_diff(
        &logits,
        &reference("seq_cls/logits_final.safetensors", "logits"),
    );
    assert!(d < 1e-5, "trained logits: max |Δ| {d}");
}

/// `model.compute_dtype` on a classifier: the encoder's frozen products in bf16 (and f16, with
/// its loss scaling), the adapters, the head and the loss f32. Golden: the three PEFT steps
/// under `torch.autocast(bfloat16)` with the adapters and head in f32 (seq_cls-bf16). bf16
/// compute must follow their losses within 1e-2 (issue #22's bound) and its gradient norms must
/// leave f32 compute's, or the half path was not taken. Closer than f32 compute it is not here:
/// on this tiny encoder autocast's bf16 attention products (ours stay f32) move the step as
/// much as the linears' rounding, in another direction — after Adam's first, sign-like steps
/// the trained tensors are 1.5e-2 from PEFT's either way; the decoder test
/// (`lora_train.rs`) is the one that pins bf16 products to autocast's. f16's finer mantissa
/// stays within 1e-2 of the f32 steps, its loss scale never overflowing.
#[test]
fn three_seq_cls_steps_in_half_compute_follow_peft_under_autocast() {
    use lora_tune::dtype::Dtype;
    use lora_tune::train::loss_scale::LossScale;
    use lora_tune::train::step::{Share, StepStats, train_step_share};
    #[derive(serde::Deserialize)]
    struct Step {
        loss: f64,
    }
    let run = |compute: Dtype, fixture: &str| -> (Vec<StepStats>, f64, f64) {
        let b = batch();
        let mut model = classifier("init.safetensors");
        model.compute_in(compute);
        model.set_training(true);
        let mut optimizer = reference_adamw();
        let mut scale = (compute == Dtype::F16).then(LossScale::default);
        let trajectory: Vec<Step> =
            tiny::json(&bert_fixture(&format!("{fixture}/trajectory.json")));
        let steps: Vec<StepStats> = (0..trajectory.len())
            .map(|_| {
                let micro = std::slice::from_ref(&b);
                let scale = scale.as_mut();
                train_step_share(
                    &mut model,
                    micro,
                    Share::ALL,
                    &mut optimizer,
                    1e-2,
                    1.0,
                    scale,
                )
                .unwrap()
            })
            .collect();
        let loss_gap = steps
            .iter()
            .zip(&trajectory)
            .map(|(g, w)| (g.loss - w.loss).abs() / w.loss.abs())
            .fold(0.0, f64::max);
        let want = bert_fixture(&format!("{fixture}/final.safetensors"));
        (steps, loss_gap, tiny::relative_distance(&mut model, &want))
    };
    let (bf16_steps, bf16_loss_gap, bf16_gap) = run(Dtype::Bf16, "seq_cls-bf16");
    let (f32_steps, f32_loss_gap, f32_gap) = run(Dtype::F32, "seq_cls-bf16");
    let (f16_steps, f16_loss_gap, f16_gap) = run(Dtype::F16, "seq_cls");
    eprintln!(
        "against PEFT under bf16 autocast: bf16 compute losses {bf16_loss_gap:e}, trained tensors \
         {bf16_gap:e} (relative Frobenius); f32 compute {f32_loss_gap:e}, {f32_gap:e}. f16 \
         compute against PEFT in f32: {f16_loss_gap:e}, {f16_gap:e}"
    );
    assert!(
        bf16_loss_gap <= 1e-2 && bf16_gap <= 2e-2,
        "{bf16_loss_gap} {bf16_gap}"
    );
    let norm_gap =
        (bf16_steps[0].grad_norm - f32_steps[0].grad_norm).abs() / f32_steps[0].grad_norm;
    assert!(
        norm_gap > 1e-5,
        "bf16 and f32 gradients alike ({norm_gap:e}): no bf16 products?"
    );
    assert!(
        f16_loss_gap <= 1e-2 && f16_gap <= 1e-2,
        "{f16_loss_gap} {f16_gap}"
    );
    assert!(
        f16_steps
            .iter()
            .all(|s| s.loss_scale == Some(65536.0) && !s.overflowed)
    );
}

#[test]
fn seq_cls_folder_equals_what_peft_saves_and_loads_back() {
    let mut model = classifier("final.safetensors");
    let adapted = select_targets(
        &load_bert(&bert_fixture("tiny-bert")).config.linear_sites(),
        &lora(),
    )
    .unwrap();
    let config = PeftConfig::new(&lora(), &adapted, "tiny-bert".into(), None).for_classification();
    let out = tempfile::tempdir().unwrap();
    peft::write(
        out.path(),
        &model.adapter_tensors().unwrap(),
        lora_tune::dtype::Dtype::F32,
        &config,
        None,
    )
    .unwrap();
    peft::write_class_map(
        out.path(),
        &peft::ClassMap::new(&model.labels, Pooling::Cls),
    )
    .unwrap();

    // Config: every field we write equals PEFT's (target_modules is a set, in hash order).
    let read =
        |dir: &std::path::Path| -> serde_json::Value { tiny::json(&dir.join(peft::CONFIG_FILE)) };
    let (ours, theirs) = (read(out.path()), read(&bert_fixture("seq_cls/peft")));
    for (key, value) in ours.as_object().unwrap() {
        match key.as_str() {
            "base_model_name_or_path" => {}
            "target_modules" => {
                let sorted = |v: &serde_json::Value| {
                    let mut n: Vec<String> = serde_json::from_value(v.clone()).unwrap();
                    n.sort();
                    n
                };
                assert_eq!(sorted(value), sorted(&theirs[key]));
            }
            _ => assert_eq!(value, &theirs[key], "{key}"),
        }
    }
    // Tensors: the same names, shapes and bytes.
    let tensors = |dir: &std::path::Path| -> Vec<(String, Vec<usize>, Vec<u8>)> {
        let bytes = std::fs::read(dir.join(peft::WEIGHTS_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut v: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
            .collect();
        v.sort();
        v
    };
    let (ours_t, theirs_t) = (tensors(out.path()), tensors(&bert_fixture("seq_cls/peft")));
    assert_eq!(ours_t.len(), theirs_t.len());
    for (o, t) in ours_t.iter().zip(&theirs_t) {
        assert_eq!((&o.0, &o.1), (&t.0, &t.1));
        let d = max_diff(
            &o.2.chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>(),
            &t.2.chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>(),
        );
        assert!(d < 2e-5, "{}: {d}", o.0);
    }
    // The class map reads back in logit order.
    assert_eq!(
        peft::read_class_map(out.path()).unwrap().labels(),
        model.labels
    );

    // PEFT's own folder onto the base gives PEFT's trained logits.
    let mut theirs_model = classifier("init.safetensors");
    theirs_model
        .load_adapter_weights(&bert_fixture("seq_cls/peft").join(peft::WEIGHTS_FILE))
        .unwrap();
    let b = batch();
    let logits = values(&theirs_model.logits(&b.input_ids, &b.attention_mask));
    let d = max_diff(
        &logits,
        &reference("seq_cls/logits_final.safetensors", "logits"),
    );
    assert!(d < 1e-5, "PEFT folder logits: max |Δ| {d}");
}

#[test]
fn minilm_hidden_states_and_embeddings_equal_sentence_transformers() {
    let files = artifacts::minilm();
    let bert = load_bert(files.path());
    let reference = HostTensors::read(&bert_fixture("minilm/reference.safetensors")).unwrap();
    let reference: std::collections::BTreeMap<String, Vec<f32>> = reference
        .into_entries()
        .into_iter()
        .map(|(k, t)| (k, t.values))
        .collect();
    let embeddings = &reference["embeddings"];
    let tokenizer = lora_tune::model::tokenizer_of(&files).unwrap();
    let sentences: Vec<String> = tiny::json(&bert_fixture("minilm/sentences.json"));
    let h = bert.config.hidden_size;
    for (i, text) in sentences.iter().enumerate() {
        let ids = tokenizer.encode(text, true).unwrap();
        // The ids themselves are checked through the hidden states' length and values.
        let hidden = values(&bert.forward(std::slice::from_ref(&ids), &[vec![1; ids.len()]]));
        let want = &reference[&format!("hidden.{i}")];
        assert_eq!(hidden.len(), want.len(), "sentence {i}: token count");
        let d = max_diff(&hidden, want);
        eprintln!("MiniLM sentence {i}: max |Δ hidden| {d:e}");
        assert!(d < 1e-4, "sentence {i}: max |Δ hidden| {d}");
        // sentence-transformers: mean over tokens, then L2 normalisation.
        let mut mean = vec![0f32; h];
        for row in hidden.chunks(h) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v / ids.len() as f32;
            }
        }
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
        let mean: Vec<f32> = mean.iter().map(|v| v / norm).collect();
        let d = max_diff(&mean, &embeddings[i * h..(i + 1) * h]);
        eprintln!("MiniLM sentence {i}: max |Δ embedding| {d:e}");
        assert!(d < 1e-4, "sentence {i}: max |Δ embedding| {d}");
    }
}

#[test]
fn llama_score_head_logits_equal_transformers() {
    let bytes = std::fs::read(bert_fixture("llama_seq_cls.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<i64> {
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (ids, mask) = (ints("input_ids"), ints("attention_mask"));
    let rows = |v: &[i64]| -> Vec<Vec<i64>> { v.chunks(7).map(<[i64]>::to_vec).collect() };
    let ids: Vec<Vec<u32>> = rows(&ids)
        .into_iter()
        .map(|r| r.into_iter().map(|t| t as u32).collect())
        .collect();
    let mask: Vec<Vec<u8>> = rows(&mask)
        .into_iter()
        .map(|r| r.into_iter().map(|m| m as u8).collect())
        .collect();
    let labels = ["a", "b", "c"].map(String::from).to_vec();
    let mut model =
        SequenceClassifier::new(Body::Decoder(tiny::base()), labels, Pooling::Cls, 0).unwrap();
    let score = reference("llama_seq_cls.safetensors", "score.weight");
    assert_eq!(model.head.name, "score");
    assert!(model.head.bias.is_none());
    let dims = model.head.weight.dims();
    model.head.weight = Tensor::from_data(burn::tensor::TensorData::new(score, dims), &cpu());
    let got = values(&model.logits(&ids, &mask));
    let want = reference("llama_seq_cls.safetensors", "logits");
    let d = max_diff(&got, &want);
    eprintln!("tiny Llama score-head logits: max |Δ| {d:e}");
    assert!(d < 1e-6, "max |Δlogit| {d}");
}

/// The hand-derived classifier step (`train::derived::classifier`) gives autodiff's loss and
/// gradients (`whole_graph_gradients`, the oracle) on the tiny BERT: CLS pooling through an
/// adapted pooler and mean pooling, LoRA and head dropout, padding, all layers or only the top
/// one adapted.
#[test]
fn the_derived_classifier_step_equals_autodiff() {
    let b = batch();
    assert!(
        b.attention_mask.iter().flatten().any(|&m| m == 0),
        "the batch has padding"
    );
    for (pooling, targets) in [
        (Pooling::Cls, r".*(query|key|value|dense)"),
        (Pooling::Mean, r".*encoder.*(query|key|value|dense)"), // no pooler under mean
        (Pooling::Cls, r".*layer\.1\..*(query|value|dense)"),
    ] {
        let lora = LoraSection {
            dropout: 0.2,
            targets: Targets::Regex(targets.into()),
            ..lora()
        };
        let bert = load_bert(&bert_fixture("tiny-bert"));
        let adapted = select_targets(&bert.config.linear_sites(), &lora).unwrap();
        let labels = ["a", "b", "c"].map(String::from).to_vec();
        let mut model = SequenceClassifier::new(Body::Bert(bert), labels, pooling, 5).unwrap();
        model.attach_adapters(&adapted, &lora, 5).unwrap();
        model.head.dropout = 0.3;
        tiny::nonzero_b(&mut model);
        model.set_training(true);
        let what = format!("{pooling:?} pooling, targets {targets}");
        let keys = assert_derived_step_equals_autodiff(&mut model, &b, &what);
        assert_eq!(
            keys.iter().any(|k| k.contains("pooler")),
            !targets.contains("encoder") && !targets.contains("layer"),
            "{what}: {keys:?}"
        );
    }
}

/// The same on a decoder body (the tiny Llama: final RMSNorm, last-token or mean pooling, the
/// `score` head without bias), with padding, LoRA and head dropout, and only layer 1 adapted.
#[test]
fn the_derived_decoder_classifier_step_equals_autodiff() {
    let mut b = tiny::train_batches().remove(0);
    assert!(
        b.attention_mask.iter().flatten().any(|&m| m == 0),
        "the batch has padding"
    );
    b.classes = (0..b.input_ids.len() as u32).map(|r| r % 3).collect();
    for (pooling, targets) in [
        (Pooling::Cls, r"model\.layers\..*"),
        (Pooling::Mean, r"model\.layers\..*"),
        (
            Pooling::Cls,
            r"model\.layers\.1\..*(q_proj|v_proj|down_proj)",
        ),
    ] {
        let lora = LoraSection {
            dropout: 0.2,
            targets: Targets::Regex(targets.into()),
            ..lora()
        };
        let base = tiny::base();
        let adapted = select_targets(&base.config.linear_sites(), &lora).unwrap();
        let labels = ["a", "b", "c"].map(String::from).to_vec();
        let mut model = SequenceClassifier::new(Body::Decoder(base), labels, pooling, 5).unwrap();
        model.attach_adapters(&adapted, &lora, 5).unwrap();
        model.head.dropout = 0.3;
        tiny::nonzero_b(&mut model);
        model.set_training(true);
        let what = format!("decoder, {pooling:?} pooling, targets {targets}");
        assert_derived_step_equals_autodiff(&mut model, &b, &what);
    }
}

/// The derived step's loss and gradients against autodiff's on `batch`; the trained keys.
fn assert_derived_step_equals_autodiff(
    model: &mut SequenceClassifier,
    batch: &Batch,
    what: &str,
) -> Vec<String> {
    use lora_tune::train::autograd::{Seed, whole_graph_gradients};
    use lora_tune::train::loss::Objective;
    let keys: Vec<String> = model.params_mut().into_iter().map(|(k, _)| k).collect();
    model.seed_dropout(9);
    let (want_loss, want) = whole_graph_gradients(model, |m| m.loss_sum(batch), Seed::mean_over(3))
        .unwrap()
        .unwrap();
    model.seed_dropout(9);
    let (loss, got) = model
        .loss_and_gradients(batch, Seed::mean_over(3))
        .unwrap()
        .unwrap();
    assert!(
        (loss - want_loss).abs() <= 1e-6 * want_loss.abs(),
        "{what}: loss {loss} vs autodiff {want_loss}"
    );
    assert_eq!(got.len(), want.len(), "{what}");
    for ((key, g), w) in keys.iter().zip(&got).zip(&want) {
        let (g, w) = (values(g), values(w));
        let largest = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(largest > 0.0, "{what}: {key} has no autodiff gradient");
        let d = max_diff(&g, &w) / largest;
        eprintln!("{what}: {key} differs by {d:e}");
        assert!(d <= 1e-5, "{what}: {key} differs by {d}");
    }
    keys
}
