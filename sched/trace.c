/* trace.c - the moe-trace v1 reader (trace.h). */
#define _POSIX_C_SOURCE 200809L
#include "trace.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void moe_trace_init(moe_trace *t) { memset(t, 0, sizeof *t); }

void moe_trace_free(moe_trace *t) {
    free(t->seqs);
    free(t->ids);
    free(t->weights);
    moe_trace_init(t);
}

typedef struct reader {
    const char *name;
    uint64_t line;
} reader;

#define bad(r, ...) moe_fail_at(MOE_ERR_PARSE, (r)->name, (r)->line, __VA_ARGS__)

/* A decimal count in [lo, hi] that fills the whole of s..e. */
static bool count(const char *s, const char *e, uint64_t lo, uint64_t hi, uint64_t *out) {
    if (s == e || e - s > 19) return false;
    uint64_t v = 0;
    for (const char *c = s; c < e; c++) {
        if (*c < '0' || *c > '9') return false;
        v = v * 10 + (uint64_t)(*c - '0');
    }
    if (v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool grow(moe_trace *t, uint64_t tokens) {
    if (tokens <= t->cap_tokens) return true;
    uint64_t cap = t->cap_tokens ? t->cap_tokens : 1024;
    while (cap < tokens) cap *= 2;
    const size_t per = (size_t)t->n_layers * t->top_k;
    if (cap > SIZE_MAX / per / sizeof(float)) return false;
    uint16_t *ids = realloc(t->ids, (size_t)cap * per * sizeof *ids);
    if (!ids) return false;
    t->ids = ids;
    float *w = realloc(t->weights, (size_t)cap * per * sizeof *w);
    if (!w) return false;
    t->weights = w;
    t->cap_tokens = cap;
    return true;
}

/* One token line: n_layers groups of top_k "expert[:weight]" separated by
 * " | ", written to ids/weights. */
static moe_status token_line(const reader *r, moe_trace *t, const char *s, const char *e, uint16_t *ids,
                             float *w, bool *any_weight) {
    const char *p = s;
    for (uint32_t l = 0; l < t->n_layers; l++) {
        if (l) {
            if (e - p < 3 || p[0] != ' ' || p[1] != '|' || p[2] != ' ')
                return bad(r, "%u group(s) of experts, the header says %u layers (groups are separated by \" | \")",
                           l, t->n_layers);
            p += 3;
        }
        for (uint32_t k = 0; k < t->top_k; k++) {
            if (k) {
                if (p >= e || *p != ' ' || (e - p >= 2 && p[1] == '|'))
                    return bad(r, "layer %u: %u expert(s), the header says top_k %u", l, k, t->top_k);
                p++;
            }
            const char *q = p;
            while (q < e && *q >= '0' && *q <= '9') q++;
            uint64_t id;
            if (q == p) {
                int wl = 0;
                while (p + wl < e && p[wl] != ' ' && wl < 32) wl++;
                return bad(r, "layer %u: \"%.*s\" is not an expert id", l, wl, p);
            }
            if (!count(p, q, 0, t->n_experts - 1, &id))
                return bad(r, "layer %u: expert %.*s out of range (experts %u)", l, (int)(q - p), p, t->n_experts);
            for (uint32_t j = 0; j < k; j++)
                if (ids[l * t->top_k + j] == id) return bad(r, "layer %u: expert %llu twice", l, (unsigned long long)id);
            ids[l * t->top_k + k] = (uint16_t)id;
            w[l * t->top_k + k] = NAN;
            p = q;
            if (p < e && *p == ':') {
                char buf[32];
                const char *v = ++p;
                while (p < e && *p != ' ') p++;
                if (p == v || p - v >= (long)sizeof buf) return bad(r, "layer %u: expert %llu: bad weight", l, (unsigned long long)id);
                memcpy(buf, v, (size_t)(p - v)), buf[p - v] = '\0';
                char *end;
                errno = 0;
                float x = strtof(buf, &end);
                if (*end || errno || !isfinite(x) || x < 0.0f)
                    return bad(r, "layer %u: expert %llu: weight \"%s\" is not a finite number >= 0", l,
                               (unsigned long long)id, buf);
                w[l * t->top_k + k] = x;
                *any_weight = true;
            }
        }
    }
    if (p != e) {
        if (e - p >= 3 && p[0] == ' ' && p[1] == '|')
            return bad(r, "more than %u groups of experts (the header says %u layers)", t->n_layers, t->n_layers);
        return bad(r, "more than %u experts in the last layer, or text after it: \"%.*s\"", t->top_k,
                   (int)(e - p < 32 ? e - p : 32), p);
    }
    return MOE_OK;
}

/* Appends n's sequences to t; an empty t takes n's storage. */
static moe_status moe_trace_append_move(moe_trace *t, moe_trace *n, bool any_weight) {
    n->has_weights = any_weight;
    if (!t->n_tokens && !t->n_seqs) {
        moe_trace_free(t);
        *t = *n;
        moe_trace_init(n);
        return MOE_OK;
    }
    const size_t per = (size_t)t->n_layers * t->top_k;
    if (!grow(t, t->n_tokens + n->n_tokens)) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "trace: out of memory");
    if (t->cap_seqs - t->n_seqs < n->n_seqs) {
        moe_trace_seq *q = realloc(t->seqs, (t->n_seqs + n->n_seqs) * sizeof *q);
        if (!q) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "trace: out of memory");
        t->seqs = q, t->cap_seqs = t->n_seqs + n->n_seqs;
    }
    memcpy(t->ids + t->n_tokens * per, n->ids, (size_t)n->n_tokens * per * sizeof *t->ids);
    memcpy(t->weights + t->n_tokens * per, n->weights, (size_t)n->n_tokens * per * sizeof *t->weights);
    for (uint32_t i = 0; i < n->n_seqs; i++) {
        t->seqs[t->n_seqs + i] = n->seqs[i];
        t->seqs[t->n_seqs + i].first += t->n_tokens;
    }
    t->n_seqs += n->n_seqs, t->n_tokens += n->n_tokens;
    t->has_weights |= any_weight;
    return MOE_OK;
}

