/* tokenizer.c - Hugging Face tokenizer.json BPE tokenizers (see tokenizer.h).
 *
 * Encoding follows `tokenizers`: added tokens are cut out of the raw text;
 * each piece between them is normalized, then cut by the normalized added
 * tokens, then pre-tokenized into words, and each word is BPE-merged by
 * merge rank. Byte-level models work on bytes throughout: the vocabulary's
 * GPT-2 alphabet ("Ġ" for a space) is mapped back to bytes at load, so the
 * ByteLevel pre-tokenizer's mapping is the identity here. */
#include "tokenizer.h"

#include <float.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"
#include "unicode.h"

#define MAX_STEPS 16   /* normalizer, pre-tokenizer and decoder steps */
#define MAX_SPECIAL 8  /* ids the post-processor adds on each side */
#define NO_ID (-1)

typedef struct span {
    uint32_t off, len; /* in tok->arena */
} span;

enum { F_MODEL = 1, F_ADDED = 2, F_SPECIAL = 4, F_NORMALIZED = 8, F_UNUSED = 16 };

typedef struct added_token {
    span match; /* what is looked for: the content, normalized if `normalized` */
    int32_t id;
    bool lstrip, rstrip, single_word, normalized;
} added_token;

enum { N_NFC, N_PREPEND, N_REPLACE };
enum { PT_SPLIT, PT_BYTELEVEL, PT_METASPACE };
enum { PAT_GPT2, PAT_QWEN, PAT_LLAMA3 };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
enum { D_BYTELEVEL, D_REPLACE, D_BYTEFALLBACK, D_METASPACE, D_FUSE, D_STRIP };

typedef struct step {
    int kind;
    int pattern;      /* PT_SPLIT */
    int prepend;      /* PT_METASPACE, D_METASPACE */
    bool prefix_space; /* PT_BYTELEVEL */
    bool use_regex;   /* PT_BYTELEVEL */
    bool split;       /* PT_METASPACE */
    span a, b;        /* N_PREPEND: a; N_REPLACE, D_REPLACE: a -> b; metaspace: a; D_STRIP: a */
    uint32_t start, stop; /* D_STRIP */
} step;

typedef struct merge_slot {
    uint64_t pair; /* left id << 32 | right id */
    uint32_t rank;
    int32_t id; /* NO_ID: empty slot */
} merge_slot;

struct moe_tokenizer {
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t n_vocab;
    uint8_t *flags; /* per id: F_* */
    span *name;     /* per id: the token as tokenizer.json writes it */
    span *piece;    /* per model id: the bytes BPE works on */
    span *out;      /* per id: the decoder's bytes for it mid-text */
    uint32_t *map;  /* piece bytes -> id + 1 (0: empty), open addressing */
    uint32_t map_mask;
    merge_slot *merges;
    uint32_t merges_mask;
    added_token *added; /* sorted by the first byte of `match` */
    uint32_t n_added;
    uint32_t added_from[257]; /* added[added_from[b]..added_from[b + 1]) start with byte b */
    bool has_normalized_added;
    step norm[MAX_STEPS], pre[MAX_STEPS], dec[MAX_STEPS];
    int n_norm, n_pre, n_dec;
    bool byte_level, byte_fallback, fuse_unk, ignore_merges;
    bool spm;             /* GGUF "llama": llama.cpp's SPM merging by score_rank instead of merges */
    bool raw_added;       /* GGUF: added tokens decode to their text as is, unused ones to nothing */
    uint32_t *score_rank; /* spm: per id, 0 for the highest score; equal scores share a rank */
    int32_t unk_id;
    int32_t byte_id[256]; /* byte-level: the one-byte piece; byte fallback: <0xXX>; else NO_ID */
    int32_t prefix[MAX_SPECIAL], suffix[MAX_SPECIAL];
    int n_prefix, n_suffix;
    span strip; /* after Fuse: a character dropped up to strip_n times at the start of a decoded text */
    uint32_t strip_n;
    bool meta_first; /* Metaspace decoder: the first token's replacement characters are dropped */
    int16_t rev[324]; /* byte alphabet: code point -> byte, -1 */
    int32_t bos, eos, pad;
    char *chat_template;
};

/* ---- small helpers ---- */

static const uint8_t *at(const moe_tokenizer *t, span s) { return (const uint8_t *)t->arena + s.off; }

static bool span_eq(const moe_tokenizer *t, span s, const void *p, size_t n) {
    return s.len == n && memcmp(at(t, s), p, n) == 0;
}

/* Appends n bytes to the arena; false when out of memory or past 4 GiB. */
static bool arena_add(moe_tokenizer *t, const void *p, size_t n, span *out) {
    if (t->arena_len + n > UINT32_MAX) return false;
    if (t->arena_len + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap * 2 : 1 << 16;
        while (cap < t->arena_len + n) cap *= 2;
        char *a = realloc(t->arena, cap);
        if (!a) return false;
        t->arena = a;
        t->arena_cap = cap;
    }
    if (n) memcpy(t->arena + t->arena_len, p, n);
    *out = (span){(uint32_t)t->arena_len, (uint32_t)n};
    t->arena_len += n;
    return true;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h ^ h >> 29;
}

static uint64_t hash_pair(uint64_t x) {
    x *= 0x9e3779b97f4a7c15ull;
    return x ^ x >> 31;
}

/* The id whose piece is p[0..n), or NO_ID. */
static int32_t piece_id(const moe_tokenizer *t, const void *p, size_t n) {
    if (!t->map) return NO_ID;
    for (uint64_t h = hash_bytes(p, n);; h++) {
        const uint32_t v = t->map[h & t->map_mask];
        if (!v) return NO_ID;
        if (span_eq(t, t->piece[v - 1], p, n)) return (int32_t)(v - 1);
    }
}

/* Adds id's piece to the map unless an equal piece is there already. */
static void map_insert(moe_tokenizer *t, int32_t id) {
    const span s = t->piece[id];
    for (uint64_t h = hash_bytes(at(t, s), s.len);; h++) {
        uint32_t *v = &t->map[h & t->map_mask];
        if (!*v) {
            *v = (uint32_t)id + 1;
            return;
        }
        if (span_eq(t, t->piece[*v - 1], at(t, s), s.len)) return;
    }
}

static const merge_slot *merge_find(const moe_tokenizer *t, int32_t a, int32_t b) {
    const uint64_t pair = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint64_t h = hash_pair(pair);; h++) {
        const merge_slot *m = &t->merges[h & t->merges_mask];
        if (m->id == NO_ID) return NULL;
        if (m->pair == pair) return m;
    }
}

/* A later duplicate replaces the earlier merge, as in `tokenizers`. */
static void merge_insert(moe_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t id) {
    const uint64_t pair = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (uint64_t h = hash_pair(pair);; h++) {
        merge_slot *m = &t->merges[h & t->merges_mask];
        if (m->id == NO_ID || m->pair == pair) {
            *m = (merge_slot){pair, rank, id};
            return;
        }
    }
}

static uint32_t pow2_above(uint64_t n) {
    uint32_t c = 16;
    while (c < 2 * n) c *= 2;
    return c;
}

/* ---- the GPT-2 byte alphabet ---- */

/* Printable Latin-1 bytes stand for themselves; the others (controls,
 * space, 0x7f-0xa0, 0xad) take the code points from U+0100 up, in order. */
static uint32_t byte_char(uint8_t b) {
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae) return b;
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || c >= 0xae)) n++;
    return 256 + n;
}

/* The byte that code point cp stands for, or -1. */
static int char_byte(uint32_t cp) {
    if (cp < 256) return byte_char((uint8_t)cp) == cp ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    for (int b = 0; b < 256; b++)
        if (byte_char((uint8_t)b) == cp) return b;
    return -1;
}

/* Maps text in the byte alphabet to the bytes it stands for, into out (n
 * bytes of room); false if a character is outside the alphabet. */
static bool from_byte_alphabet(const uint8_t *s, size_t n, const int16_t *rev, uint8_t *out, size_t *len) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += moe_utf8_decode(s + i, n - i, &cp);
        if (cp >= 324 || rev[cp] < 0) return false;
        out[o++] = (uint8_t)rev[cp];
    }
    *len = o;
    return true;
}

static void byte_alphabet_reverse(int16_t rev[324]) {
    for (uint32_t c = 0; c < 324; c++) rev[c] = (int16_t)char_byte(c);
}

/* ---- reading tokenizer.json ---- */

typedef struct loader {
    moe_tokenizer *t;
    const moe_json_doc *d; /* NULL when reading GGUF */
    const int16_t *rev;    /* byte alphabet code point -> byte, -1 */
    const char *file;      /* for messages */
} loader;

#define fail_at(s, L, v, ...) moe_fail_at((s), (L)->d->name, (v) ? (v)->line : 1u, __VA_ARGS__)

static moe_status oom(const loader *L) {
    return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for the tokenizer", L->file);
}

static const char *type_name(moe_json_type t) {
    static const char *names[] = {"null", "a boolean", "a number", "a string", "an array", "an object"};
    return names[t];
}

/* *out = obj[key], which must exist and be of `type`. */
static moe_status need(const loader *L, const moe_json *obj, const char *key, moe_json_type type,
                       const moe_json **out) {
    const moe_json *v = moe_json_member_get(obj, key);
    *out = NULL;
    if (!v) return fail_at(MOE_ERR_PARSE, L, obj, "missing \"%s\"", key);
    if (v->type != type) return fail_at(MOE_ERR_PARSE, L, v, "\"%s\" must be %s", key, type_name(type));
    *out = v;
    return MOE_OK;
}

/* As need(), but a missing or null member gives *out = NULL. */
static moe_status opt(const loader *L, const moe_json *obj, const char *key, moe_json_type type,
                      const moe_json **out) {
    const moe_json *v = moe_json_member_get(obj, key);
    *out = NULL;
    if (!v || v->type == MOE_JSON_NULL) return MOE_OK;
    if (v->type != type) return fail_at(MOE_ERR_PARSE, L, v, "\"%s\" must be %s", key, type_name(type));
    *out = v;
    return MOE_OK;
}

static moe_status opt_bool(const loader *L, const moe_json *obj, const char *key, bool def, bool *out) {
    const moe_json *v;
    moe_status s = opt(L, obj, key, MOE_JSON_BOOL, &v);
    *out = v ? v->boolean : def;
    return s;
}

static bool is_str(const moe_json *v, const char *s) {
    return v && v->type == MOE_JSON_STRING && strlen(s) == v->len && memcmp(v->u.str, s, v->len) == 0;
}

/* A component's "type" member. */
static moe_status component_type(const loader *L, const moe_json *v, const char *what, const moe_json **type) {
    *type = NULL;
    if (v->type != MOE_JSON_OBJECT) return fail_at(MOE_ERR_PARSE, L, v, "%s must be an object or null", what);
    return need(L, v, "type", MOE_JSON_STRING, type);
}

static moe_status add_string(const loader *L, const moe_json *v, span *out) {
    return arena_add(L->t, v->u.str, v->len, out) ? MOE_OK : oom(L);
}

/* A Replace pattern: {"String": s}; a Regex one is refused. */
static moe_status replace_pattern(const loader *L, const moe_json *comp, const char *what, span *out) {
    const moe_json *p, *s;
    moe_status st = need(L, comp, "pattern", MOE_JSON_OBJECT, &p);
    if (st) return st;
    if ((s = moe_json_member_get(p, "Regex")))
        return fail_at(MOE_ERR_UNSUPPORTED, L, p, "%s with a regex pattern is not supported", what);
    if ((st = need(L, p, "String", MOE_JSON_STRING, &s))) return st;
    if (!s->len) return fail_at(MOE_ERR_PARSE, L, s, "%s: the pattern is empty", what);
    return add_string(L, s, out);
}

