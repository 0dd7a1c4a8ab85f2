/* gguf_model.h - what a GGUF file written by llama.cpp's converter
 * (convert_hf_to_gguf.py) says about a model, in the terms of the Hugging
 * Face reader: its metadata as a moe_hf_config, and its tensor names as
 * the names transformers uses, so the loader has one set of rules.
 *
 * Architectures (general.architecture): llama with experts (Mixtral),
 * qwen2moe, qwen3moe, olmoe, deepseek2. Keys read, with <a> the
 * architecture: <a>.block_count, .embedding_length, .feed_forward_length,
 * .expert_feed_forward_length (Mixtral: feed_forward_length),
 * .expert_shared_feed_forward_length, .expert_shared_count,
 * .attention.head_count, .attention.head_count_kv, .attention.key_length,
 * .attention.layer_norm_rms_epsilon, .context_length, .rope.freq_base,
 * .expert_count, .expert_used_count, .expert_weights_scale,
 * .expert_weights_norm, .expert_gating_func, .leading_dense_block_count,
 * .rope.scaling.{type, factor, original_context_length, yarn_beta_fast,
 * yarn_beta_slow, yarn_log_multiplier}, DeepSeek's .attention.kv_lora_rank,
 * .attention.key_length_mla, .attention.value_length_mla (or, in files
 * from before llama.cpp split kv_b, key_length and value_length), and
 * .rope.dimension_count; tokenizer.ggml.bos_token_id / eos_token_id. */
#ifndef MOE_MODEL_GGUF_MODEL_H
#define MOE_MODEL_GGUF_MODEL_H

#include "gguf.h"
#include "hf_config.h"

/* Fills c from g's metadata (MOE_ERR_UNSUPPORTED naming an architecture
 * that is not one of the above, MOE_ERR_PARSE naming a missing key). The
 * vocabulary size is token_embd.weight's rows. */
moe_status moe_gguf_model_config(const moe_gguf *g, moe_hf_config *c);

/* The GGUF name of the tensor transformers calls `hf` (model.layers.3.
 * self_attn.q_proj.weight -> blk.3.attn_q.weight), into out; false if it
 * has none (the routed experts, which GGUF stores merged per layer:
 * blk.N.ffn_{gate,up,down}_exps.weight of [experts, rows, cols]). */
bool moe_gguf_model_name(const char *hf, char *out, size_t cap);

#endif
