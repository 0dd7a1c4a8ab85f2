#!/usr/bin/env python3
"""End-to-end MoE model benchmark (issues 8 and 20): moerun vs llama.cpp vs transformers.

Usage (after bench/models/make_bench_model.py; in a venv with numpy and gguf,
and llama-cpp-python for --llama-cpp python, torch and transformers for the
hf systems):

    python bench/models/run.py /tmp/moe-bench-models/olmoe-1b-7b-4l \
        /tmp/moe-bench-models/qwen3-30b-a3b-48l [--formats bf16,q8_0,q4_k_m]
        [--prompt-len 128] [--decode 32] [--repeats 3] [--threads N]
        [--systems moerun,llama.cpp,hf-bf16,hf-f32] [--llama-cpp auto|python|bench]
        [--llama-bin LLAMA_CPP/build/bin] [--hf-f32 auto|on|off] [--machine NAME]

Each MODEL_DIR holds bench-model.json and model-<format>.gguf files
(model-bf16.gguf, model-q8_0.gguf, model-q4_k_m.gguf: make_bench_model.py
--gguf writes them in llama-quantize's tensor types), and, from the torch
path, hf/ (config.json + safetensors) with the same weights as
model-bf16.gguf.  Each GGUF file that --formats names is a benchmark of its
own, run one after another (moe-run runs as a subprocess per run; llama.cpp
and transformers each live in a spawned worker process of their own, loaded
once, because in one process their OpenMP thread pools slow each other down
-- see Remote):

 1. page cache: the file (and hf/ for bf16) is read once, so that every
    system starts warm, with the weights in the page cache, as after a first
    run.  A file that does not fit in memory with 2 GiB to spare is skipped
    (decode would measure the disk).  Where the file and llama.cpp's own
    copy of the weights it repacks do not fit together ("tight": twice the
    file plus 2 GiB over MemTotal, e.g. Qwen3-30B-A3B's 18.6 GB Q4_K_M in
    24 GiB), llama.cpp starts afresh for every run and the file is read back
    into the page cache before each moe-run run (neither is timed).
    The DRAM read bandwidth is measured with `moe-profile --quick` (its
    "Memory read bandwidth" figure, read back with `moe-profile --show`)
    three times before and three times after the file's runs; the best is
    used (the quiet host's figure; a higher bandwidth is the stricter roofline).
 2. systems, all on the same prompt token ids (--prompt-len ids drawn with a
    fixed seed from the model's vocabulary), greedy, --decode tokens, T threads:
      moerun-gguf  build/release/moe-run MODEL.gguf --prompt-ids ... -n N --stats json
                   --ignore-eos --threads T --ctx C   (a subprocess per run;
                   prefill_tok_s and decode_tok_s from its last JSON line, the
                   generated ids from its output; not -q, which hides the ids)
      moerun-hf    the same on hf/ (bf16 only)
      llama.cpp    --llama-cpp python: llama_cpp.Llama(MODEL.gguf, n_threads=T,
                   n_threads_batch=T, n_ctx=C, n_batch=n_ubatch=512,
                   logits_all=False): prefill = Llama.eval(prompt) + argmax of
                   the last logits; decode = N-1 steps of eval([token]) +
                   argmax; wall clock around each phase (llama's own perf
                   counters are recorded beside it).
                   --llama-cpp bench: llama.cpp's llama-bench, a process per
                   run: prefill `-p P -n 0`, decode `-p 0 -n N-1 -d P`, `-r 1`
                   after its warm-up (its own prompt tokens: no ids compared).
                   Both with llama.cpp's defaults otherwise (weights repacked
                   for its CPU kernels, f16 KV cache, mmap).
      hf-bf16      (bf16 with hf/) transformers AutoModelForCausalLM in torch.bfloat16
                   on the CPU, torch.set_num_threads(T): prefill = one forward of
                   the prompt with use_cache (logits_to_keep=1), decode = N-1
                   one-token forwards with the DynamicCache; wall clock, inference_mode
      hf-bf16+moerun  (with --systems ...,hf-bf16+moerun) the same transformers
                   model with moerun.patch(model): its experts through moerun,
                   everything else transformers' (the Python plugin path)
      hf-f32       the same in float32, in a second phase after hf-bf16 is freed
                   (with moerun-gguf measured again in that phase as its
                   reference), when it fits in memory beside the page cache
    Just before and just after each counted run the DRAM read bandwidth is
    measured again (moe-profile --quick, 2.5 s): the host's bandwidth drifts
    by a third within minutes, with other tenants' memory traffic that no CPU
    counter here sees, so each run is also compared with the roofline of the
    bandwidth measured beside it (step 3).
    The host is shared: before each run the benchmark waits (--quiet-wait)
    until other processes use under --quiet-limit of the CPUs, measures what
    they used during the run (OthersMeter), and runs again (up to 3 more
    times) when that exceeded the limit; the figures are kept in the results.
    Every system first runs once as a warm-up (not counted); then --repeats
    rounds, each running every system once, in an order rotated per round,
    so that host noise hits them alike.  The median over rounds is reported.
    As in moe-run, decode tok/s = (N - 1) / decode time: the first generated
    token comes from the prefill's logits.  Load times are excluded (and
    recorded).
 3. the roofline: bytes of weights one decode token must read in the file's
    own formats, from its tensor types (gguf_decode_bytes: attention q/k/v/o,
    q/k norms, the two layer norms, the router, top_k / n_experts of each
    expert tensor, shared experts if any, the final norm, one embedding row,
    the LM head; the KV cache read at the middle of decode is printed beside
    it, not counted) over the measured DRAM read bandwidth, in tokens/s: with
    the best bandwidth seen (the strictest roofline), and per run with the
    mean of the bandwidths measured just before and after it (median over
    runs).  The same figure for the real model's full depth is printed for
    scale.  The CPU is named (lscpu's model name and its vector flags).
 4. greedy agreement: each system's generated ids against the reference
    (hf-f32 when it ran, else hf-bf16, else moerun-gguf): the length of the
    common prefix.

Results: one JSON object per line in bench/models/results/<machine>-<date>.jsonl
("kind": "machine", "run" per measurement, "summary" per system, model and
format, "model" per model and format, "skipped"), and a markdown table per
model and format on stdout, with moerun-gguf against llama.cpp beside issue
20's targets (decode >= 1.5x, prefill >= 2x, decode >= 0.85 of the roofline).
Ratios are system / moerun-gguf (the phase's own moerun-gguf median for
hf-f32; llama.cpp's own when moerun did not run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import inspect
import multiprocessing as mp
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT_SEED = 8  # issue 8


# --------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------

def sh(cmd: list[str], **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def lscpu_model() -> str:
    for line in sh(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


def cpu_flags(all_flags: bool = False) -> list[str]:
    """The CPU's vector and matrix features (or every flag)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            fl = line.split(":", 1)[1].split()
            return sorted(fl) if all_flags else sorted(f for f in fl if f.startswith(("avx512", "amx", "avx2",
                                                                                        "avx_vnni")))
    return []


