/* sim_device.c - the simulated GPU (see sim_device.h). One worker thread per
 * stream takes that stream's operations in order; one mutex and one
 * condition variable guard all state (operations are few and long next to
 * the locking). */
#define _POSIX_C_SOURCE 200809L
#include "sim_device.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"

#define RING 4096u /* operations remembered; also the most in flight */
#define MAX_SHAPES 32

enum { OP_UPLOAD, OP_RUN };

typedef struct rec {
    uint64_t seq; /* 0: unused */
    int stream, kind;
    bool done, reported, inject_fail;
    moe_status st;
    char msg[200];
    double submit, dur, start, end; /* modeled microseconds */
    uint32_t slot, m;
    moe_expert_view w; /* upload: the source */
    const float *x;
    float *y;
    moe_dev_event after;
    uint64_t slot_upload, slot_run; /* the slot's latest upload / run when this was submitted */
} rec;

typedef struct slot {
    uint8_t *mem;
    moe_expert_view view; /* into mem; gate NULL: holds no usable expert */
    uint64_t last_upload, last_run;
} slot;

typedef struct queue {
    uint64_t fifo[RING];
    uint32_t head, tail; /* head: next to take; tail: next free */
} queue;

struct simdev;

typedef struct worker_arg {
    struct simdev *d;
    int s;
} worker_arg;

typedef struct simdev {
    moe_dev base;
    moe_simdev_params p;
    uint64_t memory;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread[2];
    worker_arg args[2];
    bool started[2], stop, hold[2];
    rec *recs;      /* [RING] */
    queue q[2];
    uint64_t next_seq, in_flight;
    double t0, free_at[2];
    slot *slots;
    uint32_t n_slots;
    size_t slot_bytes;
    uint32_t n_alloc, n_upload, n_run, n_ops; /* calls so far, for fault injection */
    moe_cpu *engine;
    struct {
        uint32_t hidden, inter;
        moe_dtype t;
    } shapes[MAX_SHAPES];
    uint32_t n_shapes;
    struct {                /* moe_simdev_stats, times in modeled microseconds */
        uint64_t uploads, runs, failed, bytes_uploaded;
        double copy_busy_us, compute_busy_us, end_us;
    } stats;
} simdev;

static const moe_dev_iface simdev_iface;

static simdev *as_sim(moe_dev *d) { return d && d->iface == &simdev_iface ? (simdev *)d : NULL; }

static double now_us(const simdev *d) {
    return d->p.time_scale > 0 ? (moe_now() - d->t0) * 1e6 / d->p.time_scale
           : d->p.host_clock   ? (moe_now() - d->t0) * 1e6
                               : 0.0;
}

/* A modeled time as the host clock's (moe_now()) seconds. */
static double host_s(const simdev *d, double us) {
    return d->t0 + us * 1e-6 * (d->p.time_scale > 0 ? d->p.time_scale : 1.0);
}

/* ---- events (mu held) ---- */

static rec *find(simdev *d, uint64_t e) {
    rec *r = &d->recs[e % RING];
    return r->seq == e ? r : NULL;
}

/* Operations older than the ring have completed: a new one waits for the
 * one it replaces. */
static bool complete(simdev *d, uint64_t e) {
    if (e == 0 || e + RING < d->next_seq) return true;
    const rec *r = find(d, e);
    return !r || r->done;
}

static double end_of(simdev *d, uint64_t e) {
    const rec *r = e ? find(d, e) : NULL;
    return r && r->done ? r->end : 0.0;
}

/* ---- costs ---- */

/* ---- the worker threads ---- */

