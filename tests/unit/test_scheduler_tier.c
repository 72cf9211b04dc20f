/* Engine + host tier: prompts evicted from a small GPU pool come back from the host tier with the
 * uncached output; each store policy stores what it documents; no block or slot leaks after many
 * requests of mixed fate; and a long randomized run (evictions, reloads, preemption) gives the
 * tier-off outputs, on stories260K (CPU backend) and on the fake backend with held LOAD/STORE
 * streams, whose fake model checks every K/V slot it reads, so a load read too early or a block
 * recycled under a store shows up as corruption. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvcache/prefix_cache.h"
#include "server/engine/scheduler.h"
#include "tests/unit/engine_test_env.h"
#include "tests/unit/fake_backend.h"

#define MAX_OUT 256

static char model_dir[1024];
static bool on_cuda; /* KVSERVE_TEST_DEVICE=cuda: the gpu suite runs these tests on the GPU */
static bool have_model;
static int layer_groups = 4; /* scheduler_config.load_layer_groups of the engines opened next */

typedef struct result {
    int32_t toks[MAX_OUT];
    float gap[MAX_OUT]; /* top-1 minus top-2 logprob of each step */
    float lp[MAX_OUT];  /* logprob of each token */
    int n;
    bool done;
    kv_finish finish;
    int n_cached_gpu, n_cached_host;
    int after_done;
} result;

static void on_event(void *user, const engine_event *ev) {
    result *r = user;
    if (r->done) {
        r->after_done++;
        return;
    }
    if (ev->token >= 0 && !ev->is_prompt) {
        r->gap[r->n] = ev->n_top >= 2 ? ev->top_logprobs[0] - ev->top_logprobs[1] : INFINITY;
        r->lp[r->n] = ev->logprob;
        r->toks[r->n++] = ev->token;
    }
    if (ev->finish != KV_FINISH_NONE) {
        r->done = true;
        r->finish = ev->finish;
        r->n_cached_gpu = ev->n_cached_gpu;
        r->n_cached_host = ev->n_cached_host;
    }
}

static sampler_params greedy(int max_tokens) {
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.logprobs = 2; /* top-2 gaps for assert_same_tokens */
    return p;
}

static uint64_t submit(scheduler *s, const int32_t *prompt, int n, int max_tokens, result *res) {
    memset(res, 0, sizeof *res);
    sampler_params p = greedy(max_tokens);
    engine_request req = {
        .prompt = prompt, .n_prompt = n, .params = &p, .on_event = on_event, .user = res};
    uint64_t id;
    kv_error err = {{0}};
    ck_assert_msg(scheduler_submit(s, &req, &id, &err) == ENGINE_SUBMIT_OK, "%s", err.msg);
    return id;
}

static void random_tokens(int32_t *t, int n, uint64_t seed, int vocab) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = 3 + (int32_t)((seed >> 33) % (uint64_t)(vocab - 3));
    }
}

/* a is the reference (tier off). On the GPU the forward pass is not batch-invariant: a greedy
 * choice may flip where a's top-2 logprobs are within bf16 noise (0.2); that divergence is
 * accepted once and the rest is not compared. On the CPU backend none is accepted. A race that
 * corrupts K/V changes the logits far beyond that and shows up away from near-ties. */
static void assert_same_tokens(const result *a, const result *b, const char *what) {
    ck_assert_msg(a->done && b->done, "%s: not done", what);
    for (int i = 0; i < a->n && i < b->n; i++) {
        if (on_cuda && a->toks[i] != b->toks[i]) {
            ck_assert_msg(a->gap[i] <= 0.2f, "%s: token %d differs, top-2 gap %g", what, i,
                          a->gap[i]);
            return;
        }
        ck_assert_msg(a->toks[i] == b->toks[i], "%s: token %d differs", what, i);
    }
    ck_assert_msg(a->n == b->n, "%s: %d vs %d tokens", what, a->n, b->n);
}

static void assert_idle_no_leak(scheduler *s) {
    scheduler_check(s);
    scheduler_stats st = scheduler_get_stats(s);
    ck_assert_int_eq(st.n_blocks_in_use, 0);
    ck_assert_int_eq(st.n_running + st.n_waiting + st.n_loading, 0);
    ck_assert_int_eq(st.n_transfers_inflight, 0);
    ck_assert_int_eq(st.host.n_storing, 0);
    ck_assert_int_eq(st.host.n_loading, 0);
}

/* --- stories260K on the CPU backend --- */

typedef struct engine {
    backend *be;
    model *m;
    scheduler *s;
} engine;

