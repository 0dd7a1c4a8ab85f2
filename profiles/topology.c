/* topology.c - sockets, NUMA nodes, cores and caches from hwloc; CPU
 * features from cpuid. Kernels are chosen from these flags so a missing
 * instruction set gives a clear choice, never SIGILL. */
#include "topology.h"

#include <hwloc.h>
#include <stdio.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#include <stdlib.h>
#include <unistd.h>

/* AMX needs the CPU's flag and the OS's consent: XCR0 bits 17 (XTILECFG)
 * and 18 (XTILEDATA). A kernel using it must still ask Linux for the tile
 * state (arch_prctl ARCH_REQ_XCOMP_PERM), as oneDNN does. */
static uint32_t amx_usable(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1u)) return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return 0; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & (3u << 17)) == (3u << 17);
#else
    return 0;
#endif
}

void moe_cpu_features(moe_topology_info *info) {
#if defined(__x86_64__) && defined(__GNUC__)
    /* __builtin_cpu_supports checks the OS's XCR0 consent for AVX/AVX-512. */
    __builtin_cpu_init();
    info->has_avx2 = __builtin_cpu_supports("avx2") != 0;
    info->has_avx512f = __builtin_cpu_supports("avx512f") != 0;
    info->has_avx512_vnni = __builtin_cpu_supports("avx512vnni") != 0;
    info->has_avx512_bf16 = __builtin_cpu_supports("avx512bf16") != 0;
#endif
    info->has_amx = amx_usable();
}

static uint32_t count_type(hwloc_topology_t t, hwloc_obj_type_t type) {
    int n = hwloc_get_nbobjs_by_type(t, type);
    return n > 0 ? (uint32_t)n : 0;
}

static moe_status fill_from_hwloc(hwloc_topology_t t, moe_topology_t *out) {
    moe_topology_info *info = &out->info;
    info->n_packages = count_type(t, HWLOC_OBJ_PACKAGE);
    info->n_cores = count_type(t, HWLOC_OBJ_CORE);
    info->n_pus = count_type(t, HWLOC_OBJ_PU);
    info->n_numa_nodes = count_type(t, HWLOC_OBJ_NUMANODE);
    if (info->n_packages == 0) info->n_packages = 1;
    if (info->n_pus == 0) info->n_pus = 1;
    if (info->n_cores == 0) info->n_cores = info->n_pus;
    if (info->n_numa_nodes == 0) info->n_numa_nodes = 1;
    if (info->n_numa_nodes > MOE_MAX_NUMA_NODES)
        return moe_fail(MOE_ERR_UNSUPPORTED, "topology: %u NUMA nodes, at most %d supported",
                        info->n_numa_nodes, MOE_MAX_NUMA_NODES);

    for (int depth = 0; depth < hwloc_topology_get_depth(t); depth++) {
        hwloc_obj_t o = hwloc_get_obj_by_depth(t, depth, 0);
        if (o && hwloc_obj_type_is_cache(o->type) && o->attr &&
            o->attr->cache.size > info->l3_bytes && o->attr->cache.type != HWLOC_OBJ_CACHE_INSTRUCTION)
            info->l3_bytes = o->attr->cache.size;
    }
    hwloc_obj_t root = hwloc_get_root_obj(t);
    info->memory_bytes = root ? root->total_memory : 0;

    /* Each core counts once, for the first NUMA node whose cpuset holds it;
     * memory-only nodes (HBM, CXL) have none. Cores that no node claims
     * count for node 0. */
    hwloc_obj_t pkg = hwloc_get_obj_by_type(t, HWLOC_OBJ_PACKAGE, 0);
    const char *model = pkg ? hwloc_obj_get_info_by_name(pkg, "CPUModel") : NULL;
    if (model) snprintf(out->cpu_model, sizeof out->cpu_model, "%s", model);
    for (uint32_t n = 0; n < info->n_numa_nodes; n++) {
        hwloc_obj_t node = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, n);
        out->node_os[n] = node ? node->os_index : n;
    }
    for (uint32_t c = 0; c < info->n_cores; c++) {
        hwloc_obj_t core = hwloc_get_obj_by_type(t, HWLOC_OBJ_CORE, c);
        uint32_t owner = 0;
        for (uint32_t n = 0; core && core->cpuset && n < info->n_numa_nodes; n++) {
            hwloc_obj_t node = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, n);
            if (node && node->cpuset && !hwloc_bitmap_iszero(node->cpuset) &&
                hwloc_bitmap_isincluded(core->cpuset, node->cpuset)) {
                owner = n;
                break;
            }
        }
        out->node_cores[owner]++;
    }
    return MOE_OK;
}

