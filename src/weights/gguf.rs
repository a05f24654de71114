//! GGUF reader (versions 2 and 3): header, every metadata type, tensor infos, alignment. The file
//! is memory-mapped and every count, length and offset is checked against the file's size before
//! it is trusted, so a corrupt header gives an error, never a panic or a huge allocation.
//! Dequantisation and the GGUF ↔ HF name map build on this (DESIGN.md §2); this file only reads.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::WeightsError;
use super::ggml_type::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// A metadata value, typed as the file types it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer type widened to u64 (negative values give None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

impl fmt::Display for MetaValue {
    /// Short form for listings: long strings and arrays are summarised, not dumped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::U8(v) => write!(f, "{v}"),
            Self::I8(v) => write!(f, "{v}"),
            Self::U16(v) => write!(f, "{v}"),
            Self::I16(v) => write!(f, "{v}"),
            Self::U32(v) => write!(f, "{v}"),
            Self::I32(v) => write!(f, "{v}"),
            Self::F32(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
            Self::U64(v) => write!(f, "{v}"),
            Self::I64(v) => write!(f, "{v}"),
            Self::F64(v) => write!(f, "{v}"),
            Self::String(s) if s.chars().count() > 60 || s.contains('\n') => {
                let head: String = s.chars().take(40).collect::<String>().replace('\n', "\\n");
                write!(f, "{head:?}… ({} chars)", s.chars().count())
            }
            Self::String(s) => write!(f, "{s:?}"),
            Self::Array(items) if items.len() > 8 => {
                let kind = items.first().map(MetaValue::type_name).unwrap_or("?");
                write!(f, "[{kind}; {} items]", items.len())
            }
            Self::Array(items) => {
                let parts: Vec<String> = items.iter().map(|v| v.to_string()).collect();
                write!(f, "[{}]", parts.join(", "))
            }
        }
    }
}

impl MetaValue {
    fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }
}

/// One tensor's header entry. `dims` is in ggml order: `dims[0]` is the innermost (contiguous)
/// axis, so a PyTorch weight [out, in] is stored as dims [in, out].
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the tensor data section.
    pub offset: u64,
    pub n_bytes: u64,
}

