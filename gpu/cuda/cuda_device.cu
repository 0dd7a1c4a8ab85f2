// cuda_device.cu - a CUDA GPU behind the device interface (see cuda_device.h).
// Every CUDA and cuBLAS call is checked; a failure at submission refuses
// the operation (the executor then runs the expert on the CPU), a failure
// while executing is the operation's event's error, reported by wait().
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "cuda_device.h"
#include "cuda_measure.h"
#include "quant_kernels.h"

namespace {

const uint32_t RING = 4096; // operations remembered (device.h promises at least 1024)
const uint32_t GENS = 4;    // clock references kept: an operation older than that has no times
const size_t ALIGN = 256;

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

enum { OP_UPLOAD, OP_RUN };

struct cudadev;

struct op {
    uint64_t seq; // 0: unused or refused at submission
    int kind;
    cudaEvent_t start, end;
    uint32_t gen;       // the clock reference its times are read against
    bool done;          // its end event has been seen complete
    cudaError_t err;    // how it completed
    bool reported;      // its failure was reported once (by wait)
    // A run: y goes from the staging ring to the caller in a host function
    // on the compute stream, before the end event.
    cudadev *dev;
    float *y_host;
    const char *y_src;
    size_t y_bytes;
    uint32_t stage_gen;  // which staging ring holds its activations
    size_t stage_off;    // its region there: [stage_off, stage_off + stage_len)
    size_t stage_len;
};

struct slot {
    moe_expert_view view; // device pointers; gate NULL: holds no expert
    uint64_t last_upload, last_run;
};

struct pin_range {
    uintptr_t lo, hi; // page-aligned
    bool pinned;      // registered (DMA-able), or not (copied from pageable memory)
    bool ours;        // registered by this device, which unregisters it
};

struct cudadev {
    moe_dev base;
    moe_cudadev_params p;
    moe_logger own_log;
    cudaStream_t copy, compute;
    cublasHandle_t blas;
    op *ops; // [RING]
    uint64_t next_seq;
    cudaEvent_t ref[GENS]; // clock references: generation g is ref[g % GENS]
    double ref_host[GENS];
    uint32_t gen;          // the current generation
    double rebased_at;
    // slots
    char *pool;
    size_t stride, slot_bytes;
    uint32_t n_slots;
    slot *slots;
    uint64_t limit; // bytes the pool may take
    // run scratch on the device (compute stream only)
    char *scratch;
    size_t scratch_bytes;
    // pinned staging ring for activations, and the runs holding regions of
    // it; rings outgrown while runs still used them, freed when idle
    char *stage;
    size_t stage_bytes, stage_head;
    uint32_t stage_gen;
    char *retired[64];
    uint32_t n_retired;
    cudaStream_t clock; // idle: clock references recorded on it complete at once
    cudaEvent_t host_ev; // recorded on the host's stream (p.host_stream) before each operation
    uint64_t *stage_fifo; // [RING]
    uint32_t sf_head, sf_tail;
    // host ranges registered (or refused), sorted by lo, disjoint
    pin_range *pins;
    size_t n_pins, cap_pins;
    bool warned_pageable;
    bool read_only_ok;
    moe_cudadev_stats stats;
};

// ---- kernels ----------------------------------------------------------

template <typename T> __device__ T from_f32(float v);
template <> __device__ float from_f32<float>(float v) { return v; }
template <> __device__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __half from_f32<__half>(float v) { return __float2half(v); }

template <typename T> __global__ void convert_kernel(const float *__restrict__ x, T *__restrict__ out, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(x[i]);
}

// gu is [m][2 * inter] (per token: gate outputs, then up outputs);
// h[t][i] = silu(gate) * up, in the type the down GEMM reads.
template <typename T>
__global__ void silu_mul_kernel(const float *__restrict__ gu, T *__restrict__ h, uint32_t inter, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / inter, j = i % inter;
        const float g = gu[t * 2 * inter + j], u = gu[t * 2 * inter + inter + j];
        h[i] = from_f32<T>(g / (1.0f + __expf(-g)) * u);
    }
}

// out[r][c] = w[r][c] * scale[r], bf16.
__global__ void dequant_kernel(const int8_t *__restrict__ w, const float *__restrict__ scale,
                               __nv_bfloat16 *__restrict__ out, uint32_t cols, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16((float)w[i] * scale[i / cols]);
}

unsigned grid_for(size_t n) {
    const size_t b = (n + 255) / 256;
    return b == 0 ? 1u : b > 65535 ? 65535u : (unsigned)b;
}

// ---- slot layout ----------------------------------------------------------

// Gate and up back to back (one GEMM, or one GEMV over 2 * inter rows,
// computes both: they share a dtype), then down in its own dtype, then
// the row scales of the int8 matrices. A block format's rows are
// moe_dtype_row_bytes bytes, so the sizes are moe_matrix_bytes. Three
// alignments pad less than the 4 * ALIGN each slot's stride adds.
struct layout {
    size_t gate_bytes, down_bytes;           // one of gate and up; down
    size_t down, scales, down_scale, end;    // offsets in the slot (gate at 0, up at gate_bytes)
};

layout layout_of(const moe_expert_view *w) {
    const moe_dtype tg = w->dtype, td = moe_view_down(w);
    layout l;
    l.gate_bytes = moe_matrix_bytes(tg, w->inter, w->hidden);
    l.down_bytes = moe_matrix_bytes(td, w->hidden, w->inter);
    l.down = align_up(2 * l.gate_bytes, ALIGN);
    l.scales = align_up(l.down + l.down_bytes, ALIGN);
    l.down_scale = align_up(l.scales + (tg == MOE_DTYPE_I8 ? 2 * (size_t)w->inter * sizeof(float) : 0), ALIGN);
    l.end = l.down_scale + (td == MOE_DTYPE_I8 ? (size_t)w->hidden * sizeof(float) : 0);
    return l;
}

