/* The disk tier under the host tier, on stories260K (CPU backend) with real files in a temp dir:
 * a new engine over the same directory (a restart: new model load, new pools, the index rebuilt
 * by the scan) serves the prompt from disk with the tier-off greedy output; a corrupted and a
 * truncated block file are rejected and counted, never loaded (the output stays the tier-off
 * one); the size limit holds. Also the block header's checks on their own. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvcache/prefix_cache.h"
#include "offload/block_header.h"
#include "offload/disk_store.h"
#include "server/engine/scheduler.h"
#include "tests/unit/tier_test_engine.h"

static char model_dir[1024];
static bool have_model;

static double host_blocks; /* > 0: the host tier of the next engine_open holds this many blocks */

/* disk_dir NULL: no tiers at all (the reference). */
static void engine_open(engine *e, const char *disk_dir, double disk_gib) {
    engine_load(e, model_dir);
    double host_gib = 4.0 / 1024;
    if (host_blocks > 0)
        host_gib = host_blocks * (double)model_kv_layout(e->m, 16).block_bytes * 1.001 /
                   (double)(1ull << 30);
    offload_config off = {.size_gib = host_gib,
                          .policy = OFFLOAD_POLICY_WRITE_THROUGH,
                          .chunk_bytes = 1 << 20,
                          .disk_path = disk_dir,
                          .disk_size_gib = disk_gib};
    engine_start(e, disk_dir ? &off : NULL);
}

static void assert_same(const result *a, const result *b, const char *what) {
    ck_assert_msg(a->n == b->n, "%s: %d vs %d tokens", what, a->n, b->n);
    for (int i = 0; i < a->n; i++)
        ck_assert_msg(a->toks[i] == b->toks[i], "%s: token %d differs", what, i);
}

static void prompt_of(int32_t *t, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = 3 + (int32_t)((seed >> 33) % 500);
    }
}

static scheduler_stats stats_now(engine *e) {
    scheduler_step(e->s); /* the stats are a snapshot taken at the end of a step */
    return scheduler_get_stats(e->s);
}

static kv_block_store_stats disk_stats(engine *e) {
    scheduler_stats st = stats_now(e);
    ck_assert_int_eq(st.host.n_stores, 1);
    ck_assert_str_eq(st.host.store_names[0], "disk");
    return st.host.stores[0];
}

static int count_block_files(const char *dir) {
    int n = 0;
    for (int sub = 0; sub < 256; sub++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%02x", dir, sub);
        DIR *d = opendir(p);
        if (!d) continue;
        for (struct dirent *x; (x = readdir(d));) n += strstr(x->d_name, ".kvb") != NULL;
        closedir(d);
    }
    return n;
}

