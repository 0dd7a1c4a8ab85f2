"""ctypes declarations of moerun's C API (include/moerun.h) used by the binding.

The library is found, in order: at $MOERUN_LIB when it is set (nothing
else is tried then); inside this package, where `pip install` puts the copy
it builds; in the build tree of the checkout this package sits in
(build/release/libmoerun.so beside python/, for PYTHONPATH or editable
use); by the system's library search. A library of another version or API
version than this binding's is refused.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

API_VERSION = 8  # include/moerun.h's MOE_API_VERSION this binding is written against: the one place to bump
LIB_NAME = "libmoerun.so"

# moe_dtype
DTYPE_F32, DTYPE_BF16, DTYPE_F16, DTYPE_I8 = 0, 1, 2, 3
# Block formats, in moe_dtype's order after DTYPE_I8: GGUF's (API 6), then
# FP8 checkpoints' e4m3 in blocks of 128 (API 7)
DTYPE_BLOCK = {name: 4 + i for i, name in enumerate(
    ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs", "mxfp4",
     "fp8_e4m3"])}
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
                ("norm_topk", ctypes.c_int32), ("scale", ctypes.c_float), ("bias", ctypes.c_void_p),
                ("n_group", ctypes.c_uint32), ("topk_group", ctypes.c_uint32)]


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


class TopologyInfo(ctypes.Structure):
    _fields_ = [("n_packages", ctypes.c_uint32), ("n_numa_nodes", ctypes.c_uint32), ("n_cores", ctypes.c_uint32),
                ("n_pus", ctypes.c_uint32), ("l3_bytes", ctypes.c_uint64), ("memory_bytes", ctypes.c_uint64),
                ("has_avx2", ctypes.c_uint32), ("has_avx512f", ctypes.c_uint32), ("has_avx512_bf16", ctypes.c_uint32),
                ("has_avx512_vnni", ctypes.c_uint32), ("has_amx", ctypes.c_uint32)]


# How to get a matching library, by where the one found came from.
_REBUILD = {
    "MOERUN_LIB": "rebuild it from the checkout this package came from (make build), or unset MOERUN_LIB to use "
                  "the library installed with the package",
    "package": "reinstall the package from the moerun checkout or sdist it came from "
               "(pip install --force-reinstall ./python)",
    "build tree": "rebuild it (make build)",
    "system": "install the libmoerun of the same version, or set MOERUN_LIB to one",
}


def _candidates() -> list[tuple[str, str]]:
    """(path, where it came from) of every place the library may be, in search order."""
    env = os.environ.get("MOERUN_LIB")
    if env:
        return [(env, "MOERUN_LIB")]
    # The package's folders: in an editable install __path__ holds the install tree as well.
    pkg = sys.modules[__name__.rpartition(".")[0]]
    found = [(os.path.join(d, LIB_NAME), "package") for d in getattr(pkg, "__path__", [os.path.dirname(__file__)])]
    root = Path(__file__).resolve().parent.parent.parent
    found += [(str(root / "build" / b / LIB_NAME), "build tree") for b in ("release", "asan", "debug", "portable")]
    return found


def _open() -> tuple[ctypes.CDLL, str, str]:
    """The library, its path and where it came from; MoerunError naming the
    paths when there is none or it cannot be loaded."""
    cands = _candidates()
    for path, where in cands:
        if where == "MOERUN_LIB" and not os.path.isfile(path):
            raise MoerunError(f"MOERUN_LIB={path}: no such file; point it at a built libmoerun.so (make build writes "
                              f"build/release/libmoerun.so), or unset it to use the library installed with the package")
        if not os.path.isfile(path):
            continue
        try:
            return ctypes.CDLL(path), path, where
        except OSError as e:
            label = f"MOERUN_LIB={path}" if where == "MOERUN_LIB" else path
            hint = ""
            if "cannot open shared object file" in str(e):
                hint = (" (libmoerun links to hwloc, libnuma, oneDNN 2.6 and OpenMP from the system: "
                        "scripts/deps.sh installs them)")
            raise MoerunError(f"{label}: cannot load it: {e}{hint}") from e
    system = ctypes.util.find_library("moerun")
    if system:
        try:
            return ctypes.CDLL(system), system, "system"
        except OSError:
            pass
    raise MoerunError(f"libmoerun not found in {', '.join(p for p, _ in cands)} or by the system's library search: "
                      f"install the package from a moerun checkout (pip install ./python), which builds it, or build "
                      f"moerun (make build) and set MOERUN_LIB to build/release/libmoerun.so")


_lib = None
_where = ("", "")


def lib() -> ctypes.CDLL:
    """The loaded library, checked to be of this binding's version and API
    version, its prototypes declared (once)."""
    global _lib, _where
    if _lib is not None:
        return _lib
    from . import __version__

    L, path, where = _open()
    L.moe_version.restype, L.moe_version.argtypes = ctypes.c_char_p, []
    L.moe_api_version.restype, L.moe_api_version.argtypes = ctypes.c_uint, []
    version, api = L.moe_version().decode(), L.moe_api_version()
    if version != __version__ or api != API_VERSION:
        raise MoerunError(f"{path} (found in: {where}) is libmoerun {version} with API version {api}, but this "
                          f"moerun package is {__version__} and needs API version {API_VERSION}: {_REBUILD[where]}")
    u32, u64, vp, st = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int
    proto = {
        "moe_build_info": (ctypes.c_char_p, []),
        "moe_last_error": (ctypes.c_char_p, []),
        "moe_topology_detect": (st, [ctypes.POINTER(vp)]),
        "moe_topology_get_info": (st, [vp, ctypes.POINTER(TopologyInfo)]),
        "moe_topology_free": (None, [ctypes.POINTER(vp)]),
        "moe_model_create": (st, [ctypes.POINTER(vp), u32]),
        "moe_model_set_layer": (st, [vp, u32, ctypes.POINTER(LayerDesc)]),
        "moe_model_set_expert": (st, [vp, u32, u32, ctypes.POINTER(ExpertWeights)]),
        "moe_model_set_router": (st, [vp, u32, ctypes.POINTER(Routing), vp, ctypes.c_int]),
        "moe_model_free": (None, [ctypes.POINTER(vp)]),
        "moe_layer_desc_init": (LayerDesc, [u32, u32, u32, ctypes.c_int]),
        "moe_routing_defaults": (Routing, [u32]),
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
    if hasattr(L, "moe_cpu_kernel"):  # 0.1.0 libraries built before it was added lack it; info() says so
        proto["moe_cpu_kernel"] = (ctypes.c_char_p, [ctypes.c_int])
    for name, (res, args) in proto.items():
        f = getattr(L, name)
        f.restype, f.argtypes = res, args
    # Structs the library returns by value must be declared whole here.
    if L.moe_runtime_default_params().struct_size != ctypes.sizeof(RuntimeParams):
        raise MoerunError(f"{path} (found in: {where}): libmoerun's moe_runtime_params differs from this "
                          f"binding's: {_REBUILD[where]}")
    _lib, _where = L, (path, where)
    return L


def lib_path() -> tuple[str, str]:
    """The path of the loaded library and where it was found: "MOERUN_LIB",
    "package", "build tree" or "system"."""
    lib()
    return _where


def check(status: int, what: str) -> None:
    if status != 0:
        msg = lib().moe_last_error()
        raise MoerunError(f"{what}: {msg.decode(errors='replace') if msg else 'failed'} (status {status})")
