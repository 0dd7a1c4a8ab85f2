/* test_forward.c - moe_layer_forward against a per-token computation with
 * the reference expert, on random shapes (odd sizes, unused experts, empty
 * batches), across thread counts and policies, and on bad input; on the
 * simulated GPU, against the CPU-only runtime bit for bit. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <unistd.h>

#include "expert.h"
#include "profile.h"
#include "device.h"
#include "util.h"

/* out[t] = sum_j w[t,j] * expert_{ids[t,j]}(x[t]), one token at a time. */
static void per_token(const test_model *tm, uint32_t layer, uint32_t n, const float *x, uint32_t k,
                      const int32_t *ids, const float *w, float *out) {
    const uint32_t H = tm->hidden;
    float *y = malloc(H * sizeof *y), *scratch = malloc(tm->inter * sizeof *scratch);
    for (uint32_t t = 0; t < n; t++) {
        float *o = out + (size_t)t * H;
        memset(o, 0, H * sizeof *o);
        for (uint32_t j = 0; j < k; j++) {
            uint32_t e = (uint32_t)ids[t * k + j];
            moe_expert_view v = {test_weight(tm, layer, e, 0), test_weight(tm, layer, e, 1),
                                 test_weight(tm, layer, e, 2), tm->dtype, H, tm->inter, test_scale(tm, layer, e, 0),
                                 test_scale(tm, layer, e, 1), test_scale(tm, layer, e, 2), false, tm->dtype};
            moe_ref_expert(&v, 1, x + (size_t)t * H, y, scratch);
            for (uint32_t i = 0; i < H; i++) o[i] += w[t * k + j] * y[i];
        }
    }
    free(y);
    free(scratch);
}

static moe_runtime_t *make_rt(moe_model_t *m, uint32_t threads, const char *policy) {
    moe_runtime_params p = moe_runtime_default_params();
    p.n_threads = threads;
    p.policy = policy;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, m, &p));
    return rt;
}

/* Parameters of a runtime on the simulated GPU modeled from one of
 * profiles/machines/, with two CPU threads. */
static moe_runtime_params sim_params(const char *policy, double budget, const char *profile) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", MOE_PROFILES_DIR, profile);
    moe_runtime_params p = moe_runtime_default_params();
    p.n_threads = 2;
    p.device = MOE_DEVICE_SIM;
    p.policy = policy;
    p.gpu_budget_fraction = budget;
    p.profile_path = path;
    p.profile_any_host = 1;
    return p;
}

static void matches_per_token_on_random_shapes(void) {
    moe_rng r = {2024};
    const moe_dtype types[4] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_F16, MOE_DTYPE_I8};
    for (int round = 0; round < 32; round++) {
        const uint32_t E = 1 + moe_rng_below(&r, 33), H = 1 + moe_rng_below(&r, 40),
                       I = 1 + moe_rng_below(&r, 50), L = 1 + moe_rng_below(&r, 3);
        const uint32_t k = 1 + moe_rng_below(&r, E < 8 ? E : 8), n = moe_rng_below(&r, 70);
        test_model tm;
        test_model_make(&tm, L, E, H, I, types[round % 4], (uint64_t)round);
        moe_runtime_t *a = make_rt(tm.model, 1, "static-cpu"), *b = make_rt(tm.model, 2, "static-cpu");
        const size_t act = (size_t)(n ? n : 1) * H;
        float *x = malloc(act * sizeof *x), *want = malloc(act * sizeof *x);
        float *ya = malloc(act * sizeof *x), *yb = malloc(act * sizeof *x), *w = malloc((n ? n : 1) * k * sizeof *w);
        int32_t *ids = malloc((n ? n : 1) * k * sizeof *ids);
        test_fill(&r, x, act);
        test_routing(&r, n, E, k, ids, w);
        const uint32_t layer = moe_rng_below(&r, L);
        per_token(&tm, layer, n, x, k, ids, w, want);
        CHECK_OK(moe_layer_forward(a, layer, n, x, k, ids, w, ya));
        CHECK_OK(moe_layer_forward(b, layer, n, x, k, ids, w, yb));
        /* The engine against the reference, within the dtype's tolerance. */
        const double e = n ? test_nmse(ya, want, (size_t)n * H) : 0.0;
        if (!(e <= test_tolerance(tm.dtype))) {
            fprintf(stderr, "round %d: %s E=%u H=%u I=%u k=%u n=%u: nmse %g\n", round, moe_dtype_name(tm.dtype), E,
                    H, I, k, n, e);
            CHECK(0);
        }
        /* Each output element is computed by the same code in the same
         * order whatever the thread count: bit-identical. */
        if (n) CHECK(memcmp(ya, yb, (size_t)n * H * sizeof *ya) == 0);
        free(x), free(want), free(ya), free(yb), free(w), free(ids);
        moe_runtime_free(&a);
        moe_runtime_free(&b);
        test_model_free(&tm);
    }
}

