/* tokenizer.h - text to token ids and back, as Hugging Face `tokenizers`
 * does it from a tokenizer.json file, for the BPE tokenizers of the models
 * moerun runs:
 *   - byte-level BPE (GPT-2 style: Qwen2/Qwen3, Llama-3, OLMoE, GPT-2):
 *     normalizer NFC or none; pre-tokenizer Split with one of the known
 *     patterns below and/or ByteLevel; decoder ByteLevel;
 *   - SentencePiece-style BPE (Llama-2, Mistral/Mixtral): normalizer
 *     Sequence[Prepend "▁", Replace " " -> "▁"] or pre-tokenizer Metaspace;
 *     model BPE with byte_fallback (<0x41> tokens); decoder
 *     Sequence[Replace "▁" -> " ", ByteFallback, Fuse, Strip] or Metaspace.
 * Added tokens (<|im_start|>, <s>, ...) are matched in the text before
 * anything else, leftmost-longest, with their lstrip, rstrip, single_word
 * and normalized flags. The post-processor's single-sequence template
 * (TemplateProcessing: <s> $A, say) is what add_special adds.
 *
 * There is no regex engine: a Split pre-tokenizer's pattern must be one of
 * those written out in tokenizer.c (GPT-2's, Qwen2/3's, Llama-3's); any
 * other is refused with MOE_ERR_UNSUPPORTED naming it, and so is any
 * normalizer, pre-tokenizer, model, decoder or post-processor not listed.
 * Unicode classes and NFC come from tables generated from Python's
 * unicodedata (Unicode 14); text using characters added since then may
 * split differently from a tokenizers build with newer tables.
 *
 * Text is bytes: input need not be valid UTF-8. A byte that starts no valid
 * UTF-8 character is a character of its own that is no letter, number or
 * space, left as is by NFC. Byte-level BPE then encodes it like any byte (so
 * decode gives the input back exactly); SentencePiece BPE encodes it as its
 * <0xXX> byte token (or unk without byte_fallback). HF `tokenizers` cannot
 * take such text at all, so these results have no reference.
 *
 * Decoding gives bytes, not text: where `tokenizers` would replace bytes
 * that do not form valid UTF-8 with U+FFFD, these functions return the
 * bytes; a streaming caller holds back an incomplete tail with
 * moe_utf8_complete().
 *
 * No global state; a loaded tokenizer is read-only, so any number of
 * threads may use it at once. */
#ifndef MOE_MODEL_TOKENIZER_H
#define MOE_MODEL_TOKENIZER_H

#include "gguf.h"
#include "moerun.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct moe_tokenizer moe_tokenizer;

/* Reads tokenizer.json at `path` and, unless `config_path` is NULL,
 * tokenizer_config.json (for bos_token, eos_token, pad_token and
 * chat_template; a missing member leaves the value unknown). Errors:
 * MOE_ERR_IO (file), MOE_ERR_PARSE "file:LINE: what" (malformed JSON, a
 * missing or ill-typed member, a merge of unknown tokens, ...),
 * MOE_ERR_UNSUPPORTED "file:LINE: ..." naming the model type, normalizer,
 * pre-tokenizer (with its pattern), decoder or post-processor that this
 * reader does not implement. On failure *out is NULL. Loading Qwen3's
 * 151k-token file takes about 0.3 s (-O2). */
moe_status moe_tokenizer_load(moe_tokenizer **out, const char *path, const char *config_path);

