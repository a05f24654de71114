//! Preference tuning on pairs, as TRL computes it: DPO (`DPOTrainer`, `loss_type = "sigmoid"`)
//! on the summed completion log-probabilities against a reference, and SimPO (`CPOTrainer`,
//! `loss_type = "simpo"`, `cpo_alpha = 0`) on the token-averaged ones without one; optionally
//! an NLL term on the chosen completions (DPO's `"sft"` loss beside `"sigmoid"`).
//!
//! A pair's loss depends on its rows only through their log-probability sums π, so backward
//! is the causal LM's: each scored position's cross-entropy gradient (softmax − onehot) times
//! −∂L/∂π of its row ([`PairOutcome::dlogp`]). The head computes the π first (no tape), the
//! pairs' losses and weights follow on the host, then the head runs backward with the weights.

use burn::tensor::activation::{log_sigmoid, log_softmax};
use burn::tensor::{Float, Int, Tensor, TensorData};

use super::TrainError;
use super::autograd::{Gradients, Seed};
use super::cross_entropy::scored_positions;
use super::derived::{DecoderPass, head, taped_forward};
use super::metrics::PreferenceMetrics;
use crate::data::batch::{Batch, Pairs};
use crate::data::dataset::Dataset;
use crate::memory::logit_chunk;
use crate::model::adapted::AdaptedModel;
use crate::model::decoder::Decoder;
use crate::transfer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Dpo,
    Simpo,
}

/// The recipe's preference loss (`train.method`, `[preference]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreferenceLoss {
    pub method: Method,
    pub beta: f64,
    /// SimPO's target margin γ (TRL's `simpo_gamma`).
    pub simpo_gamma: f64,
    /// Weight of the mean NLL over the chosen completions' tokens (0: none).
    pub sft_weight: f64,
}

/// What the head gives per row of a preference batch: the completion's log-probability sum,
/// its scored tokens, and the sum over them of each position's mean logit (TRL's
/// `logits/chosen`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowLogps {
    pub logps: Vec<f64>,
    pub tokens: Vec<usize>,
    pub mean_logit_sums: Vec<f64>,
}

/// A micro-batch's pairs: its loss — the mean over its pairs (plus the SFT term), as TRL's
/// `compute_loss` gives it; a step is the mean over its micro-batches, as transformers'
/// Trainer divides each by the accumulation steps — ∂(that loss)/∂π per row, and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct PairOutcome {
    pub loss: f64,
    pub dlogp: Vec<f64>,
    pub metrics: PreferenceMetrics,
}

/// −log σ(z) = softplus(−z), and its derivative −σ(−z), without overflow.
fn neg_log_sigmoid(z: f64) -> (f64, f64) {
    let loss = if z > 0.0 {
        (-z).exp().ln_1p()
    } else {
        -z + z.exp().ln_1p()
    };
    let sigmoid_neg = 1.0 / (1.0 + z.exp());
    (loss, -sigmoid_neg)
}

