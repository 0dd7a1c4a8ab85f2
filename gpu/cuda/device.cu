// device.cu - CUDA devices, contexts, and the f32 SwiGLU expert via cuBLAS.
// Every CUDA and cuBLAS call is checked and turned into a moe_status with
// the call, file and line in the message.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu.h"

#define CUDA_OK(call)                                                                             \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess)                                                                    \
            return moe_fail(MOE_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call,           \
                            cudaGetErrorString(e_));                                              \
    } while (0)

#define CUBLAS_OK(call)                                                                           \
    do {                                                                                          \
        cublasStatus_t s_ = (call);                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                          \
            return moe_fail(MOE_ERR_DEVICE, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__,    \
                            #call, (int)s_);                                                      \
    } while (0)

// The host's current device is its own state: every entry point that must
// switch devices restores the previous one before returning.
struct device_guard {
    int prev;
    bool ok;
    explicit device_guard(int device) : prev(0), ok(false) {
        if (cudaGetDevice(&prev) != cudaSuccess) {
            cudaGetLastError();
            prev = -1;
        }
        ok = cudaSetDevice(device) == cudaSuccess;
    }
    ~device_guard() {
        if (prev >= 0) cudaSetDevice(prev);
    }
};

#define SWITCH_TO(device)                                                                   \
    device_guard guard_(device);                                                            \
    if (!guard_.ok)                                                                         \
        return moe_fail(MOE_ERR_DEVICE, "%s:%d: cudaSetDevice(%d): %s", __FILE__, __LINE__, \
                        (device), cudaGetErrorString(cudaGetLastError()))

struct moe_gpu_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
};

extern "C" int moe_gpu_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

extern "C" moe_status moe_gpu_probe(int device, moe_gpu_info *out) {
    int n = moe_gpu_count();
    if (device < 0 || device >= n)
        return moe_fail(MOE_ERR_NO_DEVICE, "no CUDA device %d (%d found)", device, n);
    if (!out) return MOE_OK;
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, device));
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    out->pci_bus = prop.pciBusID;
    SWITCH_TO(device);
    size_t free_b = 0, total_b = 0;
    CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
    out->free_bytes = free_b;
    out->total_bytes = total_b;
    return MOE_OK;
}

extern "C" moe_status moe_gpu_ctx_create(moe_gpu_ctx **out, int device) {
    if (!out) return moe_fail(MOE_ERR_INVALID_ARG, "moe_gpu_ctx_create: out is NULL");
    *out = NULL;
    moe_status st = moe_gpu_probe(device, NULL);
    if (st != MOE_OK) return st;
    SWITCH_TO(device);
    moe_gpu_ctx *c = (moe_gpu_ctx *)calloc(1, sizeof *c);
    if (!c) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_gpu_ctx_create: allocation failed");
    c->device = device;
    cudaError_t e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        free(c);
        return moe_fail(MOE_ERR_DEVICE, "cudaStreamCreateWithFlags: %s", cudaGetErrorString(e));
    }
    cublasStatus_t s = cublasCreate(&c->blas);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(c->blas, c->stream);
    if (s != CUBLAS_STATUS_SUCCESS) {
        if (c->blas) cublasDestroy(c->blas);
        cudaStreamDestroy(c->stream);
        free(c);
        return moe_fail(MOE_ERR_DEVICE, "cublasCreate: cuBLAS status %d", (int)s);
    }
    *out = c;
    return MOE_OK;
}

extern "C" void moe_gpu_ctx_free(moe_gpu_ctx **pc) {
    if (!pc || !*pc) return;
    moe_gpu_ctx *c = *pc;
    *pc = NULL;
    device_guard guard(c->device);
    cudaStreamSynchronize(c->stream);
    cublasDestroy(c->blas);
    cudaStreamDestroy(c->stream);
    free(c);
}

// h[i] = silu(g[i]) * u[i]; h may be g (computed in place), so neither is
// declared __restrict__.
__global__ void silu_mul_kernel(float *h, const float *g, const float *__restrict__ u, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = g[i];
        h[i] = v / (1.0f + __expf(-v)) * u[i];
    }
}

extern "C" moe_status moe_gpu_expert_f32(moe_gpu_ctx *c, const float *gate, const float *up, const float *down,
                                         uint32_t hidden, uint32_t inter, uint32_t m, const float *x, float *y,
                                         float *scratch) {
    if (!c || !gate || !up || !down || !x || !y || !scratch)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_gpu_expert_f32: NULL argument");
    if (hidden == 0 || inter == 0 || hidden > INT_MAX || inter > INT_MAX || m > INT_MAX)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_gpu_expert_f32: shape %ux%u with m = %u (each 1..%d, m 0..%d)",
                        hidden, inter, m, INT_MAX, INT_MAX);
    if (m == 0) return MOE_OK;
    SWITCH_TO(c->device);
    const float one = 1.0f, zero = 0.0f;
    float *g = scratch, *u = scratch + (size_t)m * inter;
    // Row-major A[r, c] is column-major A^T: G^T[inter, m] = Wg[inter, hidden] * X^T[hidden, m].
    CUBLAS_OK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)inter, (int)m, (int)hidden, &one, gate,
                          (int)hidden, x, (int)hidden, &zero, g, (int)inter));
    CUBLAS_OK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)inter, (int)m, (int)hidden, &one, up,
                          (int)hidden, x, (int)hidden, &zero, u, (int)inter));
    size_t n = (size_t)m * inter;
    unsigned blocks = (unsigned)((n + 255) / 256);
    if (blocks > 65535u) blocks = 65535u;
    silu_mul_kernel<<<blocks, 256, 0, c->stream>>>(g, g, u, n);
    CUDA_OK(cudaGetLastError());
    // Y^T[hidden, m] = Wd[hidden, inter] * H^T[inter, m].
    CUBLAS_OK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)hidden, (int)m, (int)inter, &one, down,
                          (int)inter, g, (int)inter, &zero, y, (int)hidden));
    return MOE_OK;
}

extern "C" moe_status moe_gpu_sync(moe_gpu_ctx *c) {
    if (!c) return moe_fail(MOE_ERR_INVALID_ARG, "moe_gpu_sync: NULL context");
    SWITCH_TO(c->device);
    CUDA_OK(cudaStreamSynchronize(c->stream));
    return MOE_OK;
}
