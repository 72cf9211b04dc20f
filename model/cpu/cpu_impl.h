/* Private to model/cpu: the CPU backend's state and the forward-pass ops (cpu_ops.c) that
 * cpu_backend.c puts in its op table. */
#ifndef KVSERVE_CPU_IMPL_H
#define KVSERVE_CPU_IMPL_H

#include "model/backend.h"
#include "model/cpu/cpu_pool.h"

typedef struct cpu_backend {
    backend base;
    cpu_pool *pool;
    int n_threads;
    /* the batch of the current step, copied at step_begin (see backend_batch); the arrays lie in
     * meta[cap_meta] */
    int n_tokens, n_seqs, max_blocks, n_out;
    int32_t *tokens;      /* [n_tokens] */
    int32_t *positions;   /* [n_tokens] */
    int32_t *tok_seq;     /* [n_tokens] sequence of each token */
    int32_t *seq_start;   /* [n_seqs + 1] */
    int32_t *seq_len;     /* [n_seqs] */
    int32_t *block_table; /* [n_seqs * max_blocks] */
    int32_t *out_rows;    /* [n_out] */
    int32_t *meta;
    size_t cap_meta;
    float *scores;        /* [n_threads, scores_stride] attention probabilities, per thread */
    size_t scores_stride; /* longest context of the step */
    size_t cap_scores;
    float *kv_rows; /* [n_threads, block_size * head_dim] dequantized rows (F8_E4M3 pools) */
    size_t cap_kv_rows;
} cpu_backend;

/* sum a[i] * b[i], i < k, in f32 with 8 partial sums */
float cpu_dot(const float *a, const float *b, int k);

void cpu_op_embed(backend *be, void *out, const void *table, int dim);
void cpu_op_rmsnorm(backend *be, void *out, const void *x, const void *w, int n, int dim,
                    float eps);
void cpu_op_add_rmsnorm(backend *be, void *out, void *x, const void *delta, const void *w, int n,
                        int dim, float eps);
void cpu_op_add(backend *be, void *x, const void *delta, size_t n);
void cpu_op_matmul(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                   int k, int m);
void cpu_op_rope(backend *be, void *x, int row_stride, int n_heads, int head_dim, int rot_dim,
                 const float *inv_freq, float mscale);
void cpu_op_head_rmsnorm(backend *be, void *x, int n, int row_stride, int n_heads, int head_dim,
                         const void *w, float eps);
void cpu_op_swiglu(backend *be, void *out, const void *gu, int n, int ff);
void cpu_op_geglu(backend *be, void *out, const void *gu, int n, int ff);
void cpu_op_scale(backend *be, void *x, size_t n, float s);
void cpu_op_softcap(backend *be, void *x, size_t n, float cap);
void cpu_op_kv_write(backend *be, void *pool, const backend_kv_layout *l, int layer, const void *k,
                     const void *v, int row_stride);
void cpu_op_attention(backend *be, void *out, const void *q, int q_stride, const void *pool,
                      const backend_kv_layout *l, int layer, int n_heads,
                      const backend_attn_params *ap);
void cpu_op_gather_rows(backend *be, void *out, const void *x, int dim);

#endif
