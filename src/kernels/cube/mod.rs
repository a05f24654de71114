//! The cubecl kernels (wgpu, Vulkan, Metal, CUDA): each is a `#[cube]` kernel behind a burn
//! backend extension, run only where a tensor lives on a cubecl device without autodiff; anywhere
//! else [`super`] takes the generic path, which is its oracle.
//!
//! - [`dropout`]: x ⊙ the inverted-dropout mask of a splitmix64 stream, each element's draw
//!   computed on the device from (stream, index) — the same bits flex's host draw gives — so no
//!   mask is drawn on the host and uploaded per adapter per step.
//! - [`attention`]: training attention as flash attention's forward and two backward kernels, no
//!   s × t buffer anywhere, the decoder's mask computed from per-token codes.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::tensor::Tensor;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::{CubeDim, calculate_cube_count_elemwise};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{DropoutMask, MaskCodes};

mod attention;
use attention::AttentionOps;

/// Whether `t` lives on a cubecl device outside autodiff (where these kernels run).
fn on_cube<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().as_dispatch(), DispatchDevice::Cube(_))
}

/// x ⊙ mask, or None where `x` is not on a cubecl device (or the stream is past what one
/// launch indexes: 2³² pairs).
pub fn dropout(x: &Tensor<2>, mask: DropoutMask) -> Option<Tensor<2>> {
    if !on_cube(x) || x.dims()[0] * x.dims()[1] / 2 >= u32::MAX as usize {
        return None;
    }
    let [lo, hi] = [mask.stream as u32, (mask.stream >> 32) as u32];
    let y = <Dispatch as DropoutOps>::dropout(
        x.clone().into_dispatch(),
        lo,
        hi,
        mask.threshold(),
        mask.kept(),
    );
    Some(Tensor::from_dispatch(y))
}

/// A tensor as an extension's argument.
fn arg<const D: usize>(t: &Tensor<D>) -> FloatTensor<Dispatch> {
    t.clone().into_dispatch()
}

/// q (scaled) [b, h, s, d], k, v [b, kv, t, d] → (O [b, h, s, d], each row's softmax statistics
/// [b, h, s, 2] f32), or None where q is not on a cubecl device or the head is too wide.
pub fn attention_forward(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: &MaskCodes,
) -> Option<(Tensor<4>, Tensor<4>)> {
    if !on_cube(q) || !attention::supports(q.dims()[3]) {
        return None;
    }
    let (out, stats) = <Dispatch as AttentionOps>::attention_forward(
        arg(q),
        arg(k),
        arg(v),
        arg(mask.queries),
        arg(mask.keys),
        mask.start as u32,
        mask.window as u32,
    );
    Some((Tensor::from_dispatch(out), Tensor::from_dispatch(stats)))
}

/// (dq for the scaled q, dk, dv at k and v's heads) given what [`attention_forward`] gave and
/// D = Σ_d dO⊙O [b, h, s, 1] f32.
pub fn attention_backward(
    [q, k, v]: [&Tensor<4>; 3],
    dout: &Tensor<4>,
    stats: &Tensor<4>,
    rows: &Tensor<4>,
    mask: &MaskCodes,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let (start, window) = (mask.start as u32, mask.window as u32);
    let dq = <Dispatch as AttentionOps>::attention_query_gradients(
        arg(q),
        arg(k),
        arg(v),
        arg(dout),
        arg(stats),
        arg(rows),
        arg(mask.queries),
        arg(mask.keys),
        start,
        window,
    );
    let (dk, dv) = <Dispatch as AttentionOps>::attention_key_gradients(
        arg(q),
        arg(k),
        arg(v),
        arg(dout),
        arg(stats),
        arg(rows),
        arg(mask.queries),
        arg(mask.keys),
        start,
        window,
    );
    let wrap = Tensor::from_dispatch;
    (wrap(dq), wrap(dk), wrap(dv))
}

#[backend_extension(Cube, Fusion)]
pub trait DropoutOps: Backend {
    /// x ⊙ mask: element i keeps x·kept unless half i % 2 of splitmix64 draw i / 2 from the
    /// stream (stream_hi, stream_lo) is below `threshold`.
    #[fusion(dtype = x, shape = x)]
    fn dropout(
        x: FloatTensor<Self>,
        stream_lo: u32,
        stream_hi: u32,
        threshold: u32,
        kept: f32,
    ) -> FloatTensor<Self>;
}

