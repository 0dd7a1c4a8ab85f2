/* synth.c - synthetic routing traces (tracesim.h). */
#include <math.h>
#include <stdlib.h>

#include "tracesim.h"

moe_status moe_sim_synthetic(moe_trace *t, const moe_synth_params *p) {
    if (!t || !p) return moe_fail(MOE_ERR_INVALID_ARG, "synthetic trace: NULL argument");
    if (!p->n_layers || p->n_layers > MOE_TRACE_MAX_LAYERS || !p->n_experts || p->n_experts > MOE_TRACE_MAX_EXPERTS ||
        !p->top_k || p->top_k > p->n_experts || p->top_k > MOE_TRACE_MAX_TOP_K || !p->n_tokens ||
        !(p->zipf >= 0 && p->zipf <= 10) || !(p->locality >= 0 && p->locality <= 1))
        return moe_fail(MOE_ERR_INVALID_ARG, "synthetic trace: %u layers, %u experts, top_k %u, %llu tokens, zipf %g, "
                        "locality %g (need top_k <= experts, zipf in 0..10, locality in 0..1)", p->n_layers,
                        p->n_experts, p->top_k, (unsigned long long)p->n_tokens, p->zipf, p->locality);
    moe_trace_begin(t, "synthetic", p->n_layers, p->n_experts, p->top_k);
    const uint32_t E = p->n_experts, K = p->top_k, L = p->n_layers;
    uint32_t *rank = malloc((size_t)L * E * sizeof *rank); /* rank -> expert, per layer */
    double *cdf = malloc((size_t)E * sizeof *cdf), *wz = malloc((size_t)E * sizeof *wz);
    uint32_t *rank_of = malloc((size_t)L * E * sizeof *rank_of);
    uint64_t first = 0;
    moe_status st = rank && cdf && wz && rank_of ? moe_trace_add_tokens(t, p->n_tokens, "synthetic", &first)
                                                 : moe_fail(MOE_ERR_OUT_OF_MEMORY, "synthetic trace: out of memory");
    moe_rng r = {p->seed};
    if (st == MOE_OK) {
        double sum = 0.0;
        for (uint32_t i = 0; i < E; i++) wz[i] = 1.0 / pow((double)(i + 1), p->zipf), sum += wz[i];
        for (uint32_t i = 0; i < E; i++) cdf[i] = (i ? cdf[i - 1] : 0.0) + wz[i] / sum;
        for (uint32_t l = 0; l < L; l++) { /* a random ranking per layer (Fisher-Yates) */
            uint32_t *rk = rank + (size_t)l * E;
            for (uint32_t i = 0; i < E; i++) rk[i] = i;
            for (uint32_t i = E - 1; i > 0; i--) {
                const uint32_t j = (uint32_t)(moe_rng_next(&r) % (i + 1));
                const uint32_t x = rk[i];
                rk[i] = rk[j], rk[j] = x;
            }
            for (uint32_t i = 0; i < E; i++) rank_of[(size_t)l * E + rk[i]] = i;
        }
    }
    for (uint64_t tok = 0; tok < p->n_tokens && st == MOE_OK; tok++)
        for (uint32_t l = 0; l < L; l++) {
            uint16_t *ids = t->ids + (tok * L + l) * K;
            float *w = t->weights + (tok * L + l) * K;
            const uint16_t *prev = tok ? t->ids + ((tok - 1) * L + l) * K : NULL;
            uint32_t n = 0;
            for (uint32_t k = 0; prev && k < K; k++)
                if (moe_rng_uniform(&r) < p->locality) ids[n++] = prev[k];
            for (uint32_t tries = 0; n < K && tries < 64 * K; tries++) { /* Zipf draws, rejecting repeats */
                const double u = (double)moe_rng_uniform(&r);
                uint32_t lo = 0, hi = E - 1;
                while (lo < hi) {
                    const uint32_t mid = (lo + hi) / 2;
                    if (cdf[mid] < u) lo = mid + 1;
                    else hi = mid;
                }
                const uint16_t e = (uint16_t)rank[(size_t)l * E + lo];
                bool dup = false;
                for (uint32_t j = 0; j < n; j++) dup |= ids[j] == e;
                if (!dup) ids[n++] = e;
            }
            for (uint32_t i = 0; n < K && i < E; i++) { /* a steep law: the most popular unused ones */
                const uint16_t e = (uint16_t)rank[(size_t)l * E + i];
                bool dup = false;
                for (uint32_t j = 0; j < n; j++) dup |= ids[j] == e;
                if (!dup) ids[n++] = e;
            }
            double ws = 0.0;
            for (uint32_t k = 0; k < K; k++) ws += wz[rank_of[(size_t)l * E + ids[k]]];
            for (uint32_t k = 0; k < K; k++) w[k] = (float)(wz[rank_of[(size_t)l * E + ids[k]]] / ws);
        }
    free(rank), free(cdf), free(wz), free(rank_of);
    if (st != MOE_OK) moe_trace_free(t);
    return st;
}
