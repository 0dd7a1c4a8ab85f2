#!/usr/bin/env python3
"""Quantized GGUF fixtures for moerun's tests, and llama.cpp's logits on them.

Usage (none of it runs in CI; tests/data/models/quant/README.md has the
versions and the measured agreement):

    LLAMA_CPP_LIB_PATH=/path/to/llama.cpp/build/bin \\
    PYTHONPATH=/path/to/llama_cpp_python-0.3.36 \\
    python tests/gen/make_quant_models.py --llama-bin /path/to/llama.cpp/build/bin \\
        --out tests/data/models/quant [--arch NAME ...] [--moe-run build/release/moe-run]

For each architecture (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2) it
writes a tiny random-weight model 256 wide (so that llama.cpp's 256-element
k-quants are really used: hidden_size is the row length of the experts' gate
and up, the attention's q/k/v, the embeddings and the LM head) as a BF16 GGUF
laid out as llama.cpp's converter writes one (make_tiny_models.py's metadata
writer; weights drawn here with numpy, so neither torch nor transformers is
needed), then:

  1. llama-quantize (no importance matrix) turns it into each of FTYPES:
     <out>/<arch>/<FTYPE>.gguf, committed as they are (all but 8: PARTIAL);
  2. llama.cpp (through llama-cpp-python, logits_all, an F32 KV cache, no
     flash attention, 2 threads) evaluates the prompt and decodes N_GEN
     greedy tokens on each file: <out>/<arch>/<FTYPE>.logits;
  3. the same on an all-F32 copy of the BF16 model (not committed):
     <out>/<arch>/f32.logits, the unquantized model's logits, to tell the
     quantization's own error from the disagreement between moerun and
     llama.cpp.

A .logits file (little-endian):
    "MOELGT1\\0", u32 n_prompt, u32 n_gen, u32 vocab, u32 0,
    i32 prompt[n_prompt], i32 tokens[n_gen]   (llama.cpp's greedy choices)
    f32 logits[n_prompt + n_gen - 1][vocab]   (every prompt position, then
                                               the steps fed tokens[0..n_gen-2])

With --moe-run it also runs moerun's test on all 30 files before removing
those not committed (unless --all); docs/models.md's numbers are its output.

Versions that wrote the committed files: llama.cpp as vendored in
llama-cpp-python 0.3.36 (ggml 0.25.3, libllama 0.5.0; built with
-DGGML_NATIVE=ON on an AVX-512 VNNI/BF16 machine without AMX), numpy 2.4.6,
gguf 0.19.0, python 3.11.7.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_models as tiny  # noqa: E402  (configs and the GGUF metadata writer)

FTYPES = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "IQ4_XS", "Q4_0"]
# What is committed (tests/test_llm.c's committed() says the same): every
# format of the three architectures whose attention llama.cpp lets be
# narrow, two of qwen2_moe's and olmoe's, whose q and o (and OLMoE's k
# and v) llama.cpp requires hidden x hidden, which makes their files the
# largest. All 30 are generated and checked; --all keeps them.
PARTIAL = {"qwen2_moe": {"Q4_K_M", "IQ4_XS"}, "olmoe": {"Q5_K_M", "Q4_0"}}
VOCAB = 32
PROMPT = [1, 25, 20, 17, 28, 4, 30, 11, 18, 13, 9, 22]
N_GEN = 16
SEED = 2024

# The tiny configs of make_tiny_models.py, widened to 256 and cut to what
# keeps the files small (100-400 KB each): one decoder layer (an MoE one:
# DeepSeek-V2's dense MLP is the same code as its shared expert), 4
# experts of 32, top-2, a vocabulary of 32, attention of 2 heads (1 KV
# head) of 32 where llama.cpp allows head_dim * heads != hidden (Mixtral,
# Qwen3-MoE). Row lengths other than 256 (o_proj's 64, down's 32) are what
# llama-quantize's fallbacks (q5_0, q8_0, iq4_nl, ...) are for.
WIDE = {
    "hidden_size": 256, "vocab_size": VOCAB, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 32, "num_experts_per_tok": 2,
}
OVERRIDES = {
    "mixtral": {"intermediate_size": 32, "num_local_experts": 4},
    # llama.cpp's qwen2moe takes q and o as hidden x hidden whatever
    # head_dim says (8 heads of 32, 1 KV head); its olmoe, k and v too
    # (8 KV heads: MHA, as OLMoE is)
    "qwen2_moe": {"intermediate_size": 32, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
                  "num_experts": 4, "num_attention_heads": 8},
    "qwen3_moe": {"intermediate_size": 32, "moe_intermediate_size": 32, "num_experts": 4},
    "olmoe": {"intermediate_size": 32, "num_experts": 4, "num_attention_heads": 8, "num_key_value_heads": 8},
    "deepseek_v2": {"intermediate_size": 32, "moe_intermediate_size": 32, "n_routed_experts": 4,
                    "n_shared_experts": 1, "first_k_dense_replace": 0, "num_key_value_heads": 2, "head_dim": None,
                    "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16},
}


def config(arch: str) -> dict:
    cfg = dict(tiny.COMMON)
    cfg.update(tiny.CONFIGS[arch])
    cfg.update(WIDE)
    cfg.update(OVERRIDES[arch])
    if cfg.get("head_dim") is None:
        cfg.pop("head_dim", None)
    return cfg


def tensors(arch: str, cfg: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, numpy shape (outermost first), kind) in the converter's order."""
    h, V = cfg["hidden_size"], cfg["vocab_size"]
    H = cfg["num_attention_heads"]
    E = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
    inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    out = [("token_embd.weight", (V, h), "embed")]
    for b in range(cfg["num_hidden_layers"]):
        p = f"blk.{b}."
        out.append((p + "attn_norm.weight", (h,), "norm"))
        if arch == "deepseek_v2":
            kvl, nope, rope, vd = cfg["kv_lora_rank"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
            out += [(p + "attn_q.weight", (H * (nope + rope), h), "mat"),
                    (p + "attn_kv_a_mqa.weight", (kvl + rope, h), "mat"),
                    (p + "attn_kv_a_norm.weight", (kvl,), "norm"),
                    (p + "attn_k_b.weight", (H, kvl, nope), "mat"),
                    (p + "attn_v_b.weight", (H, vd, kvl), "mat"),
                    (p + "attn_output.weight", (h, H * vd), "mat")]
        else:
            d, K = cfg["head_dim"], cfg["num_key_value_heads"]
            out += [(p + "attn_q.weight", (H * d, h), "mat"), (p + "attn_k.weight", (K * d, h), "mat"),
                    (p + "attn_v.weight", (K * d, h), "mat"), (p + "attn_output.weight", (h, H * d), "mat")]
            if arch == "qwen2_moe":
                out += [(p + "attn_q.bias", (H * d,), "bias"), (p + "attn_k.bias", (K * d,), "bias"),
                        (p + "attn_v.bias", (K * d,), "bias")]
            if arch == "qwen3_moe":
                out += [(p + "attn_q_norm.weight", (d,), "norm"), (p + "attn_k_norm.weight", (d,), "norm")]
            if arch == "olmoe":
                out += [(p + "attn_q_norm.weight", (H * d,), "norm"), (p + "attn_k_norm.weight", (K * d,), "norm")]
        out.append((p + "ffn_norm.weight", (h,), "norm"))
        if arch == "deepseek_v2" and b < cfg["first_k_dense_replace"]:
            f = cfg["intermediate_size"]
            out += [(p + "ffn_gate.weight", (f, h), "mat"), (p + "ffn_up.weight", (f, h), "mat"),
                    (p + "ffn_down.weight", (h, f), "mat")]
            continue
        out += [(p + "ffn_gate_inp.weight", (E, h), "router"),
                (p + "ffn_gate_exps.weight", (E, inter, h), "mat"),
                (p + "ffn_up_exps.weight", (E, inter, h), "mat"),
                (p + "ffn_down_exps.weight", (E, h, inter), "mat")]
        si = cfg.get("shared_expert_intermediate_size") or inter * cfg.get("n_shared_experts", 0)
        if si:
            if arch == "qwen2_moe":
                out.append((p + "ffn_gate_inp_shexp.weight", (1, h), "router"))
            out += [(p + "ffn_gate_shexp.weight", (si, h), "mat"), (p + "ffn_up_shexp.weight", (si, h), "mat"),
                    (p + "ffn_down_shexp.weight", (h, si), "mat")]
    out += [("output_norm.weight", (h,), "norm"), ("output.weight", (V, h), "output")]
    return out


def draw(shape: tuple[int, ...], kind: str, rng: np.random.Generator) -> np.ndarray:
    """make_tiny_models.init_weights' distributions, rounded to bf16."""
    fan_in = shape[-1]
    if kind == "norm":
        v = 1.0 + 0.1 * rng.standard_normal(shape)
    elif kind == "bias":
        v = 0.2 * rng.standard_normal(shape)
    elif kind == "embed":
        v = rng.standard_normal(shape)
    elif kind == "output":
        v = rng.standard_normal(shape) * (2.0 / np.sqrt(fan_in))
    elif kind == "router":
        v = rng.standard_normal(shape) * (3.0 / np.sqrt(fan_in))
    else:
        v = rng.standard_normal(shape) / np.sqrt(fan_in)
    bits = v.astype(np.float32).view(np.uint32)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even bf16
    return bits.view(np.float32)


def write_model(path: Path, arch: str, cfg: dict, weights: dict[str, np.ndarray], f32: bool) -> None:
    ftype = gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType.MOSTLY_BF16
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[tiny.GGUF_ARCH[arch]])
    for name, data in weights.items():
        qt = tiny.tensor_qtype(name, data.ndim, ftype)
        w.add_tensor(name, gguf.quants.quantize(data, qt), raw_dtype=qt)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"moerun-wide-{arch}")
    w.add_size_label("tiny")
    tiny.set_gguf_parameters(w, arch, cfg, ftype)
    if arch == "deepseek_v2":
        # llama.cpp reads q_lora_rank unless the layer count is DeepSeek-V2-Lite's
        # (tests/data/models/README.md); 0 means none, as for Lite.
        w.add_q_lora_rank(0)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    b2u = tiny.bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([b2u[i] for i in range(VOCAB)])
    w.add_token_types([gguf.TokenType.NORMAL] * VOCAB)
    w.add_token_merges([f"{b2u[32]} {b2u[32]}"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.chmod(path, 0o644)


def llama_logits(path: Path) -> tuple[list[int], np.ndarray]:
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=2, n_threads_batch=2,
                logits_all=True, type_k=0, type_v=0, flash_attn=False, seed=0, verbose=bool(os.environ.get("VERBOSE")))
    llm.eval(PROMPT)
    rows = [np.array(llm.scores[i], dtype=np.float32) for i in range(len(PROMPT))]
    tokens = [int(np.argmax(rows[-1]))]
    for _ in range(N_GEN - 1):
        llm.eval([tokens[-1]])
        rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
        tokens.append(int(np.argmax(rows[-1])))
    llm.close()
    return tokens, np.stack(rows)


def write_logits(path: Path, tokens: list[int], logits: np.ndarray) -> None:
    assert logits.shape == (len(PROMPT) + N_GEN - 1, VOCAB)
    with open(path, "wb") as f:
        f.write(b"MOELGT1\0" + struct.pack("<4I", len(PROMPT), N_GEN, VOCAB, 0))
        f.write(np.asarray(PROMPT + tokens, dtype="<i4").tobytes())
        f.write(logits.astype("<f4").tobytes())


def tensor_types(path: Path) -> str:
    r = gguf.GGUFReader(str(path))
    seen: dict[str, list[str]] = {}
    for t in r.tensors:
        seen.setdefault(t.tensor_type.name, []).append(t.name)
    return ", ".join(f"{k} {len(v)}" for k, v in sorted(seen.items()))


def generate(arch: str, out: Path, bin_dir: Path, work: Path) -> None:
    cfg = config(arch)
    rng = np.random.default_rng(SEED + sorted(OVERRIDES).index(arch))
    weights = {name: draw(shape, kind, rng) for name, shape, kind in tensors(arch, cfg)}
    d = out / arch
    d.mkdir(parents=True, exist_ok=True)
    bf16, f32 = work / f"{arch}-BF16.gguf", work / f"{arch}-F32.gguf"
    write_model(bf16, arch, cfg, weights, False)
    write_model(f32, arch, cfg, weights, True)
    tokens, logits = llama_logits(f32)
    write_logits(d / "f32.logits", tokens, logits)
    print(f"{arch:12s} f32      greedy {tokens}")
    for ft in FTYPES:
        q = d / f"{ft}.gguf"
        subprocess.run([str(bin_dir / "llama-quantize"), str(bf16), str(q), ft, "2"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "LD_LIBRARY_PATH": str(bin_dir)})
        os.chmod(q, 0o644)
        tokens, logits = llama_logits(q)
        write_logits(d / f"{ft}.logits", tokens, logits)
        print(f"{arch:12s} {ft:8s} {q.stat().st_size:7d} bytes  greedy {tokens}\n{'':22s}{tensor_types(q)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/data/models/quant", type=Path)
    ap.add_argument("--llama-bin", required=True, type=Path, help="llama.cpp's build/bin (llama-quantize, libs)")
    ap.add_argument("--arch", action="append", choices=sorted(OVERRIDES))
    ap.add_argument("--moe-run", type=Path, help="then run moerun's test_llm (beside this moe-run) on all 30 files")
    ap.add_argument("--all", action="store_true", help="keep all 30 files, not only those committed")
    args = ap.parse_args()
    archs = args.arch or list(OVERRIDES)
    with tempfile.TemporaryDirectory() as work:
        for arch in archs:
            generate(arch, args.out, args.llama_bin, Path(work))
    if args.moe_run:
        test = args.moe_run.parent / "tests" / "test_llm"
        subprocess.run([str(test), "quantized_gguf_match_llamacpp"], check=True,
                       env={**os.environ, "MOE_QUANT_FIXTURES": str(args.out.resolve())})
    for arch in archs if not args.all else []:
        for ft in FTYPES:
            if arch in PARTIAL and ft not in PARTIAL[arch]:
                for ext in ("gguf", "logits"):
                    (args.out / arch / f"{ft}.{ext}").unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
