/* CPU forward-pass ops over f32 tensors, except attention (cpu_attention.c): embedding, norms
 * (of rows and of heads), residual add, scaling and soft-capping, SwiGLU and GeGLU, RoPE, row
 * gather and matmul. Each op is a row kernel plus a launcher that
 * spreads rows over the backend's threads when the op is large enough to pay for the wake-up. */
#include <math.h>

#include "model/cpu/cpu_impl.h"

#ifdef KVSERVE_OPENBLAS
#include <cblas.h>
#endif

/* Elements below which an op stays on the calling thread (waking workers costs ~10 us). */
#define CPU_PAR_ELEMS 32768
/* Multiply-adds below which matmul uses the plain loop even when OpenBLAS is there. */
#define CPU_BLAS_MIN_FLOPS (1 << 20)

static cpu_backend *cpu_of(backend *be) {
    return be->impl;
}

/* Rows per chunk so that one chunk holds about CPU_PAR_ELEMS elements. */
static int64_t rows_per_chunk(int64_t row_elems) {
    int64_t r = CPU_PAR_ELEMS / (row_elems > 0 ? row_elems : 1);
    return r > 0 ? r : 1;
}

/* A row-wise job: the fields an op needs, read by its row kernel. */
typedef struct rows_job {
    cpu_backend *c;
    float *out;
    float *x;
    const float *a, *w;
    int dim;
    float eps;
    const float *inv_freq;
    int row_stride, n_heads, head_dim, rot_dim;
    float s; /* scale factor, soft cap, rope mscale */
} rows_job;

/* --- embed, gather --- */

static void embed_rows(void *ctx, int thread, int64_t t0, int64_t t1) {
    rows_job *j = ctx;
    for (int64_t t = t0; t < t1; t++)
        memcpy(j->out + t * j->dim, j->a + (size_t)j->c->tokens[t] * (size_t)j->dim,
               (size_t)j->dim * sizeof(float));
}

void cpu_op_embed(backend *be, void *out, const void *table, int dim) {
    rows_job j = {.c = cpu_of(be), .out = out, .a = table, .dim = dim};
    cpu_pool_for(j.c->pool, j.c->n_tokens, rows_per_chunk(dim), embed_rows, &j);
}

void cpu_op_gather_rows(backend *be, void *out, const void *x, int dim) {
    cpu_backend *c = cpu_of(be);
    const float *xf = x;
    for (int r = 0; r < c->n_out; r++)
        memcpy((float *)out + (size_t)r * (size_t)dim, xf + (size_t)c->out_rows[r] * (size_t)dim,
               (size_t)dim * sizeof(float));
}

/* --- rmsnorm, add --- */

static void rmsnorm_row(float *out, const float *x, const float *w, int dim, float eps) {
    double ss = 0; /* sum of squares in double: exact enough to match any f32 reference */
    for (int i = 0; i < dim; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / dim + eps));
    for (int i = 0; i < dim; i++) out[i] = w[i] * (x[i] * inv);
}

static void rmsnorm_rows(void *ctx, int thread, int64_t r0, int64_t r1) {
    rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++)
        rmsnorm_row(j->out + r * j->dim, j->a + r * j->dim, j->w, j->dim, j->eps);
}

void cpu_op_rmsnorm(backend *be, void *out, const void *x, const void *w, int n, int dim,
                    float eps) {
    rows_job j = {.c = cpu_of(be), .out = out, .a = x, .w = w, .dim = dim, .eps = eps};
    cpu_pool_for(j.c->pool, n, rows_per_chunk(dim), rmsnorm_rows, &j);
}

static void add_rmsnorm_rows(void *ctx, int thread, int64_t r0, int64_t r1) {
    rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        float *x = j->x + r * j->dim;
        const float *d = j->a + r * j->dim;
        for (int i = 0; i < j->dim; i++) x[i] += d[i];
        rmsnorm_row(j->out + r * j->dim, x, j->w, j->dim, j->eps);
    }
}

