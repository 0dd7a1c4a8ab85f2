/* kern.c - GEMV kernels and vectorized glue for the CPU engine (kern.h).
 *
 * Decode is a stream over weights: every weight byte is read once per call
 * and used for m <= a few tokens, so the kernels are written to keep the
 * load ports busy and nothing else: 4 weight rows x up to 4 tokens per
 * block (16 accumulators), weights in the dtype they were registered in,
 * converted or dot-multiplied in registers, never repacked in memory.
 * The AVX-512 code is compiled with target attributes, so one binary runs
 * the right kernel on any x86-64 CPU. */
#define _GNU_SOURCE /* syscall() for the AMX permission request */
#include "kern.h"
#include "expert.h"
#include "isa.h"
#include "quant.h"
#include "topology.h"

#include <float.h>
#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define MOE_X86 1
#include <immintrin.h>
#endif

/* ---- portable C ------------------------------------------------------- */

static void gemv_c(const void *w, const float *wscale, moe_dtype t, uint32_t k, uint32_t n0, uint32_t n1,
                   const moe_acts *x, float *out, size_t ldo) {
    const float *xf = x->data;
    for (uint32_t r = 0; r < x->m; r++) {
        const float *xr = xf + (size_t)r * x->ld;
        for (uint32_t j = n0; j < n1; j++) {
            size_t base = (size_t)j * k;
            float acc = 0.0f;
            if (t == MOE_DTYPE_I8) {
                const int8_t *wr = (const int8_t *)w + base;
                for (uint32_t i = 0; i < k; i++) acc += (float)wr[i] * xr[i];
                acc *= wscale[j];
            } else {
                for (uint32_t i = 0; i < k; i++) acc += moe_load_f32(w, t, base + i) * xr[i];
            }
            out[(size_t)r * ldo + (j - n0)] = acc;
        }
    }
}

#define GEMV_C(name, dt)                                                                              \
    static void name(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,             \
                     const moe_acts *x, float *out, size_t ldo) {                                      \
        gemv_c(w, ws, dt, k, n0, n1, x, out, ldo);                                                     \
    }
GEMV_C(gemv_c_f32, MOE_DTYPE_F32)
GEMV_C(gemv_c_bf16, MOE_DTYPE_BF16)
GEMV_C(gemv_c_f16, MOE_DTYPE_F16)
GEMV_C(gemv_c_i8, MOE_DTYPE_I8)

#ifdef MOE_X86
/* ---- AVX-512 ---------------------------------------------------------- */

#define T_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define T_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))
#define T_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

enum { RB = 4, TB = 4 }; /* weight rows and tokens per register block */
/* Software prefetch distance on each weight row, into L2, measured
 * (qbench-style cold A/B, 2 threads, AMD EPYC Zen 4): 4 rows x 2 threads are
 * more streams than the hardware prefetcher follows across 4 KB pages, and
 * a near (T0, 512 B - 2 KB) prefetch arrives too late. 12 KB ahead into L2,
 * as the block formats' kernels (kern_quant.c) do, takes bf16 at M = 1 from
 * 0.81-0.85 to 0.94-0.99 of DRAM bandwidth and int8 from 0.70 to 0.93. */
enum { PF_FAR = 12288 };
#define PREFETCH_FAR(p) _mm_prefetch((const char *)(p) + PF_FAR, _MM_HINT_T1)

/* Weight loaders: 16 weights of row p from element i as f32; the masked
 * form reads only the first `n` (< 16). */
T_512 INLINE __m512 ld_f32(const void *p, size_t i) { return _mm512_loadu_ps((const float *)p + i); }
T_512 INLINE __m512 ldm_f32(const void *p, size_t i, uint32_t n) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), (const float *)p + i);
}
T_512 INLINE __m512 bf16x16(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
T_512 INLINE __m512 ld_bf16(const void *p, size_t i) {
    return bf16x16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
}
T_512 INLINE __m512 ldm_bf16(const void *p, size_t i, uint32_t n) {
    return bf16x16(_mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), (const uint16_t *)p + i));
}
T_512 INLINE __m512 ld_f16(const void *p, size_t i) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)));
}
T_512 INLINE __m512 ldm_f16(const void *p, size_t i, uint32_t n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), (const uint16_t *)p + i));
}
T_512 INLINE __m512 ld_i8(const void *p, size_t i) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)p + i))));
}
T_512 INLINE __m512 ldm_i8(const void *p, size_t i, uint32_t n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1),
                                                                         (const int8_t *)p + i)));
}

/* One register block: rows w[0..RB) against tokens x[0..tb) with f32
 * activations, weights converted by LD/LDM. tb is a constant after
 * inlining, so each token count gets its own unrolled loop. */
#define BLOCK_CVT(fn, LD, LDM, WS)                                                                     \
    T_512 INLINE void fn(const void *const *w, const float *const *x, uint32_t tb, uint32_t k,         \
                         float res[TB][RB]) {                                                          \
        __m512 acc[TB][RB];                                                                            \
        for (uint32_t t = 0; t < tb; t++)                                                              \
            for (uint32_t r = 0; r < RB; r++) acc[t][r] = _mm512_setzero_ps();                         \
        uint32_t i = 0;                                                                                \
        for (; i + 16 <= k; i += 16) {                                                                 \
            __m512 wv[RB];                                                                             \
            if (!((i * (WS)) & 63))                                                                    \
                for (uint32_t r = 0; r < RB; r++) PREFETCH_FAR((const char *)w[r] + i * (WS));         \
            for (uint32_t r = 0; r < RB; r++) wv[r] = LD(w[r], i);                                     \
            for (uint32_t t = 0; t < tb; t++) {                                                        \
                __m512 xv = _mm512_loadu_ps(x[t] + i);                                                 \
                for (uint32_t r = 0; r < RB; r++) acc[t][r] = _mm512_fmadd_ps(wv[r], xv, acc[t][r]);   \
            }                                                                                          \
        }                                                                                              \
        if (i < k) {                                                                                   \
            uint32_t n = k - i;                                                                        \
            __m512 wv[RB];                                                                             \
            for (uint32_t r = 0; r < RB; r++) wv[r] = LDM(w[r], i, n);                                 \
            for (uint32_t t = 0; t < tb; t++) {                                                        \
                __m512 xv = _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), x[t] + i);               \
                for (uint32_t r = 0; r < RB; r++) acc[t][r] = _mm512_fmadd_ps(wv[r], xv, acc[t][r]);   \
            }                                                                                          \
        }                                                                                              \
        for (uint32_t t = 0; t < tb; t++)                                                              \
            for (uint32_t r = 0; r < RB; r++) res[t][r] = _mm512_reduce_add_ps(acc[t][r]);             \
    }

