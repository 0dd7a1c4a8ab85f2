/*
 * moerun.h - the public API of moerun, a CPU-GPU scheduling runtime for
 * Mixture-of-Experts (MoE) language models.
 *
 * This header is the contract between moerun and its users. Everything a
 * host program may rely on is declared and documented here; everything else
 * in the source tree is internal and may change.
 *
 * Conventions
 * -----------
 * - Handles are opaque (moe_model_t, moe_runtime_t, moe_topology_t) and come
 *   in create/free pairs. A free function takes the address of the caller's
 *   pointer and sets it to NULL, so a second free of the same variable is a
 *   harmless no-op; freeing NULL is always allowed.
 * - Every call that can fail returns a moe_status. moe_status_str() turns a
 *   status into a sentence; moe_last_error() returns the details of the last
 *   failure on the calling thread (which argument, which file and line, ...).
 * - Parameter structs are obtained from *_default_params() functions and then
 *   edited, so fields added in later versions get sensible defaults without
 *   breaking callers. Their `struct_size` field records the size the caller
 *   was compiled with; leave it as the default function set it. moerun reads
 *   no more than struct_size bytes, refuses a struct smaller than this API
 *   version's, and ignores the fields of a larger one that it does not know.
 * - moerun keeps no global mutable state. The only per-thread state is the
 *   last-error message. Logging goes through a callback set per runtime.
 * - Matrices are row-major. Activations are f32. Expert weights keep the
 *   layout of HF safetensors: gate and up are [inter, hidden], down is
 *   [hidden, inter].
 *
 * Thread safety
 * -------------
 * Functions on different handles may be called concurrently. Calls on the
 * same moe_runtime_t must be serialized by the host (one inference loop
 * drives one runtime). While a forward submitted with
 * moe_layer_forward_submit() is in flight, the only calls allowed on that
 * runtime are moe_layer_wait() and moe_runtime_free() (which waits);
 * others return MOE_ERR_STATE. A moe_model_t may be shared by several
 * runtimes once all its experts are registered; registering experts or
 * routers while a runtime uses the model is not allowed. moe_status_str(),
 * moe_version() and moe_api_version() are always safe.
 *
 * Example: run one MoE layer of a registered model
 * ------------------------------------------------
 *     moe_model_t *m; moe_runtime_t *rt;
 *     moe_layer_desc d = moe_layer_desc_init(64, 2048, 1408, MOE_DTYPE_BF16);
 *     moe_model_create(&m, 26);
 *     for (uint32_t l = 0; l < 26; l++) {
 *         moe_model_set_layer(m, l, &d);
 *         for (uint32_t e = 0; e < 64; e++) moe_model_set_expert(m, l, e, &w[l][e]);
 *     }
 *     moe_runtime_params p = moe_runtime_default_params();
 *     if (moe_runtime_create(&rt, m, &p) != MOE_OK) fprintf(stderr, "%s\n", moe_last_error());
 *     moe_layer_forward(rt, 3, n_tokens, hidden, 6, topk_ids, topk_weights, out);
 *     moe_runtime_free(&rt); moe_model_free(&m);
 */
#ifndef MOERUN_H
#define MOERUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MOE_EXPORT
#else
#define MOE_EXPORT __attribute__((visibility("default")))
#endif

/* ------------------------------------------------------------------------ */
/* Versions                                                                 */
/* ------------------------------------------------------------------------ */

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0

/* API version of this header: bumped whenever a declaration changes in a way
 * that needs callers to be recompiled. Compare with moe_api_version() at run
 * time to detect a header/library mismatch.
 * 6: moe_dtype gains GGUF's block formats (MOE_DTYPE_Q4_0 .. MOE_DTYPE_MXFP4,
 *    after MOE_DTYPE_I8; earlier values unchanged) and moe_dtype_block(),
 *    moe_dtype_block_bytes(), moe_dtype_row_bytes(), moe_dtype_is_block(),
 *    moe_quantize(), moe_dequantize(); a layer's down matrices may take a
 *    dtype of their own (moe_model_set_down_dtype(), moe_model_down_dtype()). */
/* 7: moe_dtype gains MOE_DTYPE_FP8_E4M3 (after MOE_DTYPE_MXFP4).
 * 8: moe_routing gains bias, n_group and topk_group (DeepSeek-V3's and
 *    GLM-4.5's selection), after its earlier fields: a caller built
 *    against API 5-7 passes the shorter struct_size (20 bytes) and gets
 *    none of them; moe_routing_init is now moe_routing_defaults (the
 *    library keeps the old symbol, returning the old struct, for programs
 *    built against API 5-7); moe_route. */
