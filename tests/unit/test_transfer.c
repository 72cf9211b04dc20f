/* Unit tests for offload/transfer on the fake backend: how many copies a batch becomes, data
 * round trips, loads by layer groups, and the ordering rules of DESIGN.md with device work that
 * completes only when the test releases it. */
#include <check.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "offload/transfer.h"
#include "tests/unit/fake_backend.h"

#define BLOCK           256
#define N_BLOCKS        32
#define N_SLOTS         32
#define SLOTS_PER_CHUNK 4

typedef struct rig {
    backend *be;
    host_pool *hp;
    uint8_t *pool; /* device KV pool */
    transfer *t;
    int pins[N_BLOCKS]; /* net pins per block, from the hooks */
} rig;

static void on_pin(void *user, int32_t block) {
    ((rig *)user)->pins[block]++;
}
static void on_unpin(void *user, int32_t block) {
    ((rig *)user)->pins[block]--;
}

static rig *rig_new(void) {
    rig *r = kv_calloc(1, sizeof *r);
    r->be = fake_backend_create();
    kv_error err;
    host_pool_config cfg = {.total_bytes = N_SLOTS * BLOCK,
                            .block_bytes = BLOCK,
                            .chunk_bytes = SLOTS_PER_CHUNK * BLOCK};
    r->hp = host_pool_create(r->be, &cfg, &err);
    host_pool_wait_grown(r->hp);
    ck_assert_int_eq(host_pool_grow_poll(r->hp), N_SLOTS);
    r->pool = r->be->ops->dev_alloc(r->be, N_BLOCKS * BLOCK);
    transfer_hooks hooks = {.user = r, .pin = on_pin, .unpin = on_unpin};
    r->t = transfer_create(r->be, r->hp, r->pool, N_BLOCKS, &hooks);
    return r;
}

static void rig_free(rig *r) {
    transfer_free(r->t);
    for (int b = 0; b < N_BLOCKS; b++) ck_assert_int_eq(r->pins[b], 0);
    r->be->ops->dev_free(r->be, r->pool);
    host_pool_free(r->hp);
    fake_backend_stats st = fake_backend_get_stats(r->be);
    ck_assert_int_eq(st.n_events_live, 0);
    ck_assert_int_eq(st.n_dev_live, 0);
    ck_assert_int_eq(st.n_host_allocs, st.n_host_frees);
    r->be->ops->destroy(r->be);
    free(r);
}

static uint8_t *block_ptr(rig *r, int32_t b) {
    return r->pool + (size_t)b * BLOCK;
}
static uint8_t *slot_ptr(rig *r, int32_t s) {
    return host_pool_slot_ptr(r->hp, s);
}

/* Queues one store batch and returns its number of copies, checking that it took one call. */
static int store_copies(rig *r, const transfer_pair *pairs, int n) {
    fake_backend_stats before = fake_backend_get_stats(r->be);
    transfer_op *op = transfer_store(r->t, pairs, n, NULL);
    fake_backend_stats after = fake_backend_get_stats(r->be);
    ck_assert_int_eq(
        after.n_copy_calls[BACKEND_STREAM_STORE] - before.n_copy_calls[BACKEND_STREAM_STORE], 1);
    int n_copies = after.n_copies[BACKEND_STREAM_STORE] - before.n_copies[BACKEND_STREAM_STORE];
    ck_assert_int_eq(n_copies, transfer_op_n_copies(op));
    ck_assert_uint_eq(after.copy_bytes[BACKEND_STREAM_STORE] -
                          before.copy_bytes[BACKEND_STREAM_STORE],
                      (size_t)n * BLOCK);
    ck_assert(transfer_poll(r->t, op));
    transfer_op_free(r->t, op);
    return n_copies;
}

