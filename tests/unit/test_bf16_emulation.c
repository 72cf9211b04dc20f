/* The CPU backend with every op's output rounded to bf16 (what the CUDA backend stores between
 * ops: weights, activations, KV) against the transformers fixtures: tells a CUDA bug from the
 * error bf16 storage itself gives a model, without a GPU. Prints, per fixture, the worst prefill
 * row rel-L2 to transformers' f32 logits with every rounding on, and for the Gemma fixtures
 * with one kind of rounding left off at a time (where the error comes from). Asserts that the
 * rounding is really applied (every fixture moves by more than 1e-4) and that the emulation
 * stays within 3e-2 (bf16-stored weights) / 4.2e-2 (f32) of transformers, the bound of
 * tests/gpu/test_gpu_model.c, for the families whose CUDA runs meet it; for Gemma it prints. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model/cpu/cpu_backend.h"
#include "model/llama.h"
#include "tests/unit/fixture_support.h"

#define BLOCK 16

/* kinds of rounding, a bit each */
enum {
    R_WEIGHTS = 1,   /* weights at upload (norm weights (1 + w) included) */
    R_MATMUL = 2,    /* matmul outputs */
    R_NORM = 4,      /* rmsnorm outputs and the residual stream after adds */
    R_QK = 8,        /* rope and head_rmsnorm outputs (q, k) */
    R_ATTN = 16,     /* attention outputs */
    R_ACT = 32,      /* swiglu / geglu outputs */
    R_SCALE = 64,    /* embed, scale, softcap outputs */
    R_ALL = 127
};

static const backend_ops *orig;
static backend_ops emu;
static int rounding = R_ALL, step_tokens;

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
    RND(R_WEIGHTS, f, n);
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
    RND(R_SCALE, out, (size_t)step_tokens * dim);
}
static void e_rmsnorm(backend *be, void *out, const void *x, const void *w, int n, int dim,
                      float eps) {
    orig->rmsnorm(be, out, x, w, n, dim, eps);
    RND(R_NORM, out, (size_t)n * dim);
}
static void e_add_rmsnorm(backend *be, void *out, void *x, const void *d, const void *w, int n,
                          int dim, float eps) {
    orig->add(be, x, d, (size_t)n * dim);
    RND(R_NORM, x, (size_t)n * dim); /* CUDA norms the rounded sum */
    orig->rmsnorm(be, out, x, w, n, dim, eps);
    RND(R_NORM, out, (size_t)n * dim);
}
static void e_add(backend *be, void *x, const void *d, size_t n) {
    orig->add(be, x, d, n);
    RND(R_NORM, x, n);
}
static void e_matmul(backend *be, void *out, const void *x, const void *w, const void *b, int n,
                     int k, int m) {
    orig->matmul(be, out, x, w, b, n, k, m);
    RND(R_MATMUL, out, (size_t)n * m);
}
static void heads_round(void *x, int n, int stride, int width) {
    for (int t = 0; t < n; t++) RND(R_QK, (float *)x + (size_t)t * stride, width);
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
    RND(R_ACT, out, (size_t)n * ff);
}
static void e_geglu(backend *be, void *out, const void *gu, int n, int ff) {
    orig->geglu(be, out, gu, n, ff);
    RND(R_ACT, out, (size_t)n * ff);
}
static void e_scale(backend *be, void *x, size_t n, float s) {
    orig->scale(be, x, n, s);
    RND(R_SCALE, x, n);
}
static void e_softcap(backend *be, void *x, size_t n, float cap) {
    orig->softcap(be, x, n, cap);
    RND(R_SCALE, x, n);
}
static void e_attention(backend *be, void *out, const void *q, int qs, const void *pool,
                        const backend_kv_layout *l, int layer, int nh,
                        const backend_attn_params *ap) {
    orig->attention(be, out, q, qs, pool, l, layer, nh, ap);
    RND(R_ATTN, out, (size_t)step_tokens * nh * l->head_dim);
}

