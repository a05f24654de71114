//! f32 values → ggml blocks (`model.quantize`: quantise-on-load), bit for bit as gguf-py's
//! `quantize_blocks` for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (the reference ggml-quants.c rounding:
//! the scale from the block's extreme, codes by truncating x/d + ½ or rounding half away from
//! zero, scales stored as f16), and Q4_K bit for bit as ggml's own `quantize_row_q4_K_ref` (what
//! llama.cpp's quantiser runs without an importance matrix: per 32-value group a weighted search
//! for scale and min, then 6-bit scales and mins under f16 super-scales). The result is what
//! [`super::blocks::BlockMatrix::from_ggml`] reads.

use half::f16;

use super::blocks::BlockFormat;

/// Values per block of the 32-value formats.
const BLOCK: usize = 32;
/// Values per K-quant super-block.
const QK_K: usize = 256;

/// The formats [`quantize`] writes.
pub const QUANTIZABLE: [BlockFormat; 6] = [
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q5_0,
    BlockFormat::Q5_1,
    BlockFormat::Q8_0,
    BlockFormat::Q4K,
];

/// `values` (whole blocks, row-major) as `format`'s ggml blocks.
pub fn quantize(format: BlockFormat, values: &[f32]) -> Result<Vec<u8>, String> {
    if !QUANTIZABLE.contains(&format) {
        return Err(format!("quantising to {format:?} is not implemented"));
    }
    let (block, block_bytes) = format.ggml_block();
    if !values.len().is_multiple_of(block) {
        return Err(format!(
            "{} values are not whole {block}-value blocks",
            values.len()
        ));
    }
    let mut out = Vec::with_capacity(values.len() / block * block_bytes);
    for x in values.chunks_exact(block) {
        match format {
            BlockFormat::Q8_0 => q8_0(x, &mut out),
            BlockFormat::Q4_0 => signed(x, 4, &mut out),
            BlockFormat::Q5_0 => signed(x, 5, &mut out),
            BlockFormat::Q4_1 => with_min(x, 4, &mut out),
            BlockFormat::Q4K => q4_k(x, &mut out),
            _ => with_min(x, 5, &mut out),
        }
    }
    Ok(out)
}

/// The format llama.cpp's quantiser uses instead of `format` for rows of `cols` values that
/// are not whole super-blocks (its `tensor_type_fallback`: Q4_K → Q5_0); `format` otherwise.
pub fn for_rows_of(format: BlockFormat, cols: usize) -> BlockFormat {
    match format {
        BlockFormat::Q4K if !cols.is_multiple_of(QK_K) => BlockFormat::Q5_0,
        _ => format,
    }
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

/// ggml's `nearest_int`: round half to even through the float's mantissa (|v| < 2^22).
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007F_FFFF) - 0x0040_0000
}

/// One 256-value Q4_K super-block, as `quantize_row_q4_K_ref`: for each 32-value group the
/// (scale, min) of [`qkx2`] under weights av|x| + |x|; the groups' scales and mins as 6-bit
/// multiples of f16 super-scales; then every code again against the stored scales.
fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut codes = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..QK_K / 32 {
        let g = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in g {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: Vec<f32> = g.iter().map(|v| av_x + v.abs()).collect();
        let (scale, min) = qkx2(g, &weights, &mut codes[32 * j..32 * j + 32]);
        (scales[j], mins[j]) = (scale, min);
        max_scale = max_scale.max(scale);
        max_min = max_min.max(min);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..QK_K / 32 {
        // (uint8_t) of the int, then MIN(63, …), as the C code.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = if j < 4 {
            (packed[j] & 63, packed[j + 4] & 63)
        } else {
            (
                (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4),
                (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
            )
        };
        let d = d.to_f32() * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for i in 0..32 {
            codes[32 * j + i] = nearest_int((x[32 * j + i] + dm) / d).clamp(0, 15) as u8;
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(packed);
    for j in (0..QK_K).step_by(64) {
        out.extend((0..32).map(|l| codes[j + l] | (codes[j + l + 32] << 4)));
    }
}

/// ggml's `make_qkx2_quants(32, 15, x, weights, L, &min, Laux, -1, 0.1, 20, false)`: codes
/// 0..=15 in `codes` and (scale, −min) minimising the weighted squared error, trying 21 scales
/// around (max − min) / 15 and refitting scale and min by least squares for each.
fn qkx2(x: &[f32], weights: &[f32], codes: &mut [u8]) -> (f32, f32) {
    const NMAX: f32 = 15.0;
    let (rmin, rdelta, nstep) = (-1f32, 0.1f32, 20);
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        codes.fill(0);
        return (0.0, -min);
    }
    let mut iscale = NMAX / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, 15);
        codes[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + NMAX) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, 15);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let big_d = sum_w * sum_l2 - sum_l * sum_l;
        if big_d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / big_d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / big_d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(aux[i]) + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                codes[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_that_are_not_whole_super_blocks_fall_back_as_llama_cpp() {
        assert_eq!(for_rows_of(BlockFormat::Q4K, 1536), BlockFormat::Q4K);
        assert_eq!(for_rows_of(BlockFormat::Q4K, 576), BlockFormat::Q5_0);
        assert_eq!(for_rows_of(BlockFormat::Q4_0, 576), BlockFormat::Q4_0);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-1.5), -2);
    }
}
