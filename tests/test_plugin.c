/* test_plugin.c - the plugin API (docs/plugin.md): routing rules against
 * a plain computation, moe_layer_forward_logits against moe_layer_forward
 * with the same routing, the asynchronous form against the synchronous one
 * and the state rules while it is in flight, router lookahead
 * (moe_hint_next), and bad input. */
#define _POSIX_C_SOURCE 200809L
#include "model_registry.h"
#include "util.h"

#ifndef MOE_PROFILES_DIR
#error "MOE_PROFILES_DIR must name profiles/machines"
#endif

/* The rule computed plainly in double: ids by descending selection score
 * (probability plus bias; ties to the lower id) among the kept groups,
 * groups ranked by sorting each one's scores, weights as moerun defines
 * them. */
static int desc_cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void route_plain(const moe_routing *r, uint32_t E, const float *lg, int32_t *ids, double *w) {
    double p[64], s[64], mx = lg[0], sum = 0;
    for (uint32_t e = 1; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
    for (uint32_t e = 0; e < E; e++) {
        p[e] = r->scoring == MOE_SCORING_SIGMOID ? 1.0 / (1.0 + exp(-(double)lg[e])) : exp((double)lg[e] - mx);
        sum += p[e];
    }
    if (r->scoring == MOE_SCORING_SOFTMAX)
        for (uint32_t e = 0; e < E; e++) p[e] /= sum;
    for (uint32_t e = 0; e < E; e++) s[e] = p[e] + (r->bias ? r->bias[e] : 0.0);
    if (r->n_group > 1) {
        const uint32_t G = r->n_group, per = E / G;
        double gs[64];
        for (uint32_t g = 0; g < G; g++) {
            double v[64];
            memcpy(v, s + g * per, per * sizeof *v);
            qsort(v, per, sizeof *v, desc_cmp);
            gs[g] = v[0] + v[1];
        }
        bool kept[64] = {false};
        for (uint32_t j = 0; j < r->topk_group; j++) {
            int32_t best = -1;
            for (uint32_t g = 0; g < G; g++)
                if (!kept[g] && (best < 0 || gs[g] > gs[best])) best = (int32_t)g;
            kept[best] = true;
        }
        for (uint32_t e = 0; e < E; e++)
            if (!kept[e / per]) s[e] = -INFINITY;
    }
    double total = 0;
    for (uint32_t j = 0; j < r->top_k; j++) {
        int32_t best = -1;
        for (uint32_t e = 0; e < E; e++) {
            bool taken = false;
            for (uint32_t q = 0; q < j; q++) taken |= ids[q] == (int32_t)e;
            if (!taken && (best < 0 || s[e] > s[best])) best = (int32_t)e;
        }
        ids[j] = best, w[j] = p[best], total += p[best];
    }
    for (uint32_t j = 0; j < r->top_k; j++) w[j] = (r->norm_topk ? w[j] / total : w[j]) * r->scale;
}

static void routing_rules_match_a_plain_computation(void) {
    moe_rng rng = {3};
    const uint32_t E = 16;
    float bias[16];
    for (uint32_t e = 0; e < E; e++) bias[e] = moe_rng_range(&rng, -0.5f, 0.5f);
    moe_routing rules[7] = {moe_routing_defaults(2), moe_routing_defaults(6), moe_routing_defaults(4), moe_routing_defaults(1),
                            moe_routing_defaults(4), moe_routing_defaults(3), moe_routing_defaults(5)};
    rules[1].norm_topk = 0, rules[1].scale = 16.0f;             /* DeepSeek-V2-like */
    rules[2].scoring = MOE_SCORING_SIGMOID;                    /* sigmoid, renormalised */
    rules[3].scoring = MOE_SCORING_SIGMOID, rules[3].norm_topk = 0;
    rules[4].scoring = MOE_SCORING_SIGMOID, rules[4].scale = 2.5f; /* DeepSeek-V3-like: bias, 4 groups, keep 2 */
    rules[4].bias = bias, rules[4].n_group = 4, rules[4].topk_group = 2;
    rules[5].bias = bias;                                      /* softmax with a bias, no groups */
    rules[6].scoring = MOE_SCORING_SIGMOID, rules[6].n_group = 8, rules[6].topk_group = 3; /* groups of 2, no bias */
    int changed = 0; /* tokens whose experts the groups and bias changed */
    for (int ri = 0; ri < 7; ri++)
        for (int round = 0; round < 50; round++) {
            float lg[16], probs[16], w[6], w2[6];
            int32_t ids[6], want_ids[6], ids2[6];
            double want_w[6];
            for (uint32_t e = 0; e < E; e++) lg[e] = moe_rng_range(&rng, -4.0f, 4.0f);
            if (round == 0 && !rules[ri].bias) lg[3] = lg[9] = 10.0f; /* a tie: the lower id first */
            moe_route_logits(&rules[ri], E, 1, lg, probs, ids, w);
            CHECK_EQ(moe_route(&rules[ri], E, 1, lg, ids2, w2), MOE_OK);
            route_plain(&rules[ri], E, lg, want_ids, want_w);
            for (uint32_t j = 0; j < rules[ri].top_k; j++) {
                CHECK_EQ(ids[j], want_ids[j]);
                CHECK_EQ(ids2[j], ids[j]);
                CHECK(w2[j] == w[j]);
                CHECK(fabs(w[j] - want_w[j]) <= 1e-5 * (1 + fabs(want_w[j])));
            }
            if (round == 0 && rules[ri].top_k >= 2 && !rules[ri].bias && rules[ri].n_group <= 1)
                CHECK(ids[0] == 3 && ids[1] == 9);
            if (rules[ri].bias || rules[ri].n_group > 1) {
                moe_routing plain = rules[ri];
                plain.bias = NULL, plain.n_group = 0;
                int32_t pid[6];
                float pw[6];
                moe_route_logits(&plain, E, 1, lg, probs, pid, pw);
                for (uint32_t j = 0; j < rules[ri].top_k; j++) {
                    bool in = false;
                    for (uint32_t q = 0; q < rules[ri].top_k; q++) in |= pid[q] == ids[j];
                    if (!in) {
                        changed++;
                        break;
                    }
                }
            }
        }
    CHECK(changed > 10); /* the selection rules are really exercised */
    /* NaN logits route somewhere valid and never crash. */
    float lg[16], probs[16], w[4];
    int32_t ids[4];
    for (int ri = 0; ri < 5; ri += 4) {
        for (uint32_t e = 0; e < E; e++) lg[e] = NAN;
        moe_route_logits(&rules[ri], E, 1, lg, probs, ids, w);
        for (uint32_t j = 0; j < rules[ri].top_k; j++) {
            CHECK(ids[j] >= 0 && ids[j] < 16);
            for (uint32_t q = 0; q < j; q++) CHECK(ids[j] != ids[q]);
        }
    }
}

/* A program built against API 5-7: its moe_routing, and the library's
 * moe_routing_init of that name, which returns that struct. */
typedef struct routing_v7 {
    uint32_t struct_size, top_k;
    moe_scoring scoring;
    int32_t norm_topk;
    float scale;
} routing_v7;
#undef moe_routing_init
MOE_EXPORT routing_v7 moe_routing_init(uint32_t top_k);

/* moe_route checks its rule as moe_model_set_router does; a caller built
 * against API 5-7 (the 20-byte struct, without bias and groups) still
 * routes, and the old entry point writes no more than that struct. */
static void route_checks_its_rule(void) {
    float lg[16] = {0}, w[4];
    int32_t ids[4];
    for (int e = 0; e < 16; e++) lg[e] = (float)e;
    struct {
        routing_v7 r;
        uint32_t guard[8];
    } old;
    for (int i = 0; i < 8; i++) old.guard[i] = 0xA5A5A5A5u;
    old.r = moe_routing_init(2);
    CHECK(sizeof old.r == 20 && old.r.struct_size == 20 && old.r.top_k == 2 && old.r.norm_topk == 1);
    for (int i = 0; i < 8; i++) CHECK(old.guard[i] == 0xA5A5A5A5u);
    CHECK_EQ(moe_route((const moe_routing *)(const void *)&old, 16, 1, lg, ids, w), MOE_OK);
    CHECK(ids[0] == 15 && ids[1] == 14);
    moe_routing r = moe_routing_defaults(2);
    r.struct_size = 20;
    r.n_group = 7; /* beyond the old struct: never read */
    CHECK_EQ(moe_route(&r, 16, 1, lg, ids, w), MOE_OK);
    CHECK(ids[0] == 15 && ids[1] == 14);
    r.struct_size = 4;
    CHECK_EQ(moe_route(&r, 16, 1, lg, ids, w), MOE_ERR_INVALID_ARG);
    const struct {
        uint32_t top_k, n_group, topk_group;
        const char *msg;
    } bad[] = {
        {2, 5, 1, "n_group 5 must divide the 16 experts"}, {2, 16, 1, "groups of at least 2"},
        {2, 4, 0, "topk_group 0 must be in 1..n_group (4)"}, {2, 4, 5, "topk_group 5"},
        {9, 4, 2, "top_k 9 is more than the 8 experts of topk_group 2 groups"}, {17, 0, 0, "top_k = 17"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = moe_routing_defaults(bad[i].top_k);
        r.n_group = bad[i].n_group, r.topk_group = bad[i].topk_group;
        CHECK_EQ(moe_route(&r, 16, 1, lg, ids, w), MOE_ERR_INVALID_ARG);
        CHECK(strstr(moe_last_error(), bad[i].msg) != NULL);
    }
    r = moe_routing_defaults(2);
    CHECK_EQ(moe_route(&r, 16, 1, NULL, ids, w), MOE_ERR_INVALID_ARG);
    CHECK_EQ(moe_route(&r, 16, 0, NULL, NULL, NULL), MOE_OK);
}

/* A model with routers: f32 router weights [E, H] per layer. */
typedef struct with_routers {
    test_model tm;
    float *router;
} with_routers;

static void make_with_routers(with_routers *w, uint32_t L, uint32_t E, uint32_t H, uint32_t I, const moe_routing *r) {
    test_model_make(&w->tm, L, E, H, I, MOE_DTYPE_F32, 21);
    w->router = malloc((size_t)L * E * H * sizeof *w->router);
    moe_rng rng = {8};
    for (size_t i = 0; i < (size_t)L * E * H; i++) w->router[i] = moe_rng_range(&rng, -0.5f, 0.5f);
    for (uint32_t l = 0; l < L; l++)
        CHECK_OK(moe_model_set_router(w->tm.model, l, r, w->router + (size_t)l * E * H, MOE_DTYPE_F32));
}

static void free_with_routers(with_routers *w) {
    test_model_free(&w->tm);
    free(w->router);
}

static moe_runtime_t *runtime(moe_model_t *m, bool sim) {
    moe_runtime_params p = moe_runtime_default_params();
    p.n_threads = 2;
    p.profile_path = "";
    if (sim) {
        p.device = MOE_DEVICE_SIM;
        p.profile_path = MOE_PROFILES_DIR "/ref-h100-pcie5-2s-xeon8480.txt";
        p.profile_any_host = 1;
    }
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, m, &p));
    return rt;
}

