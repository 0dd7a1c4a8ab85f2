/* quant.h - the one definition of every weight format: the element types
 * and GGUF's block formats (Q4_0 .. MXFP4, stored as llama.cpp stores them),
 * with each block format's reference dequantizer and quantizer, the int8
 * activation blocks its dot product takes, and plain-C dot products.
 *
 * The dequantizers are bit-identical to gguf-py's numpy dequantize; the
 * quantizers of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and MXFP4 to gguf-py's quantize
 * (tests/test_quant.c checks both against its output). The k-quant and IQ4
 * quantizers are ours (gguf-py has none), judged by round-trip error. The
 * dot products are the portable reference that SIMD kernels are tested
 * against; docs/quantization.md describes the layouts and choices. */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Elements of a k-quant super-block (QK_K in llama.cpp). */
#define MOE_QK_K 256

/* ---- weight blocks, byte for byte as in GGUF files (little-endian) ----
 * f16 fields are IEEE half bits. Within a block, "element e" below is the
 * e-th of the block's values in row order. Rows of these blocks must be
 * 2-byte aligned (GGUF aligns tensors to 32). */

/* element l: d * ((qs[l % 16] >> 4 * (l / 16) & 15) - 8) */
typedef struct moe_block_q4_0 {
    uint16_t d;
    uint8_t qs[16];
} moe_block_q4_0;

/* element l: d * (qs nibble as Q4_0) + m */
typedef struct moe_block_q4_1 {
    uint16_t d, m;
    uint8_t qs[16];
} moe_block_q4_1;

/* element l: d * ((nibble as Q4_0 | bit l of qh << 4) - 16) */
typedef struct moe_block_q5_0 {
    uint16_t d;
    uint8_t qh[4]; /* a little-endian uint32: bit l is element l's 5th bit */
    uint8_t qs[16];
} moe_block_q5_0;

/* element l: d * (5-bit code as Q5_0) + m */
typedef struct moe_block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
} moe_block_q5_1;

/* element l: d * qs[l] */
typedef struct moe_block_q8_0 {
    uint16_t d;
    int8_t qs[32];
} moe_block_q8_0;

/* 16 sub-blocks of 16; sub-block j: scale d * (scales[j] & 15), min
 * dmin * (scales[j] >> 4). Element e = 128h + 32s + l: 2-bit code
 * qs[32h + l] >> 2s & 3; value scale * code - min. */
typedef struct moe_block_q2_K {
    uint8_t scales[16];
    uint8_t qs[64];
    uint16_t d, dmin;
} moe_block_q2_K;

/* 16 sub-blocks of 16 with 6-bit signed scales (code - 32): low 4 bits in
 * scales[j % 8] (high nibble for j >= 8), high 2 bits in scales[8 + j % 4]
 * at bit 2 * (j / 4). Element e = 128h + 32s + l: low 2 bits qs[32h + l] >>
 * 2s & 3, minus 4 where bit e / 32 of hmask[l] is clear; value d * scale *
 * code. */
typedef struct moe_block_q3_K {
    uint8_t hmask[32];
    uint8_t qs[64];
    uint8_t scales[12];
    uint16_t d;
} moe_block_q3_K;

/* 8 sub-blocks of 32 with 6-bit scales and mins packed in 12 bytes (j < 4:
 * scales[j] & 63 and scales[j + 4] & 63; j >= 4: low 4 bits in the nibbles
 * of scales[j + 4], high 2 bits in the top bits of scales[j - 4] and
 * scales[j]). Element e = 64c + 32h + l: code qs[32c + l] >> 4h & 15; value
 * d * scale * code - dmin * min. */
typedef struct moe_block_q4_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
} moe_block_q4_K;

/* Q4_K with a 5th bit: bit e / 32 of qh[e % 32]. */
typedef struct moe_block_q5_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
} moe_block_q5_K;

/* 16 sub-blocks of 16 with int8 scales. Element e = 128H + 64N + l' (l' <
 * 64) has its low 4 bits in ql[64H + l'] >> 4N; e = 128H + 32s + l (l < 32)
 * its high 2 bits in qh[32H + l] >> 2s; value d * scales[e / 16] *
 * (code - 32). */
