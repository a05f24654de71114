//! A GGUF matrix kept in its ggml blocks instead of f32 (`model.keep_quantized`). Every ggml
//! format stores, per group of 16 or 32 values, integer codes and a scale (and for some an
//! offset), so every value is (code + bias)·scale (+ offset): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 with
//! the block's d (and m); the K-quants with the sub-block's d·scale (and −dmin·min), which the
//! host multiplies once, as gguf-py does before the codes. [`BlockFormat::decompose`] is the one
//! reading of each format's bytes: `dequant` computes its values from it, and a kept matrix
//! stores its codes packed into 32-bit words (2, 4 or 8 bits a code: Q3_K's 3-bit codes take 4,
//! Q5's and Q6_K's take 8) with f32 scales and offsets — 0.75 bytes a value for Q4_0/Q4_1/Q4_K,
//! 1.125–1.25 for Q8_0/Q5/Q6_K instead of 4. The same f32 operations in the same order as
//! gguf-py, so a kept matrix decodes to exactly the values a dequantised load holds.
//! `model::frozen` decodes on the device. Word w of a row holds that row's columns w, w + W,
//! w + 2W, … (W words a row), so code k of every word is one contiguous run of columns:
//! decoding concatenates whole slices instead of interleaving codes (an interleaving stack cost
//! 30× more on flex).

use half::f16;

use super::WeightsError;
use super::ggml_type::GgmlType;
use super::gguf::GgufFile;
use super::gguf::GgufTensor;
use super::gguf_names::{expert_slices, hf_name_in, permuted_with, unpermute_rows};

/// Values per K-quant super-block.
const QK_K: usize = 256;

/// The ggml block formats, each read as codes, scales and offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// d·(q − 8), q a 4-bit code.
    Q4_0,
    /// d·q + m.
    Q4_1,
    /// d·(q − 16), q a 5-bit code.
    Q5_0,
    /// d·q + m, q a 5-bit code.
    Q5_1,
    /// d·q, q an i8 (stored as q + 128).
    Q8_0,
    /// (d·sc)·q − dmin·m over 16 values, q a 2-bit code.
    Q2K,
    /// (d·(sc − 32))·(q − 4) over 16 values, q a 3-bit code.
    Q3K,
    /// (d·sc)·q − dmin·m over 32 values, q a 4-bit code.
    Q4K,
    /// The same with 5-bit codes.
    Q5K,
    /// (d·sc)·(q − 32) over 16 values, q a 6-bit code.
    Q6K,
}

impl BlockFormat {
    pub fn of(ty: GgmlType) -> Option<Self> {
        Some(match ty.0 {
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            _ => return None,
        })
    }

    /// Bits a code takes in a packed word (its width rounded up to 2, 4 or 8).
    pub fn bits(self) -> usize {
        match self {
            Self::Q2K => 2,
            Self::Q4_0 | Self::Q4_1 | Self::Q3K | Self::Q4K => 4,
            Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q5K | Self::Q6K => 8,
        }
    }

    /// Values sharing one scale (and offset).
    pub fn group(self) -> usize {
        match self {
            Self::Q2K | Self::Q3K | Self::Q6K => 16,
            _ => 32,
        }
    }

    /// Added to the stored code before scaling (exact in f32).
    pub fn code_bias(self) -> f32 {
        match self {
            Self::Q4_0 => -8.0,
            Self::Q5_0 => -16.0,
            Self::Q8_0 => -128.0,
            Self::Q3K => -4.0,
            Self::Q6K => -32.0,
            Self::Q4_1 | Self::Q5_1 | Self::Q2K | Self::Q4K | Self::Q5K => 0.0,
        }
    }

    /// Whether each group adds an offset after scaling.
    pub fn has_offsets(self) -> bool {
        matches!(
            self,
            Self::Q4_1 | Self::Q5_1 | Self::Q2K | Self::Q4K | Self::Q5K
        )
    }

    /// Values and bytes of one ggml block (ggml-common.h `block_q4_0` … `block_q6_K`).
    pub fn ggml_block(self) -> (usize, usize) {
        match self {
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q2K => (QK_K, 84),
            Self::Q3K => (QK_K, 110),
            Self::Q4K => (QK_K, 144),
            Self::Q5K => (QK_K, 176),
            Self::Q6K => (QK_K, 210),
        }
    }

