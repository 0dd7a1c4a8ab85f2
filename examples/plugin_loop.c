/* plugin_loop.c - a host program with its own tiny transformer loop that
 * hands its MoE layers to moerun through the plugin API (docs/plugin.md).
 *
 * The host owns everything but the routed experts: embeddings, norms, a
 * causal attention (a running mean of value projections, to stay short),
 * each layer's router matmul, a shared expert, the LM head. It registers
 * the routed experts and routers once; per layer it
 *   1. hints moerun with the layer's input (router lookahead for prefetch),
 *   2. computes its router logits and either hands them to moerun
 *      (moe_layer_forward_logits, synchronous; even positions) or routes
 *      itself and submits the routed experts (moe_layer_forward_submit;
 *      odd positions), computing the shared expert while they run,
 *   3. waits, and adds both to the residual stream.
 * With --check it also computes every routed MoE layer itself, plainly,
 * and exits 1 if moerun's result differs.
 *
 *   plugin_loop [--check] [--device cpu|sim] [--profile FILE] [-n TOKENS]
 * Uses only include/moerun.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moerun.h"

enum { VOCAB = 96, H = 64, I = 96, LAYERS = 4, EXPERTS = 8, TOP_K = 2, SHARED_I = 64, MAX_T = 64 };

typedef struct model {
    float embed[VOCAB][H], head[VOCAB][H];
    float wv[LAYERS][H][H], wo[LAYERS][H][H];
    float router[LAYERS][EXPERTS][H];
    float gate[LAYERS][EXPERTS][I][H], up[LAYERS][EXPERTS][I][H], down[LAYERS][EXPERTS][H][I];
    float sgate[LAYERS][SHARED_I][H], sup[LAYERS][SHARED_I][H], sdown[LAYERS][H][SHARED_I];
    float vsum[LAYERS][H]; /* the attention's running sum of values ("KV cache") */
} model;

