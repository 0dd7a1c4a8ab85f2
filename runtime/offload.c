/* offload.c - the device's side of a forward (runtime.h): which expert
 * each slot holds, uploads (demanded or prefetched), runs, the CPU's
 * fallback for what the device refuses or fails, the streams' measured
 * times, the scheduler's costs refined from them, and a device given up
 * as lost. */
#include <math.h>
#include <stdlib.h>

#include "runtime.h"

moe_status rt_offload_alloc(moe_runtime_t *rt) {
    rt_offload *o = &rt->off;
    const size_t keys = (size_t)rt->model->n_layers * rt->max_experts, slots = o->n_slots ? o->n_slots : 1;
    o->slot_key = malloc(slots * sizeof *o->slot_key);
    o->slot_upload = calloc(slots, sizeof *o->slot_upload);
    o->slot_of = malloc(keys * sizeof *o->slot_of);
    o->ev = malloc(rt->max_experts * sizeof *o->ev);
    o->job = malloc(rt->max_experts * sizeof *o->job);
    o->task = malloc(rt->max_experts * sizeof *o->task);
    if (!o->slot_key || !o->slot_upload || !o->slot_of || !o->ev || !o->job || !o->task)
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_runtime_create: allocation failed");
    for (uint32_t i = 0; i < o->n_slots; i++) o->slot_key[i] = UINT32_MAX;
    for (size_t i = 0; i < keys; i++) o->slot_of[i] = -1;
    return MOE_OK;
}

/* Frees the device and everything about it; the runtime is left on the
 * CPU's side (rt->device and rt->policy are the caller's to set). */
void rt_offload_free(moe_runtime_t *rt) {
    rt_offload *o = &rt->off;
    moe_dev_free(&o->dev);
    moe_sched_free(&o->sched);
    free(o->slot_key), free(o->slot_upload), free(o->slot_of), free(o->ev), free(o->job), free(o->task), free(o->pend);
    rt_lookahead_free(rt);
    *o = (rt_offload){0};
}

/* Remembers an upload so its stream time reaches the statistics once it
 * completes (harvest_copies). Statistics only: an upload that cannot be
 * remembered (no memory) is simply not counted. */
static void note_copy(rt_offload *o, moe_dev_event ev, bool demand) {
    if (o->n_pend == o->cap_pend) {
        const uint32_t cap = o->cap_pend ? 2 * o->cap_pend : 64;
        rt_pending_copy *p = realloc(o->pend, cap * sizeof *p);
        if (!p) return;
        o->pend = p, o->cap_pend = cap;
    }
    o->pend[o->n_pend++] = (rt_pending_copy){ev, demand};
}

/* Adds the completed uploads' stream time to the statistics; returns the
 * part that was the current layer's own copies. */
static double harvest_copies(moe_runtime_t *rt) {
    rt_offload *o = &rt->off;
    double own = 0.0;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < o->n_pend; i++) {
        double a, b;
        const moe_status st = moe_dev_times(o->dev, o->pend[i].ev, &a, &b);
        if (st == MOE_ERR_STATE) { /* in flight: a later call counts it */
            o->pend[i].demand = false, o->pend[keep++] = o->pend[i];
            continue;
        }
        if (st != MOE_OK) continue; /* forgotten by the device: uncounted */
        rt->stats.gpu_copy_seconds += b - a;
        if (o->pend[i].demand) own += b - a;
    }
    o->n_pend = keep;
    return own;
}

/* A device slot for (layer, expert), which the scheduler has just admitted
 * to its cache: one whose expert the cache no longer holds (the cache's
 * capacity is the pool's, so one exists; -1 would be a bug). */
static int32_t free_slot(moe_runtime_t *rt) {
    rt_offload *o = &rt->off;
    const moe_cache *c = moe_sched_cache(o->sched);
    for (uint32_t i = 0; i < o->n_slots; i++) {
        const uint32_t k = o->slot_key[i];
        if (k == UINT32_MAX || !moe_cache_resident(c, k / rt->max_experts, k % rt->max_experts)) {
            if (k != UINT32_MAX) o->slot_of[k] = -1;
            o->slot_key[i] = UINT32_MAX;
            return (int32_t)i;
        }
    }
    return -1;
}

/* The scheduler queued a prefetch of (layer, expert) and admitted it to
 * its cache: its upload starts now, on the device's copy stream. */
