/* ggml_moe.c - the ggml peer of `moe-bench cpu`: the same expert shapes,
 * weight types, token counts and cold-weights method, through ggml's CPU
 * backend the way llama.cpp drives it, with a DRAM read probe of the same
 * kind as moerun's (profiles/membw.c), printing JSON lines in moe-bench's
 * format with "peer":"ggml ..." so that bench/report.py puts them side by
 * side. A benchmark, not a test: it measures and prints.
 *
 *   ggml_moe [--shape HxI,...] [--dtype f32,bf16,q8_0,q4_K,q4_K+q6_K,blocks,...]
 *            [--m 1,4,32,512] [--threads N] [--rotate-mb MB] [--reps N]
 *            [--no-layer] [--layer-tokens 1,512] [--no-repack] [--json]
 *
 * Built against a ggml that lives beside the project, never in it
 * (docs/benchmarks.md has the command).
 *
 * One expert: the graph llama.cpp builds for a dense SwiGLU FFN, for m
 * tokens x [hidden, m]:
 *     y = mul_mat(down, swiglu_split(mul_mat(gate, x), mul_mat(up, x)))
 * One graph per expert of the rotation, weights of distinct experts in
 * distinct memory; a pass runs every expert once (two for m >= 128, which
 * are compute-bound), and a case is the best pass of --reps after a warm-up.
 * Only ggml_backend_graph_compute() is timed (graphs are built and their
 * intermediates allocated beforehand, as llama.cpp reuses its graph).
 *
 * A layer: DeepSeek-V2-Lite's 64 experts of 2048x1408, top-6, uniform random
 * routing given as input (ids and weights; the router is not timed, as in
 * moe-bench), the expert tensors 3-D [hidden, inter, experts] as in a GGUF
 * file, and the graph of llama.cpp's build_moe_ffn: mul_mat_id for up and
 * gate, swiglu_split, mul_mat_id for down, times the routing weights, the
 * top-k outputs summed with adds. Rotating over layers as moe-bench does.
 *
 * Weights: random f32 rows quantized once per matrix with
 * ggml_quantize_chunk() and copied to every expert of the rotation. Types
 * whose block does not divide a row fall back as llama.cpp's quantizer does
 * (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0, q2_K/q3_K -> q4_0, iq4_xs ->
 * iq4_nl, else f16), and a case is named by what ran. As llama.cpp does by
 * default, a weight goes to the first of the CPU's extra buffer types
 * (CPU_REPACK: interleaved rows for the AVX2/AVX-512 GEMM kernels; AMX where
 * built) that supports its op, else to a plain CPU buffer; --no-repack keeps
 * every weight plain (llama.cpp's --no-repack). The "path" field says which. */
#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <ggml.h>

#include <getopt.h>
#include <omp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

enum { MAX_SHAPES = 16, MAX_TYPES = 32, MAX_MS = 16 };

typedef struct shape {
    const char *model;
    int64_t hidden, inter;
} shape;

static const shape real_shapes[] = {
    {"deepseek-v2-lite", 2048, 1408}, {"qwen3-30b-a3b", 2048, 768}, {"olmoe", 2048, 1024},
    {"qwen2-57b-a14b", 3584, 2560},   {"mixtral-8x7b", 4096, 14336},
};

/* gate and up in gu, down in down */
typedef struct wtype {
    enum ggml_type gu, down;
} wtype;

typedef struct opts {
    shape shapes[MAX_SHAPES];
    int n_shapes;
    wtype types[MAX_TYPES];
    int n_types;
    int ms[MAX_MS], n_ms;
    int layer_tokens[8], n_layer_tokens;
    int threads, reps;
    size_t rotate_bytes;
    bool layer, repack, json;
} opts;

typedef struct ctx {
    ggml_backend_t backend;
    ggml_backend_dev_t dev;
    ggml_backend_buffer_type_t *extra; /* NULL-terminated, or NULL */
    char peer[96];
} ctx;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, const char *arg) {
    fprintf(stderr, "ggml_moe: %s%s\nusage: ggml_moe [--shape HxI,...] [--dtype f32,bf16,q8_0,q4_K,q4_K+q6_K,blocks,...] "
                    "[--m 1,4,32,512] [--threads N] [--rotate-mb MB] [--reps N] [--no-layer] [--layer-tokens 1,512] "
                    "[--no-repack] [--json]\n",
            what, arg);
    exit(2);
}

/* ---- types ---------------------------------------------------------------- */

