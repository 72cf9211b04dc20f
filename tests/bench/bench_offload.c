/* bench_offload: the host (offload) tier measured in one run, in process (no HTTP), every rate
 * next to the ceiling measured first in the same run (issue 7):
 *  1. the pinned copy rate, H2D and D2H (16 MiB copies: host_alloc + copy_async + event sync);
 *  2. the engine's host->GPU KV load rate: bytes of a host-tier hit / its load phase (submit to
 *     the request runnable, timed here around scheduler_step; the engine's own
 *     host_load_latency_seconds beside it);
 *  3. TTFT of 10K- and 100K-token prompts served from the host tier next to recompute (cold) and a
 *     full GPU prefix hit, and a sweep of lengths for tests/bench/plot_ttft.gp (--plot-data);
 *  4. decode tok/s with the tier on (write_through, every prompt new: 0% hits) vs off, in
 *     --decode-runs interleaved runs each (mean, stdev, min/max, the paired cost) and the
 *     distribution of engine step times (p50/p99/max) on vs off: stores must never delay a step;
 *  5. 512-token prefill-only requests at host hit rates 0/50/80/100%: tok/s and KV GB/s;
 *  6. greedy outputs with the tier on vs off under GPU eviction, host loads and preemption.
 * Ends with pass/fail against DESIGN.md's targets. Drives scheduler_step on this thread.
 *
 *   bench_offload --model DIR [--device cuda|cpu] [--load-format dummy] [--offload-gib G]
 *                 [--quick] [--plot-data FILE] [--out FILE.md] [--hardware NAME] [--threads N]
 *                 [--only ttft,sweep,decode,prefill512,identical] [--load-layer-groups G]
 *                 [--decode-runs N] [--kv-cache-dtype auto,fp8]
 * --kv-cache-dtype runs everything once per KV dtype (the model reloaded each time) and ends with
 * a table of the host-tier numbers side by side; reports of the later dtypes go to FILE.<dtype>.md.
 * --quick scales prompt lengths to the model's context and shrinks the request counts (stories260K
 * on the CPU). On the H100: bench_offload --model tests/bench/models/llama-3.1-8b
 *   --load-format dummy --device cuda --plot-data ttft.dat --out bench_offload.md
 * A lone host-tier hit is loaded by layer groups and computed while it loads (the engine's
 * default), so it has no load phase of its own: load phase and load GB/s read 0. With
 * --load-layer-groups 1 it is loaded whole first, and the load phase is timed as in 2. */
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/prefix_cache.h"
#include "tests/bench/bench_util.h"

enum {
    PART_TTFT = 1,
    PART_SWEEP = 2,
    PART_DECODE = 4,
    PART_PREFILL = 8,
    PART_IDENTICAL = 16,
    PART_ALL = 31,
};

#define MAX_ROWS     16
#define HIT_REPS     3  /* GPU and host hits per length (median) */
#define MAX_DEC_RUNS 32 /* interleaved decode runs per tier */

typedef struct bench_args {
    const char *model, *device, *plot, *out, *hardware;
    model_load_format format;
    double offload_gib; /* main tier; < 0: the default for the device */
    bool quick;
    unsigned parts;
    int threads;
    int load_layer_groups; /* scheduler_config.load_layer_groups; 0: the engine's default */
    int decode_runs;       /* interleaved runs per tier of part 4; 0: the default */
    const char
        *kv_dtypes; /* --kv-cache-dtype: comma-separated kv_cache_dtype values, run in turn */
} bench_args;

/* One prompt length: TTFTs by where its KV comes from. */
typedef struct ttft_row {
    int len, nominal; /* tokens measured; the length it stands for (scaled by --quick) */
    bool in_ttft, in_sweep;
    bool measured;
    double cold_s, gpu_s, host_s; /* TTFT: recompute, full GPU prefix hit, host-tier hit */
    double load_s;                /* host hit: submit to the request runnable (median) */
    double engine_load_s;         /* the engine's host_load_latency_seconds of that load */
    double load_bytes;            /* bytes one host hit loaded */
    int n_gpu_cached, n_host_cached;
} ttft_row;

typedef struct p512_row {
    double want;             /* host hit fraction asked for */
    int n_prefix;            /* prompt tokens stored in the tier beforehand */
    double hit;              /* host-hit tokens / prompt tokens, measured */
    int64_t gpu_hit_tokens;  /* must stay 0: the GPU cache is emptied before the wave */
    double s, tok_s, kv_gbs; /* wave time, prompt tok/s, loaded GB/s */
} p512_row;

typedef struct ident_run {
    const char *name;
    bool tier;
    int n_blocks;
    int64_t preemptions, gpu_evictions, blocks_loaded, blocks_stored, host_evictions;
    int64_t tokens;
    int64_t computed; /* prompt tokens computed at admissions (not served by a cache) */
    int n_aborted;
    int mismatched_reqs; /* vs the tier-off run */
    int64_t mismatched_tokens;
    int first_mismatch; /* earliest diverging position over all requests, -1 when none */
    double s;
} ident_run;

typedef struct bench {
    bench_args a;
    backend *be;
    model *m;
    backend_kv_layout layout; /* blocks of 16 tokens */
    int vocab, budget, cap;   /* cap: the longest block-aligned prompt the model takes */
    double scale;             /* prompt-length scale (--quick), 1 otherwise */
    double t_start;
    double h2d, d2h; /* pinned copy rates, GB/s */
    double tier_gib, pin_s, tier_ready_gib;
    int main_blocks;
    ttft_row rows[MAX_ROWS];
    int n_rows;
    int p512_len, p512_n;
    p512_row p512[4];
    int n_p512;
    int dec_batch, dec_prompt, dec_steps;
    int dec_runs;
    double dec[2][MAX_DEC_RUNS]; /* [tier off/on][run] tok/s */
    double *dec_step_s[2];       /* [tier] every decode-phase engine step's wall time */
    int dec_n_steps[2], dec_step_cap;
    double dec_stored_gb;
    int64_t dec_host_hits;
    bool dec_done;
    int id_n, id_prefix, id_suffix, id_gen, id_groups, id_wave;
    ident_run id[3];
    bool id_done;
} bench;

static int report_save(const bench *b);

static void note(const bench *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%6.1f s] ", kv_now() - b->t_start);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* --- engines --- */

