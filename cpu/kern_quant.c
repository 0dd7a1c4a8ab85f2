/* kern_quant.c - the CPU engine's kernels for GGUF's block formats (kern.h):
 * a row of weights stays in its blocks as the file stores them, the
 * activations are quantized per block to int8 (common/quant.h's moe_qact
 * blocks), and each block's dot product is an exact integer sum with the
 * block scales applied in f32, as llama.cpp computes them.
 *
 * The plain C kernel calls common/quant.c's reference dot product for
 * every (token, row): it is the second implementation the SIMD kernels are
 * tested against, and the path of a CPU without them. */
#include "kern.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"
#include "quant.h"

static moe_qact qact_of(moe_act_kind a) {
    return a == MOE_ACT_Q8_0 ? MOE_QACT_Q8_0 : a == MOE_ACT_Q8_1 ? MOE_QACT_Q8_1 : MOE_QACT_Q8_K;
}

moe_act_kind moe_act_of_block(moe_dtype t) {
    const moe_quant_format *f = moe_quant_format_of(t);
    if (!f) return MOE_ACT_Q8_0;
    if (t == MOE_DTYPE_FP8_E4M3) return MOE_ACT_F32;
    return f->act == MOE_QACT_Q8_1 ? MOE_ACT_Q8_1 : f->act == MOE_QACT_Q8_K ? MOE_ACT_Q8_K : MOE_ACT_Q8_0;
}

#if defined(__x86_64__) && defined(__GNUC__)
static void qact_512(moe_act_kind a, uint32_t k, const float *x, void *buf);
#endif

void moe_acts_quantize_blocks(moe_act_kind a, uint32_t m, uint32_t k, const float *x, size_t ldx, void *buf) {
    const moe_qact q = qact_of(a);
    const size_t rb = moe_qact_row_bytes(q, k);
#if defined(__x86_64__) && defined(__GNUC__)
    if (moe_cpu_isa()->avx512) {
        for (uint32_t r = 0; r < m; r++) qact_512(a, k, x + (size_t)r * ldx, (char *)buf + (size_t)r * rb);
        return;
    }
#endif
    for (uint32_t r = 0; r < m; r++) (void)moe_qact_quantize(q, x + (size_t)r * ldx, (char *)buf + (size_t)r * rb, k);
}

/* ---- portable C ------------------------------------------------------- */

#define GEMV_BLOCK_C(name, dt)                                                                         \
    static void name(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,              \
                     const moe_acts *x, float *out, size_t ldo) {                                       \
        (void)ws;                                                                                       \
        const size_t wrb = moe_dtype_row_bytes(dt, k), arb = moe_qact_row_bytes(qact_of(x->kind), k);   \
        for (uint32_t r = 0; r < x->m; r++) {                                                           \
            const char *xr = (const char *)x->data + (size_t)r * arb;                                   \
            for (uint32_t j = n0; j < n1; j++)                                                          \
                out[(size_t)r * ldo + (j - n0)] = moe_quant_dot(dt, (const char *)w + (size_t)j * wrb, xr, k); \
        }                                                                                               \
    }
GEMV_BLOCK_C(gemv_c_q4_0, MOE_DTYPE_Q4_0)
GEMV_BLOCK_C(gemv_c_q4_1, MOE_DTYPE_Q4_1)
GEMV_BLOCK_C(gemv_c_q5_0, MOE_DTYPE_Q5_0)
GEMV_BLOCK_C(gemv_c_q5_1, MOE_DTYPE_Q5_1)
GEMV_BLOCK_C(gemv_c_q8_0, MOE_DTYPE_Q8_0)
GEMV_BLOCK_C(gemv_c_q2_K, MOE_DTYPE_Q2_K)
GEMV_BLOCK_C(gemv_c_q3_K, MOE_DTYPE_Q3_K)
GEMV_BLOCK_C(gemv_c_q4_K, MOE_DTYPE_Q4_K)
GEMV_BLOCK_C(gemv_c_q5_K, MOE_DTYPE_Q5_K)
GEMV_BLOCK_C(gemv_c_q6_K, MOE_DTYPE_Q6_K)
GEMV_BLOCK_C(gemv_c_iq4_nl, MOE_DTYPE_IQ4_NL)
GEMV_BLOCK_C(gemv_c_iq4_xs, MOE_DTYPE_IQ4_XS)
GEMV_BLOCK_C(gemv_c_mxfp4, MOE_DTYPE_MXFP4)

static moe_gemv_fn c_kernel(moe_dtype t) {
    switch (t) {
    case MOE_DTYPE_Q4_0: return gemv_c_q4_0;
    case MOE_DTYPE_Q4_1: return gemv_c_q4_1;
    case MOE_DTYPE_Q5_0: return gemv_c_q5_0;
    case MOE_DTYPE_Q5_1: return gemv_c_q5_1;
    case MOE_DTYPE_Q8_0: return gemv_c_q8_0;
    case MOE_DTYPE_Q2_K: return gemv_c_q2_K;
    case MOE_DTYPE_Q3_K: return gemv_c_q3_K;
    case MOE_DTYPE_Q4_K: return gemv_c_q4_K;
    case MOE_DTYPE_Q5_K: return gemv_c_q5_K;
    case MOE_DTYPE_Q6_K: return gemv_c_q6_K;
    case MOE_DTYPE_IQ4_NL: return gemv_c_iq4_nl;
    case MOE_DTYPE_IQ4_XS: return gemv_c_iq4_xs;
    case MOE_DTYPE_MXFP4: return gemv_c_mxfp4;
    default: return NULL;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOE_X86 1

/* ---- AVX-512 ------------------------------------------------------------
 * Each super-block of a weight row is unpacked once (codes to bytes,
 * sub-block scales to 16-bit lanes) and used for every token of the pass;
 * each token's activation block is loaded (and put in the order the codes
 * come in) once and used for both rows of a pair. Unsigned codes (nibbles,
 * q6_K's 6-bit codes) meet the int8 activations in vpmaddubsw (pairs of u8
 * x s8 into s16, which cannot saturate here: 63 * 127 * 2 < 2^15), and the
 * sub-block scales are applied in the instruction that widens to int32
 * (vpdpwssd with VNNI, else vpmaddwd and an add), so a super-block's
 * integer sum needs one conversion to f32. Mins and code offsets are
 * applied through the activations' sums of 16. */

#define T_512Q __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define T_VNNIQ __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx512vnni")))
#define INLINE static inline __attribute__((always_inline))

enum { TQ = 4 };     /* tokens per pass over a pair of rows */
/* Software prefetch in each weight row, PFQ bytes ahead, into L2: the
 * kernels do enough work per byte that the out-of-order window covers
 * only about 1 KB of a row, far less than a DRAM access's latency, and a
 * prefetch into L1 from further ahead runs out of L1 miss buffers. One
 * core, q4_K, cold (2048-element rows): 0.39 of DRAM with 1 KB into L1,
 * 0.70 with 8 KB into L2; two cores 0.56 -> 0.89-0.93 with 8-16 KB. */
enum { PFQ = 12288 };
#define PF_HINT _MM_HINT_T1

T_512Q INLINE float f16(uint16_t h) { return _cvtsh_ss(h); }

/* The q4_K / q5_K sub-block scales and mins from their 12 packed bytes
 * (read as 16: the 4 after them are the block's codes), in vector
 * registers (scalar code here would go through the stack, and a load of
 * four just-stored words stalls): scales in bytes 0..7, mins in 8..15.
 * In 32-bit words u0..u2 of the bytes: scales 0-3 = u0 & 0x3f.., 4-7 =
 * (u2 & 0x0f..) | (u0 >> 6 & 3..) << 4; mins 0-3 = u1 & 0x3f.., 4-7 =
 * (u2 >> 4 & 0x0f..) | (u1 >> 6 & 3..) << 4. */
T_512Q INLINE __m128i kscales(const uint8_t *s12) {
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)s12);
    const __m128i a = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */
    const __m128i b = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(a, _mm_set_epi32(4, 0, 0, 0)),
                                     _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
    const __m128i hi = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set_epi32(0x30303030, 0, 0x30303030, 0));
    return _mm_or_si128(lo, hi);
}

/* Scales as 16-bit lanes, by in-lane byte shuffles (vpshufb; a cross-lane
 * vpermw costs more): with the scale bytes broadcast to every 128-bit
 * lane, PAT2(a, b) puts byte a zero-extended in the first 16 word lanes
 * and byte b in the last 16 (q4_K: a maddubs result's first 16 lanes are
 * one sub-block of 32, the last 16 another); with 16-bit scales broadcast,
 * PAT4(a) puts word a + L in every word of 128-bit lane L (q6_K:
 * sub-blocks of 16). A control byte 0x80 zeroes. */
#define W1(i) ((long long)((0x8000ull | (unsigned)(i)) * 0x0001000100010001ull))
#define PAT2(a, b) _mm512_set_epi64(W1(b), W1(b), W1(b), W1(b), W1(a), W1(a), W1(a), W1(a))
#define W2(i) ((long long)((((unsigned)(2 * (i) + 1) << 8 | (unsigned)(2 * (i))) & 0xffffull) * 0x0001000100010001ull))
#define PAT4(a) _mm512_set_epi64(W2(a + 3), W2(a + 3), W2(a + 2), W2(a + 2), W2(a + 1), W2(a + 1), W2(a), W2(a))

/* Shift counts: lo in the low 256 bits, hi in the high 256. The shifts are
 * of 32-bit lanes (vpsrlvd; vpsrlvw is slow on some CPUs): bits that cross
 * into a neighbouring byte are masked off, so each byte moves alone. */
#define SPLIT32(lo, hi) _mm512_inserti64x4(_mm512_set1_epi32(lo), _mm256_set1_epi32(hi), 1)

/* A super-block of one row, unpacked: 4 vectors of 64 codes, their
 * scales per 16-bit lane, the mins (or code offsets) per pair of 16-sums,
 * and the f32 scales of the integer sums. */
typedef struct sbw {
    __m512i c[4], s[4];
    __m256i mn;
    float d, dm;
} sbw;

/* A token's activation block, in the order of the codes' vectors. */
typedef struct sba {
    __m512i x[4];
    __m256i bs;
    float d;
} sba;

/* q4_K / q5_K: element 64c + 32h + l is nibble h of qs[32c + l], so a
 * 64-byte load of codes holds sub-blocks 2c and 2c+2 in its low nibbles
 * and 2c+1 and 2c+3 in its high ones; the activations are taken in that
 * order. q5_K's 5th bit of element e is bit e/32 of qh[e % 32]. */
