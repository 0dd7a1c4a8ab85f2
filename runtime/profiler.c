/* profiler.c - see profiler.h. */
#define _POSIX_C_SOURCE 200809L /* gethostname, gmtime_r */
#include "profiler.h"
#include "quant.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "device.h"
#include "membw.h"
#include "mm.h"
#include "place.h"
#include "teams.h"
#include "topology.h"

/* The real models' expert shapes (../shared/models, docs/cpu-engine.md). */
static const uint32_t full_shapes[][2] = {{2048, 1408}, {2048, 768}, {2048, 1024}, {3584, 2560}, {4096, 14336}};
static const moe_dtype full_dtypes[] = {MOE_DTYPE_BF16, MOE_DTYPE_I8, MOE_DTYPE_F32};
static const uint32_t quick_ms[] = {1, 4, 16, 64, 256};
static const uint32_t full_ms[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};

bool moe_profile_default_path(char *buf, size_t cap) {
    const char *e = getenv("MOE_PROFILE");
    if (e && *e) return snprintf(buf, cap, "%s", e) < (int)cap;
    if ((e = getenv("XDG_CACHE_HOME")) && *e) return snprintf(buf, cap, "%s/moerun/profile.txt", e) < (int)cap;
    if ((e = getenv("HOME")) && *e) return snprintf(buf, cap, "%s/.cache/moerun/profile.txt", e) < (int)cap;
    return false;
}

/* A name as a profile value: control characters become spaces, leading
 * spaces and '#' go (the reader refuses both), never empty. */
static void clean(char *s, size_t cap) {
    for (char *c = s; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = ' ';
    size_t skip = strspn(s, " #");
    memmove(s, s + skip, strlen(s + skip) + 1);
    size_t n = strlen(s);
    while (n && s[n - 1] == ' ') s[--n] = '\0';
    if (!n) snprintf(s, cap, "unknown");
}

/* The profile's GPU g: the g-th physical device, in registry order. */
typedef struct gpu_ref {
    const moe_dev_reg *reg;
    int index;
} gpu_ref;

static bool physical_gpu(uint32_t g, gpu_ref *out) {
    const moe_dev_reg *const *regs;
    const size_t n = moe_dev_registry(&regs);
    for (size_t i = 0; i < n; i++) {
        if (regs[i]->modeled || !regs[i]->measure) continue;
        const int have = regs[i]->count();
        if (have > 0 && g < (uint32_t)have) {
            *out = (gpu_ref){regs[i], (int)g};
            return true;
        }
        if (have > 0) g -= (uint32_t)have;
    }
    return false;
}

moe_status moe_profiler_host(moe_profile *p) {
    moe_profile_clear(p);
    moe_topology_t *t = NULL;
    moe_status st = moe_topology_detect(&t);
    if (st != MOE_OK) return st;
    if (t->info.n_numa_nodes > MOE_PROFILE_MAX_NODES) {
        st = moe_fail(MOE_ERR_UNSUPPORTED, "profiler: %u NUMA nodes, profiles hold at most %d",
                      t->info.n_numa_nodes, MOE_PROFILE_MAX_NODES);
        moe_topology_free(&t);
        return st;
    }
    p->topo = t->info;
    for (uint32_t n = 0; n < t->info.n_numa_nodes; n++) p->node_os[n] = t->node_os[n], p->node_cores[n] = t->node_cores[n];
    snprintf(p->cpu_model, sizeof p->cpu_model, "%s", t->cpu_model[0] ? t->cpu_model : "unknown");
    moe_topology_free(&t);
    if (gethostname(p->hostname, sizeof p->hostname) != 0 || !p->hostname[0])
        snprintf(p->hostname, sizeof p->hostname, "unknown");
    p->hostname[sizeof p->hostname - 1] = '\0';
    clean(p->hostname, sizeof p->hostname);
    clean(p->cpu_model, sizeof p->cpu_model);
    snprintf(p->moerun_version, sizeof p->moerun_version, "%s", moe_version());
    moe_mm_onednn_version(p->onednn_version, sizeof p->onednn_version);
    const time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm)) strftime(p->created, sizeof p->created, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(p->source, sizeof p->source, "measured");
    p->threads = p->topo.n_cores ? p->topo.n_cores : 1;
    gpu_ref ref;
    for (uint32_t g = 0; g < MOE_PROFILE_MAX_GPUS && physical_gpu(g, &ref); g++) {
        moe_dev_info gi;
        if (ref.reg->probe(ref.index, &gi) != MOE_OK) break;
        moe_profile_gpu *d = &p->gpus[p->n_gpus++];
        snprintf(d->name, sizeof d->name, "%.127s", gi.name);
        clean(d->name, sizeof d->name);
        d->cc_major = (uint32_t)gi.cc_major, d->cc_minor = (uint32_t)gi.cc_minor;
        d->total_bytes = gi.total_bytes, d->free_bytes = gi.free_bytes;
        const int os = moe_pci_os_node((unsigned)gi.pci_domain, (unsigned)gi.pci_bus, (unsigned)gi.pci_device);
        d->numa_node = -1;
        for (uint32_t n = 0; n < p->topo.n_numa_nodes && os >= 0; n++)
            if (p->node_os[n] == (uint32_t)os) d->numa_node = (int32_t)n;
    }
    return MOE_OK;
}