def dram_read_gbps(tools: Path, tmp: Path) -> float:
    """moe-profile --quick, then the node0 x node0 'Memory read bandwidth'."""
    prof = tmp / "moe-bench-models-profile.txt"
    sh([str(tools / "moe-profile"), "--quick", "-o", str(prof)])
    show = sh([str(tools / "moe-profile"), "--show", str(prof)])
    lines = show.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Memory read bandwidth"):
            for row in lines[i + 1:]:
                m = re.match(r"\s*node0\s+([0-9.]+)", row)
                if m:
                    return float(m.group(1))
    raise RuntimeError("no memory read bandwidth in moe-profile --show:\n" + show)


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def host_busy(seconds: float = 0.5) -> tuple[float, float]:
    """(busy, steal) fractions of all CPUs over `seconds`, while we run nothing."""
    a = _cpu_times()
    time.sleep(seconds)
    b = _cpu_times()
    d = [y - x for x, y in zip(a, b)]
    total = sum(d[:8]) or 1
    idle = d[3] + d[4]
    return 1.0 - idle / total, d[7] / total


def wait_quiet(limit: float, max_wait: float) -> dict:
    """Waits (up to max_wait s) until other processes use under `limit` of the
    CPUs: the host is shared, and a build or test run beside the benchmark
    halves what every system gets.  Returns what was seen, for the record."""
    t0 = time.perf_counter()
    busy, steal = host_busy()
    while busy > limit and time.perf_counter() - t0 < max_wait:
        time.sleep(2.0)
        busy, steal = host_busy()
    return {"host_busy": round(busy, 3), "host_steal": round(steal, 3),
            "waited_s": round(time.perf_counter() - t0 - 0.5, 1)}


_HZ = os.sysconf("SC_CLK_TCK")


def _pid_cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / _HZ
    except OSError:
        return 0.0


