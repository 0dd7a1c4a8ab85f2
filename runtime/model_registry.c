/* model_registry.c - expert registration (see moerun.h). */
#include "model_registry.h"

#include <math.h>
#include <stdlib.h>

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

moe_routing moe_routing_init(uint32_t top_k) {
    return (moe_routing){.struct_size = sizeof(moe_routing), .top_k = top_k, .scoring = MOE_SCORING_SOFTMAX,
                         .norm_topk = 1, .scale = 1.0f};
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
    if (!r || r->struct_size < sizeof(moe_routing))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_router: routing is NULL or its struct_size is too small; "
                        "initialise it with moe_routing_init()");
    if (r->top_k == 0 || r->top_k > L->desc.n_experts)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_router: layer %u: top_k = %u, must be in 1..%u", layer,
                        r->top_k, L->desc.n_experts);
    if ((unsigned)r->scoring >= MOE_SCORING_COUNT_ || !(r->scale > 0) || !isfinite(r->scale))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_model_set_router: layer %u: scoring %d or scale %g is not valid",
                        layer, (int)r->scoring, (double)r->scale);
    if (weights && dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_BF16 && dtype != MOE_DTYPE_F16)
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_model_set_router: layer %u: router weights in %s (f32, bf16 or "
                        "f16)", layer, moe_dtype_name(dtype));
    L->routing = *r;
    L->routing.struct_size = sizeof(moe_routing);
    L->router = weights;
    L->router_dtype = dtype;
    L->has_routing = true;
    return MOE_OK;
}

void moe_route_logits(const moe_routing *r, uint32_t n_experts, uint32_t n, const float *logits, float *probs,
                      int32_t *ids, float *weights) {
    const uint32_t k = r->top_k;
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
        /* Top k by probability, ties to the lower id; a NaN never wins. */
        double total = 0.0;
        for (uint32_t j = 0; j < k; j++) {
            int32_t best = -1;
            for (uint32_t e = 0; e < n_experts; e++) {
                bool taken = false;
                for (uint32_t q = 0; q < j && !taken; q++) taken = id[q] == (int32_t)e;
                if (!taken && (best < 0 || probs[e] > probs[best] || (isnan(probs[best]) && !isnan(probs[e]))))
                    best = (int32_t)e;
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