static void workspace_shrinks_and_grows(void) {
    /* Big batch, then small, then bigger: reused buffers stay correct. */
    test_model tm;
    test_model_make(&tm, 1, 8, 16, 24, MOE_DTYPE_BF16, 9);
    moe_runtime_t *rt = make_rt(tm.model, 2, NULL);
    moe_rng r = {77};
    const uint32_t sizes[] = {50, 1, 3, 120, 2}, k = 3;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const uint32_t n = sizes[s];
        float *x = malloc((size_t)n * 16 * sizeof *x), *y = malloc((size_t)n * 16 * sizeof *y);
        float *want = malloc((size_t)n * 16 * sizeof *y), *w = malloc(n * k * sizeof *w);
        int32_t *ids = malloc(n * k * sizeof *ids);
        test_fill(&r, x, (size_t)n * 16);
        test_routing(&r, n, 8, k, ids, w);
        per_token(&tm, 0, n, x, k, ids, w, want);
        CHECK_OK(moe_layer_forward(rt, 0, n, x, k, ids, w, y));
        CHECK(test_nmse(y, want, (size_t)n * 16) <= test_tolerance(MOE_DTYPE_BF16));
        free(x), free(y), free(want), free(w), free(ids);
    }
    moe_runtime_free(&rt);
    test_model_free(&tm);
}

static void bad_input_is_refused_and_harmless(void) {
    test_model tm;
    test_model_make(&tm, 2, 8, 4, 4, MOE_DTYPE_F32, 1);
    moe_runtime_t *rt = make_rt(tm.model, 1, NULL);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
    float w[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    int32_t ok[4] = {0, 1, 2, 3};
    int32_t out_of_range[4] = {0, 1, 9, 3};
    int32_t negative[4] = {0, -1, 2, 3};
    int32_t duplicate[4] = {0, 1, 5, 5};
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, x, 2, out_of_range, w, y), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("topk_ids[1][0] = 9 is out of range (layer 0 has 8 experts)");
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, x, 2, negative, w, y), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("topk_ids[0][1] = -1");
    CHECK_STATUS(moe_layer_forward(rt, 1, 2, x, 2, duplicate, w, y), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("token 1 of layer 1 is routed to expert 5 twice");
    CHECK_STATUS(moe_layer_forward(rt, 2, 2, x, 2, ok, w, y), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("layer 2 out of range");
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, x, 0, ok, w, y), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, x, 9, ok, w, y), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("top_k = 9");
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, NULL, 2, ok, w, y), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("hidden is NULL");
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, x, 2, NULL, w, y), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, x, 2, ok, NULL, y), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, x, 2, ok, w, NULL), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_layer_forward(rt, 0, 2, x, 2, ok, w, x + 2), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("overlaps");
    /* Pair indices are 32-bit: a batch of more than 2^32 token-expert pairs
     * is refused before any buffer is touched. */
    CHECK_STATUS(moe_layer_forward(rt, 0, 1u << 30, x, 8, ok, w, y), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("more than 2^32 token-expert pairs");
    moe_stats s;
    CHECK_OK(moe_runtime_get_stats(rt, &s));
    CHECK_EQ(s.layer_calls, 0); /* refused calls did no work */
    /* The runtime is still usable after every refusal. */
    float want[8];
    per_token(&tm, 0, 2, x, 2, ok, w, want);
    CHECK_OK(moe_layer_forward(rt, 0, 2, x, 2, ok, w, y));
    CHECK(test_nmse(y, want, 8) <= test_tolerance(MOE_DTYPE_F32));
    moe_runtime_free(&rt);
    test_model_free(&tm);
}

static void nan_and_inf_propagate(void) {
    test_model tm;
    test_model_make(&tm, 1, 4, 6, 5, MOE_DTYPE_BF16, 2);
    moe_runtime_t *rt = make_rt(tm.model, 2, NULL);
    float x[18] = {0}, y[18];
    for (int i = 0; i < 18; i++) x[i] = 0.1f * (float)i;
    x[6 + 2] = NAN; /* token 1 */
    int32_t ids[6] = {0, 1, 0, 1, 2, 3};
    float w[6] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, INFINITY}; /* token 2: infinite weight */
    CHECK_OK(moe_layer_forward(rt, 0, 3, x, 2, ids, w, y));
    for (int i = 0; i < 6; i++) CHECK(isfinite(y[i]));
    int nan1 = 0, nonfinite2 = 0;
    for (int i = 6; i < 12; i++) nan1 += isnan(y[i]) != 0;
    for (int i = 12; i < 18; i++) nonfinite2 += !isfinite(y[i]);
    CHECK_EQ(nan1, 6);
    CHECK(nonfinite2 > 0);
    moe_runtime_free(&rt);
    test_model_free(&tm);
}

