/* test_cudadev.c - the CUDA device (gpu/cuda/cudadev.h) behind the device
 * interface, and the runtime driving it: results against the reference
 * expert in every dtype, slot reuse and stream order, measured times,
 * overlap of a copy with a run, memory limits and bad arguments; then
 * moe_layer_forward on device cuda against the CPU-only runtime. Exits 77
 * (skipped) without CUDA in the build or a GPU, after checking that the
 * absence is reported. */
#define _POSIX_C_SOURCE 200809L
#include "cudadev.h"
#include "experts.h"
#include "gpu.h"
#include "util.h"

#ifndef MOE_PROFILES_DIR
#error "MOE_PROFILES_DIR must name profiles/machines"
#endif

/* The GPU rounds activations to the weights' 16-bit type (the CPU keeps
 * f16 activations in f32) and computes int8 experts as bf16. */
static double gpu_tolerance(moe_dtype t) {
    switch (t) {
    case MOE_DTYPE_F32: return 1e-9;
    case MOE_DTYPE_F16: return 1e-5;
    case MOE_DTYPE_BF16: return 3e-4;
    default: return 3e-3;
    }
}

static moe_dev *cudadev(uint64_t memory) {
    const moe_cudadev_params p = {.device = 0, .memory_bytes = memory};
    moe_dev *d = NULL;
    CHECK_OK(moe_cudadev_create(&d, &p));
    return d;
}

static float *randv(size_t n, moe_rng *r) {
    float *v = malloc((n ? n : 1) * sizeof *v);
    test_fill(r, v, n);
    return v;
}

/* Every dtype, odd shapes, 0 to 300 tokens: the slot's expert on the GPU
 * against the reference expert on the host's copy. */
static void runs_match_the_reference(void) {
    const moe_dtype types[4] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_F16, MOE_DTYPE_I8};
    const uint32_t shapes[3][2] = {{72, 104}, {256, 96}, {2048, 768}};
    const uint32_t ms[6] = {0, 1, 3, 17, 64, 300};
    moe_rng r = {31};
    moe_dev *d = cudadev(0);
    if (!d) return;
    CHECK_OK(moe_dev_alloc_slots(d, 2, moe_dev_expert_bytes(2048, 768, MOE_DTYPE_F32)));
    expert_buf all[12]; /* registered host memory stays allocated until the device is gone */
    for (int si = 0; si < 3; si++)
        for (int ti = 0; ti < 4; ti++) {
            const uint32_t H = shapes[si][0], I = shapes[si][1];
            expert_buf e;
            expert_make(&e, H, I, types[ti], &r);
            all[si * 4 + ti] = e;
            moe_dev_event up = 0;
            const uint32_t slot = (uint32_t)(si + ti) % 2;
            CHECK_OK(moe_dev_upload(d, slot, &e.v, &up));
            float *scratch = malloc(I * sizeof *scratch);
            for (int mi = 0; mi < 6; mi++) {
                const uint32_t m = ms[mi];
                float *x = randv((size_t)m * H, &r), *y = randv((size_t)m * H, &r), *want = randv((size_t)m * H, &r);
                moe_dev_event ev = 0;
                CHECK_OK(moe_dev_run(d, slot, m, x, y, up, &ev));
                CHECK_OK(moe_dev_wait(d, ev));
                moe_ref_expert(&e.v, m, x, want, scratch);
                const double err = test_nmse(y, want, (size_t)m * H);
                if (!(err <= gpu_tolerance(types[ti])))
                    fprintf(stderr, "%ux%u %s m=%u: NMSE %.3g\n", H, I, moe_dtype_name(types[ti]), m, err);
                CHECK(err <= gpu_tolerance(types[ti]));
                free(x), free(y), free(want);
            }
            free(scratch);
        }
    moe_cudadev_stats st;
    moe_cudadev_get_stats(d, &st);
    CHECK_EQ(st.uploads, 12);
    CHECK_EQ(st.runs, 72);
    CHECK(st.pinned_bytes > 0); /* malloc'd host memory registers */
    moe_dev_free(&d);
    for (int i = 0; i < 12; i++) expert_free(&all[i]);
}

/* One slot, two experts in turn, runs submitted without waiting: the copy
 * stream waits for the slot's last run, so each run sees its own expert. */