class OthersMeter:
    """CPU time used by processes outside this benchmark while a run lasted:
    all CPUs' busy time (/proc/stat) minus this process's, its finished
    children's (moe-run) and its live workers' (llama.cpp, torch)."""

    def __init__(self, worker_pids: list[int]):
        self.pids = worker_pids

    def _ours(self) -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system + sum(map(_pid_cpu_s, self.pids))

    def __enter__(self):
        self.a, self.o, self.t = _cpu_times(), self._ours(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        b, o, t = _cpu_times(), self._ours(), time.perf_counter()
        d = [y - x for x, y in zip(self.a, b)]
        busy = (sum(d[:8]) - d[3] - d[4]) / _HZ
        wall = t - self.t
        self.share = max(0.0, busy - (o - self.o)) / (wall * (os.cpu_count() or 1))
        self.steal = d[7] / _HZ / (wall * (os.cpu_count() or 1))
        return False


def warm_page_cache(paths: list[Path]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    buf = bytearray(64 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                n += k
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------
# roofline
# --------------------------------------------------------------------------

def active_decode_bytes(cfg: dict, layers: int | None = None, bytes_per=2) -> dict[str, int]:
    h = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    L = layers if layers is not None else cfg["num_hidden_layers"]
    mt = cfg["model_type"]
    attn = h * nh * hd + 2 * h * nkv * hd + nh * hd * h
    if mt == "olmoe":
        attn += nh * hd + nkv * hd           # q_norm, k_norm over the projection
    elif mt == "qwen3_moe":
        attn += 2 * hd                       # per-head q_norm, k_norm
    norms = 2 * h
    n_exp = cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts")
    inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    router = n_exp * h
    experts = cfg["num_experts_per_tok"] * 3 * h * inter
    shared = 0
    if cfg.get("shared_expert_intermediate_size"):
        shared = 3 * h * cfg["shared_expert_intermediate_size"] + h
    per_layer = attn + norms + router + experts + shared
    head = cfg["vocab_size"] * h + h + h     # LM head, final norm, one embedding row
    parts = {"attention": L * attn, "norms": L * norms, "router": L * router,
             "experts": L * experts, "shared": L * shared, "lm_head_embed_norm": head}
    out = {k: v * bytes_per for k, v in parts.items()}
    out["total"] = (L * per_layer + head) * bytes_per
    return out


def _token_part(name: str) -> str:
    """Which part of a decode token's reads a GGUF tensor belongs to."""
    if name in ("token_embd.weight", "output.weight", "output_norm.weight"):
        return "lm_head_embed_norm"
    if "_exps." in name:
        return "experts"
    if "ffn_gate_inp" in name:
        return "router"
    if "_shexp" in name:
        return "shared"
    if name.endswith("norm.weight"):
        return "norms"
    return "attention"


def _decode_parts(tensors, cfg: dict) -> dict:
    """tensors: (name, type name, bytes, rows of the first dimension) ->
    bytes one decode token reads: all of each tensor, but top_k / n_experts
    of an expert tensor and one row of the token embedding."""
    n_exp = cfg.get("num_experts") or cfg.get("num_local_experts") or cfg.get("n_routed_experts")
    k = cfg["num_experts_per_tok"]
    parts = {"attention": 0, "norms": 0, "router": 0, "experts": 0, "shared": 0, "lm_head_embed_norm": 0}
    types: dict[str, int] = {}
    for name, tname, nb, rows in tensors:
        types[tname] = types.get(tname, 0) + nb
        if name == "token_embd.weight":
            nb //= rows
        elif "_exps." in name:
            nb = nb * k // n_exp
        parts[_token_part(name)] += nb
    out: dict = dict(parts)
    out["total"] = sum(parts.values())
    out["file_bytes_by_type"] = types
    return out


def gguf_decode_bytes(path: Path, cfg: dict) -> dict:
    """Bytes of weights one decode token reads in the file's own formats
    (its tensor types, so Q4_K_M's q4_K / q6_K mix counts as stored): every
    layer's attention, norms and router, top_k of the n_experts experts of
    each expert tensor (ffn_*_exps), shared experts if any, the final norm,
    the LM head and one row of the token embedding."""
    import gguf
    r = gguf.GGUFReader(str(path))
    # GGUF shapes are innermost first: the last is the embedding's vocab rows
    return _decode_parts(((t.name, t.tensor_type.name, int(t.n_bytes), int(t.shape[-1])) for t in r.tensors), cfg)


def full_depth_decode_bytes(model: str, fmt: str) -> dict:
    """The same for the real model at its full depth in the file type's
    layout (make_bench_model's types, which check_gguf.py holds to
    llama-quantize's), for scale."""
    import gguf_model as gm
    from shapes import CONFIGS
    cfg = dict(CONFIGS[model])
    specs = gm.tensor_specs(cfg)
    types = gm.llama_types(specs, cfg, fmt)
    return _decode_parts(((s.name, types[s.name].name, gm.tensor_nbytes(s, types[s.name]), s.shape[0])
                          for s in specs), cfg)


def kv_read_bytes(cfg: dict, position: int, bytes_per=2) -> int:
    """KV cache one decode token reads at `position` (f16, llama.cpp's
    default): not in the roofline, reported beside it."""
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return cfg["num_hidden_layers"] * position * 2 * cfg["num_key_value_heads"] * hd * bytes_per


# --------------------------------------------------------------------------
# systems
# --------------------------------------------------------------------------

class MoeRun:
    def __init__(self, name: str, binary: Path, path: Path, threads: int, ctx: int, rewarm: list[Path] | None = None):
        self.name, self.binary, self.path, self.threads, self.ctx = name, binary, path, threads, ctx
        self.load_s = None
        self.rewarm = rewarm or []

    def prepare(self) -> None:
        """Where llama.cpp's copy of the weights pushed the file out of the
        page cache, it is read back before each run (not timed), so that
        moe-run, too, starts with its weights warm."""
        if self.rewarm:
            warm_page_cache(self.rewarm)

    def run(self, prompt: list[int], n: int) -> dict:
        cmd = [str(self.binary), str(self.path), "--prompt-ids", ",".join(map(str, prompt)),
               "-n", str(n), "--stats", "json", "--ignore-eos", "--threads", str(self.threads),
               "--ctx", str(self.ctx)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{self.name}: exit {p.returncode}: {' '.join(cmd[:2])} ...\n"
                               f"{p.stderr[-3000:]}{p.stdout[-2000:]}")
        lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
        stats = json.loads(lines[-1])
        ids = []
        for ln in lines[:-1]:
            if re.fullmatch(r"[\s0-9]+", ln):
                ids.extend(int(x) for x in ln.split())
        self.load_s = wall - stats["prefill_s"] - stats["decode_s"]
        keep = ("prefill_s", "decode_s", "moe_s", "cpu_s", "plan_s", "experts_cpu",
                "expert_tokens", "rss_bytes", "peak_rss_bytes", "weight_bytes", "profile")
        extra = {k: stats[k] for k in keep if k in stats}
        extra["process_wall_s"] = wall
        return {"prefill_tok_s": stats["prefill_tok_s"], "decode_tok_s": stats["decode_tok_s"],
                "tokens": ids, "extra": extra}


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, gguf: Path, threads: int, ctx: int):
        import llama_cpp
        self.lc = llama_cpp
        t0 = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads,
                                   n_ctx=ctx, n_batch=512, n_ubatch=512, logits_all=False,
                                   use_mmap=True, seed=0, verbose=False)
        self.load_s = time.perf_counter() - t0
        self.n_vocab = self.llm.n_vocab()

    def _argmax(self) -> int:
        ptr = self.lc.llama_get_logits_ith(self.llm.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def run(self, prompt: list[int], n: int) -> dict:
        llm = self.llm
        llm.reset()
        self.lc.llama_perf_context_reset(llm.ctx)
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = self._argmax()
        t1 = time.perf_counter()
        toks = [tok]
        for _ in range(n - 1):
            llm.eval([tok])
            tok = self._argmax()
            toks.append(tok)
        t2 = time.perf_counter()
        perf = self.lc.llama_perf_context(llm.ctx)
        pf, dc = t1 - t0, t2 - t1
        return {"prefill_tok_s": len(prompt) / pf, "decode_tok_s": (n - 1) / dc if n > 1 else 0.0,
                "tokens": toks,
                "extra": {"prefill_s": pf, "decode_s": dc,
                          "perf_prefill_tok_s": perf.n_p_eval / (perf.t_p_eval_ms / 1e3) if perf.t_p_eval_ms else None,
                          "perf_decode_tok_s": perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms else None,
                          "perf_n_p_eval": perf.n_p_eval, "perf_n_eval": perf.n_eval}}

    def close(self):
        self.llm.close()
        del self.llm


class LlamaBench:
    """llama.cpp through its own llama-bench, a process per run: prefill is
    `-p P -n 0` (one batch of P tokens), decode `-p 0 -n N-1 -d P` (N-1
    single-token steps after P tokens of context, as moe-run decodes after
    its prompt), each `-r 1` after llama-bench's warm-up, with llama.cpp's
    defaults otherwise (weights repacked for its CPU kernels, f16 KV cache).
    Its prompt tokens are its own, so no generated ids to compare."""

    def __init__(self, name: str, binary: Path, gguf: Path, threads: int):
        self.name, self.binary, self.gguf, self.threads = name, binary, gguf, threads
        self.load_s = None
        self.info: dict = {}

    def _bench(self, p: int, n: int, depth: int) -> dict:
        cmd = [str(self.binary), "-m", str(self.gguf), "-t", str(self.threads), "-p", str(p), "-n", str(n),
               "-d", str(depth), "-r", "1", "-o", "json"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name}: exit {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        rows = json.loads(proc.stdout)
        return rows[0]

    def run(self, prompt: list[int], n: int) -> dict:
        t0 = time.perf_counter()
        pp = self._bench(len(prompt), 0, 0)
        tg = self._bench(0, n - 1, len(prompt)) if n > 1 else {"avg_ts": 0.0, "avg_ns": 0}
        self.info = {k: pp.get(k) for k in ("build_commit", "cpu_info", "model_type", "model_size", "repack",
                                            "type_k", "type_v", "n_batch", "n_ubatch", "flash_attn")}
        return {"prefill_tok_s": pp["avg_ts"], "decode_tok_s": tg["avg_ts"], "tokens": [],
                "extra": {"prefill_s": pp["avg_ns"] / 1e9, "decode_s": tg["avg_ns"] / 1e9,
                          "process_wall_s": time.perf_counter() - t0, "llama_bench": self.info}}


class HF:
    def __init__(self, hf_dir: Path, dtype_name: str, threads: int, moerun_lib: str | None = None):
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        import torch
        from transformers import AutoModelForCausalLM
        self.torch = torch
        self.name = f"hf-{dtype_name}" + ("+moerun" if moerun_lib else "")
        torch.set_num_threads(threads)
        dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype_name]
        t0 = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
        if moerun_lib:  # the plugin path: transformers' own model, its experts through moerun
            os.environ["MOERUN_LIB"] = moerun_lib
            sys.path.insert(0, str(REPO / "python"))
            import moerun
            moerun.patch(self.model, device="cpu", threads=threads, profile="")
        self.load_s = time.perf_counter() - t0
        c = self.model.config
        # transformers >= 5.2x names the KV cache argument `cache` (past_key_values is deprecated)
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.impl = {"attn": getattr(c, "_attn_implementation", None),
                     "experts": getattr(c, "_experts_implementation", None)}

    def run(self, prompt: list[int], n: int) -> dict:
        torch = self.torch
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            t0 = time.perf_counter()
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            tok = int(out.logits[0, -1].float().argmax())
            t1 = time.perf_counter()
            cache = _cache_of(out)
            toks = [tok]
            for _ in range(n - 1):
                out = self.model(input_ids=torch.tensor([[tok]]), use_cache=True, **{self.cache_kw: cache})
                cache = _cache_of(out)
                tok = int(out.logits[0, -1].float().argmax())
                toks.append(tok)
            t2 = time.perf_counter()
        pf, dc = t1 - t0, t2 - t1
        return {"prefill_tok_s": len(prompt) / pf, "decode_tok_s": (n - 1) / dc if n > 1 else 0.0,
                "tokens": toks, "extra": {"prefill_s": pf, "decode_s": dc, **self.impl}}

    def close(self):
        del self.model
        gc.collect()


def _worker(conn, cls_name: str, kwargs: dict) -> None:
    """Child process: builds one in-process system, then serves run requests."""
    try:
        system = {"LlamaCpp": LlamaCpp, "HF": HF}[cls_name](**kwargs)
        conn.send(("ok", {"load_s": system.load_s, "name": system.name}))
    except BaseException:
        conn.send(("err", traceback.format_exc()))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            break
        try:
            conn.send(("ok", system.run(*msg)))
        except BaseException:
            conn.send(("err", traceback.format_exc()))


class Remote:
    """llama.cpp and torch each in a process of its own (spawned, fresh): in one
    process their OpenMP thread pools slow each other down (llama.cpp decode
    fell from ~8 to ~1.2 tok/s once torch had run a parallel op), and a crash
    in one (e.g. an illegal instruction) does not take the benchmark down."""

    def __init__(self, cls_name: str, **kwargs):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, cls_name, kwargs), daemon=True)
        self.proc.start()
        info = self._recv(f"{cls_name} load")
        self.name, self.load_s = info["name"], info["load_s"]

    def _recv(self, what: str):
        try:
            st, val = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise RuntimeError(f"{what}: worker died, exit code {self.proc.exitcode}") from None
        if st != "ok":
            raise RuntimeError(f"{what} failed in the worker:\n{val}")
        return val

    def run(self, prompt: list[int], n: int) -> dict:
        self.conn.send((prompt, n))
        return self._recv(f"{self.name} run")

    def close(self):
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(60)


