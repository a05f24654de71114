//! Grouped-query self-attention as transformers' eager path computes it (HF rotate_half RoPE on
//! q and k, repeat_kv, softmax(q·kᵀ/√d + mask)·v), with the key/value cache generation appends to
//! and the causal / padding / packing mask every decoder layer shares.
//! Source: transformers `models/llama/modeling_llama.py` (`LlamaAttention`, `eager_attention_forward`).

use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::decoder_config::QkNorm;
use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope::RopeTables;
use crate::kernels::{self, MaskCodes};
use crate::transfer;

/// Where q, k and v come from: three linear layers, or one fused `qkv_proj` (Phi-3) whose
/// output is split [q | k | v].
// One per layer: the unused space of the fused variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum QkvProjection {
    Separate {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    Fused {
        qkv_proj: Linear,
    },
}

impl QkvProjection {
    /// x [.., hidden] → (q, k, v), with `widths` [q, kv] of the outputs.
    pub fn forward(&self, x: Tensor<3>, [q, kv]: [usize; 2]) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (
                q_proj.forward(x.clone()),
                k_proj.forward(x.clone()),
                v_proj.forward(x),
            ),
            Self::Fused { qkv_proj } => {
                let y = qkv_proj.forward(x);
                (
                    y.clone().narrow(2, 0, q),
                    y.clone().narrow(2, q, kv),
                    y.narrow(2, q + kv, kv),
                )
            }
        }
    }

    /// The linear layers with their names in the attention block, in HF module order.
    pub fn named(&self) -> Vec<(&'static str, &Linear)> {
        match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => vec![("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj)],
            Self::Fused { qkv_proj } => vec![("qkv_proj", qkv_proj)],
        }
    }

    pub fn named_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => vec![("q_proj", q_proj), ("k_proj", k_proj), ("v_proj", v_proj)],
            Self::Fused { qkv_proj } => vec![("qkv_proj", qkv_proj)],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub qkv: QkvProjection,
    pub o_proj: Linear,
    /// RMSNorm of q / k before RoPE: per head (Qwen3) or over the projection (OLMo2).
    pub qk_norm: QkNorm,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    /// Multiplies q·kᵀ: 1/√head_dim, or the family's own (`Deltas::attention_scale`).
    pub scale: f64,
    /// Gemma 2's cap on the scaled scores, c·tanh(score / c), before the mask.
    pub softcap: Option<f64>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// x: [b, s, hidden], mask: [b, 1, s, t] (true = may not attend) → [b, s, hidden], where
    /// t = s plus the positions already in `cache` (generation appends to it).
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        mask: &Tensor<4, Bool>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2); // [b, n, s, d]
        // [b, s, n·d] → RMSNorm over each head's d, or over all n·d → same
        let head_norm = |t: Tensor<3>, norm: &Option<RmsNorm>, n: usize| match (norm, self.qk_norm)
        {
            (Some(norm), QkNorm::PerHead) => {
                norm.forward(t.reshape([b, s * n, d]))
                    .reshape([b, s, n * d])
            }
            (Some(norm), QkNorm::Projection) => norm.forward(t),
            _ => t,
        };
        let (q, k, v) = self.qkv.forward(x, [h * d, kv * d]);
        let q = head_norm(q, &self.q_norm, h);
        let k = head_norm(k, &self.k_norm, kv);
        let q = rope.apply(heads(q, h));
        let mut k = rope.apply(heads(k, kv));
        let mut v = heads(v, kv);
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.kv.take() {
                k = Tensor::cat(vec![past_k, k], 2); // [b, kv, t, d]
                v = Tensor::cat(vec![past_v, v], 2);
            }
            cache.kv = Some((k.clone(), v.clone()));
        }
        // Without a gradient, on flex: our kernel, which reads grouped heads in place.
        let fast = match q.is_autodiff() {
            false => kernels::attention(&q, &k, &v, mask, self.scale, self.softcap),
            true => None,
        };
        let out = fast.unwrap_or_else(|| self.attention_generic(q, k, v, mask)); // [b, h, s, d]
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, h * d]))
    }

    /// Attention by burn's ops: q [b, h, s, d], k and v [b, kv, t, d] → [b, h, s, d].
    fn attention_generic(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
        mask: &Tensor<4, Bool>,
    ) -> Tensor<4> {
        let [b, h, s, d] = q.dims();
        let [_, kv, t, _] = k.dims();
        // repeat_kv: query head i reads key/value head i / (h / kv), as HF orders them.
        let repeat = |x: Tensor<4>| {
            x.unsqueeze_dim::<5>(2)
                .expand([b, kv, h / kv, t, d])
                .reshape([b, h, t, d])
        };
        let (k, v) = (repeat(k), repeat(v));
        let mask = mask.clone().expand([b, h, s, t]);
        if q.is_autodiff() {
            // Under autodiff, as transformers' eager path: the [b, h, s, t] scores are kept for
            // backward (burn's fused attention has no backward of its own). The scale is
            // applied to q, t/d times smaller than the scores (exact for power-of-two d).
            let scores = q.mul_scalar(self.scale).matmul(k.swap_dims(2, 3));
            let scores = match self.softcap {
                Some(cap) => softcap(scores, cap),
                None => scores,
            };
            softmax(scores.mask_fill(mask, f32::MIN), 3).matmul(v)
        } else {
            // No gradient on another backend (evaluation, generation, the first pass of
            // gradient checkpointing): its fused attention. burn-cubecl reaches cubek's flash
            // kernels (no S×S buffers) only with `scale: None`, its 1/√d, and no soft cap: a
            // family's own scale is moved onto q instead; Gemma 2's soft cap keeps the
            // materialised fallback.
            let default = 1.0 / (d as f64).sqrt();
            let q = match (self.scale - default).abs() <= f64::EPSILON * default {
                true => q,
                false => q.mul_scalar(self.scale / default),
            };
            let options = AttentionModuleOptions {
                scale: None,
                softcap: self.softcap,
                ..Default::default()
            };
            attention(q, k, v, Some(mask), None, options)
        }
    }
}

