/* Granite 3.x dense (GraniteForCausalLM): Llama's tensors with four multipliers: the embeddings
 * times embedding_multiplier, attention scores times attention_multiplier (instead of
 * head_dim^-0.5; hf_config_attn_scale), each block's output times residual_multiplier before
 * the residual add, and logits divided by logits_scaling (llama.c's logits finish). */
#include "model/llama.h"

static void granite_forward_ops(llama_model *m, const backend_batch *batch, void *pool,
                                const backend_kv_layout *kvl, backend_event *const *layer_ready) {
    const hf_config *c = &m->cfg;
    backend *be = m->be;
    const backend_ops *op = be->ops;
    int n = batch->n_tokens, dim = c->hidden_size;
    size_t rows = (size_t)n * (size_t)dim;
    float eps = (float)c->rms_norm_eps, res = (float)c->residual_multiplier;

    // token embeddings times embedding_multiplier into the residual stream x
    op->embed(be, m->x, m->embed, dim);
    op->scale(be, m->x, rows, (float)c->embedding_multiplier);
    op->rmsnorm(be, m->h, m->x, m->layers[0].attn_norm, n, dim, eps);
    for (int l = 0; l < c->n_layers; l++) {
        llama_layer_wait(m, l, layer_ready);
        llama_attention_block(m, l, batch, pool, kvl);
        // x += residual_multiplier * attention, then the MLP norm
        op->scale(be, m->o, rows, res);
        op->add_rmsnorm(be, m->h, m->x, m->o, m->layers[l].ffn_norm, n, dim, eps);
        llama_mlp_block(m, l, n);
        // x += residual_multiplier * MLP, then the next layer's attention norm
        op->scale(be, m->o, rows, res);
        if (l + 1 < c->n_layers)
            op->add_rmsnorm(be, m->h, m->x, m->o, m->layers[l + 1].attn_norm, n, dim, eps);
        else
            op->add(be, m->x, m->o, rows);
    }
    llama_logits_first(m, batch);
}

const llama_family granite_family = {.name = "granite", .forward_ops = granite_forward_ops};
