/* runtime.c - the runtime handle (runtime.h): its parameters, creation
 * and release, accessors and statistics. Creation's steps are in setup.c,
 * a layer's forward in forward.c. */
#include <stdio.h>
#include <stdlib.h>

#include "plugin.h"
#include "runtime.h"

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

/* The caller's params over the defaults. Reads struct_size first and
 * copies no more than the caller's struct: a caller built against a later
 * header may pass a larger struct (its extra fields are ignored); a
 * smaller one predates this API version. */
static moe_status read_params(const moe_runtime_params *params, moe_runtime_params *p) {
    *p = moe_runtime_default_params();
    if (params) {
        if (params->struct_size < sizeof *p)
            return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: params.struct_size = %u, at least %zu "
                            "expected; start from moe_runtime_default_params()", params->struct_size, sizeof *p);
        memcpy(p, params, sizeof *p);
    }
    if (!(p->gpu_budget_fraction <= 1.0) || (p->gpu_budget_fraction < 0 && p->gpu_budget_fraction != -1.0))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: gpu_budget_fraction = %g, must be in 0..1 (or -1: "
                        "the profile's [tuning], else 0.5)", p->gpu_budget_fraction);
    if ((unsigned)p->log_level > MOE_LOG_DEBUG)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: log_level %d is not a moe_log_level",
                        (int)p->log_level);
    if (p->n_threads > MOE_MAX_THREADS)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: n_threads = %u, at most %u", p->n_threads,
                        MOE_MAX_THREADS);
    return MOE_OK;
}

/* The profile's [tuning] fills what the params leave unset: the policy,
 * the GPU budget and the threads. */
static const char *apply_tuning(const moe_runtime_t *rt, moe_runtime_params *p) {
    const moe_tuning *tun = &rt->prof.profile.tuning;
    const char *policy = p->policy && strcmp(p->policy, "auto") != 0 ? p->policy
                         : tun->set & MOE_TUNE_POLICY && strcmp(tun->policy, "auto") != 0 ? tun->policy
                         : rt->device == MOE_DEVICE_CPU ? "static-cpu"
                                                        : "moerun";
    if (!p->gpu_budget_bytes && p->gpu_budget_fraction < 0) { /* unset: [tuning], else half the experts */
        const bool tuned = tun->set & MOE_TUNE_GPU_BUDGET;
        p->gpu_budget_bytes = tuned ? tun->gpu_budget_bytes : 0;
        p->gpu_budget_fraction = tuned && !tun->gpu_budget_bytes ? tun->gpu_budget_fraction : 0.5;
    }
    if (!p->n_threads && tun->set & MOE_TUNE_THREADS_PER_NODE && tun->threads_per_node) {
        uint32_t nodes = 0;
        for (uint32_t i = 0; i < rt->prof.profile.topo.n_numa_nodes; i++) nodes += rt->prof.profile.node_cores[i] > 0;
        p->n_threads = tun->threads_per_node * (nodes ? nodes : 1);
        if (p->n_threads > MOE_MAX_THREADS) p->n_threads = MOE_MAX_THREADS;
    }
    return policy;
}

static moe_status resolve_policy(moe_runtime_t *rt, const char *name) {
    moe_status st = moe_policy_lookup(name, &rt->policy);
    if (st != MOE_OK) return st;
    if (rt->policy == MOE_POLICY_ORACLE)
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: policy oracle knows the future routing; it exists "
                        "only in the simulator (moe-sim)");
    if (rt->policy != MOE_POLICY_STATIC_CPU && rt->device == MOE_DEVICE_CPU)
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: policy %s places experts on a GPU; this "
                        "runtime runs on the CPU, where only static-cpu applies", moe_policy_name(rt->policy));
    return MOE_OK;
}

/* Everything a handle may hold, in any state creation left it. */
static void release(moe_runtime_t *rt) {
    rt_offload_free(rt);
    moe_profile_clear(&rt->prof.profile);
    moe_cpu_free(&rt->host.engine);
    rt_work_free(&rt->work);
    moe_trace_free(&rt->rec.trace);
    moe_model_free(&rt->model);
    free(rt);
}

/* The steps after the handle exists: profile, device, policy, threads,
 * engine, the device's side, NUMA placement. */
static moe_status build(moe_runtime_t *rt, moe_runtime_params *p) {
    moe_status st;
    if (p->record_trace_path && (st = rt_record_open(rt, p->record_trace_path)) != MOE_OK) return st;
    if ((st = rt_load_profile(rt, p)) != MOE_OK || (st = rt_resolve_device(rt, p->device)) != MOE_OK) return st;
    const char *policy = apply_tuning(rt, p);
    if ((st = resolve_policy(rt, policy)) != MOE_OK || (st = rt_resolve_threads(rt, p)) != MOE_OK) return st;
    if (!(rt->work.tasks = calloc(rt->max_experts, sizeof *rt->work.tasks)))
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_runtime_create: allocation failed");
    if ((st = rt_create_engine(rt)) != MOE_OK) return st;
    if (rt->device != MOE_DEVICE_CPU && (st = rt_setup_device(rt, p)) != MOE_OK) return st;
    rt_place_experts(rt);
    return MOE_OK;
}

