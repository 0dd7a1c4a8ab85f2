/* gguf.c - GGUF files (see gguf.h). */
#define _POSIX_C_SOURCE 200809L
#include "gguf.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "quant.h"

enum {
    DEFAULT_ALIGNMENT = 32,
    MAX_NAME = 65535,    /* the GGUF spec's limit on keys; tensor names share it */
    MIN_KV = 8 + 1 + 4 + 1,              /* key length, a 1-byte key, type, a 1-byte value */
    MIN_TENSOR = 8 + 1 + 4 + 8 + 4 + 8,  /* name length, a 1-byte name, n_dims, one dimension, type, offset */
    POOL_CHUNK = 64 * 1024,
};

struct moe_gguf_chunk {
    struct moe_gguf_chunk *next;
    size_t used, cap;
    char data[];
};

/* Value types: name, and the fewest bytes a value takes in the file. */
static const struct {
    const char *name;
    uint8_t size;
} vtypes[MOE_GGUF_TYPE_COUNT_] = {
    [MOE_GGUF_U8] = {"u8", 1},      [MOE_GGUF_I8] = {"i8", 1},       [MOE_GGUF_U16] = {"u16", 2},
    [MOE_GGUF_I16] = {"i16", 2},    [MOE_GGUF_U32] = {"u32", 4},     [MOE_GGUF_I32] = {"i32", 4},
    [MOE_GGUF_F32] = {"f32", 4},    [MOE_GGUF_BOOL] = {"bool", 1},   [MOE_GGUF_STR] = {"string", 8},
    [MOE_GGUF_ARR] = {"array", 12}, [MOE_GGUF_U64] = {"u64", 8},     [MOE_GGUF_I64] = {"i64", 8},
    [MOE_GGUF_F64] = {"f64", 8},
};

/* ggml's tensor types as ggml names them; gaps are types removed from ggml. */
static const char *const ggml_types[] = {
    [0] = "f32",      [1] = "f16",     [2] = "q4_0",     [3] = "q4_1",     [6] = "q5_0",    [7] = "q5_1",
    [8] = "q8_0",     [9] = "q8_1",    [10] = "q2_K",    [11] = "q3_K",    [12] = "q4_K",   [13] = "q5_K",
    [14] = "q6_K",    [15] = "q8_K",   [16] = "iq2_xxs", [17] = "iq2_xs",  [18] = "iq3_xxs", [19] = "iq1_s",
    [20] = "iq4_nl",  [21] = "iq3_s",  [22] = "iq2_s",   [23] = "iq4_xs",  [24] = "i8",     [25] = "i16",
    [26] = "i32",     [27] = "i64",    [28] = "f64",     [29] = "iq1_m",   [30] = "bf16",   [34] = "tq1_0",
    [35] = "tq2_0",   [39] = "mxfp4",  [40] = "nvfp4",   [41] = "q1_0",
};

const char *moe_gguf_type_name(moe_gguf_type t) {
    return (unsigned)t < MOE_GGUF_TYPE_COUNT_ ? vtypes[t].name : NULL;
}

static bool is_uint(moe_gguf_type t) {
    return t == MOE_GGUF_U8 || t == MOE_GGUF_U16 || t == MOE_GGUF_U32 || t == MOE_GGUF_U64;
}

static bool is_sint(moe_gguf_type t) {
    return t == MOE_GGUF_I8 || t == MOE_GGUF_I16 || t == MOE_GGUF_I32 || t == MOE_GGUF_I64;
}

static bool is_float(moe_gguf_type t) { return t == MOE_GGUF_F32 || t == MOE_GGUF_F64; }

static uint64_t le(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    for (unsigned k = n; k-- > 0;) v = v << 8 | p[k];
    return v;
}

static int64_t to_int(moe_gguf_type t, uint64_t raw) {
    switch (t) {
    case MOE_GGUF_I8: return (int8_t)(uint8_t)raw;
    case MOE_GGUF_I16: return (int16_t)(uint16_t)raw;
    case MOE_GGUF_I32: return (int32_t)(uint32_t)raw;
    default: return (int64_t)raw;
    }
}