static void rm_tree(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* The hashes of the prompt's full blocks as the engine computes them. */
static void prompt_hashes(engine *e, const int32_t *prompt, int n, block_hash *out) {
    block_hash ns, root;
    block_hash_namespace(&ns, e->m->fingerprint, 16);
    block_hash_root(&root, &ns, NULL);
    block_hash_chain(&root, prompt, n, 16, out);
}

START_TEST(restart_serves_from_disk) {
    if (!have_model) return;
    char dir[] = "/tmp/kvserve_test_disk_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    int32_t prompt[100];
    prompt_of(prompt, 100, 5);
    result ref, a, b;
    engine e;
    engine_open(&e, NULL, 0);
    run(&e, prompt, 100, &ref);
    engine_close(&e);

    engine_open(&e, dir, 1);
    run(&e, prompt, 100, &a);
    assert_same(&a, &ref, "first run");
    kv_block_store_stats ds = disk_stats(&e);
    /* 6 full prompt blocks + the generated ones that filled up, each written once */
    ck_assert_int_ge(ds.n_put, 6);
    ck_assert_int_eq(ds.n_put_failed, 0);
    engine_close(&e);
    int n_files = count_block_files(dir);
    ck_assert_int_eq(n_files, (int)ds.n_put);

    engine_open(&e, dir, 1); /* a restart: the scan finds the files */
    ds = disk_stats(&e);
    ck_assert_int_eq((int)ds.n_blocks, n_files);
    run(&e, prompt, 100, &b);
    assert_same(&b, &ref, "after restart");
    ck_assert_int_eq(b.n_cached_gpu, 0);
    ck_assert_int_eq(b.n_cached_disk, 96);
    ck_assert_int_eq(b.n_cached_host + b.n_cached_remote, 0);
    ds = disk_stats(&e);
    ck_assert_int_eq(ds.hits, 6);
    ck_assert_int_eq(ds.n_rejected, 0);
    printf("restart: %d files, 6 disk hits, %.1f us per read\n", n_files,
           ds.read_seconds / (double)ds.hits * 1e6);
    engine_close(&e);
    rm_tree(dir);
}
END_TEST

START_TEST(corrupt_and_truncated_files_are_rejected) {
    if (!have_model) return;
    char dir[] = "/tmp/kvserve_test_disk_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    int32_t prompt[100];
    prompt_of(prompt, 100, 9);
    result ref, b;
    engine e;
    engine_open(&e, NULL, 0);
    run(&e, prompt, 100, &ref);
    engine_close(&e);
    engine_open(&e, dir, 1);
    run(&e, prompt, 100, &b);
    block_hash h[6];
    prompt_hashes(&e, prompt, 96, h);
    char corrupt[4200], truncated[4200];
    engine_close(&e);

    /* block 1's payload gets one flipped bit; block 3 loses its last byte */
    {
        disk_store_config dc = {.path = dir, .size_gib = 1, .block_bytes = 1, .quiet = true};
        kv_error err = {{0}};
        kv_block_store *s = disk_store_create(&dc, &err);
        ck_assert_ptr_nonnull(s);
        disk_store_block_path(s, &h[1], corrupt, sizeof corrupt);
        disk_store_block_path(s, &h[3], truncated, sizeof truncated);
        s->ops->destroy(s); /* (its scan finds no file of its own namespace) */
    }
    struct stat st;
    ck_assert_int_eq(stat(corrupt, &st), 0);
    int fd = open(corrupt, O_RDWR);
    ck_assert_int_ge(fd, 0);
    uint8_t byte;
    ck_assert_int_eq(pread(fd, &byte, 1, 4096 + 77), 1);
    byte ^= 0x10;
    ck_assert_int_eq(pwrite(fd, &byte, 1, 4096 + 77), 1);
    close(fd);
    ck_assert_int_eq(stat(truncated, &st), 0);
    ck_assert_int_eq(truncate(truncated, st.st_size - 1), 0);

    engine_open(&e, dir, 1);
    kv_block_store_stats ds = disk_stats(&e);
    ck_assert_int_eq(ds.n_rejected, 1); /* the scan saw the truncated file */
    ck_assert_int_ne(stat(truncated, &st), 0);
    run(&e, prompt, 100, &b);
    assert_same(&b, &ref, "with a corrupt block file");
    ds = disk_stats(&e);
    ck_assert_int_eq(ds.n_rejected, 2); /* and the get the corrupt one */
    /* deleted, then written again (valid) once block 1 was recomputed and entered the host tier;
     * the truncated block 3 the same */
    ck_assert_int_eq(ds.n_put, 2);
    /* block 0 came from disk; the corrupt block 1 ended the run (block 2 was read but not used) */
    ck_assert_int_eq(b.n_cached_disk, 16);
    scheduler_stats ss = stats_now(&e);
    ck_assert_int_eq(ss.host.n_fetch_failed, 1);
    scheduler_check(e.s);
    engine_close(&e);
    rm_tree(dir);
}
END_TEST

START_TEST(size_limit_holds) {
    if (!have_model) return;
    char dir[] = "/tmp/kvserve_test_disk_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    engine e;
    engine_open(&e, dir, 1);
    size_t file_bytes = 4096 + stats_now(&e).host.block_bytes;
    engine_close(&e);
    double gib = 5.5 * (double)file_bytes / (double)(1ull << 30); /* room for 5 files */
    engine_open(&e, dir, gib);
    for (int k = 0; k < 4; k++) {
        int32_t prompt[100];
        prompt_of(prompt, 100, 100 + (uint64_t)k);
        result r;
        run(&e, prompt, 100, &r);
    }
    kv_block_store_stats ds = disk_stats(&e);
    ck_assert_int_ge(ds.n_put, 24);
    ck_assert_int_eq(ds.n_blocks, 5);
    ck_assert_int_le(ds.bytes_used, ds.bytes_limit);
    ck_assert_int_eq(ds.n_evicted, ds.n_put - 5);
    ck_assert_int_eq(count_block_files(dir), 5);
    engine_close(&e);
    /* a restart with a smaller limit trims to it */
    engine_open(&e, dir, 2.5 * (double)file_bytes / (double)(1ull << 30));
    ck_assert_int_eq(disk_stats(&e).n_blocks, 2);
    ck_assert_int_eq(count_block_files(dir), 2);
    engine_close(&e);
    rm_tree(dir);
}
END_TEST

/* A host tier of 16 slots lets 4 put-downs fly at once: the rest of a 12-block prompt waits its
 * turn and every block still reaches the disk. */
START_TEST(put_downs_wait_for_room) {
    if (!have_model) return;
    char dir[] = "/tmp/kvserve_test_disk_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    int32_t prompt[200];
    prompt_of(prompt, 200, 77);
    host_blocks = 16;
    engine e;
    engine_open(&e, dir, 1);
    result r;
    run(&e, prompt, 200, &r);
    scheduler_stats st = stats_now(&e);
    ck_assert_int_eq(st.host.n_puts_skipped, 0);
    ck_assert_int_ge(st.host.stores[0].n_put, 12);
    ck_assert_int_eq(st.host.stores[0].n_put, st.host.stored_bytes / st.host.block_bytes);
    ck_assert_int_eq(st.host.n_io_pending, 0);
    scheduler_check(e.s);
    engine_close(&e);
    host_blocks = 0;
    rm_tree(dir);
}
END_TEST

START_TEST(header_checks) {
    block_hash ns = {{1}}, h = {{2}}, other = {{3}};
    uint8_t payload[300];
    for (int i = 0; i < 300; i++) payload[i] = (uint8_t)(i * 7);
    uint8_t buf[KV_BLOCK_HEADER_BYTES];
    kv_block_header_encode(buf, &ns, &h, payload, sizeof payload);
    kv_block_header hd;
    ck_assert_int_eq(kv_block_header_parse(buf, sizeof buf, &hd), KV_BLOCK_OK);
    ck_assert_int_eq(kv_block_header_expect(&hd, &ns, &h, 300), KV_BLOCK_OK);
    ck_assert_int_eq(kv_block_payload_check(&hd, payload, 300), KV_BLOCK_OK);
    ck_assert_int_eq(kv_block_header_expect(&hd, &other, &h, 300), KV_BLOCK_FOREIGN);
    ck_assert_int_eq(kv_block_header_expect(&hd, &ns, &other, 300), KV_BLOCK_FOREIGN);
    ck_assert_int_eq(kv_block_header_expect(&hd, &ns, &h, 299), KV_BLOCK_FOREIGN);
    ck_assert_int_eq(kv_block_header_parse(buf, sizeof buf - 1, &hd), KV_BLOCK_SHORT);
    payload[299] ^= 1;
    ck_assert_int_eq(kv_block_payload_check(&hd, payload, 300), KV_BLOCK_BAD_SUM);
    for (int i = 8; i < 96; i++) { /* every header byte is covered by its checksum */
        buf[i] ^= 0x40;
        ck_assert_int_eq(kv_block_header_parse(buf, sizeof buf, &hd), KV_BLOCK_BAD_HEADER);
        buf[i] ^= 0x40;
    }
    buf[0] = 'X';
    ck_assert_int_eq(kv_block_header_parse(buf, sizeof buf, &hd), KV_BLOCK_BAD_MAGIC);
}
END_TEST

int main(void) {
    const char *td = getenv("KVSERVE_TESTDATA");
    snprintf(model_dir, sizeof model_dir, "%s/models/stories260K", td ? td : "");
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/model.safetensors", model_dir);
    struct stat sb;
    have_model = td && stat(probe, &sb) == 0;
    if (!have_model) printf("SKIP (engine tests): %s not found\n", probe);
    Suite *s = suite_create("tier_disk");
    TCase *tc = tcase_create("disk");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, header_checks);
    tcase_add_test(tc, restart_serves_from_disk);
    tcase_add_test(tc, corrupt_and_truncated_files_are_rejected);
    tcase_add_test(tc, size_limit_holds);
    tcase_add_test(tc, put_downs_wait_for_room);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