#define UNPACK_QK(TGT, name, BLK, q5)                                                                      \
    TGT INLINE void name(const BLK *b, sbw *u) {                                                          \
        const __m512i m4 = _mm512_set1_epi8(0x0F);                                                         \
        const __m128i sm = kscales(b->scales);                                                             \
        const __m512i sc = _mm512_broadcast_i32x4(sm);                                                     \
        u->s[0] = _mm512_shuffle_epi8(sc, PAT2(0, 2)), u->s[1] = _mm512_shuffle_epi8(sc, PAT2(1, 3));      \
        u->s[2] = _mm512_shuffle_epi8(sc, PAT2(4, 6)), u->s[3] = _mm512_shuffle_epi8(sc, PAT2(5, 7));      \
        const __m128i mn8 = _mm_srli_si128(sm, 8);                                                         \
        u->mn = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));                                         \
        const __m512i q0 = _mm512_loadu_si512(b->qs), q1 = _mm512_loadu_si512(b->qs + 64);                 \
        u->c[0] = _mm512_and_si512(q0, m4), u->c[1] = _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4);      \
        u->c[2] = _mm512_and_si512(q1, m4), u->c[3] = _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4);      \
        q5;                                                                                                \
        u->d = f16(b->d), u->dm = f16(b->dmin);                                                            \
    }
#define Q5_BITS                                                                                            \
    do {                                                                                                   \
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)b->qh)); \
        const __m512i b16 = _mm512_set1_epi8(16);                                                          \
        const __m512i sh0 = _mm512_srlv_epi32(qh, SPLIT32(0, 2)), sh1 = _mm512_srlv_epi32(qh, SPLIT32(4, 6)); \
        u->c[0] = _mm512_or_si512(u->c[0], _mm512_and_si512(_mm512_slli_epi16(sh0, 4), b16));             \
        u->c[1] = _mm512_or_si512(u->c[1], _mm512_and_si512(_mm512_slli_epi16(sh0, 3), b16));             \
        u->c[2] = _mm512_or_si512(u->c[2], _mm512_and_si512(_mm512_slli_epi16(sh1, 4), b16));             \
        u->c[3] = _mm512_or_si512(u->c[3], _mm512_and_si512(_mm512_slli_epi16(sh1, 3), b16));             \
    } while (0)

/* The activations in q4_K's code order: halves of their 64-byte lines. */
#define ACT_QK(TGT, name)                                                                                  \
    TGT INLINE void name(const moe_qact_q8_K *x, sba *v) {                                                 \
        const __m512i A0 = _mm512_loadu_si512(x->qs), A1 = _mm512_loadu_si512(x->qs + 64);                \
        const __m512i A2 = _mm512_loadu_si512(x->qs + 128), A3 = _mm512_loadu_si512(x->qs + 192);          \
        v->x[0] = _mm512_shuffle_i64x2(A0, A1, 0x44), v->x[1] = _mm512_shuffle_i64x2(A0, A1, 0xEE);        \
        v->x[2] = _mm512_shuffle_i64x2(A2, A3, 0x44), v->x[3] = _mm512_shuffle_i64x2(A2, A3, 0xEE);        \
        v->bs = _mm256_loadu_si256((const __m256i *)(const void *)x->bsums);                               \
        v->d = x->d;                                                                                       \
    }

/* ... and in natural order (q6_K). */
#define ACT_NAT(TGT, name)                                                                                 \
    TGT INLINE void name(const moe_qact_q8_K *x, sba *v) {                                                 \
        for (int k = 0; k < 4; k++) v->x[k] = _mm512_loadu_si512(x->qs + 64 * k);                          \
        v->bs = _mm256_loadu_si256((const __m256i *)(const void *)x->bsums);                               \
        v->d = x->d;                                                                                       \
    }

/* q6_K: the low nibbles of ql[0..63] are elements 0..63, their high
 * nibbles 64..127 (ql[64..127]: 128..255); the high 2 bits of element
 * 128H + 32s + l are bits 2s..2s+1 of qh[32H + l]. Value d * sc[e/16] *
 * (code - 32): the -32 goes through the sums of 16 with the scales. */
#define UNPACK_Q6K(TGT, name)                                                                              \
    TGT INLINE void name(const moe_block_q6_K *b, sbw *u) {                                                \
        const __m512i m4 = _mm512_set1_epi8(0x0F), m3 = _mm512_set1_epi8(0x30);                            \
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)b->scales)); \
        const __m512i slo = _mm512_broadcast_i32x4(_mm256_castsi256_si128(sc16));                         \
        const __m512i shi = _mm512_broadcast_i32x4(_mm256_extracti128_si256(sc16, 1));                     \
        u->s[0] = _mm512_shuffle_epi8(slo, PAT4(0)), u->s[1] = _mm512_shuffle_epi8(slo, PAT4(4));          \
        u->s[2] = _mm512_shuffle_epi8(shi, PAT4(0)), u->s[3] = _mm512_shuffle_epi8(shi, PAT4(4));          \
        u->mn = sc16;                                                                                      \
        const __m512i qh = _mm512_loadu_si512(b->qh);                                                      \
        const __m512i q0 = _mm512_loadu_si512(b->ql), q1 = _mm512_loadu_si512(b->ql + 64);                 \
        const __m512i qh0 = _mm512_shuffle_i64x2(qh, qh, 0x44), qh1 = _mm512_shuffle_i64x2(qh, qh, 0xEE);  \
        const __m512i up = SPLIT32(4, 2), dn = SPLIT32(0, 2);                                              \
        u->c[0] = _mm512_or_si512(_mm512_and_si512(q0, m4), _mm512_and_si512(_mm512_sllv_epi32(qh0, up), m3)); \
        u->c[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q0, 4), m4),                          \
                                  _mm512_and_si512(_mm512_srlv_epi32(qh0, dn), m3));                       \
        u->c[2] = _mm512_or_si512(_mm512_and_si512(q1, m4), _mm512_and_si512(_mm512_sllv_epi32(qh1, up), m3)); \
        u->c[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q1, 4), m4),                          \
                                  _mm512_and_si512(_mm512_srlv_epi32(qh1, dn), m3));                       \
        u->d = f16(b->d), u->dm = 32.0f * u->d;                                                            \
    }

/* The codebooks plus 128, as u8, in every 128-bit lane for vpshufb. */
#define LUT128(v) _mm512_broadcast_i32x4(_mm_add_epi8(_mm_loadu_si128((const __m128i *)(const void *)(v)), _mm_set1_epi8((char)0x80)))

/* Byte patterns for 16-bit scale lanes from scale bytes (zero-extended)
 * or scale words broadcast to every 128-bit lane: PAT4B(a) byte a + L in
 * 128-bit lane L; PAT2W(a, b) word a in the low 256 bits, word b in the
 * high. */
#define PAT4B(a) _mm512_set_epi64(W1(a + 3), W1(a + 3), W1(a + 2), W1(a + 2), W1(a + 1), W1(a + 1), W1(a), W1(a))
#define PAT2W(a, b) _mm512_set_epi64(W2(b), W2(b), W2(b), W2(b), W2(a), W2(a), W2(a), W2(a))

/* q2_K: element 128h + 32s + l is bits 2s..2s+1 of qs[32h + l]; sub-block
 * j of 16 has scale d (sc[j] & 15) and min dmin (sc[j] >> 4). */
#define UNPACK_Q2K(TGT, name)                                                                              \
    TGT INLINE void name(const moe_block_q2_K *b, sbw *u) {                                                \
        const __m512i m3 = _mm512_set1_epi8(3);                                                            \
        const __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)b->scales);                    \
        const __m512i sc = _mm512_broadcast_i32x4(_mm_and_si128(raw, _mm_set1_epi8(15)));                 \
        for (int k = 0; k < 4; k++) u->s[k] = _mm512_shuffle_epi8(sc, PAT4B(4 * k));                       \
        u->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(15)));            \
        for (int h = 0; h < 2; h++) {                                                                      \
            const __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)(b->qs + 32 * h))); \
            u->c[2 * h] = _mm512_and_si512(_mm512_srlv_epi32(z, SPLIT32(0, 2)), m3);                       \
            u->c[2 * h + 1] = _mm512_and_si512(_mm512_srlv_epi32(z, SPLIT32(4, 6)), m3);                   \
        }                                                                                                  \
        u->d = f16(b->d), u->dm = f16(b->dmin);                                                            \
    }

/* q3_K's 16 scales of 6 bits, signed (code - 32), as int8: low 4 bits in
 * scales[j % 8] (its high nibble for j >= 8), high 2 bits of sub-block j
 * at bit 2 (j / 4) of scales[8 + j % 4]. */
T_AVX2 INLINE __m128i q3_scales(const uint8_t *s) { /* AVX2 only: the AVX2 kernel takes it too */
    uint64_t s0;
    uint32_t s8; /* exactly the 12 bytes: a 16-byte load would read past the last block of a buffer */
    memcpy(&s0, s, 8), memcpy(&s8, s + 8, 4);
    const __m128i v = _mm_set_epi64x((long long)s8, (long long)s0);
    const __m128i lo8 = _mm_unpacklo_epi64(v, v);                         /* bytes 0..7 twice */
    const __m128i lo = _mm_and_si128(_mm_blend_epi16(lo8, _mm_srli_epi16(lo8, 4), 0xF0), _mm_set1_epi8(15));
    const __m128i hb = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 2, 2, 2));    /* bytes 8..11 in every word */
    const __m128i hi = _mm_and_si128(_mm_srlv_epi32(hb, _mm_set_epi32(6, 4, 2, 0)), _mm_set1_epi8(3));
    return _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32));
}

/* q3_K: 2-bit codes as q2_K's, the 3rd bit of element e is bit e / 32 of
 * hmask[e % 32]; code' = low + 4 hbit, value d sc (code' - 4). */
#define UNPACK_Q3K(TGT, name)                                                                              \
    TGT INLINE void name(const moe_block_q3_K *b, sbw *u) {                                                \
        const __m512i m3 = _mm512_set1_epi8(3), m1 = _mm512_set1_epi8(1);                                  \
        const __m256i sc16 = _mm256_cvtepi8_epi16(q3_scales(b->scales));                                   \
        const __m512i slo = _mm512_broadcast_i32x4(_mm256_castsi256_si128(sc16));                         \
        const __m512i shi = _mm512_broadcast_i32x4(_mm256_extracti128_si256(sc16, 1));                     \
        u->s[0] = _mm512_shuffle_epi8(slo, PAT4(0)), u->s[1] = _mm512_shuffle_epi8(slo, PAT4(4));          \
        u->s[2] = _mm512_shuffle_epi8(shi, PAT4(0)), u->s[3] = _mm512_shuffle_epi8(shi, PAT4(4));          \
        u->mn = sc16;                                                                                      \
        const __m512i hm = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)b->hmask)); \
        for (int h = 0; h < 2; h++) {                                                                      \
            const __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)(b->qs + 32 * h))); \
            for (int k = 0; k < 2; k++) {                                                                  \
                const int v = 2 * h + k;                                                                   \
                const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(z, SPLIT32(4 * k, 4 * k + 2)), m3);  \
                const __m512i hb = _mm512_and_si512(_mm512_srlv_epi32(hm, SPLIT32(2 * v, 2 * v + 1)), m1); \
                u->c[v] = _mm512_or_si512(lo, _mm512_slli_epi16(hb, 2));                                   \
            }                                                                                              \
        }                                                                                                  \
        u->d = f16(b->d), u->dm = 4.0f * u->d;                                                             \
    }