static moe_status add_step(const loader *L, const moe_json *v, step *steps, int *n, step s) {
    if (*n == MAX_STEPS) return fail_at(MOE_ERR_UNSUPPORTED, L, v, "more than %d steps", MAX_STEPS);
    steps[(*n)++] = s;
    return MOE_OK;
}

static moe_status parse_normalizer(const loader *L, const moe_json *v) {
    moe_tokenizer *t = L->t;
    const moe_json *ty, *x;
    moe_status s;
    if (v->type == MOE_JSON_NULL) return MOE_OK;
    if ((s = component_type(L, v, "normalizer", &ty))) return s;
    if (is_str(ty, "Sequence")) {
        if ((s = need(L, v, "normalizers", MOE_JSON_ARRAY, &x))) return s;
        for (size_t i = 0; i < x->len && !s; i++) s = parse_normalizer(L, &x->u.items[i]);
        return s;
    }
    step st = {0};
    if (is_str(ty, "NFC")) {
        st.kind = N_NFC;
    } else if (is_str(ty, "Prepend")) {
        st.kind = N_PREPEND;
        if ((s = need(L, v, "prepend", MOE_JSON_STRING, &x)) || (s = add_string(L, x, &st.a))) return s;
    } else if (is_str(ty, "Replace")) {
        st.kind = N_REPLACE;
        if ((s = replace_pattern(L, v, "normalizer Replace", &st.a))) return s;
        if ((s = need(L, v, "content", MOE_JSON_STRING, &x)) || (s = add_string(L, x, &st.b))) return s;
    } else {
        return fail_at(MOE_ERR_UNSUPPORTED, L, ty, "normalizer \"%s\" is not supported (supported: NFC, Prepend, "
                                                    "Replace, Sequence)", ty->u.str);
    }
    return add_step(L, v, t->norm, &t->n_norm, st);
}

/* The Split patterns this reader implements by hand (see match_*). */
static const struct {
    const char *regex;
    int pattern;
} known_patterns[] = {
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
     "\\s+(?!\\S)|\\s+", PAT_QWEN},
    {"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", PAT_LLAMA3},
    {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", PAT_GPT2},
};

static moe_status parse_split(const loader *L, const moe_json *v, step *st) {
    const moe_json *p, *re, *b;
    bool invert;
    moe_status s;
    if ((s = need(L, v, "pattern", MOE_JSON_OBJECT, &p)) || (s = need(L, v, "behavior", MOE_JSON_STRING, &b)) ||
        (s = opt_bool(L, v, "invert", false, &invert)))
        return s;
    if (!(re = moe_json_member_get(p, "Regex")) || re->type != MOE_JSON_STRING)
        return fail_at(MOE_ERR_UNSUPPORTED, L, p, "pre-tokenizer Split: only a \"Regex\" pattern is supported");
    if (!is_str(b, "Isolated") || invert)
        return fail_at(MOE_ERR_UNSUPPORTED, L, b, "pre-tokenizer Split: behavior \"%s\"%s is not supported (only "
                                                  "Isolated, not inverted)", b->u.str, invert ? ", inverted" : "");
    for (size_t k = 0; k < sizeof known_patterns / sizeof known_patterns[0]; k++)
        if (is_str(re, known_patterns[k].regex)) {
            *st = (step){.kind = PT_SPLIT, .pattern = known_patterns[k].pattern};
            return MOE_OK;
        }
    return fail_at(MOE_ERR_UNSUPPORTED, L, re, "pre-tokenizer Split: pattern \"%.300s\" is not supported (known: "
                                               "GPT-2's, Qwen2/3's, Llama-3's)", re->u.str);
}

/* Metaspace, as pre-tokenizer or decoder: replacement and prepend scheme
 * (older files say add_prefix_space instead). */
static moe_status parse_metaspace(const loader *L, const moe_json *v, step *st) {
    const moe_json *r, *scheme;
    bool prefix;
    moe_status s;
    if ((s = need(L, v, "replacement", MOE_JSON_STRING, &r)) || (s = opt(L, v, "prepend_scheme", MOE_JSON_STRING,
                                                                         &scheme)) ||
        (s = opt_bool(L, v, "add_prefix_space", true, &prefix)) || (s = opt_bool(L, v, "split", true, &st->split)))
        return s;
    uint32_t cp;
    if (!r->len || moe_utf8_decode((const uint8_t *)r->u.str, r->len, &cp) != r->len)
        return fail_at(MOE_ERR_PARSE, L, r, "Metaspace: \"replacement\" must be one character");
    st->prepend = prefix ? PREPEND_ALWAYS : PREPEND_NEVER;
    if (is_str(scheme, "first")) st->prepend = PREPEND_FIRST;
    else if (is_str(scheme, "never")) st->prepend = PREPEND_NEVER;
    else if (scheme && !is_str(scheme, "always"))
        return fail_at(MOE_ERR_PARSE, L, scheme, "Metaspace: unknown prepend_scheme \"%s\"", scheme->u.str);
    return add_string(L, r, &st->a);
}

static moe_status parse_pre_tokenizer(const loader *L, const moe_json *v) {
    moe_tokenizer *t = L->t;
    const moe_json *ty, *x;
    moe_status s;
    if (v->type == MOE_JSON_NULL) return MOE_OK;
    if ((s = component_type(L, v, "pre_tokenizer", &ty))) return s;
    if (is_str(ty, "Sequence")) {
        if ((s = need(L, v, "pretokenizers", MOE_JSON_ARRAY, &x))) return s;
        for (size_t i = 0; i < x->len && !s; i++) s = parse_pre_tokenizer(L, &x->u.items[i]);
        return s;
    }
    step st = {0};
    if (is_str(ty, "Split")) {
        s = parse_split(L, v, &st);
    } else if (is_str(ty, "ByteLevel")) {
        st.kind = PT_BYTELEVEL;
        st.pattern = PAT_GPT2;
        t->byte_level = true;
        if (!(s = opt_bool(L, v, "add_prefix_space", true, &st.prefix_space)))
            s = opt_bool(L, v, "use_regex", true, &st.use_regex);
    } else if (is_str(ty, "Metaspace")) {
        st.kind = PT_METASPACE;
        s = parse_metaspace(L, v, &st);
    } else {
        return fail_at(MOE_ERR_UNSUPPORTED, L, ty, "pre-tokenizer \"%s\" is not supported (supported: Split, "
                                                    "ByteLevel, Metaspace, Sequence)", ty->u.str);
    }
    return s ? s : add_step(L, v, t->pre, &t->n_pre, st);
}

static moe_status parse_decoder(const loader *L, const moe_json *v) {
    moe_tokenizer *t = L->t;
    const moe_json *ty, *x;
    moe_status s;
    if ((s = component_type(L, v, "decoder", &ty))) return s;
    if (is_str(ty, "Sequence")) {
        if ((s = need(L, v, "decoders", MOE_JSON_ARRAY, &x))) return s;
        for (size_t i = 0; i < x->len && !s; i++) s = parse_decoder(L, &x->u.items[i]);
        return s;
    }
    step st = {0};
    if (is_str(ty, "ByteLevel")) {
        st.kind = D_BYTELEVEL;
    } else if (is_str(ty, "Replace")) {
        st.kind = D_REPLACE;
        if ((s = replace_pattern(L, v, "decoder Replace", &st.a))) return s;
        if ((s = need(L, v, "content", MOE_JSON_STRING, &x)) || (s = add_string(L, x, &st.b))) return s;
    } else if (is_str(ty, "ByteFallback")) {
        st.kind = D_BYTEFALLBACK;
    } else if (is_str(ty, "Fuse")) {
        st.kind = D_FUSE;
    } else if (is_str(ty, "Strip")) {
        int64_t a, b;
        st.kind = D_STRIP;
        if ((s = need(L, v, "content", MOE_JSON_STRING, &x)) || (s = add_string(L, x, &st.a))) return s;
        if ((s = need(L, v, "start", MOE_JSON_NUMBER, &x)) || (s = moe_json_get_int(L->d, x, "start", 0, 1 << 20, &a)))
            return s;
        if ((s = need(L, v, "stop", MOE_JSON_NUMBER, &x)) || (s = moe_json_get_int(L->d, x, "stop", 0, 1 << 20, &b)))
            return s;
        st.start = (uint32_t)a;
        st.stop = (uint32_t)b;
    } else if (is_str(ty, "Metaspace")) {
        st.kind = D_METASPACE;
        s = parse_metaspace(L, v, &st);
    } else {
        return fail_at(MOE_ERR_UNSUPPORTED, L, ty, "decoder \"%s\" is not supported (supported: ByteLevel, Replace, "
                                                    "ByteFallback, Fuse, Strip, Metaspace, Sequence)", ty->u.str);
    }
    return s ? s : add_step(L, v, t->dec, &t->n_dec, st);
}

/* The single-sequence template of a TemplateProcessing: special tokens
 * before and after $A. */
static moe_status parse_template(const loader *L, const moe_json *v) {
    moe_tokenizer *t = L->t;
    const moe_json *single, *specials;
    moe_status s;
    if ((s = need(L, v, "single", MOE_JSON_ARRAY, &single)) ||
        (s = need(L, v, "special_tokens", MOE_JSON_OBJECT, &specials)))
        return s;
    bool seen_seq = false;
    for (size_t i = 0; i < single->len; i++) {
        const moe_json *item = &single->u.items[i], *sp, *name, *ids;
        if (moe_json_member_get(item, "Sequence")) {
            seen_seq = true;
            continue;
        }
        if ((s = need(L, item, "SpecialToken", MOE_JSON_OBJECT, &sp)) ||
            (s = need(L, sp, "id", MOE_JSON_STRING, &name)))
            return s;
        const moe_json *def = moe_json_member_get(specials, name->u.str);
        if (!def) return fail_at(MOE_ERR_PARSE, L, name, "special token \"%s\" is not in special_tokens", name->u.str);
        if ((s = need(L, def, "ids", MOE_JSON_ARRAY, &ids))) return s;
        for (size_t k = 0; k < ids->len; k++) {
            int64_t id;
            int *n = seen_seq ? &t->n_suffix : &t->n_prefix;
            if ((s = moe_json_get_int(L->d, &ids->u.items[k], "a special token id", 0, (int64_t)t->n_vocab - 1, &id)))
                return s;
            if (*n == MAX_SPECIAL) return fail_at(MOE_ERR_UNSUPPORTED, L, ids, "over %d template tokens", MAX_SPECIAL);
            (seen_seq ? t->suffix : t->prefix)[(*n)++] = (int32_t)id;
        }
    }
    return MOE_OK;
}

static moe_status parse_post_processor(const loader *L, const moe_json *v) {
    const moe_json *ty, *x;
    moe_status s;
    if (v->type == MOE_JSON_NULL) return MOE_OK;
    if ((s = component_type(L, v, "post_processor", &ty))) return s;
    if (is_str(ty, "Sequence")) {
        if ((s = need(L, v, "processors", MOE_JSON_ARRAY, &x))) return s;
        for (size_t i = 0; i < x->len && !s; i++) s = parse_post_processor(L, &x->u.items[i]);
        return s;
    }
    if (is_str(ty, "ByteLevel")) return MOE_OK; /* it only adjusts offsets */
    if (is_str(ty, "TemplateProcessing")) return parse_template(L, v);
    return fail_at(MOE_ERR_UNSUPPORTED, L, ty, "post_processor \"%s\" is not supported (supported: ByteLevel, "
                                                "TemplateProcessing, Sequence)", ty->u.str);
}

/* ---- the vocabulary, merges and added tokens ---- */

/* The piece (bytes BPE works on) of token text s: for byte-level models the
 * bytes its characters stand for; false if it has none. */
