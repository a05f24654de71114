#!/usr/bin/env python3
"""Golden logits, routes and greedy tokens for tiny random mixture-of-experts decoders, from
transformers (f32, CPU, eager), with llama_fixtures.py's conventions (its `tiny`: seed 16,
weights N(0, 0.2²), input_ids [2, 7] with row 1 right-padded):

  tiny-qwen3-moe         Qwen3-MoE: 2 layers, 4 experts of 32, top 2, norm_topk_prob true,
                         Qwen3 attention (per-head q/k norms, head_dim 32, GQA 4/2), untied head
  tiny-qwen3-moe-sparse  Qwen3-MoE with norm_topk_prob false, 4 layers, decoder_sparse_step 2 and
                         mlp_only_layers [3]: only layer 1 is sparse, 0, 2 and 3 are dense MLPs of 96
  tiny-qwen2-moe         Qwen2-MoE: 2 layers, 4 experts of 32, top 2, norm_topk_prob false (its
                         default), a shared expert of 48 scaled by sigmoid(shared_expert_gate(x)),
                         q/k/v biases, GQA 4/2, untied head
  tiny-qwen2-moe-sparse  the same with 4 layers, decoder_sparse_step 2 and mlp_only_layers [3]:
                         only layer 1 is sparse
  tiny-mixtral           Mixtral: 2 layers, 4 experts of 32 (w1/w3/w2 under block_sparse_moe on
                         disk), top 2 renormalised, no sliding window, GQA 4/2, untied head
  tiny-granitemoe        GraniteMoE: 2 layers, 4 experts of 32, a softmax over the top 2 router
                         logits, Granite's four multipliers (embedding 12, attention 0.1,
                         residual 0.22, logits_scaling 8), GQA 4/2, untied head; on disk only
                         3-D (block_sparse_moe.input_linear / output_linear, router.layer), and
                         -fused/ in transformers 5's names (experts.gate_up_proj, router.weight)
  tiny-olmoe             OLMoE: 2 layers, 4 experts of 32, top 2, norm_topk_prob false, q/k
                         RMSNorms over the whole projections, GQA 4/2, untied head

Each tests/fixtures/llama/<name>/ holds config.json and model.safetensors as save_pretrained
writes them (per-expert: mlp.experts.{e}.gate_proj/up_proj/down_proj), reference.safetensors
(input_ids, attention_mask, logits [2, 7, vocab], and per sparse layer L `routes.L.experts` and
`routes.L.weights` [14, k], the router's choice for each of the 14 tokens, from a hook on the
router) and greedy.json (12 greedy tokens after three prompts). <name>-fused/ holds the same
model in transformers 5's in-memory layout (mlp.experts.gate_up_proj [E, 2I, H], gate rows
first; mlp.experts.down_proj [E, H, I]) with the same config.json: the Rust tests read both
against the one reference.

Every router choice is checked free of ties (the k-th and (k+1)-th probabilities of every
token differ by more than 1e-4), so any correct top-k picks the same experts.

Environment: transformers==5.23.0, torch per DESIGN.md §6.
Usage: python3 tools/reference/moe_fixtures.py [NAME ...]   (default: all)
"""
import json
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import (GraniteMoeConfig, GraniteMoeForCausalLM, MixtralConfig, MixtralForCausalLM, OlmoeConfig, OlmoeForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig,
                          Qwen3MoeForCausalLM)

from family_fixtures import PROMPTS, greedy
from llama_fixtures import INPUT_IDS, MASK, OUT