BLOCK_CVT(blk_f32, ld_f32, ldm_f32, 4)
BLOCK_CVT(blk_bf16c, ld_bf16, ldm_bf16, 2)
BLOCK_CVT(blk_f16, ld_f16, ldm_f16, 2)
BLOCK_CVT(blk_i8c, ld_i8, ldm_i8, 1)

/* Row pointers for rows j..j+RB of W (rows past n1 repeat the last one, and
 * their results are dropped), and token pointers likewise. */
static inline uint32_t rows_at(const void *w, size_t row_bytes, uint32_t j, uint32_t n1, const void **wr) {
    uint32_t nr = n1 - j < RB ? n1 - j : RB;
    for (uint32_t r = 0; r < RB; r++) wr[r] = (const char *)w + (size_t)(j + (r < nr ? r : nr - 1)) * row_bytes;
    return nr;
}

static inline uint32_t toks_at(const moe_acts *x, size_t esize, uint32_t r0, const void **xr) {
    uint32_t tb = x->m - r0 < TB ? x->m - r0 : TB;
    for (uint32_t t = 0; t < TB; t++)
        xr[t] = (const char *)x->data + (size_t)(r0 + (t < tb ? t : tb - 1)) * x->ld * esize;
    return tb;
}

static inline void store_block(float res[TB][RB], uint32_t tb, uint32_t nr, uint32_t r0, uint32_t col,
                               const float *wscale, uint32_t j, float *out, size_t ldo) {
    for (uint32_t t = 0; t < tb; t++)
        for (uint32_t r = 0; r < nr; r++)
            out[(size_t)(r0 + t) * ldo + col + r] = wscale ? res[t][r] * wscale[j + r] : res[t][r];
}

/* Rows per group beyond one token pass (kern.h's moe_kern_group_rows). */
static inline uint32_t sub_rows(uint32_t n, uint32_t m, size_t row_bytes) {
    return moe_kern_group_rows(n, m, TB, RB, row_bytes);
}

#define GEMV_CVT(name, blk, wsize, scaled)                                                            \
    T_512 static void name(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,       \
                           const moe_acts *x, float *out, size_t ldo) {                                \
        const uint32_t sub = sub_rows(n1 - n0, x->m, (size_t)k * (wsize));                             \
        for (uint32_t jb = n0; jb < n1; jb += sub) {                                                   \
            const uint32_t je = n1 - jb < sub ? n1 : jb + sub;                                         \
            for (uint32_t r0 = 0; r0 < x->m; r0 += TB) {                                               \
                const void *xr[TB];                                                                    \
                uint32_t tb = toks_at(x, sizeof(float), r0, xr);                                       \
                const float *const *xf = (const float *const *)xr;                                     \
                for (uint32_t j = jb; j < je; j += RB) {                                               \
                    const void *wr[RB];                                                                \
                    uint32_t nr = rows_at(w, (size_t)k * (wsize), j, je, wr);                          \
                    float res[TB][RB];                                                                 \
                    switch (tb) {                                                                      \
                    case 1: blk(wr, xf, 1, k, res); break;                                             \
                    case 2: blk(wr, xf, 2, k, res); break;                                             \
                    case 3: blk(wr, xf, 3, k, res); break;                                             \
                    default: blk(wr, xf, 4, k, res); break;                                            \
                    }                                                                                  \
                    store_block(res, tb, nr, r0, j - n0, (scaled) ? ws : NULL, j, out, ldo);           \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
    }

GEMV_CVT(gemv_512_f32, blk_f32, 4, 0)
GEMV_CVT(gemv_512_bf16c, blk_bf16c, 2, 0)
GEMV_CVT(gemv_512_f16, blk_f16, 2, 0)
GEMV_CVT(gemv_512_i8c, blk_i8c, 1, 1)

/* bf16 weights x bf16 activations with the AVX512-BF16 pair dot product:
 * 32 weights per instruction, accumulated in f32. */
T_BF16 INLINE void blk_bf16dp(const void *const *w, const void *const *x, uint32_t tb, uint32_t k,
                              float res[TB][RB]) {
    __m512 acc[TB][RB];
    for (uint32_t t = 0; t < tb; t++)
        for (uint32_t r = 0; r < RB; r++) acc[t][r] = _mm512_setzero_ps();
    for (uint32_t i = 0; i < k; i += 32) {
        const __mmask32 m = k - i >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << (k - i)) - 1);
        __m512i wv[RB];
        for (uint32_t r = 0; r < RB; r++) {
            PREFETCH_FAR((const uint16_t *)w[r] + i);
            wv[r] = _mm512_maskz_loadu_epi16(m, (const uint16_t *)w[r] + i);
        }
        for (uint32_t t = 0; t < tb; t++) {
            __m512i xv = _mm512_maskz_loadu_epi16(m, (const uint16_t *)x[t] + i);
            for (uint32_t r = 0; r < RB; r++)
                acc[t][r] = _mm512_dpbf16_ps(acc[t][r], (__m512bh)wv[r], (__m512bh)xv);
        }
    }
    for (uint32_t t = 0; t < tb; t++)
        for (uint32_t r = 0; r < RB; r++) res[t][r] = _mm512_reduce_add_ps(acc[t][r]);
}

T_BF16 static void gemv_512_bf16dp(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,
                                   const moe_acts *x, float *out, size_t ldo) {
    (void)ws;
    const uint32_t sub = sub_rows(n1 - n0, x->m, (size_t)k * 2);
    for (uint32_t jb = n0; jb < n1; jb += sub) {
        const uint32_t je = n1 - jb < sub ? n1 : jb + sub;
        for (uint32_t r0 = 0; r0 < x->m; r0 += TB) {
            const void *xr[TB];
            uint32_t tb = toks_at(x, 2, r0, xr);
            for (uint32_t j = jb; j < je; j += RB) {
                const void *wr[RB];
                uint32_t nr = rows_at(w, (size_t)k * 2, j, je, wr);
                float res[TB][RB];
                switch (tb) {
                case 1: blk_bf16dp(wr, xr, 1, k, res); break;
                case 2: blk_bf16dp(wr, xr, 2, k, res); break;
                case 3: blk_bf16dp(wr, xr, 3, k, res); break;
                default: blk_bf16dp(wr, xr, 4, k, res); break;
                }
                store_block(res, tb, nr, r0, j - n0, NULL, j, out, ldo);
            }
        }
    }
}

/* s8 weights x u8 activations (q + 128) with VNNI: 64 products per
 * instruction into int32 lanes. The +128 offset is removed with the row's
 * weight sum, taken with the same instruction against a vector of ones.
 * Sums are reduced to int64 every KSEG elements so no lane overflows
 * (KSEG * 255 * 128 < 2^31). */
enum { KSEG = 1 << 15 };

T_VNNI INLINE void blk_vnni(const void *const *w, const void *const *x, uint32_t tb, uint32_t k,
                            int64_t res[TB][RB], int64_t wsum[RB]) {
    for (uint32_t t = 0; t < tb; t++)
        for (uint32_t r = 0; r < RB; r++) res[t][r] = 0;
    for (uint32_t r = 0; r < RB; r++) wsum[r] = 0;
    const __m512i ones = _mm512_set1_epi8(1);
    for (uint32_t s = 0; s < k; s += KSEG) {
        const uint32_t e = k - s > KSEG ? s + KSEG : k;
        __m512i acc[TB][RB], sum[RB];
        for (uint32_t r = 0; r < RB; r++) {
            sum[r] = _mm512_setzero_si512();
            for (uint32_t t = 0; t < tb; t++) acc[t][r] = _mm512_setzero_si512();
        }
        for (uint32_t i = s; i < e; i += 64) {
            const __mmask64 m = e - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (e - i)) - 1);
            __m512i wv[RB];
            for (uint32_t r = 0; r < RB; r++) {
                PREFETCH_FAR((const char *)w[r] + i);
                wv[r] = _mm512_maskz_loadu_epi8(m, (const int8_t *)w[r] + i);
                sum[r] = _mm512_dpbusd_epi32(sum[r], ones, wv[r]);
            }
            for (uint32_t t = 0; t < tb; t++) {
                __m512i xv = _mm512_maskz_loadu_epi8(m, (const uint8_t *)x[t] + i);
                for (uint32_t r = 0; r < RB; r++) acc[t][r] = _mm512_dpbusd_epi32(acc[t][r], xv, wv[r]);
            }
        }
        for (uint32_t r = 0; r < RB; r++) {
            wsum[r] += _mm512_reduce_add_epi32(sum[r]);
            for (uint32_t t = 0; t < tb; t++) res[t][r] += _mm512_reduce_add_epi32(acc[t][r]);
        }
    }
}

