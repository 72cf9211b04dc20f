/* Unit tests for kvcache/block_pool: one allocation, O(1) alloc/free, ref counts, exhaustion, the
 * LRU of cached free blocks and its evict hook. The device is a fake backend over malloc. */
#include <check.h>
#include <signal.h>
#include <stdlib.h>

#include "kvcache/block_pool.h"
#include "model/cpu/cpu_backend.h"

/* --- a fake backend: memory ops only, counting allocations --- */
typedef struct fake_dev {
    size_t free_bytes; /* what dev_free_bytes reports */
    int n_allocs, n_frees;
    size_t last_alloc_bytes;
} fake_dev;

static void *fake_alloc(backend *be, size_t bytes) {
    fake_dev *d = be->impl;
    d->n_allocs++;
    d->last_alloc_bytes = bytes;
    return kv_malloc(bytes);
}
static void fake_free(backend *be, void *p) {
    ((fake_dev *)be->impl)->n_frees++;
    free(p);
}
static size_t fake_free_bytes(backend *be) {
    return ((fake_dev *)be->impl)->free_bytes;
}
static const backend_ops fake_ops = {
    .dev_alloc = fake_alloc, .dev_free = fake_free, .dev_free_bytes = fake_free_bytes};

static fake_dev dev;
static backend be;
static backend_kv_layout layout;

static void setup(void) {
    memset(&dev, 0, sizeof(dev));
    be = (backend){.ops = &fake_ops, .name = "fake", .kv_dtype = KV_DTYPE_BF16, .impl = &dev};
    /* 2 layers, 2 kv heads, head_dim 8, 4 tokens per block, bf16: 2*2*2*4*8*2 = 512 bytes.
     * Written out by hand so that a wrong backend_kv_layout_finish would not go unnoticed. */
    layout = (backend_kv_layout){.n_layers = 2,
                                 .n_kv_heads = 2,
                                 .head_dim = 8,
                                 .block_size = 4,
                                 .dtype = KV_DTYPE_BF16,
                                 .block_bytes = 512};
}

START_TEST(one_allocation_and_block_pointers) {
    block_pool bp;
    block_pool_init(&bp, &be, &layout, 10);
    ck_assert_int_eq(dev.n_allocs, 1);
    ck_assert_uint_eq(dev.last_alloc_bytes, 10 * 512);
    ck_assert_int_eq(block_pool_n_available(&bp), 10);
    for (int i = 0; i < 10; i++) {
        int id = block_pool_alloc(&bp);
        ck_assert_int_eq(id, i); /* fresh pool hands out ascending ids (coalescable runs) */
        ck_assert_ptr_eq(block_pool_ptr(&bp, id), (uint8_t *)bp.base + (size_t)id * 512);
        memset(block_pool_ptr(&bp, id), id + 1, 512); /* every byte of every block is writable */
        ck_assert_int_eq(block_pool_refcount(&bp, id), 1);
    }
    for (int i = 0; i < 10; i++) {
        const uint8_t *p = block_pool_ptr(&bp, i);
        ck_assert_uint_eq(p[0], (unsigned)(i + 1));
        ck_assert_uint_eq(p[511], (unsigned)(i + 1)); /* no block overlaps its neighbour */
    }
    block_pool_check(&bp);
    block_pool_free(&bp);
    ck_assert_int_eq(dev.n_frees, 1);
}
END_TEST

START_TEST(exhaustion_and_all_or_nothing) {
    block_pool bp;
    block_pool_init(&bp, &be, &layout, 5);
    int32_t ids[8];
    ck_assert(block_pool_can_alloc(&bp, 5));
    ck_assert(!block_pool_can_alloc(&bp, 6));
    ck_assert_int_eq(block_pool_alloc_n(&bp, 6, ids), -1);
    ck_assert_int_eq(block_pool_n_available(&bp), 5); /* the failed call took nothing */
    ck_assert_int_eq(block_pool_alloc_n(&bp, 3, ids), 0);
    ck_assert_int_eq(block_pool_alloc_n(&bp, 2, ids + 3), 0);
    ck_assert_int_eq(block_pool_alloc(&bp), -1);
    ck_assert_int_eq(block_pool_n_in_use(&bp), 5);
    block_pool_unref(&bp, ids[2]);
    ck_assert_int_eq(block_pool_alloc(&bp), ids[2]); /* the freed block comes back */
    block_pool_check(&bp);
    block_pool_free(&bp);
}
END_TEST

