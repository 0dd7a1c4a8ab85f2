/* quant_blocks.h - the block formats (GGUF's, and FP8 checkpoints' e4m3)
 * decoded eight elements at a time,
 * for the CUDA kernels (gpu/cuda/quant_kernels.cu) and, compiled as plain
 * C, for the host test that checks them against common/quant.c
 * (tests/test_cuda_quant.c). The same text is both: a GPU session is not
 * needed to find a wrong index here.
 *
 * Every value is computed as common/quant.c's reference dequantizer
 * computes it (gguf-py's float32 operations, in its order, each rounded on
 * its own), so a decoded element is bit-identical to moe_quant_dequantize.
 * On the device the multiplies and adds are __fmul_rn/__fadd_rn/__fsub_rn,
 * which nvcc never fuses into a multiply-add; on the host the including
 * file must be compiled with -ffp-contract=off (as quant.c is). Subnormal
 * scales need IEEE denormals: no -ftz=true or --use_fast_math.
 *
 * The layouts are common/quant.h's structs; a row of a block format is
 * moe_dtype_row_bytes(t, cols) bytes, its blocks back to back, and must be
 * 4-byte aligned (the slot pool aligns every matrix to 256). */
#ifndef MOE_GPU_CUDA_QUANT_BLOCKS_H
#define MOE_GPU_CUDA_QUANT_BLOCKS_H

#include <stdint.h>
#include <string.h>

#include "quant.h"

#ifdef __CUDACC__
#define MOE_QB_FN static __host__ __device__ __forceinline__
#else
#define MOE_QB_FN static inline
#endif
#ifdef __CUDA_ARCH__ /* nvcc's device pass; the host compiler knows no such pragma */
#define MOE_QB_UNROLL _Pragma("unroll")
#else
#define MOE_QB_UNROLL
#endif

/* Tokens the decode GEMV takes in one pass (its accumulators live in
 * registers). */
#define MOE_QB_MAX_M 8

/* ---- float arithmetic, rounded as numpy rounds ------------------------- */

MOE_QB_FN float moe_qb_mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

