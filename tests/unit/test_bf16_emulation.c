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
#include "tests/unit/bf16_emulation.h"
#include "tests/unit/fixture_support.h"

#define BLOCK 16

/* worst prefill row rel-L2 of fixture dir against transformers with the given rounding */
static double prefill_worst(const char *dir, int kinds) {
    fixture fx;
    fixture_load(dir, &fx);
    int vocab = fx.vocab, total = fx.n_rows, np = fx.n_prompts;
    float *ref = fixture_read_f32(dir, "logits.bin", (size_t)total * vocab);
    backend *be = bf16_emulation_backend(2, kinds);
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
    backend_batch b = {.n_tokens = total,
                       .n_seqs = np,
                       .tokens = tok,
                       .positions = pos,
                       .seq_start = ss,
                       .seq_len = sl,
                       .block_table = table,
                       .max_blocks = max_blocks,
                       .n_out = total,
                       .out_rows = rows};
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
    } kinds[] = {{BF16_EMU_WEIGHTS, "weights"},          {BF16_EMU_MATMUL, "matmul"},
                 {BF16_EMU_NORM, "norms+residual"},      {BF16_EMU_QK, "q/k rope+norm"},
                 {BF16_EMU_ATTN, "attention"},           {BF16_EMU_ACT, "act"},
                 {BF16_EMU_SCALE, "embed/scale/softcap"}};
    for (int f = 0; f < n_fixtures; f++) {
        fixture fx;
        fixture_load(fixtures[f], &fx);
        bool bf16 = fx.stored_dtype && strcmp(fx.stored_dtype, "bfloat16") == 0;
        bool gemma = strncmp(fx.name, "gemma", 5) == 0;
        char name[64];
        snprintf(name, sizeof name, "%s", fx.name);
        fixture_free(&fx);
        double tol = bf16 ? 3e-2 : 3e-2 * sqrt(2.0);
        double all = prefill_worst(fixtures[f], BF16_EMU_ALL);
        printf("%-22s bf16-emulated prefill: worst row rel-L2 %.2e (%.0f%% of %.2g)\n", name, all,
               100 * all / tol, tol);
        if (gemma)
            for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++)
                printf("%-22s   without %-20s rounding: %.2e\n", name, kinds[k].what,
                       prefill_worst(fixtures[f], BF16_EMU_ALL & ~kinds[k].off));
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
