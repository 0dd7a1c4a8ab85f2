/* gpu.h - what the runtime may ask of a GPU. Nothing outside gpu/ includes
 * CUDA headers; a build without CUDA links gpu/nocuda.c instead. */
#ifndef MOE_GPU_H
#define MOE_GPU_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_gpu_info {
    char name[256];
    int cc_major, cc_minor; /* compute capability */
    uint64_t total_bytes;
    uint64_t free_bytes;
    int pci_domain, pci_bus, pci_device;
} moe_gpu_info;

/* Usable CUDA devices: 0 without CUDA support, a driver, or a GPU. */
int moe_gpu_count(void);

/* Describes device `device`; MOE_ERR_NO_DEVICE when it does not exist or the
 * build has no CUDA. */
moe_status moe_gpu_probe(int device, moe_gpu_info *out);

/* A device, a compute stream and a cuBLAS handle. */
typedef struct moe_gpu_ctx moe_gpu_ctx;

moe_status moe_gpu_ctx_create(moe_gpu_ctx **out, int device);
void moe_gpu_ctx_free(moe_gpu_ctx **ctx);

/* Enqueues one f32 SwiGLU expert on the context's stream, all pointers in
 * device memory: y[m, hidden] = down(silu(gate x) * up x), gate and up
 * [inter, hidden] and down [hidden, inter] row-major; scratch holds
 * 2 * m * inter floats. */
moe_status moe_gpu_expert_f32(moe_gpu_ctx *ctx, const float *gate, const float *up, const float *down,
                              uint32_t hidden, uint32_t inter, uint32_t m, const float *x, float *y,
                              float *scratch);

/* Waits for everything enqueued on the context's stream. */
moe_status moe_gpu_sync(moe_gpu_ctx *ctx);

/* ---- measurements for the profiler (one sample per repetition) ---- */

typedef enum moe_gpu_copy_kind {
    MOE_GPU_H2D_PINNED,   /* host memory from cudaMallocHost to the device */
    MOE_GPU_H2D_PAGEABLE, /* ordinary malloc'd host memory to the device */
    MOE_GPU_D2H_PINNED,   /* the device to pinned host memory */
} moe_gpu_copy_kind;

/* `reps` copies of `bytes`, each timed with events around cudaMemcpyAsync
 * on a stream of its own (after one untimed copy): GB/s into gbps[]. */
moe_status moe_gpu_time_copy(int device, moe_gpu_copy_kind kind, size_t bytes, int reps, double *gbps);

/* `reps` samples of an empty kernel's launch-to-completion time and of an
 * event record + synchronize round trip, in microseconds. */
moe_status moe_gpu_time_launch(int device, int reps, double *launch_us, double *event_us);

/* `reps` calls of the f32 expert (moe_gpu_expert_f32) on m tokens with its
 * weights resident, each timed with events, in microseconds. */
moe_status moe_gpu_time_expert_f32(int device, uint32_t hidden, uint32_t inter, uint32_t m, int reps,
                                   double *us);

#ifdef __cplusplus
}
#endif

#endif
