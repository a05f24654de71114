//! The top of a decoder, backward by hand: final RMSNorm, the LM head (with its adapter) or the
//! tied embedding, Granite's logit scaling, Gemma 2's logit soft cap and the cross-entropy, `chunk` scored positions at a
//! time so only that many rows of vocabulary-sized buffers are alive.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::linear::{self, FactorGradients};
use super::ops::{rms_norm_backward, softcap_derivative};
use crate::model::attention::softcap;
use crate::model::decoder::Decoder;
use crate::train::autograd::Seed;
use crate::train::cross_entropy::nll_sum_and_gradient;
use crate::train::{TrainError, scalar};
use crate::transfer;

/// What the head gives back: Σ loss / seed.denominator, the gradient of the last layer's output
/// x [b·s, hidden] (zero where nothing is scored), and the LM head adapter's gradients.
pub struct HeadPass {
    pub loss: f64,
    pub dx: Tensor<2>,
    pub adapter: Option<FactorGradients>,
}

/// Loss and gradients of the head over the flat positions `at` of x with their `targets`.
pub fn backward(
    model: &Decoder,
    x: &Tensor<2>,
    at: &[i64],
    targets: &[i64],
    seed: Seed,
    chunk: usize,
) -> Result<HeadPass, TrainError> {
    let device = x.device();
    let scaling = model.config.deltas.logits_scaling;
    let mut pass = HeadPass {
        loss: 0.0,
        dx: Tensor::zeros(x.dims(), &device),
        adapter: None,
    };
    for (at, targets) in at.chunks(chunk).zip(targets.chunks(chunk)) {
        let at = transfer::upload::<1, Int>(TensorData::new(at.to_vec(), [at.len()]), &device);
        let rows = x.clone().select(0, at.clone());
        let normed = model.norm.forward_rows(rows.clone());
        let (logits, tape) = match &model.lm_head {
            Some(head) => {
                let (logits, tape) = linear::forward(head, normed);
                (logits, Some(tape))
            }
            None => (model.embed_tokens.product_nt(normed, model.compute), None),
        };
        let logits = if scaling == 1.0 {
            logits
        } else {
            logits.div_scalar(scaling)
        };
        let (logits, cap_slope) = match model.config.deltas.logit_softcap {
            Some(cap) => {
                let capped = softcap(logits, cap);
                (capped.clone(), Some(softcap_derivative(capped, cap)))
            }
            None => (logits, None),
        };
        let (nll, dlogits) = nll_sum_and_gradient(logits, targets.to_vec());
        pass.loss += scalar(nll.div_scalar(seed.denominator as f64))?;
        let dlogits = match cap_slope {
            Some(slope) => dlogits * slope,
            None => dlogits,
        };
        let dlogits = seed.gradient(dlogits, scaling);
        let dnormed = match (&model.lm_head, tape) {
            (Some(head), Some(tape)) => {
                let (dnormed, grads) = linear::backward(head, tape, dlogits);
                pass.adapter = linear::add(pass.adapter, grads);
                dnormed
            }
            _ => model.embed_tokens.product(dlogits, model.compute),
        };
        let drows = rms_norm_backward(&model.norm, rows, dnormed);
        pass.dx = pass.dx.select_assign(0, at, drows, IndexingUpdateOp::Add);
    }
    Ok(pass)
}
