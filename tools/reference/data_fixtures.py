#!/usr/bin/env python3
"""Token ids and labels of the example rows in tests/fixtures/data/*.jsonl, as the HF side computes
them for SmolLM2-135M-Instruct (tokenizer loaded by transformers from the pinned GGUF), the
reference for lora-tune's data encoding.

- chat: the whole conversation rendered once with `apply_chat_template` (SmolLM2's ChatML,
  including its default system prompt when a row has none; a row's "system" field becomes the
  first message) and tokenised once with offsets; a token is labelled when it starts inside an
  assistant turn, i.e. between the rendering of the turns before it with the generation prompt
  and the rendering that includes it (the answer through <|im_end|> and its newline).
- text: tok(text) + EOS, all labelled.
- prompt_completion: tok(prompt) unlabelled + tok(completion, no special tokens) + EOS labelled.
- alpaca: as prompt_completion with the Stanford Alpaca prompt.
Writes tests/fixtures/data/expected.json: {file: [{"ids": [...], "labels": [...]}]} (-100 = no loss).
Usage: python3 tools/reference/data_fixtures.py DIR_WITH_SMOLLM2_GGUF
Environment: transformers==5.23.0 (+ tokenizers, gguf 0.19.0).
"""
import json
import pathlib
import sys

from transformers import AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/fixtures/data"


def alpaca_prompt(instruction, inp):
    if inp.strip():
        return ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n")
    return ("Below is an instruction that describes a task. Write a response that appropriately completes "
            f"the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def chat(tok, row):
    messages = ([{"role": "system", "content": row["system"]}] if "system" in row else []) + row["messages"]
    full = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
            end = len(tok.apply_chat_template(messages[:i + 1], tokenize=False))
            spans.append((start, end))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [t if any(s <= a < e for s, e in spans) else -100
              for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    return enc["input_ids"], labels


def prompt_completion(tok, prompt, completion):
    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p + c, [-100] * len(p) + c


def main(gguf_dir):
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = {}
    for name in ("chat", "text", "prompt_completion", "alpaca"):
        rows = [json.loads(l) for l in (DATA / f"{name}.jsonl").read_text().splitlines() if l.strip()]
        encoded = []
        for row in rows:
            if name == "chat":
                ids, labels = chat(tok, row)
            elif name == "text":
                ids = tok(row["text"])["input_ids"] + [tok.eos_token_id]
                labels = list(ids)
            elif name == "prompt_completion":
                ids, labels = prompt_completion(tok, row["prompt"], row["completion"])
            else:
                ids, labels = prompt_completion(tok, alpaca_prompt(row["instruction"], row["input"]), row["output"])
            encoded.append({"ids": ids, "labels": labels})
        out[f"{name}.jsonl"] = encoded
    (DATA / "expected.json").write_text(json.dumps(out) + "\n")
    print({k: [len(e["ids"]) for e in v] for k, v in out.items()})


if __name__ == "__main__":
    main(sys.argv[1])
