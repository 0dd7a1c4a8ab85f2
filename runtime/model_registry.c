/* model_registry.c - expert registration (see moerun.h). */
#include "model_registry.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

bool moe_model_valid(const moe_model_t *m) { return m && m->magic == MOE_MAGIC_MODEL; }

moe_layer_desc moe_layer_desc_init(uint32_t n_experts, uint32_t hidden, uint32_t inter,
                                   moe_dtype weight_dtype) {
    return (moe_layer_desc){.struct_size = sizeof(moe_layer_desc), .n_experts = n_experts,
                            .hidden = hidden, .inter = inter, .weight_dtype = weight_dtype};
}

moe_status moe_model_create(moe_model_t **out, uint32_t n_layers) {
    if (!out) return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_create: out is NULL");
    *out = NULL;
    if (n_layers == 0 || n_layers > MOE_MAX_LAYERS)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_create: n_layers = %u, must be in 1..%u",
                        n_layers, MOE_MAX_LAYERS);
    moe_model_t *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc(n_layers, sizeof *m->layers))) {
        free(m);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_model_create: allocation failed");
    }
    m->magic = MOE_MAGIC_MODEL;
    atomic_init(&m->refs, 1u);
    m->n_layers = n_layers;
    *out = m;
    return MOE_OK;
}

/* A block format's rows must be whole blocks: `what`'s rows of n elements. */
static moe_status whole_blocks(const char *fn, uint32_t layer, moe_dtype t, uint32_t n, const char *what) {
    if (moe_dtype_row_bytes(t, n)) return MOE_OK;
    return moe_fail(MOE_ERR_INVALID_ARG, "%s: layer %u: %s rows of %u elements are not whole %zu-element blocks "
                    "of %s", fn, layer, what, n, moe_dtype_block(t), moe_dtype_name(t));
}

#define CHECK_MODEL(fn, m)                                                                    \
    do {                                                                                      \
        if (!moe_model_valid(m)) return moe_fail(MOE_ERR_INVALID_ARG, fn ": not a model handle"); \
    } while (0)

moe_status moe_model_set_layer(moe_model_t *m, uint32_t layer, const moe_layer_desc *d) {
    CHECK_MODEL("moe_model_set_layer", m);
    if (!d) return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_layer: desc is NULL");
    if (layer >= m->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_layer: layer %u out of range (model has %u)",
                        layer, m->n_layers);
    if (d->struct_size < sizeof(moe_layer_desc))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_layer: desc.struct_size = %u, at least %zu expected; "
                        "initialise it with moe_layer_desc_init()", d->struct_size, sizeof(moe_layer_desc));
    if (m->layers[layer].described)
        return moe_fail(MOE_ERR_STATE, "moe_model_set_layer: layer %u is already described", layer);
    if (d->n_experts == 0 || d->n_experts > MOE_MAX_EXPERTS)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_layer: layer %u: n_experts = %u, must be in 1..%u",
                        layer, d->n_experts, MOE_MAX_EXPERTS);
    if (d->hidden == 0 || d->inter == 0 || d->hidden > MOE_MAX_DIM || d->inter > MOE_MAX_DIM)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_layer: layer %u: shape %ux%u, each must be in 1..%u",
                        layer, d->hidden, d->inter, MOE_MAX_DIM);
    if (moe_dtype_size(d->weight_dtype) == 0 && !moe_dtype_is_block(d->weight_dtype))
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_model_set_layer: layer %u: weight dtype %d is not supported",
                        layer, (int)d->weight_dtype);
    /* Down's rows are checked when the model is complete: they may take a
     * dtype of their own (moe_model_set_down_dtype). */
    moe_status st = whole_blocks("moe_model_set_layer", layer, d->weight_dtype, d->hidden, "gate and up");
    if (st != MOE_OK) return st;
    moe_expert_weights *e = calloc(d->n_experts, sizeof *e);
    if (!e) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_model_set_layer: allocation failed");
    moe_model_layer *L = &m->layers[layer];
    L->experts = e;
    L->desc = *d;
    L->desc.struct_size = sizeof(moe_layer_desc);
    L->down_dtype = d->weight_dtype;
    L->described = true;
    return MOE_OK;
}

moe_status moe_model_set_down_dtype(moe_model_t *m, uint32_t layer, moe_dtype dtype) {
    CHECK_MODEL("moe_model_set_down_dtype", m);
    if (layer >= m->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_down_dtype: layer %u out of range (model has %u)", layer,
                        m->n_layers);
    moe_model_layer *L = &m->layers[layer];
    if (!L->described)
        return moe_fail(MOE_ERR_STATE, "moe_model_set_down_dtype: layer %u is not described yet", layer);
    if (L->n_registered)
        return moe_fail(MOE_ERR_STATE, "moe_model_set_down_dtype: layer %u already has experts registered", layer);
    if (moe_dtype_size(dtype) == 0 && !moe_dtype_is_block(dtype))
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_model_set_down_dtype: layer %u: dtype %d is not supported", layer,
                        (int)dtype);
    moe_status st = whole_blocks("moe_model_set_down_dtype", layer, dtype, L->desc.inter, "down");
    if (st != MOE_OK) return st;
    L->down_dtype = dtype;
    return MOE_OK;
}

