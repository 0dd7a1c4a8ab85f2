/* moe-profile - measures this machine into a moerun profile, and shows,
 * checks and merges profile files (docs/profiles.md).
 *
 *   moe-profile [--quick] [-o FILE] [--threads N] [--shape HxI,...] [--dtype T,...] [--m M,...]
 *   moe-profile --show FILE
 *   moe-profile --check FILE
 *   moe-profile --merge A B [-o FILE] [--force]
 *   moe-profile --tune FILE --trace T... (--model CONFIG | --shape HxI) [--gpu-budget B] [--mode decode|prefill] [-o FILE]
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "hf_config.h"
#include "llm.h"
#include "profile.h"
#include "quant.h"
#include "profiler.h"
#include "tracesim.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe-profile [--quick] [-o FILE] [options]   measure this machine, write a profile\n"
            "       moe-profile --show FILE                     print a profile readably\n"
            "       moe-profile --check FILE                    exit 0 if FILE is a valid profile\n"
            "       moe-profile --merge A B [-o FILE] [--force] add B's samples to A's\n"
            "       moe-profile --tune FILE --trace T... (--model CONFIG | --shape HxI) [options]\n"
            "                                                   choose FILE's [tuning] by simulation\n"
            "\n"
            "Measuring:\n"
            "  --quick          one shape per dtype, 5 M points, looser error target (under a minute)\n"
            "  -o FILE          where to write (default: $MOE_PROFILE, else ~/.cache/moerun/profile.txt,\n"
            "                   which the runtime loads by default); '-' writes to standard output\n"
            "  --threads N      CPU threads (default: one per core)\n"
            "  --model PATH     measure the routed experts of this model (a Hugging Face directory or a\n"
            "                   GGUF file): its shape, and the formats of its gate/up and down matrices\n"
            "                   (instead of --shape and --dtype)\n"
            "  --shape HxI,...  expert shapes (default: 2048x1408 quick; every real model's shape full)\n"
            "  --dtype T,...    bf16, int8, f32, f16, or GGUF's block formats: q4_0, q4_1, q5_0, q5_1,\n"
            "                   q8_0, q2_K .. q6_K, iq4_nl, iq4_xs, mxfp4 (default: bf16,int8,f32)\n"
            "  --m M,...        token counts per expert call (default: 1,4,16,64,256 quick;\n"
            "                   1,2,4,...,512 full)\n"
            "  --rse X          stop sampling a figure once its relative standard error is below X\n"
            "                   (default 0.03 quick, 0.01 full)\n"
            "  --cap-s S        at most S seconds per figure (default 1 quick, 4 full)\n"
            "  -q, --quiet      no progress lines\n"
            "Tuning (the simulator on your routing traces, with FILE's costs; writes FILE, or -o):\n"
            "  --trace T        a moe-trace v1 file (repeat; moe-run --record-trace makes them)\n"
            "  --model CONFIG   the model's config.json: the traces must fit it; it gives the shape\n"
            "                   and the dense work unless --shape or --dense-experts are given\n"
            "  --shape HxI      the routed experts' shape (the first of --shape)\n"
            "  --gpu-budget B   GPU expert cache: a fraction (0..1] of all routed experts (default 0.5)\n"
            "  --mode M         decode (default) or prefill; --prefill-chunk T (512), --batch N (1)\n"
            "  --dense-experts X  a layer's dense part in routed experts' GPU time (3.6)\n"
            "Merging:\n"
            "  --force          merge profiles of different hosts or library versions\n"
            "Other: --help, --version\n");
}

static int fail(const char *fmt, ...) MOE_PRINTF(1, 2);
static int model_shapes(const char *path, moe_profile_shape *sh, uint32_t cap, uint32_t *n);
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("moe-profile: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static bool parse_list(const char *s, uint32_t *out, uint32_t cap, uint32_t *n) {
    *n = 0;
    while (*s) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || errno || v == 0 || v > 65536 || (*end && *end != ',') || *n == cap) return false;
        out[(*n)++] = (uint32_t)v;
        s = *end ? end + 1 : end;
    }
    return *n > 0;
}

static bool parse_shapes(const char *s, uint32_t (*out)[2], uint32_t cap, uint32_t *n) {
    *n = 0;
    while (*s) {
        char *end;
        unsigned long h = strtoul(s, &end, 10);
        if (end == s || *end != 'x' || !h || h > (1u << 20)) return false;
        const char *t = end + 1;
        unsigned long i = strtoul(t, &end, 10);
        if (end == t || !i || i > (1u << 20) || (*end && *end != ',') || *n == cap) return false;
        out[*n][0] = (uint32_t)h, out[*n][1] = (uint32_t)i, (*n)++;
        s = *end ? end + 1 : end;
    }
    return *n > 0;
}

static bool parse_dtypes(char *s, moe_dtype *out, uint32_t cap, uint32_t *n) {
    *n = 0;
    for (char *t = strtok(s, ","); t; t = strtok(NULL, ",")) {
        int d = 0;
        while (d < MOE_DTYPE_COUNT_ && strcmp(t, moe_dtype_name((moe_dtype)d))) d++;
        if (d == MOE_DTYPE_COUNT_ || *n == cap) return false;
        out[(*n)++] = (moe_dtype)d;
    }
    return *n > 0;
}

static void log_line(moe_log_level l, const char *msg, void *user) {
    (void)l, (void)user;
    fprintf(stderr, "%s\n", msg);
}

/* Creates the directories above `path`. */
static void make_parents(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    for (char *p = dir + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0755);
            *p = '/';
        }
}

