#!/usr/bin/env python3
"""PEFT's `print_trainable_parameters` line for several LoRA configs on the fixture models and
the real SmolLM2 (loaded from its GGUF by transformers).

Writes tests/fixtures/lora/report.json: [{"model", "lora": recipe-style [lora] keys, "line"}].
Environment: transformers==5.23.0 peft==0.21.2, torch per DESIGN.md §6.
Usage: python3 tools/reference/lora_report.py DIR_WITH_SMOLLM2_GGUF
"""
import contextlib
import io
import json
import pathlib
import sys

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = [
    ("smollm2", {"rank": 8, "targets": SEVEN}),
    ("smollm2", {"rank": 16, "alpha": 32, "targets": "all-linear"}),
    ("tiny-llama", {"rank": 8, "targets": SEVEN}),
    ("tiny-llama", {"rank": 4, "targets": "all-linear"}),
    ("tiny-llama", {"rank": 8, "targets": r".*\.(q_proj|v_proj)"}),
    ("tiny-llama", {"rank": 8, "targets": ["q_proj", "v_proj"], "layers": [1], "rank_pattern": {"v_proj": 2}}),
    ("tiny-qwen2", {"rank": 8, "targets": "all-linear"}),
    ("tiny-qwen3", {"rank": 8, "targets": "all-linear"}),
    ("tiny-granite", {"rank": 8, "targets": "all-linear"}),
    ("tiny-olmo2", {"rank": 8, "targets": "all-linear"}),
    ("tiny-mistral", {"rank": 8, "targets": "all-linear"}),
    ("tiny-gemma2", {"rank": 8, "targets": "all-linear"}),
    ("tiny-gemma3", {"rank": 8, "targets": "all-linear"}),
    ("tiny-phi3", {"rank": 8, "targets": "all-linear"}),
    ("tiny-phi3", {"rank": 4, "targets": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]}),
]


def load(name, gguf_dir):
    if name == "smollm2":
        return AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return AutoModelForCausalLM.from_pretrained(ROOT / "tests/fixtures/llama" / name)


def main():
    out = []
    for name, lora in CASES:
        config = LoraConfig(
            r=lora["rank"], lora_alpha=lora.get("alpha", 16), target_modules=lora["targets"],
            layers_to_transform=lora.get("layers"), rank_pattern=lora.get("rank_pattern", {}),
        )
        model = get_peft_model(load(name, sys.argv[1]), config)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            model.print_trainable_parameters()
        line = buf.getvalue().strip()
        print(name, lora, "->", line)
        out.append({"model": name, "lora": lora, "line": line})
    (ROOT / "tests/fixtures/lora/report.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
