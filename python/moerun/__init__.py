"""moerun for PyTorch and Hugging Face transformers: the routed experts of
a model's sparse-MoE blocks run through moerun's CPU/GPU scheduling, while
the model keeps its attention, router and shared experts.

    import moerun
    moerun.patch(model)          # model: a transformers MoE model on the CPU
    model.generate(...)          # same outputs, experts on moerun
    print(moerun.stats(model))
    moerun.unpatch(model)

Supported: the experts modules of Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and
DeepSeek-V2 as transformers 5 lays them out (fused gate_up_proj
[experts, 2 * inter, hidden] and down_proj [experts, hidden, inter]),
tested with transformers 5.24. A sparse-MoE block of another layout is
refused with its class named. Importing moerun needs neither torch nor the
library; info() and `python -m moerun --version` say which library is used
and how it was built. See docs/plugin.md.
"""
from __future__ import annotations

# The package's version, which must equal the C library's (moe_version());
# pyproject.toml and python/CMakeLists.txt read it from this line.
__version__ = "0.1.0"

import ctypes
from typing import Any, Optional, Union

from ._lib import API_VERSION, DEVICES, DTYPE_BF16, DTYPE_F16, DTYPE_F32, DTYPE_I8, MoerunError, check, lib, lib_path
from ._lib import ExpertWeights, Stats, TopologyInfo

__all__ = ["patch", "unpatch", "stats", "is_patched", "info", "lib", "MoerunError", "KNOWN_EXPERTS"]

# The experts classes this version knows, and the blocks that hold them.
KNOWN_EXPERTS = {
    "MixtralExperts": "MixtralSparseMoeBlock",
    "Qwen2MoeExperts": "Qwen2MoeSparseMoeBlock",
    "Qwen3MoeExperts": "Qwen3MoeSparseMoeBlock",
    "OlmoeExperts": "OlmoeSparseMoeBlock",
    "DeepseekV2Experts": "DeepseekV2Moe",
    "DeepseekV3Experts": "DeepseekV3MoE",
    "Glm4MoeExperts": "Glm4MoeMoE",
}

_ATTR = "_moerun_state"


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the binding needs torch for patch()
        raise MoerunError("moerun.patch needs PyTorch (pip install torch transformers)") from e
    return torch


def _routing_of(gate, routing, state) -> None:
    """The rule of a DeepSeek-V3-style router (transformers' DeepseekV3TopkRouter and its kind: sigmoid scores,
    e_score_correction_bias for selection, group-limited top-k) into `routing`; other routers keep softmax."""
    bias = getattr(gate, "e_score_correction_bias", None)
    if bias is None:
        return
    b = bias.detach().float().contiguous()
    if b.is_cuda:
        return
    state.keep.append(b)
    routing.scoring = 1  # MOE_SCORING_SIGMOID
    routing.bias = b.data_ptr()
    routing.n_group = int(getattr(gate, "num_group", 1) or 1)
    routing.topk_group = int(getattr(gate, "topk_group", 1) or 1)
    routing.norm_topk = int(bool(getattr(gate, "norm_topk_prob", True)))
    routing.scale = float(getattr(gate, "routed_scaling_factor", 1.0) or 1.0)


def _dtype_code(t) -> int:
    torch = _torch()
    codes = {torch.float32: DTYPE_F32, torch.bfloat16: DTYPE_BF16, torch.float16: DTYPE_F16}
    if t not in codes:
        raise MoerunError(f"moerun.patch: expert weights in {t}; moerun takes float32, bfloat16 or float16")
    return codes[t]


def _budget(params, gpu_budget: Union[None, str, float, int]) -> None:
    if gpu_budget is None:  # the profile's [tuning] gpu_budget, else 50%
        return
    if isinstance(gpu_budget, str):
        s = gpu_budget.strip()
        if s.endswith("%"):
            params.gpu_budget_fraction = float(s[:-1]) / 100.0
        else:
            _budget(params, float(s) if "." in s else int(s))
        return
    if isinstance(gpu_budget, float) and 0.0 <= gpu_budget <= 1.0:
        params.gpu_budget_fraction = gpu_budget
    elif isinstance(gpu_budget, int) and gpu_budget > 1:
        params.gpu_budget_bytes = gpu_budget
    else:
        raise MoerunError(f"moerun.patch: gpu_budget {gpu_budget!r}: a percentage like '50%', a fraction 0..1 or bytes")


def _find_blocks(model):
    """(parent block, experts module) pairs in module order; refuses a block
    that holds an experts module of a layout this version does not know."""
    found = []
    for name, mod in model.named_modules():
        experts = getattr(mod, "experts", None)
        if experts is None or not hasattr(experts, "parameters"):
            continue
        cls = type(experts).__name__
        if cls == "MoerunExperts":
            raise MoerunError("moerun.patch: the model is already patched (moerun.unpatch first)")
        if cls not in KNOWN_EXPERTS:
            raise MoerunError(f"moerun.patch: {name} ({type(mod).__name__}) holds experts of class {cls}, a layout "
                              f"this version of moerun does not know (it knows {', '.join(sorted(KNOWN_EXPERTS))}, "
                              f"as transformers 5 lays them out)")
        found.append((name, mod, experts))
    if not found:
        raise MoerunError(f"moerun.patch: {type(model).__name__} has no sparse-MoE block moerun knows "
                          f"({', '.join(sorted(KNOWN_EXPERTS.values()))})")
    return found


