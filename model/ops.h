/* ops.h - the dense parts of a transformer on the CPU, in f32 activations:
 * matrix products with weights in any file's dtype (tensor.h: f32, f16,
 * bf16 and GGUF's block formats), RMSNorm,
 * rotary embeddings (NeoX halves, interleaved pairs, YaRN frequencies) and
 * softmax. Plain C with OpenMP over output rows; every routine is checked
 * against a double-precision loop in tests/test_llm.c. */
#ifndef MOE_MODEL_OPS_H
#define MOE_MODEL_OPS_H

#include "tensor.h"

/* A weight matrix of `rows` x `cols`, row-major, y = W x. */
typedef struct moe_mat {
    moe_dtype type;   /* f32, f16, bf16 or a block format (rows of whole blocks) */
    const void *data; /* NULL: absent */
    uint32_t rows, cols;
} moe_mat;

/* y[t, r] = sum_c W[r, c] x[t, c] (+ bias[r] if bias), for n tokens; x is
 * [n, W.cols], y [n, W.rows]; y must not overlap x. With a runtime, every
 * type runs on its CPU engine (moe_dense_matmul: AVX-512 and AMX kernels
 * for the element types; block formats take activations quantized to
 * their int8 blocks, as llama.cpp does); without one, on the plain f32
 * loop here (block rows dequantized). */
moe_status moe_matmul(moe_runtime_t *rt, const moe_mat *w, const float *x, uint32_t n, const float *bias, float *y);

/* Bytes of one row of W. */
size_t moe_mat_row_bytes(const moe_mat *w);

/* Row r of W into out[W.cols] as f32 (block rows dequantized as gguf-py
 * does). */
void moe_mat_row(const moe_mat *w, uint32_t r, float *out);

/* y = x / sqrt(mean(x^2) + eps) * weight, over len elements (in place
 * allowed); transformers' RMSNorm in f32. */
void moe_rmsnorm(const float *x, const float *weight, uint32_t len, float eps, float *y);

/* Rotary embedding tables: inv_freq[i] for i < dim/2 and a factor applied
 * to cos and sin (YaRN's attention scaling; 1 otherwise). */
typedef struct moe_rope {
    uint32_t dim;        /* rotated dimensions of a head */
    bool interleaved;    /* pairs (2i, 2i+1) (GPT-J, DeepSeek, GGUF llama) or halves (i, i + dim/2) (NeoX) */
    float mscale;
    float inv_freq[512]; /* dim <= 1024 */
} moe_rope;

/* Frequencies base^(-2i/dim); with yarn, DeepSeek-V2's YaRN blend of
 * interpolated and extrapolated frequencies (factor, original context,
 * beta_fast, beta_slow) and mscale = m(factor, mscale) / m(factor,
 * mscale_all_dim), m(s, x) = 0.1 x ln(s) + 1 (1 for s <= 1). */
void moe_rope_init(moe_rope *r, uint32_t dim, double base, bool interleaved);
void moe_rope_init_yarn(moe_rope *r, uint32_t dim, double base, bool interleaved, double factor, uint32_t orig_ctx,
                        double beta_fast, double beta_slow, double mscale, double mscale_all_dim);

/* Rotates the first r->dim elements of each of n_heads vectors spaced
 * `stride` floats apart, for position pos. */
void moe_rope_apply(const moe_rope *r, float *x, uint32_t n_heads, uint32_t stride, uint32_t pos);

/* In-place softmax over n values (max-subtracted, f32). */
void moe_softmax(float *x, uint32_t n);

/* YaRN's m(s, x). */
double moe_yarn_mscale(double scale, double x);

#endif
