/* engine.c - the CPU expert engine (engine.h). */
#include "engine.h"

#include "mm.h"
#include "place.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

enum { ALIGN = 64, MIN_BLK = 16, MAX_BLK = 256, MAX_DIM = 1u << 20 };

struct moe_cpu {
    uint32_t n_threads, n_teams;
    uint32_t gemv_max_m[MOE_DTYPE_COUNT_];
    uint32_t bf16_untiled_max_m; /* bf16 GEMV threshold for shapes AMX cannot take; 0 = gemv_max_m's */
    uint32_t *team_of, *rank_of; /* per thread */
    uint32_t *team_n;            /* threads per team */
    uint32_t *team_node;         /* the OS's NUMA node per team */
    moe_cpu_mask *caller;        /* when threads are bound: the caller's own mask, restored after each run */
    moe_kernel kern[MOE_DTYPE_COUNT_];
    moe_kernel amx, amx8; /* bf16 and int8 on AMX tiles, gemv NULL where unusable */
    uint32_t amx_max_m[MOE_DTYPE_COUNT_];
    moe_mm_cache *mm; /* NULL when portable */
    const moe_logger *log;
    char *buf; /* per-call scratch, grown, never shrunk */
    size_t cap;
    uint32_t *trace;
    size_t trace_cap;
};

/* Per-call state of a task on the GEMV path. */
typedef struct small_ws {
    const moe_kernel *k;  /* kernel_for() the task's gate and up; NULL if it does not run here */
    const moe_kernel *kd; /* ... and its down */
    void *xa, *ha;  /* activations of x and of h in their kernels' kinds */
    float *xs, *hs; /* their per-row scales */
    float *h;       /* [m, inter] silu(gate x) * up x */
    moe_acts x, hx;
} small_ws;

static size_t al(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

moe_status moe_cpu_create(moe_cpu **out, const moe_cpu_params *p) {
    if (!out || !p) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_create: NULL argument");
    *out = NULL;
    /* oneDNN splits its work for the thread count it asks for; a team that
     * OpenMP cannot grant would leave outputs uncomputed. */
    if (p->n_threads > (uint32_t)omp_get_thread_limit())
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_create: %u threads, but OpenMP allows %d (OMP_THREAD_LIMIT)",
                        p->n_threads, omp_get_thread_limit());
    if (p->n_threads == 0 || p->n_teams == 0 || p->n_teams > p->n_threads)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_create: %u threads in %u teams (need 1 <= teams <= threads)",
                        p->n_threads, p->n_teams);
    moe_cpu *c = calloc(1, sizeof *c);
    if (!c) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_cpu_create: allocation failed");
    c->n_threads = p->n_threads, c->n_teams = p->n_teams, c->log = p->log;
    for (int d = 0; d < MOE_DTYPE_COUNT_; d++)
        c->gemv_max_m[d] = p->gemv_max_m ? p->gemv_max_m : moe_cpu_default_gemv_max_m((moe_dtype)d);
    c->team_of = calloc(p->n_threads, sizeof *c->team_of);
    c->rank_of = calloc(p->n_threads, sizeof *c->rank_of);
    c->team_n = calloc(p->n_teams, sizeof *c->team_n);
    c->team_node = calloc(p->n_teams, sizeof *c->team_node);
    moe_status st = MOE_OK;
    if (!c->team_of || !c->rank_of || !c->team_n || !c->team_node) {
        st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_cpu_create: allocation failed");
        goto fail;
    }
    uint64_t sum = 0;
    for (uint32_t t = 0; t < p->n_teams; t++) {
        c->team_n[t] = p->team_size ? p->team_size[t]
                                    : p->n_threads / p->n_teams + (t < p->n_threads % p->n_teams ? 1 : 0);
        if (c->team_n[t] == 0) {
            st = moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_create: team %u has no threads", t);
            goto fail;
        }
        sum += c->team_n[t];
    }
    if (sum != p->n_threads) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_create: team sizes add up to %llu, not %u threads",
                      (unsigned long long)sum, p->n_threads);
        goto fail;
    }
    for (uint32_t t = 0; t < p->n_teams; t++) c->team_node[t] = p->team_node ? p->team_node[t] : t;
    for (uint32_t t = 0, tid = 0; t < p->n_teams; t++)
        for (uint32_t r = 0; r < c->team_n[t]; r++, tid++) c->team_of[tid] = t, c->rank_of[tid] = r;
    for (int d = 0; d < MOE_DTYPE_COUNT_; d++) c->kern[d] = moe_kernel_select((moe_dtype)d, p->portable);
    c->amx = p->portable ? (moe_kernel){0} : moe_kernel_amx(MOE_DTYPE_BF16);
    c->amx8 = p->portable ? (moe_kernel){0} : moe_kernel_amx(MOE_DTYPE_I8);
    for (int d = 0; d < MOE_DTYPE_COUNT_; d++)
        c->amx_max_m[d] = p->amx_max_m ? p->amx_max_m : d == MOE_DTYPE_I8 ? MOE_CPU_AMX_MAX_M_I8 : MOE_CPU_AMX_MAX_M_BF16;
    /* With AMX, bf16 groups of 2 or more tokens stream faster on tiles than
     * on the GEMV kernel (2048x1408, cold: 0.93 vs 0.83 of DRAM at m = 2). */
    if (c->amx.gemv && !p->gemv_max_m) {
        c->bf16_untiled_max_m = c->gemv_max_m[MOE_DTYPE_BF16];
        c->gemv_max_m[MOE_DTYPE_BF16] = 1;
    }
    if (!p->portable && (st = moe_mm_cache_create(&c->mm, p->log)) != MOE_OK) goto fail;
    /* OpenMP's worker threads are bound for good; thread 0 is the caller's
     * own thread, bound only for the length of each run (moe_cpu_run). */
    if (p->bind_threads && p->n_teams > 1 && (c->caller = moe_cpu_mask_new()) != NULL) {
        for (uint32_t t = 0; t < p->n_teams; t++) moe_numa_warm(c->team_node[t]);
        uint32_t bound = 0;
#pragma omp parallel num_threads((int)c->n_threads) reduction(+ : bound)
        {
            uint32_t tid = (uint32_t)omp_get_thread_num();
            if ((uint32_t)omp_get_num_threads() == c->n_threads && tid &&
                moe_numa_bind_thread(c->team_node[c->team_of[tid]]))
                bound++;
        }
        moe_log(c->log, bound + 1 == c->n_threads ? MOE_LOG_INFO : MOE_LOG_WARN,
                "cpu: %u of %u worker threads bound to their NUMA node", bound, c->n_threads - 1);
    }
    *out = c;
    return MOE_OK;