impl PreferenceLoss {
    /// The pairs' losses, gradients and metrics from their rows' log-probabilities.
    pub fn pairs(&self, pairs: &Pairs, rows: &RowLogps) -> PairOutcome {
        let n = pairs.count;
        let mut dlogp = vec![0.0; 2 * n];
        let (mut loss_sum, mut m) = (0.0, PreferenceMetrics::default());
        for i in 0..n {
            let (c, r) = (i, n + i);
            // Each completion's score: DPO's log-ratio to the reference, SimPO's mean log-prob.
            let (score_c, score_r, slope_c, slope_r) = match self.method {
                Method::Dpo => (
                    rows.logps[c] - pairs.reference[c],
                    rows.logps[r] - pairs.reference[r],
                    1.0,
                    1.0,
                ),
                Method::Simpo => {
                    let (len_c, len_r) =
                        (rows.tokens[c].max(1) as f64, rows.tokens[r].max(1) as f64);
                    (
                        rows.logps[c] / len_c,
                        rows.logps[r] / len_r,
                        1.0 / len_c,
                        1.0 / len_r,
                    )
                }
            };
            let z = match self.method {
                Method::Dpo => self.beta * (score_c - score_r),
                Method::Simpo => self.beta * (score_c - score_r) - self.simpo_gamma,
            };
            let (loss, dz) = neg_log_sigmoid(z);
            loss_sum += loss;
            dlogp[c] += dz * self.beta * slope_c;
            dlogp[r] -= dz * self.beta * slope_r;
            let (reward_c, reward_r) = (self.beta * score_c, self.beta * score_r);
            m.rewards_chosen += reward_c;
            m.rewards_rejected += reward_r;
            m.rewards_accuracies += f64::from(u8::from(reward_c > reward_r));
            m.rewards_margins += reward_c - reward_r;
            // CPOTrainer's logps are the averaged ones SimPO compares.
            m.logps_chosen += rows.logps[c] * slope_c;
            m.logps_rejected += rows.logps[r] * slope_r;
        }
        let per_pair = 1.0 / n.max(1) as f64;
        for v in [
            &mut m.rewards_chosen,
            &mut m.rewards_rejected,
            &mut m.rewards_accuracies,
            &mut m.rewards_margins,
            &mut m.logps_chosen,
            &mut m.logps_rejected,
        ] {
            *v *= per_pair;
        }
        let tokens = |rows_: std::ops::Range<usize>| -> (f64, usize) {
            let sum = rows_.clone().map(|i| rows.mean_logit_sums[i]).sum();
            (sum, rows_.map(|i| rows.tokens[i]).sum())
        };
        let ((logit_c, tokens_c), (logit_r, tokens_r)) = (tokens(0..n), tokens(n..2 * n));
        m.logits_chosen = logit_c / tokens_c.max(1) as f64;
        m.logits_rejected = logit_r / tokens_r.max(1) as f64;
        let mut loss = loss_sum * per_pair;
        dlogp.iter_mut().for_each(|d| *d *= per_pair);
        // TRL's "sft" term: the micro-batch's mean NLL over its chosen completions' tokens.
        if self.sft_weight != 0.0 && tokens_c > 0 {
            let scale = self.sft_weight / tokens_c as f64;
            loss -= scale * (0..n).map(|c| rows.logps[c]).sum::<f64>();
            dlogp[..n].iter_mut().for_each(|d| *d -= scale);
        }
        m.loss = loss;
        PairOutcome {
            loss,
            dlogp,
            metrics: m,
        }
    }
}

/// Each pair's reference log-probabilities for DPO, into `data.reference`: the model with
/// its adapters taken off (`adapters_off`: the frozen base, TRL's PEFT reference) or as they
/// are (the initial adapter), `batch_size` pairs at a time, forward only. The reference never
/// changes during a run, so it is computed once (TRL's `precompute_ref_log_probs`), not per
/// step; the adapters go back in place however the pass ends.
pub fn compute_reference(
    model: &mut Decoder,
    data: &mut Dataset,
    batch_size: usize,
    adapters_off: bool,
) -> Result<(), TrainError> {
    let saved: Vec<_> = match adapters_off {
        true => (model.linears_mut().into_iter())
            .map(|(_, l)| l.lora.take())
            .collect(),
        false => Vec::new(),
    };
    let chunk = logit_chunk(model.config.vocab_size);
    let mut reference = Vec::with_capacity(data.examples.len());
    // No dropout in a reference (the initial adapter's would draw masks).
    model.set_training(false);
    let mut pass = || -> Result<(), TrainError> {
        for batch in data.in_order(batch_size.max(1)) {
            let Some(pairs) = &batch.pairs else { continue };
            let rows = row_logps(model, &batch, &taped_forward(model, &batch), chunk)?;
            let n = pairs.count;
            reference.extend((0..n).map(|i| [rows.logps[i], rows.logps[n + i]]));
        }
        Ok(())
    };
    let result = pass();
    model.set_training(true);
    if adapters_off {
        for ((_, linear), lora) in model.linears_mut().into_iter().zip(saved) {
            linear.lora = lora;
        }
    }
    result?;
    data.reference = reference;
    Ok(())
}

