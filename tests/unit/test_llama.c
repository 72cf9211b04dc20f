/* Unit tests for model/llama on the CPU backend with Karpathy's stories260K (a real trained
 * Llama): greedy generation must reproduce the ids published by llama2.c and confirmed with
 * Hugging Face transformers (testdata/models/stories260K/expected.json); batching and chunked
 * prefill must not change logits, nor layer waits (never recorded as graphs); malformed model
 * directories are errors naming the tensor. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "model/cpu/cpu_backend.h"
#include "model/llama.h"
#include "model/safetensors.h"

static char model_dir[4096];

/* --- running a model over the paged pool --- */

/* A model with a pool of n_blocks blocks of 16 tokens. */
typedef struct runner {
    backend *be;
    llama_model m;
    backend_kv_layout l;
    void *pool;
    int n_blocks;
} runner;

static void runner_init(runner *r, int n_threads, int max_tokens, int n_blocks) {
    kv_error err = {{0}};
    r->be = cpu_backend_create(n_threads);
    int rc =
        llama_load(&r->m, r->be, model_dir, MODEL_LOAD_SAFETENSORS, max_tokens, NULL, NULL, &err);
    ck_assert_msg(rc == 0, "llama_load: %s", err.msg);
    r->l = llama_kv_layout(&r->m, 16);
    r->n_blocks = n_blocks;
    r->pool = r->be->ops->dev_alloc(r->be, r->l.block_bytes * (size_t)n_blocks);
}

static void runner_free(runner *r) {
    r->be->ops->dev_free(r->be, r->pool);
    llama_free(&r->m);
    backend_destroy(r->be);
}

/* One step of one sequence: n new tokens at positions [pos0, pos0 + n) in the blocks of
 * block_table[max_blocks]; logits of every new token (all_rows) or of the last one. */
