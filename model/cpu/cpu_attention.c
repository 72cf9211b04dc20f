/* CPU paged attention: writes the step's K/V rows into the block pool and computes causal
 * attention (optionally windowed and soft-capped) of every new token over its sequence's blocks,
 * one (token, head) per work item. Pools are f32, or F8_E4M3 with per-layer scales (quantized on
 * write, dequantized on read). */
#include <math.h>
#include <stdlib.h>

#include "model/cpu/cpu_impl.h"

static cpu_backend *cpu_of(backend *be) {
    return be->impl;
}

/* Row pointer of (block, layer, k|v, head, slot) in the pool. */
static char *pool_at(const void *pool, const backend_kv_layout *l, int32_t block, int layer, int kv,
                     int head, int slot) {
    return (char *)pool + (size_t)block * l->block_bytes +
           backend_kv_offset(l, layer, kv, head, slot);
}

/* One head_dim row into the pool: copied (f32) or quantized as e4m3(x / scale). */
static void row_store(char *dst, const float *src, const backend_kv_layout *l, float scale) {
    if (l->dtype == KV_DTYPE_F32) {
        memcpy(dst, src, (size_t)l->head_dim * sizeof(float));
        return;
    }
    float inv = 1.0f / scale;
    for (int d = 0; d < l->head_dim; d++) ((uint8_t *)dst)[d] = kv_f32_to_e4m3(src[d] * inv);
}

/* n rows of the pool from src on as f32: the pool itself (f32) or dequantized into buf through
 * lut (the 256 e4m3 values times scale). */
static const float *rows_load(float *buf, const char *src, const backend_kv_layout *l, int n,
                              const float *lut) {
    if (l->dtype == KV_DTYPE_F32) return (const float *)src;
    size_t count = (size_t)n * (size_t)l->head_dim;
    for (size_t i = 0; i < count; i++) buf[i] = lut[((const uint8_t *)src)[i]];
    return buf;
}

/* Block holding position p of the sequence s. */
static int32_t block_of(const cpu_backend *c, const backend_kv_layout *l, int s, int p) {
    KV_CHECK(p / l->block_size < c->max_blocks);
    int32_t b = c->block_table[(size_t)s * (size_t)c->max_blocks + (size_t)(p / l->block_size)];
    KV_CHECK(b >= 0);
    return b;
}

void cpu_op_kv_write(backend *be, void *pool, const backend_kv_layout *l, int layer, const void *k,
                     const void *v, int row_stride) {
    cpu_backend *c = cpu_of(be);
    KV_CHECK((l->dtype == KV_DTYPE_F32 || l->dtype == KV_DTYPE_F8_E4M3) && layer >= 0 &&
             layer < l->n_layers);
    float ks = backend_kv_scale(l, layer, 0), vs = backend_kv_scale(l, layer, 1);
    for (int t = 0; t < c->n_tokens; t++) {
        int p = c->positions[t];
        int32_t b = block_of(c, l, c->tok_seq[t], p);
        for (int h = 0; h < l->n_kv_heads; h++) {
            size_t src = (size_t)t * (size_t)row_stride + (size_t)h * (size_t)l->head_dim;
            row_store(pool_at(pool, l, b, layer, 0, h, p % l->block_size), (const float *)k + src,
                      l, ks);
            row_store(pool_at(pool, l, b, layer, 1, h, p % l->block_size), (const float *)v + src,
                      l, vs);
        }
    }
}

typedef struct attention_job {
    cpu_backend *c;
    float *out;
    const float *q;
    int q_stride;
    const void *pool;
    const backend_kv_layout *l;
    int layer, n_heads;
    backend_attn_params ap;
    float lut[2][256]; /* F8_E4M3 pools: e4m3 value * k_scale, * v_scale */
} attention_job;

/* Items are t * n_heads + h. Two passes over the context: scores and their max, then
 * probabilities exp(s - max) summed with the V rows; f32 throughout, stable for any scale. */
