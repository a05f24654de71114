#!/usr/bin/env python3
"""llama.cpp's own LoRA GGUF for the tiny Llama, the reference for lora-tune's GGUF LoRA writer:
`convert_lora_to_gguf.py --outtype f32 --base tests/fixtures/llama/tiny-llama` run on the PEFT
folder PEFT saved (tests/fixtures/lora/peft). The converter ships in the llama-cpp-python sdist on
PyPI (vendor/llama.cpp; 0.3.36, sha256 832db069…1a2e):

    curl -sLO https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz
    tar xzf llama_cpp_python-0.3.36.tar.gz

Usage: python3 tools/reference/gguf_lora.py LLAMA_CPP_DIR            # writes tests/fixtures/lora/gguf/tiny-lora{,-q8_0}.gguf
       python3 tools/reference/gguf_lora.py LLAMA_CPP_DIR OURS.gguf  # gguf-py parses ours; compares with the fixture
       python3 tools/reference/gguf_lora.py LLAMA_CPP_DIR gemma2     # tiny-gemma2 (gemma3, phi3) with lora/peft-gemma2
                                                                     # (peft_export.py gemma2) → tiny-gemma2-lora.gguf
       python3 tools/reference/gguf_lora.py LLAMA_CPP_DIR qwen3-moe  # tiny-qwen3-moe (qwen2-moe, olmoe, mixtral) with
                                                                     # PEFT's per-expert lora/train-qwen3-moe/peft
                                                                     # (moe_train.py) → tiny-qwen3-moe-lora.gguf: each
                                                                     # layer's experts stacked as 3-D ffn_*_exps lora_a/b
Environment: transformers==5.23.0 torch per DESIGN.md §6; gguf-py from the same llama.cpp tree.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/lora/gguf/tiny-lora.gguf"
MOE = ("qwen3-moe", "qwen2-moe", "olmoe", "mixtral")


def convert(llama_cpp, family=None):
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if family in MOE:
        runs = [("f32", OUT.with_name(f"tiny-{family}-lora.gguf"))]
        base, peft = f"tiny-{family}", f"train-{family}/peft"
    elif family:
        runs = [("f32", OUT.with_name(f"tiny-{family}-lora.gguf"))]
        base, peft = f"tiny-{family}", f"peft-{family}"
    else:
        runs = [("f32", OUT), ("q8_0", OUT.with_name("tiny-lora-q8_0.gguf"))]
        base, peft = "tiny-llama", "peft"
    for outtype, path in runs:
        subprocess.run([sys.executable, str(llama_cpp / "convert_lora_to_gguf.py"), "--outtype", outtype,
                        "--base", str(ROOT / "tests/fixtures/llama" / base), "--outfile", str(path),
                        str(ROOT / "tests/fixtures/lora" / peft)], check=True,
                       env={"PYTHONPATH": f"{llama_cpp / 'gguf-py'}:{llama_cpp}:{os.environ.get('PYTHONPATH', '')}",
                            "PATH": "/usr/bin:/bin"})


def compare(ours):
    from gguf import GGUFReader
    a, b = GGUFReader(ours), GGUFReader(OUT)
    kv = lambda r: {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
    ka, kb = kv(a), kv(b)
    for k in sorted(set(ka) | set(kb)):
        print(f"{k}: ours {ka.get(k)!r} llama.cpp {kb.get(k)!r}")
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    assert set(ta) == set(tb), set(ta) ^ set(tb)
    worst = 0.0
    for name, t in tb.items():
        mine = ta[name]
        assert list(mine.shape) == list(t.shape) and mine.tensor_type == t.tensor_type, name
        worst = max(worst, float(np.abs(np.asarray(mine.data, np.float32) - np.asarray(t.data, np.float32)).max()))
    print(f"{len(tb)} tensors: names, shapes, types equal; max |Δ| = {worst:.3e}")


if __name__ == "__main__":
    cpp = pathlib.Path(sys.argv[1])
    sys.path.insert(0, str(cpp / "gguf-py"))
    if len(sys.argv) > 2 and sys.argv[2] in ("gemma2", "gemma3", "phi3") + MOE:
        convert(cpp, sys.argv[2])
    else:
        compare(sys.argv[2]) if len(sys.argv) > 2 else convert(cpp)
