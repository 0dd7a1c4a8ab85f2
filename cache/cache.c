/* cache.c - residency table with LRU/LFU/Belady/score replacement (see
 * cache.h). Each layer remembers its own eviction candidate, recomputed by
 * scanning that layer only after something in it changed; a victim is the
 * worst of the layers' candidates. The simulator admits millions of experts
 * into one cache of a whole model, so a scan of every expert per admission
 * would be too slow; a scan of one layer keeps the policy code obvious. */
#include "cache.h"

#include <stdlib.h>

typedef struct slot {
    uint64_t last_use; /* step counter value at the last use, 0 = never */
    uint64_t uses;
    uint64_t next_use; /* Belady: the step it is needed next */
    uint64_t protect;  /* the step it is protected in (used or protected), 0 = never */
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
    uint64_t protected_bytes; /* resident and protected in this step */
    uint64_t step;         /* current step, starts at 1 */
    uint32_t *worst;       /* per layer: its eviction candidate, UINT32_MAX = none */
    bool *dirty;           /* per layer: `worst` must be recomputed */
    uint32_t *touched;     /* layers with an expert protected in this step */
    uint32_t n_touched;
    uint64_t *touched_at;  /* per layer: the step it was last put in `touched` */
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
        c->worst = calloc(n_layers, sizeof *c->worst);
        c->dirty = calloc(n_layers, sizeof *c->dirty);
        c->touched = calloc(n_layers, sizeof *c->touched);
        c->touched_at = calloc(n_layers, sizeof *c->touched_at);
    }
    if (!c || !c->first || !c->n_experts || !c->expert_bytes || !c->slots || !c->worst || !c->dirty ||
        !c->touched || !c->touched_at) {
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
        c->worst[l] = UINT32_MAX;
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
    free((*c)->worst);
    free((*c)->dirty);
    free((*c)->touched);
    free((*c)->touched_at);
    free(*c);
    *c = NULL;
}

void moe_cache_set_evict_fn(moe_cache *c, moe_evict_fn fn, void *user) {
    c->evict_fn = fn;
    c->evict_user = user;
}

/* Experts protected in the step that ends become evictable: their layers'
 * candidates must be recomputed. */
void moe_cache_begin_step(moe_cache *c) {
    for (uint32_t i = 0; i < c->n_touched; i++) c->dirty[c->touched[i]] = true;
    c->n_touched = 0;
    c->protected_bytes = 0;
    c->step++;
}

static slot *find(const moe_cache *c, uint32_t layer, uint32_t expert) {
    if (layer >= c->n_layers || expert >= c->n_experts[layer]) return NULL;
    return &c->slots[c->first[layer] + expert];
}

static void protect(moe_cache *c, slot *s) {
    const uint32_t l = s->layer;
    if (s->protect != c->step && s->resident) c->protected_bytes += c->expert_bytes[l];
    s->protect = c->step;
    c->dirty[l] = true;
    if (c->touched_at[l] != c->step) c->touched_at[l] = c->step, c->touched[c->n_touched++] = l;
}

void moe_cache_protect(moe_cache *c, uint32_t layer, uint32_t expert) {
    slot *s = find(c, layer, expert);
    if (s) protect(c, s);
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
    protect(c, s);
}

void moe_cache_score_layer(moe_cache *c, uint32_t layer, const uint16_t *experts, const float *scores, uint32_t n,
                           double a) {
    if (layer >= c->n_layers) return;
    slot *s = &c->slots[c->first[layer]];
    for (uint32_t e = 0; e < c->n_experts[layer]; e++) s[e].score *= 1.0 - a;
    for (uint32_t i = 0; i < n; i++)
        if (experts[i] < c->n_experts[layer]) s[experts[i]].score += a * (double)scores[i];
    c->dirty[layer] = true;
}

void moe_cache_set_score(moe_cache *c, uint32_t layer, uint32_t expert, double score) {
    slot *s = find(c, layer, expert);
    if (s) s->score = score, c->dirty[layer] = true;
}

double moe_cache_score(const moe_cache *c, uint32_t layer, uint32_t expert) {
    const slot *s = find(c, layer, expert);
    return s ? s->score : 0.0;
}

