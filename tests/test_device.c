/* test_device.c - the device conformance suite, as ggml's test-backend-ops
 * is for its backends: the same cases run on every device kind the
 * registry (gpu/device.h) has that can run here (the simulated GPU always,
 * CUDA where the build has it and a GPU exists), each against the plain
 * reference expert (cpu/ref) with the device's per-dtype error bound:
 *   - every dtype the device accepts, odd shapes, M = 0..300 tokens
 *   - the streams' times, in seconds, in order
 *   - the pool against the device's memory, and bad arguments
 *   - the counters every device keeps
 *   - the runtime on the device against the CPU-only runtime
 * then each device's own cases: the simulated GPU's modeled clock,
 * hazards and injected faults; CUDA's stream order on a reused slot, the
 * overlap of a copy with a run, its pinned memory, and its block formats
 * (bit-exact decoding, both paths, down in a dtype of its own). A new device or
 * dtype is tested by adding a row, not a file. Nothing here is timed: the
 * modeled clock is checked with time_scale 0, and the one real-time case
 * only checks that completion does not come before its modeled end. A
 * device kind this machine cannot run is reported skipped (its absence
 * checked), and the whole program exits 77 only if no device can run. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>

#include "engine.h"
#include "experts.h"
#include "sim_device.h"
#include "util.h"
#ifdef MOE_HAVE_CUDA
#include "cuda_device.h"
#endif

#ifndef MOE_PROFILES_DIR
#error "MOE_PROFILES_DIR must name profiles/machines"
#endif

static moe_profile prof; /* the H100 reference profile: [gpu] bf16 curves, [link] rates */

/* ---- the rows ------------------------------------------------------------ */

/* The simulated GPU computes with a CPU engine of its own, so it has the
 * engine's error against the reference. */
static double sim_tolerance(moe_dtype t) { return test_tolerance(t); }


typedef struct device_row {
    moe_device_kind kind;
    double (*tolerance)(moe_dtype t); /* NMSE bound against moe_ref_expert */
    const test_case *own;             /* the device's own cases */
    size_t n_own;
} device_row;

static const device_row *row;    /* the row the generic cases run on */
static const moe_dev_reg *reg;   /* its registry entry */

static moe_dev *make_device(void) {
    const moe_dev_params p = {.index = 0, .profile = &prof};
    moe_dev *d = NULL;
    CHECK_OK(reg->create(&d, &p));
    return d;
}

static float *randv(size_t n, moe_rng *r) {
    float *v = malloc((n ? n : 1) * sizeof *v);
    test_fill(r, v, n);
    return v;
}

/* ---- the cases every device runs ------------------------------------------ */

/* Every dtype the device accepts, odd shapes, 0 to 300 tokens: the slot's
 * expert against the reference expert on the host's copy. The counters
 * follow the operations. */
static void runs_match_the_reference(void) {
    /* Element types take odd shapes; block formats rows of whole blocks
     * (256 elements for the k-quants). */
    const uint32_t shapes[3][2] = {{72, 104}, {256, 96}, {2048, 768}};
    const uint32_t block_shapes[3][2] = {{256, 256}, {512, 768}, {256, 512}};
    const uint32_t ms[6] = {0, 1, 3, 17, 64, 300};
    moe_rng r = {31};
    moe_dev *d = make_device();
    if (!d) return;
    CHECK_OK(moe_dev_alloc_slots(d, 2, moe_dev_expert_bytes(2048, 768, MOE_DTYPE_F32, MOE_DTYPE_F32)));
    expert_buf all[3 * MOE_DTYPE_COUNT_]; /* registered host memory stays allocated until the device is gone */
    uint32_t n_bufs = 0, uploads = 0, runs = 0, n_dtypes = 0;
    uint64_t bytes = 0;
    for (int ti = 0; ti < MOE_DTYPE_COUNT_; ti++) {
        const moe_dtype t = (moe_dtype)ti;
        if (!moe_dev_supports(d, t)) continue;
        n_dtypes++;
        const bool block = moe_dtype_is_block(t);
        for (int si = 0; si < 3; si++) {
            const uint32_t H = block ? block_shapes[si][0] : shapes[si][0], I = block ? block_shapes[si][1] : shapes[si][1];
            expert_buf *e = &all[n_bufs++];
            expert_make(e, H, I, t, &r);
            moe_dev_event up = 0;
            const uint32_t slot = (uint32_t)(si + ti) % 2;
            CHECK_OK(moe_dev_upload(d, slot, &e->v, &up));
            uploads++, bytes += moe_dev_expert_bytes(H, I, t, t);
            float *scratch = malloc(I * sizeof *scratch);
            for (int mi = 0; mi < 6; mi++) {
                const uint32_t m = ms[mi];
                if (block && m > 64) continue; /* the reference is slow on block rows */
                float *x = randv((size_t)m * H, &r), *y = randv((size_t)m * H, &r), *want = randv((size_t)m * H, &r);
                moe_dev_event ev = 0;
                CHECK_OK(moe_dev_run(d, slot, m, x, y, up, &ev));
                CHECK_OK(moe_dev_wait(d, ev));
                runs++;
                moe_ref_expert(&e->v, m, x, want, scratch);
                const double err = test_nmse(y, want, (size_t)m * H);
                if (!(err <= row->tolerance(t)))
                    fprintf(stderr, "%s: %ux%u %s m=%u: NMSE %.3g\n", reg->name, H, I, moe_dtype_name(t), m, err);
                CHECK(err <= row->tolerance(t));
                free(x), free(y), free(want);
            }
            free(scratch);
        }
    }
    CHECK(n_dtypes >= 4); /* f32, bf16, f16 and int8 at least */
    moe_dev_stats st;
    moe_dev_get_stats(d, &st);
    CHECK_EQ(st.uploads, uploads);
    CHECK_EQ(st.runs, runs);
    CHECK_EQ(st.failed, 0);
    CHECK_EQ(st.bytes_uploaded, bytes);
    moe_dev_free(&d);
    CHECK(d == NULL);
    for (uint32_t i = 0; i < n_bufs; i++) expert_free(&all[i]);
}

/* Times are seconds on the host's clock: an upload, then the run that
 * waited for it, each of positive length, in order, within the wall-clock
 * interval of their submission and completion. Event 0 has none. */
static void times_are_ordered_seconds(void) {
    const uint32_t H = 2048, I = 768, m = 2;
    moe_rng r = {21};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    moe_dev *d = make_device();
    if (!d) return;
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16, MOE_DTYPE_BF16)));
    float *x = randv((size_t)m * H, &r), *y = randv((size_t)m * H, &r);
    const double before = moe_now();
    moe_dev_event u, run;
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &u));
    CHECK_OK(moe_dev_run(d, 0, m, x, y, u, &run));
    double s0, e0, s1, e1;
    CHECK_STATUS(moe_dev_times(d, 0, &s0, &e0), MOE_ERR_INVALID_ARG);
    CHECK_OK(moe_dev_wait(d, run));
    CHECK_OK(moe_dev_times(d, u, &s0, &e0));
    CHECK_OK(moe_dev_times(d, run, &s1, &e1));
    CHECK(s0 >= before - 1e-3 && s0 < e0 && s1 < e1);
    CHECK(s1 >= e0 - 1e-6); /* the run waited for the upload */
    CHECK(e1 - s0 < 10.0);   /* seconds, not microseconds */
    moe_dev_free(&d);
    free(x), free(y);
    expert_free(&a);
}

