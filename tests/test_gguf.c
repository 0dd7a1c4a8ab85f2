/* test_gguf.c - the GGUF reader on files written here: every value type,
 * every supported tensor type (GGUF's block formats included), each
 * refusal, random damage, and a file written by llama.cpp's gguf-py
 * (tests/gen/make_gguf_sample.py); the block scales' NaN/Inf check. */
#define _POSIX_C_SOURCE 200809L
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "harness.h"
#include "quant.h"

#ifndef MOE_TEST_DATA_DIR
#define MOE_TEST_DATA_DIR "tests/data"
#endif

enum { GT_F32 = 0, GT_F16 = 1, GT_Q8_0 = 8, GT_Q4_K = 12, GT_BF16 = 30 };

/* ---- files ---- */

static char tmp_dir[512];
static char tmp_file[600];

static void remove_tmp(void) {
    unlink(tmp_file);
    rmdir(tmp_dir);
}

static const char *tmp_path(void) {
    if (!tmp_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(tmp_dir, sizeof tmp_dir, "%s/moe-gguf-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmp_dir)) {
            perror(tmp_dir);
            exit(1);
        }
        snprintf(tmp_file, sizeof tmp_file, "%s/t.gguf", tmp_dir);
        atexit(remove_tmp);
    }
    return tmp_file;
}

/* ---- a GGUF writer ---- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    uint64_t count; /* key-value pairs or tensor infos written */
} wbuf;

