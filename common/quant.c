/* quant.c - the weight formats (see quant.h): their table, reference
 * dequantizers and quantizers, the activation blocks and the plain-C dot
 * products.
 *
 * Bit-exactness with gguf-py's numpy code rests on doing the same float32
 * operations in the same order, each rounded on its own: this file is
 * compiled with -ffp-contract=off (CMakeLists.txt), as a multiply-add fused
 * here would round once where numpy rounds twice. */
#include "quant.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

_Static_assert(sizeof(moe_block_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(moe_block_q4_1) == 20, "q4_1 block");
_Static_assert(sizeof(moe_block_q5_0) == 22, "q5_0 block");
_Static_assert(sizeof(moe_block_q5_1) == 24, "q5_1 block");
_Static_assert(sizeof(moe_block_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(moe_block_q2_K) == 84, "q2_K block");
_Static_assert(sizeof(moe_block_q3_K) == 110, "q3_K block");
_Static_assert(sizeof(moe_block_q4_K) == 144, "q4_K block");
_Static_assert(sizeof(moe_block_q5_K) == 176, "q5_K block");
_Static_assert(sizeof(moe_block_q6_K) == 210, "q6_K block");
_Static_assert(sizeof(moe_block_iq4_nl) == 18, "iq4_nl block");
_Static_assert(sizeof(moe_block_iq4_xs) == 136, "iq4_xs block");
_Static_assert(sizeof(moe_block_mxfp4) == 17, "mxfp4 block");

const int8_t moe_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
const int8_t moe_mxfp4_values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* ======================================================================== */
/* Small helpers                                                            */
/* ======================================================================== */

static inline float h2f(uint16_t h) { return moe_f16_to_f32(h); }

/* f32 -> f16 bits, but a value that would round to Inf becomes the largest
 * finite half instead: a quantizer's scale must decode to a number. Below
 * that, exactly moe_f32_to_f16 (numpy's rounding). */
static uint16_t f2h_sat(float f) {
    if (fabsf(f) >= 65520.0f) return f < 0 ? 0xfbffu : 0x7bffu;
    return moe_f32_to_f16(f);
}

/* Saturates a scale to the f16 range and returns its inverse (0 for 0), as
 * gguf-py's `np.where(d == 0, 0, 1 / d)`. */
static float inv_scale(float *d) {
    if (fabsf(*d) >= 65520.0f) *d = *d < 0 ? -65504.0f : 65504.0f;
    return *d == 0.0f ? 0.0f : 1.0f / *d;
}

/* gguf-py's `np.trunc(v).astype(np.uint8).clip(0, hi)` for v >= 0, and 0 for
 * what numpy leaves undefined (negative or NaN), without C's undefined
 * float-to-int conversion of large values. */
static inline int trunc_code(float v, int hi) {
    if (!(v > 0.0f)) return 0;
    if (v >= (float)hi) return hi;
    return (int)v;
}

/* Nearest integer (ties to even, the SIMD conversions' rounding), clamped to
 * [lo, hi] (|lo|, |hi| < 2^22); NaN gives lo. Adding 1.5 * 2^23 leaves the
 * rounded integer in the low mantissa bits: lrintf's result without its
 * library call. */
static inline int round_code(float v, int lo, int hi) {
    if (!(v >= (float)lo)) return lo;
    if (v >= (float)hi) return hi;
    const float t = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &t, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* gguf-py's e8m0_to_fp32_half: 2^(e - 128), subnormal for e < 2. */
static inline float e8m0_half(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* A block with NaN or Inf is quantized with those elements as 0: no code
 * holds them, and in max|x| or a fit they would spoil the whole block. */
static const float *finite_block(const float *x, int n, float *buf) {
    bool ok = true;
    for (int i = 0; i < n; i++) ok &= isfinite(x[i]) != 0;
    if (ok) return x;
    for (int i = 0; i < n; i++) buf[i] = isfinite(x[i]) ? x[i] : 0.0f;
    return buf;
}

/* The 6-bit scales and mins of Q4_K and Q5_K. */
static void scale_min_k4(const uint8_t s[12], uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
    }
    for (int j = 4; j < 8; j++) {
        sc[j] = (uint8_t)((s[j + 4] & 15) | (s[j - 4] >> 6) << 4);
        mn[j] = (uint8_t)((s[j + 4] >> 4) | (s[j] >> 6) << 4);
    }
}

static void pack_scale_min_k4(const uint8_t sc[8], const uint8_t mn[8], uint8_t s[12]) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
}

/* ======================================================================== */
/* Codes: each block's quantized values in row order                        */
/* ======================================================================== */

/* Shared by the dequantizers and the dot products, so both read a layout
 * the same way. */

static void codes_q4_0(const uint8_t qs[16], int8_t q[32], int off) {
    for (int l = 0; l < 16; l++) {
        q[l] = (int8_t)((qs[l] & 15) - off);
        q[l + 16] = (int8_t)((qs[l] >> 4) - off);
    }
}

static void codes_q5(const uint8_t qs[16], const uint8_t qh[4], int8_t q[32], int off) {
    const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    for (int l = 0; l < 16; l++) {
        q[l] = (int8_t)((int)((qs[l] & 15) | ((h >> l) & 1) << 4) - off);
        q[l + 16] = (int8_t)((int)((qs[l] >> 4) | ((h >> (l + 16)) & 1) << 4) - off);
    }
}

static void codes_q2_K(const moe_block_q2_K *b, int8_t q[256]) {
    for (int h = 0; h < 2; h++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++) q[128 * h + 32 * s + l] = (int8_t)((b->qs[32 * h + l] >> 2 * s) & 3);
}

static void codes_q3_K(const moe_block_q3_K *b, int8_t q[256], int8_t sc[16]) {
    for (int h = 0; h < 2; h++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++) {
                const int lo = (b->qs[32 * h + l] >> 2 * s) & 3, hi = (b->hmask[l] >> (4 * h + s)) & 1;
                q[128 * h + 32 * s + l] = (int8_t)(lo - (hi ? 0 : 4));
            }
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? b->scales[j] & 15 : b->scales[j - 8] >> 4;
        const int hi = (b->scales[8 + j % 4] >> 2 * (j / 4)) & 3;
        sc[j] = (int8_t)((lo | hi << 4) - 32);
    }
}

static void codes_q4_K(const uint8_t qs[128], const uint8_t *qh, int8_t q[256]) {
    for (int c = 0; c < 4; c++)
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                int v = (qs[32 * c + l] >> 4 * h) & 15;
                if (qh) v |= ((qh[l] >> (2 * c + h)) & 1) << 4;
                q[64 * c + 32 * h + l] = (int8_t)v;
            }
}

static void codes_q6_K(const moe_block_q6_K *b, int8_t q[256]) {
    for (int e = 0; e < 256; e++) {
        const int H = e / 128, r = e % 128;
        const int lo = (b->ql[64 * H + r % 64] >> 4 * (r / 64)) & 15;
        const int hi = (b->qh[32 * H + r % 32] >> 2 * (r / 32)) & 3;
        q[e] = (int8_t)((lo | hi << 4) - 32);
    }
}

/* Values of a 4-bit codebook (IQ4, MXFP4) in the order of Q4_0's nibbles. */
static void codes_lut(const uint8_t qs[16], const int8_t lut[16], int8_t q[32]) {
    for (int l = 0; l < 16; l++) {
        q[l] = lut[qs[l] & 15];
        q[l + 16] = lut[qs[l] >> 4];
    }
}

static void codes_iq4_xs(const moe_block_iq4_xs *b, int8_t q[256], int8_t sc[8]) {
    for (int j = 0; j < 8; j++) {
        codes_lut(b->qs + 16 * j, moe_iq4nl_values, q + 32 * j);
        const int lo = (b->scales_l[j / 2] >> 4 * (j % 2)) & 15, hi = (b->scales_h >> 2 * j) & 3;
        sc[j] = (int8_t)((lo | hi << 4) - 32);
    }
}

/* ======================================================================== */
/* Reference dequantizers: gguf-py's operations, in its order               */
/* ======================================================================== */

static void deq_q4_0(const void *vb, float *y, size_t n) {
    const moe_block_q4_0 *b = vb;
    int8_t q[32];
    for (size_t i = 0; i < n / 32; i++, y += 32) {
        const float d = h2f(b[i].d);
        codes_q4_0(b[i].qs, q, 8);
        for (int l = 0; l < 32; l++) y[l] = d * (float)q[l];
    }
}