void rt_prefetch_expert(uint32_t layer, uint32_t expert, void *user) {
    moe_runtime_t *rt = user;
    rt_offload *o = &rt->off;
    const uint32_t key = layer * rt->max_experts + expert;
    if (o->slot_of[key] >= 0) return;
    const int32_t slot = free_slot(rt);
    if (slot < 0) return; /* cannot happen (the cache holds no more than the pool); the expert is copied when run */
    const moe_expert_view v = rt_expert_view(&rt->model->layers[layer], expert);
    if (moe_dev_upload(o->dev, (uint32_t)slot, &v, &o->slot_upload[slot]) != MOE_OK) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: prefetch of layer %u expert %u: %s", layer, expert, moe_last_error());
        return;
    }
    note_copy(o, o->slot_upload[slot], false);
    o->slot_key[slot] = key, o->slot_of[key] = slot;
}

/* Group g's expert into `slot` unless it is resident there already, then
 * its run after that upload: the run's event, or an error (the operation
 * was refused at submission). */
static moe_status submit_group(moe_runtime_t *rt, uint32_t key, uint32_t slot, bool resident, uint32_t g,
                               moe_dev_event *run) {
    rt_offload *o = &rt->off;
    const moe_cpu_task *t = &rt->work.tasks[g];
    if (!resident) {
        const moe_status st = moe_dev_upload(o->dev, slot, &t->w, &o->slot_upload[slot]);
        if (st != MOE_OK) return st;
        o->slot_key[slot] = key, o->slot_of[key] = (int32_t)slot;
        note_copy(o, o->slot_upload[slot], true);
    }
    return moe_dev_run(o->dev, slot, t->m, t->x, t->y, o->slot_upload[slot], run);
}

void rt_submit_gpu(moe_runtime_t *rt, uint32_t layer, rt_exec *x) {
    rt_offload *o = &rt->off;
    moe_plan *plan = &rt->work.plan;
    uint32_t n = 0;
    for (uint32_t g = 0; g < plan->n_groups; g++) {
        moe_plan_group *grp = &plan->groups[g];
        if (grp->where != MOE_ON_GPU) continue;
        const uint32_t key = layer * rt->max_experts + grp->expert;
        int32_t slot = o->slot_of[key];
        const bool resident = slot >= 0;
        if (!resident && (slot = free_slot(rt)) < 0) {
            moe_log(&rt->log, MOE_LOG_ERROR, "runtime: no free device slot for layer %u expert %u (a bug: the "
                    "cache holds more than the pool); it runs on the CPU", layer, grp->expert);
            grp->where = MOE_ON_CPU;
            continue;
        }
        if (submit_group(rt, key, (uint32_t)slot, resident, g, &o->ev[n]) != MOE_OK) {
            o->failures++; /* refused at submission: the CPU computes it */
            moe_log(&rt->log, MOE_LOG_WARN, "runtime: device: %s; layer %u expert %u runs on the CPU",
                    moe_last_error(), layer, grp->expert);
            grp->where = MOE_ON_CPU;
            continue;
        }
        o->task[n] = rt->work.tasks[g];
        o->job[n++] = g;
    }
    x->n_gpu = n;
}

/* Waits for the device's runs; one that failed (a copy or a kernel) is
 * recomputed on the CPU, its slot forgotten so the next use uploads
 * again, and the error reported once. */
moe_status rt_collect_gpu(moe_runtime_t *rt, uint32_t layer, rt_exec *x) {
    rt_offload *o = &rt->off;
    uint32_t n_redo = 0;
    for (uint32_t i = 0; i < x->n_gpu; i++) {
        const uint32_t g = o->job[i];
        if (moe_dev_wait(o->dev, o->ev[i]) == MOE_OK) {
            o->failures = 0;
            continue;
        }
        o->failures++;
        if (!o->warned_fallback) {
            moe_log(&rt->log, MOE_LOG_WARN, "runtime: device: %s; recomputing on the CPU (reported once)",
                    moe_last_error());
            o->warned_fallback = true;
        }
        const uint32_t key = layer * rt->max_experts + rt->work.plan.groups[g].expert;
        const int32_t slot = o->slot_of[key];
        if (slot >= 0) o->slot_key[slot] = UINT32_MAX, o->slot_of[key] = -1;
        rt->work.plan.groups[g].where = MOE_ON_CPU;
        rt->work.tasks[n_redo++] = o->task[i]; /* the CPU's tasks are done: their array is free */
    }
    x->n_redo = n_redo;
    const double t = moe_now();
    const moe_status st = n_redo ? moe_cpu_run(rt->host.engine, rt->work.tasks, n_redo) : MOE_OK;
    x->redo_s = n_redo ? moe_now() - t : 0.0;
    return st;
}

