/* Qwen3 dense (Qwen3ForCausalLM): Llama's layer plus a per-head RMSNorm of q and of k before
 * RoPE (self_attn.q_norm / k_norm, [head_dim]); no q/k/v bias unless attention_bias. Its step is
 * Llama's: llama_attention_block applies the norms a layer has. */
#include "model/llama.h"

#include <stdio.h>

static int qwen3_layer_load(llama_loader *ld, int i, llama_layer *L, kv_error *err) {
    int64_t dim = llama_loader_config(ld)->hidden_size;
    char n[128];
    snprintf(n, sizeof n, "model.layers.%d.input_layernorm.weight", i);
    if (!(L->attn_norm = llama_load_norm(ld, n, dim, err))) return -1;
    if (llama_load_attention(ld, i, L, err) || llama_load_qk_norms(ld, i, L, err)) return -1;
    KV_CHECK(L->q_norm && L->k_norm); /* hf_config sets qk_norm for Qwen3 */
    snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm.weight", i);
    if (!(L->ffn_norm = llama_load_norm(ld, n, dim, err))) return -1;
    return llama_load_mlp(ld, i, L, err);
}

const llama_family qwen3_family = {.name = "qwen3", .layer_load = qwen3_layer_load};
