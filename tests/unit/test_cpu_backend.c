/* Unit tests for model/cpu: every forward op against a plain reference written here (double
 * precision, no paging, no threads), with |got - ref| <= atol + rtol * |ref| and the worst
 * difference printed with the share of its budget it used. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/cpu/cpu_backend.h"

/* --- helpers --- */

typedef struct rng {
    uint64_t s;
} rng;

static float rng_uniform(rng *r) { /* [-1, 1) */
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (float)((r->s >> 40) * (1.0 / (1 << 23)) - 1.0);
}

static float *random_array(rng *r, size_t n, float scale) {
    float *a = malloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = rng_uniform(r) * scale;
    return a;
}

/* Asserts |got - ref| <= atol + rtol |ref| everywhere; prints the worst element. */
static void check_close(const char *what, const float *got, const double *ref, size_t n,
                        double atol, double rtol) {
    double worst_share = 0, worst_diff = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)got[i] - ref[i]);
        double budget = atol + rtol * fabs(ref[i]);
        double share = diff == 0 ? 0 : diff / budget; /* budget 0: exact match wanted */
        if (!(share <= worst_share)) {                /* NaN counts as worst */
            worst_share = share;
            worst_diff = diff;
            worst_i = i;
        }
    }
    printf("%-28s n=%-7zu worst |diff| %.3g at %zu (got %.7g ref %.7g): %.1f%% of atol %g + "
           "rtol %g|ref|\n",
           what, n, worst_diff, worst_i, got[worst_i], ref[worst_i], 100 * worst_share, atol, rtol);
    fflush(stdout);
    ck_assert_msg(worst_share <= 1.0, "%s: element %zu got %.9g ref %.9g", what, worst_i,
                  got[worst_i], ref[worst_i]);
}

static float *upload(backend *be, const float *host, size_t n) {
    return be->ops->act_upload_f32(be, host, n);
}

static float *download(backend *be, const void *dev, size_t n) {
    float *h = malloc(n * sizeof *h);
    be->ops->act_download_f32(be, h, dev, n);
    return h;
}

/* A batch of one sequence of n new tokens at positions [pos0, pos0 + n), sequential blocks. */
typedef struct simple_batch {
    int32_t tokens[64], positions[64], seq_start[2], seq_len[1], block_table[64], out_rows[64];
    backend_batch b;
} simple_batch;

static void simple_batch_init(simple_batch *sb, int n, int pos0) {
    for (int i = 0; i < n; i++) {
        sb->tokens[i] = i;
        sb->positions[i] = pos0 + i;
        sb->out_rows[i] = i;
    }
    for (int i = 0; i < 64; i++) sb->block_table[i] = i;
    sb->seq_start[0] = 0;
    sb->seq_start[1] = n;
    sb->seq_len[0] = pos0 + n;
    sb->b = (backend_batch){.n_tokens = n,
                            .n_seqs = 1,
                            .tokens = sb->tokens,
                            .positions = sb->positions,
                            .seq_start = sb->seq_start,
                            .seq_len = sb->seq_len,
                            .block_table = sb->block_table,
                            .max_blocks = 64,
                            .n_out = n,
                            .out_rows = sb->out_rows};
}

/* --- matmul --- */

/* f32 dot products of k terms with inputs in [-1, 1] and weights scaled by 1/sqrt(k): the error
 * of any summation order grows like sqrt(k) * 2^-24 * sum|x w| ~ 1e-5 at k = 2048, so
 * atol = rtol = 1e-4 leaves a wide margin while catching any wrong element (errors of ~0.1). */
static void check_matmul(backend *be, int n, int k, int m, bool with_bias, const char *what) {
    rng r = {.s = 0x9e3779b97f4a7c15ull ^ (uint64_t)(n * 131 + k * 7 + m)};
    float *x = random_array(&r, (size_t)n * k, 1.0f);
    float *w = random_array(&r, (size_t)m * k, 1.0f / sqrtf((float)k));
    float *bias = random_array(&r, (size_t)m, 1.0f);
    double *ref = malloc((size_t)n * m * sizeof *ref);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            double s = with_bias ? bias[j] : 0;
            for (int p = 0; p < k; p++) s += (double)x[(size_t)i * k + p] * w[(size_t)j * k + p];
            ref[(size_t)i * m + j] = s;
        }
    float *dx = upload(be, x, (size_t)n * k);
    float *dw = be->ops->weight_upload(be, w, KV_DTYPE_F32, (size_t)m * k);
    float *db = with_bias ? be->ops->weight_upload(be, bias, KV_DTYPE_F32, (size_t)m) : NULL;
    float *dout = be->ops->dev_alloc(be, (size_t)n * m * sizeof(float));
    be->ops->matmul(be, dout, dx, dw, db, n, k, m);
    float *out = download(be, dout, (size_t)n * m);
    check_close(what, out, ref, (size_t)n * m, 1e-4, 1e-4);
    be->ops->dev_free(be, dx);
    be->ops->dev_free(be, dw);
    if (db) be->ops->dev_free(be, db);
    be->ops->dev_free(be, dout);
    free(x), free(w), free(bias), free(ref), free(out);
}

