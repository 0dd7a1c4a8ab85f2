/* test_plan.c - grouping a batch's routing by expert, policy lookup, and the
 * device choice of each policy. */
#include "plan.h"
#include "util.h"

static void groups_cover_every_pair_once(void) {
    moe_plan p;
    moe_plan_init(&p);
    moe_rng r = {31};
    for (int round = 0; round < 50; round++) {
        const uint32_t E = 1 + moe_rng_below(&r, 64), k = 1 + moe_rng_below(&r, E < 8 ? E : 8);
        const uint32_t n = moe_rng_below(&r, 300);
        int32_t *ids = malloc((n + 1) * k * sizeof *ids);
        float *w = malloc((n + 1) * k * sizeof *w);
        test_routing(&r, n, E, k, ids, w);
        CHECK_OK(moe_plan_route(&p, 3, E, n, k, ids));
        CHECK_EQ(p.layer, 3);
        uint32_t *seen = calloc((size_t)(n + 1) * k, sizeof *seen);
        uint32_t total = 0;
        for (uint32_t g = 0; g < p.n_groups; g++) {
            const moe_plan_group *grp = &p.groups[g];
            CHECK(grp->n_tokens >= 1);
            CHECK_EQ(grp->first, total);
            if (g) CHECK(grp->expert > p.groups[g - 1].expert);
            for (uint32_t i = 0; i < grp->n_tokens; i++) {
                const moe_plan_pair *pr = &p.pairs[grp->first + i];
                CHECK_EQ(ids[pr->token * k + pr->slot], grp->expert);
                if (i) CHECK(pr->token > p.pairs[grp->first + i - 1].token);
                seen[pr->token * k + pr->slot]++;
            }
            total += grp->n_tokens;
        }
        CHECK_EQ(total, n * k);
        for (uint32_t i = 0; i < n * k; i++) CHECK_EQ(seen[i], 1);
        free(seen), free(ids), free(w);
    }
    moe_plan_release(&p);
}

static void routing_errors(void) {
    moe_plan p;
    moe_plan_init(&p);
    CHECK_STATUS(moe_plan_route(&p, 0, 4, 1, 2, (int32_t[]){1, 4}), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("topk_ids[0][1] = 4 is out of range");
    CHECK_STATUS(moe_plan_route(&p, 0, 4, 2, 2, (int32_t[]){1, 2, 3, 3}), MOE_ERR_INVALID_ARG);
    CHECK_ERROR_MENTIONS("expert 3 twice");
    CHECK_OK(moe_plan_route(&p, 0, 4, 0, 2, NULL)); /* empty batch */
    CHECK_EQ(p.n_groups, 0);
    moe_plan_release(&p);
}

static void policy_names_and_lookup(void) {
    moe_policy_id id;
    for (int i = 0; i < MOE_POLICY_COUNT_; i++) {
        CHECK_OK(moe_policy_lookup(moe_policy_name((moe_policy_id)i), &id));
        CHECK_EQ(id, i);
        CHECK(strcmp(moe_policy_names()[i], moe_policy_name((moe_policy_id)i)) == 0);
    }
    CHECK(moe_policy_names()[MOE_POLICY_COUNT_] == NULL);
    CHECK(moe_policy_name(MOE_POLICY_COUNT_) == NULL);
    CHECK_STATUS(moe_policy_lookup("lru", &id), MOE_ERR_UNSUPPORTED);
    CHECK_ERROR_MENTIONS("unknown policy \"lru\" (known: static-cpu, fiddler, static-hot, layer-split, gpu-lru, gpu-lfu, hybrimoe, moerun, oracle)");
    CHECK_STATUS(moe_policy_lookup(NULL, &id), MOE_ERR_UNSUPPORTED);
}

static void policies_choose_devices(void) {
    moe_plan p;
    moe_plan_init(&p);
    const int32_t ids[6] = {0, 1, 2, 1, 3, 0};
    CHECK_OK(moe_plan_route(&p, 1, 4, 3, 2, ids));
    CHECK_EQ(p.n_groups, 4);
    const uint32_t ne[2] = {4, 4};
    const uint64_t eb[2] = {10, 10};
    moe_cache *c = NULL;
    CHECK_OK(moe_cache_create(&c, 2, ne, eb, 100, MOE_CACHE_LRU));
    CHECK_OK(moe_cache_admit(c, 1, 2));
    CHECK_OK(moe_cache_admit(c, 1, 0));
    CHECK_OK(moe_cache_admit(c, 0, 1)); /* another layer's expert 1: not layer 1's */
    moe_plan_assign(&p, MOE_POLICY_STATIC_CPU, c);
    for (uint32_t g = 0; g < p.n_groups; g++) CHECK_EQ(p.groups[g].where, MOE_ON_CPU);
    moe_plan_assign(&p, MOE_POLICY_FIDDLER, c);
    for (uint32_t g = 0; g < p.n_groups; g++) {
        uint32_t e = p.groups[g].expert;
        CHECK_EQ(p.groups[g].where, (e == 0 || e == 2) ? MOE_ON_GPU : MOE_ON_CPU);
    }
    moe_plan_assign(&p, MOE_POLICY_FIDDLER, NULL); /* no cache: all misses */
    for (uint32_t g = 0; g < p.n_groups; g++) CHECK_EQ(p.groups[g].where, MOE_ON_CPU);
    moe_cache_free(&c);
    moe_plan_release(&p);
}

TEST_MAIN("plan", TEST_CASE(groups_cover_every_pair_once), TEST_CASE(routing_errors),
          TEST_CASE(policy_names_and_lookup), TEST_CASE(policies_choose_devices))
