#!/usr/bin/env python3
"""A model directory with a real model's shapes and no weights to speak of, for `lora-tune plan`
at sizes this machine cannot hold: config.json of a Qwen2.5 size (0.5B, 1.5B, 7B), the tiny
Llama fixture's tokenizer (for the data statistics), and a model.safetensors whose header
lists every tensor while the data region is a hole (a sparse file: no disk blocks, zeros when
read). `plan` reads only headers; training on it would train on zeros.

Usage: python3 benches/shaped_model.py {0.5b|1.5b|7b} OUT_DIR
"""
import json
import pathlib
import shutil
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "llama" / "tiny-llama"

# Qwen2.5's published configs (hidden, intermediate, layers, heads, kv heads, vocab, tied).
SIZES = {
    "0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
}


def main():
    size, out = sys.argv[1], pathlib.Path(sys.argv[2])
    hidden, inter, layers, heads, kv, vocab, tied = SIZES[size]
    d = hidden // heads
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / f, out / f)
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden]}
    if not tied:
        shapes["lm_head.weight"] = [vocab, hidden]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": [hidden],
            p + "post_attention_layernorm.weight": [hidden],
            p + "self_attn.q_proj.weight": [heads * d, hidden],
            p + "self_attn.q_proj.bias": [heads * d],
            p + "self_attn.k_proj.weight": [kv * d, hidden],
            p + "self_attn.k_proj.bias": [kv * d],
            p + "self_attn.v_proj.weight": [kv * d, hidden],
            p + "self_attn.v_proj.bias": [kv * d],
            p + "self_attn.o_proj.weight": [hidden, heads * d],
            p + "mlp.gate_proj.weight": [inter, hidden],
            p + "mlp.up_proj.weight": [inter, hidden],
            p + "mlp.down_proj.weight": [hidden, inter],
        })
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4
        for s in shape:
            n *= s
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)  # the data: a hole
    params = offset // 4
    print(f"{size}: {params:,} parameters, {offset / 1e9:.1f} GB of f32 as a sparse file in {out}")


if __name__ == "__main__":
    main()