/* iq4_xs's 8 scales, signed (code - 32), as 16-bit words: low 4 bits in
 * scales_l[j / 2] >> 4 (j % 2), high 2 bits at bit 2j of scales_h. */
T_512Q INLINE __m128i iq4xs_scales(const moe_block_iq4_xs *b) {
    uint32_t l4;
    memcpy(&l4, b->scales_l, 4);
    const __m128i w = _mm_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi32_si128((int)l4),
                                                         _mm_set_epi8(-1, -1, -1, -1, -1, -1, -1, -1, 3, 3, 2, 2, 1, 1, 0, 0)));
    const __m128i lo = _mm_and_si128(_mm_srlv_epi16(w, _mm_set_epi16(4, 0, 4, 0, 4, 0, 4, 0)), _mm_set1_epi16(15));
    const __m128i hi = _mm_and_si128(_mm_srlv_epi16(_mm_set1_epi16((short)b->scales_h), _mm_set_epi16(14, 12, 10, 8, 6, 4, 2, 0)),
                                     _mm_set1_epi16(3));
    return _mm_sub_epi16(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi16(32));
}

/* iq4_xs: element 32j + 16h + l is codebook[qs[16j + l] >> 4h & 15], + 128
 * as u8; value d sc[j] (u - 128). Codes up to 241 would saturate
 * vpmaddubsw's pairs, so these go through vpdpbusd (exact int32 sums of 4)
 * with the scales as int32 lanes (8 lanes per sub-block of 32). */
#define UNPACK_IQ4XS(TGT, name)                                                                            \
    TGT INLINE void name(const moe_block_iq4_xs *b, sbw *u) {                                              \
        const __m128i sc = iq4xs_scales(b);                                                                \
        const __m512i s32 = _mm512_castsi256_si512(_mm256_cvtepi16_epi32(sc));                            \
        for (int k = 0; k < 4; k++) {                                                                      \
            u->s[k] = _mm512_permutexvar_epi32(_mm512_inserti64x4(_mm512_set1_epi32(2 * k), _mm256_set1_epi32(2 * k + 1), 1), s32); \
            const __m512i z = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)(b->qs + 32 * k))); \
            const __m512i v = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0));                         \
            const __m512i n = _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xFF00FF00u, v, 4), _mm512_set1_epi8(15)); \
            u->c[k] = _mm512_shuffle_epi8(LUT128(moe_iq4nl_values), n);                                    \
        }                                                                                                  \
        u->mn = _mm256_set_m128i(_mm_unpackhi_epi16(sc, sc), _mm_unpacklo_epi16(sc, sc));                  \
        u->d = f16(b->d), u->dm = 128.0f * u->d;                                                           \
    }

/* One row's super-block against one token: acc += d da sum(sc (c . x)),
 * accm += dm da sum(mn . bs). */
#define DOT_SB(TGT, name, DPW)                                                                             \
    TGT INLINE void name(const sbw *u, const sba *v, __m512 *acc, __m256 *accm) {                          \
        __m512i s = _mm512_setzero_si512();                                                                \
        for (int k = 0; k < 4; k++) s = DPW(s, _mm512_maddubs_epi16(u->c[k], v->x[k]), u->s[k]);           \
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(u->d * v->d), *acc);                  \
        *accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(v->bs, u->mn)), _mm256_set1_ps(u->dm * v->d), \
                                *accm);                                                                    \
    }
/* ... and iq4_xs's: vpdpbusd sums of 4, scaled per int32 lane. */
#define DOT_SB32(TGT, name, DPB)                                                                           \
    TGT INLINE void name(const sbw *u, const sba *v, __m512 *acc, __m256 *accm) {                          \
        __m512i s = _mm512_setzero_si512();                                                                \
        for (int k = 0; k < 4; k++) s = _mm512_add_epi32(s, _mm512_mullo_epi32(DPB(u->c[k], v->x[k]), u->s[k])); \
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(u->d * v->d), *acc);                  \
        *accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(v->bs, u->mn)), _mm256_set1_ps(u->dm * v->d), \
                                *accm);                                                                    \
    }
#define DPB_VNNI(c, x) _mm512_dpbusd_epi32(_mm512_setzero_si512(), (c), (x))
/* Without VNNI: u8 x s8 pairs widen to s16 first, exactly: the codes are
 * split in halves below 128 so a pair cannot saturate. */
#define DPB_BW(c, x)                                                                                       \
    _mm512_add_epi32(                                                                                      \
        _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_and_si512((c), _mm512_set1_epi8(0x7F)), (x)), _mm512_set1_epi16(1)), \
        _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_and_si512((c), _mm512_set1_epi8((char)0x80)), (x)), _mm512_set1_epi16(1)))
#define DPW_VNNI(s, p, c) _mm512_dpwssd_epi32((s), (p), (c))
#define DPW_BW(s, p, c) _mm512_add_epi32((s), _mm512_madd_epi16((p), (c)))

/* ---- many tokens: tiles ----------------------------------------------------
 * With many tokens (prefill), a tile of rows is unpacked once into a
 * scratch of the calling thread (codes and scale lanes, in the
 * activations' natural order, and the mins as f32), and every token meets
 * it there: 2 rows x 4 tokens per register block, 8 integer accumulators
 * per super-block. The mins (and code offsets) of every super-block are
 * one f32 dot product per (row, token) at the end: the rows' dm * mn
 * against the tokens' d_x * (sums of 16). */

enum { TILE_ROWS = 8, TILE_MIN_M = 8 };

/* q4_K / q5_K codes come in two sub-blocks' halves: into natural order. */
#define NAT_QK(TGT, name)                                                                                  \
    TGT INLINE void name(sbw *u) {                                                                         \
        __m512i c0 = u->c[0], c1 = u->c[1], c2 = u->c[2], c3 = u->c[3];                                    \
        u->c[0] = _mm512_shuffle_i64x2(c0, c1, 0x44), u->c[1] = _mm512_shuffle_i64x2(c0, c1, 0xEE);        \
        u->c[2] = _mm512_shuffle_i64x2(c2, c3, 0x44), u->c[3] = _mm512_shuffle_i64x2(c2, c3, 0xEE);        \
        c0 = u->s[0], c1 = u->s[1], c2 = u->s[2], c3 = u->s[3];                                            \
        u->s[0] = _mm512_shuffle_i64x2(c0, c1, 0x44), u->s[1] = _mm512_shuffle_i64x2(c0, c1, 0xEE);        \
        u->s[2] = _mm512_shuffle_i64x2(c2, c3, 0x44), u->s[3] = _mm512_shuffle_i64x2(c2, c3, 0xEE);        \
    }
#define NAT_ID(TGT, name) TGT INLINE void name(sbw *u) { (void)u; }

/* A thread's tile scratch, grown as needed and kept (one per thread of
 * the engine's team, a few hundred KB at most); freed when the thread
 * exits, through a pthread key, so teams that come and go leak nothing. */
static _Thread_local void *tile_buf;
static _Thread_local size_t tile_cap;
static pthread_once_t tile_once = PTHREAD_ONCE_INIT;
static pthread_key_t tile_key;
static bool tile_keyed; /* false only if the process ran out of keys: then kept until exit */

static void tile_key_make(void) { tile_keyed = !pthread_key_create(&tile_key, free); }

static void *tile_scratch(size_t bytes) {
    if (bytes <= tile_cap) return tile_buf;
    pthread_once(&tile_once, tile_key_make);
    free(tile_buf);
    tile_cap = 0;
    if (posix_memalign(&tile_buf, 64, bytes)) tile_buf = NULL;
    else tile_cap = bytes;
    if (tile_keyed) pthread_setspecific(tile_key, tile_buf);
    return tile_buf;
}

/* sum a[i] b[i], i < n (n a multiple of 16). */
T_512Q INLINE float dot16(const float *a, const float *b, uint32_t n) {
    __m512 s = _mm512_setzero_ps();
    for (uint32_t i = 0; i < n; i += 16) s = _mm512_fmadd_ps(_mm512_load_ps(a + i), _mm512_load_ps(b + i), s);
    return _mm512_reduce_add_ps(s);
}

