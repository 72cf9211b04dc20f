/* Every op of the CUDA backend against a plain double-precision reference on the host and against
 * the CPU backend (f32, model/cpu) on the same inputs: random bf16-representable values (never
 * zeros), outputs poisoned with NaN first so unwritten elements fail. Tolerances (bf16 outputs,
 * fp32 accumulation): per element |got - ref| <= atol + rtol |ref| and ||got - ref|| / ||ref|| <=
 * 1e-2; the CPU backend computes in f32, within ~1e-6 of the double reference, so each op is held
 * to the same budget against both; each check prints its worst element and the share of the
 * budget it used. The logits download (act_download_f32) is checked into pageable and pinned
 * memory, across its chunk size. Attention runs over scattered block tables, GQA 1/4/7/8, many
 * sequences, contexts 1..32K, prefill and chunked prefill over a cached prefix, and the generic
 * head-dim path, which also serves sliding windows and soft-capped scores (issue 17). Skips (exit
 * 77) when no GPU is present. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu/cpu_backend.h"
#include "model/cuda/cuda_backend.h"

typedef struct rng {
    uint64_t s;
} rng;

static uint32_t rng_next(rng *r) {
    r->s ^= r->s << 13, r->s ^= r->s >> 7, r->s ^= r->s << 17;
    return (uint32_t)(r->s >> 16);
}
/* uniform in [-a, a], never exactly 0, rounded to bf16 */
static float rng_bf16(rng *r, float a) {
    float f = ((float)(rng_next(r) & 0xffffff) + 0.5f) / 16777216.0f * 2.0f - 1.0f;
    return kv_bf16_to_f32(kv_f32_to_bf16(f * a));
}

static int n_failed;

/* Compares n values; prints one line; counts a failure. */
static void check(const char *name, const float *got, const double *ref, size_t n, double atol,
                  double rtol) {
    double err2 = 0, ref2 = 0, worst = 0;
    size_t wi = 0;
    bool nan = false;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            nan = true;
            wi = i;
            break;
        }
        double d = fabs((double)got[i] - ref[i]);
        err2 += d * d, ref2 += ref[i] * ref[i];
        double budget = d / (atol + rtol * fabs(ref[i]));
        if (budget > worst) worst = budget, wi = i;
    }
    double rel = ref2 > 0 ? sqrt(err2 / ref2) : sqrt(err2);
    bool ok = !nan && worst <= 1.0 && rel <= 1e-2;
    if (!ok) n_failed++;
    printf("%s %-44s n=%-9zu rel_l2=%.2e worst[%zu]: got %.6g ref %.6g (%.0f%% of atol %.0e + rtol "
           "%.0e)%s\n",
           ok ? "ok  " : "FAIL", name, n, rel, wi, got[wi], ref[wi], worst * 100, atol, rtol,
           nan ? " NON-FINITE" : "");
}

/* The same check against the CPU backend's f32 result. */
static void check_cpu(const char *name, const float *got, const float *cpu, size_t n, double atol,
                      double rtol) {
    double *ref = kv_malloc(n * sizeof *ref + 8);
    for (size_t i = 0; i < n; i++) ref[i] = cpu[i];
    char full[128];
    snprintf(full, sizeof full, "%s vs cpu", name);
    check(full, got, ref, n, atol, rtol);
    free(ref);
}

static void *upload(backend *be, const float *x, size_t n) {
    return be->ops->act_upload_f32(be, x, n);
}

static void *upload_w(backend *be, const float *x, size_t n) {
    return be->ops->weight_upload(be, x, KV_DTYPE_F32, n);
}

static float *download(backend *be, const void *d, size_t n) {
    float *h = kv_malloc(n * sizeof *h + 4);
    be->ops->act_download_f32(be, h, d, n);
    return h;
}

/* device buffer of n bf16 set to NaN */
static void *poisoned(backend *be, size_t n) {
    uint16_t *h = kv_malloc(n * 2 + 2);
    for (size_t i = 0; i < n; i++) h[i] = 0x7fc0;
    void *d = be->ops->dev_alloc(be, n * 2);
    be->ops->to_dev(be, d, h, n * 2);
    free(h);
    return d;
}

static float *rand_vec(rng *r, size_t n, float a) {
    float *x = kv_malloc(n * sizeof *x + 4);
    for (size_t i = 0; i < n; i++) x[i] = rng_bf16(r, a);
    return x;
}

/* A one-sequence-per-token or general batch: fills tokens/positions/etc for step_begin. */
typedef struct test_batch {
    backend_batch b;
    int32_t *tokens, *positions, *seq_start, *seq_len, *block_table, *out_rows;
} test_batch;

static void batch_free(test_batch *t) {
    free(t->tokens), free(t->positions), free(t->seq_start), free(t->seq_len);
    free(t->block_table), free(t->out_rows);
}

/* Sequences with (prefix, n_new); blocks drawn from a shuffled pool of n_blocks; unused table
 * entries are -1 so a read past a sequence's blocks faults or shows. */
static void batch_make(test_batch *t, rng *r, int n_seqs, const int *prefix, const int *n_new,
                       int block_size, int n_blocks) {
    int n_tokens = 0, max_blocks = 1;
    for (int s = 0; s < n_seqs; s++) {
        n_tokens += n_new[s];
        int nb = (prefix[s] + n_new[s] + block_size - 1) / block_size;
        if (nb > max_blocks) max_blocks = nb;
    }
    t->tokens = kv_malloc((size_t)n_tokens * 4 + 4);
    t->positions = kv_malloc((size_t)n_tokens * 4 + 4);
    t->seq_start = kv_malloc((size_t)(n_seqs + 1) * 4);
    t->seq_len = kv_malloc((size_t)n_seqs * 4 + 4);
    t->block_table = kv_malloc((size_t)n_seqs * max_blocks * 4);
    t->out_rows = kv_malloc((size_t)n_tokens * 4 + 4);
    int *perm = kv_malloc((size_t)n_blocks * sizeof *perm);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(rng_next(r) % (uint32_t)(i + 1)), x = perm[i];
        perm[i] = perm[j], perm[j] = x;
    }
    int next_block = 0, t0 = 0;
    for (int s = 0; s < n_seqs; s++) {
        t->seq_start[s] = t0;
        t->seq_len[s] = prefix[s] + n_new[s];
        for (int i = 0; i < n_new[s]; i++) {
            t->positions[t0 + i] = prefix[s] + i;
            t->tokens[t0 + i] = (int32_t)(rng_next(r) % 1000);
        }
        t0 += n_new[s];
        int nb = (t->seq_len[s] + block_size - 1) / block_size;
        for (int i = 0; i < max_blocks; i++) {
            int32_t blk = -1;
            if (i < nb) {
                KV_CHECK(next_block < n_blocks);
                blk = perm[next_block++];
            }
            t->block_table[(size_t)s * max_blocks + i] = blk;
        }
    }
    t->seq_start[n_seqs] = t0;
    for (int i = 0; i < n_tokens; i++) t->out_rows[i] = n_tokens - 1 - i;
    free(perm);
    t->b = (backend_batch){.n_tokens = n_tokens,
                           .n_seqs = n_seqs,
                           .tokens = t->tokens,
                           .positions = t->positions,
                           .seq_start = t->seq_start,
                           .seq_len = t->seq_len,
                           .block_table = t->block_table,
                           .max_blocks = max_blocks,
                           .n_out = n_tokens,
                           .out_rows = t->out_rows};
}

/* tokens 0..n-1 of one sequence at positions p0.. (embed, rope, gather tests) */
static void batch_simple(test_batch *t, rng *r, int n, int p0, int block_size, int n_blocks) {
    int prefix = p0;
    batch_make(t, r, 1, &prefix, &n, block_size, n_blocks);
}

static size_t layout_block_bytes(const backend_kv_layout *l) {
    return (size_t)l->n_layers * 2 * l->n_kv_heads * l->block_size * l->head_dim * 2;
}

static size_t layout_index(const backend_kv_layout *l, int layer, int kv, int head, int slot) {
    return ((((size_t)layer * 2 + kv) * l->n_kv_heads + head) * l->block_size + slot) * l->head_dim;
}

/* ---------------------------------------------------------------------------------------- */