#ifndef MOE_PROFILES_DIR
#error "MOE_PROFILES_DIR must name profiles/machines"
#endif

/* The simulated GPU: whatever the policy and budget put on it, over a run
 * of several passes (so the cache fills, evicts and hits), every output is
 * bit-identical to the CPU-only runtime's, for every dtype. */
static void simulated_device_gives_cpu_results(void) {
    moe_rng r = {77};
    const moe_dtype types[4] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_F16, MOE_DTYPE_I8};
    const char *policies[4] = {"moerun", "gpu-lru", "hybrimoe", "fiddler"};
    const double budgets[4] = {0.25, 0.5, 0.75, 1.0};
    uint64_t gpu_calls = 0, copied = 0, hits = 0;
    for (int round = 0; round < 16; round++) {
        const uint32_t E = 4 + moe_rng_below(&r, 13), H = 1 + moe_rng_below(&r, 40), I = 1 + moe_rng_below(&r, 50),
                       L = 1 + moe_rng_below(&r, 3), k = 1 + moe_rng_below(&r, E < 4 ? E : 4);
        test_model tm;
        test_model_make(&tm, L, E, H, I, types[round % 4], 100 + (uint64_t)round);
        moe_runtime_t *cpu = make_rt(tm.model, 2, "static-cpu"), *sim = NULL;
        const moe_runtime_params p =
            sim_params(policies[round % 4], budgets[(round / 4) % 4], "ref-h100-pcie5-2s-xeon8480.txt");
        CHECK_OK(moe_runtime_create(&sim, tm.model, &p));
        if (!sim) {
            moe_runtime_free(&cpu);
            test_model_free(&tm);
            continue;
        }
        CHECK_EQ(moe_runtime_device(sim), MOE_DEVICE_SIM);
        for (int pass = 0; pass < 6; pass++) {
            const uint32_t n = pass % 3 == 0 ? 1 + moe_rng_below(&r, 40) : 1 + moe_rng_below(&r, 3);
            const size_t act = (size_t)n * H;
            float *x = malloc(act * sizeof *x), *ya = malloc(act * sizeof *x), *yb = malloc(act * sizeof *x);
            float *w = malloc((size_t)n * k * sizeof *w);
            int32_t *ids = malloc((size_t)n * k * sizeof *ids);
            for (uint32_t l = 0; l < L; l++) {
                test_fill(&r, x, act);
                test_routing(&r, n, E, k, ids, w);
                CHECK_OK(moe_layer_forward(cpu, l, n, x, k, ids, w, ya));
                CHECK_OK(moe_layer_forward(sim, l, n, x, k, ids, w, yb));
                if (memcmp(ya, yb, act * sizeof *ya) != 0) {
                    fprintf(stderr, "round %d (%s, %s, budget %.2f) pass %d layer %u: sim differs from cpu\n", round,
                            moe_dtype_name(tm.dtype), p.policy, p.gpu_budget_fraction, pass, l);
                    CHECK(0);
                }
            }
            free(x), free(ya), free(yb), free(w), free(ids);
        }
        moe_stats st;
        CHECK_OK(moe_runtime_get_stats(sim, &st));
        CHECK(st.gpu_hits + st.gpu_misses == st.expert_calls_gpu);
        gpu_calls += st.expert_calls_gpu, copied += st.bytes_copied, hits += st.gpu_hits;
        moe_runtime_free(&sim);
        moe_runtime_free(&cpu);
        test_model_free(&tm);
    }
    /* The device was used: experts ran there, were copied in, and hit. */
    CHECK(gpu_calls > 0 && copied > 0 && hits > 0);
}

/* Routing predictions (moe_runtime_predict): the lookahead is offered only
 * where it is used; with the true routing of the next layers predicted,
 * the scheduler copies experts ahead (bytes beyond the misses' own
 * copies), and results stay the CPU's, also under wrong predictions. */
