#define _POSIX_C_SOURCE 200809L /* access */
/* runtime.c - the runtime: resolves device and policy, and runs each MoE
 * layer as plan (sched) -> execute (cpu, gpu) -> combine in a fixed order.
 * This is the top of the library; it calls down into every layer and no
 * layer calls back up. */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "dense.h"
#include "engine.h"
#include "gpu.h"
#include "place.h"
#include "model.h"
#include "plan.h"
#include "plugin.h"
#include "profiler.h"
#include "scheduler.h"
#include "cudadev.h"
#include "simdev.h"
#include "teams.h"
#include "trace.h"
#include "topology.h"

#define MOE_MAX_THREADS 4096u

struct moe_runtime {
    uint32_t magic;
    moe_model_t *model; /* one reference held */
    moe_device_kind device;
    moe_policy_id policy;
    uint32_t n_threads;
    moe_teams teams;                        /* NUMA teams of the CPU engine */
    moe_profile profile;                    /* measured costs; empty without one */
    char profile_path[1024];                /* "" without one */
    char trace_path[1024];                  /* record the routing here at free; "" = no */
    moe_trace trace;                        /* what was recorded */
    uint32_t trace_next;                    /* layer the recording expects next */
    uint64_t trace_first;                   /* first token of the pass being recorded */
    uint32_t trace_tokens;                  /* its tokens */
    bool detected;                          /* topology is this host's */
    moe_cpu *cpu;                           /* the CPU expert engine */
    moe_logger log;
    moe_stats stats;

    /* MOE_DEVICE_SIM: the device, the scheduler that splits each layer,
     * and which expert each device slot holds. */
    moe_dev *dev;
    moe_sched *sched;
    uint32_t n_slots, max_experts;
    uint32_t *slot_key;         /* [n_slots]: layer * max_experts + expert, UINT32_MAX = none */
    moe_dev_event *slot_upload; /* [n_slots]: the upload that filled it */
    int32_t *slot_of;           /* [n_layers * max_experts]: its slot, -1 */
    moe_dev_event *gpu_ev;      /* [max_experts]: this layer's device runs */
    uint32_t *gpu_job;          /* [max_experts]: their group index */
    moe_cpu_task *gpu_task;     /* [max_experts]: their work, should the CPU have to redo it */
    uint64_t step;              /* forward passes (layer 0 calls) */
    double clock_us;            /* the scheduler's clock: the planned end of the last layer */
    uint64_t expert_bytes;
    bool warned_fallback;
    uint32_t dev_failures;      /* device operations failed in a row (refused or failed) */
    uint32_t *pred_m;           /* [n_layers * max_experts]: predicted tokens per expert (moe_runtime_predict) */
    bool *pred_set;             /* [n_layers]: a prediction is waiting for that layer */
    /* The predictor's measured accuracy by distance d (1..MOE_SCHED_MAX_DEPTH
     * layers ahead): each prediction kept by its distance until its layer
     * runs, then scored against the real routing. */
    uint32_t *acc_m;            /* [depth][n_layers * max_experts]: predicted tokens per expert */
    bool *acc_set;              /* [depth][n_layers] */
    uint64_t acc_hits[MOE_SCHED_MAX_DEPTH], acc_pairs[MOE_SCHED_MAX_DEPTH]; /* since creation */
    uint32_t next_layer;        /* the layer after the last one forwarded */
    double log_scale[2];        /* online refinement: log(measured / profile) for CPU and GPU expert times */
    moe_sched_guess *guess;     /* [MOE_SCHED_MAX_DEPTH * max_experts] */
    double returned_at;         /* when the last moe_layer_forward returned (the host's dense work follows) */
    struct pending_copy {       /* uploads whose times are not yet in the statistics */
        moe_dev_event ev;
        bool demand;            /* the current layer's own (a miss), not a prefetch */
    } *pend;
    uint32_t n_pend, cap_pend;

    /* moe_layer_forward_submit: a worker thread of the runtime runs one
     * forward at a time; inflight is the host thread's own flag. */
    bool inflight;
    bool worker_started, worker_stop, job_ready, job_done;
    pthread_t worker;
    pthread_mutex_t job_mu;
    pthread_cond_t job_cv;
    struct {
        uint32_t layer, n, top_k;
        const float *hidden, *weights;
        const int32_t *ids;
        float *out;
    } job;
    moe_status job_status;
    char job_error[512];

    /* Workspace, grown on demand and reused across calls. */
    moe_plan plan;
    moe_cpu_task *tasks;  /* capacity: the largest layer's expert count */
    uint32_t *pair_of;    /* [n_tokens * top_k] -> index into plan.pairs */
    float *xg, *yg;       /* [pairs, hidden] gathered inputs, expert outputs */
    size_t cap_pairs;     /* capacity of pair_of in pairs */
    size_t cap_rows;      /* capacity of xg and yg in floats */
};

static const char *const device_names[MOE_DEVICE_COUNT_] = {
    [MOE_DEVICE_AUTO] = "auto",
    [MOE_DEVICE_CPU] = "cpu",
    [MOE_DEVICE_SIM] = "sim",
    [MOE_DEVICE_CUDA] = "cuda",
};

const char *moe_device_name(moe_device_kind d) {
    return (unsigned)d < MOE_DEVICE_COUNT_ ? device_names[d] : "invalid";
}

moe_runtime_params moe_runtime_default_params(void) {
    return (moe_runtime_params){
        .struct_size = sizeof(moe_runtime_params),
        .device = MOE_DEVICE_AUTO,
        .policy = NULL,
        .n_threads = 0,
        .gpu_budget_bytes = 0,
        .gpu_budget_fraction = -1.0, /* unset: [tuning], else 0.5 */
        .topology = NULL,
        .log_fn = NULL,
        .log_user = NULL,
        .log_level = MOE_LOG_WARN,
        .profile_path = NULL,
        .profile_any_host = 0,
        .record_trace_path = NULL,
        .cuda_stream = NULL,
    };
}

static bool valid(const moe_runtime_t *rt) { return rt && rt->magic == MOE_MAGIC_RUNTIME; }

/* While a submitted forward is in flight, the runtime is the worker's. */
static moe_status busy(const moe_runtime_t *rt, const char *fn) {
    return rt->inflight ? moe_fail(MOE_ERR_STATE, "%s: a forward submitted with moe_layer_forward_submit is in flight; "
                                   "call moe_layer_wait first", fn)
                        : MOE_OK;
}

static void stop_worker(moe_runtime_t *rt);

static moe_status resolve_device(moe_runtime_t *rt, moe_device_kind want) {
    switch (want) {
    case MOE_DEVICE_AUTO: {
        /* The CUDA executor has not been run on a GPU yet: a GPU, if any,
         * is reported and the CPU runs every expert unless the host asks
         * for cuda. Counting devices creates no CUDA context and records no
         * error. */
        int n = moe_gpu_count();
        if (n > 0)
            moe_log(&rt->log, MOE_LOG_INFO, "%d CUDA device(s) found; device auto runs experts on the CPU, device "
                    "cuda (moe-run --device cuda) on the GPU", n);
        rt->device = MOE_DEVICE_CPU;
        return MOE_OK;
    }
    case MOE_DEVICE_CUDA:
        if (moe_gpu_count() <= 0) {
            char why[256] = "no CUDA device";
            if (moe_gpu_probe(0, NULL) != MOE_OK) snprintf(why, sizeof why, "%s", moe_last_error());
            return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device cuda: %s; device cpu or sim runs "
                            "without one", why);
        }
        rt->device = want;
        return MOE_OK;
    case MOE_DEVICE_CPU:
    case MOE_DEVICE_SIM:
        rt->device = want;
        return MOE_OK;
    case MOE_DEVICE_COUNT_:
        break;
    }
    return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: device %d is not a moe_device_kind", (int)want);
}