static void w_raw(wbuf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        if (!b->p) exit(1);
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void w_le(wbuf *b, uint64_t v, unsigned bytes) {
    uint8_t d[8];
    for (unsigned k = 0; k < bytes; k++) d[k] = (uint8_t)(v >> (8 * k));
    w_raw(b, d, bytes);
}

static void w_zeros(wbuf *b, size_t n) {
    while (n--) w_le(b, 0, 1);
}

static void w_strn(wbuf *b, const char *s, size_t n) {
    w_le(b, n, 8);
    w_raw(b, s, n);
}

static void w_str(wbuf *b, const char *s) { w_strn(b, s, strlen(s)); }

static void w_key(wbuf *b, const char *key, uint32_t type) {
    w_str(b, key);
    w_le(b, type, 4);
    b->count++;
}

static void w_kv_u32(wbuf *b, const char *key, uint32_t v) {
    w_key(b, key, MOE_GGUF_U32);
    w_le(b, v, 4);
}

static void w_kv_str(wbuf *b, const char *key, const char *v) {
    w_key(b, key, MOE_GGUF_STR);
    w_str(b, v);
}

static void w_arr(wbuf *b, const char *key, uint32_t type, uint64_t n) {
    w_key(b, key, MOE_GGUF_ARR);
    w_le(b, type, 4);
    w_le(b, n, 8);
}

static void w_f32(wbuf *b, float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    w_le(b, u, 4);
}

static void w_f64(wbuf *b, double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    w_le(b, u, 8);
}

static void w_pad(wbuf *b, uint64_t align) {
    while (b->n % align) w_le(b, 0, 1);
}

typedef struct tdesc {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[4]; /* innermost first, as in the file */
    uint64_t offset;
} tdesc;

static uint64_t tbytes(const tdesc *t) {
    uint64_t n = 1;
    for (uint32_t k = 0; k < t->n_dims; k++) n *= t->ne[k];
    const moe_dtype d = moe_quant_from_ggml((int32_t)t->type);
    if (d == MOE_DTYPE_COUNT_ || d == MOE_DTYPE_I8) return n; /* refused before its size matters */
    return n / moe_dtype_block(d) * moe_dtype_block_bytes(d);
}

/* Offsets back to back, each rounded up to the alignment. */
static void layout(tdesc *t, size_t n, uint64_t align) {
    uint64_t at = 0;
    for (size_t i = 0; i < n; i++) {
        t[i].offset = at;
        at = (at + tbytes(&t[i]) + align - 1) / align * align;
    }
}

static void w_tinfo(wbuf *b, const tdesc *t) {
    w_str(b, t->name);
    w_le(b, t->n_dims, 4);
    for (uint32_t k = 0; k < t->n_dims; k++) w_le(b, t->ne[k], 8);
    w_le(b, t->type, 4);
    w_le(b, t->offset, 8);
    b->count++;
}

static uint8_t pattern(size_t tensor, uint64_t k) { return (uint8_t)(tensor * 37 + k * 11 + 1); }

/* Header, pairs, infos, padding, data; returns where the data begins. */
static size_t w_file(wbuf *b, uint32_t version, const wbuf *kvs, const tdesc *t, size_t n, uint64_t align) {
    w_raw(b, "GGUF", 4);
    w_le(b, version, 4);
    w_le(b, n, 8);
    w_le(b, kvs ? kvs->count : 0, 8);
    if (kvs) w_raw(b, kvs->p, kvs->n);
    for (size_t i = 0; i < n; i++) w_tinfo(b, &t[i]);
    w_pad(b, align);
    const size_t data = b->n;
    for (size_t i = 0; i < n; i++) {
        while (b->n < data + t[i].offset) w_le(b, 0, 1);
        for (uint64_t k = 0; k < tbytes(&t[i]); k++) w_le(b, pattern(i, k), 1);
    }
    return data;
}

static moe_status open_buf(const wbuf *b, moe_gguf *g) {
    const char *path = tmp_path();
    FILE *f = fopen(path, "wb");
    if (!f || (b->n && fwrite(b->p, 1, b->n, f) != b->n) || fclose(f)) {
        perror(path);
        exit(1);
    }
    return moe_gguf_open(g, path);
}

static void wfree(wbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- a valid file ---- */

enum { N_TOKENS = 300 };

static tdesc valid_tensors[] = {
    {"token_embd.weight", GT_F32, 2, {8, 5}, 0},
    {"blk.0.ffn_gate_exps.weight", GT_Q8_0, 3, {64, 3, 2}, 0},
    {"blk.0.attn_norm.weight", GT_F32, 1, {8}, 0},
    {"blk.0.ffn_down_exps.weight", GT_BF16, 3, {4, 6, 2}, 0},
    {"output.weight", GT_F16, 2, {8, 5}, 0},
    {"blk.1.four_d", GT_F16, 4, {2, 3, 4, 5}, 0},
    {"blk.1.empty", GT_F32, 2, {0, 3}, 0},
    {"blk.1.q8", GT_Q8_0, 1, {32}, 0},
};
enum { N_VALID = sizeof valid_tensors / sizeof valid_tensors[0] };

static void token(char *s, size_t cap, uint32_t i, size_t *len) {
    if (i == 0) *len = 0;
    else if (i == 1) memcpy(s, "a\0b", *len = 3);
    else *len = (size_t)snprintf(s, cap, "tok%u", i);
}

static void valid_kvs(wbuf *kv, uint32_t n_tokens, uint32_t align) {
    w_kv_str(kv, "general.architecture", "qwen3moe");
    w_kv_u32(kv, "qwen3moe.block_count", 2);
    if (align) w_kv_u32(kv, "general.alignment", align);
    w_key(kv, "t.u8", MOE_GGUF_U8), w_le(kv, 200, 1);
    w_key(kv, "t.i8", MOE_GGUF_I8), w_le(kv, (uint8_t)-5, 1);
    w_key(kv, "t.u16", MOE_GGUF_U16), w_le(kv, 65000, 2);
    w_key(kv, "t.i16", MOE_GGUF_I16), w_le(kv, (uint16_t)-30000, 2);
    w_key(kv, "t.i32", MOE_GGUF_I32), w_le(kv, (uint32_t)-2000000000, 4);
    w_key(kv, "t.f32", MOE_GGUF_F32), w_f32(kv, 1.5f);
    w_key(kv, "t.bool", MOE_GGUF_BOOL), w_le(kv, 1, 1);
    w_key(kv, "t.u64", MOE_GGUF_U64), w_le(kv, (1ull << 40) + 3, 8);
    w_key(kv, "t.i64", MOE_GGUF_I64), w_le(kv, (uint64_t)-(1ll << 40), 8);
    w_key(kv, "t.f64", MOE_GGUF_F64), w_f64(kv, -2.25);
    w_arr(kv, "tokenizer.ggml.tokens", MOE_GGUF_STR, n_tokens);
    for (uint32_t i = 0; i < n_tokens; i++) {
        char s[32];
        size_t len;
        token(s, sizeof s, i, &len);
        w_strn(kv, s, len);
    }
    w_arr(kv, "tokenizer.ggml.scores", MOE_GGUF_F32, n_tokens);
    for (uint32_t i = 0; i < n_tokens; i++) w_f32(kv, -0.5f * (float)i);
    w_arr(kv, "tokenizer.ggml.token_type", MOE_GGUF_I32, n_tokens);
    for (uint32_t i = 0; i < n_tokens; i++) w_le(kv, (uint32_t)((int32_t)(i % 3) - 1), 4);
    w_arr(kv, "t.empty", MOE_GGUF_U8, 0);
    w_arr(kv, "t.bools", MOE_GGUF_BOOL, 3);
    w_le(kv, 1, 1), w_le(kv, 0, 1), w_le(kv, 1, 1);
    w_arr(kv, "t.u16s", MOE_GGUF_U16, 2);
    w_le(kv, 7, 2), w_le(kv, 65535, 2);
    w_arr(kv, "t.f64s", MOE_GGUF_F64, 2);
    w_f64(kv, 0.5), w_f64(kv, -1e300);
}

/* A valid file; *data = where its data section begins. */
static void make_valid(wbuf *b, uint32_t version, uint32_t n_tokens, uint32_t align, size_t *data) {
    wbuf kv = {0};
    valid_kvs(&kv, n_tokens, align);
    layout(valid_tensors, N_VALID, align ? align : 32);
    const size_t d = w_file(b, version, &kv, valid_tensors, N_VALID, align ? align : 32);
    if (data) *data = d;
    wfree(&kv);
}

static void check_tensors(const moe_gguf *g, size_t data) {
    CHECK_EQ(g->n_tensors, N_VALID);
    CHECK_EQ(g->data_offset, data);
    for (size_t i = 1; i < g->n_tensors; i++) CHECK(strcmp(g->tensors[i - 1].name, g->tensors[i].name) < 0);
    for (size_t i = 0; i < N_VALID; i++) {
        const tdesc *d = &valid_tensors[i];
        const moe_tensor *t = moe_gguf_find(g, d->name);
        CHECK(t != NULL);
        if (!t) continue;
        CHECK_EQ(t->n_dims, d->n_dims);
        for (uint32_t k = 0; k < d->n_dims; k++) CHECK_EQ(t->shape[k], d->ne[d->n_dims - 1 - k]);
        for (uint32_t k = d->n_dims; k < MOE_TENSOR_MAX_DIMS; k++) CHECK_EQ(t->shape[k], 1);
        CHECK_EQ(t->bytes, tbytes(d));
        CHECK(t->data == g->file.data + data + d->offset);
        CHECK(!strcmp(t->file, g->file.path));
        int same = 1;
        for (uint64_t k = 0; k < t->bytes; k++) same &= ((const uint8_t *)t->data)[k] == pattern(i, k);
        CHECK(same);
    }
    CHECK_EQ(moe_gguf_find(g, "token_embd.weight")->type, MOE_DTYPE_F32);
    CHECK_EQ(moe_gguf_find(g, "output.weight")->type, MOE_DTYPE_F16);
    CHECK_EQ(moe_gguf_find(g, "blk.0.ffn_down_exps.weight")->type, MOE_DTYPE_BF16);
    CHECK_EQ(moe_gguf_find(g, "blk.0.ffn_gate_exps.weight")->type, MOE_DTYPE_Q8_0);
    CHECK_EQ(moe_gguf_find(g, "blk.1.four_d")->n_elems, 120);
    CHECK(moe_gguf_find(g, "nope") == NULL);
    CHECK(moe_gguf_find(g, "") == NULL);
}

static void check_scalars(const moe_gguf *g) {
    const moe_gguf_kv *kv = moe_gguf_get(g, "t.u8");
    CHECK(kv && kv->type == MOE_GGUF_U8 && kv->v.u == 200);
    CHECK((kv = moe_gguf_get(g, "t.i8")) && kv->type == MOE_GGUF_I8 && kv->v.i == -5);
    CHECK((kv = moe_gguf_get(g, "t.u16")) && kv->v.u == 65000);
    CHECK((kv = moe_gguf_get(g, "t.i16")) && kv->v.i == -30000);
    CHECK((kv = moe_gguf_get(g, "t.i32")) && kv->v.i == -2000000000);
    CHECK((kv = moe_gguf_get(g, "t.f32")) && kv->type == MOE_GGUF_F32 && kv->v.f == 1.5);
    CHECK((kv = moe_gguf_get(g, "t.bool")) && kv->type == MOE_GGUF_BOOL && kv->v.b);
    CHECK((kv = moe_gguf_get(g, "t.u64")) && kv->v.u == (1ull << 40) + 3);
    CHECK((kv = moe_gguf_get(g, "t.i64")) && kv->v.i == -(1ll << 40));
    CHECK((kv = moe_gguf_get(g, "t.f64")) && kv->type == MOE_GGUF_F64 && kv->v.f == -2.25);
    CHECK(moe_gguf_get(g, "t.nope") == NULL);
    uint32_t u32 = 0;
    uint64_t u64 = 0;
    float f = 0;
    bool b = false;
    moe_gguf_str s = {0};
    CHECK_OK(moe_gguf_get_u32(g, "qwen3moe.block_count", &u32));
    CHECK_EQ(u32, 2);
    CHECK_OK(moe_gguf_get_u32(g, "t.u16", &u32));
    CHECK_EQ(u32, 65000);
    CHECK_OK(moe_gguf_get_u64(g, "t.u64", &u64));
    CHECK_EQ(u64, (1ull << 40) + 3);
    CHECK_OK(moe_gguf_get_f32(g, "t.f64", &f));
    CHECK_EQ(f, -2.25);
    CHECK_OK(moe_gguf_get_f32(g, "t.i16", &f));
    CHECK_EQ(f, -30000);
    CHECK_OK(moe_gguf_get_bool(g, "t.bool", &b));
    CHECK(b);
    CHECK_OK(moe_gguf_get_str(g, "general.architecture", &s));
    CHECK(moe_gguf_str_eq(s, "qwen3moe"));
    CHECK(!moe_gguf_str_eq(s, "qwen3"));
    CHECK(!moe_gguf_str_eq(s, "qwen3moe2"));
}

static void check_getter_errors(const moe_gguf *g) {
    uint32_t u32;
    uint64_t u64;
    float f;
    bool b;
    moe_gguf_str s;
    const moe_gguf_kv *kv;
    CHECK_STATUS(moe_gguf_get_u32(g, "qwen3moe.expert_count", &u32), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("key \"qwen3moe.expert_count\" is missing");
    CHECK_STATUS(moe_gguf_get_u32(g, "t.i8", &u32), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("-5 is out of range for a u32");
    CHECK_STATUS(moe_gguf_get_u32(g, "t.u64", &u32), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("1099511627779 is out of range");
    CHECK_STATUS(moe_gguf_get_u64(g, "t.i64", &u64), MOE_ERR_PARSE);
    CHECK_STATUS(moe_gguf_get_u32(g, "general.architecture", &u32), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("key \"general.architecture\" is of type string, expected a u32");
    CHECK_STATUS(moe_gguf_get_f32(g, "t.bool", &f), MOE_ERR_PARSE);
    CHECK_STATUS(moe_gguf_get_bool(g, "t.u8", &b), MOE_ERR_PARSE);
    CHECK_STATUS(moe_gguf_get_str(g, "tokenizer.ggml.tokens", &s), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("array of string, expected a string");
    CHECK_STATUS(moe_gguf_get_arr(g, "tokenizer.ggml.scores", MOE_GGUF_I32, &kv), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("array of f32, expected an array of i32");
    CHECK_STATUS(moe_gguf_get_arr(g, "t.u8", MOE_GGUF_TYPE_COUNT_, &kv), MOE_ERR_PARSE);
}

static void check_arrays(const moe_gguf *g, uint32_t n_tokens) {
    const moe_gguf_kv *kv = NULL;
    CHECK_OK(moe_gguf_get_arr(g, "tokenizer.ggml.tokens", MOE_GGUF_STR, &kv));
    if (!kv) return;
    CHECK_EQ(kv->v.arr.n, n_tokens);
    int same = 1;
    for (uint32_t i = 0; i < n_tokens; i++) {
        char want[32];
        size_t len;
        token(want, sizeof want, i, &len);
        const moe_gguf_str s = moe_gguf_arr_str(kv, i);
        same &= s.ptr && s.len == len && !memcmp(s.ptr, want, len);
        same &= s.ptr >= (const char *)g->file.data && s.ptr + s.len <= (const char *)g->file.data + g->file.size;
    }
    CHECK(same);
    CHECK(moe_gguf_arr_str(kv, n_tokens).ptr == NULL);
    CHECK_EQ(moe_gguf_arr_int(kv, 0), 0);
    CHECK_OK(moe_gguf_get_arr(g, "tokenizer.ggml.scores", MOE_GGUF_F32, &kv));
    CHECK(moe_gguf_arr_float(kv, 3) == -1.5);
    CHECK(moe_gguf_arr_str(kv, 0).ptr == NULL);
    CHECK_OK(moe_gguf_get_arr(g, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_COUNT_, &kv));
    CHECK_EQ(kv->v.arr.type, MOE_GGUF_I32);
    CHECK_EQ(moe_gguf_arr_int(kv, 0), -1);
    CHECK_EQ(moe_gguf_arr_int(kv, 2), 1);
    CHECK_EQ(moe_gguf_arr_float(kv, 3), -1.0);
    CHECK_OK(moe_gguf_get_arr(g, "t.empty", MOE_GGUF_U8, &kv));
    CHECK_EQ(kv->v.arr.n, 0);
    CHECK_EQ(moe_gguf_arr_int(kv, 0), 0);
    CHECK_OK(moe_gguf_get_arr(g, "t.bools", MOE_GGUF_BOOL, &kv));
    CHECK(moe_gguf_arr_int(kv, 0) == 1 && moe_gguf_arr_int(kv, 1) == 0 && moe_gguf_arr_int(kv, 2) == 1);
    CHECK_OK(moe_gguf_get_arr(g, "t.u16s", MOE_GGUF_U16, &kv));
    CHECK(moe_gguf_arr_int(kv, 0) == 7 && moe_gguf_arr_int(kv, 1) == 65535 && moe_gguf_arr_float(kv, 1) == 65535);
    CHECK_OK(moe_gguf_get_arr(g, "t.f64s", MOE_GGUF_F64, &kv));
    CHECK(moe_gguf_arr_float(kv, 0) == 0.5 && moe_gguf_arr_float(kv, 1) == -1e300 && moe_gguf_arr_int(kv, 0) == 0);
}

static void valid_v3(void) {
    wbuf b = {0};
    size_t data;
    make_valid(&b, 3, N_TOKENS, 0, &data);
    moe_gguf g;
    CHECK_OK(open_buf(&b, &g));
    CHECK_EQ(g.version, 3);
    CHECK_EQ(g.alignment, 32);
    CHECK_EQ(g.n_kv, 19);
    CHECK(!strcmp(g.kvs[0].key, "general.architecture") && !strcmp(g.kvs[1].key, "qwen3moe.block_count"));
    CHECK_EQ(g.kvs[0].offset, 24);
    check_tensors(&g, data);
    check_scalars(&g);
    check_getter_errors(&g);
    check_arrays(&g, N_TOKENS);
    moe_gguf_close(&g);
    moe_gguf_close(&g);
    wfree(&b);
}

static void valid_v2_and_alignment(void) {
    static const uint32_t aligns[] = {64, 4096, 8};
    for (size_t a = 0; a < 3; a++) {
        wbuf b = {0};
        size_t data;
        make_valid(&b, 2, 5, aligns[a], &data);
        moe_gguf g;
        CHECK_OK(open_buf(&b, &g));
        CHECK_EQ(g.version, 2);
        CHECK_EQ(g.alignment, aligns[a]);
        CHECK_EQ(g.data_offset % aligns[a], 0);
        check_tensors(&g, data);
        check_arrays(&g, 5);
        moe_gguf_close(&g);
        wfree(&b);
    }
}

static void empty_files(void) {
    wbuf b = {0};
    w_file(&b, 3, NULL, NULL, 0, 1);
    moe_gguf g;
    CHECK_OK(open_buf(&b, &g));
    CHECK(g.n_tensors == 0 && g.n_kv == 0 && moe_gguf_find(&g, "x") == NULL && moe_gguf_get(&g, "x") == NULL);
    moe_gguf_close(&g);
    wbuf kv = {0};
    w_kv_u32(&kv, "general.alignment", 256);
    wfree(&b);
    w_file(&b, 3, &kv, NULL, 0, 1); /* no tensors: no padding needed */
    CHECK_OK(open_buf(&b, &g));
    CHECK(g.n_kv == 1 && g.alignment == 256);
    moe_gguf_close(&g);
    moe_gguf_close(NULL);
    memset(&g, 0, sizeof g);
    moe_gguf_close(&g);
    CHECK(moe_gguf_find(NULL, "x") == NULL && moe_gguf_get(NULL, "x") == NULL);
    CHECK_STATUS(moe_gguf_open(NULL, "x"), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_gguf_open(&g, "/nonexistent/x.gguf"), MOE_ERR_IO);
    wfree(&kv);
    wfree(&b);
}

/* ---- refusals ---- */

static void refused_(int line, const wbuf *b, moe_status want, const char *w1, const char *w2) {
    moe_gguf g;
    const moe_status s = open_buf(b, &g);
    const char *e = moe_last_error();
    if (s != want || (w1 && !strstr(e, w1)) || (w2 && !strstr(e, w2)) || !strstr(e, tmp_path()) || g.kvs ||
        g.tensors || g.file.data) {
        fprintf(stderr, "%s:%d: got %s \"%s\", expected %s mentioning \"%s\" and \"%s\"\n", __FILE__, line,
                moe_status_str(s), e, moe_status_str(want), w1 ? w1 : "", w2 ? w2 : "");
        harness_failures++;
    }
    if (s == MOE_OK) moe_gguf_close(&g);
}

#define REFUSED(b, want, w1, w2) refused_(__LINE__, b, want, w1, w2)

/* A file of the pairs written by `kv` and nothing after them. */
static void kv_file(wbuf *b, void (*kv)(wbuf *)) {
    wbuf k = {0};
    kv(&k);
    b->n = 0;
    w_file(b, 3, &k, NULL, 0, 1);
    wfree(&k);
}

static void header_refusals(void) {
    wbuf b = {0};
    REFUSED(&b, MOE_ERR_PARSE, "not a GGUF file", NULL);
    w_raw(&b, "GGUX", 4), w_le(&b, 3, 4), w_zeros(&b, 16);
    REFUSED(&b, MOE_ERR_PARSE, "offset 0: not a GGUF file", NULL);
    static const uint32_t versions[] = {1, 0, 4, 0x7fffffff};
    static const char *const names[] = {"GGUF version 1 is not", "version 0 is not", "version 4 is not",
                                        "version 2147483647 is not"};
    for (int i = 0; i < 4; i++) {
        b.n = 0;
        w_raw(&b, "GGUF", 4), w_le(&b, versions[i], 4), w_zeros(&b, 16);
        REFUSED(&b, MOE_ERR_UNSUPPORTED, names[i], "offset 4:");
    }
    for (uint32_t v = 1; v <= 3; v++) {
        char want[64];
        snprintf(want, sizeof want, "GGUF version %u in big-endian", v);
        b.n = 0;
        w_raw(&b, "GGUF", 4), w_le(&b, __builtin_bswap32(v), 4), w_zeros(&b, 16);
        REFUSED(&b, MOE_ERR_UNSUPPORTED, want, NULL);
    }
    b.n = 0;
    w_raw(&b, "GGUF", 4), w_le(&b, 3, 4), w_le(&b, 0, 4);
    REFUSED(&b, MOE_ERR_PARSE, "offset 8: the number of tensors (8 bytes) runs past the end", NULL);
    b.n = 0;
    w_raw(&b, "GGUF", 4), w_le(&b, 3, 4), w_le(&b, 0, 8), w_le(&b, 1ull << 60, 8), w_zeros(&b, 64);
    REFUSED(&b, MOE_ERR_PARSE, "offset 16: 1152921504606846976 key-value pairs cannot fit", NULL);
    b.n = 0;
    w_raw(&b, "GGUF", 4), w_le(&b, 3, 4), w_le(&b, 3, 8), w_le(&b, 0, 8), w_zeros(&b, 80);
    REFUSED(&b, MOE_ERR_PARSE, "3 tensors and 0 key-value pairs cannot fit", NULL);
    b.n = 0;
    w_raw(&b, "GGUF", 4), w_le(&b, 3, 4), w_le(&b, 0, 8), w_le(&b, 2, 8), w_zeros(&b, 20);
    REFUSED(&b, MOE_ERR_PARSE, "2 key-value pairs cannot fit", NULL);
    wfree(&b);
}

static void kv_unknown_type(wbuf *k) { w_key(k, "k", 13), w_le(k, 0, 8); }
static void kv_unknown_elem(wbuf *k) { w_arr(k, "k.arr", 13, 1), w_le(k, 0, 8); }
static void kv_nested(wbuf *k) { w_arr(k, "k.nested", MOE_GGUF_ARR, 1), w_le(k, MOE_GGUF_U8, 4), w_le(k, 0, 8); }
static void kv_bool2(wbuf *k) { w_key(k, "k.bool", MOE_GGUF_BOOL), w_le(k, 2, 1); }
static void kv_bools(wbuf *k) { w_arr(k, "k.bools", MOE_GGUF_BOOL, 3), w_le(k, 0x010201, 3); }
static void kv_long_arr(wbuf *k) { w_arr(k, "k.long", MOE_GGUF_U32, 1000), w_le(k, 0, 8); }
static void kv_long_strs(wbuf *k) { w_arr(k, "k.strs", MOE_GGUF_STR, 3), w_str(k, "a"), w_str(k, "b"), w_le(k, 5, 8); }
static void kv_long_str(wbuf *k) { w_key(k, "k.str", MOE_GGUF_STR), w_le(k, 100, 8), w_raw(k, "short", 5); }
static void kv_cut_value(wbuf *k) { w_key(k, "k.u64", MOE_GGUF_U64), w_le(k, 1, 4); }
static void kv_dup(wbuf *k) { w_kv_u32(k, "k.dup", 1), w_kv_u32(k, "k.other", 2), w_kv_u32(k, "k.dup", 3); }
static void kv_empty_key(wbuf *k) { w_kv_u32(k, "", 1); }
static void kv_nul_key(wbuf *k) { w_strn(k, "a\0b", 3), w_le(k, MOE_GGUF_U8, 4), w_le(k, 0, 1), k->count++; }
static void kv_align48(wbuf *k) { w_kv_u32(k, "general.alignment", 48); }
static void kv_align0(wbuf *k) { w_kv_u32(k, "general.alignment", 0); }
static void kv_align_u64(wbuf *k) { w_key(k, "general.alignment", MOE_GGUF_U64), w_le(k, 32, 8); }

static void kv_refusals(void) {
    wbuf b = {0};
    kv_file(&b, kv_unknown_type);
    REFUSED(&b, MOE_ERR_PARSE, "offset 33: key \"k\": unknown value type 13", NULL);
    kv_file(&b, kv_unknown_elem);
    REFUSED(&b, MOE_ERR_PARSE, "key \"k.arr\": unknown array element type 13", NULL);
    kv_file(&b, kv_nested);
    REFUSED(&b, MOE_ERR_UNSUPPORTED, "key \"k.nested\": arrays of arrays are not supported", NULL);
    kv_file(&b, kv_bool2);
    REFUSED(&b, MOE_ERR_PARSE, "key \"k.bool\": a bool of value 2", NULL);
    kv_file(&b, kv_bools);
    REFUSED(&b, MOE_ERR_PARSE, "key \"k.bools\": element 1 is a bool of value 2", NULL);
    kv_file(&b, kv_long_arr);
    REFUSED(&b, MOE_ERR_PARSE, "key \"k.long\": 1000 array elements cannot fit", NULL);
    kv_file(&b, kv_long_strs);
    REFUSED(&b, MOE_ERR_PARSE, "key \"k.strs\": a string of the array (5 bytes) runs past the end", NULL);
    kv_file(&b, kv_long_str);
    REFUSED(&b, MOE_ERR_PARSE, "key \"k.str\": the string (100 bytes) runs past the end", NULL);
    kv_file(&b, kv_cut_value);
    REFUSED(&b, MOE_ERR_PARSE, "key \"k.u64\": the value (8 bytes) runs past the end", NULL);
    kv_file(&b, kv_dup);
    REFUSED(&b, MOE_ERR_PARSE, "key \"k.dup\": duplicate key (also at offset 24)", NULL);
    kv_file(&b, kv_empty_key);
    REFUSED(&b, MOE_ERR_PARSE, "offset 24: the key of 0 bytes is empty", NULL);
    kv_file(&b, kv_nul_key);
    REFUSED(&b, MOE_ERR_PARSE, "holds a NUL byte", NULL);
    kv_file(&b, kv_align48);
    REFUSED(&b, MOE_ERR_PARSE, "key \"general.alignment\": 48 is not a power of two", NULL);
    kv_file(&b, kv_align0);
    REFUSED(&b, MOE_ERR_PARSE, "key \"general.alignment\": 0 is not a power of two", NULL);
    kv_file(&b, kv_align_u64);
    REFUSED(&b, MOE_ERR_PARSE, "key \"general.alignment\": must be a u32 power of two, not of type u64", NULL);
    wfree(&b);
}

/* A file of tensor infos and no data. */
static void infos_only(wbuf *b, const tdesc *t, size_t n) {
    b->n = 0;
    w_raw(b, "GGUF", 4), w_le(b, 3, 4), w_le(b, n, 8), w_le(b, 0, 8);
    for (size_t i = 0; i < n; i++) w_tinfo(b, &t[i]);
}

/* A file of the tensors t[0..n), laid out (unless `keep`) and aligned to 32. */
static void tensors_file(wbuf *b, tdesc *t, size_t n, bool keep) {
    if (!keep) layout(t, n, 32);
    b->n = 0;
    w_file(b, 3, NULL, t, n, 32);
}

static void tensor_refusals(void) {
    wbuf b = {0};
    tdesc t[2] = {{"blk.0.ffn_gate_exps.weight", 16, 3, {256, 4, 2}, 0}, {"b", GT_F32, 1, {8}, 0}};
    tensors_file(&b, t, 1, false);
    REFUSED(&b, MOE_ERR_UNSUPPORTED, "offset 86: tensor \"blk.0.ffn_gate_exps.weight\": ggml type iq2_xxs is not "
            "supported (supported: f32, f16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl, "
            "iq4_xs, bf16, mxfp4)", NULL);
    /* The IQ1/IQ2/IQ3 codebooks, TQ, NVFP4, ggml's activation blocks and
     * integer types are named; ids ggml never had or removed are unknown. */
    static const struct { uint32_t type; const char *want; } types[] = {
        {17, "type iq2_xs is not"}, {18, "type iq3_xxs is not"}, {19, "type iq1_s is not"},
        {21, "type iq3_s is not"},  {22, "type iq2_s is not"},   {29, "type iq1_m is not"},
        {34, "type tq1_0 is not"},  {35, "type tq2_0 is not"},   {40, "type nvfp4 is not"},
        {9, "type q8_1 is not"},    {15, "type q8_K is not"},    {28, "type f64 is not"},
        {24, "type i8 is not"},     {4, "unknown ggml type 4"},  {31, "unknown ggml type 31"},
        {1000, "unknown ggml type 1000"}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        t[0].type = types[i].type;
        tensors_file(&b, t, 1, false);
        REFUSED(&b, types[i].want[0] == 'u' ? MOE_ERR_PARSE : MOE_ERR_UNSUPPORTED, types[i].want,
                "tensor \"blk.0.ffn_gate_exps.weight\"");
    }
    t[0] = (tdesc){"k", GT_Q4_K, 2, {128, 2}, 0};
    tensors_file(&b, t, 1, false);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"k\": rows of 128 elements are not a whole number of q4_K blocks (256)", NULL);
    /* A tensor whose bytes in the file disagree with its type and shape:
     * q4_0 [64] is 36 bytes, and the next tensor begins 128 bytes in. */
    t[0] = (tdesc){"a", 2, 1, {64}, 0};
    t[1] = (tdesc){"b", GT_F32, 1, {8}, 128};
    tensors_file(&b, t, 2, true);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"b\": data begins at byte 128 of the data section, 92 bytes after the end of "
            "tensor \"a\" (bytes 0..36 by its type and shape): that tensor's size disagrees", NULL);
    t[0].offset = 64;
    t[1].offset = 128;
    tensors_file(&b, t, 2, true);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"a\": data begins at byte 64 of the data section, not at its start", NULL);
    t[1] = (tdesc){"b", GT_F32, 1, {8}, 0};
    t[0] = (tdesc){"q", GT_Q8_0, 2, {48, 2}, 0};
    tensors_file(&b, t, 1, false);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"q\": rows of 48 elements are not a whole number of q8_0 blocks (32)", NULL);
    t[0] = (tdesc){"big", GT_F32, 4, {1ull << 20, 1ull << 20, 1ull << 20, 1ull << 20}, 0};
    infos_only(&b, t, 1);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"big\": the number of elements overflows", NULL);
    t[0] = (tdesc){"big", GT_F32, 2, {1ull << 31, 1ull << 31}, 0};
    infos_only(&b, t, 1);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"big\": the size in bytes overflows", NULL);
    t[0] = (tdesc){"d0", GT_F32, 0, {0}, 0};
    infos_only(&b, t, 1);
    w_zeros(&b, 32);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"d0\": 0 dimensions (1 to 4 allowed)", NULL);
    t[0] = (tdesc){"a", GT_F32, 1, {8}, 0};
    t[1].name = "a";
    tensors_file(&b, t, 2, false);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"a\": duplicate tensor name (also at offset 24)", NULL);
    t[1] = (tdesc){"b", GT_F32, 1, {8}, 0};
    tensors_file(&b, t, 2, true);
    REFUSED(&b, MOE_ERR_PARSE, "overlaps tensor", "(bytes 0..32)");
    t[1].offset = 16;
    tensors_file(&b, t, 2, true);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"b\": data offset 16 is not a multiple of the alignment (32)", NULL);
    tensors_file(&b, t, 2, false);
    b.n -= 1;
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"b\": 32 bytes of data at offset 32 of the data section run past the end",
            NULL);
    t[1].offset = 1ull << 62;
    infos_only(&b, t, 2);
    w_pad(&b, 32);
    w_zeros(&b, 32);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"b\": 32 bytes of data at offset 4611686018427387904", "run past the end");
    infos_only(&b, &t[1], 1);
    REFUSED(&b, MOE_ERR_PARSE, "offset 57: the data section would begin at 64, past the end of the file (57 bytes",
            NULL);
    wfree(&b);
}

