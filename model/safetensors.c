/* safetensors.c - safetensors files and sharded model directories (see
 * safetensors.h). */
#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "json.h"

/* Element types as safetensors names them: the ones read, then the ones
 * known but refused as unsupported (anything else is not safetensors). */
static const struct {
    const char *name;
    int wtype; /* a moe_dtype; -1: known, not supported */
} dtypes[] = {
    {"F32", MOE_DTYPE_F32}, {"F16", MOE_DTYPE_F16}, {"BF16", MOE_DTYPE_BF16}, {"F64", -1},    {"I64", -1},
    {"I32", -1},         {"I16", -1},         {"I8", -1},            {"U64", -1},    {"U32", -1},
    {"U16", -1},         {"U8", -1},          {"BOOL", -1},          {"F8_E4M3", MOE_TENSOR_F8_E4M3}, {"F8_E5M2", -1},
    {"F8_E8M0", -1},     {"F6_E2M3", -1},     {"F6_E3M2", -1},       {"F4", -1},     {"C64", -1},
};

/* ---- one file ---- */

static int by_name(const void *a, const void *b) {
    return strcmp(((const moe_tensor *)a)->name, ((const moe_tensor *)b)->name);
}

/* Data ranges ordered by begin, then end, to find overlaps and holes. */
typedef struct range {
    uint64_t begin, end;
    uint64_t i; /* tensor index (in header order) */
} range;

static int by_begin(const void *a, const void *b) {
    const range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static moe_status read_dtype(const moe_json_doc *doc, const char *tname, const moe_json *v, moe_dtype *out) {
    if (!v || v->type != MOE_JSON_STRING)
        return moe_fail_at(MOE_ERR_PARSE, doc->name, v ? v->line : 1, "tensor \"%s\": \"dtype\" must be a string",
                           tname);
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
        if (strcmp(v->u.str, dtypes[i].name) || strlen(v->u.str) != v->len) continue;
        if (dtypes[i].wtype < 0)
            return moe_fail_at(MOE_ERR_UNSUPPORTED, doc->name, v->line,
                               "tensor \"%s\": dtype %s is not supported (supported: F32, "
                               "F16, BF16, and F8_E4M3 with its weight_scale_inv)",
                               tname, dtypes[i].name);
        *out = (moe_dtype)dtypes[i].wtype;
        return MOE_OK;
    }
    return moe_fail_at(MOE_ERR_PARSE, doc->name, v->line, "tensor \"%s\": unknown dtype \"%.32s\"", tname,
                    v->u.str);
}

static moe_status read_shape(const moe_json_doc *doc, const char *tname, const moe_json *v, moe_tensor *t) {
    if (!v || v->type != MOE_JSON_ARRAY || v->len > MOE_TENSOR_MAX_DIMS)
        return moe_fail_at(MOE_ERR_PARSE, doc->name, v ? v->line : 1,
                           "tensor \"%s\": \"shape\" must be an array of at most %d sizes", tname, MOE_TENSOR_MAX_DIMS);
    t->n_dims = (uint32_t)v->len;
    t->n_elems = 1;
    for (uint32_t k = 0; k < MOE_TENSOR_MAX_DIMS; k++) t->shape[k] = 1;
    for (uint32_t k = 0; k < t->n_dims; k++) {
        int64_t x;
        moe_status st = moe_json_get_int(doc, &v->u.items[k], "shape", 0, (int64_t)1 << 53, &x);
        if (st) return st;
        t->shape[k] = (uint64_t)x;
        if (__builtin_mul_overflow(t->n_elems, t->shape[k], &t->n_elems))
            return moe_fail_at(MOE_ERR_PARSE, doc->name, v->line, "tensor \"%s\": the shape's size overflows",
                            tname);
    }
    return MOE_OK;
}

