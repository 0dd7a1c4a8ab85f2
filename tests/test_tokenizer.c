/* test_tokenizer.c - the tokenizer against Hugging Face `tokenizers`: every
 * string of the fixtures in tests/data/tokenizer (written by
 * tests/gen/tokenizer_cases.py) must encode to HF's ids and decode to HF's
 * text, for the real Qwen3 tokenizer in ../shared/tokenizers (its cases are
 * skipped where it is absent; exit 77 if that is all there was to run) and
 * for the small SentencePiece-style tokenizers made for these tests. Then
 * bad files, bad ids, invalid UTF-8, small buffers and streaming. Last,
 * tokenizers read from GGUF metadata (tests/gen/gguf_tokenizers.py): a
 * byte-level one ("gpt2", pre "qwen2") against HF's encodings of the
 * tokenizer.json it was converted from, a SentencePiece-style one ("llama")
 * against llama.cpp's own encodings of the GGUF file (its SPM merging by
 * score differs from HF's BPE on a few strings), and files to refuse. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <unistd.h>

#include "common.h"
#include "gguf.h"
#include "harness.h"
#include "json.h"
#include "tokenizer.h"
#include "unicode.h"

#ifndef MOE_SHARED_DIR
#define MOE_SHARED_DIR "../shared"
#endif
#ifndef MOE_TEST_DATA_DIR
#define MOE_TEST_DATA_DIR "tests/data"
#endif

static bool qwen3_missing;

static const char *shared_dir(void) {
    const char *dir = getenv("MOE_SHARED");
    return dir ? dir : MOE_SHARED_DIR;
}

static char *path_of(const char *dir, const char *rel) {
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, sizeof buf[0], "%s/%s", dir, rel);
    return p;
}

static const char *qwen3_json(void) { return path_of(shared_dir(), "tokenizers/qwen3/tokenizer.json"); }

static bool exists(const char *path) { return access(path, R_OK) == 0; }

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    *len = fread(p, 1, (size_t)n, f);
    fclose(f);
    return p;
}

/* ---- the fixtures ---- */

typedef struct run_stats {
    size_t cases, encoded_ok, decoded_checked;
} run_stats;

static size_t ids_of(const moe_json *arr, int32_t *out, size_t cap) {
    size_t n = moe_json_array_len(arr);
    for (size_t i = 0; i < n && i < cap; i++) out[i] = (int32_t)moe_json_array_at(arr, i)->number;
    return n;
}

static bool same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void report_ids(const char *what, const moe_json *text, const int32_t *got, size_t ng, const int32_t *want,
                       size_t nw) {
    fprintf(stderr, "  %s of \"%.60s\" (%zu bytes): got %zu ids, want %zu; first difference at", what, text->u.str,
            text->len, ng, nw);
    size_t k = 0;
    while (k < ng && k < nw && got[k] == want[k]) k++;
    fprintf(stderr, " %zu: got %d, want %d\n", k, k < ng ? (int)got[k] : -1, k < nw ? (int)want[k] : -1);
}

static void check_encode(const moe_tokenizer *tok, const moe_json *text, const moe_json *want, bool special,
                         int32_t *got, int32_t *exp, size_t cap, run_stats *st) {
    size_t n = 0;
    const size_t nw = ids_of(want, exp, cap);
    CHECK_OK(moe_tokenizer_encode(tok, text->u.str, text->len, special, got, cap, &n));
    if (!same_ids(got, n, exp, nw)) {
        report_ids(special ? "encode (add_special)" : "encode", text, got, n, exp, nw);
        harness_failures++;
    } else if (!special) {
        st->encoded_ok++;
    }
}

/* decode(ids) must be `want`, and the tokens' bytes must add up to it
 * (except for the SentencePiece decoders' leading space). */
static void check_decode(const moe_tokenizer *tok, const moe_json *text, const int32_t *ids, size_t n, bool skip,
                         const moe_json *want, char *buf, size_t cap) {
    size_t len = 0;
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, skip, buf, cap, &len));
    if (len != want->len || memcmp(buf, want->u.str, len) != 0) {
        fprintf(stderr, "  decode%s of \"%.60s\": got \"%.*s\" (%zu bytes), want \"%.60s\" (%zu)\n",
                skip ? " (skip special)" : "", text->u.str, (int)(len < 60 ? len : 60), buf, len, want->u.str,
                want->len);
        harness_failures++;
    }
    if (skip) return;
    size_t total = 0, tl;
    for (size_t k = 0; k < n; k++) {
        CHECK(moe_tokenizer_token_bytes(tok, ids[k], &tl) != NULL);
        total += tl;
    }
    moe_tokenizer_info info;
    moe_tokenizer_get_info(tok, &info);
    if (info.byte_level) CHECK_EQ(total, len);
    else CHECK(total >= len && total <= len + 3);
}

