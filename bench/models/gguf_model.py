"""GGUF files of real-shaped, random-weight MoE models in the layouts users
download (BF16, Q8_0, Q4_K_M), written one tensor at a time, without torch.

make_bench_model.py --gguf uses this; check_gguf.py checks it against
llama.cpp.  Only numpy, gguf (gguf-py) and moerun's own quantizer
(moe_quantize in libmoerun.so, through ctypes) are needed, so a full-depth
Qwen3-30B-A3B (61 GB in bf16) can be written straight to Q4_K_M (17 GB)
without the bf16 model ever existing on disk or in memory.

Tensors and metadata are what llama.cpp's convert_hf_to_gguf.py writes for
OLMoE and Qwen3-MoE (tests/gen/make_tiny_models.py does the same with torch;
names, shapes and keys here match its files), and the type of each tensor
is the one llama-quantize picks for the file type from a BF16 file without
an importance matrix (llama_tensor_get_type in llama.cpp's
src/llama-quant.cpp, whose rules llama_types() follows for these
architectures; check_gguf.py compares the two on every tensor).

Weights: every value is drawn in f32 (numpy's PCG64, one stream per tensor
and row block, seeded from the seed and the tensor's name), rounded to bf16
as a bf16 checkpoint holds it, then stored as BF16 or quantized from those
bf16 values with moe_quantize(), so the three files of one model hold the
same weights, as llama-quantize would make them from the BF16 one.
Scales as bench/models' torch path: projections N(0, 1/fan_in), token
embedding N(0, 1), LM head N(0, 4/fan_in), routers N(0, 9/fan_in), norms
1 + 0.1 N(0, 1).  With expert_pool = P > 0, only P experts of each expert
tensor are drawn and quantized and the others are byte copies of them
(expert e = expert e mod P): their bytes are still distinct memory, read
as cold as distinct values, and quantizing Qwen3's 29 G expert weights to
q4_K once takes roughly half an hour on 2 free cores (from the measured
0.11 us per weight per core).
"""

from __future__ import annotations

import ctypes
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

