/* test_safetensors.c - the safetensors reader: files written here (every
 * dtype, scalars, metadata), each refusal with the words of its message,
 * random damage that must be refused cleanly or read consistently, and
 * model directories (one file, an index over shards, and an index that
 * disagrees with its shards). */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "util.h"

/* ---- writing files ---- */

static char tmpdir[256];

/* The path of `name` in the test's directory (a static buffer: the next
 * call overwrites it). */
static const char *tmp_path(const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    CHECK_EQ(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* A safetensors file with header `json` (padded with spaces to 8 bytes, as
 * the Python writer does) followed by `n` bytes of data counting up. */
static void write_st(const char *path, const char *json, size_t n) {
    const size_t hl = strlen(json), padded = (hl + 7) / 8 * 8;
    uint8_t *b = malloc(8 + padded + n + 1);
    for (int k = 0; k < 8; k++) b[k] = (uint8_t)((uint64_t)padded >> (8 * k));
    memcpy(b + 8, json, hl);
    memset(b + 8 + hl, ' ', padded - hl);
    for (size_t i = 0; i < n; i++) b[8 + padded + i] = (uint8_t)i;
    write_bytes(path, b, 8 + padded + n);
    free(b);
}

/* Opening `json` with `n` data bytes must fail with `want`, mentioning `what`. */
static void refused(const char *json, size_t n, moe_status want, const char *what) {
    const char *p = tmp_path("bad.safetensors");
    write_st(p, json, n);
    moe_safetensors st;
    CHECK_STATUS(moe_safetensors_open(&st, p), want);
    CHECK(st.tensors == NULL && st.file.data == NULL);
    CHECK_ERROR_MENTIONS(what);
    CHECK_ERROR_MENTIONS("bad.safetensors");
}

/* ---- one file ---- */

static const char *good_header =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"w.up\":{\"dtype\":\"BF16\",\"shape\":[3,4],\"data_offsets\":[24,48]},"
    "\"a.bias\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
    "\"m.scalar\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[16,18]},"
    "\"z.empty\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[18,18]},"
    "\"k.half\":{\"dtype\":\"F16\",\"shape\":[1,1,1,3],\"data_offsets\":[18,24]}}";

static void reads_every_dtype_and_shape(void) {
    const char *p = tmp_path("good.safetensors");
    write_st(p, good_header, 48);
    moe_safetensors st;
    CHECK_OK(moe_safetensors_open(&st, p));
    CHECK_EQ(st.n_tensors, 5);
    /* Sorted by name. */
    for (uint64_t i = 1; i < st.n_tensors; i++) CHECK(strcmp(st.tensors[i - 1].name, st.tensors[i].name) < 0);
    const uint8_t *data = st.file.data + st.data_offset;
    const moe_tensor *t = moe_safetensors_find(&st, "w.up");
    CHECK(t && t->type == MOE_DTYPE_BF16 && t->n_dims == 2 && t->shape[0] == 3 && t->shape[1] == 4);
    CHECK(t && t->n_elems == 12 && t->bytes == 24 && t->data == data + 24 && ((const uint8_t *)t->data)[0] == 24);
    CHECK(t && !strcmp(t->file, p));
    t = moe_safetensors_find(&st, "a.bias");
    CHECK(t && t->type == MOE_DTYPE_F32 && t->n_dims == 1 && t->shape[0] == 4 && t->bytes == 16 && t->data == data);
    t = moe_safetensors_find(&st, "m.scalar");
    CHECK(t && t->n_dims == 0 && t->n_elems == 1 && t->bytes == 2);
    t = moe_safetensors_find(&st, "z.empty");
    CHECK(t && t->n_elems == 0 && t->bytes == 0 && t->shape[0] == 0 && t->shape[1] == 5);
    t = moe_safetensors_find(&st, "k.half");
    CHECK(t && t->n_dims == 4 && t->shape[3] == 3 && t->n_elems == 3);
    CHECK(moe_safetensors_find(&st, "nope") == NULL);
    CHECK(moe_safetensors_find(&st, "") == NULL);
    moe_safetensors_close(&st);
    moe_safetensors_close(&st); /* twice is harmless */
}

static void empty_file_of_no_tensors(void) {
    const char *p = tmp_path("none.safetensors");
    write_st(p, "{}", 0);
    moe_safetensors st;
    CHECK_OK(moe_safetensors_open(&st, p));
    CHECK_EQ(st.n_tensors, 0);
    CHECK(moe_safetensors_find(&st, "x") == NULL);
    moe_safetensors_close(&st);
}

static void refuses_bad_headers(void) {
    refused("[1]", 0, MOE_ERR_PARSE, "must be a JSON object");
    refused("{\"a\":", 0, MOE_ERR_PARSE, "bad.safetensors:1:");
    refused("{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, MOE_ERR_UNSUPPORTED,
            "dtype I64 is not supported");
    refused("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8, MOE_ERR_PARSE, "unknown dtype \"Q4\"");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, MOE_ERR_PARSE,
            "at most 4 sizes");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, MOE_ERR_PARSE, "shape");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, MOE_ERR_PARSE, "shape");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, MOE_ERR_PARSE,
            "4 bytes of data for 2 f32 elements");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, MOE_ERR_PARSE,
            "end before they begin");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3, MOE_ERR_PARSE, "truncated");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, MOE_ERR_PARSE,
            "\"data_offsets\" must be [begin, end]");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, MOE_ERR_PARSE,
            "unknown key \"x\"");
    refused("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, MOE_ERR_PARSE, "\"dtype\" must be a string");
    refused("{\"a\":[]}", 0, MOE_ERR_PARSE, "expected an object");
    refused("{\"__metadata__\":{\"k\":1}}", 0, MOE_ERR_PARSE, "\"__metadata__\" value \"k\" must be a string");
    refused("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, MOE_ERR_PARSE, "name is empty");
    /* Overlap, hole inside, hole at the end. */
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            8, MOE_ERR_PARSE, "overlaps");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
            12, MOE_ERR_PARSE, "bytes 4..8 of the data belong to no tensor");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6, MOE_ERR_PARSE,
            "bytes 4..6 of the data belong to no tensor");
    refused("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            8, MOE_ERR_PARSE, "duplicate");
}

