/* The model families through the seam (model_load, model/model.c's table) on the CPU backend,
 * over the transformers fixtures of tests/fixtures/models (test_llama_fixtures checks their
 * logits against transformers): every fixture loads through model_load with the family of its
 * architecture and with dummy weights (progress reaches the total it announced); the longest
 * prompt prefilled in chunks whose edges fall inside and on blocks and inside and on the 24-token
 * windows gives the logits of one pass; refused model kinds fail model_load with the field's
 * name. Skips the fixture parts when no fixture is present. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/cpu/cpu_backend.h"
#include "model/llama.h"
#include "model/model.h"
#include "tests/unit/fixture_support.h"

#define BLOCK 16

static char fixtures[FIXTURE_MAX][FIXTURE_PATH_MAX];
static int n_fixtures;

static model *load(backend *be, const char *dir, model_load_format fmt, int max_tokens,
                   void (*progress)(size_t, size_t, void *), void *ctx) {
    kv_error err = {{0}};
    model_load_options opt = {
        .format = fmt, .max_tokens = max_tokens, .progress = progress, .progress_ctx = ctx};
    model *m = model_load(dir, be, &opt, &err);
    ck_assert_msg(m != NULL, "%s: %s", dir, err.msg);
    return m;
}

/* One step of one sequence: tokens [pos0, pos0 + n) with the logits of every one. */
static void run(model *m, void *pool, const backend_kv_layout *l, const int32_t *ids, int pos0,
                int n, const int32_t *table, int max_blocks, float *logits) {
    int32_t *pos = malloc((size_t)n * 4), *rows = malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) pos[i] = pos0 + i, rows[i] = i;
    int32_t seq_start[2] = {0, n}, seq_len = pos0 + n;
    backend_batch b = {.n_tokens = n,
                       .n_seqs = 1,
                       .tokens = ids + pos0,
                       .positions = pos,
                       .seq_start = seq_start,
                       .seq_len = &seq_len,
                       .block_table = table,
                       .max_blocks = max_blocks,
                       .n_out = n,
                       .out_rows = rows};
    model_forward(m, &b, pool, l, logits);
    free(pos), free(rows);
}

/* Chunks 5, 19 (ends at the window's length, 24), 1, 24 (a whole window), rest: logits of each
 * chunk equal the one-pass rows within test_llama_fixtures' budget, 1e-4 + 1e-4 |ref| (only the
 * summation order differs: matmuls of other row counts; Gemma's larger logits (embeddings scaled
 * by 8, norms near 2) reach ~4e-5, as transformers' own cache-vs-full noise on them does), while
 * a window cut at the wrong position moves logits by 1e-2 or more. */
START_TEST(chunked_prefill_equals_one_pass) {
    const char *dir = fixtures[_i];
    fixture fx;
    fixture_load(dir, &fx);
    const fixture_prompt *p = &fx.prompts[0];
    for (int s = 1; s < fx.n_prompts; s++)
        if (fx.prompts[s].n > p->n) p = &fx.prompts[s];
    backend *be = cpu_backend_create(2);
    model *m = load(be, dir, MODEL_LOAD_SAFETENSORS, p->n, NULL, NULL);
    int vocab = m->vocab, n = p->n, max_blocks = (n + BLOCK - 1) / BLOCK;
    backend_kv_layout l = model_kv_layout(m, BLOCK);
    void *pool = be->ops->dev_alloc(be, l.block_bytes * (size_t)(2 * max_blocks));
    int32_t *table = malloc((size_t)max_blocks * 4);
    for (int j = 0; j < max_blocks; j++) table[j] = 2 * max_blocks - 1 - 2 * j; /* scattered */
    float *one = malloc((size_t)n * vocab * 4), *chunked = malloc((size_t)n * vocab * 4);
    run(m, pool, &l, p->ids, 0, n, table, max_blocks, one);
    memset(pool, 0, l.block_bytes * (size_t)(2 * max_blocks));
    const int chunks[] = {5, 19, 1, 24};
    int at = 0;
    for (int c = 0; at < n; c++) {
        int len = c < 4 ? chunks[c] : n - at;
        if (len > n - at) len = n - at;
        run(m, pool, &l, p->ids, at, len, table, max_blocks, chunked + (size_t)at * vocab);
        at += len;
    }
    double worst = 0, worst_d = 0;
    for (size_t i = 0; i < (size_t)n * vocab; i++) {
        double d = fabs((double)chunked[i] - one[i]), share = d / (1e-4 + 1e-4 * fabs(one[i]));
        if (!(share <= worst)) worst = share, worst_d = d;
    }
    printf("%-22s %d tokens in chunks vs one pass: worst |diff| %.2e, %.1f%% of budget\n", fx.name,
           n, worst_d, 100 * worst);
    fflush(stdout);
    ck_assert_msg(worst <= 1, "%s: chunked prefill differs by %g", fx.name, worst_d);
    free(one), free(chunked), free(table);
    be->ops->dev_free(be, pool);
    model_free(m);
    backend_destroy(be);
    fixture_free(&fx);
}
END_TEST

static void record_progress(size_t done, size_t total, void *ctx) {
    size_t *last = ctx;
    ck_assert_uint_le(done, total);
    last[0] = done, last[1] = total;
}

/* Dummy weights of every family: the loader of its tensors runs, progress ends at its total,
 * and a step gives finite logits. */
