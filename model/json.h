/* json.h - a small, strict RFC 8259 JSON reader for configuration files.
 *
 * The whole text is parsed into a tree at once. It is strict on purpose: a
 * config file that a lenient reader would "repair" is more likely damaged
 * than meant, so everything outside RFC 8259 is refused:
 *   - NUL bytes, unescaped control characters in strings, invalid UTF-8 in
 *     strings, lone UTF-16 surrogates in \u escapes;
 *   - trailing commas, duplicate object keys, leading zeros, "+1", ".5",
 *     "1.", NaN and Infinity, numbers too large for a double;
 *   - anything but whitespace after the value, a byte order mark;
 *   - nesting deeper than MOE_JSON_MAX_DEPTH, input over MOE_JSON_MAX_BYTES.
 * Every failure is MOE_ERR_PARSE with the last-error message
 * "name:LINE: what is wrong" (LINE 1-based, counted in '\n'), or
 * MOE_ERR_OUT_OF_MEMORY when the tree cannot be allocated.
 *
 * Objects keep their members in text order. Strings are decoded to UTF-8
 * and NUL-terminated; a \u0000 escape is kept as a NUL byte inside `len`.
 * No global state: documents are independent and may be used from any
 * thread (the last-error message is per thread). Numbers are converted with
 * strtod, so the C locale's '.' decimal point is assumed. */
#ifndef MOE_MODEL_JSON_H
#define MOE_MODEL_JSON_H

#include "moerun.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOE_JSON_MAX_DEPTH 64                 /* open arrays/objects at once */
#define MOE_JSON_MAX_BYTES (16u * 1024 * 1024) /* 16 MiB of text */

typedef enum moe_json_type {
    MOE_JSON_NULL,
    MOE_JSON_BOOL,
    MOE_JSON_NUMBER,
    MOE_JSON_STRING,
    MOE_JSON_ARRAY,
    MOE_JSON_OBJECT,
} moe_json_type;

typedef struct moe_json_member moe_json_member;

typedef struct moe_json {
    moe_json_type type;
    uint32_t line; /* 1-based line where the value starts */
    bool boolean;  /* BOOL */
    bool is_int;   /* NUMBER: the text had no fraction and no exponent */
    double number; /* NUMBER */
    size_t len;    /* STRING: bytes; ARRAY: items; OBJECT: members */
    union {
        const char *str;          /* STRING: UTF-8, NUL-terminated */
        struct moe_json *items;   /* ARRAY */
        moe_json_member *members; /* OBJECT, in text order */
    } u;
} moe_json;

struct moe_json_member {
    const char *key; /* decoded, NUL-terminated */
    size_t key_len;
    uint32_t line; /* line of the key */
    moe_json value;
};

/* A parsed text: the root value and the storage it points into. */
typedef struct moe_json_doc {
    moe_json root;
    char *strings;  /* every decoded string and key, back to back */
    char name[256]; /* for error messages (truncated copy) */
} moe_json_doc;

/* Parses `len` bytes of `text` (need not be NUL-terminated); `name` (a file
 * name, say) prefixes error messages. On failure *d holds nothing to free. */
moe_status moe_json_parse(moe_json_doc *d, const char *text, size_t len, const char *name);

/* Frees what moe_json_parse allocated; *d becomes empty. Safe on a zeroed
 * or already freed document. */
void moe_json_free(moe_json_doc *d);

/* The value of member `key` of an object; NULL if `obj` is not an object
 * (or is NULL) or has no such member. A key with a NUL byte never matches. */
const moe_json *moe_json_member_get(const moe_json *obj, const char *key);

/* Items of an array (0 for anything else, NULL included). */
size_t moe_json_array_len(const moe_json *arr);

/* Item i of an array; NULL if `arr` is not an array or i is out of range. */
const moe_json *moe_json_array_at(const moe_json *arr, size_t i);

/* *out = the value of v, which must be a number written as an integer
 * (no fraction, no exponent) in lo..hi; otherwise MOE_ERR_PARSE
 * "name:LINE: what must be an integer in lo..hi". lo and hi must lie within
 * +-2^53, where doubles hold integers exactly. */
moe_status moe_json_get_int(const moe_json_doc *d, const moe_json *v, const char *what, int64_t lo, int64_t hi,
                            int64_t *out);

/* Copies string v into buf (cap bytes, NUL included); MOE_ERR_PARSE unless v
 * is a string without NUL bytes that fits. */
moe_status moe_json_get_string(const moe_json_doc *d, const moe_json *v, const char *what, char *buf, size_t cap);

#endif
