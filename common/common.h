/* common.h - the bottom layer: helpers every other layer may use (errors,
 * logging, dtype conversion, timing, deterministic random numbers). Nothing
 * here calls into any other folder. */
#ifndef MOE_COMMON_H
#define MOE_COMMON_H

#include "moerun.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MOE_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MOE_PRINTF(a, b)
#endif

/* ---- errors ---- */

/* Records `fmt` as this thread's last error and returns `s`, so that a
 * failing path reads `return moe_fail(MOE_ERR_INVALID_ARG, "...", ...)`. */
moe_status moe_fail(moe_status s, const char *fmt, ...) MOE_PRINTF(2, 3);

/* The parsers' form of moe_fail: "file:line: message", so every reader of
 * a text file (profiles, traces, JSON, configs, tokenizers) reports where
 * its input is wrong the same way. */
moe_status moe_fail_at(moe_status s, const char *file, unsigned long long line, const char *fmt, ...)
    MOE_PRINTF(4, 5);

/* ---- logging ---- */

typedef struct moe_logger {
    moe_log_fn fn; /* NULL = stderr */
    void *user;
    moe_log_level level;
} moe_logger;

void moe_log(const moe_logger *lg, moe_log_level level, const char *fmt, ...) MOE_PRINTF(3, 4);

/* ---- handles ---- */

/* Each handle struct starts with a magic word so that a pointer of the wrong
 * kind (or a zeroed one) is refused instead of used. */
enum {
    MOE_MAGIC_MODEL = 0x4d4f444cu,    /* "MODL" */
    MOE_MAGIC_RUNTIME = 0x5254494du,  /* "RTIM" */
    MOE_MAGIC_TOPOLOGY = 0x544f504fu, /* "TOPO" */
};

/* ---- checked arithmetic ---- */

/* a*b into *out; false on overflow. */
static inline bool moe_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

/* ---- dtypes ---- */

static inline float moe_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even; NaN stays NaN (quiet). */
static inline uint16_t moe_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float moe_f16_to_f32(uint16_t h);
uint16_t moe_f32_to_f16(float f);

/* Element i of a weight array of dtype t, as f32. */
static inline float moe_load_f32(const void *p, moe_dtype t, size_t i) {
    switch (t) {
    case MOE_DTYPE_F32: return ((const float *)p)[i];
    case MOE_DTYPE_BF16: return moe_bf16_to_f32(((const uint16_t *)p)[i]);
    case MOE_DTYPE_F16: return moe_f16_to_f32(((const uint16_t *)p)[i]);
    default: return 0.0f;
    }
}

/* ---- time ---- */

/* Monotonic seconds. */
double moe_now(void);

/* ---- deterministic random numbers (splitmix64) ---- */

typedef struct moe_rng {
    uint64_t s;
} moe_rng;

static inline uint64_t moe_rng_next(moe_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline float moe_rng_uniform(moe_rng *r) {
    return (float)(moe_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

/* Uniform in [lo, hi). */
static inline float moe_rng_range(moe_rng *r, float lo, float hi) {
    return lo + (hi - lo) * moe_rng_uniform(r);
}

/* Uniform integer in [0, n), n > 0. */
static inline uint32_t moe_rng_below(moe_rng *r, uint32_t n) {
    return (uint32_t)(((moe_rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

#ifdef __cplusplus
}
#endif

#endif /* MOE_COMMON_H */
