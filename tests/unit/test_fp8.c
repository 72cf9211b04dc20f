/* FP8 on the CPU backend: an e4m3 KV cache and FP8 weights against the f32 path.
 *
 * On the CPU backend, or on CUDA with KVSERVE_TEST_DEVICE=cuda (the gpu suite runs it so).
 * 1. fp8 KV (kv_cache_dtype fp8, scales 1.0) and online FP8 weights (quantization fp8) on the
 *    transformers fixtures (tests/fixtures/models) and on stories260K (KVSERVE_TESTDATA): logits
 *    vs the f32 reference (transformers' logits for the fixtures, our f32 path for stories260K,
 *    which test_llama checks against transformers and llama2.c), logprob errors of the
 *    reference's greedy token, and teacher-forced greedy agreement wherever the reference's choice
 *    is clear.
 *
 *    Tolerance, on the relative error of a row of logits |got - ref|_2 / |ref|_2: mean over the
 *    rows <= MEAN_REL_L2 = 0.15, every row <= ROW_REL_L2 = 0.5; mean |d logprob| of the
 *    reference's argmax <= MEAN_DLOGPROB = 0.25 nats; the argmax equal wherever the reference's
 *    top-2 gap exceeds CLEAR_REL = 0.25 of its largest |logit|. Why: e4m3 keeps 3 mantissa bits,
 *    so each stored K/V element (or weight) is off by at most 2^-4 of its size, RMS 2^-4/sqrt(3)
 *    = 0.036. A logit sums such independent rounding errors over the few quantized operands it
 *    depends on (K, V of each layer; 7 matrices per layer for weights), so its relative error
 *    grows like the square root of their count: 0.04-0.05 measured for fp8 KV, 0.03-0.09 for
 *    FP8 weights (printed below). 0.15 is 4x that RMS, while a wrong scale, a byte or layout
 *    error or a missed dequantization gives the logits of another model (relative error ~1);
 *    the Gemma fixtures' rel-L2 and logprob bounds are 2x these (GEMMA_WIDEN says why).
 *    One row may be an outlier (a short context where one rounding dominates: 0.32 worst
 *    measured), hence the looser per-row bound. A logprob moves by the token's logit error less
 *    its softmax-weighted mean: about the relative error times the logit size (1-3 in these
 *    models), 0.04-0.14 measured, hence 0.25 nats. Greedy: the argmax may move only where the
 *    reference's top-2 gap is within the logit error; CLEAR_REL is above the largest
 *    max |d logit| / max |ref| measured (0.2), so the ids must agree until such a near-tie.
 * 2. FP8 checkpoints: stories260K written in the compressed-tensors layout (per-channel
 *    weight_scale), as quant_method fp8 per tensor (weight_scale_inv) and block-wise (16 x 16
 *    blocks) load to exactly the logits of an f32 checkpoint holding the dequantized weights,
 *    computed here from the e4m3 bytes (same math, so 1e-5); KV scales (self_attn.k_scale /
 *    v_scale) are read; non-FP8 quantization configs are refused naming the method. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/cpu/cpu_backend.h"
#include "model/llama.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tests/unit/fixture_support.h"

#define MEAN_REL_L2   0.15
#define ROW_REL_L2    0.5
#define MEAN_DLOGPROB 0.25
#define CLEAR_REL     0.25
/* The Gemma 2/3 fixtures (issue 17) are about twice as sensitive to the same rounding: fp8 KV
 * alone measures 0.11 mean rel L2 there (0.04-0.05 on the others), FP8 weights 0.17-0.18 and
 * both 0.19-0.22 (the same 1.6-1.9x over fp8 KV alone as on the others), mean |d logprob| up to
 * 0.29, worst row 0.58: their mean rel-L2 and logprob bounds are widened by this factor, the
 * per-row bound by half of it (0.75: still below the ~1 of a wrong scale or layout); the argmax
 * bound stays. */
#define GEMMA_WIDEN 2.0
#define BLOCK       16

static char stories_dir[4096];
/* KVSERVE_TEST_DEVICE=cuda (the gpu suite) runs the fp8 paths on the GPU; the references stay
 * the transformers files and the CPU backend's f32 path */
static const char *device = "cpu";
static char fixtures[FIXTURE_MAX][FIXTURE_PATH_MAX];
static int n_fixtures;

/* --- a model on the CPU backend with an f32 or fp8 KV pool --- */

typedef struct runner {
    backend *be;
    llama_model m;
    backend_kv_layout l;
    void *pool;
    int max_blocks;
} runner;

