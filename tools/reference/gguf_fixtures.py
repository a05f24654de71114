#!/usr/bin/env python3
"""GGUF files of the tiny fixtures written by llama.cpp's own converter
(`convert_hf_to_gguf.py --outtype f32`, from the llama-cpp-python 0.3.36 sdist: see
gguf_lora.py), the reference for reading GGUF metadata and tensors the way llama.cpp wrote them.

  tests/fixtures/llama/tiny-llama.gguf   tiny-llama (llama3 RoPE scaling): the converter stores
                                         the scaling as the `rope_freqs.weight` tensor, as for
                                         every Llama 3.1+ GGUF
  tests/fixtures/llama/tiny-qwen3.gguf   tiny-qwen3 (`qwen3`: per-head q/k norms, head_dim 32),
                                         with tiny-llama's tokenizer files
  tests/fixtures/llama/tiny-phi3.gguf    tiny-phi3 (`phi3`: attn_qkv, ffn_up holding gate and up,
                                         rope.dimension_count 8 of 16, LongRoPE factor tensors
                                         and attn_factor), the same tokenizer files with
                                         tokenizer_class GPT2Tokenizer (the converter's Phi-4 path)
  tests/fixtures/llama/tiny-granite.gguf `granite`: its four scalars as attention.scale,
                                         embedding_scale, residual_scale, logit_scale
  tests/fixtures/llama/tiny-olmo2.gguf   `olmo2`: post_attention_norm / post_ffw_norm, no pre-norms,
                                         projection-wide attn_q_norm / attn_k_norm

The tiny byte-level tokenizer is not one the converter recognises by its pre-tokenizer hash;
it is named `gpt-2` (`qwen2` for Qwen3) here, nothing else is changed.
Environment: pip install torch transformers==5.23.0 sentencepiece numpy (DESIGN.md §6).
Usage: python3 tools/reference/gguf_fixtures.py LLAMA_CPP_DIR
"""
import json
import pathlib
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    cpp = pathlib.Path(sys.argv[1])
    sys.path[:0] = [str(cpp / "gguf-py"), str(cpp)]
    import convert_hf_to_gguf
    from conversion import base
    fixtures = ROOT / "tests/fixtures/llama"
    for name, pre in (("tiny-llama", "gpt-2"), ("tiny-qwen3", "qwen2"), ("tiny-phi3", "gpt-2"),
                      ("tiny-granite", "gpt-2"), ("tiny-olmo2", "gpt-2")):
        base.TextModel.get_vocab_base_pre = lambda self, tokenizer, pre=pre: pre
        with tempfile.TemporaryDirectory() as tmp:
            model = pathlib.Path(tmp) / name
            shutil.copytree(fixtures / name, model)
            for f in ("tokenizer.json", "tokenizer_config.json"):
                if not (model / f).exists():
                    shutil.copy(fixtures / "tiny-llama" / f, model / f)
            if name == "tiny-phi3":
                config = json.loads((model / "tokenizer_config.json").read_text())
                config["tokenizer_class"] = "GPT2Tokenizer"
                (model / "tokenizer_config.json").write_text(json.dumps(config))
            out = fixtures / f"{name}.gguf"
            sys.argv = ["convert_hf_to_gguf.py", str(model), "--outtype", "f32", "--outfile", str(out)]
            convert_hf_to_gguf.main()
            print("wrote", out)


if __name__ == "__main__":
    main()
