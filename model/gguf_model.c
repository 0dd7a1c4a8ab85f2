/* gguf_model.c - GGUF metadata and tensor names in Hugging Face terms (see
 * gguf_model.h). */
#define _POSIX_C_SOURCE 200809L
#include "gguf_model.h"

#include <stdio.h>
#include <string.h>

#include "common.h"

static const struct {
    const char *gguf, *hf;
} archs[] = {
    {"llama", "mixtral"}, {"qwen2moe", "qwen2_moe"}, {"qwen3moe", "qwen3_moe"},
    {"olmoe", "olmoe"},   {"deepseek2", "deepseek_v2"}, {"glm4moe", "glm4_moe"},
};

/* Reading <arch>.<key>: required, or optional with a default. */
typedef struct reader {
    const moe_gguf *g;
    const char *arch;
    moe_status st;
} reader;

static const char *key_of(const reader *r, const char *key, char *buf, size_t cap) {
    snprintf(buf, cap, "%s.%s", r->arch, key);
    return buf;
}

static uint32_t u32(reader *r, const char *key, bool required, uint32_t def) {
    char k[128];
    if (r->st) return def;
    if (!required && !moe_gguf_get(r->g, key_of(r, key, k, sizeof k))) return def;
    uint32_t v = def;
    r->st = moe_gguf_get_u32(r->g, key_of(r, key, k, sizeof k), &v);
    return v;
}

static double f32(reader *r, const char *key, double def) {
    char k[128];
    float v = (float)def;
    if (r->st || !moe_gguf_get(r->g, key_of(r, key, k, sizeof k))) return def;
    r->st = moe_gguf_get_f32(r->g, k, &v);
    return v;
}

static bool flag(reader *r, const char *key, bool def) {
    char k[128];
    bool v = def;
    if (r->st || !moe_gguf_get(r->g, key_of(r, key, k, sizeof k))) return def;
    r->st = moe_gguf_get_bool(r->g, k, &v);
    return v;
}

static int64_t token(const moe_gguf *g, const char *key) {
    uint32_t v;
    return moe_gguf_get(g, key) && moe_gguf_get_u32(g, key, &v) == MOE_OK ? (int64_t)v : -1;
}

static void read_mla(reader *r, moe_hf_config *c) {
    c->kv_lora_rank = u32(r, "attention.kv_lora_rank", true, 0);
    c->qk_rope_head_dim = u32(r, "rope.dimension_count", true, 0);
    c->q_lora_rank = u32(r, "attention.q_lora_rank", false, 0);
    /* Since llama.cpp split kv_b into k_b and v_b, key_length is the
     * latent's and key_length_mla the head's. */
    const bool split = moe_gguf_get(r->g, "deepseek2.attention.key_length_mla") != NULL;
    const uint32_t qk = u32(r, split ? "attention.key_length_mla" : "attention.key_length", true, 0);
    c->v_head_dim = u32(r, split ? "attention.value_length_mla" : "attention.value_length", true, 0);
    c->n_kv_heads = c->n_heads;
    if (!r->st && qk <= c->qk_rope_head_dim)
        r->st = moe_fail(MOE_ERR_PARSE, "%s: key length %u is not over the rotary dimensions %u", r->g->file.path, qk,
                         c->qk_rope_head_dim);
    c->qk_nope_head_dim = qk - c->qk_rope_head_dim;
    c->head_dim = qk;
    c->mla = true;
}

static void read_rope(reader *r, moe_hf_config *c) {
    char k[128];
    c->rope_theta = f32(r, "rope.freq_base", 10000);
    snprintf(c->rope_type, sizeof c->rope_type, "default");
    moe_gguf_str type = {0};
    if (r->st || !moe_gguf_get(r->g, key_of(r, "rope.scaling.type", k, sizeof k))) return;
    if ((r->st = moe_gguf_get_str(r->g, k, &type))) return;
    snprintf(c->rope_type, sizeof c->rope_type, "%.*s", (int)(type.len < 15 ? type.len : 15), type.ptr);
    if (moe_gguf_str_eq(type, "none")) snprintf(c->rope_type, sizeof c->rope_type, "default");
    c->rope_factor = f32(r, "rope.scaling.factor", 1);
    c->rope_orig_max_position = u32(r, "rope.scaling.original_context_length", false, c->max_position);
    c->rope_beta_fast = f32(r, "rope.scaling.yarn_beta_fast", 32);
    c->rope_beta_slow = f32(r, "rope.scaling.yarn_beta_slow", 1);
    /* The converter keeps 0.1 * mscale_all_dim; DeepSeek's mscale equals it. */
    c->rope_mscale = c->rope_mscale_all_dim = f32(r, "rope.scaling.yarn_log_multiplier", 0) / 0.1;
    if (c->rope_mscale == 0) c->rope_mscale = 1;
}

static void read_layers(reader *r, moe_hf_config *c) {
    const uint32_t dense = u32(r, "leading_dense_block_count", false, 0);
    c->n_moe_layers = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) c->n_moe_layers += c->is_moe_layer[l] = l >= dense;
    if (!r->st && !c->n_moe_layers)
        r->st = moe_fail(MOE_ERR_PARSE, "%s: no layer is an MoE layer: not an MoE model", r->g->file.path);
}

