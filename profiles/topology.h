/* topology.h - the host as the scheduler sees it (internal view). */
#ifndef MOE_TOPOLOGY_H
#define MOE_TOPOLOGY_H

#include "common.h"

#define MOE_MAX_NUMA_NODES 64

struct moe_topology {
    uint32_t magic;
    moe_topology_info info;
    uint32_t node_cores[MOE_MAX_NUMA_NODES];
    uint32_t node_os[MOE_MAX_NUMA_NODES]; /* the OS's (libnuma's) number of each node */
    char cpu_model[128];                  /* hwloc's CPUModel of the first package, "" if unknown */
};

/* The OS's number of the NUMA node that PCI device domain:bus:dev is
 * attached to; -1 when the machine does not say (one node, a VM) or there
 * is no such device. */
int moe_pci_os_node(unsigned domain, unsigned bus, unsigned dev);

/* Fills info's CPU feature flags from cpuid. */
void moe_cpu_features(moe_topology_info *info);

#endif