/// A preference batch's loss and metrics, forward only (`Objective::preference_outcome`);
/// None without pairs or a preference loss.
pub fn outcome(model: &Decoder, batch: &Batch) -> Option<Result<PairOutcome, TrainError>> {
    let (pairs, loss) = (batch.pairs.as_ref()?, model.preference.as_ref()?);
    let x = taped_forward(model, batch);
    let chunk = logit_chunk(model.config.vocab_size);
    Some(row_logps(model, batch, &x, chunk).map(|rows| loss.pairs(pairs, &rows)))
}

/// Each row's completion log-probability sum (and token count, mean-logit sum) of a preference
/// batch from the last layer's output `x`, `chunk` scored positions per head pass.
fn row_logps(
    model: &Decoder,
    batch: &Batch,
    x: &Tensor<2>,
    chunk: usize,
) -> Result<RowLogps, TrainError> {
    let (at, targets) = scored_positions(&batch.labels);
    let s = batch.input_ids.first().map_or(0, Vec::len);
    let rows = batch.input_ids.len();
    head::row_logps(model, x, &at, &targets, [rows, s], chunk)
}

/// `Objective::loss_and_gradients` for a preference batch, derived by hand: the decoder's
/// forward, the rows' log-probabilities from the head (no tape), the pairs' losses, then the
/// head's backward with each position weighted by −∂L/∂π of its row and the layers' backward.
/// Records the micro-batch's metrics on the model.
pub fn loss_and_gradients(
    model: &Decoder,
    batch: &Batch,
    seed: Seed,
    chunk: usize,
) -> Result<Option<Gradients>, TrainError> {
    let (Some(pairs), Some(loss)) = (&batch.pairs, &model.preference) else {
        return Ok(None);
    };
    let (at, targets) = scored_positions(&batch.labels);
    if at.is_empty() {
        return Ok(None);
    }
    let s = batch.input_ids.first().map_or(0, Vec::len);
    let (x, pass) = DecoderPass::forward(model, batch);
    let out = loss.pairs(pairs, &row_logps(model, batch, &x, chunk)?);
    model
        .preference_metrics
        .borrow_mut()
        .push(out.metrics.clone());
    let weights: Vec<f32> = at
        .iter()
        .map(|&p| -out.dlogp[p as usize / s] as f32)
        .collect();
    let head = head::backward_weighted(model, &x, &at, &targets, Some(&weights), seed, chunk)?;
    let factors = pass
        .backward(model, head.dx, None)
        .into_iter()
        .chain([head.adapter]);
    let grads = factors.flatten().flatten().collect();
    Ok(Some((out.loss / seed.denominator as f64, grads)))
}

