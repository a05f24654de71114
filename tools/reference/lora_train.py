#!/usr/bin/env python3
"""A short PEFT LoRA training trajectory on the tiny Llama fixture, the reference for lora-tune's
adapter layer, loss, gradient accumulation, global-norm clipping, AdamW and schedule.

Setup: tests/fixtures/llama/tiny-llama, LoraConfig(r=4, lora_alpha=8, dropout 0, the 7 Llama
targets), PEFT's own init (A kaiming-uniform a=√5, B = 0), seed 7. 10 optimiser steps, each
accumulating 2 micro-batches of different padded lengths; the loss of a micro-batch is the sum of
token cross-entropies over labelled tokens divided by the labelled tokens of the whole step (not
a mean of means). torch.nn.utils.clip_grad_norm_(max_norm=0.05) (small, so it binds), then
torch.optim.AdamW(lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) with
get_linear_schedule_with_warmup(2 warmup steps, 10 total).

Writes tests/fixtures/lora/train/: batches.json (micro-batches: input_ids, attention_mask, labels
with -100), init.safetensors and final.safetensors (PEFT keys, lora_A [r,in] / lora_B [out,r]),
trajectory.json (per step: loss, grad norm before clipping, lr used).
With a family (`qwen3`, `granite`, `olmo2`, `mistral`, `llama-gelu`, `gemma2`, `gemma3`, `phi3` — its four fused projections as targets): the same steps on tests/fixtures/llama/tiny-<family>
(family_fixtures.py), into tests/fixtures/lora/train-<family>/ (init, final, trajectory; the
batches are lora/train's).
With `loraplus`: the same steps on tiny-llama with PEFT's create_loraplus_optimizer
(loraplus_lr_ratio=16, loraplus_weight_decay=0.01: PEFT's groups override the optimizer's own
weight_decay), into tests/fixtures/lora/train-loraplus/ (final, trajectory; the initial adapters
are lora/train's, checked equal).
With `bf16`: the same steps on tiny-llama with every forward under
torch.autocast("cpu", dtype=torch.bfloat16) — PEFT users' mixed precision: each linear's input
and weight (the adapters' too) rounded to bf16, products accumulated in f32 and rounded to bf16,
the loss in f32 — into tests/fixtures/lora/train-bf16/ (final, trajectory; the initial adapters
are lora/train's, checked equal).
With `f16`: the same under torch.autocast("cpu", dtype=torch.float16) with torch's AMP recipe
(torch.amp.GradScaler: the loss scaled before backward, the gradients unscaled before clipping, a
step with inf/NaN gradients skipped and the scale halved, doubled after 2000 good steps), from a
scale of 2**22 so the first steps overflow, and with the adapters outside autocast (f32, as
lora-tune keeps them; see autocast_split.py) — into tests/fixtures/lora/train-f16/ (final,
trajectory with each step's loss scale and whether it was skipped).
With `dora-bf16`: the `dora` steps under torch.autocast("cpu", dtype=torch.bfloat16) (final,
trajectory; the initial adapters and magnitudes are lora/train-dora's, checked equal).
With `dora`: the same steps on tiny-llama with LoraConfig(use_dora=True) — A, B and each layer's
lora_magnitude_vector trained — into tests/fixtures/lora/train-dora/ (init with the magnitudes,
final, trajectory), plus the trained adapter as save_pretrained writes it (peft/) and its logits on
the first micro-batch (logits.safetensors; merge_and_unload's model checked equal).
Environment: transformers==5.23.0 peft==0.21.2, torch per DESIGN.md §6.
Usage: python3 tools/reference/lora_train.py [qwen3|granite|olmo2|mistral|llama-gelu|gemma2|gemma3|phi3|loraplus|dora|dora-bf16|bf16|f16]
"""
import math
import sys
import json
import pathlib

import torch
from autocast_split import keep_trained_linears_in_f32
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

