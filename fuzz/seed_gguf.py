#!/usr/bin/env python3
"""A complete small GGUF model for the gguf fuzz target's seed corpus: the tiny Llama fixture
(tests/fixtures/llama/tiny-llama) with llama metadata, its byte-level tokenizer as a gpt2 vocab
and its weights as Q8_0 (F32 for norms), so mutations reach the config, tokenizer and
dequantisation code and not only the header parser.
Usage: python3 fuzz/seed_gguf.py OUT.gguf   (pip install gguf==0.19.0 numpy safetensors)
"""
import json
import pathlib
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file

TINY = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "llama" / "tiny-llama"
config = json.loads((TINY / "config.json").read_text())
tokenizer = json.loads((TINY / "tokenizer.json").read_text())

w = gguf.GGUFWriter(sys.argv[1], "llama")
w.add_context_length(config["max_position_embeddings"])
w.add_embedding_length(config["hidden_size"])
w.add_feed_forward_length(config["intermediate_size"])
w.add_block_count(config["num_hidden_layers"])
w.add_head_count(config["num_attention_heads"])
w.add_head_count_kv(config["num_key_value_heads"])
w.add_rope_dimension_count(config["head_dim"])
w.add_layer_norm_rms_eps(config["rms_norm_eps"])
w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
w.add_vocab_size(config["vocab_size"])
vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda kv: kv[1])
w.add_tokenizer_model("gpt2")
tokens = [t for t, _ in vocab]
tokens[-1] = "he"  # one merge, so the BPE has merges to parse (byte 0xFF becomes <unk>)
w.add_token_list(tokens)
w.add_token_types([3 if i < 3 else 1 for i in range(len(vocab))])
w.add_token_merges(["h e"])
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")

names = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
parts = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
for name, t in load_file(TINY / "model.safetensors").items():
    if name not in names:
        _, _, layer, *rest = name.split(".")
        names[name] = f"blk.{layer}.{parts['.'.join(rest[:-1])]}.weight"
    if t.ndim == 2:
        q = gguf.quants.quantize(t.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(names[name], q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor(names[name], t.astype(np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(sys.argv[1], pathlib.Path(sys.argv[1]).stat().st_size, "bytes")
