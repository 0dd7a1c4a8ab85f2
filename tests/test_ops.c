/* test_ops.c - the model's dense operations and the sampler against plain
 * double-precision loops: matrix products in every file dtype (GGUF's
 * block formats included, on the plain loop and on the engine), RMSNorm, rotary embeddings (both layouts, YaRN's
 * frequencies worked out by hand), softmax; greedy, top-k, top-p,
 * temperature and repetition penalty. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>

#include "ops.h"
#include "sample.h"
#include "util.h"

static void fill(float *x, size_t n, moe_rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = moe_rng_range(r, -1, 1);
}

/* W in `type` from f32 values w (block formats: quantized with
 * moe_quantize); wq receives the values as the type holds them. */
static void *encode(moe_dtype type, const float *w, size_t rows, size_t cols, float *wq) {
    uint64_t bytes = 0;
    CHECK(moe_tensor_bytes(type, rows * cols, cols, &bytes));
    uint8_t *p = malloc(bytes);
    for (size_t i = 0; i < rows * cols; i++) {
        switch (type) {
        case MOE_DTYPE_F32: ((float *)p)[i] = wq[i] = w[i]; break;
        case MOE_DTYPE_BF16: wq[i] = moe_bf16_to_f32(((uint16_t *)p)[i] = moe_f32_to_bf16(w[i])); break;
        case MOE_DTYPE_F16: wq[i] = moe_f16_to_f32(((uint16_t *)p)[i] = moe_f32_to_f16(w[i])); break;
        default: break;
        }
    }
    if (moe_dtype_is_block(type)) {
        CHECK_OK(moe_quantize(type, w, p, rows * cols));
        CHECK_OK(moe_dequantize(type, p, wq, rows * cols));
    }
    return p;
}

/* Every file dtype (int8 is no file's), on the plain loop (no runtime)
 * against the dequantized weights in double; then on a runtime's engine
 * (moe_dense_matmul), whose block formats quantize the activations to
 * int8 blocks: within that rounding, sum |w| * max|x| / 254 per output. */
static void matmul_every_type(void) {
    moe_rng r = {7};
    static const uint32_t shapes[][3] = {{1, 1, 32}, {3, 5, 64}, {17, 4, 96}, {64, 1, 160}, {33, 9, 32},
                                         {5, 3, 256}, {9, 6, 512}};
    moe_model_t *model = NULL;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_model_create(&model, 1));
    moe_layer_desc d = moe_layer_desc_init(1, 32, 32, MOE_DTYPE_F32);
    CHECK_OK(moe_model_set_layer(model, 0, &d));
    static float zero[32 * 32];
    CHECK_OK(moe_model_set_expert(model, 0, 0, &(moe_expert_weights){zero, zero, zero, NULL, NULL, NULL}));
    moe_runtime_params rp = moe_runtime_default_params();
    rp.device = MOE_DEVICE_CPU;
    rp.profile_path = "";
    rp.n_threads = 2;
    CHECK_OK(moe_runtime_create(&rt, model, &rp));
    for (int type = 0; type < MOE_DTYPE_COUNT_; type++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            const uint32_t rows = shapes[k][0], n = shapes[k][1], cols = shapes[k][2];
            if (type == MOE_DTYPE_I8 || cols % moe_dtype_block((moe_dtype)type)) continue;
            float *w = malloc((size_t)rows * cols * 4), *wq = malloc((size_t)rows * cols * 4);
            float *x = malloc((size_t)n * cols * 4), *y = malloc((size_t)n * rows * 4), *bias = malloc(rows * 4);
            fill(w, (size_t)rows * cols, &r);
            fill(x, (size_t)n * cols, &r);
            fill(bias, rows, &r);
            void *p = encode((moe_dtype)type, w, rows, cols, wq);
            const moe_mat m = {(moe_dtype)type, p, rows, cols};
            for (int engine = 0; engine < 2; engine++) {
                CHECK_OK(moe_matmul(engine ? rt : NULL, &m, x, n, k % 2 ? bias : NULL, y));
                double worst = 0;
                for (uint32_t t = 0; t < n; t++) {
                    double amax = 0;
                    for (uint32_t c = 0; c < cols; c++) amax = fmax(amax, fabs(x[(size_t)t * cols + c]));
                    for (uint32_t o = 0; o < rows; o++) {
                        double want = k % 2 ? bias[o] : 0, wabs = 0;
                        for (uint32_t c = 0; c < cols; c++) {
                            want += (double)wq[(size_t)o * cols + c] * x[(size_t)t * cols + c];
                            wabs += fabs(wq[(size_t)o * cols + c]);
                        }
                        /* bf16 rounds activations on the engine (AVX512-BF16), as the block formats quantize them */
                        const double tol = engine && type != MOE_DTYPE_F32 && type != MOE_DTYPE_F16
                                               ? wabs * amax / (type == MOE_DTYPE_BF16 ? 256 : 254) + 1e-4
                                               : 1e-4;
                        worst = fmax(worst, fabs(want - y[(size_t)t * rows + o]) / tol);
                    }
                }
                if (worst > 1) fprintf(stderr, "  %s %ux%u n=%u %s: off by %g of the tolerance\n",
                                       moe_dtype_name((moe_dtype)type), rows, cols, n, engine ? "engine" : "plain", worst);
                CHECK(worst <= 1);
            }
            free(p), free(w), free(wq), free(x), free(y), free(bias);
        }
    moe_runtime_free(&rt);
    moe_model_free(&model);
}