static bool to_piece(const moe_tokenizer *t, const int16_t *rev, const char *s, size_t n, uint8_t *buf,
                     const uint8_t **p, size_t *len) {
    if (!t->byte_level) {
        *p = (const uint8_t *)s;
        *len = n;
        return true;
    }
    *p = buf;
    return from_byte_alphabet((const uint8_t *)s, n, rev, buf, len);
}

/* The id of a token written as in tokenizer.json, or NO_ID. */
static int32_t lookup_name(const moe_tokenizer *t, const int16_t *rev, const char *s, size_t n) {
    for (uint32_t k = 0; k < t->n_added; k++)
        if (span_eq(t, t->name[t->added[k].id], s, n)) return t->added[k].id;
    uint8_t buf[1024];
    const uint8_t *p;
    size_t len;
    if (n > sizeof buf || !to_piece(t, rev, s, n, buf, &p, &len)) return NO_ID;
    return piece_id(t, p, len);
}

static moe_status count_ids(const loader *L, const moe_json *vocab, const moe_json *added) {
    int64_t max = -1, id;
    moe_status s;
    for (size_t i = 0; i < vocab->len; i++) {
        if ((s = moe_json_get_int(L->d, &vocab->u.members[i].value, "a vocabulary id", 0, INT32_MAX - 1, &id)))
            return s;
        if (id > max) max = id;
    }
    for (size_t i = 0; added && i < added->len; i++) {
        const moe_json *v;
        if ((s = need(L, &added->u.items[i], "id", MOE_JSON_NUMBER, &v)) ||
            (s = moe_json_get_int(L->d, v, "an added token id", 0, INT32_MAX - 1, &id)))
            return s;
        if (id > max) max = id;
    }
    L->t->n_vocab = (uint32_t)(max + 1);
    return MOE_OK;
}

/* The per-id arrays for t->n_vocab ids and a piece map for up to n_pieces
 * pieces; false when out of memory. */
static bool vocab_alloc(moe_tokenizer *t, size_t n_pieces) {
    const uint32_t n = t->n_vocab;
    t->flags = calloc(n ? n : 1, 1);
    t->name = calloc(n ? n : 1, sizeof *t->name);
    t->piece = calloc(n ? n : 1, sizeof *t->piece);
    t->out = calloc(n ? n : 1, sizeof *t->out);
    t->map_mask = pow2_above(n_pieces) - 1;
    t->map = calloc((size_t)t->map_mask + 1, sizeof *t->map);
    return t->flags && t->name && t->piece && t->out && t->map;
}

/* Token id is s[0..n) as the file writes it: its name, and unless !in_map
 * or it stands for no bytes, its piece in the map. false when out of
 * memory. */
static bool vocab_set(moe_tokenizer *t, const int16_t *rev, int32_t id, const char *s, size_t n, bool in_map) {
    if (!arena_add(t, s, n, &t->name[id])) return false;
    uint8_t buf[1024];
    const uint8_t *p;
    size_t len;
    if (!in_map || n > sizeof buf || !to_piece(t, rev, s, n, buf, &p, &len) || !len) return true;
    if (!t->byte_level) t->piece[id] = t->name[id];
    else if (!arena_add(t, p, len, &t->piece[id])) return false;
    map_insert(t, id);
    return true;
}

static moe_status read_vocab(const loader *L, const moe_json *vocab) {
    moe_tokenizer *t = L->t;
    if (!vocab_alloc(t, vocab->len)) return oom(L);
    for (size_t i = 0; i < vocab->len; i++) {
        const moe_json_member *m = &vocab->u.members[i];
        const int32_t id = (int32_t)m->value.number;
        if (t->flags[id])
            return fail_at(MOE_ERR_PARSE, L, &m->value, "id %d is given to two tokens", (int)id);
        t->flags[id] = F_MODEL;
        if (!vocab_set(t, L->rev, id, m->key, m->key_len, true)) return oom(L);
    }
    return MOE_OK;
}

static bool merges_alloc(moe_tokenizer *t, size_t n) {
    t->merges_mask = pow2_above(n) - 1;
    t->merges = malloc(((size_t)t->merges_mask + 1) * sizeof *t->merges);
    if (!t->merges) return false;
    for (size_t i = 0; i <= t->merges_mask; i++) t->merges[i].id = NO_ID;
    return true;
}

enum { MERGE_OK, MERGE_BAD_A, MERGE_BAD_B, MERGE_BAD_RESULT };

/* Adds merge `rank` of tokens a and b (as the file writes them); MERGE_OK,
 * or which of a, b and the result is not in the vocabulary. */
static int merge_add(moe_tokenizer *t, const int16_t *rev, const char *a, size_t na, const char *b, size_t nb,
                     uint32_t rank) {
    uint8_t buf[1024];
    const uint8_t *p;
    size_t la, lb;
    int32_t ia, ib, joined;
    buf[0] = 0; /* quiets -Wmaybe-uninitialized: buf is written before it is read */
    if (na > 512 || !to_piece(t, rev, a, na, buf, &p, &la) || (ia = piece_id(t, p, la)) == NO_ID) return MERGE_BAD_A;
    if (p != buf) memcpy(buf, p, la);
    if (nb > 512 || !to_piece(t, rev, b, nb, buf + la, &p, &lb) || (ib = piece_id(t, p, lb)) == NO_ID)
        return MERGE_BAD_B;
    if (p != buf + la) memcpy(buf + la, p, lb);
    if ((joined = piece_id(t, buf, la + lb)) == NO_ID) return MERGE_BAD_RESULT;
    merge_insert(t, ia, ib, rank, joined);
    return MERGE_OK;
}

/* Merge `rank`: "a b" (older files) or ["a", "b"]. */
static moe_status read_merge(const loader *L, const moe_json *m, uint32_t rank) {
    const char *a, *b;
    size_t na, nb;
    if (m->type == MOE_JSON_STRING) {
        const char *sp = memchr(m->u.str, ' ', m->len);
        if (!sp || memchr(sp + 1, ' ', m->len - (size_t)(sp + 1 - m->u.str)))
            return fail_at(MOE_ERR_PARSE, L, m, "merge \"%.64s\" must be two tokens and one space", m->u.str);
        a = m->u.str, na = (size_t)(sp - a), b = sp + 1, nb = m->len - na - 1;
    } else if (m->type == MOE_JSON_ARRAY && m->len == 2 && m->u.items[0].type == MOE_JSON_STRING &&
               m->u.items[1].type == MOE_JSON_STRING) {
        a = m->u.items[0].u.str, na = m->u.items[0].len, b = m->u.items[1].u.str, nb = m->u.items[1].len;
    } else {
        return fail_at(MOE_ERR_PARSE, L, m, "a merge must be \"a b\" or [\"a\", \"b\"]");
    }
    switch (merge_add(L->t, L->rev, a, na, b, nb, rank)) {
    case MERGE_OK: return MOE_OK;
    case MERGE_BAD_A:
        return fail_at(MOE_ERR_PARSE, L, m, "merge of \"%.*s\", which is not in the vocabulary", (int)na, a);
    case MERGE_BAD_B:
        return fail_at(MOE_ERR_PARSE, L, m, "merge of \"%.*s\", which is not in the vocabulary", (int)nb, b);
    default:
        return fail_at(MOE_ERR_PARSE, L, m, "merge \"%.*s\" + \"%.*s\": the result is not in the vocabulary", (int)na,
                       a, (int)nb, b);
    }
}

static moe_status read_merges(const loader *L, const moe_json *merges) {
    moe_tokenizer *t = L->t;
    if (merges->len >= UINT32_MAX / 4) return fail_at(MOE_ERR_PARSE, L, merges, "too many merges");
    if (!merges_alloc(t, merges->len)) return oom(L);
    moe_status s = MOE_OK;
    for (size_t i = 0; i < merges->len && !s; i++) s = read_merge(L, &merges->u.items[i], (uint32_t)i);
    return s;
}

static moe_status read_model_options(const loader *L, const moe_json *model) {
    moe_tokenizer *t = L->t;
    const moe_json *v;
    moe_status s;
    if ((s = opt_bool(L, model, "byte_fallback", false, &t->byte_fallback)) ||
        (s = opt_bool(L, model, "fuse_unk", false, &t->fuse_unk)) ||
        (s = opt_bool(L, model, "ignore_merges", false, &t->ignore_merges)))
        return s;
    if ((v = moe_json_member_get(model, "dropout")) && v->type != MOE_JSON_NULL && !(v->type == MOE_JSON_NUMBER &&
                                                                                     v->number == 0))
        return fail_at(MOE_ERR_UNSUPPORTED, L, v, "BPE dropout is not supported (it makes encoding random)");
    const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        if ((s = opt(L, model, affixes[k], MOE_JSON_STRING, &v))) return s;
        if (v && v->len) return fail_at(MOE_ERR_UNSUPPORTED, L, v, "BPE with a %s is not supported", affixes[k]);
    }
    if ((s = opt(L, model, "unk_token", MOE_JSON_STRING, &v))) return s;
    if (v && (t->unk_id = lookup_name(t, L->rev, v->u.str, v->len)) == NO_ID)
        return fail_at(MOE_ERR_PARSE, L, v, "unk_token \"%s\" is not in the vocabulary", v->u.str);
    return MOE_OK;
}

static moe_status read_added_token(const loader *L, const moe_json *v, added_token *a) {
    moe_tokenizer *t = L->t;
    const moe_json *id, *content;
    bool special;
    moe_status s;
    if (v->type != MOE_JSON_OBJECT) return fail_at(MOE_ERR_PARSE, L, v, "an added token must be an object");
    if ((s = need(L, v, "id", MOE_JSON_NUMBER, &id)) || (s = need(L, v, "content", MOE_JSON_STRING, &content)) ||
        (s = opt_bool(L, v, "special", false, &special)) || (s = opt_bool(L, v, "lstrip", false, &a->lstrip)) ||
        (s = opt_bool(L, v, "rstrip", false, &a->rstrip)) ||
        (s = opt_bool(L, v, "single_word", false, &a->single_word)) ||
        (s = opt_bool(L, v, "normalized", !special, &a->normalized)))
        return s;
    if (!content->len) return fail_at(MOE_ERR_PARSE, L, content, "an added token's content is empty");
    a->id = (int32_t)id->number;
    if (t->flags[a->id] & F_ADDED)
        return fail_at(MOE_ERR_PARSE, L, id, "id %d is given to two added tokens", (int)a->id);
    t->flags[a->id] |= F_ADDED | (special ? F_SPECIAL : 0);
    if (!span_eq(t, t->name[a->id], content->u.str, content->len) && (s = add_string(L, content, &t->name[a->id])))
        return s;
    a->match = t->name[a->id];
    t->flags[a->id] |= a->normalized ? F_NORMALIZED : 0;
    t->has_normalized_added |= a->normalized;
    return MOE_OK;
}

/* ---- growable buffers ---- */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
} buf;

static bool buf_reserve(buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static bool buf_add(buf *b, const void *p, size_t n) {
    if (!buf_reserve(b, n)) return false;
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
    return true;
}

/* Text cut into pieces: piece k is text[k ? end[k - 1] : 0 .. end[k]). */
typedef struct pieces {
    buf text;
    size_t *end;
    size_t n, cap;
    bool at_start; /* piece 0 begins the original text (Metaspace's "first") */
} pieces;

/* Ends the piece being written, unless it is empty. */
static bool piece_close(pieces *p) {
    const size_t from = p->n ? p->end[p->n - 1] : 0;
    if (p->text.len == from) return true;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        size_t *e = realloc(p->end, cap * sizeof *e);
        if (!e) return false;
        p->end = e;
        p->cap = cap;
    }
    p->end[p->n++] = p->text.len;
    return true;
}