START_TEST(ref_counts) {
    block_pool bp;
    block_pool_init(&bp, &be, &layout, 4);
    int a = block_pool_alloc(&bp);
    block_pool_ref(&bp, a);
    block_pool_ref(&bp, a);
    ck_assert_int_eq(block_pool_refcount(&bp, a), 3);
    block_pool_unref(&bp, a);
    block_pool_unref(&bp, a);
    ck_assert_int_eq(block_pool_n_available(&bp), 3); /* still held once */
    block_pool_unref(&bp, a);
    ck_assert_int_eq(block_pool_n_available(&bp), 4);
    ck_assert_int_eq(block_pool_refcount(&bp, a), 0);
    block_pool_check(&bp);
    block_pool_free(&bp);
}
END_TEST

/* The evict hook records the order in which cached blocks are recycled. */
typedef struct evict_log {
    int ids[64];
    int n;
} evict_log;
static void log_evict(void *ctx, int id) {
    evict_log *l = ctx;
    l->ids[l->n++] = id;
}

START_TEST(cached_blocks_are_reused_last_and_in_lru_order) {
    block_pool bp;
    block_pool_init(&bp, &be, &layout, 6);
    evict_log log = {0};
    block_pool_set_evict_hook(&bp, log_evict, &log);
    int32_t seq[4];
    ck_assert_int_eq(block_pool_alloc_n(&bp, 4, seq), 0);
    for (int i = 0; i < 4; i++) block_pool_set_cached(&bp, seq[i], true);
    block_pool_release(&bp, seq, 4); /* tail first: seq[3] is the least recently used */
    ck_assert_int_eq(bp.n_lru, 4);
    ck_assert_int_eq(bp.n_free, 2);
    ck_assert_int_eq(block_pool_n_available(&bp), 6);
    ck_assert_int_eq(bp.lru_head, seq[3]);
    ck_assert_int_eq(bp.lru_tail, seq[0]);

    /* the two never-cached blocks go first, without evicting anything */
    int f1 = block_pool_alloc(&bp), f2 = block_pool_alloc(&bp);
    ck_assert(!block_pool_is_cached(&bp, f1) && !block_pool_is_cached(&bp, f2));
    ck_assert_int_eq(log.n, 0);

    /* a hit on seq[1] takes it off the LRU: it must survive the evictions below */
    block_pool_ref(&bp, seq[1]);
    ck_assert_int_eq(block_pool_n_available(&bp), 3);

    /* lru_peek names the next victims in order and evicts nothing */
    int32_t peek[8];
    ck_assert_int_eq(block_pool_lru_peek(&bp, 2, peek), 2);
    ck_assert_int_eq(peek[0], seq[3]);
    ck_assert_int_eq(peek[1], seq[2]);
    ck_assert_int_eq(block_pool_lru_peek(&bp, 8, peek), 3);
    ck_assert_int_eq(peek[2], seq[0]);
    ck_assert_int_eq(log.n, 0);
    ck_assert_int_eq(block_pool_n_available(&bp), 3);

    int e1 = block_pool_alloc(&bp), e2 = block_pool_alloc(&bp), e3 = block_pool_alloc(&bp);
    ck_assert_int_eq(e1, seq[3]);
    ck_assert_int_eq(e2, seq[2]);
    ck_assert_int_eq(e3, seq[0]);
    ck_assert_int_eq(log.n, 3);
    ck_assert_int_eq(log.ids[0], seq[3]);
    ck_assert_int_eq(log.ids[1], seq[2]);
    ck_assert_int_eq(log.ids[2], seq[0]);
    ck_assert(!block_pool_is_cached(&bp, e1)); /* recycled blocks are plain again */
    ck_assert(block_pool_is_cached(&bp, seq[1]));
    ck_assert_int_eq(block_pool_alloc(&bp), -1);
    ck_assert_int_eq(bp.n_evictions, 3);
    block_pool_check(&bp);

    /* releasing the hit puts it back on the LRU, evict_lru moves it to the free list */
    block_pool_unref(&bp, seq[1]);
    ck_assert_int_eq(block_pool_evict_lru(&bp), seq[1]);
    ck_assert_int_eq(block_pool_evict_lru(&bp), -1);
    ck_assert_int_eq(bp.n_free, 1);
    ck_assert_int_eq(log.n, 4);
    block_pool_check(&bp);
    block_pool_free(&bp);
}
END_TEST

/* The same pool over the real CPU backend: layout from backend_kv_layout_finish, data in and out
 * of a block through the backend's copies. */
