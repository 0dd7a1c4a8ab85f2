/* demo.c - the built-in random-weight demo model (see demo.h). */
#include "demo.h"

#include <math.h>
#include <stdlib.h>

#include "common.h"

#define MOE_DEMO_MAX_DIM (1u << 20)
#define MOE_DEMO_MAX_BYTES 8e9

struct moe_demo {
    moe_demo_config cfg;
    moe_model_t *model;
    float *embed;   /* [vocab, hidden] */
    float *router;  /* [layers, experts, hidden] */
    float *lm_head; /* [vocab, hidden] */
    void *experts;  /* [layers, experts, 3, hidden*inter] in cfg.dtype */
    float *scales;  /* int8 only: [layers, experts, inter + inter + hidden] per-row scales */
    /* forward workspace, grown on demand */
    uint32_t cap_tokens;
    float *h, *x, *y, *probs, *weights;
    int32_t *ids;
};

moe_demo_config moe_demo_default_config(void) {
    return (moe_demo_config){.n_layers = 4, .n_experts = 16, .top_k = 2, .hidden = 256, .inter = 512,
                             .vocab = 512, .dtype = MOE_DTYPE_BF16, .seed = 42};
}

static void fill_uniform(moe_rng *r, float *p, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = moe_rng_range(r, -scale, scale);
}

/* Weight i of a matrix whose values lie in [-a, a]; int8 stores the code of
 * a symmetric per-row scale a / 127 (every row of a matrix shares a). */
static void store(void *base, moe_dtype t, size_t i, float v, float a) {
    switch (t) {
    case MOE_DTYPE_F32: ((float *)base)[i] = v; break;
    case MOE_DTYPE_BF16: ((uint16_t *)base)[i] = moe_f32_to_bf16(v); break;
    case MOE_DTYPE_F16: ((uint16_t *)base)[i] = moe_f32_to_f16(v); break;
    case MOE_DTYPE_I8: ((int8_t *)base)[i] = (int8_t)lrintf(v * 127.0f / a); break;
    default: break;
    }
}

moe_status moe_demo_create(moe_demo **out, const moe_demo_config *cfg) {
    if (!out || !cfg) return moe_fail(MOE_ERR_INVALID_ARG, "demo: NULL argument");
    *out = NULL;
    const moe_demo_config c = *cfg;
    if (c.n_layers == 0 || c.n_experts == 0 || c.hidden == 0 || c.inter == 0 || c.vocab == 0 ||
        c.top_k == 0 || c.top_k > c.n_experts)
        return moe_fail(MOE_ERR_INVALID_ARG, "demo: every size must be positive and top_k <= experts "
                        "(layers %u, experts %u, top_k %u, hidden %u, inter %u, vocab %u)",
                        c.n_layers, c.n_experts, c.top_k, c.hidden, c.inter, c.vocab);
    const size_t esz = moe_dtype_size(c.dtype);
    if (esz == 0) return moe_fail(MOE_ERR_UNSUPPORTED, "demo: dtype %d is not supported", (int)c.dtype);
    if (c.hidden > MOE_DEMO_MAX_DIM || c.inter > MOE_DEMO_MAX_DIM || c.vocab > MOE_DEMO_MAX_DIM)
        return moe_fail(MOE_ERR_INVALID_ARG, "demo: hidden %u, inter %u and vocab %u must each be at most %u",
                        c.hidden, c.inter, c.vocab, MOE_DEMO_MAX_DIM);
    /* Every buffer counted in double, so no product can wrap; below the
     * limit each one fits in size_t. */
    const double expert_bytes = 3.0 * c.hidden * c.inter * (double)esz * c.n_experts * c.n_layers;
    const double other_bytes = 4.0 * c.hidden * (2.0 * c.vocab + (double)c.n_layers * c.n_experts);
    if (expert_bytes + other_bytes > MOE_DEMO_MAX_BYTES)
        return moe_fail(MOE_ERR_INVALID_ARG, "demo: %.1f GB of weights is larger than the demo allows (%.0f GB)",
                        (expert_bytes + other_bytes) / 1e9, MOE_DEMO_MAX_BYTES / 1e9);

    moe_demo *d = calloc(1, sizeof *d);
    if (!d) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "demo: allocation failed");
    d->cfg = c;
    const size_t per = (size_t)c.hidden * c.inter;
    d->embed = malloc((size_t)c.vocab * c.hidden * sizeof(float));
    d->lm_head = malloc((size_t)c.vocab * c.hidden * sizeof(float));
    d->router = malloc((size_t)c.n_layers * c.n_experts * c.hidden * sizeof(float));
    d->experts = malloc((size_t)c.n_layers * c.n_experts * 3 * per * esz);
    const size_t per_scales = 2 * (size_t)c.inter + c.hidden;
    if (c.dtype == MOE_DTYPE_I8) d->scales = malloc((size_t)c.n_layers * c.n_experts * per_scales * sizeof(float));
    moe_status st = MOE_OK;
    if (!d->embed || !d->lm_head || !d->router || !d->experts || (c.dtype == MOE_DTYPE_I8 && !d->scales)) {
        st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "demo: allocation of %.1f MB of weights failed", expert_bytes / 1e6);
        goto fail;
    }
    moe_rng r = {c.seed};
    fill_uniform(&r, d->embed, (size_t)c.vocab * c.hidden, 1.0f);
    fill_uniform(&r, d->lm_head, (size_t)c.vocab * c.hidden, sqrtf(3.0f / (float)c.hidden));
    fill_uniform(&r, d->router, (size_t)c.n_layers * c.n_experts * c.hidden, sqrtf(3.0f / (float)c.hidden));
    /* Uniform(-a, a) with a = sqrt(3/fan_in) keeps activations near unit variance. */
    const float a_in = sqrtf(3.0f / (float)c.hidden), a_out = sqrtf(3.0f / (float)c.inter);
    for (size_t m = 0; m < (size_t)c.n_layers * c.n_experts; m++) {
        for (size_t i = 0; i < 2 * per; i++)
            store(d->experts, c.dtype, m * 3 * per + i, moe_rng_range(&r, -a_in, a_in), a_in);
        for (size_t i = 2 * per; i < 3 * per; i++)
            store(d->experts, c.dtype, m * 3 * per + i, moe_rng_range(&r, -a_out, a_out), a_out);
        if (d->scales)
            for (size_t j = 0; j < per_scales; j++)
                d->scales[m * per_scales + j] = (j < 2 * (size_t)c.inter ? a_in : a_out) / 127.0f;
    }

    if ((st = moe_model_create(&d->model, c.n_layers)) != MOE_OK) goto fail;
    const moe_layer_desc desc = moe_layer_desc_init(c.n_experts, c.hidden, c.inter, c.dtype);
    for (uint32_t l = 0; l < c.n_layers; l++) {
        if ((st = moe_model_set_layer(d->model, l, &desc)) != MOE_OK) goto fail;
        for (uint32_t e = 0; e < c.n_experts; e++) {
            const char *base = (const char *)d->experts + ((size_t)l * c.n_experts + e) * 3 * per * esz;
            const float *sc = d->scales ? d->scales + ((size_t)l * c.n_experts + e) * per_scales : NULL;
            const moe_expert_weights w = {.gate = base, .up = base + per * esz, .down = base + 2 * per * esz,
                                          .gate_scale = sc, .up_scale = sc ? sc + c.inter : NULL,
                                          .down_scale = sc ? sc + 2 * (size_t)c.inter : NULL};
            if ((st = moe_model_set_expert(d->model, l, e, &w)) != MOE_OK) goto fail;
        }
    }
    *out = d;
    return MOE_OK;