static void test_embed_gather(backend *be, backend *cpu, rng *r, int dim) {
    const int vocab = 1000, n = 37;
    test_batch tb;
    batch_simple(&tb, r, n, 5, 16, 64);
    be->ops->step_begin(be, &tb.b);
    cpu->ops->step_begin(cpu, &tb.b);
    float *table = rand_vec(r, (size_t)vocab * dim, 1.0f);
    void *d_table = be->ops->weight_upload(be, table, KV_DTYPE_F32, (size_t)vocab * dim);
    void *d_out = poisoned(be, (size_t)n * dim);
    be->ops->embed(be, d_out, d_table, dim);
    float *got = download(be, d_out, (size_t)n * dim);
    double *ref = kv_malloc((size_t)n * dim * sizeof *ref);
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++)
            ref[(size_t)t * dim + i] = table[(size_t)tb.tokens[t] * dim + i];
    char name[64];
    snprintf(name, sizeof name, "embed dim=%d", dim);
    check(name, got, ref, (size_t)n * dim, 0, 0);

    void *d_g = poisoned(be, (size_t)n * dim);
    be->ops->gather_rows(be, d_g, d_out, dim);
    float *gg = download(be, d_g, (size_t)n * dim);
    for (int o = 0; o < n; o++)
        for (int i = 0; i < dim; i++)
            ref[(size_t)o * dim + i] = got[(size_t)tb.out_rows[o] * dim + i];
    snprintf(name, sizeof name, "gather_rows dim=%d", dim);
    check(name, gg, ref, (size_t)n * dim, 0, 0);

    void *c_table = upload_w(cpu, table, (size_t)vocab * dim);
    void *c_out = cpu->ops->dev_alloc(cpu, (size_t)n * dim * 4);
    void *c_g = cpu->ops->dev_alloc(cpu, (size_t)n * dim * 4);
    cpu->ops->embed(cpu, c_out, c_table, dim);
    cpu->ops->gather_rows(cpu, c_g, c_out, dim);
    float *ce = download(cpu, c_out, (size_t)n * dim), *cg = download(cpu, c_g, (size_t)n * dim);
    snprintf(name, sizeof name, "embed dim=%d", dim);
    check_cpu(name, got, ce, (size_t)n * dim, 0, 0);
    snprintf(name, sizeof name, "gather_rows dim=%d", dim);
    check_cpu(name, gg, cg, (size_t)n * dim, 0, 0);
    cpu->ops->dev_free(cpu, c_table), cpu->ops->dev_free(cpu, c_out), cpu->ops->dev_free(cpu, c_g);
    free(ce), free(cg);
    be->ops->dev_free(be, d_table), be->ops->dev_free(be, d_out), be->ops->dev_free(be, d_g);
    free(table), free(got), free(gg), free(ref);
    batch_free(&tb);
}

static void test_rmsnorm(backend *be, backend *cpu, rng *r, int n, int dim) {
    const float eps = 1e-5f;
    float *x = rand_vec(r, (size_t)n * dim, 2.0f), *d = rand_vec(r, (size_t)n * dim, 1.0f);
    float *w = rand_vec(r, (size_t)dim, 1.5f);
    void *dx = upload(be, x, (size_t)n * dim), *dd = upload(be, d, (size_t)n * dim);
    void *dw = be->ops->weight_upload(be, w, KV_DTYPE_F32, (size_t)dim);
    void *dout = poisoned(be, (size_t)n * dim);
    double *ref = kv_malloc((size_t)n * dim * sizeof *ref),
           *refx = kv_malloc((size_t)n * dim * sizeof *refx);
    char name[64];

    be->ops->rmsnorm(be, dout, dx, dw, n, dim, eps);
    float *got = download(be, dout, (size_t)n * dim);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)x[(size_t)i * dim + j] * x[(size_t)i * dim + j];
        double rr = 1.0 / sqrt(ss / dim + eps);
        for (int j = 0; j < dim; j++) ref[(size_t)i * dim + j] = x[(size_t)i * dim + j] * rr * w[j];
    }
    snprintf(name, sizeof name, "rmsnorm n=%d dim=%d", n, dim);
    check(name, got, ref, (size_t)n * dim, 1e-2, 1e-2);
    void *cx = upload(cpu, x, (size_t)n * dim), *cd = upload(cpu, d, (size_t)n * dim);
    void *cw = upload_w(cpu, w, (size_t)dim), *cout = cpu->ops->dev_alloc(cpu, (size_t)n * dim * 4);
    cpu->ops->rmsnorm(cpu, cout, cx, cw, n, dim, eps);
    float *cg = download(cpu, cout, (size_t)n * dim);
    check_cpu(name, got, cg, (size_t)n * dim, 1e-2, 1e-2);
    free(got), free(cg);

    /* in place */
    be->ops->rmsnorm(be, dx, dx, dw, n, dim, eps);
    got = download(be, dx, (size_t)n * dim);
    snprintf(name, sizeof name, "rmsnorm in place n=%d dim=%d", n, dim);
    check(name, got, ref, (size_t)n * dim, 1e-2, 1e-2);
    free(got);

    /* fused residual add: x += d, out = norm(x) (x rounded to bf16 like the residual stream) */
    be->ops->dev_free(be, dx);
    dx = upload(be, x, (size_t)n * dim);
    be->ops->add_rmsnorm(be, dout, dx, dd, dw, n, dim, eps);
    float *gx = download(be, dx, (size_t)n * dim);
    got = download(be, dout, (size_t)n * dim);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < dim; j++) {
            size_t k = (size_t)i * dim + j;
            refx[k] = (double)x[k] + d[k];
            ss += refx[k] * refx[k];
        }
        double rr = 1.0 / sqrt(ss / dim + eps);
        for (int j = 0; j < dim; j++)
            ref[(size_t)i * dim + j] = refx[(size_t)i * dim + j] * rr * w[j];
    }
    snprintf(name, sizeof name, "add_rmsnorm x n=%d dim=%d", n, dim);
    check(name, gx, refx, (size_t)n * dim, 1e-2, 1e-2);
    snprintf(name, sizeof name, "add_rmsnorm out n=%d dim=%d", n, dim);
    check(name, got, ref, (size_t)n * dim, 1e-2, 1e-2);
    cpu->ops->add_rmsnorm(cpu, cout, cx, cd, cw, n, dim, eps);
    float *cgx = download(cpu, cx, (size_t)n * dim);
    cg = download(cpu, cout, (size_t)n * dim);
    snprintf(name, sizeof name, "add_rmsnorm x n=%d dim=%d", n, dim);
    check_cpu(name, gx, cgx, (size_t)n * dim, 1e-2, 1e-2);
    snprintf(name, sizeof name, "add_rmsnorm out n=%d dim=%d", n, dim);
    check_cpu(name, got, cg, (size_t)n * dim, 1e-2, 1e-2);
    cpu->ops->dev_free(cpu, cx), cpu->ops->dev_free(cpu, cd), cpu->ops->dev_free(cpu, cw);
    cpu->ops->dev_free(cpu, cout);
    free(cg), free(cgx);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, dd), be->ops->dev_free(be, dw);
    be->ops->dev_free(be, dout);
    free(x), free(d), free(w), free(ref), free(refx), free(got), free(gx);
}

