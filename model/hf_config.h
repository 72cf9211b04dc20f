/* config.json (+ generation_config.json) of a Hugging Face decoder-only model directory (the
 * Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3, Granite and SmolLM3 families), parsed into one struct.
 * Understands both dialects: Hub files (rope_theta, rope_scaling, torch_dtype) and files saved by
 * transformers >= 5 (rope_parameters, dtype, layer_types). Owns no memory. */
#ifndef KVSERVE_HF_CONFIG_H
#define KVSERVE_HF_CONFIG_H

#include "model/common.h"

#define HF_CONFIG_MAX_EOS          8
#define HF_CONFIG_MAX_LAYERS       4096
#define HF_CONFIG_MAX_ROPE_FACTORS 256 /* longrope factors: rot_dim / 2 of them */

typedef enum hf_arch {
    HF_ARCH_LLAMA,   /* LlamaForCausalLM */
    HF_ARCH_MISTRAL, /* MistralForCausalLM */
    HF_ARCH_QWEN2,   /* Qwen2ForCausalLM */
    HF_ARCH_QWEN3,   /* Qwen3ForCausalLM */
    HF_ARCH_GEMMA2,  /* Gemma2ForCausalLM */
    HF_ARCH_GEMMA3,  /* Gemma3ForCausalLM (text) */
    HF_ARCH_PHI3,    /* Phi3ForCausalLM (Phi-3, 3.5, 4-mini) */
    HF_ARCH_GRANITE, /* GraniteForCausalLM */
    HF_ARCH_SMOLLM3  /* SmolLM3ForCausalLM */
} hf_arch;

typedef enum hf_rope_type {
    HF_ROPE_DEFAULT,
    HF_ROPE_LLAMA3,
    HF_ROPE_LINEAR,  /* inv_freq / factor */
    HF_ROPE_LONGROPE /* inv_freq / short or long factor, cos and sin * attention factor */
} hf_rope_type;

/* The MLP's activation: SwiGLU (silu) or GeGLU (gelu, tanh approximation: Gemma). */
typedef enum hf_act { HF_ACT_SILU, HF_ACT_GELU_TANH } hf_act;

/* quantization_config of an FP8 checkpoint (the only kind read; others are refused by name). */
typedef enum hf_quant {
    HF_QUANT_NONE,
    HF_QUANT_FP8, /* quant_method "fp8": weight_scale_inv, per tensor or block-wise */
    HF_QUANT_COMPRESSED_TENSORS, /* "compressed-tensors", float 8-bit weights: weight_scale */
} hf_quant;

