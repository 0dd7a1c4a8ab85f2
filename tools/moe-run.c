/* moe-run - runs a model through moerun: a Hugging Face model directory
 * (config.json, safetensors, tokenizer.json), or without a model argument
 * the built-in demo model (random weights, see model/demo.h). The prompt is
 * run as one batch (prefill), then tokens are generated one at a time and
 * streamed as they come; the runtime's statistics follow, as text or as
 * one JSON object on the last line. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "demo.h"
#include "llm.h"
#include "sample.h"
#include "tokenizer.h"

#define MAX_STOPS 8

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe-run [MODEL] [options]\n"
            "Runs MODEL, a Hugging Face model directory (config.json, model.safetensors or its\n"
            "sharded index, tokenizer.json) or a GGUF file (f32, f16, bf16 and the block formats\n"
            "q4_0, q4_1, q5_0, q5_1, q8_0, q2_K..q6_K, iq4_nl, iq4_xs, mxfp4, mixed per tensor as\n"
            "llama-quantize writes them) of a Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2,\n"
            "DeepSeek-V3 (Kimi-K2, Moonlight) or GLM-4.5 model. Without MODEL it runs the built-in demo\n"
            "model: MoE layers with random weights generated from a seed (no attention; its tokens\n"
            "are not text).\n"
            "\n"
            "  -p, --prompt TEXT     prompt (demo: its bytes are the token ids; default \"Hello, MoE\")\n"
            "  --prompt-ids LIST     the prompt as comma-separated token ids instead of text\n"
            "  --tokenizer FILE      tokenizer.json to use (default: MODEL's; for a GGUF file the\n"
            "                        tokenizer.json beside it, else the tokenizer in its metadata)\n"
            "  --chat                wrap the prompt in the model's chat format (ChatML, [INST],\n"
            "                        DeepSeek's User:/Assistant:, OLMoE's <|user|>)\n"
            "  -n, --tokens N        tokens to generate (default 16)\n"
            "  --ctx N               context (KV cache) positions (default: the model's, at most 4096)\n"
            "  --temp T              sampling temperature; 0 is greedy (default 0)\n"
            "  --top-k N             sample among the N most likely tokens (default 0: all)\n"
            "  --top-p P             ... within the smallest set of probability >= P (default 1)\n"
            "  --repeat-penalty R    divide the logits of recent tokens by R (default 1: none)\n"
            "  --stop TEXT           stop when the output contains TEXT (up to %d times)\n"
            "  --ignore-eos          keep generating after an end-of-sequence token\n"
            "  --lazy                read weights from the files on first use, not all at load\n"
            "                        (loading shows a progress bar on a terminal); this also skips\n"
            "                        the load-time check of every quantized block's scale\n"
            "  --quantize TYPE       quantize the weights held in f32/f16/bf16 at load (routed and\n"
            "                        shared experts, attention, dense MLPs, embeddings, LM head; not\n"
            "                        routers or norms) to TYPE: q4_0, q4_1, q5_0, q5_1, q8_0, q2_K,\n"
            "                        q3_K, q4_K, q5_K, q6_K, iq4_nl, iq4_xs, mxfp4. Rows that are not\n"
            "                        whole blocks fall back as llama-quantize does (q4_K -> q5_0,\n"
            "                        q5_K -> q5_1, q6_K -> q8_0, q2_K/q3_K -> q4_0, iq4_xs -> iq4_nl),\n"
            "                        else stay as they are; tensors already quantized are kept\n"
            "  --seed N              sampling seed; for the demo, the seed of its weights (default 42)\n"
            "  --device auto|cpu|sim|cuda  where experts run (default auto: the CPU). sim: a GPU simulated\n"
            "                        from the profile's [gpu] and [link] figures, the scheduler splitting\n"
            "                        each layer between it and the CPU (same results as cpu; needs a\n"
            "                        profile with a GPU, e.g. profiles/machines/ref-h100-pcie5-2s-xeon8480.txt).\n"
            "                        cuda: CUDA device 0, planned with this machine's profile (run\n"
            "                        moe-profile here first; not yet verified on a GPU, docs/devices.md)\n"
            "  --gpu-budget B        GPU expert cache: 50%%, a fraction 0..1 of the routed experts'\n"
            "                        bytes, or bytes (default: the profile's [tuning], else 50%%)\n"
            "  --policy NAME         scheduling policy: auto, or one of the names below (default auto)\n"
            "  --threads N           CPU expert threads (default: one per core)\n"
            "  --profile FILE        machine profile from moe-profile (default: $MOE_PROFILE or\n"
            "                        ~/.cache/moerun/profile.txt if present; 'none' for none)\n"
            "  --any-host            use a profile measured on another host or build anyway\n"
            "  --record-trace FILE   write every forward pass's routing as a moe-trace v1 file\n"
            "  --stats text|json     statistics format; json prints one object on the last line\n"
            "  -q, --quiet           print only the statistics\n"
            "  --version             print the version and build\n"
            "  -h, --help            this help\n"
            "demo model only:\n"
            "  --layers N --experts N --top-k N --hidden N --inter N --vocab N\n"
            "                        shape (default 4 layers, 16 experts, top-2, hidden 256,\n"
            "                        inter 512, vocab 512); --top-k is the sampler's with a MODEL\n"
            "  --dtype f32|bf16|f16|int8  expert weight type (default bf16)\n"
            "policies:",
            MAX_STOPS);
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

static bool parse_float(const char *s, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    const float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
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

typedef struct options {
    const char *model, *prompt, *prompt_ids, *tokenizer;
    const char *stops[MAX_STOPS];
    uint32_t n_stops, n_gen, ctx, top_k;
    bool json, quiet, chat, ignore_eos, seed_set, lazy;
    moe_dtype quantize; /* a block format, or MOE_DTYPE_COUNT_ */
    uint64_t seed;
    moe_sampler_params sp;
    moe_demo_config demo;
    moe_runtime_params rp;
} options;

