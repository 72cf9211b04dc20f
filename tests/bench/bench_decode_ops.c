/* Decode-step breakdown, in process: times every backend op of one Llama decode step with
 * backend events, sums them per op kind, and prints ms, bytes moved, GB/s and % of the device
 * copy rate measured in the same run, for a few batch sizes at one context length, with the
 * step time as served (graphs on), op by op (graphs off), and the launch-gap totals.
 *
 *   bench_decode_ops --model DIR [--device cuda|cpu] [--load-format dummy|safetensors]
 *                    [--batches 1,8,64] [--ctx 1024] [--reps 20] [--copy-mib 1024] [--out F.md]
 *                    [--quantization auto|fp8] [--kv-cache-dtype auto|fp8]
 *
 * How the per-op times are taken: the ops table of the backend is swapped for one whose entries
 * record an event before and after the real op. Ahead of each profiled step a queue of large
 * matmuls (~20 ms of device work) keeps the device behind the host, so an op's two events
 * bracket its device time and not the host's launch of it. Sum of ops vs the step time: the
 * difference is what launches (and the host's per-step work) cost on top of the kernels. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/llama.h"
#ifdef KVSERVE_CUDA
#include "model/cuda/cuda_backend.h"
#endif

#define MAX_LIST   8
#define MAX_KINDS  24
#define MAX_EVENTS 4096

typedef enum op_kind {
    K_STEP_BEGIN,
    K_EMBED,
    K_RMSNORM,
    K_ADD_RMSNORM,
    K_ADD,
    K_MM_QKV,
    K_MM_O,
    K_MM_GATE_UP,
    K_MM_DOWN,
    K_MM_LM_HEAD,
    K_MM_OTHER,
    K_ROPE,
    K_SWIGLU,
    K_KV_WRITE,
    K_ATTENTION,
    K_GATHER,
    K_LOGITS_DOWNLOAD,
    K_COUNT
} op_kind;

static const char *const kind_names[K_COUNT] = {
    "step_begin (metadata upload)",
    "embed",
    "rmsnorm",
    "add_rmsnorm",
    "add",
    "matmul qkv",
    "matmul o_proj",
    "matmul gate_up",
    "matmul down",
    "matmul lm_head",
    "matmul other",
    "rope",
    "swiglu",
    "kv_write",
    "attention",
    "gather_rows",
    "logits download (f32 to host)",
};

/* The profiler: the real ops, the events of the current profiled step and per-kind totals. The
 * wrappers reach it through this one pointer because an op receives only the backend. */
typedef struct profiler {
    const backend_ops *real;
    backend_ops wrapped;
    const hf_config *cfg;
    bool fp8_weights; /* projections hold e4m3 (1 byte per weight); lm_head stays as loaded */
    bool on;
    int n_tokens, n_out;
    double kv_tokens; /* sum of seq_len over the batch */
    int n_ev;
    backend_event *ev0[MAX_EVENTS], *ev1[MAX_EVENTS];
    op_kind ev_kind[MAX_EVENTS];
    double ev_bytes[MAX_EVENTS];
    /* totals over the profiled steps */
    double kind_s[K_COUNT], kind_bytes[K_COUNT];
    int kind_count[K_COUNT];
} profiler;

static profiler *prof_of_bench; /* the one profiler of this process (see above) */

static void prof_begin(backend *be, op_kind k, double bytes) {
    profiler *p = prof_of_bench;
    if (!p->on || p->n_ev >= MAX_EVENTS) return;
    p->ev_kind[p->n_ev] = k;
    p->ev_bytes[p->n_ev] = bytes;
    p->ev0[p->n_ev] = p->real->event_record(be, BACKEND_STREAM_COMPUTE);
}

static void prof_end(backend *be) {
    profiler *p = prof_of_bench;
    if (!p->on || p->n_ev >= MAX_EVENTS) return;
    p->ev1[p->n_ev] = p->real->event_record(be, BACKEND_STREAM_COMPUTE);
    p->n_ev++;
}

