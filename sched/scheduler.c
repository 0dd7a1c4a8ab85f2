/* scheduler.c - the scheduler (scheduler.h): the policies' split, cache and
 * prefetch on one code path. */
#include "scheduler.h"

#include <math.h>
#include <stdlib.h>

/* moerun's cache scores: how often an expert is used per step, a slow and
 * a fast moving average mixed (docs/scheduling.md, where these figures
 * are measured). */
#define USE_A_LONG 0.002
#define USE_A_SHORT 0.3
#define USE_MIX 0.3 /* weight of the slow average */
/* A prefetch may evict an expert only if what the victim saves per step
 * over this many steps is less than the candidate's impact plus its own
 * saving over the same steps. On the ESFT traces 20 beat 10 by up to 0.8%
 * in decode (H100, 25%) and left prefill unchanged; 40 and 100 were worse. */
#define PREFETCH_HORIZON_STEPS 20.0
/* Estimates of layer times move by this much per step. */
#define EST_A 0.2
/* The most candidates per target layer an impact estimate looks at, and
 * the most copies one prefetch call queues. */
#define PREFETCH_CANDIDATES 8
#define PREFETCH_MAX_COPIES 16

struct moe_sched {
    moe_sched_config cfg;
    moe_cache *cache;
    double *cpu, *gpu; /* [max_tokens + 1] */
    double cpu_scale, gpu_scale; /* measured / table (moe_sched_scale_costs); 1 until set */
    double copy;
    double link_free;  /* when the link has copied everything queued */
    double *ready_at;  /* [L * E]: when a resident expert's weights are on the GPU */
    /* [L * E], moerun: how often each expert is used per step (slow and
     * fast moving averages) and its usual token count. */
    double *f_long, *f_short, *m_avg;
    uint64_t *next_step;              /* [L * E]: the oracle's next use */
    uint32_t *next_m;
    double *est_moe, *est_period;     /* [L]: a layer's expert time; start to the next layer's start */
    double *last_start;               /* [L] */
    uint64_t step;
    moe_split_item items[MOE_SPLIT_MAX];
    moe_split_item trial[MOE_SPLIT_MAX];
    uint32_t order[4 * MOE_SPLIT_MAX];
    float conf[MOE_SPLIT_MAX];
};

static size_t at(const moe_sched *s, uint32_t l, uint32_t e) { return (size_t)l * s->cfg.n_experts + e; }

double moe_sched_cpu_us(const moe_sched *s, uint32_t m) {
    const uint32_t mx = s->cfg.max_tokens;
    return s->cpu_scale * (m <= mx ? s->cpu[m] : s->cpu[mx] * m / mx); /* beyond the table: compute-bound */
}

double moe_sched_gpu_us(const moe_sched *s, uint32_t m) {
    const uint32_t mx = s->cfg.max_tokens;
    return s->gpu_scale * (m <= mx ? s->gpu[m] : s->gpu[mx] * m / mx);
}

void moe_sched_scale_costs(moe_sched *s, double cpu, double gpu) {
    if (cpu > 0 && isfinite(cpu)) s->cpu_scale = cpu;
    if (gpu > 0 && isfinite(gpu)) s->gpu_scale = gpu;
}

void moe_sched_cost_scales(const moe_sched *s, double *cpu, double *gpu) {
    *cpu = s->cpu_scale, *gpu = s->gpu_scale;
}

double moe_sched_copy_us(const moe_sched *s) { return s->copy; }
uint32_t moe_sched_depth(const moe_sched *s) { return s->cfg.depth; }
const moe_cache *moe_sched_cache(const moe_sched *s) { return s->cache; }

static bool uses_gpu(moe_policy_id p) { return p != MOE_POLICY_STATIC_CPU; }

/* What a resident expert saves on m tokens: the better of its other
 * options (the CPU, or a copy) minus its GPU time. */
static double saving(const moe_sched *s, uint32_t m) {
    const double g = moe_sched_gpu_us(s, m), c = moe_sched_cpu_us(s, m);
    const double other = c < s->copy + g ? c : s->copy + g;
    return other > g ? other - g : 0.0;
}