typedef struct moe_block_q6_K {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} moe_block_q6_K;

/* element l: d * moe_iq4nl_values[nibble as Q4_0] */
typedef struct moe_block_iq4_nl {
    uint16_t d;
    uint8_t qs[16];
} moe_block_iq4_nl;

/* 8 sub-blocks of 32, 6-bit signed scales (code - 32): low 4 bits in
 * scales_l[j / 2] >> 4 * (j % 2), high 2 bits in scales_h >> 2j. Element e =
 * 32j + 16h + l: moe_iq4nl_values[qs[16j + l] >> 4h & 15]; value d * scale
 * * that. */
typedef struct moe_block_iq4_xs {
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[4];
    uint8_t qs[128];
} moe_block_iq4_xs;

/* element l: 2^(e - 128) * moe_mxfp4_values[nibble as Q4_0]: e2m1 values
 * doubled, so the scale is half the e8m0 one (as ggml). */
typedef struct moe_block_mxfp4 {
    uint8_t e;
    uint8_t qs[16];
} moe_block_mxfp4;

/* Not a GGUF type: FP8 checkpoints' e4m3fn weights (DeepSeek-V3, the
 * Qwen3 "-FP8" releases) in row-wise blocks of 128, each with its f32
 * scale; element l is d * e4m3(qs[l]). A checkpoint's 128 x 128 scale
 * tiles (`weight_scale_inv`) become the scale of each row's block, so a
 * block holds everything its dot product needs. e4m3fn: sign, 4 exponent
 * bits (bias 7), 3 mantissa bits, no infinities; 0x7f and 0xff are NaN;
 * largest 448. */
#define MOE_FP8_BLOCK 128
typedef struct moe_block_fp8 {
    float d;
    uint8_t qs[MOE_FP8_BLOCK];
} moe_block_fp8;

/* The e4m3fn value of a code (NaN for 0x7f, 0xff), and the code nearest
 * to v (ties to even; beyond +-448 saturated, NaN to 0). */
float moe_e4m3_to_f32(uint8_t code);
uint8_t moe_f32_to_e4m3(float v);

/* The codebooks: IQ4_NL / IQ4_XS values, and MXFP4's e2m1 values times 2. */
extern const int8_t moe_iq4nl_values[16];
extern const int8_t moe_mxfp4_values[16];

/* Activation blocks: a row of f32 activations quantized per block to int8
 * with an f32 scale, so that a dot product with a block of weights is an
 * exact integer sum times f32 scales. Internal formats (not ggml's bytes):
 * the scales are f32, the sums integers. */
typedef enum moe_qact {
    MOE_QACT_NONE = 0, /* element types: no block dot product */
    MOE_QACT_Q8_0,     /* 32 int8 and a scale: for formats without a min */
    MOE_QACT_Q8_1,     /* q8_0 and the sum of its 32 codes: for Q4_1, Q5_1 */
    MOE_QACT_Q8_K,     /* 256 int8, a scale, sums of 16: k-quants, IQ4_XS */
    MOE_QACT_COUNT_
} moe_qact;

/* x[i] ~ d * qs[i]; d = max|x| / 127, qs = x / d rounded to nearest even,
 * in -127..127. */
typedef struct moe_qact_q8_0 {
    float d;
    int8_t qs[32];
} moe_qact_q8_0;

/* q8_0 and sum = qs[0] + ... + qs[31], for a weight's min term. */
typedef struct moe_qact_q8_1 {
    float d;
    int32_t sum;
    int8_t qs[32];
} moe_qact_q8_1;

/* x[i] ~ d * qs[i] over 256; bsums[j] = qs[16j] + ... + qs[16j + 15], for
 * the k-quants' min terms. The codes start 64 bytes into the block, so in
 * a 64-byte aligned buffer every block's codes load as whole cache lines. */
typedef struct moe_qact_q8_K {
    float d;
    int16_t bsums[MOE_QK_K / 16];
    uint8_t pad[28];
    int8_t qs[MOE_QK_K];
} moe_qact_q8_K;