/* A pool beyond the device's memory is refused and leaves no pool; the
 * device stays usable. Runs on empty or missing slots, experts larger
 * than a slot and views with parts missing are refused. */
static void limits_and_bad_arguments(void) {
    moe_dev *d = make_device();
    if (!d) return;
    const uint32_t H = 256, I = 128;
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16, MOE_DTYPE_BF16);
    CHECK_STATUS(moe_dev_alloc_slots(d, 1u << 20, (size_t)1 << 30), MOE_ERR_OUT_OF_MEMORY); /* a petabyte */
    CHECK_OK(moe_dev_alloc_slots(d, 2, bytes));
    CHECK(moe_dev_free_bytes(d) > 0);
    float x[4 * 256], y[4 * 256];
    moe_rng r = {5};
    test_fill(&r, x, sizeof x / sizeof *x);
    moe_dev_event ev = 0;
    /* Nothing uploaded: refused at submission, or the run fails. */
    const moe_status empty = moe_dev_run(d, 1, 4, x, y, 0, &ev);
    CHECK(empty == MOE_ERR_STATE || (empty == MOE_OK && moe_dev_wait(d, ev) == MOE_ERR_STATE));
    CHECK_STATUS(moe_dev_run(d, 2, 4, x, y, 0, &ev), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_dev_run(d, 0, 1, NULL, y, 0, &ev), MOE_ERR_INVALID_ARG);
    expert_buf big;
    expert_make(&big, 512, 512, MOE_DTYPE_BF16, &r);
    CHECK_STATUS(moe_dev_upload(d, 0, &big.v, &ev), MOE_ERR_INVALID_ARG); /* larger than a slot */
    moe_expert_view half = big.v;
    half.down = NULL;
    CHECK_STATUS(moe_dev_upload(d, 0, &half, &ev), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_dev_upload(d, 0, &big.v, NULL), MOE_ERR_INVALID_ARG);
    expert_free(&big);
    CHECK_OK(moe_dev_wait(d, 0));
    CHECK(moe_dev_query(d, 0));
    moe_dev_free(&d);
    moe_dev_free(&d); /* NULL: a no-op */
}

/* moe_layer_forward on the device against the CPU-only runtime, on
 * random routings, budgets and dtypes; the statistics show the GPU used,
 * its streams timed and the layers overlapped. */
static void runtime_matches_the_cpu(void) {
    const moe_dtype types[3] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_I8};
    const double budgets[3] = {0.25, 0.5, 1.0};
    moe_rng r = {77};
    for (int round = 0; round < 3; round++) {
        const uint32_t L = 3, E = 16, H = 256, I = 192, k = 2;
        test_model tm;
        test_model_make(&tm, L, E, H, I, types[round], 300 + (uint64_t)round);
        moe_runtime_params p = moe_runtime_default_params();
        p.n_threads = 2;
        moe_runtime_t *cpu = NULL, *gpu = NULL;
        p.policy = "static-cpu";
        CHECK_OK(moe_runtime_create(&cpu, tm.model, &p));
        p.device = row->kind;
        p.policy = "moerun";
        p.gpu_budget_fraction = budgets[round];
        p.profile_path = MOE_PROFILES_DIR "/ref-h100-pcie5-2s-xeon8480.txt";
        p.profile_any_host = 1;
        CHECK_OK(moe_runtime_create(&gpu, tm.model, &p));
        if (!cpu || !gpu) {
            moe_runtime_free(&cpu), moe_runtime_free(&gpu);
            test_model_free(&tm);
            return;
        }
        CHECK_EQ(moe_runtime_device(gpu), row->kind);
        for (int pass = 0; pass < 4; pass++) {
            const uint32_t n = pass % 2 ? 1 + moe_rng_below(&r, 3) : 64 + moe_rng_below(&r, 64);
            const size_t act = (size_t)n * H;
            float *x = malloc(act * sizeof *x), *ya = malloc(act * sizeof *x), *yb = malloc(act * sizeof *x);
            float *w = malloc((size_t)n * k * sizeof *w);
            int32_t *ids = malloc((size_t)n * k * sizeof *ids);
            for (uint32_t l = 0; l < L; l++) {
                test_fill(&r, x, act);
                test_routing(&r, n, E, k, ids, w);
                CHECK_OK(moe_layer_forward(cpu, l, n, x, k, ids, w, ya));
                CHECK_OK(moe_layer_forward(gpu, l, n, x, k, ids, w, yb));
                const double err = test_nmse(yb, ya, act), bound = row->tolerance(types[round]) +
                                                                   test_tolerance(types[round]);
                if (!(err <= bound))
                    fprintf(stderr, "%s %s pass %d layer %u: NMSE %.3g\n", reg->name, moe_dtype_name(types[round]),
                            pass, l, err);
                CHECK(err <= bound);
            }
            free(x), free(ya), free(yb), free(w), free(ids);
        }
        moe_stats st;
        CHECK_OK(moe_runtime_get_stats(gpu, &st));
        CHECK(st.expert_calls_gpu > 0 && st.bytes_copied > 0 && st.gpu_redone == 0);
        CHECK_OK(moe_runtime_stats(gpu, &st, sizeof st));
        CHECK(st.hybrid_layers > 0 && st.gpu_compute_seconds > 0 && st.gpu_copy_seconds > 0);
        printf("# %s %s budget %.2f: %llu experts on the GPU, %llu on the CPU, overlap %.2fx\n", reg->name,
               moe_dtype_name(types[round]), budgets[round], (unsigned long long)st.expert_calls_gpu,
               (unsigned long long)st.expert_calls_cpu, st.hybrid_serial_seconds / st.hybrid_span_seconds);
        moe_runtime_free(&gpu);
        moe_runtime_free(&cpu);
        test_model_free(&tm);
    }
}

static const test_case every_device[] = {
    TEST_CASE(runs_match_the_reference),
    TEST_CASE(times_are_ordered_seconds),
    TEST_CASE(limits_and_bad_arguments),
    TEST_CASE(runtime_matches_the_cpu),
};

/* ---- the simulated GPU's own cases --------------------------------------- */

static moe_dev *simdev(double scale, uint64_t memory) {
    const moe_simdev_params p = {.profile = &prof, .gpu = 0, .memory_bytes = memory, .time_scale = scale};
    moe_dev *d = NULL;
    CHECK_OK(moe_simdev_create(&d, &p));
    return d;
}

/* Every dtype, several token counts: a run computes exactly what the CPU
 * engine computes for the same expert and tokens, from the slot's copy of
 * the weights (the source is scribbled over after the upload). */
