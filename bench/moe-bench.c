/* moe-bench - benchmarks of moerun's engines (not tests: nothing here
 * passes or fails; it measures and prints).
 *
 *   moe-bench cpu [--shape HxI,...] [--dtype bf16,int8,f32,f16,q4_K,q4_K+q6_K,blocks,...]
 *                 [--m 1,4,512] [--threads N] [--rotate-mb MB] [--reps N] [--no-layer]
 *                 [--layer-tokens 1,512] [--json]
 *                 [--gemv-max-m N] [--amx-max-m N]   (where the kernels hand over)
 *
 * For every shape, dtype and token count m: one expert call through the CPU
 * engine, with weights cold (rotating over more distinct experts than the
 * last-level cache holds), timed as the best of --reps passes. Each case is
 * put in proportion to figures measured in the same run:
 *   ratio_to_dram   = weight bytes read per second / DRAM read bandwidth
 *                     (the decode roofline)
 *   ratio_to_matmul = expert GFLOP/s / one prepacked oneDNN matmul of the
 *                     same FLOPs (M = m, K = hidden, N = 3 * inter), warm
 *                     (the prefill roofline; int8 for the block formats,
 *                     whose kernels multiply int8 codes)
 * Then a whole DeepSeek-V2-Lite layer (64 experts of 2048x1408, top-6)
 * through the public moe_layer_forward(): decode of 1 token and prefill of
 * 512. Run with OMP_WAIT_POLICY=active (make bench does).
 *
 * GGUF's block formats (q4_0 .. mxfp4, `blocks` for all 13) take the same
 * cases; `A+B` puts gate and up in A and down in B (q4_K+q6_K is llama.cpp's
 * Q4_K_M layout). A matrix whose rows are not whole blocks of its format
 * falls back as llama.cpp's quantizer does (q4_K -> q5_0, q5_K -> q5_1,
 * q6_K -> q8_0, q2_K/q3_K -> q4_0, iq4_xs -> iq4_nl, else f16), and the
 * case is named by what ran (DeepSeek's 1408-wide down in q4_K is
 * q4_K+q5_0). Block weights are random f32 rows quantized once with
 * moe_quantize() and copied across the rotation: their values do not
 * change the timing, only that they are valid blocks read cold. Each case
 * names the kernels it ran (moe_cpu_path, moe_cpu_kernel_name).
 *
 *   moe-bench profile [--shape HxI] [--dtype bf16] [--m 1,8,32] [--threads N]
 *
 * How well a quick profile predicts the engine: measures a profile curve
 * at the --m points, then times the engine again at those points and at
 * the midpoints between them (interpolated), and prints predicted/measured
 * for each, with the samples' spread. */
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine.h"
#include "membw.h"
#include "profile.h"
#include "profiler.h"

typedef struct shape {
    const char *model;
    uint32_t hidden, inter;
} shape;

/* The routed-expert shapes of ../shared/models/ (Qwen1.5-MoE has
 * DeepSeek-V2-Lite's shape and is measured once). */
static const shape real_shapes[] = {
    {"deepseek-v2-lite", 2048, 1408}, {"qwen3-30b-a3b", 2048, 768}, {"olmoe", 2048, 1024},
    {"qwen2-57b-a14b", 3584, 2560},   {"mixtral-8x7b", 4096, 14336},
};

/* Weight dtypes of one case: gate and up in `gu`, down in `down`. */
typedef struct wtype {
    moe_dtype gu, down;
} wtype;

enum { MAX_DTYPES = 32 };

typedef struct opts {
    shape shapes[16];
    uint32_t n_shapes;
    wtype dtypes[MAX_DTYPES];
    uint32_t n_dtypes;
    uint32_t ms[16];
    uint32_t n_ms;
    uint32_t layer_tokens[8]; /* the layer's cases: 1 (decode) and 512 (prefill) */
    uint32_t n_layer_tokens;
    uint32_t threads, gemv_max_m, amx_max_m;
    size_t rotate_bytes;
    int reps;
    bool json, layer;
} opts;

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "moe-bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: moe-bench cpu [--shape HxI,...] [--dtype bf16,int8,f32,f16,q4_K,q4_K+q6_K,blocks,...] [--m 1,4,512] "
                    "[--threads N] [--rotate-mb MB] [--reps N] [--no-layer] [--layer-tokens 1,512] [--json]\n"
                    "                     [--gemv-max-m N] [--amx-max-m N]\n"
                    "       moe-bench profile [--shape HxI] [--dtype T] [--m 1,8,32] [--threads N] [--json]\n");
    exit(2);
}

static uint32_t parse_u32(const char *s, const char *what) {
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end || v == 0 || v > (1ul << 20)) die("bad %s", what);
    return (uint32_t)v;
}

