/* Unit tests for kvcache/prefix_cache: hash chaining (against coreutils sha256sum), lookups
 * verified against stored ids, sharing between requests, LRU eviction order with tail-first
 * release, the evict hook, and a randomized property test over thousands of request operations. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvcache/prefix_cache.h"

/* --- a fake backend: memory ops only --- */
static void *fake_alloc(backend *be, size_t bytes) {
    return kv_calloc(1, bytes);
}
static void fake_free(backend *be, void *p) {
    free(p);
}
static size_t fake_free_bytes(backend *be) {
    return 1 << 20;
}
static const backend_ops fake_ops = {
    .dev_alloc = fake_alloc, .dev_free = fake_free, .dev_free_bytes = fake_free_bytes};
static backend be = {.ops = &fake_ops, .name = "fake", .kv_dtype = KV_DTYPE_F32};

enum { BS = 4 }; /* tokens per block in these tests */

static backend_kv_layout test_layout(void) {
    /* 1 layer, 1 kv head, head_dim 16, f32: 2 * 4 * 16 * 4 = 512 bytes per block */
    return (backend_kv_layout){.n_layers = 1,
                               .n_kv_heads = 1,
                               .head_dim = 16,
                               .block_size = BS,
                               .dtype = KV_DTYPE_F32,
                               .block_bytes = 512};
}

static void hex(char out[65], const block_hash *h) {
    for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", h->b[i]);
}

/* --- hashing --- */

START_TEST(hashes_match_sha256sum) {
    /* References: coreutils sha256sum over the bytes written by Python's struct module
     * (prev = bytes 0..31, then '<4i' of the ids; and '<Q'-length-prefixed root fields). */
    block_hash prev, h;
    char s[65];
    for (int i = 0; i < 32; i++) prev.b[i] = (uint8_t)i;
    int32_t ids[4] = {1, 256, 70000, -1};
    block_hash_next(&h, &prev, ids, 4);
    hex(s, &h);
    ck_assert_str_eq(s, "7c1dbdc76a0e11ff858ff87ca0f1cffc079add64a5c84fb46db9b2e295756e85");
    block_hash ns;
    block_hash_namespace(&ns, "llama", 16); /* '<Q' length-prefixed "kvserve-kv", fp, '<II' */
    hex(s, &ns);
    ck_assert_str_eq(s, "22d1ec995225f116c0938cc7c8aa446f83ab30233df59c92a2494e9e537a212b");
    block_hash_root(&h, &ns, "tenant");
    hex(s, &h);
    ck_assert_str_eq(s, "82f440388b76c8e5650ebb658018977a8c9db1a828349298b2b2bc7256e0c56e");
}
END_TEST

/* root of (fingerprint, block size, salt) */
static void root_of(block_hash *out, const char *fp, int block_size, const char *salt) {
    block_hash ns;
    block_hash_namespace(&ns, fp, block_size);
    block_hash_root(out, &ns, salt);
}

START_TEST(chain_depends_on_prefix_fingerprint_block_size_and_salt) {
    int32_t a[18], b[18];
    for (int i = 0; i < 18; i++) a[i] = b[i] = 1000 + i;
    b[9] = 7; /* b diverges inside block 2 */
    block_hash root, ha[4], hb[4];
    root_of(&root, "model", 16, NULL);
    ck_assert_int_eq(block_hash_chain(&root, a, 18, BS, ha),
                     4); /* the partial block is not hashed */
    ck_assert_int_eq(block_hash_chain(&root, b, 18, BS, hb), 4);
    ck_assert(block_hash_eq(&ha[0], &hb[0]));
    ck_assert(block_hash_eq(&ha[1], &hb[1]));
    ck_assert(!block_hash_eq(&ha[2], &hb[2]));
    ck_assert(!block_hash_eq(&ha[3], &hb[3])); /* same tokens, different parent */

    /* hashing in two steps from the last hash equals hashing at once */
    block_hash inc[4];
    block_hash_chain(&root, a, 8, BS, inc);
    block_hash_chain(&inc[1], a + 8, 10, BS, inc + 2);
    for (int i = 0; i < 4; i++) ck_assert(block_hash_eq(&inc[i], &ha[i]));

    block_hash r2, hc[4];
    root_of(&r2, "model", 16, "");
    ck_assert(block_hash_eq(&r2, &root)); /* NULL salt is the empty salt */
    root_of(&r2, "model", 16, NULL);
    ck_assert(block_hash_eq(&r2, &root)); /* no seed, no state: the same in every process */
    const struct {
        const char *fp;
        int bs;
        const char *salt;
    } variants[] = {{"model", 16, "tenant-a"},
                    {"model2", 16, NULL},
                    {"mode", 16, "l"},
                    {"model", 32, NULL},
                    {"model", 8, NULL}};
    for (int v = 0; v < 5; v++) {
        root_of(&r2, variants[v].fp, variants[v].bs, variants[v].salt);
        ck_assert(!block_hash_eq(&r2, &root));
        block_hash_chain(&r2, a, 18, BS, hc);
        for (int i = 0; i < 4; i++) ck_assert(!block_hash_eq(&hc[i], &ha[i]));
    }
}
END_TEST

