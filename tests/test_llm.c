/* test_llm.c - whole models against transformers: for each tiny
 * random-weight model in tests/data/models (made by tests/gen/
 * make_tiny_models.py, one per architecture), moerun's logits for the
 * reference prompt must match transformers' (max abs and NMSE), and
 * decoding the reference's greedy continuation one token at a time
 * through the KV cache must give the same logits and choose the same
 * tokens wherever transformers' choice is not a near tie. Then loads that
 * must be refused: a missing tensor, a wrong shape, an unsupported
 * architecture, a context over the model's, tokens outside the vocabulary. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "json.h"
#include "llm.h"
#include "util.h"

#ifndef MOE_TEST_DATA_DIR
#define MOE_TEST_DATA_DIR "tests/data"
#endif

static const char *const archs[] = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2"};

/* ---- the reference file ---- */

typedef struct reference {
    moe_json_doc doc;
    const moe_json *prompt, *logits, *greedy, *greedy_logits;
} reference;

static bool load_reference(reference *r, const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len);
    CHECK_EQ(fread(text, 1, (size_t)len, f), len);
    fclose(f);
    CHECK_OK(moe_json_parse(&r->doc, text, (size_t)len, path));
    free(text);
    r->prompt = moe_json_member_get(&r->doc.root, "prompt");
    r->logits = moe_json_member_get(&r->doc.root, "logits");
    r->greedy = moe_json_member_get(&r->doc.root, "greedy");
    r->greedy_logits = moe_json_member_get(&r->doc.root, "greedy_logits");
    CHECK(r->prompt && r->logits && r->greedy);
    return r->prompt && r->logits && r->greedy;
}

static int32_t *ids_of(const moe_json *a, uint32_t *n) {
    *n = (uint32_t)moe_json_array_len(a);
    int32_t *ids = malloc((*n ? *n : 1) * sizeof *ids);
    for (uint32_t i = 0; i < *n; i++) ids[i] = (int32_t)moe_json_array_at(a, i)->number;
    return ids;
}

/* Compares logits [vocab] to the reference row; returns the error. */
typedef struct diff {
    double max_abs, nmse;
} diff;

static diff compare_row(const float *got, const moe_json *row, uint32_t vocab) {
    double num = 0, den = 0, worst = 0;
    CHECK_EQ(moe_json_array_len(row), vocab);
    for (uint32_t v = 0; v < vocab && v < moe_json_array_len(row); v++) {
        const double want = moe_json_array_at(row, v)->number, e = got[v] - want;
        num += e * e, den += want * want;
        worst = fmax(worst, fabs(e));
        if (isnan(got[v])) worst = INFINITY;
    }
    return (diff){worst, den > 0 ? num / den : num};
}

/* Top-1 minus top-2 of a reference row. */
static double margin(const moe_json *row) {
    double a = -INFINITY, b = -INFINITY;
    for (size_t v = 0; v < moe_json_array_len(row); v++) {
        const double x = moe_json_array_at(row, v)->number;
        if (x > a) b = a, a = x;
        else if (x > b) b = x;
    }
    return a - b;
}

static int32_t argmax(const float *x, uint32_t n) {
    int32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int32_t)i;
    return best;
}

/* ---- models against transformers ---- */

/* Logits may differ by the experts' bf16 activations (the CPU engine
 * rounds activations to bf16 for its dot products, as transformers' bf16
 * path would) and by summation order. */
#define MAX_NMSE 1e-4
#define MAX_NMSE_Q8 2e-3
#define NEAR_TIE 0.05

