/* hf_config.c - reads an MoE model's shape from its config.json (see
 * hf_config.h). */
#define _POSIX_C_SOURCE 200809L
#include "hf_config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"

/* The member `key` of the root object, with null read as absent (HF writes
 * null for an unset optional value). */
static const moe_json *opt(const moe_json_doc *d, const char *key) {
    const moe_json *v = moe_json_member_get(&d->root, key);
    return v && v->type == MOE_JSON_NULL ? NULL : v;
}

/* A required integer key in lo..hi. */
static moe_status req_u32(const moe_json_doc *d, const char *key, uint32_t lo, uint32_t hi, uint32_t *out) {
    int64_t x;
    moe_status st = moe_json_get_int(d, moe_json_member_get(&d->root, key), key, lo, hi, &x);
    if (st == MOE_OK) *out = (uint32_t)x;
    return st;
}

/* An optional integer key in lo..hi; *out = def when absent or null. */
static moe_status opt_u32(const moe_json_doc *d, const char *key, uint32_t lo, uint32_t hi, uint32_t def,
                          uint32_t *out) {
    const moe_json *v = opt(d, key);
    if (!v) {
        *out = def;
        return MOE_OK;
    }
    int64_t x;
    moe_status st = moe_json_get_int(d, v, key, lo, hi, &x);
    if (st == MOE_OK) *out = (uint32_t)x;
    return st;
}

#define bad(d, line, what) moe_fail_at(MOE_ERR_PARSE, (d)->name, (line), "%s", (what))

static uint32_t line_of(const moe_json_doc *d, const char *key) {
    const moe_json *v = moe_json_member_get(&d->root, key);
    return v ? v->line : 1;
}

void moe_hf_config_derive(moe_hf_config *c) {
    const uint64_t h = c->hidden_size, H = c->n_heads, hd = c->head_dim;
    if (!c->mla) {
        c->attn_params = h * H * hd + 2 * h * c->n_kv_heads * hd + H * hd * h;
        return;
    }
    const uint64_t q = c->q_lora_rank ? h * c->q_lora_rank + (uint64_t)c->q_lora_rank * H * hd : h * H * hd;
    const uint64_t kv_a = h * (c->kv_lora_rank + c->qk_rope_head_dim);
    const uint64_t kv_b = (uint64_t)c->kv_lora_rank * H * (c->qk_nope_head_dim + c->v_head_dim);
    c->attn_params = q + kv_a + kv_b + H * c->v_head_dim * h;
}

static moe_status read_attention(const moe_json_doc *d, moe_hf_config *c) {
    moe_status st;
    if ((st = req_u32(d, "num_attention_heads", 1, MOE_HF_MAX_HEADS, &c->n_heads))) return st;
    if ((st = opt_u32(d, "num_key_value_heads", 1, c->n_heads, c->n_heads, &c->n_kv_heads))) return st;
    if (c->n_heads % c->n_kv_heads)
        return moe_fail_at(MOE_ERR_PARSE, d->name, line_of(d, "num_key_value_heads"),
                           "num_key_value_heads %u must divide num_attention_heads %u", c->n_kv_heads, c->n_heads);
    c->mla = opt(d, "kv_lora_rank") != NULL;
    if (c->mla) {
        if ((st = req_u32(d, "kv_lora_rank", 1, MOE_HF_MAX_RANK, &c->kv_lora_rank)) ||
            (st = opt_u32(d, "q_lora_rank", 1, MOE_HF_MAX_RANK, 0, &c->q_lora_rank)) ||
            (st = req_u32(d, "qk_nope_head_dim", 1, MOE_HF_MAX_HEAD_DIM, &c->qk_nope_head_dim)) ||
            (st = req_u32(d, "qk_rope_head_dim", 1, MOE_HF_MAX_HEAD_DIM, &c->qk_rope_head_dim)) ||
            (st = req_u32(d, "v_head_dim", 1, MOE_HF_MAX_HEAD_DIM, &c->v_head_dim)))
            return st;
        c->head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
        moe_hf_config_derive(c);
        return MOE_OK;
    }
    if (!opt(d, "head_dim") && c->hidden_size % c->n_heads)
        return moe_fail_at(MOE_ERR_PARSE, d->name, line_of(d, "num_attention_heads"),
                           "without head_dim, hidden_size %u must be a multiple of "
                           "num_attention_heads %u",
                           c->hidden_size, c->n_heads);
    if ((st = opt_u32(d, "head_dim", 1, MOE_HF_MAX_HEAD_DIM, c->hidden_size / c->n_heads, &c->head_dim))) return st;
    moe_hf_config_derive(c);
    return MOE_OK;
}

