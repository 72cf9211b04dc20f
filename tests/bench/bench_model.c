/* Whole-model benchmark, in process (no HTTP): measures the device's ceilings first (device copy
 * rate, GEMM rate), then a Llama model's decode step at several batch sizes and its prefill at
 * several prompt lengths against those ceilings, and prints one markdown report (stdout and
 * --out). Written against backend.h and llama.h only, so it runs unchanged on every backend.
 *
 *   bench_model --model DIR [--device cuda|cpu] [--load-format dummy] [--decode-batches 1,8,64]
 *               [--decode-ctx 1024] [--prefill 1024,10240,32768] [--reps N] [--out FILE.md]
 *               [--hardware NAME] [--gemm-n 8192] [--copy-mib 1024] [--chunk N]
 *
 * Timing: wall clock around groups of ops closed by a full backend sync (llama_forward ends with
 * a logits download that waits for the device). Backend events would need a CUDA-only switch
 * (cuda_backend_set_event_timing); a sync costs ~10 us against steps of milliseconds.
 * Targets (DESIGN.md, Llama-3.1-8B on H100): decode batch 1 >= 85% of the roofline; 10K-token
 * prefill within 10% of vLLM's 260 ms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/llama.h"
#ifdef KVSERVE_CUDA
#include "model/cuda/cuda_backend.h"
#endif

#define BENCH_MAX_LIST 16
/* Elements of the random host chunk that device buffers are tiled from. */
#define BENCH_FILL_CHUNK ((size_t)1 << 20)

typedef struct bench_args {
    const char *model, *device, *out, *hardware;
    model_load_format format;
    int batches[BENCH_MAX_LIST], n_batches; /* decode batch sizes */
    int prefill[BENCH_MAX_LIST], n_prefill; /* prompt lengths */
    int ctx;                                /* decode: tokens already cached per sequence */
    int reps;                               /* timed samples of the ceilings and decode steps */
    int prefill_reps;                       /* timed samples of each prefill */
    int gemm_n;                             /* the ceiling GEMM is gemm_n^3 */
    size_t copy_bytes;                      /* one ceiling copy */
    int chunk;                              /* max tokens per forward step; 0: largest needed */
    int block_size, n_threads;
    const char *kv_dtypes;     /* --kv-cache-dtype: comma-separated, each run in turn */
    const char *quantizations; /* --quantization: auto and/or fp8 (online FP8 weights) */
} bench_args;

/* Ceilings measured in this run. Rates count every byte moved: read + write. */
typedef struct bench_limits {
    double copy_s, copy_gbs; /* device->device copy of copy_bytes */
    double add_s, add_gbs;   /* x += d over copy_bytes of x: 2 reads + 1 write */
    double gemm_s, gemm_tflops;
} bench_limits;

typedef struct decode_result {
    int batch;
    double step_s;      /* median step, logits of every sequence to the host */
    double step_1out_s; /* median step with the logits of one row only */
    double bytes;       /* bytes a step must read: streamed weights + the batch's KV */
} decode_result;

typedef struct prefill_result {
    int n_tokens, n_chunks;
    double s, flops;
} prefill_result;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t xorshift64(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* --- arguments --- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench_model --model DIR [--device cuda|cpu] [--load-format dummy|safetensors]\n"
            "                   [--decode-batches 1,8,64] [--decode-ctx 1024]\n"
            "                   [--prefill 1024,10240,32768] [--reps N] [--prefill-reps N]\n"
            "                   [--out FILE.md] [--hardware NAME] [--gemm-n 8192]\n"
            "                   [--copy-mib 1024] [--chunk N] [--block-size 16] [--threads N]\n"
            "                   [--kv-cache-dtype auto,fp8] [--quantization auto,fp8]\n");
}

/* Parses "1,8,64" (positive ints, at most BENCH_MAX_LIST); -1 when malformed. */
static int parse_list(const char *s, int *out, int *n) {
    *n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > (1 << 24) || (*end && *end != ',') || *n == BENCH_MAX_LIST)
            return -1;
        out[(*n)++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return *n > 0 ? 0 : -1;
}

