/* json.c - the strict JSON reader (see json.h). A recursive-descent parser:
 * the depth limit bounds the recursion, so a hostile file cannot overflow
 * the stack. */
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef struct parser {
    const char *p, *end;
    uint32_t line;
    int depth;
    char *out; /* next free byte of the document's string storage */
    const char *name;
} parser;

#define FAIL(P, ...) moe_fail_at(MOE_ERR_PARSE, (P)->name, (P)->line, __VA_ARGS__)

static moe_status out_of_memory(const parser *P) {
    return moe_fail_at(MOE_ERR_OUT_OF_MEMORY, P->name, P->line, "out of memory for the JSON tree");
}

/* "'x'" for a printable character, "byte 0xNN" otherwise, for messages. */
static const char *describe(unsigned char c, char buf[16]) {
    if (c >= 0x20 && c < 0x7f)
        snprintf(buf, 16, "'%c'", c);
    else
        snprintf(buf, 16, "byte 0x%02x", c);
    return buf;
}

static void skip_ws(parser *P) {
    while (P->p < P->end) {
        const char c = *P->p;
        if (c == '\n')
            P->line++;
        else if (c != ' ' && c != '\t' && c != '\r')
            return;
        P->p++;
    }
}

static void free_value(moe_json *v) {
    if (v->type == MOE_JSON_ARRAY) {
        for (size_t i = 0; i < v->len; i++) free_value(&v->u.items[i]);
        free(v->u.items);
    } else if (v->type == MOE_JSON_OBJECT) {
        for (size_t i = 0; i < v->len; i++) free_value(&v->u.members[i].value);
        free(v->u.members);
    }
    v->type = MOE_JSON_NULL;
    v->len = 0;
}

static moe_status parse_value(parser *P, moe_json *v);

/* ---- strings ---- */

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The 4 hex digits after "\u" at P->p (which points at the 'u'). */
static moe_status read_u_escape(parser *P, uint32_t *cp) {
    if (P->end - P->p < 5) return FAIL(P, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 1; i <= 4; i++) {
        const int h = hex_digit(P->p[i]);
        if (h < 0) return FAIL(P, "\\u must be followed by 4 hex digits");
        v = v * 16 + (uint32_t)h;
    }
    P->p += 5;
    *cp = v;
    return MOE_OK;
}

static void put_utf8(parser *P, uint32_t cp) {
    char *o = P->out;
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xc0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xe0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *o++ = (char)(0xf0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    P->out = o;
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t avail) {
    const unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c == 0xe0) n = 3, lo = 0xa0;
    else if (c >= 0xe1 && c <= 0xec) n = 3;
    else if (c == 0xed) n = 3, hi = 0x9f;
    else if (c >= 0xee && c <= 0xef) n = 3;
    else if (c == 0xf0) n = 4, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3) n = 4;
    else if (c == 0xf4) n = 4, hi = 0x8f;
    else return 0;
    if (avail < n || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf) return 0;
    return n;
}

/* P->p at the opening quote. The decoded bytes go to P->out, which never
 * runs past the storage: a string's decoded form plus its NUL is shorter
 * than its text with both quotes. */