static scheduler *engine_new(bench *b, int n_blocks, double tier_gib, metrics *met) {
    kv_error err = {{0}};
    int fit = bench_blocks_fitting(b->be, &b->layout, 0.9);
    if (fit > 0 && n_blocks > fit) {
        note(b, "only %d of the %d KV blocks wanted fit in device memory", fit, n_blocks);
        n_blocks = fit;
    }
    scheduler_config cfg;
    scheduler_config_default(&cfg);
    cfg.n_gpu_blocks = n_blocks;
    cfg.max_num_batched_tokens = b->budget;
    cfg.offload.size_gib = tier_gib;
    cfg.offload.policy = OFFLOAD_POLICY_WRITE_THROUGH;
    if (b->a.load_layer_groups > 0) cfg.load_layer_groups = b->a.load_layer_groups;
    cfg.metrics = met;
    scheduler *s = scheduler_create(b->m, &cfg, &err);
    if (!s) {
        fprintf(stderr, "bench_offload: %s\n", err.msg);
        exit(1);
    }
    scheduler_wait_tier_ready(s); /* rates are timed with the whole tier pinned */
    scheduler_step(s);            /* an idle step publishes the tier's state in the stats */
    return s;
}

static int engine_blocks(scheduler *s) {
    return scheduler_get_stats(s).n_blocks;
}

static int64_t gpu_evictions(scheduler *s) {
    return scheduler_prefix_cache(s)->pool->n_evictions;
}

/* --- TTFT: cold, full GPU hit, host-tier hit --- */

/* Host-tier hit of a prompt whose blocks are in the tier: empties the GPU cache, then steps by
 * hand to see when the load phase ends (the step after which no request is loading anymore
 * starts by the poll that saw the load done). Returns TTFT; *load_s = submit to that poll. */
static double host_hit(scheduler *s, const int32_t *prompt, int n, bench_probe *p, double *load_s) {
    prefix_cache_reset(scheduler_prefix_cache(s));
    bench_submit(s, prompt, n, 1, NULL, p);
    double t_end = 0;
    for (bool was_loading = false, busy = true; busy;) {
        double t = kv_now();
        busy = scheduler_step(s);
        int loading = scheduler_get_stats(s).n_loading;
        if (was_loading && loading == 0 && t_end == 0) t_end = t;
        was_loading = loading > 0;
    }
    *load_s = t_end > 0 ? t_end - p->t_submit : 0;
    return p->t_first - p->t_submit;
}

static void ttft_measure(bench *b, scheduler *s, metrics *met, ttft_row *row, uint64_t seed) {
    int n = row->len;
    int32_t *prompt = kv_malloc((size_t)n * sizeof *prompt);
    bench_fill_random(prompt, n, b->vocab, seed);
    bench_probe p = {0};
    row->cold_s = bench_ttft(s, prompt, n, NULL, &p); /* write_through stores every block */
    scheduler_run_until_idle(s);
    double gpu[HIT_REPS], host[HIT_REPS], load[HIT_REPS], eng[HIT_REPS];
    for (int r = 0; r < HIT_REPS; r++) {
        gpu[r] = bench_ttft(s, prompt, n, NULL, &p);
        row->n_gpu_cached = p.n_cached_gpu;
    }
    for (int r = 0; r < HIT_REPS; r++) {
        double sum0 = met->host_load_latency_seconds.sum;
        uint64_t bytes0 = scheduler_get_stats(s).host.loaded_bytes;
        host[r] = host_hit(s, prompt, n, &p, &load[r]);
        eng[r] = met->host_load_latency_seconds.sum - sum0;
        row->load_bytes = (double)(scheduler_get_stats(s).host.loaded_bytes - bytes0);
        row->n_host_cached = p.n_cached_host;
    }
    row->gpu_s = bench_median(gpu, HIT_REPS);
    row->host_s = bench_median(host, HIT_REPS);
    row->load_s = bench_median(load, HIT_REPS);
    row->engine_load_s = bench_median(eng, HIT_REPS);
    free(prompt);
}

/* The prompt length standing for `nominal` tokens: scaled under --quick (a multiple of the block
 * size), -1 when the model cannot take it. */
static int length_for(const bench *b, int nominal) {
    int bs = b->layout.block_size;
    int n = (int)lround(nominal * b->scale / bs) * bs;
    if (n < bs) n = bs;
    return n <= b->cap ? n : -1;
}

static void rows_add(bench *b, int nominal, bool ttft) {
    int len = length_for(b, nominal);
    if (len < 0) {
        note(b, "%d tokens do not fit the model (longest prompt %d): skipped", nominal, b->cap);
        return;
    }
    int i = 0;
    while (i < b->n_rows && b->rows[i].len < len) i++;
    if (i == b->n_rows || b->rows[i].len != len) {
        KV_CHECK(b->n_rows < MAX_ROWS);
        memmove(&b->rows[i + 1], &b->rows[i], (size_t)(b->n_rows - i) * sizeof b->rows[0]);
        b->rows[i] = (ttft_row){.len = len, .nominal = nominal};
        b->n_rows++;
    }
    if (ttft) {
        b->rows[i].in_ttft = true;
        b->rows[i].nominal = nominal;
    } else {
        b->rows[i].in_sweep = true;
    }
}

/* Measures every length (shortest first), saving the report after each. Returns report_save's. */
static int run_ttft(bench *b, scheduler *s, metrics *met) {
    static const int ttft_lens[] = {10000, 100000};
    static const int sweep_lens[] = {1024, 2048, 4096, 8192, 16384, 32768, 65536, 100000};
    if (b->a.parts & PART_TTFT)
        for (size_t i = 0; i < sizeof ttft_lens / sizeof *ttft_lens; i++)
            rows_add(b, ttft_lens[i], true);
    if (b->a.parts & PART_SWEEP)
        for (size_t i = 0; i < sizeof sweep_lens / sizeof *sweep_lens; i++)
            rows_add(b, sweep_lens[i], false);
    int rc = 0;
    if (b->n_rows == 0) return 0;
    /* warm-up: every path once (chunked prefill, copied last block, host load) */
    int warm =
        b->rows[b->n_rows - 1].len < 2 * b->budget ? b->rows[b->n_rows - 1].len : 2 * b->budget;
    ttft_row w = {.len = warm};
    ttft_measure(b, s, met, &w, 17);
    for (int i = 0; i < b->n_rows; i++) {
        ttft_row *r = &b->rows[i];
        ttft_measure(b, s, met, r, 1000 + (uint64_t)r->len);
        r->measured = true;
        note(b,
             "TTFT %d tokens: cold %.1f ms, GPU hit %.2f ms, host hit %.2f ms (load %.2f ms, "
             "%.1f GB/s)",
             r->len, r->cold_s * 1e3, r->gpu_s * 1e3, r->host_s * 1e3, r->load_s * 1e3,
             r->load_s > 0 ? r->load_bytes / r->load_s / 1e9 : 0);
        rc |= report_save(b);
    }
    return rc;
}