static void engine_open(engine *e, int n_blocks, double tier_mib, offload_policy pol,
                        int reuse_threshold, int max_seqs) {
    kv_error err = {{0}};
    e->be = backend_create(on_cuda ? "cuda" : "cpu", 1, &err);
    ck_assert(e->be != NULL);
    e->m = model_load(model_dir, e->be, &(model_load_options){.max_tokens = 256}, &err);
    ck_assert_msg(e->m != NULL, "%s", err.msg);
    scheduler_config c;
    scheduler_config_default(&c);
    c.n_gpu_blocks = n_blocks;
    c.max_num_seqs = max_seqs;
    c.max_num_batched_tokens = 256;
    c.max_model_len = 1024;
    c.load_layer_groups = layer_groups;
    if (tier_mib < 0) /* -n: a tier of n blocks of the backend's KV dtype */
        tier_mib = -tier_mib * (double)model_kv_layout(e->m, 16).block_bytes / (1 << 20) * 1.001;
    c.offload = (offload_config){.size_gib = tier_mib / 1024.0,
                                 .policy = pol,
                                 .reuse_threshold = reuse_threshold,
                                 .chunk_bytes = 1 << 20};
    e->s = scheduler_create(e->m, &c, &err);
    ck_assert_msg(e->s != NULL, "%s", err.msg);
    scheduler_wait_tier_ready(e->s);
}

static void engine_close(engine *e) {
    scheduler_free(e->s);
    model_free(e->m);
    backend_destroy(e->be);
}

static void run_ref(const int32_t *prompt, int n, int max_tokens, result *out) {
    engine e;
    engine_open(&e, 256, 0, OFFLOAD_POLICY_WRITE_THROUGH, 0, 8);
    submit(e.s, prompt, n, max_tokens, out);
    scheduler_run_until_idle(e.s);
    engine_close(&e);
}

START_TEST(evicted_prompt_served_from_host_tier) {
    if (!have_model) return;
    int lens[] = {100, 96};
    for (int k = 0; k < 2; k++) {
        int n = lens[k];
        int32_t prompt[128];
        random_tokens(prompt, n, 21 + (uint64_t)k, 512);
        result ref, r;
        run_ref(prompt, n, 20, &ref);
        engine e;
        engine_open(&e, 64, 8, OFFLOAD_POLICY_WRITE_THROUGH, 0, 8);
        submit(e.s, prompt, n, 20, &r);
        scheduler_run_until_idle(e.s);
        assert_same_tokens(&r, &ref, "first");
        prefix_cache_reset(scheduler_prefix_cache(e.s)); /* the GPU forgets */
        submit(e.s, prompt, n, 20, &r);
        scheduler_run_until_idle(e.s);
        assert_same_tokens(&r, &ref, "from host");
        ck_assert_int_eq(r.n_cached_gpu, 0);
        ck_assert_int_eq(r.n_cached_host, n % 16 ? n / 16 * 16 : n - 1);
        scheduler_stats st = scheduler_get_stats(e.s);
        ck_assert_int_eq(st.host.loaded_bytes, (uint64_t)(n / 16) * st.host.block_bytes);
        assert_idle_no_leak(e.s);
        engine_close(&e);
    }
}
END_TEST

/* A prompt served from the host tier while the engine is otherwise idle is loaded by layer groups
 * and computed during the load: the same tokens and logprobs as with whole loads (the same ops in
 * the same order: equal on the CPU; on CUDA within the bf16 noise of assert_same_tokens). With two
 * such prompts at once neither is layered (the rule of scheduler_tier.c), and the outputs are the
 * same again. */
START_TEST(layered_loads_match_whole_loads) {
    if (!have_model) return;
    const float tol = on_cuda ? 0.2f : 1e-6f;
    int lens[] = {100, 96, 37};
    static int32_t prompts[3][128];
    static result r[2][3], both[2];
    for (int k = 0; k < 3; k++) random_tokens(prompts[k], lens[k], 61 + (uint64_t)k, 512);
    for (int mode = 0; mode < 2; mode++) { /* 0: whole loads, 1: by layer groups */
        layer_groups = mode ? 4 : 1;
        engine e;
        engine_open(&e, 64, 8, OFFLOAD_POLICY_WRITE_THROUGH, 0, 8);
        for (int k = 0; k < 3; k++) {
            submit(e.s, prompts[k], lens[k], 20, &r[mode][k]);
            scheduler_run_until_idle(e.s);
            prefix_cache_reset(scheduler_prefix_cache(e.s));
            submit(e.s, prompts[k], lens[k], 20, &r[mode][k]);
            scheduler_run_until_idle(e.s);
            ck_assert_int_eq(r[mode][k].n_cached_host,
                             lens[k] % 16 ? lens[k] / 16 * 16 : lens[k] - 1);
        }
        int64_t n_layered = scheduler_get_stats(e.s).n_layered_loads;
        ck_assert_int_eq(n_layered, mode ? 3 : 0);
        prefix_cache_reset(scheduler_prefix_cache(e.s));
        submit(e.s, prompts[0], lens[0], 20, &both[0]);
        submit(e.s, prompts[2], lens[2], 20, &both[1]);
        scheduler_run_until_idle(e.s);
        ck_assert_int_eq(scheduler_get_stats(e.s).n_layered_loads, n_layered);
        ck_assert_int_gt(both[1].n_cached_host, 0);
        assert_same_tokens(&r[mode][0], &both[0], "two at once");
        assert_same_tokens(&r[mode][2], &both[1], "two at once");
        assert_idle_no_leak(e.s);
        engine_close(&e);
    }
    layer_groups = 4;
    float worst = 0;
    for (int k = 0; k < 3; k++) {
        assert_same_tokens(&r[0][k], &r[1][k], "layered vs whole");
        for (int i = 0; i < r[0][k].n && r[0][k].toks[i] == r[1][k].toks[i]; i++)
            worst = fmaxf(worst, fabsf(r[1][k].lp[i] - r[0][k].lp[i]));
    }
    printf("layered vs whole loads: worst logprob difference %.3g (tolerance %.3g)\n", worst, tol);
    ck_assert(worst <= tol);
}
END_TEST

