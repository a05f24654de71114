//! The gated feed-forward block of Llama-family decoders: down(act(gate(x)) ⊙ up(x)), SwiGLU
//! with SiLU, GeGLU with GELU (Gemma's tanh approximation, or exact); gate and up from two
//! linear layers or Phi-3's fused one.
//! Source: transformers `models/llama/modeling_llama.py` (`LlamaMLP`), `activations.py`.

use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, silu};

use super::linear::Linear;
use super::moe::{Routes, SparseMoe};
use crate::kernels;

/// The gate's activation, by its transformers name (`hidden_act`, `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// x·σ(x): "silu", "swish".
    Silu,
    /// ½x(1 + tanh(√(2/π)(x + 0.044715x³))): "gelu_pytorch_tanh", "gelu_new", "gelu_fast".
    GeluTanh,
    /// x·Φ(x): "gelu".
    Gelu,
}

impl Activation {
    /// The names accepted, for error messages.
    pub const SUPPORTED: &str =
        "the gated MLP implements silu, swish, gelu, gelu_pytorch_tanh, gelu_new and gelu_fast";

    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::Gelu,
            _ => return None,
        })
    }

    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Silu => silu(x),
            Self::GeluTanh => gelu_tanh(x),
            Self::Gelu => gelu(x),
        }
    }

    /// act(gate) ⊙ up: SwiGLU in one pass on flex (`kernels::silu_gate`).
    pub fn gated<const D: usize>(self, gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
        let fused = match self {
            Self::Silu => kernels::silu_gate(&gate, &up),
            _ => None,
        };
        fused.unwrap_or_else(|| self.apply(gate) * up)
    }
}

/// √(2/π), and the cubic term's coefficient of the tanh approximation of GELU.
pub const GELU_TANH: (f64, f64) = (0.797_884_560_802_865_4, 0.044_715);

/// ½x(1 + tanh(√(2/π)(x + 0.044715x³))), as torch's `gelu(approximate="tanh")`.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let (k, c) = GELU_TANH;
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(c)).mul_scalar(k);
    x.mul_scalar(0.5) * (inner.tanh() + 1.0)
}

/// Where gate and up come from: two linear layers, or one fused `gate_up_proj` (Phi-3) whose
/// output is split [gate | up].
// One per layer: the unused space of the fused variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum GateUpProjection {
    Separate { gate_proj: Linear, up_proj: Linear },
    Fused { gate_up_proj: Linear },
}

impl GateUpProjection {
    /// x [.., hidden] → (gate, up); a fused output is split in halves.
    pub fn forward(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        match self {
            Self::Separate { gate_proj, up_proj } => {
                (gate_proj.forward(x.clone()), up_proj.forward(x))
            }
            Self::Fused { gate_up_proj } => {
                let y = gate_up_proj.forward(x);
                let width = y.dims()[2] / 2;
                (y.clone().narrow(2, 0, width), y.narrow(2, width, width))
            }
        }
    }

    /// The linear layers with their names in the MLP (`names`' gate and up), in HF module
    /// order.
    pub fn named(&self, names: ProjectionNames) -> Vec<(&'static str, &Linear)> {
        match self {
            Self::Separate { gate_proj, up_proj } => {
                vec![(names.gate, gate_proj), (names.up, up_proj)]
            }
            Self::Fused { gate_up_proj } => vec![("gate_up_proj", gate_up_proj)],
        }
    }

    pub fn named_mut(&mut self, names: ProjectionNames) -> Vec<(&'static str, &mut Linear)> {
        match self {
            Self::Separate { gate_proj, up_proj } => {
                vec![(names.gate, gate_proj), (names.up, up_proj)]
            }
            Self::Fused { gate_up_proj } => vec![("gate_up_proj", gate_up_proj)],
        }
    }
}

/// What a checkpoint calls an MLP's gate, up and down projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionNames {
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// Llama's names (and every family's dense MLP here).
pub const LLAMA_PROJECTIONS: ProjectionNames = ProjectionNames {
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
};

/// Mixtral's experts: w1 (gate), w3 (up), w2 (down).
pub const MIXTRAL_PROJECTIONS: ProjectionNames = ProjectionNames {
    gate: "w1",
    up: "w3",
    down: "w2",
};

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_up: GateUpProjection,
    pub down_proj: Linear,
    pub activation: Activation,
    pub names: ProjectionNames,
}

impl Mlp {
    /// x: [b, s, hidden] → same; down(act(gate(x)) ⊙ up(x)).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = self.gate_up.forward(x);
        self.down_proj.forward(self.activation.gated(gate, up))
    }

    /// The linear layers with their names in the MLP, in HF module order.
    pub fn named(&self) -> Vec<(&'static str, &Linear)> {
        let mut all = self.gate_up.named(self.names);
        all.push((self.names.down, &self.down_proj));
        all
    }

    pub fn named_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let names = self.names;
        let mut all = self.gate_up.named_mut(names);
        all.push((names.down, &mut self.down_proj));
        all
    }
}

/// A decoder layer's feed-forward block: one gated MLP, or a mixture of experts.
// One per layer: the size difference of the variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    /// x: [b, s, hidden] → same.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_routed(x).0
    }

    /// [`Self::forward`], and a sparse block's routes.
    pub fn forward_routed(&self, x: Tensor<3>) -> (Tensor<3>, Option<Routes>) {
        match self {
            Self::Dense(mlp) => (mlp.forward(x), None),
            Self::Sparse(moe) => {
                let (y, routes) = moe.forward_routed(x);
                (y, Some(routes))
            }
        }
    }

    /// The linear layers with their paths inside the layer (`mlp.gate_proj`,
    /// `mlp.experts.3.down_proj`), in HF module order; a router is not a linear layer here.
    pub fn named(&self) -> Vec<(String, &Linear)> {
        match self {
            Self::Dense(mlp) => prefixed("mlp", mlp.named()),
            Self::Sparse(moe) => {
                let block = moe.block;
                let mut all: Vec<(String, &Linear)> = (moe.experts.iter().enumerate())
                    .flat_map(|(e, mlp)| prefixed(&format!("{block}.experts.{e}"), mlp.named()))
                    .collect();
                if let Some(shared) = &moe.shared {
                    all.extend(prefixed("mlp.shared_expert", shared.mlp.named()));
                    all.push(("mlp.shared_expert_gate".into(), &shared.gate));
                }
                all
            }
        }
    }

    pub fn named_mut(&mut self) -> Vec<(String, &mut Linear)> {
        match self {
            Self::Dense(mlp) => prefixed("mlp", mlp.named_mut()),
            Self::Sparse(moe) => {
                let block = moe.block;
                let mut all: Vec<(String, &mut Linear)> = (moe.experts.iter_mut().enumerate())
                    .flat_map(|(e, mlp)| prefixed(&format!("{block}.experts.{e}"), mlp.named_mut()))
                    .collect();
                if let Some(shared) = &mut moe.shared {
                    all.extend(prefixed("mlp.shared_expert", shared.mlp.named_mut()));
                    all.push(("mlp.shared_expert_gate".into(), &mut shared.gate));
                }
                all
            }
        }
    }
}

fn prefixed<T>(at: &str, named: Vec<(&'static str, T)>) -> Vec<(String, T)> {
    named
        .into_iter()
        .map(|(n, l)| (format!("{at}.{n}"), l))
        .collect()
}