static void predictions_prefetch_and_change_nothing(void) {
    moe_rng r = {91};
    const uint32_t L = 4, E = 16, H = 32, I = 48, k = 2;
    test_model tm;
    test_model_make(&tm, L, E, H, I, MOE_DTYPE_BF16, 7);
    moe_runtime_t *cpu = make_rt(tm.model, 2, "static-cpu"), *sim = NULL;
    CHECK_EQ(moe_runtime_lookahead(cpu), 0);
    moe_runtime_params p = sim_params("moerun", 0.5, "ref-rtx4090-pcie4-2s-xeon8480.txt");
    CHECK_OK(moe_runtime_create(&sim, tm.model, &p));
    if (!sim) {
        moe_runtime_free(&cpu);
        test_model_free(&tm);
        return;
    }
    const uint32_t ahead = moe_runtime_lookahead(sim);
    CHECK(ahead >= 1);
    const uint32_t n = 4;
    int32_t ids[4][4 * 2], bad[4 * 2];
    float w[4][4 * 2], bw[4 * 2], x[4 * 32], ya[4 * 32], yb[4 * 32];
    for (int pass = 0; pass < 40; pass++) {
        /* Routing within half the experts, so that the cache has something to keep. */
        for (uint32_t l = 0; l < L; l++) test_routing(&r, n, E / 2, k, ids[l], w[l]);
        for (uint32_t l = 0; l < L; l++) {
            for (uint32_t d = 1; d <= ahead && l + d < L; d++) {
                if (pass % 5 == 4) { /* a wrong prediction now and then */
                    test_routing(&r, n, E, k, bad, bw);
                    CHECK_OK(moe_runtime_predict(sim, l + d, n, k, bad));
                } else {
                    CHECK_OK(moe_runtime_predict(sim, l + d, n, k, ids[l + d]));
                }
            }
            test_fill(&r, x, (size_t)n * H);
            CHECK_OK(moe_layer_forward(cpu, l, n, x, k, ids[l], w[l], ya));
            CHECK_OK(moe_layer_forward(sim, l, n, x, k, ids[l], w[l], yb));
            CHECK(memcmp(ya, yb, sizeof ya) == 0);
        }
    }
    moe_stats st;
    CHECK_OK(moe_runtime_get_stats(sim, &st));
    const uint64_t eb = 3ull * H * I * 2;
    if (!(st.bytes_copied > st.gpu_misses * eb))
        fprintf(stderr, "copied %llu bytes, misses %llu x %llu\n", (unsigned long long)st.bytes_copied,
                (unsigned long long)st.gpu_misses, (unsigned long long)eb);
    CHECK(st.bytes_copied > st.gpu_misses * eb);
    /* Every prediction was scored when its layer ran: four in five were
     * the true routing, the fifth random over all experts. */
    for (uint32_t d = 1; d <= ahead && d < L; d++) {
        const double acc = st.lookahead_pairs[d - 1]
                               ? (double)st.lookahead_hits[d - 1] / (double)st.lookahead_pairs[d - 1] : 0;
        CHECK_EQ(st.lookahead_pairs[d - 1], 40ull * (L - d) * n * k);
        if (!(acc > 0.75 && acc < 1.0)) fprintf(stderr, "distance %u: accuracy %.3f\n", d, acc);
        CHECK(acc > 0.75 && acc < 1.0);
    }
    for (uint32_t d = ahead + 1; d <= 4; d++) CHECK_EQ(st.lookahead_pairs[d - 1], 0);
    /* Bad predictions are refused. */
    CHECK_STATUS(moe_runtime_predict(sim, L, n, k, ids[0]), MOE_ERR_INVALID_ARG);
    int32_t out_of_range[2] = {0, (int32_t)E};
    CHECK_STATUS(moe_runtime_predict(sim, 1, 1, 2, out_of_range), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_runtime_predict(sim, 1, 1, 2, NULL), MOE_ERR_INVALID_ARG);
    CHECK_OK(moe_runtime_predict(cpu, 1, n, k, ids[1])); /* accepted and unused */
    moe_runtime_free(&sim);
    moe_runtime_free(&cpu);
    test_model_free(&tm);
}

static char logged[4096];

static void log_to(moe_log_level l, const char *msg, void *user) {
    (void)l, (void)user;
    const size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", msg);
}

/* `passes` passes over the L layers of random routings of n tokens
 * through both runtimes: sim's outputs equal cpu's bit for bit. The last
 * routing and inputs are left in ids [n * k], w [n * k] and x [n * H]. */