START_TEST(store_policies_do_what_they_say) {
    if (!have_model) return;
    int32_t prompt[64], filler[8][100];
    random_tokens(prompt, 64, 5, 512);
    result r, rf[8];
    /* write_through: every full computed block once (64 + 3 computed = 4 blocks) */
    engine e;
    engine_open(&e, 32, 8, OFFLOAD_POLICY_WRITE_THROUGH, 0, 8);
    submit(e.s, prompt, 64, 4, &r);
    scheduler_run_until_idle(e.s);
    scheduler_stats st = scheduler_get_stats(e.s);
    ck_assert_int_eq(st.host.stored_bytes, 4 * st.host.block_bytes);
    submit(e.s, prompt, 64, 4, &r); /* all GPU hits: nothing new */
    scheduler_run_until_idle(e.s);
    st = scheduler_get_stats(e.s);
    ck_assert_int_eq(st.host.stored_bytes, 4 * st.host.block_bytes);
    assert_idle_no_leak(e.s);
    engine_close(&e);

    /* on_evict: nothing until the GPU pool recycles the blocks, then they are in the tier */
    engine_open(&e, 16, 8, OFFLOAD_POLICY_ON_EVICT, 0, 8);
    submit(e.s, prompt, 64, 4, &r);
    scheduler_run_until_idle(e.s);
    st = scheduler_get_stats(e.s);
    ck_assert_int_eq(st.host.stored_bytes, 0);
    for (int i = 0; i < 3; i++) {
        random_tokens(filler[i], 100, 70 + (uint64_t)i, 512);
        submit(e.s, filler[i], 100, 60, &rf[i]);
        scheduler_run_until_idle(e.s);
    }
    st = scheduler_get_stats(e.s);
    ck_assert_int_ge(st.host.stored_bytes, 4 * st.host.block_bytes);
    submit(e.s, prompt, 64, 4, &r);
    scheduler_run_until_idle(e.s);
    ck_assert_int_gt(r.n_cached_host, 0);
    assert_idle_no_leak(e.s);
    engine_close(&e);

    /* reuse_gated, threshold 1: stored at the second use (the GPU hit), not the first */
    engine_open(&e, 32, 8, OFFLOAD_POLICY_REUSE_GATED, 1, 8);
    submit(e.s, prompt, 64, 4, &r);
    scheduler_run_until_idle(e.s);
    st = scheduler_get_stats(e.s);
    ck_assert_int_eq(st.host.stored_bytes, 0);
    /* second use: 3 shared GPU hits, and the 4th block full again in its copy (the last token is
     * recomputed into a copy of the cached block) */
    submit(e.s, prompt, 64, 4, &r);
    scheduler_run_until_idle(e.s);
    st = scheduler_get_stats(e.s);
    ck_assert_int_eq(st.host.stored_bytes, 4 * st.host.block_bytes);
    assert_idle_no_leak(e.s);
    engine_close(&e);
}
END_TEST

/* Many requests with shared prefixes through a small GPU pool and a small tier, some cancelled,
 * some preempted: the outputs that finish equal the tier-off references, nothing leaks. */