/* A dtype by the name moe_dtype_name() gives it, in any case (Q4_K or q4_K). */
static moe_dtype dtype_named(const char *name) {
    for (int k = 0; k < MOE_DTYPE_COUNT_; k++)
        if ((moe_dtype_size((moe_dtype)k) || moe_dtype_is_block((moe_dtype)k)) &&
            !strcasecmp(name, moe_dtype_name((moe_dtype)k)))
            return (moe_dtype)k;
    return MOE_DTYPE_COUNT_;
}

static void parse_list(char *arg, opts *o, char which) {
    for (char *tok = strtok(arg, ","); tok; tok = strtok(NULL, ",")) {
        if (which == 's') {
            if (o->n_shapes == 16) die("too many shapes: %s", tok);
            unsigned h, i;
            char tail;
            if (sscanf(tok, "%ux%u%c", &h, &i, &tail) != 2 || !h || !i || h > (1u << 16) || i > (1u << 16))
                die("--shape wants HIDDENxINTER, got '%s'", tok);
            const char *name = "custom";
            for (size_t k = 0; k < sizeof real_shapes / sizeof real_shapes[0]; k++)
                if (real_shapes[k].hidden == h && real_shapes[k].inter == i) name = real_shapes[k].model;
            o->shapes[o->n_shapes++] = (shape){name, h, i};
        } else if (which == 'd') {
            if (!strcmp(tok, "blocks")) { /* every block format */
                for (int k = 0; k < MOE_DTYPE_COUNT_; k++)
                    if (moe_dtype_is_block((moe_dtype)k)) {
                        if (o->n_dtypes == MAX_DTYPES) die("too many --dtype values at '%s'", tok);
                        o->dtypes[o->n_dtypes++] = (wtype){(moe_dtype)k, (moe_dtype)k};
                    }
                continue;
            }
            char *plus = strchr(tok, '+');
            if (plus) *plus = '\0';
            const moe_dtype gu = dtype_named(tok), down = plus ? dtype_named(plus + 1) : gu;
            if (gu == MOE_DTYPE_COUNT_ || down == MOE_DTYPE_COUNT_)
                die("--dtype: unknown '%s' (f32, bf16, f16, int8, a block format such as q4_K or q8_0, "
                    "gate/up+down such as q4_K+q6_K, or blocks)", gu == MOE_DTYPE_COUNT_ ? tok : plus + 1);
            if (o->n_dtypes == MAX_DTYPES) die("too many --dtype values at '%s'", tok);
            o->dtypes[o->n_dtypes++] = (wtype){gu, down};
        } else if (which == 'l') {
            if (o->n_layer_tokens == 8) die("too many --layer-tokens values: %s", tok);
            o->layer_tokens[o->n_layer_tokens++] = parse_u32(tok, "--layer-tokens");
        } else {
            if (o->n_ms == 16) die("too many --m values: %s", tok);
            o->ms[o->n_ms++] = parse_u32(tok, "--m");
        }
    }
}

/* ---- weights ----------------------------------------------------------- */

/* What llama.cpp's quantizer does with a row of `cols` that is not a whole
 * number of t's blocks (llama-quant.cpp, tensor_type_fallback): the k-quants
 * and iq4_xs take a 32-block format, and what still does not fit is f16. */
static moe_dtype fit_rows(moe_dtype t, uint32_t cols) {
    if (moe_dtype_row_bytes(t, cols)) return t;
    moe_dtype r;
    switch (t) {
    case MOE_DTYPE_Q2_K: case MOE_DTYPE_Q3_K: r = MOE_DTYPE_Q4_0; break;
    case MOE_DTYPE_Q4_K: r = MOE_DTYPE_Q5_0; break;
    case MOE_DTYPE_Q5_K: r = MOE_DTYPE_Q5_1; break;
    case MOE_DTYPE_Q6_K: r = MOE_DTYPE_Q8_0; break;
    case MOE_DTYPE_IQ4_XS: r = MOE_DTYPE_IQ4_NL; break;
    default: r = t; break;
    }
    return moe_dtype_row_bytes(r, cols) ? r : MOE_DTYPE_F16;
}

/* The dtypes a case of this shape runs in: each matrix's rows (hidden for
 * gate and up, inter for down) fitted to its format. */
static wtype fit_shape(wtype w, uint32_t hidden, uint32_t inter) {
    return (wtype){fit_rows(w.gu, hidden), fit_rows(w.down, inter)};
}

/* "q4_K", or "q4_K+q6_K" when down has a dtype of its own. */
static const char *wtype_name(wtype w, char *buf, size_t n) {
    if (w.gu == w.down) snprintf(buf, n, "%s", moe_dtype_name(w.gu));
    else snprintf(buf, n, "%s+%s", moe_dtype_name(w.gu), moe_dtype_name(w.down));
    return buf;
}

