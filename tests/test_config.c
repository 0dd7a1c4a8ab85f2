/* test_config.c - the strict JSON reader and the Hugging Face config reader:
 * JSON by hand (escapes, surrogates, numbers, nesting, every refusal with
 * its "name:LINE:"), small configs written here (defaults, layer rules,
 * refusals), random damage that must be refused cleanly, and the six real
 * configs in ../shared/models (skipped, 77, where they are not beside the
 * project; the other cases still run). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>

#include "hf_config.h"
#include "json.h"
#include "util.h"

/* ---- helpers ---- */

static const char *shared_dir(void) {
    const char *dir = getenv("MOE_SHARED");
    return dir ? dir : MOE_SHARED_DIR;
}

/* The last error must begin with `prefix` ("name:LINE:") and mention `what`. */
static void check_error(const char *prefix, const char *what) {
    if (strncmp(moe_last_error(), prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "  last error \"%s\" does not start with \"%s\"\n", moe_last_error(), prefix);
        harness_failures++;
    }
    CHECK_ERROR_MENTIONS(what);
}

static moe_status parse_n(moe_json_doc *d, const char *text, size_t len) { return moe_json_parse(d, text, len, "t"); }
static moe_status parse(moe_json_doc *d, const char *text) { return parse_n(d, text, strlen(text)); }

/* The root of `text`, which must parse, as a one-off: d is freed by the caller. */
static const moe_json *root_of(moe_json_doc *d, const char *text) {
    CHECK_OK(parse(d, text));
    return &d->root;
}

/* ---- JSON by hand ---- */