static void run_case(const moe_tokenizer *tok, const moe_json *c, int32_t *got, int32_t *exp, char *buf, size_t cap,
                     run_stats *st) {
    const moe_json *text = moe_json_member_get(c, "text"), *ids = moe_json_member_get(c, "ids");
    const moe_json *ids_sp = moe_json_member_get(c, "ids_special");
    const moe_json *dec = moe_json_member_get(c, "decoded"), *dec_skip = moe_json_member_get(c, "decoded_skip");
    if (!ids_sp) ids_sp = ids;
    if (!dec) dec = text;
    if (!dec_skip) dec_skip = dec;
    st->cases++;
    check_encode(tok, text, ids, false, got, exp, cap, st);
    check_encode(tok, text, ids_sp, true, got, exp, cap, st);
    const size_t n = ids_of(ids_sp, exp, cap);
    if (dec->type == MOE_JSON_STRING) {
        check_decode(tok, text, exp, n, false, dec, buf, cap);
        st->decoded_checked++;
    }
    if (dec_skip->type == MOE_JSON_STRING) check_decode(tok, text, exp, n, true, dec_skip, buf, cap);
}

static void run_cases(moe_tokenizer *tok, double load_s, const char *cases_name) {
    size_t len;
    const char *cases_path = path_of(MOE_TEST_DATA_DIR, cases_name);
    char *text = read_all(cases_path, &len);
    CHECK(text != NULL);
    moe_json_doc d;
    if (!text) goto out;
    CHECK_OK(moe_json_parse(&d, text, len, cases_path));
    free(text);
    const size_t cap = 1 << 16;
    int32_t *got = malloc(cap * sizeof *got), *exp = malloc(cap * sizeof *exp);
    char *buf = malloc(cap * 4);
    run_stats st = {0};
    const moe_json *cases = moe_json_member_get(&d.root, "cases");
    const double t1 = moe_now();
    for (size_t i = 0; i < moe_json_array_len(cases); i++)
        run_case(tok, moe_json_array_at(cases, i), got, exp, buf, cap * 4, &st);
    const moe_json *ref = moe_json_member_get(&d.root, "reference");
    printf("  %s: %zu cases, %zu encoded as %s does, %zu decodes checked; load %.3f s, cases %.3f s\n", cases_name,
           st.cases, st.encoded_ok, ref && ref->type == MOE_JSON_STRING ? ref->u.str : "HF", st.decoded_checked, load_s,
           moe_now() - t1);
    CHECK(st.cases >= 400);
    free(got);
    free(exp);
    free(buf);
    moe_json_free(&d);
out:
    moe_tokenizer_free(&tok);
}

static void run_fixture(const char *tok_path, const char *config_path, const char *cases_name) {
    moe_tokenizer *tok = NULL;
    const double t0 = moe_now();
    CHECK_OK(moe_tokenizer_load(&tok, tok_path, config_path));
    if (tok) run_cases(tok, moe_now() - t0, cases_name);
}

/* The tokenizer of GGUF file `path`, the file closed (the tokenizer must not need it). */
static moe_tokenizer *load_gguf(const char *path, double *load_s) {
    moe_gguf g;
    moe_tokenizer *tok = NULL;
    const double t0 = moe_now();
    const moe_status s = moe_gguf_open(&g, path);
    CHECK_OK(s);
    if (s) return NULL;
    CHECK_OK(moe_tokenizer_from_gguf(&tok, &g));
    if (load_s) *load_s = moe_now() - t0;
    moe_gguf_close(&g);
    return tok;
}

static void run_gguf_fixture(const char *gguf_rel, const char *cases_name) {
    double load_s = 0;
    moe_tokenizer *tok = load_gguf(path_of(MOE_TEST_DATA_DIR, gguf_rel), &load_s);
    if (tok) run_cases(tok, load_s, cases_name);
}

static void test_qwen3_cases(void) {
    if (qwen3_missing) return;
    run_fixture(qwen3_json(), NULL, "tokenizer/qwen3_cases.json");
}

static void test_spbpe_cases(void) {
    run_fixture(path_of(MOE_TEST_DATA_DIR, "tokenizer/spbpe/tokenizer.json"), NULL, "tokenizer/spbpe_cases.json");
}

static void test_spbpe_metaspace_cases(void) {
    run_fixture(path_of(MOE_TEST_DATA_DIR, "tokenizer/spbpe-metaspace/tokenizer.json"), NULL,
                "tokenizer/spbpe_metaspace_cases.json");
}

/* ---- Qwen3 by hand ---- */