static void run_seq(runner *r, const int32_t *tokens, int n, int pos0, const int32_t *block_table,
                    int max_blocks, bool all_rows, float *logits) {
    int32_t *positions = malloc((size_t)n * sizeof *positions);
    int32_t *out_rows = malloc((size_t)n * sizeof *out_rows);
    for (int i = 0; i < n; i++) positions[i] = pos0 + i, out_rows[i] = i;
    int32_t seq_start[2] = {0, n}, seq_len = pos0 + n;
    int32_t last = n - 1;
    backend_batch b = {.n_tokens = n,
                       .n_seqs = 1,
                       .tokens = tokens,
                       .positions = positions,
                       .seq_start = seq_start,
                       .seq_len = &seq_len,
                       .block_table = block_table,
                       .max_blocks = max_blocks,
                       .n_out = all_rows ? n : 1,
                       .out_rows = all_rows ? out_rows : &last};
    llama_forward(&r->m, &b, r->pool, &r->l, logits);
    free(positions), free(out_rows);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Greedy: prefill the prompt in one step, then one token per step; writes n_gen ids. */
static void greedy(runner *r, const int32_t *prompt, int n_prompt, int n_gen, int32_t *out) {
    int vocab = r->m.cfg.vocab_size, max_blocks = r->n_blocks;
    int32_t *table = malloc((size_t)max_blocks * sizeof *table);
    for (int i = 0; i < max_blocks; i++) table[i] = i;
    float *logits = malloc((size_t)vocab * sizeof *logits);
    run_seq(r, prompt, n_prompt, 0, table, max_blocks, false, logits);
    for (int i = 0; i < n_gen; i++) {
        out[i] = argmax(logits, vocab);
        if (i + 1 < n_gen) run_seq(r, &out[i], 1, n_prompt + i, table, max_blocks, false, logits);
    }
    free(table), free(logits);
}

/* --- expected.json --- */

static json_t *expected_case(const char *name) {
    char path[4200];
    snprintf(path, sizeof path, "%s/expected.json", model_dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    ck_assert_msg(root != NULL, "%s: %s", path, jerr.text);
    json_t *c = json_incref(json_object_get(root, name));
    json_decref(root);
    ck_assert_ptr_nonnull(c);
    return c;
}

static int32_t *json_ids(const json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc((size_t)*n * sizeof *ids + 1);
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

static void check_greedy_case(const char *name, const char *prompt_key) {
    json_t *c = expected_case(name);
    int n_prompt, n_expect;
    int32_t *prompt = json_ids(json_object_get(c, prompt_key), &n_prompt);
    int32_t *expect = json_ids(json_object_get(c, "ids"), &n_expect);
    runner r;
    runner_init(&r, 2, 64, 16);
    int32_t *got = malloc((size_t)n_expect * sizeof *got);
    double t0 = kv_now();
    greedy(&r, prompt, n_prompt, n_expect, got);
    double dt = kv_now() - t0;
    int n_same = 0;
    while (n_same < n_expect && got[n_same] == expect[n_same]) n_same++;
    printf("%s: %d/%d greedy ids equal the reference (%.0f tok/s on the CPU backend)\n", name,
           n_same, n_expect, n_expect / dt);
    fflush(stdout);
    ck_assert_msg(n_same == n_expect, "%s: id %d is %d, expected %d", name, n_same,
                  n_same < n_expect ? got[n_same] : -1, n_same < n_expect ? expect[n_same] : -1);
    runner_free(&r);
    free(prompt), free(expect), free(got);
    json_decref(c);
}

START_TEST(greedy_from_bos_reproduces_llama2c) {
    check_greedy_case("greedy_from_bos", "prompt_ids");
}
END_TEST

START_TEST(greedy_once_upon_a_time_matches_transformers) {
    check_greedy_case("prompt_once_upon_a_time", "prompt_ids_with_bos");
}
END_TEST

/* --- batching and chunking leave logits unchanged --- */

/* |a - b| <= atol + rtol |b| over n logits; prints the worst. stories260K logits are O(10). */
static void check_logits(const char *what, const float *got, const float *ref, size_t n,
                         double atol, double rtol) {
    double worst = 0, worst_diff = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]), share = d / (atol + rtol * fabs(ref[i]));
        if (!(share <= worst)) worst = share, worst_diff = d;
    }
    printf("%-40s worst |diff| %.3g: %.1f%% of atol %g + rtol %g|ref|\n", what, worst_diff,
           100 * worst, atol, rtol);
    fflush(stdout);
    ck_assert_msg(worst <= 1.0, "%s: logits differ by %g", what, worst_diff);
}

static int32_t sample_token(int i) {
    return (int32_t)(3 + (i * 37 + 11) % 500);
}