static void randomized_run(offload_policy pol) {
    enum { N = 60, NP = 5 };
    static int32_t prompts[N][160];
    static result ref[N], r[N];
    int lens[N], maxt[N];
    static int32_t bases[NP][160];
    for (int b = 0; b < NP; b++) random_tokens(bases[b], 160, 300 + (uint64_t)b, 512);
    for (int i = 0; i < N; i++) {
        lens[i] = 20 + (i * 53) % 130;
        maxt[i] = 1 + (i * 17) % 40;
        memcpy(prompts[i], bases[i % NP], sizeof prompts[i]);
        random_tokens(prompts[i] + lens[i] - (i % 3) * 5, (i % 3) * 5, 9000 + (uint64_t)i, 512);
    }
    engine e;
    engine_open(&e, 512, 0, pol, 0, 64);
    for (int i = 0; i < N; i++) {
        submit(e.s, prompts[i], lens[i], maxt[i], &ref[i]);
        scheduler_run_until_idle(e.s); /* alone, so each reference is the plain output */
    }
    engine_close(&e);
    engine_open(&e, 28, 1, pol, 1, 6); /* 28 GPU blocks, 51 host slots */
    uint64_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = submit(e.s, prompts[i], lens[i], maxt[i], &r[i]);
    for (int step = 0; scheduler_step(e.s); step++) {
        if (step % 13 == 7) scheduler_cancel(e.s, ids[(step * 7) % N]);
        if (step % 5 == 0) scheduler_check(e.s);
    }
    int n_same = 0;
    for (int i = 0; i < N; i++) {
        ck_assert(r[i].done);
        ck_assert_int_eq(r[i].after_done, 0);
        if (r[i].finish == KV_FINISH_ABORT) continue;
        assert_same_tokens(&r[i], &ref[i], "randomized");
        n_same++;
    }
    scheduler_stats st = scheduler_get_stats(e.s);
    printf("randomized (%s): %d compared, %lld preemptions, host hits %lld tokens, stored %.1f KB, "
           "loaded %.1f KB, %llu tier evictions\n",
           offload_policy_name(pol), n_same, (long long)st.n_preemptions,
           (long long)st.host_hit_tokens, st.host.stored_bytes / 1e3, st.host.loaded_bytes / 1e3,
           (unsigned long long)st.host.evictions);
    ck_assert_int_gt(st.host_hit_tokens, 0);
    assert_idle_no_leak(e.s);
    engine_close(&e);
}

START_TEST(randomized_run_write_through) {
    if (have_model) randomized_run(OFFLOAD_POLICY_WRITE_THROUGH);
}
END_TEST
START_TEST(randomized_run_on_evict) {
    if (have_model) randomized_run(OFFLOAD_POLICY_ON_EVICT);
}
END_TEST
START_TEST(randomized_run_reuse_gated) {
    if (have_model) randomized_run(OFFLOAD_POLICY_REUSE_GATED);
}
END_TEST

/* Issue 10: eight ordinary requests through 8 GPU blocks and a 3-slot host tier under reuse_gated
 * (threshold 1) aborted the server: admission counted host hits, a GPU hit's store then evicted one
 * of them, and the load found it gone. Each request must finish with the tier-off output. */
START_TEST(reuse_gated_store_never_evicts_counted_hits) {
    if (!have_model) return;
    static int32_t z[33], w[17], w2[17], e_[66];
    for (int i = 0; i < 33; i++) z[i] = 10 + i;
    for (int i = 0; i < 17; i++) w[i] = 100 + i, w2[i] = 200 + i;
    for (int i = 0; i < 66; i++) e_[i] = 300 + i;
    const int32_t *seq[8] = {z, z, w, w, w2, w2, e_, z};
    const int len[8] = {33, 33, 17, 17, 17, 17, 66, 33};
    static result ref[8], r[8];
    for (int i = 0; i < 8; i++) run_ref(seq[i], len[i], 2, &ref[i]);
    engine e;
    /* 3 slots, as the 5.73e-05 GiB gives with the CPU's f32 blocks of 20 KiB */
    engine_open(&e, 8, -3, OFFLOAD_POLICY_REUSE_GATED, 1, 8);
    for (int i = 0; i < 8; i++) {
        submit(e.s, seq[i], len[i], 2, &r[i]);
        scheduler_run_until_idle(e.s);
        assert_same_tokens(&r[i], &ref[i], "issue 10 sequence");
        ck_assert_int_ne(r[i].finish, KV_FINISH_ABORT);
    }
    scheduler_stats st = scheduler_get_stats(e.s);
    printf("issue 10 sequence: %d host slots, %llu tier evictions, %lld host hit tokens\n",
           st.host.n_slots_total, (unsigned long long)st.host.evictions,
           (long long)st.host_hit_tokens);
    ck_assert_int_eq(st.host.n_slots_total, 3);
    ck_assert_int_gt(st.host.evictions, 0);
    assert_idle_no_leak(e.s);
    engine_close(&e);
}
END_TEST

/* --- the fake backend: held streams, a model that checks what it reads --- */

#define FAKE_VOCAB  64
#define FAKE_LAYERS 4

typedef struct fake_model fake_model;
typedef struct fake_layer {
    fake_model *fm;
    int layer;
} fake_layer;

struct fake_model {
    backend *be;
    backend_kv_layout l;
    int n_corrupt;
    fake_layer layers[FAKE_LAYERS]; /* kernel arguments */
    int hold;        /* a hold on LOAD that forward_layers releases before it syncs, or -1 */
    bool wait_first; /* forward_layers waits for layer 0's event only (a broken model) */
    /* the batch, copied for the kernel */
    backend_batch b;
    int32_t tokens[512], positions[512], seq_start[65], seq_len[64], out_rows[512];
    int32_t table[64 * 256];
    void *pool;
    float *logits;
};

