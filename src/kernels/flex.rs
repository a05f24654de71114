//! The flex (CPU) kernels: each reaches flex's buffers through burn's extension API
//! (`Tensor::try_into_primitive::<Flex>`) and gives None / Err where a tensor is not f32 on
//! flex, so [`super`] takes the generic path. What each kernel is for is said in [`super`].

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use rayon::prelude::*;

/// Up to this many rows of x stream W once for all of them; more go to gemm, whose blocking
/// then reuses W better than row-dots can.
pub const FEW_ROWS: usize = 4;

/// Rows of W per parallel task: 64 rows of a 576-wide weight are 147 kB, enough work to
/// outweigh a task's scheduling.
const ROWS_PER_TASK: usize = 64;

/// Whether `t` is an f32 tensor on flex (not autodiff).
fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && t.clone().try_into_primitive::<Flex>().is_ok()
}

/// `t`'s flex tensor, contiguous (copied only where it is not), if it is f32 on flex.
fn flex_f32<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    let p = contiguous(t.clone().try_into_primitive::<Flex>().ok()?);
    p.as_slice::<f32>()?;
    Some(p)
}

fn contiguous(p: FlexTensor) -> FlexTensor {
    if p.is_contiguous() {
        p
    } else {
        p.to_contiguous()
    }
}

/// Products of at least this many multiply-adds share the threads (flex's own threshold).
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// a·b through gemm at the operands' own strides, into one fresh buffer gemm writes without
/// reading. flex's matmul allocates its output as bytes and copies them once more to
/// realign them: a tenth of an evaluation's time. None unless both are f32 on flex.
pub fn matmul(a: &Tensor<2>, b: &Tensor<2>) -> Option<Tensor<2>> {
    let ([m, k], [_, n]) = (a.dims(), b.dims());
    if m * n * k == 0 {
        return None;
    }
    let (ap, bp) = (
        a.clone().try_into_primitive::<Flex>().ok()?,
        b.clone().try_into_primitive::<Flex>().ok()?,
    );
    if ap.dtype() != DType::F32 || bp.dtype() != DType::F32 {
        return None;
    }
    let operand = |p: &FlexTensor| {
        let l = p.layout();
        let (row, col) = (l.strides()[0], l.strides()[1]);
        // SAFETY: start_offset lies inside the buffer, as for every flex view.
        (
            unsafe { p.storage::<f32>().as_ptr().add(l.start_offset()) },
            row,
            col,
        )
    };
    let ((a_ptr, a_row, a_col), (b_ptr, b_row, b_col)) = (operand(&ap), operand(&bp));
    let parallelism = if m * n * k >= PARALLEL_PRODUCT {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut y = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the views address m×k and k×n values at their strides; gemm writes all m×n
    // outputs (k > 0) and reads none (read_dst false), so the length set after is filled.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            a_ptr,
            a_col,
            a_row,
            b_ptr,
            b_col,
            b_row,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        y.set_len(m * n);
    }
    Some(Tensor::from_data(TensorData::new(y, [m, n]), &a.device()))
}

/// None unless both operands are f32 on flex (not autodiff).
pub fn matmul_nt(x: &Tensor<2>, w: &Tensor<2>) -> Option<Tensor<2>> {
    let [m, k] = x.dims();
    let [n, _] = w.dims();
    if k == 0 || n == 0 {
        return None;
    }
    let (xp, wp) = (flex_f32(x)?, flex_f32(w)?);
    let (xs, ws) = (xp.as_slice::<f32>()?, wp.as_slice::<f32>()?);
    // [n, m]: each task owns whole rows of W and their m outputs.
    let mut yt = vec![0.0f32; n * m];
    yt.par_chunks_mut(ROWS_PER_TASK * m)
        .zip(ws.par_chunks(ROWS_PER_TASK * k))
        .for_each(|(out, rows)| rows_dot(out, rows, xs, k));
    let y = if m == 1 {
        yt
    } else {
        (0..m * n).map(|e| yt[(e % n) * m + e / n]).collect()
    };
    Some(Tensor::from_data(TensorData::new(y, [m, n]), &x.device()))
}

