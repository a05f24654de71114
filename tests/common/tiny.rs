//! The tiny random Llama fixture and what the reference scripts computed on it: the base model,
//! the same with fresh adapters, the first training micro-batch, and PEFT's adapted logits on it.

#![allow(dead_code)] // each test binary uses the part it needs

use std::path::Path;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use lora_tune::data::batch::{Batch, IGNORE};
use lora_tune::data::encode::Encoded;
use lora_tune::device::{DeviceChoice, select};
use lora_tune::lora::targets::select as select_targets;
use lora_tune::model::adapted::{AdaptedModel, host};
use lora_tune::model::decoder::Decoder;
use lora_tune::recipe::LoraSection;
use lora_tune::recipe::Schedule;
use lora_tune::train::optim::{AdamW, AdamWConfig};
use lora_tune::train::schedule::LrSchedule;
use lora_tune::train::step::train_step;
use lora_tune::weights::host::HostTensors;

pub use super::fixture;

pub fn base() -> Decoder {
    base_on(&select(DeviceChoice::Cpu).unwrap().device)
}

pub fn base_on(device: &Device) -> Decoder {
    named_on("tiny-llama", device)
}

/// The tiny model `name` on the CPU.
pub fn named(name: &str) -> Decoder {
    named_on(name, &select(DeviceChoice::Cpu).unwrap().device)
}

/// The tiny model `name` of tests/fixtures/llama/ (tiny-llama, tiny-qwen2, tiny-qwen3).
pub fn named_on(name: &str, device: &Device) -> Decoder {
    let dir = fixture(&format!("llama/{name}"));
    let config = lora_tune::model::read_decoder_config(&dir.join("config.json")).unwrap();
    Decoder::load(config, HostTensors::read(&dir).unwrap(), device).unwrap()
}

/// The adapters of every tiny LoRA fixture (tools/reference/lora_train.py): r=4, α=8, no dropout,
/// the seven Llama targets.
pub fn lora() -> LoraSection {
    LoraSection {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraSection::default()
    }
}

/// The base on `device` with [`lora`] adapters holding the A/B of `file` (PEFT key names).
pub fn adapted_on(file: &Path, device: &Device) -> Decoder {
    let mut model = with_adapters_on(&lora(), 0, device);
    model.load_adapter_weights(file).unwrap();
    model
}

/// The base with fresh adapters as `lora` describes, initialised from `seed`.
pub fn with_adapters(lora: &LoraSection, seed: u64) -> Decoder {
    with_adapters_on(lora, seed, &select(DeviceChoice::Cpu).unwrap().device)
}

pub fn with_adapters_on(lora: &LoraSection, seed: u64, device: &Device) -> Decoder {
    let mut model = base_on(device);
    let adapted = select_targets(&model.config.linear_sites(), lora).unwrap();
    model.attach_adapters(&adapted, lora, seed).unwrap();
    model
}

/// The tiny model `name` (`named_on`) on the CPU with adapters as `lora` says.
pub fn named_with_adapters(name: &str, lora: &LoraSection, seed: u64) -> Decoder {
    let mut model = named(name);
    let adapted = select_targets(&model.config.linear_sites(), lora).unwrap();
    model.attach_adapters(&adapted, lora, seed).unwrap();
    model
}

/// A JSON fixture, parsed.
/// ‖trained − want‖ / ‖want‖ (Frobenius) over every trained tensor of `model` against the
/// safetensors file `want`, which must hold exactly those keys.
pub fn relative_distance(model: &mut impl AdaptedModel, want: &Path) -> f64 {
    let mut want = HostTensors::read(want).unwrap();
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (key, t) in model.adapter_tensors().unwrap() {
        let w = want.take(&key, &t.shape).unwrap();
        for (a, b) in t.values.iter().zip(&w.values) {
            num += f64::from(a - b).powi(2);
            den += f64::from(*b).powi(2);
        }
    }
    want.finish().unwrap();
    (num / den).sqrt()
}

