//! ggml block formats → f32, bit for bit as gguf-py's `gguf.quants.dequantize` (which is what
//! transformers runs when it loads a GGUF). Each block format is a pure function from one block's
//! bytes to its values; float operations follow gguf-py's order so results round identically.
//! Layouts: ggml-common.h `block_q4_0` … `block_q6_K`. Knows nothing of tensor names.

use half::f16;

use super::ggml_type::GgmlType;

const QK_K: usize = 256;

/// Decodes one block's bytes into its values.
type BlockDecoder = fn(&[u8], &mut [f32]);

/// Dequantises `n` values of type `ty` from `bytes` (exactly the tensor's bytes).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (block, block_bytes, decode): (usize, usize, BlockDecoder) = match ty.0 {
        0 => (1, 4, |b, y| {
            y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
        1 => (1, 2, |b, y| y[0] = f16_at(b, 0)),
        30 => (1, 2, |b, y| {
            y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
        }),
        2 => (32, 18, q4_0),
        3 => (32, 20, q4_1),
        6 => (32, 22, q5_0),
        7 => (32, 24, q5_1),
        8 => (32, 34, q8_0),
        10 => (QK_K, 84, q2_k),
        11 => (QK_K, 110, q3_k),
        12 => (QK_K, 144, q4_k),
        13 => (QK_K, 176, q5_k),
        14 => (QK_K, 210, q6_k),
        _ => {
            return Err(format!(
                "dequantising {ty} is not supported; re-quantise the model to Q8_0, Q4_K or Q6_K, or use safetensors"
            ));
        }
    };
    if !n.is_multiple_of(block) || bytes.len() != n / block * block_bytes {
        return Err(format!(
            "{n} {ty} values need {} bytes in blocks of {block}, got {}",
            n / block * block_bytes,
            bytes.len()
        ));
    }
    let mut out = vec![0f32; n];
    for (b, y) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block))
    {
        decode(b, y);
    }
    Ok(out)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// d: f16, qs[16]: element j is the low nibble of qs[j], element j+16 the high nibble.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0xF) as i8 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i8 - 8) as f32;
    }
}

/// d, m: f16, qs[16]; y = d·q + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0xF) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// d: f16, qh: u32 (bit i is the 5th bit of element i), qs[16]; q − 16.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let hi = |i: usize| (((qh >> i) & 1) << 4) as u8;
        y[j] = d * (((q & 0xF) | hi(j)) as i8 - 16) as f32;
        y[j + 16] = d * (((q >> 4) | hi(j + 16)) as i8 - 16) as f32;
    }
}

/// d, m: f16, qh: u32, qs[16]; y = d·q + m.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let hi = |i: usize| (((qh >> i) & 1) << 4) as u8;
        y[j] = d * ((q & 0xF) | hi(j)) as f32 + m;
        y[j + 16] = d * ((q >> 4) | hi(j + 16)) as f32 + m;
    }
}

/// d: f16, qs[32]: i8.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..34].iter().enumerate() {
        y[j] = q as i8 as f32 * d;
    }
}

/// scales[16] (low nibble scale, high nibble min), qs[64] (2-bit), d, dmin: f16.
/// Element e: 2-bit field (e%128)/32 of qs[(e/128)·32 + e%32]; sub-block e/16.
fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, out) in y.iter_mut().enumerate() {
        let s = scales[e / 16];
        let dl = d * (s & 0xF) as f32;
        let ml = dmin * (s >> 4) as f32;
        let q = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        *out = dl * q as f32 - ml;
    }
}

/// hmask[32], qs[64] (low 2 bits), scales[12] (16 six-bit scales), d: f16.
fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut dl = [0f32; 16];
    for (i, dl) in dl.iter_mut().enumerate() {
        let low = (packed[i % 8] >> (4 * (i / 8))) & 0xF;
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *dl = d * ((low | (high << 4)) as i8 - 32) as f32;
    }
    for (e, out) in y.iter_mut().enumerate() {
        let low = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        // The high bit *subtracts* 4 when it is clear (ggml's convention).
        let high = ((hmask[e % 32] >> (e / 32)) & 1) ^ 1;
        *out = dl[e / 16] * (low as i8 - (high << 2) as i8) as f32;
    }
}

/// The 8 six-bit (scale, min) pairs packed in 12 bytes by Q4_K and Q5_K.
fn k_scale_min(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (d, m, md) = (&packed[0..4], &packed[4..8], &packed[8..12]);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for i in 0..4 {
        sc[i] = d[i] & 0x3F;
        mn[i] = m[i] & 0x3F;
        sc[i + 4] = (md[i] & 0x0F) | ((d[i] >> 2) & 0x30);
        mn[i + 4] = (md[i] >> 4) | ((m[i] >> 2) & 0x30);
    }
    (sc, mn)
}

/// d, dmin: f16, scales[12], qs[128]: sub-block s uses nibble s%2 of qs[(s/2)·32 ..].
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scale_min(&b[4..16]);
    let qs = &b[16..144];
    for (e, out) in y.iter_mut().enumerate() {
        let s = e / 32;
        let q = (qs[(s / 2) * 32 + e % 32] >> (4 * (s % 2))) & 0xF;
        *out = d * sc[s] as f32 * q as f32 - dmin * mn[s] as f32;
    }
}

/// d, dmin: f16, scales[12], qh[32] (bit s = 5th bit of sub-block s), qs[128].
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scale_min(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (e, out) in y.iter_mut().enumerate() {
        let s = e / 32;
        let low = (qs[(s / 2) * 32 + e % 32] >> (4 * (s % 2))) & 0xF;
        let high = (qh[e % 32] >> s) & 1;
        *out = d * sc[s] as f32 * (low | (high << 4)) as f32 - dmin * mn[s] as f32;
    }
}

/// ql[128] (low nibbles), qh[64] (2 high bits), scales[16]: i8, d: f16; q − 32.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (e, out) in y.iter_mut().enumerate() {
        let half = e / 128;
        let low = (ql[half * 64 + e % 64] >> (4 * ((e % 128) / 64))) & 0xF;
        let high = (qh[half * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        let q = (low | (high << 4)) as i8 - 32;
        *out = d * scales[e / 16] as i8 as f32 * q as f32;
    }
}