static void check_model(const char *arch, moe_llm *m, moe_runtime_t *rt, const reference *r, double max_nmse) {
    const uint32_t V = moe_llm_vocab(m);
    uint32_t n_prompt, n_gen;
    int32_t *prompt = ids_of(r->prompt, &n_prompt), *gen = ids_of(r->greedy, &n_gen);
    float *logits = malloc((size_t)(n_prompt + 1) * V * sizeof *logits);
    CHECK_OK(moe_llm_forward(m, rt, prompt, n_prompt, 0, true, logits));
    diff worst = {0, 0};
    for (uint32_t t = 0; t < n_prompt; t++) {
        const diff d = compare_row(logits + (size_t)t * V, moe_json_array_at(r->logits, t), V);
        worst.max_abs = fmax(worst.max_abs, d.max_abs), worst.nmse = fmax(worst.nmse, d.nmse);
    }
    /* Teacher-forced decode of the reference continuation. */
    const moe_json *step_rows = r->greedy_logits;
    int32_t next = argmax(logits + (size_t)(n_prompt - 1) * V, V);
    uint32_t agree = 0, ties = 0;
    diff dec = {0, 0};
    for (uint32_t i = 0; i < n_gen; i++) {
        const moe_json *row = i == 0 ? moe_json_array_at(r->logits, n_prompt - 1) : moe_json_array_at(step_rows, i);
        if (row && margin(row) < NEAR_TIE) ties++;
        else if (next == gen[i]) agree++;
        else fprintf(stderr, "  %s: step %u chose %d, transformers %d (margin %.3f)\n", arch, i, next, gen[i],
                     row ? margin(row) : -1.0);
        if (i + 1 == n_gen) break;
        CHECK_OK(moe_llm_forward(m, rt, &gen[i], 1, n_prompt + i, false, logits));
        if (step_rows && moe_json_array_len(step_rows) > i + 1) {
            const diff d = compare_row(logits, moe_json_array_at(step_rows, i + 1), V);
            dec.max_abs = fmax(dec.max_abs, d.max_abs), dec.nmse = fmax(dec.nmse, d.nmse);
        }
        next = argmax(logits, V);
    }
    printf("  %-26s prefill %u: max abs %.2e, NMSE %.2e; decode %u: max abs %.2e, NMSE %.2e; greedy %u/%u "
           "(+%u near ties)\n", arch, n_prompt, worst.max_abs, worst.nmse, n_gen, dec.max_abs, dec.nmse, agree,
           n_gen - ties, ties);
    CHECK(worst.nmse <= max_nmse);
    CHECK(dec.nmse <= max_nmse);
    if (max_nmse <= MAX_NMSE) CHECK_EQ(agree, n_gen - ties);
    free(prompt), free(gen), free(logits);
}

static bool have_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* One model, from its directory or its GGUF file, against the reference. */
static void check_source(const char *arch, const char *path, const reference *r, double max_nmse) {
    moe_llm *m = NULL;
    CHECK_OK(moe_llm_load(&m, path, NULL));
    if (!m) return;
    CHECK(!strcmp(moe_llm_arch_name(m), arch));
    moe_runtime_params p = moe_runtime_default_params();
    p.device = MOE_DEVICE_CPU;
    p.profile_path = "";
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, moe_llm_model(m), &p));
    char label[64];
    const char *base = strrchr(path, '/');
    snprintf(label, sizeof label, "%s%s%s", arch, strstr(path, ".gguf") ? " " : "",
             strstr(path, ".gguf") && base ? base + 1 : "");
    if (rt) check_model(label, m, rt, r, max_nmse);
    moe_runtime_free(&rt);
    moe_llm_free(&m);
}

static void models_match_transformers(void) {
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
        char dir[512], gguf[600];
        snprintf(dir, sizeof dir, "%s/models/%s", MOE_TEST_DATA_DIR, archs[a]);
        snprintf(gguf, sizeof gguf, "%s/model.gguf", dir);
        CHECK(have_dir(dir));
        reference r;
        if (!have_dir(dir) || !load_reference(&r, dir)) continue;
        check_source(archs[a], dir, &r, MAX_NMSE);
        check_source(archs[a], gguf, &r, MAX_NMSE);
        moe_json_free(&r.doc);
    }
}

/* Qwen3-MoE in three shards with an index, and quantised to q8_0 (its
 * blocks used as stored, activations in int8 blocks as llama.cpp computes
 * them): the same reference, the quantised one within a quantisation's
 * error, not token for token. */
static void sharded_and_q8_0(void) {
    char dir[512], q8[600];
    snprintf(dir, sizeof dir, "%s/models/qwen3_moe-sharded", MOE_TEST_DATA_DIR);
    reference r;
    if (!load_reference(&r, dir)) return;
    check_source("qwen3_moe", dir, &r, MAX_NMSE);
    snprintf(q8, sizeof q8, "%s/models/qwen3_moe/model-q8_0.gguf", MOE_TEST_DATA_DIR);
    check_source("qwen3_moe", q8, &r, MAX_NMSE_Q8);
    moe_json_free(&r.doc);
}

/* The logits of the prompt and of teacher-forced decode steps of the
 * reference continuation, all positions: [(n_prompt + steps) * V]. */
