//! Mixture-of-experts feed-forward layers (Qwen3-MoE, Qwen2-MoE with its shared expert, Mixtral,
//! GraniteMoE, OLMoE): a frozen router picks each token's top k experts, and the layer's output
//! is the routing-weighted sum of those experts' gated MLPs. Tokens are grouped by expert, so each expert runs one product over just the tokens
//! routed to it — the base product and its adapter's `x·Aᵀ·Bᵀ` — and no per-expert ΔW is ever
//! built. Each expert is an ordinary [`Mlp`] of [`Linear`]s named as the per-expert checkpoint
//! names them (`mlp.experts.{e}.gate_proj`, Mixtral's `block_sparse_moe.experts.{e}.w1`), so
//! adapters, targets and exports treat experts like any other linear layer; 3-D checkpoints are
//! split into those experts at load. Knows nothing of training (`train::derived::moe`).
//! Source: transformers `models/qwen3_moe/modeling_qwen3_moe.py` (`Qwen3MoeTopKRouter`,
//! `Qwen3MoeExperts`), `qwen2_moe`, `mixtral`, `granitemoe`, `olmoe`.

use std::path::Path;

use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Deserialize;

use super::linear::{Linear, take2};
use super::mlp::{Activation, GateUpProjection, LLAMA_PROJECTIONS, Mlp, ProjectionNames};
use crate::transfer;
use crate::weights::WeightsError;
use crate::weights::host::HostTensors;
use crate::weights::safetensors::{StFile, read_index};

/// How router logits become each token's experts and weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// A softmax over every expert (in f32), the k largest probabilities kept, renormalised to
    /// sum to 1 when `renormalize` (`norm_topk_prob`).
    SoftmaxTopK { renormalize: bool },
    /// The k largest logits, then a softmax over just those (GraniteMoE).
    TopKSoftmax,
}

/// How a checkpoint stores its experts; the model keeps one [`Mlp`] per expert either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertLayout {
    /// `mlp.experts.{e}.gate_proj` / `up_proj` / `down_proj` (what transformers 5 saves).
    PerExpert,
    /// transformers 5's in-memory form: `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first)
    /// and `mlp.experts.down_proj` [E, H, I]. Each expert's gate and up stay one linear
    /// (`mlp.experts.{e}.gate_up_proj`), as PEFT's `target_parameters` adapts them.
    Fused,
    /// GraniteMoE's checkpoints: the same 3-D tensors as `block_sparse_moe.input_linear.weight`
    /// and `block_sparse_moe.output_linear.weight`, the router `block_sparse_moe.router.layer`;
    /// held as `Fused` is.
    GraniteFused,
}

/// The mixture-of-experts part of a decoder's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts per token (`num_experts_per_tok`).
    pub top_k: usize,
    /// Each expert's intermediate size (`moe_intermediate_size`).
    pub expert_intermediate_size: usize,
    pub routing: Routing,
    /// Qwen2-MoE's shared expert: a gated MLP of this width every token passes through, scaled
    /// by sigmoid(`shared_expert_gate`(x)).
    pub shared_expert_intermediate_size: Option<usize>,
    /// One entry per layer: true where the layer's MLP is sparse (`decoder_sparse_step`,
    /// `mlp_only_layers`); the others are dense MLPs of `intermediate_size`.
    pub sparse_layers: Vec<bool>,
    pub layout: ExpertLayout,
    /// The block under each layer: `mlp`, or `block_sparse_moe` (Mixtral's checkpoints).
    pub block: &'static str,
    /// Each expert's gate, up and down projections (Mixtral's `w1`, `w3`, `w2`).
    pub names: ProjectionNames,
}

impl MoeConfig {
    /// Each expert's linear layers with their (in, out) features, in HF module order.
    pub fn expert_modules(&self, hidden: usize) -> Vec<(&'static str, usize, usize)> {
        let i = self.expert_intermediate_size;
        match self.layout {
            ExpertLayout::PerExpert => vec![
                (self.names.gate, hidden, i),
                (self.names.up, hidden, i),
                (self.names.down, i, hidden),
            ],
            ExpertLayout::Fused | ExpertLayout::GraniteFused => {
                vec![("gate_up_proj", hidden, 2 * i), ("down_proj", i, hidden)]
            }
        }
    }
}