    /// Bytes a kept matrix of `n` values occupies: words, scales and offsets.
    pub fn packed_bytes(self, n: u64) -> u64 {
        let groups = n / self.group() as u64;
        let per_group_floats = if self.has_offsets() { 2 } else { 1 };
        n * self.bits() as u64 / 8 + groups * per_group_floats * 4
    }

    /// One ggml block's bytes `b` → its codes (value order), and each group's scale and offset
    /// (left untouched without offsets): value e = (codes[e] + bias)·scales[e / group]
    /// (+ offsets[e / group]).
    pub fn decompose(self, b: &[u8], codes: &mut [u32], scales: &mut [f32], offsets: &mut [f32]) {
        match self {
            Self::Q4_0 | Self::Q4_1 => {
                let at = if self == Self::Q4_1 { 4 } else { 2 };
                scales[0] = f16_at(b, 0);
                if self == Self::Q4_1 {
                    offsets[0] = f16_at(b, 2);
                }
                // Element j is the low nibble of qs[j], element j + 16 the high one.
                for (j, &q) in b[at..at + 16].iter().enumerate() {
                    codes[j] = u32::from(q & 0xF);
                    codes[j + 16] = u32::from(q >> 4);
                }
            }
            Self::Q5_0 | Self::Q5_1 => {
                // d (, m): f16; qh: u32, bit i the 5th bit of element i; qs[16] as Q4's.
                let at = if self == Self::Q5_1 { 4 } else { 2 };
                scales[0] = f16_at(b, 0);
                if self == Self::Q5_1 {
                    offsets[0] = f16_at(b, 2);
                }
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let hi = |i: usize| ((qh >> i) & 1) << 4;
                for (j, &q) in b[at + 4..at + 20].iter().enumerate() {
                    codes[j] = u32::from(q & 0xF) | hi(j);
                    codes[j + 16] = u32::from(q >> 4) | hi(j + 16);
                }
            }
            Self::Q8_0 => {
                scales[0] = f16_at(b, 0);
                for (j, &q) in b[2..34].iter().enumerate() {
                    codes[j] = (i32::from(q as i8) + 128) as u32;
                }
            }
            Self::Q2K => {
                // scales[16] (low nibble scale, high nibble min), qs[64], d, dmin: f16.
                let (packed, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
                for (s, &p) in packed.iter().enumerate() {
                    scales[s] = d * f32::from(p & 0xF);
                    offsets[s] = -(dmin * f32::from(p >> 4));
                }
                for (e, code) in codes.iter_mut().enumerate() {
                    let q = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                    *code = u32::from(q);
                }
            }
            Self::Q3K => {
                // hmask[32], qs[64] (low 2 bits), scales[12] (16 six-bit scales), d: f16.
                let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = f16_at(b, 108);
                for (i, scale) in scales.iter_mut().enumerate().take(16) {
                    let low = (packed[i % 8] >> (4 * (i / 8))) & 0xF;
                    let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
                    *scale = d * f32::from((low | (high << 4)) as i8 - 32);
                }
                for (e, code) in codes.iter_mut().enumerate() {
                    let low = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                    // A clear high bit subtracts 4 (ggml's convention): low + 4·bit − 4.
                    let high = (hmask[e % 32] >> (e / 32)) & 1;
                    *code = u32::from(low | (high << 2));
                }
            }
            Self::Q4K | Self::Q5K => {
                // d, dmin: f16, scales[12]; Q5_K: qh[32] (bit s = 5th bit of sub-block s);
                // qs[128]: sub-block s uses nibble s % 2 of qs[(s / 2)·32 ..].
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (sc, mn) = k_scale_min(&b[4..16]);
                for s in 0..8 {
                    scales[s] = d * f32::from(sc[s]);
                    offsets[s] = -(dmin * f32::from(mn[s]));
                }
                let (qh, qs) = match self {
                    Self::Q5K => (Some(&b[16..48]), &b[48..176]),
                    _ => (None, &b[16..144]),
                };
                for (e, code) in codes.iter_mut().enumerate() {
                    let s = e / 32;
                    let low = (qs[(s / 2) * 32 + e % 32] >> (4 * (s % 2))) & 0xF;
                    let high = qh.map_or(0, |qh| (qh[e % 32] >> s) & 1);
                    *code = u32::from(low | (high << 4));
                }
            }
            Self::Q6K => {
                // ql[128] (low nibbles), qh[64] (2 high bits), scales[16]: i8, d: f16.
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for (s, &c) in sc.iter().enumerate() {
                    scales[s] = d * f32::from(c as i8);
                }
                for (e, code) in codes.iter_mut().enumerate() {
                    let half = e / 128;
                    let low = (ql[half * 64 + e % 64] >> (4 * ((e % 128) / 64))) & 0xF;
                    let high = (qh[half * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                    *code = u32::from(low | (high << 4));
                }
            }
        }
    }
}

/// The 8 six-bit (scale, min) pairs packed in 12 bytes by Q4_K and Q5_K.
pub(crate) fn k_scale_min(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
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

/// The value of code `code` in a group with `scale` and `offset`: gguf-py's f32 operations.
pub fn value(format: BlockFormat, code: u32, scale: f32, offset: Option<f32>) -> f32 {
    let y = (code as f32 + format.code_bias()) * scale;
    match offset {
        Some(m) => y + m,
        None => y,
    }
}

/// A [rows, cols] matrix in blocks along its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMatrix {
    pub format: BlockFormat,
    pub rows: usize,
    pub cols: usize,
    /// Row-major, W = `cols · bits / 32` words a row; code k of word w holds column k·W + w
    /// and sits at bits k·bits.
    pub words: Vec<u32>,
    /// [rows, cols / group]
    pub scales: Vec<f32>,
    /// [rows, cols / group], for the formats with offsets.
    pub offsets: Option<Vec<f32>>,
}

impl BlockMatrix {
    /// Repacks a GGUF tensor's bytes ([rows, cols] in PyTorch order); an error when the row
    /// length is not a whole number of blocks or the byte count is off.
    pub fn from_ggml(
        format: BlockFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        let (block, block_bytes) = format.ggml_block();
        let blocks = rows * cols / block;
        if !cols.is_multiple_of(block) || bytes.len() != blocks * block_bytes {
            return Err(format!(
                "{rows}x{cols} {format:?} values need rows of whole {block}-value blocks and {} bytes, got {}",
                blocks * block_bytes,
                bytes.len()
            ));
        }
        let per_word = 32 / format.bits();
        let words_per_row = cols / per_word;
        let groups = block / format.group();
        let mut words = vec![0u32; rows * words_per_row];
        let mut scales = vec![0f32; rows * cols / format.group()];
        let mut offsets = vec![
            0f32;
            if format.has_offsets() {
                scales.len()
            } else {
                0
            }
        ];
        let mut codes = vec![0u32; block];
        let mut no_offsets = [0f32; 16];
        for (i, b) in bytes.chunks_exact(block_bytes).enumerate() {
            let g = i * groups..(i + 1) * groups;
            let block_offsets = match format.has_offsets() {
                true => &mut offsets[g.clone()],
                false => &mut no_offsets[..groups],
            };
            format.decompose(b, &mut codes, &mut scales[g], block_offsets);
            let (row, first_col) = (i * block / cols, i * block % cols);
            for (j, &c) in codes.iter().enumerate() {
                let col = first_col + j;
                let (word, k) = (
                    row * words_per_row + col % words_per_row,
                    col / words_per_row,
                );
                words[word] |= c << (format.bits() * k);
            }
        }
        Ok(Self {
            format,
            rows,
            cols,
            words,
            scales,
            offsets: format.has_offsets().then_some(offsets),
        })
    }

    /// A matrix of no rows yet, with room for `rows` rows of `cols` values ([`Self::append_rows`]).
    pub fn with_capacity(format: BlockFormat, rows: usize, cols: usize) -> Self {
        let groups = rows * cols / format.group();
        Self {
            format,
            rows: 0,
            cols,
            words: Vec::with_capacity(rows * cols * format.bits() / 32),
            scales: Vec::with_capacity(groups),
            offsets: format.has_offsets().then(|| Vec::with_capacity(groups)),
        }
    }

    /// `part`'s rows (same format and columns) after this matrix's: every array is row-major.
    pub fn append_rows(&mut self, part: BlockMatrix) {
        assert!(part.format == self.format && part.cols == self.cols);
        self.rows += part.rows;
        self.words.extend(part.words);
        self.scales.extend(part.scales);
        if let (Some(offsets), Some(more)) = (&mut self.offsets, part.offsets) {
            offsets.extend(more);
        }
    }

    /// Undoes llama.cpp's Q/K row permutation (`gguf_names::unpermute_rows`): it moves whole
    /// rows, so blocks stay intact.
    pub fn unpermute_rows(&self, heads: usize) -> Result<Self, String> {
        let (rows, blocks) = (self.rows, self.cols / self.format.group());
        let words = self.words.len() / rows;
        Ok(Self {
            words: unpermute_rows(&self.words, rows, words, heads)?,
            scales: unpermute_rows(&self.scales, rows, blocks, heads)?,
            offsets: match &self.offsets {
                Some(m) => Some(unpermute_rows(m, rows, blocks, heads)?),
                None => None,
            },
            ..*self
        })
    }

    /// The f32 values, row-major — what `dequant` gives for the same blocks.
    pub fn dequantize(&self) -> Vec<f32> {
        let (bits, group) = (self.format.bits(), self.format.group());
        let per_word = 32 / bits;
        let mask = (1u32 << bits) - 1;
        let words_per_row = self.cols / per_word;
        (0..self.rows * self.cols)
            .map(|e| {
                let (row, col) = (e / self.cols, e % self.cols);
                let word = self.words[row * words_per_row + col % words_per_row];
                let code = (word >> (bits * (col / words_per_row))) & mask;
                let offset = self.offsets.as_ref().map(|m| m[e / group]);
                value(self.format, code, self.scales[e / group], offset)
            })
            .collect()
    }

    pub fn packed_bytes(&self) -> u64 {
        self.format.packed_bytes((self.rows * self.cols) as u64)
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// (f32 bytes, packed bytes) of the block-quantised matrices of `file` that `keep` names (HF
/// names) — what `plan` counts for them with `keep_quantized`.
pub fn kept_bytes(file: &GgufFile, keep: impl Fn(&str) -> bool) -> (u64, u64) {
    file.tensors
        .iter()
        .filter(|t| match (hf_name_in(file, &t.name), t.dims.as_slice()) {
            (Some(name), [_, _]) => keep(&name),
            // A stacked expert tensor: kept when each expert's slice is.
            (Some(name), &[_, _, experts]) => expert_slices(&name, experts as usize)
                .is_some_and(|names| names.iter().all(|n| keep(n))),
            _ => false,
        })
        .filter_map(|t| {
            let n = t.n_elements();
            BlockFormat::of(t.ggml_type).map(|f| (n * 4, f.packed_bytes(n)))
        })
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
}

/// `tensor` kept in its blocks, in the HF basis (name, [rows, cols], Q/K rows un-permuted); a
/// stacked expert tensor [E, rows, cols] as one matrix per expert. Empty when it is not a matrix
/// in a format [`BlockFormat`] keeps.
pub fn hf_blocks(
    file: &GgufFile,
    tensor: &GgufTensor,
) -> Result<Vec<(String, BlockMatrix)>, WeightsError> {
    let (Some(name), Some(format)) = (
        hf_name_in(file, &tensor.name),
        BlockFormat::of(tensor.ggml_type),
    ) else {
        return Ok(Vec::new());
    };
    let fail =
        |e: String| WeightsError::format(&file.path, format!("tensor `{}`: {e}", tensor.name));
    let bytes = file.tensor_bytes(tensor);
    match *tensor.dims.as_slice() {
        [cols, rows] => {
            let mut blocks = BlockMatrix::from_ggml(format, bytes, rows as usize, cols as usize)
                .map_err(fail)?;
            if let Some(h) = permuted_with(file, tensor)? {
                blocks = blocks.unpermute_rows(h).map_err(fail)?;
            }
            Ok(vec![(name, blocks)])
        }
        [cols, rows, experts] => {
            let Some(names) = expert_slices(&name, experts as usize) else {
                return Ok(Vec::new());
            };
            let each = bytes.len() / (experts as usize).max(1);
            names
                .into_iter()
                .zip(bytes.chunks_exact(each.max(1)))
                .map(|(name, bytes)| {
                    BlockMatrix::from_ggml(format, bytes, rows as usize, cols as usize)
                        .map(|b| (name, b))
                        .map_err(fail)
                })
                .collect()
        }
        _ => Ok(Vec::new()),
    }
}
