/* A store of whole KV blocks by block hash below the host tier: the disk tier (files under a path)
 * and the remote tier (a Redis shared by several servers) implement it. A store moves bytes between
 * host memory and its medium and knows nothing of the GPU, the engine or requests: the host tier
 * calls it from its own I/O thread and turns its answers into two-stage loads and stores.
 *
 * Contract:
 * - contains may be called from the engine thread: it must answer within the store's own time
 *   limit (an in-memory index, or a bounded round trip) and say 0 when the medium is slow or down.
 * - get and put are called from the host tier's I/O threads, several at once (the disk store
 *   reads several files in parallel; the remote store serializes on its connection); they may
 *   block up to the store's timeout.
 *   get returns false on a miss and on any bad content (wrong header, checksum, size, fingerprint),
 *   counting it; it never hands back bytes it did not verify.
 * - No function aborts on what the medium returns: a torn file or a broken Redis reply is a miss.
 */
#ifndef KVSERVE_BLOCK_STORE_H
#define KVSERVE_BLOCK_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvcache/prefix_cache.h"

typedef struct kv_block_store kv_block_store;

typedef struct kv_block_store_stats {
    uint64_t hits, misses;        /* get */
    uint64_t n_put, n_put_failed; /* put */
    uint64_t n_rejected;          /* content refused by get (corrupt, truncated, foreign) */
    uint64_t n_errors;            /* medium errors (I/O, connection, timeout) */
    uint64_t n_evicted;           /* blocks dropped by the store's size limit */
    uint64_t bytes_read, bytes_written;
    uint64_t n_blocks;                  /* blocks held now (where the store can know) */
    uint64_t bytes_used, bytes_limit;   /* 0 limit: bounded by the medium (Redis maxmemory) */
    double read_seconds, write_seconds; /* summed time of get / put (latency = sum / count) */
} kv_block_store_stats;

typedef struct kv_block_store_ops {
    const char *name; /* "disk", "remote": the medium name in usage, metrics and KV events */
    /* How many of h[0..n) are present, as a leading run. No side effect. Any thread. */
    int (*contains)(kv_block_store *s, const block_hash *h, int n);
    /* Reads the block into dst[0..bytes). False: miss or refused content. I/O thread. */
    bool (*get)(kv_block_store *s, const block_hash *h, void *dst, size_t bytes);
    /* Writes src[0..bytes) as the block with hash h (crash-safe: a reader sees all or nothing).
     * False on failure (counted). I/O thread. */
    bool (*put)(kv_block_store *s, const block_hash *h, const void *src, size_t bytes);
    kv_block_store_stats (*stats)(kv_block_store *s);
    /* Optional (NULL: nothing to wait for): blocks until the store's start-up work is done (the
     * disk tier's scan of its files). Tests and benchmarks. */
    void (*wait_ready)(kv_block_store *s);
    /* Closes the medium and frees the store. No get or put may be running. */
    void (*destroy)(kv_block_store *s);
} kv_block_store_ops;

struct kv_block_store {
    const kv_block_store_ops *ops;
};

#endif
