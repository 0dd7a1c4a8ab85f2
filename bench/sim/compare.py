#!/usr/bin/env python3
"""Runs moe-sim --compare over the scheduling issue's grid and writes the
JSON lines, a markdown table and (with matplotlib) plots.

    python3 bench/sim/compare.py --sim build/release/moe-sim --shared ../shared --out bench/sim/out
    python3 bench/sim/compare.py --synthetic --out bench/sim/out

Grid: the four ESFT DeepSeek-V2-Lite traces concatenated, the two shipped
reference GPU profiles, GPU budgets of 25/50/75% of all routed experts,
decode (batch 1) and prefill in chunks of 128 and 512 tokens; the model's
shape and dense work from its config.json (moe-sim --model).

--synthetic: Mixtral-8x7B and Qwen3-30B-A3B with synthetic routing (the
parameters in SYNTH), the RTX 4090 reference profile, budgets 25/50%,
decode and prefill-512 (synthetic-compare.jsonl and .md).
"""
import argparse
import json
import os
import subprocess
import sys

PROFILES = ["ref-rtx4090-pcie4-2s-xeon8480", "ref-h100-pcie5-2s-xeon8480"]
BUDGETS = [0.25, 0.5, 0.75]
MODES = [("decode", []), ("prefill-128", ["--prefill-chunk", "128"]), ("prefill-512", ["--prefill-chunk", "512"])]
TRACES = ["intent", "law", "summary", "translation"]


# Synthetic routing: Zipf skew and temporal locality (docs/scheduling.md).
SYNTH = [("Mixtral-8x7B", "mixtral-8x7b", "layers=32,experts=8,top_k=2,tokens=10000,zipf=1,locality=0.3,seed=1"),
         ("Qwen3-30B-A3B", "qwen3-30b-a3b", "layers=48,experts=128,top_k=8,tokens=10000,zipf=1.2,locality=0.5,seed=1")]
SYNTH_PROFILE = "ref-rtx4090-pcie4-2s-xeon8480"
SYNTH_BUDGETS = [0.25, 0.5]
SYNTH_MODES = [MODES[0], MODES[2]]
POLICIES = ["static-cpu", "static-hot", "layer-split", "gpu-lru", "gpu-lfu", "fiddler", "hybrimoe", "moerun", "oracle"]


def sim_rows(cmd, **tags):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    for r in rows:
        r.update(tags)
    return rows


def run(sim, shared, profile, budget, mode, extra):
    cmd = [sim, "--profile", f"profiles/machines/{profile}.txt", "--gpu-budget", str(budget),
           "--model", os.path.join(shared, "models", "deepseek-v2-lite", "config.json"),
           "--mode", mode.split("-")[0], "--compare", "--json"] + extra
    for t in TRACES:
        cmd += ["--trace", os.path.join(shared, "traces", "esft-deepseek-v2-lite", t + ".trace")]
    return sim_rows(cmd, profile=profile, cell_mode=mode)


def run_synthetic(sim, shared):
    rows = []
    for name, model, params in SYNTH:
        for mode, extra in SYNTH_MODES:
            for b in SYNTH_BUDGETS:
                cmd = [sim, "--synthetic", params, "--model", os.path.join(shared, "models", model, "config.json"),
                       "--profile", f"profiles/machines/{SYNTH_PROFILE}.txt", "--gpu-budget", str(b),
                       "--mode", mode.split("-")[0], "--compare", "--json"] + extra
                rows += sim_rows(cmd, profile=SYNTH_PROFILE, cell_mode=mode, model=name)
                print(f"{name} {mode} {b}", file=sys.stderr)
    return rows


def synthetic_table(rows):
    pols = [p for p in POLICIES if p not in ("gpu-lru", "gpu-lfu")]
    lines = ["| model | mode | budget | " + " | ".join(pols) + " | moerun vs hybrimoe | moerun / oracle |",
             "|" + "---|" * (len(pols) + 5)]
    for name, _, _ in SYNTH:
        for mode, _ in SYNTH_MODES:
            for b in SYNTH_BUDGETS:
                cell = {r["policy"]: r for r in rows if r.get("model") == name and r["cell_mode"] == mode
                        and abs(r["budget"] - b) < 0.01}
                key, unit = ("time_per_token_ms", "ms/token") if mode == "decode" else ("prefill_ms", "s")
                scale = 1 if mode == "decode" else 1e-3
                t = {p: cell[p][key] * scale for p in pols}
                lines.append(f"| {name} | {mode} ({unit}) | {int(b * 100)}% | " +
                             " | ".join(f"{t[p]:.3f}" for p in pols) +
                             f" | {t['hybrimoe'] / t['moerun']:.3f}x | {t['moerun'] / t['oracle']:.3f} |")
    return "\n".join(lines)


