/* The engine the tier tests (test_tier_disk, test_tier_remote) run: stories260K on the CPU backend
 * with a 64-block GPU pool, a scheduler over the offload config the test gives, and greedy runs
 * whose tokens, finish and cached-token split by tier are gathered. */
#ifndef KVSERVE_TIER_TEST_ENGINE_H
#define KVSERVE_TIER_TEST_ENGINE_H

#include <check.h>
#include <string.h>

#include "server/engine/scheduler.h"

#define MAX_OUT 64

typedef struct result {
    int32_t toks[MAX_OUT];
    int n;
    bool done;
    kv_finish finish;
    int n_cached_gpu, n_cached_host, n_cached_disk, n_cached_remote;
} result;

static inline void on_event(void *user, const engine_event *ev) {
    result *r = user;
    if (r->done) return;
    if (ev->token >= 0 && !ev->is_prompt && r->n < MAX_OUT) r->toks[r->n++] = ev->token;
    if (ev->finish != KV_FINISH_NONE) {
        r->done = true;
        r->finish = ev->finish;
        r->n_cached_gpu = ev->n_cached_gpu;
        r->n_cached_host = ev->n_cached_host;
        r->n_cached_disk = ev->n_cached_disk;
        r->n_cached_remote = ev->n_cached_remote;
    }
}

typedef struct engine {
    backend *be;
    model *m;
    scheduler *s;
} engine;

/* The backend and the model; engine_start then makes the scheduler. */
static inline void engine_load(engine *e, const char *model_dir) {
    kv_error err = {{0}};
    e->be = backend_create("cpu", 1, &err);
    ck_assert(e->be != NULL);
    e->m = model_load(model_dir, e->be, &(model_load_options){.max_tokens = 256}, &err);
    ck_assert_msg(e->m != NULL, "%s", err.msg);
}

/* off NULL: no tiers at all (the reference). Waits for pinning and the disk scan. */
static inline void engine_start(engine *e, const offload_config *off) {
    scheduler_config c;
    scheduler_config_default(&c);
    c.n_gpu_blocks = 64;
    c.max_num_batched_tokens = 256;
    c.max_model_len = 512;
    if (off) c.offload = *off;
    kv_error err = {{0}};
    e->s = scheduler_create(e->m, &c, &err);
    ck_assert_msg(e->s != NULL, "%s", err.msg);
    scheduler_wait_tier_ready(e->s);
}

static inline void engine_close(engine *e) {
    scheduler_free(e->s);
    model_free(e->m);
    backend_destroy(e->be);
}

/* A greedy request of 24 tokens (eos ignored), submitted; the caller steps the engine. */
static inline void submit(engine *e, const int32_t *prompt, int n, result *res) {
    memset(res, 0, sizeof *res);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.max_tokens = 24;
    p.ignore_eos = true;
    engine_request req = {
        .prompt = prompt, .n_prompt = n, .params = &p, .on_event = on_event, .user = res};
    uint64_t id;
    kv_error err = {{0}};
    ck_assert_msg(scheduler_submit(e->s, &req, &id, &err) == ENGINE_SUBMIT_OK, "%s", err.msg);
}

/* submit, then run until idle (idle includes the puts down to the stores). */
static inline void run(engine *e, const int32_t *prompt, int n, result *res) {
    submit(e, prompt, n, res);
    scheduler_run_until_idle(e->s);
    ck_assert(res->done);
}

#endif
