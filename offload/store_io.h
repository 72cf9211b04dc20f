/* The host tier's I/O threads: run block-store gets and puts (offload/block_store.h) off the
 * engine thread, gets before puts (a get is a load some request waits for; a put only keeps a
 * copy), several at once (one disk read at a time leaves an NVMe drive mostly idle). Owns the
 * threads and the queues; the jobs belong to the caller, who submits them and takes them back,
 * completed (in any order), from store_io_poll. Knows nothing of slots or the GPU. */
#ifndef KVSERVE_STORE_IO_H
#define KVSERVE_STORE_IO_H

#include "offload/block_store.h"

#define STORE_IO_MAX_STORES 2

typedef enum store_job_kind { STORE_JOB_GET, STORE_JOB_PUT } store_job_kind;

typedef struct store_job {
    store_job_kind kind;
    block_hash h;
    void *buf; /* get: filled; put: read (the caller keeps it unchanged until completion) */
    size_t bytes;
    /* get: tried in order until one has it; put: written to each (skipping where present) */
    kv_block_store *stores[STORE_IO_MAX_STORES];
    int n_stores;
    int served_by; /* get: index in stores of the one that had it, -1 = none (out) */
    bool put_ok[STORE_IO_MAX_STORES]; /* put: stores[i] holds the block now (out) */
    double seconds;                   /* time in the thread (out) */
    void *user;                       /* the caller's */
    struct store_job *next;
} store_job;

typedef struct store_io store_io;

/* n_threads >= 1 workers, each taking the next job. */
store_io *store_io_create(int n_threads);
/* Runs the jobs still queued, then stops the thread and frees; completed jobs not polled are
 * dropped (their memory is the caller's). */
void store_io_free(store_io *io);
/* Queues a job (any thread; returns at once). */
void store_io_submit(store_io *io, store_job *j);
/* The jobs completed since the last call, as a list (next), oldest first; NULL if none. */
store_job *store_io_poll(store_io *io);
/* Blocks until every submitted job has completed (shutdown, tests). */
void store_io_drain(store_io *io);
/* Jobs submitted and not yet returned by store_io_poll. */
int store_io_pending(store_io *io);

#endif
