/* cache_sim.c - the simulator's pure cache mode (tracesim.h). */
#include <stdlib.h>

#include "tracesim.h"

/* next[(tok * L + l) * K + k]: the next token after tok that needs the same
 * expert in layer l, or UINT32_MAX. */
static uint32_t *next_uses(const moe_trace *t) {
    const size_t per = (size_t)t->n_layers * t->top_k;
    uint32_t *next = malloc((size_t)t->n_tokens * per * sizeof *next);
    uint32_t *seen = malloc((size_t)t->n_experts * sizeof *seen);
    if (!next || !seen) {
        free(next), free(seen);
        return NULL;
    }
    for (uint32_t l = 0; l < t->n_layers; l++) {
        for (uint32_t e = 0; e < t->n_experts; e++) seen[e] = UINT32_MAX;
        for (uint64_t tok = t->n_tokens; tok-- > 0;) {
            const uint16_t *ids = moe_trace_ids(t, tok, l);
            for (uint32_t k = 0; k < t->top_k; k++) {
                next[(tok * t->n_layers + l) * t->top_k + k] = seen[ids[k]];
                seen[ids[k]] = (uint32_t)tok;
            }
        }
    }
    free(seen);
    return next;
}

moe_status moe_sim_cache_only(const moe_trace *t, uint32_t per_layer, moe_cache_policy policy, double score_alpha,
                              moe_cache_sim *out) {
    if (!t || !out || !t->n_tokens) return moe_fail(MOE_ERR_INVALID_ARG, "cache simulation: no trace");
    if (per_layer < t->top_k)
        return moe_fail(MOE_ERR_INVALID_ARG, "cache simulation: %u experts per layer cannot hold one token's %u",
                        per_layer, t->top_k);
    if (t->n_tokens >= UINT32_MAX) return moe_fail(MOE_ERR_INVALID_ARG, "cache simulation: trace too long");
    memset(out, 0, sizeof *out);
    moe_cache **caches = calloc(t->n_layers, sizeof *caches);
    uint32_t *next = policy == MOE_CACHE_BELADY ? next_uses(t) : NULL;
    moe_status st = caches && (policy != MOE_CACHE_BELADY || next)
                        ? MOE_OK
                        : moe_fail(MOE_ERR_OUT_OF_MEMORY, "cache simulation: allocation failed");
    const uint64_t one = 1;
    for (uint32_t l = 0; l < t->n_layers && st == MOE_OK; l++)
        st = moe_cache_create(&caches[l], 1, &t->n_experts, &one, per_layer, policy);
    for (uint64_t tok = 0; tok < t->n_tokens && st == MOE_OK; tok++)
        for (uint32_t l = 0; l < t->n_layers && st == MOE_OK; l++) {
            moe_cache *c = caches[l];
            const uint16_t *ids = moe_trace_ids(t, tok, l);
            moe_cache_begin_step(c);
            if (policy == MOE_CACHE_SCORE) {
                float w[MOE_TRACE_MAX_TOP_K];
                const float *tw = t->weights + (tok * t->n_layers + l) * t->top_k;
                for (uint32_t k = 0; k < t->top_k; k++) w[k] = tw[k] == tw[k] ? tw[k] : 1.0f / (float)t->top_k;
                moe_cache_score_layer(c, 0, ids, w, t->top_k, score_alpha);
            }
            for (uint32_t k = 0; k < t->top_k; k++) {
                out->hits += moe_cache_resident(c, 0, ids[k]);
                moe_cache_use(c, 0, ids[k]);
                if (next) {
                    const uint32_t nx = next[(tok * t->n_layers + l) * t->top_k + k];
                    moe_cache_set_next_use(c, 0, ids[k], nx == UINT32_MAX ? UINT64_MAX : nx);
                }
            }
            for (uint32_t k = 0; k < t->top_k && st == MOE_OK; k++) {
                const bool was = moe_cache_resident(c, 0, ids[k]);
                st = moe_cache_admit(c, 0, ids[k]);
                out->loads += !was;
            }
            out->needed += t->top_k;
        }
    for (uint32_t l = 0; caches && l < t->n_layers; l++) moe_cache_free(&caches[l]);
    free(caches);
    free(next);
    out->hit_rate = out->needed ? (double)out->hits / (double)out->needed : 0.0;
    return st;
}