static double to_float(moe_gguf_type t, uint64_t raw) {
    if (t == MOE_GGUF_F32) {
        const uint32_t u = (uint32_t)raw;
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    if (t == MOE_GGUF_F64) {
        double d;
        memcpy(&d, &raw, sizeof d);
        return d;
    }
    return is_sint(t) ? (double)to_int(t, raw) : (double)raw;
}

/* ---- reading the map ---- */

typedef struct reader {
    const uint8_t *p;
    uint64_t size, at;
    const char *path;
    const char *kind, *name; /* "key" or "tensor" and its name, for messages; NULL outside one */
} reader;

static moe_status fail(const reader *r, uint64_t at, moe_status s, const char *fmt, ...) MOE_PRINTF(4, 5);

static moe_status fail(const reader *r, uint64_t at, moe_status s, const char *fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (r->name)
        return moe_fail(s, "%s: offset %llu: %s \"%.200s\": %s", r->path, (unsigned long long)at, r->kind, r->name,
                        what);
    return moe_fail(s, "%s: offset %llu: %s", r->path, (unsigned long long)at, what);
}

static void in(reader *r, const char *kind, const char *name) {
    r->kind = kind;
    r->name = name;
}

static moe_status need(const reader *r, uint64_t n, const char *what) {
    if (n <= r->size - r->at) return MOE_OK;
    return fail(r, r->at, MOE_ERR_PARSE, "%s (%llu bytes) runs past the end of the file (%llu bytes; truncated?)",
                what, (unsigned long long)n, (unsigned long long)r->size);
}

static moe_status rd_u32(reader *r, const char *what, uint32_t *out) {
    moe_status s = need(r, 4, what);
    if (s) return s;
    *out = (uint32_t)le(r->p + r->at, 4);
    r->at += 4;
    return MOE_OK;
}

static moe_status rd_u64(reader *r, const char *what, uint64_t *out) {
    moe_status s = need(r, 8, what);
    if (s) return s;
    *out = le(r->p + r->at, 8);
    r->at += 8;
    return MOE_OK;
}

static moe_status rd_str(reader *r, const char *what, moe_gguf_str *out) {
    uint64_t len;
    moe_status s = rd_u64(r, what, &len);
    if (s) return s;
    if ((s = need(r, len, what))) return s;
    *out = (moe_gguf_str){(const char *)r->p + r->at, len};
    r->at += len;
    return MOE_OK;
}

/* `n` items of at least `each` bytes must fit in the rest of the file. */
static moe_status check_count(const reader *r, uint64_t at, uint64_t n, uint64_t each, const char *what) {
    if (n <= (r->size - r->at) / each) return MOE_OK;
    return fail(r, at, MOE_ERR_PARSE, "%llu %s cannot fit in the %llu bytes left in the file (damaged or truncated?)",
                (unsigned long long)n, what, (unsigned long long)(r->size - r->at));
}

/* ---- owned memory ---- */

static char *pool_copy(moe_gguf *g, const char *s, size_t len) {
    struct moe_gguf_chunk *c = g->pool;
    if (!c || c->cap - c->used <= len) {
        const size_t cap = len + 1 > POOL_CHUNK ? len + 1 : POOL_CHUNK;
        if (!(c = malloc(sizeof *c + cap))) return NULL;
        *c = (struct moe_gguf_chunk){g->pool, 0, cap};
        g->pool = c;
    }
    char *d = c->data + c->used;
    memcpy(d, s, len);
    d[len] = '\0';
    c->used += len + 1;
    return d;
}

/* p with room for more than n elements: p itself, a larger copy, or NULL. */
static void *grow(void *p, uint64_t *cap, uint64_t n, size_t elem) {
    if (n < *cap) return p;
    const uint64_t c = *cap ? *cap * 2 : 16;
    if (c > SIZE_MAX / elem) return NULL;
    void *q = realloc(p, (size_t)c * elem);
    if (q) *cap = c;
    return q;
}

static moe_status out_of_memory(const reader *r) {
    return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", r->path);
}

/* A key or tensor name, copied NUL-terminated. */
static moe_status rd_name(moe_gguf *g, reader *r, const char *what, const char **out) {
    const uint64_t at = r->at;
    moe_gguf_str s;
    moe_status st = rd_str(r, what, &s);
    if (st) return st;
    if (!s.len || s.len > MAX_NAME || memchr(s.ptr, 0, s.len))
        return fail(r, at, MOE_ERR_PARSE, "%s of %llu bytes is empty, over %d bytes or holds a NUL byte", what,
                    (unsigned long long)s.len, MAX_NAME);
    return (*out = pool_copy(g, s.ptr, s.len)) ? MOE_OK : out_of_memory(r);
}

/* ---- metadata ---- */

static moe_status rd_scalar(reader *r, moe_gguf_type t, moe_gguf_kv *kv) {
    moe_status s = need(r, vtypes[t].size, "the value");
    if (s) return s;
    const uint64_t raw = le(r->p + r->at, vtypes[t].size);
    if (t == MOE_GGUF_BOOL && raw > 1)
        return fail(r, r->at, MOE_ERR_PARSE, "a bool of value %llu (0 or 1 allowed)", (unsigned long long)raw);
    if (is_uint(t)) kv->v.u = raw;
    else if (is_sint(t)) kv->v.i = to_int(t, raw);
    else if (is_float(t)) kv->v.f = to_float(t, raw);
    else kv->v.b = raw != 0;
    r->at += vtypes[t].size;
    return MOE_OK;
}

/* The strings of an array: checked, then indexed once all are known to fit. */
static moe_status rd_str_elems(reader *r, moe_gguf_kv *kv) {
    const uint64_t n = kv->v.arr.n, start = r->at;
    for (uint64_t i = 0; i < n; i++) {
        moe_gguf_str s;
        moe_status st = rd_str(r, "a string of the array", &s);
        if (st) return st;
    }
    uint64_t *at = malloc((size_t)(n + 1) * sizeof *at);
    if (!at) return out_of_memory(r);
    uint64_t o = 0;
    for (uint64_t i = 0; i < n; i++) {
        at[i] = o;
        o += 8 + le(r->p + start + o, 8);
    }
    at[n] = o;
    kv->v.arr.str_at = at;
    return MOE_OK;
}

static moe_status rd_array(reader *r, moe_gguf_kv *kv) {
    const uint64_t at = r->at;
    uint32_t et;
    uint64_t n;
    moe_status s = rd_u32(r, "the array's element type", &et);
    if (s || (s = rd_u64(r, "the array's length", &n))) return s;
    if (et >= MOE_GGUF_TYPE_COUNT_) return fail(r, at, MOE_ERR_PARSE, "unknown array element type %u", et);
    if (et == MOE_GGUF_ARR) return fail(r, at, MOE_ERR_UNSUPPORTED, "arrays of arrays are not supported");
    if ((s = check_count(r, at, n, vtypes[et].size, "array elements"))) return s;
    kv->v.arr.type = (moe_gguf_type)et;
    kv->v.arr.n = n;
    kv->v.arr.data = r->p + r->at;
    if (et == MOE_GGUF_STR) return rd_str_elems(r, kv);
    for (uint64_t i = 0; et == MOE_GGUF_BOOL && i < n; i++)
        if (kv->v.arr.data[i] > 1)
            return fail(r, r->at + i, MOE_ERR_PARSE, "element %llu is a bool of value %u (0 or 1 allowed)",
                        (unsigned long long)i, (unsigned)kv->v.arr.data[i]);
    r->at += n * vtypes[et].size;
    return MOE_OK;
}

static moe_status rd_kv(moe_gguf *g, reader *r, uint64_t *cap) {
    moe_gguf_kv *kvs = grow(g->kvs, cap, g->n_kv, sizeof *kvs);
    if (!kvs) return out_of_memory(r);
    g->kvs = kvs;
    moe_gguf_kv kv = {.offset = r->at};
    moe_status s = rd_name(g, r, "the key", &kv.key);
    if (s) return s;
    in(r, "key", kv.key);
    uint32_t t;
    if ((s = rd_u32(r, "the value type", &t))) return s;
    if (t >= MOE_GGUF_TYPE_COUNT_) return fail(r, r->at - 4, MOE_ERR_PARSE, "unknown value type %u", t);
    kv.type = (moe_gguf_type)t;
    if (t == MOE_GGUF_STR) s = rd_str(r, "the string", &kv.v.str);
    else if (t == MOE_GGUF_ARR) s = rd_array(r, &kv);
    else s = rd_scalar(r, kv.type, &kv);
    if (s) return s;
    kvs[g->n_kv++] = kv;
    in(r, NULL, NULL);
    return MOE_OK;
}

static int kv_by_key(const void *a, const void *b) {
    return strcmp((*(const moe_gguf_kv *const *)a)->key, (*(const moe_gguf_kv *const *)b)->key);
}

static moe_status index_keys(moe_gguf *g, reader *r) {
    if (!(g->by_key = malloc((size_t)(g->n_kv ? g->n_kv : 1) * sizeof *g->by_key))) return out_of_memory(r);
    for (uint64_t i = 0; i < g->n_kv; i++) g->by_key[i] = &g->kvs[i];
    qsort(g->by_key, g->n_kv, sizeof *g->by_key, kv_by_key);
    for (uint64_t i = 1; i < g->n_kv; i++) {
        const moe_gguf_kv *a = g->by_key[i - 1], *b = g->by_key[i];
        if (strcmp(a->key, b->key)) continue;
        in(r, "key", a->key);
        return fail(r, a->offset > b->offset ? a->offset : b->offset, MOE_ERR_PARSE,
                    "duplicate key (also at offset %llu)", (unsigned long long)(a->offset < b->offset ? a->offset
                                                                                                       : b->offset));
    }
    return MOE_OK;
}

static moe_status rd_alignment(moe_gguf *g, reader *r) {
    const moe_gguf_kv *kv = moe_gguf_get(g, "general.alignment");
    g->alignment = DEFAULT_ALIGNMENT;
    if (!kv) return MOE_OK;
    in(r, "key", kv->key);
    if (kv->type != MOE_GGUF_U32)
        return fail(r, kv->offset, MOE_ERR_PARSE, "must be a u32 power of two, not of type %s", vtypes[kv->type].name);
    if (!kv->v.u || kv->v.u & (kv->v.u - 1))
        return fail(r, kv->offset, MOE_ERR_PARSE, "%llu is not a power of two", (unsigned long long)kv->v.u);
    g->alignment = (uint32_t)kv->v.u;
    in(r, NULL, NULL);
    return MOE_OK;
}

/* ---- tensors ---- */

/* A tensor's info and data range (relative to the data section). */
typedef struct span {
    uint64_t at, begin, end;
    const char *name;
} span;

static int span_by_name(const void *a, const void *b) {
    return strcmp(((const span *)a)->name, ((const span *)b)->name);
}

static int span_by_begin(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int tensor_by_name(const void *a, const void *b) {
    return strcmp(((const moe_tensor *)a)->name, ((const moe_tensor *)b)->name);
}

/* ne[] innermost first into shape[] outermost first; *row = ne[0]. */
static moe_status rd_dims(reader *r, moe_tensor *t, uint64_t *row) {
    const uint64_t at = r->at;
    uint32_t n_dims;
    moe_status s = rd_u32(r, "the number of dimensions", &n_dims);
    if (s) return s;
    if (n_dims < 1 || n_dims > MOE_TENSOR_MAX_DIMS)
        return fail(r, at, MOE_ERR_PARSE, "%u dimensions (1 to %d allowed)", n_dims, MOE_TENSOR_MAX_DIMS);
    t->n_dims = n_dims;
    t->n_elems = 1;
    for (uint32_t k = 0; k < MOE_TENSOR_MAX_DIMS; k++) t->shape[k] = 1;
    for (uint32_t k = 0; k < n_dims; k++) {
        uint64_t ne;
        if ((s = rd_u64(r, "a dimension", &ne))) return s;
        t->shape[n_dims - 1 - k] = ne;
        if (__builtin_mul_overflow(t->n_elems, ne, &t->n_elems) || t->n_elems > INT64_MAX)
            return fail(r, at, MOE_ERR_PARSE, "the number of elements overflows");
    }
    *row = t->shape[n_dims - 1];
    return MOE_OK;
}

/* The ggml types moerun reads: the element types and every block format
 * of common/quant.h (moe_quant_from_ggml), int8 excepted. */
static moe_dtype readable(uint32_t type) {
    const moe_dtype t = type <= INT32_MAX ? moe_quant_from_ggml((int32_t)type) : MOE_DTYPE_COUNT_;
    return t == MOE_DTYPE_I8 ? MOE_DTYPE_COUNT_ : t;
}

static moe_status rd_ggml_type(reader *r, moe_tensor *t) {
    const uint64_t at = r->at;
    uint32_t type;
    moe_status s = rd_u32(r, "the ggml type", &type);
    if (s) return s;
    const moe_dtype dt = readable(type);
    if (dt != MOE_DTYPE_COUNT_) {
        t->type = dt;
        return MOE_OK;
    }
    const char *name = type < sizeof ggml_types / sizeof ggml_types[0] ? ggml_types[type] : NULL;
    if (!name) return fail(r, at, MOE_ERR_PARSE, "unknown ggml type %u", type);
    char list[256] = "";
    size_t len = 0;
    for (uint32_t k = 0; k < sizeof ggml_types / sizeof ggml_types[0] && len < sizeof list; k++)
        if (readable(k) != MOE_DTYPE_COUNT_)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "", ggml_types[k]);
    return fail(r, at, MOE_ERR_UNSUPPORTED, "ggml type %s is not supported (supported: %s)", name, list);
}

/* Bytes a tensor's data must be aligned to: its widest field (f32 4; f16,
 * bf16 and the blocks' f16 scales 2; mxfp4's bytes 1). */
static uint32_t data_alignment(moe_dtype t) {
    if (t == MOE_DTYPE_F32) return 4;
    return t == MOE_DTYPE_MXFP4 ? 1 : 2;
}

static moe_status rd_tensor(moe_gguf *g, reader *r, span *sp) {
    moe_tensor *t = &g->tensors[g->n_tensors];
    *t = (moe_tensor){.file = g->file.path};
    sp->at = r->at;
    moe_status s = rd_name(g, r, "the tensor name", &t->name);
    if (s) return s;
    in(r, "tensor", t->name);
    uint64_t row = 0;
    if ((s = rd_dims(r, t, &row)) || (s = rd_ggml_type(r, t)) || (s = rd_u64(r, "the data offset", &sp->begin)))
        return s;
    const uint64_t block = moe_dtype_block(t->type);
    if (row % block)
        return fail(r, sp->at, MOE_ERR_PARSE, "rows of %llu elements are not a whole number of %s blocks (%llu)",
                    (unsigned long long)row, moe_dtype_name(t->type), (unsigned long long)block);
    if (!moe_tensor_bytes(t->type, t->n_elems, row, &t->bytes))
        return fail(r, sp->at, MOE_ERR_PARSE, "the size in bytes overflows");
    sp->name = t->name;
    g->n_tensors++;
    in(r, NULL, NULL);
    return MOE_OK;
}

/* Points each tensor at its data, which must lie aligned within the file. */
static moe_status place(moe_gguf *g, reader *r, span *sp) {
    const uint64_t size = g->file.size, avail = size - g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        moe_tensor *t = &g->tensors[i];
        in(r, "tensor", t->name);
        const uint64_t b = sp[i].begin, at = g->data_offset + b;
        if (b % g->alignment)
            return fail(r, sp[i].at, MOE_ERR_PARSE, "data offset %llu is not a multiple of the alignment (%u)",
                        (unsigned long long)b, g->alignment);
        if (b > avail || t->bytes > avail - b)
            return fail(r, sp[i].at, MOE_ERR_PARSE, "%llu bytes of data at offset %llu of the data section run past "
                        "the end of the file (%llu bytes; truncated?)", (unsigned long long)t->bytes,
                        (unsigned long long)b, (unsigned long long)size);
        if (at % data_alignment(t->type))
            return fail(r, sp[i].at, MOE_ERR_PARSE, "%s data at file offset %llu is misaligned",
                        moe_dtype_name(t->type), (unsigned long long)at);
        sp[i].end = b + t->bytes;
        t->data = g->file.data + at;
    }
    in(r, NULL, NULL);
    return MOE_OK;
}