/* forward_logits = forward with the ids and weights the rule gives. */
static void forward_logits_equals_forward(void) {
    const uint32_t L = 2, E = 8, H = 48, I = 40, n = 5;
    moe_routing r = moe_routing_defaults(3);
    r.norm_topk = 0, r.scale = 2.5f;
    with_routers w;
    make_with_routers(&w, L, E, H, I, &r);
    moe_runtime_t *rt = runtime(w.tm.model, false);
    moe_rng rng = {4};
    float x[5 * 48], lg[5 * 8], ya[5 * 48], yb[5 * 48], probs[8], wt[5 * 3];
    int32_t ids[5 * 3];
    for (int round = 0; round < 4 && rt; round++) {
        test_fill(&rng, x, n * H);
        test_fill(&rng, lg, n * E);
        CHECK_OK(moe_layer_forward_logits(rt, 1, n, x, lg, ya));
        moe_route_logits(&r, E, n, lg, probs, ids, wt);
        CHECK_OK(moe_layer_forward(rt, 1, n, x, 3, ids, wt, yb));
        CHECK(memcmp(ya, yb, sizeof ya) == 0);
    }
    CHECK_OK(moe_layer_forward_logits(rt, 0, 0, NULL, NULL, NULL)); /* no tokens */
    CHECK_STATUS(moe_layer_forward_logits(rt, 0, n, x, NULL, ya), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_forward_logits(rt, 2, n, x, lg, ya), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_forward_logits(NULL, 0, n, x, lg, ya), MOE_ERR_INVALID_ARG);
    moe_runtime_free(&rt);
    free_with_routers(&w);
    /* A layer without a routing rule. */
    test_model tm;
    test_model_make(&tm, 1, E, H, I, MOE_DTYPE_F32, 2);
    rt = runtime(tm.model, false);
    CHECK_STATUS(moe_layer_forward_logits(rt, 0, n, x, lg, ya), MOE_ERR_STATE);
    CHECK(strstr(moe_last_error(), "moe_model_set_router") != NULL);
    moe_runtime_free(&rt);
    test_model_free(&tm);
}