/// c·tanh(x / c): Gemma 2's soft cap on attention scores and logits.
pub fn softcap<const D: usize>(x: Tensor<D>, cap: f64) -> Tensor<D> {
    x.div_scalar(cap).tanh().mul_scalar(cap)
}

/// One layer's keys and values so far (after RoPE, before repeat_kv): [b, kv_heads, t, d].
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

/// Keys and values of every layer, so each generated token costs one position's forward.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(super) layers: Vec<LayerCache>,
    /// Positions already processed.
    pub len: usize,
}

/// What a batch's attention mask is made of, on the device: each token's example number (the
/// attention mask as the data gives it: 0 padding, 1, 2, … packed examples) and the positions —
/// O(tokens) integers, uploaded once. Any block of the mask is built from them when it is
/// needed: the whole of it for the materialised paths ([`Self::full`], built once), one query
/// tile at a time for the tiled training attention, so that no [s, t] buffer need exist.
///
/// The mask, [b, 1, s, start + s]: new query i (at position start + i) may not attend key j
/// when j > start + i, key j is padding, key j belongs to another packed example, or (with a
/// sliding `window`) j ≤ start + i − window. A padding query attends the real keys in reach, or
/// itself where there is none, as transformers' mask lets it. Every query sees at least one
/// key. [`causal_padding_mask_on_host`] is its oracle.
#[derive(Debug, Clone)]
pub struct MaskSource {
    /// [b, t]: each key's example number.
    examples: Tensor<2, Int>,
    /// [t]: 0..t.
    keys: Tensor<1, Int>,
    /// Positions already cached (generation); the new queries are start..t.
    start: usize,
    window: Option<usize>,
    full: std::sync::OnceLock<Tensor<4, Bool>>,
    /// The same mask as codes per query and per key, [b, s] and [b, t] f32 (see
    /// [`MaskCodes`]), for our kernels; on cubecl devices only.
    codes: Option<(Tensor<2>, Tensor<2>)>,
}

