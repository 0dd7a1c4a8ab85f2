/* teams.h - how the runtime (and the profiler, which must measure what
 * the runtime will run) splits CPU threads into NUMA teams. */
#ifndef MOE_RUNTIME_TEAMS_H
#define MOE_RUNTIME_TEAMS_H

#include "topology.h"

typedef struct moe_teams {
    uint32_t n;                         /* teams: NUMA nodes that have cores (1 if none or too few threads) */
    uint32_t size[MOE_MAX_NUMA_NODES];  /* threads of each, summing to the thread count */
    uint32_t node[MOE_MAX_NUMA_NODES];  /* the OS's number of each team's node */
    uint32_t index[MOE_MAX_NUMA_NODES]; /* each team's node as an index into the topology */
} moe_teams;

/* One team per NUMA node with cores, in proportion to its cores and at
 * least one thread each; one team when there are fewer threads than nodes. */
void moe_split_teams(const moe_topology_t *topo, uint32_t n_threads, moe_teams *out);

#endif