#define GEMM_SB(TGT, name, BLK, UNPACK, NAT, DPW)                                                          \
    /* nr rows (1, 2) of unpacked super-blocks against nt tokens (1..4). */                                \
    TGT INLINE void name##_blk(const sbw *u0, const sbw *u1, const moe_qact_q8_K *const *a, uint32_t nb, uint32_t nt, \
                               __m512 acc[2][4]) {                                                         \
        for (uint32_t t = 0; t < 4; t++) acc[0][t] = acc[1][t] = _mm512_setzero_ps();                      \
        for (uint32_t i = 0; i < nb; i++) {                                                                \
            __m512i s0[4], s1[4];                                                                          \
            for (uint32_t t = 0; t < 4; t++) s0[t] = s1[t] = _mm512_setzero_si512();                       \
            for (int k = 0; k < 4; k++) {                                                                  \
                const __m512i c0 = _mm512_load_si512(&u0[i].c[k]), c1 = _mm512_load_si512(&u1[i].c[k]);     \
                const __m512i w0 = _mm512_load_si512(&u0[i].s[k]), w1 = _mm512_load_si512(&u1[i].s[k]);     \
                for (uint32_t t = 0; t < nt; t++) {                                                        \
                    const __m512i x = _mm512_loadu_si512(a[t][i].qs + 64 * k);                             \
                    s0[t] = DPW(s0[t], _mm512_maddubs_epi16(c0, x), w0);                                   \
                    s1[t] = DPW(s1[t], _mm512_maddubs_epi16(c1, x), w1);                                   \
                }                                                                                          \
            }                                                                                              \
            for (uint32_t t = 0; t < nt; t++) {                                                            \
                acc[0][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0[t]), _mm512_set1_ps(u0[i].d * a[t][i].d), acc[0][t]); \
                acc[1][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1[t]), _mm512_set1_ps(u1[i].d * a[t][i].d), acc[1][t]); \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    TGT static void name##_tiles(const void *w, uint32_t k, uint32_t n0, uint32_t n1, const moe_acts *x,     \
                                 float *out, size_t ldo) {                                                 \
        const uint32_t nb = k / MOE_QK_K, nm = nb * 16;                                                    \
        const size_t wrb = (size_t)nb * sizeof(BLK), arb = (size_t)nb * sizeof(moe_qact_q8_K);             \
        const size_t ub = (size_t)TILE_ROWS * nb * sizeof(sbw), mb = (size_t)TILE_ROWS * nm * 4, bb = (size_t)x->m * nm * 4; \
        char *scr = tile_scratch(ub + mb + bb);                                                            \
        if (!scr) { /* no memory: the row-pair path, slower but needing none */                            \
            name##_rows(w, NULL, k, n0, n1, x, out, ldo);                                                  \
            return;                                                                                        \
        }                                                                                                  \
        sbw *U = (sbw *)(void *)scr;                                                                       \
        float *mnf = (float *)(void *)(scr + ub), *bsf = (float *)(void *)(scr + ub + mb);                 \
        for (uint32_t t = 0; t < x->m; t++) { /* the tokens' d_x * (sums of 16) */                         \
            const moe_qact_q8_K *xa = (const moe_qact_q8_K *)(const void *)((const char *)x->data + t * arb);   \
            for (uint32_t i = 0; i < nb; i++) {                                                            \
                const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)xa[i].bsums))); \
                _mm512_store_ps(bsf + (size_t)t * nm + 16 * i, _mm512_mul_ps(v, _mm512_set1_ps(xa[i].d)));   \
            }                                                                                              \
        }                                                                                                  \
        for (uint32_t r0 = n0; r0 < n1; r0 += TILE_ROWS) {                                                 \
            const uint32_t nr = n1 - r0 < TILE_ROWS ? n1 - r0 : TILE_ROWS;                                 \
            for (uint32_t r = 0; r < nr; r++) { /* unpack the tile's rows */                               \
                const BLK *b = (const BLK *)(const void *)((const char *)w + (size_t)(r0 + r) * wrb);      \
                for (uint32_t i = 0; i < nb; i++) {                                                        \
                    sbw u;                                                                                 \
                    UNPACK(b + i, &u);                                                                     \
                    NAT(&u);                                                                               \
                    U[(size_t)r * nb + i] = u;                                                             \
                    _mm512_store_ps(mnf + (size_t)r * nm + 16 * i,                                         \
                                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(u.mn)), _mm512_set1_ps(u.dm))); \
                }                                                                                          \
            }                                                                                              \
            for (uint32_t t0 = 0; t0 < x->m; t0 += 4) {                                                    \
                const uint32_t nt = x->m - t0 < 4 ? x->m - t0 : 4;                                         \
                const moe_qact_q8_K *a[4];                                                                 \
                for (uint32_t t = 0; t < 4; t++)                                                           \
                    a[t] = (const moe_qact_q8_K *)(const void *)((const char *)x->data + (t0 + (t < nt ? t : nt - 1)) * arb); \
                for (uint32_t r = 0; r < nr; r += 2) {                                                     \
                    const sbw *u0 = U + (size_t)r * nb, *u1 = r + 1 < nr ? u0 + nb : u0;                   \
                    __m512 acc[2][4];                                                                      \
                    switch (nt) {                                                                          \
                    case 1: name##_blk(u0, u1, a, nb, 1, acc); break;                                      \
                    case 2: name##_blk(u0, u1, a, nb, 2, acc); break;                                      \
                    case 3: name##_blk(u0, u1, a, nb, 3, acc); break;                                      \
                    default: name##_blk(u0, u1, a, nb, 4, acc); break;                                     \
                    }                                                                                      \
                    for (uint32_t q = 0; q < 2 && r + q < nr; q++)                                         \
                        for (uint32_t t = 0; t < nt; t++)                                                  \
                            out[(size_t)(t0 + t) * ldo + (r0 + r + q - n0)] =                              \
                                _mm512_reduce_add_ps(acc[q][t]) -                                          \
                                dot16(mnf + (size_t)(r + q) * nm, bsf + (size_t)(t0 + t) * nm, nm);        \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }

/* The activation rows of one pass's tokens t0 .. t0 + tb - 1 into
 * a[0..TQ), the last repeated: a kernel's copy for tb tokens may read all
 * TQ. */
#define PASS_ACTS(ACT, a, x, arb, t0, tb)                                                                  \
    for (uint32_t t_ = 0; t_ < TQ; t_++)                                                                   \
    (a)[t_] = (const ACT *)(const void *)((const char *)(x)->data + ((t0) + (t_ < (tb) ? t_ : (tb) - 1)) * (arb))

/* The driver: rows two at a time against TQ tokens at a time. */
/* The driver of the row-pair kernels: rows two at a time (a last odd row
 * paired with itself, its second result dropped) against TQ tokens at a
 * time, `pair(b0, b1, a, nb, tb, res)` computing rows b0, b1 of nb blocks
 * of QB elements against tokens a[0..tb); tb a constant in each call, so
 * each token count gets its own unrolled copy. */
#define ROW_PAIRS(TGT, fn, pair, BLK, ACT, QB)                                                             \
    TGT static void fn(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1, const moe_acts *x, \
                       float *out, size_t ldo) {                                                           \
        (void)ws;                                                                                          \
        const uint32_t nb = k / (QB);                                                                      \
        const size_t wrb = (size_t)nb * sizeof(BLK), arb = (size_t)nb * sizeof(ACT);                       \
        for (uint32_t t0 = 0; t0 < x->m; t0 += TQ) {                                                       \
            const uint32_t tb = x->m - t0 < TQ ? x->m - t0 : TQ;                                           \
            const ACT *a[TQ];                                                                              \
            PASS_ACTS(ACT, a, x, arb, t0, tb);                                                             \
            for (uint32_t j = n0; j < n1; j += 2) {                                                        \
                const BLK *b0 = (const BLK *)(const void *)((const char *)w + j * wrb);                    \
                const BLK *b1 = j + 1 < n1 ? (const BLK *)(const void *)((const char *)b0 + wrb) : b0;     \
                float r[2][TQ];                                                                            \
                switch (tb) {                                                                              \
                case 1: pair(b0, b1, a, nb, 1, r); break;                                                  \
                case 2: pair(b0, b1, a, nb, 2, r); break;                                                  \
                case 3: pair(b0, b1, a, nb, 3, r); break;                                                  \
                default: pair(b0, b1, a, nb, TQ, r); break;                                                \
                }                                                                                          \
                for (uint32_t t = 0; t < tb; t++) {                                                        \
                    out[(size_t)(t0 + t) * ldo + (j - n0)] = r[0][t];                                      \
                    if (j + 1 < n1) out[(size_t)(t0 + t) * ldo + (j + 1 - n0)] = r[1][t];                  \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }

#define GEMV_SB(TGT, name, BLK, UNPACK, ACT, DOT)                                                          \
    TGT INLINE void name##_pair(const BLK *b0, const BLK *b1, const moe_qact_q8_K *const *a, uint32_t nb,   \
                                uint32_t tb, float res[2][TQ]) {                                           \
        __m512 acc[2][TQ];                                                                                 \
        __m256 accm[2][TQ];                                                                                \
        for (uint32_t t = 0; t < TQ; t++)                                                                  \
            for (int r = 0; r < 2; r++) acc[r][t] = _mm512_setzero_ps(), accm[r][t] = _mm256_setzero_ps();  \
        for (uint32_t i = 0; i < nb; i++) {                                                                \
            for (size_t l = 0; l < sizeof(BLK) + 64; l += 64) { /* every line a block advances over */    \
                _mm_prefetch((const char *)(b0 + i) + PFQ + l, PF_HINT);                                   \
                _mm_prefetch((const char *)(b1 + i) + PFQ + l, PF_HINT);                                   \
            }                                                                                              \
            sbw u0, u1;                                                                                    \
            UNPACK(b0 + i, &u0);                                                                           \
            UNPACK(b1 + i, &u1);                                                                           \
            for (uint32_t t = 0; t < tb; t++) {                                                            \
                sba v;                                                                                     \
                ACT(a[t] + i, &v);                                                                         \
                DOT(&u0, &v, &acc[0][t], &accm[0][t]);                                                     \
                DOT(&u1, &v, &acc[1][t], &accm[1][t]);                                                     \
            }                                                                                              \
        }                                                                                                  \
        for (int r = 0; r < 2; r++)                                                                        \
            for (uint32_t t = 0; t < tb; t++) {                                                            \
                const __m256 m = accm[r][t];                                                               \
                const __m128 m2 = _mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));      \
                const __m128 m1 = _mm_add_ps(m2, _mm_movehl_ps(m2, m2));                                   \
                res[r][t] = _mm512_reduce_add_ps(acc[r][t]) - _mm_cvtss_f32(_mm_add_ss(m1, _mm_shuffle_ps(m1, m1, 1))); \
            }                                                                                              \
    }                                                                                                      \
    ROW_PAIRS(TGT, name##_rows, name##_pair, BLK, moe_qact_q8_K, MOE_QK_K)

/* The entry: tiles with many tokens, row pairs with few. */
#define GEMV_TILED(TGT, name)                                                                              \
    TGT static void name(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1, const moe_acts *x, \
                         float *out, size_t ldo) {                                                         \
        if (x->m >= TILE_MIN_M) name##_tiles(w, k, n0, n1, x, out, ldo);                                   \
        else name##_rows(w, ws, k, n0, n1, x, out, ldo);                                                   \
    }
#define GEMV_ROWS(TGT, name)                                                                               \
    TGT static void name(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1, const moe_acts *x, \
                         float *out, size_t ldo) {                                                         \
        name##_rows(w, ws, k, n0, n1, x, out, ldo);                                                        \
    }

/* A k-quant with its row-pair path, its tiles and the entry choosing. */
#define KQ_FORMAT(LVL, TGT, DPW, F, BLK, ACT, NAT)                                                         \
    GEMV_SB(TGT, gemv_##LVL##_##F, BLK, unpack_##F##_##LVL, ACT, dot_sb_##LVL)                             \
    GEMM_SB(TGT, gemv_##LVL##_##F, BLK, unpack_##F##_##LVL, NAT, DPW)                                      \
    GEMV_TILED(TGT, gemv_##LVL##_##F)

/* Each format at two levels: VNNI and plain AVX-512 (F/BW/VL/DQ). */
#define KQUANT_512(LVL, TGT, DPW)                                                                          \
    UNPACK_QK(TGT, unpack_q4_K_##LVL, moe_block_q4_K, (void)0)                                            \
    UNPACK_QK(TGT, unpack_q5_K_##LVL, moe_block_q5_K, Q5_BITS)                                            \
    UNPACK_Q6K(TGT, unpack_q6_K_##LVL)                                                                     \
    ACT_QK(TGT, act_qk_##LVL)                                                                              \
    ACT_NAT(TGT, act_nat_##LVL)                                                                            \
    DOT_SB(TGT, dot_sb_##LVL, DPW)                                                                         \
    DOT_SB32(TGT, dot_sb32_##LVL, DPB_##LVL)                                                               \
    NAT_QK(TGT, nat_qk_##LVL)                                                                              \
    NAT_ID(TGT, nat_id_##LVL)                                                                              \
    UNPACK_Q2K(TGT, unpack_q2_K_##LVL)                                                                     \
    UNPACK_Q3K(TGT, unpack_q3_K_##LVL)                                                                     \
    UNPACK_IQ4XS(TGT, unpack_iq4_xs_##LVL)                                                                 \
    KQ_FORMAT(LVL, TGT, DPW, q4_K, moe_block_q4_K, act_qk_##LVL, nat_qk_##LVL)                            \
    KQ_FORMAT(LVL, TGT, DPW, q5_K, moe_block_q5_K, act_qk_##LVL, nat_qk_##LVL)                            \
    KQ_FORMAT(LVL, TGT, DPW, q6_K, moe_block_q6_K, act_nat_##LVL, nat_id_##LVL)                           \
    KQ_FORMAT(LVL, TGT, DPW, q2_K, moe_block_q2_K, act_nat_##LVL, nat_id_##LVL)                           \
    KQ_FORMAT(LVL, TGT, DPW, q3_K, moe_block_q3_K, act_nat_##LVL, nat_id_##LVL)                           \
    GEMV_SB(TGT, gemv_##LVL##_iq4_xs, moe_block_iq4_xs, unpack_iq4_xs_##LVL, act_nat_##LVL, dot_sb32_##LVL) \
    GEMV_ROWS(TGT, gemv_##LVL##_iq4_xs)

#define DPB_vnni DPB_VNNI
#define DPB_bw DPB_BW
KQUANT_512(vnni, T_VNNIQ, DPW_VNNI)
KQUANT_512(bw, T_512Q, DPW_BW)

/* ---- the formats of 32-element blocks --------------------------------------
 * Two blocks per 512-bit vector (block A in the low half, B in the high),
 * codes as unsigned bytes u = value + off, so a dot product is
 * vpdpbusd(u, x) - off * sum(x) per block, with the block scales applied
 * per lane in f32 (8 lanes per block): d_w d_x. The sums of x come from a
 * vpdpbusd with ones, once per token for every row. Formats with a min m
 * (q4_1, q5_1) add m d_x sum(x). */

/* 32 codes of a block from its 16 bytes of nibbles (elements 0..15 low,
 * 16..31 high), two blocks in one vector. */
T_VNNIQ INLINE __m512i nib2(const uint8_t *qa, const uint8_t *qb) {
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)qa))),
                                         _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)qb)), 1);
    return _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xFF00FF00u, v, 4), _mm512_set1_epi8(0x0F));
}

/* q5_0 / q5_1's 5th bits: bit l of the block's little-endian qh is element l's. */
T_VNNIQ INLINE __m512i qh2(const uint8_t *ha, const uint8_t *hb) {
    uint32_t a, b;
    memcpy(&a, ha, 4), memcpy(&b, hb, 4);
    return _mm512_maskz_set1_epi8((__mmask64)a | (__mmask64)b << 32, 0x10);
}

typedef struct b32w {
    __m512i c;  /* codes + off as u8 */
    __m512 d;   /* the weight scale per lane */
    __m512 m;   /* the min per lane (q4_1, q5_1) */
} b32w;

#define LD_X2(p, q) _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)(p))), \
                                       _mm256_loadu_si256((const __m256i *)(const void *)(q)), 1)
#define SPLIT_PS(a, b) _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b), 1)

/* The unpackers: blocks A and B of one row. */
T_VNNIQ INLINE void u_q4_0(const moe_block_q4_0 *a, const moe_block_q4_0 *b, b32w *u) {
    u->c = nib2(a->qs, b->qs), u->d = SPLIT_PS(f16(a->d), f16(b->d));
}
T_VNNIQ INLINE void u_q4_1(const moe_block_q4_1 *a, const moe_block_q4_1 *b, b32w *u) {
    u->c = nib2(a->qs, b->qs), u->d = SPLIT_PS(f16(a->d), f16(b->d)), u->m = SPLIT_PS(f16(a->m), f16(b->m));
}
T_VNNIQ INLINE void u_q5_0(const moe_block_q5_0 *a, const moe_block_q5_0 *b, b32w *u) {
    u->c = _mm512_or_si512(nib2(a->qs, b->qs), qh2(a->qh, b->qh)), u->d = SPLIT_PS(f16(a->d), f16(b->d));
}
T_VNNIQ INLINE void u_q5_1(const moe_block_q5_1 *a, const moe_block_q5_1 *b, b32w *u) {
    u->c = _mm512_or_si512(nib2(a->qs, b->qs), qh2(a->qh, b->qh));
    u->d = SPLIT_PS(f16(a->d), f16(b->d)), u->m = SPLIT_PS(f16(a->m), f16(b->m));
}
T_VNNIQ INLINE void u_q8_0(const moe_block_q8_0 *a, const moe_block_q8_0 *b, b32w *u) {
    u->c = _mm512_xor_si512(LD_X2(a->qs, b->qs), _mm512_set1_epi8((char)0x80)), u->d = SPLIT_PS(f16(a->d), f16(b->d));
}
T_VNNIQ INLINE void u_iq4_nl(const moe_block_iq4_nl *a, const moe_block_iq4_nl *b, b32w *u) {
    u->c = _mm512_shuffle_epi8(LUT128(moe_iq4nl_values), nib2(a->qs, b->qs)), u->d = SPLIT_PS(f16(a->d), f16(b->d));
}
static inline float e8m0h(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
T_VNNIQ INLINE void u_mxfp4(const moe_block_mxfp4 *a, const moe_block_mxfp4 *b, b32w *u) {
    u->c = _mm512_shuffle_epi8(LUT128(moe_mxfp4_values), nib2(a->qs, b->qs)), u->d = SPLIT_PS(e8m0h(a->e), e8m0h(b->e));
}

/* A token's two activation blocks: codes, their scales per lane, and
 * off * sum(x) per lane group (as vpdpbusd sums 4 products per lane). */
typedef struct b32a {
    __m512i x, offsum;
    __m512 d, sum; /* sum: sum(x) as f32 per lane, for the mins */
} b32a;

/* The driver: pairs of rows, TQ tokens at a time, two blocks per step (a
 * last odd block alone, in the low half, with the high half zero). */
#define GEMV_B32(name, BLK, ACT, UNPACK, OFF, MIN)                                                         \
    T_VNNIQ INLINE void name##_act(const ACT *xa, const ACT *xb, b32a *v) {                                \
        v->x = xb ? LD_X2(xa->qs, xb->qs) : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(const void *)xa->qs)); \
        v->d = SPLIT_PS(xa->d, xb ? xb->d : 0.0f);                                                         \
        if (OFF) v->offsum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)(OFF)), v->x); \
        if (MIN) v->sum = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), v->x)); \
    }                                                                                                      \
    T_VNNIQ INLINE void name##_dot(const b32w *u, const b32a *v, __m512 *acc) {                            \
        __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u->c, v->x);                                \
        if (OFF) p = _mm512_sub_epi32(p, v->offsum);                                                       \
        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(u->d, v->d), *acc);                    \
        if (MIN) *acc = _mm512_fmadd_ps(v->sum, _mm512_mul_ps(u->m, v->d), *acc);                          \
    }                                                                                                      \
    T_VNNIQ INLINE void name##_pair(const BLK *b0, const BLK *b1, const ACT *const *a, uint32_t nb, uint32_t tb, \
                                    float res[2][TQ]) {                                                    \
        __m512 acc[2][TQ];                                                                                 \
        for (uint32_t t = 0; t < TQ; t++) acc[0][t] = acc[1][t] = _mm512_setzero_ps();                     \
        for (uint32_t i = 0; i < nb; i += 2) {                                                             \
            for (size_t l = 0; l < 2 * sizeof(BLK) + 64; l += 64) {                                        \
                _mm_prefetch((const char *)(b0 + i) + PFQ + l, PF_HINT);                                   \
                _mm_prefetch((const char *)(b1 + i) + PFQ + l, PF_HINT);                                   \
            }                                                                                              \
            const bool two = i + 1 < nb;                                                                   \
            b32w u0, u1;                                                                                   \
            UNPACK(b0 + i, b0 + (two ? i + 1 : i), &u0);                                                   \
            UNPACK(b1 + i, b1 + (two ? i + 1 : i), &u1);                                                   \
            for (uint32_t t = 0; t < tb; t++) {                                                            \
                b32a v;                                                                                    \
                name##_act(a[t] + i, two ? a[t] + i + 1 : NULL, &v);                                       \
                name##_dot(&u0, &v, &acc[0][t]);                                                           \
                name##_dot(&u1, &v, &acc[1][t]);                                                           \
            }                                                                                              \
        }                                                                                                  \
        for (int r = 0; r < 2; r++)                                                                        \
            for (uint32_t t = 0; t < tb; t++) res[r][t] = _mm512_reduce_add_ps(acc[r][t]);                 \
    }                                                                                                      \
    ROW_PAIRS(T_VNNIQ, name, name##_pair, BLK, ACT, 32)

GEMV_B32(gemv_vnni_q4_0, moe_block_q4_0, moe_qact_q8_0, u_q4_0, 8, 0)
GEMV_B32(gemv_vnni_q4_1, moe_block_q4_1, moe_qact_q8_1, u_q4_1, 0, 1)
GEMV_B32(gemv_vnni_q5_0, moe_block_q5_0, moe_qact_q8_0, u_q5_0, 16, 0)
GEMV_B32(gemv_vnni_q5_1, moe_block_q5_1, moe_qact_q8_1, u_q5_1, 0, 1)
GEMV_B32(gemv_vnni_q8_0, moe_block_q8_0, moe_qact_q8_0, u_q8_0, 128, 0)
GEMV_B32(gemv_vnni_iq4_nl, moe_block_iq4_nl, moe_qact_q8_0, u_iq4_nl, 128, 0)
GEMV_B32(gemv_vnni_mxfp4, moe_block_mxfp4, moe_qact_q8_0, u_mxfp4, 128, 0)

/* ---- mxfp4, four blocks per step (AVX512-VBMI) ----------------------------
 * mxfp4's 17-byte blocks (an e8m0 scale, then 16 bytes of nibbles) make the
 * two-block kernel above compute-bound near half of DRAM speed: per block,
 * two broadcasts and an insert for the codes and scalar work for the
 * scale. Here two loads cover four blocks (68 bytes), one vpermi2b puts
 * their 16 code bytes in the four 128-bit lanes and one vpermb their
 * scales in each lane's dwords; the low nibbles (elements 0..15 of each
 * block) and the high ones (16..31) meet activations laid out the same way
 * once per call: per token and group of four blocks, X_lo and X_hi (lane j
 * holds block j's elements 0..15 or 16..31), the code offset 128 sum(x)
 * per dword, and d_x per lane. A
 * last group of one to three blocks is read with masked loads, its missing
 * blocks' activations zero. */
typedef struct mx4a {
    __m512i xl, xh, off;
    __m512 d;
} mx4a;

/* The activations of tokens a[0..tb) as mx4a groups into g[t * ng + ...]. */
T_VNNIQ static void mx4_acts(const moe_qact_q8_0 *const *a, uint32_t tb, uint32_t nb, mx4a *g) {
    const uint32_t ng = (nb + 3) / 4;
    for (uint32_t t = 0; t < tb; t++)
        for (uint32_t q = 0; q < ng; q++) {
            _Alignas(64) int8_t xl[64] = {0}, xh[64] = {0};
            _Alignas(64) float d[16] = {0};
            for (uint32_t j = 0; j < 4 && 4 * q + j < nb; j++) {
                const moe_qact_q8_0 *x = a[t] + 4 * q + j;
                memcpy(xl + 16 * j, x->qs, 16), memcpy(xh + 16 * j, x->qs + 16, 16);
                for (uint32_t l = 0; l < 4; l++) d[4 * j + l] = x->d;
            }
            mx4a *o = g + (size_t)t * ng + q;
            o->xl = _mm512_load_si512(xl), o->xh = _mm512_load_si512(xh);
            const __m512i c128 = _mm512_set1_epi8((char)0x80);
            o->off = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, o->xl), c128, o->xh);
            o->d = _mm512_load_ps(d);
        }
}