fail:
    moe_demo_free(&d);
    return st;
}

static void free_workspace(moe_demo *d) {
    free(d->h);
    free(d->x);
    free(d->y);
    free(d->probs);
    free(d->weights);
    free(d->ids);
    d->h = d->x = d->y = d->probs = d->weights = NULL;
    d->ids = NULL;
    d->cap_tokens = 0;
}

void moe_demo_free(moe_demo **pd) {
    if (!pd || !*pd) return;
    moe_demo *d = *pd;
    *pd = NULL;
    moe_model_free(&d->model);
    free_workspace(d);
    free(d->embed);
    free(d->lm_head);
    free(d->router);
    free(d->experts);
    free(d->scales);
    free(d);
}

moe_model_t *moe_demo_model(const moe_demo *d) { return d->model; }

static void rmsnorm(float *o, const float *x, uint32_t n) {
    double ss = 0.0;
    for (uint32_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float s = (float)(1.0 / sqrt(ss / n + 1e-6));
    for (uint32_t i = 0; i < n; i++) o[i] = x[i] * s;
}

static void matvec(float *o, const float *w, const float *x, uint32_t rows, uint32_t cols) {
    for (uint32_t r = 0; r < rows; r++) {
        float acc = 0.0f;
        for (uint32_t c = 0; c < cols; c++) acc += w[(size_t)r * cols + c] * x[c];
        o[r] = acc;
    }
}

/* Softmax over the router logits, the top-k by probability (ties to the
 * lower id), renormalised to sum to one, as Mixtral does. */
static void route(const float *logits, uint32_t n_experts, uint32_t k, float *probs, int32_t *ids, float *w) {
    float mx = logits[0];
    for (uint32_t e = 1; e < n_experts; e++) mx = fmaxf(mx, logits[e]);
    double sum = 0.0;
    for (uint32_t e = 0; e < n_experts; e++) sum += probs[e] = expf(logits[e] - mx);
    for (uint32_t e = 0; e < n_experts; e++) probs[e] = (float)(probs[e] / sum);
    float total = 0.0f;
    for (uint32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (uint32_t e = 0; e < n_experts; e++) {
            bool taken = false;
            for (uint32_t q = 0; q < j; q++) taken |= ids[q] == (int32_t)e;
            if (!taken && (best < 0 || probs[e] > probs[best])) best = (int32_t)e;
        }
        ids[j] = best;
        w[j] = probs[best];
        total += w[j];
    }
    for (uint32_t j = 0; j < k; j++) w[j] /= total;
}

static moe_status reserve(moe_demo *d, uint32_t n) {
    if (n <= d->cap_tokens) return MOE_OK;
    free_workspace(d);
    const moe_demo_config *c = &d->cfg;
    d->h = malloc((size_t)n * c->hidden * sizeof(float));
    d->x = malloc((size_t)n * c->hidden * sizeof(float));
    d->y = malloc((size_t)n * c->hidden * sizeof(float));
    d->probs = malloc(2 * (size_t)c->n_experts * sizeof(float)); /* probs, then router logits */
    d->weights = malloc((size_t)n * c->top_k * sizeof(float));
    d->ids = malloc((size_t)n * c->top_k * sizeof(int32_t));
    if (!d->h || !d->x || !d->y || !d->probs || !d->weights || !d->ids) {
        free_workspace(d);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "demo: workspace allocation failed");
    }
    d->cap_tokens = n;
    return MOE_OK;
}