static void refuses_bad_framing(void) {
    const char *p = tmp_path("short.safetensors");
    moe_safetensors st;
    write_bytes(p, "\x10\0\0", 3);
    CHECK_STATUS(moe_safetensors_open(&st, p), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("too short");
    const uint8_t big[12] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}', ' ', ' '};
    write_bytes(p, big, sizeof big);
    CHECK_STATUS(moe_safetensors_open(&st, p), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("does not fit");
    CHECK_STATUS(moe_safetensors_open(&st, tmp_path("missing.safetensors")), MOE_ERR_IO);
    CHECK_ERROR_MENTIONS("missing.safetensors");
    CHECK_STATUS(moe_safetensors_open(&st, tmpdir), MOE_ERR_IO);
    CHECK_ERROR_MENTIONS("not a regular file");
    CHECK_STATUS(moe_safetensors_open(NULL, p), MOE_ERR_INVALID_ARG);
}

/* Random bytes changed, or the file cut short: either refused, or every
 * tensor found lies inside the file with a byte count that fits its shape. */
static void random_damage_is_refused_or_consistent(void) {
    char p[600];
    snprintf(p, sizeof p, "%s", tmp_path("damaged.safetensors"));
    write_st(tmp_path("good.safetensors"), good_header, 48);
    moe_mapped_file m;
    CHECK_OK(moe_map_file(&m, tmp_path("good.safetensors")));
    uint8_t *b = malloc(m.size);
    moe_rng r = {42};
    int opened = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(b, m.data, m.size);
        size_t n = m.size;
        if (iter % 5 == 0) n = moe_rng_below(&r, (uint32_t)m.size);
        const uint32_t flips = 1 + moe_rng_below(&r, 3);
        for (uint32_t k = 0; k < flips && n; k++) {
            const uint32_t at = moe_rng_below(&r, (uint32_t)n), what = (uint32_t)moe_rng_next(&r);
            b[at] = (what & 1) ? (uint8_t)(what >> 8) : (uint8_t)"0123456789,[]{}\"FBI"[(what >> 8) % 19];
        }
        write_bytes(p, b, n);
        moe_safetensors st;
        if (moe_safetensors_open(&st, p) != MOE_OK) {
            CHECK(moe_last_error()[0] != '\0');
            continue;
        }
        opened++;
        for (uint64_t i = 0; i < st.n_tensors; i++) {
            const moe_tensor *t = &st.tensors[i];
            uint64_t want = 0;
            CHECK(moe_tensor_bytes(t->type, t->n_elems, t->n_dims ? t->shape[t->n_dims - 1] : 1, &want));
            CHECK(want == t->bytes);
            CHECK((const uint8_t *)t->data >= st.file.data + st.data_offset);
            CHECK((const uint8_t *)t->data + t->bytes <= st.file.data + st.file.size);
        }
        moe_safetensors_close(&st);
    }
    CHECK(opened > 0); /* damage to the data bytes leaves a valid file */
    free(b);
    moe_unmap_file(&m);
}

/* ---- model directories ---- */

static void make_dir(const char *name) {
    CHECK(mkdir(tmp_path(name), 0700) == 0);
}

static void write_in(const char *dir, const char *file, const char *text) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s/%s", tmpdir, dir, file);
    write_bytes(p, text, strlen(text));
}

static void write_st_in(const char *dir, const char *file, const char *json, size_t n) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s/%s", tmpdir, dir, file);
    write_st(p, json, n);
}

static const char *shard1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"c\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]}}";
static const char *shard2 = "{\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}}";
static const char *index_ok = "{\"metadata\":{\"total_size\":18},\"weight_map\":{\"a\":\"s-1.safetensors\","
                              "\"b\":\"s-2.safetensors\",\"c\":\"s-1.safetensors\"}}";