static moe_status check_names(const moe_gguf *g, reader *r, span *sp) {
    qsort(sp, g->n_tensors, sizeof *sp, span_by_name);
    for (uint64_t i = 1; i < g->n_tensors; i++) {
        if (strcmp(sp[i - 1].name, sp[i].name)) continue;
        const uint64_t a = sp[i - 1].at, b = sp[i].at;
        in(r, "tensor", sp[i].name);
        return fail(r, a > b ? a : b, MOE_ERR_PARSE, "duplicate tensor name (also at offset %llu)",
                    (unsigned long long)(a < b ? a : b));
    }
    return MOE_OK;
}

/* Tensors must neither overlap nor leave gaps (see below). */
static moe_status check_layout(const moe_gguf *g, reader *r, span *sp) {
    qsort(sp, g->n_tensors, sizeof *sp, span_by_begin);
    const span *last = NULL; /* of those before, the one that ends last */
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        if (sp[i].begin == sp[i].end) continue;
        if (last && sp[i].begin < last->end) {
            in(r, "tensor", sp[i].name);
            return fail(r, sp[i].at, MOE_ERR_PARSE, "data (bytes %llu..%llu of the data section) overlaps tensor "
                        "\"%.200s\" (bytes %llu..%llu)", (unsigned long long)sp[i].begin,
                        (unsigned long long)sp[i].end, last->name, (unsigned long long)last->begin,
                        (unsigned long long)last->end);
        }
        /* Writers put tensors back to back, each padded to the alignment
         * (llama.cpp refuses anything else): a larger gap means a tensor
         * holds more bytes than its type and shape say, which would be
         * read as another type's data. */
        const uint64_t slack = g->alignment > 4 ? g->alignment : 4, end = last ? last->end : 0;
        if (sp[i].begin - end >= slack) {
            in(r, "tensor", sp[i].name);
            if (!last)
                return fail(r, sp[i].at, MOE_ERR_PARSE, "data begins at byte %llu of the data section, not at its "
                            "start: the first tensor's size disagrees with its type and shape, or the file is damaged",
                            (unsigned long long)sp[i].begin);
            return fail(r, sp[i].at, MOE_ERR_PARSE, "data begins at byte %llu of the data section, %llu bytes after "
                        "the end of tensor \"%.200s\" (bytes %llu..%llu by its type and shape): that tensor's size "
                        "disagrees with its type and shape, or the file is damaged", (unsigned long long)sp[i].begin,
                        (unsigned long long)(sp[i].begin - end), last->name, (unsigned long long)last->begin,
                        (unsigned long long)last->end);
        }
        if (!last || sp[i].end > last->end) last = &sp[i];
    }
    return MOE_OK;
}