/* Issue 20: a host allocation the machine cannot give is NULL (the host tier stays smaller than
 * asked), not an abort after ready. */
START_TEST(host_alloc_failure_is_null_not_an_abort) {
    backend *be = cpu_backend_create(1);
    void *p = be->ops->host_alloc(be, SIZE_MAX / 2);
    ck_assert_ptr_null(p);
    p = be->ops->host_alloc(be, 4096);
    ck_assert_ptr_nonnull(p);
    be->ops->host_free(be, p);
    backend_destroy(be);
}
END_TEST

START_TEST(matmul_matches_reference) {
    backend *be = cpu_backend_create(3);
    check_matmul(be, 1, 64, 64, false, "matmul 1x64x64");
    check_matmul(be, 7, 64, 172, true, "matmul 7x64x172 +bias");
    check_matmul(be, 5, 37, 13, true, "matmul 5x37x13 (odd k)");
    check_matmul(be, 8, 128, 500, true, "matmul 8x128x500 threaded");
    check_matmul(be, 1, 2048, 1024, true, "matmul 1x2048x1024 +bias");
    check_matmul(be, 33, 512, 300, false, "matmul 33x512x300");
    check_matmul(be, 64, 1024, 96, true, "matmul 64x1024x96 +bias");
    be->ops->destroy(be);
}
END_TEST

START_TEST(weight_upload_converts_half_types) {
    backend *be = cpu_backend_create(1);
    float vals[5] = {1.0f, -2.5f, 0.333251953125f, 65504.0f, -0.0f};
    uint16_t bf[5], hf[5];
    for (int i = 0; i < 5; i++) bf[i] = kv_f32_to_bf16(vals[i]), hf[i] = kv_f32_to_f16(vals[i]);
    float *dbf = be->ops->weight_upload(be, bf, KV_DTYPE_BF16, 5);
    float *dhf = be->ops->weight_upload(be, hf, KV_DTYPE_F16, 5);
    float *gbf = download(be, dbf, 5), *ghf = download(be, dhf, 5);
    for (int i = 0; i < 5; i++) {
        ck_assert_float_eq(gbf[i], kv_bf16_to_f32(bf[i]));
        ck_assert_float_eq(ghf[i], vals[i]); /* every value above is exact in f16 */
    }
    be->ops->dev_free(be, dbf), be->ops->dev_free(be, dhf);
    free(gbf), free(ghf);
    be->ops->destroy(be);
}
END_TEST

/* --- row ops --- */