// The weight dtypes a run computes: the element types through cuBLAS,
// int8 and the block formats dequantized to bf16 ahead of it, the block
// formats read in place by the GEMV at decode.
bool computes(moe_dtype t) {
    return t == MOE_DTYPE_F32 || t == MOE_DTYPE_BF16 || t == MOE_DTYPE_F16 || t == MOE_DTYPE_I8 || moe_cuq_supports(t);
}

// ---- operations and clock -------------------------------------------------

op *find(cudadev *d, uint64_t e) {
    op *o = &d->ops[e % RING];
    return e && o->seq == e ? o : NULL;
}

// The y of a run, from the pinned ring to the caller: a host function on
// the compute stream, after the device-to-host copy and before the end
// event, so y is in place when the event completes (no CUDA calls here).
void CUDART_CB deliver_y(void *arg) {
    const op *o = (const op *)arg;
    memcpy(o->y_host, o->y_src, o->y_bytes);
}

// Blocks until o is done and records how it completed; reports nothing.
void complete(op *o) {
    if (o->done) return;
    o->err = cudaEventSynchronize(o->end);
    o->done = true;
    if (o->err != cudaSuccess) (void)cudaGetLastError(), o->dev->stats.failed++;
}

// Whether o has completed, without blocking.
bool poll(op *o) {
    if (o->done) return true;
    const cudaError_t e = cudaEventQuery(o->end);
    if (e == cudaErrorNotReady) return (void)cudaGetLastError(), false;
    o->done = true;
    o->err = e;
    if (e != cudaSuccess) (void)cudaGetLastError(), o->dev->stats.failed++;
    return true;
}

// A ring entry for a new operation: the one it replaces completes first.
op *new_op(cudadev *d, int kind) {
    const uint64_t seq = d->next_seq++;
    op *o = &d->ops[seq % RING];
    if (o->seq) complete(o);
    o->kind = kind;
    o->gen = d->gen;
    o->done = false;
    o->err = cudaSuccess;
    o->reported = false;
    o->dev = d;
    o->y_host = NULL, o->y_src = NULL, o->y_bytes = 0;
    o->stage_gen = 0, o->stage_off = o->stage_len = 0;
    o->seq = seq;
    return o;
}

// Makes `stream` wait, on the GPU, for the work queued on the host's stream.
moe_status after_host(cudadev *d, cudaStream_t stream) {
    if (!d->p.host_stream) return MOE_OK;
    CUDA_OK(cudaEventRecord(d->host_ev, (cudaStream_t)d->p.host_stream));
    CUDA_OK(cudaStreamWaitEvent(stream, d->host_ev, 0));
    return MOE_OK;
}

// Waits on `stream` for event e of this device (nothing for 0 or a forgotten one).
moe_status stream_wait(cudadev *d, cudaStream_t stream, uint64_t e) {
    op *o = find(d, e);
    if (o) CUDA_OK(cudaStreamWaitEvent(stream, o->end, 0));
    return MOE_OK;
}

// A new clock reference every 2 s (event times are float milliseconds,
// which lose microseconds far from their reference), recorded on the idle
// clock stream so it completes at once whatever the other streams do.
void maybe_rebase(cudadev *d) {
    if (moe_now() - d->rebased_at < 2.0) return;
    const uint32_t g = d->gen + 1;
    for (uint32_t i = 0; i < RING; i++) // an operation whose reference would be overwritten loses its times
        if (d->ops[i].seq && g - d->ops[i].gen >= GENS && !d->ops[i].done) return;
    if (cudaEventRecord(d->ref[g % GENS], d->clock) != cudaSuccess ||
        cudaEventSynchronize(d->ref[g % GENS]) != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    d->ref_host[g % GENS] = moe_now();
    d->gen = g;
    d->rebased_at = d->ref_host[g % GENS];
}

// ---- host pages ---------------------------------------------------------

// The first range that ends after `at` (ranges are sorted and disjoint):
// the one holding `at` if its lo <= at, else the next one; n_pins if none.
size_t range_after(const cudadev *d, uintptr_t at) {
    size_t first = 0, n = d->n_pins;
    while (n) {
        const size_t half = n / 2;
        if (d->pins[first + half].hi <= at) first += half + 1, n -= half + 1;
        else n = half;
    }
    return first;
}

// Whether [lo, hi) is covered by registered ranges; *known: covered by
// ranges at all (registered or refused).
bool covered(const cudadev *d, uintptr_t lo, uintptr_t hi, bool *known) {
    uintptr_t at = lo;
    bool pinned = true;
    for (size_t i = range_after(d, lo); i < d->n_pins && at < hi; i++) {
        const pin_range *r = &d->pins[i];
        if (r->hi <= at) continue;
        if (r->lo > at) break;
        pinned = pinned && r->pinned;
        at = r->hi;
    }
    *known = at >= hi;
    return *known && pinned;
}

// Records a range; false when the bookkeeping cannot grow (the caller
// then undoes a registration it cannot remember).
bool add_range(cudadev *d, uintptr_t lo, uintptr_t hi, bool pinned, bool ours) {
    if (d->n_pins == d->cap_pins) {
        const size_t cap = d->cap_pins ? 2 * d->cap_pins : 256;
        pin_range *p = (pin_range *)realloc(d->pins, cap * sizeof *p);
        if (!p) return false;
        d->pins = p, d->cap_pins = cap;
    }
    size_t i = d->n_pins;
    while (i > 0 && d->pins[i - 1].lo > lo) d->pins[i] = d->pins[i - 1], i--;
    d->pins[i].lo = lo, d->pins[i].hi = hi, d->pins[i].pinned = pinned, d->pins[i].ours = ours;
    d->n_pins++;
    return true;
}

// Registers the pages of [p, p + bytes) not yet known, as ranges of their
// own (neighbouring tensors share pages, so a tensor may span several).
void ensure_pinned(cudadev *d, const void *p, size_t bytes) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = (uintptr_t)p / page * page, hi = ((uintptr_t)p + bytes + page - 1) / page * page;
    bool known;
    (void)covered(d, lo, hi, &known);
    if (known) return;
    uintptr_t at = lo;
    while (at < hi) {
        const size_t i = range_after(d, at);
        if (i < d->n_pins && d->pins[i].lo <= at) { /* known pages: past them */
            at = d->pins[i].hi;
            continue;
        }
        const uintptr_t gap_hi = i < d->n_pins && d->pins[i].lo < hi ? d->pins[i].lo : hi;
        const size_t len = gap_hi - at;
        bool ok = d->p.pin_limit_bytes == 0 || d->stats.pinned_bytes + len <= d->p.pin_limit_bytes;
        bool ours = false; // registered by this call (so ours to unregister)
        if (ok) {
            cudaError_t e = cudaErrorNotSupported;
            if (d->read_only_ok) e = cudaHostRegister((void *)at, len, cudaHostRegisterPortable | cudaHostRegisterReadOnly);
            if (e != cudaSuccess && e != cudaErrorHostMemoryAlreadyRegistered) {
                (void)cudaGetLastError();
                e = cudaHostRegister((void *)at, len, cudaHostRegisterPortable);
            }
            // Already registered (by another device on the same model): pinned, not ours.
            ok = e == cudaSuccess || e == cudaErrorHostMemoryAlreadyRegistered;
            ours = e == cudaSuccess;
            if (e != cudaSuccess) (void)cudaGetLastError();
            if (!ok) d->stats.pin_failures++;
        }
        if (!add_range(d, at, gap_hi, ok, ours)) {
            if (ours) (void)cudaHostUnregister((void *)at);
            return; // unknown pages are copied from pageable memory
        }
        if (ours) d->stats.pinned_bytes += len;
        at = gap_hi;
    }
}

