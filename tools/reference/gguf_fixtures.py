#!/usr/bin/env python3
"""GGUF files of the tiny fixtures written by llama.cpp's own converter
(`convert_hf_to_gguf.py --outtype f32`, from the llama-cpp-python 0.3.36 sdist: see
gguf_lora.py), the reference for reading GGUF metadata and tensors the way llama.cpp wrote them.

  tests/fixtures/llama/tiny-llama.gguf   tiny-llama (llama3 RoPE scaling): the converter stores
                                         the scaling as the `rope_freqs.weight` tensor, as for
                                         every Llama 3.1+ GGUF

The tiny byte-level tokenizer is not one the converter recognises by its pre-tokenizer hash;
it is named `gpt-2` here (the split such a tokenizer uses), nothing else is changed.
Environment: pip install torch transformers==5.23.0 sentencepiece numpy (DESIGN.md §6).
Usage: python3 tools/reference/gguf_fixtures.py LLAMA_CPP_DIR
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    cpp = pathlib.Path(sys.argv[1])
    sys.path[:0] = [str(cpp / "gguf-py"), str(cpp)]
    import convert_hf_to_gguf
    from conversion import base
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    for name in ("tiny-llama",):
        out = ROOT / "tests/fixtures/llama" / f"{name}.gguf"
        sys.argv = ["convert_hf_to_gguf.py", str(ROOT / "tests/fixtures/llama" / name),
                    "--outtype", "f32", "--outfile", str(out)]
        convert_hf_to_gguf.main()
        print("wrote", out)


if __name__ == "__main__":
    main()