/* One tensor of each format common/quant.h defines, read with its size. */
static void every_block_format(void) {
    wbuf b = {0};
    tdesc t[MOE_DTYPE_COUNT_];
    char names[MOE_DTYPE_COUNT_][16];
    size_t n = 0;
    for (int d = 0; d < MOE_DTYPE_COUNT_; d++) {
        const moe_quant_format *f = moe_quant_format_of((moe_dtype)d);
        if (f->ggml_type < 0) continue;
        snprintf(names[n], sizeof names[n], "t.%s", f->name);
        t[n] = (tdesc){names[n], (uint32_t)f->ggml_type, 2, {f->block * 2, 3}, 0};
        n++;
    }
    tensors_file(&b, t, n, false);
    moe_gguf g;
    CHECK_OK(open_buf(&b, &g));
    CHECK_EQ(g.n_tensors, n);
    for (size_t i = 0; i < n; i++) {
        const moe_tensor *x = moe_gguf_find(&g, names[i]);
        const moe_dtype d = moe_quant_from_ggml((int32_t)t[i].type);
        CHECK(x && x->type == d && x->shape[0] == 3 && x->shape[1] == 2 * moe_dtype_block(d) &&
              x->bytes == 6 * moe_dtype_block_bytes(d));
    }
    moe_gguf_close(&g);
    wfree(&b);
}

