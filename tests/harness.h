/* harness.h - a minimal test harness: register cases in a table, check with
 * CHECK macros (a failed check reports file:line and carries on), and
 * finish with a "N passed, N failed" line. A whole program that cannot run
 * here (no GPU, say) exits with TEST_SKIP (77), which CTest reports as
 * skipped. */
#ifndef MOE_TEST_HARNESS_H
#define MOE_TEST_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_SKIP 77

static int harness_failures; /* failed checks in the running case */

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            harness_failures++;                                                     \
        }                                                                           \
    } while (0)

#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "%s:%d: check failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, #a, \
                    #b, a_, b_);                                                                   \
            harness_failures++;                                                                    \
        }                                                                                          \
    } while (0)

/* expr must return status `want`; prints the last-error text if not. */
#define CHECK_STATUS(expr, want)                                                                 \
    do {                                                                                         \
        moe_status s_ = (expr);                                                                  \
        if (s_ != (want)) {                                                                      \
            fprintf(stderr, "%s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, #expr, \
                    moe_status_str(s_), moe_last_error(), moe_status_str(want));                 \
            harness_failures++;                                                                  \
        }                                                                                        \
    } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, MOE_OK)

/* The last error message must contain `needle`. */
#define CHECK_ERROR_MENTIONS(needle)                                                         \
    do {                                                                                     \
        if (!strstr(moe_last_error(), (needle))) {                                           \
            fprintf(stderr, "%s:%d: last error \"%s\" does not mention \"%s\"\n", __FILE__, \
                    __LINE__, moe_last_error(), (needle));                                   \
            harness_failures++;                                                              \
        }                                                                                    \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                     \
    do {                                                                                          \
        double a_ = (double)(a), b_ = (double)(b);                                                \
        if (!(fabs(a_ - b_) <= (tol))) {                                                          \
            fprintf(stderr, "%s:%d: check failed: |%s - %s| <= %g (%.9g vs %.9g)\n", __FILE__, __LINE__, \
                    #a, #b, (double)(tol), a_, b_);                                               \
            harness_failures++;                                                                   \
        }                                                                                         \
    } while (0)

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

#define TEST_CASE(f) {#f, f}

/* Runs every case (or only those named on the command line). */
static inline int run_tests(const char *suite, const test_case *cases, size_t n, int argc, char **argv) {
    int passed = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (argc > 1) {
            int wanted = 0;
            for (int a = 1; a < argc; a++) wanted |= strcmp(argv[a], cases[i].name) == 0;
            if (!wanted) continue;
        }
        harness_failures = 0;
        cases[i].fn();
        if (harness_failures) {
            failed++;
            printf("FAIL %s.%s\n", suite, cases[i].name);
        } else {
            passed++;
            printf("ok   %s.%s\n", suite, cases[i].name);
        }
    }
    printf("%s: %d passed, %d failed\n", suite, passed, failed);
    return failed ? 1 : 0;
}

#define TEST_MAIN(suite, ...)                                                          \
    int main(int argc, char **argv) {                                                  \
        static const test_case cases_[] = {__VA_ARGS__};                               \
        return run_tests(suite, cases_, sizeof cases_ / sizeof cases_[0], argc, argv); \
    }

#endif
