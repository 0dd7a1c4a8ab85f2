/* sample.h - choosing the next token from logits: greedy, or temperature
 * with top-k and top-p (nucleus) truncation, after a repetition penalty
 * over recent tokens (CTRL's rule, as transformers applies it: a seen
 * token's positive logit is divided by the penalty, a negative one
 * multiplied). Deterministic for a seed. */
#ifndef MOE_MODEL_SAMPLE_H
#define MOE_MODEL_SAMPLE_H

#include <stdint.h>

#include "common.h"

typedef struct moe_sampler_params {
    float temperature;        /* 0: greedy (the rest but the penalty is ignored) */
    uint32_t top_k;           /* 0: no limit */
    float top_p;              /* 1: no limit */
    float repeat_penalty;     /* 1: none */
    uint32_t repeat_last_n;   /* tokens of history the penalty looks at */
    uint64_t seed;
} moe_sampler_params;

moe_sampler_params moe_sampler_default_params(void); /* greedy, penalty 1, last 64, seed 0 */

typedef struct moe_sampler {
    moe_sampler_params p;
    moe_rng rng;
    uint32_t vocab;
    float *scratch;    /* [vocab] */
    struct moe_cand { float v; uint32_t i; } *cand; /* [vocab] */
    uint8_t *seen;     /* [vocab] */
} moe_sampler;

moe_status moe_sampler_init(moe_sampler *s, const moe_sampler_params *p, uint32_t vocab);
void moe_sampler_free(moe_sampler *s);

/* The next token from logits [vocab] (not modified), given the history
 * (n tokens, the penalty's last repeat_last_n of them). NaN logits are
 * never chosen; all-NaN logits give token 0. */
int32_t moe_sample(moe_sampler *s, const float *logits, const int32_t *history, uint32_t n);

#endif