moe_dtype moe_model_down_dtype(const moe_model_t *m, uint32_t layer) {
    if (!moe_model_valid(m) || layer >= m->n_layers || !m->layers[layer].described) return MOE_DTYPE_COUNT_;
    return m->layers[layer].down_dtype;
}

moe_status moe_model_set_expert(moe_model_t *m, uint32_t layer, uint32_t expert,
                                const moe_expert_weights *w) {
    CHECK_MODEL("moe_model_set_expert", m);
    if (!w) return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_expert: weights are NULL");
    if (layer >= m->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_expert: layer %u out of range (model has %u)",
                        layer, m->n_layers);
    moe_model_layer *L = &m->layers[layer];
    if (!L->described)
        return moe_fail(MOE_ERR_STATE, "moe_model_set_expert: layer %u is not described yet", layer);
    if (expert >= L->desc.n_experts)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_expert: expert %u out of range (layer %u has %u)",
                        expert, layer, L->desc.n_experts);
    if (!w->gate || !w->up || !w->down)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_expert: layer %u expert %u: %s pointer is NULL",
                        layer, expert, !w->gate ? "gate" : !w->up ? "up" : "down");
    if ((L->desc.weight_dtype == MOE_DTYPE_I8 && (!w->gate_scale || !w->up_scale)) ||
        (L->down_dtype == MOE_DTYPE_I8 && !w->down_scale))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_expert: layer %u expert %u: int8 weights need "
                        "%s (one f32 per output row)", layer, expert,
                        !w->gate_scale ? "gate_scale" : !w->up_scale ? "up_scale" : "down_scale");
    if (atomic_load(&m->refs) > 1)
        return moe_fail(MOE_ERR_STATE, "moe_model_set_expert: the model is in use by a runtime");
    if (L->experts[expert].gate)
        return moe_fail(MOE_ERR_STATE, "moe_model_set_expert: layer %u expert %u is already registered",
                        layer, expert);
    L->experts[expert] = *w;
    L->n_registered++;
    return MOE_OK;
}

uint32_t moe_model_n_layers(const moe_model_t *m) { return moe_model_valid(m) ? m->n_layers : 0; }

moe_status moe_model_get_layer(const moe_model_t *m, uint32_t layer, moe_layer_desc *out) {
    CHECK_MODEL("moe_model_get_layer", m);
    if (!out) return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_get_layer: out is NULL");
    if (layer >= m->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_get_layer: layer %u out of range (model has %u)",
                        layer, m->n_layers);
    if (!m->layers[layer].described)
        return moe_fail(MOE_ERR_STATE, "moe_model_get_layer: layer %u is not described yet", layer);
    *out = m->layers[layer].desc;
    return MOE_OK;
}

uint64_t moe_model_layer_expert_bytes(const moe_model_layer *L) {
    return moe_expert_weight_bytes(L->desc.hidden, L->desc.inter, L->desc.weight_dtype, L->down_dtype);
}

uint64_t moe_model_expert_bytes(const moe_model_t *m) {
    if (!moe_model_valid(m)) return 0;
    uint64_t total = 0, layer;
    for (uint32_t l = 0; l < m->n_layers; l++)
        if (m->layers[l].described) {
            /* Saturate: at the documented maxima the sum exceeds 2^64. */
            if (__builtin_mul_overflow(moe_model_layer_expert_bytes(&m->layers[l]),
                                       (uint64_t)m->layers[l].desc.n_experts, &layer) ||
                __builtin_add_overflow(total, layer, &total))
                return UINT64_MAX;
        }
    return total;
}

moe_status moe_model_check_complete(const moe_model_t *m) {
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const moe_model_layer *L = &m->layers[l];
        if (!L->described) return moe_fail(MOE_ERR_STATE, "model: layer %u is not described", l);
        moe_status st = whole_blocks("model", l, L->down_dtype, L->desc.inter, "down");
        if (st != MOE_OK) return st;
        if (L->n_registered != L->desc.n_experts)
            for (uint32_t e = 0; e < L->desc.n_experts; e++)
                if (!L->experts[e].gate)
                    return moe_fail(MOE_ERR_STATE, "model: layer %u expert %u is not registered", l, e);
    }
    return MOE_OK;
}

