//! Softmax attention over heads, forward keeping what backward needs and backward written out:
//! with P = softmax(q·kᵀ + mask) and O = P·v, dv = Pᵀ·dO, dP = dO·vᵀ and
//! dS = P ⊙ (dP − Σ_t dP⊙P), where the row sums are taken as Σ_d dO⊙O (flash attention's D) on
//! [b, h, s, d] instead of s×s; dq = dS·k, dk = dSᵀ·q. The scale is applied to q beforehand, so
//! the caller multiplies dq by it. Masked scores get no gradient (autodiff's `mask_fill`). With
//! Gemma 2's soft cap the scores are c·tanh(q·kᵀ / c) and dS is multiplied by the cap's slope.
//!
//! Two layouts of the same arithmetic:
//! - **materialised** (flex, and any soft cap): P [b, h, s, t] is kept for backward — the
//!   oracle, and on the CPU the fastest;
//! - **tiled** (GPU backends), flash attention's scheme: queries in tiles of [`TILE_ROWS`] rows,
//!   forward keeps only O and each row's softmax statistics — its largest score m and
//!   Σ exp(score − m), flash attention's log-sum-exp in two parts, so that a fully masked row
//!   (all scores f32::MIN) keeps its uniform average — and backward recomputes each tile's
//!   P = exp(q·kᵀ − m) / Σ bit for bit, so no [s, t] buffer outlives a tile and memory grows
//!   linearly in the sequence. Under a causal mask a tile skips the keys after its last query (half the work).
//!   Its products are tensor-op matmuls: on cubecl they are the autotuned (tensor-core) ones.
//! - **kernel** (cubecl, a decoder's mask, no soft cap): the tiled scheme as our own kernels
//!   ([`kernels::attention_forward`]), which never build even a tile's scores in device memory,
//!   compute the mask from per-token codes, and read grouped k and v heads in place.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use super::ops::softcap_derivative;
use crate::kernels::{self, MaskCodes};
use crate::model::attention::MaskSource;
use crate::transfer::in_host_memory;

/// Whether training attention runs our kernels where they can (the default); off, cubecl devices
/// take the tiled layout of autotuned matmuls instead. For benchmarks comparing the two
/// (`attention=tiles` in benches/train.rs), not a recipe setting: both give the same numbers.
static KERNELS: AtomicBool = AtomicBool::new(true);

pub fn use_kernels(on: bool) {
    KERNELS.store(on, Ordering::Relaxed);
}

/// Query rows per tile: a tile's scores are [b, h, 256, t].
pub const TILE_ROWS: usize = 256;

/// Which keys each query may not attend (true), for every head.
#[derive(Debug, Clone, Copy)]
pub enum Mask<'a> {
    /// A whole mask [b, 1, s, t], or [b, 1, 1, t] for every query alike (an encoder's padding).
    Whole(&'a Tensor<4, Bool>),
    /// A decoder's mask, built on the device as a whole or one tile at a time.
    Source(&'a MaskSource),
}

impl Mask<'_> {
    /// Query rows `first..first + rows` against keys `0..keys`, for `heads` heads:
    /// [b, heads, rows, keys].
    fn block(&self, first: usize, rows: usize, keys: usize, heads: usize) -> Tensor<4, Bool> {
        let block = match self {
            // A mask of one query row (padding only) holds for every query.
            Mask::Whole(mask) if mask.dims()[2] == 1 => (*mask).clone().narrow(3, 0, keys),
            Mask::Whole(mask) => (*mask).clone().narrow(2, first, rows).narrow(3, 0, keys),
            Mask::Source(source) => source.block(first, rows, keys),
        };
        let b = block.dims()[0];
        block.expand([b, heads, rows, keys])
    }

    /// The whole mask for `heads` heads: [b, heads, s, t].
    fn whole(&self, heads: usize, s: usize, t: usize) -> Tensor<4, Bool> {
        let mask = match self {
            Mask::Whole(mask) => (*mask).clone(),
            Mask::Source(source) => source.full(),
        };
        let b = mask.dims()[0];
        mask.expand([b, heads, s, t])
    }
}

