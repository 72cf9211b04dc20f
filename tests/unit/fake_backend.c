/* The fake backend: per-stream queues of copies, event records, event waits, kernels and holds,
 * run in order; malloc'd memory with counts for leak checks; a gated host_alloc. */
#include "tests/unit/fake_backend.h"

#include <pthread.h>
#include <stdlib.h>

typedef enum fake_op_kind { OP_COPY, OP_RECORD, OP_WAIT, OP_KERNEL, OP_HOLD } fake_op_kind;

struct backend_event {
    bool done;
    bool freed;
    int n_refs; /* queued ops that name it */
};

typedef struct fake_op {
    fake_op_kind kind;
    void *dst;
    const void *src;
    size_t size;
    backend_event *ev;
    void (*fn)(void *arg);
    void *arg;
    int hold;
} fake_op;

typedef struct fake_queue {
    fake_op *ops;
    int head, n, cap; /* live ops are ops[head .. n) */
} fake_queue;

typedef struct fake_impl {
    backend be;
    backend_ops ops; /* fake_ops, less what the test turned off */
    bool manual;
    fake_queue queues[BACKEND_NUM_STREAMS];
    bool *released; /* [n_holds] */
    int n_holds;
    fake_backend_stats stats; /* host_* fields under host_mu */
    pthread_mutex_t host_mu;
    pthread_cond_t host_cond;
    int host_permits; /* < 0: open */
    int host_fail_after;
} fake_impl;

static fake_impl *impl_of(backend *be) {
    return be->impl;
}

static void event_unref(fake_impl *f, backend_event *ev) {
    if (--ev->n_refs == 0 && ev->freed) {
        free(ev);
        f->stats.n_events_live--;
    }
}

static void queue_push(fake_impl *f, backend_stream s, fake_op op) {
    fake_queue *q = &f->queues[s];
    if (q->head == q->n) q->head = q->n = 0;
    if (q->n == q->cap) {
        q->cap = q->cap ? 2 * q->cap : 16;
        q->ops = kv_realloc(q->ops, (size_t)q->cap * sizeof *q->ops);
    }
    if (op.ev) op.ev->n_refs++;
    q->ops[q->n++] = op;
    f->stats.n_queued++;
}

/* Runs the head of stream s when it can run; false when the stream is empty or blocked. */
static bool queue_step(fake_impl *f, backend_stream s) {
    fake_queue *q = &f->queues[s];
    if (q->head == q->n) return false;
    fake_op op = q->ops[q->head]; /* by value: a kernel may queue more work */
    if (op.kind == OP_WAIT && !op.ev->done) return false;
    if (op.kind == OP_HOLD && !f->released[op.hold]) return false;
    q->head++;
    f->stats.n_queued--;
    switch (op.kind) {
    case OP_COPY:
        memcpy(op.dst, op.src, op.size);
        break;
    case OP_RECORD:
        op.ev->done = true;
        break;
    case OP_KERNEL:
        op.fn(op.arg);
        break;
    case OP_WAIT:
    case OP_HOLD:
        break;
    }
    if (op.ev) event_unref(f, op.ev);
    return true;
}

/* One operation per stream per round, so that streams interleave as on a device: work that waits
 * on an event runs as soon as the event completes, not after the other streams ran dry. */
int fake_backend_run(backend *be) {
    fake_impl *f = impl_of(be);
    int n_run = 0;
    for (bool progress = true; progress;) {
        progress = false;
        for (int s = 0; s < BACKEND_NUM_STREAMS; s++) {
            if (queue_step(f, (backend_stream)s)) {
                n_run++;
                progress = true;
            }
        }
    }
    return n_run;
}

static void maybe_run(fake_impl *f) {
    if (!f->manual) fake_backend_run(&f->be);
}

/* --- memory --- */

static void fake_destroy(backend *be) {
    fake_impl *f = impl_of(be);
    for (int s = 0; s < BACKEND_NUM_STREAMS; s++) free(f->queues[s].ops);
    free(f->released);
    pthread_mutex_destroy(&f->host_mu);
    pthread_cond_destroy(&f->host_cond);
    free(f);
}

