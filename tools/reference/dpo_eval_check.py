#!/usr/bin/env python3
"""A trained DPO adapter (lora-tune's PEFT export) reloaded in PEFT and evaluated as TRL does:
the recipe's eval pairs prepared by TRL 1.16's DPOTrainer (`_prepare_dataset`, its collator),
each row's summed completion log-probability with the adapter (PeftModel.from_pretrained on
transformers' reading of the GGUF) and without it (`disable_adapter`: the reference), then the
DPO loss (β), reward accuracy and margin over the pairs — what `lora-tune eval RECIPE --adapter
DIR` prints for the same pairs.
Environment: transformers==5.23.0 peft==0.21.2 trl==1.16.0 datasets (+ gguf).
Usage: python3 tools/reference/dpo_eval_check.py DIR_WITH_SMOLLM2_GGUF ADAPTER_DIR EVAL_JSONL [BETA] [MAX_LENGTH]
"""
import json
import sys
import types

import datasets.fingerprint
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference


def main():
    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, v: datasets.fingerprint.generate_random_fingerprint())
    gguf_dir, adapter, eval_path = sys.argv[1:4]
    beta = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1
    max_length = int(sys.argv[5]) if len(sys.argv) > 5 else 384
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf, dtype=torch.float32,
                                                 attn_implementation="eager")
    model = PeftModel.from_pretrained(model, adapter).eval()
    rows = [json.loads(line) for line in open(eval_path) if line.strip()]
    args = DPOConfig(output_dir="/tmp/dpo-eval-check", max_length=max_length, report_to=[], use_cpu=True, bf16=False)
    data = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tok), Dataset.from_list(rows), tok, args,
                                       "eval")
    collate = DataCollatorForPreference(pad_token_id=tok.pad_token_id or tok.eos_token_id, max_length=max_length)

    def logps(batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        mask = batch["completion_mask"][:, 1:]
        per = torch.gather(F.log_softmax(out.float(), -1), 2, batch["input_ids"][:, 1:, None])[..., 0]
        return (per * mask).sum(1)

    losses, accuracies, margins = [], [], []
    with torch.no_grad():
        for start in range(0, len(data), 2):
            batch = collate([data[i] for i in range(start, min(start + 2, len(data)))])
            policy = logps(batch)
            with model.disable_adapter():
                reference = logps(batch)
            n = policy.shape[0] // 2
            ratio = policy - reference
            chosen, rejected = beta * ratio[:n], beta * ratio[n:]
            losses += (-F.logsigmoid(chosen - rejected)).tolist()
            accuracies += (chosen > rejected).float().tolist()
            margins += (chosen - rejected).tolist()
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    print(json.dumps({"pairs": len(losses), "loss": mean(losses), "rewards/accuracies": mean(accuracies),
                      "rewards/margins": mean(margins)}))


if __name__ == "__main__":
    main()