START_TEST(dummy_weights_load_and_run) {
    const char *dir = fixtures[_i];
    backend *be = cpu_backend_create(2);
    size_t last[2] = {0, 0};
    model *m = load(be, dir, MODEL_LOAD_DUMMY, 8, record_progress, last);
    ck_assert_uint_eq(last[0], last[1]);
    ck_assert_uint_eq(last[0], m->weight_bytes);
    backend_kv_layout l = model_kv_layout(m, BLOCK);
    void *pool = be->ops->dev_alloc(be, l.block_bytes);
    int32_t ids[8], table[1] = {0};
    for (int i = 0; i < 8; i++) ids[i] = (i * 37 + 3) % m->vocab;
    float *logits = malloc((size_t)8 * m->vocab * 4);
    run(m, pool, &l, ids, 0, 8, table, 1, logits);
    for (size_t i = 0; i < (size_t)8 * m->vocab; i++) ck_assert(isfinite(logits[i]));
    free(logits);
    be->ops->dev_free(be, pool);
    model_free(m);
    backend_destroy(be);
}
END_TEST

/* Longrope (phi4mini-f32: original context 4096) takes the long factors exactly for steps with
 * a sequence longer than 4096, as transformers switches when seq_len > original_max; with the
 * short table put in the long one's place the same step's logits differ. */
START_TEST(longrope_switches_past_the_original_context) {
    char dir[FIXTURE_PATH_MAX + 32];
    const char *src = getenv("KVSERVE_SOURCE");
    snprintf(dir, sizeof dir, "%s/tests/fixtures/models/phi4mini-f32", src ? src : ".");
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("SKIP: %s not found\n", dir);
        return;
    }
    backend *be = cpu_backend_create(2);
    model *m = load(be, dir, MODEL_LOAD_SAFETENSORS, 4, NULL, NULL);
    llama_model *lm = m->impl;
    ck_assert_ptr_nonnull(lm->inv_freq_long);
    backend_kv_layout l = model_kv_layout(m, BLOCK);
    const int max_blocks = 4097 / BLOCK + 1;
    void *pool = be->ops->dev_alloc(be, l.block_bytes * (size_t)max_blocks);
    memset(pool, 0, l.block_bytes * (size_t)max_blocks);
    int32_t *table = malloc((size_t)max_blocks * 4), *ids = calloc(4097, 4);
    for (int j = 0; j < max_blocks; j++) table[j] = j;
    ids[4095] = 7, ids[4096] = 7;
    float *a = malloc((size_t)m->vocab * 4), *b = malloc((size_t)m->vocab * 4);
    run(m, pool, &l, ids, 4095, 1, table, max_blocks, a); /* seq_len 4096: short factors */
    ck_assert(!lm->rope_long);
    run(m, pool, &l, ids, 4096, 1, table, max_blocks, b); /* seq_len 4097: long factors */
    ck_assert(lm->rope_long);
    /* the same step with the short table in the long one's place gives other logits */
    float *saved = lm->inv_freq_long;
    lm->inv_freq_long = lm->inv_freq;
    run(m, pool, &l, ids, 4096, 1, table, max_blocks, a);
    lm->inv_freq_long = saved;
    double diff = 0;
    for (int i = 0; i < m->vocab; i++) diff = fmax(diff, fabs((double)a[i] - b[i]));
    ck_assert_msg(diff > 1e-3, "long factors changed nothing (%g)", diff);
    free(a), free(b), free(table), free(ids);
    be->ops->dev_free(be, pool);
    model_free(m);
    backend_destroy(be);
}
END_TEST

/* model_load of a directory whose config.json is base with patch applied (text), expecting a
 * refusal whose message holds needle. */
static void assert_load_refused(const char *config, const char *needle) {
    char dir[] = "/tmp/kvserve-families-XXXXXX", path[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(config, f);
    fclose(f);
    backend *be = cpu_backend_create(1);
    kv_error err = {{0}};
    model_load_options opt = {.format = MODEL_LOAD_DUMMY, .max_tokens = 4};
    model *m = model_load(dir, be, &opt, &err);
    ck_assert_msg(m == NULL, "%s loaded", config);
    ck_assert_msg(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
    printf("refused: %s\n", err.msg);
    backend_destroy(be);
    unlink(path);
    rmdir(dir);
}

#define SHAPE                                                                                      \
    "\"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2,"                   \
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 256"

START_TEST(unsupported_kinds_are_refused_by_model_load) {
    assert_load_refused("{\"architectures\": [\"Qwen3MoeForCausalLM\"], " SHAPE
                        ", \"num_experts\": 8}",
                        "num_experts = 8: mixture-of-experts models are not supported");
    assert_load_refused("{\"architectures\": [\"MixtralForCausalLM\"], " SHAPE
                        ", \"num_local_experts\": 8}",
                        "num_local_experts");
    assert_load_refused("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], " SHAPE
                        ", \"vision_config\": {}}",
                        "vision_config is present: multimodal");
    assert_load_refused("{\"architectures\": [\"Qwen3ForCausalLM\"], " SHAPE
                        ", \"layer_types\": [\"full_attention\", \"linear_attention\"]}",
                        "layer_types[1] 'linear_attention': hybrid attention");
    assert_load_refused("{\"architectures\": [\"FalconH1ForCausalLM\"], " SHAPE
                        ", \"layers_block_type\": [\"mamba\", \"attention\"]}",
                        "layers_block_type");
}
END_TEST

int main(void) {
    const char *src = getenv("KVSERVE_SOURCE");
    n_fixtures = fixture_list(src ? src : ".", fixtures, FIXTURE_MAX);
    Suite *s = suite_create("families");
    TCase *tc = tcase_create("seam");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, unsupported_kinds_are_refused_by_model_load);
    tcase_add_test(tc, longrope_switches_past_the_original_context);
    if (n_fixtures) {
        tcase_add_loop_test(tc, chunked_prefill_equals_one_pass, 0, n_fixtures);
        tcase_add_loop_test(tc, dummy_weights_load_and_run, 0, n_fixtures);
    } else {
        printf("SKIP (fixtures): none found\n");
    }
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
