/* moe-run - runs a model through moerun. Without a model argument it runs
 * the built-in demo model (random weights, see model/demo.h): a prefill of
 * the prompt as one batch, then greedy decoding one token at a time, and
 * prints the generated token ids and the runtime's statistics. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "demo.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe-run [options]\n"
            "Runs the built-in demo model: a stack of MoE layers with random weights generated\n"
            "from a seed (no attention; its tokens are not text). Loading model directories and\n"
            "GGUF files comes with the model runtime.\n"
            "\n"
            "  -p, --prompt TEXT     prompt; its bytes are the token ids (default \"Hello, MoE\")\n"
            "  -n, --tokens N        tokens to generate (default 16)\n"
            "  --device auto|cpu     where experts run (default auto)\n"
            "  --policy NAME         scheduling policy: auto, or one of the names below (default auto)\n"
            "  --threads N           CPU expert threads (default: one per core)\n"
            "  --profile FILE        machine profile from moe-profile (default: $MOE_PROFILE or\n"
            "                        ~/.cache/moerun/profile.txt if present; 'none' for none)\n"
            "  --any-host            use a profile measured on another host or build anyway\n"
            "  --record-trace FILE   write every forward pass's routing as a moe-trace v1 file\n"
            "  --stats text|json     statistics format; json prints one object on the last line\n"
            "  --seed N              seed of the demo weights (default 42)\n"
            "  --layers N --experts N --top-k N --hidden N --inter N --vocab N\n"
            "                        demo model shape (default 4 layers, 16 experts, top-2,\n"
            "                        hidden 256, inter 512, vocab 512)\n"
            "  --dtype f32|bf16|f16|int8  expert weight type (default bf16)\n"
            "  -q, --quiet           print only the statistics\n"
            "  --version             print the version and build\n"
            "  -h, --help            this help\n"
            "policies:");
    for (const char *const *p = moe_policy_names(); *p; p++) fprintf(f, " %s", *p);
    fprintf(f, "\n");
}

static int bad(const char *fmt, ...) MOE_PRINTF(1, 2);

/* Prints a command-line error and returns the exit status for it. */
static int bad(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "moe-run: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see moe-run --help)\n");
    va_end(ap);
    return 2;
}

static bool parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) return false;
    *out = (uint32_t)v;
    return true;
}

/* s as the inside of a JSON string. */
static void json_str(char *out, size_t cap, const char *s) {
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') out[n++] = '\\', out[n++] = (char)c;
        else if (c < 0x20) n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        else out[n++] = (char)c;
    }
    out[n] = '\0';
}