static void sim_runs_equal_the_cpu_engine(void) {
    const moe_dtype types[4] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_F16, MOE_DTYPE_I8};
    const uint32_t ms[5] = {0, 1, 3, 17, 70};
    moe_rng r = {11};
    moe_dev *d = simdev(0, 0);
    moe_cpu *c = NULL;
    const moe_cpu_params cp = {.n_threads = 1, .n_teams = 1};
    CHECK_OK(moe_cpu_create(&c, &cp));
    moe_cpu *c2 = NULL;
    const moe_cpu_params cp2 = {.n_threads = 2, .n_teams = 1};
    CHECK_OK(moe_cpu_create(&c2, &cp2));
    const uint32_t H = 96, I = 160;
    CHECK_OK(moe_dev_alloc_slots(d, 2, moe_dev_expert_bytes(H, I, MOE_DTYPE_F32, MOE_DTYPE_F32)));
    for (int ti = 0; ti < 4; ti++) {
        CHECK_OK(moe_cpu_prepare(c, H, I, types[ti]));
        CHECK_OK(moe_cpu_prepare(c2, H, I, types[ti]));
        expert_buf e, keep;
        expert_make(&e, H, I, types[ti], &r);
        moe_rng r2 = {11 + (uint64_t)ti};
        expert_make(&keep, H, I, types[ti], &r2);
        for (int k = 0; k < 3; k++) memcpy(keep.w[k], e.w[k], (size_t)H * I * moe_dtype_size(types[ti]));
        for (int k = 0; k < 3 && e.s[k]; k++) memcpy(keep.s[k], e.s[k], (k == 2 ? H : I) * sizeof(float));
        moe_dev_event up = 0;
        const uint32_t slot = (uint32_t)ti % 2;
        CHECK_OK(moe_dev_upload(d, slot, &e.v, &up));
        CHECK_OK(moe_dev_wait(d, up));
        for (int k = 0; k < 3; k++) memset(e.w[k], 0x55, (size_t)H * I * moe_dtype_size(types[ti]));
        for (int mi = 0; mi < 5; mi++) {
            const uint32_t m = ms[mi];
            float *x = randv((size_t)m * H, &r), *y = randv((size_t)m * H, &r), *want = randv((size_t)m * H, &r);
            moe_dev_event ev = 0;
            CHECK_OK(moe_dev_run(d, slot, m, x, y, up, &ev));
            CHECK_OK(moe_dev_wait(d, ev));
            const moe_cpu_task t = {.w = keep.v, .team = 0, .m = m, .x = x, .y = want};
            CHECK_OK(moe_cpu_run(c, &t, 1));
            CHECK(memcmp(y, want, (size_t)m * H * sizeof *y) == 0);
            /* The runtime's engine has more threads: they split rows, not sums. */
            CHECK_OK(moe_cpu_run(c2, &t, 1));
            CHECK(memcmp(y, want, (size_t)m * H * sizeof *y) == 0);
            free(x), free(y), free(want);
        }
        expert_free(&e), expert_free(&keep);
    }
    moe_simdev_stats st;
    moe_simdev_get_stats(d, &st);
    CHECK_EQ(st.uploads, 4);
    CHECK_EQ(st.runs, 20);
    CHECK_EQ(st.failed, 0);
    moe_cpu_free(&c);
    moe_cpu_free(&c2);
    moe_dev_free(&d);
    CHECK(d == NULL);
}

/* The modeled clock: uploads queue on the copy stream, each run starts when
 * its expert has arrived and the compute stream is free, so the second
 * upload overlaps the first run. Times come from the profile's figures;
 * a device that only models a timeline counts seconds from 0. */
static void sim_modeled_clock_overlaps_copies_and_runs(void) {
    const uint32_t H = 2048, I = 768, m = 4; /* Qwen3-30B's expert: the profile has its bf16 curve */
    moe_rng r = {5};
    expert_buf a, b;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    expert_make(&b, H, I, MOE_DTYPE_BF16, &r);
    moe_dev *d = simdev(0, 0);
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16, MOE_DTYPE_BF16);
    CHECK_OK(moe_dev_alloc_slots(d, 2, bytes));
    const double copy = moe_profile_copy_us(&prof, 0, bytes, true);
    const uint64_t act = (uint64_t)m * H * sizeof(float);
    const double run = moe_profile_copy_us(&prof, 0, act, true) + moe_profile_gpu_us(&prof, 0, H, I, MOE_DTYPE_BF16, m) +
                       moe_profile_d2h_us(&prof, 0, act);
    CHECK(copy > 0 && run > 0);
    float *x = randv((size_t)m * H, &r), *y1 = randv((size_t)m * H, &r), *y2 = randv((size_t)m * H, &r);
    moe_dev_event ua, ub, ra, rb;
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &ua));
    CHECK_OK(moe_dev_upload(d, 1, &b.v, &ub));
    CHECK_OK(moe_dev_run(d, 0, m, x, y1, ua, &ra));
    CHECK_OK(moe_dev_run(d, 1, m, x, y2, ub, &rb));
    CHECK_OK(moe_dev_wait(d, rb));
    CHECK(moe_dev_query(d, ua) && moe_dev_query(d, ra));
    double s, e;
    CHECK_OK(moe_dev_times(d, ua, &s, &e));
    CHECK(s == 0.0 && e == copy * 1e-6);
    CHECK_OK(moe_dev_times(d, ub, &s, &e));
    CHECK(s == copy * 1e-6 && e == (2 * copy) * 1e-6);
    CHECK_OK(moe_dev_times(d, ra, &s, &e));
    CHECK(s == copy * 1e-6 && e == (copy + run) * 1e-6);
    CHECK_OK(moe_dev_times(d, rb, &s, &e));
    const double rb_start = fmax(2 * copy, copy + run);
    CHECK(s == rb_start * 1e-6 && e == (rb_start + run) * 1e-6);
    moe_simdev_stats st;
    moe_simdev_get_stats(d, &st);
    CHECK(st.copy_busy_s == (2 * copy) * 1e-6 && st.compute_busy_s == (2 * run) * 1e-6 && st.end_s == e);
    CHECK_EQ(st.bytes_uploaded, 2 * bytes);
    free(x), free(y1), free(y2);
    expert_free(&a), expert_free(&b);
    moe_dev_free(&d);
}

/* On the host's clock (host_clock, time_scale 0): an operation starts no
 * earlier than its submission and lasts its modeled time, and the
 * interface's times are those, in moe_now() seconds. */
static void sim_host_clock_times(void) {
    const uint32_t H = 2048, I = 768, m = 2;
    moe_rng r = {21};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    const moe_simdev_params p = {.profile = &prof, .gpu = 0, .host_clock = true};
    moe_dev *d = NULL;
    CHECK_OK(moe_simdev_create(&d, &p));
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16, MOE_DTYPE_BF16);
    CHECK_OK(moe_dev_alloc_slots(d, 1, bytes));
    float *x = randv((size_t)m * H, &r), *y = randv((size_t)m * H, &r);
    const double before = moe_now();
    moe_dev_event u, run;
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &u));
    CHECK_OK(moe_dev_run(d, 0, m, x, y, u, &run));
    double s0, e0, s1, e1;
    CHECK_STATUS(moe_dev_times(d, 0, &s0, &e0), MOE_ERR_INVALID_ARG);
    CHECK_OK(moe_dev_wait(d, run));
    const double after = moe_now();
    CHECK_OK(moe_dev_times(d, u, &s0, &e0));
    CHECK_OK(moe_dev_times(d, run, &s1, &e1));
    const double copy = moe_profile_copy_us(&prof, 0, bytes, true) * 1e-6;
    const double runs = moe_profile_gpu_run_us(&prof, 0, H, I, MOE_DTYPE_BF16, m) * 1e-6;
    CHECK(s0 >= before - 1e-9 && s0 <= after); /* submitted within the interval */
    CHECK(fabs((e0 - s0) - copy) < 1e-9 && fabs((e1 - s1) - runs) < 1e-9);
    CHECK(s1 >= e0 - 1e-12); /* the run waited for the upload */
    moe_dev_free(&d);
    free(x), free(y);
    expert_free(&a);
}

/* In real time (time_scale 1) an upload's event does not complete before
 * its modeled duration has passed on the wall clock. */