typedef struct sampling {
    double rse, cap_s;
    uint32_t min_n;
} sampling;

static bool enough(const moe_stat *s, const sampling *r, double t0) {
    return (s->n >= r->min_n && moe_stat_rse(s) <= r->rse) || (s->n >= 2 && moe_now() - t0 > r->cap_s);
}

/* ---- memory bandwidth ---------------------------------------------------- */

static void measure_bandwidth(moe_profile *p, const sampling *r, const moe_logger *log) {
    /* Past the last-level cache, whatever the machine. */
    size_t bytes = (size_t)p->topo.l3_bytes * 2;
    if (bytes < ((size_t)512 << 20)) bytes = (size_t)512 << 20;
    enum { BATCH = 3 };
    for (uint32_t i = 0; i < p->topo.n_numa_nodes; i++) {
        if (!p->node_cores[i]) continue; /* memory-only node: nobody reads from there */
        for (uint32_t j = 0; j < p->topo.n_numa_nodes; j++) {
            moe_stat *s = &p->read_gbps[i][j];
            const double t0 = moe_now();
            while (!enough(s, r, t0)) {
                double g[BATCH];
                const int n = moe_read_bandwidth_nodes(bytes, p->node_cores[i], BATCH, p->node_os[i], p->node_os[j], g);
                if (n == 0) break;
                for (int k = 0; k < n; k++) moe_stat_add(s, g[k]);
            }
            if (!s->n && i == j && p->topo.n_numa_nodes == 1) /* no libnuma: this node only, unbound */
                while (!enough(s, r, t0)) moe_stat_add(s, moe_read_bandwidth(bytes, p->node_cores[i], 1));
            if (s->n)
                moe_log(log, MOE_LOG_INFO, "profile: node %u reading node %u: %.1f GB/s (%llu passes)", i, j,
                        moe_stat_mean(s), (unsigned long long)s->n);
        }
    }
}

/* ---- GPUs ---------------------------------------------------------------- */

typedef moe_status (*gpu_sampler)(const gpu_ref *g, int reps, double *a, double *b, const void *arg);

/* Batches of samples from fn into a (and b) until the sampling rule holds. */
static moe_status sample_gpu(const gpu_ref *g, gpu_sampler fn, const void *arg, const sampling *r, moe_stat *a, moe_stat *b) {
    enum { BATCH = 5 };
    const double t0 = moe_now();
    while (!enough(a, r, t0)) {
        double x[BATCH], y[BATCH];
        moe_status st = fn(g, BATCH, x, y, arg);
        if (st != MOE_OK) return st;
        for (int i = 0; i < BATCH; i++) {
            moe_stat_add(a, x[i]);
            if (b) moe_stat_add(b, y[i]);
        }
    }
    return MOE_OK;
}

static moe_status s_launch(const gpu_ref *g, int reps, double *a, double *b, const void *arg) {
    (void)arg;
    return g->reg->measure->launch(g->index, reps, a, b);
}

typedef struct copy_arg {
    moe_dev_copy_kind kind;
    size_t bytes;
} copy_arg;