START_TEST(coalesces_runs_adjacent_on_both_sides) {
    rig *r = rig_new();
    /* blocks 0..3 -> slots 0..3: one chunk, one copy */
    ck_assert_int_eq(store_copies(r, (transfer_pair[]){{0, 0}, {1, 1}, {2, 2}, {3, 3}}, 4), 1);
    /* slots 2..5 cross the chunk boundary between 3 and 4 */
    ck_assert_int_eq(store_copies(r, (transfer_pair[]){{4, 2}, {5, 3}, {6, 4}, {7, 5}}, 4), 2);
    /* order of the pairs does not matter */
    ck_assert_int_eq(store_copies(r, (transfer_pair[]){{10, 10}, {8, 8}, {9, 9}}, 3), 1);
    /* consecutive blocks, slots descending: nothing to join */
    ck_assert_int_eq(store_copies(r, (transfer_pair[]){{0, 3}, {1, 2}, {2, 1}}, 3), 3);
    /* consecutive slots, blocks apart */
    ck_assert_int_eq(store_copies(r, (transfer_pair[]){{0, 0}, {2, 1}}, 2), 2);
    /* two runs in one batch: 12..15 -> 16..19 and 20..21 -> 24..25 */
    ck_assert_int_eq(
        store_copies(
            r, (transfer_pair[]){{12, 16}, {13, 17}, {14, 18}, {15, 19}, {20, 24}, {21, 25}}, 6),
        2);
    /* loads coalesce the same way */
    transfer_op *op = transfer_load(r->t, (transfer_pair[]){{1, 1}, {0, 0}, {2, 2}}, 3, NULL);
    ck_assert_int_eq(transfer_op_n_copies(op), 1);
    ck_assert_int_eq(fake_backend_get_stats(r->be).n_copy_calls[BACKEND_STREAM_LOAD], 1);
    ck_assert(transfer_poll(r->t, op));
    transfer_op_free(r->t, op);
    transfer_stats ts = transfer_get_stats(r->t);
    ck_assert_uint_eq(ts.n_stores, 6);
    ck_assert_uint_eq(ts.n_store_copies, 1 + 2 + 1 + 3 + 2 + 2);
    ck_assert_uint_eq(ts.n_loads, 1);
    ck_assert_uint_eq(ts.load_bytes, 3 * BLOCK);
    rig_free(r);
}
END_TEST

static uint64_t rng_next(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void shuffle(int32_t *a, int n, uint64_t *rng) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_next(rng) % (uint64_t)(i + 1));
        int32_t tmp = a[i];
        a[i] = a[j];
        a[j] = tmp;
    }
}

START_TEST(store_then_load_into_other_blocks_round_trips) {
    rig *r = rig_new();
    uint64_t rng = 88172645463325252ull;
    static uint8_t orig[N_BLOCKS][BLOCK];
    for (int b = 0; b < N_BLOCKS; b++)
        for (int i = 0; i < BLOCK; i++) orig[b][i] = (uint8_t)rng_next(&rng);
    memcpy(r->pool, orig, sizeof orig);

    /* block b -> slot of_block[b]: runs of adjacent slots for the first half, shuffled after */
    int32_t of_block[N_BLOCKS];
    for (int b = 0; b < N_BLOCKS; b++) of_block[b] = b;
    shuffle(of_block + N_BLOCKS / 2, N_BLOCKS / 2, &rng);
    transfer_pair pairs[N_BLOCKS];
    for (int b = 0; b < N_BLOCKS; b++) pairs[b] = (transfer_pair){b, of_block[b]};
    transfer_op *st1 = transfer_store(r->t, pairs, N_BLOCKS / 2, NULL);
    transfer_op *st2 = transfer_store(r->t, pairs + N_BLOCKS / 2, N_BLOCKS / 2, NULL);
    ck_assert_int_eq(transfer_op_n_copies(st1), N_BLOCKS / 2 / SLOTS_PER_CHUNK);
    transfer_wait(r->t, st1);
    transfer_wait(r->t, st2);
    transfer_op_free(r->t, st1);
    transfer_op_free(r->t, st2);
    for (int b = 0; b < N_BLOCKS; b++) ck_assert_mem_eq(slot_ptr(r, of_block[b]), orig[b], BLOCK);

    /* reload into a different block each: data of block b lands in block dest[b] */
    memset(r->pool, 0, N_BLOCKS * BLOCK);
    int32_t dest[N_BLOCKS];
    for (int b = 0; b < N_BLOCKS; b++) dest[b] = (b + 5) % N_BLOCKS;
    shuffle(dest, N_BLOCKS / 2, &rng);
    for (int b = 0; b < N_BLOCKS; b++) pairs[b] = (transfer_pair){dest[b], of_block[b]};
    transfer_op *ld = transfer_load(r->t, pairs, N_BLOCKS, NULL);
    transfer_wait(r->t, ld);
    transfer_op_free(r->t, ld);
    for (int b = 0; b < N_BLOCKS; b++) ck_assert_mem_eq(block_ptr(r, dest[b]), orig[b], BLOCK);
    rig_free(r);
}
END_TEST