static unsigned long long rng = 88172645463325252ull;
static float urand(float scale) { /* xorshift64, uniform in [-scale, scale) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return scale * (2.0f * (float)(rng >> 40) / (float)(1ull << 24) - 1.0f);
}
static void fill(float *p, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = urand(scale);
}

static void matvec(float *y, const float *w, const float *x, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++) s += (double)w[(size_t)r * (size_t)cols + (size_t)c] * x[c];
        y[r] = (float)s;
    }
}
static void rmsnorm(float *y, const float *x) {
    double ss = 0;
    for (int i = 0; i < H; i++) ss += (double)x[i] * x[i];
    const float k = (float)(1.0 / sqrt(ss / H + 1e-6));
    for (int i = 0; i < H; i++) y[i] = x[i] * k;
}
static float silu(float v) { return v / (1.0f + expf(-v)); }

/* A SwiGLU MLP the plain way: y = down(silu(gate x) * up x). */
static void mlp(float *y, const float *gate, const float *up, const float *down, int inter, const float *x) {
    float g[I > SHARED_I ? I : SHARED_I], u[I > SHARED_I ? I : SHARED_I];
    matvec(g, gate, x, inter, H);
    matvec(u, up, x, inter, H);
    for (int j = 0; j < inter; j++) g[j] = silu(g[j]) * u[j];
    matvec(y, down, g, H, inter);
}

/* The host's own MoE layer for --check: softmax, top-2, renormalised. */
static void moe_plain(const model *m, int l, const float *x, const float *logits, float *y) {
    float p[EXPERTS], mx = logits[0];
    for (int e = 1; e < EXPERTS; e++) mx = fmaxf(mx, logits[e]);
    for (int e = 0; e < EXPERTS; e++) p[e] = expf(logits[e] - mx);
    int a = 0, b = -1;
    for (int e = 1; e < EXPERTS; e++) a = p[e] > p[a] ? e : a;
    for (int e = 0; e < EXPERTS; e++) b = e != a && (b < 0 || p[e] > p[b]) ? e : b;
    const float wa = p[a] / (p[a] + p[b]), wb = p[b] / (p[a] + p[b]);
    float ya[H], yb[H];
    mlp(ya, &m->gate[l][a][0][0], &m->up[l][a][0][0], &m->down[l][a][0][0], I, x);
    mlp(yb, &m->gate[l][b][0][0], &m->up[l][b][0][0], &m->down[l][b][0][0], I, x);
    for (int i = 0; i < H; i++) y[i] = wa * ya[i] + wb * yb[i];
}

#define TRY(call)                                                                   \
    do {                                                                            \
        moe_status s_ = (call);                                                     \
        if (s_ != MOE_OK) {                                                         \
            fprintf(stderr, "plugin_loop: %s: %s\n", #call, moe_last_error());      \
            exit(2);                                                                \
        }                                                                           \
    } while (0)

int main(int argc, char **argv) {
    int check = 0, n_gen = 12;
    moe_runtime_params rp = moe_runtime_default_params();
    rp.profile_path = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check")) check = 1;
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            const char *d = argv[++i];
            rp.device = !strcmp(d, "sim") ? MOE_DEVICE_SIM : MOE_DEVICE_CPU;
        } else if (!strcmp(argv[i], "--profile") && i + 1 < argc) {
            rp.profile_path = argv[++i];
            rp.profile_any_host = 1;
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            n_gen = atoi(argv[++i]);
            if (n_gen < 1 || n_gen > MAX_T - 8) n_gen = 12;
        } else {
            fprintf(stderr, "usage: plugin_loop [--check] [--device cpu|sim] [--profile FILE] [-n TOKENS]\n");
            return 2;
        }
    }
    model *m = calloc(1, sizeof *m);
    if (!m) return 2;
    fill(&m->embed[0][0], sizeof m->embed / sizeof(float), 1.0f);
    fill(&m->head[0][0], sizeof m->head / sizeof(float), 0.2f);
    fill(&m->wv[0][0][0], sizeof m->wv / sizeof(float), 0.2f);
    fill(&m->wo[0][0][0], sizeof m->wo / sizeof(float), 0.2f);
    fill(&m->router[0][0][0], sizeof m->router / sizeof(float), 0.3f);
    fill(&m->gate[0][0][0][0], sizeof m->gate / sizeof(float), 0.15f);
    fill(&m->up[0][0][0][0], sizeof m->up / sizeof(float), 0.15f);
    fill(&m->down[0][0][0][0], sizeof m->down / sizeof(float), 0.12f);
    fill(&m->sgate[0][0][0], sizeof m->sgate / sizeof(float), 0.15f);
    fill(&m->sup[0][0][0], sizeof m->sup / sizeof(float), 0.15f);
    fill(&m->sdown[0][0][0], sizeof m->sdown / sizeof(float), 0.12f);

    /* Register the routed experts and the routers once. */
    moe_model_t *mm = NULL;
    TRY(moe_model_create(&mm, LAYERS));
    const moe_layer_desc desc = moe_layer_desc_init(EXPERTS, H, I, MOE_DTYPE_F32);
    const moe_routing routing = moe_routing_defaults(TOP_K); /* softmax, top-2, renormalised: as moe_plain */
    for (int l = 0; l < LAYERS; l++) {
        TRY(moe_model_set_layer(mm, (uint32_t)l, &desc));
        TRY(moe_model_set_router(mm, (uint32_t)l, &routing, &m->router[l][0][0], MOE_DTYPE_F32));
        for (int e = 0; e < EXPERTS; e++) {
            const moe_expert_weights w = {&m->gate[l][e][0][0], &m->up[l][e][0][0], &m->down[l][e][0][0], NULL, NULL,
                                          NULL};
            TRY(moe_model_set_expert(mm, (uint32_t)l, (uint32_t)e, &w));
        }
    }
    moe_runtime_t *rt = NULL;
    TRY(moe_runtime_create(&rt, mm, &rp));
    moe_model_free(&mm); /* the runtime holds its own reference */

    /* Generate greedily, one token at a time. */
    int tokens[MAX_T] = {3, 14, 15, 92 % VOCAB};
    int n = 4, worst_layer = -1;
    const int total = n + n_gen;
    double worst = 0.0;
    printf("plugin_loop: %d layers x %d experts (top-%d) on device %s, policy %s, lookahead %u\n", LAYERS, EXPERTS,
           TOP_K, moe_device_name(moe_runtime_device(rt)), moe_runtime_policy(rt), moe_runtime_lookahead(rt));
    float h[H], x[H], v[H], a[H], logits[EXPERTS], routed[H], shared[H], plain[H], out_logits[VOCAB];
    /* routed, x, ids and w stay untouched while a submitted forward is in flight. */
    for (int pos = 0; n < total; pos++) {
        memcpy(h, m->embed[tokens[pos]], sizeof h);
        for (int l = 0; l < LAYERS; l++) {
            /* Attention (the host's): a causal running mean of values. */
            rmsnorm(x, h);
            matvec(v, &m->wv[l][0][0], x, H, H);
            for (int i = 0; i < H; i++) m->vsum[l][i] += v[i], v[i] = m->vsum[l][i] / (float)(pos + 1);
            matvec(a, &m->wo[l][0][0], v, H, H);
            for (int i = 0; i < H; i++) h[i] += a[i];
            /* MoE: lookahead, the router, routed experts on moerun while
             * the host computes the shared expert. */
            rmsnorm(x, h);
            TRY(moe_hint_next(rt, (uint32_t)l, 1, x));
            matvec(logits, &m->router[l][0][0], x, EXPERTS, H);
            if (pos % 2 == 0) {
                /* moerun routes from the host's logits by the registered rule. */
                TRY(moe_layer_forward_logits(rt, (uint32_t)l, 1, x, logits, routed));
                mlp(shared, &m->sgate[l][0][0], &m->sup[l][0][0], &m->sdown[l][0][0], SHARED_I, x);
            } else {
                /* The host routes itself (softmax, top-2, renormalised) and
                 * computes the shared expert while moerun runs the routed ones. */
                float p[EXPERTS], mx = logits[0], w[TOP_K];
                int32_t ids[TOP_K];
                for (int e = 1; e < EXPERTS; e++) mx = fmaxf(mx, logits[e]);
                for (int e = 0; e < EXPERTS; e++) p[e] = expf(logits[e] - mx);
                ids[0] = 0;
                for (int e = 1; e < EXPERTS; e++) ids[0] = p[e] > p[ids[0]] ? e : ids[0];
                ids[1] = ids[0] ? 0 : 1;
                for (int e = 0; e < EXPERTS; e++) ids[1] = e != ids[0] && p[e] > p[ids[1]] ? e : ids[1];
                w[0] = p[ids[0]] / (p[ids[0]] + p[ids[1]]), w[1] = p[ids[1]] / (p[ids[0]] + p[ids[1]]);
                TRY(moe_layer_forward_submit(rt, (uint32_t)l, 1, x, TOP_K, ids, w, routed));
                mlp(shared, &m->sgate[l][0][0], &m->sup[l][0][0], &m->sdown[l][0][0], SHARED_I, x);
                TRY(moe_layer_wait(rt));
            }
            if (check) {
                moe_plain(m, l, x, logits, plain);
                for (int i = 0; i < H; i++) {
                    const double d = fabs((double)plain[i] - routed[i]);
                    if (d > worst) worst = d, worst_layer = l;
                }
            }
            for (int i = 0; i < H; i++) h[i] += routed[i] + shared[i];
        }
        if (pos + 1 < n) continue; /* still reading the prompt */
        rmsnorm(x, h);
        matvec(out_logits, &m->head[0][0], x, VOCAB, H);
        int best = 0;
        for (int t = 1; t < VOCAB; t++) best = out_logits[t] > out_logits[best] ? t : best;
        tokens[n++] = best;
    }
    printf("tokens:");
    for (int t = 0; t < n; t++) printf(" %d", tokens[t]);
    printf("\n");
    moe_stats st;
    TRY(moe_runtime_get_stats(rt, &st));
    printf("moerun: %llu layer calls, %llu experts on the CPU and %llu on the GPU; lookahead pairs %llu, hits %llu\n",
           (unsigned long long)st.layer_calls, (unsigned long long)st.expert_calls_cpu,
           (unsigned long long)st.expert_calls_gpu, (unsigned long long)st.lookahead_pairs[0],
           (unsigned long long)st.lookahead_hits[0]);
    moe_runtime_free(&rt);
    free(m);
    if (check) printf("check: largest difference from the plain computation %.3g (layer %d)\n", worst, worst_layer);
    if (worst > 1e-4) {
        fprintf(stderr, "plugin_loop: moerun's MoE output differs from the plain computation by %.3g\n", worst);
        return 1;
    }
    return 0;
}