static void dir_of_one_file(void) {
    make_dir("one");
    write_st_in("one", "model.safetensors", shard1, 12);
    moe_st_dir d;
    CHECK_OK(moe_st_dir_open(&d, tmp_path("one")));
    CHECK_EQ(d.n_files, 1);
    CHECK_EQ(d.n_tensors, 2);
    const moe_tensor *c = moe_st_dir_find(&d, "c");
    CHECK(c && c->type == MOE_DTYPE_BF16 && c->bytes == 4);
    CHECK(moe_st_dir_find(&d, "b") == NULL);
    moe_st_dir_close(&d);
    CHECK_STATUS(moe_st_dir_open(&d, tmp_path("nowhere")), MOE_ERR_IO);
    CHECK_ERROR_MENTIONS("no model.safetensors");
}

static void dir_of_shards(void) {
    make_dir("sharded");
    write_st_in("sharded", "s-1.safetensors", shard1, 12);
    write_st_in("sharded", "s-2.safetensors", shard2, 6);
    write_in("sharded", "model.safetensors.index.json", index_ok);
    moe_st_dir d;
    CHECK_OK(moe_st_dir_open(&d, tmp_path("sharded")));
    CHECK_EQ(d.n_files, 2);
    CHECK_EQ(d.n_tensors, 3);
    for (uint64_t i = 1; i < d.n_tensors; i++) CHECK(strcmp(d.tensors[i - 1]->name, d.tensors[i]->name) < 0);
    const moe_tensor *b = moe_st_dir_find(&d, "b");
    CHECK(b && b->type == MOE_DTYPE_F16 && b->n_elems == 3 && strstr(b->file, "s-2.safetensors"));
    CHECK(moe_st_dir_find(&d, "a") && strstr(moe_st_dir_find(&d, "a")->file, "s-1.safetensors"));
    moe_st_dir_close(&d);
    moe_st_dir_close(&d);
}

/* An index that disagrees with its shards must be refused, naming what. */
static void dir_refusals(void) {
    static const struct {
        const char *index, *what;
        moe_status want;
    } cases[] = {
        {"{\"weight_map\":{\"a\":\"s-1.safetensors\",\"b\":\"s-2.safetensors\"}}",
         "tensor \"c\" of", MOE_ERR_PARSE},
        {"{\"weight_map\":{\"a\":\"s-1.safetensors\",\"b\":\"s-1.safetensors\",\"c\":\"s-1.safetensors\"}}",
         "tensor \"b\" is not in", MOE_ERR_PARSE},
        {"{\"weight_map\":{\"a\":\"s-3.safetensors\"}}", "s-3.safetensors: cannot open", MOE_ERR_IO},
        {"{\"weight_map\":{\"a\":\"../s-1.safetensors\"}}", "must name a file in the directory", MOE_ERR_PARSE},
        {"{\"weight_map\":{\"a\":7}}", "must name a file in the directory", MOE_ERR_PARSE},
        {"{\"weight_map\":{}}", "\"weight_map\" must be a non-empty object", MOE_ERR_PARSE},
        {"{\"metadata\":{}}", "\"weight_map\" must be a non-empty object", MOE_ERR_PARSE},
        {"{\"weight_map\":{\"a\":\"s-1.safetensors\",}}", "index.json:1:", MOE_ERR_PARSE},
    };
    make_dir("bad");
    write_st_in("bad", "s-1.safetensors", shard1, 12);
    write_st_in("bad", "s-2.safetensors", shard2, 6);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_in("bad", "model.safetensors.index.json", cases[i].index);
        moe_st_dir d;
        CHECK_STATUS(moe_st_dir_open(&d, tmp_path("bad")), cases[i].want);
        CHECK_ERROR_MENTIONS(cases[i].what);
        CHECK(d.files == NULL && d.tensors == NULL);
    }
    /* A truncated shard is named. */
    write_in("bad", "model.safetensors.index.json", index_ok);
    char p[600];
    snprintf(p, sizeof p, "%s/bad/s-2.safetensors", tmpdir);
    CHECK(truncate(p, 20) == 0);
    moe_st_dir d;
    CHECK_STATUS(moe_st_dir_open(&d, tmp_path("bad")), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("s-2.safetensors");
}

static void remove_tree(void) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    CHECK(system(cmd) == 0);
}

int main(int argc, char **argv) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/moe-st-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    static const test_case cases[] = {
        TEST_CASE(reads_every_dtype_and_shape),
        TEST_CASE(empty_file_of_no_tensors),
        TEST_CASE(refuses_bad_headers),
        TEST_CASE(refuses_bad_framing),
        TEST_CASE(random_damage_is_refused_or_consistent),
        TEST_CASE(dir_of_one_file),
        TEST_CASE(dir_of_shards),
        TEST_CASE(dir_refusals),
    };
    const int rc = run_tests("safetensors", cases, sizeof cases / sizeof cases[0], argc, argv);
    remove_tree();
    return rc;
}