// One host-to-device copy, split where the source changes registration:
// a copy may not span registered and unregistered memory (nor, to be
// safe, two registrations). Pageable pieces are counted and warned about.
moe_status put(cudadev *d, char *dst, const void *src, size_t bytes) {
    const uintptr_t lo = (uintptr_t)src, hi = lo + bytes;
    uintptr_t at = lo;
    while (at < hi) {
        uintptr_t end = hi;
        bool pinned = false;
        const size_t first = range_after(d, at); // the range holding at, if any
        if (first < d->n_pins && d->pins[first].lo <= at) {
            pinned = d->pins[first].pinned;
            if (d->pins[first].hi < end) end = d->pins[first].hi;
        } else if (first < d->n_pins && d->pins[first].lo < end) {
            end = d->pins[first].lo; // unknown pages up to the next range
        }
        if (!pinned) {
            d->stats.pageable_bytes += end - at;
            if (!d->warned_pageable) {
                d->warned_pageable = true;
                moe_log(d->p.log, MOE_LOG_WARN, "CUDA device: host weights could not all be pinned (%s); those are "
                        "copied from pageable memory, more slowly and without overlap",
                        d->p.pin_limit_bytes ? "registration failed or the pinned-memory limit was reached"
                                             : "registration failed");
            }
        }
        CUDA_OK(cudaMemcpyAsync(dst + (at - lo), (const void *)at, end - at, cudaMemcpyHostToDevice, d->copy));
        at = end;
    }
    return MOE_OK;
}

// ---- staging ring -------------------------------------------------------

bool overlaps(size_t a, size_t alen, size_t b, size_t blen) { return a < b + blen && b < a + alen; }

// A new ring of at least `len` bytes; the old one is retired (freed when
// the device is idle: alloc_slots or destroy), so runs using it go on.
moe_status stage_grow(cudadev *d, size_t len) {
    size_t want = 2 * d->stage_bytes;
    if (want < 2 * len) want = 2 * len;
    if (want < ((size_t)16 << 20)) want = (size_t)16 << 20;
    char *fresh = NULL;
    const cudaError_t e = cudaMallocHost((void **)&fresh, want);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "CUDA device: %zu bytes of pinned staging: %s", want, cudaGetErrorString(e));
    }
    if (d->stage) {
        if (d->n_retired == sizeof d->retired / sizeof d->retired[0]) { // cannot happen: rings double
            cudaFreeHost(fresh);
            return moe_fail(MOE_ERR_OUT_OF_MEMORY, "CUDA device: too many staging rings");
        }
        d->retired[d->n_retired++] = d->stage;
    }
    d->stage = fresh, d->stage_bytes = want, d->stage_head = 0, d->stage_gen++;
    return MOE_OK;
}

// A region of `len` bytes of the pinned ring that no run in flight uses;
// where the ring would wrap onto one, a larger ring instead of waiting.
moe_status stage_take(cudadev *d, size_t len, size_t *off) {
    moe_status st;
    if (len > d->stage_bytes && (st = stage_grow(d, len)) != MOE_OK) return st;
    while (d->sf_head != d->sf_tail) { // forget the completed ones at the front
        op *o = find(d, d->stage_fifo[d->sf_head % RING]);
        if (o && !poll(o)) break;
        d->sf_head++;
    }
    size_t at = align_up(d->stage_head, ALIGN);
    if (at + len > d->stage_bytes) at = 0;
    for (uint32_t i = d->sf_head; i != d->sf_tail; i++) {
        op *o = find(d, d->stage_fifo[i % RING]);
        if (o && o->stage_gen == d->stage_gen && overlaps(at, len, o->stage_off, o->stage_len) && !poll(o)) {
            if ((st = stage_grow(d, len)) != MOE_OK) return st;
            at = 0;
            break;
        }
    }
    if (d->sf_tail - d->sf_head >= RING) { // at most RING operations exist
        op *o = find(d, d->stage_fifo[d->sf_head % RING]);
        if (o) complete(o);
        d->sf_head++;
    }
    *off = at;
    d->stage_head = at + len;
    return MOE_OK;
}

