/* membw.h - memory read bandwidth, measured the way an expert kernel reads
 * weights: a streaming read of a buffer far larger than the last-level
 * cache, split across threads, vector loads with independent accumulators.
 * The benchmark's and profiler's denominator for "fraction of DRAM". */
#ifndef MOE_PROFILES_MEMBW_H
#define MOE_PROFILES_MEMBW_H

#include "common.h"

/* Best read rate in GB/s (1e9 bytes/s) over `reps` passes over a buffer of
 * `bytes` (first touched by the same threads), on `threads` OpenMP
 * threads. 0 if the buffer cannot be allocated. */
double moe_read_bandwidth(size_t bytes, uint32_t threads, int reps);

/* The same with the buffer's pages on NUMA node `mem_node` and the threads
 * on the CPUs of node `cpu_node` (OS node numbers); each thread gets its
 * own CPU mask back afterwards. Each pass is one sample in out[0..reps);
 * returns the passes done (0 if the nodes or the buffer are not there). */
int moe_read_bandwidth_nodes(size_t bytes, uint32_t threads, int reps, uint32_t cpu_node, uint32_t mem_node,
                             double *out);

#endif