START_TEST(rmsnorm_add_swiglu_embed_gather_match_reference) {
    backend *be = cpu_backend_create(2);
    rng r = {.s = 12345};
    const int n = 40, dim = 1000, ff = 700, vocab = 50;
    const float eps = 1e-5f;
    float *x = random_array(&r, (size_t)n * dim, 3.0f);
    float *delta = random_array(&r, (size_t)n * dim, 1.0f);
    float *w = random_array(&r, dim, 2.0f);
    float *gu = random_array(&r, (size_t)n * 2 * ff, 6.0f);
    float *table = random_array(&r, (size_t)vocab * dim, 1.0f);
    double *ref = malloc((size_t)n * 2 * ff * sizeof *ref);
    simple_batch sb;
    simple_batch_init(&sb, n, 0);
    for (int t = 0; t < n; t++) sb.tokens[t] = (t * 7) % vocab;
    sb.b.n_out = 3;
    sb.out_rows[0] = 39, sb.out_rows[1] = 0, sb.out_rows[2] = 17;
    be->ops->step_begin(be, &sb.b);

    float *dx = upload(be, x, (size_t)n * dim), *dd = upload(be, delta, (size_t)n * dim);
    float *dw = be->ops->weight_upload(be, w, KV_DTYPE_F32, dim);
    float *dout = be->ops->dev_alloc(be, (size_t)n * 2 * ff * sizeof(float));

    /* rmsnorm: x / sqrt(mean(x^2) + eps) * w */
    be->ops->rmsnorm(be, dout, dx, dw, n, dim, eps);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)x[i * dim + j] * x[i * dim + j];
        for (int j = 0; j < dim; j++)
            ref[i * dim + j] = x[i * dim + j] / sqrt(ss / dim + eps) * w[j];
    }
    float *got = download(be, dout, (size_t)n * dim);
    check_close("rmsnorm", got, ref, (size_t)n * dim, 1e-6, 1e-6);
    free(got);

    /* add_rmsnorm: x += delta, out = rmsnorm(x) */
    be->ops->add_rmsnorm(be, dout, dx, dd, dw, n, dim, eps);
    double *xsum = malloc((size_t)n * dim * sizeof *xsum);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int j = 0; j < dim; j++) {
            xsum[i * dim + j] = (double)x[i * dim + j] + delta[i * dim + j];
            ss += xsum[i * dim + j] * xsum[i * dim + j];
        }
        for (int j = 0; j < dim; j++)
            ref[i * dim + j] = xsum[i * dim + j] / sqrt(ss / dim + eps) * w[j];
    }
    got = download(be, dout, (size_t)n * dim);
    check_close("add_rmsnorm (norm)", got, ref, (size_t)n * dim, 1e-6, 1e-6);
    free(got);
    got = download(be, dx, (size_t)n * dim);
    check_close("add_rmsnorm (residual)", got, xsum, (size_t)n * dim, 0, 1e-7);
    free(got);

    /* add: x += delta once more */
    be->ops->add(be, dx, dd, (size_t)n * dim);
    for (size_t i = 0; i < (size_t)n * dim; i++) xsum[i] = (float)xsum[i] + (double)delta[i];
    got = download(be, dx, (size_t)n * dim);
    check_close("add", got, xsum, (size_t)n * dim, 0, 1e-7);
    free(got);

    /* swiglu: silu(gate) * up */
    float *dgu = upload(be, gu, (size_t)n * 2 * ff);
    be->ops->swiglu(be, dout, dgu, n, ff);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ff; j++) {
            double g = gu[(size_t)i * 2 * ff + j], u = gu[(size_t)i * 2 * ff + ff + j];
            ref[(size_t)i * ff + j] = g / (1 + exp(-g)) * u;
        }
    got = download(be, dout, (size_t)n * ff);
    check_close("swiglu", got, ref, (size_t)n * ff, 1e-6, 1e-6);
    free(got);

    /* embed: rows of the table at the batch's tokens (exact) */
    float *dtable = be->ops->weight_upload(be, table, KV_DTYPE_F32, (size_t)vocab * dim);
    be->ops->embed(be, dout, dtable, dim);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < dim; j++) ref[t * dim + j] = table[(size_t)sb.tokens[t] * dim + j];
    got = download(be, dout, (size_t)n * dim);
    check_close("embed", got, ref, (size_t)n * dim, 0, 0);
    free(got);

    /* gather_rows: rows out_rows of x (exact) */
    float *dg = be->ops->dev_alloc(be, 3 * dim * sizeof(float));
    be->ops->gather_rows(be, dg, dout, dim);
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < dim; j++)
            ref[k * dim + j] = table[(size_t)sb.tokens[sb.out_rows[k]] * dim + j];
    got = download(be, dg, 3 * dim);
    check_close("gather_rows", got, ref, 3 * (size_t)dim, 0, 0);
    free(got);

    void *devs[] = {dx, dd, dw, dout, dgu, dtable, dg};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++) be->ops->dev_free(be, devs[i]);
    free(x), free(delta), free(w), free(gu), free(table), free(ref), free(xsum);
    be->ops->destroy(be);
}
END_TEST

