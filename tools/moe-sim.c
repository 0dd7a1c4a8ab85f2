/* moe-sim - replays expert-routing traces (moe-trace v1) through moerun's
 * cache and scheduling code on a virtual clock (docs/scheduling.md).
 *
 *   moe-sim --trace FILE... --profile FILE (--model CONFIG | --shape HxI) --policy NAME|--compare
 *           --gpu-budget FRACTION|BYTES --mode decode|prefill [--batch N] [--prefill-chunk T] [--json]
 *   moe-sim --cache-only --cache-per-layer C --policy lru|lfu|belady|score --trace FILE... [--json]
 *   moe-sim --cache-only --cache-per-layer C --compare --trace FILE... [--json] */
#define _POSIX_C_SOURCE 200809L /* strtok_r */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_config.h"
#include "profile.h"
#include "tracesim.h"

/* The timed simulation's settings, from the command line. */
typedef struct timed_opts {
    const char *profile;
    uint32_t hidden, inter;
    moe_dtype dtype;
    double budget;       /* <= 1: a fraction of all routed experts; else bytes */
    moe_sim_mode mode;
    uint32_t batch, chunk, depth;
    double dense_experts;
    double accuracy[MOE_SCHED_MAX_DEPTH];
    uint64_t seed;
    bool cold, ablation;
    bool dtype_set, dense_set; /* given on the command line: --model does not override them */
} timed_opts;

/* --model CONFIG: the routing must fit the model; its expert shape, dtype
 * and dense work fill in what the command line left out. */
static bool apply_model(const char *path, const moe_trace *t, timed_opts *o) {
    moe_hf_config c;
    if (moe_hf_config_load(&c, path) != MOE_OK ||
        moe_hf_config_check_routing(&c, t->n_layers, t->n_experts, t->top_k, "the trace") != MOE_OK) {
        fprintf(stderr, "moe-sim: %s\n", moe_last_error());
        return false;
    }
    if (!o->hidden) o->hidden = c.hidden_size, o->inter = c.moe_inter;
    if (!o->dense_set) o->dense_experts = moe_hf_config_dense_experts(&c);
    if (!o->dtype_set) {
        static const struct { const char *torch; moe_dtype d; } map[] = {
            {"bfloat16", MOE_DTYPE_BF16}, {"float16", MOE_DTYPE_F16}, {"float32", MOE_DTYPE_F32}};
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (!strcmp(c.torch_dtype, map[i].torch)) o->dtype = map[i].d;
    }
    return true;
}