static void test_qwen3_chat(void) {
    if (qwen3_missing) return;
    moe_tokenizer *tok;
    const char *cfg = path_of(shared_dir(), "tokenizers/qwen3/tokenizer_config.json");
    CHECK_OK(moe_tokenizer_load(&tok, qwen3_json(), cfg));
    if (!tok) return;
    /* From `tokenizers` 0.23.3. */
    static const int32_t want[] = {151644, 872, 198, 14990, 151645, 198, 151644, 77091, 198};
    const char *chat = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n";
    int32_t ids[32];
    size_t n;
    CHECK_OK(moe_tokenizer_encode(tok, chat, strlen(chat), true, ids, 32, &n));
    CHECK(same_ids(ids, n, want, sizeof want / sizeof want[0]));
    moe_tokenizer_info info;
    moe_tokenizer_get_info(tok, &info);
    CHECK_EQ(info.n_vocab, 151669);
    CHECK_EQ(info.n_added, 26);
    CHECK(info.byte_level);
    CHECK_EQ(info.bos_id, -1);
    CHECK_EQ(info.eos_id, 151645);
    CHECK_EQ(info.pad_id, 151643);
    CHECK(info.chat_template && strstr(info.chat_template, "<|im_start|>"));
    CHECK_EQ(moe_tokenizer_token_id(tok, "<|im_end|>"), 151645);
    CHECK_EQ(moe_tokenizer_token_id(tok, "<think>"), 151667);
    CHECK_EQ(moe_tokenizer_token_id(tok, "Ġhello"), 23811);
    CHECK_EQ(moe_tokenizer_token_id(tok, "hello"), 14990);
    CHECK_EQ(moe_tokenizer_token_id(tok, "no such token, surely"), -1);
    CHECK(moe_tokenizer_is_special(tok, 151645));
    CHECK(!moe_tokenizer_is_special(tok, 151667)); /* <think> */
    CHECK(!moe_tokenizer_is_special(tok, 14990));
    size_t len;
    const char *b = moe_tokenizer_token_bytes(tok, 23811, &len);
    CHECK(b && len == 6 && memcmp(b, " hello", 6) == 0);
    CHECK(moe_tokenizer_token_bytes(tok, 151669, &len) == NULL);
    CHECK(moe_tokenizer_token_bytes(tok, -1, &len) == NULL);
    moe_tokenizer_free(&tok);
    CHECK(tok == NULL);
    moe_tokenizer_free(&tok);
}

/* Byte-level BPE takes any bytes and gives them back. */
static void test_invalid_utf8(void) {
    moe_tokenizer *tok;
    /* Without ../shared, the tiny models' byte-level tokenizer: SentencePiece
     * streams drop nothing but differ at a text's first space. */
    const char *path = qwen3_missing ? path_of(MOE_TEST_DATA_DIR, "models/qwen3_moe/tokenizer.json") : qwen3_json();
    CHECK_OK(moe_tokenizer_load(&tok, path, NULL));
    if (!tok) return;
    static const char text[] = "ok \xff\xfe bad \xc3 trunc \xe4\xb8 \xed\xa0\x80 surrogate \xc0\xaf overlong \x80 end";
    int32_t ids[256];
    size_t n, len;
    char buf[256];
    CHECK_OK(moe_tokenizer_encode(tok, text, sizeof text - 1, false, ids, 256, &n));
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, false, buf, sizeof buf, &len));
    CHECK(len == sizeof text - 1 && memcmp(buf, text, len) == 0);
    moe_tokenizer_free(&tok);
}

/* SentencePiece BPE: unknown characters become <0xXX> byte tokens; invalid bytes too. */
static void test_spbpe_bytes(void) {
    moe_tokenizer *tok;
    CHECK_OK(moe_tokenizer_load(&tok, path_of(MOE_TEST_DATA_DIR, "tokenizer/spbpe/tokenizer.json"), NULL));
    if (!tok) return;
    moe_tokenizer_info info;
    moe_tokenizer_get_info(tok, &info);
    CHECK(!info.byte_level);
    CHECK_EQ(info.bos_id, 1);
    CHECK_EQ(info.eos_id, -1);
    CHECK_EQ(moe_tokenizer_token_id(tok, "<0x0A>"), 3 + 0x0a);
    static const char text[] = "a\xff" "b";
    int32_t ids[16];
    size_t n, len;
    CHECK_OK(moe_tokenizer_encode(tok, text, 3, true, ids, 16, &n));
    CHECK(n >= 3 && ids[0] == 1);
    bool has_ff = false;
    for (size_t k = 0; k < n; k++) has_ff |= ids[k] == 3 + 0xff;
    CHECK(has_ff);
    char buf[64];
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, true, buf, sizeof buf, &len));
    CHECK(len == 3 && memcmp(buf, text, 3) == 0);
    const char *b = moe_tokenizer_token_bytes(tok, 3 + 0x41, &len);
    CHECK(b && len == 1 && b[0] == 'A');
    moe_tokenizer_free(&tok);
}

/* ---- small buffers, bad ids, streaming ---- */

