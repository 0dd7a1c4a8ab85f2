/* test_cpu.c - the CPU expert engine and its kernels against the reference
 * expert: every dtype, the fast (AVX-512 / oneDNN) and portable paths,
 * odd sizes, empty groups, NUMA teams on a faked 2-node machine, and bad
 * input. Tolerances are NMSE per dtype (util.h). */
#define _GNU_SOURCE /* sched_getaffinity */
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include "dense.h"
#include "experts.h"
#include "engine.h"
#include "mm.h"
#include "place.h"
#include "quant.h"
#include "util.h"

static const moe_dtype all_types[4] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_F16, MOE_DTYPE_I8};

static void ref(const moe_expert_view *v, uint32_t m, const float *x, float *y) {
    float *scratch = malloc(v->inter * sizeof *scratch);
    moe_ref_expert(v, m, x, y, scratch);
    free(scratch);
}

/* An engine of up to `threads` threads (no more than OpenMP allows). */
static moe_cpu *engine(uint32_t threads, uint32_t teams, bool portable) {
    const uint32_t limit = (uint32_t)omp_get_thread_limit();
    if (threads > limit) threads = limit;
    if (teams > threads) teams = threads;
    moe_cpu_params p = {.n_threads = threads, .n_teams = teams, .portable = portable};
    moe_cpu *c = NULL;
    CHECK_OK(moe_cpu_create(&c, &p));
    return c;
}

/* The GEMV kernels (fast and portable) against a double-precision dot
 * product of dequantized weights and the activations they were given. */
static void gemv_kernels_match_dot_products(void) {
    moe_rng r = {11};
    const uint32_t ks[] = {1, 15, 16, 17, 31, 33, 64, 65, 100, 257, 33000}; /* 33000 > int8 segment */
    for (int ti = 0; ti < 4; ti++) {
        const moe_dtype t = all_types[ti];
        for (int portable = 0; portable < 2; portable++) {
            const moe_kernel kern = moe_kernel_select(t, portable);
            CHECK(kern.gemv != NULL);
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                const uint32_t k = ks[ki], n = 1 + moe_rng_below(&r, 11), m = 1 + moe_rng_below(&r, 9);
                expert_buf b;
                expert_make(&b, k, n, t, &r); /* gate is [n, k] */
                float *x = malloc((size_t)m * k * sizeof *x), *out = malloc((size_t)m * n * sizeof *out);
                float *want = malloc((size_t)m * n * sizeof *want), *scale = malloc(m * sizeof *scale);
                void *xa = malloc((size_t)m * k * 4);
                test_fill(&r, x, (size_t)m * k);
                moe_acts a = moe_acts_prepare(kern.act, m, k, x, k, xa, scale);
                /* The expected value uses the activations as the kernel
                 * sees them, so only the kernel's arithmetic is tested. */
                for (uint32_t row = 0; row < m; row++)
                    for (uint32_t j = 0; j < n; j++) {
                        double acc = 0;
                        for (uint32_t i = 0; i < k; i++) {
                            double xv = kern.act == MOE_ACT_F32 ? x[(size_t)row * k + i]
                                        : kern.act == MOE_ACT_BF16
                                            ? moe_bf16_to_f32(((uint16_t *)xa)[(size_t)row * k + i])
                                            : scale[row] * ((double)((uint8_t *)xa)[(size_t)row * k + i] - 128.0);
                            double wv = t == MOE_DTYPE_I8 ? ((int8_t *)b.w[0])[(size_t)j * k + i] * (double)b.s[0][j]
                                                          : moe_load_f32(b.w[0], t, (size_t)j * k + i);
                            acc += wv * xv;
                        }
                        want[(size_t)row * n + j] = (float)acc;
                    }
                kern.gemv(b.w[0], b.s[0], k, 0, n, &a, out, n);
                double e = test_nmse(out, want, (size_t)m * n);
                if (!(e < 1e-10)) {
                    fprintf(stderr, "%s %s k=%u n=%u m=%u: nmse %g\n", moe_dtype_name(t), kern.name, k, n, m, e);
                    CHECK(0);
                }
                /* A sub-range of rows writes only its own columns. */
                if (n > 2) {
                    float *part = calloc((size_t)m * n, sizeof *part);
                    kern.gemv(b.w[0], b.s[0], k, 1, n - 1, &a, part, n);
                    for (uint32_t row = 0; row < m; row++) {
                        CHECK(memcmp(part + (size_t)row * n, out + (size_t)row * n + 1, (n - 2) * sizeof *out) == 0);
                        CHECK(part[(size_t)row * n + n - 2 + 1] == 0.0f);
                    }
                    free(part);
                }
                free(x), free(out), free(want), free(scale), free(xa);
                expert_free(&b);
            }
        }
    }
}

/* The block formats' kernels (fast and portable) against the dot product
 * of dequantized weights with the quantized activations they were given,
 * in double: only the kernel's arithmetic is tested (exact integer sums,
 * scales in f32). k of one and many blocks, rows and tokens not multiples
 * of any register block, and a sub-range of rows. */