static int parse_args(int argc, char **argv, bench_args *a) {
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(k, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (!v) goto bad;
        i++;
        if (strcmp(k, "--model") == 0)
            a->model = v;
        else if (strcmp(k, "--device") == 0)
            a->device = v;
        else if (strcmp(k, "--out") == 0)
            a->out = v;
        else if (strcmp(k, "--hardware") == 0)
            a->hardware = v;
        else if (strcmp(k, "--load-format") == 0) {
            if (strcmp(v, "dummy") == 0)
                a->format = MODEL_LOAD_DUMMY;
            else if (strcmp(v, "safetensors") == 0)
                a->format = MODEL_LOAD_SAFETENSORS;
            else
                goto bad;
        } else if (strcmp(k, "--decode-batches") == 0) {
            if (parse_list(v, a->batches, &a->n_batches)) goto bad;
        } else if (strcmp(k, "--prefill") == 0) {
            if (parse_list(v, a->prefill, &a->n_prefill)) goto bad;
        } else if (strcmp(k, "--decode-ctx") == 0)
            a->ctx = atoi(v);
        else if (strcmp(k, "--reps") == 0)
            a->reps = atoi(v);
        else if (strcmp(k, "--prefill-reps") == 0)
            a->prefill_reps = atoi(v);
        else if (strcmp(k, "--gemm-n") == 0)
            a->gemm_n = atoi(v);
        else if (strcmp(k, "--copy-mib") == 0)
            a->copy_bytes = atoi(v) > 0 ? (size_t)atoi(v) << 20 : 0;
        else if (strcmp(k, "--chunk") == 0)
            a->chunk = atoi(v);
        else if (strcmp(k, "--block-size") == 0)
            a->block_size = atoi(v);
        else if (strcmp(k, "--threads") == 0)
            a->n_threads = atoi(v);
        else if (strcmp(k, "--kv-cache-dtype") == 0)
            a->kv_dtypes = v;
        else if (strcmp(k, "--quantization") == 0)
            a->quantizations = v;
        else
            goto bad;
    }
    if (a->model && a->ctx >= 1 && a->reps >= 1 && a->prefill_reps >= 1 && a->gemm_n >= 16 &&
        a->copy_bytes > 0 && a->chunk >= 0 && a->block_size >= 1)
        return 0;
bad:
    usage(stderr);
    return -1;
}

/* --- device buffers --- */

/* Fills n elements at dst (weight dtype when weight, else activation dtype) with values uniform
 * in [-1, 1): one random host chunk is uploaded, then tiled by device-to-device copy_async, which
 * both backends allow (cudaMemcpyDefault; memcpy) though backend.h names only host<->device. */
static void dev_fill_random(backend *be, void *dst, size_t n, bool weight, uint64_t *rng) {
    const backend_ops *op = be->ops;
    size_t chunk = n < BENCH_FILL_CHUNK ? n : BENCH_FILL_CHUNK;
    size_t es = kv_dtype_size(weight ? be->weight_dtype : be->act_dtype);
    float *h = kv_malloc(chunk * sizeof *h);
    for (size_t i = 0; i < chunk; i++)
        h[i] = (float)((double)(xorshift64(rng) >> 11) / 4503599627370496.0 - 1.0);
    void *src =
        weight ? op->weight_upload(be, h, KV_DTYPE_F32, chunk) : op->act_upload_f32(be, h, chunk);
    for (size_t off = 0; off < n; off += chunk) {
        void *d = (char *)dst + off * es;
        const void *s = src;
        size_t bytes = (n - off < chunk ? n - off : chunk) * es;
        op->copy_async(be, BACKEND_STREAM_COMPUTE, 1, &d, &s, &bytes);
    }
    op->sync(be);
    op->dev_free(be, src);
    free(h);
}

/* --- ceilings --- */

/* One ceiling op (call i of a group). Buffers are far larger than any cache. */
typedef struct limit_op {
    backend *be;
    void *a, *b, *c;
    size_t n; /* elements (add) or bytes (copy) or GEMM side */
} limit_op;

static void op_copy(limit_op *o, int i) {
    void *d = i % 2 ? o->a : o->b;
    const void *s = i % 2 ? o->b : o->a;
    o->be->ops->copy_async(o->be, BACKEND_STREAM_COMPUTE, 1, &d, &s, &o->n);
}

static void op_add(limit_op *o, int i) {
    (void)i;
    o->be->ops->add(o->be, o->a, o->b, o->n);
}

static void op_gemm(limit_op *o, int i) {
    (void)i;
    int n = (int)o->n;
    o->be->ops->matmul(o->be, o->c, o->a, o->b, NULL, n, n, n);
}

/* Median seconds of one op: after a warm-up group, reps samples of `group` ops each, timed from a
 * synced device to a synced device. */
static double time_op(void (*fn)(limit_op *, int), limit_op *o, int group, int reps) {
    backend *be = o->be;
    double *t = kv_malloc((size_t)reps * sizeof *t);
    for (int i = 0; i < group; i++) fn(o, i);
    for (int r = 0; r < reps; r++) {
        be->ops->sync(be);
        double t0 = kv_now();
        for (int i = 0; i < group; i++) fn(o, i);
        be->ops->sync(be);
        t[r] = (kv_now() - t0) / group;
    }
    double m = median(t, reps);
    free(t);
    return m;
}