static void set_router_refuses_bad_input(void) {
    moe_model_t *m = NULL;
    CHECK_OK(moe_model_create(&m, 2));
    const moe_layer_desc d = moe_layer_desc_init(8, 16, 24, MOE_DTYPE_F32);
    float router[8 * 16] = {0};
    moe_routing r = moe_routing_defaults(2);
    CHECK_STATUS(moe_model_set_router(m, 0, &r, router, MOE_DTYPE_F32), MOE_ERR_STATE); /* not described */
    CHECK_OK(moe_model_set_layer(m, 0, &d));
    CHECK_STATUS(moe_model_set_router(m, 2, &r, router, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_model_set_router(m, 0, NULL, router, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG);
    moe_routing bad = r;
    bad.struct_size = 4;
    CHECK_STATUS(moe_model_set_router(m, 0, &bad, router, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG);
    bad = r, bad.top_k = 0;
    CHECK_STATUS(moe_model_set_router(m, 0, &bad, router, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG);
    bad = r, bad.top_k = 9;
    CHECK_STATUS(moe_model_set_router(m, 0, &bad, router, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG);
    bad = r, bad.scale = 0.0f;
    CHECK_STATUS(moe_model_set_router(m, 0, &bad, router, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG);
    bad = r, bad.scoring = (moe_scoring)7;
    CHECK_STATUS(moe_model_set_router(m, 0, &bad, router, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_model_set_router(m, 0, &r, router, MOE_DTYPE_I8), MOE_ERR_UNSUPPORTED);
    CHECK_OK(moe_model_set_router(m, 0, &r, NULL, MOE_DTYPE_F32)); /* a rule without weights */
    CHECK_STATUS(moe_model_set_router(m, 0, &r, router, MOE_DTYPE_F32), MOE_ERR_STATE); /* twice */
    CHECK_STATUS(moe_model_set_router(NULL, 0, &r, router, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG);
    moe_model_free(&m);
}

/* submit + wait = the synchronous forward, bit for bit; in flight, the
 * runtime refuses other calls; errors inside the forward reach the waiter
 * with their message; freeing with a forward in flight waits for it. */
static void submit_and_wait(void) {
    const uint32_t L = 3, E = 8, H = 64, I = 96, k = 2, n = 7;
    test_model tm;
    test_model_make(&tm, L, E, H, I, MOE_DTYPE_F32, 11);
    moe_runtime_t *rt = runtime(tm.model, false);
    if (!rt) {
        test_model_free(&tm);
        return;
    }
    moe_rng rng = {6};
    float x[7 * 64], ya[7 * 64], yb[7 * 64], w[7 * 2];
    int32_t ids[7 * 2];
    for (int round = 0; round < 6; round++) {
        const uint32_t l = (uint32_t)round % L;
        test_fill(&rng, x, n * H);
        test_routing(&rng, n, E, k, ids, w);
        CHECK_OK(moe_layer_forward(rt, l, n, x, k, ids, w, ya));
        CHECK_OK(moe_layer_forward_submit(rt, l, n, x, k, ids, w, yb));
        if (round == 0) { /* while in flight */
            moe_stats st;
            CHECK_STATUS(moe_layer_forward(rt, l, n, x, k, ids, w, ya), MOE_ERR_STATE);
            CHECK_STATUS(moe_layer_forward_submit(rt, l, n, x, k, ids, w, ya), MOE_ERR_STATE);
            CHECK_STATUS(moe_runtime_get_stats(rt, &st), MOE_ERR_STATE);
            CHECK_STATUS(moe_runtime_reset_stats(rt), MOE_ERR_STATE);
            CHECK_STATUS(moe_runtime_predict(rt, 1, n, k, ids), MOE_ERR_STATE);
            CHECK_STATUS(moe_hint_next(rt, 0, n, x), MOE_ERR_STATE);
            CHECK_STATUS(moe_dense_matmul(rt, x, MOE_DTYPE_F32, NULL, 4, 16, 1, x + 64, ya), MOE_ERR_STATE);
            CHECK_EQ(moe_runtime_lookahead(rt), 0);
        }
        CHECK_OK(moe_layer_wait(rt));
        CHECK(memcmp(ya, yb, sizeof ya) == 0);
    }
    CHECK_STATUS(moe_layer_wait(rt), MOE_ERR_STATE); /* nothing submitted */
    /* Bad arguments are refused at submission, and nothing is in flight. */
    CHECK_STATUS(moe_layer_forward_submit(rt, L, n, x, k, ids, w, yb), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_forward_submit(rt, 0, n, x, k, ids, w, NULL), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_wait(rt), MOE_ERR_STATE);
    /* An error inside the forward (an expert id out of range) reaches the waiter. */
    ids[3] = 99;
    CHECK_OK(moe_layer_forward_submit(rt, 0, n, x, k, ids, w, yb));
    CHECK_STATUS(moe_layer_wait(rt), MOE_ERR_INVALID_ARG);
    CHECK(strstr(moe_last_error(), "99") != NULL);
    ids[3] = 1;
    moe_stats st;
    CHECK_OK(moe_runtime_get_stats(rt, &st));
    CHECK_EQ(st.layer_calls, 12);
    /* Freed while in flight: the forward completes first. */
    CHECK_OK(moe_layer_forward_submit(rt, 1, n, x, k, ids, w, yb));
    moe_runtime_free(&rt);
    CHECK(rt == NULL);
    test_model_free(&tm);
}

/* moe_hint_next predicts the next layers from a hidden state through the
 * registered routers: on the simulated GPU the predictions are scored
 * when their layers run (lookahead pairs), results unchanged; on the CPU
 * it is a no-op; without router weights it predicts nothing. */
static void hint_next_predicts_through_the_routers(void) {
    const uint32_t L = 4, E = 8, H = 32, I = 48, n = 3;
    const moe_routing r = moe_routing_defaults(2);
    with_routers w;
    make_with_routers(&w, L, E, H, I, &r);
    moe_runtime_t *sim = runtime(w.tm.model, true), *cpu = runtime(w.tm.model, false);
    if (!sim || !cpu) {
        moe_runtime_free(&sim), moe_runtime_free(&cpu);
        free_with_routers(&w);
        return;
    }
    CHECK(moe_runtime_lookahead(sim) >= 1);
    moe_rng rng = {9};
    float x[3 * 32], lg[3 * 8], ya[3 * 32], yb[3 * 32];
    for (int pass = 0; pass < 5; pass++)
        for (uint32_t l = 0; l < L; l++) {
            test_fill(&rng, x, n * H);
            for (uint32_t t = 0; t < n; t++) /* the host's own router logits, from the same weights */
                for (uint32_t e = 0; e < E; e++) {
                    double s = 0;
                    for (uint32_t i = 0; i < H; i++) s += (double)w.router[((size_t)l * E + e) * H + i] * x[t * H + i];
                    lg[t * E + e] = (float)s;
                }
            CHECK_OK(moe_hint_next(sim, l, n, x));
            CHECK_OK(moe_hint_next(cpu, l, n, x));
            CHECK_OK(moe_layer_forward_logits(sim, l, n, x, lg, ya));
            CHECK_OK(moe_layer_forward_logits(cpu, l, n, x, lg, yb));
            CHECK(memcmp(ya, yb, sizeof ya) == 0);
        }
    moe_stats st;
    CHECK_OK(moe_runtime_get_stats(sim, &st));
    CHECK(st.lookahead_pairs[0] == 5ull * (L - 1) * n * 2 && st.lookahead_hits[0] <= st.lookahead_pairs[0]);
    CHECK_OK(moe_runtime_get_stats(cpu, &st));
    CHECK_EQ(st.lookahead_pairs[0], 0);
    CHECK_STATUS(moe_hint_next(sim, 0, n, NULL), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_hint_next(sim, L, n, x), MOE_ERR_INVALID_ARG);
    CHECK_OK(moe_hint_next(sim, L - 1, n, x)); /* nothing after the last layer */
    moe_runtime_free(&sim), moe_runtime_free(&cpu);
    free_with_routers(&w);
    /* Rules without weights: nothing to predict with. */
    test_model tm;
    test_model_make(&tm, L, E, H, I, MOE_DTYPE_F32, 2);
    for (uint32_t l = 0; l < L; l++) CHECK_OK(moe_model_set_router(tm.model, l, &r, NULL, MOE_DTYPE_F32));
    sim = runtime(tm.model, true);
    for (uint32_t l = 0; l < L && sim; l++) {
        CHECK_OK(moe_hint_next(sim, l, n, x));
        test_fill(&rng, lg, n * E);
        CHECK_OK(moe_layer_forward_logits(sim, l, n, x, lg, ya));
    }
    if (sim) CHECK_OK(moe_runtime_get_stats(sim, &st));
    if (sim) CHECK_EQ(st.lookahead_pairs[0], 0);
    moe_runtime_free(&sim);
    test_model_free(&tm);
}

TEST_MAIN("plugin", TEST_CASE(routing_rules_match_a_plain_computation), TEST_CASE(route_checks_its_rule), TEST_CASE(forward_logits_equals_forward),
          TEST_CASE(set_router_refuses_bad_input), TEST_CASE(submit_and_wait),
          TEST_CASE(hint_next_predicts_through_the_routers))
