/* moe-sim - replays expert-routing traces (moe-trace v1) through moerun's
 * cache and scheduling code on a virtual clock (docs/scheduling.md).
 *
 *   moe-sim --cache-only --cache-per-layer C --policy lru|lfu|belady --trace FILE... [--json]
 *   moe-sim --cache-only --cache-per-layer C --compare --trace FILE... [--json]
 *
 * Built so far: the pure cache mode. The timed simulation of the
 * scheduling policies (--mode decode|prefill, --profile, --gpu-budget)
 * arrives with the scheduler; asking for it says so. */
#define _POSIX_C_SOURCE 200809L /* strtok_r */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "sim.h"

static void usage(FILE *f) {
    fprintf(f, "usage: moe-sim --cache-only --cache-per-layer C (--policy lru|lfu|belady|score | --compare)\n"
               "               --trace FILE [--trace FILE ...] [--json]\n"
               "\n"
               "Replays the traces' tokens one at a time, sequences back to back (files in the order\n"
               "given), through one cache of C experts per layer, empty at the start: a token's experts\n"
               "are hits if resident, then all become resident, evicting only experts it does not need\n"
               "(LFU counts uses since the start, ties to the least recent; Belady knows the future;\n"
               "score is HybriMoE's MRS: S = a * router weight + (1 - a) * S, --score-alpha a, default 0.5).\n"
               "Prints the fraction of needed experts that were resident.\n"
               "  --json      one JSON object per policy: policy, mode, cache_per_layer, hit_rate,\n"
               "              needed, hits, experts_loaded\n"
               "  --synthetic k=v,...   instead of traces: Zipf-skewed routing with temporal locality\n"
               "              (layers=32,experts=8,top_k=2,tokens=10000,zipf=1,locality=0.3,seed=1 by default)\n"
               "  --write-trace FILE    write the synthetic trace as moe-trace v1\n"
               "The timed simulation of scheduling policies is not built yet (the scheduler's issue).\n");
}

/* "layers=32,experts=8,top_k=2,tokens=10000,zipf=1,locality=0.3,seed=1", any subset. */
static bool parse_synth(const char *s, moe_synth_params *p) {
    char buf[256];
    if (strlen(s) >= sizeof buf) return false;
    strcpy(buf, s);
    char *save = NULL;
    for (char *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '='), *end;
        if (!eq) return false;
        *eq = '\0';
        const double v = strtod(eq + 1, &end);
        if (*end || eq[1] == '\0' || !(v >= 0)) return false;
        if (!strcmp(kv, "layers")) p->n_layers = (uint32_t)v;
        else if (!strcmp(kv, "experts")) p->n_experts = (uint32_t)v;
        else if (!strcmp(kv, "top_k")) p->top_k = (uint32_t)v;
        else if (!strcmp(kv, "tokens")) p->n_tokens = (uint64_t)v;
        else if (!strcmp(kv, "zipf")) p->zipf = v;
        else if (!strcmp(kv, "locality")) p->locality = v;
        else if (!strcmp(kv, "seed")) p->seed = (uint64_t)v;
        else return false;
        if (strcmp(kv, "zipf") && strcmp(kv, "locality") && (v != floor(v) || v > 1e12)) return false;
    }
    return true;
}