void moe_sched_free(moe_sched **sp) {
    if (!sp || !*sp) return;
    moe_sched *s = *sp;
    moe_cache_free(&s->cache);
    free(s->cpu), free(s->gpu), free(s->ready_at), free(s->f_long), free(s->f_short), free(s->m_avg);
    free(s->next_step), free(s->next_m), free(s->est_moe), free(s->est_period), free(s->last_start);
    free(s);
    *sp = NULL;
}

static moe_cache_policy cache_policy(const moe_sched_config *c) {
    switch (c->policy) {
    case MOE_POLICY_GPU_LFU: return MOE_CACHE_LFU;
    case MOE_POLICY_HYBRIMOE:
    case MOE_POLICY_ORACLE: return MOE_CACHE_SCORE;
    case MOE_POLICY_MOERUN: return c->no_value_cache ? MOE_CACHE_LRU : MOE_CACHE_SCORE;
    default: return MOE_CACHE_LRU;
    }
}

/* The cost tables. GPU figures are filled whenever the source has them
 * (an executor's dense part runs there even under static-cpu); only a
 * policy that puts experts on the GPU requires them. */
static moe_status fill_costs(moe_sched *s) {
    const moe_sched_config *c = &s->cfg;
    const bool need_gpu = uses_gpu(c->policy);
    for (uint32_t m = 0; m <= c->max_tokens; m++) {
        if (c->profile) {
            s->cpu[m] = moe_profile_cpu_us(c->profile, c->hidden, c->inter, c->dtype, m, c->node);
            s->gpu[m] = moe_profile_gpu_us(c->profile, c->gpu, c->hidden, c->inter, c->dtype, m);
        } else {
            s->cpu[m] = c->cpu_us ? c->cpu_us[m] : -1.0;
            s->gpu[m] = c->gpu_us ? c->gpu_us[m] : -1.0;
        }
        if (!(s->cpu[m] >= 0) || !isfinite(s->cpu[m]))
            return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: no CPU cost for %ux%u %s experts on %u tokens%s",
                            c->hidden, c->inter, moe_dtype_name(c->dtype), m,
                            c->profile ? " in the profile (no curve and no bandwidth figure)" : "");
        if (!(s->gpu[m] >= 0) || !isfinite(s->gpu[m])) {
            if (!need_gpu) {
                s->gpu[m] = 0.0;
                continue;
            }
            return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: no GPU cost for %ux%u %s experts on %u tokens%s",
                            c->hidden, c->inter, moe_dtype_name(c->dtype), m,
                            c->profile ? " in the profile (it has no GPU figures for this shape)" : "");
        }
    }
    s->copy = c->profile ? moe_profile_copy_us(c->profile, c->gpu, c->expert_bytes, true) : c->copy_us;
    if (need_gpu && (!(s->copy > 0) || !isfinite(s->copy)))
        return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: no copy time for a %llu-byte expert%s",
                        (unsigned long long)c->expert_bytes, c->profile ? " in the profile (no [link] figures)" : "");
    if (!need_gpu && !(s->copy > 0)) s->copy = 0.0;
    return MOE_OK;
}

