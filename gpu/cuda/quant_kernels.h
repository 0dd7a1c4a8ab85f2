/* quant_kernels.h - the CUDA device's kernels for GGUF's block formats
 * (common/quant.h): a dequantize kernel to bf16, ahead of cuBLAS at
 * prefill, and a GEMV that reads the blocks in place at decode. Both
 * decode elements with gpu/cuda/quant_blocks.h, bit-identical to
 * common/quant.c's reference dequantizers. C++ (CUDA) only. */
#ifndef MOE_GPU_CUDA_QUANT_KERNELS_H
#define MOE_GPU_CUDA_QUANT_KERNELS_H

#include <cuda_runtime.h>

#include "quant_blocks.h"

/* Whether t is a block format the kernels below take (all 13). */
bool moe_cuq_supports(moe_dtype t);

/* out (bf16, [rows][cols] row-major) = the matrix w of block format t,
 * rows x cols (cols a whole number of t's blocks), each element rounded to
 * nearest even from its exact f32 value. Enqueued on `s`; the launch's
 * error (cudaErrorInvalidValue for a format not taken here). */
cudaError_t moe_cuq_dequant_bf16(moe_dtype t, const void *w, uint32_t rows, uint32_t cols, void *out, cudaStream_t s);

/* The same in f32, the exact values the GEMV multiplies (for tests). */
cudaError_t moe_cuq_dequant_f32(moe_dtype t, const void *w, uint32_t rows, uint32_t cols, float *out, cudaStream_t s);

/* y[j][r] = sum_c w[r][c] * x[j][c] for j < m (1 <= m <= MOE_QB_MAX_M), in
 * f32: w rows x cols of block format t read in place, x [m][cols] and y
 * [m][rows] f32. One warp per row. Enqueued on `s`, as above. */
cudaError_t moe_cuq_gemv(moe_dtype t, const void *w, uint32_t rows, uint32_t cols, const float *x, uint32_t m,
                         float *y, cudaStream_t s);

#endif
