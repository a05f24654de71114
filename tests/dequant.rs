//! GGUF dequantisation is bit-exact against gguf-py, the dequantiser transformers uses.
//! Golden: tools/reference/dequant_fixtures.py (gguf 0.19.0, numpy; seed 20261123).

mod common;

use common::{artifacts, cpu, tiny};

use lora_tune::weights::dequant::dequantize;
use lora_tune::weights::ggml_type::GgmlType;
use lora_tune::weights::gguf::GgufFile;
use lora_tune::weights::gguf_names::hf_tensor;
use sha2::{Digest, Sha256};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dequant");

fn check_fixture(name: &str, ty: u32) {
    let raw = std::fs::read(format!("{FIXTURES}/{name}.raw")).unwrap();
    let want: Vec<u32> = std::fs::read(format!("{FIXTURES}/{name}.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let got = dequantize(GgmlType(ty), &raw, want.len()).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            *w,
            "{name}[{i}]: got {g}, gguf-py {}",
            f32::from_bits(*w)
        );
    }
}

#[test]
fn every_supported_block_format_matches_gguf_py_bit_for_bit() {
    for (name, ty) in [
        ("F16", 1),
        ("BF16", 30),
        ("Q4_0", 2),
        ("Q4_1", 3),
        ("Q5_0", 6),
        ("Q5_1", 7),
        ("Q8_0", 8),
        ("Q2_K", 10),
        ("Q3_K", 11),
        ("Q4_K", 12),
        ("Q5_K", 13),
        ("Q6_K", 14),
    ] {
        check_fixture(name, ty);
    }
}

#[test]
fn packed_blocks_decode_like_gguf_py_on_flex() {
    tiny::assert_packed_blocks_decode_like_gguf_py(&cpu());
}

/// `model.keep_quantized`: every block-quantised matrix of the real SmolLM2 kept packed (Q/K rows
/// un-permuted in their blocks) decodes to exactly the dequantised tensor an f32 load holds.
#[test]
fn real_smollm2_kept_blocks_decode_to_the_dequantised_tensors() {
    use lora_tune::model::frozen::FrozenWeight;
    use lora_tune::weights::blocks::hf_blocks;
    use lora_tune::weights::host::FrozenMatrix;
    let files = artifacts::smollm2();
    let gguf = GgufFile::open(files.path()).unwrap();
    let device = cpu();
    let mut kept = 0;
    for tensor in gguf.tensors.iter().filter(|t| {
        t.name.starts_with("blk.0.")
            || t.name.starts_with("blk.29.")
            || t.name == "token_embd.weight"
    }) {
        let Some((name, blocks)) = hf_blocks(&gguf, tensor).unwrap().pop() else {
            continue;
        };
        let want = hf_tensor(&gguf, tensor).unwrap().unwrap();
        assert_eq!(name, want.name);
        assert_eq!(vec![blocks.rows, blocks.cols], want.shape);
        let got = FrozenWeight::new(FrozenMatrix::Blocks(blocks), &device)
            .dense()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(
            got.iter()
                .zip(&want.values)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "{name}: decoded blocks differ from the dequantised tensor"
        );
        kept += 1;
    }
    assert_eq!(
        kept,
        2 * 7 + 1,
        "seven Q4_1 linears in two layers and the Q8_0 embedding"
    );
}

