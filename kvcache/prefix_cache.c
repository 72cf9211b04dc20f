/* Prefix cache: chained block hashes, the hash → block table, verification against stored ids. */
#include "kvcache/prefix_cache.h"

#include <openssl/evp.h>
#include <stdlib.h>

/* --- hashing --- */

static void digest_update_field(EVP_MD_CTX *ctx, const void *p, size_t n) {
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)n >> (8 * i));
    KV_CHECK(EVP_DigestUpdate(ctx, len, 8) == 1);
    if (n) KV_CHECK(EVP_DigestUpdate(ctx, p, n) == 1);
}

void block_hash_namespace(block_hash *out, const char *model_fingerprint, int block_size) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    KV_CHECK(ctx != NULL);
    KV_CHECK(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1);
    uint8_t nums[8];
    uint32_t v[2] = {(uint32_t)block_size, KV_LAYOUT_VERSION};
    for (int i = 0; i < 8; i++) nums[i] = (uint8_t)(v[i / 4] >> (8 * (i % 4)));
    digest_update_field(ctx, "kvserve-kv", 10);
    digest_update_field(ctx, model_fingerprint, model_fingerprint ? strlen(model_fingerprint) : 0);
    digest_update_field(ctx, nums, sizeof nums);
    unsigned int n = 0;
    KV_CHECK(EVP_DigestFinal_ex(ctx, out->b, &n) == 1 && n == 32);
    EVP_MD_CTX_free(ctx);
}

void block_hash_root(block_hash *out, const block_hash *ns, const char *cache_salt) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    KV_CHECK(ctx != NULL);
    KV_CHECK(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1);
    digest_update_field(ctx, ns->b, 32);
    digest_update_field(ctx, cache_salt, cache_salt ? strlen(cache_salt) : 0);
    unsigned int n = 0;
    KV_CHECK(EVP_DigestFinal_ex(ctx, out->b, &n) == 1 && n == 32);
    EVP_MD_CTX_free(ctx);
}

static void hash_block(EVP_MD_CTX *ctx, block_hash *out, const block_hash *prev,
                       const int32_t *tokens, int block_size) {
    uint8_t buf[256]; /* token ids as little-endian bytes, 64 at a time */
    KV_CHECK(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1);
    KV_CHECK(EVP_DigestUpdate(ctx, prev->b, 32) == 1);
    for (int i = 0; i < block_size; i += 64) {
        int n = block_size - i < 64 ? block_size - i : 64;
        for (int j = 0; j < n; j++) {
            uint32_t t = (uint32_t)tokens[i + j];
            for (int b = 0; b < 4; b++) buf[4 * j + b] = (uint8_t)(t >> (8 * b));
        }
        KV_CHECK(EVP_DigestUpdate(ctx, buf, (size_t)n * 4) == 1);
    }
    unsigned int n = 0;
    KV_CHECK(EVP_DigestFinal_ex(ctx, out->b, &n) == 1 && n == 32);
}

void block_hash_next(block_hash *out, const block_hash *prev, const int32_t *tokens,
                     int block_size) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    KV_CHECK(ctx != NULL);
    hash_block(ctx, out, prev, tokens, block_size);
    EVP_MD_CTX_free(ctx);
}

int block_hash_chain(const block_hash *prev, const int32_t *tokens, int n_tokens, int block_size,
                     block_hash *out) {
    KV_CHECK(block_size > 0 && n_tokens >= 0);
    int n = n_tokens / block_size;
    if (n == 0) return 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    KV_CHECK(ctx != NULL);
    for (int i = 0; i < n; i++)
        hash_block(ctx, &out[i], i ? &out[i - 1] : prev, tokens + (size_t)i * block_size,
                   block_size);
    EVP_MD_CTX_free(ctx);
    return n;
}

/* --- the table: open addressing, linear probing, backward-shift deletion --- */

/* SHA-256 output is uniform: its first 8 bytes are the table hash. */
static uint32_t home_slot(const prefix_cache *pc, const block_hash *h) {
    uint64_t x;
    memcpy(&x, h->b, 8);
    return (uint32_t)(x ^ (x >> 32)) & pc->table_mask;
}

/* Slot holding h, or -1. */
static int64_t table_find(const prefix_cache *pc, const block_hash *h) {
    for (uint32_t s = home_slot(pc, h);; s = (s + 1) & pc->table_mask) {
        int32_t id = pc->table[s];
        if (id < 0) return -1;
        if (block_hash_eq(&pc->hashes[id], h)) return s;
    }
}

static void table_remove_slot(prefix_cache *pc, uint32_t i) {
    uint32_t mask = pc->table_mask;
    for (uint32_t j = (i + 1) & mask; pc->table[j] >= 0; j = (j + 1) & mask) {
        uint32_t k = home_slot(pc, &pc->hashes[pc->table[j]]);
        /* The entry at j may move back to the hole at i unless its home lies in (i, j]. */
        bool stays = i <= j ? (k > i && k <= j) : (k > i || k <= j);
        if (stays) continue;
        pc->table[i] = pc->table[j];
        i = j;
    }
    pc->table[i] = -1;
}