static double act_es(backend *be) {
    return (double)kv_dtype_size(be->act_dtype);
}

static void w_step_begin(backend *be, const backend_batch *b) {
    profiler *p = prof_of_bench;
    p->n_tokens = b->n_tokens, p->n_out = b->n_out, p->kv_tokens = 0;
    for (int s = 0; s < b->n_seqs; s++) p->kv_tokens += b->seq_len[s];
    double ints =
        3.0 * b->n_tokens + 2.0 * b->n_seqs + 1 + b->n_out + (double)b->n_seqs * b->max_blocks;
    prof_begin(be, K_STEP_BEGIN, 4 * ints);
    p->real->step_begin(be, b);
    prof_end(be);
}

static void w_embed(backend *be, void *out, const void *table, int dim) {
    prof_begin(be, K_EMBED, 2.0 * prof_of_bench->n_tokens * dim * act_es(be));
    prof_of_bench->real->embed(be, out, table, dim);
    prof_end(be);
}

static void w_rmsnorm(backend *be, void *out, const void *x, const void *w, int n, int dim,
                      float eps) {
    prof_begin(be, K_RMSNORM, (2.0 * n + 1) * dim * act_es(be));
    prof_of_bench->real->rmsnorm(be, out, x, w, n, dim, eps);
    prof_end(be);
}

static void w_add_rmsnorm(backend *be, void *out, void *x, const void *delta, const void *w, int n,
                          int dim, float eps) {
    prof_begin(be, K_ADD_RMSNORM, (4.0 * n + 1) * dim * act_es(be));
    prof_of_bench->real->add_rmsnorm(be, out, x, delta, w, n, dim, eps);
    prof_end(be);
}

static void w_add(backend *be, void *x, const void *delta, size_t n) {
    prof_begin(be, K_ADD, 3.0 * (double)n * act_es(be));
    prof_of_bench->real->add(be, x, delta, n);
    prof_end(be);
}

static void w_matmul(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                     int k, int m) {
    const hf_config *c = prof_of_bench->cfg;
    int q = c->n_heads * c->head_dim, qkv = q + 2 * c->n_kv_heads * c->head_dim;
    int ff = c->intermediate_size, dim = c->hidden_size;
    op_kind kind = K_MM_OTHER;
    if (k == dim && m == qkv)
        kind = K_MM_QKV;
    else if (k == q && m == dim)
        kind = K_MM_O;
    else if (k == dim && m == 2 * ff)
        kind = K_MM_GATE_UP;
    else if (k == ff && m == dim)
        kind = K_MM_DOWN;
    else if (k == dim && m == c->vocab_size)
        kind = K_MM_LM_HEAD;
    double wes = prof_of_bench->fp8_weights && kind != K_MM_LM_HEAD
                     ? 1.0
                     : (double)kv_dtype_size(be->weight_dtype);
    double bytes =
        ((double)n * k + (double)n * m + (bias ? m : 0)) * act_es(be) + (double)m * k * wes;
    prof_begin(be, kind, bytes);
    prof_of_bench->real->matmul(be, out, x, w, bias, n, k, m);
    prof_end(be);
}

static void w_rope(backend *be, void *x, int row_stride, int n_heads, int head_dim, int rot_dim,
                   const float *inv_freq, float mscale) {
    prof_begin(be, K_ROPE, 2.0 * prof_of_bench->n_tokens * n_heads * head_dim * act_es(be));
    prof_of_bench->real->rope(be, x, row_stride, n_heads, head_dim, rot_dim, inv_freq, mscale);
    prof_end(be);
}

static void w_swiglu(backend *be, void *out, const void *gu, int n, int ff) {
    prof_begin(be, K_SWIGLU, 3.0 * n * ff * act_es(be));
    prof_of_bench->real->swiglu(be, out, gu, n, ff);
    prof_end(be);
}

