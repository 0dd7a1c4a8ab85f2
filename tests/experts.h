/* experts.h - random SwiGLU experts of any dtype for tests, owning their
 * memory: weights uniform in +-1/sqrt(fan_in) (int8: uniform codes with
 * per-row scales of the same range). */
#ifndef MOE_TEST_EXPERTS_H
#define MOE_TEST_EXPERTS_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "expert.h"
#include "quant.h"

/* One random expert of a dtype, owning its memory. */
typedef struct expert_buf {
    void *w[3];
    float *s[3];
    moe_expert_view v;
} expert_buf;

/* One matrix of `rows` x `cols` in t: uniform in +-1/sqrt(cols) (int8:
 * codes with per-row scales, into *scale; block formats: quantized from
 * f32 by common/quant.c). */
static inline void *matrix_make(uint32_t rows, uint32_t cols, moe_dtype t, moe_rng *r, float **scale) {
    const size_t n = (size_t)rows * cols;
    if (moe_dtype_is_block(t)) {
        float *f = malloc(n * sizeof *f);
        for (size_t i = 0; i < n; i++) f[i] = moe_rng_range(r, -1.0f, 1.0f) / sqrtf((float)cols);
        void *q = malloc(moe_matrix_bytes(t, rows, cols));
        if (moe_quant_quantize(t, f, q, n) != MOE_OK) abort();
        free(f);
        return q;
    }
    void *w = malloc(n * moe_dtype_size(t));
    for (size_t i = 0; i < n; i++) {
        float v = moe_rng_range(r, -1.0f, 1.0f) / sqrtf((float)cols);
        switch (t) {
        case MOE_DTYPE_F32: ((float *)w)[i] = v; break;
        case MOE_DTYPE_BF16: ((uint16_t *)w)[i] = moe_f32_to_bf16(v); break;
        case MOE_DTYPE_F16: ((uint16_t *)w)[i] = moe_f32_to_f16(v); break;
        default: ((int8_t *)w)[i] = (int8_t)(int)moe_rng_range(r, -127.0f, 127.0f); break;
        }
    }
    if (t == MOE_DTYPE_I8) {
        *scale = malloc(rows * sizeof(float));
        for (uint32_t j = 0; j < rows; j++) (*scale)[j] = moe_rng_range(r, 0.5f, 1.5f) / (127.0f * sqrtf((float)cols));
    }
    return w;
}

/* An expert with gate and up in t and down in down_t. */
static inline void expert_make2(expert_buf *b, uint32_t H, uint32_t I, moe_dtype t, moe_dtype down_t, moe_rng *r) {
    memset(b, 0, sizeof *b);
    for (int m = 0; m < 3; m++)
        b->w[m] = m == 2 ? matrix_make(H, I, down_t, r, &b->s[m]) : matrix_make(I, H, t, r, &b->s[m]);
    b->v = (moe_expert_view){b->w[0], b->w[1], b->w[2], t, H, I, b->s[0], b->s[1], b->s[2], down_t != t, down_t};
}

static inline void expert_make(expert_buf *b, uint32_t H, uint32_t I, moe_dtype t, moe_rng *r) {
    expert_make2(b, H, I, t, t, r);
}

static inline void expert_free(expert_buf *b) {
    for (int m = 0; m < 3; m++) free(b->w[m]), free(b->s[m]);
}

#endif