START_TEST(rope_matches_reference) {
    backend *be = cpu_backend_create(2);
    rng r = {.s = 777};
    const int n = 9, n_heads = 6, hd = 16, stride = n_heads * hd + 5, pos0 = 1000;
    float inv_freq[8];
    for (int i = 0; i < hd / 2; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / hd);
    float *x = random_array(&r, (size_t)n * stride, 2.0f);
    double *ref = malloc((size_t)n * stride * sizeof *ref);
    simple_batch sb;
    simple_batch_init(&sb, n, pos0);
    be->ops->step_begin(be, &sb.b);
    /* rotate-half: pairs (i, i + hd/2) turn by position * inv_freq[i]; the angle is the f32
     * product as in Hugging Face; the 5 trailing elements of each row stay untouched */
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < stride; j++) ref[t * stride + j] = x[t * stride + j];
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < hd / 2; i++) {
                double a = (double)((float)(pos0 + t) * inv_freq[i]);
                double x0 = x[t * stride + h * hd + i], x1 = x[t * stride + h * hd + i + hd / 2];
                ref[t * stride + h * hd + i] = x0 * cos(a) - x1 * sin(a);
                ref[t * stride + h * hd + i + hd / 2] = x1 * cos(a) + x0 * sin(a);
            }
    }
    float *dx = upload(be, x, (size_t)n * stride);
    float *dinv = upload(be, inv_freq, hd / 2);
    be->ops->rope(be, dx, stride, n_heads, hd, hd, dinv, 1.0f);
    float *got = download(be, dx, (size_t)n * stride);
    check_close("rope", got, ref, (size_t)n * stride, 1e-6, 1e-6);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, dinv);
    free(x), free(ref), free(got);
    be->ops->destroy(be);
}
END_TEST

/* Partial rotary (Phi-4-mini: 12 of 16 dims, pairs (i, i + 6)) with longrope's factor on cos and
 * sin: dims past rot_dim stay as they were. */
START_TEST(rope_partial_with_mscale_matches_reference) {
    backend *be = cpu_backend_create(2);
    rng r = {.s = 778};
    const int n = 5, n_heads = 3, hd = 16, rot = 12, stride = n_heads * hd, pos0 = 300;
    const float mscale = 1.19f;
    float inv_freq[6];
    for (int i = 0; i < rot / 2; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / rot);
    float *x = random_array(&r, (size_t)n * stride, 2.0f);
    double *ref = malloc((size_t)n * stride * sizeof *ref);
    simple_batch sb;
    simple_batch_init(&sb, n, pos0);
    be->ops->step_begin(be, &sb.b);
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < stride; j++) ref[t * stride + j] = x[t * stride + j];
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < rot / 2; i++) {
                double a = (double)((float)(pos0 + t) * inv_freq[i]);
                double c = cos(a) * mscale, sn = sin(a) * mscale;
                double x0 = x[t * stride + h * hd + i], x1 = x[t * stride + h * hd + i + rot / 2];
                ref[t * stride + h * hd + i] = x0 * c - x1 * sn;
                ref[t * stride + h * hd + i + rot / 2] = x1 * c + x0 * sn;
            }
    }
    float *dx = upload(be, x, (size_t)n * stride);
    float *dinv = upload(be, inv_freq, rot / 2);
    be->ops->rope(be, dx, stride, n_heads, hd, rot, dinv, mscale);
    float *got = download(be, dx, (size_t)n * stride);
    check_close("rope partial mscale", got, ref, (size_t)n * stride, 1e-6, 1e-6);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, dinv);
    free(x), free(ref), free(got);
    be->ops->destroy(be);
}
END_TEST

/* head_rmsnorm, geglu, scale, softcap against double references written out here. */
START_TEST(family_ops_match_reference) {
    backend *be = cpu_backend_create(2);
    rng r = {.s = 779};
    const int n = 7, n_heads = 3, hd = 24, stride = n_heads * hd + 9, ff = 40;
    float *x = random_array(&r, (size_t)n * stride, 2.0f), *w = random_array(&r, hd, 1.0f);
    double *ref = malloc((size_t)n * stride * 2 * ff * sizeof *ref);
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < stride; j++) ref[t * stride + j] = x[t * stride + j];
        for (int h = 0; h < n_heads; h++) {
            double ss = 0;
            for (int d = 0; d < hd; d++)
                ss += (double)x[t * stride + h * hd + d] * x[t * stride + h * hd + d];
            double inv = 1.0 / sqrt(ss / hd + 1e-6);
            for (int d = 0; d < hd; d++)
                ref[t * stride + h * hd + d] = x[t * stride + h * hd + d] * inv * w[d];
        }
    }
    float *dx = upload(be, x, (size_t)n * stride), *dw = upload(be, w, hd);
    be->ops->head_rmsnorm(be, dx, n, stride, n_heads, hd, dw, 1e-6f);
    float *got = download(be, dx, (size_t)n * stride);
    check_close("head_rmsnorm", got, ref, (size_t)n * stride, 1e-6, 1e-5);
    free(got);

    float *gu = random_array(&r, (size_t)n * 2 * ff, 3.0f);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < ff; j++) {
            double g = gu[i * 2 * ff + j], u = gu[i * 2 * ff + ff + j];
            ref[i * ff + j] = 0.5 * g * (1 + tanh(sqrt(2 / M_PI) * (g + 0.044715 * g * g * g))) * u;
        }
    float *dgu = upload(be, gu, (size_t)n * 2 * ff);
    float *dout = be->ops->dev_alloc(be, (size_t)n * ff * sizeof(float));
    be->ops->geglu(be, dout, dgu, n, ff);
    got = download(be, dout, (size_t)n * ff);
    check_close("geglu", got, ref, (size_t)n * ff, 1e-6, 1e-5);
    free(got);

    size_t m = (size_t)n * 2 * ff;
    for (size_t i = 0; i < m; i++) ref[i] = 20.0 * tanh(gu[i] * 7.5 / 20.0);
    be->ops->scale(be, dgu, m, 7.5f);
    be->ops->softcap(be, dgu, m, 20.0f);
    got = download(be, dgu, m);
    check_close("scale then softcap", got, ref, m, 1e-6, 1e-5);
    free(got);
    be->ops->dev_free(be, dx), be->ops->dev_free(be, dw), be->ops->dev_free(be, dgu);
    be->ops->dev_free(be, dout);
    free(x), free(w), free(gu), free(ref);
    be->ops->destroy(be);
}
END_TEST

