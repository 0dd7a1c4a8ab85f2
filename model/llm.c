/* llm.c - loads and runs an MoE language model (see llm.h). */
#define _POSIX_C_SOURCE 200809L
#include "llm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include "common.h"
#include "gguf_model.h"
#include "quant.h"
#include "safetensors.h"

typedef struct layer {
    float *attn_norm, *ffn_norm;
    moe_mat wq, wk, wv, wo;
    float *bq, *bk, *bv;
    float *q_norm, *k_norm; /* qwen3: [head_dim]; olmoe: [H*d] and [K*d] */
    moe_mat wkv_a;          /* MLA */
    moe_mat wq_a, wq_b;     /* MLA with q LoRA: q = q_b(rmsnorm(q_a x)) */
    float *q_a_norm;
    moe_mat k_b, v_b;       /* MLA: [H*kv_lora, nope] (W_uk transposed per head) and [H*v, kv_lora] */
    float *kv_a_norm;
    float *kb_own, *vb_own; /* k_b and v_b when repacked from kv_b */
    bool moe;
    uint32_t moe_index;
    moe_mat router;
    float *score_bias;                  /* deepseek_v3: e_score_correction_bias [n_routed_experts] */
    moe_mat mlp_gate, mlp_up, mlp_down; /* a dense layer's MLP, or an MoE layer's shared expert(s) */
    moe_mat shared_gate;                /* qwen2_moe: [1, hidden] */
    float *k_cache, *v_cache;           /* [ctx, kv_width] and [ctx, v_width] (MLA: k_cache only) */
} layer;

struct moe_llm {
    moe_hf_config cfg;
    moe_arch arch;
    bool gguf; /* weights from a GGUF file, else a safetensors directory */
    moe_st_dir st;
    moe_gguf gg;
    char dir[1024]; /* the model's path */
    moe_model_t *model;
    moe_rope rope;
    float attn_scale;
    uint32_t ctx;
    uint32_t kv_width, v_width; /* per position in a layer's cache */
    moe_mat embed, lm_head;
    float *out_norm;
    layer *layers;
    uint64_t weight_bytes;
    moe_dtype quantize;   /* --quantize: a block format, or MOE_DTYPE_COUNT_ for none */
    bool check_scales;    /* read every block's scales at load */
    void **owned;         /* buffers of matrices quantized at load */
    size_t n_owned, cap_owned;
};

static const struct {
    const char *name;
    moe_arch arch;
} archs[] = {
    {"mixtral", MOE_ARCH_MIXTRAL}, {"qwen2_moe", MOE_ARCH_QWEN2_MOE},     {"qwen3_moe", MOE_ARCH_QWEN3_MOE},
    {"olmoe", MOE_ARCH_OLMOE},     {"deepseek_v2", MOE_ARCH_DEEPSEEK_V2}, {"deepseek_v3", MOE_ARCH_DEEPSEEK_V3},
    {"glm4_moe", MOE_ARCH_GLM4_MOE},   {"kimi_k2", MOE_ARCH_DEEPSEEK_V3}, /* Kimi-K2's config: DeepseekV3ForCausalLM */
};

/* ---- weights ---- */

/* The tensor transformers calls `name`, from either format. */
static const moe_tensor *find(const moe_llm *m, const char *name) {
    if (!m->gguf) return moe_st_dir_find(&m->st, name);
    char g[256];
    if (!moe_gguf_model_name(name, g, sizeof g)) return NULL;
    const moe_tensor *t = moe_gguf_find(&m->gg, g);
    /* llama.cpp's GLM-4.5 files name the norm before the MLP for what it
     * is, post_attention_norm, where the others call it ffn_norm */
    const size_t n = strlen(g), tail = sizeof "ffn_norm.weight" - 1;
    if (!t && m->arch == MOE_ARCH_GLM4_MOE && n > tail && !strcmp(g + n - tail, "ffn_norm.weight") &&
        (size_t)snprintf(g + n - tail, sizeof g - (n - tail), "post_attention_norm.weight") < sizeof g - (n - tail))
        t = moe_gguf_find(&m->gg, g);
    return t;
}

static moe_status tensor_of(moe_llm *m, const char *name, const moe_tensor **out) {
    *out = find(m, name);
    if (*out) return MOE_OK;
    char g[256] = "";
    if (m->gguf) moe_gguf_model_name(name, g, sizeof g);
    return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\" is missing", m->dir, m->gguf ? g : name);
}

static moe_status bad_shape(const moe_tensor *t, uint64_t rows, uint64_t cols) {
    char got[96] = "";
    size_t at = 0;
    for (uint32_t k = 0; k < t->n_dims && at < sizeof got; k++)
        at += (size_t)snprintf(got + at, sizeof got - at, "%s%llu", k ? ", " : "", (unsigned long long)t->shape[k]);
    if (cols)
        return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\" has shape [%s], expected [%llu, %llu]", t->file, t->name,
                        got, (unsigned long long)rows, (unsigned long long)cols);
    return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\" has shape [%s], expected [%llu]", t->file, t->name, got,
                    (unsigned long long)rows);
}

/* A block tensor's scales, read once when the loader takes the tensor
 * (unless the caller asked not to: moe-run --lazy), so that a damaged
 * file is refused by name instead of giving NaN logits. */
static moe_status check_blocks(const moe_llm *m, const moe_tensor *t) {
    if (!m->check_scales || !moe_dtype_is_block(t->type) || !t->bytes) return MOE_OK;
    const uint64_t n = t->bytes / moe_dtype_block_bytes(t->type), bad = moe_blocks_bad_scale(t->type, t->data, n);
    if (bad == n) return MOE_OK;
    const uint64_t block = moe_dtype_block(t->type), per_row = t->shape[t->n_dims - 1] / block;
    return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\": block %llu (row %llu, elements %llu..%llu) has a NaN or "
                    "infinite scale: the file is damaged", t->file, t->name, (unsigned long long)bad,
                    (unsigned long long)(bad / per_row), (unsigned long long)(bad % per_row * block),
                    (unsigned long long)((bad % per_row + 1) * block - 1));
}

/* Keeps a buffer until the model is freed. */
static moe_status own(moe_llm *m, void *p) {
    if (m->n_owned == m->cap_owned) {
        const size_t cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **o = realloc(m->owned, cap * sizeof *o);
        if (!o) {
            free(p);
            return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", m->dir);
        }
        m->owned = o, m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return MOE_OK;
}

/* The format --quantize puts a matrix whose rows are `cols` long into:
 * the one asked for; where a row is not a whole number of its blocks,
 * llama-quantize's fallback (q2_K, q3_K -> q4_0, q4_K -> q5_0, q5_K ->
 * q5_1, q6_K -> q8_0, iq4_xs -> iq4_nl); where that does not fit either,
 * or the matrix is in a block format already (never requantized), the
 * matrix's own type. */
moe_dtype moe_llm_quantized_type(moe_dtype want, moe_dtype have, uint32_t cols) {
    if (!moe_dtype_is_block(want) || moe_dtype_is_block(have) || have == MOE_DTYPE_I8) return have;
    if (cols % moe_dtype_block(want) == 0) return want;
    switch (want) {
    case MOE_DTYPE_Q2_K:
    case MOE_DTYPE_Q3_K: want = MOE_DTYPE_Q4_0; break;
    case MOE_DTYPE_Q4_K: want = MOE_DTYPE_Q5_0; break;
    case MOE_DTYPE_Q5_K: want = MOE_DTYPE_Q5_1; break;
    case MOE_DTYPE_Q6_K: want = MOE_DTYPE_Q8_0; break;
    case MOE_DTYPE_IQ4_XS: want = MOE_DTYPE_IQ4_NL; break;
    default: return have;
    }
    return cols % moe_dtype_block(want) == 0 ? want : have;
}

/* *w quantized (--quantize) into an owned buffer, row by row on all
 * threads, from its own type without an f32 copy of the whole matrix;
 * unchanged where moe_llm_quantized_type keeps its type. */
static moe_status quantize_mat(moe_llm *m, const char *name, moe_mat *w) {
    const moe_dtype t = moe_llm_quantized_type(m->quantize, w->type, w->cols);
    if (t == w->type || !w->data) return MOE_OK;
    const size_t rb = moe_dtype_row_bytes(t, w->cols);
    uint8_t *q = malloc(w->rows ? rb * w->rows : 1);
    if (!q) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory to quantize \"%s\" to %s", m->dir, name,
                            moe_dtype_name(t));
    bool oom = false;
#pragma omp parallel reduction(|| : oom)
    {
        float *row = malloc((size_t)w->cols * sizeof *row);
        oom = !row;
#pragma omp for schedule(dynamic, 16)
        for (uint32_t r = 0; r < w->rows; r++) {
            if (!row) continue;
            moe_mat_row(w, r, row);
            (void)moe_quantize(t, row, q + (size_t)r * rb, w->cols);
        }
        free(row);
    }
    if (oom) {
        free(q);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory to quantize \"%s\"", m->dir, name);
    }
    *w = (moe_mat){t, q, w->rows, w->cols};
    return own(m, q);
}