void moe_split_teams(const moe_topology_t *topo, uint32_t n_threads, moe_teams *out) {
    uint32_t cores[MOE_MAX_NUMA_NODES], n = 0;
    uint64_t total = 0;
    memset(out, 0, sizeof *out);
    for (uint32_t i = 0; i < topo->info.n_numa_nodes && i < MOE_MAX_NUMA_NODES; i++)
        if (topo->node_cores[i])
            out->node[n] = topo->node_os[i], out->index[n] = i, cores[n++] = topo->node_cores[i],
            total += topo->node_cores[i];
    if (n == 0 || n > n_threads) { /* fewer threads than nodes: one team */
        out->n = 1, out->size[0] = n_threads;
        return;
    }
    uint32_t sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t s = (uint64_t)n_threads * cores[i] / total;
        out->size[i] = s ? (uint32_t)s : 1, sum += out->size[i];
    }
    while (sum != n_threads) { /* fix rounding on the most (least) loaded node */
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++) {
            double ri = (double)cores[i] / out->size[i], rb = (double)cores[best] / out->size[best];
            if (sum < n_threads ? ri > rb : (out->size[i] > 1 && (ri < rb || out->size[best] == 1))) best = i;
        }
        if (sum < n_threads) out->size[best]++, sum++;
        else out->size[best]--, sum--;
    }
    out->n = n;
}

static moe_status resolve_threads(moe_runtime_t *rt, const moe_runtime_params *p) {
    moe_topology_t *own = NULL;
    const moe_topology_t *topo = p->topology;
    if (!topo) {
        moe_status st = moe_topology_detect(&own);
        if (st != MOE_OK) return st;
        topo = own;
        rt->detected = true;
    }
    if (topo->magic != MOE_MAGIC_TOPOLOGY) {
        moe_topology_free(&own);
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: params.topology is not a topology handle");
    }
    rt->n_threads = p->n_threads ? p->n_threads : topo->info.n_cores ? topo->info.n_cores : 1;
    if (rt->n_threads > MOE_MAX_THREADS) rt->n_threads = MOE_MAX_THREADS;
    /* No more threads than OpenMP will run (OMP_THREAD_LIMIT). */
    if (rt->n_threads > (uint32_t)omp_get_thread_limit()) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: %u threads asked, OpenMP allows %d", rt->n_threads,
                omp_get_thread_limit());
        rt->n_threads = (uint32_t)omp_get_thread_limit();
    }
    moe_split_teams(topo, rt->n_threads, &rt->teams);
    moe_topology_free(&own);
    return MOE_OK;
}

/* On a NUMA machine, moves each expert's weight pages to the node whose
 * team runs it (best effort: pages that cannot move stay and still work). */
static void place_experts(moe_runtime_t *rt) {
    if (rt->teams.n < 2 || !rt->detected) return;
    const moe_model_t *m = rt->model;
    uint64_t moved = 0, total = 0;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const moe_model_layer *L = &m->layers[l];
        const size_t b = (size_t)L->desc.hidden * L->desc.inter * moe_dtype_size(L->desc.weight_dtype);
        for (uint32_t e = 0; e < L->desc.n_experts; e++) {
            const uint32_t node = rt->teams.node[moe_cpu_home(e, rt->teams.n)];
            moved += moe_numa_move(L->experts[e].gate, b, node) + moe_numa_move(L->experts[e].up, b, node) +
                     moe_numa_move(L->experts[e].down, b, node);
            total += 3ull * b;
        }
    }
    moe_log(&rt->log, MOE_LOG_INFO, "cpu: placed %.1f of %.1f MB of expert weights on their home nodes",
            (double)moved / 1e6, (double)total / 1e6);
}

/* Loads the profile: a named file must be valid and this host's (unless
 * any_host); the default file is used only if it is. */
static moe_status load_profile(moe_runtime_t *rt, const moe_runtime_params *p) {
    char def[1024];
    const bool named = p->profile_path != NULL;
    const char *path = named ? p->profile_path : moe_profile_default_path(def, sizeof def) ? def : "";
    if (!path[0] || (!named && access(path, F_OK) != 0)) return MOE_OK;
    moe_status st = moe_profile_load(&rt->profile, path);
    char why[256] = "";
    if (st == MOE_OK && !p->profile_any_host) {
        moe_profile here;
        moe_profile_init(&here);
        st = moe_profiler_host(&here);
        if (st == MOE_OK && !moe_profile_matches(&rt->profile, &here, why, sizeof why))
            st = moe_fail(MOE_ERR_INVALID_ARG, "%s: a profile of another host or build (%s); run moe-profile "
                          "here, or set profile_any_host (moe-run --any-host) to use it anyway", path, why);
        moe_profile_clear(&here);
    }
    if (st != MOE_OK) {
        moe_profile_clear(&rt->profile);
        if (named) return st;
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: not using the default profile: %s", moe_last_error());
        return MOE_OK;
    }
    snprintf(rt->profile_path, sizeof rt->profile_path, "%s", path);
    moe_log(&rt->log, MOE_LOG_INFO, "runtime: profile %s (%s %s, %s, %u curves)", path, rt->profile.source,
            rt->profile.mode, rt->profile.created, rt->profile.n_curves);
    return MOE_OK;
}

static int32_t free_slot(moe_runtime_t *rt);

static moe_expert_view expert_view(const moe_model_layer *L, uint32_t e) {
    const moe_expert_weights *w = &L->experts[e];
    return (moe_expert_view){.gate = w->gate, .up = w->up, .down = w->down, .dtype = L->desc.weight_dtype,
                             .hidden = L->desc.hidden, .inter = L->desc.inter, .gate_scale = w->gate_scale,
                             .up_scale = w->up_scale, .down_scale = w->down_scale};
}

/* Remembers an upload so its stream time reaches the statistics once it
 * completes (harvest_copies). Statistics only: an upload that cannot be
 * remembered (no memory) is simply not counted. */
static void note_copy(moe_runtime_t *rt, moe_dev_event ev, bool demand) {
    if (rt->n_pend == rt->cap_pend) {
        const uint32_t cap = rt->cap_pend ? 2 * rt->cap_pend : 64;
        struct pending_copy *p = realloc(rt->pend, cap * sizeof *p);
        if (!p) return;
        rt->pend = p, rt->cap_pend = cap;
    }
    rt->pend[rt->n_pend++] = (struct pending_copy){ev, demand};
}

/* Adds the completed uploads' stream time to the statistics; returns the
 * part that was the current layer's own copies. */
static double harvest_copies(moe_runtime_t *rt) {
    double own = 0.0;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < rt->n_pend; i++) {
        double a, b;
        const moe_status st = moe_dev_times(rt->dev, rt->pend[i].ev, &a, &b);
        if (st == MOE_ERR_STATE) { /* in flight: a later call counts it */
            rt->pend[i].demand = false, rt->pend[keep++] = rt->pend[i];
            continue;
        }
        if (st != MOE_OK) continue; /* forgotten by the device: uncounted */
        rt->stats.gpu_copy_seconds += b - a;
        if (rt->pend[i].demand) own += b - a;
    }
    rt->n_pend = keep;
    return own;
}

/* The scheduler queued a prefetch of (layer, expert) and admitted it to
 * its cache: its upload starts now, on the device's copy stream. */
static void prefetch_expert(uint32_t layer, uint32_t expert, void *user) {
    moe_runtime_t *rt = user;
    const uint32_t key = layer * rt->max_experts + expert;
    if (rt->slot_of[key] >= 0) return;
    const int32_t slot = free_slot(rt);
    if (slot < 0) return; /* cannot happen (the cache holds no more than the pool); the expert is copied when run */
    const moe_expert_view v = expert_view(&rt->model->layers[layer], expert);
    if (moe_dev_upload(rt->dev, (uint32_t)slot, &v, &rt->slot_upload[slot]) != MOE_OK) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: prefetch of layer %u expert %u: %s", layer, expert, moe_last_error());
        return;
    }
    note_copy(rt, rt->slot_upload[slot], false);
    rt->slot_key[slot] = key, rt->slot_of[key] = slot;
}