static void sleep_until_us(const simdev *d, double modeled_end_us) {
    for (;;) {
        const double left_s = d->t0 + modeled_end_us * 1e-6 * d->p.time_scale - moe_now();
        if (left_s <= 0) return;
        struct timespec ts = {(time_t)left_s, (long)((left_s - (double)(time_t)left_s) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static moe_status fail_rec(rec *r, moe_status st, const char *fmt, uint32_t a, unsigned long long b) {
    snprintf(r->msg, sizeof r->msg, fmt, a, b);
    return st;
}

/* Checks an operation about to execute (mu held). */
static moe_status precheck(simdev *d, rec *r) {
    if (r->slot >= d->n_slots)
        return fail_rec(r, MOE_ERR_STATE, "simulated device: slot %u is gone (the pool was reallocated; event %llu)",
                        r->slot, (unsigned long long)r->seq);
    if (r->kind == OP_UPLOAD) {
        if (!complete(d, r->slot_run))
            return fail_rec(r, MOE_ERR_INTERNAL, "simulated device: upload into slot %u while its run (event %llu) has "
                            "not completed: the executor must wait for it", r->slot, (unsigned long long)r->slot_run);
        return MOE_OK;
    }
    if (!r->slot_upload)
        return fail_rec(r, MOE_ERR_STATE, "simulated device: run on slot %u, which holds no expert (event %llu)",
                        r->slot, (unsigned long long)r->seq);
    if (!complete(d, r->slot_upload))
        return fail_rec(r, MOE_ERR_INTERNAL, "simulated device: run on slot %u before its upload (event %llu) "
                        "completed: the run must wait for it", r->slot, (unsigned long long)r->slot_upload);
    const rec *u = find(d, r->slot_upload);
    if ((u && u->st != MOE_OK) || !d->slots[r->slot].view.gate)
        return fail_rec(r, MOE_ERR_DEVICE, "simulated device: run on slot %u, whose upload (event %llu) failed",
                        r->slot, (unsigned long long)r->slot_upload);
    return MOE_OK;
}

/* Copies expert w into slot memory mem; the view of the copy. */
static moe_expert_view copy_in(uint8_t *mem, const moe_expert_view *w) {
    const moe_dtype dd = moe_view_down(w);
    const size_t gu = moe_matrix_bytes(w->dtype, w->inter, w->hidden), dn = moe_matrix_bytes(dd, w->hidden, w->inter);
    uint8_t *p = mem; /* malloc'd: aligned for floats */
    moe_expert_view v = *w;
    v.gate_scale = v.up_scale = v.down_scale = NULL;
    float *f = (float *)(void *)p; /* int8 row scales first, where floats are aligned; then the matrices */
    if (w->dtype == MOE_DTYPE_I8) {
        memcpy(f, w->gate_scale, w->inter * sizeof *f), v.gate_scale = f, f += w->inter;
        memcpy(f, w->up_scale, w->inter * sizeof *f), v.up_scale = f, f += w->inter;
    }
    if (dd == MOE_DTYPE_I8) memcpy(f, w->down_scale, w->hidden * sizeof *f), v.down_scale = f, f += w->hidden;
    p = (uint8_t *)f;
    memcpy(p, w->gate, gu), v.gate = p, p += gu;
    memcpy(p, w->up, gu), v.up = p, p += gu;
    memcpy(p, w->down, dn), v.down = p;
    return v;
}

/* Prepares the engine for a shape the first time it is seen (worker). */
static void prepare(simdev *d, const moe_expert_view *w) {
    for (uint32_t i = 0; i < d->n_shapes; i++)
        if (d->shapes[i].hidden == w->hidden && d->shapes[i].inter == w->inter && d->shapes[i].t == w->dtype) return;
    if (moe_cpu_prepare(d->engine, w->hidden, w->inter, w->dtype) != MOE_OK || d->n_shapes == MAX_SHAPES) return;
    d->shapes[d->n_shapes].hidden = w->hidden;
    d->shapes[d->n_shapes].inter = w->inter;
    d->shapes[d->n_shapes].t = w->dtype;
    d->n_shapes++;
}

static void *worker(void *arg) {
    simdev *d = ((worker_arg *)arg)->d;
    const int s = ((worker_arg *)arg)->s;
    queue *q = &d->q[s];
    pthread_mutex_lock(&d->mu);
    for (;;) {
        if (q->head == q->tail || d->hold[s]) {
            if (d->stop) break;
            pthread_cond_wait(&d->cv, &d->mu);
            continue;
        }
        rec *r = &d->recs[q->fifo[q->head % RING] % RING];
        if (!complete(d, r->after)) {
            pthread_cond_wait(&d->cv, &d->mu);
            continue;
        }
        double start = d->free_at[s];
        if (end_of(d, r->after) > start) start = end_of(d, r->after);
        if (r->submit > start) start = r->submit;
        moe_status st = precheck(d, r);
        if (st == MOE_OK && r->inject_fail) {
            st = MOE_ERR_DEVICE;
            snprintf(r->msg, sizeof r->msg, "simulated device: injected %s failure (slot %u, event %llu)",
                     r->kind == OP_UPLOAD ? "copy" : "kernel", r->slot, (unsigned long long)r->seq);
        }
        slot *sl = r->slot < d->n_slots ? &d->slots[r->slot] : NULL;
        /* An upload that goes ahead overwrites the slot: no run may use it until it completes. */
        if (r->kind == OP_UPLOAD && sl && st != MOE_ERR_INTERNAL) sl->view.gate = NULL;
        moe_expert_view view = sl ? sl->view : (moe_expert_view){0};
        pthread_mutex_unlock(&d->mu);
        /* The pool cannot change under us: alloc_slots waits for everything in flight. */
        if (st == MOE_OK && r->kind == OP_UPLOAD) {
            view = copy_in(sl->mem, &r->w);
        } else if (st == MOE_OK && r->m) {
            prepare(d, &view);
            const moe_cpu_task t = {.w = view, .team = 0, .m = r->m, .x = r->x, .y = r->y};
            st = moe_cpu_run(d->engine, &t, 1);
            if (st) snprintf(r->msg, sizeof r->msg, "simulated device: the engine failed: %s", moe_last_error());
        }
        if (d->p.time_scale > 0) sleep_until_us(d, start + r->dur);
        pthread_mutex_lock(&d->mu);
        if (r->kind == OP_UPLOAD && st == MOE_OK) sl->view = view;
        r->st = st;
        r->start = start;
        r->end = start + r->dur;
        r->done = true;
        d->free_at[s] = r->end;
        q->head++;
        d->in_flight--;
        if (r->kind == OP_UPLOAD) {
            d->stats.uploads++;
            d->stats.copy_busy_us += r->dur;
            if (st == MOE_OK) d->stats.bytes_uploaded += moe_dev_view_bytes(&r->w);
        } else {
            d->stats.runs++;
            d->stats.compute_busy_us += r->dur;
        }
        if (st != MOE_OK) d->stats.failed++;
        if (r->end > d->stats.end_us) d->stats.end_us = r->end;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* ---- submission (mu held) ---- */

/* A record for a new operation on stream s: waits while the ring's slot
 * for it is still in flight. */
static rec *submit(simdev *d, int s, int kind) {
    while (!complete(d, d->next_seq >= RING ? d->next_seq - RING : 0) || d->q[s].tail - d->q[s].head >= RING)
        pthread_cond_wait(&d->cv, &d->mu);
    const uint64_t seq = d->next_seq++;
    rec *r = &d->recs[seq % RING];
    memset(r, 0, sizeof *r);
    r->seq = seq;
    r->stream = s;
    r->kind = kind;
    r->submit = now_us(d);
    return r;
}

static void enqueue(simdev *d, rec *r) {
    queue *q = &d->q[r->stream];
    q->fifo[q->tail % RING] = r->seq;
    q->tail++;
    d->in_flight++;
    pthread_cond_broadcast(&d->cv);
}

static void drain(simdev *d) {
    d->hold[0] = d->hold[1] = false;
    pthread_cond_broadcast(&d->cv);
    while (d->in_flight) pthread_cond_wait(&d->cv, &d->mu);
}

/* ---- the interface ---- */

static moe_status sim_alloc_slots(moe_dev *dev, uint32_t n, size_t bytes) {
    simdev *d = (simdev *)dev;
    pthread_mutex_lock(&d->mu);
    drain(d);
    for (uint32_t i = 0; i < d->n_slots; i++) free(d->slots[i].mem);
    free(d->slots);
    d->slots = NULL;
    d->n_slots = 0;
    d->slot_bytes = 0;
    moe_status st = MOE_OK;
    if (++d->n_alloc == d->p.fail_alloc_at) {
        st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "simulated device: injected allocation failure (%u slots of %zu bytes)", n,
                      bytes);
    } else if (n && (bytes == 0 || (uint64_t)bytes > d->memory / n)) {
        st = moe_fail(bytes ? MOE_ERR_OUT_OF_MEMORY : MOE_ERR_INVALID_ARG,
                      "simulated device: %u slots of %zu bytes do not fit in its %llu bytes", n, bytes,
                      (unsigned long long)d->memory);
    } else if (n) {
        d->slots = calloc(n, sizeof *d->slots);
        for (uint32_t i = 0; d->slots && i < n; i++)
            if (!(d->slots[i].mem = malloc(bytes))) {
                for (uint32_t j = 0; j < i; j++) free(d->slots[j].mem);
                free(d->slots);
                d->slots = NULL;
            }
        if (!d->slots) st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "simulated device: no host memory for %u slots of %zu bytes", n, bytes);
        else d->n_slots = n, d->slot_bytes = bytes;
    }
    pthread_mutex_unlock(&d->mu);
    return st;
}

static uint64_t sim_free_bytes(const moe_dev *dev) {
    simdev *d = (simdev *)(void *)(uintptr_t)dev;
    pthread_mutex_lock(&d->mu);
    const uint64_t used = (uint64_t)d->n_slots * d->slot_bytes;
    pthread_mutex_unlock(&d->mu);
    return d->memory - used;
}

static moe_status check_view(const moe_expert_view *w) {
    if (!w || !w->gate || !w->up || !w->down || !w->hidden || !w->inter || !moe_dev_view_bytes(w) ||
        (w->dtype == MOE_DTYPE_I8 && (!w->gate_scale || !w->up_scale)) ||
        (moe_view_down(w) == MOE_DTYPE_I8 && !w->down_scale))
        return moe_fail(MOE_ERR_INVALID_ARG, "simulated device: upload of an incomplete expert");
    return MOE_OK;
}

static moe_status sim_upload(moe_dev *dev, uint32_t slot_id, const moe_expert_view *w, moe_dev_event *done) {
    simdev *d = (simdev *)dev;
    moe_status st = done ? check_view(w) : moe_fail(MOE_ERR_INVALID_ARG, "simulated device: upload without an event");
    if (st) return st;
    const size_t need = moe_dev_view_bytes(w);
    const double dur = moe_profile_copy_us(d->p.profile, d->p.gpu, need, true);
    pthread_mutex_lock(&d->mu);
    if (slot_id >= d->n_slots || need > d->slot_bytes) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "simulated device: upload of a %ux%u %s expert (%zu bytes) into slot %u of "
                      "%u slots of %zu bytes", w->hidden, w->inter, moe_dtype_name(w->dtype), need, slot_id, d->n_slots,
                      d->slot_bytes);
    } else {
        rec *r = submit(d, MOE_SIMDEV_COPY, OP_UPLOAD);
        slot *s = &d->slots[slot_id];
        r->slot = slot_id;
        r->w = *w;
        r->dur = dur;
        r->slot_run = s->last_run;
        const bool nth = ++d->n_upload == d->p.fail_upload_at, lost = d->p.fail_from && ++d->n_ops >= d->p.fail_from;
        r->inject_fail = nth || lost;
        s->last_upload = r->seq;
        *done = r->seq;
        enqueue(d, r);
    }
    pthread_mutex_unlock(&d->mu);
    return st;
}

static moe_status sim_run(moe_dev *dev, uint32_t slot_id, uint32_t m, const float *x, float *y, moe_dev_event after,
                          moe_dev_event *done) {
    simdev *d = (simdev *)dev;
    if (!done || (m && (!x || !y))) return moe_fail(MOE_ERR_INVALID_ARG, "simulated device: run without buffers or event");
    moe_status st = MOE_OK;
    pthread_mutex_lock(&d->mu);
    if (after >= d->next_seq) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "simulated device: run after event %llu, which was never issued",
                      (unsigned long long)after);
    } else if (slot_id >= d->n_slots) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "simulated device: run on slot %u of %u", slot_id, d->n_slots);
    } else {
        slot *s = &d->slots[slot_id];
        const rec *u = s->last_upload ? find(d, s->last_upload) : NULL;
        /* The cost needs the shape: the slot's expert as last submitted. */
        const moe_expert_view *w = u ? &u->w : s->view.gate ? &s->view : NULL;
        const double dur = w ? moe_profile_gpu_run_us(d->p.profile, d->p.gpu, w->hidden, w->inter, w->dtype, m) : 0.0;
        if (w && dur < 0) {
            st = moe_fail(MOE_ERR_UNSUPPORTED, "simulated device: the profile has no GPU expert time for %ux%u %s",
                          w->hidden, w->inter, moe_dtype_name(w->dtype));
        } else {
            rec *r = submit(d, MOE_SIMDEV_COMPUTE, OP_RUN);
            r->slot = slot_id;
            r->m = m;
            r->x = x;
            r->y = y;
            r->after = after;
            r->dur = dur;
            r->slot_upload = s->last_upload;
            const bool nth = ++d->n_run == d->p.fail_run_at, lost = d->p.fail_from && ++d->n_ops >= d->p.fail_from;
            r->inject_fail = nth || lost;
            s->last_run = r->seq;
            *done = r->seq;
            enqueue(d, r);
        }
    }
    pthread_mutex_unlock(&d->mu);
    return st;
}

