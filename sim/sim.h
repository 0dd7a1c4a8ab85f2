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

/* Synthetic routing for models without a recorded trace: in each layer the
 * experts' popularity follows a Zipf law of exponent `zipf` over a random
 * ranking of the layer's experts; with probability `locality` each of the
 * previous token's experts of that layer is kept (temporal locality), the
 * other slots are drawn from the Zipf law without repeats. Gate weights are
 * the chosen experts' Zipf weights renormalised over the top_k. */
typedef struct moe_synth_params {
    uint32_t n_layers, n_experts, top_k;
    uint64_t n_tokens;
    double zipf;     /* >= 0; 0 = uniform */
    double locality; /* 0..1 */
    uint64_t seed;
} moe_synth_params;

/* Fills t (cleared first) with one sequence "synthetic". Deterministic for
 * a seed. */
moe_status moe_sim_synthetic(moe_trace *t, const moe_synth_params *p);

#endif
