#!/usr/bin/env python3
"""Generate tiny random-weight MoE model fixtures for moerun's tests.

Usage:
    python tests/gen/make_tiny_models.py --out tests/data/models [--arch NAME ...]

For every architecture (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2,
deepseek_v3, glm4_moe) this builds a tiny model with Hugging Face
transformers from a config modelled on the real checkpoint's config.json (see
../shared/models/), fills it with seeded random weights rounded to bfloat16,
runs it in float32 with eager attention and writes, under <out>/<arch>/:

  config.json         HF config in the real checkpoints' (legacy) key layout
  model.safetensors   weights, bfloat16, exact HF checkpoint tensor names
                      (per-expert tensors, as on the Hub; not transformers 5's
                      fused gate_up_proj).  deepseek_v3 and glm4_moe also
                      have their routers' e_score_correction_bias (F32,
                      non-zero) and one multi-token-prediction layer,
                      model.layers.3.* (random; not part of the model, for
                      the loader to skip)
  reference.json      prompt ids, full f32 logits of every prompt position,
                      16 greedy tokens with their logits, per-layer residual
                      stream and routing decisions for the prompt
  model.gguf          the same weights in GGUF, laid out exactly as llama.cpp's
                      convert_hf_to_gguf.py --outtype bf16 writes them
                      (BF16 matrices, F32 norms / router / biases, merged 3-D
                      expert tensors, Q/K row permutation for "llama"; for
                      deepseek_v2 and deepseek_v3, arch "deepseek2": kv_b_proj
                      split into attn_k_b / attn_v_b; deepseek_v3's
                      e_score_correction_bias as blk.N.exp_probs_b.bias (F32),
                      its MTP layer left out as the converter's skip_mtp does;
                      glm4_moe, arch "glm4moe": the MTP layer kept, as
                      Glm4MoeModel does without --no-mtp, as blk.3.* and
                      blk.3.nextn.*, block_count 4 and
                      glm4moe.nextn_predict_layers 1)
  model-q8_0.gguf     (qwen3_moe only) the same as --outtype q8_0 would write

and <out>/qwen3_moe-sharded/ holds the qwen3_moe weights split into three
safetensors shards with a model.safetensors.index.json.

Everything is deterministic: the same package versions give byte-identical
files.  The script checks itself: the saved checkpoint is reloaded with
transformers' from_pretrained (which must reproduce the reference logits
bit-for-bit, with no missing key and no unexpected key but the MTP layer's),
KV-cached step-by-step decoding must match a full-sequence forward, and
transformers' generate() must agree with the manual greedy loop.  For
deepseek_v3 and glm4_moe every router call is also recomputed by an
independent implementation of the "noaux_tc" rule, and the correction bias
(and for deepseek_v3 the group limit) must change the chosen experts for some
prompt tokens.

Generated with (record any change in tests/data/models/README.md):
    python 3.11.7, torch 2.15.0 (PyPI wheel, 2.15.0+cu132, run on CPU),
    transformers 5.24.0, safetensors 0.8.0,
    numpy 2.4.6, gguf 0.19.0;
    deepseek_v3 and glm4_moe with the same but transformers 5.25.0 (which
    changes the last printed digit of some numbers in the other references,
    same experts and tokens; they were not regenerated with it)
Checked against llama.cpp as vendored in llama-cpp-python 0.3.36 by
tests/gen/check_gguf_llamacpp.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import gguf

try:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    import safetensors
    from safetensors.torch import save_file
except ModuleNotFoundError:
    # make_quant_models.py imports the configs and the GGUF metadata writer
    # below, which need numpy and gguf only.
    torch = transformers = AutoConfig = AutoModelForCausalLM = safetensors = save_file = None

VOCAB = 256
PROMPT = [1, 35, 200, 17, 98, 4, 250, 61, 128, 73, 9, 142]
N_GREEDY = 16
N_DECODE = 4
BASE_SEED = 1234
ROUTER_GAP_MIN = 1e-2   # min router-logit gap between the k-th and (k+1)-th expert
LOGIT_GAP_MIN = 1e-2    # min gap between the greedy token's logit and the runner-up
# DeepSeek-V3 and GLM-4.5 choose on sigmoid scores (+ bias), whose slope is at
# most 1/4: if every router logit is off by at most e, each score moves by at
# most e/4, a difference of two scores by at most e/2 (the two logits' errors
# summing to at most 2e) and a difference of two group scores (sums of two
# scores) by at most e.  The margin is min(expert-score gap, group-score
# gap / 2) in score units, so a margin m cannot be overturned while e < 2m:
# 6e-3 tolerates a per-logit error e < 1.2e-2 (errors of the two competing
# logits summing to < 2.4e-2).  It must be this large, not ROUTER_GAP_MIN / 4
# (e < 5e-3, the softmax models' tolerance): an implementation that, like
# moerun and llama.cpp, rounds activations to bf16 in the dense projections
# moves the router logits by about 1e-2 (with 2.5e-3, glm4_moe's seed 1240 had
# a 3.6e-3 margin, and bf16 activations flipped an expert at prompt position 10).
ROUTER_GAP_MIN_SIGMOID = 6e-3
# ... and a large correction bias can make every token pick the same experts
# (glm4_moe's seed 1239 did so in layer 1): the prompt's tokens must pick at
# least this many distinct expert sets in every MoE layer
ROUTING_DISTINCT_MIN = len(PROMPT) // 2

# --------------------------------------------------------------------------
# Tiny configs, in the key layout of the real checkpoints' config.json files
# (shared/models/<name>/config.json), shrunk.  Keys the real files carry that
# matter for inference are kept; auto_map (remote code) is dropped, and
# bos/eos are null so that generation never stops early.
# --------------------------------------------------------------------------

COMMON = {
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "vocab_size": VOCAB,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "use_cache": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": None,
    "eos_token_id": None,
    "attention_dropout": 0.0,
}

CONFIGS = {
    # mistralai/Mixtral-8x7B: GQA, 8 experts top-2, softmax -> top-k -> renorm.
    "mixtral": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "intermediate_size": 32,          # = expert FFN size in Mixtral
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02,
        "sliding_window": None,
    },
    # Qwen/Qwen1.5-MoE-A2.7B (GQA as in Qwen2-57B-A14B): q/k/v bias,
    # shared expert with sigmoid gate, softmax -> top-k without renorm.
    "qwen2_moe": {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "intermediate_size": 96,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 512,
        "use_sliding_window": False,
        "decoder_sparse_step": 1,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 96,
        "num_experts_per_tok": 4,
        "num_experts": 8,
        "norm_topk_prob": False,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
    },
    # Qwen/Qwen3-30B-A3B: per-head q_norm/k_norm, head_dim != hidden/heads,
    # no bias, softmax -> top-k -> renorm.
    "qwen3_moe": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "attention_bias": False,
        "decoder_sparse_step": 1,
        "head_dim": 32,                   # 4*32 = 128 != hidden 64, as in the real model
        "intermediate_size": 96,
        "max_window_layers": 2,
        "mlp_only_layers": [],
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 8,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "use_sliding_window": False,
    },
    # allenai/OLMoE-1B-7B-0924: q_norm/k_norm over the whole projection
    # (not per head), MHA, softmax -> top-k without renorm.
    "olmoe": {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        "attention_bias": False,
        "clip_qkv": None,
        "intermediate_size": 32,          # = expert FFN size in OLMoE
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 2,
        "num_key_value_heads": 4,
        "output_router_logits": False,
        "pad_token_id": None,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01,
    },
    # deepseek-ai/DeepSeek-V2-Lite: MLA (q_lora_rank null), first layer dense,
    # 2 shared experts, greedy softmax top-k without renorm, YaRN rope with
    # mscale; yarn scaled down so that it matters at small positions.
    "deepseek_v2": {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "attention_bias": False,
        "aux_loss_alpha": 0.001,
        "first_k_dense_replace": 1,
        "intermediate_size": 96,
        "kv_lora_rank": 32,
        "moe_intermediate_size": 32,
        "moe_layer_freq": 1,
        "n_group": 1,
        "n_routed_experts": 8,
        "n_shared_experts": 2,
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 4,
        "pretraining_tp": 1,
        "q_lora_rank": None,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 4,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 128,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 1.0,
        "scoring_func": "softmax",
        "seq_aux": True,
        "topk_group": 1,
        "topk_method": "greedy",
        "v_head_dim": 16,
    },
    # deepseek-ai/DeepSeek-V3: MLA with q LoRA, first layer dense, 1 shared
    # expert, sigmoid scores + e_score_correction_bias for the choice,
    # group-limited top-k ("noaux_tc": top-2 groups of 4 by the sum of their
    # two best scores), renorm, x 2.5; interleaved YaRN rope (mscale 1.0 as
    # the real model), scaled down as for deepseek_v2; one MTP layer
    # (model.layers.3.*) in the checkpoint that inference must skip.
    "deepseek_v3": {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "attention_bias": False,
        "aux_loss_alpha": 0.001,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "intermediate_size": 96,
        "kv_lora_rank": 32,
        "moe_intermediate_size": 32,
        "moe_layer_freq": 1,
        "n_group": 4,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 4,
        "num_nextn_predict_layers": 1,
        "pretraining_tp": 1,
        "q_lora_rank": 24,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "rms_norm_eps": 1e-06,
        "rope_interleave": True,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 4,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 128,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "v_head_dim": 16,
    },
    # zai-org/GLM-4.5-Air (GLM-4.5 and 4.6 differ only in sizes and in the
    # flags noted): GQA with q/k/v bias and an explicit head_dim (32, not
    # hidden/heads = 16), partial rotary (the first half of each head,
    # rotate-half), per-head q_norm/k_norm (use_qk_norm: true as in
    # GLM-4.5; false in Air), first layer dense, 1 shared expert, sigmoid
    # scores + e_score_correction_bias for the choice, n_group 1 (no group
    # limit), renorm, x 2.5 (GLM-4.5's factor; Air has 1.0); one MTP layer
    # (model.layers.3.*) in the checkpoint that inference must skip.  RoPE in
    # the released file's legacy top-level keys (partial_rotary_factor,
    # rope_theta, rope_scaling null); transformers 5 folds them into
    # rope_parameters.  No scoring_func / topk_method keys: the rule is fixed.
    "glm4_moe": {
        "architectures": ["Glm4MoeForCausalLM"],
        "model_type": "glm4_moe",
        "attention_bias": True,
        "first_k_dense_replace": 1,
        "head_dim": 32,
        "intermediate_size": 96,
        "moe_intermediate_size": 32,
        "n_group": 1,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 3,
        "num_key_value_heads": 2,
        "num_nextn_predict_layers": 1,
        "pad_token_id": None,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "topk_group": 1,
        "use_qk_norm": True,
    },
}

GGUF_ARCH = {
    "mixtral": gguf.MODEL_ARCH.LLAMA,
    "qwen2_moe": gguf.MODEL_ARCH.QWEN2MOE,
    "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE,
    "olmoe": gguf.MODEL_ARCH.OLMOE,
    "deepseek_v2": gguf.MODEL_ARCH.DEEPSEEK2,
    "deepseek_v3": gguf.MODEL_ARCH.DEEPSEEK2,   # DeepseekV3ForCausalLM -> DeepseekV2Model
    "glm4_moe": gguf.MODEL_ARCH.GLM4_MOE,       # Glm4MoeForCausalLM -> Glm4MoeModel
}
DEEPSEEK = ("deepseek_v2", "deepseek_v3")
# routers that choose on sigmoid scores + e_score_correction_bias ("noaux_tc")
SIGMOID_ROUTER = ("deepseek_v3", "glm4_moe")
# the converter keeps the MTP layer(s) (Glm4MoeModel without --no-mtp):
# block_count = num_hidden_layers + num_nextn_predict_layers
MTP_IN_GGUF = ("glm4_moe",)

SHARDED_ARCH = "qwen3_moe"
Q8_ARCH = "qwen3_moe"


def full_config(arch: str) -> dict:
    cfg = dict(COMMON)
    cfg.update(CONFIGS[arch])
    cfg["transformers_version"] = transformers.__version__
    return dict(sorted(cfg.items()))


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------

def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Seeded init with O(1) activations, then round everything to bf16.

    matrices: N(0, 1/fan_in) (std 0.10-0.18 here), embeddings N(0,1),
    lm_head N(0, 4/fan_in) (peaked logits), routers N(0, 9/fan_in)
    (decisive routing), norms 1 + 0.1 N(0,1), biases 0.2 N(0,1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            shape = p.shape
            if name.endswith("norm.weight") or "layernorm" in name:
                v = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith(".bias"):
                v = 0.2 * torch.randn(shape, generator=gen)
            elif "embed_tokens" in name:
                v = torch.randn(shape, generator=gen)
            elif name.startswith("lm_head"):
                v = torch.randn(shape, generator=gen) * (2.0 / math.sqrt(shape[-1]))
            elif name.endswith("mlp.gate.weight"):
                v = torch.randn(shape, generator=gen) * (3.0 / math.sqrt(shape[-1]))
            else:
                v = torch.randn(shape, generator=gen) * (1.0 / math.sqrt(shape[-1]))
            p.copy_(v.to(torch.bfloat16).to(p.dtype))


CORR_BIAS = "e_score_correction_bias"
CORR_BIAS_STD = 0.5
BIAS_SEED_OFFSET = 1_000_000   # the correction biases' generator: seed + this
MTP_SEED_OFFSET = 2_000_000    # the MTP layer's generator: seed + this


def init_correction_bias(model: torch.nn.Module, seed: int) -> None:
    """DeepSeek-V3 routers: e_score_correction_bias (a buffer, not a parameter,
    so init_weights leaves it at zero) = 0.5 N(0,1), rounded to bf16 values.
    It is stored as F32, as in the real checkpoints.  A separate generator, so
    that the parameters are those init_weights gives for the same seed."""
    gen = torch.Generator().manual_seed(seed + BIAS_SEED_OFFSET)
    with torch.no_grad():
        for name, b in sorted(model.named_buffers()):
            if name.endswith(CORR_BIAS):
                v = CORR_BIAS_STD * torch.randn(b.shape, generator=gen)
                b.copy_(v.to(torch.bfloat16).to(b.dtype))


def _init_like(name: str, shape, gen: torch.Generator) -> torch.Tensor:
    # init_weights' distributions, by HF checkpoint name
    if name.endswith(CORR_BIAS):
        return CORR_BIAS_STD * torch.randn(shape, generator=gen)
    if name.endswith("norm.weight") or "layernorm" in name:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("embed_tokens.weight"):
        return torch.randn(shape, generator=gen)
    if name.endswith("head.weight"):
        return torch.randn(shape, generator=gen) * (2.0 / math.sqrt(shape[-1]))
    if name.endswith("mlp.gate.weight"):
        return torch.randn(shape, generator=gen) * (3.0 / math.sqrt(shape[-1]))
    return torch.randn(shape, generator=gen) * (1.0 / math.sqrt(shape[-1]))


def mtp_tensors(cfg: dict, sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The multi-token-prediction layer(s) as the real DeepSeek-V3 and
    GLM-4.5 / 4.5-Air checkpoints name them: model.layers.{n_layers + i}.
    {embed_tokens, enorm, hnorm, eh_proj, shared_head.norm, shared_head.head}
    plus a full MoE decoder layer (the tensor names and shapes of the last
    layer) under the same index.  (GLM-4.6's files reportedly lack
    embed_tokens and shared_head.head, sharing the model's.)
    Fresh random values (not copies), so that a loader that reads them by
    mistake cannot go unnoticed.  transformers' DeepseekV3ForCausalLM and
    Glm4MoeForCausalLM do not build them; inference must skip them."""
    n_layer, hid = cfg["num_hidden_layers"], cfg["hidden_size"]
    gen = torch.Generator().manual_seed(seed + MTP_SEED_OFFSET)
    out: dict[str, torch.Tensor] = {}
    last = f"model.layers.{n_layer - 1}."
    for i in range(cfg.get("num_nextn_predict_layers") or 0):
        pre = f"model.layers.{n_layer + i}."
        shapes = {
            "embed_tokens.weight": (cfg["vocab_size"], hid),
            "enorm.weight": (hid,),
            "hnorm.weight": (hid,),
            "eh_proj.weight": (hid, 2 * hid),
            "shared_head.norm.weight": (hid,),
            "shared_head.head.weight": (cfg["vocab_size"], hid),
        }
        for name in sorted(sd):
            if name.startswith(last):
                shapes[name[len(last):]] = tuple(sd[name].shape)
        for k in sorted(shapes):
            v = _init_like(pre + k, shapes[k], gen).to(torch.bfloat16)
            out[pre + k] = v.to(torch.float32) if k.endswith(CORR_BIAS) else v
    return out


