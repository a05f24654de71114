#!/usr/bin/env python3
"""PEFT on the same classification task and hyperparameters as a lora-tune classification
recipe, for the side-by-side figures in the issue note: accuracy / macro-F1 on the eval split and
seconds per epoch on this CPU (torch threads = 2, as the machine has).

BertForSequenceClassification (or AutoModelForSequenceClassification) from MODEL_DIR, labels =
the sorted labels of the train file, LoraConfig(task_type="SEQ_CLS", r, alpha, dropout,
target_modules) — PEFT trains the classifier in full (modules_to_save). AdamW (betas 0.9/0.999,
eps 1e-8, weight decay 0), cosine schedule with linear warmup (transformers'
get_cosine_schedule_with_warmup, warmup = ceil(ratio · steps)), global-norm clipping at 1.0,
batches shuffled per epoch, padded to the batch's longest row, max_len tokens. Note: PyTorch
runs the frozen base's dropout (hidden/attention 0.1 on MiniLM) in training mode; lora-tune keeps
the frozen base deterministic and applies dropout on the LoRA path and before the head only.

Usage: classify_peft.py MODEL_DIR TRAIN.jsonl EVAL.jsonl [--r 8 --alpha 16 --dropout 0.1
       --lr 2e-3 --epochs 8 --batch 16 --warmup-ratio 0.1 --max-len 128 --seed 42]
Prints one JSON line per epoch and a final JSON summary.
"""
import argparse
import json
import math
import time

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification, get_cosine_schedule_with_warmup


def rows(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def metrics(labels, gold, pred):
    n = len(labels)
    confusion = [[0] * n for _ in range(n)]
    for g, p in zip(gold, pred):
        confusion[g][p] += 1
    f1s = []
    for c in range(n):
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(n))
        support = sum(confusion[c])
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    accuracy = sum(confusion[c][c] for c in range(n)) / max(len(gold), 1)
    return accuracy, sum(f1s) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("train")
    ap.add_argument("eval")
    for name, default in [("r", 8), ("alpha", 16), ("epochs", 8), ("batch", 16), ("max-len", 128), ("seed", 42)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    for name, default in [("dropout", 0.1), ("lr", 2e-3), ("warmup-ratio", 0.1)]:
        ap.add_argument(f"--{name}", type=float, default=default)
    ap.add_argument("--targets", default="query,key,value,dense")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(a.seed)

    train, evaluation = rows(a.train), rows(a.eval)
    labels = sorted({str(r["label"]) for r in train})
    tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(a.max_len)

    def encode(rs):
        return [(tok.encode(r["text"]).ids, labels.index(str(r["label"]))) for r in rs]

    train_enc, eval_enc = encode(train), encode(evaluation)
    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=len(labels))
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=a.r, lora_alpha=a.alpha,
                                             lora_dropout=a.dropout, target_modules=a.targets.split(",")))
    model.print_trainable_parameters()

    def batch(items):
        longest = max(len(ids) for ids, _ in items)
        ids = torch.zeros(len(items), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (t, _) in enumerate(items):
            ids[i, :len(t)] = torch.tensor(t)
            mask[i, :len(t)] = 1
        return ids, mask, torch.tensor([c for _, c in items])

    def evaluate():
        model.eval()
        gold, pred = [], []
        with torch.no_grad():
            for i in range(0, len(eval_enc), a.batch):
                ids, mask, y = batch(eval_enc[i:i + a.batch])
                pred += model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist()
                gold += y.tolist()
        model.train()
        return metrics(labels, gold, pred)

    per_epoch = math.ceil(len(train_enc) / a.batch)
    total = math.ceil(per_epoch * a.epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(a.warmup_ratio * total), total)
    model.train()
    epoch_seconds = []
    gen = torch.Generator().manual_seed(a.seed)
    for epoch in range(a.epochs):
        order = torch.randperm(len(train_enc), generator=gen).tolist()
        started = time.perf_counter()
        for k in range(per_epoch):
            ids, mask, y = batch([train_enc[i] for i in order[k * a.batch:(k + 1) * a.batch]])
            loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        epoch_seconds.append(time.perf_counter() - started)
        accuracy, macro_f1 = evaluate()
        print(json.dumps({"epoch": epoch + 1, "loss": float(loss), "seconds": epoch_seconds[-1],
                          "eval_accuracy": accuracy, "eval_macro_f1": macro_f1}), flush=True)
    accuracy, macro_f1 = evaluate()
    print(json.dumps({"final": True, "eval_accuracy": accuracy, "eval_macro_f1": macro_f1,
                      "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds)}))


if __name__ == "__main__":
    main()