/* The weight types moerun has (moe_dtype), as ggml names them. */
static const enum ggml_type moerun_blocks[] = {
    GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0,   GGML_TYPE_Q2_K, GGML_TYPE_Q3_K,
    GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_IQ4_NL, GGML_TYPE_IQ4_XS, GGML_TYPE_MXFP4,
};

static bool type_usable(enum ggml_type t) {
    return ggml_blck_size(t) > 0 && !ggml_quantize_requires_imatrix(t) && t != GGML_TYPE_I8 && t != GGML_TYPE_I16 &&
           t != GGML_TYPE_I32 && t != GGML_TYPE_I64 && t != GGML_TYPE_F64;
}

static enum ggml_type type_named(const char *name) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++)
        if (type_usable((enum ggml_type)t) && ggml_type_name((enum ggml_type)t) &&
            !strcasecmp(name, ggml_type_name((enum ggml_type)t)))
            return (enum ggml_type)t;
    return GGML_TYPE_COUNT;
}

/* llama.cpp's quantizer's fallback for rows that are not whole blocks
 * (llama-quant.cpp, tensor_type_fallback). */
static enum ggml_type fit_rows(enum ggml_type t, int64_t cols) {
    if (cols % ggml_blck_size(t) == 0) return t;
    enum ggml_type r;
    switch (t) {
    case GGML_TYPE_Q2_K: case GGML_TYPE_Q3_K: r = GGML_TYPE_Q4_0; break;
    case GGML_TYPE_Q4_K: r = GGML_TYPE_Q5_0; break;
    case GGML_TYPE_Q5_K: r = GGML_TYPE_Q5_1; break;
    case GGML_TYPE_Q6_K: r = GGML_TYPE_Q8_0; break;
    case GGML_TYPE_IQ4_XS: r = GGML_TYPE_IQ4_NL; break;
    default: r = t; break;
    }
    return cols % ggml_blck_size(r) == 0 ? r : GGML_TYPE_F16;
}

static wtype fit_shape(wtype w, const shape *s) { return (wtype){fit_rows(w.gu, s->hidden), fit_rows(w.down, s->inter)}; }

static const char *wtype_name(wtype w, char *buf, size_t n) {
    if (w.gu == w.down) snprintf(buf, n, "%s", ggml_type_name(w.gu));
    else snprintf(buf, n, "%s+%s", ggml_type_name(w.gu), ggml_type_name(w.down));
    return buf;
}

static size_t matrix_bytes(enum ggml_type t, int64_t rows, int64_t cols) { return (size_t)rows * ggml_row_size(t, cols); }

static size_t expert_bytes(wtype w, const shape *s) {
    return 2 * matrix_bytes(w.gu, s->inter, s->hidden) + matrix_bytes(w.down, s->hidden, s->inter);
}

/* ---- options -------------------------------------------------------------- */

static int parse_int(const char *s, const char *what) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v <= 0 || v > (1l << 20)) die("bad ", what);
    return (int)v;
}

static void parse_list(char *arg, opts *o, char which) {
    for (char *tok = strtok(arg, ","); tok; tok = strtok(NULL, ",")) {
        if (which == 's') {
            long h, i;
            char tail;
            if (o->n_shapes == MAX_SHAPES) die("too many shapes at ", tok);
            if (sscanf(tok, "%ldx%ld%c", &h, &i, &tail) != 2 || h <= 0 || i <= 0 || h > 65536 || i > 65536)
                die("--shape wants HIDDENxINTER, got ", tok);
            const char *name = "custom";
            for (size_t k = 0; k < sizeof real_shapes / sizeof real_shapes[0]; k++)
                if (real_shapes[k].hidden == h && real_shapes[k].inter == i) name = real_shapes[k].model;
            o->shapes[o->n_shapes++] = (shape){name, h, i};
        } else if (which == 'd') {
            if (!strcmp(tok, "blocks")) {
                for (size_t k = 0; k < sizeof moerun_blocks / sizeof moerun_blocks[0]; k++) {
                    if (o->n_types == MAX_TYPES) die("too many --dtype values at ", tok);
                    o->types[o->n_types++] = (wtype){moerun_blocks[k], moerun_blocks[k]};
                }
                continue;
            }
            char *plus = strchr(tok, '+');
            if (plus) *plus = '\0';
            const enum ggml_type gu = type_named(tok), down = plus ? type_named(plus + 1) : gu;
            if (gu == GGML_TYPE_COUNT || down == GGML_TYPE_COUNT)
                die("--dtype: unknown or unusable ggml type ", gu == GGML_TYPE_COUNT ? tok : plus + 1);
            if (o->n_types == MAX_TYPES) die("too many --dtype values at ", tok);
            o->types[o->n_types++] = (wtype){gu, down};
        } else if (which == 'l') {
            if (o->n_layer_tokens == 8) die("too many --layer-tokens at ", tok);
            o->layer_tokens[o->n_layer_tokens++] = parse_int(tok, "--layer-tokens");
        } else {
            if (o->n_ms == MAX_MS) die("too many --m values at ", tok);
            o->ms[o->n_ms++] = parse_int(tok, "--m");
        }
    }
}

