/* test_cuda_quant.c - the CUDA device's block-format decoding
 * (gpu/cuda/quant_blocks.h) run on the host against common/quant.c, so the
 * index arithmetic of the GPU kernels is checked on every build, GPU or not:
 *   - the pieces: f16 and bf16 conversions, the codebooks
 *   - every element of every format bit-identical to moe_quant_dequantize,
 *     on random bytes (every code, scale and f16 field pattern, mxfp4's
 *     every exponent) and on quantized rows
 *   - what one thread of each kernel does, replayed for every thread of a
 *     launch: the dequantize kernel writes every bf16 element once and
 *     right; the GEMV's lanes add up to the rows' dot products for 1 to 8
 *     tokens
 *   - the error of the device's bf16 path, replayed here, which the CUDA
 *     row's bound for block formats rests on.
 * What only a GPU can check (the launches, the warp's shuffles, __fmul_rn
 * and friends) is tests/test_device.c's CUDA row. Compiled with
 * -ffp-contract=off, as quant.c is: the header's float operations must
 * round one at a time here too. */
#include "experts.h"
#include "quant_blocks.h"
#include "util.h"

static const moe_dtype formats[] = {MOE_DTYPE_Q4_0,   MOE_DTYPE_Q4_1,   MOE_DTYPE_Q5_0, MOE_DTYPE_Q5_1, MOE_DTYPE_Q8_0,
                                    MOE_DTYPE_Q2_K,   MOE_DTYPE_Q3_K,   MOE_DTYPE_Q4_K, MOE_DTYPE_Q5_K, MOE_DTYPE_Q6_K,
                                    MOE_DTYPE_IQ4_NL, MOE_DTYPE_IQ4_XS, MOE_DTYPE_MXFP4, MOE_DTYPE_FP8_E4M3};
#define N_FORMATS (sizeof formats / sizeof formats[0])

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Equal bits, or both NaN (a NaN's payload is not part of the contract). */
static bool same(float a, float b) { return bits_of(a) == bits_of(b) || (isnan(a) && isnan(b)); }

/* A matrix of `rows` x `cols` quantized from uniform values in +-1/sqrt(cols). */
static uint8_t *quantized(moe_dtype t, uint32_t rows, uint32_t cols, moe_rng *r) {
    const size_t n = (size_t)rows * cols;
    float *f = malloc(n * sizeof *f);
    for (size_t i = 0; i < n; i++) f[i] = moe_rng_range(r, -1.0f, 1.0f) / sqrtf((float)cols);
    uint8_t *q = malloc(moe_matrix_bytes(t, rows, cols));
    CHECK_OK(moe_quant_quantize(t, f, q, n));
    free(f);
    return q;
}

/* ---- the pieces ------------------------------------------------------------ */

static void half_to_float_is_exact(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) bad += !same(moe_qb_h2f((uint16_t)h), moe_f16_to_f32((uint16_t)h));
    CHECK_EQ(bad, 0);
    CHECK(bits_of(moe_qb_h2f(0x0001)) == bits_of(5.9604644775390625e-8f)); /* the smallest subnormal, 2^-24 */
    CHECK(moe_qb_h2f(0x7bff) == 65504.0f && moe_qb_h2f(0xfc00) == -INFINITY);
}

static void bf16_rounds_to_nearest_even(void) {
    moe_rng r = {17};
    int bad = 0;
    for (int i = 0; i < 1 << 20; i++) {
        const uint32_t u = (uint32_t)moe_rng_next(&r);
        float f;
        memcpy(&f, &u, sizeof f);
        bad += moe_qb_bf16(f) != moe_f32_to_bf16(f);
    }
    /* ties both ways, the largest finite, infinities, NaN, subnormals */
    const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7fffffu, 0x7f800000u, 0xff800000u,
                                0x7fc00001u, 0xffffffffu, 0x00000001u, 0x80008000u, 0x00018000u, 0};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        float f;
        memcpy(&f, &special[i], sizeof f);
        bad += moe_qb_bf16(f) != moe_f32_to_bf16(f);
    }
    CHECK_EQ(bad, 0);
}