#[derive(Debug, Clone)]
pub struct AttentionCore {
    /// [b, h, s, d] / [b, h / group, t, d]: q times the scale, k and v (one per query head, or
    /// one per key/value head with [`AttentionCore::sharing_kv`]).
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    /// Query heads reading each kept key/value head: 1 unless the core shares them.
    group: usize,
    kept: Kept,
}

impl AttentionCore {
    /// The core keeping k and v once per key/value head, [b, kv, t, d] (after RoPE), instead of
    /// repeated to each query head: grouped-query attention keeps h / kv times less of them,
    /// and backward repeats them again. Query head i reads key/value head i / (h / kv).
    fn sharing_kv(self, k: Tensor<4>, v: Tensor<4>) -> Self {
        let group = self.k.dims()[1] / k.dims()[1];
        Self {
            k,
            v,
            group,
            ..self
        }
    }
}

/// [b, kv, t, d] → [b, kv·group, t, d], each head repeated `group` times in place (HF's repeat_kv).
pub fn repeat_heads(t: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return t;
    }
    let [b, kv, n, d] = t.dims();
    t.unsqueeze_dim::<5>(2)
        .expand([b, kv, group, n, d])
        .reshape([b, kv * group, n, d])
}

#[derive(Debug, Clone)]
enum Kept {
    /// P [b, h, s, t] and the soft cap's slope at each score (with a cap).
    Probabilities {
        probs: Tensor<4>,
        softcap_slope: Option<Tensor<4>>,
    },
    /// Each row's softmax statistics over its masked scores, its largest score and
    /// Σ exp(score − largest), [b, h, s, 1] each; the masked score; whether tiles skip the keys
    /// after their last query.
    RowStatistics {
        max: Tensor<4>,
        sum: Tensor<4>,
        masked: f32,
        causal: bool,
    },
    /// What our kernels keep.
    Kernel(Box<KernelKept>),
}

/// Each row's softmax statistics [b, h, s, 2] f32, and the mask's codes ([`MaskCodes`]).
#[derive(Debug, Clone)]
struct KernelKept {
    stats: Tensor<4>,
    queries: Tensor<2>,
    keys: Tensor<2>,
    start: usize,
    window: usize,
}

/// q (scaled) [b, h, s, d]; k, v [b, kv, t, d], query head i reading key/value head i / (h / kv);
/// `mask` (true = may not attend), masked scores set to `masked` ([`masked_score`]), scores
/// soft-capped at `softcap` → O [b, h, s, d]. `causal`: the mask hides every key after its query
/// (a decoder's), which the tiled layouts use to skip them. The core keeps k and v at their own
/// heads.
pub fn forward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Mask,
    masked: f32,
    softcap: Option<f64>,
    causal: bool,
) -> (Tensor<4>, AttentionCore) {
    let group = q.dims()[1] / k.dims()[1];
    if let (None, Mask::Source(source)) = (softcap, mask)
        && KERNELS.load(Ordering::Relaxed)
        && let Some(codes) = source.codes()
        && let Some((out, stats)) = kernels::attention_forward(&q, &k, &v, &codes)
    {
        let kept = Kept::Kernel(Box::new(KernelKept {
            stats,
            queries: codes.queries.clone(),
            keys: codes.keys.clone(),
            start: codes.start,
            window: codes.window,
        }));
        let core = AttentionCore {
            q,
            k,
            v,
            group,
            kept,
        };
        return (out, core);
    }
    let (k_all, v_all) = (
        repeat_heads(k.clone(), group),
        repeat_heads(v.clone(), group),
    );
    let (out, core) = if softcap.is_none() && !in_host_memory(&q.device()) {
        forward_tiled(q, k_all, v_all, mask, masked, causal)
    } else {
        let [_, h, s, _] = q.dims();
        let t = k.dims()[2];
        forward_materialised(q, k_all, v_all, mask.whole(h, s, t), masked, softcap)
    };
    (out, core.sharing_kv(k, v))
}