/// The mixture-of-experts fields of a config.json, read or refused (each family file sets what
/// its family fixes: Mixtral's routing and names, Qwen2-MoE's shared expert).
#[derive(Debug, Deserialize)]
struct MoeJson {
    num_experts: Option<usize>,
    /// What transformers 5 writes `num_experts` as for Qwen3-MoE.
    num_local_experts: Option<usize>,
    num_experts_per_tok: usize,
    moe_intermediate_size: Option<usize>,
    norm_topk_prob: Option<bool>,
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    output_router_logits: Option<bool>,
    shared_expert_intermediate_size: Option<usize>,
}

impl MoeConfig {
    /// The MoE part of config.json `text` (at `path`) for a model of `layers` layers; experts
    /// are `intermediate_size` wide where the family has no `moe_intermediate_size` (OLMoE),
    /// and `norm_topk_prob` defaults to `renormalize` (both families' class default: false).
    pub fn from_json(
        path: &Path,
        text: &str,
        layers: usize,
        intermediate_size: usize,
        renormalize: bool,
    ) -> Result<Self, WeightsError> {
        let err = |detail: String| WeightsError::format(path, detail);
        let json: MoeJson = serde_json::from_str(text)
            .map_err(|e| err(format!("not a mixture-of-experts config: {e}")))?;
        let num_experts = (json.num_experts.or(json.num_local_experts))
            .ok_or_else(|| err("num_experts is missing".into()))?;
        let step = json.decoder_sparse_step.unwrap_or(1);
        if num_experts == 0 || step == 0 {
            return Err(err(format!(
                "num_experts = {num_experts}, decoder_sparse_step = {step}: a mixture of experts needs both positive (a dense model is a dense family)"
            )));
        }
        let top_k = json.num_experts_per_tok;
        if top_k == 0 || top_k > num_experts {
            return Err(err(format!(
                "num_experts_per_tok = {top_k} of {num_experts} experts: choose 1 to {num_experts}"
            )));
        }
        if json.output_router_logits == Some(true) {
            return Err(err(
                "output_router_logits = true: the router load-balancing loss is the recipe's to turn on here (train.router_aux_loss_coef, as the config's router_aux_loss_coef); set output_router_logits to false".into(),
            ));
        }
        if let Some(&bad) = json.mlp_only_layers.iter().find(|&&l| l >= layers) {
            return Err(err(format!(
                "mlp_only_layers names layer {bad} of a {layers}-layer model"
            )));
        }
        let sparse_layers = (0..layers)
            .map(|l| !json.mlp_only_layers.contains(&l) && (l + 1) % step == 0)
            .collect();
        Ok(Self {
            num_experts,
            top_k,
            expert_intermediate_size: json.moe_intermediate_size.unwrap_or(intermediate_size),
            routing: Routing::SoftmaxTopK {
                renormalize: json.norm_topk_prob.unwrap_or(renormalize),
            },
            shared_expert_intermediate_size: json.shared_expert_intermediate_size,
            sparse_layers,
            layout: ExpertLayout::PerExpert,
            block: "mlp",
            names: LLAMA_PROJECTIONS,
        })
    }
}

impl ExpertLayout {
    /// How the safetensors checkpoint in `dir` stores its experts (read from headers; the
    /// per-expert layout where there are no weights yet).
    pub fn of_checkpoint(dir: &Path) -> Result<Self, WeightsError> {
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<String> = if index.exists() {
            read_index(&index)?.into_keys().collect()
        } else if dir.join("model.safetensors").exists() {
            let file = StFile::open(&dir.join("model.safetensors"))?;
            file.tensors.into_iter().map(|t| t.name).collect()
        } else {
            Vec::new()
        };
        let has = |suffix: &str| names.iter().any(|n| n.ends_with(suffix));
        Ok(if has(".experts.gate_up_proj") {
            Self::Fused
        } else if has(".block_sparse_moe.input_linear.weight") {
            Self::GraniteFused
        } else {
            Self::PerExpert
        })
    }
}

