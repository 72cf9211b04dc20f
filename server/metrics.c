/* Metrics registry and its Prometheus text rendering. The rendering follows what vLLM's
 * prometheus_client output looks like: counters are exposed with a _total suffix (HELP/TYPE lines
 * included), histograms as cumulative _bucket{le=...} lines then _sum and _count. */
#include "server/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* vLLM's buckets (vllm/v1/metrics/loggers.py). */
static const double ttft_buckets[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                      0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                      20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double itl_buckets[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                     0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double e2e_buckets[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                     5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                     60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
/* Host-tier loads: one block of an 8B model is 2 MiB (~40 us at 50 GB/s); a 100K-token prompt
 * is 12 GiB (~250 ms). */
static const double load_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                      0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0};

#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void histogram_init(metrics_histogram *h, const double *bounds, int n_bounds) {
    KV_CHECK(n_bounds <= METRICS_MAX_BUCKETS);
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n_bounds = n_bounds;
    KV_CHECK(pthread_mutex_init(&h->lock, NULL) == 0);
}

void metrics_init(metrics *m, const char *model_name) {
    memset(m, 0, sizeof *m);
    m->model_name = kv_strdup(model_name ? model_name : "");
    histogram_init(&m->time_to_first_token_seconds, ttft_buckets, N_OF(ttft_buckets));
    histogram_init(&m->inter_token_latency_seconds, itl_buckets, N_OF(itl_buckets));
    histogram_init(&m->e2e_request_latency_seconds, e2e_buckets, N_OF(e2e_buckets));
    histogram_init(&m->host_load_latency_seconds, load_buckets, N_OF(load_buckets));
    histogram_init(&m->disk.get_latency_seconds, load_buckets, N_OF(load_buckets));
    histogram_init(&m->remote.get_latency_seconds, load_buckets, N_OF(load_buckets));
}

void metrics_free(metrics *m) {
    pthread_mutex_destroy(&m->time_to_first_token_seconds.lock);
    pthread_mutex_destroy(&m->inter_token_latency_seconds.lock);
    pthread_mutex_destroy(&m->e2e_request_latency_seconds.lock);
    pthread_mutex_destroy(&m->host_load_latency_seconds.lock);
    pthread_mutex_destroy(&m->disk.get_latency_seconds.lock);
    pthread_mutex_destroy(&m->remote.get_latency_seconds.lock);
    free(m->model_name);
    m->model_name = NULL;
}

void metrics_histogram_observe(metrics_histogram *h, double v) {
    if (isnan(v)) return;
    int b = 0;
    while (b < h->n_bounds && v > h->bounds[b]) b++; /* le: v <= bound */
    pthread_mutex_lock(&h->lock);
    h->counts[b]++;
    h->sum += v;
    h->count++;
    pthread_mutex_unlock(&h->lock);
}

typedef struct text_buf {
    char *data;
    size_t len, cap;
} text_buf;

__attribute__((format(printf, 2, 3))) static void buf_printf(text_buf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        KV_CHECK(n >= 0);
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->data = kv_realloc(b->data, b->cap);
    }
}

