/* engine.h - the CPU expert engine: runs a layer's routed experts, each on
 * its group of tokens, as fast as memory bandwidth (decode) or the matrix
 * units (prefill) allow.
 *
 * A call gets tasks, one per expert with its m gathered token rows:
 *   y[r] = down( silu(gate x[r]) * (up x[r]) )   for r < m
 * - Groups of up to gemv_max_m tokens (decode) run on the GEMV kernels of
 *   kern.h, all groups together in one parallel region: phase 1 splits the
 *   gate/up rows of every expert into blocks, each block also applying
 *   SiLU-multiply; phase 2 splits the down rows. Work on an expert goes to
 *   the team of threads of the NUMA node that holds it.
 * - Larger groups (prefill) run one after another on oneDNN matmuls (mm.h)
 *   that use the whole team; the glue between them is vectorized and
 *   parallel.
 * Every path is tested against moe_ref_expert(). */
#ifndef MOE_CPU_ENGINE_H
#define MOE_CPU_ENGINE_H

#include "expert.h"
#include "kern.h"

typedef struct moe_cpu moe_cpu;

typedef struct moe_cpu_params {
    uint32_t n_threads;        /* >= 1; the OpenMP team size */
    uint32_t n_teams;          /* NUMA nodes that hold experts; >= 1 */
    const uint32_t *team_size; /* threads of each team (sum = n_threads), or NULL for an even split */
    const uint32_t *team_node; /* the OS's NUMA node of each team, or NULL for node = team */
    bool bind_threads;         /* pin each team to its node's CPUs (nodes this machine has); the
                                  calling thread, thread 0 of team 0, only while moe_cpu_run runs */
    uint32_t gemv_max_m;       /* groups of more tokens go to AMX or oneDNN; 0 = per-dtype defaults */
    uint32_t amx_max_m;        /* groups up to this size run on our AMX kernels; 0 = per-dtype defaults */
    bool portable;             /* plain C kernels and no oneDNN: the second implementation for tests */
    const moe_logger *log;
} moe_cpu_params;

/* Largest group (tokens) the GEMV kernels take for weight dtype t by default;
 * larger groups go to oneDNN. Measured crossovers (docs/cpu-engine.md). */
uint32_t moe_cpu_default_gemv_max_m(moe_dtype t);

typedef struct moe_cpu_task {
    moe_expert_view w;
    uint32_t team;  /* team (NUMA node) that runs it: moe_cpu_home() of its expert */
    uint32_t m;     /* tokens; 0 is allowed and does nothing */
    const float *x; /* [m, hidden] */
    float *y;       /* [m, hidden], written */
} moe_cpu_task;

/* The node that holds expert `expert` of any layer: round robin. */
static inline uint32_t moe_cpu_home(uint32_t expert, uint32_t n_teams) { return expert % n_teams; }

moe_status moe_cpu_create(moe_cpu **out, const moe_cpu_params *p);

/* Readies the engine for experts of this shape and dtype (oneDNN primitives
 * for every M bucket). Call it for each layer shape before running; a shape
 * that was not prepared still runs, on the GEMV kernels only. */
moe_status moe_cpu_prepare(moe_cpu *c, uint32_t hidden, uint32_t inter, moe_dtype t);

/* Runs the tasks. Must be called outside any OpenMP parallel region. */
moe_status moe_cpu_run(moe_cpu *c, const moe_cpu_task *tasks, uint32_t n_tasks);

void moe_cpu_free(moe_cpu **c);

/* bf16 and int8 groups above the GEMV threshold and up to this many tokens
 * run on our AMX kernels (weights in place as A tiles) where the CPU has
 * AMX; larger ones on oneDNN. Measured crossovers (2048x1408, cold):
 * bf16 level with oneDNN at 128 tokens, int8 near 64. */
enum { MOE_CPU_AMX_MAX_M_BF16 = 96, MOE_CPU_AMX_MAX_M_I8 = 64 };

/* The path a group of m tokens of this shape takes: "onednn", or the name
 * of the kernel ("amx_bf16", "avx512_bf16", ...). */
const char *moe_cpu_path(const moe_cpu *c, uint32_t hidden, uint32_t inter, moe_dtype t, uint32_t m);

/* Which kernel runs dtype t ("avx512_bf16", "c", ...), and which oneDNN
 * implementation a group of m tokens of this shape uses ("" for none). */
const char *moe_cpu_kernel_name(const moe_cpu *c, moe_dtype t);
const char *moe_cpu_dnnl_impl(const moe_cpu *c, uint32_t hidden, uint32_t inter, moe_dtype t, uint32_t m);

/* Test hook: while set, run() counts into work[thread * n_tasks + task]
 * the row blocks each thread computed (cap entries; NULL turns it off). */
void moe_cpu_trace(moe_cpu *c, uint32_t *work, size_t cap);

#endif
