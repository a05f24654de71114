#!/usr/bin/env python3
"""Random-weight Llama checkpoints with the real shapes of the SmolLM2 family, written by
transformers where the GPU benchmark runs (benches/gpu/run.sh), initialised on the GPU when there
is one: the timing of a training step does not
depend on the weights' values, and the real files are too large to carry to the GPU machine. All
three share SmolLM2's 49,152-token vocabulary, so the benches' token ids fit every one.

  smollm2-135m  hidden 576,  30 layers, 9 heads / 3 kv,   MLP 1536 (≈135 M parameters)
  smollm2-360m  hidden 960,  32 layers, 15 heads / 5 kv,  MLP 2560 (≈362 M)
  smollm2-1.7b  hidden 2048, 24 layers, 32 heads / 32 kv, MLP 8192 (≈1.71 B)

Shapes from HuggingFaceTB/SmolLM2-{135M,360M,1.7B}'s config.json. Saved as bf16 safetensors
(half the bytes to write; lora-tune and transformers widen them as asked).
Usage: make_models.py OUT_DIR [NAME ...]   (default: all three) — prints one line per model.
"""
import pathlib
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, rope_theta=100000.0),
    "smollm2-360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, intermediate_size=2560, rope_theta=100000.0),
    "smollm2-1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, intermediate_size=8192, rope_theta=130000.0),
}


def main(out, names):
    for name in names:
        target = pathlib.Path(out) / name
        if (target / "config.json").exists():
            print(f"{name}: {target} (kept)")
            continue
        config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
                             tie_word_embeddings=True, hidden_act="silu", **SHAPES[name])
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(target)  # safetensors (transformers 5 has no other format)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {target} ({params / 1e6:.0f} M parameters)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or list(SHAPES))