static void same_as_cpu(moe_rng *r, moe_runtime_t *cpu, moe_runtime_t *sim, uint32_t L, uint32_t E, uint32_t H,
                        uint32_t k, uint32_t n, int passes, int32_t *ids, float *w, float *x) {
    float *ya = malloc((size_t)n * H * sizeof *ya), *yb = malloc((size_t)n * H * sizeof *yb);
    for (int pass = 0; pass < passes; pass++)
        for (uint32_t l = 0; l < L; l++) {
            test_routing(r, n, E, k, ids, w);
            test_fill(r, x, (size_t)n * H);
            CHECK_OK(moe_layer_forward(cpu, l, n, x, k, ids, w, ya));
            CHECK_OK(moe_layer_forward(sim, l, n, x, k, ids, w, yb));
            CHECK(memcmp(ya, yb, (size_t)n * H * sizeof *ya) == 0);
        }
    free(ya), free(yb);
}

/* Device faults (MOE_SIM_FAIL): an allocation that fails shrinks the
 * cache, a failed copy or kernel is recomputed on the CPU (one warning),
 * and no room for even one expert leaves every expert on the CPU. The
 * results are the CPU's throughout. */
static void device_faults_fall_back_to_the_cpu(void) {
    moe_rng r = {13};
    const uint32_t L = 2, E = 8, H = 24, I = 40, k = 2, n = 3;
    test_model tm;
    test_model_make(&tm, L, E, H, I, MOE_DTYPE_F32, 3);
    moe_runtime_t *cpu = make_rt(tm.model, 2, "static-cpu"), *sim = NULL;
    /* gpu-lru: every expert on the device, so its faults are hit */
    moe_runtime_params p = sim_params("gpu-lru", 1.0, "ref-h100-pcie5-2s-xeon8480.txt");
    p.log_fn = log_to;
    logged[0] = '\0';
    setenv("MOE_SIM_FAIL", "alloc:1,upload:2,run:4", 1);
    CHECK_OK(moe_runtime_create(&sim, tm.model, &p));
    CHECK(strstr(logged, "injected allocation failure") && strstr(logged, "trying 8 slots"));
    CHECK_EQ(moe_runtime_device(sim), MOE_DEVICE_SIM);
    int32_t ids[3 * 2];
    float w[3 * 2], x[3 * 24], yb[3 * 24];
    if (sim) same_as_cpu(&r, cpu, sim, L, E, H, k, n, 4, ids, w, x);
    CHECK(strstr(logged, "recomputing on the CPU (reported once)") != NULL);
    moe_stats st;
    if (sim) CHECK_OK(moe_runtime_get_stats(sim, &st));
    if (sim) CHECK(st.expert_calls_gpu > 0 && st.expert_calls_cpu > 0);
    moe_runtime_free(&sim);
    /* Room for one expert, and that allocation fails: the CPU runs it all. */
    p.gpu_budget_bytes = 3ull * H * I * 4;
    setenv("MOE_SIM_FAIL", "alloc:1", 1);
    logged[0] = '\0';
    CHECK_OK(moe_runtime_create(&sim, tm.model, &p));
    CHECK_EQ(moe_runtime_device(sim), MOE_DEVICE_CPU);
    CHECK(strstr(logged, "running every expert on the CPU") != NULL);
    if (sim) CHECK_OK(moe_layer_forward(sim, 0, n, x, k, ids, w, yb));
    moe_runtime_free(&sim);
    setenv("MOE_SIM_FAIL", "upload", 1);
    CHECK_STATUS(moe_runtime_create(&sim, tm.model, &p), MOE_ERR_INVALID_ARG);
    unsetenv("MOE_SIM_FAIL");
    moe_runtime_free(&cpu);
    test_model_free(&tm);
}

/* Device sim without a GPU in the profile, or with no room for an expert,
 * is refused with what to do. */
static void simulated_device_needs_a_gpu_profile(void) {
    test_model tm;
    test_model_make(&tm, 1, 4, 8, 8, MOE_DTYPE_F32, 5);
    moe_runtime_params p = moe_runtime_default_params();
    p.device = MOE_DEVICE_SIM;
    p.profile_path = MOE_PROFILES_DIR "/dev-2core-xeon-amx.txt";
    p.profile_any_host = 1;
    moe_runtime_t *rt = NULL;
    CHECK_STATUS(moe_runtime_create(&rt, tm.model, &p), MOE_ERR_UNSUPPORTED);
    CHECK(rt == NULL && strstr(moe_last_error(), "ref-h100") != NULL);
    /* A budget below one expert leaves a GPU policy nothing to place. */
    p.profile_path = MOE_PROFILES_DIR "/ref-h100-pcie5-2s-xeon8480.txt";
    p.gpu_budget_fraction = 0.0;
    CHECK_STATUS(moe_runtime_create(&rt, tm.model, &p), MOE_ERR_INVALID_ARG);
    CHECK(rt == NULL && strstr(moe_last_error(), "smaller than one expert") != NULL);
    /* static-cpu on the simulated device uses no slot and runs. */
    p.policy = "static-cpu";
    CHECK_OK(moe_runtime_create(&rt, tm.model, &p));
    moe_runtime_free(&rt);
    test_model_free(&tm);
}