class FreshRemote:
    """A Remote system started afresh for every run (prepare() before the
    run, finish() after; neither timed): where the model file and llama.cpp's
    repacked copy of its weights do not both fit in memory beside the page
    cache that moe-run reads, llama.cpp must not stay resident between runs."""

    def __init__(self, cls_name: str, name: str, **kwargs):
        self.cls_name, self.name, self.kwargs = cls_name, name, kwargs
        self.cur: Remote | None = None
        self.load_s = None

    @property
    def proc(self):
        return self.cur.proc if self.cur else None

    def prepare(self) -> None:
        self.cur = Remote(self.cls_name, **self.kwargs)
        self.load_s = self.cur.load_s

    def run(self, prompt: list[int], n: int) -> dict:
        if self.cur is None:
            self.prepare()
        return self.cur.run(prompt, n)

    def finish(self) -> None:
        if self.cur is not None:
            self.cur.close()
        self.cur = None

    def close(self) -> None:
        self.finish()


def _cache_of(out):
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


# --------------------------------------------------------------------------

def common_prefix(a: list[int], b: list[int]) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def measure_phase(systems, prompt, n, repeats, emit, phase, model_name, quiet, probe) -> dict[str, list[dict]]:
    """probe() measures the DRAM read bandwidth (GB/s) just before and just
    after each counted run: the host's bandwidth drifts by a third within
    minutes (other tenants' memory traffic, which no CPU counter here sees),
    so each run's roofline uses the bandwidth measured beside it."""
    res: dict[str, list[dict]] = {s.name: [] for s in systems}
    warm: dict[str, dict] = {}

    def prepare(s):       # untimed: a fresh llama.cpp process, or the page cache re-read for moe-run
        if hasattr(s, "prepare"):
            s.prepare()

    def finish(s):
        if hasattr(s, "finish"):
            s.finish()

    for s in systems:                                   # warm-up, not counted
        t0 = time.perf_counter()
        prepare(s)
        warm[s.name] = s.run(prompt, n)
        finish(s)
        print(f"  warm-up {s.name:12s} {time.perf_counter() - t0:6.1f} s  "
              f"prefill {warm[s.name]['prefill_tok_s']:8.2f} decode {warm[s.name]['decode_tok_s']:7.2f} tok/s",
              flush=True)
    for r in range(repeats):
        order = systems[r % len(systems):] + systems[:r % len(systems)]
        for s in order:
            for attempt in range(4):      # a run that shared the CPUs with others is done again
                prepare(s)
                pids = [x.proc.pid for x in systems if getattr(x, "proc", None) is not None]
                q = wait_quiet(*quiet)
                bw_before = probe()
                with OthersMeter(pids) as om:
                    m = s.run(prompt, n)
                bw_after = probe()
                finish(s)
                q["dram_gbps_before"], q["dram_gbps_after"] = bw_before, bw_after
                q["others_during"] = round(om.share, 3)
                q["steal_during"] = round(om.steal, 3)
                q["attempt"] = attempt
                if om.share <= quiet[0] or attempt == 3:
                    break
                emit({"kind": "discarded", "model": model_name, "phase": phase, "system": s.name, "round": r,
                      "prefill_tok_s": m["prefill_tok_s"], "decode_tok_s": m["decode_tok_s"], **q})
                print(f"  round {r} {s.name:12s} discarded: other processes used {100 * om.share:.0f}% "
                      f"of the CPUs during the run", flush=True)
            res[s.name].append(m)
            emit({"kind": "run", "model": model_name, "phase": phase, "system": s.name, "round": r,
                  "prefill_tok_s": m["prefill_tok_s"], "decode_tok_s": m["decode_tok_s"],
                  "tokens": m["tokens"], **q, **m["extra"]})
            m["quiet"] = q
            print(f"  round {r} {s.name:12s} prefill {m['prefill_tok_s']:8.2f} decode {m['decode_tok_s']:7.2f} tok/s"
                  f"  (others: {100 * q['host_busy']:.0f}% before, {100 * q['others_during']:.0f}% during; "
                  f"steal {100 * q['steal_during']:.0f}%"
                  f"{', waited %.0f s' % q['waited_s'] if q['waited_s'] > 1 else ''}; "
                  f"DRAM {q['dram_gbps_before']:.1f}/{q['dram_gbps_after']:.1f} GB/s)", flush=True)
    return res