static int fail(const char *msg, const char *arg) {
    fprintf(stderr, "moe-sim: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    return 2;
}

int main(int argc, char **argv) {
    enum { O_CACHE_ONLY = 256, O_PER_LAYER, O_POLICY, O_COMPARE, O_TRACE, O_JSON, O_MODE, O_ALPHA, O_SYNTH, O_WRITE };
    static const struct option opts[] = {{"cache-only", 0, 0, O_CACHE_ONLY}, {"cache-per-layer", 1, 0, O_PER_LAYER},
                                         {"policy", 1, 0, O_POLICY},         {"compare", 0, 0, O_COMPARE},
                                         {"trace", 1, 0, O_TRACE},           {"json", 0, 0, O_JSON},
                                         {"mode", 1, 0, O_MODE},             {"score-alpha", 1, 0, O_ALPHA},
                                         {"synthetic", 1, 0, O_SYNTH},       {"write-trace", 1, 0, O_WRITE},
                                         {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    static const char *const names[] = {"lru", "lfu", "belady", "score"};
    bool cache_only = false, compare = false, json = false;
    long per_layer = 0;
    const char *synth = NULL, *write_to = NULL;
    double alpha = 0.5;
    int policy = -1;
    const char *traces[64];
    int n_traces = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case O_CACHE_ONLY: cache_only = true; break;
        case O_PER_LAYER:
            per_layer = strtol(optarg, &end, 10);
            if (*end || per_layer < 1 || per_layer > 65535) return fail("--cache-per-layer: expected 1..65535", optarg);
            break;
        case O_POLICY:
            for (int i = 0; i < 4; i++)
                if (!strcmp(optarg, names[i])) policy = i;
            if (policy < 0) return fail("--policy: expected lru, lfu, belady or score in the cache-only mode", optarg);
            break;
        case O_COMPARE: compare = true; break;
        case O_ALPHA:
            alpha = strtod(optarg, &end);
            if (*end || !(alpha > 0 && alpha <= 1)) return fail("--score-alpha: expected a weight in (0, 1]", optarg);
            break;
        case O_TRACE:
            if (n_traces == 64) return fail("at most 64 traces", NULL);
            traces[n_traces++] = optarg;
            break;
        case O_JSON: json = true; break;
        case O_SYNTH: synth = optarg; break;
        case O_WRITE: write_to = optarg; break;
        case O_MODE:
            return fail("--mode: the timed simulation of scheduling policies is not built yet; --cache-only is", NULL);
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) return fail("unexpected argument", argv[optind]);
    moe_trace t;
    moe_trace_init(&t);
    if (synth) {
        if (n_traces) return fail("give --trace or --synthetic, not both", NULL);
        moe_synth_params sp = {.n_layers = 32, .n_experts = 8, .top_k = 2, .n_tokens = 10000, .zipf = 1.0,
                               .locality = 0.3, .seed = 1};
        if (!parse_synth(synth, &sp)) return fail("--synthetic: expected key=value,... with keys layers, experts, "
                                                  "top_k, tokens, zipf, locality, seed", synth);
        if (moe_sim_synthetic(&t, &sp) != MOE_OK) return fail(moe_last_error(), NULL);
        if (write_to && moe_trace_write(&t, write_to) != MOE_OK) {
            moe_trace_free(&t);
            return fail(moe_last_error(), NULL);
        }
        if (!cache_only) {
            moe_trace_free(&t);
            return write_to ? 0 : fail("--synthetic: nothing to do (add --write-trace FILE or --cache-only)", NULL);
        }
    }
    if (!cache_only) return fail("only --cache-only is built so far (see --help)", NULL);
    if (!n_traces && !synth) return fail("no --trace FILE or --synthetic", NULL);
    if (!per_layer) return fail("no --cache-per-layer C", NULL);
    if (compare == (policy >= 0)) return fail("give either --policy NAME or --compare", NULL);

    for (int i = 0; i < n_traces; i++)
        if (moe_trace_load(&t, traces[i]) != MOE_OK) {
            fprintf(stderr, "moe-sim: %s\n", moe_last_error());
            moe_trace_free(&t);
            return 1;
        }
    if (!json)
        printf("%d trace(s)%s: %llu tokens in %u sequences, %u layers x %u experts, top-%u; %ld experts per layer\n",
               n_traces, synth ? " (synthetic)" : "", (unsigned long long)t.n_tokens, t.n_seqs, t.n_layers, t.n_experts, t.top_k, per_layer);
    int rc = 0;
    for (int p = 0; p < 4 && rc == 0; p++) {
        if (!compare && p != policy) continue;
        moe_cache_sim r;
        const double t0 = moe_now();
        if (moe_sim_cache_only(&t, (uint32_t)per_layer, (moe_cache_policy)p, alpha, &r) != MOE_OK) {
            fprintf(stderr, "moe-sim: %s\n", moe_last_error());
            rc = 1;
            break;
        }
        if (json)
            printf("{\"policy\":\"%s\",\"mode\":\"cache-only\",\"cache_per_layer\":%ld,\"hit_rate\":%.6f,"
                   "\"needed\":%llu,\"hits\":%llu,\"experts_loaded\":%llu}\n",
                   names[p], per_layer, r.hit_rate, (unsigned long long)r.needed, (unsigned long long)r.hits,
                   (unsigned long long)r.loads);
        else
            printf("%-7s hit rate %.4f (%llu of %llu), %llu experts loaded, %.2f s\n", names[p], r.hit_rate,
                   (unsigned long long)r.hits, (unsigned long long)r.needed, (unsigned long long)r.loads,
                   moe_now() - t0);
    }
    moe_trace_free(&t);
    return rc;
}
