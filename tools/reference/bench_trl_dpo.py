#!/usr/bin/env python3
"""TRL's DPOTrainer on benches/dpo.rs's workload: SmolLM2-135M-Instruct (the same GGUF,
dequantised to f32 by transformers), a PEFT LoRA r=8 α=16 dropout 0 on the 7 Llama targets and no
ref_model (TRL's recommended PEFT setup: the reference is the initial adapter, kept as a frozen
copy), β 0.1, AdamW lr 5e-6, 2 threads; one batch of 4 pairs, each sequence a 128-token prompt
and a 128-token completion with benches/dpo.rs's token ids, collated as TRL's collator does.
Each step is the Trainer's own training_step (TRL's loss with its reference forward, backward)
and the optimizer's step. One warm-up step, 5 timed; prints one JSON object (pairs/s, s/step,
peak RSS).
Environment: transformers==5.23.0 peft==0.21.2 trl==1.16.0 datasets, torch per DESIGN.md §6.
Usage: python3 tools/reference/bench_trl_dpo.py DIR_WITH_SMOLLM2_GGUF
"""
import json
import resource
import sys
import time

import datasets.fingerprint
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

PAIRS, PROMPT, LEN = 4, 128, 256


def row(r):
    ident = lambda r, j: (r * 7919 + j * 104729) % 49000 + 100  # noqa: E731
    return [ident(r % PAIRS, j) if j < PROMPT else ident(r, j) for j in range(LEN)]


def main():
    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, v: datasets.fingerprint.generate_random_fingerprint())
    torch.set_num_threads(2)
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(sys.argv[1], gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], gguf_file=gguf, dtype=torch.float32,
                                                 attn_implementation="eager")
    # transformers marks a model read from GGUF as "quantized" and the Trainer refuses those;
    # its weights are dequantised f32 tensors, so the mark goes.
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    args = DPOConfig(output_dir="/tmp/bench-trl-dpo", beta=0.1, learning_rate=5e-6, per_device_train_batch_size=PAIRS,
                     max_length=LEN, report_to=[], save_strategy="no", use_cpu=True, bf16=False)
    dummy = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
    trainer = DPOTrainer(model=model, args=args, train_dataset=dummy, processing_class=tok)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by train(), which the bench bypasses
    rows = [row(r) for r in range(2 * PAIRS)]
    inputs = {
        "input_ids": torch.tensor(rows),
        "attention_mask": torch.ones(2 * PAIRS, LEN, dtype=torch.long),
        "completion_mask": torch.tensor([[0] * PROMPT + [1] * (LEN - PROMPT)] * (2 * PAIRS)),
    }
    model.train()
    times = []
    for step in range(6):
        t = time.perf_counter()
        loss = trainer.training_step(model, inputs)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        if step > 0:
            times.append(time.perf_counter() - t)
        print(f"step {step}: loss {float(loss):.4f} in {time.perf_counter() - t:.2f} s", file=sys.stderr)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({
        "workload": f"DPO, {PAIRS} pairs x {LEN} tokens, r=8 on 7 targets",
        "trl": __import__("trl").__version__, "torch": torch.__version__,
        "s_per_step_min": times[0], "s_per_step_median": median, "pairs_per_s": PAIRS / median,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }))


if __name__ == "__main__":
    main()
