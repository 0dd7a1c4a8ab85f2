/* demo.h - the built-in demo model: a stack of MoE layers with random
 * weights generated deterministically from a seed. It has no attention
 * (tokens do not see each other) and its weights are random, so its output
 * is meaningless text-wise; it exists to drive the runtime through the
 * public plugin API exactly as a host inference loop would:
 *   h = embed[token]; per layer: x = rmsnorm(h); route x (softmax, top-k,
 *   renormalise); h += moe_layer_forward(x); logits = lm_head(rmsnorm(h)). */
#ifndef MOE_MODEL_DEMO_H
#define MOE_MODEL_DEMO_H

#include "moerun.h"

#include <stdint.h>

typedef struct moe_demo_config {
    uint32_t n_layers, n_experts, top_k, hidden, inter, vocab;
    moe_dtype dtype;
    uint64_t seed;
} moe_demo_config;

moe_demo_config moe_demo_default_config(void);

typedef struct moe_demo moe_demo;

/* Generates the weights and registers the experts in a new moe_model_t. */
moe_status moe_demo_create(moe_demo **out, const moe_demo_config *cfg);
void moe_demo_free(moe_demo **d);

/* The model whose experts the demo registered (owned by the demo). */
moe_model_t *moe_demo_model(const moe_demo *d);

/* Runs n tokens at positions pos0 .. pos0+n-1 as one batch through every
 * layer with runtime `rt`; logits: [n, vocab]. */
moe_status moe_demo_forward(moe_demo *d, moe_runtime_t *rt, const int32_t *tokens, uint32_t n, uint32_t pos0,
                            float *logits);

/* Index of the largest logit (greedy sampling). */
int32_t moe_demo_argmax(const float *logits, uint32_t vocab);

/* Maps a prompt's bytes to token ids (byte value mod vocab); returns the
 * number written, at most cap. */
uint32_t moe_demo_tokenize(const char *prompt, uint32_t vocab, int32_t *out, uint32_t cap);

#endif
