//! GraniteMoE's experts as its checkpoints hold them, read from a `granitemoe` GGUF file.
//! llama.cpp's converter splits each layer's `block_sparse_moe.input_linear` [E, 2I, H] into
//! `ffn_gate_exps` and `ffn_up_exps` (the first I rows of each expert are its gate) and writes
//! `output_linear` as `ffn_down_exps`; reading joins gate and up back, so the file gives the
//! tensors a GraniteMoE checkpoint has and every later step (loading, merging) is the HF one.
//! Kept blocks are joined per expert instead (`…experts.{e}.gate_up_proj`), rows moving whole.

use std::collections::BTreeMap;

use super::blocks::BlockMatrix;
use super::gguf::{GgufFile, GgufTensor};
use super::gguf_names::HfTensor;
use super::tensor::HostTensor;

pub fn is_granite_moe(file: &GgufFile) -> bool {
    file.get("general.architecture").and_then(|v| v.as_str()) == Some("granitemoe")
}

/// The tensor holding the other half of `tensor`'s `input_linear` (`ffn_up_exps` for
/// `ffn_gate_exps` and back); None for any other tensor.
pub fn other_half<'a>(file: &'a GgufFile, tensor: &GgufTensor) -> Option<&'a GgufTensor> {
    let name = if tensor.name.contains(".ffn_gate_exps.") {
        tensor.name.replace(".ffn_gate_exps.", ".ffn_up_exps.")
    } else if tensor.name.contains(".ffn_up_exps.") {
        tensor.name.replace(".ffn_up_exps.", ".ffn_gate_exps.")
    } else {
        return None;
    };
    file.tensors.iter().find(|t| t.name == name)
}

/// Each layer's gate or up experts waiting for the other half, by `…block_sparse_moe` stem.
#[derive(Default)]
pub struct ExpertJoin {
    waiting: BTreeMap<String, (bool, HostTensor)>,
}

impl ExpertJoin {
    /// A stacked expert tensor (HF-named `…block_sparse_moe.experts.{gate,up,down}_proj.weight`)
    /// as the checkpoint holds it: down as `output_linear`, gate and up as one `input_linear`
    /// once both have come (nothing until then).
    pub fn join(&mut self, t: HfTensor) -> Result<Option<(String, HostTensor)>, String> {
        let Some((stem, projection)) = t
            .name
            .strip_suffix(".weight")
            .and_then(|n| n.rsplit_once(".experts."))
        else {
            return Err(format!("`{}` is not a stacked expert tensor", t.name));
        };
        let host = HostTensor {
            shape: t.shape.clone(),
            values: t.values,
        };
        let gate = match projection {
            "down_proj" => return Ok(Some((format!("{stem}.output_linear.weight"), host))),
            "gate_proj" => true,
            "up_proj" => false,
            _ => return Err(format!("`{}` is not a GraniteMoE expert tensor", t.name)),
        };
        let Some((other_is_gate, other)) = self.waiting.remove(stem) else {
            self.waiting.insert(stem.to_string(), (gate, host));
            return Ok(None);
        };
        if other_is_gate == gate || other.shape != host.shape || host.shape.len() != 3 {
            return Err(format!(
                "`{stem}`: the experts' gate and up are {:?} and {:?}; expected one each of the same [experts, rows, columns]",
                other.shape, host.shape
            ));
        }
        let (gate, up) = if gate { (host, other) } else { (other, host) };
        let [experts, rows, cols] = [gate.shape[0], gate.shape[1], gate.shape[2]];
        let each = rows * cols;
        let mut values = Vec::with_capacity(2 * gate.values.len());
        for e in 0..experts {
            values.extend_from_slice(&gate.values[e * each..(e + 1) * each]);
            values.extend_from_slice(&up.values[e * each..(e + 1) * each]);
        }
        let shape = vec![experts, 2 * rows, cols];
        Ok(Some((
            format!("{stem}.input_linear.weight"),
            HostTensor { shape, values },
        )))
    }

    /// Fails if a layer's gate came without its up, or the other way round.
    pub fn finish(self) -> Result<(), String> {
        match self.waiting.keys().next() {
            Some(stem) => Err(format!(
                "`{stem}`: the experts' gate (ffn_gate_exps) and up (ffn_up_exps) come together"
            )),
            None => Ok(()),
        }
    }
}

/// Kept per-expert gate and up blocks (`…experts.{e}.gate_proj.weight`, `up_proj`) joined into
/// the `…experts.{e}.gate_up_proj.weight` the model takes: the gate's rows, then the up's.
/// [`other_half`] keeps both halves or neither, in the same format.
pub fn join_blocks(blocks: &mut BTreeMap<String, BlockMatrix>) -> Result<(), String> {
    let gates: Vec<String> = blocks
        .keys()
        .filter(|k| k.contains(".block_sparse_moe.experts.") && k.ends_with(".gate_proj.weight"))
        .cloned()
        .collect();
    for gate_name in gates {
        let stem = gate_name.trim_end_matches(".gate_proj.weight");
        let up_name = format!("{stem}.up_proj.weight");
        let (Some(mut gate), Some(up)) = (blocks.remove(&gate_name), blocks.remove(&up_name))
        else {
            return Err(format!(
                "`{gate_name}` is kept in blocks without `{up_name}`"
            ));
        };
        if gate.format != up.format || gate.cols != up.cols {
            return Err(format!(
                "`{gate_name}` and `{up_name}` are in different block formats"
            ));
        }
        gate.append_rows(up);
        blocks.insert(format!("{stem}.gate_up_proj.weight"), gate);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stacked(name: &str, first: f32) -> HfTensor {
        // 2 experts × 1 row × 2 columns.
        HfTensor {
            name: format!("model.layers.0.block_sparse_moe.experts.{name}.weight"),
            shape: vec![2, 1, 2],
            values: (0..4).map(|v| first + v as f32).collect(),
        }
    }

    #[test]
    fn gate_and_up_join_expert_by_expert_in_either_order() {
        for gate_first in [true, false] {
            let mut join = ExpertJoin::default();
            let (gate, up) = (stacked("gate_proj", 0.0), stacked("up_proj", 10.0));
            let (a, b) = if gate_first { (gate, up) } else { (up, gate) };
            assert!(join.join(a).unwrap().is_none());
            let (name, t) = join.join(b).unwrap().unwrap();
            assert_eq!(name, "model.layers.0.block_sparse_moe.input_linear.weight");
            assert_eq!(t.shape, [2, 2, 2]);
            // Expert 0: gate row, up row; then expert 1's.
            assert_eq!(t.values, [0., 1., 10., 11., 2., 3., 12., 13.]);
            join.finish().unwrap();
        }
        let mut join = ExpertJoin::default();
        let (name, _) = join.join(stacked("down_proj", 0.0)).unwrap().unwrap();
        assert_eq!(name, "model.layers.0.block_sparse_moe.output_linear.weight");
        join.join(stacked("gate_proj", 0.0)).unwrap();
        assert!(join.finish().unwrap_err().contains("come together"));
    }
}