static void sim_real_time_waits_for_the_modeled_end(void) {
    const uint32_t H = 2048, I = 768;
    moe_rng r = {9};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    const moe_simdev_params p = {.profile = &prof, .gpu = 0, .time_scale = 100.0}; /* 100x slower than modeled */
    moe_dev *d = NULL;
    CHECK_OK(moe_simdev_create(&d, &p));
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16, MOE_DTYPE_BF16);
    CHECK_OK(moe_dev_alloc_slots(d, 1, bytes));
    const double t0 = moe_now();
    moe_dev_event u;
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &u));
    CHECK_OK(moe_dev_wait(d, u));
    const double waited_us = (moe_now() - t0) * 1e6;
    CHECK(waited_us >= 100.0 * moe_profile_copy_us(&prof, 0, bytes, true) * 0.999);
    expert_free(&a);
    moe_dev_free(&d);
}

/* A run that does not wait for its slot's upload, and an upload into a
 * slot whose run is still in flight, are executor bugs: the device refuses
 * them (MOE_ERR_INTERNAL) instead of computing with half-copied weights.
 * Holding one stream makes the order deterministic. */
static void sim_hazards_are_caught(void) {
    const uint32_t H = 64, I = 96, m = 2;
    moe_rng r = {3};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    moe_dev *d = simdev(0, 0);
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16, MOE_DTYPE_BF16)));
    float *x = randv((size_t)m * H, &r), *y = randv((size_t)m * H, &r);
    moe_dev_event u, run;
    /* A run on a slot that never received an expert. */
    CHECK_OK(moe_dev_run(d, 0, m, x, y, 0, &run));
    CHECK_STATUS(moe_dev_wait(d, run), MOE_ERR_STATE);
    /* A run that forgot to wait for the upload, while the copy stream is held. */
    moe_simdev_hold(d, MOE_SIMDEV_COPY, true);
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &u));
    CHECK_OK(moe_dev_run(d, 0, m, x, y, 0, &run));
    CHECK_STATUS(moe_dev_wait(d, run), MOE_ERR_INTERNAL);
    CHECK(strstr(moe_last_error(), "before its upload") != NULL);
    moe_simdev_hold(d, MOE_SIMDEV_COPY, false);
    CHECK_OK(moe_dev_wait(d, u));
    /* An upload into the slot while its run is held on the compute stream. */
    moe_simdev_hold(d, MOE_SIMDEV_COMPUTE, true);
    CHECK_OK(moe_dev_run(d, 0, m, x, y, u, &run));
    moe_dev_event u2;
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &u2));
    CHECK_STATUS(moe_dev_wait(d, u2), MOE_ERR_INTERNAL);
    CHECK(strstr(moe_last_error(), "while its run") != NULL);
    moe_simdev_hold(d, MOE_SIMDEV_COMPUTE, false);
    CHECK_OK(moe_dev_wait(d, run)); /* the refused upload left the slot as it was */
    /* An error is reported once: waiting again is OK. */
    CHECK_OK(moe_dev_wait(d, u2));
    free(x), free(y);
    expert_free(&a);
    moe_dev_free(&d);
}

/* Injected faults: a failed allocation, a failed copy (its slot is unusable
 * until a later upload succeeds) and a failed kernel. */
static void sim_injected_faults_are_reported(void) {
    const uint32_t H = 64, I = 96, m = 3;
    moe_rng r = {4};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_F32, &r);
    const moe_simdev_params p = {.profile = &prof, .gpu = 0, .fail_alloc_at = 1, .fail_upload_at = 1, .fail_run_at = 2};
    moe_dev *d = NULL;
    CHECK_OK(moe_simdev_create(&d, &p));
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_F32, MOE_DTYPE_F32);
    CHECK_STATUS(moe_dev_alloc_slots(d, 1, bytes), MOE_ERR_OUT_OF_MEMORY);
    CHECK_OK(moe_dev_alloc_slots(d, 1, bytes));
    float *x = randv((size_t)m * H, &r), *y = randv((size_t)m * H, &r);
    moe_dev_event u, run;
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &u));
    CHECK_STATUS(moe_dev_wait(d, u), MOE_ERR_DEVICE);
    CHECK(strstr(moe_last_error(), "injected copy failure") != NULL);
    CHECK_OK(moe_dev_run(d, 0, m, x, y, u, &run)); /* run 1: on the slot whose upload failed */
    CHECK_STATUS(moe_dev_wait(d, run), MOE_ERR_DEVICE);
    CHECK(strstr(moe_last_error(), "upload") != NULL);
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &u));
    CHECK_OK(moe_dev_wait(d, u));
    CHECK_OK(moe_dev_run(d, 0, m, x, y, u, &run)); /* run 2: the injected kernel failure */
    CHECK_STATUS(moe_dev_wait(d, run), MOE_ERR_DEVICE);
    CHECK(strstr(moe_last_error(), "injected kernel failure") != NULL);
    CHECK_OK(moe_dev_run(d, 0, m, x, y, u, &run)); /* run 3 works again */
    CHECK_OK(moe_dev_wait(d, run));
    moe_simdev_stats st;
    moe_simdev_get_stats(d, &st);
    CHECK_EQ(st.failed, 3);
    moe_dev_stats gs;
    moe_dev_get_stats(d, &gs);
    CHECK_EQ(gs.failed, 3);
    free(x), free(y);
    expert_free(&a);
    moe_dev_free(&d);
}

/* The pool fits the device's memory or is refused; free_bytes follows it. */
static void sim_memory_budget(void) {
    moe_dev *d = simdev(0, 10000);
    CHECK(moe_dev_free_bytes(d) == 10000);
    CHECK_OK(moe_dev_alloc_slots(d, 4, 2500));
    CHECK(moe_dev_free_bytes(d) == 0);
    CHECK_STATUS(moe_dev_alloc_slots(d, 5, 2500), MOE_ERR_OUT_OF_MEMORY);
    CHECK(moe_dev_free_bytes(d) == 10000); /* the old pool is gone either way */
    CHECK_OK(moe_dev_alloc_slots(d, 3, 1000));
    CHECK(moe_dev_free_bytes(d) == 7000);
    CHECK_OK(moe_dev_alloc_slots(d, 0, 0));
    CHECK(moe_dev_free_bytes(d) == 10000);
    moe_dev_free(&d);
    /* Default: the profile's free memory of the GPU. */
    d = simdev(0, 0);
    CHECK(moe_dev_free_bytes(d) == prof.gpus[0].free_bytes);
    moe_dev_free(&d);
}