static void runner_init_on(runner *r, const char *dev, const char *dir, bool fp8_kv,
                           bool fp8_weights, int max_tokens) {
    kv_error err = {{0}};
    r->be = backend_create(dev, 2, &err);
    ck_assert_msg(r->be != NULL, "%s", err.msg);
    ck_assert(backend_set_kv_cache_dtype(r->be, fp8_kv ? "fp8" : "auto", &err) == 0);
    model_load_options o = {
        .format = MODEL_LOAD_SAFETENSORS, .max_tokens = max_tokens, .quantize_fp8 = fp8_weights};
    ck_assert_msg(llama_load_opts(&r->m, r->be, dir, &o, &err) == 0, "%s: %s", dir, err.msg);
    r->l = llama_kv_layout(&r->m, BLOCK);
    r->max_blocks = (max_tokens + BLOCK - 1) / BLOCK;
    r->pool = r->be->ops->dev_alloc(r->be, r->l.block_bytes * (size_t)r->max_blocks);
}

/* On the device under test. */
static void runner_init(runner *r, const char *dir, bool fp8_kv, bool fp8_weights, int max_tokens) {
    runner_init_on(r, device, dir, fp8_kv, fp8_weights, max_tokens);
}

static void runner_free(runner *r) {
    r->be->ops->dev_free(r->be, r->pool);
    llama_free(&r->m);
    backend_destroy(r->be);
}

/* One sequence (blocks in reverse order): n tokens at [pos0, pos0 + n), logits of every one. */
static void runner_step(runner *r, const int32_t *tokens, int n, int pos0, float *logits) {
    int32_t *pos = malloc((size_t)n * 4), *rows = malloc((size_t)n * 4);
    int32_t *table = malloc((size_t)r->max_blocks * 4);
    for (int i = 0; i < n; i++) pos[i] = pos0 + i, rows[i] = i;
    for (int j = 0; j < r->max_blocks; j++) table[j] = r->max_blocks - 1 - j;
    int32_t seq_start[2] = {0, n}, seq_len = pos0 + n;
    backend_batch b = {.n_tokens = n,
                       .n_seqs = 1,
                       .tokens = tokens,
                       .positions = pos,
                       .seq_start = seq_start,
                       .seq_len = &seq_len,
                       .block_table = table,
                       .max_blocks = r->max_blocks,
                       .n_out = n,
                       .out_rows = rows};
    llama_forward(&r->m, &b, r->pool, &r->l, logits);
    free(pos), free(rows), free(table);
}

/* --- comparing rows of logits --- */

typedef struct row_stats {
    double worst_diff;                 /* max |d logit| */
    double worst_rel_l2, sum_rel_l2;   /* |got - ref|_2 / |ref|_2 per row */
    double max_dlogprob, sum_dlogprob; /* of the reference's argmax token */
    int n_rows, n_clear, n_same_clear, n_same;
    double clear_rel; /* a choice is clear above this share of the largest |logit| (0: CLEAR_REL) */
} row_stats;

static double logsumexp(const float *x, int n) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, x[i]);
    for (int i = 0; i < n; i++) s += exp(x[i] - mx);
    return mx + log(s);
}

/* Adds one row: compared with ref, whose argmax is the reference's choice. */
static void row_add(row_stats *st, const float *got, const float *ref, int vocab) {
    int ref_id = fixture_argmax(ref, vocab);
    double second = -INFINITY;
    for (int j = 0; j < vocab; j++)
        if (j != ref_id) second = fmax(second, ref[j]);
    double ref_gap = ref[ref_id] - second;
    double scale = 0, d = 0, e2 = 0, r2 = 0;
    for (int i = 0; i < vocab; i++) scale = fmax(scale, fabs(ref[i]));
    for (int i = 0; i < vocab; i++)
        e2 += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]), r2 += (double)ref[i] * ref[i];
    double rel = sqrt(e2 / r2);
    if (!(rel <= st->worst_rel_l2)) st->worst_rel_l2 = rel;
    st->sum_rel_l2 += rel;
    for (int i = 0; i < vocab; i++) d = fmax(d, fabs((double)got[i] - ref[i]));
    if (d != d) d = INFINITY;
    if (d > st->worst_diff) st->worst_diff = d;
    double lp_got = got[ref_id] - logsumexp(got, vocab),
           lp_ref = ref[ref_id] - logsumexp(ref, vocab);
    double dl = fabs(lp_got - lp_ref);
    st->max_dlogprob = fmax(st->max_dlogprob, dl);
    st->sum_dlogprob += dl;
    st->n_rows++;
    int mine = fixture_argmax(got, vocab);
    st->n_same += mine == ref_id;
    if (ref_gap > (st->clear_rel > 0 ? st->clear_rel : CLEAR_REL) * scale) {
        st->n_clear++;
        st->n_same_clear += mine == ref_id;
    }
}

