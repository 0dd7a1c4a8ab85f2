/* profiler.h - measures this machine into a profile (profiles/profile.h):
 * what moe-profile runs, and what the runtime compares a loaded profile
 * with. It sits in the runtime layer because it drives the real CPU engine.
 *
 * Each figure is sampled until the relative standard error of its mean is
 * under the target, or its time cap is spent (and at least min_samples
 * are taken). Expert calls read their weights cold: each sample runs a
 * different expert out of a rotation larger than the last-level cache. */
#ifndef MOE_RUNTIME_PROFILER_H
#define MOE_RUNTIME_PROFILER_H

#include "profile.h"

typedef struct moe_profile_shape {
    uint32_t hidden, inter;
    moe_dtype dtype;
} moe_profile_shape;

typedef struct moe_profiler_opts {
    bool quick;                       /* the defaults below for --quick, else full */
    uint32_t threads;                 /* 0 = one per core */
    const moe_profile_shape *shapes;  /* NULL = the default set */
    uint32_t n_shapes;
    const uint32_t *ms;               /* NULL = the default M points */
    uint32_t n_ms;
    double rse_target;                /* 0 = 0.03 quick, 0.01 full */
    double cap_s;                     /* per figure; 0 = 1 s quick, 4 s full */
    size_t rotate_bytes;              /* 0 = max(3 x L3, 1 GB) */
    const moe_logger *log;            /* progress at INFO */
} moe_profiler_opts;

/* Fills the [host] and [topology] sections from this host (what a loaded
 * profile must match) and the GPUs' descriptions. Measures nothing. */
moe_status moe_profiler_host(moe_profile *p);

/* Measures everything: host, bandwidth, CPU expert curves. p must be
 * initialized; it is cleared first. */
moe_status moe_profiler_run(moe_profile *p, const moe_profiler_opts *o);

/* Measures one expert call of (shape, m) on the engine configuration the
 * profiler uses, with the same sampling rule; for tests that check a
 * profile against the engine. */
moe_status moe_profiler_sample_expert(const moe_profile_shape *s, uint32_t m, uint32_t threads, double rse_target,
                                      double cap_s, moe_stat *out);

/* The default file: $MOE_PROFILE, else $XDG_CACHE_HOME/moerun/profile.txt,
 * else $HOME/.cache/moerun/profile.txt. False if none can be formed. */
bool moe_profile_default_path(char *buf, size_t cap);

#endif