/* --- paged KV: placement and attention --- */

/* Plain index of (block, layer, k|v, head, slot, d) in an f32 pool, written out independently of
 * backend_kv_offset: block = [layer][k|v][kv_head][slot][head_dim]. */
static size_t pool_index(const backend_kv_layout *l, int block, int layer, int kv, int head,
                         int slot, int d) {
    return (((((size_t)block * l->n_layers + layer) * 2 + kv) * l->n_kv_heads + head) *
                l->block_size +
            slot) *
               l->head_dim +
           d;
}

/* Three sequences with scattered blocks: seq 0 has 13 cached tokens and 4 new ones, seq 1 is a
 * fresh 6-token prefill, seq 2 decodes one token after 29 cached ones. Every layer of the pool is
 * filled; the test uses layer 1. */
typedef struct paged_case {
    backend_kv_layout l;
    int n_blocks, n_seqs, n_tokens, max_blocks;
    int32_t seq_len[3], n_new[3], seq_start[4];
    int32_t block_table[3 * 8];
    int32_t tokens[16], positions[16], out_rows[16];
    /* logical K/V: kv[s][pos][kv_head][d] for k and v */
    float *k_log[3], *v_log[3];
    backend_batch b;
} paged_case;

static void paged_case_init(paged_case *pc, rng *r, int n_kv_heads, int hd, int block_size) {
    memset(pc, 0, sizeof *pc);
    pc->l = (backend_kv_layout){.n_layers = 3,
                                .n_kv_heads = n_kv_heads,
                                .head_dim = hd,
                                .block_size = block_size,
                                .dtype = KV_DTYPE_F32};
    backend_kv_layout_finish(&pc->l);
    pc->n_seqs = 3, pc->max_blocks = 8, pc->n_blocks = 24;
    int lens[3] = {17, 6, 30}, news[3] = {4, 6, 1};
    /* a permutation of 0..23 so blocks of one sequence are never adjacent nor ordered */
    for (int i = 0; i < 3 * 8; i++) pc->block_table[i] = (i * 7 + 3) % 24;
    int t = 0;
    for (int s = 0; s < 3; s++) {
        pc->seq_len[s] = lens[s], pc->n_new[s] = news[s], pc->seq_start[s] = t;
        for (int i = 0; i < news[s]; i++, t++) {
            pc->positions[t] = lens[s] - news[s] + i;
            pc->out_rows[t] = t;
        }
        size_t n = (size_t)lens[s] * n_kv_heads * hd;
        pc->k_log[s] = random_array(r, n, 1.5f);
        pc->v_log[s] = random_array(r, n, 1.0f);
    }
    pc->seq_start[3] = pc->n_tokens = t;
    pc->b = (backend_batch){.n_tokens = t,
                            .n_seqs = 3,
                            .tokens = pc->tokens,
                            .positions = pc->positions,
                            .seq_start = pc->seq_start,
                            .seq_len = pc->seq_len,
                            .block_table = pc->block_table,
                            .max_blocks = 8,
                            .n_out = t,
                            .out_rows = pc->out_rows};
}

static void paged_case_free(paged_case *pc) {
    for (int s = 0; s < 3; s++) free(pc->k_log[s]), free(pc->v_log[s]);
}

