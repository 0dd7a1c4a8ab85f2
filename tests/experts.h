/* experts.h - random SwiGLU experts of any dtype for tests, owning their
 * memory: weights uniform in +-1/sqrt(fan_in) (int8: uniform codes with
 * per-row scales of the same range). */
#ifndef MOE_TEST_EXPERTS_H
#define MOE_TEST_EXPERTS_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "expert.h"

/* One random expert of a dtype, owning its memory. */
typedef struct expert_buf {
    void *w[3];
    float *s[3];
    moe_expert_view v;
} expert_buf;

static inline void expert_make(expert_buf *b, uint32_t H, uint32_t I, moe_dtype t, moe_rng *r) {
    memset(b, 0, sizeof *b);
    const size_t n = (size_t)H * I;
    for (int m = 0; m < 3; m++) {
        const uint32_t fan_in = m == 2 ? I : H, rows = m == 2 ? H : I;
        b->w[m] = malloc(n * moe_dtype_size(t));
        for (size_t i = 0; i < n; i++) {
            float v = moe_rng_range(r, -1.0f, 1.0f) / sqrtf((float)fan_in);
            switch (t) {
            case MOE_DTYPE_F32: ((float *)b->w[m])[i] = v; break;
            case MOE_DTYPE_BF16: ((uint16_t *)b->w[m])[i] = moe_f32_to_bf16(v); break;
            case MOE_DTYPE_F16: ((uint16_t *)b->w[m])[i] = moe_f32_to_f16(v); break;
            default: ((int8_t *)b->w[m])[i] = (int8_t)(int)moe_rng_range(r, -127.0f, 127.0f); break;
            }
        }
        if (t == MOE_DTYPE_I8) {
            b->s[m] = malloc(rows * sizeof(float));
            for (uint32_t j = 0; j < rows; j++) b->s[m][j] = moe_rng_range(r, 0.5f, 1.5f) / (127.0f * sqrtf((float)fan_in));
        }
    }
    b->v = (moe_expert_view){b->w[0], b->w[1], b->w[2], t, H, I, b->s[0], b->s[1], b->s[2]};
}

static inline void expert_free(expert_buf *b) {
    for (int m = 0; m < 3; m++) free(b->w[m]), free(b->s[m]);
}

#endif