static void attention_items(void *ctx, int thread, int64_t i0, int64_t i1) {
    attention_job *j = ctx;
    const cpu_backend *c = j->c;
    const backend_kv_layout *l = j->l;
    int hd = l->head_dim, bs = l->block_size, group = j->n_heads / l->n_kv_heads;
    float *sc = j->c->scores + (size_t)thread * c->scores_stride;
    float *buf = c->kv_rows ? c->kv_rows + (size_t)thread * (size_t)bs * (size_t)hd : NULL;
    for (int64_t item = i0; item < i1; item++) {
        int t = (int)(item / j->n_heads), h = (int)(item % j->n_heads), kvh = h / group;
        int s = c->tok_seq[t], n_ctx = c->positions[t] + 1;
        /* the window: positions [lo, n_ctx), never a block wholly before it */
        int lo = j->ap.window > 0 && n_ctx > j->ap.window ? n_ctx - j->ap.window : 0;
        float cap = j->ap.softcap;
        const float *q = j->q + (size_t)t * (size_t)j->q_stride + (size_t)h * (size_t)hd;
        float *o = j->out + ((size_t)t * (size_t)j->n_heads + (size_t)h) * (size_t)hd;

        float mx = -INFINITY;
        for (int p0 = lo / bs * bs; p0 < n_ctx; p0 += bs) {
            int i0 = p0 < lo ? lo - p0 : 0, n_in = n_ctx - p0 < bs ? n_ctx - p0 : bs;
            const float *kb =
                rows_load(buf, pool_at(j->pool, l, block_of(c, l, s, p0), j->layer, 0, kvh, 0), l,
                          n_in, j->lut[0]);
            for (int i = i0; i < n_in; i++) {
                float x = cpu_dot(q, kb + (size_t)i * (size_t)hd, hd) * j->ap.scale;
                if (cap > 0) x = tanhf(x / cap) * cap; /* as transformers: / cap, tanh, * cap */
                sc[p0 + i] = x;
                if (x > mx) mx = x;
            }
        }
        float sum = 0;
        for (int p = lo; p < n_ctx; p++) {
            sc[p] = expf(sc[p] - mx);
            sum += sc[p];
        }
        for (int d = 0; d < hd; d++) o[d] = 0;
        for (int p0 = lo / bs * bs; p0 < n_ctx; p0 += bs) {
            int i0 = p0 < lo ? lo - p0 : 0, n_in = n_ctx - p0 < bs ? n_ctx - p0 : bs;
            const float *vb =
                rows_load(buf, pool_at(j->pool, l, block_of(c, l, s, p0), j->layer, 1, kvh, 0), l,
                          n_in, j->lut[1]);
            for (int i = i0; i < n_in; i++) {
                const float *v = vb + (size_t)i * (size_t)hd;
                float pr = sc[p0 + i];
                for (int d = 0; d < hd; d++) o[d] += pr * v[d];
            }
        }
        float inv = 1.0f / sum;
        for (int d = 0; d < hd; d++) o[d] *= inv;
    }
}

void cpu_op_attention(backend *be, void *out, const void *q, int q_stride, const void *pool,
                      const backend_kv_layout *l, int layer, int n_heads,
                      const backend_attn_params *ap) {
    cpu_backend *c = cpu_of(be);
    KV_CHECK((l->dtype == KV_DTYPE_F32 || l->dtype == KV_DTYPE_F8_E4M3) && layer >= 0 &&
             layer < l->n_layers);
    KV_CHECK(n_heads % l->n_kv_heads == 0);
    if (l->dtype == KV_DTYPE_F8_E4M3) { /* one block of dequantized rows per thread */
        size_t need = (size_t)c->n_threads * (size_t)l->block_size * (size_t)l->head_dim;
        if (need > c->cap_kv_rows) {
            free(c->kv_rows);
            c->kv_rows = kv_malloc(need * sizeof(float));
            c->cap_kv_rows = need;
        }
    }
    attention_job j = {.c = c,
                       .out = out,
                       .q = q,
                       .q_stride = q_stride,
                       .pool = pool,
                       .l = l,
                       .layer = layer,
                       .n_heads = n_heads,
                       .ap = *ap};
    if (l->dtype == KV_DTYPE_F8_E4M3)
        for (int kv = 0; kv < 2; kv++)
            for (int x = 0; x < 256; x++)
                j.lut[kv][x] = kv_e4m3_to_f32((uint8_t)x) * backend_kv_scale(l, layer, kv);
    /* work ~ context × head_dim per item; keep small steps on one thread */
    int64_t n_items = (int64_t)c->n_tokens * n_heads;
    double work = (double)n_items * (double)c->scores_stride * l->head_dim;
    cpu_pool_for(c->pool, n_items, work < 65536.0 ? n_items : 1, attention_items, &j);
}