void free_retired(cudadev *d) {
    for (uint32_t i = 0; i < d->n_retired; i++) cudaFreeHost(d->retired[i]);
    d->n_retired = 0;
}

// ---- the interface ------------------------------------------------------

moe_status cu_alloc_slots(moe_dev *dev, uint32_t n, size_t bytes) {
    cudadev *d = (cudadev *)dev;
    device_guard g(d->p.device);
    (void)cudaStreamSynchronize(d->copy);
    (void)cudaStreamSynchronize(d->compute);
    for (uint32_t i = 0; i < RING; i++)
        if (d->ops[i].seq) complete(&d->ops[i]); // their errors stay for wait()
    (void)cudaGetLastError();
    free_retired(d);
    if (d->pool) cudaFree(d->pool);
    d->pool = NULL;
    free(d->slots);
    d->slots = NULL;
    d->n_slots = 0, d->stride = 0, d->slot_bytes = 0;
    if (n == 0) return MOE_OK;
    if (bytes == 0) return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: %u slots of 0 bytes", n);
    const size_t stride = align_up(bytes + 4 * ALIGN, ALIGN); // room for the parts' alignment
    if (stride > d->limit / n)
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "CUDA device %d: %u slots of %zu bytes exceed the %llu bytes the pool may take",
                        d->p.device, n, bytes, (unsigned long long)d->limit);
    d->slots = (slot *)calloc(n, sizeof *d->slots);
    if (!d->slots) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "CUDA device: host allocation failed");
    const cudaError_t e = cudaMalloc((void **)&d->pool, (size_t)n * stride);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        free(d->slots);
        d->slots = NULL, d->pool = NULL;
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "CUDA device %d: cudaMalloc of %u slots x %zu bytes: %s", d->p.device, n,
                        stride, cudaGetErrorString(e));
    }
    d->n_slots = n, d->stride = stride, d->slot_bytes = bytes;
    return MOE_OK;
}

uint64_t cu_free_bytes(const moe_dev *dev) {
    const cudadev *d = (const cudadev *)dev;
    device_guard g(d->p.device);
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return (void)cudaGetLastError(), 0;
    return free_b;
}

moe_status check_view(const cudadev *d, uint32_t s, const moe_expert_view *w) {
    if (s >= d->n_slots) return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: slot %u of %u", s, d->n_slots);
    if (!w || !w->gate || !w->up || !w->down || !w->hidden || !w->inter || w->hidden > INT_MAX / 2 ||
        w->inter > INT_MAX / 2 || (unsigned)w->dtype >= MOE_DTYPE_COUNT_ ||
        (unsigned)moe_view_down(w) >= MOE_DTYPE_COUNT_ ||
        (w->dtype == MOE_DTYPE_I8 && (!w->gate_scale || !w->up_scale)) ||
        (moe_view_down(w) == MOE_DTYPE_I8 && !w->down_scale))
        return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: an incomplete expert view");
    const moe_dtype td = moe_view_down(w);
    if (!computes(w->dtype) || !computes(td))
        return moe_fail(MOE_ERR_UNSUPPORTED, "CUDA device: experts in %s", moe_dtype_name(computes(td) ? w->dtype : td));
    if (!moe_dev_view_bytes(w))
        return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: a %ux%u %s expert (down %s) has rows of partial blocks",
                        w->hidden, w->inter, moe_dtype_name(w->dtype), moe_dtype_name(td));
    const layout l = layout_of(w);
    if (moe_dev_view_bytes(w) > d->slot_bytes || l.end > d->stride)
        return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: a %ux%u %s expert (down %s) does not fit a %zu-byte slot",
                        w->hidden, w->inter, moe_dtype_name(w->dtype), moe_dtype_name(td), d->slot_bytes);
    return MOE_OK;
}

moe_status cu_upload(moe_dev *dev, uint32_t s, const moe_expert_view *w, moe_dev_event *done) {
    cudadev *d = (cudadev *)dev;
    if (!done) return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: upload without an event to return");
    *done = 0;
    moe_status st = check_view(d, s, w);
    if (st != MOE_OK) return st;
    device_guard g(d->p.device);
    (void)cudaGetLastError(); // nothing stale refuses this operation
    slot *sl = &d->slots[s];
    sl->view.gate = NULL; // until this upload has been submitted whole
    if ((st = stream_wait(d, d->copy, sl->last_run)) != MOE_OK || (st = after_host(d, d->copy)) != MOE_OK) return st;
    const layout l = layout_of(w);
    const bool gate_i8 = w->dtype == MOE_DTYPE_I8, down_i8 = moe_view_down(w) == MOE_DTYPE_I8;
    const size_t is = (size_t)w->inter * sizeof(float), hs = (size_t)w->hidden * sizeof(float);
    char *base = d->pool + (size_t)s * d->stride;
    // The parts: the three matrices, then the int8 ones' row scales.
    const void *src[6] = {w->gate, w->up, w->down};
    char *dst[6] = {base, base + l.gate_bytes, base + l.down};
    size_t len[6] = {l.gate_bytes, l.gate_bytes, l.down_bytes};
    int parts = 3;
    if (gate_i8) {
        src[parts] = w->gate_scale, dst[parts] = base + l.scales, len[parts++] = is;
        src[parts] = w->up_scale, dst[parts] = base + l.scales + is, len[parts++] = is;
    }
    if (down_i8) src[parts] = w->down_scale, dst[parts] = base + l.down_scale, len[parts++] = hs;
    // Registered first, so the copy's times hold only the copy.
    for (int i = 0; i < parts; i++) ensure_pinned(d, src[i], len[i]);
    op *o = new_op(d, OP_UPLOAD);
    cudaError_t e = cudaEventRecord(o->start, d->copy);
    if (e != cudaSuccess) return o->seq = 0, CUDA_FAIL(cudaEventRecord, e);
    for (int i = 0; i < parts; i++)
        if ((st = put(d, dst[i], src[i], len[i])) != MOE_OK) return o->seq = 0, st;
    e = cudaEventRecord(o->end, d->copy);
    if (e != cudaSuccess) return o->seq = 0, CUDA_FAIL(cudaEventRecord, e);
    moe_expert_view v = *w;
    v.gate = base;
    v.up = base + l.gate_bytes;
    v.down = base + l.down;
    v.gate_scale = gate_i8 ? (const float *)(base + l.scales) : NULL;
    v.up_scale = gate_i8 ? (const float *)(base + l.scales) + w->inter : NULL;
    v.down_scale = down_i8 ? (const float *)(base + l.down_scale) : NULL;
    sl->view = v;
    sl->last_upload = o->seq;
    d->stats.uploads++;
    for (int i = 0; i < parts; i++) d->stats.bytes_uploaded += len[i];
    *done = o->seq;
    return MOE_OK;
}

