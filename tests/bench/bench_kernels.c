/* CUDA kernels against the limits measured in the same run: a large device-to-device copy (bytes
 * read + written) and a cuBLAS bf16 GEMM 8192^3. Then the decode GEMV, paged attention decode
 * (batch 1/8/64, 4K context) and prefill (1K/10K tokens, and a 512-token chunk over a 9.5K
 * prefix) at Llama-3.1-8B shapes (32 heads, 8 KV heads, head_dim 128, block 16), reported as
 * GB/s or TFLOP/s next to those ceilings, on both attention paths where the device has both
 * (Hopper: wgmma prefill; portable: the sm_80+ mma.sync kernels), with the portable one's speed
 * as a fraction of the Hopper one's. `bench_kernels fp8mm`: the FP8-weight matmul paths and their
 * tuning variants at the projection shapes, against bf16 weights (`bench_kernels fp8mm K M N V B
 * MIN_N`: one shape and config, V -1 for bf16 weights, e.g. under a profiler). Random data
 * throughout; medians of event timings. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/cuda/cuda_backend.h"

typedef struct bench {
    backend *be;
    uint64_t rng;
    kv_dtype kv; /* the attention benchmarks' pool: BF16, or F8_E4M3 (argv[2] "fp8") */
} bench;

static uint16_t rand_bf16(bench *b) {
    b->rng ^= b->rng << 13, b->rng ^= b->rng >> 7, b->rng ^= b->rng << 17;
    float f = (float)(b->rng >> 40) / 16777216.0f * 2.0f - 1.0f;
    return kv_f32_to_bf16(f);
}