static bench_limits limits_measure(backend *be, const bench_args *a) {
    const backend_ops *op = be->ops;
    bench_limits L = {0};
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    size_t es = kv_dtype_size(be->act_dtype), n = a->copy_bytes / es;
    limit_op o = {.be = be, .a = op->dev_alloc(be, n * es), .b = op->dev_alloc(be, n * es)};
    dev_fill_random(be, o.a, n, false, &rng);
    dev_fill_random(be, o.b, n, false, &rng);
    // copy: a -> b, b -> a, ...; bytes moved = read + write
    o.n = n * es;
    L.copy_s = time_op(op_copy, &o, 10, a->reps);
    L.copy_gbs = 2.0 * (double)o.n / L.copy_s / 1e9;
    // add: a += b every time, so a drifts by at most one per add and stays finite
    o.n = n;
    L.add_s = time_op(op_add, &o, 10, a->reps);
    L.add_gbs = 3.0 * (double)(n * es) / L.add_s / 1e9;
    op->dev_free(be, o.a);
    op->dev_free(be, o.b);

    // GEMM out[N, N] = x[N, N] @ w[N, N]^T, 2 N^3 flops
    size_t g = (size_t)a->gemm_n;
    o = (limit_op){.be = be,
                   .a = op->dev_alloc(be, g * g * es),
                   .b = op->dev_alloc(be, g * g * kv_dtype_size(be->weight_dtype)),
                   .c = op->dev_alloc(be, g * g * es),
                   .n = g};
    dev_fill_random(be, o.a, g * g, false, &rng);
    dev_fill_random(be, o.b, g * g, true, &rng);
    L.gemm_s = time_op(op_gemm, &o, 5, a->reps);
    L.gemm_tflops = 2.0 * (double)g * (double)g * (double)g / L.gemm_s / 1e12;
    op->dev_free(be, o.a);
    op->dev_free(be, o.b);
    op->dev_free(be, o.c);
    return L;
}

/* --- the model --- */

/* Runs n prompt tokens of one sequence (positions start..start+n-1, blocks table[0..max_blocks))
 * through m, at most m->max_tokens per step, each step returning the logits of its last row.
 * Returns the seconds from the first step to the last logits on the host. */
static double prefill_run(llama_model *m, void *pool, const backend_kv_layout *l,
                          const int32_t *table, int max_blocks, const int32_t *tokens, int start,
                          int n, float *logits) {
    int chunk = m->max_tokens;
    int32_t *pos = kv_malloc((size_t)chunk * sizeof *pos);
    m->be->ops->sync(m->be);
    double t0 = kv_now();
    for (int c0 = 0; c0 < n; c0 += chunk) {
        int len = n - c0 < chunk ? n - c0 : chunk;
        for (int i = 0; i < len; i++) pos[i] = start + c0 + i;
        int32_t seq_start[2] = {0, len}, seq_len = start + c0 + len, last = len - 1;
        backend_batch b = {.n_tokens = len,
                           .n_seqs = 1,
                           .tokens = tokens + c0,
                           .positions = pos,
                           .seq_start = seq_start,
                           .seq_len = &seq_len,
                           .block_table = table,
                           .max_blocks = max_blocks,
                           .n_out = 1,
                           .out_rows = &last};
        llama_forward(m, &b, pool, l, logits);
    }
    double t = kv_now() - t0;
    free(pos);
    return t;
}

/* Prefill flops of n tokens in steps of chunk tokens. Per token, every layer's matmuls take
 * 2 flops per weight: 2 * (dim*qkv + q*dim + dim*2ff + ff*dim). Causal attention: query at
 * position p scores p + 1 keys, QK^T and PV each 2 * head_dim flops per (query, key) pair and
 * head, so 4 * head_dim * n_heads * n(n+1)/2 per layer. lm_head: 2 * dim * vocab per step (one
 * row of logits). Norms, rope, softmax and adds are left out (< 1%). */
static double prefill_flops(const hf_config *c, int n, int chunk) {
    double dim = c->hidden_size, q = (double)c->n_heads * c->head_dim;
    double qkv = q + 2.0 * c->n_kv_heads * c->head_dim, ff = c->intermediate_size;
    double per_token = 2.0 * (dim * qkv + q * dim + dim * 2 * ff + ff * dim) * c->n_layers;
    double attn = 4.0 * c->head_dim * c->n_heads * c->n_layers * (double)n * (n + 1.0) / 2.0;
    int n_steps = (n + chunk - 1) / chunk;
    return per_token * n + attn + 2.0 * dim * c->vocab_size * n_steps;
}