START_TEST(pool_over_the_cpu_backend) {
    backend *cpu = cpu_backend_create(1);
    backend_kv_layout l = {
        .n_layers = 3, .n_kv_heads = 2, .head_dim = 4, .block_size = 16, .dtype = cpu->kv_dtype};
    backend_kv_layout_finish(&l);
    ck_assert_uint_eq(l.block_bytes, 3 * 2 * 2 * 16 * 4 * kv_dtype_size(cpu->kv_dtype));
    block_pool bp;
    block_pool_init(&bp, cpu, &l, 64);
    int32_t ids[3];
    ck_assert_int_eq(block_pool_alloc_n(&bp, 3, ids), 0);
    uint8_t *in = kv_malloc(l.block_bytes), *out = kv_malloc(l.block_bytes);
    for (size_t i = 0; i < l.block_bytes; i++) in[i] = (uint8_t)(i * 7 + 1);
    cpu->ops->to_dev(cpu, block_pool_ptr(&bp, ids[1]), in, l.block_bytes);
    cpu->ops->to_host(cpu, out, block_pool_ptr(&bp, ids[1]), l.block_bytes);
    ck_assert(memcmp(in, out, l.block_bytes) == 0);
    free(in);
    free(out);
    block_pool_release(&bp, ids, 3);
    block_pool_check(&bp);
    block_pool_free(&bp);
    backend_destroy(cpu);
}
END_TEST

/* Broken invariants abort. */
START_TEST(unref_of_free_block_aborts) {
    block_pool bp;
    block_pool_init(&bp, &be, &layout, 2);
    block_pool_unref(&bp, 0);
}
END_TEST

START_TEST(ref_of_free_uncached_block_aborts) {
    block_pool bp;
    block_pool_init(&bp, &be, &layout, 2);
    block_pool_ref(&bp, 1);
}
END_TEST

/* The block being evicted is on its way to a new owner: the hook cannot keep it (it would
 * otherwise be freed with ref 1 and the LRU list cut). */
static void ref_in_hook(void *ctx, int id) {
    block_pool_ref(ctx, id);
}

START_TEST(ref_from_evict_hook_aborts) {
    block_pool bp;
    block_pool_init(&bp, &be, &layout, 2);
    int a = block_pool_alloc(&bp), b = block_pool_alloc(&bp);
    block_pool_set_cached(&bp, a, true);
    block_pool_set_cached(&bp, b, true);
    block_pool_unref(&bp, a);
    block_pool_unref(&bp, b);
    block_pool_set_evict_hook(&bp, ref_in_hook, &bp);
    block_pool_evict_lru(&bp);
}
END_TEST

/* Random mix of alloc / ref / unref / cache / evict, checking the pool's invariants and an
 * independent model of every block's ref count after each operation. */
START_TEST(random_ops_keep_invariants) {
    enum { N = 32, OPS = 20000 };
    block_pool bp;
    block_pool_init(&bp, &be, &layout, N);
    int model_ref[N] = {0};
    bool model_cached[N] = {0};
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int op = 0; op < OPS; op++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int r = (int)(x % 100), id = (int)((x >> 8) % N);
        if (r < 35) {
            int got = block_pool_alloc(&bp);
            int avail = 0;
            for (int i = 0; i < N; i++) avail += model_ref[i] == 0;
            if (avail == 0) {
                ck_assert_int_eq(got, -1);
            } else {
                ck_assert_int_ge(got, 0);
                ck_assert_int_eq(model_ref[got], 0);
                model_ref[got] = 1;
                model_cached[got] = false;
            }
        } else if (r < 45) {
            if (model_ref[id] > 0 || model_cached[id]) {
                block_pool_ref(&bp, id);
                model_ref[id]++;
            }
        } else if (r < 85) {
            if (model_ref[id] > 0) {
                block_pool_unref(&bp, id);
                model_ref[id]--;
            }
        } else if (r < 95) {
            if (model_ref[id] > 0) {
                block_pool_set_cached(&bp, id, true);
                model_cached[id] = true;
            }
        } else {
            int got = block_pool_evict_lru(&bp);
            if (got >= 0) {
                ck_assert(model_cached[got] && model_ref[got] == 0);
                model_cached[got] = false;
            }
        }
        for (int i = 0; i < N; i++) {
            ck_assert_int_eq(block_pool_refcount(&bp, i), model_ref[i]);
            ck_assert_int_eq(block_pool_is_cached(&bp, i), model_cached[i]);
        }
        block_pool_check(&bp);
    }
    /* drop every reference: each block ends FREE or CACHED, none leaked */
    for (int i = 0; i < N; i++)
        while (model_ref[i]-- > 0) block_pool_unref(&bp, i);
    ck_assert_int_eq(block_pool_n_available(&bp), N);
    block_pool_check(&bp);
    block_pool_free(&bp);
}
END_TEST

int main(void) {
    Suite *s = suite_create("block_pool");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, one_allocation_and_block_pointers);
    tcase_add_test(tc, exhaustion_and_all_or_nothing);
    tcase_add_test(tc, ref_counts);
    tcase_add_test(tc, cached_blocks_are_reused_last_and_in_lru_order);
    tcase_add_test(tc, pool_over_the_cpu_backend);
    tcase_add_test_raise_signal(tc, unref_of_free_block_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, ref_of_free_uncached_block_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, ref_from_evict_hook_aborts, SIGABRT);
    tcase_add_test(tc, random_ops_keep_invariants);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
