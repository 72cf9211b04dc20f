/* The Llama-family model (Llama 2/3.x, Mistral, Qwen2): weights on a backend and the forward pass
 * as a list of backend op calls. Owns its weights and scratch space; the KV pool belongs to the
 * caller (kvcache/), which passes it with every step. */
#ifndef KVSERVE_LLAMA_H
#define KVSERVE_LLAMA_H

#include "model/model.h"

typedef struct llama_layer {
    void *attn_norm; /* [dim] */
    void *wqkv;      /* [(n_heads + 2 * n_kv_heads) * head_dim, dim]: q, k, v stacked */
    void *bqkv;      /* [(n_heads + 2 * n_kv_heads) * head_dim] or NULL */
    void *wo;        /* [dim, n_heads * head_dim] */
    void *bo;        /* [dim] or NULL (Llama with attention_bias) */
    void *ffn_norm;  /* [dim] */
    void *wgu;       /* [2 * ff, dim]: gate, up stacked */
    void *wdown;     /* [dim, ff] */
} llama_layer;

/* A recorded decode step (backend graph ops), keyed on what the step's ops are called with
 * beyond the batch metadata: batch size, logits rows, block table width, KV pool and layout. */
typedef struct llama_graph {
    int n_tokens, n_out, max_blocks;
    const void *pool;
    backend_kv_layout kvl;
    bool seen;         /* a step of this key ran op by op since the slot was (re)filled */
    backend_graph *g;  /* NULL until the second step of this key records it */
    uint64_t last_use; /* graph_clock at the last use (least recently used slot is refilled) */
} llama_graph;

#define LLAMA_N_GRAPHS 32

typedef struct llama_model {
    hf_config cfg;
    backend *be;
    void *embed; /* [vocab, dim] */
    llama_layer *layers;
    void *final_norm; /* [dim] */
    void *lm_head;    /* [vocab, dim]; == embed when tied */
    float *inv_freq;  /* device [head_dim / 2] */
    /* host [n_layers][k, v] scales of an F8_E4M3 KV pool (NULL otherwise): the checkpoint's
     * k_scale / v_scale tensors when present, else 1.0 (as vLLM) */
    float *kv_scales;
    size_t weight_bytes;
    /* scratch, activation dtype, sized for max_tokens rows per step */
    int max_tokens;
    void *x;      /* [max_tokens, dim] residual stream */
    void *h;      /* [max_tokens, dim] normed x */
    void *qkv;    /* [max_tokens, (n_heads + 2 * n_kv_heads) * head_dim] */
    void *att;    /* [max_tokens, n_heads * head_dim] attention output */
    void *o;      /* [max_tokens, dim] attention / MLP output before the residual add */
    void *gu;     /* [max_tokens, 2 * ff] gate | up */
    void *ff;     /* [max_tokens, ff] */
    void *out_x;  /* [max_tokens, dim] rows whose logits are wanted */
    void *logits; /* [min(max_tokens, 256), vocab] */
    /* pure decode steps (one new token per sequence) are recorded and replayed when the backend
     * can (graph ops): the first step of a shape runs op by op, the second is recorded */
    bool no_graphs; /* set to run every step op by op (tests compare both ways) */
    llama_graph graphs[LLAMA_N_GRAPHS];
    uint64_t graph_clock;
    uint64_t n_graph_replays; /* steps run from a recording */
} llama_model;

/* Loads dir (config.json + safetensors, or config.json alone with MODEL_LOAD_DUMMY: random
 * weights from a fixed seed) onto be. max_tokens bounds the tokens of one forward step.
 * progress, when not NULL, is called with (bytes done, bytes total). Safetensors loading ties
 * lm_head to the embedding when the checkpoint has no lm_head.weight; q/k/v biases are loaded
 * when config.json asks for them (attention_bias, Qwen2). When be's KV dtype is F8_E4M3 the
 * per-layer KV scales are read too (vLLM's names: self_attn.k_scale / v_scale, the older
 * self_attn.kv_scale for both, or k_proj / v_proj.output_scale); missing ones are 1.0. */
int llama_load(llama_model *m, backend *be, const char *dir, model_load_format format,
               int max_tokens, void (*progress)(size_t done, size_t total, void *ctx),
               void *progress_ctx, kv_error *err);
/* llama_load with every model_load option (quantize_fp8 too). */
int llama_load_opts(llama_model *m, backend *be, const char *dir, const model_load_options *opt,
                    kv_error *err);
/* The family entry for model_load (model/model.c): loads dir with llama_load and fills out
 * (ops, impl, shape). */
int llama_model_open(model *out, const char *dir, backend *be, const model_load_options *opt,
                     kv_error *err);
void llama_free(llama_model *m);

backend_kv_layout llama_kv_layout(const llama_model *m, int block_size);

/* One forward step: writes the batch's K/V into pool and returns logits (f32, host) of the
 * batch.out_rows rows in logits[n_out * vocab]. batch.n_tokens <= max_tokens. */
void llama_forward(llama_model *m, const backend_batch *batch, void *pool,
                   const backend_kv_layout *layout, float *logits);
/* llama_forward for a step that reads KV blocks still being loaded, layer group by layer group
 * (offload/transfer.h, transfer_load_layers): before layer l's ops, COMPUTE waits for
 * layer_ready[l] when it is not NULL (once per run of equal events). Never recorded nor replayed
 * (backend graphs). layer_ready is [n_layers], or NULL (= llama_forward). */
void llama_forward_layers(llama_model *m, const backend_batch *batch, void *pool,
                          const backend_kv_layout *layout, float *logits,
                          backend_event *const *layer_ready);

#endif