static bool piece_add(pieces *p, const uint8_t *s, size_t n) { return buf_add(&p->text, s, n) && piece_close(p); }

static void pieces_reset(pieces *p, bool at_start) {
    p->text.len = 0;
    p->n = 0;
    p->at_start = at_start;
}

/* ---- pre-tokenizer patterns, by hand ---- */

static int class_at(const uint8_t *s, size_t n, size_t i, uint32_t *cp, size_t *len) {
    *len = moe_utf8_decode(s + i, n - i, cp);
    return moe_uc_class(*cp);
}

/* The end of the run of characters of class c from i. */
static size_t run_end(const uint8_t *s, size_t n, size_t i, int c) {
    uint32_t cp;
    size_t len;
    while (i < n && class_at(s, n, i, &cp, &len) == c) i += len;
    return i;
}

/* 's|'t|'re|'ve|'m|'ll|'d at i (s[i] is '\''), case-insensitive as in
 * Oniguruma (where U+017F, long s, folds to s); the length or 0. */
static size_t contraction(const uint8_t *s, size_t n, size_t i, bool icase) {
    static const char *forms[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
        size_t j = i + 1;
        const char *c = forms[f];
        for (; *c && j < n; c++) {
            uint32_t cp;
            const size_t len = moe_utf8_decode(s + j, n - j, &cp);
            if (cp != (uint32_t)*c && !(icase && (cp == (uint32_t)*c - 32 || (*c == 's' && cp == 0x17f)))) break;
            j += len;
        }
        if (!*c) return j - i;
    }
    return 0;
}

/* \s*[\r\n]+ (if `newlines`), then \s+(?!\S), then \s+, at whitespace i. */
static size_t match_space(const uint8_t *s, size_t n, size_t i, bool newlines) {
    size_t j = i, last = i, nl_end = 0, len;
    uint32_t cp;
    while (j < n && class_at(s, n, j, &cp, &len) == MOE_UC_SPACE) {
        if (cp == '\r' || cp == '\n') nl_end = j + len;
        last = j;
        j += len;
    }
    if (newlines && nl_end) return nl_end - i;
    return j == n || last == i ? j - i : last - i;
}

/* [^\s\p{L}\p{N}]+[\r\n]* from i. */
static size_t punct_end(const uint8_t *s, size_t n, size_t i) {
    i = run_end(s, n, i, MOE_UC_OTHER);
    while (i < n && (s[i] == '\r' || s[i] == '\n')) i++;
    return i;
}

/* Qwen2/3 (max_digits 1) and Llama-3 (3):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_qwen(const uint8_t *s, size_t n, size_t i, int max_digits) {
    uint32_t c, c1 = 0;
    size_t l, l1 = 0, j;
    const int k = class_at(s, n, i, &c, &l);
    const int k1 = i + l < n ? class_at(s, n, i + l, &c1, &l1) : -1;
    if (c == '\'' && (j = contraction(s, n, i, true))) return j;
    if (k == MOE_UC_LETTER) return run_end(s, n, i + l, MOE_UC_LETTER) - i;
    if (c != '\r' && c != '\n' && k != MOE_UC_NUMBER && k1 == MOE_UC_LETTER)
        return run_end(s, n, i + l + l1, MOE_UC_LETTER) - i;
    if (k == MOE_UC_NUMBER) {
        j = i + l;
        for (int d = 1; d < max_digits && j < n && class_at(s, n, j, &c1, &l1) == MOE_UC_NUMBER; d++) j += l1;
        return j - i;
    }
    if (c == ' ' && k1 == MOE_UC_OTHER) return punct_end(s, n, i + 1) - i;
    if (k == MOE_UC_OTHER) return punct_end(s, n, i) - i;
    return match_space(s, n, i, true);
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const uint8_t *s, size_t n, size_t i) {
    uint32_t c, c1;
    size_t l, l1, j;
    const int k = class_at(s, n, i, &c, &l);
    const int k1 = c == ' ' && i + 1 < n ? class_at(s, n, i + 1, &c1, &l1) : -1;
    if (c == '\'' && (j = contraction(s, n, i, false))) return j;
    const int order[] = {MOE_UC_LETTER, MOE_UC_NUMBER, MOE_UC_OTHER};
    for (int o = 0; o < 3; o++) {
        if (k == order[o]) return run_end(s, n, i, k) - i;
        if (k1 == order[o]) return run_end(s, n, i + 1, k1) - i;
    }
    return match_space(s, n, i, false);
}

static size_t match_pattern(int pattern, const uint8_t *s, size_t n, size_t i) {
    switch (pattern) {
    case PAT_QWEN: return match_qwen(s, n, i, 1);
    case PAT_LLAMA3: return match_qwen(s, n, i, 3);
    default: return match_gpt2(s, n, i);
    }
}

/* Splits s[0..n) into the pattern's matches (every character starts one). */
static bool split_pattern(pieces *out, int pattern, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        const size_t len = match_pattern(pattern, s, n, i);
        if (!piece_add(out, s + i, len)) return false;
        i += len;
    }
    return true;
}

/* ---- encoding ---- */

typedef struct sym {
    int32_t id, prev, next; /* id NO_ID: merged into the symbol before it */
    uint32_t off, len;      /* spm: the symbol's bytes in the word; len 0: merged into the one before */
} sym;

typedef struct cand {
    uint32_t rank;
    int32_t pos, id; /* merge symbol pos with the next one into id */
} cand;

typedef struct enc {
    const moe_tokenizer *t;
    int32_t *ids;
    size_t cap, n;
    bool oom;
    buf norm[2];
    uint32_t *scratch; /* NFC */
    size_t scratch_cap;
    pieces pc[2];
    sym *sym;
    cand *heap;
    size_t sym_cap;
} enc;