/* Copies the cached (not new) positions of every sequence into the pool at layer. */
static void paged_case_fill_cached(const paged_case *pc, float *pool, int layer) {
    const backend_kv_layout *l = &pc->l;
    for (int s = 0; s < 3; s++)
        for (int p = 0; p < pc->seq_len[s] - pc->n_new[s]; p++)
            for (int h = 0; h < l->n_kv_heads; h++)
                for (int d = 0; d < l->head_dim; d++) {
                    int blk = pc->block_table[s * 8 + p / l->block_size];
                    size_t src = ((size_t)p * l->n_kv_heads + h) * l->head_dim + d;
                    pool[pool_index(l, blk, layer, 0, h, p % l->block_size, d)] = pc->k_log[s][src];
                    pool[pool_index(l, blk, layer, 1, h, p % l->block_size, d)] = pc->v_log[s][src];
                }
}

/* The new tokens' K and V rows as kv_write reads them: [t][row_stride], k at 0, v at kv_w + 3. */
static float *paged_case_new_rows(const paged_case *pc, int row_stride) {
    const backend_kv_layout *l = &pc->l;
    int kv_w = l->n_kv_heads * l->head_dim;
    float *rows = calloc((size_t)pc->n_tokens * row_stride, sizeof *rows);
    for (int s = 0; s < 3; s++)
        for (int t = pc->seq_start[s]; t < pc->seq_start[s + 1]; t++) {
            size_t src = (size_t)pc->positions[t] * kv_w;
            memcpy(rows + (size_t)t * row_stride, pc->k_log[s] + src, kv_w * sizeof(float));
            memcpy(rows + (size_t)t * row_stride + kv_w + 3, pc->v_log[s] + src,
                   kv_w * sizeof(float));
        }
    return rows;
}

START_TEST(kv_write_places_rows_per_layout) {
    backend *be = cpu_backend_create(1);
    rng r = {.s = 4242};
    paged_case pc;
    paged_case_init(&pc, &r, 2, 8, 4);
    size_t pool_elems = pc.l.block_bytes / sizeof(float) * pc.n_blocks;
    float *pool = be->ops->dev_alloc(be, pc.l.block_bytes * pc.n_blocks);
    for (size_t i = 0; i < pool_elems; i++) pool[i] = -999.0f; /* sentinel */
    int kv_w = 2 * 8, stride = 2 * kv_w + 3;
    float *rows = paged_case_new_rows(&pc, stride);
    float *drows = upload(be, rows, (size_t)pc.n_tokens * stride);
    be->ops->step_begin(be, &pc.b);
    be->ops->kv_write(be, pool, &pc.l, 2, drows, drows + kv_w + 3, stride);

    /* expected pool: sentinel everywhere except each new token's (block, slot) rows of layer 2 */
    double *ref = malloc(pool_elems * sizeof *ref);
    for (size_t i = 0; i < pool_elems; i++) ref[i] = -999.0;
    for (int s = 0; s < 3; s++)
        for (int t = pc.seq_start[s]; t < pc.seq_start[s + 1]; t++) {
            int p = pc.positions[t], blk = pc.block_table[s * 8 + p / 4];
            for (int h = 0; h < 2; h++)
                for (int d = 0; d < 8; d++) {
                    size_t src = ((size_t)p * 2 + h) * 8 + d;
                    ref[pool_index(&pc.l, blk, 2, 0, h, p % 4, d)] = pc.k_log[s][src];
                    ref[pool_index(&pc.l, blk, 2, 1, h, p % 4, d)] = pc.v_log[s][src];
                }
        }
    check_close("kv_write placement", pool, ref, pool_elems, 0, 0);
    /* backend_kv_offset agrees with the plain index */
    ck_assert_uint_eq(backend_kv_offset(&pc.l, 2, 1, 1, 3),
                      pool_index(&pc.l, 0, 2, 1, 1, 3, 0) * 4);
    ck_assert_uint_eq(pc.l.block_bytes, (size_t)3 * 2 * 2 * 4 * 8 * 4);
    be->ops->dev_free(be, pool), be->ops->dev_free(be, drows);
    free(rows), free(ref);
    paged_case_free(&pc);
    be->ops->destroy(be);
}
END_TEST