/* --- 512-token prefill-only waves at host hit rates --- */

/* One wave of n prefill-only requests of p512_len tokens whose first frac of blocks the host
 * tier holds (stored by a wave of the prefixes alone, then dropped from the GPU cache). */
static void p512_wave(bench *b, scheduler *s, double frac, int n, uint64_t seed, p512_row *row) {
    int bs = b->layout.block_size, len = b->p512_len;
    int32_t *prompts = kv_malloc((size_t)n * (size_t)len * sizeof *prompts);
    bench_probe *p = kv_calloc((size_t)n, sizeof *p);
    int k = (int)lround(frac * (len / bs)) * bs;
    *row = (p512_row){.want = frac, .n_prefix = k};
    for (int i = 0; i < n; i++)
        bench_fill_random(prompts + (size_t)i * len, len, b->vocab, seed + 7919 * (uint64_t)i);
    if (k > 0) {
        for (int i = 0; i < n; i++) bench_submit(s, prompts + (size_t)i * len, k, 1, NULL, &p[i]);
        scheduler_run_until_idle(s);
    }
    prefix_cache_reset(scheduler_prefix_cache(s));
    scheduler_stats st0 = scheduler_get_stats(s);
    double t0 = kv_now(), t1 = t0;
    for (int i = 0; i < n; i++) bench_submit(s, prompts + (size_t)i * len, len, 1, NULL, &p[i]);
    scheduler_run_until_idle(s);
    for (int i = 0; i < n; i++)
        if (p[i].t_last > t1) t1 = p[i].t_last;
    scheduler_stats st1 = scheduler_get_stats(s);
    row->s = t1 - t0;
    row->hit = (double)(st1.host_hit_tokens - st0.host_hit_tokens) / ((double)n * len);
    row->gpu_hit_tokens = st1.prefix_hit_tokens - st0.prefix_hit_tokens;
    row->tok_s = (double)n * len / row->s;
    row->kv_gbs = (double)(st1.host.loaded_bytes - st0.host.loaded_bytes) / row->s / 1e9;
    free(prompts);
    free(p);
}

static void run_prefill512(bench *b, scheduler *s) {
    static const double fracs[] = {0, 0.5, 0.8, 1.0};
    p512_row warm; /* the shapes of the timed waves, once */
    p512_wave(b, s, 0.5, b->p512_n / 8 > 1 ? b->p512_n / 8 : 1, 3, &warm);
    for (int f = 0; f < 4; f++) {
        p512_row *row = &b->p512[f];
        p512_wave(b, s, fracs[f], b->p512_n, ((uint64_t)(f + 1) << 32) + 5, row);
        b->n_p512 = f + 1;
        note(b, "prefill %d x %d tokens, %.0f%% host hits: %.0f tok/s, KV %.1f GB/s", b->p512_n,
             b->p512_len, row->hit * 100, row->tok_s, row->kv_gbs);
    }
}

/* --- decode with the tier on vs off --- */

static void run_decode(bench *b) {
    int bs = b->layout.block_size;
    int per_req = (b->dec_prompt + b->dec_steps + 1 + bs - 1) / bs;
    int n_blocks = 2 * b->dec_batch * per_req + 64;
    double tier = b->tier_gib < 4 ? b->tier_gib : 4;
    scheduler *eng[2] = {engine_new(b, n_blocks, 0, NULL), engine_new(b, n_blocks, tier, NULL)};
    for (int t = 0; t < 2; t++) /* warm-up: allocations, recorded decode steps */
        bench_decode_rate(eng[t], b->dec_batch, b->dec_prompt, b->dec_steps / 4, b->vocab,
                          50000 + 1000 * (uint64_t)t, t ? "warm-on" : "warm-off");
    scheduler_stats st0 = scheduler_get_stats(eng[1]);
    char tag[32];
    b->dec_step_cap = b->dec_runs * (b->dec_steps + 8);
    for (int t = 0; t < 2; t++) {
        b->dec_step_s[t] = kv_malloc((size_t)b->dec_step_cap * sizeof(double));
        b->dec_n_steps[t] = 0;
    }
    for (int run = 0; run < b->dec_runs; run++)
        for (int k = 0; k < 2; k++) { /* off, on, on, off, off, on...: drift hits both alike */
            int t = run % 2 ? 1 - k : k;
            snprintf(tag, sizeof tag, "dec-%d-%d", t, run);
            b->dec[t][run] =
                bench_decode_rate_steps(eng[t], b->dec_batch, b->dec_prompt, b->dec_steps, b->vocab,
                                        60000 + 1000 * (uint64_t)(2 * run + t), tag,
                                        b->dec_step_s[t], &b->dec_n_steps[t], b->dec_step_cap);
            note(b, "decode batch %d, tier %s, run %d: %.1f tok/s", b->dec_batch, t ? "on" : "off",
                 run + 1, b->dec[t][run]);
        }
    scheduler_stats st1 = scheduler_get_stats(eng[1]);
    b->dec_stored_gb = (double)(st1.host.stored_bytes - st0.host.stored_bytes) / 1e9;
    b->dec_host_hits = st1.host_hit_tokens - st0.host_hit_tokens;
    b->dec_done = true;
    scheduler_free(eng[0]);
    scheduler_free(eng[1]);
}

typedef struct dec_stats {
    double mean, stdev, min, max; /* tok/s over the runs */
    double p50, p99, step_max;    /* step seconds */
    int n_slow;                   /* steps over 1.5x p50 */
} dec_stats;