static void test_buffers_and_ids(void) {
    moe_tokenizer *tok;
    CHECK_OK(moe_tokenizer_load(&tok, path_of(MOE_TEST_DATA_DIR, "tokenizer/spbpe/tokenizer.json"), NULL));
    if (!tok) return;
    const char *text = "the model routes each token";
    int32_t ids[64];
    size_t n, n2, len;
    CHECK_OK(moe_tokenizer_encode(tok, text, strlen(text), false, ids, 64, &n));
    CHECK(n > 2);
    CHECK_STATUS(moe_tokenizer_encode(tok, text, strlen(text), false, ids, 2, &n2), MOE_ERR_INVALID_ARG);
    CHECK_EQ(n2, n);
    CHECK_ERROR_MENTIONS("ids");
    CHECK_OK(moe_tokenizer_encode(tok, "", 0, false, NULL, 0, &n2));
    CHECK_EQ(n2, 0);
    char buf[64];
    CHECK_STATUS(moe_tokenizer_decode(tok, ids, n, false, buf, 4, &len), MOE_ERR_INVALID_ARG);
    CHECK_EQ(len, strlen(text));
    CHECK_STATUS(moe_tokenizer_decode(tok, ids, n, false, buf, strlen(text), &len), MOE_ERR_INVALID_ARG);
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, false, buf, strlen(text) + 1, &len));
    CHECK(strcmp(buf, text) == 0);
    moe_tokenizer_info info;
    moe_tokenizer_get_info(tok, &info);
    const int32_t bad[] = {5, (int32_t)info.n_vocab};
    CHECK_STATUS(moe_tokenizer_decode(tok, bad, 2, false, buf, sizeof buf, &len), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("ids[1]");
    const int32_t neg[] = {-3};
    CHECK_STATUS(moe_tokenizer_decode(tok, neg, 1, false, buf, sizeof buf, &len), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_tokenizer_encode(NULL, text, 1, false, ids, 64, &n), MOE_ERR_INVALID_ARG);
    moe_tokenizer_free(&tok);
}

static void test_utf8_complete(void) {
    CHECK_EQ(moe_utf8_complete("", 0), 0);
    CHECK_EQ(moe_utf8_complete("abc", 3), 3);
    CHECK_EQ(moe_utf8_complete("a\xc3", 2), 1);          /* é, first byte */
    CHECK_EQ(moe_utf8_complete("a\xc3\xa9", 3), 3);
    CHECK_EQ(moe_utf8_complete("a\xe4\xb8", 3), 1);      /* 中, two of three */
    CHECK_EQ(moe_utf8_complete("a\xf0\x9f\x98", 4), 1);  /* 😀, three of four */
    CHECK_EQ(moe_utf8_complete("a\xf0\x9f\x98\x80", 5), 5);
    CHECK_EQ(moe_utf8_complete("a\xff", 2), 2);          /* never valid: not held back */
    CHECK_EQ(moe_utf8_complete("a\x80", 2), 2);
    CHECK_EQ(moe_utf8_complete("a\xe0\x80", 3), 3);      /* overlong: never valid */
    CHECK_EQ(moe_utf8_complete("a\xed\xa0", 3), 3);      /* surrogate */
    CHECK_EQ(moe_utf8_complete("a\xc3" "b", 3), 3);
}

/* Decoding token by token, printing what moe_utf8_complete allows, gives the whole text. */
static void test_streaming(void) {
    moe_tokenizer *tok;
    /* Without ../shared, the tiny models' byte-level tokenizer: SentencePiece
     * streams drop nothing but differ at a text's first space. */
    const char *path = qwen3_missing ? path_of(MOE_TEST_DATA_DIR, "models/qwen3_moe/tokenizer.json") : qwen3_json();
    CHECK_OK(moe_tokenizer_load(&tok, path, NULL));
    if (!tok) return;
    const char *text = " 你好，世界! 👨‍👩‍👧 ok é";
    int32_t ids[128];
    size_t n, len, held = 0, printed = 0;
    char pending[64], out[256];
    CHECK_OK(moe_tokenizer_encode(tok, text, strlen(text), false, ids, 128, &n));
    for (size_t k = 0; k < n; k++) {
        const char *b = moe_tokenizer_token_bytes(tok, ids[k], &len);
        memcpy(pending + held, b, len);
        held += len;
        const size_t ok = moe_utf8_complete(pending, held);
        memcpy(out + printed, pending, ok);
        printed += ok;
        memmove(pending, pending + ok, held - ok);
        held -= ok;
    }
    CHECK_EQ(held, 0);
    CHECK(printed == strlen(text) && memcmp(out, text, printed) == 0);
    moe_tokenizer_free(&tok);
}

/* ---- bad files ---- */

static char tmp_path[256];

static const char *write_tmp(const char *text) {
    snprintf(tmp_path, sizeof tmp_path, "%s/moe_tok_%ld.json", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (long)getpid());
    FILE *f = fopen(tmp_path, "wb");
    fputs(text, f);
    fclose(f);
    return tmp_path;
}

