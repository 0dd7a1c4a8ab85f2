#!/usr/bin/env python3
"""An FP8 checkpoint fixture for moerun's tests: a tiny Qwen3-MoE stored as
the Qwen3 "-FP8" and DeepSeek-V3 releases store theirs.

Usage (not run in CI; needs torch, transformers, safetensors, numpy, gguf):
    python tests/gen/make_fp8_model.py --out tests/data/models/qwen3_moe-fp8

The model is make_tiny_models.py's qwen3_moe, made wide enough for 128 x 128
blocks (hidden 256, expert width 128) with 3 query heads of 64, so that the
query projection has 192 rows (a partial tile of rows) and the output
projection 192 columns (rows that are not whole blocks of 128: the loader
widens that matrix). Every attention projection and expert matrix is FP8:

  <name>            F8_E4M3 [rows, cols], torch's float8_e4m3fn of w / s
  <name>_scale_inv  F32 [ceil(rows/128), ceil(cols/128)], s = max|w| / 448
                    over each 128 x 128 tile (DeepSeek's weight_quant)

and config.json carries the releases' quantization_config. Router, norms,
embeddings and LM head stay bf16, as in the releases.

reference.json is make_tiny_models.py's reference (same keys) computed by
transformers in float32 on the dequantized weights (each weight exactly
float(code) * s), so moerun on the FP8 files should agree to float32
rounding. The seed is the first from 1234 with decisive routing and greedy
margins, as for the other fixtures.

Generated with: python 3.11.7, torch 2.15.0, transformers 5.25.0,
safetensors 0.8.0, numpy 2.4.6, gguf 0.19.0.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_models as mtm  # noqa: E402

ARCH = "qwen3_moe"
BLOCK = 128
QUANT_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                "weight_block_size": [BLOCK, BLOCK]}
OVERRIDES = {"hidden_size": 256, "head_dim": 64, "num_attention_heads": 3, "num_key_value_heads": 1,
             "moe_intermediate_size": 128, "intermediate_size": 384, "num_experts": 4,
             "num_experts_per_tok": 2, "num_hidden_layers": 2, "max_window_layers": 2}


def is_fp8(name: str) -> bool:
    return name.endswith("_proj.weight")  # q/k/v/o and the experts' gate/up/down


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [rows, cols] f32 -> (float8_e4m3fn codes, f32 scales per tile)."""
    rows, cols = w.shape
    tr, tc = math.ceil(rows / BLOCK), math.ceil(cols / BLOCK)
    s = torch.empty(tr, tc, dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(tr):
        for j in range(tc):
            tile = w[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            s[i, j] = tile.abs().max() / 448.0
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (tile / s[i, j]).to(torch.float8_e4m3fn)
    return q, s


def dequantize(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    full = s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[: q.shape[0], : q.shape[1]]
    return q.to(torch.float32) * full


def attempt(cfg: dict, seed: int, work: Path):
    torch.manual_seed(0)
    model = mtm.build_model(work)
    mtm.init_weights(model, seed)
    sd = mtm.hf_state_dict(ARCH, model, cfg)  # bf16, bit-exact to the init
    stored, deq = {}, {}
    for name, t in sd.items():
        if is_fp8(name):
            q, s = quantize(t.float())
            stored[name], stored[name + "_scale_inv"] = q, s
            deq[name] = dequantize(q, s)
        else:
            stored[name] = t
            deq[name] = t.float()
    # transformers on the dequantized weights, through its own loader (the
    # per-expert names of the checkpoint fused as it fuses them)
    mtm.save_st({k: v.contiguous() for k, v in deq.items()}, work / "model.safetensors")
    ref_model = mtm.load_model(work)
    ref, stats = mtm.compute_reference(ref_model, cfg)
    return stored, ref, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/data/models/qwen3_moe-fp8", type=Path)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    cfg = mtm.full_config(ARCH)
    cfg.update(OVERRIDES)
    cfg = dict(sorted(cfg.items()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        for seed in range(mtm.BASE_SEED, mtm.BASE_SEED + 64):
            stored, ref, stats = attempt(cfg, seed, work)
            if (min(stats["prefill_router_gap"], stats["decode_router_gap"]) >= mtm.ROUTER_GAP_MIN
                    and stats["greedy_logit_gap"] >= mtm.LOGIT_GAP_MIN):
                break
        else:
            raise RuntimeError("no seed with decisive routing/greedy margins")
    stats["seed"] = seed
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    out_cfg = dict(cfg)
    out_cfg["quantization_config"] = QUANT_CONFIG
    (args.out / "config.json").write_text(json.dumps(dict(sorted(out_cfg.items())), indent=2) + "\n")
    mtm.save_st(dict(sorted(stored.items())), args.out / "model.safetensors")
    mtm.write_reference(args.out / "reference.json", ref, stats, ARCH)
    n8 = sum(1 for k, v in stored.items() if v.dtype == torch.float8_e4m3fn)
    print(f"{args.out}: seed {seed}, {n8} FP8 matrices, margins {stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