/* A device that fails every operation from some point on (MOE_SIM_FAIL
 * lost:N) is given up after 8 failures in a row: one warning, device cpu
 * from then on, no lookahead; results are the CPU's throughout. */
static void a_lost_device_leaves_the_cpu_running(void) {
    moe_rng r = {29};
    const uint32_t L = 3, E = 8, H = 24, I = 40, k = 2, n = 2;
    test_model tm;
    test_model_make(&tm, L, E, H, I, MOE_DTYPE_BF16, 9);
    moe_runtime_t *cpu = make_rt(tm.model, 2, "static-cpu"), *sim = NULL;
    moe_runtime_params p = sim_params("gpu-lru", 1.0, "ref-h100-pcie5-2s-xeon8480.txt");
    p.log_fn = log_to;
    logged[0] = '\0';
    setenv("MOE_SIM_FAIL", "lost:6", 1);
    CHECK_OK(moe_runtime_create(&sim, tm.model, &p));
    unsetenv("MOE_SIM_FAIL");
    int32_t ids[2 * 2];
    float w[2 * 2], x[2 * 24];
    if (sim) same_as_cpu(&r, cpu, sim, L, E, H, k, n, 8, ids, w, x);
    if (sim) {
        CHECK_EQ(moe_runtime_device(sim), MOE_DEVICE_CPU);
        CHECK_EQ(moe_runtime_lookahead(sim), 0);
        CHECK(strstr(logged, "running every expert on the CPU from now on") != NULL);
        moe_stats st;
        CHECK_OK(moe_runtime_get_stats(sim, &st));
        CHECK(st.gpu_redone > 0 && st.expert_calls_gpu > 0); /* the first operations worked */
        CHECK_OK(moe_runtime_predict(sim, 1, n, k, ids)); /* accepted and unused */
    }
    moe_runtime_free(&sim);
    moe_runtime_free(&cpu);
    test_model_free(&tm);
}

/* Online refinement: on this machine the CPU is far slower than the
 * profile's (a two-socket Xeon 8480), so the measured over modeled CPU
 * scale rises, bounded at 8; the simulated GPU's runs are exactly its
 * model, so its scale stays 1. The CPU-only runtime has none. */
static void costs_refine_toward_measured_times(void) {
    moe_rng r = {41};
    const uint32_t L = 4, E = 8, H = 256, I = 512, k = 2, n = 12;
    test_model tm;
    test_model_make(&tm, L, E, H, I, MOE_DTYPE_F32, 15);
    moe_runtime_params p = sim_params("moerun", 0.25, "ref-h100-pcie5-2s-xeon8480.txt");
    moe_runtime_t *sim = NULL;
    CHECK_OK(moe_runtime_create(&sim, tm.model, &p));
    if (!sim) {
        test_model_free(&tm);
        return;
    }
    moe_stats st;
    CHECK_OK(moe_runtime_get_stats(sim, &st));
    CHECK(st.cpu_cost_scale == 1.0 && st.gpu_cost_scale == 1.0);
    float *x = malloc((size_t)n * H * sizeof *x), *y = malloc((size_t)n * H * sizeof *y), w[12 * 2];
    int32_t ids[12 * 2];
    for (int pass = 0; pass < 10; pass++)
        for (uint32_t l = 0; l < L; l++) {
            test_routing(&r, n, E, k, ids, w);
            test_fill(&r, x, (size_t)n * H);
            CHECK_OK(moe_layer_forward(sim, l, n, x, k, ids, w, y));
        }
    CHECK_OK(moe_runtime_get_stats(sim, &st));
    if (!(st.cpu_cost_scale > 1.5 && st.cpu_cost_scale <= 8.0 + 1e-9))
        fprintf(stderr, "CPU cost scale %.3f\n", st.cpu_cost_scale);
    CHECK(st.cpu_cost_scale > 1.5 && st.cpu_cost_scale <= 8.0 + 1e-9);
    CHECK(st.expert_calls_gpu > 0);
    CHECK(fabs(st.gpu_cost_scale - 1.0) < 1e-6);
    moe_runtime_t *cpu = make_rt(tm.model, 2, "static-cpu");
    CHECK_OK(moe_layer_forward(cpu, 0, n, x, k, ids, w, y));
    CHECK_OK(moe_runtime_get_stats(cpu, &st));
    CHECK(st.cpu_cost_scale == 0.0 && st.gpu_cost_scale == 0.0);
    moe_runtime_free(&cpu);
    free(x), free(y);
    moe_runtime_free(&sim);
    test_model_free(&tm);
}

