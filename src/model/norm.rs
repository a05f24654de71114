//! The normalisations the architectures share: RMSNorm (decoders) and LayerNorm (BERT), each
//! over the last dimension and in f32, as transformers computes them. Each works on rows
//! ([`RmsNorm::forward_rows`]); the hand-derived step's backward (`train::derived::ops`) reuses
//! the same pieces.

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
        self.forward_rows(x.reshape([b * s, d])).reshape([b, s, d])
    }

    /// x: [rows, d] → same.
    pub fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, d] = x.dims();
        let r = self.inverse_rms(x.clone()).expand([n, d]);
        x * r * self.weight.clone().reshape([1, d]).expand([n, d])
    }

    /// 1/√(mean(x²) + ε) per row of x [rows, d] → [rows, 1].
    pub fn inverse_rms(&self, x: Tensor<2>) -> Tensor<2> {
        (x.powi_scalar(2).mean_dim(1) + self.eps).sqrt().recip()
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
        self.forward_rows(x.reshape([b * s, h])).reshape([b, s, h])
    }

    /// x: [rows, h] → same.
    pub fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, h] = x.dims();
        let (normed, _) = self.standardise(x);
        normed * self.weight.clone().reshape([1, h]).expand([n, h])
            + self.bias.clone().reshape([1, h]).expand([n, h])
    }

    /// x̂ = (x − mean)·r per row of x [rows, h] and r = 1/√(var + ε) (biased variance, as
    /// torch), both [rows, h].
    pub fn standardise(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let [n, h] = x.dims();
        let centred = x.clone() - x.mean_dim(1).expand([n, h]);
        let r = (centred.clone().powi_scalar(2).mean_dim(1) + self.eps)
            .sqrt()
            .recip()
            .expand([n, h]);
        (centred * r.clone(), r)
    }
}
