/* test_cache.c - residency under a byte budget, LRU and LFU replacement,
 * protection of experts in use, and accounting invariants. */
#include "cache.h"
#include "util.h"

typedef struct evictions {
    uint32_t n;
    uint32_t layer[64], expert[64];
} evictions;

static void on_evict(uint32_t layer, uint32_t expert, void *user) {
    evictions *ev = user;
    if (ev->n < 64) ev->layer[ev->n] = layer, ev->expert[ev->n] = expert;
    ev->n++;
}

static moe_cache *make(uint32_t layers, uint32_t experts, uint64_t bytes, uint64_t budget, moe_cache_policy p) {
    uint32_t ne[8];
    uint64_t eb[8];
    for (uint32_t l = 0; l < layers; l++) ne[l] = experts, eb[l] = bytes;
    moe_cache *c = NULL;
    CHECK_OK(moe_cache_create(&c, layers, ne, eb, budget, p));
    return c;
}

/* One step that uses and admits each listed expert of layer 0. */
static void step(moe_cache *c, const uint32_t *experts, int n) {
    moe_cache_begin_step(c);
    for (int i = 0; i < n; i++) {
        moe_cache_use(c, 0, experts[i]);
        CHECK_OK(moe_cache_admit(c, 0, experts[i]));
    }
}

static void lru_evicts_least_recent(void) {
    moe_cache *c = make(1, 8, 100, 300, MOE_CACHE_LRU);
    evictions ev = {0};
    moe_cache_set_evict_fn(c, on_evict, &ev);
    step(c, (uint32_t[]){0}, 1);
    step(c, (uint32_t[]){1}, 1);
    step(c, (uint32_t[]){2}, 1);
    step(c, (uint32_t[]){0}, 1); /* 0 becomes most recent */
    step(c, (uint32_t[]){3}, 1); /* evicts 1, the least recent */
    CHECK_EQ(ev.n, 1);
    CHECK_EQ(ev.expert[0], 1);
    CHECK(moe_cache_resident(c, 0, 0) && !moe_cache_resident(c, 0, 1));
    CHECK(moe_cache_resident(c, 0, 2) && moe_cache_resident(c, 0, 3));
    CHECK_EQ(moe_cache_used_bytes(c), 300);
    CHECK_EQ(moe_cache_n_resident(c), 3);
    moe_cache_free(&c);
    CHECK(c == NULL);
}

static void lfu_evicts_least_frequent(void) {
    moe_cache *c = make(1, 8, 10, 20, MOE_CACHE_LFU);
    step(c, (uint32_t[]){0}, 1);
    step(c, (uint32_t[]){0}, 1);
    step(c, (uint32_t[]){1}, 1);
    step(c, (uint32_t[]){2}, 1); /* 1 has fewer uses than 0 */
    CHECK(moe_cache_resident(c, 0, 0) && !moe_cache_resident(c, 0, 1) && moe_cache_resident(c, 0, 2));
    step(c, (uint32_t[]){3}, 1); /* 2 and 3... 2 has 1 use, 0 has 2: evict 2 */
    CHECK(moe_cache_resident(c, 0, 0) && !moe_cache_resident(c, 0, 2) && moe_cache_resident(c, 0, 3));
    moe_cache_free(&c);
}

static void experts_in_use_are_protected(void) {
    moe_cache *c = make(1, 8, 10, 20, MOE_CACHE_LRU);
    moe_cache_begin_step(c);
    moe_cache_use(c, 0, 0);
    moe_cache_use(c, 0, 1);
    moe_cache_use(c, 0, 2);
    CHECK_OK(moe_cache_admit(c, 0, 0));
    CHECK_OK(moe_cache_admit(c, 0, 1));
    /* Full, and both residents are used in this step: 2 must be refused and
     * nothing evicted. */
    CHECK_STATUS(moe_cache_admit(c, 0, 2), MOE_ERR_STATE);
    CHECK_ERROR_MENTIONS("without evicting experts in use");
    CHECK(moe_cache_resident(c, 0, 0) && moe_cache_resident(c, 0, 1) && !moe_cache_resident(c, 0, 2));
    moe_cache_begin_step(c); /* next step: they are evictable again */
    moe_cache_use(c, 0, 2);
    CHECK_OK(moe_cache_admit(c, 0, 2));
    CHECK_OK(moe_cache_admit(c, 0, 2)); /* already resident */
    CHECK_EQ(moe_cache_n_resident(c), 2);
    moe_cache_free(&c);
}