/// `model.keep_quantized` keeps the embedding in its blocks too (Q8_0 in this file: 30 MB
/// instead of 113 MB of f32): the lookup decodes only the batch's rows and the tied head
/// multiplies by two chunks of rows decoded one at a time (`frozen::DECODED_VALUES`). Embeddings
/// equal the dequantised model's bit for bit, logits within 1e-6 of their scale.
#[test]
fn real_smollm2_embedding_and_tied_head_stay_in_their_blocks() {
    use lora_tune::model::BaseStorage;
    use lora_tune::model::frozen::{DECODED_VALUES, FrozenWeight};
    let files = artifacts::smollm2();
    let keep = BaseStorage {
        keep_quantized: true,
        ..Default::default()
    };
    let kept = lora_tune::model::load(&files, &cpu(), keep).unwrap();
    let dense = lora_tune::model::load(&files, &cpu(), BaseStorage::default()).unwrap();
    let FrozenWeight::Blocks(_) = &kept.embed_tokens else {
        panic!("the Q8_0 embedding should stay in its blocks");
    };
    let [vocab, hidden] = kept.embed_tokens.dims();
    assert!(
        vocab * hidden > DECODED_VALUES,
        "the head should decode in chunks"
    );
    assert!(kept.embed_tokens.resident_bytes() * 3 < dense.embed_tokens.resident_bytes());
    let ids = vec![
        vec![1u32, 2, 300, 49151, 17, 9000],
        vec![0, 5, 5, 12345, 49000, 8],
    ];
    let mask = vec![vec![1u8; 6]; 2];
    let bits = |t: burn::tensor::Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
    let (got, want) = (bits(kept.embed(&ids)), bits(dense.embed(&ids)));
    assert!(
        got.iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits())
    );
    let (got, want) = (
        bits(kept.forward(&ids, &mask)),
        bits(dense.forward(&ids, &mask)),
    );
    let scale = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    eprintln!("logits: worst {worst:e} of {scale}");
    assert!(worst <= 1e-6 * scale, "logits off by {worst} of {scale}");
}

/// `model.quantize_embeddings`: the tiny Llama's f32 embedding and untied head are quantised at
/// load (64-value rows: whole Q8_0 blocks, and Q4_K's llama.cpp fallback Q5_0) and hold exactly
/// what quantising and dequantising them on the host gives; the logits stay within the format's
/// rounding of the f32 model's.
#[test]
fn quantize_embeddings_packs_the_embedding_and_the_untied_head() {
    use lora_tune::model::BaseStorage;
    use lora_tune::model::frozen::FrozenWeight;
    use lora_tune::source::ModelFiles;
    use lora_tune::weights::blocks::{BlockFormat, BlockMatrix};
    use lora_tune::weights::quantize::{for_rows_of, quantize};
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/tiny-llama");
    let files = ModelFiles::Dir(dir);
    let dense = lora_tune::model::load(&files, &cpu(), BaseStorage::default()).unwrap();
    let ids = vec![vec![1u32, 2, 200, 255, 17, 9]];
    let mask = vec![vec![1u8; 6]];
    let values = |t: burn::tensor::Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
    let f32_logits = dense
        .forward(&ids, &mask)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for (format, tolerance) in [(BlockFormat::Q8_0, 0.02), (BlockFormat::Q4K, 0.2)] {
        let storage = BaseStorage {
            quantize_embeddings: Some(format),
            ..Default::default()
        };
        let model = lora_tune::model::load(&files, &cpu(), storage).unwrap();
        let head = &model
            .lm_head
            .as_ref()
            .expect("the tiny Llama's head is untied")
            .weight;
        for (name, got, want) in [
            ("embedding", &model.embed_tokens, &dense.embed_tokens),
            ("head", head, &dense.lm_head.as_ref().unwrap().weight),
        ] {
            assert!(matches!(got, FrozenWeight::Blocks(_)), "{format:?} {name}");
            let [rows, cols] = want.dims();
            let rowed = for_rows_of(format, cols);
            let bytes = quantize(rowed, &values(want.dense())).unwrap();
            let host = BlockMatrix::from_ggml(rowed, &bytes, rows, cols)
                .unwrap()
                .dequantize();
            let got = values(got.dense());
            assert!(
                got.iter()
                    .zip(&host)
                    .all(|(g, h)| g.to_bits() == h.to_bits()),
                "{format:?} {name}: not the host's quantised values"
            );
        }
        let logits = model
            .forward(&ids, &mask)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let scale = f32_logits.iter().fold(0f32, |m, w| m.max(w.abs()));
        let worst = (logits.iter().zip(&f32_logits)).fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        eprintln!("{format:?}: logits worst {worst:e} of {scale}");
        assert!(
            worst > 0.0 && worst <= tolerance * scale,
            "{format:?}: {worst} of {scale}"
        );
    }
}