moe_status moe_trace_parse(moe_trace *t, const char *text, size_t len, const char *name) {
    if (!t || (!text && len)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_trace_parse: NULL argument");
    if (!name) name = "trace";
    reader r = {name, 1};
    /* The header into a fresh trace; appended to t at the end. */
    moe_trace n;
    moe_trace_init(&n);
    uint64_t header[3] = {0, 0, 0}; /* layers, experts, top_k */
    const char *keys[3] = {"layers", "experts", "top_k"};
    const uint64_t max[3] = {MOE_TRACE_MAX_LAYERS, MOE_TRACE_MAX_EXPERTS, MOE_TRACE_MAX_TOP_K};
    uint64_t header_line = 0, left = 0; /* tokens still owed to the open sequence */
    bool first = true, in_seqs = false, any_weight = false;
    moe_status st = MOE_OK;
    for (size_t pos = 0; pos < len && st == MOE_OK; r.line++) {
        const char *s = text + pos, *nl = memchr(s, '\n', len - pos);
        if (!nl) {
            st = bad(&r, "the last line has no line end: the file is truncated");
            break;
        }
        const char *e = nl;
        pos = (size_t)(nl - text) + 1;
        if (e > s && e[-1] == '\r') e--;
        if (memchr(s, '\0', (size_t)(e - s))) {
            st = bad(&r, "a NUL byte: not a text file");
            break;
        }
        if (first) {
            first = false;
            if (e - s != 13 || memcmp(s, "# moe-trace 1", 13) != 0) {
                st = bad(&r, "not a moe-trace v1 file (the first line must be \"# moe-trace 1\")");
                break;
            }
            continue;
        }
        if (s == e || *s == '#') continue;
        if (left > 0) { /* a token line of the open sequence */
            const uint64_t tok = n.n_tokens;
            if (!grow(&n, tok + 1)) {
                st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s:%llu: out of memory", name, (unsigned long long)r.line);
                break;
            }
            const size_t per = (size_t)n.n_layers * n.top_k;
            if (e - s >= 4 && memcmp(s, "seq ", 4) == 0) {
                st = bad(&r, "sequence \"%s\" ends after %llu of its %llu tokens", n.seqs[n.n_seqs - 1].name,
                         (unsigned long long)n.seqs[n.n_seqs - 1].n - left, (unsigned long long)n.seqs[n.n_seqs - 1].n);
                break;
            }
            st = token_line(&r, &n, s, e, n.ids + tok * per, n.weights + tok * per, &any_weight);
            n.n_tokens++, left--;
            continue;
        }
        const char *sp = memchr(s, ' ', (size_t)(e - s));
        const size_t kl = (size_t)((sp ? sp : e) - s);
        if (kl == 3 && memcmp(s, "seq", 3) == 0) {
            if (!header[0] || !header[1] || !header[2]) {
                st = bad(&r, "a sequence before the header (layers, experts and top_k) is complete");
                break;
            }
            if (!in_seqs) {
                in_seqs = true;
                n.n_layers = (uint32_t)header[0], n.n_experts = (uint32_t)header[1], n.top_k = (uint32_t)header[2];
                if (n.top_k > n.n_experts) {
                    st = bad(&r, "top_k %u is more than experts %u", n.top_k, n.n_experts);
                    break;
                }
            }
            const char *nm = sp ? sp + 1 : e, *ne = nm;
            while (ne < e && *ne != ' ') ne++;
            uint64_t cnt;
            if (nm == ne || ne == e || !count(ne + 1, e, 1, UINT32_MAX, &cnt)) {
                st = bad(&r, "expected \"seq NAME N\" with N >= 1 tokens");
                break;
            }
            if (n.n_seqs == n.cap_seqs) {
                uint32_t cap = n.cap_seqs ? 2 * n.cap_seqs : 16;
                moe_trace_seq *q = realloc(n.seqs, cap * sizeof *q);
                if (!q) {
                    st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", name);
                    break;
                }
                n.seqs = q, n.cap_seqs = cap;
            }
            moe_trace_seq *q = &n.seqs[n.n_seqs++];
            memset(q, 0, sizeof *q);
            snprintf(q->name, sizeof q->name, "%.*s", (int)(ne - nm), nm);
            q->first = n.n_tokens, q->n = cnt, left = cnt;
            continue;
        }
        if (in_seqs) {
            st = bad(&r, "\"%.*s\" after the first sequence: expected a token line or \"seq NAME N\"",
                     (int)(kl < 32 ? kl : 32), s);
            break;
        }
        /* A header line: known keys are checked, others ignored (the format grows). */
        for (int i = 0; i < 3; i++)
            if (kl == strlen(keys[i]) && memcmp(s, keys[i], kl) == 0) {
                if (header[i]) st = bad(&r, "%s given twice", keys[i]);
                else if (!sp || !count(sp + 1, e, 1, max[i], &header[i]))
                    st = bad(&r, "%s: expected a whole number in 1..%llu", keys[i], (unsigned long long)max[i]);
                header_line = r.line;
            }
        if (kl == 5 && memcmp(s, "model", 5) == 0 && sp)
            snprintf(n.model, sizeof n.model, "%.*s", (int)(e - sp - 1 < 63 ? e - sp - 1 : 63), sp + 1);
    }
    if (st == MOE_OK && left > 0)
        st = bad(&r, "the file ends %llu token(s) short of sequence \"%s\"", (unsigned long long)left,
                 n.seqs[n.n_seqs - 1].name);
    if (st == MOE_OK && first) st = bad(&r, "empty: not a moe-trace v1 file");
    if (st == MOE_OK && !in_seqs) st = bad(&r, "no sequence (\"seq NAME N\") in the file");
    if (st == MOE_OK && t->n_tokens &&
        (t->n_layers != n.n_layers || t->n_experts != n.n_experts || t->top_k != n.top_k)) {
        r.line = header_line;
        st = bad(&r, "%u layers x %u experts, top_k %u, but the traces before have %u x %u, top_k %u", n.n_layers,
                 n.n_experts, n.top_k, t->n_layers, t->n_experts, t->top_k);
    }
    if (st == MOE_OK) st = moe_trace_append_move(t, &n, any_weight);
    moe_trace_free(&n);
    return st;
}

moe_status moe_trace_load(moe_trace *t, const char *path) {
    if (!t || !path) return moe_fail(MOE_ERR_INVALID_ARG, "moe_trace_load: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f) return moe_fail(MOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 1 << 20;
            char *b = realloc(text, cap);
            if (!b) {
                free(text);
                fclose(f);
                return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory reading it", path);
            }
            text = b;
        }
        const size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    const bool err = ferror(f) != 0;
    fclose(f);
    moe_status st = err ? moe_fail(MOE_ERR_IO, "%s: read error", path) : moe_trace_parse(t, text, len, path);
    free(text);
    return st;
}

void moe_trace_begin(moe_trace *t, const char *model, uint32_t n_layers, uint32_t n_experts, uint32_t top_k) {
    moe_trace_free(t);
    snprintf(t->model, sizeof t->model, "%s", model ? model : "unknown");
    t->n_layers = n_layers, t->n_experts = n_experts, t->top_k = top_k;
}

moe_status moe_trace_add_tokens(moe_trace *t, uint64_t n, const char *seq_name, uint64_t *first) {
    if (!t->n_layers || !t->top_k) return moe_fail(MOE_ERR_STATE, "trace: not begun");
    if (!t->n_seqs) {
        if (!(t->seqs = calloc(1, sizeof *t->seqs))) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "trace: out of memory");
        t->cap_seqs = t->n_seqs = 1;
        snprintf(t->seqs[0].name, sizeof t->seqs[0].name, "%s", seq_name ? seq_name : "run");
    }
    if (!grow(t, t->n_tokens + n)) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "trace: out of memory");
    const size_t per = (size_t)t->n_layers * t->top_k;
    memset(t->ids + t->n_tokens * per, 0, (size_t)n * per * sizeof *t->ids);
    for (size_t i = 0; i < (size_t)n * per; i++) t->weights[t->n_tokens * per + i] = NAN;
    *first = t->n_tokens;
    t->n_tokens += n;
    t->seqs[t->n_seqs - 1].n += n;
    return MOE_OK;
}