static dec_stats dec_stats_of(const bench *b, int t) {
    dec_stats d = {.min = INFINITY, .max = 0};
    int n = b->dec_runs;
    for (int r = 0; r < n; r++) {
        d.mean += b->dec[t][r] / n;
        d.min = fmin(d.min, b->dec[t][r]);
        d.max = fmax(d.max, b->dec[t][r]);
    }
    for (int r = 0; r < n; r++) d.stdev += (b->dec[t][r] - d.mean) * (b->dec[t][r] - d.mean);
    d.stdev = n > 1 ? sqrt(d.stdev / (n - 1)) : 0;
    int ns = b->dec_n_steps[t];
    if (ns > 0) {
        double *v = kv_malloc((size_t)ns * sizeof *v);
        memcpy(v, b->dec_step_s[t], (size_t)ns * sizeof *v);
        d.p50 = bench_median(v, ns); /* sorts v */
        d.p99 = v[(int)(0.99 * (ns - 1))];
        d.step_max = v[ns - 1];
        for (int i = 0; i < ns; i++) d.n_slow += v[i] > 1.5 * d.p50;
        free(v);
    }
    return d;
}

/* Mean and stdev over the runs of 1 - on/off of each interleaved pair. */
static void dec_paired_cost(const bench *b, double *mean, double *sd) {
    int n = b->dec_runs;
    double m = 0, v = 0;
    for (int r = 0; r < n; r++) m += (1 - b->dec[1][r] / b->dec[0][r]) / n;
    for (int r = 0; r < n; r++) {
        double c = 1 - b->dec[1][r] / b->dec[0][r] - m;
        v += c * c;
    }
    *mean = m;
    *sd = n > 1 ? sqrt(v / (n - 1)) : 0;
}

/* --- greedy outputs, tier on vs off --- */

/* Request i: the prefix of group (7i + wave) % groups, then its own suffix. */
static void ident_prompt(const bench *b, int i, int32_t *out) {
    int g = (7 * i + i / b->id_wave) % b->id_groups;
    bench_fill_random(out, b->id_prefix, b->vocab, 777 + (uint64_t)g);
    bench_fill_random(out + b->id_prefix, b->id_suffix, b->vocab, 99991 * (uint64_t)(i + 1));
}

/* Runs the workload: waves of id_wave requests, the next wave submitted once half of the current
 * one is half-way through its tokens (so new prefixes arrive while others decode). */
static void ident_run_one(bench *b, ident_run *run, int32_t *tokens) {
    int n = b->id_n, len = b->id_prefix + b->id_suffix, m = b->id_gen;
    double tier = b->tier_gib < 4 ? b->tier_gib : 4;
    scheduler *s = engine_new(b, run->n_blocks, run->tier ? tier : 0, NULL);
    run->n_blocks = engine_blocks(s);
    bench_probe *p = kv_calloc((size_t)n, sizeof *p);
    int32_t *prompt = kv_malloc((size_t)len * sizeof *prompt);
    int64_t ev0 = gpu_evictions(s);
    double t0 = kv_now();
    int next = 0, wave_start = 0;
    for (bool busy = true; busy || next < n;) {
        int half = 0;
        for (int i = wave_start; i < next; i++) half += p[i].n_tokens >= m / 2;
        if (next < n && (next == 0 || !busy || 2 * half >= next - wave_start)) {
            wave_start = next;
            for (; next < n && next < wave_start + b->id_wave; next++) {
                ident_prompt(b, next, prompt);
                p[next].out = tokens + (size_t)next * m;
                p[next].out_cap = m;
                bench_submit(s, prompt, len, m, NULL, &p[next]);
            }
        }
        busy = scheduler_step(s);
    }
    run->s = kv_now() - t0;
    scheduler_check(s);
    scheduler_stats st = scheduler_get_stats(s);
    run->preemptions = st.n_preemptions;
    run->gpu_evictions = gpu_evictions(s) - ev0;
    if (st.host.block_bytes > 0) {
        run->blocks_loaded = (int64_t)(st.host.loaded_bytes / st.host.block_bytes);
        run->blocks_stored = (int64_t)(st.host.stored_bytes / st.host.block_bytes);
    }
    run->host_evictions = (int64_t)st.host.evictions;
    run->computed = st.prefix_query_tokens - st.prefix_hit_tokens - st.host_hit_tokens;
    for (int i = 0; i < n; i++) {
        run->tokens += p[i].n_tokens;
        run->n_aborted += p[i].finish == KV_FINISH_ABORT;
    }
    free(prompt);
    free(p);
    scheduler_free(s);
}

static void run_identical(bench *b) {
    int bs = b->layout.block_size, n = b->id_n, m = b->id_gen;
    /* a pool for half the blocks one wave touches: prefixes get evicted (and come back from the
     * host tier), decoding requests run out of blocks (preemption) */
    int set = b->id_groups * b->id_prefix / bs + b->id_wave * ((b->id_suffix + m) / bs + 1);
    int small = set / 2;
    b->id[0] = (ident_run){.name = "tier off", .tier = false, .n_blocks = small};
    b->id[1] = (ident_run){.name = "tier on", .tier = true, .n_blocks = small};
    b->id[2] = (ident_run){.name = "tier off, 2x pool (noise control)", .n_blocks = 2 * small};
    int32_t *tokens[3];
    for (int r = 0; r < 3; r++) {
        tokens[r] = kv_calloc((size_t)n * (size_t)m, sizeof(int32_t));
        ident_run_one(b, &b->id[r], tokens[r]);
        ident_run *run = &b->id[r];
        run->first_mismatch = -1;
        for (int i = 0; r > 0 && i < n; i++) {
            const int32_t *x = tokens[0] + (size_t)i * m, *y = tokens[r] + (size_t)i * m;
            int first = -1;
            for (int k = 0; k < m; k++)
                if (x[k] != y[k]) {
                    if (first < 0) first = k;
                    run->mismatched_tokens++;
                }
            if (first < 0) continue;
            run->mismatched_reqs++;
            if (run->first_mismatch < 0 || first < run->first_mismatch) run->first_mismatch = first;
        }
        note(b,
             "identical, %s: %lld tokens, %lld preemptions, %lld GPU evictions, %lld blocks "
             "loaded, %d requests differ",
             run->name, (long long)run->tokens, (long long)run->preemptions,
             (long long)run->gpu_evictions, (long long)run->blocks_loaded, run->mismatched_reqs);
    }
    for (int r = 0; r < 3; r++) free(tokens[r]);
    b->id_done = true;
}

/* --- report --- */

static const char *verdict(bool measured, bool pass) {
    return !measured ? "n/a" : pass ? "PASS" : "FAIL";
}

static const ttft_row *row_for(const bench *b, int nominal) {
    for (int i = 0; i < b->n_rows; i++)
        if (b->rows[i].measured && b->rows[i].in_ttft && b->rows[i].nominal == nominal)
            return &b->rows[i];
    return NULL;
}