START_TEST(batch_of_sequences_equals_each_alone) {
    /* three sequences: A prefills 7 tokens from scratch, B decodes 1 token after 21 cached, C
     * prefills a 12-token chunk after 5 cached; blocks scattered over the pool */
    enum { N_SEQ = 3, MAXB = 4 };
    const int n_cached[N_SEQ] = {0, 21, 5}, n_new[N_SEQ] = {7, 1, 12};
    const int32_t tables[N_SEQ][MAXB] = {{9, 2, 14, 6}, {3, 11, 0, 13}, {7, 1, 12, 4}};
    runner r;
    runner_init(&r, 2, 64, 16);
    int vocab = r.m.cfg.vocab_size;
    int32_t toks[N_SEQ][40];
    for (int s = 0; s < N_SEQ; s++)
        for (int i = 0; i < 40; i++) toks[s][i] = sample_token(i * (s + 2) + s);

    /* each alone: cached part, then the new tokens, logits of every new token */
    float *alone = malloc((size_t)20 * vocab * sizeof(float)),
          *scratch = malloc((size_t)40 * vocab * 4);
    int row = 0;
    for (int s = 0; s < N_SEQ; s++) {
        if (n_cached[s]) run_seq(&r, toks[s], n_cached[s], 0, tables[s], MAXB, false, scratch);
        run_seq(&r, toks[s] + n_cached[s], n_new[s], n_cached[s], tables[s], MAXB, true,
                alone + (size_t)row * vocab);
        row += n_new[s];
    }

    /* together: rewrite the cached parts, then one step with all new tokens */
    memset(r.pool, 0, r.l.block_bytes * (size_t)r.n_blocks);
    for (int s = 0; s < N_SEQ; s++)
        if (n_cached[s]) run_seq(&r, toks[s], n_cached[s], 0, tables[s], MAXB, false, scratch);
    int32_t tokens[20], positions[20], seq_start[N_SEQ + 1], seq_len[N_SEQ], out_rows[20];
    int t = 0;
    for (int s = 0; s < N_SEQ; s++) {
        seq_start[s] = t;
        seq_len[s] = n_cached[s] + n_new[s];
        for (int i = 0; i < n_new[s]; i++, t++) {
            tokens[t] = toks[s][n_cached[s] + i];
            positions[t] = n_cached[s] + i;
            out_rows[t] = t;
        }
    }
    seq_start[N_SEQ] = t;
    backend_batch b = {.n_tokens = t,
                       .n_seqs = N_SEQ,
                       .tokens = tokens,
                       .positions = positions,
                       .seq_start = seq_start,
                       .seq_len = seq_len,
                       .block_table = &tables[0][0],
                       .max_blocks = MAXB,
                       .n_out = t,
                       .out_rows = out_rows};
    float *together = malloc((size_t)t * vocab * sizeof(float));
    llama_forward(&r.m, &b, r.pool, &r.l, together);
    check_logits("3 sequences batched vs alone (20 rows)", together, alone, (size_t)t * vocab, 1e-5,
                 1e-5);
    free(alone), free(scratch), free(together);
    runner_free(&r);
}
END_TEST

START_TEST(chunked_prefill_equals_one_shot) {
    /* 45 tokens over three 16-token blocks, in chunks whose edges fall inside and on blocks */
    enum { N = 45 };
    const int chunks[] = {5, 11, 17, 1, 11};
    runner r;
    runner_init(&r, 1, 64, 8);
    int vocab = r.m.cfg.vocab_size;
    const int32_t table[4] = {5, 0, 7, 2};
    int32_t toks[N];
    for (int i = 0; i < N; i++) toks[i] = sample_token(i);
    float *one = malloc((size_t)N * vocab * sizeof(float)),
          *chunked = malloc((size_t)N * vocab * 4);
    run_seq(&r, toks, N, 0, table, 4, true, one);
    memset(r.pool, 0, r.l.block_bytes * (size_t)r.n_blocks);
    for (int c = 0, pos = 0; c < 5; pos += chunks[c++])
        run_seq(&r, toks + pos, chunks[c], pos, table, 4, true, chunked + (size_t)pos * vocab);
    check_logits("prefill in 5 chunks vs one shot (45 rows)", chunked, one, (size_t)N * vocab, 1e-5,
                 1e-5);
    free(one), free(chunked);
    runner_free(&r);
}
END_TEST

/* --- layer waits (host-tier loads by layer groups) --- */

/* Counts of the ops a step queued, through a copy of the CPU backend's ops with graph ops that
 * never record (graph_begin says it cannot). */
static int n_event_waits, n_graph_begins;
static void (*cpu_event_wait)(backend *be, backend_stream s, backend_event *ev);

static void counting_event_wait(backend *be, backend_stream s, backend_event *ev) {
    ck_assert_int_eq(s, BACKEND_STREAM_COMPUTE);
    n_event_waits++;
    cpu_event_wait(be, s, ev);
}
static bool counting_graph_begin(backend *be) {
    n_graph_begins++;
    return false;
}
static backend_graph *no_graph_end(backend *be) {
    return NULL;
}
static bool no_graph_launch(backend *be, backend_graph *g) {
    return false;
}
static void no_graph_free(backend *be, backend_graph *g) {}

