/* mm.c - bucketed oneDNN matmul primitives (mm.h). */
#include "mm.h"
#include "isa.h"

#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* M buckets: at most 1.5x padding above 16 rows. */
static const uint32_t buckets[] = {16, 32, 48, 64, 96, 128, 192, 256, 384, 512};
enum { N_BUCKETS = sizeof buckets / sizeof buckets[0], MAX_BUCKET = 512 };

typedef struct mm_entry {
    uint32_t k, n;
    moe_dtype t;
    uint32_t mb;
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
    char impl[64];
} mm_entry;

struct moe_mm_cache {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    mm_entry *e;
    size_t n, cap;
    const moe_logger *log;
};

/* int8 only where the CPU (under MOE_CPU_ISA) has VNNI: without it
 * oneDNN 2.6 multiplies s8 x s8 through vpmaddubsw, whose 16-bit pairs
 * saturate (found by running the tests with MOE_CPU_ISA=avx2: NMSE 0.07),
 * so there int8 groups of every size stay on the GEMV kernels. */
bool moe_mm_act(moe_dtype t, moe_act_kind *out) {
    switch (t) {
    case MOE_DTYPE_F32: *out = MOE_ACT_F32; return true;
    case MOE_DTYPE_BF16: *out = MOE_ACT_BF16; return true;
    case MOE_DTYPE_I8: *out = MOE_ACT_S8; return moe_cpu_isa()->avx512_vnni;
    default: return false;
    }
}

static uint32_t bucket_for(uint32_t rem) {
    for (uint32_t i = 0; i < N_BUCKETS; i++)
        if (rem <= buckets[i]) return buckets[i];
    return MAX_BUCKET;
}

size_t moe_mm_rows(uint32_t m) {
    size_t full = (size_t)(m / MAX_BUCKET) * MAX_BUCKET;
    return m % MAX_BUCKET ? full + bucket_for(m % MAX_BUCKET) : full;
}

/* oneDNN keeps to MOE_CPU_ISA's cap as moerun's own kernels do (isa.h).
 * It takes the cap once, before its first primitive; an explicit
 * ONEDNN_MAX_CPU_ISA in the environment wins. */
static void cap_isa_once(void) {
    const moe_isa_level cap = moe_cpu_isa()->cap;
    if (cap == MOE_ISA_NATIVE || getenv("ONEDNN_MAX_CPU_ISA") || getenv("DNNL_MAX_CPU_ISA")) return;
    const dnnl_cpu_isa_t isa = cap <= MOE_ISA_C ? dnnl_cpu_isa_sse41 : cap == MOE_ISA_AVX2 ? dnnl_cpu_isa_avx2
                               : cap == MOE_ISA_AVX512 ? dnnl_cpu_isa_avx512_core
                               : cap == MOE_ISA_AVX512_VNNI ? dnnl_cpu_isa_avx512_core_vnni
                               : cap == MOE_ISA_AVX512_BF16 ? dnnl_cpu_isa_avx512_core_bf16
                                                            : dnnl_cpu_isa_avx512_core_amx;
    (void)dnnl_set_max_cpu_isa(isa);
}

static void cap_isa(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, cap_isa_once);
}

moe_status moe_mm_cache_create(moe_mm_cache **out, const moe_logger *log) {
    if (!out) return moe_fail(MOE_ERR_INVALID_ARG, "moe_mm_cache_create: out is NULL");
    *out = NULL;
    moe_mm_cache *c = calloc(1, sizeof *c);
    if (!c) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_mm_cache_create: allocation failed");
    c->log = log;
    cap_isa();
    if (dnnl_engine_create(&c->eng, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&c->stream, c->eng, dnnl_stream_default_flags) != dnnl_success) {
        moe_mm_cache_free(&c);
        return moe_fail(MOE_ERR_INTERNAL, "moe_mm_cache_create: oneDNN engine or stream creation failed");
    }
    *out = c;
    return MOE_OK;
}

