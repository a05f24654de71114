#!/usr/bin/env python3
"""PEFT's own adapter folder for the tiny Llama fixture, the reference for lora-tune's PEFT export
and reader: LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, dropout 0, the 7 Llama targets)
with the trained A/B of tests/fixtures/lora/train/final.safetensors, saved by
`save_pretrained`, plus the logits of the adapted model on the first training micro-batch.

Writes tests/fixtures/lora/peft/: adapter_config.json, adapter_model.safetensors, logits.safetensors.
With an argument DIR (a folder lora-tune exported), instead loads it with
`PeftModel.from_pretrained` on the tiny Llama and prints the max |Δlogit| against logits.safetensors;
with `merged DIR` (a model `lora-tune merge` wrote), loads it with `AutoModelForCausalLM` alone.
A family first (`qwen3`, `granite`, `olmo2`, `gemma2`, `gemma3`, `phi3`: its four fused projections) does the same on tests/fixtures/llama/tiny-<family> with
lora/train-<family>/final.safetensors, into tests/fixtures/lora/peft-<family>/.
Environment: transformers==5.23.0 peft==0.21.2, torch per DESIGN.md §6.
Usage: python3 tools/reference/peft_export.py [qwen3|granite|olmo2|gemma2|gemma3|phi3] [DIR | merged DIR]
"""
import json
import pathlib
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
FAMILY = sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] in ("qwen3", "granite", "olmo2", "gemma2", "gemma3", "phi3") else None
TINY = ROOT / "tests/fixtures/llama" / (f"tiny-{FAMILY}" if FAMILY else "tiny-llama")
OUT = ROOT / "tests/fixtures/lora" / (f"peft-{FAMILY}" if FAMILY else "peft")
TRAINED = ROOT / "tests/fixtures/lora" / (f"train-{FAMILY}" if FAMILY else "train") / "final.safetensors"
TARGETS = (["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] if FAMILY == "phi3" else
           ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def batch():
    b = json.loads((ROOT / "tests/fixtures/lora/train/batches.json").read_text())[0]
    return torch.tensor(b["input_ids"]), torch.tensor(b["attention_mask"])


def base():
    return AutoModelForCausalLM.from_pretrained(TINY, attn_implementation="eager").eval()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    model = get_peft_model(base(), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                              target_modules=TARGETS))
    trained = load_file(TRAINED)
    result = set_peft_model_state_dict(model, trained)
    assert not result.unexpected_keys, result.unexpected_keys
    model.save_pretrained(OUT)
    (OUT / "README.md").unlink(missing_ok=True)  # PEFT's model-card template, not under test
    ids, mask = batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    save_file({"logits": logits.contiguous()}, OUT / "logits.safetensors")
    print("saved", sorted(p.name for p in OUT.iterdir()))


def check(exported):
    model = PeftModel.from_pretrained(base(), exported).eval()
    ids, mask = batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    want = load_file(OUT / "logits.safetensors")["logits"]
    print(f"PeftModel.from_pretrained({exported}): max |Δlogit| = {(logits - want).abs().max().item():.3e}")


def check_merged(merged):
    model = AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager").eval()
    ids, mask = batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    want = load_file(OUT / "logits.safetensors")["logits"]
    print(f"AutoModelForCausalLM.from_pretrained({merged}): max |Δlogit| = {(logits - want).abs().max().item():.3e}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "merged":
        check_merged(sys.argv[2])
    elif len(sys.argv) > 1:
        check(sys.argv[1])
    else:
        main()
