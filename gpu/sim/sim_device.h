/* sim_device.h - a simulated GPU behind the device interface (gpu/device.h),
 * so the executor, the planner and moe-run run end to end on machines
 * without a GPU, in tests and with --device sim.
 *
 * Memory: the slots live in host memory, and an upload really copies the
 * expert's weights into its slot; a run computes from the slot, so an
 * executor that runs the wrong slot, or a slot whose upload failed, gets
 * wrong or refused results here as it would on a GPU.
 *
 * Compute: a run computes with a CPU engine of the simulator's own
 * (cpu/engine.h, compute_threads threads) prepared for each shape it
 * sees, so its results are those of the CPU-only runtime for the same
 * expert and tokens (bitwise, for an engine of the same kind: fast or
 * portable).
 *
 * Time: each stream keeps a modeled clock (microseconds since creation).
 * An operation starts at the latest of: its submission, the end of the
 * operation before it on its stream, and the end of the event it waits
 * for; it lasts
 *   upload  moe_profile_copy_us(expert bytes, pinned)
 *   run     moe_profile_gpu_run_us(shape, dtype, m): x in, the kernel,
 *           y out (a shape or dtype without a GPU curve costs the curve
 *           closest in weight bytes, scaled by the ratio of weight bytes)
 * from the profile's figures for GPU `gpu`, the same function the runtime's
 * scheduler plans with, so plan and device agree (a profile without GPU
 * curves cannot run experts: MOE_ERR_UNSUPPORTED at the run). With time_scale > 0
 * the worker thread of each stream also holds the operation's completion
 * until the wall clock reaches the modeled end (scaled), so overlap and
 * waiting behave as on the modeled machine; with time_scale = 0 nothing
 * waits and only the modeled clock advances (tests). When computing takes
 * longer than modeled, completion comes when computing ends; the modeled
 * times do not change. The interface's times() are seconds (device.h).
 *
 * Registered as device "sim" (moe_sim_reg): the runtime's simulated GPU
 * models the profile's GPU `index` on the host's clock with one compute
 * thread, and reads two variables of the environment:
 *   MOE_SIM_TIME_SCALE=S   time_scale (default 0: nothing waits)
 *   MOE_SIM_FAIL=alloc:N,upload:N,run:N,lost:N   the faults below (lost: fail_from)
 * so the runtime's fallbacks can be tested, and a host can test its own. */
#ifndef MOE_GPU_SIM_DEVICE_H
#define MOE_GPU_SIM_DEVICE_H

#include "device.h"
#include "profile.h"

typedef struct moe_simdev_params {
    const moe_profile *profile; /* its [gpu] and [link] figures; must outlive the device */
    int32_t gpu;                /* which of the profile's GPUs is modeled */
    uint64_t memory_bytes;      /* device memory; 0: the profile's free_bytes for that GPU */
    double time_scale;          /* wall seconds per modeled second: 1 real time, 0 never wait */
    /* With time_scale = 0: operations are submitted at the host clock's
     * time (as with time_scale 1) instead of at 0, so the modeled timeline
     * runs beside the host's, where the runtime's CPU work is, while
     * nothing waits for it. */
    bool host_clock;
    uint32_t compute_threads;   /* the engine that computes runs; 0 means 1 */
    bool portable;              /* compute with the portable kernels */
    /* Fault injection for tests: the n-th call (1-based) of alloc_slots
     * fails with MOE_ERR_OUT_OF_MEMORY, the n-th upload or run completes
     * with MOE_ERR_DEVICE (an upload that fails leaves its slot unusable
     * until a later upload succeeds); 0 never. */
    uint32_t fail_alloc_at, fail_upload_at, fail_run_at;
    /* From the n-th upload or run on (counted together), every one fails:
     * a device that is lost. 0 never. */
    uint32_t fail_from;
} moe_simdev_params;

enum { MOE_SIMDEV_COPY = 0, MOE_SIMDEV_COMPUTE = 1 };

/* MOE_ERR_UNSUPPORTED (naming what is missing) when the profile has no
 * such GPU or no host-to-device or device-to-host copy figures for it. */
moe_status moe_simdev_create(moe_dev **out, const moe_simdev_params *p);

/* Holds a stream before its next operation (hold true) or lets it go:
 * tests use it to order the two streams deterministically. */
void moe_simdev_hold(moe_dev *d, int stream, bool hold);

typedef struct moe_simdev_stats {
    uint64_t uploads, runs, failed; /* operations completed; failed among them */
    uint64_t bytes_uploaded;
    double copy_busy_s, compute_busy_s; /* modeled seconds each stream was busy */
    double end_s;                       /* modeled end of the last completed operation, seconds since creation */
} moe_simdev_stats;

void moe_simdev_get_stats(moe_dev *d, moe_simdev_stats *out);

extern const moe_dev_reg moe_sim_reg;

#endif