fail:
    moe_cpu_free(&c);
    return st;
}

void moe_cpu_free(moe_cpu **pc) {
    if (!pc || !*pc) return;
    moe_cpu *c = *pc;
    *pc = NULL;
    moe_mm_cache_free(&c->mm);
    free(c->team_of);
    free(c->rank_of);
    free(c->team_n);
    free(c->team_node);
    moe_cpu_mask_free(c->caller);
    free(c->buf);
    free(c);
}

/* Where oneDNN's smallest bucket (16 rows, cold weights) overtakes the
 * GEMV kernels on 2048x1408 experts, 2 threads: bf16 and int8 past 4
 * tokens (AMX), f32 near 24 (brgemm avx512 reads plain weights slowly).
 * Where our own AMX kernel runs, bf16 hands over to it after 1 token. */
uint32_t moe_cpu_default_gemv_max_m(moe_dtype t) {
    if (moe_dtype_is_block(t)) return UINT32_MAX; /* block formats: no oneDNN path */
    switch (t) {
    case MOE_DTYPE_BF16: case MOE_DTYPE_I8: return 4;
    case MOE_DTYPE_F32: return 16;
    default: return UINT32_MAX; /* f16: no oneDNN path */
    }
}

moe_status moe_cpu_prepare(moe_cpu *c, uint32_t hidden, uint32_t inter, moe_dtype t) {
    if (!c) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_prepare: engine is NULL");
    moe_act_kind a;
    if (!c->mm || !moe_mm_act(t, &a)) return MOE_OK; /* GEMV kernels only */
    moe_status st = moe_mm_prepare(c->mm, hidden, inter, t);
    if (st == MOE_OK) st = moe_mm_prepare(c->mm, inter, hidden, t);
    if (st == MOE_ERR_UNSUPPORTED) {
        moe_log(c->log, MOE_LOG_INFO, "cpu: %s; %s experts %ux%u run on the GEMV kernels at every batch size",
                moe_last_error(), moe_dtype_name(t), hidden, inter);
        return MOE_OK;
    }
    return st;
}

