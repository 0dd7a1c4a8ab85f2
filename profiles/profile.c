/* profile.c - see profile.h; the format is documented in docs/profiles.md. */
#define _POSIX_C_SOURCE 200809L /* fileno, fsync */
#include "profile.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- statistics --------------------------------------------------------- */

void moe_stat_add(moe_stat *s, double x) { s->n++, s->sum += x, s->sumsq += x * x; }

void moe_stat_merge(moe_stat *into, const moe_stat *from) {
    into->n += from->n, into->sum += from->sum, into->sumsq += from->sumsq;
}

double moe_stat_mean(const moe_stat *s) { return s->n ? s->sum / (double)s->n : 0.0; }

double moe_stat_sd(const moe_stat *s) {
    if (s->n < 2) return 0.0;
    const double n = (double)s->n, var = (s->sumsq - s->sum * s->sum / n) / (n - 1.0);
    return var > 0.0 ? sqrt(var) : 0.0;
}

double moe_stat_rse(const moe_stat *s) {
    const double mean = moe_stat_mean(s);
    if (s->n < 2 || !(mean > 0.0)) return INFINITY;
    return moe_stat_sd(s) / sqrt((double)s->n) / mean;
}

/* ---- the in-memory profile ---------------------------------------------- */

void moe_profile_init(moe_profile *p) {
    memset(p, 0, sizeof *p);
    for (uint32_t g = 0; g < MOE_PROFILE_MAX_GPUS; g++) p->gpus[g].numa_node = -1;
}

void moe_profile_clear(moe_profile *p) {
    for (uint32_t i = 0; i < p->n_curves; i++) free(p->curves[i].points);
    free(p->curves);
    free(p->cost_points);
    moe_profile_init(p);
}

moe_curve *moe_profile_curve(moe_profile *p, uint32_t hidden, uint32_t inter, moe_dtype t, int32_t gpu,
                             uint32_t node) {
    for (uint32_t i = 0; i < p->n_curves; i++) {
        moe_curve *c = &p->curves[i];
        if (c->hidden == hidden && c->inter == inter && c->dtype == t && c->gpu == gpu && c->node == node) return c;
    }
    if (p->n_curves == p->cap_curves) {
        uint32_t cap = p->cap_curves ? 2 * p->cap_curves : 8;
        moe_curve *c = realloc(p->curves, cap * sizeof *c);
        if (!c) return NULL;
        p->curves = c, p->cap_curves = cap;
    }
    moe_curve *c = &p->curves[p->n_curves++];
    *c = (moe_curve){.hidden = hidden, .inter = inter, .dtype = t, .gpu = gpu, .node = gpu < 0 ? node : 0};
    return c;
}

static moe_curve_point *curve_point(moe_curve *c, uint32_t m) {
    uint32_t i = 0;
    while (i < c->n_points && c->points[i].m < m) i++;
    if (i < c->n_points && c->points[i].m == m) return &c->points[i];
    moe_curve_point *pts = realloc(c->points, (c->n_points + 1) * sizeof *pts);
    if (!pts) return NULL;
    c->points = pts;
    memmove(pts + i + 1, pts + i, (c->n_points - i) * sizeof *pts);
    c->n_points++;
    pts[i] = (moe_curve_point){.m = m};
    return &pts[i];
}

moe_curve_point *moe_curve_at(moe_curve *c, uint32_t m) { return curve_point(c, m); }

/* ---- writing ------------------------------------------------------------ */

typedef struct text_out {
    char *buf;
    size_t cap, len;
} text_out;

static void put(text_out *o, const char *fmt, ...) MOE_PRINTF(2, 3);
static void put(text_out *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const size_t room = o->len < o->cap ? o->cap - o->len : 0;
    const int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) o->len += (size_t)n;
}

/* The shortest decimal that reads back as exactly v. */
static const char *num(char *buf, size_t cap, double v) {
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    return buf;
}

/* A figure: exact for merging (%.17g round-trips doubles), and its mean
 * and spread as a comment for people. */
static void put_stat(text_out *o, const char *key, const moe_stat *s, const char *unit) {
    const double mean = moe_stat_mean(s), sd = moe_stat_sd(s);
    char a[32], b[32];
    put(o, "%s = n=%llu sum=%s sumsq=%s", key, (unsigned long long)s->n, num(a, sizeof a, s->sum),
        num(b, sizeof b, s->sumsq));
    if (s->n > 1 && mean > 0) put(o, "  # %.4g %s, sd %.1f%%\n", mean, unit, 100.0 * sd / mean);
    else put(o, "  # %.4g %s\n", mean, unit);
}

static void put_link(text_out *o, uint32_t g, const char *dir, const moe_link_curve *c) {
    char key[96];
    for (uint32_t i = 0; i < c->n; i++) {
        if (!c->gbps[i].n) continue;
        snprintf(key, sizeof key, "gpu%u.%s.%llu_bytes.gbps", g, dir, (unsigned long long)c->bytes[i]);
        put_stat(o, key, &c->gbps[i], "GB/s");
    }
}

static void put_curves(text_out *o, const moe_profile *p, bool gpu) {
    char key[128];
    for (uint32_t i = 0; i < p->n_curves; i++) {
        const moe_curve *c = &p->curves[i];
        if ((c->gpu >= 0) != gpu) continue;
        for (uint32_t j = 0; j < c->n_points; j++) {
            if (!c->points[j].us.n) continue; /* no samples: nothing to say */
            if (gpu)
                snprintf(key, sizeof key, "gpu%d.%ux%u.%s.m%u.time_us", c->gpu, c->hidden, c->inter,
                         moe_dtype_name(c->dtype), c->points[j].m);
            else
                snprintf(key, sizeof key, "%ux%u.%s.node%u.m%u.time_us", c->hidden, c->inter,
                         moe_dtype_name(c->dtype), c->node, c->points[j].m);
            put_stat(o, key, &c->points[j].us, "us");
        }
    }
}

