/* The host tier's loads from a store below it (a real disk store in a temp dir, the fake
 * backend): a load the engine abandons (its request cancelled or preempted while the fetch was
 * in flight, its GPU blocks released and maybe another request's by then) must not copy the
 * fetched block into its GPU block; the block still joins the host tier. */
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

int main(void) {
    Suite *s = suite_create("host_tier_fetch");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, abandoned_fetch_leaves_the_gpu_block_alone);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
