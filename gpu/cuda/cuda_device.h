/* cuda_device.h - a CUDA GPU behind the device interface (gpu/device.h).
 *
 * Memory: one device allocation holds the slot pool; each slot holds an
 * expert's gate and up matrices back to back (so one GEMM computes both),
 * then down (in a dtype of its own where the view says so), then the row
 * scales of the int8 matrices, each part 256-byte aligned. Block formats
 * are stored as the host holds them (moe_dtype_row_bytes per row).
 *
 * Host weights: an upload copies from the expert's host memory as given
 * (a memory-mapped file, or the host's own buffers). The first upload of
 * each tensor registers its pages with CUDA (cudaHostRegister, read-only
 * where the driver supports it) so copies are asynchronous DMA that
 * overlaps the host's work; pages that cannot be registered, or beyond
 * pin_limit_bytes, are copied from pageable memory (correct, slower, and
 * the host thread waits for the copy), with one warning. Registered host
 * memory must stay mapped until the device is destroyed (a runtime's
 * model outlives its device); it is unregistered then.
 *
 * Streams: a copy stream carries uploads, a compute stream runs experts
 * (cuBLAS on that stream). Each operation records a start and an end
 * event; a run waits on the compute stream for the event it is given
 * and for its slot's latest upload, and an upload waits on the copy
 * stream for its slot's latest run, so the executor's hazards cannot
 * corrupt a slot here either.
 *
 * Activations: a run copies x into a pinned staging ring on the host
 * thread, then host-to-device, computes, copies y back into the ring, and
 * a host function on the compute stream copies it into the caller's
 * buffer before the run's end event: y is in place when the event
 * completes. Where the ring would wrap onto a run still in flight, a
 * larger ring takes over (the old one is freed when the device is next
 * idle), so submitting never waits for the GPU.
 *
 * Times: each event's time is read against a clock reference recorded on
 * an idle stream of its own and tied to moe_now(); a new reference every
 * 2 s keeps float-millisecond event times precise to a microsecond.
 *
 * Experts: f32 weights compute in f32 (cublasGemmEx, no TF32); bf16 and
 * f16 weights with activations rounded to the weights' type and f32
 * accumulation; int8 weights are dequantized with their row scales into
 * bf16 on the device, then as bf16. GGUF's 13 block formats (common/quant.h)
 * at m <= MOE_CUDADEV_GEMV_MAX_M tokens: a GEMV kernel reads the blocks in
 * place and computes in f32 (gpu/cuda/quant_kernels.h); above it each
 * matrix is dequantized into bf16 on the device, then as bf16. Gate|up and
 * down each go their own way, so a down matrix in another dtype is fine. */
#ifndef MOE_GPU_CUDA_DEVICE_H
#define MOE_GPU_CUDA_DEVICE_H

#include "device.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_cudadev_params {
    int device;                /* CUDA device index */
    /* Device memory the slot pool may take; 0: the free memory less a
     * reserve for cuBLAS and the run scratch (max(512 MB, 5%)). */
    uint64_t memory_bytes;
    uint64_t pin_limit_bytes;  /* host weight bytes to register; 0 = no limit */
    const moe_logger *log;     /* warnings (pinning falling back); NULL: stderr */
    /* The host's stream (a cudaStream_t) or NULL: every run and upload
     * first waits, on the GPU, for what the host queued there before it. */
    void *host_stream;
} moe_cudadev_params;

/* Runs of at most this many tokens compute block-format matrices with the
 * decode GEMV (f32, from the blocks); larger ones dequantize to bf16 and
 * use cuBLAS. */
#define MOE_CUDADEV_GEMV_MAX_M 8

/* MOE_ERR_NO_DEVICE without a driver or that device. */
moe_status moe_cudadev_create(moe_dev **out, const moe_cudadev_params *p);

typedef struct moe_cudadev_stats {
    uint64_t uploads, runs;   /* accepted at submission */
    uint64_t failed;          /* operations seen to complete with an error */
    uint64_t bytes_uploaded;  /* expert bytes of the accepted uploads */
    uint64_t pinned_bytes;    /* host weight bytes registered for DMA */
    uint64_t pageable_bytes;  /* bytes uploaded from pageable memory */
    uint64_t pin_failures;    /* tensors that could not be registered */
} moe_cudadev_stats;

/* Zeros for a device that is not a CUDA device. */
void moe_cudadev_get_stats(moe_dev *d, moe_cudadev_stats *out);

/* For tests: rows x cols elements of block format t (rows of whole blocks,
 * as a slot holds them) decoded on CUDA device `device` by the kernels
 * runs use, synchronously, into host memory: f32, the values the decode
 * GEMV multiplies, and bf16 bits, what the dequantize kernel gives cuBLAS
 * (either may be NULL). Both must equal common/quant.c's dequantizer (and
 * its values rounded to nearest even) bit for bit. MOE_ERR_NO_DEVICE
 * without that device, MOE_ERR_UNSUPPORTED for a format not decoded. */
moe_status moe_cudadev_decode(int device, moe_dtype t, const void *blocks, uint32_t rows, uint32_t cols, float *f32,
                              uint16_t *bf16);

/* Registered as device "cuda" (a build with CUDA only). */
extern const moe_dev_reg moe_cuda_reg;

#ifdef __cplusplus
}
#endif

#endif