static_assert(MOE_CUDADEV_GEMV_MAX_M <= MOE_QB_MAX_M, "the GEMV's accumulators hold MOE_QB_MAX_M tokens");

// How a run computes with one matrix of dtype t on m tokens.
struct mat_plan {
    bool gemv;       // a block format at decode: the GEMV reads its blocks in place
    bool dequant;    // int8, or a block format above the GEMV's m: to bf16 in the scratch first
    cudaDataType wt; // otherwise the GEMM's type, of the weights and of its input
    size_t in_el;    // bytes per element of the input it reads (x or h)
};

mat_plan plan_of(moe_dtype t, uint32_t m) {
    mat_plan p = {false, false, CUDA_R_16BF, 2};
    if (t == MOE_DTYPE_F32) p.wt = CUDA_R_32F, p.in_el = 4;
    else if (t == MOE_DTYPE_F16) p.wt = CUDA_R_16F;
    else if (t == MOE_DTYPE_I8) p.dequant = true;
    else if (moe_dtype_is_block(t) && m <= MOE_CUDADEV_GEMV_MAX_M) p.gemv = true, p.in_el = 4;
    else if (moe_dtype_is_block(t)) p.dequant = true;
    return p;
}

// A run's buffers in the device scratch: x and y (f32), x in the gate/up
// GEMM's type, the gate|up outputs (f32), h in the type down reads, and
// the dequantized bf16 weights of gate|up and of down where they need it.
struct run_bufs {
    char *x, *xt, *gu, *h, *y, *wgu, *wd;
};

moe_status scratch_for(cudadev *d, const moe_expert_view *w, uint32_t m, run_bufs *b) {
    const size_t H = w->hidden, I = w->inter;
    const mat_plan pg = plan_of(w->dtype, m), pd = plan_of(moe_view_down(w), m);
    size_t off = 0;
    const size_t ox = off; off = align_up(off + m * H * 4, ALIGN);
    const size_t oxt = off; off = align_up(off + m * H * pg.in_el, ALIGN);
    const size_t ogu = off; off = align_up(off + m * 2 * I * 4, ALIGN);
    const size_t oh = off; off = align_up(off + m * I * pd.in_el, ALIGN);
    const size_t oy = off; off = align_up(off + m * H * 4, ALIGN);
    const size_t owgu = off; off = align_up(off + (pg.dequant ? 2 * H * I * 2 : 0), ALIGN);
    const size_t owd = off; off = align_up(off + (pd.dequant ? H * I * 2 : 0), ALIGN);
    if (off > d->scratch_bytes) {
        CUDA_OK(cudaStreamSynchronize(d->compute)); // the old scratch may be in use
        if (d->scratch) cudaFree(d->scratch);
        d->scratch = NULL, d->scratch_bytes = 0;
        const size_t want = off + off / 2;
        const cudaError_t e = cudaMalloc((void **)&d->scratch, want);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            return moe_fail(MOE_ERR_OUT_OF_MEMORY, "CUDA device %d: %zu bytes of run scratch: %s", d->p.device, want,
                            cudaGetErrorString(e));
        }
        d->scratch_bytes = want;
    }
    char *s = d->scratch;
    *b = run_bufs{s + ox, s + oxt, s + ogu, s + oh, s + oy, s + owgu, s + owd};
    return MOE_OK;
}

// Enqueues out (bf16 [rows][cols]) = matrix w of dtype t (int8 with its
// row scales, or a block format) on the compute stream.
moe_status to_bf16(cudadev *d, moe_dtype t, const void *w, const float *scale, uint32_t rows, uint32_t cols, char *out) {
    if (t == MOE_DTYPE_I8) {
        const size_t n = (size_t)rows * cols;
        dequant_kernel<<<grid_for(n), 256, 0, d->compute>>>((const int8_t *)w, scale, (__nv_bfloat16 *)out, cols, n);
        CUDA_OK(cudaGetLastError());
        return MOE_OK;
    }
    CUDA_OK(moe_cuq_dequant_bf16(t, w, rows, cols, out, d->compute));
    return MOE_OK;
}

// Enqueues x (f32, n elements) in the GEMM type wt: into xt, or x itself for f32.
moe_status gemm_input(cudadev *d, cudaDataType wt, const char *x, char *xt, size_t n, const void **in) {
    if (wt == CUDA_R_16BF)
        convert_kernel<__nv_bfloat16><<<grid_for(n), 256, 0, d->compute>>>((const float *)x, (__nv_bfloat16 *)xt, n);
    else if (wt == CUDA_R_16F)
        convert_kernel<__half><<<grid_for(n), 256, 0, d->compute>>>((const float *)x, (__half *)xt, n);
    CUDA_OK(cudaGetLastError());
    *in = wt == CUDA_R_32F ? (const void *)x : (const void *)xt;
    return MOE_OK;
}