static float *run_fixture(moe_llm *m, moe_runtime_t *rt, const int32_t *prompt, uint32_t n_prompt,
                          const int32_t *gen, uint32_t steps) {
    const uint32_t V = moe_llm_vocab(m);
    float *out = malloc((size_t)(n_prompt + steps) * V * sizeof *out);
    CHECK_OK(moe_llm_forward(m, rt, prompt, n_prompt, 0, true, out));
    for (uint32_t i = 0; i < steps; i++)
        CHECK_OK(moe_llm_forward(m, rt, &gen[i], 1, n_prompt + i, false, out + (size_t)(n_prompt + i) * V));
    return out;
}

/* Every architecture on the simulated GPU, at several budgets and
 * policies: the scheduler moves experts between CPU and device from layer
 * to layer, and the logits are bit-identical to the CPU-only run's. */
static void simulated_device_matches_cpu(void) {
    const double budgets[3] = {0.25, 0.5, 1.0};
    const char *policies[3] = {"moerun", "hybrimoe", "gpu-lru"};
    for (size_t a = 0; a < sizeof archs / sizeof archs[0]; a++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/models/%s", MOE_TEST_DATA_DIR, archs[a]);
        reference r;
        if (!load_reference(&r, dir)) continue;
        moe_llm *m = NULL;
        CHECK_OK(moe_llm_load(&m, dir, NULL));
        uint32_t n_prompt, n_gen;
        int32_t *prompt = ids_of(r.prompt, &n_prompt), *gen = ids_of(r.greedy, &n_gen);
        const uint32_t steps = n_gen < 6 ? n_gen : 6, V = m ? moe_llm_vocab(m) : 0;
        moe_runtime_params p = moe_runtime_default_params();
        p.device = MOE_DEVICE_CPU;
        p.profile_path = "";
        moe_runtime_t *rt = NULL;
        if (m) CHECK_OK(moe_runtime_create(&rt, moe_llm_model(m), &p));
        float *want = rt ? run_fixture(m, rt, prompt, n_prompt, gen, steps) : NULL;
        moe_runtime_free(&rt);
        uint64_t gpu_calls = 0;
        for (int b = 0; b < 3 && want; b++) {
            p.device = MOE_DEVICE_SIM;
            p.policy = policies[b];
            p.gpu_budget_fraction = budgets[b];
            p.profile_path = MOE_PROFILES_DIR "/ref-rtx4090-pcie4-2s-xeon8480.txt";
            p.profile_any_host = 1;
            CHECK_OK(moe_runtime_create(&rt, moe_llm_model(m), &p));
            if (!rt) continue;
            float *got = run_fixture(m, rt, prompt, n_prompt, gen, steps);
            const size_t n = (size_t)(n_prompt + steps) * V;
            if (memcmp(got, want, n * sizeof *got) != 0) {
                fprintf(stderr, "  %s: sim (%s, budget %.2f) logits differ from the CPU's\n", archs[a], policies[b],
                        budgets[b]);
                CHECK(0);
            }
            moe_stats st;
            CHECK_OK(moe_runtime_get_stats(rt, &st));
            gpu_calls += st.expert_calls_gpu;
            free(got);
            moe_runtime_free(&rt);
        }
        printf("  %-26s sim at 25/50/100%%: logits identical to the CPU's; %llu expert calls on the device\n",
               archs[a], (unsigned long long)gpu_calls);
        CHECK(gpu_calls > 0);
        free(want), free(prompt), free(gen);
        moe_llm_free(&m);
        moe_json_free(&r.doc);
    }
}

/* ---- refusals ---- */

static char tmpdir[256];

/* Replaces the first `from` in text (of capacity cap) by `to`. */
static void replace(char *text, size_t cap, const char *from, const char *to) {
    char *at = from ? strstr(text, from) : NULL;
    CHECK(!from || at != NULL);
    if (!at || strlen(text) - strlen(from) + strlen(to) >= cap) return;
    memmove(at + strlen(to), at + strlen(from), strlen(at + strlen(from)) + 1);
    memcpy(at, to, strlen(to));
}

/* A copy of the qwen3_moe fixture whose config.json has `from` replaced
 * by `to` (and from2 by to2), in tmpdir/name; its weights are linked. */