/* The profile's [tuning] fills what the params leave unset: the policy,
 * the GPU budget (a budget of nothing refuses a GPU policy), moerun's
 * prefetch depth (0: none); explicit params win. */
static void tuning_fills_unset_params(void) {
    test_model tm;
    test_model_make(&tm, 3, 8, 16, 24, MOE_DTYPE_F32, 4);
    moe_profile prof;
    moe_profile_init(&prof);
    CHECK_OK(moe_profile_load(&prof, MOE_PROFILES_DIR "/ref-h100-pcie5-2s-xeon8480.txt"));
    char path[] = "/tmp/moerun-tuning-XXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    moe_tuning *tu = &prof.tuning;
    tu->set = MOE_TUNE_POLICY | MOE_TUNE_GPU_BUDGET | MOE_TUNE_PREFETCH_DEPTH;
    snprintf(tu->policy, sizeof tu->policy, "moerun");
    tu->gpu_budget_fraction = 0.25, tu->gpu_budget_bytes = 0, tu->prefetch_depth = 2;
    CHECK_OK(moe_profile_save(&prof, path));
    moe_runtime_params p = moe_runtime_default_params();
    CHECK(p.gpu_budget_fraction == -1.0);
    p.n_threads = 2, p.device = MOE_DEVICE_SIM, p.profile_path = path, p.profile_any_host = 1;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, tm.model, &p));
    if (rt) CHECK(!strcmp(moe_runtime_policy(rt), "moerun") && moe_runtime_lookahead(rt) == 2);
    moe_runtime_free(&rt);
    p.policy = "hybrimoe"; /* explicit: its own depth */
    CHECK_OK(moe_runtime_create(&rt, tm.model, &p));
    if (rt) CHECK(moe_runtime_lookahead(rt) == 1);
    moe_runtime_free(&rt);
    p.policy = NULL;
    tu->prefetch_depth = 0; /* moerun without prefetch */
    tu->gpu_budget_fraction = 0.0;  /* and no budget */
    CHECK_OK(moe_profile_save(&prof, path));
    CHECK_STATUS(moe_runtime_create(&rt, tm.model, &p), MOE_ERR_INVALID_ARG);
    CHECK(strstr(moe_last_error(), "smaller than one expert") != NULL);
    p.gpu_budget_fraction = 0.5; /* explicit budget */
    CHECK_OK(moe_runtime_create(&rt, tm.model, &p));
    if (rt) CHECK_EQ(moe_runtime_lookahead(rt), 0);
    moe_runtime_free(&rt);
    p.gpu_budget_fraction = -2.0;
    CHECK_STATUS(moe_runtime_create(&rt, tm.model, &p), MOE_ERR_INVALID_ARG);
    unlink(path);
    moe_profile_clear(&prof);
    test_model_free(&tm);
}

/* The statistics' device times are the device's model: with every expert
 * on the GPU and no prefetch, the compute stream's time is the sum of the
 * modeled runs of each layer's groups and the copy stream's the modeled
 * copies of the misses; every layer is a hybrid one, and its serial time
 * holds the CPU's part and the device's. An API 4 caller gets its prefix. */
