//! A frozen weight matrix on the device: f32, bf16/f16 widened to f32 per use (`model.dtype`) or
//! multiplied in its own type (`model.compute_dtype`, [`frozen_product`]),
//! or a GGUF matrix kept in its blocks and decoded per use (`model.keep_quantized`, QLoRA-style). Decoding runs the same f32 operations as the
//! host-side dequantiser, so a kept matrix multiplies with exactly the values an f32 load holds.
//! Only integer shifts, masks and elementwise float ops are used, so every backend runs it.

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use crate::dtype::Dtype;
use crate::kernels;
use crate::transfer;
use crate::weights::blocks::BlockMatrix;
use crate::weights::host::FrozenMatrix;
use burn::tensor::Float;

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a burn tensor handle is 640 bytes; one per linear layer
pub enum FrozenWeight {
    Dense(Tensor<2>),
    Blocks(PackedBlocks),
}

/// [`BlockMatrix`] on the device.
#[derive(Debug, Clone)]
pub struct PackedBlocks {
    shape: [usize; 2],
    /// What the words, scales and offsets occupy.
    bytes: u64,
    bits: usize,
    /// Values sharing a scale and offset (16 or 32).
    group: usize,
    code_bias: f32,
    /// [rows, cols · bits / 32], i32 bit patterns.
    words: Tensor<2, Int>,
    /// [rows, cols / group, 1]
    scales: Tensor<3>,
    offsets: Option<Tensor<3>>,
}

impl FrozenWeight {
    pub fn new(matrix: FrozenMatrix, device: &Device) -> Self {
        match matrix {
            FrozenMatrix::Dense(t, storage) => {
                let shape = [t.shape[0], t.shape[1]];
                let w: Tensor<2> = transfer::upload(TensorData::new(t.values, shape), device);
                Self::Dense(w.cast(storage.float())) // a no-op on f32
            }
            FrozenMatrix::Blocks(b) => Self::Blocks(PackedBlocks::new(b, device)),
        }
    }

    /// [out, in]
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(w) => w.dims(),
            Self::Blocks(b) => b.shape,
        }
    }

    /// The f32 matrix: the tensor itself, or one decoded for this use (freed after it).
    pub fn dense(&self) -> Tensor<2> {
        self.in_dtype(Dtype::F32)
    }

    /// The matrix in `compute`'s dtype (a cast is a no-op where it is stored so; blocks decode
    /// to f32 first).
    pub fn in_dtype(&self, compute: Dtype) -> Tensor<2> {
        match self {
            Self::Dense(w) => w.clone().cast(compute.float()),
            Self::Blocks(b) => b.decode().cast(compute.float()),
        }
    }

    /// Stores a dense weight as `dtype` (a kept-quantised one stays in its blocks).
    pub fn store_as(&mut self, dtype: Dtype) {
        if let Self::Dense(w) = self {
            *w = w.clone().cast(dtype.float());
        }
    }

    /// Bytes the weight occupies on the device.
    pub fn resident_bytes(&self) -> u64 {
        match self {
            Self::Dense(w) => (w.shape().num_elements() * w.dtype().size()) as u64,
            Self::Blocks(b) => b.bytes,
        }
    }
}

/// Values a kept-quantised matrix decodes at once in its products: 2²⁴ (64 MB of f32). A larger
/// one (a 152k-token embedding used as the head, or the head itself) is multiplied in chunks of
/// rows decoded one at a time, so no f32 copy of it exists.
pub const DECODED_VALUES: usize = 1 << 22;

impl FrozenWeight {
    /// The row ranges (first, count) the products decode one at a time, `values` at most: one
    /// for a dense matrix.
    fn chunks(&self, values: usize) -> Vec<(usize, usize)> {
        let [rows, cols] = self.dims();
        let per = match self {
            Self::Dense(_) => rows,
            Self::Blocks(_) => (values / cols.max(1)).clamp(1, rows.max(1)),
        };
        (0..rows)
            .step_by(per.max(1))
            .map(|r| (r, per.min(rows - r)))
            .collect()
    }

    /// Rows `first..first + count` in `compute`'s dtype, decoded from blocks if kept so.
    fn row_chunk(&self, first: usize, count: usize, compute: Dtype) -> Tensor<2> {
        match self {
            Self::Dense(w) => w.clone().narrow(0, first, count).cast(compute.float()),
            Self::Blocks(b) => b.decode_rows(first, count).cast(compute.float()),
        }
    }

    /// x·Wᵀ [n, out] of x [n, in], in `compute` ([`frozen_product_nt`]); blocks decode a chunk
    /// of rows at a time (each output column is its own row's product).
    pub fn product_nt(&self, x: Tensor<2>, compute: Dtype) -> Tensor<2> {
        self.product_nt_decoding(x, compute, DECODED_VALUES)
    }

    /// [`product_nt`](Self::product_nt) decoding at most `values` at a time.
    pub fn product_nt_decoding(&self, x: Tensor<2>, compute: Dtype, values: usize) -> Tensor<2> {
        let chunks = self.chunks(values);
        if chunks.len() == 1 {
            return frozen_product_nt(x, self.in_dtype(compute), compute);
        }
        let parts = chunks.into_iter().map(|(first, count)| {
            frozen_product_nt(x.clone(), self.row_chunk(first, count, compute), compute)
        });
        Tensor::cat(parts.collect(), 1)
    }

