//! Our own kernels, one file per backend family — [`flex`] (the CPU), [`cube`] (every cubecl GPU
//! runtime) — each function here beside the generic tensor ops that are its oracle and its path
//! on every other backend or under autodiff. Knows no model.
//!
//! On flex a kernel reaches the buffers through burn's extension API
//! (`Tensor::try_into_primitive::<Flex>`, results wrapped by `from_data`); on cubecl a kernel is a
//! `#[cube]` function behind a burn backend extension.
//!
//! - [`dropout`]: x ⊙ an inverted-dropout mask drawn from a splitmix64 stream. On cubecl each
//!   element's draw is computed on the device from (stream, index); elsewhere the mask is drawn
//!   on the host in parallel chunks. Both give the same bits, so flex stays the oracle.
//! - [`matmul`]: every 2-D product, through gemm at the operands' own strides into one buffer
//!   gemm writes without reading: flex allocates a product's output as bytes and copies them
//!   into a realigned buffer (a second allocation, fresh pages and a memcpy per product).
//! - [`matmul_nt`]: x·Wᵀ for a few rows (the decode step's one token): flex's gemm runs a product
//!   under 192³ multiply-adds on one thread, and a decode step is a chain of such matrix-vector
//!   products whose cost is reading W once — so the rows of W are split across the threads.
//! - [`add_matmul_nt`]: y + u·Bᵀ written into y (a LoRA output added to its base): flex would
//!   give u·Bᵀ its own [n, out] buffer — fresh pages — and add them in another pass.
//! - [`attention`]: softmax attention without a gradient (evaluation, generation). flex's fused
//!   attention scores every key of every query with a scalar loop and libm `expf`; this one
//!   multiplies blocks of 64 queries by only the keys the mask lets them reach (half the keys
//!   of a causal row), with a vectorised exponential, and reads grouped key/value heads in place.
//! - [`attention_forward`], [`attention_backward`]: training attention on cubecl, flash
//!   attention's scheme as our own kernels (a unit per row, the other side's tiles in shared
//!   memory, the mask computed from per-token codes): no [s, t] buffer, forward or backward.
//!   Elsewhere None, and the caller's tiled or materialised layout runs (the oracle).
//! - [`silu_gate`], [`silu_gate_backward`]: SwiGLU's silu(gate)·up and its two input gradients,
//!   one pass each instead of four to six, with the vectorised exponential (libm's scalar `expf`
//!   was a tenth of an evaluation's time).
//! - [`nll_rows`], [`nll_and_gradient`]: cross-entropy of logit rows (and its gradient
//!   softmax − onehot, written over the logits when nothing else holds them), one row at a time
//!   in cache instead of six passes over [rows, vocab].

use std::cell::Cell;

use crate::transfer;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use rayon::prelude::*;

/// a·b: a [m, k], b [k, n] → [m, n], either operand possibly a transposed or narrowed view.
pub fn matmul(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if let Some(y) = flex::matmul(&a, &b) {
        return y;
    }
    a.matmul(b)
}

/// x·wᵀ: x [m, k], w [n, k] (HF's [out, in] layout) → [m, n].
pub fn matmul_nt(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if x.dims()[0] <= flex::FEW_ROWS
        && let Some(y) = flex::matmul_nt(&x, &w)
    {
        return y;
    }
    matmul(x, w.transpose())
}

/// y + u·bᵀ: y [n, out], u [n, r], b [out, r]; on flex accumulated into y's own buffer when
/// nothing else holds it.
pub fn add_matmul_nt(y: Tensor<2>, u: &Tensor<2>, b: &Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    let y = match flex::add_matmul_nt(y, u, b) {
        Ok(sum) => return sum,
        Err(y) => *y,
    };
    y + u.clone().matmul(b.clone().transpose())
}

/// softmax(q·kᵀ·scale (soft-capped), masked)·v per head: q [b, h, s, d]; k, v [b, kv, t, d] with
/// query head i reading key/value head i / (h / kv); mask [b, 1, s, t], true where a query may
/// not attend a key (every query attends at least one). None where the backend's own fused
/// attention is to run (not flex f32, or autodiff).
pub fn attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: &Tensor<4, Bool>,
    scale: f64,
    softcap: Option<f64>,
) -> Option<Tensor<4>> {
    #[cfg(feature = "flex")]
    return flex::attention(q, k, v, mask, scale, softcap);
    #[cfg(not(feature = "flex"))]
    None
}

