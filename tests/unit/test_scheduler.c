/* Engine tests on stories260K and the CPU backend: output against llama2.c's published greedy
 * output, determinism under prefix caching (none, partial, full), preemption and batching, shared
 * prefixes between running requests, cache_salt isolation, stop handling, seeds, prompt logprobs,
 * the engine thread, and no leaked block after any mix of request fates.
 *
 * Tolerance: logprobs of the same request computed in different batches may differ by a few ulps
 * (matmul row blocking and attention chunking depend on the batch); 1e-4 absolute is ~100x the
 * worst difference seen and far below any change in a greedy choice of this model. */
#include <check.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvcache/prefix_cache.h"
#include "server/engine/scheduler.h"
#include "tests/unit/engine_test_env.h"

#define MAX_OUT 512
/* KVSERVE_TEST_DEVICE=cuda runs the same tests on the GPU (the gpu suite does): bf16 activations
 * round each logit to ~3 significant digits, and batch composition changes the GEMM tiling, so
 * logprobs of one request in different batches agree to ~1e-2 there; 0.1 still separates every
 * greedy choice these tests make (stories260K's top-2 gaps on these prompts are far larger, and a
 * flipped choice fails the token comparison anyway). */
#define LP_ATOL (on_cuda ? 1e-1f : 1e-4f)
/* On the GPU the forward pass is not batch-invariant (the GEMM path and tiling depend on the
 * number of rows), so two runs of one request may pick different greedy tokens where the
 * reference's top-2 logprobs are within that noise. There a divergence is accepted, once, and the
 * rest is not compared (the continuations differ from then on); anywhere else it fails. On the
 * CPU backend no divergence is accepted. */
#define NEAR_TIE (2 * LP_ATOL)

static char model_dir[1024];
static bool on_cuda; /* set once in main from KVSERVE_TEST_DEVICE */

typedef struct result {
    int32_t toks[MAX_OUT];
    float lps[MAX_OUT];
    float gap[MAX_OUT]; /* top-1 minus top-2 logprob of each step (params.logprobs >= 2) */
    int n;
    int n_prompt_events;
    int32_t prompt_toks[MAX_OUT];
    float prompt_lps[MAX_OUT];
    int32_t prompt_top[MAX_OUT];
    kv_finish finish;
    int32_t stop_token;
    atomic_bool done; /* polled from the test's thread while the engine thread runs */
    int n_cached_gpu, n_cached_host;
    int after_done; /* events after the last one: must stay 0 */
} result;

static void on_event(void *user, const engine_event *ev) {
    result *r = user;
    if (r->done) {
        r->after_done++;
        return;
    }
    if (ev->is_prompt) {
        ck_assert_int_eq(r->n, 0);
        r->prompt_toks[r->n_prompt_events] = ev->token;
        r->prompt_lps[r->n_prompt_events] = ev->logprob;
        r->prompt_top[r->n_prompt_events++] = ev->n_top > 0 ? ev->top_ids[0] : -1;
        return;
    }
    if (ev->token >= 0) {
        ck_assert_int_lt(r->n, MAX_OUT);
        r->toks[r->n] = ev->token;
        r->gap[r->n] = ev->n_top >= 2 ? ev->top_logprobs[0] - ev->top_logprobs[1] : INFINITY;
        r->lps[r->n++] = ev->logprob;
    }
    if (ev->finish != KV_FINISH_NONE) {
        r->finish = ev->finish;
        r->stop_token = ev->stop_token;
        r->n_cached_gpu = ev->n_cached_gpu;
        r->n_cached_host = ev->n_cached_host;
        r->done = true; /* last: publishes the fields above to a polling thread */
    }
}

/* --- an engine over stories260K --- */

typedef struct engine {
    backend *be;
    model *m;
    scheduler *s;
} engine;

typedef struct engine_opts {
    int n_blocks, max_seqs, budget, max_model_len, max_queue;
    bool no_prefix_cache;
    int eos; /* > 0: replaces the model's eos list */
} engine_opts;