T_VNNI static void gemv_512_vnni(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,
                                 const moe_acts *x, float *out, size_t ldo) {
    const uint32_t sub = sub_rows(n1 - n0, x->m, k);
    for (uint32_t jb = n0; jb < n1; jb += sub) {
        const uint32_t je = n1 - jb < sub ? n1 : jb + sub;
        for (uint32_t r0 = 0; r0 < x->m; r0 += TB) {
            const void *xr[TB];
            uint32_t tb = toks_at(x, 1, r0, xr);
            for (uint32_t j = jb; j < je; j += RB) {
                const void *wr[RB];
                uint32_t nr = rows_at(w, k, j, je, wr);
                int64_t res[TB][RB], wsum[RB];
                switch (tb) {
                case 1: blk_vnni(wr, xr, 1, k, res, wsum); break;
                case 2: blk_vnni(wr, xr, 2, k, res, wsum); break;
                case 3: blk_vnni(wr, xr, 3, k, res, wsum); break;
                default: blk_vnni(wr, xr, 4, k, res, wsum); break;
                }
                for (uint32_t t = 0; t < tb; t++)
                    for (uint32_t r = 0; r < nr; r++)
                        out[(size_t)(r0 + t) * ldo + (j - n0) + r] =
                            (float)(res[t][r] - 128 * wsum[r]) * x->scale[r0 + t] * ws[j + r];
            }
        }
    }
}

/* ---- vectorized glue --------------------------------------------------- */

/* exp(x) as Cephes' expf: range reduction by ln 2 (split in two for
 * accuracy), a degree-6 polynomial, and scalef for the power of two. min
 * and max return their second operand when either is NaN, so x goes second
 * and NaN passes through. */
T_512 INLINE __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), x);
    x = _mm512_max_ps(_mm512_set1_ps(-87.3365447504f), x);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