/* The sinusoidal position embedding of "Attention is all you need". */
static void add_position(float *h, uint32_t pos, uint32_t dim) {
    for (uint32_t i = 0; i + 1 < dim; i += 2) {
        const double angle = pos / pow(10000.0, (double)i / dim);
        h[i] += (float)sin(angle);
        h[i + 1] += (float)cos(angle);
    }
}

moe_status moe_demo_forward(moe_demo *d, moe_runtime_t *rt, const int32_t *tokens, uint32_t n, uint32_t pos0,
                            float *logits) {
    const moe_demo_config *c = &d->cfg;
    const uint32_t H = c->hidden, K = c->top_k;
    moe_status st = reserve(d, n);
    if (st != MOE_OK) return st;
    for (uint32_t t = 0; t < n; t++) {
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= c->vocab)
            return moe_fail(MOE_ERR_INVALID_ARG, "demo: token %d out of range (vocab %u)", tokens[t], c->vocab);
        memcpy(d->h + (size_t)t * H, d->embed + (size_t)tokens[t] * H, H * sizeof(float));
        add_position(d->h + (size_t)t * H, pos0 + t, H);
    }
    const uint32_t ahead = moe_runtime_lookahead(rt);
    float *rl = d->probs + c->n_experts; /* router logits after the probs */
    for (uint32_t l = 0; l < c->n_layers; l++) {
        for (uint32_t t = 0; t < n; t++) rmsnorm(d->x + (size_t)t * H, d->h + (size_t)t * H, H);
        /* Router lookahead, as HybriMoE and model/llm.c do: the next
         * layers' routers on this layer's input predict their routing. */
        for (uint32_t nl = l + 1; nl <= l + ahead && nl < c->n_layers; nl++) {
            const float *router = d->router + (size_t)nl * c->n_experts * H;
            for (uint32_t t = 0; t < n; t++) {
                matvec(rl, router, d->x + (size_t)t * H, c->n_experts, H);
                route(rl, c->n_experts, K, d->probs, d->ids + (size_t)t * K, d->weights + (size_t)t * K);
            }
            if ((st = moe_runtime_predict(rt, nl, n, K, d->ids)) != MOE_OK) return st;
        }
        const float *router = d->router + (size_t)l * c->n_experts * H;
        for (uint32_t t = 0; t < n; t++) {
            matvec(rl, router, d->x + (size_t)t * H, c->n_experts, H);
            route(rl, c->n_experts, K, d->probs, d->ids + (size_t)t * K, d->weights + (size_t)t * K);
        }
        if ((st = moe_layer_forward(rt, l, n, d->x, K, d->ids, d->weights, d->y)) != MOE_OK) return st;
        for (size_t i = 0; i < (size_t)n * H; i++) d->h[i] += d->y[i];
    }
    for (uint32_t t = 0; t < n; t++) {
        rmsnorm(d->x + (size_t)t * H, d->h + (size_t)t * H, H);
        matvec(logits + (size_t)t * c->vocab, d->lm_head, d->x + (size_t)t * H, c->vocab, H);
    }
    return MOE_OK;
}

int32_t moe_demo_argmax(const float *logits, uint32_t vocab) {
    uint32_t best = 0;
    for (uint32_t i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return (int32_t)best;
}

uint32_t moe_demo_tokenize(const char *prompt, uint32_t vocab, int32_t *out, uint32_t cap) {
    uint32_t n = 0;
    for (const unsigned char *p = (const unsigned char *)prompt; *p && n < cap; p++) out[n++] = (int32_t)(*p % vocab);
    return n;
}