static void deq_q4_1(const void *vb, float *y, size_t n) {
    const moe_block_q4_1 *b = vb;
    int8_t q[32];
    for (size_t i = 0; i < n / 32; i++, y += 32) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        codes_q4_0(b[i].qs, q, 0);
        for (int l = 0; l < 32; l++) y[l] = d * (float)q[l] + m;
    }
}

static void deq_q5_0(const void *vb, float *y, size_t n) {
    const moe_block_q5_0 *b = vb;
    int8_t q[32];
    for (size_t i = 0; i < n / 32; i++, y += 32) {
        const float d = h2f(b[i].d);
        codes_q5(b[i].qs, b[i].qh, q, 16);
        for (int l = 0; l < 32; l++) y[l] = d * (float)q[l];
    }
}

static void deq_q5_1(const void *vb, float *y, size_t n) {
    const moe_block_q5_1 *b = vb;
    int8_t q[32];
    for (size_t i = 0; i < n / 32; i++, y += 32) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        codes_q5(b[i].qs, b[i].qh, q, 0);
        for (int l = 0; l < 32; l++) y[l] = d * (float)q[l] + m;
    }
}

static void deq_q8_0(const void *vb, float *y, size_t n) {
    const moe_block_q8_0 *b = vb;
    for (size_t i = 0; i < n / 32; i++, y += 32) {
        const float d = h2f(b[i].d);
        for (int l = 0; l < 32; l++) y[l] = d * (float)b[i].qs[l];
    }
}

static void deq_q2_K(const void *vb, float *y, size_t n) {
    const moe_block_q2_K *b = vb;
    int8_t q[256];
    for (size_t i = 0; i < n / 256; i++, y += 256) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        codes_q2_K(&b[i], q);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (float)(b[i].scales[j] & 15), ml = dmin * (float)(b[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) y[16 * j + l] = dl * (float)q[16 * j + l] - ml;
        }
    }
}

static void deq_q3_K(const void *vb, float *y, size_t n) {
    const moe_block_q3_K *b = vb;
    int8_t q[256], sc[16];
    for (size_t i = 0; i < n / 256; i++, y += 256) {
        const float d = h2f(b[i].d);
        codes_q3_K(&b[i], q, sc);
        for (int j = 0; j < 16; j++) {
            const float dl = d * (float)sc[j];
            for (int l = 0; l < 16; l++) y[16 * j + l] = dl * (float)q[16 * j + l];
        }
    }
}

/* Q4_K and Q5_K: the same scales, with or without the 5th bits. */
static void deq_qk_min(const uint16_t *dd, const uint8_t *scales, const uint8_t *qh, const uint8_t *qs, float *y) {
    int8_t q[256];
    uint8_t sc[8], mn[8];
    const float d = h2f(dd[0]), dmin = h2f(dd[1]);
    scale_min_k4(scales, sc, mn);
    codes_q4_K(qs, qh, q);
    for (int j = 0; j < 8; j++) {
        const float ds = d * (float)sc[j], dm = dmin * (float)mn[j];
        for (int l = 0; l < 32; l++) y[32 * j + l] = ds * (float)q[32 * j + l] - dm;
    }
}

static void deq_q4_K(const void *vb, float *y, size_t n) {
    const moe_block_q4_K *b = vb;
    for (size_t i = 0; i < n / 256; i++, y += 256) {
        const uint16_t dd[2] = {b[i].d, b[i].dmin};
        deq_qk_min(dd, b[i].scales, NULL, b[i].qs, y);
    }
}

static void deq_q5_K(const void *vb, float *y, size_t n) {
    const moe_block_q5_K *b = vb;
    for (size_t i = 0; i < n / 256; i++, y += 256) {
        const uint16_t dd[2] = {b[i].d, b[i].dmin};
        deq_qk_min(dd, b[i].scales, b[i].qh, b[i].qs, y);
    }
}

static void deq_q6_K(const void *vb, float *y, size_t n) {
    const moe_block_q6_K *b = vb;
    int8_t q[256];
    for (size_t i = 0; i < n / 256; i++, y += 256) {
        const float d = h2f(b[i].d);
        codes_q6_K(&b[i], q);
        for (int j = 0; j < 16; j++) {
            const float ds = d * (float)b[i].scales[j];
            for (int l = 0; l < 16; l++) y[16 * j + l] = ds * (float)q[16 * j + l];
        }
    }
}

static void deq_iq4_nl(const void *vb, float *y, size_t n) {
    const moe_block_iq4_nl *b = vb;
    int8_t q[32];
    for (size_t i = 0; i < n / 32; i++, y += 32) {
        const float d = h2f(b[i].d);
        codes_lut(b[i].qs, moe_iq4nl_values, q);
        for (int l = 0; l < 32; l++) y[l] = d * (float)q[l];
    }
}

static void deq_iq4_xs(const void *vb, float *y, size_t n) {
    const moe_block_iq4_xs *b = vb;
    int8_t q[256], sc[8];
    for (size_t i = 0; i < n / 256; i++, y += 256) {
        const float d = h2f(b[i].d);
        codes_iq4_xs(&b[i], q, sc);
        for (int j = 0; j < 8; j++) {
            const float dl = d * (float)sc[j];
            for (int l = 0; l < 32; l++) y[32 * j + l] = dl * (float)q[32 * j + l];
        }
    }
}

static void deq_mxfp4(const void *vb, float *y, size_t n) {
    const moe_block_mxfp4 *b = vb;
    int8_t q[32];
    for (size_t i = 0; i < n / 32; i++, y += 32) {
        const float d = e8m0_half(b[i].e);
        codes_lut(b[i].qs, moe_mxfp4_values, q);
        for (int l = 0; l < 32; l++) y[l] = d * (float)q[l];
    }
}

/* ---- FP8 e4m3fn in blocks of 128 with an f32 scale ---- */

float moe_e4m3_to_f32(uint8_t code) {
    const int e = code >> 3 & 15, m = code & 7;
    if (e == 15 && m == 7) return NAN;
    const float v = e ? ldexpf((float)(8 + m), e - 10) : ldexpf((float)m, -9);
    return code & 0x80 ? -v : v;
}

uint8_t moe_f32_to_e4m3(float v) {
    if (isnan(v)) return 0;
    const uint8_t sign = signbit(v) ? 0x80 : 0;
    const float a = fabsf(v);
    if (a >= 448.0f) return sign | 0x7e;
    int e2;
    (void)frexpf(a, &e2); /* a = f * 2^e2, f in [0.5, 1): exponent e2 - 1 */
    const int e = a == 0.0f || e2 - 1 < -6 ? -6 : e2 - 1; /* frexpf(0) gives 0 */
    /* a / 2^(e - 3) in [8, 16) for normals, [0, 8) below: the code is
     * (e + 6) * 8 plus it, rounded to even; a carry to 16 is the next
     * exponent's code, as it should be. */
    const int q = (int)nearbyintf(ldexpf(a, 3 - e));
    const int code = (e + 6) * 8 + q;
    return (uint8_t)(sign | (code > 0x7e ? 0x7e : code));
}

static void deq_fp8(const void *vb, float *y, size_t n) {
    const moe_block_fp8 *b = vb;
    for (size_t i = 0; i < n / MOE_FP8_BLOCK; i++, y += MOE_FP8_BLOCK)
        for (int l = 0; l < MOE_FP8_BLOCK; l++) y[l] = b[i].d * moe_e4m3_to_f32(b[i].qs[l]);
}

/* As the FP8 checkpoints are made: scale max|x| / 448, each value the
 * nearest e4m3 of x / scale. */
static void qnt_fp8(const float *x, void *vb, size_t n) {
    moe_block_fp8 *b = vb;
    float buf[MOE_FP8_BLOCK];
    for (size_t i = 0; i < n / MOE_FP8_BLOCK; i++) {
        const float *xb = finite_block(x + MOE_FP8_BLOCK * i, MOE_FP8_BLOCK, buf);
        float amax = 0.0f;
        for (int l = 0; l < MOE_FP8_BLOCK; l++) amax = fmaxf(amax, fabsf(xb[l]));
        b[i].d = amax / 448.0f;
        for (int l = 0; l < MOE_FP8_BLOCK; l++) b[i].qs[l] = amax > 0.0f ? moe_f32_to_e4m3(xb[l] / b[i].d) : 0;
    }
}