pub fn add_matmul_nt(
    y: Tensor<2>,
    u: &Tensor<2>,
    b: &Tensor<2>,
) -> Result<Tensor<2>, Box<Tensor<2>>> {
    let ([n, out], [un, r], [bo, br]) = (y.dims(), u.dims(), b.dims());
    if un != n || bo != out || br != r || !on_flex(&y) {
        return Err(Box::new(y));
    }
    let (Some(up), Some(bp)) = (flex_f32(u), flex_f32(b)) else {
        return Err(Box::new(y));
    };
    let (us, bs) = (
        up.as_slice::<f32>().expect("f32"),
        bp.as_slice::<f32>().expect("f32"),
    );
    let device = y.device();
    // Moved out without a copy when this handle is y's only one.
    let data = y.try_into_primitive::<Flex>().expect("checked").into_data();
    let mut ys: Vec<f32> = data.try_into_vec().expect("f32 checked");
    if n * out * r > 0 {
        // SAFETY: ys holds n×out, us n×r and bs out×r values at the strides given.
        unsafe {
            gemm::gemm(
                n,
                out,
                r,
                ys.as_mut_ptr(),
                1,
                out as isize,
                true,
                us.as_ptr(),
                1,
                r as isize,
                bs.as_ptr(),
                r as isize,
                1,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
    Ok(Tensor::from_data(TensorData::new(ys, [n, out]), &device))
}

/// Queries per block of [`attention`]: their scores, [64, keys in reach], stay in cache.
const QUERY_BLOCK: usize = 64;

pub fn attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: &Tensor<4, Bool>,
    scale: f64,
    softcap: Option<f64>,
) -> Option<Tensor<4>> {
    let [b, h, s, d] = q.dims();
    let [_, kv, t, _] = k.dims();
    if mask.dims() != [b, 1, s, t] || h % kv != 0 || s * t * d == 0 {
        return None;
    }
    let (qp, kp, vp) = (flex_f32(q)?, flex_f32(k)?, flex_f32(v)?);
    let (qs, ks, vs) = (
        qp.as_slice::<f32>()?,
        kp.as_slice::<f32>()?,
        vp.as_slice::<f32>()?,
    );
    let mp = contiguous(mask.clone().try_into_primitive::<Flex>().ok()?);
    let (start, end) = mp.layout().contiguous_offsets()?;
    let masked = mp.storage::<u8>().get(start..end)?;
    // Per batch row and query block, the keys any of its queries may attend: [first, end).
    let blocks = s.div_ceil(QUERY_BLOCK);
    let reach: Vec<(usize, usize)> = (0..b * blocks)
        .map(|rb| {
            let (row, block) = (rb / blocks, rb % blocks);
            let queries = block * QUERY_BLOCK..((block + 1) * QUERY_BLOCK).min(s);
            queries.fold((t, 0), |(first, end), i| {
                let keys = &masked[(row * s + i) * t..(row * s + i + 1) * t];
                let f = keys.iter().position(|&m| m == 0).unwrap_or(t);
                let e = keys.iter().rposition(|&m| m == 0).map_or(0, |l| l + 1);
                (first.min(f), end.max(e))
            })
        })
        .collect();
    let (scale, softcap) = (scale as f32, softcap.map(|c| c as f32));
    let mut out = vec![0.0f32; b * h * s * d];
    out.par_chunks_mut(s * d)
        .enumerate()
        .for_each_init(Vec::new, |scores, (bh, out)| {
            let (row, head) = (bh / h, bh % h);
            let q = &qs[bh * s * d..(bh + 1) * s * d];
            let kv_at = (row * kv + head / (h / kv)) * t * d;
            let (k, v) = (&ks[kv_at..kv_at + t * d], &vs[kv_at..kv_at + t * d]);
            for block in 0..blocks {
                let (first, end) = reach[row * blocks + block];
                let q0 = block * QUERY_BLOCK;
                let rows = QUERY_BLOCK.min(s - q0);
                let width = end.saturating_sub(first);
                if width == 0 {
                    continue;
                }
                scores.resize(rows * width, 0.0);
                // SAFETY: the slices hold rows×d (q), width×d (k, v) and rows×width
                // (scores) values at the strides given.
                unsafe {
                    gemm::gemm(
                        rows,
                        width,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        width as isize,
                        false,
                        q[q0 * d..].as_ptr(),
                        1,
                        d as isize,
                        k[first * d..].as_ptr(),
                        d as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                let mut inverse_sums = [0.0f32; QUERY_BLOCK];
                for (i, p) in scores.chunks_mut(width).enumerate() {
                    let keys = &masked[(row * s + q0 + i) * t + first..][..width];
                    if let Some(cap) = softcap {
                        p.iter_mut().for_each(|x| *x = cap * (*x / cap).tanh());
                    }
                    for (x, &k) in p.iter_mut().zip(keys) {
                        *x = if k == 0 { *x } else { f32::NEG_INFINITY };
                    }
                    let max = lane_max(p);
                    p.iter_mut().for_each(|x| *x = exp(*x - max));
                    inverse_sums[i] = 1.0 / lane_sum(p, |p| p);
                }
                let o = &mut out[q0 * d..(q0 + rows) * d];
                // SAFETY: as above; o holds rows×d values.
                unsafe {
                    gemm::gemm(
                        rows,
                        d,
                        width,
                        o.as_mut_ptr(),
                        1,
                        d as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        width as isize,
                        v[first * d..].as_ptr(),
                        1,
                        d as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for (o, inverse) in o.chunks_mut(d).zip(inverse_sums) {
                    o.iter_mut().for_each(|x| *x *= inverse);
                }
            }
        });
    Some(Tensor::from_data(
        TensorData::new(out, [b, h, s, d]),
        &q.device(),
    ))
}

/// Elements per parallel task of the elementwise kernels (256 kB of f32).
const CHUNK: usize = 1 << 16;

/// Same-shaped f32 operands on flex, as slices.
fn same_shape<'a>(ts: &[&'a FlexTensor]) -> Option<Vec<&'a [f32]>> {
    let shape = ts[0].layout().shape();
    ts.iter()
        .map(|t| {
            (t.layout().shape() == shape)
                .then(|| t.as_slice::<f32>())
                .flatten()
        })
        .collect()
}

fn wrap<const D: usize>(values: Vec<f32>, like: &Tensor<D>) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, like.dims()), &like.device())
}