void cpu_op_add_rmsnorm(backend *be, void *out, void *x, const void *delta, const void *w, int n,
                        int dim, float eps) {
    rows_job j = {.c = cpu_of(be), .out = out, .x = x, .a = delta, .w = w, .dim = dim, .eps = eps};
    cpu_pool_for(j.c->pool, n, rows_per_chunk(dim), add_rmsnorm_rows, &j);
}

static void add_range(void *ctx, int thread, int64_t i0, int64_t i1) {
    rows_job *j = ctx;
    for (int64_t i = i0; i < i1; i++) j->x[i] += j->a[i];
}

void cpu_op_add(backend *be, void *x, const void *delta, size_t n) {
    rows_job j = {.c = cpu_of(be), .x = x, .a = delta};
    cpu_pool_for(j.c->pool, (int64_t)n, CPU_PAR_ELEMS, add_range, &j);
}

static void head_rmsnorm_rows(void *ctx, int thread, int64_t r0, int64_t r1) {
    rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++)
        for (int h = 0; h < j->n_heads; h++) {
            float *x = j->x + r * j->row_stride + h * j->head_dim;
            rmsnorm_row(x, x, j->w, j->head_dim, j->eps);
        }
}

void cpu_op_head_rmsnorm(backend *be, void *x, int n, int row_stride, int n_heads, int head_dim,
                         const void *w, float eps) {
    rows_job j = {.c = cpu_of(be),
                  .x = x,
                  .w = w,
                  .row_stride = row_stride,
                  .n_heads = n_heads,
                  .head_dim = head_dim,
                  .eps = eps};
    cpu_pool_for(j.c->pool, n, rows_per_chunk((int64_t)n_heads * head_dim), head_rmsnorm_rows, &j);
}

static void scale_range(void *ctx, int thread, int64_t i0, int64_t i1) {
    rows_job *j = ctx;
    for (int64_t i = i0; i < i1; i++) j->x[i] *= j->s;
}

void cpu_op_scale(backend *be, void *x, size_t n, float s) {
    rows_job j = {.c = cpu_of(be), .x = x, .s = s};
    cpu_pool_for(j.c->pool, (int64_t)n, CPU_PAR_ELEMS, scale_range, &j);
}

/* As transformers: (x / cap), tanh, * cap, each rounded to f32. */
static void softcap_range(void *ctx, int thread, int64_t i0, int64_t i1) {
    rows_job *j = ctx;
    for (int64_t i = i0; i < i1; i++) j->x[i] = tanhf(j->x[i] / j->s) * j->s;
}

void cpu_op_softcap(backend *be, void *x, size_t n, float cap) {
    rows_job j = {.c = cpu_of(be), .x = x, .s = cap};
    cpu_pool_for(j.c->pool, (int64_t)n, CPU_PAR_ELEMS, softcap_range, &j);
}

/* --- swiglu, geglu --- */