/* The pool recycles cached block id: forget the hash it held. */
static void on_pool_evict(void *ctx, int id) {
    prefix_cache *pc = ctx;
    int64_t s = table_find(pc, &pc->hashes[id]);
    KV_CHECK(s >= 0 && pc->table[s] == id);
    if (pc->on_evict) pc->on_evict(pc->on_evict_user, &pc->hashes[id]);
    table_remove_slot(pc, (uint32_t)s);
    pc->n_cached--;
}

void prefix_cache_init(prefix_cache *pc, block_pool *pool) {
    memset(pc, 0, sizeof(*pc));
    pc->pool = pool;
    pc->block_size = pool->layout.block_size;
    KV_CHECK(pc->block_size > 0);
    size_t n = (size_t)pool->n_blocks;
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2; /* load factor <= 1/2 */
    KV_CHECK(cap <= ((size_t)1 << 31));
    pc->hashes = kv_calloc(n, sizeof(block_hash));
    pc->tokens = kv_malloc(n * (size_t)pc->block_size * sizeof(int32_t));
    pc->table = kv_malloc(cap * sizeof(int32_t));
    memset(pc->table, 0xff, cap * sizeof(int32_t));
    pc->table_mask = (uint32_t)(cap - 1);
    block_pool_set_evict_hook(pool, on_pool_evict, pc);
}

void prefix_cache_free(prefix_cache *pc) {
    if (pc->pool && pc->pool->evict_ctx == pc) block_pool_set_evict_hook(pc->pool, NULL, NULL);
    free(pc->hashes);
    free(pc->tokens);
    free(pc->table);
    memset(pc, 0, sizeof(*pc));
}

int prefix_cache_find(const prefix_cache *pc, const block_hash *h) {
    int64_t s = table_find(pc, h);
    return s < 0 ? -1 : pc->table[s];
}

int prefix_cache_lookup(const prefix_cache *pc, const block_hash *hashes, const int32_t *tokens,
                        int n_blocks, int32_t *ids, int *n_evictable) {
    size_t bs = (size_t)pc->block_size;
    int n = 0, n_free = 0;
    for (; n < n_blocks; n++) {
        int id = prefix_cache_find(pc, &hashes[n]);
        /* Same hash, other tokens: a SHA-256 collision (or a bug). Treat it as a miss. */
        if (id < 0 || memcmp(&pc->tokens[(size_t)id * bs], tokens + (size_t)n * bs,
                             bs * sizeof(int32_t)) != 0)
            break;
        ids[n] = id;
        if (block_pool_refcount(pc->pool, id) == 0) n_free++;
    }
    if (n_evictable) *n_evictable = n_free;
    return n;
}

bool prefix_cache_insert(prefix_cache *pc, const block_hash *h, const int32_t *tokens,
                         int block_id) {
    KV_CHECK(block_id >= 0 && block_id < pc->pool->n_blocks);
    KV_CHECK(!block_pool_is_cached(pc->pool, block_id));
    uint32_t s = home_slot(pc, h);
    for (;; s = (s + 1) & pc->table_mask) {
        int32_t id = pc->table[s];
        if (id < 0) break;
        if (block_hash_eq(&pc->hashes[id], h)) return false;
    }
    size_t bs = (size_t)pc->block_size;
    pc->hashes[block_id] = *h;
    memcpy(&pc->tokens[(size_t)block_id * bs], tokens, bs * sizeof(int32_t));
    pc->table[s] = block_id;
    pc->n_cached++;
    block_pool_set_cached(pc->pool, block_id, true); /* checks ref > 0 */
    return true;
}

const block_hash *prefix_cache_block_hash(const prefix_cache *pc, int block_id) {
    return block_pool_is_cached(pc->pool, block_id) ? &pc->hashes[block_id] : NULL;
}

void prefix_cache_reset(prefix_cache *pc) {
    while (block_pool_evict_lru(pc->pool) >= 0) {
    }
}

void prefix_cache_check(const prefix_cache *pc) {
    const block_pool *bp = pc->pool;
    int n_in_table = 0;
    for (uint32_t s = 0; s <= pc->table_mask; s++) {
        int32_t id = pc->table[s];
        if (id < 0) continue;
        KV_CHECK(id < bp->n_blocks && block_pool_is_cached(bp, id));
        KV_CHECK(table_find(pc, &pc->hashes[id]) == (int64_t)s); /* reachable from its home */
        n_in_table++;
    }
    int n_flagged = 0;
    for (int id = 0; id < bp->n_blocks; id++) n_flagged += block_pool_is_cached(bp, id);
    KV_CHECK(n_in_table == pc->n_cached && n_flagged == pc->n_cached);
}
