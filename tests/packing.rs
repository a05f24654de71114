//! Packing several examples into one sequence changes nothing they compute: each example's
//! logits in a packed row equal its logits run alone (the attention mask never crosses
//! examples and positions restart), and the packed batch's loss and labelled-token count equal
//! the examples' own. Checked on the tiny Llama with trained (non-zero) adapters.
//! (Restarting positions per example is not separately visible here: RoPE scores depend only on
//! relative positions, which the block-diagonal mask keeps within one example; the restart keeps
//! rotation angles as small as in an unpacked run, as transformers' packed position_ids do.)

mod common;

use common::tiny;

use lora_tune::data::batch::Batch;
use lora_tune::data::dataset::{Dataset, Layout};
use lora_tune::model::adapted::host;
use lora_tune::model::decoder::Decoder;
use lora_tune::train::cross_entropy::next_token_nll_sum;
use lora_tune::train::scalar;

fn trained_model() -> Decoder {
    let cpu = lora_tune::device::select(lora_tune::device::DeviceChoice::Cpu).unwrap();
    tiny::adapted_on(&tiny::fixture("lora/train/final.safetensors"), &cpu.device)
}

fn dataset(lengths: &[usize], pack_to: Option<usize>, pad_to_multiple_of: usize) -> Dataset {
    let examples = lengths
        .iter()
        .enumerate()
        .map(|(k, &len)| tiny::example(k as u32, len))
        .collect();
    let layout = Layout {
        pad_id: 0,
        pad_to_multiple_of,
        max_len: 4096,
        pack_to,
    };
    Dataset::new("synthetic".as_ref(), examples, Vec::new(), 0, layout)
}

#[test]
fn best_fit_decreasing_fills_sequences_up_to_max_len() {
    // 9 opens a sequence (room 7), 7 fills it exactly, 5 and 3 share the next one.
    let data = dataset(&[7, 5, 9, 3], Some(16), 1);
    assert_eq!(data.sequences, vec![vec![2, 0], vec![1, 3]]);
    let unpacked = dataset(&[7, 5, 9, 3], None, 1);
    assert_eq!(unpacked.sequences.len(), 4);
    // An example longer than the capacity still gets a sequence of its own.
    let data = dataset(&[20, 4], Some(16), 1);
    assert_eq!(data.sequences, vec![vec![0], vec![1]]);
}

#[test]
fn packed_rows_compute_what_their_examples_compute_alone() {
    let model = trained_model();
    let lengths = [7, 5, 9, 6, 4];
    // Two packed rows of up to 16 tokens, padded to a multiple of 8 (bucketing) — so one row
    // also carries padding after its examples.
    let data = dataset(&lengths, Some(16), 8);
    assert_eq!(data.sequences.len(), 2, "{:?}", data.sequences);
    let batch = data.micro_batch(0, 2, 7);
    assert_eq!(batch.input_ids[0].len(), 16);
    assert!(batch.attention_mask.iter().any(|m| m.contains(&0)));
    let packed = host(&model.forward(&batch.input_ids, &batch.attention_mask))
        .unwrap()
        .values;
    let v = model.config.vocab_size;
    let s = batch.input_ids[0].len();

    let mut worst = 0.0f32;
    let mut seen = 0;
    for (row, mask) in batch.attention_mask.iter().enumerate() {
        let mut at = 0;
        while at < s && mask[at] != 0 {
            let n = mask[at..].iter().take_while(|&&m| m == mask[at]).count();
            // Which example is this? Match its tokens.
            let ids = &batch.input_ids[row][at..at + n];
            let k = data.examples.iter().position(|e| e.ids == ids).unwrap();
            let alone = host(&model.forward(&[ids.to_vec()], &[vec![1; n]]))
                .unwrap()
                .values;
            let offset = (row * s + at) * v;
            for (a, b) in alone.iter().zip(&packed[offset..offset + n * v]) {
                worst = worst.max((a - b).abs());
            }
            assert_eq!(data.examples[k].ids.len(), n);
            seen += 1;
            at += n;
        }
    }
    assert_eq!(seen, lengths.len(), "every example appears once");
    eprintln!("packed vs alone: max |Δlogit| {worst:e}");
    assert!(worst <= 1e-5, "{worst}");

    // The packed batch's loss is the sum of the examples' losses, over the same tokens.
    let packed_loss = scalar(next_token_nll_sum(&model, &batch).unwrap()).unwrap();
    let (mut alone_loss, mut alone_tokens) = (0.0, 0);
    for e in &data.examples {
        let alone = Batch {
            input_ids: vec![e.ids.clone()],
            attention_mask: vec![vec![1; e.ids.len()]],
            labels: vec![e.labels.clone()],
            ..Batch::default()
        };
        alone_loss += scalar(next_token_nll_sum(&model, &alone).unwrap()).unwrap();
        alone_tokens += e.loss_tokens();
    }
    assert_eq!(batch.loss_tokens(), alone_tokens);
    eprintln!("loss sum packed {packed_loss} alone {alone_loss} over {alone_tokens} tokens");
    assert!(
        ((packed_loss - alone_loss) / alone_loss).abs() < 1e-5,
        "{packed_loss} vs {alone_loss}"
    );
}

#[test]
fn bucketing_pads_to_the_multiple_and_changes_no_loss() {
    let model = trained_model();
    let lengths = [7, 5, 9];
    let plain = dataset(&lengths, None, 1).micro_batch(0, 3, 1);
    let bucketed = dataset(&lengths, None, 64).micro_batch(0, 3, 1);
    assert_eq!(plain.input_ids[0].len(), 9);
    assert_eq!(bucketed.input_ids[0].len(), 64);
    let loss = |b: &Batch| scalar(next_token_nll_sum(&model, b).unwrap()).unwrap();
    let (a, b) = (loss(&plain), loss(&bucketed));
    assert!(((a - b) / a).abs() < 1e-6, "{a} vs {b}");
    assert_eq!(plain.loss_tokens(), bucketed.loss_tokens());
}