/* Bytes of one expert's three matrices. */
static size_t expert_bytes(wtype w, uint32_t H, uint32_t I) {
    return 2 * moe_matrix_bytes(w.gu, I, H) + moe_matrix_bytes(w.down, H, I);
}

typedef struct rotation {
    moe_expert_view *v;
    uint32_t n;
    void *mem;
    float *scales;
} rotation;

/* Small pseudo-random value i of a stream (xorshift). */
static float next_value(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return ((float)(*s >> 40) / (float)(1ull << 24) - 0.5f) * 0.1f;
}

/* Fills with small pseudo-random values quickly (xorshift per thread). */
static void fill(void *p, size_t bytes, moe_dtype t, uint64_t seed) {
    const size_t esz = moe_dtype_size(t), n = bytes / esz;
#pragma omp parallel
    {
        uint64_t s = seed * 0x9E3779B97F4A7C15ull + (uint64_t)(uint32_t)omp_get_thread_num() * 0xBF58476D1CE4E5B9ull + 1;
#pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            const float v = next_value(&s);
            switch (t) {
            case MOE_DTYPE_F32: ((float *)p)[i] = v; break;
            case MOE_DTYPE_BF16: ((uint16_t *)p)[i] = moe_f32_to_bf16(v); break;
            case MOE_DTYPE_F16: ((uint16_t *)p)[i] = moe_f32_to_f16(v); break;
            default: ((int8_t *)p)[i] = (int8_t)(s >> 56); break;
            }
        }
    }
}

/* One matrix of `rows` rows of `cols` in block format t: random f32 rows
 * quantized with moe_quantize(), rows in parallel. */
static bool quantize_matrix(void *dst, moe_dtype t, uint32_t rows, uint32_t cols, uint64_t seed) {
    const size_t rb = moe_dtype_row_bytes(t, cols);
    bool ok = true;
#pragma omp parallel reduction(&& : ok)
    {
        float *x = malloc((size_t)cols * sizeof *x);
        ok = x != NULL;
#pragma omp for schedule(dynamic, 16)
        for (uint32_t r = 0; r < rows; r++) {
            if (!x) continue;
            uint64_t s = (seed + r) * 0x9E3779B97F4A7C15ull + 1;
            for (uint32_t i = 0; i < cols; i++) x[i] = next_value(&s);
            if (moe_quantize(t, x, (char *)dst + (size_t)r * rb, cols) != MOE_OK) ok = false;
        }
        free(x);
    }
    return ok;
}

/* Enough distinct experts of this shape to exceed `bytes`, and at least
 * `min_n` (and 2).
 * Element dtypes are filled everywhere; a block-format matrix is quantized
 * once, in the first expert, and copied to the others (quantizing a GB of
 * k-quants takes minutes; the copies are as cold as distinct values). */
static bool rotation_make(rotation *r, uint32_t H, uint32_t I, wtype w, size_t bytes, uint32_t min_n) {
    const size_t mg = moe_matrix_bytes(w.gu, I, H), md = moe_matrix_bytes(w.down, H, I);
    const size_t per = (2 * mg + md + 63) & ~(size_t)63;
    r->n = (uint32_t)(bytes / per + 1);
    if (r->n < min_n) r->n = min_n;
    if (r->n < 2) r->n = 2;
    r->mem = aligned_alloc(64, r->n * per);
    r->v = calloc(r->n, sizeof *r->v);
    r->scales = malloc((2 * (size_t)I + H) * sizeof(float));
    if (!r->mem || !r->v || !r->scales || !mg || !md) return false;
    for (size_t i = 0; i < 2 * (size_t)I + H; i++) r->scales[i] = 1.0f / 1024.0f;
    const size_t off[3] = {0, mg, 2 * mg}, sz[3] = {mg, mg, md};
    const moe_dtype dt[3] = {w.gu, w.gu, w.down};
    const uint32_t rows[3] = {I, I, H}, cols[3] = {H, H, I};
    char *base = r->mem;
    for (int k = 0; k < 3; k++) {
        if (!moe_dtype_is_block(dt[k])) {
            for (uint32_t e = 0; e < r->n; e++) fill(base + e * per + off[k], sz[k], dt[k], 42 + 3 * (uint64_t)e + (uint64_t)k);
            continue;
        }
        if (!quantize_matrix(base + off[k], dt[k], rows[k], cols[k], 42 + (uint64_t)k * 1000003u)) return false;
#pragma omp parallel for schedule(static)
        for (uint32_t e = 1; e < r->n; e++) memcpy(base + e * per + off[k], base + off[k], sz[k]);
    }
    for (uint32_t e = 0; e < r->n; e++) {
        char *b = base + e * per;
        r->v[e] = (moe_expert_view){b, b + mg, b + 2 * mg, w.gu, H, I, r->scales, r->scales + I, r->scales + 2 * I,
                                    w.down != w.gu, w.down};
    }
    return true;
}