static void w_kv_write(backend *be, void *pool, const backend_kv_layout *l, int layer,
                       const void *k, const void *v, int row_stride) {
    double row = (double)l->n_kv_heads * l->head_dim;
    prof_begin(be, K_KV_WRITE,
               2.0 * prof_of_bench->n_tokens * row *
                   (act_es(be) + (double)kv_dtype_size(l->dtype)));
    prof_of_bench->real->kv_write(be, pool, l, layer, k, v, row_stride);
    prof_end(be);
}

static void w_attention(backend *be, void *out, const void *q, int q_stride, const void *pool,
                        const backend_kv_layout *l, int layer, int n_heads,
                        const backend_attn_params *ap) {
    profiler *p = prof_of_bench;
    double qo = 2.0 * p->n_tokens * n_heads * l->head_dim * act_es(be);
    double kv = p->kv_tokens * 2.0 * l->n_kv_heads * l->head_dim * (double)kv_dtype_size(l->dtype);
    prof_begin(be, K_ATTENTION, qo + kv);
    p->real->attention(be, out, q, q_stride, pool, l, layer, n_heads, ap);
    prof_end(be);
}

static void w_gather_rows(backend *be, void *out, const void *x, int dim) {
    prof_begin(be, K_GATHER, 2.0 * prof_of_bench->n_out * dim * act_es(be));
    prof_of_bench->real->gather_rows(be, out, x, dim);
    prof_end(be);
}

static void w_act_download_f32(backend *be, float *dst, const void *src, size_t n) {
    prof_begin(be, K_LOGITS_DOWNLOAD, (double)n * (4.0 + act_es(be)));
    prof_of_bench->real->act_download_f32(be, dst, src, n);
    prof_end(be);
}

/* Folds the events of the last profiled step into the totals and frees them. */
static void prof_collect(backend *be, profiler *p) {
    p->real->sync(be);
    for (int i = 0; i < p->n_ev; i++) {
        op_kind k = p->ev_kind[i];
        p->kind_s[k] += p->real->event_elapsed(be, p->ev0[i], p->ev1[i]);
        p->kind_bytes[k] += p->ev_bytes[i];
        p->kind_count[k]++;
        p->real->event_free(be, p->ev0[i]);
        p->real->event_free(be, p->ev1[i]);
    }
    p->n_ev = 0;
}

/* --- the benchmark --- */

typedef struct args {
    const char *model, *device, *out;
    const char *kv_dtype; /* --kv-cache-dtype */
    bool fp8_weights;     /* --quantization fp8 (online FP8 weights) */
    model_load_format format;
    int batches[MAX_LIST], n_batches;
    int ctx, reps, copy_mib, block_size;
} args;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int parse_list(const char *s, int *out, int cap) {
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 4096) return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

static int parse_args(args *a, int argc, char **argv) {
    *a = (args){.device = "cuda", .ctx = 1024, .reps = 20, .copy_mib = 1024, .block_size = 16};
    a->n_batches = parse_list("1,8,64", a->batches, MAX_LIST);
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto bad;
        i++;
        if (strcmp(k, "--model") == 0)
            a->model = v;
        else if (strcmp(k, "--device") == 0)
            a->device = v;
        else if (strcmp(k, "--out") == 0)
            a->out = v;
        else if (strcmp(k, "--load-format") == 0)
            a->format = strcmp(v, "dummy") == 0 ? MODEL_LOAD_DUMMY : MODEL_LOAD_SAFETENSORS;
        else if (strcmp(k, "--batches") == 0) {
            if ((a->n_batches = parse_list(v, a->batches, MAX_LIST)) < 1) goto bad;
        } else if (strcmp(k, "--ctx") == 0)
            a->ctx = atoi(v);
        else if (strcmp(k, "--reps") == 0)
            a->reps = atoi(v);
        else if (strcmp(k, "--copy-mib") == 0)
            a->copy_mib = atoi(v);
        else if (strcmp(k, "--block-size") == 0)
            a->block_size = atoi(v);
        else if (strcmp(k, "--quantization") == 0 && (!strcmp(v, "auto") || !strcmp(v, "fp8")))
            a->fp8_weights = strcmp(v, "fp8") == 0;
        else if (strcmp(k, "--kv-cache-dtype") == 0)
            a->kv_dtype = v;
        else
            goto bad;
    }
    if (a->model && a->ctx >= 1 && a->reps >= 1 && a->copy_mib >= 1 && a->block_size >= 1) return 0;
