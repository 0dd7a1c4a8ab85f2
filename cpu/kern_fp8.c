/* kern_fp8.c - the CPU engine's kernels for FP8 checkpoints' weights
 * (MOE_DTYPE_FP8_E4M3: e4m3fn values in row-wise blocks of 128, an f32
 * scale each; common/quant.h). Unlike GGUF's formats (kern_quant.c) the
 * values are floats, not integer codes: no int8 dot product takes them
 * exactly, so the activations stay f32 and each weight is widened to f32
 * in registers, as the f16 kernel (kern.c) widens f16.
 *
 * The widening is exact and costs three integer instructions per 16
 * weights before the F16C conversion: a code sign-extended to 16 bits and
 * shifted left by 7 has the e4m3 exponent and mantissa where an f16 keeps
 * them (exponent bias 15 against 7: the value times 2^-8, subnormals
 * included) and its sign in the top bit; the sign's copy at bit 14, the
 * f16 exponent's top bit, is masked off. The block scale times 2^8 undoes
 * the bias (a power of two: the product is the reference dequantizer's
 * d * value, rounded once). NaN codes (0x7f, 0xff) are refused by the
 * loader; one that gets here gives a finite wrong value, never a crash. */
#include "kern.h"

#include <string.h>

#include "isa.h"
#include "quant.h"

/* ---- portable C ------------------------------------------------------- */

