#define _POSIX_C_SOURCE 200809L /* access */
/* setup.c - the steps of moe_runtime_create (runtime.h): the profile, the
 * CPU's threads and NUMA teams, the device (through gpu/'s registry), its
 * slot pool and the scheduler that splits each layer between it and the CPU. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "place.h"
#include "profiler.h"
#include "runtime.h"
#include "topology.h"

/* Loads the profile: a named file must be valid and this host's (unless
 * any_host); the default file is used only if it is. */
moe_status rt_load_profile(moe_runtime_t *rt, const moe_runtime_params *p) {
    char def[1024];
    const bool named = p->profile_path != NULL;
    const char *path = named ? p->profile_path : moe_profile_default_path(def, sizeof def) ? def : "";
    if (!path[0] || (!named && access(path, F_OK) != 0)) return MOE_OK;
    moe_profile *prof = &rt->prof.profile;
    moe_status st = moe_profile_load(prof, path);
    char why[256] = "";
    if (st == MOE_OK && !p->profile_any_host) {
        moe_profile here;
        moe_profile_init(&here);
        st = moe_profiler_host(&here);
        if (st == MOE_OK && !moe_profile_matches(prof, &here, why, sizeof why))
            st = moe_fail(MOE_ERR_INVALID_ARG, "%s: a profile of another host or build (%s); run moe-profile "
                          "here, or set profile_any_host (moe-run --any-host) to use it anyway", path, why);
        moe_profile_clear(&here);
    }
    if (st != MOE_OK) {
        moe_profile_clear(prof);
        if (named) return st;
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: not using the default profile: %s", moe_last_error());
        return MOE_OK;
    }
    snprintf(rt->prof.path, sizeof rt->prof.path, "%s", path);
    moe_log(&rt->log, MOE_LOG_INFO, "runtime: profile %s (%s %s, %s, %u curves)", path, prof->source, prof->mode,
            prof->created, prof->n_curves);
    return MOE_OK;
}

/* cpu, or a registered device. auto picks the CPU: the CUDA executor has
 * not been run on a GPU yet, so a GPU, if any, is reported and runs
 * experts only when the host asks for it. Counting devices creates no
 * context and records no error. */
moe_status rt_resolve_device(moe_runtime_t *rt, moe_device_kind want) {
    if ((unsigned)want >= MOE_DEVICE_COUNT_)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: device %d is not a moe_device_kind", (int)want);
    if (want == MOE_DEVICE_AUTO) {
        const moe_dev_reg *const *regs;
        const size_t n = moe_dev_registry(&regs);
        for (size_t i = 0; i < n; i++) {
            const int have = regs[i]->modeled ? 0 : regs[i]->count();
            if (have > 0)
                moe_log(&rt->log, MOE_LOG_INFO, "%d %s(s) found; device auto runs experts on the CPU, device %s "
                        "(moe-run --device %s) on the GPU", have, regs[i]->title, regs[i]->name, regs[i]->name);
        }
        rt->device = MOE_DEVICE_CPU;
        return MOE_OK;
    }
    rt->device = want;
    if (want == MOE_DEVICE_CPU) return MOE_OK;
    const moe_dev_reg *reg = moe_dev_find(want);
    if (!reg)
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device %s: not in this build (for CUDA, configure "
                        "with -DMOE_CUDA=ON and nvcc); device cpu or sim runs without one", moe_device_name(want));
    if (!reg->modeled && reg->count() <= 0) {
        char why[256] = "none found";
        if (reg->probe(0, NULL) != MOE_OK) snprintf(why, sizeof why, "%s", moe_last_error());
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device %s: %s; device cpu or sim runs without one",
                        reg->name, why);
    }
    rt->off.reg = reg;
    return MOE_OK;
}

moe_status rt_resolve_threads(moe_runtime_t *rt, const moe_runtime_params *p) {
    moe_topology_t *own = NULL;
    const moe_topology_t *topo = p->topology;
    if (!topo) {
        moe_status st = moe_topology_detect(&own);
        if (st != MOE_OK) return st;
        topo = own;
        rt->host.detected = true;
    }
    if (topo->magic != MOE_MAGIC_TOPOLOGY) {
        moe_topology_free(&own);
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: params.topology is not a topology handle");
    }
    uint32_t n = p->n_threads ? p->n_threads : topo->info.n_cores ? topo->info.n_cores : 1;
    if (n > MOE_MAX_THREADS) n = MOE_MAX_THREADS;
    /* No more threads than OpenMP will run (OMP_THREAD_LIMIT). */
    if (n > (uint32_t)omp_get_thread_limit()) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: %u threads asked, OpenMP allows %d", n, omp_get_thread_limit());
        n = (uint32_t)omp_get_thread_limit();
    }
    rt->host.n_threads = n;
    moe_split_teams(topo, n, &rt->host.teams);
    moe_topology_free(&own);
    return MOE_OK;
}