const char *moe_cpu_kernel_name(const moe_cpu *c, moe_dtype t) {
    return c && (moe_dtype_size(t) || moe_dtype_is_block(t)) ? c->kern[t].name : "";
}

const char *moe_cpu_dnnl_impl(const moe_cpu *c, uint32_t hidden, uint32_t inter, moe_dtype t, uint32_t m) {
    return c ? moe_mm_impl(c->mm, hidden, inter, t, m) : "";
}

void moe_cpu_trace(moe_cpu *c, uint32_t *work, size_t cap) {
    if (!c) return;
    c->trace = work;
    c->trace_cap = work ? cap : 0;
}

static bool known_dtype(moe_dtype t) { return moe_dtype_size(t) || moe_dtype_is_block(t); }

static moe_status check_task(const moe_cpu *c, const moe_cpu_task *t, uint32_t i) {
    const moe_expert_view *w = &t->w;
    const moe_dtype dd = moe_view_down(w);
    if (!known_dtype(w->dtype) || !known_dtype(dd))
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_cpu_run: task %u: weight dtype %d is not supported", i,
                        (int)(known_dtype(w->dtype) ? dd : w->dtype));
    if (w->hidden == 0 || w->inter == 0 || w->hidden > MAX_DIM || w->inter > MAX_DIM)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_run: task %u: expert shape %ux%u is out of range (1..%u)", i,
                        w->hidden, w->inter, MAX_DIM);
    if (!moe_dtype_row_bytes(w->dtype, w->hidden) || !moe_dtype_row_bytes(dd, w->inter))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_run: task %u: a %ux%u expert in %s/%s: rows are not whole "
                        "blocks (%zu / %zu elements)", i, w->hidden, w->inter, moe_dtype_name(w->dtype),
                        moe_dtype_name(dd), moe_dtype_block(w->dtype), moe_dtype_block(dd));
    if (!w->gate || !w->up || !w->down)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_run: task %u (expert %ux%u): %s weights are NULL", i,
                        w->hidden, w->inter, !w->gate ? "gate" : !w->up ? "up" : "down");
    if ((w->dtype == MOE_DTYPE_I8 && (!w->gate_scale || !w->up_scale)) || (dd == MOE_DTYPE_I8 && !w->down_scale))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_run: task %u (expert %ux%u): int8 weights without scales", i,
                        w->hidden, w->inter);
    if (t->team >= c->n_teams)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_run: task %u: team %u out of range (%u teams)", i, t->team,
                        c->n_teams);
    if (t->m > 0 && (!t->x || !t->y))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_run: task %u: %s is NULL", i, !t->x ? "x" : "y");
    return MOE_OK;
}

/* The kernel of a task on the GEMV path: AMX for bf16 groups past the GEMV
 * threshold up to amx_max_m tokens, in shapes whose rows and k fit whole
 * tiles; the dtype's GEMV kernel otherwise. */
static bool amx_fits(const moe_cpu *c, const moe_expert_view *w) {
    if (w->dtype == MOE_DTYPE_BF16) return c->amx.gemv && w->hidden % 32 == 0 && w->inter % 32 == 0;
    return w->dtype == MOE_DTYPE_I8 && c->amx8.gemv && w->hidden % 64 == 0 && w->inter % 64 == 0 &&
           w->hidden <= 65536 && w->inter <= 65536;
}

/* Largest group of the GEMV kernels for these weights: bf16 shapes that
 * AMX cannot take keep the threshold of a machine without it. */
static uint32_t gemv_max(const moe_cpu *c, const moe_expert_view *w) {
    if (w->dtype == MOE_DTYPE_BF16 && c->bf16_untiled_max_m && !amx_fits(c, w)) return c->bf16_untiled_max_m;
    return c->gemv_max_m[w->dtype];
}

static bool mixed(const moe_expert_view *w) { return moe_view_down(w) != w->dtype; }

static const moe_kernel *kernel_for(const moe_cpu *c, const moe_cpu_task *t) {
    const moe_expert_view *w = &t->w;
    if (t->m <= gemv_max(c, w) || t->m > c->amx_max_m[w->dtype] || !amx_fits(c, w) || mixed(w))
        return &c->kern[w->dtype];
    return w->dtype == MOE_DTYPE_BF16 ? &c->amx : &c->amx8;
}

