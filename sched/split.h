/* split.h - the intra-layer CPU/GPU split (HybriMoE's hybrid scheduling,
 * with measured costs): given one layer's activated experts, each with its
 * CPU time, GPU time and whether it is resident on the GPU, choose a side
 * for each so the layer finishes earliest.
 *
 * The timing model, shared by the greedy and the exhaustive search:
 * - the CPU runs its experts one after another (the engine's team works on
 *   one expert's rows at a time): CPU time = the sum of their CPU times;
 * - the GPU computes each of its experts once its weights are there and the
 *   GPU is free, in the order the weights become ready: resident experts at
 *   their `ready_us` (0, or the arrival of a prefetch still in flight), the
 *   non-resident ones as the link copies them one after another from
 *   `link_free_us` on. Copies all cost the same, so copying the copied
 *   experts in decreasing GPU time is an optimal order (Johnson's rule for
 *   a two-stage flow shop), and computing in order of readiness gives the
 *   earliest finish for those release times;
 * - the layer takes the later of the two finishing times. */
#ifndef MOE_SCHED_SPLIT_H
#define MOE_SCHED_SPLIT_H

#include "plan.h"

/* The most activated experts one layer may have (DeepSeek-V3 has 256). */
#define MOE_SPLIT_MAX 256

typedef struct moe_split_item {
    uint32_t expert;
    uint32_t m;       /* tokens routed to it */
    bool resident;    /* on the GPU, or on its way there (a prefetch in flight) */
    double ready_us;  /* resident: when its weights are ready, from the layer's start (0 = now) */
    double cpu_us;    /* its time on the CPU for m tokens */
    double gpu_us;    /* its time on the GPU for m tokens, weights resident */
    moe_where where;  /* the result */
} moe_split_item;

typedef struct moe_split_link {
    double copy_us;      /* one expert over the link */
    double link_free_us; /* when the link can start this layer's copies (queued prefetches) */
    bool gpu;            /* false: no GPU, everything on the CPU */
} moe_split_link;

/* Finishing time of the layer for the items' current `where` (n <=
 * MOE_SPLIT_MAX, else -1): the plain reference of the timing model. */
double moe_split_time(const moe_split_item *items, uint32_t n, const moe_split_link *link);

/* The greedy split: resident experts by decreasing load, then non-resident
 * ones by decreasing load; the GPU takes from the front, the CPU from the
 * back, each step giving the next expert to the side that would finish
 * earlier (HybriMoE's hybrid scheduling). With `refine`, then a few rounds
 * of the best single move to the other side, else the best exchange of a
 * CPU and a GPU expert (up to 32 experts). Sets every item's `where` and
 * returns the layer's time. With prefetches in flight the refined greedy
 * also starts from the experts in order of arrival and keeps the better.
 * No allocation: `order` is scratch for 4 * n indexes. */
double moe_split_greedy(moe_split_item *items, uint32_t n, const moe_split_link *link, bool refine,
                        uint32_t *order);

/* The best split by trying every assignment (n <= 20), for tests. */
double moe_split_exhaustive(moe_split_item *items, uint32_t n, const moe_split_link *link);

#endif
