/* profile.h - the machine profile: what moe-profile measured on a host, as
 * a file a person can read, edit, merge and share (docs/profiles.md), and
 * the cost queries the scheduler asks of it.
 *
 * Every measured figure is kept as the count, sum and sum of squares of its
 * samples (as StarPU's performance models do): files merge exactly by
 * adding them, and the spread of each figure stays visible. The file is
 * line-oriented text, "# moerun-profile 1" then [sections] of
 * "key = value" lines, units in the keys; it is written to a temporary file
 * and renamed, so a reader never sees half of one. The reader checks
 * everything and reports the first problem as "file:line: what is wrong".
 *
 * This layer only holds and checks figures; runtime/profiler.c measures
 * them (it needs the CPU engine and the GPU backend above this layer). */
#ifndef MOE_PROFILES_PROFILE_H
#define MOE_PROFILES_PROFILE_H

#include "common.h"
#include "cost.h"

#define MOE_PROFILE_VERSION 1
#define MOE_PROFILE_MAX_NODES 16   /* NUMA nodes with bandwidth figures */
#define MOE_PROFILE_MAX_GPUS 8
#define MOE_PROFILE_MAX_SIZES 16   /* copy sizes per link direction */
#define MOE_PROFILE_MAX_BYTES (16u << 20) /* no profile is larger: refuse bigger files unread */

/* Samples of one figure. */
typedef struct moe_stat {
    uint64_t n;
    double sum, sumsq;
} moe_stat;

void moe_stat_add(moe_stat *s, double x);
void moe_stat_merge(moe_stat *into, const moe_stat *from);
double moe_stat_mean(const moe_stat *s); /* 0 when empty */
double moe_stat_sd(const moe_stat *s);   /* sample standard deviation; 0 below 2 samples */
double moe_stat_rse(const moe_stat *s);  /* relative standard error of the mean; +inf below 2 samples */

/* Time of one expert call against tokens m, on a CPU node or a GPU. */
typedef struct moe_curve_point {
    uint32_t m;
    moe_stat us;
} moe_curve_point;

typedef struct moe_curve {
    uint32_t hidden, inter;
    moe_dtype dtype;
    int32_t gpu;    /* -1: the CPU engine on NUMA node `node`; else this GPU */
    uint32_t node;  /* NUMA node (index in the topology section) for the CPU */
    uint32_t n_points;
    moe_curve_point *points; /* m strictly increasing */
} moe_curve;

/* Copy rate against copy size, one direction and memory kind. */
typedef struct moe_link_curve {
    uint32_t n;
    uint64_t bytes[MOE_PROFILE_MAX_SIZES]; /* strictly increasing */
    moe_stat gbps[MOE_PROFILE_MAX_SIZES];
} moe_link_curve;

typedef struct moe_profile_gpu {
    char name[128];
    uint32_t cc_major, cc_minor;
    uint64_t total_bytes, free_bytes;
    int32_t numa_node; /* node the GPU is attached to, -1 unknown */
    moe_stat launch_us, event_us;
    moe_link_curve h2d_pinned, h2d_pageable, d2h_pinned;
} moe_profile_gpu;

/* The runtime's knobs a user tunes (the [tuning] section). A field is used
 * only where its bit is set in `set`; the command line overrides it. */
enum {
    MOE_TUNE_POLICY = 1u << 0,
    MOE_TUNE_GPU_BUDGET = 1u << 1,
    MOE_TUNE_PREFETCH_DEPTH = 1u << 2,
    MOE_TUNE_PREFETCH_MIN_GAIN = 1u << 3,
    MOE_TUNE_MRS_ALPHA = 1u << 4,
    MOE_TUNE_MRS_TOP_P = 1u << 5,
    MOE_TUNE_THREADS_PER_NODE = 1u << 6,
    MOE_TUNE_PINNED_LIMIT = 1u << 7,
    MOE_TUNE_PLACEMENT = 1u << 8,
};

typedef struct moe_tuning {
    uint32_t set;
    char policy[32];
    double gpu_budget_fraction; /* "50%" */
    uint64_t gpu_budget_bytes;  /* or bytes; one of the two is non-zero */
    uint32_t prefetch_depth;    /* layers ahead, 0..16 */
    double prefetch_min_gain_us;/* copy only experts whose impact exceeds this */
    double mrs_alpha;           /* score update weight, 0..1 */
    double mrs_top_p;           /* fraction of router scores that update scores, 0..1 */
    uint32_t threads_per_node;  /* 0 = every core */
    uint64_t pinned_limit_bytes;/* 0 = no limit */
    char placement[16];         /* "round-robin" or "split" */
} moe_tuning;

