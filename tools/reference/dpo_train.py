#!/usr/bin/env python3
"""TRL's own DPOTrainer on the tiny Llama fixture, the reference for lora-tune's preference
data, reference log-probabilities, DPO loss, gradients, metrics and steps.

Setup: tests/fixtures/llama/tiny-llama with a PEFT LoRA (r=4, lora_alpha=8, dropout 0, the 7
Llama targets, PEFT's init, seed 7) and no ref_model: TRL 1.16 then keeps a frozen copy of the
initial adapter as its reference ("ref"), which with B = 0 is the base with the adapters off. The pairs: tests/fixtures/lora/dpo/pairs.jsonl (8 string pairs, an
explicit prompt each). DPOConfig: beta 0.1, max_length 48 (two pairs are cut), batch 2 pairs,
gradient accumulation 2, 10 steps, AdamW lr 5e-3 (weight decay 0.01), a linear schedule with 2
warmup steps, max_grad_norm 0.05 (it binds), seed 7, f32 on the CPU, logging every step.

Writes tests/fixtures/lora/dpo/:
  tokenized.json   each row's prompt_ids / chosen_ids / rejected_ids as TRL's tokenisation made
                   them (EOS appended, prompt + completion tokenised together)
  batches.json     every micro-batch TRL's collator gave compute_loss, in order (input_ids,
                   attention_mask, completion_mask), with its ref_chosen_logps and
                   ref_rejected_logps from TRL's compute_ref_log_probs
  init.safetensors, final.safetensors  the adapters (PEFT keys) before and after
  step0.safetensors  the gradients of every A and B from the first micro-batch's loss at the
                   initial adapters (B = 0: dL/dA = 0)
  trajectory.json  TRL's log_history per step: loss, grad_norm, learning_rate and the
                   rewards/*, logps/*, logits/* metrics
With `simpo`: TRL's CPOTrainer (trl.experimental.cpo) with loss_type "simpo", cpo_alpha 0,
beta 2.0, simpo_gamma 0.5, max_length 128 (nothing cut: CPOTrainer keeps a pair whose prompt
fills max_length, and its empty completion's mean is NaN) on the same pairs and LoRA, into
tests/fixtures/lora/simpo/: init, final, trajectory, and batches.json holding CPOTrainer's own
micro-batches (its concatenated input_ids / attention_mask / labels: CPOTrainer still tokenises
the older way — prompt apart, BOS added — so the batches, not the rows, are the comparison).
Environment: transformers==5.23.0 peft==0.21.2 trl==1.16.0 datasets, torch per DESIGN.md §6.
With `dpo-sft`: the DPO run with loss_type ["sigmoid", "sft"] and loss_weights [1, 0.5] (the
chosen completions' mean NLL added at 0.5: lora-tune's preference.sft_weight), into
tests/fixtures/lora/dpo-sft/ (init, final, trajectory, batches, tokenized, step0).
Usage: python3 tools/reference/dpo_train.py [simpo | dpo-sft]
"""
import json
import pathlib
import sys

import datasets.fingerprint
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/llama/tiny-llama"
VARIANT = sys.argv[1] if len(sys.argv) > 1 else "dpo"
SIMPO = VARIANT == "simpo"
# dpo-sft: DPO's sigmoid loss plus its "sft" loss (the chosen completions' mean NLL) at 0.5.
SFT_WEIGHT = 0.5 if VARIANT == "dpo-sft" else None
OUT = ROOT / "tests/fixtures/lora" / VARIANT
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

PAIRS = [
    ("Ticket: printer offline. Reply:", " Restart the spooler, then re-add it.", " Buy a new one."),
    ("Ticket: password reset. Reply:", " Use the reset link we just sent.", " No."),
    ("Ticket: VPN drops hourly. Reply:", " Update the client to 4.2; the timeout is fixed there.",
     " Try again later maybe."),
    ("Ticket: invoice missing. Reply:", " Resent to your billing address.", " Not our problem."),
    ("Q: 2+2?", " 4", " 5"),
    ("Ticket: laptop will not boot after the update that was installed last night. Reply:",
     " Hold the power button for ten seconds, then choose the previous build in recovery.",
     " Reinstall everything from scratch and hope."),
    ("Ticket: refund status. Reply:", " Approved; it reaches your card in 3 days.", " Pending forever."),
    ("Ticket: app crashes on start. Reply:", " Clear the cache in Settings > Apps, then reopen.",
     " It works for me."),
]