moe_status moe_sched_create(moe_sched **out, const moe_sched_config *cfg) {
    if (!out || !cfg) return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: no config");
    *out = NULL;
    const moe_sched_config *c = cfg;
    if (!moe_policy_name(c->policy)) return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: unknown policy %d", (int)c->policy);
    if (!c->n_layers || !c->n_experts || !c->expert_bytes || !c->max_tokens)
        return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: %u layers of %u experts of %llu bytes, %u tokens at most",
                        c->n_layers, c->n_experts, (unsigned long long)c->expert_bytes, c->max_tokens);
    if (c->n_experts > MOE_SPLIT_MAX)
        return moe_fail(MOE_ERR_UNSUPPORTED, "scheduler: %u experts per layer (at most %d)", c->n_experts,
                        MOE_SPLIT_MAX);
    if (uses_gpu(c->policy) && c->budget_bytes < c->expert_bytes)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "scheduler: a GPU budget of %llu bytes is smaller than one expert (%llu bytes); policy %s "
                        "needs room for at least one",
                        (unsigned long long)c->budget_bytes, (unsigned long long)c->expert_bytes,
                        moe_policy_name(c->policy));
    if (!(c->min_gain_us >= 0) || !isfinite(c->min_gain_us))
        return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: minimum prefetch gain %g us", c->min_gain_us);
    if (c->depth > MOE_SCHED_MAX_DEPTH)
        return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: prefetch depth %u (at most %d)", c->depth, MOE_SCHED_MAX_DEPTH);
    moe_sched *s = calloc(1, sizeof *s);
    if (!s) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "scheduler: allocation failed");
    s->cfg = *c;
    if (s->cfg.score_alpha == 0) s->cfg.score_alpha = 0.5;
    if (!s->cfg.depth) {
        const uint32_t d = c->policy == MOE_POLICY_HYBRIMOE ? 1 : c->policy == MOE_POLICY_MOERUN ? 3
                         : c->policy == MOE_POLICY_ORACLE  ? MOE_SCHED_MAX_DEPTH : 0;
        s->cfg.depth = d;
    }
    if (c->policy == MOE_POLICY_MOERUN && c->no_prefetch) s->cfg.depth = 0;
    const size_t n = (size_t)c->n_layers * c->n_experts, mt = (size_t)c->max_tokens + 1;
    s->cpu = malloc(mt * sizeof *s->cpu);
    s->gpu = malloc(mt * sizeof *s->gpu);
    s->cpu_scale = s->gpu_scale = 1.0;
    s->ready_at = calloc(n, sizeof *s->ready_at);
    s->f_long = calloc(n, sizeof *s->f_long);
    s->f_short = calloc(n, sizeof *s->f_short);
    s->m_avg = calloc(n, sizeof *s->m_avg);
    s->next_step = calloc(n, sizeof *s->next_step);
    s->next_m = calloc(n, sizeof *s->next_m);
    s->est_moe = calloc(c->n_layers, sizeof *s->est_moe);
    s->est_period = calloc(c->n_layers, sizeof *s->est_period);
    s->last_start = calloc(c->n_layers, sizeof *s->last_start);
    if (!s->cpu || !s->gpu || !s->ready_at || !s->f_long || !s->f_short || !s->m_avg || !s->next_step || !s->next_m ||
        !s->est_moe || !s->est_period || !s->last_start) {
        moe_sched_free(&s);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "scheduler: allocation failed");
    }
    for (size_t i = 0; i < n; i++) s->next_step[i] = UINT64_MAX;
    moe_status st = fill_costs(s);
    uint32_t *ne = st == MOE_OK ? malloc(c->n_layers * sizeof *ne) : NULL;
    uint64_t *eb = ne ? malloc(c->n_layers * sizeof *eb) : NULL;
    if (st == MOE_OK && !eb) st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "scheduler: allocation failed");
    for (uint32_t l = 0; st == MOE_OK && l < c->n_layers; l++) ne[l] = c->n_experts, eb[l] = c->expert_bytes;
    if (st == MOE_OK)
        st = moe_cache_create(&s->cache, c->n_layers, ne, eb, uses_gpu(c->policy) ? c->budget_bytes : 0,
                              cache_policy(c));
    free(ne), free(eb);
    if (st != MOE_OK) {
        moe_sched_free(&s);
        return st;
    }
    *out = s;
    return MOE_OK;
}

moe_status moe_sched_preload(moe_sched *s, uint32_t layer, uint32_t expert) {
    if (!uses_gpu(s->cfg.policy)) return moe_fail(MOE_ERR_STATE, "scheduler: static-cpu keeps nothing on the GPU");
    if (moe_cache_used_bytes(s->cache) + s->cfg.expert_bytes > moe_cache_budget_bytes(s->cache) &&
        !moe_cache_resident(s->cache, layer, expert))
        return moe_fail(MOE_ERR_STATE, "scheduler: the GPU budget is full");
    return moe_cache_admit(s->cache, layer, expert);
}