static moe_status rd_tensors(moe_gguf *g, reader *r, uint64_t n, span **sp) {
    uint64_t cap_t = 0, cap_s = 0;
    for (uint64_t i = 0; i < n; i++) {
        moe_tensor *t = grow(g->tensors, &cap_t, i, sizeof *t);
        if (t) g->tensors = t;
        span *s = t ? grow(*sp, &cap_s, i, sizeof *s) : NULL;
        if (!s) return out_of_memory(r);
        *sp = s;
        moe_status st = rd_tensor(g, r, &s[i]);
        if (st) return st;
    }
    const uint64_t a = g->alignment;
    g->data_offset = (r->at + a - 1) / a * a;
    if (!n) return MOE_OK;
    if (g->data_offset > g->file.size)
        return fail(r, r->at, MOE_ERR_PARSE, "the data section would begin at %llu, past the end of the file (%llu "
                    "bytes; truncated?)", (unsigned long long)g->data_offset, (unsigned long long)g->file.size);
    moe_status st = place(g, r, *sp);
    if (!st) st = check_names(g, r, *sp);
    if (!st) st = check_layout(g, r, *sp);
    if (!st) qsort(g->tensors, g->n_tensors, sizeof *g->tensors, tensor_by_name);
    return st;
}

/* ---- the file ---- */