/* The CPU engine, with every layer's primitives made now: none are made
 * on the hot path. */
moe_status rt_create_engine(moe_runtime_t *rt) {
    const rt_host *h = &rt->host;
    const moe_cpu_params cp = {.n_threads = h->n_threads, .n_teams = h->teams.n, .team_size = h->teams.size,
                               .team_node = h->teams.node, .bind_threads = h->detected, .log = &rt->log};
    moe_status st = moe_cpu_create(&rt->host.engine, &cp);
    for (uint32_t l = 0; l < rt->model->n_layers && st == MOE_OK; l++) {
        const moe_layer_desc *d = &rt->model->layers[l].desc;
        st = moe_cpu_prepare(rt->host.engine, d->hidden, d->inter, d->weight_dtype);
    }
    return st;
}

/* On a NUMA machine, moves each expert's weight pages to the node whose
 * team runs it (best effort: pages that cannot move stay and still work). */
void rt_place_experts(moe_runtime_t *rt) {
    const moe_teams *teams = &rt->host.teams;
    if (teams->n < 2 || !rt->host.detected) return;
    const moe_model_t *m = rt->model;
    uint64_t moved = 0, total = 0;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const moe_model_layer *L = &m->layers[l];
        const size_t gu = moe_matrix_bytes(L->desc.weight_dtype, L->desc.inter, L->desc.hidden),
                     dn = moe_matrix_bytes(L->down_dtype, L->desc.hidden, L->desc.inter);
        for (uint32_t e = 0; e < L->desc.n_experts; e++) {
            const uint32_t node = teams->node[moe_cpu_home(e, teams->n)];
            moved += moe_numa_move(L->experts[e].gate, gu, node) + moe_numa_move(L->experts[e].up, gu, node) +
                     moe_numa_move(L->experts[e].down, dn, node);
            total += 2ull * gu + dn;
        }
    }
    moe_log(&rt->log, MOE_LOG_INFO, "cpu: placed %.1f of %.1f MB of expert weights on their home nodes",
            (double)moved / 1e6, (double)total / 1e6);
}

/* ---- the device ---------------------------------------------------------- */

/* Every MoE layer must have the same expert shape and gate/up dtype (as
 * every supported model's do): the scheduler costs one expert shape. Down
 * dtypes may differ by layer (llama.cpp's Q4_K_M: q6_K in some layers,
 * q4_K in the rest): slots fit the largest expert, and costs are averaged
 * over the layers (create_scheduler). The profile must describe a GPU to
 * plan with. */
static moe_status check_device_fits(const moe_runtime_t *rt, uint64_t *n_experts) {
    const moe_model_t *m = rt->model;
    const moe_layer_desc *d0 = &m->layers[0].desc;
    const char *name = rt->off.reg->name;
    *n_experts = 0;
    for (uint32_t l = 0; l < m->n_layers; l++) {
        const moe_layer_desc *d = &m->layers[l].desc;
        if (d->hidden != d0->hidden || d->inter != d0->inter || d->weight_dtype != d0->weight_dtype)
            return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device %s: layer %u's experts (%ux%u %s) differ "
                            "from layer 0's (%ux%u %s); the scheduler plans one expert shape", name, l, d->hidden,
                            d->inter, moe_dtype_name(d->weight_dtype), d0->hidden, d0->inter,
                            moe_dtype_name(d0->weight_dtype));
        *n_experts += d->n_experts;
    }
    if (!rt->prof.profile.n_gpus) {
        const bool modeled = rt->off.reg->modeled;
        const char *path = rt->prof.path;
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device %s %s a profile's [gpu] and [link] figures, "
                        "and %s%s; %s", name, modeled ? "models a GPU from" : "plans with",
                        path[0] ? path : "no profile is loaded", path[0] ? " has none" : "",
                        modeled ? "use a profile with a GPU, e.g. moe-run --profile "
                                  "profiles/machines/ref-h100-pcie5-2s-xeon8480.txt --any-host"
                                : "run moe-profile on this machine (it measures the GPU)");
    }
    return MOE_OK;
}

