/* Unit tests for offload/offload: the hash -> slot index, LRU eviction, pinned (storing/loading)
 * slots, each store policy, the counters, and a long random mix checked against a plain reference
 * model (per-hash state and last-use times, eviction = smallest last use among valid slots). */
#include <check.h>
#include <signal.h>
#include <stdlib.h>

#include "offload/offload.h"
#include "tests/unit/fake_backend.h"

#define BLOCK 4096

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A stand-in for a SHA-256 block hash: 32 well-mixed bytes derived from i. */
static void make_hash(uint32_t i, uint8_t out[OFFLOAD_HASH_BYTES]) {
    uint64_t x = i * 0x100000001b3ull + 7;
    for (int w = 0; w < 4; w++) {
        uint64_t v = splitmix(&x);
        memcpy(out + 8 * w, &v, 8);
    }
}

typedef struct tier {
    backend *be;
    offload *o;
} tier;

static tier tier_new(int n_slots, offload_policy policy, int threshold) {
    tier t = {.be = fake_backend_create()};
    offload_config cfg = {.size_gib = (double)n_slots * BLOCK / (double)(1 << 30),
                          .policy = policy,
                          .reuse_threshold = threshold,
                          .chunk_bytes = 4 * BLOCK};
    kv_error err;
    t.o = offload_create(t.be, &cfg, BLOCK, NULL, NULL, &err);
    ck_assert_ptr_nonnull(t.o);
    host_pool_wait_grown(offload_host_pool(t.o));
    ck_assert_int_eq(offload_poll(t.o), n_slots);
    return t;
}

static void tier_free(tier t) {
    offload_check_invariants(t.o);
    offload_free(t.o);
    fake_backend_stats st = fake_backend_get_stats(t.be);
    ck_assert_int_eq(st.n_host_allocs, st.n_host_frees);
    t.be->ops->destroy(t.be);
}

/* store_begin + store_done: the hash becomes valid in the returned slot. */
static int32_t store(offload *o, uint32_t i) {
    uint8_t h[OFFLOAD_HASH_BYTES];
    make_hash(i, h);
    int32_t s = offload_store_begin(o, h);
    if (s >= 0) offload_store_done(o, s);
    return s;
}

static int32_t lookup(offload *o, uint32_t i) {
    uint8_t h[OFFLOAD_HASH_BYTES];
    make_hash(i, h);
    return offload_lookup(o, h);
}

