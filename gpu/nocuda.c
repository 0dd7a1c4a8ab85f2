/* nocuda.c - the GPU layer of a build without CUDA: no devices. */
#include "cudadev.h"
#include "gpu.h"

int moe_gpu_count(void) { return 0; }

moe_status moe_gpu_probe(int device, moe_gpu_info *out) {
    (void)device;
    (void)out;
    return moe_fail(MOE_ERR_NO_DEVICE, "this build has no CUDA support (configure with -DMOE_CUDA=ON)");
}

moe_status moe_gpu_ctx_create(moe_gpu_ctx **out, int device) {
    if (out) *out = NULL;
    return moe_gpu_probe(device, NULL);
}

void moe_gpu_ctx_free(moe_gpu_ctx **ctx) {
    if (ctx) *ctx = NULL;
}

moe_status moe_gpu_expert_f32(moe_gpu_ctx *ctx, const float *gate, const float *up, const float *down,
                              uint32_t hidden, uint32_t inter, uint32_t m, const float *x, float *y,
                              float *scratch) {
    (void)ctx, (void)gate, (void)up, (void)down, (void)hidden, (void)inter, (void)m, (void)x, (void)y,
        (void)scratch;
    return moe_gpu_probe(0, NULL);
}

moe_status moe_gpu_time_copy(int device, moe_gpu_copy_kind kind, size_t bytes, int reps, double *gbps) {
    (void)kind, (void)bytes, (void)reps, (void)gbps;
    return moe_gpu_probe(device, NULL);
}

moe_status moe_gpu_time_launch(int device, int reps, double *launch_us, double *event_us) {
    (void)reps, (void)launch_us, (void)event_us;
    return moe_gpu_probe(device, NULL);
}

moe_status moe_gpu_time_expert_f32(int device, uint32_t hidden, uint32_t inter, uint32_t m, int reps,
                                   double *us) {
    (void)hidden, (void)inter, (void)m, (void)reps, (void)us;
    return moe_gpu_probe(device, NULL);
}

moe_status moe_gpu_sync(moe_gpu_ctx *ctx) {
    (void)ctx;
    return moe_gpu_probe(0, NULL);
}

moe_status moe_cudadev_create(moe_dev **out, const moe_cudadev_params *p) {
    if (out) *out = NULL;
    return moe_gpu_probe(p ? p->device : 0, NULL);
}

void moe_cudadev_get_stats(moe_dev *d, moe_cudadev_stats *out) {
    (void)d;
    if (out) memset(out, 0, sizeof *out);
}
