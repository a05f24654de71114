//! Writing GGUF v3 (the layout llama.cpp's gguf-py writes): header, metadata, tensor infos with
//! ggml dims (innermost first) and offsets, data aligned to 32 bytes. Scalars and strings as
//! metadata; F32, F16, BF16 and Q8_0 tensors — what a LoRA adapter needs. Q8_0 quantises as
//! gguf-py does (per block of 32: d = max|x|/127 as f16, q = round-half-away(x/d)); a tensor
//! whose rows are not a multiple of 32 falls back to F16, as llama.cpp's converter does.
//! Written atomically.

use std::io::{self, Write};
use std::path::Path;

use half::{bf16, f16};

use super::gguf::MetaValue;
use crate::dtype::Dtype;

const ALIGNMENT: usize = 32;

/// Element type of written tensors: the float [`Dtype`]s and GGUF's own Q8_0 blocks (so also what
/// `export --dtype` takes: every format takes the floats, GGUF also q8_0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl From<Dtype> for TensorType {
    fn from(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F32 => Self::F32,
            Dtype::Bf16 => Self::Bf16,
            Dtype::F16 => Self::F16,
        }
    }
}

impl TensorType {
    /// The float dtype this is; None for Q8_0, which only GGUF stores.
    pub fn float(self) -> Option<Dtype> {
        match self {
            Self::F32 => Some(Dtype::F32),
            Self::Bf16 => Some(Dtype::Bf16),
            Self::F16 => Some(Dtype::F16),
            Self::Q8_0 => None,
        }
    }

    fn ggml_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 8,
            Self::Bf16 => 30,
        }
    }

    /// The type a tensor whose rows hold `row` values is written in.
    fn for_row(self, row: usize) -> Self {
        if self == Self::Q8_0 && !row.is_multiple_of(32) {
            Self::F16
        } else {
            self
        }
    }

    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            Self::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            Self::F16 => out.extend(values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes())),
            Self::Bf16 => out.extend(values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes())),
            Self::Q8_0 => {
                for block in values.chunks(32) {
                    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                    out.extend(f16::from_f32(d).to_le_bytes());
                    // f32::round rounds half away from zero, as gguf-py's np_roundf.
                    out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
                }
            }
        }
    }
}

/// A tensor to write: PyTorch-order shape (outermost first), row-major values.
pub struct OutTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn value(out: &mut Vec<u8>, v: &MetaValue) -> io::Result<()> {
    let (tag, bytes): (u32, Vec<u8>) = match v {
        MetaValue::U8(x) => (0, x.to_le_bytes().to_vec()),
        MetaValue::I8(x) => (1, x.to_le_bytes().to_vec()),
        MetaValue::U16(x) => (2, x.to_le_bytes().to_vec()),
        MetaValue::I16(x) => (3, x.to_le_bytes().to_vec()),
        MetaValue::U32(x) => (4, x.to_le_bytes().to_vec()),
        MetaValue::I32(x) => (5, x.to_le_bytes().to_vec()),
        MetaValue::F32(x) => (6, x.to_le_bytes().to_vec()),
        MetaValue::Bool(x) => (7, vec![u8::from(*x)]),
        MetaValue::String(s) => {
            let mut b = Vec::new();
            string(&mut b, s);
            (8, b)
        }
        MetaValue::U64(x) => (10, x.to_le_bytes().to_vec()),
        MetaValue::I64(x) => (11, x.to_le_bytes().to_vec()),
        MetaValue::F64(x) => (12, x.to_le_bytes().to_vec()),
        MetaValue::Array(_) => {
            return Err(io::Error::other(
                "array metadata is not needed by our writers",
            ));
        }
    };
    out.extend(tag.to_le_bytes());
    out.extend(bytes);
    Ok(())
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
}

/// The whole file in memory (adapters are small), then written atomically to `path`.
pub fn write(
    path: &Path,
    metadata: &[(&str, MetaValue)],
    tensors: &[OutTensor],
    ty: TensorType,
) -> io::Result<()> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        string(&mut out, key);
        value(&mut out, v)?;
    }
    let mut data = Vec::new();
    for t in tensors {
        if t.values.len() != t.shape.iter().product::<usize>() {
            return Err(io::Error::other(format!(
                "tensor `{}`: shape and values disagree",
                t.name
            )));
        }
        string(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        let ty = ty.for_row(t.shape.last().copied().unwrap_or(0));
        out.extend(ty.ggml_id().to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        ty.encode(&t.values, &mut data);
        pad(&mut data);
    }
    pad(&mut out);
    out.extend(data);
    crate::atomic::write_atomic(path, |f| f.write_all(&out))
}