static void slot_reuse_keeps_stream_order(void) {
    const uint32_t H = 512, I = 384, m = 5;
    moe_rng r = {7};
    moe_dev *d = cudadev(0);
    if (!d) return;
    CHECK_OK(moe_dev_alloc_slots(d, 1, moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16)));
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
    CHECK(test_nmse(ya, wa, (size_t)m * H) <= gpu_tolerance(MOE_DTYPE_BF16));
    CHECK(test_nmse(yb, wb, (size_t)m * H) <= gpu_tolerance(MOE_DTYPE_BF16));
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
static void copy_overlaps_compute(void) {
    const uint32_t H = 2048, I = 1408, m = 1024; /* DeepSeek-V2-Lite's expert, a prefill group */
    moe_rng r = {3};
    moe_dev *d = cudadev(0);
    if (!d) return;
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16);
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

/* A pool beyond the device's memory is refused and leaves no pool; the
 * device stays usable. Runs on empty or missing slots are refused. */
static void limits_and_bad_arguments(void) {
    moe_dev *d = cudadev(64ull << 20);
    if (!d) return;
    const uint32_t H = 256, I = 128;
    const size_t bytes = moe_dev_expert_bytes(H, I, MOE_DTYPE_BF16);
    CHECK_STATUS(moe_dev_alloc_slots(d, 1000, 1u << 20), MOE_ERR_OUT_OF_MEMORY);
    CHECK_OK(moe_dev_alloc_slots(d, 2, bytes));
    float x[4 * 256], y[4 * 256];
    moe_rng r = {5};
    test_fill(&r, x, sizeof x / sizeof *x);
    moe_dev_event ev = 0;
    CHECK_STATUS(moe_dev_run(d, 1, 4, x, y, 0, &ev), MOE_ERR_STATE); /* nothing uploaded */
    CHECK_STATUS(moe_dev_run(d, 2, 4, x, y, 0, &ev), MOE_ERR_INVALID_ARG);
    expert_buf big;
    expert_make(&big, 512, 512, MOE_DTYPE_BF16, &r);
    CHECK_STATUS(moe_dev_upload(d, 0, &big.v, &ev), MOE_ERR_INVALID_ARG); /* larger than a slot */
    expert_free(&big);
    CHECK(moe_dev_free_bytes(d) > 0);
    moe_dev_free(&d);
}

/* moe_layer_forward on device cuda against the CPU-only runtime, on
 * random routings, budgets and dtypes; statistics show the GPU used. */
static void runtime_on_cuda_matches_cpu(void) {
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
        p.device = MOE_DEVICE_CUDA;
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
        CHECK_EQ(moe_runtime_device(gpu), MOE_DEVICE_CUDA);
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
                const double err = test_nmse(yb, ya, act);
                if (!(err <= gpu_tolerance(types[round]) + test_tolerance(types[round])))
                    fprintf(stderr, "%s pass %d layer %u: NMSE %.3g\n", moe_dtype_name(types[round]), pass, l, err);
                CHECK(err <= gpu_tolerance(types[round]) + test_tolerance(types[round]));
            }
            free(x), free(ya), free(yb), free(w), free(ids);
        }
        moe_stats st;
        CHECK_OK(moe_runtime_get_stats(gpu, &st));
        CHECK(st.expert_calls_gpu > 0 && st.bytes_copied > 0 && st.gpu_redone == 0);
        CHECK(st.hybrid_layers > 0 && st.gpu_compute_seconds > 0 && st.gpu_copy_seconds > 0);
        printf("# %s budget %.2f: %llu experts on the GPU, %llu on the CPU, overlap %.2fx\n",
               moe_dtype_name(types[round]), budgets[round], (unsigned long long)st.expert_calls_gpu,
               (unsigned long long)st.expert_calls_cpu, st.hybrid_serial_seconds / st.hybrid_span_seconds);
        moe_runtime_free(&gpu);
        moe_runtime_free(&cpu);
        test_model_free(&tm);
    }
}

int main(int argc, char **argv) {
    if (moe_gpu_count() == 0) {
        /* Absence is reported, never a crash. */
        moe_dev *d = NULL;
        const moe_cudadev_params p = {.device = 0};
        if (moe_cudadev_create(&d, &p) != MOE_ERR_NO_DEVICE || d != NULL) {
            printf("FAIL: moe_cudadev_create without a GPU\n");
            return 1;
        }
        printf("skipped: no CUDA device (%s)\n", moe_last_error());
        return 77;
    }
    static const test_case cases[] = {
        TEST_CASE(runs_match_the_reference), TEST_CASE(slot_reuse_keeps_stream_order), TEST_CASE(copy_overlaps_compute),
        TEST_CASE(limits_and_bad_arguments), TEST_CASE(runtime_on_cuda_matches_cpu),
    };
    return run_tests("cudadev", cases, sizeof cases / sizeof cases[0], argc, argv);
}
