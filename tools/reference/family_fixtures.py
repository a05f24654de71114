#!/usr/bin/env python3
"""Golden logits for tiny random decoders of the families beyond Llama/Qwen2, from transformers
(f32, CPU, eager attention), with llama_fixtures.py's conventions (its `tiny`: seed 16, weights
N(0, 0.2²), input_ids [2, 7] with row 1 right-padded):

  tiny-qwen3    Qwen3: per-head q/k RMSNorm before RoPE, explicit head_dim 32 (twice
                hidden / heads), GQA 4/2, no biases, untied head
  tiny-granite  Granite: embedding_multiplier 12, attention_multiplier 0.1 (not 1/√16),
                residual_multiplier 0.22, logits_scaling 8, GQA 4/2, tied embeddings
  tiny-olmo2    OLMo 2: norms after attention and MLP (none before), RMSNorm over the whole
                q and k projections before RoPE, GQA 4/2, untied head
  tiny-mistral  Mistral with sliding_window 4: the 7-token rows and the generated tokens reach
                past it in every layer, GQA 4/2, untied head
  tiny-llama-gelu  Llama with hidden_act "gelu_pytorch_tanh" (a GeGLU MLP), tied embeddings
  tiny-gemma2   Gemma 2: embeddings × √hidden, (1 + w) RMSNorms before and after attention and
                MLP, GeGLU (gelu_pytorch_tanh), query_pre_attn_scalar 24 (not head_dim 16),
                attention scores soft-capped at 5 and logits at 3 (low, so both bind), a
                sliding window of 4 on layer 0 (every other layer), GQA 4/2, untied head (tied, the
                scaled embeddings make greedy repeat the last token)
  tiny-gemma3   Gemma 3 text: Gemma 2's layers with per-head (1 + w) q/k RMSNorms, no soft caps,
                layer 0 sliding (window 4, RoPE base 10000) and layer 1 global (RoPE base 1e6,
                linear scaling ×4), query_pre_attn_scalar 24, GQA 4/2, untied head
  tiny-phi3     Phi-3: fused qkv_proj and gate_up_proj, RoPE over half of each head
                (partial_rotary_factor 0.5), LongRoPE with original_max_position_embeddings 8
                (the 7-token rows use the short factors; 9-token training rows and generation
                past position 8 the long ones, with attention factor √(1 + ln 16 / ln 8)),
                GQA 4/2, untied head

Each tests/fixtures/llama/<name>/ gets config.json, model.safetensors, reference.safetensors
(input_ids, attention_mask, logits [2, 7, vocab]) and greedy.json (the 12 greedy tokens
transformers' generate gives after three prompts).

Environment: pip install torch transformers==5.23.0 safetensors accelerate (DESIGN.md §6).
Usage: python3 tools/reference/family_fixtures.py [qwen3|granite|olmo2|mistral|llama-gelu|gemma2|gemma3|phi3 ...]   (default: all)
"""
import json
import sys

import torch
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GraniteConfig, GraniteForCausalLM,
                          LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Olmo2Config, Olmo2ForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

from llama_fixtures import OUT, tiny

PROMPTS = [[5, 17, 42, 99], [200, 3], [8, 8, 120, 33, 64, 1, 250]]
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, attn_implementation="eager")
FAMILIES = {
    "qwen3": ("tiny-qwen3", Qwen3ForCausalLM, lambda: Qwen3Config(
        **COMMON, head_dim=32, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "granite": ("tiny-granite", GraniteForCausalLM, lambda: GraniteConfig(
        **COMMON, tie_word_embeddings=True, embedding_multiplier=12.0, attention_multiplier=0.1,
        residual_multiplier=0.22, logits_scaling=8.0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "olmo2": ("tiny-olmo2", Olmo2ForCausalLM, lambda: Olmo2Config(
        **COMMON, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0})),
    "mistral": ("tiny-mistral", MistralForCausalLM, lambda: MistralConfig(
        **COMMON, tie_word_embeddings=False, sliding_window=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "llama-gelu": ("tiny-llama-gelu", LlamaForCausalLM, lambda: LlamaConfig(
        **COMMON, tie_word_embeddings=True, hidden_act="gelu_pytorch_tanh",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "gemma2": ("tiny-gemma2", Gemma2ForCausalLM, lambda: Gemma2Config(
        **COMMON, head_dim=16, tie_word_embeddings=False, query_pre_attn_scalar=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0, sliding_window=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "gemma3": ("tiny-gemma3", Gemma3ForCausalLM, lambda: Gemma3TextConfig(
        **COMMON, head_dim=16, tie_word_embeddings=False, query_pre_attn_scalar=24,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "phi3": ("tiny-phi3", Phi3ForCausalLM, lambda: Phi3Config(
        **COMMON, tie_word_embeddings=False, original_max_position_embeddings=8, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.3, 2.1, 3.7], "long_factor": [1.5, 2.9, 6.0, 11.0]})),
}


def greedy(model):
    """12 greedy tokens after each of PROMPTS, as greedy.json holds them."""
    out = []
    for ids in PROMPTS:
        with torch.no_grad():
            new = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
        out.append({"prompt": ids, "greedy": new[0, len(ids):].tolist()})
    return out


def main():
    for family in sys.argv[1:] or list(FAMILIES):
        name, model_cls, config = FAMILIES[family]
        model = tiny(name, model_cls, config())
        cases = greedy(model)
        (OUT / name / "greedy.json").write_text(json.dumps(cases) + "\n")
        print(name, cases)


if __name__ == "__main__":
    main()