/* The same round trip on the real CPU backend, whose host_alloc runs on the pinning thread. */
START_TEST(cpu_backend_round_trip) {
    kv_error err;
    backend *be = backend_create("cpu", 1, &err);
    ck_assert_ptr_nonnull(be);
    host_pool_config cfg = {.total_bytes = N_SLOTS * BLOCK,
                            .block_bytes = BLOCK,
                            .chunk_bytes = SLOTS_PER_CHUNK * BLOCK};
    host_pool *hp = host_pool_create(be, &cfg, &err);
    host_pool_wait_grown(hp);
    ck_assert_int_eq(host_pool_grow_poll(hp), N_SLOTS);
    uint8_t *pool = be->ops->dev_alloc(be, N_BLOCKS * BLOCK);
    transfer *t = transfer_create(be, hp, pool, N_BLOCKS, NULL);
    uint64_t rng = 7;
    static uint8_t orig[N_BLOCKS][BLOCK];
    for (int b = 0; b < N_BLOCKS; b++)
        for (int i = 0; i < BLOCK; i++) orig[b][i] = (uint8_t)rng_next(&rng);
    be->ops->to_dev(be, pool, orig, sizeof orig);
    int32_t slot_of[N_BLOCKS];
    for (int b = 0; b < N_BLOCKS; b++) slot_of[b] = b;
    shuffle(slot_of, N_BLOCKS, &rng);
    transfer_pair pairs[N_BLOCKS];
    for (int b = 0; b < N_BLOCKS; b++) pairs[b] = (transfer_pair){b, slot_of[b]};
    backend_event *step = be->ops->event_record(be, BACKEND_STREAM_COMPUTE);
    transfer_op *st = transfer_store(t, pairs, N_BLOCKS, step);
    be->ops->event_free(be, step);
    transfer_wait(t, st);
    transfer_op_free(t, st);
    /* load block b's data into block N_BLOCKS - 1 - b */
    be->ops->to_dev(be, pool, (uint8_t[N_BLOCKS * BLOCK]){0}, N_BLOCKS * BLOCK);
    for (int b = 0; b < N_BLOCKS; b++) pairs[b] = (transfer_pair){N_BLOCKS - 1 - b, slot_of[b]};
    transfer_op *ld = transfer_load(t, pairs, N_BLOCKS, NULL);
    while (!transfer_poll(t, ld)) continue;
    transfer_op_free(t, ld);
    static uint8_t back[N_BLOCKS][BLOCK];
    be->ops->to_host(be, back, pool, sizeof back);
    for (int b = 0; b < N_BLOCKS; b++) ck_assert_mem_eq(back[N_BLOCKS - 1 - b], orig[b], BLOCK);
    transfer_free(t);
    be->ops->dev_free(be, pool);
    host_pool_free(hp);
    backend_destroy(be);
}
END_TEST