static moe_status s_copy(const gpu_ref *g, int reps, double *a, double *b, const void *arg) {
    (void)b;
    const copy_arg *c = arg;
    return g->reg->measure->copy(g->index, c->kind, c->bytes, reps, a);
}

static moe_status s_expert(const gpu_ref *g, int reps, double *a, double *b, const void *arg) {
    (void)b;
    const uint32_t *s = arg; /* hidden, inter, m */
    return g->reg->measure->expert_f32(g->index, s[0], s[1], s[2], reps, a);
}

/* Launch and event overheads, copy rates from 1 MB to the largest expert
 * profiled, and the f32 expert (the GPU expert this build has) at each M.
 * A GPU that fails a measurement keeps what it had and the error is
 * logged: the CPU figures stay usable. */
static moe_status measure_gpus(moe_profile *p, const sampling *r, const moe_profile_shape *shapes, uint32_t n_shapes,
                               const uint32_t *ms, uint32_t n_ms, const moe_logger *log) {
    size_t top = 64u << 20;
    for (uint32_t i = 0; i < n_shapes; i++) {
        const size_t e = moe_expert_weight_bytes(shapes[i].hidden, shapes[i].inter, shapes[i].dtype, shapes[i].dtype);
        top = e > top ? e : top;
    }
    size_t sizes[MOE_PROFILE_MAX_SIZES];
    uint32_t n_sizes = 0;
    for (size_t s = 1u << 20; s < top && n_sizes + 1 < MOE_PROFILE_MAX_SIZES; s *= 4) sizes[n_sizes++] = s;
    sizes[n_sizes++] = top;
    for (uint32_t g = 0; g < p->n_gpus; g++) {
        moe_profile_gpu *d = &p->gpus[g];
        gpu_ref ref;
        if (!physical_gpu(g, &ref)) break;
        moe_status st = sample_gpu(&ref, s_launch, NULL, r, &d->launch_us, &d->event_us);
        moe_link_curve *links[3] = {&d->h2d_pinned, &d->h2d_pageable, &d->d2h_pinned};
        const moe_dev_copy_kind kinds[3] = {MOE_DEV_H2D_PINNED, MOE_DEV_H2D_PAGEABLE, MOE_DEV_D2H_PINNED};
        for (int k = 0; k < 3 && st == MOE_OK; k++)
            for (uint32_t i = 0; i < n_sizes && st == MOE_OK; i++) {
                const copy_arg a = {kinds[k], sizes[i]};
                moe_stat s = {0};
                if ((st = sample_gpu(&ref, s_copy, &a, r, &s, NULL)) != MOE_OK) break;
                links[k]->bytes[links[k]->n] = sizes[i], links[k]->gbps[links[k]->n++] = s;
            }
        for (uint32_t i = 0; i < n_shapes && st == MOE_OK; i++) {
            if (shapes[i].dtype != MOE_DTYPE_F32) continue;
            moe_curve *c = moe_profile_curve(p, shapes[i].hidden, shapes[i].inter, MOE_DTYPE_F32, (int32_t)g, 0);
            for (uint32_t k = 0; c && k < n_ms && st == MOE_OK; k++) {
                const uint32_t arg[3] = {shapes[i].hidden, shapes[i].inter, ms[k]};
                moe_stat s = {0};
                if ((st = sample_gpu(&ref, s_expert, arg, r, &s, NULL)) != MOE_OK) break;
                moe_curve_point *pt = moe_curve_at(c, ms[k]);
                if (!pt) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "profiler: allocation failed");
                moe_stat_merge(&pt->us, &s);
            }
        }
        if (st != MOE_OK) {
            moe_log(log, MOE_LOG_WARN, "profile: GPU %u: %s; its remaining figures are not measured", g,
                    moe_last_error());
            continue;
        }
        moe_log(log, MOE_LOG_INFO, "profile: GPU %u (%s): launch %.1f us, pinned upload %.1f GB/s at %zu MB", g,
                d->name, moe_stat_mean(&d->launch_us), moe_stat_mean(&d->h2d_pinned.gbps[n_sizes - 1]), top >> 20);
    }
    return MOE_OK;
}

/* ---- expert curves ------------------------------------------------------- */