static void *fake_dev_alloc(backend *be, size_t bytes) {
    impl_of(be)->stats.n_dev_live++;
    return kv_calloc(1, bytes);
}

static void fake_dev_free(backend *be, void *p) {
    if (!p) return;
    impl_of(be)->stats.n_dev_live--;
    free(p);
}

static size_t fake_dev_free_bytes(backend *be) {
    return (size_t)1 << 40;
}

/* Host blocks carry their size in a header so host_free can count live bytes. */
static void *fake_host_alloc(backend *be, size_t bytes) {
    fake_impl *f = impl_of(be);
    pthread_mutex_lock(&f->host_mu);
    while (f->host_permits == 0) pthread_cond_wait(&f->host_cond, &f->host_mu);
    if (f->host_permits > 0) f->host_permits--;
    bool fail = f->host_fail_after >= 0 && f->stats.n_host_allocs >= f->host_fail_after;
    if (!fail) {
        f->stats.n_host_allocs++;
        f->stats.host_bytes_live += bytes;
    }
    pthread_mutex_unlock(&f->host_mu);
    if (fail) return NULL;
    size_t *p = kv_malloc(bytes + 16);
    p[0] = bytes;
    return (uint8_t *)p + 16;
}

static void fake_host_free(backend *be, void *p) {
    if (!p) return;
    fake_impl *f = impl_of(be);
    size_t *h = (size_t *)(void *)((uint8_t *)p - 16);
    pthread_mutex_lock(&f->host_mu);
    f->stats.n_host_frees++;
    f->stats.host_bytes_live -= h[0];
    pthread_mutex_unlock(&f->host_mu);
    free(h);
}

static void fake_copy_sync(backend *be, void *dst, const void *src, size_t bytes) {
    memcpy(dst, src, bytes);
}

/* --- copies and events --- */

static void fake_copy_async(backend *be, backend_stream s, int n, void *const *dsts,
                            const void *const *srcs, const size_t *sizes) {
    fake_impl *f = impl_of(be);
    f->stats.n_copy_calls[s]++;
    f->stats.n_copies[s] += n;
    for (int i = 0; i < n; i++) {
        f->stats.copy_bytes[s] += sizes[i];
        queue_push(f, s,
                   (fake_op){.kind = OP_COPY, .dst = dsts[i], .src = srcs[i], .size = sizes[i]});
    }
    maybe_run(f);
}

/* One copy call; each row is an operation of its own (interleaves with the other streams). */
static void fake_copy_2d_async(backend *be, backend_stream s, void *dst, size_t dpitch,
                               const void *src, size_t spitch, size_t width, size_t height) {
    fake_impl *f = impl_of(be);
    f->stats.n_copy_calls[s]++;
    f->stats.n_copies[s]++;
    f->stats.copy_bytes[s] += width * height;
    for (size_t i = 0; i < height; i++)
        queue_push(f, s,
                   (fake_op){.kind = OP_COPY,
                             .dst = (char *)dst + i * dpitch,
                             .src = (const char *)src + i * spitch,
                             .size = width});
    maybe_run(f);
}

static backend_event *fake_event_record(backend *be, backend_stream s) {
    fake_impl *f = impl_of(be);
    backend_event *ev = kv_calloc(1, sizeof *ev);
    f->stats.n_events_live++;
    queue_push(f, s, (fake_op){.kind = OP_RECORD, .ev = ev});
    maybe_run(f);
    return ev;
}

static bool fake_event_done(backend *be, backend_event *ev) {
    return ev->done;
}

static void fake_event_wait(backend *be, backend_stream s, backend_event *ev) {
    fake_impl *f = impl_of(be);
    queue_push(f, s, (fake_op){.kind = OP_WAIT, .ev = ev});
    maybe_run(f);
}

/* The host waits: the device keeps running queued work. A hold that is never released would
 * block forever; here it is a broken test. */
static void fake_event_sync(backend *be, backend_event *ev) {
    fake_backend_run(be);
    KV_CHECK(ev->done);
}

static void fake_event_free(backend *be, backend_event *ev) {
    fake_impl *f = impl_of(be);
    KV_CHECK(!ev->freed);
    ev->freed = true;
    if (ev->n_refs == 0) {
        free(ev);
        f->stats.n_events_live--;
    }
}