pub fn json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The micro-batches of tools/reference/lora_train.py.
pub fn train_batches() -> Vec<Batch> {
    json(&fixture("lora/train/batches.json"))
}

/// The first micro-batch of tools/reference/lora_train.py: token ids and attention mask.
pub fn first_batch() -> (Vec<Vec<u32>>, Vec<Vec<u8>>) {
    let first = train_batches().swap_remove(0);
    (first.input_ids, first.attention_mask)
}

/// `model`'s logits on the first batch equal PEFT's adapted logits (tools/reference/
/// peft_export.py) to ≤1e-4; prints the figure under `what`.
pub fn assert_peft_logits(model: &Decoder, what: &str) {
    assert_peft_logits_of(model, "lora/peft", what);
}

/// The same against the logits PEFT saved beside its folder `peft` (e.g. `lora/peft-gemma2`).
pub fn assert_peft_logits_of(model: &Decoder, peft: &str, what: &str) {
    let (ids, mask) = first_batch();
    let got = host(&model.forward(&ids, &mask)).unwrap().values;
    let want = HostTensors::read(&fixture(&format!("{peft}/logits.safetensors")))
        .unwrap()
        .take("logits", &[2, 9, 256])
        .unwrap()
        .values;
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{what}: max |Δlogit| vs PEFT {worst:e}");
    assert!(worst < 1e-4, "{what}: {worst}");
}

/// tools/reference/lora_train.py's ten steps (two micro-batches each, clipping that binds, linear
/// warmup, AdamW with weight decay) on `device`: every step's loss and gradient norm within 1e-4
/// of PEFT's, final A/B within 1e-4, the frozen base and embedding bit-identical afterwards.
/// `gradient_checkpointing` trains by block recompute instead of one whole-graph backward.
pub fn assert_ten_steps_equal_peft(device: &Device, what: &str, gradient_checkpointing: bool) {
    assert_ten_steps_equal_peft_on(
        "tiny-llama",
        "lora/train",
        device,
        what,
        gradient_checkpointing,
    );
}

/// The same ten steps on the tiny model `name`, against the PEFT run in fixture dir `fixtures`.
pub fn assert_ten_steps_equal_peft_on(
    name: &str,
    fixtures: &str,
    device: &Device,
    what: &str,
    gradient_checkpointing: bool,
) {
    let run = PeftRun {
        fixtures,
        init: fixtures,
        loraplus_lr_ratio: None,
        use_dora: false,
        router_aux_loss_coef: 0.0,
    };
    assert_ten_steps_equal_peft_run(name, &run, device, what, gradient_checkpointing);
}

/// A PEFT training run to compare with: its fixture dir, the one holding its initial adapters,
/// its optimiser's LoRA+ ratio, whether it trains DoRA and its router load-balancing loss's
/// weight.
pub struct PeftRun<'a> {
    pub fixtures: &'a str,
    pub init: &'a str,
    pub loraplus_lr_ratio: Option<f64>,
    pub use_dora: bool,
    pub router_aux_loss_coef: f64,
}

