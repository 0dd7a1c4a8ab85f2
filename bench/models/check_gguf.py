#!/usr/bin/env python3
"""Checks bench/models' GGUF writer (gguf_model.py) against llama.cpp itself.

    python bench/models/check_gguf.py --llama-bin LLAMA_CPP/build/bin [--lib build/release/libmoerun.so]
        [--out /tmp/moe-bench-check] [--keep]

For small-width models of both architectures at the real depth (OLMoE 16
layers, Qwen3-30B-A3B 48), in four variants of width (rows that are whole
256-blocks or not, 16 experts or 8, which llama.cpp treats as Mixtral-like),
it writes our BF16, Q8_0 and Q4_K_M files, has llama.cpp's own llama-quantize
make Q8_0 and Q4_K_M from our BF16 file, and compares:

  types   every tensor's type in our files against llama-quantize's (must be
          equal: this is what "in the Q4_K_M layout" means);
  q8_0    every tensor's bytes (moerun's q8_0 quantizer is gguf-py's, which
          is ggml's; they must be equal);
  logits  with llama-cpp-python (if importable; LLAMA_CPP_LIB_PATH may point
          it at the same build): the last prompt position's logits of each
          quantized file against the BF16 file's, as normalised mean squared
          error, ours beside llama-quantize's; ours must be no worse than 2x
          theirs (a mislaid block would be near 1).

Prints a table and exits 1 if any check fails.  A check of the writer, not a
test of moerun (it needs llama.cpp, which the project does not build).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gguf  # noqa: E402
import gguf_model as gm  # noqa: E402
from shapes import CONFIGS  # noqa: E402


def variants() -> dict[str, dict]:
    o, q = dict(CONFIGS["olmoe-1b-7b"]), dict(CONFIGS["qwen3-30b-a3b"])
    return {
        # every row a whole number of 256-blocks
        "olmoe-256": {**o, "hidden_size": 256, "num_attention_heads": 2, "num_key_value_heads": 2,
                      "intermediate_size": 256, "num_experts": 16, "num_experts_per_tok": 4, "vocab_size": 1024},
        # rows of 288 and 160: the k-quants fall back to q5_0 / q8_0, the output to q8_0
        "olmoe-odd": {**o, "hidden_size": 288, "num_attention_heads": 2, "num_key_value_heads": 2,
                      "intermediate_size": 160, "num_experts": 16, "num_experts_per_tok": 4, "vocab_size": 1000},
        "qwen3-256": {**q, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                      "intermediate_size": 512, "moe_intermediate_size": 256, "num_experts": 16,
                      "num_experts_per_tok": 4, "vocab_size": 1024},
        # 8 experts: llama.cpp's rules for Mixtral-like models (attn_v, attn_k in q8_0, attn_output q5_K)
        "qwen3-odd-8e": {**q, "hidden_size": 320, "num_attention_heads": 4, "num_key_value_heads": 2,
                         "head_dim": 80, "intermediate_size": 512, "moe_intermediate_size": 96, "num_experts": 8,
                         "num_experts_per_tok": 2, "vocab_size": 1024},
    }


def tensor_types(path: Path) -> dict[str, str]:
    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def tensor_data(path: Path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(str(path))
    return {t.name: np.array(t.data).view(np.uint8).reshape(-1) for t in r.tensors}


def llama_quantize(binary: Path, src: Path, dst: Path, ftype: str) -> None:
    p = subprocess.run([str(binary), str(src), str(dst), ftype, "2"], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"llama-quantize {src.name} {ftype}: exit {p.returncode}\n{p.stderr[-3000:]}")


def last_logits(path: Path, prompt: list[int]) -> np.ndarray | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, n_threads_batch=2, n_batch=64,
                          logits_all=False, verbose=False)
    llm.eval(prompt)
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    out = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64).copy()
    llm.close()
    return out


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum((a - ref) ** 2) / max(np.sum(ref ** 2), 1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bin", type=Path, required=True, help="llama.cpp's build/bin (llama-quantize)")
    ap.add_argument("--lib", type=Path, default=gm.default_lib())
    ap.add_argument("--out", type=Path, default=Path("/tmp/moe-bench-check"))
    ap.add_argument("--keep", action="store_true", help="keep the files")
    ap.add_argument("--seed", type=int, default=20261201)
    args = ap.parse_args()
    quantize = args.llama_bin / "llama-quantize"
    args.out.mkdir(parents=True, exist_ok=True)
    prompt = [int(x) for x in np.random.default_rng(8).integers(256, 1000, size=16)]
    ok, rows = True, []
    for vname, cfg in variants().items():
        d = args.out / vname
        d.mkdir(exist_ok=True)
        ours = {}
        for ft in ("bf16", "q8_0", "q4_k_m"):
            ours[ft] = d / f"ours-{ft}.gguf"
            gm.write_gguf(ours[ft], cfg, ft, args.seed, vname, args.lib, threads=2, log=lambda m: None)
        theirs = {}
        for ft, name in (("q8_0", "Q8_0"), ("q4_k_m", "Q4_K_M")):
            theirs[ft] = d / f"llama-quantize-{ft}.gguf"
            llama_quantize(quantize, ours["bf16"], theirs[ft], name)
        ref = last_logits(ours["bf16"], prompt)
        for ft in ("q8_0", "q4_k_m"):
            a, b = tensor_types(ours[ft]), tensor_types(theirs[ft])
            diff = sorted(n for n in b if a.get(n) != b[n])
            row = {"model": vname, "layers": cfg["num_hidden_layers"], "ftype": ft, "tensors": len(b),
                   "types_differ": diff[:6], "n_types_differ": len(diff) + len(set(a) ^ set(b)),
                   "types": {t: list(b.values()).count(t) for t in sorted(set(b.values()))}}
            if ft == "q8_0":
                da, db = tensor_data(ours[ft]), tensor_data(theirs[ft])
                row["bytes_differ"] = sorted(n for n in db if n in da and not np.array_equal(da[n], db[n]))
            if ref is not None:
                row["nmse_ours"] = nmse(last_logits(ours[ft], prompt), ref)
                row["nmse_llama_quantize"] = nmse(last_logits(theirs[ft], prompt), ref)
            bad = row["n_types_differ"] > 0 or row.get("bytes_differ") or \
                (ref is not None and row["nmse_ours"] > 2 * row["nmse_llama_quantize"] + 1e-6)
            row["ok"] = not bad
            ok &= not bad
            rows.append(row)
        if not args.keep:
            shutil.rmtree(d)
    print("| model | layers | file type | tensors | types (llama-quantize's) | types differ | "
          "q8_0 bytes differ | logits NMSE vs bf16: ours | llama-quantize's | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        types = ", ".join(f"{k} {v}" for k, v in r["types"].items())
        nm = (f"{r['nmse_ours']:.2e} | {r['nmse_llama_quantize']:.2e}" if "nmse_ours" in r
              else "(no llama_cpp) | ")
        bd = len(r["bytes_differ"]) if "bytes_differ" in r else ""
        print(f"| {r['model']} | {r['layers']} | {r['ftype']} | {r['tensors']} | {types} | "
              f"{r['n_types_differ']} {' '.join(r['types_differ'])} | {bd} | {nm} | {'yes' if r['ok'] else 'NO'} |")
    print(f"\n{'every check passed' if ok else 'CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