/* ---- DRAM read bandwidth, as profiles/membw.c measures it ----------------- */

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) static float sum_512(const float *p, size_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
#endif

static float sum_c(const float *p, size_t n) {
    float a[8] = {0};
    for (size_t i = 0; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) a[j] += p[i + j];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

/* Best read rate in GB/s over `reps` passes over `bytes`, on `threads`
 * OpenMP threads, each reading the share it first touched, with 512-bit
 * loads into independent sums where the CPU has AVX-512. */
static double read_bandwidth(size_t bytes, int threads, int reps) {
    const size_t n = bytes / (64 * sizeof(float)) * 64;
    float *buf = n ? aligned_alloc(64, n * sizeof(float)) : NULL;
    if (!buf) return 0.0;
    bool wide = false;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    wide = __builtin_cpu_supports("avx512f");
#endif
#pragma omp parallel num_threads(threads)
    {
        const size_t per = n / 64 / (size_t)omp_get_num_threads() * 64;
        memset(buf + (size_t)omp_get_thread_num() * per, 0, per * sizeof(float));
    }
    double best = 0.0;
    volatile float sink = 0.0f;
    for (int r = 0; r < reps; r++) {
        float total = 0.0f;
        size_t read = 0;
        const double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : total, read)
        {
            const size_t per = n / 64 / (size_t)omp_get_num_threads() * 64;
            const float *p = buf + (size_t)omp_get_thread_num() * per;
            read += per;
#if defined(__x86_64__) && defined(__GNUC__)
            total += wide ? sum_512(p, per) : sum_c(p, per);
#else
            total += sum_c(p, per);
#endif
        }
        const double gbps = (double)(read * sizeof(float)) / (now() - t0) / 1e9;
        sink = sink + total;
        if (gbps > best) best = gbps;
    }
    (void)sink;
    free(buf);
    return best;
}

/* ---- weights --------------------------------------------------------------- */

static float next_value(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return ((float)(*s >> 40) / (float)(1ull << 24) - 0.5f) * 0.1f;
}

/* `rows` random f32 rows of `cols`, in type t (ggml_quantize_chunk), into
 * dst; rows in parallel in chunks (the quantizers are per row). */
static void make_matrix(void *dst, enum ggml_type t, int64_t rows, int64_t cols, uint64_t seed) {
    ggml_quantize_init(t);
    const int64_t chunk = 16;
#pragma omp parallel
    {
        float *x = malloc((size_t)(chunk * cols) * sizeof *x);
#pragma omp for schedule(dynamic)
        for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
            const int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
            uint64_t s = (seed + (uint64_t)r0) * 0x9E3779B97F4A7C15ull + 1;
            for (int64_t i = 0; i < nr * cols; i++) x[i] = next_value(&s);
            ggml_quantize_chunk(t, x, (char *)dst + (size_t)r0 * ggml_row_size(t, cols), 0, nr, cols, NULL);
        }
        free(x);
    }
}

/* The buffer type llama.cpp would give weight w used by `op` (built on w in
 * a scratch context): the first extra buffer type whose device supports
 * the op with w in it (llama-model.cpp's weight_buft_supported), else the
 * plain CPU buffer. */
static ggml_backend_buffer_type_t pick_buft(const ctx *c, bool repack, struct ggml_tensor *w, struct ggml_tensor *op) {
    if (repack && c->extra)
        for (ggml_backend_buffer_type_t *b = c->extra; *b; b++) {
            ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(*b, 0);
            w->buffer = dummy;
            const bool ok = ggml_backend_dev_supports_op(c->dev, op);
            w->buffer = NULL;
            ggml_backend_buffer_free(dummy);
            if (ok) return *b;
        }
    return ggml_backend_cpu_buffer_type();
}

/* Where a 2-D weight of type t, [cols, rows], goes for mul_mat (experts: 3-D
 * [cols, rows, n_expert] for mul_mat_id). */