/* The confidence the scheduler weighs a prediction d layers ahead with:
 * the fraction of predicted token-expert pairs that the real routing had,
 * as measured on this run, starting from published figures for router
 * lookahead (HybriMoE, ProMoE; moe-sim's defaults) that weigh as 256
 * measured pairs, so a few layers cannot swing it. */
static const double lookahead_prior[MOE_SCHED_MAX_DEPTH] = {0.85, 0.7, 0.6, 0.5};
_Static_assert(sizeof ((moe_stats *)0)->lookahead_pairs / sizeof(uint64_t) == MOE_SCHED_MAX_DEPTH,
               "moe_stats keeps one lookahead counter per prefetch distance");
enum { PRIOR_PAIRS = 256 };

static float lookahead_confidence(const moe_runtime_t *rt, uint32_t d) {
    return (float)((lookahead_prior[d - 1] * PRIOR_PAIRS + (double)rt->acc_hits[d - 1]) /
                   (double)(PRIOR_PAIRS + rt->acc_pairs[d - 1]));
}

/* Layer `layer` runs with these groups: scores the predictions made for it. */
static void score_predictions(moe_runtime_t *rt, uint32_t layer, const moe_plan *plan) {
    const size_t keys = (size_t)rt->model->n_layers * rt->max_experts;
    for (uint32_t d = 1; d <= MOE_SCHED_MAX_DEPTH; d++) {
        bool *set = &rt->acc_set[(size_t)(d - 1) * rt->model->n_layers + layer];
        if (!*set) continue;
        *set = false;
        const uint32_t *pm = rt->acc_m + (d - 1) * keys + (size_t)layer * rt->max_experts;
        uint64_t hits = 0, predicted = 0;
        for (uint32_t e = 0; e < rt->max_experts; e++) predicted += pm[e];
        for (uint32_t g = 0; g < plan->n_groups; g++) {
            const uint32_t want = pm[plan->groups[g].expert], got = plan->groups[g].n_tokens;
            hits += want < got ? want : got;
        }
        rt->acc_hits[d - 1] += hits, rt->acc_pairs[d - 1] += predicted;
        rt->stats.lookahead_hits[d - 1] += hits, rt->stats.lookahead_pairs[d - 1] += predicted;
    }
}

/* After layer `layer` is submitted: the predictions for the layers ahead,
 * as the scheduler's guesses; it queues the prefetches worth their copy. */
static uint64_t prefetch_ahead(moe_runtime_t *rt, uint32_t layer) {
    const uint32_t depth = moe_sched_depth(rt->sched), L = rt->model->n_layers;
    uint32_t n = 0;
    for (uint32_t d = 1; d <= depth && d <= MOE_SCHED_MAX_DEPTH && layer + d < L; d++) {
        const uint32_t l = layer + d;
        if (!rt->pred_set[l]) continue;
        for (uint32_t e = 0; e < rt->max_experts; e++) {
            const uint32_t m = rt->pred_m[(size_t)l * rt->max_experts + e];
            if (m) rt->guess[n++] = (moe_sched_guess){.layer = l, .expert = e, .m = m,
                                                      .confidence = lookahead_confidence(rt, d)};
        }
    }
    return n ? moe_sched_prefetch(rt->sched, layer, rt->clock_us, rt->guess, n) : 0;
}

uint32_t moe_runtime_lookahead(const moe_runtime_t *rt) {
    return valid(rt) && !rt->inflight && rt->sched ? moe_sched_depth(rt->sched) : 0;
}

moe_status moe_runtime_predict(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, uint32_t top_k,
                               const int32_t *topk_ids) {
    if (!valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_predict: not a runtime handle");
    if (rt->inflight) return busy(rt, "moe_runtime_predict");
    if (layer >= rt->model->n_layers)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_predict: layer %u out of range (model has %u)", layer,
                        rt->model->n_layers);
    const uint32_t E = rt->model->layers[layer].desc.n_experts;
    if (n_tokens && (!topk_ids || !top_k || top_k > E))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_predict: top_k = %u (1..%u) or topk_ids NULL", top_k, E);
    for (size_t i = 0; i < (size_t)n_tokens * top_k; i++)
        if (topk_ids[i] < 0 || (uint32_t)topk_ids[i] >= E)
            return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_predict: expert id %d out of range (layer %u has %u)",
                            (int)topk_ids[i], layer, E);
    if (!rt->sched || !moe_sched_depth(rt->sched)) return MOE_OK;
    uint32_t *m = rt->pred_m + (size_t)layer * rt->max_experts;
    memset(m, 0, rt->max_experts * sizeof *m);
    for (size_t i = 0; i < (size_t)n_tokens * top_k; i++) m[topk_ids[i]]++;
    rt->pred_set[layer] = n_tokens > 0;
    /* Kept by distance for scoring: from before the forward of next_layer. */
    const uint32_t d = layer - rt->next_layer;
    if (layer > rt->next_layer && d <= MOE_SCHED_MAX_DEPTH && n_tokens) {
        const size_t keys = (size_t)rt->model->n_layers * rt->max_experts;
        memcpy(rt->acc_m + (d - 1) * keys + (size_t)layer * rt->max_experts, m, rt->max_experts * sizeof *m);
        rt->acc_set[(size_t)(d - 1) * rt->model->n_layers + layer] = true;
    }
    return MOE_OK;
}

static void free_sim(moe_runtime_t *rt) {
    moe_dev_free(&rt->dev);
    moe_sched_free(&rt->sched);
    free(rt->slot_key), free(rt->slot_upload), free(rt->slot_of), free(rt->gpu_ev), free(rt->gpu_job);
    free(rt->gpu_task), free(rt->pred_m), free(rt->pred_set), free(rt->guess), free(rt->pend);
    free(rt->acc_m), free(rt->acc_set);
    rt->pred_m = NULL, rt->pred_set = NULL, rt->guess = NULL, rt->pend = NULL, rt->acc_m = NULL, rt->acc_set = NULL;
    rt->n_pend = rt->cap_pend = 0;
    rt->slot_key = NULL, rt->slot_upload = NULL, rt->slot_of = NULL, rt->gpu_ev = NULL, rt->gpu_job = NULL;
    rt->gpu_task = NULL;
}

/* The simulated device: the profile's first GPU, modeled; MOE_SIM_FAIL
 * and MOE_SIM_TIME_SCALE from the environment. */
static moe_status create_sim(moe_runtime_t *rt, uint64_t device_mem) {
    double scale = 0.0;
    const char *env = getenv("MOE_SIM_TIME_SCALE");
    if (env && *env) {
        char *end;
        scale = strtod(env, &end);
        if (*end || !(scale >= 0))
            return moe_fail(MOE_ERR_INVALID_ARG, "MOE_SIM_TIME_SCALE=\"%s\": not a number >= 0", env);
    }
    /* MOE_SIM_FAIL="alloc:N,upload:N,run:N,lost:N": the n-th such device
     * operation fails; lost: the n-th upload or run and all after it (the
     * fallbacks' tests, and a host's own). */
    uint32_t fail[4] = {0, 0, 0, 0};
    const char *names[4] = {"alloc", "upload", "run", "lost"};
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
        fail[k] = (uint32_t)v;
        f = *end ? end + 1 : end;
    }
    const moe_simdev_params sp = {.profile = &rt->profile, .gpu = 0, .time_scale = scale, .fail_alloc_at = fail[0],
                                  .fail_upload_at = fail[1], .fail_run_at = fail[2], .fail_from = fail[3],
                                  .host_clock = true,
                                  .memory_bytes = device_mem ? device_mem : (uint64_t)rt->n_slots * rt->expert_bytes,
                                  .compute_threads = 1};
    return moe_simdev_create(&rt->dev, &sp);
}

/* The GPU (MOE_DEVICE_SIM or MOE_DEVICE_CUDA): the device, a slot pool of
 * the budget, and the scheduler over both, planning with the profile's
 * costs for the profile's first GPU. Every MoE layer must have the same
 * expert shape (as every supported model's do): the scheduler costs one
 * expert shape. */
