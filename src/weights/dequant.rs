//! ggml block formats → f32, bit for bit as gguf-py's `gguf.quants.dequantize` (which is what
//! transformers runs when it loads a GGUF). The block formats are read by
//! `blocks::BlockFormat::decompose` (codes, scales, offsets — the one reading of ggml-common.h's
//! `block_q4_0` … `block_q6_K`, shared with kept matrices); float operations follow gguf-py's
//! order so results round identically. Knows nothing of tensor names.

use half::f16;

use super::blocks::{BlockFormat, value};
use super::ggml_type::GgmlType;

/// Decodes one block's bytes into its values.
type BlockDecoder = fn(&[u8], &mut [f32]);

/// Dequantises `n` values of type `ty` from `bytes` (exactly the tensor's bytes).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    if let Some(format) = BlockFormat::of(ty) {
        return quantized(format, bytes, n);
    }
    let (block, block_bytes, decode): (usize, usize, BlockDecoder) = match ty.0 {
        0 => (1, 4, |b, y| {
            y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
        1 => (1, 2, |b, y| y[0] = f16_at(b, 0)),
        30 => (1, 2, |b, y| {
            y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }),
        _ => {
            return Err(format!(
                "dequantising {ty} is not supported; re-quantise the model to Q8_0, Q4_K or Q6_K, or use safetensors"
            ));
        }
    };
    check(ty, bytes, n, block, block_bytes)?;
    let mut out = vec![0f32; n];
    for (b, y) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block))
    {
        decode(b, y);
    }
    Ok(out)
}

fn check(
    ty: impl std::fmt::Display,
    bytes: &[u8],
    n: usize,
    block: usize,
    block_bytes: usize,
) -> Result<(), String> {
    if !n.is_multiple_of(block) || bytes.len() != n / block * block_bytes {
        return Err(format!(
            "{n} {ty} values need {} bytes in blocks of {block}, got {}",
            n / block * block_bytes,
            bytes.len()
        ));
    }
    Ok(())
}

/// A block format's values from its codes, scales and offsets (`BlockFormat::decompose`).
fn quantized(format: BlockFormat, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (block, block_bytes) = format.ggml_block();
    check(format!("{format:?}"), bytes, n, block, block_bytes)?;
    let group = format.group();
    let mut codes = vec![0u32; block];
    let (mut scales, mut offsets) = (vec![0f32; block / group], vec![0f32; block / group]);
    let mut out = Vec::with_capacity(n);
    for b in bytes.chunks_exact(block_bytes) {
        format.decompose(b, &mut codes, &mut scales, &mut offsets);
        out.extend(codes.iter().enumerate().map(|(e, &code)| {
            let offset = format.has_offsets().then(|| offsets[e / group]);
            value(format, code, scales[e / group], offset)
        }));
    }
    Ok(out)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}
