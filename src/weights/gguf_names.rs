//! GGUF ↔ Hugging Face tensor names as llama.cpp's converter writes them per architecture (Phi-3's
//! fused `ffn_up`, Gemma's `ffn_norm` before the MLP and norms stored as 1 + w), and the row
//! permutation llama.cpp's converter applies to `llama` Q/K weights (it reorders each head's rows
//! for interleaved RoPE; HF checkpoints use rotate_half). Loading un-permutes, so the model and
//! its adapters live in the HF basis; the GGUF LoRA exporter permutes back.

use super::WeightsError;
use super::gguf::{GgufFile, GgufTensor};

/// A GGUF tensor as an HF checkpoint holds it.
#[derive(Debug, Clone)]
pub struct HfTensor {
    pub name: String,
    /// PyTorch order, outermost first: ggml dims reversed.
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Dequantises `tensor` and puts it in the HF basis: HF name, PyTorch shape, for `llama` files
/// Q/K rows un-permuted, for Gemma files the norms' 1 + w back to w (exact: s − 1 has no
/// rounding for s in [½, 2]). None for tensors HF does not store (`rope_freqs`).
pub fn hf_tensor(file: &GgufFile, tensor: &GgufTensor) -> Result<Option<HfTensor>, WeightsError> {
    let Some(name) = hf_name_in(file, &tensor.name) else {
        return Ok(None);
    };
    let shape: Vec<usize> = tensor.dims.iter().rev().map(|&d| d as usize).collect();
    let mut values = file.dequantize(tensor)?;
    if is_gemma(file) && tensor.name.ends_with("norm.weight") {
        values.iter_mut().for_each(|v| *v -= 1.0);
    }
    if let Some(h) = permuted_with(file, tensor)? {
        let cols = shape[1..].iter().product();
        values = unpermute_rows(&values, shape[0], cols, h).map_err(|e| {
            WeightsError::format(&file.path, format!("tensor `{}`: {e}", tensor.name))
        })?;
    }
    Ok(Some(HfTensor {
        name,
        shape,
        values,
    }))
}

/// The head count `tensor`'s rows were permuted with: Q/K of a `llama` file; None otherwise.
pub fn permuted_with(file: &GgufFile, tensor: &GgufTensor) -> Result<Option<usize>, WeightsError> {
    let arch = file
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    // Granite's converters (GraniteMoE's too) are Llama's, permutation included.
    if !matches!(arch, "llama" | "granite" | "granitemoe") {
        return Ok(None);
    }
    let head_count = |key: &str| {
        file.get(&format!("{arch}.attention.{key}"))
            .and_then(|v| v.as_u64())
            .ok_or_else(|| {
                WeightsError::format(
                    &file.path,
                    format!("{arch}.attention.{key} is missing; cannot un-permute Q/K"),
                )
            })
    };
    let (heads, kv_heads) = (
        head_count("head_count")? as usize,
        head_count("head_count_kv")? as usize,
    );
    Ok(permuted_heads(&tensor.name, heads, kv_heads))
}

/// Gemma 2 and 3 files: sandwich norms, stored as 1 + w.
fn is_gemma(file: &GgufFile) -> bool {
    let arch = file.get("general.architecture").and_then(|v| v.as_str());
    matches!(arch, Some("gemma2" | "gemma3"))
}

/// [`hf_name`] for a tensor of `file`: `phi3` files hold Phi-3's fused gate and up projection
/// in `ffn_up`; in Gemma files `ffn_norm` is the norm before the MLP.
pub fn hf_name_in(file: &GgufFile, gguf: &str) -> Option<String> {
    let name = hf_name(gguf)?;
    let arch = file.get("general.architecture").and_then(|v| v.as_str());
    match arch {
        Some("phi3") => Some(name.replace(".mlp.up_proj.", ".mlp.gate_up_proj.")),
        // Mixtral is a `llama` file with experts; its checkpoints name them w1 (gate), w3 (up),
        // w2 (down) under `block_sparse_moe`.
        Some("llama") if name.contains(".mlp.gate.") || name.contains(".mlp.experts.") => Some(
            name.replace(".mlp.", ".block_sparse_moe.")
                .replace(".experts.gate_proj.", ".experts.w1.")
                .replace(".experts.up_proj.", ".experts.w3.")
                .replace(".experts.down_proj.", ".experts.w2."),
        ),
        // GraniteMoE's router is `block_sparse_moe.router.layer`; its experts are stacked under
        // `block_sparse_moe` (host.rs joins gate and up back into `input_linear`).
        Some("granitemoe") if name.contains(".mlp.gate.") || name.contains(".mlp.experts.") => {
            Some(
                name.replace(".mlp.gate.", ".block_sparse_moe.router.layer.")
                    .replace(".mlp.experts.", ".block_sparse_moe.experts."),
            )
        }
        Some("gemma2" | "gemma3") if gguf.contains(".ffn_norm.") => {
            Some(name.replace(".post_attention_layernorm.", ".pre_feedforward_layernorm."))
        }
        _ => Some(name),
    }
}

/// The HF name of a GGUF tensor, or None when the tensor has no HF counterpart (`rope_freqs`,
/// which HF recomputes from config) or the name is not one these architectures use.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    if !matches!(param, "weight" | "bias") {
        return None;
    }
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        // Mixtures of experts: the router, the experts stacked [E, out, in] (split per expert
        // by `expert_slices`), Qwen2-MoE's shared expert and its gate.
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate_exps" => "mlp.experts.gate_proj",
        "ffn_up_exps" => "mlp.experts.up_proj",
        "ffn_down_exps" => "mlp.experts.down_proj",
        "ffn_gate_shexp" => "mlp.shared_expert.gate_proj",
        "ffn_up_shexp" => "mlp.shared_expert.up_proj",
        "ffn_down_shexp" => "mlp.shared_expert.down_proj",
        "ffn_gate_inp_shexp" => "mlp.shared_expert_gate",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{param}"))
}