/* moe_blocks_bad_scale: f16 scales (and mins) with every exponent bit set,
 * mxfp4's exponent 255; finite extremes pass. */
static void bad_scales(void) {
    static const struct { moe_dtype t; size_t at; uint16_t bits; bool bad; } cases[] = {
        {MOE_DTYPE_Q4_0, 0, 0x7e00, true},  {MOE_DTYPE_Q4_0, 0, 0x7c00, true},  {MOE_DTYPE_Q4_0, 0, 0xfc00, true},
        {MOE_DTYPE_Q4_0, 0, 0x7bff, false}, {MOE_DTYPE_Q4_0, 0, 0xfbff, false}, {MOE_DTYPE_Q4_0, 0, 0x0001, false},
        {MOE_DTYPE_Q4_1, 2, 0x7c01, true},  {MOE_DTYPE_Q5_1, 2, 0xfe00, true},  {MOE_DTYPE_Q8_0, 0, 0x7c00, true},
        {MOE_DTYPE_Q2_K, 80, 0x7c00, true}, {MOE_DTYPE_Q2_K, 82, 0x7c00, true}, {MOE_DTYPE_Q2_K, 0, 0xffff, false},
        {MOE_DTYPE_Q3_K, 108, 0x7e00, true}, {MOE_DTYPE_Q4_K, 2, 0x7c00, true}, {MOE_DTYPE_Q5_K, 0, 0xfc00, true},
        {MOE_DTYPE_Q6_K, 208, 0x7c00, true}, {MOE_DTYPE_Q6_K, 0, 0xffff, false}, {MOE_DTYPE_IQ4_NL, 0, 0x7c00, true},
        {MOE_DTYPE_IQ4_XS, 0, 0x7e00, true}, {MOE_DTYPE_IQ4_XS, 2, 0xffff, false}, {MOE_DTYPE_Q5_0, 0, 0x7c00, true},
        {MOE_DTYPE_MXFP4, 0, 0x00ff, true}, {MOE_DTYPE_MXFP4, 0, 0x00fe, false}, {MOE_DTYPE_MXFP4, 1, 0xffff, false},
    };
    uint8_t blocks[5 * 210];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const size_t bb = moe_dtype_block_bytes(cases[i].t);
        memset(blocks, 0, sizeof blocks);
        CHECK_EQ(moe_blocks_bad_scale(cases[i].t, blocks, 5), 5);
        uint8_t *at = blocks + 3 * bb + cases[i].at;
        at[0] = (uint8_t)cases[i].bits;
        if (cases[i].t != MOE_DTYPE_MXFP4 || cases[i].at == 1) at[1] = (uint8_t)(cases[i].bits >> 8);
        CHECK_EQ(moe_blocks_bad_scale(cases[i].t, blocks, 5), cases[i].bad ? 3u : 5u);
        CHECK_EQ(moe_blocks_bad_scale(cases[i].t, blocks, 3), 3);
    }
    float f[64] = {1};
    CHECK_EQ(moe_blocks_bad_scale(MOE_DTYPE_F32, f, 64), 64);
}

