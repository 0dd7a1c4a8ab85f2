/* device.h - the executor's view of a GPU: a table of operations plus a
 * context, as ggml's backends are, so the runtime drives the CUDA device
 * and the simulated one (gpu/sim/sim_device.h) through the same calls; and
 * the registry of device kinds the runtime resolves and creates devices
 * from (gpu/registry.c).
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
#include "quant.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_profile; /* profiles/profile.h */

typedef uint64_t moe_dev_event;

typedef struct moe_dev moe_dev;

/* What every device counts. */
typedef struct moe_dev_stats {
    uint64_t uploads, runs;  /* operations completed (those refused at submission are not counted) */
    uint64_t failed;         /* among them, those that completed with an error */
    uint64_t bytes_uploaded; /* expert bytes copied in by completed uploads */
} moe_dev_stats;

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
    /* When e's operation started and ended on its stream, in seconds:
     * measured with device events on a GPU, modeled on the simulated device.
     * On the host's clock (moe_now()) for a device that runs beside the host
     * (every device the runtime creates); a simulated device that only
     * models a timeline (time_scale 0 without host_clock) counts from 0 at
     * its creation instead. MOE_ERR_STATE while e is in flight,
     * MOE_ERR_INVALID_ARG for event 0 or one the device no longer
     * remembers (it remembers at least its last 1024 operations). */
    moe_status (*times)(moe_dev *d, moe_dev_event e, double *start_s, double *end_s);
    /* Waits for everything in flight, then frees the device. */
    void (*destroy)(moe_dev *d);
    /* Whether experts of weight dtype t can be uploaded and run. */
    bool (*supports)(const moe_dev *d, moe_dtype t);
    /* Counters since creation (moe_dev_stats). */
    void (*stats)(moe_dev *d, moe_dev_stats *out);
} moe_dev_iface;


/* Every implementation's context starts with this. */
struct moe_dev {
    const moe_dev_iface *iface;
};

/* Bytes a slot needs for one expert: the three matrices (gate and up in t,
 * down in down_t), and the row scales of int8 matrices. */
static inline size_t moe_dev_expert_bytes(uint32_t hidden, uint32_t inter, moe_dtype t, moe_dtype down_t) {
    size_t b = (size_t)moe_expert_weight_bytes(hidden, inter, t, down_t);
    if (t == MOE_DTYPE_I8) b += 2 * (size_t)inter * sizeof(float);
    if (down_t == MOE_DTYPE_I8) b += (size_t)hidden * sizeof(float);
    return b;
}

/* The same for an expert view. */
static inline size_t moe_dev_view_bytes(const moe_expert_view *w) {
    return moe_dev_expert_bytes(w->hidden, w->inter, w->dtype, moe_view_down(w));
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
static inline bool moe_dev_supports(const moe_dev *d, moe_dtype t) { return d->iface->supports(d, t); }
static inline void moe_dev_get_stats(moe_dev *d, moe_dev_stats *out) { d->iface->stats(d, out); }
/* Frees *d and sets it to NULL; NULL or *d == NULL is a no-op. */
static inline void moe_dev_free(moe_dev **d) {
    if (d && *d) (*d)->iface->destroy(*d);
    if (d) *d = NULL;
}


/* ---- the registry ------------------------------------------------------
 * Each kind of device registers an entry: its name, how many devices of
 * the kind this machine has, and how to create one. The runtime resolves
 * "auto" and named devices by walking the registry, and the profiler
 * describes and measures the physical ones through it. The simulated
 * device is always registered, CUDA only in a build with CUDA: there are
 * no stand-ins for a device the build lacks. */

/* A physical device as the profiler records it. */
typedef struct moe_dev_info {
    char name[256];
    int cc_major, cc_minor; /* compute capability */
    uint64_t total_bytes;
    uint64_t free_bytes;
    int pci_domain, pci_bus, pci_device;
} moe_dev_info;

/* What the runtime gives the device it creates; each kind takes what
 * applies to it. */
typedef struct moe_dev_params {
    int index;                  /* which device of the kind: a CUDA ordinal, the profile's GPU a simulation models */
    const struct moe_profile *profile; /* the runtime's profile (a modeled device's figures); outlives the device */
    /* The slot pool the runtime will allocate: a modeled device whose
     * profile gives no memory size models exactly this much. */
    uint64_t pool_bytes;
    uint64_t pin_limit_bytes;   /* host weight bytes a GPU may register for DMA; 0 = no limit */
    const moe_logger *log;      /* warnings; NULL: stderr */
    void *host_stream;          /* the host's CUDA stream (cudaStream_t) work must follow; NULL: none */
} moe_dev_params;

typedef enum moe_dev_copy_kind {
    MOE_DEV_H2D_PINNED,   /* page-locked host memory to the device */
    MOE_DEV_H2D_PAGEABLE, /* ordinary malloc'd host memory to the device */
    MOE_DEV_D2H_PINNED,   /* the device to page-locked host memory */
} moe_dev_copy_kind;

/* The profiler's measurements of a physical device, one sample per
 * repetition: copy rates in GB/s, launch and event round trips and the
 * f32 expert on m tokens with resident weights in microseconds. */
typedef struct moe_dev_measure {
    moe_status (*copy)(int index, moe_dev_copy_kind kind, size_t bytes, int reps, double *gbps);
    moe_status (*launch)(int index, int reps, double *launch_us, double *event_us);
    moe_status (*expert_f32)(int index, uint32_t hidden, uint32_t inter, uint32_t m, int reps, double *us);
} moe_dev_measure;

typedef struct moe_dev_reg {
    const char *name;     /* as moe_device_name() and --device spell it */
    moe_device_kind kind; /* the public API's value */
    const char *title;    /* for messages: "CUDA device", "simulated GPU" */
    /* Models a GPU from a profile's figures rather than being one: never
     * chosen by "auto", needs a profile with a GPU, counts no devices. */
    bool modeled;
    /* Devices of this kind on this machine; never fails (0 without a
     * driver). Modeled kinds: 0. */
    int (*count)(void);
    /* Describes device `index`: MOE_ERR_NO_DEVICE, with the reason, when
     * there is none. NULL for modeled kinds. */
    moe_status (*probe)(int index, moe_dev_info *out);
    moe_status (*create)(moe_dev **out, const moe_dev_params *p);
    const moe_dev_measure *measure; /* NULL for modeled kinds */
} moe_dev_reg;

/* The registered kinds, physical ones first: *out points at n entries. */
size_t moe_dev_registry(const moe_dev_reg *const **out);

/* The entry of `kind`, or NULL when this build has none (cpu and auto are
 * not devices; cuda without CUDA in the build). */
const moe_dev_reg *moe_dev_find(moe_device_kind kind);

#ifdef __cplusplus
}
#endif

#endif
