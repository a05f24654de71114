//! The gated feed-forward block of Llama-family decoders: down(act(gate(x)) ⊙ up(x)), SwiGLU
//! with SiLU, GeGLU with GELU (Gemma's tanh approximation, or exact).
//! Source: transformers `models/llama/modeling_llama.py` (`LlamaMLP`), `activations.py`.

use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, silu};

use super::linear::Linear;

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
}

/// √(2/π), and the cubic term's coefficient of the tanh approximation of GELU.
pub const GELU_TANH: (f64, f64) = (0.797_884_560_802_865_4, 0.044_715);

/// ½x(1 + tanh(√(2/π)(x + 0.044715x³))), as torch's `gelu(approximate="tanh")`.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let (k, c) = GELU_TANH;
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(c)).mul_scalar(k);
    x.mul_scalar(0.5) * (inner.tanh() + 1.0)
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    pub activation: Activation,
}

impl Mlp {
    /// x: [b, s, hidden] → same; down(act(gate(x)) ⊙ up(x)).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.activation.apply(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
