/* cost.h - what an expert call costs on a device, answered from measured
 * figures: the scheduler's question "how long will expert (hidden x inter,
 * dtype) take on m tokens here?".
 *
 * A cost table holds measured points (shape, dtype, m -> microseconds), as
 * moe-profile records them in the machine profile, plus roofline figures
 * (read bandwidth, matmul rate per dtype, fixed overhead) for shapes that
 * were not measured. For a measured shape and dtype the answer interpolates
 * linearly in m between the nearest measured m's; below the smallest it is
 * the smallest's time (decode is bandwidth-bound: fewer tokens cost no
 * less), above the largest it grows in proportion to m (compute-bound).
 * Otherwise it is overhead + max(weight bytes / (read bandwidth x decode
 * efficiency), FLOPs / matmul rate). The table is borrowed, never copied. */
#ifndef MOE_PROFILES_COST_H
#define MOE_PROFILES_COST_H

#include "common.h"

typedef struct moe_cost_point {
    uint32_t hidden, inter;
    moe_dtype dtype;
    uint32_t m;
    double us; /* measured time of one expert call */
} moe_cost_point;

typedef struct moe_cost_table {
    const moe_cost_point *points; /* any order */
    uint32_t n_points;
    double read_gbps;                     /* memory the weights stream from */
    double decode_eff[MOE_DTYPE_COUNT_];  /* fraction of read_gbps small m reaches (0 = 1) */
    double gflops[MOE_DTYPE_COUNT_];      /* large-m rate per weight dtype (0 = unknown) */
    double overhead_us;                   /* fixed cost per call */
} moe_cost_table;

/* Microseconds for one call, or a negative value when the table can answer
 * neither from points nor from the roofline (no read bandwidth). m = 0
 * costs 0. */
double moe_cost_us(const moe_cost_table *t, uint32_t hidden, uint32_t inter, moe_dtype dtype, uint32_t m);

#endif