T_512 static void exp_512(float *y, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp512(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, exp512(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* silu(g) * u = g / (1 + exp(-g)) * u, the reference's formula. Bound by
 * exp's polynomial (about 12 cycles per vector); rcp14 with a Newton step
 * instead of the division measured no faster. */
T_512 INLINE __m512 silu_mul512(__m512 g, __m512 u) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

T_512 static void silu_mul_512(float *h, const float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(h + i, silu_mul512(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(h + i, m, silu_mul512(_mm512_maskz_loadu_ps(m, g + i), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

T_BF16 static void to_bf16_512(uint16_t *q, const float *x, uint32_t k) {
    uint32_t i = 0;
    for (; i + 16 <= k; i += 16)
        _mm256_storeu_si256((__m256i *)(q + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
    if (i < k) {
        __mmask16 m = (__mmask16)((1u << (k - i)) - 1);
        _mm256_mask_storeu_epi16(q + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* Largest |x| of a row, or NaN if the row holds NaN or Inf, so that
 * non-finite inputs reach the output. Four independent maxima, and NaN
 * found with an unordered compare (max would drop it). */
T_512 static float amax_512(const float *x, uint32_t k) {
    __m512 m0 = _mm512_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    __mmask16 nan = 0;
    uint32_t i = 0;
    for (; i + 64 <= k; i += 64) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        __m512 c = _mm512_loadu_ps(x + i + 32), d = _mm512_loadu_ps(x + i + 48);
        nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(c, d, _CMP_UNORD_Q);
        m0 = _mm512_max_ps(m0, _mm512_abs_ps(a)), m1 = _mm512_max_ps(m1, _mm512_abs_ps(b));
        m2 = _mm512_max_ps(m2, _mm512_abs_ps(c)), m3 = _mm512_max_ps(m3, _mm512_abs_ps(d));
    }
    for (; i < k; i += 16) {
        __mmask16 m = (__mmask16)(k - i >= 16 ? 0xffffu : (1u << (k - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        m0 = _mm512_max_ps(m0, _mm512_abs_ps(v));
    }
    const float r = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
    return nan || isinf(r) ? NAN : r;
}

T_512 static void quant_512(uint8_t *q, const float *x, uint32_t k, float inv, int offset) {
    const __m512 vi = _mm512_set1_ps(inv);
    const __m512i off = _mm512_set1_epi32(offset);
    for (uint32_t i = 0; i < k; i += 16) {
        __mmask16 m = (__mmask16)(k - i >= 16 ? 0xffffu : (1u << (k - i)) - 1);
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vi));
        v = _mm512_add_epi32(_mm512_max_epi32(_mm512_min_epi32(v, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127)), off);
        _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(v)); /* in range: truncation is exact */
    }
}

/* What the CPU has, capped by MOE_CPU_ISA (isa.h). */
static bool cpu_512(void) { return moe_cpu_isa()->avx512; }
static bool cpu_bf16(void) { return moe_cpu_isa()->avx512_bf16; }
static bool cpu_vnni(void) { return moe_cpu_isa()->avx512_vnni; }

/* ---- AMX: weights in place as the A operand ------------------------------ */

/* Groups of 5..64 tokens (prefill over many experts) with bf16 weights run
 * on AMX with the roles swapped: 16 weight rows x 32 k of the registered
 * [n, k] matrix are exactly an A tile (one 64-byte line per row, loaded in
 * place with the row stride), and the tokens' activations, packed once per
 * call into the VNNI pair layout, are the B tile (16 k pairs x 16 tokens).
 * C = 16 weight rows x 16 tokens, stored transposed into out. No weight is
 * copied, so the kernel streams weights at memory speed for any m up to
 * 64, where oneDNN must first re-lay plain weights out. Needs k % 32 == 0
 * and n % 16 == 0 (true of every real model); moe_kernel_amx() says. */
#define T_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")))

typedef struct amx_cfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

/* Tiles: 0-1 C (token groups 0 and 1), 2 A (weights), 3-4 B. A constant
 * in memory: GCC 12 does not treat ldtilecfg as reading a local struct and
 * drops the stores that fill it (seen: rows and colsb left zero). */
static const amx_cfg tile_cfg = {.palette = 1,
                                 .colsb = {64, 64, 64, 64, 64},
                                 .rows = {16, 16, 16, 16, 16}};

T_AMX static void amx_begin(void) { _tile_loadconfig(&tile_cfg); }

/* Element offsets r * 16 of the 16 rows of a 16 x 16 block of 4-byte
 * elements (an AMX tile of 64-byte rows): plus i, they walk column i. The
 * packs scatter a token's pairs/quads down its column with them, and the
 * kernels gather a token's outputs from a stored C tile. */
__attribute__((target("avx512f"))) INLINE __m512i amx_col(void) { /* a subset of both AMX targets */
    return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                              _mm512_set1_epi32(16));
}

T_AMX static void amx_end(void) { _tile_release(); }

/* VNNI B layout of m tokens of bf16 activations: for each group of 16
 * tokens and each 32-wide k step, 16 rows (k pairs) of 16 tokens x 2 bf16
 * (1 KB); tokens past m are zero. Element (token t, k) is at
 * ((g * k_steps + k / 32) * 16 + (k % 32) / 2) * 32 + (t % 16) * 2 + k % 2. */
static size_t moe_amx_acts_bytes(uint32_t m, uint32_t k) { return (size_t)((m + 15) / 16) * 16 * k * 2; }

/* 32 activations of one token -> 16 bf16 pairs (cvtne2ps, rounding to
 * nearest even), scattered down the token's column of the 16 x 16 block. */
T_AMX static void amx_pack(uint16_t *b, const float *x, size_t ldx, uint32_t m, uint32_t k) {
    const uint32_t steps = k / 32;
    memset(b, 0, moe_amx_acts_bytes(m, k));
    const __m512i rows = amx_col();
    for (uint32_t t = 0; t < m; t++) {
        const float *xr = x + (size_t)t * ldx;
        uint32_t *g = (uint32_t *)(b + (size_t)(t / 16) * steps * 512) + (t % 16);
        for (uint32_t s = 0; s < steps; s++) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(xr + s * 32 + 16), _mm512_loadu_ps(xr + s * 32));
            _mm512_i32scatter_epi32(g + (size_t)s * 256, rows, (__m512i)v, 4);
        }
    }
}

T_AMX static void gemv_amx_bf16(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,
                                const moe_acts *x, float *out, size_t ldo) {
    (void)ws;
    const uint32_t steps = k / 32, groups = (x->m + 15) / 16;
    const uint16_t *b = x->data;
    float c[2][16][16];
    for (uint32_t j = n0; j < n1; j += 16) {
        const uint16_t *a = (const uint16_t *)w + (size_t)j * k;
        for (uint32_t g = 0; g < groups; g += 2) {
            const bool two = g + 1 < groups;
            const uint16_t *b0 = b + (size_t)g * steps * 512, *b1 = b0 + (size_t)steps * 512;
            _tile_zero(0);
            _tile_zero(1);
            for (uint32_t s = 0; s < steps; s++) {
                _tile_loadd(2, a + (size_t)s * 32, (long)k * 2);
                _tile_loadd(3, b0 + (size_t)s * 512, 64);
                _tile_dpbf16ps(0, 2, 3);
                if (two) {
                    _tile_loadd(4, b1 + (size_t)s * 512, 64);
                    _tile_dpbf16ps(1, 2, 4);
                }
            }
            _tile_stored(0, c[0], 64);
            if (two) _tile_stored(1, c[1], 64);
            const uint32_t tn = two ? 2 : 1;
            for (uint32_t q = 0; q < tn; q++)
                for (uint32_t i = 0; i < 16; i++) { /* token i's column of C: 16 outputs */
                    const uint32_t t = (g + q) * 16 + i;
                    if (t >= x->m) break;
                    const __m512i idx = _mm512_add_epi32(amx_col(), _mm512_set1_epi32((int)i));
                    _mm512_storeu_ps(out + (size_t)t * ldo + (j - n0), _mm512_i32gather_ps(idx, &c[q][0][0], 4));
                }
        }
    }
}


/* int8: s8 weight rows as A tiles (16 rows x 64 k), tokens quantized to s8
 * per token and packed in VNNI quads as B tiles (16 k quads x 16 tokens),
 * s8 x s8 dot products (tdpbssd, no offset to remove) into int32, scaled
 * by token and row at the store. |sum| <= k * 127 * 127 < 2^31 needs
 * k <= 65536; moe_kernel_amx() callers check k % 64 == 0 and that bound. */
#define T_AMX8 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-int8")))

T_AMX8 static void amx_pack_s8(int8_t *b, const float *x, size_t ldx, uint32_t m, uint32_t k, float *scale) {
    const uint32_t steps = k / 64;
    memset(b, 0, moe_amx_acts_bytes(m, k) / 2);
    const __m512i rows = amx_col();
    for (uint32_t t = 0; t < m; t++) {
        const float *xr = x + (size_t)t * ldx;
        float amax = amax_512(xr, k);
        if (amax < 127.0f / FLT_MAX) amax = 0.0f; /* 127 / amax would overflow: a zero row */
        scale[t] = amax > 0.0f ? amax / 127.0f : amax == 0.0f ? 1.0f : NAN;
        const __m512 inv = _mm512_set1_ps(amax > 0.0f && amax == amax ? 127.0f / amax : 0.0f);
        uint32_t *g = (uint32_t *)(b + (size_t)(t / 16) * steps * 1024) + (t % 16);
        for (uint32_t s = 0; s < steps; s++) {
            __m128i q[4];
            for (int j = 0; j < 4; j++) {
                __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + s * 64 + 16 * j), inv));
                q[j] = _mm512_cvtsepi32_epi8(v); /* |v| <= 127 by construction */
            }
            __m512i all = _mm512_inserti32x4(_mm512_castsi128_si512(q[0]), q[1], 1);
            all = _mm512_inserti32x4(_mm512_inserti32x4(all, q[2], 2), q[3], 3);
            _mm512_i32scatter_epi32(g + (size_t)s * 256, rows, all, 4);
        }
    }
}

T_AMX8 static void gemv_amx_i8(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,
                               const moe_acts *x, float *out, size_t ldo) {
    const uint32_t steps = k / 64, groups = (x->m + 15) / 16;
    const int8_t *b = x->data;
    int32_t c[2][16][16];
    for (uint32_t j = n0; j < n1; j += 16) {
        const int8_t *a = (const int8_t *)w + (size_t)j * k;
        for (uint32_t g = 0; g < groups; g += 2) {
            const bool two = g + 1 < groups;
            const int8_t *b0 = b + (size_t)g * steps * 1024, *b1 = b0 + (size_t)steps * 1024;
            _tile_zero(0);
            _tile_zero(1);
            for (uint32_t s = 0; s < steps; s++) {
                _tile_loadd(2, a + (size_t)s * 64, (long)k);
                _tile_loadd(3, b0 + (size_t)s * 1024, 64);
                _tile_dpbssd(0, 2, 3);
                if (two) {
                    _tile_loadd(4, b1 + (size_t)s * 1024, 64);
                    _tile_dpbssd(1, 2, 4);
                }
            }
            _tile_stored(0, c[0], 64);
            if (two) _tile_stored(1, c[1], 64);
            const uint32_t tn = two ? 2 : 1;
            const __m512 wsv = _mm512_loadu_ps(ws + j);
            for (uint32_t q = 0; q < tn; q++)
                for (uint32_t i = 0; i < 16; i++) { /* token i's column of C, scaled by row and token */
                    const uint32_t t = (g + q) * 16 + i;
                    if (t >= x->m) break;
                    const __m512i idx = _mm512_add_epi32(amx_col(), _mm512_set1_epi32((int)i));
                    const __m512 v = _mm512_cvtepi32_ps(_mm512_i32gather_epi32(idx, &c[q][0][0], 4));
                    _mm512_storeu_ps(out + (size_t)t * ldo + (j - n0),
                                     _mm512_mul_ps(_mm512_mul_ps(v, wsv), _mm512_set1_ps(x->scale[t])));
                }
        }
    }
}

/* ---- AVX2 (CPUs without AVX-512) ------------------------------------------
 * The same GEMV as GEMV_CVT with 8 weights a step: 4 rows x 2 tokens per
 * register block (8 accumulators, 4 weight vectors and a token's: 13 of
 * the 16 registers), weights widened to f32 as loaded (f32, bf16, f16
 * through F16C; int8 has its own kernel below), f32 activations, the
 * same 12 KB L2 prefetch per row and the same L2-sized row groups beyond
 * one token pass. A row's last k % 8 elements are summed in scalar code. */
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
enum { TB2 = 2 };

T_AVX2 INLINE __m256 ld2_f32(const void *p, size_t i) { return _mm256_loadu_ps((const float *)p + i); }
T_AVX2 INLINE __m256 ld2_bf16(const void *p, size_t i) {
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)p + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
T_AVX2 INLINE __m256 ld2_f16(const void *p, size_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)((const uint16_t *)p + i)));
}
T_AVX2 INLINE float hsum2(__m256 v) {
    const __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
}

#define BLOCK2_CVT(fn, LD, DT, WS)                                                                     \
    T_AVX2 INLINE void fn(const void *const *w, const float *const *x, uint32_t tb, uint32_t k,        \
                          float res[TB2][RB]) {                                                        \
        __m256 acc[TB2][RB];                                                                           \
        for (uint32_t t = 0; t < tb; t++)                                                              \
            for (uint32_t r = 0; r < RB; r++) acc[t][r] = _mm256_setzero_ps();                         \
        uint32_t i = 0;                                                                                \
        for (; i + 8 <= k; i += 8) {                                                                   \
            __m256 wv[RB];                                                                             \
            if (!((i * (WS)) & 63))                                                                    \
                for (uint32_t r = 0; r < RB; r++) PREFETCH_FAR((const char *)w[r] + i * (WS));         \
            for (uint32_t r = 0; r < RB; r++) wv[r] = LD(w[r], i);                                     \
            for (uint32_t t = 0; t < tb; t++) {                                                        \
                const __m256 xv = _mm256_loadu_ps(x[t] + i);                                           \
                for (uint32_t r = 0; r < RB; r++) acc[t][r] = _mm256_fmadd_ps(wv[r], xv, acc[t][r]);   \
            }                                                                                          \
        }                                                                                              \
        for (uint32_t t = 0; t < tb; t++)                                                              \
            for (uint32_t r = 0; r < RB; r++) {                                                        \
                float v = hsum2(acc[t][r]);                                                            \
                for (uint32_t e = i; e < k; e++) v += moe_load_f32(w[r], DT, e) * x[t][e];                 \
                res[t][r] = v;                                                                         \
            }                                                                                          \
    }

BLOCK2_CVT(blk2_f32, ld2_f32, MOE_DTYPE_F32, 4)
BLOCK2_CVT(blk2_bf16, ld2_bf16, MOE_DTYPE_BF16, 2)
BLOCK2_CVT(blk2_f16, ld2_f16, MOE_DTYPE_F16, 2)

#define GEMV2_CVT(name, blk, wsize, scaled)                                                           \
    T_AVX2 static void name(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,      \
                            const moe_acts *x, float *out, size_t ldo) {                               \
        const size_t rb = (size_t)k * (wsize);                                                         \
        const uint32_t sub = moe_kern_group_rows(n1 - n0, x->m, TB2, RB, rb);                          \
        for (uint32_t jb = n0; jb < n1; jb += sub) {                                                   \
            const uint32_t je = n1 - jb < sub ? n1 : jb + sub;                                         \
            for (uint32_t r0 = 0; r0 < x->m; r0 += TB2) {                                              \
                const uint32_t tb = x->m - r0 < TB2 ? x->m - r0 : TB2;                                 \
                const float *xr[TB2];                                                                  \
                for (uint32_t t = 0; t < TB2; t++)                                                     \
                    xr[t] = (const float *)x->data + (size_t)(r0 + (t < tb ? t : tb - 1)) * x->ld;     \
                for (uint32_t j = jb; j < je; j += RB) {                                               \
                    const void *wr[RB];                                                                \
                    const uint32_t nr = rows_at(w, rb, j, je, wr);                                     \
                    float res[TB2][RB];                                                                \
                    if (tb == 1) blk(wr, xr, 1, k, res);                                               \
                    else blk(wr, xr, TB2, k, res);                                                     \
                    for (uint32_t t = 0; t < tb; t++)                                                  \
                        for (uint32_t r = 0; r < nr; r++)                                              \
                            out[(size_t)(r0 + t) * ldo + (j - n0) + r] =                               \
                                (scaled) ? res[t][r] * ws[j + r] : res[t][r];                          \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
    }

GEMV2_CVT(gemv_avx2_f32, blk2_f32, 4, 0)
GEMV2_CVT(gemv_avx2_bf16, blk2_bf16, 2, 0)
GEMV2_CVT(gemv_avx2_f16, blk2_f16, 2, 0)

/* int8 weights against int8 activations without VNNI: the tokens are u8
 * (q + 128, kind MOE_ACT_U8) made signed again, and each pair of products
 * is taken as vpmaddubsw(|w|, sign(x, w)), which cannot saturate (|w|,
 * |x| <= 127: 2 x 127 x 127 < 2^15), then widened with vpmaddwd; int32
 * sums (exact up to rows of about a million), the token's and the row's
 * scales at the end. 32 weights a step, 4 rows x 2 tokens. */
/* One step of 32: rows w[r] + i against tokens x[t] + i. */
T_AVX2 INLINE void step2_i8u(const int8_t *const *w, const uint8_t *const *x, size_t i, uint32_t tb,
                             __m256i acc[TB2][RB]) {
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    __m256i xv[TB2];
    for (uint32_t t = 0; t < tb; t++)
        xv[t] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(x[t] + i)), flip);
    for (uint32_t r = 0; r < RB; r++) {
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(const void *)(w[r] + i));
        const __m256i aw = _mm256_sign_epi8(wv, wv);
        for (uint32_t t = 0; t < tb; t++) {
            const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[t], wv));
            acc[t][r] = _mm256_add_epi32(acc[t][r], _mm256_madd_epi16(p, ones));
        }
    }
}

T_AVX2 INLINE void blk2_i8u(const int8_t *const *w, const uint8_t *const *x, uint32_t tb, uint32_t k,
                            int32_t res[TB2][RB]) {
    __m256i acc[TB2][RB];
    for (uint32_t t = 0; t < tb; t++)
        for (uint32_t r = 0; r < RB; r++) acc[t][r] = _mm256_setzero_si256();
    uint32_t i = 0;
    for (; i + 32 <= k; i += 32) {
        if (!(i & 63))
            for (uint32_t r = 0; r < RB; r++) PREFETCH_FAR(w[r] + i);
        step2_i8u(w, x, i, tb, acc);
    }
    if (i < k) { /* the last k % 32: zero weights and zero (128) activations after them */
        int8_t wt[RB][32] = {{0}};
        uint8_t xt[TB2][32];
        memset(xt, 128, sizeof xt);
        const int8_t *wp[RB];
        const uint8_t *xp[TB2];
        for (uint32_t r = 0; r < RB; r++) memcpy(wt[r], w[r] + i, k - i), wp[r] = wt[r];
        for (uint32_t t = 0; t < tb; t++) memcpy(xt[t], x[t] + i, k - i), xp[t] = xt[t];
        step2_i8u(wp, xp, 0, tb, acc);
    }
    for (uint32_t t = 0; t < tb; t++)
        for (uint32_t r = 0; r < RB; r++) {
            const __m128i lo = _mm_add_epi32(_mm256_castsi256_si128(acc[t][r]), _mm256_extracti128_si256(acc[t][r], 1));
            const __m128i h = _mm_add_epi32(lo, _mm_shuffle_epi32(lo, _MM_SHUFFLE(1, 0, 3, 2)));
            res[t][r] = _mm_cvtsi128_si32(_mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1))));
        }
}

