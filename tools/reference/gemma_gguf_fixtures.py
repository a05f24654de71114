#!/usr/bin/env python3
"""Gemma 2 and Gemma 3 GGUFs written by llama.cpp's own converter (the llama-cpp-python 0.3.36
sdist, as gguf_fixtures.py), and what llama.cpp computes from them written as a transformers
model, so the GGUF loader is proven against transformers and llama.cpp at once.

A Gemma GGUF does not carry everything its HF config did; llama.cpp fills the gaps:
  - Gemma 2's converter drops `lm_head.weight`: the logits come from the token embeddings
    (tied; Gemma 3's keeps an untied head as `output.weight`);
  - `query_pre_attn_scalar` is not written: llama.cpp scales the scores by head_dim^-1/2, or by
    (hidden / heads)^-1/2 for the 27B models (46 Gemma 2 / 62 Gemma 3 layers) — exactly the
    scalars Google's configs use for each size;
  - the window pattern is not written: every 2nd (Gemma 2) / 6th (Gemma 3) layer is global;
  - the norms are stored as 1 + w.
So each GGUF gets a twin directory holding the transformers config that computes the same
(Gemma 2 tied, query_pre_attn_scalar = head_dim, layer_types from the pattern), its logits on the
fixtures' inputs (reference.safetensors) and greedy continuations (greedy.json); this script
checks llama.cpp's logits for the same tokens against them.

  tests/fixtures/llama/tiny-gemma2.gguf       tiny-gemma2 converted (2 layers: local, global)
  tests/fixtures/llama/tiny-gemma2-gguf/       its twin
  tests/fixtures/llama/tiny-gemma3-6l.gguf    a 6-layer tiny Gemma 3 (5 local layers with RoPE
                                              base 10^4, 1 global with base 10^6 and linear x4
                                              scaling), made here and converted
  tests/fixtures/llama/tiny-gemma3-6l-gguf/    its twin
  tests/fixtures/lora/peft-gemma2-gguf/        logits.safetensors: lora/peft-gemma2 (PEFT's
                                              folder for tiny-gemma2) on the Gemma 2 twin, on
                                              the first training micro-batch
  tests/fixtures/lora/peft-gemma3-6l/          a PEFT folder for the 6-layer Gemma 3 (r=4, α=8,
                                              the seven targets, seeded nonzero B) saved by
                                              `save_pretrained`, and its logits on the twin
With `merged DIR2 DIR3` (what lora-tune merged onto the two GGUFs with those adapters), loads
each with transformers' AutoModelForCausalLM and prints the max |Δlogit| against the PEFT logits.

The tiny byte-level tokenizer has no tokenizer.model, so Gemma2Model.set_vocab takes the
converter's gpt2 path (Gemma3Model does that by itself), named `gpt-2`; nothing else is changed.
Environment: pip install torch transformers==5.23.0 numpy llama-cpp-python==0.3.36.
Usage: python3 tools/reference/gemma_gguf_fixtures.py LLAMA_CPP_DIR | merged DIR2 DIR3
"""
import json
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

from family_fixtures import COMMON, greedy
from llama_fixtures import INPUT_IDS, MASK
from peft_export import batch

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/llama"
LORA = ROOT / "tests/fixtures/lora"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_logits(model, out):
    ids, mask = batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    out.mkdir(parents=True, exist_ok=True)
    save_file({"logits": logits.contiguous()}, out / "logits.safetensors")


def adapters(twin2, twin3):
    from peft import LoraConfig, PeftModel, get_peft_model
    peft_logits(PeftModel.from_pretrained(twin2, LORA / "peft-gemma2").eval(), LORA / "peft-gemma2-gguf")
    torch.manual_seed(7)
    model = get_peft_model(twin3, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                             lora_dropout=0.0, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    out = LORA / "peft-gemma3-6l"
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)
    peft_logits(model.eval(), out)


def check_merged(merged2, merged3):
    from transformers import AutoModelForCausalLM
    ids, mask = batch()
    for merged, want in ((merged2, "peft-gemma2-gguf"), (merged3, "peft-gemma3-6l")):
        model = AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager").eval()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        want = load_file(LORA / want / "logits.safetensors")["logits"]
        print(f"AutoModelForCausalLM.from_pretrained({merged}) [{type(model).__name__}]: "
              f"max |Δlogit| vs PEFT on the twin = {(logits - want).abs().max().item():.3e}")


def gemma3_six_layers():
    return Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 6}, head_dim=16, tie_word_embeddings=False,
        query_pre_attn_scalar=24, sliding_window=4,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})