COMMON = dict(vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, rms_norm_eps=1e-5, attn_implementation="eager",
              tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
MODELS = {
    "tiny-qwen3-moe": (Qwen3MoeForCausalLM, lambda: Qwen3MoeConfig(
        **COMMON, num_hidden_layers=2, head_dim=32, intermediate_size=96, moe_intermediate_size=32,
        norm_topk_prob=True)),
    "tiny-qwen3-moe-sparse": (Qwen3MoeForCausalLM, lambda: Qwen3MoeConfig(
        **COMMON, num_hidden_layers=4, head_dim=32, intermediate_size=96, moe_intermediate_size=32,
        norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[3])),
    "tiny-qwen2-moe": (Qwen2MoeForCausalLM, lambda: Qwen2MoeConfig(
        **COMMON, num_hidden_layers=2, intermediate_size=96, moe_intermediate_size=32,
        shared_expert_intermediate_size=48)),
    "tiny-qwen2-moe-sparse": (Qwen2MoeForCausalLM, lambda: Qwen2MoeConfig(
        **COMMON, num_hidden_layers=4, intermediate_size=96, moe_intermediate_size=32,
        shared_expert_intermediate_size=48, decoder_sparse_step=2, mlp_only_layers=[3])),
    "tiny-mixtral": (MixtralForCausalLM, lambda: MixtralConfig(
        **{k: v for k, v in COMMON.items() if k != "num_experts"}, num_local_experts=4,
        num_hidden_layers=2, intermediate_size=32)),
    "tiny-granitemoe": (GraniteMoeForCausalLM, lambda: GraniteMoeConfig(
        **{k: v for k, v in COMMON.items() if k != "num_experts"}, num_local_experts=4,
        num_hidden_layers=2, intermediate_size=32, embedding_multiplier=12.0,
        attention_multiplier=0.1, residual_multiplier=0.22, logits_scaling=8.0)),
    "tiny-olmoe": (OlmoeForCausalLM, lambda: OlmoeConfig(
        **COMMON, num_hidden_layers=2, intermediate_size=32, norm_topk_prob=False,
        pad_token_id=0, eos_token_id=1)),
}


def routers(model):
    """(layer, router module) of every sparse layer (`mlp.gate`; GraniteMoE's
    `block_sparse_moe.router`)."""
    out = []
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer, "block_sparse_moe"):
            out.append((i, layer.block_sparse_moe.router))
        elif hasattr(layer.mlp, "gate"):
            out.append((i, layer.mlp.gate))
    return out


def routes(model):
    """Each sparse layer's (experts, weights) for the 14 reference tokens, tie-checked."""
    seen = {}
    hooks = [gate.register_forward_hook(lambda m, args, out, i=i: seen.__setitem__(i, (args[0], out)))
             for i, gate in routers(model)]
    with torch.no_grad():
        model(input_ids=INPUT_IDS, attention_mask=MASK)
    for h in hooks:
        h.remove()
    out = {}
    k = model.config.num_experts_per_tok
    for i, (_, (logits, weights, experts)) in seen.items():
        probs = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True).values
        gap = float((probs[:, k - 1] - probs[:, k]).min())
        assert gap > 1e-4, f"layer {i}: a tie in the router ({gap})"
        out[f"routes.{i}.experts"] = experts.to(torch.int64).contiguous()
        out[f"routes.{i}.weights"] = weights.float().contiguous()
        print(f"  layer {i}: smallest top-k gap {gap:.2e}")
    return out


# A seed per model where seed 16 gives a router a near-tie.
SEEDS = {"tiny-qwen2-moe": 16}
# A router scale per model where N(0, 0.2²) concentrates the routes on a few experts.
ROUTER_SCALES = {"tiny-qwen2-moe": 0.25}


def tiny_moe(name, cls, config):
    """llama_fixtures' `tiny` (with SEEDS and ROUTER_SCALES), so that no router has a near-tie
    and the ten training steps (moe_train.py) reach every expert in every step."""
    torch.manual_seed(SEEDS.get(name, 16))
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        for _, gate in routers(model):
            gate.weight.mul_(ROUTER_SCALES.get(name, 1.0))
    d = OUT / name
    model.save_pretrained(d, safe_serialization=True)
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS, attention_mask=MASK).logits
    save_file({"input_ids": INPUT_IDS.to(torch.int64), "attention_mask": MASK.to(torch.int64),
               "logits": logits.contiguous(), **routes(model)}, d / "reference.safetensors")
    return model


def main():
    for name, (cls, config) in MODELS.items():
        if sys.argv[1:] and name not in sys.argv[1:]:
            continue
        model = tiny_moe(name, cls, config())
        d = OUT / name
        cases = greedy(model)
        (d / "greedy.json").write_text(json.dumps(cases) + "\n")
        fused = OUT / f"{name}-fused"
        fused.mkdir(exist_ok=True)
        shutil.copy(d / "config.json", fused / "config.json")
        if name == "tiny-mixtral":  # lora-tune reads Mixtral per expert only
            shutil.rmtree(fused)
            print(name, cases)
            continue
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        assert any(k.endswith(".experts.gate_up_proj") for k in state)
        save_file(state, fused / "model.safetensors", metadata={"format": "pt"})
        print(name, cases)


if __name__ == "__main__":
    main()