/// The materialised layout: P [b, h, s, t] kept.
pub fn forward_materialised(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Tensor<4, Bool>,
    masked: f32,
    softcap: Option<f64>,
) -> (Tensor<4>, AttentionCore) {
    let scores = q.clone().matmul(k.clone().swap_dims(2, 3));
    let (scores, softcap_slope) = match softcap {
        Some(cap) => {
            let capped = crate::model::attention::softcap(scores, cap);
            (capped.clone(), Some(softcap_derivative(capped, cap)))
        }
        None => (scores, None),
    };
    let probs = softmax(scores.mask_fill(mask, masked), 3);
    let out = probs.clone().matmul(v.clone());
    let kept = Kept::Probabilities {
        probs,
        softcap_slope,
    };
    (
        out,
        AttentionCore {
            q,
            k,
            v,
            group: 1,
            kept,
        },
    )
}

/// The tiled layout (no soft cap): O and each row's softmax statistics kept.
pub fn forward_tiled(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Mask,
    masked: f32,
    causal: bool,
) -> (Tensor<4>, AttentionCore) {
    // A fully masked row (masked = f32::MIN) averages every key; skipping keys would change it.
    let causal = causal && masked == f32::NEG_INFINITY;
    let (mut outs, mut maxes, mut sums) = (Vec::new(), Vec::new(), Vec::new());
    for tile in tiles(&q, &k, causal) {
        let scores = tile.scores(&q, &k, &mask, masked); // [b, h, n, keys]
        let [b, h, n, keys] = scores.dims();
        let max = scores.clone().max_dim(3); // [b, h, n, 1]
        let exp = (scores - max.clone().expand([b, h, n, keys])).exp();
        let sum = exp.clone().sum_dim(3);
        let probs = exp / sum.clone().expand([b, h, n, keys]);
        outs.push(probs.matmul(v.clone().narrow(2, 0, keys)));
        maxes.push(max);
        sums.push(sum);
    }
    let kept = Kept::RowStatistics {
        max: Tensor::cat(maxes, 2),
        sum: Tensor::cat(sums, 2),
        masked,
        causal,
    };
    let core = AttentionCore {
        q,
        k,
        v,
        group: 1,
        kept,
    };
    (Tensor::cat(outs, 2), core)
}

/// One tile: query rows `start..start + rows`, reading keys `0..keys`.
struct Tile {
    start: usize,
    rows: usize,
    keys: usize,
}

impl Tile {
    /// The tile's masked scores q·kᵀ [b, h, rows, keys].
    fn scores(&self, q: &Tensor<4>, k: &Tensor<4>, mask: &Mask, masked: f32) -> Tensor<4> {
        let q = q.clone().narrow(2, self.start, self.rows);
        let k = k.clone().narrow(2, 0, self.keys);
        let mask = self.mask(mask, q.dims()[1]);
        q.matmul(k.swap_dims(2, 3)).mask_fill(mask, masked)
    }

    /// The tile's part of `mask`, [b, heads, rows, keys].
    fn mask(&self, mask: &Mask, heads: usize) -> Tensor<4, Bool> {
        mask.block(self.start, self.rows, self.keys, heads)
    }
}

/// The tiles of s queries over t keys (the last s of them at positions t − s..t).
fn tiles(q: &Tensor<4>, k: &Tensor<4>, causal: bool) -> Vec<Tile> {
    let (s, t) = (q.dims()[2], k.dims()[2]);
    (0..s)
        .step_by(TILE_ROWS)
        .map(|start| {
            let rows = TILE_ROWS.min(s - start);
            let keys = if causal { t - s + start + rows } else { t };
            Tile { start, rows, keys }
        })
        .collect()
}

/// The score a masked key gets: −∞ when every query may attend some key, so its exponential is
/// libm's fast exact 0 (a finite f32::MIN underflows through `expf`'s slow errno-setting path,
/// 2 % of a W1 step); f32::MIN otherwise, where −∞ would turn a fully masked row into NaN (its
/// uniform average is what transformers' eager path gives, and no real token reads it).
pub fn masked_score(every_query_sees_a_key: bool) -> f32 {
    if every_query_sees_a_key {
        f32::NEG_INFINITY
    } else {
        f32::MIN
    }
}