static void usage(FILE *f) {
    fprintf(f, "usage: moe-sim --trace FILE... --profile FILE --shape HxI (--policy NAME | --compare)\n"
               "               --gpu-budget FRACTION|BYTES --mode decode|prefill [options]\n"
               "\n"
               "Runs the traces through moerun's scheduler on a virtual clock, with the costs of a\n"
               "machine profile (e.g. profiles/machines/ref-rtx4090-pcie4-2s-xeon8480.txt), and prints\n"
               "the time per decode token (or of the prefill), the GPU hit rate, the bytes copied and\n"
               "how busy the CPU and GPU were. Policies: static-cpu, static-hot, layer-split, gpu-lru,\n"
               "gpu-lfu, fiddler, hybrimoe, moerun, oracle; --compare runs them all, with ratios to\n"
               "static-hot and to oracle.\n"
               "  --model CONFIG        the model's config.json: the trace must fit it; it gives the\n"
               "                        shape, dtype and dense work unless those are given\n"
               "  --shape HxI           a routed expert's hidden x intermediate size (e.g. 2048x1408)\n"
               "  --dtype T             its weights' type (bf16)\n"
               "  --gpu-budget B        GPU expert cache: a fraction (0..1] of all routed experts, or bytes\n"
               "  --batch N             decode: consecutive trace tokens per step (1)\n"
               "  --prefill-chunk T     prefill: tokens per chunk, within a sequence (512)\n"
               "  --dense-experts X     a layer's dense part (attention, shared experts) costs X routed\n"
               "                        experts' GPU time (3.6, DeepSeek-V2-Lite's MoE layers)\n"
               "  --accuracy a1,a2,..   predictor accuracy at 1, 2, ... layers ahead (0.85,0.7,0.6,0.5)\n"
               "  --depth D             prefetch lookahead for hybrimoe/moerun/oracle (1/3/4)\n"
               "  --seed N, --cold      predictor seed; start with an empty cache\n"
               "  --ablation            moerun with each of its parts turned off in turn\n"
               "  --json                one JSON object per policy\n"
               "\n"
               "       moe-sim --cache-only --cache-per-layer C (--policy lru|lfu|belady|score | --compare)\n"
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
               );
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

typedef struct timed_row {
    const char *name;
    moe_sim_result r;
} timed_row;

static void print_row(const timed_opts *o, const char *name, const moe_sim_result *r, double budget_frac,
                      uint64_t budget_bytes, const moe_sim_result *hot, const moe_sim_result *orc, bool json) {
    const bool dec = o->mode == MOE_SIM_DECODE;
    const double ms = dec ? r->step_us / 1e3 : r->total_us / 1e3;
    if (json) {
        printf("{\"policy\":\"%s\",\"mode\":\"%s\",\"budget\":%.4f,\"budget_bytes\":%llu,\"%s\":%.6f,"
               "\"tokens_per_s\":%.2f,\"hit_rate\":%.6f,\"bytes_copied\":%llu,\"bytes_prefetched\":%llu,"
               "\"cpu_busy\":%.4f,\"gpu_busy\":%.4f,\"batch\":%u,\"prefill_chunk\":%u,\"steps\":%llu,"
               "\"tokens\":%llu,\"vs_static_hot\":%.4f,\"vs_oracle\":%.4f,\"sim_seconds\":%.3f}\n",
               name, dec ? "decode" : "prefill", budget_frac, (unsigned long long)budget_bytes,
               dec ? "time_per_token_ms" : "prefill_ms", ms, r->tokens_per_s, r->hit_rate,
               (unsigned long long)(r->bytes_copied + r->bytes_prefetched), (unsigned long long)r->bytes_prefetched,
               r->cpu_busy, r->gpu_busy, dec ? o->batch : 0, dec ? 0 : o->chunk, (unsigned long long)r->steps,
               (unsigned long long)r->tokens, hot ? hot->total_us / r->total_us : 0.0,
               orc ? r->total_us / orc->total_us : 0.0, r->wall_s);
        return;
    }
    printf("%-22s %12.3f %9.0f %8.3f %9.2f %9.1f %6.2f %6.2f", name, ms, r->tokens_per_s, r->hit_rate,
           (double)(r->bytes_copied + r->bytes_prefetched) / 1e9, (double)r->bytes_prefetched / 1e9, r->cpu_busy,
           r->gpu_busy);
    if (hot) printf(" %8.3f", hot->total_us / r->total_us);
    if (orc) printf(" %8.3f", r->total_us / orc->total_us);
    printf("  %5.1fs\n", r->wall_s);
}

static int run_timed(const moe_trace *t, const char *const *traces, int n_traces, const timed_opts *o,
                     const char *policy, bool json) {
    if (!o->profile) return fail("no --profile FILE (a machine profile with GPU figures)", NULL);
    if (!o->hidden) return fail("no --shape HxI or --model CONFIG", NULL);
    if (o->budget < 0) return fail("no --gpu-budget FRACTION|BYTES", NULL);
    moe_profile prof;
    moe_profile_init(&prof);
    if (moe_profile_load(&prof, o->profile) != MOE_OK) return fail(moe_last_error(), NULL);
    if (!prof.n_gpus) {
        moe_profile_clear(&prof);
        return fail("the profile has no GPU; the scheduler's policies need one", o->profile);
    }
    const uint64_t eb = 3ull * o->hidden * o->inter * moe_dtype_size(o->dtype);
    const double all = (double)eb * t->n_layers * t->n_experts;
    const uint64_t budget = o->budget <= 1 ? (uint64_t)(o->budget * all) : (uint64_t)o->budget;
    const double frac = (double)budget / all;
    moe_sim_params sp = {.sched = {.profile = &prof, .hidden = o->hidden, .inter = o->inter, .dtype = o->dtype,
                                   .gpu = 0, .node = 0, .expert_bytes = eb, .budget_bytes = budget, .depth = o->depth},
                         .mode = o->mode, .batch = o->batch, .chunk = o->chunk, .dense_experts = o->dense_experts,
                         .seed = o->seed, .cold = o->cold};
    memcpy(sp.accuracy, o->accuracy, sizeof sp.accuracy);
    const bool dec = o->mode == MOE_SIM_DECODE;
    if (!json) {
        printf("%d trace(s): %llu tokens in %u sequences, %u layers x %u experts, top-%u\n", n_traces,
               (unsigned long long)t->n_tokens, t->n_seqs, t->n_layers, t->n_experts, t->top_k);
        printf("%s; experts %ux%u %s (%.1f MB); GPU budget %.1f%% (%.2f GB); %s",
               o->profile, o->hidden, o->inter, moe_dtype_name(o->dtype), (double)eb / 1e6, 100 * frac,
               (double)budget / 1e9, dec ? "decode" : "prefill");
        if (dec) printf(", batch %u", o->batch);
        else printf(", chunks of %u tokens", o->chunk);
        printf("; dense work %.2f experts per layer\n", o->dense_experts);
        printf("%-22s %12s %9s %8s %9s %9s %6s %6s %8s %8s\n", "policy", dec ? "ms/token" : "prefill ms", "tok/s",
               "hit", "GB moved", "GB ahead", "cpu", "gpu", policy ? "" : "/hot", policy ? "" : "/oracle");
    }
    (void)traces;
    int rc = 0;
    timed_row rows[MOE_POLICY_COUNT_ + 4];
    uint32_t n = 0;
    if (policy || o->ablation) {
        moe_policy_id id = MOE_POLICY_MOERUN;
        if (policy && moe_policy_lookup(policy, &id) != MOE_OK) rc = fail(moe_last_error(), NULL);
        const char *names[] = {policy ? policy : "moerun", "moerun no-refine", "moerun no-prefetch",
                               "moerun no-value-cache", "moerun none of them"};
        for (int v = 0; rc == 0 && v < (o->ablation ? 5 : 1); v++) {
            sp.sched.policy = id;
            sp.sched.no_refine = v == 1 || v == 4;
            sp.sched.no_prefetch = v == 2 || v == 4;
            sp.sched.no_value_cache = v == 3 || v == 4;
            moe_sim_result r;
            if (moe_sim_timed(t, &sp, &r) != MOE_OK) {
                rc = fail(moe_last_error(), NULL);
                break;
            }
            print_row(o, names[v], &r, frac, budget, NULL, NULL, json);
        }
        moe_profile_clear(&prof);
        return rc;
    }
    /* --compare: every policy, then the ratios. */
    for (int p = 0; p < MOE_POLICY_COUNT_; p++) {
        sp.sched.policy = (moe_policy_id)p;
        rows[n].name = moe_policy_name((moe_policy_id)p);
        if (moe_sim_timed(t, &sp, &rows[n].r) != MOE_OK) {
            rc = fail(moe_last_error(), NULL);
            break;
        }
        n++;
    }
    const moe_sim_result *hot = NULL, *orc = NULL;
    for (uint32_t i = 0; i < n; i++) {
        if (!strcmp(rows[i].name, "static-hot")) hot = &rows[i].r;
        if (!strcmp(rows[i].name, "oracle")) orc = &rows[i].r;
    }
    for (uint32_t i = 0; rc == 0 && i < n; i++) print_row(o, rows[i].name, &rows[i].r, frac, budget, hot, orc, json);
    moe_profile_clear(&prof);
    return rc;
}

int main(int argc, char **argv) {
    enum { O_CACHE_ONLY = 256, O_PER_LAYER, O_POLICY, O_COMPARE, O_TRACE, O_JSON, O_MODE, O_ALPHA, O_SYNTH, O_WRITE,
           O_PROFILE, O_SHAPE, O_DTYPE, O_BUDGET, O_BATCH, O_CHUNK, O_DENSE, O_ACC, O_DEPTH, O_SEED, O_COLD, O_ABL, O_MODEL };
    static const struct option opts[] = {{"cache-only", 0, 0, O_CACHE_ONLY}, {"cache-per-layer", 1, 0, O_PER_LAYER},
                                         {"policy", 1, 0, O_POLICY},         {"compare", 0, 0, O_COMPARE},
                                         {"trace", 1, 0, O_TRACE},           {"json", 0, 0, O_JSON},
                                         {"mode", 1, 0, O_MODE},             {"score-alpha", 1, 0, O_ALPHA},
                                         {"synthetic", 1, 0, O_SYNTH},       {"write-trace", 1, 0, O_WRITE},
                                         {"profile", 1, 0, O_PROFILE},       {"shape", 1, 0, O_SHAPE},
                                         {"dtype", 1, 0, O_DTYPE},           {"gpu-budget", 1, 0, O_BUDGET},
                                         {"batch", 1, 0, O_BATCH},           {"prefill-chunk", 1, 0, O_CHUNK},
                                         {"dense-experts", 1, 0, O_DENSE},   {"accuracy", 1, 0, O_ACC},
                                         {"depth", 1, 0, O_DEPTH},           {"seed", 1, 0, O_SEED},
                                         {"cold", 0, 0, O_COLD},             {"ablation", 0, 0, O_ABL},
                                         {"model", 1, 0, O_MODEL},           {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    static const char *const names[] = {"lru", "lfu", "belady", "score"};
    bool cache_only = false, compare = false, json = false;
    long per_layer = 0;
    const char *synth = NULL, *write_to = NULL, *model = NULL;
    double alpha = 0.5;
    int policy = -1;
    const char *policy_name = NULL;
    bool have_mode = false;
    timed_opts to = {.dtype = MOE_DTYPE_BF16, .budget = -1, .batch = 1, .chunk = 512, .dense_experts = 3.6,
                     .accuracy = {0.85, 0.7, 0.6, 0.5}, .seed = 1};
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
            policy_name = optarg;
            for (int i = 0; i < 4; i++)
                if (!strcmp(optarg, names[i])) policy = i;
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
            if (!strcmp(optarg, "decode")) to.mode = MOE_SIM_DECODE;
            else if (!strcmp(optarg, "prefill")) to.mode = MOE_SIM_PREFILL;
            else return fail("--mode: expected decode or prefill", optarg);
            have_mode = true;
            break;
        case O_PROFILE: to.profile = optarg; break;
        case O_MODEL: model = optarg; break;
        case O_SHAPE:
            if (sscanf(optarg, "%ux%u%c", &to.hidden, &to.inter, (char[1]){0}) != 2 || !to.hidden || !to.inter ||
                to.hidden > 65536 || to.inter > 65536)
                return fail("--shape: expected HIDDENxINTER, e.g. 2048x1408", optarg);
            break;
        case O_DTYPE: {
            bool ok = false;
            for (int d = 0; d < MOE_DTYPE_COUNT_; d++)
                if (moe_dtype_name((moe_dtype)d) && !strcmp(optarg, moe_dtype_name((moe_dtype)d))) to.dtype = (moe_dtype)d, ok = true;
            if (!ok) return fail("--dtype: expected bf16, f16, f32 or int8", optarg);
            to.dtype_set = true;
            break;
        }
        case O_BUDGET:
            to.budget = strtod(optarg, &end);
            if (*end || !(to.budget > 0) || (to.budget > 1 && to.budget != floor(to.budget)) || to.budget > 1e18)
                return fail("--gpu-budget: expected a fraction in (0, 1] or a whole number of bytes", optarg);
            break;
        case O_BATCH:
        case O_CHUNK:
        case O_DEPTH: {
            const long v = strtol(optarg, &end, 10);
            const long hi = c == O_DEPTH ? MOE_SCHED_MAX_DEPTH : 65536;
            if (*end || v < (c == O_DEPTH ? 0 : 1) || v > hi) return fail("expected a whole number in range", optarg);
            if (c == O_BATCH) to.batch = (uint32_t)v;
            else if (c == O_CHUNK) to.chunk = (uint32_t)v;
            else to.depth = (uint32_t)v;
            break;
        }
        case O_DENSE:
            to.dense_experts = strtod(optarg, &end);
            if (*end || !(to.dense_experts >= 0 && to.dense_experts < 1e6)) return fail("--dense-experts: expected >= 0", optarg);
            to.dense_set = true;
            break;
        case O_ACC: {
            char buf[128];
            if (strlen(optarg) >= sizeof buf) return fail("--accuracy: too long", NULL);
            strcpy(buf, optarg);
            char *save = NULL;
            int k = 0;
            for (char *a = strtok_r(buf, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
                const double v = strtod(a, &end);
                if (*end || !(v >= 0 && v <= 1) || k == MOE_SCHED_MAX_DEPTH)
                    return fail("--accuracy: expected up to 4 probabilities in [0, 1]", optarg);
                to.accuracy[k++] = v;
            }
            for (; k > 0 && k < MOE_SCHED_MAX_DEPTH; k++) to.accuracy[k] = to.accuracy[k - 1];
            break;
        }
        case O_SEED: to.seed = strtoull(optarg, &end, 10); if (*end) return fail("--seed: expected a number", optarg); break;
        case O_COLD: to.cold = true; break;
        case O_ABL: to.ablation = true; break;
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
        if (!cache_only && !have_mode) {
            moe_trace_free(&t);
            return write_to ? 0 : fail("--synthetic: nothing to do (add --write-trace FILE, --mode or --cache-only)", NULL);
        }
    }
    if (!n_traces && !synth) return fail("no --trace FILE or --synthetic", NULL);
    for (int i = 0; i < n_traces; i++)
        if (moe_trace_load(&t, traces[i]) != MOE_OK) {
            fprintf(stderr, "moe-sim: %s\n", moe_last_error());
            moe_trace_free(&t);
            return 1;
        }
    if (model && !apply_model(model, &t, &to)) {
        moe_trace_free(&t);
        return 1;
    }
    if (!cache_only) {
        if (!have_mode) return fail("no --mode decode|prefill (or --cache-only)", NULL);
        if (compare == (policy_name != NULL) && !to.ablation) return fail("give either --policy NAME or --compare", NULL);
        const int rc = run_timed(&t, traces, n_traces, &to, compare ? NULL : policy_name, json);
        moe_trace_free(&t);
        return rc;
    }
    if (!per_layer) return fail("no --cache-per-layer C", NULL);
    if (policy_name && policy < 0) return fail("--policy: expected lru, lfu, belady or score in the cache-only mode", policy_name);
    if (compare == (policy >= 0)) return fail("give either --policy NAME or --compare", NULL);

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
