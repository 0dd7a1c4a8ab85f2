/* test_profile.c - the machine profile: file round trip, rejection of every
 * kind of bad file with its file:line message, merge arithmetic, cost
 * queries and atomic writes (test_profile_measure.c measures this host). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <unistd.h>

#include "profile.h"
#include "profiler.h"
#include "util.h"

#include <omp.h>

static bool omp_limit_below_2(void) { return omp_get_thread_limit() < 2; }

/* A profile with every section and every kind of figure. */
static void make(moe_profile *p) {
    moe_profile_init(p);
    snprintf(p->hostname, sizeof p->hostname, "box");
    snprintf(p->cpu_model, sizeof p->cpu_model, "Test CPU @ 2.0GHz");
    snprintf(p->moerun_version, sizeof p->moerun_version, "0.1.0");
    snprintf(p->onednn_version, sizeof p->onednn_version, "2.6.3");
    snprintf(p->created, sizeof p->created, "2026-11-23T00:00:00Z");
    snprintf(p->source, sizeof p->source, "measured");
    snprintf(p->mode, sizeof p->mode, "full");
    p->threads = 8;
    p->topo = (moe_topology_info){.n_packages = 2, .n_numa_nodes = 2, .n_cores = 8, .n_pus = 16,
                                  .l3_bytes = 64u << 20, .memory_bytes = 1ull << 36, .has_avx2 = 1, .has_avx512f = 1};
    p->node_os[0] = 0, p->node_os[1] = 3, p->node_cores[0] = 4, p->node_cores[1] = 4;
    const double bw[2][2] = {{100.0, 40.0}, {41.0, 98.0}};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            for (int k = 0; k < 3; k++) moe_stat_add(&p->read_gbps[i][j], bw[i][j] + 0.1 * k);
    const uint32_t ms[] = {1, 4, 64, 256};
    const double us[] = {100.0, 110.0, 400.0, 1500.0};
    for (uint32_t node = 0; node < 2; node++) {
        moe_curve *c = moe_profile_curve(p, 2048, 1408, MOE_DTYPE_BF16, -1, node);
        for (int i = 0; i < 4; i++)
            for (int k = 0; k < 3; k++) moe_stat_add(&moe_curve_at(c, ms[i])->us, us[i] * (1.0 + 0.01 * k) + node);
    }
    p->n_gpus = 1;
    moe_profile_gpu *g = &p->gpus[0];
    snprintf(g->name, sizeof g->name, "NVIDIA Test GPU");
    g->cc_major = 9, g->cc_minor = 0, g->total_bytes = 80ull << 30, g->free_bytes = 79ull << 30, g->numa_node = 1;
    moe_stat_add(&g->launch_us, 4.0), moe_stat_add(&g->launch_us, 5.0);
    moe_stat_add(&g->event_us, 2.0);
    const uint64_t sizes[] = {1u << 20, 16u << 20, 64u << 20};
    const double rates[] = {10.0, 22.0, 25.0};
    for (int i = 0; i < 3; i++) {
        g->h2d_pinned.bytes[i] = sizes[i], moe_stat_add(&g->h2d_pinned.gbps[i], rates[i]);
        g->h2d_pageable.bytes[i] = sizes[i], moe_stat_add(&g->h2d_pageable.gbps[i], rates[i] / 2);
        g->d2h_pinned.bytes[i] = sizes[i], moe_stat_add(&g->d2h_pinned.gbps[i], rates[i]);
    }
    g->h2d_pinned.n = g->h2d_pageable.n = g->d2h_pinned.n = 3;
    moe_curve *gc = moe_profile_curve(p, 2048, 1408, MOE_DTYPE_BF16, 0, 0);
    moe_stat_add(&moe_curve_at(gc, 1)->us, 20.0);
    moe_stat_add(&moe_curve_at(gc, 512)->us, 90.0);
    moe_tuning *u = &p->tuning;
    u->set = MOE_TUNE_POLICY | MOE_TUNE_GPU_BUDGET | MOE_TUNE_PREFETCH_DEPTH | MOE_TUNE_PREFETCH_MIN_GAIN |
             MOE_TUNE_MRS_ALPHA | MOE_TUNE_MRS_TOP_P | MOE_TUNE_THREADS_PER_NODE | MOE_TUNE_PINNED_LIMIT |
             MOE_TUNE_PLACEMENT;
    snprintf(u->policy, sizeof u->policy, "moerun");
    u->gpu_budget_fraction = 0.4, u->prefetch_depth = 2, u->prefetch_min_gain_us = 12.5, u->mrs_alpha = 0.3;
    u->mrs_top_p = 0.75, u->threads_per_node = 3, u->pinned_limit_bytes = 1ull << 34;
    snprintf(u->placement, sizeof u->placement, "split");
    CHECK_OK(moe_profile_finish(p));
}