static int write_profile(const moe_profile *p, const char *path) {
    if (!strcmp(path, "-")) {
        const size_t len = moe_profile_format(p, NULL, 0);
        char *text = malloc(len + 1);
        if (!text) return fail("out of memory");
        moe_profile_format(p, text, len + 1);
        fputs(text, stdout);
        free(text);
        return 0;
    }
    make_parents(path);
    if (moe_profile_save(p, path) != MOE_OK) return fail("%s", moe_last_error());
    fprintf(stderr, "moe-profile: wrote %s\n", path);
    return 0;
}

static void show(const moe_profile *p, const char *path) {
    printf("%s: %s profile%s%s%s, %s, host \"%s\", moerun %s, oneDNN %s\n", path, p->source,
           p->mode[0] ? " (" : "", p->mode, p->mode[0] ? ")" : "", p->created[0] ? p->created : "undated",
           p->hostname[0] ? p->hostname : "?", p->moerun_version, p->onednn_version[0] ? p->onednn_version : "?");
    const moe_topology_info *t = &p->topo;
    printf("CPU: %s; %u package(s), %u NUMA node(s), %u cores, %u hardware threads; L3 %.0f MB; memory %.1f GB;"
           " %s %u threads\n", p->cpu_model, t->n_packages, t->n_numa_nodes, t->n_cores, t->n_pus,
           (double)t->l3_bytes / (1 << 20), (double)t->memory_bytes / (1u << 30),
           strcmp(p->source, "measured") ? "figures for" : "measured with", p->threads);
    printf("CPU features:%s%s%s%s%s\n", t->has_avx2 ? " avx2" : "", t->has_avx512f ? " avx512f" : "",
           t->has_avx512_bf16 ? " avx512_bf16" : "", t->has_avx512_vnni ? " avx512_vnni" : "", t->has_amx ? " amx" : "");
    printf("\nMemory read bandwidth, GB/s (row: the node's cores; column: the memory's node):\n      ");
    for (uint32_t j = 0; j < t->n_numa_nodes; j++) printf("  %12s%u", "node", j);
    printf("\n");
    for (uint32_t i = 0; i < t->n_numa_nodes; i++) {
        printf("node%-2u", i);
        for (uint32_t j = 0; j < t->n_numa_nodes; j++) {
            const moe_stat *s = &p->read_gbps[i][j];
            if (s->n) printf("  %8.1f +-%2.0f%%", moe_stat_mean(s), 100.0 * moe_stat_sd(s) / moe_stat_mean(s));
            else printf("  %13s", "-");
        }
        printf("\n");
    }
    for (int gpu = 0; gpu < 2; gpu++) {
        bool any = false;
        for (uint32_t i = 0; i < p->n_curves; i++) {
            const moe_curve *c = &p->curves[i];
            if ((c->gpu >= 0) != (gpu == 1)) continue;
            if (!any) printf("\n%s expert call, microseconds (mean +- sd over n samples):\n", gpu ? "GPU" : "CPU");
            any = true;
            printf("  %ux%u %s %s%d:\n", c->hidden, c->inter, moe_dtype_name(c->dtype), gpu ? "gpu" : "node",
                   gpu ? c->gpu : (int)c->node);
            const double bytes = (double)moe_expert_weight_bytes(c->hidden, c->inter, c->dtype, c->dtype);
            for (uint32_t j = 0; j < c->n_points; j++) {
                const moe_stat *s = &c->points[j].us;
                const double us = moe_stat_mean(s);
                printf("    m %4u  %10.1f +- %4.1f%%  (n %3llu)  %7.1f GB/s of weights  %8.1f GFLOP/s\n",
                       c->points[j].m, us, us > 0 ? 100.0 * moe_stat_sd(s) / us : 0.0, (unsigned long long)s->n,
                       bytes / us / 1e3, 6.0 * c->points[j].m * c->hidden * c->inter / us / 1e3);
            }
        }
    }
    if (!p->n_gpus) printf("\nGPU: none\n");
    for (uint32_t g = 0; g < p->n_gpus; g++) {
        const moe_profile_gpu *d = &p->gpus[g];
        printf("\nGPU %u: %s, compute capability %u.%u, %.1f GB (%.1f GB free), NUMA node %d\n", g, d->name,
               d->cc_major, d->cc_minor, (double)d->total_bytes / (1u << 30), (double)d->free_bytes / (1u << 30),
               d->numa_node);
        if (d->launch_us.n) printf("  kernel launch %.1f us, event %.1f us\n", moe_stat_mean(&d->launch_us), moe_stat_mean(&d->event_us));
        const moe_link_curve *links[3] = {&d->h2d_pinned, &d->h2d_pageable, &d->d2h_pinned};
        const char *names[3] = {"host->device pinned", "host->device pageable", "device->host pinned"};
        for (int k = 0; k < 3; k++) {
            if (!links[k]->n) continue;
            printf("  %s:", names[k]);
            for (uint32_t i = 0; i < links[k]->n; i++)
                printf("  %.0f MB %.1f GB/s", (double)links[k]->bytes[i] / (1 << 20), moe_stat_mean(&links[k]->gbps[i]));
            printf("\n");
        }
    }
    const size_t len = moe_profile_format(p, NULL, 0);
    char *text = malloc(len + 1);
    if (text) {
        moe_profile_format(p, text, len + 1);
        const char *tun = strstr(text, "\n[tuning]\n");
        printf("\nTuning:");
        bool any = false;
        for (const char *l = tun ? strchr(tun + 1, '\n') : NULL; l && l[1]; l = strchr(l + 1, '\n'))
            if (l[1] != '#' && l[1] != '\n') {
                const char *e = strchr(l + 1, '\n');
                printf("\n  %.*s", (int)(e ? e - l - 1 : (long)strlen(l + 1)), l + 1);
                any = true;
            }
        printf("%s\n", any ? "" : " none set (the runtime's defaults)");
        free(text);
    }
    moe_profile here;
    moe_profile_init(&here);
    char why[256];
    if (moe_profiler_host(&here) == MOE_OK)
        printf("\nThis host: %s%s\n", moe_profile_matches(p, &here, why, sizeof why) ? "matches" : "differs: ",
               why);
    moe_profile_clear(&here);
}