/* What a run measured, for the statistics. */
typedef struct run_times {
    uint32_t n_prompt, n_gen;
    double prefill_s, decode_s;
    uint64_t weight_bytes; /* of the model's files it uses (0 for the demo) */
} run_times;

/* VmRSS and VmHWM of this process in bytes (0 where /proc is not there). */
static void resident(uint64_t *rss, uint64_t *peak) {
    *rss = *peak = 0;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return;
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1) *rss = kb * 1024;
        if (sscanf(line, "VmHWM: %llu kB", &kb) == 1) *peak = kb * 1024;
    }
    fclose(f);
}

static void print_stats(const options *o, moe_runtime_t *rt, const char *model, const run_times *r) {
    moe_stats s;
    moe_runtime_get_stats(rt, &s);
    const double prefill_tok_s = r->prefill_s > 0 ? r->n_prompt / r->prefill_s : 0.0;
    const double decode_tok_s = r->n_gen > 1 && r->decode_s > 0 ? (r->n_gen - 1) / r->decode_s : 0.0;
    const uint64_t gpu_calls = s.gpu_hits + s.gpu_misses;
    const double hit_rate = gpu_calls ? (double)s.gpu_hits / (double)gpu_calls : 0.0;
    uint64_t rss, peak;
    resident(&rss, &peak);
    /* The router lookahead's measured accuracy by distance (null: none made). */
    char acc[128] = "", acc_text[160] = "";
    for (int d = 0; d < 4; d++) {
        const size_t n = strlen(acc), nt = strlen(acc_text);
        if (s.lookahead_pairs[d]) {
            const double a = (double)s.lookahead_hits[d] / (double)s.lookahead_pairs[d];
            snprintf(acc + n, sizeof acc - n, "%s%.4f", d ? "," : "", a);
            snprintf(acc_text + nt, sizeof acc_text - nt, "%s%d ahead %.3f", nt ? ", " : "", d + 1, a);
        } else {
            snprintf(acc + n, sizeof acc - n, "%snull", d ? "," : "");
        }
    }
    /* serial / span of the layers that used the GPU: 1 = no overlap. */
    const double overlap = s.hybrid_span_seconds > 0 ? s.hybrid_serial_seconds / s.hybrid_span_seconds : 0.0;
    if (o->json) {
        char prof[2048], name[2048];
        json_str(prof, sizeof prof, moe_runtime_profile(rt));
        json_str(name, sizeof name, model);
        printf("{\"model\":\"%s\",\"device\":\"%s\",\"policy\":\"%s\",\"prompt_tokens\":%u,"
               "\"generated_tokens\":%u,\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f,\"layer_calls\":%llu,"
               "\"experts_cpu\":%llu,\"experts_gpu\":%llu,\"expert_tokens\":%llu,\"gpu_hit_rate\":%.4f,"
               "\"bytes_copied\":%llu,\"plan_s\":%.6f,\"cpu_s\":%.6f,\"gpu_s\":%.6f,\"moe_s\":%.6f,"
               "\"prefill_s\":%.6f,\"decode_s\":%.6f,\"weight_bytes\":%llu,\"rss_bytes\":%llu,"
               "\"peak_rss_bytes\":%llu,\"gpu_copy_s\":%.6f,\"gpu_compute_s\":%.6f,\"hybrid_layers\":%llu,"
               "\"hybrid_span_s\":%.6f,\"hybrid_serial_s\":%.6f,\"overlap\":%.4f,\"gpu_redone\":%llu,"
               "\"lookahead_accuracy\":[%s],\"cpu_cost_scale\":%.4f,\"gpu_cost_scale\":%.4f,\"profile\":\"%s\"}\n",
               name, moe_device_name(moe_runtime_device(rt)), moe_runtime_policy(rt), r->n_prompt, r->n_gen,
               prefill_tok_s, decode_tok_s, (unsigned long long)s.layer_calls,
               (unsigned long long)s.expert_calls_cpu, (unsigned long long)s.expert_calls_gpu,
               (unsigned long long)s.expert_tokens, hit_rate, (unsigned long long)s.bytes_copied, s.plan_seconds,
               s.cpu_seconds, s.gpu_seconds, s.total_seconds, r->prefill_s, r->decode_s,
               (unsigned long long)r->weight_bytes, (unsigned long long)rss, (unsigned long long)peak,
               s.gpu_copy_seconds, s.gpu_compute_seconds, (unsigned long long)s.hybrid_layers, s.hybrid_span_seconds,
               s.hybrid_serial_seconds, overlap, (unsigned long long)s.gpu_redone, acc, s.cpu_cost_scale,
               s.gpu_cost_scale, prof);
        return;
    }
    printf("prefill: %u tokens, %.1f tok/s; decode: %u steps, %.1f tok/s\n", r->n_prompt, prefill_tok_s,
           r->n_gen > 1 ? r->n_gen - 1 : 0, decode_tok_s);
    printf("experts: %llu calls on CPU, %llu on GPU, %llu token-expert pairs; GPU hit rate %.3f, "
           "%llu bytes copied\n",
           (unsigned long long)s.expert_calls_cpu, (unsigned long long)s.expert_calls_gpu,
           (unsigned long long)s.expert_tokens, hit_rate, (unsigned long long)s.bytes_copied);
    printf("time in MoE layers: %.3f s (plan %.3f s, CPU experts %.3f s, waiting for the GPU %.3f s)\n",
           s.total_seconds, s.plan_seconds, s.cpu_seconds, s.gpu_seconds);
    if (s.hybrid_layers)
        printf("GPU: copy stream busy %.3f s, compute stream %.3f s%s; %llu layers split between CPU and GPU took "
               "%.3f s for %.3f s of work: overlap %.2fx%s\n",
               s.gpu_copy_seconds, s.gpu_compute_seconds,
               moe_runtime_device(rt) == MOE_DEVICE_SIM ? " (modeled)" : "", (unsigned long long)s.hybrid_layers,
               s.hybrid_span_seconds, s.hybrid_serial_seconds, overlap,
               s.gpu_redone ? "; some GPU experts failed and were recomputed on the CPU" : "");
    if (acc_text[0]) printf("router lookahead: accuracy %s (token-expert pairs predicted that ran)\n", acc_text);
    if (s.cpu_cost_scale > 0 && (s.cpu_cost_scale > 1.25 || s.cpu_cost_scale < 0.8 || s.gpu_cost_scale > 1.25 ||
                                 s.gpu_cost_scale < 0.8))
        printf("costs: measured CPU expert times are %.2fx the profile's, GPU runs %.2fx; the scheduler plans with "
               "them (a profile measured on this machine, with moe-profile, fits better)\n",
               s.cpu_cost_scale, s.gpu_cost_scale);
    if (r->weight_bytes)
        printf("memory: %.1f MB resident (peak %.1f MB) for %.1f MB of weights\n", (double)rss / 1e6,
               (double)peak / 1e6, (double)r->weight_bytes / 1e6);
    if (moe_runtime_profile(rt)[0])
        printf("profile: %s; it predicts %.1f us per CPU expert call at decode (1 token)\n", moe_runtime_profile(rt),
               moe_runtime_cpu_cost_us(rt, 0, 1));
    else
        printf("profile: none (moe-profile --quick measures this machine in seconds)\n");
}