/// σ(x) = 1 / (1 + e^(−x)).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

pub fn silu_gate<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    let (g, u) = (flex_f32(gate)?, flex_f32(up)?);
    let [g, u] = same_shape(&[&g, &u])?[..] else {
        return None;
    };
    let mut y = vec![0.0f32; g.len()];
    y.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(y, (g, u))| {
            for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                *y = g * sigmoid(g) * u;
            }
        });
    Some(wrap(y, gate))
}

pub fn silu_gate_backward(
    gate: &Tensor<2>,
    up: &Tensor<2>,
    dy: &Tensor<2>,
) -> Option<(Tensor<2>, Tensor<2>)> {
    let (g, u, d) = (flex_f32(gate)?, flex_f32(up)?, flex_f32(dy)?);
    let [g, u, d] = same_shape(&[&g, &u, &d])?[..] else {
        return None;
    };
    let (mut dg, mut du) = (vec![0.0f32; g.len()], vec![0.0f32; g.len()]);
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(
            g.par_chunks(CHUNK)
                .zip(u.par_chunks(CHUNK))
                .zip(d.par_chunks(CHUNK)),
        )
        .for_each(|((dg, du), ((g, u), d))| {
            for ((dg, du), ((&g, &u), &d)) in dg.iter_mut().zip(du).zip(g.iter().zip(u).zip(d)) {
                let s = sigmoid(g);
                *dg = d * u * (s * (1.0 + g * (1.0 - s)));
                *du = d * (g * s);
            }
        });
    Some((wrap(dg, gate), wrap(du, gate)))
}

