/* hf_config.h - the shape of an MoE model, read from its Hugging Face
 * config.json (Mixtral, OLMoE, Qwen1.5/2/3-MoE, DeepSeek-V2/V3 style keys).
 *
 * Units: every size is a count of elements (not bytes): widths in scalars,
 * attn_params in weights; the dtype the weights are stored in is only
 * reported (torch_dtype), never applied.
 *
 * Keys read (HF semantics; an optional key that is absent or null takes its
 * default, a required key that is null counts as the wrong type):
 *   model_type             required string, at most 63 bytes
 *   hidden_size, num_hidden_layers, num_attention_heads, vocab_size,
 *   intermediate_size, num_experts_per_tok                        required
 *   n_routed_experts: num_local_experts (Mixtral), else num_experts (OLMoE,
 *     Qwen), else n_routed_experts (DeepSeek); the first present is used
 *   moe_inter: moe_intermediate_size, else intermediate_size (Mixtral and
 *     OLMoE, whose intermediate_size is the expert's)
 *   dense_inter: intermediate_size (the MLP of a dense layer)
 *   n_shared_experts: n_shared_experts (DeepSeek), else 1 if
 *     shared_expert_intermediate_size > 0 (Qwen), else 0
 *   shared_inter: the total intermediate width of the shared expert(s):
 *     shared_expert_intermediate_size, else n_shared_experts *
 *     moe_intermediate_size (DeepSeek builds its shared experts as one MLP
 *     of that width), else 0
 *   torch_dtype: torch_dtype, else dtype (newer transformers), else ""
 *   fp8: quantization_config is {"quant_method": "fp8", "fmt": "e4m3",
 *     "weight_block_size": [128, 128], ...} (DeepSeek-V3, Qwen3 "-FP8");
 *     any other quantization_config (another method, format or block) is
 *     refused, naming the key
 *
 * MoE layers (0-based l), the union of both families' rules, whose defaults
 * make every layer an MoE layer:
 *   DeepSeek: l >= first_k_dense_replace (0) and l % moe_layer_freq (1) == 0
 *   Qwen:     (l + 1) % decoder_sparse_step (1) == 0 and l not in
 *             mlp_only_layers ([])
 * A config with no MoE layer is refused: this reader is for MoE models.
 *
 * attn_params: weights of one layer's attention projections; biases and
 * q/k/kv norm weights are left out (well under 0.1% of them).
 *   Standard (GQA/MHA), d = head_dim (default hidden / heads), H = heads,
 *   K = num_key_value_heads (default H, must divide H):
 *     q: hidden*H*d + k,v: 2*hidden*K*d + o: H*d*hidden
 *   DeepSeek MLA (kv_lora_rank present), qd = qk_nope_head_dim +
 *   qk_rope_head_dim:
 *     q: hidden*H*qd when q_lora_rank is null (0 here), else
 *        hidden*q_lora_rank + q_lora_rank*H*qd
 *     kv_a: hidden*(kv_lora_rank + qk_rope_head_dim)
 *     kv_b: kv_lora_rank*H*(qk_nope_head_dim + v_head_dim)
 *     o:    H*v_head_dim*hidden
 *   e.g. DeepSeek-V2-Lite: 6291456 + 1179648 + 2097152 + 4194304 = 13762560.
 *
 * Forward-pass keys (absent or null: the default in brackets):
 *   rms_norm_eps [1e-6], max_position_embeddings [4096],
 *   routed_scaling_factor [1], tie_word_embeddings [false],
 *   hidden_act ["silu"], scoring_func ["softmax"; deepseek_v3 and glm4_moe
 *   "sigmoid"], topk_method ["greedy"; deepseek_v3 and glm4_moe "noaux_tc"],
 *   n_group [1] and topk_group [1] (n_group must divide the experts into
 *   groups of at least 2, topk_group in 1..n_group, num_experts_per_tok at
 *   most topk_group groups' experts), num_nextn_predict_layers [0],
 *   rope_interleave [true], attention_bias [false], use_qk_norm [false],
 *   partial_rotary_factor [1] (top level or in rope_parameters, in (0, 1]),
 *   bos_token_id, eos_token_id (an integer or a list) [-1];
 *   sliding_window [0: none] when use_sliding_window [false for
 *   qwen2_moe and qwen3_moe, true otherwise] holds (never for olmoe, whose
 *   transformers mask is plain causal); layer_types ("full_attention",
 *   "sliding_attention") names the sliding layers, else qwen2_moe's rule
 *   (even layers below max_window_layers [28]) or every layer;
 *   norm_topk_prob: always true for Mixtral (its router renormalises with
 *     no key for it), else the key [false];
 *   RoPE: rope_theta [10000] and rope_scaling {type or rope_type, factor,
 *     original_max_position_embeddings, beta_fast [32], beta_slow [1],
 *     mscale [1], mscale_all_dim [0]}, or the same in rope_parameters
 *     (transformers 5 writes rope_theta there too); rope_type "default"
 *     when there is no scaling. Which of these a model can run is the
 *     loader's decision (llm.c), not this reader's.
 *
 * Errors are MOE_ERR_PARSE "file:LINE: what is wrong": LINE is the line of
 * the offending value, or 1 for a missing key (the message names the key);
 * MOE_ERR_IO when the file cannot be read. */
#ifndef MOE_MODEL_HF_CONFIG_H
#define MOE_MODEL_HF_CONFIG_H

