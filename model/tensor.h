/* tensor.h - what the weight-file readers (safetensors.c, gguf.c) give the
 * model loader: named tensors that point into read-only memory maps of the
 * files, never copied.
 *
 * Shapes are in row-major order, outermost first, as PyTorch and
 * safetensors write them: an nn.Linear weight of out x in is {out, in}.
 * GGUF lists dimensions innermost first (ne[0] is the row length); its
 * reader reverses them, so the same weight has the same shape from either
 * format. */
#ifndef MOE_MODEL_TENSOR_H
#define MOE_MODEL_TENSOR_H

#include "moerun.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Weights are in the public moe_dtype (include/moerun.h): the element
 * types f32, f16 and bf16, and GGUF's block formats (q4_0 .. mxfp4,
 * common/quant.h), a row of which is a whole number of blocks of
 * moe_dtype_block() elements in moe_dtype_block_bytes() bytes. The loader
 * and the CPU engine share that one type. MOE_DTYPE_I8 (moerun's int8 with
 * row scales) is no file's type.
 *
 * Bytes of a tensor of `n_elems` elements whose innermost dimension is
 * `row` elements; false if `row` is not a whole number of blocks, for
 * MOE_DTYPE_I8 or an invalid dtype, or on overflow. */
bool moe_tensor_bytes(moe_dtype t, uint64_t n_elems, uint64_t row, uint64_t *bytes);

/* A safetensors F8_E4M3 tensor: an FP8 checkpoint's e4m3fn bytes, one per
 * element, whose scales are another tensor (`<name>_scale_inv`). No
 * moe_dtype: only the loader reads it, making MOE_DTYPE_FP8_E4M3 blocks
 * of it and its scales (moe_tensor_bytes: one byte per element). */
#define MOE_TENSOR_F8_E4M3 ((moe_dtype)(MOE_DTYPE_COUNT_ + 1))

/* The first of the n blocks of format t at `blocks` whose scale is NaN
 * or infinite (an f16 or f32 scale or min with every exponent bit set;
 * mxfp4's e8m0 exponent 255, its NaN), or n if none (and for the element types).
 * Such a block would spoil every dot product it enters. Reads only the
 * bytes of each block's scales, on the calling thread's OpenMP team. */
uint64_t moe_blocks_bad_scale(moe_dtype t, const void *blocks, uint64_t n);

#define MOE_TENSOR_MAX_DIMS 4

typedef struct moe_tensor {
    const char *name; /* NUL-terminated, owned by the file it came from */
    moe_dtype type;
    uint32_t n_dims;                     /* 1..MOE_TENSOR_MAX_DIMS */
    uint64_t shape[MOE_TENSOR_MAX_DIMS]; /* row-major, outermost first; unused dims 1 */
    uint64_t n_elems;
    const void *data; /* in the file's read-only mapping */
    uint64_t bytes;
    const char *file; /* path of the file that holds it, for messages */
} moe_tensor;

/* A read-only memory map of a whole file. */
typedef struct moe_mapped_file {
    const uint8_t *data; /* NULL for an empty file */
    uint64_t size;
    char *path; /* owned copy */
} moe_mapped_file;

/* Maps `path` read-only (MOE_ERR_IO "path: what went wrong" if it cannot be
 * opened or mapped). Pages are read on first touch; nothing is copied. */
moe_status moe_map_file(moe_mapped_file *m, const char *path);

/* Unmaps; safe on a zeroed or already unmapped file. */
void moe_unmap_file(moe_mapped_file *m);

#endif