def hf_state_dict(arch: str, model: torch.nn.Module, cfg: dict) -> dict[str, torch.Tensor]:
    """transformers-5 module state -> tensor names of the real HF checkpoints."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach().to(torch.float32)
        if arch == "mixtral" and ".mlp." in name:
            name = name.replace(".mlp.", ".block_sparse_moe.")
        if name.endswith("experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            n_ff = t.shape[1] // 2
            for e in range(t.shape[0]):
                g, u = t[e, :n_ff], t[e, n_ff:]
                if arch == "mixtral":
                    out[f"{base}{e}.w1.weight"] = g
                    out[f"{base}{e}.w3.weight"] = u
                else:
                    out[f"{base}{e}.gate_proj.weight"] = g
                    out[f"{base}{e}.up_proj.weight"] = u
        elif name.endswith("experts.down_proj"):
            base = name[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.{'w2' if arch == 'mixtral' else 'down_proj'}.weight"] = t[e]
        else:
            out[name] = t
    # e_score_correction_bias stays F32 (bf16-representable), as in the real
    # DeepSeek-V3 checkpoints; everything else is bf16
    return {k: (v if k.endswith(CORR_BIAS) else v.to(torch.bfloat16)).contiguous()
            for k, v in out.items()}


ST_META = {"format": "pt"}


def save_st(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata=ST_META)
    os.chmod(path, 0o644)  # safetensors writes 0600


def save_sharded(sd: dict[str, torch.Tensor], outdir: Path, n_shards: int) -> None:
    names = sorted(sd)
    total = sum(sd[n].numel() * sd[n].element_size() for n in names)
    target = total / n_shards
    shards: list[list[str]] = [[]]
    acc = 0
    for n in names:
        sz = sd[n].numel() * sd[n].element_size()
        if acc >= target * len(shards) and len(shards) < n_shards:
            shards.append([])
        shards[-1].append(n)
        acc += sz
    weight_map = {}
    for i, group in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_st({n: sd[n] for n in group}, outdir / fname)
        for n in group:
            weight_map[n] = fname
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (outdir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------
# Reference computation
# --------------------------------------------------------------------------

def build_model(cfgdir: Path) -> torch.nn.Module:
    config = AutoConfig.from_pretrained(cfgdir)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32)
    return model.eval()


def load_model(d: Path, loading_info: list | None = None) -> torch.nn.Module:
    """loading_info: if a list, from_pretrained's loading-info dict is appended."""
    model = AutoModelForCausalLM.from_pretrained(
        d, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32,
        output_loading_info=loading_info is not None)
    if loading_info is not None:
        model, info = model
        loading_info.append(info)
    return model.eval()