bad:
    fprintf(stderr, "usage: bench_decode_ops --model DIR [--device cuda|cpu] [--load-format "
                    "dummy|safetensors] [--batches 1,8,64] [--ctx 1024] [--reps 20] "
                    "[--copy-mib 1024] [--out FILE.md] [--quantization auto|fp8] "
                    "[--kv-cache-dtype auto|fp8]\n");
    return -1;
}

/* Device-to-device copy rate (read + write bytes), median of reps groups of 10 copies. */
static double copy_rate(backend *be, size_t bytes, int reps) {
    const backend_ops *op = be->ops;
    void *a = op->dev_alloc(be, bytes), *b = op->dev_alloc(be, bytes);
    double *t = kv_malloc((size_t)reps * sizeof *t);
    for (int r = -1; r < reps; r++) {
        op->sync(be);
        double t0 = kv_now();
        for (int i = 0; i < 10; i++) {
            void *d = i % 2 ? a : b;
            const void *s = i % 2 ? b : a;
            op->copy_async(be, BACKEND_STREAM_COMPUTE, 1, &d, &s, &bytes);
        }
        op->sync(be);
        if (r >= 0) t[r] = (kv_now() - t0) / 10;
    }
    double s = median(t, reps);
    free(t);
    op->dev_free(be, a);
    op->dev_free(be, b);
    return 2.0 * (double)bytes / s / 1e9;
}

typedef struct decode_setup {
    int32_t *tokens, *pos, *seq_start, *seq_len, *rows, *table;
    backend_batch b;
} decode_setup;

static void decode_setup_init(decode_setup *d, int batch, int ctx, int bps, int vocab) {
    size_t B = (size_t)batch;
    d->tokens = kv_calloc(B, sizeof(int32_t));
    d->pos = kv_malloc(B * sizeof(int32_t));
    d->seq_start = kv_malloc((B + 1) * sizeof(int32_t));
    d->seq_len = kv_malloc(B * sizeof(int32_t));
    d->rows = kv_malloc(B * sizeof(int32_t));
    d->table = kv_malloc(B * (size_t)bps * sizeof(int32_t));
    for (int s = 0; s < batch; s++) {
        d->pos[s] = ctx, d->seq_start[s] = s, d->seq_len[s] = ctx + 1, d->rows[s] = s;
        d->tokens[s] = (int32_t)((s * 7919 + 13) % vocab);
        for (int j = 0; j < bps; j++) d->table[(size_t)s * bps + j] = s * bps + j;
    }
    d->seq_start[batch] = batch;
    d->b = (backend_batch){.n_tokens = batch,
                           .n_seqs = batch,
                           .tokens = d->tokens,
                           .positions = d->pos,
                           .seq_start = d->seq_start,
                           .seq_len = d->seq_len,
                           .block_table = d->table,
                           .max_blocks = bps,
                           .n_out = batch,
                           .out_rows = d->rows};
}

static void decode_setup_free(decode_setup *d) {
    free(d->tokens), free(d->pos), free(d->seq_start), free(d->seq_len), free(d->rows);
    free(d->table);
}

/* Median wall seconds of a decode step (synced before, ends with the logits on the host). */
static double step_time(llama_model *m, decode_setup *d, void *pool, const backend_kv_layout *l,
                        float *logits, int reps) {
    double *t = kv_malloc((size_t)reps * sizeof *t);
    for (int r = -3; r < reps; r++) { /* three warm-up steps: the second one records a graph */
        m->be->ops->sync(m->be);
        double t0 = kv_now();
        llama_forward(m, &d->b, pool, l, logits);
        if (r >= 0) t[r] = kv_now() - t0;
    }
    double s = median(t, reps);
    free(t);
    return s;
}