static moe_status parse_string(parser *P, const char **str, size_t *len) {
    char *start = P->out;
    P->p++;
    for (;;) {
        if (P->p >= P->end) return FAIL(P, "unterminated string");
        const unsigned char c = (unsigned char)*P->p;
        if (c == '"') {
            P->p++;
            break;
        }
        if (c < 0x20) return FAIL(P, "unescaped control character 0x%02x in a string", c);
        if (c >= 0x80) {
            const size_t n = utf8_len((const unsigned char *)P->p, (size_t)(P->end - P->p));
            if (!n) return FAIL(P, "invalid UTF-8 in a string");
            memcpy(P->out, P->p, n);
            P->out += n, P->p += n;
            continue;
        }
        if (c != '\\') {
            *P->out++ = (char)c;
            P->p++;
            continue;
        }
        if (P->end - P->p < 2) return FAIL(P, "unterminated string");
        const char e = P->p[1];
        P->p++; /* at the escape letter */
        char simple = 0;
        switch (e) {
        case '"': simple = '"'; break;
        case '\\': simple = '\\'; break;
        case '/': simple = '/'; break;
        case 'b': simple = '\b'; break;
        case 'f': simple = '\f'; break;
        case 'n': simple = '\n'; break;
        case 'r': simple = '\r'; break;
        case 't': simple = '\t'; break;
        case 'u': break;
        default: {
            char b[16];
            return FAIL(P, "invalid escape \\%s in a string", describe((unsigned char)e, b));
        }
        }
        if (simple) {
            *P->out++ = simple;
            P->p++;
            continue;
        }
        uint32_t cp;
        moe_status st = read_u_escape(P, &cp);
        if (st) return st;
        if (cp >= 0xdc00 && cp <= 0xdfff) return FAIL(P, "\\u%04x is a lone low surrogate", (unsigned)cp);
        if (cp >= 0xd800 && cp <= 0xdbff) { /* a high surrogate: its low half must follow */
            uint32_t lo;
            if (P->end - P->p < 2 || P->p[0] != '\\' || P->p[1] != 'u')
                return FAIL(P, "\\u%04x is a high surrogate without a low one after it", (unsigned)cp);
            P->p++;
            if ((st = read_u_escape(P, &lo))) return st;
            if (lo < 0xdc00 || lo > 0xdfff)
                return FAIL(P, "\\u%04x is a high surrogate followed by \\u%04x, not a low one", (unsigned)cp,
                            (unsigned)lo);
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        put_utf8(P, cp);
    }
    *len = (size_t)(P->out - start);
    *P->out++ = '\0';
    *str = start;
    return MOE_OK;
}

/* ---- numbers ---- */

static bool is_digit(const char *p, const char *end) { return p < end && *p >= '0' && *p <= '9'; }

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, checked here because
 * strtod accepts much more (hex, "inf", leading '+', "1."). */
static moe_status parse_number(parser *P, moe_json *v) {
    const char *s = P->p, *q = P->p;
    bool is_int = true;
    if (*q == '-') q++;
    if (!is_digit(q, P->end)) return FAIL(P, "'-' must be followed by a digit");
    if (*q == '0') {
        q++;
        if (is_digit(q, P->end)) return FAIL(P, "a number must not have a leading zero");
    } else {
        while (is_digit(q, P->end)) q++;
    }
    if (q < P->end && *q == '.') {
        q++, is_int = false;
        if (!is_digit(q, P->end)) return FAIL(P, "a digit must follow the decimal point");
        while (is_digit(q, P->end)) q++;
    }
    if (q < P->end && (*q == 'e' || *q == 'E')) {
        q++, is_int = false;
        if (q < P->end && (*q == '+' || *q == '-')) q++;
        if (!is_digit(q, P->end)) return FAIL(P, "a digit must follow the exponent");
        while (is_digit(q, P->end)) q++;
    }
    /* strtod needs a NUL-terminated copy; the text itself may not have one. */
    const size_t n = (size_t)(q - s);
    char small[64], *buf = n < sizeof small ? small : malloc(n + 1);
    if (!buf) return out_of_memory(P);
    memcpy(buf, s, n);
    buf[n] = '\0';
    const double x = strtod(buf, NULL);
    if (buf != small) free(buf);
    if (isinf(x)) return FAIL(P, "number %.*s is too large for a double", n > 32 ? 32 : (int)n, s);
    v->type = MOE_JSON_NUMBER;
    v->number = x;
    v->is_int = is_int;
    P->p = q;
    return MOE_OK;
}

/* ---- arrays and objects ---- */

/* Grows *items (of `size`-byte elements) to hold at least n + 1. */
static bool grow(void **items, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return true;
    const size_t want = *cap ? *cap * 2 : 4;
    void *p = realloc(*items, want * size);
    if (!p) return false;
    *items = p;
    *cap = want;
    return true;
}

static moe_status enter(parser *P) {
    if (++P->depth > MOE_JSON_MAX_DEPTH) return FAIL(P, "nesting deeper than %d", MOE_JSON_MAX_DEPTH);
    P->p++; /* past '[' or '{' */
    skip_ws(P);
    return MOE_OK;
}

static moe_status parse_array(parser *P, moe_json *v) {
    moe_status st = enter(P);
    if (st) return st;
    moe_json *items = NULL;
    size_t n = 0, cap = 0;
    if (P->p < P->end && *P->p == ']') goto done;
    for (;;) {
        if (!grow((void **)&items, &cap, n, sizeof *items)) {
            st = out_of_memory(P);
            goto fail;
        }
        if ((st = parse_value(P, &items[n]))) goto fail;
        n++;
        skip_ws(P);
        if (P->p < P->end && *P->p == ']') break;
        if (P->p >= P->end || *P->p != ',') {
            st = P->p < P->end ? FAIL(P, "expected ',' or ']' in an array") : FAIL(P, "unterminated array");
            goto fail;
        }
        P->p++;
        skip_ws(P);
        if (P->p < P->end && *P->p == ']') {
            st = FAIL(P, "trailing comma in an array");
            goto fail;
        }
    }
done:
    P->p++; /* past ']' */
    P->depth--;
    v->type = MOE_JSON_ARRAY;
    v->len = n;
    v->u.items = items;
    return MOE_OK;
fail:
    for (size_t i = 0; i < n; i++) free_value(&items[i]);
    free(items);
    return st;
}

static int key_cmp(const moe_json_member *a, const moe_json_member *b) {
    const size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
    const int c = memcmp(a->key, b->key, n);
    if (c) return c;
    return (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

/* Sorts by key, then by position, so equal keys sit together in text order. */
static int member_ptr_cmp(const void *pa, const void *pb) {
    const moe_json_member *a = *(const moe_json_member *const *)pa, *b = *(const moe_json_member *const *)pb;
    const int c = key_cmp(a, b);
    return c ? c : (a > b) - (a < b);
}

/* Refuses a key that appears twice, naming the first repeat in text order.
 * Sorting keeps this O(n log n) however many members an object has. */
static moe_status check_duplicates(parser *P, moe_json_member *m, size_t n) {
    if (n < 2) return MOE_OK;
    moe_json_member **s = malloc(n * sizeof *s);
    if (!s) return out_of_memory(P);
    for (size_t i = 0; i < n; i++) s[i] = &m[i];
    qsort(s, n, sizeof *s, member_ptr_cmp);
    const moe_json_member *first_repeat = NULL;
    for (size_t i = 1; i < n; i++)
        if (key_cmp(s[i - 1], s[i]) == 0 && (!first_repeat || s[i] < first_repeat)) first_repeat = s[i];
    free(s);
    if (!first_repeat) return MOE_OK;
    return moe_fail_at(MOE_ERR_PARSE, P->name, first_repeat->line, "duplicate key \"%.64s\"", first_repeat->key);
}

static moe_status parse_object(parser *P, moe_json *v) {
    moe_status st = enter(P);
    if (st) return st;
    moe_json_member *m = NULL;
    size_t n = 0, cap = 0;
    if (P->p < P->end && *P->p == '}') goto done;
    for (;;) {
        if (P->p >= P->end || *P->p != '"') {
            st = P->p < P->end ? FAIL(P, "expected a string key in an object") : FAIL(P, "unterminated object");
            goto fail;
        }
        if (!grow((void **)&m, &cap, n, sizeof *m)) {
            st = out_of_memory(P);
            goto fail;
        }
        m[n].line = P->line;
        if ((st = parse_string(P, &m[n].key, &m[n].key_len))) goto fail;
        skip_ws(P);
        if (P->p >= P->end || *P->p != ':') {
            st = FAIL(P, "expected ':' after the key \"%.64s\"", m[n].key);
            goto fail;
        }
        P->p++;
        skip_ws(P);
        if ((st = parse_value(P, &m[n].value))) goto fail;
        n++;
        skip_ws(P);
        if (P->p < P->end && *P->p == '}') break;
        if (P->p >= P->end || *P->p != ',') {
            st = P->p < P->end ? FAIL(P, "expected ',' or '}' in an object") : FAIL(P, "unterminated object");
            goto fail;
        }
        P->p++;
        skip_ws(P);
        if (P->p < P->end && *P->p == '}') {
            st = FAIL(P, "trailing comma in an object");
            goto fail;
        }
    }
done:
    if ((st = check_duplicates(P, m, n))) goto fail;
    P->p++; /* past '}' */
    P->depth--;
    v->type = MOE_JSON_OBJECT;
    v->len = n;
    v->u.members = m;
    return MOE_OK;
fail:
    for (size_t i = 0; i < n; i++) free_value(&m[i].value);
    free(m);
    return st;
}

/* ---- values ---- */

/* true, false, null; any other word (NaN, Infinity, True) is named. */
static moe_status parse_literal(parser *P, moe_json *v) {
    const char *q = P->p;
    while (q < P->end && ((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z'))) q++;
    const size_t n = (size_t)(q - P->p);
    if (n == 4 && memcmp(P->p, "true", 4) == 0)
        v->type = MOE_JSON_BOOL, v->boolean = true;
    else if (n == 5 && memcmp(P->p, "false", 5) == 0)
        v->type = MOE_JSON_BOOL, v->boolean = false;
    else if (n == 4 && memcmp(P->p, "null", 4) == 0)
        v->type = MOE_JSON_NULL;
    else
        return FAIL(P, "unknown literal %.*s (JSON has only true, false and null)", n > 32 ? 32 : (int)n, P->p);
    P->p = q;
    return MOE_OK;
}

/* P->p at the first byte of a value (whitespace already skipped). */
static moe_status parse_value(parser *P, moe_json *v) {
    memset(v, 0, sizeof *v);
    v->line = P->line;
    if (P->p >= P->end) return FAIL(P, "unexpected end of input, expected a value");
    const char c = *P->p;
    if (c == '{') return parse_object(P, v);
    if (c == '[') return parse_array(P, v);
    if (c == '"') {
        v->type = MOE_JSON_STRING;
        return parse_string(P, &v->u.str, &v->len);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(P, v);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return parse_literal(P, v);
    char b[16];
    return FAIL(P, "unexpected %s, expected a value", describe((unsigned char)c, b));
}

moe_status moe_json_parse(moe_json_doc *d, const char *text, size_t len, const char *name) {
    if (!d || (!text && len)) return moe_fail(MOE_ERR_INVALID_ARG, "json: NULL argument");
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name ? name : "json");
    if (len > MOE_JSON_MAX_BYTES)
        return moe_fail_at(MOE_ERR_PARSE, d->name, 1,
                           "%zu bytes is more than the %u bytes (16 MiB) a JSON file may have", len,
                           MOE_JSON_MAX_BYTES);
    /* NUL is checked first so that it gets its own clear message, wherever
     * it is: a text file with a NUL is not text. */
    const char *nul = len ? memchr(text, '\0', len) : NULL;
    if (nul) {
        uint32_t line = 1;
        for (const char *c = text; c < nul; c++) line += *c == '\n';
        return moe_fail_at(MOE_ERR_PARSE, d->name, line, "NUL byte in the input");
    }
    d->strings = malloc(len + 1);
    if (!d->strings) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", d->name);
    parser P = {.p = text, .end = text + len, .line = 1, .out = d->strings, .name = d->name};
    skip_ws(&P);
    moe_status st = parse_value(&P, &d->root);
    if (st == MOE_OK) {
        skip_ws(&P);
        if (P.p < P.end) {
            char b[16];
            free_value(&d->root);
            st = FAIL(&P, "unexpected %s after the JSON value", describe((unsigned char)*P.p, b));
        }
    }
    if (st) {
        free(d->strings);
        d->strings = NULL;
    }
    return st;
}

void moe_json_free(moe_json_doc *d) {
    if (!d) return;
    free_value(&d->root);
    free(d->strings);
    d->strings = NULL;
}

const moe_json *moe_json_member_get(const moe_json *obj, const char *key) {
    if (!obj || obj->type != MOE_JSON_OBJECT || !key) return NULL;
    const size_t n = strlen(key);
    for (size_t i = 0; i < obj->len; i++) {
        const moe_json_member *m = &obj->u.members[i];
        if (m->key_len == n && memcmp(m->key, key, n) == 0) return &m->value;
    }
    return NULL;
}

size_t moe_json_array_len(const moe_json *arr) { return arr && arr->type == MOE_JSON_ARRAY ? arr->len : 0; }

const moe_json *moe_json_array_at(const moe_json *arr, size_t i) {
    return arr && arr->type == MOE_JSON_ARRAY && i < arr->len ? &arr->u.items[i] : NULL;
}

moe_status moe_json_get_int(const moe_json_doc *d, const moe_json *v, const char *what, int64_t lo, int64_t hi,
                            int64_t *out) {
    if (!v) return moe_fail_at(MOE_ERR_PARSE, d->name, 1, "missing key \"%s\"", what);
    /* lo and hi are within 2^53, so they convert to double exactly and an
     * in-range double is an exact integer of the text. */
    if (v->type != MOE_JSON_NUMBER || !v->is_int || v->number < (double)lo || v->number > (double)hi)
        return moe_fail_at(MOE_ERR_PARSE, d->name, v->line, "\"%s\" must be an integer in %lld..%lld", what,
                           (long long)lo, (long long)hi);
    *out = (int64_t)v->number;
    return MOE_OK;
}

moe_status moe_json_get_string(const moe_json_doc *d, const moe_json *v, const char *what, char *buf, size_t cap) {
    if (!v) return moe_fail_at(MOE_ERR_PARSE, d->name, 1, "missing key \"%s\"", what);
    if (v->type != MOE_JSON_STRING)
        return moe_fail_at(MOE_ERR_PARSE, d->name, v->line, "\"%s\" must be a string", what);
    if (v->len + 1 > cap || memchr(v->u.str, '\0', v->len))
        return moe_fail_at(MOE_ERR_PARSE, d->name, v->line, "\"%s\" must be a string of at most %zu bytes without NUL",
                           what, cap ? cap - 1 : 0);
    memcpy(buf, v->u.str, v->len + 1);
    return MOE_OK;
}