// Enqueues y = expert(x) on the compute stream, all in device memory.
// Each of gate|up and down goes its own way (mat_plan): the GEMV on its
// blocks at decode, or cuBLAS in f32, f16 or bf16 (int8 and block formats
// dequantized to bf16 first). The f32 output rows are the same either way.
moe_status expert(cudadev *d, const moe_expert_view *w, uint32_t m, const run_bufs &b) {
    const uint32_t H = w->hidden, I = w->inter;
    const moe_dtype tg = w->dtype, td = moe_view_down(w);
    const mat_plan pg = plan_of(tg, m), pd = plan_of(td, m);
    const size_t nh = (size_t)m * I;
    const float one = 1.0f, zero = 0.0f;
    moe_status st;
    // gate and up are back to back in the slot: one matrix of 2I rows of H.
    if (pg.gemv) {
        CUDA_OK(moe_cuq_gemv(tg, w->gate, 2 * I, H, (const float *)b.x, m, (float *)b.gu, d->compute));
    } else {
        const void *wgu = w->gate, *in = NULL;
        if (pg.dequant && (st = to_bf16(d, tg, w->gate, w->gate_scale, 2 * I, H, b.wgu)) != MOE_OK) return st;
        if (pg.dequant) wgu = b.wgu;
        if ((st = gemm_input(d, pg.wt, b.x, b.xt, (size_t)m * H, &in)) != MOE_OK) return st;
        // Row-major W[r][c] is column-major W^T: GU^T[2I, m] = Wgu[2I, H] * X^T[H, m].
        CUBLAS_OK(cublasGemmEx(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)(2 * I), (int)m, (int)H, &one, wgu, pg.wt,
                              (int)H, in, pg.wt, (int)H, &zero, b.gu, CUDA_R_32F, (int)(2 * I), CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    }
    // h = silu(gate) * up, in the type the down matrix's path reads.
    if (pd.in_el == 4)
        silu_mul_kernel<float><<<grid_for(nh), 256, 0, d->compute>>>((const float *)b.gu, (float *)b.h, I, nh);
    else if (pd.wt == CUDA_R_16F)
        silu_mul_kernel<__half><<<grid_for(nh), 256, 0, d->compute>>>((const float *)b.gu, (__half *)b.h, I, nh);
    else
        silu_mul_kernel<__nv_bfloat16><<<grid_for(nh), 256, 0, d->compute>>>((const float *)b.gu, (__nv_bfloat16 *)b.h,
                                                                             I, nh);
    CUDA_OK(cudaGetLastError());
    if (pd.gemv) {
        CUDA_OK(moe_cuq_gemv(td, w->down, H, I, (const float *)b.h, m, (float *)b.y, d->compute));
        return MOE_OK;
    }
    const void *wd = w->down;
    if (pd.dequant && (st = to_bf16(d, td, w->down, w->down_scale, H, I, b.wd)) != MOE_OK) return st;
    if (pd.dequant) wd = b.wd;
    // Y^T[H, m] = Wd[H, I] * H^T[I, m].
    CUBLAS_OK(cublasGemmEx(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)H, (int)m, (int)I, &one, wd, pd.wt, (int)I, b.h,
                          pd.wt, (int)I, &zero, b.y, CUDA_R_32F, (int)H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return MOE_OK;
}

moe_status cu_run(moe_dev *dev, uint32_t s, uint32_t m, const float *x, float *y, moe_dev_event after,
                  moe_dev_event *done) {
    cudadev *d = (cudadev *)dev;
    if (!done) return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: run without an event to return");
    *done = 0;
    if (s >= d->n_slots) return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: slot %u of %u", s, d->n_slots);
    slot *sl = &d->slots[s];
    if (m && (!x || !y)) return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: run with NULL activations");
    if (m && !sl->view.gate)
        return moe_fail(MOE_ERR_STATE, "CUDA device: slot %u holds no expert (its upload failed or never came)", s);
    if (m > INT_MAX / 2 || (m && (size_t)m * sl->view.hidden > (size_t)INT_MAX))
        return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: %u tokens is too many for one run", m);
    device_guard g(d->p.device);
    (void)cudaGetLastError(); // nothing stale refuses this operation
    moe_status st;
    if ((st = stream_wait(d, d->compute, after)) != MOE_OK || (st = stream_wait(d, d->compute, sl->last_upload)) != MOE_OK ||
        (st = after_host(d, d->compute)) != MOE_OK)
        return st;
    const size_t act = (size_t)m * sl->view.hidden * sizeof(float);
    size_t off = 0;
    run_bufs b = {};
    if (m && ((st = stage_take(d, 2 * align_up(act, ALIGN), &off)) != MOE_OK ||
              (st = scratch_for(d, &sl->view, m, &b)) != MOE_OK))
        return st;
    op *o = new_op(d, OP_RUN);
    if (m) memcpy(d->stage + off, x, act);
    cudaError_t e = cudaEventRecord(o->start, d->compute);
    if (e == cudaSuccess && m) e = cudaMemcpyAsync(b.x, d->stage + off, act, cudaMemcpyHostToDevice, d->compute);
    if (e != cudaSuccess) return o->seq = 0, CUDA_FAIL(cudaMemcpyAsync, e);
    if (m && (st = expert(d, &sl->view, m, b)) != MOE_OK) return o->seq = 0, st;
    const size_t yoff = off + align_up(act, ALIGN);
    o->y_host = y, o->y_src = d->stage + yoff, o->y_bytes = m ? act : 0;
    o->stage_gen = d->stage_gen, o->stage_off = off, o->stage_len = m ? 2 * align_up(act, ALIGN) : 0;
    if (m) e = cudaMemcpyAsync(d->stage + yoff, b.y, act, cudaMemcpyDeviceToHost, d->compute);
    if (e == cudaSuccess && m) e = cudaLaunchHostFunc(d->compute, deliver_y, o);
    if (e == cudaSuccess) e = cudaEventRecord(o->end, d->compute);
    if (e != cudaSuccess) return o->seq = 0, CUDA_FAIL(cudaLaunchHostFunc, e);
    if (m) d->stage_fifo[d->sf_tail++ % RING] = o->seq;
    sl->last_run = o->seq;
    d->stats.runs++;
    *done = o->seq;
    return MOE_OK;
}

// An event this device never issued (beyond the last one) is refused, as
// the simulated device does; 0 and forgotten ones have completed.
moe_status cu_wait(moe_dev *dev, moe_dev_event e) {
    cudadev *d = (cudadev *)dev;
    if (e >= d->next_seq)
        return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: event %llu was never issued", (unsigned long long)e);
    op *o = find(d, e);
    if (!o) return MOE_OK;
    device_guard g(d->p.device);
    complete(o);
    maybe_rebase(d);
    if (o->err == cudaSuccess || o->reported) return MOE_OK;
    o->reported = true;
    return moe_fail(MOE_ERR_DEVICE, "CUDA device: %s (event %llu) failed: %s", o->kind == OP_RUN ? "expert run" : "copy",
                    (unsigned long long)o->seq, cudaGetErrorString(o->err));
}

bool cu_query(moe_dev *dev, moe_dev_event e) {
    cudadev *d = (cudadev *)dev;
    op *o = find(d, e);
    if (!o) return true;
    device_guard g(d->p.device);
    return poll(o); // an error completes it too; wait() reports it
}

moe_status cu_times(moe_dev *dev, moe_dev_event e, double *start_s, double *end_s) {
    cudadev *d = (cudadev *)dev;
    op *o = find(d, e);
    if (!o || !start_s || !end_s || d->gen - o->gen >= GENS)
        return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: event %llu is not one it remembers", (unsigned long long)e);
    device_guard g(d->p.device);
    if (!poll(o)) return moe_fail(MOE_ERR_STATE, "CUDA device: event %llu is in flight", (unsigned long long)e);
    float a = 0.0f, b = 0.0f;
    cudaError_t x = cudaEventElapsedTime(&a, d->ref[o->gen % GENS], o->start);
    if (x == cudaSuccess) x = cudaEventElapsedTime(&b, o->start, o->end);
    if (x != cudaSuccess) {
        (void)cudaGetLastError();
        return moe_fail(MOE_ERR_INVALID_ARG, "CUDA device: no times for event %llu: %s", (unsigned long long)e,
                        cudaGetErrorString(x));
    }
    *start_s = d->ref_host[o->gen % GENS] + a * 1e-3;
    *end_s = *start_s + b * 1e-3;
    return MOE_OK;
}

void cu_destroy(moe_dev *dev) {
    cudadev *d = (cudadev *)dev;
    {
        device_guard g(d->p.device);
        if (d->copy) (void)cudaStreamSynchronize(d->copy);
        if (d->compute) (void)cudaStreamSynchronize(d->compute);
        for (uint32_t i = 0; d->ops && i < RING; i++) {
            if (d->ops[i].start) cudaEventDestroy(d->ops[i].start);
            if (d->ops[i].end) cudaEventDestroy(d->ops[i].end);
        }
        for (uint32_t i = 0; i < GENS; i++)
            if (d->ref[i]) cudaEventDestroy(d->ref[i]);
        if (d->host_ev) cudaEventDestroy(d->host_ev);
        for (size_t i = 0; i < d->n_pins; i++)
            if (d->pins[i].ours) (void)cudaHostUnregister((void *)d->pins[i].lo);
        if (d->pool) cudaFree(d->pool);
        if (d->scratch) cudaFree(d->scratch);
        if (d->stage) cudaFreeHost(d->stage);
        free_retired(d);
        if (d->clock) cudaStreamDestroy(d->clock);
        if (d->blas) cublasDestroy(d->blas);
        if (d->copy) cudaStreamDestroy(d->copy);
        if (d->compute) cudaStreamDestroy(d->compute);
        (void)cudaGetLastError();
    }
    free(d->ops);
    free(d->slots);
    free(d->pins);
    free(d->stage_fifo);
    free(d);
}

bool cu_supports(const moe_dev *, moe_dtype t) { return computes(t); }

void cu_stats(moe_dev *dev, moe_dev_stats *out) {
    const moe_cudadev_stats &s = ((cudadev *)dev)->stats;
    *out = moe_dev_stats{s.uploads, s.runs, s.failed, s.bytes_uploaded};
}

const moe_dev_iface cudadev_iface = {
    "cuda", cu_alloc_slots, cu_free_bytes, cu_upload, cu_run, cu_wait, cu_query, cu_times, cu_destroy, cu_supports,
    cu_stats,
};

cudadev *as_cuda(moe_dev *d) { return d && d->iface == &cudadev_iface ? (cudadev *)d : NULL; }

moe_status create(cudadev *d) {
    CUDA_OK(cudaStreamCreateWithFlags(&d->copy, cudaStreamNonBlocking));
    CUDA_OK(cudaStreamCreateWithFlags(&d->compute, cudaStreamNonBlocking));
    CUDA_OK(cudaStreamCreateWithFlags(&d->clock, cudaStreamNonBlocking));
    CUBLAS_OK(cublasCreate(&d->blas));
    CUBLAS_OK(cublasSetStream(d->blas, d->compute));
    CUBLAS_OK(cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH)); // f32 stays f32: no TF32
    for (uint32_t i = 0; i < RING; i++) {
        CUDA_OK(cudaEventCreate(&d->ops[i].start));
        CUDA_OK(cudaEventCreate(&d->ops[i].end));
    }
    for (uint32_t i = 0; i < GENS; i++) CUDA_OK(cudaEventCreate(&d->ref[i]));
    CUDA_OK(cudaEventCreateWithFlags(&d->host_ev, cudaEventDisableTiming));
    CUDA_OK(cudaEventRecord(d->ref[0], d->clock));
    CUDA_OK(cudaEventSynchronize(d->ref[0]));
    d->ref_host[0] = d->rebased_at = moe_now();
    int ro = 0;
    if (cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, d->p.device) != cudaSuccess)
        (void)cudaGetLastError(), ro = 0;
    d->read_only_ok = ro != 0;
    size_t free_b = 0, total_b = 0;
    CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
    const uint64_t reserve = total_b / 20 > ((uint64_t)512 << 20) ? total_b / 20 : (uint64_t)512 << 20;
    d->limit = free_b > reserve ? free_b - reserve : 0;
    if (d->p.memory_bytes && d->p.memory_bytes < d->limit) d->limit = d->p.memory_bytes;
    return MOE_OK;
}

} // namespace

