/* test_sched.c - the scheduler (scheduler.h) and the timed simulation:
 * every policy's plans over random routings keep the budget and place
 * every expert; hand-worked cases of the split's use, of prefetch (never
 * evicting what the current or next layer needs, bounded by the link) and
 * of the virtual clock. */
#include <math.h>

#include "scheduler.h"
#include "tracesim.h"
#include "util.h"

enum { L = 4, E = 16, MAXT = 64 };

static double cpu_tab[MAXT + 1], gpu_tab[MAXT + 1];

/* CPU: 100 us + 5 us a token; GPU: 10 us + 0.1 us a token (m = 0: 0). */
static void tables(void) {
    for (int m = 0; m <= MAXT; m++) cpu_tab[m] = m ? 100.0 + 5.0 * m : 0.0, gpu_tab[m] = m ? 10.0 + 0.1 * m : 0.0;
}

static moe_sched *make(moe_policy_id p, uint64_t budget_experts, double copy_us) {
    tables();
    const moe_sched_config c = {.policy = p, .n_layers = L, .n_experts = E, .expert_bytes = 1000,
                                .budget_bytes = budget_experts * 1000, .max_tokens = MAXT,
                                .cpu_us = cpu_tab, .gpu_us = gpu_tab, .copy_us = copy_us};
    moe_sched *s = NULL;
    CHECK_OK(moe_sched_create(&s, &c));
    return s;
}

static void route(moe_plan *p, uint32_t layer, uint32_t n_tokens, uint32_t k, moe_rng *r) {
    int32_t ids[MAXT * 4];
    float w[MAXT * 4];
    test_routing(r, n_tokens, E, k, ids, w);
    CHECK_OK(moe_plan_route(p, layer, E, n_tokens, k, ids));
}

/* Every policy, random batches of 1..64 tokens, top-2..4, budgets of 4..40
 * experts, cheap and dear copies: the cache never holds more than the
 * budget; every group is on a side; a GPU group is resident after the
 * call, and it was copied exactly when it was not resident before; the
 * static policies never copy; static-cpu never uses the GPU; gpu-lru puts
 * every expert on the GPU when the budget can take the layer. */
static void plans_keep_budget_and_place_every_expert(void) {
    moe_plan p;
    moe_plan_init(&p);
    for (int pol = 0; pol < MOE_POLICY_COUNT_; pol++) {
        moe_rng r = {42u + (uint64_t)pol};
        for (int trial = 0; trial < 6; trial++) {
            const uint64_t budget = 4 + moe_rng_below(&r, 37);
            moe_sched *s = make((moe_policy_id)pol, budget, trial % 2 ? 30.0 : 400.0);
            const moe_cache *c = moe_sched_cache(s);
            double clock = 0;
            for (uint64_t step = 0; step < 40; step++)
                for (uint32_t l = 0; l < L; l++) {
                    const uint32_t n = 1 + moe_rng_below(&r, MAXT), k = 2 + moe_rng_below(&r, 3);
                    route(&p, l, n, k, &r);
                    bool was[E];
                    for (uint32_t g = 0; g < p.n_groups; g++) was[g] = moe_cache_resident(c, l, p.groups[g].expert);
                    moe_sched_layer_out o;
                    CHECK_OK(moe_sched_layer(s, &p, step, clock + 5, NULL, &o));
                    CHECK(o.end_us >= clock + 5);
                    clock = o.end_us;
                    CHECK(moe_cache_used_bytes(c) <= moe_cache_budget_bytes(c));
                    uint32_t gpu = 0, copied = 0;
                    for (uint32_t g = 0; g < p.n_groups; g++) {
                        const moe_plan_group *gr = &p.groups[g];
                        CHECK(gr->where == MOE_ON_CPU || gr->where == MOE_ON_GPU);
                        if (gr->where != MOE_ON_GPU) continue;
                        gpu++;
                        CHECK(moe_cache_resident(c, l, gr->expert));
                        CHECK(gr->copy == !was[g]);
                        copied += gr->copy;
                    }
                    CHECK_EQ(o.n_gpu, gpu);
                    CHECK_EQ(o.n_copied, copied);
                    if (pol == MOE_POLICY_STATIC_CPU) CHECK_EQ(gpu, 0);
                    if (pol == MOE_POLICY_STATIC_CPU || pol == MOE_POLICY_STATIC_HOT || pol == MOE_POLICY_LAYER_SPLIT)
                        CHECK_EQ(copied, 0);
                    if (pol == MOE_POLICY_GPU_LRU && p.n_groups <= budget) CHECK_EQ(gpu, p.n_groups);
                }
            moe_sched_free(&s);
            CHECK(s == NULL);
        }
    }
    moe_plan_release(&p);
}

