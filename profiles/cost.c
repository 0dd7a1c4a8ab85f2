/* cost.c - what an expert call costs: the cost table (cost.h) and the
 * profile's cost queries over it (profile.h). */
#include "cost.h"

#include <math.h>
#include <stdlib.h>

#include "profile.h"
#include "quant.h"

/* Bytes of an expert's three matrices in dtype d, as elements times d's
 * bytes per element (fractional for block formats: a cost model needs no
 * whole rows, and a layer whose down rows take another format still has
 * a cost for each); 0 for an invalid dtype. */
static double expert_bytes(uint32_t hidden, uint32_t inter, moe_dtype d) {
    const size_t b = moe_dtype_block(d);
    return b ? 3.0 * hidden * inter * (double)moe_dtype_block_bytes(d) / (double)b : 0.0;
}

static double roofline(const moe_cost_table *t, uint32_t hidden, uint32_t inter, moe_dtype d, uint32_t m) {
    const double bytes = expert_bytes(hidden, inter, d);
    if (!(t->read_gbps > 0) || bytes == 0) return -1.0;
    const double eff = t->decode_eff[d] > 0 ? t->decode_eff[d] : 1.0;
    double us = bytes / (t->read_gbps * eff * 1e3);
    if (t->gflops[d] > 0) {
        const double compute = 6.0 * m * hidden * inter / (t->gflops[d] * 1e3);
        us = compute > us ? compute : us;
    }
    return t->overhead_us + us;
}

double moe_cost_us(const moe_cost_table *t, uint32_t hidden, uint32_t inter, moe_dtype d, uint32_t m) {
    if (!t) return -1.0;
    if (m == 0) return 0.0;
    /* The measured points of this shape and dtype nearest to m on each side. */
    const moe_cost_point *lo = NULL, *hi = NULL;
    for (uint32_t i = 0; i < t->n_points; i++) {
        const moe_cost_point *p = &t->points[i];
        if (p->hidden != hidden || p->inter != inter || p->dtype != d || !(p->us >= 0)) continue;
        if (p->m <= m && (!lo || p->m > lo->m)) lo = p;
        if (p->m >= m && (!hi || p->m < hi->m)) hi = p;
    }
    if (lo && hi) {
        if (hi->m == lo->m) return lo->us;
        const double f = (double)(m - lo->m) / (double)(hi->m - lo->m);
        return lo->us + f * (hi->us - lo->us);
    }
    if (hi) return hi->us;                              /* below the smallest measured m */
    if (lo) return lo->m ? lo->us * m / lo->m : lo->us; /* above the largest: compute-bound */
    return roofline(t, hidden, inter, d, m);
}

/* ---- cost queries ----------------------------------------------------- */

/* Cost points: each curve's means, in curve order. A query builds a cost
 * table over the points of one device on the stack. */
moe_status moe_profile_finish(moe_profile *p) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->n_curves; i++) n += p->curves[i].n_points;
    free(p->cost_points);
    p->cost_points = NULL, p->n_cost_points = 0;
    if (!n) return MOE_OK;
    if (!(p->cost_points = malloc(n * sizeof *p->cost_points)))
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_profile_finish: allocation failed");
    for (uint32_t i = 0; i < p->n_curves; i++) {
        const moe_curve *c = &p->curves[i];
        for (uint32_t j = 0; j < c->n_points; j++)
            p->cost_points[p->n_cost_points++] =
                (moe_cost_point){c->hidden, c->inter, c->dtype, c->points[j].m, moe_stat_mean(&c->points[j].us)};
    }
    return MOE_OK;
}

/* The cost table of one device: the points of its curves (contiguous
 * runs of cost_points, one per curve, scanned by moe_cost_us), and a
 * roofline from the device's own measurements for shapes not measured. */
static double device_cost(const moe_profile *p, int32_t gpu, uint32_t node, uint32_t hidden, uint32_t inter,
                          moe_dtype t, uint32_t m) {
    if (!p || !expert_bytes(hidden, inter, t)) return -1.0;
    if (m == 0) return 0.0;
    /* A measured curve of this shape answers directly. */
    uint32_t off = 0;
    for (uint32_t i = 0; i < p->n_curves; i++) {
        const moe_curve *c = &p->curves[i];
        if (c->gpu == gpu && (gpu >= 0 || c->node == node) && c->hidden == hidden && c->inter == inter &&
            c->dtype == t && c->n_points && off + c->n_points <= p->n_cost_points) {
            const moe_cost_table tab = {.points = p->cost_points + off, .n_points = c->n_points};
            return moe_cost_us(&tab, hidden, inter, t, m);
        }
        off += c->n_points;
    }
    /* Otherwise the roofline, with this device's rates: decode efficiency
     * from its smallest-m points, compute rate from its largest. */
    moe_cost_table tab = {0};
    if (gpu < 0 && node < MOE_PROFILE_MAX_NODES) tab.read_gbps = moe_stat_mean(&p->read_gbps[node][node]);
    uint32_t best_small[MOE_DTYPE_COUNT_] = {0}, best_large[MOE_DTYPE_COUNT_] = {0};
    for (uint32_t i = 0; i < p->n_curves; i++) {
        const moe_curve *c = &p->curves[i];
        if (c->gpu != gpu || (gpu < 0 && c->node != node) || !c->n_points) continue;
        const moe_curve_point *lo = &c->points[0], *hi = &c->points[c->n_points - 1];
        const double bytes = expert_bytes(c->hidden, c->inter, c->dtype);
        const double ulo = moe_stat_mean(&lo->us), uhi = moe_stat_mean(&hi->us);
        if (lo->m <= 4 && tab.read_gbps > 0 && ulo > 0 && (!best_small[c->dtype] || lo->m < best_small[c->dtype])) {
            best_small[c->dtype] = lo->m;
            tab.decode_eff[c->dtype] = bytes / (ulo * 1e3) / tab.read_gbps;
        }
        if (hi->m >= 64 && uhi > 0 && hi->m > best_large[c->dtype]) {
            best_large[c->dtype] = hi->m;
            tab.gflops[c->dtype] = 6.0 * hi->m * c->hidden * c->inter / (uhi * 1e3);
        }
    }
    return moe_cost_us(&tab, hidden, inter, t, m);
}