/* Loading `json` must fail with `want`, an error "path:LINE:" mentioning `what`. */
static void check_refused(const char *json, moe_status want, int line, const char *what) {
    moe_tokenizer *tok = (moe_tokenizer *)1;
    const char *path = write_tmp(json);
    CHECK_STATUS(moe_tokenizer_load(&tok, path, NULL), want);
    CHECK(tok == NULL);
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s:%d:", path, line);
    if (strncmp(moe_last_error(), prefix, strlen(prefix)) != 0) {
        fprintf(stderr, "  last error \"%s\" does not start with \"%s\"\n", moe_last_error(), prefix);
        harness_failures++;
    }
    CHECK_ERROR_MENTIONS(what);
    remove(path);
}

#define BL_DECODER "\"decoder\": {\"type\": \"ByteLevel\"},\n"
#define BL_PRE "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},\n"

static void test_bad_files(void) {
    moe_tokenizer *tok;
    CHECK_STATUS(moe_tokenizer_load(&tok, "/nonexistent/tokenizer.json", NULL), MOE_ERR_IO);
    CHECK_ERROR_MENTIONS("/nonexistent/tokenizer.json");
    CHECK_STATUS(moe_tokenizer_load(NULL, "x", NULL), MOE_ERR_INVALID_ARG);
    check_refused("{\n\"model\": {\n\"type\": \"BPE\",\n}\n}", MOE_ERR_PARSE, 4, "");
    check_refused("[1, 2]", MOE_ERR_PARSE, 1, "not a tokenizer.json");
    check_refused("{" BL_DECODER "\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", MOE_ERR_UNSUPPORTED, 2,
                  "WordPiece");
    check_refused("{" BL_DECODER "\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", MOE_ERR_UNSUPPORTED, 2,
                  "Unigram");
    check_refused("{" BL_DECODER "\n\"model\": {\"type\": \"BPE\", \"merges\": []}}", MOE_ERR_PARSE, 3, "\"vocab\"");
    check_refused("{" BL_DECODER "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", MOE_ERR_PARSE, 2,
                  "\"merges\"");
    check_refused("{" BL_DECODER "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1},\n"
                  "\"merges\": [\"a b\"]}}", MOE_ERR_PARSE, 3, "not in the vocabulary");
    check_refused("{" BL_DECODER "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}",
                  MOE_ERR_PARSE, 2, "two tokens");
    check_refused("{" BL_DECODER "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}",
                  MOE_ERR_PARSE, 2, "vocabulary id");
    check_refused("{" BL_DECODER "\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": [\"a\"]}}", MOE_ERR_PARSE,
                  2, "two tokens and one space");
    check_refused("{" BL_DECODER "\n\"normalizer\": {\"type\": \"NFKC\"}}", MOE_ERR_UNSUPPORTED, 3, "NFKC");
    check_refused("{" BL_DECODER "\"pre_tokenizer\": {\"type\": \"Split\", \"behavior\": \"Isolated\",\n"
                  "\"pattern\": {\"Regex\": \"\\\\w+|[^\\\\w\\\\s]+\"}}}", MOE_ERR_UNSUPPORTED, 3,
                  "pattern \"\\w+|[^\\w\\s]+\" is not supported");
    check_refused("{" BL_DECODER "\"pre_tokenizer\": {\"type\": \"Whitespace\"}}", MOE_ERR_UNSUPPORTED, 2,
                  "Whitespace");
    check_refused("{\"decoder\": {\"type\": \"WordPiece\"}}", MOE_ERR_UNSUPPORTED, 1, "WordPiece");
    check_refused("{\"decoder\": null}", MOE_ERR_UNSUPPORTED, 1, "without a decoder");
    check_refused("{" BL_DECODER BL_PRE "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], "
                  "\"dropout\": 0.1}}", MOE_ERR_UNSUPPORTED, 3, "dropout");
    check_refused("{" BL_DECODER BL_PRE "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},\n"
                  "\"post_processor\": {\"type\": \"RobertaProcessing\"}}", MOE_ERR_UNSUPPORTED, 4,
                  "RobertaProcessing");
    check_refused("{" BL_DECODER BL_PRE "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},\n"
                  "\"added_tokens\": [{\"id\": 1, \"content\": \"\"}]}", MOE_ERR_PARSE, 4, "empty");

    /* The smallest working byte-level tokenizer, and a config that names a missing token. */
    const char *mini = "{" BL_DECODER BL_PRE "\"model\": {\"type\": \"BPE\",\n"
                       "\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\", \"b\"]]}}";
    char path[300];
    snprintf(path, sizeof path, "%s", write_tmp(mini));
    CHECK_OK(moe_tokenizer_load(&tok, path, NULL));
    int32_t ids[8];
    size_t n;
    CHECK_OK(moe_tokenizer_encode(tok, "abba", 4, true, ids, 8, &n));
    CHECK(n == 3 && ids[0] == 2 && ids[1] == 1 && ids[2] == 0);
    CHECK_OK(moe_tokenizer_encode(tok, "a c", 3, true, ids, 8, &n)); /* no unk token: unknown bytes are dropped */
    CHECK(n == 1 && ids[0] == 0);
    moe_tokenizer_free(&tok);
    FILE *f = fopen(path, "wb");
    fputs(mini, f);
    fclose(f);
    char cfg[320];
    snprintf(cfg, sizeof cfg, "%s.cfg", path);
    f = fopen(cfg, "wb");
    fputs("{\"bos_token\": null,\n\"eos_token\": {\"content\": \"</s>\"}}", f);
    fclose(f);
    CHECK_STATUS(moe_tokenizer_load(&tok, path, cfg), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS(":2: eos_token \"</s>\" is not a token");
    f = fopen(cfg, "wb");
    fputs("{\"eos_token\": \"ab\", \"chat_template\": [{\"name\": \"default\", \"template\": \"T\"}]}", f);
    fclose(f);
    CHECK_OK(moe_tokenizer_load(&tok, path, cfg));
    moe_tokenizer_info info;
    moe_tokenizer_get_info(tok, &info);
    CHECK_EQ(info.eos_id, 2);
    CHECK(info.chat_template && strcmp(info.chat_template, "T") == 0);
    moe_tokenizer_free(&tok);
    remove(cfg);
    remove(path);
}

/* ---- GGUF ---- */

/* The byte-level fixture: GGUF and tokenizer.json give HF's ids. */
static void test_gguf_bytebpe_cases(void) {
    run_fixture(path_of(MOE_TEST_DATA_DIR, "tokenizer/bytebpe/tokenizer.json"), NULL, "tokenizer/bytebpe_cases.json");
    run_gguf_fixture("tokenizer/bytebpe.gguf", "tokenizer/bytebpe_cases.json");
}

/* The SentencePiece-style fixture: llama.cpp's ids (llm_tokenizer_spm). */
static void test_gguf_spbpe_cases(void) { run_gguf_fixture("tokenizer/spbpe.gguf", "tokenizer/spbpe_gguf_cases.json"); }

static void test_gguf_bytebpe_info(void) {
    moe_tokenizer *tok = load_gguf(path_of(MOE_TEST_DATA_DIR, "tokenizer/bytebpe.gguf"), NULL), *js = NULL;
    if (!tok) return;
    moe_tokenizer_info info, ji;
    moe_tokenizer_get_info(tok, &info);
    CHECK(info.byte_level);
    const int32_t eot = moe_tokenizer_token_id(tok, "<|endoftext|>"), end = moe_tokenizer_token_id(tok, "<|im_end|>");
    const int32_t think = moe_tokenizer_token_id(tok, "<think>");
    CHECK(eot >= 256 && end >= 256 && think >= 256);
    CHECK_EQ(info.n_added, 4);
    CHECK_EQ(info.bos_id, eot);
    CHECK_EQ(info.eos_id, end);
    CHECK_EQ(info.pad_id, eot);
    CHECK(info.chat_template && strstr(info.chat_template, "<|im_start|>{{ m.role }}"));
    CHECK(moe_tokenizer_is_special(tok, end));
    CHECK(!moe_tokenizer_is_special(tok, think)); /* user-defined */
    size_t sl;
    const char *sp = moe_tokenizer_token_bytes(tok, moe_tokenizer_token_id(tok, "Ġ"), &sl); /* GPT-2 alphabet */
    CHECK(sp && sl == 1 && sp[0] == ' ');
    /* The same ids as tokenizer.json's, the same bytes for each. */
    CHECK_OK(moe_tokenizer_load(&js, path_of(MOE_TEST_DATA_DIR, "tokenizer/bytebpe/tokenizer.json"), NULL));
    if (js) {
        moe_tokenizer_get_info(js, &ji);
        CHECK_EQ(ji.n_vocab, info.n_vocab);
        for (int32_t id = 0; id < (int32_t)info.n_vocab; id++) {
            size_t a, b;
            const char *pa = moe_tokenizer_token_bytes(tok, id, &a), *pb = moe_tokenizer_token_bytes(js, id, &b);
            CHECK(pa && pb && a == b && memcmp(pa, pb, a) == 0);
        }
        moe_tokenizer_free(&js);
    }
    /* add_bos_token false: add_special adds nothing; skip_special drops <|im_end|>, keeps <think>. */
    const char *text = "<|im_start|>user\nhi <think>ok</think><|im_end|>";
    int32_t ids[64], ids2[64];
    size_t n, n2, len;
    char buf[128];
    CHECK_OK(moe_tokenizer_encode(tok, text, strlen(text), false, ids, 64, &n));
    CHECK_OK(moe_tokenizer_encode(tok, text, strlen(text), true, ids2, 64, &n2));
    CHECK(same_ids(ids, n, ids2, n2));
    CHECK(n > 3 && ids[0] == moe_tokenizer_token_id(tok, "<|im_start|>") && ids[n - 1] == end);
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, true, buf, sizeof buf, &len));
    CHECK(strcmp(buf, "user\nhi <think>ok</think>") == 0);
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, false, buf, sizeof buf, &len));
    CHECK(strcmp(buf, text) == 0);
    /* Any bytes round-trip. */
    static const char bad[] = "ok \xff\xfe \xc3 \xe4\xb8 end";
    CHECK_OK(moe_tokenizer_encode(tok, bad, sizeof bad - 1, false, ids, 64, &n));
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, false, buf, sizeof buf, &len));
    CHECK(len == sizeof bad - 1 && memcmp(buf, bad, len) == 0);
    moe_tokenizer_free(&tok);
}