ROOT = pathlib.Path(__file__).resolve().parents[2]
VARIANT = sys.argv[1] if len(sys.argv) > 1 else None
LORAPLUS_RATIO = 16.0 if VARIANT == "loraplus" else None
DORA = VARIANT in ("dora", "dora-bf16")
AUTOCAST = {"bf16": torch.bfloat16, "f16": torch.float16, "dora-bf16": torch.bfloat16}.get(VARIANT)
# f16: torch.amp.GradScaler's dynamic loss scaling, from a scale high enough that the first
# steps overflow f16 and are skipped (the default 2**16 never overflows on this tiny model).
F16_INIT_SCALE = 2.0**22
FAMILY = None if LORAPLUS_RATIO or DORA or AUTOCAST else VARIANT
OUT = ROOT / "tests" / "fixtures" / "lora" / (f"train-{VARIANT}" if VARIANT else "train")
BASE = ROOT / "tests/fixtures/llama" / (f"tiny-{FAMILY}" if FAMILY else "tiny-llama")
STEPS, ACCUM, MAX_NORM = 10, 2, 0.05
# Every attention and MLP projection: Llama's seven, or Phi-3's four fused ones.
TARGETS = (["qkv_proj", "o_proj", "gate_up_proj", "down_proj"] if FAMILY == "phi3" else
           ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def lora_state(model):
    """Trained tensors under the keys save_pretrained writes (a magnitude drops `.weight`)."""
    def key(k):
        k = k.replace(".default", "")
        return k.removesuffix(".weight") if "lora_magnitude_vector" in k else k
    return {key(k): v.detach().clone().contiguous() for k, v in model.named_parameters() if "lora_" in k}


def micro_batches(gen):
    """2 micro-batches per step: [2, 9] and [3, 6], right-padded, prompt tokens unlabelled."""
    out = []
    for step in range(STEPS):
        for rows, length in ((2, 9), (3, 6)):
            ids = torch.randint(3, 256, (rows, length), generator=gen)
            mask = torch.ones(rows, length, dtype=torch.int64)
            labels = ids.clone()
            for r in range(rows):
                real = length - (r % 3)           # rows 1, 2 end in padding
                mask[r, real:] = 0
                ids[r, real:] = 0
                labels[r, real:] = -100
                labels[r, : 1 + r % 2] = -100     # an unlabelled prompt prefix
            out.append({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})
    return out


def train_steps(model, params, opt, batches, label="", router_aux_loss_coef=0.0):
    """The ten steps: STEPS optimiser steps of ACCUM micro-batches each, the loss of a micro-batch
    the sum of token cross-entropies over the step's labelled tokens, clipping at MAX_NORM, a
    linear schedule with 2 warmup steps on `opt`. Returns the trajectory (loss, grad norm, lr).
    With `router_aux_loss_coef`, a mixture of experts' micro-batch adds transformers' router
    load-balancing loss (`aux_loss`: load_balancing_loss_func over its sparse layers and its
    attention mask) times the coefficient, weighted by the micro-batch's share of the step's
    labelled tokens (with one micro-batch a step: transformers' own `loss + coef · aux_loss`)."""
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=STEPS)
    scaler = torch.amp.GradScaler("cpu", init_scale=F16_INIT_SCALE) if AUTOCAST == torch.float16 else None
    trajectory = []
    for step in range(STEPS):
        group = batches[step * ACCUM:(step + 1) * ACCUM]
        n_tokens = sum(int((torch.tensor(b["labels"])[:, 1:] != -100).sum()) for b in group)
        total = 0.0
        for b in group:
            ids, mask, labels = (torch.tensor(b[k]) for k in ("input_ids", "attention_mask", "labels"))
            routed = {"output_router_logits": True} if router_aux_loss_coef else {}
            with torch.autocast("cpu", dtype=AUTOCAST or torch.bfloat16, enabled=AUTOCAST is not None):
                out = model(input_ids=ids, attention_mask=mask, **routed)
            logits = out.logits.float()  # as transformers' loss does: bf16 logits, an f32 loss
            # next-token prediction: position t predicts label t+1
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum") / n_tokens
            if router_aux_loss_coef:
                share = int((labels[:, 1:] != -100).sum()) / n_tokens
                loss = loss + router_aux_loss_coef * out.aux_loss * share
            (scaler.scale(loss) if scaler else loss).backward()
            total += float(loss)
        lr = sched.get_last_lr()[0]
        record = {}
        if scaler:  # torch's AMP recipe: unscale, clip, step (skipped on inf/NaN), update
            scale = scaler.get_scale()
            scaler.unscale_(opt)
            norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_NORM))
            scaler.step(opt)
            scaler.update()
            record = {"loss_scale": scale, "skipped": scaler.get_scale() < scale}
        else:
            norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_NORM))
            opt.step()
        sched.step()
        opt.zero_grad()
        norm = norm if math.isfinite(norm) else None  # JSON has no NaN: a skipped step's is null
        trajectory.append({"step": step + 1, "loss": total, "grad_norm": norm, "lr": lr, "tokens": n_tokens,
                           **record})
        print(label, trajectory[-1])
    return trajectory


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(BASE, attn_implementation="eager")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                        target_modules=TARGETS, use_dora=DORA)
    model = get_peft_model(model, config)
    if LORAPLUS_RATIO or AUTOCAST:  # the same draw as the plain run: its init serves
        init = load_file(OUT.parent / ("train-dora" if DORA else "train") / "init.safetensors")
        assert all(torch.equal(init[k], v) for k, v in lora_state(model).items())
    else:
        save_file(lora_state(model), OUT / "init.safetensors")
    if AUTOCAST == torch.float16:
        keep_trained_linears_in_f32(model)
    batches = micro_batches(torch.Generator().manual_seed(11))
    params = [p for p in model.parameters() if p.requires_grad]
    if LORAPLUS_RATIO:
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=5e-3, loraplus_lr_ratio=LORAPLUS_RATIO,
                                        loraplus_weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.AdamW(params, lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    trajectory = train_steps(model, params, opt, batches)
    save_file(lora_state(model), OUT / "final.safetensors")
    if VARIANT == "dora":
        ids, mask, _ = (torch.tensor(batches[0][k]) for k in ("input_ids", "attention_mask", "labels"))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            model.save_pretrained(OUT / "peft")
            (OUT / "peft" / "README.md").unlink()
            merged = model.merge_and_unload()(input_ids=ids, attention_mask=mask).logits
        print("merge_and_unload vs adapted logits:", float((merged - logits).abs().max()))
        save_file({"logits": logits.contiguous()}, OUT / "logits.safetensors")
    if not VARIANT:  # the same micro-batches: lora/train/batches.json serves every family
        (OUT / "batches.json").write_text(json.dumps(batches) + "\n")
    (OUT / "trajectory.json").write_text(json.dumps(trajectory, indent=1) + "\n")


if __name__ == "__main__":
    main()
