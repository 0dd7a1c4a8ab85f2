/* timed.c - the timed simulation (tracesim.h): the trace's steps through the
 * scheduler on a virtual clock. */
#include <math.h>
#include <stdlib.h>

#include "tracesim.h"

/* Every step's routing grouped by expert, once: offsets per (step, layer)
 * into flat arrays of experts, token counts and summed gate weights. */
typedef struct steps {
    uint64_t n_steps;
    uint64_t *tok0;     /* [n_steps + 1]: first trace token of each step */
    uint64_t *off;      /* [n_steps * L + 1] */
    uint16_t *expert;
    uint32_t *m;
    float *w;
    uint64_t *next;     /* the step at which the same (layer, expert) is used next, UINT64_MAX: never */
    uint32_t *next_m;
} steps;

static void steps_free(steps *s) {
    free(s->tok0), free(s->off), free(s->expert), free(s->m), free(s->w), free(s->next), free(s->next_m);
    memset(s, 0, sizeof *s);
}

static moe_status build_steps(const moe_trace *t, const moe_sim_params *p, steps *s) {
    memset(s, 0, sizeof *s);
    const uint32_t per = p->mode == MOE_SIM_DECODE ? p->batch : p->chunk;
    /* Step boundaries: decode takes consecutive tokens; prefill chunks stay
     * within a sequence. */
    uint64_t n = 0;
    if (p->mode == MOE_SIM_DECODE) n = (t->n_tokens + per - 1) / per;
    else
        for (uint32_t q = 0; q < t->n_seqs; q++) n += (t->seqs[q].n + per - 1) / per;
    const uint32_t L = t->n_layers, K = t->top_k;
    s->tok0 = malloc((n + 1) * sizeof *s->tok0);
    s->off = malloc((n * L + 1) * sizeof *s->off);
    const size_t cap = (size_t)t->n_tokens * L * K; /* at most one group per use */
    s->expert = malloc(cap * sizeof *s->expert);
    s->m = malloc(cap * sizeof *s->m);
    s->w = malloc(cap * sizeof *s->w);
    uint32_t *count = calloc(t->n_experts, sizeof *count);
    float *wsum = calloc(t->n_experts, sizeof *wsum);
    if (!s->tok0 || !s->off || !s->expert || !s->m || !s->w || !count || !wsum) {
        free(count), free(wsum), steps_free(s);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "simulation: allocation failed");
    }
    s->n_steps = n;
    uint64_t k = 0;
    if (p->mode == MOE_SIM_DECODE)
        for (uint64_t i = 0; i < n; i++) s->tok0[i] = i * per;
    else
        for (uint32_t q = 0; q < t->n_seqs; q++)
            for (uint64_t f = 0; f < t->seqs[q].n; f += per) s->tok0[k++] = t->seqs[q].first + f;
    s->tok0[n] = t->n_tokens;
    size_t g = 0;
    for (uint64_t i = 0; i < n; i++) {
        const uint64_t a = s->tok0[i], b = s->tok0[i + 1];
        for (uint32_t l = 0; l < L; l++) {
            s->off[i * L + l] = g;
            for (uint64_t tok = a; tok < b; tok++) {
                const uint16_t *ids = moe_trace_ids(t, tok, l);
                const float *tw = t->weights + (tok * L + l) * K;
                for (uint32_t j = 0; j < K; j++) {
                    count[ids[j]]++;
                    wsum[ids[j]] += tw[j] == tw[j] ? tw[j] : 1.0f / (float)K;
                }
            }
            for (uint32_t e = 0; e < t->n_experts; e++)
                if (count[e]) {
                    s->expert[g] = (uint16_t)e, s->m[g] = count[e], s->w[g] = wsum[e], g++;
                    count[e] = 0, wsum[e] = 0;
                }
        }
    }
    s->off[n * L] = g;
    free(count), free(wsum);
    return MOE_OK;
}

/* The oracle's future: for each group, the next step using its expert. */
static moe_status build_next(const moe_trace *t, steps *s) {
    const uint32_t L = t->n_layers, E = t->n_experts;
    const size_t groups = s->off[s->n_steps * L];
    s->next = malloc((groups ? groups : 1) * sizeof *s->next);
    s->next_m = malloc((groups ? groups : 1) * sizeof *s->next_m);
    uint64_t *seen = malloc((size_t)E * sizeof *seen);
    uint32_t *seen_m = malloc((size_t)E * sizeof *seen_m);
    if (!s->next || !s->next_m || !seen || !seen_m) {
        free(seen), free(seen_m);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "simulation: allocation failed");
    }
    for (uint32_t l = 0; l < L; l++) {
        for (uint32_t e = 0; e < E; e++) seen[e] = UINT64_MAX, seen_m[e] = 0;
        for (uint64_t i = s->n_steps; i-- > 0;)
            for (uint64_t g = s->off[i * L + l]; g < s->off[i * L + l + 1]; g++) {
                s->next[g] = seen[s->expert[g]], s->next_m[g] = seen_m[s->expert[g]];
                seen[s->expert[g]] = i, seen_m[s->expert[g]] = s->m[g];
            }
    }
    free(seen), free(seen_m);
    return MOE_OK;
}