static void json_escapes_and_unicode(void) {
    moe_json_doc d;
    const moe_json *v = root_of(&d, "\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"");
    CHECK(v->type == MOE_JSON_STRING && v->len == 12 && memcmp(v->u.str, "a\"b\\c/d\b\f\n\r\t", 13) == 0);
    moe_json_free(&d);
    /* 1, 2 and 3 byte forms; a surrogate pair becomes one 4-byte form. */
    v = root_of(&d, "\"\\u0041\\u00e9\\u20AC\\ud83d\\ude00\"");
    CHECK(v->len == 1 + 2 + 3 + 4 && memcmp(v->u.str, "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 11) == 0);
    moe_json_free(&d);
    /* The highest code point, U+10FFFF. */
    v = root_of(&d, "\"\\uDBFF\\uDFFF\"");
    CHECK(v->len == 4 && memcmp(v->u.str, "\xf4\x8f\xbf\xbf", 4) == 0);
    moe_json_free(&d);
    /* Raw UTF-8 passes through unchanged. */
    v = root_of(&d, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    CHECK(v->len == 9 && memcmp(v->u.str, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10) == 0);
    moe_json_free(&d);
    /* \u0000 is kept inside the length; the string getter refuses it. */
    v = root_of(&d, "\"a\\u0000b\"");
    CHECK(v->len == 3 && v->u.str[1] == '\0' && v->u.str[2] == 'b' && v->u.str[3] == '\0');
    char buf[8];
    CHECK_STATUS(moe_json_get_string(&d, v, "s", buf, sizeof buf), MOE_ERR_PARSE);
    check_error("t:1:", "without NUL");
    moe_json_free(&d);
    /* Keys are decoded too. */
    v = root_of(&d, "{\"k\\u00e9y\": true}");
    CHECK(moe_json_member_get(v, "k\xc3\xa9y") && moe_json_member_get(v, "k\xc3\xa9y")->boolean);
    moe_json_free(&d);
}

static void json_numbers(void) {
    static const struct {
        const char *text;
        double value;
        bool is_int;
    } cases[] = {
        {"0", 0, true},         {"-0", 0, true},         {"123", 123, true},       {"-5", -5, true},
        {"1.5", 1.5, false},    {"1e3", 1000, false},    {"2.5E-3", 0.0025, false}, {"-1.25e+2", -125, false},
        {"0.0", 0, false},      {"1e-400", 0, false},    {"9007199254740992", 9007199254740992.0, true},
        {"1.7976931348623157e308", 1.7976931348623157e308, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moe_json_doc d;
        const moe_json *v = root_of(&d, cases[i].text);
        CHECK(v->type == MOE_JSON_NUMBER && v->number == cases[i].value && v->is_int == cases[i].is_int);
        moe_json_free(&d);
    }
    /* A number longer than the reader's small buffer: 1 and 199 zeros. */
    char longnum[201];
    memset(longnum, '0', 200);
    longnum[0] = '1', longnum[200] = '\0';
    moe_json_doc d;
    const moe_json *big = root_of(&d, longnum);
    CHECK(big->is_int && big->number == 1e199);
    moe_json_free(&d);
    /* The integer getter: integral text in range only. */
    const moe_json *v = root_of(&d, "[7, -3, 7.0, 1e1, 40000000000, \"7\", null]");
    int64_t x = 0;
    CHECK_OK(moe_json_get_int(&d, moe_json_array_at(v, 0), "a", 0, 10, &x));
    CHECK_EQ(x, 7);
    CHECK_OK(moe_json_get_int(&d, moe_json_array_at(v, 1), "b", -3, 10, &x));
    CHECK_EQ(x, -3);
    CHECK_STATUS(moe_json_get_int(&d, moe_json_array_at(v, 1), "b", -2, 10, &x), MOE_ERR_PARSE);
    check_error("t:1:", "\"b\" must be an integer in -2..10");
    for (size_t i = 2; i < 7; i++) {
        CHECK_STATUS(moe_json_get_int(&d, moe_json_array_at(v, i), "c", 0, 1000000, &x), MOE_ERR_PARSE);
        check_error("t:1:", "\"c\" must be an integer in 0..1000000");
    }
    CHECK_STATUS(moe_json_get_int(&d, NULL, "gone", 0, 1, &x), MOE_ERR_PARSE);
    check_error("t:1:", "missing key \"gone\"");
    moe_json_free(&d);
}

/* Objects keep text order; lookups by key and index; lines are recorded. */
static void json_tree_and_lookups(void) {
    moe_json_doc d;
    const moe_json *r = root_of(&d, "{\n \"z\": 1,\n \"a\": [true, false, null, \"s\"],\n \"m\": {\"x\": {}}\n}\n");
    CHECK(r->type == MOE_JSON_OBJECT && r->len == 3 && r->line == 1);
    CHECK(strcmp(r->u.members[0].key, "z") == 0 && strcmp(r->u.members[1].key, "a") == 0 &&
          strcmp(r->u.members[2].key, "m") == 0);
    CHECK_EQ(r->u.members[1].line, 3);
    const moe_json *a = moe_json_member_get(r, "a");
    CHECK(a && a->line == 3 && moe_json_array_len(a) == 4);
    CHECK(moe_json_array_at(a, 0)->type == MOE_JSON_BOOL && moe_json_array_at(a, 0)->boolean);
    CHECK(moe_json_array_at(a, 1)->type == MOE_JSON_BOOL && !moe_json_array_at(a, 1)->boolean);
    CHECK(moe_json_array_at(a, 2)->type == MOE_JSON_NULL);
    CHECK(moe_json_array_at(a, 3)->type == MOE_JSON_STRING);
    CHECK(moe_json_array_at(a, 4) == NULL && moe_json_array_at(r, 0) == NULL && moe_json_array_len(r) == 0);
    CHECK(moe_json_member_get(r, "nope") == NULL && moe_json_member_get(a, "a") == NULL);
    const moe_json *m = moe_json_member_get(r, "m");
    CHECK(m && m->line == 4 && moe_json_member_get(m, "x")->type == MOE_JSON_OBJECT);
    char s[2];
    CHECK_OK(moe_json_get_string(&d, moe_json_array_at(a, 3), "s", s, sizeof s));
    CHECK(strcmp(s, "s") == 0);
    CHECK_STATUS(moe_json_get_string(&d, moe_json_array_at(a, 0), "flag", s, sizeof s), MOE_ERR_PARSE);
    check_error("t:3:", "\"flag\" must be a string");
    moe_json_free(&d);
    moe_json_free(&d); /* twice is harmless */
    /* Scalars at the top level are JSON too (RFC 8259). */
    CHECK_OK(parse(&d, " \n\t\r 42 \n"));
    CHECK(d.root.type == MOE_JSON_NUMBER && d.root.line == 2);
    moe_json_free(&d);
}

static void json_nesting_limit(void) {
    char text[2 * 70 + 1];
    for (int depth = 63; depth <= 66; depth++) {
        memset(text, '[', (size_t)depth);
        memset(text + depth, ']', (size_t)depth);
        text[2 * depth] = '\0';
        moe_json_doc d;
        if (depth <= MOE_JSON_MAX_DEPTH) {
            CHECK_OK(parse(&d, text));
            moe_json_free(&d);
        } else {
            CHECK_STATUS(parse(&d, text), MOE_ERR_PARSE);
            check_error("t:1:", "nesting deeper than 64");
        }
    }
    /* Deep enough to overflow a stack if the limit did not stop the descent. */
    const size_t n = 1000000;
    char *deep = malloc(n);
    memset(deep, '{', n);
    for (size_t i = 0; i < n; i += 5) memcpy(deep + i, "{\"a\":", 5);
    moe_json_doc d;
    CHECK_STATUS(parse_n(&d, deep, n), MOE_ERR_PARSE);
    check_error("t:1:", "nesting deeper than 64");
    free(deep);
}

static void json_bad_inputs(void) {
    static const struct {
        const char *text;
        const char *prefix, *what;
    } cases[] = {
        {"", "t:1:", "unexpected end of input"},
        {"  \n \n", "t:3:", "unexpected end of input"},
        {"[1,2,]", "t:1:", "trailing comma in an array"},
        {"{\"a\": 1,\n}", "t:2:", "trailing comma in an object"},
        {"{\n\"a\": 1,\n\"b\": 2,\n\"a\": 3\n}", "t:4:", "duplicate key \"a\""},
        {"[01]", "t:1:", "leading zero"},
        {"-01", "t:1:", "leading zero"},
        {"[\n-]", "t:2:", "'-' must be followed by a digit"},
        {"1.", "t:1:", "digit must follow the decimal point"},
        {"1.e5", "t:1:", "digit must follow the decimal point"},
        {"1e", "t:1:", "digit must follow the exponent"},
        {"1e+", "t:1:", "digit must follow the exponent"},
        {"[.5]", "t:1:", "unexpected '.'"},
        {"[+1]", "t:1:", "unexpected '+'"},
        {"NaN", "t:1:", "unknown literal NaN"},
        {"[1,\n Infinity]", "t:2:", "unknown literal Infinity"},
        {"-Infinity", "t:1:", "'-' must be followed by a digit"},
        {"True", "t:1:", "unknown literal True"},
        {"nul", "t:1:", "unknown literal nul"},
        {"1e999", "t:1:", "too large for a double"},
        {"[1] x", "t:1:", "unexpected 'x' after the JSON value"},
        {"{}\n{}", "t:2:", "unexpected '{' after the JSON value"},
        {"1 2", "t:1:", "after the JSON value"},
        {"\"a\tb\"", "t:1:", "unescaped control character 0x09"},
        {"[\"a\nb\"]", "t:1:", "unescaped control character 0x0a"},
        {"\"abc", "t:1:", "unterminated string"},
        {"\"abc\\", "t:1:", "unterminated string"},
        {"[\"\\x\"]", "t:1:", "invalid escape \\'x'"},
        {"\"\\u12g4\"", "t:1:", "4 hex digits"},
        {"\"\\u12\"}", "t:1:", "4 hex digits"},
        {"\"\\u12", "t:1:", "truncated \\u escape"},
        {"\"\\ud800\"", "t:1:", "high surrogate without a low one"},
        {"\"\\ud800\\u0041\"", "t:1:", "followed by \\u0041, not a low one"},
        {"\"\\ud800\\ud800\"", "t:1:", "not a low one"},
        {"\"\\udc00\"", "t:1:", "lone low surrogate"},
        {"\"\xc0\xaf\"", "t:1:", "invalid UTF-8"},         /* overlong '/' */
        {"\"\xed\xa0\x80\"", "t:1:", "invalid UTF-8"},     /* an encoded surrogate */
        {"\"\xf4\x90\x80\x80\"", "t:1:", "invalid UTF-8"}, /* above U+10FFFF */
        {"\"\xe2\x82\"", "t:1:", "invalid UTF-8"},         /* cut short */
        {"\"\xff\"", "t:1:", "invalid UTF-8"},
        {"\xef\xbb\xbf{}", "t:1:", "unexpected byte 0xef"}, /* a byte order mark */
        {"[1 2]", "t:1:", "expected ',' or ']'"},
        {"{\"a\" 1}", "t:1:", "expected ':' after the key \"a\""},
        {"{\"a\":1 \"b\":2}", "t:1:", "expected ',' or '}'"},
        {"{1: 2}", "t:1:", "expected a string key"},
        {"{'a': 1}", "t:1:", "expected a string key"},
        {"[\n1,\n", "t:3:", "unexpected end of input"},
        {"[1", "t:1:", "unterminated array"},
        {"{\"a\":1", "t:1:", "unterminated object"},
        {"{", "t:1:", "unterminated object"},
        {"// comment\n{}", "t:1:", "unexpected '/'"},
        {"[,1]", "t:1:", "unexpected ','"},
        {"{\"a\":}", "t:1:", "unexpected '}'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moe_json_doc d;
        const moe_status st = parse(&d, cases[i].text);
        if (st != MOE_ERR_PARSE) fprintf(stderr, "  case %zu: %s\n", i, cases[i].text);
        CHECK_EQ(st, MOE_ERR_PARSE);
        check_error(cases[i].prefix, cases[i].what);
        if (st == MOE_OK) moe_json_free(&d);
    }
    /* A NUL byte anywhere, with the line it is on. */
    moe_json_doc d;
    CHECK_STATUS(parse_n(&d, "[1,\n\"a\0b\"]", 10), MOE_ERR_PARSE);
    check_error("t:2:", "NUL byte");
    CHECK_STATUS(parse_n(&d, "{}\0", 3), MOE_ERR_PARSE);
    check_error("t:1:", "NUL byte");
    /* A duplicate among many keys is found, and reported at its first repeat. */
    const size_t n = 100000;
    char *big = malloc(n * 24 + 64), *o = big;
    o += sprintf(o, "{");
    for (size_t i = 0; i < n; i++) o += sprintf(o, "\"k%zu\": %zu,\n", (n - i) * 7 % n, i);
    o += sprintf(o, "\"k5\": 0,\n\"k3\": 1}");
    CHECK_STATUS(parse_n(&d, big, (size_t)(o - big)), MOE_ERR_PARSE);
    /* k0..k99999 each once (7 is coprime to n); the repeats are on lines n+1, n+2. */
    char want[32];
    snprintf(want, sizeof want, "t:%zu:", n + 1);
    check_error(want, "duplicate key \"k5\"");
    free(big);
}

static void json_size_limit(void) {
    const size_t max = MOE_JSON_MAX_BYTES;
    char *text = malloc(max + 1);
    memset(text, ' ', max + 1);
    text[0] = '1';
    moe_json_doc d;
    CHECK_OK(parse_n(&d, text, max)); /* exactly 16 MiB is allowed */
    moe_json_free(&d);
    CHECK_STATUS(parse_n(&d, text, max + 1), MOE_ERR_PARSE);
    check_error("t:1:", "16 MiB");
    free(text);
    CHECK_STATUS(moe_json_parse(NULL, "1", 1, "t"), MOE_ERR_INVALID_ARG);
}

/* ---- small configs written here ---- */

/* A small Mixtral-style config, one key per line: line 1 is "{", key i is
 * on line i + 2. */
static const char *const base_lines[] = {
    "\"model_type\": \"mixtral\"",
    "\"hidden_size\": 64",
    "\"num_hidden_layers\": 4",
    "\"vocab_size\": 100",
    "\"intermediate_size\": 128",
    "\"num_attention_heads\": 4",
    "\"num_key_value_heads\": 2",
    "\"num_local_experts\": 8",
    "\"num_experts_per_tok\": 2",
    "\"torch_dtype\": \"float16\"",
};
#define N_BASE (sizeof base_lines / sizeof base_lines[0])

/* The base config with `key`'s line replaced by `line` (removed if NULL),
 * or `line` added at the end if the base has no such key; then more lines. */
static size_t build(char *out, size_t cap, const char *key, const char *line, const char *more) {
    size_t at = (size_t)snprintf(out, cap, "{");
    bool replaced = false, first = true;
    char quoted[80];
    snprintf(quoted, sizeof quoted, "\"%s\":", key ? key : "");
    for (size_t i = 0; i < N_BASE; i++) {
        const char *l = base_lines[i];
        if (key && strncmp(l, quoted, strlen(quoted)) == 0) {
            replaced = true;
            l = line;
        }
        if (!l) l = "\"removed_here\": 0"; /* keeps the line numbers of the keys below */
        at += (size_t)snprintf(out + at, cap - at, "%s\n%s", first ? "" : ",", l);
        first = false;
    }
    if (key && !replaced && line) at += (size_t)snprintf(out + at, cap - at, ",\n%s", line);
    if (more) at += (size_t)snprintf(out + at, cap - at, ",\n%s", more);
    at += (size_t)snprintf(out + at, cap - at, "\n}\n");
    return at;
}

static moe_status cfg(moe_hf_config *c, const char *key, const char *line, const char *more) {
    char text[4096];
    const size_t n = build(text, sizeof text, key, line, more);
    return moe_hf_config_parse(c, text, n, "cfg");
}

static void config_small_and_defaults(void) {
    moe_hf_config c;
    CHECK_OK(cfg(&c, NULL, NULL, NULL));
    CHECK(strcmp(c.model_type, "mixtral") == 0 && strcmp(c.torch_dtype, "float16") == 0);
    CHECK_EQ(c.hidden_size, 64);
    CHECK_EQ(c.n_layers, 4);
    CHECK_EQ(c.vocab_size, 100);
    CHECK_EQ(c.n_routed_experts, 8);
    CHECK_EQ(c.top_k, 2);
    CHECK_EQ(c.moe_inter, 128); /* no moe_intermediate_size: the expert is intermediate_size wide */
    CHECK_EQ(c.dense_inter, 128);
    CHECK_EQ(c.n_shared_experts, 0);
    CHECK_EQ(c.shared_inter, 0);
    CHECK_EQ(c.n_heads, 4);
    CHECK_EQ(c.n_kv_heads, 2);
    CHECK_EQ(c.head_dim, 16); /* hidden / heads */
    CHECK(!c.mla);
    CHECK_EQ(c.attn_params, 64 * 64 + 2 * 64 * 32 + 64 * 64);
    CHECK_EQ(c.n_moe_layers, 4);
    CHECK(c.is_moe_layer[0] && c.is_moe_layer[3] && !c.is_moe_layer[4]);
    /* Defaults: no kv heads means one per head; no dtype gives "". */
    CHECK_OK(cfg(&c, "num_key_value_heads", NULL, NULL));
    CHECK_EQ(c.n_kv_heads, 4);
    CHECK_EQ(c.attn_params, 4 * 64 * 64);
    CHECK_OK(cfg(&c, "torch_dtype", NULL, "\"dtype\": \"bfloat16\""));
    CHECK(strcmp(c.torch_dtype, "bfloat16") == 0);
    CHECK_OK(cfg(&c, "torch_dtype", "\"torch_dtype\": null", NULL));
    CHECK(strcmp(c.torch_dtype, "") == 0);
    /* An explicit head_dim wins over hidden / heads (Qwen3). */
    CHECK_OK(cfg(&c, "head_dim", "\"head_dim\": 32", NULL));
    CHECK_EQ(c.head_dim, 32);
    CHECK_EQ(c.attn_params, 64 * 128 + 2 * 64 * 64 + 128 * 64);
    /* Other names of the expert count (the first present is used). */
    CHECK_OK(cfg(&c, "num_local_experts", "\"num_experts\": 6", NULL));
    CHECK_EQ(c.n_routed_experts, 6);
    CHECK_OK(cfg(&c, "num_local_experts", "\"n_routed_experts\": 5", NULL));
    CHECK_EQ(c.n_routed_experts, 5);
}

static void config_layer_rules_and_shared(void) {
    moe_hf_config c;
    /* Qwen: every 2nd layer (1, 3, 5 of 6) but not layer 1. */
    CHECK_OK(cfg(&c, "num_hidden_layers", "\"num_hidden_layers\": 6",
                 "\"decoder_sparse_step\": 2, \"mlp_only_layers\": [1], \"moe_intermediate_size\": 32,\n"
                 "\"shared_expert_intermediate_size\": 96"));
    CHECK_EQ(c.n_moe_layers, 2);
    CHECK(!c.is_moe_layer[0] && !c.is_moe_layer[1] && !c.is_moe_layer[2] && c.is_moe_layer[3] &&
          !c.is_moe_layer[4] && c.is_moe_layer[5]);
    CHECK_EQ(c.moe_inter, 32);
    CHECK_EQ(c.dense_inter, 128);
    CHECK_EQ(c.n_shared_experts, 1);
    CHECK_EQ(c.shared_inter, 96);
    /* DeepSeek: layers >= 2 and even, of 8: 2, 4, 6; two shared experts as one MLP. */
    CHECK_OK(cfg(&c, "num_hidden_layers", "\"num_hidden_layers\": 8",
                 "\"first_k_dense_replace\": 2, \"moe_layer_freq\": 2, \"moe_intermediate_size\": 32,\n"
                 "\"n_shared_experts\": 2"));
    CHECK_EQ(c.n_moe_layers, 3);
    CHECK(c.is_moe_layer[2] && c.is_moe_layer[4] && c.is_moe_layer[6] && !c.is_moe_layer[7] && !c.is_moe_layer[1]);
    CHECK_EQ(c.n_shared_experts, 2);
    CHECK_EQ(c.shared_inter, 64);
    /* null is "unset": no shared experts. */
    CHECK_OK(cfg(&c, "n_shared_experts", "\"n_shared_experts\": null", NULL));
    CHECK_EQ(c.n_shared_experts, 0);
    /* A key given twice is refused at its repeat, whatever the reader wants of it. */
    CHECK_STATUS(cfg(&c, "hidden_size", "\"hidden_size\": 5120", "\"num_attention_heads\": 128"), MOE_ERR_PARSE);
    check_error("cfg:12:", "duplicate key \"num_attention_heads\"");
    /* DeepSeek-V2 (not Lite) attention: MLA with a LoRA on q. */
    CHECK_OK(cfg(&c, "num_attention_heads", "\"num_attention_heads\": 128",
                 "\"kv_lora_rank\": 512, \"q_lora_rank\": 1536,\n"
                 "\"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"v_head_dim\": 128"));
    CHECK(c.mla && c.q_lora_rank == 1536 && c.head_dim == 192);
    CHECK_EQ(c.attn_params, 64 * 1536 + 1536 * 128 * 192 + 64 * 576 + 512 * 128 * 256 + 128 * 128 * 64);
}

static void config_refusals(void) {
    static const struct {
        const char *key, *line, *more;
        const char *prefix, *what;
    } cases[] = {
        {"hidden_size", NULL, NULL, "cfg:1:", "missing key \"hidden_size\""},
        {"model_type", NULL, NULL, "cfg:1:", "missing key \"model_type\""},
        {"num_experts_per_tok", NULL, NULL, "cfg:1:", "missing key \"num_experts_per_tok\""},
        {"num_local_experts", NULL, NULL, "cfg:1:", "\"num_local_experts\", \"num_experts\" or \"n_routed_experts\""},
        {"hidden_size", "\"hidden_size\": \"64\"", NULL, "cfg:3:", "\"hidden_size\" must be an integer in 1..1048576"},
        {"hidden_size", "\"hidden_size\": 64.0", NULL, "cfg:3:", "\"hidden_size\" must be an integer"},
        {"hidden_size", "\"hidden_size\": null", NULL, "cfg:3:", "\"hidden_size\" must be an integer"},
        {"hidden_size", "\"hidden_size\": -64", NULL, "cfg:3:", "\"hidden_size\" must be an integer"},
        {"num_local_experts", "\"num_local_experts\": 0", NULL,
         "cfg:9:", "\"num_local_experts\" must be an integer in 1.."},
        {"num_local_experts", "\"num_local_experts\": null", NULL,
         "cfg:9:", "\"num_local_experts\" must be an integer"},
        {"num_experts_per_tok", "\"num_experts_per_tok\": 9", NULL,
         "cfg:10:", "\"num_experts_per_tok\" must be an integer in 1..8"},
        {"num_experts_per_tok", "\"num_experts_per_tok\": 0", NULL,
         "cfg:10:", "\"num_experts_per_tok\" must be an integer in 1..8"},
        {"num_hidden_layers", "\"num_hidden_layers\": 0", NULL,
         "cfg:4:", "\"num_hidden_layers\" must be an integer in 1..1024"},
        {"num_hidden_layers", "\"num_hidden_layers\": 1025", NULL, "cfg:4:", "\"num_hidden_layers\""},
        {"num_key_value_heads", "\"num_key_value_heads\": 3", NULL,
         "cfg:8:", "num_key_value_heads 3 must divide num_attention_heads 4"},
        {"num_key_value_heads", "\"num_key_value_heads\": 5", NULL,
         "cfg:8:", "\"num_key_value_heads\" must be an integer in 1..4"},
        {"num_attention_heads", "\"num_attention_heads\": 6", NULL,
         "cfg:7:", "hidden_size 64 must be a multiple of num_attention_heads 6"},
        {"model_type", "\"model_type\": \"\"", NULL, "cfg:2:", "\"model_type\" must not be empty"},
        {"model_type", "\"model_type\": 7", NULL, "cfg:2:", "\"model_type\" must be a string"},
        {"model_type", "\"model_type\": \"0123456789012345678901234567890123456789012345678901234567890123\"", NULL,
         "cfg:2:", "at most 63 bytes"},
        {"torch_dtype", "\"torch_dtype\": [\"bfloat16\"]", NULL, "cfg:11:", "\"torch_dtype\" must be a string"},
        {"mlp_only_layers", "\"mlp_only_layers\": [0, 4]", NULL,
         "cfg:12:", "\"mlp_only_layers[]\" must be an integer in 0..3"},
        {"mlp_only_layers", "\"mlp_only_layers\": 1", NULL, "cfg:12:", "\"mlp_only_layers\" must be an array"},
        {"mlp_only_layers", "\"mlp_only_layers\": [0, 1, 2, 3]", NULL, "cfg:1:", "no layer is an MoE layer"},
        {"decoder_sparse_step", "\"decoder_sparse_step\": 0", NULL,
         "cfg:12:", "\"decoder_sparse_step\" must be an integer in 1.."},
        {"decoder_sparse_step", "\"decoder_sparse_step\": 5", NULL, "cfg:1:", "no layer is an MoE layer"},
        {"first_k_dense_replace", "\"first_k_dense_replace\": 5", NULL,
         "cfg:12:", "\"first_k_dense_replace\" must be an integer in 0..4"},
        {"n_shared_experts", "\"n_shared_experts\": 2", "\"shared_expert_intermediate_size\": 0",
         "cfg:13:", "disagree"},
        {"kv_lora_rank", "\"kv_lora_rank\": 512", NULL, "cfg:1:", "missing key \"qk_nope_head_dim\""},
        {"intermediate_size", "\"intermediate_size\": 0", NULL,
         "cfg:6:", "\"intermediate_size\" must be an integer in 1.."},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moe_hf_config c;
        memset(&c, 0xff, sizeof c);
        const moe_status st = cfg(&c, cases[i].key, cases[i].line, cases[i].more);
        if (st != MOE_ERR_PARSE) fprintf(stderr, "  case %zu: %s\n", i, cases[i].what);
        CHECK_EQ(st, MOE_ERR_PARSE);
        check_error(cases[i].prefix, cases[i].what);
        CHECK(c.n_layers == 0 && c.model_type[0] == '\0'); /* a refused config is left empty */
    }
    moe_hf_config c;
    CHECK_STATUS(moe_hf_config_parse(&c, "[1]", 3, "cfg"), MOE_ERR_PARSE);
    check_error("cfg:1:", "expected a JSON object at the top level");
    CHECK_STATUS(moe_hf_config_parse(&c, "{\"a\":1,}", 8, "cfg"), MOE_ERR_PARSE);
    check_error("cfg:1:", "trailing comma");
    CHECK_STATUS(moe_hf_config_load(&c, "/nonexistent/config.json"), MOE_ERR_IO);
    check_error("/nonexistent/config.json: cannot open", "No such file");
    CHECK_STATUS(moe_hf_config_parse(NULL, "{}", 2, "cfg"), MOE_ERR_INVALID_ARG);
}

/* ---- random damage ---- */

/* Counts lines of text, for the bound on reported line numbers. */
static uint32_t count_lines(const char *t, size_t n) {
    uint32_t lines = 1;
    for (size_t i = 0; i < n; i++) lines += t[i] == '\n';
    return lines;
}

/* Damages a copy of `orig` 1 to 4 times: random bytes, JSON's own
 * punctuation (more likely to make something that still parses), deletions,
 * insertions and truncation. */
static size_t damage(moe_rng *r, const char *orig, size_t n, char *out, size_t cap) {
    static const char punct[] = "{}[]\",:-.0123456789eE\\u \nntf";
    memcpy(out, orig, n);
    const uint32_t edits = 1 + moe_rng_below(r, 4);
    for (uint32_t e = 0; e < edits && n > 0; e++) {
        const size_t at = moe_rng_below(r, (uint32_t)n);
        switch (moe_rng_below(r, 5)) {
        case 0: out[at] = (char)moe_rng_below(r, 256); break;
        case 1: out[at] = punct[moe_rng_below(r, sizeof punct - 1)]; break;
        case 2: memmove(out + at, out + at + 1, n - at - 1), n--; break;
        case 3:
            if (n < cap) {
                memmove(out + at + 1, out + at, n - at), n++;
                out[at] = punct[moe_rng_below(r, sizeof punct - 1)];
            }
            break;
        default: n = at; break;
        }
    }
    return n;
}

/* Every damaged text is either a valid config or refused with a parse
 * error naming a line of the text; nothing else, and no crash or leak
 * (under ASan). Returns how many were still accepted. */
static int fuzz(const char *text, size_t n, int rounds, uint64_t seed) {
    moe_rng r = {seed};
    char *buf = malloc(n + 16);
    int accepted = 0;
    for (int i = 0; i < rounds; i++) {
        const size_t m = damage(&r, text, n, buf, n + 16);
        moe_hf_config c;
        const moe_status st = moe_hf_config_parse(&c, buf, m, "fz");
        if (st == MOE_OK) {
            accepted++;
            CHECK(c.top_k >= 1 && c.top_k <= c.n_routed_experts);
            CHECK(c.n_moe_layers >= 1 && c.n_moe_layers <= c.n_layers && c.n_layers <= MOE_HF_MAX_LAYERS);
            continue;
        }
        CHECK_EQ(st, MOE_ERR_PARSE);
        unsigned line = 0;
        if (sscanf(moe_last_error(), "fz:%u:", &line) != 1 || line < 1 || line > count_lines(buf, m)) {
            fprintf(stderr, "  round %d: bad error \"%s\"\n", i, moe_last_error());
            harness_failures++;
        }
        /* The JSON reader alone must agree on what is JSON. */
        moe_json_doc d;
        const moe_status js = moe_json_parse(&d, buf, m, "fz");
        CHECK(js == MOE_OK || js == MOE_ERR_PARSE);
        if (js == MOE_OK) moe_json_free(&d);
    }
    free(buf);
    return accepted;
}

static void random_damage_small(void) {
    char text[4096];
    const size_t n = build(text, sizeof text, "mlp_only_layers", "\"mlp_only_layers\": [1, 2]",
                           "\"name\": \"a\\u00e9\\ud83d\\ude00\", \"x\": [1.5e3, -0, true, null, {}]");
    moe_hf_config c;
    CHECK_OK(moe_hf_config_parse(&c, text, n, "small"));
    const int accepted = fuzz(text, n, 5000, 7);
    printf("  small config: %d of 5000 damaged copies still valid\n", accepted);
}

/* ---- the real configs ---- */

typedef struct real_config {
    const char *dir, *model_type, *dtype;
    uint32_t hidden, layers, experts, top_k, moe_inter, dense_inter, n_shared, shared_inter, n_moe_layers, vocab;
    uint32_t heads, kv_heads, head_dim;
    uint64_t attn_params;
} real_config;

/* Figures read off the six config.json files; attn_params worked out with
 * the formulas of hf_config.h, e.g. Mixtral 4096*4096*2 + 2*4096*8*128. */
static const real_config reals[] = {
    {"deepseek-v2-lite", "deepseek_v2", "bfloat16", 2048, 27, 64, 6, 1408, 10944, 2, 2 * 1408, 26, 102400, 16, 16,
     128 + 64, 13762560},
    {"mixtral-8x7b", "mixtral", "bfloat16", 4096, 32, 8, 2, 14336, 14336, 0, 0, 32, 32000, 32, 8, 128, 41943040},
    {"olmoe-1b-7b", "olmoe", "float32", 2048, 16, 64, 8, 1024, 1024, 0, 0, 16, 50304, 16, 16, 128, 16777216},
    {"qwen1.5-moe-a2.7b", "qwen2_moe", "bfloat16", 2048, 24, 60, 4, 1408, 5632, 1, 5632, 24, 151936, 16, 16, 128,
     16777216},
    {"qwen2-57b-a14b", "qwen2_moe", "bfloat16", 3584, 28, 64, 8, 2560, 18944, 1, 20480, 28, 151936, 28, 4, 128,
     29360128},
    {"qwen3-30b-a3b", "qwen3_moe", "bfloat16", 2048, 48, 128, 8, 768, 6144, 0, 0, 48, 151936, 32, 4, 128,
     18874368},
};

static void real_path(char *path, size_t cap, const char *dir) {
    snprintf(path, cap, "%s/models/%s/config.json", shared_dir(), dir);
}

static void real_configs(void) {
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        const real_config *w = &reals[i];
        char path[1024];
        real_path(path, sizeof path, w->dir);
        moe_hf_config c;
        CHECK_OK(moe_hf_config_load(&c, path));
        printf("  %-18s %-11s hidden %u, %u layers (%u MoE), %u experts top-%u x %u, shared %u x %u, attn %llu\n",
               w->dir, c.model_type, c.hidden_size, c.n_layers, c.n_moe_layers, c.n_routed_experts, c.top_k,
               c.moe_inter, c.n_shared_experts, c.shared_inter, (unsigned long long)c.attn_params);
        CHECK(strcmp(c.model_type, w->model_type) == 0);
        CHECK(strcmp(c.torch_dtype, w->dtype) == 0);
        CHECK_EQ(c.hidden_size, w->hidden);
        CHECK_EQ(c.n_layers, w->layers);
        CHECK_EQ(c.n_routed_experts, w->experts);
        CHECK_EQ(c.top_k, w->top_k);
        CHECK_EQ(c.moe_inter, w->moe_inter);
        CHECK_EQ(c.dense_inter, w->dense_inter);
        CHECK_EQ(c.n_shared_experts, w->n_shared);
        CHECK_EQ(c.shared_inter, w->shared_inter);
        CHECK_EQ(c.n_moe_layers, w->n_moe_layers);
        CHECK_EQ(c.vocab_size, w->vocab);
        CHECK_EQ(c.n_heads, w->heads);
        CHECK_EQ(c.n_kv_heads, w->kv_heads);
        CHECK_EQ(c.head_dim, w->head_dim);
        CHECK_EQ(c.attn_params, w->attn_params);
        CHECK_EQ(c.mla, i == 0);
        /* Only DeepSeek-V2-Lite has a dense layer, its first. */
        CHECK_EQ(c.is_moe_layer[0], i != 0);
        CHECK(c.is_moe_layer[c.n_layers - 1]);
    }
    /* DeepSeek-V2-Lite's MLA details: no LoRA on q. */
    char path[1024];
    real_path(path, sizeof path, "deepseek-v2-lite");
    moe_hf_config c;
    CHECK_OK(moe_hf_config_load(&c, path));
    CHECK(c.q_lora_rank == 0 && c.kv_lora_rank == 512 && c.qk_nope_head_dim == 128 && c.qk_rope_head_dim == 64 &&
          c.v_head_dim == 128);
    /* The forward pass's numerics: YaRN, no renormalisation, softmax scores. */
    CHECK(!strcmp(c.rope_type, "yarn") && c.rope_factor == 40 && c.rope_orig_max_position == 4096);
    CHECK(c.rope_beta_fast == 32 && c.rope_beta_slow == 1 && c.rope_mscale == 0.707 && c.rope_mscale_all_dim == 0.707);
    CHECK(c.rope_theta == 10000 && c.rms_norm_eps == 1e-6 && c.max_position == 163840);
    CHECK(!c.norm_topk_prob && c.routed_scaling == 1.0 && !c.tie_embeddings);
    CHECK(!strcmp(c.scoring_func, "softmax") && !strcmp(c.topk_method, "greedy") && !strcmp(c.hidden_act, "silu"));
    CHECK(c.bos_id == 100000 && c.eos_id == 100001);
    /* Mixtral renormalises with no key for it; its RoPE is plain. */
    real_path(path, sizeof path, "mixtral-8x7b");
    CHECK_OK(moe_hf_config_load(&c, path));
    CHECK(c.norm_topk_prob && c.rms_norm_eps == 1e-5 && c.rope_theta == 1e6 && !strcmp(c.rope_type, "default"));
    real_path(path, sizeof path, "qwen3-30b-a3b");
    CHECK_OK(moe_hf_config_load(&c, path));
    CHECK(c.norm_topk_prob && c.eos_id == 151645);
    CHECK(c.n_group == 1 && c.topk_group == 1 && c.n_mtp_layers == 0 && c.rope_interleave && !c.attention_bias);
    /* DeepSeek-V3: q LoRA, sigmoid scores with noaux_tc over 8 groups, one MTP layer. */
    real_path(path, sizeof path, "deepseek-v3");
    CHECK_OK(moe_hf_config_load(&c, path));
    CHECK(c.q_lora_rank == 1536 && c.kv_lora_rank == 512 && c.n_routed_experts == 256 && c.top_k == 8);
    CHECK(c.n_group == 8 && c.topk_group == 4 && c.n_mtp_layers == 1 && c.norm_topk_prob && c.routed_scaling == 2.5);
    CHECK(!strcmp(c.scoring_func, "sigmoid") && !strcmp(c.topk_method, "noaux_tc"));
    CHECK(c.is_moe_layer[3] && !c.is_moe_layer[2] && c.n_moe_layers == 58);
    CHECK(c.partial_rotary == 1 && c.rope_interleave);
    /* ../shared's glm-4.5-air is transformers' defaults, which have no
     * head_dim (the released file has 128): refused, not guessed as 42. */
    real_path(path, sizeof path, "glm-4.5-air");
    CHECK_STATUS(moe_hf_config_load(&c, path), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("glm-4.5-air/config.json:21: without head_dim, hidden_size 4096 must be a multiple of "
                         "num_attention_heads 96");
}

/* rope_parameters (transformers 5), eos lists, and wrong types. */
static void config_numerics(void) {
    static const char *base = "{\"model_type\":\"qwen3_moe\",\"hidden_size\":64,\"num_hidden_layers\":1,"
                              "\"num_attention_heads\":4,\"vocab_size\":256,\"intermediate_size\":96,"
                              "\"num_experts\":8,\"num_experts_per_tok\":2";
    char text[1024];
    moe_hf_config c;
    snprintf(text, sizeof text, "%s,\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":5e5},"
             "\"eos_token_id\":[7,8]}", base);
    CHECK_OK(moe_hf_config_parse(&c, text, strlen(text), "t"));
    CHECK(c.rope_theta == 5e5 && !strcmp(c.rope_type, "default") && c.eos_id == 7 && c.bos_id == -1);
    CHECK(c.rms_norm_eps == 1e-6 && c.max_position == 4096 && !c.norm_topk_prob);
    snprintf(text, sizeof text, "%s,\n\"norm_topk_prob\":1}", base);
    CHECK_STATUS(moe_hf_config_parse(&c, text, strlen(text), "t"), MOE_ERR_PARSE);
    check_error("t:2:", "\"norm_topk_prob\" must be true or false");
    snprintf(text, sizeof text, "%s,\n\"rms_norm_eps\":-1}", base);
    CHECK_STATUS(moe_hf_config_parse(&c, text, strlen(text), "t"), MOE_ERR_PARSE);
    check_error("t:2:", "\"rms_norm_eps\" must be a number");
    snprintf(text, sizeof text, "%s,\n\"rope_scaling\":[1]}", base);
    CHECK_STATUS(moe_hf_config_parse(&c, text, strlen(text), "t"), MOE_ERR_PARSE);
    check_error("t:2:", "\"rope_scaling\" must be an object");
    /* expert groups: they must divide the experts and hold the top k */
    snprintf(text, sizeof text, "%s,\"n_group\":4,\"topk_group\":2,\"rope_interleave\":false}", base);
    CHECK_OK(moe_hf_config_parse(&c, text, strlen(text), "t"));
    CHECK(c.n_group == 4 && c.topk_group == 2 && !c.rope_interleave);
    static const struct {
        const char *keys, *msg;
    } bad[] = {
        {"\"n_group\":3", "n_group 3 must divide the 8 routed experts into groups of at least 2"},
        {"\"n_group\":8", "n_group 8 must divide the 8 routed experts into groups of at least 2"},
        {"\"n_group\":4,\n\"topk_group\":5", "\"topk_group\" must be an integer in 1..4"},
        {"\"n_group\":4,\n\"topk_group\":0", "\"topk_group\" must be an integer in 1..4"},
        {"\"rope_interleave\":1", "\"rope_interleave\" must be true or false"},
        {"\"n_group\":512", "\"n_group\" must be an integer in 1..256"},
        {"\"num_nextn_predict_layers\":-1", "\"num_nextn_predict_layers\" must be an integer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "%s,\n%s}", base, bad[i].keys);
        CHECK_STATUS(moe_hf_config_parse(&c, text, strlen(text), "t"), MOE_ERR_PARSE);
        check_error("t:", bad[i].msg);
    }
    snprintf(text, sizeof text, "%s,\n\"partial_rotary_factor\":1.5}", base);
    CHECK_STATUS(moe_hf_config_parse(&c, text, strlen(text), "t"), MOE_ERR_PARSE);
    check_error("t:2:", "\"partial_rotary_factor\" must be a number");
    snprintf(text, sizeof text, "%s,\"rope_parameters\":{\"rope_type\":\"default\",\"partial_rotary_factor\":0.25}}", base);
    CHECK_OK(moe_hf_config_parse(&c, text, strlen(text), "t"));
    CHECK(c.partial_rotary == 0.25 && !strcmp(c.scoring_func, "softmax"));
    /* glm4_moe routes by sigmoid and noaux_tc without the keys, as transformers' model does */
    static const char *glm = "{\"model_type\":\"glm4_moe\",\"hidden_size\":64,\"num_hidden_layers\":1,"
                             "\"num_attention_heads\":4,\"vocab_size\":256,\"intermediate_size\":96,"
                             "\"n_routed_experts\":8,\"num_experts_per_tok\":2";
    snprintf(text, sizeof text, "%s,\"use_qk_norm\":true,\"head_dim\":32}", glm);
    CHECK_OK(moe_hf_config_parse(&c, text, strlen(text), "t"));
    CHECK(!strcmp(c.model_type, "glm4_moe") && !strcmp(c.scoring_func, "sigmoid") && !strcmp(c.topk_method, "noaux_tc"));
    CHECK(c.use_qk_norm && c.head_dim == 32 && c.partial_rotary == 1);
    /* sliding windows as transformers decides them: qwen3_moe only with use_sliding_window */
    snprintf(text, sizeof text, "%s,\"sliding_window\":8}", base);
    CHECK_OK(moe_hf_config_parse(&c, text, strlen(text), "t"));
    CHECK(c.sliding_window == 0 && !c.is_sliding_layer[0]);
    snprintf(text, sizeof text, "%s,\"sliding_window\":8,\"use_sliding_window\":true}", base);
    CHECK_OK(moe_hf_config_parse(&c, text, strlen(text), "t"));
    CHECK(c.sliding_window == 8 && c.is_sliding_layer[0]);
    snprintf(text, sizeof text, "%s,\"sliding_window\":8,\"use_sliding_window\":true,"
             "\"layer_types\":[\"full_attention\"]}", base);
    CHECK_OK(moe_hf_config_parse(&c, text, strlen(text), "t"));
    CHECK(c.sliding_window == 8 && !c.is_sliding_layer[0]);
    snprintf(text, sizeof text, "%s,\"sliding_window\":8,\"use_sliding_window\":true,\n"
             "\"layer_types\":[\"linear_attention\"]}", base);
    CHECK_STATUS(moe_hf_config_parse(&c, text, strlen(text), "t"), MOE_ERR_UNSUPPORTED);
    check_error("t:2:", "layer_types[0]: \"linear_attention\" is not supported");
    snprintf(text, sizeof text, "%s,\n\"layer_types\":[\"full_attention\",\"full_attention\"]}", base);
    CHECK_STATUS(moe_hf_config_parse(&c, text, strlen(text), "t"), MOE_ERR_PARSE);
    check_error("t:2:", "\"layer_types\" must be an array of 1 layer types");
    /* top_k 2 fits one kept group of 2 */
    snprintf(text, sizeof text, "%s,\"n_group\":4,\n\"topk_group\":1}", base);
    CHECK_OK(moe_hf_config_parse(&c, text, strlen(text), "t"));
}

/* The dense work per MoE layer in routed experts' weights, worked out by
 * hand: DeepSeek-V2-Lite (27 attentions + 26 shared MLPs of width 2816 + one
 * dense MLP of 10944) / (26 experts of 2048x1408) = 3.951; Mixtral has only
 * attention, 41943040 / (3*4096*14336) = 0.238; Qwen3-30B 18874368 /
 * (3*2048*768) = 4. And a trace must fit the model it is simulated for. */
static void dense_experts_and_routing_check(void) {
    static const struct { const char *dir; double dense; uint32_t layers, experts, top_k; } want[] = {
        {"deepseek-v2-lite", 3.951049, 26, 64, 6},
        {"mixtral-8x7b", 0.238095, 32, 8, 2},
        {"qwen3-30b-a3b", 4.0, 48, 128, 8},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char path[1024];
        real_path(path, sizeof path, want[i].dir);
        moe_hf_config c;
        CHECK_OK(moe_hf_config_load(&c, path));
        CHECK(fabs(moe_hf_config_dense_experts(&c) - want[i].dense) < 1e-5);
        CHECK_OK(moe_hf_config_check_routing(&c, want[i].layers, want[i].experts, want[i].top_k, "t"));
        CHECK(moe_hf_config_check_routing(&c, want[i].layers + 1, want[i].experts, want[i].top_k, "t") ==
              MOE_ERR_INVALID_ARG);
        CHECK(strstr(moe_last_error(), "MoE layers") != NULL);
        CHECK(moe_hf_config_check_routing(&c, want[i].layers, want[i].experts / 2, want[i].top_k, "t") != MOE_OK);
        CHECK(moe_hf_config_check_routing(&c, want[i].layers, want[i].experts, want[i].top_k + 1, "t") != MOE_OK);
    }
    moe_hf_config zero;
    memset(&zero, 0, sizeof zero);
    CHECK(moe_hf_config_dense_experts(&zero) == 0);
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 16);
    *n = fread(buf, 1, 1 << 16, f);
    fclose(f);
    return buf;
}

/* 20000 damaged copies of the real configs, a fixed seed per file. */
static void random_damage_real(void) {
    const size_t n_files = sizeof reals / sizeof reals[0];
    for (size_t i = 0; i < n_files; i++) {
        char path[1024];
        real_path(path, sizeof path, reals[i].dir);
        size_t n = 0;
        char *text = read_all(path, &n);
        CHECK(text != NULL);
        if (!text) continue;
        const int rounds = (int)(20000 / n_files) + (i == 0 ? (int)(20000 % n_files) : 0);
        const int accepted = fuzz(text, n, rounds, 1000 + i);
        printf("  %-18s %d of %d damaged copies still valid\n", reals[i].dir, accepted, rounds);
        free(text);
    }
}

int main(int argc, char **argv) {
    static const test_case cases[] = {
        TEST_CASE(json_escapes_and_unicode), TEST_CASE(json_numbers),
        TEST_CASE(json_tree_and_lookups),    TEST_CASE(json_nesting_limit),
        TEST_CASE(json_bad_inputs),          TEST_CASE(json_size_limit),
        TEST_CASE(config_small_and_defaults), TEST_CASE(config_layer_rules_and_shared),
        TEST_CASE(config_refusals),          TEST_CASE(random_damage_small),
        TEST_CASE(config_numerics),
        /* these need ../shared */
        TEST_CASE(real_configs),             TEST_CASE(random_damage_real),
        TEST_CASE(dense_experts_and_routing_check),
    };
    const size_t n_all = sizeof cases / sizeof cases[0], n_pure = n_all - 3;
    char probe[1024];
    real_path(probe, sizeof probe, reals[0].dir);
    FILE *f = fopen(probe, "r");
    if (!f) { /* the JSON and small-config cases still run; the real ones need the files */
        printf("config: %s not found (set MOE_SHARED): the real configs are skipped\n", probe);
        const int rc = run_tests("config", cases, n_pure, argc, argv);
        return rc ? rc : TEST_SKIP;
    }
    fclose(f);
    return run_tests("config", cases, n_all, argc, argv);
}