#define T_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx512vnni,avx512vbmi")))

/* One row of nb blocks against tb tokens' groups. */
T_VBMI INLINE void mx4_row(const uint8_t *w, uint32_t nb, const mx4a *g, uint32_t tb, float res[TQ]) {
    const uint32_t ng = (nb + 3) / 4;
    const size_t rb = (size_t)nb * sizeof(moe_block_mxfp4);
    /* byte 16j + i of the codes: byte 17j + 1 + i of the group; each
     * dword's low byte of lane j: the scale, byte 17j */
    _Alignas(64) uint8_t ci[64], ei[64];
    for (int b = 0; b < 64; b++) ci[b] = (uint8_t)(17 * (b / 16) + 1 + b % 16), ei[b] = (uint8_t)(17 * (b / 16));
    const __m512i CI = _mm512_load_si512(ci), EI = _mm512_load_si512(ei), lut = LUT128(moe_mxfp4_values);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __mmask64 low = 0x1111111111111111ull;
    __m512 acc[TQ];
    for (uint32_t t = 0; t < TQ; t++) acc[t] = _mm512_setzero_ps();
    for (uint32_t q = 0; q < ng; q++) {
        const uint8_t *p = w + (size_t)68 * q;
        const size_t have = rb - (size_t)68 * q; /* bytes of the row from p on */
        _mm_prefetch((const char *)p + PFQ, PF_HINT);
        _mm_prefetch((const char *)p + PFQ + 64, PF_HINT);
        __m512i w0, w1;
        if (have >= 128) {
            w0 = _mm512_loadu_si512(p), w1 = _mm512_loadu_si512(p + 64);
        } else {
            const uint32_t n = (uint32_t)(have < 68 ? have : 68);
            w0 = _mm512_maskz_loadu_epi8(n >= 64 ? ~0ull : (1ull << n) - 1, p);
            w1 = _mm512_maskz_loadu_epi8(n > 64 ? (1ull << (n - 64)) - 1 : 0, p + 64);
        }
        const __m512i codes = _mm512_permutex2var_epi8(w0, CI, w1);
        const __m512i ul = _mm512_shuffle_epi8(lut, _mm512_and_si512(codes, m4));
        const __m512i uh = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(codes, 4), m4));
        /* e8m0 halved (the codebook holds doubled values), as e8m0h:
         * 2^(e - 128), f32 bits (e - 1) << 23, the denormals 2^-128 and
         * 2^-127 for e = 0, 1 */
        const __m512i e = _mm512_maskz_permutexvar_epi8(low, EI, w0);
        const __m512i bits = _mm512_mask_sllv_epi32(_mm512_slli_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(1)), 23),
                                                    _mm512_cmplt_epu32_mask(e, _mm512_set1_epi32(2)),
                                                    _mm512_set1_epi32(0x00200000), e);
        const __m512 s = _mm512_castsi512_ps(bits);
        for (uint32_t t = 0; t < tb; t++) {
            const mx4a *x = g + (size_t)t * ng + q;
            __m512i i32 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ul, x->xl);
            i32 = _mm512_sub_epi32(_mm512_dpbusd_epi32(i32, uh, x->xh), x->off);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i32), _mm512_mul_ps(s, x->d), acc[t]);
        }
    }
    for (uint32_t t = 0; t < tb; t++) res[t] = _mm512_reduce_add_ps(acc[t]);
}

