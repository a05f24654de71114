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

    /// (code + bias)·d (+ m), code k of each word at bits k·bits.
    fn decode(&self) -> Tensor<2> {
        let [rows, cols] = self.shape;
        let per_word = 32 / self.bits;
        let mask = (1i32 << self.bits) - 1;
        let codes: Vec<Tensor<2, Int>> = (0..per_word)
            .map(|k| {
                self.words
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
        let values = values * self.scales.clone().expand(blocks);
        let values = match &self.offsets {
            Some(m) => values + m.clone().expand(blocks),
            None => values,
        };
        values.reshape([rows, cols])
    }
}
