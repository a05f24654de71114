//! A mixture-of-experts block's forward keeping what backward needs, and its backward written
//! out: each expert's MLP backward ([`super::layer::mlp_backward`]) over the tokens routed to
//! it, the gradients gathered back to their tokens with the routing weights, and the routing
//! weights' own gradient through the top-k softmax into the router logits and on to the input
//! (the router is frozen; which experts were chosen carries no gradient, as in transformers).
//! Source of the forward it inverts: `model::moe::SparseMoe::forward`.

use burn::tensor::activation::sigmoid;
use burn::tensor::{IndexingUpdateOp, Tensor};

use super::layer::{MlpTape, mlp_backward, mlp_forward};
use super::linear::{self, FactorGradients, LinearTape};
use crate::model::linear::Linear;
use crate::model::moe::{Routes, Routing, SparseMoe};

#[derive(Debug, Clone)]
pub struct MoeTape {
    routes: Routes,
    /// The tape of each expert that got tokens.
    experts: Vec<(usize, MlpTape)>,
    /// The experts' outputs before weighting, [n·k, hidden] in the routes' pair order.
    outputs: Tensor<2>,
    shared: Option<SharedTape>,
}

/// Qwen2-MoE's shared expert: its MLP's and gate's tapes, its output before the gate's weight
/// [n, hidden] and that weight sigmoid(z) [n, 1].
#[derive(Debug, Clone)]
struct SharedTape {
    mlp: MlpTape,
    gate: LinearTape,
    output: Tensor<2>,
    weight: Tensor<2>,
}

/// x [n, hidden] → Σ over each token's experts of weight · expert(x), and the tape; `kept`:
/// the routes an earlier forward of the same x chose (`layer::forward`), else routed now.
pub fn forward(moe: &SparseMoe, x: Tensor<2>, kept: Option<Routes>) -> (Tensor<2>, MoeTape) {
    let routes = kept.unwrap_or_else(|| moe.route(x.clone()));
    let gathered = x.clone().select(0, routes.tokens.clone()); // [n·k, h], by expert
    let (mut outputs, mut experts) = (Vec::new(), Vec::new());
    for (e, range) in routes.groups() {
        let (ye, tape) = mlp_forward(
            &moe.experts[e],
            gathered.clone().narrow(0, range.start, range.len()),
        );
        outputs.push(ye);
        experts.push((e, tape));
    }
    let outputs = Tensor::cat(outputs, 0);
    let weighted = outputs.clone() * routes.pair_weights().unsqueeze_dim(1);
    let y = x
        .zeros_like()
        .select_assign(0, routes.tokens.clone(), weighted, IndexingUpdateOp::Add);
    let (y, shared) = match &moe.shared {
        Some(shared) => {
            let (output, mlp) = mlp_forward(&shared.mlp, x.clone());
            let (z, gate) = linear::forward(&shared.gate, x);
            let weight = sigmoid(z); // [n, 1]
            let y = y + output.clone() * weight.clone();
            let tape = SharedTape {
                mlp,
                gate,
                output,
                weight,
            };
            (y, Some(tape))
        }
        None => (y, None),
    };
    let tape = MoeTape {
        routes,
        experts,
        outputs,
        shared,
    };
    (y, tape)
}

impl MoeTape {
    pub fn routes(self) -> Routes {
        self.routes
    }

    pub fn routes_ref(&self) -> &Routes {
        &self.routes
    }
}