static moe_status setup_device(moe_runtime_t *rt, const moe_runtime_params *p) {
    const moe_model_t *m = rt->model;
    const moe_tuning *tun = &rt->profile.tuning;
    const moe_layer_desc *d0 = &m->layers[0].desc;
    const char *dev_name = moe_device_name(rt->device);
    uint64_t n_experts = 0;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const moe_layer_desc *d = &m->layers[l].desc;
        if (d->hidden != d0->hidden || d->inter != d0->inter || d->weight_dtype != d0->weight_dtype)
            return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device %s: layer %u's experts (%ux%u %s) differ "
                            "from layer 0's (%ux%u %s); the scheduler plans one expert shape", dev_name, l, d->hidden,
                            d->inter, moe_dtype_name(d->weight_dtype), d0->hidden, d0->inter,
                            moe_dtype_name(d0->weight_dtype));
        if (d->n_experts > rt->max_experts) rt->max_experts = d->n_experts;
        n_experts += d->n_experts;
    }
    if (!rt->profile.n_gpus) {
        const bool sim = rt->device == MOE_DEVICE_SIM;
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device %s %s a profile's [gpu] and [link] figures, "
                        "and %s%s; %s", dev_name, sim ? "models a GPU from" : "plans with",
                        rt->profile_path[0] ? rt->profile_path : "no profile is loaded",
                        rt->profile_path[0] ? " has none" : "",
                        sim ? "use a profile with a GPU, e.g. moe-run --profile "
                              "profiles/machines/ref-h100-pcie5-2s-xeon8480.txt --any-host"
                            : "run moe-profile on this machine (it measures the GPU)");
    }
    rt->expert_bytes = moe_dev_expert_bytes(d0->hidden, d0->inter, d0->weight_dtype);
    uint64_t budget = p->gpu_budget_bytes ? p->gpu_budget_bytes
                                          : (uint64_t)(p->gpu_budget_fraction * (double)(n_experts * rt->expert_bytes));
    const uint64_t device_mem = rt->profile.gpus[0].free_bytes;
    if (rt->device == MOE_DEVICE_SIM && device_mem && budget > device_mem) budget = device_mem;
    const uint64_t slots = budget / rt->expert_bytes;
    rt->n_slots = slots > n_experts ? (uint32_t)n_experts : (uint32_t)slots;
    moe_status st;
    if (rt->device == MOE_DEVICE_SIM) {
        st = create_sim(rt, device_mem);
    } else {
        const moe_cudadev_params cp = {.device = 0, .log = &rt->log, .host_stream = p->cuda_stream,
                                       .pin_limit_bytes = tun->set & MOE_TUNE_PINNED_LIMIT ? tun->pinned_limit_bytes : 0};
        st = moe_cudadev_create(&rt->dev, &cp);
    }
    if (st == MOE_OK) st = moe_dev_alloc_slots(rt->dev, rt->n_slots, rt->n_slots ? rt->expert_bytes : 0);
    /* Out of device memory: a smaller cache, down to one expert; below
     * that, every expert on the CPU. Warnings, not failures. */
    while (st == MOE_ERR_OUT_OF_MEMORY && rt->n_slots > 1) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: %s; trying %u slots", moe_last_error(), rt->n_slots / 2);
        rt->n_slots /= 2;
        st = moe_dev_alloc_slots(rt->dev, rt->n_slots, rt->expert_bytes);
    }
    if (st == MOE_ERR_OUT_OF_MEMORY) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: %s; running every expert on the CPU", moe_last_error());
        moe_dev_free(&rt->dev);
        rt->device = MOE_DEVICE_CPU;
        rt->policy = MOE_POLICY_STATIC_CPU;
        rt->n_slots = 0;
        return MOE_OK;
    }
    if (st != MOE_OK) return st;
    /* The scheduler's costs: the profile's CPU curves (or roofline) and
     * its GPU's runs, which the simulated device also charges, so plan and
     * simulated device agree. */
    enum { MAX_M = 512 };
    double cpu_us[MAX_M + 1], gpu_us[MAX_M + 1];
    for (uint32_t k = 0; k <= MAX_M; k++) {
        cpu_us[k] = k ? moe_profile_cpu_us(&rt->profile, d0->hidden, d0->inter, d0->weight_dtype, k, 0) : 0.0;
        gpu_us[k] = moe_profile_gpu_run_us(&rt->profile, 0, d0->hidden, d0->inter, d0->weight_dtype, k);
        if (cpu_us[k] < 0 || gpu_us[k] < 0)
            return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device %s: the profile %s has no %s cost for "
                            "%ux%u %s experts", dev_name, rt->profile_path, cpu_us[k] < 0 ? "CPU" : "GPU", d0->hidden,
                            d0->inter, moe_dtype_name(d0->weight_dtype));
    }
    /* [tuning]'s prefetch knobs belong to moerun's prefetcher; the MRS
     * weight to the score caches (hybrimoe). */
    const bool moerun = rt->policy == MOE_POLICY_MOERUN, tuned_depth = moerun && tun->set & MOE_TUNE_PREFETCH_DEPTH;
    const uint32_t depth = !tuned_depth ? 0 : tun->prefetch_depth < MOE_SCHED_MAX_DEPTH ? tun->prefetch_depth
                                                                                       : MOE_SCHED_MAX_DEPTH;
    if (tuned_depth && depth != tun->prefetch_depth)
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: [tuning] prefetch_depth %u; the runtime looks at most %d layers "
                "ahead", tun->prefetch_depth, MOE_SCHED_MAX_DEPTH);
    const moe_sched_config sc = {.depth = depth, .no_prefetch = tuned_depth && !depth, /* tuned 0: no prefetch */
                                 .min_gain_us = moerun && tun->set & MOE_TUNE_PREFETCH_MIN_GAIN ? tun->prefetch_min_gain_us
                                                                                                : 0.0,
                                 .score_alpha = tun->set & MOE_TUNE_MRS_ALPHA ? tun->mrs_alpha : 0.0,
                                 .on_prefetch = prefetch_expert, .user = rt, .policy = rt->policy, .n_layers = m->n_layers, .n_experts = rt->max_experts,
                                 .expert_bytes = rt->expert_bytes, .budget_bytes = (uint64_t)rt->n_slots * rt->expert_bytes,
                                 .max_tokens = MAX_M, .cpu_us = cpu_us, .gpu_us = gpu_us,
                                 .copy_us = moe_profile_copy_us(&rt->profile, 0, rt->expert_bytes, true)};
    if ((st = moe_sched_create(&rt->sched, &sc)) != MOE_OK) return st;
    const size_t keys = (size_t)m->n_layers * rt->max_experts;
    rt->slot_key = malloc((rt->n_slots ? rt->n_slots : 1) * sizeof *rt->slot_key);
    rt->slot_upload = calloc(rt->n_slots ? rt->n_slots : 1, sizeof *rt->slot_upload);
    rt->slot_of = malloc(keys * sizeof *rt->slot_of);
    rt->gpu_ev = malloc(rt->max_experts * sizeof *rt->gpu_ev);
    rt->gpu_job = malloc(rt->max_experts * sizeof *rt->gpu_job);
    rt->gpu_task = malloc(rt->max_experts * sizeof *rt->gpu_task);
    rt->pred_m = calloc(keys, sizeof *rt->pred_m);
    rt->pred_set = calloc(m->n_layers, sizeof *rt->pred_set);
    rt->acc_m = calloc(MOE_SCHED_MAX_DEPTH * keys, sizeof *rt->acc_m);
    rt->acc_set = calloc((size_t)MOE_SCHED_MAX_DEPTH * m->n_layers, sizeof *rt->acc_set);
    rt->guess = malloc((size_t)MOE_SCHED_MAX_DEPTH * rt->max_experts * sizeof *rt->guess);
    if (!rt->slot_key || !rt->slot_upload || !rt->slot_of || !rt->gpu_ev || !rt->gpu_job || !rt->gpu_task ||
        !rt->pred_m || !rt->pred_set || !rt->guess || !rt->acc_m || !rt->acc_set)
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_runtime_create: allocation failed");
    for (uint32_t i = 0; i < rt->n_slots; i++) rt->slot_key[i] = UINT32_MAX;
    for (size_t i = 0; i < keys; i++) rt->slot_of[i] = -1;
    moe_log(&rt->log, MOE_LOG_INFO, "runtime: %s %s, %u expert slots (%.1f MB), policy %s",
            rt->device == MOE_DEVICE_SIM ? "simulated" : "CUDA device 0, planned as", rt->profile.gpus[0].name,
            rt->n_slots, (double)rt->n_slots * (double)rt->expert_bytes / 1e6, moe_policy_name(rt->policy));
    return MOE_OK;
}