impl MaskSource {
    pub fn new(
        attention_mask: &[Vec<u8>],
        s: usize,
        start: usize,
        window: Option<usize>,
        device: &Device,
    ) -> Self {
        let (b, t) = (attention_mask.len(), start + s);
        let examples: Vec<i32> = (attention_mask.iter())
            .flat_map(|row| (0..t).map(|j| i32::from(row.get(j).copied().unwrap_or(0))))
            .collect();
        let codes = (!transfer::in_host_memory(device)).then(|| {
            let (queries, keys) = mask_codes(attention_mask, s, start, window);
            (
                transfer::upload(TensorData::new(queries, [b, s]), device),
                transfer::upload(TensorData::new(keys, [b, t]), device),
            )
        });
        Self {
            examples: transfer::upload(TensorData::new(examples, [b, t]), device),
            keys: transfer::upload(TensorData::new((0..t as i32).collect(), [t]), device),
            start,
            window,
            full: std::sync::OnceLock::new(),
            codes,
        }
    }

    /// The mask as per-token codes for our kernels; None on the CPU.
    pub fn codes(&self) -> Option<MaskCodes<'_>> {
        let (queries, keys) = self.codes.as_ref()?;
        let t = keys.dims()[1];
        Some(MaskCodes {
            queries,
            keys,
            start: self.start,
            window: self.window.unwrap_or(t).min(t),
        })
    }

    /// The whole mask [b, 1, s, t], built on first use and kept.
    pub fn full(&self) -> Tensor<4, Bool> {
        let [_, t] = self.examples.dims();
        let s = t - self.start;
        self.full.get_or_init(|| self.block(0, s, t)).clone()
    }

    /// Query rows `first..first + rows` (of the s new ones) against keys `0..keys`:
    /// [b, 1, rows, keys].
    pub fn block(&self, first: usize, rows: usize, keys: usize) -> Tensor<4, Bool> {
        let [b, _] = self.examples.dims();
        let shape = [b, rows, keys];
        let at = self.start + first;
        let q = self
            .keys
            .clone()
            .narrow(0, at, rows)
            .reshape([1, rows, 1])
            .expand(shape);
        let k = self
            .keys
            .clone()
            .narrow(0, 0, keys)
            .reshape([1, 1, keys])
            .expand(shape);
        let own = (self.examples.clone().narrow(1, at, rows))
            .reshape([b, rows, 1])
            .expand(shape);
        let key = (self.examples.clone().narrow(1, 0, keys))
            .reshape([b, 1, keys])
            .expand(shape);
        let causal = k.clone().lower_equal(q.clone());
        let reaches = match self.window {
            Some(w) => causal.bool_and((q.clone() - k.clone()).lower_elem(w as i32)),
            None => causal,
        };
        let own_real = own.clone().not_equal_elem(0);
        let real_in_reach = reaches.clone().bool_and(key.clone().not_equal_elem(0));
        // A padding query attends every real key in reach, or itself where there is none.
        let alone = real_in_reach.clone().any_dim(2).bool_not().expand(shape);
        let padding_sees = real_in_reach.bool_or(alone.bool_and(k.equal(q)));
        let real_sees = reaches.bool_and(own.equal(key));
        let sees = (own_real.clone().bool_and(real_sees))
            .bool_or(own_real.bool_not().bool_and(padding_sees));
        sees.bool_not().reshape([b, 1, rows, keys])
    }
}

