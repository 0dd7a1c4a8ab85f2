/* scheduler.h - the scheduler: for each MoE layer of a batch, which activated
 * experts run on the GPU and which on the CPU (split.h), which experts are
 * copied in and kept (cache.h), and which are copied ahead for the next
 * layers (prefetch). One scheduler serves both executors: the simulator
 * (tracesim/, a virtual clock) and the runtime (real devices). It keeps the
 * state they share: the cache, when each resident expert's weights are
 * ready, and when the (serial) host-to-GPU link is free.
 *
 * Times are microseconds on the executor's clock. The costs are one routed
 * expert's (every routed expert of a model has the same shape): its CPU
 * and GPU time for m tokens, and one copy over the link. */
#ifndef MOE_SCHED_SCHEDULER_H
#define MOE_SCHED_SCHEDULER_H

#include "plan.h"
#include "profile.h"
#include "split.h"

#define MOE_SCHED_MAX_DEPTH 4 /* prefetch lookahead, layers */

typedef struct moe_sched moe_sched;

typedef struct moe_sched_config {
    moe_policy_id policy;
    uint32_t n_layers, n_experts; /* MoE layers; routed experts per layer */
    uint64_t expert_bytes;        /* one routed expert's weights */
    uint64_t budget_bytes;        /* GPU expert cache */
    uint32_t max_tokens;          /* the largest batch a layer call may have (cost tables) */
    /* Costs: from a profile (CPU node `node`, GPU `gpu`, pinned copies) ... */
    const moe_profile *profile;
    uint32_t hidden, inter;
    moe_dtype dtype;
    uint32_t node;
    int32_t gpu;
    /* ... or given directly when `profile` is NULL: cpu_us[m] and gpu_us[m]
     * for m = 0..max_tokens, and one copy. */
    const double *cpu_us, *gpu_us;
    double copy_us;
    /* Knobs; 0 picks the policy's default (docs/scheduling.md). */
    uint32_t depth;        /* prefetch lookahead in layers (hybrimoe 1, moerun 3, oracle 4) */
    double score_alpha;    /* hybrimoe: MRS weight (0.5) */
    double min_gain_us;    /* moerun, oracle: a prefetch must cut more than this (0: any gain) */
    /* Ablations of moerun (docs/scheduling.md): */
    bool no_refine;        /* the plain greedy split */
    bool no_prefetch;      /* no prefetch */
    bool no_value_cache;   /* LRU instead of the value scores */
    /* Called for each prefetch the scheduler queues (after admitting the
     * expert to the cache), so the executor can start its copy; NULL for
     * the simulator, whose copies are only times. */
    void (*on_prefetch)(uint32_t layer, uint32_t expert, void *user);
    void *user;
} moe_sched_config;

/* What one layer call planned. */
typedef struct moe_sched_layer_out {
    double end_us;         /* when the layer's experts are all done */
    uint32_t n_active;     /* activated experts */
    uint32_t hits;         /* of those, resident (or arriving) at the start */
    uint32_t n_gpu, n_copied;
    double cpu_busy_us, gpu_busy_us;
    uint64_t bytes_copied; /* by this layer's own copies */
} moe_sched_layer_out;

/* A predicted routing of a later layer: expert `expert` of layer `layer`
 * gets about `m` tokens, with probability `confidence`. */
typedef struct moe_sched_guess {
    uint32_t layer, expert, m;
    float confidence;
} moe_sched_guess;

moe_status moe_sched_create(moe_sched **out, const moe_sched_config *cfg);
void moe_sched_free(moe_sched **s);

/* Makes an expert resident before the run starts (no link time): the
 * static policies' fixed sets, and every policy's warm start. MOE_ERR_STATE
 * when the budget is full. */
moe_status moe_sched_preload(moe_sched *s, uint32_t layer, uint32_t expert);

/* The experts the policy preloads, in order, filling `layers`/`experts`
 * (capacity n_layers * n_experts) from per-expert use counts (`uses`,
 * [n_layers * n_experts]; NULL for layer-split); returns how many. */
uint32_t moe_sched_preload_set(const moe_sched *s, const uint64_t *uses, uint32_t *layers, uint32_t *experts);

/* What is known of an expert before the run (from an earlier run's trace,
 * the same knowledge the preload uses): the fraction of steps that use it
 * and its tokens when used. moerun starts its use rates from it; other
 * policies ignore it. */
void moe_sched_set_prior(moe_sched *s, uint32_t layer, uint32_t expert, double use_rate, double tokens);

/* The oracle's knowledge: the step at which (layer, expert) is next used,
 * and its tokens then. Ignored by the other policies. */
void moe_sched_set_next_use(moe_sched *s, uint32_t layer, uint32_t expert, uint64_t step, uint32_t m);

/* Plans one layer whose routing `plan` is known at `start_us` (step `step`
 * of the run; gate weights summed per group in `group_weight`, NULL for
 * 1/top_k each): sets every group's `where` and `copy`, admits copied
 * experts to the cache, queues their copies on the link, updates scores,
 * and returns what it planned. Layers come in order, 0..n_layers-1 per
 * step. */
moe_status moe_sched_layer(moe_sched *s, moe_plan *plan, uint64_t step, double start_us, const float *group_weight,
                           moe_sched_layer_out *out);

/* After planning layer `layer` (ending at `now_us`): chooses experts of the
 * next layers to copy ahead from the predicted routings `g` (layers
 * layer+1 .. layer+depth), queues them on the link and admits them. Returns
 * the bytes queued. Policies without prefetch queue nothing. */
uint64_t moe_sched_prefetch(moe_sched *s, uint32_t layer, double now_us, const moe_sched_guess *g, uint32_t n);

/* The prefetch lookahead the policy uses (0: none). */
uint32_t moe_sched_depth(const moe_sched *s);

/* The cache (read-only use: residency, statistics). */
const moe_cache *moe_sched_cache(const moe_sched *s);

/* One expert's costs as the scheduler sees them: its tables times the
 * current scales. */
double moe_sched_cpu_us(const moe_sched *s, uint32_t m);
double moe_sched_gpu_us(const moe_sched *s, uint32_t m);
double moe_sched_copy_us(const moe_sched *s);

/* Online refinement: the runtime's measured expert times over the tables'
 * (1 = as the profile says); the scheduler plans with tables times these
 * from now on. Values <= 0 or not finite leave a scale as it is. */
void moe_sched_scale_costs(moe_sched *s, double cpu, double gpu);
void moe_sched_cost_scales(const moe_sched *s, double *cpu, double *gpu);

#endif
