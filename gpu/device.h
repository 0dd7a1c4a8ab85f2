/* device.h - the executor's view of a GPU: a table of operations plus a
 * context, as ggml's backends are, so the runtime drives the CUDA device
 * and the simulated one (gpu/sim/simdev.h) through the same calls.
 *
 * A device has a pool of expert slots in its memory and two in-order
 * streams: the copy stream carries expert uploads, the compute stream runs
 * experts. Every operation is asynchronous and returns an event; an
 * operation may wait for an event of the other stream (a run waits for the
 * upload of its expert), and the host waits for events. Events are
 * completion tickets: 0 is an event that has always completed.
 *
 * Hazards are the caller's to avoid, as on a GPU: an upload into a slot
 * whose last run has not completed, or a run that does not wait for its
 * slot's upload. The simulated device detects both and fails the
 * operation with MOE_ERR_INTERNAL (a bug in the executor), where a GPU
 * would silently compute garbage.
 *
 * Activations (x in, y out) are host buffers: a run copies x in, computes
 * and copies y back, all on the compute stream; both buffers must stay
 * valid and untouched until the run's event completes. */
#ifndef MOE_GPU_DEVICE_H
#define MOE_GPU_DEVICE_H

#include <stdbool.h>

#include "common.h"
#include "expert.h"

typedef uint64_t moe_dev_event;

typedef struct moe_dev moe_dev;

typedef struct moe_dev_iface {
    const char *name;
    /* Device memory for n_slots experts of slot_bytes each (bytes as
     * moe_dev_expert_bytes counts them), replacing any earlier pool after
     * waiting for every operation in flight. MOE_ERR_OUT_OF_MEMORY when the
     * device does not have it; the old pool is gone either way. */
    moe_status (*alloc_slots)(moe_dev *d, uint32_t n_slots, size_t slot_bytes);
    /* Bytes of device memory not yet in the pool. */
    uint64_t (*free_bytes)(const moe_dev *d);
    /* Copy stream: expert w's weights (and int8 row scales) into `slot`. */
    moe_status (*upload)(moe_dev *d, uint32_t slot, const moe_expert_view *w, moe_dev_event *done);
    /* Compute stream: once `after` has completed, y[m, hidden] = the
     * expert in `slot` applied to x[m, hidden]. m = 0 is a no-op that still
     * orders the stream. */
    moe_status (*run)(moe_dev *d, uint32_t slot, uint32_t m, const float *x, float *y, moe_dev_event after,
                      moe_dev_event *done);
    /* Blocks until e has completed: MOE_OK, or the error of the operation
     * behind e (a failed upload, a failed run), reported once per failure
     * here and in moe_last_error(). */
    moe_status (*wait)(moe_dev *d, moe_dev_event e);
    /* Whether e has completed; never blocks. */
    bool (*query)(moe_dev *d, moe_dev_event e);
    /* When e's operation started and ended on its stream, in seconds of
     * the host's clock (moe_now()): measured with device events on a GPU,
     * modeled on the simulated device. MOE_ERR_STATE while e is in flight,
     * MOE_ERR_INVALID_ARG for event 0 or one the device no longer
     * remembers (it remembers at least its last 1024 operations). */
    moe_status (*times)(moe_dev *d, moe_dev_event e, double *start_s, double *end_s);
    /* Waits for everything in flight, then frees the device. */
    void (*destroy)(moe_dev *d);
} moe_dev_iface;

/* Every implementation's context starts with this. */
struct moe_dev {
    const moe_dev_iface *iface;
};

/* Bytes a slot needs for one expert: the three matrices, and for int8 the
 * three row-scale arrays. */
static inline size_t moe_dev_expert_bytes(uint32_t hidden, uint32_t inter, moe_dtype t) {
    const size_t w = 3 * (size_t)hidden * inter * moe_dtype_size(t);
    return t == MOE_DTYPE_I8 ? w + (2 * (size_t)inter + hidden) * sizeof(float) : w;
}

static inline moe_status moe_dev_alloc_slots(moe_dev *d, uint32_t n, size_t bytes) {
    return d->iface->alloc_slots(d, n, bytes);
}
static inline uint64_t moe_dev_free_bytes(const moe_dev *d) { return d->iface->free_bytes(d); }
static inline moe_status moe_dev_upload(moe_dev *d, uint32_t slot, const moe_expert_view *w, moe_dev_event *done) {
    return d->iface->upload(d, slot, w, done);
}
static inline moe_status moe_dev_run(moe_dev *d, uint32_t slot, uint32_t m, const float *x, float *y,
                                     moe_dev_event after, moe_dev_event *done) {
    return d->iface->run(d, slot, m, x, y, after, done);
}
static inline moe_status moe_dev_wait(moe_dev *d, moe_dev_event e) { return d->iface->wait(d, e); }
static inline bool moe_dev_query(moe_dev *d, moe_dev_event e) { return d->iface->query(d, e); }
static inline moe_status moe_dev_times(moe_dev *d, moe_dev_event e, double *start_s, double *end_s) {
    return d->iface->times(d, e, start_s, end_s);
}
/* Frees *d and sets it to NULL; NULL or *d == NULL is a no-op. */
static inline void moe_dev_free(moe_dev **d) {
    if (d && *d) (*d)->iface->destroy(*d);
    if (d) *d = NULL;
}

#endif