T_VBMI static void gemv_vbmi_mxfp4(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1,
                                   const moe_acts *x, float *out, size_t ldo) {
    const uint32_t nb = k / 32, ng = (nb + 3) / 4;
    const size_t wrb = (size_t)nb * sizeof(moe_block_mxfp4), arb = (size_t)nb * sizeof(moe_qact_q8_0);
    mx4a *g = tile_scratch((size_t)TQ * ng * sizeof *g);
    if (!g) { /* no memory: the two-block kernel, needing none */
        gemv_vnni_mxfp4(w, ws, k, n0, n1, x, out, ldo);
        return;
    }
    for (uint32_t t0 = 0; t0 < x->m; t0 += TQ) {
        const uint32_t tb = x->m - t0 < TQ ? x->m - t0 : TQ;
        const moe_qact_q8_0 *a[TQ];
        PASS_ACTS(moe_qact_q8_0, a, x, arb, t0, tb);
        mx4_acts(a, tb, nb, g);
        for (uint32_t j = n0; j < n1; j++) {
            const uint8_t *row = (const uint8_t *)w + j * wrb;
            float r[TQ];
            switch (tb) {
            case 1: mx4_row(row, nb, g, 1, r); break;
            case 2: mx4_row(row, nb, g, 2, r); break;
            case 3: mx4_row(row, nb, g, 3, r); break;
            default: mx4_row(row, nb, g, TQ, r); break;
            }
            for (uint32_t t = 0; t < tb; t++) out[(size_t)(t0 + t) * ldo + (j - n0)] = r[t];
        }
    }
}

/* ---- activation blocks ------------------------------------------------------
 * The same blocks as common/quant.c's quantizers, bit for bit (d =
 * max|x| / 127, codes x * (127 / max|x|) rounded to nearest even; a block
 * with NaN or Inf gets d = NaN and zero codes), 16 values per vector. */

/* n (a multiple of 16) values at x into codes at q; returns d, and the
 * 16-sums in sums (when not NULL). */
T_512Q INLINE float qblock_512(const float *x, uint32_t n, int8_t *q, int16_t *sums) {
    __m512 amax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (uint32_t i = 0; i < n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        bad |= _mm512_fpclass_ps_mask(v, 0x99); /* QNaN, +Inf, -Inf, SNaN */
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    }
    const float m = _mm512_reduce_max_ps(amax), id = m > 0.0f ? 127.0f / m : 0.0f;
    if (bad || !(id <= FLT_MAX) || id == 0.0f) {
        memset(q, 0, n);
        if (sums) memset(sums, 0, n / 16 * sizeof *sums);
        return bad ? NAN : 0.0f;
    }
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (uint32_t i = 0; i < n; i += 16) {
        __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vid));
        c = _mm512_max_epi32(_mm512_min_epi32(c, hi), lo);
        _mm_storeu_si128((__m128i *)(void *)(q + i), _mm512_cvtepi32_epi8(c));
        if (sums) sums[i / 16] = (int16_t)_mm512_reduce_add_epi32(c);
    }
    return m / 127.0f;
}

T_512Q static void qact_512(moe_act_kind a, uint32_t k, const float *x, void *buf) {
    if (a == MOE_ACT_Q8_K) {
        moe_qact_q8_K *b = buf;
        for (uint32_t i = 0; i < k / MOE_QK_K; i++) b[i].d = qblock_512(x + MOE_QK_K * i, MOE_QK_K, b[i].qs, b[i].bsums);
    } else if (a == MOE_ACT_Q8_1) {
        moe_qact_q8_1 *b = buf;
        for (uint32_t i = 0; i < k / 32; i++) {
            int16_t s[2];
            b[i].d = qblock_512(x + 32 * i, 32, b[i].qs, s);
            b[i].sum = s[0] + s[1];
        }
    } else {
        moe_qact_q8_0 *b = buf;
        for (uint32_t i = 0; i < k / 32; i++) b[i].d = qblock_512(x + 32 * i, 32, b[i].qs, NULL);
    }
}

typedef struct kern512 {
    moe_dtype t;
    moe_gemv_fn vnni, bw;
} kern512;

static const kern512 k512[] = {
    {MOE_DTYPE_Q4_K, gemv_vnni_q4_K, gemv_bw_q4_K},
    {MOE_DTYPE_Q5_K, gemv_vnni_q5_K, gemv_bw_q5_K},
    {MOE_DTYPE_Q6_K, gemv_vnni_q6_K, gemv_bw_q6_K},
    {MOE_DTYPE_Q2_K, gemv_vnni_q2_K, gemv_bw_q2_K},
    {MOE_DTYPE_Q3_K, gemv_vnni_q3_K, gemv_bw_q3_K},
    {MOE_DTYPE_IQ4_XS, gemv_vnni_iq4_xs, gemv_bw_iq4_xs},
    {MOE_DTYPE_Q4_0, gemv_vnni_q4_0, NULL},
    {MOE_DTYPE_Q4_1, gemv_vnni_q4_1, NULL},
    {MOE_DTYPE_Q5_0, gemv_vnni_q5_0, NULL},
    {MOE_DTYPE_Q5_1, gemv_vnni_q5_1, NULL},
    {MOE_DTYPE_Q8_0, gemv_vnni_q8_0, NULL},
    {MOE_DTYPE_IQ4_NL, gemv_vnni_iq4_nl, NULL},
    {MOE_DTYPE_MXFP4, gemv_vnni_mxfp4, NULL},
};

/* ---- AVX2 -------------------------------------------------------------------
 * The same scheme at 256 bits for CPUs without AVX-512 (most laptops and
 * desktops): k-quant super-blocks unpacked once per row into 8 vectors of
 * 32 codes in natural order with their scales as 16-bit lanes, two rows per
 * pass sharing each token's activation loads; u8 codes x s8 activations in
 * vpmaddubsw, the scales in vpmaddwd. The 32-element formats take signed
 * codes with the classic sign trick (vpmaddubsw(|w|, sign(x, w))). */

T_AVX2 INLINE float f16_2(uint16_t h) { return _cvtsh_ss(h); }

/* A super-block's scales, mins and f32 factors, made once per block: sa
 * and sb the sources of the 16-bit scale vectors, mn the mins (or code
 * offsets) per 16 elements against the activations' sums of 16, d and dm
 * the factors of the code sum and of the mins. */
typedef struct kq2 {
    __m256i sa, sb, mn;
    float d, dm;
} kq2;

T_AVX2 INLINE __m256i ld2(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }

/* Byte-shuffle pattern: word a (zero-extended byte a for PB) in every
 * word of 128-bit lane 0, b in lane 1. */