#define MOE_API_VERSION 8

/* The library's version as "MAJOR.MINOR.PATCH". Never NULL. */
MOE_EXPORT const char *moe_version(void);

/* MOE_API_VERSION of the library that is actually loaded. */
MOE_EXPORT unsigned moe_api_version(void);

/* One line naming the build: version, build type, and the versions of the
 * libraries it was built against (hwloc, oneDNN, CUDA or "no CUDA").
 * Never NULL; the string is static. */
MOE_EXPORT const char *moe_build_info(void);

/* ------------------------------------------------------------------------ */
/* Status and errors                                                        */
/* ------------------------------------------------------------------------ */

typedef enum moe_status {
    MOE_OK = 0,
    MOE_ERR_INVALID_ARG,   /* a NULL pointer, a bad size, an id out of range */
    MOE_ERR_OUT_OF_MEMORY, /* host memory allocation failed */
    MOE_ERR_IO,            /* a file could not be opened, read or written */
    MOE_ERR_PARSE,         /* a file or string is malformed */
    MOE_ERR_UNSUPPORTED,   /* valid request this build or machine cannot do */
    MOE_ERR_STATE,         /* call not allowed in the handle's current state */
    MOE_ERR_DEVICE,        /* the GPU or its driver reported an error */
    MOE_ERR_NO_DEVICE,     /* a GPU was required and none is usable */
    MOE_ERR_INTERNAL,      /* a bug in moerun: please report it */
    MOE_STATUS_COUNT_      /* not a status: number of statuses */
} moe_status;

/* A sentence describing `s`, e.g. "invalid argument". Never NULL; unknown
 * values give "unknown status". */
MOE_EXPORT const char *moe_status_str(moe_status s);

/* Details of the most recent failed call made by this thread, e.g.
 * "topk_ids[5][0] = 70 is out of range (layer 2 has 64 experts)". Successful calls do not clear it. Never NULL; empty when no
 * call on this thread has failed. The string stays valid until the next
 * moerun call on this thread. */
MOE_EXPORT const char *moe_last_error(void);

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum moe_log_level {
    MOE_LOG_ERROR = 0,
    MOE_LOG_WARN,
    MOE_LOG_INFO,
    MOE_LOG_DEBUG
} moe_log_level;

/* A log sink. `msg` is one line without a trailing newline. Called from the
 * thread that made the moerun call. */
typedef void (*moe_log_fn)(moe_log_level level, const char *msg, void *user);

/* ------------------------------------------------------------------------ */
/* Data types                                                               */
/* ------------------------------------------------------------------------ */

typedef enum moe_dtype {
    MOE_DTYPE_F32 = 0,
    MOE_DTYPE_BF16,
    MOE_DTYPE_F16,
    /* int8 weights: symmetric s8 with one f32 scale per output row (the
     * weight of row j is scale[j] * q). Weights only; activations stay f32
     * at the API and are quantized per token inside the kernels. */
    MOE_DTYPE_I8,
    /* Block formats of GGUF files (API 6), stored as llama.cpp stores them:
     * a row is a whole number of blocks of 32 or 256 elements, each block
     * its quantized values with its own scales (docs/quantization.md gives
     * the layouts). The 32-element formats: */
    MOE_DTYPE_Q4_0,   /* 4-bit, f16 scale; 18 bytes per 32 */
    MOE_DTYPE_Q4_1,   /* 4-bit, f16 scale and min; 20 bytes per 32 */
    MOE_DTYPE_Q5_0,   /* 5-bit, f16 scale; 22 bytes per 32 */
    MOE_DTYPE_Q5_1,   /* 5-bit, f16 scale and min; 24 bytes per 32 */
    MOE_DTYPE_Q8_0,   /* 8-bit, f16 scale; 34 bytes per 32 */
    /* k-quants: super-blocks of 256 with quantized sub-block scales. */
    MOE_DTYPE_Q2_K,   /* 2-bit, 16 x 16, 4-bit scales and mins; 84 bytes per 256 */
    MOE_DTYPE_Q3_K,   /* 3-bit, 16 x 16, 6-bit scales; 110 bytes per 256 */
    MOE_DTYPE_Q4_K,   /* 4-bit, 8 x 32, 6-bit scales and mins; 144 bytes per 256 */
    MOE_DTYPE_Q5_K,   /* 5-bit, 8 x 32, 6-bit scales and mins; 176 bytes per 256 */
    MOE_DTYPE_Q6_K,   /* 6-bit, 16 x 16, 8-bit scales; 210 bytes per 256 */
    /* Non-linear 4-bit codebooks and microscaling FP4. */
    MOE_DTYPE_IQ4_NL, /* 16-value codebook, f16 scale; 18 bytes per 32 */
    MOE_DTYPE_IQ4_XS, /* the same codebook, 8 x 32, 6-bit scales; 136 bytes per 256 */
    MOE_DTYPE_MXFP4,  /* e2m1 values, shared power-of-two scale; 17 bytes per 32 */
    /* FP8 checkpoints (API 7): e4m3fn values in row-wise blocks of 128, an
     * f32 scale first; 132 bytes per 128. What the loader makes of an HF
     * checkpoint's F8_E4M3 weights and their 128 x 128 weight_scale_inv. */
    MOE_DTYPE_FP8_E4M3,
    MOE_DTYPE_COUNT_ /* not a dtype */
} moe_dtype;

