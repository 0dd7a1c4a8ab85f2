// check.h - what both CUDA sources use to check calls and keep the
// caller's current device: every CUDA and cuBLAS call's failure becomes a
// moe_status naming the call, file and line.
#ifndef MOE_GPU_CUDA_CHECK_H
#define MOE_GPU_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "common.h"

#define CUDA_FAIL(call, e) \
    moe_fail(MOE_ERR_DEVICE, "%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e))

#define CUDA_OK(call)                                      \
    do {                                                   \
        cudaError_t e_ = (call);                           \
        if (e_ != cudaSuccess) return CUDA_FAIL(call, e_); \
    } while (0)

#define CUBLAS_OK(call)                                                                                           \
    do {                                                                                                          \
        cublasStatus_t s_ = (call);                                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                          \
            return moe_fail(MOE_ERR_DEVICE, "%s:%d: %s: cuBLAS status %d", __FILE__, __LINE__, #call, (int)s_); \
    } while (0)

// The host's current device is its own state: every entry point that must
// switch devices restores the previous one before returning.
struct device_guard {
    int prev;
    bool ok;
    explicit device_guard(int device) : prev(-1), ok(true) {
        if (cudaGetDevice(&prev) != cudaSuccess) prev = -1, (void)cudaGetLastError();
        if (prev != device) ok = cudaSetDevice(device) == cudaSuccess;
    }
    ~device_guard() {
        if (prev >= 0) (void)cudaSetDevice(prev);
    }
};

// A guard for `device`, returning from the function if it cannot switch.
#define SWITCH_TO(device)                                                                   \
    device_guard guard_(device);                                                            \
    if (!guard_.ok)                                                                         \
        return moe_fail(MOE_ERR_DEVICE, "%s:%d: cudaSetDevice(%d): %s", __FILE__, __LINE__, \
                        (device), cudaGetErrorString(cudaGetLastError()))

#endif