/* The predictor: the routing of layer `layer` in this step, each routed
 * expert of each token kept with probability `acc`, else replaced by
 * another expert the token does not use. Appends one guess per predicted
 * expert, its confidence the chance that at least one of its predicted
 * tokens is right. */
static uint32_t predict(const moe_trace *t, uint64_t a, uint64_t b, uint32_t layer, double acc, moe_rng *r,
                        uint32_t *count, moe_sched_guess *out) {
    const uint32_t K = t->top_k, E = t->n_experts;
    for (uint64_t tok = a; tok < b; tok++) {
        const uint16_t *ids = moe_trace_ids(t, tok, layer);
        uint16_t pred[MOE_TRACE_MAX_TOP_K];
        for (uint32_t j = 0; j < K; j++) {
            uint16_t e = ids[j];
            if (acc < 1.0 && moe_rng_uniform(r) >= acc && K < E) {
                for (;;) { /* another expert, not already in the token's set */
                    e = (uint16_t)moe_rng_below(r, E);
                    bool dup = false;
                    for (uint32_t q = 0; q < K && !dup; q++) dup = ids[q] == e;
                    for (uint32_t q = 0; q < j && !dup; q++) dup = pred[q] == e;
                    if (!dup) break;
                }
            }
            pred[j] = e;
            count[e]++;
        }
    }
    uint32_t n = 0;
    for (uint32_t e = 0; e < E; e++)
        if (count[e]) {
            out[n++] = (moe_sched_guess){.layer = layer, .expert = e, .m = count[e],
                                         .confidence = (float)(1.0 - pow(1.0 - acc, count[e]))};
            count[e] = 0;
        }
    return n;
}