/* ======================================================================== */
/* Quantizers bit-identical to gguf-py (Q4_0 .. Q8_0, MXFP4)                */
/* ======================================================================== */

/* The element of largest magnitude, the first of equals (numpy's argmax). */
static float signed_absmax(const float *x, int n) {
    float max = x[0], amax = fabsf(x[0]);
    for (int i = 1; i < n; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), max = x[i];
    return max;
}

static void min_max(const float *x, int n, float *mn, float *mx) {
    *mn = *mx = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < *mn) *mn = x[i];
        if (x[i] > *mx) *mx = x[i];
    }
}

static void pack_nibbles(const int q[32], uint8_t qs[16]) {
    for (int l = 0; l < 16; l++) qs[l] = (uint8_t)((q[l] & 15) | (q[l + 16] & 15) << 4);
}

static void pack_qh(const int q[32], uint8_t qh[4]) {
    memset(qh, 0, 4);
    for (int l = 0; l < 32; l++) qh[l / 8] |= (uint8_t)(((q[l] >> 4) & 1) << (l % 8));
}

/* Symmetric 4 or 5 bits: d = max / -2^(bits-1), q = trunc(x / d + 2^(bits-1) + 0.5). */
static float quant_sym_block(const float *x, int q[32], int half) {
    float d = signed_absmax(x, 32) / (float)-half;
    const float id = inv_scale(&d);
    for (int l = 0; l < 32; l++) q[l] = trunc_code(x[l] * id + ((float)half + 0.5f), 2 * half - 1);
    return d;
}

/* With a min: d = (max - min) / (2^bits - 1), q = trunc((x - min) / d + 0.5). */
static float quant_min_block(const float *x, int q[32], int nmax, float *min) {
    float mx;
    min_max(x, 32, min, &mx);
    float d = (mx - *min) / (float)nmax;
    const float id = inv_scale(&d);
    for (int l = 0; l < 32; l++) q[l] = trunc_code((x[l] - *min) * id + 0.5f, nmax);
    return d;
}

static void qnt_q4_0(const float *x, void *vb, size_t n) {
    moe_block_q4_0 *b = vb;
    float buf[32];
    int q[32];
    for (size_t i = 0; i < n / 32; i++) {
        const float d = quant_sym_block(finite_block(x + 32 * i, 32, buf), q, 8);
        b[i].d = moe_f32_to_f16(d);
        pack_nibbles(q, b[i].qs);
    }
}

static void qnt_q4_1(const float *x, void *vb, size_t n) {
    moe_block_q4_1 *b = vb;
    float buf[32], min;
    int q[32];
    for (size_t i = 0; i < n / 32; i++) {
        const float d = quant_min_block(finite_block(x + 32 * i, 32, buf), q, 15, &min);
        b[i].d = moe_f32_to_f16(d), b[i].m = f2h_sat(min);
        pack_nibbles(q, b[i].qs);
    }
}

static void qnt_q5_0(const float *x, void *vb, size_t n) {
    moe_block_q5_0 *b = vb;
    float buf[32];
    int q[32];
    for (size_t i = 0; i < n / 32; i++) {
        const float d = quant_sym_block(finite_block(x + 32 * i, 32, buf), q, 16);
        b[i].d = moe_f32_to_f16(d);
        pack_qh(q, b[i].qh);
        pack_nibbles(q, b[i].qs);
    }
}

static void qnt_q5_1(const float *x, void *vb, size_t n) {
    moe_block_q5_1 *b = vb;
    float buf[32], min;
    int q[32];
    for (size_t i = 0; i < n / 32; i++) {
        const float d = quant_min_block(finite_block(x + 32 * i, 32, buf), q, 31, &min);
        b[i].d = moe_f32_to_f16(d), b[i].m = f2h_sat(min);
        pack_qh(q, b[i].qh);
        pack_nibbles(q, b[i].qs);
    }
}

/* d = max|x| / 127, q = x / d rounded half away from zero (np_roundf). */
static void qnt_q8_0(const float *x, void *vb, size_t n) {
    moe_block_q8_0 *b = vb;
    float buf[32];
    for (size_t i = 0; i < n / 32; i++) {
        const float *xb = finite_block(x + 32 * i, 32, buf);
        float amax = 0.0f;
        for (int l = 0; l < 32; l++) amax = fmaxf(amax, fabsf(xb[l]));
        float d = amax / 127.0f;
        const float id = inv_scale(&d);
        for (int l = 0; l < 32; l++) {
            const float v = roundf(xb[l] * id);
            b[i].qs[l] = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v);
        }
        b[i].d = moe_f32_to_f16(d);
    }
}

/* e = floor(log2(max|x|)) - 2 + 127 (so that the largest e2m1 value, 6,
 * times the scale covers max|x|); each element the nearest of the 16
 * values, the first of equals (numpy's argmin). log2 in double rounded to
 * float floors as numpy's float32 log2 does wherever the floor can differ,
 * at and just below powers of two (tests/gen/quant_cases.py asserts it for
 * every power of two of float's range). */
static void qnt_mxfp4(const float *x, void *vb, size_t n) {
    moe_block_mxfp4 *b = vb;
    float buf[32];
    int q[32];
    for (size_t i = 0; i < n / 32; i++) {
        const float *xb = finite_block(x + 32 * i, 32, buf);
        float amax = 0.0f;
        for (int l = 0; l < 32; l++) amax = fmaxf(amax, fabsf(xb[l]));
        int e = 0;
        if (amax > 0.0f) {
            const float lg = floorf((float)log2((double)amax)) - 2.0f + 127.0f;
            e = lg < 0.0f ? 0 : lg > 255.0f ? 255 : (int)lg; /* below 2^-125: the smallest scale */
        }
        const float d = e8m0_half((uint8_t)e);
        for (int l = 0; l < 32; l++) {
            int best = 0;
            float best_err = fabsf(d * (float)moe_mxfp4_values[0] - xb[l]);
            for (int k = 1; k < 16; k++) {
                const float err = fabsf(d * (float)moe_mxfp4_values[k] - xb[l]);
                if (err < best_err) best_err = err, best = k;
            }
            q[l] = best;
        }
        b[i].e = (uint8_t)e;
        pack_nibbles(q, b[i].qs);
    }
}

/* ======================================================================== */
/* Our quantizers (k-quants, IQ4): weighted least-squares fits              */
/* ======================================================================== */

/* gguf-py has no quantizer for these. Each sub-block's scale (and min) is
 * chosen by a weighted least-squares search: a sweep of candidate scales
 * around the range's, the best scale (and min) for each candidate's codes
 * solved in closed form, then codes and scale refitted in turn until they
 * stop improving. The sub-block scales are then quantized to the format's
 * codes, the super-block's f16 scales refitted by least squares to those
 * codes, and every value requantized with the scales the decoder will use.
 *
 * The weights give the larger values more say (w = rms + |x|, as ggml
 * weights Q4_K without an importance matrix): those carry more of a layer's
 * output, and the round-trip error of the small ones barely moves. Sums are
 * in double, so that rows of extreme magnitude neither overflow nor lose
 * the normal equations to cancellation. */

#define FIT_STEPS 20 /* candidate scales per sub-block */

static void importance(const float *x, int n, float *w) {
    double s2 = 0;
    for (int i = 0; i < n; i++) s2 += (double)x[i] * x[i];
    const double rms = sqrt(s2 / n);
    /* (rms + |x|) / rms: the same fits, but no overflow for huge x */
    for (int i = 0; i < n; i++) w[i] = rms > 0 ? (float)(1.0 + fabs(x[i]) / rms) : 1.0f;
}

/* x ~ s * q - m with q in 0..nmax, s >= 0 and m >= 0 (a sub-block's zero
 * stays representable, and ggml stores mins unsigned). Returns s; sets *min
 * and the codes. */