static moe_status rd_header(reader *r, uint32_t *version, uint64_t *n_tensors, uint64_t *n_kv) {
    if (r->size < 4 || memcmp(r->p, "GGUF", 4))
        return fail(r, 0, MOE_ERR_PARSE, "not a GGUF file (it does not begin with \"GGUF\")");
    r->at = 4;
    moe_status s = rd_u32(r, "the version", version);
    if (s) return s;
    const uint32_t v = *version, swapped = __builtin_bswap32(v);
    if (v != 2 && v != 3 && !(v & 0xffff) && swapped >= 1 && swapped <= 3)
        return fail(r, 4, MOE_ERR_UNSUPPORTED, "GGUF version %u in big-endian byte order is not supported "
                    "(little-endian only)", swapped);
    if (v != 2 && v != 3)
        return fail(r, 4, MOE_ERR_UNSUPPORTED, "GGUF version %u is not supported (supported: 2, 3)", v);
    if ((s = rd_u64(r, "the number of tensors", n_tensors)) || (s = rd_u64(r, "the number of keys", n_kv))) return s;
    if ((s = check_count(r, 16, *n_kv, MIN_KV, "key-value pairs"))) return s;
    if (*n_tensors > (r->size - r->at - *n_kv * MIN_KV) / MIN_TENSOR)
        return fail(r, 8, MOE_ERR_PARSE, "%llu tensors and %llu key-value pairs cannot fit in the %llu bytes left in "
                    "the file (damaged or truncated?)", (unsigned long long)*n_tensors, (unsigned long long)*n_kv,
                    (unsigned long long)(r->size - r->at));
    return MOE_OK;
}