static moe_status sim_wait(moe_dev *dev, moe_dev_event e) {
    simdev *d = (simdev *)dev;
    pthread_mutex_lock(&d->mu);
    if (e >= d->next_seq) {
        pthread_mutex_unlock(&d->mu);
        return moe_fail(MOE_ERR_INVALID_ARG, "simulated device: event %llu was never issued", (unsigned long long)e);
    }
    while (!complete(d, e)) pthread_cond_wait(&d->cv, &d->mu);
    rec *r = e ? find(d, e) : NULL;
    moe_status st = MOE_OK;
    if (r && r->st != MOE_OK && !r->reported) {
        r->reported = true;
        st = moe_fail(r->st, "%s", r->msg);
    }
    pthread_mutex_unlock(&d->mu);
    return st;
}

static bool sim_query(moe_dev *dev, moe_dev_event e) {
    simdev *d = (simdev *)dev;
    pthread_mutex_lock(&d->mu);
    const bool c = complete(d, e);
    pthread_mutex_unlock(&d->mu);
    return c;
}

static moe_status times_locked(simdev *d, moe_dev_event e, double *start_us, double *end_us) {
    const rec *r = e ? find(d, e) : NULL;
    moe_status st = MOE_OK;
    if (!r) st = moe_fail(MOE_ERR_INVALID_ARG, "simulated device: event %llu is not one of its last %u operations",
                          (unsigned long long)e, RING);
    else if (!r->done) st = moe_fail(MOE_ERR_STATE, "simulated device: event %llu is in flight", (unsigned long long)e);
    else *start_us = r->start, *end_us = r->end;
    return st;
}