/// A stacked expert tensor's per-expert names, as a per-expert HF checkpoint holds them
/// (`….mlp.experts.gate_proj.weight` → `….mlp.experts.{e}.gate_proj.weight`); None for any
/// other tensor. llama.cpp stores each expert's [out, in] matrix one after another.
pub fn expert_slices(hf: &str, experts: usize) -> Option<Vec<String>> {
    let (block, projection) = hf.strip_suffix(".weight")?.rsplit_once(".experts.")?;
    if projection.contains('.') {
        return None;
    }
    Some(
        (0..experts)
            .map(|e| format!("{block}.experts.{e}.{projection}.weight"))
            .collect(),
    )
}

/// The GGUF module name of an HF decoder-layer module path
/// (`model.layers.3.self_attn.q_proj` → `blk.3.attn_q`), as llama.cpp's converter names it;
/// Phi-3's fused `qkv_proj` is `attn_qkv` and its `gate_up_proj` `ffn_up`.
pub fn gguf_module(hf_path: &str) -> Option<String> {
    let rest = hf_path.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let name = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "self_attn.qkv_proj" => "attn_qkv",
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}"))
}

/// The GGUF module that stacks an expert's projection, and the expert's index
/// (`model.layers.3.mlp.experts.5.up_proj` → (`blk.3.ffn_up_exps`, 5); Mixtral's
/// `block_sparse_moe.experts.5.w3` the same).
pub fn gguf_expert_module(hf_path: &str) -> Option<(String, usize)> {
    let rest = hf_path.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let experts = module
        .strip_prefix("mlp.experts.")
        .or_else(|| module.strip_prefix("block_sparse_moe.experts."))?;
    let (expert, projection) = experts.split_once('.')?;
    let name = match projection {
        "gate_proj" | "w1" => "ffn_gate_exps",
        "up_proj" | "w3" => "ffn_up_exps",
        "down_proj" | "w2" => "ffn_down_exps",
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}"), expert.parse().ok()?))
}

