/* The host tier's loads from a store below it (a real disk store in a temp dir, the fake
 * backend): a load the engine abandons (its request cancelled or preempted while the fetch was
 * in flight, its GPU blocks released and maybe another request's by then) must not copy the
 * fetched block into its GPU block; the block still joins the host tier. And a block whose
 * write down to a store fails is not announced as stored there (KV events). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "offload/disk_store.h"
#include "offload/host_tier.h"
#include "tests/unit/fake_backend.h"

#define BLOCK    4096
#define N_BLOCKS 4

static int pins[N_BLOCKS];

static void on_pin(void *user, int32_t b) {
    (void)user;
    pins[b]++;
}

static void on_unpin(void *user, int32_t b) {
    (void)user;
    pins[b]--;
}

static void poll_until_idle(kv_tier *t) {
    for (int i = 0; i < 10000 && t->ops->busy(t); i++) {
        t->ops->poll(t);
        usleep(1000);
    }
    ck_assert(!t->ops->busy(t));
}

START_TEST(abandoned_fetch_leaves_the_gpu_block_alone) {
    char dir[] = "/tmp/kvserve-host-tier-fetch-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    backend *be = fake_backend_create();
    uint8_t *gpu = calloc(N_BLOCKS, BLOCK);
    block_hash ns, h;
    memset(ns.b, 0x22, sizeof ns.b);
    memset(h.b, 0x11, sizeof h.b);
    kv_error err;
    kv_block_store *ds = disk_store_create(
        &(disk_store_config){
            .path = dir, .size_gib = 0.01, .block_bytes = BLOCK, .ns = ns, .quiet = true},
        &err);
    ck_assert_msg(ds != NULL, "%s", err.msg);
    disk_store_wait_scan(ds);
    uint8_t payload[BLOCK];
    memset(payload, 0xA5, sizeof payload);
    ck_assert(ds->ops->put(ds, &h, payload, BLOCK)); /* no I/O thread yet: ours to call */

    offload_config cfg = {.size_gib = 8.0 * BLOCK / (double)(1 << 30),
                          .policy = OFFLOAD_POLICY_WRITE_THROUGH,
                          .chunk_bytes = 4 * BLOCK};
    kv_tier_pin_hooks hooks = {.pin = on_pin, .unpin = on_unpin};
    kv_tier *t = host_tier_create(be, &cfg, BLOCK, 1, gpu, N_BLOCKS, &hooks, NULL, NULL, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    host_tier_add_stores(t, &ds, 1);
    t->ops->wait_ready(t);

    int by_medium[KV_TIER_N_MEDIA];
    ck_assert_int_eq(t->ops->lookup(t, &h, 1, by_medium), 1);
    ck_assert_int_eq(by_medium[KV_TIER_MEDIUM_DISK], 1);
    int32_t block = 2;
    kv_tier_load *ld = t->ops->load(t, &h, &block, 1, NULL, 1);
    t->ops->load_abandon(t, ld);
    /* the engine released the block: its next owner writes it */
    ck_assert_int_eq(pins[block], 0);
    memset(gpu + (size_t)block * BLOCK, 0x5A, BLOCK);
    poll_until_idle(t);
    for (int i = 0; i < BLOCK; i++)
        ck_assert_msg(gpu[(size_t)block * BLOCK + i] == 0x5A,
                      "byte %d of the released block overwritten by the abandoned load", i);
    for (int b = 0; b < N_BLOCKS; b++) ck_assert_int_eq(pins[b], 0);
    /* the fetched block is in host memory now */
    ck_assert_int_eq(t->ops->lookup(t, &h, 1, by_medium), 1);
    ck_assert_int_eq(by_medium[KV_TIER_MEDIUM_HOST], 1);

    t->ops->destroy(t);
    be->ops->destroy(be);
    free(gpu);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* A store whose every write fails (a full disk, a dead Redis). */
static int failing_contains(kv_block_store *s, const block_hash *h, int n) {
    (void)s, (void)h, (void)n;
    return 0;
}
static bool failing_get(kv_block_store *s, const block_hash *h, void *dst, size_t bytes) {
    (void)s, (void)h, (void)dst, (void)bytes;
    return false;
}
static bool failing_put(kv_block_store *s, const block_hash *h, const void *src, size_t bytes) {
    (void)s, (void)h, (void)src, (void)bytes;
    return false;
}
static kv_block_store_stats failing_stats(kv_block_store *s) {
    (void)s;
    return (kv_block_store_stats){0};
}
static void failing_destroy(kv_block_store *s) {
    free(s);
}
static const kv_block_store_ops failing_ops = {.name = "disk",
                                               .contains = failing_contains,
                                               .get = failing_get,
                                               .put = failing_put,
                                               .stats = failing_stats,
                                               .destroy = failing_destroy};

static int n_events[2]; /* [0] CPU stored, [1] DISK stored */

static void on_block(void *user, const char *medium, const block_hash *h, bool stored) {
    (void)user, (void)h;
    if (stored) n_events[strcmp(medium, "CPU") != 0]++;
}

START_TEST(failed_put_is_not_announced) {
    backend *be = fake_backend_create();
    uint8_t *gpu = calloc(N_BLOCKS, BLOCK);
    kv_block_store *fs = calloc(1, sizeof *fs);
    fs->ops = &failing_ops;
    offload_config cfg = {.size_gib = 8.0 * BLOCK / (double)(1 << 30),
                          .policy = OFFLOAD_POLICY_WRITE_THROUGH,
                          .chunk_bytes = 4 * BLOCK};
    kv_tier_pin_hooks hooks = {.pin = on_pin, .unpin = on_unpin};
    kv_error err;
    kv_tier *t = host_tier_create(be, &cfg, BLOCK, 1, gpu, N_BLOCKS, &hooks, NULL, NULL, &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    host_tier_add_stores(t, &fs, 1);
    t->ops->set_block_hook(t, on_block, NULL);
    t->ops->wait_ready(t);
    block_hash h;
    memset(h.b, 0x33, sizeof h.b);
    int32_t block = 1;
    ck_assert_int_eq(t->ops->store(t, &h, &block, 1, NULL, false), 1);
    poll_until_idle(t);
    ck_assert_int_eq(n_events[0], 1); /* in the host tier */
    ck_assert_int_eq(n_events[1], 0); /* the disk write failed: no DISK BlockStored */
    t->ops->destroy(t);
    be->ops->destroy(be);
    free(gpu);
}
END_TEST

int main(void) {
    Suite *s = suite_create("host_tier_fetch");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, abandoned_fetch_leaves_the_gpu_block_alone);
    tcase_add_test(tc, failed_put_is_not_announced);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