static void codebooks_match(void) {
    for (uint32_t n = 0; n < 16; n++) {
        CHECK_EQ(moe_qb_iq4nl(n), moe_iq4nl_values[n]);
        CHECK_EQ(moe_qb_mxfp4(n), moe_mxfp4_values[n]);
    }
    for (int e = 0; e < 256; e++) { /* e8m0: 2^(e - 128), subnormal below 2 */
        const float want = ldexpf(1.0f, e - 128);
        CHECK(same(moe_qb_e8m0_half((uint8_t)e), want));
    }
    CHECK_EQ(moe_qb_decodes(MOE_DTYPE_BF16), 0);
    CHECK_EQ(moe_qb_decodes(MOE_DTYPE_I8), 0);
    for (size_t f = 0; f < N_FORMATS; f++) CHECK_EQ(moe_qb_decodes(formats[f]), 1);
}

/* ---- every element --------------------------------------------------------- */

/* deq8 over a row of nb blocks against the reference; returns mismatches
 * and reports the first. */
static int compare_row(moe_dtype t, const uint8_t *blocks, size_t nb, const char *what) {
    const size_t n = nb * moe_dtype_block(t);
    float *want = malloc(n * sizeof *want);
    CHECK_OK(moe_quant_dequantize(t, blocks, want, n));
    int bad = 0;
    for (uint32_t c = 0; c < n; c += 8) {
        float v[8];
        moe_qb_deq8(t, blocks, c, v);
        for (uint32_t i = 0; i < 8; i++)
            if (!same(v[i], want[c + i]) && bad++ == 0)
                fprintf(stderr, "%s %s: element %u: %.9g (0x%08x), reference %.9g (0x%08x)\n", moe_dtype_name(t), what,
                        c + i, (double)v[i], bits_of(v[i]), (double)want[c + i], bits_of(want[c + i]));
    }
    free(want);
    return bad;
}

/* Random bytes: every code and sub-block scale, f16 fields of every kind
 * (subnormal, Inf, NaN included: the reference decodes them too), and
 * mxfp4's 256 exponents in turn. The buffers are exactly the row's size,
 * so a read past a block is an ASan error in the asan build. */
static void every_element_of_random_blocks(void) {
    moe_rng r = {2024};
    for (size_t f = 0; f < N_FORMATS; f++) {
        const moe_dtype t = formats[f];
        const size_t nb = 512, bytes = nb * moe_dtype_block_bytes(t);
        uint8_t *b = malloc(bytes);
        for (size_t i = 0; i < bytes; i++) b[i] = (uint8_t)moe_rng_next(&r);
        if (t == MOE_DTYPE_MXFP4)
            for (size_t i = 0; i < nb; i++) b[i * sizeof(moe_block_mxfp4)] = (uint8_t)i;
        CHECK_EQ(compare_row(t, b, nb, "random bytes"), 0);
        free(b);
    }
}

static void every_element_of_quantized_rows(void) {
    moe_rng r = {7};
    for (size_t f = 0; f < N_FORMATS; f++) {
        const moe_dtype t = formats[f];
        const uint32_t cols = (uint32_t)moe_dtype_block(t) * 9;
        uint8_t *q = quantized(t, 3, cols, &r);
        CHECK_EQ(compare_row(t, q, 3 * cols / moe_dtype_block(t), "quantized"), 0);
        free(q);
    }
}

/* ---- the kernels' threads -------------------------------------------------- */

/* Row lengths: whole blocks, and for the 32-blocks lengths that leave lanes
 * and threads idle or uneven (96: 12 groups of 8; 1408: DeepSeek-V2-Lite's
 * inter, 176 groups). */
static const uint32_t cols32[] = {32, 96, 1408}, cols256[] = {256, 768, 2304};

static const uint32_t *cols_of(moe_dtype t) { return moe_dtype_block(t) == 32 ? cols32 : cols256; }

/* The dequantize kernels (bf16 for cuBLAS, f32 for the device's test): one
 * thread block per row, each thread its groups; replayed for every thread
 * of 256 (the launch's), 7 and 1. Every element is the reference (rounded
 * to bf16); filled twice with different junk, so an element no thread
 * writes shows. */
