"""Writes datasets/support-tickets/{train,eval}.jsonl (chat) and
datasets/ticket-routing/{train,eval}.jsonl (classification) from the Tallyhub scenarios in
tallyhub_scenarios.py plus the hand-written single-turn tickets beside this script.

    python3 tools/datasets/make_support_datasets.py

Deterministic (fixed seed): running it again rewrites the same files. Standard library only.
"""

import itertools
import json
import random
import re
from pathlib import Path

from tallyhub_scenarios import SCENARIOS, SLOTS, SYSTEM

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SEED = 20261124

THANKS = [
    "Thanks, that worked!",
    "Perfect, thank you.",
    "Great, that fixed it.",
]
CLOSING = (
    "Glad to hear it! If anything else comes up, just reply to this ticket and we'll pick it up."
)


def fill(text, k):
    """Fills {slot} fields with the k-th value of each slot (cycling)."""
    return re.sub(r"\{(\w+)\}", lambda m: SLOTS[m.group(1)][k % len(SLOTS[m.group(1)])], text)


def has_slots(text):
    return "{" in text


def conversations(rng):
    """Every conversation the scenarios describe, as lists of (role, content)."""
    out = []
    for s in SCENARIOS:
        if "answer" in s:
            for i, opening in enumerate(s["openings"]):
                for k in range(3 if has_slots(opening) else 1):
                    k += i
                    out.append([("user", fill(opening, k)), ("assistant", fill(s["answer"], k))])
        else:
            combos = itertools.product(enumerate(s["openings"]), enumerate(s["followups"]))
            for n, ((i, opening), (j, followup)) in enumerate(combos):
                k = i + j
                turns = [
                    ("user", fill(opening, k)),
                    ("assistant", fill(s["ask"], k)),
                    ("user", fill(followup, k)),
                    ("assistant", fill(s["resolve"], k)),
                ]
                if n % 3 == 2:  # some tickets end with the customer's thanks
                    turns += [("user", THANKS[n % len(THANKS)]), ("assistant", CLOSING)]
                out.append(turns)
    rng.shuffle(out)
    return out


def as_row(turns, with_system):
    messages = [{"role": r, "content": c} for r, c in turns]
    if with_system:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    return {"messages": messages}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(rows)} rows")


def support_tickets(rng):
    convs = conversations(rng)
    n_eval = len(convs) // 8
    # Half the generated tickets carry the Tallyhub system prompt, half rely on the model's
    # default one — so the tuned model answers in house style either way.
    rows = [as_row(t, with_system=(i % 2 == 0)) for i, t in enumerate(convs)]
    hand = lambda name: [json.loads(l) for l in open(HERE / name, encoding="utf-8")]
    train = rows[n_eval:] + hand("tallyhub_single_turn_train.jsonl")
    evals = rows[:n_eval] + hand("tallyhub_single_turn_eval.jsonl")
    rng.shuffle(train)
    write_jsonl(ROOT / "datasets/support-tickets/train.jsonl", train)
    write_jsonl(ROOT / "datasets/support-tickets/eval.jsonl", evals)


def ticket_routing():
    """A customer's first message → the department. Whole opening templates are held out for
    eval (every fifth), so eval tickets are new phrasings, not just new order numbers."""
    train, evals = [], []
    templates = [(s["area"], o) for s in SCENARIOS for o in s["openings"]]
    for t, (area, opening) in enumerate(templates):
        rows = {fill(opening, k) for k in range(6 if has_slots(opening) else 1)}
        target = evals if t % 5 == 4 else train
        target += [{"text": text, "label": area} for text in sorted(rows)]
    write_jsonl(ROOT / "datasets/ticket-routing/train.jsonl", train)
    write_jsonl(ROOT / "datasets/ticket-routing/eval.jsonl", evals)


if __name__ == "__main__":
    support_tickets(random.Random(SEED))
    ticket_routing()