/* A rotation of experts carved from one buffer, first touched on `node`. */
typedef struct rotation {
    char *buf;
    size_t bytes;
    float *scales; /* int8 row scales, all 1 */
    uint32_t max_dim;
} rotation;

static moe_status rotation_make(rotation *r, size_t bytes, uint32_t max_dim) {
    r->bytes = bytes, r->max_dim = max_dim;
    r->buf = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    r->scales = malloc((size_t)max_dim * sizeof *r->scales);
    if (!r->buf || !r->scales) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "profiler: cannot allocate %zu MB of experts", bytes >> 20);
    /* Small finite values in every dtype (0x3c3c: bf16 0.0115, f16 1.06,
     * f32 0.0115, int8 60); timings do not depend on them. */
    memset(r->buf, 0x3c, bytes);
    for (uint32_t i = 0; i < max_dim; i++) r->scales[i] = 1.0f / 4096;
    return MOE_OK;
}

static void rotation_free(rotation *r) {
    free(r->buf);
    free(r->scales);
}

typedef struct bench_ctx {
    moe_cpu *cpu;
    moe_teams teams;
    rotation rot;
    float *x, *y;
    uint32_t max_m, hidden_cap;
} bench_ctx;

static moe_status ctx_make(bench_ctx *c, uint32_t threads, size_t rotate, uint32_t max_dim, uint32_t max_m,
                           uint32_t max_hidden, const moe_logger *log) {
    memset(c, 0, sizeof *c);
    moe_topology_t *t = NULL;
    moe_status st = moe_topology_detect(&t);
    if (st != MOE_OK) return st;
    if (!threads) threads = t->info.n_cores ? t->info.n_cores : 1;
    if (threads > (uint32_t)omp_get_thread_limit()) threads = (uint32_t)omp_get_thread_limit();
    moe_split_teams(t, threads, &c->teams);
    moe_topology_free(&t);
    moe_cpu_params cp = {.n_threads = threads, .n_teams = c->teams.n, .team_size = c->teams.size,
                         .team_node = c->teams.node, .bind_threads = true, .log = log};
    if ((st = moe_cpu_create(&c->cpu, &cp)) != MOE_OK) return st;
    if ((st = rotation_make(&c->rot, rotate, max_dim)) != MOE_OK) return st;
    c->max_m = max_m, c->hidden_cap = max_hidden;
    c->x = malloc((size_t)max_m * max_hidden * sizeof *c->x);
    c->y = malloc((size_t)max_m * max_hidden * sizeof *c->y);
    if (!c->x || !c->y) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "profiler: allocation failed");
    for (size_t i = 0; i < (size_t)max_m * max_hidden; i++) c->x[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    return MOE_OK;
}

static void ctx_free(bench_ctx *c) {
    moe_cpu_free(&c->cpu);
    rotation_free(&c->rot);
    free(c->x);
    free(c->y);
}

/* Samples one call of (shape, m) on team `team`, a different cold expert
 * each time, until the sampling rule is met. */
static moe_status sample(bench_ctx *c, const moe_profile_shape *s, uint32_t m, uint32_t team, const sampling *r,
                         moe_stat *out) {
    const size_t mat = moe_matrix_bytes(s->dtype, s->inter, s->hidden);
    const size_t per = (moe_expert_weight_bytes(s->hidden, s->inter, s->dtype, s->dtype) + 4095) / 4096 * 4096;
    const uint32_t n_rot = (uint32_t)(c->rot.bytes / per);
    if (n_rot < 1 || m > c->max_m || s->hidden > c->hidden_cap || s->inter > c->rot.max_dim || s->hidden > c->rot.max_dim)
        return moe_fail(MOE_ERR_INVALID_ARG, "profiler: %ux%u %s does not fit the rotation", s->hidden, s->inter,
                        moe_dtype_name(s->dtype));
    const bool q = s->dtype == MOE_DTYPE_I8;
    moe_cpu_task task = {.team = team, .m = m, .x = c->x, .y = c->y};
    task.w = (moe_expert_view){NULL, NULL, NULL, s->dtype, s->hidden, s->inter, q ? c->rot.scales : NULL,
                               q ? c->rot.scales : NULL, q ? c->rot.scales : NULL, false, s->dtype};
    const double t0 = moe_now();
    for (uint32_t i = 0;; i++) {
        const char *e = c->rot.buf + (size_t)(i % n_rot) * per;
        task.w.gate = e, task.w.up = e + mat, task.w.down = e + 2 * mat;
        const double a = moe_now();
        moe_status st = moe_cpu_run(c->cpu, &task, 1);
        const double us = (moe_now() - a) * 1e6;
        if (st != MOE_OK) return st;
        if (i == 0) continue; /* warm-up: first-call costs (page faults of scratch) */
        moe_stat_add(out, us);
        if (enough(out, r, t0)) return MOE_OK;
    }
}