/* A decode step that would be recorded as a graph is not when it has layer waits; COMPUTE waits
 * once per run of equal events, and the logits are the plain step's. */
START_TEST(layer_waits_are_queued_and_never_recorded) {
    runner r;
    runner_init(&r, 1, 64, 4);
    const backend_ops *cpu_ops = r.be->ops;
    backend_ops ops = *cpu_ops;
    cpu_event_wait = ops.event_wait;
    ops.event_wait = counting_event_wait;
    ops.graph_begin = counting_graph_begin;
    ops.graph_end = no_graph_end;
    ops.graph_launch = no_graph_launch;
    ops.graph_free = no_graph_free;
    r.be->ops = &ops;
    int vocab = r.m.cfg.vocab_size, n_layers = r.m.cfg.n_layers;
    ck_assert_int_ge(n_layers, 3);
    const int32_t table[2] = {3, 1};
    int32_t toks[20];
    for (int i = 0; i < 20; i++) toks[i] = sample_token(i);
    float *plain = malloc((size_t)vocab * sizeof(float)), *waited = malloc((size_t)vocab * 4);
    run_seq(&r, toks, 17, 0, table, 2, false, plain);      /* prefill: never recorded */
    run_seq(&r, toks + 17, 1, 17, table, 2, false, plain); /* decode: seen */
    ck_assert_int_eq(n_graph_begins, 0);
    run_seq(&r, toks + 18, 1, 18, table, 2, false, plain); /* decode again: recorded */
    ck_assert_int_eq(n_graph_begins, 1);

    /* the same step again, layer groups {0}, {1 .. n - 2}, {n - 1} */
    backend_event *ev[3];
    for (int g = 0; g < 3; g++) ev[g] = ops.event_record(r.be, BACKEND_STREAM_LOAD);
    backend_event **ready = malloc((size_t)n_layers * sizeof *ready);
    for (int l = 0; l < n_layers; l++) ready[l] = ev[l == 0 ? 0 : l < n_layers - 1 ? 1 : 2];
    int32_t pos = 18, seq_start[2] = {0, 1}, seq_len = 19, row = 0;
    backend_batch b = {.n_tokens = 1,
                       .n_seqs = 1,
                       .tokens = toks + 18,
                       .positions = &pos,
                       .seq_start = seq_start,
                       .seq_len = &seq_len,
                       .block_table = table,
                       .max_blocks = 2,
                       .n_out = 1,
                       .out_rows = &row};
    n_event_waits = 0;
    llama_forward_layers(&r.m, &b, r.pool, &r.l, waited, ready);
    ck_assert_int_eq(n_event_waits, 3);
    ck_assert_int_eq(n_graph_begins, 1);
    ck_assert_uint_eq(r.m.n_graph_replays, 0);
    ck_assert(memcmp(plain, waited, (size_t)vocab * sizeof(float)) == 0);
    for (int g = 0; g < 3; g++) ops.event_free(r.be, ev[g]);
    free(ready), free(plain), free(waited);
    r.be->ops = cpu_ops;
    runner_free(&r);
}
END_TEST

/* Records the last progress report. */
static void record_progress(size_t done, size_t total, void *ctx) {
    size_t *last = ctx;
    ck_assert_uint_ge(done, last[0]);
    last[0] = done, last[1] = total;
}

