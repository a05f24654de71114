#!/usr/bin/env python3
"""Golden blocks for quantise-on-load (`model.quantize`), from gguf-py's `quantize_blocks` (its
Q8_0 is bit-exact with ggml-quants.c; Q4_0/Q4_1/Q5_0/Q5_1 follow the same reference rounding).

Writes tests/fixtures/dequant/quantize/:
  input.f32      512 little-endian f32 values (16 blocks of 32): normal values at three scales,
                 one all-zero block, one constant block, one with a lone outlier, ties at .5
  <TYPE>.raw     gguf.quants.quantize(input, TYPE) for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0

Environment: pip install numpy gguf==0.19.0.
Usage: python3 tools/reference/quantize_fixtures.py
"""
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "dequant" / "quantize"


def main():
    rng = np.random.default_rng(20261129)
    blocks = [rng.standard_normal(32).astype(np.float32) * s for s in (0.02, 1.0, 40.0) for _ in range(4)]
    blocks.append(np.zeros(32, np.float32))
    blocks.append(np.full(32, 0.37, np.float32))
    outlier = rng.standard_normal(32).astype(np.float32) * 0.01
    outlier[17] = -3.0
    blocks.append(outlier)
    blocks.append(np.arange(-16, 16, dtype=np.float32) + np.float32(0.5))  # halves: rounding ties
    values = np.concatenate(blocks).reshape(16, 32)
    OUT.mkdir(parents=True, exist_ok=True)
    values.astype("<f4").tofile(OUT / "input.f32")
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        raw = quantize(values, T[name])
        raw.tofile(OUT / f"{name}.raw")
        print(name, raw.shape)


if __name__ == "__main__":
    main()