static void block_kernels_match_dot_products(void) {
    moe_rng r = {17};
    for (int d = 0; d < MOE_DTYPE_COUNT_; d++) {
        const moe_dtype t = (moe_dtype)d;
        if (!moe_dtype_is_block(t)) continue;
        const uint32_t blk = (uint32_t)moe_dtype_block(t), ks[] = {blk, 2 * blk, 3 * blk, 8 * blk, 4096 / blk * blk};
        for (int portable = 0; portable < 2; portable++) {
            const moe_kernel kern = moe_kernel_select(t, portable);
            CHECK(kern.gemv != NULL && kern.act == moe_act_of_block(t));
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                /* few tokens (the row-pair path) and many (tiles), odd counts of both */
                const uint32_t k = ks[ki], n = 1 + moe_rng_below(&r, 21);
                const uint32_t m = ki % 2 ? 1 + moe_rng_below(&r, 7) : 8 + moe_rng_below(&r, 30);
                float *scale = NULL;
                void *w = matrix_make(n, k, t, &r, &scale);
                float *x = malloc((size_t)m * k * sizeof *x), *out = malloc((size_t)m * n * sizeof *out);
                float *want = malloc((size_t)m * n * sizeof *want), *xq = malloc((size_t)k * sizeof *xq);
                float *wrow = malloc((size_t)k * sizeof *wrow);
                void *xa = malloc(moe_acts_bytes(kern.act, m, k));
                test_fill(&r, x, (size_t)m * k);
                const moe_acts a = moe_acts_prepare(kern.act, m, k, x, k, xa, NULL);
                const size_t arb = moe_acts_bytes(kern.act, 1, k), wrb = moe_dtype_row_bytes(t, k);
                for (uint32_t row = 0; row < m; row++) {
                    const moe_qact q = kern.act == MOE_ACT_Q8_0 ? MOE_QACT_Q8_0 : kern.act == MOE_ACT_Q8_1
                                                                                    ? MOE_QACT_Q8_1 : MOE_QACT_Q8_K;
                    if (kern.act == MOE_ACT_F32) /* fp8_e4m3: the activations as they are */
                        memcpy(xq, x + (size_t)row * k, (size_t)k * sizeof *xq);
                    else
                        CHECK_OK(moe_qact_dequantize(q, (char *)xa + row * arb, xq, k));
                    for (uint32_t j = 0; j < n; j++) {
                        CHECK_OK(moe_quant_dequantize(t, (char *)w + j * wrb, wrow, k));
                        double acc = 0;
                        for (uint32_t i = 0; i < k; i++) acc += (double)wrow[i] * xq[i];
                        want[(size_t)row * n + j] = (float)acc;
                    }
                }
                kern.gemv(w, NULL, k, 0, n, &a, out, n);
                const double e = test_nmse(out, want, (size_t)m * n);
                if (!(e < 1e-10)) {
                    fprintf(stderr, "%s %s k=%u n=%u m=%u: nmse %g\n", moe_dtype_name(t), kern.name, k, n, m, e);
                    CHECK(0);
                }
                if (n > 2) { /* a sub-range of rows writes only its own columns */
                    float *part = calloc((size_t)m * n, sizeof *part);
                    kern.gemv(w, NULL, k, 1, n - 1, &a, part, n);
                    for (uint32_t row = 0; row < m; row++) {
                        CHECK(memcmp(part + (size_t)row * n, out + (size_t)row * n + 1, (n - 2) * sizeof *out) == 0);
                        CHECK(part[(size_t)row * n + n - 2 + 1] == 0.0f);
                    }
                    free(part);
                }
                free(w), free(scale), free(x), free(out), free(want), free(xq), free(wrow), free(xa);
            }
        }
    }
}

/* The engine's activation blocks (vectorized where the CPU allows) are
 * common/quant.c's, bit for bit: random rows, and blocks with NaN, Inf,
 * zeros and values too small to scale. */
/* mxfp4's e8m0 scales at their extremes: e = 0 and 1 are denormals (the
 * largest codes stay finite up to e = 200 or so: 6 x 2^(e - 127)), one
 * scale per row, in rows of one to seven blocks (the four-block kernel's
 * masked tail); each row checked on its own, so tiny rows are not hidden
 * by large ones. */
static void mxfp4_extreme_scales(void) {
    moe_rng r = {23};
    static const uint8_t es[] = {0, 1, 2, 3, 64, 126, 127, 128, 129, 140, 200};
    const uint32_t n = sizeof es / sizeof es[0];
    for (uint32_t nb = 1; nb <= 7; nb++) {
        const uint32_t k = 32 * nb, m = 1 + nb % 3;
        moe_block_mxfp4 *w = malloc((size_t)n * nb * sizeof *w);
        for (uint32_t j = 0; j < n; j++)
            for (uint32_t b = 0; b < nb; b++) {
                moe_block_mxfp4 *blk = w + (size_t)j * nb + b;
                blk->e = es[j];
                for (int i = 0; i < 16; i++) blk->qs[i] = (uint8_t)moe_rng_below(&r, 256);
            }
        const moe_kernel kern = moe_kernel_select(MOE_DTYPE_MXFP4, false);
        float *x = malloc((size_t)m * k * sizeof *x), *out = malloc((size_t)m * n * sizeof *out);
        float *xq = malloc((size_t)k * sizeof *xq), *wrow = malloc((size_t)k * sizeof *wrow);
        void *xa = malloc(moe_acts_bytes(kern.act, m, k));
        test_fill(&r, x, (size_t)m * k);
        const moe_acts a = moe_acts_prepare(kern.act, m, k, x, k, xa, NULL);
        kern.gemv(w, NULL, k, 0, n, &a, out, n);
        for (uint32_t row = 0; row < m; row++) {
            CHECK_OK(moe_qact_dequantize(MOE_QACT_Q8_0, (char *)xa + row * moe_acts_bytes(kern.act, 1, k), xq, k));
            for (uint32_t j = 0; j < n; j++) {
                CHECK_OK(moe_quant_dequantize(MOE_DTYPE_MXFP4, w + (size_t)j * nb, wrow, k));
                double want = 0, mag = 0;
                for (uint32_t i = 0; i < k; i++) want += (double)wrow[i] * xq[i], mag += fabs((double)wrow[i] * xq[i]);
                const double got = out[(size_t)row * n + j];
                /* a denormal scale times d_x keeps a few bits: 1e-2 still
                 * tells a scale of 0 or one off by 2 */
                if (!(fabs(got - want) <= (es[j] < 2 ? 1e-2 : 1e-6) * mag)) {
                    fprintf(stderr, "mxfp4 %s nb=%u e=%u: %g, want %g\n", kern.name, nb, es[j], got, want);
                    CHECK(0);
                }
            }
        }
        free(w), free(x), free(out), free(xq), free(wrow), free(xa);
    }
}