/* Device-side stand-ins for kernels: one reads a block (keeps what it saw), one writes it. */
typedef struct kernel_arg {
    uint8_t *block;
    uint8_t seen[BLOCK];
    uint8_t value;
} kernel_arg;

static void kernel_read(void *p) {
    kernel_arg *k = p;
    memcpy(k->seen, k->block, BLOCK);
}

static void kernel_write(void *p) {
    kernel_arg *k = p;
    memset(k->block, k->value, BLOCK);
}

static bool all_bytes(const uint8_t *p, uint8_t v) {
    for (int i = 0; i < BLOCK; i++)
        if (p[i] != v) return false;
    return true;
}

/* Rule 2, and why it matters: a kernel still reading block 3 (held) must see the old contents
 * even though a load into block 3 is queued meanwhile. */
static void load_into_recycled_block(bool pass_after) {
    rig *r = rig_new();
    fake_backend_set_manual(r->be, true);
    memset(block_ptr(r, 3), 0xAA, BLOCK); /* old contents */
    memset(slot_ptr(r, 7), 0x55, BLOCK);  /* what the load brings */
    kernel_arg k = {.block = block_ptr(r, 3)};
    int hold = fake_backend_hold(r->be, BACKEND_STREAM_COMPUTE); /* the step still runs */
    fake_backend_kernel(r->be, kernel_read, &k);
    backend_event *step = r->be->ops->event_record(r->be, BACKEND_STREAM_COMPUTE);
    transfer_op *op = transfer_load(r->t, (transfer_pair[]){{3, 7}}, 1, pass_after ? step : NULL);
    r->be->ops->event_free(r->be, step); /* borrowed: may go at once */
    fake_backend_run(r->be);
    if (pass_after) {
        ck_assert(all_bytes(block_ptr(r, 3), 0xAA)); /* not issued before the reader finished */
        ck_assert(!transfer_poll(r->t, op));
        ck_assert(transfer_block_loading(r->t, 3));
    }
    fake_backend_release(r->be, hold);
    fake_backend_run(r->be);
    ck_assert(transfer_poll(r->t, op));
    ck_assert(all_bytes(block_ptr(r, 3), 0x55));
    /* with the wait the reader saw the old contents; without it the load overwrote them first */
    ck_assert(all_bytes(k.seen, pass_after ? 0xAA : 0x55));
    transfer_op_free(r->t, op);
    rig_free(r);
}

START_TEST(load_into_recycled_block_waits_for_last_reader) {
    load_into_recycled_block(true);
}
END_TEST

START_TEST(control_load_without_after_races_the_reader) {
    load_into_recycled_block(false);
}
END_TEST

/* Rule 3a: a store queued behind the step that writes the block copies what that step wrote. */
START_TEST(store_waits_for_the_writing_kernel) {
    rig *r = rig_new();
    fake_backend_set_manual(r->be, true);
    memset(block_ptr(r, 2), 0x11, BLOCK);
    memset(slot_ptr(r, 9), 0, BLOCK);
    kernel_arg k = {.block = block_ptr(r, 2), .value = 0x77};
    int hold = fake_backend_hold(r->be, BACKEND_STREAM_COMPUTE);
    fake_backend_kernel(r->be, kernel_write, &k);
    backend_event *step = r->be->ops->event_record(r->be, BACKEND_STREAM_COMPUTE);
    transfer_op *op = transfer_store(r->t, (transfer_pair[]){{2, 9}}, 1, step);
    r->be->ops->event_free(r->be, step);
    fake_backend_run(r->be);
    ck_assert(all_bytes(slot_ptr(r, 9), 0)); /* nothing copied while the writer runs */
    ck_assert(!transfer_poll(r->t, op));
    fake_backend_release(r->be, hold);
    fake_backend_run(r->be);
    ck_assert(transfer_poll(r->t, op));
    ck_assert(all_bytes(slot_ptr(r, 9), 0x77));
    transfer_op_free(r->t, op);
    rig_free(r);
}
END_TEST

