/* test_lifetime.c - handles: create/free pairs, double frees, references
 * between runtimes and models, and refusal of bad arguments. Run under ASan
 * (make test-asan) this also proves there is no leak or use after free. */
#include "util.h"

static void model_create_rejects(void) {
    moe_model_t *m = (moe_model_t *)1;
    CHECK_STATUS(moe_model_create(NULL, 2), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_model_create(&m, 0), MOE_ERR_INVALID_ARG);
    CHECK(m == NULL); /* cleared on failure */
    CHECK_ERROR_MENTIONS("n_layers = 0");
    CHECK_STATUS(moe_model_create(&m, 5000), MOE_ERR_INVALID_ARG);
}

static void double_free_is_harmless(void) {
    moe_model_t *m = NULL;
    moe_model_free(NULL);
    moe_model_free(&m);
    CHECK_OK(moe_model_create(&m, 3));
    moe_model_free(&m);
    CHECK(m == NULL);
    moe_model_free(&m);
    moe_runtime_t *rt = NULL;
    moe_runtime_free(NULL);
    moe_runtime_free(&rt);
    moe_topology_t *topo = NULL;
    moe_topology_free(NULL);
    moe_topology_free(&topo);
}

static void layer_description_rules(void) {
    moe_model_t *m;
    CHECK_OK(moe_model_create(&m, 2));
    moe_layer_desc d = moe_layer_desc_init(4, 8, 16, MOE_DTYPE_F32);
    CHECK_STATUS(moe_model_set_layer(m, 2, &d), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("layer 2 out of range");
    CHECK_STATUS(moe_model_set_layer(m, 0, NULL), MOE_ERR_INVALID_ARG);
    moe_layer_desc bad = d;
    bad.struct_size = 0;
    CHECK_STATUS(moe_model_set_layer(m, 0, &bad), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("moe_layer_desc_init");
    bad = d, bad.n_experts = 0;
    CHECK_STATUS(moe_model_set_layer(m, 0, &bad), MOE_ERR_INVALID_ARG);
    bad = d, bad.hidden = 0;
    CHECK_STATUS(moe_model_set_layer(m, 0, &bad), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("shape 0x16");
    bad = d, bad.weight_dtype = (moe_dtype)42;
    CHECK_STATUS(moe_model_set_layer(m, 0, &bad), MOE_ERR_UNSUPPORTED);
    CHECK_OK(moe_model_set_layer(m, 0, &d));
    CHECK_STATUS(moe_model_set_layer(m, 0, &d), MOE_ERR_STATE);
    CHECK_ERROR_MENTIONS("already described");
    moe_layer_desc got;
    CHECK_OK(moe_model_get_layer(m, 0, &got));
    CHECK(got.n_experts == 4 && got.hidden == 8 && got.inter == 16 && got.weight_dtype == MOE_DTYPE_F32);
    CHECK_STATUS(moe_model_get_layer(m, 1, &got), MOE_ERR_STATE);
    CHECK_EQ(moe_model_n_layers(m), 2);
    CHECK_EQ(moe_model_expert_bytes(m), 4ull * 3 * 8 * 16 * 4);
    moe_model_free(&m);
}

static void expert_registration_rules(void) {
    static float w[3][16 * 8];
    moe_expert_weights ew = {.gate = w[0], .up = w[1], .down = w[2]};
    moe_model_t *m;
    CHECK_OK(moe_model_create(&m, 2));
    CHECK_STATUS(moe_model_set_expert(m, 0, 0, &ew), MOE_ERR_STATE); /* layer not described */
    moe_layer_desc d = moe_layer_desc_init(2, 8, 16, MOE_DTYPE_F32);
    CHECK_OK(moe_model_set_layer(m, 0, &d));
    CHECK_STATUS(moe_model_set_expert(m, 0, 2, &ew), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("expert 2 out of range");
    CHECK_STATUS(moe_model_set_expert(m, 0, 0, NULL), MOE_ERR_INVALID_ARG);
    moe_expert_weights nodown = {.gate = w[0], .up = w[1], .down = NULL};
    CHECK_STATUS(moe_model_set_expert(m, 0, 0, &nodown), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("down pointer is NULL");
    CHECK_OK(moe_model_set_expert(m, 0, 0, &ew));
    CHECK_STATUS(moe_model_set_expert(m, 0, 0, &ew), MOE_ERR_STATE);
    CHECK_ERROR_MENTIONS("already registered");

    /* A runtime needs every expert. */
    moe_runtime_t *rt = NULL;
    CHECK_STATUS(moe_runtime_create(&rt, m, NULL), MOE_ERR_STATE);
    CHECK_ERROR_MENTIONS("layer 0 expert 1 is not registered");
    CHECK_OK(moe_model_set_expert(m, 0, 1, &ew));
    CHECK_STATUS(moe_runtime_create(&rt, m, NULL), MOE_ERR_STATE);
    CHECK_ERROR_MENTIONS("layer 1 is not described");
    CHECK(rt == NULL);
    moe_model_free(&m);
}

static void runtime_keeps_model_alive(void) {
    test_model t;
    test_model_make(&t, 2, 4, 8, 12, MOE_DTYPE_BF16, 7);
    moe_runtime_params p = moe_runtime_default_params();
    p.n_threads = 2;
    moe_runtime_t *a = NULL, *b = NULL;
    CHECK_OK(moe_runtime_create(&a, t.model, &p));
    CHECK_OK(moe_runtime_create(&b, t.model, &p));
    /* Registration is closed while runtimes use the model. */
    moe_expert_weights ew = {.gate = t.weights, .up = t.weights, .down = t.weights};
    CHECK_STATUS(moe_model_set_expert(t.model, 0, 0, &ew), MOE_ERR_STATE);
    moe_model_free(&t.model); /* the caller's reference goes; runtimes keep theirs */
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
    int32_t ids[2] = {0, 3};
    float wts[2] = {0.5f, 0.5f};
    CHECK_OK(moe_layer_forward(a, 1, 1, x, 2, ids, wts, y));
    moe_runtime_free(&a);
    CHECK_OK(moe_layer_forward(b, 0, 1, x, 2, ids, wts, y));
    moe_runtime_free(&b);
    CHECK(a == NULL && b == NULL);
    test_model_free(&t);
}

static void runtime_create_rejects(void) {
    test_model t;
    test_model_make(&t, 1, 4, 8, 8, MOE_DTYPE_F32, 3);
    moe_runtime_t *rt = (moe_runtime_t *)1;
    moe_runtime_params p = moe_runtime_default_params();
    CHECK_STATUS(moe_runtime_create(NULL, t.model, &p), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_runtime_create(&rt, NULL, &p), MOE_ERR_INVALID_ARG);
    CHECK(rt == NULL);
    /* A handle of the wrong kind is refused, not used. */
    moe_topology_t *topo;
    CHECK_OK(moe_topology_synthetic(&topo, "pack:1 core:2 pu:1"));
    CHECK_STATUS(moe_runtime_create(&rt, (moe_model_t *)topo, &p), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("not a model handle");
    CHECK_STATUS(moe_layer_forward((moe_runtime_t *)topo, 0, 0, NULL, 1, NULL, NULL, NULL), MOE_ERR_INVALID_ARG);
    moe_topology_free(&topo);

    moe_runtime_params q = p;
    q.struct_size = 8;
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("struct_size");
    q = p, q.gpu_budget_fraction = 1.5;
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_INVALID_ARG);
    q = p, q.gpu_budget_fraction = NAN;
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_INVALID_ARG);
    q = p, q.device = (moe_device_kind)17;
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_INVALID_ARG);
    q = p, q.log_level = (moe_log_level)9;
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_INVALID_ARG);
    q = p, q.n_threads = 100000;
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_INVALID_ARG);
    q = p, q.policy = "belady-magic";
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("known: static-cpu, fiddler");
    CHECK(rt == NULL);

    /* NULL params are the defaults; "auto" resolves to a real policy. */
    CHECK_OK(moe_runtime_create(&rt, t.model, NULL));
    CHECK_EQ(moe_runtime_device(rt), MOE_DEVICE_CPU);
    CHECK(strcmp(moe_runtime_policy(rt), "static-cpu") == 0);
    moe_runtime_free(&rt);
    q = p, q.policy = "fiddler", q.device = MOE_DEVICE_CPU;
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("policy fiddler places experts on a GPU");
    CHECK(rt == NULL);
    q = p, q.policy = "oracle"; /* the simulator's bound, never a runtime policy */
    CHECK_STATUS(moe_runtime_create(&rt, t.model, &q), MOE_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("only in the simulator");
    CHECK(rt == NULL);
    q = p, q.policy = "static-cpu";
    CHECK_OK(moe_runtime_create(&rt, t.model, &q));
    CHECK(strcmp(moe_runtime_policy(rt), "static-cpu") == 0);
    moe_runtime_free(&rt);
    CHECK(moe_runtime_policy(NULL) == NULL);
    CHECK_EQ(moe_runtime_device(NULL), MOE_DEVICE_COUNT_);
    test_model_free(&t);
}

/* A caller built against a later header passes a larger struct: moerun reads
 * the fields it knows. One built before this version passes a smaller one:
 * refused, and nothing past struct_size is read (ASan would see it). */
static void params_struct_size_compatibility(void) {
    test_model t;
    test_model_make(&t, 1, 2, 4, 4, MOE_DTYPE_F32, 3);
    struct {
        moe_runtime_params p;
        char later_fields[32];
    } bigger;
    memset(&bigger, 0x5a, sizeof bigger);
    bigger.p = moe_runtime_default_params();
    bigger.p.struct_size = sizeof bigger;
    bigger.p.n_threads = 1;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, t.model, &bigger.p));
    moe_runtime_free(&rt);
    /* The first two fields only: struct_size and device. */
    uint32_t *smaller = malloc(2 * sizeof *smaller);
    smaller[0] = 2 * sizeof *smaller;
    smaller[1] = MOE_DEVICE_CPU;
    CHECK_STATUS(moe_runtime_create(&rt, t.model, (const moe_runtime_params *)(void *)smaller), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("at least");
    free(smaller);
    moe_layer_desc d = moe_layer_desc_init(2, 4, 4, MOE_DTYPE_F32);
    d.struct_size = 12;
    moe_model_t *m;
    CHECK_OK(moe_model_create(&m, 1));
    CHECK_STATUS(moe_model_set_layer(m, 0, &d), MOE_ERR_INVALID_ARG);
    moe_model_free(&m);
    test_model_free(&t);
}

static void expert_bytes_saturate(void) {
    moe_model_t *m;
    CHECK_OK(moe_model_create(&m, 30));
    moe_layer_desc d = moe_layer_desc_init(65536, 1u << 20, 1u << 20, MOE_DTYPE_F32);
    for (uint32_t l = 0; l < 30; l++) CHECK_OK(moe_model_set_layer(m, l, &d)); /* nothing is allocated per expert weight */
    CHECK(moe_model_expert_bytes(m) == UINT64_MAX);
    moe_model_free(&m);
}

static void stats_lifecycle(void) {
    test_model t;
    test_model_make(&t, 1, 4, 8, 8, MOE_DTYPE_F32, 5);
    moe_runtime_t *rt;
    CHECK_OK(moe_runtime_create(&rt, t.model, NULL));
    moe_stats s;
    CHECK_STATUS(moe_runtime_get_stats(rt, NULL), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_runtime_get_stats(NULL, &s), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_runtime_reset_stats(NULL), MOE_ERR_INVALID_ARG);
    float x[16] = {0}, y[16];
    int32_t ids[4] = {0, 1, 0, 2};
    float w[4] = {1, 1, 1, 1};
    CHECK_OK(moe_layer_forward(rt, 0, 2, x, 2, ids, w, y));
    CHECK_OK(moe_layer_forward(rt, 0, 0, x, 2, ids, w, y)); /* empty batch: no work, no count */
    CHECK_OK(moe_runtime_get_stats(rt, &s));
    CHECK_EQ(s.layer_calls, 1);
    CHECK_EQ(s.tokens, 2);
    CHECK_EQ(s.expert_calls_cpu, 3); /* experts 0, 1, 2 */
    CHECK_EQ(s.expert_calls_gpu, 0);
    CHECK_EQ(s.expert_tokens, 4);
    CHECK(s.total_seconds >= s.cpu_seconds && s.cpu_seconds >= 0.0);
    CHECK_OK(moe_runtime_reset_stats(rt));
    CHECK_OK(moe_runtime_get_stats(rt, &s));
    CHECK_EQ(s.layer_calls, 0);
    CHECK_EQ(s.expert_tokens, 0);
    moe_runtime_free(&rt);
    test_model_free(&t);
}

TEST_MAIN("lifetime", TEST_CASE(model_create_rejects), TEST_CASE(double_free_is_harmless),
          TEST_CASE(layer_description_rules), TEST_CASE(expert_registration_rules),
          TEST_CASE(runtime_keeps_model_alive), TEST_CASE(runtime_create_rejects),
          TEST_CASE(params_struct_size_compatibility), TEST_CASE(expert_bytes_saturate), TEST_CASE(stats_lifecycle))
