/* kern_quant.c - the CPU engine's kernels for GGUF's block formats (kern.h):
 * a row of weights stays in its blocks as the file stores them, the
 * activations are quantized per block to int8 (common/quant.h's moe_qact
 * blocks), and each block's dot product is an exact integer sum with the
 * block scales applied in f32, as llama.cpp computes them.
 *
 * The plain C kernel calls common/quant.c's reference dot product for
 * every (token, row): it is the second implementation the SIMD kernels are
 * tested against, and the path of a CPU without them. */
#include "kern.h"
#include "quant.h"

static moe_qact qact_of(moe_act_kind a) {
    return a == MOE_ACT_Q8_0 ? MOE_QACT_Q8_0 : a == MOE_ACT_Q8_1 ? MOE_QACT_Q8_1 : MOE_QACT_Q8_K;
}

moe_act_kind moe_act_of_block(moe_dtype t) {
    const moe_quant_format *f = moe_quant_format_of(t);
    if (!f) return MOE_ACT_Q8_0;
    return f->act == MOE_QACT_Q8_1 ? MOE_ACT_Q8_1 : f->act == MOE_QACT_Q8_K ? MOE_ACT_Q8_K : MOE_ACT_Q8_0;
}

void moe_acts_quantize_blocks(moe_act_kind a, uint32_t m, uint32_t k, const float *x, size_t ldx, void *buf) {
    const moe_qact q = qact_of(a);
    const size_t rb = moe_qact_row_bytes(q, k);
    for (uint32_t r = 0; r < m; r++) (void)moe_qact_quantize(q, x + (size_t)r * ldx, (char *)buf + (size_t)r * rb, k);
}

/* ---- portable C ------------------------------------------------------- */

#define GEMV_BLOCK_C(name, dt)                                                                         \
    static void name(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,              \
                     const moe_acts *x, float *out, size_t ldo) {                                       \
        (void)ws;                                                                                       \
        const size_t wrb = moe_dtype_row_bytes(dt, k), arb = moe_qact_row_bytes(qact_of(x->kind), k);   \
        for (uint32_t r = 0; r < x->m; r++) {                                                           \
            const char *xr = (const char *)x->data + (size_t)r * arb;                                   \
            for (uint32_t j = n0; j < n1; j++)                                                          \
                out[(size_t)r * ldo + (j - n0)] = moe_quant_dot(dt, (const char *)w + (size_t)j * wrb, xr, k); \
        }                                                                                               \
    }
GEMV_BLOCK_C(gemv_c_q4_0, MOE_DTYPE_Q4_0)
GEMV_BLOCK_C(gemv_c_q4_1, MOE_DTYPE_Q4_1)
GEMV_BLOCK_C(gemv_c_q5_0, MOE_DTYPE_Q5_0)
GEMV_BLOCK_C(gemv_c_q5_1, MOE_DTYPE_Q5_1)
GEMV_BLOCK_C(gemv_c_q8_0, MOE_DTYPE_Q8_0)
GEMV_BLOCK_C(gemv_c_q2_K, MOE_DTYPE_Q2_K)
GEMV_BLOCK_C(gemv_c_q3_K, MOE_DTYPE_Q3_K)
GEMV_BLOCK_C(gemv_c_q4_K, MOE_DTYPE_Q4_K)
GEMV_BLOCK_C(gemv_c_q5_K, MOE_DTYPE_Q5_K)
GEMV_BLOCK_C(gemv_c_q6_K, MOE_DTYPE_Q6_K)
GEMV_BLOCK_C(gemv_c_iq4_nl, MOE_DTYPE_IQ4_NL)
GEMV_BLOCK_C(gemv_c_iq4_xs, MOE_DTYPE_IQ4_XS)
GEMV_BLOCK_C(gemv_c_mxfp4, MOE_DTYPE_MXFP4)

static moe_gemv_fn c_kernel(moe_dtype t) {
    switch (t) {
    case MOE_DTYPE_Q4_0: return gemv_c_q4_0;
    case MOE_DTYPE_Q4_1: return gemv_c_q4_1;
    case MOE_DTYPE_Q5_0: return gemv_c_q5_0;
    case MOE_DTYPE_Q5_1: return gemv_c_q5_1;
    case MOE_DTYPE_Q8_0: return gemv_c_q8_0;
    case MOE_DTYPE_Q2_K: return gemv_c_q2_K;
    case MOE_DTYPE_Q3_K: return gemv_c_q3_K;
    case MOE_DTYPE_Q4_K: return gemv_c_q4_K;
    case MOE_DTYPE_Q5_K: return gemv_c_q5_K;
    case MOE_DTYPE_Q6_K: return gemv_c_q6_K;
    case MOE_DTYPE_IQ4_NL: return gemv_c_iq4_nl;
    case MOE_DTYPE_IQ4_XS: return gemv_c_iq4_xs;
    case MOE_DTYPE_MXFP4: return gemv_c_mxfp4;
    default: return NULL;
    }
}

/* ---- dispatch ---------------------------------------------------------- */

moe_kernel moe_kernel_select_block(moe_dtype t, bool portable) {
    moe_kernel k = {moe_act_of_block(t), c_kernel(t), "c"};
    (void)portable;
    return k;
}
