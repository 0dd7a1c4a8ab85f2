/* test_trace.c - the moe-trace v1 reader: the format's example, appending
 * files, and every kind of bad file refused with its file:line. */
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "trace.h"
#include "util.h"

static const char example[] = "# moe-trace 1\n"
                              "# a comment\n"
                              "model toy\n"
                              "layers 2\n"
                              "experts 8\n"
                              "top_k 2\n"
                              "future_key whatever\n"
                              "seq s0 2\n"
                              "3:0.61 5:0.22 | 0:0.50 7:0.31\n"
                              "3:0.70 1:0.10 | 2:0.44 7:0.40\n"
                              "seq s1 1\n"
                              "4 6 | 1 2\n";

static void reads_the_example(void) {
    moe_trace t;
    moe_trace_init(&t);
    CHECK_OK(moe_trace_parse(&t, example, strlen(example), "ex"));
    CHECK(!strcmp(t.model, "toy"));
    CHECK(t.n_layers == 2 && t.n_experts == 8 && t.top_k == 2 && t.n_tokens == 3 && t.n_seqs == 2);
    CHECK(!strcmp(t.seqs[1].name, "s1") && t.seqs[1].first == 2 && t.seqs[1].n == 1);
    const uint16_t *a = moe_trace_ids(&t, 1, 1);
    CHECK(a[0] == 2 && a[1] == 7);
    CHECK(t.has_weights && t.weights[0] == 0.61f && isnan(t.weights[2 * 4]));
    /* Appending the same file doubles it; another shape is refused, naming
     * the header line, and leaves what was read. */
    CHECK_OK(moe_trace_parse(&t, example, strlen(example), "ex2"));
    CHECK(t.n_tokens == 6 && t.n_seqs == 4 && t.seqs[3].first == 5);
    CHECK(moe_trace_ids(&t, 4, 1)[1] == 7);
    static const char other[] = "# moe-trace 1\nlayers 3\nexperts 8\ntop_k 2\nseq x 1\n1 2 | 3 4 | 5 6\n";
    CHECK_STATUS(moe_trace_parse(&t, other, strlen(other), "other"), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("other:4: 3 layers x 8 experts");
    CHECK(t.n_tokens == 6);
    moe_trace_free(&t);
    CHECK_STATUS(moe_trace_load(&t, "/nonexistent.trace"), MOE_ERR_IO);
}

/* Replaces `from` by `to` in the example and expects "bad:<line>: says". */
static void expect_bad(const char *from, const char *to, int line, const char *says) {
    char text[1024];
    const char *at = strstr(example, from);
    CHECK(at != NULL);
    if (!at) return;
    snprintf(text, sizeof text, "%.*s%s%s", (int)(at - example), example, to, at + strlen(from));
    moe_trace t;
    moe_trace_init(&t);
    CHECK_STATUS(moe_trace_parse(&t, text, strlen(text), "bad"), MOE_ERR_PARSE);
    char where[32];
    snprintf(where, sizeof where, "bad:%d: ", line);
    CHECK_ERROR_MENTIONS(where);
    CHECK_ERROR_MENTIONS(says);
    CHECK(t.n_tokens == 0 && t.ids == NULL);
    moe_trace_free(&t);
}

static void bad_traces_are_refused_with_their_line(void) {
    expect_bad("# moe-trace 1", "# moe-trace 2", 1, "not a moe-trace v1 file");
    expect_bad("layers 2\n", "", 7, "before the header");                              /* missing header */
    expect_bad("experts 8", "experts eight", 5, "experts: expected a whole number");
    expect_bad("top_k 2", "top_k 9", 8, "top_k 9 is more than experts 8");
    expect_bad("layers 2\n", "layers 2\nlayers 3\n", 5, "layers given twice");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3:0.61 5:0.22", 9, "1 group(s) of experts");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3:0.61 5:0.22 | 0 7 | 1 2", 9, "more than 2 groups");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3:0.61 | 0:0.50 7:0.31", 9, "layer 0: 1 expert(s)");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3 5 | 0 7 1", 9, "more than 2 experts in the last layer");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3 8 | 0 7", 9, "expert 8 out of range");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3 3 | 0 7", 9, "expert 3 twice");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3 x5 | 0 7", 9, "\"x5\" is not an expert id");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3:abc 5 | 0 7", 9, "weight \"abc\"");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3:nan 5 | 0 7", 9, "weight \"nan\"");
    expect_bad("3:0.61 5:0.22 | 0:0.50 7:0.31", "3:-1 5 | 0 7", 9, "weight \"-1\"");
    expect_bad("seq s0 2", "seq s0 3", 11, "ends after 2 of its 3 tokens");
    expect_bad("seq s1 1", "seq s1 2", 13, "ends 1 token(s) short of sequence \"s1\"");
    expect_bad("seq s0 2", "seq s0 two", 8, "expected \"seq NAME N\"");
    expect_bad("seq s0 2", "seq s0 0", 8, "expected \"seq NAME N\"");
    expect_bad("4 6 | 1 2\n", "4 6 | 1 2", 12, "no line end: the file is truncated");
    expect_bad("4 6 | 1 2\n", "4 6 | 1 2\nmodel late\n", 13, "after the first sequence");
    moe_trace t;
    moe_trace_init(&t);
    CHECK_STATUS(moe_trace_parse(&t, "", 0, "empty"), MOE_ERR_PARSE);
    CHECK_STATUS(moe_trace_parse(&t, "# moe-trace 1\nlayers 1\n", 23, "noseq"), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("no sequence");
    CHECK_STATUS(moe_trace_parse(&t, "# moe-trace 1\nla\0ers 1\n", 23, "nul"), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("nul:2: a NUL byte");
}

/* What the writer writes, the reader reads back the same. */
static void write_then_read(void) {
    moe_trace a, b;
    moe_trace_init(&a), moe_trace_init(&b);
    CHECK_OK(moe_trace_parse(&a, example, strlen(example), "ex"));
    char path[] = "/tmp/moerun-trace-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK_OK(moe_trace_write(&a, path));
    CHECK_OK(moe_trace_load(&b, path));
    CHECK(b.n_tokens == a.n_tokens && b.n_seqs == a.n_seqs && b.n_layers == 2 && b.top_k == 2);
    CHECK(memcmp(a.ids, b.ids, (size_t)a.n_tokens * 4 * sizeof *a.ids) == 0);
    for (size_t i = 0; i < (size_t)a.n_tokens * 4; i++)
        CHECK(isnan(a.weights[i]) ? isnan(b.weights[i]) : a.weights[i] == b.weights[i]);
    unlink(path);
    moe_trace_free(&a), moe_trace_free(&b);
}

static void log_to(moe_log_level l, const char *msg, void *user) {
    (void)l;
    if (strstr(msg, "out of order")) *(int *)user = 1;
}

/* The runtime records passes called in layer order; a host that calls
 * them out of order is warned and gets no file (rather than a wrong one),
 * and a pass left unfinished at free is dropped. */
static void runtime_records_passes(void) {
    test_model tm;
    test_model_make(&tm, 2, 4, 16, 8, MOE_DTYPE_F32, 3);
    char path[] = "/tmp/moerun-rec-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    unlink(path);
    moe_runtime_params p = moe_runtime_default_params();
    p.record_trace_path = path, p.profile_path = "";
    int warned = 0;
    p.log_fn = log_to, p.log_user = &warned;
    float x[2 * 16], y[2 * 16], w[4] = {0.75f, 0.25f, 0.5f, 0.5f};
    for (int i = 0; i < 32; i++) x[i] = (float)i / 32;
    const int32_t ids[4] = {1, 3, 0, 2};
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, tm.model, &p));
    CHECK_OK(moe_layer_forward(rt, 0, 2, x, 2, ids, w, y));
    CHECK_OK(moe_layer_forward(rt, 1, 2, x, 2, ids, w, y));
    CHECK_OK(moe_layer_forward(rt, 0, 1, x, 2, ids, w, y)); /* unfinished at free: dropped */
    moe_runtime_free(&rt);
    moe_trace t;
    moe_trace_init(&t);
    CHECK_OK(moe_trace_load(&t, path));
    CHECK(t.n_tokens == 2 && t.n_layers == 2 && t.n_experts == 4 && t.top_k == 2);
    CHECK(moe_trace_ids(&t, 1, 1)[0] == 0 && moe_trace_ids(&t, 1, 1)[1] == 2 && t.weights[0] == 0.75f);
    moe_trace_free(&t);
    unlink(path);
    CHECK_OK(moe_runtime_create(&rt, tm.model, &p));
    CHECK_OK(moe_layer_forward(rt, 1, 2, x, 2, ids, w, y));
    moe_runtime_free(&rt);
    CHECK(warned);
    CHECK(access(path, F_OK) != 0);
    test_model_free(&tm);
}

TEST_MAIN("trace", TEST_CASE(reads_the_example), TEST_CASE(bad_traces_are_refused_with_their_line),
          TEST_CASE(write_then_read), TEST_CASE(runtime_records_passes))