/// The ten steps on the tiny model `name` against the PEFT run `run`.
pub fn assert_ten_steps_equal_peft_run(
    name: &str,
    run: &PeftRun,
    device: &Device,
    what: &str,
    gradient_checkpointing: bool,
) {
    let fixtures = fixture(run.fixtures);
    let mut model = named_on(name, device);
    let lora = LoraSection {
        use_dora: run.use_dora,
        ..lora()
    };
    let adapted = select_targets(&model.config.linear_sites(), &lora).unwrap();
    model.attach_adapters(&adapted, &lora, 0).unwrap();
    model
        .load_adapter_weights(&fixture(run.init).join("init.safetensors"))
        .unwrap();
    model.gradient_checkpointing = gradient_checkpointing;
    model.router_aux_loss_coef = run.router_aux_loss_coef;
    let base_before: Vec<Vec<f32>> = model
        .linears_mut()
        .iter()
        .map(|(_, l)| values(&l.weight.dense()))
        .collect();
    let embed_before = values(&model.embed_tokens.dense());

    let batches = train_batches();
    let trajectory: Vec<serde_json::Value> = json(&fixtures.join("trajectory.json"));
    let (schedule, mut optimizer) = reference_optimiser(run.loraplus_lr_ratio);
    for (step, want) in trajectory.iter().enumerate() {
        let micro = &batches[step * 2..step * 2 + 2];
        let lr = schedule.lr(step as u64);
        assert!(rel(lr, want["lr"].as_f64().unwrap()) < 1e-12 || lr == 0.0);
        let stats = train_step(&mut model, micro, &mut optimizer, lr, 0.05).unwrap();
        eprintln!(
            "{what} step {}: loss {:.7} (PEFT {}), grad norm {:.6} (PEFT {})",
            step + 1,
            stats.loss,
            want["loss"],
            stats.grad_norm,
            want["grad_norm"]
        );
        let (loss, norm) = (
            want["loss"].as_f64().unwrap(),
            want["grad_norm"].as_f64().unwrap(),
        );
        assert_eq!(stats.loss_tokens as u64, want["tokens"].as_u64().unwrap());
        assert!(
            rel(stats.loss, loss) < 1e-4,
            "step {}: loss {} vs PEFT {loss}",
            step + 1,
            stats.loss
        );
        assert!(
            rel(stats.grad_norm, norm) < 1e-4,
            "step {}: grad norm {} vs PEFT {norm}",
            step + 1,
            stats.grad_norm
        );
    }

    let want = HostTensors::read(&fixtures.join("final.safetensors")).unwrap();
    let mut want = want;
    let got = model.adapter_tensors().unwrap();
    let (mut worst, mut largest_b) = (0.0f32, 0.0f32);
    for (key, t) in &got {
        let w = want.take(key, &t.shape).unwrap();
        let scale = w.values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if key.contains("lora_B") {
            largest_b = largest_b.max(scale);
        }
        for (a, b) in t.values.iter().zip(&w.values) {
            worst = worst.max((a - b).abs() / scale.max(1e-6));
        }
    }
    want.finish().unwrap();
    eprintln!("{what} final A/B: worst relative difference {worst:e}; largest |B| {largest_b}");
    // B starts at zero: training must have moved it, or the comparison proves nothing.
    assert!(largest_b > 1e-3, "B barely moved ({largest_b})");
    assert!(
        worst < 1e-4,
        "final adapters differ from PEFT's by {worst} (relative to each tensor's max)"
    );

    let base_after: Vec<Vec<f32>> = model
        .linears_mut()
        .iter()
        .map(|(_, l)| values(&l.weight.dense()))
        .collect();
    assert!(base_before == base_after, "a frozen base weight changed");
    assert!(
        embed_before == values(&model.embed_tokens.dense()),
        "the embedding changed"
    );
}

/// tools/reference/lora_train.py's schedule (linear, peak 5e-3, 2 warmup steps of 10) and
/// AdamW (weight decay 0.01), with PEFT's LoRA+ groups at `loraplus_lr_ratio`.
pub fn reference_optimiser(loraplus_lr_ratio: Option<f64>) -> (LrSchedule, AdamW) {
    let schedule = LrSchedule {
        kind: Schedule::Linear,
        peak: 5e-3,
        warmup_steps: 2,
        total_steps: 10,
    };
    let adamw = AdamW::new(AdamWConfig {
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.01,
        loraplus_lr_ratio,
    });
    (schedule, adamw)
}

pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    host(t).unwrap().values
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