static void report(moe_status st) { fprintf(stderr, "moe-run: %s: %s\n", moe_status_str(st), moe_last_error()); }

/* ---- the demo model ---- */

static int run_demo(options *o) {
    const moe_demo_config *cfg = &o->demo;
    moe_demo *demo = NULL;
    moe_runtime_t *rt = NULL;
    float *logits = NULL;
    int32_t *tokens = NULL;
    int rc = 1;
    moe_status st = moe_demo_create(&demo, cfg);
    if (st == MOE_OK) st = moe_runtime_create(&rt, moe_demo_model(demo), &o->rp);
    if (st != MOE_OK) {
        report(st);
        goto out;
    }
    const uint32_t cap = (uint32_t)strlen(o->prompt) + 1;
    tokens = malloc(cap * sizeof *tokens);
    logits = malloc((size_t)cap * cfg->vocab * sizeof *logits);
    if (!tokens || !logits) {
        fprintf(stderr, "moe-run: out of memory\n");
        goto out;
    }
    run_times r = {moe_demo_tokenize(o->prompt, cfg->vocab, tokens, cap), o->n_gen, 0, 0, 0};
    if (r.n_prompt == 0) tokens[r.n_prompt++] = 0; /* an empty prompt starts from token 0 */
    if (!o->quiet)
        printf("moe-run: demo model (random weights): %u layers x %u experts (top-%u), %ux%u %s, "
               "%.1f MB of experts; device %s, policy %s\n",
               cfg->n_layers, cfg->n_experts, cfg->top_k, cfg->hidden, cfg->inter, moe_dtype_name(cfg->dtype),
               (double)moe_model_expert_bytes(moe_demo_model(demo)) / 1e6, moe_device_name(moe_runtime_device(rt)),
               moe_runtime_policy(rt));
    const double t0 = moe_now();
    if ((st = moe_demo_forward(demo, rt, tokens, r.n_prompt, 0, logits)) != MOE_OK) goto fail;
    const double t1 = moe_now();
    int32_t next = moe_demo_argmax(logits + (size_t)(r.n_prompt - 1) * cfg->vocab, cfg->vocab);
    if (!o->quiet) printf("prompt tokens: %u\ngenerated:", r.n_prompt);
    for (uint32_t i = 0; i < o->n_gen; i++) {
        if (!o->quiet) {
            printf(" %d", next);
            fflush(stdout);
        }
        if (i + 1 == o->n_gen) break;
        if ((st = moe_demo_forward(demo, rt, &next, 1, r.n_prompt + i, logits)) != MOE_OK) goto fail;
        next = moe_demo_argmax(logits, cfg->vocab);
    }
    r.prefill_s = t1 - t0, r.decode_s = moe_now() - t1;
    if (!o->quiet) printf("\n");
    print_stats(o, rt, "demo", &r);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "\n");
    report(st);