static void block_activations_match_reference(void) {
    static const moe_act_kind kinds[3] = {MOE_ACT_Q8_0, MOE_ACT_Q8_1, MOE_ACT_Q8_K};
    static const moe_qact qs[3] = {MOE_QACT_Q8_0, MOE_QACT_Q8_1, MOE_QACT_Q8_K};
    moe_rng r = {29};
    const uint32_t m = 5, k = 768;
    float *x = malloc((size_t)m * k * sizeof *x);
    test_fill(&r, x, (size_t)m * k);
    x[k + 3] = NAN, x[2 * k + 300] = INFINITY, x[2 * k + 600] = -INFINITY;
    for (uint32_t i = 0; i < 256; i++) x[3 * k + i] = 0.0f, x[4 * k + i] = 1e-39f * (float)i;
    for (int a = 0; a < 3; a++) {
        const size_t rb = moe_qact_row_bytes(qs[a], k);
        char *got = calloc(m, rb), *want = calloc(m, rb);
        moe_acts_prepare(kinds[a], m, k, x, k, got, NULL);
        for (uint32_t row = 0; row < m; row++) CHECK_OK(moe_qact_quantize(qs[a], x + (size_t)row * k, want + row * rb, k));
        const size_t bb = moe_qact_block_bytes(qs[a]);
        for (size_t b = 0; b < m * rb / bb; b++) {
            const char *g = got + b * bb, *w = want + b * bb;
            if (qs[a] == MOE_QACT_Q8_K) { /* all but the padding */
                const moe_qact_q8_K *gk = (const void *)g, *wk = (const void *)w;
                CHECK(memcmp(&gk->d, &wk->d, 4) == 0 && memcmp(gk->bsums, wk->bsums, sizeof gk->bsums) == 0 &&
                      memcmp(gk->qs, wk->qs, sizeof gk->qs) == 0);
            } else {
                CHECK(memcmp(g, w, bb) == 0);
            }
        }
        free(got), free(want);
    }
    free(x);
}

/* The engine on experts in block formats, and in mixes of a gate/up
 * format with another for down (as llama.cpp's Q4_K_M, Q5_K_M and its
 * fallbacks for rows that are not whole 256-element blocks write them),
 * against the reference expert: groups of 0 to 100 tokens together, on
 * the fast and the portable kernels. */