/* widen: the rel-L2 and logprob bounds' factor (1, or GEMMA_WIDEN for the Gemma fixtures) */
static void stats_check_widened(const char *what, const row_stats *st, double widen) {
    const double mean_bound = MEAN_REL_L2 * widen, row_bound = ROW_REL_L2 * (1 + (widen - 1) / 2),
                 lp_bound = MEAN_DLOGPROB * widen;
    double mean_l2 = st->sum_rel_l2 / st->n_rows, mean_lp = st->sum_dlogprob / st->n_rows;
    printf("%-34s %3d rows: rel L2 mean %.3f (%.0f%% of %g) worst %.3f (%.0f%% of %g); "
           "|d logprob| mean %.3f (%.0f%% of %g) max %.3f; max |d logit| %.3g; argmax equal "
           "%d/%d, where clear %d/%d\n",
           what, st->n_rows, mean_l2, 100 * mean_l2 / mean_bound, mean_bound, st->worst_rel_l2,
           100 * st->worst_rel_l2 / row_bound, row_bound, mean_lp, 100 * mean_lp / lp_bound,
           lp_bound, st->max_dlogprob, st->worst_diff, st->n_same, st->n_rows, st->n_same_clear,
           st->n_clear);
    fflush(stdout);
    ck_assert_msg(mean_l2 <= mean_bound && st->worst_rel_l2 <= row_bound,
                  "%s: logits differ by %g relative", what, mean_l2);
    ck_assert_msg(mean_lp <= lp_bound, "%s: logprobs differ by %g", what, mean_lp);
    ck_assert_msg(st->n_same_clear == st->n_clear, "%s: argmax differs where the choice is clear",
                  what);
}

static void stats_check(const char *what, const row_stats *st) {
    stats_check_widened(what, st, 1.0);
}

/* --- 1a. the transformers fixtures --- */

static void fixture_check(const char *dir, bool fp8_kv, bool fp8_weights) {
    fixture fx;
    fixture_load(dir, &fx);
    int vocab = fx.vocab, n_greedy = fx.n_greedy;
    float *ref = fixture_read_f32(dir, "logits.bin", (size_t)fx.n_rows * vocab);
    float *ref_dec =
        fixture_read_f32(dir, "decode_logits.bin", (size_t)fx.n_prompts * n_greedy * vocab);
    runner r;
    runner_init(&r, dir, fp8_kv, fp8_weights, fx.longest);
    bool gemma = r.m.cfg.arch == HF_ARCH_GEMMA2 || r.m.cfg.arch == HF_ARCH_GEMMA3;
    /* Gemma's logit errors are twice the others' already in bf16 (test_bf16_emulation), so a
     * choice is clear only above twice the gap (the H200 flipped one of 30 at 0.25) */
    row_stats st = {.clear_rel = gemma ? CLEAR_REL * GEMMA_WIDEN : CLEAR_REL};
    for (int s = 0; s < fx.n_prompts; s++) {
        const fixture_prompt *p = &fx.prompts[s];
        /* the prompt at once (every position), then teacher-forced decode steps */
        float *got = malloc((size_t)p->n * vocab * sizeof *got);
        runner_step(&r, p->ids, p->n, 0, got);
        for (int i = 0; i < p->n; i++) {
            const float *want = ref + (size_t)(p->row_offset + i) * vocab;
            row_add(&st, got + (size_t)i * vocab, want, vocab);
        }
        float *step = malloc((size_t)vocab * sizeof *step);
        for (int i = 0; i < n_greedy; i++) {
            const float *want = ref_dec + ((size_t)s * n_greedy + i) * vocab;
            const float *have = got + (size_t)(p->n - 1) * vocab;
            if (i > 0) {
                runner_step(&r, &p->greedy[i - 1], 1, p->n + i - 1, step);
                have = step;
            }
            ck_assert_int_eq(fixture_argmax(want, vocab), p->greedy[i]);
            row_add(&st, have, want, vocab);
        }
        free(got), free(step);
    }
    char what[128];
    snprintf(what, sizeof what, "%s %s%s", fx.name, fp8_kv ? "fp8-kv" : "",
             fp8_weights ? (fp8_kv ? "+fp8-w" : "fp8-w") : "");
    stats_check_widened(what, &st, gemma ? GEMMA_WIDEN : 1.0);
    runner_free(&r);
    free(ref), free(ref_dec);
    fixture_free(&fx);
}

START_TEST(fixtures_fp8_kv) {
    fixture_check(fixtures[_i], true, false);
}
END_TEST

START_TEST(fixtures_fp8_weights) {
    fixture_check(fixtures[_i], false, true);
    fixture_check(fixtures[_i], true, true);
}
END_TEST

/* --- 1b. stories260K, a trained model --- */