static moe_status read_moe_layers(const moe_json_doc *d, moe_hf_config *c) {
    moe_status st;
    uint32_t first_dense, freq, step;
    if ((st = opt_u32(d, "first_k_dense_replace", 0, c->n_layers, 0, &first_dense)) ||
        (st = opt_u32(d, "moe_layer_freq", 1, MOE_HF_MAX_LAYERS, 1, &freq)) ||
        (st = opt_u32(d, "decoder_sparse_step", 1, MOE_HF_MAX_LAYERS, 1, &step)))
        return st;
    for (uint32_t l = 0; l < c->n_layers; l++)
        c->is_moe_layer[l] = l >= first_dense && l % freq == 0 && (l + 1) % step == 0;
    const moe_json *mlp_only = opt(d, "mlp_only_layers");
    if (mlp_only && mlp_only->type != MOE_JSON_ARRAY)
        return bad(d, mlp_only->line, "\"mlp_only_layers\" must be an array of layer numbers");
    for (size_t i = 0; i < moe_json_array_len(mlp_only); i++) {
        int64_t l;
        if ((st = moe_json_get_int(d, moe_json_array_at(mlp_only, i), "mlp_only_layers[]", 0, c->n_layers - 1, &l)))
            return st;
        c->is_moe_layer[l] = false;
    }
    c->n_moe_layers = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) c->n_moe_layers += c->is_moe_layer[l];
    if (c->n_moe_layers == 0) return bad(d, 1, "no layer is an MoE layer: not an MoE model");
    return MOE_OK;
}

/* The routed-expert count under whichever of its three names is present. */
static moe_status read_experts(const moe_json_doc *d, moe_hf_config *c) {
    static const char *const names[] = {"num_local_experts", "num_experts", "n_routed_experts"};
    for (int i = 0; i < 3; i++)
        if (moe_json_member_get(&d->root, names[i]))
            return req_u32(d, names[i], 1, MOE_HF_MAX_EXPERTS, &c->n_routed_experts);
    return bad(d, 1, "missing key \"num_local_experts\", \"num_experts\" or \"n_routed_experts\"");
}

static moe_status read_shared(const moe_json_doc *d, moe_hf_config *c) {
    moe_status st;
    uint32_t sesi = 0;
    const bool have_sesi = opt(d, "shared_expert_intermediate_size") != NULL;
    if ((st = opt_u32(d, "shared_expert_intermediate_size", 0, MOE_HF_MAX_INTER, 0, &sesi)) ||
        (st = opt_u32(d, "n_shared_experts", 0, MOE_HF_MAX_SHARED, sesi > 0 ? 1 : 0, &c->n_shared_experts)))
        return st;
    c->shared_inter = have_sesi ? sesi : c->n_shared_experts * c->moe_inter;
    if ((c->n_shared_experts == 0) != (c->shared_inter == 0))
        return bad(d, line_of(d, have_sesi ? "shared_expert_intermediate_size" : "n_shared_experts"),
                   "n_shared_experts and shared_expert_intermediate_size disagree on whether there is a shared "
                   "expert");
    return MOE_OK;
}

/* A number member of `obj` (the root if NULL), or def when absent or null. */
static moe_status num_in(const moe_json_doc *d, const moe_json *obj, const char *key, double lo, double hi, double def,
                         double *out) {
    const moe_json *v = moe_json_member_get(obj ? obj : &d->root, key);
    *out = def;
    if (!v || v->type == MOE_JSON_NULL) return MOE_OK;
    if (v->type != MOE_JSON_NUMBER || !(v->number >= lo && v->number <= hi))
        return moe_fail_at(MOE_ERR_PARSE, d->name, v->line, "\"%s\" must be a number in %g..%g", key, lo, hi);
    *out = v->number;
    return MOE_OK;
}