class RouterProbe:
    """Records every router call: top-k ids/weights and the decision margin."""

    def __init__(self, model, top_k: int):
        self.top_k = top_k
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.v3: list[dict] = []   # noaux_tc routers (DeepSeek-V3, GLM-4.5): choice vs simpler rules
        self.handles = []
        for name, mod in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(mod, "weight") and mod.weight.dim() == 2 \
                    and mod.weight.shape[0] > 1:
                layer = int(name.split(".")[2])
                self.handles.append(mod.register_forward_hook(self._hook(layer)))

    def _hook(self, layer):
        def fn(mod, inp, out):
            logits, weights, idx = out
            if hasattr(mod, CORR_BIAS):
                gap = self._noaux_tc(layer, mod, logits, weights, idx)
            else:
                srt = torch.sort(logits.float(), dim=-1, descending=True).values
                gap = srt[:, self.top_k - 1] - srt[:, self.top_k]
            self.calls.append((layer, idx.detach().clone(), weights.detach().float().clone(), gap))
        return fn

    def _noaux_tc(self, layer, mod, logits, weights, idx) -> torch.Tensor:
        """Checks transformers' choice against an independent implementation
        of the noaux_tc rule (DeepSeek-V3; GLM-4.5's is the same code) and
        returns its decision margin per token: the smaller of half the gap
        between the topk_group-th and next group score and the gap between
        the k-th and (k+1)-th biased score among the kept groups
        (sigmoid-score units; see ROUTER_GAP_MIN_SIGMOID).  Records how often
        the rule's choice differs from simpler ones (with n_group 1 only from
        plain top-k: the group variants are then the same rule)."""
        k, ng, kg = self.top_k, mod.num_group, mod.topk_group
        scores = logits.float().sigmoid()
        choice = scores + mod.e_score_correction_bias.float()
        grp, keep = _group_keep(choice, ng, kg)
        gs = grp.sort(dim=-1, descending=True).values
        group_gap = gs[:, kg - 1] - gs[:, kg] if kg < ng else torch.full((len(gs),), math.inf)
        masked = choice.masked_fill(~keep, -math.inf)
        ms = masked.sort(dim=-1, descending=True).values
        gap = torch.minimum(group_gap / 2, ms[:, k - 1] - ms[:, k])
        mine = masked.topk(k, dim=-1).indices
        assert torch.equal(mine.sort(-1).values, idx.sort(-1).values), f"layer {layer}: V3 choice differs"
        w = scores.gather(1, idx)
        if mod.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = w * mod.routed_scaling_factor
        assert torch.allclose(w, weights.float(), rtol=1e-6, atol=0), f"layer {layer}: V3 weights differ"

        def differs(sel):  # token rows whose expert set differs from the rule's
            return int((sel.sort(-1).values != mine.sort(-1).values).any(-1).sum())

        row = {
            "layer": layer, "tokens": len(choice),
            "plain_topk": differs(scores.topk(k, dim=-1).indices),            # no bias, no groups
        }
        if ng > 1:
            row.update({
                "bias_no_groups": differs(choice.topk(k, dim=-1).indices),    # bias, no group limit
                "groups_no_bias": differs(_group_topk(scores, ng, kg, k)),     # group limit, no bias
                "zero_fill": differs(choice.masked_fill(~keep, 0.0).topk(k, dim=-1).indices),
            })
        self.v3.append(row)
        return gap

    def min_gap(self) -> float:
        return min(float(g.min()) for _, _, _, g in self.calls) if self.calls else 1.0

    def close(self):
        for h in self.handles:
            h.remove()


