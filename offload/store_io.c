/* The I/O thread: two FIFO queues (gets first) and a completed list, under one mutex. */
#include "offload/store_io.h"

#include <pthread.h>
#include <stdlib.h>

#include "model/common.h"

typedef struct job_queue {
    store_job *head, *tail;
} job_queue;

struct store_io {
    pthread_mutex_t lock;
    pthread_cond_t wake, idle;
    job_queue gets, puts, done;
    int n_pending; /* submitted, not yet polled */
    int n_running; /* queued or running, not yet done */
    bool stop;
    pthread_t *threads;
    int n_threads;
};

static void q_push(job_queue *q, store_job *j) {
    j->next = NULL;
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
}

static store_job *q_pop(job_queue *q) {
    store_job *j = q->head;
    if (j && !(q->head = j->next)) q->tail = NULL;
    return j;
}

static void job_run(store_job *j) {
    double t0 = kv_now();
    if (j->kind == STORE_JOB_GET) {
        j->served_by = -1;
        for (int i = 0; i < j->n_stores && j->served_by < 0; i++)
            if (j->stores[i]->ops->get(j->stores[i], &j->h, j->buf, j->bytes)) j->served_by = i;
    } else {
        for (int i = 0; i < j->n_stores; i++) /* each put skips what its store holds */
            j->put_ok[i] = j->stores[i]->ops->put(j->stores[i], &j->h, j->buf, j->bytes);
    }
    j->seconds = kv_now() - t0;
}

static void *io_main(void *arg) {
    store_io *io = arg;
    pthread_mutex_lock(&io->lock);
    for (;;) {
        store_job *j = q_pop(&io->gets);
        if (!j) j = q_pop(&io->puts);
        if (!j) {
            if (io->stop) break;
            pthread_cond_wait(&io->wake, &io->lock);
            continue;
        }
        pthread_mutex_unlock(&io->lock);
        job_run(j);
        pthread_mutex_lock(&io->lock);
        q_push(&io->done, j);
        if (--io->n_running == 0) pthread_cond_broadcast(&io->idle);
    }
    pthread_mutex_unlock(&io->lock);
    return NULL;
}

store_io *store_io_create(int n_threads) {
    store_io *io = kv_calloc(1, sizeof *io);
    pthread_mutex_init(&io->lock, NULL);
    pthread_cond_init(&io->wake, NULL);
    pthread_cond_init(&io->idle, NULL);
    io->n_threads = n_threads > 0 ? n_threads : 1;
    io->threads = kv_calloc((size_t)io->n_threads, sizeof *io->threads);
    for (int i = 0; i < io->n_threads; i++)
        KV_CHECK(pthread_create(&io->threads[i], NULL, io_main, io) == 0);
    return io;
}

void store_io_free(store_io *io) {
    if (!io) return;
    pthread_mutex_lock(&io->lock);
    io->stop = true;
    pthread_cond_broadcast(&io->wake);
    pthread_mutex_unlock(&io->lock);
    for (int i = 0; i < io->n_threads; i++) pthread_join(io->threads[i], NULL);
    free(io->threads);
    pthread_cond_destroy(&io->wake);
    pthread_cond_destroy(&io->idle);
    pthread_mutex_destroy(&io->lock);
    free(io);
}

void store_io_submit(store_io *io, store_job *j) {
    pthread_mutex_lock(&io->lock);
    q_push(j->kind == STORE_JOB_GET ? &io->gets : &io->puts, j);
    io->n_pending++;
    io->n_running++;
    pthread_cond_signal(&io->wake);
    pthread_mutex_unlock(&io->lock);
}

store_job *store_io_poll(store_io *io) {
    pthread_mutex_lock(&io->lock);
    store_job *list = io->done.head;
    for (store_job *j = list; j; j = j->next) io->n_pending--;
    io->done.head = io->done.tail = NULL;
    pthread_mutex_unlock(&io->lock);
    return list;
}

void store_io_drain(store_io *io) {
    pthread_mutex_lock(&io->lock);
    while (io->n_running > 0) pthread_cond_wait(&io->idle, &io->lock);
    pthread_mutex_unlock(&io->lock);
}

int store_io_pending(store_io *io) {
    pthread_mutex_lock(&io->lock);
    int n = io->n_pending;
    pthread_mutex_unlock(&io->lock);
    return n;
}