/* "f32", "bf16", "f16", "int8", and for the block formats their names as
 * llama.cpp spells them: "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K",
 * "q3_K", "q4_K", "q5_K", "q6_K", "iq4_nl", "iq4_xs", "mxfp4"; "invalid" for
 * anything else. */
MOE_EXPORT const char *moe_dtype_name(moe_dtype t);

/* Bytes per element of the element types (f32 4, bf16 and f16 2, int8 1);
 * 0 for the block formats, whose elements have no whole number of bytes
 * (use moe_dtype_row_bytes()), and 0 for an invalid dtype. */
MOE_EXPORT size_t moe_dtype_size(moe_dtype t);

/* Elements per block: 1 for the element types, 32 or 256 for the block
 * formats; 0 for an invalid dtype. */
MOE_EXPORT size_t moe_dtype_block(moe_dtype t);

/* Bytes per block (for the element types, bytes per element); 0 for an
 * invalid dtype. */
MOE_EXPORT size_t moe_dtype_block_bytes(moe_dtype t);

/* Bytes of a row of n elements: n / block * block bytes. 0 when n is not a
 * whole number of blocks, when the size would overflow, or for an invalid
 * dtype (and for n = 0). Int8 rows count their int8 codes only, not their
 * row scales. */
MOE_EXPORT size_t moe_dtype_row_bytes(moe_dtype t, size_t n);

/* 1 for the block formats (Q4_0 .. MXFP4), 0 for the element types and
 * invalid dtypes. */
MOE_EXPORT int moe_dtype_is_block(moe_dtype t);

/* n f32 values to block format t's blocks, byte for byte as llama.cpp's
 * GGUF files store them (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and MXFP4 exactly as
 * gguf-py quantizes; the k-quants and IQ4 formats with moerun's own
 * quantizers; docs/quantization.md). n must be a whole number of blocks;
 * `blocks` holds moe_dtype_row_bytes(t, n) bytes. NaN and Inf quantize as
 * 0. For hosts that hold f32 or bf16 weights and want moerun's quantized
 * kernels (API 6). */
MOE_EXPORT moe_status moe_quantize(moe_dtype t, const float *x, void *blocks, size_t n);

/* n elements of block format t back to f32 (as gguf-py dequantizes). */
MOE_EXPORT moe_status moe_dequantize(moe_dtype t, const void *blocks, float *y, size_t n);

/* ------------------------------------------------------------------------ */
/* Machine topology                                                         */
/* ------------------------------------------------------------------------ */

typedef struct moe_topology moe_topology_t;

/* What the scheduler needs to know about the host. */
typedef struct moe_topology_info {
    uint32_t n_packages;  /* sockets */
    uint32_t n_numa_nodes;/* at least 1 */
    uint32_t n_cores;     /* physical cores */
    uint32_t n_pus;       /* hardware threads */
    uint64_t l3_bytes;    /* largest last-level cache, 0 if unknown */
    uint64_t memory_bytes;/* total host memory, 0 if unknown */
    uint32_t has_avx2, has_avx512f, has_avx512_bf16, has_avx512_vnni, has_amx;
} moe_topology_info;

/* Detects the host's topology with hwloc and its CPU features with cpuid. */
MOE_EXPORT moe_status moe_topology_detect(moe_topology_t **out);

/* Builds a topology from an hwloc synthetic description such as
 * "pack:2 numa:1 core:8 pu:2", to plan for or test against a machine other
 * than this one. CPU features are those of this host. */
MOE_EXPORT moe_status moe_topology_synthetic(moe_topology_t **out, const char *desc);

MOE_EXPORT moe_status moe_topology_get_info(const moe_topology_t *t, moe_topology_info *out);

