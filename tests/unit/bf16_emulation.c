/* Test support: the bf16-rounding CPU backend (bf16_emulation.h). Each wrapped op runs the CPU
 * backend's op, then rounds its output in place (CPU device memory is host f32). */
#include "tests/unit/bf16_emulation.h"

#include <stdlib.h>

#include "model/cpu/cpu_backend.h"

static const backend_ops *orig;
static backend_ops emu;
static int rounding = BF16_EMU_ALL, step_tokens; /* tokens of the current step */

static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = kv_bf16_to_f32(kv_f32_to_bf16(x[i]));
}
#define RND(kind, p, n)                                                                            \
    do {                                                                                           \
        if (rounding & (kind)) round_bf16((float *)(p), (size_t)(n));                              \
    } while (0)

static void *e_weight_upload(backend *be, const void *src, kv_dtype dt, size_t n) {
    float *f = malloc(n * sizeof *f);
    kv_convert_to_f32(f, src, dt, n);
    RND(BF16_EMU_WEIGHTS, f, n);
    void *d = orig->weight_upload(be, f, KV_DTYPE_F32, n);
    free(f);
    return d;
}
static void e_step_begin(backend *be, const backend_batch *b) {
    step_tokens = b->n_tokens;
    orig->step_begin(be, b);
}
static void e_embed(backend *be, void *out, const void *t, int dim) {
    orig->embed(be, out, t, dim);
    RND(BF16_EMU_SCALE, out, (size_t)step_tokens * dim);
}
static void e_rmsnorm(backend *be, void *out, const void *x, const void *w, int n, int dim,
                      float eps) {
    orig->rmsnorm(be, out, x, w, n, dim, eps);
    RND(BF16_EMU_NORM, out, (size_t)n * dim);
}
static void e_add_rmsnorm(backend *be, void *out, void *x, const void *d, const void *w, int n,
                          int dim, float eps) {
    orig->add(be, x, d, (size_t)n * dim);
    RND(BF16_EMU_NORM, x, (size_t)n * dim); /* CUDA norms the rounded sum */
    orig->rmsnorm(be, out, x, w, n, dim, eps);
    RND(BF16_EMU_NORM, out, (size_t)n * dim);
}
static void e_add(backend *be, void *x, const void *d, size_t n) {
    orig->add(be, x, d, n);
    RND(BF16_EMU_NORM, x, n);
}
static void e_matmul(backend *be, void *out, const void *x, const void *w, const void *b, int n,
                     int k, int m) {
    orig->matmul(be, out, x, w, b, n, k, m);
    RND(BF16_EMU_MATMUL, out, (size_t)n * m);
}
static void heads_round(void *x, int n, int stride, int width) {
    for (int t = 0; t < n; t++) RND(BF16_EMU_QK, (float *)x + (size_t)t * stride, width);
}
static void e_rope(backend *be, void *x, int stride, int nh, int hd, int rd, const float *inv,
                   float ms) {
    orig->rope(be, x, stride, nh, hd, rd, inv, ms);
    heads_round(x, step_tokens, stride, nh * hd);
}
static void e_head_rmsnorm(backend *be, void *x, int n, int stride, int nh, int hd, const void *w,
                           float eps) {
    orig->head_rmsnorm(be, x, n, stride, nh, hd, w, eps);
    heads_round(x, n, stride, nh * hd);
}
static void e_swiglu(backend *be, void *out, const void *gu, int n, int ff) {
    orig->swiglu(be, out, gu, n, ff);
    RND(BF16_EMU_ACT, out, (size_t)n * ff);
}
static void e_geglu(backend *be, void *out, const void *gu, int n, int ff) {
    orig->geglu(be, out, gu, n, ff);
    RND(BF16_EMU_ACT, out, (size_t)n * ff);
}
static void e_scale(backend *be, void *x, size_t n, float s) {
    orig->scale(be, x, n, s);
    RND(BF16_EMU_SCALE, x, n);
}
static void e_softcap(backend *be, void *x, size_t n, float cap) {
    orig->softcap(be, x, n, cap);
    RND(BF16_EMU_SCALE, x, n);
}
static void e_attention(backend *be, void *out, const void *q, int qs, const void *pool,
                        const backend_kv_layout *l, int layer, int nh,
                        const backend_attn_params *ap) {
    orig->attention(be, out, q, qs, pool, l, layer, nh, ap);
    RND(BF16_EMU_ATTN, out, (size_t)step_tokens * nh * l->head_dim);
}

backend *bf16_emulation_backend(int n_threads, int kinds) {
    rounding = kinds;
    backend *be = cpu_backend_create(n_threads);
    orig = be->ops;
    emu = *orig;
    emu.weight_upload = e_weight_upload;
    emu.weight_upload_parts = NULL; /* stacked on the host, then weight_upload */
    emu.weight_upload_fp8 = NULL;
    emu.step_begin = e_step_begin;
    emu.embed = e_embed;
    emu.rmsnorm = e_rmsnorm;
    emu.add_rmsnorm = e_add_rmsnorm;
    emu.add = e_add;
    emu.matmul = e_matmul;
    emu.rope = e_rope;
    emu.head_rmsnorm = e_head_rmsnorm;
    emu.swiglu = e_swiglu;
    emu.geglu = e_geglu;
    emu.scale = e_scale;
    emu.softcap = e_softcap;
    emu.attention = e_attention;
    be->ops = &emu;
    return be;
}