void rt_drain_gpu(moe_runtime_t *rt, const rt_exec *x) {
    for (uint32_t i = 0; i < x->n_gpu; i++) (void)moe_dev_wait(rt->off.dev, rt->off.ev[i]); /* they write into yg */
}

/* The stream time of this layer's GPU runs (all completed): their sum,
 * and the end of the last, on the host's clock. */
static double gpu_run_times(rt_offload *o, uint32_t n_gpu, double *last_end) {
    double sum = 0.0;
    for (uint32_t i = 0; i < n_gpu; i++) {
        double a, b;
        if (moe_dev_times(o->dev, o->ev[i], &a, &b) != MOE_OK) continue;
        sum += b - a;
        if (b > *last_end) *last_end = b;
    }
    return sum;
}

/* Online refinement of the scheduler's costs: this layer's measured CPU
 * expert time and GPU run time against what the profile's tables say for
 * the same groups, folded into a running mean of the log ratio (weight
 * 0.1 per layer) and bounded to 1/8..8, so one noisy layer moves it
 * little and nothing can drive it to absurd costs. The CPU side needs at
 * least 20 us of measured work (below that, timer and wake-up noise
 * dominate). */
enum { REFINE_MIN_CPU_US = 20 };
static const double REFINE_WEIGHT = 0.1, REFINE_BOUND = 2.0794415416798357; /* log(8) */

static void refine_costs(moe_runtime_t *rt, double cpu_us, double gpu_us) {
    rt_offload *o = &rt->off;
    double scale[2];
    moe_sched_cost_scales(o->sched, &scale[0], &scale[1]);
    double table[2] = {0.0, 0.0};
    const moe_plan *plan = &rt->work.plan;
    for (uint32_t g = 0; g < plan->n_groups; g++) {
        const uint32_t m = plan->groups[g].n_tokens;
        if (plan->groups[g].where == MOE_ON_GPU) table[1] += moe_sched_gpu_us(o->sched, m) / scale[1];
        else table[0] += moe_sched_cpu_us(o->sched, m) / scale[0];
    }
    const double measured[2] = {cpu_us, gpu_us};
    for (int k = 0; k < 2; k++) {
        if (!(table[k] > 0) || !(measured[k] > 0) || (k == 0 && measured[k] < REFINE_MIN_CPU_US)) continue;
        double v = (1 - REFINE_WEIGHT) * o->log_scale[k] + REFINE_WEIGHT * log(measured[k] / table[k]);
        o->log_scale[k] = v > REFINE_BOUND ? REFINE_BOUND : v < -REFINE_BOUND ? -REFINE_BOUND : v;
    }
    moe_sched_scale_costs(o->sched, exp(o->log_scale[0]), exp(o->log_scale[1]));
}

/* The streams' times, this layer's overlap (serial time of its parts over
 * its span) and, where nothing had to be redone, the costs' refinement. */
void rt_account_gpu(moe_runtime_t *rt, const rt_exec *x) {
    double end = x->t_cpu_end;
    const double runs = gpu_run_times(&rt->off, x->n_gpu, &end), own_copies = harvest_copies(rt);
    rt->stats.gpu_compute_seconds += runs;
    if (x->n_gpu) {
        rt->stats.hybrid_layers++;
        rt->stats.hybrid_span_seconds += (x->n_redo ? x->t_end : end) - x->t_start;
        rt->stats.hybrid_serial_seconds += (x->t_cpu_end - x->t_start) + own_copies + runs + x->redo_s;
    }
    if (!x->n_redo) refine_costs(rt, x->n_cpu ? (x->t_cpu_end - x->t_cpu) * 1e6 : 0.0, runs * 1e6);
}

/* A device whose operations keep failing is gone (a lost or reset GPU, a
 * broken context): every expert runs on the CPU from then on. */
enum { DEVICE_LOST_AFTER = 8 };

void rt_check_lost(moe_runtime_t *rt) {
    if (!rt->off.dev || rt->off.failures < DEVICE_LOST_AFTER) return;
    moe_log(&rt->log, MOE_LOG_WARN, "runtime: the GPU failed %u operations in a row (last: %s); running every expert "
            "on the CPU from now on", rt->off.failures, moe_last_error());
    rt_offload_free(rt);
    rt->device = MOE_DEVICE_CPU;
    rt->policy = MOE_POLICY_STATIC_CPU;
}