/// dO and O [b, h, s, d] → (dq for the scaled q, dk, dv), each shaped like q, k, v as the core
/// keeps them (k and v at their own heads: each one's gradient sums the query heads reading it);
/// `mask` as forward had it.
pub fn backward(
    core: AttentionCore,
    dout: Tensor<4>,
    out: Tensor<4>,
    mask: Mask,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let AttentionCore {
        q,
        k,
        v,
        group,
        kept,
    } = core;
    if let Kept::Kernel(kept) = &kept {
        let codes = MaskCodes {
            queries: &kept.queries,
            keys: &kept.keys,
            start: kept.start,
            window: kept.window,
        };
        return kernels::attention_backward([&q, &k, &v], &dout, &out, &kept.stats, &codes);
    }
    let [b, kv, t, d] = k.dims();
    let (k, v) = (repeat_heads(k, group), repeat_heads(v, group));
    let (dq, dk, dv) = repeated_backward([q, k, v], kept, dout, out, mask);
    // Each key/value head's gradient is the sum over the query heads that read it.
    let sum_group = |t4: Tensor<4>| match group {
        1 => t4,
        _ => t4
            .reshape([b, kv, group, t, d])
            .sum_dim(2)
            .reshape([b, kv, t, d]),
    };
    (dq, sum_group(dk), sum_group(dv))
}

/// [`backward`] with k and v [b, h, t, d], one per query head.
fn repeated_backward(
    [q, k, v]: [Tensor<4>; 3],
    kept: Kept,
    dout: Tensor<4>,
    out: Tensor<4>,
    mask: Mask,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, h, s, _] = q.dims();
    let rows = (dout.clone() * out).sum_dim(3); // D = Σ_d dO⊙O [b, h, s, 1]
    let (probs, softcap_slope) = match kept {
        Kept::Probabilities {
            probs,
            softcap_slope,
        } => (probs, softcap_slope),
        Kept::RowStatistics {
            max,
            sum,
            masked,
            causal,
        } => return backward_tiled([q, k, v], [max, sum, rows], dout, mask, masked, causal),
        Kept::Kernel(_) => unreachable!("the kernel layout's backward runs in `backward`"),
    };
    let t = probs.dims()[3];
    let dprobs = dout.clone().matmul(v.swap_dims(2, 3));
    let dscores =
        (probs.clone() * (dprobs - rows.expand([b, h, s, t]))).mask_fill(mask.whole(h, s, t), 0.0);
    let dscores = match softcap_slope {
        Some(slope) => dscores * slope,
        None => dscores,
    };
    let dq = dscores.clone().matmul(k);
    let dk = dscores.swap_dims(2, 3).matmul(q);
    let dv = probs.swap_dims(2, 3).matmul(dout);
    (dq, dk, dv)
}