static void read_shared(reader *r, moe_hf_config *c, bool deepseek) {
    if (deepseek) {
        c->n_shared_experts = u32(r, "expert_shared_count", false, 0);
        c->shared_inter = c->n_shared_experts * c->moe_inter;
    } else {
        c->shared_inter = u32(r, "expert_shared_feed_forward_length", false, 0);
        c->n_shared_experts = c->shared_inter > 0;
    }
}

static moe_status read_all(reader *r, moe_hf_config *c, uint64_t vocab) {
    const bool mixtral = !strcmp(c->model_type, "mixtral"), glm = !strcmp(c->model_type, "glm4_moe");
    const bool v3 = !strcmp(c->model_type, "deepseek_v3"), deepseek = v3 || !strcmp(c->model_type, "deepseek_v2");
    /* Mixtral's and OLMoE's feed_forward_length is their experts'. */
    const bool ffl_is_expert = mixtral || !strcmp(c->model_type, "olmoe");
    c->n_layers = u32(r, "block_count", true, 0);
    /* GLM's converter counts its multi-token-prediction layers as blocks
     * (and writes them, blk.N.nextn.*): the model's own are the first
     * block_count - nextn_predict_layers */
    c->n_mtp_layers = u32(r, "nextn_predict_layers", false, 0);
    if (!r->st && c->n_mtp_layers && (!glm || c->n_mtp_layers >= c->n_layers))
        r->st = moe_fail(MOE_ERR_PARSE, "%s: nextn_predict_layers %u %s", r->g->file.path, c->n_mtp_layers,
                         glm ? "leaves no layer of the model" : "is read for glm4moe only");
    if (!r->st) c->n_layers -= c->n_mtp_layers;
    c->hidden_size = u32(r, "embedding_length", true, 0);
    c->dense_inter = u32(r, "feed_forward_length", true, 0);
    c->moe_inter = u32(r, "expert_feed_forward_length", !ffl_is_expert, c->dense_inter);
    c->n_routed_experts = u32(r, "expert_count", true, 0);
    c->top_k = u32(r, "expert_used_count", true, 0);
    c->n_heads = u32(r, "attention.head_count", true, 0);
    c->max_position = u32(r, "context_length", true, 0);
    c->rms_norm_eps = f32(r, "attention.layer_norm_rms_epsilon", 1e-6);
    c->routed_scaling = f32(r, "expert_weights_scale", 1);
    /* llama.cpp renormalises Mixtral's and Qwen3's top-k always. */
    c->norm_topk_prob = flag(r, "expert_weights_norm", mixtral || !strcmp(c->model_type, "qwen3_moe"));
    const uint32_t gating = u32(r, "expert_gating_func", false, 1);
    snprintf(c->scoring_func, sizeof c->scoring_func, "%s", gating == 1 ? "softmax" : "sigmoid");
    snprintf(c->topk_method, sizeof c->topk_method, "%s", v3 || glm ? "noaux_tc" : "greedy");
    snprintf(c->hidden_act, sizeof c->hidden_act, "silu");
    /* DeepSeek-V3's expert groups (llama.cpp's converter writes them for
     * any model with n_group); checked as config.json's are */
    c->n_group = u32(r, "expert_group_count", false, 1);
    c->topk_group = u32(r, "expert_group_used_count", false, 1);
    c->rope_interleave = true;
    c->partial_rotary = 1;
    char why[160];
    if (!r->st && c->n_group > 1 && (c->n_group > MOE_HF_MAX_GROUPS || c->topk_group < 1 || c->topk_group > c->n_group))
        r->st = moe_fail(MOE_ERR_PARSE, "%s: expert_group_count %u or expert_group_used_count %u is out of range (at "
                         "most %u groups, 1..count used)", r->g->file.path, c->n_group, c->topk_group, MOE_HF_MAX_GROUPS);
    else if (!r->st && moe_hf_config_groups_misfit(c, why, sizeof why))
        r->st = moe_fail(MOE_ERR_PARSE, "%s: %s", r->g->file.path, why);
    if (deepseek) {
        read_mla(r, c);
    } else {
        c->n_kv_heads = u32(r, "attention.head_count_kv", false, c->n_heads);
        c->head_dim = u32(r, "attention.key_length", false, c->n_heads ? c->hidden_size / c->n_heads : 0);
    }
    read_shared(r, c, deepseek || glm);
    read_rope(r, c);
    if (glm) { /* what the tensors say: q/k biases and norms, and the rotated share of a head */
        c->attention_bias = moe_gguf_find(r->g, "blk.0.attn_q.bias") != NULL;
        c->use_qk_norm = moe_gguf_find(r->g, "blk.0.attn_q_norm.weight") != NULL;
        const uint32_t rot = u32(r, "rope.dimension_count", false, c->head_dim);
        if (!r->st && (!rot || rot > c->head_dim))
            r->st = moe_fail(MOE_ERR_PARSE, "%s: rope.dimension_count %u is not in 1..%u (key_length)", r->g->file.path,
                             rot, c->head_dim);
        c->partial_rotary = c->head_dim ? (double)rot / c->head_dim : 1;
    }
    if (r->st) return r->st;
    if (!c->n_layers || c->n_layers > MOE_HF_MAX_LAYERS || !c->hidden_size || !c->n_heads || !c->n_kv_heads ||
        c->n_heads % c->n_kv_heads || !c->head_dim || !c->n_routed_experts || !c->top_k ||
        c->top_k > c->n_routed_experts || !c->moe_inter || !vocab || vocab > MOE_HF_MAX_VOCAB)
        return moe_fail(MOE_ERR_PARSE, "%s: %s metadata out of range (layers %u, width %u, heads %u/%u, experts %u "
                        "top-%u, vocabulary %llu)", r->g->file.path, r->arch, c->n_layers, c->hidden_size, c->n_heads,
                        c->n_kv_heads, c->n_routed_experts, c->top_k, (unsigned long long)vocab);
    c->vocab_size = (uint32_t)vocab;
    read_layers(r, c);
    c->tie_embeddings = !moe_gguf_find(r->g, "output.weight");
    c->bos_id = token(r->g, "tokenizer.ggml.bos_token_id");
    c->eos_id = token(r->g, "tokenizer.ggml.eos_token_id");
    moe_hf_config_derive(c);
    return r->st;
}