/* An FP8 checkpoint's [rows, cols] matrix t (F8_E4M3) and the scale of
 * each of its 128 x 128 tiles (`<name>_scale_inv`, [ceil(rows / 128),
 * ceil(cols / 128)] in f32, bf16 or f16) as MOE_DTYPE_FP8_E4M3 blocks,
 * each row's block of 128 taking its tile's scale (owned; 132 bytes per
 * 128 weights against the file's 128 and a bit). Rows that are not whole
 * blocks of 128 are widened to f32, that matrix only. Missing or
 * misshapen scales, a scale that is not finite, a NaN element: refused by
 * name. */
static moe_status fp8_mat(moe_llm *m, const moe_tensor *t, uint32_t rows, uint32_t cols, moe_mat *out) {
    char sn[300];
    snprintf(sn, sizeof sn, "%s_scale_inv", t->name);
    const moe_tensor *st = find(m, sn);
    if (!st)
        return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\": F8_E4M3 weights without their scales (no tensor \"%s\")",
                        t->file, t->name, sn);
    const uint32_t tr = (rows + 127) / 128, tc = (cols + 127) / 128;
    if (st->n_dims != 2 || st->shape[0] != tr || st->shape[1] != tc)
        return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\" has %u dimensions [%llu, %llu], expected [%u, %u]: one "
                        "scale per 128 x 128 tile of \"%s\"", st->file, st->name, st->n_dims,
                        (unsigned long long)st->shape[0], (unsigned long long)st->shape[1], tr, tc, t->name);
    if (st->type != MOE_DTYPE_F32 && st->type != MOE_DTYPE_BF16 && st->type != MOE_DTYPE_F16)
        return moe_fail(MOE_ERR_UNSUPPORTED, "%s: tensor \"%s\": scales must be F32, BF16 or F16", st->file,
                        st->name);
    float *sc = malloc((size_t)tr * tc * sizeof *sc);
    if (!sc) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", m->dir);
    const moe_mat smat = {st->type, st->data, tr, tc};
    for (uint32_t i = 0; i < tr; i++) moe_mat_row(&smat, i, sc + (size_t)i * tc);
    for (size_t i = 0; i < (size_t)tr * tc; i++)
        if (!isfinite(sc[i])) {
            free(sc);
            return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\": the scale of tile (%zu, %zu) is NaN or infinite",
                            st->file, st->name, i / tc, i % tc);
        }
    const bool blocks = cols % MOE_FP8_BLOCK == 0;
    const size_t rb = blocks ? moe_dtype_row_bytes(MOE_DTYPE_FP8_E4M3, cols) : (size_t)cols * sizeof(float);
    uint8_t *buf = malloc(rows ? rb * rows : 1);
    if (!buf) {
        free(sc);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for \"%s\"", m->dir, t->name);
    }
    const uint8_t *q = t->data;
    uint64_t nan_at = UINT64_MAX;
#pragma omp parallel for schedule(static) reduction(min : nan_at)
    for (uint32_t r = 0; r < rows; r++) {
        const uint8_t *qr = q + (size_t)r * cols;
        const float *sr = sc + (size_t)(r / 128) * tc;
        for (uint32_t c = 0; c < cols; c++)
            if ((qr[c] & 0x7f) == 0x7f && (uint64_t)r * cols + c < nan_at) nan_at = (uint64_t)r * cols + c;
        if (blocks) {
            moe_block_fp8 *b = (moe_block_fp8 *)(void *)(buf + (size_t)r * rb);
            for (uint32_t j = 0; j < cols / MOE_FP8_BLOCK; j++) {
                b[j].d = sr[j];
                memcpy(b[j].qs, qr + (size_t)j * MOE_FP8_BLOCK, MOE_FP8_BLOCK);
            }
        } else {
            float *y = (float *)(void *)(buf + (size_t)r * rb);
            for (uint32_t c = 0; c < cols; c++) y[c] = sr[c / 128] * moe_e4m3_to_f32(qr[c]);
        }
    }
    free(sc);
    if (nan_at != UINT64_MAX) {
        free(buf);
        return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\": element (%llu, %llu) is NaN (e4m3 0x7f or 0xff)",
                        t->file, t->name, (unsigned long long)(nan_at / cols), (unsigned long long)(nan_at % cols));
    }
    *out = (moe_mat){blocks ? MOE_DTYPE_FP8_E4M3 : MOE_DTYPE_F32, buf, rows, cols};
    return own(m, buf);
}

/* A [rows, cols] matrix; absent and not required leaves *out empty. A
 * dense projection (`dense`) is quantized with --quantize; routers, gates
 * and MLA's up-projections are not. */
static moe_status get_mat_of(moe_llm *m, const char *name, uint32_t rows, uint32_t cols, bool required, bool dense,
                             moe_mat *out) {
    memset(out, 0, sizeof *out);
    const moe_tensor *t = find(m, name);
    if (!t && !required) return MOE_OK;
    moe_status s = tensor_of(m, name, &t);
    if (s) return s;
    /* llama-quantize writes a [1, cols] matrix as a vector (ggml drops
     * trailing dimensions of 1): Qwen2-MoE's shared expert gate. */
    const bool vec = rows == 1 && t->n_dims == 1 && t->shape[0] == cols;
    if (!vec && (t->n_dims != 2 || t->shape[0] != rows || t->shape[1] != cols)) return bad_shape(t, rows, cols);
    if (t->type == MOE_TENSOR_F8_E4M3) {
        if ((s = fp8_mat(m, t, rows, cols, out))) return s;
    } else {
        if ((s = check_blocks(m, t))) return s;
        *out = (moe_mat){t->type, t->data, rows, cols};
    }
    if (dense && (s = quantize_mat(m, t->name, out))) return s;
    m->weight_bytes += moe_mat_row_bytes(out) * rows;
    return MOE_OK;
}

static moe_status get_mat(moe_llm *m, const char *name, uint32_t rows, uint32_t cols, bool required, moe_mat *out) {
    return get_mat_of(m, name, rows, cols, required, false, out);
}

static moe_status get_dense(moe_llm *m, const char *name, uint32_t rows, uint32_t cols, bool required,
                            moe_mat *out) {
    return get_mat_of(m, name, rows, cols, required, true, out);
}