static void entry_free(mm_entry *e) {
    if (e->src) dnnl_memory_destroy(e->src);
    if (e->wei) dnnl_memory_destroy(e->wei);
    if (e->dst) dnnl_memory_destroy(e->dst);
    if (e->prim) dnnl_primitive_destroy(e->prim);
}

void moe_mm_cache_free(moe_mm_cache **pc) {
    if (!pc || !*pc) return;
    moe_mm_cache *c = *pc;
    *pc = NULL;
    for (size_t i = 0; i < c->n; i++) entry_free(&c->e[i]);
    free(c->e);
    if (c->stream) dnnl_stream_destroy(c->stream);
    if (c->eng) dnnl_engine_destroy(c->eng);
    free(c);
}

static dnnl_data_type_t dnnl_wt(moe_dtype t) {
    return t == MOE_DTYPE_F32 ? dnnl_f32 : t == MOE_DTYPE_BF16 ? dnnl_bf16 : dnnl_s8;
}

static mm_entry *find(const moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t, uint32_t mb) {
    for (size_t i = 0; i < c->n; i++) {
        mm_entry *e = &c->e[i];
        if (e->k == k && e->n == n && e->t == t && e->mb == mb) return e;
    }
    return NULL;
}

/* One primitive for an M of exactly mb rows; e is filled on success. */
static moe_status create_entry(moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t, uint32_t mb, mm_entry *e) {
    memset(e, 0, sizeof *e);
    e->k = k, e->n = n, e->t = t, e->mb = mb;
    const dnnl_data_type_t wt = dnnl_wt(t);
    dnnl_memory_desc_t sd, wd, dd;
    dnnl_dims_t s_dims = {mb, k}, w_dims = {k, n}, d_dims = {mb, n};
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = NULL;
    moe_status st = MOE_OK;
    if (dnnl_memory_desc_init_by_tag(&sd, 2, s_dims, wt, dnnl_ab) != dnnl_success ||
        dnnl_memory_desc_init_by_tag(&wd, 2, w_dims, wt, dnnl_ba) != dnnl_success ||
        dnnl_memory_desc_init_by_tag(&dd, 2, d_dims, dnnl_f32, dnnl_ab) != dnnl_success ||
        dnnl_matmul_desc_init(&md, &sd, &wd, NULL, &dd) != dnnl_success ||
        dnnl_primitive_desc_create(&pd, &md, NULL, c->eng, NULL) != dnnl_success)
        return moe_fail(MOE_ERR_UNSUPPORTED, "oneDNN has no %s matmul for [%u x %u] weights, M = %u on this CPU",
                        moe_dtype_name(t), n, k, mb);
    const char *impl = "";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(e->impl, sizeof e->impl, "%s", impl);
    /* A reference implementation would be orders of magnitude slower than
     * the GEMV kernels: refuse it and let the caller keep the group. */
    if (strncmp(e->impl, "ref", 3) == 0) {
        st = moe_fail(MOE_ERR_UNSUPPORTED, "oneDNN runs %s [%u x %u] matmuls only with its reference code (%s)",
                      moe_dtype_name(t), n, k, e->impl);
    } else if (dnnl_primitive_create(&e->prim, pd) != dnnl_success ||
               dnnl_memory_create(&e->src, &sd, c->eng, DNNL_MEMORY_NONE) != dnnl_success ||
               dnnl_memory_create(&e->wei, &wd, c->eng, DNNL_MEMORY_NONE) != dnnl_success ||
               dnnl_memory_create(&e->dst, &dd, c->eng, DNNL_MEMORY_NONE) != dnnl_success) {
        st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "oneDNN matmul creation failed for %s [%u x %u], M = %u",
                      moe_dtype_name(t), n, k, mb);
    }
    dnnl_primitive_desc_destroy(pd);
    if (st != MOE_OK) entry_free(e);
    return st;
}

