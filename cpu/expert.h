/* expert.h - CPU execution of routed experts. */
#ifndef MOE_CPU_EXPERT_H
#define MOE_CPU_EXPERT_H

#include "common.h"

/* One SwiGLU expert's weights as registered (borrowed pointers). */
typedef struct moe_expert_view {
    const void *gate; /* [inter, hidden] */
    const void *up;   /* [inter, hidden] */
    const void *down; /* [hidden, inter] */
    moe_dtype dtype;
    uint32_t hidden, inter;
} moe_expert_view;

/* The reference expert, written to read like the math and to be the truth
 * every fast path is tested against:
 *   for each row r < m:  h = silu(gate x_r) * (up x_r);  y_r = down h
 * x: [m, hidden], y: [m, hidden], scratch: at least `inter` floats.
 * Dot products accumulate in double. The dtype must be valid. */
void moe_ref_expert(const moe_expert_view *w, uint32_t m, const float *x, float *y, float *scratch);

/* silu(v) = v * sigmoid(v) */
static inline float moe_silu(float v) { return v / (1.0f + __builtin_expf(-v)); }

/* One unit of CPU work: run expert `w` on `m` contiguous input rows. */
typedef struct moe_cpu_job {
    moe_expert_view w;
    uint32_t m;
    const float *x; /* [m, hidden] */
    float *y;       /* [m, hidden] */
} moe_cpu_job;

/* Runs `n_jobs` independent jobs on up to `n_threads` threads. `scratch`
 * holds n_threads * max_inter floats. Each job writes only its own y, so the
 * results do not depend on the thread count or the order jobs finish in. */
void moe_cpu_run(const moe_cpu_job *jobs, uint32_t n_jobs, uint32_t n_threads, float *scratch,
                 uint32_t max_inter);

#endif
