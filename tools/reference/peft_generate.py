#!/usr/bin/env python3
"""Greedy chat continuation of SmolLM2-135M-Instruct (the GGUF, dequantised by transformers) with a
PEFT adapter folder loaded by `PeftModel.from_pretrained` — to compare with
`lora-tune generate --chat --adapter DIR` on a folder lora-tune exported.
Usage: python3 tools/reference/peft_generate.py GGUF_DIR ADAPTER_DIR "prompt" [max_new_tokens]
Environment: transformers==5.23.0 peft==0.21.2, torch per DESIGN.md §6.
"""
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(gguf_dir, adapter, prompt, max_new):
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=NAME)
    base = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=NAME, dtype=torch.float32,
                                                attn_implementation="eager")
    model = PeftModel.from_pretrained(base, adapter).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=max_new, do_sample=False)
    print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 48)