/// Example `k` of `len` tokens; the first two are an unlabelled prompt.
pub fn example(k: u32, len: usize) -> Encoded {
    let ids: Vec<u32> = (0..len as u32)
        .map(|j| 3 + (k * 37 + j * 11) % 250)
        .collect();
    let labels = ids
        .iter()
        .enumerate()
        .map(|(j, &t)| if j < 2 { IGNORE } else { i64::from(t) })
        .collect();
    Encoded {
        ids,
        labels,
        class: None,
        rejected: None,
    }
}

/// Every ggml block format with its name in tests/fixtures/dequant.
pub const BLOCK_FORMATS: [(&str, lora_tune::weights::blocks::BlockFormat); 10] = {
    use lora_tune::weights::blocks::BlockFormat as F;
    [
        ("Q4_0", F::Q4_0),
        ("Q4_1", F::Q4_1),
        ("Q5_0", F::Q5_0),
        ("Q5_1", F::Q5_1),
        ("Q8_0", F::Q8_0),
        ("Q2_K", F::Q2K),
        ("Q3_K", F::Q3K),
        ("Q4_K", F::Q4K),
        ("Q5_K", F::Q5K),
        ("Q6_K", F::Q6K),
    ]
};

/// The golden blocks of all ten formats (tests/fixtures/dequant, gguf-py's values) kept packed on
/// `device` and decoded there give gguf-py's f32 values bit for bit, as does the host decoder.
pub fn assert_packed_blocks_decode_like_gguf_py(device: &Device) {
    use lora_tune::model::frozen::FrozenWeight;
    use lora_tune::weights::blocks::BlockMatrix;
    use lora_tune::weights::host::FrozenMatrix;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dequant");
    for (name, format) in BLOCK_FORMATS {
        let raw = std::fs::read(dir.join(format!("{name}.raw"))).unwrap();
        let want: Vec<u32> = std::fs::read(dir.join(format!("{name}.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        // Rows of one K-quant super-block, or of two 32-value blocks (128-value fixtures).
        let cols = if format.ggml_block().0 == 256 {
            256
        } else {
            64
        };
        let rows = want.len() / cols;
        let blocks = BlockMatrix::from_ggml(format, &raw, rows, cols).unwrap();
        let host = blocks.dequantize();
        let weight = FrozenWeight::new(FrozenMatrix::Blocks(blocks), device);
        assert_eq!(weight.dims(), [rows, cols]);
        let decoded = weight.dense().into_data().try_to_vec::<f32>().unwrap();
        for (i, w) in want.iter().enumerate() {
            assert_eq!(host[i].to_bits(), *w, "{name}[{i}] on the host");
            assert_eq!(
                decoded[i].to_bits(),
                *w,
                "{name}[{i}] decoded on the device"
            );
        }
        // An embedding lookup decodes only the rows asked for (any order, repeats).
        let ids: Vec<i64> = (0..rows as i64).rev().chain([0, 0]).collect();
        let picked = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [ids.len()]), device);
        let picked = weight.rows(picked).into_data().try_to_vec::<f32>().unwrap();
        for (k, &row) in ids.iter().enumerate() {
            let (got, want) = (
                &picked[k * cols..][..cols],
                &want[row as usize * cols..][..cols],
            );
            assert!(
                got.iter().zip(want).all(|(g, w)| g.to_bits() == *w),
                "{name}: row {row} looked up"
            );
        }
        // Products decoding one row at a time equal the whole matrix's.
        let dense = weight.dense();
        let x = Tensor::<2>::random([3, cols], Distribution::Normal(0.0, 1.0), device);
        let dy = Tensor::<2>::random([3, rows], Distribution::Normal(0.0, 1.0), device);
        let f32_ = lora_tune::dtype::Dtype::F32;
        for (what, got, want) in [
            (
                "x·Wᵀ",
                weight.product_nt_decoding(x.clone(), f32_, cols),
                x.matmul(dense.clone().transpose()),
            ),
            (
                "dy·W",
                weight.product_decoding(dy.clone(), f32_, cols),
                dy.matmul(dense),
            ),
        ] {
            let worst: f32 = (got - want.clone()).abs().max().into_scalar();
            let scale: f32 = want.abs().max().into_scalar();
            assert!(
                worst <= 1e-6 * scale,
                "{name}: {what} by rows off by {worst} of {scale}"
            );
        }
    }
}

/// Sets every adapter's B to a fixed non-zero pattern: B = 0 at init would zero every A
/// gradient and the adapters' share of the input gradient (and a constant B zeroes an LM head
/// adapter's A gradient: softmax gradients sum to 0).
pub fn nonzero_b(model: &mut impl AdaptedModel) {
    for (_, a) in model.adapters_mut() {
        let [out, r] = a.b.dims();
        let values = (0..out * r)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.01)
            .collect();
        a.b = Tensor::from_data(
            burn::tensor::TensorData::new(values, [out, r]),
            &a.b.device(),
        );
    }
}