double moe_profile_cpu_us(const moe_profile *p, uint32_t hidden, uint32_t inter, moe_dtype t, uint32_t m,
                          uint32_t node) {
    return device_cost(p, -1, node, hidden, inter, t, m);
}

double moe_profile_gpu_us(const moe_profile *p, int32_t gpu, uint32_t hidden, uint32_t inter, moe_dtype t,
                          uint32_t m) {
    if (!p || gpu < 0 || (uint32_t)gpu >= p->n_gpus) return -1.0;
    return device_cost(p, gpu, 0, hidden, inter, t, m);
}

static double weight_bytes(uint32_t hidden, uint32_t inter, moe_dtype t) { return expert_bytes(hidden, inter, t); }

double moe_profile_gpu_run_us(const moe_profile *p, int32_t gpu, uint32_t hidden, uint32_t inter, moe_dtype t,
                              uint32_t m) {
    if (!p || gpu < 0 || (uint32_t)gpu >= p->n_gpus) return -1.0;
    if (!m) return 0.0;
    double k = moe_profile_gpu_us(p, gpu, hidden, inter, t, m);
    if (k < 0) {
        const double bytes = weight_bytes(hidden, inter, t);
        const moe_curve *best = NULL;
        double best_dist = 0;
        for (uint32_t i = 0; i < p->n_curves; i++) {
            const moe_curve *c = &p->curves[i];
            if (c->gpu != gpu || !c->n_points) continue;
            const double dist = fabs(log(weight_bytes(c->hidden, c->inter, c->dtype) / bytes));
            if (!best || dist < best_dist) best = c, best_dist = dist;
        }
        if (!best) return -1.0;
        const double ref = moe_profile_gpu_us(p, gpu, best->hidden, best->inter, best->dtype, m);
        if (ref < 0) return -1.0;
        k = ref * bytes / weight_bytes(best->hidden, best->inter, best->dtype);
    }
    const uint64_t act = (uint64_t)m * hidden * sizeof(float);
    const double in = moe_profile_copy_us(p, gpu, act, true), out = moe_profile_d2h_us(p, gpu, act);
    return in < 0 || out < 0 ? -1.0 : in + k + out;
}

/* Copy time from the link's rate at the nearest measured sizes: rates
 * interpolate linearly in log(size) between them and hold beyond them. */
static double link_us(const moe_link_curve *c, uint64_t bytes) {
    if (!c->n) return -1.0;
    if (bytes == 0) return 0.0;
    double gbps = moe_stat_mean(&c->gbps[c->n - 1]);
    if (bytes <= c->bytes[0]) gbps = moe_stat_mean(&c->gbps[0]);
    for (uint32_t i = 0; i + 1 < c->n; i++)
        if (bytes >= c->bytes[i] && bytes <= c->bytes[i + 1]) {
            const double f = log((double)bytes / (double)c->bytes[i]) / log((double)c->bytes[i + 1] / (double)c->bytes[i]);
            gbps = moe_stat_mean(&c->gbps[i]) + f * (moe_stat_mean(&c->gbps[i + 1]) - moe_stat_mean(&c->gbps[i]));
            break;
        }
    return gbps > 0 ? (double)bytes / (gbps * 1e3) : -1.0;
}

double moe_profile_copy_us(const moe_profile *p, int32_t gpu, uint64_t bytes, bool pinned) {
    if (!p || gpu < 0 || (uint32_t)gpu >= p->n_gpus) return -1.0;
    return link_us(pinned ? &p->gpus[gpu].h2d_pinned : &p->gpus[gpu].h2d_pageable, bytes);
}

double moe_profile_d2h_us(const moe_profile *p, int32_t gpu, uint64_t bytes) {
    if (!p || gpu < 0 || (uint32_t)gpu >= p->n_gpus) return -1.0;
    return link_us(&p->gpus[gpu].d2h_pinned, bytes);
}
