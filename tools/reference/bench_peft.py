#!/usr/bin/env python3
"""PEFT + PyTorch on the same workload as benches/train.rs: SmolLM2-135M-Instruct (the same GGUF,
dequantised to f32 by transformers), LoRA r=8 α=16 dropout 0.05 on the 7 Llama targets, AdamW
lr 2e-4, W1 = batch 4×256 (or W2 = 1×1024 with argument `w2`), the same token ids, every position
labelled, 2 threads; `dora` trains DoRA (use_dora=True). One warm-up step, 5 timed; prints one
JSON object.
For the GPU benchmark (benches/gpu/run.sh): `model=HF_DIR` trains that checkpoint instead of the
GGUF, `device=cuda` runs on the GPU (peak GPU memory allocated and reserved reported),
`autocast=bf16` under torch.autocast(bf16), `weights=bf16` loads the base in bf16 and `attn=sdpa`
takes torch's fused attention — together, as PEFT users train on a GPU (PEFT keeps the adapters
in f32: `autocast_adapter_dtype`).
`dropout=P` sets lora_dropout (0 for a mixture of experts: on transformers 5 PEFT adapts its
experts through target_parameters, which take no dropout).
Usage: python3 tools/reference/bench_peft.py DIR_WITH_SMOLLM2_GGUF [w2] [dora] [model=HF_DIR]
       [device=cuda] [autocast=bf16] [weights=bf16] [attn=sdpa] [dropout=P]
"""
import json
import resource
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main(gguf_dir, w2, dora, settings):
    torch.set_num_threads(2)
    rows, length = (1, 1024) if w2 else (4, 256)
    device = settings.get("device", "cpu")
    autocast = settings.get("autocast") == "bf16"
    weights = torch.bfloat16 if settings.get("weights") == "bf16" else torch.float32
    attn = settings.get("attn", "eager")
    if "model" in settings:
        model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype=weights,
                                                     attn_implementation=attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                     dtype=torch.float32, attn_implementation="eager")
    model.to(device)
    base = sum(p.numel() for p in model.parameters())
    dropout = float(settings.get("dropout", 0.05))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, use_dora=dora, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    ids = torch.tensor([[(r * 7919 + j * 104729) % 49000 + 100 for j in range(length)] for r in range(rows)],
                       device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    times = []
    for step in range(6):
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
        logits = logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        if step > 0:
            times.append(time.perf_counter() - t)
        print(f"step {step}: loss {loss.item():.4f} in {time.perf_counter() - t:.2f} s", file=sys.stderr)
    times.sort()
    median = times[len(times) // 2]
    tokens = rows * length
    print(json.dumps({
        "workload": ("W2 1x1024" if w2 else "W1 4x256") + (" DoRA" if dora else ""),
        "model": settings.get("model", "SmolLM2-135M-Instruct Q4_1 GGUF"), "device": device,
        "autocast": "bf16" if autocast else None, "weights": str(weights), "attn": attn,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        "peak_gpu_memory_reserved_gb": torch.cuda.max_memory_reserved() / 1e9 if device == "cuda" else None,
        "impl": f"peft {__import__('peft').__version__} transformers {__import__('transformers').__version__} torch {torch.__version__}",
        "threads": torch.get_num_threads(), "lora_dropout": dropout,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "s_per_step_min": times[0], "s_per_step_median": median, "tokens_per_s": tokens / median,
        "gflop_per_s_4n": 4 * base * tokens / median / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }))


if __name__ == "__main__":
    settings = dict(a.split("=", 1) for a in sys.argv[2:] if "=" in a)
    main(sys.argv[1], "w2" in sys.argv[2:], "dora" in sys.argv[2:], settings)
