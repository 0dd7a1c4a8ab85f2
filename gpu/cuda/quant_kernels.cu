// quant_kernels.cu - GGUF's block formats on a CUDA GPU (quant_kernels.h).
// Every per-thread step is a function of quant_blocks.h, which the host
// test (tests/test_cuda_quant.c) runs against common/quant.c; what is only
// here is the launch geometry and the warp's reduction.
#include "quant_kernels.h"

namespace {

const unsigned DEQ_THREADS = 256;  // one thread block per row, 8 elements a thread
const unsigned GEMV_WARPS = 4;     // rows per thread block, one warp each
const unsigned MAX_GRID = 65535;   // the kernels stride over rows beyond it

// One thread block per row: each thread its groups of 8.
template <moe_dtype T>
__global__ void __launch_bounds__(DEQ_THREADS)
dequant_bf16_kernel(const uint8_t *__restrict__ w, size_t row_bytes, uint32_t rows, uint32_t cols,
                    uint16_t *__restrict__ out) {
    for (uint32_t r = blockIdx.x; r < rows; r += gridDim.x)
        moe_qb_bf16_row(T, w + r * row_bytes, cols, threadIdx.x, blockDim.x, out + (size_t)r * cols);
}

template <moe_dtype T>
__global__ void __launch_bounds__(DEQ_THREADS)
dequant_f32_kernel(const uint8_t *__restrict__ w, size_t row_bytes, uint32_t rows, uint32_t cols,
                   float *__restrict__ out) {
    for (uint32_t r = blockIdx.x; r < rows; r += gridDim.x)
        moe_qb_f32_row(T, w + r * row_bytes, cols, threadIdx.x, blockDim.x, out + (size_t)r * cols);
}

// One warp per row: each lane sums its groups of 8 for every token, then
// the warp adds its lanes up (the same sum in any order, up to rounding).
template <moe_dtype T>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_kernel(const uint8_t *__restrict__ w, size_t row_bytes, uint32_t rows, uint32_t cols,
            const float *__restrict__ x, uint32_t m, float *__restrict__ y) {
    const uint32_t lane = threadIdx.x % 32, warps = blockDim.x / 32;
    // r is the same for the whole warp, so every lane reaches the shuffles.
    for (uint32_t r = blockIdx.x * warps + threadIdx.x / 32; r < rows; r += gridDim.x * warps) {
        float acc[MOE_QB_MAX_M];
        moe_qb_dot_part(T, w + r * row_bytes, cols, x, m, lane, 32, acc);
#pragma unroll
        for (uint32_t j = 0; j < MOE_QB_MAX_M; j++)
            if (j < m) // m is the same for every lane
#pragma unroll
                for (int o = 16; o > 0; o /= 2) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
        if (lane == 0)
#pragma unroll
            for (uint32_t j = 0; j < MOE_QB_MAX_M; j++)
                if (j < m) y[(size_t)j * rows + r] = acc[j];
    }
}

unsigned grid_of(uint32_t n) { return n == 0 ? 1u : n > MAX_GRID ? MAX_GRID : n; }

template <moe_dtype T> cudaError_t dequant(const void *w, uint32_t rows, uint32_t cols, void *out, cudaStream_t s) {
    dequant_bf16_kernel<T><<<grid_of(rows), DEQ_THREADS, 0, s>>>((const uint8_t *)w, moe_dtype_row_bytes(T, cols), rows,
                                                                 cols, (uint16_t *)out);
    return cudaGetLastError();
}

template <moe_dtype T> cudaError_t dequant_f32(const void *w, uint32_t rows, uint32_t cols, float *out, cudaStream_t s) {
    dequant_f32_kernel<T><<<grid_of(rows), DEQ_THREADS, 0, s>>>((const uint8_t *)w, moe_dtype_row_bytes(T, cols), rows,
                                                                cols, out);
    return cudaGetLastError();
}

template <moe_dtype T>
cudaError_t gemv(const void *w, uint32_t rows, uint32_t cols, const float *x, uint32_t m, float *y, cudaStream_t s) {
    gemv_kernel<T><<<grid_of((rows + GEMV_WARPS - 1) / GEMV_WARPS), GEMV_WARPS * 32, 0, s>>>(
        (const uint8_t *)w, moe_dtype_row_bytes(T, cols), rows, cols, x, m, y);
    return cudaGetLastError();
}

} // namespace

// Each format once, for the two dispatches below.
#define MOE_CUQ_FORMATS(X)                                                                                        \
    X(MOE_DTYPE_Q4_0) X(MOE_DTYPE_Q4_1) X(MOE_DTYPE_Q5_0) X(MOE_DTYPE_Q5_1) X(MOE_DTYPE_Q8_0) X(MOE_DTYPE_Q2_K)     \
    X(MOE_DTYPE_Q3_K) X(MOE_DTYPE_Q4_K) X(MOE_DTYPE_Q5_K) X(MOE_DTYPE_Q6_K) X(MOE_DTYPE_IQ4_NL) X(MOE_DTYPE_IQ4_XS) \
    X(MOE_DTYPE_MXFP4) X(MOE_DTYPE_FP8_E4M3)

bool moe_cuq_supports(moe_dtype t) { return moe_qb_decodes(t) != 0; }

cudaError_t moe_cuq_dequant_bf16(moe_dtype t, const void *w, uint32_t rows, uint32_t cols, void *out, cudaStream_t s) {
    if (rows == 0 || cols == 0) return cudaSuccess;
    if (cols % 8 || moe_dtype_row_bytes(t, cols) == 0) return cudaErrorInvalidValue;
    switch (t) {
#define X(T) \
    case T: return dequant<T>(w, rows, cols, out, s);
        MOE_CUQ_FORMATS(X)
#undef X
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t moe_cuq_dequant_f32(moe_dtype t, const void *w, uint32_t rows, uint32_t cols, float *out, cudaStream_t s) {
    if (rows == 0 || cols == 0) return cudaSuccess;
    if (cols % 8 || moe_dtype_row_bytes(t, cols) == 0) return cudaErrorInvalidValue;
    switch (t) {
#define X(T) \
    case T: return dequant_f32<T>(w, rows, cols, out, s);
        MOE_CUQ_FORMATS(X)
#undef X
    default: return cudaErrorInvalidValue;
    }
}

cudaError_t moe_cuq_gemv(moe_dtype t, const void *w, uint32_t rows, uint32_t cols, const float *x, uint32_t m,
                         float *y, cudaStream_t s) {
    if (rows == 0 || m == 0) return cudaSuccess;
    if (m > MOE_QB_MAX_M || cols % 8 || moe_dtype_row_bytes(t, cols) == 0) return cudaErrorInvalidValue;
    switch (t) {
#define X(T) \
    case T: return gemv<T>(w, rows, cols, x, m, y, s);
        MOE_CUQ_FORMATS(X)
#undef X
    default: return cudaErrorInvalidValue;
    }
}