class _State:
    """What a patched model holds: the runtime, the C model, the blocks'
    original experts modules, and the tensors whose memory moerun reads."""

    def __init__(self):
        self.rt = ctypes.c_void_p()
        self.blocks = []  # (parent, original experts module, replacement)
        self.keep = []    # tensors moerun reads: alive and unmoved while patched

    def close(self):
        if self.rt:
            lib().moe_runtime_free(ctypes.byref(self.rt))


def _experts_module(torch):
    class MoerunExperts(torch.nn.Module):
        """Drop-in for a transformers experts module: forward(hidden_states
        [tokens, hidden], top_k_index [tokens, k], top_k_weights [tokens, k])
        -> [tokens, hidden], computed by moerun."""

        def __init__(self, state: _State, layer: int, original, hidden: int):
            super().__init__()
            self._state, self.layer, self.hidden = state, layer, hidden
            self._orig = [original]  # a list: not registered as a submodule (no parameters twice)
            self._ptrs = (original.gate_up_proj.data_ptr(), original.down_proj.data_ptr())

        def forward(self, hidden_states, top_k_index, top_k_weights):
            orig = self._orig[0]
            if (orig.gate_up_proj.data_ptr(), orig.down_proj.data_ptr()) != self._ptrs or hidden_states.is_cuda:
                raise MoerunError("moerun: the experts' weights moved (model.to(...) after moerun.patch); "
                                  "unpatch, move, and patch again")
            n = hidden_states.shape[0]
            x = hidden_states.detach().to(torch.float32).contiguous()
            ids = top_k_index.detach().to(torch.int32).contiguous()
            w = top_k_weights.detach().to(torch.float32).contiguous()
            out = torch.empty((n, self.hidden), dtype=torch.float32)
            L, rt = lib(), self._state.rt
            if n:
                check(L.moe_hint_next(rt, self.layer, n, x.data_ptr()), "moe_hint_next")
                check(L.moe_layer_forward(rt, self.layer, n, x.data_ptr(), ids.shape[1], ids.data_ptr(),
                                          w.data_ptr(), out.data_ptr()), "moe_layer_forward")
            return out.to(hidden_states.dtype)

    return MoerunExperts


def patch(model, profile: Optional[str] = None, gpu_budget: Union[None, str, float, int] = None,
          policy: str = "auto", device: str = "auto", threads: int = 0, any_host: bool = False):
    """Runs the routed experts of every sparse-MoE block of `model` (a
    transformers model on the CPU) through moerun. gpu_budget: '50%', a
    fraction, bytes, or None for the profile's [tuning] (else 50%). The model's weights are
    read in place (float32, bfloat16 or float16): keep the model alive and
    on the CPU while patched. Returns the model."""
    torch = _torch()
    if getattr(model, _ATTR, None) is not None:
        raise MoerunError("moerun.patch: the model is already patched (moerun.unpatch first)")
    if device not in DEVICES:
        raise MoerunError(f"moerun.patch: device {device!r} is not one of {', '.join(DEVICES)}")
    blocks = _find_blocks(model)
    L = lib()
    state = _State()
    cmodel = ctypes.c_void_p()
    check(L.moe_model_create(ctypes.byref(cmodel), len(blocks)), "moe_model_create")
    try:
        for layer, (name, block, experts) in enumerate(blocks):
            gu, dn = experts.gate_up_proj.detach(), experts.down_proj.detach()
            if gu.is_cuda or not gu.is_contiguous() or not dn.is_contiguous() or gu.dim() != 3:
                raise MoerunError(f"moerun.patch: {name}: expert weights must be contiguous 3-D tensors on the CPU")
            act = getattr(experts, "act_fn", None)
            if act is not None and type(act).__name__ not in ("SiLU", "SiLUActivation"):
                raise MoerunError(f"moerun.patch: {name}: activation {type(act).__name__}; moerun's experts are SwiGLU")
            E, two_i, H = gu.shape
            I = two_i // 2
            if dn.shape != (E, H, I) or dn.dtype != gu.dtype:
                raise MoerunError(f"moerun.patch: {name}: down_proj {tuple(dn.shape)} does not match gate_up_proj "
                                  f"{tuple(gu.shape)}")
            code, es = _dtype_code(gu.dtype), gu.element_size()
            desc = L.moe_layer_desc_init(E, H, I, code)
            check(L.moe_model_set_layer(cmodel, layer, ctypes.byref(desc)), f"{name}: moe_model_set_layer")
            base_gu, base_dn = gu.data_ptr(), dn.data_ptr()
            for e in range(E):
                g = base_gu + e * 2 * I * H * es
                w = ExpertWeights(g, g + I * H * es, base_dn + e * H * I * es, None, None, None)
                check(L.moe_model_set_expert(cmodel, layer, e, ctypes.byref(w)), f"{name}: moe_model_set_expert")
            state.keep += [gu, dn]
            # The router's weights let moerun predict the next layers (prefetch).
            router = getattr(getattr(block, "gate", None), "weight", None)
            top_k = getattr(getattr(block, "gate", None), "top_k", None) or getattr(block, "top_k", None)
            if router is not None and top_k and router.dim() == 2 and tuple(router.shape) == (E, H) \
                    and router.dtype in (torch.float32, torch.bfloat16, torch.float16) and not router.is_cuda:
                r = router.detach().contiguous()
                routing = L.moe_routing_defaults(int(top_k))
                _routing_of(block.gate, routing, state)
                check(L.moe_model_set_router(cmodel, layer, ctypes.byref(routing), r.data_ptr(), _dtype_code(r.dtype)),
                      f"{name}: moe_model_set_router")
                state.keep.append(r)
        params = L.moe_runtime_default_params()
        params.device = DEVICES[device]
        params.policy = None if policy == "auto" else policy.encode()
        params.n_threads = threads
        _budget(params, gpu_budget)
        params.profile_path = None if profile is None else str(profile).encode()
        params.profile_any_host = int(any_host)
        check(L.moe_runtime_create(ctypes.byref(state.rt), cmodel, ctypes.byref(params)), "moe_runtime_create")
    finally:
        L.moe_model_free(ctypes.byref(cmodel))  # the runtime holds its own reference
    Experts = _experts_module(torch)
    for layer, (name, block, experts) in enumerate(blocks):
        repl = Experts(state, layer, experts, experts.gate_up_proj.shape[2])
        block.experts = repl
        state.blocks.append((block, experts, repl))
    object.__setattr__(model, _ATTR, state)
    return model


