//! f32 values → ggml blocks (`model.quantize`: quantise-on-load), bit for bit as gguf-py's
//! `quantize_blocks` for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (the reference ggml-quants.c rounding:
//! the scale from the block's extreme, codes by truncating x/d + ½ or rounding half away from
//! zero, scales stored as f16), and Q4_K, Q5_K and Q6_K bit for bit as ggml's own
//! `quantize_row_q{4,5,6}_K_ref` (what llama.cpp's quantiser runs without an importance matrix:
//! per group a weighted search for the scale (and min), then 6- or 8-bit group scales under f16
//! super-scales). The result is what [`super::blocks::BlockMatrix::from_ggml`] reads.

use half::f16;

use super::blocks::BlockFormat;

/// Values per block of the 32-value formats.
const BLOCK: usize = 32;
/// Values per K-quant super-block.
const QK_K: usize = 256;

/// The formats [`quantize`] writes.
pub const QUANTIZABLE: [BlockFormat; 8] = [
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q5_0,
    BlockFormat::Q5_1,
    BlockFormat::Q8_0,
    BlockFormat::Q4K,
    BlockFormat::Q5K,
    BlockFormat::Q6K,
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
            BlockFormat::Q4K => k_with_min(x, 4, &mut out),
            BlockFormat::Q5K => k_with_min(x, 5, &mut out),
            BlockFormat::Q6K => q6_k(x, &mut out),
            _ => with_min(x, 5, &mut out),
        }
    }
    Ok(out)
}

/// [`quantize`] of a matrix's rows of `cols` values, rows in parallel: the same bytes, since no
/// block spans two rows.
pub fn quantize_rows(format: BlockFormat, values: &[f32], cols: usize) -> Result<Vec<u8>, String> {
    use rayon::prelude::*;
    let per_task = cols * (1usize << 16).div_ceil(cols.max(1));
    let parts: Vec<Vec<u8>> = values
        .par_chunks(per_task.max(1))
        .map(|rows| quantize(format, rows))
        .collect::<Result<_, _>>()?;
    Ok(parts.concat())
}