static void test_gguf_spbpe_info(void) {
    moe_tokenizer *tok = load_gguf(path_of(MOE_TEST_DATA_DIR, "tokenizer/spbpe.gguf"), NULL);
    if (!tok) return;
    moe_tokenizer_info info;
    moe_tokenizer_get_info(tok, &info);
    CHECK(!info.byte_level);
    CHECK_EQ(info.bos_id, 1);
    CHECK_EQ(info.eos_id, 2);
    CHECK_EQ(info.pad_id, -1);
    CHECK_EQ(info.n_added, 3 + 4); /* <unk> <s> </s>; <sep> "yes no" [MASK] word */
    CHECK(info.chat_template && strstr(info.chat_template, "[INST]"));
    CHECK_EQ(moe_tokenizer_token_id(tok, "<0x0A>"), 3 + 0x0a);
    CHECK(moe_tokenizer_is_special(tok, 1) && moe_tokenizer_is_special(tok, 0));
    CHECK(!moe_tokenizer_is_special(tok, moe_tokenizer_token_id(tok, "<sep>")));
    /* add_bos_token: <s> first; an unknown character as <0xXX> bytes; decode strips the prefix space. */
    static const char text[] = "hello \xe2\x82\xac" "1 world";
    int32_t ids[64];
    size_t n, len;
    char buf[128];
    CHECK_OK(moe_tokenizer_encode(tok, text, sizeof text - 1, true, ids, 64, &n));
    CHECK(n > 4 && ids[0] == 1);
    bool bytes = false;
    for (size_t k = 0; k < n; k++) bytes |= ids[k] == 3 + 0xe2;
    CHECK(bytes);
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, true, buf, sizeof buf, &len));
    CHECK(len == sizeof text - 1 && memcmp(buf, text, len) == 0);
    CHECK_OK(moe_tokenizer_decode(tok, ids, n, false, buf, sizeof buf, &len));
    CHECK(strcmp(buf, "<s> hello \xe2\x82\xac" "1 world") == 0);
    const char *b = moe_tokenizer_token_bytes(tok, 3 + 0x41, &len);
    CHECK(b && len == 1 && b[0] == 'A');
    moe_tokenizer_free(&tok);
}