uint32_t moe_sched_preload_set(const moe_sched *s, const uint64_t *uses, uint32_t *layers, uint32_t *experts) {
    const moe_sched_config *c = &s->cfg;
    if (!uses_gpu(c->policy)) return 0;
    const uint64_t slots = c->budget_bytes / c->expert_bytes;
    const uint32_t total = c->n_layers * c->n_experts;
    uint32_t n = 0;
    if (c->policy == MOE_POLICY_LAYER_SPLIT || !uses) {
        /* Whole layers from the first, as llama.cpp keeps the first layers' experts on the GPU. */
        const uint64_t whole = slots / c->n_experts;
        for (uint32_t l = 0; l < c->n_layers && l < whole; l++)
            for (uint32_t e = 0; e < c->n_experts; e++) layers[n] = l, experts[n] = e, n++;
        return n;
    }
    /* The most used experts over the whole model (a selection: at most a
     * few thousand experts, done once). */
    const uint32_t want = slots < total ? (uint32_t)slots : total;
    bool *taken = calloc(total, sizeof *taken);
    if (!taken) return 0;
    for (; n < want; n++) {
        uint32_t best = UINT32_MAX;
        for (uint32_t i = 0; i < total; i++)
            if (!taken[i] && (best == UINT32_MAX || uses[i] > uses[best])) best = i;
        taken[best] = true;
        layers[n] = best / c->n_experts, experts[n] = best % c->n_experts;
    }
    free(taken);
    return n;
}

void moe_sched_set_prior(moe_sched *s, uint32_t layer, uint32_t expert, double use_rate, double tokens) {
    if (layer >= s->cfg.n_layers || expert >= s->cfg.n_experts) return;
    const size_t i = at(s, layer, expert);
    s->f_long[i] = s->f_short[i] = use_rate;
    s->m_avg[i] = tokens;
}

void moe_sched_set_next_use(moe_sched *s, uint32_t layer, uint32_t expert, uint64_t step, uint32_t m) {
    if (layer >= s->cfg.n_layers || expert >= s->cfg.n_experts) return;
    s->next_step[at(s, layer, expert)] = step;
    s->next_m[at(s, layer, expert)] = m;
}

/* The oracle's eviction order: what keeping an expert saves at its next
 * use, per layer run until then (cost-aware Belady: a far or cheap use
 * goes first). Distances count layers, so an expert of a layer that just
 * ran is far: within a step layers run in order, and the cache is visited
 * cyclically. */
static double oracle_score(const moe_sched *s, uint32_t layer, uint32_t expert, uint32_t now_layer) {
    const size_t i = at(s, layer, expert);
    if (s->next_step[i] == UINT64_MAX) return -1.0;
    const double L = s->cfg.n_layers;
    double dist = ((double)s->next_step[i] - (double)s->step) * L + (double)layer - (double)now_layer;
    if (dist < 1) dist = 1;
    return saving(s, s->next_m[i]) / dist;
}

/* moerun's cache score, the online counterpart of the oracle's: what the
 * expert saves at a use, per layer run until its expected next use. Its
 * layer runs again in d layers (d = L for the layer running now); with a
 * chance p per step of being used, the expected wait after that is
 * L (1/p - 1) more layers. A rarely used expert of a layer that just ran
 * is evicted first; a popular expert of the next layer last. */
static double moerun_score(const moe_sched *s, uint32_t layer, uint32_t expert, uint32_t now_layer) {
    const size_t i = at(s, layer, expert);
    const double L = s->cfg.n_layers;
    const uint32_t d0 = (layer + s->cfg.n_layers - now_layer) % s->cfg.n_layers;
    double p = USE_MIX * s->f_long[i] + (1.0 - USE_MIX) * s->f_short[i];
    p = p < 1e-4 ? 1e-4 : p > 1.0 ? 1.0 : p;
    const double m = s->m_avg[i] > 1.0 ? s->m_avg[i] : 1.0;
    return saving(s, (uint32_t)(m + 0.5)) / ((d0 ? d0 : L) + L * (1.0 / p - 1.0));
}

