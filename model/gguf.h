/* gguf.h - reads GGUF files (llama.cpp's format), memory-mapped (tensor.h):
 * tensor data is never copied.
 *
 * A file is "GGUF", a u32 version, u64 tensor and key-value counts, the
 * key-value pairs (metadata), the tensor infos (name, dimensions innermost
 * first, ggml type, offset), padding to general.alignment (a power of two,
 * default 32), then the data; all little-endian. Versions 2 and 3 are read;
 * version 1, other versions and big-endian files are refused with
 * MOE_ERR_UNSUPPORTED naming the version.
 *
 * Metadata values may be of every GGUF type, and arrays of every type but
 * arrays (arrays of arrays are refused as MOE_ERR_UNSUPPORTED). String
 * values and numeric arrays stay in the map; keys and tensor names are
 * copied. Tensors may be f32, f16, bf16 and GGUF's block formats that
 * common/quant.h defines (q4_0, q4_1, q5_0, q5_1, q8_0, q2_K .. q6_K,
 * iq4_nl, iq4_xs, mxfp4), read as they are stored; other ggml types (the
 * IQ1/IQ2/IQ3 codebooks, TQ, NVFP4, ...) are refused as
 * MOE_ERR_UNSUPPORTED, naming the type and the tensor. Anything
 * else wrong is MOE_ERR_PARSE, "path: offset N: what", naming the key or
 * the tensor: a read past the end of the file, a count larger than the rest
 * of the file could hold, an unknown value or ggml type, a key or tensor
 * name that is empty, over 65535 bytes or holds a NUL byte, a bool other
 * than 0 or 1, a duplicate key or tensor name, general.alignment that is
 * not a u32 power of two, 0 or over 4 dimensions, a row that is not a whole
 * number of blocks, an offset that is not a multiple of the alignment, data
 * not aligned for its type (possible only with an alignment under 4), data
 * past the end of the file, tensors whose data overlap or leave a gap of
 * the alignment or more between them (a tensor whose bytes in the file
 * disagree with its type and shape, as llama.cpp also refuses). Tensors of 0
 * elements are accepted. Memory allocated while reading grows with what was
 * read, never with a count the file claims. */
#ifndef MOE_MODEL_GGUF_H
#define MOE_MODEL_GGUF_H

#include "tensor.h"

/* Metadata value types, numbered as in the file. */
typedef enum moe_gguf_type {
    MOE_GGUF_U8 = 0,
    MOE_GGUF_I8,
    MOE_GGUF_U16,
    MOE_GGUF_I16,
    MOE_GGUF_U32,
    MOE_GGUF_I32,
    MOE_GGUF_F32,
    MOE_GGUF_BOOL,
    MOE_GGUF_STR,
    MOE_GGUF_ARR,
    MOE_GGUF_U64,
    MOE_GGUF_I64,
    MOE_GGUF_F64,
    MOE_GGUF_TYPE_COUNT_
} moe_gguf_type;

/* "u8", "i8", ..., "string", "array", ...; NULL out of range. */
const char *moe_gguf_type_name(moe_gguf_type t);

/* A string value: `len` bytes in the map, NOT NUL-terminated (print it
 * with "%.*s"). */
typedef struct moe_gguf_str {
    const char *ptr;
    uint64_t len;
} moe_gguf_str;

typedef struct moe_gguf_kv {
    const char *key; /* NUL-terminated, owned by the file */
    moe_gguf_type type;
    uint64_t offset; /* of the pair in the file, for messages */
    union {
        uint64_t u;       /* U8, U16, U32, U64 */
        int64_t i;        /* I8, I16, I32, I64 */
        double f;         /* F32, F64 */
        bool b;           /* BOOL */
        moe_gguf_str str; /* STR */
        struct {
            moe_gguf_type type;     /* of the elements, never MOE_GGUF_ARR */
            uint64_t n;             /* elements */
            const uint8_t *data;    /* the elements in the map: little-endian, unaligned */
            const uint64_t *str_at; /* STR only: n + 1 offsets into data, see moe_gguf_arr_str */
        } arr;
    } v;
} moe_gguf_kv;

typedef struct moe_gguf {
    moe_mapped_file file;
    uint32_t version;   /* 2 or 3 */
    uint32_t alignment; /* general.alignment, or 32 */
    uint64_t n_kv;
    moe_gguf_kv *kvs; /* in file order, from byte 24 */
    uint64_t infos_offset; /* where the key-value pairs end and the tensor infos begin */
    uint64_t n_tensors;
    moe_tensor *tensors;  /* sorted by name */
    uint64_t data_offset; /* where the data section begins in the file */
    const moe_gguf_kv **by_key; /* kvs sorted by key */
    struct moe_gguf_chunk *pool; /* the keys and tensor names */
} moe_gguf;

/* Maps and validates one file; on failure *g holds nothing to free. */
moe_status moe_gguf_open(moe_gguf *g, const char *path);

/* Unmaps and frees; safe on a zeroed or closed file. */
void moe_gguf_close(moe_gguf *g);

/* The tensor called `name`, or NULL (binary search). */
const moe_tensor *moe_gguf_find(const moe_gguf *g, const char *name);

/* The pair with key `key`, or NULL (binary search). */
const moe_gguf_kv *moe_gguf_get(const moe_gguf *g, const char *key);

/* Typed values. Each fails with MOE_ERR_PARSE, "path: key \"k\" ...", if
 * the key is missing or its value does not convert: get_u32 and get_u64
 * take any integer type whose value fits, get_f32 any number that fits,
 * get_bool a bool, get_str a string, get_arr an array whose elements are of
 * type `elem` (MOE_GGUF_TYPE_COUNT_: any). *out is set only on success. */
moe_status moe_gguf_get_u32(const moe_gguf *g, const char *key, uint32_t *out);
moe_status moe_gguf_get_u64(const moe_gguf *g, const char *key, uint64_t *out);
moe_status moe_gguf_get_f32(const moe_gguf *g, const char *key, float *out);
moe_status moe_gguf_get_bool(const moe_gguf *g, const char *key, bool *out);
moe_status moe_gguf_get_str(const moe_gguf *g, const char *key, moe_gguf_str *out);
moe_status moe_gguf_get_arr(const moe_gguf *g, const char *key, moe_gguf_type elem, const moe_gguf_kv **out);

/* Whether s holds exactly the NUL-terminated string z. */
bool moe_gguf_str_eq(moe_gguf_str s, const char *z);

/* Element i of an array of strings, or {NULL, 0} if kv is not such an
 * array or i is out of range. */
moe_gguf_str moe_gguf_arr_str(const moe_gguf_kv *kv, uint64_t i);

/* Element i of an array of integers or bools (u64 values over INT64_MAX
 * wrap), or 0 if kv is not such an array or i is out of range. */
int64_t moe_gguf_arr_int(const moe_gguf_kv *kv, uint64_t i);

/* Element i of an array of numbers, or 0 if kv is not such an array or i
 * is out of range. */
double moe_gguf_arr_float(const moe_gguf_kv *kv, uint64_t i);

#endif