out:
    free(tokens);
    free(logits);
    moe_runtime_free(&rt);
    moe_demo_free(&demo);
    return rc;
}

/* ---- a real model ---- */

/* The chat formats moe-run knows, told apart by the tokens the
 * tokenizer has; "%s" is the prompt. */
static const char *chat_format(const moe_tokenizer *tok) {
    if (moe_tokenizer_token_id(tok, "<|im_start|>") >= 0) return "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n";
    if (moe_tokenizer_token_id(tok, "<|user|>") >= 0) return "<|user|>\n%s\n<|assistant|>\n";
    if (moe_tokenizer_token_id(tok, "[INST]") >= 0 || moe_tokenizer_token_id(tok, "▁[") >= 0) return "[INST] %s [/INST]";
    if (moe_tokenizer_token_id(tok, "<｜begin▁of▁sentence｜>") >= 0) return "User: %s\n\nAssistant:";
    return NULL;
}

static moe_status parse_ids(const char *list, uint32_t vocab, int32_t **ids, uint32_t *n) {
    *n = 0;
    *ids = malloc((strlen(list) / 2 + 1) * sizeof **ids);
    if (!*ids) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "out of memory");
    for (const char *p = list; *p;) {
        char *end;
        errno = 0;
        const long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || (unsigned long)v >= vocab || (*end && *end != ','))
            return moe_fail(MOE_ERR_INVALID_ARG, "--prompt-ids: \"%s\" is not a list of token ids below %u", list, vocab);
        (*ids)[(*n)++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    return *n ? MOE_OK : moe_fail(MOE_ERR_INVALID_ARG, "--prompt-ids: empty list");
}

static moe_status tokenize_prompt(const options *o, const moe_tokenizer *tok, uint32_t vocab, int32_t **ids,
                                  uint32_t *n) {
    if (o->prompt_ids) return parse_ids(o->prompt_ids, vocab, ids, n);
    if (!tok)
        return moe_fail(MOE_ERR_INVALID_ARG, "%s has no tokenizer.json beside it: give --tokenizer FILE, or the prompt "
                        "as --prompt-ids", o->model);
    const char *text = o->prompt;
    char *wrapped = NULL;
    if (o->chat) {
        const char *fmt = chat_format(tok);
        if (!fmt) return moe_fail(MOE_ERR_UNSUPPORTED, "--chat: no chat format is known for this model's tokenizer");
        const size_t cap = strlen(fmt) + strlen(o->prompt) + 1;
        if (!(wrapped = malloc(cap))) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "out of memory");
        snprintf(wrapped, cap, fmt, o->prompt);
        text = wrapped;
    }
    size_t need = 0, cap = strlen(text) + 8;
    moe_status st = MOE_ERR_OUT_OF_MEMORY;
    *ids = malloc(cap * sizeof **ids);
    if (*ids) st = moe_tokenizer_encode(tok, text, strlen(text), true, *ids, cap, &need);
    free(wrapped);
    *n = (uint32_t)need;
    if (st == MOE_OK && !need) st = moe_fail(MOE_ERR_INVALID_ARG, "the prompt is empty");
    return st;
}

/* Streams generated text, holding back what could still become a stop
 * string or an incomplete UTF-8 character. */
