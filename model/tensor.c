/* tensor.c - tensor sizes and read-only file maps. */
#define _POSIX_C_SOURCE 200809L
#include "tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

bool moe_tensor_bytes(moe_dtype t, uint64_t n_elems, uint64_t row, uint64_t *bytes) {
    const uint64_t b = moe_dtype_block(t), bb = moe_dtype_block_bytes(t);
    if (!b || t == MOE_DTYPE_I8 || !bytes) return false;
    if (row % b || n_elems % b) return false;
    return !__builtin_mul_overflow(n_elems / b, bb, bytes);
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
