/* trace.h - expert-routing traces, moe-trace v1 (../shared/traces/README.md
 * and docs/scheduling.md): what the simulator replays and what the runtime
 * records. One token's routing is, per MoE layer, top_k expert ids and
 * (when the trace has them) the router's gate weights.
 *
 * The reader checks everything the format states and reports the first
 * problem as "file:line: what is wrong". */
#ifndef MOE_SCHED_TRACE_H
#define MOE_SCHED_TRACE_H

#include "common.h"

#define MOE_TRACE_MAX_EXPERTS 65535u /* ids are stored in 16 bits */
#define MOE_TRACE_MAX_LAYERS 4096u
#define MOE_TRACE_MAX_TOP_K 256u

typedef struct moe_trace_seq {
    char name[64];
    uint64_t first; /* index of its first token */
    uint64_t n;     /* tokens */
} moe_trace_seq;

typedef struct moe_trace {
    char model[64];
    uint32_t n_layers, n_experts, top_k;
    uint64_t n_tokens;
    uint32_t n_seqs;
    moe_trace_seq *seqs;
    uint16_t *ids;   /* [n_tokens][n_layers][top_k] */
    float *weights;  /* the same shape; NaN where the trace gave none */
    bool has_weights;/* some entry had a weight */
    uint64_t cap_tokens;
    uint32_t cap_seqs;
} moe_trace;

void moe_trace_init(moe_trace *t);
void moe_trace_free(moe_trace *t);

/* Reads a file and appends its sequences to t, which must be empty or hold
 * traces of the same layers, experts and top_k (else an error naming the
 * file's header line). On error t keeps what it had before the call. */
moe_status moe_trace_load(moe_trace *t, const char *path);

/* The same from text in memory; `name` stands for the file in messages. */
moe_status moe_trace_parse(moe_trace *t, const char *text, size_t len, const char *name);

/* Starts an empty trace for recording (model name, shape). */
void moe_trace_begin(moe_trace *t, const char *model, uint32_t n_layers, uint32_t n_experts, uint32_t top_k);

/* Appends n tokens to the last sequence (a first one named `seq_name` if
 * there is none), ids 0 and weights NaN until filled; returns the first
 * new token's index in *first. */
moe_status moe_trace_add_tokens(moe_trace *t, uint64_t n, const char *seq_name, uint64_t *first);

/* Writes t as moe-trace v1, atomically (path.tmp.PID, then rename). */
moe_status moe_trace_write(const moe_trace *t, const char *path);

/* The ids of token `tok` in layer `layer`: top_k of them. */
static inline const uint16_t *moe_trace_ids(const moe_trace *t, uint64_t tok, uint32_t layer) {
    return t->ids + (tok * t->n_layers + layer) * t->top_k;
}

#endif
