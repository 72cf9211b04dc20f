/* Gemma 2 and Gemma 3 text (Gemma2ForCausalLM, Gemma3ForCausalLM): embeddings scaled by
 * sqrt(hidden_size) in the activation dtype, (1 + w) RMSNorm weights (the family's norm_offset,
 * added at load), a norm before and after both the attention and the MLP, GeGLU, q/k norms
 * (Gemma 3), query_pre_attn_scalar, attention and final-logit soft-capping (Gemma 2) and
 * interleaved sliding-window and global layers with their own RoPE (layer params from
 * hf_config). */
#include "model/llama.h"

#include <math.h>
#include <stdio.h>

static int gemma_layer_load(llama_loader *ld, int i, llama_layer *L, kv_error *err) {
    int64_t dim = llama_loader_config(ld)->hidden_size;
    char n[128];
#define NAME(fmt) snprintf(n, sizeof n, "model.layers.%d." fmt, i)
    NAME("input_layernorm.weight");
    if (!(L->attn_norm = llama_load_norm(ld, n, dim, err))) return -1;
    if (llama_load_attention(ld, i, L, err) || llama_load_qk_norms(ld, i, L, err)) return -1;
    NAME("post_attention_layernorm.weight"); /* Gemma: on the attention output */
    if (!(L->post_attn_norm = llama_load_norm(ld, n, dim, err))) return -1;
    NAME("pre_feedforward_layernorm.weight");
    if (!(L->ffn_norm = llama_load_norm(ld, n, dim, err))) return -1;
    NAME("post_feedforward_layernorm.weight");
    if (!(L->post_ffn_norm = llama_load_norm(ld, n, dim, err))) return -1;
#undef NAME
    return llama_load_mlp(ld, i, L, err);
}

static void gemma_forward_ops(llama_model *m, const backend_batch *batch, void *pool,
                              const backend_kv_layout *kvl, backend_event *const *layer_ready) {
    const hf_config *c = &m->cfg;
    backend *be = m->be;
    const backend_ops *op = be->ops;
    int n = batch->n_tokens, dim = c->hidden_size;
    float eps = (float)c->rms_norm_eps;
    /* sqrt(hidden_size) rounded to the activations' dtype, as transformers' normalizer */
    float normalizer = sqrtf((float)dim);
    if (be->act_dtype == KV_DTYPE_BF16) normalizer = kv_bf16_to_f32(kv_f32_to_bf16(normalizer));

    // token embeddings, scaled, into the residual stream x
    op->embed(be, m->x, m->embed, dim);
    op->scale(be, m->x, (size_t)n * (size_t)dim, normalizer);
    // first layer's attention norm (later layers get theirs fused with the residual add)
    op->rmsnorm(be, m->h, m->x, m->layers[0].attn_norm, n, dim, eps);
    for (int l = 0; l < c->n_layers; l++) {
        const llama_layer *L = &m->layers[l];
        llama_layer_wait(m, l, layer_ready);
        // attention (windowed on sliding layers, soft-capped scores on Gemma 2), its output normed
        llama_attention_block(m, l, batch, pool, kvl);
        op->rmsnorm(be, m->o, m->o, L->post_attn_norm, n, dim, eps);
        // residual add, then the MLP's pre-norm
        op->add_rmsnorm(be, m->h, m->x, m->o, L->ffn_norm, n, dim, eps);
        // GeGLU MLP, its output normed
        llama_mlp_block(m, l, n);
        op->rmsnorm(be, m->o, m->o, L->post_ffn_norm, n, dim, eps);
        // residual add, then the next layer's attention norm
        if (l + 1 < c->n_layers)
            op->add_rmsnorm(be, m->h, m->x, m->o, m->layers[l + 1].attn_norm, n, dim, eps);
        else
            op->add(be, m->x, m->o, (size_t)n * (size_t)dim);
    }
    llama_logits_first(m, batch);
}

const llama_family gemma_family = {.name = "gemma",
                                   .layer_load = gemma_layer_load,
                                   .forward_ops = gemma_forward_ops,
                                   .norm_offset = 1.0f,
                                   .extra_norms = 2};