/* moe-profile --tune: every candidate through the simulator with this
 * profile's costs; the fastest goes into [tuning]. */
static int tune(const char *path, const char *out, const char *const *traces, int n_traces, const char *model,
                uint32_t shape[2], bool dense_set, moe_dtype dtype, double budget, moe_sim_params *tp) {
    moe_profile p;
    moe_profile_init(&p);
    moe_trace t;
    moe_trace_init(&t);
    int rc = 0;
    if (moe_profile_load(&p, path) != MOE_OK) rc = fail("%s", moe_last_error());
    for (int i = 0; rc == 0 && i < n_traces; i++)
        if (moe_trace_load(&t, traces[i]) != MOE_OK) rc = fail("%s", moe_last_error());
    if (rc == 0 && model) { /* the traces must fit the model, which fills in what was not given */
        moe_hf_config mc;
        if (moe_hf_config_load(&mc, model) != MOE_OK ||
            moe_hf_config_check_routing(&mc, t.n_layers, t.n_experts, t.top_k, "the traces") != MOE_OK)
            rc = fail("%s", moe_last_error());
        else {
            if (!shape[0]) shape[0] = mc.hidden_size, shape[1] = mc.moe_inter;
            if (!dense_set) tp->dense_experts = moe_hf_config_dense_experts(&mc);
        }
    }
    if (rc == 0 && !p.n_gpus) rc = fail("%s has no GPU: there is nothing to tune but static-cpu", path);
    moe_sim_tune_result r;
    if (rc == 0) {
        const uint64_t eb = moe_expert_weight_bytes(shape[0], shape[1], dtype, dtype);
        tp->sched = (moe_sched_config){.profile = &p, .hidden = shape[0], .inter = shape[1], .dtype = dtype,
                                       .expert_bytes = eb,
                                       .budget_bytes = (uint64_t)(budget * (double)eb * t.n_layers * t.n_experts)};
        fprintf(stderr, "moe-profile: tuning on %llu tokens (%u layers x %u experts), %s, GPU budget %.0f%%\n",
                (unsigned long long)t.n_tokens, t.n_layers, t.n_experts,
                tp->mode == MOE_SIM_DECODE ? "decode" : "prefill", 100 * budget);
        if (moe_sim_tune(&t, tp, &r) != MOE_OK) rc = fail("%s", moe_last_error());
    }
    if (rc == 0) {
        printf("%-12s %6s %9s %14s %8s\n", "policy", "depth", "min gain", tp->mode == MOE_SIM_DECODE ? "ms/token" : "prefill ms",
               "hit");
        for (uint32_t i = 0; i < r.n; i++) {
            const moe_sim_candidate *c = &r.c[i];
            printf("%-12s %6u %9.0f %14.3f %8.3f%s\n", moe_policy_name(c->policy), c->depth, c->min_gain_us,
                   (tp->mode == MOE_SIM_DECODE ? c->r.step_us : c->r.total_us) / 1e3, c->r.hit_rate,
                   i == r.best ? "  <- best" : "");
        }
        const moe_sim_candidate *b = &r.c[r.best];
        moe_tuning *tu = &p.tuning;
        snprintf(tu->policy, sizeof tu->policy, "%s", moe_policy_name(b->policy));
        tu->gpu_budget_fraction = budget, tu->gpu_budget_bytes = 0;
        tu->set |= MOE_TUNE_POLICY | MOE_TUNE_GPU_BUDGET;
        if (b->policy == MOE_POLICY_MOERUN) {
            tu->prefetch_depth = b->depth, tu->prefetch_min_gain_us = b->min_gain_us;
            tu->set |= MOE_TUNE_PREFETCH_DEPTH | MOE_TUNE_PREFETCH_MIN_GAIN;
        }
        rc = write_profile(&p, out);
    }
    moe_trace_free(&t);
    moe_profile_clear(&p);
    return rc;
}