    /// dy·W [n, in] of dy [n, out], in `compute` ([`frozen_product`]); blocks decode a chunk of
    /// rows at a time and the chunks' products are summed.
    pub fn product(&self, dy: Tensor<2>, compute: Dtype) -> Tensor<2> {
        self.product_decoding(dy, compute, DECODED_VALUES)
    }

    /// [`product`](Self::product) decoding at most `values` at a time.
    pub fn product_decoding(&self, dy: Tensor<2>, compute: Dtype, values: usize) -> Tensor<2> {
        let chunks = self.chunks(values);
        if chunks.len() == 1 {
            return frozen_product(dy, self.in_dtype(compute), compute);
        }
        (chunks.into_iter())
            .map(|(first, count)| {
                let dy = dy.clone().narrow(1, first, count);
                frozen_product(dy, self.row_chunk(first, count, compute), compute)
            })
            .reduce(|a, b| a + b)
            .expect("a matrix has rows")
    }

    /// Rows `ids` [n] of the f32 matrix, [n, in]: an embedding lookup, which for blocks
    /// decodes only those rows.
    pub fn rows(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        match self {
            Self::Dense(w) => w.clone().select(0, ids).cast(FloatDType::F32),
            Self::Blocks(b) => b.decode_selected(ids),
        }
    }
}

/// x·w of a frozen matrix w in `compute` (w already in that dtype, x f32) → f32. f32 through
/// [`kernels::matmul`]; bf16/f16 as tensor cores and torch autocast compute it: both operands
/// in the half type, products summed in f32, the result rounded to the half type — then
/// widened, so everything after the product (adapters, norms, the loss) stays f32.
pub fn frozen_product(x: Tensor<2>, w: Tensor<2>, compute: Dtype) -> Tensor<2> {
    match compute {
        Dtype::F32 => kernels::matmul(x, w),
        half => x.cast(half.float()).matmul(w).cast(FloatDType::F32),
    }
}

/// x·wᵀ, as [`frozen_product`] (f32 through [`kernels::matmul_nt`]).
pub fn frozen_product_nt(x: Tensor<2>, w: Tensor<2>, compute: Dtype) -> Tensor<2> {
    match compute {
        Dtype::F32 => kernels::matmul_nt(x, w),
        half => frozen_product(x, w.transpose(), half),
    }
}

impl PackedBlocks {
    fn new(b: BlockMatrix, device: &Device) -> Self {
        let (rows, cols) = (b.rows, b.cols);
        let per_row_words = b.words.len() / rows;
        let words: Vec<i32> = b.words.iter().map(|&w| w as i32).collect();
        let group = b.format.group();
        let floats = |v: Vec<f32>| {
            transfer::upload::<3, Float>(TensorData::new(v, [rows, cols / group, 1]), device)
        };
        Self {
            shape: [rows, cols],
            bytes: b.packed_bytes(),
            bits: b.format.bits(),
            group,
            code_bias: b.format.code_bias(),
            words: transfer::upload(
                TensorData::new(words, [rows, per_row_words]),
                (device, DType::I32),
            ),
            scales: floats(b.scales),
            offsets: b.offsets.map(floats),
        }
    }

    /// The whole matrix in f32.
    fn decode(&self) -> Tensor<2> {
        self.decode_parts(
            self.words.clone(),
            self.scales.clone(),
            self.offsets.clone(),
        )
    }

    /// Rows `first..first + count` in f32.
    fn decode_rows(&self, first: usize, count: usize) -> Tensor<2> {
        let rows = |t: Tensor<3>| t.narrow(0, first, count);
        let words = self.words.clone().narrow(0, first, count);
        self.decode_parts(
            words,
            rows(self.scales.clone()),
            self.offsets.clone().map(rows),
        )
    }

    /// Rows `ids` in f32.
    fn decode_selected(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        let rows = |t: Tensor<3>| t.select(0, ids.clone());
        let words = self.words.clone().select(0, ids.clone());
        self.decode_parts(
            words,
            rows(self.scales.clone()),
            self.offsets.clone().map(rows),
        )
    }

    /// (code + bias)·d (+ m) of some rows' words, scales and offsets, code k of each word at
    /// bits k·bits; every row decodes alone, so a subset of rows decodes to the same values.
    fn decode_parts(
        &self,
        words: Tensor<2, Int>,
        scales: Tensor<3>,
        offsets: Option<Tensor<3>>,
    ) -> Tensor<2> {
        let [rows, _] = words.dims();
        let cols = self.shape[1];
        let per_word = 32 / self.bits;
        let mask = (1i32 << self.bits) - 1;
        let codes: Vec<Tensor<2, Int>> = (0..per_word)
            .map(|k| {
                words
                    .clone()
                    .bitwise_right_shift_scalar((k * self.bits) as i32)
                    .bitwise_and_scalar(mask)
            })
            .collect();
        // Code k of every word is the run of columns k·W .. (k+1)·W (`weights::blocks`).
        let codes = Tensor::cat(codes, 1);
        let blocks = [rows, cols / self.group, self.group];
        let values = codes.reshape(blocks).float();
        let values = if self.code_bias == 0.0 {
            values
        } else {
            values.add_scalar(self.code_bias)
        };
        let values = values * scales.expand(blocks);
        let values = match offsets {
            Some(m) => values + m.expand(blocks),
            None => values,
        };
        values.reshape([rows, cols])
    }
}
