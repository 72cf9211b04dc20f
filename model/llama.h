/* The decoder-only transformer every family here is (Llama 2/3.x, Mistral, Qwen2/3, Gemma 2/3,
 * Phi-3, Granite, SmolLM3): weights on a backend and the forward pass as a list of backend op
 * calls. Shared here: the weights' struct, the loader, the step driver (recording, logits) and
 * the attention and MLP blocks; each family (a row of model/model.c's table) brings its tensor
 * names (layer_load) and its step's ops (forward_ops) in its own file. Owns its weights and
 * scratch space; the KV pool belongs to the caller (kvcache/), which passes it with every step. */
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
    void *q_norm;    /* [head_dim] per-head RMSNorm of q before RoPE (Qwen3, Gemma 3), or NULL */
    void *k_norm;    /* [head_dim] same for k, or NULL */
    void *post_attn_norm; /* [dim] Gemma: norm of the attention output, or NULL */
    void *post_ffn_norm;  /* [dim] Gemma: norm of the MLP output, or NULL */
    /* from config.json: how this layer attends (scale, soft cap, window) and its RoPE */
    backend_attn_params attn;
    bool rope;       /* applies RoPE (SmolLM3 has layers without) */
    bool local_rope; /* uses the sliding layers' own frequencies (inv_freq_local) */
} llama_layer;

typedef struct llama_model llama_model;
typedef struct llama_loader llama_loader; /* a load in progress (llama.c) */

/* What a family brings (one `const llama_family` per family file, named in model/model.c). */
typedef struct llama_family {
    const char *name;
    /* Loads layer i's tensors into L (config in llama_loader_config). NULL: Llama's names. */
    int (*layer_load)(llama_loader *ld, int i, llama_layer *L, kv_error *err);
    /* Every op of a step from the embeddings to the logits of out rows [0, min(n_out,
     * LLAMA_LOGIT_ROWS)) in m->logits, before llama_logits_finish. layer_ready: see
     * llama_forward_layers (NULL: none). NULL: llama_forward_ops. */
    void (*forward_ops)(llama_model *m, const backend_batch *batch, void *pool,
                        const backend_kv_layout *kvl, backend_event *const *layer_ready);
    float norm_offset; /* added to every RMSNorm weight at load: Gemma's (1 + w) */
    int extra_norms;   /* [dim] norms per layer beyond two (progress accounting) */
} llama_family;

/* A recorded decode step (backend graph ops), keyed on what the step's ops are called with
 * beyond the batch metadata: batch size, logits rows, block table width, KV pool and layout. */
typedef struct llama_graph {
    int n_tokens, n_out, max_blocks;
    bool rope_long; /* the step used longrope's long factors */
    const void *pool;
    backend_kv_layout kvl;
    bool seen;         /* a step of this key ran op by op since the slot was (re)filled */
    backend_graph *g;  /* NULL until the second step of this key records it */
    uint64_t last_use; /* graph_clock at the last use (least recently used slot is refilled) */
} llama_graph;

#define LLAMA_N_GRAPHS 32
/* Rows of logits computed per matmul: bounds the logits scratch (rows × vocab). */
#define LLAMA_LOGIT_ROWS 256

struct llama_model {
    hf_config cfg;
    const llama_family *fam;
    backend *be;
    void *embed; /* [vocab, dim] */
    llama_layer *layers;
    void *final_norm;      /* [dim] */
    void *lm_head;         /* [vocab, dim]; == embed when tied */
    float *inv_freq;       /* device [rot_dim / 2] */
    float *inv_freq_local; /* device [rot_dim / 2]: sliding layers' own (rope_local), or NULL */
    float *inv_freq_long;  /* device [rot_dim / 2]: longrope's long factors, or NULL */
    bool rope_long; /* this step uses inv_freq_long (a sequence is past the original context) */
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
};

/* Loads dir (config.json + safetensors, or config.json alone with MODEL_LOAD_DUMMY: random
 * weights from a fixed seed) onto be, with the family of config.json's architecture
 * (llama_family_of). max_tokens bounds the tokens of one forward step.
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
/* The family row of model/model.c's table for arch; NULL when it has none. */
const llama_family *llama_family_of(hf_arch arch);
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

/* --- for the family files --- */

/* The families (qwen3.c, gemma.c, phi3.c, granite.c; llama_default_family is
 * Llama/Mistral/Qwen2/SmolLM3) */
extern const llama_family llama_default_family, qwen3_family, gemma_family, phi3_family,
    granite_family;

const hf_config *llama_loader_config(const llama_loader *ld);
/* The weight `name` of [rows, cols] ([rows] when cols is 0), random with MODEL_LOAD_DUMMY. NULL
 * and err set when missing or misshapen. A matrix (cols > 0) is a projection: it may be F8_E4M3
 * in the checkpoint and is quantized by the quantization: fp8 knob (llama.c's weight_load). */
void *llama_load_weight(llama_loader *ld, const char *name, int64_t rows, int64_t cols,
                        kv_error *err);
/* One device tensor of the n_parts tensors names[i] of rows[i] x cols stacked along rows (a
 * projection, as llama_load_weight, when cols > 0). */
void *llama_load_stacked(llama_loader *ld, int n_parts, char names[][128], const int64_t *rows,
                         int64_t cols, kv_error *err);
/* An RMSNorm weight [dim] plus the family's norm_offset (ones with MODEL_LOAD_DUMMY). */
void *llama_load_norm(llama_loader *ld, const char *name, int64_t dim, kv_error *err);
/* Llama's attention tensors of layer i: q/k/v stacked (+ biases), o_proj (+ bias). */
int llama_load_attention(llama_loader *ld, int i, llama_layer *L, kv_error *err);
/* Llama's MLP tensors of layer i: gate/up stacked, down_proj. */
int llama_load_mlp(llama_loader *ld, int i, llama_layer *L, kv_error *err);
/* q/k norms of layer i (self_attn.q_norm, k_norm) when config.json's family has them. */
int llama_load_qk_norms(llama_loader *ld, int i, llama_layer *L, kv_error *err);

/* Device pointer `elems` activations past p. */
void *llama_act_at(const llama_model *m, void *p, size_t elems);
/* Layer l's attention from the normed rows m->h to its output projection in m->o: q/k/v, q/k
 * norms, RoPE, the KV write, attention with the layer's params, o_proj. */
void llama_attention_block(llama_model *m, int l, const backend_batch *batch, void *pool,
                           const backend_kv_layout *kvl);
/* Layer l's MLP from m->h to m->o: gate/up, the family's activation, down_proj. */
void llama_mlp_block(llama_model *m, int l, int n);
/* The wanted rows of the residual stream m->x, final norm, and the first rows' logits. */
void llama_logits_first(llama_model *m, const backend_batch *batch);
/* Waits for layer l's K/V when layer_ready says it is still loading (once a group). */
void llama_layer_wait(llama_model *m, int l, backend_event *const *layer_ready);
/* Llama's step (Llama, Mistral, Qwen2/3, Phi-3, SmolLM3): pre-norm attention and MLP blocks. */
void llama_forward_ops(llama_model *m, const backend_batch *batch, void *pool,
                       const backend_kv_layout *kvl, backend_event *const *layer_ready);

#endif
