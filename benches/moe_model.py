#!/usr/bin/env python3
"""A Qwen3-MoE-shaped model with random weights for the MoE training benchmark (random, not
zero: a router of zeros would send every token to the same experts). Shape: hidden 1024,
8 layers, 16 heads / 4 kv heads of 64, 32 experts of 512 with the top 4 renormalised
(norm_topk_prob true, as every released Qwen3-MoE), vocabulary 49152 (the token ids
benches/train.rs and tools/reference/bench_peft.py feed), untied head: 0.52B parameters, 0.12B
active per token. Weights N(0, 0.02²) as transformers initialises them; written per expert by
save_pretrained (transformers 5.23), with the tiny Llama fixture's tokenizer beside it.

Usage: python3 benches/moe_model.py OUT_DIR
"""
import pathlib
import shutil
import sys

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    out = pathlib.Path(sys.argv[1])
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=49152, hidden_size=1024, num_hidden_layers=8,
                            num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                            intermediate_size=2048, moe_intermediate_size=512, num_experts=32,
                            num_experts_per_tok=4, norm_topk_prob=True, tie_word_embeddings=False,
                            max_position_embeddings=4096)
    model = Qwen3MoeForCausalLM(config)
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "tests/fixtures/llama/tiny-llama" / f, out / f)
    print(out, sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()