int main(int argc, char **argv) {
    args a;
    if (parse_args(&a, argc, argv)) return 2;
    kv_error err = {{0}};
    backend *be = backend_create(a.device, 0, &err);
    if (!be) {
        fprintf(stderr, "bench_decode_ops: %s\n", err.msg);
        return 1;
    }
#ifdef KVSERVE_CUDA
    if (strcmp(be->name, "cuda") == 0) cuda_backend_set_event_timing(be, true);
#endif
    int max_batch = 1;
    for (int i = 0; i < a.n_batches; i++)
        max_batch = a.batches[i] > max_batch ? a.batches[i] : max_batch;
    llama_model m;
    model_load_options lo = {.format = a.format,
                             .max_tokens = max_batch < 64 ? 64 : max_batch,
                             .quantize_fp8 = a.fp8_weights};
    if ((a.kv_dtype && backend_set_kv_cache_dtype(be, a.kv_dtype, &err)) ||
        llama_load_opts(&m, be, a.model, &lo, &err)) {
        fprintf(stderr, "bench_decode_ops: %s\n", err.msg);
        backend_destroy(be);
        return 1;
    }
    const hf_config *c = &m.cfg;
    double copy_gbs = copy_rate(be, (size_t)a.copy_mib << 20, a.reps < 5 ? 5 : a.reps);
    backend_kv_layout l = llama_kv_layout(&m, a.block_size);
    int bps = (a.ctx + 1 + a.block_size - 1) / a.block_size;
    void *pool = be->ops->dev_alloc(be, l.block_bytes * (size_t)bps * (size_t)max_batch);
    float *logits = kv_malloc((size_t)max_batch * (size_t)c->vocab_size * sizeof *logits);
    /* the queue filler: lm_head matmuls of 64 rows, each reading the whole table */
    void *fill_x = be->ops->dev_alloc(be, 64 * (size_t)c->hidden_size * 4);
    void *fill_out = be->ops->dev_alloc(be, 64 * (size_t)c->vocab_size * 4);
    double lm_bytes =
        (double)c->vocab_size * c->hidden_size * (double)kv_dtype_size(be->weight_dtype);
    int n_fill = (int)(0.020 * copy_gbs * 1e9 / 2 / lm_bytes) + 1;

    profiler prof = {.real = be->ops, .wrapped = *be->ops, .cfg = c, .fp8_weights = a.fp8_weights};
    prof.wrapped.step_begin = w_step_begin, prof.wrapped.embed = w_embed;
    prof.wrapped.rmsnorm = w_rmsnorm, prof.wrapped.add_rmsnorm = w_add_rmsnorm;
    prof.wrapped.add = w_add, prof.wrapped.matmul = w_matmul, prof.wrapped.rope = w_rope;
    prof.wrapped.swiglu = w_swiglu, prof.wrapped.kv_write = w_kv_write;
    prof.wrapped.attention = w_attention, prof.wrapped.gather_rows = w_gather_rows;
    prof.wrapped.act_download_f32 = w_act_download_f32;
    prof_of_bench = &prof;

    FILE *out = a.out ? fopen(a.out, "w") : NULL;
    FILE *fs[2] = {stdout, out};
    for (int f = 0; f < 2; f++)
        if (fs[f])
            fprintf(fs[f],
                    "### bench_decode_ops: decode step breakdown (%s, context %d, weights %s, "
                    "KV %s)\n\n"
                    "Device copy rate measured in this run: %.0f GB/s (read + write). Per-op "
                    "times from backend events with the device kept busy ahead of the host (its "
                    "device time, not its launch), mean over %d profiled steps; graphs off while "
                    "profiling. Bytes = what the op must move at least (weights, activations, "
                    "the batch's KV). An event between two ops also stops programmatic dependent "
                    "launch from overlapping one's start with the other's end, so the sum of ops "
                    "can come out above the served step: the gaps are then what PDL and graphs "
                    "already hide.\n\n",
                    be->name, a.ctx + 1, a.fp8_weights ? "fp8" : kv_dtype_name(be->weight_dtype),
                    kv_dtype_name(be->kv_dtype), copy_gbs, a.reps);

    for (int bi = 0; bi < a.n_batches; bi++) {
        int batch = a.batches[bi];
        decode_setup d;
        decode_setup_init(&d, batch, a.ctx, bps, c->vocab_size);
        m.no_graphs = false;
        double t_graph = step_time(&m, &d, pool, &l, logits, a.reps);
        m.no_graphs = true;
        double t_ops = step_time(&m, &d, pool, &l, logits, a.reps);
        memset(prof.kind_s, 0, sizeof prof.kind_s);
        memset(prof.kind_bytes, 0, sizeof prof.kind_bytes);
        memset(prof.kind_count, 0, sizeof prof.kind_count);
        for (int r = 0; r < a.reps; r++) {
            be->ops->sync(be);
            for (int i = 0; i < n_fill; i++)
                be->ops->matmul(be, fill_out, fill_x, m.lm_head, NULL, 64, c->hidden_size,
                                c->vocab_size);
            be->ops = &prof.wrapped;
            prof.on = true;
            llama_forward(&m, &d.b, pool, &l, logits);
            prof.on = false;
            be->ops = prof.real;
            prof_collect(be, &prof);
        }
        m.no_graphs = false;
        double sum_s = 0, sum_bytes = 0;
        for (int k = 0; k < K_COUNT; k++) sum_s += prof.kind_s[k], sum_bytes += prof.kind_bytes[k];
        sum_s /= a.reps, sum_bytes /= a.reps;
        for (int f = 0; f < 2; f++) {
            FILE *o = fs[f];
            if (!o) continue;
            fprintf(o, "#### batch %d\n\n", batch);
            fprintf(o, "| op | calls/step | ms/step | %% of ops | MB/step | GB/s | %% of copy rate "
                       "|\n|---|---|---|---|---|---|---|\n");
            for (int k = 0; k < K_COUNT; k++) {
                if (!prof.kind_count[k]) continue;
                double s = prof.kind_s[k] / a.reps, bytes = prof.kind_bytes[k] / a.reps;
                double gbs = s > 0 ? bytes / s / 1e9 : 0;
                fprintf(o, "| %s | %d | %.4f | %.1f%% | %.2f | %.0f | %.1f%% |\n", kind_names[k],
                        prof.kind_count[k] / a.reps, s * 1e3, 100 * s / sum_s, bytes / 1e6, gbs,
                        100 * gbs / copy_gbs);
            }
            double roof = sum_bytes / (copy_gbs * 1e9);
            fprintf(o, "| **sum of ops** | | %.4f | 100%% | %.2f | %.0f | %.1f%% |\n\n",
                    sum_s * 1e3, sum_bytes / 1e6, sum_bytes / sum_s / 1e9,
                    100 * sum_bytes / sum_s / 1e9 / copy_gbs);
            fprintf(o,
                    "step as served (graphs on) %.4f ms, op by op (graphs off) %.4f ms; sum of "
                    "ops %.4f ms; launch gaps + host work: %.4f ms with graphs, %.4f ms without; "
                    "roofline of the step's bytes %.4f ms = %.1f%% of the served step\n\n",
                    t_graph * 1e3, t_ops * 1e3, sum_s * 1e3, (t_graph - sum_s) * 1e3,
                    (t_ops - sum_s) * 1e3, roof * 1e3, 100 * roof / t_graph);
            fflush(o);
        }
        decode_setup_free(&d);
    }
    if (out) fclose(out);
    be->ops->dev_free(be, fill_x);
    be->ops->dev_free(be, fill_out);
    be->ops->dev_free(be, pool);
    free(logits);
    llama_free(&m);
    backend_destroy(be);
    return 0;
}
