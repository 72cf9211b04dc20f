/* The op interface that the forward pass, the KV cache and the offload tier are written against.
 * A backend owns device memory, streams, events and kernels; everything else holds opaque device
 * pointers. Two implementations: model/cpu (portable, f32) and model/cuda (bf16, cuBLAS).
 * Not here: which blocks a sequence owns (kvcache/), which tensors a model has (model/llama). */
#ifndef KVSERVE_BACKEND_H
#define KVSERVE_BACKEND_H

#include "model/common.h"

typedef struct backend backend;
typedef struct backend_event backend_event;
typedef struct backend_graph backend_graph;

/* Work queues. Copies on LOAD and STORE overlap work on COMPUTE (CUDA streams; the CPU backend
 * runs everything at once in call order and its events are always complete). */
typedef enum backend_stream {
    BACKEND_STREAM_COMPUTE,
    BACKEND_STREAM_LOAD,
    BACKEND_STREAM_STORE,
    BACKEND_NUM_STREAMS
} backend_stream;

/* Shape of the paged KV pool. One block holds every layer of block_size tokens, contiguous:
 *   block = [layer][k|v][kv_head][token in block][head_dim]
 * so a block moves between device and host as ONE copy of block_bytes. */
typedef struct backend_kv_layout {
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int block_size; /* tokens per block */
    kv_dtype dtype; /* the backend's kv_dtype */
    size_t block_bytes;
    /* F8_E4M3 pools: [n_layers][k, v] per-tensor scales (host memory, owned by the model): an
     * element x is stored as e4m3(x / scale) and read as e4m3 * scale. NULL: every scale 1.0. */
    const float *kv_scales;
} backend_kv_layout;

/* Fills block_bytes from the other fields. */
void backend_kv_layout_finish(backend_kv_layout *l);
/* The scale of layer's K (kv 0) or V (kv 1) in an F8_E4M3 pool (1.0 without kv_scales). */
static inline float backend_kv_scale(const backend_kv_layout *l, int layer, int kv) {
    return l->kv_scales ? l->kv_scales[2 * layer + kv] : 1.0f;
}
/* Byte offset of (layer, k=0|v=1, head, token slot) inside one block. */
size_t backend_kv_offset(const backend_kv_layout *l, int layer, int kv, int head, int slot);

/* One forward step over a batch of sequences, in host memory. Sequence s owns the new tokens
 * [seq_start[s], seq_start[s+1]) at consecutive positions ending at seq_len[s] - 1; its earlier
 * positions are already in the KV pool. Token at position p of sequence s lives in block
 * block_table[s * max_blocks + p / block_size], slot p % block_size. */
typedef struct backend_batch {
    int n_tokens; /* new tokens in this step, all sequences */
    int n_seqs;
    const int32_t *tokens;      /* [n_tokens] token ids */
    const int32_t *positions;   /* [n_tokens] absolute position of each token */
    const int32_t *seq_start;   /* [n_seqs + 1] first token of each sequence; last = n_tokens */
    const int32_t *seq_len;     /* [n_seqs] context length after this step */
    const int32_t *block_table; /* [n_seqs * max_blocks] block ids */
    int max_blocks;             /* row stride of block_table */
    int n_out;                  /* rows of logits wanted */
    const int32_t *out_rows;    /* [n_out] token indices (into tokens) whose logits are returned */
} backend_batch;

/* How one layer's attention scores its keys (Gemma 2/3, Mistral, Granite differ from plain
 * causal attention in these). */
typedef struct backend_attn_params {
    float scale;   /* multiplies q.k: head_dim^-0.5, query_pre_attn_scalar^-0.5, a multiplier */
    float softcap; /* > 0: a score s becomes softcap * tanh(s / softcap) before the softmax */
    int window;    /* > 0: the token at position p attends to positions (p - window, p] only */
} backend_attn_params;

/* The operations. Device tensors are row-major in the backend's act_dtype unless said otherwise;
 * weights are in its weight_dtype. Every op is queued on the COMPUTE stream. */
