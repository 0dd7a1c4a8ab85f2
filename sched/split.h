/* split.h - the intra-layer CPU/GPU split (HybriMoE's hybrid scheduling,
 * with measured costs): given one layer's activated experts, each with its
 * CPU time, GPU time and whether it is resident on the GPU, choose a side
 * for each so the layer finishes earliest.
 *
 * The timing model, shared by the greedy and the exhaustive search:
 * - the CPU runs its experts one after another (the engine's team works on
 *   one expert's rows at a time): CPU time = the sum of their CPU times;
 * - the GPU computes its resident experts first, while the link copies its
 *   non-resident ones one after another from `link_free_us` on; each copied
 *   expert is computed once it has arrived and the GPU is free. Copies all
 *   cost the same, so computing the copied experts in decreasing GPU time
 *   is an optimal order (Johnson's rule for a two-stage flow shop);
 * - the layer takes the later of the two finishing times. */
#ifndef MOE_SCHED_SPLIT_H
#define MOE_SCHED_SPLIT_H

#include "plan.h"

typedef struct moe_split_item {
    uint32_t expert;
    uint32_t m;       /* tokens routed to it */
    bool resident;    /* on the GPU already (or arriving before the layer starts) */
    double cpu_us;    /* its time on the CPU for m tokens */
    double gpu_us;    /* its time on the GPU for m tokens, weights resident */
    moe_where where;  /* the result */
} moe_split_item;

typedef struct moe_split_link {
    double copy_us;      /* one expert over the link */
    double link_free_us; /* when the link can start this layer's copies (queued prefetches) */
    bool gpu;            /* false: no GPU, everything on the CPU */
} moe_split_link;

/* Finishing time of the layer for the items' current `where`. */
double moe_split_time(const moe_split_item *items, uint32_t n, const moe_split_link *link);

/* The greedy split: resident experts by decreasing load, then non-resident
 * ones by decreasing load; the GPU takes from the front, the CPU from the
 * back, each step giving the next expert to the side that would finish
 * earlier; then a few rounds of the best single move to the other side,
 * else the best exchange of a CPU and a GPU expert (up to 32 experts).
 * Sets every item's `where` and returns the layer's time. No allocation:
 * `order` is scratch for 2 * n indexes. */
double moe_split_greedy(moe_split_item *items, uint32_t n, const moe_split_link *link, uint32_t *order);

/* The best split by trying every assignment (n <= 20), for tests. */
double moe_split_exhaustive(moe_split_item *items, uint32_t n, const moe_split_link *link);

#endif