void moe_model_retain(moe_model_t *m) { atomic_fetch_add(&m->refs, 1u); }

void moe_model_free(moe_model_t **pm) {
    if (!pm || !*pm) return;
    moe_model_t *m = *pm;
    *pm = NULL;
    if (!moe_model_valid(m) || atomic_fetch_sub(&m->refs, 1u) != 1u) return;
    for (uint32_t l = 0; l < m->n_layers; l++) free(m->layers[l].experts);
    free(m->layers);
    m->magic = 0;
    free(m);
}

moe_routing moe_routing_defaults(uint32_t top_k) {
    return (moe_routing){.struct_size = sizeof(moe_routing), .top_k = top_k, .scoring = MOE_SCORING_SOFTMAX,
                         .norm_topk = 1, .scale = 1.0f};
}

/* API 5-7's moe_routing_init, for programs built against those headers:
 * it returns the struct as it was then (their caller reserved that much),
 * struct_size saying so. */
typedef struct routing_v7 {
    uint32_t struct_size, top_k;
    moe_scoring scoring;
    int32_t norm_topk;
    float scale;
} routing_v7;
#undef moe_routing_init
MOE_EXPORT routing_v7 moe_routing_init(uint32_t top_k);
routing_v7 moe_routing_init(uint32_t top_k) {
    return (routing_v7){.struct_size = sizeof(routing_v7), .top_k = top_k, .scoring = MOE_SCORING_SOFTMAX,
                        .norm_topk = 1, .scale = 1.0f};
}
_Static_assert(sizeof(routing_v7) == MOE_ROUTING_V7_BYTES, "API 7's moe_routing was 20 bytes");

/* r checked against n_experts and copied, at this library's size, into
 * *out; an API 5-7 caller's shorter struct gets no bias and no groups. */
static moe_status routing_check(const char *fn, const char *where, const moe_routing *r, uint32_t E, moe_routing *out) {
    if (!r || r->struct_size < MOE_ROUTING_V7_BYTES)
        return moe_fail(MOE_ERR_INVALID_ARG, "%s: routing is NULL or its struct_size is too small; initialise it with "
                        "moe_routing_defaults()", fn);
    *out = moe_routing_defaults(r->top_k);
    memcpy(out, r, r->struct_size < sizeof *out ? r->struct_size : sizeof *out);
    out->struct_size = sizeof *out;
    if (out->top_k == 0 || out->top_k > E)
        return moe_fail(MOE_ERR_INVALID_ARG, "%s: %stop_k = %u, must be in 1..%u", fn, where, out->top_k, E);
    if ((unsigned)out->scoring >= MOE_SCORING_COUNT_ || !(out->scale > 0) || !isfinite(out->scale))
        return moe_fail(MOE_ERR_INVALID_ARG, "%s: %sscoring %d or scale %g is not valid", fn, where,
                        (int)out->scoring, (double)out->scale);
    char why[160];
    if (!moe_routing_groups_ok(out, E, why, sizeof why))
        return moe_fail(MOE_ERR_INVALID_ARG, "%s: %s%s", fn, where, why);
    return MOE_OK;
}

moe_status moe_route(const moe_routing *r, uint32_t n_experts, uint32_t n_tokens, const float *logits, int32_t *ids,
                     float *weights) {
    if (!n_experts || (n_tokens && (!logits || !ids || !weights)))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_route: NULL argument or no experts");
    moe_routing rule;
    moe_status st = routing_check("moe_route", "", r, n_experts, &rule);
    if (st || !n_tokens) return st;
    float *probs = malloc((size_t)n_experts * sizeof *probs);
    if (!probs) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_route: out of memory for %u experts", n_experts);
    moe_route_logits(&rule, n_experts, n_tokens, logits, probs, ids, weights);
    free(probs);
    return MOE_OK;
}

moe_status moe_model_set_router(moe_model_t *m, uint32_t layer, const moe_routing *r, const void *weights,
                                moe_dtype dtype) {
    CHECK_MODEL("moe_model_set_router", m);
    if (layer >= m->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_router: layer %u out of range (model has %u)", layer,
                        m->n_layers);
    moe_model_layer *L = &m->layers[layer];
    if (!L->described) return moe_fail(MOE_ERR_STATE, "moe_model_set_router: layer %u is not described yet", layer);
    if (L->has_routing) return moe_fail(MOE_ERR_STATE, "moe_model_set_router: layer %u's router is already set", layer);
    moe_routing rule;
    char where[32];
    snprintf(where, sizeof where, "layer %u: ", layer);
    moe_status st = routing_check("moe_model_set_router", where, r, L->desc.n_experts, &rule);
    if (st) return st;
    if (weights && dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_BF16 && dtype != MOE_DTYPE_F16)
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_model_set_router: layer %u: router weights in %s (f32, bf16 or "
                        "f16)", layer, moe_dtype_name(dtype));
    L->routing = rule;
    L->router = weights;
    L->router_dtype = dtype;
    L->has_routing = true;
    return MOE_OK;
}

