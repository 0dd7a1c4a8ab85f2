/* test_shared.c - a host program that sees only include/moerun.h and links
 * the shared library: one layer of two f32 experts, checked by hand. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "moerun.h"

static int fails;
#define EXPECT(c)                                                      \
    do {                                                               \
        if (!(c)) {                                                    \
            fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #c); \
            fails++;                                                   \
        }                                                              \
    } while (0)

int main(void) {
    EXPECT(moe_api_version() == MOE_API_VERSION);
    EXPECT(strcmp(moe_status_str(MOE_ERR_PARSE), "malformed input") == 0);
    /* API 6: the block formats' sizes are exported. */
    EXPECT(moe_dtype_row_bytes(MOE_DTYPE_Q4_K, 512) == 288 && moe_dtype_is_block(MOE_DTYPE_Q4_K));
    EXPECT(moe_dtype_block(MOE_DTYPE_Q8_0) == 32 && moe_dtype_block_bytes(MOE_DTYPE_Q8_0) == 34);
    EXPECT(moe_dtype_size(MOE_DTYPE_Q8_0) == 0 && strcmp(moe_dtype_name(MOE_DTYPE_MXFP4), "mxfp4") == 0);
    {   /* and the quantizer and dequantizer: q8_0 of 0..31 / 31 comes back within a code */
        float x[32], y[32];
        unsigned char q[34];
        for (int i = 0; i < 32; i++) x[i] = (float)i / 31.0f;
        EXPECT(moe_quantize(MOE_DTYPE_Q8_0, x, q, 32) == MOE_OK && moe_dequantize(MOE_DTYPE_Q8_0, q, y, 32) == MOE_OK);
        for (int i = 0; i < 32; i++) EXPECT(fabsf(y[i] - x[i]) <= 1.0f / 254.0f);
        EXPECT(moe_quantize(MOE_DTYPE_Q8_0, x, q, 31) == MOE_ERR_INVALID_ARG);
    }
    /* hidden 2, inter 1. Expert 0: gate [1,0], up [1,0], down [[1],[0]]:
     * y = [silu(x0)*x0, 0]. Expert 1: gate [0,1], up [0,2], down [[0],[1]]:
     * y = [0, silu(x1)*2*x1]. */
    static const float g0[2] = {1, 0}, u0[2] = {1, 0}, d0[2] = {1, 0};
    static const float g1[2] = {0, 1}, u1[2] = {0, 2}, d1[2] = {0, 1};
    moe_model_t *m = NULL;
    moe_runtime_t *rt = NULL;
    EXPECT(moe_model_create(&m, 1) == MOE_OK);
    moe_layer_desc d = moe_layer_desc_init(2, 2, 1, MOE_DTYPE_F32);
    EXPECT(moe_model_set_layer(m, 0, &d) == MOE_OK);
    moe_expert_weights e0 = {.gate = g0, .up = u0, .down = d0}, e1 = {.gate = g1, .up = u1, .down = d1};
    EXPECT(moe_model_set_expert(m, 0, 0, &e0) == MOE_OK);
    EXPECT(moe_model_set_expert(m, 0, 1, &e1) == MOE_OK);
    moe_runtime_params p = moe_runtime_default_params();
    p.n_threads = 1;
    EXPECT(moe_runtime_create(&rt, m, &p) == MOE_OK);
    moe_model_free(&m);
    const float x[2] = {1.0f, -2.0f};
    const int32_t ids[2] = {1, 0};
    const float w[2] = {0.25f, 0.75f};
    float y[2];
    EXPECT(moe_layer_forward(rt, 0, 1, x, 2, ids, w, y) == MOE_OK);
    const double s1 = 1.0 / (1.0 + exp(-1.0)), s2 = -2.0 / (1.0 + exp(2.0));
    EXPECT(fabs(y[0] - 0.75 * s1 * 1.0) < 1e-6);
    EXPECT(fabs(y[1] - 0.25 * s2 * 2.0 * -2.0) < 1e-6);
    moe_runtime_free(&rt);
    printf("shared: %d passed, %d failed\n", fails ? 0 : 1, fails ? 1 : 0);
    return fails != 0;
}
