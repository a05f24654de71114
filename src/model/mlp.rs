//! The gated feed-forward block of Llama-family decoders: down(act(gate(x)) ⊙ up(x)), SwiGLU
//! with SiLU. Source: transformers `models/llama/modeling_llama.py` (`LlamaMLP`).

use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::linear::Linear;

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    /// x: [b, s, hidden] → same; down(silu(gate(x)) ⊙ up(x)).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}