static void rotation_free(rotation *r) {
    free(r->mem), free(r->v), free(r->scales);
    memset(r, 0, sizeof *r);
}

/* The dtype of the prefill roofline's matmul: the block formats multiply
 * int8 codes with int8 activations, so theirs is the int8 matmul. */
static moe_dtype matmul_dtype(moe_dtype t) { return moe_dtype_is_block(t) ? MOE_DTYPE_I8 : t; }

/* What ran a group of m tokens: "gemv avx512_bf16", "own amx_bf16", "onednn
 * brg:...", and with down in a dtype of its own "gemv c / down gemv c"
 * (such experts stay on the GEMV kernels at every m: engine.c's mixed()). */
static void path_name(moe_cpu *cpu, const shape *s, wtype w, uint32_t m, char *buf, size_t n) {
    if (w.gu != w.down) {
        snprintf(buf, n, "gemv %s / down gemv %s", moe_cpu_kernel_name(cpu, w.gu), moe_cpu_kernel_name(cpu, w.down));
        return;
    }
    const char *how = moe_cpu_path(cpu, s->hidden, s->inter, w.gu, m);
    if (!strcmp(how, "onednn"))
        snprintf(buf, n, "onednn %s", moe_cpu_dnnl_impl(cpu, s->hidden, s->inter, w.gu, m));
    else
        snprintf(buf, n, "%s %s", strncmp(how, "amx", 3) ? "gemv" : "own", how);
}

/* ---- the prefill roofline: one prepacked oneDNN matmul ------------------ */

static double matmul_gflops(moe_dtype t, uint32_t M, uint32_t K, uint32_t N, int reps) {
    if (t == MOE_DTYPE_F16) return 0.0;
    dnnl_engine_t eng;
    dnnl_stream_t st;
    dnnl_engine_create(&eng, dnnl_cpu, 0);
    dnnl_stream_create(&st, eng, dnnl_stream_default_flags);
    const dnnl_data_type_t wt = t == MOE_DTYPE_F32 ? dnnl_f32 : t == MOE_DTYPE_BF16 ? dnnl_bf16 : dnnl_s8;
    const dnnl_data_type_t at = t == MOE_DTYPE_I8 ? dnnl_u8 : wt;
    dnnl_memory_desc_t sd, wd, wany, dd;
    dnnl_dims_t s_dims = {M, K}, w_dims = {K, N}, d_dims = {M, N};
    dnnl_memory_desc_init_by_tag(&sd, 2, s_dims, at, dnnl_ab);
    dnnl_memory_desc_init_by_tag(&wd, 2, w_dims, wt, dnnl_ab);
    dnnl_memory_desc_init_by_tag(&wany, 2, w_dims, wt, dnnl_format_tag_any);
    dnnl_memory_desc_init_by_tag(&dd, 2, d_dims, dnnl_f32, dnnl_ab);
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd;
    double best = 0.0;
    if (dnnl_matmul_desc_init(&md, &sd, &wany, NULL, &dd) != dnnl_success ||
        dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL) != dnnl_success)
        goto out;
    const dnnl_memory_desc_t *packed = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_memory_t ms, mw, mp, mdst;
    dnnl_memory_create(&ms, &sd, eng, DNNL_MEMORY_ALLOCATE);
    dnnl_memory_create(&mw, &wd, eng, DNNL_MEMORY_ALLOCATE);
    dnnl_memory_create(&mp, packed, eng, DNNL_MEMORY_ALLOCATE);
    dnnl_memory_create(&mdst, &dd, eng, DNNL_MEMORY_ALLOCATE);
    void *p;
    dnnl_memory_get_data_handle(ms, &p);
    fill(p, dnnl_memory_desc_get_size(&sd), t == MOE_DTYPE_I8 ? MOE_DTYPE_I8 : t, 1);
    dnnl_memory_get_data_handle(mw, &p);
    fill(p, dnnl_memory_desc_get_size(&wd), t, 2);
    dnnl_primitive_desc_t rpd;
    dnnl_primitive_t reorder, mm;
    dnnl_reorder_primitive_desc_create(&rpd, &wd, eng, packed, eng, NULL);
    dnnl_primitive_create(&reorder, rpd);
    dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, mw}, {DNNL_ARG_TO, mp}};
    dnnl_primitive_execute(reorder, st, 2, rargs);
    dnnl_primitive_create(&mm, pd);
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mp}, {DNNL_ARG_DST, mdst}};
    for (int r = -1; r < reps; r++) {
        double t0 = moe_now();
        dnnl_primitive_execute(mm, st, 3, args);
        dnnl_stream_wait(st);
        double g = 2.0 * M * K * N / (moe_now() - t0) / 1e9;
        if (r >= 0 && g > best) best = g;
    }
    dnnl_primitive_destroy(mm), dnnl_primitive_destroy(reorder), dnnl_primitive_desc_destroy(rpd);
    dnnl_memory_destroy(ms), dnnl_memory_destroy(mw), dnnl_memory_destroy(mp), dnnl_memory_destroy(mdst);
    dnnl_primitive_desc_destroy(pd);