/// A sparse MoE block: router and experts.
#[derive(Debug, Clone)]
pub struct SparseMoe {
    /// The router, [num_experts, hidden] (`mlp.gate.weight`), f32 and never adapted.
    pub gate: Tensor<2>,
    pub experts: Vec<Mlp>,
    pub top_k: usize,
    pub routing: Routing,
    pub shared: Option<SharedExpert>,
    /// Where the block sits in each layer (`MoeConfig::block`).
    pub block: &'static str,
}

/// Qwen2-MoE's shared expert: y += sigmoid(x·gᵀ) · mlp(x) for every token.
#[derive(Debug, Clone)]
pub struct SharedExpert {
    /// `mlp.shared_expert`.
    pub mlp: Mlp,
    /// `mlp.shared_expert_gate`, [1, hidden]: an nn.Linear, so PEFT's `all-linear` adapts it.
    pub gate: Linear,
}

impl SharedExpert {
    /// x: [b, s, hidden] → its share of the block's output, same shape.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let weight = sigmoid(self.gate.forward(x.clone())); // [b, s, 1]
        self.mlp.forward(x) * weight
    }
}

/// One batch's routing: each token's experts and weights, and the (token, slot) pairs grouped
/// by expert.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Router probabilities over every expert, [n, E] (backward's softmax needs them); the
    /// logits themselves for `Routing::TopKSoftmax`.
    pub probs: Tensor<2>,
    /// The chosen experts, [n, k].
    pub chosen: Tensor<2, Int>,
    /// Their routing weights, [n, k].
    pub weights: Tensor<2>,
    /// How many pairs each expert got; the pairs below hold them expert after expert.
    pub counts: Vec<usize>,
    /// The pairs as flat indices token·k + slot, [n·k], sorted by expert (then token).
    pub pairs: Tensor<1, Int>,
    /// The pairs' tokens, [n·k].
    pub tokens: Tensor<1, Int>,
}

impl SparseMoe {
    /// x [n, hidden] → its routes. The chosen experts come to the host (n·k integers) to group
    /// the pairs: the group sizes decide the products' shapes.
    pub fn route(&self, x: Tensor<2>) -> Routes {
        let n = x.dims()[0];
        let (k, experts) = (self.top_k, self.experts.len());
        let device = x.device();
        let logits = x.matmul(self.gate.clone().transpose()); // [n, E]
        let (probs, chosen, weights) = match self.routing {
            Routing::SoftmaxTopK { renormalize } => {
                let probs = softmax(logits, 1);
                let (top, chosen) = probs.clone().topk_with_indices(k, 1); // [n, k]
                let weights = match renormalize {
                    true => top.clone() / top.sum_dim(1),
                    false => top,
                };
                (probs, chosen, weights)
            }
            Routing::TopKSoftmax => {
                let (top, chosen) = logits.clone().topk_with_indices(k, 1); // [n, k]
                (logits, chosen, softmax(top, 1))
            }
        };
        let picked: Vec<i64> = transfer::download(chosen.clone())
            .and_then(|d| (d.convert::<i64>().try_into_vec::<i64>()).map_err(|e| format!("{e:?}")))
            .expect("the device gives back the routes it computed");
        let mut counts = vec![0usize; experts];
        for &e in &picked {
            counts[e as usize] += 1;
        }
        let mut starts: Vec<usize> = counts
            .iter()
            .scan(0, |acc, &c| {
                let start = *acc;
                *acc += c;
                Some(start)
            })
            .collect();
        let mut pairs = vec![0i64; n * k];
        for (pair, &e) in picked.iter().enumerate() {
            pairs[starts[e as usize]] = pair as i64;
            starts[e as usize] += 1;
        }
        let tokens: Vec<i64> = pairs.iter().map(|&p| p / k as i64).collect();
        let upload = |v: Vec<i64>| transfer::upload::<1, Int>(TensorData::new(v, [n * k]), &device);
        Routes {
            probs,
            chosen,
            weights,
            counts,
            pairs: upload(pairs),
            tokens: upload(tokens),
        }
    }

