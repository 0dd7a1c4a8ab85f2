/* place.h - placing expert weights and threads on NUMA nodes (libnuma).
 * Everything here is best effort: on a machine without NUMA support, or
 * for a node this machine does not have (a synthetic topology in tests),
 * the calls do nothing and say so. */
#ifndef MOE_CPU_PLACE_H
#define MOE_CPU_PLACE_H

#include "common.h"

/* True if `node` is a NUMA node of this machine that memory can go to. */
bool moe_numa_node_exists(uint32_t node);

/* Moves the whole pages inside [p, p + bytes) to `node` (mbind with
 * MPOL_MF_MOVE). Returns the bytes it asked the kernel to move (0 when the
 * node does not exist or the range holds no whole page). */
size_t moe_numa_move(const void *p, size_t bytes, uint32_t node);

/* Restricts the calling thread to the CPUs of `node`. False if not possible.
 * Call moe_numa_warm(node) first, outside any parallel region. */
bool moe_numa_bind_thread(uint32_t node);

/* libnuma fills its per-node CPU cache on first use without a lock (two
 * threads binding at once leak one copy): fill it from one thread. */
void moe_numa_warm(uint32_t node);

/* A thread's CPU mask, so a binding can be undone. */
typedef struct moe_cpu_mask moe_cpu_mask;
moe_cpu_mask *moe_cpu_mask_new(void); /* NULL without libnuma support */
bool moe_cpu_mask_save(moe_cpu_mask *m);          /* the calling thread's mask into m */
bool moe_cpu_mask_restore(const moe_cpu_mask *m); /* m back onto the calling thread */
void moe_cpu_mask_free(moe_cpu_mask *m);

#endif