/* The ids of expected.json's greedy_from_bos: prompt [1] then 200 greedy tokens. */
static int32_t *stories_ids(int *n) {
    char path[4200];
    snprintf(path, sizeof path, "%s/expected.json", stories_dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    ck_assert_msg(root != NULL, "%s: %s", path, je.text);
    json_t *g = json_object_get(root, "greedy_from_bos");
    int n_ids = 0;
    int32_t *gen = fixture_json_ids(json_object_get(g, "ids"), &n_ids);
    int32_t *ids = malloc((size_t)(n_ids + 1) * sizeof *ids);
    ids[0] = 1;
    memcpy(ids + 1, gen, (size_t)n_ids * sizeof *ids);
    free(gen);
    json_decref(root);
    *n = n_ids + 1;
    return ids;
}

/* Teacher-forced over llama2.c's 200 tokens in one prefill (every position's logits), then
 * greedy free-running from BOS: the first step where it leaves llama2.c's ids must be a near-tie
 * of the f32 path. */
static void stories_check(bool fp8_kv, bool fp8_weights) {
    int n;
    int32_t *ids = stories_ids(&n);
    runner ref, got;
    runner_init_on(&ref, "cpu", stories_dir, false, false, n);
    runner_init(&got, stories_dir, fp8_kv, fp8_weights, n);
    int vocab = ref.m.cfg.vocab_size;
    float *lr = malloc((size_t)n * vocab * sizeof *lr),
          *lg = malloc((size_t)n * vocab * sizeof *lg);
    runner_step(&ref, ids, n, 0, lr);
    runner_step(&got, ids, n, 0, lg);
    row_stats st = {0};
    for (int i = 0; i < n - 1; i++) {
        row_add(&st, lg + (size_t)i * vocab, lr + (size_t)i * vocab, vocab);
    }
    char what[64];
    snprintf(what, sizeof what, "stories260K %s%s", fp8_kv ? "fp8-kv" : "",
             fp8_weights ? (fp8_kv ? "+fp8-w" : "fp8-w") : "");
    stats_check(what, &st);

    /* free-running greedy decode, one token per step */
    int agree = 0;
    int32_t tok = ids[0];
    float *step = malloc((size_t)vocab * sizeof *step);
    for (int i = 0; i < n - 1; i++) {
        runner_step(&got, &tok, 1, i, step);
        tok = fixture_argmax(step, vocab);
        if (tok != ids[i + 1]) {
            const float *want = lr + (size_t)i * vocab;
            double scale = 0;
            for (int j = 0; j < vocab; j++) scale = fmax(scale, fabs(want[j]));
            double gap = want[ids[i + 1]] - want[tok];
            printf("%-34s greedy from BOS: %d/%d tokens equal to llama2.c, then a near-tie "
                   "(f32 gap %.3g <= %.3g)\n",
                   what, agree, n - 1, gap, CLEAR_REL * scale);
            ck_assert_msg(gap <= CLEAR_REL * scale, "%s: greedy left llama2.c at step %d", what, i);
            break;
        }
        agree++;
    }
    if (agree == n - 1)
        printf("%-34s greedy from BOS: %d/%d tokens equal to llama2.c\n", what, agree, n - 1);
    fflush(stdout);
    free(step), free(lr), free(lg), free(ids);
    runner_free(&ref);
    runner_free(&got);
}

START_TEST(stories_fp8_kv) {
    stories_check(true, false);
}
END_TEST

START_TEST(stories_fp8_weights) {
    stories_check(false, true);
    stories_check(true, true);
}
END_TEST

/* --- 0. the CPU ops on an e4m3 pool --- */

/* kv_write stores e4m3(x / scale) at the layout's offsets, and attention equals a float64
 * attention over the dequantized values e4m3 * scale (same values, so only summation order
 * differs: |diff| <= 1e-5 + 1e-5 |ref|). Layer 1 has scales 0.25 (K) and 3.0 (V). */
START_TEST(cpu_ops_on_an_fp8_pool) {
    enum { L = 2, KVH = 2, H = 4, HD = 16, BS = 4, T = 11, MAXB = 3, LAYER = 1 };
    const float scales[2 * L] = {1.0f, 1.0f, 0.25f, 3.0f};
    backend *be = cpu_backend_create(2);
    kv_error err;
    ck_assert(backend_set_kv_cache_dtype(be, "fp8_e4m3", &err) == 0);
    ck_assert_int_eq(be->kv_dtype, KV_DTYPE_F8_E4M3);
    ck_assert_int_eq(backend_set_kv_cache_dtype(be, "fp8_e5m2", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "fp8_e5m2"));
    backend_kv_layout l = {.n_layers = L,
                           .n_kv_heads = KVH,
                           .head_dim = HD,
                           .block_size = BS,
                           .dtype = KV_DTYPE_F8_E4M3,
                           .kv_scales = scales};
    backend_kv_layout_finish(&l);
    ck_assert_uint_eq(l.block_bytes, (size_t)L * 2 * KVH * BS * HD); /* one byte per element */
    int row = (H + 2 * KVH) * HD;
    float *qkv = malloc((size_t)T * row * sizeof *qkv);
    uint64_t rng = 12345;
    for (int i = 0; i < T * row; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        qkv[i] = (float)((double)(rng >> 11) / 9007199254740992.0 * 4 - 2);
    }
    int32_t tokens[T], pos[T], seq_start[2] = {0, T}, seq_len = T, table[MAXB] = {2, 0, 1};
    for (int t = 0; t < T; t++) tokens[t] = 0, pos[t] = t;
    backend_batch b = {.n_tokens = T,
                       .n_seqs = 1,
                       .tokens = tokens,
                       .positions = pos,
                       .seq_start = seq_start,
                       .seq_len = &seq_len,
                       .block_table = table,
                       .max_blocks = MAXB,
                       .n_out = 0,
                       .out_rows = NULL};
    uint8_t *pool = calloc(MAXB, l.block_bytes);
    float *out = malloc((size_t)T * H * HD * sizeof *out);
    be->ops->step_begin(be, &b);
    be->ops->kv_write(be, pool, &l, LAYER, qkv + H * HD, qkv + (H + KVH) * HD, row);
    /* plain, then a sliding window of 5 with scores soft-capped at 3 (issue 17) */
    for (int var = 0; var < 2; var++) {
        backend_attn_params ap = {.scale = 0.25f, .softcap = var ? 3.0f : 0, .window = var ? 5 : 0};
        be->ops->attention(be, out, qkv, row, pool, &l, LAYER, H, &ap);
        double worst = 0;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                int kh = h / (H / KVH), lo = ap.window && t + 1 > ap.window ? t + 1 - ap.window : 0;
                double sc[T], mx = -INFINITY, sum = 0;
                for (int j = lo; j <= t; j++) {
                    double dot = 0;
                    for (int d = 0; d < HD; d++) {
                        float k = qkv[(size_t)j * row + (H + kh) * HD + d];
                        uint8_t stored = pool[(size_t)table[j / BS] * l.block_bytes +
                                              backend_kv_offset(&l, LAYER, 0, kh, j % BS) + d];
                        ck_assert_int_eq(stored, kv_f32_to_e4m3(k * (1.0f / 0.25f)));
                        dot += (double)qkv[(size_t)t * row + h * HD + d] * kv_e4m3_to_f32(stored) *
                               0.25;
                    }
                    sc[j] = dot * 0.25;
                    if (ap.softcap > 0) sc[j] = ap.softcap * tanh(sc[j] / ap.softcap);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = lo; j <= t; j++) sum += sc[j] = exp(sc[j] - mx);
                for (int d = 0; d < HD; d++) {
                    double o = 0;
                    for (int j = lo; j <= t; j++) {
                        float v = qkv[(size_t)j * row + (H + KVH + kh) * HD + d];
                        uint8_t stored = pool[(size_t)table[j / BS] * l.block_bytes +
                                              backend_kv_offset(&l, LAYER, 1, kh, j % BS) + d];
                        ck_assert_int_eq(stored, kv_f32_to_e4m3(v * (1.0f / 3.0f)));
                        o += sc[j] / sum * kv_e4m3_to_f32(stored) * 3.0;
                    }
                    double got = out[((size_t)t * H + h) * HD + d];
                    worst = fmax(worst, fabs(got - o) / (1e-5 + 1e-5 * fabs(o)));
                }
            }
        printf(
            "cpu fp8 attention (window %d, softcap %g) vs float64 of the dequantized pool: %.1f%% "
            "of atol 1e-5 + rtol 1e-5\n",
            ap.window, (double)ap.softcap, 100 * worst);
        ck_assert(worst <= 1);
    }
    free(qkv), free(pool), free(out);
    backend_destroy(be);
}
END_TEST