static void block_experts_match_reference(void) {
    moe_rng r = {23};
    static const moe_dtype pairs[][2] = {
        {MOE_DTYPE_Q4_0, MOE_DTYPE_Q4_0},   {MOE_DTYPE_Q4_1, MOE_DTYPE_Q4_1},   {MOE_DTYPE_Q5_0, MOE_DTYPE_Q5_0},
        {MOE_DTYPE_Q5_1, MOE_DTYPE_Q5_1},   {MOE_DTYPE_Q8_0, MOE_DTYPE_Q8_0},   {MOE_DTYPE_Q2_K, MOE_DTYPE_Q3_K},
        {MOE_DTYPE_Q3_K, MOE_DTYPE_Q3_K},   {MOE_DTYPE_Q4_K, MOE_DTYPE_Q4_K},   {MOE_DTYPE_Q4_K, MOE_DTYPE_Q6_K},
        {MOE_DTYPE_Q5_K, MOE_DTYPE_Q5_K},   {MOE_DTYPE_Q5_K, MOE_DTYPE_Q6_K},   {MOE_DTYPE_Q6_K, MOE_DTYPE_Q6_K},
        {MOE_DTYPE_IQ4_NL, MOE_DTYPE_IQ4_NL}, {MOE_DTYPE_IQ4_XS, MOE_DTYPE_IQ4_XS}, {MOE_DTYPE_MXFP4, MOE_DTYPE_MXFP4},
        {MOE_DTYPE_Q4_K, MOE_DTYPE_Q5_0},   {MOE_DTYPE_Q4_K, MOE_DTYPE_Q8_0},   {MOE_DTYPE_BF16, MOE_DTYPE_Q8_0},
        {MOE_DTYPE_FP8_E4M3, MOE_DTYPE_FP8_E4M3}, {MOE_DTYPE_Q4_K, MOE_DTYPE_FP8_E4M3},
    };
    const uint32_t ms[] = {0, 1, 3, 5, 8, 17, 100};
    enum { NT = sizeof ms / sizeof ms[0] };
    for (size_t pi = 0; pi < sizeof pairs / sizeof pairs[0]; pi++)
        for (int portable = 0; portable < 2; portable++) {
            const moe_dtype t = pairs[pi][0], td = pairs[pi][1];
            /* down rows of 320 elements take no 256-element blocks: its fallbacks' case */
            const uint32_t H = 512, I = moe_dtype_block(td) >= 128 ? 256 : 320;
            moe_cpu *c = engine(2, 1, portable);
            CHECK_OK(moe_cpu_prepare(c, H, I, t));
            expert_buf b[NT];
            moe_cpu_task tasks[NT];
            float *want[NT];
            for (uint32_t i = 0; i < NT; i++) {
                expert_make2(&b[i], H, I, t, td, &r);
                const size_t n = (size_t)(ms[i] ? ms[i] : 1) * H;
                float *x = malloc(n * sizeof *x);
                test_fill(&r, x, n);
                tasks[i] = (moe_cpu_task){b[i].v, 0, ms[i], x, malloc(n * sizeof(float))};
                want[i] = malloc(n * sizeof(float));
                ref(&b[i].v, ms[i], x, want[i]);
            }
            CHECK_OK(moe_cpu_run(c, tasks, NT));
            for (uint32_t i = 0; i < NT; i++) {
                const uint32_t m = tasks[i].m;
                const double e = m ? test_nmse(tasks[i].y, want[i], (size_t)m * H) : 0.0;
                const double tol = fmax(test_tolerance(t), test_tolerance(td));
                if (!(e <= tol)) {
                    fprintf(stderr, "%s/%s %ux%u m=%u %s: nmse %g\n", moe_dtype_name(t), moe_dtype_name(td), H, I, m,
                            portable ? "portable" : moe_cpu_kernel_name(c, t), e);
                    CHECK(0);
                }
                free((void *)tasks[i].x), free(tasks[i].y), free(want[i]);
                expert_free(&b[i]);
            }
            moe_cpu_free(&c);
        }
}

/* The AMX kernel (bf16 weights as A tiles in place, tokens packed as VNNI
 * B tiles) against double dot products of the bf16 activations it sees:
 * token counts around the 16-token tile, k of one and many steps, and a
 * row range that starts inside the matrix. Where AMX cannot run, says so. */
static void amx_kernel_matches_dot_products(void) {
    CHECK(moe_kernel_amx(MOE_DTYPE_F32).gemv == NULL);
    const moe_dtype types[2] = {MOE_DTYPE_BF16, MOE_DTYPE_I8};
    moe_rng r = {21};
    for (int ti = 0; ti < 2; ti++) {
        const moe_dtype dt = types[ti];
        const moe_kernel kern = moe_kernel_amx(dt);
        if (!kern.gemv) {
            printf("  AMX not usable here for %s: kernel not run\n", moe_dtype_name(dt));
            continue;
        }
        const uint32_t ks[] = {64, 128, 2048}, ms[] = {1, 5, 16, 17, 33, 64};
        for (size_t ki = 0; ki < 3; ki++)
            for (size_t mi = 0; mi < 6; mi++) {
                const uint32_t k = ks[ki], m = ms[mi], n = 48;
                expert_buf b;
                expert_make(&b, k, n, dt, &r);
                float *x = malloc((size_t)m * k * sizeof *x), *out = calloc((size_t)m * n, sizeof *out);
                float *want = malloc((size_t)m * n * sizeof *want), *scale = malloc(m * sizeof *scale);
                void *xa = malloc(moe_acts_bytes(kern.act, m, k));
                test_fill(&r, x, (size_t)m * k);
                moe_acts a = moe_acts_prepare(kern.act, m, k, x, k, xa, scale);
                /* Expected: the activations as the kernel sees them (bf16,
                 * or s8 codes times the token's scale). */
                for (uint32_t t = 0; t < m; t++) {
                    float amax = 0.0f; /* the kernel's quantization: round(x * 127 / amax) */
                    for (uint32_t i = 0; i < k; i++) amax = fmaxf(amax, fabsf(x[(size_t)t * k + i]));
                    const float inv = 127.0f / amax;
                    for (uint32_t j = 16; j < n; j++) {
                        double acc = 0;
                        for (uint32_t i = 0; i < k; i++) {
                            const float xv = x[(size_t)t * k + i];
                            const double xs = dt == MOE_DTYPE_BF16
                                                  ? moe_bf16_to_f32(moe_f32_to_bf16(xv))
                                                  : scale[t] * (double)rintf(xv * inv);
                            const double wv = dt == MOE_DTYPE_BF16
                                                  ? moe_load_f32(b.w[0], dt, (size_t)j * k + i)
                                                  : ((int8_t *)b.w[0])[(size_t)j * k + i] * (double)b.s[0][j];
                            acc += xs * wv;
                        }
                        want[(size_t)t * n + j] = (float)acc;
                    }
                }
                moe_amx_begin();
                kern.gemv(b.w[0], b.s[0], k, 16, n, &a, out + 16, n); /* rows 16..47 into columns 16..47 */
                moe_amx_end();
                double num = 0, den = 0;
                for (uint32_t t = 0; t < m; t++) {
                    for (uint32_t j = 0; j < 16; j++) CHECK(out[(size_t)t * n + j] == 0.0f); /* untouched */
                    for (uint32_t j = 16; j < n; j++) {
                        const double d = (double)out[(size_t)t * n + j] - want[(size_t)t * n + j];
                        num += d * d, den += (double)want[(size_t)t * n + j] * want[(size_t)t * n + j];
                    }
                }
                if (!(num / den < 1e-10)) {
                    fprintf(stderr, "%s k=%u m=%u: nmse %g\n", kern.name, k, m, num / den);
                    CHECK(0);
                }
                free(x), free(out), free(want), free(scale), free(xa);
                expert_free(&b);
            }
    }
}