/* n elements (a whole number of blocks) of blocks -> f32. */
typedef void (*moe_dequant_fn)(const void *blocks, float *y, size_t n);
/* n elements (a whole number of blocks) of f32 -> blocks. */
typedef void (*moe_quant_fn)(const float *x, void *blocks, size_t n);
/* sum over n elements of weight * activation, the activations in the
 * format's moe_qact blocks. */
typedef float (*moe_vec_dot_fn)(const void *w, const void *act, size_t n);

typedef struct moe_quant_format {
    const char *name;       /* moe_dtype_name() */
    uint32_t block;         /* elements per block; 1 for the element types */
    uint32_t block_bytes;   /* bytes per block (per element for element types) */
    int32_t ggml_type;      /* GGML_TYPE_* of GGUF files; -1 for none */
    moe_qact act;           /* activation blocks of the dot product */
    bool gguf_py_quantize;  /* quantize is bit-identical to gguf-py's */
    moe_dequant_fn dequantize; /* NULL for the element types */
    moe_quant_fn quantize;
    moe_vec_dot_fn dot;
} moe_quant_format;

/* The format of t; NULL for an invalid dtype. */
const moe_quant_format *moe_quant_format_of(moe_dtype t);

/* The dtype of GGML type id `ggml_type`, or of a name as moe_dtype_name()
 * spells it; MOE_DTYPE_COUNT_ if none. */
moe_dtype moe_quant_from_ggml(int32_t ggml_type);
moe_dtype moe_quant_from_name(const char *name);

/* n elements of a block format to f32. MOE_ERR_INVALID_ARG when t is no
 * block format or n is not a whole number of its blocks. */
moe_status moe_quant_dequantize(moe_dtype t, const void *blocks, float *y, size_t n);

/* n f32 elements to a block format, as moe_quant_dequantize's errors.
 * NaN and +-Inf elements are quantized as if they were 0 (no code holds
 * them, and in a block's scale they would spoil the whole block); finite
 * values too large for a format's f16 scales saturate to its largest
 * scale. Blocks are independent: one block's values never change
 * another's codes. */
moe_status moe_quant_quantize(moe_dtype t, const float *x, void *blocks, size_t n);

/* Elements per activation block (32 or 256), bytes per block, bytes of n
 * elements (0 when n is not a whole number of blocks). */
size_t moe_qact_block(moe_qact a);
size_t moe_qact_block_bytes(moe_qact a);
size_t moe_qact_row_bytes(moe_qact a, size_t n);

/* n f32 activations to blocks of `a`. A block holding a NaN or +-Inf gets
 * d = NaN and codes 0, so every dot product with it is NaN, as the f32 one
 * would be. MOE_ERR_INVALID_ARG as moe_quant_dequantize. */
moe_status moe_qact_quantize(moe_qact a, const float *x, void *blocks, size_t n);

/* Blocks of `a` back to f32: d * qs, for tests and references. */
moe_status moe_qact_dequantize(moe_qact a, const void *blocks, float *y, size_t n);

/* Bytes of one SwiGLU expert's weight matrices: gate and up [inter,
 * hidden] in t, down [hidden, inter] in down_t (any dtypes); 0 when a row
 * is not a whole number of a format's blocks. Int8 row scales are not
 * weights: they are not counted. */
uint64_t moe_expert_weight_bytes(uint32_t hidden, uint32_t inter, moe_dtype t, moe_dtype down_t);

/* The dot product of n weights of block format t (one row) with n
 * activations quantized to format_of(t)->act blocks: integer sums per
 * block, exact, with the block scales applied in f32. n must be a whole
 * number of blocks (NaN otherwise). */
float moe_quant_dot(moe_dtype t, const void *w, const void *act, size_t n);

/* The reference for moe_quant_dot: the weights dequantized, then the dot
 * product with f32 activations x in double. NaN as moe_quant_dot. */
double moe_quant_dot_ref(moe_dtype t, const void *w, const float *x, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* MOE_QUANT_H */