void moe_cache_set_next_use(moe_cache *c, uint32_t layer, uint32_t expert, uint64_t step) {
    slot *s = find(c, layer, expert);
    if (s) s->next_use = step, c->dirty[layer] = true;
}

/* True if a should be evicted before b. */
static bool worse(const moe_cache *c, const slot *a, const slot *b) {
    if (c->policy == MOE_CACHE_LFU && a->uses != b->uses) return a->uses < b->uses;
    if (c->policy == MOE_CACHE_BELADY && a->next_use != b->next_use) return a->next_use > b->next_use;
    if (c->policy == MOE_CACHE_SCORE && a->score != b->score) return a->score < b->score;
    return a->last_use < b->last_use;
}

static bool evictable(const moe_cache *c, const slot *v) { return v->resident && v->protect != c->step; }

/* The policy's next victim over the whole cache, UINT32_MAX if none. */
static uint32_t victim(moe_cache *c) {
    uint32_t best = UINT32_MAX;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        if (c->dirty[l]) {
            uint32_t w = UINT32_MAX;
            const uint32_t end = c->first[l] + c->n_experts[l];
            for (uint32_t i = c->first[l]; i < end; i++)
                if (evictable(c, &c->slots[i]) && (w == UINT32_MAX || worse(c, &c->slots[i], &c->slots[w]))) w = i;
            c->worst[l] = w;
            c->dirty[l] = false;
        }
        const uint32_t w = c->worst[l];
        if (w != UINT32_MAX && (best == UINT32_MAX || worse(c, &c->slots[w], &c->slots[best]))) best = w;
    }
    return best;
}

bool moe_cache_peek_victim(moe_cache *c, uint32_t *layer, uint32_t *expert) {
    const uint32_t v = victim(c);
    if (v == UINT32_MAX) return false;
    *layer = c->slots[v].layer;
    *expert = v - c->first[*layer];
    return true;
}

moe_status moe_cache_admit(moe_cache *c, uint32_t layer, uint32_t expert) {
    slot *s = find(c, layer, expert);
    if (!s) return moe_fail(MOE_ERR_INVALID_ARG, "cache: expert %u of layer %u does not exist", expert, layer);
    if (s->resident) return MOE_OK;
    uint64_t need = c->expert_bytes[layer];
    if (need > c->budget)
        return moe_fail(MOE_ERR_STATE, "cache: an expert of %llu bytes exceeds the budget of %llu bytes",
                        (unsigned long long)need, (unsigned long long)c->budget);
    /* Check first that enough evictable bytes exist, so a refusal evicts
     * nothing. Written without budget + evictable, which wraps for a budget
     * near UINT64_MAX ("unlimited"). used <= budget always holds. */
    const uint64_t evictable_bytes = c->used - c->protected_bytes;
    if (c->used + need > c->budget && need - (c->budget - c->used) > evictable_bytes)
        return moe_fail(MOE_ERR_STATE, "cache: no room for expert %u of layer %u without evicting "
                        "experts in use", expert, layer);
    while (c->used + need > c->budget) {
        const uint32_t v = victim(c);
        const uint32_t vl = c->slots[v].layer;
        c->slots[v].resident = false;
        c->used -= c->expert_bytes[vl];
        c->n_resident--;
        c->dirty[vl] = true;
        if (c->evict_fn) c->evict_fn(vl, v - c->first[vl], c->evict_user);
    }
    s->resident = true;
    c->used += need;
    c->n_resident++;
    if (s->protect == c->step) c->protected_bytes += need;
    c->dirty[layer] = true;
    return MOE_OK;
}

uint64_t moe_cache_expert_bytes(const moe_cache *c, uint32_t layer) {
    return layer < c->n_layers ? c->expert_bytes[layer] : 0;
}

uint64_t moe_cache_used_bytes(const moe_cache *c) { return c->used; }
uint64_t moe_cache_budget_bytes(const moe_cache *c) { return c->budget; }
uint32_t moe_cache_n_resident(const moe_cache *c) { return c->n_resident; }
