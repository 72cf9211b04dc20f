/* The CPU backend's memory, copies, events and batch metadata, and its op table. "Device" memory
 * is 64-byte aligned host memory; copies happen when queued, so every event is complete as soon
 * as it is recorded. The forward-pass kernels are in cpu_ops.c. */
#include "model/cpu/cpu_backend.h"

#include <stdlib.h>
#include <unistd.h>

#include "model/cpu/cpu_impl.h"

#ifdef KVSERVE_OPENBLAS
#include <cblas.h>
#endif

struct backend_event {
    double t; /* kv_now() when recorded */
};

static cpu_backend *cpu_of(backend *be) {
    return be->impl;
}

static void cpu_destroy(backend *be) {
    cpu_backend *c = cpu_of(be);
    cpu_pool_free(c->pool);
    free(c->meta);
    free(c->scores);
    free(c->kv_rows);
    free(c);
}

/* --- memory --- */

static void *cpu_dev_alloc(backend *be, size_t bytes) {
    size_t rounded = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    KV_CHECK(p != NULL);
    return p;
}

static void cpu_dev_free(backend *be, void *p) {
    free(p);
}

static size_t cpu_dev_free_bytes(backend *be) {
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
}

/* NULL when the memory is not there: the host tier then stays smaller than asked. */
static void *cpu_host_alloc(backend *be, size_t bytes) {
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

static void cpu_host_free(backend *be, void *p) {
    free(p);
}

static void cpu_copy(backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}

static void *cpu_weight_upload(backend *be, const void *src, kv_dtype src_dtype, size_t n) {
    float *dst = cpu_dev_alloc(be, n * sizeof(float));
    kv_convert_to_f32(dst, src, src_dtype, n);
    return dst;
}

static void *cpu_act_upload_f32(backend *be, const float *src, size_t n) {
    float *dst = cpu_dev_alloc(be, n * sizeof(float));
    cpu_copy(be, dst, src, n * sizeof(float));
    return dst;
}

static void cpu_act_download_f32(backend *be, float *dst, const void *src, size_t n) {
    cpu_copy(be, dst, src, n * sizeof(float));
}

/* --- copies and events: everything is complete when queued --- */

static void cpu_copy_async(backend *be, backend_stream s, int n, void *const *dsts,
                           const void *const *srcs, const size_t *sizes) {
    for (int i = 0; i < n; i++) cpu_copy(be, dsts[i], srcs[i], sizes[i]);
}

static void cpu_copy_2d_async(backend *be, backend_stream s, void *dst, size_t dpitch,
                              const void *src, size_t spitch, size_t width, size_t height) {
    for (size_t i = 0; i < height; i++)
        cpu_copy(be, (char *)dst + i * dpitch, (const char *)src + i * spitch, width);
}

static backend_event *cpu_event_record(backend *be, backend_stream s) {
    backend_event *ev = kv_malloc(sizeof *ev);
    ev->t = kv_now();
    return ev;
}

static bool cpu_event_done(backend *be, backend_event *ev) {
    return true;
}

static void cpu_event_wait(backend *be, backend_stream s, backend_event *ev) {}

static void cpu_event_sync(backend *be, backend_event *ev) {}

static void cpu_event_free(backend *be, backend_event *ev) {
    free(ev);
}

static double cpu_event_elapsed(backend *be, backend_event *start, backend_event *end) {
    return end->t - start->t;
}

static void cpu_sync(backend *be) {}

/* --- batch metadata --- */

static void cpu_step_begin(backend *be, const backend_batch *b) {
    cpu_backend *c = cpu_of(be);
    KV_CHECK(b->n_tokens >= 0 && b->n_seqs >= 0 && b->n_out >= 0 && b->n_out <= b->n_tokens);
    KV_CHECK(b->max_blocks >= 1 && b->seq_start[0] == 0 && b->seq_start[b->n_seqs] == b->n_tokens);
    size_t n_tok = (size_t)b->n_tokens, n_seq = (size_t)b->n_seqs;
    size_t n_table = n_seq * (size_t)b->max_blocks;
    /* one buffer holds every array of the step */
    size_t need = 3 * n_tok + 2 * n_seq + 1 + n_table + (size_t)b->n_out;
    if (need > c->cap_meta) {
        c->meta = kv_realloc(c->meta, need * sizeof(int32_t));
        c->cap_meta = need;
    }
    c->tokens = c->meta;
    c->positions = c->tokens + n_tok;
    c->tok_seq = c->positions + n_tok;
    c->seq_start = c->tok_seq + n_tok;
    c->seq_len = c->seq_start + n_seq + 1;
    c->block_table = c->seq_len + n_seq;
    c->out_rows = c->block_table + n_table;

    c->n_tokens = b->n_tokens;
    c->n_seqs = b->n_seqs;
    c->max_blocks = b->max_blocks;
    c->n_out = b->n_out;
    memcpy(c->tokens, b->tokens, n_tok * sizeof(int32_t));
    memcpy(c->positions, b->positions, n_tok * sizeof(int32_t));
    memcpy(c->seq_start, b->seq_start, (n_seq + 1) * sizeof(int32_t));
    memcpy(c->seq_len, b->seq_len, n_seq * sizeof(int32_t));
    memcpy(c->block_table, b->block_table, n_table * sizeof(int32_t));
    memcpy(c->out_rows, b->out_rows, (size_t)b->n_out * sizeof(int32_t));

    int max_len = 1;
    for (int s = 0; s < b->n_seqs; s++) {
        int first = b->seq_start[s], end = b->seq_start[s + 1];
        KV_CHECK(first <= end && end - first <= b->seq_len[s]);
        for (int t = first; t < end; t++) {
            /* consecutive positions ending at seq_len - 1 */
            KV_CHECK(b->positions[t] == b->seq_len[s] - (end - t));
            c->tok_seq[t] = s;
        }
        if (b->seq_len[s] > max_len) max_len = b->seq_len[s];
    }
    for (int r = 0; r < b->n_out; r++)
        KV_CHECK(b->out_rows[r] >= 0 && b->out_rows[r] < b->n_tokens);

    c->scores_stride = (size_t)max_len;
    need = c->scores_stride * (size_t)c->n_threads;
    if (need > c->cap_scores) {
        free(c->scores);
        c->scores = kv_malloc(need * sizeof(float));
        c->cap_scores = need;
    }
}

static const backend_ops cpu_ops = {
    .destroy = cpu_destroy,
    .dev_alloc = cpu_dev_alloc,
    .dev_free = cpu_dev_free,
    .dev_free_bytes = cpu_dev_free_bytes,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .to_dev = cpu_copy,
    .to_host = cpu_copy,
    .weight_upload = cpu_weight_upload,
    .act_upload_f32 = cpu_act_upload_f32,
    .act_download_f32 = cpu_act_download_f32,
    .copy_async = cpu_copy_async,
    .copy_2d_async = cpu_copy_2d_async,
    .event_record = cpu_event_record,
    .event_done = cpu_event_done,
    .event_wait = cpu_event_wait,
    .event_sync = cpu_event_sync,
    .event_free = cpu_event_free,
    .event_elapsed = cpu_event_elapsed,
    .sync = cpu_sync,
    .step_begin = cpu_step_begin,
    .embed = cpu_op_embed,
    .rmsnorm = cpu_op_rmsnorm,
    .add_rmsnorm = cpu_op_add_rmsnorm,
    .add = cpu_op_add,
    .matmul = cpu_op_matmul,
    .rope = cpu_op_rope,
    .head_rmsnorm = cpu_op_head_rmsnorm,
    .swiglu = cpu_op_swiglu,
    .geglu = cpu_op_geglu,
    .scale = cpu_op_scale,
    .softcap = cpu_op_softcap,
    .kv_write = cpu_op_kv_write,
    .attention = cpu_op_attention,
    .gather_rows = cpu_op_gather_rows,
    /* ops run as they are called: nothing to record */
    .graph_begin = NULL,
    .graph_end = NULL,
    .graph_launch = NULL,
    .graph_free = NULL,
};

backend *cpu_backend_create(int n_threads) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    cpu_backend *c = kv_calloc(1, sizeof *c);
    c->base.ops = &cpu_ops;
    c->base.name = "cpu";
    c->base.act_dtype = KV_DTYPE_F32;
    c->base.weight_dtype = KV_DTYPE_F32;
    c->base.kv_dtype = KV_DTYPE_F32;
    c->base.impl = c;
    c->n_threads = n_threads;
    c->pool = cpu_pool_create(n_threads);
#ifdef KVSERVE_OPENBLAS
    /* OpenBLAS keeps its own threads (a process-wide setting); large GEMMs go to it */
    openblas_set_num_threads(n_threads);
#endif
    return &c->base;
}