moe_status moe_sim_timed(const moe_trace *t, const moe_sim_params *p, moe_sim_result *out) {
    if (!t || !p || !out || !t->n_tokens) return moe_fail(MOE_ERR_INVALID_ARG, "simulation: no trace");
    const uint32_t per = p->mode == MOE_SIM_DECODE ? p->batch : p->chunk;
    if (!per) return moe_fail(MOE_ERR_INVALID_ARG, "simulation: %s of 0 tokens", p->mode ? "prefill chunks" : "batches");
    if (!(p->dense_experts >= 0)) return moe_fail(MOE_ERR_INVALID_ARG, "simulation: negative dense time");
    memset(out, 0, sizeof *out);
    const double w0 = moe_now();
    moe_sched_config sc = p->sched;
    sc.n_layers = t->n_layers, sc.n_experts = t->n_experts, sc.max_tokens = per;
    moe_sched *s = NULL;
    moe_status st = moe_sched_create(&s, &sc);
    if (st != MOE_OK) return st;
    steps S;
    st = build_steps(t, p, &S);
    const bool oracle = sc.policy == MOE_POLICY_ORACLE;
    if (st == MOE_OK && oracle) st = build_next(t, &S);
    const uint32_t L = t->n_layers, E = t->n_experts;
    moe_plan plan;
    moe_plan_init(&plan);
    plan.groups = calloc(E, sizeof *plan.groups);
    uint32_t *count = calloc(E, sizeof *count);
    const uint32_t depth = moe_sched_depth(s);
    moe_sched_guess *guess = malloc(((size_t)depth * E + 1) * sizeof *guess);
    uint64_t *uses = calloc((size_t)L * E, sizeof *uses);
    uint32_t *pl = malloc((size_t)L * E * sizeof *pl), *pe = malloc((size_t)L * E * sizeof *pe);
    if (st == MOE_OK && (!plan.groups || !count || !guess || !uses || !pl || !pe))
        st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "simulation: allocation failed");
    /* The start: the most used experts resident (or whole layers, for
     * layer-split), as a runtime would preload from an earlier run. */
    if (st == MOE_OK) {
        double *tok = calloc((size_t)L * E, sizeof *tok);
        if (!tok) st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "simulation: allocation failed");
        for (uint64_t i = 0; st == MOE_OK && i < S.n_steps; i++)
            for (uint32_t l = 0; l < L; l++)
                for (uint64_t g = S.off[i * L + l]; g < S.off[i * L + l + 1]; g++) {
                    const size_t x = (size_t)l * E + S.expert[g];
                    uses[x]++;
                    tok[x] += S.m[g];
                }
        /* What an earlier run would tell moerun's scores: each expert's use
         * rate and tokens per use (the knowledge the preload already uses). */
        for (size_t x = 0; st == MOE_OK && x < (size_t)L * E; x++)
            if (uses[x])
                moe_sched_set_prior(s, (uint32_t)(x / E), (uint32_t)(x % E), (double)uses[x] / (double)S.n_steps,
                                    tok[x] / (double)uses[x]);
        free(tok);
        const bool fixed = sc.policy == MOE_POLICY_STATIC_HOT || sc.policy == MOE_POLICY_LAYER_SPLIT;
        if (!p->cold || fixed) {
            const uint32_t n = moe_sched_preload_set(s, uses, pl, pe);
            for (uint32_t i = 0; i < n && st == MOE_OK; i++) st = moe_sched_preload(s, pl[i], pe[i]);
        }
        if (oracle) /* first uses */
            for (uint32_t l = 0; l < L; l++)
                for (uint64_t i = S.n_steps; i-- > 0;)
                    for (uint64_t g = S.off[i * L + l]; g < S.off[i * L + l + 1]; g++)
                        moe_sched_set_next_use(s, l, S.expert[g], i, S.m[g]);
    }
    moe_rng rng = {p->seed ? p->seed : 1};
    double clock = 0.0, cpu_busy = 0.0, gpu_busy = 0.0;
    plan.top_k = t->top_k;
    for (uint64_t i = 0; st == MOE_OK && i < S.n_steps; i++) {
        const uint64_t a = S.tok0[i], b = S.tok0[i + 1];
        const uint32_t ntok = (uint32_t)(b - a);
        const double dense = p->dense_experts * moe_sched_gpu_us(s, ntok);
        for (uint32_t l = 0; l < L && st == MOE_OK; l++) {
            const uint64_t g0 = S.off[i * L + l], g1 = S.off[i * L + l + 1];
            plan.layer = l, plan.n_tokens = ntok, plan.n_groups = (uint32_t)(g1 - g0);
            for (uint64_t g = g0; g < g1; g++) {
                plan.groups[g - g0] = (moe_plan_group){.expert = S.expert[g], .n_tokens = S.m[g]};
                if (oracle) moe_sched_set_next_use(s, l, S.expert[g], S.next[g], S.next_m[g]);
            }
            moe_sched_layer_out lo;
            st = moe_sched_layer(s, &plan, i, clock + dense, S.w + g0, &lo);
            if (st != MOE_OK) break;
            clock = lo.end_us;
            cpu_busy += lo.cpu_busy_us, gpu_busy += lo.gpu_busy_us + dense;
            out->needed += lo.n_active, out->hits += lo.hits;
            out->bytes_copied += lo.bytes_copied;
            if (!depth || l + 1 >= L) continue;
            uint32_t ng = 0;
            for (uint32_t d = 1; d <= depth && l + d < L; d++)
                ng += predict(t, a, b, l + d, oracle ? 1.0 : p->accuracy[d - 1], &rng, count, guess + ng);
            out->bytes_prefetched += moe_sched_prefetch(s, l, clock, guess, ng);
        }
        out->tokens += ntok;
    }
    out->steps = S.n_steps;
    out->total_us = clock;
    out->step_us = S.n_steps ? clock / (double)S.n_steps : 0.0;
    out->tokens_per_s = clock > 0 ? (double)out->tokens / (clock * 1e-6) : 0.0;
    out->hit_rate = out->needed ? (double)out->hits / (double)out->needed : 0.0;
    out->cpu_busy = clock > 0 ? cpu_busy / clock : 0.0;
    out->gpu_busy = clock > 0 ? gpu_busy / clock : 0.0;
    out->wall_s = moe_now() - w0;
    free(plan.groups), free(count), free(guess), free(uses), free(pl), free(pe);
    steps_free(&S);
    moe_sched_free(&s);
    return st;
}

moe_status moe_sim_tune(const moe_trace *t, const moe_sim_params *base, moe_sim_tune_result *out) {
    if (!t || !base || !out) return moe_fail(MOE_ERR_INVALID_ARG, "tuning: no trace");
    memset(out, 0, sizeof *out);
    static const moe_policy_id fixed[] = {MOE_POLICY_STATIC_CPU, MOE_POLICY_STATIC_HOT, MOE_POLICY_FIDDLER,
                                          MOE_POLICY_HYBRIMOE};
    static const double gains[] = {0.0, 10.0, 50.0};
    for (uint32_t i = 0; i < 4 + MOE_SCHED_MAX_DEPTH * 3; i++) {
        moe_sim_candidate *c = &out->c[out->n];
        moe_sim_params p = *base;
        if (i < 4) {
            c->policy = fixed[i];
        } else {
            c->policy = MOE_POLICY_MOERUN;
            c->depth = 1 + (i - 4) / 3;
            c->min_gain_us = gains[(i - 4) % 3];
        }
        p.sched.policy = c->policy, p.sched.depth = c->depth, p.sched.min_gain_us = c->min_gain_us;
        const moe_status st = moe_sim_timed(t, &p, &c->r);
        if (st != MOE_OK) return st;
        if (c->r.total_us < out->c[out->best].r.total_us) out->best = out->n;
        out->n++;
    }
    return MOE_OK;
}