/* device buffer of bytes filled with random bf16 (one 64 MiB random block, tiled on device) */
static void *rand_dev(bench *b, size_t bytes) {
    backend *be = b->be;
    size_t chunk = (size_t)64 << 20;
    if (chunk > bytes) chunk = (bytes + 1) & ~(size_t)1;
    uint16_t *h = kv_malloc(chunk);
    for (size_t i = 0; i < chunk / 2; i++) h[i] = rand_bf16(b);
    char *d = be->ops->dev_alloc(be, bytes);
    be->ops->to_dev(be, d, h, chunk < bytes ? chunk : bytes);
    for (size_t off = chunk; off < bytes; off += chunk) {
        size_t n = bytes - off < chunk ? bytes - off : chunk;
        void *dst = d + off;
        const void *src = d;
        be->ops->copy_async(be, BACKEND_STREAM_COMPUTE, 1, &dst, &src, &n);
    }
    be->ops->sync(be);
    free(h);
    return d;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef void (*bench_fn)(bench *b, void *ctx, int rep);

/* median seconds of fn over reps, after warm-up */
static double time_median(bench *b, bench_fn fn, void *ctx, int reps) {
    backend *be = b->be;
    for (int i = 0; i < 3; i++) fn(b, ctx, i);
    double *t = kv_malloc(sizeof(double) * (size_t)reps);
    for (int i = 0; i < reps; i++) {
        backend_event *e0 = be->ops->event_record(be, BACKEND_STREAM_COMPUTE);
        fn(b, ctx, i);
        backend_event *e1 = be->ops->event_record(be, BACKEND_STREAM_COMPUTE);
        be->ops->event_sync(be, e1);
        t[i] = be->ops->event_elapsed(be, e0, e1);
        be->ops->event_free(be, e0), be->ops->event_free(be, e1);
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double m = t[reps / 2];
    free(t);
    return m;
}

/* ---- copy ---- */
typedef struct copy_ctx {
    void *a, *b;
    size_t bytes;
} copy_ctx;

static void run_copy(bench *b, void *ctx, int rep) {
    copy_ctx *c = ctx;
    void *dst = rep & 1 ? c->a : c->b;
    const void *src = rep & 1 ? c->b : c->a;
    b->be->ops->copy_async(b->be, BACKEND_STREAM_COMPUTE, 1, &dst, &src, &c->bytes);
}

/* ---- gemm ---- */
typedef struct gemm_ctx {
    void *x, *w, *out;
    int n, k, m;
} gemm_ctx;

static void run_gemm(bench *b, void *ctx, int rep) {
    gemm_ctx *g = ctx;
    b->be->ops->matmul(b->be, g->out, g->x, g->w, NULL, g->n, g->k, g->m);
}

/* ---- FP8 weights ---- */
#define FP8MM_COPIES 16 /* weight copies rotated through, so that L2 does not hold the weight */

typedef struct fp8mm_ctx {
    void *x, *out, *w[FP8MM_COPIES];
    int copies, n, k, m;
} fp8mm_ctx;

static void run_fp8mm(bench *b, void *ctx, int rep) {
    fp8mm_ctx *g = ctx;
    b->be->ops->matmul(b->be, g->out, g->x, g->w[rep % g->copies], NULL, g->n, g->k, g->m);
}

/* copies of one random weight [m, k] (e4m3 with row scales when fp8, else bf16), at least
 * 256 MiB together */
static int fp8mm_weights(bench *b, fp8mm_ctx *g, bool fp8) {
    size_t bytes = (size_t)g->m * g->k * (fp8 ? 1 : 2);
    int copies = (int)(((size_t)256 << 20) / bytes) + 1;
    g->copies = copies < 2 ? 2 : copies > FP8MM_COPIES ? FP8MM_COPIES : copies;
    uint8_t *q = fp8 ? kv_malloc(bytes) : NULL;
    float *sc = fp8 ? kv_malloc((size_t)g->m * sizeof *sc) : NULL;
    for (size_t i = 0; fp8 && i < bytes; i++) {
        b->rng ^= b->rng << 13, b->rng ^= b->rng >> 7, b->rng ^= b->rng << 17;
        q[i] = (uint8_t)(b->rng >> 56);
        if ((q[i] & 0x7f) == 0x7f) q[i] = 0; /* no NaN */
    }
    for (int j = 0; fp8 && j < g->m; j++) sc[j] = 1.0f / 448.0f;
    for (int c = 0; c < g->copies; c++)
        g->w[c] = fp8 ? b->be->ops->weight_upload_fp8(b->be, q, sc, (size_t)g->m, (size_t)g->k)
                      : rand_dev(b, bytes);
    free(q), free(sc);
    return g->copies;
}

/* FP8-weight matmuls at Llama-3.1-8B's projection shapes, n = 1..64 rows: each variant of the
 * mma path (cuda_backend_set_fp8_mma) and the GEMV, as GB/s of weight bytes and % of the copy
 * rate, next to the bf16 weights' matmul (GEMV or cuBLASLt) of the same shape. */
static void bench_fp8mm(bench *b, double copy_gbs) {
    backend *be = b->be;
    static const int shapes[4][2] = {{4096, 6144}, {4096, 4096}, {4096, 28672}, {14336, 4096}};
    static const int ns[7] = {1, 2, 4, 8, 16, 32, 64};
    static const int cfg[9][3] = {{0, 2, 2}, {1, 2, 2}, {2, 2, 2}, {3, 2, 2}, {0, 4, 2},
                                  {1, 4, 2}, {2, 4, 2}, {3, 1, 2}, {0, 2, 9}};
    printf("-- FP8 weights: matmul ms (GB/s of weights, %% of copy %.0f GB/s); configs: "
           "variant/blocks per SM/min n (min n 9: the GEMV up to 8)\n",
           copy_gbs);
    for (int si = 0; si < 4; si++) {
        fp8mm_ctx f = {.k = shapes[si][0], .m = shapes[si][1]}, h = f;
        fp8mm_weights(b, &f, true);
        fp8mm_weights(b, &h, false);
        f.x = h.x = rand_dev(b, (size_t)64 * f.k * 2);
        f.out = h.out = be->ops->dev_alloc(be, (size_t)64 * f.m * 2);
        for (int ni = 0; ni < 7; ni++) {
            f.n = h.n = ns[ni];
            double tb = time_median(b, run_fp8mm, &h, 50);
            printf("k=%-5d m=%-5d n=%-2d  bf16 %7.4f ms (%4.0f%%)", f.k, f.m, f.n, tb * 1e3,
                   100 * (double)f.m * f.k * 2 / tb / 1e9 / copy_gbs);
            for (int c = 0; c < 9; c++) {
                if (f.n == 1 && c > 0) break; /* n = 1 is the GEMV whatever the config */
                cuda_backend_set_fp8_mma(be, cfg[c][0], cfg[c][1], cfg[c][2]);
                double t = time_median(b, run_fp8mm, &f, 50);
                printf(" | %d/%d/%d %7.4f (%4.0f%%)", cfg[c][0], cfg[c][1], cfg[c][2], t * 1e3,
                       100 * (double)f.m * f.k / t / 1e9 / copy_gbs);
            }
            printf("\n");
            fflush(stdout);
        }
        cuda_backend_set_fp8_mma(be, 0, 2, 2);
        for (int c = 0; c < f.copies; c++) be->ops->dev_free(be, f.w[c]);
        for (int c = 0; c < h.copies; c++) be->ops->dev_free(be, h.w[c]);
        be->ops->dev_free(be, f.x), be->ops->dev_free(be, f.out);
    }
}

/* ---- attention ---- */
typedef struct attn_ctx {
    backend_kv_layout l;
    void *pool, *q, *out;
    int q_stride, n_heads;
} attn_ctx;

static void run_attn(bench *b, void *ctx, int rep) {
    attn_ctx *a = ctx;
    backend_attn_params ap = {.scale = 1.0f / sqrtf(128.0f)};
    b->be->ops->attention(b->be, a->out, a->q, a->q_stride, a->pool, &a->l, rep % a->l.n_layers,
                          a->n_heads, &ap);
}

/* n_seqs sequences of n_new tokens after prefix cached ones, blocks in a scrambled order.
 * Returns seconds per call; *kv_bytes gets the K/V bytes one call must read. */
static double bench_attention(bench *b, int n_seqs, int prefix, int n_new, int n_layers,
                              double *kv_bytes) {
    backend *be = b->be;
    attn_ctx a = {.l = {.n_layers = n_layers,
                        .n_kv_heads = 8,
                        .head_dim = 128,
                        .block_size = 16,
                        .dtype = b->kv},
                  .q_stride = 48 * 128,
                  .n_heads = 32};
    size_t es = kv_dtype_size(b->kv);
    a.l.block_bytes = (size_t)n_layers * 2 * 8 * 16 * 128 * es;
    int len = prefix + n_new, nb = (len + 15) / 16, n_tokens = n_seqs * n_new;
    int n_blocks = n_seqs * nb;
    int32_t *tokens = kv_calloc((size_t)n_tokens, 4), *pos = kv_malloc((size_t)n_tokens * 4);
    int32_t *seq_start = kv_malloc((size_t)(n_seqs + 1) * 4),
            *seq_len = kv_malloc((size_t)n_seqs * 4);
    int32_t *bt = kv_malloc((size_t)n_blocks * 4), *out_rows = kv_calloc(1, 4);
    for (int s = 0; s < n_seqs; s++) {
        seq_start[s] = s * n_new;
        seq_len[s] = len;
        for (int i = 0; i < n_new; i++) pos[s * n_new + i] = prefix + i;
        for (int i = 0; i < nb; i++)
            bt[s * nb + i] = (int32_t)(((size_t)(s * nb + i) * 7919) % (size_t)n_blocks);
    }
    seq_start[n_seqs] = n_tokens;
    backend_batch batch = {.n_tokens = n_tokens,
                           .n_seqs = n_seqs,
                           .tokens = tokens,
                           .positions = pos,
                           .seq_start = seq_start,
                           .seq_len = seq_len,
                           .block_table = bt,
                           .max_blocks = nb,
                           .n_out = 0,
                           .out_rows = out_rows};
    be->ops->step_begin(be, &batch);
    a.pool = rand_dev(b, a.l.block_bytes * (size_t)n_blocks); /* as e4m3: a few NaNs, timing only */
    a.q = rand_dev(b, (size_t)n_tokens * a.q_stride * 2);
    a.out = be->ops->dev_alloc(be, (size_t)n_tokens * 32 * 128 * 2);
    double t = time_median(b, run_attn, &a, n_new > 1 ? 10 : 50);
    *kv_bytes = (double)n_seqs * len * 8 * 128 * 2 * (double)es;
    be->ops->dev_free(be, a.pool), be->ops->dev_free(be, a.q), be->ops->dev_free(be, a.out);
    free(tokens), free(pos), free(seq_start), free(seq_len), free(bt), free(out_rows);
    return t;
}

/* argv[1]: "all" (default), "attention" (skip the ceilings and GEMVs), or one case for a
 * profiler: "prefill10k", "decode8" (batch 8, 4K context). argv[2] "fp8": attention reads an
 * e4m3 KV pool (GB/s then counts its one-byte elements). */
int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : "all";
    bool all = strcmp(only, "all") == 0;
    if (cuda_backend_device_count() <= 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    kv_error err;
    bench b = {.rng = 0x2545F4914F6CDD1Dull,
               .kv = argc > 2 && strcmp(argv[2], "fp8") == 0 ? KV_DTYPE_F8_E4M3 : KV_DTYPE_BF16};
    if (b.kv == KV_DTYPE_F8_E4M3) printf("attention over an e4m3 (fp8) KV pool\n");
    b.be = cuda_backend_create(&err);
    if (!b.be) {
        printf("SKIP: %s\n", err.msg);
        return 77;
    }
    backend *be = b.be;
    cuda_backend_set_event_timing(be, true);
    printf("%s\n", be->desc);

    if (strcmp(only, "prefill10k") == 0) {
        double bytes;
        double t = bench_attention(&b, 1, 0, 10240, 1, &bytes);
        printf("attention prefill 10240: %.3f ms\n", t * 1e3);
        be->ops->destroy(be);
        return 0;
    }
    if (strcmp(only, "decode8") == 0) {
        double bytes;
        double t = bench_attention(&b, 8, 4095, 1, 8, &bytes);
        printf("attention decode batch 8: %.3f ms %.1f GB/s\n", t * 1e3, bytes / t / 1e9);
        be->ops->destroy(be);
        return 0;
    }
    double copy_gbs = 2998, gemm_tf = 782; /* measured on the H100 (run 5), when skipped */
    if (all || strcmp(only, "fp8mm") == 0) {
        copy_ctx c = {.bytes = (size_t)1 << 30};
        c.a = rand_dev(&b, c.bytes);
        c.b = rand_dev(&b, c.bytes);
        double t_copy = time_median(&b, run_copy, &c, 20);
        copy_gbs = 2.0 * (double)c.bytes / t_copy / 1e9;
        be->ops->dev_free(be, c.a), be->ops->dev_free(be, c.b);
        printf("%-46s %9.3f ms  %8.1f GB/s (read+write)\n", "copy D2D 1 GiB", t_copy * 1e3,
               copy_gbs);

        gemm_ctx g = {.n = 8192, .k = 8192, .m = 8192};
        g.x = rand_dev(&b, (size_t)g.n * g.k * 2);
        g.w = rand_dev(&b, (size_t)g.m * g.k * 2);
        g.out = be->ops->dev_alloc(be, (size_t)g.n * g.m * 2);
        double t_gemm = time_median(&b, run_gemm, &g, 20);
        gemm_tf = 2.0 * g.n * (double)g.k * g.m / t_gemm / 1e12;
        be->ops->dev_free(be, g.x), be->ops->dev_free(be, g.w), be->ops->dev_free(be, g.out);
        printf("%-46s %9.3f ms  %8.1f TFLOP/s\n", "matmul bf16 8192^3 (cuBLASLt)", t_gemm * 1e3,
               gemm_tf);

        /* decode GEMV shapes of Llama-3.1-8B: fused gate|up (28672 x 4096), and the lm_head */
        int gemv_m[2] = {28672, 128256}, gemv_n[3] = {1, 8, 64};
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++) {
                gemm_ctx v = {.n = gemv_n[j], .k = 4096, .m = gemv_m[i]};
                v.x = rand_dev(&b, (size_t)v.n * v.k * 2);
                v.w = rand_dev(&b, (size_t)v.m * v.k * 2);
                v.out = be->ops->dev_alloc(be, (size_t)v.n * v.m * 2);
                double t = time_median(&b, run_gemm, &v, 50);
                double gbs = (double)v.m * v.k * 2 / t / 1e9;
                char name[64];
                snprintf(name, sizeof name, "matmul n=%d k=4096 m=%d (weights)", v.n, v.m);
                printf("%-46s %9.3f ms  %8.1f GB/s  %5.1f%% of copy\n", name, t * 1e3, gbs,
                       100 * gbs / copy_gbs);
                be->ops->dev_free(be, v.x), be->ops->dev_free(be, v.w),
                    be->ops->dev_free(be, v.out);
            }
    }

    if (strcmp(only, "fp8mm") == 0 && argc >= 8) { /* one shape and config (for a profiler) */
        fp8mm_ctx f = {.k = atoi(argv[2]), .m = atoi(argv[3]), .n = atoi(argv[4])};
        bool bf16 = atoi(argv[5]) < 0;
        fp8mm_weights(&b, &f, !bf16);
        f.x = rand_dev(&b, (size_t)f.n * f.k * 2);
        f.out = be->ops->dev_alloc(be, (size_t)f.n * f.m * 2);
        if (!bf16) cuda_backend_set_fp8_mma(be, atoi(argv[5]), atoi(argv[6]), atoi(argv[7]));
        double t = time_median(&b, run_fp8mm, &f, 20);
        double bytes = (double)f.m * f.k * (bf16 ? 2 : 1);
        printf("k=%d m=%d n=%d config %s/%s/%s: %.4f ms, %.0f GB/s of weights (%.0f%% of copy)\n",
               f.k, f.m, f.n, argv[5], argv[6], argv[7], t * 1e3, bytes / t / 1e9,
               100 * bytes / t / 1e9 / copy_gbs);
        be->ops->destroy(be);
        return 0;
    }
    if (strcmp(only, "fp8mm") == 0) {
        bench_fp8mm(&b, copy_gbs);
        be->ops->destroy(be);
        return 0;
    }

    /* the attention cases on each path the device has (Hopper first, where it is one), then
     * the portable path as a ratio to the Hopper one */
    enum { N_DEC = 3, N_PRE = 3 };
    int batches[N_DEC] = {1, 8, 64};
    int pre_prefix[N_PRE] = {0, 0, 9728}, pre_new[N_PRE] = {1024, 10240, 512};
    double t_dec[2][N_DEC], t_pre[2][N_PRE];
    bool portable_first = cuda_backend_attn_portable(be);
    bool have[2] = {false, false};
    for (int path = 0; path < 2; path++) { /* 0: hopper, 1: portable */
        if (!cuda_backend_set_attn_path(be, path == 1)) continue;
        have[path] = true;
        const char *tag = path == 1 ? "portable" : "hopper";
        printf("-- attention, %s path: %s\n", tag, be->desc);
        for (int i = 0; i < N_DEC; i++) {
            double bytes;
            /* 8 layers rotated so batch 1's 17 MB per layer does not sit in L2 between calls */
            double t = bench_attention(&b, batches[i], 4095, 1, 8, &bytes);
            t_dec[path][i] = t;
            char name[64];
            snprintf(name, sizeof name, "[%s] attention decode batch %d ctx 4096", tag, batches[i]);
            printf("%-46s %9.3f ms  %8.1f GB/s  %5.1f%% of copy\n", name, t * 1e3, bytes / t / 1e9,
                   100 * bytes / t / 1e9 / copy_gbs);
        }
        for (int i = 0; i < N_PRE; i++) {
            double bytes;
            double t = bench_attention(&b, 1, pre_prefix[i], pre_new[i], 1, &bytes);
            t_pre[path][i] = t;
            double n0 = pre_prefix[i], n1 = pre_prefix[i] + pre_new[i];
            /* causal: query at position p attends to p + 1 keys; QK^T and PV are 2 flops each */
            double keys = (n1 * (n1 + 1) - n0 * (n0 + 1)) / 2;
            double flops = 4.0 * 128 * 32 * keys;
            char name[64];
            snprintf(name, sizeof name, "[%s] attention prefill %d new after %d", tag, pre_new[i],
                     pre_prefix[i]);
            printf("%-46s %9.3f ms  %8.1f TFLOP/s  %5.1f%% of GEMM  (x32 layers: %.1f ms)\n", name,
                   t * 1e3, flops / t / 1e12, 100 * flops / t / 1e12 / gemm_tf, 32 * t * 1e3);
        }
    }
    if (have[0] && have[1]) {
        /* issue 14's bars: portable >= 80% of Hopper at decode, >= 60% at 10K prefill */
        printf("-- portable path speed as a fraction of the hopper path (t_hopper / t_portable)\n");
        for (int i = 0; i < N_DEC; i++)
            printf("decode batch %-2d ctx 4096      %6.1f%%  (bar 80%%)\n", batches[i],
                   100 * t_dec[0][i] / t_dec[1][i]);
        for (int i = 0; i < N_PRE; i++)
            printf("prefill %5d after %-5d      %6.1f%%  (bar %s)\n", pre_new[i], pre_prefix[i],
                   100 * t_pre[0][i] / t_pre[1][i], pre_new[i] == 10240 ? "60%" : "-");
    }
    KV_CHECK(cuda_backend_set_attn_path(be, portable_first));
    be->ops->destroy(be);
    return 0;
}
