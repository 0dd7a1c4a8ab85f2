/* util.h - shared helpers for the tests: random models and routings. */
#ifndef MOE_TEST_UTIL_H
#define MOE_TEST_UTIL_H

#include "common.h"
#include "harness.h"

/* A model whose expert weights the test owns. */
typedef struct test_model {
    moe_model_t *model;
    void *weights; /* [layers, experts, 3, hidden*inter] */
    float *scales; /* int8 only: [layers, experts, inter + inter + hidden] */
    uint32_t n_layers, n_experts, hidden, inter;
    moe_dtype dtype;
} test_model;

static inline const void *test_weight(const test_model *t, uint32_t l, uint32_t e, uint32_t which) {
    size_t per = (size_t)t->hidden * t->inter * moe_dtype_size(t->dtype);
    return (const char *)t->weights + (((size_t)l * t->n_experts + e) * 3 + which) * per;
}

/* Per-row scales of matrix `which` (0 gate, 1 up, 2 down) of an int8
 * model; NULL for other dtypes. */
static inline const float *test_scale(const test_model *t, uint32_t l, uint32_t e, uint32_t which) {
    if (!t->scales) return NULL;
    const size_t per = 2 * (size_t)t->inter + t->hidden;
    return t->scales + ((size_t)l * t->n_experts + e) * per + which * (size_t)t->inter;
}

/* Random weights, uniform in +-1/sqrt(fan_in); int8 weights are random
 * codes with per-row scales of about the same range. */
static inline void test_model_make(test_model *t, uint32_t n_layers, uint32_t n_experts, uint32_t hidden,
                                   uint32_t inter, moe_dtype dtype, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->n_layers = n_layers, t->n_experts = n_experts, t->hidden = hidden, t->inter = inter, t->dtype = dtype;
    size_t per = (size_t)hidden * inter, n = (size_t)n_layers * n_experts * 3 * per;
    t->weights = malloc(n * moe_dtype_size(dtype));
    moe_rng r = {seed};
    for (size_t i = 0; i < n; i++) {
        float v = moe_rng_range(&r, -1.0f, 1.0f) / sqrtf((float)((i / per) % 3 == 2 ? inter : hidden));
        switch (dtype) {
        case MOE_DTYPE_F32: ((float *)t->weights)[i] = v; break;
        case MOE_DTYPE_BF16: ((uint16_t *)t->weights)[i] = moe_f32_to_bf16(v); break;
        case MOE_DTYPE_I8: ((int8_t *)t->weights)[i] = (int8_t)(int)moe_rng_range(&r, -127.0f, 127.0f); break;
        default: ((uint16_t *)t->weights)[i] = moe_f32_to_f16(v); break;
        }
    }
    if (dtype == MOE_DTYPE_I8) {
        const size_t per_e = 2 * (size_t)inter + hidden, ns = (size_t)n_layers * n_experts * per_e;
        t->scales = malloc(ns * sizeof *t->scales);
        for (size_t i = 0; i < ns; i++) {
            const float fan_in = (float)(i % per_e < 2 * (size_t)inter ? hidden : inter);
            t->scales[i] = moe_rng_range(&r, 0.5f, 1.5f) / (127.0f * sqrtf(fan_in));
        }
    }
    CHECK_OK(moe_model_create(&t->model, n_layers));
    moe_layer_desc d = moe_layer_desc_init(n_experts, hidden, inter, dtype);
    for (uint32_t l = 0; l < n_layers; l++) {
        CHECK_OK(moe_model_set_layer(t->model, l, &d));
        for (uint32_t e = 0; e < n_experts; e++) {
            moe_expert_weights w = {.gate = test_weight(t, l, e, 0), .up = test_weight(t, l, e, 1),
                                    .down = test_weight(t, l, e, 2), .gate_scale = test_scale(t, l, e, 0),
                                    .up_scale = test_scale(t, l, e, 1), .down_scale = test_scale(t, l, e, 2)};
            CHECK_OK(moe_model_set_expert(t->model, l, e, &w));
        }
    }
}

static inline void test_model_free(test_model *t) {
    moe_model_free(&t->model);
    free(t->weights);
    free(t->scales);
    t->weights = NULL;
    t->scales = NULL;
}

/* Distinct random expert ids per token and positive weights. */
static inline void test_routing(moe_rng *r, uint32_t n_tokens, uint32_t n_experts, uint32_t k, int32_t *ids,
                                float *w) {
    for (uint32_t t = 0; t < n_tokens; t++)
        for (uint32_t j = 0; j < k; j++) {
            int32_t e;
            bool dup;
            do {
                e = (int32_t)moe_rng_below(r, n_experts);
                dup = false;
                for (uint32_t q = 0; q < j; q++) dup |= ids[t * k + q] == e;
            } while (dup);
            ids[t * k + j] = e;
            w[t * k + j] = moe_rng_range(r, 0.05f, 1.0f);
        }
}

/* Normalised mean squared error of a against the reference b, as
 * llama.cpp's test-backend-ops measures backends against the CPU. */
static inline double test_nmse(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? num / den : num;
}

/* NMSE a fast path may have against the reference, per weight dtype, as
 * llama.cpp's test-backend-ops sets them: f32 and f16 keep f32 activations
 * (rounding only), bf16 rounds activations to bf16, int8 quantizes them
 * per token to 8 bits. */
static inline double test_tolerance(moe_dtype t) {
    switch (t) {
    case MOE_DTYPE_F32: case MOE_DTYPE_F16: case MOE_DTYPE_FP8_E4M3: return 1e-9; /* exact weights, f32 sums */
    case MOE_DTYPE_BF16: return 1e-4;
    default: return 3e-3;
    }
}

static inline void test_fill(moe_rng *r, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = moe_rng_range(r, -2.0f, 2.0f);
}

#endif
