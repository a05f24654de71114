//! f32 values → ggml blocks (`model.quantize`: quantise-on-load), bit for bit as gguf-py's
//! `quantize_blocks` for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (the reference ggml-quants.c rounding:
//! the scale from the block's extreme, codes by truncating x/d + ½ or rounding half away from
//! zero, scales stored as f16). gguf-py has no K-quant quantiser to prove one against, so those
//! are not offered. The result is what [`super::blocks::BlockMatrix::from_ggml`] reads.

use half::f16;

use super::blocks::BlockFormat;

/// Values per block of the formats quantised here.
const BLOCK: usize = 32;

/// The formats [`quantize`] writes.
pub const QUANTIZABLE: [BlockFormat; 5] = [
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q5_0,
    BlockFormat::Q5_1,
    BlockFormat::Q8_0,
];

/// `values` (whole 32-value blocks, row-major) as `format`'s ggml blocks.
pub fn quantize(format: BlockFormat, values: &[f32]) -> Result<Vec<u8>, String> {
    if !QUANTIZABLE.contains(&format) {
        return Err(format!("quantising to {format:?} is not implemented"));
    }
    if !values.len().is_multiple_of(BLOCK) {
        return Err(format!(
            "{} values are not whole {BLOCK}-value blocks",
            values.len()
        ));
    }
    let (_, block_bytes) = format.ggml_block();
    let mut out = Vec::with_capacity(values.len() / BLOCK * block_bytes);
    for x in values.chunks_exact(BLOCK) {
        match format {
            BlockFormat::Q8_0 => q8_0(x, &mut out),
            BlockFormat::Q4_0 => signed(x, 4, &mut out),
            BlockFormat::Q5_0 => signed(x, 5, &mut out),
            BlockFormat::Q4_1 => with_min(x, 4, &mut out),
            _ => with_min(x, 5, &mut out),
        }
    }
    Ok(out)
}

/// 1/d, or 0 for an all-zero block.
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

fn push_f16(v: f32, out: &mut Vec<u8>) {
    out.extend(f16::from_f32(v).to_le_bytes());
}

/// gguf-py's `np_roundf`: round half away from zero.
fn roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let r = floored + (2.0 * (a - floored)).floor();
    if n < 0.0 { -r } else { r }
}

/// d = max|x| / 127, q = round(x / d) as i8.
fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
    let id = inverse(d);
    push_f16(d, out);
    out.extend(x.iter().map(|&v| roundf(v * id) as i8 as u8));
}

/// Q4_0 / Q5_0: d = (the value of largest magnitude) / −2^(bits−1), q = trunc(x/d + 2^(bits−1)
/// + ½) clipped; codes packed as `decompose` reads them.
fn signed(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    let half = (1u32 << (bits - 1)) as f32;
    // The first value of the largest magnitude (numpy's argmax).
    let max = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -half;
    let id = inverse(d);
    let top = (1u32 << bits) - 1;
    let codes: Vec<u32> = x
        .iter()
        .map(|&v| ((v * id + (half + 0.5)).trunc() as u32).min(top))
        .collect();
    push_f16(d, out);
    pack(&codes, bits, out);
}

/// Q4_1 / Q5_1: d = (max − min) / (2^bits − 1), q = trunc((x − min)/d + ½) clipped, m = min.
fn with_min(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let top = (1u32 << bits) - 1;
    let d = (max - min) / top as f32;
    let id = inverse(d);
    let codes: Vec<u32> = x
        .iter()
        .map(|&v| (((v - min) * id + 0.5).trunc() as u32).min(top))
        .collect();
    push_f16(d, out);
    push_f16(min, out);
    pack(&codes, bits, out);
}

/// Element j in the low nibble of qs[j], element j + 16 in the high one; a 5th bit of element
/// i at bit i of the little-endian u32 qh before qs.
fn pack(codes: &[u32], bits: u32, out: &mut Vec<u8>) {
    if bits == 5 {
        let qh = (0..BLOCK).fold(0u32, |h, i| h | (((codes[i] >> 4) & 1) << i));
        out.extend(qh.to_le_bytes());
    }
    out.extend((0..BLOCK / 2).map(|j| ((codes[j] & 0xF) | ((codes[j + 16] & 0xF) << 4)) as u8));
}