static void five_dims(void) {
    wbuf b = {0};
    w_raw(&b, "GGUF", 4), w_le(&b, 3, 4), w_le(&b, 1, 8), w_le(&b, 0, 8);
    w_str(&b, "five"), w_le(&b, 5, 4);
    for (int k = 0; k < 5; k++) w_le(&b, 1, 8);
    w_le(&b, GT_F32, 4), w_le(&b, 0, 8), w_pad(&b, 32), w_le(&b, 0, 8);
    REFUSED(&b, MOE_ERR_PARSE, "offset 36: tensor \"five\": 5 dimensions (1 to 4 allowed)", NULL);
    wfree(&b);
}

/* With alignment 1 a tensor may start at any byte; f32 data must still be 4-aligned. */
static void misaligned_data(void) {
    wbuf kv = {0}, b = {0};
    w_kv_u32(&kv, "general.alignment", 1);
    tdesc t = {"f", GT_F32, 1, {2}, 0};
    const size_t data = w_file(&b, 3, &kv, &t, 1, 1);
    t.offset = data % 4 == 3 ? 0 : 1;
    b.n = 0;
    w_file(&b, 3, &kv, &t, 1, 1);
    REFUSED(&b, MOE_ERR_PARSE, "tensor \"f\": f32 data at file offset", "is misaligned");
    t.offset = (4 - data % 4) % 4;
    b.n = 0;
    w_file(&b, 3, &kv, &t, 1, 1);
    moe_gguf g;
    CHECK_OK(open_buf(&b, &g));
    CHECK(g.n_tensors == 1 && (uintptr_t)g.tensors[0].data % 4 == 0);
    moe_gguf_close(&g);
    wfree(&kv);
    wfree(&b);
}