MOE_QB_FN float moe_qb_add(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

MOE_QB_FN float moe_qb_sub(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

MOE_QB_FN float moe_qb_from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

MOE_QB_FN uint32_t moe_qb_to_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

/* IEEE half bits to f32, exactly (moe_f16_to_f32's integer conversion, so
 * that host and device run the same code). */
MOE_QB_FN float moe_qb_h2f(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = ((uint32_t)h >> 10) & 31u, man = (uint32_t)h & 0x3ffu, bits;
    if (exp == 31u) {
        bits = sign | 0x7f800000u | man << 13; /* Inf, NaN */
    } else if (exp != 0u) {
        bits = sign | (exp + 112u) << 23 | man << 13;
    } else if (man == 0u) {
        bits = sign;
    } else { /* subnormal, man * 2^-24: shift the leading 1 to bit 10 */
        exp = 113u;
        while (!(man & 0x400u)) man <<= 1, exp--;
        bits = sign | exp << 23 | (man & 0x3ffu) << 13;
    }
    return moe_qb_from_bits(bits);
}

/* f32 to bf16 bits, round to nearest even, NaN stays a quiet NaN: as
 * moe_f32_to_bf16 and the CUDA intrinsic round. */
MOE_QB_FN uint16_t moe_qb_bf16(float f) {
    uint32_t u = moe_qb_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* MXFP4's scale: 2^(e - 128), half the e8m0 value (quant.c's e8m0_half). */
MOE_QB_FN float moe_qb_e8m0_half(uint8_t e) {
    return moe_qb_from_bits(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* The codebooks, packed into integers so the device reads no table:
 * moe_iq4nl_values[n] + 128 is byte n of the pair, and the magnitudes of
 * moe_mxfp4_values are the nibbles of 0xC8643210 (bit 3 of n is the sign). */
MOE_QB_FN int moe_qb_iq4nl(uint32_t n) {
    const uint64_t w = n < 8 ? 0x766A5D4F3F2D1801ull : 0xF1D9C5B5A6998D81ull;
    return (int)((w >> (8 * (n & 7u))) & 0xffu) - 128;
}

MOE_QB_FN int moe_qb_mxfp4(uint32_t n) {
    const int mag = (int)((0xC8643210u >> (4 * (n & 7u))) & 15u);
    return n & 8u ? -mag : mag;
}

/* ---- eight elements of a row ----------------------------------------------
 * v[i] = element c + i of the row (c a multiple of 8). Eight consecutive
 * elements always share a block and a sub-block (sub-blocks are 16 or 32),
 * so each function decodes its scales once. */

/* Q4_0, Q4_1, IQ4_NL, MXFP4: element l of a 32-block is nibble
 * qs[l % 16] >> 4 * (l / 16); a group of 8 starts at l0 = 0, 8, 16 or 24. */
#define MOE_QB_NIBBLE(qs, l0, i) ((uint32_t)((qs)[(l0) % 16 + (i)] >> (4 * ((l0) / 16))) & 15u)

MOE_QB_FN void moe_qb_deq8_q4_0(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q4_0 *b = (const moe_block_q4_0 *)(row + (size_t)(c / 32) * sizeof *b);
    const uint32_t l0 = c % 32;
    const float d = moe_qb_h2f(b->d);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) v[i] = moe_qb_mul(d, (float)((int)MOE_QB_NIBBLE(b->qs, l0, i) - 8));
}

MOE_QB_FN void moe_qb_deq8_q4_1(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q4_1 *b = (const moe_block_q4_1 *)(row + (size_t)(c / 32) * sizeof *b);
    const uint32_t l0 = c % 32;
    const float d = moe_qb_h2f(b->d), m = moe_qb_h2f(b->m);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) v[i] = moe_qb_add(moe_qb_mul(d, (float)MOE_QB_NIBBLE(b->qs, l0, i)), m);
}

/* Q5_0, Q5_1: the 5th bit of element l is bit l of qh as a little-endian uint32. */
MOE_QB_FN uint32_t moe_qb_qh32(const uint8_t qh[4]) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

MOE_QB_FN void moe_qb_deq8_q5_0(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q5_0 *b = (const moe_block_q5_0 *)(row + (size_t)(c / 32) * sizeof *b);
    const uint32_t l0 = c % 32, h = moe_qb_qh32(b->qh);
    const float d = moe_qb_h2f(b->d);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) {
        const uint32_t code = MOE_QB_NIBBLE(b->qs, l0, i) | ((h >> (l0 + i)) & 1u) << 4;
        v[i] = moe_qb_mul(d, (float)((int)code - 16));
    }
}

MOE_QB_FN void moe_qb_deq8_q5_1(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q5_1 *b = (const moe_block_q5_1 *)(row + (size_t)(c / 32) * sizeof *b);
    const uint32_t l0 = c % 32, h = moe_qb_qh32(b->qh);
    const float d = moe_qb_h2f(b->d), m = moe_qb_h2f(b->m);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) {
        const uint32_t code = MOE_QB_NIBBLE(b->qs, l0, i) | ((h >> (l0 + i)) & 1u) << 4;
        v[i] = moe_qb_add(moe_qb_mul(d, (float)code), m);
    }
}

MOE_QB_FN void moe_qb_deq8_q8_0(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q8_0 *b = (const moe_block_q8_0 *)(row + (size_t)(c / 32) * sizeof *b);
    const uint32_t l0 = c % 32;
    const float d = moe_qb_h2f(b->d);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) v[i] = moe_qb_mul(d, (float)b->qs[l0 + i]);
}

/* Q2_K: element e = 128h + 32s + l has code qs[32h + l] >> 2s & 3; the
 * group's sub-block of 16 is j = e0 / 16. */
MOE_QB_FN void moe_qb_deq8_q2_K(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q2_K *b = (const moe_block_q2_K *)(row + (size_t)(c / 256) * sizeof *b);
    const uint32_t e0 = c % 256, h = e0 / 128, s = (e0 % 128) / 32, l = e0 % 32, j = e0 / 16;
    const float d = moe_qb_h2f(b->d), dmin = moe_qb_h2f(b->dmin);
    const float dl = moe_qb_mul(d, (float)(b->scales[j] & 15)), ml = moe_qb_mul(dmin, (float)(b->scales[j] >> 4));
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) {
        const uint32_t code = ((uint32_t)b->qs[32 * h + l + i] >> (2 * s)) & 3u;
        v[i] = moe_qb_sub(moe_qb_mul(dl, (float)code), ml);
    }
}

/* Q3_K: element e = 128h + 32s + l has its low 2 bits at qs[32h + l] >> 2s
 * and is 4 less where bit 4h + s (= e / 32) of hmask[l] is clear; the
 * 6-bit scale of sub-block j = e0 / 16 as codes_q3_K unpacks it. */