/* The kernel of its down matrix: the same as gate and up's unless down has
 * a dtype of its own. */
static const moe_kernel *down_kernel_for(const moe_cpu *c, const moe_cpu_task *t) {
    return mixed(&t->w) ? &c->kern[moe_view_down(&t->w)] : kernel_for(c, t);
}

static bool is_amx(const moe_cpu *c, const moe_kernel *k) { return k == &c->amx || k == &c->amx8; }

/* True if the task runs on oneDNN: a large group of a prepared shape that
 * no AMX kernel of ours takes. */
static bool is_large(const moe_cpu *c, const moe_cpu_task *t) {
    return t->m > gemv_max(c, &t->w) && !mixed(&t->w) && !is_amx(c, kernel_for(c, t)) &&
           moe_mm_ready(c->mm, t->w.hidden, t->w.inter, t->w.dtype) &&
           moe_mm_ready(c->mm, t->w.inter, t->w.hidden, t->w.dtype);
}

const char *moe_cpu_path(const moe_cpu *c, uint32_t hidden, uint32_t inter, moe_dtype t, uint32_t m) {
    if (!c || !known_dtype(t)) return "";
    const moe_cpu_task task = {.w = {.dtype = t, .hidden = hidden, .inter = inter}, .m = m};
    if (is_large(c, &task)) return "onednn";
    return kernel_for(c, &task)->name;
}

/* Scratch bytes of a large task: x and h as activations with their
 * scales, padded to the bucket rows; the gate and up results (h is written
 * as activations straight from them); and one bucket of down results for
 * a padded last bucket (the others go straight to y). */
static size_t large_bytes(const moe_cpu_task *t) {
    moe_act_kind a;
    moe_mm_act(t->w.dtype, &a);
    const size_t rows = moe_mm_rows(t->m), asz = moe_act_size(a), H = t->w.hidden, I = t->w.inter;
    const size_t tail = rows < 512 ? rows : 512;
    return al(rows * H * asz) + al(rows * 4) + 2 * al(rows * I * 4) + al(rows * I * asz) + al(rows * 4) +
           al(tail * H * 4);
}

static size_t small_bytes(const moe_cpu *c, const moe_cpu_task *t) {
    const moe_act_kind a = kernel_for(c, t)->act, ad = down_kernel_for(c, t)->act;
    const size_t m = t->m, I = t->w.inter;
    return al(moe_acts_bytes(a, t->m, t->w.hidden)) + al(m * 4) + al(m * I * 4) +
           al(moe_acts_bytes(ad, t->m, t->w.inter)) + al(m * 4);
}

static moe_status grow(moe_cpu *c, size_t bytes) {
    if (bytes <= c->cap) return MOE_OK;
    free(c->buf);
    c->cap = 0;
    c->buf = aligned_alloc(ALIGN, al(bytes));
    if (!c->buf) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_cpu_run: cannot allocate %zu bytes of scratch", bytes);
    c->cap = al(bytes);
    return MOE_OK;
}

/* Rows per work item: about four items per thread of the team, so that
 * experts of different sizes balance, within [MIN_BLK, MAX_BLK]. */
static uint32_t block_rows(uint64_t rows, uint32_t tsize) {
    uint64_t b = rows / ((uint64_t)tsize * 4);
    b = b < MIN_BLK ? MIN_BLK : b > MAX_BLK ? MAX_BLK : b;
    return (uint32_t)((b + 15) & ~15ull); /* whole AMX tiles; GEMV blocks stay 4-row aligned */
}

/* True if thread-team `team` runs task i on the GEMV/AMX path (any team
 * when OpenMP gave another team size than asked: then one team runs all). */
static inline bool ours(const small_ws *w, const moe_cpu_task *t, bool teams, uint32_t team) {
    return w->k && (!teams || t->team == team);
}

static inline void trace_block(moe_cpu *c, uint32_t tid, uint32_t n, uint32_t i) {
    if (c->trace && (size_t)tid * n + i < c->trace_cap) c->trace[(size_t)tid * n + i]++;
}

/* Activations of m rows of k (row stride k) in kind a, prepared by the
 * team: rows in chunks of at least 8, one chunk per work item (*cnt
 * counts the team's items; this thread takes those with cnt % tsize ==
 * rank). Kinds whose rows are independent split; AMX's packed tiles do
 * not. Every thread gets the same description of the result. */
