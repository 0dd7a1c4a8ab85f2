"""ctypes declarations of moerun's C API (include/moerun.h) used by the binding.

The library is found, in order, at $MOERUN_LIB, in the build tree this
package sits in (build/release/libmoerun.so beside python/), or by the
system's library search (ctypes.util.find_library("moerun")).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

API_VERSION = 6  # include/moerun.h's MOE_API_VERSION this binding is written against

# moe_dtype
DTYPE_F32, DTYPE_BF16, DTYPE_F16, DTYPE_I8 = 0, 1, 2, 3
# GGUF's block formats (API 6), in moe_dtype's order after DTYPE_I8
DTYPE_BLOCK = {name: 4 + i for i, name in enumerate(
    ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs", "mxfp4"])}
# moe_device_kind
DEVICES = {"auto": 0, "cpu": 1, "sim": 2, "cuda": 3}


class LayerDesc(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_experts", ctypes.c_uint32), ("hidden", ctypes.c_uint32),
                ("inter", ctypes.c_uint32), ("weight_dtype", ctypes.c_int)]


class ExpertWeights(ctypes.Structure):
    _fields_ = [("gate", ctypes.c_void_p), ("up", ctypes.c_void_p), ("down", ctypes.c_void_p),
                ("gate_scale", ctypes.c_void_p), ("up_scale", ctypes.c_void_p), ("down_scale", ctypes.c_void_p)]


class Routing(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("top_k", ctypes.c_uint32), ("scoring", ctypes.c_int),
                ("norm_topk", ctypes.c_int32), ("scale", ctypes.c_float)]


class RuntimeParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("device", ctypes.c_int), ("policy", ctypes.c_char_p),
                ("n_threads", ctypes.c_uint32), ("gpu_budget_bytes", ctypes.c_uint64),
                ("gpu_budget_fraction", ctypes.c_double), ("topology", ctypes.c_void_p), ("log_fn", ctypes.c_void_p),
                ("log_user", ctypes.c_void_p), ("log_level", ctypes.c_int), ("profile_path", ctypes.c_char_p),
                ("profile_any_host", ctypes.c_int), ("record_trace_path", ctypes.c_char_p),
                ("cuda_stream", ctypes.c_void_p)]


class Stats(ctypes.Structure):
    _fields_ = [("layer_calls", ctypes.c_uint64), ("tokens", ctypes.c_uint64), ("expert_calls_cpu", ctypes.c_uint64),
                ("expert_calls_gpu", ctypes.c_uint64), ("expert_tokens", ctypes.c_uint64), ("gpu_hits", ctypes.c_uint64),
                ("gpu_misses", ctypes.c_uint64), ("bytes_copied", ctypes.c_uint64), ("plan_seconds", ctypes.c_double),
                ("cpu_seconds", ctypes.c_double), ("gpu_seconds", ctypes.c_double), ("total_seconds", ctypes.c_double),
                ("gpu_copy_seconds", ctypes.c_double), ("gpu_compute_seconds", ctypes.c_double),
                ("hybrid_layers", ctypes.c_uint64), ("hybrid_span_seconds", ctypes.c_double),
                ("hybrid_serial_seconds", ctypes.c_double), ("gpu_redone", ctypes.c_uint64),
                ("lookahead_pairs", ctypes.c_uint64 * 4), ("lookahead_hits", ctypes.c_uint64 * 4),
                ("cpu_cost_scale", ctypes.c_double), ("gpu_cost_scale", ctypes.c_double)]


class MoerunError(RuntimeError):
    """A moerun call failed; the message is moerun's own (moe_last_error)."""


def _find() -> str:
    env = os.environ.get("MOERUN_LIB")
    if env:
        return env
    here = Path(__file__).resolve().parent
    for build in ("release", "asan", "debug", "portable"):
        cand = here.parent.parent / "build" / build / "libmoerun.so"
        if cand.exists():
            return str(cand)
    found = ctypes.util.find_library("moerun")
    if found:
        return found
    raise MoerunError("libmoerun not found: build moerun (make build) or set MOERUN_LIB to the library's path")


_lib = None


def lib() -> ctypes.CDLL:
    """The loaded library, its prototypes declared (once)."""
    global _lib
    if _lib is not None:
        return _lib
    L = ctypes.CDLL(_find())
    u32, u64, vp, st = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int
    proto = {
        "moe_api_version": (ctypes.c_uint, []),
        "moe_last_error": (ctypes.c_char_p, []),
        "moe_model_create": (st, [ctypes.POINTER(vp), u32]),
        "moe_model_set_layer": (st, [vp, u32, ctypes.POINTER(LayerDesc)]),
        "moe_model_set_expert": (st, [vp, u32, u32, ctypes.POINTER(ExpertWeights)]),
        "moe_model_set_router": (st, [vp, u32, ctypes.POINTER(Routing), vp, ctypes.c_int]),
        "moe_model_free": (None, [ctypes.POINTER(vp)]),
        "moe_layer_desc_init": (LayerDesc, [u32, u32, u32, ctypes.c_int]),
        "moe_routing_init": (Routing, [u32]),
        "moe_runtime_default_params": (RuntimeParams, []),
        "moe_runtime_create": (st, [ctypes.POINTER(vp), vp, ctypes.POINTER(RuntimeParams)]),
        "moe_runtime_free": (None, [ctypes.POINTER(vp)]),
        "moe_runtime_device": (ctypes.c_int, [vp]),
        "moe_runtime_policy": (ctypes.c_char_p, [vp]),
        "moe_layer_forward": (st, [vp, u32, u32, vp, u32, vp, vp, vp]),
        "moe_hint_next": (st, [vp, u32, u32, vp]),
        "moe_runtime_stats": (st, [vp, ctypes.POINTER(Stats), ctypes.c_size_t]),
        "moe_runtime_reset_stats": (st, [vp]),
    }
    for name, (res, args) in proto.items():
        f = getattr(L, name)
        f.restype, f.argtypes = res, args
    if L.moe_api_version() != API_VERSION:
        raise MoerunError(f"libmoerun at {_find()} has API version {L.moe_api_version()}; this binding needs "
                          f"{API_VERSION}: rebuild moerun or reinstall the binding from the same checkout")
    # Structs the library returns by value must be declared whole here.
    if L.moe_runtime_default_params().struct_size != ctypes.sizeof(RuntimeParams):
        raise MoerunError("libmoerun's moe_runtime_params differs from this binding's: rebuild both from one checkout")
    _lib = L
    return L


def check(status: int, what: str) -> None:
    if status != 0:
        msg = lib().moe_last_error()
        raise MoerunError(f"{what}: {msg.decode(errors='replace') if msg else 'failed'} (status {status})")