/* Median seconds of a decode step of `batch` sequences, each at position ctx of its own blocks
 * (seq s owns table[s * bps ...]), n_out rows of logits. Every step rewrites the same slot, so
 * each one reads exactly ctx + 1 cached positions per sequence. */
static double decode_time(llama_model *m, void *pool, const backend_kv_layout *l, int batch,
                          int ctx, int bps, int n_out, int reps, float *logits, uint64_t *rng) {
    size_t B = (size_t)batch;
    int32_t *tokens = kv_malloc(B * sizeof *tokens), *pos = kv_malloc(B * sizeof *pos);
    int32_t *seq_start = kv_malloc((B + 1) * sizeof *seq_start);
    int32_t *seq_len = kv_malloc(B * sizeof *seq_len), *rows = kv_malloc(B * sizeof *rows);
    int32_t *table = kv_malloc(B * (size_t)bps * sizeof *table);
    for (int s = 0; s < batch; s++) {
        pos[s] = ctx, seq_start[s] = s, seq_len[s] = ctx + 1, rows[s] = s;
        for (int j = 0; j < bps; j++) table[(size_t)s * bps + j] = s * bps + j;
    }
    seq_start[batch] = batch;
    backend_batch b = {.n_tokens = batch,
                       .n_seqs = batch,
                       .tokens = tokens,
                       .positions = pos,
                       .seq_start = seq_start,
                       .seq_len = seq_len,
                       .block_table = table,
                       .max_blocks = bps,
                       .n_out = n_out,
                       .out_rows = rows};
    double *t = kv_malloc((size_t)reps * sizeof *t);
    for (int r = -2; r < reps; r++) { /* two warm-up steps */
        for (int s = 0; s < batch; s++)
            tokens[s] = (int32_t)(xorshift64(rng) % (uint64_t)m->cfg.vocab_size);
        m->be->ops->sync(m->be);
        double t0 = kv_now();
        llama_forward(m, &b, pool, l, logits);
        if (r >= 0) t[r] = kv_now() - t0;
    }
    double med = median(t, reps);
    free(tokens), free(pos), free(seq_start), free(seq_len), free(rows), free(table), free(t);
    return med;
}

/* --- report --- */

/* The last component of a directory path, without trailing slashes, into out[cap]. */
static void model_name(const char *dir, char *out, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t s = n;
    while (s > 0 && dir[s - 1] != '/') s--;
    snprintf(out, cap, "%.*s", (int)(n - s), dir + s);
}

typedef struct bench_report {
    const bench_args *a;
    const backend *be;
    const llama_model *m;
    bench_limits lim;
    double stream_bytes; /* weight bytes a decode step reads */
    decode_result dec[BENCH_MAX_LIST];
    prefill_result pre[BENCH_MAX_LIST];
    const char *kv_name, *quant_name; /* this run's --kv-cache-dtype and --quantization */
    double stream_bytes_fp8;          /* the streamed weights at one byte per matrix element */
    const struct bench_report *first; /* the first run (its report goes to --out) */
    /* the CUDA backend's other attention path (portable when the one above ran Hopper's), for
     * the comparison table; has_alt false when there is none */
    bool has_alt;
    decode_result alt_dec[BENCH_MAX_LIST];
    prefill_result alt_pre[BENCH_MAX_LIST];
    char path[160], alt_path[160]; /* be->desc of each run */
} bench_report;