/* One header entry into t (name already set); its data range into *r. */
static moe_status read_entry(const moe_json_doc *doc, const moe_json_member *m, uint64_t data_size, moe_tensor *t,
                             range *r) {
    const moe_json *v = &m->value;
    if (v->type != MOE_JSON_OBJECT)
        return moe_fail_at(MOE_ERR_PARSE, doc->name, v->line, "tensor \"%s\": expected an object", t->name);
    for (size_t k = 0; k < v->len; k++) {
        const char *key = v->u.members[k].key;
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return moe_fail_at(MOE_ERR_PARSE, doc->name, v->u.members[k].line, "tensor \"%s\": unknown key \"%.64s\"",
                               t->name, key);
    }
    moe_status st;
    if ((st = read_dtype(doc, t->name, moe_json_member_get(v, "dtype"), &t->type))) return st;
    if ((st = read_shape(doc, t->name, moe_json_member_get(v, "shape"), t))) return st;
    const moe_json *off = moe_json_member_get(v, "data_offsets");
    if (!off || off->type != MOE_JSON_ARRAY || off->len != 2)
        return moe_fail_at(MOE_ERR_PARSE, doc->name, off ? off->line : v->line,
                           "tensor \"%s\": \"data_offsets\" must be [begin, end]", t->name);
    int64_t b, e;
    if ((st = moe_json_get_int(doc, &off->u.items[0], "data_offsets", 0, (int64_t)1 << 53, &b))) return st;
    if ((st = moe_json_get_int(doc, &off->u.items[1], "data_offsets", 0, (int64_t)1 << 53, &e))) return st;
    if (b > e)
        return moe_fail_at(MOE_ERR_PARSE, doc->name, off->line,
                           "tensor \"%s\": data_offsets [%lld, %lld] end before they begin", t->name, (long long)b,
                           (long long)e);
    if ((uint64_t)e > data_size)
        return moe_fail_at(MOE_ERR_PARSE, doc->name, off->line,
                           "tensor \"%s\": data_offsets end at %lld, past the %llu bytes of data "
                           "(truncated file?)",
                           t->name, (long long)e, (unsigned long long)data_size);
    uint64_t bytes;
    if (!moe_tensor_bytes(t->type, t->n_elems, t->n_dims ? t->shape[t->n_dims - 1] : 1, &bytes) ||
        bytes != (uint64_t)(e - b))
        return moe_fail_at(MOE_ERR_PARSE, doc->name, off->line,
                           "tensor \"%s\": %lld bytes of data for %llu %s elements", t->name, (long long)(e - b),
                           (unsigned long long)t->n_elems, moe_dtype_name(t->type));
    t->bytes = bytes;
    *r = (range){(uint64_t)b, (uint64_t)e, 0};
    return MOE_OK;
}

static moe_status check_metadata(const moe_json_doc *doc, const moe_json *v) {
    if (v->type != MOE_JSON_OBJECT)
        return moe_fail_at(MOE_ERR_PARSE, doc->name, v->line, "\"__metadata__\" must be an object of strings");
    for (size_t k = 0; k < v->len; k++)
        if (v->u.members[k].value.type != MOE_JSON_STRING)
            return moe_fail_at(MOE_ERR_PARSE, doc->name, v->u.members[k].line,
                               "\"__metadata__\" value \"%.64s\" must be a string", v->u.members[k].key);
    return MOE_OK;
}

/* The data must be covered by the tensors exactly: no overlap, no hole. */
static moe_status check_coverage(const moe_safetensors *st, range *r, uint64_t data_size) {
    qsort(r, st->n_tensors, sizeof *r, by_begin);
    uint64_t at = 0;
    for (uint64_t k = 0; k < st->n_tensors; k++) {
        if (r[k].begin < at)
            return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\" overlaps the tensor before it (bytes %llu..%llu)",
                            st->file.path, st->tensors[r[k].i].name, (unsigned long long)r[k].begin,
                            (unsigned long long)at);
        if (r[k].begin > at)
            return moe_fail(MOE_ERR_PARSE, "%s: bytes %llu..%llu of the data belong to no tensor", st->file.path,
                            (unsigned long long)at, (unsigned long long)r[k].begin);
        at = r[k].end;
    }
    if (at != data_size)
        return moe_fail(MOE_ERR_PARSE, "%s: bytes %llu..%llu of the data belong to no tensor", st->file.path,
                        (unsigned long long)at, (unsigned long long)data_size);
    return MOE_OK;
}

