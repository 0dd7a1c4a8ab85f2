#!/usr/bin/env python3
"""Fixtures for tests/test_quant.c: gguf-py's own dequantize and quantize
output for GGUF's block formats, so that the C reference code can be checked
bit for bit without Python at test time (fixtures were made with gguf 0.19.0
and numpy 2.4):

    quant_cases.py [OUT_DIR]        (default: tests/data/quant)

writes OUT_DIR/<name>.bin for each of q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K q4_K
q5_K q6_K iq4_nl iq4_xs mxfp4, little-endian:

    "MQF1"
    u32 ggml type id, u32 elements per block, u32 bytes per block
                                        (gguf's GGML_QUANT_SIZES)
    u32 n                               blocks to dequantize, then
    n * bytes-per-block                 the blocks: random, and edge cases
                                        (zero, subnormal, smallest normal,
                                        largest and negative f16 scales;
                                        all-zero blocks; every code at its
                                        lowest or highest; for mxfp4 the
                                        smallest, middle and largest
                                        exponents whose values stay finite)
    n * elements * f32                  gguf.quants.dequantize of them
    u32 m                               blocks gguf-py quantizes (0 where
                                        gguf-py has no quantizer), then
    m * elements * f32                  the inputs: random rows of several
                                        magnitudes, outliers, all-zero and
                                        constant blocks, ties of |max|,
                                        exact rounding midpoints, values
                                        near powers of two, f16-subnormal
                                        scales
    m * bytes-per-block                 gguf.quants.quantize of them

No scale is NaN or Inf, and no quantize input makes gguf-py's scale overflow
f16 (there its output is Inf, and ours saturates). It also asserts that
numpy's float32 log2 floors as ours does at and just below every power of
two (mxfp4's exponent).
"""

from __future__ import annotations

import os
import struct
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

# name -> (type, offsets of its f16 fields, offset of its first code byte)
FORMATS = {
    "q4_0": (T.Q4_0, [0], 2),
    "q4_1": (T.Q4_1, [0, 2], 4),
    "q5_0": (T.Q5_0, [0], 2),
    "q5_1": (T.Q5_1, [0, 2], 4),
    "q8_0": (T.Q8_0, [0], 2),
    "q2_K": (T.Q2_K, [80, 82], 0),
    "q3_K": (T.Q3_K, [108], 0),
    "q4_K": (T.Q4_K, [0, 2], 4),
    "q5_K": (T.Q5_K, [0, 2], 4),
    "q6_K": (T.Q6_K, [208], 0),
    "iq4_nl": (T.IQ4_NL, [0], 2),
    "iq4_xs": (T.IQ4_XS, [0], 2),
    "mxfp4": (T.MXFP4, [], 1),
}
QUANTIZES = {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "mxfp4"}  # gguf 0.19's quantizers among these

# f16 scales at the edges: 0, -0, smallest and largest subnormal, smallest
# normal, 1, -1, largest, most negative.
EDGE_F16 = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0xBC00, 0x7BFF, 0xFBFF]
EDGE_F16_256 = [0x0000, 0x0001, 0x03FF, 0x0400, 0xFBFF]  # fewer for the 1 KB outputs of 256-blocks
MXFP4_LARGEST_E = 252  # 2^124 * 12 is the largest finite product


def finite_f16(rng, n, typical):
    """Random finite f16 bit patterns: of ordinary scales (1e-4 .. 1, either
    sign) or of any finite value."""
    if typical:
        v = rng.uniform(1e-4, 1.0, n) * rng.choice([-1.0, 1.0], n)
        return v.astype(np.float16).view(np.uint16)
    h = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    inf_nan = (h & 0x7C00) == 0x7C00
    h[inf_nan] &= 0xBFFF  # exponent 31 -> 15
    return h


def dequant_cases(name, rng):
    qtype, f16_at, _ = FORMATS[name]
    block, size = GGML_QUANT_SIZES[qtype]
    big = block == 256
    n_random = 3 if big else 24
    blocks = []
    # random blocks: half with ordinary scales, half with any finite ones
    for k in range(n_random):
        b = rng.integers(0, 256, size, dtype=np.uint8)
        blocks.append(b)
        hs = finite_f16(rng, len(f16_at), typical=k % 2 == 0)
        for off, h in zip(f16_at, hs):
            b[off : off + 2] = np.frombuffer(struct.pack("<H", int(h)), dtype=np.uint8)
        if name == "mxfp4":
            b[0] = rng.integers(0, MXFP4_LARGEST_E + 1)
    # edge scales, each with random codes; every f16 field gets it
    for h in (EDGE_F16_256 if big else EDGE_F16) if f16_at else []:
        b = rng.integers(0, 256, size, dtype=np.uint8)
        for off in f16_at:
            b[off : off + 2] = np.frombuffer(struct.pack("<H", h), dtype=np.uint8)
        blocks.append(b)
    # mixed: d and dmin of opposite extremes
    if len(f16_at) == 2:
        for hd, hm in [(0x7BFF, 0x0001), (0x0001, 0xFBFF)] + ([] if big else [(0x0000, 0x3C00)]):
            b = rng.integers(0, 256, size, dtype=np.uint8)
            b[f16_at[0] : f16_at[0] + 2] = np.frombuffer(struct.pack("<H", hd), dtype=np.uint8)
            b[f16_at[1] : f16_at[1] + 2] = np.frombuffer(struct.pack("<H", hm), dtype=np.uint8)
            blocks.append(b)
    # all-zero block; every code (and sub-block scale) at its lowest and at
    # its highest, with the largest and the most negative scale
    blocks.append(np.zeros(size, dtype=np.uint8))
    for fill, h in [(0x00, 0x7BFF), (0xFF, 0x7BFF), (0xFF, 0xFBFF)] + ([] if big else [(0xFF, 0x3C00)]):
        b = np.full(size, fill, dtype=np.uint8)
        for off in f16_at:
            b[off : off + 2] = np.frombuffer(struct.pack("<H", h), dtype=np.uint8)
        if name == "mxfp4":
            b[0] = MXFP4_LARGEST_E if h != 0x3C00 else 127
        blocks.append(b)
    if name == "mxfp4":  # exponents: subnormal scales, 1, the middle, the largest finite
        for e in [0, 1, 2, 126, 127, 128, MXFP4_LARGEST_E]:
            b = rng.integers(0, 256, size, dtype=np.uint8)
            b[0] = e
            blocks.append(b)
    raw = np.stack(blocks)
    out = quants.dequantize(raw, qtype).astype(np.float32, copy=False)
    assert out.shape == (len(blocks), block)
    assert np.isfinite(out).all(), name
    return raw, out


