/* mm.h - oneDNN matmuls for the CPU engine's large token groups (prefill).
 *
 * dst[m, n] (f32) = src[m, k] * W^T, with W the registered [n, k] weights
 * read in place (oneDNN's "ba" layout, which is HF's row-major [n, k]).
 * oneDNN 2.6 only keeps its brgemm/AMX kernels for a fixed M (a runtime M
 * drops to gemm:jit), so primitives are created ahead of time for a set of
 * M buckets, and a call runs buckets of 512 rows and then the smallest
 * bucket that holds the rest: source and destination buffers must have
 * room for moe_mm_rows(m) rows (the rows past m are computed and ignored).
 * Nothing is created on the hot path: moe_mm_run() only looks up. */
#ifndef MOE_CPU_MM_H
#define MOE_CPU_MM_H

#include "common.h"
#include "kern.h"

typedef struct moe_mm_cache moe_mm_cache;

/* Largest k of an int8 matmul here: int32 sums of s8 x s8 products. */
#define MOE_MM_I8_MAX_K 131072u

moe_status moe_mm_cache_create(moe_mm_cache **out, const moe_logger *log);
void moe_mm_cache_free(moe_mm_cache **c);

/* Activation kind oneDNN takes for weight dtype t (f32, bf16 or s8);
 * false if oneDNN is not used for t at all (f16). */
bool moe_mm_act(moe_dtype t, moe_act_kind *out);

/* Creates the primitives for [n, k] weights of dtype t for every bucket.
 * MOE_ERR_UNSUPPORTED if this oneDNN or CPU cannot run the dtype with an
 * optimized kernel (the caller then keeps such groups on its own kernels).
 * Calling it again for the same (k, n, t) does nothing. */
moe_status moe_mm_prepare(moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t);

/* True once moe_mm_prepare(c, k, n, t) has succeeded. */
bool moe_mm_ready(const moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t);

/* Rows a source or destination buffer needs for m rows. */
size_t moe_mm_rows(uint32_t m);

/* Runs dst = src * W^T on the calling thread's OpenMP team (call it
 * outside a parallel region). src is in the kind moe_mm_act() gave, row
 * stride k, with room for moe_mm_rows(m) rows; dst has row stride n. With
 * `tail` NULL, dst must also have room for moe_mm_rows(m) rows; otherwise
 * dst needs only m rows: a last, padded bucket is computed into `tail`
 * (room for min(moe_mm_rows(m), 512) rows of n floats) and its valid rows
 * copied. For int8 the result is the raw integer dot product (scales are
 * the caller's). */
moe_status moe_mm_run(moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t, uint32_t m, const void *src,
                      const void *w, float *dst, float *tail);

/* The oneDNN implementation that runs (k, n, t) at bucket size m, e.g.
 * "brg:avx512_core_amx_bf16" (for benchmarks and logs); "" if none. */
const char *moe_mm_impl(const moe_mm_cache *c, uint32_t k, uint32_t n, moe_dtype t, uint32_t m);

/* The version of the oneDNN library this process runs, "2.6.3". */
void moe_mm_onednn_version(char *buf, size_t cap);

#endif
