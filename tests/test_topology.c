/* test_topology.c - this host through hwloc, and synthetic multi-node
 * machines, which is how NUMA-dependent code is tested on 1-node hosts. */
#include "topology.h"
#include "util.h"

/* Cores summed over the NUMA nodes; each core must count once. */
static uint32_t cores_over_nodes(const moe_topology_t *t, uint32_t n_nodes) {
    uint32_t sum = 0, c;
    for (uint32_t n = 0; n < n_nodes; n++) {
        CHECK_OK(moe_topology_node_cores(t, n, &c));
        sum += c;
    }
    return sum;
}

static void detects_this_host(void) {
    moe_topology_t *t = NULL;
    CHECK_OK(moe_topology_detect(&t));
    moe_topology_info i;
    CHECK_OK(moe_topology_get_info(t, &i));
    CHECK(i.n_packages >= 1 && i.n_numa_nodes >= 1 && i.n_cores >= 1 && i.n_pus >= i.n_cores);
    CHECK(i.memory_bytes > 0);
    CHECK_EQ(cores_over_nodes(t, i.n_numa_nodes), i.n_cores);
    printf("host: %u packages, %u NUMA nodes, %u cores, %u PUs, LLC %llu KiB, %.1f GiB; "
           "avx2 %u avx512f %u avx512_bf16 %u avx512_vnni %u amx %u\n",
           i.n_packages, i.n_numa_nodes, i.n_cores, i.n_pus, (unsigned long long)(i.l3_bytes >> 10),
           (double)i.memory_bytes / (1 << 30), i.has_avx2, i.has_avx512f, i.has_avx512_bf16, i.has_avx512_vnni,
           i.has_amx);
    moe_topology_free(&t);
    CHECK(t == NULL);
}

