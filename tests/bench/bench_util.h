/* Helpers shared by the benchmarks: requests driven through the engine in process (a probe that
 * records a request's token times and ids, random prompts, TTFT and decode-rate drivers over
 * scheduler_step on the calling thread), medians, and the pinned host<->device copy rate that
 * the offload benchmarks report their rates against. */
#ifndef KVSERVE_BENCH_UTIL_H
#define KVSERVE_BENCH_UTIL_H

#include "server/engine/scheduler.h"

/* What a benchmark request saw; filled by the engine's events. */
typedef struct bench_probe {
    double t_submit, t_first, t_last; /* kv_now() at submit, first generated token, last event */
    int n_tokens;                     /* generated tokens seen */
    bool done;
    kv_finish finish;
    int n_cached_gpu, n_cached_host; /* prompt tokens served by each cache (last event) */
    int n_cached_disk, n_cached_remote;
    int32_t *out; /* NULL, or [out_cap] generated ids (kept by bench_submit) */
    int out_cap;
} bench_probe;

/* n random ids in [3, vocab) from seed (ids 0-2 are special in most vocabularies). */
void bench_fill_random(int32_t *t, int n, int vocab, uint64_t seed);

/* Submits a greedy request (temperature 0, ignore_eos) for max_tokens tokens and resets p (its
 * out buffer stays). Exits the process when the engine refuses it: a benchmark's config error. */
void bench_submit(scheduler *s, const int32_t *prompt, int n, int max_tokens, const char *salt,
                  bench_probe *p);

/* TTFT in seconds of one request for one token: submit, step until idle (the engine must have
 * nothing else to do). */
double bench_ttft(scheduler *s, const int32_t *prompt, int n, const char *salt, bench_probe *p);

/* Decode tok/s of batch requests with random prompt_len-token prompts (seeded from seed, salted
 * with tag so no request hits a cache): steps until every request has its first token, then
 * counts the tokens generated from there to the last request's last token. */
double bench_decode_rate(scheduler *s, int batch, int prompt_len, int steps, int vocab,
                         uint64_t seed, const char *tag);

/* bench_decode_rate that also appends the wall time of every engine step of the decode phase
 * (from the step after every request had its first token) to step_s[*n_steps], at most cap. */
double bench_decode_rate_steps(scheduler *s, int batch, int prompt_len, int steps, int vocab,
                               uint64_t seed, const char *tag, double *step_s, int *n_steps,
                               int cap);

/* Median of v[n] (sorts v). */
double bench_median(double *v, int n);

/* GB/s of 16 copies of 16 MiB between the backend's pinned host memory (host_alloc) and the
 * device in one copy_async, timed to an event sync on the LOAD (h2d) or STORE stream; median of
 * reps after one warm-up. */
double bench_pinned_rate(backend *be, bool h2d, int reps);

/* KV blocks of layout l that fit in fraction of the device memory still free (0 when none). */
int bench_blocks_fitting(backend *be, const backend_kv_layout *l, double fraction);

#endif