static void update_scores(moe_sched *s, const moe_plan *plan, const float *w) {
    const uint32_t l = plan->layer, E = s->cfg.n_experts;
    const double inv_n = 1.0 / (double)plan->n_tokens;
    switch (s->cfg.policy) {
    case MOE_POLICY_HYBRIMOE: {
        uint16_t ids[MOE_SPLIT_MAX];
        float sc[MOE_SPLIT_MAX];
        for (uint32_t g = 0; g < plan->n_groups; g++) {
            ids[g] = (uint16_t)plan->groups[g].expert;
            sc[g] = (float)((w ? w[g] : (double)plan->groups[g].n_tokens / plan->top_k) * inv_n);
        }
        moe_cache_score_layer(s->cache, l, ids, sc, plan->n_groups, s->cfg.score_alpha);
        break;
    }
    case MOE_POLICY_MOERUN: {
        if (s->cfg.no_value_cache) break;
        bool used[MOE_SPLIT_MAX] = {false};
        for (uint32_t g = 0; g < plan->n_groups; g++) {
            const moe_plan_group *gr = &plan->groups[g];
            used[gr->expert] = true;
            double *m = &s->m_avg[at(s, l, gr->expert)];
            *m = *m > 0 ? (1 - USE_A_SHORT) * *m + USE_A_SHORT * gr->n_tokens : gr->n_tokens;
        }
        for (uint32_t e = 0; e < E; e++) {
            const size_t i = at(s, l, e);
            s->f_long[i] += USE_A_LONG * (used[e] - s->f_long[i]);
            s->f_short[i] += USE_A_SHORT * (used[e] - s->f_short[i]);
        }
        /* Distances change every layer: refresh every resident expert (and
         * this layer's, which may be admitted now). */
        for (uint32_t ll = 0; ll < s->cfg.n_layers; ll++)
            for (uint32_t e = 0; e < E; e++)
                if (moe_cache_resident(s->cache, ll, e) || ll == l)
                    moe_cache_set_score(s->cache, ll, e, moerun_score(s, ll, e, l));
        break;
    }
    case MOE_POLICY_ORACLE: /* distances change every layer: refresh every resident expert */
        for (uint32_t ll = 0; ll < s->cfg.n_layers; ll++)
            for (uint32_t e = 0; e < E; e++)
                if (moe_cache_resident(s->cache, ll, e) || ll == l)
                    moe_cache_set_score(s->cache, ll, e, oracle_score(s, ll, e, l));
        break;
    default: break;
    }
}

/* The split items of a plan's groups at `start`: costs, residency and
 * readiness. */
static void make_items(moe_sched *s, const moe_plan *plan, double start) {
    for (uint32_t g = 0; g < plan->n_groups; g++) {
        const moe_plan_group *gr = &plan->groups[g];
        const bool res = moe_cache_resident(s->cache, plan->layer, gr->expert);
        const double ready = s->ready_at[at(s, plan->layer, gr->expert)] - start;
        s->items[g] = (moe_split_item){.expert = gr->expert, .m = gr->n_tokens, .resident = res,
                                       .ready_us = res && ready > 0 ? ready : 0.0,
                                       .cpu_us = moe_sched_cpu_us(s, gr->n_tokens),
                                       .gpu_us = moe_sched_gpu_us(s, gr->n_tokens), .where = MOE_ON_CPU};
    }
}

static void assign(moe_sched *s, uint32_t n, const moe_split_link *link) {
    moe_split_item *it = s->items;
    switch (s->cfg.policy) {
    case MOE_POLICY_STATIC_CPU:
        for (uint32_t i = 0; i < n; i++) it[i].where = MOE_ON_CPU;
        break;
    case MOE_POLICY_STATIC_HOT:
    case MOE_POLICY_LAYER_SPLIT:
        for (uint32_t i = 0; i < n; i++) it[i].where = it[i].resident ? MOE_ON_GPU : MOE_ON_CPU;
        break;
    case MOE_POLICY_FIDDLER: /* each miss on its own: copy it only if that alone beats the CPU */
        for (uint32_t i = 0; i < n; i++)
            it[i].where = it[i].resident || s->copy + it[i].gpu_us < it[i].cpu_us ? MOE_ON_GPU : MOE_ON_CPU;
        break;
    case MOE_POLICY_GPU_LRU:
    case MOE_POLICY_GPU_LFU:
        for (uint32_t i = 0; i < n; i++) it[i].where = MOE_ON_GPU;
        break;
    case MOE_POLICY_HYBRIMOE:
        moe_split_greedy(it, n, link, false, s->order);
        break;
    default:
        moe_split_greedy(it, n, link, !s->cfg.no_refine, s->order);
        break;
    }
}

