/* The model seam: a loaded model of any supported architecture as the engine and the tools see it
 * (its shape, eos ids, identity, KV layout and forward pass), and model_load, which reads
 * config.json and hands the directory to the family that implements its architecture. Owns the
 * family's state; knows nothing of requests, blocks, tiers or HTTP. */
#ifndef KVSERVE_MODEL_H
#define KVSERVE_MODEL_H

#include "model/backend.h"
#include "model/hf_config.h"

typedef struct model model;

/* What a family provides. The engine calls forward from its one thread. */
typedef struct model_ops {
    /* One forward step: writes the batch's K/V into pool (layout from model_kv_layout) and returns
     * the f32 logits of the batch's out_rows rows in logits[n_out * vocab] (host memory).
     * batch.n_tokens <= max_tokens. */
    void (*forward)(model *m, const backend_batch *batch, void *pool,
                    const backend_kv_layout *layout, float *logits);
    /* Optional (NULL: not offered): forward for a step that reads KV blocks still being loaded;
     * before layer l's ops the compute stream waits for layer_ready[l] ([n_layers]). */
    void (*forward_layers)(model *m, const backend_batch *batch, void *pool,
                           const backend_kv_layout *layout, float *logits,
                           backend_event *const *layer_ready);
    /* Frees the family's state (impl); NULL when there is none. */
    void (*free)(model *m);
} model_ops;

struct model {
    const model_ops *ops;
    void *impl; /* the family's state (e.g. a llama_model) */
    backend *be;
    hf_config cfg; /* zero for models made by hand (tests) */
    /* the KV pool's shape (model_kv_layout) */
    int n_layers, n_kv_heads, head_dim;
    int vocab;
    int max_tokens;   /* tokens one forward accepts */
    int max_position; /* context length from config.json */
    int eos_ids[HF_CONFIG_MAX_EOS];
    int n_eos;
    size_t weight_bytes;
    /* F8_E4M3 KV: [n_layers][k, v] scales (the family's memory), NULL when the KV is not fp8 */
    const float *kv_scales;
    /* Identity of the weights for the prefix-cache hash root: hex SHA-256 of the family's shape
     * string (architecture, sizes, KV dtype, backend), the load format, config.json's bytes and
     * the name, size and mtime of every safetensors file. */
    char fingerprint[65];
};

typedef enum model_load_format { MODEL_LOAD_SAFETENSORS, MODEL_LOAD_DUMMY } model_load_format;

typedef struct model_load_options {
    model_load_format format; /* DUMMY: random weights from config.json alone (fixed seed) */
    int max_tokens;           /* tokens of one forward step */
    /* weights quantized to FP8 (e4m3, one scale per output channel) at load when they are not
     * already FP8 in the checkpoint (the `quantization: fp8` knob) */
    bool quantize_fp8;
    /* called with (bytes done, bytes total) while weights load; NULL = none */
    void (*progress)(size_t done, size_t total, void *ctx);
    void *progress_ctx;
} model_load_options;

/* Loads dir onto be with the family that config.json's architecture names. NULL and err set on
 * any problem with the files (message names the file and field) or an unsupported architecture.
 * The caller frees with model_free. */
model *model_load(const char *dir, backend *be, const model_load_options *opt, kv_error *err);
/* NULL is a no-op. */
void model_free(model *m);

/* The paged KV pool's layout for blocks of block_size tokens (block_bytes filled). */
backend_kv_layout model_kv_layout(const model *m, int block_size);

static inline void model_forward(model *m, const backend_batch *batch, void *pool,
                                 const backend_kv_layout *layout, float *logits) {
    m->ops->forward(m, batch, pool, layout, logits);
}

#endif