/* Floats the way Prometheus' Go client and prometheus_client print them: 1.0, 0.25, 2560.0. */
static void format_float(char *out, size_t size, double v) {
    if (isinf(v))
        snprintf(out, size, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(out, size, "%.1f", v);
    else
        snprintf(out, size, "%.15g", v);
}

typedef struct render_ctx {
    text_buf buf;
    char labels[300]; /* model_name="..." escaped */
} render_ctx;

static void render_header(render_ctx *r, const char *name, const char *type, const char *help) {
    buf_printf(&r->buf, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_counter(render_ctx *r, const char *name, const char *help, metrics_counter *c) {
    char full[128];
    snprintf(full, sizeof full, "%s_total", name);
    render_header(r, full, "counter", help);
    buf_printf(&r->buf, "%s{%s} %llu\n", full, r->labels,
               (unsigned long long)metrics_counter_get(c));
}

static void render_gauge(render_ctx *r, const char *name, const char *help, metrics_gauge *g) {
    char v[48];
    format_float(v, sizeof v, metrics_gauge_get(g));
    render_header(r, name, "gauge", help);
    buf_printf(&r->buf, "%s{%s} %s\n", name, r->labels, v);
}

static void render_histogram(render_ctx *r, const char *name, const char *help,
                             metrics_histogram *h) {
    uint64_t counts[METRICS_MAX_BUCKETS + 1], count;
    double sum;
    pthread_mutex_lock(&h->lock); /* one consistent snapshot: buckets add up to _count */
    memcpy(counts, h->counts, sizeof counts);
    sum = h->sum;
    count = h->count;
    pthread_mutex_unlock(&h->lock);

    render_header(r, name, "histogram", help);
    uint64_t cumulative = 0;
    char le[48];
    for (int b = 0; b <= h->n_bounds; b++) {
        cumulative += counts[b];
        format_float(le, sizeof le, b < h->n_bounds ? h->bounds[b] : INFINITY);
        buf_printf(&r->buf, "%s_bucket{%s,le=\"%s\"} %llu\n", name, r->labels, le,
                   (unsigned long long)cumulative);
    }
    format_float(le, sizeof le, sum);
    buf_printf(&r->buf, "%s_sum{%s} %s\n", name, r->labels, le);
    buf_printf(&r->buf, "%s_count{%s} %llu\n", name, r->labels, (unsigned long long)count);
}

/* Label values escape backslash, double quote and newline. */
static void escape_label(char *out, size_t size, const char *s) {
    size_t n = 0;
    for (; *s && n + 3 < size; s++) {
        if (*s == '\\' || *s == '"')
            out[n++] = '\\', out[n++] = *s;
        else if (*s == '\n')
            out[n++] = '\\', out[n++] = 'n';
        else
            out[n++] = *s;
    }
    out[n] = '\0';
}

/* kvserve:<tier>_... for one store tier ("disk", "remote"). */
static void render_store_tier(render_ctx *r, const char *tier, metrics_store_tier *t) {
    char name[96], help[160];
#define STORE_METRIC(fn, suffix, text, field)                                                      \
    snprintf(name, sizeof name, "kvserve:%s_%s", tier, suffix);                                    \
    snprintf(help, sizeof help, "%s tier: %s", tier, text);                                        \
    fn(r, name, help, field)
    STORE_METRIC(render_gauge, "kv_cache_usage_perc", "usage, 1 means 100 percent.",
                 &t->usage_perc);
    STORE_METRIC(render_gauge, "kv_cache_blocks", "KV blocks held.", &t->blocks);
    STORE_METRIC(render_counter, "prefix_cache_hits",
                 "prompt tokens read from it instead of recomputed.", &t->hit_tokens);
    STORE_METRIC(render_counter, "block_hits", "blocks read.", &t->hits);
    STORE_METRIC(render_counter, "block_misses", "reads that found nothing.", &t->misses);
    STORE_METRIC(render_counter, "blocks_rejected",
                 "blocks refused (corrupt, truncated, foreign), never loaded.", &t->rejected);
    STORE_METRIC(render_counter, "block_puts", "blocks written.", &t->puts);
    STORE_METRIC(render_counter, "block_puts_failed", "writes that failed.", &t->puts_failed);
    STORE_METRIC(render_counter, "evictions", "blocks dropped by its size limit.", &t->evictions);
    STORE_METRIC(render_counter, "errors", "I/O, connection and timeout errors.", &t->errors);
    STORE_METRIC(render_counter, "read_bytes", "payload bytes read.", &t->read_bytes);
    STORE_METRIC(render_counter, "written_bytes", "payload bytes written.", &t->written_bytes);
    STORE_METRIC(render_histogram, "get_latency_seconds",
                 "histogram of the time to read one block into host memory.",
                 &t->get_latency_seconds);
#undef STORE_METRIC
}

char *metrics_render(metrics *m) {
    render_ctx r = {.buf = {.data = kv_malloc(8192), .cap = 8192}};
    char escaped[256];
    escape_label(escaped, sizeof escaped, m->model_name);
    snprintf(r.labels, sizeof r.labels, "model_name=\"%s\"", escaped);

    render_gauge(&r, "kvserve:num_requests_running",
                 "Number of requests in model execution batches.", &m->num_requests_running);
    render_gauge(&r, "kvserve:num_requests_waiting", "Number of requests waiting to be processed.",
                 &m->num_requests_waiting);
    render_gauge(&r, "kvserve:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                 &m->kv_cache_usage_perc);
    render_counter(&r, "kvserve:prefix_cache_queries",
                   "Prefix cache queries, in terms of number of queried tokens.",
                   &m->prefix_cache_queries);
    render_counter(&r, "kvserve:prefix_cache_hits",
                   "Prefix cache hits, in terms of number of cached tokens.",
                   &m->prefix_cache_hits);
    render_counter(&r, "kvserve:num_preemptions",
                   "Cumulative number of preemption from the engine.", &m->num_preemptions);
    render_counter(&r, "kvserve:prompt_tokens", "Number of prefill tokens processed.",
                   &m->prompt_tokens);
    render_counter(&r, "kvserve:generation_tokens", "Number of generation tokens processed.",
                   &m->generation_tokens);

    render_header(&r, "kvserve:request_success_total", "counter",
                  "Count of successfully processed requests.");
    for (int i = KV_FINISH_STOP; i < KV_FINISH_COUNT; i++)
        buf_printf(&r.buf, "kvserve:request_success_total{%s,finished_reason=\"%s\"} %llu\n",
                   r.labels, kv_finish_name((kv_finish)i),
                   (unsigned long long)metrics_counter_get(&m->request_success[i]));

    render_gauge(&r, "kvserve:host_kv_cache_usage_perc",
                 "Host (CPU DRAM) KV tier usage. 1 means 100 percent usage.",
                 &m->host_cache_usage_perc);
    render_counter(&r, "kvserve:host_prefix_cache_queries",
                   "Host tier queries, in terms of number of queried tokens.",
                   &m->host_cache_queries);
    render_counter(&r, "kvserve:host_prefix_cache_hits",
                   "Host tier hits, in terms of number of tokens loaded instead of recomputed.",
                   &m->host_cache_hits);
    render_counter(&r, "kvserve:host_stored_bytes", "Bytes of KV blocks copied from GPU to host.",
                   &m->host_stored_bytes);
    render_counter(&r, "kvserve:host_loaded_bytes", "Bytes of KV blocks copied from host to GPU.",
                   &m->host_loaded_bytes);
    render_counter(&r, "kvserve:host_kv_cache_evictions",
                   "Host tier blocks evicted to make room for new stores.", &m->host_evictions);
    render_counter(&r, "kvserve:host_kv_cache_stores_skipped",
                   "Host tier stores skipped because no slot could be freed.",
                   &m->host_stores_skipped);
    render_histogram(&r, "kvserve:host_load_latency_seconds",
                     "Histogram of host-to-GPU KV load latency per request in seconds.",
                     &m->host_load_latency_seconds);
    render_store_tier(&r, "disk", &m->disk);
    render_store_tier(&r, "remote", &m->remote);

    render_histogram(&r, "kvserve:time_to_first_token_seconds",
                     "Histogram of time to first token in seconds.",
                     &m->time_to_first_token_seconds);
    render_histogram(&r, "kvserve:inter_token_latency_seconds",
                     "Histogram of inter-token latency in seconds.",
                     &m->inter_token_latency_seconds);
    render_histogram(&r, "kvserve:e2e_request_latency_seconds",
                     "Histogram of e2e request latency in seconds.",
                     &m->e2e_request_latency_seconds);
    return r.buf.data;
}