/* --- 2. FP8 checkpoints written here --- */

typedef struct st_out {
    json_t *header;
    char *data;
    size_t len;
} st_out;

static void st_add(st_out *o, const char *name, const char *dtype, int n_dims, const int64_t *shape,
                   const void *bytes, size_t n_bytes) {
    json_t *sh = json_array();
    for (int d = 0; d < n_dims; d++) json_array_append_new(sh, json_integer(shape[d]));
    json_object_set_new(o->header, name,
                        json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtype, "shape", sh,
                                  "data_offsets", (json_int_t)o->len,
                                  (json_int_t)(o->len + n_bytes)));
    o->data = realloc(o->data, o->len + n_bytes);
    memcpy(o->data + o->len, bytes, n_bytes);
    o->len += n_bytes;
}

static void st_write(st_out *o, const char *dir) {
    char *text = json_dumps(o->header, JSON_COMPACT);
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 8; i++) fputc((int)((padded >> (8 * i)) & 0xff), f);
    fwrite(text, 1, len, f);
    for (size_t i = len; i < padded; i++) fputc(' ', f);
    fwrite(o->data, 1, o->len, f);
    fclose(f);
    free(text);
    json_decref(o->header);
    free(o->data);
}

typedef enum ckpt_kind { CKPT_CT_CHANNEL, CKPT_FP8_TENSOR, CKPT_FP8_BLOCK } ckpt_kind;

