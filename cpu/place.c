/* place.c - see place.h. */
#include "place.h"

#include <numa.h>
#include <numaif.h>
#include <stdlib.h>
#include <unistd.h>

bool moe_numa_node_exists(uint32_t node) {
    return numa_available() >= 0 && node <= (uint32_t)numa_max_node() && numa_bitmask_isbitset(numa_all_nodes_ptr, node);
}

size_t moe_numa_move(const void *p, size_t bytes, uint32_t node) {
    if (!p || !moe_numa_node_exists(node)) return 0;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)p + bytes) & ~(page - 1);
    if (hi <= lo) return 0;
    unsigned long mask[16] = {0};
    if (node >= sizeof mask * 8) return 0;
    mask[node / (8 * sizeof mask[0])] |= 1ul << (node % (8 * sizeof mask[0]));
    if (mbind((void *)lo, hi - lo, MPOL_BIND, mask, sizeof mask * 8, MPOL_MF_MOVE) != 0) return 0;
    return hi - lo;
}

bool moe_numa_bind_thread(uint32_t node) {
    return moe_numa_node_exists(node) && numa_run_on_node((int)node) == 0;
}

void moe_numa_warm(uint32_t node) {
    if (!moe_numa_node_exists(node)) return;
    struct bitmask *b = numa_allocate_cpumask();
    if (b) numa_node_to_cpus((int)node, b), numa_free_cpumask(b);
}

/* The mask is a libnuma cpumask; the struct only names the type. */
struct moe_cpu_mask {
    struct bitmask *bits;
};

moe_cpu_mask *moe_cpu_mask_new(void) {
    if (numa_available() < 0) return NULL;
    moe_cpu_mask *m = malloc(sizeof *m);
    if (!m) return NULL;
    if (!(m->bits = numa_allocate_cpumask())) {
        free(m);
        return NULL;
    }
    return m;
}

bool moe_cpu_mask_save(moe_cpu_mask *m) { return m && numa_sched_getaffinity(0, m->bits) > 0; }

bool moe_cpu_mask_restore(const moe_cpu_mask *m) { return m && numa_sched_setaffinity(0, m->bits) == 0; }

void moe_cpu_mask_free(moe_cpu_mask *m) {
    if (!m) return;
    numa_free_cpumask(m->bits);
    free(m);
}