#define WD(i) ((short)((2 * (i) + 1) << 8 | 2 * (i)))
#define PW2(a, b) _mm256_set_epi16(WD(b), WD(b), WD(b), WD(b), WD(b), WD(b), WD(b), WD(b), WD(a), WD(a), WD(a), WD(a), \
                                   WD(a), WD(a), WD(a), WD(a))
#define PB1(a) _mm256_set1_epi16((short)(0x8000 | (a)))

T_AVX2 INLINE __m128i kscales_2(const uint8_t *s12) {
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)s12);
    const __m128i a = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0));
    const __m128i b = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0));
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(a, _mm_set_epi32(4, 0, 0, 0)),
                                     _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
    const __m128i hi = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set_epi32(0x30303030, 0, 0x30303030, 0));
    return _mm_or_si128(lo, hi);
}

/* q4_K / q5_K: qs[32c .. 32c+31]'s low nibbles are sub-block 2c, the high
 * ones 2c + 1 (vector v is sub-block v of 32, scale byte v); q5_K's 5th
 * bit of sub-block j is bit j of qh[l]. */
T_AVX2 INLINE void prep2_qk(const uint8_t *scales, uint16_t d, uint16_t dmin, kq2 *k) {
    const __m128i sm = kscales_2(scales);
    k->sa = k->sb = _mm256_broadcastsi128_si256(sm);
    const __m128i mn8 = _mm_srli_si128(sm, 8);
    k->mn = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));
    k->d = f16_2(d), k->dm = f16_2(dmin);
}
T_AVX2 INLINE __m256i nibs2(const uint8_t *qs, int v) {
    const __m256i q = ld2(qs + 32 * (v / 2));
    return _mm256_and_si256(v & 1 ? _mm256_srli_epi16(q, 4) : q, _mm256_set1_epi8(0x0F));
}
T_AVX2 INLINE void prep2_q4_K(const moe_block_q4_K *b, kq2 *k) { prep2_qk(b->scales, b->d, b->dmin, k); }
T_AVX2 INLINE void prep2_q5_K(const moe_block_q5_K *b, kq2 *k) { prep2_qk(b->scales, b->d, b->dmin, k); }
T_AVX2 INLINE __m256i codes2_q4_K(const moe_block_q4_K *b, int v) { return nibs2(b->qs, v); }
T_AVX2 INLINE __m256i codes2_q5_K(const moe_block_q5_K *b, int v) {
    const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(ld2(b->qh), v), _mm256_set1_epi8(1));
    return _mm256_or_si256(nibs2(b->qs, v), _mm256_slli_epi16(hb, 4));
}
T_AVX2 INLINE __m256i scale2_32(const void *b, const kq2 *k, int v) {
    (void)b;
    return _mm256_shuffle_epi8(k->sa, PB1(v));
}

/* The formats with sub-blocks of 16: vector v holds sub-blocks 2v (low
 * lane) and 2v + 1 (high lane); sa the 16-bit scales 0..7, sb 8..15. */
T_AVX2 INLINE void scales2_16(__m256i sc16, kq2 *k) {
    k->sa = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc16));
    k->sb = _mm256_broadcastsi128_si256(_mm256_extracti128_si256(sc16, 1));
}
T_AVX2 INLINE __m256i scale2_16(const void *b, const kq2 *k, int v) {
    (void)b;
    return _mm256_shuffle_epi8(v < 4 ? k->sa : k->sb, PW2(2 * v % 8, 2 * v % 8 + 1));
}

/* q6_K: half H's ql[64H .. 64H+31] low nibbles are elements 128H + 0..31,
 * ql[64H+32 ..] low 32..63, the high nibbles 64..95 and 96..127; the high
 * bits of element 128H + 32s + l are bits 2s, 2s+1 of qh[32H + l]; codes
 * 0..63 stand for -32..31, the offset a min of 32 d sc. */
T_AVX2 INLINE void prep2_q6_K(const moe_block_q6_K *b, kq2 *k) {
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)b->scales));
    scales2_16(sc16, k);
    k->mn = sc16;
    k->d = f16_2(b->d), k->dm = 32.0f * k->d;
}
T_AVX2 INLINE __m256i codes2_q6_K(const moe_block_q6_K *b, int v) {
    const int h = v / 4, s = v % 4;
    const __m256i q = ld2(b->ql + 64 * h + 32 * (s & 1)), qh = ld2(b->qh + 32 * h);
    const __m256i lo = _mm256_and_si256(s < 2 ? q : _mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F));
    const __m256i hi = s == 0 ? _mm256_slli_epi16(qh, 4)
                     : s == 1 ? _mm256_slli_epi16(qh, 2)
                     : s == 2 ? qh
                              : _mm256_srli_epi16(qh, 2);
    return _mm256_or_si256(lo, _mm256_and_si256(hi, _mm256_set1_epi8(0x30)));
}

/* q2_K: element 128h + 32s + l is the 2 bits qs[32h + l] >> 2s; sub-block
 * j of 16 has scale d (sc[j] & 15) and min dmin (sc[j] >> 4). */
T_AVX2 INLINE __m256i crumb2(const uint8_t *qs, int v) {
    return _mm256_and_si256(_mm256_srli_epi16(ld2(qs + 32 * (v / 4)), 2 * (v % 4)), _mm256_set1_epi8(3));
}
T_AVX2 INLINE void prep2_q2_K(const moe_block_q2_K *b, kq2 *k) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)b->scales), m4 = _mm_set1_epi8(15);
    scales2_16(_mm256_cvtepu8_epi16(_mm_and_si128(raw, m4)), k);
    k->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4));
    k->d = f16_2(b->d), k->dm = f16_2(b->dmin);
}
T_AVX2 INLINE __m256i codes2_q2_K(const moe_block_q2_K *b, int v) { return crumb2(b->qs, v); }

/* q3_K: 2-bit codes as q2_K's, the 3rd bit of element e is bit e / 32 of
 * hmask[e % 32]; code' = low + 4 hbit (0..7), value d sc (code' - 4):
 * the mins are 4 d sc. */
T_AVX2 INLINE void prep2_q3_K(const moe_block_q3_K *b, kq2 *k) {
    const __m256i sc16 = _mm256_cvtepi8_epi16(q3_scales(b->scales));
    scales2_16(sc16, k);
    k->mn = sc16;
    k->d = f16_2(b->d), k->dm = 4.0f * k->d;
}
T_AVX2 INLINE __m256i codes2_q3_K(const moe_block_q3_K *b, int v) {
    const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(ld2(b->hmask), v), _mm256_set1_epi8(1));
    return _mm256_or_si256(crumb2(b->qs, v), _mm256_slli_epi16(hb, 2));
}

/* iq4_xs: sub-block j of 32 is codebook values of qs[16j ..]'s low
 * nibbles then its high ones, signed (up to +-127: u8 x s8 pairs would
 * saturate with a +128 offset, so they take the sign trick); scale
 * (6 bits - 32) from scales_l / scales_h; no mins. */
T_AVX2 INLINE __m256i codes2_lut(const uint8_t *qs, const int8_t *lut);
T_AVX2 INLINE void prep2_iq4_xs(const moe_block_iq4_xs *b, kq2 *k) {
    k->d = f16_2(b->d), k->dm = 0.0f;
    k->sa = k->sb = k->mn = _mm256_setzero_si256();
}
T_AVX2 INLINE __m256i codes2_iq4_xs(const moe_block_iq4_xs *b, int v) {
    return codes2_lut(b->qs + 16 * v, moe_iq4nl_values);
}
/* its scales in scalar code: the vector units are the kernel's limit */
T_AVX2 INLINE __m256i scale2_iq4_xs(const moe_block_iq4_xs *b, const kq2 *k, int v) {
    (void)k;
    const int sc = ((b->scales_l[v / 2] >> 4 * (v % 2)) & 15) | ((b->scales_h >> 2 * v) & 3) << 4;
    return _mm256_set1_epi16((short)(sc - 32));
}

/* Unsigned codes against s8 activations; signed ones with the sign trick. */
T_AVX2 INLINE __m256i mul2_u(__m256i c, __m256i x) { return _mm256_maddubs_epi16(c, x); }
T_AVX2 INLINE __m256i mul2_s(__m256i c, __m256i x) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(x, c));
}

T_AVX2 INLINE float hsum8(__m256 v) {
    const __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}

/* The AVX2 driver: one row at a time against TQ tokens at a time (a
 * pass's activations stay in L1 for every row), the token count a
 * constant in each call of the row function so that its loops unroll and
 * its accumulators stay in registers. STEP(b, a, i, tb, acc, accm, sm)
 * adds block i of a row: to acc (the f32 sums), accm (sums subtracted at
 * the end: k-quant mins) or sm (scalar sums added: q4_1's mins).
 * With TWO, consecutive blocks go to two sets of acc, so that the FMA
 * latency of one set does not bound a row of small blocks (the k-quants,
 * with a super-block's work between FMAs, would spill the second set). */
#define GEMV2_ROWS(F, BLK, ACT, QB, STEP, TWO)                                                                  \
    T_AVX2 INLINE void row2_##F(const BLK *w, const ACT *const *a, uint32_t nb, uint32_t tb, float res[TQ]) { \
        __m256 acc[TQ], acc2[TQ], accm[TQ];                                                                \
        float sm[TQ];                                                                                      \
        for (uint32_t t = 0; t < TQ; t++) acc[t] = acc2[t] = accm[t] = _mm256_setzero_ps(), sm[t] = 0.0f;  \
        uint32_t i = 0;                                                                                    \
        for (; i + 1 < nb; i += 2) {                                                                       \
            for (size_t l = 0; l < 2 * sizeof *w + 63; l += 64) _mm_prefetch((const char *)(w + i) + PFQ + l, PF_HINT); \
            STEP(w + i, a, i, tb, acc, accm, sm);                                                          \
            STEP(w + i + 1, a, i + 1, tb, (TWO) ? acc2 : acc, accm, sm);                                                 \
        }                                                                                                  \
        if (i < nb) STEP(w + i, a, i, tb, acc, accm, sm);                                                  \
        for (uint32_t t = 0; t < tb; t++) res[t] = hsum8(_mm256_add_ps(acc[t], acc2[t])) - hsum8(accm[t]) + sm[t]; \
    }                                                                                                      \
    T_AVX2 static void gemv_avx2_##F(const void *w, const float *ws, uint32_t k, uint32_t n0, uint32_t n1, \
                                     const moe_acts *x, float *out, size_t ldo) {                          \
        (void)ws;                                                                                          \
        const uint32_t nb = k / (QB);                                                                      \
        const size_t wrb = (size_t)nb * sizeof(BLK), arb = (size_t)nb * sizeof(ACT);                       \
        for (uint32_t t0 = 0; t0 < x->m; t0 += TQ) {                                                       \
            const uint32_t tb = x->m - t0 < TQ ? x->m - t0 : TQ;                                           \
            const ACT *a[TQ];                                                                              \
            PASS_ACTS(ACT, a, x, arb, t0, tb);                                                             \
            for (uint32_t j = n0; j < n1; j++) {                                                           \
                const BLK *b = (const BLK *)(const void *)((const char *)w + j * wrb);                     \
                float r[TQ];                                                                               \
                switch (tb) {                                                                              \
                case 1: row2_##F(b, a, nb, 1, r); break;                                                   \
                case 2: row2_##F(b, a, nb, 2, r); break;                                                   \
                case 3: row2_##F(b, a, nb, 3, r); break;                                                   \
                default: row2_##F(b, a, nb, TQ, r); break;                                                 \
                }                                                                                          \
                for (uint32_t t = 0; t < tb; t++) out[(size_t)(t0 + t) * ldo + (j - n0)] = r[t];           \
            }                                                                                              \
        }                                                                                                  \
    }

