//! Rotary position embeddings as Hugging Face applies them: rotate_half over the two halves of
//! each head (not burn's interleaved pairs — DESIGN.md §3), over all of a head or its first
//! `partial_rotary_factor`, with Llama 3, linear or LongRoPE (Phi-3) scaling and Gemma 3's own
//! base for its sliding-window layers.
//! Source: transformers `modeling_rope_utils.py` (`_compute_default_rope_parameters`,
//! `_compute_llama3_parameters`, `_compute_linear_scaling_rope_parameters`,
//! `_compute_longrope_parameters`, `longrope_frequency_update`) and
//! `apply_rotary_pos_emb`.

use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::decoder_config::{DecoderConfig, Llama3Scaling, RopeScaling};
use crate::transfer;

/// What a layer's rotary tables are built from: the inverse frequencies over the rotated part
/// of each head (all of it, or `partial_rotary_factor` of it), LongRoPE's second set for
/// positions past its original context, and the factor cos and sin are multiplied by.
#[derive(Debug, Clone)]
pub struct RopeFrequencies {
    pub inv_freq: Vec<f32>,
    /// LongRoPE: frequencies for a call whose positions reach `original` or beyond
    /// (transformers' `longrope_frequency_update`: chosen per forward call by its largest
    /// position).
    pub long: Option<(Vec<f32>, usize)>,
    /// Multiplies cos and sin (LongRoPE's attention factor; 1 elsewhere).
    pub scale: f32,
    /// cos and sin of every position up to a bound, on the device: a batch's tables are rows
    /// gathered by its positions, so a step uploads O(tokens) position ids, not its tables.
    table: Arc<Mutex<Option<DeviceTable>>>,
}

/// [`RopeTables`] of positions 0..n as [n, rotary dims], for `long` or short frequencies.
#[derive(Debug)]
struct DeviceTable {
    long: bool,
    rows: usize,
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl RopeFrequencies {
    /// The layers with full attention (and every layer unless the sliding-window layers have
    /// their own, [`Self::local`]).
    pub fn global(config: &DecoderConfig) -> Self {
        let d = config.deltas.rotary_dim.unwrap_or(config.head_dim);
        let base = unscaled(config.rope_theta, d);
        match &config.rope_scaling {
            RopeScaling::None => Self::plain(base),
            RopeScaling::Linear { factor } => {
                Self::plain(base.into_iter().map(|f| f / *factor as f32).collect())
            }
            RopeScaling::Llama3(s) => Self::plain(llama3(base, s)),
            RopeScaling::FreqFactors(factors) => {
                Self::plain(base.iter().zip(factors).map(|(f, d)| f / d).collect())
            }
            RopeScaling::LongRope(l) => {
                let with = |factors: &[f64]| {
                    base.iter()
                        .zip(factors)
                        .map(|(f, e)| f / *e as f32)
                        .collect::<Vec<f32>>()
                };
                Self {
                    inv_freq: with(&l.short_factor),
                    long: Some((with(&l.long_factor), l.original_max_position_embeddings)),
                    scale: l.attention_factor as f32,
                    table: Arc::default(),
                }
            }
        }
    }

    /// Gemma 3's sliding-window layers: their own base, unscaled.
    pub fn local(config: &DecoderConfig) -> Option<Self> {
        let theta = config.deltas.local_rope_theta?;
        let d = config.deltas.rotary_dim.unwrap_or(config.head_dim);
        Some(Self::plain(unscaled(theta, d)))
    }

    fn plain(inv_freq: Vec<f32>) -> Self {
        Self {
            inv_freq,
            long: None,
            scale: 1.0,
            table: Arc::default(),
        }
    }

    /// The tables for `positions` (one list per row, all of the same length): rows of the
    /// device table (computed on the host once, exactly as [`RopeTables::new`] computes them,
    /// and grown to the next power of two when a position passes it).
    pub fn tables(&self, positions: &[Vec<usize>], device: &Device) -> RopeTables {
        let reach = positions.iter().flatten().max().map_or(0, |p| p + 1);
        let (inv_freq, long) = match &self.long {
            // transformers divides by the long factors once a call's positions pass `original`.
            Some((long, original)) if reach > *original => (long, true),
            _ => (&self.inv_freq, false),
        };
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let fits = |t: &DeviceTable| t.long == long && t.rows >= reach && t.cos.device() == *device;
        if !table.as_ref().is_some_and(fits) {
            let rows = reach.next_power_of_two().max(256);
            let all = RopeTables::new(inv_freq, self.scale, &[(0..rows).collect()], device);
            let d = all.rotary_dim();
            *table = Some(DeviceTable {
                long,
                rows,
                cos: all.cos.reshape([rows, d]),
                sin: all.sin.reshape([rows, d]),
            });
        }
        let table = table.as_ref().expect("filled above");
        let (b, s) = (positions.len(), positions.first().map_or(0, Vec::len));
        let at: Vec<i32> = positions.iter().flatten().map(|&p| p as i32).collect();
        let at = transfer::upload::<1, Int>(TensorData::new(at, [b * s]), device);
        let d = table.cos.dims()[1];
        let rows = |t: &Tensor<2>| t.clone().select(0, at.clone()).reshape([b, 1, s, d]);
        RopeTables {
            cos: rows(&table.cos),
            sin: rows(&table.sin),
        }
    }
}

/// inv_freq[i] = 1 / θ^(2i/d), i < d/2 (d: the rotated dimensions).
fn unscaled(theta: f64, d: usize) -> Vec<f32> {
    // transformers computes these in float32; so do we, so tables round the same way.
    let theta = theta as f32;
    (0..d / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
        .collect()
}

/// Llama 3's wavelength-dependent rescaling.
fn llama3(base: Vec<f32>, s: &Llama3Scaling) -> Vec<f32> {
    let (factor, low, high, old) = (
        s.factor as f32,
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
        s.original_max_position_embeddings as f32,
    );
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            let scaled = if wavelen > low_wavelen { f / factor } else { f };
            let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
            if medium {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            }
        })
        .collect()
}

