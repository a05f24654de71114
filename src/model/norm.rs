//! The normalisations the architectures share: RMSNorm (decoders) and LayerNorm (BERT), each
//! over the last dimension and in f32, as transformers computes them.

use burn::tensor::Tensor;

/// RMSNorm: w · x / √(mean(x²) + ε), computed in f32 as transformers does.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// [hidden]
    pub weight: Tensor<1>,
    pub eps: f64,
}

impl RmsNorm {
    /// x: [batch, seq, hidden] → same.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let variance = x.clone().powi_scalar(2).mean_dim(2); // [b, s, 1]
        let normed = x * (variance + self.eps).sqrt().recip().expand([b, s, d]);
        normed * self.weight.clone().reshape([1, 1, d]).expand([b, s, d])
    }
}

/// LayerNorm: (x − mean) / √(var + ε) · w + b over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub eps: f64,
}

impl LayerNorm {
    /// x: [b, s, h] → same.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let centred = x.clone() - x.mean_dim(2).expand([b, s, h]);
        let var = centred.clone().powi_scalar(2).mean_dim(2); // [b, s, 1], biased as torch
        let normed = centred * (var + self.eps).sqrt().recip().expand([b, s, h]);
        normed * self.weight.clone().reshape([1, 1, h]).expand([b, s, h])
            + self.bias.clone().reshape([1, 1, h]).expand([b, s, h])
    }
}
