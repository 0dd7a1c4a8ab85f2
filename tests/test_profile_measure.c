/* test_profile_measure.c - the profiler on this machine. A benchmark-style
 * check: it exits 77 (skipped) when the machine is too noisy to tell. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>

#include "profile.h"
#include "profiler.h"
#include "util.h"

static bool noisy;

static char *text_of(const moe_profile *p) {
    const size_t n = moe_profile_format(p, NULL, 0);
    char *t = malloc(n + 1);
    moe_profile_format(p, t, n + 1);
    return t;
}

/* The profiler on this machine: a quick profile of one small shape is
 * valid, round-trips, matches this host, and its curve predicts what the
 * engine then takes at a measured and at an interpolated M within 25%.
 * When the machine is too noisy to tell (the engine's mean time with a
 * relative standard error above 5%), the program reports itself skipped
 * (77), not passed. */
static void quick_profile_predicts_the_engine(void) {
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
    char *t = text_of(&p);
    moe_profile q;
    moe_profile_init(&q);
    CHECK_OK(moe_profile_parse(&q, t, strlen(t), "measured"));
    free(t);
    for (int i = 0; i < 2; i++) {
        const uint32_t m = i ? 16 : 8; /* measured, then interpolated */
        moe_stat s = {0};
        CHECK_OK(moe_profiler_sample_expert(&sh, m, 0, 0.02, 2.0, &s));
        const double got = moe_stat_mean(&s), want = moe_profile_cpu_us(&q, sh.hidden, sh.inter, sh.dtype, m, 0);
        /* The profile's own figures at the points around m. */
        double rse = moe_stat_rse(&s);
        const moe_curve *c = q.n_curves ? &q.curves[0] : NULL;
        for (uint32_t j = 0; c && j < c->n_points; j++) {
            const double r = moe_stat_rse(&c->points[j].us);
            if (r > rse && c->points[j].m <= 32) rse = r;
        }
        printf("  m %u: engine %.1f us (n %llu, sd %.0f%%), profile predicts %.1f us\n", m, got,
               (unsigned long long)s.n, 100 * moe_stat_sd(&s) / got, want);
        if (rse > 0.05) {
            printf("  too noisy to compare (a mean's own error is above 5%%)\n");
            noisy = true;
            continue;
        }
        CHECK(want > 0 && fabs(got - want) <= 0.25 * got);
    }
    moe_profile_clear(&p), moe_profile_clear(&q), moe_profile_clear(&here);
}

int main(int argc, char **argv) {
    static const test_case cases[] = {TEST_CASE(quick_profile_predicts_the_engine)};
    const int rc = run_tests("profile_measure", cases, 1, argc, argv);
    return rc == 0 && noisy ? TEST_SKIP : rc;
}