START_TEST(store_then_lookup) {
    tier t = tier_new(8, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    uint8_t h[OFFLOAD_HASH_BYTES];
    make_hash(1, h);
    int32_t s = offload_store_begin(t.o, h);
    ck_assert_int_ge(s, 0);
    /* a storing slot is not yet data: lookups miss, and a second store of the hash is refused */
    ck_assert_int_eq(offload_lookup(t.o, h), -1);
    ck_assert(!offload_contains(t.o, h));
    ck_assert_int_eq(offload_store_begin(t.o, h), -1);
    offload_store_done(t.o, s);
    ck_assert_int_eq(offload_lookup(t.o, h), s);
    ck_assert(offload_contains(t.o, h));
    ck_assert_int_eq(offload_store_begin(t.o, h), -1);
    ck_assert_int_eq(lookup(t.o, 2), -1);
    offload_stats st = offload_get_stats(t.o);
    ck_assert_uint_eq(st.hits, 1);
    ck_assert_uint_eq(st.misses, 2);
    ck_assert_uint_eq(st.stored_bytes, BLOCK);
    ck_assert_int_eq(st.n_valid, 1);
    ck_assert_int_eq(st.n_free, 7);
    ck_assert_uint_eq(st.bytes_used, BLOCK);
    tier_free(t);
}
END_TEST

START_TEST(hashes_sharing_a_bucket_stay_distinct) {
    tier t = tier_new(8, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    /* same first 8 bytes (same bucket), different tails */
    uint8_t a[OFFLOAD_HASH_BYTES], b[OFFLOAD_HASH_BYTES];
    make_hash(5, a);
    memcpy(b, a, sizeof b);
    b[31] ^= 1;
    int32_t sa = offload_store_begin(t.o, a), sb = offload_store_begin(t.o, b);
    ck_assert_int_ge(sa, 0);
    ck_assert_int_ge(sb, 0);
    ck_assert_int_ne(sa, sb);
    offload_store_done(t.o, sa);
    offload_store_done(t.o, sb);
    ck_assert_int_eq(offload_lookup(t.o, a), sa);
    ck_assert_int_eq(offload_lookup(t.o, b), sb);
    tier_free(t);
}
END_TEST

START_TEST(consecutive_stores_take_adjacent_slots) {
    tier t = tier_new(8, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    for (uint32_t i = 0; i < 4; i++) ck_assert_int_eq(store(t.o, i), (int32_t)i);
    tier_free(t);
}
END_TEST

START_TEST(lru_evicts_least_recently_used) {
    tier t = tier_new(4, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    int32_t slot[4];
    for (uint32_t i = 0; i < 4; i++) slot[i] = store(t.o, i);
    ck_assert_int_eq(lookup(t.o, 0), slot[0]); /* 0 becomes most recent: 1 is now the oldest */
    int32_t s4 = store(t.o, 4);
    ck_assert_int_eq(s4, slot[1]);
    ck_assert_int_eq(lookup(t.o, 1), -1);
    ck_assert_int_eq(lookup(t.o, 0), slot[0]);
    ck_assert_int_eq(store(t.o, 5), slot[2]);
    ck_assert_uint_eq(offload_get_stats(t.o).evictions, 2);
    tier_free(t);
}
END_TEST

START_TEST(loading_and_storing_slots_are_never_evicted) {
    tier t = tier_new(2, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    int32_t s0 = store(t.o, 0);
    uint8_t h1[OFFLOAD_HASH_BYTES];
    make_hash(1, h1);
    int32_t s1 = offload_store_begin(t.o, h1); /* storing */
    ck_assert_int_eq(lookup(t.o, 0), s0);
    offload_load_begin(t.o, s0); /* two readers */
    offload_load_begin(t.o, s0);
    ck_assert_int_eq(lookup(t.o, 0), s0); /* a loading slot still serves lookups */
    ck_assert_int_eq(store(t.o, 2), -1);
    ck_assert_uint_eq(offload_get_stats(t.o).n_stores_skipped, 1);
    offload_load_done(t.o, s0);
    ck_assert_int_eq(store(t.o, 2), -1); /* one reader left */
    offload_load_done(t.o, s0);
    ck_assert_int_eq(store(t.o, 2), s0); /* now evictable */
    offload_store_done(t.o, s1);
    offload_stats st = offload_get_stats(t.o);
    ck_assert_uint_eq(st.loaded_bytes, 2 * BLOCK);
    ck_assert_uint_eq(st.evictions, 1);
    ck_assert_int_eq(st.n_valid, 2);
    tier_free(t);
}
END_TEST

START_TEST(store_abort_frees_the_slot) {
    tier t = tier_new(2, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    uint8_t h[OFFLOAD_HASH_BYTES];
    make_hash(9, h);
    int32_t s = offload_store_begin(t.o, h);
    offload_store_abort(t.o, s);
    ck_assert_int_eq(offload_get_stats(t.o).n_free, 2);
    ck_assert_int_eq(offload_lookup(t.o, h), -1);
    ck_assert_int_ge(offload_store_begin(t.o, h), 0); /* can be stored again */
    tier_free(t);
}
END_TEST

static bool should(offload *o, uint32_t i, offload_event ev) {
    uint8_t h[OFFLOAD_HASH_BYTES];
    make_hash(i, h);
    return offload_should_store(o, h, ev);
}

START_TEST(policy_write_through_stores_each_full_block_once) {
    tier t = tier_new(4, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    ck_assert(should(t.o, 1, OFFLOAD_EVENT_BLOCK_FULL));
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_GPU_HIT));
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_GPU_EVICT));
    uint8_t h[OFFLOAD_HASH_BYTES];
    make_hash(1, h);
    int32_t s = offload_store_begin(t.o, h);
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_BLOCK_FULL)); /* in flight */
    offload_store_done(t.o, s);
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_BLOCK_FULL)); /* stored */
    tier_free(t);
}
END_TEST