/* --- the cache --- */

/* A "request": allocates blocks for its tokens after the cache hits and caches its full blocks. */
typedef struct req {
    int32_t blocks[64];
    int n_blocks, n_hit;
} req;

static bool req_start(req *r, prefix_cache *pc, const block_hash *root, const int32_t *toks,
                      int n) {
    block_hash h[64];
    int n_full = block_hash_chain(root, toks, n, BS, h);
    int n_need = (n + BS - 1) / BS, n_evictable;
    r->n_hit = prefix_cache_lookup(pc, h, toks, n_full, r->blocks, &n_evictable);
    if (!block_pool_can_alloc(pc->pool, n_need - r->n_hit + n_evictable)) return false;
    for (int i = 0; i < r->n_hit; i++) block_pool_ref(pc->pool, r->blocks[i]);
    ck_assert_int_eq(block_pool_alloc_n(pc->pool, n_need - r->n_hit, r->blocks + r->n_hit), 0);
    for (int i = r->n_hit; i < n_full; i++)
        prefix_cache_insert(pc, &h[i], toks + i * BS, r->blocks[i]);
    r->n_blocks = n_need;
    prefix_cache_record(pc, n, r->n_hit * BS);
    return true;
}

START_TEST(lookup_insert_share_and_verify) {
    backend_kv_layout l = test_layout();
    block_pool bp;
    prefix_cache pc;
    block_pool_init(&bp, &be, &l, 16);
    prefix_cache_init(&pc, &bp);
    block_hash root;
    root_of(&root, "m", BS, NULL);
    int32_t toks[14];
    for (int i = 0; i < 14; i++) toks[i] = 3 * i + 1;

    req a, b;
    ck_assert(req_start(&a, &pc, &root, toks, 14));
    ck_assert_int_eq(a.n_hit, 0);
    ck_assert_int_eq(a.n_blocks, 4);
    ck_assert_int_eq(pc.n_cached, 3); /* the partial 4th block is private */
    ck_assert(!block_pool_is_cached(&bp, a.blocks[3]));

    /* b shares a's three full blocks while a is still running */
    ck_assert(req_start(&b, &pc, &root, toks, 13));
    ck_assert_int_eq(b.n_hit, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(b.blocks[i], a.blocks[i]);
        ck_assert_int_eq(block_pool_refcount(&bp, a.blocks[i]), 2);
    }
    ck_assert_int_ne(b.blocks[3], a.blocks[3]);
    ck_assert_int_eq(pc.n_query_tokens, 27);
    ck_assert_int_eq(pc.n_hit_tokens, 12);

    /* find and the stored hash */
    block_hash h[3];
    block_hash_chain(&root, toks, 12, BS, h);
    ck_assert_int_eq(prefix_cache_find(&pc, &h[1]), a.blocks[1]);
    ck_assert(block_hash_eq(prefix_cache_block_hash(&pc, a.blocks[2]), &h[2]));
    ck_assert_ptr_null(prefix_cache_block_hash(&pc, a.blocks[3]));

    /* a second block under a cached hash stays private */
    int spare = block_pool_alloc(&bp);
    ck_assert(!prefix_cache_insert(&pc, &h[0], toks, spare));
    ck_assert(!block_pool_is_cached(&bp, spare));
    block_pool_unref(&bp, spare);

    /* a forced collision: the hash matches but the stored ids differ -> a miss from there on */
    int32_t ids[3];
    ck_assert_int_eq(prefix_cache_lookup(&pc, h, toks, 3, ids, NULL), 3);
    pc.tokens[(size_t)a.blocks[1] * BS + 2] ^= 1;
    ck_assert_int_eq(prefix_cache_lookup(&pc, h, toks, 3, ids, NULL), 1);
    pc.tokens[(size_t)a.blocks[1] * BS + 2] ^= 1;

    /* a different salt shares nothing */
    block_hash other_root, ho[3];
    root_of(&other_root, "m", BS, "tenant");
    block_hash_chain(&other_root, toks, 12, BS, ho);
    ck_assert_int_eq(prefix_cache_lookup(&pc, ho, toks, 3, ids, NULL), 0);

    /* releasing a keeps the shared blocks in use by b (no LRU entry yet) */
    block_pool_release(&bp, a.blocks, a.n_blocks);
    ck_assert_int_eq(bp.n_lru, 0);
    int n_evictable = -1;
    ck_assert_int_eq(prefix_cache_lookup(&pc, h, toks, 3, ids, &n_evictable), 3);
    ck_assert_int_eq(n_evictable, 0);
    block_pool_release(&bp, b.blocks, b.n_blocks);
    ck_assert_int_eq(bp.n_lru, 3);
    ck_assert_int_eq(prefix_cache_lookup(&pc, h, toks, 3, ids, &n_evictable), 3);
    ck_assert_int_eq(n_evictable, 3);
    block_pool_check(&bp);
    prefix_cache_check(&pc);
    prefix_cache_free(&pc);
    block_pool_free(&bp);
}
END_TEST