static void glue_is_accurate_and_propagates_nan(void) {
    float x[40], y[40];
    for (int i = 0; i < 37; i++) x[i] = -87.0f + 175.0f * (float)i / 36.0f;
    moe_exp_f32(y, x, 37);
    for (int i = 0; i < 37; i++) CHECK(fabs(y[i] / exp((double)x[i]) - 1.0) < 4e-7);
    x[0] = NAN, x[1] = 200.0f, x[2] = -200.0f;
    moe_exp_f32(y, x, 3);
    CHECK(isnan(y[0]));
    CHECK(y[1] > 1e38f && isfinite(y[1]));
    CHECK(y[2] >= 0.0f && y[2] < 1e-37f);
    float g[3] = {NAN, 3.0f, -1.0f}, u[3] = {1.0f, 2.0f, INFINITY}, h[3];
    moe_silu_mul(h, g, u, 3);
    CHECK(isnan(h[0]));
    CHECK(fabsf(h[1] - 3.0f / (1.0f + expf(-3.0f)) * 2.0f) < 1e-6f);
    CHECK(isinf(h[2]));
    /* int8 activations: a zero row quantizes to the offset, a row holding
     * NaN or Inf gets scale NaN so its outputs cannot look finite. */
    float rows[3][5] = {{0, 0, 0, 0, 0}, {1, -2, NAN, 0, 0}, {1, INFINITY, 0, 0, 0}}, sc[3];
    uint8_t q[15];
    moe_acts a = moe_acts_prepare(MOE_ACT_U8, 3, 5, &rows[0][0], 5, q, sc);
    CHECK(a.scale == sc);
    CHECK(sc[0] == 1.0f && q[0] == 128 && q[4] == 128);
    CHECK(isnan(sc[1]) && isnan(sc[2]));
    float s8r[4] = {1.0f, -1.0f, 0.5f, 0.0f}, s8s;
    int8_t s8q[4];
    moe_acts_prepare(MOE_ACT_S8, 1, 4, s8r, 4, s8q, &s8s);
    CHECK(s8q[0] == 127 && s8q[1] == -127 && s8q[2] == 64 && s8q[3] == 0);
}

/* Tasks of assorted sizes, including empty ones and ones large enough for
 * oneDNN, through the fast and the portable engine, against the reference. */
static void engine_matches_reference(void) {
    moe_rng r = {5};
    const uint32_t shapes[][2] = {{64, 96}, {37, 51}, {256, 176}, {2048, 1408}};
    const uint32_t ms[] = {0, 1, 3, 8, 9, 16, 17, 32, 100}; /* 16, 32: whole buckets */
    enum { NT = sizeof ms / sizeof ms[0] };
    for (int ti = 0; ti < 4; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int portable = 0; portable < 2; portable++) {
                const moe_dtype t = all_types[ti];
                const uint32_t H = shapes[si][0], I = shapes[si][1];
                if (portable && H * I > 100000) continue; /* the C kernels are slow */
                const bool big = H * I > 100000;             /* so is the reference at m = 100 */
                moe_cpu *c = engine(2, 1, portable);
                CHECK_OK(moe_cpu_prepare(c, H, I, t));
                expert_buf b[NT];
                moe_cpu_task tasks[NT];
                float *want[NT];
                for (uint32_t i = 0; i < NT; i++) {
                    expert_make(&b[i], H, I, t, &r);
                    const uint32_t m = big && ms[i] > 32 ? 32 : ms[i];
                    const size_t n = (size_t)(m ? m : 1) * H;
                    float *x = malloc(n * sizeof *x);
                    test_fill(&r, x, n);
                    tasks[i] = (moe_cpu_task){b[i].v, 0, m, x, malloc(n * sizeof(float))};
                    want[i] = malloc(n * sizeof(float));
                    ref(&b[i].v, m, x, want[i]);
                }
                CHECK_OK(moe_cpu_run(c, tasks, NT));
                for (uint32_t i = 0; i < NT; i++) {
                    const uint32_t m = tasks[i].m;
                    double e = m ? test_nmse(tasks[i].y, want[i], (size_t)m * H) : 0.0;
                    if (!(e <= test_tolerance(t))) {
                        fprintf(stderr, "%s %ux%u m=%u %s (%s): nmse %g\n", moe_dtype_name(t), H, I, m,
                                portable ? "portable" : moe_cpu_kernel_name(c, t), moe_cpu_dnnl_impl(c, H, I, t, m), e);
                        CHECK(0);
                    }
                    free((void *)tasks[i].x), free(tasks[i].y), free(want[i]);
                    expert_free(&b[i]);
                }
                moe_cpu_free(&c);
            }
}

/* oneDNN runs groups above the GEMV threshold for every dtype it serves,
 * with an optimized implementation (never its reference code). */