typedef struct stream {
    char *buf;
    size_t len, cap, printed, hold;
    bool stopped;
} stream;

static void stream_add(stream *s, const options *o, const char *p, size_t n) {
    if (s->len + n + 1 > s->cap) {
        size_t cap = (s->len + n + 1) * 2;
        char *b = realloc(s->buf, cap);
        if (!b) return;
        s->buf = b, s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = '\0';
    size_t end = s->len;
    for (uint32_t i = 0; i < o->n_stops; i++) {
        const size_t from = s->printed > s->hold ? s->printed - s->hold : 0;
        const char *hit = strstr(s->buf + from, o->stops[i]);
        if (hit && (size_t)(hit - s->buf) < end) end = (size_t)(hit - s->buf), s->stopped = true;
    }
    if (!s->stopped) end = s->len > s->hold ? s->len - s->hold : 0;
    if (end < s->printed) end = s->printed;
    end = s->printed + moe_utf8_complete(s->buf + s->printed, end - s->printed);
    if (s->stopped) end = s->len < end ? s->len : end;
    if (!o->quiet) fwrite(s->buf + s->printed, 1, end - s->printed, stdout);
    s->printed = end;
    fflush(stdout);
}

static void stream_flush(stream *s, const options *o) {
    /* buf is NULL while nothing was generated (a failure at the prompt) */
    if (!s->stopped && !o->quiet && s->len > s->printed) fwrite(s->buf + s->printed, 1, s->len - s->printed, stdout);
    s->printed = s->len;
}

static bool is_eos(const moe_llm *m, const moe_tokenizer *tok, int32_t id) {
    if (moe_llm_config(m)->eos_id == id) return true;
    if (!tok) return false;
    moe_tokenizer_info ti;
    moe_tokenizer_get_info(tok, &ti);
    return id == ti.eos_id || id == moe_tokenizer_token_id(tok, "<|im_end|>") ||
           id == moe_tokenizer_token_id(tok, "<|endoftext|>");
}

/* NaN or Inf logits mean a weight is damaged (the load-time scale check
 * catches quantized blocks unless --lazy skipped it) or the arithmetic
 * overflowed: refused rather than sampled from. */
static moe_status check_logits(const options *o, const float *logits, uint32_t V, uint32_t pos) {
    for (uint32_t v = 0; v < V; v++)
        if (!isfinite(logits[v]))
            return moe_fail(MOE_ERR_PARSE, "%s: the logits at position %u are not finite (logit %u is %g): a "
                            "weight of the model holds a NaN or Inf%s", o->model, pos, v, (double)logits[v],
                            o->lazy ? " (--lazy skipped the load-time check of quantized blocks' scales)" : "");
    return MOE_OK;
}

static int generate(options *o, moe_llm *m, moe_runtime_t *rt, const moe_tokenizer *tok, int32_t *prompt,
                    uint32_t n_prompt) {
    const uint32_t V = moe_llm_vocab(m);
    float *logits = malloc((size_t)V * sizeof *logits);
    int32_t *hist = malloc(((size_t)n_prompt + o->n_gen + 1) * sizeof *hist);
    moe_sampler smp;
    moe_status st = logits && hist ? moe_sampler_init(&smp, &o->sp, V) : MOE_ERR_OUT_OF_MEMORY;
    if (st) {
        free(logits), free(hist);
        report(st);
        return 1;
    }
    memcpy(hist, prompt, n_prompt * sizeof *hist);
    stream out = {0};
    for (uint32_t i = 0; i < o->n_stops; i++)
        if (strlen(o->stops[i]) > out.hold) out.hold = strlen(o->stops[i]);
    run_times r = {n_prompt, 0, 0, 0, moe_llm_weight_bytes(m)};
    const double t0 = moe_now();
    st = moe_llm_forward(m, rt, prompt, n_prompt, 0, false, logits);
    const double t1 = moe_now();
    if (st == MOE_OK) st = check_logits(o, logits, V, n_prompt - 1);
    while (st == MOE_OK && r.n_gen < o->n_gen) {
        const int32_t next = moe_sample(&smp, logits, hist, n_prompt + r.n_gen);
        hist[n_prompt + r.n_gen++] = next;
        if (!o->ignore_eos && is_eos(m, tok, next)) break;
        size_t n = 0;
        const char *bytes = tok ? moe_tokenizer_token_bytes(tok, next, &n) : NULL;
        char idbuf[16];
        if (!tok) n = (size_t)snprintf(idbuf, sizeof idbuf, " %d", next), bytes = idbuf;
        if (bytes && !(tok && moe_tokenizer_is_special(tok, next))) stream_add(&out, o, bytes, n);
        if (out.stopped || r.n_gen == o->n_gen) break;
        if (n_prompt + r.n_gen >= moe_llm_ctx(m)) {
            fprintf(stderr, "\nmoe-run: the context of %u positions is full\n", moe_llm_ctx(m));
            break;
        }
        st = moe_llm_forward(m, rt, &next, 1, n_prompt + r.n_gen - 1, false, logits);
        if (st == MOE_OK) st = check_logits(o, logits, V, n_prompt + r.n_gen - 1);
    }
    r.prefill_s = t1 - t0, r.decode_s = moe_now() - t1;
    stream_flush(&out, o);
    if (!o->quiet) printf("\n");
    free(out.buf), free(logits), free(hist);
    moe_sampler_free(&smp);
    if (st) {
        report(st);
        return 1;
    }
    print_stats(o, rt, o->model, &r);
    return 0;
}

static bool is_file(const char *p) {
    FILE *f = fopen(p, "rb");
    if (f) fclose(f);
    return f != NULL;
}

/* tokenizer.json and tokenizer_config.json: --tokenizer's, else in the
 * model directory or beside the GGUF file; "" where there is none. */
static void tokenizer_paths(const options *o, char *tok, size_t cap, char *cfg, size_t cfg_cap) {
    char dir[1024];
    if (o->tokenizer) {
        snprintf(tok, cap, "%s", o->tokenizer);
    } else {
        snprintf(dir, sizeof dir, "%s", o->model);
        struct stat st;
        if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
            char *slash = strrchr(dir, '/');
            if (slash) *slash = '\0';
            else snprintf(dir, sizeof dir, ".");
        }
        snprintf(tok, cap, "%s/tokenizer.json", dir);
        if (!is_file(tok)) tok[0] = '\0';
    }
    const char *slash = strrchr(tok, '/');
    snprintf(cfg, cfg_cap, "%.*s/tokenizer_config.json", slash ? (int)(slash - tok) : 1, slash ? tok : ".");
    if (!tok[0] || !is_file(cfg)) cfg[0] = '\0';
}