extern "C" moe_status moe_cudadev_create(moe_dev **out, const moe_cudadev_params *p) {
    if (!out || !p) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cudadev_create: NULL argument");
    *out = NULL;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) (void)cudaGetLastError(), n = 0;
    if (p->device < 0 || p->device >= n)
        return moe_fail(MOE_ERR_NO_DEVICE, "no CUDA device %d (%d found)", p->device, n);
    cudadev *d = (cudadev *)calloc(1, sizeof *d);
    if (!d) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "CUDA device: host allocation failed");
    d->ops = (op *)calloc(RING, sizeof *d->ops);
    d->stage_fifo = (uint64_t *)calloc(RING, sizeof *d->stage_fifo);
    d->base.iface = &cudadev_iface;
    d->p = *p;
    d->own_log.level = MOE_LOG_WARN;
    if (!d->p.log) d->p.log = &d->own_log; // stderr
    d->next_seq = 1;
    moe_status st = d->ops && d->stage_fifo ? MOE_OK : moe_fail(MOE_ERR_OUT_OF_MEMORY, "CUDA device: host allocation failed");
    if (st == MOE_OK) {
        device_guard g(p->device);
        st = create(d);
    }
    if (st != MOE_OK) {
        cu_destroy(&d->base);
        return st;
    }
    *out = &d->base;
    return MOE_OK;
}