    /// x: [b, s, hidden] → same; Σ over each token's k experts of weight · expert(x).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_routed(x).0
    }

    /// [`Self::forward`], and the routes it took.
    pub fn forward_routed(&self, x: Tensor<3>) -> (Tensor<3>, Routes) {
        let [b, s, h] = x.dims();
        let x = x.reshape([b * s, h]);
        let routes = self.route(x.clone());
        let gathered = x.clone().select(0, routes.tokens.clone()); // [n·k, h], by expert
        let mut outputs = Vec::with_capacity(self.experts.len());
        for (e, range) in routes.groups() {
            let xe = gathered.clone().narrow(0, range.start, range.len());
            let ye = self.experts[e].forward(xe.reshape([1, range.len(), h]));
            outputs.push(ye.reshape([range.len(), h]));
        }
        let weighted = Tensor::cat(outputs, 0) * routes.pair_weights().unsqueeze_dim(1);
        let y = x.zeros_like().select_assign(
            0,
            routes.tokens.clone(),
            weighted,
            burn::tensor::IndexingUpdateOp::Add,
        );
        let y = y.reshape([b, s, h]);
        let y = match &self.shared {
            Some(shared) => y + shared.forward(x.reshape([b, s, h])),
            None => y,
        };
        (y, routes)
    }
}

/// The router load-balancing loss (`train.router_aux_loss_coef`) as transformers'
/// `load_balancing_loss_func` computes it over a batch: with T_e the (token, slot) pairs routed
/// to expert e and P_e the sum of its router probabilities, both over every sparse layer and
/// the tokens the attention mask keeps, and R those tokens times the sparse layers,
/// loss = E · Σ_e (T_e / R) · (P_e / R). T carries no gradient (the choice of experts does not);
/// P does, through each layer's softmax.
#[derive(Debug, Clone)]
pub struct RouterLoad {
    /// T, [E].
    pub pairs: Tensor<1>,
    /// P, [E].
    pub probs: Tensor<1>,
    /// R.
    pub rows: f64,
}

impl RouterLoad {
    /// The loss, [1].
    pub fn loss(&self) -> Tensor<1> {
        let experts = self.pairs.dims()[0] as f64;
        (self.pairs.clone() * self.probs.clone())
            .sum()
            .mul_scalar(experts / (self.rows * self.rows))
    }
}

/// Two sets of layers' statistics together.
impl std::ops::Add for RouterLoad {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            pairs: self.pairs + other.pairs,
            probs: self.probs + other.probs,
            rows: self.rows + other.rows,
        }
    }
}

/// A batch's attention mask as one weight per token, [b·s] (1 kept, 0 padding), and how many
/// it keeps: the tokens the router load-balancing loss counts.
pub fn token_mask(attention_mask: &[Vec<u8>], device: &Device) -> (Tensor<1>, usize) {
    // (A packed row numbers its examples 1, 2, …: each is a kept token.)
    let flat: Vec<f32> = (attention_mask.iter().flatten())
        .map(|&m| if m == 0 { 0.0 } else { 1.0 })
        .collect();
    let kept = flat.iter().filter(|&&m| m != 0.0).count();
    let n = flat.len();
    (transfer::upload(TensorData::new(flat, [n]), device), kept)
}

impl Routes {
    /// The router's probabilities over every expert, [n, E] (for `Routing::TopKSoftmax`, whose
    /// `probs` hold the logits, their softmax).
    pub fn expert_probs(&self, routing: Routing) -> Tensor<2> {
        match routing {
            Routing::SoftmaxTopK { .. } => self.probs.clone(),
            Routing::TopKSoftmax => softmax(self.probs.clone(), 1),
        }
    }

    /// This layer's part of the [`RouterLoad`] over the tokens `mask` keeps ([n]; `kept` of
    /// them).
    pub fn load(&self, routing: Routing, mask: &Tensor<1>, kept: usize) -> RouterLoad {
        let [n, k] = self.chosen.dims();
        let probs = self.expert_probs(routing);
        let experts = probs.dims()[1];
        let pair_mask = mask
            .clone()
            .unsqueeze_dim::<2>(1)
            .repeat_dim(1, k)
            .reshape([n * k]);
        let pairs = Tensor::<1>::zeros([experts], &mask.device()).scatter(
            0,
            self.chosen.clone().reshape([n * k]),
            pair_mask,
            burn::tensor::IndexingUpdateOp::Add,
        );
        let probs = (probs * mask.clone().unsqueeze_dim(1))
            .sum_dim(0)
            .reshape([experts]);
        RouterLoad {
            pairs,
            probs,
            rows: kept as f64,
        }
    }