moe_status moe_sched_layer(moe_sched *s, moe_plan *plan, uint64_t step, double start_us, const float *group_weight,
                           moe_sched_layer_out *out) {
    const uint32_t l = plan->layer, n = plan->n_groups;
    if (l >= s->cfg.n_layers || n > s->cfg.n_experts)
        return moe_fail(MOE_ERR_INVALID_ARG, "scheduler: layer %u with %u experts (the model has %u layers of %u)", l,
                        n, s->cfg.n_layers, s->cfg.n_experts);
    s->step = step;
    if (l > 0) {
        const double p = start_us - s->last_start[l - 1];
        s->est_period[l - 1] = s->est_period[l - 1] > 0 ? (1 - EST_A) * s->est_period[l - 1] + EST_A * p : p;
    }
    s->last_start[l] = start_us;
    moe_cache_begin_step(s->cache);
    for (uint32_t g = 0; g < n; g++) moe_cache_use(s->cache, l, plan->groups[g].expert);
    update_scores(s, plan, group_weight);
    make_items(s, plan, start_us);
    moe_split_link link = {.copy_us = s->copy, .link_free_us = s->link_free > start_us ? s->link_free - start_us : 0.0,
                           .gpu = uses_gpu(s->cfg.policy)};
    uint32_t hits = 0;
    for (uint32_t i = 0; i < n; i++) hits += s->items[i].resident;
    assign(s, n, &link);
    /* Copied experts must fit in the cache; one that cannot (the budget
     * full of experts this layer uses) runs on the CPU. */
    for (uint32_t i = 0; i < n; i++) {
        moe_split_item *it = &s->items[i];
        if (it->where != MOE_ON_GPU || it->resident) continue;
        if (moe_cache_admit(s->cache, l, it->expert) != MOE_OK) it->where = MOE_ON_CPU;
    }
    const double t = moe_split_time(s->items, n, &link);
    /* Arrivals of this layer's copies: in decreasing GPU time (split.h). */
    uint32_t copied = 0;
    memset(out, 0, sizeof *out);
    for (uint32_t i = 0; i < n; i++) {
        const moe_split_item *it = &s->items[i];
        plan->groups[i].where = it->where;
        plan->groups[i].copy = it->where == MOE_ON_GPU && !it->resident;
        if (it->where == MOE_ON_GPU) out->n_gpu++, out->gpu_busy_us += it->gpu_us;
        else out->cpu_busy_us += it->cpu_us;
        if (!plan->groups[i].copy) continue;
        uint32_t rank = 0;
        for (uint32_t j = 0; j < n; j++)
            if (s->items[j].where == MOE_ON_GPU && !s->items[j].resident &&
                (s->items[j].gpu_us > it->gpu_us || (s->items[j].gpu_us == it->gpu_us && j < i)))
                rank++;
        s->ready_at[at(s, l, it->expert)] = start_us + link.link_free_us + (rank + 1) * s->copy;
        copied++;
    }
    if (copied) s->link_free = start_us + link.link_free_us + copied * s->copy;
    out->end_us = start_us + t;
    out->n_active = n;
    out->hits = hits;
    out->n_copied = copied;
    out->bytes_copied = (uint64_t)copied * s->cfg.expert_bytes;
    s->est_moe[l] = s->est_moe[l] > 0 ? (1 - EST_A) * s->est_moe[l] + EST_A * t : t;
    return MOE_OK;
}

/* ---- prefetch ---- */

/* Estimated start of layer `layer + d` (d >= 1) when layer `layer` ends at
 * now: its gap to the next layer's start (the next layer's dense part),
 * then whole periods. */
static double est_start(const moe_sched *s, uint32_t layer, uint32_t d, double now) {
    double gap = s->est_period[layer] - s->est_moe[layer];
    double t = now + (gap > 0 ? gap : 0.0);
    for (uint32_t j = 1; j < d; j++) t += s->est_period[layer + j] > 0 ? s->est_period[layer + j] : s->est_moe[layer + j];
    return t;
}

/* The predicted layer `layer`'s items at `start` from the guesses; returns
 * how many. Confidences in s->conf. */
