/* split.c - the CPU/GPU split of one layer (split.h). */
#include "split.h"

#include <math.h>
#include <stdlib.h>

/* GPU finishing time of the GPU side, following the model of split.h, the
 * plain way (the reference for the exhaustive search): give each GPU item
 * its release time (resident: ready_us; copied: its copy's arrival, copies
 * in decreasing GPU time), then compute in increasing release time. */
static double gpu_finish(const moe_split_item *items, uint32_t n, const moe_split_link *link) {
    double release[MOE_SPLIT_MAX];
    bool done[MOE_SPLIT_MAX];
    if (n > MOE_SPLIT_MAX) return -1.0;
    for (uint32_t i = 0; i < n; i++) {
        done[i] = items[i].where != MOE_ON_GPU;
        if (done[i]) continue;
        if (items[i].resident) {
            release[i] = items[i].ready_us;
            continue;
        }
        uint32_t rank = 0; /* copied items ahead of i: larger GPU time, or equal and lower index */
        for (uint32_t j = 0; j < n; j++)
            if (items[j].where == MOE_ON_GPU && !items[j].resident &&
                (items[j].gpu_us > items[i].gpu_us || (items[j].gpu_us == items[i].gpu_us && j < i)))
                rank++;
        release[i] = link->link_free_us + (double)(rank + 1) * link->copy_us;
    }
    double t = 0.0;
    for (;;) {
        uint32_t next = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++)
            if (!done[i] && (next == UINT32_MAX || release[i] < release[next])) next = i;
        if (next == UINT32_MAX) return t;
        t = (t > release[next] ? t : release[next]) + items[next].gpu_us;
        done[next] = true;
    }
}

/* gpu_finish with the items' indexes sorted by (gpu_us desc, index asc) in
 * byg and by (ready_us asc) in byr: one merge pass instead of selections. */
static double gpu_sorted(const moe_split_item *items, const uint32_t *byg, const uint32_t *byr, uint32_t n,
                         const moe_split_link *link) {
    double t = 0.0;
    uint32_t r = 0, g = 0, copied = 0;
    for (;;) {
        while (r < n && (items[byr[r]].where != MOE_ON_GPU || !items[byr[r]].resident)) r++;
        while (g < n && (items[byg[g]].where != MOE_ON_GPU || items[byg[g]].resident)) g++;
        if (r == n && g == n) return t;
        const double arrive = link->link_free_us + (double)(copied + 1) * link->copy_us;
        const moe_split_item *it;
        double rel;
        if (g == n || (r < n && items[byr[r]].ready_us <= arrive)) {
            it = &items[byr[r++]];
            rel = it->ready_us;
        } else {
            it = &items[byg[g++]];
            rel = arrive;
            copied++;
        }
        t = (t > rel ? t : rel) + it->gpu_us;
    }
}

static double time_sorted(const moe_split_item *items, const uint32_t *byg, const uint32_t *byr, uint32_t n,
                          const moe_split_link *link) {
    double cpu = 0.0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i].where == MOE_ON_CPU) cpu += items[i].cpu_us;
    const double g = gpu_sorted(items, byg, byr, n, link);
    return cpu > g ? cpu : g;
}

double moe_split_time(const moe_split_item *items, uint32_t n, const moe_split_link *link) {
    double cpu = 0.0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i].where == MOE_ON_CPU) cpu += items[i].cpu_us;
    const double gpu = link->gpu ? gpu_finish(items, n, link) : 0.0;
    return cpu > gpu ? cpu : gpu;
}

/* The greedy's orders. Published (HybriMoE): resident experts first, then
 * the others; within each, more tokens first; then by id. Arrival: by when
 * an expert's weights could be on the GPU at the earliest (resident:
 * ready_us; else after one copy), so prefetches still in flight fall among
 * the copies; then as published. */
static bool before(const moe_split_item *x, const moe_split_item *y, const moe_split_link *link, bool arrival) {
    if (arrival) {
        const double ex = x->resident ? x->ready_us : link->link_free_us + link->copy_us;
        const double ey = y->resident ? y->ready_us : link->link_free_us + link->copy_us;
        if (ex != ey) return ex < ey;
    }
    if (x->resident != y->resident) return x->resident;
    if (x->m != y->m) return x->m > y->m;
    return x->expert < y->expert;
}

/* Two ends: the GPU from the front of `order`, the CPU from the back, each
 * step giving the next expert to the side that would finish earlier. */
