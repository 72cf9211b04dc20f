/* Prefix cache: chained SHA-256 hashes of full token blocks → the pool blocks holding their KV.
 * Owns the hash table (O(1) lookup by the 32-byte hash) and each cached block's hash and token ids
 * (a hit is verified against them). Does not own blocks: their ref counts, the free list and the
 * LRU of free cached blocks live in block_pool, which calls back here when it recycles one. */
#ifndef KVSERVE_PREFIX_CACHE_H
#define KVSERVE_PREFIX_CACHE_H

#include "kvcache/block_pool.h"

typedef struct block_hash {
    uint8_t b[32];
} block_hash;

static inline bool block_hash_eq(const block_hash *a, const block_hash *b) {
    return memcmp(a->b, b->b, 32) == 0;
}

/* --- hashing (SHA-256, OpenSSL libcrypto) --- */

/* Version of the KV block layout and of the hash scheme: blocks written under another version
 * (disk files, remote values) are foreign. Bump it when either changes. */
#define KV_LAYOUT_VERSION 1

/* The namespace of a KV cache: SHA256("kvserve-kv" ‖ model fingerprint ‖ block size ‖
 * KV_LAYOUT_VERSION). The model fingerprint names the weights (names, sizes, safetensors
 * headers: not mtimes), the shape, dtype and KV dtype, so the namespace is the same in every
 * process, on every machine holding the same model, and after every restart. Disk and remote
 * tiers key and check their blocks by it. */
void block_hash_namespace(block_hash *out, const char *model_fingerprint, int block_size);
/* h_{-1} = SHA256(namespace ‖ cache_salt). Each field enters as a u64 little-endian length
 * followed by its bytes, so fields cannot run into each other. NULL salt is the empty salt.
 * No server seed: the same prefix has the same hash everywhere (tenants isolate by salt). */
void block_hash_root(block_hash *out, const block_hash *ns, const char *cache_salt);
/* h_i = SHA256(h_{i-1} ‖ token ids of block i as int32 little-endian). */
void block_hash_next(block_hash *out, const block_hash *prev, const int32_t *tokens,
                     int block_size);
/* Hashes every FULL block of tokens[0, n_tokens) after prev (the root, or the hash of the block
 * before tokens[0]) into out. Returns the number of blocks hashed: n_tokens / block_size. */
int block_hash_chain(const block_hash *prev, const int32_t *tokens, int n_tokens, int block_size,
                     block_hash *out);

/* --- the cache --- */

typedef struct prefix_cache {
    block_pool *pool;
    int block_size;
    block_hash *hashes; /* [n_blocks] hash held by each cached block */
    int32_t *tokens;    /* [n_blocks * block_size] token ids held by each cached block */
    int32_t *table;     /* [table_cap] block ids, -1 = empty; open addressing, linear probing */
    uint32_t table_mask;
    int n_cached; /* blocks in the table (in use or on the pool's LRU) */

    /* Counters in tokens, for metrics (prefix cache hit rate = n_hit_tokens / n_query_tokens). */
    int64_t n_query_tokens;
    int64_t n_hit_tokens;

    /* Told of every block the cache drops (KV events); NULL = nobody. */
    void (*on_evict)(void *user, const block_hash *h);
    void *on_evict_user;
} prefix_cache;

/* Sets up the cache over the pool and installs itself as the pool's evict hook. */
void prefix_cache_init(prefix_cache *pc, block_pool *pool);
void prefix_cache_free(prefix_cache *pc);

/* Longest run of leading blocks that hit: for i = 0, 1, ... while hashes[i] is cached AND the
 * block's stored ids equal tokens[i * block_size, (i + 1) * block_size), ids[i] = that block.
 * Returns the run length (<= n_blocks). Takes no references: call block_pool_ref on each id to
 * keep them. *n_evictable (NULL allowed) = how many of the hits have ref 0; acquiring them takes
 * them off the pool's available count. */
int prefix_cache_lookup(const prefix_cache *pc, const block_hash *hashes, const int32_t *tokens,
                        int n_blocks, int32_t *ids, int *n_evictable);
/* The block holding h, or -1 (no token check; for the offload tier). */
int prefix_cache_find(const prefix_cache *pc, const block_hash *h);
/* Registers a full block held by the caller (ref > 0, not yet cached) under h with its token ids.
 * Returns false, leaving the block private, when h is already cached in another block. */
bool prefix_cache_insert(prefix_cache *pc, const block_hash *h, const int32_t *tokens,
                         int block_id);
/* The hash a cached block holds (NULL when the block is not cached). */
const block_hash *prefix_cache_block_hash(const prefix_cache *pc, int block_id);
/* Evicts every free cached block (hook called for each); blocks in use stay cached. */
void prefix_cache_reset(prefix_cache *pc);
/* Adds one admitted request's prompt tokens and the tokens served from the cache. */
static inline void prefix_cache_record(prefix_cache *pc, int n_query_tokens, int n_hit_tokens) {
    pc->n_query_tokens += n_query_tokens;
    pc->n_hit_tokens += n_hit_tokens;
}
/* Checks the table against the pool's cached flags; aborts (KV_CHECK) on any inconsistency. */
void prefix_cache_check(const prefix_cache *pc);

#endif
