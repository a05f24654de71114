#!/usr/bin/env python3
"""Golden values for GGUF dequantisation, from gguf-py (the code transformers itself calls to
dequantise GGUF checkpoints: `from_pretrained(..., gguf_file=...)`).

Writes tests/fixtures/dequant/:
  <TYPE>.raw     4 blocks of random bytes for that ggml type, with finite f16 scale fields
  <TYPE>.f32     gguf.quants.dequantize(raw) as little-endian f32 (compared bit for bit)
  smollm2.json   sha256 of the dequantised f32 bytes of whole tensors of the real SmolLM2 GGUF;
                 `hf:` entries are after transformers' own LlamaTensorProcessor (Q/K un-permuted)

Environment: pip install numpy gguf==0.19.0 transformers==5.23.0 (no torch needed).
Usage: python3 tools/reference/dequant_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import hashlib
import json
import pathlib
import sys

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "dequant"
SEED = 20261123
# Byte ranges of each block's f16 scale fields (d, dmin), per ggml's block structs.
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
BLOCKS = 4


def random_blocks(rng, qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F16:
        return rng.standard_normal(64).astype(np.float16).view(np.uint8)
    if qtype == T.BF16:
        return (rng.standard_normal(64).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
    for offset in F16_FIELDS[qtype]:
        scale = (rng.uniform(0.001, 0.05, size=BLOCKS)).astype(np.float16)
        raw[:, offset:offset + 2] = scale.view(np.uint8).reshape(BLOCKS, 2)
    return raw.reshape(-1)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for qtype in [T.F16, T.BF16, *F16_FIELDS]:
        raw = random_blocks(rng, qtype)
        values = dequantize(raw, qtype).astype(np.float32).reshape(-1)
        assert np.isfinite(values).all(), qtype.name
        (OUT / f"{qtype.name}.raw").write_bytes(raw.tobytes())
        (OUT / f"{qtype.name}.f32").write_bytes(values.astype("<f4").tobytes())
        print(f"{qtype.name}: {raw.size} bytes -> {values.size} values")
    if len(sys.argv) > 1:
        reader = GGUFReader(sys.argv[1])
        wanted = ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight"]
        out = {}
        for t in reader.tensors:
            if t.name in wanted:
                values = dequantize(t.data, t.tensor_type).astype("<f4")
                out[t.name] = {
                    "type": t.tensor_type.name,
                    "n": int(values.size),
                    "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
                    "first": [float(v) for v in values.reshape(-1)[:4]],
                }
        heads = {
            "num_attention_heads": reader.fields["llama.attention.head_count"].contents(),
            "num_key_value_heads": reader.fields["llama.attention.head_count_kv"].contents(),
        }
        processor = LlamaTensorProcessor(config=heads)
        for t in reader.tensors:
            if t.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.attn_k.weight"):
                rows = dequantize(t.data, t.tensor_type)  # numpy shape [out, in]
                hf = processor.process(rows, t.name).weights.astype("<f4")
                key = "hf:" + t.name
                out[key] = {
                    "type": t.tensor_type.name,
                    "n": int(hf.size),
                    "sha256": hashlib.sha256(np.ascontiguousarray(hf).tobytes()).hexdigest(),
                    "first": [float(v) for v in hf.reshape(-1)[:4]],
                }
        (OUT / "smollm2.json").write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
