/* The request-preparation pool: a few worker threads and a bounded FIFO of jobs, each the CPU work
 * of one request body (JSON parse, chat template, tokenizing) whose connection libmicrohttpd holds
 * suspended meanwhile. Owns its threads and queue; the jobs belong to the connections. */
#include <stdlib.h>

#include "server/http_internal.h"

typedef struct pool_arg {
    http_pool *p;
    http_server *s;
} pool_arg;

/* Resumes a job's connection; its access handler then answers job->out. */
static void job_finish(http_pool *p, http_job *job) {
    pthread_mutex_lock(&p->lock);
    job->done = true;
    pthread_mutex_unlock(&p->lock);
    MHD_resume_connection(job->conn);
}

static void *pool_main(void *arg) {
    pool_arg a = *(pool_arg *)arg;
    free(arg);
    http_pool *p = a.p;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (!p->head && !p->stop) pthread_cond_wait(&p->wake, &p->lock);
        http_job *job = p->head;
        if (!job) { /* stopping and nothing left */
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        p->head = job->next;
        if (!p->head) p->tail = NULL;
        p->n_queued--;
        pthread_mutex_unlock(&p->lock);
        job->prepare(a.s, job->body, job->len, &job->out);
        job_finish(p, job);
    }
}

int http_pool_start(http_pool *p, http_server *s, int n_threads, int max_queued, kv_error *err) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->max_queued = max_queued > 0 ? max_queued : 1;
    p->threads = kv_calloc((size_t)(n_threads > 0 ? n_threads : 1), sizeof *p->threads);
    for (int i = 0; i < (n_threads > 0 ? n_threads : 1); i++) {
        pool_arg *a = kv_malloc(sizeof *a);
        *a = (pool_arg){p, s};
        if (pthread_create(&p->threads[i], NULL, pool_main, a) != 0) {
            free(a);
            http_pool_stop(p);
            return kv_error_set(err, "http: cannot start a tokenize worker thread");
        }
        p->n_threads++;
    }
    return 0;
}

bool http_pool_submit(http_pool *p, http_job *job) {
    pthread_mutex_lock(&p->lock);
    bool ok = !p->stop && p->n_queued < p->max_queued;
    if (ok) {
        /* suspended under the lock, before any worker can take the job and resume it */
        MHD_suspend_connection(job->conn);
        job->done = false;
        job->next = NULL;
        job->out.arrival = kv_now();
        if (p->tail)
            p->tail->next = job;
        else
            p->head = job;
        p->tail = job;
        p->n_queued++;
        pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->lock);
    return ok;
}

bool http_pool_job_done(http_pool *p, const http_job *job) {
    pthread_mutex_lock(&p->lock);
    bool done = job->done;
    pthread_mutex_unlock(&p->lock);
    return done;
}

void http_pool_stop(http_pool *p) {
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    http_job *left = p->head;
    p->head = p->tail = NULL;
    p->n_queued = 0;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    while (left) {
        http_job *next = left->next;
        openai_error_set(&left->out.err, 503, "server_error", NULL, "shutting_down",
                         "the server is shutting down");
        left->out.failed = true;
        job_finish(p, left);
        left = next;
    }
    for (int i = 0; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    p->threads = NULL;
    p->n_threads = 0;
}

void http_pool_free(http_pool *p) {
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
}

void http_prepared_free(http_prepared *p) {
    free(p->body);
    if (p->has_request) openai_completion_request_free(&p->req);
    memset(p, 0, sizeof *p);
}
