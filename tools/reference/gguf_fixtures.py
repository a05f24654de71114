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
  tests/fixtures/llama/tiny-qwen3-moe.gguf, tiny-qwen3-moe-fused.gguf, tiny-qwen2-moe.gguf,
  tiny-olmoe.gguf, tiny-mixtral.gguf     the mixtures of experts (`qwen3moe`, `qwen2moe`, `olmoe`,
                                         and Mixtral as `llama` with expert_count): the router as
                                         ffn_gate_inp, the experts stacked as 3-D ffn_{gate,up,
                                         down}_exps from either on-disk layout, Qwen2-MoE's shared
                                         expert as ffn_*_shexp and ffn_gate_inp_shexp. Their
                                         routing matches what llama.cpp hard-codes per
                                         architecture (renormalised for qwen3moe and llama, not
                                         for qwen2moe and olmoe), so transformers' logits of the
                                         HF fixture are the reference for the GGUF too
  tests/fixtures/llama/small-qwen3-moe-q4_k_m.gguf  a random Qwen3-MoE wide enough for the
                                         K-quants (hidden 256, 4 experts of 256, 2 layers; seed
                                         5) converted and quantised to Q4_K_M by llama.cpp: its
                                         stacked experts in Q4_K and Q6_K super-blocks
  tests/fixtures/llama/tiny-granitemoe.gguf  `granitemoe`: the converter splits each layer's
                                         input_linear into ffn_gate_exps and ffn_up_exps (read
                                         back joined); tiny-granitemoe-q8_0.gguf is it in Q8_0
  tests/fixtures/llama/tiny-qwen3-moe-q8_0.gguf  tiny-qwen3-moe.gguf quantised to Q8_0 by
                                         llama.cpp's own `llama_model_quantize` (the experts'
                                         stacked tensors in Q8_0 blocks; the tiny rows are too
                                         short for the 256-value K-quants)

The tiny byte-level tokenizer is not one the converter recognises by its pre-tokenizer hash;
it is named `gpt-2` (`qwen2` for Qwen3) here, nothing else is changed.
Environment: pip install torch transformers==5.23.0 sentencepiece numpy (DESIGN.md §6), and
llama-cpp-python==0.3.36 for the Q8_0 file.
Usage: python3 tools/reference/gguf_fixtures.py LLAMA_CPP_DIR [FIXTURE ...]  (default: all)
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
    only = sys.argv[2:]
    for name, pre in (("tiny-llama", "gpt-2"), ("tiny-qwen3", "qwen2"), ("tiny-phi3", "gpt-2"),
                      ("tiny-granite", "gpt-2"), ("tiny-olmo2", "gpt-2"),
                      ("tiny-qwen3-moe", "qwen2"), ("tiny-qwen3-moe-fused", "qwen2"),
                      ("tiny-qwen2-moe", "qwen2"), ("tiny-olmoe", "gpt-2"), ("tiny-mixtral", "gpt-2"),
                      ("tiny-granitemoe", "gpt-2")):
        if only and name not in only:
            continue
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
        if name == "tiny-granitemoe":
            quantize_q8_0(out, fixtures / "tiny-granitemoe-q8_0.gguf")
        if name == "tiny-qwen3-moe":
            quantize_q8_0(out, fixtures / "tiny-qwen3-moe-q8_0.gguf")
            small_kquant_moe(fixtures, convert_hf_to_gguf)


def quantize_q8_0(src, out, ftype="LLAMA_FTYPE_MOSTLY_Q8_0"):
    import ctypes
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) == 0
    print("wrote", out)


def small_kquant_moe(fixtures, convert_hf_to_gguf):
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    torch.manual_seed(5)
    config = Qwen3MoeConfig(vocab_size=256, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=64, num_hidden_layers=2, intermediate_size=512, moe_intermediate_size=256,
                            num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, tie_word_embeddings=False,
                            max_position_embeddings=128, rms_norm_eps=1e-5)
    model = Qwen3MoeForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "small-qwen3-moe"
        model.save_pretrained(src)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(fixtures / "tiny-llama" / f, src / f)
        f32 = pathlib.Path(tmp) / "small-qwen3-moe.gguf"
        sys.argv = ["convert_hf_to_gguf.py", str(src), "--outtype", "f32", "--outfile", str(f32)]
        convert_hf_to_gguf.main()
        quantize_q8_0(f32, fixtures / "small-qwen3-moe-q4_k_m.gguf", "LLAMA_FTYPE_MOSTLY_Q4_K_M")


if __name__ == "__main__":
    main()