static ggml_backend_buffer_type_t weight_buft(const ctx *c, bool repack, enum ggml_type t, int64_t cols, int64_t rows,
                                              int64_t n_expert) {
    struct ggml_init_params ip = {16 * ggml_tensor_overhead(), NULL, true};
    struct ggml_context *g = ggml_init(ip);
    struct ggml_tensor *op;
    struct ggml_tensor *w;
    if (n_expert) {
        w = ggml_new_tensor_3d(g, t, cols, rows, n_expert);
        struct ggml_tensor *x = ggml_new_tensor_3d(g, GGML_TYPE_F32, cols, 1, 4);
        struct ggml_tensor *ids = ggml_new_tensor_2d(g, GGML_TYPE_I32, 2, 4);
        op = ggml_mul_mat_id(g, w, x, ids);
    } else {
        w = ggml_new_tensor_2d(g, t, cols, rows);
        op = ggml_mul_mat(g, w, ggml_new_tensor_2d(g, GGML_TYPE_F32, cols, 4));
    }
    ggml_backend_buffer_type_t b = pick_buft(c, repack, w, op);
    ggml_free(g);
    return b;
}

/* Copies one matrix's bytes into every tensor of a list (a repacking
 * buffer rearranges them as it stores them). For 3-D expert tensors the
 * matrix is repeated n_expert times first. */
static bool store(struct ggml_tensor **ts, int n, const void *matrix, size_t bytes, int64_t n_expert) {
    const size_t total = bytes * (size_t)(n_expert ? n_expert : 1);
    char *stage = (char *)matrix;
    if (n_expert) {
        stage = malloc(total);
        if (!stage) return false;
#pragma omp parallel for schedule(static)
        for (int64_t e = 0; e < n_expert; e++) memcpy(stage + (size_t)e * bytes, matrix, bytes);
    }
    for (int i = 0; i < n; i++) ggml_backend_tensor_set(ts[i], stage, 0, total);
    if (n_expert) free(stage);
    return true;
}

/* A set of weight tensors of one kind (gate, up or down) over the
 * rotation, in the buffer type chosen for them. */
typedef struct wset {
    struct ggml_context *g;
    ggml_backend_buffer_t buf;
    struct ggml_tensor **t;
    const char *buft;
} wset;

static bool wset_make(wset *s, const ctx *c, bool repack, int n, enum ggml_type t, int64_t cols, int64_t rows,
                      int64_t n_expert, uint64_t seed) {
    memset(s, 0, sizeof *s);
    struct ggml_init_params ip = {(size_t)(n + 1) * ggml_tensor_overhead(), NULL, true};
    s->g = ggml_init(ip);
    s->t = calloc((size_t)n, sizeof *s->t);
    if (!s->g || !s->t) return false;
    for (int i = 0; i < n; i++)
        s->t[i] = n_expert ? ggml_new_tensor_3d(s->g, t, cols, rows, n_expert) : ggml_new_tensor_2d(s->g, t, cols, rows);
    ggml_backend_buffer_type_t b = weight_buft(c, repack, t, cols, rows, n_expert);
    s->buft = ggml_backend_buft_name(b);
    s->buf = ggml_backend_alloc_ctx_tensors_from_buft(s->g, b);
    if (!s->buf) return false;
    const size_t bytes = matrix_bytes(t, rows, cols);
    void *m = malloc(bytes);
    if (!m) return false;
    make_matrix(m, t, rows, cols, seed);
    const bool ok = store(s->t, n, m, bytes, n_expert);
    free(m);
    return ok;
}

static void wset_free(wset *s) {
    if (s->buf) ggml_backend_buffer_free(s->buf);
    if (s->g) ggml_free(s->g);
    free(s->t);
    memset(s, 0, sizeof *s);
}

/* An f32 or i32 input tensor of its own, allocated on the CPU. */
typedef struct input {
    struct ggml_context *g;
    ggml_backend_buffer_t buf;
    struct ggml_tensor *x, *ids, *w;
} input;

static bool input_make(input *in, int64_t hidden, int64_t max_tokens, int64_t top_k) {
    struct ggml_init_params ip = {4 * ggml_tensor_overhead(), NULL, true};
    in->g = ggml_init(ip);
    in->x = ggml_new_tensor_2d(in->g, GGML_TYPE_F32, hidden, max_tokens);
    in->ids = top_k ? ggml_new_tensor_2d(in->g, GGML_TYPE_I32, top_k, max_tokens) : NULL;
    in->w = top_k ? ggml_new_tensor_3d(in->g, GGML_TYPE_F32, 1, top_k, max_tokens) : NULL;
    in->buf = ggml_backend_alloc_ctx_tensors_from_buft(in->g, ggml_backend_cpu_buffer_type());
    if (!in->buf) return false;
    const size_t n = (size_t)(hidden * max_tokens);
    float *x = malloc(n * sizeof *x);
    if (!x) return false;
    uint64_t s = 7;
    for (size_t i = 0; i < n; i++) x[i] = next_value(&s);
    ggml_backend_tensor_set(in->x, x, 0, n * sizeof *x);
    free(x);
    return true;
}

