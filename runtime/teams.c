/* teams.c - NUMA teams (teams.h): how the runtime, and the profiler that
 * measures what the runtime will run, split their CPU threads. */
#include "teams.h"

void moe_split_teams(const moe_topology_t *topo, uint32_t n_threads, moe_teams *out) {
    uint32_t cores[MOE_MAX_NUMA_NODES], n = 0;
    uint64_t total = 0;
    memset(out, 0, sizeof *out);
    for (uint32_t i = 0; i < topo->info.n_numa_nodes && i < MOE_MAX_NUMA_NODES; i++)
        if (topo->node_cores[i])
            out->node[n] = topo->node_os[i], out->index[n] = i, cores[n++] = topo->node_cores[i],
            total += topo->node_cores[i];
    if (n == 0 || n > n_threads) { /* fewer threads than nodes: one team */
        out->n = 1, out->size[0] = n_threads;
        return;
    }
    uint32_t sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t s = (uint64_t)n_threads * cores[i] / total;
        out->size[i] = s ? (uint32_t)s : 1, sum += out->size[i];
    }
    while (sum != n_threads) { /* fix rounding on the most (least) loaded node */
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++) {
            double ri = (double)cores[i] / out->size[i], rb = (double)cores[best] / out->size[best];
            if (sum < n_threads ? ri > rb : (out->size[i] > 1 && (ri < rb || out->size[best] == 1))) best = i;
        }
        if (sum < n_threads) out->size[best]++, sum++;
        else out->size[best]--, sum--;
    }
    out->n = n;
}