/* Reference attention from the logical (unpaged) K/V in double with a max-subtracted softmax. */
static void attention_reference(const paged_case *pc, const float *q, int q_stride, int n_heads,
                                const backend_attn_params *ap, double *out) {
    int hd = pc->l.head_dim, n_kv = pc->l.n_kv_heads;
    double *sc = malloc(64 * sizeof *sc);
    for (int s = 0; s < 3; s++)
        for (int t = pc->seq_start[s]; t < pc->seq_start[s + 1]; t++)
            for (int h = 0; h < n_heads; h++) {
                int kvh = h / (n_heads / n_kv), n_ctx = pc->positions[t] + 1;
                /* a window keeps the positions p with pos - window < p */
                int lo = ap->window > 0 && n_ctx > ap->window ? n_ctx - ap->window : 0;
                double mx = -INFINITY, sum = 0;
                for (int p = lo; p < n_ctx; p++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++)
                        d += (double)q[(size_t)t * q_stride + h * hd + i] *
                             pc->k_log[s][((size_t)p * n_kv + kvh) * hd + i];
                    sc[p] = d * ap->scale;
                    if (ap->softcap > 0) sc[p] = ap->softcap * tanh(sc[p] / ap->softcap);
                    if (sc[p] > mx) mx = sc[p];
                }
                for (int p = lo; p < n_ctx; p++) sum += sc[p] = exp(sc[p] - mx);
                for (int i = 0; i < hd; i++) {
                    double o = 0;
                    for (int p = lo; p < n_ctx; p++)
                        o += sc[p] * pc->v_log[s][((size_t)p * n_kv + kvh) * hd + i];
                    out[((size_t)t * n_heads + h) * hd + i] = o / sum;
                }
            }
    free(sc);
}

/* kv_write of the new tokens then attention, GQA with n_heads / n_kv_heads = group. */
static float *run_paged_attention(backend *be, paged_case *pc, const float *q, int q_stride,
                                  int n_heads, const backend_attn_params *ap) {
    float *pool = be->ops->dev_alloc(be, pc->l.block_bytes * pc->n_blocks);
    memset(pool, 0, pc->l.block_bytes * pc->n_blocks);
    paged_case_fill_cached(pc, pool, 1);
    int kv_w = pc->l.n_kv_heads * pc->l.head_dim, stride = 2 * kv_w + 3;
    float *rows = paged_case_new_rows(pc, stride);
    float *drows = upload(be, rows, (size_t)pc->n_tokens * stride);
    float *dq = upload(be, q, (size_t)pc->n_tokens * q_stride);
    float *dout = be->ops->dev_alloc(be, (size_t)pc->n_tokens * n_heads * pc->l.head_dim * 4);
    be->ops->step_begin(be, &pc->b);
    be->ops->kv_write(be, pool, &pc->l, 1, drows, drows + kv_w + 3, stride);
    be->ops->attention(be, dout, dq, q_stride, pool, &pc->l, 1, n_heads, ap);
    float *got = download(be, dout, (size_t)pc->n_tokens * n_heads * pc->l.head_dim);
    be->ops->dev_free(be, pool), be->ops->dev_free(be, drows);
    be->ops->dev_free(be, dq), be->ops->dev_free(be, dout);
    free(rows);
    return got;
}

/* f32 scores, exp and weighted sums over <= 30 positions of values <= 1.5: errors ~1e-6;
 * atol 1e-5 + rtol 1e-4 catches any wrong block, slot, head or mask (errors ~1e-1). */
static void check_attention(int n_threads, int n_heads, int n_kv_heads, int hd, int block_size,
                            backend_attn_params ap, const char *what) {
    backend *be = cpu_backend_create(n_threads);
    rng r = {.s = 99 + (uint64_t)n_heads * 1000 + (uint64_t)block_size};
    paged_case pc;
    paged_case_init(&pc, &r, n_kv_heads, hd, block_size);
    int q_stride = n_heads * hd + 2 * n_kv_heads * hd;
    float *q = random_array(&r, (size_t)pc.n_tokens * q_stride, 1.0f);
    double *ref = malloc((size_t)pc.n_tokens * n_heads * hd * sizeof *ref);
    attention_reference(&pc, q, q_stride, n_heads, &ap, ref);
    float *got = run_paged_attention(be, &pc, q, q_stride, n_heads, &ap);
    check_close(what, got, ref, (size_t)pc.n_tokens * n_heads * hd, 1e-5, 1e-4);
    free(q), free(ref), free(got);
    paged_case_free(&pc);
    be->ops->destroy(be);
}