static void input_free(input *in) {
    if (in->buf) ggml_backend_buffer_free(in->buf);
    if (in->g) ggml_free(in->g);
    memset(in, 0, sizeof *in);
}

/* Graphs of one token count, their intermediates allocated once. */
typedef struct graphs {
    struct ggml_context *g;
    struct ggml_cgraph **gf;
    ggml_gallocr_t alloc;
    int n;
} graphs;

static void graphs_free(graphs *gs) {
    if (gs->alloc) ggml_gallocr_free(gs->alloc);
    if (gs->g) ggml_free(gs->g);
    free(gs->gf);
    memset(gs, 0, sizeof *gs);
}

/* Allocates every graph's intermediates in one buffer reserved for the
 * first (all have the same shapes, so none grows it and none moves). */
static bool graphs_alloc(graphs *gs) {
    gs->alloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    if (!gs->alloc || !ggml_gallocr_reserve(gs->alloc, gs->gf[0])) return false;
    const size_t size = ggml_gallocr_get_buffer_size(gs->alloc, 0);
    for (int i = 0; i < gs->n; i++)
        if (!ggml_gallocr_alloc_graph(gs->alloc, gs->gf[i])) return false;
    return ggml_gallocr_get_buffer_size(gs->alloc, 0) == size;
}

static void compute(const ctx *c, struct ggml_cgraph *gf) {
    if (ggml_backend_graph_compute(c->backend, gf) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "ggml_moe: graph compute failed\n");
        exit(1);
    }
}

/* ---- one expert ------------------------------------------------------------ */

static void bench_expert(const opts *o, const ctx *c, const shape *s, wtype want, double dram) {
    const wtype w = fit_shape(want, s);
    char name[48], asked[48];
    wtype_name(w, name, sizeof name), wtype_name(want, asked, sizeof asked);
    const size_t wbytes = expert_bytes(w, s);
    int n_rot = (int)(o->rotate_bytes / wbytes + 1);
    if (n_rot < 2) n_rot = 2;
    wset gate, up, down;
    int max_m = 0;
    for (int i = 0; i < o->n_ms; i++) max_m = o->ms[i] > max_m ? o->ms[i] : max_m;
    input in = {0};
    if (!wset_make(&gate, c, o->repack, n_rot, w.gu, s->hidden, s->inter, 0, 1) ||
        !wset_make(&up, c, o->repack, n_rot, w.gu, s->hidden, s->inter, 0, 2) ||
        !wset_make(&down, c, o->repack, n_rot, w.down, s->inter, s->hidden, 0, 3) || !input_make(&in, s->hidden, max_m, 0)) {
        fprintf(stderr, "ggml_moe: cannot make %d %s experts %ldx%ld\n", n_rot, name, (long)s->hidden, (long)s->inter);
        exit(1);
    }
    char path[96];
    snprintf(path, sizeof path, "ggml %s / down %s", gate.buft, down.buft);
    for (int mi = 0; mi < o->n_ms; mi++) {
        const int m = o->ms[mi];
        const int n = m >= 128 ? 2 : n_rot; /* compute-bound cases need no long rotation */
        graphs gs = {0};
        struct ggml_init_params ip = {(size_t)n * (16 * ggml_tensor_overhead() + ggml_graph_overhead_custom(16, false)),
                                      NULL, true};
        gs.g = ggml_init(ip);
        gs.gf = calloc((size_t)n, sizeof *gs.gf);
        gs.n = n;
        for (int e = 0; e < n; e++) {
            struct ggml_tensor *x = ggml_view_2d(gs.g, in.x, s->hidden, m, in.x->nb[1], 0);
            struct ggml_tensor *h = ggml_swiglu_split(gs.g, ggml_mul_mat(gs.g, gate.t[e], x), ggml_mul_mat(gs.g, up.t[e], x));
            gs.gf[e] = ggml_new_graph_custom(gs.g, 16, false);
            ggml_build_forward_expand(gs.gf[e], ggml_mul_mat(gs.g, down.t[e], h));
        }
        if (!graphs_alloc(&gs)) {
            fprintf(stderr, "ggml_moe: cannot allocate the graphs of m = %d\n", m);
            exit(1);
        }
        double best = 1e30;
        for (int r = -1; r < o->reps; r++) {
            double t = 0;
            for (int e = 0; e < n; e++) {
                const double t0 = now();
                compute(c, gs.gf[e]);
                t += now() - t0;
            }
            if (r >= 0 && t / n < best) best = t / n;
        }
        graphs_free(&gs);
        const double gflops = 6.0 * m * (double)s->hidden * (double)s->inter / best / 1e9;
        const double gbps = (double)wbytes / best / 1e9;
        if (o->json)
            printf("{\"bench\":\"cpu\",\"peer\":\"%s\",\"model\":\"%s\",\"shape\":\"%ldx%ld\",\"dtype\":\"%s\","
                   "\"requested\":\"%s\",\"gate_dtype\":\"%s\",\"down_dtype\":\"%s\",\"m\":%d,\"threads\":%d,"
                   "\"path\":\"%s\",\"weight_bytes\":%zu,\"bits_per_weight\":%.4f,\"us_per_expert\":%.1f,"
                   "\"weight_gbps\":%.2f,\"gflops\":%.1f,\"dram_read_gbps\":%.2f,\"ratio_to_dram\":%.3f,\"pool\":%d}\n",
                   c->peer, s->model, (long)s->hidden, (long)s->inter, name, asked, ggml_type_name(w.gu),
                   ggml_type_name(w.down), m, o->threads, path, wbytes,
                   8.0 * (double)wbytes / (3.0 * (double)s->hidden * (double)s->inter), best * 1e6, gbps, gflops, dram,
                   gbps / dram, n);
        else
            printf("%-17s %5ldx%-5ld %-13s %4d  %10.1f %8.2f %8.1f %7.3f  %s\n", s->model, (long)s->hidden,
                   (long)s->inter, name, m, best * 1e6, gbps, gflops, gbps / dram, path);
        fflush(stdout);
    }
    wset_free(&gate), wset_free(&up), wset_free(&down), input_free(&in);
}

