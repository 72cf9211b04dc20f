/* Phi-3 / 3.5 / 4-mini (Phi3ForCausalLM): Llama's step over fused checkpoint tensors
 * (self_attn.qkv_proj = [q | k | v] rows, mlp.gate_up_proj = [gate | up] rows, the layouts the
 * shared blocks use), partial rotary (hf_config rot_dim) and longrope (short / long frequency
 * tables and the attention factor on cos and sin, chosen per step by llama_forward_layers). */
#include "model/llama.h"

#include <stdio.h>

static int phi3_layer_load(llama_loader *ld, int i, llama_layer *L, kv_error *err) {
    const hf_config *c = llama_loader_config(ld);
    int64_t dim = c->hidden_size, q = (int64_t)c->n_heads * c->head_dim;
    int64_t qkv = q + 2 * (int64_t)c->n_kv_heads * c->head_dim, ff = c->intermediate_size;
    char n[128];
#define NAME(fmt) snprintf(n, sizeof n, "model.layers.%d." fmt, i)
    NAME("input_layernorm.weight");
    if (!(L->attn_norm = llama_load_norm(ld, n, dim, err))) return -1;
    NAME("self_attn.qkv_proj.weight");
    if (!(L->wqkv = llama_load_weight(ld, n, qkv, dim, err))) return -1;
    NAME("self_attn.o_proj.weight");
    if (!(L->wo = llama_load_weight(ld, n, dim, q, err))) return -1;
    NAME("post_attention_layernorm.weight");
    if (!(L->ffn_norm = llama_load_norm(ld, n, dim, err))) return -1;
    NAME("mlp.gate_up_proj.weight");
    if (!(L->wgu = llama_load_weight(ld, n, 2 * ff, dim, err))) return -1;
    NAME("mlp.down_proj.weight");
    if (!(L->wdown = llama_load_weight(ld, n, dim, ff, err))) return -1;
#undef NAME
    return 0;
}

const llama_family phi3_family = {.name = "phi3", .layer_load = phi3_layer_load};