/* A real Qwen3 GGUF file, if MOE_QWEN3_GGUF names one (skipped otherwise),
 * against HF's encodings of Qwen3's tokenizer.json: all the cases whose text
 * is in NFC (GGUF records no normalizer; Qwen's tokenizer.json has NFC). */
static void test_gguf_qwen3(void) {
    const char *path = getenv("MOE_QWEN3_GGUF");
    if (!path || !*path) {
        printf("  MOE_QWEN3_GGUF not set: skipped\n");
        return;
    }
    moe_tokenizer *tok = load_gguf(path, NULL);
    if (!tok) return;
    size_t len;
    const char *cases_path = path_of(MOE_TEST_DATA_DIR, "tokenizer/qwen3_cases.json");
    char *text = read_all(cases_path, &len);
    moe_json_doc d;
    CHECK(text != NULL);
    if (!text || moe_json_parse(&d, text, len, cases_path) != MOE_OK) {
        free(text);
        moe_tokenizer_free(&tok);
        return;
    }
    free(text);
    const size_t cap = 1 << 16;
    int32_t *got = malloc(cap * sizeof *got), *exp = malloc(cap * sizeof *exp);
    uint8_t *nfc = malloc(cap * 3);
    uint32_t *scratch = malloc(cap * 2 * sizeof *scratch);
    const moe_json *cases = moe_json_member_get(&d.root, "cases");
    size_t checked = 0, same = 0;
    for (size_t i = 0; i < moe_json_array_len(cases); i++) {
        const moe_json *c = moe_json_array_at(cases, i), *t = moe_json_member_get(c, "text");
        if (t->len >= cap / 2 || moe_nfc((const uint8_t *)t->u.str, t->len, nfc, scratch) != t->len ||
            memcmp(nfc, t->u.str, t->len) != 0)
            continue;
        size_t n = 0;
        const size_t nw = ids_of(moe_json_member_get(c, "ids"), exp, cap);
        CHECK_OK(moe_tokenizer_encode(tok, t->u.str, t->len, false, got, cap, &n));
        checked++;
        if (same_ids(got, n, exp, nw)) same++;
        else report_ids("encode", t, got, n, exp, nw);
    }
    printf("  %s: %zu of %zu NFC cases encoded as HF does\n", path, same, checked);
    CHECK_EQ(same, checked);
    CHECK(checked >= 500);
    moe_tokenizer_info info;
    moe_tokenizer_get_info(tok, &info);
    CHECK(info.byte_level);
    CHECK_EQ(moe_tokenizer_token_id(tok, "<|im_end|>"), 151645);
    free(got);
    free(exp);
    free(nfc);
    free(scratch);
    moe_json_free(&d);
    moe_tokenizer_free(&tok);
}

