#!/usr/bin/env python3
"""PyTorch CPU peer benchmark for one SwiGLU MoE expert (and optionally a whole MoE layer).

What it measures
  y = down( silu(gate x) * (up x) ) with torch.nn.functional.linear, weights in HF
  safetensors layout (gate/up [inter, hidden], down [hidden, inter], row-major), in f32 or
  bf16 (activations in the same dtype: torch matmul needs matching dtypes).
  Weights are COLD: a pool of distinct experts (> --pool-gb, default 1.6 GB) is rotated,
  one expert per call, as in real MoE inference.  Each case is the best of --reps passes
  (after one warm-up pass); a pass is one sweep of the pool (at most 400 calls) for
  M <= 32, one call otherwise.  Just before each case a DRAM read probe (torch.sum over a
  1 GiB f32 tensor with the same threads, best of 5) is measured in the same process;
  ratio_to_dram = weight_gbps / dram_read_gbps (the machine may be shared and noisy).
  Per case: us_per_expert, weight_gbps = 3*hidden*inter*bytes_per_weight / time,
  gflops = 6*M*hidden*inter / time.
  --layer adds a whole-MoE-layer case for the first shape (--experts E, --topk K):
  decode (1 token, K experts with M=1) and prefill (--prefill tokens, routed uniformly at
  random with a fixed seed; loop over experts, HF-style gather / index_add), in ms per layer.

How to run (CPU-only is fine; any torch >= 2.0):
  python3 bench/peers/torch_swiglu.py --shape 2048x1408,4096x14336,2048x768 \
      --dtype f32,bf16 --m 1,4,32,512 --threads 2 --json [--layer]
Output: one JSON object per line (with --json), else a readable line per case.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def csv(values):
    return [v for s in values for v in s.split(",") if v]


_probe = []


def dram_read_gbps(reps=5):
    """2-thread (set_num_threads) read of a 1 GiB f32 tensor, best of reps; called before each case."""
    if not _probe:
        _probe.append(torch.ones(1 << 28, dtype=torch.float32))  # 1 GiB, touched once, kept
    buf, best = _probe[0], math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.sum(buf)
        best = min(best, time.perf_counter() - t0)
    return (1 << 30) / best / 1e9


def expert(x, gate, up, down):
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def make_pool(n, hidden, inter, dtype, lead=()):
    g = torch.randn(*lead, inter, hidden).mul_(0.05).to(dtype)
    u = torch.randn(*lead, inter, hidden).mul_(0.05).to(dtype)
    d = torch.randn(*lead, hidden, inter).mul_(0.05).to(dtype)
    return [(g, u, d)] + [(g.clone(), u.clone(), d.clone()) for _ in range(n - 1)]


def best_time(fn, calls, reps):
    best = math.inf
    for r in range(reps + 1):  # pass 0 = warm-up
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        dt = (time.perf_counter() - t0) / calls
        if r > 0:
            best = min(best, dt)
    return best


def bench_expert(hidden, inter, dtype, ms, args, emit):
    esz = torch.finfo(dtype).bits // 8
    wbytes = 3 * hidden * inter * esz
    n = max(2, math.ceil(args.pool_gb * 1e9 / wbytes))
    pool = make_pool(n, hidden, inter, dtype)
    cur = [0]
    for m in ms:
        x = torch.randn(m, hidden).to(dtype)

        def call():
            g, u, d = pool[cur[0]]
            cur[0] = (cur[0] + 1) % n
            expert(x, g, u, d)

        dram = dram_read_gbps()
        t = best_time(call, min(n, 400) if m <= 32 else 1, args.reps)
        gbps = wbytes / t / 1e9
        emit(dict(case="expert", shape=f"{hidden}x{inter}", dtype=args.dtype_name[dtype], m=m,
                  us_per_expert=round(t * 1e6, 1), weight_gbps=round(gbps, 2),
                  gflops=round(6 * m * hidden * inter / t / 1e9, 2), dram_read_gbps=round(dram, 2),
                  ratio_to_dram=round(gbps / dram, 3), pool=n))
    del pool


def bench_layer(hidden, inter, dtype, args, emit):
    E, K = args.experts, args.topk
    esz = torch.finfo(dtype).bits // 8
    lbytes = 3 * hidden * inter * esz * E
    n = max(2, math.ceil(args.pool_gb * 1e9 / lbytes))
    layers = make_pool(n, hidden, inter, dtype, lead=(E,))
    gen = torch.Generator().manual_seed(1234)
    cur = [0]
    for tokens in (1, args.prefill):
        x = torch.randn(tokens, hidden, generator=gen).to(dtype)
        ids = torch.rand(tokens, E, generator=gen).argsort(dim=1)[:, :K]  # K distinct experts/token
        routes = [(e, (ids == e).any(dim=1).nonzero().flatten()) for e in range(E)]
        routes = [(e, tok) for e, tok in routes if tok.numel() > 0]  # routing precomputed

        def call():
            g, u, d = layers[cur[0]]
            cur[0] = (cur[0] + 1) % n
            out = torch.zeros_like(x)
            for e, tok in routes:
                out.index_add_(0, tok, expert(x.index_select(0, tok), g[e], u[e], d[e]))

        dram = dram_read_gbps()
        t = best_time(call, n if tokens == 1 else 1, args.reps)
        emit(dict(case="layer", shape=f"{hidden}x{inter}", experts=E, topk=K,
                  dtype=args.dtype_name[dtype], tokens=tokens, ms_per_layer=round(t * 1e3, 3),
                  gflops=round(6 * tokens * K * hidden * inter / t / 1e9, 2),
                  dram_read_gbps=round(dram, 2), pool_layers=n))
    del layers


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", action="append", default=[], help="HIDDENxINTER (repeatable or comma list)")
    ap.add_argument("--dtype", action="append", default=[], help="f32|bf16 (repeatable or comma list)")
    ap.add_argument("--m", default="1,4,32,512", help="token counts, comma list")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--pool-gb", type=float, default=1.6, help="size of the rotated weight pool")
    ap.add_argument("--layer", action="store_true", help="also run the whole-layer case (first shape)")
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--topk", type=int, default=6)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in csv(args.shape or ["2048x1408"])]
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    args.dtype_name = {v: k for k, v in dtypes.items()}
    sel = [dtypes[d] for d in csv(args.dtype or ["f32", "bf16"])]
    ms = [int(v) for v in args.m.split(",")]
    torch.set_num_threads(args.threads)
    peer = f"torch {torch.__version__}"

    def emit(rec):
        rec["peer"] = peer
        print(json.dumps(rec) if args.json else "  ".join(f"{k}={v}" for k, v in rec.items()), flush=True)

    with torch.inference_mode():
        for hidden, inter in shapes:
            for dt in sel:
                bench_expert(hidden, inter, dt, ms, args, emit)
        if args.layer:
            for dt in sel:
                bench_layer(*shapes[0], dt, args, emit)


if __name__ == "__main__":
    main()