/* A string member of the root, or def when absent or null. */
static moe_status str_opt(const moe_json_doc *d, const char *key, const char *def, char *buf, size_t cap) {
    const moe_json *v = opt(d, key);
    if (!v) {
        snprintf(buf, cap, "%s", def);
        return MOE_OK;
    }
    return moe_json_get_string(d, v, key, buf, cap);
}

/* bos_token_id / eos_token_id: an integer, a list of them (the first is
 * kept) or absent (-1). */
static moe_status token_id(const moe_json_doc *d, const char *key, int64_t *out) {
    const moe_json *v = opt(d, key);
    *out = -1;
    if (v && v->type == MOE_JSON_ARRAY) v = moe_json_array_len(v) ? moe_json_array_at(v, 0) : NULL;
    return v ? moe_json_get_int(d, v, key, 0, MOE_HF_MAX_VOCAB, out) : MOE_OK;
}

static moe_status read_rope(const moe_json_doc *d, moe_hf_config *c) {
    const moe_json *sc = opt(d, "rope_scaling");
    const moe_json *params = opt(d, "rope_parameters");
    if (!sc) sc = params;
    if (sc && sc->type != MOE_JSON_OBJECT) return bad(d, sc->line, "\"rope_scaling\" must be an object or null");
    moe_status st;
    double theta_default = 10000;
    if (params && params->type == MOE_JSON_OBJECT &&
        (st = num_in(d, params, "rope_theta", 1e-3, 1e12, theta_default, &theta_default)))
        return st;
    if ((st = num_in(d, NULL, "rope_theta", 1e-3, 1e12, theta_default, &c->rope_theta))) return st;
    double partial = 1;
    if ((params && params->type == MOE_JSON_OBJECT &&
         (st = num_in(d, params, "partial_rotary_factor", 1e-6, 1, partial, &partial))) ||
        (st = num_in(d, NULL, "partial_rotary_factor", 1e-6, 1, partial, &c->partial_rotary)))
        return st;
    snprintf(c->rope_type, sizeof c->rope_type, "default");
    if (!sc) return MOE_OK;
    const moe_json *type = moe_json_member_get(sc, "rope_type");
    if (!type || type->type == MOE_JSON_NULL) type = moe_json_member_get(sc, "type");
    if (type && type->type != MOE_JSON_NULL &&
        (st = moe_json_get_string(d, type, "rope_scaling.type", c->rope_type, sizeof c->rope_type)))
        return st;
    double orig;
    if ((st = num_in(d, sc, "factor", 1e-6, 1e6, 1, &c->rope_factor)) ||
        (st = num_in(d, sc, "original_max_position_embeddings", 1, MOE_HF_MAX_POSITION, c->max_position, &orig)) ||
        (st = num_in(d, sc, "beta_fast", 0, 1e6, 32, &c->rope_beta_fast)) ||
        (st = num_in(d, sc, "beta_slow", 0, 1e6, 1, &c->rope_beta_slow)) ||
        (st = num_in(d, sc, "mscale", 0, 1e6, 1, &c->rope_mscale)) ||
        (st = num_in(d, sc, "mscale_all_dim", 0, 1e6, 0, &c->rope_mscale_all_dim)))
        return st;
    c->rope_orig_max_position = (uint32_t)orig;
    return MOE_OK;
}

static moe_status read_flag(const moe_json_doc *d, const char *key, bool def, bool *out) {
    const moe_json *v = opt(d, key);
    if (v && v->type != MOE_JSON_BOOL) return moe_fail_at(MOE_ERR_PARSE, d->name, v->line, "\"%s\" must be true or false", key);
    *out = v ? v->boolean : def;
    return MOE_OK;
}

/* Expert groups (topk_method "noaux_tc"): n_group equal groups of
 * consecutive experts, topk_group of them kept per token. */
static moe_status read_groups(const moe_json_doc *d, moe_hf_config *c) {
    moe_status st;
    if ((st = opt_u32(d, "n_group", 1, MOE_HF_MAX_GROUPS, 1, &c->n_group)) ||
        (st = opt_u32(d, "topk_group", 1, c->n_group, 1, &c->topk_group)))
        return st;
    char why[160];
    const char *key = moe_hf_config_groups_misfit(c, why, sizeof why);
    return key ? moe_fail_at(MOE_ERR_PARSE, d->name, line_of(d, key), "%s", why) : MOE_OK;
}

