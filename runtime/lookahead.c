/* lookahead.c - router lookahead (runtime.h): the host's predictions of
 * the layers ahead (moe_runtime_predict, moe_hint_next), their accuracy
 * measured against the real routing by distance, and the prefetches the
 * scheduler queues from them, weighed by that accuracy. */
#include <stdlib.h>

#include "runtime.h"

moe_status rt_lookahead_alloc(moe_runtime_t *rt) {
    rt_lookahead *k = &rt->look;
    const size_t keys = (size_t)rt->model->n_layers * rt->max_experts;
    k->pred_m = calloc(keys, sizeof *k->pred_m);
    k->pred_set = calloc(rt->model->n_layers, sizeof *k->pred_set);
    k->acc_m = calloc(MOE_SCHED_MAX_DEPTH * keys, sizeof *k->acc_m);
    k->acc_set = calloc((size_t)MOE_SCHED_MAX_DEPTH * rt->model->n_layers, sizeof *k->acc_set);
    k->guess = malloc((size_t)MOE_SCHED_MAX_DEPTH * rt->max_experts * sizeof *k->guess);
    if (!k->pred_m || !k->pred_set || !k->acc_m || !k->acc_set || !k->guess)
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_runtime_create: allocation failed");
    return MOE_OK;
}

/* The accuracy counters survive: they are since creation. */
void rt_lookahead_free(moe_runtime_t *rt) {
    rt_lookahead *k = &rt->look;
    free(k->pred_m), free(k->pred_set), free(k->acc_m), free(k->acc_set), free(k->guess);
    k->pred_m = NULL, k->pred_set = NULL, k->acc_m = NULL, k->acc_set = NULL, k->guess = NULL;
}

/* The confidence the scheduler weighs a prediction d layers ahead with:
 * the fraction of predicted token-expert pairs that the real routing had,
 * as measured on this run, starting from published figures for router
 * lookahead (HybriMoE, ProMoE; moe-sim's defaults) that weigh as 256
 * measured pairs, so a few layers cannot swing it. */
static const double lookahead_prior[MOE_SCHED_MAX_DEPTH] = {0.85, 0.7, 0.6, 0.5};
_Static_assert(sizeof ((moe_stats *)0)->lookahead_pairs / sizeof(uint64_t) == MOE_SCHED_MAX_DEPTH,
               "moe_stats keeps one lookahead counter per prefetch distance");
enum { PRIOR_PAIRS = 256 };

static float lookahead_confidence(const rt_lookahead *k, uint32_t d) {
    return (float)((lookahead_prior[d - 1] * PRIOR_PAIRS + (double)k->acc_hits[d - 1]) /
                   (double)(PRIOR_PAIRS + k->acc_pairs[d - 1]));
}

void rt_score_predictions(moe_runtime_t *rt, uint32_t layer, const moe_plan *plan) {
    rt_lookahead *k = &rt->look;
    const size_t keys = (size_t)rt->model->n_layers * rt->max_experts;
    k->pred_set[layer] = false; /* its prediction is spent */
    for (uint32_t d = 1; d <= MOE_SCHED_MAX_DEPTH; d++) {
        bool *set = &k->acc_set[(size_t)(d - 1) * rt->model->n_layers + layer];
        if (!*set) continue;
        *set = false;
        const uint32_t *pm = k->acc_m + (d - 1) * keys + (size_t)layer * rt->max_experts;
        uint64_t hits = 0, predicted = 0;
        for (uint32_t e = 0; e < rt->max_experts; e++) predicted += pm[e];
        for (uint32_t g = 0; g < plan->n_groups; g++) {
            const uint32_t want = pm[plan->groups[g].expert], got = plan->groups[g].n_tokens;
            hits += want < got ? want : got;
        }
        k->acc_hits[d - 1] += hits, k->acc_pairs[d - 1] += predicted;
        rt->stats.lookahead_hits[d - 1] += hits, rt->stats.lookahead_pairs[d - 1] += predicted;
    }
}

/* The predictions for the layers ahead, as the scheduler's guesses; it
 * queues the prefetches worth their copy. */
uint64_t rt_prefetch_ahead(moe_runtime_t *rt, uint32_t layer) {
    rt_lookahead *k = &rt->look;
    const uint32_t depth = moe_sched_depth(rt->off.sched), L = rt->model->n_layers;
    uint32_t n = 0;
    for (uint32_t d = 1; d <= depth && d <= MOE_SCHED_MAX_DEPTH && layer + d < L; d++) {
        const uint32_t l = layer + d;
        if (!k->pred_set[l]) continue;
        for (uint32_t e = 0; e < rt->max_experts; e++) {
            const uint32_t m = k->pred_m[(size_t)l * rt->max_experts + e];
            if (m) k->guess[n++] = (moe_sched_guess){.layer = l, .expert = e, .m = m,
                                                     .confidence = lookahead_confidence(k, d)};
        }
    }
    return n ? moe_sched_prefetch(rt->off.sched, layer, rt->off.clock_us, k->guess, n) : 0;
}

uint32_t moe_runtime_lookahead(const moe_runtime_t *rt) {
    return rt_valid(rt) && !rt->worker.inflight && rt->off.sched ? moe_sched_depth(rt->off.sched) : 0;
}

moe_status moe_runtime_predict(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, uint32_t top_k,
                               const int32_t *topk_ids) {
    if (!rt_valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_predict: not a runtime handle");
    if (rt->worker.inflight) return rt_busy(rt, "moe_runtime_predict");
    if (layer >= rt->model->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_predict: layer %u out of range (model has %u)", layer,
                        rt->model->n_layers);
    const uint32_t E = rt->model->layers[layer].desc.n_experts;
    if (n_tokens && (!topk_ids || !top_k || top_k > E))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_predict: top_k = %u (1..%u) or topk_ids NULL", top_k, E);
    for (size_t i = 0; i < (size_t)n_tokens * top_k; i++)
        if (topk_ids[i] < 0 || (uint32_t)topk_ids[i] >= E)
            return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_predict: expert id %d out of range (layer %u has %u)",
                            (int)topk_ids[i], layer, E);
    if (!rt->off.sched || !moe_sched_depth(rt->off.sched)) return MOE_OK;
    rt_lookahead *k = &rt->look;
    uint32_t *m = k->pred_m + (size_t)layer * rt->max_experts;
    memset(m, 0, rt->max_experts * sizeof *m);
    for (size_t i = 0; i < (size_t)n_tokens * top_k; i++) m[topk_ids[i]]++;
    k->pred_set[layer] = n_tokens > 0;
    /* Kept by distance for scoring: from before the forward of next_layer. */
    const uint32_t d = layer - k->next_layer;
    if (layer > k->next_layer && d <= MOE_SCHED_MAX_DEPTH && n_tokens) {
        const size_t keys = (size_t)rt->model->n_layers * rt->max_experts;
        memcpy(k->acc_m + (d - 1) * keys + (size_t)layer * rt->max_experts, m, rt->max_experts * sizeof *m);
        k->acc_set[(size_t)(d - 1) * rt->model->n_layers + layer] = true;
    }
    return MOE_OK;
}
