/* test_cost.c - the expert cost query: measured points are returned
 * exactly, interpolated between, held below and scaled above; unmeasured
 * shapes fall back to the roofline. */
#include "cost.h"
#include "harness.h"

static const moe_cost_point pts[] = {
    {2048, 1408, MOE_DTYPE_BF16, 512, 9000.0}, /* out of order on purpose */
    {2048, 1408, MOE_DTYPE_BF16, 1, 700.0},
    {2048, 1408, MOE_DTYPE_BF16, 4, 760.0},
    {2048, 1408, MOE_DTYPE_BF16, 32, 1200.0},
    {2048, 1408, MOE_DTYPE_I8, 1, 350.0},
};

static moe_cost_table table(void) {
    moe_cost_table t = {.points = pts, .n_points = 5, .read_gbps = 30.0, .overhead_us = 5.0};
    t.gflops[MOE_DTYPE_BF16] = 1000.0;
    t.decode_eff[MOE_DTYPE_BF16] = 0.8;
    return t;
}

static void measured_points_interpolate(void) {
    moe_cost_table t = table();
    CHECK_NEAR(moe_cost_us(&t, 2048, 1408, MOE_DTYPE_BF16, 1), 700.0, 1e-9);
    CHECK_NEAR(moe_cost_us(&t, 2048, 1408, MOE_DTYPE_BF16, 4), 760.0, 1e-9);
    CHECK_NEAR(moe_cost_us(&t, 2048, 1408, MOE_DTYPE_BF16, 2), 720.0, 1e-9);
    CHECK_NEAR(moe_cost_us(&t, 2048, 1408, MOE_DTYPE_BF16, 18), 980.0, 1e-9);
    CHECK_NEAR(moe_cost_us(&t, 2048, 1408, MOE_DTYPE_BF16, 1024), 18000.0, 1e-9); /* scaled above */
    CHECK_NEAR(moe_cost_us(&t, 2048, 1408, MOE_DTYPE_I8, 3), 1050.0, 1e-9);       /* one point: linear in m */
    CHECK_NEAR(moe_cost_us(&t, 2048, 1408, MOE_DTYPE_BF16, 0), 0.0, 0);
    /* Monotone in m over the measured range. */
    double prev = 0;
    for (uint32_t m = 1; m <= 2048; m++) {
        double c = moe_cost_us(&t, 2048, 1408, MOE_DTYPE_BF16, m);
        CHECK(c >= prev);
        prev = c;
    }
}

static void unmeasured_shapes_use_the_roofline(void) {
    moe_cost_table t = table();
    /* 3 * 1024 * 512 * 2 bytes at 30 GB/s x 0.8 = 131.072 us, + 5 us. */
    CHECK_NEAR(moe_cost_us(&t, 1024, 512, MOE_DTYPE_BF16, 1), 5.0 + 3.0 * 1024 * 512 * 2 / 24e3, 1e-9);
    /* m = 4096: 6 * 4096 * 1024 * 512 flops at 1000 GFLOP/s = 12884.9 us. */
    CHECK_NEAR(moe_cost_us(&t, 1024, 512, MOE_DTYPE_BF16, 4096), 5.0 + 6.0 * 4096 * 1024 * 512 / 1e6, 1e-6);
    /* f32: no rate, no efficiency: bandwidth only, at full read rate. */
    CHECK_NEAR(moe_cost_us(&t, 1024, 512, MOE_DTYPE_F32, 64), 5.0 + 3.0 * 1024 * 512 * 4 / 30e3, 1e-9);
    moe_cost_table empty = {0};
    CHECK(moe_cost_us(&empty, 1024, 512, MOE_DTYPE_F32, 1) < 0);
    CHECK(moe_cost_us(NULL, 1024, 512, MOE_DTYPE_F32, 1) < 0);
    CHECK(moe_cost_us(&t, 1024, 512, MOE_DTYPE_COUNT_, 1) < 0);
}

TEST_MAIN("cost", TEST_CASE(measured_points_interpolate), TEST_CASE(unmeasured_shapes_use_the_roofline))
