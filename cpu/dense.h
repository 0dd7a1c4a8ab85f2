/* dense.h - dense matrix products with the engine's kernels: a model's
 * projections outside the routed experts (attention, shared experts, dense
 * MLPs, the LM head), y[n, rows] = x[n, cols] W^T with W [rows, cols]
 * row-major in place, on the calling runtime's threads.
 *
 * Up to MOE_DENSE_GEMV_MAX_M tokens use the GEMV kernels (bandwidth-bound
 * decode, as the experts' small groups); more use the AMX kernel where it
 * runs (bf16 and int8 weights, cols a multiple of 32 or 64), rows in
 * multiples of 16 with the remainder on GEMV; otherwise GEMV throughout. */
#ifndef MOE_CPU_DENSE_H
#define MOE_CPU_DENSE_H

#include "common.h"

#define MOE_DENSE_GEMV_MAX_M 4

/* wscale: per-row f32 scales for MOE_DTYPE_I8, NULL otherwise. */
moe_status moe_cpu_dense(uint32_t n_threads, bool portable, const void *w, moe_dtype dt, const float *wscale,
                         uint32_t rows, uint32_t cols, uint32_t n, const float *x, float *y);

#endif