/* A vector of len, converted to f32 (owned); absent and not required: NULL. */
static moe_status get_vec(moe_llm *m, const char *name, uint32_t len, bool required, float **out) {
    *out = NULL;
    const moe_tensor *t = find(m, name);
    if (!t && !required) return MOE_OK;
    moe_status s = tensor_of(m, name, &t);
    if (s) return s;
    if (t->n_elems != len || (t->n_dims != 1 && !(t->n_dims == 2 && t->shape[0] == 1))) return bad_shape(t, len, 0);
    if (t->type == MOE_TENSOR_F8_E4M3)
        return moe_fail(MOE_ERR_UNSUPPORTED, "%s: tensor \"%s\": F8_E4M3 is read for matrices only, not vectors",
                        t->file, t->name);
    if ((s = check_blocks(m, t))) return s;
    if (!(*out = malloc((size_t)len * sizeof **out))) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", name);
    const moe_mat row = {t->type, t->data, 1, len};
    moe_mat_row(&row, 0, *out);
    m->weight_bytes += t->bytes;
    return MOE_OK;
}

static const char *lname(char *buf, size_t cap, uint32_t l, const char *what) {
    snprintf(buf, cap, "model.layers.%u.%s", l, what);
    return buf;
}

/* A 3-D tensor [d0, d1, d2] of GGUF as a [d0*d1, d2] matrix. */
static moe_status get_mat3(moe_llm *m, const char *name, uint32_t d0, uint32_t d1, uint32_t d2, moe_mat *out) {
    const moe_tensor *t = moe_gguf_find(&m->gg, name);
    if (!t) return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\" is missing", m->dir, name);
    if (t->n_dims != 3 || t->shape[0] != d0 || t->shape[1] != d1 || t->shape[2] != d2)
        return moe_fail(MOE_ERR_PARSE, "%s: tensor \"%s\" has shape [%llu, %llu, %llu], expected [%u, %u, %u]", m->dir,
                        name, (unsigned long long)t->shape[0], (unsigned long long)t->shape[1],
                        (unsigned long long)t->shape[2], d0, d1, d2);
    moe_status s = check_blocks(m, t);
    if (s) return s;
    *out = (moe_mat){t->type, t->data, d0 * d1, d2};
    m->weight_bytes += t->bytes;
    return MOE_OK;
}

/* MLA's up-projections as attention_mla wants them: k_b [H, kv_lora, nope]
 * and v_b [H, v, kv_lora]. GGUF files since llama.cpp split kv_b hold them
 * so; transformers' kv_b [H * (nope + v), kv_lora] is repacked once. */
static moe_status load_kv_b(moe_llm *m, uint32_t l, layer *L) {
    const moe_hf_config *c = &m->cfg;
    const uint32_t H = c->n_heads, kvl = c->kv_lora_rank, nope = c->qk_nope_head_dim, vd = c->v_head_dim;
    char n[256];
    snprintf(n, sizeof n, "blk.%u.attn_k_b.weight", l);
    if (m->gguf && moe_gguf_find(&m->gg, n)) {
        moe_status s = get_mat3(m, n, H, kvl, nope, &L->k_b);
        snprintf(n, sizeof n, "blk.%u.attn_v_b.weight", l);
        return s ? s : get_mat3(m, n, H, vd, kvl, &L->v_b);
    }
    moe_mat kv_b;
    moe_status s = get_mat(m, lname(n, sizeof n, l, "self_attn.kv_b_proj.weight"), H * (nope + vd), kvl, true, &kv_b);
    if (s) return s;
    L->kb_own = malloc((size_t)H * kvl * nope * sizeof(float));
    L->vb_own = malloc((size_t)H * vd * kvl * sizeof(float));
    float *row = malloc((size_t)kvl * sizeof *row);
    if (!L->kb_own || !L->vb_own || !row) {
        free(row);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for layer %u's kv_b", m->dir, l);
    }
    for (uint32_t hh = 0; hh < H; hh++)
        for (uint32_t r = 0; r < nope + vd; r++) {
            moe_mat_row(&kv_b, hh * (nope + vd) + r, row);
            for (uint32_t k = 0; k < kvl; k++)
                if (r < nope) L->kb_own[((size_t)hh * kvl + k) * nope + r] = row[k];
                else L->vb_own[((size_t)hh * vd + (r - nope)) * kvl + k] = row[k];
        }
    free(row);
    L->k_b = (moe_mat){MOE_DTYPE_F32, L->kb_own, H * kvl, nope};
    L->v_b = (moe_mat){MOE_DTYPE_F32, L->vb_own, H * vd, kvl};
    return MOE_OK;
}

static moe_status load_attention(moe_llm *m, uint32_t l, layer *L) {
    const moe_hf_config *c = &m->cfg;
    const uint32_t h = c->hidden_size, H = c->n_heads, K = c->n_kv_heads, d = c->head_dim;
    char n[256];
    moe_status s;
    if (c->mla) {
        const uint32_t kvl = c->kv_lora_rank, rope = c->qk_rope_head_dim;
        const uint32_t ql = c->q_lora_rank;
        if (ql && ((s = get_dense(m, lname(n, sizeof n, l, "self_attn.q_a_proj.weight"), ql, h, true, &L->wq_a)) ||
                   (s = get_vec(m, lname(n, sizeof n, l, "self_attn.q_a_layernorm.weight"), ql, true, &L->q_a_norm)) ||
                   (s = get_dense(m, lname(n, sizeof n, l, "self_attn.q_b_proj.weight"), H * d, ql, true, &L->wq_b))))
            return s;
        if ((!ql && (s = get_dense(m, lname(n, sizeof n, l, "self_attn.q_proj.weight"), H * d, h, true, &L->wq))) ||
            (s = get_dense(m, lname(n, sizeof n, l, "self_attn.kv_a_proj_with_mqa.weight"), kvl + rope, h, true,
                         &L->wkv_a)) ||
            (s = get_vec(m, lname(n, sizeof n, l, "self_attn.kv_a_layernorm.weight"), kvl, true, &L->kv_a_norm)) ||
            (s = get_dense(m, lname(n, sizeof n, l, "self_attn.o_proj.weight"), h, H * c->v_head_dim, true, &L->wo)))
            return s;
        return load_kv_b(m, l, L);
    }
    const bool bias = m->arch == MOE_ARCH_QWEN2_MOE || (m->arch == MOE_ARCH_GLM4_MOE && c->attention_bias);
    if ((s = get_dense(m, lname(n, sizeof n, l, "self_attn.q_proj.weight"), H * d, h, true, &L->wq)) ||
        (s = get_dense(m, lname(n, sizeof n, l, "self_attn.k_proj.weight"), K * d, h, true, &L->wk)) ||
        (s = get_dense(m, lname(n, sizeof n, l, "self_attn.v_proj.weight"), K * d, h, true, &L->wv)) ||
        (s = get_dense(m, lname(n, sizeof n, l, "self_attn.o_proj.weight"), h, H * d, true, &L->wo)) ||
        (s = get_vec(m, lname(n, sizeof n, l, "self_attn.q_proj.bias"), H * d, bias, &L->bq)) ||
        (s = get_vec(m, lname(n, sizeof n, l, "self_attn.k_proj.bias"), K * d, bias, &L->bk)) ||
        (s = get_vec(m, lname(n, sizeof n, l, "self_attn.v_proj.bias"), K * d, bias, &L->bv)))
        return s;
    if ((m->arch == MOE_ARCH_QWEN3_MOE || c->use_qk_norm) &&
        ((s = get_vec(m, lname(n, sizeof n, l, "self_attn.q_norm.weight"), d, true, &L->q_norm)) ||
         (s = get_vec(m, lname(n, sizeof n, l, "self_attn.k_norm.weight"), d, true, &L->k_norm))))
        return s;
    if (m->arch == MOE_ARCH_OLMOE &&
        ((s = get_vec(m, lname(n, sizeof n, l, "self_attn.q_norm.weight"), H * d, true, &L->q_norm)) ||
         (s = get_vec(m, lname(n, sizeof n, l, "self_attn.k_norm.weight"), K * d, true, &L->k_norm))))
        return s;
    return MOE_OK;
}

