/* test_simdev.c - the simulated GPU (gpu/sim/simdev.h) behind the device
 * interface: results equal to the CPU engine's, the modeled clock of both
 * streams and their overlap, hazards an executor must avoid, injected
 * faults, the memory budget and bad arguments. Nothing here is timed:
 * the modeled clock is checked with time_scale 0, and the one real-time
 * case only checks that completion does not come before its modeled end. */
#include <math.h>

#include "engine.h"
#include "experts.h"
#include "simdev.h"
#include "util.h"

#ifndef MOE_PROFILES_DIR
#error "MOE_PROFILES_DIR must name profiles/machines"
#endif

static moe_profile prof; /* the H100 reference profile: [gpu] bf16 curves, [link] rates */

static float *randv(size_t n, moe_rng *r) {
    float *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = moe_rng_range(r, -1.0f, 1.0f);
    return v;
}

static moe_dev *simdev(double scale, uint64_t memory) {
    const moe_simdev_params p = {.profile = &prof, .gpu = 0, .memory_bytes = memory, .time_scale = scale};
    moe_dev *d = NULL;
    CHECK_OK(moe_simdev_create(&d, &p));
    return d;
}

/* Every dtype, several token counts: a run computes exactly what the CPU
 * engine computes for the same expert and tokens, from the slot's copy of
 * the weights (the source is scribbled over after the upload). */
static void runs_equal_the_cpu_engine(void) {
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
    CHECK_OK(moe_dev_alloc_slots(d, 2, moe_dev_expert_bytes(H, I, MOE_DTYPE_F32)));
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
 * upload overlaps the first run. Times come from the profile's figures. */
static void modeled_clock_overlaps_copies_and_runs(void) {
    const uint32_t H = 2048, I = 768, m = 4; /* Qwen3-30B's expert: the profile has its bf16 curve */
    moe_rng r = {5};
    expert_buf a, b;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    expert_make(&b, H, I, MOE_DTYPE_BF16, &r);
    moe_dev *d = simdev(0, 0);
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16);
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
    CHECK_OK(moe_simdev_times(d, ua, &s, &e));
    CHECK(s == 0.0 && e == copy);
    CHECK_OK(moe_simdev_times(d, ub, &s, &e));
    CHECK(s == copy && e == 2 * copy);
    CHECK_OK(moe_simdev_times(d, ra, &s, &e));
    CHECK(s == copy && e == copy + run);
    CHECK_OK(moe_simdev_times(d, rb, &s, &e));
    CHECK(s == fmax(2 * copy, copy + run) && e == s + run);
    moe_simdev_stats st;
    moe_simdev_get_stats(d, &st);
    CHECK(st.copy_busy_us == 2 * copy && st.compute_busy_us == 2 * run && st.end_us == e);
    CHECK_EQ(st.bytes_uploaded, 2 * bytes);
    free(x), free(y1), free(y2);
    expert_free(&a), expert_free(&b);
    moe_dev_free(&d);
}

/* On the host's clock (host_clock, time_scale 0): an operation starts no
 * earlier than its submission and lasts its modeled time, and the
 * interface's times are those, in moe_now() seconds. */
static void host_clock_times(void) {
    const uint32_t H = 2048, I = 768, m = 2;
    moe_rng r = {21};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    const moe_simdev_params p = {.profile = &prof, .gpu = 0, .host_clock = true};
    moe_dev *d = NULL;
    CHECK_OK(moe_simdev_create(&d, &p));
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16);
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
static void real_time_waits_for_the_modeled_end(void) {
    const uint32_t H = 2048, I = 768;
    moe_rng r = {9};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    const moe_simdev_params p = {.profile = &prof, .gpu = 0, .time_scale = 100.0}; /* 100x slower than modeled */
    moe_dev *d = NULL;
    CHECK_OK(moe_simdev_create(&d, &p));
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16);
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
static void hazards_are_caught(void) {
    const uint32_t H = 64, I = 96, m = 2;
    moe_rng r = {3};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_BF16, &r);
    moe_dev *d = simdev(0, 0);
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16)));
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
static void injected_faults_are_reported(void) {
    const uint32_t H = 64, I = 96, m = 3;
    moe_rng r = {4};
    expert_buf a;
    expert_make(&a, H, I, MOE_DTYPE_F32, &r);
    const moe_simdev_params p = {.profile = &prof, .gpu = 0, .fail_alloc_at = 1, .fail_upload_at = 1, .fail_run_at = 2};
    moe_dev *d = NULL;
    CHECK_OK(moe_simdev_create(&d, &p));
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_F32);
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
    free(x), free(y);
    expert_free(&a);
    moe_dev_free(&d);
}

/* The pool fits the device's memory or is refused; free_bytes follows it. */
static void memory_budget(void) {
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

static void bad_arguments_are_refused(void) {
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
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(64, 96, MOE_DTYPE_BF16)));
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
    CHECK_STATUS(moe_simdev_times(d, 999, &s, &t), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_simdev_times(NULL, 1, &s, &t), MOE_ERR_INVALID_ARG);
    moe_dev_free(&d);
    moe_dev_free(&d); /* NULL: a no-op */
    expert_free(&a);
}

int main(int argc, char **argv) {
    moe_profile_init(&prof);
    if (moe_profile_load(&prof, MOE_PROFILES_DIR "/ref-h100-pcie5-2s-xeon8480.txt") != MOE_OK) {
        fprintf(stderr, "%s\n", moe_last_error());
        return 1;
    }
    static const test_case cases[] = {
        TEST_CASE(runs_equal_the_cpu_engine),    TEST_CASE(modeled_clock_overlaps_copies_and_runs), TEST_CASE(host_clock_times),
        TEST_CASE(real_time_waits_for_the_modeled_end), TEST_CASE(hazards_are_caught),
        TEST_CASE(injected_faults_are_reported), TEST_CASE(memory_budget),
        TEST_CASE(bad_arguments_are_refused),
    };
    const int rc = run_tests("simdev", cases, sizeof cases / sizeof cases[0], argc, argv);
    moe_profile_clear(&prof);
    return rc;
}