out:
    dnnl_stream_destroy(st);
    dnnl_engine_destroy(eng);
    return best;
}

/* ---- expert cases --------------------------------------------------------- */

static void bench_expert(const opts *o, moe_cpu *cpu, const shape *s, wtype want, double dram) {
    const wtype w = fit_shape(want, s->hidden, s->inter);
    char name[48], asked[48];
    wtype_name(w, name, sizeof name), wtype_name(want, asked, sizeof asked);
    rotation rot;
    if (!rotation_make(&rot, s->hidden, s->inter, w, o->rotate_bytes, 2)) {
        fprintf(stderr, "moe-bench: cannot make %zu MB of %s experts %ux%u\n", o->rotate_bytes >> 20, name, s->hidden,
                s->inter);
        rotation_free(&rot);
        return;
    }
    moe_cpu_prepare(cpu, s->hidden, s->inter, w.gu);
    const double wbytes = (double)expert_bytes(w, s->hidden, s->inter);
    const moe_dtype mmt = matmul_dtype(w.gu);
    uint32_t max_m = 0;
    for (uint32_t i = 0; i < o->n_ms; i++) max_m = o->ms[i] > max_m ? o->ms[i] : max_m;
    const size_t act = (size_t)max_m * s->hidden;
    float *x = malloc(act * sizeof *x), *y = malloc(act * sizeof *y);
    fill(x, act * sizeof *x, MOE_DTYPE_F32, 7);
    for (uint32_t mi = 0; mi < o->n_ms; mi++) {
        const uint32_t m = o->ms[mi];
        /* Compute-bound cases need no long rotation to be honest. */
        const uint32_t n_rot = m >= 128 && rot.n > 2 ? 2 : rot.n;
        double best = 1e30;
        for (int r = -1; r < o->reps; r++) {
            double t0 = moe_now();
            for (uint32_t e = 0; e < n_rot; e++) {
                moe_cpu_task task = {rot.v[e], 0, m, x, y};
                if (moe_cpu_run(cpu, &task, 1) != MOE_OK) {
                    fprintf(stderr, "moe-bench: %s\n", moe_last_error());
                    exit(1);
                }
            }
            double per = (moe_now() - t0) / n_rot;
            if (r >= 0 && per < best) best = per;
        }
        const double gflops = 6.0 * m * s->hidden * s->inter / best / 1e9, gbps = wbytes / best / 1e9;
        const double mm = m >= 32 ? matmul_gflops(mmt, m, s->hidden, 3 * s->inter, o->reps) : 0.0;
        char path[160];
        path_name(cpu, s, w, m, path, sizeof path);
        if (o->json)
            printf("{\"bench\":\"cpu\",\"model\":\"%s\",\"shape\":\"%ux%u\",\"dtype\":\"%s\",\"requested\":\"%s\","
                   "\"gate_dtype\":\"%s\",\"down_dtype\":\"%s\",\"m\":%u,\"threads\":%u,\"path\":\"%s\","
                   "\"kernel\":\"%s\",\"down_kernel\":\"%s\",\"weight_bytes\":%.0f,\"bits_per_weight\":%.4f,"
                   "\"us_per_expert\":%.1f,\"weight_gbps\":%.2f,\"gflops\":%.1f,"
                   "\"dram_read_gbps\":%.2f,\"ratio_to_dram\":%.3f,\"matmul_dtype\":\"%s\",\"matmul_gflops\":%.1f,"
                   "\"ratio_to_matmul\":%.3f}\n",
                   s->model, s->hidden, s->inter, name, asked, moe_dtype_name(w.gu), moe_dtype_name(w.down), m,
                   o->threads, path, moe_cpu_kernel_name(cpu, w.gu), moe_cpu_kernel_name(cpu, w.down), wbytes,
                   8.0 * wbytes / (3.0 * s->hidden * s->inter), best * 1e6, gbps, gflops, dram, gbps / dram,
                   moe_dtype_name(mmt), mm, mm > 0 ? gflops / mm : 0.0);
        else
            printf("%-17s %4ux%-5u %-13s %4u  %10.1f %8.2f %8.1f %7.3f %9.1f %7.3f  %s\n", s->model, s->hidden,
                   s->inter, name, m, best * 1e6, gbps, gflops, gbps / dram, mm, mm > 0 ? gflops / mm : 0.0, path);
        fflush(stdout);
    }
    free(x), free(y);
    rotation_free(&rot);
}