static void dequantize_kernel_writes_every_element(void) {
    const uint32_t threads[] = {256, 7, 1};
    moe_rng r = {99};
    for (size_t f = 0; f < N_FORMATS; f++) {
        const moe_dtype t = formats[f];
        for (int ci = 0; ci < 3; ci++) {
            const uint32_t rows = 5, cols = cols_of(t)[ci];
            const size_t n = (size_t)rows * cols, rb = moe_dtype_row_bytes(t, cols);
            uint8_t *q = quantized(t, rows, cols, &r);
            float *want = malloc(n * sizeof *want);
            uint16_t *out = malloc(n * sizeof *out);
            float *outf = malloc(n * sizeof *outf);
            CHECK_OK(moe_quant_dequantize(t, q, want, n));
            int bad = 0;
            for (int ti = 0; ti < 3; ti++)
                for (int fill = 0; fill < 2; fill++) {
                    memset(out, fill ? 0xa5 : 0x5a, n * sizeof *out);
                    memset(outf, fill ? 0xa5 : 0x5a, n * sizeof *outf);
                    for (uint32_t row = 0; row < rows; row++)
                        for (uint32_t tid = 0; tid < threads[ti]; tid++) {
                            moe_qb_bf16_row(t, q + row * rb, cols, tid, threads[ti], out + (size_t)row * cols);
                            moe_qb_f32_row(t, q + row * rb, cols, tid, threads[ti], outf + (size_t)row * cols);
                        }
                    for (size_t i = 0; i < n; i++) bad += out[i] != moe_f32_to_bf16(want[i]) || !same(outf[i], want[i]);
                }
            if (bad) fprintf(stderr, "%s %ux%u: %d elements wrong\n", moe_dtype_name(t), rows, cols, bad);
            CHECK_EQ(bad, 0);
            free(q), free(want), free(out), free(outf);
        }
    }
}

/* The GEMV: one warp of 32 lanes per row; the lanes' sums added up are the
 * dot products of the row with each of the m tokens' activations (f32
 * sums against double ones: within 1e-5 of sum |w x|), and a lane leaves
 * the accumulators of absent tokens 0. */
static void gemv_lanes_add_up_to_the_rows(void) {
    moe_rng r = {5};
    double worst = 0;
    for (size_t f = 0; f < N_FORMATS; f++) {
        const moe_dtype t = formats[f];
        for (int ci = 0; ci < 3; ci++) {
            const uint32_t rows = 4, cols = cols_of(t)[ci];
            const size_t rb = moe_dtype_row_bytes(t, cols);
            uint8_t *q = quantized(t, rows, cols, &r);
            float *w = malloc((size_t)cols * sizeof *w), *x = malloc((size_t)MOE_QB_MAX_M * cols * sizeof *x);
            test_fill(&r, x, (size_t)MOE_QB_MAX_M * cols);
            for (uint32_t m = 1; m <= MOE_QB_MAX_M; m++)
                for (uint32_t row = 0; row < rows; row++) {
                    CHECK_OK(moe_quant_dequantize(t, q + row * rb, w, cols));
                    float sum[MOE_QB_MAX_M] = {0};
                    for (uint32_t lane = 0; lane < 32; lane++) {
                        float acc[MOE_QB_MAX_M];
                        moe_qb_dot_part(t, q + row * rb, cols, x, m, lane, 32, acc);
                        for (uint32_t j = 0; j < MOE_QB_MAX_M; j++) {
                            if (j >= m) CHECK(acc[j] == 0.0f);
                            sum[j] += acc[j];
                        }
                    }
                    for (uint32_t j = 0; j < m; j++) {
                        double want = 0, mag = 0;
                        for (uint32_t c = 0; c < cols; c++) {
                            want += (double)w[c] * x[(size_t)j * cols + c];
                            mag += fabs((double)w[c] * x[(size_t)j * cols + c]);
                        }
                        const double err = fabs(sum[j] - want) / (mag > 0 ? mag : 1);
                        worst = err > worst ? err : worst;
                        if (!(err <= 1e-5))
                            fprintf(stderr, "%s %ux%u m=%u row %u token %u: %.9g, want %.9g\n", moe_dtype_name(t), rows,
                                    cols, m, row, j, (double)sum[j], want);
                        CHECK(err <= 1e-5);
                    }
                }
            free(q), free(w), free(x);
        }
    }
    printf("# GEMV lanes against double sums: worst error %.2g of sum |w x|\n", worst);
}