static void report_print(FILE *f, const bench_report *r) {
    const bench_args *a = r->a;
    const hf_config *c = &r->m->cfg;
    char name[256];
    model_name(a->model, name, sizeof name);
    fprintf(f, "### bench_model: %s%s on %s\n\n", name,
            a->format == MODEL_LOAD_DUMMY ? " (dummy weights)" : "",
            a->hardware ? a->hardware : r->be->name);
    fprintf(f,
            "Backend `%s`: weights %s, activations %s, KV %s; %d layers, dim %d, %d/%d heads, "
            "head_dim %d, vocab %d; %.4g GB of weights; KV block %d tokens; steps of at most %d "
            "tokens.\n\n",
            r->be->name,
            strcmp(r->quant_name, "fp8") != 0 ? kv_dtype_name(r->be->weight_dtype)
            : r->be->ops->weight_upload_fp8
                ? "FP8 (e4m3, a scale per row; decode GEMV on e4m3, larger batches dequantize)"
                : "FP8 values (quantized at load) held in the weight dtype",
            kv_dtype_name(r->be->act_dtype), kv_dtype_name(r->be->kv_dtype), c->n_layers,
            c->hidden_size, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size,
            (double)r->m->weight_bytes / 1e9, a->block_size, r->m->max_tokens);

    fprintf(f, "Ceilings measured in this run (median of %d; rates count read + write bytes):\n\n",
            a->reps);
    fprintf(f, "| ceiling | size | time | rate |\n|---|---|---|---|\n");
    fprintf(f, "| device copy (copy_async, device to device) | %zu MiB | %.3f ms | %.0f GB/s |\n",
            a->copy_bytes >> 20, r->lim.copy_s * 1e3, r->lim.copy_gbs);
    fprintf(f, "| add x += d (2 reads + 1 write) | %zu MiB | %.3f ms | %.0f GB/s |\n",
            a->copy_bytes >> 20, r->lim.add_s * 1e3, r->lim.add_gbs);
    fprintf(f, "| GEMM %s %d^3 | | %.3f ms | %.4g TFLOP/s |\n\n",
            kv_dtype_name(r->be->weight_dtype), a->gemm_n, r->lim.gemm_s * 1e3, r->lim.gemm_tflops);

    fprintf(
        f,
        "Decode: one token per sequence at context %d, logits of every sequence to the host "
        "(f32); median of %d steps. Bytes read per step = streamed weights (%.4g GB: all but an "
        "untied embedding table, which is only gathered) + the batch's KV. Roofline = those bytes "
        "/ "
        "measured copy rate (%.0f GB/s).\n\n",
        a->ctx + 1, a->reps, r->stream_bytes / 1e9, r->lim.copy_gbs);
    fprintf(f, "| batch | ms/step | tokens/s | GB read/step | GB/s | roofline ms | %% of roofline "
               "| ms/step, 1 logits row |\n|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < a->n_batches; i++) {
        const decode_result *d = &r->dec[i];
        double roof = d->bytes / (r->lim.copy_gbs * 1e9);
        fprintf(f, "| %d | %.3f | %.1f | %.4g | %.0f | %.3f | %.1f%% | %.3f |\n", d->batch,
                d->step_s * 1e3, d->batch / d->step_s, d->bytes / 1e9, d->bytes / d->step_s / 1e9,
                roof * 1e3, 100.0 * roof / d->step_s, d->step_1out_s * 1e3);
    }
    fprintf(f,
            "\nPrefill: one sequence, from the first step to the last token's logits on the host; "
            "median of %d. FLOPs = 2 x matmul weights x tokens + causal attention 4 x head_dim x "
            "heads x layers x n(n+1)/2 + lm_head per step.\n\n",
            a->prefill_reps);
    fprintf(f, "| prompt tokens | steps | ms | tokens/s | TFLOP | TFLOP/s | %% of GEMM |\n"
               "|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < a->n_prefill; i++) {
        const prefill_result *p = &r->pre[i];
        double tf = p->flops / p->s / 1e12;
        fprintf(f, "| %d | %d | %.1f | %.0f | %.4g | %.4g | %.1f%% |\n", p->n_tokens, p->n_chunks,
                p->s * 1e3, p->n_tokens / p->s, p->flops / 1e12, tf,
                100.0 * tf / r->lim.gemm_tflops);
    }
    if (r->path[0]) fprintf(f, "\nKernels: %s.\n", r->path);
    if (!r->has_alt) return;
    fprintf(f,
            "\nThe same steps on the other attention path (%s), same run: its time, its share "
            "of the ceiling, and its speed as a fraction of the path above (t_above / t_this; "
            "issue 14's bars for portable vs Hopper: decode >= 80%%, 10K prefill >= 60%%).\n\n",
            r->alt_path);
    fprintf(f, "| step | ms (above) | ms (this path) | this path: %% of roofline or GEMM | speed "
               "vs above |\n|---|---|---|---|---|\n");
    for (int i = 0; i < a->n_batches; i++) {
        const decode_result *d = &r->dec[i], *e = &r->alt_dec[i];
        double roof = e->bytes / (r->lim.copy_gbs * 1e9);
        fprintf(f, "| decode batch %d | %.3f | %.3f | %.1f%% | %.1f%% |\n", d->batch,
                d->step_s * 1e3, e->step_s * 1e3, 100.0 * roof / e->step_s,
                100.0 * d->step_s / e->step_s);
    }
    for (int i = 0; i < a->n_prefill; i++) {
        const prefill_result *p = &r->pre[i], *q = &r->alt_pre[i];
        fprintf(f, "| prefill %d | %.1f | %.1f | %.1f%% | %.1f%% |\n", p->n_tokens, p->s * 1e3,
                q->s * 1e3, 100.0 * q->flops / q->s / 1e12 / r->lim.gemm_tflops,
                100.0 * p->s / q->s);
    }
}