/* Decode with a dear link (a copy costs 8 CPU calls): moerun and hybrimoe
 * never copy on demand (the CPU finishes sooner); gpu-lru does; with a
 * cheap link and many tokens, moerun copies. */
static void the_split_decides_copies(void) {
    moe_plan p;
    moe_plan_init(&p);
    const int32_t one[2] = {3, 7};
    CHECK_OK(moe_plan_route(&p, 0, E, 1, 2, one));
    moe_sched_layer_out o;
    const moe_policy_id none[] = {MOE_POLICY_MOERUN, MOE_POLICY_HYBRIMOE, MOE_POLICY_FIDDLER};
    for (int i = 0; i < 3; i++) {
        moe_sched *s = make(none[i], 8, 800.0);
        CHECK_OK(moe_sched_layer(s, &p, 0, 0.0, NULL, &o));
        CHECK_EQ(o.n_copied, 0);
        CHECK_NEAR(o.end_us, 210.0, 1e-9); /* two CPU calls of 105 */
        moe_sched_free(&s);
    }
    moe_sched *s = make(MOE_POLICY_GPU_LRU, 8, 800.0);
    CHECK_OK(moe_sched_layer(s, &p, 0, 0.0, NULL, &o));
    CHECK_EQ(o.n_copied, 2);
    CHECK_NEAR(o.end_us, 1600.0 + 10.1, 1e-9); /* both copies, then the second's compute */
    moe_sched_free(&s);
    /* 64 tokens on one expert: 420 us on the CPU, 30 + 16.4 on the GPU. */
    int32_t many[64];
    for (int t = 0; t < 64; t++) many[t] = 5;
    CHECK_OK(moe_plan_route(&p, 0, E, 64, 1, many));
    s = make(MOE_POLICY_MOERUN, 8, 30.0);
    CHECK_OK(moe_sched_layer(s, &p, 0, 0.0, NULL, &o));
    CHECK_EQ(o.n_copied, 1);
    CHECK(p.groups[0].where == MOE_ON_GPU && p.groups[0].copy);
    CHECK_NEAR(o.end_us, 30.0 + 16.4, 1e-9);
    moe_sched_free(&s);
    moe_plan_release(&p);
}

/* The fixed sets: static-hot (and every cached policy's warm start) takes
 * the most used experts of the whole model up to the budget; layer-split
 * whole layers from the first; static-cpu nothing. Preloading past the
 * budget is refused. */
static void preload_sets(void) {
    uint64_t uses[L * E] = {0};
    uses[3 * E + 5] = 50, uses[0 * E + 1] = 40, uses[2 * E + 7] = 30; /* then all 0 */
    uint32_t pl[L * E], pe[L * E];
    moe_sched *s = make(MOE_POLICY_STATIC_HOT, 20, 100.0);
    const uint32_t n = moe_sched_preload_set(s, uses, pl, pe);
    CHECK_EQ(n, 20);
    CHECK(pl[0] == 3 && pe[0] == 5 && pl[1] == 0 && pe[1] == 1 && pl[2] == 2 && pe[2] == 7);
    for (uint32_t i = 0; i < n; i++) CHECK_OK(moe_sched_preload(s, pl[i], pe[i]));
    CHECK_STATUS(moe_sched_preload(s, 1, 15), MOE_ERR_STATE);
    CHECK_ERROR_MENTIONS("budget is full");
    moe_sched_free(&s);
    s = make(MOE_POLICY_LAYER_SPLIT, 40, 100.0); /* 2.5 layers' worth: 2 whole layers */
    CHECK_EQ(moe_sched_preload_set(s, uses, pl, pe), 2 * E);
    CHECK(pl[0] == 0 && pe[0] == 0 && pl[2 * E - 1] == 1 && pe[2 * E - 1] == E - 1);
    moe_sched_free(&s);
    s = make(MOE_POLICY_STATIC_CPU, 40, 100.0);
    CHECK_EQ(moe_sched_preload_set(s, uses, pl, pe), 0);
    CHECK_STATUS(moe_sched_preload(s, 0, 0), MOE_ERR_STATE);
    moe_sched_free(&s);
}

