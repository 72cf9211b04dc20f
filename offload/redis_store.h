/* The remote tier as a kv_block_store (offload/block_store.h): blocks in a Redis shared by several
 * servers, key "kvserve:<namespace hex>:<block hash hex>", value = block header (block_header.h)
 * + payload, checked like a disk file before use. TTL and eviction are Redis's (maxmemory-policy).
 * Owns two connections: one for contains on the engine thread (pipelined EXISTS, a short
 * timeout), one for GET/SET on the I/O threads. A dead or slow Redis makes every call a fast miss:
 * a failed connection is retried after a back-off (100 ms doubling to 5 s), never in between. */
#ifndef KVSERVE_REDIS_STORE_H
#define KVSERVE_REDIS_STORE_H

#include "model/common.h"
#include "offload/block_store.h"

typedef struct redis_store_config {
    const char *url;    /* redis://host:port[/db] */
    int timeout_ms;     /* GET/SET round trip; contains gets a fifth of it (at least 5 ms) */
    size_t block_bytes; /* payload of one block */
    block_hash ns;      /* the KV namespace (block_hash_namespace) */
} redis_store_config;

typedef struct redis_url {
    char host[256];
    int port; /* default 6379 */
    int db;   /* default 0 */
} redis_url;

/* Parses "redis://host[:port][/db]" (outside input: the config file). -1 and err set when not. */
int redis_url_parse(const char *url, redis_url *out, kv_error *err);

/* Parses the URL and returns at once: the connections are made on first use, so a Redis that is
 * down at start only means misses until it is up. NULL and err set on a bad URL. */
kv_block_store *redis_store_create(const redis_store_config *cfg, kv_error *err);

#endif
