/* expert.h - CPU execution of routed experts. */
#ifndef MOE_CPU_EXPERT_H
#define MOE_CPU_EXPERT_H

#include "common.h"

/* One SwiGLU expert's weights as registered (borrowed pointers). A block
 * format's row is moe_dtype_row_bytes(dtype, row length) bytes. */
typedef struct moe_expert_view {
    const void *gate; /* [inter, hidden] */
    const void *up;   /* [inter, hidden] */
    const void *down; /* [hidden, inter] */
    moe_dtype dtype;  /* of gate and up, and of down unless down_own */
    uint32_t hidden, inter;
    /* MOE_DTYPE_I8: f32 per-row scales ([inter], [inter], [hidden]). */
    const float *gate_scale, *up_scale, *down_scale;
    /* down in a dtype of its own (llama.cpp's Q4_K_M files keep some
     * layers' ffn_down in q6_K). A view that leaves these zero has down in
     * `dtype`. */
    bool down_own;
    moe_dtype down_dtype;
} moe_expert_view;

/* The dtype of w's down matrix. */
static inline moe_dtype moe_view_down(const moe_expert_view *w) { return w->down_own ? w->down_dtype : w->dtype; }

/* Bytes of one matrix of `rows` rows of `cols` elements of t; 0 when a
 * row is not a whole number of t's blocks or t is invalid. */
static inline size_t moe_matrix_bytes(moe_dtype t, uint32_t rows, uint32_t cols) {
    return (size_t)rows * moe_dtype_row_bytes(t, cols);
}

/* The reference expert, written to read like the math and to be the truth
 * every fast path is tested against:
 *   for each row r < m:  h = silu(gate x_r) * (up x_r);  y_r = down h
 * x: [m, hidden], y: [m, hidden], scratch: at least `inter` floats.
 * Dot products accumulate in double; a block format's rows are
 * dequantized with common/quant.c's reference. The dtypes must be valid
 * (and the rows whole blocks); on an allocation failure y is NaN. */
void moe_ref_expert(const moe_expert_view *w, uint32_t m, const float *x, float *y, float *scratch);

/* silu(v) = v * sigmoid(v) */
static inline float moe_silu(float v) { return v / (1.0f + __builtin_expf(-v)); }

#endif