typedef struct moe_profile {
    /* [host] */
    char hostname[128], cpu_model[128];
    char moerun_version[32], onednn_version[32];
    char created[32]; /* UTC, ISO 8601 */
    char source[16];  /* "measured" or "datasheet" */
    char mode[16];    /* "quick" or "full" (measured profiles) */
    uint32_t threads; /* CPU threads the curves were measured with */
    /* [topology] */
    moe_topology_info topo;
    uint32_t node_os[MOE_PROFILE_MAX_NODES], node_cores[MOE_PROFILE_MAX_NODES];
    /* [bandwidth]: read rate of node i's cores from node j's memory, GB/s;
     * [i][i] is the node's own bandwidth. */
    moe_stat read_gbps[MOE_PROFILE_MAX_NODES][MOE_PROFILE_MAX_NODES];
    /* [cpu-expert] and [gpu] curves */
    moe_curve *curves;
    uint32_t n_curves, cap_curves;
    /* [gpu] and [link] */
    uint32_t n_gpus;
    moe_profile_gpu gpus[MOE_PROFILE_MAX_GPUS];
    /* [tuning] */
    moe_tuning tuning;
    /* Cost tables built by moe_profile_finish() for the queries below. */
    moe_cost_point *cost_points;
    uint32_t n_cost_points;
} moe_profile;

/* An empty profile (free it with moe_profile_clear). */
void moe_profile_init(moe_profile *p);
void moe_profile_clear(moe_profile *p);

/* The curve of (shape, dtype, gpu, node), created empty if absent; NULL
 * only when memory runs out. */
moe_curve *moe_profile_curve(moe_profile *p, uint32_t hidden, uint32_t inter, moe_dtype t, int32_t gpu,
                             uint32_t node);
/* The point at m, created empty in its sorted place if absent; NULL only
 * when memory runs out. */
moe_curve_point *moe_curve_at(moe_curve *c, uint32_t m);

/* Reads and checks a profile file. Errors name "path:line". */
moe_status moe_profile_load(moe_profile *p, const char *path);
/* The same from text in memory; `name` stands for the file in messages. */
moe_status moe_profile_parse(moe_profile *p, const char *text, size_t len, const char *name);

/* Writes atomically: path.tmp.PID, then rename over path. */
moe_status moe_profile_save(const moe_profile *p, const char *path);
/* The file's text into buf (NUL-terminated, truncated to cap); returns the
 * full length. */
size_t moe_profile_format(const moe_profile *p, char *buf, size_t cap);

/* Adds b's samples to a's (same host required unless `force`). */
moe_status moe_profile_merge(moe_profile *a, const moe_profile *b, bool force);

/* True if the profile was measured on a host like `here` with this
 * library: same CPU model, cores, NUMA nodes, GPUs, moerun major.minor and
 * oneDNN version. Otherwise false with the difference in `why`. */
bool moe_profile_matches(const moe_profile *p, const moe_profile *here, char *why, size_t why_len);

/* Builds the cost tables; call after loading or measuring. */
moe_status moe_profile_finish(moe_profile *p);

/* Cost queries (table lookups, no allocation). Microseconds; negative when
 * the profile has nothing to answer with. */
double moe_profile_cpu_us(const moe_profile *p, uint32_t hidden, uint32_t inter, moe_dtype t, uint32_t m,
                          uint32_t node);
double moe_profile_gpu_us(const moe_profile *p, int32_t gpu, uint32_t hidden, uint32_t inter, moe_dtype t,
                          uint32_t m);
double moe_profile_copy_us(const moe_profile *p, int32_t gpu, uint64_t bytes, bool pinned);
/* Device-to-host copy time into pinned memory. */
double moe_profile_d2h_us(const moe_profile *p, int32_t gpu, uint64_t bytes);
/* One expert run on GPU `gpu` as an executor sees it: m tokens' f32
 * activations in (pinned), the kernel, the results out. The kernel's time
 * is the profile's curve for the shape and dtype, else the GPU's curve
 * nearest in weight bytes scaled by the ratio of weight bytes (kernels of
 * these sizes are bound by HBM at decode and by FLOPs at prefill, both
 * proportional). 0 for m = 0; negative when the profile cannot say. */
double moe_profile_gpu_run_us(const moe_profile *p, int32_t gpu, uint32_t hidden, uint32_t inter, moe_dtype t,
                              uint32_t m);

#endif
