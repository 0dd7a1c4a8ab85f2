/* kern.h - the CPU engine's inner kernels: a many-row dot product (GEMV for
 * a handful of tokens) over weights in HF layout, and the vectorized glue
 * around it (activation conversion and quantization, SiLU-multiply, output
 * scaling).
 *
 * Weights are never copied or repacked: W is [n, k] row-major in its
 * registered dtype, and a call computes
 *     out[r][j - n0] = sum_i W[j][i] * x[r][i]   for n0 <= j < n1, r < m
 * with x the activations prepared by moe_acts_prepare() in the format the
 * kernel asked for (f32, bf16 pairs, or u8 quantized per token).
 *
 * Each dtype has an AVX-512 kernel (AVX512-BF16 dot products for bf16,
 * VNNI u8 x s8 dot products for int8) and an AVX2 one (weights widened to
 * f32, f32 activations) chosen at run time from the CPU's features, and a
 * portable C kernel used everywhere else and as a second implementation
 * in tests. */
#ifndef MOE_CPU_KERN_H
#define MOE_CPU_KERN_H

#include "common.h"

typedef enum moe_act_kind {
    MOE_ACT_F32 = 0, /* float */
    MOE_ACT_BF16,    /* bf16, as the AVX512-BF16 dot product wants */
    MOE_ACT_U8,      /* u8 = round(x / scale) + 128, one f32 scale per row */
    MOE_ACT_S8,      /* s8 = round(x / scale), one f32 scale per row (oneDNN) */
    MOE_ACT_BF16_VNNI, /* bf16 packed as AMX B tiles: 16 tokens x 16 k pairs per 1 KB */
    MOE_ACT_S8_VNNI,   /* s8 per token (scale per row) as AMX B tiles: 16 tokens x 16 k quads */
    /* Block formats' activations (common/quant.h's moe_qact blocks): each
     * row of k values is k / block blocks, rows back to back. */
    MOE_ACT_Q8_0,      /* 32 int8 and an f32 scale per block */
    MOE_ACT_Q8_1,      /* q8_0 and the block's code sum */
    MOE_ACT_Q8_K,      /* 256 int8, an f32 scale and sums of 16 per block */
} moe_act_kind;

/* Activations for m rows of k values, in one of the kinds above. */
typedef struct moe_acts {
    moe_act_kind kind;
    uint32_t m, k;
    size_t ld;          /* elements between rows (the block kinds: k) */
    const void *data;
    const float *scale; /* U8: x[r][i] ~ scale[r] * (q - 128); S8: scale[r] * q */
} moe_acts;

/* See the top of this file. wscale: one f32 per weight row for int8
 * weights, NULL otherwise. out has row stride ldo floats. For a block
 * format, row j of W starts at j * moe_dtype_row_bytes(t, k). */
typedef void (*moe_gemv_fn)(const void *w, const float *wscale, uint32_t k, uint32_t n0, uint32_t n1,
                            const moe_acts *x, float *out, size_t ldo);

typedef struct moe_kernel {
    moe_act_kind act;   /* what the kernel wants its activations as */
    moe_gemv_fn gemv;
    const char *name;   /* e.g. "avx512_bf16", "c" */
} moe_kernel;

/* The fastest kernel this CPU can run for weight dtype `t`, or with
 * `portable` the plain C one. Never fails for a valid dtype. */
moe_kernel moe_kernel_select(moe_dtype t, bool portable);

/* The same for GGUF's block formats (kern_quant.c); gemv NULL for a dtype
 * that is not one. */
moe_kernel moe_kernel_select_block(moe_dtype t, bool portable);

/* Rows per group for a GEMV kernel that takes tb tokens per pass over
 * register blocks of rb rows: with more than tb tokens, token passes run
 * outside and row groups inside, over rows whose weights fit in 512 KB of
 * L2, so each pass's activations stay in L1 while the weights come from
 * L2 (from DRAM only for the first pass). Rows outside and tokens inside
 * would keep rb weight rows plus every token row in L1 at once: from 7
 * bf16 tokens of K = 2048 they no longer fit its 12 ways and the kernel
 * drops to a third of its speed. One pass: all n rows. */
static inline uint32_t moe_kern_group_rows(uint32_t n, uint32_t m, uint32_t tb, uint32_t rb, size_t row_bytes) {
    if (m <= tb) return n;
    const size_t r = (size_t)(512 * 1024) / row_bytes / rb * rb;
    return r < rb ? rb : r > n ? n : (uint32_t)r;
}

/* The FP8 e4m3 kernels (kern_fp8.c): f32 activations, weights widened in
 * registers; moe_kernel_select_block() hands MOE_DTYPE_FP8_E4M3 to it. */
moe_kernel moe_kernel_select_fp8(bool portable);

/* The activation kind a block format's kernels take (common/quant.h's
 * moe_qact of the format). */
moe_act_kind moe_act_of_block(moe_dtype t);

/* Quantizes m rows of k f32 values (row stride ldx) into blocks of a
 * block kind (MOE_ACT_Q8_*), rows back to back. */
void moe_acts_quantize_blocks(moe_act_kind a, uint32_t m, uint32_t k, const float *x, size_t ldx, void *buf);

/* Bytes per activation element of kind `a`. */
size_t moe_act_size(moe_act_kind a);

/* Bytes moe_acts_prepare() writes for m rows of k (the VNNI kind pads the
 * tokens to a multiple of 16). */
size_t moe_acts_bytes(moe_act_kind a, uint32_t m, uint32_t k);

/* The AMX kernel for weight dtype t (bf16 or int8 weights as A tiles in
 * place, activations as VNNI B tiles), or one with gemv NULL where AMX
 * cannot run (no AMX, the OS refuses the tile state, another dtype). Its
 * shapes: k a multiple of 32 (bf16) or 64 (int8, and at most 65536), n1 -
 * n0 a multiple of 16. A thread brackets its calls
 * with moe_amx_begin() and moe_amx_end() (tile configuration and release). */
moe_kernel moe_kernel_amx(moe_dtype t);
void moe_amx_begin(void);
void moe_amx_end(void);

/* Converts m rows of f32 x (row stride ldx) into `buf` (m * k elements of
 * kind `a`, row stride k) and, for MOE_ACT_U8, `scale` (m floats). Fills
 * and returns the moe_acts that describes the result. MOE_ACT_F32 is used
 * in place (no copy). A row holding NaN or Inf gets scale NaN, so all its
 * outputs are NaN rather than silently finite. */
moe_acts moe_acts_prepare(moe_act_kind a, uint32_t m, uint32_t k, const float *x, size_t ldx, void *buf,
                          float *scale);

/* The moe_acts that moe_acts_prepare() returns for these arguments,
 * without preparing anything (for callers that prepare rows in pieces). */
moe_acts moe_acts_describe(moe_act_kind a, uint32_t m, uint32_t k, const float *x, size_t ldx, void *buf,
                           float *scale);

/* h[i] = silu(g[i]) * u[i] for i < n (h may alias g or u). */
void moe_silu_mul(float *h, const float *g, const float *u, size_t n);

/* Vectorized exp for the glue code: relative error under 2e-7 on
 * [-87, 88]; clamps outside; NaN stays NaN. */
void moe_exp_f32(float *y, const float *x, size_t n);

#endif
