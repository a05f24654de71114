//! Initialisations that read the frozen weight, as PEFT's `pissa_init` and `olora_init`: the
//! adapter starts as a slice of W and the base keeps the rest, W − s·B·A, so the adapted layer
//! starts equal to the base.
//! - PiSSA: W = U·S·Vᵀ (full thin SVD); with S_r = S[:r] / s, B = U[:, :r]·√S_r and
//!   A = √S_r·V[:, :r]ᵀ — the principal directions train, the residual stays frozen.
//! - OLoRA: W = Q·R (thin QR); B = Q[:, :r], A = R[:r].
//!
//! Computed in f64 from the f32 values (PEFT: f32 LAPACK). Singular vectors and Householder
//! columns are defined up to sign; a component's A row and B column flip together, so B·A, the
//! residual and every later step are the same either way.

use faer::Mat;

use crate::recipe::LoraInit;

/// A [r, in], B [out, r] and the residual W − s·B·A [out, in], row-major f32.
pub struct Slice {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub residual: Vec<f32>,
}

/// The adapter `init` (PiSSA or OLoRA) takes from `w` [out, in] at rank `rank` and scale
/// `scale`; `None` for the initialisations that do not read the weight.
pub fn slice_of(
    init: LoraInit,
    w: &[f32],
    shape: [usize; 2],
    rank: usize,
    scale: f64,
) -> Option<Slice> {
    let [out, inp] = shape;
    let m = Mat::<f64>::from_fn(out, inp, |i, j| f64::from(w[i * inp + j]));
    let r = rank.min(out).min(inp);
    let (b, a): (Mat<f64>, Mat<f64>) = match init {
        LoraInit::Kaiming | LoraInit::Gaussian => return None,
        LoraInit::Pissa => {
            let svd = m.thin_svd().expect("SVD of a finite matrix converges");
            let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
            let root = |k: usize| (s[k] / scale).sqrt();
            (
                Mat::from_fn(out, r, |i, k| u[(i, k)] * root(k)),
                Mat::from_fn(r, inp, |k, j| root(k) * v[(j, k)]),
            )
        }
        LoraInit::Olora => {
            let qr = m.qr();
            let (q, rr) = (qr.compute_thin_Q(), qr.thin_R());
            (
                Mat::from_fn(out, r, |i, k| q[(i, k)]),
                Mat::from_fn(r, inp, |k, j| rr[(k, j)]),
            )
        }
    };
    // PEFT sets A and B in f32 and subtracts their f32 product from the f32 weight.
    let a: Vec<f32> = (0..r * inp).map(|n| a[(n / inp, n % inp)] as f32).collect();
    let b: Vec<f32> = (0..out * r).map(|n| b[(n / r, n % r)] as f32).collect();
    let residual = (0..out * inp)
        .map(|n| {
            let (i, j) = (n / inp, n % inp);
            let ba: f64 = (0..r)
                .map(|k| f64::from(b[i * r + k]) * f64::from(a[k * inp + j]))
                .sum();
            (f64::from(w[n]) - scale * ba) as f32
        })
        .collect();
    Some(Slice { a, b, residual })
}