T_AVX2 static void gemv_avx2_i8u(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,
                                 const moe_acts *x, float *out, size_t ldo) {
    const uint32_t sub = moe_kern_group_rows(n1 - n0, x->m, TB2, RB, k);
    for (uint32_t jb = n0; jb < n1; jb += sub) {
        const uint32_t je = n1 - jb < sub ? n1 : jb + sub;
        for (uint32_t r0 = 0; r0 < x->m; r0 += TB2) {
            const uint32_t tb = x->m - r0 < TB2 ? x->m - r0 : TB2;
            const uint8_t *xr[TB2];
            for (uint32_t t = 0; t < TB2; t++)
                xr[t] = (const uint8_t *)x->data + (size_t)(r0 + (t < tb ? t : tb - 1)) * x->ld;
            for (uint32_t j = jb; j < je; j += RB) {
                const void *wr[RB];
                const uint32_t nr = rows_at(w, k, j, je, wr);
                int32_t res[TB2][RB];
                if (tb == 1) blk2_i8u((const int8_t *const *)wr, xr, 1, k, res);
                else blk2_i8u((const int8_t *const *)wr, xr, TB2, k, res);
                for (uint32_t t = 0; t < tb; t++)
                    for (uint32_t r = 0; r < nr; r++)
                        out[(size_t)(r0 + t) * ldo + (j - n0) + r] = (float)res[t][r] * x->scale[r0 + t] * ws[j + r];
            }
        }
    }
}