/* ---- the bf16 path's error ------------------------------------------------ */

static float to_bf16(float v) { return moe_bf16_to_f32(moe_f32_to_bf16(v)); }

/* What the CUDA device computes above MOE_CUDADEV_GEMV_MAX_M tokens,
 * replayed on the host: the weights decoded exactly, rounded to bf16, x
 * and h rounded to bf16, sums in double (cuBLAS's f32 sums add ~1e-12). */
static void bf16_path(const moe_expert_view *w, uint32_t m, const float *x, float *y) {
    const uint32_t H = w->hidden, I = w->inter;
    const size_t n = (size_t)H * I;
    float *gu = malloc(2 * n * sizeof *gu), *dn = malloc(n * sizeof *dn), *h = malloc(I * sizeof *h);
    CHECK_OK(moe_quant_dequantize(w->dtype, w->gate, gu, n));
    CHECK_OK(moe_quant_dequantize(w->dtype, w->up, gu + n, n));
    CHECK_OK(moe_quant_dequantize(moe_view_down(w), w->down, dn, n));
    for (size_t i = 0; i < 2 * n; i++) gu[i] = to_bf16(gu[i]);
    for (size_t i = 0; i < n; i++) dn[i] = to_bf16(dn[i]);
    for (uint32_t t = 0; t < m; t++) {
        for (uint32_t j = 0; j < I; j++) {
            double g = 0, u = 0;
            for (uint32_t c = 0; c < H; c++) {
                const double xv = to_bf16(x[(size_t)t * H + c]);
                g += gu[(size_t)j * H + c] * xv, u += gu[n + (size_t)j * H + c] * xv;
            }
            h[j] = to_bf16(moe_silu((float)g) * (float)u);
        }
        for (uint32_t i = 0; i < H; i++) {
            double s = 0;
            for (uint32_t j = 0; j < I; j++) s += (double)dn[(size_t)i * I + j] * h[j];
            y[(size_t)t * H + i] = (float)s;
        }
    }
    free(gu), free(dn), free(h);
}

/* The NMSE of that path against the reference expert for every format, on
 * experts as tests/test_device.c makes them: the measurement behind the
 * CUDA row's bound for block formats (1e-4), which must hold it 3 times. */
static void bf16_path_error(void) {
    const uint32_t H = 512, I = 768, m = 9;
    moe_rng r = {31};
    for (size_t f = 0; f < N_FORMATS; f++) {
        expert_buf e;
        expert_make(&e, H, I, formats[f], &r);
        float *x = malloc((size_t)m * H * sizeof *x), *y = malloc((size_t)m * H * sizeof *y);
        float *want = malloc((size_t)m * H * sizeof *want), *scratch = malloc(I * sizeof *scratch);
        test_fill(&r, x, (size_t)m * H);
        moe_ref_expert(&e.v, m, x, want, scratch);
        bf16_path(&e.v, m, x, y);
        const double err = test_nmse(y, want, (size_t)m * H);
        printf("# %-6s %ux%u, %u tokens: bf16 path NMSE %.2g\n", moe_dtype_name(formats[f]), H, I, m, err);
        CHECK(err <= 1e-4 / 3);
        free(x), free(y), free(want), free(scratch);
        expert_free(&e);
    }
}

TEST_MAIN("test_cuda_quant", TEST_CASE(half_to_float_is_exact), TEST_CASE(bf16_rounds_to_nearest_even),
          TEST_CASE(codebooks_match), TEST_CASE(every_element_of_random_blocks),
          TEST_CASE(every_element_of_quantized_rows), TEST_CASE(dequantize_kernel_writes_every_element),
          TEST_CASE(gemv_lanes_add_up_to_the_rows), TEST_CASE(bf16_path_error))
