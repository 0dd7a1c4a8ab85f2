/* test_demo.c - the demo model: deterministic from its seed, identical
 * logits whatever the thread count, and refusal of bad configs. */
#include "demo.h"
#include "util.h"

static float *run(const moe_demo_config *cfg, uint32_t threads, const char *policy, const int32_t *tok, uint32_t n) {
    moe_demo *d = NULL;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_demo_create(&d, cfg));
    moe_runtime_params p = moe_runtime_default_params();
    p.n_threads = threads;
    p.policy = policy;
    CHECK_OK(moe_runtime_create(&rt, moe_demo_model(d), &p));
    float *logits = malloc((size_t)n * cfg->vocab * sizeof *logits);
    CHECK_OK(moe_demo_forward(d, rt, tok, n, 0, logits));
    moe_runtime_free(&rt);
    moe_demo_free(&d);
    CHECK(d == NULL);
    return logits;
}

static void same_logits_every_way(void) {
    moe_demo_config cfg = moe_demo_default_config();
    cfg.n_layers = 3, cfg.hidden = 64, cfg.inter = 96, cfg.vocab = 100;
    int32_t tok[12];
    uint32_t n = moe_demo_tokenize("moerun demo!", cfg.vocab, tok, 12);
    CHECK_EQ(n, 12);
    float *a = run(&cfg, 1, "static-cpu", tok, n), *b = run(&cfg, 2, "static-cpu", tok, n);
    CHECK(memcmp(a, b, (size_t)n * cfg.vocab * sizeof *a) == 0);
    for (size_t i = 0; i < (size_t)n * cfg.vocab; i++)
        if (!isfinite(a[i])) {
            CHECK(isfinite(a[i]));
            break;
        }
    /* Another seed gives other weights, so other logits. */
    cfg.seed = 43;
    float *c = run(&cfg, 2, NULL, tok, n);
    CHECK(memcmp(a, c, (size_t)n * cfg.vocab * sizeof *a) != 0);
    free(a), free(b), free(c);
}

/* The int8 demo quantizes the f32 demo's weights (same seed, per-row
 * scales), so its logits follow the f32 ones through the whole stack:
 * every layer's int8 kernels, activation quantization and all. */
static void int8_follows_f32(void) {
    moe_demo_config cfg = moe_demo_default_config();
    cfg.n_layers = 3, cfg.hidden = 64, cfg.inter = 96, cfg.vocab = 100, cfg.dtype = MOE_DTYPE_F32;
    int32_t tok[24];
    uint32_t n = moe_demo_tokenize("int8 weights, per-row scales", cfg.vocab, tok, 24);
    float *f = run(&cfg, 2, NULL, tok, n);
    cfg.dtype = MOE_DTYPE_I8;
    float *q = run(&cfg, 2, NULL, tok, n), *q1 = run(&cfg, 1, NULL, tok, n);
    const double e = test_nmse(q, f, (size_t)n * cfg.vocab);
    CHECK(e > 0.0 && e < 1e-2);
    CHECK(memcmp(q, q1, (size_t)n * cfg.vocab * sizeof *q) == 0);
    free(f), free(q), free(q1);
}

static void bad_configs_are_refused(void) {
    moe_demo *d = (moe_demo *)1;
    moe_demo_config cfg = moe_demo_default_config();
    cfg.top_k = cfg.n_experts + 1;
    CHECK_STATUS(moe_demo_create(&d, &cfg), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("top_k <= experts");
    CHECK(d == NULL);
    cfg = moe_demo_default_config(), cfg.hidden = 0;
    CHECK_STATUS(moe_demo_create(&d, &cfg), MOE_ERR_INVALID_ARG);
    cfg = moe_demo_default_config(), cfg.dtype = MOE_DTYPE_COUNT_;
    CHECK_STATUS(moe_demo_create(&d, &cfg), MOE_ERR_UNSUPPORTED);
    cfg = moe_demo_default_config(), cfg.hidden = 65536, cfg.inter = 65536;
    CHECK_STATUS(moe_demo_create(&d, &cfg), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("larger than the demo allows");
    /* Embedding and LM head count too: 2^20 x 2^20 floats would wrap. */
    cfg = moe_demo_default_config(), cfg.hidden = 1u << 20, cfg.vocab = 1u << 20, cfg.inter = 1;
    CHECK_STATUS(moe_demo_create(&d, &cfg), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("larger than the demo allows");
    cfg = moe_demo_default_config(), cfg.hidden = 9u << 27;
    CHECK_STATUS(moe_demo_create(&d, &cfg), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("must each be at most");
    CHECK(d == NULL);
    CHECK_STATUS(moe_demo_create(NULL, &cfg), MOE_ERR_INVALID_ARG);
}

static void tokens_out_of_vocab_are_refused(void) {
    moe_demo_config cfg = moe_demo_default_config();
    cfg.n_layers = 1, cfg.hidden = 8, cfg.inter = 8, cfg.vocab = 10;
    moe_demo *d = NULL;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_demo_create(&d, &cfg));
    CHECK_OK(moe_runtime_create(&rt, moe_demo_model(d), NULL));
    float logits[20];
    CHECK_STATUS(moe_demo_forward(d, rt, (int32_t[]){3, 10}, 2, 0, logits), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("token 10 out of range (vocab 10)");
    CHECK_OK(moe_demo_forward(d, rt, (int32_t[]){3, 9}, 2, 0, logits));
    CHECK(moe_demo_argmax(logits, 10) < 10);
    moe_runtime_free(&rt);
    moe_demo_free(&d);
}

TEST_MAIN("demo", TEST_CASE(same_logits_every_way), TEST_CASE(int8_follows_f32), TEST_CASE(bad_configs_are_refused),
          TEST_CASE(tokens_out_of_vocab_are_refused))
