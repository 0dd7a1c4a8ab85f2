// cuda_measure.cu - CUDA devices, contexts, the f32 SwiGLU expert via cuBLAS
// and the measurements moe-profile takes of a GPU (cuda_measure.h).
// Every CUDA and cuBLAS call is checked and turned into a moe_status with
// the call, file and line in the message.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "cuda_measure.h"

struct moe_cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
};

extern "C" int moe_cuda_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

extern "C" moe_status moe_cuda_probe(int device, moe_dev_info *out) {
    int n = moe_cuda_count();
    if (device < 0 || device >= n)
        return moe_fail(MOE_ERR_NO_DEVICE, "no CUDA device %d (%d found)", device, n);
    if (!out) return MOE_OK;
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, device));
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    out->pci_domain = prop.pciDomainID;
    out->pci_bus = prop.pciBusID;
    out->pci_device = prop.pciDeviceID;
    SWITCH_TO(device);
    size_t free_b = 0, total_b = 0;
    CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
    out->free_bytes = free_b;
    out->total_bytes = total_b;
    return MOE_OK;
}

extern "C" moe_status moe_cuda_ctx_create(moe_cuda_ctx **out, int device) {
    if (!out) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cuda_ctx_create: out is NULL");
    *out = NULL;
    moe_status st = moe_cuda_probe(device, NULL);
    if (st != MOE_OK) return st;
    SWITCH_TO(device);
    moe_cuda_ctx *c = (moe_cuda_ctx *)calloc(1, sizeof *c);
    if (!c) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_cuda_ctx_create: allocation failed");
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

extern "C" void moe_cuda_ctx_free(moe_cuda_ctx **pc) {
    if (!pc || !*pc) return;
    moe_cuda_ctx *c = *pc;
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

extern "C" moe_status moe_cuda_expert_f32(moe_cuda_ctx *c, const float *gate, const float *up, const float *down,
                                         uint32_t hidden, uint32_t inter, uint32_t m, const float *x, float *y,
                                         float *scratch) {
    if (!c || !gate || !up || !down || !x || !y || !scratch)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cuda_expert_f32: NULL argument");
    if (hidden == 0 || inter == 0 || hidden > INT_MAX || inter > INT_MAX || m > INT_MAX)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cuda_expert_f32: shape %ux%u with m = %u (each 1..%d, m 0..%d)",
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

extern "C" moe_status moe_cuda_sync(moe_cuda_ctx *c) {
    if (!c) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cuda_sync: NULL context");
    SWITCH_TO(c->device);
    CUDA_OK(cudaStreamSynchronize(c->stream));
    return MOE_OK;
}

// ---- measurements -------------------------------------------------------
// Resources are released by a scope object, so every early return of a
// checked call frees what was allocated.

namespace {
struct bench_res {
    int device = 0;
    cudaStream_t stream = nullptr;
    cudaEvent_t a = nullptr, b = nullptr;
    void *dev = nullptr, *pinned = nullptr, *pageable = nullptr;
    moe_cuda_ctx *ctx = nullptr;
    ~bench_res() {
        device_guard g(device);
        if (stream) cudaStreamSynchronize(stream);
        if (a) cudaEventDestroy(a);
        if (b) cudaEventDestroy(b);
        if (dev) cudaFree(dev);
        if (pinned) cudaFreeHost(pinned);
        free(pageable);
        if (stream) cudaStreamDestroy(stream);
        if (ctx) moe_cuda_ctx_free(&ctx);
    }
};
} // namespace

__global__ void empty_kernel() {}

// Call with `device` current (SWITCH_TO), after bench_check.
static moe_status bench_check(int device, int reps, const void *out) {
    if (reps <= 0 || !out) return moe_fail(MOE_ERR_INVALID_ARG, "GPU measurement: reps %d, output %p", reps, out);
    return moe_cuda_probe(device, NULL);
}

static moe_status bench_open(bench_res &r, int device) {
    r.device = device;
    CUDA_OK(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
    CUDA_OK(cudaEventCreate(&r.a));
    CUDA_OK(cudaEventCreate(&r.b));
    return MOE_OK;
}

extern "C" moe_status moe_cuda_time_copy(int device, moe_dev_copy_kind kind, size_t bytes, int reps, double *gbps) {
    bench_res r;
    moe_status st = bench_check(device, reps, gbps);
    if (st != MOE_OK) return st;
    SWITCH_TO(device);
    if ((st = bench_open(r, device)) != MOE_OK) return st;
    if (bytes == 0) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cuda_time_copy: 0 bytes");
    CUDA_OK(cudaMalloc(&r.dev, bytes));
    void *host;
    if (kind == MOE_DEV_H2D_PAGEABLE) {
        if (!(r.pageable = malloc(bytes))) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_cuda_time_copy: %zu bytes", bytes);
        memset(r.pageable, 1, bytes); // pages present, as weights in host memory are
        host = r.pageable;
    } else {
        CUDA_OK(cudaMallocHost(&r.pinned, bytes));
        memset(r.pinned, 1, bytes);
        host = r.pinned;
    }
    const bool h2d = kind != MOE_DEV_D2H_PINNED;
    for (int i = -1; i < reps; i++) {
        CUDA_OK(cudaEventRecord(r.a, r.stream));
        CUDA_OK(h2d ? cudaMemcpyAsync(r.dev, host, bytes, cudaMemcpyHostToDevice, r.stream)
                    : cudaMemcpyAsync(host, r.dev, bytes, cudaMemcpyDeviceToHost, r.stream));
        CUDA_OK(cudaEventRecord(r.b, r.stream));
        CUDA_OK(cudaEventSynchronize(r.b));
        float ms = 0.0f;
        CUDA_OK(cudaEventElapsedTime(&ms, r.a, r.b));
        if (i >= 0) gbps[i] = ms > 0 ? (double)bytes / (ms * 1e6) : 0.0;
    }
    return MOE_OK;
}

extern "C" moe_status moe_cuda_time_launch(int device, int reps, double *launch_us, double *event_us) {
    bench_res r;
    moe_status st = bench_check(device, reps, launch_us);
    if (st != MOE_OK) return st;
    SWITCH_TO(device);
    if ((st = bench_open(r, device)) != MOE_OK) return st;
    if (!event_us) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cuda_time_launch: NULL output");
    for (int i = -1; i < reps; i++) {
        // Host clock: what the runtime waits from launching to seeing it done.
        double t0 = moe_now();
        empty_kernel<<<1, 1, 0, r.stream>>>();
        CUDA_OK(cudaGetLastError());
        CUDA_OK(cudaStreamSynchronize(r.stream));
        double t1 = moe_now();
        CUDA_OK(cudaEventRecord(r.a, r.stream));
        CUDA_OK(cudaEventSynchronize(r.a));
        double t2 = moe_now();
        if (i >= 0) launch_us[i] = (t1 - t0) * 1e6, event_us[i] = (t2 - t1) * 1e6;
    }
    return MOE_OK;
}

extern "C" moe_status moe_cuda_time_expert_f32(int device, uint32_t hidden, uint32_t inter, uint32_t m, int reps,
                                              double *us) {
    bench_res r;
    moe_status st = bench_check(device, reps, us);
    if (st != MOE_OK) return st;
    SWITCH_TO(device);
    if ((st = bench_open(r, device)) != MOE_OK) return st;
    if (!hidden || !inter || !m) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cuda_time_expert_f32: empty shape");
    if ((st = moe_cuda_ctx_create(&r.ctx, device)) != MOE_OK) return st;
    const size_t nw = (size_t)hidden * inter, nx = (size_t)m * hidden, ns = 2 * (size_t)m * inter;
    CUDA_OK(cudaMalloc(&r.dev, (3 * nw + 2 * nx + ns) * sizeof(float)));
    float *w = (float *)r.dev, *x = w + 3 * nw, *y = x + nx, *s = y + nx;
    CUDA_OK(cudaMemset(r.dev, 0, (3 * nw + 2 * nx + ns) * sizeof(float)));
    for (int i = -1; i < reps; i++) {
        CUDA_OK(cudaEventRecord(r.a, r.ctx->stream));
        if ((st = moe_cuda_expert_f32(r.ctx, w, w + nw, w + 2 * nw, hidden, inter, m, x, y, s)) != MOE_OK) return st;
        CUDA_OK(cudaEventRecord(r.b, r.ctx->stream));
        CUDA_OK(cudaEventSynchronize(r.b));
        float ms = 0.0f;
        CUDA_OK(cudaEventElapsedTime(&ms, r.a, r.b));
        if (i >= 0) us[i] = ms * 1e3;
    }
    return MOE_OK;
}