static moe_acts acts_chunks(moe_act_kind a, uint32_t m, uint32_t k, const float *x, void *buf, float *scale,
                            uint32_t tsize, uint32_t rank, uint64_t *cnt) {
    const bool split = a != MOE_ACT_BF16_VNNI && a != MOE_ACT_S8_VNNI;
    if (a == MOE_ACT_F32 || !split) { /* in place, or one piece */
        moe_acts r = moe_acts_describe(a, m, k, x, k, buf, scale);
        if ((*cnt)++ % tsize == rank && a != MOE_ACT_F32) r = moe_acts_prepare(a, m, k, x, k, buf, scale);
        return r;
    }
    const uint32_t chunk = m / tsize > 8 ? (m + tsize - 1) / tsize : 8;
    const size_t rb = moe_acts_bytes(a, 1, k);
    for (uint32_t r0 = 0; r0 < m; r0 += chunk) {
        if ((*cnt)++ % tsize != rank) continue;
        const uint32_t nr = m - r0 < chunk ? m - r0 : chunk;
        moe_acts_prepare(a, nr, k, x + (size_t)r0 * k, k, (char *)buf + r0 * rb, scale ? scale + r0 : NULL);
    }
    return moe_acts_describe(a, m, k, x, k, buf, scale);
}

static void run_small(moe_cpu *c, const moe_cpu_task *tasks, uint32_t n, small_ws *ws, float *tmp,
                      size_t tmp_stride) {
    bool amx = false;
    for (uint32_t i = 0; i < n; i++) amx |= ws[i].k && is_amx(c, ws[i].k);
#pragma omp parallel num_threads((int)c->n_threads)
    {
        if (amx) moe_amx_begin();
        const uint32_t nthr = (uint32_t)omp_get_num_threads(), tid = (uint32_t)omp_get_thread_num();
        /* If OpenMP gave a different team size, run as one team. */
        const bool teams = nthr == c->n_threads;
        const uint32_t team = teams ? c->team_of[tid] : 0, rank = teams ? c->rank_of[tid] : tid,
                       tsize = teams ? c->team_n[team] : nthr;
        float *g = tmp + tid * tmp_stride, *u = g + tmp_stride / 2;
        uint64_t rows1 = 0, rows2 = 0;
        for (uint32_t i = 0; i < n; i++)
            if (ours(&ws[i], &tasks[i], teams, team)) rows1 += tasks[i].w.inter, rows2 += tasks[i].w.hidden;
        const uint32_t blk1 = block_rows(rows1, tsize), blk2 = block_rows(rows2, tsize);
        uint64_t cnt = 0;

        /* Phase 0: activations of x in the kernels' kind, each task's
         * rows in chunks across the team. */
        for (uint32_t i = 0; i < n; i++) {
            const moe_cpu_task *t = &tasks[i];
            if (ours(&ws[i], t, teams, team))
                ws[i].x = acts_chunks(ws[i].k->act, t->m, t->w.hidden, t->x, ws[i].xa, ws[i].xs, tsize, rank, &cnt);
        }
#pragma omp barrier
        /* Phase 1: blocks of gate and up rows, then SiLU-multiply. */
        cnt = 0;
        for (uint32_t i = 0; i < n; i++) {
            const moe_cpu_task *t = &tasks[i];
            if (!ours(&ws[i], t, teams, team)) continue;
            const moe_kernel *k = ws[i].k;
            const uint32_t I = t->w.inter;
            for (uint32_t n0 = 0; n0 < I; n0 += blk1) {
                if (cnt++ % tsize != rank) continue;
                const uint32_t n1 = I - n0 < blk1 ? I : n0 + blk1, nb = n1 - n0;
                k->gemv(t->w.gate, t->w.gate_scale, t->w.hidden, n0, n1, &ws[i].x, g, nb);
                k->gemv(t->w.up, t->w.up_scale, t->w.hidden, n0, n1, &ws[i].x, u, nb);
                for (uint32_t r = 0; r < t->m; r++)
                    moe_silu_mul(ws[i].h + (size_t)r * I + n0, g + (size_t)r * nb, u + (size_t)r * nb, nb);
                trace_block(c, tid, n, i);
            }
        }
#pragma omp barrier
        /* Phase 1b: activations of h. */
        cnt = 0;
        for (uint32_t i = 0; i < n; i++) {
            const moe_cpu_task *t = &tasks[i];
            if (ours(&ws[i], t, teams, team))
                ws[i].hx = acts_chunks(ws[i].kd->act, t->m, t->w.inter, ws[i].h, ws[i].ha, ws[i].hs, tsize, rank, &cnt);
        }
#pragma omp barrier
        /* Phase 2: blocks of down rows, straight into y. */
        cnt = 0;
        for (uint32_t i = 0; i < n; i++) {
            const moe_cpu_task *t = &tasks[i];
            if (!ours(&ws[i], t, teams, team)) continue;
            const uint32_t H = t->w.hidden;
            for (uint32_t n0 = 0; n0 < H; n0 += blk2) {
                if (cnt++ % tsize != rank) continue;
                const uint32_t n1 = H - n0 < blk2 ? H : n0 + blk2;
                ws[i].kd->gemv(t->w.down, t->w.down_scale, t->w.inter, n0, n1, &ws[i].hx, t->y + n0, H);
                trace_block(c, tid, n, i);
            }
        }
        if (amx) moe_amx_end();
    }
}

