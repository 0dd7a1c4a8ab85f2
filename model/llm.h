/* llm.h - a Mixture-of-Experts language model run end to end: weights
 * mapped from a Hugging Face model directory (config.json and safetensors)
 * or a GGUF file (its block formats used as they are stored),
 * the dense parts (embeddings, attention with a KV cache, norms, shared
 * experts, dense MLPs, LM head) computed here on the CPU, and every routed
 * expert run by a moerun runtime through the public API
 * (moe_layer_forward), exactly as a host inference loop would.
 *
 * Architectures (config.json model_type):
 *   mixtral      softmax over the router, top-k, renormalised
 *   qwen2_moe    q/k/v biases; a shared expert scaled by sigmoid(gate . x);
 *                top-k renormalised only if norm_topk_prob
 *   qwen3_moe    RMSNorm of each head of q and k before RoPE
 *   olmoe        RMSNorm of the whole q and k projections before RoPE
 *   deepseek_v2  multi-head latent attention (q LoRA optional) with YaRN,
 *                shared experts, dense first layers, routed_scaling_factor
 *   deepseek_v3  (DeepSeek-V3/R1, Moonlight; Kimi-K2's model_type kimi_k2
 *                is the same architecture, n_group 1) deepseek_v2's
 *                attention and layers; sigmoid router scores, the
 *                e_score_correction_bias for selection only, group-limited
 *                top-k (noaux_tc), renormalised and scaled; its
 *                multi-token-prediction layers are not loaded
 *   glm4_moe     (GLM-4.5, 4.5-Air, 4.6) GQA with q/k/v biases
 *                (attention_bias), RMSNorm of each q and k head
 *                (use_qk_norm), RoPE on the first partial_rotary_factor of
 *                each head (halves); deepseek_v3's routing and shared
 *                experts; its MTP layers are not loaded
 * Sliding-window attention where the config asks for it (docs/models.md).
 * Anything else, or a feature of these that is not implemented (other
 * routing methods, other RoPE scalings, linear-attention layers), is
 * refused with MOE_ERR_UNSUPPORTED naming the key or type.
 *
 * The KV cache holds ctx positions: keys and values per layer (for MLA,
 * the compressed latent and the rotated key part, 576 floats per position
 * for DeepSeek-V2-Lite, attended in absorbed form). */
#ifndef MOE_MODEL_LLM_H
#define MOE_MODEL_LLM_H

#include "gguf.h"
#include "hf_config.h"
#include "moerun.h"
#include "ops.h"

typedef enum moe_arch {
    MOE_ARCH_MIXTRAL,
    MOE_ARCH_QWEN2_MOE,
    MOE_ARCH_QWEN3_MOE,
    MOE_ARCH_OLMOE,
    MOE_ARCH_DEEPSEEK_V2,
    MOE_ARCH_DEEPSEEK_V3,
    MOE_ARCH_GLM4_MOE,
} moe_arch;

typedef struct moe_llm moe_llm;

typedef struct moe_llm_params {
    uint32_t ctx; /* KV cache positions; 0 = min(max_position_embeddings, 4096) */
    /* Read every page of the weight files at load (instead of on first
     * use), calling progress (if set) as it goes: bytes read of total. */
    bool prefault;
    void (*progress)(uint64_t done, uint64_t total, void *user);
    void *progress_user;
    /* A block format (moe-run --quantize): routed experts and dense
     * projections (attention, shared experts, dense MLPs, embeddings, LM
     * head) held in f32, f16 or bf16 are quantized to it at load, one
     * matrix at a time, into buffers the model owns; rows that are not
     * whole blocks of it fall back as moe_llm_quantized_type says. Routers,
     * norms, biases and tensors already in a block format stay as they
     * are. Anything else (0, f32): nothing is quantized. */
    moe_dtype quantize;
    /* Leave out the load-time check of every block's scales for NaN and
     * Inf (moe-run --lazy: it would read the whole file). */
    bool skip_scale_check;
} moe_llm_params;

/* What --quantize makes of a matrix in `have` whose rows are `cols` long
 * when asked for `want`: want; where a row is not a whole number of its
 * blocks, llama-quantize's fallback (q2_K and q3_K -> q4_0, q4_K -> q5_0,
 * q5_K -> q5_1, q6_K -> q8_0, iq4_xs -> iq4_nl) if that fits; otherwise,
 * or if `have` is a block format already, `have`. */
moe_dtype moe_llm_quantized_type(moe_dtype want, moe_dtype have, uint32_t cols);

/* Loads the model in directory `path` (config.json + model.safetensors or
 * its sharded index) or GGUF file `path`. Weights stay in the files'
 * memory maps, except those quantized at load (params->quantize). A GGUF's
 * block tensors are checked for NaN or infinite scales as they are taken
 * (MOE_ERR_PARSE "file: tensor \"name\": block N ... has a NaN or
 * infinite scale"), unless params->skip_scale_check. */
moe_status moe_llm_load(moe_llm **out, const char *path, const moe_llm_params *params);
void moe_llm_free(moe_llm **m);

/* The moe_model_t whose experts the loader registered (owned by the llm):
 * create the runtime on it. */
moe_model_t *moe_llm_model(const moe_llm *m);
const moe_hf_config *moe_llm_config(const moe_llm *m);
uint32_t moe_llm_vocab(const moe_llm *m);
uint32_t moe_llm_ctx(const moe_llm *m);
const char *moe_llm_arch_name(const moe_llm *m);
/* The GGUF file the model was loaded from (its metadata holds the
 * tokenizer), or NULL for a safetensors directory. */
const moe_gguf *moe_llm_gguf(const moe_llm *m);

/* Bytes of weights the model uses (all tensors, as mapped or as
 * quantized at load). */
uint64_t moe_llm_weight_bytes(const moe_llm *m);

/* Runs n tokens at positions pos0 .. pos0+n-1 (after the pos0 already in
 * the cache; pos0 + n <= ctx, else MOE_ERR_INVALID_ARG naming both) through
 * every layer with runtime `rt`, which must have been created on
 * moe_llm_model(m). logits: [n, vocab] if all_logits, else [vocab] for the
 * last token. Positions at and after pos0 in the cache are overwritten:
 * rewinding is calling again with a smaller pos0. */
moe_status moe_llm_forward(moe_llm *m, moe_runtime_t *rt, const int32_t *tokens, uint32_t n, uint32_t pos0,
                           bool all_logits, float *logits);

#endif