/* A progress bar on a terminal while the weights are read. */
static void show_progress(uint64_t done, uint64_t total, void *user) {
    (void)user;
    const int width = 40, fill = total ? (int)((double)done / (double)total * width) : width;
    fprintf(stderr, "\rloading [%.*s%*s] %3.0f%% %.1f/%.1f GB%s", fill, "########################################",
            width - fill, "", total ? 100.0 * (double)done / (double)total : 100.0, (double)done / 1e9,
            (double)total / 1e9, done >= total ? "\n" : "");
}

/* The experts' formats over all layers, e.g. "q4_K, q5_0 (down), q8_0 (down)". */
static void expert_formats(const moe_model_t *model, char *out, size_t cap) {
    bool seen[MOE_DTYPE_COUNT_][2] = {{false}};
    for (uint32_t l = 0; l < moe_model_n_layers(model); l++) {
        moe_layer_desc d = moe_layer_desc_init(0, 0, 0, MOE_DTYPE_F32);
        const moe_dtype down = moe_model_down_dtype(model, l);
        if (moe_model_get_layer(model, l, &d) || (unsigned)d.weight_dtype >= MOE_DTYPE_COUNT_) continue;
        seen[d.weight_dtype][0] = true;
        if ((unsigned)down < MOE_DTYPE_COUNT_ && down != d.weight_dtype) seen[down][1] = true;
    }
    size_t n = 0;
    out[0] = '\0';
    for (int k = 0; k < 2; k++)
        for (int t = 0; t < MOE_DTYPE_COUNT_ && n < cap; t++)
            if (seen[t][k])
                n += (size_t)snprintf(out + n, cap - n, "%s%s%s", n ? ", " : "", moe_dtype_name((moe_dtype)t),
                                      k ? " (down)" : "");
}

