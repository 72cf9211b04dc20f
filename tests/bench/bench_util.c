/* Benchmark helpers: engine requests in process, medians, the pinned copy rate (bench_util.h). */
#include "tests/bench/bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void bench_on_event(void *user, const engine_event *ev) {
    bench_probe *p = user;
    double now = kv_now();
    if (ev->token >= 0 && !ev->is_prompt) {
        if (p->n_tokens == 0) p->t_first = now;
        if (p->out && p->n_tokens < p->out_cap) p->out[p->n_tokens] = ev->token;
        p->n_tokens++;
    }
    p->t_last = now;
    if (ev->finish != KV_FINISH_NONE) {
        p->done = true;
        p->finish = ev->finish;
        p->n_cached_gpu = ev->n_cached_gpu;
        p->n_cached_host = ev->n_cached_host;
        p->n_cached_disk = ev->n_cached_disk;
        p->n_cached_remote = ev->n_cached_remote;
    }
}

void bench_fill_random(int32_t *t, int n, int vocab, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = 3 + (int32_t)((seed >> 33) % (uint64_t)(vocab - 3));
    }
}

void bench_submit(scheduler *s, const int32_t *prompt, int n, int max_tokens, const char *salt,
                  bench_probe *p) {
    sampler_params sp;
    sampler_params_default(&sp);
    sp.temperature = 0;
    sp.ignore_eos = true;
    sp.max_tokens = max_tokens;
    *p = (bench_probe){.t_submit = kv_now(), .out = p->out, .out_cap = p->out_cap};
    engine_request req = {.prompt = prompt,
                          .n_prompt = n,
                          .params = &sp,
                          .cache_salt = salt,
                          .on_event = bench_on_event,
                          .user = p};
    uint64_t id;
    kv_error err = {{0}};
    if (scheduler_submit(s, &req, &id, &err) != ENGINE_SUBMIT_OK) {
        fprintf(stderr, "bench: submit of a %d-token prompt: %s\n", n, err.msg);
        exit(1);
    }
}

double bench_ttft(scheduler *s, const int32_t *prompt, int n, const char *salt, bench_probe *p) {
    bench_submit(s, prompt, n, 1, salt, p);
    scheduler_run_until_idle(s);
    return p->t_first - p->t_submit;
}

double bench_decode_rate(scheduler *s, int batch, int prompt_len, int steps, int vocab,
                         uint64_t seed, const char *tag) {
    return bench_decode_rate_steps(s, batch, prompt_len, steps, vocab, seed, tag, NULL, NULL, 0);
}

double bench_decode_rate_steps(scheduler *s, int batch, int prompt_len, int steps, int vocab,
                               uint64_t seed, const char *tag, double *step_s, int *n_steps,
                               int cap) {
    bench_probe *p = kv_calloc((size_t)batch, sizeof *p);
    int32_t *prompt = kv_malloc((size_t)prompt_len * sizeof *prompt);
    char salt[96];
    for (int i = 0; i < batch; i++) {
        bench_fill_random(prompt, prompt_len, vocab, seed + (uint64_t)i);
        snprintf(salt, sizeof salt, "%s-%d", tag, i);
        bench_submit(s, prompt, prompt_len, steps + 1, salt, &p[i]);
    }
    for (bool all = false; !all;) {
        scheduler_step(s);
        all = true;
        for (int i = 0; i < batch; i++) all = all && p[i].n_tokens > 0;
    }
    int before = 0, after = 0;
    for (int i = 0; i < batch; i++) before += p[i].n_tokens;
    double t0 = kv_now(), t1 = t0;
    if (step_s) {
        for (double ts = kv_now();;) {
            bool busy = scheduler_step(s);
            double now = kv_now();
            if (busy && *n_steps < cap) step_s[(*n_steps)++] = now - ts;
            ts = now;
            if (!busy) break;
        }
    }
    scheduler_run_until_idle(s);
    for (int i = 0; i < batch; i++) {
        after += p[i].n_tokens;
        if (p[i].t_last > t1) t1 = p[i].t_last;
    }
    free(prompt);
    free(p);
    return (after - before) / (t1 - t0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define PINNED_COPY_BYTES ((size_t)16 << 20)
#define PINNED_COPIES     16

double bench_pinned_rate(backend *be, bool h2d, int reps) {
    size_t bytes = PINNED_COPY_BYTES * PINNED_COPIES;
    uint8_t *host = be->ops->host_alloc(be, bytes);
    KV_CHECK(host != NULL);
    uint8_t *dev = be->ops->dev_alloc(be, bytes);
    memset(host, 1, bytes);
    void *dsts[PINNED_COPIES];
    const void *srcs[PINNED_COPIES];
    size_t sizes[PINNED_COPIES];
    for (int i = 0; i < PINNED_COPIES; i++) {
        uint8_t *h = host + i * PINNED_COPY_BYTES, *d = dev + i * PINNED_COPY_BYTES;
        dsts[i] = h2d ? (void *)d : (void *)h;
        srcs[i] = h2d ? (const void *)h : (const void *)d;
        sizes[i] = PINNED_COPY_BYTES;
    }
    backend_stream st = h2d ? BACKEND_STREAM_LOAD : BACKEND_STREAM_STORE;
    double *gbs = kv_malloc((size_t)reps * sizeof *gbs);
    for (int r = -1; r < reps; r++) {
        be->ops->sync(be);
        double t0 = kv_now();
        be->ops->copy_async(be, st, PINNED_COPIES, dsts, srcs, sizes);
        backend_event *ev = be->ops->event_record(be, st);
        be->ops->event_sync(be, ev);
        double dt = kv_now() - t0;
        be->ops->event_free(be, ev);
        if (r >= 0) gbs[r] = (double)bytes / dt / 1e9;
    }
    double rate = bench_median(gbs, reps);
    free(gbs);
    be->ops->dev_free(be, dev);
    be->ops->host_free(be, host);
    return rate;
}

int bench_blocks_fitting(backend *be, const backend_kv_layout *l, double fraction) {
    double n = (double)be->ops->dev_free_bytes(be) * fraction / (double)l->block_bytes;
    return n > INT32_MAX / 2 ? INT32_MAX / 2 : (int)n;
}