static sampling rule(bool quick, double rse, double cap) {
    return (sampling){rse > 0 ? rse : quick ? 0.03 : 0.01, cap > 0 ? cap : quick ? 1.0 : 4.0, quick ? 5 : 10};
}

static size_t rotation_bytes(size_t want, uint64_t l3, const moe_profile_shape *shapes, uint32_t n) {
    size_t b = want ? want : (size_t)l3 * 3 > ((size_t)1 << 30) ? (size_t)l3 * 3 : (size_t)1 << 30;
    for (uint32_t i = 0; i < n; i++) { /* room for two experts of the largest shape */
        const size_t e = moe_expert_weight_bytes(shapes[i].hidden, shapes[i].inter, shapes[i].dtype, shapes[i].dtype) + 4096;
        if (2 * e > b) b = 2 * e;
    }
    return b;
}

moe_status moe_profiler_sample_expert(const moe_profile_shape *s, uint32_t m, uint32_t threads, double rse_target,
                                      double cap_s, moe_stat *out) {
    if (!s || !out || !m || !moe_expert_weight_bytes(s->hidden, s->inter, s->dtype, s->dtype))
        return moe_fail(MOE_ERR_INVALID_ARG, "profiler: bad arguments");
    moe_topology_t *t = NULL;
    moe_status st = moe_topology_detect(&t);
    if (st != MOE_OK) return st;
    const uint64_t l3 = t->info.l3_bytes;
    moe_topology_free(&t);
    bench_ctx c;
    const uint32_t dim = s->hidden > s->inter ? s->hidden : s->inter;
    st = ctx_make(&c, threads, rotation_bytes(0, l3, s, 1), dim, m, s->hidden, NULL);
    if (st == MOE_OK) st = moe_cpu_prepare(c.cpu, s->hidden, s->inter, s->dtype);
    const sampling r = rule(true, rse_target, cap_s);
    *out = (moe_stat){0};
    if (st == MOE_OK) st = sample(&c, s, m, 0, &r, out);
    ctx_free(&c);
    return st;
}

/* The shapes and M points to measure: the options', else the defaults. */
typedef struct profile_plan {
    moe_profile_shape def[3 * 5];
    const moe_profile_shape *shapes;
    uint32_t n_shapes;
    const uint32_t *ms;
    uint32_t n_ms;
    uint32_t max_m, max_dim, max_hidden;
} profile_plan;

static moe_status plan_points(const moe_profiler_opts *o, profile_plan *pl) {
    pl->shapes = o->shapes, pl->n_shapes = o->n_shapes;
    if (!pl->shapes || !pl->n_shapes) {
        pl->n_shapes = 0;
        const uint32_t n_sh = o->quick ? 1 : (uint32_t)(sizeof full_shapes / sizeof full_shapes[0]);
        for (uint32_t d = 0; d < 3; d++)
            for (uint32_t i = 0; i < n_sh; i++)
                pl->def[pl->n_shapes++] = (moe_profile_shape){full_shapes[i][0], full_shapes[i][1], full_dtypes[d]};
        pl->shapes = pl->def;
    }
    pl->ms = o->ms ? o->ms : o->quick ? quick_ms : full_ms;
    pl->n_ms = o->ms ? o->n_ms : o->quick ? 5 : 10;
    pl->max_m = pl->max_dim = pl->max_hidden = 0;
    for (uint32_t i = 0; i < pl->n_ms; i++) pl->max_m = pl->ms[i] > pl->max_m ? pl->ms[i] : pl->max_m;
    for (uint32_t i = 0; i < pl->n_shapes; i++) {
        const moe_profile_shape *sh = &pl->shapes[i];
        if (!sh->hidden || !sh->inter || !moe_expert_weight_bytes(sh->hidden, sh->inter, sh->dtype, sh->dtype))
            return moe_fail(MOE_ERR_INVALID_ARG, "moe_profiler_run: shape %u (%ux%u %s) is empty, has no dtype or rows "
                            "that are not whole blocks", i, sh->hidden, sh->inter, moe_dtype_name(sh->dtype));
        pl->max_dim = sh->hidden > pl->max_dim ? sh->hidden : pl->max_dim;
        pl->max_dim = sh->inter > pl->max_dim ? sh->inter : pl->max_dim;
        pl->max_hidden = sh->hidden > pl->max_hidden ? sh->hidden : pl->max_hidden;
    }
    if (!pl->max_m) return moe_fail(MOE_ERR_INVALID_ARG, "moe_profiler_run: no M points");
    return MOE_OK;
}

