//! The top of a decoder, backward by hand: final RMSNorm, the LM head (with its adapter) or the
//! tied embedding, Granite's logit scaling, Gemma 2's logit soft cap and the cross-entropy, `chunk` scored positions at a
//! time so only that many rows of vocabulary-sized buffers are alive.

use burn::tensor::activation::log_softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::linear::{self, FactorGradients};
use super::ops::{rms_norm_backward, softcap_derivative};
use crate::model::attention::softcap;
use crate::model::decoder::Decoder;
use crate::train::autograd::Seed;
use crate::train::cross_entropy::nll_sum_and_gradient;
use crate::train::preference::RowLogps;
use crate::train::{TrainError, scalar};
use crate::{kernels, transfer};

/// What the head gives back: Σ loss / seed.denominator, the gradient of the last layer's output
/// x [b·s, hidden] (zero where nothing is scored), and the LM head adapter's gradients.
pub struct HeadPass {
    pub loss: f64,
    pub dx: Tensor<2>,
    pub adapter: Option<FactorGradients>,
}

/// The logits of the final-norm rows `normed` (scaled, soft-capped), the LM head adapter's
/// tape and the soft cap's slope for backward.
fn logits_of(
    model: &Decoder,
    normed: Tensor<2>,
) -> (Tensor<2>, Option<linear::LinearTape>, Option<Tensor<2>>) {
    let scaling = model.config.deltas.logits_scaling;
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
    match model.config.deltas.logit_softcap {
        Some(cap) => {
            let capped = softcap(logits, cap);
            let slope = softcap_derivative(capped.clone(), cap);
            (capped, tape, Some(slope))
        }
        None => (logits, tape, None),
    }
}

/// Per row of a batch of `rows` rows of `s` positions: the log-probability sum of its `targets`
/// at the flat positions `at` of x, their count, and the sum of each position's mean logit —
/// what a preference loss needs before its backward (no tape is kept).
pub fn row_logps(
    model: &Decoder,
    x: &Tensor<2>,
    at: &[i64],
    targets: &[i64],
    [rows, s]: [usize; 2],
    chunk: usize,
) -> Result<RowLogps, TrainError> {
    let device = x.device();
    let mut out = RowLogps {
        logps: vec![0.0; rows],
        tokens: vec![0; rows],
        mean_logit_sums: vec![0.0; rows],
    };
    for (at, targets) in at.chunks(chunk).zip(targets.chunks(chunk)) {
        let index = transfer::upload::<1, Int>(TensorData::new(at.to_vec(), [at.len()]), &device);
        let normed = model.norm.forward_rows(x.clone().select(0, index));
        let (logits, _, _) = logits_of(model, normed);
        let n = at.len();
        let means = values(logits.clone().mean_dim(1))?;
        let nll = match kernels::nll_rows(&logits, targets) {
            Some(rows) => rows,
            None => {
                let t =
                    transfer::upload::<2, Int>(TensorData::new(targets.to_vec(), [n, 1]), &device);
                let picked = log_softmax(logits, 1).gather(1, t).neg();
                values(picked)?
            }
        };
        for ((&p, nll), mean) in at.iter().zip(nll).zip(means) {
            let row = p as usize / s;
            out.logps[row] -= f64::from(nll);
            out.tokens[row] += 1;
            out.mean_logit_sums[row] += f64::from(mean);
        }
    }
    Ok(out)
}

fn values(t: Tensor<2>) -> Result<Vec<f32>, TrainError> {
    let data = transfer::download(t).map_err(TrainError::Readback)?;
    data.try_to_vec::<f32>()
        .map_err(|e| TrainError::Readback(format!("{e:?}")))
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
    backward_weighted(model, x, at, targets, None, seed, chunk)
}

/// [`backward`] with each position's cross-entropy gradient times its `weights` entry (a
/// preference loss's −∂L/∂π of the position's row); the loss is then the weighted sum.
pub fn backward_weighted(
    model: &Decoder,
    x: &Tensor<2>,
    at: &[i64],
    targets: &[i64],
    weights: Option<&[f32]>,
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
    let mut done = 0;
    for (at, targets) in at.chunks(chunk).zip(targets.chunks(chunk)) {
        let n = at.len();
        let at = transfer::upload::<1, Int>(TensorData::new(at.to_vec(), [n]), &device);
        let rows = x.clone().select(0, at.clone());
        let normed = model.norm.forward_rows(rows.clone());
        let (logits, tape, cap_slope) = logits_of(model, normed);
        let (nll, dlogits) = nll_sum_and_gradient(logits, targets.to_vec());
        let dlogits = match weights {
            Some(w) => {
                let w = TensorData::new(w[done..done + n].to_vec(), [n, 1]);
                dlogits * transfer::upload::<2, burn::tensor::Float>(w, &device)
            }
            None => {
                pass.loss += scalar(nll.div_scalar(seed.denominator as f64))?;
                dlogits
            }
        };
        done += n;
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
