/* ops.c - dense transformer parts on the CPU (see ops.h). */
#define _POSIX_C_SOURCE 200809L
#include "ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "quant.h"

size_t moe_mat_row_bytes(const moe_mat *w) { return moe_dtype_row_bytes(w->type, w->cols); }

void moe_mat_row(const moe_mat *w, uint32_t r, float *out) {
    const size_t c = w->cols;
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r * moe_mat_row_bytes(w);
    switch (w->type) {
    case MOE_DTYPE_F32: memcpy(out, row, c * sizeof *out); break;
    case MOE_DTYPE_BF16: {
        const uint16_t *p = (const uint16_t *)(const void *)row;
        for (size_t i = 0; i < c; i++) out[i] = moe_bf16_to_f32(p[i]);
        break;
    }
    case MOE_DTYPE_F16: {
        const uint16_t *p = (const uint16_t *)(const void *)row;
        for (size_t i = 0; i < c; i++) out[i] = moe_f16_to_f32(p[i]);
        break;
    }
    default:
        if (!moe_dtype_is_block(w->type) || moe_quant_dequantize(w->type, row, out, c) != MOE_OK)
            memset(out, 0, c * sizeof *out);
        break;
    }
}

static float dot(const float *a, const float *b, uint32_t n) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (uint32_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

moe_status moe_matmul(moe_runtime_t *rt, const moe_mat *w, const float *x, uint32_t n, const float *bias, float *y) {
    const uint32_t rows = w->rows, cols = w->cols;
    if (!n || !rows) return MOE_OK;
    if (rt) {
        moe_status s = moe_dense_matmul(rt, w->data, w->type, NULL, rows, cols, n, x, y);
        if (s || !bias) return s;
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t r = 0; r < rows; r++) y[(size_t)t * rows + r] += bias[r];
        return MOE_OK;
    }
    /* Each thread converts a row of W once and uses it for every token. */
    bool oom = false;
#pragma omp parallel reduction(|| : oom)
    {
        float *row = w->type == MOE_DTYPE_F32 ? NULL : malloc((size_t)cols * sizeof *row);
        oom = w->type != MOE_DTYPE_F32 && !row;
#pragma omp for schedule(static)
        for (uint32_t r = 0; r < rows; r++) {
            if (oom) continue;
            const float *wr = (const float *)w->data + (size_t)r * cols;
            if (row) {
                moe_mat_row(w, r, row);
                wr = row;
            }
            const float b = bias ? bias[r] : 0.0f;
            for (uint32_t t = 0; t < n; t++) y[(size_t)t * rows + r] = dot(wr, x + (size_t)t * cols, cols) + b;
        }
        free(row);
    }
    return oom ? moe_fail(MOE_ERR_OUT_OF_MEMORY, "matmul: out of memory for a row of %u", cols) : MOE_OK;
}

void moe_rmsnorm(const float *x, const float *weight, uint32_t len, float eps, float *y) {
    float ss = 0;
    for (uint32_t i = 0; i < len; i++) ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)len + eps);
    for (uint32_t i = 0; i < len; i++) y[i] = weight[i] * (x[i] * inv);
}

void moe_rope_init(moe_rope *r, uint32_t dim, double base, bool interleaved) {
    memset(r, 0, sizeof *r);
    r->dim = dim;
    r->interleaved = interleaved;
    r->mscale = 1.0f;
    for (uint32_t i = 0; i < dim / 2; i++) r->inv_freq[i] = (float)(1.0 / pow(base, (double)(2 * i) / dim));
}

double moe_yarn_mscale(double scale, double x) { return scale <= 1 ? 1.0 : 0.1 * x * log(scale) + 1.0; }

/* The dimension whose wavelength makes n_rot turns over the original context. */
static double correction_dim(double n_rot, uint32_t dim, double base, uint32_t orig_ctx) {
    return dim * log(orig_ctx / (n_rot * 2 * 3.14159265358979323846)) / (2 * log(base));
}

void moe_rope_init_yarn(moe_rope *r, uint32_t dim, double base, bool interleaved, double factor, uint32_t orig_ctx,
                        double beta_fast, double beta_slow, double mscale, double mscale_all_dim) {
    moe_rope_init(r, dim, base, interleaved);
    double lo = floor(correction_dim(beta_fast, dim, base, orig_ctx));
    double hi = ceil(correction_dim(beta_slow, dim, base, orig_ctx));
    lo = fmax(lo, 0), hi = fmin(hi, dim - 1);
    if (lo == hi) hi += 0.001;
    for (uint32_t i = 0; i < dim / 2; i++) {
        const double extra = 1.0 / pow(base, (double)(2 * i) / dim), inter = extra / factor;
        const double ramp = fmin(fmax((i - lo) / (hi - lo), 0.0), 1.0), keep = 1.0 - ramp;
        r->inv_freq[i] = (float)(inter * (1.0 - keep) + extra * keep);
    }
    r->mscale = (float)(moe_yarn_mscale(factor, mscale) / moe_yarn_mscale(factor, mscale_all_dim));
}

void moe_rope_apply(const moe_rope *r, float *x, uint32_t n_heads, uint32_t stride, uint32_t pos) {
    const uint32_t half = r->dim / 2;
    float c[512], s[512];
    for (uint32_t i = 0; i < half; i++) {
        const float a = (float)pos * r->inv_freq[i];
        c[i] = cosf(a) * r->mscale;
        s[i] = sinf(a) * r->mscale;
    }
    for (uint32_t h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * stride;
        for (uint32_t i = 0; i < half; i++) {
            const uint32_t a = r->interleaved ? 2 * i : i, b = r->interleaved ? 2 * i + 1 : i + half;
            const float x0 = v[a], x1 = v[b];
            v[a] = x0 * c[i] - x1 * s[i];
            v[b] = x1 * c[i] + x0 * s[i];
        }
    }
}

void moe_softmax(float *x, uint32_t n) {
    if (!n) return;
    float m = x[0], sum = 0;
    for (uint32_t i = 1; i < n; i++) m = fmaxf(m, x[i]);
    for (uint32_t i = 0; i < n; i++) sum += (x[i] = expf(x[i] - m));
    for (uint32_t i = 0; i < n; i++) x[i] /= sum;
}