static bool cpu_avx2(void) { return moe_cpu_isa()->avx2; }

#else
static bool cpu_512(void) { return false; }
static bool cpu_avx2(void) { return false; }
static bool cpu_bf16(void) { return false; }
static bool cpu_vnni(void) { return false; }
#endif

/* ---- dispatch ---------------------------------------------------------- */

moe_kernel moe_kernel_select(moe_dtype t, bool portable) {
    moe_kernel k = {MOE_ACT_F32, NULL, "c"};
    if (moe_dtype_is_block(t)) return moe_kernel_select_block(t, portable);
    switch (t) {
    case MOE_DTYPE_F32: k.gemv = gemv_c_f32; break;
    case MOE_DTYPE_BF16: k.gemv = gemv_c_bf16; break;
    case MOE_DTYPE_F16: k.gemv = gemv_c_f16; break;
    case MOE_DTYPE_I8: k.gemv = gemv_c_i8; break;
    default: return k;
    }
    if (portable) return k;
#ifdef MOE_X86
    __builtin_cpu_init();
    if (!cpu_512() && cpu_avx2()) switch (t) {
        case MOE_DTYPE_F32: return (moe_kernel){MOE_ACT_F32, gemv_avx2_f32, "avx2"};
        case MOE_DTYPE_F16: return (moe_kernel){MOE_ACT_F32, gemv_avx2_f16, "avx2"};
        case MOE_DTYPE_BF16: return (moe_kernel){MOE_ACT_F32, gemv_avx2_bf16, "avx2"};
        case MOE_DTYPE_I8: return (moe_kernel){MOE_ACT_U8, gemv_avx2_i8u, "avx2"};
        default: return k;
        }
    if (!cpu_512()) return k;
    switch (t) {
    case MOE_DTYPE_F32: return (moe_kernel){MOE_ACT_F32, gemv_512_f32, "avx512"};
    case MOE_DTYPE_F16: return (moe_kernel){MOE_ACT_F32, gemv_512_f16, "avx512"};
    case MOE_DTYPE_BF16:
        if (cpu_bf16()) return (moe_kernel){MOE_ACT_BF16, gemv_512_bf16dp, "avx512_bf16"};
        return (moe_kernel){MOE_ACT_F32, gemv_512_bf16c, "avx512"};
    case MOE_DTYPE_I8:
        if (cpu_vnni()) return (moe_kernel){MOE_ACT_U8, gemv_512_vnni, "avx512_vnni"};
        return (moe_kernel){MOE_ACT_F32, gemv_512_i8c, "avx512"};
    default: break;
    }
#endif
    return k;
}