/// Targets that are columns of [n, v] logits, one per row.
fn targets_fit(dims: [usize; 2], targets: &[i64]) -> bool {
    let [n, v] = dims;
    targets.len() == n && v > 0 && targets.iter().all(|&t| t >= 0 && (t as usize) < v)
}

pub fn nll_rows(logits: &Tensor<2>, targets: &[i64]) -> Option<Vec<f32>> {
    let [_, v] = logits.dims();
    if !targets_fit(logits.dims(), targets) {
        return None;
    }
    let lp = flex_f32(logits)?;
    let xs = lp.as_slice::<f32>()?;
    Some(
        xs.par_chunks(v)
            .zip(targets)
            .map(|(x, &t)| {
                let max = lane_max(x);
                let total = lane_sum(x, |x| exp(x - max));
                total.ln() - (x[t as usize] - max)
            })
            .collect(),
    )
}

pub fn nll_and_gradient(
    logits: Tensor<2>,
    targets: &[i64],
) -> Result<(Vec<f32>, Tensor<2>), Box<Tensor<2>>> {
    let dims @ [n, v] = logits.dims();
    if !on_flex(&logits) || !targets_fit(dims, targets) {
        return Err(Box::new(logits));
    }
    let device = logits.device();
    // Moved out without a copy when this handle is the logits' only one.
    let data = logits
        .try_into_primitive::<Flex>()
        .expect("checked")
        .into_data();
    let mut p: Vec<f32> = data.try_into_vec().expect("f32 checked");
    let mut nll = vec![0.0f32; n];
    nll.par_iter_mut()
        .zip(p.par_chunks_mut(v))
        .zip(targets)
        .for_each(|((nll, row), &t)| {
            let t = t as usize;
            let max = lane_max(row);
            let picked = row[t] - max;
            row.iter_mut().for_each(|x| *x = exp(*x - max));
            let total = lane_sum(row, |p| p);
            let inverse = 1.0 / total;
            row.iter_mut().for_each(|p| *p *= inverse);
            row[t] -= 1.0;
            *nll = total.ln() - picked;
        });
    Ok((nll, Tensor::from_data(TensorData::new(p, [n, v]), &device)))
}

