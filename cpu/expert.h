/* expert.h - CPU execution of routed experts. */
#ifndef MOE_CPU_EXPERT_H
#define MOE_CPU_EXPERT_H

#include "common.h"

/* One SwiGLU expert's weights as registered (borrowed pointers). */
typedef struct moe_expert_view {
    const void *gate; /* [inter, hidden] */
    const void *up;   /* [inter, hidden] */
    const void *down; /* [hidden, inter] */
    moe_dtype dtype;
    uint32_t hidden, inter;
    /* MOE_DTYPE_I8: f32 per-row scales ([inter], [inter], [hidden]). */
    const float *gate_scale, *up_scale, *down_scale;
} moe_expert_view;

/* The reference expert, written to read like the math and to be the truth
 * every fast path is tested against:
 *   for each row r < m:  h = silu(gate x_r) * (up x_r);  y_r = down h
 * x: [m, hidden], y: [m, hidden], scratch: at least `inter` floats.
 * Dot products accumulate in double. The dtype must be valid. */
void moe_ref_expert(const moe_expert_view *w, uint32_t m, const float *x, float *y, float *scratch);

/* silu(v) = v * sigmoid(v) */
static inline float moe_silu(float v) { return v / (1.0f + __builtin_expf(-v)); }

#endif
