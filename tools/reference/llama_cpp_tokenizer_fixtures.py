#!/usr/bin/env python3
"""Golden token ids for SmolLM2's GGUF as llama.cpp tokenizes it (its `tokenizer.ggml.pre` is
"smollm": digits split one by one, then GPT-2's split — what SmolLM's own tokenizer.json does).

transformers' GGUF converter rebuilds this vocabulary with GPT-2's split only and so differs
wherever a run of whitespace precedes a digit; llama.cpp is the reference for GGUF tokenizers.

Reads the texts of tests/fixtures/tokenizer/smollm2.json (tokenizer_fixtures.py) and writes
tests/fixtures/tokenizer/smollm2-llama-cpp.json: [{"name", "ids"}], the ids of
`Llama.tokenize(text, add_bos=<the GGUF's add_bos_token>, special=True)` (special-token text
becomes its token, as lora-tune's encode with special tokens does).

Environment: pip install llama-cpp-python==0.3.36 (builds llama.cpp from the sdist).
Usage: python3 tools/reference/llama_cpp_tokenizer_fixtures.py SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import pathlib
import sys

from llama_cpp import Llama

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizer"


def main():
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    cases = json.loads((FIXTURES / "smollm2.json").read_text())
    out = [
        {"name": c["name"], "ids": llm.tokenize(c["text"].encode(), add_bos=add_bos, special=True)}
        for c in cases
    ]
    path = FIXTURES / "smollm2-llama-cpp.json"
    path.write_text(json.dumps(out, indent=0) + "\n")
    print(f"{path}: {len(out)} texts, {sum(len(c['ids']) for c in out)} tokens")


if __name__ == "__main__":
    main()
