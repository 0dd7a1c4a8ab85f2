"""moerun.patch on tiny random transformers models of every supported
architecture, on the CPU: logits and greedy tokens as unpatched, stats
populated, unpatch restores, unknown layouts refused with the class named.

Run: MOERUN_LIB=build/release/libmoerun.so python -m pytest python/tests
(needs torch and transformers 5; ctest runs it as python_plugin where a
virtual environment with them exists, docs/plugin.md)."""
import pathlib

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import moerun  # noqa: E402

PROFILES = pathlib.Path(__file__).resolve().parents[2] / "profiles" / "machines"

COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=False, bos_token_id=None,
              eos_token_id=None, pad_token_id=None)


def configs():
    t = transformers
    return {
        "mixtral": t.MixtralConfig(**COMMON, intermediate_size=96, num_local_experts=8, num_experts_per_tok=2),
        "qwen2_moe": t.Qwen2MoeConfig(**COMMON, intermediate_size=128, moe_intermediate_size=48,
                                      shared_expert_intermediate_size=96, num_experts=8, num_experts_per_tok=2,
                                      norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[]),
        "qwen3_moe": t.Qwen3MoeConfig(**COMMON, intermediate_size=128, moe_intermediate_size=48, num_experts=8,
                                      num_experts_per_tok=2, norm_topk_prob=True, head_dim=16, decoder_sparse_step=1,
                                      mlp_only_layers=[]),
        "olmoe": t.OlmoeConfig(**{**COMMON, "num_key_value_heads": 4}, intermediate_size=48, num_experts=8,
                               num_experts_per_tok=2),
        "deepseek_v2": t.DeepseekV2Config(**{**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4},
                                          intermediate_size=128, moe_intermediate_size=48, n_routed_experts=8,
                                          n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
                                          kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16,
                                          v_head_dim=16, topk_method="greedy", n_group=1, topk_group=1,
                                          routed_scaling_factor=1.0),
        "deepseek_v3": t.DeepseekV3Config(**{**COMMON, "num_hidden_layers": 3, "num_key_value_heads": 4},
                                          intermediate_size=128, moe_intermediate_size=48, n_routed_experts=8,
                                          n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
                                          kv_lora_rank=32, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16,
                                          v_head_dim=16, n_group=4, topk_group=2, norm_topk_prob=True,
                                          routed_scaling_factor=2.5),
        "glm4_moe": t.Glm4MoeConfig(**{**COMMON, "num_hidden_layers": 3}, head_dim=32, intermediate_size=128,
                                    moe_intermediate_size=48, n_routed_experts=8, n_shared_experts=1,
                                    num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1,
                                    norm_topk_prob=True, routed_scaling_factor=2.5, attention_bias=True,
                                    use_qk_norm=True),
    }


def tiny(arch, dtype=torch.float32):
    torch.manual_seed(7)
    cfg = configs()[arch]
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=dtype)
    return model.eval()


PROMPT = torch.tensor([[1, 35, 100, 17, 98, 4, 120, 61]])


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3",
                                  "glm4_moe"])
def test_patched_matches_unpatched(arch):
    model = tiny(arch)
    with torch.no_grad():
        want = model(PROMPT).logits
        want_tokens = model.generate(PROMPT, max_new_tokens=8, do_sample=False)
        moerun.patch(model, device="cpu", threads=2)
        assert moerun.is_patched(model)
        got = model(PROMPT).logits
        got_tokens = model.generate(PROMPT, max_new_tokens=8, do_sample=False)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, scale), arch
    assert torch.equal(got_tokens, want_tokens), arch
    s = moerun.stats(model)
    n_moe = sum(type(m).__name__ in moerun.KNOWN_EXPERTS for m in model.modules())
    assert n_moe == 0  # replaced by moerun's
    assert s["layer_calls"] > 0 and s["expert_calls_cpu"] > 0 and s["tokens"] > 0
    assert s["device"] == "cpu" and s["policy"] == "static-cpu"
    moerun.unpatch(model)
    assert not moerun.is_patched(model)
    with torch.no_grad():
        again = model(PROMPT).logits
    assert torch.equal(again, want)  # the original modules are back
    assert sum(type(m).__name__ in moerun.KNOWN_EXPERTS for m in model.modules()) >= 1


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3",
                                  "glm4_moe"])
def test_bfloat16_within_tolerance(arch):
    model = tiny(arch, torch.bfloat16)
    with torch.no_grad():
        want = model(PROMPT).logits.float()
        moerun.patch(model, device="cpu", threads=2)
        got = model(PROMPT).logits.float()
    moerun.unpatch(model)
    nmse = ((got - want) ** 2).sum() / (want ** 2).sum()
    assert nmse.item() < 1e-3, (arch, nmse.item())


def test_simulated_gpu_splits_and_keeps_results():
    model = tiny("mixtral")
    with torch.no_grad():
        want = model(PROMPT).logits
        moerun.patch(model, device="sim", gpu_budget="50%", any_host=True,
                     profile=str(PROFILES / "ref-h100-pcie5-2s-xeon8480.txt"))
        got = model(PROMPT).logits
        for _ in range(3):
            model(PROMPT[:, :2])
    s = moerun.stats(model)
    moerun.unpatch(model)
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    assert s["device"] == "sim" and s["expert_calls_gpu"] > 0 and s["bytes_copied"] > 0
    assert s["lookahead_pairs"][0] > 0  # the routers were registered: moerun predicted the next layer


def test_deepseek_v3_routing_rule_predicts_its_routing():
    """The binding registers DeepSeek-V3's rule (sigmoid, bias, groups): on the simulated GPU with router
    lookahead, results stay exact and moerun's predictions of the next layer's experts are made."""
    model = tiny("deepseek_v3")
    with torch.no_grad():
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None and hasattr(gate, "e_score_correction_bias"):
                gate.e_score_correction_bias.copy_(torch.linspace(-0.3, 0.3, gate.e_score_correction_bias.numel()))
        want = model(PROMPT).logits
        moerun.patch(model, device="sim", gpu_budget="50%", any_host=True,
                     profile=str(PROFILES / "ref-h100-pcie5-2s-xeon8480.txt"))
        got = model(PROMPT).logits
    s = moerun.stats(model)
    moerun.unpatch(model)
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
    assert s["lookahead_pairs"][0] > 0


def test_refusals():
    model = tiny("olmoe")
    moerun.patch(model, device="cpu")
    with pytest.raises(moerun.MoerunError, match="already patched"):
        moerun.patch(model)
    moerun.unpatch(model)
    with pytest.raises(moerun.MoerunError, match="not patched"):
        moerun.unpatch(model)
    with pytest.raises(moerun.MoerunError, match="device"):
        moerun.patch(model, device="tpu")

    class WeirdExperts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2, 2))

    class WeirdSparseMoeBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = WeirdExperts()

    with pytest.raises(moerun.MoerunError, match="WeirdSparseMoeBlock.*WeirdExperts"):
        moerun.patch(torch.nn.Sequential(WeirdSparseMoeBlock()))
    with pytest.raises(moerun.MoerunError, match="no sparse-MoE block"):
        moerun.patch(torch.nn.Linear(2, 2))
    assert not moerun.is_patched(model)