static void budget_and_arguments(void) {
    moe_cache *c = make(2, 4, 100, 50, MOE_CACHE_LRU);
    CHECK_STATUS(moe_cache_admit(c, 0, 0), MOE_ERR_STATE);
    CHECK_ERROR_MENTIONS("exceeds the budget");
    CHECK_STATUS(moe_cache_admit(c, 2, 0), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_cache_admit(c, 0, 4), MOE_ERR_INVALID_ARG);
    CHECK(!moe_cache_resident(c, 9, 9));
    moe_cache_use(c, 9, 9); /* ignored */
    CHECK_EQ(moe_cache_budget_bytes(c), 50);
    moe_cache_free(&c);
    moe_cache *d = NULL;
    uint32_t ne = 4;
    uint64_t eb = 1;
    CHECK_STATUS(moe_cache_create(&d, 0, &ne, &eb, 10, MOE_CACHE_LRU), MOE_ERR_INVALID_ARG);
    CHECK_STATUS(moe_cache_create(&d, 1, &ne, &eb, 10, (moe_cache_policy)7), MOE_ERR_INVALID_ARG);
    CHECK(d == NULL);
}

static void unlimited_budget(void) {
    moe_cache *c = make(1, 8, 1000, UINT64_MAX, MOE_CACHE_LRU);
    for (uint32_t e = 0; e < 8; e++) {
        moe_cache_begin_step(c);
        moe_cache_use(c, 0, e);
        CHECK_OK(moe_cache_admit(c, 0, e));
    }
    CHECK_EQ(moe_cache_n_resident(c), 8);
    CHECK_EQ(moe_cache_used_bytes(c), 8000);
    moe_cache_free(&c);
}

static void invariants_hold_on_random_use(void) {
    /* Layers with different expert sizes; random steps; used bytes always
     * equal the resident experts' bytes and never exceed the budget. */
    const uint32_t ne[3] = {16, 8, 32};
    const uint64_t eb[3] = {30, 70, 10};
    for (int p = 0; p < 2; p++) {
        moe_cache *c = NULL;
        CHECK_OK(moe_cache_create(&c, 3, ne, eb, 400, (moe_cache_policy)p));
        moe_rng r = {(uint64_t)p + 1};
        for (int s = 0; s < 2000; s++) {
            moe_cache_begin_step(c);
            for (int k = 0; k < 4; k++) {
                uint32_t l = moe_rng_below(&r, 3), e = moe_rng_below(&r, ne[l]);
                moe_cache_use(c, l, e);
                moe_status st = moe_cache_admit(c, l, e);
                CHECK(st == MOE_OK || st == MOE_ERR_STATE);
                if (st == MOE_OK) CHECK(moe_cache_resident(c, l, e));
            }
            uint64_t sum = 0;
            uint32_t n = 0;
            for (uint32_t l = 0; l < 3; l++)
                for (uint32_t e = 0; e < ne[l]; e++)
                    if (moe_cache_resident(c, l, e)) sum += eb[l], n++;
            if (sum != moe_cache_used_bytes(c) || sum > 400 || n != moe_cache_n_resident(c)) {
                CHECK(sum == moe_cache_used_bytes(c) && sum <= 400 && n == moe_cache_n_resident(c));
                break;
            }
        }
        moe_cache_free(&c);
    }
}

/* The cache's victim (found through per-layer candidates) against a plain
 * model of every policy that scans all experts, over random steps of uses,
 * protections, score and next-use changes and admissions on 5 layers of
 * 12 experts; also: protected experts are never evicted, and a refused
 * admission evicts nothing. */