moe_status moe_runtime_create(moe_runtime_t **out, moe_model_t *model, const moe_runtime_params *params) {
    if (!out) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: out is NULL");
    *out = NULL;
    if (!moe_model_valid(model)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: not a model handle");
    moe_runtime_params p;
    moe_status st = read_params(params, &p);
    if (st == MOE_OK) st = moe_model_check_complete(model);
    if (st != MOE_OK) return st;
    moe_runtime_t *rt = calloc(1, sizeof *rt);
    if (!rt) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_runtime_create: allocation failed");
    rt->log = (moe_logger){.fn = p.log_fn, .user = p.log_user, .level = p.log_level};
    moe_plan_init(&rt->work.plan);
    moe_profile_init(&rt->prof.profile);
    moe_trace_init(&rt->rec.trace);
    moe_model_retain(model);
    rt->model = model;
    for (uint32_t l = 0; l < model->n_layers; l++)
        if (model->layers[l].desc.n_experts > rt->max_experts) rt->max_experts = model->layers[l].desc.n_experts;
    if ((st = build(rt, &p)) != MOE_OK) {
        release(rt);
        return st;
    }
    rt->magic = MOE_MAGIC_RUNTIME;
    moe_log(&rt->log, MOE_LOG_INFO, "runtime: device %s, policy %s, %u threads in %u NUMA team(s)",
            moe_device_name(rt->device), moe_policy_name(rt->policy), rt->host.n_threads, rt->host.teams.n);
    *out = rt;
    return MOE_OK;
}

void moe_runtime_free(moe_runtime_t **prt) {
    if (!prt || !*prt) return;
    moe_runtime_t *rt = *prt;
    *prt = NULL;
    if (!rt_valid(rt)) return;
    rt_stop_worker(rt); /* waits for a submitted forward */
    rt_record_close(rt);
    rt->magic = 0;
    release(rt);
}

const moe_model_t *moe_runtime_model_of(const moe_runtime_t *rt) { return rt_valid(rt) ? rt->model : NULL; }

bool moe_runtime_inflight(const moe_runtime_t *rt) { return rt_valid(rt) && rt->worker.inflight; }

moe_device_kind moe_runtime_device(const moe_runtime_t *rt) {
    return rt_valid(rt) ? rt->device : MOE_DEVICE_COUNT_;
}

const char *moe_runtime_profile(const moe_runtime_t *rt) { return rt_valid(rt) ? rt->prof.path : NULL; }

double moe_runtime_cpu_cost_us(const moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens) {
    if (!rt_valid(rt) || !rt->prof.path[0] || layer >= rt->model->n_layers) return -1.0;
    const moe_layer_desc *d = &rt->model->layers[layer].desc;
    return moe_profile_cpu_us(&rt->prof.profile, d->hidden, d->inter, d->weight_dtype, n_tokens, 0);
}

const char *moe_runtime_policy(const moe_runtime_t *rt) {
    return rt_valid(rt) ? moe_policy_name(rt->policy) : NULL;
}

/* moe_stats as API 4 declared it: the fields up to total_seconds. */
#define STATS_V4_BYTES (offsetof(moe_stats, total_seconds) + sizeof(double))

moe_status moe_runtime_stats(const moe_runtime_t *rt, moe_stats *out, size_t out_size) {
    if (!rt_valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_stats: not a runtime handle");
    if (rt_busy(rt, "moe_runtime_stats") != MOE_OK) return MOE_ERR_STATE;
    const size_t v4 = STATS_V4_BYTES;
    if (!out || out_size < v4)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_stats: out is NULL or smaller (%zu bytes) than API 4's "
                        "moe_stats (%zu)", out ? out_size : 0, v4);
    moe_stats s = rt->stats;
    s.cpu_cost_scale = s.gpu_cost_scale = 0.0;
    if (rt->off.sched) moe_sched_cost_scales(rt->off.sched, &s.cpu_cost_scale, &s.gpu_cost_scale);
    if (out_size > sizeof *out) memset((char *)out + sizeof *out, 0, out_size - sizeof *out);
    memcpy(out, &s, out_size < sizeof *out ? out_size : sizeof *out);
    return MOE_OK;
}

#undef moe_runtime_get_stats
moe_status moe_runtime_get_stats(const moe_runtime_t *rt, moe_stats *out) {
    return moe_runtime_stats(rt, out, STATS_V4_BYTES);
}

moe_status moe_runtime_reset_stats(moe_runtime_t *rt) {
    if (!rt_valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_reset_stats: not a runtime handle");
    if (rt_busy(rt, "moe_runtime_reset_stats") != MOE_OK) return MOE_ERR_STATE;
    memset(&rt->stats, 0, sizeof rt->stats);
    return MOE_OK;
}