moe_status moe_trace_write(const moe_trace *t, const char *path) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return moe_fail(MOE_ERR_INVALID_ARG, "%s: path too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return moe_fail(MOE_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    fprintf(f, "# moe-trace 1\n# recorded by moerun %s\nmodel %s\nlayers %u\nexperts %u\ntop_k %u\n", moe_version(),
            t->model[0] ? t->model : "unknown", t->n_layers, t->n_experts, t->top_k);
    for (uint32_t s = 0; s < t->n_seqs; s++) {
        const moe_trace_seq *q = &t->seqs[s];
        if (!q->n) continue;
        fprintf(f, "seq %s %llu\n", q->name, (unsigned long long)q->n);
        for (uint64_t tok = q->first; tok < q->first + q->n; tok++) {
            for (uint32_t l = 0; l < t->n_layers; l++) {
                const uint16_t *ids = moe_trace_ids(t, tok, l);
                const float *w = t->weights + (tok * t->n_layers + l) * t->top_k;
                for (uint32_t k = 0; k < t->top_k; k++) {
                    fprintf(f, k ? " %u" : (l ? " | %u" : "%u"), ids[k]);
                    if (isfinite(w[k]) && w[k] >= 0.0f) fprintf(f, ":%.6g", (double)w[k]); /* what the reader takes */
                }
            }
            fputc('\n', f);
        }
    }
    bool ok = fflush(f) == 0 && !ferror(f);
    int err = errno;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        if (ok) err = errno;
        remove(tmp);
        return moe_fail(MOE_ERR_IO, "%s: cannot write: %s", path, strerror(err));
    }
    return MOE_OK;
}