typedef struct ref_slot {
    uint64_t last, uses, next, prot;
    double score;
    bool res;
} ref_slot;

static bool ref_worse(moe_cache_policy p, const ref_slot *a, const ref_slot *b) {
    if (p == MOE_CACHE_LFU && a->uses != b->uses) return a->uses < b->uses;
    if (p == MOE_CACHE_BELADY && a->next != b->next) return a->next > b->next;
    if (p == MOE_CACHE_SCORE && a->score != b->score) return a->score < b->score;
    return a->last < b->last;
}

static void victim_matches_a_full_scan(void) {
    enum { L = 5, E = 12 };
    for (int pol = 0; pol < 4; pol++) {
        const moe_cache_policy p = (moe_cache_policy)pol;
        moe_cache *c = make(L, E, 10, 10 * 17, p);
        ref_slot ref[L][E] = {{{0}}};
        moe_rng r = {1000u + (uint64_t)pol};
        uint64_t step = 1;
        for (int it = 0; it < 4000; it++) {
            if (it % 7 == 0) moe_cache_begin_step(c), step++;
            const uint32_t l = (uint32_t)(moe_rng_next(&r) % L), e = (uint32_t)(moe_rng_next(&r) % E);
            ref_slot *s = &ref[l][e];
            switch (moe_rng_next(&r) % 5) {
            case 0: moe_cache_use(c, l, e), s->last = step, s->uses++, s->prot = step; break;
            case 1: moe_cache_protect(c, l, e), s->prot = step; break;
            case 2: {
                const double v = (double)(moe_rng_next(&r) % 100);
                moe_cache_set_score(c, l, e, v), s->score = v;
                CHECK(moe_cache_score(c, l, e) == v);
                break;
            }
            case 3: {
                const uint64_t nx = moe_rng_next(&r) % 1000;
                moe_cache_set_next_use(c, l, e, nx), s->next = nx;
                break;
            }
            default: {
                /* The expected victim, if the admission needs one. */
                const ref_slot *want = NULL;
                uint64_t evictable = 0;
                for (uint32_t a = 0; a < L; a++)
                    for (uint32_t b = 0; b < E; b++) {
                        const ref_slot *v = &ref[a][b];
                        if (!v->res || v->prot == step) continue;
                        evictable += 10;
                        if (!want || ref_worse(p, v, want)) want = v;
                    }
                uint32_t vl, ve;
                const bool any = moe_cache_peek_victim(c, &vl, &ve);
                CHECK(any == (want != NULL));
                if (any && want) CHECK(&ref[vl][ve] == want || !ref_worse(p, want, &ref[vl][ve]));
                const uint64_t used = moe_cache_used_bytes(c);
                const moe_status st = moe_cache_admit(c, l, e);
                if (s->res) {
                    CHECK(st == MOE_OK && moe_cache_used_bytes(c) == used);
                } else if (used + 10 <= 170) {
                    CHECK(st == MOE_OK);
                    s->res = true;
                } else if (evictable == 0) {
                    CHECK(st == MOE_ERR_STATE && moe_cache_used_bytes(c) == used); /* nothing evicted */
                } else {
                    CHECK(st == MOE_OK);
                    CHECK(any && !moe_cache_resident(c, vl, ve)); /* the peeked victim left */
                    ref[vl][ve].res = false;
                    s->res = true;
                }
            }
            }
            for (uint32_t a = 0; a < L; a++)
                for (uint32_t b = 0; b < E; b++) CHECK(moe_cache_resident(c, a, b) == ref[a][b].res);
        }
        moe_cache_free(&c);
    }
}

TEST_MAIN("cache", TEST_CASE(lru_evicts_least_recent), TEST_CASE(lfu_evicts_least_frequent),
          TEST_CASE(experts_in_use_are_protected), TEST_CASE(budget_and_arguments), TEST_CASE(unlimited_budget),
          TEST_CASE(invariants_hold_on_random_use), TEST_CASE(victim_matches_a_full_scan))