/// A decoder's attention mask as codes per token (f32), for kernels that compute it: query i (at
/// position `start + i`) reads key j when j ≤ start + i < j + `window` and either the query's
/// code is 0 (padding) and the key's is not, or both codes are equal (one packed example); a
/// query coded −1 (padding with no real key in reach) reads only itself.
#[derive(Debug, Clone, Copy)]
pub struct MaskCodes<'a> {
    /// [b, s]
    pub queries: &'a Tensor<2>,
    /// [b, t]
    pub keys: &'a Tensor<2>,
    pub start: usize,
    /// At most t (no window: t).
    pub window: usize,
}

/// Training attention's forward: q (scaled) [b, h, s, d], k, v [b, kv, t, d] (query head i
/// reads key/value head i / (h / kv)) → (O [b, h, s, d], each row's largest score and
/// Σ exp(score − largest), [b, h, s, 2] f32). None where our kernels do not run (not cubecl).
pub fn attention_forward(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: &MaskCodes,
) -> Option<(Tensor<4>, Tensor<4>)> {
    #[cfg(feature = "cube")]
    return cube::attention_forward(q, k, v, mask);
    #[cfg(not(feature = "cube"))]
    None
}

/// The gradients of [`attention_forward`]: (dq for the scaled q, dk, dv at k and v's heads),
/// given dO and O [b, h, s, d] and the statistics it returned.
pub fn attention_backward(
    [q, k, v]: [&Tensor<4>; 3],
    dout: &Tensor<4>,
    out: &Tensor<4>,
    stats: &Tensor<4>,
    mask: &MaskCodes,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    // flash attention's D = Σ_d dO⊙O per row, in f32
    let rows = (dout.clone() * out.clone())
        .sum_dim(3)
        .cast(burn::tensor::DType::F32);
    #[cfg(feature = "cube")]
    return cube::attention_backward([q, k, v], dout, stats, &rows, mask);
    #[cfg(not(feature = "cube"))]
    unreachable!("attention_backward follows an attention_forward that ran: {rows:?}")
}

/// silu(gate)·up, elementwise over two tensors of one shape.
pub fn silu_gate<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    #[cfg(feature = "flex")]
    return flex::silu_gate(gate, up);
    #[cfg(not(feature = "flex"))]
    None
}

/// The input gradients of y = silu(gate)·up given dy: (dgate, dup) =
/// (dy·up·σ(gate)·(1 + gate·(1 − σ(gate))), dy·silu(gate)).
pub fn silu_gate_backward(
    gate: &Tensor<2>,
    up: &Tensor<2>,
    dy: &Tensor<2>,
) -> Option<(Tensor<2>, Tensor<2>)> {
    #[cfg(feature = "flex")]
    return flex::silu_gate_backward(gate, up, dy);
    #[cfg(not(feature = "flex"))]
    None
}

/// −log softmax(row)[target] of each row of logits [n, v]; None also when a target is not a
/// column.
pub fn nll_rows(logits: &Tensor<2>, targets: &[i64]) -> Option<Vec<f32>> {
    #[cfg(feature = "flex")]
    return flex::nll_rows(logits, targets);
    #[cfg(not(feature = "flex"))]
    None
}

/// [`nll_rows`] and the gradient of their sum with respect to the logits,
/// softmax(logits) − onehot(targets), [n, v], written over the logits' own buffer when nothing
/// else holds it. Err gives the logits back for the generic path.
pub fn nll_and_gradient(
    logits: Tensor<2>,
    targets: &[i64],
) -> Result<(Vec<f32>, Tensor<2>), Box<Tensor<2>>> {
    #[cfg(feature = "flex")]
    return flex::nll_and_gradient(logits, targets);
    #[cfg(not(feature = "flex"))]
    Err(Box::new(logits))
}