static void swiglu_rows(void *ctx, int thread, int64_t r0, int64_t r1) {
    rows_job *j = ctx;
    int ff = j->dim;
    for (int64_t r = r0; r < r1; r++) {
        const float *g = j->a + r * 2 * ff, *u = g + ff;
        float *o = j->out + r * ff;
        for (int i = 0; i < ff; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

void cpu_op_swiglu(backend *be, void *out, const void *gu, int n, int ff) {
    rows_job j = {.c = cpu_of(be), .out = out, .a = gu, .dim = ff};
    cpu_pool_for(j.c->pool, n, rows_per_chunk(2 * (int64_t)ff), swiglu_rows, &j);
}

/* PyTorch's gelu(approximate="tanh"): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). */
static float gelu_tanh(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

static void geglu_rows(void *ctx, int thread, int64_t r0, int64_t r1) {
    rows_job *j = ctx;
    int ff = j->dim;
    for (int64_t r = r0; r < r1; r++) {
        const float *g = j->a + r * 2 * ff, *u = g + ff;
        float *o = j->out + r * ff;
        for (int i = 0; i < ff; i++) o[i] = gelu_tanh(g[i]) * u[i];
    }
}

void cpu_op_geglu(backend *be, void *out, const void *gu, int n, int ff) {
    rows_job j = {.c = cpu_of(be), .out = out, .a = gu, .dim = ff};
    cpu_pool_for(j.c->pool, n, rows_per_chunk(2 * (int64_t)ff), geglu_rows, &j);
}

/* --- rope --- */

static void rope_rows(void *ctx, int thread, int64_t t0, int64_t t1) {
    rows_job *j = ctx;
    int half = j->rot_dim / 2;
    for (int64_t t = t0; t < t1; t++) {
        float pos = (float)j->c->positions[t];
        for (int h = 0; h < j->n_heads; h++) {
            float *x = j->x + t * j->row_stride + h * j->head_dim;
            for (int i = 0; i < half; i++) {
                /* the angle is rounded to f32 as in the reference (positions × inv_freq in f32),
                 * and so are cos and sin before and after the mscale product */
                float angle = pos * j->inv_freq[i];
                float cs = (float)cos(angle) * j->s, sn = (float)sin(angle) * j->s;
                float x0 = x[i], x1 = x[i + half];
                x[i] = x0 * cs - x1 * sn;
                x[i + half] = x1 * cs + x0 * sn;
            }
        }
    }
}

void cpu_op_rope(backend *be, void *x, int row_stride, int n_heads, int head_dim, int rot_dim,
                 const float *inv_freq, float mscale) {
    KV_CHECK(rot_dim % 2 == 0 && rot_dim >= 2 && rot_dim <= head_dim);
    rows_job j = {.c = cpu_of(be),
                  .x = x,
                  .row_stride = row_stride,
                  .n_heads = n_heads,
                  .head_dim = head_dim,
                  .rot_dim = rot_dim,
                  .inv_freq = inv_freq,
                  .s = mscale};
    cpu_pool_for(j.c->pool, j.c->n_tokens, rows_per_chunk((int64_t)n_heads * head_dim), rope_rows,
                 &j);
}

/* --- matmul --- */

/* Dot product with 8 independent partial sums (vectorizes without -ffast-math). */
float cpu_dot(const float *a, const float *b, int k) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= k; i += 8)
        for (int u = 0; u < 8; u++) acc[u] += a[i + u] * b[i + u];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < k; i++) s += a[i] * b[i];
    return s;
}

typedef struct matmul_job {
    float *out;
    const float *x, *w, *bias;
    int n, k, m;
} matmul_job;

/* Output columns [j0, j1) of every row: the chunk's rows of w stay in cache across rows of x. */
static void matmul_cols(void *ctx, int thread, int64_t j0, int64_t j1) {
    matmul_job *mj = ctx;
    for (int i = 0; i < mj->n; i++) {
        const float *x = mj->x + (size_t)i * (size_t)mj->k;
        float *o = mj->out + (size_t)i * (size_t)mj->m;
        for (int64_t j = j0; j < j1; j++)
            o[j] =
                cpu_dot(x, mj->w + (size_t)j * (size_t)mj->k, mj->k) + (mj->bias ? mj->bias[j] : 0);
    }
}

void cpu_op_matmul(backend *be, void *out, const void *x, const void *w, const void *bias, int n,
                   int k, int m) {
    cpu_backend *c = cpu_of(be);
    matmul_job mj = {.out = out, .x = x, .w = w, .bias = bias, .n = n, .k = k, .m = m};
    double flops = (double)n * k * m;
#ifdef KVSERVE_OPENBLAS
    if (flops >= CPU_BLAS_MIN_FLOPS) {
        if (n == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, m, k, 1.0f, w, k, x, 1, 0.0f, out, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, k, 1.0f, x, k, w, k, 0.0f,
                        out, m);
        if (bias)
            for (int i = 0; i < n; i++)
                for (int j = 0; j < m; j++) mj.out[(size_t)i * m + j] += mj.bias[j];
        return;
    }
#endif
    /* chunks of w rows of ~16 KiB; small products stay on one thread */
    int64_t chunk = flops < CPU_PAR_ELEMS * 8.0 ? m : (k >= 4096 ? 1 : 4096 / k);
    cpu_pool_for(c->pool, m, chunk, matmul_cols, &mj);
}