    /// Each expert that got pairs, with its range in the sorted pairs.
    pub fn groups(&self) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
        let mut start = 0;
        self.counts.iter().enumerate().filter_map(move |(e, &c)| {
            let range = start..start + c;
            start += c;
            (c > 0).then_some((e, range))
        })
    }

    /// The routing weight of each sorted pair, [n·k].
    pub fn pair_weights(&self) -> Tensor<1> {
        let [n, k] = self.weights.dims();
        self.weights
            .clone()
            .reshape([n * k])
            .select(0, self.pairs.clone())
    }
}

impl SparseMoe {
    /// The router and experts under `at` (`model.layers.{i}.mlp`), in `config`'s layout; the
    /// fused layout's 3-D tensors are split into per-expert matrices first.
    pub fn load(
        w: &mut HostTensors,
        at: &str,
        config: &MoeConfig,
        hidden: usize,
        activation: Activation,
        device: &Device,
    ) -> Result<Self, WeightsError> {
        let (n, i) = (config.num_experts, config.expert_intermediate_size);
        let fused = match config.layout {
            ExpertLayout::PerExpert => None,
            ExpertLayout::Fused => Some(["experts.gate_up_proj", "experts.down_proj"]),
            ExpertLayout::GraniteFused => Some(["input_linear.weight", "output_linear.weight"]),
        };
        if let Some([gate_up, down]) = fused {
            let part = |name: &'static str| move |e| format!("{at}.experts.{e}.{name}.weight");
            // A GraniteMoE GGUF's experts kept in blocks come one matrix per expert already.
            for (stacked, name, shape) in [
                (gate_up, "gate_up_proj", [n, 2 * i, hidden]),
                (down, "down_proj", [n, hidden, i]),
            ] {
                if !w.contains(&part(name)(0)) {
                    w.unstack(&format!("{at}.{stacked}"), shape, part(name))?;
                }
            }
        }
        // The router: `gate` (Qwen, OLMoE, Mixtral), GraniteMoE's `router.layer` in its
        // checkpoints and `router` in transformers 5's.
        let router = ["gate.weight", "router.layer.weight", "router.weight"]
            .map(|name| format!("{at}.{name}"))
            .into_iter()
            .find(|name| w.contains(name))
            .unwrap_or_else(|| format!("{at}.gate.weight"));
        let gate = take2(w, &router, [n, hidden], device)?;
        let mut experts = Vec::with_capacity(n);
        for e in 0..n {
            let linear = |w: &mut HostTensors, m: &str, shape: [usize; 2]| {
                Linear::load(w, &format!("{at}.experts.{e}.{m}"), shape, false, device)
            };
            let names = config.names;
            let gate_up = match config.layout {
                ExpertLayout::PerExpert => GateUpProjection::Separate {
                    gate_proj: linear(w, names.gate, [i, hidden])?,
                    up_proj: linear(w, names.up, [i, hidden])?,
                },
                ExpertLayout::Fused | ExpertLayout::GraniteFused => GateUpProjection::Fused {
                    gate_up_proj: linear(w, "gate_up_proj", [2 * i, hidden])?,
                },
            };
            experts.push(Mlp {
                gate_up,
                down_proj: linear(w, names.down, [hidden, i])?,
                activation,
                names,
            });
        }
        let shared = match config.shared_expert_intermediate_size {
            Some(width) => {
                let linear = |w: &mut HostTensors, m: &str, shape: [usize; 2]| {
                    Linear::load(w, &format!("{at}.{m}"), shape, false, device)
                };
                Some(SharedExpert {
                    mlp: Mlp {
                        gate_up: GateUpProjection::Separate {
                            gate_proj: linear(w, "shared_expert.gate_proj", [width, hidden])?,
                            up_proj: linear(w, "shared_expert.up_proj", [width, hidden])?,
                        },
                        down_proj: linear(w, "shared_expert.down_proj", [hidden, width])?,
                        activation,
                        names: LLAMA_PROJECTIONS,
                    },
                    gate: linear(w, "shared_expert_gate", [1, hidden])?,
                })
            }
            None => None,
        };
        Ok(Self {
            gate,
            experts,
            top_k: config.top_k,
            routing: config.routing,
            shared,
            block: config.block,
        })
    }
}
