/* split.c - the CPU/GPU split of one layer (split.h). */
#include "split.h"

#include <math.h>
#include <stdlib.h>

/* GPU finishing time of the GPU side, following the model of split.h:
 * resident experts back to back from 0, copied ones in decreasing GPU time,
 * each after its copy. Insertion order over the copied items (n is small:
 * the experts of one layer's batch). */
static double gpu_finish(const moe_split_item *items, uint32_t n, const moe_split_link *link) {
    double t = 0.0;
    uint32_t copied = 0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i].where == MOE_ON_GPU) {
            if (items[i].resident) t += items[i].gpu_us;
            else copied++;
        }
    if (!copied) return t;
    /* Walk the copied items in decreasing GPU time without sorting in place:
     * select the next largest each round (O(k^2), k = copied <= n). */
    double last = INFINITY;
    uint32_t last_i = UINT32_MAX, done = 0;
    while (done < copied) {
        uint32_t best = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++) {
            const moe_split_item *it = &items[i];
            if (it->where != MOE_ON_GPU || it->resident) continue;
            /* Strictly after (last, last_i) in the order (gpu_us desc, index asc). */
            if (it->gpu_us > last || (it->gpu_us == last && i <= last_i)) continue;
            if (best == UINT32_MAX || it->gpu_us > items[best].gpu_us) best = i;
        }
        const double arrive = link->link_free_us + (double)(done + 1) * link->copy_us;
        t = (t > arrive ? t : arrive) + items[best].gpu_us;
        last = items[best].gpu_us, last_i = best, done++;
    }
    return t;
}

/* gpu_finish with the items' indexes sorted by (gpu_us desc, index asc)
 * in byg: one pass instead of a selection per copied expert. */
static double gpu_sorted(const moe_split_item *items, const uint32_t *byg, uint32_t n, const moe_split_link *link) {
    double t = 0.0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i].where == MOE_ON_GPU && items[i].resident) t += items[i].gpu_us;
    uint32_t done = 0;
    for (uint32_t j = 0; j < n; j++) {
        const moe_split_item *it = &items[byg[j]];
        if (it->where != MOE_ON_GPU || it->resident) continue;
        const double arrive = link->link_free_us + (double)(++done) * link->copy_us;
        t = (t > arrive ? t : arrive) + it->gpu_us;
    }
    return t;
}

static double time_sorted(const moe_split_item *items, const uint32_t *byg, uint32_t n, const moe_split_link *link) {
    double cpu = 0.0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i].where == MOE_ON_CPU) cpu += items[i].cpu_us;
    const double g = gpu_sorted(items, byg, n, link);
    return cpu > g ? cpu : g;
}

double moe_split_time(const moe_split_item *items, uint32_t n, const moe_split_link *link) {
    double cpu = 0.0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i].where == MOE_ON_CPU) cpu += items[i].cpu_us;
    const double gpu = link->gpu ? gpu_finish(items, n, link) : 0.0;
    return cpu > gpu ? cpu : gpu;
}

/* Resident before non-resident; within each, more tokens first; then by id. */
static bool before(const moe_split_item *x, const moe_split_item *y) {
    if (x->resident != y->resident) return x->resident;
    if (x->m != y->m) return x->m > y->m;
    return x->expert < y->expert;
}

double moe_split_greedy(moe_split_item *items, uint32_t n, const moe_split_link *link, uint32_t *order) {
    for (uint32_t i = 0; i < n; i++) items[i].where = MOE_ON_CPU;
    if (!link->gpu || n == 0) return moe_split_time(items, n, link);
    uint32_t *byg = order + n; /* by GPU time, for time_sorted */
    for (uint32_t i = 0; i < n; i++) { /* insertion sorts: a layer's experts, no shared state */
        uint32_t j = i;
        while (j > 0 && before(&items[i], &items[order[j - 1]])) order[j] = order[j - 1], j--;
        order[j] = i;
        j = i;
        while (j > 0 && items[i].gpu_us > items[byg[j - 1]].gpu_us) byg[j] = byg[j - 1], j--;
        byg[j] = i;
    }
    /* Two ends: the GPU from the front, the CPU from the back. */
    uint32_t lo = 0, hi = n;
    double cpu = 0.0;
    /* Items not given yet stay marked CPU (gpu_sorted ignores them) but are
     * not counted in `cpu`. */
    while (lo < hi) {
        moe_split_item *front = &items[order[lo]], *back = &items[order[hi - 1]];
        front->where = MOE_ON_GPU; /* the GPU's finish with the front item */
        const double g = gpu_sorted(items, byg, n, link);
        front->where = MOE_ON_CPU;
        const double c = cpu + back->cpu_us;
        if (g <= c) {
            front->where = MOE_ON_GPU;
            lo++;
        } else {
            cpu = c;
            hi--;
        }
    }
    /* Single moves while they shorten the layer (a few rounds: each costs
     * n re-timings). */
    double best = time_sorted(items, byg, n, link);
    for (uint32_t round = 0; round < 8; round++) {
        uint32_t pick = UINT32_MAX;
        double pick_t = best;
        for (uint32_t i = 0; i < n; i++) {
            items[i].where = items[i].where == MOE_ON_CPU ? MOE_ON_GPU : MOE_ON_CPU;
            const double t = time_sorted(items, byg, n, link);
            items[i].where = items[i].where == MOE_ON_CPU ? MOE_ON_GPU : MOE_ON_CPU;
            if (t < pick_t - 1e-9) pick = i, pick_t = t;
        }
        if (pick != UINT32_MAX) {
            items[pick].where = items[pick].where == MOE_ON_CPU ? MOE_ON_GPU : MOE_ON_CPU;
            best = pick_t;
            continue;
        }
        /* No single move helps: try exchanging a CPU expert with a GPU one. */
        uint32_t pa = UINT32_MAX, pb = UINT32_MAX;
        for (uint32_t a = 0; a < (n <= 32 ? n : 0); a++)
            for (uint32_t b = 0; b < n; b++) {
                if (items[a].where != MOE_ON_CPU || items[b].where != MOE_ON_GPU) continue;
                items[a].where = MOE_ON_GPU, items[b].where = MOE_ON_CPU;
                const double t = time_sorted(items, byg, n, link);
                items[a].where = MOE_ON_CPU, items[b].where = MOE_ON_GPU;
                if (t < pick_t - 1e-9) pa = a, pb = b, pick_t = t;
            }
        if (pa == UINT32_MAX) break;
        items[pa].where = MOE_ON_GPU, items[pb].where = MOE_ON_CPU;
        best = pick_t;
    }
    return best;
}

double moe_split_exhaustive(moe_split_item *items, uint32_t n, const moe_split_link *link) {
    if (n > 20) return -1.0;
    double best = INFINITY;
    uint32_t best_mask = 0;
    const uint32_t masks = link->gpu ? 1u << n : 1u;
    for (uint32_t mask = 0; mask < masks; mask++) {
        for (uint32_t i = 0; i < n; i++) items[i].where = mask >> i & 1 ? MOE_ON_GPU : MOE_ON_CPU;
        const double t = moe_split_time(items, n, link);
        if (t < best) best = t, best_mask = mask;
    }
    for (uint32_t i = 0; i < n; i++) items[i].where = best_mask >> i & 1 ? MOE_ON_GPU : MOE_ON_CPU;
    return best;
}