static void sim_bad_arguments_are_refused(void) {
    moe_dev *d = NULL;
    moe_simdev_params p = {.profile = &prof, .gpu = 1};
    CHECK_STATUS(moe_simdev_create(&d, &p), MOE_ERR_UNSUPPORTED);
    CHECK(d == NULL);
    p.gpu = 0;
    p.time_scale = -1;
    CHECK_STATUS(moe_simdev_create(&d, &p), MOE_ERR_INVALID_ARG);
    moe_profile none;
    moe_profile_init(&none);
    p = (moe_simdev_params){.profile = &none};
    CHECK_STATUS(moe_simdev_create(&d, &p), MOE_ERR_UNSUPPORTED);
    moe_profile_clear(&none);
    CHECK_STATUS(moe_simdev_create(&d, NULL), MOE_ERR_INVALID_ARG);

    moe_rng r = {6};
    expert_buf a;
    expert_make(&a, 64, 96, MOE_DTYPE_F32, &r);
    d = simdev(0, 0);
    moe_dev_event e = 0;
    CHECK_STATUS(moe_dev_upload(d, 0, &a.v, &e), MOE_ERR_INVALID_ARG); /* no pool */
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(64, 96, MOE_DTYPE_BF16, MOE_DTYPE_BF16)));
    CHECK_STATUS(moe_dev_upload(d, 0, &a.v, &e), MOE_ERR_INVALID_ARG); /* f32 does not fit a bf16 slot */
    CHECK(strstr(moe_last_error(), "slot 0") != NULL);
    CHECK_STATUS(moe_dev_upload(d, 1, &a.v, &e), MOE_ERR_INVALID_ARG);
    moe_expert_view half = a.v;
    half.down = NULL;
    CHECK_STATUS(moe_dev_upload(d, 0, &half, &e), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_dev_upload(d, 0, &a.v, NULL), MOE_ERR_INVALID_ARG);
    float x[64];
    CHECK_STATUS(moe_dev_run(d, 2, 1, x, x, 0, &e), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_dev_run(d, 0, 1, NULL, x, 0, &e), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_dev_run(d, 0, 1, x, x, 999, &e), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_dev_wait(d, 999), MOE_ERR_INVALID_ARG);
    CHECK_OK(moe_dev_wait(d, 0));
    CHECK(moe_dev_query(d, 0));
    double s, t;
    CHECK_STATUS(moe_dev_times(d, 999, &s, &t), MOE_ERR_INVALID_ARG);
    moe_dev_free(&d);
    moe_dev_free(&d); /* NULL: a no-op */
    expert_free(&a);
}

/* The registry's entry reads its faults from the environment and refuses
 * a malformed list, naming the variable. */
static void sim_registry_reads_the_environment(void) {
    const moe_dev_params dp = {.index = 0, .profile = &prof};
    moe_dev *d = NULL;
    setenv("MOE_SIM_FAIL", "upload", 1);
    CHECK_STATUS(moe_sim_reg.create(&d, &dp), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("MOE_SIM_FAIL=\"upload\"");
    CHECK(d == NULL);
    setenv("MOE_SIM_FAIL", "alloc:1", 1);
    CHECK_OK(moe_sim_reg.create(&d, &dp));
    if (d) CHECK_STATUS(moe_dev_alloc_slots(d, 1, 1000), MOE_ERR_OUT_OF_MEMORY);
    moe_dev_free(&d);
    unsetenv("MOE_SIM_FAIL");
    setenv("MOE_SIM_TIME_SCALE", "-2", 1);
    CHECK_STATUS(moe_sim_reg.create(&d, &dp), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("MOE_SIM_TIME_SCALE");
    unsetenv("MOE_SIM_TIME_SCALE");
}

static const test_case sim_cases[] = {
    TEST_CASE(sim_runs_equal_the_cpu_engine),
    TEST_CASE(sim_modeled_clock_overlaps_copies_and_runs),
    TEST_CASE(sim_host_clock_times),
    TEST_CASE(sim_real_time_waits_for_the_modeled_end),
    TEST_CASE(sim_hazards_are_caught),
    TEST_CASE(sim_injected_faults_are_reported),
    TEST_CASE(sim_memory_budget),
    TEST_CASE(sim_bad_arguments_are_refused),
    TEST_CASE(sim_registry_reads_the_environment),
};

/* ---- the CUDA device's own cases ------------------------------------------ */

#ifdef MOE_HAVE_CUDA
/* A GPU rounds activations to the weights' 16-bit type (the CPU keeps f16
 * activations in f32) and computes int8 experts as bf16. Block formats
 * above MOE_CUDADEV_GEMV_MAX_M tokens are computed as bf16 too: their
 * weights' exact f32 values rounded once more, beside the bf16 path's
 * roundings of x and h; a host replay of that path
 * (tests/test_cuda_quant.c, bf16_path_error) gives NMSE 1.4e-5 to 1.8e-5
 * against the reference, mxfp4 (whose values bf16 holds exactly) 6.9e-6,
 * so 1e-4. At or below it the decode GEMV computes in f32 from the exact
 * values: f32's bound (cuda_bound). */
static double cuda_tolerance(moe_dtype t) {
    switch (t) {
    case MOE_DTYPE_F32: return 1e-9;
    case MOE_DTYPE_F16: return 1e-5;
    case MOE_DTYPE_BF16: return 3e-4;
    case MOE_DTYPE_I8: return 3e-3;
    default: return moe_dtype_is_block(t) ? 1e-4 : 3e-3;
    }
}

/* The bound for an expert with gate and up in t and down in td on m
 * tokens: each matrix's path's own, added. A block-format matrix at
 * decode (the GEMV, f32 sums of the exact values) has f32's. */
static double cuda_bound(moe_dtype t, moe_dtype td, uint32_t m) {
    const moe_dtype ts[2] = {t, td};
    double b = 0;
    for (int i = 0; i < 2; i++)
        b += moe_dtype_is_block(ts[i]) && m <= MOE_CUDADEV_GEMV_MAX_M ? cuda_tolerance(MOE_DTYPE_F32)
                                                                      : cuda_tolerance(ts[i]);
    return b;
}

static moe_dev *cudadev(uint64_t memory) {
    const moe_cudadev_params p = {.device = 0, .memory_bytes = memory};
    moe_dev *d = NULL;
    CHECK_OK(moe_cudadev_create(&d, &p));
    return d;
}

/* Malloc'd host memory is registered for DMA on its first upload. */
static void cuda_registers_host_memory(void) {
    moe_rng r = {13};
    moe_dev *d = cudadev(0);
    if (!d) return;
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(256, 96, MOE_DTYPE_BF16, MOE_DTYPE_BF16)));
    expert_buf e;
    expert_make(&e, 256, 96, MOE_DTYPE_BF16, &r);
    moe_dev_event up = 0;
    CHECK_OK(moe_dev_upload(d, 0, &e.v, &up));
    CHECK_OK(moe_dev_wait(d, up));
    moe_cudadev_stats st;
    moe_cudadev_get_stats(d, &st);
    CHECK_EQ(st.uploads, 1);
    CHECK(st.pinned_bytes > 0);
    moe_dev_free(&d);
    expert_free(&e);
}

/* One slot, two experts in turn, runs submitted without waiting: the copy
 * stream waits for the slot's last run, so each run sees its own expert. */
static void cuda_slot_reuse_keeps_stream_order(void) {
    const uint32_t H = 512, I = 384, m = 5;
    moe_rng r = {7};
    moe_dev *d = cudadev(0);
    if (!d) return;
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16, MOE_DTYPE_BF16)));
    expert_buf a, b;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    expert_make(&b, H, I, MOE_DTYPE_BF16, &r);
    float *x = randv((size_t)m * H, &r), *ya = randv((size_t)m * H, &r), *yb = randv((size_t)m * H, &r);
    float *wa = randv((size_t)m * H, &r), *wb = randv((size_t)m * H, &r), *scratch = malloc(I * sizeof *scratch);
    moe_dev_event ua, ub, ra, rb;
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &ua));
    CHECK_OK(moe_dev_run(d, 0, m, x, ya, ua, &ra));
    CHECK_OK(moe_dev_upload(d, 0, &b.v, &ub));
    CHECK_OK(moe_dev_run(d, 0, m, x, yb, ub, &rb));
    CHECK_OK(moe_dev_wait(d, rb));
    CHECK(moe_dev_query(d, ra) && moe_dev_query(d, ua));
    moe_ref_expert(&a.v, m, x, wa, scratch);
    moe_ref_expert(&b.v, m, x, wb, scratch);
    CHECK(test_nmse(ya, wa, (size_t)m * H) <= cuda_tolerance(MOE_DTYPE_BF16));
    CHECK(test_nmse(yb, wb, (size_t)m * H) <= cuda_tolerance(MOE_DTYPE_BF16));
    /* Times on the host's clock, in stream order. */
    double s0, e0, s1, e1, s2, e2;
    CHECK_OK(moe_dev_times(d, ua, &s0, &e0));
    CHECK_OK(moe_dev_times(d, ra, &s1, &e1));
    CHECK_OK(moe_dev_times(d, ub, &s2, &e2));
    CHECK(s0 <= e0 && e0 <= s1 + 1e-6 && s1 <= e1 && e1 <= s2 + 1e-6 && s2 <= e2);
    CHECK(e2 <= moe_now() + 1e-3);
    CHECK_STATUS(moe_dev_times(d, 0, &s0, &e0), MOE_ERR_INVALID_ARG);
    free(x), free(ya), free(yb), free(wa), free(wb), free(scratch);
    moe_dev_free(&d);
    expert_free(&a), expert_free(&b);
}