static bool is_projection(const char *name) {
    return strstr(name, "_proj.weight") != NULL;
}

/* Writes two checkpoints of stories260K: dir_q with its projections in e4m3 plus scales (and
 * KV scales k 0.5, v 2.0 on layer 1), dir_ref with the dequantized values as f32; config.json
 * of each from stories260K's, with quant_json as quantization_config in dir_q. */
static void write_checkpoints(const char *dir_q, const char *dir_ref, ckpt_kind kind,
                              const char *quant_json) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", stories_dir);
    size_t len;
    kv_error err;
    char *text = kv_read_file(path, 1 << 20, &len, &err);
    ck_assert_ptr_nonnull(text);
    json_t *cfg = json_loads(text, 0, NULL);
    free(text);
    snprintf(path, sizeof path, "%s/config.json", dir_ref);
    ck_assert(json_dump_file(cfg, path, 0) == 0);
    json_object_set_new(cfg, "quantization_config", json_loads(quant_json, 0, NULL));
    snprintf(path, sizeof path, "%s/config.json", dir_q);
    ck_assert(json_dump_file(cfg, path, 0) == 0);
    json_decref(cfg);

    safetensors_model st = {0};
    ck_assert_msg(safetensors_open(&st, stories_dir, &err) == 0, "%s", err.msg);
    st_out q = {json_object(), NULL, 0}, r = {json_object(), NULL, 0};
    for (int i = 0; i < st.n_tensors; i++) {
        const safetensors_tensor *t = &st.tensors[i];
        ck_assert(t->dtype == KV_DTYPE_F32);
        const float *w = t->data;
        if (!is_projection(t->name)) {
            st_add(&q, t->name, "F32", t->n_dims, t->shape, w, t->n_bytes);
            st_add(&r, t->name, "F32", t->n_dims, t->shape, w, t->n_bytes);
            continue;
        }
        size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1], bs = 16;
        size_t nbr = (rows + bs - 1) / bs, nbc = (cols + bs - 1) / bs;
        size_t n_sc = kind == CKPT_CT_CHANNEL ? rows : kind == CKPT_FP8_TENSOR ? 1 : nbr * nbc;
        float *sc = calloc(n_sc, sizeof *sc), *deq = malloc(rows * cols * sizeof *deq);
        uint8_t *w8 = malloc(rows * cols);
        /* scale = amax / 448 over each group, as llm-compressor / DeepSeek make them */
        for (size_t a = 0; a < rows; a++)
            for (size_t b = 0; b < cols; b++) {
                size_t g = kind == CKPT_CT_CHANNEL   ? a
                           : kind == CKPT_FP8_TENSOR ? 0
                                                     : (a / bs) * nbc + b / bs;
                sc[g] = fmaxf(sc[g], fabsf(w[a * cols + b]) / 448.0f);
            }
        for (size_t a = 0; a < rows; a++)
            for (size_t b = 0; b < cols; b++) {
                size_t g = kind == CKPT_CT_CHANNEL   ? a
                           : kind == CKPT_FP8_TENSOR ? 0
                                                     : (a / bs) * nbc + b / bs;
                w8[a * cols + b] = kv_f32_to_e4m3(w[a * cols + b] / sc[g]);
                deq[a * cols + b] = kv_e4m3_to_f32(w8[a * cols + b]) * sc[g];
            }
        st_add(&q, t->name, "F8_E4M3", 2, t->shape, w8, rows * cols);
        st_add(&r, t->name, "F32", 2, t->shape, deq, rows * cols * 4);
        char sname[160];
        int64_t shape[2] = {(int64_t)rows, 1};
        if (kind == CKPT_CT_CHANNEL) {
            snprintf(sname, sizeof sname, "%s_scale", t->name);
            st_add(&q, sname, "F32", 2, shape, sc, n_sc * 4);
        } else if (kind == CKPT_FP8_TENSOR) {
            snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
            st_add(&q, sname, "F32", 0, shape, sc, 4);
        } else {
            snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
            shape[0] = (int64_t)nbr, shape[1] = (int64_t)nbc;
            st_add(&q, sname, "F32", 2, shape, sc, n_sc * 4);
        }
        free(sc), free(deq), free(w8);
    }
    float ks = 0.5f, vs = 2.0f;
    st_add(&q, "model.layers.1.self_attn.k_scale", "F32", 0, NULL, &ks, 4);
    st_add(&q, "model.layers.1.self_attn.v_scale", "F32", 0, NULL, &vs, 4);
    safetensors_close(&st);
    st_write(&q, dir_q);
    st_write(&r, dir_ref);
}