/* ---- random damage ---- */

/* What a successful open promises: everything inside the map, names sorted. */
static bool sane(const moe_gguf *g) {
    const uint8_t *lo = g->file.data, *hi = lo + g->file.size;
    bool ok = true;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const moe_tensor *t = &g->tensors[i];
        ok &= (const uint8_t *)t->data >= lo && t->bytes <= (uint64_t)(hi - (const uint8_t *)t->data);
        ok &= i == 0 || strcmp(g->tensors[i - 1].name, t->name) < 0;
        ok &= moe_gguf_find(g, t->name) == t;
    }
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const moe_gguf_kv *kv = &g->kvs[i];
        ok &= moe_gguf_get(g, kv->key) == kv;
        if (kv->type == MOE_GGUF_STR) ok &= (const uint8_t *)kv->v.str.ptr >= lo && kv->v.str.len <=
                                            (uint64_t)(hi - (const uint8_t *)kv->v.str.ptr);
        for (uint64_t k = 0; kv->type == MOE_GGUF_ARR && k < kv->v.arr.n; k++) {
            const moe_gguf_str s = moe_gguf_arr_str(kv, k);
            if (kv->v.arr.type == MOE_GGUF_STR)
                ok &= (const uint8_t *)s.ptr >= lo && s.len <= (uint64_t)(hi - (const uint8_t *)s.ptr);
            else (void)moe_gguf_arr_float(kv, k);
        }
    }
    return ok;
}