/* Number of cores in NUMA node `node` (0 .. n_numa_nodes-1). */
MOE_EXPORT moe_status moe_topology_node_cores(const moe_topology_t *t, uint32_t node, uint32_t *out);

MOE_EXPORT void moe_topology_free(moe_topology_t **t);

/* The CPU engine's kernel for experts with weights of dtype `t` at decode
 * (a few tokens per expert) on this machine, chosen at run time from the
 * CPU's features: "avx512_bf16" (bf16 dot products), "avx512_vnni" (int8),
 * "avx512", or "c", the portable kernel. Larger batches may run on AMX
 * tiles (moe_topology_info.has_amx) or oneDNN (docs/cpu-engine.md). Never
 * NULL; "" for an unknown dtype. The string is static. */
MOE_EXPORT const char *moe_cpu_kernel(moe_dtype t);

/* ------------------------------------------------------------------------ */
/* Models: experts registered once                                          */
/* ------------------------------------------------------------------------ */

typedef struct moe_model moe_model_t;

/* Shape of one MoE layer's routed experts. All experts of a layer share it. */
typedef struct moe_layer_desc {
    uint32_t struct_size;
    uint32_t n_experts;   /* routed experts in the layer */
    uint32_t hidden;      /* model width */
    uint32_t inter;       /* expert intermediate width */
    moe_dtype weight_dtype;
} moe_layer_desc;

/* A filled layer description. */
MOE_EXPORT moe_layer_desc moe_layer_desc_init(uint32_t n_experts, uint32_t hidden,
                                              uint32_t inter, moe_dtype weight_dtype);

/* Weights of one SwiGLU expert: out = down(silu(gate(x)) * up(x)).
 * gate and up: [inter, hidden]; down: [hidden, inter]; row-major, contiguous,
 * in the layer's weight dtype (down: its down dtype). A block format's row
 * is its blocks as a GGUF file stores them (moe_dtype_row_bytes bytes), so
 * a GGUF tensor's memory registers as it is. The memory is borrowed, not
 * copied: it must stay valid and unchanged until the model is freed (for
 * example a memory-mapped safetensors or GGUF file). */
typedef struct moe_expert_weights {
    const void *gate;
    const void *up;
    const void *down;
    /* MOE_DTYPE_I8 matrices only (NULL otherwise): f32 scales, one per
     * output row: gate_scale and up_scale [inter], down_scale [hidden].
     * Borrowed like the weights. */
    const float *gate_scale;
    const float *up_scale;
    const float *down_scale;
} moe_expert_weights;

/* Creates an empty model of `n_layers` MoE layers (1 .. 4096). Layer
 * numbers in this API count MoE layers only, from 0. */
MOE_EXPORT moe_status moe_model_create(moe_model_t **out, uint32_t n_layers);

/* Describes layer `layer`. Each layer is described once. */
MOE_EXPORT moe_status moe_model_set_layer(moe_model_t *m, uint32_t layer, const moe_layer_desc *desc);

/* Registers the weights of expert `expert` of a described layer. Every
 * expert of every layer must be registered before a runtime is created on
 * the model; registering one twice is an error. */
MOE_EXPORT moe_status moe_model_set_expert(moe_model_t *m, uint32_t layer, uint32_t expert,
                                           const moe_expert_weights *w);

/* Puts layer `layer`'s down matrices in `dtype` while gate and up stay in
 * the layer's weight_dtype (API 6): GGUF files mix formats per tensor, as
 * llama.cpp's Q4_K_M keeps ffn_down in q6_K in some layers, and a row that
 * is not a whole number of 256-element blocks in q5_0 or q8_0. Once per
 * layer, after moe_model_set_layer and before its experts are registered;
 * down's rows of `inter` elements must be whole blocks of dtype (checked
 * when a runtime is created if this is never called). */
MOE_EXPORT moe_status moe_model_set_down_dtype(moe_model_t *m, uint32_t layer, moe_dtype dtype);

/* The dtype of layer `layer`'s down matrices; MOE_DTYPE_COUNT_ for a bad
 * handle or a layer not described. */
MOE_EXPORT moe_dtype moe_model_down_dtype(const moe_model_t *m, uint32_t layer);