/// The tiled backward: each tile's P recomputed from the row statistics as forward computed it,
/// its dq written, its dk and dv added into the keys it read.
fn backward_tiled(
    [q, k, v]: [Tensor<4>; 3],
    [max, sum, rows]: [Tensor<4>; 3],
    dout: Tensor<4>,
    mask: Mask,
    masked: f32,
    causal: bool,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, h, t, d] = k.dims();
    let (mut dk, mut dv) = (k.zeros_like(), v.zeros_like());
    let mut dqs = Vec::new();
    for tile in tiles(&q, &k, causal) {
        let scores = tile.scores(&q, &k, &mask, masked);
        let (n, keys) = (tile.rows, tile.keys);
        let wide = |x: Tensor<4>| x.narrow(2, tile.start, n).expand([b, h, n, keys]);
        let probs = (scores - wide(max.clone())).exp() / wide(sum.clone()); // [b, h, n, keys]
        let dout = dout.clone().narrow(2, tile.start, n);
        let (k_read, v_read) = (k.clone().narrow(2, 0, keys), v.clone().narrow(2, 0, keys));
        let dprobs = dout.clone().matmul(v_read.swap_dims(2, 3));
        let dscores =
            (probs.clone() * (dprobs - wide(rows.clone()))).mask_fill(tile.mask(&mask, h), 0.0);
        dqs.push(dscores.clone().matmul(k_read));
        let q_tile = q.clone().narrow(2, tile.start, n);
        let read = [0..b, 0..h, 0..keys, 0..d];
        let dk_tile = dscores.swap_dims(2, 3).matmul(q_tile);
        let dv_tile = probs.swap_dims(2, 3).matmul(dout);
        dk = match keys == t {
            true => dk + dk_tile,
            false => dk
                .clone()
                .slice_assign(read.clone(), dk.narrow(2, 0, keys) + dk_tile),
        };
        dv = match keys == t {
            true => dv + dv_tile,
            false => dv
                .clone()
                .slice_assign(read, dv.narrow(2, 0, keys) + dv_tile),
        };
    }
    (Tensor::cat(dqs, 2), dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};

    /// max |a − b| / max |b|
    fn relative(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let scale = b.clone().abs().max().into_scalar::<f32>();
        (a - b).abs().max().into_scalar::<f32>() / scale
    }

    /// The tiled layout's output and gradients equal the materialised layout's (≤ 1e-5 of each
    /// tensor's largest entry) over several tiles: causal masks with padding, packed examples
    /// and a sliding window, a non-causal (encoder) padding mask, and a fully masked row.
    #[test]
    fn tiled_attention_equals_the_materialised_oracle() {
        let device = Device::flex();
        let (b, h, d) = (2, 3, 8);
        for (s, window, causal, fully_masked_row) in [
            (300, None, true, false),
            (600, Some(100), true, false),
            (300, None, false, false),
            (280, None, true, true),
        ] {
            let t = s;
            // Row 0: two packed examples, then padding; row 1: left padding.
            let example = |r: usize, j: usize| match r {
                0 if j < s / 3 => 1,
                0 if j < s - 20 => 2,
                0 => 0,
                _ if j < 17 => 0,
                _ => 1,
            };
            let mut bits = Vec::with_capacity(b * s * t);
            for r in 0..b {
                for i in 0..s {
                    for j in 0..t {
                        let (own, key) = (example(r, i), example(r, j));
                        let near = window.is_none_or(|w| i < j + w);
                        let sees = match causal {
                            true => j <= i && near && key == own && (own != 0 || j == i),
                            false => key != 0 || (own == 0 && j == i),
                        };
                        bits.push(!sees || (fully_masked_row && r == 1 && i == 5));
                    }
                }
            }
            let mask = Tensor::<4, Bool>::from_data(TensorData::new(bits, [b, 1, s, t]), &device);
            let mask = Mask::Whole(&mask);
            let masked = masked_score(!fully_masked_row);
            let normal =
                |shape: [usize; 4]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let (q, k, v) = (
                normal([b, h, s, d]),
                normal([b, h, t, d]),
                normal([b, h, t, d]),
            );
            let dout = normal([b, h, s, d]);
            let whole = mask.whole(h, s, t);
            let (want, oracle) =
                forward_materialised(q.clone(), k.clone(), v.clone(), whole, masked, None);
            let (got, core) = forward_tiled(q, k, v, mask, masked, causal);
            let what = format!(
                "s {s}, window {window:?}, causal {causal}, fully masked row {fully_masked_row}"
            );
            assert!(
                relative(got.clone(), want.clone()) <= 1e-5,
                "{what}: outputs"
            );
            let want = backward(oracle, dout.clone(), want, mask);
            let got = backward(core, dout, got, mask);
            for (name, g, w) in [
                ("dq", got.0, want.0),
                ("dk", got.1, want.1),
                ("dv", got.2, want.2),
            ] {
                let r = relative(g, w);
                assert!(r <= 1e-5, "{what}: {name} {r}");
            }
        }
    }
}
