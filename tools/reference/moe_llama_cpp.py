#!/usr/bin/env python3
"""llama.cpp itself (llama-cpp-python 0.3.36) on the mixture-of-experts GGUFs that
gguf_fixtures.py converted and on the GGUF LoRAs that gguf_lora.py converted from PEFT's
per-expert folders (lora-tune writes those byte for byte: tests/gguf_lora.rs):

  1. tests/fixtures/llama/tiny-<name>.gguf alone gives transformers' logits of the HF fixture
     (reference.safetensors): llama.cpp routes as transformers does for these configs;
  2. with tests/fixtures/lora/gguf/tiny-<family>-lora.gguf it gives PEFT's adapted logits on the
     first training micro-batch (lora/train-<family>/logits.safetensors): llama.cpp applies the
     stacked 3-D expert adapters to the experts each token is routed to. For GraniteMoE the GGUF
     LoRA is the one `lora-tune export --format gguf` writes from PEFT's target_parameters folder
     (build target/release/lora-tune first).

Each row is evaluated without its padding. Prints max |Δlogit| / max |logit| per file.
Environment: transformers==5.23.0 torch numpy safetensors, llama-cpp-python==0.3.36 (on a CPU with
AMX build it with CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON").
Usage: python3 tools/reference/moe_llama_cpp.py LLAMA_CPP_DIR
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures"
CASES = [  # (GGUF, HF fixture, adapter family)
    ("tiny-qwen3-moe", "tiny-qwen3-moe", "qwen3-moe"),
    ("tiny-qwen3-moe-fused", "tiny-qwen3-moe", None),
    ("tiny-qwen2-moe", "tiny-qwen2-moe", "qwen2-moe"),
    # tiny-olmoe.gguf is left out: llama.cpp's olmoe wants attn_k_norm n_embd wide (no grouped
    # k/v heads, as the released OLMoE has), and the fixture groups its k/v heads.
    ("tiny-mixtral", "tiny-mixtral", "mixtral"),
    # GraniteMoE: the converter cannot convert PEFT's target_parameters folder, so the GGUF LoRA
    # is lora-tune's own (`lora-tune export --format gguf`, gate_up split into gate and up).
    ("tiny-granitemoe", "tiny-granitemoe", "granitemoe-fused"),
]


# The KV cache in f32 (llama.cpp's default is f16, which alone moves these logits by ~3e-4).
F32_CACHE = {"type_k": 0, "type_v": 0}


def worst(llm, ids, mask, want):
    out = 0.0
    for row, (tokens, keep) in enumerate(zip(ids.tolist(), mask.tolist())):
        at = [i for i, m in enumerate(keep) if m]
        llm.reset()
        llm.eval([tokens[i] for i in at])
        got = np.array(llm.scores[: len(at)])
        out = max(out, float(np.abs(got - want[row][at]).max() / np.abs(want[row][at]).max()))
    return out


def main():
    cpp = pathlib.Path(sys.argv[1])
    sys.path[:0] = [str(cpp / "gguf-py"), str(pathlib.Path(__file__).parent)]
    from gemma_gguf_fixtures import with_a_merge
    from llama_cpp import Llama

    batch = json.loads((FIXTURES / "lora/train/batches.json").read_text())[0]
    train_ids, train_mask = np.array(batch["input_ids"]), np.array(batch["attention_mask"])
    with tempfile.TemporaryDirectory() as tmp:
        for name, hf, family in CASES:
            plain = pathlib.Path(tmp) / f"{name}.gguf"
            with_a_merge(FIXTURES / f"llama/{name}.gguf", plain)
            ref = load_file(FIXTURES / f"llama/{hf}/reference.safetensors")
            llm = Llama(model_path=str(plain), n_ctx=64, logits_all=True, verbose=False, **F32_CACHE)
            base = worst(llm, ref["input_ids"], ref["attention_mask"], ref["logits"])
            line = f"{name}.gguf: llama.cpp vs transformers {base:.1e}"
            assert base < 1e-4, line
            if family == "granitemoe-fused":
                lora = pathlib.Path(tmp) / "tiny-granitemoe-lora.gguf"
                subprocess.run([str(ROOT / "target/release/lora-tune"), "export", "--format", "gguf",
                                "--adapter", str(FIXTURES / "lora/train-granitemoe-fused/peft"),
                                "--base", str(FIXTURES / "llama/tiny-granitemoe.gguf"),
                                "--out", str(lora)], check=True)
            elif family:
                lora = FIXTURES / f"lora/gguf/tiny-{family}-lora.gguf"
            if family:
                llm = Llama(model_path=str(plain), lora_path=str(lora), n_ctx=64, logits_all=True,
                            verbose=False, **F32_CACHE)
                want = load_file(FIXTURES / f"lora/train-{family}/logits.safetensors")["logits"]
                adapted = worst(llm, train_ids, train_mask, want)
                line += f"; with {lora.name} vs PEFT {adapted:.1e}"
                assert adapted < 1e-4, line
            print(line)


if __name__ == "__main__":
    main()