/* Activations of `m` rows into a buffer of `rows` rows (the rest zero),
 * in parallel. f32 rows are copied: oneDNN reads the padding too. */
static void prep_rows(uint32_t nthr, moe_act_kind a, uint32_t m, uint32_t k, const float *x, void *buf,
                      float *scale, size_t rows) {
    const size_t rb = (size_t)k * moe_act_size(a);
#pragma omp parallel for num_threads((int)nthr) schedule(static)
    for (int64_t r = 0; r < (int64_t)rows; r++) {
        char *dst = (char *)buf + (size_t)r * rb;
        if ((uint64_t)r >= m) {
            memset(dst, 0, rb);
            scale[r] = 0.0f;
        } else if (a == MOE_ACT_F32) {
            memcpy(dst, x + (size_t)r * k, rb);
        } else {
            moe_acts_prepare(a, 1, k, x + (size_t)r * k, k, dst, scale + r);
        }
    }
}

/* One large group on oneDNN: gate and up matmuls; one parallel pass per
 * row that applies int8 scales, SiLU-multiplies and converts h into the
 * activations of the down matmul (the row is still in cache); the down
 * matmul straight into y; for int8 a scaling pass over y. */
static moe_status run_large(moe_cpu *c, const moe_cpu_task *t, char *p) {
    const moe_expert_view *w = &t->w;
    const uint32_t H = w->hidden, I = w->inter, m = t->m;
    const bool q = w->dtype == MOE_DTYPE_I8;
    moe_act_kind a;
    moe_mm_act(w->dtype, &a);
    const size_t rows = moe_mm_rows(m), asz = moe_act_size(a);
    void *xa = p;
    float *xs = (float *)(p += al(rows * H * asz));
    float *G = (float *)(p += al(rows * 4));
    float *U = (float *)(p += al(rows * I * 4));
    char *ha = (p += al(rows * I * 4));
    float *hs = (float *)(p += al(rows * I * asz));
    float *tail = (float *)(p += al(rows * 4));
    const int nthr = (int)c->n_threads;

    prep_rows(c->n_threads, a, m, H, t->x, xa, xs, rows);
    moe_status st = moe_mm_run(c->mm, H, I, w->dtype, m, xa, w->gate, G, NULL);
    if (st == MOE_OK) st = moe_mm_run(c->mm, H, I, w->dtype, m, xa, w->up, U, NULL);
    if (st != MOE_OK) return st;
#pragma omp parallel for num_threads(nthr) schedule(static)
    for (int64_t r = 0; r < (int64_t)rows; r++) {
        char *hr = ha + (size_t)r * I * asz;
        if ((uint64_t)r >= m) { /* padding rows of the down matmul's source */
            memset(hr, 0, (size_t)I * asz);
            hs[r] = 0.0f;
            continue;
        }
        float *g = G + (size_t)r * I, *u = U + (size_t)r * I;
        if (q) {
            const float s = xs[r];
            for (uint32_t j = 0; j < I; j++) g[j] *= s * w->gate_scale[j], u[j] *= s * w->up_scale[j];
        }
        moe_silu_mul(g, g, u, I);
        if (a == MOE_ACT_F32) memcpy(hr, g, (size_t)I * sizeof *g);
        else moe_acts_prepare(a, 1, I, g, I, hr, hs + r);
    }
    if ((st = moe_mm_run(c->mm, I, H, w->dtype, m, ha, w->down, t->y, tail)) != MOE_OK) return st;
    if (q) {
#pragma omp parallel for num_threads(nthr) schedule(static)
        for (int64_t r = 0; r < (int64_t)m; r++) {
            float *y = t->y + (size_t)r * H;
            const float s = hs[r];
            for (uint32_t j = 0; j < H; j++) y[j] *= s * w->down_scale[j];
        }
    }
    return MOE_OK;
}