/* Matrix k (gate, up, down) of expert e of layer l from its own tensor
 * (safetensors). Not counted in weight_bytes: the model's expert bytes are. */
static moe_status get_expert(moe_llm *m, uint32_t l, uint32_t e, int k, moe_mat *out, char *name, size_t cap) {
    const moe_hf_config *c = &m->cfg;
    const uint32_t rows = k == 2 ? c->hidden_size : c->moe_inter, cols = k == 2 ? c->moe_inter : c->hidden_size;
    static const char *const hf[3] = {"mlp.experts.%u.gate_proj.weight", "mlp.experts.%u.up_proj.weight",
                                      "mlp.experts.%u.down_proj.weight"};
    static const char *const mx[3] = {"block_sparse_moe.experts.%u.w1.weight", "block_sparse_moe.experts.%u.w3.weight",
                                      "block_sparse_moe.experts.%u.w2.weight"};
    char what[128];
    snprintf(what, sizeof what, (m->arch == MOE_ARCH_MIXTRAL ? mx : hf)[k], e);
    lname(name, cap, l, what);
    const uint64_t before = m->weight_bytes;
    moe_status s = get_mat(m, name, rows, cols, true, out);
    m->weight_bytes = before;
    return s;
}

/* Registers layer l's routed experts with the runtime's model, in the
 * file's formats as they are (GGUF: expert e is a slice of the layer's
 * merged [experts, rows, cols] tensors), or quantized with --quantize.
 * Gate and up share a dtype; down may have its own (llama.cpp's Q4_K_M
 * keeps some layers' ffn_down_exps in q6_K, and down rows that are not
 * whole 256-blocks fall back to a 32-block format). */
static moe_status load_experts(moe_llm *m, uint32_t l, layer *L) {
    const moe_hf_config *c = &m->cfg;
    const uint32_t E = c->n_routed_experts;
    static const char *const g[3] = {"gate", "up", "down"};
    moe_mat merged[3];
    char names[3][256];
    moe_status s = MOE_OK;
    for (int k = 0; m->gguf && k < 3 && s == MOE_OK; k++) {
        const uint32_t rows = k == 2 ? c->hidden_size : c->moe_inter, cols = k == 2 ? c->moe_inter : c->hidden_size;
        snprintf(names[k], sizeof names[k], "blk.%u.ffn_%s_exps.weight", l, g[k]);
        const uint64_t before = m->weight_bytes;
        s = get_mat3(m, names[k], E, rows, cols, &merged[k]);
        m->weight_bytes = before;
    }
    moe_dtype dt[3] = {MOE_DTYPE_COUNT_, MOE_DTYPE_COUNT_, MOE_DTYPE_COUNT_};
    for (uint32_t e = 0; e < E && s == MOE_OK; e++) {
        moe_mat w[3];
        char n[256];
        for (int k = 0; k < 3 && s == MOE_OK; k++) {
            if (m->gguf) {
                const uint32_t rows = merged[k].rows / E;
                w[k] = (moe_mat){merged[k].type,
                                 (const uint8_t *)merged[k].data + (size_t)e * rows * moe_mat_row_bytes(&merged[k]),
                                 rows, merged[k].cols};
                snprintf(n, sizeof n, "%s", names[k]);
            } else if ((s = get_expert(m, l, e, k, &w[k], n, sizeof n))) {
                break;
            }
            if ((s = quantize_mat(m, n, &w[k]))) break;
            if (e == 0) dt[k] = w[k].type;
            else if (w[k].type != dt[k])
                s = moe_fail(MOE_ERR_UNSUPPORTED, "%s: expert tensor \"%s\" is %s, unlike expert 0's (%s)", m->dir, n,
                             moe_dtype_name(w[k].type), moe_dtype_name(dt[k]));
        }
        if (s) break;
        if (e == 0) {
            if (dt[0] != dt[1])
                return moe_fail(MOE_ERR_UNSUPPORTED, "%s: layer %u's gate experts are %s and its up experts %s; moerun "
                                "runs gate and up in one format", m->dir, l, moe_dtype_name(dt[0]),
                                moe_dtype_name(dt[1]));
            const moe_layer_desc desc = moe_layer_desc_init(E, c->hidden_size, c->moe_inter, dt[0]);
            if ((s = moe_model_set_layer(m->model, L->moe_index, &desc))) break;
            if (dt[2] != dt[0] && (s = moe_model_set_down_dtype(m->model, L->moe_index, dt[2]))) break;
        }
        const moe_expert_weights ew = {.gate = w[0].data, .up = w[1].data, .down = w[2].data};
        s = moe_model_set_expert(m->model, L->moe_index, e, &ew);
    }
    return s;
}

/* A router in f32, as transformers computes it (DeepSeek-V3 keeps its
 * gate in fp32 outright) and llama.cpp's converter stores it: the engine's
 * bf16 kernels round the activations to bf16, which moves router logits by
 * about 1e-2 and can flip a close choice of experts. Routers are small
 * (experts x hidden). */
static moe_status widen_f32(moe_llm *m, moe_mat *w) {
    if (w->type == MOE_DTYPE_F32) return MOE_OK;
    float *f = malloc((size_t)w->rows * w->cols * sizeof *f);
    if (!f) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for a router in f32", m->dir);
    for (uint32_t r = 0; r < w->rows; r++) moe_mat_row(w, r, f + (size_t)r * w->cols);
    *w = (moe_mat){MOE_DTYPE_F32, f, w->rows, w->cols};
    return own(m, f);
}

static moe_status load_ffn(moe_llm *m, uint32_t l, layer *L) {
    const moe_hf_config *c = &m->cfg;
    const uint32_t h = c->hidden_size;
    char n[256];
    moe_status s;
    if (!L->moe) {
        if ((s = get_dense(m, lname(n, sizeof n, l, "mlp.gate_proj.weight"), c->dense_inter, h, true, &L->mlp_gate)) ||
            (s = get_dense(m, lname(n, sizeof n, l, "mlp.up_proj.weight"), c->dense_inter, h, true, &L->mlp_up)) ||
            (s = get_dense(m, lname(n, sizeof n, l, "mlp.down_proj.weight"), h, c->dense_inter, true, &L->mlp_down)))
            return s;
        return MOE_OK;
    }
    const char *router = m->arch == MOE_ARCH_MIXTRAL ? "block_sparse_moe.gate.weight" : "mlp.gate.weight";
    if ((s = get_mat(m, lname(n, sizeof n, l, router), c->n_routed_experts, h, true, &L->router)) ||
        (s = widen_f32(m, &L->router)))
        return s;
    if (!strcmp(c->topk_method, "noaux_tc") &&
        (s = get_vec(m, lname(n, sizeof n, l, "mlp.gate.e_score_correction_bias"), c->n_routed_experts, true,
                     &L->score_bias)))
        return s;
    if (c->n_shared_experts) {
        const char *sh = m->arch == MOE_ARCH_QWEN2_MOE ? "shared_expert" : "shared_experts";
        const uint32_t si = c->shared_inter;
        char what[96];
        snprintf(what, sizeof what, "mlp.%s.gate_proj.weight", sh);
        if ((s = get_dense(m, lname(n, sizeof n, l, what), si, h, true, &L->mlp_gate))) return s;
        snprintf(what, sizeof what, "mlp.%s.up_proj.weight", sh);
        if ((s = get_dense(m, lname(n, sizeof n, l, what), si, h, true, &L->mlp_up))) return s;
        snprintf(what, sizeof what, "mlp.%s.down_proj.weight", sh);
        if ((s = get_dense(m, lname(n, sizeof n, l, what), h, si, true, &L->mlp_down))) return s;
        if (m->arch == MOE_ARCH_QWEN2_MOE &&
            (s = get_mat(m, lname(n, sizeof n, l, "mlp.shared_expert_gate.weight"), 1, h, true, &L->shared_gate)))
            return s;
    }
    return load_experts(m, l, L);
}