moe_status moe_runtime_create(moe_runtime_t **out, moe_model_t *model, const moe_runtime_params *params) {
    if (!out) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: out is NULL");
    *out = NULL;
    if (!moe_model_valid(model)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: not a model handle");
    /* Read struct_size first and copy no more than the caller's struct: a
     * caller built against a later header may pass a larger struct (its
     * extra fields are ignored); a smaller one predates this API version. */
    moe_runtime_params p = moe_runtime_default_params();
    if (params) {
        if (params->struct_size < sizeof p)
            return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: params.struct_size = %u, at least %zu "
                            "expected; start from moe_runtime_default_params()", params->struct_size, sizeof p);
        memcpy(&p, params, sizeof p);
    }
    if (!(p.gpu_budget_fraction <= 1.0) || (p.gpu_budget_fraction < 0 && p.gpu_budget_fraction != -1.0))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: gpu_budget_fraction = %g, must be in 0..1 (or -1: "
                        "the profile's [tuning], else 0.5)",
                        p.gpu_budget_fraction);
    if ((unsigned)p.log_level > MOE_LOG_DEBUG)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: log_level %d is not a moe_log_level",
                        (int)p.log_level);
    if (p.n_threads > MOE_MAX_THREADS)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: n_threads = %u, at most %u", p.n_threads,
                        MOE_MAX_THREADS);
    moe_status st = moe_model_check_complete(model);
    if (st != MOE_OK) return st;

    moe_runtime_t *rt = calloc(1, sizeof *rt);
    if (!rt) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_runtime_create: allocation failed");
    rt->log = (moe_logger){.fn = p.log_fn, .user = p.log_user, .level = p.log_level};
    moe_plan_init(&rt->plan);
    moe_profile_init(&rt->profile);
    moe_trace_init(&rt->trace);
    if (p.record_trace_path) {
        if (!p.record_trace_path[0] || strlen(p.record_trace_path) >= sizeof rt->trace_path) {
            st = moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: record_trace_path is empty or too long");
            goto fail;
        }
        snprintf(rt->trace_path, sizeof rt->trace_path, "%s", p.record_trace_path);
    }
    if ((st = load_profile(rt, &p)) != MOE_OK) goto fail;
    /* [tuning] fills what the params leave unset. */
    const moe_tuning *tun = &rt->profile.tuning;
    if ((st = resolve_device(rt, p.device)) != MOE_OK) goto fail;
    const char *policy = p.policy && strcmp(p.policy, "auto") != 0 ? p.policy
                         : tun->set & MOE_TUNE_POLICY && strcmp(tun->policy, "auto") != 0 ? tun->policy
                         : rt->device == MOE_DEVICE_SIM || rt->device == MOE_DEVICE_CUDA ? "moerun"
                                                        : "static-cpu";
    if (!p.gpu_budget_bytes && p.gpu_budget_fraction < 0) { /* unset: [tuning], else half the experts */
        const bool tuned = tun->set & MOE_TUNE_GPU_BUDGET;
        p.gpu_budget_bytes = tuned ? tun->gpu_budget_bytes : 0;
        p.gpu_budget_fraction = tuned && !tun->gpu_budget_bytes ? tun->gpu_budget_fraction : 0.5;
    }
    if (!p.n_threads && tun->set & MOE_TUNE_THREADS_PER_NODE && tun->threads_per_node) {
        uint32_t nodes = 0;
        for (uint32_t i = 0; i < rt->profile.topo.n_numa_nodes; i++) nodes += rt->profile.node_cores[i] > 0;
        p.n_threads = tun->threads_per_node * (nodes ? nodes : 1);
        if (p.n_threads > MOE_MAX_THREADS) p.n_threads = MOE_MAX_THREADS;
    }
    if ((st = moe_policy_lookup(policy, &rt->policy)) != MOE_OK || (st = resolve_threads(rt, &p)) != MOE_OK)
        goto fail;
    if (rt->policy == MOE_POLICY_ORACLE) {
        st = moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: policy oracle knows the future routing; it exists "
                      "only in the simulator (moe-sim)");
        goto fail;
    }
    if (rt->policy != MOE_POLICY_STATIC_CPU && rt->device == MOE_DEVICE_CPU) {
        st = moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: policy %s places experts on a GPU; this "
                      "runtime runs on the CPU, where only static-cpu applies", moe_policy_name(rt->policy));
        goto fail;
    }
    uint32_t max_experts = 0;
    for (uint32_t l = 0; l < model->n_layers; l++)
        if (model->layers[l].desc.n_experts > max_experts) max_experts = model->layers[l].desc.n_experts;
    rt->tasks = calloc(max_experts, sizeof *rt->tasks);
    if (!rt->tasks) {
        st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_runtime_create: allocation failed");
        goto fail;
    }
    moe_cpu_params cp = {.n_threads = rt->n_threads, .n_teams = rt->teams.n, .team_size = rt->teams.size,
                         .team_node = rt->teams.node, .bind_threads = rt->detected, .log = &rt->log};
    if ((st = moe_cpu_create(&rt->cpu, &cp)) != MOE_OK) goto fail;
    for (uint32_t l = 0; l < model->n_layers; l++) { /* every primitive now, none on the hot path */
        const moe_layer_desc *d = &model->layers[l].desc;
        if ((st = moe_cpu_prepare(rt->cpu, d->hidden, d->inter, d->weight_dtype)) != MOE_OK) goto fail;
    }
    moe_model_retain(model);
    rt->model = model;
    if ((rt->device == MOE_DEVICE_SIM || rt->device == MOE_DEVICE_CUDA) && (st = setup_device(rt, &p)) != MOE_OK) {
        rt->model = NULL;
        moe_model_free(&model);
        goto fail;
    }
    place_experts(rt);
    rt->magic = MOE_MAGIC_RUNTIME;
    moe_log(&rt->log, MOE_LOG_INFO, "runtime: device %s, policy %s, %u threads in %u NUMA team(s)",
            moe_device_name(rt->device), moe_policy_name(rt->policy), rt->n_threads, rt->teams.n);
    *out = rt;
    return MOE_OK;
fail:
    free_sim(rt);
    moe_profile_clear(&rt->profile);
    moe_cpu_free(&rt->cpu);
    free(rt->tasks);
    free(rt);
    return st;
}

void moe_runtime_free(moe_runtime_t **prt) {
    if (!prt || !*prt) return;
    moe_runtime_t *rt = *prt;
    *prt = NULL;
    if (!valid(rt)) return;
    stop_worker(rt); /* waits for a submitted forward */
    moe_plan_release(&rt->plan);
    moe_profile_clear(&rt->profile);
    if (rt->trace_next != 0 && rt->trace.n_tokens >= rt->trace_tokens) { /* a pass left unfinished */
        rt->trace.n_tokens -= rt->trace_tokens;
        rt->trace.seqs[rt->trace.n_seqs - 1].n -= rt->trace_tokens;
    }
    if (rt->trace_path[0] && rt->trace.n_tokens) {
        if (moe_trace_write(&rt->trace, rt->trace_path) == MOE_OK)
            moe_log(&rt->log, MOE_LOG_INFO, "runtime: wrote the routing of %llu tokens to %s",
                    (unsigned long long)rt->trace.n_tokens, rt->trace_path);
        else
            moe_log(&rt->log, MOE_LOG_ERROR, "runtime: %s", moe_last_error());
    }
    moe_trace_free(&rt->trace);
    free_sim(rt);
    moe_cpu_free(&rt->cpu);
    free(rt->tasks);
    free(rt->pair_of);
    free(rt->xg);
    free(rt->yg);
    moe_model_free(&rt->model);
    rt->magic = 0;
    free(rt);
}