static void rmsnorm_and_softmax(void) {
    float x[37], w[37], y[37];
    moe_rng r = {3};
    fill(x, 37, &r);
    fill(w, 37, &r);
    moe_rmsnorm(x, w, 37, 1e-5f, y);
    double ss = 0;
    for (int i = 0; i < 37; i++) ss += (double)x[i] * x[i];
    const double inv = 1 / sqrt(ss / 37 + 1e-5);
    for (int i = 0; i < 37; i++) CHECK_NEAR(y[i], w[i] * x[i] * inv, 1e-6);
    float s[5] = {1000, 1001, 999, -INFINITY, 1000};
    moe_softmax(s, 5);
    const double e = exp(1), z = 1 + e + 1 / e + 1;
    CHECK_NEAR(s[0], 1 / z, 1e-6);
    CHECK_NEAR(s[1], e / z, 1e-6);
    CHECK_NEAR(s[3], 0, 0);
}

/* Rotating q and k by their positions leaves q.k a function of the
 * distance only, and each pair's length unchanged (mscale 1). */
static void rope_layouts(void) {
    for (int inter = 0; inter < 2; inter++) {
        moe_rope rope;
        moe_rope_init(&rope, 16, 10000, inter);
        moe_rng r = {11};
        float q[16], k[16];
        fill(q, 16, &r);
        fill(k, 16, &r);
        float q1[16], k1[16], q2[16], k2[16];
        memcpy(q1, q, sizeof q), memcpy(k1, k, sizeof k), memcpy(q2, q, sizeof q), memcpy(k2, k, sizeof k);
        moe_rope_apply(&rope, q1, 1, 16, 7);
        moe_rope_apply(&rope, k1, 1, 16, 3);
        moe_rope_apply(&rope, q2, 1, 16, 104);
        moe_rope_apply(&rope, k2, 1, 16, 100);
        double d1 = 0, d2 = 0, n0 = 0, n1 = 0;
        for (int i = 0; i < 16; i++) d1 += q1[i] * k1[i], d2 += q2[i] * k2[i], n0 += q[i] * q[i], n1 += q1[i] * q1[i];
        CHECK_NEAR(d1, d2, 1e-4);
        CHECK_NEAR(n0, n1, 1e-5);
        /* Position 0 is the identity; the pair layout decides which
         * elements move together. */
        float z[16];
        memcpy(z, q, sizeof z);
        moe_rope_apply(&rope, z, 1, 16, 0);
        for (int i = 0; i < 16; i++) CHECK_NEAR(z[i], q[i], 0);
        float e[16] = {0};
        e[0] = 1;
        moe_rope_apply(&rope, e, 1, 16, 1);
        CHECK_NEAR(e[0], cos(1.0), 1e-6);
        CHECK_NEAR(e[inter ? 1 : 8], sin(1.0), 1e-6);
    }
}

/* DeepSeek-V2-Lite's YaRN: dim 64, base 10000, factor 40, original 4096,
 * beta 32/1, mscale 0.707 both. The correction range is dims [10, 23]
 * (floor 10.2, ceil 22.3 -> 23), so frequency 5 is extrapolated (kept),
 * 30 interpolated (divided by 40), 16 blended at 6/13; mscale is 1. */