/* How a layer turns router logits into its top_k experts and their gate
 * weights (moe_layer_forward_logits, moe_hint_next):
 *   probabilities  softmax over all experts' logits, or each logit's
 *                  sigmoid (scoring)
 *   selection      each expert's probability plus bias[e] when bias is
 *                  set (DeepSeek-V3's e_score_correction_bias), used to
 *                  choose and never as a weight; with n_group > 1 the
 *                  experts are n_group equal groups of consecutive ids,
 *                  each group scored by the sum of its two best selection
 *                  scores, and only the topk_group best groups compete
 *                  (topk_method "noaux_tc")
 *   experts        the top_k best selection scores among those, ties to
 *                  the lower id
 *   weights        their probabilities (without the bias), renormalised
 *                  to sum to 1 if norm_topk, then times scale
 * Mixtral, Qwen3-MoE and OLMoE: softmax, norm_topk on; Qwen1.5/2-MoE:
 * softmax, norm_topk off; DeepSeek-V2: softmax, norm_topk off, scale =
 * routed_scaling_factor; DeepSeek-V3/R1: sigmoid, bias, 8 groups,
 * topk_group 4, norm_topk on, scale = routed_scaling_factor (Kimi-K2 the
 * same with 1 group). */
typedef enum moe_scoring { MOE_SCORING_SOFTMAX = 0, MOE_SCORING_SIGMOID, MOE_SCORING_COUNT_ } moe_scoring;

typedef struct moe_routing {
    uint32_t struct_size;
    uint32_t top_k;       /* 1 .. the layer's experts */
    moe_scoring scoring;  /* default softmax */
    int32_t norm_topk;    /* default 1 */
    float scale;          /* default 1 */
    /* API 8 */
    const float *bias;    /* [n_experts] selection bias, or NULL (default); borrowed like the router weights */
    uint32_t n_group;     /* 0 or 1 (default): no groups; else divides the layer's experts, >= 2 experts each */
    uint32_t topk_group;  /* groups kept, 1 .. n_group, with top_k <= topk_group experts per group x groups */
} moe_routing;

/* Softmax, top_k, renormalised, scale 1, no bias, no groups. */
MOE_EXPORT moe_routing moe_routing_defaults(uint32_t top_k);
/* API 5-7's name for it. The library's symbol of that name returns the
 * struct as it was then (up to scale), for programs built against those
 * headers; this header maps the name to moe_routing_defaults. */
#define moe_routing_init(top_k) moe_routing_defaults(top_k)

/* Routes n_tokens tokens by rule r from their router logits [n_tokens,
 * n_experts]: ids and weights [n_tokens, r->top_k] (API 8), for a host
 * that computes routing itself; the rule is checked as by
 * moe_model_set_router. */
MOE_EXPORT moe_status moe_route(const moe_routing *r, uint32_t n_experts, uint32_t n_tokens, const float *logits,
                                int32_t *ids, float *weights);

/* Registers layer `layer`'s router (API 5): its routing rule and,
 * optionally, its weights [n_experts, hidden] row-major in `dtype` (f32,
 * bf16 or f16; borrowed like expert weights), so that moerun can compute
 * this layer's routing from router logits (moe_layer_forward_logits) and,
 * with weights, predict it from an earlier layer's hidden state
 * (moe_hint_next). Optional; once per layer, after moe_model_set_layer. */
MOE_EXPORT moe_status moe_model_set_router(moe_model_t *m, uint32_t layer, const moe_routing *routing,
                                           const void *weights, moe_dtype dtype);

MOE_EXPORT uint32_t moe_model_n_layers(const moe_model_t *m);

/* Copies the description of `layer` into `out`. */
MOE_EXPORT moe_status moe_model_get_layer(const moe_model_t *m, uint32_t layer, moe_layer_desc *out);

/* Bytes of routed-expert weights in the whole model (UINT64_MAX if the sum
 * does not fit). */
MOE_EXPORT uint64_t moe_model_expert_bytes(const moe_model_t *m);

/* Drops the caller's reference and sets *m to NULL. Runtimes created on the
 * model hold their own reference, so the model lives until the last of them
 * is freed; the expert weights must stay valid until then too. */
MOE_EXPORT void moe_model_free(moe_model_t **m);

/* ------------------------------------------------------------------------ */
/* Runtimes: the scheduler and executors for one inference loop             */
/* ------------------------------------------------------------------------ */

typedef struct moe_runtime moe_runtime_t;

typedef enum moe_device_kind {
    MOE_DEVICE_AUTO = 0, /* the best device this build and machine can run */
    MOE_DEVICE_CPU,      /* every expert on the CPU */
    /* A simulated GPU (docs/devices.md): the scheduler splits each layer
     * between the CPU and a GPU modeled from the profile's [gpu] and [link]
     * figures, whose experts are computed on the CPU with the same results.
     * Needs a profile with a GPU (profile_path, e.g. one of
     * profiles/machines/ref-*.txt with profile_any_host). */
    MOE_DEVICE_SIM,
    /* CUDA device 0 (API 5), driven by the same executor as sim and
     * planned with the profile's [gpu] and [link] figures, which
     * moe-profile measures on a machine with a GPU. MOE_ERR_UNSUPPORTED in
     * a build without CUDA or on a machine without a GPU. "auto" does not
     * choose it yet: this executor has not yet been run on a real GPU
     * (docs/devices.md says which GPU checks are still compile-only). */
    MOE_DEVICE_CUDA,
    MOE_DEVICE_COUNT_    /* not a device */
} moe_device_kind;