/// Which head count a `llama`-arch tensor was permuted with: Q by the attention heads, K by the
/// key/value heads; other tensors are stored as HF stores them.
pub fn permuted_heads(gguf: &str, n_heads: usize, n_kv_heads: usize) -> Option<usize> {
    let module = gguf.strip_prefix("blk.")?.split_once('.')?.1;
    match module {
        "attn_q.weight" | "attn_q.bias" => Some(n_heads),
        "attn_k.weight" | "attn_k.bias" => Some(n_kv_heads),
        _ => None,
    }
}

/// Undoes llama.cpp's Q/K permutation on a row-major [rows, cols] matrix (a bias: cols = 1).
/// Within each head of 2·d rows, GGUF row 2i + j holds HF row j·d + i (as transformers'
/// `reverse_permute_weights` in integrations/ggml.py).
pub fn unpermute_rows<T: Copy + Default>(
    values: &[T],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Result<Vec<T>, String> {
    move_rows(values, rows, cols, heads, |d, i, j| (2 * i + j, j * d + i))
}

/// llama.cpp's permutation (the inverse of [`unpermute_rows`]), for writing GGUF.
pub fn permute_rows(
    values: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
) -> Result<Vec<f32>, String> {
    move_rows(values, rows, cols, heads, |d, i, j| (j * d + i, 2 * i + j))
}

/// Copies row `from` to row `to` within each head, where `(from, to) = map(d, i, j)`.
fn move_rows<T: Copy + Default>(
    values: &[T],
    rows: usize,
    cols: usize,
    heads: usize,
    map: impl Fn(usize, usize, usize) -> (usize, usize),
) -> Result<Vec<T>, String> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) || values.len() != rows * cols {
        return Err(format!(
            "cannot split {rows} rows × {cols} into {heads} heads of even size"
        ));
    }
    let d = rows / heads / 2;
    let mut out = vec![T::default(); values.len()];
    for h in 0..heads {
        let base = h * 2 * d;
        for i in 0..d {
            for j in 0..2 {
                let (from, to) = map(d, i, j);
                let (from, to) = ((base + from) * cols, (base + to) * cols);
                out[to..to + cols].copy_from_slice(&values[from..from + cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name("blk.12.attn_k.bias").unwrap(),
            "model.layers.12.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight").unwrap(),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.1.ffn_gate_exps.weight").unwrap(),
            "model.layers.1.mlp.experts.gate_proj.weight"
        );
        assert_eq!(
            expert_slices("model.layers.1.mlp.experts.gate_proj.weight", 2).unwrap(),
            [
                "model.layers.1.mlp.experts.0.gate_proj.weight",
                "model.layers.1.mlp.experts.1.gate_proj.weight"
            ]
        );
        assert_eq!(expert_slices("model.layers.1.mlp.gate.weight", 2), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn permute_then_unpermute_is_identity_and_moves_rows() {
        // 2 heads × 2·3 rows, 2 columns; row r holds [r, r].
        let rows = 12;
        let values: Vec<f32> = (0..rows).flat_map(|r| [r as f32, r as f32]).collect();
        let hf = unpermute_rows(&values, rows, 2, 2).unwrap();
        // Head 0, d = 3: HF rows 0..3 come from GGUF rows 0, 2, 4; HF rows 3..6 from 1, 3, 5.
        let firsts: Vec<f32> = hf.chunks(2).map(|r| r[0]).collect();
        assert_eq!(firsts, [0., 2., 4., 1., 3., 5., 6., 8., 10., 7., 9., 11.]);
        assert_eq!(permute_rows(&hf, rows, 2, 2).unwrap(), values);
    }

    #[test]
    fn odd_head_split_is_an_error() {
        assert!(unpermute_rows(&[0.0; 10], 5, 2, 2).is_err());
        assert!(unpermute_rows(&[0.0; 8], 4, 2, 0).is_err());
    }
}