static float fit_min(int n, int nmax, const float *x, const float *w, uint8_t *q, float *min) {
    float lo, hi;
    min_max(x, n, &lo, &hi);
    if (lo > 0) lo = 0;
    if (!(hi > lo)) { /* all values equal lo <= 0 */
        memset(q, 0, (size_t)n);
        *min = -lo;
        return 0.0f;
    }
    double sw = 0, sx = 0;
    for (int i = 0; i < n; i++) sw += w[i], sx += (double)w[i] * x[i];
    uint8_t cand[32];
    const double range = (double)hi - lo; /* in double: hi - lo may overflow float */
    double best_err = INFINITY, best_s = range / nmax, best_o = lo;
    for (int i = 0; i < n; i++) q[i] = (uint8_t)round_code((float)((x[i] - best_o) / best_s), 0, nmax);
    /* Candidates: codes from scales (range) / (nmax - 1 .. nmax + 1), then
     * codes requantized with the best fit so far until they settle. */
    for (int step = 0; step <= FIT_STEPS + 4; step++) {
        if (step <= FIT_STEPS) {
            const double is = (nmax - 1.0 + 2.0 * step / FIT_STEPS) / range;
            for (int i = 0; i < n; i++) cand[i] = (uint8_t)round_code((float)(((double)x[i] - lo) * is), 0, nmax);
        } else {
            bool changed = false;
            for (int i = 0; i < n; i++) {
                cand[i] = (uint8_t)round_code((float)((x[i] - best_o) / best_s), 0, nmax);
                changed |= cand[i] != q[i];
            }
            if (!changed) break;
        }
        double sq = 0, sqq = 0, sqx = 0;
        for (int i = 0; i < n; i++) {
            sq += (double)w[i] * cand[i];
            sqq += (double)w[i] * cand[i] * cand[i];
            sqx += (double)w[i] * cand[i] * x[i];
        }
        const double det = sw * sqq - sq * sq;
        if (!(det > 0)) continue;
        double s = (sw * sqx - sx * sq) / det, o = (sqq * sx - sq * sqx) / det;
        if (o > 0) o = 0, s = sqx / sqq;
        if (!(s > 0)) continue;
        double err = 0;
        for (int i = 0; i < n; i++) {
            const double e = s * cand[i] + o - x[i];
            err += w[i] * e * e;
        }
        if (err < best_err) {
            best_err = err, best_s = s, best_o = o;
            memcpy(q, cand, (size_t)n);
        } else if (step > FIT_STEPS) {
            break;
        }
    }
    *min = (float)-best_o;
    return (float)best_s;
}

/* x ~ s * q with q in -nq .. nq-1 (s may be negative: the value of largest
 * magnitude then takes the longer side, -nq). Returns s. */
static float fit_sym(int n, int nq, const float *x, const float *w, int8_t *q) {
    const float xm = signed_absmax(x, n);
    if (xm == 0.0f) {
        memset(q, 0, (size_t)n);
        return 0.0f;
    }
    int8_t cand[32];
    double best = -1, best_s = 0;
    memset(q, 0, (size_t)n);
    for (int step = 0; step <= FIT_STEPS + 4; step++) {
        if (step <= FIT_STEPS) {
            const float is = -((float)nq - 1.0f + 2.0f * (float)step / FIT_STEPS) / xm;
            for (int i = 0; i < n; i++) cand[i] = (int8_t)round_code(x[i] * is, -nq, nq - 1);
        } else {
            bool changed = false;
            for (int i = 0; i < n; i++) {
                cand[i] = (int8_t)round_code((float)(x[i] / best_s), -nq, nq - 1);
                changed |= cand[i] != q[i];
            }
            if (!changed) break;
        }
        double sqq = 0, sqx = 0;
        for (int i = 0; i < n; i++) sqq += (double)w[i] * cand[i] * cand[i], sqx += (double)w[i] * cand[i] * x[i];
        /* The error at the best scale for these codes is sum w x^2 - sqx^2 / sqq. */
        const double gain = sqq > 0 ? sqx * sqx / sqq : -1;
        if (gain > best) {
            best = gain, best_s = sqx / sqq;
            memcpy(q, cand, (size_t)n);
        } else if (step > FIT_STEPS) {
            break;
        }
    }
    return (float)best_s;
}

/* The index of the codebook value nearest v (values ascending). */
static int nearest_index(const int8_t *v, int n, float x) {
    int lo = 0, hi = n - 1;
    if (!(x > (float)v[0])) return 0;
    if (x >= (float)v[hi]) return hi;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (x < (float)v[mid]) hi = mid;
        else lo = mid;
    }
    return x - (float)v[lo] <= (float)v[hi] - x ? lo : hi;
}

/* x ~ s * moe_iq4nl_values[q]: candidate scales put the value of largest
 * magnitude near either end of the codebook (-127 or 113). Returns s. */
static float fit_nl(int n, const float *x, const float *w, uint8_t *q) {
    const int8_t *v = moe_iq4nl_values;
    const float xm = signed_absmax(x, n);
    if (xm == 0.0f) {
        memset(q, 8, (size_t)n); /* the value nearest 0 */
        return 0.0f;
    }
    uint8_t cand[32];
    double best = -1, best_s = 0;
    memset(q, 8, (size_t)n);
    const int sweep = 2 * (FIT_STEPS / 2 + 1);
    for (int step = 0; step < sweep + 4; step++) {
        if (step < sweep) {
            const int k = step % (sweep / 2) - FIT_STEPS / 4; /* -5 .. 5 around each end */
            const float end = step < sweep / 2 ? (float)v[0] : (float)v[15];
            const float is = (end + (float)k) / xm;
            for (int i = 0; i < n; i++) cand[i] = (uint8_t)nearest_index(v, 16, x[i] * is);
        } else {
            bool changed = false;
            const float is = (float)(1.0 / best_s);
            for (int i = 0; i < n; i++) {
                cand[i] = (uint8_t)nearest_index(v, 16, x[i] * is);
                changed |= cand[i] != q[i];
            }
            if (!changed) break;
        }
        double sqq = 0, sqx = 0;
        for (int i = 0; i < n; i++) {
            const double c = v[cand[i]];
            sqq += w[i] * c * c, sqx += w[i] * c * x[i];
        }
        const double gain = sqq > 0 ? sqx * sqx / sqq : -1;
        if (gain > best && sqx != 0) {
            best = gain, best_s = sqx / sqq;
            memcpy(q, cand, (size_t)n);
        } else if (step >= sweep) {
            break;
        }
    }
    return (float)best_s;
}

/* The super-block scale of sub-block scales s[]: d such that s / d are the
 * codes lo..hi; for signed codes the scale of largest magnitude maps to lo
 * (the longer side). Saturated to f16. */
static float super_scale(const float *s, int n, int lo, int hi) {
    float d;
    if (lo < 0) d = signed_absmax(s, n) / (float)lo;
    else {
        d = 0;
        for (int j = 0; j < n; j++) d = fmaxf(d, s[j]);
        d /= (float)hi;
    }
    (void)inv_scale(&d);
    return d;
}

static int scale_code(float s, float d, int lo, int hi) { return d == 0.0f ? 0 : round_code(s / d, lo, hi); }

/* Refits the super-block scales of a format with mins to the codes: x ~ D *
 * a - M * b (a = sub-block scale code * value code, b = min code) in least
 * squares, M >= 0. Returns false when there is nothing to fit. */
static bool refit_dm(int n, const float *x, const float *w, const float *a, const float *b, float *D, float *M) {
    double saa = 0, sab = 0, sbb = 0, sax = 0, sbx = 0;
    for (int i = 0; i < n; i++) {
        saa += (double)w[i] * a[i] * a[i], sab += (double)w[i] * a[i] * b[i], sbb += (double)w[i] * b[i] * b[i];
        sax += (double)w[i] * a[i] * x[i], sbx += (double)w[i] * b[i] * x[i];
    }
    const double det = saa * sbb - sab * sab;
    double d, m;
    if (sbb > 0 && det > 1e-9 * saa * sbb) {
        d = (sbb * sax - sab * sbx) / det, m = (sab * sax - saa * sbx) / det;
        if (m < 0) m = 0, d = sax / saa;
    } else if (saa > 0) {
        d = sax / saa, m = sbb > 0 ? *M : 0;
    } else {
        return false;
    }
    if (!(d > 0) || !isfinite(d) || !isfinite(m)) return false;
    *D = (float)d, *M = (float)m;
    return true;
}

static double sq_err(int n, const float *x, const float *w, const float *y) {
    double e = 0;
    for (int i = 0; i < n; i++) e += (double)w[i] * ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
    return e;
}

