/* Server metrics in Prometheus text format, named like vLLM's under "kvserve:": gauges, counters
 * and histograms with vLLM's buckets, plus the host (offload) tier. Owned by the server (no
 * globals); every update is thread-safe (atomics; a mutex per histogram) so the engine thread and
 * HTTP threads update it directly. Knows nothing of where the numbers come from. */
#ifndef KVSERVE_METRICS_H
#define KVSERVE_METRICS_H

#include <pthread.h>
#include <stdatomic.h>

#include "model/common.h"

#define METRICS_MAX_BUCKETS 32

typedef struct metrics_counter {
    _Atomic uint64_t value;
} metrics_counter;

typedef struct metrics_gauge {
    _Atomic double value;
} metrics_gauge;

typedef struct metrics_histogram {
    const double *bounds; /* upper bounds, ascending, without +Inf */
    int n_bounds;
    pthread_mutex_t lock;
    uint64_t counts[METRICS_MAX_BUCKETS + 1]; /* per bucket (not cumulative); last is +Inf */
    double sum;
    uint64_t count;
} metrics_histogram;

/* A block store below the host tier (disk, remote): its stats as the engine last saw them. */
typedef struct metrics_store_tier {
    metrics_gauge usage_perc;   /* bytes used / limit (0 where the limit is the medium's) */
    metrics_gauge blocks;       /* blocks held (where the store knows) */
    metrics_counter hit_tokens; /* prompt tokens read from it instead of recomputed */
    metrics_counter hits, misses, rejected; /* gets, in blocks */
    metrics_counter puts, puts_failed, evictions, errors;
    metrics_counter read_bytes, written_bytes;
    metrics_histogram get_latency_seconds; /* one block from the store into host memory */
} metrics_store_tier;

typedef struct metrics {
    char *model_name; /* the model_name label */
    /* scheduler state (set by the engine each step) */
    metrics_gauge num_requests_running;
    metrics_gauge num_requests_waiting;
    metrics_gauge kv_cache_usage_perc; /* GPU KV blocks in use, 0..1 */
    /* GPU prefix cache, in tokens */
    metrics_counter prefix_cache_queries;
    metrics_counter prefix_cache_hits;
    metrics_counter num_preemptions;
    /* tokens */
    metrics_counter prompt_tokens;
    metrics_counter generation_tokens;
    metrics_counter request_success[KV_FINISH_COUNT]; /* by finished_reason */
    /* host (offload) tier */
    metrics_gauge host_cache_usage_perc; /* host slots in use, 0..1 */
    metrics_counter host_cache_queries;  /* tokens looked up in the host tier */
    metrics_counter host_cache_hits;     /* tokens found there */
    metrics_counter host_stored_bytes;   /* GPU -> host */
    metrics_counter host_loaded_bytes;   /* host -> GPU */
    metrics_counter host_evictions;      /* host blocks dropped to make room */
    metrics_counter host_stores_skipped; /* stores that found no room in the host tier */
    metrics_histogram host_load_latency_seconds;
    metrics_store_tier disk, remote; /* below the host tier */
    /* request latencies */
    metrics_histogram time_to_first_token_seconds;
    metrics_histogram inter_token_latency_seconds;
    metrics_histogram e2e_request_latency_seconds;
} metrics;

void metrics_init(metrics *m, const char *model_name);
void metrics_free(metrics *m);

static inline void metrics_counter_add(metrics_counter *c, uint64_t n) {
    atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}
static inline uint64_t metrics_counter_get(metrics_counter *c) {
    return atomic_load_explicit(&c->value, memory_order_relaxed);
}
/* For a count kept cumulatively elsewhere (the tier's stats): moves the counter up to total,
 * never down, so a reader sees a counter that only goes up even if totals arrive out of order. */
static inline void metrics_counter_raise_to(metrics_counter *c, uint64_t total) {
    uint64_t cur = atomic_load_explicit(&c->value, memory_order_relaxed);
    while (cur < total && !atomic_compare_exchange_weak_explicit(
                              &c->value, &cur, total, memory_order_relaxed, memory_order_relaxed)) {
    }
}
static inline void metrics_gauge_set(metrics_gauge *g, double v) {
    atomic_store_explicit(&g->value, v, memory_order_relaxed);
}
static inline double metrics_gauge_get(metrics_gauge *g) {
    return atomic_load_explicit(&g->value, memory_order_relaxed);
}
void metrics_histogram_observe(metrics_histogram *h, double v);

/* The whole registry in Prometheus text exposition format 0.0.4 (malloc'd; caller frees). */
char *metrics_render(metrics *m);

#endif