typedef struct backend_ops {
    void (*destroy)(backend *be);

    /* --- memory --- */
    void *(*dev_alloc)(backend *be, size_t bytes); /* aborts on failure; NULL never returned */
    void (*dev_free)(backend *be, void *p);
    size_t (*dev_free_bytes)(backend *be); /* device memory still free */
    void *(*host_alloc)(backend *be,
                        size_t bytes); /* pinned when the device can DMA; NULL if none */
    void (*host_free)(backend *be, void *p);
    /* Synchronous copies (set-up, tests). */
    void (*to_dev)(backend *be, void *dst, const void *src, size_t bytes);
    void (*to_host)(backend *be, void *dst, const void *src, size_t bytes);
    /* Converts n weight elements from src (host, src_dtype) into a new device tensor of
     * weight_dtype. */
    void *(*weight_upload)(backend *be, const void *src, kv_dtype src_dtype, size_t n);
    /* Optional (NULL: none; the caller dequantizes FP8 weights into weight_upload): a device
     * weight [rows, cols] of e4m3 values q times one scale per row (host arrays; cols % 16 ==
     * 0) that matmul takes as its w, kept in e4m3 (half the bytes of bf16). Freed by dev_free. */
    void *(*weight_upload_fp8)(backend *be, const uint8_t *q, const float *row_scales, size_t rows,
                               size_t cols);
    /* Optional (NULL: the caller stacks the parts on the host and calls weight_upload): the parts
     * srcs[i] of counts[i] elements, all of src_dtype, stacked in order into one new device
     * tensor of weight_dtype, as weight_upload of their concatenation would make it. */
    void *(*weight_upload_parts)(backend *be, int n_parts, const void *const *srcs,
                                 const size_t *counts, kv_dtype src_dtype);
    /* Same for an activation-dtype tensor (tests). */
    void *(*act_upload_f32)(backend *be, const float *src, size_t n);
    /* n activation elements (device, act_dtype) to host f32; waits for COMPUTE. */
    void (*act_download_f32)(backend *be, float *dst, const void *src, size_t n);

    /* --- asynchronous copies and events --- */
    /* n copies of sizes[i] bytes from srcs[i] to dsts[i] (host<->device, either way), queued on
     * the stream in order. The caller coalesces adjacent runs before calling. */
    void (*copy_async)(backend *be, backend_stream s, int n, void *const *dsts,
                       const void *const *srcs, const size_t *sizes);
    /* Optional (NULL: the caller makes one copy_async per row): height rows of width bytes,
     * row i from src + i * spitch to dst + i * dpitch, queued on the stream (one strided copy:
     * near the full copy rate for rows of 512 KiB and more, unlike as many small copies). */
    void (*copy_2d_async)(backend *be, backend_stream s, void *dst, size_t dpitch, const void *src,
                          size_t spitch, size_t width, size_t height);
    backend_event *(*event_record)(backend *be, backend_stream s);
    bool (*event_done)(backend *be, backend_event *ev);                   /* polls; never blocks */
    void (*event_wait)(backend *be, backend_stream s, backend_event *ev); /* s waits on ev */
    void (*event_sync)(backend *be, backend_event *ev);                   /* host waits */
    void (*event_free)(backend *be, backend_event *ev);
    /* Seconds between two completed events (timing). */
    double (*event_elapsed)(backend *be, backend_event *start, backend_event *end);
    void (*sync)(backend *be); /* waits for every stream */

    /* --- forward-pass ops --- */
    /* Uploads the batch metadata used by embed, rope, kv_write, attention and gather_rows. Valid
     * until the next step_begin; the host arrays may be reused as soon as it returns. */
    void (*step_begin)(backend *be, const backend_batch *batch);
    /* out[t, :] = table[batch.tokens[t], :], table is [vocab, dim] weight. */
    void (*embed)(backend *be, void *out, const void *table, int dim);
    /* out[i, :] = x[i, :] / rms(x[i, :]) * w; n rows of dim. out may equal x. */
    void (*rmsnorm)(backend *be, void *out, const void *x, const void *w, int n, int dim,
                    float eps);
    /* x += delta, then out = rmsnorm(x) * w (residual add fused with the next norm). */
    void (*add_rmsnorm)(backend *be, void *out, void *x, const void *delta, const void *w, int n,
                        int dim, float eps);
    /* x += delta over n elements. */
    void (*add)(backend *be, void *x, const void *delta, size_t n);
    /* out[n, m] = x[n, k] @ w[m, k]^T (+ bias[m] when not NULL); fp32 accumulation. */
    void (*matmul)(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                   int k, int m);
    /* Rotary embedding in place at batch.positions of the first rot_dim dims of each head,
     * rotate-half (Hugging Face) pairing (i, i + rot_dim / 2); dims past rot_dim are left alone.
     * x rows have row_stride elements; the n_heads heads start at x[t * row_stride].
     * inv_freq is a device f32 array [rot_dim / 2] (scaling already applied); cos and sin are
     * multiplied by mscale (longrope's attention factor; 1 otherwise). */
    void (*rope)(backend *be, void *x, int row_stride, int n_heads, int head_dim, int rot_dim,
                 const float *inv_freq, float mscale);
    /* RMSNorm of each head in place: for n rows of x (row_stride elements apart), the n_heads
     * heads of head_dim at the start of the row, each normed with w [head_dim] (Qwen3, Gemma 3
     * q/k norms). */
    void (*head_rmsnorm)(backend *be, void *x, int n, int row_stride, int n_heads, int head_dim,
                         const void *w, float eps);
    /* out[i, j] = silu(gu[i, j]) * gu[i, ff + j] for n rows of gu = [gate | up] (2 * ff wide). */
    void (*swiglu)(backend *be, void *out, const void *gu, int n, int ff);
    /* out[i, j] = gelu_tanh(gu[i, j]) * gu[i, ff + j] (GeGLU, PyTorch's tanh approximation). */
    void (*geglu)(backend *be, void *out, const void *gu, int n, int ff);
    /* x *= s over n elements (embedding and residual multipliers). */
    void (*scale)(backend *be, void *x, size_t n, float s);
    /* x = cap * tanh(x / cap) over n elements (final logit soft-capping). */
    void (*softcap)(backend *be, void *x, size_t n, float cap);
    /* Writes k and v rows of every batch token into the pool at its (block, slot), layer. */
    void (*kv_write)(backend *be, void *pool, const backend_kv_layout *l, int layer, const void *k,
                     const void *v, int row_stride);
    /* Causal attention: the query of token t (n_heads heads of head_dim at q + t * q_stride)
     * attends to positions [0, positions[t]] of its sequence (the last ap->window of them when
     * set), read from the pool, scores scaled and soft-capped as ap says. out is [n_tokens,
     * n_heads * head_dim]. GQA: head h reads kv head h / (n_heads / n_kv_heads). */
    void (*attention)(backend *be, void *out, const void *q, int q_stride, const void *pool,
                      const backend_kv_layout *l, int layer, int n_heads,
                      const backend_attn_params *ap);
    /* out[r, :] = x[batch.out_rows[r], :], r < n_out. */
    void (*gather_rows)(backend *be, void *out, const void *x, int dim);

    /* --- recorded steps (optional: NULL where the backend has none, e.g. the CPU backend) ---
     * A step's forward-pass ops can be recorded once and replayed on later steps of the same
     * shape, which saves the per-op launch cost (CUDA graphs). A recording keeps the pointers and
     * sizes its ops were called with; on replay the ops read the metadata of the current step
     * (the last step_begin), so only the values of tokens, positions, seq_len and block_table
     * may differ. The caller keys recordings on everything else it passes (buffers, sizes). */
    /* Starts recording: the forward-pass ops (embed .. gather_rows) queued from now on until
     * graph_end are recorded, not run. No other op may be called in between. False when the
     * backend cannot record now; then the ops run as usual and graph_end is not called. */
    bool (*graph_begin)(backend *be);
    /* Ends the recording, runs it once for the current step and returns it (caller frees). */
    backend_graph *(*graph_end)(backend *be);
    /* Replays g for the current step and returns true; returns false, queueing nothing, when
     * g does not fit it (another batch shape: n_tokens, n_seqs, n_out, max_blocks; or the
     * backend moved a buffer g reads since recording it). */
    bool (*graph_launch)(backend *be, backend_graph *g);
    void (*graph_free)(backend *be, backend_graph *g);
} backend_ops;