static void test_add_swiglu(backend *be, backend *cpu, rng *r, int n, int ff) {
    size_t len = (size_t)n * ff;
    float *x = rand_vec(r, len, 3.0f), *d = rand_vec(r, len, 3.0f);
    void *dx = upload(be, x, len), *dd = upload(be, d, len);
    be->ops->add(be, dx, dd, len);
    float *got = download(be, dx, len);
    double *ref = kv_malloc(len * 2 * sizeof *ref);
    for (size_t i = 0; i < len; i++) ref[i] = (double)x[i] + d[i];
    char name[64];
    snprintf(name, sizeof name, "add n=%zu", len);
    check(name, got, ref, len, 1e-2, 1e-2);
    void *cx = upload(cpu, x, len), *cd = upload(cpu, d, len);
    cpu->ops->add(cpu, cx, cd, len);
    float *cg = download(cpu, cx, len);
    check_cpu(name, got, cg, len, 1e-2, 1e-2);
    cpu->ops->dev_free(cpu, cx), cpu->ops->dev_free(cpu, cd);
    free(got), free(cg);

    float *gu = rand_vec(r, len * 2, 4.0f);
    void *dgu = upload(be, gu, len * 2), *dout = poisoned(be, len);
    be->ops->swiglu(be, dout, dgu, n, ff);
    got = download(be, dout, len);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ff; j++) {
            double g = gu[(size_t)i * 2 * ff + j], u = gu[(size_t)i * 2 * ff + ff + j];
            ref[(size_t)i * ff + j] = g / (1 + exp(-g)) * u;
        }
    snprintf(name, sizeof name, "swiglu n=%d ff=%d", n, ff);
    check(name, got, ref, len, 1e-2, 1e-2);
    void *cgu = upload(cpu, gu, len * 2), *cout = cpu->ops->dev_alloc(cpu, len * 4);
    cpu->ops->swiglu(cpu, cout, cgu, n, ff);
    cg = download(cpu, cout, len);
    check_cpu(name, got, cg, len, 1e-2, 1e-2);
    cpu->ops->dev_free(cpu, cgu), cpu->ops->dev_free(cpu, cout);
    free(cg);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, dd), be->ops->dev_free(be, dgu);
    be->ops->dev_free(be, dout);
    free(x), free(d), free(gu), free(got), free(ref);
}

static void test_matmul(backend *be, backend *cpu, rng *r, int n, int k, int m, bool bias) {
    float *x = rand_vec(r, (size_t)n * k, 1.0f), *w = rand_vec(r, (size_t)m * k, 1.0f);
    float *b = rand_vec(r, (size_t)m, 4.0f);
    void *dx = upload(be, x, (size_t)n * k);
    void *dw = be->ops->weight_upload(be, w, KV_DTYPE_F32, (size_t)m * k);
    void *db = bias ? be->ops->weight_upload(be, b, KV_DTYPE_F32, (size_t)m) : NULL;
    void *dout = poisoned(be, (size_t)n * m);
    be->ops->matmul(be, dout, dx, dw, db, n, k, m);
    float *got = download(be, dout, (size_t)n * m);
    double *ref = kv_malloc((size_t)n * m * sizeof *ref), rms = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            double s = bias ? b[j] : 0;
            for (int l = 0; l < k; l++) s += (double)x[(size_t)i * k + l] * w[(size_t)j * k + l];
            ref[(size_t)i * m + j] = s;
            rms += s * s;
        }
    rms = sqrt(rms / ((double)n * m));
    char name[64];
    snprintf(name, sizeof name, "matmul n=%d k=%d m=%d%s", n, k, m, bias ? " +bias" : "");
    /* fp32 accumulation, bf16 output: rtol covers the output rounding (2^-9), atol the
     * cancellation near zero relative to the typical magnitude */
    check(name, got, ref, (size_t)n * m, 2e-3 * rms, 1e-2);
    void *cx = upload(cpu, x, (size_t)n * k), *cw = upload_w(cpu, w, (size_t)m * k);
    void *cb = bias ? upload_w(cpu, b, (size_t)m) : NULL;
    void *cout = cpu->ops->dev_alloc(cpu, (size_t)n * m * 4);
    cpu->ops->matmul(cpu, cout, cx, cw, cb, n, k, m);
    float *cg = download(cpu, cout, (size_t)n * m);
    check_cpu(name, got, cg, (size_t)n * m, 2e-3 * rms, 1e-2);
    cpu->ops->dev_free(cpu, cx), cpu->ops->dev_free(cpu, cw), cpu->ops->dev_free(cpu, cout);
    if (cb) cpu->ops->dev_free(cpu, cb);
    free(cg);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, dw), be->ops->dev_free(be, dout);
    if (db) be->ops->dev_free(be, db);
    free(x), free(w), free(b), free(got), free(ref);
}

/* rot < hd: partial rotary (Phi-4-mini), the dims past rot untouched; mscale: longrope's
 * factor on cos and sin. */
static void test_rope(backend *be, backend *cpu, rng *r, int rot, float mscale) {
    const int n = 33, n_q = 32, n_kv = 8, hd = 128, stride = (n_q + 2 * n_kv) * hd;
    test_batch tb;
    batch_simple(&tb, r, n, 131000 - n, 16, 8192);
    be->ops->step_begin(be, &tb.b);
    cpu->ops->step_begin(cpu, &tb.b);
    float inv_freq[64];
    for (int i = 0; i < rot / 2; i++) inv_freq[i] = (float)pow(500000.0, -2.0 * i / rot);
    float *d_if = be->ops->dev_alloc(be, sizeof inv_freq);
    be->ops->to_dev(be, d_if, inv_freq, sizeof inv_freq);
    size_t len = (size_t)n * stride;
    float *x = rand_vec(r, len, 2.0f);
    void *dx = upload(be, x, len);
    be->ops->rope(be, dx, stride, n_q + n_kv, hd, rot, d_if, mscale); /* q, k heads; v untouched */
    float *got = download(be, dx, len);
    double *ref = kv_malloc(len * sizeof *ref);
    for (size_t i = 0; i < len; i++) ref[i] = x[i];
    for (int t = 0; t < n; t++)
        for (int h = 0; h < n_q + n_kv; h++)
            for (int i = 0; i < rot / 2; i++) {
                double a = (double)((float)tb.positions[t] * inv_freq[i]);
                double c = cos(a) * mscale, sn = sin(a) * mscale;
                size_t p = (size_t)t * stride + h * hd + i;
                double x0 = x[p], x1 = x[p + rot / 2];
                ref[p] = x0 * c - x1 * sn;
                ref[p + rot / 2] = x1 * c + x0 * sn;
            }
    char name[80];
    snprintf(name, sizeof name, "rope 40 heads hd=128 rot=%d mscale=%.2f pos~131K", rot, mscale);
    check(name, got, ref, len, 1e-2, 1e-2);
    void *cx = upload(cpu, x, len);
    cpu->ops->rope(cpu, cx, stride, n_q + n_kv, hd, rot, inv_freq, mscale);
    float *cg = download(cpu, cx, len);
    check_cpu(name, got, cg, len, 1e-2, 1e-2);
    cpu->ops->dev_free(cpu, cx);
    free(cg);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, d_if);
    free(x), free(got), free(ref);
    batch_free(&tb);
}

/* head_rmsnorm (q/k norms over a fused qkv row), geglu, scale and softcap against double
 * references and the CPU backend: bf16 outputs, so rtol 1e-2 (2^-9 rounding plus the input
 * rounding of a tanh argument) and a small atol near zero. */