static uint32_t guess_items(moe_sched *s, uint32_t layer, const moe_sched_guess *g, uint32_t n, double start,
                            moe_split_item *items) {
    uint32_t k = 0;
    for (uint32_t i = 0; i < n && k < MOE_SPLIT_MAX; i++) {
        if (g[i].layer != layer || g[i].expert >= s->cfg.n_experts || !g[i].m) continue;
        const bool res = moe_cache_resident(s->cache, layer, g[i].expert);
        const double ready = s->ready_at[at(s, layer, g[i].expert)] - start;
        items[k] = (moe_split_item){.expert = g[i].expert, .m = g[i].m, .resident = res,
                                    .ready_us = res && ready > 0 ? ready : 0.0,
                                    .cpu_us = moe_sched_cpu_us(s, g[i].m), .gpu_us = moe_sched_gpu_us(s, g[i].m),
                                    .where = MOE_ON_CPU};
        s->conf[k] = g[i].confidence;
        k++;
    }
    return k;
}

static double plan_time(moe_sched *s, moe_split_item *items, uint32_t n, double link_free_rel) {
    const moe_split_link link = {.copy_us = s->copy, .link_free_us = link_free_rel > 0 ? link_free_rel : 0.0,
                                 .gpu = true};
    return moe_split_greedy(items, n, &link, false, s->order);
}

/* Queues (layer, expert) on the link and admits it; false if the cache has
 * no room that the policy may take. */
static bool issue(moe_sched *s, uint32_t layer, uint32_t expert, double now) {
    if (moe_cache_admit(s->cache, layer, expert) != MOE_OK) return false;
    moe_cache_protect(s->cache, layer, expert);
    const double from = s->link_free > now ? s->link_free : now;
    s->link_free = from + s->copy;
    s->ready_at[at(s, layer, expert)] = s->link_free;
    if (s->cfg.on_prefetch) s->cfg.on_prefetch(layer, expert, s->cfg.user);
    return true;
}

/* HybriMoE's prefetch: the next layer's experts in order of predicted
 * score, while each copy would land before that layer starts. */
static uint64_t prefetch_top_score(moe_sched *s, uint32_t layer, double now, const moe_sched_guess *g, uint32_t n) {
    const double start = est_start(s, layer, 1, now);
    uint64_t bytes = 0;
    bool used[MOE_SPLIT_MAX] = {0};
    for (;;) {
        uint32_t best = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++) {
            if (g[i].layer != layer + 1 || g[i].expert >= s->cfg.n_experts || used[g[i].expert]) continue;
            if (moe_cache_resident(s->cache, g[i].layer, g[i].expert)) continue;
            if (best == UINT32_MAX || (double)g[i].confidence * g[i].m > (double)g[best].confidence * g[best].m) best = i;
        }
        if (best == UINT32_MAX) break;
        used[g[best].expert] = true;
        const double from = s->link_free > now ? s->link_free : now;
        if (from + s->copy > start) break;
        if (!issue(s, g[best].layer, g[best].expert, now)) break;
        bytes += s->cfg.expert_bytes;
    }
    return bytes;
}

/* moerun: what a resident expert saves per step, in microseconds: how
 * often it is used times what one use saves. */
static double victim_us(const moe_sched *s, uint32_t layer, uint32_t expert) {
    const size_t i = at(s, layer, expert);
    const double m = s->m_avg[i] > 1.0 ? s->m_avg[i] : 1.0;
    return s->f_long[i] * saving(s, (uint32_t)(m + 0.5));
}

/* Impact-driven prefetch (moerun, oracle): each candidate's impact is how
 * much its predicted layer's planned time drops if it is resident (the
 * split re-run with it arriving when the link would deliver it), weighted
 * by the prediction's confidence, less what its copy delays the layers in
 * between (their own predicted copies wait behind it). The best candidate
 * goes first while its net impact is positive; then impacts are
 * recomputed. When the budget is full the copy evicts the cache's victim,
 * and only if that is worth it: for the oracle, the victim's score (its
 * saving at its next use per layer until then) must be below the impact;
 * for moerun, what the victim saves per step over PREFETCH_HORIZON_STEPS
 * steps must be below the impact plus the candidate's own saving over the
 * same steps. */