def llama_cpp_twin(cls, config, weights, tied):
    """The transformers model computing what llama.cpp computes from the converted file."""
    twin = json.loads(config.to_json_string())
    twin["tie_word_embeddings"] = tied
    twin["query_pre_attn_scalar"] = twin["head_dim"]
    twin = type(config).from_dict(twin)
    twin._attn_implementation = "eager"
    model = cls(twin).eval()
    if tied:
        weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    if tied:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def convert(cpp, model_dir, out):
    import convert_hf_to_gguf
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outtype", "f32", "--outfile", str(out)]
    convert_hf_to_gguf.main()


def write_twin(model, twin_dir):
    twin_dir.mkdir(exist_ok=True)
    model.config.to_json_file(twin_dir / "config.json")
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS, attention_mask=MASK).logits
    save_file({"input_ids": INPUT_IDS.to(torch.int64), "attention_mask": MASK.to(torch.int64),
               "logits": logits.contiguous()}, twin_dir / "reference.safetensors")
    (twin_dir / "greedy.json").write_text(json.dumps(greedy(model)) + "\n")
    return logits


def with_a_merge(gguf, out):
    """A copy of `gguf` with one BPE merge: llama.cpp refuses a BPE vocabulary without merges
    (the tiny byte-level one has none); evaluating token ids never tokenizes."""
    import gguf as gg
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata
    reader = gg.GGUFReader(gguf, "r")
    arch = reader.fields["general.architecture"].contents()
    writer = gg.GGUFWriter(out, arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(reader, writer, {"tokenizer.ggml.merges": MetadataDetails(
        gg.GGUFValueType.ARRAY, ["a b"], sub_type=gg.GGUFValueType.STRING)}, [])
    writer.close()


def check_llama_cpp(gguf, logits):
    """llama.cpp's logits for each unpadded row against the twin's."""
    from llama_cpp import Llama
    with tempfile.TemporaryDirectory() as tmp:
        plain = pathlib.Path(tmp) / gguf.name
        with_a_merge(gguf, plain)
        llm = Llama(model_path=str(plain), n_ctx=64, logits_all=True, verbose=False)
        return compare(llm, gguf, logits)


def compare(llm, gguf, logits):
    worst = 0.0
    for row, mask in zip(INPUT_IDS.tolist(), MASK.tolist()):
        tokens = [t for t, m in zip(row, mask) if m]
        llm.reset()
        llm.eval(tokens)
        got = np.array(llm.scores[: len(tokens)])
        want = logits[INPUT_IDS.tolist().index(row)][[i for i, m in enumerate(mask) if m]].numpy()
        worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
    print(gguf.name, "llama.cpp vs twin: max |Δlogit| / max |logit| =", f"{worst:.1e}")
    # ggml's CPU GELU and softmax are table/approximation based: agreement to ~1e-3 proves the
    # twin computes what llama.cpp does (a wrong scale or pattern gives differences of order 1).
    assert worst < 5e-3, worst


def main():
    if sys.argv[1] == "merged":
        return check_merged(sys.argv[2], sys.argv[3])
    cpp = pathlib.Path(sys.argv[1])
    sys.path[:0] = [str(cpp / "gguf-py"), str(cpp)]
    from conversion import base, gemma
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    gemma.Gemma2Model.set_vocab = lambda self: self._set_vocab_gpt2()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        # Gemma 2: the committed tiny-gemma2.
        src = tmp / "tiny-gemma2"
        shutil.copytree(FIXTURES / "tiny-gemma2", src)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(FIXTURES / "tiny-llama" / f, src / f)
        gguf = FIXTURES / "tiny-gemma2.gguf"
        convert(cpp, src, gguf)
        config = Gemma2Config.from_pretrained(src)
        twin2 = llama_cpp_twin(Gemma2ForCausalLM, config, load_file(src / "model.safetensors"), True)
        check_llama_cpp(gguf, write_twin(twin2, FIXTURES / "tiny-gemma2-gguf"))
        # Gemma 3: six layers, so the default pattern has a global layer.
        src = tmp / "tiny-gemma3-6l"
        torch.manual_seed(16)
        model = Gemma3ForCausalLM(gemma3_six_layers()).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.2)
        model.save_pretrained(src, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(FIXTURES / "tiny-llama" / f, src / f)
        gguf = FIXTURES / "tiny-gemma3-6l.gguf"
        convert(cpp, src, gguf)
        twin3 = llama_cpp_twin(Gemma3ForCausalLM, model.config, load_file(src / "model.safetensors"),
                               False)
        check_llama_cpp(gguf, write_twin(twin3, FIXTURES / "tiny-gemma3-6l-gguf"))
        adapters(twin2, twin3)


if __name__ == "__main__":
    main()