/// (query codes [b·s], key codes [b·t]) of [`MaskCodes`]: a key's code is its example number; a
/// query's is too, except a padding query with no real key in reach, coded −1.
fn mask_codes(
    attention_mask: &[Vec<u8>],
    s: usize,
    start: usize,
    window: Option<usize>,
) -> (Vec<f32>, Vec<f32>) {
    let t = start + s;
    let window = window.unwrap_or(usize::MAX);
    let (mut queries, mut keys) = (Vec::new(), Vec::new());
    for row in attention_mask {
        let example = |j: usize| row.get(j).copied().unwrap_or(0);
        let mut last_real = None;
        for j in 0..t {
            keys.push(f32::from(example(j)));
            if example(j) != 0 {
                last_real = Some(j);
            }
            if j >= start {
                let alone = last_real.is_none_or(|r| j - r >= window);
                let lonely = example(j) == 0 && alone;
                queries.push(if lonely { -1.0 } else { f32::from(example(j)) });
            }
        }
    }
    (queries, keys)
}

/// [`MaskSource`]'s mask drawn up on the host, element by element: its oracle.
pub fn causal_padding_mask_on_host(
    attention_mask: &[Vec<u8>],
    s: usize,
    start: usize,
    window: Option<usize>,
    device: &Device,
) -> Tensor<4, Bool> {
    let window = window.unwrap_or(usize::MAX);
    let (b, t) = (attention_mask.len(), start + s);
    let mut masked = Vec::with_capacity(b * s * t);
    for row in attention_mask {
        let example = |j: usize| row.get(j).copied().unwrap_or(0);
        for i in start..t {
            let own = example(i);
            // A padding query (example 0) may look at any real key, as transformers' mask lets
            // it; where none is in reach (left padding, or a window past right padding) it
            // attends itself, so no row is fully masked. Its output is never used.
            let reaches = |j: usize| j <= i && i - j < window;
            let alone = own == 0
                && !(0..=i)
                    .rev()
                    .take_while(|&j| reaches(j))
                    .any(|j| example(j) != 0);
            masked.extend((0..t).map(|j| {
                let key = example(j);
                match own {
                    0 => !((reaches(j) && key != 0) || (alone && j == i)),
                    _ => !reaches(j) || key != own,
                }
            }));
        }
    }
    transfer::upload(TensorData::new(masked, [b, 1, s, t]), device)
}

/// Each token's position: counted from the start of its example (a change of example number
/// in a packed row restarts it); padding continues the count, as transformers does.
pub fn positions(attention_mask: &[u8]) -> Vec<usize> {
    let (mut start, mut current) = (0, 0);
    let mut out = Vec::with_capacity(attention_mask.len());
    for (j, &m) in attention_mask.iter().enumerate() {
        if m != 0 && m != current {
            (start, current) = (j, m);
        }
        out.push(j - start);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device-built mask equals the host-drawn one, and each block of it the same part of
    /// the whole: left and right padding, packed examples, a row of padding alone, sliding
    /// windows, and a cached prefix (generation's `start`).
    #[test]
    fn the_device_mask_equals_the_host_mask() {
        let device = Device::flex();
        let rows: Vec<Vec<u8>> = vec![
            vec![0, 0, 1, 1, 1, 1, 1, 1, 1],
            vec![1, 1, 1, 2, 2, 2, 3, 3, 0],
            vec![1, 1, 1, 1, 0, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 0, 0, 0, 0, 0],
        ];
        for window in [None, Some(1), Some(3), Some(20)] {
            for start in [0, 2, 8] {
                let s = 9 - start;
                let bits = |m: Tensor<4, Bool>| m.into_data().try_to_vec::<bool>().unwrap();
                let want = bits(causal_padding_mask_on_host(
                    &rows, s, start, window, &device,
                ));
                let source = MaskSource::new(&rows, s, start, window, &device);
                assert_eq!(
                    bits(source.full()),
                    want,
                    "window {window:?}, start {start}"
                );
                // A block is the same part of the whole.
                let (first, n, keys) = (s / 3, s - s / 3, start + s - 1);
                let whole = source.full().narrow(2, first, n).narrow(3, 0, keys);
                let block = source.block(first, n, keys);
                assert_eq!(
                    bits(block),
                    bits(whole),
                    "block, window {window:?}, start {start}"
                );
            }
        }
    }
}