static void damage(wbuf *b, const wbuf *base, size_t header, moe_rng *r) {
    b->n = 0;
    w_raw(b, base->p, base->n);
    const uint32_t n = 1 + moe_rng_below(r, 4);
    for (uint32_t k = 0; k < n && b->n; k++) {
        const uint32_t where = moe_rng_below(r, 4) ? (uint32_t)header : (uint32_t)b->n;
        const size_t at = moe_rng_below(r, where);
        switch (moe_rng_below(r, 5)) {
        case 0: b->p[at] ^= (uint8_t)(1u << moe_rng_below(r, 8)); break;
        case 1: b->p[at] = (uint8_t)moe_rng_next(r); break;
        case 2: b->p[at] = moe_rng_below(r, 2) ? 0xff : 0; break;
        case 3: b->p[at] = (uint8_t)(b->p[at] + 1); break;
        default: b->n = at; break;
        }
    }
}

static void fuzz(void) {
    wbuf base = {0}, b = {0};
    size_t data;
    make_valid(&base, 3, 20, 0, &data);
    moe_rng r = {20240601};
    int opened = 0, refused = 0, bad = 0;
    for (int i = 0; i < 4000; i++) {
        damage(&b, &base, data, &r);
        moe_gguf g;
        const moe_status s = open_buf(&b, &g);
        if (s == MOE_OK) {
            opened++;
            bad += !sane(&g);
            moe_gguf_close(&g);
        } else {
            refused++;
            bad += (s != MOE_ERR_PARSE && s != MOE_ERR_UNSUPPORTED) || !strstr(moe_last_error(), tmp_path());
            bad += g.kvs != NULL || g.tensors != NULL || g.pool != NULL || g.file.data != NULL;
        }
    }
    printf("fuzz: %d opened, %d refused\n", opened, refused);
    CHECK_EQ(bad, 0);
    CHECK(opened > 100 && refused > 1000);
    wfree(&base);
    wfree(&b);
}

