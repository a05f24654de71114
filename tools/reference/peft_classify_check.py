#!/usr/bin/env python3
"""Loads a classifier adapter folder written by lora-tune with PEFT's
AutoPeftModelForSequenceClassification (labels from its classifier.json) and checks that PEFT
predicts what `lora-tune predict` predicted for the same rows.

Usage: peft_classify_check.py BASE_MODEL_DIR ADAPTER_DIR ROWS.jsonl PREDICTIONS.jsonl [--max-len 512]
Prints agreement, the largest probability difference, and exits 1 on any disagreement.
"""
import argparse
import json
import shutil
import sys
import tempfile

import torch
from peft import AutoPeftModelForSequenceClassification
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("adapter")
    ap.add_argument("rows")
    ap.add_argument("predictions")
    ap.add_argument("--max-len", type=int, default=512)
    a = ap.parse_args()
    labels = json.load(open(f"{a.adapter}/classifier.json"))
    id2label = {int(k): v for k, v in labels["id2label"].items()}
    # The folder names its base as lora-tune resolved it (e.g. a pip:// reference): point a copy
    # at the local HF directory instead.
    folder = tempfile.mkdtemp()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(f"{a.adapter}/{name}", folder)
    config = json.load(open(f"{folder}/adapter_config.json"))
    config["base_model_name_or_path"] = a.base
    json.dump(config, open(f"{folder}/adapter_config.json", "w"))
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(id2label), id2label=id2label, label2id=labels["label2id"]).eval()
    tok = Tokenizer.from_file(f"{a.base}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(a.max_len)
    ours = [json.loads(line) for line in open(a.predictions)]
    rows = [json.loads(line) for line in open(a.rows) if line.strip()]
    agree, worst = 0, 0.0
    for row, mine in zip(rows, ours):
        ids = torch.tensor([tok.encode(row["text"]).ids])
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0], -1)
        label = id2label[int(p.argmax())]
        agree += label == mine["label"]
        worst = max(worst, max(abs(float(p[i]) - mine["probabilities"][id2label[i]]) for i in id2label))
    print(json.dumps({"rows": len(rows), "same_prediction": agree, "max_abs_probability_diff": worst}))
    sys.exit(0 if agree == len(rows) == len(ours) else 1)


if __name__ == "__main__":
    main()