static const struct {
    const char *name;
    size_t off;
} features[] = {
    {"avx2", offsetof(moe_topology_info, has_avx2)},
    {"avx512f", offsetof(moe_topology_info, has_avx512f)},
    {"avx512_bf16", offsetof(moe_topology_info, has_avx512_bf16)},
    {"avx512_vnni", offsetof(moe_topology_info, has_avx512_vnni)},
    {"amx", offsetof(moe_topology_info, has_amx)},
};
enum { N_FEATURES = sizeof features / sizeof features[0] };

static uint32_t *feature(moe_topology_info *t, int i) { return (uint32_t *)((char *)t + features[i].off); }

size_t moe_profile_format(const moe_profile *p, char *buf, size_t cap) {
    text_out o = {buf, cap, 0};
    put(&o, "# moerun-profile %d\n", MOE_PROFILE_VERSION);
    put(&o, "# A moerun machine profile (docs/profiles.md). Figures are n=<samples>\n"
            "# sum=<sum> sumsq=<sum of squares>; the comment after each is its mean\n"
            "# and standard deviation. Edit [tuning] freely; moe-profile --check FILE\n"
            "# says whether the file is still valid.\n\n");
    put(&o, "[host]\n");
    if (p->hostname[0]) put(&o, "hostname = %s\n", p->hostname);
    put(&o, "cpu_model = %s\nmoerun_version = %s\n", p->cpu_model, p->moerun_version);
    if (p->onednn_version[0]) put(&o, "onednn_version = %s\n", p->onednn_version);
    if (p->created[0]) put(&o, "created = %s\n", p->created);
    put(&o, "source = %s\n", p->source);
    if (p->mode[0]) put(&o, "mode = %s\n", p->mode);
    put(&o, "threads = %u\n\n", p->threads);

    const moe_topology_info *t = &p->topo;
    put(&o, "[topology]\npackages = %u\nnuma_nodes = %u\ncores = %u\npus = %u\nl3_bytes = %llu\nmemory_bytes = %llu\n"
            "features =", t->n_packages, t->n_numa_nodes, t->n_cores, t->n_pus, (unsigned long long)t->l3_bytes,
        (unsigned long long)t->memory_bytes);
    moe_topology_info tc = *t;
    for (int i = 0; i < N_FEATURES; i++)
        if (*feature(&tc, i)) put(&o, " %s", features[i].name);
    put(&o, "\n");
    for (uint32_t n = 0; n < t->n_numa_nodes && n < MOE_PROFILE_MAX_NODES; n++)
        put(&o, "node%u.os_index = %u\nnode%u.cores = %u\n", n, p->node_os[n], n, p->node_cores[n]);

    put(&o, "\n[bandwidth]\n# read_gbps.nodeI.fromJ: node I's cores reading node J's memory\n");
    char key[96];
    for (uint32_t i = 0; i < t->n_numa_nodes && i < MOE_PROFILE_MAX_NODES; i++)
        for (uint32_t j = 0; j < t->n_numa_nodes && j < MOE_PROFILE_MAX_NODES; j++)
            if (p->read_gbps[i][j].n) {
                snprintf(key, sizeof key, "read_gbps.node%u.from%u", i, j);
                put_stat(&o, key, &p->read_gbps[i][j], "GB/s");
            }

    put(&o, "\n[cpu-expert]\n# HIDDENxINTER.dtype.nodeN.mM.time_us: one expert call on M tokens\n");
    put_curves(&o, p, false);

    if (p->n_gpus) {
        put(&o, "\n[gpu]\n");
        for (uint32_t g = 0; g < p->n_gpus; g++) {
            const moe_profile_gpu *d = &p->gpus[g];
            put(&o, "gpu%u.name = %s\ngpu%u.compute_capability = %u.%u\ngpu%u.total_bytes = %llu\n", g, d->name, g,
                d->cc_major, d->cc_minor, g, (unsigned long long)d->total_bytes);
            if (d->free_bytes) put(&o, "gpu%u.free_bytes = %llu\n", g, (unsigned long long)d->free_bytes);
            put(&o, "gpu%u.numa_node = %d\n", g, d->numa_node);
            if (d->launch_us.n) snprintf(key, sizeof key, "gpu%u.launch_us", g), put_stat(&o, key, &d->launch_us, "us");
            if (d->event_us.n) snprintf(key, sizeof key, "gpu%u.event_us", g), put_stat(&o, key, &d->event_us, "us");
        }
        put_curves(&o, p, true);
        put(&o, "\n[link]\n");
        for (uint32_t g = 0; g < p->n_gpus; g++) {
            put_link(&o, g, "h2d_pinned", &p->gpus[g].h2d_pinned);
            put_link(&o, g, "h2d_pageable", &p->gpus[g].h2d_pageable);
            put_link(&o, g, "d2h_pinned", &p->gpus[g].d2h_pinned);
        }
    }

    const moe_tuning *u = &p->tuning;
    char nb[32];
    put(&o, "\n[tuning]\n# The runtime's knobs; command-line flags override them. Unset keys\n"
            "# keep the runtime's defaults (docs/profiles.md lists them).\n");
    if (u->set & MOE_TUNE_POLICY) put(&o, "policy = %s\n", u->policy);
    if (u->set & MOE_TUNE_GPU_BUDGET) {
        if (u->gpu_budget_bytes) put(&o, "gpu_budget_bytes = %llu\n", (unsigned long long)u->gpu_budget_bytes);
        else put(&o, "gpu_budget_fraction = %s\n", num(nb, sizeof nb, u->gpu_budget_fraction));
    }
    if (u->set & MOE_TUNE_PREFETCH_DEPTH) put(&o, "prefetch_depth_layers = %u\n", u->prefetch_depth);
    if (u->set & MOE_TUNE_PREFETCH_MIN_GAIN) put(&o, "prefetch_min_gain_us = %s\n", num(nb, sizeof nb, u->prefetch_min_gain_us));
    if (u->set & MOE_TUNE_MRS_ALPHA) put(&o, "mrs_alpha = %s\n", num(nb, sizeof nb, u->mrs_alpha));
    if (u->set & MOE_TUNE_MRS_TOP_P) put(&o, "mrs_top_p = %s\n", num(nb, sizeof nb, u->mrs_top_p));
    if (u->set & MOE_TUNE_THREADS_PER_NODE) put(&o, "threads_per_node = %u\n", u->threads_per_node);
    if (u->set & MOE_TUNE_PINNED_LIMIT) put(&o, "pinned_limit_bytes = %llu\n", (unsigned long long)u->pinned_limit_bytes);
    if (u->set & MOE_TUNE_PLACEMENT) put(&o, "placement = %s\n", u->placement);
    return o.len;
}

