/* plugin.c - the plugin API's routing helpers (see moerun.h): a layer's
 * forward from the host's router logits, and router lookahead from a
 * hidden state. Both use only the public runtime calls plus the model's
 * registered routers. */
#include <stdlib.h>

#include "plugin.h"

/* The layer's routing rule, or an error naming what is missing. */
static moe_status layer_of(const moe_runtime_t *rt, uint32_t layer, const char *fn, const moe_model_layer **out) {
    const moe_model_t *m = moe_runtime_model_of(rt);
    if (!m) return moe_fail(MOE_ERR_INVALID_ARG, "%s: not a runtime handle", fn);
    if (moe_runtime_inflight(rt))
        return moe_fail(MOE_ERR_STATE, "%s: a forward submitted with moe_layer_forward_submit is in flight; call "
                        "moe_layer_wait first", fn);
    if (layer >= m->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "%s: layer %u out of range (model has %u)", fn, layer, m->n_layers);
    *out = &m->layers[layer];
    return MOE_OK;
}

/* Routes n tokens from logits by the layer's rule into fresh arrays. */
static moe_status route(const moe_model_layer *L, uint32_t n, const float *logits, int32_t **ids, float **w) {
    const uint32_t k = L->routing.top_k, E = L->desc.n_experts;
    *ids = malloc((size_t)n * k * sizeof **ids);
    *w = malloc((size_t)n * k * sizeof **w);
    float *probs = malloc(E * sizeof *probs);
    if (!*ids || !*w || !probs) {
        free(*ids), free(*w), free(probs);
        *ids = NULL, *w = NULL;
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "routing %u tokens: allocation failed", n);
    }
    moe_route_logits(&L->routing, E, n, logits, probs, *ids, *w);
    free(probs);
    return MOE_OK;
}

moe_status moe_layer_forward_logits(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden,
                                    const float *router_logits, float *out) {
    const moe_model_layer *L = NULL;
    moe_status st = layer_of(rt, layer, "moe_layer_forward_logits", &L);
    if (st != MOE_OK) return st;
    if (!L->has_routing)
        return moe_fail(MOE_ERR_STATE, "moe_layer_forward_logits: layer %u has no routing rule; register it with "
                        "moe_model_set_router", layer);
    if (n_tokens == 0) return MOE_OK;
    if (!router_logits) return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward_logits: router_logits is NULL");
    size_t cells;
    if (!moe_mul_size(n_tokens, L->desc.n_experts, &cells) || cells > SIZE_MAX / sizeof(float))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward_logits: %u tokens is too many", n_tokens);
    int32_t *ids;
    float *w;
    if ((st = route(L, n_tokens, router_logits, &ids, &w)) != MOE_OK) return st;
    st = moe_layer_forward(rt, layer, n_tokens, hidden, L->routing.top_k, ids, w, out);
    free(ids), free(w);
    return st;
}

moe_status moe_hint_next(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden) {
    const moe_model_layer *L = NULL;
    moe_status st = layer_of(rt, layer, "moe_hint_next", &L);
    if (st != MOE_OK || n_tokens == 0) return st;
    if (!hidden) return moe_fail(MOE_ERR_INVALID_ARG, "moe_hint_next: hidden is NULL");
    const moe_model_t *m = moe_runtime_model_of(rt);
    const uint32_t ahead = moe_runtime_lookahead(rt);
    for (uint32_t next = layer + 1; next <= layer + ahead && next < m->n_layers && st == MOE_OK; next++) {
        const moe_model_layer *N = &m->layers[next];
        if (!N->has_routing || !N->router) continue;
        if (N->desc.hidden != L->desc.hidden)
            return moe_fail(MOE_ERR_INVALID_ARG, "moe_hint_next: layer %u is %u wide, layer %u's router reads %u",
                            layer, L->desc.hidden, next, N->desc.hidden);
        size_t cells;
        if (!moe_mul_size(n_tokens, N->desc.n_experts, &cells) || cells > SIZE_MAX / sizeof(float))
            return moe_fail(MOE_ERR_INVALID_ARG, "moe_hint_next: %u tokens is too many", n_tokens);
        float *logits = malloc(cells * sizeof *logits);
        if (!logits) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_hint_next: allocation failed");
        int32_t *ids = NULL;
        float *w = NULL;
        st = moe_dense_matmul(rt, N->router, N->router_dtype, NULL, N->desc.n_experts, N->desc.hidden, n_tokens,
                              hidden, logits);
        if (st == MOE_OK) st = route(N, n_tokens, logits, &ids, &w);
        if (st == MOE_OK) st = moe_runtime_predict(rt, next, n_tokens, N->routing.top_k, ids);
        free(logits), free(ids), free(w);
    }
    return st;
}