/* Fiddler judges each miss alone: with a 50 us copy, an expert of 1 token
 * (CPU 105, copy + GPU 60.1) is copied; with a 200 us copy it is not, and
 * a resident expert always runs on the GPU. Static-hot never copies. */
static void fiddler_and_static_hot(void) {
    moe_plan p;
    moe_plan_init(&p);
    const int32_t ids[2] = {2, 9};
    CHECK_OK(moe_plan_route(&p, 1, E, 1, 2, ids));
    for (int dear = 0; dear < 2; dear++) {
        moe_sched *s = make(MOE_POLICY_FIDDLER, 8, dear ? 200.0 : 50.0);
        CHECK_OK(moe_sched_preload(s, 1, 9));
        moe_sched_layer_out o;
        CHECK_OK(moe_sched_layer(s, &p, 0, 0.0, NULL, &o));
        CHECK(p.groups[1].where == MOE_ON_GPU && !p.groups[1].copy); /* expert 9, resident */
        CHECK(p.groups[0].where == (dear ? MOE_ON_CPU : MOE_ON_GPU));
        CHECK_EQ(o.n_copied, dear ? 0 : 1);
        moe_sched_free(&s);
    }
    moe_sched *s = make(MOE_POLICY_STATIC_HOT, 8, 50.0);
    CHECK_OK(moe_sched_preload(s, 1, 9));
    moe_sched_layer_out o;
    CHECK_OK(moe_sched_layer(s, &p, 0, 0.0, NULL, &o));
    CHECK(p.groups[0].where == MOE_ON_CPU && p.groups[1].where == MOE_ON_GPU && o.n_copied == 0);
    CHECK_NEAR(o.end_us, 105.0, 1e-9);
    moe_sched_free(&s);
    moe_plan_release(&p);
}

/* A budget below one expert is refused with a clear message; so are more
 * experts per layer than a split can take. */
