#!/usr/bin/env python3
"""Generate real-shaped, random-weight MoE models for the end-to-end benchmark.

Usage:
    python bench/models/make_bench_model.py [--out /tmp/moe-bench-models]
        [--model olmoe-1b-7b|qwen3-30b-a3b ...] [--layers 4|full] [--seed 20261201]
        [--gguf bf16,q8_0,q4_k_m [--expert-pool P] [--threads N] [--lib libmoerun.so]]

Without --gguf (needs torch and transformers), for each model this writes,
under <out>/<model>-<layers>l/:

  hf/config.json                       the real checkpoint's config.json, with
                                       num_hidden_layers reduced to --layers
  hf/model-0000i-of-0000n.safetensors  bf16 weights under the real checkpoints'
  hf/model.safetensors.index.json      tensor names (per-expert tensors), sharded
                                       at about 2 GB as on the Hub
  model-bf16.gguf                      the same weights as llama.cpp's
                                       convert_hf_to_gguf.py --outtype bf16 writes
                                       them (BF16 matrices, F32 norms and router,
                                       merged 3-D expert tensors)

With --gguf (numpy and gguf only, no torch; bench/models/gguf_model.py), it
writes only GGUF files, model-<ftype>.gguf for each file type asked for, in
the tensor types llama-quantize gives that file type (Q4_K_M: q4_K, with
ffn_down and attn_v in q6_K on the use_more_bits layers, output in q6_K,
F32 norms and router; Q8_0; BF16), each tensor generated, quantized with
moerun's moe_quantize (libmoerun.so, --lib) and written one at a time, so a
full-depth Qwen3-30B-A3B goes straight to its 17 GB of Q4_K_M without its
61 GB of bf16 ever existing.  The files of one directory hold the same
weights (the quantized ones made from the bf16 values), but not the same as
the torch path's (another generator).  --layers full keeps the real depth
(OLMoE 16 layers, Qwen3-30B-A3B 48).  --expert-pool P draws and quantizes
only P experts per expert tensor and copies them to the others (by the
rates below, minutes instead of roughly half an hour for Qwen3's q4_K
experts; the copies are read as cold as distinct values); the default, 0,
draws every expert.
bench/models/check_gguf.py checks these files against llama.cpp.

Every per-layer shape is the real model's; only the depth may be reduced (the
embedding and LM head are full size, so at 4 layers they are a larger share of
the bytes than in the real model; bench/models/run.py accounts for that in its
roofline).  Shapes, from the real config.json files (../shared/models/):

  olmoe-1b-7b    hidden 2048, 16 heads (MHA) x 128, 64 experts x 1024, top-8,
                 q/k RMSNorm over the whole projection, vocab 50304
  qwen3-30b-a3b  hidden 2048, 32 q heads / 4 kv heads x 128, 128 experts x 768,
                 top-8 (renormalised), per-head q/k RMSNorm, vocab 151936

Torch path: tensor names and shapes come from transformers itself: the model
is built on the meta device from the config (no memory, no time) and its state
dict is renamed to checkpoint names by tests/gen/make_tiny_models.py's
hf_state_dict.  The GGUF is laid out by that script's gguf_tensors /
tensor_qtype / set_gguf_parameters (the converter's tensor mapping, types and
metadata); only two things differ from its write_gguf, for size: tensors are
streamed to the file one at a time (tensor infos first, from a meta-device
pass) instead of being held in memory, and BF16 data is taken bit-for-bit
from the bf16 weights (identical to gguf.quants' BF16 rounding, since every
value is already bf16).
The vocabulary is a placeholder of full size (llama.cpp sizes token_embd by
it): 256 byte tokens (GPT-2 byte spelling) then "<|bench_N|>" tokens; there is
no tokenizer.json, so prompts are given as token ids.

Weights (deterministic: one generator per tensor, seeded from --seed and the
tensor's name): projections N(0, 1/fan_in) (std 0.022 at fan_in 2048),
embeddings N(0, 1), LM head N(0, 4/fan_in), routers N(0, 9/fan_in) (varied,
decisive routing), norms 1 + 0.1 N(0, 1) -- the same scheme as the tiny test
fixtures, all rounded to bf16.

Costs at 4 layers on a 2-core machine (torch path): olmoe 3.9 GB per format,
qwen3 6.3 GB per format; a few minutes each; peak memory about the model's
bf16 size plus one layer's experts in f32.  Full depth with --gguf (tensor
data, from gguf_model.file_nbytes): OLMoE 13.84 GB BF16, 7.36 GB Q8_0, 4.21 GB
Q4_K_M; Qwen3-30B-A3B 32.48 GB Q8_0, 18.55 GB (17.3 GiB) Q4_K_M.  moerun's
quantizer took 0.11 us per weight for q4_K and 0.07 for q6_K on one core of
the development machine, so Qwen3's Q4_K_M (29 G expert weights) takes
roughly half an hour on 2 free cores unless --expert-pool; peak memory is
about one tensor in its format plus 16 MB of f32 per thread.  Needs torch,
transformers (5.x), safetensors, numpy, gguf; --gguf only numpy and gguf,
and a built libmoerun.so for the quantized types.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "gen"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gguf  # noqa: E402

SHARD_BYTES = 2 * 1000**3   # ~2 GB shards, as the Hub's checkpoints

from shapes import CONFIGS  # noqa: E402  (the real config.json files)

# The torch path's modules (torch, transformers, tests/gen/make_tiny_models),
# imported only when it runs: --gguf needs neither.
torch = transformers = mtm = None


def import_torch_path() -> None:
    global torch, transformers, mtm
    import torch as _torch
    import transformers as _transformers
    import make_tiny_models as _mtm  # tests/gen: converter-exact GGUF code
    torch, transformers, mtm = _torch, _transformers, _mtm


def model_config(name: str, layers: int) -> dict:
    cfg = dict(CONFIGS[name])
    cfg["num_hidden_layers"] = layers
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = layers
    if transformers is not None:
        cfg["transformers_version"] = transformers.__version__
    return dict(sorted(cfg.items()))


def checkpoint_shapes(arch: str, cfg: dict, cfgdir: Path) -> dict:
    """Checkpoint tensor name -> bf16 tensor on the meta device (shape only)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(cfgdir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return mtm.hf_state_dict(arch, model, cfg)


def init_tensor(name: str, shape, seed: int):
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    fan_in = shape[-1]
    if name.endswith("norm.weight") or "layernorm" in name:
        v = 1.0 + 0.1 * torch.randn(shape, generator=gen)
    elif "embed_tokens" in name:
        v = torch.randn(shape, generator=gen)
    elif name.startswith("lm_head"):
        v = torch.randn(shape, generator=gen) * (2.0 / math.sqrt(fan_in))
    elif name.endswith("mlp.gate.weight"):
        v = torch.randn(shape, generator=gen) * (3.0 / math.sqrt(fan_in))
    else:
        v = torch.randn(shape, generator=gen) * (1.0 / math.sqrt(fan_in))
    return v.to(torch.bfloat16)


def add_bench_vocab(w: gguf.GGUFWriter, n_vocab: int) -> None:
    """A placeholder gpt2-style vocabulary of the model's full size."""
    b2u = mtm.bytes_to_unicode()
    toks = [b2u[i] for i in range(256)] + [f"<|bench_{i}|>" for i in range(256, n_vocab)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types([gguf.TokenType.NORMAL] * n_vocab)
    w.add_token_merges([f"{b2u[32]} {b2u[32]}"])


def write_gguf_streaming(path: Path, arch: str, cfg: dict, sd: dict, sd_meta: dict, label: str) -> int:
    ftype = gguf.LlamaFileType.MOSTLY_BF16
    a = mtm.GGUF_ARCH[arch]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[a])
    # pass 1 (meta tensors): tensor infos, in the converter's order
    plan = []
    for _, new_name, t in mtm.gguf_tensors(arch, cfg, sd_meta):
        qt = mtm.tensor_qtype(new_name, t.dim(), ftype)
        shape = tuple(t.shape)
        if qt == gguf.GGMLQuantizationType.BF16:
            byte_shape = shape[:-1] + (shape[-1] * 2,)
            w.add_tensor_info(new_name, byte_shape, np.dtype(np.uint8), t.numel() * 2, raw_dtype=qt)
        elif qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor_info(new_name, shape, np.dtype(np.float32), t.numel() * 4, raw_dtype=qt)
        else:
            raise ValueError(f"{new_name}: unexpected type {qt.name}")
        plan.append((new_name, qt))
    # metadata, as write_gguf / the converter
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"moerun-bench-{label}")
    w.add_size_label(f"{cfg['num_hidden_layers']}L")
    mtm.set_gguf_parameters(w, arch, cfg, ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_bench_vocab(w, cfg["vocab_size"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    # pass 2: the data, one tensor at a time
    total = 0
    for (new_name, qt), (_, name2, t) in zip(plan, mtm.gguf_tensors(arch, cfg, sd)):
        assert name2 == new_name
        if qt == gguf.GGMLQuantizationType.BF16:
            data = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8)
        else:
            data = t.to(torch.float32).contiguous().numpy()
        w.write_tensor_data(data)
        total += data.nbytes
        del data, t
    w.close()
    return total


def n_shards_for(sd: dict) -> int:
    total = sum(t.numel() * t.element_size() for t in sd.values())
    return max(1, math.ceil(total / SHARD_BYTES))


def generate(name: str, layers: int, out: Path, seed: int) -> Path:
    cfg = model_config(name, layers)
    arch = cfg["model_type"]
    d = out / f"{name}-{layers}l"
    if d.exists():
        shutil.rmtree(d)
    hf = d / "hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    t0 = time.time()
    sd_meta = checkpoint_shapes(arch, cfg, hf)
    sd = {k: init_tensor(k, v.shape, seed) for k, v in sorted(sd_meta.items())}
    n_params = sum(t.numel() for t in sd.values())
    print(f"{name}: {layers} layers, {len(sd)} tensors, {n_params / 1e9:.3f} G params "
          f"({n_params * 2 / 1e9:.2f} GB bf16), generated in {time.time() - t0:.1f} s", flush=True)

    t0 = time.time()
    n_sh = n_shards_for(sd)
    if n_sh == 1:
        mtm.save_st(sd, hf / "model.safetensors")
    else:
        mtm.save_sharded(sd, hf, n_sh)
    print(f"{name}: safetensors ({n_sh} shards) in {time.time() - t0:.1f} s", flush=True)

    t0 = time.time()
    nbytes = write_gguf_streaming(d / "model-bf16.gguf", arch, cfg, sd, sd_meta, f"{name}-{layers}l")
    print(f"{name}: GGUF ({nbytes / 1e9:.2f} GB of tensor data) in {time.time() - t0:.1f} s", flush=True)

    meta = {"model": name, "layers": layers, "full_layers": CONFIGS[name]["num_hidden_layers"],
            "seed": seed, "arch": arch,
            "params": n_params, "bytes_bf16": n_params * 2, "config": cfg,
            "versions": mtm.versions()}
    (d / "bench-model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return d


def generate_gguf(name: str, layers: int, out: Path, seed: int, ftypes: list[str], lib: Path, threads: int,
                  expert_pool: int) -> Path:
    """The torch-free path: GGUF files only, one per file type."""
    import gguf_model as gm
    cfg = model_config(name, layers)
    d = out / f"{name}-{layers}l"
    d.mkdir(parents=True, exist_ok=True)
    meta_path = d / "bench-model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    specs = gm.tensor_specs(cfg)
    n_params = sum(int(np.prod(s.shape)) for s in specs)
    meta.update({"model": name, "layers": layers, "full_layers": CONFIGS[name]["num_hidden_layers"],
                 "seed": seed, "arch": cfg["model_type"], "params": n_params, "bytes_bf16": n_params * 2,
                 "config": cfg})
    meta.setdefault("gguf", {})
    for ft in ftypes:
        path = d / gm.gguf_name(ft)
        need = gm.file_nbytes(cfg, ft)
        free = shutil.disk_usage(d).free + (path.stat().st_size if path.exists() else 0)
        if need + (2 << 30) > free:
            raise SystemExit(f"{path}: needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free (keeping 2 GiB); "
                             "remove another model first")
        print(f"{name}: writing {path} ({need / 1e9:.2f} GB of tensor data, {layers} layers, "
              f"expert pool {expert_pool or 'off'})", flush=True)
        tmp = path.with_suffix(".gguf.part")
        info = gm.write_gguf(tmp, cfg, ft, seed, f"{name}-{layers}l", lib, threads, expert_pool,
                             log=lambda m: print(m, flush=True))
        tmp.replace(path)
        print(f"{name}: {path.name}: {info['bytes'] / 1e9:.2f} GB in {info['seconds']:.0f} s; types "
              + ", ".join(f"{k} x{v}" for k, v in sorted(info["type_counts"].items())), flush=True)
        meta["gguf"][ft] = {"file": path.name, "bytes": info["bytes"], "type_counts": info["type_counts"],
                            "expert_pool": expert_pool, "seconds": round(info["seconds"], 1),
                            "writer": "bench/models/gguf_model.py", "gguf_py": gguf.__version__
                            if hasattr(gguf, "__version__") else None}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/moe-bench-models"))
    ap.add_argument("--model", action="append", choices=sorted(CONFIGS))
    ap.add_argument("--layers", default="4", help="number of layers, or 'full' for the real depth")
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--gguf", default=None,
                    help="comma list of bf16, q8_0, q4_k_m: write only these GGUF files, without torch")
    ap.add_argument("--expert-pool", type=int, default=0,
                    help="--gguf: draw and quantize this many experts per expert tensor, copy the rest (0: all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="--gguf: quantizer threads")
    ap.add_argument("--lib", type=Path, default=REPO / "build" / "release" / "libmoerun.so",
                    help="--gguf: libmoerun.so, whose moe_quantize makes the quantized types")
    args = ap.parse_args()
    names = args.model or sorted(CONFIGS)
    if args.gguf:
        import gguf_model as gm
        ftypes = [f.strip().lower() for f in args.gguf.split(",") if f.strip()]
        bad = [f for f in ftypes if f not in gm.FTYPES]
        if bad:
            ap.error(f"--gguf: unknown file type {bad[0]} (of {', '.join(gm.FTYPES)})")
        for name in names:
            layers = CONFIGS[name]["num_hidden_layers"] if args.layers == "full" else int(args.layers)
            d = generate_gguf(name, layers, args.out, args.seed, ftypes, args.lib, args.threads, args.expert_pool)
            print(f"{name}: wrote {d}", flush=True)
        return 0
    import_torch_path()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name in names:
        layers = CONFIGS[name]["num_hidden_layers"] if args.layers == "full" else int(args.layers)
        d = generate(name, layers, args.out, args.seed)
        print(f"{name}: wrote {d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