static void large_groups_use_onednn(void) {
    moe_cpu *c = engine(2, 1, false);
    for (int ti = 0; ti < 4; ti++) {
        moe_act_kind a;
        if (!moe_mm_act(all_types[ti], &a)) continue;
        CHECK_OK(moe_cpu_prepare(c, 256, 176, all_types[ti]));
        const char *impl = moe_cpu_dnnl_impl(c, 256, 176, all_types[ti], 100);
        printf("  %s: gemv %s, oneDNN %s\n", moe_dtype_name(all_types[ti]), moe_cpu_kernel_name(c, all_types[ti]),
               impl);
        if (all_types[ti] == MOE_DTYPE_F32) CHECK(impl[0] != '\0'); /* f32 matmul exists everywhere */
        CHECK(strncmp(impl, "ref", 3) != 0);
    }
    CHECK_EQ(moe_mm_rows(0), 0);
    CHECK_EQ(moe_mm_rows(1), 16);
    CHECK_EQ(moe_mm_rows(49), 64);
    CHECK_EQ(moe_mm_rows(512), 512);
    CHECK_EQ(moe_mm_rows(513), 528);
    moe_cpu_free(&c);
}

/* A faked 2-node machine: experts alternate between the nodes, each
 * node's team of one thread computes exactly its own experts' rows, and
 * the results match the reference. On a 1-node host the memory of a
 * node that does not exist stays put, and the call says so. */
static void numa_teams_run_their_own_experts(void) {
    moe_rng r = {3};
    const uint32_t H = 128, I = 96, NT = 6;
    CHECK_EQ(moe_cpu_home(0, 2), 0);
    CHECK_EQ(moe_cpu_home(5, 2), 1);
    CHECK_EQ(moe_cpu_home(7, 1), 0);
    if (omp_get_thread_limit() < 2) {
        printf("  OMP_THREAD_LIMIT < 2: two teams cannot run\n");
        return;
    }
    moe_cpu *c = engine(2, 2, false);
    expert_buf b[6];
    moe_cpu_task tasks[6];
    float *want[6];
    for (uint32_t i = 0; i < NT; i++) {
        expert_make(&b[i], H, I, MOE_DTYPE_BF16, &r);
        float *x = malloc(2 * H * sizeof *x);
        test_fill(&r, x, 2 * H);
        tasks[i] = (moe_cpu_task){b[i].v, moe_cpu_home(i, 2), 2, x, malloc(2 * H * sizeof(float))};
        want[i] = malloc(2 * H * sizeof(float));
        ref(&b[i].v, 2, x, want[i]);
    }
    uint32_t work[2 * 6];
    moe_cpu_trace(c, work, 12);
    CHECK_OK(moe_cpu_run(c, tasks, NT));
    for (uint32_t i = 0; i < NT; i++) {
        const uint32_t home = tasks[i].team;
        CHECK(work[home * NT + i] > 0);      /* its team's thread did it */
        CHECK_EQ(work[(1 - home) * NT + i], 0); /* the other node's did not */
        CHECK(test_nmse(tasks[i].y, want[i], 2 * H) <= test_tolerance(MOE_DTYPE_BF16));
        free((void *)tasks[i].x), free(tasks[i].y), free(want[i]);
        expert_free(&b[i]);
    }
    moe_cpu_free(&c);
    /* Memory placement: a node this machine lacks is refused (0 bytes). */
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *mem = aligned_alloc(page, 4 * page);
    memset(mem, 1, 4 * page);
    CHECK_EQ(moe_numa_move(mem, 4 * page, 63), 0);
    if (moe_numa_node_exists(0)) CHECK_EQ(moe_numa_move(mem + 1, 4 * page - 1, 0), 3 * page);
    CHECK(mem[0] == 1 && mem[4 * page - 1] == 1); /* contents unchanged */
    free(mem);
}

/* Thread binding: OpenMP's workers are bound to their team's node for
 * good, the caller's thread only while a run lasts; the caller's own CPU
 * mask is back afterwards. Both teams name node 0, which every machine
 * has, so this runs on 1-node hosts too. */
static void binding_restores_the_callers_cpus(void) {
    if (omp_get_thread_limit() < 2 || !moe_numa_node_exists(0)) {
        printf("  needs 2 OpenMP threads and libnuma's node 0\n");
        return;
    }
    cpu_set_t orig, one, after;
    CHECK(sched_getaffinity(0, sizeof orig, &orig) == 0);
    size_t first = 0;
    while (first < CPU_SETSIZE && !CPU_ISSET(first, &orig)) first++;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);

    const uint32_t nodes[2] = {0, 0}, sizes[2] = {1, 1};
    moe_cpu_params p = {.n_threads = 2, .n_teams = 2, .team_size = sizes, .team_node = nodes, .bind_threads = true};
    moe_cpu *c = NULL;
    CHECK_OK(moe_cpu_create(&c, &p));
    moe_rng r = {12};
    expert_buf b;
    expert_make(&b, 64, 48, MOE_DTYPE_F32, &r);
    float x[3 * 64], y[3 * 64], want[3 * 64];
    test_fill(&r, x, 3 * 64);
    ref(&b.v, 3, x, want);
    moe_cpu_task task = {b.v, 1, 3, x, y};
    CHECK_OK(moe_cpu_run(c, &task, 1));
    CHECK(test_nmse(y, want, 3 * 64) <= test_tolerance(MOE_DTYPE_F32));
    CHECK(sched_getaffinity(0, sizeof after, &after) == 0);
    CHECK(CPU_EQUAL(&after, &one));
    moe_cpu_free(&c);
    expert_free(&b);
    CHECK(sched_setaffinity(0, sizeof orig, &orig) == 0);
}