moe_status moe_cpu_run(moe_cpu *c, const moe_cpu_task *tasks, uint32_t n) {
    if (!c) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_run: engine is NULL");
    if (n == 0) return MOE_OK;
    if (!tasks) return moe_fail(MOE_ERR_INVALID_ARG, "moe_cpu_run: tasks is NULL");
    moe_status st;
    for (uint32_t i = 0; i < n; i++)
        if ((st = check_task(c, &tasks[i], i)) != MOE_OK) return st;

    /* Scratch: [large flags][small_ws][per-small-task buffers][per-thread
     * gate/up blocks][one large task's buffers, reused by each]. */
    size_t off = al(n * sizeof(bool)), ws_off = off;
    off += al(n * sizeof(small_ws));
    size_t small_off = off, large_max = 0;
    uint32_t small_m = 0, n_small = 0;
    for (uint32_t i = 0; i < n; i++) {
        const moe_cpu_task *t = &tasks[i];
        if (!t->m) continue;
        if (is_large(c, t)) {
            size_t b = large_bytes(t);
            large_max = b > large_max ? b : large_max;
        } else {
            off += small_bytes(c, t);
            small_m = t->m > small_m ? t->m : small_m;
            n_small++;
        }
    }
    const size_t tmp_stride = 2 * al((size_t)small_m * MAX_BLK * sizeof(float)) / sizeof(float);
    const size_t tmp_off = off;
    off += n_small ? (size_t)c->n_threads * tmp_stride * sizeof(float) : 0;
    const size_t large_off = off;
    if ((st = grow(c, off + large_max)) != MOE_OK) return st;

    bool *large = (bool *)c->buf;
    small_ws *ws = (small_ws *)(c->buf + ws_off);
    char *p = c->buf + small_off;
    for (uint32_t i = 0; i < n; i++) {
        const moe_cpu_task *t = &tasks[i];
        large[i] = t->m && is_large(c, t);
        ws[i].k = ws[i].kd = NULL;
        if (!t->m || large[i]) continue;
        ws[i].k = kernel_for(c, t);
        ws[i].kd = down_kernel_for(c, t);
        const size_t m = t->m, I = t->w.inter;
        ws[i].xa = p, p += al(moe_acts_bytes(ws[i].k->act, t->m, t->w.hidden));
        ws[i].xs = (float *)p, p += al(m * 4);
        ws[i].h = (float *)p, p += al(m * I * 4);
        ws[i].ha = p, p += al(moe_acts_bytes(ws[i].kd->act, t->m, t->w.inter));
        ws[i].hs = (float *)p, p += al(m * 4);
    }
    if (c->trace) memset(c->trace, 0, c->trace_cap * sizeof *c->trace);
    const bool rebind = c->caller && moe_cpu_mask_save(c->caller) && moe_numa_bind_thread(c->team_node[c->team_of[0]]);
    if (n_small) run_small(c, tasks, n, ws, (float *)(c->buf + tmp_off), tmp_stride);

    /* oneDNN sizes its parallel regions by the calling thread's OpenMP
     * setting: make it this engine's for the duration, then restore it. */
    /* ... and with dynamic threads off: oneDNN 2.6 divides a matmul for the
     * threads it asked for, and a region granted fewer (OMP_DYNAMIC on a
     * loaded host) would leave part of the output uncomputed. */
    const int saved = omp_get_max_threads(), saved_dyn = omp_get_dynamic();
    bool set = false;
    for (uint32_t i = 0; i < n && st == MOE_OK; i++) {
        if (!large[i]) continue;
        if (!set) omp_set_num_threads((int)c->n_threads), omp_set_dynamic(0), set = true;
        st = run_large(c, &tasks[i], c->buf + large_off);
    }
    if (set) omp_set_num_threads(saved), omp_set_dynamic(saved_dyn);
    if (rebind) moe_cpu_mask_restore(c->caller);
    return st;
}
