"""Derives datasets/legal-categories/{train,eval}.jsonl (classification format: `text`, `label`)
from the real ScanCode license database in the `licensedcode-data` PyPI package (CC-BY-4.0,
nexB Inc. and others): a clause of a license's text → the license's ScanCode category.

    python3 tools/datasets/make_legal_categories.py [--wheel PATH]

Reuses make_contracts_dataset.py's reading of the pinned wheel and its clause selection
(substantive paragraphs of 250–700 characters that no other license shares), with up to three
clauses per license and a cap per category, so the eight categories are less unbalanced than
the database (907 Permissive licenses, 74 Source-available). Eval licenses are disjoint from
train licenses (every fifth license, after a seeded shuffle). Deterministic. Standard library.
"""

import argparse
import random

import make_contracts_dataset as contracts

SEED = 20261124
PER_LICENSE = 3
MAX_PER_CATEGORY = {"train": 60, "eval": 12}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", help="a downloaded licensedcode_data-32.1.0 wheel")
    args = ap.parse_args()
    rng = random.Random(SEED)
    contracts.PER_LICENSE = PER_LICENSE
    all_licenses = contracts.licenses(contracts.wheel_bytes(args.wheel))
    rng.shuffle(all_licenses)
    seen = {}
    for lic in all_licenses:
        for p in set(q.lower() for q in contracts.paragraphs(lic[4])):
            seen[p] = seen.get(p, 0) + 1
    common = {p for p, n in seen.items() if n > 1}
    split = {"train": [], "eval": []}
    taken = {s: {c: 0 for c in contracts.RISK} for s in split}
    for i, lic in enumerate(all_licenses):
        which = "eval" if i % 5 == 0 else "train"  # licenses, not clauses, are held out
        category = lic[2]
        for clause in contracts.clauses(lic[4], rng, common):
            if taken[which][category] >= MAX_PER_CATEGORY[which]:
                break
            taken[which][category] += 1
            split[which].append({"text": clause, "label": category})
    contracts.write_splits("legal-categories", split, taken, rng)

if __name__ == "__main__":
    main()
