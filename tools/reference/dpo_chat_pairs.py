#!/usr/bin/env python3
"""Conversational and string preference pairs tokenised by TRL's own DPOTrainer dataset
preparation (trl 1.16.0 `DPOTrainer._prepare_dataset`: prompt extraction, EOS on string
completions, `apply_chat_template` with the generation prompt on the prompt and without on
prompt + completion, the completion cut where their tokens part) with SmolLM2-135M-Instruct's
tokenizer as transformers loads it from the pinned GGUF (its ChatML template, default system
prompt included) — the reference for lora-tune's preference encoding with a chat template.

Reads tests/fixtures/data/preference.jsonl (explicit and implicit prompts, conversational and
string rows); writes tests/fixtures/data/preference_expected.json: per row, TRL's prompt_ids,
chosen_ids and rejected_ids (untruncated; the recipe's max_length is larger).
Environment: transformers==5.23.0 trl==1.16.0 datasets (+ gguf).
Usage: python3 tools/reference/dpo_chat_pairs.py DIR_WITH_SMOLLM2_GGUF
"""
import json
import pathlib
import sys
import types

import datasets.fingerprint
from datasets import Dataset
from transformers import AutoTokenizer
from trl import DPOConfig, DPOTrainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/fixtures/data"


def main():
    # datasets 5.2's fingerprint pickles pyarrow types its dill cannot (in-memory data needs none).
    datasets.fingerprint.Hasher.hash = classmethod(lambda cls, v: datasets.fingerprint.generate_random_fingerprint())
    tok = AutoTokenizer.from_pretrained(sys.argv[1], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    rows = [json.loads(line) for line in (DATA / "preference.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for row in rows:  # one at a time: TRL decides a dataset's kind from its first row
        args = DPOConfig(output_dir="/tmp/dpo-chat-pairs", max_length=4096, report_to=[], use_cpu=True, bf16=False)
        this = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tok), Dataset.from_list([row]), tok,
                                           args, "train")
        out.append({k: this[0][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")})
    (DATA / "preference_expected.json").write_text(json.dumps(out))
    print("wrote", len(out), "rows")


if __name__ == "__main__":
    main()