def is_patched(model) -> bool:
    return getattr(model, _ATTR, None) is not None


def unpatch(model):
    """Restores the original experts modules and frees moerun's runtime."""
    state = getattr(model, _ATTR, None)
    if state is None:
        raise MoerunError("moerun.unpatch: the model is not patched")
    for block, original, _ in state.blocks:
        block.experts = original
    state.close()
    object.__delattr__(model, _ATTR)
    return model


def stats(model) -> dict[str, Any]:
    """moerun's counters for a patched model (moe_stats, docs/devices.md),
    with the device and policy it resolved."""
    state = getattr(model, _ATTR, None)
    if state is None:
        raise MoerunError("moerun.stats: the model is not patched")
    L = lib()
    s = Stats()
    check(L.moe_runtime_stats(state.rt, ctypes.byref(s), ctypes.sizeof(s)), "moe_runtime_stats")
    out = {name: getattr(s, name) for name, _ in Stats._fields_}
    out["lookahead_pairs"], out["lookahead_hits"] = list(s.lookahead_pairs), list(s.lookahead_hits)
    calls = s.gpu_hits + s.gpu_misses
    out["gpu_hit_rate"] = s.gpu_hits / calls if calls else 0.0
    out["device"] = {v: k for k, v in DEVICES.items()}.get(L.moe_runtime_device(state.rt), "invalid")
    out["policy"] = L.moe_runtime_policy(state.rt).decode()
    return out


def info() -> dict[str, Any]:
    """What this package runs on: its version, the library's version, API
    version, path and build line (moe_build_info), whether CUDA was built,
    and the CPU path (the decode kernel per weight dtype, AMX, cores)."""
    L = lib()
    path, where = lib_path()
    build = L.moe_build_info().decode()
    kern = getattr(L, "moe_cpu_kernel", None)
    dtypes = {"f32": DTYPE_F32, "bf16": DTYPE_BF16, "f16": DTYPE_F16, "int8": DTYPE_I8}
    topo, ti = ctypes.c_void_p(), TopologyInfo()
    check(L.moe_topology_detect(ctypes.byref(topo)), "moe_topology_detect")
    try:
        check(L.moe_topology_get_info(topo, ctypes.byref(ti)), "moe_topology_get_info")
    finally:
        L.moe_topology_free(ctypes.byref(topo))
    return {
        "version": __version__,
        "library_version": L.moe_version().decode(),
        "api_version": API_VERSION,
        "library": path,
        "found_in": where,
        "build": build,
        "cuda": "no CUDA" not in build,  # moe_build_info names the CUDA version or says "no CUDA"
        "cpu_kernels": {n: kern(d).decode() if kern else "unknown (library older than moe_cpu_kernel)"
                        for n, d in dtypes.items()},
        "amx": bool(ti.has_amx),
        "cores": ti.n_cores,
        "numa_nodes": ti.n_numa_nodes,
    }
