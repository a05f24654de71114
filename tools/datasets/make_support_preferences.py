#!/usr/bin/env python3
"""datasets/support-preferences from datasets/support-tickets: one preference pair per ticket,
the ticket's opening turns (the system prompt where it has one, the customer's first message) as
the prompt, the reference agent reply as `chosen`, and a worse reply as `rejected`, one of three
kinds in turn (ticket i: i mod 3):

  0  a curt non-answer (six stock replies, in turn)
  1  the first reply of another ticket of the same file (half the file away): fluent, in house
     style, and about something else
  2  the reference reply cut to its first sentence: polite, but without the answer

Deterministic: no sampling, no model. Writes train.jsonl (from train.jsonl's 247 tickets) and
eval.jsonl (from eval.jsonl's 37, held out) in the conversational preference format
`{"prompt": [...], "chosen": [...], "rejected": [...]}`.
Usage: python3 tools/datasets/make_support_preferences.py
"""
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
CURT = [
    "Please check our help center.",
    "We can't help with that.",
    "Try again later.",
    "That's not something we handle.",
    "Contact your bank.",
    "Restart your computer and see.",
]


def first_sentence(text):
    match = re.match(r"(.+?[.!?])(\s|$)", text, re.S)
    return match.group(1) if match else text


def pairs(tickets):
    out = []
    n = len(tickets)
    for i, t in enumerate(tickets):
        messages = t["messages"]
        reply = next(k for k, m in enumerate(messages) if m["role"] == "assistant")
        prompt, chosen = messages[:reply], messages[reply]["content"]
        kind = i % 3
        if kind == 0:
            rejected = CURT[(i // 3) % len(CURT)]
        elif kind == 1:
            other = tickets[(i + n // 2) % n]["messages"]
            rejected = next(m["content"] for m in other if m["role"] == "assistant")
        else:
            rejected = first_sentence(chosen)
        if rejected.strip() == chosen.strip():  # a one-sentence reply: fall back to a curt one
            rejected = CURT[i % len(CURT)]
        out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}]})
    return out


def main():
    out_dir = ROOT / "datasets/support-preferences"
    for split in ("train", "eval"):
        tickets = [json.loads(line) for line in (ROOT / f"datasets/support-tickets/{split}.jsonl").read_text().splitlines()
                   if line.strip()]
        rows = pairs(tickets)
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(split, len(rows), "pairs")


if __name__ == "__main__":
    main()
