/* tensor.c - tensor sizes and read-only file maps. */
#define _POSIX_C_SOURCE 200809L
#include "tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "quant.h"

bool moe_tensor_bytes(moe_dtype t, uint64_t n_elems, uint64_t row, uint64_t *bytes) {
    if (t == MOE_TENSOR_F8_E4M3) return bytes && (*bytes = n_elems, true);
    const uint64_t b = moe_dtype_block(t), bb = moe_dtype_block_bytes(t);
    if (!b || t == MOE_DTYPE_I8 || !bytes) return false;
    if (row % b || n_elems % b) return false;
    return !__builtin_mul_overflow(n_elems / b, bb, bytes);
}

/* Where a block's f16 scales lie (0 to 2 of them) and whether it has an
 * e8m0 exponent or an f32 scale at byte 0 instead. */
typedef struct scale_at {
    uint8_t n, at[2];
    bool e8m0, f32;
} scale_at;

static scale_at scales_of(moe_dtype t) {
    switch (t) {
    case MOE_DTYPE_Q4_0: return (scale_at){1, {offsetof(moe_block_q4_0, d)}, false, false};
    case MOE_DTYPE_Q4_1: return (scale_at){2, {offsetof(moe_block_q4_1, d), offsetof(moe_block_q4_1, m)}, false, false};
    case MOE_DTYPE_Q5_0: return (scale_at){1, {offsetof(moe_block_q5_0, d)}, false, false};
    case MOE_DTYPE_Q5_1: return (scale_at){2, {offsetof(moe_block_q5_1, d), offsetof(moe_block_q5_1, m)}, false, false};
    case MOE_DTYPE_Q8_0: return (scale_at){1, {offsetof(moe_block_q8_0, d)}, false, false};
    case MOE_DTYPE_Q2_K:
        return (scale_at){2, {offsetof(moe_block_q2_K, d), offsetof(moe_block_q2_K, dmin)}, false, false};
    case MOE_DTYPE_Q3_K: return (scale_at){1, {offsetof(moe_block_q3_K, d)}, false, false};
    case MOE_DTYPE_Q4_K:
        return (scale_at){2, {offsetof(moe_block_q4_K, d), offsetof(moe_block_q4_K, dmin)}, false, false};
    case MOE_DTYPE_Q5_K:
        return (scale_at){2, {offsetof(moe_block_q5_K, d), offsetof(moe_block_q5_K, dmin)}, false, false};
    case MOE_DTYPE_Q6_K: return (scale_at){1, {offsetof(moe_block_q6_K, d)}, false, false};
    case MOE_DTYPE_IQ4_NL: return (scale_at){1, {offsetof(moe_block_iq4_nl, d)}, false, false};
    case MOE_DTYPE_IQ4_XS: return (scale_at){1, {offsetof(moe_block_iq4_xs, d)}, false, false};
    case MOE_DTYPE_MXFP4: return (scale_at){0, {0}, true, false};
    case MOE_DTYPE_FP8_E4M3: return (scale_at){0, {0}, false, true};
    default: return (scale_at){0, {0}, false, false};
    }
}

uint64_t moe_blocks_bad_scale(moe_dtype t, const void *blocks, uint64_t n) {
    const scale_at s = scales_of(t);
    if (!s.n && !s.e8m0 && !s.f32) return n;
    const uint8_t *p = blocks;
    const uint64_t bb = moe_dtype_block_bytes(t);
    uint64_t first = n;
#pragma omp parallel for reduction(min : first) schedule(static)
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *b = p + i * bb;
        bool bad = s.e8m0 && b[0] == 0xff;
        /* little-endian f32: its exponent is bits 0..6 of byte 3 and bit 7 of byte 2 */
        bad |= s.f32 && (b[3] & 0x7f) == 0x7f && (b[2] & 0x80);
        /* little-endian f16: its exponent is bits 2..6 of the high byte */
        for (unsigned k = 0; k < s.n; k++) bad |= (b[s.at[k] + 1] & 0x7c) == 0x7c;
        if (bad && i < first) first = i;
    }
    return first;
}

moe_status moe_map_file(moe_mapped_file *m, const char *path) {
    if (!m || !path) return moe_fail(MOE_ERR_INVALID_ARG, "map_file: NULL argument");
    memset(m, 0, sizeof *m);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return moe_fail(MOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        const int e = errno;
        close(fd);
        return moe_fail(MOE_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return moe_fail(MOE_ERR_IO, "%s: not a regular file", path);
    }
    void *p = NULL;
    if (st.st_size > 0) {
        p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            const int e = errno;
            close(fd);
            return moe_fail(MOE_ERR_IO, "%s: cannot map: %s", path, strerror(e));
        }
    }
    close(fd); /* the mapping keeps the file */
    m->path = strdup(path);
    if (!m->path) {
        if (p) munmap(p, (size_t)st.st_size);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    m->data = p;
    m->size = (uint64_t)st.st_size;
    return MOE_OK;
}

void moe_unmap_file(moe_mapped_file *m) {
    if (!m) return;
    if (m->data) munmap((void *)m->data, (size_t)m->size);
    free(m->path);
    memset(m, 0, sizeof *m);
}