/* The device and a slot pool of the budget. Out of device memory: a
 * smaller pool, down to one expert; below that (or a device that cannot
 * compute the model's dtype), every expert on the CPU. Warnings, not
 * failures: *cpu_only says so. */
static moe_status create_device(moe_runtime_t *rt, const moe_runtime_params *p, uint64_t n_experts, bool *cpu_only) {
    rt_offload *o = &rt->off;
    const moe_profile *prof = &rt->prof.profile;
    const moe_tuning *tun = &prof->tuning;
    const moe_layer_desc *d0 = &rt->model->layers[0].desc;
    o->expert_bytes = 0;
    for (uint32_t l = 0; l < rt->model->n_layers; l++) {
        const size_t b = moe_dev_expert_bytes(d0->hidden, d0->inter, d0->weight_dtype, rt->model->layers[l].down_dtype);
        o->expert_bytes = b > o->expert_bytes ? b : o->expert_bytes;
    }
    uint64_t budget = p->gpu_budget_bytes ? p->gpu_budget_bytes
                                          : (uint64_t)(p->gpu_budget_fraction * (double)(n_experts * o->expert_bytes));
    const uint64_t device_mem = prof->gpus[0].free_bytes;
    if (o->reg->modeled && device_mem && budget > device_mem) budget = device_mem;
    const uint64_t slots = budget / o->expert_bytes;
    o->n_slots = slots > n_experts ? (uint32_t)n_experts : (uint32_t)slots;
    const moe_dev_params dp = {.index = 0, .profile = prof, .pool_bytes = (uint64_t)o->n_slots * o->expert_bytes,
                               .pin_limit_bytes = tun->set & MOE_TUNE_PINNED_LIMIT ? tun->pinned_limit_bytes : 0,
                               .log = &rt->log, .host_stream = p->cuda_stream};
    moe_status st = o->reg->create(&o->dev, &dp);
    moe_dtype unsupported = MOE_DTYPE_COUNT_;
    for (uint32_t l = 0; st == MOE_OK && l < rt->model->n_layers; l++) {
        const moe_dtype td = rt->model->layers[l].down_dtype;
        if (!moe_dev_supports(o->dev, d0->weight_dtype)) unsupported = d0->weight_dtype;
        else if (!moe_dev_supports(o->dev, td)) unsupported = td;
    }
    if (unsupported != MOE_DTYPE_COUNT_) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: the %s does not compute %s experts; running every expert on the CPU",
                o->reg->title, moe_dtype_name(unsupported));
        *cpu_only = true;
        return MOE_OK;
    }
    if (st == MOE_OK) st = moe_dev_alloc_slots(o->dev, o->n_slots, o->n_slots ? o->expert_bytes : 0);
    while (st == MOE_ERR_OUT_OF_MEMORY && o->n_slots > 1) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: %s; trying %u slots", moe_last_error(), o->n_slots / 2);
        o->n_slots /= 2;
        st = moe_dev_alloc_slots(o->dev, o->n_slots, o->expert_bytes);
    }
    if (st == MOE_ERR_OUT_OF_MEMORY) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: %s; running every expert on the CPU", moe_last_error());
        *cpu_only = true;
        return MOE_OK;
    }
    return st;
}

/* The scheduler, with the profile's CPU curves (or roofline) and its
 * GPU's runs, which the simulated device also charges, so plan and
 * simulated device agree. [tuning]'s prefetch knobs belong to moerun's
 * prefetcher; the MRS weight to the score caches (hybrimoe). */