/* "auto", "cpu", "sim", "cuda"; "invalid" otherwise. */
MOE_EXPORT const char *moe_device_name(moe_device_kind d);

typedef struct moe_runtime_params {
    uint32_t struct_size;       /* set by moe_runtime_default_params() */
    moe_device_kind device;     /* default MOE_DEVICE_AUTO */
    /* Scheduling policy by name; NULL or "auto" picks the best policy the
     * device supports. moe_policy_names() lists the known names. */
    const char *policy;
    uint32_t n_threads;         /* CPU expert threads; 0 = one per core */
    /* GPU expert-cache budget: bytes if gpu_budget_bytes > 0, else this
     * fraction (0..1) of the model's routed-expert bytes. Ignored on CPU. */
    uint64_t gpu_budget_bytes;
    /* Default -1 (unset, API 5): the profile's [tuning] gpu_budget, else
     * 0.5. */
    double gpu_budget_fraction;
    /* Topology to plan for; NULL = detect this host. Borrowed: must outlive
     * moe_runtime_create() only (the runtime keeps a copy of what it needs). */
    const moe_topology_t *topology;
    moe_log_fn log_fn;          /* NULL = write to stderr */
    void *log_user;
    moe_log_level log_level;    /* messages above this level are dropped; default WARN */
    /* Machine profile written by moe-profile (docs/profiles.md), whose
     * measured costs the scheduler plans with and whose [tuning] section
     * sets the policy and CPU threads where these params leave them unset.
     * NULL = the default file ($MOE_PROFILE, else
     * $XDG_CACHE_HOME/moerun/profile.txt or ~/.cache/moerun/profile.txt)
     * if there is one; "" = none. A named file that is missing, invalid or
     * measured on another host fails creation with a message naming it (the
     * default file only logs a warning and is not used). */
    const char *profile_path;
    int profile_any_host;       /* non-zero: use a profile of another host or library version anyway */
    /* Records the routing of every forward pass (layers called in order 0,
     * 1, ..., last for the same tokens) and writes it as a moe-trace v1
     * file (docs/scheduling.md) when the runtime is freed; NULL = no. A
     * host that calls layers out of order gets a warning and no trace. */
    const char *record_trace_path;
    /* API 5: the host's CUDA stream (a cudaStream_t), or NULL. With device
     * cuda, moerun's GPU work for a layer waits on the GPU for the work
     * the host queued on this stream before the layer's call (an event,
     * never a host-side synchronisation), so a host whose attention runs
     * on its own stream can call moerun without synchronising first.
     * Ignored on other devices. */
    void *cuda_stream;
} moe_runtime_params;

MOE_EXPORT moe_runtime_params moe_runtime_default_params(void);

/* The policy names this build knows, as a NULL-terminated array. */
MOE_EXPORT const char *const *moe_policy_names(void);

/* Creates a runtime that runs `model`'s MoE layers. `params` may be NULL for
 * the defaults. Fails with MOE_ERR_STATE if an expert of the model is not
 * registered yet, MOE_ERR_UNSUPPORTED if the requested device or policy is
 * not available in this build or on this machine (a policy that places
 * experts on a GPU, such as "fiddler", on a runtime whose device is the CPU).
 * With MOE_DEVICE_CPU no GPU is touched: no CUDA context is created. */
MOE_EXPORT moe_status moe_runtime_create(moe_runtime_t **out, moe_model_t *model,
                                         const moe_runtime_params *params);

/* Frees the runtime, waits for nothing (no work is left in flight after a
 * synchronous call) and sets *rt to NULL. */
MOE_EXPORT void moe_runtime_free(moe_runtime_t **rt);

/* The profile file the runtime plans with, "" if none. */
MOE_EXPORT const char *moe_runtime_profile(const moe_runtime_t *rt);

/* What the profile predicts one expert of `layer` costs on the CPU for
 * n_tokens tokens, in microseconds (its measured curve, or a roofline
 * from this machine's measured rates); negative without a profile. */
MOE_EXPORT double moe_runtime_cpu_cost_us(const moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens);

