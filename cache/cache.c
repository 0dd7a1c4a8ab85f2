/* cache.c - residency table with LRU/LFU replacement (see cache.h).
 * Eviction scans all experts: with a few thousand experts per model this is
 * microseconds, and it keeps the policy code obvious. */
#include "cache.h"

#include <stdlib.h>

typedef struct slot {
    uint64_t last_use; /* step counter value at the last use, 0 = never */
    uint64_t uses;
    uint64_t next_use; /* Belady: the step it is needed next */
    double score;      /* MRS score */
    uint32_t layer;
    bool resident;
} slot;

struct moe_cache {
    uint32_t n_layers;
    uint32_t *first;       /* index of layer l's first expert in slots */
    uint32_t *n_experts;
    uint64_t *expert_bytes;
    slot *slots;
    uint32_t n_slots;
    uint64_t budget, used;
    uint64_t step;         /* current step, starts at 1 */
    uint32_t n_resident;
    moe_cache_policy policy;
    moe_evict_fn evict_fn;
    void *evict_user;
};

moe_status moe_cache_create(moe_cache **out, uint32_t n_layers, const uint32_t *n_experts,
                            const uint64_t *expert_bytes, uint64_t budget_bytes,
                            moe_cache_policy policy) {
    if (!out || !n_experts || !expert_bytes || n_layers == 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "cache: bad arguments");
    *out = NULL;
    if (policy != MOE_CACHE_LRU && policy != MOE_CACHE_LFU && policy != MOE_CACHE_BELADY && policy != MOE_CACHE_SCORE)
        return moe_fail(MOE_ERR_INVALID_ARG, "cache: unknown replacement policy %d", (int)policy);
    uint64_t total = 0;
    for (uint32_t l = 0; l < n_layers; l++) total += n_experts[l];
    if (total == 0 || total > UINT32_MAX) return moe_fail(MOE_ERR_INVALID_ARG, "cache: %llu experts", (unsigned long long)total);
    moe_cache *c = calloc(1, sizeof *c);
    if (c) {
        c->first = calloc(n_layers, sizeof *c->first);
        c->n_experts = calloc(n_layers, sizeof *c->n_experts);
        c->expert_bytes = calloc(n_layers, sizeof *c->expert_bytes);
        c->slots = calloc((size_t)total, sizeof *c->slots);
    }
    if (!c || !c->first || !c->n_experts || !c->expert_bytes || !c->slots) {
        moe_cache_free(&c);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "cache: allocation failed");
    }
    uint32_t at = 0;
    for (uint32_t l = 0; l < n_layers; l++) {
        c->first[l] = at;
        c->n_experts[l] = n_experts[l];
        c->expert_bytes[l] = expert_bytes[l];
        for (uint32_t e = 0; e < n_experts[l]; e++) c->slots[at + e].layer = l;
        at += n_experts[l];
    }
    c->n_layers = n_layers;
    c->n_slots = (uint32_t)total;
    c->budget = budget_bytes;
    c->step = 1;
    c->policy = policy;
    *out = c;
    return MOE_OK;
}

void moe_cache_free(moe_cache **c) {
    if (!c || !*c) return;
    free((*c)->first);
    free((*c)->n_experts);
    free((*c)->expert_bytes);
    free((*c)->slots);
    free(*c);
    *c = NULL;
}

void moe_cache_set_evict_fn(moe_cache *c, moe_evict_fn fn, void *user) {
    c->evict_fn = fn;
    c->evict_user = user;
}

void moe_cache_begin_step(moe_cache *c) { c->step++; }

static slot *find(const moe_cache *c, uint32_t layer, uint32_t expert) {
    if (layer >= c->n_layers || expert >= c->n_experts[layer]) return NULL;
    return &c->slots[c->first[layer] + expert];
}

bool moe_cache_resident(const moe_cache *c, uint32_t layer, uint32_t expert) {
    const slot *s = find(c, layer, expert);
    return s && s->resident;
}

void moe_cache_use(moe_cache *c, uint32_t layer, uint32_t expert) {
    slot *s = find(c, layer, expert);
    if (!s) return;
    s->last_use = c->step;
    s->uses++;
}

void moe_cache_score_layer(moe_cache *c, uint32_t layer, const uint16_t *experts, const float *scores, uint32_t n,
                           double a) {
    if (layer >= c->n_layers) return;
    slot *s = &c->slots[c->first[layer]];
    for (uint32_t e = 0; e < c->n_experts[layer]; e++) s[e].score *= 1.0 - a;
    for (uint32_t i = 0; i < n; i++)
        if (experts[i] < c->n_experts[layer]) s[experts[i]].score += a * (double)scores[i];
}

void moe_cache_set_next_use(moe_cache *c, uint32_t layer, uint32_t expert, uint64_t step) {
    slot *s = find(c, layer, expert);
    if (s) s->next_use = step;
}

/* True if a should be evicted before b. */
static bool worse(const moe_cache *c, const slot *a, const slot *b) {
    if (c->policy == MOE_CACHE_LFU && a->uses != b->uses) return a->uses < b->uses;
    if (c->policy == MOE_CACHE_BELADY && a->next_use != b->next_use) return a->next_use > b->next_use;
    if (c->policy == MOE_CACHE_SCORE && a->score != b->score) return a->score < b->score;
    return a->last_use < b->last_use;
}

moe_status moe_cache_admit(moe_cache *c, uint32_t layer, uint32_t expert) {
    slot *s = find(c, layer, expert);
    if (!s) return moe_fail(MOE_ERR_INVALID_ARG, "cache: expert %u of layer %u does not exist", expert, layer);
    if (s->resident) return MOE_OK;
    uint64_t need = c->expert_bytes[layer];
    if (need > c->budget)
        return moe_fail(MOE_ERR_STATE, "cache: an expert of %llu bytes exceeds the budget of %llu bytes",
                        (unsigned long long)need, (unsigned long long)c->budget);
    /* Check first that enough evictable bytes exist, so a refusal evicts nothing. */
    uint64_t evictable = 0;
    for (uint32_t i = 0; i < c->n_slots; i++)
        if (c->slots[i].resident && c->slots[i].last_use != c->step)
            evictable += c->expert_bytes[c->slots[i].layer];
    /* Written without budget + evictable, which wraps for a budget near
     * UINT64_MAX ("unlimited"). used <= budget always holds. */
    if (c->used + need > c->budget && need - (c->budget - c->used) > evictable)
        return moe_fail(MOE_ERR_STATE, "cache: no room for expert %u of layer %u without evicting "
                        "experts in use", expert, layer);
    while (c->used + need > c->budget) {
        uint32_t victim = UINT32_MAX;
        for (uint32_t i = 0; i < c->n_slots; i++) {
            const slot *v = &c->slots[i];
            if (!v->resident || v->last_use == c->step) continue;
            if (victim == UINT32_MAX || worse(c, v, &c->slots[victim])) victim = i;
        }
        uint32_t vl = c->slots[victim].layer;
        c->slots[victim].resident = false;
        c->used -= c->expert_bytes[vl];
        c->n_resident--;
        if (c->evict_fn) c->evict_fn(vl, victim - c->first[vl], c->evict_user);
    }
    s->resident = true;
    c->used += need;
    c->n_resident++;
    return MOE_OK;
}

uint64_t moe_cache_used_bytes(const moe_cache *c) { return c->used; }
uint64_t moe_cache_budget_bytes(const moe_cache *c) { return c->budget; }
uint32_t moe_cache_n_resident(const moe_cache *c) { return c->n_resident; }