static void device_time_accounting_matches_the_model(void) {
    moe_rng r = {17};
    const uint32_t L = 3, E = 8, H = 40, I = 56, k = 2;
    const char *path = MOE_PROFILES_DIR "/ref-h100-pcie5-2s-xeon8480.txt";
    test_model tm;
    test_model_make(&tm, L, E, H, I, MOE_DTYPE_F32, 5);
    moe_runtime_params p = sim_params("gpu-lru", 0.5, "ref-h100-pcie5-2s-xeon8480.txt");
    moe_runtime_t *sim = NULL;
    CHECK_OK(moe_runtime_create(&sim, tm.model, &p));
    /* The same profile, to price what the runtime ran as the simulated
     * device does (moe_profile_gpu_run_us, moe_profile_copy_us). */
    moe_profile prof;
    moe_profile_init(&prof);
    CHECK_OK(moe_profile_load(&prof, path));
    if (!sim) {
        moe_profile_clear(&prof);
        moe_runtime_free(&sim);
        test_model_free(&tm);
        return;
    }
    CHECK_EQ(moe_runtime_lookahead(sim), 0);
    double runs_us = 0.0;
    float x[6 * 40], y[6 * 40], w[6 * 2];
    int32_t ids[6 * 2];
    for (int pass = 0; pass < 5; pass++)
        for (uint32_t l = 0; l < L; l++) {
            const uint32_t n = 1 + moe_rng_below(&r, 6);
            test_routing(&r, n, E, k, ids, w);
            test_fill(&r, x, (size_t)n * H);
            CHECK_OK(moe_layer_forward(sim, l, n, x, k, ids, w, y));
            uint32_t m[8] = {0};
            for (uint32_t i = 0; i < n * k; i++) m[ids[i]]++;
            for (uint32_t e = 0; e < E; e++)
                if (m[e]) runs_us += moe_profile_gpu_run_us(&prof, 0, H, I, MOE_DTYPE_F32, m[e]);
        }
    moe_stats st;
    CHECK_OK(moe_runtime_get_stats(sim, &st));
    CHECK_EQ(st.expert_calls_cpu, 0);
    CHECK(st.gpu_misses > 0 && st.gpu_hits > 0);
    CHECK_EQ(st.hybrid_layers, st.layer_calls);
    CHECK_EQ(st.gpu_redone, 0);
    const double copy_us = moe_profile_copy_us(&prof, 0, moe_dev_expert_bytes(H, I, MOE_DTYPE_F32, MOE_DTYPE_F32), true);
    const double want_copy = (double)st.gpu_misses * copy_us * 1e-6, want_runs = runs_us * 1e-6;
    if (fabs(st.gpu_copy_seconds - want_copy) > 1e-9 * (1 + want_copy) ||
        fabs(st.gpu_compute_seconds - want_runs) > 1e-9 * (1 + want_runs))
        fprintf(stderr, "copies %.9f s (model %.9f), runs %.9f s (model %.9f)\n", st.gpu_copy_seconds, want_copy,
                st.gpu_compute_seconds, want_runs);
    CHECK(fabs(st.gpu_copy_seconds - want_copy) <= 1e-9 * (1 + want_copy));
    CHECK(fabs(st.gpu_compute_seconds - want_runs) <= 1e-9 * (1 + want_runs));
    CHECK(st.hybrid_span_seconds > 0);
    CHECK(st.hybrid_serial_seconds >= st.cpu_seconds + st.gpu_copy_seconds + st.gpu_compute_seconds - 1e-9);
    /* API 4's struct: the prefix, and nothing written past it. */
    const size_t v4 = offsetof(moe_stats, total_seconds) + sizeof(double);
    unsigned char buf[sizeof(moe_stats) + 8];
    memset(buf, 0xAB, sizeof buf);
    CHECK_OK(moe_runtime_stats(sim, (moe_stats *)(void *)buf, v4));
    CHECK(memcmp(buf, &st, v4) == 0 && buf[v4] == 0xAB && buf[sizeof buf - 1] == 0xAB);
    CHECK_STATUS(moe_runtime_stats(sim, &st, v4 - 1), MOE_ERR_INVALID_ARG);
    /* A later header's larger struct: ours, then zeros. */
    memset(buf, 0xAB, sizeof buf);
    CHECK_OK(moe_runtime_stats(sim, (moe_stats *)(void *)buf, sizeof buf));
    CHECK(memcmp(buf, &st, sizeof st) == 0 && buf[sizeof buf - 1] == 0);
    /* The CPU-only runtime has no device times. */
    moe_runtime_t *cpu = make_rt(tm.model, 2, "static-cpu");
    CHECK_OK(moe_layer_forward(cpu, 0, 1, x, k, ids, w, y));
    CHECK_OK(moe_runtime_get_stats(cpu, &st));
    CHECK(st.hybrid_layers == 0 && st.gpu_copy_seconds == 0 && st.gpu_compute_seconds == 0);
    moe_runtime_free(&cpu);
    moe_profile_clear(&prof);
    moe_runtime_free(&sim);
    test_model_free(&tm);
}

TEST_MAIN("forward", TEST_CASE(matches_per_token_on_random_shapes), TEST_CASE(workspace_shrinks_and_grows),
          TEST_CASE(bad_input_is_refused_and_harmless), TEST_CASE(nan_and_inf_propagate), TEST_CASE(simulated_device_gives_cpu_results),
          TEST_CASE(simulated_device_needs_a_gpu_profile), TEST_CASE(predictions_prefetch_and_change_nothing),
          TEST_CASE(device_faults_fall_back_to_the_cpu), TEST_CASE(device_time_accounting_matches_the_model),
          TEST_CASE(a_lost_device_leaves_the_cpu_running), TEST_CASE(costs_refine_toward_measured_times),
          TEST_CASE(tuning_fills_unset_params))