static void synthetic_two_sockets(void) {
    moe_topology_t *t = NULL;
    CHECK_OK(moe_topology_synthetic(&t, "pack:2 numa:1 l3:1(size=33554432) core:6 pu:2"));
    moe_topology_info i;
    CHECK_OK(moe_topology_get_info(t, &i));
    CHECK_EQ(i.n_packages, 2);
    CHECK_EQ(i.n_numa_nodes, 2);
    CHECK_EQ(i.n_cores, 12);
    CHECK_EQ(i.n_pus, 24);
    CHECK_EQ(i.l3_bytes, 32ull << 20);
    uint32_t c = 0;
    CHECK_OK(moe_topology_node_cores(t, 1, &c));
    CHECK_EQ(c, 6);
    CHECK_STATUS(moe_topology_node_cores(t, 2, &c), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("node 2 out of range (2 nodes)");
    moe_topology_free(&t);
}

static void each_core_counts_once(void) {
    /* Two nodes per package (sub-NUMA clustering), then memory-only nodes
     * (HBM or CXL) beside the cores. Per-node cores must sum to the cores. */
    const char *descs[] = {"pack:2 numa:2 core:4 pu:1", "pack:2 [numa] [numa] core:4 pu:1",
                           "[numa] [numa] pack:2 core:4 pu:1"};
    for (int i = 0; i < 3; i++) {
        moe_topology_t *t = NULL;
        CHECK_OK(moe_topology_synthetic(&t, descs[i]));
        moe_topology_info info;
        CHECK_OK(moe_topology_get_info(t, &info));
        const uint32_t sum = cores_over_nodes(t, info.n_numa_nodes);
        if (sum != info.n_cores) fprintf(stderr, "\"%s\": nodes hold %u cores of %u\n", descs[i], sum, info.n_cores);
        CHECK_EQ(sum, info.n_cores);
        moe_topology_free(&t);
    }
    /* Counts multiply down the levels: 2 packages x 2 nodes x 4 cores. */
    moe_topology_t *t = NULL;
    CHECK_OK(moe_topology_synthetic(&t, "pack:2 numa:2 core:4 pu:1"));
    moe_topology_info info;
    CHECK_OK(moe_topology_get_info(t, &info));
    CHECK_EQ(info.n_numa_nodes, 4);
    CHECK_EQ(info.n_cores, 16);
    uint32_t c = 0;
    for (uint32_t n = 0; n < 4; n++) {
        CHECK_OK(moe_topology_node_cores(t, n, &c));
        CHECK_EQ(c, 4);
    }
    moe_topology_free(&t);
}

/* Nodes keep the OS's numbers, which need not be 0..n-1 (offline or
 * memory-only nodes, numbering by firmware): binding and moving memory
 * use them, not the position in the list. */
static void nodes_keep_os_numbers(void) {
    moe_topology_t *t = NULL;
    CHECK_OK(moe_topology_synthetic(&t, "numa:2(indexes=4,9) core:2 pu:1"));
    CHECK_EQ(t->info.n_numa_nodes, 2);
    CHECK_EQ(t->node_os[0], 4);
    CHECK_EQ(t->node_os[1], 9);
    CHECK_EQ(t->node_cores[0], 2);
    moe_topology_free(&t);
}

/* A PCI device's node: this machine's first PCI device (if it has one)
 * is on one of its nodes or "unknown"; a device that does not exist is
 * unknown. The answer on a multi-node host needs one to test. */
static void pci_devices_have_a_node_or_none(void) {
    moe_topology_t *t = NULL;
    CHECK_OK(moe_topology_detect(&t));
    const int n = moe_pci_os_node(0, 0, 0);
    bool known = n == -1;
    for (uint32_t i = 0; i < t->info.n_numa_nodes; i++) known |= n == (int)t->node_os[i];
    CHECK(known);
    CHECK_EQ(moe_pci_os_node(0xffff, 0xff, 0x1f), -1);
    moe_topology_free(&t);
}

static void rejects_bad_descriptions(void) {
    moe_topology_t *t = (moe_topology_t *)1;
    CHECK_STATUS(moe_topology_synthetic(&t, "pack:two"), MOE_ERR_PARSE);
    CHECK_ERROR_MENTIONS("\"pack:two\" is not a valid hwloc synthetic description");
    CHECK(t == NULL);
    CHECK_STATUS(moe_topology_synthetic(&t, NULL), MOE_ERR_INVALID_ARG);
    /* hwloc would build a million objects: refused at once. */
    CHECK_STATUS(moe_topology_synthetic(&t, "pack:100 core:100 pu:100"), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("more than 65536 processing units");
    CHECK_STATUS(moe_topology_synthetic(&t, "pack:99999999999999999999"), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_topology_synthetic(NULL, "pack:1"), MOE_ERR_INVALID_ARG);
    moe_topology_info i;
    CHECK_STATUS(moe_topology_get_info(NULL, &i), MOE_ERR_INVALID_ARG);
}

typedef struct last_line {
    char text[512];
} last_line;

static void keep_line(moe_log_level level, const char *msg, void *user) {
    (void)level;
    snprintf(((last_line *)user)->text, sizeof ((last_line *)user)->text, "%s", msg);
}

static void runtime_sizes_threads_from_topology(void) {
    test_model tm;
    test_model_make(&tm, 1, 2, 4, 4, MOE_DTYPE_F32, 1);
    moe_topology_t *t = NULL;
    CHECK_OK(moe_topology_synthetic(&t, "pack:2 numa:1 core:3 pu:2"));
    last_line line = {{0}};
    moe_runtime_params p = moe_runtime_default_params();
    p.topology = t;
    p.log_fn = keep_line;
    p.log_user = &line;
    p.log_level = MOE_LOG_INFO;
    moe_runtime_t *rt = NULL;
    CHECK_OK(moe_runtime_create(&rt, tm.model, &p));
    moe_topology_free(&t); /* borrowed only during create */
    CHECK(strstr(line.text, "6 threads") != NULL);
    float x[4] = {1, 2, 3, 4}, y[4];
    CHECK_OK(moe_layer_forward(rt, 0, 1, x, 1, (int32_t[]){1}, (float[]){1.0f}, y));
    moe_runtime_free(&rt);
    test_model_free(&tm);
}

TEST_MAIN("topology", TEST_CASE(detects_this_host), TEST_CASE(synthetic_two_sockets), TEST_CASE(each_core_counts_once),
          TEST_CASE(nodes_keep_os_numbers), TEST_CASE(pci_devices_have_a_node_or_none),
          TEST_CASE(rejects_bad_descriptions), TEST_CASE(runtime_sizes_threads_from_topology))
