/* The start-up warm-up (warmup.h): its requests, submitted straight to the scheduler (not through
 * HTTP, so the request counters of /metrics do not see them), and the wait for their last
 * events. */
#include "server/warmup.h"

#include <pthread.h>
#include <stdlib.h>

/* decode batches of the second phase: 1 long + (WARMUP_CONCURRENT - 1) short requests */
#define WARMUP_CONCURRENT 8
#define WARMUP_DECODE     6  /* tokens each request generates: records and replays a graph */
#define WARMUP_SHORT      48 /* prompt tokens of a short request */

typedef struct warmup_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
    int failed;
} warmup_wait;

static void warmup_on_event(void *user, const engine_event *ev) {
    warmup_wait *w = user;
    if (ev->finish == KV_FINISH_NONE) return;
    pthread_mutex_lock(&w->mu);
    w->pending--;
    if (ev->finish == KV_FINISH_ABORT) w->failed++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Submits n requests of prompt lengths lens[i] (request i generates WARMUP_DECODE + i tokens)
 * and waits for all of them. */
static int warmup_phase(scheduler *s, int vocab, const int *lens, int n) {
    warmup_wait w = {.pending = 0, .failed = 0};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.max_tokens = WARMUP_DECODE;
    p.ignore_eos = true;
    for (int i = 0; i < n; i++) {
        /* one more token each: as they end one by one, every decode batch from n down to 1 runs
         * (each batch size is its own GEMV kernel and its own recorded graph) */
        p.max_tokens = WARMUP_DECODE + i;
        int32_t *ids = kv_malloc((size_t)lens[i] * sizeof *ids);
        for (int t = 0; t < lens[i]; t++)
            ids[t] = (int32_t)((7919u * (unsigned)(t + 1 + i)) % (unsigned)vocab);
        engine_request req = {.prompt = ids,
                              .n_prompt = lens[i],
                              .params = &p,
                              .cache_salt = "kvserve-warm-up",
                              .on_event = warmup_on_event,
                              .user = &w};
        uint64_t id;
        kv_error err = {{0}};
        pthread_mutex_lock(&w.mu);
        w.pending++;
        pthread_mutex_unlock(&w.mu);
        if (scheduler_submit(s, &req, &id, &err) != ENGINE_SUBMIT_OK) {
            pthread_mutex_lock(&w.mu);
            w.pending--, w.failed++;
            pthread_mutex_unlock(&w.mu);
        }
        free(ids);
    }
    pthread_mutex_lock(&w.mu);
    while (w.pending > 0) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    sampler_params_free(&p);
    return w.failed;
}

int warmup_run(scheduler *s, int vocab, int max_prompt) {
    if (vocab < 1 || max_prompt < 1) return 0;
    int long_len = max_prompt, short_len = max_prompt < WARMUP_SHORT ? max_prompt : WARMUP_SHORT;
    /* a short prefill (small-n GEMM kernels), a long one, then the batch */
    int failed = warmup_phase(s, vocab, &short_len, 1);
    failed += warmup_phase(s, vocab, &long_len, 1);
    int lens[WARMUP_CONCURRENT];
    lens[0] = long_len;
    for (int i = 1; i < WARMUP_CONCURRENT; i++) lens[i] = short_len;
    return failed + warmup_phase(s, vocab, lens, WARMUP_CONCURRENT);
}