const moe_model_t *moe_runtime_model_of(const moe_runtime_t *rt) { return valid(rt) ? rt->model : NULL; }

bool moe_runtime_inflight(const moe_runtime_t *rt) { return valid(rt) && rt->inflight; }

moe_device_kind moe_runtime_device(const moe_runtime_t *rt) {
    return valid(rt) ? rt->device : MOE_DEVICE_COUNT_;
}

const char *moe_runtime_profile(const moe_runtime_t *rt) { return valid(rt) ? rt->profile_path : NULL; }

double moe_runtime_cpu_cost_us(const moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens) {
    if (!valid(rt) || !rt->profile_path[0] || layer >= rt->model->n_layers) return -1.0;
    const moe_layer_desc *d = &rt->model->layers[layer].desc;
    return moe_profile_cpu_us(&rt->profile, d->hidden, d->inter, d->weight_dtype, n_tokens, 0);
}

const char *moe_runtime_policy(const moe_runtime_t *rt) {
    return valid(rt) ? moe_policy_name(rt->policy) : NULL;
}

/* Grows the per-call buffers for n_pairs pairs of width `hidden`. */
static moe_status reserve(moe_runtime_t *rt, size_t n_pairs, uint32_t hidden) {
    size_t rows;
    if (!moe_mul_size(n_pairs, hidden, &rows))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: batch too large");
    if (n_pairs > rt->cap_pairs) {
        uint32_t *p = realloc(rt->pair_of, n_pairs * sizeof *p);
        if (!p) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_layer_forward: allocation failed");
        rt->pair_of = p;
        rt->cap_pairs = n_pairs;
    }
    if (rows > rt->cap_rows) {
        float *x = realloc(rt->xg, rows * sizeof *x);
        if (!x) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_layer_forward: allocation failed");
        rt->xg = x;
        float *y = realloc(rt->yg, rows * sizeof *y);
        if (!y) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_layer_forward: allocation failed");
        rt->yg = y;
        rt->cap_rows = rows;
    }
    return MOE_OK;
}

static bool overlaps(const void *a, const void *b, size_t bytes) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y + bytes && y < x + bytes;
}

/* Records a validated layer call into the trace: layer 0 opens a pass of
 * n_tokens tokens, the others fill it in order. Anything else stops the
 * recording for good (a warning, once). */
static void record(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, uint32_t top_k, const int32_t *ids,
                   const float *w) {
    moe_trace *t = &rt->trace;
    if (layer == 0 && rt->trace_next == 0 && !t->n_layers) {
        uint32_t experts = 0;
        for (uint32_t l = 0; l < rt->model->n_layers; l++)
            if (rt->model->layers[l].desc.n_experts > experts) experts = rt->model->layers[l].desc.n_experts;
        moe_trace_begin(t, "moerun", rt->model->n_layers, experts, top_k);
    }
    const bool in_order = layer == rt->trace_next && t->top_k == top_k && (layer == 0 || n_tokens == rt->trace_tokens) &&
                          rt->model->layers[layer].desc.n_experts <= MOE_TRACE_MAX_EXPERTS;
    if (!in_order || (layer == 0 && moe_trace_add_tokens(t, n_tokens, "run", &rt->trace_first) != MOE_OK)) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: layers called out of order (layer %u, %u tokens, top_k %u); "
                "no routing trace will be written", layer, n_tokens, top_k);
        rt->trace_path[0] = '\0';
        moe_trace_free(t);
        return;
    }
    if (layer == 0) rt->trace_tokens = n_tokens;
    for (uint32_t i = 0; i < n_tokens; i++)
        for (uint32_t k = 0; k < top_k; k++) {
            const size_t at = ((rt->trace_first + i) * t->n_layers + layer) * t->top_k + k;
            t->ids[at] = (uint16_t)ids[(size_t)i * top_k + k];
            t->weights[at] = w[(size_t)i * top_k + k];
        }
    rt->trace_next = layer + 1 == rt->model->n_layers ? 0 : layer + 1;
}