/* Decode steps at every batch size, then prefills of every length (one warm-up each), into
 * dec[] and pre[]; the pool holds the decode context (sequence s in blocks s * bps ..). */
static void bench_phases(llama_model *m, const bench_args *a, void *pool,
                         const backend_kv_layout *l, const int32_t *table, int bps, int n_blocks,
                         const int32_t *tokens, float *logits, uint64_t *rng, double stream_bytes,
                         decode_result *dec, prefill_result *pre) {
    double kv_token_bytes = (double)l->block_bytes / a->block_size;
    for (int i = 0; i < a->n_batches; i++) {
        decode_result *d = &dec[i];
        d->batch = a->batches[i];
        d->bytes = stream_bytes + (double)d->batch * (a->ctx + 1) * kv_token_bytes;
        d->step_s = decode_time(m, pool, l, d->batch, a->ctx, bps, d->batch, a->reps, logits, rng);
        d->step_1out_s = decode_time(m, pool, l, d->batch, a->ctx, bps, 1, a->reps, logits, rng);
        fprintf(stderr, "bench_model: decode batch %d: %.3f ms/step (%.3f with one logits row)\n",
                d->batch, d->step_s * 1e3, d->step_1out_s * 1e3);
    }

    // prefill: one warm-up run of each length, then prefill_reps timed runs
    for (int i = 0; i < a->n_prefill; i++) {
        prefill_result *p = &pre[i];
        p->n_tokens = a->prefill[i];
        p->n_chunks = (p->n_tokens + m->max_tokens - 1) / m->max_tokens;
        p->flops = prefill_flops(&m->cfg, p->n_tokens, m->max_tokens);
        double *t = kv_malloc((size_t)a->prefill_reps * sizeof *t);
        for (int k = -1; k < a->prefill_reps; k++) {
            double s = prefill_run(m, pool, l, table, n_blocks, tokens, 0, p->n_tokens, logits);
            if (k >= 0) t[k] = s;
        }
        p->s = median(t, a->prefill_reps);
        free(t);
        fprintf(stderr, "bench_model: prefill %d tokens: %.1f ms\n", p->n_tokens, p->s * 1e3);
    }
}

/* --- main --- */

