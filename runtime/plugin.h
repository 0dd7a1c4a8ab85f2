/* plugin.h - what runtime/plugin.c (the plugin API's routing helpers) needs
 * from a runtime beyond the public API. */
#ifndef MOE_RUNTIME_PLUGIN_H
#define MOE_RUNTIME_PLUGIN_H

#include "model_registry.h"

/* The runtime's model; NULL for a handle that is not a runtime. */
const moe_model_t *moe_runtime_model_of(const moe_runtime_t *rt);

/* Whether a submitted forward is in flight. */
bool moe_runtime_inflight(const moe_runtime_t *rt);

#endif