#[test]
fn wrong_byte_count_and_unsupported_type_are_errors() {
    let err = dequantize(GgmlType(8), &[0u8; 33], 32).unwrap_err();
    assert!(err.contains("need 34 bytes"), "{err}");
    let err = dequantize(GgmlType(16), &[0u8; 66], 256).unwrap_err();
    assert!(
        err.contains("IQ2_XXS") && err.contains("not supported"),
        "{err}"
    );
}

fn sha256_f32(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whole tensors of the real SmolLM2 GGUF: sha256 of the dequantised f32 bytes equals gguf-py's,
/// and after Q/K un-permutation equals transformers' LlamaTensorProcessor output (`hf:` keys).
#[test]
fn real_smollm2_tensors_match_gguf_py_and_transformers() {
    let files = artifacts::smollm2();
    let gguf = GgufFile::open(files.path()).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURES}/smollm2.json")).unwrap())
            .unwrap();
    let golden = golden.as_object().unwrap();
    assert_eq!(golden.len(), 7);
    for (key, want) in golden {
        let (hf, name) = match key.strip_prefix("hf:") {
            Some(name) => (true, name),
            None => (false, key.as_str()),
        };
        let tensor = gguf.tensors.iter().find(|t| t.name == name).unwrap();
        assert_eq!(tensor.ggml_type.name(), want["type"].as_str());
        let values = if hf {
            let t = hf_tensor(&gguf, tensor).unwrap().unwrap();
            assert!(
                t.name.starts_with("model.layers.") && t.name.contains("self_attn"),
                "{}",
                t.name
            );
            assert_eq!(t.shape.iter().product::<usize>(), t.values.len());
            t.values
        } else {
            gguf.dequantize(tensor).unwrap()
        };
        assert_eq!(values.len() as u64, want["n"].as_u64().unwrap());
        assert_eq!(
            sha256_f32(&values),
            want["sha256"].as_str().unwrap(),
            "{key}: first {:?}",
            &values[..4]
        );
    }
}

/// Quantise-on-load (`model.quantize`) writes gguf-py's blocks byte for byte
/// (tools/reference/quantize_fixtures.py: normal values at three scales, an all-zero, a constant
/// and an outlier block, rounding ties).
#[test]
fn quantizing_equals_gguf_py_and_ggml_byte_for_byte() {
    use lora_tune::weights::blocks::BlockFormat;
    use lora_tune::weights::quantize::{QUANTIZABLE, quantize};
    let dir = format!("{FIXTURES}/quantize");
    let read = |file: &str| -> Vec<f32> {
        std::fs::read(format!("{dir}/{file}"))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (values, k_values) = (read("input.f32"), read("input_k.f32"));
    let quantizable = tiny::BLOCK_FORMATS
        .iter()
        .filter(|(_, f)| QUANTIZABLE.contains(f));
    let mut checked = Vec::new();
    for &(name, format) in quantizable {
        let want = std::fs::read(format!("{dir}/{name}.raw")).unwrap();
        // K-quants: ggml's quantize_row_q{4,5,6}_K_ref on 12 super-blocks; the rest gguf-py's.
        let k_quant = matches!(
            format,
            BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K
        );
        let input = if k_quant { &k_values } else { &values };
        let got = quantize(format, input).unwrap();
        checked.push(name);
        let (_, block_bytes) = format.ggml_block();
        for (i, (g, w)) in got
            .chunks(block_bytes)
            .zip(want.chunks(block_bytes))
            .enumerate()
        {
            assert_eq!(g, w, "{name} block {i}");
        }
        assert_eq!(got.len(), want.len(), "{name}");
    }
    assert_eq!(checked.len(), QUANTIZABLE.len(), "{checked:?}");
    // 288 values are not whole 256-value super-blocks; Q3_K has no quantiser.
    assert!(quantize(BlockFormat::Q4K, &values[..288]).is_err());
    assert!(quantize(BlockFormat::Q3K, &k_values).is_err());
}