typedef struct hf_config {
    hf_arch arch;
    char arch_name[64];
    char model_type[32];
    int hidden_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim; /* explicit head_dim, else hidden_size / n_heads */
    int intermediate_size;
    int vocab_size;
    int max_position_embeddings;
    double rope_theta;
    hf_rope_type rope_type;
    double rope_factor; /* llama3 scaling */
    double rope_low_freq_factor;
    double rope_high_freq_factor;
    int rope_original_max_position; /* original_max_position_embeddings */
    int rot_dim; /* leading dims of each head that RoPE rotates: head_dim * partial_rotary_factor */
    double rope_attention_factor; /* longrope: cos and sin are multiplied by it; 1 otherwise */
    int n_rope_factors;           /* longrope: rot_dim / 2 */
    double rope_short_factor[HF_CONFIG_MAX_ROPE_FACTORS];
    double rope_long_factor[HF_CONFIG_MAX_ROPE_FACTORS];
    /* sliding-window layers with a RoPE of their own (Gemma 3: rope_local_base_freq, or
     * rope_parameters.sliding_attention), default type; otherwise they share the one above */
    bool rope_local;
    double rope_local_theta;
    double rms_norm_eps;
    bool tie_word_embeddings;
    bool attention_bias;     /* q/k/v projections have bias (Qwen2 always, Llama attention_bias) */
    bool attention_out_bias; /* o_proj has bias too (Llama attention_bias only) */
    int bos_token_id;        /* -1 when absent */
    int eos_token_ids[HF_CONFIG_MAX_EOS];
    int n_eos;
    kv_dtype dtype; /* torch_dtype / dtype; F32 when absent */
    hf_quant quant;
    int quant_block[2]; /* block-wise weight scales: [rows, cols] of a block; 0 when none */

    /* attention kinds: layer l attends to the last sliding_window positions only when bit l of
     * layer_sliding is set (layer_types, or the family's default pattern); 0 = no window */
    int sliding_window;
    uint8_t layer_sliding[HF_CONFIG_MAX_LAYERS / 8];
    uint8_t layer_nope[HF_CONFIG_MAX_LAYERS / 8]; /* bit l: layer l applies no RoPE (SmolLM3) */
    /* family specifics (neutral values for the others) */
    hf_act act;
    bool qk_norm;                 /* per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3) */
    double query_pre_attn_scalar; /* Gemma: scores scaled by its ^-0.5; 0 = head_dim */
    double attn_softcap;          /* Gemma 2: attn_logit_softcapping; 0 = none */
    double final_softcap;         /* Gemma 2: final_logit_softcapping; 0 = none */
    double embedding_multiplier;  /* Granite (1 otherwise) */
    double attention_multiplier;  /* Granite: the score scale; 0 = from query_pre_attn_scalar */
    double residual_multiplier;   /* Granite (1 otherwise) */
    double logits_scaling;        /* Granite: logits are divided by it (1 otherwise) */
} hf_config;

static inline bool hf_config_layer_sliding(const hf_config *c, int l) {
    return (c->layer_sliding[l / 8] >> (l % 8)) & 1;
}
static inline bool hf_config_layer_rope(const hf_config *c, int l) {
    return !((c->layer_nope[l / 8] >> (l % 8)) & 1);
}

/* Parses config.json text. Unsupported architecture, rope type or field value is an error that
 * names it ("config.json: rope_scaling.rope_type 'yarn' is not supported"). Rejected, naming the
 * field: mixture of experts (num_experts, num_local_experts, n_routed_experts), multimodal
 * (vision_config, text_config), hybrid attention (layer_types other than full_attention and
 * sliding_attention, layers_block_type, hybrid_override_pattern), an activation other than the
 * family's, mlp_bias, and a quantization_config that is not FP8: quant_method "fp8" (e4m3,
 * dynamic or static activations, optional weight_block_size) or "compressed-tensors" whose groups
 * quantize weights to 8-bit float (tensor, channel or block strategy) and activations to 8-bit
 * float or not at all; the message names the method. */
int hf_config_parse(hf_config *cfg, const char *json, size_t len, kv_error *err);

/* Applies generation_config.json text to a parsed cfg: its bos_token_id / eos_token_id (int or
 * list), when present and not null, replace the config's. */
int hf_config_apply_generation(hf_config *cfg, const char *json, size_t len, kv_error *err);

/* Reads dir/config.json, then dir/generation_config.json when present (its eos/bos win). */
int hf_config_load(hf_config *cfg, const char *dir, kv_error *err);

/* Fills inv_freq[rot_dim / 2] for RoPE of the full-attention layers, scaling applied exactly as
 * transformers' _compute_*_parameters do (computed in double, rounded to float once); longrope
 * with its short factors. */
void hf_config_rope_inv_freq(const hf_config *cfg, float *inv_freq);
/* Same for one kind of layer: local = the sliding layers' own RoPE (rope_local), long = longrope's
 * long factors (used once a sequence is longer than rope_original_max_position). */
void hf_config_rope_inv_freq_for(const hf_config *cfg, bool local, bool long_factors,
                                 float *inv_freq);
/* The softmax scale of q.k: attention_multiplier, else query_pre_attn_scalar^-0.5, else
 * head_dim^-0.5. */
float hf_config_attn_scale(const hf_config *cfg);

#endif
