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
    int pci_bus;
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

#ifdef __cplusplus
}
#endif

#endif
