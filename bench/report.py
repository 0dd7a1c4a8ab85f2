#!/usr/bin/env python3
"""Turns JSON lines from `moe-bench cpu --json` and the peers (bench/peers/ggml_moe.c and
bench/peers/torch_swiglu.py, which print the same keys with "peer":"ggml ..." or "torch ...")
into the markdown tables of docs/benchmarks.md.

    python3 bench/report.py moerun.jsonl [ggml.jsonl torch.jsonl ...]

Expert table: one row per (shape, m), one column per (engine, dtype as asked for, e.g. q4_K or
q4_K+q6_K): weight bandwidth as a fraction of the DRAM read bandwidth each process measured just
before (decode, m <= 8) or GFLOP/s (larger m), with the ratio to one prepacked oneDNN matmul for
moerun. A cell marked * ran in other types than asked for, because the shape's rows are not whole
blocks of the format (llama.cpp's fallback); the list under the table says which. Then the
kernel each engine ran per case (moe-bench's "path"), collapsed over runs of m, and the layer
table.
"""
import json
import sys
from collections import defaultdict


def load(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    return rows


def engine(r):
    return r.get("peer", "moerun").split()[0]


def asked(r):
    return r.get("requested") or r["dtype"]


def m_ranges(ms):
    ms = sorted(ms)
    return f"{ms[0]}" if len(ms) == 1 else f"{ms[0]}-{ms[-1]}"


def main(paths):
    rows = load(paths)
    experts = [r for r in rows if r.get("bench", "cpu") == "cpu" and r.get("case", "expert") == "expert" and "m" in r]
    cols, cells, fallbacks = [], defaultdict(dict), {}
    paths_of = defaultdict(list)   # (engine, asked, shape) -> [(m, path)]
    for r in experts:
        col = f"{engine(r)} {asked(r)}"
        if col not in cols:
            cols.append(col)
        m = r["m"]
        if m <= 8:
            cell = f"{r['ratio_to_dram']:.2f}"
        else:
            cell = f"{r['gflops']:.0f}"
            if r.get("ratio_to_matmul"):
                cell += f" ({r['ratio_to_matmul']:.2f})"
        if r["dtype"] != asked(r):
            cell += "*"
            fallbacks[(col, r["shape"])] = r["dtype"]
        cells[(r["shape"], m)][col] = cell
        if r.get("path"):
            paths_of[(engine(r), asked(r), r["shape"])].append((m, r["path"]))
    print("| shape | m | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for (shape, m) in sorted(cells, key=lambda k: (k[0], k[1])):
        print(f"| {shape} | {m} | " + " | ".join(cells[(shape, m)].get(c, "") for c in cols) + " |")
    if fallbacks:
        print()
        for (col, shape), ran in sorted(fallbacks.items()):
            print(f"\\* {col} on {shape} ran as {ran}.")
    if paths_of:
        print()
        print("| engine | dtype | shape | path by m |")
        print("|---|---|---|---|")
        for (eng, dt, shape), seen in paths_of.items():
            runs, cur = [], None      # consecutive m with the same path
            for m, p in sorted(seen):
                if cur and cur[1] == p:
                    cur[0].append(m)
                else:
                    cur = ([m], p)
                    runs.append(cur)
            desc = "; ".join(f"{m_ranges(ms)}: `{p}`" for ms, p in runs)
            print(f"| {eng} | {dt} | {shape} | {desc} |")
    layers = [r for r in rows if r.get("bench") == "layer" or r.get("case") == "layer"]
    if layers:
        print()
        print("| engine | dtype | tokens | ms per layer | ratio to DRAM (decode) | GFLOP/s |")
        print("|---|---|---|---|---|---|")
        for r in layers:
            for key in ("decode", "prefill"):
                if key in r:  # peers may report both phases in one object
                    s = r[key]
                    print(f"| {engine(r)} | {r['dtype']} | {s.get('tokens', '')} | {s.get('ms_per_layer', 0):.2f} | "
                          f"{s.get('ratio_to_dram', 0):.2f} | {s.get('gflops', 0):.0f} |")
            if "ms_per_layer" in r:
                ratio = f"{r['ratio_to_dram']:.2f}" if r.get("tokens") == 1 and "ratio_to_dram" in r else ""
                print(f"| {engine(r)} | {r['dtype']} | {r.get('tokens', '')} | {r['ms_per_layer']:.2f} | "
                      f"{ratio} | {r.get('gflops', 0):.0f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