int moe_pci_os_node(unsigned domain, unsigned bus, unsigned dev) {
    /* Linux's own answer; hwloc's PCI plugin (libpciaccess) would give the
     * same and leaks. */
    char path[96];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%04x:%02x:%02x.0/numa_node", domain & 0xffffu, bus & 0xffu,
             dev & 0x1fu);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int node = -1;
    if (fscanf(f, "%d", &node) != 1 || node < 0) node = -1;
    fclose(f);
    return node;
}

static moe_status build(moe_topology_t **out, const char *synthetic) {
    if (!out) return moe_fail(MOE_ERR_INVALID_ARG, "topology: out is NULL");
    *out = NULL;
    moe_topology_t *topo = calloc(1, sizeof *topo);
    if (!topo) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "topology: allocation failed");
    hwloc_topology_t t;
    moe_status st = MOE_OK;
    if (hwloc_topology_init(&t) != 0) {
        free(topo);
        return moe_fail(MOE_ERR_INTERNAL, "topology: hwloc_topology_init failed");
    }
    if (synthetic && hwloc_topology_set_synthetic(t, synthetic) != 0) {
        st = moe_fail(MOE_ERR_PARSE, "topology: \"%s\" is not a valid hwloc synthetic description",
                      synthetic);
        goto done;
    }
    if (hwloc_topology_load(t) != 0) {
        st = moe_fail(MOE_ERR_INTERNAL, "topology: hwloc could not load the topology");
        goto done;
    }
    st = fill_from_hwloc(t, topo);
    if (st == MOE_OK && !synthetic) {
        /* Some VMs expose only part of their memory in the NUMA node's sysfs
         * entry (seen: 4.4 of 24 GB), which is what hwloc reports; the
         * kernel's page count is the truth for the whole host. */
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
        if (pages > 0 && page > 0 && (uint64_t)pages * (uint64_t)page > topo->info.memory_bytes)
            topo->info.memory_bytes = (uint64_t)pages * (uint64_t)page;
    }
    if (st == MOE_OK) {
        moe_cpu_features(&topo->info);
        topo->magic = MOE_MAGIC_TOPOLOGY;
        *out = topo;
        topo = NULL;
    }
done:
    hwloc_topology_destroy(t);
    free(topo);
    return st;
}

moe_status moe_topology_detect(moe_topology_t **out) { return build(out, NULL); }

/* hwloc builds every object of a synthetic topology, so "pack:100 core:100
 * pu:100" would take minutes and gigabytes: bound the product of the counts
 * (the numbers after ':') first. */
#define MOE_SYNTHETIC_MAX_OBJECTS (1u << 16)

static bool synthetic_small_enough(const char *desc) {
    uint64_t product = 1;
    for (const char *p = desc; *p; p++) {
        if (*p != ':' || p[1] < '0' || p[1] > '9') continue;
        uint64_t v = 0;
        for (p++; *p >= '0' && *p <= '9'; p++)
            if ((v = v * 10 + (uint64_t)(*p - '0')) > MOE_SYNTHETIC_MAX_OBJECTS) return false;
        if ((product *= v) > MOE_SYNTHETIC_MAX_OBJECTS) return false;
        p--;
    }
    return true;
}

moe_status moe_topology_synthetic(moe_topology_t **out, const char *desc) {
    if (!desc) {
        if (out) *out = NULL;
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_topology_synthetic: desc is NULL");
    }
    if (!synthetic_small_enough(desc)) {
        if (out) *out = NULL;
        return moe_fail(MOE_ERR_INVALID_ARG, "topology: \"%s\" describes more than %u processing units",
                        desc, MOE_SYNTHETIC_MAX_OBJECTS);
    }
    return build(out, desc);
}

static bool valid(const moe_topology_t *t) { return t && t->magic == MOE_MAGIC_TOPOLOGY; }

moe_status moe_topology_get_info(const moe_topology_t *t, moe_topology_info *out) {
    if (!valid(t) || !out)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_topology_get_info: %s",
                        out ? "not a topology handle" : "out is NULL");
    *out = t->info;
    return MOE_OK;
}

moe_status moe_topology_node_cores(const moe_topology_t *t, uint32_t node, uint32_t *out) {
    if (!valid(t) || !out)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_topology_node_cores: %s",
                        out ? "not a topology handle" : "out is NULL");
    if (node >= t->info.n_numa_nodes)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_topology_node_cores: node %u out of range (%u nodes)",
                        node, t->info.n_numa_nodes);
    *out = t->node_cores[node];
    return MOE_OK;
}

void moe_topology_free(moe_topology_t **t) {
    if (!t || !*t) return;
    (*t)->magic = 0;
    free(*t);
    *t = NULL;
}