static void emit(enc *e, int32_t id) {
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

static bool cand_less(const cand *a, const cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(cand *h, size_t *n, cand c) {
    size_t i = (*n)++;
    for (; i && cand_less(&c, &h[(i - 1) / 2]); i = (i - 1) / 2) h[i] = h[(i - 1) / 2];
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n) {
    const cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(&h[c + 1], &h[c])) c++;
        if (!cand_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static void push_pair(enc *e, size_t *nh, int32_t pos) {
    const sym *s = e->sym;
    if (pos < 0 || s[pos].next < 0) return;
    const merge_slot *m = merge_find(e->t, s[pos].id, s[s[pos].next].id);
    if (m) heap_push(e->heap, nh, (cand){m->rank, pos, m->id});
}

static bool sym_reserve(enc *e, size_t n) {
    if (n <= e->sym_cap) return true;
    size_t cap = e->sym_cap ? e->sym_cap : 64;
    while (cap < n) cap *= 2;
    sym *s = realloc(e->sym, cap * sizeof *s);
    if (s) e->sym = s;
    cand *h = realloc(e->heap, 3 * cap * sizeof *h);
    if (h) e->heap = h;
    if (!s || !h) return false;
    e->sym_cap = cap;
    return true;
}

static void sym_push(enc *e, int32_t *n, int32_t id) {
    e->sym[*n] = (sym){id, *n - 1, -1, 0, 0};
    if (*n) e->sym[*n - 1].next = *n;
    (*n)++;
}

/* The initial symbols of a word: bytes, or characters with byte fallback
 * and unk as `tokenizers` does (an unknown character without either is
 * dropped). */
static int32_t word_symbols(enc *e, const uint8_t *p, size_t n) {
    const moe_tokenizer *t = e->t;
    int32_t ns = 0;
    bool last_unk = false;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        const size_t len = t->byte_level ? 1 : moe_utf8_decode(p + i, n - i, &cp);
        const int32_t id = t->byte_level ? t->byte_id[p[i]] : piece_id(t, p + i, len);
        bool bytes = id == NO_ID && t->byte_fallback;
        for (size_t k = 0; k < len && bytes; k++) bytes = t->byte_id[p[i + k]] != NO_ID;
        if (id != NO_ID) {
            sym_push(e, &ns, id);
        } else if (bytes) {
            for (size_t k = 0; k < len; k++) sym_push(e, &ns, t->byte_id[p[i + k]]);
        } else if (t->unk_id != NO_ID && !(t->fuse_unk && last_unk)) {
            sym_push(e, &ns, t->unk_id);
        }
        last_unk = id == NO_ID && !bytes;
        i += len;
    }
    return ns;
}

/* spm: queues the merge of symbol pos with the next one if together they
 * are a token. */
static void push_spm_pair(enc *e, size_t *nh, const uint8_t *p, int32_t pos) {
    const sym *s = e->sym;
    if (pos < 0 || s[pos].next < 0) return;
    const int32_t id = piece_id(e->t, p + s[pos].off, s[pos].len + s[s[pos].next].len);
    if (id != NO_ID) heap_push(e->heap, nh, (cand){e->t->score_rank[id], pos, id});
}

/* llama.cpp's SentencePiece BPE (llm_tokenizer_spm) on one word: symbols
 * are UTF-8 characters (their length read off the lead byte); any two
 * adjacent symbols that together are a token may merge, the highest-scoring
 * (leftmost first) first; then each symbol is its token, or its bytes'
 * <0xXX> tokens (else the one-byte token, else unk). */
static void encode_word_spm(enc *e, const uint8_t *p, size_t n) {
    static const uint8_t lead_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    const moe_tokenizer *t = e->t;
    if (!sym_reserve(e, n)) {
        e->oom = true;
        return;
    }
    sym *s = e->sym;
    int32_t ns = 0;
    for (size_t i = 0; i < n;) {
        size_t len = lead_len[p[i] >> 4];
        if (len > n - i) len = n - i;
        s[ns] = (sym){NO_ID, ns - 1, i + len < n ? ns + 1 : -1, (uint32_t)i, (uint32_t)len};
        ns++;
        i += len;
    }
    size_t nh = 0;
    for (int32_t k = 0; k + 1 < ns; k++) push_spm_pair(e, &nh, p, k);
    while (nh) {
        const cand c = heap_pop(e->heap, &nh);
        const int32_t next = s[c.pos].next;
        if (!s[c.pos].len || next < 0 || s[c.pos].len + s[next].len != t->piece[c.id].len) continue;
        s[c.pos].len += s[next].len;
        s[c.pos].id = c.id;
        s[next].len = 0;
        s[c.pos].next = s[next].next;
        if (s[next].next >= 0) s[s[next].next].prev = c.pos;
        push_spm_pair(e, &nh, p, s[c.pos].prev);
        push_spm_pair(e, &nh, p, c.pos);
    }
    for (int32_t k = ns ? 0 : -1; k >= 0; k = s[k].next) {
        const uint8_t *q = p + s[k].off;
        int32_t id = s[k].id != NO_ID ? s[k].id : piece_id(t, q, s[k].len);
        if (id != NO_ID) {
            emit(e, id);
            continue;
        }
        for (uint32_t b = 0; b < s[k].len; b++) {
            id = t->byte_id[q[b]] != NO_ID ? t->byte_id[q[b]] : piece_id(t, q + b, 1);
            if (id == NO_ID) id = t->unk_id;
            if (id != NO_ID) emit(e, id);
        }
    }
}

/* BPE on one word: merge the lowest-ranked adjacent pair (leftmost first)
 * until no pair has a merge. */
static void encode_word(enc *e, const uint8_t *p, size_t n) {
    const moe_tokenizer *t = e->t;
    int32_t whole;
    if (t->spm) {
        encode_word_spm(e, p, n);
        return;
    }
    if (t->ignore_merges && (whole = piece_id(t, p, n)) != NO_ID) {
        emit(e, whole);
        return;
    }
    if (!sym_reserve(e, n)) {
        e->oom = true;
        return;
    }
    const int32_t ns = word_symbols(e, p, n);
    sym *s = e->sym;
    size_t nh = 0;
    for (int32_t k = 0; k + 1 < ns; k++) push_pair(e, &nh, k);
    while (nh) {
        const cand c = heap_pop(e->heap, &nh);
        const int32_t next = s[c.pos].id == NO_ID ? -1 : s[c.pos].next;
        if (next < 0) continue;
        const merge_slot *m = merge_find(t, s[c.pos].id, s[next].id);
        if (!m || m->id != c.id) continue;
        s[c.pos].id = c.id;
        s[c.pos].next = s[next].next;
        if (s[next].next >= 0) s[s[next].next].prev = c.pos;
        s[next].id = NO_ID;
        push_pair(e, &nh, s[c.pos].prev);
        push_pair(e, &nh, c.pos);
    }
    for (int32_t k = ns ? 0 : -1; k >= 0; k = s[k].next) emit(e, s[k].id);
}

/* Metaspace: spaces become the replacement, which is prepended as the
 * scheme says, and (with split) starts a new piece. */
static bool metaspace(const moe_tokenizer *t, const step *st, pieces *out, const uint8_t *p, size_t n, bool first) {
    const uint8_t *r = at(t, st->a);
    const size_t rl = st->a.len;
    const bool starts = n >= rl ? memcmp(p, r, rl) == 0 || p[0] == ' ' : p[0] == ' ';
    if (!starts && (st->prepend == PREPEND_ALWAYS || (st->prepend == PREPEND_FIRST && first)) &&
        !buf_add(&out->text, r, rl))
        return false;
    for (size_t i = 0; i < n;) {
        const bool is_r = p[i] == ' ' || (n - i >= rl && memcmp(p + i, r, rl) == 0);
        if (is_r && st->split && !piece_close(out)) return false;
        if (!(is_r ? buf_add(&out->text, r, rl) : buf_add(&out->text, p + i, 1))) return false;
        i += is_r && p[i] != ' ' ? rl : 1;
    }
    return piece_close(out);
}

static bool pre_tokenize_step(const moe_tokenizer *t, const step *st, const pieces *in, pieces *out) {
    for (size_t k = 0; k < in->n; k++) {
        const size_t from = k ? in->end[k - 1] : 0, n = in->end[k] - from;
        const uint8_t *p = in->text.p + from;
        bool ok = true;
        if (st->kind == PT_SPLIT) {
            ok = split_pattern(out, st->pattern, p, n);
        } else if (st->kind == PT_METASPACE) {
            ok = metaspace(t, st, out, p, n, k == 0 && in->at_start);
        } else if (st->prefix_space && p[0] != ' ') {
            buf tmp = {0}; /* ByteLevel's add_prefix_space, applied to every piece as in `tokenizers` */
            ok = buf_add(&tmp, " ", 1) && buf_add(&tmp, p, n) &&
                 (st->use_regex ? split_pattern(out, PAT_GPT2, tmp.p, tmp.len) : piece_add(out, tmp.p, tmp.len));
            free(tmp.p);
        } else {
            ok = st->use_regex ? split_pattern(out, PAT_GPT2, p, n) : piece_add(out, p, n);
        }
        if (!ok) return false;
    }
    return true;
}

static void pre_tokenize(enc *e, const uint8_t *s, size_t n, bool at_start) {
    const moe_tokenizer *t = e->t;
    pieces *in = &e->pc[0], *out = &e->pc[1];
    pieces_reset(in, at_start);
    if (!piece_add(in, s, n)) {
        e->oom = true;
        return;
    }
    for (int k = 0; k < t->n_pre; k++) {
        pieces_reset(out, in->at_start);
        if (!pre_tokenize_step(t, &t->pre[k], in, out)) {
            e->oom = true;
            return;
        }
        pieces *x = in;
        in = out;
        out = x;
    }
    for (size_t k = 0; k < in->n && !e->oom; k++) {
        const size_t from = k ? in->end[k - 1] : 0;
        encode_word(e, in->text.p + from, in->end[k] - from);
    }
}

static bool replace_all(buf *dst, const uint8_t *s, size_t n, const uint8_t *a, size_t na, const uint8_t *b,
                        size_t nb) {
    for (size_t i = 0; i < n;) {
        if (n - i >= na && memcmp(s + i, a, na) == 0) {
            if (!buf_add(dst, b, nb)) return false;
            i += na;
        } else {
            if (!buf_add(dst, s + i, 1)) return false;
            i++;
        }
    }
    return true;
}

/* Runs the normalizer over s[0..n); the result is in one of norm[]. */
static bool normalize(const moe_tokenizer *t, buf norm[2], uint32_t **scratch, size_t *scratch_cap, const uint8_t *s,
                      size_t n, const uint8_t **out, size_t *out_len) {
    for (int k = 0; k < t->n_norm; k++) {
        const step *st = &t->norm[k];
        buf *dst = &norm[k & 1];
        dst->len = 0;
        if (st->kind == N_NFC) {
            if (!buf_reserve(dst, 3 * n + 1)) return false;
            if (2 * n + 1 > *scratch_cap) {
                uint32_t *x = realloc(*scratch, (2 * n + 1) * sizeof *x);
                if (!x) return false;
                *scratch = x;
                *scratch_cap = 2 * n + 1;
            }
            dst->len = moe_nfc(s, n, dst->p, *scratch);
        } else if (st->kind == N_PREPEND) {
            if (n && !(buf_add(dst, at(t, st->a), st->a.len) && buf_add(dst, s, n))) return false;
        } else if (!replace_all(dst, s, n, at(t, st->a), st->a.len, at(t, st->b), st->b.len)) {
            return false;
        }
        s = dst->p;
        n = dst->len;
    }
    *out = s;
    *out_len = n;
    return true;
}

static bool is_space_at(const uint8_t *s, size_t n, size_t i, size_t *len) {
    uint32_t cp;
    return class_at(s, n, i, &cp, len) == MOE_UC_SPACE;
}

/* The start of the character that ends at s[i] (i > 0). */
static size_t char_start(const uint8_t *s, size_t i) {
    size_t j = i - 1;
    for (int k = 0; k < 3 && j > 0 && (s[j] & 0xc0) == 0x80; k++) j--;
    return j;
}

static bool is_word_char_at(const uint8_t *s, size_t n, size_t i) {
    uint32_t cp;
    moe_utf8_decode(s + i, n - i, &cp);
    return moe_uc_is_word(cp);
}

typedef struct match {
    size_t start, end;
    int32_t id;
} match;

/* The next added token with this `normalized` flag in s[from..n),
 * leftmost-longest, its match widened by lstrip (not before `floor`) and
 * rstrip. A single_word token not standing alone is passed over, and the
 * search goes on after it, as `tokenizers` does. */
static bool next_added(const moe_tokenizer *t, const uint8_t *s, size_t n, size_t from, bool normalized, match *m) {
    const size_t floor = from;
    for (size_t i = from; i < n;) {
        const added_token *best = NULL;
        for (uint32_t k = t->added_from[s[i]]; k < t->added_from[s[i] + 1]; k++) {
            const added_token *a = &t->added[k];
            if (a->normalized == normalized && a->match.len <= n - i && (!best || a->match.len > best->match.len) &&
                memcmp(at(t, a->match), s + i, a->match.len) == 0)
                best = a;
        }
        if (!best) {
            i++;
            continue;
        }
        size_t start = i, end = i + best->match.len, len;
        if (best->single_word && ((i > 0 && is_word_char_at(s, n, char_start(s, i))) ||
                                  (end < n && is_word_char_at(s, n, end)))) {
            i = end;
            continue;
        }
        if (best->lstrip)
            while (start > floor && is_space_at(s, n, char_start(s, start), &len)) start = char_start(s, start);
        if (best->rstrip)
            while (end < n && is_space_at(s, n, end, &len)) end += len;
        *m = (match){start, end, best->id};
        return true;
    }
    return false;
}

/* Text between non-normalized added tokens: normalized, cut by the
 * normalized added tokens, pre-tokenized, merged. */
static void encode_segment(enc *e, const uint8_t *s, size_t n, bool at_start) {
    const moe_tokenizer *t = e->t;
    const uint8_t *q;
    size_t m, pos = 0;
    if (!normalize(t, e->norm, &e->scratch, &e->scratch_cap, s, n, &q, &m)) {
        e->oom = true;
        return;
    }
    match a;
    while (t->has_normalized_added && next_added(t, q, m, pos, true, &a)) {
        if (a.start > pos) pre_tokenize(e, q + pos, a.start - pos, at_start && pos == 0);
        emit(e, a.id);
        pos = a.end;
    }
    if (pos < m) pre_tokenize(e, q + pos, m - pos, at_start && pos == 0);
}

static void enc_free(enc *e) {
    for (int k = 0; k < 2; k++) {
        free(e->norm[k].p);
        free(e->pc[k].text.p);
        free(e->pc[k].end);
    }
    free(e->scratch);
    free(e->sym);
    free(e->heap);
}

moe_status moe_tokenizer_encode(const moe_tokenizer *tok, const char *text, size_t len, bool add_special,
                                int32_t *ids, size_t cap, size_t *n_out) {
    if (n_out) *n_out = 0;
    if (!tok || (!text && len) || (!ids && cap) || !n_out)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_tokenizer_encode: NULL argument");
    enc e = {.t = tok, .ids = ids, .cap = cap};
    const uint8_t *s = (const uint8_t *)text;
    for (int k = 0; add_special && k < tok->n_prefix; k++) emit(&e, tok->prefix[k]);
    size_t pos = 0;
    match a;
    while (!e.oom && next_added(tok, s, len, pos, false, &a)) {
        if (a.start > pos) encode_segment(&e, s + pos, a.start - pos, pos == 0);
        emit(&e, a.id);
        pos = a.end;
    }
    if (!e.oom && pos < len) encode_segment(&e, s + pos, len - pos, pos == 0);
    for (int k = 0; add_special && k < tok->n_suffix; k++) emit(&e, tok->suffix[k]);
    enc_free(&e);
    *n_out = e.n;
    if (e.oom) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_tokenizer_encode: out of memory (%zu bytes of text)", len);
    if (e.n > cap)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_tokenizer_encode: the text needs %zu ids, room for %zu", e.n, cap);
    return MOE_OK;
}

/* ---- decoding ---- */

static int hex_digit(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The decoder's steps before Fuse, which act on each token alone, on token
 * text s[0..n); `first`: as the first token of a text. The result is s
 * itself or in one of tmp[]; NULL when out of memory. */
static const uint8_t *decode_token(const moe_tokenizer *t, const uint8_t *s, size_t n, bool first, buf tmp[2],
                                   size_t *len) {
    for (int k = 0; k < t->n_dec && t->dec[k].kind != D_FUSE; k++) {
        const step *st = &t->dec[k];
        buf *dst = &tmp[k & 1];
        dst->len = 0;
        if (!buf_reserve(dst, n + 1)) return NULL;
        bool ok = true;
        if (st->kind == D_BYTELEVEL) {
            if (!from_byte_alphabet(s, n, t->rev, dst->p, &dst->len)) ok = buf_add(dst, s, n);
        } else if (st->kind == D_REPLACE) {
            ok = replace_all(dst, s, n, at(t, st->a), st->a.len, at(t, st->b), st->b.len);
        } else if (st->kind == D_METASPACE) {
            const bool drop = first && st->prepend != PREPEND_NEVER;
            ok = replace_all(dst, s, n, at(t, st->a), st->a.len, (const uint8_t *)" ", drop ? 0 : 1);
        } else if (st->kind == D_BYTEFALLBACK) {
            if (n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' && hex_digit(s[3]) >= 0 && hex_digit(s[4]) >= 0)
                dst->p[dst->len++] = (uint8_t)(hex_digit(s[3]) * 16 + hex_digit(s[4]));
            else
                ok = buf_add(dst, s, n);
        } else { /* D_STRIP */
            size_t from = 0, to = n;
            const uint8_t *c = at(t, st->a);
            for (uint32_t r = 0; r < st->start && to - from >= st->a.len && !memcmp(s + from, c, st->a.len); r++)
                from += st->a.len;
            for (uint32_t r = 0; r < st->stop && to - from >= st->a.len && !memcmp(s + to - st->a.len, c, st->a.len);
                 r++)
                to -= st->a.len;
            ok = buf_add(dst, s + from, to - from);
        }
        if (!ok) return NULL;
        s = dst->p;
        n = dst->len;
    }
    *len = n;
    return s;
}

/* Checks what follows Fuse (only a Strip of leading characters) and notes
 * what decode must do at the start of a text. */
static bool decoder_tail(moe_tokenizer *t) {
    bool fused = false;
    for (int k = 0; k < t->n_dec; k++) {
        const step *st = &t->dec[k];
        if (st->kind == D_FUSE) {
            fused = true;
        } else if (!fused) {
            t->meta_first |= st->kind == D_METASPACE && st->prepend != PREPEND_NEVER;
        } else if (st->kind == D_STRIP && !st->stop && !t->strip_n) {
            t->strip = st->a;
            t->strip_n = st->start;
        } else {
            return false;
        }
    }
    return true;
}

static moe_status check_decoder(const loader *L) {
    if (decoder_tail(L->t)) return MOE_OK;
    return fail_at(MOE_ERR_UNSUPPORTED, L, &L->d->root, "decoder: after Fuse only one Strip of leading characters is "
                                                        "supported");
}

/* What the decoder gets for id: its text, but a normalized added token's
 * normalized text (as `tokenizers` 0.23 does: Prepend's "▁" included). */
static span decode_source(const moe_tokenizer *t, int32_t id) {
    for (uint32_t k = 0; (t->flags[id] & F_NORMALIZED) && k < t->n_added; k++)
        if (t->added[k].id == id) return t->added[k].match;
    return t->name[id];
}

static moe_status compute_outputs(const loader *L) {
    moe_tokenizer *t = L->t;
    buf tmp[2] = {{0}, {0}};
    moe_status s = MOE_OK;
    for (uint32_t id = 0; id < t->n_vocab && !s; id++) {
        if (!t->flags[id]) continue;
        if (t->raw_added && (t->flags[id] & (F_ADDED | F_UNUSED))) {
            t->out[id] = t->flags[id] & F_UNUSED ? (span){0, 0} : t->name[id];
            continue;
        }
        size_t n;
        const span src = decode_source(t, (int32_t)id);
        const uint8_t *p = decode_token(t, at(t, src), src.len, false, tmp, &n);
        if (!p) s = oom(L);
        else if (p == at(t, src)) t->out[id] = src;
        else if (t->piece[id].len && span_eq(t, t->piece[id], p, n)) t->out[id] = t->piece[id];
        else if (!arena_add(t, p, n, &t->out[id])) s = oom(L);
    }
    free(tmp[0].p);
    free(tmp[1].p);
    return s;
}

static bool valid_id(const moe_tokenizer *t, int32_t id) {
    return id >= 0 && (uint32_t)id < t->n_vocab && t->flags[id];
}

moe_status moe_tokenizer_decode(const moe_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                                char *out, size_t cap, size_t *len) {
    if (len) *len = 0;
    if (!tok || (!ids && n) || (!out && cap) || !len)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_tokenizer_decode: NULL argument");
    for (size_t k = 0; k < n; k++)
        if (!valid_id(tok, ids[k]))
            return moe_fail(MOE_ERR_INVALID_ARG, "moe_tokenizer_decode: ids[%zu] = %d is not a token (vocabulary of "
                                                 "%u)", k, (int)ids[k], tok->n_vocab);
    buf tmp[2] = {{0}, {0}};
    size_t o = 0;
    uint32_t strip = tok->strip_n;
    bool first = true;
    for (size_t k = 0; k < n; k++) {
        const int32_t id = ids[k];
        if (skip_special && (tok->flags[id] & F_SPECIAL)) continue;
        const uint8_t *p = at(tok, tok->out[id]);
        size_t m = tok->out[id].len;
        const span src = decode_source(tok, id);
        if (first && tok->meta_first && !(p = decode_token(tok, at(tok, src), src.len, true, tmp, &m))) {
            free(tmp[0].p);
            free(tmp[1].p);
            return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_tokenizer_decode: out of memory");
        }
        first = false;
        for (; strip && m >= tok->strip.len && !memcmp(p, at(tok, tok->strip), tok->strip.len); strip--) {
            p += tok->strip.len;
            m -= tok->strip.len;
        }
        if (m) strip = 0;
        if (o + m < cap) memcpy(out + o, p, m);
        o += m;
    }
    free(tmp[0].p);
    free(tmp[1].p);
    *len = o;
    if (o >= cap)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_tokenizer_decode: %zu bytes and a NUL do not fit in %zu", o, cap);
    out[o] = 0;
    return MOE_OK;
}

const char *moe_tokenizer_token_bytes(const moe_tokenizer *tok, int32_t id, size_t *len) {
    if (!tok || !valid_id(tok, id)) return NULL;
    if (len) *len = tok->out[id].len;
    return tok->arena + tok->out[id].off;
}

bool moe_tokenizer_is_special(const moe_tokenizer *tok, int32_t id) {
    return tok && valid_id(tok, id) && (tok->flags[id] & F_SPECIAL);
}

/* Whether the lead byte c followed by b (its first continuation byte) can
 * still become a valid character. */
static bool can_continue(uint8_t c, uint8_t b) {
    if ((b & 0xc0) != 0x80) return false;
    if (c == 0xe0) return b >= 0xa0;
    if (c == 0xed) return b < 0xa0;
    if (c == 0xf0) return b >= 0x90;
    if (c == 0xf4) return b < 0x90;
    return true;
}

size_t moe_utf8_complete(const char *str, size_t n) {
    const uint8_t *s = (const uint8_t *)str;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        const uint8_t c = s[n - back];
        if ((c & 0xc0) == 0x80) continue;
        const size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        const bool possible = c >= 0xc2 && c <= 0xf4 && (back == 1 || can_continue(c, s[n - back + 1]));
        for (size_t k = 2; possible && k < back; k++)
            if ((s[n - back + k] & 0xc0) != 0x80) return n;
        return need > back && possible ? n - back : n;
    }
    return n;
}

/* ---- loading ---- */

static moe_status read_file(const char *path, char **text, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return moe_fail(MOE_ERR_IO, "%s: cannot open", path);
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return moe_fail(MOE_ERR_IO, "%s: cannot find its size", path);
    }
    if ((unsigned long)size > MOE_JSON_MAX_BYTES) {
        fclose(f);
        return moe_fail(MOE_ERR_PARSE, "%s: %ld bytes, over the %u a JSON file may have", path, size,
                        MOE_JSON_MAX_BYTES);
    }
    *text = malloc((size_t)size + 1);
    if (!*text) {
        fclose(f);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for %ld bytes", path, size);
    }
    *len = fread(*text, 1, (size_t)size, f);
    const bool bad = ferror(f) || *len != (size_t)size;
    fclose(f);
    if (bad) {
        free(*text);
        return moe_fail(MOE_ERR_IO, "%s: read error", path);
    }
    return MOE_OK;
}

/* Fills t->added (allocated for n) with tmp[0..n), bucketed by the first
 * byte of their match: a counting sort, stable. */
static void index_added(moe_tokenizer *t, const added_token *tmp, uint32_t n) {
    uint32_t count[257] = {0};
    for (uint32_t i = 0; i < n; i++) count[at(t, tmp[i].match)[0] + 1]++;
    for (int b = 0; b < 256; b++) count[b + 1] += count[b];
    memcpy(t->added_from, count, sizeof count);
    for (uint32_t i = 0; i < n; i++) t->added[count[at(t, tmp[i].match)[0]]++] = tmp[i];
    t->n_added = n;
}

static moe_status read_added_tokens(const loader *L, const moe_json *arr) {
    moe_tokenizer *t = L->t;
    const size_t n = arr ? arr->len : 0;
    added_token *tmp = calloc(n ? n : 1, sizeof *tmp);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!tmp || !t->added) {
        free(tmp);
        return oom(L);
    }
    moe_status s = MOE_OK;
    for (size_t i = 0; i < n && !s; i++) s = read_added_token(L, &arr->u.items[i], &tmp[i]);
    if (!s) index_added(t, tmp, (uint32_t)n);
    free(tmp);
    return s;
}

/* A normalized added token is looked for in normalized text, so its
 * content is normalized too (Prepend included, as `tokenizers` does). */
static moe_status normalize_added(const loader *L) {
    moe_tokenizer *t = L->t;
    buf norm[2] = {{0}, {0}};
    uint32_t *scratch = NULL;
    size_t scratch_cap = 0;
    moe_status s = MOE_OK;
    for (uint32_t k = 0; k < t->n_added && !s; k++) {
        added_token *a = &t->added[k];
        const uint8_t *p;
        size_t n;
        if (!a->normalized || !t->n_norm) continue;
        buf copy = {0};
        if (!buf_add(&copy, at(t, a->match), a->match.len) ||
            !normalize(t, norm, &scratch, &scratch_cap, copy.p, copy.len, &p, &n) || !arena_add(t, p, n, &a->match))
            s = oom(L);
        free(copy.p);
    }
    free(norm[0].p);
    free(norm[1].p);
    free(scratch);
    if (s) return s;
    /* Re-bucket: normalizing may change a token's first byte. */
    for (uint32_t k = 1; k < t->n_added; k++)
        for (uint32_t j = k; j > 0 && at(t, t->added[j - 1].match)[0] > at(t, t->added[j].match)[0]; j--) {
            const added_token x = t->added[j];
            t->added[j] = t->added[j - 1];
            t->added[j - 1] = x;
        }
    memset(t->added_from, 0, sizeof t->added_from);
    for (uint32_t k = 0; k < t->n_added; k++) t->added_from[at(t, t->added[k].match)[0] + 1]++;
    for (int b = 0; b < 256; b++) t->added_from[b + 1] += t->added_from[b];
    return MOE_OK;
}

static void find_byte_ids(moe_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char name[8];
        const uint8_t byte = (uint8_t)b;
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = t->byte_level ? piece_id(t, &byte, 1) : t->byte_fallback ? piece_id(t, name, 6) : NO_ID;
    }
}