/* ---- Q2_K, Q4_K, Q5_K: sub-block scales and mins ---- */

typedef struct kmin_fmt {
    int nsub, sub, nmax, cmax; /* sub-blocks, their length, largest value code, largest scale/min code */
} kmin_fmt;

/* Quantizes one super-block of 256: codes q, scale and min codes sc and mn,
 * f16 scales dd[2] (d, dmin). Everything else is the format's packing. */
static void quant_kmin(const kmin_fmt *f, const float *x, uint8_t q[256], uint8_t *sc, uint8_t *mn, uint16_t dd[2]) {
    float w[256], s[16] = {0}, m[16] = {0}, y[256], a[256], b[256];
    importance(x, 256, w);
    for (int j = 0; j < f->nsub; j++) s[j] = fit_min(f->sub, f->nmax, x + f->sub * j, w + f->sub * j, q + f->sub * j, &m[j]);
    const float d = super_scale(s, f->nsub, 0, f->cmax), dmin = super_scale(m, f->nsub, 0, f->cmax);
    for (int j = 0; j < f->nsub; j++) {
        sc[j] = (uint8_t)scale_code(s[j], d, 0, f->cmax);
        mn[j] = (uint8_t)scale_code(m[j], dmin, 0, f->cmax);
    }
    uint16_t hd = f2h_sat(d), hm = f2h_sat(dmin);
    double best = INFINITY;
    uint8_t qt[256];
    /* Requantize with the decoder's scales; then refit d and dmin to the
     * codes and try again, keeping the better. */
    for (int pass = 0; pass < 3; pass++) {
        const float D = h2f(hd), M = h2f(hm);
        for (int j = 0; j < f->nsub; j++) {
            const float ds = D * (float)sc[j], dm = M * (float)mn[j];
            for (int l = 0; l < f->sub; l++) {
                const int i = f->sub * j + l;
                qt[i] = (uint8_t)(ds > 0 ? round_code((x[i] + dm) / ds, 0, f->nmax) : 0);
                y[i] = ds * (float)qt[i] - dm;
                a[i] = (float)(sc[j] * qt[i]), b[i] = (float)mn[j];
            }
        }
        const double err = sq_err(256, x, w, y);
        if (!(err < best)) break;
        best = err, dd[0] = hd, dd[1] = hm;
        memcpy(q, qt, 256);
        float D2 = D, M2 = M;
        if (!refit_dm(256, x, w, a, b, &D2, &M2)) break;
        hd = f2h_sat(D2), hm = f2h_sat(M2);
        if (hd == dd[0] && hm == dd[1]) break;
    }
    if (best == INFINITY) dd[0] = hd, dd[1] = hm, memcpy(q, qt, 256);
}

static void qnt_q2_K(const float *x, void *vb, size_t n) {
    static const kmin_fmt f = {16, 16, 3, 15};
    moe_block_q2_K *b = vb;
    float buf[256];
    uint8_t q[256], sc[16], mn[16];
    for (size_t i = 0; i < n / 256; i++) {
        uint16_t dd[2];
        quant_kmin(&f, finite_block(x + 256 * i, 256, buf), q, sc, mn, dd);
        b[i].d = dd[0], b[i].dmin = dd[1];
        for (int j = 0; j < 16; j++) b[i].scales[j] = (uint8_t)(sc[j] | mn[j] << 4);
        memset(b[i].qs, 0, sizeof b[i].qs);
        for (int e = 0; e < 256; e++) b[i].qs[32 * (e / 128) + e % 32] |= (uint8_t)(q[e] << 2 * ((e % 128) / 32));
    }
}

static void pack_q4_K_codes(const uint8_t q[256], uint8_t qs[128]) {
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) qs[32 * c + l] = (uint8_t)((q[64 * c + l] & 15) | (q[64 * c + 32 + l] & 15) << 4);
}

static void qnt_q4_K(const float *x, void *vb, size_t n) {
    static const kmin_fmt f = {8, 32, 15, 63};
    moe_block_q4_K *b = vb;
    float buf[256];
    uint8_t q[256], sc[8], mn[8];
    for (size_t i = 0; i < n / 256; i++) {
        uint16_t dd[2];
        quant_kmin(&f, finite_block(x + 256 * i, 256, buf), q, sc, mn, dd);
        b[i].d = dd[0], b[i].dmin = dd[1];
        pack_scale_min_k4(sc, mn, b[i].scales);
        pack_q4_K_codes(q, b[i].qs);
    }
}

static void qnt_q5_K(const float *x, void *vb, size_t n) {
    static const kmin_fmt f = {8, 32, 31, 63};
    moe_block_q5_K *b = vb;
    float buf[256];
    uint8_t q[256], sc[8], mn[8];
    for (size_t i = 0; i < n / 256; i++) {
        uint16_t dd[2];
        quant_kmin(&f, finite_block(x + 256 * i, 256, buf), q, sc, mn, dd);
        b[i].d = dd[0], b[i].dmin = dd[1];
        pack_scale_min_k4(sc, mn, b[i].scales);
        pack_q4_K_codes(q, b[i].qs);
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int e = 0; e < 256; e++) b[i].qh[e % 32] |= (uint8_t)((q[e] >> 4) << (e / 32));
    }
}

/* ---- Q3_K, Q6_K, IQ4_XS, IQ4_NL: signed sub-block scales, no mins ---- */

typedef struct ksym_fmt {
    int nsub, sub, nq;  /* sub-blocks, their length, value codes -nq .. nq-1 (0: the IQ4 codebook) */
    int clo, chi;       /* scale codes */
} ksym_fmt;

static float value_of(const ksym_fmt *f, int code) { return f->nq ? (float)code : (float)moe_iq4nl_values[code]; }

static int code_of(const ksym_fmt *f, float v) {
    return f->nq ? round_code(v, -f->nq, f->nq - 1) : nearest_index(moe_iq4nl_values, 16, v);
}

/* One super-block (or, with nsub = 1 and no scale codes, an IQ4_NL block):
 * value codes q, scale codes sc, f16 scale *hd. */
static void quant_ksym(const ksym_fmt *f, const float *x, int n, int8_t *q, int8_t *sc, uint16_t *hd) {
    float w[256], s[16] = {0}, y[256], a[256];
    importance(x, n, w);
    for (int j = 0; j < f->nsub; j++) {
        if (f->nq) s[j] = fit_sym(f->sub, f->nq, x + f->sub * j, w + f->sub * j, q + f->sub * j);
        else s[j] = fit_nl(f->sub, x + f->sub * j, w + f->sub * j, (uint8_t *)q + f->sub * j);
    }
    const bool coded = f->chi > 0; /* sub-block scales as codes of d */
    float d = coded ? super_scale(s, f->nsub, f->clo, f->chi) : s[0];
    (void)inv_scale(&d);
    for (int j = 0; j < f->nsub; j++) sc[j] = (int8_t)(coded ? scale_code(s[j], d, f->clo, f->chi) : 1);
    uint16_t h = f2h_sat(d);
    double best = INFINITY;
    int8_t qt[256];
    for (int pass = 0; pass < 3; pass++) {
        const float D = h2f(h);
        for (int j = 0; j < f->nsub; j++) {
            const float ds = D * (float)sc[j], id = ds != 0.0f ? 1.0f / ds : 0.0f;
            for (int l = 0; l < f->sub; l++) {
                const int i = f->sub * j + l;
                qt[i] = (int8_t)code_of(f, x[i] * id);
                y[i] = ds * value_of(f, qt[i]);
                a[i] = (float)sc[j] * value_of(f, qt[i]);
            }
        }
        const double err = sq_err(n, x, w, y);
        if (!(err < best)) break;
        best = err, *hd = h;
        memcpy(q, qt, (size_t)n);
        /* The best d for these codes: sum w x a / sum w a^2. */
        double sax = 0, saa = 0;
        for (int i = 0; i < n; i++) sax += (double)w[i] * a[i] * x[i], saa += (double)w[i] * a[i] * a[i];
        if (!(saa > 0)) break;
        const uint16_t h2 = f2h_sat((float)(sax / saa));
        if (h2 == h) break;
        h = h2;
    }
    if (best == INFINITY) *hd = h, memcpy(q, qt, (size_t)n);
}