/// The format llama.cpp's quantiser uses instead of `format` for rows of `cols` values that
/// are not whole super-blocks (its `tensor_type_fallback`: Q4_K → Q5_0, Q5_K → Q5_1,
/// Q6_K → Q8_0); `format` otherwise.
pub fn for_rows_of(format: BlockFormat, cols: usize) -> BlockFormat {
    if cols.is_multiple_of(QK_K) {
        return format;
    }
    match format {
        BlockFormat::Q4K => BlockFormat::Q5_0,
        BlockFormat::Q5K => BlockFormat::Q5_1,
        BlockFormat::Q6K => BlockFormat::Q8_0,
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

/// One 256-value Q4_K / Q5_K super-block (`bits` 4 / 5), as `quantize_row_q{4,5}_K_ref`: for
/// each 32-value group the (scale, min) of [`qkx2`] under weights av|x| + |x|; the groups'
/// scales and mins as 6-bit multiples of f16 super-scales; then every code again against the
/// stored scales. Q5_K's fifth bits go to `qh` ahead of the nibbles.
fn k_with_min(x: &[f32], bits: u32, out: &mut Vec<u8>) {
    let top = (1i32 << bits) - 1;
    // Q4_K searches 21 scales from nmax − 1, Q5_K 16 from nmax − ½ (ggml's arguments).
    let search = if bits == 4 { (-1.0, 20) } else { (-0.5, 15) };
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
        let (scale, min) = qkx2(g, &weights, top, search, &mut codes[32 * j..32 * j + 32]);
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
    let (sc, m) = super::blocks::k_scale_min(&packed);
    for j in 0..QK_K / 32 {
        let d = d.to_f32() * f32::from(sc[j]);
        if d == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m[j]);
        for i in 0..32 {
            codes[32 * j + i] = nearest_int((x[32 * j + i] + dm) / d).clamp(0, top) as u8;
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(packed);
    if bits == 5 {
        // Bit 4 of element n + j (n a multiple of 64) at bit 2·(n/64) of qh[j], of element
        // n + 32 + j at the bit above.
        let mut qh = [0u8; 32];
        for (k, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                qh[j] |=
                    ((codes[n + j] >> 4) << (2 * k)) | ((codes[n + j + 32] >> 4) << (2 * k + 1));
            }
        }
        out.extend(qh);
    }
    for j in (0..QK_K).step_by(64) {
        out.extend((0..32).map(|l| (codes[j + l] & 0xF) | ((codes[j + l + 32] & 0xF) << 4)));
    }
}

/// One 256-value Q6_K super-block, as `quantize_row_q6_K_ref`: per 16-value group the scale of
/// [`qx`] (codes −32..31), the group scales as signed 8-bit multiples of an f16 super-scale,
/// then every code again against the stored scales; low nibbles in `ql`, high 2 bits in `qh`,
/// then the scales and the super-scale.
fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut codes = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..QK_K / 16 {
        let scale = qx(&x[16 * ib..16 * ib + 16], &mut codes[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < 1e-15 {
        out.extend([0u8; 210]);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let small: Vec<i8> = scales
        .iter()
        .map(|&s| nearest_int(iscale * s).min(127) as i8)
        .collect();
    for j in 0..QK_K / 16 {
        let d = d.to_f32() * f32::from(small[j]);
        if d == 0.0 {
            continue;
        }
        for i in 0..16 {
            codes[16 * j + i] = (nearest_int(x[16 * j + i] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    let (mut ql, mut qh) = (Vec::with_capacity(128), Vec::with_capacity(64));
    for j in (0..QK_K).step_by(128) {
        let c = |o: usize, l: usize| codes[j + l + o];
        let low: Vec<u8> = (0..32)
            .map(|l| (c(0, l) & 0xF) | ((c(64, l) & 0xF) << 4))
            .collect();
        let high: Vec<u8> = (0..32)
            .map(|l| (c(32, l) & 0xF) | ((c(96, l) & 0xF) << 4))
            .collect();
        ql.extend(low);
        ql.extend(high);
        qh.extend((0..32).map(|l| {
            (c(0, l) >> 4)
                | ((c(32, l) >> 4) << 2)
                | ((c(64, l) >> 4) << 4)
                | ((c(96, l) >> 4) << 6)
        }));
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(small.iter().map(|&s| s as u8));
    out.extend(d.to_le_bytes());
}

/// ggml's `make_qx_quants(16, 32, x, L, 1, NULL)`: codes l + 32 for l in −32..31 and the scale
/// maximising Σw·x·l / √Σw·l² under weights x², over 19 trial scales around −32 / (the value of
/// largest magnitude).
fn qx(x: &[f32], codes: &mut [u8]) -> f32 {
    const NMAX: i32 = 32;
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        codes.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let iscale = -(NMAX as f32) / max;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (level(iscale, v) + NMAX) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&i| i != 0) {
        let iscale = -(NMAX as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (c, &v) in codes.iter_mut().zip(x) {
                *c = (level(iscale, v) + NMAX) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qkx2_quants(32, nmax, x, weights, L, &min, Laux, rmin, 0.1, nstep, false)`:
/// codes 0..=nmax in `codes` and (scale, −min) minimising the weighted squared error, trying
/// nstep + 1 scales from (max − min) / (nmax + rmin) and refitting scale and min by least
/// squares for each.
fn qkx2(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    (rmin, nstep): (f32, i32),
    codes: &mut [u8],
) -> (f32, f32) {
    let top = nmax;
    let nmax = nmax as f32;
    let rdelta = 0.1f32;
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
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, top);
        codes[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, top);
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
        assert_eq!(for_rows_of(BlockFormat::Q5K, 576), BlockFormat::Q5_1);
        assert_eq!(for_rows_of(BlockFormat::Q6K, 576), BlockFormat::Q8_0);
        assert_eq!(for_rows_of(BlockFormat::Q6K, 512), BlockFormat::Q6K);
        assert_eq!(for_rows_of(BlockFormat::Q4_0, 576), BlockFormat::Q4_0);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-1.5), -2);
    }
}