START_TEST(progress_reaches_total_weight_bytes) {
    for (int f = 0; f < 2; f++) {
        backend *be = cpu_backend_create(1);
        llama_model m;
        kv_error err = {{0}};
        size_t last[2] = {0, 0};
        model_load_format fmt = f ? MODEL_LOAD_DUMMY : MODEL_LOAD_SAFETENSORS;
        ck_assert_msg(llama_load(&m, be, model_dir, fmt, 4, record_progress, last, &err) == 0, "%s",
                      err.msg);
        /* stories260K: tied, 5 layers of dim 64, 8 + 2 * 4 heads of 8, ff 172, vocab 512, f32 */
        size_t layer = 2 * 64 + 128 * 64 + 64 * 64 + 3 * 172 * 64;
        ck_assert_uint_eq(m.weight_bytes, (5 * layer + 512 * 64 + 64) * sizeof(float));
        ck_assert_uint_eq(last[0], m.weight_bytes);
        ck_assert_uint_eq(last[1], m.weight_bytes);
        ck_assert_ptr_eq(m.lm_head, m.embed);
        llama_free(&m);
        backend_destroy(be);
    }
}
END_TEST

START_TEST(dummy_weights_are_deterministic_and_finite) {
    backend *be = cpu_backend_create(1);
    llama_model m[2];
    kv_error err = {{0}};
    float *logits[2];
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(llama_load(&m[i], be, model_dir, MODEL_LOAD_DUMMY, 8, NULL, NULL, &err) == 0,
                      "%s", err.msg);
        backend_kv_layout l = llama_kv_layout(&m[i], 16);
        void *pool = be->ops->dev_alloc(be, l.block_bytes);
        int32_t toks[3] = {1, 200, 300}, pos[3] = {0, 1, 2}, st[2] = {0, 3}, len = 3, table = 0;
        int32_t out = 2;
        backend_batch b = {.n_tokens = 3,
                           .n_seqs = 1,
                           .tokens = toks,
                           .positions = pos,
                           .seq_start = st,
                           .seq_len = &len,
                           .block_table = &table,
                           .max_blocks = 1,
                           .n_out = 1,
                           .out_rows = &out};
        logits[i] = malloc((size_t)m[i].cfg.vocab_size * sizeof(float));
        llama_forward(&m[i], &b, pool, &l, logits[i]);
        be->ops->dev_free(be, pool);
    }
    ck_assert_uint_eq(m[0].weight_bytes, m[1].weight_bytes);
    ck_assert_int_eq(memcmp(logits[0], logits[1], (size_t)m[0].cfg.vocab_size * 4), 0);
    for (int v = 0; v < m[0].cfg.vocab_size; v++) ck_assert(isfinite(logits[0][v]));
    llama_free(&m[0]), llama_free(&m[1]);
    free(logits[0]), free(logits[1]);
    backend_destroy(be);
}
END_TEST

/* --- malformed model directories --- */

/* A tensor for the hand-written safetensors file: data is copied as is. */
typedef struct st_entry {
    const char *name;
    const char *dtype;
    int n_dims;
    int64_t shape[2];
    const void *data;
    size_t n_bytes;
} st_entry;

/* Writes dir/model.safetensors: 8-byte little-endian header length, JSON header padded with
 * spaces to a multiple of 8, then the data of each tensor in order. */
static void write_safetensors(const char *dir, const st_entry *e, int n) {
    json_t *h = json_object();
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < e[i].n_dims; d++)
            json_array_append_new(shape, json_integer(e[i].shape[d]));
        json_object_set_new(h, e[i].name,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", e[i].dtype, "shape", shape,
                                      "data_offsets", (json_int_t)off,
                                      (json_int_t)(off + e[i].n_bytes)));
        off += e[i].n_bytes;
    }
    char *text = json_dumps(h, JSON_COMPACT);
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint8_t n8[8];
    for (int i = 0; i < 8; i++) n8[i] = (uint8_t)(padded >> (8 * i));
    fwrite(n8, 1, 8, f);
    fwrite(text, 1, len, f);
    for (size_t i = len; i < padded; i++) fputc(' ', f);
    for (int i = 0; i < n; i++) fwrite(e[i].data, 1, e[i].n_bytes, f);
    fclose(f);
    free(text);
    json_decref(h);
}