START_TEST(policy_on_evict_stores_on_gpu_eviction) {
    tier t = tier_new(4, OFFLOAD_POLICY_ON_EVICT, 0);
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_BLOCK_FULL));
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_GPU_HIT));
    ck_assert(should(t.o, 1, OFFLOAD_EVENT_GPU_EVICT));
    store(t.o, 1);
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_GPU_EVICT));
    tier_free(t);
}
END_TEST

START_TEST(policy_reuse_gated_waits_for_n_hits) {
    tier t = tier_new(4, OFFLOAD_POLICY_REUSE_GATED, 2);
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_BLOCK_FULL)); /* first use */
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_GPU_EVICT));
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_GPU_HIT));  /* hit 1 */
    ck_assert(should(t.o, 1, OFFLOAD_EVENT_GPU_HIT));   /* hit 2 */
    ck_assert(should(t.o, 1, OFFLOAD_EVENT_GPU_EVICT)); /* retry if that store found no slot */
    store(t.o, 1);
    ck_assert(!should(t.o, 1, OFFLOAD_EVENT_GPU_HIT));
    /* a recompute of an evicted block counts as a reuse too */
    ck_assert(!should(t.o, 2, OFFLOAD_EVENT_BLOCK_FULL));
    ck_assert(!should(t.o, 2, OFFLOAD_EVENT_BLOCK_FULL));
    ck_assert(should(t.o, 2, OFFLOAD_EVENT_BLOCK_FULL));
    /* eviction of a hash never seen neither stores nor disturbs counts */
    ck_assert(!should(t.o, 3, OFFLOAD_EVENT_GPU_EVICT));
    tier_free(t);

    tier z = tier_new(4, OFFLOAD_POLICY_REUSE_GATED, 0); /* threshold 0: like write_through */
    ck_assert(should(z.o, 1, OFFLOAD_EVENT_BLOCK_FULL));
    tier_free(z);
}
END_TEST

START_TEST(tier_off_does_nothing) {
    backend *be = fake_backend_create();
    offload_config cfg = {.size_gib = 0, .policy = OFFLOAD_POLICY_WRITE_THROUGH};
    kv_error err;
    offload *o = offload_create(be, &cfg, BLOCK, NULL, NULL, &err);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(offload_get_stats(o).n_slots_total, 0);
    ck_assert_int_eq(offload_poll(o), 0);
    ck_assert(!should(o, 1, OFFLOAD_EVENT_BLOCK_FULL));
    ck_assert_int_eq(store(o, 1), -1);
    ck_assert_int_eq(lookup(o, 1), -1);
    offload_check_invariants(o);
    offload_free(o);
    ck_assert_int_eq(fake_backend_get_stats(be).n_host_allocs, 0);
    be->ops->destroy(be);
}
END_TEST

START_TEST(bad_config_is_an_error) {
    backend *be = fake_backend_create();
    kv_error err = {0};
    offload_config cfg = {.size_gib = -1};
    ck_assert_ptr_null(offload_create(be, &cfg, BLOCK, NULL, NULL, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "size_gib"));
    cfg = (offload_config){
        .size_gib = 1, .policy = OFFLOAD_POLICY_REUSE_GATED, .reuse_threshold = -2};
    ck_assert_ptr_null(offload_create(be, &cfg, BLOCK, NULL, NULL, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "reuse_threshold"));
    be->ops->destroy(be);
}
END_TEST