/// The micro-batch's preference loss (the mean over its pairs) as one autodiff expression (the oracle the
/// derived step is tested against): log-probabilities through `log_softmax`, each row's sum
/// by a 0/1 matrix over the scored positions, then the loss formula on tensors.
pub fn loss_sum(model: &Decoder, batch: &Batch) -> Option<Tensor<1>> {
    let (pairs, loss) = (batch.pairs.as_ref()?, model.preference.as_ref()?);
    let (at, targets) = scored_positions(&batch.labels);
    if at.is_empty() {
        return None;
    }
    let device = model.device().clone();
    let (n, npos) = (pairs.count, at.len());
    let s = batch.input_ids.first().map_or(0, Vec::len);
    let hidden = model.hidden(&batch.input_ids, &batch.attention_mask);
    let logits = model.head_at(hidden, &at);
    let t = transfer::upload::<2, Int>(TensorData::new(targets, [npos, 1]), &device);
    let logp = log_softmax(logits, 1).gather(1, t); // [npos, 1]
    let mut select = vec![0f32; 2 * n * npos];
    let mut tokens = vec![0f32; 2 * n];
    for (j, &p) in at.iter().enumerate() {
        let row = p as usize / s;
        select[row * npos + j] = 1.0;
        tokens[row] += 1.0;
    }
    let select = transfer::upload::<2, Float>(TensorData::new(select, [2 * n, npos]), &device);
    let pi = select.matmul(logp).reshape([2 * n]); // [2n]
    let upload = |v: Vec<f32>| transfer::upload::<1, Float>(TensorData::new(v, [2 * n]), &device);
    let half = |t: Tensor<1>, k: usize| t.narrow(0, k * n, n);
    let z = match loss.method {
        Method::Dpo => {
            let reference = upload(pairs.reference.iter().map(|&v| v as f32).collect());
            let ratio = pi.clone() - reference;
            (half(ratio.clone(), 0) - half(ratio, 1)).mul_scalar(loss.beta)
        }
        Method::Simpo => {
            let mean = pi.clone() / upload(tokens.iter().map(|t| t.max(1.0)).collect());
            (half(mean.clone(), 0) - half(mean, 1))
                .mul_scalar(loss.beta)
                .sub_scalar(loss.simpo_gamma)
        }
    };
    let mut total = log_sigmoid(z).mean().neg();
    let chosen_tokens: f32 = tokens[..n].iter().sum();
    if loss.sft_weight != 0.0 && chosen_tokens > 0.0 {
        let scale = loss.sft_weight / f64::from(chosen_tokens);
        total = total - half(pi, 0).sum().mul_scalar(scale);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dpo(beta: f64) -> PreferenceLoss {
        PreferenceLoss {
            method: Method::Dpo,
            beta,
            simpo_gamma: 0.5,
            sft_weight: 0.0,
        }
    }

    #[test]
    fn a_policy_equal_to_its_reference_costs_ln_2_with_no_margin() {
        let pairs = Pairs {
            count: 2,
            reference: vec![-3.0, -5.0, -4.0, -2.0],
        };
        let rows = RowLogps {
            logps: pairs.reference.clone(),
            tokens: vec![2, 3, 2, 1],
            mean_logit_sums: vec![0.0; 4],
        };
        let out = dpo(0.1).pairs(&pairs, &rows);
        assert!((out.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(out.metrics.rewards_margins, 0.0);
        assert_eq!(out.metrics.rewards_accuracies, 0.0);
        // ∂/∂π_c = −β/2 per pair, ∂/∂π_r = +β/2, over the 2 pairs' mean.
        assert_eq!(out.dlogp, [-0.025, -0.025, 0.025, 0.025]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let pairs = Pairs {
            count: 1,
            reference: vec![-3.0, -4.0],
        };
        for loss in [
            dpo(0.3),
            PreferenceLoss {
                method: Method::Simpo,
                beta: 2.0,
                simpo_gamma: 0.5,
                sft_weight: 0.7,
            },
        ] {
            let rows = |c: f64, r: f64| RowLogps {
                logps: vec![c, r],
                tokens: vec![3, 5],
                mean_logit_sums: vec![0.0; 2],
            };
            let out = loss.pairs(&pairs, &rows(-2.0, -6.0));
            let h = 1e-6;
            let dc = (loss.pairs(&pairs, &rows(-2.0 + h, -6.0)).loss
                - loss.pairs(&pairs, &rows(-2.0 - h, -6.0)).loss)
                / (2.0 * h);
            let dr = (loss.pairs(&pairs, &rows(-2.0, -6.0 + h)).loss
                - loss.pairs(&pairs, &rows(-2.0, -6.0 - h)).loss)
                / (2.0 * h);
            assert!((out.dlogp[0] - dc).abs() < 1e-7, "{loss:?}");
            assert!((out.dlogp[1] - dr).abs() < 1e-7, "{loss:?}");
        }
    }
}