static double fake_event_elapsed(backend *be, backend_event *a, backend_event *b) {
    return 0.0;
}

static void fake_sync(backend *be) {
    fake_backend_run(be);
    KV_CHECK(impl_of(be)->stats.n_queued == 0);
}

static const backend_ops fake_ops = {
    .destroy = fake_destroy,
    .dev_alloc = fake_dev_alloc,
    .dev_free = fake_dev_free,
    .dev_free_bytes = fake_dev_free_bytes,
    .host_alloc = fake_host_alloc,
    .host_free = fake_host_free,
    .to_dev = fake_copy_sync,
    .to_host = fake_copy_sync,
    .copy_async = fake_copy_async,
    .copy_2d_async = fake_copy_2d_async,
    .event_record = fake_event_record,
    .event_done = fake_event_done,
    .event_wait = fake_event_wait,
    .event_sync = fake_event_sync,
    .event_free = fake_event_free,
    .event_elapsed = fake_event_elapsed,
    .sync = fake_sync,
};

backend *fake_backend_create(void) {
    fake_impl *f = kv_calloc(1, sizeof *f);
    f->ops = fake_ops;
    f->be.ops = &f->ops;
    f->be.name = "fake";
    f->be.act_dtype = KV_DTYPE_F32;
    f->be.weight_dtype = KV_DTYPE_F32;
    f->be.kv_dtype = KV_DTYPE_F32;
    f->be.impl = f;
    f->host_permits = -1;
    f->host_fail_after = -1;
    KV_CHECK(pthread_mutex_init(&f->host_mu, NULL) == 0);
    KV_CHECK(pthread_cond_init(&f->host_cond, NULL) == 0);
    return &f->be;
}

void fake_backend_no_copy_2d(backend *be) {
    impl_of(be)->ops.copy_2d_async = NULL;
}

void fake_backend_set_manual(backend *be, bool manual) {
    impl_of(be)->manual = manual;
    maybe_run(impl_of(be));
}

void fake_backend_kernel(backend *be, void (*fn)(void *arg), void *arg) {
    fake_impl *f = impl_of(be);
    queue_push(f, BACKEND_STREAM_COMPUTE, (fake_op){.kind = OP_KERNEL, .fn = fn, .arg = arg});
    maybe_run(f);
}

int fake_backend_hold(backend *be, backend_stream s) {
    fake_impl *f = impl_of(be);
    f->released = kv_realloc(f->released, (size_t)(f->n_holds + 1) * sizeof *f->released);
    f->released[f->n_holds] = false;
    queue_push(f, s, (fake_op){.kind = OP_HOLD, .hold = f->n_holds});
    return f->n_holds++;
}

void fake_backend_release(backend *be, int hold) {
    fake_impl *f = impl_of(be);
    KV_CHECK(hold >= 0 && hold < f->n_holds);
    f->released[hold] = true;
    maybe_run(f);
}

void fake_backend_host_gate(backend *be, int n_permits) {
    fake_impl *f = impl_of(be);
    pthread_mutex_lock(&f->host_mu);
    f->host_permits = n_permits;
    pthread_cond_broadcast(&f->host_cond);
    pthread_mutex_unlock(&f->host_mu);
}

void fake_backend_host_permit(backend *be, int n) {
    fake_impl *f = impl_of(be);
    pthread_mutex_lock(&f->host_mu);
    if (f->host_permits >= 0) f->host_permits += n;
    pthread_cond_broadcast(&f->host_cond);
    pthread_mutex_unlock(&f->host_mu);
}

void fake_backend_host_fail_after(backend *be, int n) {
    fake_impl *f = impl_of(be);
    pthread_mutex_lock(&f->host_mu);
    f->host_fail_after = n;
    pthread_mutex_unlock(&f->host_mu);
}

fake_backend_stats fake_backend_get_stats(backend *be) {
    fake_impl *f = impl_of(be);
    pthread_mutex_lock(&f->host_mu);
    fake_backend_stats st = f->stats;
    pthread_mutex_unlock(&f->host_mu);
    return st;
}