/* The load the rate target is judged on: the longest host hit measured. */
static const ttft_row *row_longest(const bench *b) {
    for (int i = b->n_rows - 1; i >= 0; i--)
        if (b->rows[i].measured && b->rows[i].load_s > 0) return &b->rows[i];
    return NULL;
}

static double load_gbs(const ttft_row *r) {
    return r && r->load_s > 0 ? r->load_bytes / r->load_s / 1e9 : 0;
}

static void ttft_table(FILE *f, const bench *b, bool sweep) {
    fprintf(f,
            "| prompt tokens | recompute (cold) ms | GPU hit ms (cached) | host hit ms (from host) "
            "| load phase ms | load GB/s | %% of pinned | engine load latency ms |\n"
            "|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < b->n_rows; i++) {
        const ttft_row *r = &b->rows[i];
        if (!r->measured || (sweep ? !r->in_sweep : !r->in_ttft)) continue;
        double gbs = load_gbs(r);
        fprintf(f, "| %d | %.1f | %.2f (%d) | %.2f (%d) | %.2f | %.1f | %.1f%% | %.2f |\n", r->len,
                r->cold_s * 1e3, r->gpu_s * 1e3, r->n_gpu_cached, r->host_s * 1e3, r->n_host_cached,
                r->load_s * 1e3, gbs, 100 * gbs / b->h2d, r->engine_load_s * 1e3);
    }
    fprintf(f, "\n");
}

