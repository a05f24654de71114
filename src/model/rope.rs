//! Rotary position embeddings as Hugging Face applies them: rotate_half over the two halves of
//! each head (not burn's interleaved pairs — DESIGN.md §3), with Llama 3 or linear scaling and
//! Gemma 3's own base for its sliding-window layers.
//! Source: transformers `modeling_rope_utils.py` (`_compute_default_rope_parameters`,
//! `_compute_llama3_parameters`, `_compute_linear_scaling_rope_parameters`) and
//! `apply_rotary_pos_emb`.

use burn::tensor::{Device, Tensor, TensorData};

use super::decoder_config::{DecoderConfig, RopeScaling};

/// The inverse frequencies of the layers with full attention (and of every layer unless the
/// sliding-window layers have their own, [`local_inverse_frequencies`]).
pub fn inverse_frequencies(config: &DecoderConfig) -> Vec<f32> {
    scaled(
        unscaled(config.rope_theta, config.head_dim),
        config.rope_scaling,
    )
}

/// Gemma 3's sliding-window layers: their own base, unscaled.
pub fn local_inverse_frequencies(config: &DecoderConfig) -> Option<Vec<f32>> {
    let theta = config.deltas.local_rope_theta?;
    Some(unscaled(theta, config.head_dim))
}

/// inv_freq[i] = 1 / θ^(2i/d), i < d/2.
fn unscaled(theta: f64, d: usize) -> Vec<f32> {
    // transformers computes these in float32; so do we, so tables round the same way.
    let theta = theta as f32;
    (0..d / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
        .collect()
}

/// Llama 3's wavelength-dependent rescaling, or every frequency divided by a linear factor.
fn scaled(base: Vec<f32>, scaling: RopeScaling) -> Vec<f32> {
    let s = match scaling {
        RopeScaling::None => return base,
        RopeScaling::Linear { factor } => {
            return base.into_iter().map(|f| f / factor as f32).collect();
        }
        RopeScaling::Llama3(s) => s,
    };
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
    /// `positions`: one list per row, all of the same length.
    pub fn new(inv_freq: &[f32], positions: &[Vec<usize>], device: &Device) -> Self {
        let half = inv_freq.len();
        let (b, s) = (positions.len(), positions.first().map_or(0, Vec::len));
        let mut cos = Vec::with_capacity(b * s * half * 2);
        let mut sin = Vec::with_capacity(b * s * half * 2);
        for &p in positions.iter().flatten() {
            let angles: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let shape = [b, 1, s, half * 2];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// x: [batch, heads, seq, head_dim] → same; x·cos + rotate_half(x)·sin.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, s, d] = x.dims();
        let cos = self.cos.clone().expand([b, h, s, d]);
        let sin = self.sin.clone().expand([b, h, s, d]);
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3); // rotate_half: [-x2, x1]
        x * cos + rotated * sin
    }
}