static moe_status rd_file(moe_gguf *g, reader *r, span **sp) {
    uint64_t n_tensors = 0, n_kv = 0, cap = 0;
    moe_status s = rd_header(r, &g->version, &n_tensors, &n_kv);
    for (uint64_t i = 0; i < n_kv && !s; i++) s = rd_kv(g, r, &cap);
    g->infos_offset = r->at;
    if (!s) s = index_keys(g, r);
    if (!s) s = rd_alignment(g, r);
    if (!s) s = rd_tensors(g, r, n_tensors, sp);
    return s;
}

moe_status moe_gguf_open(moe_gguf *g, const char *path) {
    if (!g || !path) return moe_fail(MOE_ERR_INVALID_ARG, "gguf: NULL argument");
    memset(g, 0, sizeof *g);
    moe_status s = moe_map_file(&g->file, path);
    if (s) return s;
    reader r = {.p = g->file.data, .size = g->file.size, .path = g->file.path};
    span *sp = NULL;
    s = rd_file(g, &r, &sp);
    free(sp);
    if (s) moe_gguf_close(g);
    return s;
}

void moe_gguf_close(moe_gguf *g) {
    if (!g) return;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kvs[i].type == MOE_GGUF_ARR) free((void *)g->kvs[i].v.arr.str_at);
    free(g->kvs);
    free(g->tensors);
    free(g->by_key);
    while (g->pool) {
        struct moe_gguf_chunk *next = g->pool->next;
        free(g->pool);
        g->pool = next;
    }
    moe_unmap_file(&g->file);
    memset(g, 0, sizeof *g);
}

