/* forward.c - one MoE layer's forward (runtime.h), as named steps:
 *   check    the arguments, before any work
 *   plan     route the batch into groups by expert, and place each group
 *            (the scheduler's split with a device, static-cpu without)
 *   gather   each group's token rows contiguously, one task per group
 *   execute  the device's groups out first, the CPU's meanwhile, then the
 *            device's collected (offload.c)
 *   combine  out[t] = sum_j w[t,j] * y[t,j] in slot order j, so the split
 *            never changes the result
 * and the dense projections a host runs on the CPU engine. */
#include <stdlib.h>

#include "dense.h"
#include "runtime.h"

static bool overlaps(const void *a, const void *b, size_t bytes) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y + bytes && y < x + bytes;
}

moe_status rt_check_forward(const moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden,
                            uint32_t top_k, const int32_t *topk_ids, const float *topk_weights, const float *out) {
    if (layer >= rt->model->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: layer %u out of range (model has %u)", layer,
                        rt->model->n_layers);
    const moe_model_layer *L = &rt->model->layers[layer];
    const uint32_t H = L->desc.hidden;
    if (n_tokens == 0) return MOE_OK;
    if (top_k == 0 || top_k > L->desc.n_experts)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: top_k = %u, must be in 1..%u for layer %u",
                        top_k, L->desc.n_experts, layer);
    if (!hidden || !topk_ids || !topk_weights || !out)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: %s is NULL",
                        !hidden ? "hidden" : !topk_ids ? "topk_ids" : !topk_weights ? "topk_weights" : "out");
    size_t n_pairs;
    if (!moe_mul_size(n_tokens, top_k, &n_pairs) || n_pairs > UINT32_MAX)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: %u tokens x top_k %u is more than 2^32 "
                        "token-expert pairs; split the batch", n_tokens, top_k);
    size_t act_floats;
    if (!moe_mul_size(n_tokens, H, &act_floats) || act_floats > SIZE_MAX / sizeof(float))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: %u tokens of width %u is too large", n_tokens, H);
    if (overlaps(hidden, out, act_floats * sizeof(float)))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: out overlaps hidden");
    return MOE_OK;
}

/* Routes the batch into groups and places each; the scheduler's report of
 * the layer (copies, hits) in *so. The scheduler's layer starts after the
 * host's dense work since the last layer returned (it runs on this CPU,
 * at its real speed). */
static moe_status plan_layer(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, uint32_t top_k,
                             const int32_t *topk_ids, const float *topk_weights, double t0, moe_sched_layer_out *so) {
    moe_plan *plan = &rt->work.plan;
    moe_status st = moe_plan_route(plan, layer, rt->model->layers[layer].desc.n_experts, n_tokens, top_k, topk_ids);
    if (st != MOE_OK) return st;
    if (rt->rec.path[0]) rt_record(rt, layer, n_tokens, top_k, topk_ids, topk_weights);
    rt_offload *o = &rt->off;
    if (!o->sched) {
        moe_plan_assign(plan, rt->policy, NULL);
        return MOE_OK;
    }
    if (layer == 0) o->step++;
    if (o->returned_at > 0) o->clock_us += (t0 - o->returned_at) * 1e6;
    if ((st = moe_sched_layer(o->sched, plan, o->step, o->clock_us, NULL, so)) != MOE_OK) return st;
    o->clock_us = so->end_us;
    rt_score_predictions(rt, layer, plan);
    return MOE_OK;
}

/* Grows the per-call buffers for n_pairs pairs of width `hidden`. */
static moe_status reserve(rt_work *w, size_t n_pairs, uint32_t hidden) {
    size_t rows;
    if (!moe_mul_size(n_pairs, hidden, &rows))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: batch too large");
    if (n_pairs > w->cap_pairs) {
        uint32_t *p = realloc(w->pair_of, n_pairs * sizeof *p);
        if (!p) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_layer_forward: allocation failed");
        w->pair_of = p;
        w->cap_pairs = n_pairs;
    }
    if (rows > w->cap_rows) {
        float *x = realloc(w->xg, rows * sizeof *x);
        if (!x) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_layer_forward: allocation failed");
        w->xg = x;
        float *y = realloc(w->yg, rows * sizeof *y);
        if (!y) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_layer_forward: allocation failed");
        w->yg = y;
        w->cap_rows = rows;
    }
    return MOE_OK;
}

void rt_work_free(rt_work *w) {
    moe_plan_release(&w->plan);
    free(w->tasks), free(w->pair_of), free(w->xg), free(w->yg);
    *w = (rt_work){0};
}

/* Each group's token rows contiguously, where each (token, slot) pair's
 * output will land, and one task per group: the number of tasks. */
static uint32_t gather(moe_runtime_t *rt, const moe_model_layer *L, uint32_t top_k, const float *hidden) {
    rt_work *w = &rt->work;
    const moe_plan *plan = &w->plan;
    const uint32_t H = L->desc.hidden;
    const size_t n_pairs = (size_t)plan->n_tokens * top_k;
    for (size_t i = 0; i < n_pairs; i++) {
        const moe_plan_pair *pr = &plan->pairs[i];
        memcpy(w->xg + i * H, hidden + (size_t)pr->token * H, H * sizeof(float));
        w->pair_of[(size_t)pr->token * top_k + pr->slot] = (uint32_t)i;
    }
    for (uint32_t g = 0; g < plan->n_groups; g++) {
        const moe_plan_group *grp = &plan->groups[g];
        w->tasks[g] = (moe_cpu_task){
            .w = rt_expert_view(L, grp->expert),
            .team = moe_cpu_home(grp->expert, rt->host.teams.n),
            .m = grp->n_tokens,
            .x = w->xg + (size_t)grp->first * H,
            .y = w->yg + (size_t)grp->first * H,
        };
    }
    return plan->n_groups;
}