static void test_family_ops(backend *be, backend *cpu, rng *r, int n, int n_heads, int hd, int ff) {
    test_batch tb;
    batch_simple(&tb, r, n, 0, 16, 64);
    be->ops->step_begin(be, &tb.b);
    cpu->ops->step_begin(cpu, &tb.b);
    const int stride = (n_heads + 3) * hd;
    size_t len = (size_t)n * stride;
    float *x = rand_vec(r, len, 2.0f), *w = rand_vec(r, (size_t)hd, 1.5f);
    double *ref = kv_malloc((len + (size_t)n * 2 * ff) * sizeof *ref);
    for (size_t i = 0; i < len; i++) ref[i] = x[i];
    for (int t = 0; t < n; t++)
        for (int h = 0; h < n_heads; h++) {
            const float *xh = x + (size_t)t * stride + h * hd;
            double ss = 0;
            for (int d = 0; d < hd; d++) ss += (double)xh[d] * xh[d];
            double inv = 1.0 / sqrt(ss / hd + 1e-6);
            for (int d = 0; d < hd; d++) ref[(size_t)t * stride + h * hd + d] = xh[d] * inv * w[d];
        }
    void *dx = upload(be, x, len), *dw = upload_w(be, w, (size_t)hd);
    be->ops->head_rmsnorm(be, dx, n, stride, n_heads, hd, dw, 1e-6f);
    float *got = download(be, dx, len);
    char name[80];
    snprintf(name, sizeof name, "head_rmsnorm n=%d heads=%d hd=%d", n, n_heads, hd);
    check(name, got, ref, len, 1e-2, 1e-2);
    void *cx = upload(cpu, x, len), *cw = upload_w(cpu, w, (size_t)hd);
    cpu->ops->head_rmsnorm(cpu, cx, n, stride, n_heads, hd, cw, 1e-6f);
    float *cg = download(cpu, cx, len);
    check_cpu(name, got, cg, len, 1e-2, 1e-2);
    free(got), free(cg);
    cpu->ops->dev_free(cpu, cx), cpu->ops->dev_free(cpu, cw);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, dw);

    size_t m = (size_t)n * ff;
    float *gu = rand_vec(r, 2 * m, 4.0f);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ff; j++) {
            double g = gu[(size_t)i * 2 * ff + j], u = gu[(size_t)i * 2 * ff + ff + j];
            ref[(size_t)i * ff + j] =
                0.5 * g * (1 + tanh(sqrt(2 / M_PI) * (g + 0.044715 * g * g * g))) * u;
        }
    void *dgu = upload(be, gu, 2 * m), *dout = poisoned(be, m);
    be->ops->geglu(be, dout, dgu, n, ff);
    got = download(be, dout, m);
    snprintf(name, sizeof name, "geglu n=%d ff=%d", n, ff);
    check(name, got, ref, m, 1e-2, 1e-2);
    void *cgu = upload(cpu, gu, 2 * m), *cout = cpu->ops->dev_alloc(cpu, m * 4);
    cpu->ops->geglu(cpu, cout, cgu, n, ff);
    cg = download(cpu, cout, m);
    check_cpu(name, got, cg, m, 1e-2, 1e-2);
    free(got), free(cg);

    /* scale by 7.5 (rounded to bf16 in between), then cap at 20 */
    for (size_t i = 0; i < 2 * m; i++) {
        double scaled = kv_bf16_to_f32(kv_f32_to_bf16(gu[i] * 7.5f));
        ref[i] = 20.0 * tanh(scaled / 20.0);
    }
    be->ops->scale(be, dgu, 2 * m, 7.5f);
    be->ops->softcap(be, dgu, 2 * m, 20.0f);
    got = download(be, dgu, 2 * m);
    check("scale 7.5 then softcap 20", got, ref, 2 * m, 1e-2, 1e-2);
    cpu->ops->scale(cpu, cgu, 2 * m, 7.5f);
    cpu->ops->softcap(cpu, cgu, 2 * m, 20.0f);
    cg = download(cpu, cgu, 2 * m);
    check_cpu("scale 7.5 then softcap 20", got, cg, 2 * m, 1e-2, 1e-2);
    free(got), free(cg);
    cpu->ops->dev_free(cpu, cgu), cpu->ops->dev_free(cpu, cout);
    be->ops->dev_free(be, dgu), be->ops->dev_free(be, dout);
    free(x), free(w), free(gu), free(ref);
    batch_free(&tb);
}

/* The CPU backend's copy of layout l (f32 elements) and of a bf16 pool of n elements. */
static backend_kv_layout layout_f32(const backend_kv_layout *l) {
    backend_kv_layout c = *l;
    c.dtype = KV_DTYPE_F32;
    c.block_bytes = layout_block_bytes(l) * 2;
    return c;
}

static void test_kv_write(backend *be, backend *cpu, rng *r, int n_kv, int hd, int block_size) {
    backend_kv_layout l = {.n_layers = 3,
                           .n_kv_heads = n_kv,
                           .head_dim = hd,
                           .block_size = block_size,
                           .dtype = KV_DTYPE_BF16};
    l.block_bytes = layout_block_bytes(&l);
    const int n_blocks = 64, layer = 1, stride = (4 + 2) * n_kv * hd;
    int prefix[3] = {0, 40, 7}, n_new[3] = {50, 1, 20};
    test_batch tb;
    batch_make(&tb, r, 3, prefix, n_new, block_size, n_blocks);
    be->ops->step_begin(be, &tb.b);
    cpu->ops->step_begin(cpu, &tb.b);
    size_t pool_n = l.block_bytes / 2 * n_blocks;
    float *pool = rand_vec(r, pool_n, 1.0f);
    void *dpool = upload(be, pool, pool_n);
    size_t qn = (size_t)tb.b.n_tokens * stride;
    float *qkv = rand_vec(r, qn, 1.0f);
    void *dqkv = upload(be, qkv, qn);
    const char *dk = (const char *)dqkv + (size_t)4 * n_kv * hd * 2;
    be->ops->kv_write(be, dpool, &l, layer, dk, dk + (size_t)n_kv * hd * 2, stride);
    float *got = download(be, dpool, pool_n);
    double *ref = kv_malloc(pool_n * sizeof *ref);
    for (size_t i = 0; i < pool_n; i++) ref[i] = pool[i];
    for (int s = 0; s < 3; s++)
        for (int t = tb.seq_start[s]; t < tb.seq_start[s + 1]; t++) {
            int pos = tb.positions[t];
            size_t base = (size_t)tb.block_table[s * tb.b.max_blocks + pos / block_size] *
                          (l.block_bytes / 2);
            for (int kv = 0; kv < 2; kv++)
                for (int h = 0; h < n_kv; h++)
                    for (int d = 0; d < hd; d++)
                        ref[base + layout_index(&l, layer, kv, h, pos % block_size) + d] =
                            qkv[(size_t)t * stride + (4 + kv) * n_kv * hd + h * hd + d];
        }
    char name[64];
    snprintf(name, sizeof name, "kv_write kv_heads=%d hd=%d bs=%d", n_kv, hd, block_size);
    check(name, got, ref, pool_n, 0, 0);
    backend_kv_layout cl = layout_f32(&l);
    float *cpool = upload(cpu, pool, pool_n), *cqkv = upload(cpu, qkv, qn);
    const float *ck = cqkv + (size_t)4 * n_kv * hd;
    cpu->ops->kv_write(cpu, cpool, &cl, layer, ck, ck + (size_t)n_kv * hd, stride);
    float *cg = download(cpu, cpool, pool_n);
    check_cpu(name, got, cg, pool_n, 0, 0);
    cpu->ops->dev_free(cpu, cpool), cpu->ops->dev_free(cpu, cqkv);
    free(cg);
    be->ops->dev_free(be, dpool), be->ops->dev_free(be, dqkv);
    free(pool), free(qkv), free(got), free(ref);
    batch_free(&tb);
}

/* ---------------------------------------------------------------------------------------- */

typedef struct attn_case {
    const char *name;
    int n_heads, n_kv_heads, head_dim, block_size, n_seqs;
    const int *prefix, *n_new;
    int window;    /* sliding window (0: none) */
    float softcap; /* score soft cap (0: none) */
    float scale;   /* 0: head_dim^-0.5 */
} attn_case;

/* Double-precision attention over an f32 pool of layout cl (the dequantized K/V), with the
 * case's window, soft cap and scale: out[token][head][dim]. */
static double *attn_reference(const attn_case *c, const test_batch *tb, const backend_kv_layout *cl,
                              const float *pool32, int layer, const float *q, int q_stride) {
    const int hd = c->head_dim, nh = c->n_heads, G = nh / c->n_kv_heads;
    const size_t block_elems = cl->block_bytes / sizeof(float);
    double *ref = kv_malloc((size_t)tb->b.n_tokens * nh * hd * sizeof *ref);
    int max_ctx = 0;
    for (int s = 0; s < c->n_seqs; s++)
        max_ctx = tb->seq_len[s] > max_ctx ? tb->seq_len[s] : max_ctx;
    double *sc = kv_malloc((size_t)max_ctx * sizeof *sc);
    float scale = c->scale > 0 ? c->scale : 1.0f / sqrtf((float)hd);
    for (int s = 0; s < c->n_seqs; s++)
        for (int t = tb->seq_start[s]; t < tb->seq_start[s + 1]; t++)
            for (int h = 0; h < nh; h++) {
                int pos = tb->positions[t], kh = h / G;
                int lo = c->window > 0 && pos + 1 > c->window ? pos + 1 - c->window : 0;
                const float *qv = q + (size_t)t * q_stride + h * hd;
                const int32_t *bt = tb->block_table + (size_t)s * tb->b.max_blocks;
                double mx = -INFINITY, sum = 0;
                for (int j = lo; j <= pos; j++) {
                    const float *k = pool32 + (size_t)bt[j / c->block_size] * block_elems +
                                     layout_index(cl, layer, 0, kh, j % c->block_size);
                    double dot = 0;
                    for (int d = 0; d < hd; d++) dot += (double)qv[d] * k[d];
                    sc[j] = dot * scale;
                    if (c->softcap > 0) sc[j] = c->softcap * tanh(sc[j] / c->softcap);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = lo; j <= pos; j++) sum += (sc[j] = exp(sc[j] - mx));
                double *o = ref + ((size_t)t * nh + h) * hd;
                for (int d = 0; d < hd; d++) o[d] = 0;
                for (int j = lo; j <= pos; j++) {
                    const float *v = pool32 + (size_t)bt[j / c->block_size] * block_elems +
                                     layout_index(cl, layer, 1, kh, j % c->block_size);
                    double pj = sc[j] / sum;
                    for (int d = 0; d < hd; d++) o[d] += pj * v[d];
                }
            }
    free(sc);
    return ref;
}