bool moe_routing_groups_ok(const moe_routing *r, uint32_t n_experts, char *why, size_t cap) {
    if (r->n_group <= 1) return true;
    const uint32_t per = n_experts / r->n_group;
    if (r->n_group > MOE_ROUTE_MAX_GROUPS)
        snprintf(why, cap, "n_group %u is more than %u", r->n_group, MOE_ROUTE_MAX_GROUPS);
    else if (n_experts % r->n_group || per < 2)
        snprintf(why, cap, "n_group %u must divide the %u experts into groups of at least 2", r->n_group, n_experts);
    else if (r->topk_group < 1 || r->topk_group > r->n_group)
        snprintf(why, cap, "topk_group %u must be in 1..n_group (%u)", r->topk_group, r->n_group);
    else if (r->top_k > r->topk_group * per)
        snprintf(why, cap, "top_k %u is more than the %u experts of topk_group %u groups", r->top_k,
                 r->topk_group * per, r->topk_group);
    else
        return true;
    return false;
}

/* a beats b as a selection score: greater, and a NaN never wins */
static bool beats(float a, float b) { return a > b || (isnan(b) && !isnan(a)); }

void moe_route_logits(const moe_routing *r, uint32_t n_experts, uint32_t n, const float *logits, float *probs,
                      int32_t *ids, float *weights) {
    const uint32_t k = r->top_k, G = r->n_group > 1 ? r->n_group : 1, per = n_experts / G;
    for (uint32_t t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * n_experts;
        int32_t *id = ids + (size_t)t * k;
        float *w = weights + (size_t)t * k;
        if (r->scoring == MOE_SCORING_SIGMOID) {
            for (uint32_t e = 0; e < n_experts; e++) probs[e] = 1.0f / (1.0f + expf(-lg[e]));
        } else {
            float mx = lg[0];
            for (uint32_t e = 1; e < n_experts; e++) mx = lg[e] > mx ? lg[e] : mx;
            double sum = 0.0;
            for (uint32_t e = 0; e < n_experts; e++) sum += probs[e] = expf(lg[e] - mx);
            for (uint32_t e = 0; e < n_experts; e++) probs[e] = (float)(probs[e] / sum);
        }
        /* The groups that compete (all with no groups): topk_group times
         * the best group by the sum of its two best selection scores, ties
         * to the lower group. A bit per group: at most 64 checked at once,
         * then a second word, and so on (MOE_ROUTE_MAX_GROUPS). */
        uint64_t keep[MOE_ROUTE_MAX_GROUPS / 64] = {0};
        const uint32_t kg = G > 1 ? r->topk_group : 1;
        for (uint32_t j = 0; j < kg; j++) {
            int32_t best = -1;
            float bs = 0.0f;
            for (uint32_t g = 0; g < G; g++) {
                if (keep[g / 64] >> (g % 64) & 1) continue;
                float s = 0.0f;
                if (G > 1) {
                    float a = -INFINITY, b = -INFINITY; /* the two best of the group */
                    for (uint32_t e = g * per; e < (g + 1) * per; e++) {
                        const float v = probs[e] + (r->bias ? r->bias[e] : 0.0f);
                        if (beats(v, a)) b = a, a = v;
                        else if (beats(v, b)) b = v;
                    }
                    s = a + b;
                }
                if (best < 0 || beats(s, bs)) best = (int32_t)g, bs = s;
            }
            keep[best / 64] |= 1ull << (best % 64);
        }
        /* Top k by selection score among the kept groups, ties to the lower id. */
        double total = 0.0;
        for (uint32_t j = 0; j < k; j++) {
            int32_t best = -1;
            float bv = 0.0f;
            for (uint32_t e = 0; e < n_experts; e++) {
                if (G > 1 && !(keep[e / per / 64] >> (e / per % 64) & 1)) continue;
                bool taken = false;
                for (uint32_t q = 0; q < j && !taken; q++) taken = id[q] == (int32_t)e;
                const float v = probs[e] + (r->bias ? r->bias[e] : 0.0f);
                if (!taken && (best < 0 || beats(v, bv))) best = (int32_t)e, bv = v;
            }
            id[j] = best;
            w[j] = probs[best];
            total += w[j];
        }
        for (uint32_t j = 0; j < k; j++) {
            const double v = r->norm_topk && total > 0 ? w[j] / total : w[j];
            w[j] = (float)(v * r->scale);
        }
    }
}