static void qnt_q3_K(const float *x, void *vb, size_t n) {
    static const ksym_fmt f = {16, 16, 4, -32, 31};
    moe_block_q3_K *b = vb;
    float buf[256];
    int8_t q[256], sc[16];
    for (size_t i = 0; i < n / 256; i++) {
        quant_ksym(&f, finite_block(x + 256 * i, 256, buf), 256, q, sc, &b[i].d);
        memset(b[i].scales, 0, sizeof b[i].scales);
        for (int j = 0; j < 16; j++) {
            const int c = sc[j] + 32;
            b[i].scales[j % 8] |= (uint8_t)((c & 15) << 4 * (j / 8));
            b[i].scales[8 + j % 4] |= (uint8_t)((c >> 4) << 2 * (j / 4));
        }
        memset(b[i].qs, 0, sizeof b[i].qs);
        memset(b[i].hmask, 0, sizeof b[i].hmask);
        for (int e = 0; e < 256; e++) {
            const int c = q[e] + 4; /* 0..7: 2 low bits, and the high bit set where no 4 is taken off */
            b[i].qs[32 * (e / 128) + e % 32] |= (uint8_t)((c & 3) << 2 * ((e % 128) / 32));
            b[i].hmask[e % 32] |= (uint8_t)((c >> 2) << (e / 32));
        }
    }
}

static void qnt_q6_K(const float *x, void *vb, size_t n) {
    static const ksym_fmt f = {16, 16, 32, -128, 127};
    moe_block_q6_K *b = vb;
    float buf[256];
    int8_t q[256], sc[16];
    for (size_t i = 0; i < n / 256; i++) {
        quant_ksym(&f, finite_block(x + 256 * i, 256, buf), 256, q, sc, &b[i].d);
        memcpy(b[i].scales, sc, sizeof b[i].scales);
        memset(b[i].ql, 0, sizeof b[i].ql);
        memset(b[i].qh, 0, sizeof b[i].qh);
        for (int e = 0; e < 256; e++) {
            const int c = q[e] + 32, H = e / 128, r = e % 128;
            b[i].ql[64 * H + r % 64] |= (uint8_t)((c & 15) << 4 * (r / 64));
            b[i].qh[32 * H + r % 32] |= (uint8_t)((c >> 4) << 2 * (r / 32));
        }
    }
}

static void qnt_iq4_nl(const float *x, void *vb, size_t n) {
    static const ksym_fmt f = {1, 32, 0, 0, 0};
    moe_block_iq4_nl *b = vb;
    float buf[32];
    int8_t q[32], sc[1];
    int qi[32];
    for (size_t i = 0; i < n / 32; i++) {
        quant_ksym(&f, finite_block(x + 32 * i, 32, buf), 32, q, sc, &b[i].d);
        for (int l = 0; l < 32; l++) qi[l] = q[l];
        pack_nibbles(qi, b[i].qs);
    }
}

static void qnt_iq4_xs(const float *x, void *vb, size_t n) {
    static const ksym_fmt f = {8, 32, 0, -32, 31};
    moe_block_iq4_xs *b = vb;
    float buf[256];
    int8_t q[256], sc[8];
    int qi[32];
    for (size_t i = 0; i < n / 256; i++) {
        quant_ksym(&f, finite_block(x + 256 * i, 256, buf), 256, q, sc, &b[i].d);
        b[i].scales_h = 0;
        memset(b[i].scales_l, 0, sizeof b[i].scales_l);
        for (int j = 0; j < 8; j++) {
            const int c = sc[j] + 32;
            b[i].scales_l[j / 2] |= (uint8_t)((c & 15) << 4 * (j % 2));
            b[i].scales_h |= (uint16_t)((c >> 4) << 2 * j);
            for (int l = 0; l < 32; l++) qi[l] = q[32 * j + l];
            pack_nibbles(qi, b[i].qs + 16 * j);
        }
    }
}

/* ======================================================================== */
/* Activation blocks                                                        */
/* ======================================================================== */

/* n values (32 or 256) to int8: d = max|x| / 127, q = x * (127 / max|x|)
 * to nearest even. A non-finite value makes d NaN; a block too small for
 * 127 / max|x| to be finite (max|x| < 4e-37) is zero. Returns d. */
static float qact_block(const float *x, int n, int8_t *q) {
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < n; i++) {
        finite &= isfinite(x[i]) != 0;
        amax = fmaxf(amax, fabsf(x[i]));
    }
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    if (!finite || !(id <= FLT_MAX) || id == 0.0f) {
        memset(q, 0, (size_t)n);
        return finite ? 0.0f : NAN;
    }
    for (int i = 0; i < n; i++) q[i] = (int8_t)round_code(x[i] * id, -127, 127);
    return amax / 127.0f;
}

static void qact_q8_0(const float *x, void *vb, size_t n) {
    moe_qact_q8_0 *b = vb;
    for (size_t i = 0; i < n / 32; i++) b[i].d = qact_block(x + 32 * i, 32, b[i].qs);
}

static void qact_q8_1(const float *x, void *vb, size_t n) {
    moe_qact_q8_1 *b = vb;
    for (size_t i = 0; i < n / 32; i++) {
        b[i].d = qact_block(x + 32 * i, 32, b[i].qs);
        b[i].sum = 0;
        for (int l = 0; l < 32; l++) b[i].sum += b[i].qs[l];
    }
}

static void qact_q8_K(const float *x, void *vb, size_t n) {
    moe_qact_q8_K *b = vb;
    for (size_t i = 0; i < n / 256; i++) {
        b[i].d = qact_block(x + 256 * i, 256, b[i].qs);
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++) s += b[i].qs[16 * j + l];
            b[i].bsums[j] = (int16_t)s;
        }
    }
}

/* ======================================================================== */
/* Dot products: exact integer sums per block, scales in f32                */
/* ======================================================================== */

/* Bounds of the int32 sums, per 256 values at most: |q| <= 127 on the
 * activation side; Q6_K 32 * 127 * 16 per sub-block times 128 for its
 * scale, times 16 sub-blocks = 1.3e8 < 2^31, the largest of all. */

static int32_t idot(const int8_t *a, const int8_t *b, int n) {
    int32_t s = 0;
    for (int i = 0; i < n; i++) s += (int32_t)a[i] * b[i];
    return s;
}

static float dot_q4_0(const void *vw, const void *va, size_t n) {
    const moe_block_q4_0 *w = vw;
    const moe_qact_q8_0 *a = va;
    int8_t q[32];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 32; i++) {
        codes_q4_0(w[i].qs, q, 8);
        sum += h2f(w[i].d) * a[i].d * (float)idot(q, a[i].qs, 32);
    }
    return sum;
}

/* x = d q + m: sum x a = d da sum(q qa) + m da sum(qa). */
static float dot_q4_1(const void *vw, const void *va, size_t n) {
    const moe_block_q4_1 *w = vw;
    const moe_qact_q8_1 *a = va;
    int8_t q[32];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 32; i++) {
        codes_q4_0(w[i].qs, q, 0);
        sum += h2f(w[i].d) * a[i].d * (float)idot(q, a[i].qs, 32) + h2f(w[i].m) * a[i].d * (float)a[i].sum;
    }
    return sum;
}

static float dot_q5_0(const void *vw, const void *va, size_t n) {
    const moe_block_q5_0 *w = vw;
    const moe_qact_q8_0 *a = va;
    int8_t q[32];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 32; i++) {
        codes_q5(w[i].qs, w[i].qh, q, 16);
        sum += h2f(w[i].d) * a[i].d * (float)idot(q, a[i].qs, 32);
    }
    return sum;
}

static float dot_q5_1(const void *vw, const void *va, size_t n) {
    const moe_block_q5_1 *w = vw;
    const moe_qact_q8_1 *a = va;
    int8_t q[32];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 32; i++) {
        codes_q5(w[i].qs, w[i].qh, q, 0);
        sum += h2f(w[i].d) * a[i].d * (float)idot(q, a[i].qs, 32) + h2f(w[i].m) * a[i].d * (float)a[i].sum;
    }
    return sum;
}

static float dot_q8_0(const void *vw, const void *va, size_t n) {
    const moe_block_q8_0 *w = vw;
    const moe_qact_q8_0 *a = va;
    float sum = 0.0f;
    for (size_t i = 0; i < n / 32; i++) sum += h2f(w[i].d) * a[i].d * (float)idot(w[i].qs, a[i].qs, 32);
    return sum;
}