static backend *emu_backend(void) {
    backend *be = cpu_backend_create(2);
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

/* worst prefill row rel-L2 of fixture dir against transformers with the given rounding */
static double prefill_worst(const char *dir, int kinds) {
    rounding = kinds;
    fixture fx;
    fixture_load(dir, &fx);
    int vocab = fx.vocab, total = fx.n_rows, np = fx.n_prompts;
    float *ref = fixture_read_f32(dir, "logits.bin", (size_t)total * vocab);
    backend *be = emu_backend();
    llama_model m;
    kv_error err = {{0}};
    ck_assert_msg(llama_load(&m, be, dir, MODEL_LOAD_SAFETENSORS, total, NULL, NULL, &err) == 0,
                  "%s: %s", dir, err.msg);
    backend_kv_layout l = llama_kv_layout(&m, BLOCK);
    int max_blocks = (fx.longest + BLOCK - 1) / BLOCK;
    void *pool = be->ops->dev_alloc(be, l.block_bytes * (size_t)(max_blocks * np));
    int32_t *table = malloc((size_t)(max_blocks * np) * sizeof *table);
    for (int i = 0; i < max_blocks * np; i++) table[i] = i;
    int32_t *tok = malloc((size_t)total * 4), *pos = malloc((size_t)total * 4);
    int32_t *rows = malloc((size_t)total * 4), ss[FIXTURE_MAX_PROMPTS + 1], sl[FIXTURE_MAX_PROMPTS];
    for (int s = 0, t = 0; s < np; s++) {
        ss[s] = t, sl[s] = fx.prompts[s].n;
        for (int i = 0; i < fx.prompts[s].n; i++, t++)
            tok[t] = fx.prompts[s].ids[i], pos[t] = i, rows[t] = t;
    }
    ss[np] = total;
    backend_batch b = {.n_tokens = total, .n_seqs = np, .tokens = tok, .positions = pos,
                       .seq_start = ss, .seq_len = sl, .block_table = table,
                       .max_blocks = max_blocks, .n_out = total, .out_rows = rows};
    float *got = malloc((size_t)total * vocab * sizeof *got);
    llama_forward(&m, &b, pool, &l, got);
    double worst = 0;
    for (int t = 0; t < total; t++) {
        double e = 0, r = 0;
        for (int i = 0; i < vocab; i++) {
            double d = (double)got[(size_t)t * vocab + i] - ref[(size_t)t * vocab + i];
            e += d * d, r += (double)ref[(size_t)t * vocab + i] * ref[(size_t)t * vocab + i];
        }
        double rel = isfinite(e) ? sqrt(e / r) : INFINITY;
        if (!(rel <= worst)) worst = rel;
    }
    free(ref), free(table), free(tok), free(pos), free(rows), free(got);
    be->ops->dev_free(be, pool);
    llama_free(&m);
    backend_destroy(be);
    fixture_free(&fx);
    return worst;
}

static char fixtures[FIXTURE_MAX][FIXTURE_PATH_MAX];
static int n_fixtures;

START_TEST(bf16_emulation_vs_transformers) {
    static const struct {
        int off;
        const char *what;
    } kinds[] = {{R_WEIGHTS, "weights"}, {R_MATMUL, "matmul"}, {R_NORM, "norms+residual"},
                 {R_QK, "q/k rope+norm"},  {R_ATTN, "attention"}, {R_ACT, "act"},
                 {R_SCALE, "embed/scale/softcap"}};
    for (int f = 0; f < n_fixtures; f++) {
        fixture fx;
        fixture_load(fixtures[f], &fx);
        bool bf16 = fx.stored_dtype && strcmp(fx.stored_dtype, "bfloat16") == 0;
        bool gemma = strncmp(fx.name, "gemma", 5) == 0;
        char name[64];
        snprintf(name, sizeof name, "%s", fx.name);
        fixture_free(&fx);
        double tol = bf16 ? 3e-2 : 3e-2 * sqrt(2.0);
        double all = prefill_worst(fixtures[f], R_ALL);
        printf("%-22s bf16-emulated prefill: worst row rel-L2 %.2e (%.0f%% of %.2g)\n", name, all,
               100 * all / tol, tol);
        if (gemma)
            for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++)
                printf("%-22s   without %-20s rounding: %.2e\n", name, kinds[k].what,
                       prefill_worst(fixtures[f], R_ALL & ~kinds[k].off));
        fflush(stdout);
        ck_assert_msg(all > 1e-4, "%s: the rounding changed nothing (%g)", name, all);
        if (!gemma) ck_assert_msg(all <= tol, "%s: bf16 emulation %g > %g", name, all, tol);
    }
}
END_TEST

int main(void) {
    const char *src = getenv("KVSERVE_SOURCE");
    n_fixtures = fixture_list(src ? src : ".", fixtures, FIXTURE_MAX);
    if (n_fixtures == 0) {
        printf("SKIP: no fixtures\n");
        return 77;
    }
    Suite *s = suite_create("bf16_emulation");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, bf16_emulation_vs_transformers);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