/* Copies config.json of stories260K into a fresh temp dir and writes its tensors with one
 * changed by `edit` (which may drop it by returning false). Returns llama_load's result. */
static int load_edited(bool (*edit)(st_entry *e, void *buf), kv_error *err) {
    char dir[] = "/tmp/kvserve_test_llama_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char src[4200], dst[4200];
    snprintf(src, sizeof src, "%s/config.json", model_dir);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    ck_assert(in && out);
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, got, out);
    fclose(in), fclose(out);

    safetensors_model st = {0};
    ck_assert_msg(safetensors_open(&st, model_dir, err) == 0, "%s", err->msg);
    st_entry *e = calloc((size_t)st.n_tensors, sizeof *e);
    static char scratch[1 << 16];
    int n = 0;
    for (int i = 0; i < st.n_tensors; i++) {
        const safetensors_tensor *t = &st.tensors[i];
        e[n] = (st_entry){.name = t->name,
                          .dtype = "F32",
                          .n_dims = t->n_dims,
                          .shape = {t->shape[0], t->n_dims > 1 ? t->shape[1] : 0},
                          .data = t->data,
                          .n_bytes = t->n_bytes};
        if (edit(&e[n], scratch)) n++;
    }
    write_safetensors(dir, e, n);
    backend *be = cpu_backend_create(1);
    llama_model m;
    int rc = llama_load(&m, be, dir, MODEL_LOAD_SAFETENSORS, 8, NULL, NULL, err);
    if (rc == 0) llama_free(&m);
    backend_destroy(be);
    safetensors_close(&st);
    free(e);
    unlink(dst);
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    unlink(dst);
    rmdir(dir);
    return rc;
}

static bool edit_drop_up_proj(st_entry *e, void *buf) {
    return strcmp(e->name, "model.layers.2.mlp.up_proj.weight") != 0;
}

static bool edit_transpose_k_proj(st_entry *e, void *buf) {
    if (strcmp(e->name, "model.layers.1.self_attn.k_proj.weight") == 0) {
        int64_t r = e->shape[0];
        e->shape[0] = e->shape[1], e->shape[1] = r; /* [64, 32] instead of [32, 64] */
    }
    return true;
}

static bool edit_norm_to_f64(st_entry *e, void *buf) {
    if (strcmp(e->name, "model.norm.weight") == 0) {
        /* 64 f32 values → 64 f64 values */
        const float *f = e->data;
        double *d = buf;
        for (int i = 0; i < 64; i++) d[i] = f[i];
        e->dtype = "F64", e->data = d, e->n_bytes = 64 * sizeof(double);
    }
    return true;
}

static bool edit_nothing(st_entry *e, void *buf) {
    return true;
}

START_TEST(rewritten_model_loads) {
    /* the hand-written file itself is valid: the error tests below fail for their one change */
    kv_error err = {{0}};
    ck_assert_msg(load_edited(edit_nothing, &err) == 0, "%s", err.msg);
}
END_TEST

START_TEST(missing_tensor_is_named) {
    kv_error err = {{0}};
    ck_assert_int_eq(load_edited(edit_drop_up_proj, &err), -1);
    printf("missing tensor: %s\n", err.msg);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.layers.2.mlp.up_proj.weight"));
    ck_assert_ptr_nonnull(strstr(err.msg, "missing"));
}
END_TEST

START_TEST(wrong_shape_is_named) {
    kv_error err = {{0}};
    ck_assert_int_eq(load_edited(edit_transpose_k_proj, &err), -1);
    printf("wrong shape: %s\n", err.msg);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.layers.1.self_attn.k_proj.weight"));
    ck_assert_ptr_nonnull(strstr(err.msg, "[64, 32]"));
}
END_TEST

START_TEST(unsupported_dtype_is_named) {
    kv_error err = {{0}};
    ck_assert_int_eq(load_edited(edit_norm_to_f64, &err), -1);
    printf("unsupported dtype: %s\n", err.msg);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.norm.weight"));
    ck_assert_ptr_nonnull(strstr(err.msg, "F64"));
}
END_TEST