static void report_print(FILE *f, const bench *b) {
    const bench_args *a = &b->a;
    const hf_config *c = &b->m->cfg;
    const backend_kv_layout *l = &b->layout;
    fprintf(f, "### bench_offload: %s%s on %s\n\n", a->model,
            a->format == MODEL_LOAD_DUMMY ? " (dummy weights)" : "",
            a->hardware ? a->hardware : b->be->name);
    fprintf(f,
            "Backend `%s`, KV %s, %d layers, %d KV heads, head_dim %d; KV block %d tokens = %zu "
            "bytes (one copy per block); steps of at most %d tokens; host tier write_through, "
            "%.1f GiB asked, %.1f GiB pinned in %.1f s before any timing.%s\n\n",
            b->be->name, kv_dtype_name(b->be->kv_dtype), c->n_layers, c->n_kv_heads, c->head_dim,
            l->block_size, l->block_bytes, b->budget, b->tier_gib, b->tier_ready_gib, b->pin_s,
            b->scale < 1 ? " --quick: prompt lengths scaled to the model's context." : "");
    fprintf(f,
            "**Ceiling (measured first):** pinned copy, 16 x 16 MiB, median of 5: H2D %.1f GB/s, "
            "D2H %.1f GB/s.\n\n",
            b->h2d, b->d2h);

    if (b->n_rows > 0) {
        fprintf(f, "#### TTFT and host->GPU KV loads (%d GPU blocks)\n\n", b->main_blocks);
        fprintf(f,
                "One request, max_tokens 1. Cold: first time (write_through stores its blocks). "
                "GPU hit: again (only the last token computed). Host hit: GPU prefix cache "
                "emptied (prefix_cache_reset), so every block is loaded from the host tier and "
                "the last token recomputed; medians of %d. Load phase: submit to the step whose "
                "poll saw the load done (load GB/s = bytes loaded / load phase, vs the pinned "
                "H2D rate %.1f GB/s); engine load latency: host_load_latency_seconds (queue to "
                "poll).\n\n",
                HIT_REPS, b->h2d);
        if (a->parts & PART_TTFT) ttft_table(f, b, false);
        if (a->parts & PART_SWEEP) {
            fprintf(f, "Sweep (plot: tests/bench/plot_ttft.gp):\n\n");
            ttft_table(f, b, true);
        }
    }
    if (b->n_p512 > 0) {
        fprintf(f, "#### %d-token prefill-only requests (max_tokens 1), %d per wave\n\n",
                b->p512_len, b->p512_n);
        fprintf(f,
                "GPU prefix reuse off by construction: enable_prefix_caching=false also turns "
                "off the host tier's lookups and stores in this engine, so it stays on, every "
                "prompt is distinct and the GPU cache is emptied before each wave (GPU hit "
                "tokens column). The stored prefix of each prompt was written to the host tier "
                "by an earlier wave. KV GB/s = bytes loaded / wave time, vs pinned H2D %.1f "
                "GB/s.\n\n",
                b->h2d);
        fprintf(f,
                "| host hits asked | stored prefix | host hits measured | GPU hit tokens | wave "
                "s | prompt tok/s | KV GB/s | %% of pinned |\n|---|---|---|---|---|---|---|---|\n");
        for (int i = 0; i < b->n_p512; i++) {
            const p512_row *r = &b->p512[i];
            fprintf(f, "| %.0f%% | %d | %.1f%% | %lld | %.3f | %.0f | %.1f | %.1f%% |\n",
                    r->want * 100, r->n_prefix, r->hit * 100, (long long)r->gpu_hit_tokens, r->s,
                    r->tok_s, r->kv_gbs, 100 * r->kv_gbs / b->h2d);
        }
        fprintf(f, "\n");
    }
    if (b->dec_done) {
        dec_stats ds[2];
        for (int t = 0; t < 2; t++) ds[t] = dec_stats_of(b, t);
        double off = ds[0].mean, on = ds[1].mean;
        fprintf(f, "#### Decode with the tier on vs off (0%% hits)\n\n");
        fprintf(f,
                "%d requests x %d-token random prompts (all new) x %d generated tokens, batch "
                "decode; tok/s from the step every request had its first token to the last "
                "token. Two engines alike but for the tier, %d runs each, interleaved "
                "(off/on, on/off, ...). The tier-on runs stored %.2f GB (write_through), host hit "
                "tokens %lld. Step times: wall time of every engine step of the decode phases.\n\n",
                b->dec_batch, b->dec_prompt, b->dec_steps, b->dec_runs, b->dec_stored_gb,
                (long long)b->dec_host_hits);
        fprintf(f,
                "| tier | runs | mean tok/s | stdev | min | max | steps | step p50 ms | p99 ms "
                "| max ms | steps > 1.5x p50 |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (int t = 0; t < 2; t++) {
            const dec_stats *d = &ds[t];
            fprintf(f, "| %s | %d | %.1f | %.2f%% | %.1f | %.1f | %d | %.3f | %.3f | %.3f | %d |\n",
                    t ? "on" : "off", b->dec_runs, d->mean, 100 * d->stdev / d->mean, d->min,
                    d->max, b->dec_n_steps[t], d->p50 * 1e3, d->p99 * 1e3, d->step_max * 1e3,
                    d->n_slow);
        }
        double pc_mean, pc_sd;
        dec_paired_cost(b, &pc_mean, &pc_sd);
        fprintf(f,
                "\nOn / off: %.4f (cost %.2f%%); paired runs: cost %.2f%% +- %.2f%% (stdev of "
                "the %d pairs), standard error %.2f%%. Step p99 on / off %.3f.\n\n",
                on / off, 100 * (1 - on / off), 100 * pc_mean, 100 * pc_sd, b->dec_runs,
                100 * pc_sd / sqrt((double)b->dec_runs), ds[1].p99 / ds[0].p99);
    }
    if (b->id_done) {
        fprintf(f, "#### Greedy outputs, tier on vs off\n\n");
        fprintf(f,
                "%d requests (%d prefixes of %d tokens shared, own %d-token suffixes, %d "
                "greedy tokens each, ignore_eos) in waves of %d, the next wave once half of "
                "the current one is half-way. Every token compared with the tier-off run; the "
                "control run (tier off, another pool size, so other batches) shows how much "
                "differs from batch shapes alone.\n\n",
                b->id_n, b->id_groups, b->id_prefix, b->id_suffix, b->id_gen, b->id_wave);
        fprintf(f, "| run | GPU blocks | preemptions | GPU evictions | blocks loaded | blocks "
                   "stored | host evictions | prompt tokens computed | tokens generated | aborted "
                   "| requests differing | tokens differing | first differing position | s |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for (int r = 0; r < 3; r++) {
            const ident_run *x = &b->id[r];
            fprintf(f,
                    "| %s | %d | %lld | %lld | %lld | %lld | %lld | %lld | %lld | %d | %s%d | "
                    "%lld | %d | %.2f |\n",
                    x->name, x->n_blocks, (long long)x->preemptions, (long long)x->gpu_evictions,
                    (long long)x->blocks_loaded, (long long)x->blocks_stored,
                    (long long)x->host_evictions, (long long)x->computed, (long long)x->tokens,
                    x->n_aborted, r == 0 ? "(reference) " : "", x->mismatched_reqs,
                    (long long)x->mismatched_tokens, x->first_mismatch, x->s);
        }
        fprintf(f, "\n");
    }

    /* summary against DESIGN.md's targets */
    fprintf(f,
            "#### Summary (DESIGN.md targets)\n\n| target | measured | result |\n|---|---|---|\n");
    bool real = b->scale == 1;
    const ttft_row *lr = row_longest(b);
    if (lr)
        fprintf(f,
                "| host->GPU KV load rate >= 90%% of pinned H2D (%d-token hit) | %.1f GB/s = "
                "%.1f%% of %.1f | %s |\n",
                lr->len, load_gbs(lr), 100 * load_gbs(lr) / b->h2d, b->h2d,
                verdict(true, load_gbs(lr) >= 0.9 * b->h2d));
    const ttft_row *r10 = row_for(b, 10000), *r100 = row_for(b, 100000);
    if (r10) {
        fprintf(f, "| TTFT 10K tokens from the host tier <= 30 ms | %.2f ms (%d tokens) | %s |\n",
                r10->host_s * 1e3, r10->len, verdict(real, r10->host_s <= 0.030));
        fprintf(f, "| TTFT 10K tokens, no cache <= 290 ms | %.1f ms | %s |\n", r10->cold_s * 1e3,
                verdict(real, r10->cold_s <= 0.290));
    }
    if (r100)
        fprintf(f, "| TTFT 100K tokens from the host tier <= 270 ms | %.2f ms (%d tokens) | %s |\n",
                r100->host_s * 1e3, r100->len, verdict(real, r100->host_s <= 0.270));
    if (b->dec_done) {
        double off = dec_stats_of(b, 0).mean, on = dec_stats_of(b, 1).mean, pc_mean, pc_sd;
        dec_paired_cost(b, &pc_mean, &pc_sd);
        fprintf(f,
                "| decode cost of offloading at 0%% hits <= 1%% | %.2f%% (paired %.2f%% +- "
                "%.2f%%, %d runs) | %s |\n",
                100 * (1 - on / off), 100 * pc_mean, 100 * pc_sd, b->dec_runs,
                verdict(true, on >= 0.99 * off));
    }
    if (b->n_p512 == 4)
        fprintf(f, "| %d-token prefill-only, 100%% host hits >= 420k tok/s | %.0f tok/s | %s |\n",
                b->p512_len, b->p512[3].tok_s,
                verdict(real && b->p512_len == 512, b->p512[3].tok_s >= 420e3));
    if (b->id_done)
        fprintf(f,
                "| greedy outputs identical, tier on vs off | %d of %d requests differ "
                "(control: %d) | %s |\n",
                b->id[1].mismatched_reqs, b->id_n, b->id[2].mismatched_reqs,
                verdict(true, b->id[1].mismatched_reqs == 0 && b->id[1].n_aborted == 0));
    if (!real)
        fprintf(f, "\nn/a: lengths scaled by --quick, so the absolute targets do not apply.\n");
}

static int plot_write(const bench *b) {
    FILE *f = fopen(b->a.plot, "w");
    if (!f) return -1;
    fprintf(f, "# bench_offload TTFT, %s on %s\n# len recompute_ms host_ms gpu_hit_ms\n",
            b->a.model, b->a.hardware ? b->a.hardware : b->be->name);
    for (int i = 0; i < b->n_rows; i++)
        if (b->rows[i].measured)
            fprintf(f, "%d %.4f %.4f %.4f\n", b->rows[i].len, b->rows[i].cold_s * 1e3,
                    b->rows[i].host_s * 1e3, b->rows[i].gpu_s * 1e3);
    return fclose(f) ? -1 : 0;
}

/* Writes --out and --plot-data with what is measured so far (after every part, so that a run cut
 * short by a time limit or a crash still leaves its tables). Returns 0, or 1 when a file fails. */
static int report_save(const bench *b) {
    int rc = 0;
    if (b->a.out) {
        FILE *f = fopen(b->a.out, "w");
        if (f) report_print(f, b);
        if (!f || fclose(f)) {
            fprintf(stderr, "bench_offload: cannot write %s\n", b->a.out);
            rc = 1;
        }
    }
    if (b->a.plot && b->n_rows > 0 && plot_write(b)) {
        fprintf(stderr, "bench_offload: cannot write %s\n", b->a.plot);
        rc = 1;
    }
    return rc;
}