static void remove_dir(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    rmdir(dir);
}

static void checkpoint_check(ckpt_kind kind, const char *quant_json, const char *what) {
    char dq[] = "/tmp/kvserve_fp8_q_XXXXXX", dr[] = "/tmp/kvserve_fp8_r_XXXXXX";
    ck_assert(mkdtemp(dq) && mkdtemp(dr));
    write_checkpoints(dq, dr, kind, quant_json);
    int n;
    int32_t *ids = stories_ids(&n);
    n = 64;
    runner q, r;
    runner_init(&q, dq, false, false, n);
    runner_init_on(&r, "cpu", dr, false, false, n);
    /* same math on the CPU: 1e-5; on CUDA bf16 activations (and the bf16 rounding of dequantized
     * weights in prefill matmuls): test_gpu_model's 3e-2 * sqrt(2) row relative L2 */
    bool cpu = strcmp(device, "cpu") == 0;
    ck_assert_ptr_null(q.m.kv_scales); /* KV scales are read for fp8 KV only */
    int vocab = q.m.cfg.vocab_size;
    float *lq = malloc((size_t)n * vocab * sizeof *lq),
          *lr = malloc((size_t)n * vocab * sizeof *lr);
    runner_step(&q, ids, n, 0, lq);
    runner_step(&r, ids, n, 0, lr);
    double worst = 0;
    if (cpu) {
        for (size_t i = 0; i < (size_t)n * vocab; i++)
            worst = fmax(worst, fabs((double)lq[i] - lr[i]) / (1e-5 + 1e-5 * fabs(lr[i])));
    } else {
        for (int t = 0; t < n; t++) {
            double e2 = 0, r2 = 0;
            for (int i = 0; i < vocab; i++) {
                double d = (double)lq[(size_t)t * vocab + i] - lr[(size_t)t * vocab + i];
                e2 += d * d, r2 += (double)lr[(size_t)t * vocab + i] * lr[(size_t)t * vocab + i];
            }
            worst = fmax(worst, sqrt(e2 / r2) / (3e-2 * sqrt(2.0)));
        }
    }
    printf("%-34s vs f32 of its dequantized weights on the cpu: worst %.1f%% of %s\n", what,
           100 * worst, cpu ? "atol 1e-5 + rtol 1e-5" : "row rel L2 4.2e-2");
    ck_assert_msg(worst <= 1, "%s: logits differ from the dequantized f32 checkpoint", what);
    runner_free(&q);

    /* with an fp8 KV cache the checkpoint's k_scale / v_scale are used, others are 1.0 */
    runner_init(&q, dq, true, false, n);
    ck_assert_ptr_nonnull(q.m.kv_scales);
    ck_assert_float_eq(q.m.kv_scales[2 * 1 + 0], 0.5f);
    ck_assert_float_eq(q.m.kv_scales[2 * 1 + 1], 2.0f);
    ck_assert_float_eq(q.m.kv_scales[0], 1.0f);
    ck_assert(q.l.kv_scales == q.m.kv_scales);
    runner_step(&q, ids, n, 0, lq);
    row_stats st = {0};
    for (int i = 0; i < n; i++) row_add(&st, lq + (size_t)i * vocab, lr + (size_t)i * vocab, vocab);
    char w2[96];
    snprintf(w2, sizeof w2, "%s + fp8-kv (scales)", what);
    stats_check(w2, &st);
    runner_free(&q);
    runner_free(&r);
    free(lq), free(lr), free(ids);
    remove_dir(dq);
    remove_dir(dr);
}

START_TEST(compressed_tensors_per_channel_checkpoint) {
    checkpoint_check(CKPT_CT_CHANNEL,
                     "{\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", "
                     "\"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], \"weights\": "
                     "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"channel\", "
                     "\"dynamic\": false, \"symmetric\": true}, \"input_activations\": "
                     "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"token\", "
                     "\"dynamic\": true, \"symmetric\": true}}}, \"ignore\": [\"lm_head\"]}",
                     "compressed-tensors per-channel");
}
END_TEST

START_TEST(fp8_per_tensor_checkpoint) {
    checkpoint_check(CKPT_FP8_TENSOR,
                     "{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", \"fmt\": "
                     "\"e4m3\"}",
                     "quant_method fp8 per-tensor");
}
END_TEST

START_TEST(fp8_block_checkpoint) {
    checkpoint_check(CKPT_FP8_BLOCK,
                     "{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", "
                     "\"weight_block_size\": [16, 16]}",
                     "quant_method fp8 16x16 blocks");
}
END_TEST