static int max_of(const int *v, int n) {
    int m = 0;
    for (int i = 0; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* One --kv-cache-dtype x --quantization run: loads the model (the backend's KV dtype already
 * set), measures decode and prefill into *rp and prints its report. */
static int run_variant(const bench_args *ap, backend *be, bench_report *rp) {
    const bench_args a = *ap;
    bench_report r = *rp;
    kv_error err = {{0}};
    int max_batch = max_of(a.batches, a.n_batches), max_prompt = max_of(a.prefill, a.n_prefill);
    llama_model m;
    double t0 = kv_now();
    model_load_options lo = {.format = a.format,
                             .max_tokens = a.chunk,
                             .quantize_fp8 = strcmp(r.quant_name, "fp8") == 0};
    if (llama_load_opts(&m, be, a.model, &lo, &err)) {
        fprintf(stderr, "bench_model: %s\n", err.msg);
        return 1;
    }
    r.m = &m;
    fprintf(stderr, "bench_model: %.2f GB of weights loaded in %.1f s\n", m.weight_bytes / 1e9,
            kv_now() - t0);

    // the KV pool: decode sequence s owns blocks [s * bps, (s + 1) * bps); a prefill owns the
    // first blocks; both phases reuse the same pool
    backend_kv_layout l = llama_kv_layout(&m, a.block_size);
    const backend_ops *op = be->ops;
    int bps = a.ctx / a.block_size + 1; /* positions 0..ctx */
    int prompt_blocks = (max_prompt + a.block_size - 1) / a.block_size;
    int n_blocks = max_batch * bps > prompt_blocks ? max_batch * bps : prompt_blocks;
    fprintf(stderr, "bench_model: KV pool %d blocks of %zu bytes (%.2f GB)\n", n_blocks,
            l.block_bytes, (double)n_blocks * l.block_bytes / 1e9);
    void *pool = op->dev_alloc(be, (size_t)n_blocks * l.block_bytes);
    int32_t *table = kv_malloc((size_t)n_blocks * sizeof *table);
    for (int i = 0; i < n_blocks; i++) table[i] = i;
    int vocab = m.cfg.vocab_size, max_len = max_prompt > a.ctx ? max_prompt : a.ctx;
    int32_t *tokens = kv_malloc((size_t)max_len * sizeof *tokens);
    uint64_t rng = 0x2545f4914f6cdd1dull;
    for (int i = 0; i < max_len; i++) tokens[i] = (int32_t)(xorshift64(&rng) % (uint64_t)vocab);
    /* logits land in pinned memory where the backend has it, as the engine's do */
    size_t logits_bytes = (size_t)max_batch * (size_t)vocab * sizeof(float);
    float *logits = op->host_alloc(be, logits_bytes);
    bool logits_pinned = logits != NULL;
    if (!logits_pinned) logits = kv_malloc(logits_bytes);

    // decode: a real prefill of ctx tokens into sequence 0's blocks, copied to every sequence's
    // own blocks, so attention reads real (finite) K/V from distinct memory
    fprintf(stderr, "bench_model: decode context: prefill of %d tokens, copied to %d sequences\n",
            a.ctx, max_batch);
    prefill_run(&m, pool, &l, table, bps, tokens, 0, a.ctx, logits);
    size_t ctx_bytes = (size_t)((a.ctx + a.block_size - 1) / a.block_size) * l.block_bytes;
    for (int s = 1; s < max_batch; s++) {
        void *d = (char *)pool + (size_t)s * bps * l.block_bytes;
        const void *src = pool;
        op->copy_async(be, BACKEND_STREAM_COMPUTE, 1, &d, &src, &ctx_bytes);
    }
    op->sync(be);
    size_t tied_or_gathered = m.lm_head == m.embed ? 0
                                                   : (size_t)vocab * (size_t)m.cfg.hidden_size *
                                                         kv_dtype_size(be->weight_dtype);
    r.stream_bytes = (double)(m.weight_bytes - tied_or_gathered);
    {
        const hf_config *c = &m.cfg;
        double dim = c->hidden_size, q = (double)c->n_heads * c->head_dim;
        double kvd = (double)c->n_kv_heads * c->head_dim, ff = c->intermediate_size;
        double mats = c->n_layers * (dim * (q + 2 * kvd) + q * dim + 3 * ff * dim);
        bool stored_fp8 = strcmp(r.quant_name, "fp8") == 0 && be->ops->weight_upload_fp8;
        r.stream_bytes_fp8 =
            stored_fp8 ? r.stream_bytes
                       : r.stream_bytes - mats * (double)kv_dtype_size(be->weight_dtype) + mats;
    }
    bench_phases(&m, &a, pool, &l, table, bps, n_blocks, tokens, logits, &rng, r.stream_bytes,
                 r.dec, r.pre);
    snprintf(r.path, sizeof r.path, "%s", be->desc ? be->desc : be->name);
#ifdef KVSERVE_CUDA
    /* the CUDA backend's other attention path, when the device has one */
    if (strcmp(be->name, "cuda") == 0) {
        bool portable = cuda_backend_attn_portable(be);
        if (cuda_backend_set_attn_path(be, !portable)) {
            fprintf(stderr, "bench_model: again on the other path: %s\n", be->desc);
            bench_phases(&m, &a, pool, &l, table, bps, n_blocks, tokens, logits, &rng,
                         r.stream_bytes, r.alt_dec, r.alt_pre);
            snprintf(r.alt_path, sizeof r.alt_path, "%s", be->desc);
            r.has_alt = true;
            KV_CHECK(cuda_backend_set_attn_path(be, portable));
        }
    }
#endif

    report_print(stdout, &r);
    int rc = 0;
    char out[1200];
    if (a.out && rp != rp->first)
        snprintf(out, sizeof out, "%s.%s-%s.md", a.out, r.kv_name, r.quant_name);
    else if (a.out)
        snprintf(out, sizeof out, "%s", a.out);
    if (a.out) {
        FILE *f = fopen(out, "w");
        if (f) {
            report_print(f, &r);
            rc = fclose(f) ? 1 : 0;
        }
        if (!f || rc) {
            fprintf(stderr, "bench_model: cannot write %s\n", out);
            rc = 1;
        }
    }
    op->dev_free(be, pool);
    if (logits_pinned)
        op->host_free(be, logits);
    else
        free(logits);
    llama_free(&m);
    free(table), free(tokens);
    r.m = NULL;
    *rp = r;
    return rc;
}

/* Decode ms per batch of every run, side by side, against the bytes-as-stored roofline and the
 * roofline with FP8 weights (one byte per matrix element; what an FP8 GEMM would stream). */
static void variants_print(FILE *f, const bench_report *v, int n) {
    const bench_args *a = v[0].a;
    fprintf(f, "\n#### Decode by KV dtype / weight quantization (ms/step; roofline ms as stored "
               "| with FP8 weights)\n\n| KV | weights |");
    for (int i = 0; i < a->n_batches; i++) fprintf(f, " batch %d |", a->batches[i]);
    fprintf(f, "\n|---|---|");
    for (int i = 0; i < a->n_batches; i++) fprintf(f, "---|");
    fprintf(f, "\n");
    for (int k = 0; k < n; k++) {
        fprintf(f, "| %s | %s |", v[k].kv_name, v[k].quant_name);
        for (int i = 0; i < a->n_batches; i++) {
            const decode_result *d = &v[k].dec[i];
            double kv = d->bytes - v[k].stream_bytes;
            fprintf(f, " %.3f (%.3f \\| %.3f) |", d->step_s * 1e3,
                    d->bytes / (v[k].lim.copy_gbs * 1e9) * 1e3,
                    (v[k].stream_bytes_fp8 + kv) / (v[k].lim.copy_gbs * 1e9) * 1e3);
        }
        fprintf(f, "\n");
    }
}

int main(int argc, char **argv) {
    bench_args a = {.device = backend_cuda_available() ? "cuda" : "cpu",
                    .format = MODEL_LOAD_SAFETENSORS,
                    .batches = {1, 8, 64},
                    .n_batches = 3,
                    .prefill = {1024, 10240, 32768},
                    .n_prefill = 3,
                    .ctx = 1024,
                    .reps = 20,
                    .prefill_reps = 3,
                    .gemm_n = 8192,
                    .copy_bytes = (size_t)1 << 30,
                    .block_size = 16};
    if (parse_args(argc, argv, &a)) return 2;
    int max_batch = max_of(a.batches, a.n_batches), max_prompt = max_of(a.prefill, a.n_prefill);
    if (!a.chunk) a.chunk = max_prompt > max_batch ? max_prompt : max_batch;
    if (a.chunk < max_batch) {
        fprintf(stderr, "bench_model: --chunk %d is smaller than decode batch %d\n", a.chunk,
                max_batch);
        return 2;
    }

    kv_error err = {{0}};
    backend *be = backend_create(a.device, a.n_threads, &err);
    if (!be) {
        fprintf(stderr, "bench_model: %s\n", err.msg);
        return 1;
    }
    bench_report r = {.a = &a, .be = be};
    fprintf(stderr, "bench_model: ceilings (copy %zu MiB, GEMM %d^3)...\n", a.copy_bytes >> 20,
            a.gemm_n);
    r.lim = limits_measure(be, &a);
    fprintf(stderr, "bench_model: copy %.0f GB/s, add %.0f GB/s, GEMM %.1f TFLOP/s\n",
            r.lim.copy_gbs, r.lim.add_gbs, r.lim.gemm_tflops);

    bench_report runs[8];
    int n_runs = 0, rc = 0;
    char kv_list[128], q_list[128];
    snprintf(kv_list, sizeof kv_list, "%s", a.kv_dtypes ? a.kv_dtypes : "auto");
    snprintf(q_list, sizeof q_list, "%s", a.quantizations ? a.quantizations : "auto");
    static char names[16][16];
    char *s1 = NULL;
    for (char *kt = strtok_r(kv_list, ",", &s1); kt && n_runs < 8; kt = strtok_r(NULL, ",", &s1)) {
        char ql[128], *s2 = NULL;
        snprintf(ql, sizeof ql, "%s", q_list);
        for (char *qt = strtok_r(ql, ",", &s2); qt && n_runs < 8; qt = strtok_r(NULL, ",", &s2)) {
            if (backend_set_kv_cache_dtype(be, kt, &err) ||
                (strcmp(qt, "auto") != 0 && strcmp(qt, "fp8") != 0)) {
                fprintf(stderr, "bench_model: --kv-cache-dtype %s --quantization %s: %s\n", kt, qt,
                        strcmp(qt, "auto") && strcmp(qt, "fp8") ? "quantization is auto or fp8"
                                                                : err.msg);
                backend_destroy(be);
                return 2;
            }
            snprintf(names[2 * n_runs], 16, "%s", kt);
            snprintf(names[2 * n_runs + 1], 16, "%s", qt);
            bench_report *v = &runs[n_runs++];
            *v = r;
            v->first = &runs[0];
            v->kv_name = names[2 * n_runs - 2], v->quant_name = names[2 * n_runs - 1];
            fprintf(stderr, "bench_model: KV %s, weights %s\n", kt, qt);
            rc |= run_variant(&a, be, v);
            if (rc && !v->dec[0].step_s) break;
        }
    }
    if (n_runs > 1) {
        variants_print(stdout, runs, n_runs);
        if (a.out) {
            char path[1200];
            snprintf(path, sizeof path, "%s.variants.md", a.out);
            FILE *f = fopen(path, "w");
            if (f) variants_print(f, runs, n_runs);
            if (!f || fclose(f)) rc = 1;
        }
    }
    backend_destroy(be);
    return rc;
}
