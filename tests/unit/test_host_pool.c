/* Unit tests for offload/host_pool: background growth in chunks of whole slots, the engine's
 * slot accounting, a size of 0 turning the tier off, stopping and freeing mid-growth. */
#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "offload/host_pool.h"
#include "tests/unit/fake_backend.h"

#define BLOCK 1000 /* not a power of two: slot offsets must still be exact multiples */

typedef struct progress_log {
    int n_calls, n_done;
    size_t last_ready, total;
    bool monotonic;
} progress_log;

static void on_progress(void *user, size_t ready, size_t total, bool done) {
    progress_log *log = user;
    if (ready < log->last_ready) log->monotonic = false;
    log->last_ready = ready;
    log->total = total;
    log->n_calls++;
    if (done) log->n_done++;
}

/* Polls until the engine holds at least n slots (the pinning thread runs concurrently). */
static void poll_until_ready(host_pool *hp, int n) {
    struct timespec ms = {0, 1000000};
    while (host_pool_grow_poll(hp), host_pool_n_slots_ready(hp) < n) nanosleep(&ms, NULL);
}

static void assert_no_host_leak(backend *be) {
    fake_backend_stats st = fake_backend_get_stats(be);
    ck_assert_int_eq(st.n_host_allocs, st.n_host_frees);
    ck_assert_uint_eq(st.host_bytes_live, 0);
}

START_TEST(size_zero_turns_the_tier_off) {
    backend *be = fake_backend_create();
    kv_error err;
    host_pool_config cfg = {.total_bytes = 0, .block_bytes = BLOCK};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    ck_assert_ptr_nonnull(hp);
    host_pool_wait_grown(hp);
    ck_assert_int_eq(host_pool_grow_poll(hp), 0);
    ck_assert_int_eq(host_pool_n_slots_total(hp), 0);
    ck_assert_int_eq(host_pool_slot_alloc(hp, -1), -1);
    ck_assert(!host_pool_get_stats(hp).growing);
    host_pool_free(hp);
    ck_assert_int_eq(fake_backend_get_stats(be).n_host_allocs, 0);
    be->ops->destroy(be);
}
END_TEST

START_TEST(size_below_one_block_is_a_config_error) {
    backend *be = fake_backend_create();
    kv_error err = {0};
    host_pool_config cfg = {.total_bytes = BLOCK - 1, .block_bytes = BLOCK};
    ck_assert_ptr_null(host_pool_create(be, &cfg, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "smaller than one KV block"));
    be->ops->destroy(be);
}
END_TEST

START_TEST(grows_in_chunks_of_whole_slots) {
    backend *be = fake_backend_create();
    kv_error err;
    progress_log log = {.monotonic = true};
    /* 10 slots (the extra 500 bytes are not a slot); chunks of 3.5 blocks hold 3 slots: 3+3+3+1 */
    host_pool_config cfg = {.total_bytes = 10 * BLOCK + 500,
                            .block_bytes = BLOCK,
                            .chunk_bytes = 3 * BLOCK + 500,
                            .progress = on_progress,
                            .progress_user = &log};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    ck_assert_ptr_nonnull(hp);
    host_pool_wait_grown(hp);
    ck_assert_int_eq(host_pool_n_slots_ready(hp), 0); /* nothing until the engine polls */
    ck_assert_int_eq(host_pool_grow_poll(hp), 10);
    ck_assert_int_eq(host_pool_grow_poll(hp), 0);
    ck_assert_int_eq(host_pool_slots_per_chunk(hp), 3);
    fake_backend_stats st = fake_backend_get_stats(be);
    ck_assert_int_eq(st.n_host_allocs, 4);
    ck_assert_uint_eq(st.host_bytes_live, 10 * BLOCK); /* every chunk holds whole slots */
    ck_assert_int_eq(log.n_done, 1);
    ck_assert_int_eq(log.n_calls, 5);
    ck_assert(log.monotonic);
    ck_assert_uint_eq(log.last_ready, 10 * BLOCK);
    ck_assert_uint_eq(log.total, 10 * BLOCK);

    /* inside a chunk, slots are block_bytes apart; adjacency stops at chunk boundaries */
    for (int32_t s = 0; s + 1 < 10; s++) {
        bool same_chunk = s / 3 == (s + 1) / 3;
        ck_assert(host_pool_slots_adjacent(hp, s, s + 1) == same_chunk);
        if (same_chunk)
            ck_assert_ptr_eq((uint8_t *)host_pool_slot_ptr(hp, s) + BLOCK,
                             host_pool_slot_ptr(hp, s + 1));
    }
    ck_assert(!host_pool_slots_adjacent(hp, 0, 2));
    /* every byte of every slot is writable (valgrind/ASan would flag an overrun) */
    for (int32_t s = 0; s < 10; s++) memset(host_pool_slot_ptr(hp, s), s, BLOCK);
    host_pool_stats hs = host_pool_get_stats(hp);
    ck_assert(!hs.growing && !hs.grow_failed);
    ck_assert_uint_eq(hs.bytes_ready, 10 * BLOCK);
    host_pool_free(hp);
    assert_no_host_leak(be);
    be->ops->destroy(be);
}
END_TEST