/* A copy on the copy stream runs while an expert computes on the compute
 * stream: with pinned host memory their measured intervals overlap, and
 * the pair takes less than its parts one after another. Prints the
 * figures (the overlap measurement issue 7 asks for). */
static void cuda_copy_overlaps_compute(void) {
    const uint32_t H = 2048, I = 1408, m = 1024; /* DeepSeek-V2-Lite's expert, a prefill group */
    moe_rng r = {3};
    moe_dev *d = cudadev(0);
    if (!d) return;
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16, MOE_DTYPE_BF16);
    CHECK_OK(moe_dev_alloc_slots(d, 2, bytes));
    expert_buf a, b;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    expert_make(&b, H, I, MOE_DTYPE_BF16, &r);
    float *x = randv((size_t)m * H, &r), *y = randv((size_t)m * H, &r);
    moe_dev_event ua, ub, ra[4];
    CHECK_OK(moe_dev_upload(d, 0, &a.v, &ua));
    CHECK_OK(moe_dev_wait(d, ua));
    for (int round = 0; round < 4; round++) { /* the first rounds warm cuBLAS and register the pages */
        for (int i = 0; i < 4; i++) CHECK_OK(moe_dev_run(d, 0, m, x, y, ua, &ra[i]));
        CHECK_OK(moe_dev_upload(d, 1, &b.v, &ub));
        for (int i = 0; i < 4; i++) CHECK_OK(moe_dev_wait(d, ra[i]));
        CHECK_OK(moe_dev_wait(d, ub));
    }
    double rs, re, us, ue, s0, e0;
    CHECK_OK(moe_dev_times(d, ra[0], &rs, &e0));
    CHECK_OK(moe_dev_times(d, ra[3], &s0, &re));
    CHECK_OK(moe_dev_times(d, ub, &us, &ue));
    const double span = fmax(re, ue) - fmin(rs, us), parts = (re - rs) + (ue - us);
    printf("# overlap: 4 runs of %u tokens %.1f us, copy of %.1f MB %.1f us (%.1f GB/s), together %.1f us: %.2fx\n", m,
           (re - rs) * 1e6, (double)bytes / 1e6, (ue - us) * 1e6, (double)bytes / (ue - us) / 1e9, span * 1e6,
           parts / span);
    CHECK(us < re && rs < ue); /* the intervals overlap */
    free(x), free(y);
    moe_dev_free(&d);
    expert_free(&a), expert_free(&b);
}

/* A pool beyond the memory the device was given is refused. */
static void cuda_memory_limit(void) {
    moe_dev *d = cudadev(64ull << 20);
    if (!d) return;
    CHECK_STATUS(moe_dev_alloc_slots(d, 1000, 1u << 20), MOE_ERR_OUT_OF_MEMORY);
    CHECK_OK(moe_dev_alloc_slots(d, 2, moe_dev_expert_bytes(256, 128, MOE_DTYPE_BF16, MOE_DTYPE_BF16)));
    moe_dev_free(&d);
}

/* Every block format the device supports, decoded on the GPU by the
 * kernels its runs use, bit for bit as common/quant.c (the f32 values the
 * GEMV multiplies) and those values rounded to nearest even (the bf16 the
 * dequantize kernel gives cuBLAS). Random bytes: every code and sub-block
 * scale, f16 fields of every kind (subnormal, Inf, NaN), mxfp4's every
 * exponent. A wrong index, a fused multiply-add or flushed subnormals
 * show here before any NMSE does. */
static void cuda_decodes_every_format_bit_exactly(void) {
    moe_dev *d = cudadev(0);
    if (!d) return;
    moe_rng r = {41};
    int formats = 0;
    for (int ti = 0; ti < MOE_DTYPE_COUNT_; ti++) {
        const moe_dtype t = (moe_dtype)ti;
        if (!moe_dtype_is_block(t) || !moe_dev_supports(d, t)) continue;
        formats++;
        const uint32_t block = (uint32_t)moe_dtype_block(t), rows = 64, cols = 9 * block;
        const size_t n = (size_t)rows * cols, nb = n / block, bytes = moe_matrix_bytes(t, rows, cols);
        uint8_t *b = malloc(bytes);
        for (size_t i = 0; i < bytes; i++) b[i] = (uint8_t)moe_rng_next(&r);
        if (t == MOE_DTYPE_MXFP4)
            for (size_t i = 0; i < nb; i++) b[i * moe_dtype_block_bytes(t)] = (uint8_t)i;
        float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
        uint16_t *got16 = malloc(n * sizeof *got16);
        CHECK_OK(moe_quant_dequantize(t, b, want, n));
        CHECK_OK(moe_cudadev_decode(0, t, b, rows, cols, got, got16));
        size_t bad = 0, bad16 = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t gu, wu;
            memcpy(&gu, &got[i], sizeof gu), memcpy(&wu, &want[i], sizeof wu);
            const bool ok = gu == wu || (isnan(got[i]) && isnan(want[i]));
            const bool ok16 = got16[i] == moe_f32_to_bf16(want[i]);
            if ((!ok && bad++ == 0) || (!ok16 && bad16++ == 0))
                fprintf(stderr, "%s element %zu (block %zu): f32 0x%08x bf16 0x%04x, reference 0x%08x bf16 0x%04x\n",
                        moe_dtype_name(t), i, i / block, gu, got16[i], wu, moe_f32_to_bf16(want[i]));
        }
        if (bad || bad16) fprintf(stderr, "%s: %zu f32 and %zu bf16 of %zu elements differ\n", moe_dtype_name(t), bad, bad16, n);
        CHECK(bad == 0 && bad16 == 0);
        free(b), free(want), free(got), free(got16);
    }
    CHECK_EQ(formats, 13);
    float f;
    CHECK_STATUS(moe_cudadev_decode(0, MOE_DTYPE_BF16, &f, 1, 1, &f, NULL), MOE_ERR_UNSUPPORTED);
    moe_dev_free(&d);
}