/* Reads the tokenizer a GGUF file's metadata holds, as llama.cpp's
 * convert_hf_to_gguf.py stores it and llama.cpp reads it:
 *   tokenizer.ggml.model  "gpt2": byte-level BPE over tokenizer.ggml.merges
 *                         ("a b", GPT-2 alphabet), the text first split by
 *                         the pattern tokenizer.ggml.pre names: llama.cpp's
 *                         names for GPT-2's pattern (gpt-2, olmo, mpt, phi-2,
 *                         jais, exaone4, ...), Qwen2's (qwen2, stablelm2,
 *                         deepseek-r1-qwen, hunyuan, megrez, ...) or
 *                         Llama-3's (llama-bpe, llama3, dbrx, smaug-bpe, ...;
 *                         the Llama-3 family also ignores merges for words
 *                         that are tokens and adds BOS by default, as in
 *                         llama.cpp); any other name, or none, is
 *                         MOE_ERR_UNSUPPORTED naming it;
 *                         "llama": llama.cpp's SentencePiece BPE
 *                         (llm_tokenizer_spm): a "▁" before the text and
 *                         after each added token (unless
 *                         tokenizer.ggml.add_space_prefix is false), spaces
 *                         as "▁", then adjacent pieces that together are a
 *                         token merged highest tokenizer.ggml.scores first
 *                         (leftmost on ties; merges, if present, are not
 *                         used), characters that are no token as their
 *                         <0xXX> byte tokens;
 *                         anything else is MOE_ERR_UNSUPPORTED naming it;
 *   tokenizer.ggml.tokens, .token_type (1 normal, 2 unknown, 3 control,
 *                         4 user-defined, 5 unused, 6 byte; optional, one per
 *                         token): control, unknown and user-defined tokens are
 *                         cut out of the text before anything else
 *                         (leftmost-longest; llama.cpp's parse_special), with
 *                         no lstrip/rstrip/single_word (GGUF does not keep
 *                         those flags), and decode to their text as is;
 *                         control and unknown ones are special (skip_special
 *                         drops them); unused ones decode to nothing;
 *   tokenizer.ggml.bos_token_id, eos_token_id, padding_token_id,
 *                         unknown_token_id, add_bos_token, add_eos_token
 *                         (what add_special adds; defaults as llama.cpp's:
 *                         "llama" bos 1, eos 2, add_bos true; "gpt2" none,
 *                         add_bos only for the Llama-3 family);
 *   tokenizer.chat_template.
 * No normalizer is applied for "gpt2" (GGUF does not record one; llama.cpp
 * applies none): text not in NFC may encode differently from HF's Qwen2/3
 * tokenizer.json, which normalizes to NFC. Errors: MOE_ERR_PARSE or
 * MOE_ERR_UNSUPPORTED "file: key \"k\": what" (a missing or ill-typed key,
 * a token_type or scores array whose length is not the number of tokens, a
 * token type outside 1..6, a merge of unknown tokens, a token id outside
 * the vocabulary); a merge whose result is no token is skipped, as
 * llama.cpp loads such files. The tokenizer keeps no pointer into g: g may be closed
 * after. On failure *out is NULL. */
moe_status moe_tokenizer_from_gguf(moe_tokenizer **out, const moe_gguf *g);

/* Frees *tok and sets it to NULL; NULL or *tok == NULL is a no-op. */
void moe_tokenizer_free(moe_tokenizer **tok);

typedef struct moe_tokenizer_info {
    uint32_t n_vocab;               /* ids are 0..n_vocab-1, added tokens included (some may be unused) */
    uint32_t n_added;               /* added tokens (special or not) */
    bool byte_level;                /* byte-level BPE; else SentencePiece-style */
    int32_t bos_id, eos_id, pad_id; /* -1 when unknown */
    const char *chat_template;      /* tokenizer_config.json's Jinja template, or NULL; owned by the tokenizer */
} moe_tokenizer_info;

void moe_tokenizer_get_info(const moe_tokenizer *tok, moe_tokenizer_info *out);

/* The id of a token written as in tokenizer.json: an added token's content
 * ("<|im_end|>") or a vocabulary entry ("Ġhello", "▁hello", "<0x0A>"); -1
 * if there is none. */
int32_t moe_tokenizer_token_id(const moe_tokenizer *tok, const char *token);

/* Encodes text[0..len) (any bytes, see above) into ids[0..cap). With
 * add_special, the post-processor's tokens are added around it (Llama-2's
 * <s>; nothing for Qwen3). *n_out is always set to the number of ids the
 * text needs; if that is over cap, ids holds the first cap of them and the
 * call fails with MOE_ERR_INVALID_ARG, so a caller can retry with room for
 * *n_out. MOE_ERR_OUT_OF_MEMORY if scratch memory cannot be allocated. */
moe_status moe_tokenizer_encode(const moe_tokenizer *tok, const char *text, size_t len, bool add_special,
                                int32_t *ids, size_t cap, size_t *n_out);

/* Decodes ids[0..n) into buf as the tokenizer's decoder does, leaving out
 * special added tokens if skip_special. buf receives the bytes and a NUL
 * (cap must exceed the length); *len is always set to the length (NUL not
 * counted), and if it does not fit the call fails with MOE_ERR_INVALID_ARG.
 * An id outside the vocabulary is MOE_ERR_INVALID_ARG "ids[k] = X ...". */
moe_status moe_tokenizer_decode(const moe_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                                char *buf, size_t cap, size_t *len);

/* The bytes token `id` stands for in the middle of a decoded text (not
 * NUL-terminated; *len bytes), for streaming: concatenated, they equal
 * moe_tokenizer_decode's output except at its very start, where the
 * SentencePiece decoders drop the leading space of the first token.
 * NULL for an id outside the vocabulary. */
const char *moe_tokenizer_token_bytes(const moe_tokenizer *tok, int32_t id, size_t *len);

/* Whether id is a special added token (one that decode's skip_special drops). */
bool moe_tokenizer_is_special(const moe_tokenizer *tok, int32_t id);

/* The length of the longest prefix of s[0..n) that does not end inside an
 * incomplete UTF-8 character: a streaming caller prints that much and keeps
 * the rest until more bytes come. Bytes that can never become valid UTF-8
 * count as complete, so nothing is held back for ever. */
size_t moe_utf8_complete(const char *s, size_t n);

#endif