static char *text_of(const moe_profile *p) {
    const size_t n = moe_profile_format(p, NULL, 0);
    char *t = malloc(n + 1);
    CHECK_EQ(moe_profile_format(p, t, n + 1), n);
    return t;
}

static void round_trip_is_identical(void) {
    moe_profile a, b;
    make(&a);
    moe_profile_init(&b);
    char *t1 = text_of(&a);
    CHECK_OK(moe_profile_parse(&b, t1, strlen(t1), "mem"));
    char *t2 = text_of(&b);
    CHECK(strcmp(t1, t2) == 0);
    CHECK_EQ(b.n_curves, 3);
    CHECK_EQ(b.node_os[1], 3);
    CHECK(b.read_gbps[1][0].n == 3 && b.read_gbps[1][0].sum == a.read_gbps[1][0].sum &&
          b.read_gbps[1][0].sumsq == a.read_gbps[1][0].sumsq);
    CHECK(b.tuning.set == a.tuning.set && b.tuning.mrs_top_p == 0.75 && !strcmp(b.tuning.placement, "split"));
    CHECK(b.gpus[0].numa_node == 1 && b.gpus[0].h2d_pageable.n == 3 && b.topo.has_avx512f && !b.topo.has_amx);
    /* A truncated buffer still reports the full length. */
    char small[16];
    CHECK_EQ(moe_profile_format(&a, small, sizeof small), strlen(t1));
    CHECK(strlen(small) == sizeof small - 1);
    free(t1), free(t2);
    moe_profile_clear(&a), moe_profile_clear(&b);
}

/* Replaces the first occurrence of `from` in the valid text by `to`, parses,
 * and expects a failure whose message names "mem:<line>" and `says`. */
static void expect_bad(const char *valid, const char *from, const char *to, int line, const char *says) {
    const char *at = strstr(valid, from);
    if (!at) {
        fprintf(stderr, "test bug: \"%s\" not in the profile\n", from);
        CHECK(at != NULL);
        return;
    }
    const size_t n = strlen(valid) - strlen(from) + strlen(to);
    char *t = malloc(n + 1);
    memcpy(t, valid, (size_t)(at - valid));
    strcpy(t + (at - valid), to);
    strcat(t, at + strlen(from));
    moe_profile p;
    moe_profile_init(&p);
    CHECK_STATUS(moe_profile_parse(&p, t, strlen(t), "mem"), MOE_ERR_PARSE);
    char where[32];
    snprintf(where, sizeof where, "mem:%d: ", line);
    if (line > 0) CHECK_ERROR_MENTIONS(where);
    CHECK_ERROR_MENTIONS(says);
    CHECK_EQ(p.n_curves, 0); /* nothing half-loaded */
    free(t);
}

static int line_of(const char *text, const char *what) {
    int line = 1;
    for (const char *c = text; c < strstr(text, what); c++) line += *c == '\n';
    return line;
}