START_TEST(policy_names) {
    offload_policy p;
    ck_assert(offload_policy_parse("write_through", &p) && p == OFFLOAD_POLICY_WRITE_THROUGH);
    ck_assert(offload_policy_parse("on_evict", &p) && p == OFFLOAD_POLICY_ON_EVICT);
    ck_assert(offload_policy_parse("reuse_gated", &p) && p == OFFLOAD_POLICY_REUSE_GATED);
    ck_assert(!offload_policy_parse("lru", &p));
    ck_assert_str_eq(offload_policy_name(OFFLOAD_POLICY_ON_EVICT), "on_evict");
}
END_TEST

START_TEST(slots_arrive_while_serving) {
    backend *be = fake_backend_create();
    fake_backend_host_gate(be, 0);
    offload_config cfg = {.size_gib = 8.0 * BLOCK / (1 << 30), .chunk_bytes = 4 * BLOCK};
    kv_error err;
    offload *o = offload_create(be, &cfg, BLOCK, NULL, NULL, &err);
    ck_assert(offload_get_stats(o).growing);
    ck_assert_int_eq(store(o, 1), -1); /* nothing pinned yet */
    fake_backend_host_gate(be, -1);
    host_pool_wait_grown(offload_host_pool(o));
    ck_assert_int_eq(offload_poll(o), 8);
    ck_assert_int_ge(store(o, 1), 0);
    offload_free(o);
    be->ops->destroy(be);
}
END_TEST

/* --- random mix against a reference model --- */

enum { REF_ABSENT, REF_STORING, REF_VALID, REF_LOADING };

typedef struct ref_entry {
    int state;
    int32_t slot;
    int n_readers;
    uint64_t last_use; /* for valid entries: when it last became most recently used */
} ref_entry;

#define MIX_SLOTS  16
#define MIX_HASHES 48
#define MIX_OPS    20000