/* ---- a file written by llama.cpp's gguf-py ---- */

static float sample_value(uint64_t i) { return (float)((int)(i * 7 % 17) - 8) / 8.0f; }

static void check_sample_tensors(const moe_gguf *g) {
    const moe_tensor *t = moe_gguf_find(g, "blk.0.attn_norm.weight");
    CHECK(t && t->type == MOE_DTYPE_F32 && t->n_dims == 1 && t->shape[0] == 64);
    for (uint64_t i = 0; t && i < 64; i++) CHECK_EQ(((const float *)t->data)[i], sample_value(i));
    t = moe_gguf_find(g, "token_embd.weight");
    CHECK(t && t->type == MOE_DTYPE_F16 && t->n_dims == 2 && t->shape[0] == 6 && t->shape[1] == 32);
    for (uint64_t i = 0; t && i < t->n_elems; i++)
        CHECK_EQ(moe_f16_to_f32(((const uint16_t *)t->data)[i]), sample_value(i));
    t = moe_gguf_find(g, "output.weight");
    CHECK(t && t->type == MOE_DTYPE_BF16 && t->shape[0] == 3 && t->shape[1] == 32);
    for (uint64_t i = 0; t && i < t->n_elems; i++)
        CHECK_EQ(moe_bf16_to_f32(((const uint16_t *)t->data)[i]), sample_value(i));
    t = moe_gguf_find(g, "blk.0.ffn_gate_exps.weight");
    CHECK(t && t->type == MOE_DTYPE_Q8_0 && t->n_dims == 3 && t->shape[0] == 2 && t->shape[1] == 4 &&
          t->shape[2] == 64 && t->bytes == 512 / 32 * 34);
    for (uint64_t blk = 0; t && blk < t->n_elems / 32; blk++) {
        const uint8_t *p = (const uint8_t *)t->data + blk * 34;
        const float d = moe_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
        for (uint64_t k = 0; k < 32; k++) CHECK_NEAR(d * (float)(int8_t)p[2 + k], sample_value(blk * 32 + k), 0.01);
    }
}

static void pygguf_sample(void) {
    const char *path = MOE_TEST_DATA_DIR "/gguf/pygguf-sample.gguf";
    moe_gguf g;
    CHECK_OK(moe_gguf_open(&g, path));
    if (!g.file.data) return;
    CHECK_EQ(g.version, 3);
    CHECK_EQ(g.n_tensors, 4);
    moe_gguf_str s;
    uint32_t u32;
    uint64_t u64;
    float f;
    bool b = true;
    CHECK(moe_gguf_get_str(&g, "general.architecture", &s) == MOE_OK && moe_gguf_str_eq(s, "qwen3moe"));
    CHECK(moe_gguf_get_str(&g, "tokenizer.ggml.model", &s) == MOE_OK && moe_gguf_str_eq(s, "gpt2"));
    CHECK(moe_gguf_get_u32(&g, "qwen3moe.block_count", &u32) == MOE_OK && u32 == 2);
    CHECK(moe_gguf_get_u64(&g, "qwen3moe.context_length", &u64) == MOE_OK && u64 == 40960);
    CHECK(moe_gguf_get_f32(&g, "qwen3moe.rope.freq_base", &f) == MOE_OK && f == 1e6f);
    CHECK(moe_gguf_get_bool(&g, "tokenizer.ggml.add_bos_token", &b) == MOE_OK && !b);
    CHECK(moe_gguf_get(&g, "sample.negative") && moe_gguf_get(&g, "sample.negative")->v.i == -7);
    CHECK(moe_gguf_get_f32(&g, "sample.f64", &f) == MOE_OK && f == -0.125f);
    const moe_gguf_kv *kv = NULL;
    CHECK_OK(moe_gguf_get_arr(&g, "tokenizer.ggml.tokens", MOE_GGUF_STR, &kv));
    CHECK(kv && kv->v.arr.n == 5 && moe_gguf_str_eq(moe_gguf_arr_str(kv, 2), "\xc4\xa0the") &&
          moe_gguf_str_eq(moe_gguf_arr_str(kv, 3), "") && moe_gguf_str_eq(moe_gguf_arr_str(kv, 4), "<|im_end|>"));
    CHECK_OK(moe_gguf_get_arr(&g, "tokenizer.ggml.scores", MOE_GGUF_F32, &kv));
    CHECK(kv && moe_gguf_arr_float(kv, 2) == -2.5 && moe_gguf_arr_float(kv, 4) == 0.25);
    CHECK_OK(moe_gguf_get_arr(&g, "tokenizer.ggml.token_type", MOE_GGUF_I32, &kv));
    CHECK(kv && moe_gguf_arr_int(kv, 0) == 1 && moe_gguf_arr_int(kv, 3) == 3);
    check_sample_tensors(&g);
    moe_gguf_close(&g);
}

TEST_MAIN("gguf", TEST_CASE(valid_v3), TEST_CASE(valid_v2_and_alignment), TEST_CASE(empty_files),
          TEST_CASE(header_refusals), TEST_CASE(kv_refusals), TEST_CASE(tensor_refusals),
          TEST_CASE(every_block_format), TEST_CASE(bad_scales), TEST_CASE(five_dims),
          TEST_CASE(misaligned_data), TEST_CASE(fuzz), TEST_CASE(pygguf_sample))
