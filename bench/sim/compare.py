#!/usr/bin/env python3
"""Runs moe-sim --compare over the scheduling issue's grid and writes the
JSON lines, a markdown table and (with matplotlib) plots.

    python3 bench/sim/compare.py --sim build/release/moe-sim --shared ../shared --out bench/sim/out

Grid: the four ESFT DeepSeek-V2-Lite traces concatenated, the two shipped
reference GPU profiles, GPU budgets of 25/50/75% of all routed experts,
decode (batch 1) and prefill in chunks of 128 and 512 tokens.
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


def run(sim, shared, profile, budget, mode, extra):
    cmd = [sim, "--profile", f"profiles/machines/{profile}.txt", "--shape", "2048x1408", "--gpu-budget", str(budget),
           "--mode", mode.split("-")[0], "--compare", "--json"] + extra
    for t in TRACES:
        cmd += ["--trace", os.path.join(shared, "traces", "esft-deepseek-v2-lite", t + ".trace")]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    for r in rows:
        r["profile"], r["cell_mode"] = profile, mode
    return rows


def table(rows):
    pols = ["static-cpu", "static-hot", "layer-split", "gpu-lru", "gpu-lfu", "fiddler", "hybrimoe", "moerun",
            "oracle"]
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
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
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