impl DropoutOps for CubeBackend {
    fn dropout(
        x: FloatTensor<Self>,
        stream_lo: u32,
        stream_hi: u32,
        threshold: u32,
        kept: f32,
    ) -> FloatTensor<Self> {
        let x: CubeTensor = into_contiguous(x);
        let n = x.meta.num_elements();
        let output = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            x.meta.shape().clone(),
            x.dtype,
        );
        let cube_dim = CubeDim::new(&x.client, n);
        let cube_count = calculate_cube_count_elemwise(&x.client, n, cube_dim);
        let dtype = x.dtype;
        splitmix::dropout_kernel::launch(
            &output.client,
            cube_count,
            cube_dim,
            x.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            stream_lo,
            stream_hi,
            threshold,
            kept,
            dtype_to_storage_type(dtype),
        );
        output
    }
}

/// The kernel, in cubecl's own vocabulary (its `Tensor` is a kernel argument, not burn's).
// The #[cube] macro also emits the body as host Rust with placeholder values for the builtins
// (ABSOLUTE_POS…), where rustc's constant propagation flags the u32 products as overflowing; on
// the device they wrap, which is what splitmix64 wants.
#[allow(arithmetic_overflow)]
mod splitmix {
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// splitmix64's increment (0x9E3779B97F4A7C15) and finaliser multipliers, as 32-bit halves:
    /// WGSL has no 64-bit integers, so the kernel does 64-bit arithmetic on (hi, lo) pairs.
    const GAMMA_HI: u32 = 0x9E37_79B9;
    const GAMMA_LO: u32 = 0x7F4A_7C15;
    const MIX1_HI: u32 = 0xBF58_476D;
    const MIX1_LO: u32 = 0x1CE4_E5B9;
    const MIX2_HI: u32 = 0x94D0_49BB;
    const MIX2_LO: u32 = 0x1331_11EB;

    #[cube(launch)]
    pub fn dropout_kernel<F: Float>(
        input: &Tensor<F>,
        output: &mut Tensor<F>,
        stream_lo: u32,
        stream_hi: u32,
        threshold: u32,
        kept: f32,
        #[define(F)] _dtype: ElemType,
    ) {
        let i = ABSOLUTE_POS;
        if i >= output.len() {
            terminate!();
        }
        // Draw k = i / 2 reads the state after k + 1 increments: stream + (k + 1)·γ (mod 2⁶⁴).
        let k = (i / 2) as u32 + 1;
        let step_lo = k * GAMMA_LO;
        let step_hi = k.mul_hi(GAMMA_LO) + k * GAMMA_HI;
        let lo = stream_lo + step_lo;
        let carry = if lo < stream_lo { 1u32 } else { 0u32 };
        let hi = stream_hi + step_hi + carry;
        // z = (z ^ z >> 30)·MIX1; z = (z ^ z >> 27)·MIX2; z ^= z >> 31
        let (hi, lo) = xor_shifted(hi, lo, 30u32);
        let (hi, lo) = mul64(hi, lo, MIX1_HI, MIX1_LO);
        let (hi, lo) = xor_shifted(hi, lo, 27u32);
        let (hi, lo) = mul64(hi, lo, MIX2_HI, MIX2_LO);
        let (hi, lo) = xor_shifted(hi, lo, 31u32);
        // Even elements take the draw's low 32 bits, odd ones its high 32, as the host draw does.
        let half = if i % 2 == 1 { hi } else { lo };
        let factor = if half < threshold { 0.0f32 } else { kept };
        output[i] = input[i] * F::cast_from(factor);
    }

    /// z ^ (z >> s) on z = (hi, lo), 0 < s < 32.
    #[cube]
    fn xor_shifted(hi: u32, lo: u32, #[comptime] s: u32) -> (u32, u32) {
        (hi ^ (hi >> s), lo ^ ((lo >> s) | (hi << (32 - s))))
    }

    /// (a_hi, a_lo)·(b_hi, b_lo) mod 2⁶⁴ as (hi, lo).
    #[cube]
    fn mul64(a_hi: u32, a_lo: u32, b_hi: u32, b_lo: u32) -> (u32, u32) {
        (a_lo.mul_hi(b_lo) + a_lo * b_hi + a_hi * b_lo, a_lo * b_lo)
    }
}