moe_status moe_profile_save(const moe_profile *p, const char *path) {
    if (!p || !path) return moe_fail(MOE_ERR_INVALID_ARG, "moe_profile_save: NULL argument");
    const size_t len = moe_profile_format(p, NULL, 0);
    char *text = malloc(len + 1);
    if (!text) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_profile_save: allocation failed");
    moe_profile_format(p, text, len + 1);
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        free(text);
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_profile_save: path too long");
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        free(text);
        return moe_fail(MOE_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    }
    bool ok = fwrite(text, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    ok = fclose(f) == 0 && ok;
    free(text);
    if (!ok || rename(tmp, path) != 0) {
        if (ok) err = errno;
        remove(tmp);
        return moe_fail(MOE_ERR_IO, "%s: cannot write: %s", path, strerror(err));
    }
    return MOE_OK;
}

/* ---- reading ------------------------------------------------------------ */

enum { S_NONE = -1, S_HOST, S_TOPOLOGY, S_BANDWIDTH, S_CPU, S_GPU, S_LINK, S_TUNING, N_SECTIONS };
static const char *const section_names[N_SECTIONS] = {"host", "topology", "bandwidth",
                                                      "cpu-expert", "gpu", "link", "tuning"};
static const bool section_required[N_SECTIONS] = {true, true, true, true, false, false, false};

typedef struct parser {
    moe_profile *p;
    const char *name;
    unsigned line;
    int section;
    bool seen[N_SECTIONS];
    /* scalar keys already given, per section: bit i of keys[section] */
    uint64_t keys[N_SECTIONS];
    uint64_t node_keys[MOE_PROFILE_MAX_NODES];
    uint64_t gpu_keys[MOE_PROFILE_MAX_GPUS];
} parser;

#define bad(ps, ...) moe_fail_at(MOE_ERR_PARSE, (ps)->name, (ps)->line, __VA_ARGS__)

static bool parse_u64(const char *s, uint64_t *out) {
    if (!*s || *s == '-' || *s == '+') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

static bool parse_u32(const char *s, uint32_t *out) {
    uint64_t v;
    if (!parse_u64(s, &v) || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

static bool parse_double(const char *s, double *out) {
    if (!*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* "n=5 sum=1.5 sumsq=0.5": at least one sample of a positive figure,
 * with a variance that is not negative beyond rounding. */
static moe_status parse_stat(const parser *ps, const char *key, char *v, moe_stat *s) {
    char *f[3] = {NULL, NULL, NULL};
    const char *names[3] = {"n=", "sum=", "sumsq="};
    for (int i = 0; i < 3; i++) {
        while (*v == ' ' || *v == '\t') v++;
        if (strncmp(v, names[i], strlen(names[i])) != 0)
            return bad(ps, "%s: expected \"n=<samples> sum=<sum> sumsq=<sum of squares>\"", key);
        f[i] = v + strlen(names[i]);
        v = f[i] + strcspn(f[i], " \t");
        if (*v) *v++ = '\0';
    }
    while (*v == ' ' || *v == '\t') v++;
    if (*v) return bad(ps, "%s: unexpected \"%s\" after the figure", key, v);
    if (!parse_u64(f[0], &s->n) || s->n == 0) return bad(ps, "%s: n must be a whole number of samples >= 1", key);
    if (!parse_double(f[1], &s->sum) || !(s->sum > 0))
        return bad(ps, "%s: sum must be a positive finite number, not \"%s\"", key, f[1]);
    if (!parse_double(f[2], &s->sumsq) || !(s->sumsq > 0))
        return bad(ps, "%s: sumsq must be a positive finite number, not \"%s\"", key, f[2]);
    const double n = (double)s->n;
    if (s->sumsq < s->sum * s->sum / n * (1.0 - 1e-9))
        return bad(ps, "%s: sumsq %.6g is below sum^2/n = %.6g (negative variance)", key, s->sumsq, s->sum * s->sum / n);
    return MOE_OK;
}

static moe_status copy_str(const parser *ps, const char *key, const char *v, char *dst, size_t cap) {
    if (!*v) return bad(ps, "%s: empty value", key);
    /* What the writer writes back must read the same: no '#' that would
     * start a comment after "key = ", no control characters. */
    if (*v == '#') return bad(ps, "%s: a value cannot start with '#'", key);
    for (const char *c = v; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) return bad(ps, "%s: control character in the value", key);
    if (strlen(v) >= cap) return bad(ps, "%s: value longer than %zu characters", key, cap - 1);
    memcpy(dst, v, strlen(v) + 1);
    return MOE_OK;
}

/* Marks scalar key `bit` of a key set as given; false if it was already. */
static bool first_time(uint64_t *set, int bit) {
    if (*set & (1ull << bit)) return false;
    *set |= 1ull << bit;
    return true;
}

static int key_index(const char *key, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(key, names[i]) == 0) return i;
    return -1;
}

static moe_status host_key(parser *ps, const char *k, const char *v) {
    static const char *const names[] = {"hostname", "cpu_model", "moerun_version", "onednn_version",
                                        "created", "source", "mode", "threads"};
    moe_profile *p = ps->p;
    const int i = key_index(k, names, 8);
    if (i < 0) return bad(ps, "unknown key \"%s\" in [host]", k);
    if (!first_time(&ps->keys[S_HOST], i)) return bad(ps, "duplicate key \"%s\"", k);
    switch (i) {
    case 0: return copy_str(ps, k, v, p->hostname, sizeof p->hostname);
    case 1: return copy_str(ps, k, v, p->cpu_model, sizeof p->cpu_model);
    case 2: return copy_str(ps, k, v, p->moerun_version, sizeof p->moerun_version);
    case 3: return copy_str(ps, k, v, p->onednn_version, sizeof p->onednn_version);
    case 4: return copy_str(ps, k, v, p->created, sizeof p->created);
    case 5:
        if (strcmp(v, "measured") && strcmp(v, "datasheet"))
            return bad(ps, "source: \"%s\"; expected measured or datasheet", v);
        return copy_str(ps, k, v, p->source, sizeof p->source);
    case 6:
        if (strcmp(v, "quick") && strcmp(v, "full")) return bad(ps, "mode: \"%s\"; expected quick or full", v);
        return copy_str(ps, k, v, p->mode, sizeof p->mode);
    default:
        if (!parse_u32(v, &p->threads) || p->threads == 0 || p->threads > 4096)
            return bad(ps, "threads: \"%s\"; expected 1..4096", v);
        return MOE_OK;
    }
}

/* "node<N>.<rest>" or "gpu<N>.<rest>": N into *idx, rest returned. */
static const char *indexed(const char *k, const char *prefix, uint32_t *idx) {
    const size_t pl = strlen(prefix);
    if (strncmp(k, prefix, pl) != 0 || k[pl] < '0' || k[pl] > '9') return NULL;
    char *end;
    unsigned long v = strtoul(k + pl, &end, 10);
    if (*end != '.' || v > 1000000) return NULL;
    *idx = (uint32_t)v;
    return end + 1;
}

static moe_status topology_key(parser *ps, const char *k, char *v) {
    static const char *const names[] = {"packages", "numa_nodes", "cores", "pus", "l3_bytes", "memory_bytes",
                                        "features"};
    moe_profile *p = ps->p;
    moe_topology_info *t = &p->topo;
    uint32_t node;
    const char *rest = indexed(k, "node", &node);
    if (rest) {
        if (!(ps->keys[S_TOPOLOGY] & 2)) return bad(ps, "%s before numa_nodes", k);
        if (node >= t->n_numa_nodes) return bad(ps, "%s: node %u, but numa_nodes = %u", k, node, t->n_numa_nodes);
        const int i = !strcmp(rest, "os_index") ? 0 : !strcmp(rest, "cores") ? 1 : -1;
        if (i < 0) return bad(ps, "unknown key \"%s\" in [topology]", k);
        if (!first_time(&ps->node_keys[node], i)) return bad(ps, "duplicate key \"%s\"", k);
        if (!parse_u32(v, i ? &p->node_cores[node] : &p->node_os[node]))
            return bad(ps, "%s: \"%s\" is not a whole number", k, v);
        return MOE_OK;
    }
    const int i = key_index(k, names, 7);
    if (i < 0) return bad(ps, "unknown key \"%s\" in [topology]", k);
    if (!first_time(&ps->keys[S_TOPOLOGY], i)) return bad(ps, "duplicate key \"%s\"", k);
    if (i == 6) { /* features: names from a fixed list */
        char *save = NULL;
        for (char *f = strtok_r(v, " \t", &save); f; f = strtok_r(NULL, " \t", &save)) {
            int j = 0;
            while (j < N_FEATURES && strcmp(f, features[j].name)) j++;
            if (j == N_FEATURES) return bad(ps, "features: unknown CPU feature \"%s\"", f);
            *feature(t, j) = 1;
        }
        return MOE_OK;
    }
    uint64_t x;
    if (!parse_u64(v, &x)) return bad(ps, "%s: \"%s\" is not a whole number", k, v);
    if (i < 4 && (x == 0 || x > 1000000)) return bad(ps, "%s: %llu is out of range (1..1000000)", k, (unsigned long long)x);
    switch (i) {
    case 0: t->n_packages = (uint32_t)x; break;
    case 1:
        if (x > MOE_PROFILE_MAX_NODES) return bad(ps, "numa_nodes: %llu, at most %d", (unsigned long long)x, MOE_PROFILE_MAX_NODES);
        t->n_numa_nodes = (uint32_t)x;
        break;
    case 2: t->n_cores = (uint32_t)x; break;
    case 3: t->n_pus = (uint32_t)x; break;
    case 4: t->l3_bytes = x; break;
    default: t->memory_bytes = x; break;
    }
    return MOE_OK;
}

static moe_status bandwidth_key(parser *ps, const char *k, char *v) {
    uint32_t i, j;
    const char *rest = strncmp(k, "read_gbps.", 10) == 0 ? indexed(k + 10, "node", &i) : NULL;
    if (!rest || strncmp(rest, "from", 4) != 0 || !parse_u32(rest + 4, &j))
        return bad(ps, "unknown key \"%s\" in [bandwidth] (expected read_gbps.nodeI.fromJ)", k);
    const uint32_t n = ps->p->topo.n_numa_nodes;
    if (i >= n || j >= n) return bad(ps, "%s: node out of range (numa_nodes = %u)", k, n);
    moe_stat *s = &ps->p->read_gbps[i][j];
    if (s->n) return bad(ps, "duplicate key \"%s\"", k);
    return parse_stat(ps, k, v, s);
}

/* "HIDDENxINTER.dtype." then the rest. */
static const char *shape_dtype(const char *k, uint32_t *h, uint32_t *in, moe_dtype *t) {
    char *end;
    unsigned long a = strtoul(k, &end, 10);
    if (end == k || *end != 'x' || a == 0 || a > (1u << 20)) return NULL;
    const char *s = end + 1;
    unsigned long b = strtoul(s, &end, 10);
    if (end == s || *end != '.' || b == 0 || b > (1u << 20)) return NULL;
    s = end + 1;
    for (int d = 0; d < MOE_DTYPE_COUNT_; d++) {
        const char *name = moe_dtype_name((moe_dtype)d);
        const size_t l = strlen(name);
        if (strncmp(s, name, l) == 0 && s[l] == '.') {
            *h = (uint32_t)a, *in = (uint32_t)b, *t = (moe_dtype)d;
            return s + l + 1;
        }
    }
    return NULL;
}

/* "m<M>.time_us" of a curve: points in increasing m. */
static moe_status curve_key(parser *ps, const char *k, const char *rest, char *v, uint32_t h, uint32_t in,
                            moe_dtype t, int32_t gpu, uint32_t node) {
    uint32_t m;
    char num[16];
    const size_t l = strcspn(rest + 1, ".");
    if (rest[0] != 'm' || l == 0 || l >= sizeof num || strcmp(rest + 1 + l, ".time_us") != 0)
        return bad(ps, "%s: expected ...m<M>.time_us", k);
    memcpy(num, rest + 1, l), num[l] = '\0';
    if (!parse_u32(num, &m) || m == 0 || m > (1u << 20)) return bad(ps, "%s: M must be 1..1048576", k);
    moe_curve *c = moe_profile_curve(ps->p, h, in, t, gpu, node);
    if (!c) return moe_fail_at(MOE_ERR_OUT_OF_MEMORY, ps->name, ps->line, "out of memory");
    if (c->n_points && c->points[c->n_points - 1].m >= m)
        return bad(ps, "%s: %s M = %u after M = %u; a curve's M points must increase",
                   k, c->points[c->n_points - 1].m == m ? "duplicate" : "", m, c->points[c->n_points - 1].m);
    moe_stat s = {0};
    moe_status st = parse_stat(ps, k, v, &s);
    if (st != MOE_OK) return st;
    moe_curve_point *pt = curve_point(c, m);
    if (!pt) return moe_fail_at(MOE_ERR_OUT_OF_MEMORY, ps->name, ps->line, "out of memory");
    pt->us = s;
    return MOE_OK;
}

static moe_status cpu_key(parser *ps, const char *k, char *v) {
    uint32_t h, in, node;
    moe_dtype t;
    const char *rest = shape_dtype(k, &h, &in, &t);
    if (!rest || !(rest = indexed(rest, "node", &node)))
        return bad(ps, "unknown key \"%s\" in [cpu-expert] (expected HIDDENxINTER.dtype.nodeN.mM.time_us)", k);
    if (node >= ps->p->topo.n_numa_nodes) return bad(ps, "%s: node %u, but numa_nodes = %u", k, node, ps->p->topo.n_numa_nodes);
    return curve_key(ps, k, rest, v, h, in, t, -1, node);
}

static moe_status gpu_key(parser *ps, const char *k, char *v) {
    static const char *const names[] = {"name", "compute_capability", "total_bytes", "free_bytes", "numa_node",
                                        "launch_us", "event_us"};
    moe_profile *p = ps->p;
    uint32_t g;
    const char *rest = indexed(k, "gpu", &g);
    if (!rest) return bad(ps, "unknown key \"%s\" in [gpu] (keys start gpu<N>.)", k);
    if (g >= MOE_PROFILE_MAX_GPUS) return bad(ps, "%s: at most %d GPUs", k, MOE_PROFILE_MAX_GPUS);
    if (g > p->n_gpus) return bad(ps, "%s: GPUs must be numbered from 0 without gaps", k);
    if (g == p->n_gpus) p->n_gpus++;
    moe_profile_gpu *d = &p->gpus[g];
    uint32_t h, in;
    moe_dtype t;
    const char *crest = shape_dtype(rest, &h, &in, &t);
    if (crest) return curve_key(ps, k, crest, v, h, in, t, (int32_t)g, 0);
    const int i = key_index(rest, names, 7);
    if (i < 0) return bad(ps, "unknown key \"%s\" in [gpu]", k);
    if (!first_time(&ps->gpu_keys[g], i)) return bad(ps, "duplicate key \"%s\"", k);
    uint64_t x;
    switch (i) {
    case 0: return copy_str(ps, k, v, d->name, sizeof d->name);
    case 1: {
        char *dot = strchr(v, '.');
        if (!dot) return bad(ps, "%s: \"%s\"; expected MAJOR.MINOR", k, v);
        *dot = '\0';
        if (!parse_u32(v, &d->cc_major) || !parse_u32(dot + 1, &d->cc_minor) || d->cc_major == 0 || d->cc_major > 99)
            return bad(ps, "%s: expected MAJOR.MINOR", k);
        return MOE_OK;
    }
    case 2: case 3:
        if (!parse_u64(v, &x) || x == 0) return bad(ps, "%s: \"%s\"; expected a positive number of bytes", k, v);
        *(i == 2 ? &d->total_bytes : &d->free_bytes) = x;
        return MOE_OK;
    case 4:
        if (strcmp(v, "-1") == 0) return d->numa_node = -1, MOE_OK;
        if (!parse_u64(v, &x) || x >= MOE_PROFILE_MAX_NODES) return bad(ps, "%s: \"%s\"; expected -1 or a node", k, v);
        d->numa_node = (int32_t)x;
        return MOE_OK;
    default: return parse_stat(ps, k, v, i == 5 ? &d->launch_us : &d->event_us);
    }
}

static moe_status link_key(parser *ps, const char *k, char *v) {
    uint32_t g;
    const char *rest = indexed(k, "gpu", &g);
    if (!rest || g >= ps->p->n_gpus)
        return bad(ps, "%s: links belong to a GPU described in [gpu] (gpu0..gpu%u)", k,
                   ps->p->n_gpus ? ps->p->n_gpus - 1 : 0);
    moe_profile_gpu *d = &ps->p->gpus[g];
    moe_link_curve *c = NULL;
    size_t l = 0;
    if (!strncmp(rest, "h2d_pinned.", l = 11)) c = &d->h2d_pinned;
    else if (!strncmp(rest, "h2d_pageable.", l = 13)) c = &d->h2d_pageable;
    else if (!strncmp(rest, "d2h_pinned.", l = 11)) c = &d->d2h_pinned;
    if (!c) return bad(ps, "unknown key \"%s\" in [link] (gpuN.h2d_pinned|h2d_pageable|d2h_pinned.<B>_bytes.gbps)", k);
    char num[24];
    const char *s = rest + l;
    const size_t nl = strcspn(s, "_");
    uint64_t bytes;
    if (nl == 0 || nl >= sizeof num || strcmp(s + nl, "_bytes.gbps") != 0)
        return bad(ps, "%s: expected <bytes>_bytes.gbps", k);
    memcpy(num, s, nl), num[nl] = '\0';
    if (!parse_u64(num, &bytes) || bytes == 0) return bad(ps, "%s: copy size must be a positive number of bytes", k);
    if (c->n && c->bytes[c->n - 1] >= bytes) return bad(ps, "%s: copy sizes must increase", k);
    if (c->n == MOE_PROFILE_MAX_SIZES) return bad(ps, "%s: at most %d copy sizes", k, MOE_PROFILE_MAX_SIZES);
    c->bytes[c->n] = bytes;
    moe_status st = parse_stat(ps, k, v, &c->gbps[c->n]);
    if (st == MOE_OK) c->n++;
    return st;
}

static moe_status fraction(const parser *ps, const char *k, const char *v, double lo, double hi, double *out) {
    if (!parse_double(v, out) || *out < lo || *out > hi) return bad(ps, "%s: \"%s\"; expected %g..%g", k, v, lo, hi);
    return MOE_OK;
}

static moe_status tuning_key(parser *ps, const char *k, const char *v) {
    static const char *const names[] = {"policy", "gpu_budget_fraction", "gpu_budget_bytes", "prefetch_depth_layers",
                                        "prefetch_min_gain_us", "mrs_alpha", "mrs_top_p", "threads_per_node",
                                        "pinned_limit_bytes", "placement"};
    static const uint32_t bits[] = {MOE_TUNE_POLICY, MOE_TUNE_GPU_BUDGET, MOE_TUNE_GPU_BUDGET,
                                    MOE_TUNE_PREFETCH_DEPTH, MOE_TUNE_PREFETCH_MIN_GAIN, MOE_TUNE_MRS_ALPHA,
                                    MOE_TUNE_MRS_TOP_P, MOE_TUNE_THREADS_PER_NODE, MOE_TUNE_PINNED_LIMIT,
                                    MOE_TUNE_PLACEMENT};
    moe_tuning *u = &ps->p->tuning;
    const int i = key_index(k, names, 10);
    if (i < 0) return bad(ps, "unknown key \"%s\" in [tuning]", k);
    if (u->set & bits[i])
        return bad(ps, i == 1 || i == 2 ? "gpu_budget given twice (gpu_budget_fraction or gpu_budget_bytes, not both)"
                                        : "duplicate key \"%s\"", k);
    u->set |= bits[i];
    uint64_t x;
    switch (i) {
    case 0: return copy_str(ps, k, v, u->policy, sizeof u->policy);
    case 1: return fraction(ps, k, v, 0.0, 1.0, &u->gpu_budget_fraction);
    case 2:
        if (!parse_u64(v, &u->gpu_budget_bytes) || !u->gpu_budget_bytes)
            return bad(ps, "%s: \"%s\"; expected a positive number of bytes", k, v);
        return MOE_OK;
    case 3:
        if (!parse_u32(v, &u->prefetch_depth) || u->prefetch_depth > 16) return bad(ps, "%s: \"%s\"; expected 0..16", k, v);
        return MOE_OK;
    case 4: return fraction(ps, k, v, 0.0, 1e9, &u->prefetch_min_gain_us);
    case 5: return fraction(ps, k, v, 0.0, 1.0, &u->mrs_alpha);
    case 6: return fraction(ps, k, v, 0.0, 1.0, &u->mrs_top_p);
    case 7:
        if (!parse_u32(v, &u->threads_per_node) || u->threads_per_node > 4096)
            return bad(ps, "%s: \"%s\"; expected 0..4096 (0 = every core)", k, v);
        return MOE_OK;
    case 8:
        if (!parse_u64(v, &x)) return bad(ps, "%s: \"%s\" is not a number of bytes", k, v);
        u->pinned_limit_bytes = x;
        return MOE_OK;
    default:
        if (strcmp(v, "round-robin") && strcmp(v, "split"))
            return bad(ps, "placement: \"%s\"; expected round-robin or split", v);
        return copy_str(ps, k, v, u->placement, sizeof u->placement);
    }
}

static moe_status section_done(parser *ps) {
    const moe_profile *p = ps->p;
    switch (ps->section) {
    case S_HOST:
        if (!p->cpu_model[0] || !p->moerun_version[0] || !p->source[0] || !p->threads)
            return bad(ps, "[host] needs cpu_model, moerun_version, source and threads");
        return MOE_OK;
    case S_TOPOLOGY:
        if ((ps->keys[S_TOPOLOGY] & 0xf) != 0xf) return bad(ps, "[topology] needs packages, numa_nodes, cores and pus");
        return MOE_OK;
    case S_GPU:
        for (uint32_t g = 0; g < p->n_gpus; g++)
            if ((ps->gpu_keys[g] & 7) != 7) return bad(ps, "[gpu] gpu%u needs name, compute_capability and total_bytes", g);
        return MOE_OK;
    default: return MOE_OK;
    }
}

static moe_status parse_line(parser *ps, char *s) {
    /* Comments: '#' at the start or after blank space. */
    for (char *c = s; *c; c++)
        if (*c == '#' && (c == s || c[-1] == ' ' || c[-1] == '\t')) {
            *c = '\0';
            break;
        }
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) *--e = '\0';
    while (*s == ' ' || *s == '\t') s++;
    if (!*s) return MOE_OK;
    if (*s == '[') {
        if (e[-1] != ']') return bad(ps, "a section line is [name]");
        e[-1] = '\0';
        int i = 0;
        while (i < N_SECTIONS && strcmp(s + 1, section_names[i])) i++;
        if (i == N_SECTIONS) return bad(ps, "unknown section [%s]", s + 1);
        if (ps->seen[i]) return bad(ps, "section [%s] appears twice", s + 1);
        if (i < ps->section) return bad(ps, "section [%s] after [%s]; sections keep the order of docs/profiles.md",
                                        s + 1, section_names[ps->section]);
        moe_status st = ps->section >= 0 ? section_done(ps) : MOE_OK;
        if (st != MOE_OK) return st;
        for (int j = ps->section + 1; j < i; j++)
            if (section_required[j]) return bad(ps, "section [%s] is missing before [%s]", section_names[j], s + 1);
        ps->section = i, ps->seen[i] = true;
        return MOE_OK;
    }
    char *eq = strchr(s, '=');
    if (!eq) return bad(ps, "expected \"key = value\" or [section]");
    if (ps->section < 0) return bad(ps, "\"%s\" before the first [section]", s);
    char *k = s, *ke = eq, *v = eq + 1;
    while (ke > k && (ke[-1] == ' ' || ke[-1] == '\t')) ke--;
    *ke = '\0';
    while (*v == ' ' || *v == '\t') v++;
    if (!*k) return bad(ps, "a key is missing before '='");
    switch (ps->section) {
    case S_HOST: return host_key(ps, k, v);
    case S_TOPOLOGY: return topology_key(ps, k, v);
    case S_BANDWIDTH: return bandwidth_key(ps, k, v);
    case S_CPU: return cpu_key(ps, k, v);
    case S_GPU: return gpu_key(ps, k, v);
    case S_LINK: return link_key(ps, k, v);
    default: return tuning_key(ps, k, v);
    }
}

moe_status moe_profile_parse(moe_profile *p, const char *text, size_t len, const char *name) {
    if (!p || (!text && len)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_profile_parse: NULL argument");
    moe_profile_clear(p);
    if (!name) name = "profile";
    parser ps = {.p = p, .name = name, .line = 1, .section = S_NONE};
    if (len > MOE_PROFILE_MAX_BYTES)
        return moe_fail(MOE_ERR_PARSE, "%s:1: %zu bytes, more than any profile (%u MB); not a profile", name,
                        len, MOE_PROFILE_MAX_BYTES >> 20);
    if (memchr(text, '\0', len)) {
        const char *z = memchr(text, '\0', len);
        for (const char *c = text; c < z; c++) ps.line += *c == '\n';
        return bad(&ps, "a NUL byte: not a text file");
    }
    static const char magic[] = "# moerun-profile ";
    const size_t ml = sizeof magic - 1;
    if (len < ml || strncmp(text, magic, ml) != 0)
        return bad(&ps, "not a moerun profile (the first line must be \"# moerun-profile %d\")", MOE_PROFILE_VERSION);
    char line[1024];
    moe_status st = MOE_OK;
    for (size_t pos = 0; pos < len && st == MOE_OK; ps.line++) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        const size_t l = (nl ? (size_t)(nl - text) : len) - pos;
        if (l >= sizeof line) {
            st = bad(&ps, "line longer than %zu characters", sizeof line - 1);
            break;
        }
        memcpy(line, text + pos, l), line[l] = '\0';
        pos += l + 1;
        if (ps.line == 1) {
            uint32_t v;
            if (!parse_u32(line + ml, &v)) st = bad(&ps, "version \"%s\" is not a number", line + ml);
            else if (v != MOE_PROFILE_VERSION)
                st = bad(&ps, "profile version %u; this moerun reads version %d (run moe-profile again)", v,
                         MOE_PROFILE_VERSION);
            continue;
        }
        st = parse_line(&ps, line);
    }
    if (st == MOE_OK) {
        ps.line = ps.line > 1 ? ps.line - 1 : 1;
        if (ps.section >= 0) st = section_done(&ps);
        for (int i = 0; i < N_SECTIONS && st == MOE_OK; i++)
            if (section_required[i] && !ps.seen[i]) st = bad(&ps, "section [%s] is missing", section_names[i]);
    }
    if (st == MOE_OK) st = moe_profile_finish(p);
    if (st != MOE_OK) moe_profile_clear(p);
    return st;
}

moe_status moe_profile_load(moe_profile *p, const char *path) {
    if (!p || !path) return moe_fail(MOE_ERR_INVALID_ARG, "moe_profile_load: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f) return moe_fail(MOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    /* Read no more than a profile can be, plus one byte to notice more. */
    char *text = malloc((size_t)MOE_PROFILE_MAX_BYTES + 1);
    if (!text) {
        fclose(f);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_profile_load: allocation failed");
    }
    const size_t len = fread(text, 1, (size_t)MOE_PROFILE_MAX_BYTES + 1, f);
    const bool err = ferror(f) != 0;
    fclose(f);
    moe_status st = err ? moe_fail(MOE_ERR_IO, "%s: read error", path) : moe_profile_parse(p, text, len, path);
    free(text);
    return st;
}

/* ---- merging and identity ------------------------------------------------ */

bool moe_profile_matches(const moe_profile *p, const moe_profile *here, char *why, size_t why_len) {
    char tmp[8];
    if (!why) why = tmp, why_len = sizeof tmp;
#define DIFFER(...) return snprintf(why, why_len, __VA_ARGS__), false
    if (strcmp(p->cpu_model, here->cpu_model)) DIFFER("CPU \"%s\", this host has \"%s\"", p->cpu_model, here->cpu_model);
    if (p->topo.n_cores != here->topo.n_cores) DIFFER("%u cores, this host has %u", p->topo.n_cores, here->topo.n_cores);
    if (p->topo.n_numa_nodes != here->topo.n_numa_nodes)
        DIFFER("%u NUMA nodes, this host has %u", p->topo.n_numa_nodes, here->topo.n_numa_nodes);
    if (p->n_gpus != here->n_gpus) DIFFER("%u GPUs, this host has %u", p->n_gpus, here->n_gpus);
    for (uint32_t g = 0; g < p->n_gpus; g++)
        if (strcmp(p->gpus[g].name, here->gpus[g].name))
            DIFFER("GPU %u is \"%s\", this host's is \"%s\"", g, p->gpus[g].name, here->gpus[g].name);
    /* Same major.minor: kernels, and so costs, change between them. */
    const char *a = p->moerun_version, *b = here->moerun_version;
    const char *da = strchr(a, '.'), *db = strchr(b, '.');
    const size_t la = da && strchr(da + 1, '.') ? (size_t)(strchr(da + 1, '.') - a) : strlen(a);
    const size_t lb = db && strchr(db + 1, '.') ? (size_t)(strchr(db + 1, '.') - b) : strlen(b);
    if (la != lb || strncmp(a, b, la)) DIFFER("moerun %s, this is moerun %s", a, b);
    if (strcmp(p->onednn_version, here->onednn_version))
        DIFFER("oneDNN %s, this build uses %s", p->onednn_version, here->onednn_version);
#undef DIFFER
    if (why_len) why[0] = '\0';
    return true;
}

static void merge_link(moe_link_curve *a, const moe_link_curve *b) {
    for (uint32_t i = 0; i < b->n; i++) {
        uint32_t j = 0;
        while (j < a->n && a->bytes[j] < b->bytes[i]) j++;
        if (j < a->n && a->bytes[j] == b->bytes[i]) {
            moe_stat_merge(&a->gbps[j], &b->gbps[i]);
            continue;
        }
        if (a->n == MOE_PROFILE_MAX_SIZES) continue;
        memmove(&a->bytes[j + 1], &a->bytes[j], (a->n - j) * sizeof a->bytes[0]);
        memmove(&a->gbps[j + 1], &a->gbps[j], (a->n - j) * sizeof a->gbps[0]);
        a->bytes[j] = b->bytes[i], a->gbps[j] = b->gbps[i], a->n++;
    }
}

moe_status moe_profile_merge(moe_profile *a, const moe_profile *b, bool force) {
    if (!a || !b) return moe_fail(MOE_ERR_INVALID_ARG, "moe_profile_merge: NULL argument");
    char why[256];
    if (!force && !moe_profile_matches(b, a, why, sizeof why))
        return moe_fail(MOE_ERR_INVALID_ARG, "profiles of different hosts: the second has %s (force to merge anyway)", why);
    for (uint32_t i = 0; i < MOE_PROFILE_MAX_NODES; i++)
        for (uint32_t j = 0; j < MOE_PROFILE_MAX_NODES; j++) moe_stat_merge(&a->read_gbps[i][j], &b->read_gbps[i][j]);
    for (uint32_t i = 0; i < b->n_curves; i++) {
        const moe_curve *cb = &b->curves[i];
        moe_curve *ca = moe_profile_curve(a, cb->hidden, cb->inter, cb->dtype, cb->gpu, cb->node);
        if (!ca) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_profile_merge: allocation failed");
        for (uint32_t j = 0; j < cb->n_points; j++) {
            moe_curve_point *pt = curve_point(ca, cb->points[j].m);
            if (!pt) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_profile_merge: allocation failed");
            moe_stat_merge(&pt->us, &cb->points[j].us);
        }
    }
    for (uint32_t g = 0; g < b->n_gpus && g < a->n_gpus; g++) {
        moe_profile_gpu *x = &a->gpus[g];
        const moe_profile_gpu *y = &b->gpus[g];
        moe_stat_merge(&x->launch_us, &y->launch_us);
        moe_stat_merge(&x->event_us, &y->event_us);
        merge_link(&x->h2d_pinned, &y->h2d_pinned);
        merge_link(&x->h2d_pageable, &y->h2d_pageable);
        merge_link(&x->d2h_pinned, &y->d2h_pinned);
    }
    /* Tuning: a's keys stand; b fills the ones a leaves unset. */
    moe_tuning *ua = &a->tuning;
    const moe_tuning *ub = &b->tuning;
    const uint32_t take = ub->set & ~ua->set;
    moe_tuning merged = *ub;
    merged.set = ua->set | take;
#define KEEP(bit, ...) if (ua->set & (bit)) { __VA_ARGS__; }
    KEEP(MOE_TUNE_POLICY, memcpy(merged.policy, ua->policy, sizeof merged.policy))
    KEEP(MOE_TUNE_GPU_BUDGET, merged.gpu_budget_fraction = ua->gpu_budget_fraction;
         merged.gpu_budget_bytes = ua->gpu_budget_bytes)
    KEEP(MOE_TUNE_PREFETCH_DEPTH, merged.prefetch_depth = ua->prefetch_depth)
    KEEP(MOE_TUNE_PREFETCH_MIN_GAIN, merged.prefetch_min_gain_us = ua->prefetch_min_gain_us)
    KEEP(MOE_TUNE_MRS_ALPHA, merged.mrs_alpha = ua->mrs_alpha)
    KEEP(MOE_TUNE_MRS_TOP_P, merged.mrs_top_p = ua->mrs_top_p)
    KEEP(MOE_TUNE_THREADS_PER_NODE, merged.threads_per_node = ua->threads_per_node)
    KEEP(MOE_TUNE_PINNED_LIMIT, merged.pinned_limit_bytes = ua->pinned_limit_bytes)
    KEEP(MOE_TUNE_PLACEMENT, memcpy(merged.placement, ua->placement, sizeof merged.placement))
#undef KEEP
    *ua = merged;
    return moe_profile_finish(a);
}