static void engine_open(engine *e, engine_opts o) {
    kv_error err = {{0}};
    e->be = backend_create(on_cuda ? "cuda" : "cpu", 1, &err);
    ck_assert_msg(e->be != NULL, "%s", err.msg);
    int budget = o.budget ? o.budget : 512;
    e->m = model_load(model_dir, e->be, &(model_load_options){.max_tokens = budget}, &err);
    ck_assert_msg(e->m != NULL, "%s", err.msg);
    if (o.eos > 0) {
        e->m->eos_ids[0] = o.eos;
        e->m->n_eos = 1;
    }
    scheduler_config c;
    scheduler_config_default(&c);
    c.n_gpu_blocks = o.n_blocks ? o.n_blocks : 1024;
    c.max_num_seqs = o.max_seqs ? o.max_seqs : 64;
    c.max_num_batched_tokens = budget;
    c.max_model_len = o.max_model_len ? o.max_model_len : 2048;
    if (o.max_queue) c.max_queue = o.max_queue;
    c.enable_prefix_caching = !o.no_prefix_cache;
    c.seed = 7;
    e->s = scheduler_create(e->m, &c, &err);
    ck_assert_msg(e->s != NULL, "%s", err.msg);
}

static void engine_close(engine *e) {
    scheduler_free(e->s);
    model_free(e->m);
    backend_destroy(e->be);
}

static sampler_params greedy(int max_tokens) {
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.logprobs = 2; /* top-2 gaps, for NEAR_TIE */
    return p;
}

static uint64_t submit(engine *e, const int32_t *prompt, int n, const sampler_params *p,
                       const char *salt, result *res) {
    memset(res, 0, sizeof *res);
    engine_request req = {.prompt = prompt,
                          .n_prompt = n,
                          .params = p,
                          .cache_salt = salt,
                          .on_event = on_event,
                          .user = res};
    uint64_t id;
    kv_error err = {{0}};
    ck_assert_msg(scheduler_submit(e->s, &req, &id, &err) == ENGINE_SUBMIT_OK, "%s", err.msg);
    return id;
}

/* Runs one request alone on a fresh engine without prefix caching: the reference. */
static void run_alone(const int32_t *prompt, int n, const sampler_params *p, result *out) {
    engine e;
    engine_open(&e, (engine_opts){.no_prefix_cache = true});
    submit(&e, prompt, n, p, NULL, out);
    scheduler_run_until_idle(e.s);
    ck_assert(out->done);
    engine_close(&e);
}

/* a is the reference. */
static void assert_same(const result *a, const result *b, const char *what) {
    ck_assert_msg(a->done && b->done, "%s: not done", what);
    float worst = 0;
    for (int i = 0; i < a->n && i < b->n; i++) {
        if (on_cuda && a->toks[i] != b->toks[i]) {
            ck_assert_msg(a->gap[i] <= NEAR_TIE, "%s: token %d: %d vs %d, top-2 gap %g > %g", what,
                          i, a->toks[i], b->toks[i], a->gap[i], NEAR_TIE);
            printf("%s: diverged at a near-tie, token %d (top-2 gap %g)\n", what, i, a->gap[i]);
            return;
        }
        ck_assert_msg(a->toks[i] == b->toks[i], "%s: token %d: %d vs %d", what, i, a->toks[i],
                      b->toks[i]);
        float d = fabsf(a->lps[i] - b->lps[i]);
        worst = d > worst ? d : worst;
    }
    ck_assert_msg(a->n == b->n, "%s: %d vs %d tokens", what, a->n, b->n);
    ck_assert_msg(worst <= LP_ATOL, "%s: logprob differs by %g (atol %g)", what, worst, LP_ATOL);
    ck_assert_int_eq(a->finish, b->finish);
}

static void random_tokens(int32_t *t, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = 3 + (int32_t)((seed >> 33) % 509);
    }
}