/* The device's groups go out first (their uploads, then their runs) with
 * the prefetches for the layers ahead; the CPU runs its own meanwhile;
 * then the device's are collected. *prefetched: bytes queued. */
static moe_status execute(moe_runtime_t *rt, uint32_t layer, rt_exec *x, uint64_t *prefetched) {
    rt_work *w = &rt->work;
    x->n_cpu = x->n_jobs;
    if (rt->off.dev) rt_submit_gpu(rt, layer, x);
    *prefetched = rt->off.sched ? rt_prefetch_ahead(rt, layer) : 0;
    if (x->n_gpu) { /* the CPU's tasks: those not submitted, compacted */
        x->n_cpu = 0;
        for (uint32_t g = 0; g < x->n_jobs; g++)
            if (w->plan.groups[g].where != MOE_ON_GPU) w->tasks[x->n_cpu++] = w->tasks[g];
    }
    x->t_cpu = moe_now();
    moe_status st = moe_cpu_run(rt->host.engine, w->tasks, x->n_cpu);
    if (st != MOE_OK) {
        rt_drain_gpu(rt, x);
        return st;
    }
    x->t_cpu_end = moe_now();
    if (x->n_gpu && (st = rt_collect_gpu(rt, layer, x)) != MOE_OK) return st;
    x->t_end = moe_now();
    if (rt->off.dev) rt_account_gpu(rt, x);
    x->n_gpu -= x->n_redo;
    return MOE_OK;
}

/* Sums each token's expert outputs in slot order, so the sum never
 * depends on where each expert ran. */
static void combine(const rt_work *w, uint32_t n_tokens, uint32_t H, uint32_t top_k, const float *topk_weights,
                    float *out) {
    for (uint32_t t = 0; t < n_tokens; t++) {
        float *o = out + (size_t)t * H;
        memset(o, 0, H * sizeof(float));
        for (uint32_t j = 0; j < top_k; j++) {
            const float wgt = topk_weights[(size_t)t * top_k + j];
            const float *y = w->yg + (size_t)w->pair_of[(size_t)t * top_k + j] * H;
            for (uint32_t i = 0; i < H; i++) o[i] += wgt * y[i];
        }
    }
}

static void count_layer(moe_runtime_t *rt, uint32_t n_tokens, const rt_exec *x, const moe_sched_layer_out *so,
                        uint64_t prefetched, double t0, double t3) {
    moe_stats *s = &rt->stats;
    const bool planned = rt->off.sched != NULL;
    s->layer_calls++;
    s->tokens += n_tokens;
    s->expert_calls_cpu += x->n_jobs - x->n_gpu;
    s->expert_calls_gpu += x->n_gpu;
    s->gpu_redone += x->n_redo;
    s->gpu_hits += planned && so->n_gpu > so->n_copied ? so->n_gpu - so->n_copied : 0;
    s->gpu_misses += planned ? so->n_copied : 0;
    s->bytes_copied += planned ? so->bytes_copied + prefetched : 0;
    s->expert_tokens += (uint64_t)n_tokens * rt->work.plan.top_k;
    s->plan_seconds += x->t_start - t0;
    s->cpu_seconds += x->t_cpu_end - x->t_start;
    s->gpu_seconds += x->t_end - x->t_cpu_end;
    s->total_seconds += t3 - t0;
}

moe_status rt_forward(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden, uint32_t top_k,
                      const int32_t *topk_ids, const float *topk_weights, float *out) {
    moe_status st = rt_check_forward(rt, layer, n_tokens, hidden, top_k, topk_ids, topk_weights, out);
    if (st != MOE_OK || n_tokens == 0) return st;
    const moe_model_layer *L = &rt->model->layers[layer];
    const double t0 = moe_now();
    moe_sched_layer_out so = {0};
    if ((st = plan_layer(rt, layer, n_tokens, top_k, topk_ids, topk_weights, t0, &so)) != MOE_OK ||
        (st = reserve(&rt->work, (size_t)n_tokens * top_k, L->desc.hidden)) != MOE_OK)
        return st;
    rt_exec x = {.t_start = moe_now()};
    x.n_jobs = gather(rt, L, top_k, hidden);
    uint64_t prefetched = 0;
    if ((st = execute(rt, layer, &x, &prefetched)) != MOE_OK) return st;
    combine(&rt->work, n_tokens, L->desc.hidden, top_k, topk_weights, out);
    count_layer(rt, n_tokens, &x, &so, prefetched, t0, moe_now());
    rt->off.returned_at = moe_now();
    rt->look.next_layer = layer + 1 == rt->model->n_layers ? 0 : layer + 1;
    rt_check_lost(rt);
    return MOE_OK;
}

moe_status moe_layer_forward(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden,
                             uint32_t top_k, const int32_t *topk_ids, const float *topk_weights, float *out) {
    if (!rt_valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: not a runtime handle");
    moe_status st = rt_busy(rt, "moe_layer_forward");
    return st != MOE_OK ? st : rt_forward(rt, layer, n_tokens, hidden, top_k, topk_ids, topk_weights, out);
}

moe_status moe_dense_matmul(moe_runtime_t *rt, const void *w, moe_dtype dtype, const float *row_scales, uint32_t rows,
                            uint32_t cols, uint32_t n_tokens, const float *x, float *y) {
    if (!rt_valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_dense_matmul: not a runtime handle");
    if (rt->worker.inflight) return rt_busy(rt, "moe_dense_matmul");
    return moe_cpu_dense(rt->host.n_threads, false, w, dtype, row_scales, rows, cols, n_tokens, x, y);
}