static moe_status load_layer(moe_llm *m, uint32_t l, layer *L) {
    char n[256];
    const uint32_t h = m->cfg.hidden_size;
    moe_status s;
    if ((s = get_vec(m, lname(n, sizeof n, l, "input_layernorm.weight"), h, true, &L->attn_norm)) ||
        (s = get_vec(m, lname(n, sizeof n, l, "post_attention_layernorm.weight"), h, true, &L->ffn_norm)) ||
        (s = load_attention(m, l, L)) || (s = load_ffn(m, l, L)))
        return s;
    const size_t per = (size_t)m->ctx;
    L->k_cache = malloc(per * m->kv_width * sizeof(float));
    L->v_cache = m->v_width ? malloc(per * m->v_width * sizeof(float)) : NULL;
    if (!L->k_cache || (m->v_width && !L->v_cache))
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory for the KV cache of %u positions", m->dir, m->ctx);
    return MOE_OK;
}

/* ---- configuration ---- */

static moe_status unsupported(const moe_llm *m, const char *what) {
    return moe_fail(MOE_ERR_UNSUPPORTED, "%s%s: %s (model_type %s)", m->dir, m->gguf ? "" : "/config.json", what,
                    m->cfg.model_type);
}

static moe_status check_config(moe_llm *m) {
    const moe_hf_config *c = &m->cfg;
    size_t i = 0;
    while (i < sizeof archs / sizeof archs[0] && strcmp(archs[i].name, c->model_type)) i++;
    if (i == sizeof archs / sizeof archs[0])
        return moe_fail(MOE_ERR_UNSUPPORTED,
                        "%s%s: model_type \"%s\" is not supported (supported: mixtral, qwen2_moe, qwen3_moe, olmoe, "
                        "deepseek_v2, deepseek_v3, kimi_k2, glm4_moe)", m->dir, m->gguf ? "" : "/config.json", c->model_type);
    m->arch = archs[i].arch;
    /* deepseek_v3 and glm4_moe route alike */
    const bool v3 = m->arch == MOE_ARCH_DEEPSEEK_V3 || m->arch == MOE_ARCH_GLM4_MOE;
    if (strcmp(c->hidden_act, "silu")) return unsupported(m, "hidden_act other than silu is not supported");
    /* transformers' deepseek_v3 scores with sigmoid and selects by noaux_tc
     * whatever the keys say; the others with softmax and greedy top-k */
    if (v3 && (strcmp(c->scoring_func, "sigmoid") || strcmp(c->topk_method, "noaux_tc")))
        return unsupported(m, m->arch == MOE_ARCH_GLM4_MOE
                                  ? "glm4_moe routes with scoring_func \"sigmoid\" and topk_method \"noaux_tc\" only"
                                  : "deepseek_v3 routes with scoring_func \"sigmoid\" and topk_method \"noaux_tc\" only");
    if (!v3 && strcmp(c->scoring_func, "softmax")) return unsupported(m, "scoring_func other than softmax is not supported");
    if (!v3 && strcmp(c->topk_method, "greedy"))
        return unsupported(m, "topk_method other than greedy is not supported (noaux_tc: deepseek_v3, glm4_moe)");
    const bool mla_arch = m->arch == MOE_ARCH_DEEPSEEK_V2 || m->arch == MOE_ARCH_DEEPSEEK_V3;
    if (c->mla != mla_arch) return unsupported(m, c->mla ? "MLA keys on a model that is not MLA" : "an MLA model without kv_lora_rank");
    if (c->use_qk_norm && m->arch != MOE_ARCH_GLM4_MOE) return unsupported(m, "use_qk_norm is read for glm4_moe only");
    if (c->partial_rotary < 1 && m->arch != MOE_ARCH_GLM4_MOE)
        return unsupported(m, "partial_rotary_factor is read for glm4_moe only");
    if (c->mla && c->attention_bias) return unsupported(m, "attention_bias true on an MLA model is not supported");
    if (c->attention_bias && !c->mla && m->arch != MOE_ARCH_GLM4_MOE && m->arch != MOE_ARCH_QWEN2_MOE)
        return unsupported(m, "attention_bias true is read for glm4_moe only (qwen2_moe always has q/k/v biases)");
    /* DeepSeek-V2's group_limited_greedy (softmax within groups) is not
     * implemented: its groups in a GGUF file must not be dropped silently */
    if (c->n_group > 1 && strcmp(c->topk_method, "noaux_tc"))
        return unsupported(m, "expert groups (n_group > 1) with greedy top-k: DeepSeek-V2's group_limited_greedy is "
                              "not supported");
    if (c->n_mtp_layers)
        fprintf(stderr, "note: %s: %u multi-token-prediction layer%s (num_nextn_predict_layers) not loaded: moerun "
                "decodes one token at a time\n", m->dir, c->n_mtp_layers, c->n_mtp_layers == 1 ? "" : "s");
    const bool yarn = !strcmp(c->rope_type, "yarn");
    if (!yarn && strcmp(c->rope_type, "default")) {
        char what[96];
        snprintf(what, sizeof what, "rope scaling \"%s\" is not supported (supported: yarn)", c->rope_type);
        return unsupported(m, what);
    }
    /* GLM rotates the first partial_rotary_factor of each head (as
     * transformers: int(head_dim * factor)) and passes the rest */
    const uint32_t rope_dim = c->mla ? c->qk_rope_head_dim : (uint32_t)floor(c->head_dim * c->partial_rotary + 1e-6);
    if (!rope_dim || rope_dim % 2 || rope_dim > 1024)
        return unsupported(m, "a rotary dimension that is zero, odd or over 1024");
    /* DeepSeek rotates interleaved pairs, and so does Mixtral from GGUF,
     * whose q and k rows llama.cpp's converter permuted for it; the
     * others rotate halves (NeoX). */
    const bool inter = m->arch == MOE_ARCH_DEEPSEEK_V2 || (m->arch == MOE_ARCH_DEEPSEEK_V3 && c->rope_interleave) ||
                       (m->gguf && m->arch == MOE_ARCH_MIXTRAL);
    if (yarn)
        moe_rope_init_yarn(&m->rope, rope_dim, c->rope_theta, inter, c->rope_factor, c->rope_orig_max_position,
                           c->rope_beta_fast, c->rope_beta_slow, c->rope_mscale, c->rope_mscale_all_dim);
    else
        moe_rope_init(&m->rope, rope_dim, c->rope_theta, inter);
    m->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    if (yarn && c->rope_mscale_all_dim > 0) {
        const double ms = moe_yarn_mscale(c->rope_factor, c->rope_mscale_all_dim);
        m->attn_scale = (float)(m->attn_scale * ms * ms);
    }
    if (c->mla) {
        m->kv_width = c->kv_lora_rank + c->qk_rope_head_dim;
        m->v_width = 0;
    } else {
        m->kv_width = m->v_width = c->n_kv_heads * c->head_dim;
    }
    return MOE_OK;
}

static void free_layer(layer *L) {
    free(L->attn_norm), free(L->ffn_norm), free(L->bq), free(L->bk), free(L->bv);
    free(L->q_norm), free(L->k_norm), free(L->kv_a_norm), free(L->k_cache), free(L->v_cache);
    free(L->kb_own), free(L->vb_own), free(L->q_a_norm), free(L->score_bias);
}

