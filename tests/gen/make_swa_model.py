#!/usr/bin/env python3
"""Sliding-window attention fixture: the qwen2_moe tiny model's weights under
a config with use_sliding_window, and transformers' reference for it.

Usage:
    python tests/gen/make_swa_model.py --out tests/data/models

Writes <out>/qwen2_moe-swa/:
  config.json        qwen2_moe/config.json with use_sliding_window true,
                     max_window_layers 2 and sliding_window W: transformers'
                     Qwen2-MoE rule makes layer 0 sliding (even layers below
                     max_window_layers) and layer 1 full
  model.safetensors  a symbolic link to ../qwen2_moe/model.safetensors
  reference.json     as make_tiny_models.py writes it (prompt logits, greedy
                     continuation, routing), from transformers in float32

W is the first window from 4 up whose routing and greedy margins are as
decisive as make_tiny_models.py requires, so a sliding window of W really
changes the logits (checked: the last prompt position differs from the
full-attention reference by more than 1e-2) while near-ties do not decide
the comparison. The 12-token prompt and 16 greedy tokens span 28 positions,
several windows. Deterministic: the same package versions write the same
files (make_tiny_models.py's docstring lists them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_models as mtm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="tests/data/models")
    args = ap.parse_args()
    src, d = args.out / "qwen2_moe", args.out / "qwen2_moe-swa"
    base = json.loads((src / "config.json").read_text())
    full = json.loads((src / "reference.json").read_text())
    d.mkdir(exist_ok=True)
    link = d / "model.safetensors"
    if not link.is_symlink():
        if link.exists():
            link.unlink()
        os.symlink("../qwen2_moe/model.safetensors", link)
    for window in range(4, 12):
        cfg = dict(base, use_sliding_window=True, sliding_window=window, max_window_layers=2)
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        model = mtm.load_model(d)
        assert model.config.layer_types == ["sliding_attention", "full_attention"], model.config.layer_types
        with torch.no_grad():
            ref, stats = mtm.compute_reference(model, cfg)
        ok = (min(stats["prefill_router_gap"], stats["decode_router_gap"]) >= mtm.ROUTER_GAP_MIN
              and stats["greedy_logit_gap"] >= mtm.LOGIT_GAP_MIN)
        last = torch.as_tensor(ref["logits"][-1]).float() - torch.as_tensor(full["logits"][-1]).float()
        print(f"window {window}: router gap {min(stats['prefill_router_gap'], stats['decode_router_gap']):.4f}, "
              f"greedy gap {stats['greedy_logit_gap']:.4f}, last prompt position vs full attention "
              f"max |diff| {float(last.abs().max()):.3f}")
        if ok:
            assert float(last.abs().max()) > 1e-2, "the window does not change the logits"
            stats["sliding_window"] = window
            mtm.write_reference(d / "reference.json", ref, stats, "qwen2_moe")
            print(f"wrote {d} (sliding_window {window})")
            return 0
    print("no window with decisive margins", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
