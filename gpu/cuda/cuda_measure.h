/* cuda_measure.h - CUDA devices as the profiler sees them: how many there
 * are, what each is, and its measured figures (copy rates, launch
 * latency, the f32 expert on cuBLAS). The registry's CUDA entry
 * (gpu/cuda/cuda_device.cu) hands these to the profiler; nothing outside
 * gpu/cuda/ includes CUDA headers, and a build without CUDA has none of it. */
#ifndef MOE_GPU_CUDA_MEASURE_H
#define MOE_GPU_CUDA_MEASURE_H

#include "device.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Usable CUDA devices: 0 without a driver or a GPU. */
int moe_cuda_count(void);

/* Describes device `device`; MOE_ERR_NO_DEVICE when it does not exist. */
moe_status moe_cuda_probe(int device, moe_dev_info *out);

/* A device, a compute stream and a cuBLAS handle. */
typedef struct moe_cuda_ctx moe_cuda_ctx;

moe_status moe_cuda_ctx_create(moe_cuda_ctx **out, int device);
void moe_cuda_ctx_free(moe_cuda_ctx **ctx);

/* Enqueues one f32 SwiGLU expert on the context's stream, all pointers in
 * device memory: y[m, hidden] = down(silu(gate x) * up x), gate and up
 * [inter, hidden] and down [hidden, inter] row-major; scratch holds
 * 2 * m * inter floats. */
moe_status moe_cuda_expert_f32(moe_cuda_ctx *ctx, const float *gate, const float *up, const float *down,
                               uint32_t hidden, uint32_t inter, uint32_t m, const float *x, float *y,
                               float *scratch);

/* Waits for everything enqueued on the context's stream. */
moe_status moe_cuda_sync(moe_cuda_ctx *ctx);

/* ---- measurements for the profiler (one sample per repetition) ---- */

/* `reps` copies of `bytes`, each timed with events around cudaMemcpyAsync
 * on a stream of its own (after one untimed copy): GB/s into gbps[]. */
moe_status moe_cuda_time_copy(int device, moe_dev_copy_kind kind, size_t bytes, int reps, double *gbps);

/* `reps` samples of an empty kernel's launch-to-completion time and of an
 * event record + synchronize round trip, in microseconds. */
moe_status moe_cuda_time_launch(int device, int reps, double *launch_us, double *event_us);

/* `reps` calls of the f32 expert (moe_cuda_expert_f32) on m tokens with its
 * weights resident, each timed with events, in microseconds. */
moe_status moe_cuda_time_expert_f32(int device, uint32_t hidden, uint32_t inter, uint32_t m, int reps,
                                    double *us);

#ifdef __cplusplus
}
#endif

#endif