impl GgufTensor {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file: parsed header plus the mapped bytes the tensor data lives in.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<GgufTensor>,
    /// Absolute byte offset of the tensor data section.
    pub data_offset: u64,
    map: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.into(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 24 {
            return Err(WeightsError::format(
                path,
                format!("{len} bytes is too short for a GGUF header"),
            ));
        }
        // SAFETY: the map is read-only; a file truncated underneath us is the one hazard, the
        // same as for every mmap-based loader (safetensors, llama.cpp).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = parse(&map).map_err(|e| WeightsError::format(path, e))?;
        Ok(Self {
            path: path.into(),
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            data_offset: header.data_offset,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A tensor's values as f32, in the file's (ggml) element order.
    pub fn dequantize(&self, tensor: &GgufTensor) -> Result<Vec<f32>, WeightsError> {
        super::dequant::dequantize(
            tensor.ggml_type,
            self.tensor_bytes(tensor),
            tensor.n_elements() as usize,
        )
        .map_err(|e| WeightsError::format(&self.path, format!("tensor `{}`: {e}", tensor.name)))
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_bytes(&self, tensor: &GgufTensor) -> &[u8] {
        let start = (self.data_offset + tensor.offset) as usize;
        &self.map[start..start + tensor.n_bytes as usize]
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<GgufTensor>,
    data_offset: u64,
}

/// Parses the header of `bytes`; errors are messages, the caller adds the path.
fn parse(bytes: &[u8]) -> Result<Header, String> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4)?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file (magic {:?}, expected \"GGUF\")",
            String::from_utf8_lossy(magic)
        ));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (2 and 3 are)"
        ));
    }
    let n_tensors = r.count("tensor count", 8 + 4 + 4 + 8)?;
    let n_kv = r.count("metadata count", 8 + 4)?;
    let mut metadata = Vec::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r
            .value(ty, 0)
            .map_err(|e| format!("metadata `{key}`: {e}"))?;
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => return Err(format!("general.alignment {v} is not a power of two")),
        },
        None => DEFAULT_ALIGNMENT,
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let dims = (0..n_dims)
            .map(|_| r.u64())
            .collect::<Result<Vec<_>, _>>()?;
        let ggml_type = GgmlType(r.u32()?);
        let offset = r.u64()?;
        infos.push((name, dims, ggml_type, offset));
    }
    let data_offset = r.pos.div_ceil(alignment as usize) as u64 * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_offset);
    let mut tensors = Vec::with_capacity(infos.len());
    let mut seen = std::collections::HashSet::new();
    for (name, dims, ggml_type, offset) in infos {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        let n_bytes = tensor_bytes(&name, &dims, ggml_type)?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` offset {offset} is not aligned to {alignment}"
            ));
        }
        match offset.checked_add(n_bytes) {
            Some(end) if end <= data_len => {}
            _ => {
                return Err(format!(
                    "tensor `{name}` ({ggml_type}, dims {dims:?}) needs bytes {offset}..{} of the data section, which has {data_len}: the file is truncated or corrupt",
                    offset.saturating_add(n_bytes)
                ));
            }
        }
        tensors.push(GgufTensor {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        });
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        data_offset,
    })
}

/// Byte size of a tensor, refusing unknown types, overflow and rows that split a block.
fn tensor_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, String> {
    let (type_name, block, block_bytes) = ty
        .traits()
        .ok_or_else(|| format!("tensor `{name}` has unknown ggml type {}", ty.0))?;
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor `{name}` dims {dims:?} overflow"))?;
    if !dims[0].is_multiple_of(block) {
        return Err(format!(
            "tensor `{name}`: row of {} is not a multiple of {type_name}'s block of {block}",
            dims[0]
        ));
    }
    (elements / block)
        .checked_mul(block_bytes)
        .ok_or_else(|| format!("tensor `{name}` dims {dims:?} overflow"))
}

/// Bounds-checked little-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Arrays nest; a limit keeps a malicious file from recursing the stack away.
const MAX_NESTING: usize = 8;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let remaining = self.bytes.len() - self.pos;
        if n > remaining {
            return Err(format!(
                "header is truncated: needs {n} bytes at offset {}, only {remaining} left",
                self.pos
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u64 count of items each at least `min_size` bytes, refused if the rest of the file
    /// could not hold that many.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, String> {
        let n = self.u64()?;
        let room = ((self.bytes.len() - self.pos) / min_size.max(1)) as u64;
        if n > room {
            return Err(format!(
                "{what} {n} is more than the file could hold ({room} at most): the file is truncated or corrupt"
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.count("string length", 1)?;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| format!("string at offset {} is not UTF-8", self.pos - len))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("bool byte {b} is neither 0 nor 1")),
            },
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(format!("arrays nested deeper than {MAX_NESTING}"));
                }
                let item_ty = self.u32()?;
                let min_size = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    _ => return Err(format!("unknown array item type {item_ty}")),
                };
                let n = self.count("array length", min_size)?;
                let items = (0..n)
                    .map(|_| self.value(item_ty, depth + 1))
                    .collect::<Result<_, _>>()?;
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            _ => return Err(format!("unknown metadata type {ty}")),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal GGUF v3 byte image: metadata `general.architecture = "llama"` and one F32
    /// tensor `t` of dims [4, 2], data = 0..8 as f32.
    pub(crate) fn tiny_gguf() -> Vec<u8> {
        fn s(out: &mut Vec<u8>, text: &str) {
            out.extend((text.len() as u64).to_le_bytes());
            out.extend(text.as_bytes());
        }
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend(1u64.to_le_bytes()); // tensors
        out.extend(1u64.to_le_bytes()); // kv
        s(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        s(&mut out, "llama");
        s(&mut out, "t");
        out.extend(2u32.to_le_bytes());
        out.extend(4u64.to_le_bytes());
        out.extend(2u64.to_le_bytes());
        out.extend(0u32.to_le_bytes()); // F32
        out.extend(0u64.to_le_bytes()); // offset
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for i in 0..8 {
            out.extend((i as f32).to_le_bytes());
        }
        out
    }

    #[test]
    fn reads_a_well_formed_file() {
        let h = parse(&tiny_gguf()).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(
            h.metadata[0],
            (
                "general.architecture".into(),
                MetaValue::String("llama".into())
            )
        );
        assert_eq!(h.tensors[0].dims, vec![4, 2]);
        assert_eq!(h.tensors[0].n_bytes, 32);
        assert_eq!(h.data_offset % 32, 0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_gguf();
        for len in 0..full.len() {
            assert!(
                parse(&full[..len]).is_err(),
                "truncated to {len} bytes was accepted"
            );
        }
    }

    #[test]
    fn absurd_counts_are_refused_before_allocating() {
        let mut bytes = tiny_gguf();
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = parse(&bytes).err().unwrap();
        assert!(err.contains("more than the file could hold"), "{err}");
    }

    #[test]
    fn unknown_tensor_type_is_named() {
        let mut bytes = tiny_gguf();
        // 24 header + 20+8 key + 4 type + 5+8 value + 1+8 name + 4 n_dims + 16 dims = 98.
        let pos = 98;
        assert_eq!(bytes[pos..pos + 4], 0u32.to_le_bytes());
        bytes[pos..pos + 4].copy_from_slice(&77u32.to_le_bytes());
        let err = parse(&bytes).err().unwrap();
        assert!(err.contains("unknown ggml type 77"), "{err}");
    }

    #[test]
    fn wrong_magic_is_named() {
        let mut bytes = tiny_gguf();
        bytes[0..4].copy_from_slice(b"PK\x03\x04");
        assert!(parse(&bytes).err().unwrap().contains("not a GGUF file"));
    }
}
