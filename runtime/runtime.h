/* runtime.h - the runtime handle as its phases share it (internal).
 *
 * The runtime is the top of the library: it resolves the device and the
 * policy, then runs each MoE layer as plan (sched/) -> execute (cpu/,
 * gpu/) -> combine in a fixed order. Each phase has a file:
 *   runtime.c    the handle: parameters, create and free, accessors, statistics
 *   setup.c      creation's steps: profile, threads and NUMA teams, the device
 *                (through gpu/'s registry) and the scheduler that splits layers
 *   forward.c    one layer's forward: check, plan, gather, execute, combine
 *   offload.c    the device's side of a forward: slots, uploads, runs, the
 *                CPU's fallback, measured times and the costs they refine
 *   lookahead.c  router lookahead: predictions, their measured accuracy, prefetch
 *   worker.c     moe_layer_forward_submit / moe_layer_wait on a thread of the runtime
 *   record.c     the routing trace a runtime records (moe-trace v1)
 *   teams.c      NUMA teams (shared with the profiler)
 * and each calls only downward (setup -> offload, lookahead; forward ->
 * offload, lookahead, record; worker -> forward), never in a circle. */
#ifndef MOE_RUNTIME_RUNTIME_H
#define MOE_RUNTIME_RUNTIME_H

#include <pthread.h>

#include "device.h"
#include "engine.h"
#include "model_registry.h"
#include "plan.h"
#include "profile.h"
#include "scheduler.h"
#include "teams.h"
#include "trace.h"

#define MOE_MAX_THREADS 4096u

/* The CPU side: threads, NUMA teams and the expert engine. */
typedef struct rt_host {
    uint32_t n_threads;
    moe_teams teams;
    bool detected; /* the topology is this host's (threads may be bound, pages moved) */
    moe_cpu *engine;
} rt_host;

/* The machine profile the runtime plans with. */
typedef struct rt_profile {
    moe_profile profile; /* empty without one */
    char path[1024];     /* "" without one */
} rt_profile;

/* The routing recorded for moe-sim (record_trace_path). */
typedef struct rt_recorder {
    char path[1024]; /* written at free; "" = not recording */
    moe_trace trace;
    uint32_t next;   /* the layer the recording expects next */
    uint64_t first;  /* first token of the pass being recorded */
    uint32_t tokens; /* its tokens */
} rt_recorder;

/* An upload whose stream time is not yet in the statistics. */
typedef struct rt_pending_copy {
    moe_dev_event ev;
    bool demand; /* the current layer's own (a miss), not a prefetch */
} rt_pending_copy;

/* The GPU side (device sim or cuda): the device, the scheduler that
 * splits each layer, which expert each device slot holds, and the
 * per-layer bookkeeping of the device's runs. */
typedef struct rt_offload {
    moe_dev *dev;
    const moe_dev_reg *reg;     /* the device's kind */
    moe_sched *sched;
    uint32_t n_slots;
    uint64_t expert_bytes;      /* one slot */
    uint32_t *slot_key;         /* [n_slots]: layer * max_experts + expert, UINT32_MAX = none */
    moe_dev_event *slot_upload; /* [n_slots]: the upload that filled it */
    int32_t *slot_of;           /* [n_layers * max_experts]: its slot, -1 */
    moe_dev_event *ev;          /* [max_experts]: this layer's device runs */
    uint32_t *job;              /* [max_experts]: their group index */
    moe_cpu_task *task;         /* [max_experts]: their work, should the CPU have to redo it */
    uint64_t step;              /* forward passes (layer 0 calls) */
    double clock_us;            /* the scheduler's clock: the planned end of the last layer */
    double returned_at;         /* when the last forward returned (the host's dense work follows) */
    bool warned_fallback;
    uint32_t failures;          /* device operations failed in a row (refused or failed) */
    double log_scale[2];        /* online refinement: log(measured / profile) for CPU and GPU expert times */
    rt_pending_copy *pend;
    uint32_t n_pend, cap_pend;
} rt_offload;

/* Router lookahead (moe_runtime_predict): the predictions waiting for
 * their layers, and their accuracy by distance d (1..MOE_SCHED_MAX_DEPTH
 * layers ahead), each kept until its layer runs and scored then. */
typedef struct rt_lookahead {
    uint32_t *pred_m;       /* [n_layers * max_experts]: predicted tokens per expert */
    bool *pred_set;         /* [n_layers]: a prediction is waiting for that layer */
    uint32_t *acc_m;        /* [depth][n_layers * max_experts] */
    bool *acc_set;          /* [depth][n_layers] */
    uint64_t acc_hits[MOE_SCHED_MAX_DEPTH], acc_pairs[MOE_SCHED_MAX_DEPTH]; /* since creation */
    moe_sched_guess *guess; /* [MOE_SCHED_MAX_DEPTH * max_experts] */
    uint32_t next_layer;    /* the layer after the last one forwarded */
} rt_lookahead;

/* moe_layer_forward_submit: a thread of the runtime runs one forward at a
 * time; inflight is the host thread's own flag. */
typedef struct rt_worker {
    bool inflight;
    bool started, stop, ready, done;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct {
        uint32_t layer, n, top_k;
        const float *hidden, *weights;
        const int32_t *ids;
        float *out;
    } job;
    moe_status status;
    char error[512];
} rt_worker;

/* Workspace of a forward, grown on demand and reused across calls. */
typedef struct rt_work {
    moe_plan plan;
    moe_cpu_task *tasks; /* capacity: max_experts */
    uint32_t *pair_of;   /* [n_tokens * top_k] -> index into plan.pairs */
    float *xg, *yg;      /* [pairs, hidden] gathered inputs, expert outputs */
    size_t cap_pairs;    /* capacity of pair_of in pairs */
    size_t cap_rows;     /* capacity of xg and yg in floats */
} rt_work;