static float dot_iq4_nl(const void *vw, const void *va, size_t n) {
    const moe_block_iq4_nl *w = vw;
    const moe_qact_q8_0 *a = va;
    int8_t q[32];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 32; i++) {
        codes_lut(w[i].qs, moe_iq4nl_values, q);
        sum += h2f(w[i].d) * a[i].d * (float)idot(q, a[i].qs, 32);
    }
    return sum;
}

static float dot_mxfp4(const void *vw, const void *va, size_t n) {
    const moe_block_mxfp4 *w = vw;
    const moe_qact_q8_0 *a = va;
    int8_t q[32];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 32; i++) {
        codes_lut(w[i].qs, moe_mxfp4_values, q);
        sum += e8m0_half(w[i].e) * a[i].d * (float)idot(q, a[i].qs, 32);
    }
    return sum;
}

/* Sub-block mins against the activations' sums of 16: sum over sub-blocks
 * of mn[j] * (the sums of its len / 16 groups). */
static int32_t min_sum(const uint8_t *mn, int nsub, int len, const int16_t *bsums) {
    int32_t s = 0;
    for (int j = 0; j < nsub; j++) {
        int32_t b = 0;
        for (int g = 0; g < len / 16; g++) b += bsums[j * (len / 16) + g];
        s += mn[j] * b;
    }
    return s;
}

static float dot_q2_K(const void *vw, const void *va, size_t n) {
    const moe_block_q2_K *w = vw;
    const moe_qact_q8_K *a = va;
    int8_t q[256];
    uint8_t mn[16];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 256; i++) {
        codes_q2_K(&w[i], q);
        int32_t sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += (w[i].scales[j] & 15) * idot(q + 16 * j, a[i].qs + 16 * j, 16);
            mn[j] = w[i].scales[j] >> 4;
        }
        const int32_t summ = min_sum(mn, 16, 16, a[i].bsums);
        sum += h2f(w[i].d) * a[i].d * (float)sumi - h2f(w[i].dmin) * a[i].d * (float)summ;
    }
    return sum;
}

static float dot_q3_K(const void *vw, const void *va, size_t n) {
    const moe_block_q3_K *w = vw;
    const moe_qact_q8_K *a = va;
    int8_t q[256], sc[16];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 256; i++) {
        codes_q3_K(&w[i], q, sc);
        int32_t sumi = 0;
        for (int j = 0; j < 16; j++) sumi += sc[j] * idot(q + 16 * j, a[i].qs + 16 * j, 16);
        sum += h2f(w[i].d) * a[i].d * (float)sumi;
    }
    return sum;
}

static float dot_qk_min(const uint16_t *dd, const uint8_t *scales, const uint8_t *qh, const uint8_t *qs,
                        const moe_qact_q8_K *a) {
    int8_t q[256];
    uint8_t sc[8], mn[8];
    scale_min_k4(scales, sc, mn);
    codes_q4_K(qs, qh, q);
    int32_t sumi = 0;
    for (int j = 0; j < 8; j++) sumi += sc[j] * idot(q + 32 * j, a->qs + 32 * j, 32);
    const int32_t summ = min_sum(mn, 8, 32, a->bsums);
    return h2f(dd[0]) * a->d * (float)sumi - h2f(dd[1]) * a->d * (float)summ;
}

static float dot_q4_K(const void *vw, const void *va, size_t n) {
    const moe_block_q4_K *w = vw;
    const moe_qact_q8_K *a = va;
    float sum = 0.0f;
    for (size_t i = 0; i < n / 256; i++) {
        const uint16_t dd[2] = {w[i].d, w[i].dmin};
        sum += dot_qk_min(dd, w[i].scales, NULL, w[i].qs, &a[i]);
    }
    return sum;
}

static float dot_q5_K(const void *vw, const void *va, size_t n) {
    const moe_block_q5_K *w = vw;
    const moe_qact_q8_K *a = va;
    float sum = 0.0f;
    for (size_t i = 0; i < n / 256; i++) {
        const uint16_t dd[2] = {w[i].d, w[i].dmin};
        sum += dot_qk_min(dd, w[i].scales, w[i].qh, w[i].qs, &a[i]);
    }
    return sum;
}

static float dot_q6_K(const void *vw, const void *va, size_t n) {
    const moe_block_q6_K *w = vw;
    const moe_qact_q8_K *a = va;
    int8_t q[256];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 256; i++) {
        codes_q6_K(&w[i], q);
        int32_t sumi = 0;
        for (int j = 0; j < 16; j++) sumi += w[i].scales[j] * idot(q + 16 * j, a[i].qs + 16 * j, 16);
        sum += h2f(w[i].d) * a[i].d * (float)sumi;
    }
    return sum;
}

static float dot_iq4_xs(const void *vw, const void *va, size_t n) {
    const moe_block_iq4_xs *w = vw;
    const moe_qact_q8_K *a = va;
    int8_t q[256], sc[8];
    float sum = 0.0f;
    for (size_t i = 0; i < n / 256; i++) {
        codes_iq4_xs(&w[i], q, sc);
        int32_t sumi = 0;
        for (int j = 0; j < 8; j++) sumi += sc[j] * idot(q + 32 * j, a[i].qs + 32 * j, 32);
        sum += h2f(w[i].d) * a[i].d * (float)sumi;
    }
    return sum;
}

/* ======================================================================== */
/* The table                                                                */
/* ======================================================================== */

static const moe_quant_format formats[MOE_DTYPE_COUNT_] = {
    /* Element types. moerun's int8 has f32 scales per row, which GGUF's
     * I8 (24) has not: no GGML type. */
    [MOE_DTYPE_F32] = {"f32", 1, 4, 0, MOE_QACT_NONE, false, NULL, NULL, NULL},
    [MOE_DTYPE_BF16] = {"bf16", 1, 2, 30, MOE_QACT_NONE, false, NULL, NULL, NULL},
    [MOE_DTYPE_F16] = {"f16", 1, 2, 1, MOE_QACT_NONE, false, NULL, NULL, NULL},
    [MOE_DTYPE_I8] = {"int8", 1, 1, -1, MOE_QACT_NONE, false, NULL, NULL, NULL},
    /* Block formats: llama.cpp's activation block for each (q8_1 where the
     * weights have a min, q8_K for the 256-blocks). */
    [MOE_DTYPE_Q4_0] = {"q4_0", 32, 18, 2, MOE_QACT_Q8_0, true, deq_q4_0, qnt_q4_0, dot_q4_0},
    [MOE_DTYPE_Q4_1] = {"q4_1", 32, 20, 3, MOE_QACT_Q8_1, true, deq_q4_1, qnt_q4_1, dot_q4_1},
    [MOE_DTYPE_Q5_0] = {"q5_0", 32, 22, 6, MOE_QACT_Q8_0, true, deq_q5_0, qnt_q5_0, dot_q5_0},
    [MOE_DTYPE_Q5_1] = {"q5_1", 32, 24, 7, MOE_QACT_Q8_1, true, deq_q5_1, qnt_q5_1, dot_q5_1},
    [MOE_DTYPE_Q8_0] = {"q8_0", 32, 34, 8, MOE_QACT_Q8_0, true, deq_q8_0, qnt_q8_0, dot_q8_0},
    [MOE_DTYPE_Q2_K] = {"q2_K", 256, 84, 10, MOE_QACT_Q8_K, false, deq_q2_K, qnt_q2_K, dot_q2_K},
    [MOE_DTYPE_Q3_K] = {"q3_K", 256, 110, 11, MOE_QACT_Q8_K, false, deq_q3_K, qnt_q3_K, dot_q3_K},
    [MOE_DTYPE_Q4_K] = {"q4_K", 256, 144, 12, MOE_QACT_Q8_K, false, deq_q4_K, qnt_q4_K, dot_q4_K},
    [MOE_DTYPE_Q5_K] = {"q5_K", 256, 176, 13, MOE_QACT_Q8_K, false, deq_q5_K, qnt_q5_K, dot_q5_K},
    [MOE_DTYPE_Q6_K] = {"q6_K", 256, 210, 14, MOE_QACT_Q8_K, false, deq_q6_K, qnt_q6_K, dot_q6_K},
    [MOE_DTYPE_IQ4_NL] = {"iq4_nl", 32, 18, 20, MOE_QACT_Q8_0, false, deq_iq4_nl, qnt_iq4_nl, dot_iq4_nl},
    [MOE_DTYPE_IQ4_XS] = {"iq4_xs", 256, 136, 23, MOE_QACT_Q8_K, false, deq_iq4_xs, qnt_iq4_xs, dot_iq4_xs},
    [MOE_DTYPE_MXFP4] = {"mxfp4", 32, 17, 39, MOE_QACT_Q8_0, true, deq_mxfp4, qnt_mxfp4, dot_mxfp4},
    /* FP8 checkpoints: no GGML type; f32 activations, no int8 dot. */
    [MOE_DTYPE_FP8_E4M3] = {"fp8_e4m3", MOE_FP8_BLOCK, sizeof(moe_block_fp8), -1, MOE_QACT_NONE, false, deq_fp8,
                            qnt_fp8, NULL},
};