def lora_state(model, grads=False):
    """The trained adapter ("default"; TRL adds a frozen copy named "ref") under PEFT's keys."""
    return {k.replace(".default", ""): (v.grad if grads else v).detach().clone().contiguous()
            for k, v in model.named_parameters() if "lora_" in k and ".default." in k}


def main():
    # datasets 5.2's fingerprint pickles pyarrow types its dill cannot: in-memory datasets
    # need no fingerprint of their content.
    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, value: datasets.fingerprint.generate_random_fingerprint())
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    if VARIANT == "dpo":
        (OUT / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(7)
    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation="eager", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    save_file(lora_state(model), OUT / "init.safetensors")
    if SIMPO:
        return simpo(model, tok, rows)
    args = DPOConfig(output_dir=str(OUT / "tmp"), beta=0.1, max_length=48, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, max_steps=10, learning_rate=5e-3, weight_decay=0.01,
                     lr_scheduler_type="linear", warmup_steps=2, max_grad_norm=0.05, seed=7,
                     logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False,
                     dataloader_num_workers=0,
                     **({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, SFT_WEIGHT]} if SFT_WEIGHT else {}))
    seen = []

    class Recording(DPOTrainer):
        def _compute_loss(self, model, inputs, return_outputs):
            with torch.no_grad():
                ref_c, ref_r = self.compute_ref_log_probs(model, inputs)
            seen.append({k: inputs[k].tolist() for k in ("input_ids", "attention_mask", "completion_mask")}
                        | {"ref_chosen_logps": ref_c.tolist(), "ref_rejected_logps": ref_r.tolist()})
            return super()._compute_loss(model, inputs, return_outputs)

    trainer = Recording(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    tokenized = [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in trainer.train_dataset]
    if VARIANT == "dpo":
        (OUT / "tokenized.json").write_text(json.dumps(tokenized))
        # Step 0: the first micro-batch's gradients at the initial adapters.
        first = next(iter(trainer.get_train_dataloader()))
        model.train()
        loss = trainer._compute_loss(model, first, False)
        loss.backward()
        save_file(lora_state(model, grads=True), OUT / "step0.safetensors")
        print("step 0 loss", float(loss))
        model.zero_grad()
        seen.clear()
    trainer._metrics = {"train": __import__("collections").defaultdict(list),
                        "eval": __import__("collections").defaultdict(list)}
    trainer.train()
    (OUT / "batches.json").write_text(json.dumps(seen))
    save_file(lora_state(model), OUT / "final.safetensors")
    history = [h for h in trainer.state.log_history if "loss" in h]
    (OUT / "trajectory.json").write_text(json.dumps(history, indent=1))
    for h in history:
        print(h)
    import shutil
    shutil.rmtree(OUT / "tmp", ignore_errors=True)


def simpo(model, tok, rows):
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    tok.pad_token = tok.eos_token  # CPOTrainer asks for one (DPOTrainer takes EOS itself)
    args = CPOConfig(output_dir=str(OUT / "tmp"), loss_type="simpo", cpo_alpha=0.0, beta=2.0, simpo_gamma=0.5,
                     max_length=128, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=10,
                     learning_rate=5e-3, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=2,
                     max_grad_norm=0.05, seed=7, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                     bf16=False, dataloader_num_workers=0, remove_unused_columns=False)
    seen = []

    class Recording(CPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            c = self.concatenated_inputs(inputs, padding_value=self.pad_token_id)
            seen.append({"input_ids": c["concatenated_input_ids"].tolist(),
                         "attention_mask": c["concatenated_attention_mask"].tolist(),
                         "labels": c["concatenated_labels"].tolist()})
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = Recording(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    (OUT / "batches.json").write_text(json.dumps(seen))
    save_file(lora_state(model), OUT / "final.safetensors")
    history = [h for h in trainer.state.log_history if "loss" in h]
    (OUT / "trajectory.json").write_text(json.dumps(history, indent=1))
    for h in history:
        print(h)
    import shutil
    shutil.rmtree(OUT / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