static void two_ends(moe_split_item *items, uint32_t n, const moe_split_link *link, const uint32_t *order,
                     const uint32_t *byg, const uint32_t *byr) {
    for (uint32_t i = 0; i < n; i++) items[i].where = MOE_ON_CPU;
    uint32_t lo = 0, hi = n;
    double cpu = 0.0;
    /* Items not given yet stay marked CPU (gpu_sorted ignores them) but are
     * not counted in `cpu`. */
    while (lo < hi) {
        moe_split_item *front = &items[order[lo]], *back = &items[order[hi - 1]];
        front->where = MOE_ON_GPU; /* the GPU's finish with the front item */
        const double g = gpu_sorted(items, byg, byr, n, link);
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
}

/* Local search from the current assignment: the best single move to the
 * other side while one shortens the layer, else the best exchange of a CPU
 * and a GPU expert (up to 32 experts); a few rounds, each n (or n^2)
 * re-timings. */
static double refine_split(moe_split_item *items, uint32_t n, const moe_split_link *link, const uint32_t *byg,
                           const uint32_t *byr) {
    double best = time_sorted(items, byg, byr, n, link);
    for (uint32_t round = 0; round < 8; round++) {
        uint32_t pick = UINT32_MAX;
        double pick_t = best;
        for (uint32_t i = 0; i < n; i++) {
            items[i].where = items[i].where == MOE_ON_CPU ? MOE_ON_GPU : MOE_ON_CPU;
            const double t = time_sorted(items, byg, byr, n, link);
            items[i].where = items[i].where == MOE_ON_CPU ? MOE_ON_GPU : MOE_ON_CPU;
            if (t < pick_t - 1e-9) pick = i, pick_t = t;
        }
        if (pick != UINT32_MAX) {
            items[pick].where = items[pick].where == MOE_ON_CPU ? MOE_ON_GPU : MOE_ON_CPU;
            best = pick_t;
            continue;
        }
        uint32_t pa = UINT32_MAX, pb = UINT32_MAX;
        for (uint32_t a = 0; a < (n <= 32 ? n : 0); a++)
            for (uint32_t b = 0; b < n; b++) {
                if (items[a].where != MOE_ON_CPU || items[b].where != MOE_ON_GPU) continue;
                items[a].where = MOE_ON_GPU, items[b].where = MOE_ON_CPU;
                const double t = time_sorted(items, byg, byr, n, link);
                items[a].where = MOE_ON_CPU, items[b].where = MOE_ON_GPU;
                if (t < pick_t - 1e-9) pa = a, pb = b, pick_t = t;
            }
        if (pa == UINT32_MAX) break;
        items[pa].where = MOE_ON_GPU, items[pb].where = MOE_ON_CPU;
        best = pick_t;
    }
    return best;
}

static void sort_order(const moe_split_item *items, uint32_t n, const moe_split_link *link, bool arrival,
                       uint32_t *order) {
    for (uint32_t i = 0; i < n; i++) { /* insertion sort: a layer's experts */
        uint32_t j = i;
        while (j > 0 && before(&items[i], &items[order[j - 1]], link, arrival)) order[j] = order[j - 1], j--;
        order[j] = i;
    }
}

double moe_split_greedy(moe_split_item *items, uint32_t n, const moe_split_link *link, bool refine,
                        uint32_t *order) {
    for (uint32_t i = 0; i < n; i++) items[i].where = MOE_ON_CPU;
    if (!link->gpu || n == 0) return moe_split_time(items, n, link);
    uint32_t *byg = order + n;     /* by GPU time, for time_sorted */
    uint32_t *byr = order + 2 * n; /* by readiness */
    uint8_t *keep = (uint8_t *)(order + 3 * n); /* the best assignment so far */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t j = i;
        while (j > 0 && items[i].gpu_us > items[byg[j - 1]].gpu_us) byg[j] = byg[j - 1], j--;
        byg[j] = i;
        j = i;
        while (j > 0 && items[i].ready_us < items[byr[j - 1]].ready_us) byr[j] = byr[j - 1], j--;
        byr[j] = i;
    }
    sort_order(items, n, link, false, order);
    two_ends(items, n, link, order, byg, byr);
    if (!refine) return time_sorted(items, byg, byr, n, link);
    double best = refine_split(items, n, link, byg, byr);
    /* With prefetches in flight, also start from the order of arrival and
     * keep the better of the two. */
    bool in_flight = false;
    for (uint32_t i = 0; i < n; i++) in_flight |= items[i].resident && items[i].ready_us > 0;
    if (!in_flight) return best;
    for (uint32_t i = 0; i < n; i++) keep[i] = (uint8_t)items[i].where;
    sort_order(items, n, link, true, order);
    two_ends(items, n, link, order, byg, byr);
    const double t = refine_split(items, n, link, byg, byr);
    if (t < best) return t;
    for (uint32_t i = 0; i < n; i++) items[i].where = (moe_where)keep[i];
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