/* ---- a whole layer through the public API -------------------------------- */

static void bench_layer(const opts *o, wtype want, double dram) {
    const uint32_t E = 64, H = 2048, I = 1408, K = 6;
    const wtype wt = fit_shape(want, H, I);
    const moe_dtype t = wt.gu;
    char name[48];
    wtype_name(wt, name, sizeof name);
    const size_t per_expert = expert_bytes(wt, H, I), layer_bytes = per_expert * E;
    const uint32_t L = (uint32_t)(o->rotate_bytes / layer_bytes + 1);
    rotation rot;
    if (!rotation_make(&rot, H, I, wt, 0, L * E)) {
        fprintf(stderr, "moe-bench: cannot make the layer's %s experts\n", name);
        rotation_free(&rot);
        return;
    }
    moe_model_t *model = NULL;
    moe_model_create(&model, L);
    moe_layer_desc d = moe_layer_desc_init(E, H, I, t);
    for (uint32_t l = 0; l < L; l++) {
        moe_model_set_layer(model, l, &d);
        if (wt.down != wt.gu && moe_model_set_down_dtype(model, l, wt.down) != MOE_OK) {
            fprintf(stderr, "moe-bench: %s\n", moe_last_error());
            exit(1);
        }
        for (uint32_t e = 0; e < E; e++) {
            const moe_expert_view *v = &rot.v[l * E + e];
            moe_expert_weights w = {v->gate, v->up, v->down, v->gate_scale, v->up_scale, v->down_scale};
            moe_model_set_expert(model, l, e, &w);
        }
    }
    moe_runtime_params p = moe_runtime_default_params();
    p.n_threads = o->threads;
    moe_runtime_t *rt = NULL;
    if (moe_runtime_create(&rt, model, &p) != MOE_OK) {
        fprintf(stderr, "moe-bench: %s\n", moe_last_error());
        exit(1);
    }
    moe_rng rng = {99};
    for (uint32_t c = 0; c < o->n_layer_tokens; c++) {
        const uint32_t n = o->layer_tokens[c];
        float *x = malloc((size_t)n * H * sizeof *x), *y = malloc((size_t)n * H * sizeof *y);
        float *w = malloc((size_t)n * K * sizeof *w);
        int32_t *ids = malloc((size_t)n * K * sizeof *ids);
        fill(x, (size_t)n * H * sizeof *x, MOE_DTYPE_F32, 3);
        const int calls = n == 1 ? 4 * (int)L : (int)L;
        double best = 1e30;
        for (int r = -1; r < o->reps; r++) {
            double total = 0;
            for (int i = 0; i < calls; i++) {
                for (uint32_t tok = 0; tok < n; tok++) /* uniform routing, distinct ids */
                    for (uint32_t j = 0; j < K; j++) {
                        int32_t e;
                        bool dup;
                        do {
                            e = (int32_t)moe_rng_below(&rng, E);
                            dup = false;
                            for (uint32_t q = 0; q < j; q++) dup |= ids[tok * K + q] == e;
                        } while (dup);
                        ids[tok * K + j] = e, w[tok * K + j] = 1.0f / (float)K;
                    }
                double t0 = moe_now();
                moe_layer_forward(rt, (uint32_t)i % L, n, x, K, ids, w, y);
                total += moe_now() - t0;
            }
            if (r >= 0 && total / calls < best) best = total / calls;
        }
        /* Decode reads each routed expert once; prefill is measured
         * against one prepacked matmul with all the layer's FLOPs. */
        const double pairs = (double)n * K, flops = pairs * 6.0 * H * I;
        const uint32_t touched = n == 1 ? K : E;
        const double gbps = touched * (double)per_expert / best / 1e9, gflops = flops / best / 1e9;
        const double mm = n > 1 ? matmul_gflops(matmul_dtype(t), n * K, H, 3 * I, o->reps) : 0.0;
        if (o->json)
            printf("{\"bench\":\"layer\",\"model\":\"deepseek-v2-lite\",\"dtype\":\"%s\",\"tokens\":%u,\"top_k\":%u,"
                   "\"threads\":%u,\"ms_per_layer\":%.3f,\"weight_gbps\":%.2f,\"gflops\":%.1f,\"dram_read_gbps\":%.2f,"
                   "\"ratio_to_dram\":%.3f,\"matmul_dtype\":\"%s\",\"matmul_gflops\":%.1f,\"ratio_to_matmul\":%.3f}\n",
                   name, n, K, o->threads, best * 1e3, gbps, gflops, dram, n == 1 ? gbps / dram : 0.0,
                   moe_dtype_name(matmul_dtype(t)), mm, mm > 0 ? gflops / mm : 0.0);
        else
            printf("layer deepseek-v2-lite %-13s tokens %3u top-%u: %8.3f ms  %7.2f GB/s (%.3f of DRAM)  %7.1f GFLOP/s"
                   " (%.3f of one matmul)\n",
                   name, n, K, best * 1e3, gbps, n == 1 ? gbps / dram : 0.0, gflops,
                   mm > 0 ? gflops / mm : 0.0);
        fflush(stdout);
        free(x), free(y), free(w), free(ids);
    }
    moe_runtime_free(&rt);
    moe_model_free(&model);
    rotation_free(&rot);
}

