//! Softmax attention over heads, forward keeping what backward needs and backward written out:
//! with P = softmax(q·kᵀ + mask) and O = P·v, dv = Pᵀ·dO, dP = dO·vᵀ and
//! dS = P ⊙ (dP − Σ_t dP⊙P), where the row sums are taken as Σ_d dO⊙O (flash attention's D) on
//! [b, h, s, d] instead of s×s; dq = dS·k, dk = dSᵀ·q. The scale is applied to q beforehand, so
//! the caller multiplies dq by it. Masked scores get no gradient (autodiff's `mask_fill`). With
//! Gemma 2's soft cap the scores are c·tanh(q·kᵀ / c) and dS is multiplied by the cap's slope.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor};

use super::ops::softcap_derivative;

#[derive(Debug, Clone)]
pub struct AttentionCore {
    /// [b, h, s, d]: q times the scale, k and v (one per query head).
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    /// [b, h, s, s]
    probs: Tensor<4>,
    /// The soft cap's slope at each score, [b, h, s, s] (with a cap).
    softcap_slope: Option<Tensor<4>>,
}

/// q (scaled), k, v: [b, h, s, d]; mask [b, h, s, s] (true = may not attend), masked scores
/// set to `masked` ([`masked_score`]), scores soft-capped at `softcap` → O [b, h, s, d].
pub fn forward(
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
    let core = AttentionCore {
        q,
        k,
        v,
        probs,
        softcap_slope,
    };
    (out, core)
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

/// dO and O [b, h, s, d] → (dq for the scaled q, dk, dv), each [b, h, s, d].
pub fn backward(
    core: AttentionCore,
    dout: Tensor<4>,
    out: Tensor<4>,
    mask: Tensor<4, Bool>,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, h, s, _] = core.probs.dims();
    let rows = (dout.clone() * out).sum_dim(3).expand([b, h, s, s]);
    let dprobs = dout.clone().matmul(core.v.swap_dims(2, 3));
    let dscores = (core.probs.clone() * (dprobs - rows)).mask_fill(mask, 0.0);
    let dscores = match core.softcap_slope {
        Some(slope) => dscores * slope,
        None => dscores,
    };
    let dq = dscores.clone().matmul(core.k);
    let dk = dscores.swap_dims(2, 3).matmul(core.q);
    let dv = core.probs.swap_dims(2, 3).matmul(dout);
    (dq, dk, dv)
}