static moe_status parse_header(moe_safetensors *st, const moe_json_doc *doc, uint64_t data_size) {
    const moe_json *root = &doc->root;
    if (root->type != MOE_JSON_OBJECT)
        return moe_fail_at(MOE_ERR_PARSE, doc->name, root->line, "the header must be a JSON object");
    size_t names_len = 0;
    uint64_t n = 0;
    for (size_t k = 0; k < root->len; k++) {
        const moe_json_member *m = &root->u.members[k];
        if (!strcmp(m->key, "__metadata__")) {
            moe_status s = check_metadata(doc, &m->value);
            if (s) return s;
            continue;
        }
        if (!m->key_len || strlen(m->key) != m->key_len)
            return moe_fail_at(MOE_ERR_PARSE, doc->name, m->line, "a tensor name is empty or holds a NUL byte");
        names_len += m->key_len + 1;
        n++;
    }
    st->n_tensors = n;
    st->tensors = calloc(n ? n : 1, sizeof *st->tensors);
    st->names = malloc(names_len ? names_len : 1);
    range *r = calloc(n ? n : 1, sizeof *r);
    if (!st->tensors || !st->names || !r) {
        free(r);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for %llu tensors", doc->name, (unsigned long long)n);
    }
    moe_status s = MOE_OK;
    char *p = st->names;
    uint64_t i = 0;
    for (size_t k = 0; k < root->len && s == MOE_OK; k++) {
        const moe_json_member *m = &root->u.members[k];
        if (!strcmp(m->key, "__metadata__")) continue;
        moe_tensor *t = &st->tensors[i];
        memcpy(p, m->key, m->key_len + 1);
        t->name = p;
        p += m->key_len + 1;
        t->file = st->file.path;
        s = read_entry(doc, m, data_size, t, &r[i]);
        r[i].i = i;
        i++;
    }
    if (s == MOE_OK) s = check_coverage(st, r, data_size);
    if (s == MOE_OK)
        for (uint64_t k = 0; k < n; k++) st->tensors[r[k].i].data = st->file.data + st->data_offset + r[k].begin;
    free(r);
    return s;
}

moe_status moe_safetensors_open(moe_safetensors *st, const char *path) {
    if (!st || !path) return moe_fail(MOE_ERR_INVALID_ARG, "safetensors: NULL argument");
    memset(st, 0, sizeof *st);
    moe_status s = moe_map_file(&st->file, path);
    if (s) return s;
    const uint64_t size = st->file.size;
    uint64_t hlen = 0;
    if (size < 8) {
        s = moe_fail(MOE_ERR_PARSE, "%s: %llu bytes: too short for a safetensors file (truncated?)", path,
                     (unsigned long long)size);
        goto out;
    }
    for (int k = 7; k >= 0; k--) hlen = hlen << 8 | st->file.data[k];
    if (hlen > size - 8) {
        s = moe_fail(MOE_ERR_PARSE, "%s: a header of %llu bytes does not fit in the file's %llu (truncated, or not "
                                    "safetensors)", path, (unsigned long long)hlen, (unsigned long long)size);
        goto out;
    }
    if (hlen > MOE_JSON_MAX_BYTES) {
        s = moe_fail(MOE_ERR_PARSE, "%s: a header of %llu bytes is over the %u accepted", path,
                     (unsigned long long)hlen, MOE_JSON_MAX_BYTES);
        goto out;
    }
    st->data_offset = 8 + hlen;
    moe_json_doc doc;
    if ((s = moe_json_parse(&doc, (const char *)st->file.data + 8, (size_t)hlen, path))) goto out;
    s = parse_header(st, &doc, size - st->data_offset);
    if (s == MOE_OK) qsort(st->tensors, st->n_tensors, sizeof *st->tensors, by_name);
    moe_json_free(&doc);
out:
    if (s) moe_safetensors_close(st);
    return s;
}

void moe_safetensors_close(moe_safetensors *st) {
    if (!st) return;
    free(st->tensors);
    free(st->names);
    moe_unmap_file(&st->file);
    memset(st, 0, sizeof *st);
}