/* The KV dtype and online FP8 weights enter the model fingerprint (the root of every block hash),
 * so blocks of one never match requests of another; an fp8 block is a quarter of an f32 one. */
START_TEST(fingerprint_and_block_bytes_follow_the_kv_dtype) {
    char fp[3][65];
    size_t bytes[3];
    for (int i = 0; i < 3; i++) {
        kv_error err = {{0}};
        backend *be = cpu_backend_create(1);
        ck_assert(backend_set_kv_cache_dtype(be, i == 1 ? "fp8" : "auto", &err) == 0);
        model_load_options o = {
            .format = MODEL_LOAD_SAFETENSORS, .max_tokens = 8, .quantize_fp8 = i == 2};
        model *m = model_load(stories_dir, be, &o, &err);
        ck_assert_msg(m != NULL, "%s", err.msg);
        memcpy(fp[i], m->fingerprint, sizeof fp[i]);
        bytes[i] = model_kv_layout(m, 16).block_bytes;
        model_free(m);
        backend_destroy(be);
    }
    ck_assert_str_ne(fp[0], fp[1]);
    ck_assert_str_ne(fp[0], fp[2]);
    ck_assert_str_ne(fp[1], fp[2]);
    ck_assert_uint_eq(bytes[1] * 4, bytes[0]);
    ck_assert_uint_eq(bytes[2], bytes[0]);
}
END_TEST

/* quantization configs that are not FP8 are refused with the method in the message */
START_TEST(other_quantization_is_refused_by_name) {
    static const struct {
        const char *q, *needle;
    } cases[] = {
        {"{\"quant_method\": \"gptq\", \"bits\": 4}", "'gptq'"},
        {"{\"quant_method\": \"awq\", \"bits\": 4}", "'awq'"},
        {"{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}", "'bitsandbytes'"},
        {"{\"load_in_8bit\": true}", "no quant_method"},
        {"{\"quant_method\": \"fp8\", \"fmt\": \"e5m2\"}", "e4m3"},
        {"{\"quant_method\": \"compressed-tensors\", \"config_groups\": {\"g\": {\"weights\": "
         "{\"num_bits\": 8, \"type\": \"int\", \"strategy\": \"channel\"}}}}",
         "8-bit int"},
        {"{\"quant_method\": \"compressed-tensors\", \"config_groups\": {\"g\": {\"weights\": "
         "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"group\"}}}}",
         "4-bit int"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char json[1024];
        snprintf(json, sizeof json,
                 "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
                 "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"intermediate_size\": "
                 "128, \"vocab_size\": 32, \"quantization_config\": %s}",
                 cases[i].q);
        hf_config cfg;
        kv_error err = {{0}};
        ck_assert_int_eq(hf_config_parse(&cfg, json, strlen(json), &err), -1);
        printf("refused: %s\n", err.msg);
        ck_assert_msg(strstr(err.msg, cases[i].needle), "'%s' lacks '%s'", err.msg,
                      cases[i].needle);
    }
}
END_TEST

int main(void) {
    const char *src = getenv("KVSERVE_SOURCE"), *td = getenv("KVSERVE_TESTDATA");
    const char *dev = getenv("KVSERVE_TEST_DEVICE");
    if (dev && strcmp(dev, "cuda") == 0) {
        if (!backend_cuda_available()) {
            printf("SKIP: KVSERVE_TEST_DEVICE=cuda but no usable CUDA device\n");
            return 77;
        }
        device = "cuda";
    }
    n_fixtures = fixture_list(src ? src : ".", fixtures, FIXTURE_MAX);
    snprintf(stories_dir, sizeof stories_dir, "%s/models/stories260K", td ? td : "");
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/model.safetensors", stories_dir);
    struct stat sb;
    bool stories = td && stat(probe, &sb) == 0;
    if (!stories) printf("note: %s not found (set KVSERVE_TESTDATA): its cases skipped\n", probe);
    if (n_fixtures == 0) printf("note: no transformers fixture: their cases skipped\n");
    Suite *s = suite_create("fp8");
    TCase *tc = tcase_create("fp8");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, cpu_ops_on_an_fp8_pool);
    tcase_add_test(tc, other_quantization_is_refused_by_name);
    if (n_fixtures) {
        tcase_add_loop_test(tc, fixtures_fp8_kv, 0, n_fixtures);
        tcase_add_loop_test(tc, fixtures_fp8_weights, 0, n_fixtures);
    }
    if (stories) {
        tcase_add_test(tc, fingerprint_and_block_bytes_follow_the_kv_dtype);
        tcase_add_test(tc, stories_fp8_kv);
        tcase_add_test(tc, stories_fp8_weights);
        tcase_add_test(tc, compressed_tensors_per_channel_checkpoint);
        tcase_add_test(tc, fp8_per_tensor_checkpoint);
        tcase_add_test(tc, fp8_block_checkpoint);
    }
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