START_TEST(attention_over_scattered_blocks_matches_reference) {
    check_attention(1, 8, 2, 64, 4, (backend_attn_params){.scale = 0.125f},
                    "attention gqa4 bs4 1thr");
    check_attention(3, 8, 2, 64, 4, (backend_attn_params){.scale = 0.125f},
                    "attention gqa4 bs4 3thr");
    check_attention(2, 4, 4, 32, 16, (backend_attn_params){.scale = 1.0f / sqrtf(32)},
                    "attention mha bs16");
    check_attention(2, 6, 1, 8, 5, (backend_attn_params){.scale = 3.0f}, "attention mqa bs5 sharp");
    /* sliding windows shorter than, across and longer than a block; soft-capped scores */
    check_attention(2, 8, 2, 64, 4, (backend_attn_params){.scale = 0.125f, .window = 3},
                    "attention window 3 bs4");
    check_attention(1, 4, 4, 32, 16, (backend_attn_params){.scale = 0.2f, .window = 17},
                    "attention window 17 bs16");
    check_attention(2, 6, 1, 8, 5,
                    (backend_attn_params){.scale = 3.0f, .softcap = 2.0f, .window = 7},
                    "attention softcap 2 window 7 bs5");
    check_attention(2, 6, 2, 8, 5, (backend_attn_params){.scale = 3.0f, .softcap = 5.0f},
                    "attention softcap 5");
}
END_TEST

START_TEST(threads_do_not_change_results) {
    /* the plain loop (products below the OpenBLAS cut-off) computes every output element on one
     * thread in a fixed order: bitwise equal for any thread count */
    rng r = {.s = 5};
    const int n = 8, k = 128, m = 512;
    float *x = random_array(&r, (size_t)n * k, 1.0f), *w = random_array(&r, (size_t)m * k, 0.1f);
    float *outs[2];
    for (int i = 0; i < 2; i++) {
        backend *be = cpu_backend_create(i == 0 ? 1 : 4);
        float *dx = upload(be, x, (size_t)n * k);
        float *dw = be->ops->weight_upload(be, w, KV_DTYPE_F32, (size_t)m * k);
        float *dout = be->ops->dev_alloc(be, (size_t)n * m * 4);
        be->ops->matmul(be, dout, dx, dw, NULL, n, k, m);
        outs[i] = download(be, dout, (size_t)n * m);
        be->ops->dev_free(be, dx), be->ops->dev_free(be, dw), be->ops->dev_free(be, dout);
        be->ops->destroy(be);
    }
    ck_assert_int_eq(memcmp(outs[0], outs[1], (size_t)n * m * 4), 0);
    free(outs[0]), free(outs[1]), free(x), free(w);
}
END_TEST

START_TEST(copies_and_events_complete_at_once) {
    backend *be = cpu_backend_create(1);
    char a[100], b[50], c[100] = {0}, d[50] = {0};
    for (int i = 0; i < 100; i++) a[i] = (char)i;
    for (int i = 0; i < 50; i++) b[i] = (char)(200 - i);
    void *dst[] = {c, d};
    const void *src[] = {a, b};
    size_t sizes[] = {100, 50};
    backend_event *e0 = be->ops->event_record(be, BACKEND_STREAM_LOAD);
    be->ops->copy_async(be, BACKEND_STREAM_LOAD, 2, dst, src, sizes);
    backend_event *e1 = be->ops->event_record(be, BACKEND_STREAM_LOAD);
    ck_assert(be->ops->event_done(be, e1));
    ck_assert_int_eq(memcmp(a, c, 100), 0);
    ck_assert_int_eq(memcmp(b, d, 50), 0);
    ck_assert(be->ops->event_elapsed(be, e0, e1) >= 0);
    be->ops->event_free(be, e0), be->ops->event_free(be, e1);
    void *h = be->ops->host_alloc(be, 1000);
    ck_assert_ptr_nonnull(h);
    ck_assert_uint_eq((uintptr_t)h % 64, 0);
    be->ops->host_free(be, h);
    ck_assert_uint_gt(be->ops->dev_free_bytes(be), 0);
    be->ops->destroy(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cpu_backend");
    TCase *tc = tcase_create("ops");
    tcase_add_test(tc, matmul_matches_reference);
    tcase_add_test(tc, host_alloc_failure_is_null_not_an_abort);
    tcase_add_test(tc, weight_upload_converts_half_types);
    tcase_add_test(tc, rmsnorm_add_swiglu_embed_gather_match_reference);
    tcase_add_test(tc, rope_matches_reference);
    tcase_add_test(tc, rope_partial_with_mscale_matches_reference);
    tcase_add_test(tc, family_ops_match_reference);
    tcase_add_test(tc, kv_write_places_rows_per_layout);
    tcase_add_test(tc, attention_over_scattered_blocks_matches_reference);
    tcase_add_test(tc, threads_do_not_change_results);
    tcase_add_test(tc, copies_and_events_complete_at_once);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