START_TEST(slots_become_usable_as_chunks_arrive) {
    backend *be = fake_backend_create();
    fake_backend_host_gate(be, 1);
    kv_error err;
    host_pool_config cfg = {
        .total_bytes = 8 * BLOCK, .block_bytes = BLOCK, .chunk_bytes = 2 * BLOCK};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    poll_until_ready(hp, 2);
    ck_assert(host_pool_get_stats(hp).growing);
    ck_assert_int_eq(host_pool_n_slots_ready(hp), 2);
    /* first chunk in use while the second is not pinned yet */
    int32_t a = host_pool_slot_alloc(hp, -1), b = host_pool_slot_alloc(hp, -1);
    ck_assert_int_eq(a, 0);
    ck_assert_int_eq(b, 1);
    ck_assert_int_eq(host_pool_slot_alloc(hp, -1), -1);
    fake_backend_host_permit(be, 1);
    poll_until_ready(hp, 4);
    ck_assert_int_eq(host_pool_n_slots_free(hp), 2);
    fake_backend_host_gate(be, -1);
    host_pool_wait_grown(hp);
    ck_assert_int_eq(host_pool_grow_poll(hp), 4);
    ck_assert_int_eq(host_pool_n_slots_free(hp), 6);
    host_pool_slot_free(hp, a);
    host_pool_slot_free(hp, b);
    ck_assert_int_eq(host_pool_n_slots_free(hp), 8);
    host_pool_free(hp);
    assert_no_host_leak(be);
    be->ops->destroy(be);
}
END_TEST

START_TEST(slot_accounting_and_hints) {
    backend *be = fake_backend_create();
    kv_error err;
    host_pool_config cfg = {
        .total_bytes = 16 * BLOCK, .block_bytes = BLOCK, .chunk_bytes = 4 * BLOCK};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    host_pool_wait_grown(hp);
    host_pool_grow_poll(hp);
    /* fresh slots come out in ascending order */
    for (int32_t s = 0; s < 16; s++) ck_assert_int_eq(host_pool_slot_alloc(hp, -1), s);
    ck_assert_int_eq(host_pool_slot_alloc(hp, -1), -1);
    /* freed slots come back oldest first unless a free hint is given */
    host_pool_slot_free(hp, 9);
    host_pool_slot_free(hp, 3);
    host_pool_slot_free(hp, 4);
    ck_assert_int_eq(host_pool_n_slots_free(hp), 3);
    ck_assert_int_eq(host_pool_slot_alloc(hp, 4), 4);  /* hint free: taken */
    ck_assert_int_eq(host_pool_slot_alloc(hp, 10), 9); /* hint in use: oldest free */
    ck_assert_int_eq(host_pool_slot_alloc(hp, 99), 3); /* hint out of range */
    ck_assert_int_eq(host_pool_n_slots_free(hp), 0);
    host_pool_free(hp);
    assert_no_host_leak(be);
    be->ops->destroy(be);
}
END_TEST