static int key_cmp(const void *key, const void *elem) { return strcmp(key, ((const moe_tensor *)elem)->name); }

const moe_tensor *moe_safetensors_find(const moe_safetensors *st, const char *name) {
    if (!st || !name || !st->n_tensors) return NULL;
    return bsearch(name, st->tensors, st->n_tensors, sizeof *st->tensors, key_cmp);
}

/* ---- model directories ---- */

static moe_status join(char *buf, size_t cap, const char *dir, const char *name) {
    if ((size_t)snprintf(buf, cap, "%s/%s", dir, name) >= cap)
        return moe_fail(MOE_ERR_INVALID_ARG, "%s/%s: path too long", dir, name);
    return MOE_OK;
}

static int by_tensor_name(const void *a, const void *b) {
    return strcmp((*(const moe_tensor *const *)a)->name, (*(const moe_tensor *const *)b)->name);
}

/* A shard name from the index: a plain file name in the directory. */
static bool plain_name(const char *s, size_t len) {
    return len && strlen(s) == len && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

/* The shards named in the index's weight_map, each once, in first-use order. */
static moe_status index_shards(const moe_json_doc *doc, const moe_json *map, const char ***names, uint32_t *n) {
    *names = calloc(map->len ? map->len : 1, sizeof **names);
    if (!*names) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", doc->name);
    *n = 0;
    for (size_t k = 0; k < map->len; k++) {
        const moe_json *v = &map->u.members[k].value;
        if (v->type != MOE_JSON_STRING || !plain_name(v->u.str, v->len))
            return moe_fail_at(MOE_ERR_PARSE, doc->name, v->line,
                               "weight_map: \"%.64s\" must name a file in the directory", map->u.members[k].key);
        uint32_t j = 0;
        while (j < *n && strcmp((*names)[j], v->u.str)) j++;
        if (j == *n) (*names)[(*n)++] = v->u.str;
    }
    return MOE_OK;
}

static uint32_t shard_of(const char *const *names, uint32_t n, const char *file) {
    uint32_t j = 0;
    while (j < n && strcmp(names[j], file)) j++;
    return j;
}

/* Every mapped tensor is in its shard, every shard tensor is mapped to it. */
static moe_status check_index(const moe_st_dir *d, const moe_json_doc *doc, const moe_json *map,
                              const char *const *names) {
    uint64_t total = 0;
    for (uint32_t f = 0; f < d->n_files; f++) total += d->files[f].n_tensors;
    for (size_t k = 0; k < map->len; k++) {
        const moe_json_member *m = &map->u.members[k];
        const uint32_t f = shard_of(names, d->n_files, m->value.u.str);
        if (!moe_safetensors_find(&d->files[f], m->key))
            return moe_fail_at(MOE_ERR_PARSE, doc->name, m->line, "tensor \"%.128s\" is not in %s", m->key,
                            d->files[f].file.path);
    }
    if (total != map->len)
        for (uint32_t f = 0; f < d->n_files; f++)
            for (uint64_t i = 0; i < d->files[f].n_tensors; i++) {
                const moe_json *v = moe_json_member_get(map, d->files[f].tensors[i].name);
                if (!v || strcmp(v->u.str, names[f]))
                    return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%.128s\" of %s is not in the index's weight_map",
                                    doc->name, d->files[f].tensors[i].name, d->files[f].file.path);
            }
    return MOE_OK;
}

static moe_status read_text(const char *path, char **text, size_t *len) {
    moe_mapped_file m;
    moe_status s = moe_map_file(&m, path);
    if (s) return s;
    if (m.size > MOE_JSON_MAX_BYTES) {
        moe_unmap_file(&m);
        return moe_fail(MOE_ERR_PARSE, "%s: over %u bytes", path, MOE_JSON_MAX_BYTES);
    }
    *len = (size_t)m.size;
    *text = malloc(*len ? *len : 1);
    if (*text) memcpy(*text, m.data, *len);
    moe_unmap_file(&m);
    return *text ? MOE_OK : moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
}