extern "C" void moe_cudadev_get_stats(moe_dev *dev, moe_cudadev_stats *out) {
    if (!out) return;
    cudadev *d = as_cuda(dev);
    if (d) *out = d->stats;
    else memset(out, 0, sizeof *out);
}

namespace {

// The body of moe_cudadev_decode on the current device; frees what it took.
moe_status decode(moe_dtype t, const void *blocks, uint32_t rows, uint32_t cols, float *f32, uint16_t *bf16) {
    const size_t in = moe_matrix_bytes(t, rows, cols), n = (size_t)rows * cols;
    char *dw = NULL, *df = NULL, *db = NULL;
    cudaError_t e = cudaMalloc((void **)&dw, in ? in : 1);
    if (e == cudaSuccess) e = cudaMalloc((void **)&df, (n ? n : 1) * sizeof(float));
    if (e == cudaSuccess) e = cudaMalloc((void **)&db, (n ? n : 1) * sizeof(uint16_t));
    if (e == cudaSuccess) e = cudaMemcpy(dw, blocks, in, cudaMemcpyHostToDevice);
    if (e == cudaSuccess && f32) e = moe_cuq_dequant_f32(t, dw, rows, cols, (float *)df, 0);
    if (e == cudaSuccess && bf16) e = moe_cuq_dequant_bf16(t, dw, rows, cols, db, 0);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e == cudaSuccess && f32) e = cudaMemcpy(f32, df, n * sizeof(float), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess && bf16) e = cudaMemcpy(bf16, db, n * sizeof(uint16_t), cudaMemcpyDeviceToHost);
    const cudaError_t failed = e;
    cudaFree(dw), cudaFree(df), cudaFree(db);
    (void)cudaGetLastError();
    if (failed != cudaSuccess) return CUDA_FAIL(moe_cudadev_decode, failed);
    return MOE_OK;
}

} // namespace

extern "C" moe_status moe_cudadev_decode(int device, moe_dtype t, const void *blocks, uint32_t rows, uint32_t cols,
                                         float *f32, uint16_t *bf16) {
    if (!moe_cuq_supports(t)) return moe_fail(MOE_ERR_UNSUPPORTED, "CUDA device: no kernels for %s", moe_dtype_name(t));
    if (!blocks || rows > INT_MAX || cols > INT_MAX || (rows && !moe_matrix_bytes(t, rows, cols)))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cudadev_decode: bad blocks or shape");
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) (void)cudaGetLastError(), n = 0;
    if (device < 0 || device >= n) return moe_fail(MOE_ERR_NO_DEVICE, "no CUDA device %d (%d found)", device, n);
    SWITCH_TO(device);
    return decode(t, blocks, rows, cols, f32, bf16);
}

// ---- the registry's entry ---------------------------------------------

namespace {

moe_status reg_create(moe_dev **out, const moe_dev_params *p) {
    moe_cudadev_params cp = {};
    cp.device = p->index;
    cp.pin_limit_bytes = p->pin_limit_bytes;
    cp.log = p->log;
    cp.host_stream = p->host_stream;
    return moe_cudadev_create(out, &cp);
}

const moe_dev_measure cuda_measure = {moe_cuda_time_copy, moe_cuda_time_launch, moe_cuda_time_expert_f32};

} // namespace

extern "C" const moe_dev_reg moe_cuda_reg = {
    "cuda", MOE_DEVICE_CUDA, "CUDA device", false, moe_cuda_count, moe_cuda_probe, reg_create, &cuda_measure,
};