/* Layer l of the fake model: writes the new tokens' K/V at layer l, checks every slot its out rows
 * read at layer l; the last layer writes the logits. K of a slot holds (token, position) as
 * floats; V holds token * 7 + position + layer. */
static void fake_kernel(void *arg) {
    fake_layer *fl = arg;
    fake_model *fm = fl->fm;
    int l = fl->layer;
    const backend_batch *b = &fm->b;
    int bs = fm->l.block_size;
    uint8_t *pool = fm->pool;
    for (int s = 0; s < b->n_seqs; s++)
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) {
            int p = b->positions[t];
            uint8_t *blk =
                pool + (size_t)b->block_table[s * b->max_blocks + p / bs] * fm->l.block_bytes;
            float *k = (float *)(blk + backend_kv_offset(&fm->l, l, 0, 0, p % bs));
            float *v = (float *)(blk + backend_kv_offset(&fm->l, l, 1, 0, p % bs));
            k[0] = (float)b->tokens[t];
            k[1] = (float)p;
            v[0] = (float)(b->tokens[t] * 7 + p + l);
        }
    for (int o = 0; o < b->n_out; o++) {
        int t = b->out_rows[o], s = 0;
        while (b->seq_start[s + 1] <= t) s++;
        uint64_t h = 1469598103934665603ull;
        for (int p = 0; p <= b->positions[t]; p++) {
            uint8_t *blk =
                pool + (size_t)b->block_table[s * b->max_blocks + p / bs] * fm->l.block_bytes;
            float *k = (float *)(blk + backend_kv_offset(&fm->l, l, 0, 0, p % bs));
            float *v = (float *)(blk + backend_kv_offset(&fm->l, l, 1, 0, p % bs));
            if (k[1] != (float)p || v[0] != k[0] * 7 + (float)(p + l)) fm->n_corrupt++;
            h = (h ^ (uint64_t)(int64_t)k[0]) * 1099511628211ull;
        }
        if (l + 1 < FAKE_LAYERS) continue;
        float *row = fm->logits + (size_t)o * FAKE_VOCAB;
        for (int i = 0; i < FAKE_VOCAB; i++) row[i] = (float)((h >> (i % 48)) & 7) * 0.01f;
        row[3 + h % (FAKE_VOCAB - 3)] = 10.0f;
    }
}

/* The forward of both entry points: one kernel per layer, layer l after layer_ready[l] when given.
 */
static void fake_forward_layers(model *m, const backend_batch *b, void *pool,
                                const backend_kv_layout *l, float *logits,
                                backend_event *const *layer_ready) {
    fake_model *fm = m->impl;
    ck_assert(b->n_tokens <= 512 && b->n_seqs <= 64 && b->n_seqs * b->max_blocks <= 64 * 256);
    memcpy(fm->tokens, b->tokens, (size_t)b->n_tokens * 4);
    memcpy(fm->positions, b->positions, (size_t)b->n_tokens * 4);
    memcpy(fm->seq_start, b->seq_start, (size_t)(b->n_seqs + 1) * 4);
    memcpy(fm->seq_len, b->seq_len, (size_t)b->n_seqs * 4);
    memcpy(fm->out_rows, b->out_rows, (size_t)b->n_out * 4);
    memcpy(fm->table, b->block_table, (size_t)b->n_seqs * (size_t)b->max_blocks * 4);
    fm->b = *b;
    fm->b.tokens = fm->tokens, fm->b.positions = fm->positions, fm->b.seq_start = fm->seq_start;
    fm->b.seq_len = fm->seq_len, fm->b.out_rows = fm->out_rows, fm->b.block_table = fm->table;
    fm->pool = pool;
    fm->logits = logits;
    for (int i = 0; i < FAKE_LAYERS; i++) {
        backend_event *ready = layer_ready ? layer_ready[fm->wait_first ? 0 : i] : NULL;
        if (ready && (i == 0 || ready != layer_ready[i - 1]))
            fm->be->ops->event_wait(fm->be, BACKEND_STREAM_COMPUTE, ready);
        fm->layers[i] = (fake_layer){fm, i};
        fake_backend_kernel(fm->be, fake_kernel, &fm->layers[i]);
    }
    if (fm->hold >= 0) fake_backend_release(fm->be, fm->hold); /* the device ends the slow copy */
    fm->hold = -1;
    backend_event *ev = fm->be->ops->event_record(fm->be, BACKEND_STREAM_COMPUTE);
    fm->be->ops->event_sync(fm->be, ev); /* logits on the host when forward returns */
    fm->be->ops->event_free(fm->be, ev);
}

static void fake_forward(model *m, const backend_batch *b, void *pool, const backend_kv_layout *l,
                         float *logits) {
    fake_forward_layers(m, b, pool, l, logits, NULL);
}