/* How many MoE layers ahead the runtime wants routing predictions
 * (moe_runtime_predict) to copy experts to the GPU early: 0 when it has no
 * use for them (on the CPU, or a policy without prefetch). */
MOE_EXPORT uint32_t moe_runtime_lookahead(const moe_runtime_t *rt);

/* Tells the runtime what the host predicts MoE layer `layer` will route
 * its next n_tokens tokens to (topk_ids [n_tokens, top_k], as
 * moe_layer_forward takes them), typically that layer's router applied to
 * an earlier layer's hidden state, as HybriMoE does. During the forward of
 * the layers before it (up to moe_runtime_lookahead() ahead) the scheduler
 * copies the experts whose early presence cuts the most time (impact-driven
 * prefetch); the prediction is used until `layer` itself runs. Optional:
 * without predictions nothing is prefetched; a no-op where the lookahead
 * is 0. MOE_ERR_INVALID_ARG for a layer, id or size out of range. */
MOE_EXPORT moe_status moe_runtime_predict(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, uint32_t top_k,
                                          const int32_t *topk_ids);

/* The device and policy the runtime resolved "auto" to. */
MOE_EXPORT moe_device_kind moe_runtime_device(const moe_runtime_t *rt);
MOE_EXPORT const char *moe_runtime_policy(const moe_runtime_t *rt);

/* Runs MoE layer `layer` for a batch of `n_tokens` tokens.
 *   hidden:       [n_tokens, hidden] f32 inputs (after the layer's norm)
 *   topk_ids:     [n_tokens, top_k] routed expert ids in [0, n_experts);
 *                 a token's ids must be distinct
 *   topk_weights: [n_tokens, top_k] gate weights (already normalised as the
 *                 model wants; moerun applies them as given)
 *   out:          [n_tokens, hidden] f32, overwritten with
 *                 sum_j topk_weights[t,j] * expert_{topk_ids[t,j]}(hidden[t])
 * `out` must not overlap `hidden`. The sum over j is taken in index order,
 * so the result does not depend on how experts were split between devices.
 * n_tokens == 0 is allowed and does nothing; n_tokens * top_k may not
 * exceed 2^32. NaN or Inf in the inputs
 * propagate to the outputs of the tokens that carry them. */
MOE_EXPORT moe_status moe_layer_forward(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens,
                                        const float *hidden, uint32_t top_k,
                                        const int32_t *topk_ids, const float *topk_weights,
                                        float *out);

/* moe_layer_forward with the routing computed from the host's router
 * logits [n_tokens, n_experts] (f32) by the layer's registered rule
 * (moe_model_set_router): the host keeps its own router matmul.
 * MOE_ERR_STATE if the layer has no routing rule. */
MOE_EXPORT moe_status moe_layer_forward_logits(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens,
                                               const float *hidden, const float *router_logits, float *out);

/* Asynchronous forms: moe_layer_forward_submit() checks its arguments,
 * starts the same work as moe_layer_forward() on a thread of the runtime
 * and returns, so the host can do other work (its attention on its own
 * GPU stream, the next layer's dense parts) meanwhile; moe_layer_wait()
 * blocks until it is done and returns its status. One forward in flight
 * per runtime; hidden, topk_ids, topk_weights and out must stay valid and
 * unchanged until moe_layer_wait() returns (moerun does not copy them).
 * Submitting while one is in flight, or waiting with none, is
 * MOE_ERR_STATE. */
MOE_EXPORT moe_status moe_layer_forward_submit(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens,
                                               const float *hidden, uint32_t top_k, const int32_t *topk_ids,
                                               const float *topk_weights, float *out);
MOE_EXPORT moe_status moe_layer_wait(moe_runtime_t *rt);

/* Lets the prefetcher look ahead (HybriMoE's router lookahead): `hidden`
 * [n_tokens, hidden] is the input of MoE layer `layer` (as passed to its
 * forward); moerun applies the registered router weights of the next
 * layers, up to moe_runtime_lookahead() of them, to it and predicts their
 * routing (moe_runtime_predict). Call it before layer `layer`'s forward.
 * A no-op where the lookahead is 0 or the next layers have no router
 * weights. */
MOE_EXPORT moe_status moe_hint_next(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden);