struct backend {
    const backend_ops *ops;
    const char *name;   /* "cpu", "cuda" */
    kv_dtype act_dtype; /* activations */
    kv_dtype weight_dtype;
    kv_dtype kv_dtype; /* KV pool elements */
    void *impl;        /* the implementation's own state */
    const char *desc;  /* one line for the start-up log (device, kernel path), or NULL */
};

/* Creates a backend by name ("cpu", "cuda"); NULL and err set when it cannot (no GPU, not built).
 * Its KV dtype is the activation dtype until backend_set_kv_cache_dtype. */
backend *backend_create(const char *name, int n_threads, kv_error *err);
void backend_destroy(backend *be);
/* The kv_cache_dtype knob (vLLM's --kv-cache-dtype): "auto" is the backend's default KV dtype, its
 * activation dtype (bf16 on CUDA, f32 on CPU); "fp8" or "fp8_e4m3" stores KV as F8_E4M3 (every
 * backend reads it). Call before model_load (the KV dtype is part of the model fingerprint) and
 * before the KV pool is made. -1 with err set for any other value. */
int backend_set_kv_cache_dtype(backend *be, const char *name, kv_error *err);
/* True when this build has the CUDA backend and a device it runs on is present. */
bool backend_cuda_available(void);
/* The same, with why set when not: built without CUDA, no device, or which GPU this build has
 * no code for. */
bool backend_cuda_check(kv_error *why);

#endif