int main(int argc, char **argv) {
    moe_demo_config cfg = moe_demo_default_config();
    moe_runtime_params rp = moe_runtime_default_params();
    const char *prompt = "Hello, MoE";
    uint32_t n_gen = 16;
    bool json = false, quiet = false;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("%s\n", moe_build_info());
            return 0;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = true;
            continue;
        }
        if (!strcmp(a, "--any-host")) {
            rp.profile_any_host = 1;
            continue;
        }
        if (a[0] != '-')
            return bad("\"%s\": loading a model from a file or directory is not supported in this version; "
                       "run moe-run without a model for the demo", a);
        if (!v) return bad("%s needs a value", a);
        i++;
        uint32_t *num = NULL;
        uint32_t lo = 1, hi = 1u << 20;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--tokens")) num = &n_gen, lo = 0, hi = 1u << 16;
        else if (!strcmp(a, "--threads")) num = &rp.n_threads, hi = 4096;
        else if (!strcmp(a, "--layers")) num = &cfg.n_layers, hi = 4096;
        else if (!strcmp(a, "--experts")) num = &cfg.n_experts, hi = 65536;
        else if (!strcmp(a, "--top-k")) num = &cfg.top_k, hi = 65536;
        else if (!strcmp(a, "--hidden")) num = &cfg.hidden;
        else if (!strcmp(a, "--inter")) num = &cfg.inter;
        else if (!strcmp(a, "--vocab")) num = &cfg.vocab;
        else if (!strcmp(a, "--policy")) rp.policy = v;
        else if (!strcmp(a, "--profile")) rp.profile_path = strcmp(v, "none") ? v : "";
        else if (!strcmp(a, "--record-trace")) rp.record_trace_path = v;
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            cfg.seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') return bad("--seed: \"%s\" is not a non-negative integer", v);
        } else if (!strcmp(a, "--device")) {
            if (!strcmp(v, "auto")) rp.device = MOE_DEVICE_AUTO;
            else if (!strcmp(v, "cpu")) rp.device = MOE_DEVICE_CPU;
            else return bad("--device: \"%s\" is not one of auto, cpu", v);
        } else if (!strcmp(a, "--stats")) {
            if (!strcmp(v, "json")) json = true;
            else if (!strcmp(v, "text")) json = false;
            else return bad("--stats: \"%s\" is not one of text, json", v);
        } else if (!strcmp(a, "--dtype")) {
            if (!strcmp(v, "f32")) cfg.dtype = MOE_DTYPE_F32;
            else if (!strcmp(v, "bf16")) cfg.dtype = MOE_DTYPE_BF16;
            else if (!strcmp(v, "f16")) cfg.dtype = MOE_DTYPE_F16;
            else if (!strcmp(v, "int8")) cfg.dtype = MOE_DTYPE_I8;
            else return bad("--dtype: \"%s\" is not one of f32, bf16, f16, int8", v);
        } else
            return bad("unknown option %s", a);
        if (num && !parse_u32(v, lo, hi, num)) return bad("%s: bad value (an integer in %u..%u)", a, lo, hi);
    }

    moe_demo *demo = NULL;
    moe_runtime_t *rt = NULL;
    float *logits = NULL;
    int32_t *tokens = NULL;
    int rc = 1;
    moe_status st = moe_demo_create(&demo, &cfg);
    if (st == MOE_OK) st = moe_runtime_create(&rt, moe_demo_model(demo), &rp);
    if (st != MOE_OK) {
        fprintf(stderr, "moe-run: %s: %s\n", moe_status_str(st), moe_last_error());
        goto out;
    }
    const uint32_t cap = (uint32_t)strlen(prompt) + 1;
    tokens = malloc(cap * sizeof *tokens);
    logits = malloc((size_t)cap * cfg.vocab * sizeof *logits);
    if (!tokens || !logits) {
        fprintf(stderr, "moe-run: out of memory\n");
        goto out;
    }
    uint32_t n_prompt = moe_demo_tokenize(prompt, cfg.vocab, tokens, cap);
    if (n_prompt == 0) tokens[n_prompt++] = 0; /* an empty prompt starts from token 0 */
    if (!quiet)
        printf("moe-run: demo model (random weights): %u layers x %u experts (top-%u), %ux%u %s, "
               "%.1f MB of experts; device %s, policy %s\n",
               cfg.n_layers, cfg.n_experts, cfg.top_k, cfg.hidden, cfg.inter, moe_dtype_name(cfg.dtype),
               (double)moe_model_expert_bytes(moe_demo_model(demo)) / 1e6, moe_device_name(moe_runtime_device(rt)),
               moe_runtime_policy(rt));

    double t0 = moe_now();
    if ((st = moe_demo_forward(demo, rt, tokens, n_prompt, 0, logits)) != MOE_OK) goto fail;
    double t1 = moe_now();
    int32_t next = moe_demo_argmax(logits + (size_t)(n_prompt - 1) * cfg.vocab, cfg.vocab);
    if (!quiet) printf("prompt tokens: %u\ngenerated:", n_prompt);
    for (uint32_t i = 0; i < n_gen; i++) {
        if (!quiet) {
            printf(" %d", next);
            fflush(stdout);
        }
        if (i + 1 == n_gen) break;
        if ((st = moe_demo_forward(demo, rt, &next, 1, n_prompt + i, logits)) != MOE_OK) goto fail;
        next = moe_demo_argmax(logits, cfg.vocab);
    }
    double t2 = moe_now();
    if (!quiet) printf("\n");

    moe_stats s;
    moe_runtime_get_stats(rt, &s);
    const double prefill_tok_s = n_prompt / (t1 - t0);
    const double decode_tok_s = n_gen > 1 ? (n_gen - 1) / (t2 - t1) : 0.0;
    const uint64_t gpu_calls = s.gpu_hits + s.gpu_misses;
    const double hit_rate = gpu_calls ? (double)s.gpu_hits / (double)gpu_calls : 0.0;
    if (json) {
        char prof[2048];
        json_str(prof, sizeof prof, moe_runtime_profile(rt));
        printf("{\"model\":\"demo\",\"device\":\"%s\",\"policy\":\"%s\",\"prompt_tokens\":%u,"
               "\"generated_tokens\":%u,\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f,\"layer_calls\":%llu,"
               "\"experts_cpu\":%llu,\"experts_gpu\":%llu,\"expert_tokens\":%llu,\"gpu_hit_rate\":%.4f,"
               "\"bytes_copied\":%llu,\"plan_s\":%.6f,\"cpu_s\":%.6f,\"gpu_s\":%.6f,\"moe_s\":%.6f,"
               "\"profile\":\"%s\"}\n",
               moe_device_name(moe_runtime_device(rt)), moe_runtime_policy(rt),
               n_prompt, n_gen, prefill_tok_s, decode_tok_s,
               (unsigned long long)s.layer_calls, (unsigned long long)s.expert_calls_cpu,
               (unsigned long long)s.expert_calls_gpu, (unsigned long long)s.expert_tokens, hit_rate,
               (unsigned long long)s.bytes_copied, s.plan_seconds, s.cpu_seconds, s.gpu_seconds, s.total_seconds,
               prof);
    } else {
        printf("prefill: %u tokens, %.1f tok/s; decode: %u steps, %.1f tok/s\n", n_prompt, prefill_tok_s,
               n_gen > 1 ? n_gen - 1 : 0, decode_tok_s);
        printf("experts: %llu calls on CPU, %llu on GPU, %llu token-expert pairs; GPU hit rate %.3f, "
               "%llu bytes copied\n",
               (unsigned long long)s.expert_calls_cpu, (unsigned long long)s.expert_calls_gpu,
               (unsigned long long)s.expert_tokens, hit_rate, (unsigned long long)s.bytes_copied);
        printf("time in MoE layers: %.3f s (plan %.3f s, CPU experts %.3f s, GPU experts %.3f s)\n",
               s.total_seconds, s.plan_seconds, s.cpu_seconds, s.gpu_seconds);
        if (moe_runtime_profile(rt)[0])
            printf("profile: %s; it predicts %.1f us per CPU expert call at decode (1 token)\n",
                   moe_runtime_profile(rt), moe_runtime_cpu_cost_us(rt, 0, 1));
        else
            printf("profile: none (moe-profile --quick measures this machine in seconds)\n");
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "\nmoe-run: %s: %s\n", moe_status_str(st), moe_last_error());
out:
    free(tokens);
    free(logits);
    moe_runtime_free(&rt);
    moe_demo_free(&demo);
    return rc;
}