/* One expert on m tokens against the reference within cuda_bound. */
static void check_expert_run(moe_dev *d, uint32_t slot, const expert_buf *e, uint32_t m, moe_dev_event after, moe_rng *r) {
    const uint32_t H = e->v.hidden;
    float *x = randv((size_t)m * H, r), *y = randv((size_t)m * H, r), *want = randv((size_t)m * H, r);
    float *scratch = malloc(e->v.inter * sizeof *scratch);
    moe_dev_event ev = 0;
    CHECK_OK(moe_dev_run(d, slot, m, x, y, after, &ev));
    CHECK_OK(moe_dev_wait(d, ev));
    moe_ref_expert(&e->v, m, x, want, scratch);
    const moe_dtype td = moe_view_down(&e->v);
    const double err = test_nmse(y, want, (size_t)m * H), bound = cuda_bound(e->v.dtype, td, m);
    printf("# cuda %ux%u %s, down %s, m=%u (%s): NMSE %.3g (bound %.3g)\n", H, e->v.inter, moe_dtype_name(e->v.dtype),
           moe_dtype_name(td), m, m <= MOE_CUDADEV_GEMV_MAX_M ? "GEMV" : "GEMM", err, bound);
    CHECK(err <= bound);
    free(x), free(y), free(want), free(scratch);
}

/* Every block format at 1 token and at the last and first token counts on
 * either side of the decode GEMV's threshold, and at 40: the GEMV within
 * f32's bound, the dequantize-then-cuBLAS path within bf16's. 32-blocks
 * on 160x96 (rows of 5 and 3 blocks: the warps' lanes do unequal work). */
static void cuda_block_formats_on_both_paths(void) {
    moe_dev *d = cudadev(0);
    if (!d) return;
    moe_rng r = {43};
    const uint32_t ms[4] = {1, MOE_CUDADEV_GEMV_MAX_M, MOE_CUDADEV_GEMV_MAX_M + 1, 40};
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(512, 256, MOE_DTYPE_F32, MOE_DTYPE_F32)));
    for (int ti = 0; ti < MOE_DTYPE_COUNT_; ti++) {
        const moe_dtype t = (moe_dtype)ti;
        if (!moe_dtype_is_block(t) || !moe_dev_supports(d, t)) continue;
        const bool k = moe_dtype_block(t) == 256;
        expert_buf e;
        expert_make(&e, k ? 512 : 160, k ? 256 : 96, t, &r);
        moe_dev_event up = 0;
        CHECK_OK(moe_dev_upload(d, 0, &e.v, &up));
        for (int mi = 0; mi < 4; mi++) check_expert_run(d, 0, &e, ms[mi], up, &r);
        CHECK_OK(moe_dev_wait(d, up)); /* the runs waited for it; its slot is reused next */
        expert_free(&e);
    }
    moe_dev_free(&d);
}

/* Down in a dtype of its own, each in a slot of exactly its bytes: as
 * llama.cpp's Q4_K_M (q6_K down), a 1408-element down row that only
 * 32-blocks fit (DeepSeek-V2-Lite's shape, q8_0 down), iq4_xs with iq4_nl,
 * and the element types beside block formats either way, int8's row
 * scales included (gate and up's, or down's alone). */
static void cuda_down_in_its_own_dtype(void) {
    const struct {
        moe_dtype t, td;
        uint32_t H, I;
    } cases[] = {
        {MOE_DTYPE_Q4_K, MOE_DTYPE_Q6_K, 1024, 512},  {MOE_DTYPE_Q4_K, MOE_DTYPE_Q8_0, 2048, 1408},
        {MOE_DTYPE_IQ4_XS, MOE_DTYPE_IQ4_NL, 512, 288}, {MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, 256, 96},
        {MOE_DTYPE_Q8_0, MOE_DTYPE_F32, 96, 160},     {MOE_DTYPE_Q5_0, MOE_DTYPE_F16, 160, 64},
        {MOE_DTYPE_I8, MOE_DTYPE_Q6_K, 256, 512},     {MOE_DTYPE_Q6_K, MOE_DTYPE_I8, 512, 256},
    };
    const uint32_t ms[4] = {1, MOE_CUDADEV_GEMV_MAX_M, MOE_CUDADEV_GEMV_MAX_M + 1, 17};
    moe_rng r = {47};
    moe_dev *d = cudadev(0);
    if (!d) return;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        CHECK(moe_dev_supports(d, cases[c].t) && moe_dev_supports(d, cases[c].td));
        expert_buf e;
        expert_make2(&e, cases[c].H, cases[c].I, cases[c].t, cases[c].td, &r);
        const size_t bytes = moe_dev_view_bytes(&e.v);
        CHECK_OK(moe_dev_alloc_slots(d, 1, bytes));
        moe_dev_stats before, after;
        moe_dev_get_stats(d, &before);
        moe_dev_event up = 0;
        CHECK_OK(moe_dev_upload(d, 0, &e.v, &up));
        for (int mi = 0; mi < 4; mi++) check_expert_run(d, 0, &e, ms[mi], up, &r);
        moe_dev_get_stats(d, &after);
        CHECK_EQ(after.bytes_uploaded - before.bytes_uploaded, bytes);
        expert_free(&e);
    }
    /* Rows of partial blocks are refused, naming the shape. */
    expert_buf e;
    expert_make2(&e, 256, 96, MOE_DTYPE_Q4_K, MOE_DTYPE_Q8_0, &r);
    e.v.down_dtype = MOE_DTYPE_Q6_K; /* 96-element rows */
    moe_dev_event up = 0;
    CHECK_STATUS(moe_dev_upload(d, 0, &e.v, &up), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("partial blocks");
    e.v.down_dtype = MOE_DTYPE_Q8_0;
    expert_free(&e);
    moe_dev_free(&d);
}

/* moe_layer_forward on device cuda against the CPU-only runtime on a
 * Q4_K_M-like model (q4_K, layer 1's down in q6_K), at decode and prefill
 * sizes: the runtime sizes slots for the larger layer and the GPU runs
 * experts of both. */