const char *moe_hf_config_groups_misfit(const moe_hf_config *c, char *why, size_t cap) {
    const uint32_t E = c->n_routed_experts, G = c->n_group;
    if (G <= 1) return NULL;
    if (E % G || E / G < 2) {
        snprintf(why, cap, "n_group %u must divide the %u routed experts into groups of at least 2", G, E);
        return "n_group";
    }
    if (c->top_k > c->topk_group * (E / G)) {
        snprintf(why, cap, "num_experts_per_tok %u is more than the %u experts of topk_group %u groups", c->top_k,
                 c->topk_group * (E / G), c->topk_group);
        return "topk_group";
    }
    return NULL;
}

/* Sliding-window attention, as transformers decides it per model type:
 * Qwen2/Qwen3-MoE only with use_sliding_window (its default false),
 * Mixtral whenever sliding_window is set, OLMoE never (its mask is plain
 * causal); which layers: layer_types when given, else Qwen2-MoE's rule
 * (even layers below max_window_layers) or every layer. */
static moe_status read_sliding(const moe_json_doc *d, moe_hf_config *c) {
    const bool qwen = !strcmp(c->model_type, "qwen2_moe") || !strcmp(c->model_type, "qwen3_moe");
    bool use = false;
    uint32_t window, max_window_layers;
    moe_status st;
    if ((st = read_flag(d, "use_sliding_window", !qwen, &use)) ||
        (st = opt_u32(d, "sliding_window", 0, MOE_HF_MAX_POSITION, 0, &window)) ||
        (st = opt_u32(d, "max_window_layers", 0, MOE_HF_MAX_LAYERS, 28, &max_window_layers)))
        return st;
    c->sliding_window = use && strcmp(c->model_type, "olmoe") ? window : 0;
    const moe_json *types = opt(d, "layer_types");
    if (types && (types->type != MOE_JSON_ARRAY || moe_json_array_len(types) != c->n_layers))
        return moe_fail_at(MOE_ERR_PARSE, d->name, types->line, "\"layer_types\" must be an array of %u layer types",
                           c->n_layers);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const moe_json *t = types ? moe_json_array_at(types, l) : NULL;
        if (t) {
            const bool sw = t->type == MOE_JSON_STRING && !strcmp(t->u.str, "sliding_attention");
            if (!sw && (t->type != MOE_JSON_STRING || strcmp(t->u.str, "full_attention")))
                return moe_fail_at(MOE_ERR_UNSUPPORTED, d->name, t->line, "layer_types[%u]: %s%.40s%s is not supported "
                                   "(supported: \"full_attention\", \"sliding_attention\")", l,
                                   t->type == MOE_JSON_STRING ? "\"" : "", t->type == MOE_JSON_STRING ? t->u.str : "a value",
                                   t->type == MOE_JSON_STRING ? "\"" : "");
            c->is_sliding_layer[l] = sw && c->sliding_window;
        } else {
            c->is_sliding_layer[l] = c->sliding_window &&
                                     (strcmp(c->model_type, "qwen2_moe") || ((l + 1) % 2 && l < max_window_layers));
        }
    }
    return MOE_OK;
}