/// Σ f(x) over 16 independent lanes (vectorisable, unlike one running sum).
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for i in 0..16 {
            lanes[i] += f(c[i]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// max over 16 independent lanes; −∞ for no values.
fn lane_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for i in 0..16 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// eˣ, vectorisable (no branches, no calls): Cephes' `expf` — 2ⁿ·e^r with n = round(x·log₂e),
/// r = x − n·ln 2 in two parts, e^r by a degree-6 polynomial — within 2 ulp of libm.
/// exp(−∞) and anything below e^(−87.3) give exactly 0, as softmax's masked scores need.
#[cfg(test)]
pub fn exp_for_tests(x: f32) -> f32 {
    exp(x)
}

#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting rounds to an integer
    let c = x.clamp(-87.336_54, 88.376_26);
    let n = (c * LOG2E + ROUND) - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.336_54 { 0.0 } else { e * two_n }
}

/// out[j·m + i] = W row j · x row i.
fn rows_dot(out: &mut [f32], rows: &[f32], xs: &[f32], k: usize) {
    let m = xs.len() / k;
    for (o, row) in out.chunks_mut(m).zip(rows.chunks(k)) {
        for (oi, xi) in o.iter_mut().zip(xs.chunks(k)) {
            *oi = dot(row, xi);
        }
    }
}

/// Σ a·b over 16 independent lanes, so the compiler keeps them in vector registers (the
/// product is bound by reading W, not by the arithmetic: wider vectors measured no faster).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (a_lanes, b_lanes) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = a_lanes
        .remainder()
        .iter()
        .zip(b_lanes.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_lanes.zip(b_lanes) {
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels;
    use burn::tensor::activation::{log_softmax, silu, softmax};
    use burn::tensor::{Device, Distribution, Int, TensorData};

    fn normal<const D: usize>(shape: [usize; D], sd: f64) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, sd), &Device::flex())
    }

    /// max |a − b| / max |b|
    fn relative<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>();
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    #[test]
    fn few_rows_equal_the_generic_product() {
        for (m, k, n) in [(1, 576, 1536), (3, 37, 130), (4, 1536, 576)] {
            let (x, w) = (normal([m, k], 1.0), normal([n, k], 1.0));
            let ours = matmul_nt(&x, &w).expect("flex f32 operands take the kernel");
            let d = relative(ours, x.clone().matmul(w.clone().transpose()));
            assert!(d <= 1e-6, "{m}×{k}·{n}: {d}");
        }
        // A transposed (strided) x is made contiguous first.
        let (xt, w) = (normal([8, 2], 1.0).transpose(), normal([5, 8], 1.0));
        let ours = matmul_nt(&xt, &w).unwrap();
        assert!(relative(ours, xt.matmul(w.transpose())) < 1e-6);
    }

    /// a·b in f64, from the values as read back (the views' own order).
    fn product_f64(a: &Tensor<2>, b: &Tensor<2>) -> Vec<f64> {
        let ([m, k], [_, n]) = (a.dims(), b.dims());
        let (a, b) = (
            a.to_data().try_to_vec::<f32>().unwrap(),
            b.to_data().try_to_vec::<f32>().unwrap(),
        );
        (0..m * n)
            .map(|e| {
                (0..k)
                    .map(|j| f64::from(a[e / n * k + j]) * f64::from(b[j * n + e % n]))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn strided_products_equal_the_f64_product() {
        // Contiguous; a transposed a; b narrowed (an offset and a row stride wider than its
        // rows); and one large enough to share the threads.
        let wide = normal([40, 90], 1.0);
        let cases = [
            (normal([7, 33], 1.0), normal([33, 12], 1.0)),
            (normal([33, 7], 1.0).transpose(), normal([33, 12], 1.0)),
            (normal([7, 40], 1.0), wide.narrow(1, 5, 60)),
            (normal([200, 200], 1.0), normal([210, 200], 1.0).transpose()),
        ];
        for (a, b) in cases {
            let ours = matmul(&a, &b).expect("flex f32 operands take the kernel");
            let expected = product_f64(&a, &b);
            let got = ours.to_data().try_to_vec::<f32>().unwrap();
            assert_eq!(ours.dims(), [a.dims()[0], b.dims()[1]]);
            let worst = got
                .iter()
                .zip(&expected)
                .map(|(g, e)| (f64::from(*g) - e).abs());
            let scale = expected.iter().fold(0.0f64, |m, e| m.max(e.abs()));
            let d = worst.fold(0.0, f64::max) / scale;
            assert!(d <= 1e-6, "{:?}·{:?}: {d}", a.dims(), b.dims());
        }
    }

    #[test]
    fn attention_equals_masked_softmax_attention() {
        // 2 rows × 4 query heads over 2 key/value heads, 150 queries (three blocks, the last
        // short) after 10 cached keys; row 1 right-padded after 120 keys, row 0 a sliding window
        // of 70, and a soft cap.
        let (b, h, kv, s, d, past) = (2, 4, 2, 150, 16, 10);
        let t = past + s;
        let masked: Vec<bool> = (0..b * s * t)
            .map(|e| {
                let (row, i, j) = (e / (s * t), (e / t) % s + past, e % t);
                let padded = row == 1 && j >= 120 && i < 120;
                j > i || (row == 0 && i - j >= 70) || padded
            })
            .collect();
        let mask =
            Tensor::<4, Bool>::from_data(TensorData::new(masked, [b, 1, s, t]), &Device::flex());
        let (q, k, v) = (
            normal([b, h, s, d], 1.0),
            normal([b, kv, t, d], 1.0),
            normal([b, kv, t, d], 1.0),
        );
        for softcap in [None, Some(5.0)] {
            let ours =
                kernels::attention(&q, &k, &v, &mask, 0.3, softcap).expect("flex takes the kernel");
            let repeat = |x: Tensor<4>| {
                x.unsqueeze_dim::<5>(2)
                    .expand([b, kv, h / kv, t, d])
                    .reshape([b, h, t, d])
            };
            let scores = q
                .clone()
                .matmul(repeat(k.clone()).swap_dims(2, 3))
                .mul_scalar(0.3);
            let scores = match softcap {
                Some(c) => scores.div_scalar(c).tanh().mul_scalar(c),
                None => scores,
            };
            let scores = scores.mask_fill(mask.clone().expand([b, h, s, t]), f32::NEG_INFINITY);
            let oracle = softmax(scores, 3).matmul(repeat(v.clone()));
            let diff = relative(ours, oracle);
            assert!(diff < 1e-5, "softcap {softcap:?}: {diff}");
        }
    }

    #[test]
    fn silu_gate_and_its_gradients_equal_the_generic_ops() {
        let (g, u, dy) = (
            normal([70, 1000], 4.0),
            normal([70, 1000], 1.0),
            normal([70, 1000], 1.0),
        );
        let y = kernels::silu_gate(&g, &u).unwrap();
        assert!(relative(y, silu(g.clone()) * u.clone()) < 1e-6);
        let (dg, du) = kernels::silu_gate_backward(&g, &u, &dy).unwrap();
        let sig = burn::tensor::activation::sigmoid(g.clone());
        let derivative = sig.clone() * (g.clone() * (sig.neg() + 1.0) + 1.0);
        assert!(relative(dg, dy.clone() * u * derivative) < 1e-6);
        assert!(relative(du, dy * silu(g)) < 1e-6);
    }

    #[test]
    fn cross_entropy_rows_and_gradient_equal_log_softmax() {
        let (n, v) = (9, 5000);
        let logits = normal([n, v], 6.0);
        let targets: Vec<i64> = (0..n as i64).map(|i| i * 541 % v as i64).collect();
        let at =
            Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [n, 1]), &Device::flex());
        let oracle = log_softmax(logits.clone(), 1)
            .gather(1, at.clone())
            .neg()
            .reshape([n]);
        let rows = kernels::nll_rows(&logits, &targets).unwrap();
        let rows = Tensor::<1>::from_data(TensorData::new(rows, [n]), &Device::flex());
        assert!(relative(rows, oracle.clone()) < 1e-6);
        let host: Vec<f32> = logits.clone().into_data().try_to_vec().unwrap();
        let (rows, gradient) = kernels::nll_and_gradient(logits, &targets).ok().unwrap();
        let rows = Tensor::<1>::from_data(TensorData::new(rows, [n]), &Device::flex());
        assert!(relative(rows, oracle) < 1e-6);
        // The gradient against softmax − onehot in f64 (burn's f32 softmax is off by 5e-6 here).
        let gradient: Vec<f32> = gradient.into_data().try_to_vec().unwrap();
        let mut worst = 0.0f64;
        for (i, row) in host.chunks(v).enumerate() {
            let max = row.iter().fold(f64::MIN, |m, &x| m.max(f64::from(x)));
            let total: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
            for (j, &x) in row.iter().enumerate() {
                let p = (f64::from(x) - max).exp() / total - f64::from(j as i64 == targets[i]);
                worst = worst.max((f64::from(gradient[i * v + j]) - p).abs());
            }
        }
        assert!(worst < 1e-6, "{worst}");
        // A target outside the vocabulary is left to the generic path.
        assert!(kernels::nll_rows(&normal([1, 4], 1.0), &[4]).is_none());
    }

    #[test]
    fn the_vectorised_exponential_is_within_two_ulp_of_libm() {
        for i in -87_000..88_000 {
            let x = i as f32 / 1000.0 + 0.000_37;
            let (ours, libm) = (exp_for_tests(x), x.exp());
            assert!(
                (ours - libm).abs() <= 2.5 * f32::EPSILON * libm,
                "{x}: {ours} vs {libm}"
            );
        }
        assert_eq!(exp_for_tests(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_for_tests(-100.0), 0.0);
    }
}