static void yarn_frequencies(void) {
    moe_rope r;
    moe_rope_init_yarn(&r, 64, 10000, true, 40, 4096, 32, 1, 0.707, 0.707);
    const double f5 = pow(10000, -10.0 / 64), f30 = pow(10000, -60.0 / 64), f16 = pow(10000, -32.0 / 64);
    CHECK_NEAR(r.inv_freq[5], f5, 1e-7);
    CHECK_NEAR(r.inv_freq[30], f30 / 40, 1e-9);
    const double ramp = (16 - 10) / 13.0;
    CHECK_NEAR(r.inv_freq[16], f16 / 40 * ramp + f16 * (1 - ramp), 1e-8);
    CHECK_NEAR(r.mscale, 1, 1e-7);
    moe_rope_init_yarn(&r, 64, 10000, true, 40, 4096, 32, 1, 1, 0);
    CHECK_NEAR(r.mscale, 0.1 * log(40) + 1, 1e-6);
    CHECK_NEAR(moe_yarn_mscale(1, 5), 1, 0);
}

static void sampler_rules(void) {
    enum { V = 6 };
    const float logits[V] = {1.0f, 3.0f, 2.5f, -1.0f, NAN, 2.9f};
    moe_sampler s;
    moe_sampler_params p = moe_sampler_default_params();
    CHECK_OK(moe_sampler_init(&s, &p, V));
    CHECK_EQ(moe_sample(&s, logits, NULL, 0), 1);
    /* A penalty of 2 over history {1}: 3.0 -> 1.5, so 5 wins. */
    moe_sampler_free(&s);
    p.repeat_penalty = 2;
    CHECK_OK(moe_sampler_init(&s, &p, V));
    const int32_t hist[3] = {1, 1, 9};
    CHECK_EQ(moe_sample(&s, logits, hist, 3), 5);
    moe_sampler_free(&s);
    /* top-k 1 and a tiny top-p are greedy whatever the temperature. */
    p = moe_sampler_default_params();
    p.temperature = 5, p.top_k = 1, p.seed = 1;
    CHECK_OK(moe_sampler_init(&s, &p, V));
    for (int i = 0; i < 50; i++) CHECK_EQ(moe_sample(&s, logits, NULL, 0), 1);
    moe_sampler_free(&s);
    p.top_k = 0, p.top_p = 0.01f;
    CHECK_OK(moe_sampler_init(&s, &p, V));
    for (int i = 0; i < 50; i++) CHECK_EQ(moe_sample(&s, logits, NULL, 0), 1);
    moe_sampler_free(&s);
    /* Temperature 1 over {1, 5, 2} (top-k 3): frequencies follow softmax
     * within a loose bound for 20000 draws of a fixed seed; NaN never. */
    p = moe_sampler_default_params();
    p.temperature = 1, p.top_k = 3, p.seed = 5;
    CHECK_OK(moe_sampler_init(&s, &p, V));
    int count[V] = {0};
    for (int i = 0; i < 20000; i++) count[moe_sample(&s, logits, NULL, 0)]++;
    const double z = exp(3.0) + exp(2.9) + exp(2.5);
    CHECK_NEAR(count[1] / 20000.0, exp(3.0) / z, 0.02);
    CHECK_NEAR(count[5] / 20000.0, exp(2.9) / z, 0.02);
    CHECK_NEAR(count[2] / 20000.0, exp(2.5) / z, 0.02);
    CHECK_EQ(count[0] + count[3] + count[4], 0);
    /* The same seed gives the same draws. */
    moe_sampler t;
    CHECK_OK(moe_sampler_init(&t, &p, V));
    moe_sampler_free(&s);
    CHECK_OK(moe_sampler_init(&s, &p, V));
    for (int i = 0; i < 100; i++) CHECK_EQ(moe_sample(&s, logits, NULL, 0), moe_sample(&t, logits, NULL, 0));
    moe_sampler_free(&s);
    moe_sampler_free(&t);
    p.top_p = 0;
    CHECK_STATUS(moe_sampler_init(&s, &p, V), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("top-p");
}

int main(int argc, char **argv) {
    static const test_case cases[] = {
        TEST_CASE(matmul_every_type), TEST_CASE(rmsnorm_and_softmax), TEST_CASE(rope_layouts),
        TEST_CASE(yarn_frequencies),  TEST_CASE(sampler_rules),
    };
    return run_tests("ops", cases, sizeof cases / sizeof cases[0], argc, argv);
}