MOE_QB_FN void moe_qb_deq8_q3_K(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q3_K *b = (const moe_block_q3_K *)(row + (size_t)(c / 256) * sizeof *b);
    const uint32_t e0 = c % 256, h = e0 / 128, s = (e0 % 128) / 32, l = e0 % 32, j = e0 / 16;
    const uint32_t lo4 = j < 8 ? (uint32_t)b->scales[j] & 15u : (uint32_t)b->scales[j - 8] >> 4;
    const uint32_t hi2 = ((uint32_t)b->scales[8 + j % 4] >> (2 * (j / 4))) & 3u;
    const float d = moe_qb_h2f(b->d);
    const float dl = moe_qb_mul(d, (float)((int)(lo4 | hi2 << 4) - 32));
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) {
        const int lo = (int)(((uint32_t)b->qs[32 * h + l + i] >> (2 * s)) & 3u);
        const uint32_t hi = ((uint32_t)b->hmask[l + i] >> (4 * h + s)) & 1u;
        v[i] = moe_qb_mul(dl, (float)(lo - (hi ? 0 : 4)));
    }
}

/* Q4_K, Q5_K: the 6-bit scale and min of sub-block j (scale_min_k4). */
MOE_QB_FN void moe_qb_scale_min_k4(const uint8_t s[12], uint32_t j, uint32_t *sc, uint32_t *mn) {
    if (j < 4) {
        *sc = (uint32_t)s[j] & 63u;
        *mn = (uint32_t)s[j + 4] & 63u;
    } else {
        *sc = ((uint32_t)s[j + 4] & 15u) | ((uint32_t)s[j - 4] >> 6) << 4;
        *mn = ((uint32_t)s[j + 4] >> 4) | ((uint32_t)s[j] >> 6) << 4;
    }
}

/* Element e = 64cc + 32hh + l has code qs[32cc + l] >> 4hh & 15 (and for
 * Q5_K bit 2cc + hh = e / 32 of qh[l] as its 5th bit); sub-block e / 32. */
MOE_QB_FN void moe_qb_deq8_qk_min(uint16_t dd, uint16_t ddmin, const uint8_t scales[12], const uint8_t *qh,
                                  const uint8_t qs[128], uint32_t e0, float v[8]) {
    const uint32_t cc = e0 / 64, hh = (e0 % 64) / 32, l = e0 % 32;
    uint32_t sc, mn;
    moe_qb_scale_min_k4(scales, e0 / 32, &sc, &mn);
    const float d = moe_qb_h2f(dd), dmin = moe_qb_h2f(ddmin);
    const float ds = moe_qb_mul(d, (float)sc), dm = moe_qb_mul(dmin, (float)mn);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) {
        uint32_t code = ((uint32_t)qs[32 * cc + l + i] >> (4 * hh)) & 15u;
        if (qh) code |= (((uint32_t)qh[l + i] >> (2 * cc + hh)) & 1u) << 4;
        v[i] = moe_qb_sub(moe_qb_mul(ds, (float)code), dm);
    }
}

MOE_QB_FN void moe_qb_deq8_q4_K(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q4_K *b = (const moe_block_q4_K *)(row + (size_t)(c / 256) * sizeof *b);
    moe_qb_deq8_qk_min(b->d, b->dmin, b->scales, NULL, b->qs, c % 256, v);
}

MOE_QB_FN void moe_qb_deq8_q5_K(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q5_K *b = (const moe_block_q5_K *)(row + (size_t)(c / 256) * sizeof *b);
    moe_qb_deq8_qk_min(b->d, b->dmin, b->scales, b->qh, b->qs, c % 256, v);
}

/* Q6_K: element e = 128H + r has its low 4 bits at ql[64H + r % 64] >>
 * 4(r / 64) and its high 2 at qh[32H + r % 32] >> 2(r / 32); int8 scale of
 * sub-block e / 16. A group of 8 keeps r / 64 and r / 32. */
MOE_QB_FN void moe_qb_deq8_q6_K(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_q6_K *b = (const moe_block_q6_K *)(row + (size_t)(c / 256) * sizeof *b);
    const uint32_t e0 = c % 256, H = e0 / 128, r = e0 % 128;
    const float d = moe_qb_h2f(b->d);
    const float ds = moe_qb_mul(d, (float)b->scales[e0 / 16]);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) {
        const uint32_t lo = ((uint32_t)b->ql[64 * H + r % 64 + i] >> (4 * (r / 64))) & 15u;
        const uint32_t hi = ((uint32_t)b->qh[32 * H + r % 32 + i] >> (2 * (r / 32))) & 3u;
        v[i] = moe_qb_mul(ds, (float)((int)(lo | hi << 4) - 32));
    }
}