static void double_free_body(void) {
    backend *be = fake_backend_create();
    kv_error err;
    host_pool_config cfg = {.total_bytes = 4 * BLOCK, .block_bytes = BLOCK};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    host_pool_wait_grown(hp);
    host_pool_grow_poll(hp);
    int32_t s = host_pool_slot_alloc(hp, -1);
    host_pool_slot_free(hp, s);
    host_pool_slot_free(hp, s); /* aborts */
}

START_TEST(double_free_aborts) {
    double_free_body();
}
END_TEST

START_TEST(stop_mid_growth_frees_everything) {
    backend *be = fake_backend_create();
    fake_backend_host_gate(be, 2);
    kv_error err;
    progress_log log = {.monotonic = true};
    host_pool_config cfg = {.total_bytes = 100 * BLOCK,
                            .block_bytes = BLOCK,
                            .chunk_bytes = BLOCK,
                            .progress = on_progress,
                            .progress_user = &log};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    poll_until_ready(hp, 2);
    /* the thread now waits inside its third host_alloc: stop, then let that call return */
    host_pool_stop_growth(hp);
    fake_backend_host_gate(be, -1);
    host_pool_wait_grown(hp);
    host_pool_grow_poll(hp);
    int n_allocs = fake_backend_get_stats(be).n_host_allocs;
    ck_assert_int_le(n_allocs, 3);
    ck_assert_int_eq(host_pool_n_slots_ready(hp), n_allocs);
    ck_assert_int_eq(log.n_done, 1);
    host_pool_free(hp);
    assert_no_host_leak(be);
    be->ops->destroy(be);
}
END_TEST

START_TEST(free_while_growing_frees_everything) {
    backend *be = fake_backend_create();
    kv_error err;
    host_pool_config cfg = {
        .total_bytes = 20000 * (size_t)BLOCK, .block_bytes = BLOCK, .chunk_bytes = BLOCK};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    host_pool_grow_poll(hp);
    host_pool_free(hp); /* most likely mid-growth; correct either way */
    assert_no_host_leak(be);
    be->ops->destroy(be);
}
END_TEST

START_TEST(host_alloc_failure_keeps_what_was_pinned) {
    backend *be = fake_backend_create();
    fake_backend_host_fail_after(be, 2);
    kv_error err;
    host_pool_config cfg = {
        .total_bytes = 12 * BLOCK, .block_bytes = BLOCK, .chunk_bytes = 3 * BLOCK};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    host_pool_wait_grown(hp);
    ck_assert_int_eq(host_pool_grow_poll(hp), 6);
    host_pool_stats hs = host_pool_get_stats(hp);
    ck_assert(hs.grow_failed && !hs.growing);
    ck_assert_int_eq(hs.n_slots_total, 12);
    ck_assert_int_eq(hs.n_slots_ready, 6);
    host_pool_free(hp);
    assert_no_host_leak(be);
    be->ops->destroy(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("host_pool");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, size_zero_turns_the_tier_off);
    tcase_add_test(tc, size_below_one_block_is_a_config_error);
    tcase_add_test(tc, grows_in_chunks_of_whole_slots);
    tcase_add_test(tc, slots_become_usable_as_chunks_arrive);
    tcase_add_test(tc, slot_accounting_and_hints);
    tcase_add_test_raise_signal(tc, double_free_aborts, SIGABRT);
    tcase_add_test(tc, stop_mid_growth_frees_everything);
    tcase_add_test(tc, free_while_growing_frees_everything);
    tcase_add_test(tc, host_alloc_failure_keeps_what_was_pinned);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