/// cos and sin tables for each row's token positions: [batch, 1, seq, head_dim], halves
/// repeated (the 1 broadcasts over heads).
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor<4>,
    pub sin: Tensor<4>,
}

impl RopeTables {
    /// `positions`: one list per row, all of the same length; cos and sin times `scale`.
    pub fn new(inv_freq: &[f32], scale: f32, positions: &[Vec<usize>], device: &Device) -> Self {
        let half = inv_freq.len();
        let (b, s) = (positions.len(), positions.first().map_or(0, Vec::len));
        let mut cos = Vec::with_capacity(b * s * half * 2);
        let mut sin = Vec::with_capacity(b * s * half * 2);
        for &p in positions.iter().flatten() {
            let angles: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() * scale));
                sin.extend(angles.iter().map(|a| a.sin() * scale));
            }
        }
        let shape = [b, 1, s, half * 2];
        Self {
            cos: transfer::upload(TensorData::new(cos, shape), device),
            sin: transfer::upload(TensorData::new(sin, shape), device),
        }
    }

    /// The rotated dimensions of each head (the first ones; the rest pass through).
    pub fn rotary_dim(&self) -> usize {
        self.cos.dims()[3]
    }

    /// x: [batch, heads, seq, head_dim] → same; x·cos + rotate_half(x)·sin over the first
    /// [`Self::rotary_dim`] dimensions, the others unchanged.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let r = self.rotary_dim();
        if r < d {
            let rotated = self.apply(x.clone().narrow(3, 0, r));
            return Tensor::cat(vec![rotated, x.narrow(3, r, d - r)], 3);
        }
        let cos = self.cos.clone().expand([b, h, s, d]);
        let sin = self.sin.clone().expand([b, h, s, d]);
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3); // rotate_half: [-x2, x1]
        x * cos + rotated * sin
    }
}
