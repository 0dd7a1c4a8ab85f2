/* sample.c - next-token sampling (see sample.h). */
#include "sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

moe_sampler_params moe_sampler_default_params(void) {
    return (moe_sampler_params){.temperature = 0, .top_k = 0, .top_p = 1, .repeat_penalty = 1, .repeat_last_n = 64};
}

moe_status moe_sampler_init(moe_sampler *s, const moe_sampler_params *p, uint32_t vocab) {
    memset(s, 0, sizeof *s);
    if (!p || !vocab) return moe_fail(MOE_ERR_INVALID_ARG, "sampler: no parameters or an empty vocabulary");
    if (!(p->temperature >= 0) || !(p->top_p > 0 && p->top_p <= 1) || !(p->repeat_penalty > 0))
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: temperature %g, top-p %g, repetition penalty %g: want "
                        "temperature >= 0, 0 < top-p <= 1, penalty > 0", (double)p->temperature, (double)p->top_p,
                        (double)p->repeat_penalty);
    s->p = *p;
    s->rng.s = p->seed ^ 0x9e3779b97f4a7c15ull;
    s->vocab = vocab;
    s->scratch = malloc((size_t)vocab * sizeof *s->scratch);
    s->cand = malloc((size_t)vocab * sizeof *s->cand);
    s->seen = calloc(vocab, 1);
    if (!s->scratch || !s->cand || !s->seen) {
        moe_sampler_free(s);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "sampler: out of memory for %u logits", vocab);
    }
    return MOE_OK;
}

void moe_sampler_free(moe_sampler *s) {
    free(s->scratch);
    free(s->cand);
    free(s->seen);
    memset(s, 0, sizeof *s);
}

static int by_logit_desc(const void *a, const void *b) {
    const struct moe_cand *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i < y->i ? -1 : 1;
}

static int32_t argmax(const float *x, uint32_t n) {
    int32_t best = 0;
    float bv = -INFINITY;
    bool any = false;
    for (uint32_t i = 0; i < n; i++)
        if (!isnan(x[i]) && (!any || x[i] > bv)) bv = x[i], best = (int32_t)i, any = true;
    return best;
}

int32_t moe_sample(moe_sampler *s, const float *logits, const int32_t *history, uint32_t n) {
    float *x = s->scratch;
    const uint32_t V = s->vocab;
    memcpy(x, logits, (size_t)V * sizeof *x);
    if (s->p.repeat_penalty != 1) {
        /* Each distinct recent token is penalised once. */
        const uint32_t from = n > s->p.repeat_last_n ? n - s->p.repeat_last_n : 0;
        for (uint32_t i = from; i < n; i++) {
            const int32_t t = history[i];
            if (t < 0 || (uint32_t)t >= V || s->seen[t]) continue;
            s->seen[t] = 1;
            x[t] = x[t] > 0 ? x[t] / s->p.repeat_penalty : x[t] * s->p.repeat_penalty;
        }
        for (uint32_t i = from; i < n; i++)
            if (history[i] >= 0 && (uint32_t)history[i] < V) s->seen[history[i]] = 0;
    }
    if (s->p.temperature == 0) return argmax(x, V);
    /* Candidates sorted by logit (NaN dropped), then truncated. */
    struct moe_cand *c = s->cand;
    uint32_t m = 0;
    for (uint32_t i = 0; i < V; i++)
        if (!isnan(x[i])) c[m++] = (struct moe_cand){x[i], i};
    if (!m) return 0;
    qsort(c, m, sizeof *c, by_logit_desc);
    if (s->p.top_k && s->p.top_k < m) m = s->p.top_k;
    const float top = c[0].v, inv_t = 1.0f / s->p.temperature;
    double sum = 0;
    for (uint32_t i = 0; i < m; i++) sum += (c[i].v = expf((c[i].v - top) * inv_t));
    if (s->p.top_p < 1) {
        double acc = 0;
        uint32_t keep = 0;
        while (keep < m && acc < s->p.top_p * sum) acc += c[keep++].v;
        m = keep;
        sum = acc;
    }
    const double u = moe_rng_uniform(&s->rng) * sum;
    double acc = 0;
    for (uint32_t i = 0; i < m; i++) {
        acc += c[i].v;
        if (u < acc) return (int32_t)c[i].i;
    }
    return (int32_t)c[m - 1].i;
}