static void gemv_c_fp8(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1, const moe_acts *x,
                       float *out, size_t ldo) {
    (void)ws;
    float lut[256];
    for (int c = 0; c < 256; c++) lut[c] = moe_e4m3_to_f32((uint8_t)c);
    const uint32_t nb = k / MOE_FP8_BLOCK;
    for (uint32_t r = 0; r < x->m; r++) {
        const float *xr = (const float *)x->data + (size_t)r * x->ld;
        for (uint32_t j = n0; j < n1; j++) {
            const moe_block_fp8 *b = (const moe_block_fp8 *)w + (size_t)j * nb;
            float acc = 0.0f;
            for (uint32_t i = 0; i < nb; i++) {
                float s = 0.0f;
                for (uint32_t l = 0; l < MOE_FP8_BLOCK; l++) s += lut[b[i].qs[l]] * xr[i * MOE_FP8_BLOCK + l];
                acc += b[i].d * s;
            }
            out[(size_t)r * ldo + (j - n0)] = acc;
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))
/* Prefetch into L2, 12 KB ahead in each row, as the other kernels do
 * (kern.c's PF_FAR: measured there). */
enum { PF8 = 12288 };

/* A register block: RB rows against up to TB tokens, the loops over both
 * unrolled at their constant bounds (tb too, after inlining). W16 widens
 * 16 (AVX-512) or 8 (AVX2) codes. */
#define FP8_BLOCK_KERNEL(TGT, name, VEC, N, RB, TB, WIDEN, SET1, MUL, FMA, LDX, ZERO, REDUCE)                  \
    TGT INLINE void name(const moe_block_fp8 *const *w, const float *const *x, uint32_t tb, uint32_t nb,        \
                         float res[TB][RB]) {                                                                  \
        VEC acc[TB][RB];                                                                                       \
        for (uint32_t t = 0; t < tb; t++)                                                                      \
            for (uint32_t r = 0; r < RB; r++) acc[t][r] = ZERO();                                              \
        for (uint32_t b = 0; b < nb; b++) {                                                                    \
            VEC d[RB];                                                                                         \
            for (uint32_t r = 0; r < RB; r++) {                                                                \
                const char *p = (const char *)&w[r][b] + PF8;                                                  \
                _mm_prefetch(p, _MM_HINT_T1), _mm_prefetch(p + 64, _MM_HINT_T1),                               \
                    _mm_prefetch(p + 128, _MM_HINT_T1);                                                        \
                d[r] = SET1(w[r][b].d * 256.0f);                                                               \
            }                                                                                                  \
            for (uint32_t i = 0; i < MOE_FP8_BLOCK; i += (N)) {                                                \
                VEC wv[RB];                                                                                    \
                for (uint32_t r = 0; r < RB; r++) wv[r] = MUL(WIDEN(w[r][b].qs + i), d[r]);                    \
                for (uint32_t t = 0; t < tb; t++) {                                                            \
                    const VEC xv = LDX(x[t] + (size_t)b * MOE_FP8_BLOCK + i);                                  \
                    for (uint32_t r = 0; r < RB; r++) acc[t][r] = FMA(wv[r], xv, acc[t][r]);                   \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        for (uint32_t t = 0; t < tb; t++)                                                                      \
            for (uint32_t r = 0; r < RB; r++) res[t][r] = REDUCE(acc[t][r]);                                   \
    }

/* The GEMV over rows n0..n1 and all tokens: rows past n1 in a register
 * block repeat the last one (results dropped), tokens likewise. */
#define FP8_GEMV(TGT, name, blk, RB, TB)                                                                       \
    TGT static void name(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1, const moe_acts *x, \
                         float *out, size_t ldo) {                                                             \
        (void)ws;                                                                                              \
        const uint32_t nb = k / MOE_FP8_BLOCK;                                                                 \
        const size_t row_bytes = (size_t)nb * sizeof(moe_block_fp8);                                           \
        const uint32_t sub = moe_kern_group_rows(n1 - n0, x->m, TB, RB, row_bytes);                                   \
        for (uint32_t jb = n0; jb < n1; jb += sub) {                                                           \
            const uint32_t je = n1 - jb < sub ? n1 : jb + sub;                                                 \
            for (uint32_t r0 = 0; r0 < x->m; r0 += TB) {                                                       \
                const uint32_t tb = x->m - r0 < TB ? x->m - r0 : TB;                                           \
                const float *xr[TB];                                                                           \
                for (uint32_t t = 0; t < TB; t++)                                                              \
                    xr[t] = (const float *)x->data + (size_t)(r0 + (t < tb ? t : tb - 1)) * x->ld;             \
                for (uint32_t j = jb; j < je; j += RB) {                                                       \
                    const uint32_t nr = je - j < RB ? je - j : RB;                                             \
                    const moe_block_fp8 *wr[RB];                                                               \
                    for (uint32_t r = 0; r < RB; r++)                                                          \
                        wr[r] = (const moe_block_fp8 *)w + (size_t)(j + (r < nr ? r : nr - 1)) * nb;           \
                    float res[TB][RB];                                                                         \
                    switch (tb) {                                                                              \
                    case 1: blk(wr, xr, 1, nb, res); break;                                                    \
                    case 2: blk(wr, xr, 2, nb, res); break;                                                    \
                    case 3: blk(wr, xr, 3, nb, res); break;                                                    \
                    default: blk(wr, xr, TB, nb, res); break;                                                  \
                    }                                                                                          \
                    for (uint32_t t = 0; t < tb; t++)                                                          \
                        for (uint32_t r = 0; r < nr; r++) out[(size_t)(r0 + t) * ldo + (j - n0) + r] = res[t][r]; \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
    }

/* AVX-512: 4 rows x 4 tokens, 16 weights per step. */
#define T_512F __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
T_512F INLINE __m512 e4m3x16(const uint8_t *q) {
    const __m256i h = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)q));
    return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16((short)0xBF80)));
}
T_512F INLINE __m512 ldx16(const float *p) { return _mm512_loadu_ps(p); }
T_512F INLINE float red16(__m512 v) { return _mm512_reduce_add_ps(v); }
FP8_BLOCK_KERNEL(T_512F, blk_512_fp8, __m512, 16, 4, 4, e4m3x16, _mm512_set1_ps, _mm512_mul_ps, _mm512_fmadd_ps,
                 ldx16, _mm512_setzero_ps, red16)
FP8_GEMV(T_512F, gemv_512_fp8, blk_512_fp8, 4, 4)

/* AVX2: 4 rows x 2 tokens (13 of the 16 registers), 8 weights per step. */
#define T_AVX2F __attribute__((target("avx2,fma,f16c")))
T_AVX2F INLINE __m256 e4m3x8(const uint8_t *q) {
    const __m128i h = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)q));
    return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(h, 7), _mm_set1_epi16((short)0xBF80)));
}
T_AVX2F INLINE __m256 ldx8(const float *p) { return _mm256_loadu_ps(p); }
T_AVX2F INLINE float red8(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}
FP8_BLOCK_KERNEL(T_AVX2F, blk_avx2_fp8, __m256, 8, 4, 2, e4m3x8, _mm256_set1_ps, _mm256_mul_ps, _mm256_fmadd_ps, ldx8,
                 _mm256_setzero_ps, red8)
FP8_GEMV(T_AVX2F, gemv_avx2_fp8, blk_avx2_fp8, 4, 2)
#define MOE_X86_FP8 1
#endif

moe_kernel moe_kernel_select_fp8(bool portable) {
    moe_kernel k = {MOE_ACT_F32, gemv_c_fp8, "c"};
    if (portable) return k;
#ifdef MOE_X86_FP8
    const moe_isa *isa = moe_cpu_isa();
    if (isa->avx512) return (moe_kernel){MOE_ACT_F32, gemv_512_fp8, "avx512"};
    if (isa->avx2) return (moe_kernel){MOE_ACT_F32, gemv_avx2_fp8, "avx2"};
#endif
    return k;
}