/* gguf-bad/NAME must be refused with `want`, the message naming the file and `what`. */
static void check_gguf_refused(const char *name, moe_status want, const char *what) {
    char rel[128];
    snprintf(rel, sizeof rel, "tokenizer/gguf-bad/%s", name);
    const char *path = path_of(MOE_TEST_DATA_DIR, rel);
    moe_gguf g;
    const moe_status s = moe_gguf_open(&g, path);
    CHECK_OK(s);
    if (s) return;
    moe_tokenizer *tok = (moe_tokenizer *)1;
    CHECK_STATUS(moe_tokenizer_from_gguf(&tok, &g), want);
    CHECK(tok == NULL);
    CHECK_ERROR_MENTIONS(path);
    CHECK_ERROR_MENTIONS(what);
    moe_gguf_close(&g);
}

static void test_gguf_refused(void) {
    check_gguf_refused("model-bert.gguf", MOE_ERR_UNSUPPORTED, "key \"tokenizer.ggml.model\": tokenizer model \"bert\"");
    check_gguf_refused("no-model.gguf", MOE_ERR_PARSE, "tokenizer.ggml.model");
    check_gguf_refused("pre-deepseek-llm.gguf", MOE_ERR_UNSUPPORTED,
                       "key \"tokenizer.ggml.pre\": pre-tokenizer \"deepseek-llm\" is not supported");
    check_gguf_refused("no-tokens.gguf", MOE_ERR_PARSE, "tokenizer.ggml.tokens");
    check_gguf_refused("types-short.gguf", MOE_ERR_PARSE, "key \"tokenizer.ggml.token_type\": 2 entries for 3 tokens");
    check_gguf_refused("type-bad.gguf", MOE_ERR_PARSE, "token 1 has type 9");
    check_gguf_refused("merge-unknown.gguf", MOE_ERR_PARSE, "key \"tokenizer.ggml.merges\": merge 0 \"a c\"");
    CHECK_STATUS(moe_tokenizer_from_gguf(NULL, NULL), MOE_ERR_INVALID_ARG);
    /* The smallest that works: "a", "b", "ab" and merge "a b". */
    moe_tokenizer *tok = load_gguf(path_of(MOE_TEST_DATA_DIR, "tokenizer/gguf-bad/ok.gguf"), NULL);
    if (!tok) return;
    int32_t ids[8];
    size_t n;
    CHECK_OK(moe_tokenizer_encode(tok, "abba", 4, true, ids, 8, &n));
    CHECK(n == 3 && ids[0] == 2 && ids[1] == 1 && ids[2] == 0);
    moe_tokenizer_info info;
    moe_tokenizer_get_info(tok, &info);
    CHECK(info.bos_id == -1 && info.eos_id == -1 && info.chat_template == NULL);
    moe_tokenizer_free(&tok);
}

int main(int argc, char **argv) {
    static const test_case cases[] = {
        TEST_CASE(test_spbpe_cases),    TEST_CASE(test_spbpe_metaspace_cases), TEST_CASE(test_spbpe_bytes),
        TEST_CASE(test_buffers_and_ids), TEST_CASE(test_utf8_complete),         TEST_CASE(test_bad_files),
        TEST_CASE(test_invalid_utf8),   TEST_CASE(test_streaming),             TEST_CASE(test_qwen3_cases),
        TEST_CASE(test_qwen3_chat),     TEST_CASE(test_gguf_bytebpe_cases),    TEST_CASE(test_gguf_spbpe_cases),
        TEST_CASE(test_gguf_bytebpe_info), TEST_CASE(test_gguf_spbpe_info),    TEST_CASE(test_gguf_refused),
        TEST_CASE(test_gguf_qwen3),
    };
    qwen3_missing = !exists(qwen3_json());
    if (qwen3_missing)
        printf("tokenizer: %s not found (set MOE_SHARED): the Qwen3 cases are skipped\n", qwen3_json());
    const int rc = run_tests("tokenizer", cases, sizeof cases / sizeof cases[0], argc, argv);
    return rc || !qwen3_missing ? rc : TEST_SKIP;
}