static void copy_file(const char *from_dir, const char *to_dir, const char *name) {
    char src[4200], dst[4200];
    snprintf(src, sizeof src, "%s/%s", from_dir, name);
    snprintf(dst, sizeof dst, "%s/%s", to_dir, name);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    ck_assert(in && out);
    char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0) ck_assert(fwrite(buf, 1, got, out) == got);
    fclose(in), fclose(out);
}

static void fingerprint_of(const char *dir, char out[65]) {
    kv_error err = {{0}};
    backend *be = cpu_backend_create(1);
    model *m = model_load(dir, be, &(model_load_options){.max_tokens = 8}, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    memcpy(out, m->fingerprint, 65);
    model_free(m);
    backend_destroy(be);
}

/* The identity behind the block hashes (and so the disk and remote tiers) is the same for a copy
 * of the model with other mtimes (another machine, a restore), and changes with the header. */
START_TEST(fingerprint_ignores_mtime_and_follows_header) {
    char dir[] = "/tmp/kvserve_test_fp_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    copy_file(model_dir, dir, "config.json");
    copy_file(model_dir, dir, "model.safetensors");
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct timeval tv[2] = {{1000000, 0}, {1000000, 0}}; /* 1970: surely not the original's */
    ck_assert_int_eq(utimes(path, tv), 0);
    char a[65], b[65], c[65];
    fingerprint_of(model_dir, a);
    fingerprint_of(dir, b);
    ck_assert_str_eq(a, b);
    /* the same tensors written with another header layout: another identity */
    safetensors_model st = {0};
    kv_error err = {{0}};
    ck_assert_msg(safetensors_open(&st, model_dir, &err) == 0, "%s", err.msg);
    st_entry *e = calloc((size_t)st.n_tensors, sizeof *e);
    for (int i = 0; i < st.n_tensors; i++) {
        const safetensors_tensor *t = &st.tensors[i];
        e[i] = (st_entry){.name = t->name,
                          .dtype = "F32",
                          .n_dims = t->n_dims,
                          .shape = {t->shape[0], t->n_dims > 1 ? t->shape[1] : 0},
                          .data = t->data,
                          .n_bytes = t->n_bytes};
    }
    write_safetensors(dir, e, st.n_tensors);
    safetensors_close(&st);
    free(e);
    fingerprint_of(dir, c);
    ck_assert_str_ne(a, c);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}
END_TEST

int main(void) {
    const char *td = getenv("KVSERVE_TESTDATA");
    snprintf(model_dir, sizeof model_dir, "%s/models/stories260K", td ? td : "");
    struct stat sb;
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/model.safetensors", model_dir);
    if (!td || stat(probe, &sb) != 0) {
        printf("SKIP: needs stories260K (outside data, not in the repository): %s not found; "
               "set KVSERVE_TESTDATA\n",
               probe);
        return 77;
    }
    Suite *s = suite_create("llama");
    TCase *tc = tcase_create("stories260K");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, greedy_from_bos_reproduces_llama2c);
    tcase_add_test(tc, greedy_once_upon_a_time_matches_transformers);
    tcase_add_test(tc, batch_of_sequences_equals_each_alone);
    tcase_add_test(tc, chunked_prefill_equals_one_shot);
    tcase_add_test(tc, layer_waits_are_queued_and_never_recorded);
    tcase_add_test(tc, progress_reaches_total_weight_bytes);
    tcase_add_test(tc, dummy_weights_are_deterministic_and_finite);
    tcase_add_test(tc, fingerprint_ignores_mtime_and_follows_header);
    tcase_add_test(tc, rewritten_model_loads);
    tcase_add_test(tc, missing_tensor_is_named);
    tcase_add_test(tc, wrong_shape_is_named);
    tcase_add_test(tc, unsupported_dtype_is_named);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