const char *moe_cpu_kernel(moe_dtype t) {
    return moe_dtype_size(t) || moe_dtype_is_block(t) ? moe_kernel_select(t, false).name : "";
}

/* Bytes per element; the block kinds: 1, their blocks' headers aside
 * (moe_acts_bytes counts those). */
size_t moe_act_size(moe_act_kind a) {
    return a == MOE_ACT_F32 ? 4 : a == MOE_ACT_BF16 || a == MOE_ACT_BF16_VNNI ? 2 : 1; /* U8, S8, S8_VNNI */
}

static float amax_c(const float *x, uint32_t k) {
    float m = 0.0f;
    for (uint32_t i = 0; i < k; i++) {
        if (!isfinite(x[i])) return NAN;
        m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    }
    return m;
}

moe_acts moe_acts_describe(moe_act_kind a, uint32_t m, uint32_t k, const float *x, size_t ldx, void *buf,
                           float *scale) {
    moe_acts r = {.kind = a, .m = m, .k = k, .ld = k, .data = buf, .scale = NULL};
    if (a == MOE_ACT_F32) r.data = x, r.ld = ldx;
    if (a == MOE_ACT_BF16_VNNI || a == MOE_ACT_S8_VNNI) r.ld = 0;
    if (a == MOE_ACT_S8_VNNI || a == MOE_ACT_U8 || a == MOE_ACT_S8) r.scale = scale;
    return r;
}