static moe_status parse_model(const loader *L, const moe_json *root) {
    const moe_json *model, *ty, *vocab, *merges, *added;
    moe_status s;
    if ((s = need(L, root, "model", MOE_JSON_OBJECT, &model)) || (s = need(L, model, "type", MOE_JSON_STRING, &ty)))
        return s;
    if (!is_str(ty, "BPE"))
        return fail_at(MOE_ERR_UNSUPPORTED, L, ty, "model type \"%s\" is not supported (only BPE)", ty->u.str);
    if ((s = need(L, model, "vocab", MOE_JSON_OBJECT, &vocab)) ||
        (s = need(L, model, "merges", MOE_JSON_ARRAY, &merges)) ||
        (s = opt(L, root, "added_tokens", MOE_JSON_ARRAY, &added)))
        return s;
    if ((s = count_ids(L, vocab, added)) || (s = read_vocab(L, vocab)) || (s = read_merges(L, merges)) ||
        (s = read_added_tokens(L, added)) || (s = read_model_options(L, model)))
        return s;
    find_byte_ids(L->t);
    return MOE_OK;
}

static moe_status parse_tokenizer(const loader *L) {
    const moe_json *root = &L->d->root, *v;
    moe_status s;
    if (root->type != MOE_JSON_OBJECT) return fail_at(MOE_ERR_PARSE, L, root, "not a tokenizer.json: no object");
    if ((v = moe_json_member_get(root, "pre_tokenizer")) && (s = parse_pre_tokenizer(L, v))) return s;
    if ((v = moe_json_member_get(root, "normalizer")) && (s = parse_normalizer(L, v))) return s;
    if (!(v = moe_json_member_get(root, "decoder")) || v->type == MOE_JSON_NULL)
        return fail_at(MOE_ERR_UNSUPPORTED, L, v ? v : root, "a tokenizer without a decoder is not supported");
    if ((s = parse_decoder(L, v)) || (s = check_decoder(L)) || (s = parse_model(L, root))) return s;
    if ((v = moe_json_member_get(root, "post_processor")) && (s = parse_post_processor(L, v))) return s;
    if ((s = normalize_added(L)) || (s = compute_outputs(L))) return s;
    if (L->t->n_prefix) L->t->bos = L->t->prefix[0];
    return MOE_OK;
}

