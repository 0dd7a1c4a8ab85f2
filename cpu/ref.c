/* ref.c - the plain C reference SwiGLU expert (see expert.h). */
#include "expert.h"

static double dot_row(const void *w, moe_dtype t, size_t row, uint32_t n, const float *x) {
    double acc = 0.0;
    size_t base = row * (size_t)n;
    for (uint32_t i = 0; i < n; i++) acc += (double)moe_load_f32(w, t, base + i) * (double)x[i];
    return acc;
}

void moe_ref_expert(const moe_expert_view *w, uint32_t m, const float *x, float *y, float *scratch) {
    const uint32_t hidden = w->hidden, inter = w->inter;
    for (uint32_t r = 0; r < m; r++) {
        const float *xr = x + (size_t)r * hidden;
        float *yr = y + (size_t)r * hidden;
        for (uint32_t j = 0; j < inter; j++) {
            float g = (float)dot_row(w->gate, w->dtype, j, hidden, xr);
            float u = (float)dot_row(w->up, w->dtype, j, hidden, xr);
            scratch[j] = moe_silu(g) * u;
        }
        for (uint32_t i = 0; i < hidden; i++) yr[i] = (float)dot_row(w->down, w->dtype, i, inter, scratch);
    }
}