/* moe-bench profile: predicted / measured at the profiled points and at
 * the midpoints between them, each sampled as the profiler samples. */
static int bench_profile(const opts *o) {
    const shape *sh = &o->shapes[0];
    if (o->dtypes[0].down != o->dtypes[0].gu) die("%s", "moe-bench profile takes one dtype for all three matrices");
    const moe_profile_shape ps = {sh->hidden, sh->inter, o->dtypes[0].gu};
    moe_profile p;
    moe_profile_init(&p);
    const moe_profiler_opts po = {.quick = true, .threads = o->threads, .shapes = &ps, .n_shapes = 1,
                                  .ms = o->ms, .n_ms = o->n_ms, .rotate_bytes = o->rotate_bytes};
    if (moe_profiler_run(&p, &po) != MOE_OK) {
        fprintf(stderr, "moe-bench: %s\n", moe_last_error());
        return 1;
    }
    if (!o->json)
        printf("# %s; profile of %ux%u %s, then the engine again\n%6s %-12s %12s %12s %8s %10s\n",
               moe_build_info(), sh->hidden, sh->inter, moe_dtype_name(ps.dtype), "m", "point", "measured us",
               "predicted us", "sd %", "pred/meas");
    for (uint32_t i = 0; i < o->n_ms; i++)
        for (int mid = 0; mid < 2; mid++) {
            if (mid && (i + 1 == o->n_ms || o->ms[i + 1] - o->ms[i] < 2)) continue;
            const uint32_t m = mid ? (o->ms[i] + o->ms[i + 1]) / 2 : o->ms[i];
            moe_stat s = {0};
            if (moe_profiler_sample_expert(&ps, m, o->threads, 0.02, 2.0, &s) != MOE_OK) {
                fprintf(stderr, "moe-bench: %s\n", moe_last_error());
                moe_profile_clear(&p);
                return 1;
            }
            const double got = moe_stat_mean(&s);
            const double want = moe_profile_cpu_us(&p, ps.hidden, ps.inter, ps.dtype, m, 0);
            const char *kind = mid ? "interpolated" : "profiled";
            if (o->json)
                printf("{\"bench\":\"profile\",\"hidden\":%u,\"inter\":%u,\"dtype\":\"%s\",\"m\":%u,"
                       "\"point\":\"%s\",\"measured_us\":%.2f,\"predicted_us\":%.2f,\"sd_rel\":%.4f,"
                       "\"ratio\":%.3f}\n",
                       ps.hidden, ps.inter, moe_dtype_name(ps.dtype), m, kind, got, want, moe_stat_sd(&s) / got,
                       want / got);
            else
                printf("%6u %-12s %12.1f %12.1f %8.1f %10.3f\n", m, kind, got, want, 100 * moe_stat_sd(&s) / got,
                       want / got);
            fflush(stdout);
        }
    moe_profile_clear(&p);
    return 0;
}