/* One curve: a shape's expert at every M point on one team's node. */
static moe_status measure_curve(moe_profile *p, bench_ctx *c, const profile_plan *pl, const moe_profile_shape *s,
                                uint32_t team, const sampling *r, const moe_logger *log) {
    const uint32_t node = c->teams.index[team];
    moe_status st = moe_cpu_prepare(c->cpu, s->hidden, s->inter, s->dtype);
    if (st != MOE_OK) return st;
    moe_curve *cv = moe_profile_curve(p, s->hidden, s->inter, s->dtype, -1, node);
    if (!cv) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "profiler: allocation failed");
    for (uint32_t k = 0; k < pl->n_ms; k++) {
        if (!pl->ms[k]) continue;
        moe_stat s1 = {0};
        if ((st = sample(c, s, pl->ms[k], team, r, &s1)) != MOE_OK) return st;
        moe_curve_point *pt = moe_curve_at(cv, pl->ms[k]);
        if (!pt) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "profiler: allocation failed");
        moe_stat_merge(&pt->us, &s1); /* every sample, not just the mean */
        moe_log(log, MOE_LOG_INFO, "profile: %ux%u %s node %u m %u: %.1f us (n %llu, rse %.1f%%)", s->hidden,
                s->inter, moe_dtype_name(s->dtype), node, pl->ms[k], moe_stat_mean(&s1), (unsigned long long)s1.n,
                100.0 * moe_stat_rse(&s1));
    }
    return MOE_OK;
}

moe_status moe_profiler_run(moe_profile *p, const moe_profiler_opts *o) {
    if (!p || !o) return moe_fail(MOE_ERR_INVALID_ARG, "moe_profiler_run: NULL argument");
    moe_status st = moe_profiler_host(p);
    if (st != MOE_OK) return st;
    snprintf(p->mode, sizeof p->mode, "%s", o->quick ? "quick" : "full");
    const sampling r = rule(o->quick, o->rse_target, o->cap_s);
    measure_bandwidth(p, &r, o->log);
    profile_plan pl;
    if ((st = plan_points(o, &pl)) != MOE_OK) return st;
    bench_ctx c;
    st = ctx_make(&c, o->threads, rotation_bytes(o->rotate_bytes, p->topo.l3_bytes, pl.shapes, pl.n_shapes),
                  pl.max_dim, pl.max_m, pl.max_hidden, o->log);
    if (st == MOE_OK) {
        p->threads = 0;
        for (uint32_t t = 0; t < c.teams.n; t++) p->threads += c.teams.size[t];
    }
    for (uint32_t team = 0; team < c.teams.n && st == MOE_OK; team++) {
        if (c.teams.n > 1) moe_numa_move(c.rot.buf, c.rot.bytes, c.teams.node[team]);
        for (uint32_t i = 0; i < pl.n_shapes && st == MOE_OK; i++)
            st = measure_curve(p, &c, &pl, &pl.shapes[i], team, &r, o->log);
    }
    ctx_free(&c);
    if (st == MOE_OK && p->n_gpus) st = measure_gpus(p, &r, pl.shapes, pl.n_shapes, pl.ms, pl.n_ms, o->log);
    if (st == MOE_OK) st = moe_profile_finish(p);
    return st;
}
