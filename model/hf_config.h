/* config.json (+ generation_config.json) of a Hugging Face Llama-family model directory, parsed
 * into one struct. Understands both dialects: Hub files (rope_theta, rope_scaling, torch_dtype) and
 * files saved by transformers >= 5 (rope_parameters, dtype, layer_types). Owns no memory. */
#ifndef KVSERVE_HF_CONFIG_H
#define KVSERVE_HF_CONFIG_H

#include "model/common.h"

#define HF_CONFIG_MAX_EOS 8

typedef enum hf_arch {
    HF_ARCH_LLAMA,   /* LlamaForCausalLM */
    HF_ARCH_MISTRAL, /* MistralForCausalLM */
    HF_ARCH_QWEN2    /* Qwen2ForCausalLM */
} hf_arch;

typedef enum hf_rope_type { HF_ROPE_DEFAULT, HF_ROPE_LLAMA3 } hf_rope_type;

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
} hf_config;

/* Parses config.json text. Unsupported architecture, rope type or field value is an error that
 * names it ("config.json: rope_scaling.rope_type 'yarn' is not supported"). Rejected: hidden_act
 * other than silu, mlp_bias, any layer that is not full attention (layer_types, or a
 * sliding_window shorter than max_position_embeddings), and a quantization_config that is not
 * FP8: quant_method "fp8" (e4m3, dynamic or static activations, optional weight_block_size) or
 * "compressed-tensors" whose groups quantize weights to 8-bit float (tensor, channel or block
 * strategy) and activations to 8-bit float or not at all; the message names the method. */
int hf_config_parse(hf_config *cfg, const char *json, size_t len, kv_error *err);

/* Applies generation_config.json text to a parsed cfg: its bos_token_id / eos_token_id (int or
 * list), when present and not null, replace the config's. */
int hf_config_apply_generation(hf_config *cfg, const char *json, size_t len, kv_error *err);

/* Reads dir/config.json, then dir/generation_config.json when present (its eos/bos win). */
int hf_config_load(hf_config *cfg, const char *dir, kv_error *err);

/* Fills inv_freq[head_dim / 2] for RoPE, llama3 scaling applied exactly as transformers'
 * _compute_llama3_parameters does (computed in double, rounded to float once). */
void hf_config_rope_inv_freq(const hf_config *cfg, float *inv_freq);

#endif