/// One inverted-dropout mask: element i of an [n, m] input is 0 where half i % 2 (low 32 bits
/// first) of splitmix64 draw i / 2 from `stream` is below p·2³², else 1/(1−p). burn's own
/// `random` ran ChaCha per element on one thread (13 % of a SmolLM2 step); splitmix64's state
/// advances by a constant per draw, so draw k is a function of (stream, k) alone and any
/// element can be drawn on its own — in parallel chunks on the host, per thread on a GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    pub p: f64,
    /// The stream's state before the first draw.
    pub stream: u64,
}

impl DropoutMask {
    /// P(draw < threshold) = p.
    pub fn threshold(&self) -> u32 {
        (self.p * 4_294_967_296.0).min(u32::MAX as f64) as u32
    }

    /// What a kept element is multiplied by: 1 / P(kept).
    pub fn kept(&self) -> f32 {
        (1.0 / (1.0 - self.threshold() as f64 / 4_294_967_296.0)) as f32
    }

    /// The stream's state after a mask of `elements` (two per draw, an odd one using a whole).
    pub fn stream_after(&self, elements: usize) -> u64 {
        let draws = elements.div_ceil(2) as u64;
        self.stream.wrapping_add(draws.wrapping_mul(GOLDEN_GAMMA))
    }

    /// The next mask from the stream in `rng`, advancing it past an [n, m] mask.
    pub fn draw(p: f64, shape: [usize; 2], rng: &Cell<u64>) -> Self {
        let mask = Self {
            p,
            stream: rng.get(),
        };
        rng.set(mask.stream_after(shape[0] * shape[1]));
        mask
    }
}

/// x ⊙ `mask`, x [n, m]: computed on the device on cubecl, by a host-drawn mask elsewhere.
pub fn dropout(x: Tensor<2>, mask: DropoutMask) -> Tensor<2> {
    #[cfg(feature = "cube")]
    if let Some(y) = cube::dropout(&x, mask) {
        return y;
    }
    let host = host_mask(mask, x.dims(), &x.device());
    x * host
}

/// The mask itself, drawn on the host in parallel chunks of 8192 draws, each starting from the
/// state one sequential stream would have there.
pub fn host_mask(mask: DropoutMask, shape: [usize; 2], device: &Device) -> Tensor<2> {
    const PAIRS: usize = 8192; // draws per parallel chunk
    let (threshold, kept) = (u64::from(mask.threshold()), mask.kept());
    let mut values = vec![0.0f32; shape[0] * shape[1]];
    values
        .par_chunks_mut(2 * PAIRS)
        .enumerate()
        .for_each(|(chunk, values)| {
            let mut state = mask.stream_after(2 * chunk * PAIRS);
            for pair in values.chunks_mut(2) {
                let r = splitmix64(&mut state);
                for (v, half) in pair.iter_mut().zip([r & 0xFFFF_FFFF, r >> 32]) {
                    *v = if half < threshold { 0.0 } else { kept };
                }
            }
        });
    transfer::upload(TensorData::new(values, shape), device)
}

/// splitmix64's state increment.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64: advances `state` and returns the next 64 random bits.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN_GAMMA);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "flex")]
mod flex;

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel chunks give what one sequential splitmix64 stream gives, and leave the
    /// stream where it would be (an odd count crosses a chunk boundary mid-pair).
    #[test]
    fn parallel_dropout_masks_equal_one_sequential_stream() {
        let device = Device::flex();
        let (p, shape) = (0.3, [37, 1001]);
        let rng = Cell::new(12345);
        let mask = DropoutMask::draw(p, shape, &rng);
        let got = host_mask(mask, shape, &device);
        let got: Vec<f32> = got.into_data().try_to_vec::<f32>().unwrap();
        let threshold = (p * 4_294_967_296.0) as u64;
        let kept = (1.0 / (1.0 - threshold as f64 / 4_294_967_296.0)) as f32;
        let mut state = 12345u64;
        let mut want = Vec::new();
        while want.len() < shape[0] * shape[1] {
            let r = splitmix64(&mut state);
            for half in [r & 0xFFFF_FFFF, r >> 32] {
                want.push(if half < threshold { 0.0 } else { kept });
            }
        }
        want.truncate(shape[0] * shape[1]);
        assert_eq!(got, want);
        assert_eq!(rng.get(), state);
        let dropped = got.iter().filter(|&&v| v == 0.0).count() as f64 / got.len() as f64;
        assert!((dropped - p).abs() < 0.01, "{dropped}");
    }
}