/* layered: the model has forward_layers (the engine may load by layer groups). threshold: of
 * reuse_gated. */
static scheduler *fake_engine_t(fake_model *fm, model *sm, int n_blocks, double tier_mib,
                                offload_policy pol, int threshold, bool layered) {
    fm->be = fake_backend_create();
    fm->hold = -1;
    fm->l = (backend_kv_layout){.n_layers = FAKE_LAYERS,
                                .n_kv_heads = 1,
                                .head_dim = 2,
                                .block_size = 4,
                                .dtype = KV_DTYPE_F32};
    backend_kv_layout_finish(&fm->l);
    static const model_ops flat = {.forward = fake_forward};
    static const model_ops layered_ops = {.forward = fake_forward,
                                          .forward_layers = fake_forward_layers};
    *sm = (model){.ops = layered ? &layered_ops : &flat,
                  .impl = fm,
                  .be = fm->be,
                  .n_layers = fm->l.n_layers,
                  .n_kv_heads = fm->l.n_kv_heads,
                  .head_dim = fm->l.head_dim,
                  .vocab = FAKE_VOCAB,
                  .max_tokens = 512,
                  .max_position = 4096,
                  .fingerprint = "fake"};
    scheduler_config c;
    scheduler_config_default(&c);
    c.n_gpu_blocks = n_blocks;
    c.max_num_seqs = 8;
    c.max_num_batched_tokens = 64;
    c.block_size = fm->l.block_size;
    c.offload = (offload_config){.size_gib = tier_mib / 1024.0,
                                 .policy = pol,
                                 .reuse_threshold = threshold,
                                 .chunk_bytes = 4096};
    kv_error err = {{0}};
    scheduler *s = scheduler_create(sm, &c, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    scheduler_wait_tier_ready(s);
    return s;
}

static scheduler *fake_engine(fake_model *fm, model *sm, int n_blocks, double tier_mib,
                              offload_policy pol, bool layered) {
    return fake_engine_t(fm, sm, n_blocks, tier_mib, pol, 1, layered);
}

/* Loads and stores complete only when the test releases their streams, at random steps. */
static void fake_ordering_run(offload_policy pol) {
    enum { N = 80, NP = 4 };
    static int32_t prompts[N][120], bases[NP][120];
    static result ref[N], r[N];
    int lens[N], maxt[N];
    for (int b = 0; b < NP; b++) random_tokens(bases[b], 120, 40 + (uint64_t)b, FAKE_VOCAB);
    for (int i = 0; i < N; i++) {
        lens[i] = 5 + (i * 37) % 110;
        maxt[i] = 1 + (i * 11) % 30;
        memcpy(prompts[i], bases[i % NP], sizeof prompts[i]);
        random_tokens(prompts[i] + lens[i] - (i % 2) * 3, (i % 2) * 3, 500 + (uint64_t)i,
                      FAKE_VOCAB);
    }
    fake_model fm = {0};
    model sm;
    scheduler *s = fake_engine(&fm, &sm, 1024, 0, pol, false);
    for (int i = 0; i < N; i++) {
        submit(s, prompts[i], lens[i], maxt[i], &ref[i]);
        scheduler_run_until_idle(s);
    }
    scheduler_free(s);
    backend_destroy(fm.be);
    ck_assert_int_eq(fm.n_corrupt, 0);

    memset(&fm, 0, sizeof fm);
    s = fake_engine(&fm, &sm, 40, 0.25 / 4, pol, false); /* 40 blocks of 4 tokens; 256 slots */
    for (int i = 0; i < N; i++) submit(s, prompts[i], lens[i], maxt[i], &r[i]);
    int hold_load = -1, hold_store = -1;
    uint64_t rng = 77;
    for (int step = 0; step < 100000; step++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int dice = (int)((rng >> 33) % 8);
        if (dice == 0 && hold_load < 0) hold_load = fake_backend_hold(fm.be, BACKEND_STREAM_LOAD);
        if (dice == 1 && hold_store < 0)
            hold_store = fake_backend_hold(fm.be, BACKEND_STREAM_STORE);
        if (dice >= 5 && hold_load >= 0) fake_backend_release(fm.be, hold_load), hold_load = -1;
        if (dice >= 5 && hold_store >= 0) fake_backend_release(fm.be, hold_store), hold_store = -1;
        bool busy = scheduler_step(s);
        if (step % 7 == 0) scheduler_check(s);
        if (!busy && hold_load < 0 && hold_store < 0) break;
    }
    int n_host = 0;
    for (int i = 0; i < N; i++) {
        assert_same_tokens(&r[i], &ref[i], "fake ordering");
        n_host += r[i].n_cached_host;
    }
    scheduler_stats st = scheduler_get_stats(s);
    printf("fake ordering (%s): %d corrupt reads, %lld preemptions, %d host tokens, %lld host "
           "hit tokens\n",
           offload_policy_name(pol), fm.n_corrupt, (long long)st.n_preemptions, n_host,
           (long long)st.host_hit_tokens);
    ck_assert_int_eq(fm.n_corrupt, 0);
    ck_assert_int_gt(st.host_hit_tokens, 0);
    assert_idle_no_leak(s);
    scheduler_free(s);
    backend_destroy(fm.be);
}

/* The fill of test_scheduler_tier_fill.c on the fake device, with both copy streams held at
 * random steps: 10-14 GPU blocks of 4 tokens, host tiers of 2-6 slots, 24 prompts of 5-28 tokens
 * over 3 bases, up to 8 at a time. Every request ends with the tier-off output, none aborts, no
 * read is corrupt, the tier evicts and nothing leaks. */
static void fake_fill_run(offload_policy pol, int threshold) {
    enum { N = 24, NP = 3 };
    static int32_t prompts[N][28], bases[NP][28];
    static result ref[N], r[N];
    int lens[N], maxt[N];
    for (int b = 0; b < NP; b++) random_tokens(bases[b], 28, 90 + (uint64_t)b, FAKE_VOCAB);
    for (int i = 0; i < N; i++) {
        lens[i] = 5 + (i * 13) % 24;
        maxt[i] = 1 + (i * 5) % 7;
        memcpy(prompts[i], bases[i % NP], sizeof prompts[i]);
        if (i % 3 == 2) prompts[i][lens[i] - 1] = 3 + i % (FAKE_VOCAB - 3); /* a fresh last token */
    }
    fake_model fm = {0};
    model sm;
    scheduler *s = fake_engine(&fm, &sm, 1024, 0, pol, false);
    for (int i = 0; i < N; i++) {
        submit(s, prompts[i], lens[i], maxt[i], &ref[i]);
        scheduler_run_until_idle(s);
    }
    scheduler_free(s);
    backend_destroy(fm.be);
    static const int blocks[] = {10, 14}, slots[] = {2, 4, 6};
    for (int bi = 0; bi < 2; bi++)
        for (int si = 0; si < 3; si++) {
            memset(&fm, 0, sizeof fm);
            double mib = (double)slots[si] * FAKE_LAYERS * 2 * 2 * 4 * sizeof(float) / (1 << 20);
            s = fake_engine_t(&fm, &sm, blocks[bi], mib * 1.001, pol, threshold, false);
            for (int i = 0; i < N; i++) submit(s, prompts[i], lens[i], maxt[i], &r[i]);
            int hold_load = -1, hold_store = -1, step = 0;
            uint64_t rng = 99 + (uint64_t)(bi * 3 + si);
            for (;; step++) {
                ck_assert_msg(step < 20000, "%s, %d blocks, %d slots: no end",
                              offload_policy_name(pol), blocks[bi], slots[si]);
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                int dice = (int)((rng >> 33) % 8);
                if (dice == 0 && hold_load < 0)
                    hold_load = fake_backend_hold(fm.be, BACKEND_STREAM_LOAD);
                if (dice == 1 && hold_store < 0)
                    hold_store = fake_backend_hold(fm.be, BACKEND_STREAM_STORE);
                if (dice >= 5 && hold_load >= 0)
                    fake_backend_release(fm.be, hold_load), hold_load = -1;
                if (dice >= 5 && hold_store >= 0)
                    fake_backend_release(fm.be, hold_store), hold_store = -1;
                bool busy = scheduler_step(s);
                if (step % 5 == 0) scheduler_check(s);
                if (!busy && hold_load < 0 && hold_store < 0) break;
            }
            for (int i = 0; i < N; i++) {
                assert_same_tokens(&ref[i], &r[i], "fake fill");
                ck_assert_msg(r[i].finish != KV_FINISH_ABORT, "fake fill: request %d aborted", i);
            }
            scheduler_stats st = scheduler_get_stats(s);
            printf("fake fill (%s t%d): %2d blocks %d slots: %3llu evictions, %3llu skipped, %lld "
                   "host hit tokens, %lld preemptions, %d steps\n",
                   offload_policy_name(pol), threshold, blocks[bi], slots[si],
                   (unsigned long long)st.host.evictions,
                   (unsigned long long)st.host.n_stores_skipped, (long long)st.host_hit_tokens,
                   (long long)st.n_preemptions, step);
            ck_assert_int_eq(fm.n_corrupt, 0);
            ck_assert_int_eq(st.host.n_slots_total, slots[si]);
            ck_assert_int_gt(st.host.evictions, 0);
            assert_idle_no_leak(s);
            scheduler_free(s);
            backend_destroy(fm.be);
        }
}

START_TEST(held_streams_fill_small_tiers) {
    fake_fill_run(OFFLOAD_POLICY_WRITE_THROUGH, 0);
    fake_fill_run(OFFLOAD_POLICY_ON_EVICT, 0);
    fake_fill_run(OFFLOAD_POLICY_REUSE_GATED, 1);
    fake_fill_run(OFFLOAD_POLICY_REUSE_GATED, 2);
}
END_TEST

START_TEST(held_streams_keep_order_write_through) {
    fake_ordering_run(OFFLOAD_POLICY_WRITE_THROUGH);
}
END_TEST
START_TEST(held_streams_keep_order_on_evict) {
    fake_ordering_run(OFFLOAD_POLICY_ON_EVICT);
}
END_TEST
START_TEST(held_streams_keep_order_reuse_gated) {
    fake_ordering_run(OFFLOAD_POLICY_REUSE_GATED);
}
END_TEST

/* Layered loads on the fake device: each prompt, evicted from the GPU (whose blocks are then
 * scrubbed), comes back from the host tier with the LOAD stream held, so its copies run only while
 * the forward of the same step waits for them; the device interleaves streams, so a layer whose
 * kernels ran before its group's copies would read scrubbed K/V. The outputs are the references'
 * and no read is corrupt; a model that waits for the first group only is caught. */
static int fake_layered_run(bool wait_first) {
    enum { N = 12 };
    static int32_t prompts[N][120];
    static result ref[N], r[N];
    int lens[N];
    for (int i = 0; i < N; i++) {
        lens[i] = 9 + (i * 41) % 110;
        random_tokens(prompts[i], lens[i], 700 + (uint64_t)i, FAKE_VOCAB);
    }
    fake_model fm = {0};
    model sm;
    scheduler *s = fake_engine(&fm, &sm, 1024, 0, OFFLOAD_POLICY_WRITE_THROUGH, false);
    for (int i = 0; i < N; i++) {
        submit(s, prompts[i], lens[i], 5, &ref[i]);
        scheduler_run_until_idle(s);
    }
    scheduler_free(s);
    backend_destroy(fm.be);
    ck_assert_int_eq(fm.n_corrupt, 0);

    memset(&fm, 0, sizeof fm);
    s = fake_engine(&fm, &sm, 64, 0.25 / 4, OFFLOAD_POLICY_WRITE_THROUGH, true);
    fm.wait_first = wait_first;
    int n_host = 0;
    for (int i = 0; i < N; i++) {
        submit(s, prompts[i], lens[i], 5, &r[i]);
        scheduler_run_until_idle(s);
        prefix_cache_reset(scheduler_prefix_cache(s));
        memset(fm.pool, 0xff, 64 * fm.l.block_bytes); /* NaN K/V: a read before its load fails */
        fm.hold = fake_backend_hold(fm.be, BACKEND_STREAM_LOAD);
        submit(s, prompts[i], lens[i], 5, &r[i]);
        scheduler_run_until_idle(s);
        ck_assert_int_eq(fm.hold, -1); /* released by the layered forward */
        n_host += r[i].n_cached_host;
        if (!wait_first) assert_same_tokens(&ref[i], &r[i], "fake layered");
    }
    scheduler_stats st = scheduler_get_stats(s);
    printf("fake layered loads%s: %d corrupt reads, %lld layered loads, %d host tokens\n",
           wait_first ? " (model waiting for group 0 only)" : "", fm.n_corrupt,
           (long long)st.n_layered_loads, n_host);
    ck_assert_int_eq(st.n_layered_loads, N);
    ck_assert_int_gt(n_host, 0);
    assert_idle_no_leak(s);
    scheduler_free(s);
    backend_destroy(fm.be);
    return fm.n_corrupt;
}

START_TEST(held_load_stream_orders_layered_loads) {
    ck_assert_int_eq(fake_layered_run(false), 0);
    ck_assert_int_gt(fake_layered_run(true), 0);
}
END_TEST

int main(void) {
    if (!engine_test_env(&on_cuda, model_dir, sizeof model_dir, &have_model)) return 77;
    Suite *s = suite_create("scheduler_tier");
#define ADD(fn)                                                                                    \
    do {                                                                                           \
        TCase *tc = tcase_create(#fn);                                                             \
        tcase_set_timeout(tc, 600);                                                                \
        tcase_add_test(tc, fn);                                                                    \
        suite_add_tcase(s, tc);                                                                    \
    } while (0)
    ADD(evicted_prompt_served_from_host_tier);
    ADD(layered_loads_match_whole_loads);
    ADD(store_policies_do_what_they_say);
    ADD(reuse_gated_store_never_evicts_counted_hits);
    ADD(randomized_run_write_through);
    ADD(randomized_run_on_evict);
    ADD(randomized_run_reuse_gated);
    ADD(held_streams_keep_order_write_through);
    ADD(held_streams_keep_order_on_evict);
    ADD(held_streams_keep_order_reuse_gated);
    ADD(held_load_stream_orders_layered_loads);
    ADD(held_streams_fill_small_tiers);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