def _group_keep(choice: torch.Tensor, n_group: int, topk_group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group scores (sum of each group's two best) and the mask of the experts
    in the topk_group best groups."""
    n_tok, n_exp = choice.shape
    grp = choice.view(n_tok, n_group, n_exp // n_group).topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros_like(grp).scatter(1, grp.topk(topk_group, dim=-1).indices, 1.0).bool()
    return grp, keep.repeat_interleave(n_exp // n_group, dim=-1)


def _group_topk(choice: torch.Tensor, n_group: int, topk_group: int, k: int) -> torch.Tensor:
    _, keep = _group_keep(choice, n_group, topk_group)
    return choice.masked_fill(~keep, -math.inf).topk(k, dim=-1).indices


def _cache_of(out):
    c = getattr(out, "cache", None)
    if c is None:
        c = getattr(out, "past_key_values", None)
    assert c is not None, "model returned no KV cache"
    return c


def logit_gap(logits: torch.Tensor) -> float:
    top2 = torch.topk(logits, 2, dim=-1).values
    return float((top2[..., 0] - top2[..., 1]).min())


def _no_grad(fn):
    return torch.no_grad()(fn) if torch else fn


@_no_grad
def compute_reference(model, cfg: dict) -> tuple[dict, dict]:
    top_k = cfg["num_experts_per_tok"]
    ids = torch.tensor([PROMPT])
    n = len(PROMPT)

    # 1. prefill: logits of every prompt position, residual stream per layer, routing
    probe = RouterProbe(model, top_k)
    layer_out = []
    hooks = [layer.register_forward_hook(lambda m, i, o: layer_out.append(
        (o[0] if isinstance(o, tuple) else o).detach().clone()))
        for layer in model.model.layers]
    out = model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    prompt_logits = out.logits[0].float()
    routing = []
    for layer, idx, w, _ in probe.calls:
        order = torch.argsort(w, dim=-1, descending=True, stable=True)
        routing.append({
            "layer": layer,
            "experts": torch.gather(idx, 1, order).tolist(),
            "weights": torch.gather(w, 1, order).tolist(),
        })
    prefill_router_gap = probe.min_gap()
    v3_routing = probe.v3
    probe.close()

    # 2. greedy decoding, one token at a time with the KV cache
    probe = RouterProbe(model, top_k)
    out = model(input_ids=ids, use_cache=True)
    cache = _cache_of(out)
    step_logits = [out.logits[0, -1].float()]
    tokens = [int(step_logits[0].argmax())]
    for _ in range(N_GREEDY - 1):
        out = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
        cache = _cache_of(out)
        step_logits.append(out.logits[0, -1].float())
        tokens.append(int(step_logits[-1].argmax()))
    greedy_logits = torch.stack(step_logits)
    decode_router_gap = probe.min_gap()
    probe.close()

    # 3. the cached decode must equal a full-sequence forward (no cache)
    full_ids = torch.tensor([PROMPT + tokens[:-1]])
    full = model(input_ids=full_ids, use_cache=False).logits[0].float()
    assert torch.allclose(full[:n], prompt_logits, atol=1e-5, rtol=0), "prefill mismatch"
    diff = float((full[n - 1:] - greedy_logits).abs().max())
    assert diff < 1e-4, f"KV-cache decode differs from full forward by {diff}"
    assert torch.equal(full[n - 1:].argmax(-1), greedy_logits.argmax(-1))

    # 4. transformers' own generate() must agree
    gen = model.generate(ids, do_sample=False, max_new_tokens=N_GREEDY, use_cache=True,
                         eos_token_id=None, pad_token_id=0)
    assert gen[0, n:].tolist() == tokens, (gen[0, n:].tolist(), tokens)

    stats = {
        "prefill_router_gap": prefill_router_gap,
        "decode_router_gap": decode_router_gap,
        "greedy_logit_gap": logit_gap(greedy_logits),
        "prompt_logit_gap": logit_gap(prompt_logits),
        "kv_vs_full_max_abs_diff": diff,
        "logit_std": float(prompt_logits.std()),
    }
    if v3_routing:
        # prefill token x MoE-layer selections where the noaux_tc rule picks
        # another expert set than a simpler rule would
        stats["routing_selections"] = sum(r["tokens"] for r in v3_routing)
        for key in ("plain_topk", "bias_no_groups", "groups_no_bias", "zero_fill"):
            if key in v3_routing[0]:
                stats[f"routing_differs_{key}"] = sum(r[key] for r in v3_routing)
    ref = {
        "prompt": PROMPT,
        "logits": prompt_logits,
        "greedy": tokens,
        "greedy_logits": greedy_logits,
        "decode_logits": greedy_logits[1:1 + N_DECODE],
        "layer_output": torch.stack([t[0] for t in layer_out]),
        "routing": routing,
        "rope": {
            "inv_freq": model.model.rotary_emb.inv_freq.float(),
            "attention_scaling": float(model.model.rotary_emb.attention_scaling),
            "softmax_scale": float(model.model.layers[0].self_attn.scaling),
        },
    }
    return ref, stats


def r6(x, digits: int = 6) -> object:
    """Round floats to `digits` significant digits for compact JSON."""
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, list):
        return [r6(v, digits) for v in x]
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    return x


def write_reference(path: Path, ref: dict, stats: dict, arch: str) -> None:
    doc = {
        "arch": arch,
        "prompt": ref["prompt"],
        "n_prompt": len(ref["prompt"]),
        "vocab_size": VOCAB,
        "logits": r6(ref["logits"]),
        "greedy": ref["greedy"],
        "greedy_logits": r6(ref["greedy_logits"]),
        "greedy_argmax_logit": r6([float(r.max()) for r in ref["greedy_logits"]]),
        "decode_logits": r6(ref["decode_logits"]),
        "layer_output": r6(ref["layer_output"]),
        "routing": [{"layer": r["layer"], "experts": r["experts"], "weights": r6(r["weights"])}
                    for r in ref["routing"]],
        "rope": {k: r6(v, 9) for k, v in ref["rope"].items()},
        "margins": r6(stats),
        "versions": versions(),
    }
    # one row of numbers per line: compact, yet diffable
    text = json.dumps(doc, separators=(",", ":"))
    path.write_text(_pretty(doc) + "\n")
    assert json.loads(path.read_text()) == json.loads(text)


def _pretty(doc: dict) -> str:
    lines = ["{"]
    items = list(doc.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if isinstance(v, list) and v and isinstance(v[0], (list, dict)):
            inner = [json.dumps(e, separators=(",", ":")) for e in v]
            lines.append(f"  {json.dumps(k)}: [")
            lines.extend(f"    {e}{',' if j + 1 < len(inner) else ''}" for j, e in enumerate(inner))
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}{comma}")
    lines.append("}")
    return "\n".join(lines)


def versions() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "gguf": _gguf_version(),
    }


def _gguf_version() -> str:
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------
# GGUF, following llama.cpp's convert_hf_to_gguf.py (conversion/*.py)
# --------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
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


def llama_permute(w: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    # LlamaModel.permute in convert_hf_to_gguf.py (HF rotate-half -> GGML interleaved)
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def gguf_tensors(arch: str, cfg: dict, sd: dict[str, torch.Tensor]):
    """Yield (hf_name, gguf_name, f32 tensor) as modify_tensors() would."""
    n_layer = cfg["num_hidden_layers"]
    n_block = gguf_block_count(arch, cfg)
    tmap = gguf.get_tensor_name_map(GGUF_ARCH[arch], n_block)

    def mapped(name):
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"cannot map {name!r}")
        return new

    n_exp = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
    done_experts: set[int] = set()
    for name in sorted(sd, key=_hf_order):
        t = sd[name].to(torch.float32)
        bid = next((int(p) for p in name.split(".") if p.isdecimal()), None)
        if arch in DEEPSEEK and bid is not None and bid >= n_layer:
            continue   # DeepseekV2Model.skip_mtp: MTP layers are not converted
        # glm4_moe (Glm4MoeModel, no --no-mtp): the MTP layer is converted like
        # any block, model.layers.3.X -> blk.3.X, and its own tensors
        # (eh_proj, enorm, hnorm, embed_tokens, shared_head.{norm,head}) ->
        # blk.3.nextn.{eh_proj, enorm, hnorm, embed_tokens,
        # shared_head_norm, shared_head_head} by gguf-py's tensor map
        if name.endswith(CORR_BIAS):
            # ModelBase.filter_tensors: -> blk.N.exp_probs_b.bias (F32, 1-D)
            name = name.replace(CORR_BIAS, "e_score_correction.bias")
        if ".experts." in name:
            if bid in done_experts:
                continue
            done_experts.add(bid)
            if arch == "mixtral":
                for wid in ("w1", "w2", "w3"):
                    data = torch.stack([sd[f"model.layers.{bid}.block_sparse_moe.experts.{x}.{wid}.weight"]
                                        .to(torch.float32) for x in range(n_exp)])
                    merged = f"layers.{bid}.feed_forward.experts.{wid}.weight"
                    yield merged, mapped(merged), data
            else:
                for wn in ("down_proj", "gate_proj", "up_proj"):
                    data = torch.stack([sd[f"model.layers.{bid}.mlp.experts.{x}.{wn}.weight"]
                                        .to(torch.float32) for x in range(n_exp)])
                    merged = f"model.layers.{bid}.mlp.experts.{wn}.weight"
                    yield merged, mapped(merged), data
            continue
        if arch == "mixtral":
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                t = llama_permute(t, cfg["num_attention_heads"], cfg["num_attention_heads"])
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                t = llama_permute(t, cfg["num_attention_heads"], cfg["num_key_value_heads"])
        if arch in DEEPSEEK and name.endswith("kv_b_proj.weight"):
            # MLA absorption layout: split kv_b into k_b (transposed) and v_b
            n_head_kv = cfg["num_key_value_heads"]
            v_dim, nope = cfg["v_head_dim"], cfg["qk_nope_head_dim"]
            kv_b = t.view(n_head_kv, v_dim + nope, t.shape[-1])
            k_b, v_b = torch.split(kv_b, [nope, v_dim], dim=1)
            k_b = k_b.transpose(1, 2)
            for nn_, d in ((name.replace("kv_b_proj", "k_b_proj"), k_b),
                           (name.replace("kv_b_proj", "v_b_proj"), v_b)):
                yield nn_, mapped(nn_), d
            continue
        yield name, mapped(name), t


def gguf_block_count(arch: str, cfg: dict) -> int:
    """{arch}.block_count: Glm4MoeModel counts the MTP layers in it."""
    n = cfg["num_hidden_layers"]
    if arch in MTP_IN_GGUF:
        n += cfg.get("num_nextn_predict_layers") or 0
    return n


def _hf_order(name: str):
    # embeddings, layers in order, final norm, lm_head
    if name.startswith("model.embed_tokens"):
        return (0, 0, name)
    if name.startswith("model.layers."):
        return (1, int(name.split(".")[2]), name)
    if name.startswith("model.norm"):
        return (2, 0, name)
    return (3, 0, name)


def tensor_qtype(new_name: str, n_dims: int, ftype: gguf.LlamaFileType) -> gguf.GGMLQuantizationType:
    # prepare_tensors() in conversion/base.py
    if n_dims <= 1 or new_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    if new_name.endswith(("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")) \
            or new_name[-7:] not in (".weight", ".lora_a", ".lora_b"):
        return gguf.GGMLQuantizationType.F32
    if ftype == gguf.LlamaFileType.ALL_F32:
        return gguf.GGMLQuantizationType.F32
    if ftype == gguf.LlamaFileType.MOSTLY_BF16:
        return gguf.GGMLQuantizationType.BF16
    if ftype == gguf.LlamaFileType.MOSTLY_Q8_0:
        return gguf.GGMLQuantizationType.Q8_0
    raise ValueError(ftype)


def write_gguf(path: Path, arch: str, cfg: dict, sd: dict[str, torch.Tensor],
               ftype: gguf.LlamaFileType, extra_u32: dict[str, int] | None = None
               ) -> list[tuple[str, str, tuple]]:
    """extra_u32: additional uint32 keys (only check_gguf_llamacpp.py uses it)."""
    a = GGUF_ARCH[arch]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[a])
    # tensors first (the converter does prepare_tensors before the metadata)
    table = []
    for hf_name, new_name, t in gguf_tensors(arch, cfg, sd):
        data = t.numpy()
        qt = tensor_qtype(new_name, data.ndim, ftype)
        try:
            q = gguf.quants.quantize(data, qt)
        except gguf.QuantError:
            qt = gguf.GGMLQuantizationType.F16
            q = gguf.quants.quantize(data, qt)
        w.add_tensor(new_name, q, raw_dtype=qt)
        table.append((new_name, qt.name, tuple(reversed(data.shape))))

    # metadata (prepare_metadata -> set_type, meta model, set_gguf_parameters)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"moerun-tiny-{arch}")
    w.add_size_label("tiny")
    set_gguf_parameters(w, arch, cfg, ftype)
    for k, v in (extra_u32 or {}).items():
        w.add_uint32(k, v)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_byte_vocab(w)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return table


def set_gguf_parameters(w: gguf.GGUFWriter, arch: str, cfg: dict, ftype) -> None:
    h = dict(cfg)
    if arch in DEEPSEEK:
        h["num_key_value_heads"] = 1      # MLA is converted to MQA
    if arch == "olmoe":
        h["rms_norm_eps"] = 1e-5          # OlmoeModel hard-codes 1e-5 (same value)
    # TextModel.set_gguf_parameters
    w.add_block_count(gguf_block_count(arch, h))
    w.add_context_length(h["max_position_embeddings"])
    w.add_embedding_length(h["hidden_size"])
    w.add_feed_forward_length(h["intermediate_size"])
    w.add_head_count(h["num_attention_heads"])
    w.add_head_count_kv(h["num_key_value_heads"])
    rope = h.get("rope_scaling") or {}
    if rope.get("type", rope.get("rope_type")) == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        if "beta_fast" in rope:
            w.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
        if "beta_slow" in rope:
            w.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])
    w.add_rope_freq_base(h["rope_theta"])
    w.add_layer_norm_rms_eps(h["rms_norm_eps"])
    n_exp = h.get("num_local_experts") or h.get("num_experts") or h.get("n_routed_experts")
    w.add_expert_count(n_exp)
    w.add_expert_used_count(h["num_experts_per_tok"])
    if h.get("n_group") is not None:
        w.add_expert_group_count(h["n_group"])
    if h.get("topk_group") is not None:
        w.add_expert_group_used_count(h["topk_group"])
    if h.get("scoring_func") == "sigmoid":
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    elif h.get("scoring_func") == "softmax":
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
    if h.get("head_dim") is not None:
        w.add_key_length(h["head_dim"])
        w.add_value_length(h["head_dim"])
    w.add_file_type(ftype)

    if arch == "mixtral":                                   # LlamaModel
        w.add_vocab_size(h["vocab_size"])
        w.add_rope_dimension_count(h.get("head_dim") or h["hidden_size"] // h["num_attention_heads"])
    elif arch in ("qwen2_moe", "qwen3_moe"):                # Qwen2MoeModel
        w.add_expert_feed_forward_length(h["moe_intermediate_size"])
        if h.get("shared_expert_intermediate_size") is not None:
            w.add_expert_shared_feed_forward_length(h["shared_expert_intermediate_size"])
    elif arch in DEEPSEEK:                                  # DeepseekV2Model (also V3)
        w.add_leading_dense_block_count(h["first_k_dense_replace"])
        w.add_vocab_size(h["vocab_size"])
        if h.get("q_lora_rank") is not None:
            w.add_q_lora_rank(h["q_lora_rank"])
        w.add_kv_lora_rank(h["kv_lora_rank"])
        w.add_key_length(h["kv_lora_rank"] + h["qk_rope_head_dim"])
        w.add_value_length(h["kv_lora_rank"])
        w.add_key_length_mla(h["qk_nope_head_dim"] + h["qk_rope_head_dim"])
        w.add_value_length_mla(h["v_head_dim"])
        w.add_expert_feed_forward_length(h["moe_intermediate_size"])
        w.add_expert_shared_count(h["n_shared_experts"])
        w.add_expert_weights_scale(h["routed_scaling_factor"])
        if h.get("norm_topk_prob"):
            w.add_expert_weights_norm(True)
        w.add_rope_dimension_count(h["qk_rope_head_dim"])
        if rope.get("mscale_all_dim") is not None:
            w.add_rope_scaling_yarn_log_mul(0.1 * rope["mscale_all_dim"])
    elif arch == "glm4_moe":                                # Glm4MoeModel
        # (TextModel wrote no rope scaling keys: transformers' rope_parameters
        # has rope_type "default", which the converter only warns about)
        head_dim = h.get("head_dim") or h["hidden_size"] // h["num_attention_heads"]
        w.add_rope_dimension_count(int(head_dim * h.get("partial_rotary_factor", 0.5)))
        # (it writes expert_count again from n_routed_experts: same value)
        w.add_expert_feed_forward_length(h["moe_intermediate_size"])
        w.add_expert_shared_count(h["n_shared_experts"])
        w.add_leading_dense_block_count(h["first_k_dense_replace"])
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)   # always, no config key
        w.add_expert_weights_scale(h["routed_scaling_factor"])
        w.add_expert_weights_norm(h["norm_topk_prob"])
        w.add_nextn_predict_layers(h["num_nextn_predict_layers"])


def add_byte_vocab(w: gguf.GGUFWriter) -> None:
    """Minimal byte-level "gpt2" tokenizer so that llama.cpp loads the file:
    token i is byte i (GPT-2 byte-to-unicode spelling).  GGUF cannot store an
    empty array, so there is one merge; its result is not in the vocabulary,
    which only means text is tokenized byte by byte (GPT-2's pre-tokenizer
    pattern, as the byte-level tokenizer.json of qwen3_moe).  Most tests feed
    ids; run_model_gguf_tokenizer reads this tokenizer."""
    b2u = bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([b2u[i] for i in range(256)])
    w.add_token_types([gguf.TokenType.NORMAL] * 256)
    w.add_token_merges([f"{b2u[32]} {b2u[32]}"])


# --------------------------------------------------------------------------

def generate_arch(arch: str, out: Path, log: dict) -> None:
    cfg = full_config(arch)
    d = out / arch
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    router_gap_min = ROUTER_GAP_MIN_SIGMOID if arch in SIGMOID_ROUTER else ROUTER_GAP_MIN
    seed = BASE_SEED
    for attempt in range(64):
        torch.manual_seed(0)
        model = build_model(d)
        init_weights(model, seed)
        init_correction_bias(model, seed)
        ref, stats = compute_reference(model, cfg)
        ok = (min(stats["prefill_router_gap"], stats["decode_router_gap"]) >= router_gap_min
              and stats["greedy_logit_gap"] >= LOGIT_GAP_MIN)
        if arch in SIGMOID_ROUTER:
            ok = ok and min(len({tuple(sorted(e)) for e in r["experts"]})
                            for r in ref["routing"]) >= ROUTING_DISTINCT_MIN
        if ok:
            break
        seed += 1
    else:
        raise RuntimeError(f"{arch}: no seed with decisive routing/greedy margins")
    stats["seed"] = seed

    if arch in SIGMOID_ROUTER:
        assert stats["routing_differs_plain_topk"] > 0, \
            f"{arch}: the correction bias (and group limit) never change the prefill choice"
    if "partial_rotary_factor" in cfg:
        # transformers must have read the legacy top-level key: rotary dim =
        # head_dim * factor (2 x len(inv_freq)), from the config's head_dim
        attn = model.model.layers[0].self_attn
        assert attn.head_dim == cfg["head_dim"] and attn.scaling == cfg["head_dim"] ** -0.5
        assert 2 * len(ref["rope"]["inv_freq"]) == int(cfg["head_dim"] * cfg["partial_rotary_factor"])

    sd = hf_state_dict(arch, model, cfg)
    # multi-token-prediction layer(s), written but not part of the model
    mtp = mtp_tensors(cfg, sd, seed)
    assert not set(mtp) & set(sd)
    save_st(dict(sorted({**sd, **mtp}.items())) if mtp else sd, d / "model.safetensors")

    # the checkpoint as written must reproduce the reference through
    # transformers' own loader (legacy-name -> fused-expert conversion;
    # for deepseek_v3 and glm4_moe the MTP layer is an unexpected key it
    # leaves out)
    info: list = []
    reloaded = load_model(d, info)
    assert not info[0]["missing_keys"] and not info[0]["mismatched_keys"], info[0]
    mtp_prefix = f"model.layers.{cfg['num_hidden_layers']}."
    assert all(k.startswith(mtp_prefix) for k in info[0]["unexpected_keys"]), info[0]["unexpected_keys"]
    assert bool(info[0]["unexpected_keys"]) == bool(mtp)
    with torch.no_grad():
        lg = reloaded(input_ids=torch.tensor([PROMPT]), use_cache=False).logits[0].float()
    assert torch.equal(lg, ref["logits"]), f"{arch}: reload mismatch {float((lg - ref['logits']).abs().max())}"
    del reloaded

    write_reference(d / "reference.json", ref, stats, arch)
    table = []
    if arch in GGUF_ARCH:
        # all the file's tensors, as the converter reads them: gguf_tensors
        # drops the MTP layer for DeepSeek and keeps it for glm4_moe
        table = write_gguf(d / "model.gguf", arch, cfg, {**sd, **mtp}, gguf.LlamaFileType.MOSTLY_BF16)
    else:
        print(f"{arch}: note: no model.gguf (not written for this architecture yet)")
    log[arch] = {"seed": seed, "stats": stats, "gguf": table}

    if arch == Q8_ARCH:
        write_gguf(d / "model-q8_0.gguf", arch, cfg, sd, gguf.LlamaFileType.MOSTLY_Q8_0)

    if arch == SHARDED_ARCH:
        sdir = out / f"{arch}-sharded"
        if sdir.exists():
            shutil.rmtree(sdir)
        sdir.mkdir()
        shutil.copy(d / "config.json", sdir / "config.json")
        shutil.copy(d / "reference.json", sdir / "reference.json")
        save_sharded(sd, sdir, 3)
        reloaded = load_model(sdir)
        with torch.no_grad():
            lg = reloaded(input_ids=torch.tensor([PROMPT]), use_cache=False).logits[0].float()
        assert torch.equal(lg, ref["logits"]), f"{arch}: sharded reload mismatch"
        del reloaded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/data/models", type=Path)
    ap.add_argument("--arch", action="append", choices=sorted(CONFIGS))
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    log: dict = {}
    for arch in args.arch or list(CONFIGS):
        generate_arch(arch, args.out, log)
        s = log[arch]["stats"]
        print(f"{arch:12s} seed={s['seed']} router_gap={min(s['prefill_router_gap'], s['decode_router_gap']):.4f} "
              f"greedy_gap={s['greedy_logit_gap']:.4f} logit_std={s['logit_std']:.3f} "
              f"kv_diff={s['kv_vs_full_max_abs_diff']:.2e} greedy={json.loads((args.out / arch / 'reference.json').read_text())['greedy']}")
        if "routing_differs_bias_no_groups" in s:
            print(f"{'':12s} prefill token-layer selections where the V3 rule (bias + group limit) differs: "
                  f"from plain top-k of the sigmoid scores {s['routing_differs_plain_topk']}/{s['routing_selections']}, "
                  f"bias without groups {s['routing_differs_bias_no_groups']}, "
                  f"groups without bias {s['routing_differs_groups_no_bias']}, "
                  f"0.0 instead of -inf for masked groups {s['routing_differs_zero_fill']}")
        elif "routing_selections" in s:
            print(f"{'':12s} prefill token-layer selections where the biased choice differs "
                  f"from plain top-k of the sigmoid scores: "
                  f"{s['routing_differs_plain_topk']}/{s['routing_selections']}")
        if args.verbose:
            for row in log[arch]["gguf"]:
                print("   ", *row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