/// dy [n, hidden] → dx and the experts' adapter gradients, expert by expert in
/// `FeedForward::named` order (zeros for an adapted expert no token reached). `router_dprobs`:
/// the router load-balancing loss's gradient with respect to the probabilities over every
/// expert [n, E], which reaches the router's logits through their softmax.
pub fn backward(
    moe: &SparseMoe,
    tape: MoeTape,
    dy: Tensor<2>,
    router_dprobs: Option<Tensor<2>>,
) -> (Tensor<2>, Vec<Option<FactorGradients>>) {
    let routes = tape.routes;
    let [n, k] = routes.weights.dims();
    let dsorted = dy.clone().select(0, routes.tokens.clone()); // [n·k, h]
    // d(weight of a pair) = dy of its token · its expert's output.
    let dpair = (dsorted.clone() * tape.outputs).sum_dim(1).reshape([n * k]);
    let dexperts = dsorted * routes.pair_weights().unsqueeze_dim(1);
    let mut grads: Vec<Vec<Option<FactorGradients>>> = (moe.experts.iter())
        .map(|mlp| mlp.named().into_iter().map(|(_, l)| zeros(l)).collect())
        .collect();
    let mut dxs = Vec::with_capacity(tape.experts.len());
    for ((e, expert_tape), (_, range)) in tape.experts.into_iter().zip(routes.groups()) {
        let dye = dexperts.clone().narrow(0, range.start, range.len());
        let (dx, (gate_up, down)) = mlp_backward(&moe.experts[e], expert_tape, dye);
        dxs.push(dx);
        grads[e] = gate_up.into_iter().chain([down]).collect();
    }
    let dx = dy.zeros_like().select_assign(
        0,
        routes.tokens.clone(),
        Tensor::cat(dxs, 0),
        IndexingUpdateOp::Add,
    );
    let dweights = Tensor::<1>::zeros([n * k], &dy.device())
        .select_assign(0, routes.pairs.clone(), dpair, IndexingUpdateOp::Add)
        .reshape([n, k]);
    let mut dlogits = routing_backward(moe.routing, &routes, dweights); // [n, E]
    if let Some(dprobs) = router_dprobs {
        // The softmax over every expert: dz = p ⊙ (dp − Σ p·dp).
        let probs = routes.expert_probs(moe.routing);
        let inner = (probs.clone() * dprobs.clone()).sum_dim(1);
        dlogits = dlogits + probs * (dprobs - inner);
    }
    let mut dx = dx + dlogits.matmul(moe.gate.clone());
    let mut grads: Vec<Option<FactorGradients>> = grads.into_iter().flatten().collect();
    if let (Some(shared), Some(tape)) = (&moe.shared, tape.shared) {
        // y = σ(z)·s: ds = dy·σ(z), dz = Σ_hidden(dy·s)·σ(z)(1 − σ(z)).
        let weight = tape.weight;
        let dz =
            (dy.clone() * tape.output).sum_dim(1) * weight.clone() * (weight.clone().neg() + 1.0);
        let (dx_mlp, (gate_up, down)) = mlp_backward(&shared.mlp, tape.mlp, dy * weight);
        let (dx_gate, gate) = linear::backward(&shared.gate, tape.gate, dz);
        dx = dx + dx_mlp + dx_gate;
        grads.extend(gate_up);
        grads.extend([down, gate]);
    }
    (dx, grads)
}

/// The routing weights' gradient [n, k] → the router logits' [n, E].
/// Top-k of a softmax p over all experts: the kept t = p[chosen] (renormalised, w = t / Σt, so
/// dt = (dw − Σ dw·w) / Σt), scattered back to dp, then the softmax's dz = p ⊙ (dp − Σ p·dp).
/// Softmax over the top-k logits (GraniteMoE): dz_top = w ⊙ (dw − Σ w·dw), scattered back.
fn routing_backward(routing: Routing, routes: &Routes, dweights: Tensor<2>) -> Tensor<2> {
    let renormalize = match routing {
        Routing::SoftmaxTopK { renormalize } => renormalize,
        Routing::TopKSoftmax => {
            let w = routes.weights.clone();
            let inner = (dweights.clone() * w.clone()).sum_dim(1);
            let dtop = w * (dweights - inner);
            return (routes.probs.zeros_like()).scatter(
                1,
                routes.chosen.clone(),
                dtop,
                IndexingUpdateOp::Add,
            );
        }
    };
    let probs = routes.probs.clone();
    let dtop = match renormalize {
        true => {
            let total = probs.clone().gather(1, routes.chosen.clone()).sum_dim(1); // [n, 1]
            let inner = (dweights.clone() * routes.weights.clone()).sum_dim(1);
            (dweights - inner) / total
        }
        false => dweights,
    };
    let dprobs = probs
        .zeros_like()
        .scatter(1, routes.chosen.clone(), dtop, IndexingUpdateOp::Add);
    let inner = (probs.clone() * dprobs.clone()).sum_dim(1);
    probs * (dprobs - inner)
}

/// Zero gradients for `linear`'s adapter (an expert that got no token this pass).
fn zeros(linear: &Linear) -> Option<FactorGradients> {
    let lora = linear.lora.as_ref()?;
    let mut grads = vec![lora.a.zeros_like(), lora.b.zeros_like()];
    grads.extend(lora.magnitude.as_ref().map(Tensor::zeros_like));
    Some(grads)
}