FTYPES = {                       # file name suffix -> llama.cpp file type
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
}
ARCH = {"olmoe": gguf.MODEL_ARCH.OLMOE, "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE}


def gguf_name(ftype_key: str) -> str:
    return f"model-{ftype_key}.gguf"


# --------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------

@dataclass
class Spec:
    name: str                 # GGUF name
    shape: tuple[int, ...]    # numpy order: (rows, cols) or (experts, rows, cols)
    init: str                 # proj | embed | head | router | norm
    layer: int | None = None

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def experts(self) -> int:
        return self.shape[0] if len(self.shape) == 3 else 0


def n_experts(cfg: dict) -> int:
    return cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")


def tensor_specs(cfg: dict) -> list[Spec]:
    """The converter's tensors for OLMoE and Qwen3-MoE, in its order
    (embedding, then per layer in HF name order, then the final norm and LM
    head)."""
    mt = cfg["model_type"]
    if mt not in ARCH:
        raise ValueError(f"{mt}: only olmoe and qwen3_moe are written without torch")
    h, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    E = n_experts(cfg)
    inter = cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    qn, kn = (nh * hd, nkv * hd) if mt == "olmoe" else (hd, hd)   # OLMoE: q/k norm over the projection
    out = [Spec("token_embd.weight", (cfg["vocab_size"], h), "embed")]
    for i in range(cfg["num_hidden_layers"]):
        b = f"blk.{i}."
        out += [Spec(b + "attn_norm.weight", (h,), "norm", i),
                Spec(b + "ffn_down_exps.weight", (E, h, inter), "proj", i),
                Spec(b + "ffn_gate_exps.weight", (E, inter, h), "proj", i),
                Spec(b + "ffn_up_exps.weight", (E, inter, h), "proj", i),
                Spec(b + "ffn_gate_inp.weight", (E, h), "router", i),
                Spec(b + "ffn_norm.weight", (h,), "norm", i),
                Spec(b + "attn_k_norm.weight", (kn,), "norm", i),
                Spec(b + "attn_k.weight", (nkv * hd, h), "proj", i),
                Spec(b + "attn_output.weight", (h, nh * hd), "proj", i),
                Spec(b + "attn_q_norm.weight", (qn,), "norm", i),
                Spec(b + "attn_q.weight", (nh * hd, h), "proj", i),
                Spec(b + "attn_v.weight", (nkv * hd, h), "proj", i)]
    out += [Spec("output_norm.weight", (h,), "norm"), Spec("output.weight", (cfg["vocab_size"], h), "head")]
    return out


# --------------------------------------------------------------------------
# llama-quantize's choice of type per tensor
# --------------------------------------------------------------------------

def _blck(t: QT) -> int:
    return gguf.GGML_QUANT_SIZES[t][0]


def _quantizable(s: Spec) -> bool:
    # tensor_allows_quantization: 2-D and 3-D weights, but not norms or the router
    return (len(s.shape) >= 2 and s.name.endswith("weight") and "_norm.weight" not in s.name
            and "ffn_gate_inp.weight" not in s.name)


def _fallback(t: QT, cols: int) -> QT:
    """tensor_type_fallback: a type whose block does not divide the row."""
    if cols % _blck(t) == 0:
        return t
    r = {QT.IQ4_XS: QT.IQ4_NL, QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0, QT.Q4_K: QT.Q5_0,
         QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0}.get(t, t)
    return r if cols % _blck(r) == 0 else QT.F16


def use_more_bits(i: int, n: int) -> bool:
    """The layers that Q4_K_M gives 6 bits (llama-quant.cpp's use_more_bits):
    the first and last eighth and every third in between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def llama_types(specs: list[Spec], cfg: dict, ftype_key: str) -> dict[str, QT]:
    """Tensor name -> the type llama-quantize gives it for this file type, from
    a BF16 file (converter's types: F32 for norms and the router), without an
    importance matrix or overrides.  Covers what these two architectures meet:
    the output and token embedding rules, attn_v / attn_k / attn_output /
    ffn_down per file type (with the 8-expert rules), and the fallback for
    rows that are not whole blocks."""
    ft = FTYPES[ftype_key]
    default = {gguf.LlamaFileType.MOSTLY_BF16: QT.BF16, gguf.LlamaFileType.MOSTLY_Q8_0: QT.Q8_0,
               gguf.LlamaFileType.MOSTLY_Q4_K_M: QT.Q4_K}[ft]
    n_layer, E = cfg["num_hidden_layers"], n_experts(cfg)
    tied = not any(s.name == "output.weight" for s in specs)
    n_attn_v = sum(s.name.endswith("attn_v.weight") for s in specs)
    # llama.cpp visits tensors sorted by layer, then by name (weight_name_comparer):
    # the attn_v counter is the layer's rank among layers with one.
    order = sorted(specs, key=lambda s: (-1 if s.layer is None else s.layer, s.name))
    out, i_attn_v = {}, 0
    for s in order:
        if not _quantizable(s):
            out[s.name] = QT.F32
            continue
        if default == QT.BF16:            # not a quantized type: every weight stays BF16
            out[s.name] = QT.BF16
            continue
        t = default
        q4km = ft == gguf.LlamaFileType.MOSTLY_Q4_K_M
        if s.name == "output.weight" or (tied and s.name == "token_embd.weight"):
            if s.cols % _blck(t):
                t = QT.Q8_0
            elif t != QT.Q8_0:
                t = QT.Q6_K
        elif s.name == "token_embd.weight":
            pass                          # the file type's default for Q8_0 and Q4_K_M
        elif s.name.endswith("attn_v.weight"):
            if q4km and use_more_bits(i_attn_v, n_attn_v):
                t = QT.Q6_K
            if E == 8:                    # Mixtral-style 8-expert models keep attn_v in q8_0
                t = QT.Q8_0
            i_attn_v += 1
        elif s.name.endswith("attn_k.weight"):
            if E == 8:
                t = QT.Q8_0
        elif "ffn_down" in s.name:
            if q4km and use_more_bits(s.layer, n_layer):
                t = QT.Q6_K
        elif s.name.endswith("attn_output.weight"):
            if q4km and E == 8:
                t = QT.Q5_K
        out[s.name] = _fallback(t, s.cols)
    return out


def tensor_nbytes(s: Spec, t: QT) -> int:
    n = int(np.prod(s.shape))
    block, size = gguf.GGML_QUANT_SIZES[t]
    return n // block * size


def file_nbytes(cfg: dict, ftype_key: str) -> int:
    """Tensor data bytes of the file (the header adds a few MB of vocabulary)."""
    specs = tensor_specs(cfg)
    types = llama_types(specs, cfg, ftype_key)
    return sum(tensor_nbytes(s, types[s.name]) for s in specs)


# --------------------------------------------------------------------------
# values and quantization
# --------------------------------------------------------------------------

class MoeQuant:
    """moe_quantize() from libmoerun.so: every block format, f32 rows in."""

    def __init__(self, lib: Path):
        self.lib = ctypes.CDLL(str(lib))
        self.lib.moe_dtype_name.restype = ctypes.c_char_p
        self.lib.moe_dtype_name.argtypes = [ctypes.c_int]
        self.lib.moe_quantize.restype = ctypes.c_int
        self.lib.moe_quantize.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.ids = {}
        for i in range(64):
            n = self.lib.moe_dtype_name(i)
            if n and n.decode() != "invalid":
                self.ids[n.decode().lower()] = i

    def quantize(self, t: QT, x: np.ndarray, out: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        st = self.lib.moe_quantize(self.ids[t.name.lower()], x.ctypes.data, out.ctypes.data, x.size)
        if st != 0:
            raise RuntimeError(f"moe_quantize({t.name}, {x.size} values) failed with status {st}")


def _std(init: str, fan_in: int) -> tuple[float, float]:
    """(mean, std) of a tensor's values, as bench/models' torch path draws them."""
    return {"proj": (0.0, 1.0 / np.sqrt(fan_in)), "embed": (0.0, 1.0), "head": (0.0, 2.0 / np.sqrt(fan_in)),
            "router": (0.0, 3.0 / np.sqrt(fan_in)), "norm": (1.0, 0.1)}[init]


def bf16_round(x: np.ndarray) -> np.ndarray:
    """f32 -> the nearest bf16 (ties to even), as f32."""
    u = x.view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000))
    return r.view(np.float32)


def _values(seed: int, s: Spec, row0: int, nrows: int) -> np.ndarray:
    """Rows row0 .. row0 + nrows of the tensor seen as [rows, cols], drawn
    from their own stream, so that any split of the work gives the same."""
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(s.name.encode()), row0]))
    mean, std = _std(s.init, s.cols)
    x = rng.standard_normal((nrows, s.cols), dtype=np.float32)
    x *= np.float32(std)
    if mean:
        x += np.float32(mean)
    return bf16_round(x)


ROWS_PER_ITEM = 1 << 22          # values per work item (16 MB of f32)


def tensor_bytes(s: Spec, t: QT, seed: int, quant: MoeQuant | None, pool: ThreadPoolExecutor,
                 expert_pool: int = 0) -> np.ndarray:
    """The tensor's data in type t, as the bytes the file holds (uint8, or
    f32 for F32)."""
    rows_per_matrix = s.shape[-2] if len(s.shape) >= 2 else 1
    n_mat = s.experts or 1
    total_rows = rows_per_matrix * n_mat
    if len(s.shape) == 1:
        return _values(seed, s, 0, 1).reshape(-1)
    if t == QT.F32:
        return _values(seed, s, 0, total_rows).reshape(s.shape)
    row_bytes = gguf.quants.quant_shape_to_byte_shape((s.cols,), t)[0] if t != QT.BF16 else 2 * s.cols
    out = np.empty(total_rows * row_bytes, dtype=np.uint8)
    draw = min(n_mat, expert_pool) if (expert_pool and s.experts) else n_mat
    step = max(1, ROWS_PER_ITEM // s.cols)
    items = [(m * rows_per_matrix + r, min(step, rows_per_matrix - r))
             for m in range(draw) for r in range(0, rows_per_matrix, step)]

    def work(item):
        r0, nr = item
        x = _values(seed, s, r0, nr)
        dst = out[r0 * row_bytes:(r0 + nr) * row_bytes]
        if t == QT.BF16:
            dst.view(np.uint16)[:] = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16).reshape(-1)
        else:
            quant.quantize(t, x, dst)

    for _ in pool.map(work, items):
        pass
    mat_bytes = rows_per_matrix * row_bytes
    for m in range(draw, n_mat):          # the expert pool's copies
        src = (m % draw) * mat_bytes
        out[m * mat_bytes:(m + 1) * mat_bytes] = out[src:src + mat_bytes]
    return out


# --------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------

def set_parameters(w: gguf.GGUFWriter, cfg: dict, ftype: gguf.LlamaFileType) -> None:
    """convert_hf_to_gguf.py's keys for OLMoE and Qwen3-MoE (as
    tests/gen/make_tiny_models.py's set_gguf_parameters writes them)."""
    mt = cfg["model_type"]
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5 if mt == "olmoe" else cfg["rms_norm_eps"])
    w.add_expert_count(n_experts(cfg))
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if cfg.get("head_dim") is not None:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_file_type(ftype)
    if mt == "qwen3_moe":
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def add_bench_vocab(w: gguf.GGUFWriter, n_vocab: int) -> None:
    """A placeholder gpt2-style vocabulary of the model's full size (as
    make_bench_model.py's torch path writes): 256 byte tokens, then
    "<|bench_N|>"; prompts are given as ids."""
    b2u = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([b2u[i] for i in range(256)] + [f"<|bench_{i}|>" for i in range(256, n_vocab)])
    w.add_token_types([gguf.TokenType.NORMAL] * n_vocab)
    w.add_token_merges([f"{b2u[32]} {b2u[32]}"])