static moe_status read_numerics(const moe_json_doc *d, moe_hf_config *c) {
    moe_status st;
    const moe_json *tie = opt(d, "tie_word_embeddings"), *norm = opt(d, "norm_topk_prob");
    if (tie && tie->type != MOE_JSON_BOOL) return bad(d, tie->line, "\"tie_word_embeddings\" must be true or false");
    if (norm && norm->type != MOE_JSON_BOOL) return bad(d, norm->line, "\"norm_topk_prob\" must be true or false");
    c->tie_embeddings = tie && tie->boolean;
    c->norm_topk_prob = !strcmp(c->model_type, "mixtral") || (norm && norm->boolean);
    /* transformers' DeepseekV3Config and Glm4MoeConfig write neither key:
     * their models always score with sigmoid and select by noaux_tc */
    const bool v3 = !strcmp(c->model_type, "deepseek_v3") || !strcmp(c->model_type, "kimi_k2") ||
                    !strcmp(c->model_type, "glm4_moe");
    double eps, scaling;
    if ((st = num_in(d, NULL, "rms_norm_eps", 1e-30, 1, 1e-6, &eps)) ||
        (st = num_in(d, NULL, "routed_scaling_factor", 1e-6, 1e6, 1, &scaling)) ||
        (st = opt_u32(d, "max_position_embeddings", 1, MOE_HF_MAX_POSITION, 4096, &c->max_position)) ||
        (st = str_opt(d, "hidden_act", "silu", c->hidden_act, sizeof c->hidden_act)) ||
        (st = str_opt(d, "scoring_func", v3 ? "sigmoid" : "softmax", c->scoring_func, sizeof c->scoring_func)) ||
        (st = str_opt(d, "topk_method", v3 ? "noaux_tc" : "greedy", c->topk_method, sizeof c->topk_method)) ||
        (st = token_id(d, "bos_token_id", &c->bos_id)) || (st = token_id(d, "eos_token_id", &c->eos_id)))
        return st;
    c->rms_norm_eps = eps;
    c->routed_scaling = scaling;
    if ((st = read_flag(d, "rope_interleave", true, &c->rope_interleave)) ||
        (st = read_flag(d, "attention_bias", false, &c->attention_bias)) ||
        (st = read_flag(d, "use_qk_norm", false, &c->use_qk_norm)) ||
        (st = opt_u32(d, "num_nextn_predict_layers", 0, MOE_HF_MAX_LAYERS, 0, &c->n_mtp_layers)) ||
        (st = read_groups(d, c)))
        return st;
    if ((st = read_sliding(d, c))) return st;
    return read_rope(d, c);
}

/* quantization_config: the FP8 checkpoints' block-scaled e4m3 only. */
static moe_status read_quant(const moe_json_doc *d, moe_hf_config *c) {
    const moe_json *q = opt(d, "quantization_config");
    if (!q) return MOE_OK;
    if (q->type != MOE_JSON_OBJECT) return bad(d, q->line, "\"quantization_config\" must be an object");
    const moe_json *method = moe_json_member_get(q, "quant_method"), *fmt = moe_json_member_get(q, "fmt"),
                   *bs = moe_json_member_get(q, "weight_block_size");
    if (!method || method->type != MOE_JSON_STRING || strcmp(method->u.str, "fp8"))
        return moe_fail_at(MOE_ERR_UNSUPPORTED, d->name, method ? method->line : q->line,
                           "quantization_config: quant_method %s%.32s%s is not supported (supported: \"fp8\", "
                           "e4m3 with 128 x 128 blocks; GGUF files carry their own formats)",
                           method && method->type == MOE_JSON_STRING ? "\"" : "",
                           method && method->type == MOE_JSON_STRING ? method->u.str : "(none)",
                           method && method->type == MOE_JSON_STRING ? "\"" : "");
    if (fmt && fmt->type != MOE_JSON_NULL && (fmt->type != MOE_JSON_STRING || strcmp(fmt->u.str, "e4m3")))
        return moe_fail_at(MOE_ERR_UNSUPPORTED, d->name, fmt->line,
                           "quantization_config: fmt must be \"e4m3\" (the only FP8 format supported)");
    if (!bs || bs->type != MOE_JSON_ARRAY || bs->len != 2 || bs->u.items[0].type != MOE_JSON_NUMBER ||
        bs->u.items[1].type != MOE_JSON_NUMBER || bs->u.items[0].number != 128 || bs->u.items[1].number != 128)
        return moe_fail_at(MOE_ERR_UNSUPPORTED, d->name, bs ? bs->line : q->line,
                           "quantization_config: weight_block_size must be [128, 128] (per-tensor and per-channel "
                           "FP8 scales are not supported)");
    c->fp8 = true;
    return MOE_OK;
}