START_TEST(eviction_is_lru_deepest_first_and_calls_the_hook) {
    backend_kv_layout l = test_layout();
    block_pool bp;
    prefix_cache pc;
    block_pool_init(&bp, &be, &l, 8);
    prefix_cache_init(&pc, &bp);
    block_hash root;
    root_of(&root, "m", BS, NULL);

    /* request x (3 full blocks) finishes first, then y (2 full blocks, other tokens) */
    int32_t tx[12], ty[8];
    for (int i = 0; i < 12; i++) tx[i] = i;
    for (int i = 0; i < 8; i++) ty[i] = 100 + i;
    req x, y;
    ck_assert(req_start(&x, &pc, &root, tx, 12));
    ck_assert(req_start(&y, &pc, &root, ty, 8));
    block_pool_release(&bp, x.blocks, 3);
    block_pool_release(&bp, y.blocks, 2);
    ck_assert_int_eq(bp.n_free, 3);
    ck_assert_int_eq(bp.n_lru, 5);

    /* 3 plain free blocks go first, then x's blocks deepest first, then y's */
    int32_t got[8];
    ck_assert_int_eq(block_pool_alloc_n(&bp, 3, got), 0);
    ck_assert_int_eq(pc.n_cached, 5);
    block_hash hx[3];
    block_hash_chain(&root, tx, 12, BS, hx);
    int32_t ids[3];
    ck_assert_int_eq(block_pool_alloc(&bp), x.blocks[2]);
    ck_assert_int_eq(pc.n_cached, 4);
    /* the shorter prefix is still served */
    ck_assert_int_eq(prefix_cache_lookup(&pc, hx, tx, 3, ids, NULL), 2);
    ck_assert_int_eq(prefix_cache_find(&pc, &hx[2]), -1);

    /* a hit refreshes: x's blocks 0 and 1 are used again and released after y's */
    req x2;
    ck_assert(req_start(&x2, &pc, &root, tx, 8));
    ck_assert_int_eq(x2.n_hit, 2);
    block_pool_release(&bp, x2.blocks, x2.n_blocks);
    ck_assert_int_eq(block_pool_alloc(&bp), y.blocks[1]);
    ck_assert_int_eq(block_pool_alloc(&bp), y.blocks[0]);
    ck_assert_int_eq(block_pool_alloc(&bp), x.blocks[1]);
    ck_assert_int_eq(block_pool_alloc(&bp), x.blocks[0]);
    ck_assert_int_eq(pc.n_cached, 0);
    block_pool_check(&bp);
    prefix_cache_check(&pc);

    prefix_cache_free(&pc);
    block_pool_free(&bp);
}
END_TEST

START_TEST(reset_evicts_only_free_blocks) {
    backend_kv_layout l = test_layout();
    block_pool bp;
    prefix_cache pc;
    block_pool_init(&bp, &be, &l, 8);
    prefix_cache_init(&pc, &bp);
    block_hash root;
    root_of(&root, "m", BS, NULL);
    int32_t t1[8] = {1, 2, 3, 4, 5, 6, 7, 8}, t2[8] = {9, 9, 9, 9, 8, 8, 8, 8};
    req a, b;
    ck_assert(req_start(&a, &pc, &root, t1, 8));
    ck_assert(req_start(&b, &pc, &root, t2, 8));
    block_pool_release(&bp, a.blocks, a.n_blocks);
    prefix_cache_reset(&pc);
    ck_assert_int_eq(pc.n_cached, 2); /* b's blocks, still in use */
    ck_assert_int_eq(bp.n_free, 6);
    prefix_cache_check(&pc);
    block_pool_check(&bp);
    prefix_cache_free(&pc);
    block_pool_free(&bp);
}
END_TEST