int main(int argc, char **argv) {
    enum { O_QUICK = 256, O_SHOW, O_CHECK, O_MERGE, O_FORCE, O_THREADS, O_SHAPE, O_DTYPE, O_M, O_RSE, O_CAP, O_VERSION,
           O_TUNE, O_TRACE, O_BUDGET, O_MODE, O_CHUNK, O_BATCH, O_DENSE, O_MODEL };
    static const struct option opts[] = {
        {"quick", 0, 0, O_QUICK},   {"show", 1, 0, O_SHOW},       {"check", 1, 0, O_CHECK},
        {"merge", 1, 0, O_MERGE},   {"force", 0, 0, O_FORCE},     {"threads", 1, 0, O_THREADS},
        {"shape", 1, 0, O_SHAPE},   {"dtype", 1, 0, O_DTYPE},     {"m", 1, 0, O_M},
        {"rse", 1, 0, O_RSE},       {"cap-s", 1, 0, O_CAP},       {"output", 1, 0, 'o'},
        {"quiet", 0, 0, 'q'},       {"help", 0, 0, 'h'},          {"version", 0, 0, O_VERSION},
        {"tune", 1, 0, O_TUNE},     {"trace", 1, 0, O_TRACE},     {"gpu-budget", 1, 0, O_BUDGET},
        {"mode", 1, 0, O_MODE},     {"prefill-chunk", 1, 0, O_CHUNK}, {"batch", 1, 0, O_BATCH},
        {"dense-experts", 1, 0, O_DENSE}, {"model", 1, 0, O_MODEL},
        {0, 0, 0, 0}};
    const char *out = NULL, *show_path = NULL, *check_path = NULL, *merge_a = NULL;
    bool quick = false, force = false, quiet = false;
    uint32_t threads = 0, ms[32], n_ms = 0, shapes[16][2], n_shapes = 0, n_dtypes = 0;
    moe_dtype dtypes[8];
    double rse = 0, cap = 0;
    const char *tune_path = NULL, *traces[64], *model = NULL;
    bool dense_set = false;
    int n_traces = 0;
    moe_sim_params tp = {.mode = MOE_SIM_DECODE, .batch = 1, .chunk = 512, .dense_experts = 3.6,
                         .accuracy = {0.85, 0.7, 0.6, 0.5}, .seed = 1};
    double budget = 0.5;
    int c;
    while ((c = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case O_QUICK: quick = true; break;
        case O_SHOW: show_path = optarg; break;
        case O_CHECK: check_path = optarg; break;
        case O_MERGE: merge_a = optarg; break;
        case O_FORCE: force = true; break;
        case O_THREADS: {
            uint32_t one;
            if (!parse_list(optarg, &threads, 1, &one) || threads > 4096) return fail("--threads: bad value (1..4096)");
            break;
        }
        case O_SHAPE:
            if (!parse_shapes(optarg, shapes, 16, &n_shapes)) return fail("--shape: expected HIDDENxINTER[,...] (at most 16)");
            break;
        case O_DTYPE:
            if (!parse_dtypes(optarg, dtypes, 8, &n_dtypes))
                return fail("--dtype: expected bf16, int8, f32, f16 or a GGUF block format (q4_K, q8_0, ...)[,...]");
            break;
        case O_M:
            if (!parse_list(optarg, ms, 32, &n_ms)) return fail("--m: expected token counts 1..65536[,...] (at most 32)");
            break;
        case O_RSE:
            rse = strtod(optarg, &end);
            if (*end || !(rse > 0 && rse < 1)) return fail("--rse: expected a fraction in (0, 1)");
            break;
        case O_CAP:
            cap = strtod(optarg, &end);
            if (*end || !(cap > 0 && cap <= 3600)) return fail("--cap-s: expected seconds in (0, 3600]");
            break;
        case 'o': out = optarg; break;
        case 'q': quiet = true; break;
        case 'h': usage(stdout); return 0;
        case O_VERSION: printf("moe-profile %s\n", moe_build_info()); return 0;
        case O_TUNE: tune_path = optarg; break;
        case O_TRACE:
            if (n_traces == 64) return fail("at most 64 traces");
            traces[n_traces++] = optarg;
            break;
        case O_BUDGET:
            budget = strtod(optarg, &end);
            if (*end || !(budget > 0 && budget <= 1)) return fail("--gpu-budget: expected a fraction in (0, 1]");
            break;
        case O_MODE:
            if (!strcmp(optarg, "decode")) tp.mode = MOE_SIM_DECODE;
            else if (!strcmp(optarg, "prefill")) tp.mode = MOE_SIM_PREFILL;
            else return fail("--mode: expected decode or prefill");
            break;
        case O_CHUNK:
        case O_BATCH: {
            uint32_t v, one;
            if (!parse_list(optarg, &v, 1, &one) || v > 65536) return fail("%s: expected 1..65536", c == O_CHUNK ? "--prefill-chunk" : "--batch");
            if (c == O_CHUNK) tp.chunk = v;
            else tp.batch = v;
            break;
        }
        case O_DENSE:
            tp.dense_experts = strtod(optarg, &end);
            if (*end || !(tp.dense_experts >= 0 && tp.dense_experts < 1e6)) return fail("--dense-experts: expected >= 0");
            dense_set = true;
            break;
        case O_MODEL: model = optarg; break;
        default: usage(stderr); return 2;
        }
    }
    moe_profile p;
    moe_profile_init(&p);
    int rc = 0;
    if (tune_path) {
        if (optind != argc) return fail("unexpected argument \"%s\"", argv[optind]);
        if (!n_traces) return fail("--tune: give the routing to tune on with --trace FILE");
        if (!n_shapes && !model) return fail("--tune: give the experts' shape with --shape HxI or --model CONFIG");
        if (!n_shapes) shapes[0][0] = shapes[0][1] = 0; /* from the model */
        rc = tune(tune_path, out ? out : tune_path, traces, n_traces, model, shapes[0], dense_set,
                  n_dtypes ? dtypes[0] : MOE_DTYPE_BF16, budget, &tp);
    } else if (show_path || check_path) {
        const char *path = show_path ? show_path : check_path;
        if (optind != argc) return fail("unexpected argument \"%s\"", argv[optind]);
        if (moe_profile_load(&p, path) != MOE_OK) {
            fprintf(stderr, "%s\n", moe_last_error());
            return 1;
        }
        if (show_path) show(&p, path);
        else printf("%s: a valid moerun profile (%s%s%s, %u curves, %u GPUs)\n", path, p.source, p.mode[0] ? ", " : "",
                    p.mode, p.n_curves, p.n_gpus);
    } else if (merge_a) {
        if (optind + 1 != argc) return fail("--merge A B: give exactly one more file (B)");
        moe_profile b;
        moe_profile_init(&b);
        if (moe_profile_load(&p, merge_a) != MOE_OK || moe_profile_load(&b, argv[optind]) != MOE_OK ||
            moe_profile_merge(&p, &b, force) != MOE_OK) {
            fprintf(stderr, "moe-profile: %s\n", moe_last_error());
            rc = 1;
        } else {
            rc = write_profile(&p, out ? out : "-");
        }
        moe_profile_clear(&b);
    } else {
        if (optind != argc) return fail("unexpected argument \"%s\" (see --help)", argv[optind]);
        char def[4096];
        if (!out && !moe_profile_default_path(def, sizeof def)) return fail("no default path ($HOME unset): use -o FILE");
        moe_profile_shape sh[16 * 8];
        uint32_t n_sh = 0;
        if (model && (n_shapes || n_dtypes)) return fail("--model gives the shapes and formats: not with --shape or --dtype");
        if (model && model_shapes(model, sh, sizeof sh / sizeof sh[0], &n_sh)) return 1;
        if (n_shapes || n_dtypes) {
            static const moe_dtype def_dt[3] = {MOE_DTYPE_BF16, MOE_DTYPE_I8, MOE_DTYPE_F32};
            if (!n_shapes) shapes[0][0] = 2048, shapes[0][1] = 1408, n_shapes = 1;
            const moe_dtype *dt = n_dtypes ? dtypes : def_dt;
            for (uint32_t d = 0; d < (n_dtypes ? n_dtypes : 3); d++)
                for (uint32_t i = 0; i < n_shapes; i++) sh[n_sh++] = (moe_profile_shape){shapes[i][0], shapes[i][1], dt[d]};
        }
        const moe_logger log = {.fn = log_line, .level = quiet ? MOE_LOG_WARN : MOE_LOG_INFO};
        const moe_profiler_opts o = {.quick = quick, .threads = threads, .shapes = n_sh ? sh : NULL, .n_shapes = n_sh,
                                     .ms = n_ms ? ms : NULL, .n_ms = n_ms, .rse_target = rse, .cap_s = cap, .log = &log};
        const double t0 = moe_now();
        if (moe_profiler_run(&p, &o) != MOE_OK) {
            rc = fail("%s", moe_last_error());
        } else {
            if (!quiet) fprintf(stderr, "moe-profile: measured in %.1f s\n", moe_now() - t0);
            rc = write_profile(&p, out ? out : def);
        }
    }
    moe_profile_clear(&p);
    return rc;
}