/* One attention case over a bf16 pool or (fp8) an e4m3 pool with per-layer K/V scales, on every
 * attention path the device has, same tolerances on each: the double reference and the CPU
 * backend's result (over the same pool: f32 copy of the bf16 one, the e4m3 one as is) are
 * computed once and each path's output is checked against both. */
static void test_attention(backend *be, backend *cpu, rng *r, const attn_case *c, bool fp8) {
    static const float scales[4] = {1.0f, 1.0f, 0.5f, 1.5f};
    const size_t esz = fp8 ? 1 : 2;
    backend_kv_layout l = {.n_layers = 2,
                           .n_kv_heads = c->n_kv_heads,
                           .head_dim = c->head_dim,
                           .block_size = c->block_size,
                           .dtype = fp8 ? KV_DTYPE_F8_E4M3 : KV_DTYPE_BF16,
                           .kv_scales = fp8 ? scales : NULL};
    l.block_bytes = layout_block_bytes(&l) / 2 * esz;
    int n_blocks = 7; /* spare blocks nobody owns */
    for (int s = 0; s < c->n_seqs; s++)
        n_blocks += (c->prefix[s] + c->n_new[s] + c->block_size - 1) / c->block_size;
    test_batch tb;
    batch_make(&tb, r, c->n_seqs, c->prefix, c->n_new, c->block_size, n_blocks);
    const int layer = 1, hd = c->head_dim, nh = c->n_heads;
    const int q_stride = (nh + 2 * c->n_kv_heads) * hd; /* q inside a fused qkv row */
    /* the pool as stored (bf16 values in [-1, 1] or e4m3 in [-1.5, 1.5]) and dequantized */
    const size_t pool_n = l.block_bytes / esz * n_blocks, kv_elems = pool_n / n_blocks / 4;
    backend_kv_layout cl = layout_f32(&l);
    cl.kv_scales = NULL;
    uint8_t *pool = kv_malloc(pool_n * esz);
    float *pool32 = kv_malloc(pool_n * sizeof *pool32);
    for (size_t i = 0; i < pool_n; i++) {
        if (fp8) {
            pool[i] = kv_f32_to_e4m3(rng_bf16(r, 1.5f));
            pool32[i] = kv_e4m3_to_f32(pool[i]) * scales[i / kv_elems % 4];
        } else {
            uint16_t v = kv_f32_to_bf16(rng_bf16(r, 1.0f));
            memcpy(pool + 2 * i, &v, 2);
            pool32[i] = kv_bf16_to_f32(v);
        }
    }
    int nt = tb.b.n_tokens;
    float *q = rand_vec(r, (size_t)nt * q_stride, 3.0f); /* 3x: peakier softmax than uniform */
    size_t out_n = (size_t)nt * nh * hd;
    float scale = c->scale > 0 ? c->scale : 1.0f / sqrtf((float)hd);
    backend_attn_params ap = {.scale = scale, .softcap = c->softcap, .window = c->window};
    double *ref = attn_reference(c, &tb, &cl, pool32, layer, q, q_stride);

    cpu->ops->step_begin(cpu, &tb.b);
    void *cpool = cpu->ops->dev_alloc(cpu, fp8 ? pool_n : pool_n * 4);
    memcpy(cpool, fp8 ? (void *)pool : (void *)pool32, fp8 ? pool_n : pool_n * 4);
    void *cq = upload(cpu, q, (size_t)nt * q_stride), *cout = cpu->ops->dev_alloc(cpu, out_n * 4);
    cpu->ops->attention(cpu, cout, cq, q_stride, cpool, fp8 ? &l : &cl, layer, nh, &ap);
    float *cg = download(cpu, cout, out_n);

    be->ops->step_begin(be, &tb.b);
    void *dpool = be->ops->dev_alloc(be, pool_n * esz);
    be->ops->to_dev(be, dpool, pool, pool_n * esz);
    void *dq = upload(be, q, (size_t)nt * q_stride);
    for (int pass = 0; pass < 2; pass++) {
        bool portable = pass == 1;
        if (!cuda_backend_set_attn_path(be, portable)) continue;
        char name[128];
        snprintf(name, sizeof name, "%s[%s] %s", fp8 ? "fp8 " : "",
                 portable ? "portable" : "hopper", c->name);
        void *dout = poisoned(be, out_n);
        be->ops->attention(be, dout, dq, q_stride, dpool, &l, layer, nh, &ap);
        float *got = download(be, dout, out_n);
        /* bf16 output (2^-9 relative) and bf16 probabilities in the P V product: rtol 2e-2;
         * atol 2e-3 against values of V in [-1, 1], scaled to 3e-3 for e4m3 V up to 1.5 * 1.5 */
        double atol = fp8 ? 3e-3 : 2e-3;
        check(name, got, ref, out_n, atol, 2e-2);
        check_cpu(name, got, cg, out_n, atol, 2e-2);
        be->ops->dev_free(be, dout);
        free(got);
    }
    cpu->ops->dev_free(cpu, cpool), cpu->ops->dev_free(cpu, cq), cpu->ops->dev_free(cpu, cout);
    be->ops->dev_free(be, dpool), be->ops->dev_free(be, dq);
    free(pool), free(pool32), free(q), free(ref), free(cg);
    batch_free(&tb);
}

/* FP8 weights (weight_upload_fp8: e4m3 bytes, one f32 scale per row; every byte value but NaN,
 * subnormals included): the GEMV kernel (n = 1, or n <= 8 when k % 64), the mma.sync kernel
 * (2 <= n <= 64, k % 64 == 0; split k or not, rows past m) and the dequantize-then-bf16-GEMM path
 * (larger n) against a double reference of the dequantized weights and the CPU backend's matmul
 * over them (f32), at the bf16 matmul's budget: the GEMV and the mma kernel multiply the exact
 * e4m3 values and apply the scale in f32; the third path rounds the dequantized weight to bf16
 * (2^-9 relative per element, averaging out over k). */