static moe_status open_indexed(moe_st_dir *d, const char *dir, const char *index_path) {
    char *text = NULL;
    size_t len = 0;
    moe_status s = read_text(index_path, &text, &len);
    if (s) return s;
    moe_json_doc doc;
    s = moe_json_parse(&doc, text, len, index_path);
    free(text);
    if (s) return s;
    const moe_json *map = moe_json_member_get(&doc.root, "weight_map");
    const char **names = NULL;
    uint32_t n = 0;
    if (!map || map->type != MOE_JSON_OBJECT || !map->len)
        s = moe_fail_at(MOE_ERR_PARSE, index_path, map ? map->line : doc.root.line,
                        "\"weight_map\" must be a non-empty object");
    else
        s = index_shards(&doc, map, &names, &n);
    if (s == MOE_OK && !(d->files = calloc(n, sizeof *d->files)))
        s = moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", index_path);
    char path[4096];
    for (uint32_t f = 0; s == MOE_OK && f < n; f++) {
        if ((s = join(path, sizeof path, dir, names[f]))) break;
        if ((s = moe_safetensors_open(&d->files[f], path))) break;
        d->n_files++;
    }
    if (s == MOE_OK) s = check_index(d, &doc, map, names);
    free(names);
    moe_json_free(&doc);
    return s;
}

moe_status moe_st_dir_open(moe_st_dir *d, const char *dir) {
    if (!d || !dir) return moe_fail(MOE_ERR_INVALID_ARG, "safetensors: NULL argument");
    memset(d, 0, sizeof *d);
    char path[4096];
    moe_status s = join(path, sizeof path, dir, "model.safetensors.index.json");
    if (s) return s;
    if (access(path, F_OK) == 0) {
        s = open_indexed(d, dir, path);
    } else {
        if ((s = join(path, sizeof path, dir, "model.safetensors"))) return s;
        if (access(path, F_OK) != 0)
            return moe_fail(MOE_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
        if (!(d->files = calloc(1, sizeof *d->files))) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", dir);
        if ((s = moe_safetensors_open(&d->files[0], path)) == MOE_OK) d->n_files = 1;
    }
    for (uint32_t f = 0; s == MOE_OK && f < d->n_files; f++) d->n_tensors += d->files[f].n_tensors;
    if (s == MOE_OK && !(d->tensors = malloc((d->n_tensors ? d->n_tensors : 1) * sizeof *d->tensors)))
        s = moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", dir);
    if (s == MOE_OK) {
        uint64_t i = 0;
        for (uint32_t f = 0; f < d->n_files; f++)
            for (uint64_t k = 0; k < d->files[f].n_tensors; k++) d->tensors[i++] = &d->files[f].tensors[k];
        qsort(d->tensors, d->n_tensors, sizeof *d->tensors, by_tensor_name);
        for (uint64_t k = 1; k < d->n_tensors && s == MOE_OK; k++)
            if (!strcmp(d->tensors[k - 1]->name, d->tensors[k]->name))
                s = moe_fail(MOE_ERR_PARSE, "%s: tensor \"%.128s\" is in both %s and %s", dir, d->tensors[k]->name,
                             d->tensors[k - 1]->file, d->tensors[k]->file);
    }
    if (s) moe_st_dir_close(d);
    return s;
}

void moe_st_dir_close(moe_st_dir *d) {
    if (!d) return;
    for (uint32_t f = 0; f < d->n_files; f++) moe_safetensors_close(&d->files[f]);
    free(d->files);
    free(d->tensors);
    memset(d, 0, sizeof *d);
}

static int key_cmp_ptr(const void *key, const void *elem) {
    return strcmp(key, (*(const moe_tensor *const *)elem)->name);
}

const moe_tensor *moe_st_dir_find(const moe_st_dir *d, const char *name) {
    if (!d || !name || !d->n_tensors) return NULL;
    const moe_tensor *const *t = bsearch(name, d->tensors, d->n_tensors, sizeof *d->tensors, key_cmp_ptr);
    return t ? *t : NULL;
}