/* The k-quants, streamed: each 32-code vector v of a super-block is made
 * (CODES) and used at once against every token with its 16-bit scales
 * (SCALE), rather than a row's super-block being unpacked into 17 vectors
 * first (two rows of that are more than AVX2's 16 registers: the compiler
 * spilled them, and the kernels read 0.53-0.57 of DRAM). PREP makes the
 * block's kq2; MUL is mul2_u or mul2_s; MINS 0 for a format without mins. */
#define GEMV2_KQ(F, PREP, CODES, SCALE, MUL, MINS)                                                         \
    T_AVX2 INLINE void sb2_##F(const moe_block_##F *b, const moe_qact_q8_K *const *a, uint32_t i, uint32_t tb, \
                               __m256 *acc, __m256 *accm, float *sm) {                                     \
        (void)sm;                                                                                          \
        kq2 k;                                                                                             \
        PREP(b, &k);                                                                                       \
        __m256i s[TQ];                                                                                     \
        for (uint32_t t = 0; t < tb; t++) s[t] = _mm256_setzero_si256();                                   \
        _Pragma("GCC unroll 8") for (int v = 0; v < 8; v++) {                                              \
            const __m256i c = CODES(b, v), sc = SCALE(b, &k, v);                                           \
            for (uint32_t t = 0; t < tb; t++)                                                              \
                s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(MUL(c, ld2((const uint8_t *)a[t][i].qs + 32 * v)), sc)); \
        }                                                                                                  \
        for (uint32_t t = 0; t < tb; t++) {                                                                \
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), _mm256_set1_ps(k.d * a[t][i].d), acc[t]);   \
            if (MINS) {                                                                                    \
                const __m256i bs = _mm256_madd_epi16(ld2((const uint8_t *)a[t][i].bsums), k.mn);           \
                accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bs), _mm256_set1_ps(k.dm * a[t][i].d), accm[t]); \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
    GEMV2_ROWS(F, moe_block_##F, moe_qact_q8_K, MOE_QK_K, sb2_##F, 0)

GEMV2_KQ(q4_K, prep2_q4_K, codes2_q4_K, scale2_32, mul2_u, 1)
GEMV2_KQ(q5_K, prep2_q5_K, codes2_q5_K, scale2_32, mul2_u, 1)
GEMV2_KQ(q6_K, prep2_q6_K, codes2_q6_K, scale2_16, mul2_u, 1)
GEMV2_KQ(q2_K, prep2_q2_K, codes2_q2_K, scale2_16, mul2_u, 1)
GEMV2_KQ(q3_K, prep2_q3_K, codes2_q3_K, scale2_16, mul2_u, 1)
GEMV2_KQ(iq4_xs, prep2_iq4_xs, codes2_iq4_xs, scale2_iq4_xs, mul2_s, 0)

/* The 32-element formats with signed codes: a block per vector, 32 codes
 * as s8; the dot product vpmaddubsw(|w|, sign(x, w)), pairs then vpmaddwd
 * with ones; the block scale d_w d_x per lane. */
T_AVX2 INLINE __m256i codes2_q4_0(const moe_block_q4_0 *b) {
    const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)b->qs);
    const __m256i n = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
    return _mm256_sub_epi8(n, _mm256_set1_epi8(8));
}
/* q5_0 / q5_1's 5-bit codes, unsigned: nibbles as q4_0, bit l of qh
 * (a little-endian uint32) is element l's 5th. */
T_AVX2 INLINE __m256i codes2_q5(const uint8_t *qs, const uint8_t *qh) {
    const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)qs);
    const __m256i n = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
    uint32_t h;
    memcpy(&h, qh, 4);
    /* bit l of h to byte l: each byte picks its bit from a broadcast of h */
    const __m256i hv = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h),
                                           _mm256_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll,
                                                             0x0101010101010101ll, 0));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i hi = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hv, bit), bit), _mm256_set1_epi8(16));
    return _mm256_or_si256(n, hi);
}
T_AVX2 INLINE __m256i codes2_q5_0(const moe_block_q5_0 *b) {
    return _mm256_sub_epi8(codes2_q5(b->qs, b->qh), _mm256_set1_epi8(16));
}
T_AVX2 INLINE __m256i codes2_q4_1(const moe_block_q4_1 *b) {
    const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)b->qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}
T_AVX2 INLINE __m256i codes2_q5_1(const moe_block_q5_1 *b) { return codes2_q5(b->qs, b->qh); }
T_AVX2 INLINE __m256i codes2_q8_0(const moe_block_q8_0 *b) { return _mm256_loadu_si256((const __m256i *)(const void *)b->qs); }
T_AVX2 INLINE __m256i codes2_lut(const uint8_t *qs, const int8_t *lut) {
    const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)qs);
    const __m256i n = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)lut)), n);
}
T_AVX2 INLINE __m256i codes2_iq4_nl(const moe_block_iq4_nl *b) { return codes2_lut(b->qs, moe_iq4nl_values); }
T_AVX2 INLINE __m256i codes2_mxfp4(const moe_block_mxfp4 *b) { return codes2_lut(b->qs, moe_mxfp4_values); }
T_AVX2 INLINE float scale2_d(uint16_t d) { return f16_2(d); }

#define GEMV2_B32(F, CODES, SCALE)                                                                         \
    T_AVX2 INLINE void b32_##F(const moe_block_##F *b, const moe_qact_q8_0 *const *a, uint32_t i, uint32_t tb, \
                               __m256 *acc, __m256 *accm, float *sm) {                                     \
        (void)accm, (void)sm;                                                                              \
        const __m256i c = CODES(b), ac = _mm256_sign_epi8(c, c);                                           \
        const float d = SCALE(b);                                                                          \
        for (uint32_t t = 0; t < tb; t++) {                                                                \
            const __m256i xs = _mm256_sign_epi8(ld2((const uint8_t *)a[t][i].qs), c);                      \
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ac, xs), _mm256_set1_epi16(1));       \
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * a[t][i].d), acc[t]);        \
        }                                                                                                  \
    }                                                                                                      \
    GEMV2_ROWS(F, moe_block_##F, moe_qact_q8_0, 32, b32_##F, 1)

/* q4_1 / q5_1: unsigned codes and a min, against q8_1 blocks (their code
 * sums): d_w d_x (c . x) + m_w d_x sum(x), the second term in f32. */
#define GEMV2_B32M(F, CODES)                                                                               \
    T_AVX2 INLINE void b32_##F(const moe_block_##F *b, const moe_qact_q8_1 *const *a, uint32_t i, uint32_t tb, \
                               __m256 *acc, __m256 *accm, float *sm) {                                     \
        (void)accm;                                                                                        \
        const __m256i c = CODES(b);                                                                        \
        const float d = f16_2(b->d), mw = f16_2(b->m);                                                     \
        for (uint32_t t = 0; t < tb; t++) {                                                                \
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(c, ld2((const uint8_t *)a[t][i].qs)), _mm256_set1_epi16(1)); \
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * a[t][i].d), acc[t]);        \
            sm[t] += mw * a[t][i].d * (float)a[t][i].sum;                                                  \
        }                                                                                                  \
    }                                                                                                      \
    GEMV2_ROWS(F, moe_block_##F, moe_qact_q8_1, 32, b32_##F, 1)
GEMV2_B32M(q4_1, codes2_q4_1)
GEMV2_B32M(q5_1, codes2_q5_1)

#define SC2_D(b) f16_2((b)->d)
#define SC2_E(b) e8m0h((b)->e)
GEMV2_B32(q4_0, codes2_q4_0, SC2_D)
GEMV2_B32(q5_0, codes2_q5_0, SC2_D)
GEMV2_B32(q8_0, codes2_q8_0, SC2_D)
GEMV2_B32(iq4_nl, codes2_iq4_nl, SC2_D)
GEMV2_B32(mxfp4, codes2_mxfp4, SC2_E)

static const struct {
    moe_dtype t;
    moe_gemv_fn fn;
} k256[] = {
    {MOE_DTYPE_Q4_K, gemv_avx2_q4_K},   {MOE_DTYPE_Q5_K, gemv_avx2_q5_K}, {MOE_DTYPE_Q6_K, gemv_avx2_q6_K},
    {MOE_DTYPE_Q4_0, gemv_avx2_q4_0},   {MOE_DTYPE_Q5_0, gemv_avx2_q5_0}, {MOE_DTYPE_Q8_0, gemv_avx2_q8_0},
    {MOE_DTYPE_IQ4_NL, gemv_avx2_iq4_nl}, {MOE_DTYPE_MXFP4, gemv_avx2_mxfp4}, {MOE_DTYPE_Q4_1, gemv_avx2_q4_1},
    {MOE_DTYPE_Q5_1, gemv_avx2_q5_1},   {MOE_DTYPE_Q2_K, gemv_avx2_q2_K}, {MOE_DTYPE_Q3_K, gemv_avx2_q3_K},
    {MOE_DTYPE_IQ4_XS, gemv_avx2_iq4_xs},
};
#endif

/* ---- dispatch ---------------------------------------------------------- */

moe_kernel moe_kernel_select_block(moe_dtype t, bool portable) {
    if (t == MOE_DTYPE_FP8_E4M3) return moe_kernel_select_fp8(portable);
    moe_kernel k = {moe_act_of_block(t), c_kernel(t), "c"};
    if (portable) return k;
#ifdef MOE_X86
    const moe_isa *isa = moe_cpu_isa();
    for (size_t i = 0; isa->avx512 && i < sizeof k512 / sizeof k512[0]; i++)
        if (k512[i].t == t) {
            if (t == MOE_DTYPE_MXFP4 && isa->avx512_vbmi) return (moe_kernel){k.act, gemv_vbmi_mxfp4, "avx512_vbmi"};
            if (isa->avx512_vnni) return (moe_kernel){k.act, k512[i].vnni, "avx512_vnni"};
            if (k512[i].bw) return (moe_kernel){k.act, k512[i].bw, "avx512"};
        }
    for (size_t i = 0; isa->avx2 && i < sizeof k256 / sizeof k256[0]; i++)
        if (k256[i].t == t) return (moe_kernel){k.act, k256[i].fn, "avx2"};
#endif
    return k;
}