/* Rule 3b: the block stays pinned (hooks and transfer_block_busy) until a poll sees the store
 * complete; the STORE stream is held so the copy is really in flight. */
START_TEST(store_pins_its_blocks_until_complete) {
    rig *r = rig_new();
    fake_backend_set_manual(r->be, true);
    int hold = fake_backend_hold(r->be, BACKEND_STREAM_STORE);
    transfer_op *op = transfer_store(r->t, (transfer_pair[]){{4, 0}, {5, 1}}, 2, NULL);
    ck_assert_int_eq(r->pins[4], 1);
    ck_assert_int_eq(r->pins[5], 1);
    ck_assert(transfer_block_busy(r->t, 4));
    ck_assert(!transfer_block_busy(r->t, 6));
    ck_assert(!transfer_block_loading(r->t, 4));
    fake_backend_run(r->be);
    ck_assert(!transfer_poll(r->t, op));
    ck_assert_int_eq(r->pins[4], 1);
    fake_backend_release(r->be, hold);
    fake_backend_run(r->be);
    ck_assert_int_eq(r->pins[4], 1); /* complete on the device, not yet seen: still pinned */
    ck_assert(transfer_poll(r->t, op));
    ck_assert_int_eq(r->pins[4], 0);
    ck_assert_int_eq(r->pins[5], 0);
    ck_assert(!transfer_block_busy(r->t, 4));
    transfer_op_free(r->t, op);
    rig_free(r);
}
END_TEST

START_TEST(free_waits_for_ops_in_flight) {
    rig *r = rig_new();
    fake_backend_set_manual(r->be, true);
    memset(block_ptr(r, 0), 0x42, BLOCK);
    transfer_store(r->t, (transfer_pair[]){{0, 0}}, 1, NULL);
    transfer_load(r->t, (transfer_pair[]){{1, 5}}, 1, NULL);
    ck_assert_int_eq(transfer_get_stats(r->t).n_inflight, 2);
    transfer_free(r->t); /* runs the queues to completion, unpins, frees */
    r->t = transfer_create(r->be, r->hp, r->pool, N_BLOCKS, NULL);
    ck_assert(all_bytes(slot_ptr(r, 0), 0x42));
    rig_free(r);
}
END_TEST

/* Broken ordering by the engine aborts rather than corrupting blocks. */
static rig *held_rig(void) {
    rig *r = rig_new();
    fake_backend_set_manual(r->be, true);
    fake_backend_hold(r->be, BACKEND_STREAM_STORE);
    fake_backend_hold(r->be, BACKEND_STREAM_LOAD);
    return r;
}

START_TEST(load_into_block_a_store_still_reads_aborts) {
    rig *r = held_rig();
    transfer_store(r->t, (transfer_pair[]){{3, 0}}, 1, NULL);
    transfer_load(r->t, (transfer_pair[]){{3, 1}}, 1, NULL);
}
END_TEST

START_TEST(store_of_block_being_loaded_aborts) {
    rig *r = held_rig();
    transfer_load(r->t, (transfer_pair[]){{3, 1}}, 1, NULL);
    transfer_store(r->t, (transfer_pair[]){{3, 0}}, 1, NULL);
}
END_TEST

START_TEST(freeing_an_op_in_flight_aborts) {
    rig *r = held_rig();
    transfer_op *op = transfer_load(r->t, (transfer_pair[]){{3, 1}}, 1, NULL);
    transfer_op_free(r->t, op);
}
END_TEST

/* --- loads by layer groups --- */

#define LAYERS 8 /* BLOCK / LAYERS bytes per layer of a block */

typedef struct group_check {
    rig *r;
    const transfer_pair *pairs;
    int n;
    size_t lo, hi;      /* the group's bytes of each block */
    size_t last_lo;     /* the last group's first byte */
    int n_run, n_bad;   /* kernel runs; blocks whose group bytes differ from the slot */
    int n_last_pending; /* blocks whose last group was not in place yet when it ran */
} group_check;