# --------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------

def write_gguf(path: Path, cfg: dict, ftype_key: str, seed: int, label: str, lib: Path | None,
               threads: int = 2, expert_pool: int = 0, log=print) -> dict:
    """Writes one GGUF file; returns {"types": {name: type}, "bytes": tensor
    data bytes, "seconds": ...}."""
    ftype = FTYPES[ftype_key]
    specs = tensor_specs(cfg)
    types = llama_types(specs, cfg, ftype_key)
    quant = MoeQuant(lib) if any(t not in (QT.F32, QT.BF16) for t in types.values()) else None
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[ARCH[cfg["model_type"]]])
    for s in specs:                                   # tensor infos first, from shapes alone
        t = types[s.name]
        n = int(np.prod(s.shape))
        if t == QT.F32:
            w.add_tensor_info(s.name, s.shape, np.dtype(np.float32), n * 4, raw_dtype=t)
        else:
            bshape = s.shape[:-1] + ((2 * s.cols) if t == QT.BF16 else
                                     gguf.quants.quant_shape_to_byte_shape((s.cols,), t)[0],)
            w.add_tensor_info(s.name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=t)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"moerun-bench-{label}")
    w.add_size_label(f"{cfg['num_hidden_layers']}L")
    set_parameters(w, cfg, ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_bench_vocab(w, cfg["vocab_size"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    t0, total = time.time(), 0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for k, s in enumerate(specs):                 # the data, one tensor at a time
            data = tensor_bytes(s, types[s.name], seed, quant, pool, expert_pool)
            w.write_tensor_data(data)
            total += data.nbytes
            if s.experts and s.name.endswith("ffn_up_exps.weight"):
                log(f"  {path.name}: layer {s.layer} written ({total / 1e9:.2f} GB, {time.time() - t0:.0f} s)")
            del data
    w.close()
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t.name] = counts.get(t.name, 0) + 1
    return {"types": {k: v.name for k, v in types.items()}, "type_counts": counts, "bytes": total,
            "seconds": time.time() - t0, "expert_pool": expert_pool}


def default_lib() -> Path:
    return Path(os.environ.get("MOERUN_LIB") or Path(__file__).resolve().parents[2] / "build" / "release" /
                "libmoerun.so")