/* ---- lookups ---- */

static int find_tensor(const void *key, const void *elem) { return strcmp(key, ((const moe_tensor *)elem)->name); }

const moe_tensor *moe_gguf_find(const moe_gguf *g, const char *name) {
    if (!g || !name || !g->n_tensors) return NULL;
    return bsearch(name, g->tensors, g->n_tensors, sizeof *g->tensors, find_tensor);
}

static int find_key(const void *key, const void *elem) {
    return strcmp(key, (*(const moe_gguf_kv *const *)elem)->key);
}

const moe_gguf_kv *moe_gguf_get(const moe_gguf *g, const char *key) {
    if (!g || !key || !g->n_kv || !g->by_key) return NULL;
    const moe_gguf_kv *const *kv = bsearch(key, g->by_key, g->n_kv, sizeof *g->by_key, find_key);
    return kv ? *kv : NULL;
}

/* The pair `key`; MOE_ERR_PARSE if it is missing. */
static moe_status lookup(const moe_gguf *g, const char *key, const moe_gguf_kv **kv) {
    if (!g || !key) return moe_fail(MOE_ERR_INVALID_ARG, "gguf: NULL argument");
    *kv = moe_gguf_get(g, key);
    if (*kv) return MOE_OK;
    return moe_fail(MOE_ERR_PARSE, "%s: key \"%s\" is missing", g->file.path, key);
}

static moe_status wrong_type(const moe_gguf *g, const moe_gguf_kv *kv, const char *want) {
    return moe_fail(MOE_ERR_PARSE, "%s: offset %llu: key \"%s\" is of type %s%s%s, expected %s", g->file.path,
                    (unsigned long long)kv->offset, kv->key, vtypes[kv->type].name,
                    kv->type == MOE_GGUF_ARR ? " of " : "",
                    kv->type == MOE_GGUF_ARR ? vtypes[kv->v.arr.type].name : "", want);
}

static moe_status get_uint(const moe_gguf *g, const char *key, uint64_t max, const char *want, uint64_t *out) {
    const moe_gguf_kv *kv;
    moe_status s = lookup(g, key, &kv);
    if (s) return s;
    if (!is_uint(kv->type) && !is_sint(kv->type)) return wrong_type(g, kv, want);
    if (is_sint(kv->type) ? kv->v.i < 0 || (uint64_t)kv->v.i > max : kv->v.u > max) {
        char v[32];
        if (is_sint(kv->type)) snprintf(v, sizeof v, "%lld", (long long)kv->v.i);
        else snprintf(v, sizeof v, "%llu", (unsigned long long)kv->v.u);
        return moe_fail(MOE_ERR_PARSE, "%s: offset %llu: key \"%s\": %s is out of range for %s", g->file.path,
                        (unsigned long long)kv->offset, key, v, want);
    }
    *out = is_sint(kv->type) ? (uint64_t)kv->v.i : kv->v.u;
    return MOE_OK;
}