static void variant(const char *name, const char *from, const char *to, const char *from2, const char *to2, char *dir,
                    size_t cap) {
    char src[600], cmd[2048];
    snprintf(dir, cap, "%s/%s", tmpdir, name);
    snprintf(src, sizeof src, "%s/models/qwen3_moe", MOE_TEST_DATA_DIR);
    CHECK(mkdir(dir, 0700) == 0);
    snprintf(cmd, sizeof cmd, "ln -s '%s/model.safetensors' '%s/model.safetensors'", src, dir);
    CHECK(system(cmd) == 0);
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", src);
    FILE *f = fopen(path, "rb");
    char text[8192];
    const size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = '\0';
    replace(text, sizeof text, from, to);
    replace(text, sizeof text, from2, to2);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *g = fopen(path, "wb");
    CHECK(g != NULL);
    if (!g) return;
    fputs(text, g);
    fclose(g);
}

static void refuses_bad_models(void) {
    static const struct {
        const char *name, *from, *to, *what;
        moe_status want;
        const char *from2, *to2;
    } cases[] = {
        {"arch", "\"qwen3_moe\"", "\"gpt_oss\"", "model_type \"gpt_oss\" is not supported", MOE_ERR_UNSUPPORTED, NULL, NULL},
        {"inter", "\"moe_intermediate_size\": 32", "\"moe_intermediate_size\": 16",
         "\"model.layers.0.mlp.experts.0.gate_proj.weight\" has shape [32, 64], expected [16, 64]", MOE_ERR_PARSE, NULL, NULL},
        {"layers", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3",
         "tensor \"model.layers.2.input_layernorm.weight\" is missing", MOE_ERR_PARSE, NULL, NULL},
        {"rope", "\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2}",
         "rope scaling \"dynamic\" is not supported", MOE_ERR_UNSUPPORTED, NULL, NULL},
        {"window", "\"use_sliding_window\": false", "\"use_sliding_window\": true", "sliding window of 8",
         MOE_ERR_UNSUPPORTED, "\"sliding_window\": null", "\"sliding_window\": 8"},
        {"act", "\"silu\"", "\"gelu\"", "hidden_act other than silu", MOE_ERR_UNSUPPORTED, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[512];
        variant(cases[i].name, cases[i].from, cases[i].to, cases[i].from2, cases[i].to2, dir, sizeof dir);
        moe_llm *m = NULL;
        CHECK_STATUS(moe_llm_load(&m, dir, NULL), cases[i].want);
        CHECK_ERROR_MENTIONS(cases[i].what);
        CHECK(m == NULL);
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/qwen3_moe", MOE_TEST_DATA_DIR);
    moe_llm *m = NULL;
    const moe_llm_params big = {.ctx = 513};
    CHECK_STATUS(moe_llm_load(&m, dir, &big), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("over the model's 512");
    CHECK_STATUS(moe_llm_load(&m, "/nonexistent/model", NULL), MOE_ERR_IO);
    /* Tokens outside the vocabulary or the context. */
    const moe_llm_params small = {.ctx = 4};
    CHECK_OK(moe_llm_load(&m, dir, &small));
    moe_runtime_params p = moe_runtime_default_params();
    p.device = MOE_DEVICE_CPU;
    p.profile_path = "";
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, moe_llm_model(m), &p));
    float logits[256];
    const int32_t bad_tok[2] = {3, 256}, ok[5] = {1, 2, 3, 4, 5};
    CHECK_STATUS(moe_llm_forward(m, rt, bad_tok, 2, 0, false, logits), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("token 256 (at 1) is outside the vocabulary of 256");
    CHECK_STATUS(moe_llm_forward(m, rt, ok, 5, 0, false, logits), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("do not fit in the context of 4");
    CHECK_OK(moe_llm_forward(m, rt, ok, 4, 0, false, logits));
    moe_runtime_free(&rt);
    moe_llm_free(&m);
    /* A GGUF that is not an MoE model of a known architecture. */
    char path[600];
    snprintf(path, sizeof path, "%s/gguf/pygguf-sample.gguf", MOE_TEST_DATA_DIR);
    CHECK(moe_llm_load(&m, path, NULL) != MOE_OK && m == NULL);
}

int main(int argc, char **argv) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/moe-llm-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    static const test_case cases[] = {
        TEST_CASE(models_match_transformers), TEST_CASE(simulated_device_matches_cpu),
        TEST_CASE(sharded_and_q8_0),
        TEST_CASE(refuses_bad_models),
    };
    const int rc = run_tests("llm", cases, sizeof cases / sizeof cases[0], argc, argv);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return rc;
}
