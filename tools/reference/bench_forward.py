#!/usr/bin/env python3
"""transformers + PEFT (PyTorch, 2 threads) on benches/forward.rs's workloads, SmolLM2-135M-Instruct
(the same GGUF, dequantised to f32): forward 1×256 tokens of the same text (no gradient),
the evaluation loss of W1's 4×256 token ids (every next token labelled) through PEFT LoRA r=8
α=16 on the seven Llama targets (no gradient), and `generate` of 64 greedy tokens with the KV cache after the text's first 16 tokens.
Prints one JSON object. Usage: python3 tools/reference/bench_forward.py DIR_WITH_SMOLLM2_GGUF
"""
import json
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def median_time(fn, runs):
    times = []
    for run in range(runs + 1):
        t = time.perf_counter()
        fn()
        if run > 0:
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main(gguf_dir):
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=NAME, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    ids = tok("Customer support tickets need fast, accurate answers. " * 40, return_tensors="pt")["input_ids"][:, :256]
    with torch.no_grad():
        forward_s = median_time(lambda: model(input_ids=ids), 5)
        prompt = ids[:, :16]
        t = time.perf_counter()
        out = model.generate(input_ids=prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        decode_s = time.perf_counter() - t
        new = out.shape[1] - prompt.shape[1]
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])).eval()
        rows = torch.tensor([[(r * 7919 + j * 104729) % 49000 + 100 for j in range(256)] for r in range(4)])
        # The evaluation loss, every next token labelled, as Trainer.evaluate computes it.
        eval_s = median_time(lambda: peft(input_ids=rows, labels=rows).loss, 3)
    print(json.dumps({
        "impl": f"peft {__import__('peft').__version__} transformers {__import__('transformers').__version__} torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "forward_tokens": ids.shape[1], "forward_s_median": forward_s,
        "forward_tokens_per_s": ids.shape[1] / forward_s,
        "eval_tokens": 1024, "eval_s_median": eval_s, "eval_tokens_per_s": 1024 / eval_s,
        "decode_tokens": new, "decode_tokens_per_s": new / decode_s,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
