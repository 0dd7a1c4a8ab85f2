/* test_api.c - status strings, versions, the CPU kernel names, defaults, dtypes and conversions,
 * the per-thread last error, and the log callback. */
#include <pthread.h>

#include "util.h"

static void status_strings(void) {
    CHECK(strcmp(moe_status_str(MOE_OK), "success") == 0);
    for (int a = 0; a < MOE_STATUS_COUNT_; a++) {
        const char *s = moe_status_str((moe_status)a);
        CHECK(s && s[0] && strcmp(s, "unknown status") != 0);
        for (int b = 0; b < a; b++) CHECK(strcmp(s, moe_status_str((moe_status)b)) != 0);
    }
    CHECK(strcmp(moe_status_str(MOE_STATUS_COUNT_), "unknown status") == 0);
    CHECK(strcmp(moe_status_str((moe_status)-1), "unknown status") == 0);
    CHECK(strcmp(moe_status_str((moe_status)12345), "unknown status") == 0);
}

static void versions(void) {
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", MOE_VERSION_MAJOR, MOE_VERSION_MINOR, MOE_VERSION_PATCH);
    CHECK(strcmp(moe_version(), want) == 0);
    CHECK_EQ(moe_api_version(), MOE_API_VERSION);
    CHECK(strstr(moe_build_info(), want) != NULL);
    CHECK(strstr(moe_build_info(), "hwloc") != NULL);
    CHECK(strstr(moe_build_info(), "oneDNN") != NULL);
}

/* The decode kernel per dtype: the plain C one, or an AVX-512 one where the CPU has it. */
static void cpu_kernels(void) {
    moe_topology_t *t = NULL;
    moe_topology_info ti = {0};
    CHECK_EQ(moe_topology_detect(&t), MOE_OK);
    CHECK_EQ(moe_topology_get_info(t, &ti), MOE_OK);
    moe_topology_free(&t);
    for (int d = 0; d < MOE_DTYPE_COUNT_; d++) {
        if (moe_dtype_is_block((moe_dtype)d)) continue; /* the engine does not compute block formats yet */
        const char *k = moe_cpu_kernel((moe_dtype)d);
        CHECK(strcmp(k, "c") == 0 || strncmp(k, "avx512", 6) == 0);
        CHECK(strcmp(k, "c") == 0 || ti.has_avx512f);
    }
    CHECK(strcmp(moe_cpu_kernel(MOE_DTYPE_BF16), "avx512_bf16") != 0 || ti.has_avx512_bf16);
    CHECK(strcmp(moe_cpu_kernel(MOE_DTYPE_I8), "avx512_vnni") != 0 || ti.has_avx512_vnni);
    CHECK(strcmp(moe_cpu_kernel(MOE_DTYPE_COUNT_), "") == 0);
    CHECK(strcmp(moe_cpu_kernel((moe_dtype)-1), "") == 0);
}

static void default_params(void) {
    moe_runtime_params p = moe_runtime_default_params();
    CHECK_EQ(p.struct_size, sizeof p);
    CHECK_EQ(p.device, MOE_DEVICE_AUTO);
    CHECK(p.policy == NULL);
    CHECK_EQ(p.n_threads, 0);
    CHECK_EQ(p.gpu_budget_bytes, 0);
    CHECK_NEAR(p.gpu_budget_fraction, -1.0, 0.0); /* unset: the profile's [tuning], else 0.5 */
    CHECK(p.topology == NULL && p.log_fn == NULL && p.log_user == NULL);
    CHECK_EQ(p.log_level, MOE_LOG_WARN);
    moe_layer_desc d = moe_layer_desc_init(8, 64, 128, MOE_DTYPE_BF16);
    CHECK_EQ(d.struct_size, sizeof d);
    CHECK_EQ(d.n_experts, 8);
    CHECK_EQ(d.hidden, 64);
    CHECK_EQ(d.inter, 128);
    CHECK_EQ(d.weight_dtype, MOE_DTYPE_BF16);
}

static void names(void) {
    CHECK(strcmp(moe_dtype_name(MOE_DTYPE_F32), "f32") == 0);
    CHECK(strcmp(moe_dtype_name(MOE_DTYPE_BF16), "bf16") == 0);
    CHECK(strcmp(moe_dtype_name(MOE_DTYPE_F16), "f16") == 0);
    CHECK(strcmp(moe_dtype_name(MOE_DTYPE_COUNT_), "invalid") == 0);
    CHECK_EQ(moe_dtype_size(MOE_DTYPE_F32), 4);
    CHECK_EQ(moe_dtype_size(MOE_DTYPE_BF16), 2);
    CHECK_EQ(moe_dtype_size(MOE_DTYPE_F16), 2);
    CHECK_EQ(moe_dtype_size((moe_dtype)99), 0);
    CHECK(strcmp(moe_device_name(MOE_DEVICE_AUTO), "auto") == 0);
    CHECK(strcmp(moe_device_name(MOE_DEVICE_CPU), "cpu") == 0);
    CHECK(strcmp(moe_device_name(MOE_DEVICE_SIM), "sim") == 0);
    CHECK(strcmp(moe_device_name((moe_device_kind)99), "invalid") == 0);
    const char *const *p = moe_policy_names();
    int n = 0, cpu = 0, fiddler = 0;
    for (; p[n]; n++) {
        cpu |= strcmp(p[n], "static-cpu") == 0;
        fiddler |= strcmp(p[n], "fiddler") == 0;
    }
    CHECK(n >= 2 && cpu && fiddler);
}

