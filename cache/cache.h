/* cache.h - which routed experts are resident on the GPU, under one byte
 * budget shared by all layers. The replacement policy decides what leaves
 * when a new expert must come in; experts used in the current step are never
 * evicted (the step's work still needs them). */
#ifndef MOE_CACHE_H
#define MOE_CACHE_H

#include "common.h"

typedef struct moe_cache moe_cache;

typedef enum moe_cache_policy {
    MOE_CACHE_LRU = 0, /* evict the least recently used expert */
    MOE_CACHE_LFU,     /* evict the least frequently used; ties: least recent */
    MOE_CACHE_BELADY,  /* evict the one needed again farthest in the future (the caller says when,
                          moe_cache_set_next_use); ties: least recent. An oracle for simulation. */
    MOE_CACHE_SCORE,   /* evict the lowest score (HybriMoE's MRS, moe_cache_score_layer); ties: least recent */
} moe_cache_policy;

/* Called for each expert the cache evicts, so the device can free its slot. */
typedef void (*moe_evict_fn)(uint32_t layer, uint32_t expert, void *user);

/* n_experts[l] experts of expert_bytes[l] bytes each, in layer l. */
moe_status moe_cache_create(moe_cache **out, uint32_t n_layers, const uint32_t *n_experts,
                            const uint64_t *expert_bytes, uint64_t budget_bytes,
                            moe_cache_policy policy);
void moe_cache_free(moe_cache **c);

void moe_cache_set_evict_fn(moe_cache *c, moe_evict_fn fn, void *user);

/* Starts a new step: experts used from now on are protected from eviction
 * until the next step starts. */
void moe_cache_begin_step(moe_cache *c);

bool moe_cache_resident(const moe_cache *c, uint32_t layer, uint32_t expert);

/* Records a use of (layer, expert) in this step, resident or not; it is
 * protected from eviction until the next step. */
void moe_cache_use(moe_cache *c, uint32_t layer, uint32_t expert);

/* Protects (layer, expert) from eviction until the next step without
 * counting a use (the scheduler protects what the next layer will need). */
void moe_cache_protect(moe_cache *c, uint32_t layer, uint32_t expert);

/* MOE_CACHE_SCORE: one run of `layer` with router scores: every expert's
 * score S becomes a * s + (1 - a) * S, s being its score in this run (the
 * `n` given (expert, score) pairs; 0 for the others, so they decay). */
void moe_cache_score_layer(moe_cache *c, uint32_t layer, const uint16_t *experts, const float *scores, uint32_t n,
                           double a);

/* MOE_CACHE_SCORE: sets one expert's score (a scheduler with its own
 * scoring rule), and reads it back (0 for an expert that does not exist). */
void moe_cache_set_score(moe_cache *c, uint32_t layer, uint32_t expert, double score);
double moe_cache_score(const moe_cache *c, uint32_t layer, uint32_t expert);

/* MOE_CACHE_BELADY: the step at which (layer, expert) is next needed
 * (UINT64_MAX: never). Any value works for the other policies (unused). */
void moe_cache_set_next_use(moe_cache *c, uint32_t layer, uint32_t expert, uint64_t step);

/* Makes (layer, expert) resident, evicting by the policy until it fits.
 * Returns MOE_ERR_STATE (no eviction done) when it cannot fit without
 * evicting an expert used in this step, or when it is larger than the
 * budget. Already resident: MOE_OK. */
moe_status moe_cache_admit(moe_cache *c, uint32_t layer, uint32_t expert);

/* The expert the policy would evict next (resident, not protected), without
 * evicting it; false when there is none. */
bool moe_cache_peek_victim(moe_cache *c, uint32_t *layer, uint32_t *expert);

/* Bytes one expert of `layer` takes (0 for a layer that does not exist). */
uint64_t moe_cache_expert_bytes(const moe_cache *c, uint32_t layer);

uint64_t moe_cache_used_bytes(const moe_cache *c);
uint64_t moe_cache_budget_bytes(const moe_cache *c);
uint32_t moe_cache_n_resident(const moe_cache *c);

#endif