/* Seconds: the host's clock where the modeled timeline runs beside it,
 * else the modeled clock itself (device.h). */
static moe_status sim_times(moe_dev *dev, moe_dev_event e, double *start_s, double *end_s) {
    simdev *d = (simdev *)dev;
    double a = 0.0, b = 0.0;
    pthread_mutex_lock(&d->mu);
    const moe_status st = times_locked(d, e, &a, &b);
    pthread_mutex_unlock(&d->mu);
    if (st != MOE_OK) return st;
    const bool beside_host = d->p.time_scale > 0 || d->p.host_clock;
    *start_s = beside_host ? host_s(d, a) : a * 1e-6;
    *end_s = beside_host ? host_s(d, b) : b * 1e-6;
    return MOE_OK;
}

static void sim_destroy(moe_dev *dev) {
    simdev *d = (simdev *)dev;
    pthread_mutex_lock(&d->mu);
    drain(d);
    d->stop = true;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    for (int s = 0; s < 2; s++)
        if (d->started[s]) pthread_join(d->thread[s], NULL);
    for (uint32_t i = 0; i < d->n_slots; i++) free(d->slots[i].mem);
    free(d->slots);
    free(d->recs);
    moe_cpu_free(&d->engine);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* What the CPU engine computes, since the engine computes the runs: the
 * element types and GGUF's block formats. */
static bool sim_supports(const moe_dev *dev, moe_dtype t) {
    (void)dev;
    return moe_dtype_size(t) || moe_dtype_is_block(t);
}

static void sim_stats(moe_dev *dev, moe_dev_stats *out) {
    moe_simdev_stats st;
    moe_simdev_get_stats(dev, &st);
    *out = (moe_dev_stats){.uploads = st.uploads, .runs = st.runs, .failed = st.failed,
                           .bytes_uploaded = st.bytes_uploaded};
}

static const moe_dev_iface simdev_iface = {
    .name = "sim",
    .alloc_slots = sim_alloc_slots,
    .free_bytes = sim_free_bytes,
    .upload = sim_upload,
    .run = sim_run,
    .wait = sim_wait,
    .query = sim_query,
    .times = sim_times,
    .destroy = sim_destroy,
    .supports = sim_supports,
    .stats = sim_stats,
};

moe_status moe_simdev_create(moe_dev **out, const moe_simdev_params *p) {
    if (!out || !p || !p->profile || p->time_scale < 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "simulated device: no profile, or a negative time scale");
    *out = NULL;
    const moe_profile *pr = p->profile;
    if (p->gpu < 0 || (uint32_t)p->gpu >= pr->n_gpus)
        return moe_fail(MOE_ERR_UNSUPPORTED, "simulated device: the profile has no gpu%d (it has %u GPUs); profiles "
                        "with GPU figures are in profiles/machines/", (int)p->gpu, pr->n_gpus);
    if (moe_profile_copy_us(pr, p->gpu, 1u << 20, true) < 0 || moe_profile_d2h_us(pr, p->gpu, 1u << 20) < 0)
        return moe_fail(MOE_ERR_UNSUPPORTED, "simulated device: the profile has no pinned host-to-device and "
                        "device-to-host copy rates for gpu%d ([link] section)", (int)p->gpu);
    simdev *d = calloc(1, sizeof *d);
    if (!d || !(d->recs = calloc(RING, sizeof *d->recs))) {
        free(d);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "simulated device: out of memory");
    }
    d->base.iface = &simdev_iface;
    d->p = *p;
    d->memory = p->memory_bytes ? p->memory_bytes : pr->gpus[p->gpu].free_bytes;
    d->next_seq = 1;
    d->t0 = moe_now();
    const moe_cpu_params cp = {.n_threads = p->compute_threads ? p->compute_threads : 1, .n_teams = 1,
                               .portable = p->portable};
    moe_status st = moe_cpu_create(&d->engine, &cp);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    for (int s = 0; s < 2 && st == MOE_OK; s++) {
        d->args[s] = (worker_arg){d, s};
        if (pthread_create(&d->thread[s], NULL, worker, &d->args[s]) != 0)
            st = moe_fail(MOE_ERR_INTERNAL, "simulated device: could not start a stream thread");
        else d->started[s] = true;
    }
    if (st) {
        sim_destroy(&d->base);
        return st;
    }
    *out = &d->base;
    return MOE_OK;
}