void moe_llm_free(moe_llm **pm) {
    if (!pm || !*pm) return;
    moe_llm *m = *pm;
    if (m->layers)
        for (uint32_t l = 0; l < m->cfg.n_layers; l++) free_layer(&m->layers[l]);
    free(m->layers);
    free(m->out_norm);
    moe_model_free(&m->model);
    for (size_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    moe_st_dir_close(&m->st);
    moe_gguf_close(&m->gg);
    free(m);
    *pm = NULL;
}

/* The configuration and the weight files: a GGUF file, or a directory of
 * config.json and safetensors. */
static moe_status open_files(moe_llm *m, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return moe_fail(MOE_ERR_IO, "%s: no such file or directory", path);
    moe_status s;
    if (S_ISDIR(st.st_mode)) {
        char cfg[1100];
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        if ((s = moe_hf_config_load(&m->cfg, cfg)) || (s = check_config(m))) return s;
        return moe_st_dir_open(&m->st, path);
    }
    m->gguf = true;
    if ((s = moe_gguf_open(&m->gg, path)) || (s = moe_gguf_model_config(&m->gg, &m->cfg))) return s;
    return check_config(m);
}

/* Touches one byte of every page of the maps, so the first tokens do not
 * pay for reading the files; progress every 64 MB. */
static void prefault(const moe_llm *m, const moe_llm_params *p) {
    const moe_mapped_file *files[4096];
    uint32_t nf = 0;
    if (m->gguf) files[nf++] = &m->gg.file;
    for (uint32_t f = 0; !m->gguf && f < m->st.n_files && nf < 4096; f++) files[nf++] = &m->st.files[f].file;
    uint64_t total = 0, done = 0, next = 0;
    for (uint32_t f = 0; f < nf; f++) total += files[f]->size;
    volatile uint8_t sink = 0;
    for (uint32_t f = 0; f < nf; f++)
        for (uint64_t at = 0; at < files[f]->size; at += 4096, done += 4096) {
            sink ^= files[f]->data[at];
            if (p->progress && done >= next) p->progress(done, total, p->progress_user), next = done + (64u << 20);
        }
    (void)sink;
    if (p->progress) p->progress(total, total, p->progress_user);
}

static moe_status load(moe_llm *m, const char *path, const moe_llm_params *p) {
    moe_status s;
    m->quantize = p && moe_dtype_is_block(p->quantize) ? p->quantize : MOE_DTYPE_COUNT_;
    m->check_scales = !(p && p->skip_scale_check);
    if ((s = open_files(m, path))) return s;
    const moe_hf_config *c = &m->cfg;
    m->ctx = p && p->ctx ? p->ctx : (c->max_position < 4096 ? c->max_position : 4096);
    if (m->ctx > c->max_position)
        return moe_fail(MOE_ERR_INVALID_ARG, "%s: a context of %u positions is over the model's %u", path, m->ctx,
                        c->max_position);
    if (c->sliding_window && c->mla)
        return moe_fail(MOE_ERR_UNSUPPORTED, "%s: sliding-window attention on an MLA model is not supported", path);
    if ((s = moe_model_create(&m->model, c->n_moe_layers))) return s;
    if (!(m->layers = calloc(c->n_layers, sizeof *m->layers)))
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    const uint32_t h = c->hidden_size, V = c->vocab_size;
    if ((s = get_dense(m, "model.embed_tokens.weight", V, h, true, &m->embed)) ||
        (s = get_vec(m, "model.norm.weight", h, true, &m->out_norm)))
        return s;
    if (c->tie_embeddings) m->lm_head = m->embed;
    else if ((s = get_dense(m, "lm_head.weight", V, h, true, &m->lm_head)))
        return s;
    uint32_t moe_index = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        layer *L = &m->layers[l];
        L->moe = c->is_moe_layer[l];
        L->moe_index = L->moe ? moe_index++ : UINT32_MAX;
        if ((s = load_layer(m, l, L))) return s;
    }
    if (p && p->prefault) prefault(m, p);
    return MOE_OK;
}