const moe_quant_format *moe_quant_format_of(moe_dtype t) {
    return (unsigned)t < MOE_DTYPE_COUNT_ ? &formats[t] : NULL;
}

moe_dtype moe_quant_from_ggml(int32_t ggml_type) {
    for (int t = 0; t < MOE_DTYPE_COUNT_; t++)
        if (ggml_type >= 0 && formats[t].ggml_type == ggml_type) return (moe_dtype)t;
    return MOE_DTYPE_COUNT_;
}

moe_dtype moe_quant_from_name(const char *name) {
    for (int t = 0; name && t < MOE_DTYPE_COUNT_; t++)
        if (!strcmp(formats[t].name, name)) return (moe_dtype)t;
    return MOE_DTYPE_COUNT_;
}

/* ---- the public dtype queries ---- */

const char *moe_dtype_name(moe_dtype t) {
    const moe_quant_format *f = moe_quant_format_of(t);
    return f ? f->name : "invalid";
}

size_t moe_dtype_size(moe_dtype t) {
    const moe_quant_format *f = moe_quant_format_of(t);
    return f && f->block == 1 ? f->block_bytes : 0;
}

size_t moe_dtype_block(moe_dtype t) {
    const moe_quant_format *f = moe_quant_format_of(t);
    return f ? f->block : 0;
}

size_t moe_dtype_block_bytes(moe_dtype t) {
    const moe_quant_format *f = moe_quant_format_of(t);
    return f ? f->block_bytes : 0;
}

size_t moe_dtype_row_bytes(moe_dtype t, size_t n) {
    const moe_quant_format *f = moe_quant_format_of(t);
    size_t b;
    if (!f || n % f->block || !moe_mul_size(n / f->block, f->block_bytes, &b)) return 0;
    return b;
}

int moe_dtype_is_block(moe_dtype t) {
    const moe_quant_format *f = moe_quant_format_of(t);
    return f && f->block > 1;
}

/* ---- conversions ---- */

static const moe_quant_format *block_format(moe_dtype t, const void *a, const void *b, size_t n, const char *what) {
    const moe_quant_format *f = moe_quant_format_of(t);
    if (!f || f->block == 1) {
        moe_fail(MOE_ERR_INVALID_ARG, "%s: %s is not a block format", what, moe_dtype_name(t));
        return NULL;
    }
    if (n % f->block || (n && (!a || !b))) {
        moe_fail(MOE_ERR_INVALID_ARG, "%s: %zu %s elements: %s", what, n, f->name,
                 n % f->block ? "not a whole number of blocks" : "NULL buffer");
        return NULL;
    }
    return f;
}

moe_status moe_quant_dequantize(moe_dtype t, const void *blocks, float *y, size_t n) {
    const moe_quant_format *f = block_format(t, blocks, y, n, "moe_quant_dequantize");
    if (!f) return MOE_ERR_INVALID_ARG;
    f->dequantize(blocks, y, n);
    return MOE_OK;
}

moe_status moe_quant_quantize(moe_dtype t, const float *x, void *blocks, size_t n) {
    const moe_quant_format *f = block_format(t, x, blocks, n, "moe_quant_quantize");
    if (!f) return MOE_ERR_INVALID_ARG;
    f->quantize(x, blocks, n);
    return MOE_OK;
}

moe_status moe_quantize(moe_dtype t, const float *x, void *blocks, size_t n) {
    const moe_quant_format *f = block_format(t, x, blocks, n, "moe_quantize");
    if (!f) return MOE_ERR_INVALID_ARG;
    f->quantize(x, blocks, n);
    return MOE_OK;
}

moe_status moe_dequantize(moe_dtype t, const void *blocks, float *y, size_t n) {
    const moe_quant_format *f = block_format(t, blocks, y, n, "moe_dequantize");
    if (!f) return MOE_ERR_INVALID_ARG;
    f->dequantize(blocks, y, n);
    return MOE_OK;
}

/* ---- activation blocks ---- */

static const struct {
    uint32_t block, bytes;
    moe_quant_fn quantize;
} qacts[MOE_QACT_COUNT_] = {
    [MOE_QACT_Q8_0] = {32, sizeof(moe_qact_q8_0), qact_q8_0},
    [MOE_QACT_Q8_1] = {32, sizeof(moe_qact_q8_1), qact_q8_1},
    [MOE_QACT_Q8_K] = {256, sizeof(moe_qact_q8_K), qact_q8_K},
};

size_t moe_qact_block(moe_qact a) { return (unsigned)a < MOE_QACT_COUNT_ ? qacts[a].block : 0; }

size_t moe_qact_block_bytes(moe_qact a) { return (unsigned)a < MOE_QACT_COUNT_ ? qacts[a].bytes : 0; }

size_t moe_qact_row_bytes(moe_qact a, size_t n) {
    const size_t b = moe_qact_block(a);
    size_t r;
    if (!b || n % b || !moe_mul_size(n / b, moe_qact_block_bytes(a), &r)) return 0;
    return r;
}

moe_status moe_qact_quantize(moe_qact a, const float *x, void *blocks, size_t n) {
    const size_t b = moe_qact_block(a);
    if (!b || n % b || (n && (!x || !blocks)))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_qact_quantize: %zu values in activation blocks of %zu", n, b);
    qacts[a].quantize(x, blocks, n);
    return MOE_OK;
}

moe_status moe_qact_dequantize(moe_qact a, const void *blocks, float *y, size_t n) {
    const size_t b = moe_qact_block(a);
    if (!b || n % b || (n && (!y || !blocks)))
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_qact_dequantize: %zu values in activation blocks of %zu", n, b);
    const char *p = blocks;
    for (size_t i = 0; i < n / b; i++, p += qacts[a].bytes) {
        float d;
        const int8_t *q;
        memcpy(&d, p, sizeof d); /* every activation block starts with d */
        q = a == MOE_QACT_Q8_0 ? ((const moe_qact_q8_0 *)(const void *)p)->qs
            : a == MOE_QACT_Q8_1 ? ((const moe_qact_q8_1 *)(const void *)p)->qs
                                 : ((const moe_qact_q8_K *)(const void *)p)->qs;
        for (size_t l = 0; l < b; l++) y[i * b + l] = d * (float)q[l];
    }
    return MOE_OK;
}

/* ---- dot products ---- */

float moe_quant_dot(moe_dtype t, const void *w, const void *act, size_t n) {
    const moe_quant_format *f = moe_quant_format_of(t);
    if (!f || !f->dot || n % f->block || (n && (!w || !act))) return NAN;
    return f->dot(w, act, n);
}

double moe_quant_dot_ref(moe_dtype t, const void *w, const float *x, size_t n) {
    const moe_quant_format *f = moe_quant_format_of(t);
    if (!f || !f->dequantize || n % f->block || (n && (!w || !x))) return NAN;
    float y[MOE_QK_K];
    double s = 0;
    for (size_t i = 0; i < n; i += f->block) {
        f->dequantize((const char *)w + i / f->block * f->block_bytes, y, f->block);
        for (size_t l = 0; l < f->block; l++) s += (double)y[l] * x[i + l];
    }
    return s;
}

uint64_t moe_expert_weight_bytes(uint32_t hidden, uint32_t inter, moe_dtype t, moe_dtype down_t) {
    const uint64_t gu = moe_dtype_row_bytes(t, hidden), d = moe_dtype_row_bytes(down_t, inter);
    return gu && d ? 2 * (uint64_t)inter * gu + (uint64_t)hidden * d : 0;
}