/* --- main --- */

static unsigned parts_parse(const char *s) {
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {{"ttft", PART_TTFT},
                 {"sweep", PART_SWEEP},
                 {"decode", PART_DECODE},
                 {"prefill512", PART_PREFILL},
                 {"identical", PART_IDENTICAL}};
    unsigned parts = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        unsigned bit = 0;
        for (size_t i = 0; i < sizeof names / sizeof *names; i++)
            if (strcmp(t, names[i].name) == 0) bit = names[i].bit;
        if (!bit) return 0;
        parts |= bit;
    }
    return parts;
}

static int args_parse(int argc, char **argv, bench_args *a) {
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"device", required_argument, NULL, 'd'},
                                         {"load-format", required_argument, NULL, 'f'},
                                         {"offload-gib", required_argument, NULL, 'o'},
                                         {"quick", no_argument, NULL, 'q'},
                                         {"plot-data", required_argument, NULL, 'p'},
                                         {"out", required_argument, NULL, 'O'},
                                         {"only", required_argument, NULL, 'x'},
                                         {"hardware", required_argument, NULL, 'h'},
                                         {"threads", required_argument, NULL, 'j'},
                                         {"load-layer-groups", required_argument, NULL, 'g'},
                                         {"kv-cache-dtype", required_argument, NULL, 'k'},
                                         {"decode-runs", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        if (c == 'm')
            a->model = optarg;
        else if (c == 'd')
            a->device = optarg;
        else if (c == 'f')
            a->format = strcmp(optarg, "dummy") == 0 ? MODEL_LOAD_DUMMY : MODEL_LOAD_SAFETENSORS;
        else if (c == 'o')
            a->offload_gib = atof(optarg);
        else if (c == 'q')
            a->quick = true;
        else if (c == 'p')
            a->plot = optarg;
        else if (c == 'O')
            a->out = optarg;
        else if (c == 'x')
            a->parts = parts_parse(optarg);
        else if (c == 'h')
            a->hardware = optarg;
        else if (c == 'j')
            a->threads = atoi(optarg);
        else if (c == 'g')
            a->load_layer_groups = atoi(optarg);
        else if (c == 'r' && atoi(optarg) >= 1 && atoi(optarg) <= MAX_DEC_RUNS)
            a->decode_runs = atoi(optarg);
        else if (c == 'k')
            a->kv_dtypes = optarg;
        else {
            fprintf(
                stderr,
                "usage: bench_offload --model DIR [--device cuda|cpu] [--load-format dummy] "
                "[--offload-gib G] [--quick] [--plot-data FILE] [--out FILE.md] "
                "[--hardware NAME] [--threads N] [--load-layer-groups G] [--decode-runs N] "
                "[--only ttft,sweep,decode,prefill512,identical] [--kv-cache-dtype auto,fp8]\n");
            return -1;
        }
    }
    if (a->parts == 0) {
        fprintf(stderr, "bench_offload: --only takes ttft, sweep, decode, prefill512, identical\n");
        return -1;
    }
    return 0;
}

/* What the side-by-side table shows of one KV dtype's run. */
typedef struct dtype_result {
    char name[16];
    size_t block_bytes;
    double host_s[2], load_gbs[2]; /* 10K, 100K host hit: TTFT, load GB/s (0: not measured) */
    double p512_tok_s;             /* 100% host hits */
    double dec_tok_s;              /* decode, tier off */
} dtype_result;

/* Loads the model with the backend's current KV dtype and runs the parts asked for; 77 when the
 * model does not load. */
static int run_parts(bench *b) {
    bench_args *a = &b->a;
    kv_error err = {{0}};
    int bs;
    b->m = model_load(a->model, b->be,
                      &(model_load_options){.format = a->format, .max_tokens = b->budget}, &err);
    if (!b->m) {
        fprintf(stderr, "bench_offload: %s (skipped)\n", err.msg);
        return 77;
    }
    note(b, "model loaded: %s, %.1f GB of weights", a->model, b->m->weight_bytes / 1e9);
    b->layout = model_kv_layout(b->m, 16);
    bs = b->layout.block_size;
    b->vocab = b->m->vocab;
    b->cap = (b->m->max_position - 2) / bs * bs;
    b->scale = a->quick && b->cap < 100000 ? b->cap / 100000.0 : 1;
    b->p512_len = 512 <= b->cap ? 512 : 256;
    b->p512_n = a->quick ? 32 : 256;
    b->dec_batch = 32, b->dec_prompt = 128, b->dec_steps = 256;
    b->dec_runs = a->decode_runs ? a->decode_runs : a->quick ? 2 : 10;
    if (b->dec_prompt + b->dec_steps + 1 > b->m->max_position) b->dec_steps = b->cap / 2;
    b->id_n = 200, b->id_groups = 8, b->id_wave = 40;
    b->id_prefix = a->quick ? 128 : 1024, b->id_suffix = a->quick ? 16 : 64;
    b->id_gen = a->quick ? 32 : 48;

    /* 4, 6 first (engines of their own), then 5 and 2-3 on the engine with the main tier: the
     * longest prompts come last, so a run cut short keeps every other table */
    int rc = 0;
    if (a->parts & PART_DECODE) {
        run_decode(b);
        rc |= report_save(b);
    }
    if (a->parts & PART_IDENTICAL) {
        run_identical(b);
        rc |= report_save(b);
    }
    if (a->parts & (PART_TTFT | PART_SWEEP | PART_PREFILL)) {
        metrics met;
        metrics_init(&met, "bench_offload");
        int n_tier_slots = (int)(b->tier_gib * (1 << 30) / (double)b->layout.block_bytes);
        int per_prompt = b->p512_len / bs + 1;
        if (b->p512_n > 9 * n_tier_slots / (10 * per_prompt))
            b->p512_n = 9 * n_tier_slots / (10 * per_prompt);
        int want = length_for(b, 100000);
        want = (want > 0 ? want : b->cap) / bs + 2;
        if (want < b->p512_n * per_prompt) want = b->p512_n * per_prompt;
        double t0 = kv_now();
        scheduler *s = engine_new(b, want + b->budget / bs + 64, b->tier_gib, &met);
        b->pin_s = kv_now() - t0;
        b->main_blocks = engine_blocks(s);
        b->tier_ready_gib = (double)scheduler_get_stats(s).host.bytes_ready / (1 << 30);
        note(b, "engine: %d GPU blocks, host tier %.1f GiB pinned in %.1f s", b->main_blocks,
             b->tier_ready_gib, b->pin_s);
        if ((a->parts & PART_PREFILL) && b->p512_n > 0) {
            run_prefill512(b, s);
            rc |= report_save(b);
        }
        if (a->parts & (PART_TTFT | PART_SWEEP)) rc |= run_ttft(b, s, &met);
        scheduler_free(s);
        metrics_free(&met);
    }
    report_print(stdout, b);
    rc |= report_save(b);
    return rc;
}

