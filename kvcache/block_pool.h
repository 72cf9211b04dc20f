/* Fixed-size KV blocks in device memory: ONE allocation of n_blocks × block_bytes (the contiguous
 * per-block layout of backend_kv_layout), ref counts, a free list, and the LRU list of free blocks
 * that still hold a cached prefix. Knows nothing of requests or hashes: the prefix cache marks
 * blocks as cached and is told, through the evict hook, when one is recycled. */
#ifndef KVSERVE_BLOCK_POOL_H
#define KVSERVE_BLOCK_POOL_H

#include "model/backend.h"

/* Called just before a cached ref-0 block is recycled (its contents are about to be overwritten).
 * The prefix cache drops the block's hash here. The hook must not take a reference on the block
 * (block_pool_ref aborts): it is already off the LRU list and goes to its new owner. */
typedef void (*block_pool_evict_fn)(void *ctx, int block_id);

/* Block states: IN_USE (ref > 0, cached or not), FREE (ref 0, not cached: on the free list),
 * CACHED (ref 0, cached: on the LRU list, reusable after eviction). */
typedef struct block_pool {
    backend *be;
    backend_kv_layout layout; /* block_bytes filled in */
    int n_blocks;
    uint8_t *base; /* device memory: block i at base + i * block_bytes */

    int32_t *ref;      /* [n_blocks] reference counts */
    uint8_t *cached;   /* [n_blocks] 1 while the prefix cache holds the block's hash */
    int32_t *free_ids; /* [n_blocks] stack of FREE blocks, n_free of them */
    int n_free;

    /* LRU of CACHED blocks (ref 0), intrusive: head = least recently released. */
    int32_t *lru_prev, *lru_next; /* [n_blocks], -1 at the ends and when not on the list */
    int lru_head, lru_tail;
    int n_lru;

    block_pool_evict_fn evict_fn;
    void *evict_ctx;
    int64_t n_evictions; /* cached blocks recycled */
} block_pool;

/* --- lifecycle --- */

/* Allocates the pool: n_blocks > 0 blocks of l->block_bytes (backend_kv_layout_finish called by
 * the caller). Every block starts FREE. */
void block_pool_init(block_pool *bp, backend *be, const backend_kv_layout *l, int n_blocks);
void block_pool_free(block_pool *bp);
/* Installs the hook told about every recycled cached block (one hook; the prefix cache's). */
void block_pool_set_evict_hook(block_pool *bp, block_pool_evict_fn fn, void *ctx);

/* --- allocation: O(1) each --- */

/* Blocks that block_pool_alloc can hand out now: FREE + CACHED. */
static inline int block_pool_n_available(const block_pool *bp) {
    return bp->n_free + bp->n_lru;
}
static inline bool block_pool_can_alloc(const block_pool *bp, int n) {
    return n <= block_pool_n_available(bp);
}
/* One block with ref 1: from the free list first, else the LRU CACHED block, which is evicted
 * (evict hook called, cached flag cleared). -1 when none is available. */
int block_pool_alloc(block_pool *bp);
/* n blocks into ids, all or nothing: -1 (nothing allocated) when fewer than n are available. */
int block_pool_alloc_n(block_pool *bp, int n, int32_t *ids);
/* Another holder of an allocated or CACHED block; a CACHED block leaves the LRU list. */
void block_pool_ref(block_pool *bp, int id);
/* Drops one reference. At 0 the block goes to the LRU tail when cached, else to the free list. */
void block_pool_unref(block_pool *bp, int id);
/* Drops one reference on each of ids[n-1] .. ids[0], tail first: a sequence's deepest blocks
 * reach the LRU first and are evicted before the shorter prefixes they extend. */
void block_pool_release(block_pool *bp, const int32_t *ids, int n);
/* Evicts the LRU CACHED block onto the free list (hook called). Returns its id, -1 if none. */
int block_pool_evict_lru(block_pool *bp);

/* --- used by the prefix cache --- */

/* Marks an IN_USE block cached or not. Unmarking a ref-0 block is not allowed (it is on the LRU
 * list; evict it instead). */
void block_pool_set_cached(block_pool *bp, int id, bool cached);

/* --- queries --- */

static inline void *block_pool_ptr(const block_pool *bp, int id) {
    return bp->base + (size_t)id * bp->layout.block_bytes;
}
static inline int block_pool_refcount(const block_pool *bp, int id) {
    return bp->ref[id];
}
static inline bool block_pool_is_cached(const block_pool *bp, int id) {
    return bp->cached[id];
}
static inline int block_pool_n_in_use(const block_pool *bp) {
    return bp->n_blocks - bp->n_free - bp->n_lru;
}
/* The first n (at most) CACHED blocks that allocation would evict, least recently released first,
 * into ids; returns how many. Changes nothing. */
int block_pool_lru_peek(const block_pool *bp, int n, int32_t *ids);
/* Walks every list and count; aborts (KV_CHECK) on any inconsistency. For tests and debug. */
void block_pool_check(const block_pool *bp);

#endif