static void bad_files_are_refused_with_their_line(void) {
    moe_profile a;
    make(&a);
    char *v = text_of(&a);
    const int bw = line_of(v, "read_gbps.node0.from0"), m4 = line_of(v, "2048x1408.bf16.node0.m4.");
    const int tun = line_of(v, "mrs_alpha"), gpu = line_of(v, "gpu0.numa_node");
    expect_bad(v, "# moerun-profile 1", "# moerun-profile 2", 1, "version 2; this moerun reads version 1");
    expect_bad(v, "# moerun-profile 1", "# some other file", 1, "not a moerun profile");
    expect_bad(v, "[host]", "[hosts]", line_of(v, "[host]"), "unknown section [hosts]");
    expect_bad(v, "read_gbps.node0.from0 = n=3 sum=", "read_gbps.node0.from0 = n=3 sum=-", bw, "sum must be a positive");
    expect_bad(v, "read_gbps.node0.from0 = n=3 sum=", "read_gbps.node0.from0 = n=3 sum=nan", bw, "sum must be");
    expect_bad(v, "read_gbps.node0.from0 = n=3", "read_gbps.node0.from0 = n=0", bw, "n must be");
    expect_bad(v, "read_gbps.node0.from1", "read_gbps.node0.from0", line_of(v, "read_gbps.node0.from1"),
               "duplicate key");
    expect_bad(v, "read_gbps.node0.from1", "read_gbps.node0.from2", line_of(v, "read_gbps.node0.from1"),
               "node out of range");
    expect_bad(v, "2048x1408.bf16.node0.m4.", "2048x1408.bf16.node0.m1.", m4, "duplicate M = 1");
    expect_bad(v, "2048x1408.bf16.node0.m4.", "2048x1408.bf16.node0.m0.", m4, "M must be");
    expect_bad(v, "2048x1408.bf16.node0.m4.", "2048x1408.bf9.node0.m4.", m4, "unknown key");
    expect_bad(v, "mrs_alpha = 0.3", "mrs_alpha = 1.5", tun, "expected 0..1");
    expect_bad(v, "mrs_alpha = 0.3", "mrs_alpha = 0.3\nmrs_alpha = 0.2", tun + 1, "duplicate key");
    expect_bad(v, "placement = split", "placement = random", line_of(v, "placement"), "round-robin or split");
    expect_bad(v, "gpu0.numa_node = 1", "gpu2.numa_node = 1", gpu, "numbered from 0 without gaps");
    expect_bad(v, "threads = 8", "threads = eight", line_of(v, "threads = 8"), "expected 1..4096");
    expect_bad(v, "numa_nodes = 2", "numa_nodes = 1", line_of(v, "node1.os_index"), "node 1, but numa_nodes = 1");
    expect_bad(v, "[bandwidth]", "[bandwidth]\ncolour = blue", line_of(v, "[bandwidth]") + 1, "unknown key");
    expect_bad(v, "\n[tuning]\n", "\n[topology]\n", line_of(v, "\n[tuning]\n") + 1, "appears twice");
    expect_bad(v, "cpu_model = ", "cpu_mode = ", line_of(v, "cpu_model"), "unknown key \"cpu_mode\"");
    expect_bad(v, "source = measured", "source = guessed", line_of(v, "source ="), "measured or datasheet");
    /* sumsq below sum^2/n: a variance below zero. */
    expect_bad(v, "launch_us = n=2 sum=9 sumsq=41", "launch_us = n=2 sum=9 sumsq=40", line_of(v, "gpu0.launch_us"),
               "negative variance");
    /* A section missing, and a file cut short. */
    const char *cut = strstr(v, "[cpu-expert]");
    moe_profile p;
    moe_profile_init(&p);
    CHECK_STATUS(moe_profile_parse(&p, v, (size_t)(cut - v), "mem"), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("section [cpu-expert] is missing");
    CHECK_STATUS(moe_profile_parse(&p, v, 40, "mem"), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("is missing");
    CHECK_STATUS(moe_profile_parse(&p, "", 0, "mem"), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("mem:1: not a moerun profile");
    /* Binary garbage: a NUL byte, and a line too long. */
    char *z = strdup(v);
    z[line_of(v, "[topology]") > 0 ? (size_t)(strstr(v, "[topology]") - v) : 0] = '\0';
    CHECK_STATUS(moe_profile_parse(&p, z, strlen(v), "mem"), MOE_ERR_PARSE);
    char nul_line[32];
    snprintf(nul_line, sizeof nul_line, "mem:%d: a NUL byte", line_of(v, "[topology]"));
    CHECK_ERROR_MENTIONS(nul_line);
    free(z);
    char *longline = malloc(strlen(v) + 5000);
    strcpy(longline, v);
    strcat(longline, "\n#");
    memset(longline + strlen(longline), 'x', 3000);
    longline[strlen(v) + 2 + 3000] = '\0';
    CHECK_STATUS(moe_profile_parse(&p, longline, strlen(longline), "mem"), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("line longer than");
    free(longline);
    free(v);
    moe_profile_clear(&a);
}

/* Random damage (bytes flipped, lines cut, text spliced) never crashes the
 * reader or leaves it half-loaded: each result is either a valid profile
 * that writes back and reads again identically, or an error with a line. */
static void random_damage_is_handled(void) {
    moe_profile a, b, c;
    make(&a);
    moe_profile_init(&b), moe_profile_init(&c);
    char *v = text_of(&a);
    const size_t n = strlen(v);
    char *t = malloc(n + 64);
    moe_rng r = {2024};
    int ok = 0;
    for (int it = 0; it < (getenv("MOE_FUZZ_ITERS") ? atoi(getenv("MOE_FUZZ_ITERS")) : 3000); it++) {
        memcpy(t, v, n + 1);
        size_t len = n;
        const int edits = 1 + (int)(moe_rng_next(&r) % 4);
        for (int e = 0; e < edits && len > 0; e++) {
            const size_t at = moe_rng_next(&r) % len;
            switch (moe_rng_next(&r) % 4) {
            case 0: t[at] = (char)(moe_rng_next(&r) & 0xff); break;          /* any byte */
            case 1: t[at] = "0123456789.-=ex \n#[]"[moe_rng_next(&r) % 20]; break; /* plausible ones */
            case 2: len = at; break;                                             /* cut short */
            default: memmove(t + at, t + at + 1, len - at), len--; break;        /* drop a byte */
            }
        }
        const moe_status st = moe_profile_parse(&b, t, len, "fuzz");
        if (st == MOE_OK) {
            ok++;
            char *w = text_of(&b);
            CHECK_OK(moe_profile_parse(&c, w, strlen(w), "rewritten"));
            char *w2 = text_of(&c);
            CHECK(strcmp(w, w2) == 0);
            free(w), free(w2);
        } else {
            CHECK(strncmp(moe_last_error(), "fuzz:", 5) == 0);
            CHECK_EQ(b.n_curves, 0);
        }
    }
    printf("  %d damaged files were still valid profiles\n", ok);
    free(t), free(v);
    moe_profile_clear(&a), moe_profile_clear(&b), moe_profile_clear(&c);
}

/* A 100 MB file of garbage is refused without being read whole. */
static void huge_garbage_file_is_refused(void) {
    char path[] = "/tmp/moerun-profile-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0) return;
    CHECK(ftruncate(fd, 100 << 20) == 0);
    close(fd);
    moe_profile p;
    moe_profile_init(&p);
    CHECK_STATUS(moe_profile_load(&p, path), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("more than any profile");
    unlink(path);
    CHECK_STATUS(moe_profile_load(&p, "/nonexistent/profile.txt"), MOE_ERR_IO);
    CHECK_ERROR_MENTIONS("/nonexistent/profile.txt: cannot open");
}

static void merge_adds_samples(void) {
    moe_profile a, b;
    make(&a), make(&b);
    moe_curve *extra = moe_profile_curve(&b, 2048, 1408, MOE_DTYPE_BF16, -1, 0);
    moe_stat_add(&moe_curve_at(extra, 16)->us, 200.0); /* a point a lacks */
    b.tuning.set = MOE_TUNE_MRS_ALPHA | MOE_TUNE_PREFETCH_DEPTH;
    b.tuning.mrs_alpha = 0.9;
    a.tuning.set &= ~(uint32_t)MOE_TUNE_PREFETCH_DEPTH;
    b.tuning.prefetch_depth = 5;
    const moe_stat before = a.read_gbps[0][1];
    CHECK_OK(moe_profile_merge(&a, &b, false));
    CHECK_EQ(a.read_gbps[0][1].n, 2 * before.n);
    CHECK_NEAR(a.read_gbps[0][1].sum, 2 * before.sum, 1e-9);
    CHECK_NEAR(a.read_gbps[0][1].sumsq, 2 * before.sumsq, 1e-6);
    const moe_curve *c = moe_profile_curve(&a, 2048, 1408, MOE_DTYPE_BF16, -1, 0);
    CHECK_EQ(c->n_points, 5);
    CHECK_EQ(c->points[2].m, 16);
    CHECK_EQ(c->points[1].us.n, 6);
    CHECK_EQ(a.gpus[0].launch_us.n, 4);
    CHECK_EQ(a.gpus[0].h2d_pinned.gbps[1].n, 2);
    CHECK(a.tuning.mrs_alpha == 0.3);   /* a's own key stands */
    CHECK_EQ(a.tuning.prefetch_depth, 5); /* b fills what a leaves unset */
    /* Mean and spread of merged samples equal those of all samples. */
    moe_stat s = {0};
    const double xs[] = {1, 2, 3, 10, 20};
    moe_stat s1 = {0}, s2 = {0};
    for (int i = 0; i < 5; i++) moe_stat_add(&s, xs[i]), moe_stat_add(i < 2 ? &s1 : &s2, xs[i]);
    moe_stat_merge(&s1, &s2);
    CHECK_NEAR(moe_stat_mean(&s1), 7.2, 1e-12);
    CHECK_NEAR(moe_stat_sd(&s1), moe_stat_sd(&s), 1e-12);
    CHECK_NEAR(moe_stat_sd(&s), sqrt(((1 - 7.2) * (1 - 7.2) + (2 - 7.2) * (2 - 7.2) + (3 - 7.2) * (3 - 7.2) +
                                      (10 - 7.2) * (10 - 7.2) + (20 - 7.2) * (20 - 7.2)) / 4), 1e-9);
    /* Another host is refused unless forced. */
    snprintf(b.cpu_model, sizeof b.cpu_model, "Other CPU");
    CHECK_STATUS(moe_profile_merge(&a, &b, false), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("CPU \"Other CPU\"");
    CHECK_OK(moe_profile_merge(&a, &b, true));
    moe_profile_clear(&a), moe_profile_clear(&b);
}

static void identity_names_the_difference(void) {
    moe_profile a, b;
    make(&a), make(&b);
    char why[256];
    CHECK(moe_profile_matches(&a, &b, why, sizeof why));
    snprintf(b.moerun_version, sizeof b.moerun_version, "0.1.7"); /* a patch release: same kernels */
    CHECK(moe_profile_matches(&a, &b, why, sizeof why));
    snprintf(b.moerun_version, sizeof b.moerun_version, "0.2.0");
    CHECK(!moe_profile_matches(&a, &b, why, sizeof why) && strstr(why, "moerun 0.1.0, this is moerun 0.2.0"));
    moe_profile_clear(&b);
    make(&b);
    snprintf(b.onednn_version, sizeof b.onednn_version, "3.2.0");
    CHECK(!moe_profile_matches(&a, &b, why, sizeof why) && strstr(why, "oneDNN"));
    b.topo.n_cores = 16;
    snprintf(b.onednn_version, sizeof b.onednn_version, "2.6.3");
    CHECK(!moe_profile_matches(&a, &b, why, sizeof why) && strstr(why, "8 cores, this host has 16"));
    moe_profile_clear(&a), moe_profile_clear(&b);
}

static void cost_queries_use_the_curves(void) {
    moe_profile a;
    make(&a);
    /* Measured: interpolated between points (node 1 is node 0 + 1 us). */
    const double m1 = (100.0 + 101.0 + 102.0) / 3;
    CHECK_NEAR(moe_profile_cpu_us(&a, 2048, 1408, MOE_DTYPE_BF16, 1, 0), m1, 1e-9);
    CHECK_NEAR(moe_profile_cpu_us(&a, 2048, 1408, MOE_DTYPE_BF16, 1, 1), m1 + 1, 1e-9);
    const double m4 = 110.0 * 1.01, m64 = 400.0 * 1.01;
    CHECK_NEAR(moe_profile_cpu_us(&a, 2048, 1408, MOE_DTYPE_BF16, 34, 0), m4 + (m64 - m4) * 30 / 60, 1e-9);
    CHECK_NEAR(moe_profile_cpu_us(&a, 2048, 1408, MOE_DTYPE_BF16, 512, 0), 1500.0 * 1.01 * 2, 1e-9);
    CHECK(moe_profile_cpu_us(&a, 2048, 1408, MOE_DTYPE_BF16, 0, 0) == 0.0);
    /* Not measured: the roofline with this node's rates. Decode at m = 1
     * read 2048x1408x3 bf16 in m1 us; a shape half as large reads at the
     * same fraction of the node's bandwidth. */
    const double half = moe_profile_cpu_us(&a, 1024, 1408, MOE_DTYPE_BF16, 1, 0);
    CHECK_NEAR(half, m1 / 2, m1 * 1e-9);
    /* Compute-bound: the rate of the largest measured m. */
    const double rate = 6.0 * 256 * 2048 * 1408 / (1500.0 * 1.01); /* flops per us */
    CHECK_NEAR(moe_profile_cpu_us(&a, 1024, 1408, MOE_DTYPE_BF16, 4096, 0), 6.0 * 4096 * 1024 * 1408 / rate, 1e-6);
    /* A dtype with no curve and a node with no bandwidth have nothing to go on. */
    CHECK(moe_profile_cpu_us(&a, 1024, 1408, MOE_DTYPE_F32, 1, 0) > 0); /* bandwidth alone */
    CHECK(moe_profile_cpu_us(&a, 1024, 1408, MOE_DTYPE_F32, 1, 5) < 0);
    /* GPU curve and copies. */
    CHECK_NEAR(moe_profile_gpu_us(&a, 0, 2048, 1408, MOE_DTYPE_BF16, 512), 90.0, 1e-9);
    CHECK(moe_profile_gpu_us(&a, 1, 2048, 1408, MOE_DTYPE_BF16, 512) < 0);
    CHECK_NEAR(moe_profile_copy_us(&a, 0, 16u << 20, true), (double)(16u << 20) / 22e3, 1e-6);
    CHECK_NEAR(moe_profile_copy_us(&a, 0, 16u << 20, false), (double)(16u << 20) / 11e3, 1e-6);
    const double mid = moe_profile_copy_us(&a, 0, 4u << 20, true); /* between 10 and 22 GB/s, log-spaced */
    CHECK_NEAR(mid, (double)(4u << 20) / ((10.0 + 12.0 * 0.5) * 1e3), 1e-6);
    CHECK_NEAR(moe_profile_copy_us(&a, 0, 1u << 30, true), (double)(1u << 30) / 25e3, 1e-6);
    CHECK(moe_profile_copy_us(&a, 0, 0, true) == 0.0);
    moe_profile_clear(&a);
}

static void save_is_atomic(void) {
    moe_profile a, b;
    make(&a);
    moe_profile_init(&b);
    char dir[] = "/tmp/moerun-save-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256], tmp[300];
    snprintf(path, sizeof path, "%s/p.txt", dir);
    CHECK_OK(moe_profile_save(&a, path));
    CHECK_OK(moe_profile_save(&a, path)); /* over an existing file */
    CHECK_OK(moe_profile_load(&b, path));
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0); /* no temporary left behind */
    char *t1 = text_of(&a), *t2 = text_of(&b);
    CHECK(strcmp(t1, t2) == 0);
    free(t1), free(t2);
    char bad_path[300];
    snprintf(bad_path, sizeof bad_path, "%s/missing/p.txt", dir);
    CHECK_STATUS(moe_profile_save(&a, bad_path), MOE_ERR_IO);
    CHECK_ERROR_MENTIONS("cannot write");
    unlink(path);
    rmdir(dir);
    moe_profile_clear(&a), moe_profile_clear(&b);
}

static void log_to(moe_log_level l, const char *msg, void *user) {
    (void)l;
    char *seen = user;
    if (strlen(seen) + strlen(msg) + 2 < 1024) strcat(strcat(seen, msg), "\n");
}

static moe_status create(moe_runtime_t **rt, test_model *tm, const char *path, int any_host, char *seen) {
    moe_runtime_params p = moe_runtime_default_params();
    p.profile_path = path, p.profile_any_host = any_host;
    p.log_fn = log_to, p.log_user = seen, p.log_level = MOE_LOG_INFO;
    seen[0] = '\0';
    return moe_runtime_create(rt, tm->model, &p);
}

/* The runtime loads a named profile, refuses one of another host unless
 * told, applies its [tuning], answers cost queries from it; the default
 * file is used only when it is valid. */
static void runtime_loads_profiles(void) {
    char dir[] = "/tmp/moerun-rt-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256], bad_path[256];
    snprintf(path, sizeof path, "%s/other-host.txt", dir);
    snprintf(bad_path, sizeof bad_path, "%s/bad.txt", dir);
    moe_profile a;
    make(&a); /* "Test CPU": not this host */
    snprintf(a.tuning.policy, sizeof a.tuning.policy, "static-cpu");
    a.tuning.threads_per_node = 1; /* two nodes with cores: 2 threads */
    CHECK_OK(moe_profile_save(&a, path));
    FILE *f = fopen(bad_path, "w");
    fputs("# moerun-profile 1\n[host]\nthreads = 0\n", f);
    fclose(f);

    test_model tm;
    test_model_make(&tm, 2, 4, 64, 32, MOE_DTYPE_BF16, 5);
    moe_runtime_t *rt = NULL;
    char seen[1024];
    CHECK_STATUS(create(&rt, &tm, path, 0, seen), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS(path);
    CHECK_ERROR_MENTIONS("another host");
    CHECK_STATUS(create(&rt, &tm, bad_path, 1, seen), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS(":3: threads");
    CHECK_STATUS(create(&rt, &tm, "/nonexistent/p.txt", 0, seen), MOE_ERR_IO);

    CHECK_OK(create(&rt, &tm, path, 1, seen));
    CHECK(strcmp(moe_runtime_profile(rt), path) == 0);
    CHECK(strstr(seen, "2 threads") != NULL || omp_limit_below_2());
    const double want = moe_profile_cpu_us(&a, 64, 32, MOE_DTYPE_BF16, 3, 0);
    CHECK(want > 0);
    CHECK_NEAR(moe_runtime_cpu_cost_us(rt, 1, 3), want, 1e-9);
    CHECK(moe_runtime_cpu_cost_us(rt, 2, 3) < 0); /* no such layer */
    moe_runtime_free(&rt);

    /* The default file: used when valid, skipped with a warning when not;
     * "" asks for none. */
    setenv("MOE_PROFILE", bad_path, 1);
    CHECK_OK(create(&rt, &tm, NULL, 0, seen));
    CHECK(strcmp(moe_runtime_profile(rt), "") == 0);
    CHECK(strstr(seen, "not using the default profile") != NULL);
    moe_runtime_free(&rt);
    setenv("MOE_PROFILE", path, 1);
    CHECK_OK(create(&rt, &tm, NULL, 1, seen));
    CHECK(strcmp(moe_runtime_profile(rt), path) == 0);
    moe_runtime_free(&rt);
    CHECK_OK(create(&rt, &tm, "", 1, seen));
    CHECK(strcmp(moe_runtime_profile(rt), "") == 0);
    CHECK(moe_runtime_cpu_cost_us(rt, 0, 1) < 0);
    moe_runtime_free(&rt);
    unsetenv("MOE_PROFILE");

    test_model_free(&tm);
    moe_profile_clear(&a);
    unlink(path), unlink(bad_path), rmdir(dir);
}

TEST_MAIN("profile", TEST_CASE(round_trip_is_identical), TEST_CASE(bad_files_are_refused_with_their_line),
          TEST_CASE(random_damage_is_handled), TEST_CASE(huge_garbage_file_is_refused), TEST_CASE(merge_adds_samples),
          TEST_CASE(identity_names_the_difference), TEST_CASE(cost_queries_use_the_curves),
          TEST_CASE(save_is_atomic), TEST_CASE(runtime_loads_profiles))
