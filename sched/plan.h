/* plan.h - one MoE layer's plan: the batch's routing grouped by expert, and
 * for each activated expert the device that runs it. The same planner serves
 * the runtime and (later) the trace simulator. */
#ifndef MOE_SCHED_PLAN_H
#define MOE_SCHED_PLAN_H

#include "cache.h"
#include "common.h"

typedef enum moe_where { MOE_ON_CPU = 0, MOE_ON_GPU = 1 } moe_where;

/* The scheduling policies (docs/scheduling.md). All run on the same code
 * path: scheduler.h's scheduler with the policy's split, cache and prefetch. */
typedef enum moe_policy_id {
    MOE_POLICY_STATIC_CPU = 0, /* every routed expert on the CPU (kTransformers' default) */
    MOE_POLICY_FIDDLER,        /* resident on the GPU; a miss on the CPU unless copying it alone is faster */
    MOE_POLICY_STATIC_HOT,     /* a fixed GPU set of the most used experts (kTransformers' GPU masks) */
    MOE_POLICY_LAYER_SPLIT,    /* whole layers' experts on the GPU up to the budget (llama.cpp --n-cpu-moe) */
    MOE_POLICY_GPU_LRU,        /* every expert on the GPU, misses copied in, LRU eviction */
    MOE_POLICY_GPU_LFU,        /* the same with LFU eviction */
    MOE_POLICY_HYBRIMOE,       /* HybriMoE: greedy split, MRS cache, one-layer top-score prefetch */
    MOE_POLICY_MOERUN,         /* ours: refined split, value cache, impact-driven prefetch */
    MOE_POLICY_ORACLE,         /* future knowledge: perfect prediction, cost-aware Belady (simulation only) */
    MOE_POLICY_COUNT_
} moe_policy_id;

/* The policy's name, or NULL. */
const char *moe_policy_name(moe_policy_id p);

/* Looks a policy up by name; MOE_ERR_UNSUPPORTED with the known names listed
 * if there is none. */
moe_status moe_policy_lookup(const char *name, moe_policy_id *out);

typedef struct moe_plan_group {
    uint32_t expert;
    uint32_t n_tokens; /* M: tokens routed to this expert, >= 1 */
    uint32_t first;    /* its pairs are pairs[first .. first+n_tokens) */
    moe_where where;
    bool copy;         /* on the GPU, and its weights must be copied there first */
} moe_plan_group;

/* A (token, slot) pair: token t routed to topk_ids[t*top_k + slot]. */
typedef struct moe_plan_pair {
    uint32_t token;
    uint32_t slot;
} moe_plan_pair;

typedef struct moe_plan {
    uint32_t layer;
    uint32_t n_tokens, top_k;
    uint32_t n_groups;      /* activated experts, in increasing expert id */
    moe_plan_group *groups; /* capacity: experts of the layer */
    moe_plan_pair *pairs;   /* n_tokens * top_k, grouped by expert, tokens ascending */
    uint32_t *counts;       /* per-expert scratch, capacity: experts of the layer */
    uint32_t cap_experts;
    size_t cap_pairs;
} moe_plan;

void moe_plan_init(moe_plan *p);
void moe_plan_release(moe_plan *p);

/* Groups a batch's routing by expert, validating it: every id in
 * [0, n_experts) and no id twice for one token. The plan's storage grows as
 * needed; nothing is allocated once it is large enough. */
moe_status moe_plan_route(moe_plan *p, uint32_t layer, uint32_t n_experts, uint32_t n_tokens,
                          uint32_t top_k, const int32_t *topk_ids);

/* The plain placement, without costs: static-cpu puts every group on the
 * CPU, every other policy puts resident experts on the GPU and misses on
 * the CPU. `cache` may be NULL (everything is a miss). The scheduler
 * (scheduler.h) replaces it wherever costs are known. */
void moe_plan_assign(moe_plan *p, moe_policy_id policy, const moe_cache *cache);

#endif