moe_status moe_mm_prepare(moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t) {
    moe_act_kind a;
    if (!c || !moe_mm_act(t, &a) || k == 0 || n == 0)
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_mm_prepare: no oneDNN matmul for %s", moe_dtype_name(t));
    /* s8 x s8 sums into int32: |sum| <= k * 127 * 127 < 2^31 needs k <= 2^17. */
    if (t == MOE_DTYPE_I8 && k > MOE_MM_I8_MAX_K)
        return moe_fail(MOE_ERR_UNSUPPORTED, "moe_mm_prepare: int8 with k = %u would overflow oneDNN's int32 "
                        "sums (at most %u)", k, MOE_MM_I8_MAX_K);
    if (find(c, k, n, t, buckets[0])) return MOE_OK;
    if (c->cap - c->n < N_BUCKETS) {
        size_t cap = c->cap ? c->cap * 2 : 4 * N_BUCKETS;
        mm_entry *e = realloc(c->e, cap * sizeof *e);
        if (!e) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "moe_mm_prepare: allocation failed");
        c->e = e, c->cap = cap;
    }
    for (uint32_t i = 0; i < N_BUCKETS; i++) {
        moe_status st = create_entry(c, k, n, t, buckets[i], &c->e[c->n + i]);
        if (st != MOE_OK) {
            for (uint32_t j = 0; j < i; j++) entry_free(&c->e[c->n + j]);
            return st;
        }
    }
    moe_log(c->log, MOE_LOG_DEBUG, "cpu: oneDNN %s [%u x %u]: %s at M = 16, %s at M = 512", moe_dtype_name(t), n,
            k, c->e[c->n].impl, c->e[c->n + N_BUCKETS - 1].impl);
    c->n += N_BUCKETS;
    return MOE_OK;
}

bool moe_mm_ready(const moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t) {
    return c && find(c, k, n, t, buckets[0]) != NULL;
}

const char *moe_mm_impl(const moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t, uint32_t m) {
    const mm_entry *e = c ? find(c, k, n, t, bucket_for(m)) : NULL;
    return e ? e->impl : "";
}

moe_status moe_mm_run(moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t, uint32_t m, const void *src,
                      const void *w, float *dst, float *tail) {
    moe_act_kind a;
    if (!moe_mm_act(t, &a)) return moe_fail(MOE_ERR_UNSUPPORTED, "moe_mm_run: %s", moe_dtype_name(t));
    const size_t asz = moe_act_size(a);
    for (uint64_t s = 0; s < m;) {
        const uint32_t mb = bucket_for((uint32_t)(m - s));
        mm_entry *e = find(c, k, n, t, mb);
        if (!e)
            return moe_fail(MOE_ERR_STATE, "moe_mm_run: %s [%u x %u] was not prepared", moe_dtype_name(t), n, k);
        const bool padded = tail && s + mb > m; /* the last bucket overhangs dst */
        dnnl_memory_set_data_handle(e->src, (char *)(uintptr_t)src + (size_t)s * k * asz);
        dnnl_memory_set_data_handle(e->wei, (void *)(uintptr_t)w);
        dnnl_memory_set_data_handle(e->dst, padded ? tail : dst + (size_t)s * n);
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->wei}, {DNNL_ARG_DST, e->dst}};
        if (dnnl_primitive_execute(e->prim, c->stream, 3, args) != dnnl_success)
            return moe_fail(MOE_ERR_INTERNAL, "moe_mm_run: oneDNN matmul failed");
        if (padded) {
            dnnl_stream_wait(c->stream);
            memcpy(dst + (size_t)s * n, tail, (size_t)(m - s) * n * sizeof *dst);
        }
        s += mb;
    }
    dnnl_stream_wait(c->stream);
    return MOE_OK;
}

void moe_mm_onednn_version(char *buf, size_t cap) {
    const dnnl_version_t *d = dnnl_version();
    snprintf(buf, cap, "%d.%d.%d", d->major, d->minor, d->patch);
}