static void bad_configs(void) {
    tables();
    moe_sched_config c = {.policy = MOE_POLICY_MOERUN, .n_layers = L, .n_experts = E, .expert_bytes = 1000,
                          .budget_bytes = 999, .max_tokens = MAXT, .cpu_us = cpu_tab, .gpu_us = gpu_tab,
                          .copy_us = 10};
    moe_sched *s = NULL;
    CHECK_STATUS(moe_sched_create(&s, &c), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("smaller than one expert");
    c.policy = MOE_POLICY_STATIC_CPU; /* needs no GPU room */
    CHECK_OK(moe_sched_create(&s, &c));
    moe_sched_free(&s);
    c.policy = MOE_POLICY_MOERUN, c.budget_bytes = 4000, c.n_experts = MOE_SPLIT_MAX + 1;
    CHECK_STATUS(moe_sched_create(&s, &c), MOE_ERR_UNSUPPORTED);
    c.n_experts = E, c.copy_us = 0;
    CHECK_STATUS(moe_sched_create(&s, &c), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("no copy time");
    c.copy_us = 10, c.depth = MOE_SCHED_MAX_DEPTH + 1;
    CHECK_STATUS(moe_sched_create(&s, &c), MOE_ERR_INVALID_ARG);
}

/* Prefetch over random layers (moerun, hybrimoe, oracle; budgets tight):
 * it never evicts an expert the current layer used or the next layer is
 * predicted to use; it queues whole copies one after another on the link
 * (bytes are whole experts, at most 16 a call); the budget holds. */
static void prefetch_never_evicts_needed_experts(void) {
    moe_plan p;
    moe_plan_init(&p);
    const moe_policy_id pols[] = {MOE_POLICY_MOERUN, MOE_POLICY_HYBRIMOE, MOE_POLICY_ORACLE};
    for (int pi = 0; pi < 3; pi++) {
        moe_rng r = {7u + (uint64_t)pi};
        moe_sched *s = make(pols[pi], 10, 20.0);
        const moe_cache *c = moe_sched_cache(s);
        double clock = 0;
        uint64_t total = 0;
        for (uint64_t step = 0; step < 60; step++)
            for (uint32_t l = 0; l < L; l++) {
                route(&p, l, 1 + moe_rng_below(&r, 8), 2, &r);
                moe_sched_layer_out o;
                CHECK_OK(moe_sched_layer(s, &p, step, clock + 50, NULL, &o));
                clock = o.end_us;
                moe_sched_guess g[2 * E];
                uint32_t n = 0;
                for (uint32_t d = 1; d <= 2 && l + d < L; d++)
                    for (uint32_t e = 0; e < E; e++)
                        if (moe_rng_below(&r, 4) == 0)
                            g[n++] = (moe_sched_guess){.layer = l + d, .expert = e, .m = 1 + moe_rng_below(&r, 20),
                                                       .confidence = moe_rng_range(&r, 0.2f, 1.0f)};
                bool cur[E], nxt[E];
                for (uint32_t e = 0; e < E; e++) cur[e] = moe_cache_resident(c, l, e), nxt[e] = l + 1 < L && moe_cache_resident(c, l + 1, e);
                const uint64_t b = moe_sched_prefetch(s, l, clock, g, n);
                total += b;
                CHECK(b % 1000 == 0 && b <= 16 * 1000);
                CHECK(moe_cache_used_bytes(c) <= moe_cache_budget_bytes(c));
                for (uint32_t gi = 0; gi < p.n_groups; gi++)
                    if (cur[p.groups[gi].expert]) CHECK(moe_cache_resident(c, l, p.groups[gi].expert));
                for (uint32_t i = 0; i < n; i++)
                    if (g[i].layer == l + 1 && nxt[g[i].expert] && pols[pi] != MOE_POLICY_HYBRIMOE)
                        CHECK(moe_cache_resident(c, l + 1, g[i].expert));
            }
        CHECK(total > 0); /* cheap copies and confident guesses: something was worth copying */
        moe_sched_free(&s);
    }
    moe_plan_release(&p);
}

/* Impact: a confident guess of a big expert in the next layer is copied
 * when the link can bring it before that layer (a step of history says the
 * next layer starts 1000 us after this one); a guess of confidence 0 is
 * not; with no time before the next layer a prefetch gains nothing over a
 * copy on demand and is not made; hybrimoe copies only what lands before
 * the next layer starts. */
static void prefetch_follows_impact(void) {
    moe_plan p;
    moe_plan_init(&p);
    const int32_t one[1] = {1};
    for (int sure = 0; sure < 3; sure++) {
        moe_sched *s = make(MOE_POLICY_MOERUN, 8, 50.0);
        moe_sched_layer_out o;
        for (uint32_t l = 0; l < 2 && sure < 2; l++) { /* sure == 2: no history, the next layer starts at once */
            CHECK_OK(moe_plan_route(&p, l, E, 1, 1, one));
            CHECK_OK(moe_sched_layer(s, &p, 0, l * 1000.0, NULL, &o));
        }
        CHECK_OK(moe_plan_route(&p, 0, E, 1, 1, one));
        CHECK_OK(moe_sched_layer(s, &p, 1, 5000.0, NULL, &o));
        const moe_sched_guess g = {.layer = 1, .expert = 9, .m = 60, .confidence = sure ? 0.9f : 0.0f};
        const uint64_t b = moe_sched_prefetch(s, 0, o.end_us, &g, 1);
        if (sure == 2) {
            CHECK_EQ(b, 0);
            moe_sched_free(&s);
            continue;
        }
        CHECK_EQ(b, sure ? 1000u : 0u);
        CHECK(moe_cache_resident(moe_sched_cache(s), 1, 9) == (sure != 0));
        moe_sched_free(&s);
    }
    /* hybrimoe, a copy of 1000 us and a next layer that starts at once:
     * nothing lands in time, nothing is queued. */
    moe_sched *s = make(MOE_POLICY_HYBRIMOE, 8, 1000.0);
    moe_sched_layer_out o;
    CHECK_OK(moe_plan_route(&p, 0, E, 1, 1, one));
    CHECK_OK(moe_sched_layer(s, &p, 0, 0.0, NULL, &o));
    const moe_sched_guess g = {.layer = 1, .expert = 9, .m = 60, .confidence = 1.0f};
    CHECK_EQ(moe_sched_prefetch(s, 0, o.end_us, &g, 1), 0);
    moe_sched_free(&s);
    moe_plan_release(&p);
}

/* The virtual clock, worked by hand: 2 layers, 3 decode tokens, top-1,
 * static-cpu: every layer costs its dense part (2 x the GPU time of 1
 * token = 20.2 us) plus one CPU call (105 us). */
static void timed_simulation_by_hand(void) {
    const char *text = "# moe-trace 1\nmodel hand\nlayers 2\nexperts 16\ntop_k 1\nseq a 3\n"
                       "1 | 2\n1 | 3\n4 | 2\n";
    moe_trace t;
    moe_trace_init(&t);
    CHECK_OK(moe_trace_parse(&t, text, strlen(text), "hand"));
    tables();
    moe_sim_params sp = {.sched = {.policy = MOE_POLICY_STATIC_CPU, .expert_bytes = 1000, .budget_bytes = 0,
                                   .cpu_us = cpu_tab, .gpu_us = gpu_tab, .copy_us = 10},
                         .mode = MOE_SIM_DECODE, .batch = 1, .dense_experts = 2.0};
    moe_sim_result r;
    CHECK_OK(moe_sim_timed(&t, &sp, &r));
    CHECK_EQ(r.steps, 3);
    CHECK_EQ(r.needed, 6);
    CHECK_EQ(r.hits, 0);
    CHECK_NEAR(r.total_us, 6 * (20.2 + 105.0), 1e-6);
    CHECK_NEAR(r.step_us, 2 * (20.2 + 105.0), 1e-6);
    /* gpu-lru with room for 2 experts, a 30 us copy: token 1 copies 1 and 2;
     * token 2 hits 1 and copies 3 (evicting 2); token 3 copies 4 (evicting
     * 1) and hits... 2 is gone: copies 2. Hits: 1 of 6. */
    sp.sched.policy = MOE_POLICY_GPU_LRU, sp.sched.budget_bytes = 2000, sp.cold = true;
    CHECK_OK(moe_sim_timed(&t, &sp, &r));
    CHECK_EQ(r.hits, 1);
    CHECK_EQ(r.bytes_copied, 5000);
    /* A batch of 2 tokens per step: 2 steps; prefill chunks stay within the sequence. */
    sp.batch = 2;
    CHECK_OK(moe_sim_timed(&t, &sp, &r));
    CHECK_EQ(r.steps, 2);
    sp.mode = MOE_SIM_PREFILL, sp.chunk = 2;
    CHECK_OK(moe_sim_timed(&t, &sp, &r));
    CHECK_EQ(r.steps, 2);
    CHECK_EQ(r.tokens, 3);
    sp.chunk = 0;
    CHECK_STATUS(moe_sim_timed(&t, &sp, &r), MOE_ERR_INVALID_ARG);
    moe_trace_free(&t);
}

TEST_MAIN("sched", TEST_CASE(plans_keep_budget_and_place_every_expert), TEST_CASE(the_split_decides_copies),
          TEST_CASE(preload_sets), TEST_CASE(fiddler_and_static_hot), TEST_CASE(bad_configs), TEST_CASE(prefetch_never_evicts_needed_experts), TEST_CASE(prefetch_follows_impact),
          TEST_CASE(timed_simulation_by_hand))