static void check_group(void *arg) {
    group_check *c = arg;
    c->n_run++;
    for (int i = 0; i < c->n; i++) {
        const uint8_t *b = block_ptr(c->r, c->pairs[i].block);
        const uint8_t *s = slot_ptr(c->r, c->pairs[i].slot);
        if (memcmp(b + c->lo, s + c->lo, c->hi - c->lo)) c->n_bad++;
        if (memcmp(b + c->last_lo, s + c->last_lo, BLOCK - c->last_lo)) c->n_last_pending++;
    }
}

/* 3 groups of 8 layers ([0, 2), [2, 5), [5, 8)) over 3 runs: each group's event completes once
 * that group's bytes of every block are in place, and a kernel waiting on it (the fake device
 * interleaves streams) sees them while later groups are still being copied; the copies start
 * after `after`. With copy_2d_async one copy call per run and group, without it one per block and
 * group. */
START_TEST(layered_load_orders_each_group_before_its_readers) {
    const transfer_pair pairs[] = {{2, 4}, {3, 5}, {4, 6}, {5, 7}, {9, 1}, {10, 2}, {20, 12}};
    const int n = 7, n_runs = 3, n_groups = 3, first[] = {0, 2, 5, LAYERS};
    const size_t lb = BLOCK / LAYERS;
    for (int with_2d = 1; with_2d >= 0; with_2d--) {
        rig *r = rig_new();
        if (!with_2d) fake_backend_no_copy_2d(r->be);
        uint64_t rng = 99;
        for (int s = 0; s < N_SLOTS; s++)
            for (int i = 0; i < BLOCK; i++) slot_ptr(r, s)[i] = (uint8_t)(1 + rng_next(&rng) % 255);
        int hold_compute = fake_backend_hold(r->be, BACKEND_STREAM_COMPUTE);
        backend_event *after = r->be->ops->event_record(r->be, BACKEND_STREAM_COMPUTE);
        transfer_op *op = transfer_load_layers(r->t, pairs, n, after, LAYERS, n_groups);
        r->be->ops->event_free(r->be, after);
        group_check gc[3];
        for (int g = 0; g < n_groups; g++) {
            for (int l = first[g]; l < first[g + 1]; l++)
                ck_assert_ptr_eq(transfer_op_layer_event(op, l),
                                 transfer_op_layer_event(op, first[g]));
            if (g > 0)
                ck_assert_ptr_ne(transfer_op_layer_event(op, first[g]),
                                 transfer_op_layer_event(op, first[g - 1]));
            gc[g] = (group_check){.r = r,
                                  .pairs = pairs,
                                  .n = n,
                                  .lo = (size_t)first[g] * lb,
                                  .hi = (size_t)first[g + 1] * lb,
                                  .last_lo = (size_t)first[2] * lb};
            r->be->ops->event_wait(r->be, BACKEND_STREAM_COMPUTE,
                                   transfer_op_layer_event(op, first[g]));
            fake_backend_kernel(r->be, check_group, &gc[g]);
        }
        /* `after` not reached: nothing copied, nothing read */
        ck_assert(!transfer_poll(r->t, op));
        ck_assert_int_eq(block_ptr(r, 2)[0], 0);
        ck_assert_int_eq(gc[0].n_run, 0);
        ck_assert(transfer_block_loading(r->t, 9));
        fake_backend_release(r->be, hold_compute);
        ck_assert(transfer_poll(r->t, op));
        ck_assert_ptr_null(transfer_op_layer_event(op, 0));
        for (int g = 0; g < n_groups; g++) {
            ck_assert_int_eq(gc[g].n_run, 1);
            ck_assert_int_eq(gc[g].n_bad, 0);
        }
        ck_assert_int_gt(gc[0].n_last_pending, 0); /* group 0 was read while group 2 was copied */
        for (int i = 0; i < n; i++)
            ck_assert(!memcmp(block_ptr(r, pairs[i].block), slot_ptr(r, pairs[i].slot), BLOCK));
        fake_backend_stats st = fake_backend_get_stats(r->be);
        ck_assert_int_eq(st.n_copy_calls[BACKEND_STREAM_LOAD], n_groups * (with_2d ? n_runs : n));
        ck_assert_uint_eq(st.copy_bytes[BACKEND_STREAM_LOAD], (size_t)n * BLOCK);
        transfer_stats ts = transfer_get_stats(r->t);
        ck_assert_uint_eq(ts.n_layered_loads, 1);
        ck_assert_uint_eq(ts.n_loads, 1);
        ck_assert_uint_eq(ts.load_bytes, (size_t)n * BLOCK);
        transfer_op_free(r->t, op);
        rig_free(r);
    }
}
END_TEST