moe_status moe_gguf_get_u32(const moe_gguf *g, const char *key, uint32_t *out) {
    uint64_t v = 0;
    moe_status s = get_uint(g, key, UINT32_MAX, "a u32", &v);
    if (!s) *out = (uint32_t)v;
    return s;
}

moe_status moe_gguf_get_u64(const moe_gguf *g, const char *key, uint64_t *out) {
    return get_uint(g, key, UINT64_MAX, "a u64", out);
}

moe_status moe_gguf_get_f32(const moe_gguf *g, const char *key, float *out) {
    const moe_gguf_kv *kv;
    moe_status s = lookup(g, key, &kv);
    if (s) return s;
    double d;
    if (is_float(kv->type)) d = kv->v.f;
    else if (is_sint(kv->type)) d = (double)kv->v.i;
    else if (is_uint(kv->type)) d = (double)kv->v.u;
    else return wrong_type(g, kv, "a number");
    if (isfinite(d) && fabs(d) > FLT_MAX)
        return moe_fail(MOE_ERR_PARSE, "%s: offset %llu: key \"%s\": %g is out of range for f32", g->file.path,
                        (unsigned long long)kv->offset, key, d);
    *out = (float)d;
    return MOE_OK;
}

moe_status moe_gguf_get_bool(const moe_gguf *g, const char *key, bool *out) {
    const moe_gguf_kv *kv;
    moe_status s = lookup(g, key, &kv);
    if (s) return s;
    if (kv->type != MOE_GGUF_BOOL) return wrong_type(g, kv, "a bool");
    *out = kv->v.b;
    return MOE_OK;
}

moe_status moe_gguf_get_str(const moe_gguf *g, const char *key, moe_gguf_str *out) {
    const moe_gguf_kv *kv;
    moe_status s = lookup(g, key, &kv);
    if (s) return s;
    if (kv->type != MOE_GGUF_STR) return wrong_type(g, kv, "a string");
    *out = kv->v.str;
    return MOE_OK;
}

moe_status moe_gguf_get_arr(const moe_gguf *g, const char *key, moe_gguf_type elem, const moe_gguf_kv **out) {
    const moe_gguf_kv *kv;
    moe_status s = lookup(g, key, &kv);
    if (s) return s;
    if (kv->type != MOE_GGUF_ARR || (elem != MOE_GGUF_TYPE_COUNT_ && kv->v.arr.type != elem)) {
        char want[32];
        snprintf(want, sizeof want, "an array of %s", elem < MOE_GGUF_TYPE_COUNT_ ? vtypes[elem].name : "anything");
        return wrong_type(g, kv, want);
    }
    *out = kv;
    return MOE_OK;
}

bool moe_gguf_str_eq(moe_gguf_str s, const char *z) {
    return z && s.ptr && strlen(z) == s.len && !memcmp(s.ptr, z, s.len);
}

moe_gguf_str moe_gguf_arr_str(const moe_gguf_kv *kv, uint64_t i) {
    if (!kv || kv->type != MOE_GGUF_ARR || kv->v.arr.type != MOE_GGUF_STR || i >= kv->v.arr.n)
        return (moe_gguf_str){NULL, 0};
    const uint64_t *at = kv->v.arr.str_at;
    return (moe_gguf_str){(const char *)kv->v.arr.data + at[i] + 8, at[i + 1] - at[i] - 8};
}

/* Element i of a numeric or bool array, as stored. */
static bool elem_raw(const moe_gguf_kv *kv, uint64_t i, uint64_t *raw) {
    if (!kv || kv->type != MOE_GGUF_ARR || kv->v.arr.type == MOE_GGUF_STR || i >= kv->v.arr.n) return false;
    const unsigned size = vtypes[kv->v.arr.type].size;
    *raw = le(kv->v.arr.data + i * size, size);
    return true;
}

int64_t moe_gguf_arr_int(const moe_gguf_kv *kv, uint64_t i) {
    uint64_t raw;
    if (!elem_raw(kv, i, &raw) || is_float(kv->v.arr.type)) return 0;
    return to_int(kv->v.arr.type, raw);
}

double moe_gguf_arr_float(const moe_gguf_kv *kv, uint64_t i) {
    uint64_t raw;
    if (!elem_raw(kv, i, &raw) || kv->v.arr.type == MOE_GGUF_BOOL) return 0.0;
    return to_float(kv->v.arr.type, raw);
}