/* A dense projection on the runtime's CPU threads, with the CPU engine's
 * kernels: for a model's work around the experts (attention, shared
 * experts, dense MLPs, the LM head), so a host loop need not bring its own
 * BLAS.
 *   w:      [rows, cols] row-major, contiguous, in `dtype`; borrowed for
 *           the call only (a memory-mapped file is fine)
 *   row_scales: MOE_DTYPE_I8 only (NULL otherwise): one f32 per row
 *   x:      [n_tokens, cols] f32;  y: [n_tokens, rows] f32, overwritten:
 *           y[t, r] = sum_c w[r, c] * x[t, c]
 * y must not overlap x. Decode-sized batches (up to 4 tokens) stream the
 * weights through the GEMV kernels; larger ones use AMX tiles where the CPU
 * has them. Activations are rounded as the expert kernels round them (bf16
 * for bf16 weights on AVX512-BF16, u8 per token for int8). Not counted in
 * moe_stats. */
MOE_EXPORT moe_status moe_dense_matmul(moe_runtime_t *rt, const void *w, moe_dtype dtype, const float *row_scales,
                                       uint32_t rows, uint32_t cols, uint32_t n_tokens, const float *x, float *y);

/* Counters since creation or the last moe_runtime_reset_stats(). */
typedef struct moe_stats {
    uint64_t layer_calls;      /* moe_layer_forward calls that ran */
    uint64_t tokens;           /* tokens summed over those calls */
    uint64_t expert_calls_cpu; /* (layer, expert) groups run on the CPU */
    uint64_t expert_calls_gpu; /* ... and on the GPU */
    uint64_t expert_tokens;    /* token-expert pairs computed */
    uint64_t gpu_hits;         /* GPU expert calls whose expert was resident */
    uint64_t gpu_misses;       /* GPU expert calls that needed a copy */
    uint64_t bytes_copied;     /* host-to-device expert bytes */
    double plan_seconds;       /* time spent planning */
    double cpu_seconds;        /* wall time of CPU expert execution */
    double gpu_seconds;        /* wall time waiting for the GPU's experts once the CPU's were done */
    double total_seconds;      /* wall time inside moe_layer_forward */
    /* ---- API 5: the GPU's streams and their overlap with the CPU ----
     * Busy time of the GPU's copy and compute streams, measured with
     * device events (on the simulated device: modeled from the profile, on
     * the host's clock). Over the layer calls that ran experts on the GPU
     * ("hybrid" layers): their span, from gathering the inputs to the last
     * expert done on either side, and their serial time, the CPU's expert
     * time plus the layer's own copies and GPU runs as if run one after
     * another. serial / span is the overlap: 1 when nothing overlapped,
     * up to 3 when copies, GPU and CPU all ran at once. Copies still in
     * flight (prefetches) are counted when a later layer call sees them
     * complete. */
    double gpu_copy_seconds;    /* host-to-device expert copies, prefetches included */
    double gpu_compute_seconds; /* GPU expert runs, activations in and out included */
    uint64_t hybrid_layers;     /* layer calls that ran experts on the GPU */
    double hybrid_span_seconds;
    double hybrid_serial_seconds;
    uint64_t gpu_redone;        /* GPU expert calls that failed and were recomputed on the CPU */
    /* Routing predictions (moe_runtime_predict) scored when their layer
     * runs, by distance: [d - 1] for predictions made d layers ahead
     * (before the forward of layer target - d). pairs: predicted
     * token-expert pairs; hits: those the real routing had. hits / pairs
     * is the predictor's accuracy, which the prefetcher weighs its
     * predictions with (from published figures until measured). */
    uint64_t lookahead_pairs[4];
    uint64_t lookahead_hits[4];
    /* Online refinement (not counters: their current values; 0 on the
     * CPU-only runtime): the measured CPU expert and GPU run times over
     * what the profile says for the same work, a running mean bounded to
     * 1/8..8, by which the scheduler scales the profile's costs. Far from
     * 1 on the real device, it says the profile no longer fits the
     * machine: run moe-profile again. */
    double cpu_cost_scale;
    double gpu_cost_scale;
} moe_stats;

/* Copies the counters into out, whose size the caller gives (sizeof *out):
 * a caller built against an earlier header gets the fields it knows. */
MOE_EXPORT moe_status moe_runtime_stats(const moe_runtime_t *rt, moe_stats *out, size_t out_size);
/* API 4's entry point (the fields up to total_seconds), kept for programs
 * built against it; this header maps it to moe_runtime_stats. */
MOE_EXPORT moe_status moe_runtime_get_stats(const moe_runtime_t *rt, moe_stats *out);
#define moe_runtime_get_stats(rt, out) moe_runtime_stats((rt), (out), sizeof *(out))
MOE_EXPORT moe_status moe_runtime_reset_stats(moe_runtime_t *rt);

#ifdef __cplusplus
}
#endif

#endif /* MOERUN_H */