static void dtype_result_fill(dtype_result *r, const bench *b, const char *name) {
    snprintf(r->name, sizeof r->name, "%s", name);
    r->block_bytes = b->layout.block_bytes;
    static const int lens[2] = {10000, 100000};
    for (int i = 0; i < 2; i++) {
        const ttft_row *row = row_for(b, lens[i]);
        if (row && row->measured) r->host_s[i] = row->host_s;
        if (row && row->measured && row->load_s > 0)
            r->load_gbs[i] = row->load_bytes / row->load_s / 1e9;
    }
    for (int i = 0; i < b->n_p512; i++)
        if (b->p512[i].want >= 1.0) r->p512_tok_s = b->p512[i].tok_s;
    if (b->dec_done) r->dec_tok_s = 0.5 * (b->dec[0][0] + b->dec[0][1]);
}

static void dtype_table(FILE *f, const dtype_result *r, int n, double h2d) {
    fprintf(f,
            "\n#### KV dtypes side by side (ratio: vs the first; pinned H2D %.1f GB/s)\n\n"
            "| KV dtype | block bytes | host-hit TTFT 10K ms | load GB/s | host-hit TTFT 100K ms | "
            "load GB/s | prefill-only, 100%% host hits, tok/s | decode tok/s |\n"
            "|---|---|---|---|---|---|---|---|\n",
            h2d);
    for (int i = 0; i < n; i++) {
        const dtype_result *x = &r[i], *o = &r[0];
        fprintf(f,
                "| %s | %zu (%.2fx) | %.3f (%.2fx) | %.1f | %.3f (%.2fx) | %.1f | %.0f (%.2fx) "
                "| %.0f (%.2fx) |\n",
                x->name, x->block_bytes, (double)x->block_bytes / (double)o->block_bytes,
                1e3 * x->host_s[0], o->host_s[0] > 0 ? x->host_s[0] / o->host_s[0] : 0,
                x->load_gbs[0], 1e3 * x->host_s[1],
                o->host_s[1] > 0 ? x->host_s[1] / o->host_s[1] : 0, x->load_gbs[1], x->p512_tok_s,
                o->p512_tok_s > 0 ? x->p512_tok_s / o->p512_tok_s : 0, x->dec_tok_s,
                o->dec_tok_s > 0 ? x->dec_tok_s / o->dec_tok_s : 0);
    }
}

int main(int argc, char **argv) {
    bench *b = kv_calloc(1, sizeof *b);
    bench_args *a = &b->a;
    *a = (bench_args){.device = backend_cuda_available() ? "cuda" : "cpu",
                      .format = MODEL_LOAD_SAFETENSORS,
                      .offload_gib = -1,
                      .parts = PART_ALL};
    if (args_parse(argc, argv, a)) return 2;
    static char dir[1024];
    if (!a->model) {
        const char *td = getenv("KVSERVE_TESTDATA");
        snprintf(dir, sizeof dir, "%s/models/stories260K", td ? td : "../shared/testdata");
        a->model = dir;
    }
    bool cuda = strcmp(a->device, "cuda") == 0;
    b->t_start = kv_now();
    b->budget = 8192;
    b->tier_gib = a->offload_gib >= 0 ? a->offload_gib : cuda ? 20 : 1;
    if (b->tier_gib <= 0) {
        fprintf(stderr,
                "bench_offload: --offload-gib must be > 0 (the tier is what it measures)\n");
        return 2;
    }
    kv_error err = {{0}};
    b->be = backend_create(a->device, a->threads, &err);
    if (!b->be) {
        fprintf(stderr, "bench_offload: %s (skipped)\n", err.msg);
        return 77;
    }
    /* 1. the ceiling, before anything else touches the link */
    b->h2d = bench_pinned_rate(b->be, true, 5);
    b->d2h = bench_pinned_rate(b->be, false, 5);
    note(b, "pinned copy 16 MiB: H2D %.1f GB/s, D2H %.1f GB/s", b->h2d, b->d2h);
    /* 2-6 once per KV dtype, each on a fresh model and bench state */
    char list[256];
    snprintf(list, sizeof list, "%s", a->kv_dtypes ? a->kv_dtypes : "auto");
    dtype_result res[4];
    int n_res = 0, rc = 0;
    const bench fresh = *b;
    const char *out0 = a->out, *plot0 = a->plot;
    static char out_i[1200], plot_i[1200];
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t && n_res < 4;
         t = strtok_r(NULL, ",", &save)) {
        *b = fresh;
        if (backend_set_kv_cache_dtype(b->be, t, &err)) {
            fprintf(stderr, "bench_offload: %s\n", err.msg);
            rc = 2;
            break;
        }
        if (n_res > 0 && out0) snprintf(out_i, sizeof out_i, "%s.%s.md", out0, t), b->a.out = out_i;
        if (n_res > 0 && plot0)
            snprintf(plot_i, sizeof plot_i, "%s.%s", plot0, t), b->a.plot = plot_i;
        note(b, "KV cache dtype %s", t);
        int r = run_parts(b);
        if (r == 77) {
            backend_destroy(b->be);
            free(b);
            return 77;
        }
        rc |= r;
        dtype_result_fill(&res[n_res++], b, t);
        model_free(b->m);
        b->m = NULL;
        free(b->dec_step_s[0]);
        free(b->dec_step_s[1]);
        b->dec_step_s[0] = b->dec_step_s[1] = NULL;
    }
    if (n_res > 1) {
        dtype_table(stdout, res, n_res, b->h2d);
        if (out0) {
            snprintf(out_i, sizeof out_i, "%s.kv_dtypes.md", out0);
            FILE *f = fopen(out_i, "w");
            if (f) dtype_table(f, res, n_res, b->h2d);
            if (!f || fclose(f)) rc |= 1;
        }
    }
    note(b, "done");
    backend_destroy(b->be);
    free(b);
    return rc;
}
