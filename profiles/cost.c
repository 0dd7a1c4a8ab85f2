/* cost.c - see cost.h. */
#include "cost.h"

static double roofline(const moe_cost_table *t, uint32_t hidden, uint32_t inter, moe_dtype d, uint32_t m) {
    if (!(t->read_gbps > 0) || moe_dtype_size(d) == 0) return -1.0;
    const double bytes = 3.0 * hidden * inter * (double)moe_dtype_size(d);
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