static moe_status read_config(const moe_json_doc *d, moe_hf_config *c) {
    moe_status st;
    if (d->root.type != MOE_JSON_OBJECT) return bad(d, d->root.line, "expected a JSON object at the top level");
    if ((st = moe_json_get_string(d, moe_json_member_get(&d->root, "model_type"), "model_type", c->model_type,
                                  sizeof c->model_type)))
        return st;
    if (!c->model_type[0]) return bad(d, line_of(d, "model_type"), "\"model_type\" must not be empty");
    const char *dtype_key = opt(d, "torch_dtype") ? "torch_dtype" : "dtype";
    if (opt(d, dtype_key) &&
        (st = moe_json_get_string(d, opt(d, dtype_key), dtype_key, c->torch_dtype, sizeof c->torch_dtype)))
        return st;
    if ((st = req_u32(d, "hidden_size", 1, MOE_HF_MAX_HIDDEN, &c->hidden_size)) ||
        (st = req_u32(d, "num_hidden_layers", 1, MOE_HF_MAX_LAYERS, &c->n_layers)) ||
        (st = req_u32(d, "vocab_size", 1, MOE_HF_MAX_VOCAB, &c->vocab_size)) ||
        (st = req_u32(d, "intermediate_size", 1, MOE_HF_MAX_INTER, &c->dense_inter)) ||
        (st = opt_u32(d, "moe_intermediate_size", 1, MOE_HF_MAX_INTER, c->dense_inter, &c->moe_inter)) ||
        (st = read_experts(d, c)) ||
        (st = req_u32(d, "num_experts_per_tok", 1, c->n_routed_experts, &c->top_k)) ||
        (st = read_shared(d, c)) || (st = read_attention(d, c)) || (st = read_moe_layers(d, c)) ||
        (st = read_numerics(d, c)) || (st = read_quant(d, c)))
        return st;
    return MOE_OK;
}

moe_status moe_hf_config_parse(moe_hf_config *c, const char *text, size_t len, const char *name) {
    if (!c || (!text && len)) return moe_fail(MOE_ERR_INVALID_ARG, "hf_config: NULL argument");
    memset(c, 0, sizeof *c);
    moe_json_doc d;
    moe_status st = moe_json_parse(&d, text, len, name ? name : "config.json");
    if (st) return st;
    st = read_config(&d, c);
    moe_json_free(&d);
    if (st) memset(c, 0, sizeof *c); /* never half a config */
    return st;
}

moe_status moe_hf_config_load(moe_hf_config *c, const char *path) {
    if (!c || !path) return moe_fail(MOE_ERR_INVALID_ARG, "hf_config: NULL argument");
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "rb");
    if (!f) return moe_fail(MOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    /* One byte more than the JSON limit is enough to know the file is too
     * large, without trusting a size the file may not have (a pipe). */
    const size_t cap = (size_t)MOE_JSON_MAX_BYTES + 1;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    const size_t n = fread(buf, 1, cap, f);
    const bool err = ferror(f) != 0;
    fclose(f);
    moe_status st = err ? moe_fail(MOE_ERR_IO, "%s: read error", path) : moe_hf_config_parse(c, buf, n, path);
    free(buf);
    return st;
}

double moe_hf_config_dense_experts(const moe_hf_config *c) {
    if (!c || !c->n_moe_layers || !c->moe_inter) return 0;
    const double h3 = 3.0 * c->hidden_size;
    const double dense = (double)c->n_layers * (double)c->attn_params +
                         c->n_moe_layers * h3 * c->shared_inter +
                         (double)(c->n_layers - c->n_moe_layers) * h3 * c->dense_inter;
    return dense / (c->n_moe_layers * h3 * c->moe_inter);
}

moe_status moe_hf_config_check_routing(const moe_hf_config *c, uint32_t n_layers, uint32_t n_experts, uint32_t top_k,
                                       const char *what) {
    if (!c) return moe_fail(MOE_ERR_INVALID_ARG, "hf_config: NULL argument");
    if (n_layers != c->n_moe_layers || n_experts != c->n_routed_experts || top_k != c->top_k)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "%s routes %u layers x %u experts, top-%u, but the model (%s) has %u MoE layers x %u "
                        "experts, top-%u",
                        what ? what : "the routing", n_layers, n_experts, top_k, c->model_type, c->n_moe_layers,
                        c->n_routed_experts, c->top_k);
    return MOE_OK;
}