static moe_status create_scheduler(moe_runtime_t *rt) {
    enum { MAX_M = 512 };
    const moe_profile *prof = &rt->prof.profile;
    const moe_tuning *tun = &prof->tuning;
    const moe_layer_desc *d0 = &rt->model->layers[0].desc;
    /* An expert whose down matrix has a dtype of its own costs a third of
     * each dtype's expert: its three matrices have the same elements, so
     * the same share of bytes per element and of FLOPs. Layers whose down
     * dtypes differ are averaged: the scheduler has one cost table. */
    const moe_dtype t = d0->weight_dtype;
    bool mixed = false;
    for (uint32_t l = 0; l < rt->model->n_layers; l++) mixed |= rt->model->layers[l].down_dtype != t;
    double cpu_us[MAX_M + 1], gpu_us[MAX_M + 1];
    for (uint32_t k = 0; k <= MAX_M; k++) {
        cpu_us[k] = k ? moe_profile_cpu_us(prof, d0->hidden, d0->inter, t, k, 0) : 0.0;
        gpu_us[k] = moe_profile_gpu_run_us(prof, 0, d0->hidden, d0->inter, t, k);
        double c_down = 0.0, g_down = 0.0;
        for (uint32_t l = 0; l < rt->model->n_layers && k && mixed; l++) {
            const moe_dtype td = rt->model->layers[l].down_dtype;
            const double c = moe_profile_cpu_us(prof, d0->hidden, d0->inter, td, k, 0),
                         g = moe_profile_gpu_run_us(prof, 0, d0->hidden, d0->inter, td, k);
            c_down = c < 0 || c_down < 0 ? -1.0 : c_down + c / rt->model->n_layers;
            g_down = g < 0 || g_down < 0 ? -1.0 : g_down + g / rt->model->n_layers;
        }
        if (k && mixed) {
            cpu_us[k] = cpu_us[k] < 0 || c_down < 0 ? -1.0 : (2 * cpu_us[k] + c_down) / 3;
            gpu_us[k] = gpu_us[k] < 0 || g_down < 0 ? -1.0 : (2 * gpu_us[k] + g_down) / 3;
        }
        if (cpu_us[k] < 0 || gpu_us[k] < 0)
            return moe_fail(MOE_ERR_UNSUPPORTED, "moe_runtime_create: device %s: the profile %s has no %s cost for "
                            "%ux%u %s experts", rt->off.reg->name, rt->prof.path, cpu_us[k] < 0 ? "CPU" : "GPU",
                            d0->hidden, d0->inter, moe_dtype_name(d0->weight_dtype));
    }
    const bool moerun = rt->policy == MOE_POLICY_MOERUN, tuned_depth = moerun && tun->set & MOE_TUNE_PREFETCH_DEPTH;
    const uint32_t depth = !tuned_depth ? 0 : tun->prefetch_depth < MOE_SCHED_MAX_DEPTH ? tun->prefetch_depth
                                                                                       : MOE_SCHED_MAX_DEPTH;
    if (tuned_depth && depth != tun->prefetch_depth)
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: [tuning] prefetch_depth %u; the runtime looks at most %d layers "
                "ahead", tun->prefetch_depth, MOE_SCHED_MAX_DEPTH);
    const rt_offload *o = &rt->off;
    const moe_sched_config sc = {
        .depth = depth, .no_prefetch = tuned_depth && !depth, /* tuned 0: no prefetch */
        .min_gain_us = moerun && tun->set & MOE_TUNE_PREFETCH_MIN_GAIN ? tun->prefetch_min_gain_us : 0.0,
        .score_alpha = tun->set & MOE_TUNE_MRS_ALPHA ? tun->mrs_alpha : 0.0,
        .on_prefetch = rt_prefetch_expert, .user = rt, .policy = rt->policy, .n_layers = rt->model->n_layers,
        .n_experts = rt->max_experts, .expert_bytes = o->expert_bytes,
        .budget_bytes = (uint64_t)o->n_slots * o->expert_bytes, .max_tokens = MAX_M, .cpu_us = cpu_us,
        .gpu_us = gpu_us, .copy_us = moe_profile_copy_us(prof, 0, o->expert_bytes, true)};
    return moe_sched_create(&rt->off.sched, &sc);
}

moe_status rt_setup_device(moe_runtime_t *rt, const moe_runtime_params *p) {
    uint64_t n_experts;
    bool cpu_only = false;
    moe_status st = check_device_fits(rt, &n_experts);
    if (st == MOE_OK) st = create_device(rt, p, n_experts, &cpu_only);
    if (st == MOE_OK && cpu_only) {
        rt_offload_free(rt);
        rt->device = MOE_DEVICE_CPU;
        rt->policy = MOE_POLICY_STATIC_CPU;
        return MOE_OK;
    }
    if (st == MOE_OK) st = create_scheduler(rt);
    if (st == MOE_OK) st = rt_offload_alloc(rt);
    if (st == MOE_OK) st = rt_lookahead_alloc(rt);
    if (st != MOE_OK) return st;
    const rt_offload *o = &rt->off;
    moe_log(&rt->log, MOE_LOG_INFO, "runtime: %s %s, %u expert slots (%.1f MB), policy %s",
            o->reg->modeled ? "simulated" : "CUDA device 0, planned as", rt->prof.profile.gpus[0].name, o->n_slots,
            (double)o->n_slots * (double)o->expert_bytes / 1e6, moe_policy_name(rt->policy));
    return MOE_OK;
}
