"""Derives datasets/contracts/{train,eval}.jsonl (alpaca format) from the real ScanCode license
database in the `licensedcode-data` PyPI package (CC-BY-4.0, nexB Inc. and others).

    python3 tools/datasets/make_contracts_dataset.py [--wheel PATH]

Downloads the pinned wheel from PyPI (or reads --wheel), takes clauses — substantive paragraphs
of 250–700 characters no other license shares — from license texts whose category is known, and writes two tasks per
clause: identify the license and its category, and flag the risk of shipping a closed-source
commercial product under it (the risk level and reason follow from the category; the reasons are
ours). Eval licenses are disjoint from train licenses. Deterministic. Standard library only.
"""

import argparse
import hashlib
import io
import json
import random
import re
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/7f/50/"
    "b359747c519a09453e9b1126fd8ee8870355f00f3c1f721e8dea7d29c9de/"
    "licensedcode_data-32.1.0-py3-none-any.whl"
)
WHEEL_SHA256 = "18f60bde6dbabbc0a925d45ed80089cdbb7168156a2a1c118737198f9b743b96"
SEED = 20261124

# Category → (risk level, why) for a closed-source commercial product.
RISK = {
    "Permissive": ("low", "permissive terms allow commercial and closed-source use; keep the "
                   "copyright notice and license text with the product"),
    "Public Domain": ("low", "the work is dedicated to the public domain; no conditions apply "
                      "beyond what local law requires"),
    "Copyleft Limited": ("medium", "changes to the licensed files themselves must be shared "
                         "under the same license, but linking it from proprietary code is "
                         "allowed"),
    "Copyleft": ("high", "distributing a product that includes or is derived from this code "
                 "requires releasing the whole product's source under the same license"),
    "Proprietary Free": ("medium", "free to use, but under the owner's own terms — check "
                         "redistribution and field-of-use limits before shipping"),
    "Free Restricted": ("medium", "free for some uses only (for example non-commercial or "
                        "non-military); check that the product's use is allowed"),
    "Source-available": ("high", "the source is visible but commercial or competing use is "
                         "restricted; a separate commercial license is usually needed"),
    "Commercial": ("high", "a paid license agreement with the owner is required before use"),
}
PER_LICENSE = 2  # clauses per license at most
MAX_PER_CATEGORY = {"train": 40, "eval": 6}

IDENTIFY = "Identify the license this clause comes from and its license category."
FLAG = ("Flag the legal risk of shipping a closed-source commercial product that includes "
        "software under this clause.")
MODAL = re.compile(r"\b(shall|must|may|permission|permitted|grant|warrant|liab|distribut|"
                   r"redistribut|copyright)", re.I)


def wheel_bytes(path):
    data = Path(path).read_bytes() if path else urllib.request.urlopen(WHEEL_URL).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"licensedcode-data wheel sha256 {digest}, expected {WHEEL_SHA256}")
    return data


def licenses(wheel):
    """(key, name, category, body text) for each license with a category we use."""
    out = []
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        for name in sorted(z.namelist()):
            if not re.fullmatch(r"licensedcode/data/licenses/[^/]+\.LICENSE", name):
                continue
            text = z.read(name).decode("utf-8", errors="replace")
            m = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
            if not m:
                continue
            meta = dict(re.findall(r"^(\w+): (.*)$", m.group(1), re.M))
            if meta.get("category") not in RISK or meta.get("is_deprecated") == "yes":
                continue
            out.append((meta["key"], meta.get("name", meta["key"]), meta["category"],
                        meta.get("spdx_license_key", ""), m.group(2)))
    return out


def paragraphs(body):
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]


def clauses(body, rng, common):
    """Substantive paragraphs of 250–700 characters, whitespace normalised, that no other
    license shares (boilerplate such as MIT's warranty disclaimer names no license)."""
    good = [p for p in paragraphs(body)
            if 250 <= len(p) <= 700 and MODAL.search(p) and "{{" not in p and "http" not in p
            and p.lower() not in common]
    rng.shuffle(good)
    return good[:PER_LICENSE]


def rows_for(lic, clause):
    key, name, category, spdx, _ = lic
    level, why = RISK[category]
    ident = f"{name} ({spdx or key})"
    return [
        {"instruction": IDENTIFY, "input": clause,
         "output": f"License: {ident}\nCategory: {category}"},
        {"instruction": FLAG, "input": clause,
         "output": f"Risk: {level}. This clause is from the {ident}, a {category.lower()} "
                   f"license: {why}."},
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", help="a downloaded licensedcode_data-32.1.0 wheel")
    args = ap.parse_args()
    rng = random.Random(SEED)
    all_licenses = licenses(wheel_bytes(args.wheel))
    rng.shuffle(all_licenses)
    seen = {}
    for lic in all_licenses:
        for p in set(q.lower() for q in paragraphs(lic[4])):
            seen[p] = seen.get(p, 0) + 1
    common = {p for p, n in seen.items() if n > 1}
    split = {"train": [], "eval": []}
    taken = {s: {c: 0 for c in RISK} for s in split}
    for i, lic in enumerate(all_licenses):
        which = "eval" if i % 7 == 0 else "train"  # licenses, not clauses, are held out
        category = lic[2]
        for clause in clauses(lic[4], rng, common):
            if taken[which][category] >= MAX_PER_CATEGORY[which]:
                break
            taken[which][category] += 1
            split[which] += rows_for(lic, clause)
    write_splits("contracts", split, taken, rng)


def write_splits(dataset, split, taken, rng):
    """Shuffles and writes datasets/DATASET/{train,eval}.jsonl, one JSON object per line."""
    for which, rows in split.items():
        rng.shuffle(rows)
        path = ROOT / f"datasets/{dataset}/{which}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{path.relative_to(ROOT)}: {len(rows)} rows; clauses per category {taken[which]}")


if __name__ == "__main__":
    main()