static void test_matmul_fp8(backend *be, backend *cpu, rng *r, int n, int k, int m, bool bias) {
    float *x = rand_vec(r, (size_t)n * k, 1.0f), *b = rand_vec(r, (size_t)m, 4.0f);
    uint8_t *q = kv_malloc((size_t)m * k);
    float *sc = kv_malloc((size_t)m * sizeof *sc), *w = kv_malloc((size_t)m * k * sizeof *w);
    for (int j = 0; j < m; j++) {
        sc[j] = (0.5f + (float)(rng_next(r) % 1000) / 1000.0f) / 448.0f;
        for (int l = 0; l < k; l++) {
            uint8_t v = (uint8_t)(rng_next(r) & 0xff);
            if ((v & 0x7f) == 0x7f) v = 0x00; /* no NaN */
            q[(size_t)j * k + l] = v;
            w[(size_t)j * k + l] = kv_e4m3_to_f32(v) * sc[j];
        }
    }
    void *dx = upload(be, x, (size_t)n * k);
    void *dw = be->ops->weight_upload_fp8(be, q, sc, (size_t)m, (size_t)k);
    void *db = bias ? be->ops->weight_upload(be, b, KV_DTYPE_F32, (size_t)m) : NULL;
    void *dout = poisoned(be, (size_t)n * m);
    be->ops->matmul(be, dout, dx, dw, db, n, k, m);
    float *got = download(be, dout, (size_t)n * m);
    double *ref = kv_malloc((size_t)n * m * sizeof *ref), rms = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            double s = bias ? b[j] : 0;
            for (int l = 0; l < k; l++) s += (double)x[(size_t)i * k + l] * w[(size_t)j * k + l];
            ref[(size_t)i * m + j] = s;
            rms += s * s;
        }
    rms = sqrt(rms / ((double)n * m));
    char name[64];
    snprintf(name, sizeof name, "matmul fp8 n=%d k=%d m=%d%s", n, k, m, bias ? " +bias" : "");
    /* the bf16 path (n > 64, or n > 8 with k % 64) rounds each dequantized weight to bf16:
     * 2^-9/sqrt(3) relative per product, which does not cancel in the sum; the H200 measured
     * rel-L2 2.3e-3 there (1.7e-3 for bf16 weights, exact in the reference) and a worst element
     * 7.2e-3 * rms from zero, so 1.2e-2 * rms (5 sigma of that error) near zero; the other two
     * keep the bf16 matmul's 2e-3 */
    bool rounded = n > 64 || (n > 8 && k % 64 != 0);
    double atol = (rounded ? 1.2e-2 : 2e-3) * rms;
    check(name, got, ref, (size_t)n * m, atol, 1e-2);
    void *cx = upload(cpu, x, (size_t)n * k), *cw = upload_w(cpu, w, (size_t)m * k);
    void *cb = bias ? upload_w(cpu, b, (size_t)m) : NULL;
    void *cout = cpu->ops->dev_alloc(cpu, (size_t)n * m * 4);
    cpu->ops->matmul(cpu, cout, cx, cw, cb, n, k, m);
    float *cg = download(cpu, cout, (size_t)n * m);
    check_cpu(name, got, cg, (size_t)n * m, atol, 1e-2);
    cpu->ops->dev_free(cpu, cx), cpu->ops->dev_free(cpu, cw), cpu->ops->dev_free(cpu, cout);
    if (cb) cpu->ops->dev_free(cpu, cb);
    free(cg);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, dw), be->ops->dev_free(be, dout);
    if (db) be->ops->dev_free(be, db);
    free(x), free(w), free(b), free(q), free(sc), free(got), free(ref);
}

/* ---------------------------------------------------------------------------------------- */
/* FP8 (e4m3) KV pools: kv_write must store exactly the CPU backend's bytes, e4m3(x / scale)
 * rounded to nearest even and saturated at +-448 (the K scale 1/600 saturates a quarter of the
 * values); attention over random e4m3 pools with per-layer scales (0.5 for K, 1.5 for V: the
 * dequantized values are exact in bf16) is held to the bf16 attention's budget (the only
 * rounding is bf16 probabilities and output) against a double reference of the dequantized
 * pool and against the CPU backend on the same bytes. */

static void test_kv_write_fp8(backend *be, backend *cpu, rng *r, int n_kv, int hd, int block_size) {
    const float scales[6] = {1.0f, 1.0f, 1.0f / 600.0f, 1.0f, 1.0f, 1.0f};
    backend_kv_layout l = {.n_layers = 3,
                           .n_kv_heads = n_kv,
                           .head_dim = hd,
                           .block_size = block_size,
                           .dtype = KV_DTYPE_F8_E4M3,
                           .kv_scales = scales};
    l.block_bytes = (size_t)3 * 2 * n_kv * block_size * hd;
    const int n_blocks = 64, layer = 1, stride = (4 + 2) * n_kv * hd;
    int prefix[3] = {0, 40, 7}, n_new[3] = {50, 1, 20};
    test_batch tb;
    batch_make(&tb, r, 3, prefix, n_new, block_size, n_blocks);
    be->ops->step_begin(be, &tb.b);
    cpu->ops->step_begin(cpu, &tb.b);
    size_t pool_n = l.block_bytes * n_blocks;
    uint8_t *pool = kv_malloc(pool_n);
    for (size_t i = 0; i < pool_n; i++) pool[i] = (uint8_t)(rng_next(r) & 0x77); /* finite */
    void *dpool = be->ops->dev_alloc(be, pool_n);
    be->ops->to_dev(be, dpool, pool, pool_n);
    size_t qn = (size_t)tb.b.n_tokens * stride;
    float *qkv = rand_vec(r, qn, 1.0f);
    void *dqkv = upload(be, qkv, qn);
    const char *dk = (const char *)dqkv + (size_t)4 * n_kv * hd * 2;
    be->ops->kv_write(be, dpool, &l, layer, dk, dk + (size_t)n_kv * hd * 2, stride);
    uint8_t *got = kv_malloc(pool_n);
    be->ops->sync(be);
    be->ops->to_host(be, got, dpool, pool_n);
    uint8_t *cpool = cpu->ops->dev_alloc(cpu, pool_n);
    memcpy(cpool, pool, pool_n);
    float *cqkv = upload(cpu, qkv, qn);
    const float *ck = cqkv + (size_t)4 * n_kv * hd;
    cpu->ops->kv_write(cpu, cpool, &l, layer, ck, ck + (size_t)n_kv * hd, stride);
    size_t n_diff = 0, n_sat = 0, first = 0;
    for (size_t i = 0; i < pool_n; i++) {
        if (got[i] != cpool[i] && n_diff++ == 0) first = i;
        n_sat += (cpool[i] & 0x7f) == 0x7e && cpool[i] != pool[i];
    }
    bool ok = n_diff == 0 && n_sat > 0;
    if (!ok) n_failed++;
    printf("%s kv_write fp8 kv_heads=%d hd=%d bs=%d: %zu of %zu bytes differ from the cpu "
           "backend's (first at %zu), %zu saturated\n",
           ok ? "ok  " : "FAIL", n_kv, hd, block_size, n_diff, pool_n, first, n_sat);
    cpu->ops->dev_free(cpu, cpool), cpu->ops->dev_free(cpu, cqkv);
    be->ops->dev_free(be, dpool), be->ops->dev_free(be, dqkv);
    free(pool), free(qkv), free(got);
    batch_free(&tb);
}

/* act_download_f32 into pageable memory (pinned chunks, several of them) and into pinned memory
 * (host_alloc: one direct copy), against the uploaded bf16 values: exact. */
static void test_download(backend *be, rng *r) {
    const size_t sizes[3] = {5, ((size_t)1 << 20) + 3, ((size_t)5 << 20) + 1};
    for (int i = 0; i < 3; i++) {
        size_t n = sizes[i];
        float *x = rand_vec(r, n, 8.0f);
        void *d = upload(be, x, n);
        double *ref = kv_malloc(n * sizeof *ref);
        for (size_t j = 0; j < n; j++) ref[j] = x[j];
        float *pageable = kv_malloc(n * sizeof *pageable);
        float *pinned = be->ops->host_alloc(be, n * sizeof *pinned);
        KV_CHECK(pinned != NULL);
        for (size_t j = 0; j < n; j++) pageable[j] = pinned[j] = NAN;
        be->ops->act_download_f32(be, pageable, d, n);
        be->ops->act_download_f32(be, pinned, d, n);
        char name[64];
        snprintf(name, sizeof name, "act_download_f32 pageable n=%zu", n);
        check(name, pageable, ref, n, 0, 0);
        snprintf(name, sizeof name, "act_download_f32 pinned n=%zu", n);
        check(name, pinned, ref, n, 0, 0);
        be->ops->host_free(be, pinned);
        be->ops->dev_free(be, d);
        free(x), free(ref), free(pageable);
    }
}

/* One stage of test_copy_async: n copies into n distinct dst blocks (a random permutation) from
 * random src blocks, of uneven sizes under bb bytes, queued as one copy_async; the same copies
 * made by memcpy on the host mirrors. */
static void copy_stage(backend *be, rng *r, backend_stream s, int n, size_t bb, uint8_t *dst,
                       const uint8_t *src, uint8_t *mirror_dst, const uint8_t *mirror_src) {
    int *perm = kv_malloc((size_t)n * sizeof *perm);
    void **dsts = kv_malloc((size_t)n * sizeof *dsts);
    const void **srcs = kv_malloc((size_t)n * sizeof *srcs);
    size_t *sizes = kv_malloc((size_t)n * sizeof *sizes);
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_next(r) % (uint32_t)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < n; i++) {
        size_t to = (size_t)perm[i] * bb, from = (size_t)(rng_next(r) % (uint32_t)n) * bb;
        sizes[i] = bb - rng_next(r) % 4099;
        dsts[i] = dst + to, srcs[i] = src + from;
        memcpy(mirror_dst + to, mirror_src + from, sizes[i]);
    }
    be->ops->copy_async(be, s, n, dsts, srcs, sizes);
    free(perm), free(dsts), free(srcs), free(sizes);
}

