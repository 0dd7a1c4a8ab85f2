/* ref.c - the plain C reference SwiGLU expert (see expert.h). */
#include "expert.h"

#include <math.h>
#include <stdlib.h>

#include "quant.h"

/* Row `row` of W (dequantized: int8 rows are q * scale[row], block rows
 * through `tmp`, n floats) dot x. */
static double dot_row(const void *w, const float *scale, moe_dtype t, size_t row, uint32_t n, const float *x,
                      float *tmp) {
    double acc = 0.0;
    if (moe_dtype_is_block(t)) {
        (void)moe_quant_dequantize(t, (const char *)w + row * moe_dtype_row_bytes(t, n), tmp, n);
        for (uint32_t i = 0; i < n; i++) acc += (double)tmp[i] * (double)x[i];
        return acc;
    }
    size_t base = row * (size_t)n;
    if (t == MOE_DTYPE_I8) {
        const int8_t *q = (const int8_t *)w + base;
        for (uint32_t i = 0; i < n; i++) acc += (double)q[i] * (double)x[i];
        return acc * (double)scale[row];
    }
    for (uint32_t i = 0; i < n; i++) acc += moe_load_f32(w, t, base + i) * (double)x[i];
    return acc;
}

void moe_ref_expert(const moe_expert_view *w, uint32_t m, const float *x, float *y, float *scratch) {
    const uint32_t hidden = w->hidden, inter = w->inter;
    const moe_dtype dt = w->dtype, ddt = moe_view_down(w);
    float *tmp = moe_dtype_is_block(dt) || moe_dtype_is_block(ddt)
                     ? malloc((hidden > inter ? hidden : inter) * sizeof *tmp) : NULL;
    if (!tmp && (moe_dtype_is_block(dt) || moe_dtype_is_block(ddt))) {
        for (size_t i = 0; i < (size_t)m * hidden; i++) y[i] = NAN;
        return;
    }
    for (uint32_t r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * hidden;
        float *yr = y + (size_t)r * hidden;
        for (uint32_t j = 0; j < inter; j++) {
            float g = (float)dot_row(w->gate, w->gate_scale, dt, j, hidden, xr, tmp);
            float u = (float)dot_row(w->up, w->up_scale, dt, j, hidden, xr, tmp);
            scratch[j] = moe_silu(g) * u;
        }
        for (uint32_t i = 0; i < hidden; i++)
            yr[i] = (float)dot_row(w->down, w->down_scale, ddt, i, inter, scratch, tmp);
    }
    free(tmp);
}