int main(int argc, char **argv) {
    const bool prof = argc >= 2 && !strcmp(argv[1], "profile");
    if (argc < 2 || (strcmp(argv[1], "cpu") != 0 && !prof))
        die("%s", argc < 2 ? "which benchmark? (cpu, profile)" : "unknown benchmark");
    opts o = {.reps = 5, .layer = true, .rotate_bytes = 0};
    enum { O_SHAPE = 1, O_DTYPE, O_M, O_THREADS, O_ROT, O_REPS, O_NOLAYER, O_JSON, O_GEMV, O_AMX, O_LTOK };
    static const struct option lo[] = {{"shape", 1, 0, O_SHAPE},     {"dtype", 1, 0, O_DTYPE},
                                       {"m", 1, 0, O_M},             {"threads", 1, 0, O_THREADS},
                                       {"rotate-mb", 1, 0, O_ROT},   {"reps", 1, 0, O_REPS},
                                       {"no-layer", 0, 0, O_NOLAYER}, {"json", 0, 0, O_JSON},
                                       {"gemv-max-m", 1, 0, O_GEMV},  {"amx-max-m", 1, 0, O_AMX},
                                       {"layer-tokens", 1, 0, O_LTOK},
                                       {0, 0, 0, 0}};
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_SHAPE: parse_list(optarg, &o, 's'); break;
        case O_DTYPE: parse_list(optarg, &o, 'd'); break;
        case O_M: parse_list(optarg, &o, 'm'); break;
        case O_THREADS: o.threads = parse_u32(optarg, "--threads"); break;
        case O_ROT: o.rotate_bytes = (size_t)parse_u32(optarg, "--rotate-mb") << 20; break;
        case O_REPS: o.reps = (int)parse_u32(optarg, "--reps"); break;
        case O_NOLAYER: o.layer = false; break;
        case O_JSON: o.json = true; break;
        case O_GEMV: o.gemv_max_m = parse_u32(optarg, "--gemv-max-m"); break;
        case O_AMX: o.amx_max_m = parse_u32(optarg, "--amx-max-m"); break;
        case O_LTOK: parse_list(optarg, &o, 'l'); break;
        default: die("%s", "bad option");
        }
    }
    if (optind < argc) die("unexpected argument '%s'", argv[optind]);
    if (prof) {
        if (!o.n_shapes) o.shapes[0] = real_shapes[0], o.n_shapes = 1;
        if (!o.n_dtypes) o.dtypes[0] = (wtype){MOE_DTYPE_BF16, MOE_DTYPE_BF16}, o.n_dtypes = 1;
        if (!o.n_ms) o.ms[0] = 1, o.ms[1] = 8, o.ms[2] = 32, o.n_ms = 3;
    }
    if (!o.n_shapes) memcpy(o.shapes, real_shapes, sizeof real_shapes), o.n_shapes = 5;
    if (!o.n_dtypes) {
        const moe_dtype d[] = {MOE_DTYPE_BF16, MOE_DTYPE_I8, MOE_DTYPE_F32};
        for (uint32_t i = 0; i < 3; i++) o.dtypes[i] = (wtype){d[i], d[i]};
        o.n_dtypes = 3;
    }
    if (!o.n_layer_tokens) o.layer_tokens[0] = 1, o.layer_tokens[1] = 512, o.n_layer_tokens = 2;
    if (!o.n_ms) {
        const uint32_t d[] = {1, 2, 4, 8, 32, 128, 512};
        memcpy(o.ms, d, sizeof d), o.n_ms = 7;
    }
    moe_topology_t *topo = NULL;
    moe_topology_info info = {0};
    if (moe_topology_detect(&topo) == MOE_OK) moe_topology_get_info(topo, &info);
    moe_topology_free(&topo);
    if (!o.threads) o.threads = info.n_cores ? info.n_cores : 1;
    /* Rotate over 3x the LLC, and at least 1 GiB, so decode reads DRAM. */
    if (!o.rotate_bytes) o.rotate_bytes = info.l3_bytes * 3 > (1ull << 30) ? info.l3_bytes * 3 : (1ull << 30);
    omp_set_num_threads((int)o.threads);
    if (prof) return bench_profile(&o);

    moe_cpu_params cp = {.n_threads = o.threads, .n_teams = 1, .gemv_max_m = o.gemv_max_m, .amx_max_m = o.amx_max_m};
    moe_cpu *cpu = NULL;
    if (moe_cpu_create(&cpu, &cp) != MOE_OK) {
        fprintf(stderr, "moe-bench: %s\n", moe_last_error());
        return 1;
    }
    if (!o.json) {
        printf("# %s; %u threads; rotating over %zu MB; best of %d\n", moe_build_info(), o.threads,
               o.rotate_bytes >> 20, o.reps);
        printf("%-17s %-10s %-13s %4s  %10s %8s %8s %7s %9s %7s  %s\n", "model", "shape", "type", "m", "us/expert",
               "GB/s", "GFLOP/s", "/dram", "mm GFLOP", "/mm", "path");
    }
    const size_t probe = o.rotate_bytes;
    for (uint32_t d = 0; d < o.n_dtypes; d++)
        for (uint32_t s = 0; s < o.n_shapes; s++) {
            /* DRAM read bandwidth now, beside the cases it divides. */
            const double dram = moe_read_bandwidth(probe, o.threads, o.reps);
            bench_expert(&o, cpu, &o.shapes[s], o.dtypes[d], dram);
        }
    moe_cpu_free(&cpu);
    if (o.layer)
        for (uint32_t d = 0; d < o.n_dtypes; d++)
            bench_layer(&o, o.dtypes[d], moe_read_bandwidth(probe, o.threads, o.reps));
    return 0;
}
