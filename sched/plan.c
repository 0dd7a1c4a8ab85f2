/* plan.c - grouping routing by expert (a counting sort, stable in token
 * order) and the per-group device choice of each policy. */
#include "plan.h"

#include <stdlib.h>

/* NULL-terminated so moe_policy_names() can hand it out as is. */
static const char *const policy_names[MOE_POLICY_COUNT_ + 1] = {
    [MOE_POLICY_STATIC_CPU] = "static-cpu",
    [MOE_POLICY_FIDDLER] = "fiddler",
    [MOE_POLICY_STATIC_HOT] = "static-hot",
    [MOE_POLICY_LAYER_SPLIT] = "layer-split",
    [MOE_POLICY_GPU_LRU] = "gpu-lru",
    [MOE_POLICY_GPU_LFU] = "gpu-lfu",
    [MOE_POLICY_HYBRIMOE] = "hybrimoe",
    [MOE_POLICY_MOERUN] = "moerun",
    [MOE_POLICY_ORACLE] = "oracle",
    [MOE_POLICY_COUNT_] = NULL,
};

const char *const *moe_policy_names(void) { return policy_names; }

const char *moe_policy_name(moe_policy_id p) {
    return (unsigned)p < MOE_POLICY_COUNT_ ? policy_names[p] : NULL;
}

moe_status moe_policy_lookup(const char *name, moe_policy_id *out) {
    for (int i = 0; i < MOE_POLICY_COUNT_; i++)
        if (name && strcmp(name, policy_names[i]) == 0) {
            *out = (moe_policy_id)i;
            return MOE_OK;
        }
    char known[512] = "";
    for (int i = 0; i < MOE_POLICY_COUNT_; i++) {
        strncat(known, i ? ", " : "", sizeof known - strlen(known) - 1);
        strncat(known, policy_names[i], sizeof known - strlen(known) - 1);
    }
    return moe_fail(MOE_ERR_UNSUPPORTED, "unknown policy \"%s\" (known: %s)", name ? name : "(null)", known);
}

void moe_plan_init(moe_plan *p) { memset(p, 0, sizeof *p); }

void moe_plan_release(moe_plan *p) {
    free(p->groups);
    free(p->pairs);
    free(p->counts);
    moe_plan_init(p);
}

static moe_status reserve(moe_plan *p, uint32_t n_experts, size_t n_pairs) {
    if (n_experts > p->cap_experts) {
        moe_plan_group *g = realloc(p->groups, n_experts * sizeof *g);
        if (!g) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "plan: allocation failed");
        p->groups = g;
        uint32_t *c = realloc(p->counts, n_experts * sizeof *c);
        if (!c) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "plan: allocation failed");
        p->counts = c;
        p->cap_experts = n_experts;
    }
    if (n_pairs > p->cap_pairs) {
        moe_plan_pair *q = realloc(p->pairs, n_pairs * sizeof *q);
        if (!q) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "plan: allocation failed");
        p->pairs = q;
        p->cap_pairs = n_pairs;
    }
    return MOE_OK;
}

moe_status moe_plan_route(moe_plan *p, uint32_t layer, uint32_t n_experts, uint32_t n_tokens,
                          uint32_t top_k, const int32_t *ids) {
    size_t n_pairs;
    /* Pair indices are 32-bit. */
    if (!moe_mul_size(n_tokens, top_k, &n_pairs) || n_pairs > UINT32_MAX)
        return moe_fail(MOE_ERR_INVALID_ARG, "plan: %u tokens x top_k %u is more than 2^32 token-expert pairs",
                        n_tokens, top_k);
    moe_status st = reserve(p, n_experts, n_pairs);
    if (st != MOE_OK) return st;
    p->layer = layer;
    p->n_tokens = n_tokens;
    p->top_k = top_k;
    p->n_groups = 0;
    memset(p->counts, 0, n_experts * sizeof *p->counts);

    for (uint32_t t = 0; t < n_tokens; t++) {
        const int32_t *row = ids + (size_t)t * top_k;
        for (uint32_t j = 0; j < top_k; j++) {
            int32_t e = row[j];
            if (e < 0 || (uint32_t)e >= n_experts)
                return moe_fail(MOE_ERR_INVALID_ARG,
                                "topk_ids[%u][%u] = %d is out of range (layer %u has %u experts)", t, j,
                                e, layer, n_experts);
            for (uint32_t k = 0; k < j; k++)
                if (row[k] == e)
                    return moe_fail(MOE_ERR_INVALID_ARG,
                                    "token %u of layer %u is routed to expert %d twice (slots %u and %u)",
                                    t, layer, e, k, j);
            p->counts[e]++;
        }
    }
    /* Exclusive prefix sum: counts[e] becomes the first pair index of e. */
    uint32_t at = 0;
    for (uint32_t e = 0; e < n_experts; e++) {
        uint32_t c = p->counts[e];
        if (c) p->groups[p->n_groups++] = (moe_plan_group){.expert = e, .n_tokens = c, .first = at, .where = MOE_ON_CPU, .copy = false};
        p->counts[e] = at;
        at += c;
    }
    for (uint32_t t = 0; t < n_tokens; t++)
        for (uint32_t j = 0; j < top_k; j++) {
            uint32_t e = (uint32_t)ids[(size_t)t * top_k + j];
            p->pairs[p->counts[e]++] = (moe_plan_pair){.token = t, .slot = j};
        }
    return MOE_OK;
}

void moe_plan_assign(moe_plan *p, moe_policy_id policy, const moe_cache *cache) {
    for (uint32_t g = 0; g < p->n_groups; g++) {
        moe_plan_group *grp = &p->groups[g];
        switch (policy) {
        case MOE_POLICY_FIDDLER:
        case MOE_POLICY_STATIC_HOT:
        case MOE_POLICY_LAYER_SPLIT:
        case MOE_POLICY_GPU_LRU:
        case MOE_POLICY_GPU_LFU:
        case MOE_POLICY_HYBRIMOE:
        case MOE_POLICY_MOERUN:
        case MOE_POLICY_ORACLE:
            grp->where = cache && moe_cache_resident(cache, p->layer, grp->expert) ? MOE_ON_GPU : MOE_ON_CPU;
            break;
        case MOE_POLICY_STATIC_CPU:
        case MOE_POLICY_COUNT_:
            grp->where = MOE_ON_CPU;
            break;
        }
    }
}
