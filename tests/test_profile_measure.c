/* test_profile_measure.c - the profiler on this machine, checked on what
 * does not depend on timing: the profile it writes is whole, valid, round-
 * trips, and matches this host. How well its figures predict the engine is
 * a measurement, not a test: `moe-bench profile` reports it (see
 * docs/benchmarks.md). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>

#include "profile.h"
#include "profiler.h"
#include "util.h"

static char *text_of(const moe_profile *p) {
    const size_t n = moe_profile_format(p, NULL, 0);
    char *t = malloc(n + 1);
    moe_profile_format(p, t, n + 1);
    return t;
}

/* A quick profile of one small shape at three token counts: it matches
 * this host; it has a bandwidth figure and one CPU curve with exactly the
 * asked points, each sampled at least twice with positive times; its text
 * parses back to the same text; the cost query answers at a measured and
 * at an interpolated M with a positive figure lying between its
 * neighbours' (the curve is interpolated, not extrapolated wildly). */
static void quick_profile_is_whole_and_round_trips(void) {
    const moe_profile_shape sh = {2048, 1408, MOE_DTYPE_BF16};
    const uint32_t ms[] = {1, 8, 32};
    moe_profile p, here;
    moe_profile_init(&p), moe_profile_init(&here);
    const moe_profiler_opts o = {.quick = true, .shapes = &sh, .n_shapes = 1, .ms = ms, .n_ms = 3,
                                 .rotate_bytes = (size_t)256 << 20};
    CHECK_OK(moe_profiler_run(&p, &o));
    CHECK_OK(moe_profiler_host(&here));
    char why[256];
    CHECK(moe_profile_matches(&p, &here, why, sizeof why));
    CHECK(p.read_gbps[0][0].n >= 2 && moe_stat_mean(&p.read_gbps[0][0]) > 0.1);
    CHECK(p.n_curves >= 1);
    const moe_curve *c = &p.curves[0];
    CHECK(c->gpu == -1 && c->hidden == 2048 && c->inter == 1408 && c->dtype == MOE_DTYPE_BF16);
    CHECK(c->n_points == 3);
    for (uint32_t j = 0; j < c->n_points && j < 3; j++) {
        CHECK(c->points[j].m == ms[j]);
        CHECK(c->points[j].us.n >= 2 && moe_stat_mean(&c->points[j].us) > 0);
    }
    char *t = text_of(&p);
    moe_profile q;
    moe_profile_init(&q);
    CHECK_OK(moe_profile_parse(&q, t, strlen(t), "measured"));
    char *t2 = text_of(&q);
    CHECK(strcmp(t, t2) == 0);
    free(t), free(t2);
    const double at8 = moe_profile_cpu_us(&q, 2048, 1408, MOE_DTYPE_BF16, 8, 0);
    const double at16 = moe_profile_cpu_us(&q, 2048, 1408, MOE_DTYPE_BF16, 16, 0);
    const double lo = fmin(moe_stat_mean(&c->points[1].us), moe_stat_mean(&c->points[2].us));
    const double hi = fmax(moe_stat_mean(&c->points[1].us), moe_stat_mean(&c->points[2].us));
    CHECK(fabs(at8 - moe_stat_mean(&c->points[1].us)) <= 1e-6 * at8);
    CHECK(at16 >= lo * (1 - 1e-9) && at16 <= hi * (1 + 1e-9));
    moe_profile_clear(&p), moe_profile_clear(&q), moe_profile_clear(&here);
}

int main(int argc, char **argv) {
    static const test_case cases[] = {TEST_CASE(quick_profile_is_whole_and_round_trips)};
    return run_tests("profile_measure", cases, 1, argc, argv);
}