MOE_QB_FN void moe_qb_deq8_iq4_nl(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_iq4_nl *b = (const moe_block_iq4_nl *)(row + (size_t)(c / 32) * sizeof *b);
    const uint32_t l0 = c % 32;
    const float d = moe_qb_h2f(b->d);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) v[i] = moe_qb_mul(d, (float)moe_qb_iq4nl(MOE_QB_NIBBLE(b->qs, l0, i)));
}

/* IQ4_XS: element e = 32j + 16hh + l is codebook[qs[16j + l] >> 4hh & 15];
 * the 6-bit signed scale of sub-block j as codes_iq4_xs unpacks it. */
MOE_QB_FN void moe_qb_deq8_iq4_xs(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_iq4_xs *b = (const moe_block_iq4_xs *)(row + (size_t)(c / 256) * sizeof *b);
    const uint32_t e0 = c % 256, j = e0 / 32, hh = (e0 % 32) / 16, l = e0 % 16;
    const uint32_t lo = ((uint32_t)b->scales_l[j / 2] >> (4 * (j % 2))) & 15u;
    const uint32_t hi = ((uint32_t)b->scales_h >> (2 * j)) & 3u;
    const float d = moe_qb_h2f(b->d);
    const float dl = moe_qb_mul(d, (float)((int)(lo | hi << 4) - 32));
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) {
        const uint32_t n = ((uint32_t)b->qs[16 * j + l + i] >> (4 * hh)) & 15u;
        v[i] = moe_qb_mul(dl, (float)moe_qb_iq4nl(n));
    }
}

MOE_QB_FN void moe_qb_deq8_mxfp4(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_mxfp4 *b = (const moe_block_mxfp4 *)(row + (size_t)(c / 32) * sizeof *b);
    const uint32_t l0 = c % 32;
    const float d = moe_qb_e8m0_half(b->e);
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) v[i] = moe_qb_mul(d, (float)moe_qb_mxfp4(MOE_QB_NIBBLE(b->qs, l0, i)));
}

/* An e4m3fn code as f32, exactly (quant.c's moe_e4m3_to_f32): normals
 * by moving the exponent (bias 7 to 127) and mantissa into place,
 * subnormals as m * 2^-9; NaN for 0x7f and 0xff. */
MOE_QB_FN float moe_qb_e4m3(uint8_t q) {
    const uint32_t e = (uint32_t)(q >> 3) & 15u, m = q & 7u, s = (uint32_t)(q & 0x80) << 24;
    if (e == 15 && m == 7) return moe_qb_from_bits(0x7fc00000u);
    if (e) return moe_qb_from_bits(s | (e + 120u) << 23 | m << 20);
    return moe_qb_from_bits(s | moe_qb_to_bits((float)m * 0.001953125f)); /* m * 2^-9, exact */
}

MOE_QB_FN void moe_qb_deq8_fp8(const uint8_t *row, uint32_t c, float v[8]) {
    const moe_block_fp8 *b = (const moe_block_fp8 *)(const void *)(row + (size_t)(c / MOE_FP8_BLOCK) * sizeof *b);
    const uint32_t l0 = c % MOE_FP8_BLOCK;
    MOE_QB_UNROLL
    for (uint32_t i = 0; i < 8; i++) v[i] = moe_qb_mul(b->d, moe_qb_e4m3(b->qs[l0 + i]));
}

/* Whether t is a block format decoded here (all 14 of common/quant.h). */
MOE_QB_FN int moe_qb_decodes(moe_dtype t) {
    switch (t) {
    case MOE_DTYPE_Q4_0: case MOE_DTYPE_Q4_1: case MOE_DTYPE_Q5_0: case MOE_DTYPE_Q5_1: case MOE_DTYPE_Q8_0:
    case MOE_DTYPE_Q2_K: case MOE_DTYPE_Q3_K: case MOE_DTYPE_Q4_K: case MOE_DTYPE_Q5_K: case MOE_DTYPE_Q6_K:
    case MOE_DTYPE_IQ4_NL: case MOE_DTYPE_IQ4_XS: case MOE_DTYPE_MXFP4: case MOE_DTYPE_FP8_E4M3: return 1;
    default: return 0;
    }
}