/* ---- a whole layer (mul_mat_id over 3-D expert tensors) ------------------------ */

static void bench_layer(const opts *o, const ctx *c, wtype want, double dram) {
    const shape sh = {"deepseek-v2-lite", 2048, 1408};
    const int64_t E = 64, K = 6, H = sh.hidden, I = sh.inter;
    const wtype w = fit_shape(want, &sh);
    char name[48];
    wtype_name(w, name, sizeof name);
    const size_t per_expert = expert_bytes(w, &sh), layer_bytes = per_expert * (size_t)E;
    const int L = (int)(o->rotate_bytes / layer_bytes + 1);
    int max_n = 0;
    for (int i = 0; i < o->n_layer_tokens; i++) max_n = o->layer_tokens[i] > max_n ? o->layer_tokens[i] : max_n;
    wset gate, up, down;
    input in = {0};
    if (!wset_make(&gate, c, o->repack, L, w.gu, H, I, E, 1) || !wset_make(&up, c, o->repack, L, w.gu, H, I, E, 2) ||
        !wset_make(&down, c, o->repack, L, w.down, I, H, E, 3) || !input_make(&in, H, max_n, K)) {
        fprintf(stderr, "ggml_moe: cannot make %d layers of %s experts\n", L, name);
        exit(1);
    }
    char path[96];
    snprintf(path, sizeof path, "ggml %s / down %s", gate.buft, down.buft);
    uint64_t rng = 99;
    for (int c_ = 0; c_ < o->n_layer_tokens; c_++) {
        const int n = o->layer_tokens[c_];
        graphs gs = {0};
        struct ggml_init_params ip = {(size_t)L * ((size_t)(32 + 2 * K) * ggml_tensor_overhead() +
                                                   ggml_graph_overhead_custom((size_t)(32 + 2 * K), false)),
                                      NULL, true};
        gs.g = ggml_init(ip);
        gs.gf = calloc((size_t)L, sizeof *gs.gf);
        gs.n = L;
        for (int l = 0; l < L; l++) {
            struct ggml_context *g = gs.g;
            struct ggml_tensor *x = ggml_reshape_3d(g, ggml_view_2d(g, in.x, H, n, in.x->nb[1], 0), H, 1, n);
            struct ggml_tensor *ids = ggml_view_2d(g, in.ids, K, n, in.ids->nb[1], 0);
            struct ggml_tensor *wts = ggml_view_3d(g, in.w, 1, K, n, in.w->nb[1], in.w->nb[2], 0);
            struct ggml_tensor *u = ggml_mul_mat_id(g, up.t[l], x, ids);   /* [I, K, n] */
            struct ggml_tensor *gt = ggml_mul_mat_id(g, gate.t[l], x, ids); /* [I, K, n] */
            struct ggml_tensor *ex = ggml_mul_mat_id(g, down.t[l], ggml_swiglu_split(g, gt, u), ids); /* [H, K, n] */
            ex = ggml_mul(g, ex, wts);
            gs.gf[l] = ggml_new_graph_custom(g, 32 + 2 * (size_t)K, false);
            ggml_build_forward_expand(gs.gf[l], ex);
            struct ggml_tensor *out = NULL;
            for (int64_t k = 0; k < K; k++) { /* views before adds, as llama.cpp orders them */
                struct ggml_tensor *v = ggml_view_2d(g, ex, H, n, ex->nb[2], (size_t)k * ex->nb[1]);
                ggml_build_forward_expand(gs.gf[l], v);
                out = out ? ggml_add(g, out, v) : v;
                if (k) ggml_build_forward_expand(gs.gf[l], out);
            }
        }
        if (!graphs_alloc(&gs)) {
            fprintf(stderr, "ggml_moe: cannot allocate the layer graphs of %d tokens\n", n);
            exit(1);
        }
        int32_t *ids = malloc((size_t)(n * K) * sizeof *ids);
        float *wts = malloc((size_t)(n * K) * sizeof *wts);
        const int calls = n == 1 ? 4 * L : L;
        double best = 1e30;
        for (int r = -1; r < o->reps; r++) {
            double total = 0;
            for (int i = 0; i < calls; i++) {
                for (int tok = 0; tok < n; tok++) /* uniform routing, distinct ids: given, not timed */
                    for (int64_t j = 0; j < K; j++) {
                        int32_t e;
                        bool dup;
                        do {
                            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                            e = (int32_t)(rng % (uint64_t)E);
                            dup = false;
                            for (int64_t q = 0; q < j; q++) dup |= ids[tok * K + q] == e;
                        } while (dup);
                        ids[tok * K + j] = e, wts[tok * K + j] = 1.0f / (float)K;
                    }
                ggml_backend_tensor_set(in.ids, ids, 0, (size_t)(n * K) * sizeof *ids);
                ggml_backend_tensor_set(in.w, wts, 0, (size_t)(n * K) * sizeof *wts);
                const double t0 = now();
                compute(c, gs.gf[i % L]);
                total += now() - t0;
            }
            if (r >= 0 && total / calls < best) best = total / calls;
        }
        free(ids), free(wts);
        graphs_free(&gs);
        const double flops = (double)n * (double)K * 6.0 * (double)H * (double)I, gflops = flops / best / 1e9;
        const double gbps = (n == 1 ? (double)K : (double)E) * (double)per_expert / best / 1e9;
        if (o->json)
            printf("{\"bench\":\"layer\",\"peer\":\"%s\",\"model\":\"deepseek-v2-lite\",\"dtype\":\"%s\",\"tokens\":%d,"
                   "\"top_k\":%ld,\"threads\":%d,\"path\":\"%s\",\"ms_per_layer\":%.3f,\"weight_gbps\":%.2f,"
                   "\"gflops\":%.1f,\"dram_read_gbps\":%.2f,\"ratio_to_dram\":%.3f}\n",
                   c->peer, name, n, (long)K, o->threads, path, best * 1e3, gbps, gflops, dram,
                   n == 1 ? gbps / dram : 0.0);
        else
            printf("layer deepseek-v2-lite %-13s tokens %3d top-%ld: %8.3f ms  %7.2f GB/s (%.3f of DRAM)  %7.1f GFLOP/s  %s\n",
                   name, n, (long)K, best * 1e3, gbps, n == 1 ? gbps / dram : 0.0, gflops, path);
        fflush(stdout);
    }
    wset_free(&gate), wset_free(&up), wset_free(&down), input_free(&in);
}