/// The BERT checkpoint in `dir` on `device`.
pub fn bert_at(dir: &Path, device: &Device) -> lora_tune::model::bert::Bert {
    use lora_tune::model::bert::{Bert, BertConfig};
    let path = dir.join("config.json");
    let config = BertConfig::from_json(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
    Bert::load(config, HostTensors::read(dir).unwrap(), device).unwrap()
}

/// The SEQ_CLS reference batch of tools/reference/bert_fixtures.py: padded rows with classes.
pub fn seq_cls_batch() -> Batch {
    #[derive(serde::Deserialize)]
    struct Raw {
        input_ids: Vec<Vec<u32>>,
        attention_mask: Vec<Vec<u8>>,
        labels: Vec<u32>,
    }
    let raw: Raw = json(&fixture("bert/seq_cls/batch.json"));
    Batch {
        labels: raw
            .input_ids
            .iter()
            .map(|r| vec![IGNORE; r.len()])
            .collect(),
        input_ids: raw.input_ids,
        attention_mask: raw.attention_mask,
        classes: raw.labels,
        pairs: None,
    }
}

/// The micro-batches a TRL preference trainer gave its loss, in order, as recorded by
/// tools/reference/dpo_train.py in tests/fixtures/lora/`run`/batches.json, as our preference
/// batches: DPOTrainer's completion mask as labels (CPOTrainer records its own labels), with
/// TRL's reference log-probabilities where it has them (none for SimPO).
pub fn trl_preference_batches(run: &str) -> Vec<Batch> {
    #[derive(serde::Deserialize)]
    struct Recorded {
        input_ids: Vec<Vec<i64>>,
        attention_mask: Vec<Vec<u8>>,
        completion_mask: Option<Vec<Vec<i64>>>,
        labels: Option<Vec<Vec<i64>>>,
        #[serde(default)]
        ref_chosen_logps: Vec<f64>,
        #[serde(default)]
        ref_rejected_logps: Vec<f64>,
    }
    let recorded: Vec<Recorded> = json(&fixture(&format!("lora/{run}/batches.json")));
    recorded
        .into_iter()
        .map(|b| {
            let labels = match (b.labels, &b.completion_mask) {
                (Some(labels), _) => labels,
                (None, Some(completion)) => (b.input_ids.iter().zip(completion))
                    .map(|(r, c)| {
                        let label = |(&id, &m): (&i64, &i64)| if m == 1 { id } else { IGNORE };
                        r.iter().zip(c).map(label).collect()
                    })
                    .collect(),
                (None, None) => panic!("{run}: a batch without labels or a completion mask"),
            };
            let count = b.input_ids.len() / 2;
            Batch {
                input_ids: (b.input_ids.iter())
                    .map(|r| r.iter().map(|&t| t as u32).collect())
                    .collect(),
                attention_mask: b.attention_mask,
                labels,
                classes: Vec::new(),
                pairs: Some(lora_tune::data::batch::Pairs {
                    count,
                    reference: [b.ref_chosen_logps, b.ref_rejected_logps].concat(),
                }),
            }
        })
        .collect()
}