void moe_simdev_hold(moe_dev *dev, int stream, bool hold) {
    simdev *d = as_sim(dev);
    if (!d || stream < 0 || stream > 1) return;
    pthread_mutex_lock(&d->mu);
    d->hold[stream] = hold;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

void moe_simdev_get_stats(moe_dev *dev, moe_simdev_stats *out) {
    simdev *d = as_sim(dev);
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    *out = (moe_simdev_stats){.uploads = d->stats.uploads, .runs = d->stats.runs, .failed = d->stats.failed,
                              .bytes_uploaded = d->stats.bytes_uploaded, .copy_busy_s = d->stats.copy_busy_us * 1e-6,
                              .compute_busy_s = d->stats.compute_busy_us * 1e-6, .end_s = d->stats.end_us * 1e-6};
    pthread_mutex_unlock(&d->mu);
}

/* ---- the registry's entry ---- */

/* MOE_SIM_FAIL="alloc:N,upload:N,run:N,lost:N": the n-th such operation
 * fails; lost: the n-th upload or run and all after it. */
static moe_status parse_faults(moe_simdev_params *sp) {
    static const char *const names[4] = {"alloc", "upload", "run", "lost"};
    uint32_t *const dst[4] = {&sp->fail_alloc_at, &sp->fail_upload_at, &sp->fail_run_at, &sp->fail_from};
    const char *f = getenv("MOE_SIM_FAIL");
    while (f && *f) {
        int k = 0;
        while (k < 4 && strncmp(f, names[k], strlen(names[k]))) k++;
        char *end;
        const char *num = k < 4 ? f + strlen(names[k]) : f;
        const unsigned long v = k < 4 && *num == ':' ? strtoul(num + 1, &end, 10) : 0;
        if (k == 4 || *num != ':' || end == num + 1 || v == 0 || v > UINT32_MAX || (*end && *end != ','))
            return moe_fail(MOE_ERR_INVALID_ARG, "MOE_SIM_FAIL=\"%s\": expected alloc:N, upload:N, run:N, lost:N "
                            "(N >= 1), comma-separated", getenv("MOE_SIM_FAIL"));
        *dst[k] = (uint32_t)v;
        f = *end ? end + 1 : end;
    }
    return MOE_OK;
}

static moe_status reg_create(moe_dev **out, const moe_dev_params *p) {
    moe_simdev_params sp = {.profile = p->profile, .gpu = p->index, .host_clock = true, .compute_threads = 1};
    const char *env = getenv("MOE_SIM_TIME_SCALE");
    if (env && *env) {
        char *end;
        sp.time_scale = strtod(env, &end);
        if (*end || !(sp.time_scale >= 0))
            return moe_fail(MOE_ERR_INVALID_ARG, "MOE_SIM_TIME_SCALE=\"%s\": not a number >= 0", env);
    }
    moe_status st = parse_faults(&sp);
    if (st != MOE_OK) return st;
    if (p->profile && p->index >= 0 && (uint32_t)p->index < p->profile->n_gpus &&
        !p->profile->gpus[p->index].free_bytes)
        sp.memory_bytes = p->pool_bytes; /* the profile gives no memory size */
    return moe_simdev_create(out, &sp);
}

static int no_devices(void) { return 0; }

const moe_dev_reg moe_sim_reg = {
    .name = "sim",
    .kind = MOE_DEVICE_SIM,
    .title = "simulated GPU",
    .modeled = true,
    .count = no_devices,
    .create = reg_create,
};
