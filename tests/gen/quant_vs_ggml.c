/* quant_vs_ggml.c - our own quantizers (common/quant.c: the k-quants, IQ4_NL,
 * IQ4_XS) against llama.cpp's, on the same rows: round-trip NMSE and time.
 * A measurement for docs/quantization.md, not a test; built by hand against
 * a llama.cpp source tree (llama-cpp-python's sdist vendors one):
 *
 *   L=/path/to/llama.cpp
 *   cc -O2 -I$L/ggml/include -I$L/ggml/src -c $L/ggml/src/ggml-quants.c -o /tmp/ggml-quants.o
 *   cc -std=c11 -O2 -ffp-contract=off -Iinclude -Icommon tests/gen/quant_vs_ggml.c \
 *      common/quant.c common/dtype.c common/error.c common/log.c /tmp/ggml-quants.o -lm -o /tmp/quant_vs_ggml
 *   /tmp/quant_vs_ggml
 *
 * llama.cpp's quantize_<type>() without an importance matrix is what
 * llama-quantize runs without --imatrix. Both results are decoded by our
 * dequantizers (the bytes are the same format). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "quant.h"

/* From llama.cpp's ggml-quants.h, declared here so that its headers are not needed. */
typedef size_t (*ggml_quantize_fn)(const float *src, void *dst, int64_t nrow, int64_t n_per_row, const float *imatrix);
size_t quantize_q2_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q3_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q4_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q5_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_q6_K(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_iq4_nl(const float *, void *, int64_t, int64_t, const float *);
size_t quantize_iq4_xs(const float *, void *, int64_t, int64_t, const float *);

/* What ggml-quants.o needs from the rest of ggml. */
void ggml_abort(const char *file, int line, const char *fmt, ...);
size_t ggml_row_size(int type, int64_t n);
size_t ggml_type_size(int type);
const char *ggml_type_name(int type);

void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml: %s:%d: %s\n", file, line, fmt);
    exit(1);
}

size_t ggml_type_size(int type) { return moe_dtype_block_bytes(moe_quant_from_ggml(type)); }

size_t ggml_row_size(int type, int64_t n) { return moe_dtype_row_bytes(moe_quant_from_ggml(type), (size_t)n); }

const char *ggml_type_name(int type) { return moe_dtype_name(moe_quant_from_ggml(type)); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float gauss(moe_rng *r) {
    const double u = (double)(moe_rng_next(r) >> 11) * (1.0 / 9007199254740992.0) + 1e-300;
    const double v = moe_rng_uniform(r);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

int main(void) {
    static const struct {
        moe_dtype t;
        ggml_quantize_fn ggml;
    } F[] = {{MOE_DTYPE_Q2_K, quantize_q2_K},     {MOE_DTYPE_Q3_K, quantize_q3_K},    {MOE_DTYPE_Q4_K, quantize_q4_K},
             {MOE_DTYPE_Q5_K, quantize_q5_K},     {MOE_DTYPE_Q6_K, quantize_q6_K},    {MOE_DTYPE_IQ4_NL, quantize_iq4_nl},
             {MOE_DTYPE_IQ4_XS, quantize_iq4_xs}};
    static const char *kinds[] = {"gauss", "uniform", "outliers"};
    const size_t n = 4096, rows = 64;
    float *x = malloc(n * rows * sizeof *x), *y = malloc(n * rows * sizeof *y);
    unsigned char *q = malloc(n * rows * 2);
    if (!x || !y || !q) return 1;
    printf("%-8s %-9s %12s %12s %7s %10s %10s\n", "format", "rows", "NMSE ours", "NMSE ggml", "ratio", "ns/el ours",
           "ns/el ggml");
    for (int kind = 0; kind < 3; kind++) {
        /* As tests/test_quant.c: Gaussian at 0.02, uniform, Gaussian with 1 in 128 at 10 sigma. */
        moe_rng r = {99 + (uint64_t)kind};
        for (size_t i = 0; i < n * rows; i++)
            x[i] = kind == 0   ? 0.02f * gauss(&r)
                   : kind == 1 ? moe_rng_range(&r, -1.0f, 1.0f)
                               : 0.02f * (moe_rng_below(&r, 128) == 0 ? 10.0f * (gauss(&r) > 0 ? 1 : -1) : gauss(&r));
        for (size_t k = 0; k < sizeof F / sizeof F[0]; k++) {
            double e[2], ns[2];
            for (int who = 0; who < 2; who++) {
                const double t0 = now();
                if (who == 0) moe_quant_quantize(F[k].t, x, q, n * rows);
                else F[k].ggml(x, q, (int64_t)rows, (int64_t)n, NULL);
                ns[who] = (now() - t0) / (double)(n * rows) * 1e9;
                moe_quant_dequantize(F[k].t, q, y, n * rows);
                double num = 0, den = 0;
                for (size_t i = 0; i < n * rows; i++) {
                    num += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
                    den += (double)x[i] * x[i];
                }
                e[who] = num / den;
            }
            printf("%-8s %-9s %12.4e %12.4e %7.3f %10.0f %10.0f\n", moe_dtype_name(F[k].t), kinds[kind], e[0], e[1],
                   e[0] / e[1], ns[0], ns[1]);
        }
    }
    free(x), free(y), free(q);
    return 0;
}
