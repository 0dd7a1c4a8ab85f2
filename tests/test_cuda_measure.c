/* test_cuda_measure.c - the profiler's CUDA measurements
 * (gpu/cuda/cuda_measure.h): the f32 expert against the reference expert,
 * the probe and plausible figures. Built only with CUDA; exits 77
 * (skipped) where the machine has no GPU, after checking that the absence
 * is reported properly. */
#include "expert.h"
#include "cuda_measure.h"
#include "util.h"

#include <cuda_runtime_api.h>

static float *to_device(const float *h, size_t n) {
    float *d = NULL;
    if (cudaMalloc((void **)&d, n * sizeof *d) != cudaSuccess) return NULL;
    if (h) cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice);
    return d;
}

static void expert_matches_reference(void) {
    moe_cuda_ctx *ctx = NULL;
    CHECK_OK(moe_cuda_ctx_create(&ctx, 0));
    if (!ctx) return;
    moe_rng r = {99};
    const uint32_t shapes[][3] = {{7, 13, 1}, {64, 96, 4}, {2048, 1408, 1}, {2048, 1408, 33}, {256, 512, 300}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const uint32_t H = shapes[s][0], I = shapes[s][1], M = shapes[s][2];
        const size_t nw = (size_t)H * I;
        float *w = malloc(3 * nw * sizeof *w), *x = malloc((size_t)M * H * sizeof *x);
        float *yr = malloc((size_t)M * H * sizeof *yr), *yg = malloc((size_t)M * H * sizeof *yg);
        float *scratch = malloc(I * sizeof *scratch);
        for (size_t i = 0; i < 3 * nw; i++) w[i] = moe_rng_range(&r, -1, 1) / sqrtf((float)(i < 2 * nw ? H : I));
        test_fill(&r, x, (size_t)M * H);
        moe_expert_view v = {w, w + nw, w + 2 * nw, MOE_DTYPE_F32, H, I, NULL, NULL, NULL, false, MOE_DTYPE_F32};
        moe_ref_expert(&v, M, x, yr, scratch);
        float *dw = to_device(w, 3 * nw), *dx = to_device(x, (size_t)M * H);
        float *dy = to_device(NULL, (size_t)M * H), *ds = to_device(NULL, 2 * (size_t)M * I);
        CHECK(dw && dx && dy && ds);
        if (dw && dx && dy && ds) {
            CHECK_OK(moe_cuda_expert_f32(ctx, dw, dw + nw, dw + 2 * nw, H, I, M, dx, dy, ds));
            CHECK_OK(moe_cuda_sync(ctx));
            CHECK(cudaMemcpy(yg, dy, (size_t)M * H * sizeof *yg, cudaMemcpyDeviceToHost) == cudaSuccess);
            /* TF32 may be used by cuBLAS for f32: allow its rounding. */
            const double e = test_nmse(yg, yr, (size_t)M * H);
            if (!(e < 1e-5)) {
                fprintf(stderr, "shape %ux%u m=%u: nmse %g\n", H, I, M, e);
                CHECK(e < 1e-5);
            }
        }
        cudaFree(dw), cudaFree(dx), cudaFree(dy), cudaFree(ds);
        free(w), free(x), free(yr), free(yg), free(scratch);
    }
    moe_cuda_ctx_free(&ctx);
    CHECK(ctx == NULL);
}

static void probe_describes_device(void) {
    moe_dev_info gi;
    CHECK_OK(moe_cuda_probe(0, &gi));
    CHECK(gi.name[0] != 0 && gi.cc_major >= 8 && gi.total_bytes >= gi.free_bytes && gi.free_bytes > 0);
    printf("GPU 0: %s, compute %d.%d, %.1f of %.1f GiB free\n", gi.name, gi.cc_major, gi.cc_minor,
           (double)gi.free_bytes / (1 << 30), (double)gi.total_bytes / (1 << 30));
    CHECK_STATUS(moe_cuda_probe(moe_cuda_count(), &gi), MOE_ERR_NO_DEVICE);
}

/* The profiler's GPU measurements give plausible figures: copies between
 * 0.1 and 1000 GB/s, a pinned upload no slower than a pageable one by more
 * than noise, launches and events under 10 ms, an expert that takes longer
 * on more tokens. */
static void measurements_are_plausible(void) {
    double a[4], b[4];
    const moe_dev_copy_kind kinds[3] = {MOE_DEV_H2D_PINNED, MOE_DEV_H2D_PAGEABLE, MOE_DEV_D2H_PINNED};
    double best[3] = {0};
    for (int k = 0; k < 3; k++) {
        CHECK_OK(moe_cuda_time_copy(0, kinds[k], 16u << 20, 4, a));
        for (int i = 0; i < 4; i++) {
            CHECK(a[i] > 0.1 && a[i] < 1000.0);
            best[k] = a[i] > best[k] ? a[i] : best[k];
        }
    }
    printf("  16 MB: upload pinned %.1f GB/s, pageable %.1f, download pinned %.1f\n", best[0], best[1], best[2]);
    CHECK(best[0] > 0.7 * best[1]);
    CHECK_OK(moe_cuda_time_launch(0, 4, a, b));
    for (int i = 0; i < 4; i++) CHECK(a[i] > 0 && a[i] < 1e4 && b[i] > 0 && b[i] < 1e4);
    double small[4], large[4];
    CHECK_OK(moe_cuda_time_expert_f32(0, 2048, 1408, 1, 4, small));
    CHECK_OK(moe_cuda_time_expert_f32(0, 2048, 1408, 4096, 4, large));
    CHECK(small[3] > 0 && large[3] > small[3]);
    CHECK_STATUS(moe_cuda_time_copy(0, MOE_DEV_H2D_PINNED, 0, 4, a), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_cuda_time_launch(moe_cuda_count(), 4, a, b), MOE_ERR_NO_DEVICE);
}

int main(int argc, char **argv) {
    if (moe_cuda_count() == 0) {
        moe_dev_info gi;
        moe_cuda_ctx *ctx = (moe_cuda_ctx *)1;
        int bad = moe_cuda_probe(0, &gi) != MOE_ERR_NO_DEVICE;
        bad |= moe_cuda_ctx_create(&ctx, 0) != MOE_ERR_NO_DEVICE || ctx != NULL;
        double x[1], y[1];
        bad |= moe_cuda_time_copy(0, MOE_DEV_H2D_PINNED, 1 << 20, 1, x) != MOE_ERR_NO_DEVICE;
        bad |= moe_cuda_time_launch(0, 1, x, y) != MOE_ERR_NO_DEVICE;
        if (bad) {
            fprintf(stderr, "a missing GPU was not reported as MOE_ERR_NO_DEVICE\n");
            return 1;
        }
        printf("gpu: skipped: %s\n", moe_last_error());
        return TEST_SKIP;
    }
    static const test_case cases[] = {TEST_CASE(probe_describes_device), TEST_CASE(expert_matches_reference),
                                      TEST_CASE(measurements_are_plausible)};
    return run_tests("gpu", cases, sizeof cases / sizeof cases[0], argc, argv);
}