/* Elements c..c+7 of a row of format t; zeros for a format not decoded
 * here. The kernels instantiate it with t a constant, so the switch folds. */
MOE_QB_FN void moe_qb_deq8(moe_dtype t, const uint8_t *row, uint32_t c, float v[8]) {
    switch (t) {
    case MOE_DTYPE_Q4_0: moe_qb_deq8_q4_0(row, c, v); break;
    case MOE_DTYPE_Q4_1: moe_qb_deq8_q4_1(row, c, v); break;
    case MOE_DTYPE_Q5_0: moe_qb_deq8_q5_0(row, c, v); break;
    case MOE_DTYPE_Q5_1: moe_qb_deq8_q5_1(row, c, v); break;
    case MOE_DTYPE_Q8_0: moe_qb_deq8_q8_0(row, c, v); break;
    case MOE_DTYPE_Q2_K: moe_qb_deq8_q2_K(row, c, v); break;
    case MOE_DTYPE_Q3_K: moe_qb_deq8_q3_K(row, c, v); break;
    case MOE_DTYPE_Q4_K: moe_qb_deq8_q4_K(row, c, v); break;
    case MOE_DTYPE_Q5_K: moe_qb_deq8_q5_K(row, c, v); break;
    case MOE_DTYPE_Q6_K: moe_qb_deq8_q6_K(row, c, v); break;
    case MOE_DTYPE_IQ4_NL: moe_qb_deq8_iq4_nl(row, c, v); break;
    case MOE_DTYPE_IQ4_XS: moe_qb_deq8_iq4_xs(row, c, v); break;
    case MOE_DTYPE_MXFP4: moe_qb_deq8_mxfp4(row, c, v); break;
    case MOE_DTYPE_FP8_E4M3: moe_qb_deq8_fp8(row, c, v); break;
    default:
        for (uint32_t i = 0; i < 8; i++) v[i] = 0.0f;
        break;
    }
}

/* ---- what one thread of a kernel does ---------------------------------- */

/* The dequantize kernel: thread tid of nt (one thread block per row) writes
 * its groups of 8 of a row of cols elements (a multiple of 8) as bf16 bits:
 * groups tid, tid + nt, ... */
MOE_QB_FN void moe_qb_bf16_row(moe_dtype t, const uint8_t *row, uint32_t cols, uint32_t tid, uint32_t nt,
                               uint16_t *out) {
    for (uint32_t c = 8 * tid; c < cols; c += 8 * nt) {
        float v[8];
        moe_qb_deq8(t, row, c, v);
        MOE_QB_UNROLL
        for (uint32_t i = 0; i < 8; i++) out[c + i] = moe_qb_bf16(v[i]);
    }
}

/* The same as f32 (what the GEMV multiplies), for the device's own test. */
MOE_QB_FN void moe_qb_f32_row(moe_dtype t, const uint8_t *row, uint32_t cols, uint32_t tid, uint32_t nt, float *out) {
    for (uint32_t c = 8 * tid; c < cols; c += 8 * nt) moe_qb_deq8(t, row, c, out + c);
}

/* The decode GEMV: lane `lane` of nl (one warp per row) sums, for each of
 * the m <= MOE_QB_MAX_M tokens j, its groups of 8 of the row times x[j]
 * (x is [m][cols] f32): acc[j], in f32. The lanes' sums added up are the
 * row's dot products; acc[j] for j >= m is 0. */
MOE_QB_FN void moe_qb_dot_part(moe_dtype t, const uint8_t *row, uint32_t cols, const float *x, uint32_t m,
                               uint32_t lane, uint32_t nl, float acc[MOE_QB_MAX_M]) {
    MOE_QB_UNROLL
    for (uint32_t j = 0; j < MOE_QB_MAX_M; j++) acc[j] = 0.0f;
    for (uint32_t c = 8 * lane; c < cols; c += 8 * nl) {
        float v[8];
        moe_qb_deq8(t, row, c, v);
        MOE_QB_UNROLL
        for (uint32_t j = 0; j < MOE_QB_MAX_M; j++) {
            if (j < m) {
                const float *xj = x + (size_t)j * cols + c;
                MOE_QB_UNROLL
                for (uint32_t i = 0; i < 8; i++) acc[j] += v[i] * xj[i];
            }
        }
    }
}

#endif
