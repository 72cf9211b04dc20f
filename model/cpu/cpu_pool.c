/* Worker threads of the CPU backend: a job is (fn, ctx, n, chunk); threads pull chunks from an
 * atomic counter until it passes n. */
#include "model/cpu/cpu_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "model/common.h"

typedef struct cpu_worker {
    cpu_pool *pool;
    int thread; /* 1..n_threads-1 */
    pthread_t tid;
} cpu_worker;

struct cpu_pool {
    int n_threads;       /* including the caller */
    cpu_worker *workers; /* [n_threads - 1] */
    pthread_mutex_t mu;
    pthread_cond_t start; /* a new job (or stop) was posted */
    pthread_cond_t done;  /* the last worker left the job */
    uint64_t generation;  /* bumped for every job */
    int n_busy;           /* workers still inside the current job */
    bool stop;
    /* the current job */
    cpu_pool_fn fn;
    void *ctx;
    int64_t n, chunk;
    atomic_int_fast64_t next; /* first item not yet handed out */
};

static void pool_run_chunks(cpu_pool *p, int thread) {
    for (;;) {
        int64_t begin = atomic_fetch_add(&p->next, p->chunk);
        if (begin >= p->n) return;
        int64_t end = begin + p->chunk < p->n ? begin + p->chunk : p->n;
        p->fn(p->ctx, thread, begin, end);
    }
}

static void *pool_worker_main(void *arg) {
    cpu_worker *w = arg;
    cpu_pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->start, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);

        pool_run_chunks(p, w->thread);

        pthread_mutex_lock(&p->mu);
        if (--p->n_busy == 0) pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

cpu_pool *cpu_pool_create(int n_threads) {
    KV_CHECK(n_threads >= 1);
    cpu_pool *p = kv_calloc(1, sizeof *p);
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->next, 0);
    p->workers = kv_calloc((size_t)n_threads, sizeof *p->workers);
    for (int i = 0; i < n_threads - 1; i++) {
        p->workers[i].pool = p;
        p->workers[i].thread = i + 1;
        KV_CHECK(pthread_create(&p->workers[i].tid, NULL, pool_worker_main, &p->workers[i]) == 0);
    }
    return p;
}

void cpu_pool_free(cpu_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads - 1; i++) pthread_join(p->workers[i].tid, NULL);
    pthread_cond_destroy(&p->start);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p);
}

int cpu_pool_n_threads(const cpu_pool *p) {
    return p->n_threads;
}

void cpu_pool_for(cpu_pool *p, int64_t n, int64_t chunk, cpu_pool_fn fn, void *ctx) {
    if (n <= 0) return;
    if (chunk < 1) chunk = 1;
    if (p->n_threads == 1 || n <= chunk) {
        fn(ctx, 0, 0, n);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    atomic_store(&p->next, 0);
    p->n_busy = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start);
    pthread_mutex_unlock(&p->mu);

    pool_run_chunks(p, 0);

    pthread_mutex_lock(&p->mu);
    while (p->n_busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