static void bf16_conversion(void) {
    CHECK_EQ(moe_f32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ(moe_f32_to_bf16(-2.0f), 0xc000);
    CHECK(moe_bf16_to_f32(0x3f80) == 1.0f);
    /* Ties round to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7. */
    CHECK_EQ(moe_f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
    CHECK_EQ(moe_f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
    CHECK(isnan(moe_bf16_to_f32(moe_f32_to_bf16(NAN))));
    CHECK(isinf(moe_bf16_to_f32(moe_f32_to_bf16(INFINITY))));
    /* Every finite bf16 survives a round trip through f32. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float f = moe_bf16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        if (moe_f32_to_bf16(f) != h) {
            CHECK_EQ(moe_f32_to_bf16(f), h);
            break;
        }
    }
}

static void f16_conversion(void) {
    CHECK_EQ(moe_f32_to_f16(1.0f), 0x3c00);
    CHECK_EQ(moe_f32_to_f16(-2.0f), 0xc000);
    CHECK_EQ(moe_f32_to_f16(65504.0f), 0x7bff);
    CHECK_EQ(moe_f32_to_f16(1e6f), 0x7c00);               /* overflow to Inf */
    CHECK_EQ(moe_f32_to_f16(5.9604645e-8f), 0x0001);      /* smallest subnormal */
    CHECK_EQ(moe_f32_to_f16(1e-9f), 0x0000);              /* underflow to zero */
    CHECK(moe_f16_to_f32(0x0001) == 5.9604645e-8f);
    CHECK(isnan(moe_f16_to_f32(moe_f32_to_f16(NAN))));
    /* Every non-NaN f16, normal and subnormal, survives a round trip. */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        float f = moe_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        if (moe_f32_to_f16(f) != h) {
            CHECK_EQ(moe_f32_to_f16(f), h);
            break;
        }
    }
    /* Halfway between 1 and the next f16 (2^-10 apart) rounds to even. */
    CHECK_EQ(moe_f32_to_f16(1.0f + 1.0f / 2048), 0x3c00);
    CHECK_EQ(moe_f32_to_f16(1.0f + 3.0f / 2048), 0x3c02);
}

static void *fail_in_thread(void *arg) {
    (void)arg;
    moe_model_t *m;
    moe_model_create(&m, 0);
    return strstr(moe_last_error(), "n_layers = 0") ? (void *)1 : NULL;
}

static void last_error_is_per_thread(void) {
    moe_model_t *m;
    CHECK_STATUS(moe_model_create(&m, 99999), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("n_layers = 99999");
    pthread_t th;
    void *ok = NULL;
    CHECK(pthread_create(&th, NULL, fail_in_thread, NULL) == 0);
    pthread_join(th, &ok);
    CHECK(ok == (void *)1);
    CHECK_ERROR_MENTIONS("n_layers = 99999"); /* untouched by the other thread */
    /* Successful calls, a runtime's creation on this GPU-less host included,
     * leave it alone. */
    test_model t;
    test_model_make(&t, 1, 2, 4, 4, MOE_DTYPE_F32, 1);
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, t.model, NULL));
    float x[4] = {1, 2, 3, 4}, y[4];
    CHECK_OK(moe_layer_forward(rt, 0, 1, x, 1, (int32_t[]){1}, (float[]){1.0f}, y));
    /* A dense projection through the public API: W = [[1,0,0,0],[1,1,1,1]]. */
    const float w[8] = {1, 0, 0, 0, 1, 1, 1, 1};
    CHECK_OK(moe_dense_matmul(rt, w, MOE_DTYPE_F32, NULL, 2, 4, 1, x, y));
    CHECK(y[0] == 1 && y[1] == 10);
    moe_runtime_free(&rt);
    test_model_free(&t);
    CHECK_ERROR_MENTIONS("n_layers = 99999");
    CHECK_STATUS(moe_dense_matmul(NULL, w, MOE_DTYPE_F32, NULL, 2, 4, 1, x, y), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("not a runtime handle");
}

typedef struct log_capture {
    int n;
    char last[512];
    moe_log_level level;
} log_capture;

static void capture(moe_log_level level, const char *msg, void *user) {
    log_capture *c = user;
    c->n++;
    c->level = level;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

static void log_callback(void) {
    test_model t;
    test_model_make(&t, 1, 2, 4, 4, MOE_DTYPE_F32, 1);
    log_capture cap = {0};
    moe_runtime_params p = moe_runtime_default_params();
    p.log_fn = capture;
    p.log_user = &cap;
    p.log_level = MOE_LOG_INFO;
    p.n_threads = 1;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, t.model, &p));
    CHECK(cap.n >= 1);
    CHECK(strstr(cap.last, "device cpu") != NULL);
    CHECK(strchr(cap.last, '\n') == NULL);
    moe_runtime_free(&rt);
    /* At the default level (WARN) the same runtime logs nothing. */
    cap.n = 0;
    p.log_level = MOE_LOG_WARN;
    CHECK_OK(moe_runtime_create(&rt, t.model, &p));
    CHECK_EQ(cap.n, 0);
    moe_runtime_free(&rt);
    test_model_free(&t);
}

TEST_MAIN("api", TEST_CASE(status_strings), TEST_CASE(versions), TEST_CASE(cpu_kernels), TEST_CASE(default_params),
          TEST_CASE(names), TEST_CASE(bf16_conversion), TEST_CASE(f16_conversion),
          TEST_CASE(last_error_is_per_thread), TEST_CASE(log_callback))