/* Where a group runs at the shapes the fast kernels cannot take: bf16
 * rows that do not fill AMX tiles keep small groups off oneDNN (whose
 * small buckets are slow), and int8 with k past the int32 bound of
 * oneDNN's sums never goes to it. */
static void paths_respect_kernel_limits(void) {
    moe_cpu *c = engine(2, 1, false);
    CHECK_OK(moe_cpu_prepare(c, 200, 72, MOE_DTYPE_BF16)); /* 200 % 32 != 0 */
    for (uint32_t m = 1; m <= 4; m++) CHECK(strcmp(moe_cpu_path(c, 200, 72, MOE_DTYPE_BF16, m), "onednn") != 0);
    CHECK_OK(moe_cpu_prepare(c, MOE_MM_I8_MAX_K + 64, 16, MOE_DTYPE_I8));
    CHECK(strcmp(moe_cpu_path(c, MOE_MM_I8_MAX_K + 64, 16, MOE_DTYPE_I8, 512), "onednn") != 0);
    moe_cpu_free(&c);
}

static void log_to(moe_log_level l, const char *msg, void *user) {
    (void)l;
    if (strstr(msg, "NUMA team")) snprintf(user, 128, "%s", msg);
}

/* The runtime on a synthetic 2-node topology splits its threads into two
 * teams and still computes the reference result. */
static void runtime_on_two_nodes(void) {
    moe_topology_t *topo = NULL;
    CHECK_OK(moe_topology_synthetic(&topo, "numa:2 core:1 pu:1"));
    test_model tm;
    test_model_make(&tm, 1, 8, 40, 24, MOE_DTYPE_F32, 4);
    char seen[128] = "";
    moe_runtime_params p = moe_runtime_default_params();
    p.topology = topo, p.log_fn = log_to, p.log_user = seen, p.log_level = MOE_LOG_INFO;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, tm.model, &p));
    /* Two teams, or with OpenMP limited to one thread, one (and a warning). */
    CHECK(strstr(seen, omp_get_thread_limit() >= 2 ? "2 threads in 2 NUMA team(s)" : "1 threads in 1 NUMA team(s)"));
    moe_rng r = {8};
    float x[3 * 40], y[3 * 40], w[6], want[3 * 40], one[40], scratch[24];
    int32_t ids[6];
    test_fill(&r, x, 3 * 40);
    test_routing(&r, 3, 8, 2, ids, w);
    CHECK_OK(moe_layer_forward(rt, 0, 3, x, 2, ids, w, y));
    memset(want, 0, sizeof want);
    for (int t = 0; t < 3; t++)
        for (int j = 0; j < 2; j++) {
            const uint32_t e = (uint32_t)ids[t * 2 + j];
            moe_expert_view v = {test_weight(&tm, 0, e, 0), test_weight(&tm, 0, e, 1), test_weight(&tm, 0, e, 2),
                                 MOE_DTYPE_F32, 40, 24, NULL, NULL, NULL, false, MOE_DTYPE_F32};
            moe_ref_expert(&v, 1, x + t * 40, one, scratch);
            for (int i = 0; i < 40; i++) want[t * 40 + i] += w[t * 2 + j] * one[i];
        }
    CHECK(test_nmse(y, want, 3 * 40) <= test_tolerance(MOE_DTYPE_F32));
    moe_runtime_free(&rt);
    moe_topology_free(&topo);
    test_model_free(&tm);
}

/* Dense projections (moe_cpu_dense, moe_dense_matmul) against double dot
 * products of the weights as stored: GEMV up to 4 tokens, AMX row blocks
 * of 16 beyond with the remainder on GEMV, odd widths that AMX refuses,
 * every dtype, fast and portable, and from 1 to 3 threads. */