def quant_inputs(name, rng):
    """Rows of 32 for the 32-element formats gguf-py quantizes."""
    rows = []
    for scale in [1e-3, 0.02, 1.0, 100.0]:
        for _ in range(3):
            rows.append(rng.standard_normal(32) * scale)
    rows.append(rng.uniform(-1, 1, 32))
    rows.append(rng.uniform(0.5, 2, 32))  # all positive (a min block's min > 0)
    rows.append(-rng.uniform(0.5, 2, 32))  # all negative
    out = rng.standard_normal(32) * 0.01
    out[7] = 9.0  # one outlier
    rows.append(out)
    out = rng.standard_normal(32) * 0.01
    out[20] = -9.0
    rows.append(out)
    rows.append(np.zeros(32))
    rows.append(np.full(32, 0.75))
    rows.append(np.full(32, -3.0))
    tie = rng.uniform(-1, 1, 32)
    tie[3], tie[9] = -1.5, 1.5  # |max| twice: the first one counts
    rows.append(tie)
    tie = rng.uniform(-1, 1, 32)
    tie[3], tie[9] = 1.5, -1.5
    rows.append(tie)
    # exact midpoints: q8_0's d = 1 (max 127) with halves to round; q4_0's
    # d = -1 (max 8) with x / d + 8.5 landing on integers
    mid = np.array([127, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5] + list(range(-11, 12)), dtype=np.float64)
    rows.append(mid[:32])
    mid = np.array([8, -8, 7.5, -7.5, 0.5, -0.5, 3.5, -3.5] + [0.25 * k for k in range(-12, 12)], dtype=np.float64)
    rows.append(mid[:32])
    # mxfp4: |max| at and just below powers of two, and values halfway
    # between its grid points
    for k in [-20, -3, 0, 1, 5, 13]:
        r = rng.uniform(-1, 1, 32) * 2.0**k
        r[0] = 2.0**k
        rows.append(r)
        r = rng.uniform(-1, 1, 32) * 2.0**k
        r[5] = -float(np.nextafter(np.float32(2.0**k), np.float32(0)))
        rows.append(r)
    half = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 6.0, -6.0], dtype=np.float64)
    rows.append(np.concatenate([half, half * 0.5]))
    rows.append(rng.standard_normal(32) * 1e-6)  # q8_0/q4_0 scales f16-subnormal
    rows.append(rng.standard_normal(32) * 1e-8)
    rows.append(rng.standard_normal(32) * 3000.0)  # large, d still finite in f16
    x = np.stack(rows).astype(np.float32)
    return x


def check_mxfp4_log2():
    """Our mxfp4 quantizer takes floor(log2(max|x|)) from log2 in double
    rounded to float; numpy's float32 log2 is not always correctly rounded,
    but the floor can only differ next to powers of two. Assert that it
    does not, at and just below every power of two of float's range."""
    import math

    xs = []
    for k in range(-126, 128):
        v = np.float32(2.0**k)
        xs.append(v)
        for _ in range(64):
            v = np.nextafter(v, np.float32(0))
            xs.append(v)
    xs = np.array(xs, dtype=np.float32)
    ours = np.array([math.floor(np.float32(math.log2(float(x)))) for x in xs])
    assert (np.floor(np.log2(xs)) == ours).all(), "numpy's float32 log2 floors differently"


def main():
    check_mxfp4_log2()
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "data", "quant")
    os.makedirs(out_dir, exist_ok=True)
    for name, (qtype, _, _) in FORMATS.items():
        rng = np.random.default_rng(20 + int(qtype))
        block, size = GGML_QUANT_SIZES[qtype]
        raw, deq = dequant_cases(name, rng)
        parts = [b"MQF1", struct.pack("<4I", int(qtype), block, size, raw.shape[0]), raw.tobytes(), deq.tobytes()]
        if name in QUANTIZES:
            x = quant_inputs(name, rng)
            q = quants.quantize(x, qtype)
            assert q.shape == (x.shape[0], size)
            assert np.isfinite(quants.dequantize(q, qtype)).all()
            parts += [struct.pack("<I", x.shape[0]), x.tobytes(), q.tobytes()]
        else:
            parts.append(struct.pack("<I", 0))
        path = os.path.join(out_dir, name + ".bin")
        with open(path, "wb") as f:
            f.write(b"".join(parts))
        print(f"{path}: {raw.shape[0]} blocks to dequantize, {0 if name not in QUANTIZES else x.shape[0]} to quantize,"
              f" {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