static void cuda_runtime_runs_block_formats(void) {
    enum { L = 2, E = 8 };
    const uint32_t H = 512, I = 256, k = 2;
    moe_rng r = {53};
    expert_buf bufs[L * E];
    moe_model_t *model = NULL;
    CHECK_OK(moe_model_create(&model, L));
    const moe_layer_desc desc = moe_layer_desc_init(E, H, I, MOE_DTYPE_Q4_K);
    for (uint32_t l = 0; l < L; l++) {
        const moe_dtype td = l == 1 ? MOE_DTYPE_Q6_K : MOE_DTYPE_Q4_K;
        CHECK_OK(moe_model_set_layer(model, l, &desc));
        if (l == 1) CHECK_OK(moe_model_set_down_dtype(model, l, td));
        for (uint32_t e = 0; e < E; e++) {
            expert_buf *b = &bufs[l * E + e];
            expert_make2(b, H, I, MOE_DTYPE_Q4_K, td, &r);
            const moe_expert_weights w = {.gate = b->v.gate, .up = b->v.up, .down = b->v.down};
            CHECK_OK(moe_model_set_expert(model, l, e, &w));
        }
    }
    moe_runtime_params p = moe_runtime_default_params();
    p.n_threads = 2;
    moe_runtime_t *cpu = NULL, *gpu = NULL;
    p.policy = "static-cpu";
    CHECK_OK(moe_runtime_create(&cpu, model, &p));
    p.device = MOE_DEVICE_CUDA;
    p.policy = "moerun";
    p.gpu_budget_fraction = 0.5;
    p.profile_path = MOE_PROFILES_DIR "/ref-h100-pcie5-2s-xeon8480.txt";
    p.profile_any_host = 1;
    CHECK_OK(moe_runtime_create(&gpu, model, &p));
    if (cpu && gpu) {
        CHECK_EQ(moe_runtime_device(gpu), MOE_DEVICE_CUDA);
        const double bound = cuda_tolerance(MOE_DTYPE_Q4_K) + cuda_tolerance(MOE_DTYPE_Q6_K) +
                             test_tolerance(MOE_DTYPE_Q4_K) + test_tolerance(MOE_DTYPE_Q6_K);
        for (int pass = 0; pass < 4; pass++) {
            const uint32_t n = pass % 2 ? 1 + moe_rng_below(&r, 3) : 40 + moe_rng_below(&r, 24);
            const size_t act = (size_t)n * H;
            float *x = malloc(act * sizeof *x), *ya = malloc(act * sizeof *x), *yb = malloc(act * sizeof *x);
            float *w = malloc((size_t)n * k * sizeof *w);
            int32_t *ids = malloc((size_t)n * k * sizeof *ids);
            for (uint32_t l = 0; l < L; l++) {
                test_fill(&r, x, act);
                test_routing(&r, n, E, k, ids, w);
                CHECK_OK(moe_layer_forward(cpu, l, n, x, k, ids, w, ya));
                CHECK_OK(moe_layer_forward(gpu, l, n, x, k, ids, w, yb));
                const double err = test_nmse(yb, ya, act);
                if (!(err <= bound)) fprintf(stderr, "cuda q4_K pass %d layer %u: NMSE %.3g\n", pass, l, err);
                CHECK(err <= bound);
            }
            free(x), free(ya), free(yb), free(w), free(ids);
        }
        moe_stats st;
        CHECK_OK(moe_runtime_get_stats(gpu, &st));
        CHECK(st.expert_calls_gpu > 0 && st.gpu_redone == 0);
        printf("# cuda q4_K/q6_K model: %llu experts on the GPU, %llu on the CPU\n",
               (unsigned long long)st.expert_calls_gpu, (unsigned long long)st.expert_calls_cpu);
    }
    moe_runtime_free(&gpu);
    moe_runtime_free(&cpu);
    moe_model_free(&model);
    for (uint32_t i = 0; i < L * E; i++) expert_free(&bufs[i]);
}

/* Prints what the block-format paths take on a Qwen3-MoE-sized expert
 * (2048x768, q4_K with q6_K down, resident): the decode GEMV at 1 and 8
 * tokens, the dequantize-then-cuBLAS path at 9, 64 and 512, each run's
 * device time (x in, kernels, y out) and the weight bytes it reads per
 * second. Figures for docs/devices.md, not checked. */
static void cuda_block_formats_speed(void) {
    const uint32_t H = 2048, I = 768, ms[5] = {1, 8, 9, 64, 512}, reps = 20;
    moe_rng r = {59};
    moe_dev *d = cudadev(0);
    if (!d) return;
    expert_buf e;
    expert_make2(&e, H, I, MOE_DTYPE_Q4_K, MOE_DTYPE_Q6_K, &r);
    const size_t bytes = moe_dev_view_bytes(&e.v);
    CHECK_OK(moe_dev_alloc_slots(d, 1, bytes));
    moe_dev_event up = 0, ev[20];
    CHECK_OK(moe_dev_upload(d, 0, &e.v, &up));
    float *x = randv((size_t)512 * H, &r), *y = randv((size_t)512 * H, &r);
    for (int mi = 0; mi < 5; mi++) {
        for (uint32_t i = 0; i < 3; i++) CHECK_OK(moe_dev_run(d, 0, ms[mi], x, y, up, &ev[i])); /* warm */
        CHECK_OK(moe_dev_wait(d, ev[2]));
        for (uint32_t i = 0; i < reps; i++) CHECK_OK(moe_dev_run(d, 0, ms[mi], x, y, up, &ev[i]));
        CHECK_OK(moe_dev_wait(d, ev[reps - 1]));
        double sum = 0, s0, e0;
        for (uint32_t i = 0; i < reps; i++)
            if (moe_dev_times(d, ev[i], &s0, &e0) == MOE_OK) sum += e0 - s0;
        const double us = sum / reps * 1e6;
        printf("# speed %ux%u q4_K, down q6_K, m=%u (%s): %.1f us a run, %.0f GB/s of weights\n", H, I, ms[mi],
               ms[mi] <= MOE_CUDADEV_GEMV_MAX_M ? "GEMV" : "dequantize + cuBLAS", us, (double)bytes / (us * 1e3));
    }
    free(x), free(y);
    moe_dev_free(&d);
    expert_free(&e);
}

static const test_case cuda_cases[] = {
    TEST_CASE(cuda_registers_host_memory),
    TEST_CASE(cuda_slot_reuse_keeps_stream_order),
    TEST_CASE(cuda_copy_overlaps_compute),
    TEST_CASE(cuda_memory_limit),
    TEST_CASE(cuda_decodes_every_format_bit_exactly),
    TEST_CASE(cuda_block_formats_on_both_paths),
    TEST_CASE(cuda_down_in_its_own_dtype),
    TEST_CASE(cuda_runtime_runs_block_formats),
    TEST_CASE(cuda_block_formats_speed),
};
#endif

/* ---- the table ------------------------------------------------------------ */

static const device_row rows[] = {
    {MOE_DEVICE_SIM, sim_tolerance, sim_cases, sizeof sim_cases / sizeof sim_cases[0]},
#ifdef MOE_HAVE_CUDA
    {MOE_DEVICE_CUDA, cuda_tolerance, cuda_cases, sizeof cuda_cases / sizeof cuda_cases[0]},
#endif
};

/* A kind the machine lacks reports its absence instead of crashing: no
 * device is created and the error says why. */
static bool absence_reported(const moe_dev_reg *r) {
    moe_dev *d = NULL;
    const moe_dev_params p = {.index = 0, .profile = &prof};
    const moe_status st = r->create(&d, &p);
    if (st != MOE_ERR_NO_DEVICE || d != NULL) {
        printf("FAIL: device %s: creating one where there is none returned %s\n", r->name, moe_status_str(st));
        moe_dev_free(&d);
        return false;
    }
    printf("device %s: skipped: %s\n", r->name, moe_last_error());
    return true;
}

int main(int argc, char **argv) {
    moe_profile_init(&prof);
    if (moe_profile_load(&prof, MOE_PROFILES_DIR "/ref-h100-pcie5-2s-xeon8480.txt") != MOE_OK) {
        fprintf(stderr, "%s\n", moe_last_error());
        return 1;
    }
    /* Every registered kind has a row: a new device is a row here. */
    const moe_dev_reg *const *regs;
    const size_t n_regs = moe_dev_registry(&regs);
    int rc = 0, ran = 0;
    for (size_t i = 0; i < n_regs; i++) {
        const device_row *found = NULL;
        for (size_t j = 0; j < sizeof rows / sizeof rows[0]; j++)
            if (rows[j].kind == regs[i]->kind) found = &rows[j];
        if (!found) {
            printf("FAIL: device %s is registered but has no row in test_device.c\n", regs[i]->name);
            rc = 1;
            continue;
        }
        row = found, reg = regs[i];
        if (!reg->modeled && reg->count() <= 0) {
            rc |= !absence_reported(reg);
            continue;
        }
        char suite[64];
        snprintf(suite, sizeof suite, "device.%s", reg->name);
        rc |= run_tests(suite, every_device, sizeof every_device / sizeof every_device[0], argc, argv);
        rc |= run_tests(suite, row->own, row->n_own, argc, argv);
        ran++;
    }
    moe_profile_clear(&prof);
    return rc ? 1 : ran ? 0 : TEST_SKIP;
}
