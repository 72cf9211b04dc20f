/* Fixed-size KV blocks in device memory: ref counts, free list, LRU of cached free blocks. */
#include "kvcache/block_pool.h"

#include <stdlib.h>

void block_pool_init(block_pool *bp, backend *be, const backend_kv_layout *l, int n_blocks) {
    KV_CHECK(n_blocks > 0);
    KV_CHECK(l->block_bytes > 0);
    memset(bp, 0, sizeof(*bp));
    bp->be = be;
    bp->layout = *l;
    bp->n_blocks = n_blocks;
    bp->base = be->ops->dev_alloc(be, (size_t)n_blocks * l->block_bytes);
    bp->ref = kv_calloc((size_t)n_blocks, sizeof(int32_t));
    bp->cached = kv_calloc((size_t)n_blocks, 1);
    bp->free_ids = kv_malloc((size_t)n_blocks * sizeof(int32_t));
    bp->lru_prev = kv_malloc((size_t)n_blocks * sizeof(int32_t));
    bp->lru_next = kv_malloc((size_t)n_blocks * sizeof(int32_t));
    /* The stack pops from the top: push in reverse so that blocks come out 0, 1, 2, ... (runs of
     * adjacent ids coalesce into one copy). */
    for (int i = 0; i < n_blocks; i++) {
        bp->free_ids[i] = n_blocks - 1 - i;
        bp->lru_prev[i] = bp->lru_next[i] = -1;
    }
    bp->n_free = n_blocks;
    bp->lru_head = bp->lru_tail = -1;
}

void block_pool_free(block_pool *bp) {
    if (bp->base) bp->be->ops->dev_free(bp->be, bp->base);
    free(bp->ref);
    free(bp->cached);
    free(bp->free_ids);
    free(bp->lru_prev);
    free(bp->lru_next);
    memset(bp, 0, sizeof(*bp));
}

void block_pool_set_evict_hook(block_pool *bp, block_pool_evict_fn fn, void *ctx) {
    bp->evict_fn = fn;
    bp->evict_ctx = ctx;
}

static void lru_remove(block_pool *bp, int id) {
    int p = bp->lru_prev[id], n = bp->lru_next[id];
    if (p >= 0)
        bp->lru_next[p] = n;
    else
        bp->lru_head = n;
    if (n >= 0)
        bp->lru_prev[n] = p;
    else
        bp->lru_tail = p;
    bp->lru_prev[id] = bp->lru_next[id] = -1;
    bp->n_lru--;
}

static void lru_push_tail(block_pool *bp, int id) {
    bp->lru_prev[id] = bp->lru_tail;
    bp->lru_next[id] = -1;
    if (bp->lru_tail >= 0)
        bp->lru_next[bp->lru_tail] = id;
    else
        bp->lru_head = id;
    bp->lru_tail = id;
    bp->n_lru++;
}

/* Takes the LRU head off the list and out of the cache; the block is then in no list. */
static int evict_head(block_pool *bp) {
    int id = bp->lru_head;
    if (id < 0) return -1;
    lru_remove(bp, id);
    if (bp->evict_fn) bp->evict_fn(bp->evict_ctx, id);
    bp->cached[id] = 0;
    bp->n_evictions++;
    return id;
}

int block_pool_alloc(block_pool *bp) {
    int id;
    if (bp->n_free > 0)
        id = bp->free_ids[--bp->n_free];
    else if ((id = evict_head(bp)) < 0)
        return -1;
    KV_CHECK(bp->ref[id] == 0 && !bp->cached[id]);
    bp->ref[id] = 1;
    return id;
}

int block_pool_alloc_n(block_pool *bp, int n, int32_t *ids) {
    if (!block_pool_can_alloc(bp, n)) return -1;
    for (int i = 0; i < n; i++) ids[i] = block_pool_alloc(bp);
    return 0;
}

void block_pool_ref(block_pool *bp, int id) {
    KV_CHECK(id >= 0 && id < bp->n_blocks);
    if (bp->ref[id] == 0) {
        KV_CHECK(bp->cached[id]); /* a FREE block is taken with block_pool_alloc */
        /* on the LRU list: not the block an evict hook is being told about (already off it) */
        KV_CHECK(bp->lru_prev[id] >= 0 || bp->lru_head == id);
        lru_remove(bp, id);
    }
    bp->ref[id]++;
}

void block_pool_unref(block_pool *bp, int id) {
    KV_CHECK(id >= 0 && id < bp->n_blocks);
    KV_CHECK(bp->ref[id] > 0);
    if (--bp->ref[id] > 0) return;
    if (bp->cached[id])
        lru_push_tail(bp, id);
    else
        bp->free_ids[bp->n_free++] = id;
}

void block_pool_release(block_pool *bp, const int32_t *ids, int n) {
    for (int i = n - 1; i >= 0; i--) block_pool_unref(bp, ids[i]);
}

int block_pool_evict_lru(block_pool *bp) {
    int id = evict_head(bp);
    if (id >= 0) bp->free_ids[bp->n_free++] = id;
    return id;
}

void block_pool_set_cached(block_pool *bp, int id, bool cached) {
    KV_CHECK(id >= 0 && id < bp->n_blocks);
    KV_CHECK(bp->ref[id] > 0);
    bp->cached[id] = cached;
}

void block_pool_check(const block_pool *bp) {
    int n = bp->n_blocks;
    KV_CHECK(bp->n_free >= 0 && bp->n_lru >= 0 && bp->n_free + bp->n_lru <= n);
    uint8_t *seen = kv_calloc((size_t)n, 1);
    for (int i = 0; i < bp->n_free; i++) {
        int id = bp->free_ids[i];
        KV_CHECK(id >= 0 && id < n && !seen[id]);
        KV_CHECK(bp->ref[id] == 0 && !bp->cached[id]);
        seen[id] = 1;
    }
    int count = 0, prev = -1;
    for (int id = bp->lru_head; id >= 0; prev = id, id = bp->lru_next[id]) {
        KV_CHECK(id < n && !seen[id] && count < n);
        KV_CHECK(bp->lru_prev[id] == prev);
        KV_CHECK(bp->ref[id] == 0 && bp->cached[id]);
        seen[id] = 2;
        count++;
    }
    KV_CHECK(prev == bp->lru_tail && count == bp->n_lru);
    for (int id = 0; id < n; id++) {
        KV_CHECK(bp->ref[id] >= 0);
        if (!seen[id]) KV_CHECK(bp->ref[id] > 0); /* in no list: held by someone */
        if (seen[id] != 2) KV_CHECK(bp->lru_prev[id] == -1 && bp->lru_next[id] == -1);
    }
    free(seen);
}

int block_pool_lru_peek(const block_pool *bp, int n, int32_t *ids) {
    int k = 0;
    for (int id = bp->lru_head; id >= 0 && k < n; id = bp->lru_next[id]) ids[k++] = id;
    return k;
}