def table(rows):
    pols = POLICIES
    lines = []
    for prof in PROFILES:
        lines.append(f"\n**{prof}** (time per decode token in ms, or whole prefill in s; "
                     "moerun's speedups and its ratio to the oracle)\n")
        lines.append("| mode | budget | " + " | ".join(pols) + " | moerun vs static-cpu | vs static-hot | vs hybrimoe "
                     "| moerun / oracle | moerun never slower |")
        lines.append("|" + "---|" * (len(pols) + 7))
        for mode, _ in MODES:
            for b in BUDGETS:
                cell = {r["policy"]: r for r in rows if r["profile"] == prof and r["cell_mode"] == mode
                        and abs(r["budget"] - b) < 0.01}
                key = "time_per_token_ms" if mode == "decode" else "prefill_ms"
                scale = 1 if mode == "decode" else 1e-3
                t = {p: cell[p][key] * scale for p in pols}
                m = t["moerun"]
                never = all(m <= t[p] * (1 + 1e-9) for p in pols if p != "oracle")
                lines.append(f"| {mode} | {int(b * 100)}% | " + " | ".join(f"{t[p]:.3f}" for p in pols) +
                             f" | {t['static-cpu'] / m:.2f}x | {t['static-hot'] / m:.3f}x | {t['hybrimoe'] / m:.3f}x"
                             f" | {m / t['oracle']:.3f} | {'yes' if never else 'NO'} |")
    return "\n".join(lines)


def plots(rows, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return
    pols = ["static-cpu", "static-hot", "layer-split", "fiddler", "hybrimoe", "moerun", "oracle"]
    for prof in PROFILES:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, (mode, _) in zip(axes, MODES):
            key = "time_per_token_ms" if mode == "decode" else "prefill_ms"
            for p in pols:
                ys = []
                for b in BUDGETS:
                    r = [r for r in rows if r["profile"] == prof and r["cell_mode"] == mode and r["policy"] == p
                         and abs(r["budget"] - b) < 0.01][0]
                    hot = [q for q in rows if q["profile"] == prof and q["cell_mode"] == mode
                           and q["policy"] == "static-hot" and abs(q["budget"] - b) < 0.01][0]
                    ys.append(hot[key] / r[key])
                ax.plot([int(b * 100) for b in BUDGETS], ys, marker="o", label=p)
            ax.set_title(f"{mode}")
            ax.set_xlabel("GPU budget, % of routed experts")
            ax.set_ylabel("speedup over static-hot")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"moe-sim, DeepSeek-V2-Lite ESFT traces, {prof}")
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"sim-{prof}.png"), dpi=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim", default="build/release/moe-sim")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="bench/sim/out")
    ap.add_argument("--from-json", help="re-make the table and plots from an earlier run's JSON lines")
    ap.add_argument("--synthetic", action="store_true", help="the synthetic Mixtral and Qwen3 grid instead")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.synthetic:
        if a.from_json:
            rows = [json.loads(line) for line in open(a.from_json) if line.strip()]
        else:
            rows = run_synthetic(a.sim, a.shared)
            with open(os.path.join(a.out, "synthetic-compare.jsonl"), "w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        t = synthetic_table(rows)
        with open(os.path.join(a.out, "synthetic-compare.md"), "w") as f:
            f.write(t + "\n")
        print(t)
        return
    if a.from_json:
        rows = [json.loads(line) for line in open(a.from_json) if line.strip()]
    else:
        rows = []
        for prof in PROFILES:
            for mode, extra in MODES:
                for b in BUDGETS:
                    rows += run(a.sim, a.shared, prof, b, mode, extra)
                    print(f"{prof} {mode} {b}", file=sys.stderr)
        with open(os.path.join(a.out, "compare.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    t = table(rows)
    with open(os.path.join(a.out, "compare.md"), "w") as f:
        f.write(t + "\n")
    print(t)
    plots(rows, a.out)


if __name__ == "__main__":
    main()