#include "moerun.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits on what is accepted: far above any released model, low enough
 * that no product below overflows (attn_params < 2^52, shared_inter < 2^31). */
#define MOE_HF_MAX_LAYERS 1024
#define MOE_HF_MAX_HIDDEN (1u << 20)
#define MOE_HF_MAX_INTER (1u << 22)
#define MOE_HF_MAX_EXPERTS (1u << 16)
#define MOE_HF_MAX_SHARED 256u
#define MOE_HF_MAX_HEADS (1u << 14)
#define MOE_HF_MAX_HEAD_DIM (1u << 14)
#define MOE_HF_MAX_RANK (1u << 20)
#define MOE_HF_MAX_VOCAB (1u << 24)
#define MOE_HF_MAX_POSITION (1u << 24)
#define MOE_HF_MAX_GROUPS 256u /* expert groups: the public router's limit (runtime's MOE_ROUTE_MAX_GROUPS) */

typedef struct moe_hf_config {
    char model_type[64];
    char torch_dtype[32];
    bool fp8; /* quantization_config: FP8 e4m3 weights with 128 x 128 block scales */
    uint32_t hidden_size;
    uint32_t n_layers; /* num_hidden_layers */
    uint32_t vocab_size;
    uint32_t n_routed_experts;
    uint32_t top_k; /* num_experts_per_tok */
    uint32_t moe_inter, dense_inter;
    uint32_t n_shared_experts, shared_inter;
    /* attention */
    uint32_t n_heads, n_kv_heads;
    uint32_t head_dim; /* of q and k: qk_nope + qk_rope for MLA */
    bool mla;          /* DeepSeek multi-head latent attention */
    uint32_t q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim; /* MLA only */
    uint64_t attn_params; /* per layer, see above */
    /* numerics of the forward pass (see "Forward-pass keys" above) */
    double rms_norm_eps;
    double rope_theta;
    uint32_t max_position;   /* max_position_embeddings */
    uint32_t sliding_window; /* 0: none; else the positions a sliding layer's query sees, itself included */
    bool is_sliding_layer[MOE_HF_MAX_LAYERS]; /* [n_layers]: attends over the last sliding_window positions */
    bool norm_topk_prob;     /* renormalise the top-k gate weights to sum to 1 */
    double routed_scaling;   /* routed_scaling_factor */
    bool tie_embeddings;     /* tie_word_embeddings */
    char hidden_act[16];
    char scoring_func[16];
    char topk_method[32];
    uint32_t n_group, topk_group; /* noaux_tc's expert groups: n_group [1], topk_group [1] */
    uint32_t n_mtp_layers;        /* num_nextn_predict_layers [0]: DeepSeek-V3's MTP layers, not run */
    bool rope_interleave;         /* rope_interleave [true]: DeepSeek-V3 rotates interleaved pairs */
    bool attention_bias;          /* attention_bias [false] */
    bool use_qk_norm;             /* use_qk_norm [false]: glm4_moe's RMSNorm of each q and k head */
    double partial_rotary;        /* partial_rotary_factor [1]: the share of each head that RoPE rotates */
    char rope_type[16]; /* "default" or the scaling type ("yarn", "linear", ...) */
    double rope_factor, rope_beta_fast, rope_beta_slow, rope_mscale, rope_mscale_all_dim;
    uint32_t rope_orig_max_position;
    int64_t bos_id, eos_id; /* -1 when the config names none; eos: the first of a list */
    /* which layers are MoE layers */
    uint32_t n_moe_layers;
    bool is_moe_layer[MOE_HF_MAX_LAYERS]; /* [n_layers]; the rest false */
} moe_hf_config;

/* Whether c's expert groups fit its experts (n_group > 1 divides them
 * into groups of at least 2; num_experts_per_tok at most topk_group
 * groups' experts): NULL if so, else the key at fault, with why in `why`.
 * n_group's and topk_group's own ranges are each reader's to check. */
const char *moe_hf_config_groups_misfit(const moe_hf_config *c, char *why, size_t cap);

/* Sets attn_params from the attention fields (for a config filled by
 * another reader, such as GGUF metadata). */
void moe_hf_config_derive(moe_hf_config *c);

/* Reads the config.json at `path` (error messages name it). */
moe_status moe_hf_config_load(moe_hf_config *c, const char *path);

/* The same from `len` bytes of `text`; `name` prefixes error messages. */
moe_status moe_hf_config_parse(moe_hf_config *c, const char *text, size_t len, const char *name);

/* A model's dense work per MoE layer, counted in routed experts' weights:
 * every layer's attention, the MoE layers' shared experts and the dense
 * layers' MLPs, spread over the MoE layers:
 *   (n_layers*attn + n_moe*3*hidden*shared_inter
 *    + (n_layers - n_moe)*3*hidden*dense_inter) / (n_moe * 3*hidden*moe_inter).
 * The simulator charges it as that many routed experts' GPU time per layer
 * (weight-proportional, as decode is bandwidth-bound); embeddings and the
 * LM head are left out. DeepSeek-V2-Lite: 3.95. */
double moe_hf_config_dense_experts(const moe_hf_config *c);

/* MOE_OK if a routing trace of n_layers x n_experts, top-k, fits the
 * model (its MoE layers, routed experts and top-k); else MOE_ERR_INVALID_ARG
 * naming both (`what` names the trace). */
moe_status moe_hf_config_check_routing(const moe_hf_config *c, uint32_t n_layers, uint32_t n_experts, uint32_t top_k,
                                       const char *what);

#endif