/* The routed experts of the model at `path` (a Hugging Face directory or a
 * GGUF file, mapped, not read): every distinct shape and format of its
 * layers' gate/up and down matrices, which are what the runtime asks the
 * profile's costs for. */
static int model_shapes(const char *path, moe_profile_shape *sh, uint32_t cap, uint32_t *n) {
    moe_llm *m = NULL;
    const moe_llm_params lp = {.ctx = 1, .skip_scale_check = true};
    if (moe_llm_load(&m, path, &lp) != MOE_OK) return fail("--model: %s", moe_last_error());
    const moe_model_t *mm = moe_llm_model(m);
    for (uint32_t l = 0; l < moe_model_n_layers(mm); l++) {
        moe_layer_desc d;
        if (moe_model_get_layer(mm, l, &d) != MOE_OK) continue;
        const moe_dtype ts[2] = {d.weight_dtype, moe_model_down_dtype(mm, l)};
        for (int k = 0; k < 2; k++) {
            /* The profiler times whole experts in one format. Where a
             * format's blocks do not divide a row length (q4_K's gate and
             * up beside a q5_0 down of 1408-long rows), the nearest shape
             * they divide is timed instead: its curve gives the runtime
             * this format's rates, from which it estimates the model's
             * shape (a roofline, profiles/cost.c). */
            const uint32_t blk = (uint32_t)moe_dtype_block(ts[k]);
            uint32_t hid = d.hidden, inter = d.inter;
            if (hid % blk || inter % blk) {
                hid = (hid + blk - 1) / blk * blk, inter = (inter + blk - 1) / blk * blk;
                fprintf(stderr, "moe-profile: %ux%u %s: rows are not whole %u-element blocks: timing %ux%u for "
                        "its rates\n", d.hidden, d.inter, moe_dtype_name(ts[k]), blk, hid, inter);
            }
            bool have = false;
            for (uint32_t i = 0; i < *n; i++) have |= sh[i].hidden == hid && sh[i].inter == inter && sh[i].dtype == ts[k];
            if (!have && *n < cap) sh[(*n)++] = (moe_profile_shape){hid, inter, ts[k]};
        }
    }
    fprintf(stderr, "moe-profile: %s (%s): measuring", path, moe_llm_arch_name(m));
    for (uint32_t i = 0; i < *n; i++) fprintf(stderr, " %ux%u %s", sh[i].hidden, sh[i].inter, moe_dtype_name(sh[i].dtype));
    fprintf(stderr, "\n");
    moe_llm_free(&m);
    return 0;
}
