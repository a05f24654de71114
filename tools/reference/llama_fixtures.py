#!/usr/bin/env python3
"""Golden logits for the Llama-family model, from transformers (f32, CPU, eager attention).

Writes tests/fixtures/llama/:
  tiny-llama/      a random LlamaForCausalLM (GQA 4/2 heads, untied lm_head, llama3 rope scaling)
  tiny-qwen2/      a random Qwen2ForCausalLM (q/k/v biases, GQA 4/2, tied embeddings)
                   each: config.json, model.safetensors, reference.safetensors with
                   input_ids [2, 7] (row 1 right-padded), attention_mask, logits [2, 7, vocab]
  smollm2.json     SmolLM2-135M-Instruct loaded from the GGUF by transformers itself: for 3
                   prompts, the ids, top-20 (id, logit) at the last position, logits of 16 fixed
                   vocabulary ids at every position, and the greedy 32-token continuation.

Environment: pip install numpy gguf==0.19.0 transformers==5.23.0 safetensors accelerate, torch per
DESIGN.md §6. Usage: python3 tools/reference/llama_fixtures.py [DIR_WITH_SMOLLM2_GGUF]
"""
import json
import pathlib
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "llama"
INPUT_IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7], [8, 8, 120, 33, 0, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nMy invoice shows the wrong VAT rate. What should I do?<|im_end|>\n<|im_start|>assistant\n",
]


def tiny(name, model_cls, config):
    torch.manual_seed(16)
    model = model_cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than init_std so every path matters in the logits
            p.normal_(0.0, 0.2)
    d = OUT / name
    model.save_pretrained(d, safe_serialization=True)
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS, attention_mask=MASK).logits
    save_file({"input_ids": INPUT_IDS.to(torch.int64), "attention_mask": MASK.to(torch.int64),
               "logits": logits.contiguous()}, d / "reference.safetensors")
    print(name, logits.shape, float(logits.abs().max()))
    return model


def smollm2(gguf_dir):
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    fixed = [0, 1, 2, 28, 216, 314, 1000, 2188, 5000, 9999, 12345, 20000, 30000, 40000, 45000, 49151]
    out = []
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
            greedy = model.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1]:]
        top = torch.topk(logits[-1], 20)
        out.append({
            "prompt": prompt,
            "ids": ids[0].tolist(),
            "top20_last": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
            "fixed_ids": fixed,
            "fixed_logits": logits[:, fixed].tolist(),
            "greedy32": greedy.tolist(),
        })
        print(repr(prompt[:30]), "->", repr(tok.decode(greedy)))
    (OUT / "smollm2.json").write_text(json.dumps(out) + "\n")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-5, attn_implementation="eager")
    tiny("tiny-llama", LlamaForCausalLM, LlamaConfig(
        **common, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}))
    tiny("tiny-qwen2", Qwen2ForCausalLM, Qwen2Config(**common, tie_word_embeddings=True,
                                                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}))
    if len(sys.argv) > 1:
        smollm2(sys.argv[1])


if __name__ == "__main__":
    main()