/* copy_async with many non-adjacent copies of uneven sizes (n > 1: the batched path unless
 * KVSERVE_CUDA_MEMCPY_BATCH=0): pinned host to device on LOAD, then on STORE after an event,
 * device to device and device to pinned host; every byte of the host result must match the same
 * copies made on host mirrors (all buffers start from known random bytes). */
/* weight_upload_parts: three parts (one over a staging chunk) as bf16 and as f32 sources equal,
 * element for element, the values and weight_upload of their concatenation (exact: the values
 * are bf16-representable, so no rounding is involved). */
static void test_weight_upload_parts(backend *be, rng *r) {
    const size_t counts[3] = {1000, 37, (size_t)9 << 20};
    size_t n = counts[0] + counts[1] + counts[2];
    float *all = kv_malloc(n * sizeof *all);
    uint16_t *all16 = kv_malloc(n * sizeof *all16);
    for (size_t i = 0; i < n; i++) all[i] = rng_bf16(r, 2.0f), all16[i] = kv_f32_to_bf16(all[i]);
    for (int pass = 0; pass < 2; pass++) {
        kv_dtype dt = pass ? KV_DTYPE_F32 : KV_DTYPE_BF16;
        size_t es = kv_dtype_size(dt);
        const char *base = pass ? (const char *)all : (const char *)all16;
        const void *srcs[3] = {base, base + counts[0] * es, base + (counts[0] + counts[1]) * es};
        void *d_parts = be->ops->weight_upload_parts(be, 3, srcs, counts, dt);
        void *d_whole = be->ops->weight_upload(be, base, dt, n);
        float *got = download(be, d_parts, n), *whole = download(be, d_whole, n);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < n; i++)
            if (got[i] != all[i] || whole[i] != all[i]) {
                if (!bad) first = i;
                bad++;
            }
        if (bad) n_failed++;
        printf("%s weight_upload_parts %-24s n=%-9zu %zu elements differ (first at %zu: parts %g "
               "whole %g want %g)\n",
               bad ? "FAIL" : "ok  ", pass ? "f32 source" : "bf16 source", n, bad, first,
               got[first], whole[first], all[first]);
        free(got), free(whole);
        be->ops->dev_free(be, d_parts);
        be->ops->dev_free(be, d_whole);
    }
    free(all), free(all16);
}

static void test_copy_async(backend *be, rng *r, int n, size_t bb) {
    size_t bytes = (size_t)n * bb;
    uint8_t *in = be->ops->host_alloc(be, bytes), *out = be->ops->host_alloc(be, bytes);
    KV_CHECK(in != NULL && out != NULL);
    uint8_t *d0 = be->ops->dev_alloc(be, bytes), *d1 = be->ops->dev_alloc(be, bytes);
    uint8_t *m0 = kv_malloc(bytes), *m1 = kv_malloc(bytes), *mout = kv_malloc(bytes);
    for (size_t i = 0; i < bytes; i++) in[i] = (uint8_t)rng_next(r);
    for (size_t i = 0; i < bytes; i++) m0[i] = (uint8_t)rng_next(r);
    for (size_t i = 0; i < bytes; i++) m1[i] = (uint8_t)rng_next(r);
    for (size_t i = 0; i < bytes; i++) out[i] = mout[i] = (uint8_t)rng_next(r);
    be->ops->to_dev(be, d0, m0, bytes);
    be->ops->to_dev(be, d1, m1, bytes);

    copy_stage(be, r, BACKEND_STREAM_LOAD, n, bb, d0, in, m0, in);
    backend_event *loaded = be->ops->event_record(be, BACKEND_STREAM_LOAD);
    be->ops->event_wait(be, BACKEND_STREAM_STORE, loaded);
    copy_stage(be, r, BACKEND_STREAM_STORE, n, bb, d1, d0, m1, m0);
    copy_stage(be, r, BACKEND_STREAM_STORE, n, bb, out, d1, mout, m1);
    backend_event *stored = be->ops->event_record(be, BACKEND_STREAM_STORE);
    be->ops->event_sync(be, stored);

    size_t n_bad = 0, first = 0;
    for (size_t i = bytes; i-- > 0;)
        if (out[i] != mout[i]) n_bad++, first = i;
    char name[64];
    snprintf(name, sizeof name, "copy_async x%d h2d, d2d, d2h %zu KiB", n, bb >> 10);
    if (n_bad) n_failed++;
    printf("%s %-44s n=%-9zu %zu byte(s) differ", n_bad ? "FAIL" : "ok  ", name, bytes, n_bad);
    if (n_bad) printf(", first at %zu: got %u want %u", first, out[first], mout[first]);
    printf("\n");
    be->ops->event_free(be, loaded);
    be->ops->event_free(be, stored);
    be->ops->host_free(be, in), be->ops->host_free(be, out);
    be->ops->dev_free(be, d0), be->ops->dev_free(be, d1);
    free(m0), free(m1), free(mout);
}