moe_status moe_llm_load(moe_llm **out, const char *path, const moe_llm_params *params) {
    if (!out || !path) return moe_fail(MOE_ERR_INVALID_ARG, "llm: NULL argument");
    *out = NULL;
    moe_llm *m = calloc(1, sizeof *m);
    if (!m) return moe_fail(MOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    snprintf(m->dir, sizeof m->dir, "%s", path);
    moe_status s = load(m, path, params);
    if (s) {
        moe_llm_free(&m);
        return s;
    }
    *out = m;
    return MOE_OK;
}

moe_model_t *moe_llm_model(const moe_llm *m) { return m ? m->model : NULL; }
const moe_hf_config *moe_llm_config(const moe_llm *m) { return m ? &m->cfg : NULL; }
const moe_gguf *moe_llm_gguf(const moe_llm *m) { return m && m->gguf ? &m->gg : NULL; }
uint32_t moe_llm_vocab(const moe_llm *m) { return m ? m->cfg.vocab_size : 0; }
uint32_t moe_llm_ctx(const moe_llm *m) { return m ? m->ctx : 0; }
uint64_t moe_llm_weight_bytes(const moe_llm *m) { return m ? m->weight_bytes + moe_model_expert_bytes(m->model) : 0; }

const char *moe_llm_arch_name(const moe_llm *m) {
    for (size_t i = 0; m && i < sizeof archs / sizeof archs[0]; i++)
        if (archs[i].arch == m->arch) return archs[i].name;
    return "";
}

/* ---- the forward pass ---- */

/* Scratch for one batch of n tokens. */
typedef struct batch {
    moe_runtime_t *rt;
    moe_status st; /* the first failure of a matrix product */
    uint32_t n, pos0;
    float *h, *x, *q, *kv, *att, *out, *tmp1, *tmp2, *logits_e;
    float *qlat; /* [n, q_lora_rank] with q LoRA */
    int32_t *ids;
    float *w;
} batch;

/* A matrix product on the runtime's engine; the batch keeps the first failure. */
static void mm(batch *b, const moe_mat *w, const float *x, uint32_t n, const float *bias, float *y) {
    if (b->st == MOE_OK) b->st = moe_matmul(b->rt, w, x, n, bias, y);
}

static float dotf(const float *a, const float *b, uint32_t n) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (uint32_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *y, float a, const float *x, uint32_t n) {
#pragma omp simd
    for (uint32_t i = 0; i < n; i++) y[i] += a * x[i];
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* Standard attention (MHA/GQA) of the batch into b->att [n, H*d]. */
static void attention_std(moe_llm *m, layer *L, batch *b) {
    const moe_hf_config *c = &m->cfg;
    const uint32_t n = b->n, H = c->n_heads, K = c->n_kv_heads, d = c->head_dim, qw = H * d, kw = K * d;
    float *k = b->kv, *v = b->kv + (size_t)n * kw;
    mm(b, &L->wq, b->x, n, L->bq, b->q);
    mm(b, &L->wk, b->x, n, L->bk, k);
    mm(b, &L->wv, b->x, n, L->bv, v);
    const float eps = (float)c->rms_norm_eps;
    for (uint32_t t = 0; t < n; t++) {
        float *qt = b->q + (size_t)t * qw, *kt = k + (size_t)t * kw;
        if (m->arch == MOE_ARCH_OLMOE) {
            moe_rmsnorm(qt, L->q_norm, qw, eps, qt);
            moe_rmsnorm(kt, L->k_norm, kw, eps, kt);
        } else if (m->arch == MOE_ARCH_QWEN3_MOE || c->use_qk_norm) {
            for (uint32_t hh = 0; hh < H; hh++) moe_rmsnorm(qt + hh * d, L->q_norm, d, eps, qt + hh * d);
            for (uint32_t g = 0; g < K; g++) moe_rmsnorm(kt + g * d, L->k_norm, d, eps, kt + g * d);
        }
        moe_rope_apply(&m->rope, qt, H, d, b->pos0 + t);
        moe_rope_apply(&m->rope, kt, K, d, b->pos0 + t);
        memcpy(L->k_cache + (size_t)(b->pos0 + t) * kw, kt, kw * sizeof(float));
        memcpy(L->v_cache + (size_t)(b->pos0 + t) * kw, v + (size_t)t * kw, kw * sizeof(float));
    }
    /* a sliding layer's query at p sees keys p - window + 1 .. p (the
     * cache keeps every position; only the span attended moves) */
    const uint32_t group = H / K, span = b->pos0 + n;
    const uint32_t win = c->is_sliding_layer[L - m->layers] ? c->sliding_window : 0;
#pragma omp parallel
    {
        float *s = malloc((size_t)span * sizeof *s);
#pragma omp for collapse(2) schedule(static)
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t hh = 0; hh < H; hh++) {
                const uint32_t p = b->pos0 + t, g = hh / group;
                const uint32_t j0 = win && p >= win ? p - win + 1 : 0;
                const float *qv = b->q + (size_t)t * qw + hh * d;
                for (uint32_t j = j0; j <= p; j++)
                    s[j - j0] = dotf(qv, L->k_cache + (size_t)j * kw + g * d, d) * m->attn_scale;
                moe_softmax(s, p + 1 - j0);
                float *o = b->att + (size_t)t * qw + hh * d;
                memset(o, 0, d * sizeof *o);
                for (uint32_t j = j0; j <= p; j++) axpy(o, s[j - j0], L->v_cache + (size_t)j * kw + g * d, d);
            }
        free(s);
    }
    mm(b, &L->wo, b->att, n, NULL, b->out);
}

/* DeepSeek's multi-head latent attention, absorbed: each head's query is
 * taken into the latent space (W_uk^T q_nope), attends to the cached latents
 * and rotated keys, and the latent result is taken out through W_uv. */
static void attention_mla(moe_llm *m, layer *L, batch *b) {
    const moe_hf_config *c = &m->cfg;
    const uint32_t n = b->n, H = c->n_heads, nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim;
    const uint32_t qd = nope + rope, vd = c->v_head_dim, kvl = c->kv_lora_rank, kw = m->kv_width;
    float *kv = b->kv;
    if (c->q_lora_rank) {
        const uint32_t ql = c->q_lora_rank;
        mm(b, &L->wq_a, b->x, n, NULL, b->qlat);
        /* transformers builds q_a_layernorm with its default eps, as kv_a's */
        for (uint32_t t = 0; t < n; t++) moe_rmsnorm(b->qlat + (size_t)t * ql, L->q_a_norm, ql, 1e-6f, b->qlat + (size_t)t * ql);
        mm(b, &L->wq_b, b->qlat, n, NULL, b->q);
    } else {
        mm(b, &L->wq, b->x, n, NULL, b->q);
    }
    mm(b, &L->wkv_a, b->x, n, NULL, kv);
    for (uint32_t t = 0; t < n; t++) {
        float *kt = kv + (size_t)t * kw;
        /* transformers' DeepSeek-V2 builds this norm with its default eps. */
        moe_rmsnorm(kt, L->kv_a_norm, kvl, 1e-6f, kt);
        moe_rope_apply(&m->rope, kt + kvl, 1, rope, b->pos0 + t);
        moe_rope_apply(&m->rope, b->q + (size_t)t * H * qd + nope, H, qd, b->pos0 + t);
        memcpy(L->k_cache + (size_t)(b->pos0 + t) * kw, kt, kw * sizeof(float));
    }
    const uint32_t span = b->pos0 + n;
    /* The up-projections per head. In a block format (a quantized file's
     * k_b and v_b), matrix products on the engine in that format: qa_h =
     * q_nope,h k_b[h]^T [n, kvl] before the scores, o_h = lat_h v_b[h]^T
     * [n, vd] after, never a row dequantized per token. In f32, f16 or
     * bf16, rows converted in place and f32 dot products, as transformers
     * computes them (the engine's bf16 kernels would round q and the
     * latent to bf16). */
    const bool kb_eng = moe_dtype_is_block(L->k_b.type), vb_eng = moe_dtype_is_block(L->v_b.type);
    const size_t hn = (size_t)n * kvl;
    float *qa = malloc((size_t)H * hn * sizeof *qa), *lat = malloc((size_t)H * hn * sizeof *lat);
    float *qn = malloc((size_t)n * (nope > vd ? nope : vd) * sizeof *qn);
    if (!qa || !lat || !qn) {
        free(qa), free(lat), free(qn);
        if (b->st == MOE_OK) b->st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "llm: out of memory for MLA of %u tokens", n);
        return;
    }
    const size_t kb_rb = moe_mat_row_bytes(&L->k_b), vb_rb = moe_mat_row_bytes(&L->v_b);
    for (uint32_t hh = 0; kb_eng && hh < H; hh++) {
        for (uint32_t t = 0; t < n; t++) memcpy(qn + (size_t)t * nope, b->q + (size_t)t * H * qd + hh * qd, nope * 4);
        const moe_mat kb = {L->k_b.type, (const uint8_t *)L->k_b.data + (size_t)hh * kvl * kb_rb, kvl, nope};
        mm(b, &kb, qn, n, NULL, qa + hh * hn);
    }
#pragma omp parallel
    {
        float *s = malloc((size_t)span * sizeof *s), *row = malloc((size_t)kvl * sizeof *row);
#pragma omp for collapse(2) schedule(static)
        for (uint32_t t = 0; t < n; t++)
            for (uint32_t hh = 0; hh < H; hh++) {
                if (!s || !row) continue;
                const uint32_t p = b->pos0 + t;
                const float *qv = b->q + (size_t)t * H * qd + hh * qd;
                float *qah = qa + hh * hn + (size_t)t * kvl, *lt = lat + hh * hn + (size_t)t * kvl;
                for (uint32_t k = 0; !kb_eng && k < kvl; k++) {
                    moe_mat_row(&L->k_b, hh * kvl + k, row);
                    qah[k] = dotf(row, qv, nope);
                }
                for (uint32_t j = 0; j <= p; j++) {
                    const float *cj = L->k_cache + (size_t)j * kw;
                    s[j] = (dotf(qah, cj, kvl) + dotf(qv + nope, cj + kvl, rope)) * m->attn_scale;
                }
                moe_softmax(s, p + 1);
                memset(lt, 0, kvl * sizeof *lt);
                for (uint32_t j = 0; j <= p; j++) axpy(lt, s[j], L->k_cache + (size_t)j * kw, kvl);
                float *o = b->att + (size_t)t * H * vd + hh * vd;
                for (uint32_t i = 0; !vb_eng && i < vd; i++) {
                    moe_mat_row(&L->v_b, hh * vd + i, row);
                    o[i] = dotf(row, lt, kvl);
                }
            }
        if (!s || !row) {
#pragma omp critical
            if (b->st == MOE_OK) b->st = moe_fail(MOE_ERR_OUT_OF_MEMORY, "llm: out of memory for MLA");
        }
        free(s), free(row);
    }
    for (uint32_t hh = 0; vb_eng && hh < H; hh++) {
        const moe_mat vb = {L->v_b.type, (const uint8_t *)L->v_b.data + (size_t)hh * vd * vb_rb, vd, kvl};
        mm(b, &vb, lat + hh * hn, n, NULL, qn);
        for (uint32_t t = 0; t < n; t++) memcpy(b->att + (size_t)t * H * vd + hh * vd, qn + (size_t)t * vd, vd * 4);
    }
    free(qa), free(lat), free(qn);
    mm(b, &L->wo, b->att, n, NULL, b->out);
}

/* out[n, hidden] = down(silu(gate x) * up x) for the layer's MLP. */
static void mlp(const layer *L, batch *b, float *out) {
    const uint32_t n = b->n, inter = L->mlp_gate.rows;
    mm(b, &L->mlp_gate, b->x, n, NULL, b->tmp1);
    mm(b, &L->mlp_up, b->x, n, NULL, b->tmp2);
    for (size_t i = 0; i < (size_t)n * inter; i++) b->tmp1[i] = silu(b->tmp1[i]) * b->tmp2[i];
    mm(b, &L->mlp_down, b->tmp1, n, NULL, out);
}

