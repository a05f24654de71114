#!/usr/bin/env python3
"""Golden logits for a tiny random Qwen3 (q/k RMSNorm per head before RoPE, explicit head_dim
twice hidden / heads, GQA 4/2, no biases, untied head), from transformers (f32, CPU, eager
attention) — the same conventions as llama_fixtures.py's tiny models, whose `tiny` it uses.

Writes tests/fixtures/llama/tiny-qwen3/: config.json, model.safetensors, reference.safetensors
(input_ids [2, 7] with row 1 right-padded, attention_mask, logits [2, 7, vocab]) and
greedy.json (the 12 greedy tokens transformers' generate gives after three prompts).

Environment: pip install torch transformers==5.23.0 safetensors accelerate (DESIGN.md §6).
Usage: python3 tools/reference/qwen3_fixtures.py
"""
import json

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from llama_fixtures import OUT, tiny

PROMPTS = [[5, 17, 42, 99], [200, 3], [8, 8, 120, 33, 64, 1, 250]]


def main():
    config = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         attn_implementation="eager")
    model = tiny("tiny-qwen3", Qwen3ForCausalLM, config)
    greedy = []
    for ids in PROMPTS:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)
        greedy.append({"prompt": ids, "greedy": out[0, len(ids):].tolist()})
    (OUT / "tiny-qwen3" / "greedy.json").write_text(json.dumps(greedy) + "\n")
    print(greedy)


if __name__ == "__main__":
    main()
