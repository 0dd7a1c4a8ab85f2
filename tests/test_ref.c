/* test_ref.c - the reference expert against values worked out by hand and
 * against a second, independent float implementation. */
#include "expert.h"
#include "util.h"

static float silu_d(float v) { return (float)((double)v / (1.0 + exp(-(double)v))); }

static void known_answer(void) {
    /* hidden 2, inter 1: gate [1, 2], up [3, -1], down [[2], [-1]]; x = [1, 1]
     * g = 3, u = 2, h = silu(3) * 2, y = [2h, -h]. */
    const float gate[2] = {1, 2}, up[2] = {3, -1}, down[2] = {2, -1};
    const float x[2] = {1, 1};
    float y[2], scratch[1];
    moe_expert_view w = {gate, up, down, MOE_DTYPE_F32, 2, 1, NULL, NULL, NULL, false, MOE_DTYPE_F32};
    moe_ref_expert(&w, 1, x, y, scratch);
    const float h = silu_d(3.0f) * 2.0f;
    CHECK_NEAR(y[0], 2 * h, 1e-6);
    CHECK_NEAR(y[1], -h, 1e-6);
    CHECK_NEAR(moe_silu(0.0f), 0.0, 0.0);
    CHECK_NEAR(moe_silu(1.0f), 0.7310585786, 1e-6);
    CHECK_NEAR(moe_silu(-20.0f), -20.0 / (1.0 + exp(20.0)), 1e-12);
}

/* y = down(silu(gate x) * up x) written independently, in float, per row. */
static void naive(const float *g, const float *u, const float *d, uint32_t H, uint32_t I, uint32_t m,
                  const float *x, float *y) {
    float *h = malloc(I * sizeof *h);
    for (uint32_t r = 0; r < m; r++) {
        for (uint32_t j = 0; j < I; j++) {
            float a = 0, b = 0;
            for (uint32_t i = 0; i < H; i++) {
                a += g[j * H + i] * x[r * H + i];
                b += u[j * H + i] * x[r * H + i];
            }
            h[j] = silu_d(a) * b;
        }
        for (uint32_t i = 0; i < H; i++) {
            float acc = 0;
            for (uint32_t j = 0; j < I; j++) acc += d[i * I + j] * h[j];
            y[r * H + i] = acc;
        }
    }
    free(h);
}

static void dtypes_agree_with_naive(void) {
    moe_rng r = {11};
    const uint32_t shapes[][3] = {{1, 1, 1}, {7, 13, 3}, {16, 8, 1}, {33, 65, 5}, {64, 96, 4}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const uint32_t H = shapes[s][0], I = shapes[s][1], M = shapes[s][2];
        const size_t n = (size_t)H * I;
        float *w = malloc(3 * n * sizeof *w), *x = malloc((size_t)M * H * sizeof *x);
        float *yr = malloc((size_t)M * H * sizeof *yr), *yn = malloc((size_t)M * H * sizeof *yn);
        uint16_t *wb = malloc(3 * n * sizeof *wb), *wh = malloc(3 * n * sizeof *wh);
        float *scratch = malloc(I * sizeof *scratch);
        test_fill(&r, x, (size_t)M * H);
        for (size_t i = 0; i < 3 * n; i++) {
            /* Values exactly representable in bf16 (and so in f16 at this range)
             * make the three dtypes describe the same expert. */
            wb[i] = moe_f32_to_bf16(moe_rng_range(&r, -0.5f, 0.5f));
            w[i] = moe_bf16_to_f32(wb[i]);
            wh[i] = moe_f32_to_f16(w[i]);
        }
        naive(w, w + n, w + 2 * n, H, I, M, x, yn);
        const void *bases[3] = {w, wb, wh};
        const moe_dtype types[3] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_F16};
        const size_t esz[3] = {4, 2, 2};
        for (int t = 0; t < 3; t++) {
            const char *b = bases[t];
            moe_expert_view v = {b, b + n * esz[t], b + 2 * n * esz[t], types[t], H, I, NULL, NULL, NULL, false, types[t]};
            moe_ref_expert(&v, M, x, yr, scratch);
            double e = test_nmse(yr, yn, (size_t)M * H);
            if (!(e < 1e-10)) {
                fprintf(stderr, "shape %ux%u m=%u dtype %s: nmse %g\n", H, I, M, moe_dtype_name(types[t]), e);
                CHECK(e < 1e-10);
            }
        }
        free(w), free(x), free(yr), free(yn), free(wb), free(wh), free(scratch);
    }
}

static void rows_are_independent(void) {
    /* Running m rows at once equals running each row alone, bit for bit. */
    moe_rng r = {5};
    const uint32_t H = 12, I = 20, M = 6;
    float w[3 * 12 * 20], x[6 * 12], y[6 * 12], y1[12], scratch[20];
    test_fill(&r, w, sizeof w / sizeof w[0]);
    test_fill(&r, x, sizeof x / sizeof x[0]);
    moe_expert_view v = {w, w + H * I, w + 2 * H * I, MOE_DTYPE_F32, H, I, NULL, NULL, NULL, false, MOE_DTYPE_F32};
    moe_ref_expert(&v, M, x, y, scratch);
    for (uint32_t row = 0; row < M; row++) {
        moe_ref_expert(&v, 1, x + row * H, y1, scratch);
        CHECK(memcmp(y1, y + row * H, sizeof y1) == 0);
    }
}

TEST_MAIN("ref", TEST_CASE(known_answer), TEST_CASE(dtypes_agree_with_naive), TEST_CASE(rows_are_independent))