def med(xs):
    return statistics.median(xs) if xs else float("nan")


FORMATS = ("bf16", "q8_0", "q4_k_m")   # model-<format>.gguf, in the order they run


def bench_model(mdir: Path, args, emit) -> list[dict]:
    """Every GGUF file of the model directory that --formats asks for, one
    after another, each in its own interleaved rounds."""
    info = json.loads((mdir / "bench-model.json").read_text())
    hf_cfg = mdir / "hf" / "config.json"
    cfg = json.loads(hf_cfg.read_text()) if hf_cfg.exists() else info["config"]
    formats = [f for f in FORMATS if (mdir / f"model-{f}.gguf").exists() and f in args.formats]
    if not formats:
        raise SystemExit(f"{mdir}: none of model-{{{','.join(sorted(args.formats))}}}.gguf")
    rng = np.random.default_rng(PROMPT_SEED)
    prompt = [int(x) for x in rng.integers(256, cfg["vocab_size"], size=args.prompt_len)]
    out = []
    for fmt in formats:
        out += bench_format(mdir, cfg, info, fmt, prompt, args, emit)
    return out


def bench_format(mdir: Path, cfg: dict, info: dict, fmt: str, prompt: list[int], args, emit) -> list[dict]:
    from shapes import CONFIGS
    gguf = mdir / f"model-{fmt}.gguf"
    hf_dir = mdir / "hf" if fmt == "bf16" and (mdir / "hf" / "config.json").exists() else None
    name = f"{info['model']}-{info['layers']}l"
    n, P, T = args.decode, args.prompt_len, args.threads
    ctx = ((P + n + 255) // 256) * 256
    tools = args.tools
    mem = meminfo()
    fsize = gguf.stat().st_size
    print(f"\n## {name} {fmt.upper()}  ({gguf}, {fsize / 1e9:.2f} GB)", flush=True)
    if fsize + (2 << 30) > mem["MemTotal"]:
        note = (f"skipped: the file ({fsize / 1e9:.1f} GB) does not fit in memory ({mem['MemTotal'] / 1e9:.1f} GB) "
                "with 2 GiB to spare; decode would measure the disk")
        print(f"  {note}", flush=True)
        emit({"kind": "skipped", "model": name, "format": fmt, "file": str(gguf), "reason": note})
        return []
    # llama.cpp copies the weights it repacks into memory of its own: where that
    # copy and the file's page cache do not fit together, llama.cpp runs in a
    # fresh process per run and moe-run's file is read back before each of its runs.
    tight = args.fresh == "on" or (args.fresh == "auto" and 2 * fsize + (2 << 30) > mem["MemTotal"])
    hf_systems = {"hf-bf16", "hf-bf16+moerun", "hf-f32", "moerun-hf"} & args.systems
    files = [gguf]
    if hf_dir is not None and (hf_systems or "moerun" in args.systems):
        files += sorted(hf_dir.glob("*.safetensors"))
    nb, ws = warm_page_cache(files)
    print(f"  page cache: read {nb / 1e9:.2f} GB in {ws:.1f} s{'; tight: llama.cpp fresh per run' if tight else ''}",
          flush=True)
    bw = []
    for _ in range(3):
        wait_quiet(args.quiet_limit, args.quiet_wait)
        bw.append(dram_read_gbps(tools, Path(args.tmp)))
    print(f"  DRAM read bandwidth (moe-profile --quick, 3 times): {', '.join(f'{x:.1f}' for x in bw)} GB/s",
          flush=True)

    roof = gguf_decode_bytes(gguf, cfg)
    L_full = CONFIGS[info["model"]]["num_hidden_layers"]
    roof_full_total = full_depth_decode_bytes(info["model"], fmt)["total"]
    kv = kv_read_bytes(cfg, P + n // 2)

    systems: list = []
    loads = {}
    if "moerun" in args.systems:
        systems.append(MoeRun("moerun-gguf", tools / "moe-run", gguf, T, ctx, rewarm=[gguf] if tight else None))
        if hf_dir is not None:
            systems.append(MoeRun("moerun-hf", tools / "moe-run", hf_dir, T, ctx))
    if "llama.cpp" in args.systems:
        if args.llama_cpp == "bench":
            systems.append(LlamaBench("llama.cpp", args.llama_bin / "llama-bench", gguf, T))
        elif tight:
            systems.append(FreshRemote("LlamaCpp", "llama.cpp", gguf=gguf, threads=T, ctx=ctx))
        else:
            lc = Remote("LlamaCpp", gguf=gguf, threads=T, ctx=ctx)
            loads["llama.cpp"] = lc.load_s
            systems.append(lc)
    hf_bf16 = hf_patched = None
    if hf_dir is not None and "hf-bf16" in args.systems:
        hf_bf16 = Remote("HF", hf_dir=hf_dir, dtype_name="bf16", threads=T)
        loads["hf-bf16"] = hf_bf16.load_s
        systems.append(hf_bf16)
    if hf_dir is not None and "hf-bf16+moerun" in args.systems:  # the Python plugin path (docs/plugin.md)
        hf_patched = Remote("HF", hf_dir=hf_dir, dtype_name="bf16", threads=T,
                            moerun_lib=str(args.build / "libmoerun.so"))
        loads["hf-bf16+moerun"] = hf_patched.load_s
        systems.append(hf_patched)
    if not systems:
        raise SystemExit("no system to run (--systems)")
    if loads:
        print(f"  loaded: {', '.join(f'{k} {v:.1f} s' for k, v in loads.items())}", flush=True)
    quiet = (args.quiet_limit, args.quiet_wait)

    def probe() -> float:
        return dram_read_gbps(tools, Path(args.tmp))

    results = measure_phase(systems, prompt, n, args.repeats, emit, fmt, f"{name} {fmt}", quiet, probe)
    ref_phase = {s: 1 for s in results}
    for s in systems:
        if s is hf_bf16 or s is hf_patched or isinstance(s, (Remote, FreshRemote)):
            s.close()
    systems = [s for s in systems if isinstance(s, MoeRun)]

    # transformers f32 (bf16 directory only) if it fits beside the page cache
    params = info["params"]
    file_bytes = sum(p.stat().st_size for p in files)
    need = params * 4 + file_bytes + (2 << 30)
    want_f32 = args.hf_f32 == "on" or (args.hf_f32 == "auto" and need < mem["MemTotal"])
    f32_note = None
    gguf_run = next((s for s in systems if s.name == "moerun-gguf"), None)
    if hf_dir is not None and "hf-f32" in args.systems and want_f32 and gguf_run is not None:
        hf32 = Remote("HF", hf_dir=hf_dir, dtype_name="f32", threads=T)
        loads["hf-f32"] = hf32.load_s
        r2 = measure_phase([gguf_run, hf32], prompt, n, args.repeats, emit, f"{fmt}-f32", f"{name} {fmt}", quiet,
                           probe)
        results["hf-f32"] = r2["hf-f32"]
        results["moerun-gguf@2"] = r2["moerun-gguf"]
        ref_phase["hf-f32"] = 2
        hf32.close()
    elif hf_dir is not None and "hf-f32" in args.systems:
        f32_note = (f"skipped: f32 weights {params * 4 / 1e9:.1f} GB + page cache {file_bytes / 1e9:.1f} GB "
                    f"+ 2 GiB > memory {mem['MemTotal'] / 1e9:.1f} GB")
        print(f"  hf-f32 {f32_note}", flush=True)
    gc.collect()

    for _ in range(3):
        wait_quiet(args.quiet_limit, args.quiet_wait)
        bw.append(dram_read_gbps(tools, Path(args.tmp)))
    bw_best = max(bw)   # the best: the quiet host's figure, the conservative roofline
    print(f"  DRAM read bandwidth after: {', '.join(f'{x:.1f}' for x in bw[3:])} GB/s (used: the best, "
          f"{bw_best:.1f})", flush=True)
    roof_tok_s = bw_best * 1e9 / roof["total"]
    roof_full_tok_s = bw_best * 1e9 / roof_full_total

    # agreement with the reference (f32 transformers when it ran); llama-bench gives no ids
    ref_name = next((r for r in ("hf-f32", "hf-bf16", "moerun-gguf", "llama.cpp")
                     if r in results and results[r] and results[r][0]["tokens"]), None)
    ref_toks = results[ref_name][0]["tokens"] if ref_name else []
    base_name = "moerun-gguf" if "moerun-gguf" in results else next(iter(results))

    summaries = []
    base = {1: med([m["decode_tok_s"] for m in results[base_name]]),
            2: med([m["decode_tok_s"] for m in results.get("moerun-gguf@2", [])])}
    base_pf = {1: med([m["prefill_tok_s"] for m in results[base_name]]),
               2: med([m["prefill_tok_s"] for m in results.get("moerun-gguf@2", [])])}
    for sname, ms in results.items():
        if sname == "moerun-gguf@2":
            continue
        ph = ref_phase[sname]
        dec = med([m["decode_tok_s"] for m in ms])
        pf = med([m["prefill_tok_s"] for m in ms])
        toks = ms[0]["tokens"]
        s = {"kind": "summary", "model": name, "format": fmt, "file": gguf.name, "system": sname, "phase": ph,
             "runs": len(ms), "prompt_tokens": P, "decode_tokens": n, "threads": T,
             "prefill_tok_s": pf, "decode_tok_s": dec,
             "prefill_runs": [m["prefill_tok_s"] for m in ms],
             "decode_runs": [m["decode_tok_s"] for m in ms],
             "base": base_name,
             "prefill_x_moerun": pf / base_pf[ph], "decode_x_moerun": dec / base[ph],
             "decode_x_roofline": dec / roof_tok_s,
             # each run against the bandwidth measured beside it (mean of before and after)
             "decode_x_roofline_adjacent": med([m["decode_tok_s"] * roof["total"] /
                                                (0.5e9 * (m["quiet"]["dram_gbps_before"] +
                                                          m["quiet"]["dram_gbps_after"])) for m in ms]),
             "dram_gbps_adjacent": [round(0.5 * (m["quiet"]["dram_gbps_before"] + m["quiet"]["dram_gbps_after"]), 1)
                                    for m in ms],
             "agree_prefix": common_prefix(toks, ref_toks) if toks and ref_toks else None, "agree_ref": ref_name,
             "tokens_stable": all(m["tokens"] == toks for m in ms),
             "others_during_max": max(m["quiet"]["others_during"] for m in ms),
             "load_s": loads.get(sname)}
        if sname.startswith("moerun"):
            ex = [m["extra"] for m in ms]
            pf_s, dc_s = med([e["prefill_s"] for e in ex]), med([e["decode_s"] for e in ex])
            # moe_s/cpu_s cover prefill + decode together
            s.update({"prefill_s": pf_s, "decode_s": dc_s, "moe_s": med([e["moe_s"] for e in ex]),
                      "cpu_s": med([e["cpu_s"] for e in ex]),
                      "dense_s": pf_s + dc_s - med([e["moe_s"] for e in ex]),
                      "peak_rss_bytes": ex[0].get("peak_rss_bytes"), "profile": ex[0].get("profile")})
        if sname == "llama.cpp" and ms[0]["extra"].get("llama_bench"):
            s["llama_bench"] = ms[0]["extra"]["llama_bench"]
        summaries.append(s)
        emit(s)
    mrow = {"kind": "model", "model": name, "format": fmt, "file": str(gguf), "file_bytes": fsize,
            "dir": str(mdir), "layers": info["layers"],
            "full_layers": L_full, "params": params, "seed": info["seed"],
            "expert_pool": (info.get("gguf", {}).get(fmt) or {}).get("expert_pool"),
            "prompt_seed": PROMPT_SEED, "prompt_tokens": P, "decode_tokens": n, "ctx": ctx,
            "threads": T, "dram_read_gbps": bw, "dram_read_gbps_used": bw_best,
            "active_decode_bytes": roof, "roofline_decode_tok_s": roof_tok_s,
            "active_decode_bytes_full_depth": roof_full_total, "roofline_decode_tok_s_full_depth": roof_full_tok_s,
            "kv_read_bytes_mid_decode": kv, "tight_memory": tight,
            "llama_cpp_method": args.llama_cpp, "cpu": args.cpu, "cpu_flags": args.cpu_flags,
            "load_s": loads, "hf_f32": f32_note or ("ran" if "hf-f32" in results else "not requested"),
            "page_cache_warm_gb": nb / 1e9, "reference_tokens": ref_toks, "reference": ref_name}
    emit(mrow)
    print_table(mrow, summaries)
    return summaries


def print_table(mrow: dict, summaries: list[dict]) -> None:
    rb = mrow["active_decode_bytes"]
    base = summaries[0]["base"]
    print(f"\n### {mrow['model']} {mrow['format'].upper()}: prompt {mrow['prompt_tokens']} tokens, decode "
          f"{mrow['decode_tokens']} tokens, {mrow['threads']} threads, median of {summaries[0]['runs']} rounds, "
          f"page cache warm; {mrow['cpu']} ({' '.join(mrow['cpu_flags'])})\n")
    print(f"roofline: {rb['total'] / 1e6:.1f} MB of weights per decode token in the file's formats "
          f"(experts {rb['experts'] / 1e6:.1f}, attention {rb['attention'] / 1e6:.1f}, "
          f"LM head and embedding row {rb['lm_head_embed_norm'] / 1e6:.1f}; "
          f"KV cache mid-decode {mrow['kv_read_bytes_mid_decode'] / 1e6:.1f} MB not counted) / DRAM "
          f"{mrow['dram_read_gbps_used']:.1f} GB/s = {mrow['roofline_decode_tok_s']:.1f} tok/s "
          f"(full {mrow['full_layers']}-layer model: {mrow['roofline_decode_tok_s_full_depth']:.1f} tok/s)\n")
    print(f"| system | prefill tok/s | decode tok/s | prefill / {base} | decode / {base} | decode / roofline "
          "(best DRAM) | decode / roofline (DRAM beside each run) | greedy prefix vs "
          f"{mrow['reference']} |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summaries:
        agree = f"{s['agree_prefix']}/{s['decode_tokens']}" if s["agree_prefix"] is not None else ""
        print(f"| {s['system']} | {s['prefill_tok_s']:.1f} | {s['decode_tok_s']:.2f} | "
              f"{s['prefill_x_moerun']:.2f} | {s['decode_x_moerun']:.2f} | {s['decode_x_roofline']:.2f} | "
              f"{s['decode_x_roofline_adjacent']:.2f} ({min(s['dram_gbps_adjacent']):.0f}-{max(s['dram_gbps_adjacent']):.0f} GB/s) | "
              f"{agree} |")
    by = {s["system"]: s for s in summaries}
    if "moerun-gguf" in by and "llama.cpp" in by:
        m, lc = by["moerun-gguf"], by["llama.cpp"]
        print(f"\nmoerun-gguf against llama.cpp on {mrow['format'].upper()}: decode "
              f"{m['decode_tok_s'] / lc['decode_tok_s']:.2f}x (target >= 1.5), prefill "
              f"{m['prefill_tok_s'] / lc['prefill_tok_s']:.2f}x (target >= 2); decode / roofline beside each run "
              f"{m['decode_x_roofline_adjacent']:.2f} (target >= 0.85)", end="")
    for s in summaries:
        if "moe_s" in s:
            tot = s["prefill_s"] + s["decode_s"]
            print(f"\n{s['system']}: prefill {s['prefill_s']:.3f} s + decode {s['decode_s']:.3f} s; "
                  f"experts (moe_s) {s['moe_s']:.3f} s = {100 * s['moe_s'] / tot:.0f}%, "
                  f"dense parts {s['dense_s']:.3f} s = {100 * s['dense_s'] / tot:.0f}%", end="")
    print("\n", flush=True)


def versions(tools: Path, llama_bin: Path | None = None) -> dict:
    v = {"python": sys.version.split()[0]}
    for mod in ("numpy", "torch", "transformers", "llama_cpp", "gguf", "safetensors"):
        try:
            from importlib.metadata import version
            v[mod] = version({"llama_cpp": "llama_cpp_python"}.get(mod, mod))
        except Exception:
            v[mod] = None
    try:
        v["moe-run"] = sh([str(tools / "moe-run"), "--version"]).strip()
    except Exception as e:  # pragma: no cover
        v["moe-run"] = f"unknown ({e})"
    try:
        v["git"] = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()
        v["git_dirty"] = bool(sh(["git", "-C", str(REPO), "status", "--porcelain", "-uno"]).strip())
    except Exception:
        v["git"] = None
    try:
        import llama_cpp
        v["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode()
        v["llama_cpp_lib_path"] = os.environ.get("LLAMA_CPP_LIB_PATH")
    except Exception:
        pass
    if llama_bin is not None and (llama_bin / "llama-bench").exists():
        p = subprocess.run([str(llama_bin / "llama-bench"), "--version"], capture_output=True, text=True)
        v["llama_bench"] = (p.stdout + p.stderr).strip()[-300:]
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help="directories made by make_bench_model.py")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--systems", default="moerun,llama.cpp,hf-bf16,hf-f32",
                    help="comma-separated, of moerun (moe-run on the GGUF, and on hf/ for bf16), llama.cpp, "
                         "hf-bf16, hf-f32, hf-bf16+moerun (transformers with moerun.patch; the hf systems run "
                         "on the bf16 directory's hf/ only)")
    ap.add_argument("--formats", default=",".join(FORMATS),
                    help="which model-<format>.gguf files of each directory to run, of " + ", ".join(FORMATS))
    ap.add_argument("--llama-cpp", choices=("auto", "python", "bench"), default="auto",
                    help="llama.cpp through llama-cpp-python (prefill = one eval of the prompt ids, decode = "
                         "eval per token, greedy ids compared) or through its llama-bench (-p P / -n N-1 -d P); "
                         "auto: python if llama_cpp imports, else bench")
    ap.add_argument("--llama-bin", type=Path, default=Path(os.environ.get("LLAMA_CPP_BIN", ".")),
                    help="llama.cpp's build/bin, for --llama-cpp bench (default: $LLAMA_CPP_BIN)")
    ap.add_argument("--hf-f32", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--fresh", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp in a fresh process per run and moe-run's file read back into the page cache "
                         "before each of its runs; auto: where twice the file plus 2 GiB exceeds memory")
    ap.add_argument("--machine", default=None, help="results file name prefix (default: from the CPU)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "models" / "results")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--build", type=Path, default=REPO / "build" / "release",
                    help="where moe-run and moe-profile are; they are copied to --tmp first, so that "
                         "a rebuild during the benchmark does not change the binary under it")
    ap.add_argument("--quiet-limit", type=float, default=0.15,
                    help="before each run, wait while other processes use more than this share of the CPUs")
    ap.add_argument("--quiet-wait", type=float, default=120.0, help="... for at most this many seconds")
    args = ap.parse_args()
    args.systems = set(args.systems.split(","))
    args.formats = {f.strip().lower() for f in args.formats.split(",") if f.strip()}
    if args.formats - set(FORMATS):
        ap.error(f"--formats: unknown {sorted(args.formats - set(FORMATS))} (of {', '.join(FORMATS)})")
    if args.llama_cpp == "auto":
        try:
            import llama_cpp  # noqa: F401
            args.llama_cpp = "python"
        except ImportError:
            args.llama_cpp = "bench"
    if "llama.cpp" in args.systems and args.llama_cpp == "bench" and not (args.llama_bin / "llama-bench").exists():
        ap.error(f"--llama-cpp bench: no llama-bench in {args.llama_bin} (--llama-bin or $LLAMA_CPP_BIN)")
    args.cpu, args.cpu_flags = lscpu_model(), cpu_flags()
    args.tools = Path(args.tmp) / f"moe-bench-bin-{os.getpid()}"
    args.tools.mkdir(parents=True, exist_ok=True)
    for tool in ("moe-run", "moe-profile"):
        shutil.copy2(args.build / tool, args.tools / tool)

    cpu = lscpu_model()
    machine = args.machine or re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(r\)|\(tm\)|processor|cpu", "",
                                                                  cpu.lower())).strip("-") + f"-{os.cpu_count()}c"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{machine}-{dt.date.today().isoformat()}.jsonl"
    fout = path.open("a")

    def emit(obj: dict) -> None:
        fout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
        fout.flush()

    mem = meminfo()
    mrow = {"kind": "machine", "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "cpu": cpu, "nproc": os.cpu_count(), "flags": cpu_flags(),
            "flags_all": cpu_flags(all_flags=True),
            "mem_total_bytes": mem["MemTotal"], "kernel": platform.release(),
            "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items()},
            "versions": versions(args.tools, args.llama_bin)}
    emit(mrow)
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, {mem['MemTotal'] / 2**30:.1f} GiB; results -> {path}")
    for mdir in args.models:
        bench_model(mdir, args, emit)
    fout.close()
    shutil.rmtree(args.tools, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