static int run_model(options *o) {
    moe_llm *m = NULL;
    moe_tokenizer *tok = NULL;
    moe_runtime_t *rt = NULL;
    int32_t *prompt = NULL;
    uint32_t n_prompt = 0;
    int rc = 1;
    const bool tty = isatty(STDERR_FILENO) && !o->quiet;
    const moe_llm_params lp = {.ctx = o->ctx, .prefault = !o->lazy, .progress = tty ? show_progress : NULL,
                               .quantize = o->quantize, .skip_scale_check = o->lazy};
    moe_status st = moe_llm_load(&m, o->model, &lp);
    char path[1100], cfg_path[1100];
    tokenizer_paths(o, path, sizeof path, cfg_path, sizeof cfg_path);
    if (st == MOE_OK && !o->prompt_ids && path[0]) st = moe_tokenizer_load(&tok, path, cfg_path[0] ? cfg_path : NULL);
    else if (st == MOE_OK && !o->prompt_ids && moe_llm_gguf(m)) {
        st = moe_tokenizer_from_gguf(&tok, moe_llm_gguf(m));
        snprintf(path, sizeof path, "%s's tokenizer", o->model);
    }
    if (st == MOE_OK && tok) {
        moe_tokenizer_info ti;
        moe_tokenizer_get_info(tok, &ti);
        if (ti.n_vocab > moe_llm_vocab(m))
            st = moe_fail(MOE_ERR_INVALID_ARG, "%s has %u tokens, more than the model's vocabulary of %u: not this "
                          "model's tokenizer", path, ti.n_vocab, moe_llm_vocab(m));
    }
    if (st == MOE_OK) st = tokenize_prompt(o, tok, moe_llm_vocab(m), &prompt, &n_prompt);
    if (st == MOE_OK && n_prompt > moe_llm_ctx(m))
        st = moe_fail(MOE_ERR_INVALID_ARG, "the prompt's %u tokens do not fit in the context of %u (see --ctx)",
                      n_prompt, moe_llm_ctx(m));
    if (st == MOE_OK) st = moe_runtime_create(&rt, moe_llm_model(m), &o->rp);
    if (st != MOE_OK) {
        report(st);
        goto out;
    }
    const moe_hf_config *c = moe_llm_config(m);
    if (!o->quiet) {
        const double mb = (double)moe_llm_weight_bytes(m) / 1e6;
        char fmts[160];
        expert_formats(moe_llm_model(m), fmts, sizeof fmts);
        printf("moe-run: %s (%s): %u layers, %u experts (top-%u, %s), %.*f %s of weights; device %s, policy %s\n",
               o->model, moe_llm_arch_name(m), c->n_layers, c->n_routed_experts, c->top_k, fmts, mb < 1e3 ? 1 : 2,
               mb < 1e3 ? mb : mb / 1e3, mb < 1e3 ? "MB" : "GB", moe_device_name(moe_runtime_device(rt)),
               moe_runtime_policy(rt));
        fflush(stdout);
    }
    rc = generate(o, m, rt, tok, prompt, n_prompt);
out:
    free(prompt);
    moe_runtime_free(&rt);
    moe_tokenizer_free(&tok);
    moe_llm_free(&m);
    return rc;
}

/* ---- options ---- */

/* The integer options; 0, or the exit status of a bad or unknown one. */
static int parse_number(options *o, const char *a, const char *v) {
    uint32_t *num = NULL, lo = 1, hi = 1u << 20;
    if (!strcmp(a, "-n") || !strcmp(a, "--tokens")) num = &o->n_gen, lo = 0, hi = 1u << 16;
    else if (!strcmp(a, "--threads")) num = &o->rp.n_threads, hi = 4096;
    else if (!strcmp(a, "--ctx")) num = &o->ctx, hi = 1u << 24;
    else if (!strcmp(a, "--top-k")) num = &o->top_k, lo = 0, hi = 1u << 24;
    else if (!strcmp(a, "--layers")) num = &o->demo.n_layers, hi = 4096;
    else if (!strcmp(a, "--experts")) num = &o->demo.n_experts, hi = 65536;
    else if (!strcmp(a, "--hidden")) num = &o->demo.hidden;
    else if (!strcmp(a, "--inter")) num = &o->demo.inter;
    else if (!strcmp(a, "--vocab")) num = &o->demo.vocab;
    else return bad("unknown option %s", a);
    if (!parse_u32(v, lo, hi, num)) return bad("%s: bad value (an integer in %u..%u)", a, lo, hi);
    return 0;
}