static uint64_t prefetch_impact(moe_sched *s, uint32_t layer, double now, const moe_sched_guess *g, uint32_t n) {
    const uint32_t depth = s->cfg.depth;
    uint64_t bytes = 0;
    double start[MOE_SCHED_MAX_DEPTH + 1];
    for (uint32_t d = 1; d <= depth && layer + d < s->cfg.n_layers; d++) start[d] = est_start(s, layer, d, now);
    for (uint32_t i = 0; i < n; i++)
        if (g[i].layer == layer + 1 && g[i].expert < s->cfg.n_experts) moe_cache_protect(s->cache, g[i].layer, g[i].expert);
    for (uint32_t copies = 0; copies < PREFETCH_MAX_COPIES; copies++) {
        const double from = s->link_free > now ? s->link_free : now;
        const double arrive = from + s->copy;
        double best_gain = 0.0, delay_cost = 0.0;
        uint32_t best_layer = 0, best_expert = 0;
        for (uint32_t d = 1; d <= depth && layer + d < s->cfg.n_layers; d++) {
            const uint32_t tl = layer + d;
            const uint32_t k = guess_items(s, tl, g, n, start[d], s->items);
            if (!k) continue;
            const double base = plan_time(s, s->items, k, from - start[d]);
            /* The candidates: non-resident, by confidence x what they would save. */
            uint32_t cand[PREFETCH_CANDIDATES], nc = 0;
            for (uint32_t i = 0; i < k; i++) {
                if (s->items[i].resident) continue;
                const double v = s->conf[i] * saving(s, s->items[i].m);
                uint32_t j = nc < PREFETCH_CANDIDATES ? nc++ : PREFETCH_CANDIDATES;
                while (j > 0 && s->conf[cand[j - 1]] * saving(s, s->items[cand[j - 1]].m) < v) {
                    if (j < PREFETCH_CANDIDATES) cand[j] = cand[j - 1];
                    j--;
                }
                if (j < PREFETCH_CANDIDATES) cand[j] = i;
            }
            for (uint32_t c = 0; c < nc; c++) {
                memcpy(s->trial, s->items, k * sizeof *s->trial);
                s->trial[cand[c]].resident = true;
                s->trial[cand[c]].ready_us = arrive - start[d] > 0 ? arrive - start[d] : 0.0;
                const double with = plan_time(s, s->trial, k, arrive - start[d]);
                const double gain = s->conf[cand[c]] * (base - with) - delay_cost;
                if (gain > best_gain) best_gain = gain, best_layer = tl, best_expert = s->items[cand[c]].expert;
            }
            /* What one more copy now delays this layer's own copies: charged
             * to candidates of the layers after it. */
            const double later = plan_time(s, s->items, k, arrive - start[d]);
            delay_cost += later > base ? later - base : 0.0;
        }
        if (best_gain <= 1e-3 || best_gain <= s->cfg.min_gain_us) break;
        /* Evict only what is worth less than this copy's gain (the value
         * scores are savings per step, in the same microseconds). */
        uint32_t vl, ve;
        const bool scored = s->cfg.policy == MOE_POLICY_ORACLE || !s->cfg.no_value_cache;
        if (moe_cache_used_bytes(s->cache) + s->cfg.expert_bytes > moe_cache_budget_bytes(s->cache)) {
            if (!moe_cache_peek_victim(s->cache, &vl, &ve)) break;
            if (s->cfg.policy == MOE_POLICY_ORACLE && moe_cache_score(s->cache, vl, ve) >= best_gain) break;
            if (s->cfg.policy == MOE_POLICY_MOERUN && scored &&
                PREFETCH_HORIZON_STEPS * victim_us(s, vl, ve) >=
                    best_gain + PREFETCH_HORIZON_STEPS * victim_us(s, best_layer, best_expert))
                break;
        }
        if (!issue(s, best_layer, best_expert, now)) break;
        bytes += s->cfg.expert_bytes;
    }
    return bytes;
}

uint64_t moe_sched_prefetch(moe_sched *s, uint32_t layer, double now_us, const moe_sched_guess *g, uint32_t n) {
    if (!s->cfg.depth || layer + 1 >= s->cfg.n_layers || !g || !n) return 0;
    switch (s->cfg.policy) {
    case MOE_POLICY_HYBRIMOE: return prefetch_top_score(s, layer, now_us, g, n);
    case MOE_POLICY_MOERUN:
    case MOE_POLICY_ORACLE: return prefetch_impact(s, layer, now_us, g, n);
    default: return 0;
    }
}