moe_status moe_gguf_model_config(const moe_gguf *g, moe_hf_config *c) {
    memset(c, 0, sizeof *c);
    moe_gguf_str arch;
    moe_status st = moe_gguf_get_str(g, "general.architecture", &arch);
    if (st) return st;
    size_t i = 0;
    while (i < sizeof archs / sizeof archs[0] && !moe_gguf_str_eq(arch, archs[i].gguf)) i++;
    if (i == sizeof archs / sizeof archs[0])
        return moe_fail(MOE_ERR_UNSUPPORTED, "%s: architecture \"%.*s\" is not supported (supported: llama with "
                        "experts, qwen2moe, qwen3moe, olmoe, deepseek2, glm4moe)", g->file.path, (int)(arch.len < 64 ? arch.len : 64),
                        arch.ptr);
    snprintf(c->model_type, sizeof c->model_type, "%s", archs[i].hf);
    /* llama.cpp runs DeepSeek-V3 as deepseek2 with sigmoid gating (its
     * expert_gating_func 2) and the selection bias exp_probs_b */
    uint32_t gating = 0;
    if (!strcmp(archs[i].hf, "deepseek_v2") && moe_gguf_get(g, "deepseek2.expert_gating_func") &&
        moe_gguf_get_u32(g, "deepseek2.expert_gating_func", &gating) == MOE_OK && gating == 2)
        snprintf(c->model_type, sizeof c->model_type, "deepseek_v3");
    const moe_gguf_kv *ftype = moe_gguf_get(g, "general.file_type");
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "gguf-%llu", ftype ? (unsigned long long)ftype->v.u : 0ull);
    reader r = {g, archs[i].gguf, MOE_OK};
    if (!strcmp(r.arch, "llama") && !moe_gguf_get(g, "llama.expert_count"))
        return moe_fail(MOE_ERR_UNSUPPORTED, "%s: a llama model without experts is not an MoE model", g->file.path);
    const moe_tensor *embd = moe_gguf_find(g, "token_embd.weight");
    st = read_all(&r, c, embd && embd->n_dims == 2 ? embd->shape[0] : 0);
    if (st) memset(c, 0, sizeof *c);
    return st;
}

/* transformers' layer tensor names and llama.cpp's. */
static const struct {
    const char *hf, *gguf;
} layer_names[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"self_attn.q_a_proj.weight", "attn_q_a.weight"},
    {"self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"},
    {"self_attn.q_b_proj.weight", "attn_q_b.weight"},
    {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"},
    {"self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"},
    {"self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"},
    {"self_attn.kv_b_proj.weight", "attn_kv_b.weight"},
    {"mlp.gate.weight", "ffn_gate_inp.weight"},
    {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"},
    {"mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight"},
    {"mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight"},
    {"mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"},
    {"mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"},
    {"mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"},
    {"mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"},
};

bool moe_gguf_model_name(const char *hf, char *out, size_t cap) {
    static const struct {
        const char *hf, *gguf;
    } top[] = {{"model.embed_tokens.weight", "token_embd.weight"},
               {"model.norm.weight", "output_norm.weight"},
               {"lm_head.weight", "output.weight"}};
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (!strcmp(hf, top[i].hf)) return (size_t)snprintf(out, cap, "%s", top[i].gguf) < cap;
    unsigned layer;
    int at = 0;
    if (sscanf(hf, "model.layers.%u.%n", &layer, &at) != 1 || !at) return false;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (!strcmp(hf + at, layer_names[i].hf))
            return (size_t)snprintf(out, cap, "blk.%u.%s", layer, layer_names[i].gguf) < cap;
    return false;
}