/* The router's logits into the batch's experts and gate weights, by the
 * public API's routing rule (moe_route: the same code a host loop's
 * moe_layer_forward_logits runs). */
static void route(const moe_llm *m, const layer *L, batch *b) {
    const moe_hf_config *c = &m->cfg;
    moe_routing r = moe_routing_defaults(c->top_k);
    r.norm_topk = c->norm_topk_prob;
    /* renormalised weights are not scaled (routed_scaling_factor is 1 for
     * the models that renormalise), except by noaux_tc, which scales */
    const bool noaux = !strcmp(c->topk_method, "noaux_tc");
    r.scale = !c->norm_topk_prob || noaux ? (float)c->routed_scaling : 1.0f;
    if (noaux) { /* deepseek_v3, glm4_moe */
        r.scoring = MOE_SCORING_SIGMOID;
        r.bias = L->score_bias;
        r.n_group = c->n_group;
        r.topk_group = c->topk_group;
    }
    if (b->st == MOE_OK) b->st = moe_route(&r, c->n_routed_experts, b->n, b->logits_e, b->ids, b->w);
}

static moe_status ffn(moe_llm *m, layer *L, batch *b) {
    const uint32_t n = b->n, h = m->cfg.hidden_size;
    if (!L->moe) {
        mlp(L, b, b->out);
        return b->st;
    }
    /* Router lookahead (HybriMoE): the next MoE layers' routers on this
     * layer's input predict their routing, so the runtime can copy their
     * experts to the GPU while this layer runs. */
    const uint32_t ahead = moe_runtime_lookahead(b->rt);
    const layer *end = m->layers + m->cfg.n_layers;
    uint32_t done = 0;
    for (const layer *N = L + 1; N < end && done < ahead && b->st == MOE_OK; N++) {
        if (!N->moe) continue;
        mm(b, &N->router, b->x, n, NULL, b->logits_e);
        if (b->st) return b->st;
        route(m, N, b);
        if (b->st) return b->st;
        if ((b->st = moe_runtime_predict(b->rt, N->moe_index, n, m->cfg.top_k, b->ids))) return b->st;
        done++;
    }
    mm(b, &L->router, b->x, n, NULL, b->logits_e);
    if (b->st) return b->st;
    route(m, L, b);
    if (b->st) return b->st;
    moe_status s = moe_layer_forward(b->rt, L->moe_index, n, b->x, m->cfg.top_k, b->ids, b->w, b->out);
    if (s || !L->mlp_gate.data) return s;
    float *sh = b->att, *gate = b->tmp2; /* both free at this point; att is at least hidden wide */
    mlp(L, b, sh);
    if (L->shared_gate.data) mm(b, &L->shared_gate, b->x, n, NULL, gate);
    for (uint32_t t = 0; t < n && b->st == MOE_OK; t++)
        axpy(b->out + (size_t)t * h, L->shared_gate.data ? 1.0f / (1.0f + expf(-gate[t])) : 1.0f, sh + (size_t)t * h, h);
    return b->st;
}

static void batch_free(batch *b) {
    free(b->h), free(b->x), free(b->q), free(b->kv), free(b->att), free(b->out);
    free(b->tmp1), free(b->tmp2), free(b->logits_e), free(b->ids), free(b->w), free(b->qlat);
}

static moe_status batch_alloc(const moe_llm *m, batch *b, uint32_t n, uint32_t pos0) {
    const moe_hf_config *c = &m->cfg;
    memset(b, 0, sizeof *b);
    b->n = n, b->pos0 = pos0;
    const size_t h = c->hidden_size, qw = (size_t)c->n_heads * c->head_dim;
    size_t att = c->mla ? (size_t)c->n_heads * c->v_head_dim : qw;
    if (att < h) att = h;
    size_t inter = c->dense_inter > c->shared_inter ? c->dense_inter : c->shared_inter;
    const size_t kv = c->mla ? m->kv_width : 2 * (size_t)m->kv_width;
    b->h = malloc(n * h * sizeof(float));
    b->x = malloc(n * h * sizeof(float));
    b->q = malloc(n * qw * sizeof(float));
    b->kv = malloc(n * kv * sizeof(float));
    b->att = malloc(n * att * sizeof(float));
    b->out = malloc(n * h * sizeof(float));
    b->tmp1 = malloc(n * (inter ? inter : 1) * sizeof(float));
    b->tmp2 = malloc(n * (inter ? inter : 1) * sizeof(float));
    b->logits_e = malloc(n * (size_t)c->n_routed_experts * sizeof(float));
    b->ids = malloc(n * (size_t)c->top_k * sizeof(int32_t));
    b->w = malloc(n * (size_t)c->top_k * sizeof(float));
    b->qlat = c->q_lora_rank ? malloc(n * (size_t)c->q_lora_rank * sizeof(float)) : NULL;
    if (!b->h || !b->x || !b->q || !b->kv || !b->att || !b->out || !b->tmp1 || !b->tmp2 || !b->logits_e || !b->ids ||
        !b->w || (c->q_lora_rank && !b->qlat)) {
        batch_free(b);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "llm: out of memory for a batch of %u tokens", n);
    }
    return MOE_OK;
}

static moe_status check_tokens(const moe_llm *m, const int32_t *tokens, uint32_t n, uint32_t pos0) {
    if ((uint64_t)pos0 + n > m->ctx)
        return moe_fail(MOE_ERR_INVALID_ARG, "llm: %u tokens at position %u do not fit in the context of %u", n, pos0,
                        m->ctx);
    for (uint32_t t = 0; t < n; t++)
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= m->cfg.vocab_size)
            return moe_fail(MOE_ERR_INVALID_ARG, "llm: token %d (at %u) is outside the vocabulary of %u", tokens[t], t,
                            m->cfg.vocab_size);
    return MOE_OK;
}

moe_status moe_llm_forward(moe_llm *m, moe_runtime_t *rt, const int32_t *tokens, uint32_t n, uint32_t pos0,
                           bool all_logits, float *logits) {
    if (!m || !rt || (!tokens && n) || !logits) return moe_fail(MOE_ERR_INVALID_ARG, "llm_forward: NULL argument");
    if (!n) return MOE_OK;
    moe_status s = check_tokens(m, tokens, n, pos0);
    if (s) return s;
    batch b;
    if ((s = batch_alloc(m, &b, n, pos0))) return s;
    b.rt = rt;
    const uint32_t h = m->cfg.hidden_size;
    const float eps = (float)m->cfg.rms_norm_eps;
    for (uint32_t t = 0; t < n; t++) moe_mat_row(&m->embed, (uint32_t)tokens[t], b.h + (size_t)t * h);
    for (uint32_t l = 0; l < m->cfg.n_layers && s == MOE_OK; l++) {
        layer *L = &m->layers[l];
        for (uint32_t t = 0; t < n; t++) moe_rmsnorm(b.h + (size_t)t * h, L->attn_norm, h, eps, b.x + (size_t)t * h);
        (m->cfg.mla ? attention_mla : attention_std)(m, L, &b);
        if ((s = b.st)) break;
        for (size_t i = 0; i < (size_t)n * h; i++) b.h[i] += b.out[i];
        for (uint32_t t = 0; t < n; t++) moe_rmsnorm(b.h + (size_t)t * h, L->ffn_norm, h, eps, b.x + (size_t)t * h);
        if ((s = ffn(m, L, &b))) break;
        for (size_t i = 0; i < (size_t)n * h; i++) b.h[i] += b.out[i];
    }
    if (s == MOE_OK) {
        const uint32_t first = all_logits ? 0 : n - 1, cnt = n - first;
        for (uint32_t t = first; t < n; t++) moe_rmsnorm(b.h + (size_t)t * h, m->out_norm, h, eps, b.x + (size_t)t * h);
        mm(&b, &m->lm_head, b.x + (size_t)first * h, cnt, NULL, logits);
        s = b.st;
    }
    batch_free(&b);
    return s;
}