struct moe_runtime {
    uint32_t magic;
    moe_model_t *model; /* one reference held */
    uint32_t max_experts; /* the largest layer's expert count */
    moe_device_kind device;
    moe_policy_id policy;
    moe_logger log;
    moe_stats stats;
    rt_host host;
    rt_profile prof;
    rt_recorder rec;
    rt_offload off; /* empty on device cpu */
    rt_lookahead look;
    rt_worker worker;
    rt_work work;
};

static inline bool rt_valid(const moe_runtime_t *rt) { return rt && rt->magic == MOE_MAGIC_RUNTIME; }

/* While a submitted forward is in flight, the runtime is the worker's. */
static inline moe_status rt_busy(const moe_runtime_t *rt, const char *fn) {
    return rt->worker.inflight ? moe_fail(MOE_ERR_STATE, "%s: a forward submitted with moe_layer_forward_submit is in "
                                          "flight; call moe_layer_wait first", fn)
                               : MOE_OK;
}

/* An expert of layer L as the engines and devices see it. */
static inline moe_expert_view rt_expert_view(const moe_model_layer *L, uint32_t e) {
    const moe_expert_weights *w = &L->experts[e];
    return (moe_expert_view){.gate = w->gate, .up = w->up, .down = w->down, .dtype = L->desc.weight_dtype,
                             .hidden = L->desc.hidden, .inter = L->desc.inter, .gate_scale = w->gate_scale,
                             .up_scale = w->up_scale, .down_scale = w->down_scale,
                             .down_own = L->down_dtype != L->desc.weight_dtype, .down_dtype = L->down_dtype};
}

/* ---- setup.c: the steps of moe_runtime_create ---- */
moe_status rt_load_profile(moe_runtime_t *rt, const moe_runtime_params *p);
moe_status rt_resolve_device(moe_runtime_t *rt, moe_device_kind want);
moe_status rt_resolve_threads(moe_runtime_t *rt, const moe_runtime_params *p);
moe_status rt_create_engine(moe_runtime_t *rt);
void rt_place_experts(moe_runtime_t *rt);
/* Device sim or cuda: the device, its slot pool and the scheduler. */
moe_status rt_setup_device(moe_runtime_t *rt, const moe_runtime_params *p);

/* ---- offload.c ---- */
moe_status rt_offload_alloc(moe_runtime_t *rt);
void rt_offload_free(moe_runtime_t *rt);
/* The scheduler's on_prefetch: (layer, expert) was admitted to its cache. */
void rt_prefetch_expert(uint32_t layer, uint32_t expert, void *user);
/* One layer's execution, as forward.c runs it and the statistics count it. */
typedef struct rt_exec {
    uint32_t n_jobs;  /* groups: activated experts */
    uint32_t n_gpu;   /* submitted to the device (less n_redo once collected) */
    uint32_t n_cpu;   /* run on the CPU's side meanwhile */
    uint32_t n_redo;  /* the device's that failed and were redone on the CPU */
    double t_start;   /* execution began (after planning and the workspace) */
    double t_cpu;     /* the CPU's tasks began */
    double t_cpu_end; /* ... and ended */
    double t_end;     /* the device's runs were collected */
    double redo_s;    /* the CPU's time redoing failed device runs */
} rt_exec;

/* Submits the plan's GPU groups (x->n_gpu); a group that cannot be
 * placed goes back to the CPU. */
void rt_submit_gpu(moe_runtime_t *rt, uint32_t layer, rt_exec *x);
/* Waits for them; failed ones are redone on the CPU (x->n_redo, x->redo_s). */
moe_status rt_collect_gpu(moe_runtime_t *rt, uint32_t layer, rt_exec *x);
/* Waits for them without using their results (the CPU side failed). */
void rt_drain_gpu(moe_runtime_t *rt, const rt_exec *x);
/* This layer's device times into the statistics and the cost refinement. */
void rt_account_gpu(moe_runtime_t *rt, const rt_exec *x);
/* After DEVICE_LOST_AFTER failures in a row: every expert on the CPU. */
void rt_check_lost(moe_runtime_t *rt);

/* ---- lookahead.c ---- */
moe_status rt_lookahead_alloc(moe_runtime_t *rt);
void rt_lookahead_free(moe_runtime_t *rt);
/* Layer `layer` runs with the plan's groups: scores the predictions made for it. */
void rt_score_predictions(moe_runtime_t *rt, uint32_t layer, const moe_plan *plan);
/* After layer `layer` is submitted: prefetches for the layers ahead; bytes queued. */
uint64_t rt_prefetch_ahead(moe_runtime_t *rt, uint32_t layer);

/* ---- forward.c ---- */
/* The arguments of a forward, checked before any work (and before a submission returns). */
moe_status rt_check_forward(const moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden,
                            uint32_t top_k, const int32_t *topk_ids, const float *topk_weights, const float *out);
moe_status rt_forward(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden, uint32_t top_k,
                      const int32_t *topk_ids, const float *topk_weights, float *out);
void rt_work_free(rt_work *w);

/* ---- worker.c ---- */
/* Waits for a submitted forward and stops the thread. */
void rt_stop_worker(moe_runtime_t *rt);

/* ---- record.c ---- */
moe_status rt_record_open(moe_runtime_t *rt, const char *path);
void rt_record(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, uint32_t top_k, const int32_t *ids,
               const float *w);
/* Writes what was recorded (a pass left unfinished is dropped). */
void rt_record_close(moe_runtime_t *rt);

#endif
