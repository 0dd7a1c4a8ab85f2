/* tracesim.h - the trace-driven simulator (docs/scheduling.md). It replays
 * moe-trace v1 routing through the same scheduler and cache code as the
 * runtime (scheduler.h), on a virtual clock; and a pure cache mode, which
 * checks the cache code against independent figures. */
#ifndef MOE_SIM_H
#define MOE_SIM_H

#include "cache.h"
#include "scheduler.h"
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

/* ---- the timed simulation ---- */

typedef enum moe_sim_mode { MOE_SIM_DECODE = 0, MOE_SIM_PREFILL } moe_sim_mode;

typedef struct moe_sim_params {
    /* The scheduler: policy, costs, budget, knobs. n_layers, n_experts and
     * max_tokens are taken from the trace and the mode. */
    moe_sched_config sched;
    moe_sim_mode mode;
    uint32_t batch;       /* decode: consecutive trace tokens per step (1) */
    uint32_t chunk;       /* prefill: tokens per chunk, within a sequence (512) */
    /* A layer's dense part (attention, shared experts) runs on the GPU
     * before its routed experts, taking `dense_experts` times one routed
     * expert's GPU time for the step's tokens. */
    double dense_experts;
    /* The predictor of later layers' routing: the chance that each routed
     * expert of layer l+d is predicted, d = 1..MOE_SCHED_MAX_DEPTH (the
     * oracle always sees the true routing). */
    double accuracy[MOE_SCHED_MAX_DEPTH];
    uint64_t seed;
    bool cold;            /* start with an empty cache (default: the most used experts preloaded) */
} moe_sim_params;

typedef struct moe_sim_result {
    uint64_t steps, tokens;
    double total_us;          /* simulated time of the whole trace */
    double step_us;           /* mean time of one step (decode: per token of a sequence) */
    double tokens_per_s;
    uint64_t needed, hits;    /* activated experts; of those resident at their layer's start */
    double hit_rate;
    uint64_t bytes_copied;    /* on demand */
    uint64_t bytes_prefetched;
    double cpu_busy, gpu_busy;/* fractions of total_us the routed experts kept each side busy */
    double wall_s;            /* how long the simulation itself took */
} moe_sim_result;

/* Runs the whole trace through the scheduler on a virtual clock: steps of
 * `batch` decode tokens or `chunk`-token prefill chunks, layer by layer;
 * each layer waits for its dense part, then its experts as the scheduler
 * plans them; after each layer the scheduler may prefetch from predicted
 * routings of the next layers. */
moe_status moe_sim_timed(const moe_trace *t, const moe_sim_params *p, moe_sim_result *out);

/* ---- tuning (moe-profile --tune) ---- */

#define MOE_SIM_TUNE_MAX 32

typedef struct moe_sim_candidate {
    moe_policy_id policy;
    uint32_t depth;     /* prefetch lookahead (moerun) */
    double min_gain_us; /* prefetch threshold (moerun) */
    moe_sim_result r;
} moe_sim_candidate;

typedef struct moe_sim_tune_result {
    uint32_t n;
    moe_sim_candidate c[MOE_SIM_TUNE_MAX];
    uint32_t best; /* index of the fastest */
} moe_sim_tune_result;

/* Searches the knobs a profile's [tuning] section sets, on a trace: the
 * runtime's policies (static-cpu, static-hot, fiddler, hybrimoe) and moerun
 * with prefetch depths 1..4 and minimum gains 0, 10 and 50 us, each run
 * with `base`'s other settings; the fastest wins (ties: the earlier). */
moe_status moe_sim_tune(const moe_trace *t, const moe_sim_params *base, moe_sim_tune_result *out);

#endif