/* bos_token and the like: "text", {"content": "text", ...} or null. */
static moe_status config_token(const loader *L, const moe_json *cfg, const char *key, int32_t *out) {
    const moe_json *v = moe_json_member_get(cfg, key), *c = v;
    moe_status s;
    if (!v || v->type == MOE_JSON_NULL) return MOE_OK;
    if (v->type == MOE_JSON_OBJECT && (s = need(L, v, "content", MOE_JSON_STRING, &c))) return s;
    if (c->type != MOE_JSON_STRING)
        return fail_at(MOE_ERR_PARSE, L, v, "\"%s\" must be a string, an object with \"content\" or null", key);
    if ((*out = lookup_name(L->t, L->rev, c->u.str, c->len)) == NO_ID)
        return fail_at(MOE_ERR_PARSE, L, c, "%s \"%.64s\" is not a token of the tokenizer", key, c->u.str);
    return MOE_OK;
}

/* chat_template: a string, or a list of {"name", "template"} of which "default" is taken. */
static moe_status config_template(const loader *L, const moe_json *cfg) {
    const moe_json *v = moe_json_member_get(cfg, "chat_template"), *tpl = NULL;
    if (!v || v->type == MOE_JSON_NULL) return MOE_OK;
    if (v->type == MOE_JSON_STRING) tpl = v;
    for (size_t i = 0; v->type == MOE_JSON_ARRAY && i < v->len; i++)
        if (is_str(moe_json_member_get(&v->u.items[i], "name"), "default"))
            tpl = moe_json_member_get(&v->u.items[i], "template");
    if (!tpl) return MOE_OK;
    if (tpl->type != MOE_JSON_STRING) return fail_at(MOE_ERR_PARSE, L, tpl, "the chat template must be a string");
    if (!(L->t->chat_template = malloc(tpl->len + 1))) return oom(L);
    memcpy(L->t->chat_template, tpl->u.str, tpl->len + 1);
    return MOE_OK;
}

static moe_status load_config(moe_tokenizer *t, const char *path) {
    char *text;
    size_t len;
    moe_json_doc d;
    moe_status s = read_file(path, &text, &len);
    if (s) return s;
    s = moe_json_parse(&d, text, len, path);
    free(text);
    if (s) return s;
    const loader L = {t, &d, t->rev, path};
    if (d.root.type != MOE_JSON_OBJECT) s = fail_at(MOE_ERR_PARSE, &L, &d.root, "not a tokenizer_config.json");
    if (!s && moe_json_member_get(&d.root, "bos_token")) t->bos = NO_ID;
    if (!s) s = config_token(&L, &d.root, "bos_token", &t->bos);
    if (!s) s = config_token(&L, &d.root, "eos_token", &t->eos);
    if (!s) s = config_token(&L, &d.root, "pad_token", &t->pad);
    if (!s) s = config_template(&L, &d.root);
    moe_json_free(&d);
    return s;
}

moe_status moe_tokenizer_load(moe_tokenizer **out, const char *path, const char *config_path) {
    if (!out || !path) return moe_fail(MOE_ERR_INVALID_ARG, "moe_tokenizer_load: NULL argument");
    *out = NULL;
    char *text;
    size_t len;
    moe_json_doc d;
    moe_status s = read_file(path, &text, &len);
    if (s) return s;
    s = moe_json_parse(&d, text, len, path);
    free(text);
    if (s) return s;
    moe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        moe_json_free(&d);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    t->unk_id = t->bos = t->eos = t->pad = NO_ID;
    byte_alphabet_reverse(t->rev);
    const loader L = {t, &d, t->rev, path};
    s = parse_tokenizer(&L);
    moe_json_free(&d);
    if (!s && config_path) s = load_config(t, config_path);
    if (s) moe_tokenizer_free(&t);
    *out = t;
    return s;
}

void moe_tokenizer_free(moe_tokenizer **tok) {
    if (!tok || !*tok) return;
    moe_tokenizer *t = *tok;
    free(t->arena);
    free(t->flags);
    free(t->name);
    free(t->piece);
    free(t->out);
    free(t->map);
    free(t->merges);
    free(t->added);
    free(t->score_rank);
    free(t->chat_template);
    free(t);
    *tok = NULL;
}

void moe_tokenizer_get_info(const moe_tokenizer *tok, moe_tokenizer_info *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    out->bos_id = out->eos_id = out->pad_id = NO_ID;
    if (!tok) return;
    out->n_vocab = tok->n_vocab;
    out->n_added = tok->n_added;
    out->byte_level = tok->byte_level;
    out->bos_id = tok->bos;
    out->eos_id = tok->eos;
    out->pad_id = tok->pad;
    out->chat_template = tok->chat_template;
}

int32_t moe_tokenizer_token_id(const moe_tokenizer *tok, const char *token) {
    return tok && token ? lookup_name(tok, tok->rev, token, strlen(token)) : NO_ID;
}

/* ---- reading a GGUF file's tokenizer (llama.cpp's layout) ---- */

#define GK_MODEL "tokenizer.ggml.model"
#define GK_PRE "tokenizer.ggml.pre"
#define GK_TOKENS "tokenizer.ggml.tokens"
#define GK_TYPES "tokenizer.ggml.token_type"
#define GK_SCORES "tokenizer.ggml.scores"
#define GK_MERGES "tokenizer.ggml.merges"

/* llama.cpp's token types (gguf-py's TokenType). */
enum { TT_NORMAL = 1, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE };

/* The tokenizer.ggml.pre names whose regex in llama.cpp (llm_tokenizer_bpe)
 * is one of the patterns written out above; the Llama-3 family also sets
 * ignore_merges and add_bos there. "jina-v1-en", "jina-v2-code" and
 * "roberta-bpe" use GPT-2's regex but add a separator token: not taken. */
static const struct {
    const char *name;
    int pattern;
    bool llama3; /* ignore_merges, add_bos by default */
} known_pres[] = {
    {"qwen2", PAT_QWEN, false},          {"deepseek-r1-qwen", PAT_QWEN, false}, {"kormo", PAT_QWEN, false},
    {"f2llmv2", PAT_QWEN, false},        {"megrez", PAT_QWEN, false},           {"stablelm2", PAT_QWEN, false},
    {"hunyuan", PAT_QWEN, false},        {"solar-open", PAT_QWEN, false},       {"llama3", PAT_LLAMA3, true},
    {"llama-v3", PAT_LLAMA3, true},      {"llama-bpe", PAT_LLAMA3, true},       {"falcon3", PAT_LLAMA3, true},
    {"falcon-h1", PAT_LLAMA3, true},     {"pixtral", PAT_LLAMA3, true},         {"midm-2.0", PAT_LLAMA3, true},
    {"lfm2", PAT_LLAMA3, true},          {"jina-v5-nano", PAT_LLAMA3, true},    {"dbrx", PAT_LLAMA3, false},
    {"smaug-bpe", PAT_LLAMA3, false},    {"gpt-2", PAT_GPT2, false},            {"phi-2", PAT_GPT2, false},
    {"jina-es", PAT_GPT2, false},        {"jina-de", PAT_GPT2, false},          {"gigachat", PAT_GPT2, false},
    {"jina-v2-es", PAT_GPT2, false},     {"jina-v2-de", PAT_GPT2, false},       {"a.x-4.0", PAT_GPT2, false},
    {"mellum", PAT_GPT2, false},         {"modern-bert", PAT_GPT2, false},      {"mpt", PAT_GPT2, false},
    {"olmo", PAT_GPT2, false},           {"jais", PAT_GPT2, false},             {"trillion", PAT_GPT2, false},
    {"granite-docling", PAT_GPT2, false}, {"exaone4", PAT_GPT2, false},
};

static moe_status gguf_fail(moe_status s, const loader *L, const char *key, const char *fmt, ...) MOE_PRINTF(4, 5);

static moe_status gguf_fail(moe_status s, const loader *L, const char *key, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return moe_fail(s, "%s: key \"%s\": %s", L->file, key, msg);
}

/* An optional token id: *out unchanged if `key` is absent. */
static moe_status gguf_token_id(const loader *L, const moe_gguf *g, const char *key, int32_t *out) {
    uint32_t v;
    moe_status s;
    if (!moe_gguf_get(g, key)) return MOE_OK;
    if ((s = moe_gguf_get_u32(g, key, &v))) return s;
    if (v >= L->t->n_vocab) return gguf_fail(MOE_ERR_PARSE, L, key, "id %u is outside the vocabulary (%u tokens)", v,
                                             L->t->n_vocab);
    *out = (int32_t)v;
    return MOE_OK;
}

static moe_status gguf_opt_bool(const moe_gguf *g, const char *key, bool *out) {
    return moe_gguf_get(g, key) ? moe_gguf_get_bool(g, key, out) : MOE_OK;
}

/* tokenizer.ggml.token_type and .scores: optional, one per token. */
static moe_status gguf_per_token(const loader *L, const moe_gguf *g, const char *key, moe_gguf_type elem,
                                 moe_gguf_type elem2, const moe_gguf_kv **out) {
    const moe_gguf_kv *kv = moe_gguf_get(g, key);
    moe_status s;
    *out = NULL;
    if (!kv) return MOE_OK;
    if (kv->type == MOE_GGUF_ARR && kv->v.arr.type == elem2) elem = elem2;
    if ((s = moe_gguf_get_arr(g, key, elem, &kv))) return s;
    if (kv->v.arr.n != L->t->n_vocab)
        return gguf_fail(MOE_ERR_PARSE, L, key, "%llu entries for %u tokens", (unsigned long long)kv->v.arr.n,
                         L->t->n_vocab);
    *out = kv;
    return MOE_OK;
}