START_TEST(random_mix_matches_reference_and_leaks_nothing) {
    tier t = tier_new(MIX_SLOTS, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    ref_entry ref[MIX_HASHES] = {0};
    uint64_t clock = 0, rng = 12345;
    uint64_t n_hits = 0, n_misses = 0, n_evictions = 0, n_stored = 0, n_loaded = 0;
    for (int op = 0; op < MIX_OPS; op++) {
        uint32_t i = (uint32_t)(splitmix(&rng) % MIX_HASHES);
        ref_entry *e = &ref[i];
        uint8_t h[OFFLOAD_HASH_BYTES];
        make_hash(i, h);
        switch (splitmix(&rng) % 6) {
        case 0: { /* store_begin */
            int n_used = 0, victim = -1;
            for (int j = 0; j < MIX_HASHES; j++) {
                if (ref[j].state != REF_ABSENT) n_used++;
                if (ref[j].state == REF_VALID &&
                    (victim < 0 || ref[j].last_use < ref[victim].last_use))
                    victim = j;
            }
            ck_assert(offload_should_store(t.o, h, OFFLOAD_EVENT_BLOCK_FULL) ==
                      (e->state == REF_ABSENT));
            int32_t s = offload_store_begin(t.o, h);
            if (e->state != REF_ABSENT || (n_used == MIX_SLOTS && victim < 0)) {
                ck_assert_int_eq(s, -1);
                break;
            }
            ck_assert_int_ge(s, 0);
            if (n_used == MIX_SLOTS) {
                ck_assert_int_eq(s, ref[victim].slot);
                ref[victim].state = REF_ABSENT;
                n_evictions++;
            }
            *e = (ref_entry){.state = REF_STORING, .slot = s};
            break;
        }
        case 1: /* store_done (or, now and then, abort) */
            if (e->state != REF_STORING) break;
            if (splitmix(&rng) % 8 == 0) {
                offload_store_abort(t.o, e->slot);
                e->state = REF_ABSENT;
            } else {
                offload_store_done(t.o, e->slot);
                e->state = REF_VALID;
                e->last_use = ++clock;
                n_stored++;
            }
            break;
        case 2:
        case 3: { /* lookup, and load from it half the time */
            int32_t s = offload_lookup(t.o, h);
            if (e->state == REF_VALID || e->state == REF_LOADING) {
                ck_assert_int_eq(s, e->slot);
                n_hits++;
                if (e->state == REF_VALID) e->last_use = ++clock;
                if (splitmix(&rng) % 2) {
                    offload_load_begin(t.o, s);
                    e->state = REF_LOADING;
                    e->n_readers++;
                }
            } else {
                ck_assert_int_eq(s, -1);
                n_misses++;
            }
            break;
        }
        default: /* load_done */
            if (e->state != REF_LOADING) break;
            offload_load_done(t.o, e->slot);
            n_loaded++;
            if (--e->n_readers == 0) {
                e->state = REF_VALID;
                e->last_use = ++clock;
            }
        }
        if (op % 97 == 0) offload_check_invariants(t.o);
    }
    /* finish everything in flight: the tier must be exactly free + valid */
    for (int j = 0; j < MIX_HASHES; j++) {
        if (ref[j].state == REF_STORING) {
            offload_store_done(t.o, ref[j].slot);
            n_stored++;
        }
        for (; ref[j].state == REF_LOADING && ref[j].n_readers > 0; ref[j].n_readers--) {
            offload_load_done(t.o, ref[j].slot);
            n_loaded++;
        }
    }
    offload_stats st = offload_get_stats(t.o);
    ck_assert_int_eq(st.n_storing, 0);
    ck_assert_int_eq(st.n_loading, 0);
    ck_assert_int_eq(st.n_free + st.n_valid, MIX_SLOTS);
    ck_assert_uint_eq(st.hits, n_hits);
    ck_assert_uint_eq(st.misses, n_misses);
    ck_assert_uint_eq(st.evictions, n_evictions);
    ck_assert_uint_eq(st.stored_bytes, n_stored * BLOCK);
    ck_assert_uint_eq(st.loaded_bytes, n_loaded * BLOCK);
    ck_assert_uint_gt(n_evictions, 100); /* the mix did exercise eviction */
    tier_free(t);
}
END_TEST

static void load_done_without_begin_body(void) {
    tier t = tier_new(2, OFFLOAD_POLICY_WRITE_THROUGH, 0);
    int32_t s = store(t.o, 1);
    offload_load_done(t.o, s); /* aborts: no load in flight */
}

START_TEST(load_done_without_begin_aborts) {
    load_done_without_begin_body();
}
END_TEST

int main(void) {
    Suite *s = suite_create("offload");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, store_then_lookup);
    tcase_add_test(tc, hashes_sharing_a_bucket_stay_distinct);
    tcase_add_test(tc, consecutive_stores_take_adjacent_slots);
    tcase_add_test(tc, lru_evicts_least_recently_used);
    tcase_add_test(tc, loading_and_storing_slots_are_never_evicted);
    tcase_add_test(tc, store_abort_frees_the_slot);
    tcase_add_test(tc, policy_write_through_stores_each_full_block_once);
    tcase_add_test(tc, policy_on_evict_stores_on_gpu_eviction);
    tcase_add_test(tc, policy_reuse_gated_waits_for_n_hits);
    tcase_add_test(tc, tier_off_does_nothing);
    tcase_add_test(tc, bad_config_is_an_error);
    tcase_add_test(tc, policy_names);
    tcase_add_test(tc, slots_arrive_while_serving);
    tcase_add_test(tc, random_mix_matches_reference_and_leaks_nothing);
    tcase_add_test_raise_signal(tc, load_done_without_begin_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