static int parse(options *o, int argc, char **argv, bool *exit_now) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            *exit_now = true;
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("%s\n", moe_build_info());
            *exit_now = true;
            return 0;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) o->quiet = true;
        else if (!strcmp(a, "--any-host")) o->rp.profile_any_host = 1;
        else if (!strcmp(a, "--chat")) o->chat = true;
        else if (!strcmp(a, "--ignore-eos")) o->ignore_eos = true;
        else if (!strcmp(a, "--lazy")) o->lazy = true;
        else if (a[0] != '-') {
            if (o->model) return bad("two models given: \"%s\" and \"%s\"", o->model, a);
            o->model = a;
        } else {
            if (!v) return bad("%s needs a value", a);
            i++;
            int rc = 0;
            if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = v;
            else if (!strcmp(a, "--prompt-ids")) o->prompt_ids = v;
            else if (!strcmp(a, "--tokenizer")) o->tokenizer = v;
            else if (!strcmp(a, "--policy")) o->rp.policy = v;
            else if (!strcmp(a, "--profile")) o->rp.profile_path = strcmp(v, "none") ? v : "";
            else if (!strcmp(a, "--record-trace")) o->rp.record_trace_path = v;
            else if (!strcmp(a, "--quantize")) {
                o->quantize = MOE_DTYPE_COUNT_;
                for (int t = 0; t < MOE_DTYPE_COUNT_; t++)
                    if (moe_dtype_is_block((moe_dtype)t) && !strcmp(v, moe_dtype_name((moe_dtype)t)))
                        o->quantize = (moe_dtype)t;
                if (o->quantize == MOE_DTYPE_COUNT_)
                    return bad("--quantize: \"%s\" is not one of q4_0, q4_1, q5_0, q5_1, q8_0, q2_K, q3_K, q4_K, "
                               "q5_K, q6_K, iq4_nl, iq4_xs, mxfp4", v);
            }
            else if (!strcmp(a, "--stop")) {
                if (o->n_stops == MAX_STOPS) return bad("--stop: at most %d stop strings", MAX_STOPS);
                if (!*v) return bad("--stop: an empty stop string");
                o->stops[o->n_stops++] = v;
            } else if (!strcmp(a, "--seed")) {
                char *end;
                errno = 0;
                o->seed = strtoull(v, &end, 10);
                if (errno || end == v || *end || v[0] == '-') return bad("--seed: \"%s\" is not a non-negative integer", v);
                o->seed_set = true;
            } else if (!strcmp(a, "--temp")) {
                if (!parse_float(v, 0, 100, &o->sp.temperature)) return bad("--temp: bad value (a number in 0..100)");
            } else if (!strcmp(a, "--top-p")) {
                if (!parse_float(v, 1e-6f, 1, &o->sp.top_p)) return bad("--top-p: bad value (a number in 0..1, above 0)");
            } else if (!strcmp(a, "--repeat-penalty")) {
                if (!parse_float(v, 1e-3f, 1e3f, &o->sp.repeat_penalty))
                    return bad("--repeat-penalty: bad value (a number in 0.001..1000)");
            } else if (!strcmp(a, "--device")) {
                if (!strcmp(v, "auto")) o->rp.device = MOE_DEVICE_AUTO;
                else if (!strcmp(v, "cpu")) o->rp.device = MOE_DEVICE_CPU;
                else if (!strcmp(v, "sim")) o->rp.device = MOE_DEVICE_SIM;
                else if (!strcmp(v, "cuda")) o->rp.device = MOE_DEVICE_CUDA;
                else return bad("--device: \"%s\" is not one of auto, cpu, sim, cuda", v);
            } else if (!strcmp(a, "--gpu-budget")) {
                char *end;
                errno = 0;
                const double b = strtod(v, &end);
                const bool pct = *end == '%' && !end[1];
                if (errno || end == v || (*end && !pct) || !(b >= 0) || (pct ? b > 100 : b > 1 && b != floor(b)) ||
                    b > 1e18)
                    return bad("--gpu-budget: \"%s\" is not 0..100%%, a fraction 0..1 or a byte count", v);
                if (pct || b <= 1) o->rp.gpu_budget_fraction = pct ? b / 100 : b, o->rp.gpu_budget_bytes = 0;
                else o->rp.gpu_budget_bytes = (uint64_t)b;
            } else if (!strcmp(a, "--stats")) {
                if (!strcmp(v, "json")) o->json = true;
                else if (!strcmp(v, "text")) o->json = false;
                else return bad("--stats: \"%s\" is not one of text, json", v);
            } else if (!strcmp(a, "--dtype")) {
                if (!strcmp(v, "f32")) o->demo.dtype = MOE_DTYPE_F32;
                else if (!strcmp(v, "bf16")) o->demo.dtype = MOE_DTYPE_BF16;
                else if (!strcmp(v, "f16")) o->demo.dtype = MOE_DTYPE_F16;
                else if (!strcmp(v, "int8")) o->demo.dtype = MOE_DTYPE_I8;
                else return bad("--dtype: \"%s\" is not one of f32, bf16, f16, int8", v);
            } else if ((rc = parse_number(o, a, v)) != 0)
                return rc;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    options o = {.prompt = "Hello, MoE", .n_gen = 16, .demo = moe_demo_default_config(), .quantize = MOE_DTYPE_COUNT_,
                 .rp = moe_runtime_default_params(), .sp = moe_sampler_default_params(), .top_k = UINT32_MAX};
    bool exit_now = false;
    const int rc = parse(&o, argc, argv, &exit_now);
    if (rc || exit_now) return rc;
    /* --top-k and --seed mean the demo's shape and weights without a model,
     * the sampler's with one. */
    if (o.model) {
        if (o.top_k != UINT32_MAX) o.sp.top_k = o.top_k;
        o.sp.seed = o.seed_set ? o.seed : 42;
        return run_model(&o);
    }
    if (o.top_k != UINT32_MAX) {
        if (o.top_k == 0) return bad("--top-k: bad value (an integer in 1..65536)");
        o.demo.top_k = o.top_k;
    }
    if (o.seed_set) o.demo.seed = o.seed;
    if (o.prompt_ids || o.chat || o.quantize != MOE_DTYPE_COUNT_)
        return bad("--prompt-ids, --chat and --quantize need a MODEL");
    return run_demo(&o);
}