moe_acts moe_acts_prepare(moe_act_kind a, uint32_t m, uint32_t k, const float *x, size_t ldx, void *buf,
                          float *scale) {
    moe_acts r = {.kind = a, .m = m, .k = k, .ld = k, .data = buf, .scale = NULL};
    if (a == MOE_ACT_Q8_0 || a == MOE_ACT_Q8_1 || a == MOE_ACT_Q8_K) {
        moe_acts_quantize_blocks(a, m, k, x, ldx, buf);
        return r;
    }
    if (a == MOE_ACT_F32) { /* used in place */
        r.data = x;
        r.ld = ldx;
        return r;
    }
#ifdef MOE_X86
    if (a == MOE_ACT_BF16_VNNI) { /* only chosen where AMX runs */
        amx_pack(buf, x, ldx, m, k);
        r.ld = 0;
        return r;
    }
    if (a == MOE_ACT_S8_VNNI) {
        amx_pack_s8(buf, x, ldx, m, k, scale);
        r.ld = 0;
        r.scale = scale;
        return r;
    }
#endif
    for (uint32_t row = 0; row < m; row++) {
        const float *xr = x + (size_t)row * ldx;
        if (a == MOE_ACT_BF16) {
            uint16_t *q = (uint16_t *)buf + (size_t)row * k;
#ifdef MOE_X86
            if (cpu_bf16()) {
                to_bf16_512(q, xr, k);
                continue;
            }
#endif
            for (uint32_t i = 0; i < k; i++) q[i] = moe_f32_to_bf16(xr[i]);
            continue;
        }
        uint8_t *q = (uint8_t *)buf + (size_t)row * k;
        float amax;
#ifdef MOE_X86
        amax = cpu_512() ? amax_512(xr, k) : amax_c(xr, k);
#else
        amax = amax_c(xr, k);
#endif
        /* scale NaN marks a non-finite row: every output of it is NaN. */
        if (amax < 127.0f / FLT_MAX) amax = 0.0f; /* 127 / amax would overflow: a zero row */
        scale[row] = amax > 0.0f ? amax / 127.0f : amax == 0.0f ? 1.0f : NAN;
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        const int offset = a == MOE_ACT_U8 ? 128 : 0;
#ifdef MOE_X86
        if (cpu_512()) {
            quant_512(q, xr, k, amax == amax ? inv : 0.0f, offset);
            continue;
        }
#endif
        for (uint32_t i = 0; i < k; i++) {
            float v = amax == amax ? rintf(xr[i] * inv) : 0.0f;
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            q[i] = (uint8_t)((int)v + offset); /* S8: two's complement */
        }
    }
    r.scale = a == MOE_ACT_U8 || a == MOE_ACT_S8 ? scale : NULL;
    return r;
}

void moe_silu_mul(float *h, const float *g, const float *u, size_t n) {
#ifdef MOE_X86
    if (cpu_512()) {
        silu_mul_512(h, g, u, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) h[i] = moe_silu(g[i]) * u[i];
}

void moe_exp_f32(float *y, const float *x, size_t n) {
#ifdef MOE_X86
    if (cpu_512()) {
        exp_512(y, x, n);
        return;
    }
#endif
    for (size_t i = 0; i < n; i++) /* clamped as the vector code clamps */
        y[i] = x[i] != x[i] ? x[i] : expf(x[i] > 88.3762626647949f ? 88.3762626647949f : x[i] < -87.3365447504f ? -87.3365447504f : x[i]);
}

/* ---- AMX dispatch ----------------------------------------------------- */

#if defined(MOE_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
/* Linux hands out the AMX tile state only to processes that ask for it. */
static bool amx_permitted(void) {
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return moe_cpu_isa()->amx && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif

moe_kernel moe_kernel_amx(moe_dtype t) {
    moe_kernel k = {MOE_ACT_BF16_VNNI, NULL, "amx_bf16"};
#if defined(MOE_X86) && defined(__linux__)
    __builtin_cpu_init();
    if (t == MOE_DTYPE_BF16 && amx_permitted()) k.gemv = gemv_amx_bf16;
    if (t == MOE_DTYPE_I8 && amx_permitted()) k = (moe_kernel){MOE_ACT_S8_VNNI, gemv_amx_i8, "amx_int8"};
#else
    (void)t;
#endif
    return k;
}

void moe_amx_begin(void) {
#if defined(MOE_X86) && defined(__linux__)
    amx_begin();
#endif
}

void moe_amx_end(void) {
#if defined(MOE_X86) && defined(__linux__)
    amx_end();
#endif
}

size_t moe_acts_bytes(moe_act_kind a, uint32_t m, uint32_t k) {
    if (a == MOE_ACT_Q8_0) return (size_t)m * moe_qact_row_bytes(MOE_QACT_Q8_0, k);
    if (a == MOE_ACT_Q8_1) return (size_t)m * moe_qact_row_bytes(MOE_QACT_Q8_1, k);
    if (a == MOE_ACT_Q8_K) return (size_t)m * moe_qact_row_bytes(MOE_QACT_Q8_K, k);
#ifdef MOE_X86
    if (a == MOE_ACT_BF16_VNNI) return moe_amx_acts_bytes(m, k);
    if (a == MOE_ACT_S8_VNNI) return moe_amx_acts_bytes(m, k) / 2;
#endif
    return (size_t)m * k * moe_act_size(a);
}