/* Randomized: requests over prompts that share prefixes start (hits + new blocks) and finish in
 * random order. Each block's memory holds the hash and ids of what was "computed" into it, so a
 * hit that returned a recycled or wrong block is caught by reading the block itself. */
typedef struct live_req {
    req r;
    int32_t toks[40];
    int n;
} live_req;

static void write_block(block_pool *bp, int id, const block_hash *h, const int32_t *toks) {
    uint8_t *p = block_pool_ptr(bp, id);
    memcpy(p, h->b, 32);
    memcpy(p + 32, toks, BS * sizeof(int32_t));
}

START_TEST(random_requests_keep_invariants_and_never_leak) {
    enum { N_BLOCKS = 48, MAX_LIVE = 12, OPS = 6000 };
    backend_kv_layout l = test_layout();
    block_pool bp;
    prefix_cache pc;
    block_pool_init(&bp, &be, &l, N_BLOCKS);
    prefix_cache_init(&pc, &bp);
    block_hash roots[2];
    root_of(&roots[0], "m", BS, NULL);
    root_of(&roots[1], "m", BS, "salt");
    live_req live[MAX_LIVE];
    int n_live = 0, n_started = 0, n_hits = 0;
    uint64_t x = 12345;
#define NEXT() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
    for (int op = 0; op < OPS; op++) {
        if (n_live < MAX_LIVE && NEXT() % 2) {
            live_req *lr = &live[n_live];
            /* tokens from a tiny alphabet over a few shared stems: prefixes collide often */
            lr->n = 1 + (int)(NEXT() % 39);
            int stem = (int)(NEXT() % 3);
            int32_t alpha = 1 + (int32_t)(NEXT() % 2);
            for (int i = 0; i < lr->n; i++)
                lr->toks[i] = i < 12 ? stem * 100 + i : (int32_t)(NEXT() % 2) * alpha;
            const block_hash *root = &roots[NEXT() % 2];
            if (!req_start(&lr->r, &pc, root, lr->toks, lr->n)) continue;
            block_hash h[10];
            int n_full = block_hash_chain(root, lr->toks, lr->n, BS, h);
            for (int i = 0; i < lr->r.n_hit; i++) { /* the hit's memory is what we would compute */
                const uint8_t *p = block_pool_ptr(&bp, lr->r.blocks[i]);
                ck_assert(memcmp(p, h[i].b, 32) == 0);
                ck_assert(memcmp(p + 32, lr->toks + i * BS, BS * sizeof(int32_t)) == 0);
            }
            for (int i = lr->r.n_hit; i < n_full; i++)
                write_block(&bp, lr->r.blocks[i], &h[i], lr->toks + i * BS);
            n_live++;
            n_started++;
            n_hits += lr->r.n_hit;
        } else if (n_live > 0) {
            int k = (int)(NEXT() % (uint64_t)n_live);
            block_pool_release(&bp, live[k].r.blocks, live[k].r.n_blocks);
            live[k] = live[--n_live];
        }
        if (NEXT() % 500 == 0) prefix_cache_reset(&pc);

        /* every block's ref count = the live requests holding it */
        int model_ref[N_BLOCKS] = {0};
        for (int i = 0; i < n_live; i++)
            for (int j = 0; j < live[i].r.n_blocks; j++) model_ref[live[i].r.blocks[j]]++;
        for (int id = 0; id < N_BLOCKS; id++)
            ck_assert_int_eq(block_pool_refcount(&bp, id), model_ref[id]);
        block_pool_check(&bp);
        prefix_cache_check(&pc);
    }
#undef NEXT
    ck_assert_int_gt(n_started, 1000);
    ck_assert_int_gt(n_hits, 100); /* the test exercised sharing */
    while (n_live > 0) {
        n_live--;
        block_pool_release(&bp, live[n_live].r.blocks, live[n_live].r.n_blocks);
    }
    ck_assert_int_eq(block_pool_n_available(&bp), N_BLOCKS); /* every block free or cached */
    ck_assert_int_eq(bp.n_lru, pc.n_cached);
    block_pool_check(&bp);
    prefix_cache_check(&pc);
    prefix_cache_free(&pc);
    block_pool_free(&bp);
}
END_TEST

int main(void) {
    Suite *s = suite_create("prefix_cache");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, hashes_match_sha256sum);
    tcase_add_test(tc, chain_depends_on_prefix_fingerprint_block_size_and_salt);
    tcase_add_test(tc, lookup_insert_share_and_verify);
    tcase_add_test(tc, eviction_is_lru_deepest_first_and_calls_the_hook);
    tcase_add_test(tc, reset_evicts_only_free_blocks);
    tcase_add_test(tc, random_requests_keep_invariants_and_never_leak);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