static void dense_matches_dot_products(void) {
    static const uint32_t rows_[] = {1, 15, 16, 33, 100}, cols_[] = {30, 64, 96, 128}, ns[] = {1, 3, 4, 5, 16, 37};
    moe_rng r = {99};
    for (int ti = 0; ti < 4; ti++)
        for (size_t a = 0; a < 5; a++)
            for (size_t b = 0; b < 4; b++) {
                const moe_dtype t = all_types[ti];
                const uint32_t R = rows_[a], C = cols_[b];
                expert_buf e;
                expert_make(&e, C, R, t, &r); /* gate is [R, C] */
                float *x = malloc((size_t)37 * C * sizeof *x), *y = malloc((size_t)37 * R * sizeof *y);
                double *want = malloc((size_t)37 * R * sizeof *want);
                test_fill(&r, x, (size_t)37 * C);
                for (uint32_t k = 0; k < 37; k++)
                    for (uint32_t o = 0; o < R; o++) {
                        double sum = 0;
                        for (uint32_t c = 0; c < C; c++)
                            sum += (t == MOE_DTYPE_I8 ? (double)((const int8_t *)e.w[0])[(size_t)o * C + c]
                                                      : (double)moe_load_f32(e.w[0], t, (size_t)o * C + c)) *
                                   x[(size_t)k * C + c];
                        want[(size_t)k * R + o] = sum * (e.s[0] ? e.s[0][o] : 1.0);
                    }
                for (size_t ni = 0; ni < 6; ni++)
                    for (int portable = 0; portable < 2; portable++) {
                        const uint32_t n = ns[ni], threads = 1 + (uint32_t)(ni % 3);
                        CHECK_OK(moe_cpu_dense(threads, portable, e.w[0], t, e.s[0], R, C, n, x, y));
                        double num = 0, den = 0;
                        for (size_t i = 0; i < (size_t)n * R; i++)
                            num += (y[i] - want[i]) * (y[i] - want[i]), den += want[i] * want[i];
                        if (num / den > test_tolerance(t))
                            fprintf(stderr, "%s %ux%u n=%u%s: nmse %g\n", moe_dtype_name(t), R, C, n,
                                    portable ? " portable" : "", num / den);
                        CHECK(num / den <= test_tolerance(t));
                    }
                free(x), free(y), free(want);
                expert_free(&e);
            }
    float x = 1, y = 0;
    CHECK_STATUS(moe_cpu_dense(1, false, NULL, MOE_DTYPE_F32, NULL, 1, 1, 1, &x, &y), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_cpu_dense(1, false, &x, MOE_DTYPE_I8, NULL, 1, 1, 1, &x, &y), MOE_ERR_INVALID_ARG);
    CHECK_OK(moe_cpu_dense(1, false, NULL, MOE_DTYPE_F32, NULL, 1, 1, 0, NULL, NULL));
}

static void bad_tasks_are_refused(void) {
    moe_rng r = {9};
    expert_buf b;
    expert_make(&b, 16, 8, MOE_DTYPE_I8, &r);
    float x[16], y[16];
    test_fill(&r, x, 16);
    moe_cpu *c = engine(1, 1, false);
    moe_cpu_task t = {b.v, 0, 1, x, y};
    moe_cpu_task bad = t;
    bad.w.dtype = MOE_DTYPE_COUNT_;
    CHECK_STATUS(moe_cpu_run(c, &bad, 1), MOE_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("task 0: weight dtype");
    bad = t, bad.w.inter = 0;
    CHECK_STATUS(moe_cpu_run(c, &bad, 1), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("expert shape 16x0");
    bad = t, bad.w.down = NULL;
    CHECK_STATUS(moe_cpu_run(c, &bad, 1), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("down weights are NULL");
    bad = t, bad.w.up_scale = NULL;
    CHECK_STATUS(moe_cpu_run(c, &bad, 1), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("without scales");
    bad = t, bad.team = 1;
    CHECK_STATUS(moe_cpu_run(c, &bad, 1), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("team 1 out of range");
    bad = t, bad.y = NULL;
    CHECK_STATUS(moe_cpu_run(c, &bad, 1), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_cpu_run(c, NULL, 1), MOE_ERR_INVALID_ARG);
    CHECK_OK(moe_cpu_run(c, NULL, 0));
    /* NaN in a token reaches that token's outputs, and no other's. */
    float x2[32], y2[32];
    test_fill(&r, x2, 32);
    x2[3] = NAN;
    moe_cpu_task two = {b.v, 0, 2, x2, y2};
    CHECK_OK(moe_cpu_run(c, &two, 1));
    for (int i = 0; i < 16; i++) CHECK(isnan(y2[i]) && isfinite(y2[16 + i]));
    moe_cpu_params p = {.n_threads = (uint32_t)omp_get_thread_limit() + 1u, .n_teams = 1};
    moe_cpu *c2 = NULL;
    CHECK_STATUS(moe_cpu_create(&c2, &p), MOE_ERR_INVALID_ARG); /* more than OpenMP runs */
    CHECK_ERROR_MENTIONS("OMP_THREAD_LIMIT");
    p = (moe_cpu_params){.n_threads = 2, .n_teams = 3};
    CHECK_STATUS(moe_cpu_create(&c2, &p), MOE_ERR_INVALID_ARG);
    uint32_t sizes[2] = {2, 1};
    p.n_teams = 2, p.team_size = sizes;
    if (omp_get_thread_limit() >= 2) {
        CHECK_STATUS(moe_cpu_create(&c2, &p), MOE_ERR_INVALID_ARG);
        CHECK_ERROR_MENTIONS("add up to 3, not 2");
    }
    CHECK(c2 == NULL);
    moe_cpu_free(&c);
    moe_cpu_free(&c);
    expert_free(&b);
}

TEST_MAIN("cpu", TEST_CASE(gemv_kernels_match_dot_products), TEST_CASE(block_kernels_match_dot_products),
          TEST_CASE(block_experts_match_reference), TEST_CASE(mxfp4_extreme_scales),
          TEST_CASE(block_activations_match_reference), TEST_CASE(amx_kernel_matches_dot_products), TEST_CASE(glue_is_accurate_and_propagates_nan),
          TEST_CASE(engine_matches_reference), TEST_CASE(large_groups_use_onednn),
          TEST_CASE(numa_teams_run_their_own_experts), TEST_CASE(runtime_on_two_nodes),
          TEST_CASE(binding_restores_the_callers_cpus), TEST_CASE(paths_respect_kernel_limits),
          TEST_CASE(bad_tasks_are_refused), TEST_CASE(dense_matches_dot_products))
