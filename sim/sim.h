/* sim.h - the trace-driven simulator (docs/scheduling.md). It replays
 * moe-trace v1 routing through the same cache (and, with the scheduling
 * issue, the same planner) code as the runtime, on a virtual clock.
 *
 * Built so far: the pure cache mode, which checks the cache code against
 * independent figures. */
#ifndef MOE_SIM_H
#define MOE_SIM_H

#include "cache.h"
#include "trace.h"

typedef struct moe_cache_sim {
    uint64_t needed;  /* (token, layer, expert) uses replayed */
    uint64_t hits;    /* of those, resident when the token came */
    uint64_t loads;   /* experts made resident (copies a GPU would make) */
    double hit_rate;  /* hits / needed */
} moe_cache_sim;

/* Replays decode tokens one at a time, sequences back to back, each layer a
 * cache of `per_layer` experts, empty at the start: a token's needed
 * experts count as hits if resident, then all of them are made resident,
 * evicting by `policy` only experts that token does not need. With
 * MOE_CACHE_SCORE each token first updates its layer's scores with its
 * router weights (1 / top_k each where the trace has none) and weight
 * `score_alpha`. */
moe_status moe_sim_cache_only(const moe_trace *t, uint32_t per_layer, moe_cache_policy policy, double score_alpha,
                              moe_cache_sim *out);

#endif
