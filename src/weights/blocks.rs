//! A GGUF matrix kept in its ggml blocks instead of f32 (`model.keep_quantized`): each row is
//! cut in blocks of 32 values sharing one scale d (and for Q4_1 one offset m); the integer codes
//! are packed into 32-bit words, 8 four-bit or 4 eight-bit codes a word, so Q4_0/Q4_1 cost 0.75
//! and Q8_0 1.125 bytes per value instead of 4. Every value decodes as (code + bias)·d (+ m) —
//! the same f32 operations in the same order as `dequant` (gguf-py), so a kept matrix decodes
//! to exactly the values a dequantised load holds. `model::frozen` decodes on the device.
//! Word w of a row holds that row's columns w, w + W, w + 2W, … (W words a row), so code k of
//! every word is one contiguous run of columns: decoding concatenates whole slices instead of
//! interleaving codes (an interleaving stack cost 30× more on flex).

use half::f16;

use super::WeightsError;
use super::ggml_type::GgmlType;
use super::gguf::GgufFile;
use super::gguf::GgufTensor;
use super::gguf_names::{hf_name, permuted_with, unpermute_rows};

pub const BLOCK: usize = 32;

/// The block formats kept packed; the others (K-quants, Q5) are dequantised at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// d·(q − 8), q a 4-bit code.
    Q4_0,
    /// d·q + m.
    Q4_1,
    /// d·q, q an i8 (stored as q + 128).
    Q8_0,
}

impl BlockFormat {
    pub fn of(ty: GgmlType) -> Option<Self> {
        match ty.0 {
            2 => Some(Self::Q4_0),
            3 => Some(Self::Q4_1),
            8 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bits per stored code.
    pub fn bits(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 4,
            Self::Q8_0 => 8,
        }
    }

    /// Added to the stored code before scaling (exact in f32).
    pub fn code_bias(self) -> f32 {
        match self {
            Self::Q4_0 => -8.0,
            Self::Q4_1 => 0.0,
            Self::Q8_0 => -128.0,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes a kept matrix of `n` values occupies: words, scales and offsets.
    pub fn packed_bytes(self, n: u64) -> u64 {
        let blocks = n / BLOCK as u64;
        let per_block_floats = if self == Self::Q4_1 { 2 } else { 1 };
        n * self.bits() as u64 / 8 + blocks * per_block_floats * 4
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
    /// [rows, cols / 32]
    pub scales: Vec<f32>,
    /// [rows, cols / 32], Q4_1 only.
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
        let blocks = rows * cols / BLOCK;
        if !cols.is_multiple_of(BLOCK) || bytes.len() != blocks * format.block_bytes() {
            return Err(format!(
                "{rows}x{cols} {format:?} values need rows of whole {BLOCK}-value blocks and {} bytes, got {}",
                blocks * format.block_bytes(),
                bytes.len()
            ));
        }
        let per_word = 32 / format.bits();
        let words_per_row = cols / per_word;
        let mut words = vec![0u32; rows * words_per_row];
        let mut scales = Vec::with_capacity(blocks);
        let mut offsets = (format == BlockFormat::Q4_1).then(|| Vec::with_capacity(blocks));
        let mut codes = [0u32; BLOCK];
        for (i, b) in bytes.chunks_exact(format.block_bytes()).enumerate() {
            scales.push(f16_at(b, 0));
            match format {
                BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                    let qs = if format == BlockFormat::Q4_1 {
                        &b[4..20]
                    } else {
                        &b[2..18]
                    };
                    // Element j is the low nibble of qs[j], element j + 16 the high one.
                    for (j, &q) in qs.iter().enumerate() {
                        codes[j] = u32::from(q & 0xF);
                        codes[j + 16] = u32::from(q >> 4);
                    }
                }
                BlockFormat::Q8_0 => {
                    for (j, &q) in b[2..34].iter().enumerate() {
                        codes[j] = (i32::from(q as i8) + 128) as u32;
                    }
                }
            }
            if let Some(m) = &mut offsets {
                m.push(f16_at(b, 2));
            }
            let (row, first_col) = (i * BLOCK / cols, i * BLOCK % cols);
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
            offsets,
        })
    }

    /// Undoes llama.cpp's Q/K row permutation (`gguf_names::unpermute_rows`): it moves whole
    /// rows, so blocks stay intact.
    pub fn unpermute_rows(&self, heads: usize) -> Result<Self, String> {
        let (rows, blocks) = (self.rows, self.cols / BLOCK);
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
        let bits = self.format.bits();
        let per_word = 32 / bits;
        let mask = (1u32 << bits) - 1;
        let bias = self.format.code_bias();
        let words_per_row = self.cols / per_word;
        (0..self.rows * self.cols)
            .map(|e| {
                let (row, col) = (e / self.cols, e % self.cols);
                let word = self.words[row * words_per_row + col % words_per_row];
                let code = (word >> (bits * (col / words_per_row))) & mask;
                let y = (code as f32 + bias) * self.scales[e / BLOCK];
                match &self.offsets {
                    Some(m) => y + m[e / BLOCK],
                    None => y,
                }
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
        .filter(|t| t.dims.len() == 2 && hf_name(&t.name).is_some_and(|n| keep(&n)))
        .filter_map(|t| {
            let n = t.n_elements();
            BlockFormat::of(t.ggml_type).map(|f| (n * 4, f.packed_bytes(n)))
        })
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
}

/// `tensor` kept in its blocks, in the HF basis (name, [rows, cols], Q/K rows un-permuted);
/// None when it is not a matrix in a format [`BlockFormat`] keeps.
pub fn hf_blocks(
    file: &GgufFile,
    tensor: &GgufTensor,
) -> Result<Option<(String, BlockMatrix)>, WeightsError> {
    let (Some(name), Some(format), &[cols, rows]) = (
        hf_name(&tensor.name),
        BlockFormat::of(tensor.ggml_type),
        tensor.dims.as_slice(),
    ) else {
        return Ok(None);
    };
    let fail =
        |e: String| WeightsError::format(&file.path, format!("tensor `{}`: {e}", tensor.name));
    let mut blocks = BlockMatrix::from_ggml(
        format,
        file.tensor_bytes(tensor),
        rows as usize,
        cols as usize,
    )
    .map_err(fail)?;
    if let Some(h) = permuted_with(file, tensor)? {
        blocks = blocks.unpermute_rows(h).map_err(fail)?;
    }
    Ok(Some((name, blocks)))
}