moe_status moe_dense_matmul(moe_runtime_t *rt, const void *w, moe_dtype dtype, const float *row_scales, uint32_t rows,
                            uint32_t cols, uint32_t n_tokens, const float *x, float *y) {
    if (!valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_dense_matmul: not a runtime handle");
    if (rt->inflight) return busy(rt, "moe_dense_matmul");
    return moe_cpu_dense(rt->n_threads, false, w, dtype, row_scales, rows, cols, n_tokens, x, y);
}

/* A device slot for (layer, expert), which the scheduler has just admitted
 * to its cache: one whose expert the cache no longer holds (the cache's
 * capacity is the pool's, so one exists; -1 would be a bug). */
static int32_t free_slot(moe_runtime_t *rt) {
    const moe_cache *c = moe_sched_cache(rt->sched);
    for (uint32_t i = 0; i < rt->n_slots; i++) {
        const uint32_t k = rt->slot_key[i];
        if (k == UINT32_MAX || !moe_cache_resident(c, k / rt->max_experts, k % rt->max_experts)) {
            if (k != UINT32_MAX) rt->slot_of[k] = -1;
            rt->slot_key[i] = UINT32_MAX;
            return (int32_t)i;
        }
    }
    return -1;
}

/* Submits the plan's GPU groups: an upload where the expert is not in a
 * slot yet, then its run after that upload. A group that cannot be placed
 * goes back to the CPU. */
static moe_status submit_gpu(moe_runtime_t *rt, uint32_t layer, uint32_t *n_gpu) {
    moe_plan *plan = &rt->plan;
    uint32_t n = 0;
    for (uint32_t g = 0; g < plan->n_groups; g++) {
        moe_plan_group *grp = &plan->groups[g];
        if (grp->where != MOE_ON_GPU) continue;
        const uint32_t key = layer * rt->max_experts + grp->expert;
        int32_t slot = rt->slot_of[key];
        moe_status st = MOE_OK;
        if (slot < 0) {
            if ((slot = free_slot(rt)) < 0) {
                moe_log(&rt->log, MOE_LOG_ERROR, "runtime: no free device slot for layer %u expert %u (a bug: the "
                        "cache holds more than the pool); it runs on the CPU", layer, grp->expert);
                grp->where = MOE_ON_CPU;
                continue;
            }
            st = moe_dev_upload(rt->dev, (uint32_t)slot, &rt->tasks[g].w, &rt->slot_upload[slot]);
            if (st == MOE_OK) rt->slot_key[slot] = key, rt->slot_of[key] = slot, note_copy(rt, rt->slot_upload[slot], true);
        }
        if (st == MOE_OK)
            st = moe_dev_run(rt->dev, (uint32_t)slot, rt->tasks[g].m, rt->tasks[g].x, rt->tasks[g].y,
                             rt->slot_upload[slot], &rt->gpu_ev[n]);
        if (st != MOE_OK) { /* refused at submission: the CPU computes it */
            rt->dev_failures++;
            moe_log(&rt->log, MOE_LOG_WARN, "runtime: device: %s; layer %u expert %u runs on the CPU", moe_last_error(),
                    layer, grp->expert);
            grp->where = MOE_ON_CPU;
            continue;
        }
        rt->gpu_task[n] = rt->tasks[g];
        rt->gpu_job[n++] = g;
    }
    *n_gpu = n;
    return MOE_OK;
}

/* Waits for the device's runs; one that failed (a copy or a kernel) is
 * recomputed on the CPU, its slot forgotten so the next use uploads
 * again, and the error reported once. */
static moe_status collect_gpu(moe_runtime_t *rt, uint32_t layer, uint32_t n_gpu, uint32_t *redone, double *redo_s) {
    uint32_t n_redo = 0;
    for (uint32_t i = 0; i < n_gpu; i++) {
        const uint32_t g = rt->gpu_job[i];
        if (moe_dev_wait(rt->dev, rt->gpu_ev[i]) == MOE_OK) {
            rt->dev_failures = 0;
            continue;
        }
        rt->dev_failures++;
        if (!rt->warned_fallback) {
            moe_log(&rt->log, MOE_LOG_WARN, "runtime: device: %s; recomputing on the CPU (reported once)",
                    moe_last_error());
            rt->warned_fallback = true;
        }
        const uint32_t key = layer * rt->max_experts + rt->plan.groups[g].expert;
        const int32_t slot = rt->slot_of[key];
        if (slot >= 0) rt->slot_key[slot] = UINT32_MAX, rt->slot_of[key] = -1;
        rt->plan.groups[g].where = MOE_ON_CPU;
        rt->tasks[n_redo++] = rt->gpu_task[i]; /* the CPU's tasks are done: their array is free */
    }
    *redone = n_redo;
    const double t = moe_now();
    const moe_status st = n_redo ? moe_cpu_run(rt->cpu, rt->tasks, n_redo) : MOE_OK;
    *redo_s = n_redo ? moe_now() - t : 0.0;
    return st;
}

/* The stream time of this layer's GPU runs (all completed): their sum,
 * and the end of the last, on the host's clock. */
static double gpu_run_times(moe_runtime_t *rt, uint32_t n_gpu, double *last_end) {
    double sum = 0.0;
    for (uint32_t i = 0; i < n_gpu; i++) {
        double a, b;
        if (moe_dev_times(rt->dev, rt->gpu_ev[i], &a, &b) != MOE_OK) continue;
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
    double scale[2];
    moe_sched_cost_scales(rt->sched, &scale[0], &scale[1]);
    double table[2] = {0.0, 0.0};
    const moe_plan *plan = &rt->plan;
    for (uint32_t g = 0; g < plan->n_groups; g++) {
        const uint32_t m = plan->groups[g].n_tokens;
        if (plan->groups[g].where == MOE_ON_GPU) table[1] += moe_sched_gpu_us(rt->sched, m) / scale[1];
        else table[0] += moe_sched_cpu_us(rt->sched, m) / scale[0];
    }
    const double measured[2] = {cpu_us, gpu_us};
    for (int k = 0; k < 2; k++) {
        if (!(table[k] > 0) || !(measured[k] > 0) || (k == 0 && measured[k] < REFINE_MIN_CPU_US)) continue;
        double v = (1 - REFINE_WEIGHT) * rt->log_scale[k] + REFINE_WEIGHT * log(measured[k] / table[k]);
        rt->log_scale[k] = v > REFINE_BOUND ? REFINE_BOUND : v < -REFINE_BOUND ? -REFINE_BOUND : v;
    }
    moe_sched_scale_costs(rt->sched, exp(rt->log_scale[0]), exp(rt->log_scale[1]));
}

/* A device whose operations keep failing is gone (a lost or reset GPU, a
 * broken context): every expert runs on the CPU from then on. */
enum { DEVICE_LOST_AFTER = 8 };

static void lose_device(moe_runtime_t *rt) {
    moe_log(&rt->log, MOE_LOG_WARN, "runtime: the GPU failed %u operations in a row (last: %s); running every expert "
            "on the CPU from now on", rt->dev_failures, moe_last_error());
    free_sim(rt);
    rt->device = MOE_DEVICE_CPU;
    rt->policy = MOE_POLICY_STATIC_CPU;
    rt->n_slots = 0;
}

/* The arguments of a forward, checked before any work (and before a
 * submission returns). */
static moe_status check_forward(const moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden,
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

static moe_status forward(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden, uint32_t top_k,
                          const int32_t *topk_ids, const float *topk_weights, float *out) {
    moe_status st = check_forward(rt, layer, n_tokens, hidden, top_k, topk_ids, topk_weights, out);
    if (st != MOE_OK || n_tokens == 0) return st;
    const moe_model_layer *L = &rt->model->layers[layer];
    const uint32_t H = L->desc.hidden;
    const size_t n_pairs = (size_t)n_tokens * top_k;
    double t0 = moe_now();
    moe_plan *plan = &rt->plan;
    if ((st = moe_plan_route(plan, layer, L->desc.n_experts, n_tokens, top_k, topk_ids)) != MOE_OK) return st;
    if (rt->trace_path[0]) record(rt, layer, n_tokens, top_k, topk_ids, topk_weights);
    moe_sched_layer_out so = {0};
    if (rt->sched) {
        if (layer == 0) rt->step++;
        /* The layer starts after the host's dense work since the last
         * layer returned (it runs on this CPU here, at its real speed). */
        if (rt->returned_at > 0) rt->clock_us += (t0 - rt->returned_at) * 1e6;
        if ((st = moe_sched_layer(rt->sched, plan, rt->step, rt->clock_us, NULL, &so)) != MOE_OK) return st;
        rt->clock_us = so.end_us;
        rt->pred_set[layer] = false; /* its prediction is spent */
        score_predictions(rt, layer, plan);
    } else {
        moe_plan_assign(plan, rt->policy, NULL);
    }
    if ((st = reserve(rt, n_pairs, H)) != MOE_OK) return st;
    double t1 = moe_now();

    /* Gather each group's token rows contiguously and remember where each
     * (token, slot) pair's output will land. */
    for (size_t i = 0; i < n_pairs; i++) {
        const moe_plan_pair *pr = &plan->pairs[i];
        memcpy(rt->xg + i * H, hidden + (size_t)pr->token * H, H * sizeof(float));
        rt->pair_of[(size_t)pr->token * top_k + pr->slot] = (uint32_t)i;
    }
    uint32_t n_jobs = 0;
    for (uint32_t g = 0; g < plan->n_groups; g++) {
        const moe_plan_group *grp = &plan->groups[g];
        rt->tasks[n_jobs++] = (moe_cpu_task){
            .w = expert_view(L, grp->expert),
            .team = moe_cpu_home(grp->expert, rt->teams.n),
            .m = grp->n_tokens,
            .x = rt->xg + (size_t)grp->first * H,
            .y = rt->yg + (size_t)grp->first * H,
        };
    }
    /* The device's groups go out first (their uploads, then their runs);
     * the CPU runs its own meanwhile; then the device's are collected. */
    uint32_t n_gpu = 0, n_cpu = n_jobs;
    if (rt->dev && (st = submit_gpu(rt, layer, &n_gpu)) != MOE_OK) return st;
    const uint64_t prefetched = rt->sched ? prefetch_ahead(rt, layer) : 0;
    if (n_gpu) { /* the CPU's tasks: those not submitted, compacted */
        n_cpu = 0;
        for (uint32_t g = 0; g < n_jobs; g++)
            if (plan->groups[g].where != MOE_ON_GPU) rt->tasks[n_cpu++] = rt->tasks[g];
    }
    const double tc = moe_now();
    if ((st = moe_cpu_run(rt->cpu, rt->tasks, n_cpu)) != MOE_OK) {
        for (uint32_t i = 0; i < n_gpu; i++) (void)moe_dev_wait(rt->dev, rt->gpu_ev[i]); /* they write into yg */
        return st;
    }
    double t2 = moe_now();
    uint32_t n_redo = 0;
    double redo_s = 0.0;
    if (n_gpu && (st = collect_gpu(rt, layer, n_gpu, &n_redo, &redo_s)) != MOE_OK) return st;
    double t2g = moe_now();
    if (rt->dev) { /* the streams' times, and this layer's overlap */
        double end = t2;
        const double runs = gpu_run_times(rt, n_gpu, &end), own_copies = harvest_copies(rt);
        rt->stats.gpu_compute_seconds += runs;
        if (n_gpu) {
            rt->stats.hybrid_layers++;
            rt->stats.hybrid_span_seconds += (n_redo ? t2g : end) - t1;
            rt->stats.hybrid_serial_seconds += (t2 - t1) + own_copies + runs + redo_s;
        }
        if (!n_redo) refine_costs(rt, n_cpu ? (t2 - tc) * 1e6 : 0.0, runs * 1e6);
    }
    n_gpu -= n_redo;

    /* Combine in slot order so the sum never depends on the split. */
    for (uint32_t t = 0; t < n_tokens; t++) {
        float *o = out + (size_t)t * H;
        memset(o, 0, H * sizeof(float));
        for (uint32_t j = 0; j < top_k; j++) {
            const float wgt = topk_weights[(size_t)t * top_k + j];
            const float *y = rt->yg + (size_t)rt->pair_of[(size_t)t * top_k + j] * H;
            for (uint32_t i = 0; i < H; i++) o[i] += wgt * y[i];
        }
    }
    double t3 = moe_now();

    rt->stats.layer_calls++;
    rt->stats.tokens += n_tokens;
    rt->stats.expert_calls_cpu += n_jobs - n_gpu;
    rt->stats.expert_calls_gpu += n_gpu;
    rt->stats.gpu_redone += n_redo;
    rt->stats.gpu_hits += rt->sched && so.n_gpu > so.n_copied ? so.n_gpu - so.n_copied : 0;
    rt->stats.gpu_misses += rt->sched ? so.n_copied : 0;
    rt->stats.bytes_copied += rt->sched ? so.bytes_copied + prefetched : 0;
    rt->stats.expert_tokens += n_pairs;
    rt->stats.plan_seconds += t1 - t0;
    rt->stats.cpu_seconds += t2 - t1;
    rt->stats.gpu_seconds += t2g - t2;
    rt->stats.total_seconds += t3 - t0;
    rt->returned_at = moe_now();
    rt->next_layer = layer + 1 == rt->model->n_layers ? 0 : layer + 1;
    if (rt->dev && rt->dev_failures >= DEVICE_LOST_AFTER) lose_device(rt);
    return MOE_OK;
}

moe_status moe_layer_forward(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden,
                             uint32_t top_k, const int32_t *topk_ids, const float *topk_weights, float *out) {
    if (!valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward: not a runtime handle");
    moe_status st = busy(rt, "moe_layer_forward");
    return st != MOE_OK ? st : forward(rt, layer, n_tokens, hidden, top_k, topk_ids, topk_weights, out);
}

static void *worker_main(void *arg) {
    moe_runtime_t *rt = arg;
    pthread_mutex_lock(&rt->job_mu);
    for (;;) {
        while (!rt->job_ready && !rt->worker_stop) pthread_cond_wait(&rt->job_cv, &rt->job_mu);
        if (rt->worker_stop) break;
        rt->job_ready = false;
        pthread_mutex_unlock(&rt->job_mu);
        const moe_status st = forward(rt, rt->job.layer, rt->job.n, rt->job.hidden, rt->job.top_k, rt->job.ids,
                                      rt->job.weights, rt->job.out);
        pthread_mutex_lock(&rt->job_mu);
        rt->job_status = st;
        /* The message lives in this thread's last error: the waiter gets a copy. */
        snprintf(rt->job_error, sizeof rt->job_error, "%s", st != MOE_OK ? moe_last_error() : "");
        rt->job_done = true;
        pthread_cond_broadcast(&rt->job_cv);
    }
    pthread_mutex_unlock(&rt->job_mu);
    return NULL;
}

moe_status moe_layer_forward_submit(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden,
                                    uint32_t top_k, const int32_t *topk_ids, const float *topk_weights, float *out) {
    if (!valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward_submit: not a runtime handle");
    moe_status st = busy(rt, "moe_layer_forward_submit");
    if (st == MOE_OK) st = check_forward(rt, layer, n_tokens, hidden, top_k, topk_ids, topk_weights, out);
    if (st != MOE_OK) return st;
    if (!rt->worker_started) {
        pthread_mutex_init(&rt->job_mu, NULL);
        pthread_cond_init(&rt->job_cv, NULL);
        rt->worker_stop = rt->job_ready = rt->job_done = false;
        if (pthread_create(&rt->worker, NULL, worker_main, rt) != 0) {
            pthread_cond_destroy(&rt->job_cv);
            pthread_mutex_destroy(&rt->job_mu);
            return moe_fail(MOE_ERR_INTERNAL, "moe_layer_forward_submit: could not start the runtime's thread");
        }
        rt->worker_started = true;
    }
    pthread_mutex_lock(&rt->job_mu);
    rt->job.layer = layer, rt->job.n = n_tokens, rt->job.top_k = top_k;
    rt->job.hidden = hidden, rt->job.ids = topk_ids, rt->job.weights = topk_weights, rt->job.out = out;
    rt->job_done = false;
    rt->job_ready = true;
    pthread_cond_broadcast(&rt->job_cv);
    pthread_mutex_unlock(&rt->job_mu);
    rt->inflight = true;
    return MOE_OK;
}

moe_status moe_layer_wait(moe_runtime_t *rt) {
    if (!valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_wait: not a runtime handle");
    if (!rt->inflight) return moe_fail(MOE_ERR_STATE, "moe_layer_wait: no forward was submitted");
    pthread_mutex_lock(&rt->job_mu);
    while (!rt->job_done) pthread_cond_wait(&rt->job_cv, &rt->job_mu);
    const moe_status st = rt->job_status;
    char msg[sizeof rt->job_error];
    memcpy(msg, rt->job_error, sizeof msg);
    pthread_mutex_unlock(&rt->job_mu);
    rt->inflight = false;
    return st == MOE_OK ? MOE_OK : moe_fail(st, "%s", msg);
}

static void stop_worker(moe_runtime_t *rt) {
    if (!rt->worker_started) return;
    if (rt->inflight) (void)moe_layer_wait(rt);
    pthread_mutex_lock(&rt->job_mu);
    rt->worker_stop = true;
    pthread_cond_broadcast(&rt->job_cv);
    pthread_mutex_unlock(&rt->job_mu);
    pthread_join(rt->worker, NULL);
    pthread_cond_destroy(&rt->job_cv);
    pthread_mutex_destroy(&rt->job_mu);
    rt->worker_started = false;
}

/* moe_stats as API 4 declared it: the fields up to total_seconds. */
#define STATS_V4_BYTES (offsetof(moe_stats, total_seconds) + sizeof(double))

moe_status moe_runtime_stats(const moe_runtime_t *rt, moe_stats *out, size_t out_size) {
    if (!valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_stats: not a runtime handle");
    if (busy(rt, "moe_runtime_stats") != MOE_OK) return MOE_ERR_STATE;
    const size_t v4 = STATS_V4_BYTES;
    if (!out || out_size < v4)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_stats: out is NULL or smaller (%zu bytes) than API 4's "
                        "moe_stats (%zu)", out ? out_size : 0, v4);
    moe_stats s = rt->stats;
    s.cpu_cost_scale = s.gpu_cost_scale = 0.0;
    if (rt->sched) moe_sched_cost_scales(rt->sched, &s.cpu_cost_scale, &s.gpu_cost_scale);
    if (out_size > sizeof *out) memset((char *)out + sizeof *out, 0, out_size - sizeof *out);
    memcpy(out, &s, out_size < sizeof *out ? out_size : sizeof *out);
    return MOE_OK;
}

#undef moe_runtime_get_stats
moe_status moe_runtime_get_stats(const moe_runtime_t *rt, moe_stats *out) {
    return moe_runtime_stats(rt, out, STATS_V4_BYTES);
}

moe_status moe_runtime_reset_stats(moe_runtime_t *rt) {
    if (!valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_reset_stats: not a runtime handle");
    if (busy(rt, "moe_runtime_reset_stats") != MOE_OK) return MOE_ERR_STATE;
    memset(&rt->stats, 0, sizeof rt->stats);
    return MOE_OK;
}
