#!/usr/bin/env python3
"""Golden blocks for quantise-on-load (`model.quantize`), from gguf-py's `quantize_blocks` (its
Q8_0 is bit-exact with ggml-quants.c; Q4_0/Q4_1/Q5_0/Q5_1 follow the same reference rounding).

Writes tests/fixtures/dequant/quantize/:
  input.f32      512 little-endian f32 values (16 blocks of 32): normal values at three scales,
                 one all-zero block, one constant block, one with a lone outlier, ties at .5
  <TYPE>.raw     gguf.quants.quantize(input, TYPE) for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
  input_k.f32    3072 values (12 super-blocks of 256): normal values at three scales, all
                 zeros, a constant, lone outliers, all positive, all negative, groups at
                 different scales within one super-block, a ramp, a group of zeros among others
  Q4_K.raw, Q5_K.raw, Q6_K.raw
                 ggml's own quantize_row_q{4,5,6}_K_ref(input_k) — what llama.cpp's quantiser
                 runs without an importance matrix — called through ctypes in the
                 libggml-base.so that llama-cpp-python 0.3.36 ships (gguf-py has no K-quant
                 quantiser)

Environment: pip install numpy gguf==0.19.0 llama-cpp-python==0.3.36.
Usage: python3 tools/reference/quantize_fixtures.py
"""
import ctypes
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
    k_quants(rng)


def k_quants(rng):
    import llama_cpp
    lib = ctypes.CDLL(str(pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    blocks = [rng.standard_normal(256).astype(np.float32) * s for s in (0.02, 1.0, 40.0)]
    blocks.append(np.zeros(256, np.float32))
    blocks.append(np.full(256, -0.37, np.float32))
    outliers = rng.standard_normal(256).astype(np.float32) * 0.01
    outliers[[3, 100, 201]] = [-3.0, 2.5, 7.0]
    blocks.append(outliers)
    blocks.append(np.abs(rng.standard_normal(256)).astype(np.float32) + 0.5)   # min > 0
    blocks.append(-np.abs(rng.standard_normal(256)).astype(np.float32) - 0.5)  # max < 0
    mixed = rng.standard_normal(256).astype(np.float32)
    mixed *= np.repeat(np.float32([1e-3, 1e-2, 0.1, 1, 10, 100, 0.5, 3]), 32)
    blocks.append(mixed)
    blocks.append(np.linspace(-1, 1, 256, dtype=np.float32))
    zero_group = rng.standard_normal(256).astype(np.float32)
    zero_group[64:96] = 0
    blocks.append(zero_group)
    blocks.append(rng.standard_normal(256).astype(np.float32) * np.float32(1e-4))
    values = np.ascontiguousarray(np.concatenate(blocks), dtype="<f4")
    values.tofile(OUT / "input_k.f32")
    for name, block_bytes in (("Q4_K", 144), ("Q5_K", 176), ("Q6_K", 210)):
        out = np.zeros(len(values) // 256 * block_bytes, np.uint8)
        quantize_row = getattr(lib, f"quantize_row_{name.lower().replace('_k', '_K')}_ref")
        quantize_row(values.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
                     ctypes.c_int64(len(values)))
        out.tofile(OUT / f"{name}.raw")
        print(name, out.shape)


if __name__ == "__main__":
    main()
