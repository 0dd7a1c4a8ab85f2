/* record.c - the routing a runtime records for moe-sim (record_trace_path,
 * runtime.h): every layer call of whole forward passes, in order, as a
 * moe-trace v1 file written when the runtime is freed. */
#include <stdio.h>

#include "runtime.h"

moe_status rt_record_open(moe_runtime_t *rt, const char *path) {
    if (!path[0] || strlen(path) >= sizeof rt->rec.path)
        return moe_fail(MOE_ERR_INVALID_ARG, "moe_runtime_create: record_trace_path is empty or too long");
    snprintf(rt->rec.path, sizeof rt->rec.path, "%s", path);
    return MOE_OK;
}

/* Records a validated layer call: layer 0 opens a pass of n_tokens tokens,
 * the others fill it in order. Anything else stops the recording for good
 * (a warning, once). */
void rt_record(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, uint32_t top_k, const int32_t *ids,
               const float *w) {
    rt_recorder *r = &rt->rec;
    moe_trace *t = &r->trace;
    if (layer == 0 && r->next == 0 && !t->n_layers) moe_trace_begin(t, "moerun", rt->model->n_layers, rt->max_experts, top_k);
    const bool in_order = layer == r->next && t->top_k == top_k && (layer == 0 || n_tokens == r->tokens) &&
                          rt->model->layers[layer].desc.n_experts <= MOE_TRACE_MAX_EXPERTS;
    if (!in_order || (layer == 0 && moe_trace_add_tokens(t, n_tokens, "run", &r->first) != MOE_OK)) {
        moe_log(&rt->log, MOE_LOG_WARN, "runtime: layers called out of order (layer %u, %u tokens, top_k %u); "
                "no routing trace will be written", layer, n_tokens, top_k);
        r->path[0] = '\0';
        moe_trace_free(t);
        return;
    }
    if (layer == 0) r->tokens = n_tokens;
    for (uint32_t i = 0; i < n_tokens; i++)
        for (uint32_t k = 0; k < top_k; k++) {
            const size_t at = ((r->first + i) * t->n_layers + layer) * t->top_k + k;
            t->ids[at] = (uint16_t)ids[(size_t)i * top_k + k];
            t->weights[at] = w[(size_t)i * top_k + k];
        }
    r->next = layer + 1 == rt->model->n_layers ? 0 : layer + 1;
}

void rt_record_close(moe_runtime_t *rt) {
    rt_recorder *r = &rt->rec;
    if (r->next != 0 && r->trace.n_tokens >= r->tokens) { /* a pass left unfinished */
        r->trace.n_tokens -= r->tokens;
        r->trace.seqs[r->trace.n_seqs - 1].n -= r->tokens;
    }
    if (r->path[0] && r->trace.n_tokens) {
        if (moe_trace_write(&r->trace, r->path) == MOE_OK)
            moe_log(&rt->log, MOE_LOG_INFO, "runtime: wrote the routing of %llu tokens to %s",
                    (unsigned long long)r->trace.n_tokens, r->path);
        else
            moe_log(&rt->log, MOE_LOG_ERROR, "runtime: %s", moe_last_error());
    }
    moe_trace_free(&r->trace);
}
