/* safetensors.h - reads Hugging Face safetensors files and sharded model
 * directories, memory-mapped (tensor.h): nothing is copied.
 *
 * A file is an 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}, ...,
 * optionally "__metadata__": {string: string}}), then the data, offsets
 * relative to its start. The reader refuses, naming the file (and the
 * header's line and the tensor where there is one):
 *   - a file shorter than its header, a header over MOE_JSON_MAX_BYTES,
 *     a header that is not strict JSON or not an object;
 *   - a dtype other than F32, F16 and BF16 (MOE_ERR_UNSUPPORTED, naming it);
 *   - a shape that is not an array of 0..4 non-negative integers, offsets
 *     that are not [begin, end] with begin <= end, a byte count that is not
 *     the shape's elements times the dtype's size, data past the end of the
 *     file, tensors that overlap, and data not entirely covered by tensors
 *     (the format forbids holes);
 *   - __metadata__ values that are not strings, unknown keys in an entry.
 * A scalar (shape []) has n_dims 0 and one element.
 *
 * A model directory (moe_st_dir_open) holds either model.safetensors or
 * model.safetensors.index.json, whose "weight_map" names the shard of every
 * tensor; every shard is opened, every mapped tensor must be in its shard,
 * and every tensor of a shard must be in the map. */
#ifndef MOE_MODEL_SAFETENSORS_H
#define MOE_MODEL_SAFETENSORS_H

#include "tensor.h"

typedef struct moe_safetensors {
    moe_mapped_file file;
    uint64_t n_tensors;
    moe_tensor *tensors; /* sorted by name */
    char *names;         /* the tensors' names, back to back */
    uint64_t data_offset; /* 8 + header length */
} moe_safetensors;

/* Maps and validates one file; on failure *st holds nothing to free. */
moe_status moe_safetensors_open(moe_safetensors *st, const char *path);

/* Unmaps and frees; safe on a zeroed or closed file. */
void moe_safetensors_close(moe_safetensors *st);

/* The tensor called `name`, or NULL (binary search). */
const moe_tensor *moe_safetensors_find(const moe_safetensors *st, const char *name);

/* A model directory's tensors, over one or more shards. */
typedef struct moe_st_dir {
    uint32_t n_files;
    moe_safetensors *files;
    uint64_t n_tensors;
    const moe_tensor **tensors; /* every shard's, sorted by name */
} moe_st_dir;

moe_status moe_st_dir_open(moe_st_dir *d, const char *dir);
void moe_st_dir_close(moe_st_dir *d);
const moe_tensor *moe_st_dir_find(const moe_st_dir *d, const char *name);

#endif