/* More groups than layers: one per layer; one group: a plain load (its event for every layer). */
START_TEST(layered_load_group_count_is_clamped) {
    rig *r = rig_new();
    transfer_op *op = transfer_load_layers(r->t, (transfer_pair[]){{0, 0}}, 1, NULL, LAYERS, 64);
    ck_assert_int_eq(transfer_op_n_copies(op), LAYERS);
    ck_assert(transfer_poll(r->t, op));
    transfer_op_free(r->t, op);
    int hold = fake_backend_hold(r->be, BACKEND_STREAM_LOAD);
    op = transfer_load_layers(r->t, (transfer_pair[]){{1, 1}}, 1, NULL, LAYERS, 1);
    ck_assert_int_eq(transfer_op_n_copies(op), 1);
    ck_assert_ptr_nonnull(transfer_op_layer_event(op, 0));
    ck_assert_ptr_eq(transfer_op_layer_event(op, 0), transfer_op_layer_event(op, LAYERS - 1));
    fake_backend_release(r->be, hold);
    ck_assert(transfer_poll(r->t, op));
    transfer_op_free(r->t, op);
    ck_assert_uint_eq(transfer_get_stats(r->t).n_layered_loads, 1);
    rig_free(r);
}
END_TEST

START_TEST(duplicate_blocks_in_a_load_abort) {
    rig *r = rig_new();
    transfer_load(r->t, (transfer_pair[]){{3, 1}, {3, 2}}, 2, NULL);
}
END_TEST

START_TEST(duplicate_slots_in_a_store_abort) {
    rig *r = rig_new();
    transfer_store(r->t, (transfer_pair[]){{3, 1}, {4, 1}}, 2, NULL);
}
END_TEST

START_TEST(slot_not_ready_aborts) {
    rig *r = rig_new();
    transfer_store(r->t, (transfer_pair[]){{3, N_SLOTS}}, 1, NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("transfer");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, coalesces_runs_adjacent_on_both_sides);
    tcase_add_test(tc, store_then_load_into_other_blocks_round_trips);
    tcase_add_test(tc, cpu_backend_round_trip);
    tcase_add_test(tc, load_into_recycled_block_waits_for_last_reader);
    tcase_add_test(tc, control_load_without_after_races_the_reader);
    tcase_add_test(tc, store_waits_for_the_writing_kernel);
    tcase_add_test(tc, store_pins_its_blocks_until_complete);
    tcase_add_test(tc, free_waits_for_ops_in_flight);
    tcase_add_test(tc, layered_load_orders_each_group_before_its_readers);
    tcase_add_test(tc, layered_load_group_count_is_clamped);
    tcase_add_test_raise_signal(tc, load_into_block_a_store_still_reads_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, store_of_block_being_loaded_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, freeing_an_op_in_flight_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, duplicate_blocks_in_a_load_abort, SIGABRT);
    tcase_add_test_raise_signal(tc, duplicate_slots_in_a_store_abort, SIGABRT);
    tcase_add_test_raise_signal(tc, slot_not_ready_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
