/* model_registry.h - the registry of a model's routed experts (internal view). */
#ifndef MOE_RUNTIME_MODEL_REGISTRY_H
#define MOE_RUNTIME_MODEL_REGISTRY_H

#include <stdatomic.h>
#include <stddef.h>

#include "common.h"

#define MOE_MAX_LAYERS 4096u
#define MOE_MAX_EXPERTS 65536u
#define MOE_MAX_DIM (1u << 20)

typedef struct moe_model_layer {
    bool described;
    moe_layer_desc desc;
    moe_dtype down_dtype;        /* desc.weight_dtype unless moe_model_set_down_dtype */
    moe_expert_weights *experts; /* desc.n_experts entries */
    uint32_t n_registered;
    bool has_routing;            /* moe_model_set_router */
    moe_routing routing;
    const void *router;          /* [n_experts, hidden] in router_dtype; NULL: none */
    moe_dtype router_dtype;
} moe_model_layer;

struct moe_model {
    uint32_t magic;
    atomic_uint refs;
    uint32_t n_layers;
    moe_model_layer *layers;
};

bool moe_model_valid(const moe_model_t *m);

/* Takes another reference (a runtime holds one). */
void moe_model_retain(moe_model_t *m);

/* MOE_OK if every layer is described and every expert registered; otherwise
 * MOE_ERR_STATE naming the first missing one. */
moe_status moe_model_check_complete(const moe_model_t *m);

/* moe_routing's bytes up to scale: the whole struct of API 5-7. */
#define MOE_ROUTING_V7_BYTES (offsetof(moe_routing, scale) + sizeof(float))

/* Groups a rule may have: n_group at most this (DeepSeek-V3 and Kimi-K2
 * have 8, GLM-4.5 1). */
#define MOE_ROUTE_MAX_GROUPS 256

/* Whether r's groups fit n_experts (moerun.h's rules); if not, why. */
bool moe_routing_groups_ok(const moe_routing *r, uint32_t n_experts, char *why, size_t cap);

/* Routes n tokens from their router logits [n, n_experts] by rule r:
 * ids and weights [n, r->top_k]. probs: scratch of n_experts floats. */
void moe_route_logits(const moe_routing *r, uint32_t n_experts, uint32_t n, const float *logits, float *probs,
                      int32_t *ids, float *weights);

/* Bytes of one expert of layer L: its three matrices (and int8 row scales). */
uint64_t moe_model_layer_expert_bytes(const moe_model_layer *L);

#endif