int main(void) {
    if (cuda_backend_device_count() <= 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    kv_error err;
    backend *be = cuda_backend_create(&err);
    if (!be) {
        printf("SKIP: %s\n", err.msg);
        return 77;
    }
    printf("%s\n", be->desc);
    backend *cpu = cpu_backend_create(0);
    rng r = {0x9e3779b97f4a7c15ull};

    test_download(be, &r);
    test_weight_upload_parts(be, &r);
    test_copy_async(be, &r, 512, (size_t)64 << 10);
    test_copy_async(be, &r, 2, (size_t)2 << 20);
    test_embed_gather(be, cpu, &r, 4096);
    test_embed_gather(be, cpu, &r, 100);
    test_rmsnorm(be, cpu, &r, 37, 4096);
    test_rmsnorm(be, cpu, &r, 5, 100);
    test_add_swiglu(be, cpu, &r, 37, 14336);
    test_add_swiglu(be, cpu, &r, 3, 101);
    test_rope(be, cpu, &r, 128, 1.0f);
    test_rope(be, cpu, &r, 96, 1.19f);
    test_family_ops(be, cpu, &r, 37, 16, 128, 6912);
    test_family_ops(be, cpu, &r, 5, 3, 24, 101);
    test_kv_write(be, cpu, &r, 8, 128, 16);
    test_kv_write(be, cpu, &r, 4, 8, 16);
    /* n <= 8 with k % 8 == 0 take the GEMV kernel (n = 8 only while n * k * 2 <= 64 KiB), the
     * rest cuBLASLt */
    test_matmul(be, cpu, &r, 1, 4096, 6144, false);
    test_matmul(be, cpu, &r, 1, 14336, 4096, false);
    test_matmul(be, cpu, &r, 3, 4096, 1000, true);
    test_matmul(be, cpu, &r, 8, 4096, 999, false);
    test_matmul(be, cpu, &r, 8, 14336, 512, false);
    test_matmul(be, cpu, &r, 37, 4096, 1024, false);
    test_matmul(be, cpu, &r, 300, 896, 1152, true);
    test_matmul(be, cpu, &r, 5, 100, 77, true);

    /* decode: many sequences, contexts 1..32K around block and tile edges, GQA 4 */
    static const int dec_prefix[] = {0, 1, 14, 15, 16, 62, 63, 64, 499, 1000, 4096, 32767};
    static const int dec_new[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    /* mixed step: prefills from 0, chunks over cached prefixes, decodes; GQA 8 */
    static const int mix_prefix[] = {0, 1000, 5, 8000, 0, 130};
    static const int mix_new[] = {300, 77, 1, 40, 1, 17};
    /* GQA 1, head dim 64, block 32 */
    static const int g1_prefix[] = {0, 3000, 33};
    static const int g1_new[] = {200, 1, 64};
    /* GQA 7 (Qwen2-0.5B shape) */
    static const int g7_prefix[] = {0, 100, 2048};
    static const int g7_new[] = {130, 1, 9};
    /* head dim 8 (stories260K shape): the generic kernel */
    static const int hd8_prefix[] = {0, 50};
    static const int hd8_new[] = {20, 1};
    /* a few new tokens per sequence (decode tiles of 2-4 tokens), crossing split boundaries */
    static const int spec8_prefix[] = {4095, 127, 1000, 63, 8191};
    static const int spec8_new[] = {2, 2, 1, 2, 2};
    static const int spec4_prefix[] = {200, 4094, 0};
    static const int spec4_new[] = {3, 4, 4};
    /* GQA 16: one token fills a decode tile; prefill tiles of 8 tokens */
    static const int g16_prefix[] = {100, 3000, 50};
    static const int g16_new[] = {1, 1, 20};
    /* prefill-sized tiles at head dim 128 (the kernels the two paths differ in): a prompt from
     * 0 and a chunk over a long cached prefix, split across SMs */
    static const int pre_prefix[] = {0, 2000};
    static const int pre_new[] = {700, 200};
    /* the Gemma 2/3 fixtures' prompts (5, 37, 70 tokens from 0) and a decode step after them */
    static const int gem_prefix[] = {0, 0, 0}, gem_new[] = {5, 37, 70};
    static const int gemd_prefix[] = {20, 52, 85}, gemd_new[] = {1, 1, 1};
    int n64 = 64, dec64_prefix[64], dec64_new[64];
    for (int i = 0; i < n64; i++) dec64_prefix[i] = (int)(rng_next(&r) % 2048), dec64_new[i] = 1;
    const attn_case cases[] = {
        {"attention decode x12 GQA4 hd128 ctx 1..32768", 32, 8, 128, 16, 12, dec_prefix, dec_new, 0,
         0.0f, 0.0f},
        {"attention decode x64 GQA4 hd128 ctx<=2048", 32, 8, 128, 16, n64, dec64_prefix, dec64_new,
         0, 0.0f, 0.0f},
        {"attention mixed prefill/chunk/decode GQA8", 32, 4, 128, 16, 6, mix_prefix, mix_new, 0,
         0.0f, 0.0f},
        {"attention GQA1 hd64 bs32", 8, 8, 64, 32, 3, g1_prefix, g1_new, 0, 0.0f, 0.0f},
        {"attention GQA7 hd64", 14, 2, 64, 16, 3, g7_prefix, g7_new, 0, 0.0f, 0.0f},
        {"attention generic hd8 GQA2", 8, 4, 8, 16, 2, hd8_prefix, hd8_new, 0, 0.0f, 0.0f},
        {"attention 2-token steps GQA8 split edges", 32, 4, 128, 16, 5, spec8_prefix, spec8_new, 0,
         0.0f, 0.0f},
        {"attention 3-4-token steps GQA4", 32, 8, 128, 16, 3, spec4_prefix, spec4_new, 0, 0.0f,
         0.0f},
        {"attention GQA16 hd128", 32, 2, 128, 16, 3, g16_prefix, g16_new, 0, 0.0f, 0.0f},
        /* issue 17: sliding windows (Mistral hd128, Gemma hd256 with query_pre_attn_scalar),
         * soft-capped scores (Gemma 2), on the mixed and decode steps */
        {"attention window 24 mixed GQA8 hd128", 32, 4, 128, 16, 6, mix_prefix, mix_new, 24, 0.0f,
         0.0f},
        {"attention window 4096 decode GQA4 hd128", 32, 8, 128, 16, 12, dec_prefix, dec_new, 4096,
         0.0f, 0.0f},
        /* a window longer than every context is dropped: the tensor-core kernels serve it */
        {"attention window 40000 (unreached) decode hd128", 32, 8, 128, 16, 12, dec_prefix, dec_new,
         40000, 0.0f, 0.0f},
        {"attention window 8200 (unreached) mixed hd128", 32, 4, 128, 16, 6, mix_prefix, mix_new,
         8200, 0.0f, 0.0f},
        {"attention window 33 softcap 50 hd256 GQA2", 8, 4, 256, 16, 3, g1_prefix, g1_new, 33,
         50.0f, 0.0625f},
        {"attention softcap 5 hd64 GQA7 scale 0.3", 14, 2, 64, 16, 3, g7_prefix, g7_new, 0, 5.0f,
         0.3f},
        /* the Gemma 2/3 fixtures' attention: head dim 32 (the generic kernel), GQA2, window 24,
         * query_pre_attn_scalar 24 (scale 24^-0.5, not hd^-0.5), Gemma 2's soft cap 50 */
        {"attention window 24 scale 0.204 mixed GQA2 hd32", 4, 2, 32, 16, 6, mix_prefix, mix_new,
         24, 0.0f, 0.20412415f},
        {"attention window 24 scale 0.204 decode GQA2 hd32", 4, 2, 32, 16, 12, dec_prefix, dec_new,
         24, 0.0f, 0.20412415f},
        {"attention window 24 scale 0.204 gemma prompts hd32", 4, 2, 32, 16, 3, gem_prefix, gem_new,
         24, 0.0f, 0.20412415f},
        {"attention window 24 scale 0.204 gemma decode hd32", 4, 2, 32, 16, 3, gemd_prefix,
         gemd_new, 24, 0.0f, 0.20412415f},
        {"attention window 24 softcap 50 scale 0.204 gemma prompts hd32", 4, 2, 32, 16, 3,
         gem_prefix, gem_new, 24, 50.0f, 0.20412415f},
        {"attention global scale 0.204 gemma prompts hd32", 4, 2, 32, 16, 3, gem_prefix, gem_new, 0,
         0.0f, 0.20412415f},
        {"attention prefill 700 + chunk 200 GQA4", 32, 8, 128, 16, 2, pre_prefix, pre_new, 0, 0.0f,
         0.0f},
    };
    /* every case on both attention paths where the device has both (the Hopper one needs sm_90
     * and the 90a target), whatever KVSERVE_CUDA_PORTABLE picked: same tolerances; each over a
     * bf16 pool and over an e4m3 pool (decode, wgmma or mma prefill by head_dim, generic kernels)
     */
    bool portable_first = cuda_backend_attn_portable(be);
    if (!cuda_backend_set_attn_path(be, false))
        printf("-- attention, hopper path: not on this device (%s)\n", be->desc);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_attention(be, cpu, &r, &cases[i], false);
        test_attention(be, cpu, &r, &cases[i], true);
    }
    KV_CHECK(cuda_backend_set_attn_path(be, portable_first));
    /* kv_write into e4m3 pools, vectorized and scalar; FP8 weight matmuls */
    test_kv_write_fp8(be, cpu, &r, 8, 128, 16);
    test_kv_write_fp8(be, cpu, &r, 4, 8, 16);
    test_kv_write_fp8(be, cpu, &r, 2, 6, 16);
    test_matmul_fp8(be, cpu, &r, 1, 4096, 6144, false);
    test_matmul_fp8(be, cpu, &r, 3, 4096, 1000, true);
    test_matmul_fp8(be, cpu, &r, 8, 14336, 512, false);
    test_matmul_fp8(be, cpu, &r, 37, 4096, 1024, true);
    test_matmul_fp8(be, cpu, &r, 300, 896, 1152, false);
    test_matmul_fp8(be, cpu, &r, 2, 4096, 4096, false);   /* mma: 8 k-splits */
    test_matmul_fp8(be, cpu, &r, 64, 4096, 4096, true);   /* 4 token fragments, split */
    test_matmul_fp8(be, cpu, &r, 17, 1024, 28672, false); /* no split; 2 fragments */
    test_matmul_fp8(be, cpu, &r, 50, 960, 131, true);     /* 5 splits of 3 chunks, rows past m */
    test_matmul_fp8(be, cpu, &r, 20, 1040, 192, false);   /* k % 64: the bf16 path */
    test_matmul_fp8(be, cpu, &r, 5, 1040, 256, true);     /* k % 64: the GEMV */

    backend_destroy(cpu);
    be->ops->destroy(be);
    printf("%s: %d check(s) failed\n", n_failed ? "FAIL" : "PASS", n_failed);
    return n_failed ? 1 : 0;
}