static moe_status gguf_vocab(const loader *L, const moe_gguf_kv *tokens, const moe_gguf_kv *types) {
    moe_tokenizer *t = L->t;
    if (!vocab_alloc(t, t->n_vocab)) return oom(L);
    uint32_t n_added = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        const int64_t ty = types ? moe_gguf_arr_int(types, id) : TT_NORMAL;
        const moe_gguf_str name = moe_gguf_arr_str(tokens, id);
        if (ty < TT_NORMAL || ty > TT_BYTE)
            return gguf_fail(MOE_ERR_PARSE, L, GK_TYPES, "token %u has type %lld (1 to 6 allowed)", id, (long long)ty);
        static const uint8_t flags[] = {0, F_MODEL, F_MODEL | F_ADDED | F_SPECIAL, F_MODEL | F_ADDED | F_SPECIAL,
                                        F_MODEL | F_ADDED, F_MODEL | F_UNUSED, F_MODEL};
        t->flags[id] = flags[ty];
        /* llama.cpp's SPM looks every token up by its text; its BPE only
         * ever produces normal ones. */
        const bool in_map = t->spm || ty == TT_NORMAL || ty == TT_BYTE;
        if (!vocab_set(t, L->rev, (int32_t)id, name.ptr, name.len, in_map)) return oom(L);
        if ((t->flags[id] & F_ADDED) && name.len) n_added++;
        if (ty == TT_UNKNOWN && t->unk_id == NO_ID) t->unk_id = (int32_t)id;
    }
    /* Control, unknown and user-defined tokens are cut out of the text
     * first, as llama.cpp does with parse_special. */
    added_token *tmp = calloc(n_added ? n_added : 1, sizeof *tmp);
    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!tmp || !t->added) {
        free(tmp);
        return oom(L);
    }
    uint32_t k = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++)
        if ((t->flags[id] & F_ADDED) && t->name[id].len) tmp[k++] = (added_token){.match = t->name[id], .id = (int32_t)id};
    index_added(t, tmp, n_added);
    free(tmp);
    return MOE_OK;
}

/* Merges "a b", split at the first space after the first byte as llama.cpp does. */
static moe_status gguf_merges(const loader *L, const moe_gguf *g) {
    const moe_gguf_kv *kv;
    moe_status s;
    if ((s = moe_gguf_get_arr(g, GK_MERGES, MOE_GGUF_STR, &kv))) return s;
    if (kv->v.arr.n >= UINT32_MAX / 4) return gguf_fail(MOE_ERR_PARSE, L, GK_MERGES, "too many merges");
    if (!merges_alloc(L->t, kv->v.arr.n)) return oom(L);
    for (uint64_t i = 0; i < kv->v.arr.n; i++) {
        const moe_gguf_str m = moe_gguf_arr_str(kv, i);
        const char *sp = m.len > 1 ? memchr(m.ptr + 1, ' ', m.len - 1) : NULL;
        const int len = m.len > 200 ? 200 : (int)m.len;
        if (!sp) return gguf_fail(MOE_ERR_PARSE, L, GK_MERGES, "merge %llu \"%.*s\" is not two tokens and a space",
                                  (unsigned long long)i, len, m.ptr);
        const size_t na = (size_t)(sp - m.ptr);
        const int r = merge_add(L->t, L->rev, m.ptr, na, sp + 1, m.len - na - 1, (uint32_t)i);
        /* A merge whose result is no token can never produce one; llama.cpp
         * loads such files (its converter writes one when a vocabulary has
         * no merges, since GGUF has no empty arrays), so it is skipped. */
        if (r != MERGE_OK && r != MERGE_BAD_RESULT)
            return gguf_fail(MOE_ERR_PARSE, L, GK_MERGES, "merge %llu \"%.*s\": %s is not in the vocabulary",
                             (unsigned long long)i, len, m.ptr,
                             r == MERGE_BAD_A ? "the first token" : "the second token");
    }
    return MOE_OK;
}

typedef struct scored {
    float score;
    uint32_t id;
} scored;

static int by_score_desc(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* spm: ranks from tokenizer.ggml.scores (all 0 without it, as in llama.cpp). */
static moe_status gguf_scores(const loader *L, const moe_gguf_kv *scores) {
    moe_tokenizer *t = L->t;
    const uint32_t n = t->n_vocab;
    scored *v = malloc((n ? n : 1) * sizeof *v);
    t->score_rank = calloc(n ? n : 1, sizeof *t->score_rank);
    if (!v || !t->score_rank) {
        free(v);
        return oom(L);
    }
    for (uint32_t id = 0; id < n; id++) {
        const double x = !scores ? 0 : scores->v.arr.type == MOE_GGUF_F32 ? moe_gguf_arr_float(scores, id)
                                                                           : (double)moe_gguf_arr_int(scores, id);
        v[id] = (scored){x == x ? (float)x : -FLT_MAX, id}; /* NaN: lowest */
    }
    qsort(v, n, sizeof *v, by_score_desc);
    for (uint32_t k = 0; k < n; k++)
        t->score_rank[v[k].id] = k && v[k].score == v[k - 1].score ? t->score_rank[v[k - 1].id] : k;
    free(v);
    return MOE_OK;
}

static moe_status add_text_step(const loader *L, step *steps, int *n, step st, const char *a, const char *b) {
    if (!arena_add(L->t, a, strlen(a), &st.a) || (b && !arena_add(L->t, b, strlen(b), &st.b))) return oom(L);
    steps[(*n)++] = st;
    return MOE_OK;
}

/* "llama": Llama-2's tokenizer.json normalizer and decoder, which do what
 * llama.cpp does around its SPM merging: a space before the text (and after
 * each added token) if add_space_prefix, spaces as "▁"; decoding undoes it. */
static moe_status gguf_spm_steps(const loader *L, const moe_gguf *g) {
    moe_tokenizer *t = L->t;
    bool prefix = true;
    moe_status s;
    if ((s = gguf_opt_bool(g, "tokenizer.ggml.add_space_prefix", &prefix))) return s;
    if ((prefix && (s = add_text_step(L, t->norm, &t->n_norm, (step){.kind = N_PREPEND}, "\xe2\x96\x81", NULL))) ||
        (s = add_text_step(L, t->norm, &t->n_norm, (step){.kind = N_REPLACE}, " ", "\xe2\x96\x81")) ||
        (s = add_text_step(L, t->dec, &t->n_dec, (step){.kind = D_REPLACE}, "\xe2\x96\x81", " ")))
        return s;
    t->dec[t->n_dec++] = (step){.kind = D_BYTEFALLBACK};
    t->dec[t->n_dec++] = (step){.kind = D_FUSE};
    if (prefix && (s = add_text_step(L, t->dec, &t->n_dec, (step){.kind = D_STRIP, .start = 1}, " ", NULL))) return s;
    decoder_tail(t);
    return MOE_OK;
}

/* "gpt2": the pre-tokenizer's pattern, then byte-level BPE by merges. */
static moe_status gguf_gpt2_steps(const loader *L, const moe_gguf *g, bool *add_bos) {
    moe_tokenizer *t = L->t;
    moe_gguf_str pre;
    moe_status s;
    if (!moe_gguf_get(g, GK_PRE))
        return gguf_fail(MOE_ERR_UNSUPPORTED, L, GK_PRE, "missing: llama.cpp's \"default\" pre-tokenizer, used then, "
                                                         "is not supported");
    if ((s = moe_gguf_get_str(g, GK_PRE, &pre))) return s;
    for (size_t k = 0; k < sizeof known_pres / sizeof known_pres[0]; k++)
        if (moe_gguf_str_eq(pre, known_pres[k].name)) {
            t->pre[t->n_pre++] = (step){.kind = PT_SPLIT, .pattern = known_pres[k].pattern};
            t->dec[t->n_dec++] = (step){.kind = D_BYTELEVEL};
            t->ignore_merges = *add_bos = known_pres[k].llama3;
            return MOE_OK;
        }
    return gguf_fail(MOE_ERR_UNSUPPORTED, L, GK_PRE, "pre-tokenizer \"%.*s\" is not supported (supported: those "
                                                     "llama.cpp splits with GPT-2's, Qwen2's or Llama-3's pattern, "
                                                     "e.g. gpt-2, olmo, qwen2, llama-bpe)",
                     pre.len > 100 ? 100 : (int)pre.len, pre.ptr);
}

static moe_status gguf_specials(const loader *L, const moe_gguf *g, bool add_bos) {
    moe_tokenizer *t = L->t;
    bool add_eos = false;
    moe_status s;
    if (t->spm) {
        t->bos = t->n_vocab > 1 ? 1 : NO_ID; /* llama.cpp's defaults for "llama" */
        t->eos = t->n_vocab > 2 ? 2 : NO_ID;
    }
    if ((s = gguf_token_id(L, g, "tokenizer.ggml.bos_token_id", &t->bos)) ||
        (s = gguf_token_id(L, g, "tokenizer.ggml.eos_token_id", &t->eos)) ||
        (s = gguf_token_id(L, g, "tokenizer.ggml.padding_token_id", &t->pad)) ||
        (s = gguf_token_id(L, g, "tokenizer.ggml.unknown_token_id", &t->unk_id)) ||
        (s = gguf_opt_bool(g, "tokenizer.ggml.add_bos_token", &add_bos)) ||
        (s = gguf_opt_bool(g, "tokenizer.ggml.add_eos_token", &add_eos)))
        return s;
    if (add_bos && t->bos != NO_ID) t->prefix[t->n_prefix++] = t->bos;
    if (add_eos && t->eos != NO_ID) t->suffix[t->n_suffix++] = t->eos;
    moe_gguf_str tpl;
    if (!moe_gguf_get(g, "tokenizer.chat_template")) return MOE_OK;
    if ((s = moe_gguf_get_str(g, "tokenizer.chat_template", &tpl))) return s;
    if (!(t->chat_template = malloc(tpl.len + 1))) return oom(L);
    memcpy(t->chat_template, tpl.ptr, tpl.len);
    t->chat_template[tpl.len] = 0;
    return MOE_OK;
}

static moe_status gguf_tokenizer(const loader *L, const moe_gguf *g) {
    moe_tokenizer *t = L->t;
    const moe_gguf_kv *tokens, *types, *scores = NULL;
    moe_gguf_str model;
    bool add_bos = false;
    moe_status s;
    if ((s = moe_gguf_get_str(g, GK_MODEL, &model))) return s;
    t->spm = moe_gguf_str_eq(model, "llama");
    t->byte_level = moe_gguf_str_eq(model, "gpt2");
    if (!t->spm && !t->byte_level)
        return gguf_fail(MOE_ERR_UNSUPPORTED, L, GK_MODEL, "tokenizer model \"%.*s\" is not supported (supported: gpt2, "
                                                           "llama)", model.len > 100 ? 100 : (int)model.len, model.ptr);
    t->raw_added = true;
    t->byte_fallback = t->spm;
    add_bos = t->spm;
    if ((s = moe_gguf_get_arr(g, GK_TOKENS, MOE_GGUF_STR, &tokens))) return s;
    if (!tokens->v.arr.n || tokens->v.arr.n >= INT32_MAX)
        return gguf_fail(MOE_ERR_PARSE, L, GK_TOKENS, "%llu tokens", (unsigned long long)tokens->v.arr.n);
    t->n_vocab = (uint32_t)tokens->v.arr.n;
    if ((s = gguf_per_token(L, g, GK_TYPES, MOE_GGUF_I32, MOE_GGUF_I32, &types)) ||
        (t->spm && (s = gguf_per_token(L, g, GK_SCORES, MOE_GGUF_F32, MOE_GGUF_I32, &scores))))
        return s;
    if ((s = t->spm ? gguf_spm_steps(L, g) : gguf_gpt2_steps(L, g, &add_bos)) || (s = gguf_vocab(L, tokens, types)) ||
        (s = t->spm ? gguf_scores(L, scores) : gguf_merges(L, g)) || (s = gguf_specials(L, g, add_bos)))
        return s;
    find_byte_ids(t);
    return compute_outputs(L);
}

moe_status moe_tokenizer_from_gguf(moe_tokenizer **out, const moe_gguf *g) {
    if (!out || !g) return moe_fail(MOE_ERR_INVALID_ARG, "moe_tokenizer_from_gguf: NULL argument");
    *out = NULL;
    const char *path = g->file.path ? g->file.path : "(GGUF)";
    moe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    t->unk_id = t->bos = t->eos = t->pad = NO_ID;
    byte_alphabet_reverse(t->rev);
    const loader L = {t, NULL, t->rev, path};
    const moe_status s = gguf_tokenizer(&L, g);
    if (s) moe_tokenizer_free(&t);
    *out = t;
    return s;
}