static void assert_no_leak(engine *e) {
    scheduler_check(e->s);
    scheduler_stats st = scheduler_get_stats(e->s);
    ck_assert_int_eq(st.n_blocks_in_use, 0);
    ck_assert_int_eq(st.n_blocks_free + st.n_blocks_cached_free, st.n_blocks);
    ck_assert_int_eq(st.n_running + st.n_waiting + st.n_loading, 0);
}

/* --- tests --- */

START_TEST(greedy_from_bos_matches_llama2c) {
    char path[1100];
    snprintf(path, sizeof path, "%s/expected.json", model_dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    ck_assert_msg(root != NULL, "%s", jerr.text);
    json_t *ids = json_object_get(json_object_get(root, "greedy_from_bos"), "ids");
    int n = (int)json_array_size(ids);
    ck_assert_int_eq(n, 200);
    engine e;
    engine_open(&e, (engine_opts){0});
    sampler_params p = greedy(n);
    int32_t bos = 1;
    result r;
    submit(&e, &bos, 1, &p, NULL, &r);
    scheduler_run_until_idle(e.s);
    ck_assert(r.done);
    ck_assert_int_eq(r.n, n);
    ck_assert_int_eq(r.finish, KV_FINISH_LENGTH);
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(r.toks[i], (int32_t)json_integer_value(json_array_get(ids, (size_t)i)));
    ck_assert_int_eq(r.after_done, 0);
    assert_no_leak(&e);
    engine_close(&e);
    json_decref(root);
}
END_TEST

/* The same request not cached, partly cached and fully cached (block-aligned prompt: the copied
 * last block; unaligned: a partial tail) gives the reference output. */
START_TEST(output_same_whether_cached_or_not) {
    int lens[] = {96, 101};
    for (int k = 0; k < 2; k++) {
        int n = lens[k];
        int32_t prompt[128], other[128];
        random_tokens(prompt, n, 11);
        memcpy(other, prompt, sizeof prompt);
        random_tokens(other + 40, n - 40, 99); /* shares the first 40 tokens: 2 full blocks */
        sampler_params p = greedy(40);
        result ref, ref_other, r;
        run_alone(prompt, n, &p, &ref);
        run_alone(other, n, &p, &ref_other);

        engine e;
        engine_open(&e, (engine_opts){0});
        submit(&e, other, n, &p, NULL, &r); /* caches the 2 shared blocks */
        scheduler_run_until_idle(e.s);
        assert_same(&r, &ref_other, "uncached");
        ck_assert_int_eq(r.n_cached_gpu, 0);

        submit(&e, prompt, n, &p, NULL, &r); /* partly cached */
        scheduler_run_until_idle(e.s);
        assert_same(&r, &ref, "partly cached");
        ck_assert_int_eq(r.n_cached_gpu, 32);

        submit(&e, prompt, n, &p, NULL, &r); /* fully cached: only the last token is computed */
        scheduler_run_until_idle(e.s);
        assert_same(&r, &ref, "fully cached");
        ck_assert_int_eq(r.n_cached_gpu, n % 16 ? n / 16 * 16 : n - 1);
        scheduler_stats st = scheduler_get_stats(e.s);
        ck_assert_int_eq(st.n_cow_copies, n % 16 ? 0 : 1);
        assert_no_leak(&e);
        engine_close(&e);
    }
}
END_TEST

/* A pool too small for every request at once: requests are preempted, come back, and still give
 * the reference output; every block is back afterwards. */
START_TEST(preempted_requests_give_the_same_output) {
    enum { N = 6 };
    int32_t prompts[N][80];
    result ref[N], r[N];
    sampler_params p = greedy(70);
    for (int i = 0; i < N; i++) {
        random_tokens(prompts[i], 40 + 7 * i, 1000 + (uint64_t)i);
        run_alone(prompts[i], 40 + 7 * i, &p, &ref[i]);
    }
    engine e;
    engine_open(&e, (engine_opts){.n_blocks = 24});
    for (int i = 0; i < N; i++) submit(&e, prompts[i], 40 + 7 * i, &p, NULL, &r[i]);
    scheduler_run_until_idle(e.s);
    for (int i = 0; i < N; i++) assert_same(&r[i], &ref[i], "preempted");
    scheduler_stats st = scheduler_get_stats(e.s);
    printf("preemption test: %lld preemptions\n", (long long)st.n_preemptions);
    ck_assert_int_gt(st.n_preemptions, 0);
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

/* One request batched with 50 others of mixed lengths (chunked prefill under a small budget)
 * gives its output alone. */
START_TEST(batched_with_fifty_others) {
    enum { N = 51 };
    static int32_t prompts[N][300];
    static result ref[N], r[N];
    int lens[N], maxt[N];
    for (int i = 0; i < N; i++) {
        lens[i] = 1 + (i * 37) % 290;
        maxt[i] = 1 + (i * 13) % 48;
        random_tokens(prompts[i], lens[i], 500 + (uint64_t)i);
        sampler_params p = greedy(maxt[i]);
        run_alone(prompts[i], lens[i], &p, &ref[i]);
    }
    engine e;
    engine_open(&e, (engine_opts){.budget = 256, .max_seqs = 32});
    for (int i = 0; i < N; i++) {
        sampler_params p = greedy(maxt[i]);
        submit(&e, prompts[i], lens[i], &p, NULL, &r[i]);
    }
    scheduler_run_until_idle(e.s);
    for (int i = 0; i < N; i++) assert_same(&r[i], &ref[i], "batched");
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

/* A second request with the same 1,000-token prefix, arriving while the first still decodes,
 * shares its blocks. */
START_TEST(running_request_shares_its_prefix) {
    static int32_t a[1010], b[1010];
    random_tokens(a, 1010, 3);
    memcpy(b, a, sizeof a);
    random_tokens(b + 1000, 10, 4);
    sampler_params p = greedy(30);
    result ra, rb, ref_b;
    run_alone(b, 1010, &p, &ref_b);
    engine e;
    engine_open(&e, (engine_opts){0});
    submit(&e, a, 1010, &p, NULL, &ra);
    while (ra.n < 3) scheduler_step(e.s);
    ck_assert(!ra.done);
    submit(&e, b, 1010, &p, NULL, &rb);
    scheduler_step(e.s); /* admits b */
    scheduler_stats st = scheduler_get_stats(e.s);
    ck_assert_int_eq(st.n_running, 2);
    prefix_cache *pc = scheduler_prefix_cache(e.s);
    ck_assert_int_eq(pc->n_hit_tokens, 992); /* 62 full blocks of 16 */
    ck_assert_int_eq(pc->n_query_tokens, 2020);
    /* the shared blocks have two holders */
    block_hash h[62];
    block_hash root;
    block_hash ns;
    block_hash_namespace(&ns, e.m->fingerprint, 16);
    block_hash_root(&root, &ns, NULL);
    block_hash_chain(&root, a, 992, 16, h);
    for (int i = 0; i < 62; i++) {
        int id = prefix_cache_find(pc, &h[i]);
        ck_assert_int_ge(id, 0);
        ck_assert_int_eq(pc->pool->ref[id], 2);
    }
    scheduler_run_until_idle(e.s);
    assert_same(&rb, &ref_b, "shared prefix");
    ck_assert_int_eq(rb.n_cached_gpu, 992);
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

START_TEST(cache_salt_isolates) {
    int32_t prompt[64];
    random_tokens(prompt, 64, 5);
    sampler_params p = greedy(4);
    result r;
    engine e;
    engine_open(&e, (engine_opts){0});
    submit(&e, prompt, 64, &p, "tenant-a", &r);
    scheduler_run_until_idle(e.s);
    submit(&e, prompt, 64, &p, "tenant-b", &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_eq(r.n_cached_gpu, 0);
    submit(&e, prompt, 64, &p, NULL, &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_eq(r.n_cached_gpu, 0);
    submit(&e, prompt, 64, &p, "tenant-a", &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_eq(r.n_cached_gpu, 63);
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

START_TEST(stop_conditions) {
    int32_t prompt[20];
    random_tokens(prompt, 20, 8);
    sampler_params p = greedy(30);
    result ref, r;
    run_alone(prompt, 20, &p, &ref);
    ck_assert_int_eq(ref.finish, KV_FINISH_LENGTH);
    ck_assert_int_eq(ref.n, 30);
    int32_t target = ref.toks[12];
    int first = 0;
    while (ref.toks[first] != target) first++;

    engine e;
    engine_open(&e, (engine_opts){0});
    /* stop_token_ids: ends at the first occurrence, the token is the last event */
    sampler_params ps = greedy(30);
    ps.stop_token_ids = kv_malloc(sizeof(int32_t));
    ps.stop_token_ids[0] = target;
    ps.n_stop_token_ids = 1;
    submit(&e, prompt, 20, &ps, NULL, &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_eq(r.finish, KV_FINISH_STOP);
    ck_assert_int_eq(r.stop_token, target);
    ck_assert_int_eq(r.n, first + 1);
    sampler_params_free(&ps);
    /* max_model_len ends with LENGTH */
    engine_close(&e);
    engine_open(&e, (engine_opts){.max_model_len = 28, .eos = target});
    submit(&e, prompt, 20, &p, NULL, &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_eq(r.finish, KV_FINISH_LENGTH);
    ck_assert_int_eq(r.n, 8);
    /* max_tokens INT_MAX ("as many as fit", as the HTTP layer may pass): the same end */
    sampler_params pall = greedy(INT_MAX);
    submit(&e, prompt, 20, &pall, NULL, &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_eq(r.finish, KV_FINISH_LENGTH);
    ck_assert_int_eq(r.n, 8);
    /* eos (target made the model's eos here): ignored with ignore_eos, else it stops */
    sampler_params pe = greedy(30);
    pe.ignore_eos = false;
    engine_close(&e);
    engine_open(&e, (engine_opts){.eos = target});
    submit(&e, prompt, 20, &pe, NULL, &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_eq(r.finish, KV_FINISH_STOP);
    ck_assert_int_eq(r.n, first + 1);
    /* min_tokens masks eos before it */
    pe.min_tokens = first + 2;
    submit(&e, prompt, 20, &pe, NULL, &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_ge(r.n, first + 2);
    for (int i = 0; i < first + 1; i++) ck_assert_int_ne(r.toks[i], target);
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

/* A seeded sampled request gives the same tokens alone and in a batch. */
START_TEST(seeded_sampling_is_batch_independent) {
    int32_t prompt[30];
    random_tokens(prompt, 30, 9);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.has_seed = true;
    p.seed = 1234;
    p.max_tokens = 40;
    p.ignore_eos = true;
    result ref, r, others[8];
    run_alone(prompt, 30, &p, &ref);
    engine e;
    engine_open(&e, (engine_opts){0});
    sampler_params q = p;
    q.has_seed = false;
    int32_t op[8][50];
    for (int i = 0; i < 4; i++) {
        random_tokens(op[i], 50, 70 + (uint64_t)i);
        submit(&e, op[i], 50, &q, NULL, &others[i]);
    }
    submit(&e, prompt, 30, &p, NULL, &r);
    for (int i = 4; i < 8; i++) {
        random_tokens(op[i], 50, 70 + (uint64_t)i);
        submit(&e, op[i], 50, &q, NULL, &others[i]);
    }
    scheduler_run_until_idle(e.s);
    if (on_cuda) {
        /* the batch changes the GPU's numerics (see NEAR_TIE), so a sampled token may differ
         * from the run alone; the seed stream's independence of the batch is what the CPU run
         * of this test shows. Here: the same batch again gives the same tokens, bit for bit. */
        engine e2; /* a fresh engine: no prefix hits, so the very same steps run again */
        engine_open(&e2, (engine_opts){0});
        result others2[8];
        for (int i = 0; i < 4; i++) submit(&e2, op[i], 50, &q, NULL, &others2[i]);
        submit(&e2, prompt, 30, &p, NULL, &ref);
        for (int i = 4; i < 8; i++) submit(&e2, op[i], 50, &q, NULL, &others2[i]);
        scheduler_run_until_idle(e2.s);
        engine_close(&e2);
    }
    ck_assert_int_eq(r.n, ref.n);
    for (int i = 0; i < r.n; i++) ck_assert_int_eq(r.toks[i], ref.toks[i]);
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

/* Prompt logprobs of the model's own greedy text: every prompt token is the top choice, and
 * chunked prefill (budget 32) gives the unchunked values. */
START_TEST(prompt_logprobs_chunked) {
    int32_t bos = 1;
    sampler_params g = greedy(99);
    result gen;
    run_alone(&bos, 1, &g, &gen);
    int32_t prompt[100];
    prompt[0] = 1;
    memcpy(prompt + 1, gen.toks, 99 * sizeof(int32_t));
    sampler_params p = greedy(2);
    p.prompt_logprobs = 1;
    result a, b;
    run_alone(prompt, 100, &p, &a);
    ck_assert_int_eq(a.n_prompt_events, 99);
    for (int i = 0; i < 99; i++) {
        ck_assert_int_eq(a.prompt_toks[i], prompt[i + 1]);
        ck_assert_int_eq(a.prompt_top[i], prompt[i + 1]);
        ck_assert_float_le(fabsf(a.prompt_lps[i] - gen.lps[i]), LP_ATOL);
    }
    engine e;
    engine_open(&e, (engine_opts){.budget = 32});
    submit(&e, prompt, 100, &p, NULL, &b); /* twice: the second is not served from the cache */
    scheduler_run_until_idle(e.s);
    submit(&e, prompt, 100, &p, NULL, &b);
    scheduler_run_until_idle(e.s);
    ck_assert_int_eq(b.n_prompt_events, 99);
    ck_assert_int_eq(b.n_cached_gpu, 0);
    for (int i = 0; i < 99; i++)
        ck_assert_float_le(fabsf(a.prompt_lps[i] - b.prompt_lps[i]), LP_ATOL);
    assert_same(&a, &b, "prompt logprobs");
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

/* Finished, cancelled (waiting and running) and preempted requests in one run: every block is
 * free or cached afterwards, and each request got exactly one last event. */
START_TEST(no_leaks_after_mixed_fates) {
    enum { N = 40 };
    static int32_t prompts[N][120];
    static result r[N];
    uint64_t ids[N];
    engine e;
    engine_open(&e, (engine_opts){.n_blocks = 16, .budget = 64, .max_seqs = 8});
    for (int i = 0; i < N; i++) {
        int n = 5 + (i * 29) % 110;
        random_tokens(prompts[i], n, (uint64_t)(i % 7)); /* shared prefixes among them */
        sampler_params p = greedy(5 + i % 30);
        ids[i] = submit(&e, prompts[i], n, &p, i % 5 == 0 ? "s" : NULL, &r[i]);
    }
    for (int step = 0; scheduler_step(e.s); step++) {
        if (step % 3 == 0 && step / 3 < N) scheduler_cancel(e.s, ids[(step / 3 * 7) % N]);
        if (step % 10 == 0) scheduler_check(e.s);
    }
    scheduler_cancel(e.s, ids[0]); /* finished or cancelled already: ignored */
    scheduler_run_until_idle(e.s);
    int n_abort = 0;
    for (int i = 0; i < N; i++) {
        ck_assert(r[i].done);
        ck_assert_int_eq(r[i].after_done, 0);
        n_abort += r[i].finish == KV_FINISH_ABORT;
    }
    scheduler_stats st = scheduler_get_stats(e.s);
    printf("mixed fates: %d aborted, %lld preemptions\n", n_abort, (long long)st.n_preemptions);
    ck_assert_int_gt(n_abort, 0);
    ck_assert_int_gt(st.n_preemptions, 0);
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

START_TEST(queue_limit_and_rejections) {
    engine e;
    engine_open(&e, (engine_opts){.max_queue = 2, .max_model_len = 100});
    int32_t prompt[200];
    random_tokens(prompt, 200, 1);
    sampler_params p = greedy(4);
    result r[3];
    submit(&e, prompt, 10, &p, NULL, &r[0]);
    submit(&e, prompt, 10, &p, NULL, &r[1]);
    engine_request req = {
        .prompt = prompt, .n_prompt = 10, .params = &p, .on_event = on_event, .user = &r[2]};
    uint64_t id;
    kv_error err = {{0}};
    ck_assert_int_eq(scheduler_submit(e.s, &req, &id, &err), ENGINE_SUBMIT_BUSY);
    req.n_prompt = 100; /* no room left to generate */
    ck_assert_int_eq(scheduler_submit(e.s, &req, &id, &err), ENGINE_SUBMIT_REJECTED);
    req.n_prompt = 0;
    ck_assert_int_eq(scheduler_submit(e.s, &req, &id, &err), ENGINE_SUBMIT_REJECTED);
    int32_t bad = 512;
    req.prompt = &bad;
    req.n_prompt = 1;
    ck_assert_int_eq(scheduler_submit(e.s, &req, &id, &err), ENGINE_SUBMIT_REJECTED);
    scheduler_run_until_idle(e.s);
    ck_assert(r[0].done && r[1].done);
    assert_no_leak(&e);
    engine_close(&e);
}
END_TEST

/* The engine thread: requests from this thread, a cancel, and shutdown with requests left. */
START_TEST(engine_thread_serves_and_shuts_down) {
    engine e;
    engine_open(&e, (engine_opts){0});
    scheduler_start(e.s);
    server_engine api = scheduler_server_engine(e.s);
    int32_t prompt[50];
    random_tokens(prompt, 50, 2);
    sampler_params p = greedy(20);
    sampler_params plong = greedy(1000);
    static result r[4];
    uint64_t id[4];
    kv_error err;
    for (int i = 0; i < 4; i++) {
        memset(&r[i], 0, sizeof r[i]);
        engine_request req = {.prompt = prompt,
                              .n_prompt = 50,
                              .params = i < 2 ? &p : &plong,
                              .on_event = on_event,
                              .user = &r[i]};
        ck_assert_int_eq(api.submit(api.ctx, &req, &id[i], &err), ENGINE_SUBMIT_OK);
    }
    for (int t = 0; t < 10000 && !(r[0].done && r[1].done); t++) usleep(1000);
    ck_assert(r[0].done && r[1].done);
    ck_assert_int_eq(r[0].n, 20);
    api.cancel(api.ctx, id[2]);
    for (int t = 0; t < 10000 && !r[2].done; t++) usleep(1000);
    ck_assert(r[2].done);
    ck_assert_int_eq(r[2].finish, KV_FINISH_ABORT);
    scheduler_free(e.s); /* r[3] may still run: it ends with ABORT */
    e.s = NULL;
    ck_assert(r[3].done);
    ck_assert_int_eq(r[3].after_done, 0);
    model_free(e.m);
    backend_destroy(e.be);
}
END_TEST

int main(void) {
    bool have_model;
    if (!engine_test_env(&on_cuda, model_dir, sizeof model_dir, &have_model) || !have_model)
        return 77;
    Suite *s = suite_create("scheduler");
    /* one case per test: CK_RUN_CASE=<test name> runs one */
#define ADD(fn)                                                                                    \
    do {                                                                                           \
        TCase *tc = tcase_create(#fn);                                                             \
        tcase_set_timeout(tc, 600);                                                                \
        tcase_add_test(tc, fn);                                                                    \
        suite_add_tcase(s, tc);                                                                    \
    } while (0)
    ADD(greedy_from_bos_matches_llama2c);
    ADD(output_same_whether_cached_or_not);
    ADD(preempted_requests_give_the_same_output);
    ADD(batched_with_fifty_others);
    ADD(running_request_shares_its_prefix);
    ADD(cache_salt_isolates);
    ADD(stop_conditions);
    ADD(seeded_sampling_is_batch_independent);
    ADD(prompt_logprobs_chunked);
    ADD(no_leaks_after_mixed_fates);
    ADD(queue_limit_and_rejections);
    ADD(engine_thread_serves_and_shuts_down);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