/* ---- main ------------------------------------------------------------------- */

/* ggml's warnings and errors to stderr; its info and debug lines (a
 * "repack tensor" line per weight) dropped. */
static void log_quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static size_t l3_bytes(void) {
    long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (v > 0) return (size_t)v;
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    unsigned long k = 0;
    if (f) {
        if (fscanf(f, "%luK", &k) != 1) k = 0;
        fclose(f);
    }
    return (size_t)k << 10;
}

int main(int argc, char **argv) {
    opts o = {.reps = 7, .layer = true, .repack = true};
    enum { O_SHAPE = 1, O_DTYPE, O_M, O_THREADS, O_ROT, O_REPS, O_NOLAYER, O_LTOK, O_NOREPACK, O_JSON };
    static const struct option lo[] = {{"shape", 1, 0, O_SHAPE},       {"dtype", 1, 0, O_DTYPE},
                                       {"m", 1, 0, O_M},               {"threads", 1, 0, O_THREADS},
                                       {"rotate-mb", 1, 0, O_ROT},     {"reps", 1, 0, O_REPS},
                                       {"no-layer", 0, 0, O_NOLAYER},  {"layer-tokens", 1, 0, O_LTOK},
                                       {"no-repack", 0, 0, O_NOREPACK}, {"json", 0, 0, O_JSON},
                                       {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (opt) {
        case O_SHAPE: parse_list(optarg, &o, 's'); break;
        case O_DTYPE: parse_list(optarg, &o, 'd'); break;
        case O_M: parse_list(optarg, &o, 'm'); break;
        case O_THREADS: o.threads = parse_int(optarg, "--threads"); break;
        case O_ROT: o.rotate_bytes = (size_t)parse_int(optarg, "--rotate-mb") << 20; break;
        case O_REPS: o.reps = parse_int(optarg, "--reps"); break;
        case O_NOLAYER: o.layer = false; break;
        case O_LTOK: parse_list(optarg, &o, 'l'); break;
        case O_NOREPACK: o.repack = false; break;
        case O_JSON: o.json = true; break;
        default: die("bad option", "");
        }
    }
    if (optind < argc) die("unexpected argument ", argv[optind]);
    if (!o.n_shapes) {
        memcpy(o.shapes, real_shapes, sizeof real_shapes);
        o.n_shapes = (int)(sizeof real_shapes / sizeof real_shapes[0]);
    }
    if (!o.n_types) {
        const enum ggml_type d[] = {GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_K};
        for (int i = 0; i < 3; i++) o.types[i] = (wtype){d[i], d[i]};
        o.n_types = 3;
    }
    if (!o.n_ms) {
        const int d[] = {1, 2, 4, 8, 32, 128, 512};
        memcpy(o.ms, d, sizeof d), o.n_ms = 7;
    }
    if (!o.n_layer_tokens) o.layer_tokens[0] = 1, o.layer_tokens[1] = 512, o.n_layer_tokens = 2;
    if (!o.threads) o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    /* As moe-bench: rotate over 3x the LLC, and at least 1 GiB. */
    if (!o.rotate_bytes) o.rotate_bytes = 3 * l3_bytes() > (1ull << 30) ? 3 * l3_bytes() : (1ull << 30);

    ggml_log_set(log_quiet, NULL);
    ggml_cpu_init();
    ctx c = {0};
    c.backend = ggml_backend_cpu_init();
    if (!c.backend) die("cannot start ggml's CPU backend", "");
    ggml_backend_cpu_set_n_threads(c.backend, o.threads);
    c.dev = ggml_backend_get_device(c.backend);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(c.dev);
    ggml_backend_dev_get_extra_bufts_t get_extra = NULL;
    void *fn = ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    memcpy(&get_extra, &fn, sizeof fn); /* a function pointer from a void *, as with dlsym */
    c.extra = get_extra ? get_extra(c.dev) : NULL;
    snprintf(c.peer, sizeof c.peer, "ggml %s (%s)", ggml_version(), ggml_commit());
    omp_set_num_threads(o.threads);
    if (!o.json) {
        printf("# %s, CPU backend, %d threads%s; rotating over %zu MB; best of %d; extra buffer types:", c.peer,
               o.threads, o.repack ? "" : ", --no-repack", o.rotate_bytes >> 20, o.reps);
        for (ggml_backend_buffer_type_t *b = c.extra; b && *b; b++) printf(" %s", ggml_backend_buft_name(*b));
        printf("\n%-17s %-11s %-13s %4s  %10s %8s %8s %7s  %s\n", "model", "shape", "type", "m", "us/expert", "GB/s",
               "GFLOP/s", "/dram", "path");
    }
    for (int d = 0; d < o.n_types; d++)
        for (int s = 0; s < o.n_shapes; s++) {
            const double dram = read_bandwidth(o.rotate_bytes, o.threads, 5); /* beside the cases it divides */
            bench_expert(&o, &c, &o.shapes[s], o.types[d], dram);
        }
    if (o.layer)
        for (int d = 0; d < o.n_types; d++) bench_layer(&o, &c, o.types[d], read_bandwidth(o.rotate_bytes, o.threads, 5));
    ggml_backend_free(c.backend);
    return 0;
}
