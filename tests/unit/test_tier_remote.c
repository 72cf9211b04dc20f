/* The remote tier on a REAL redis-server started here on a free port, stories260K on the CPU
 * backend: a prompt served by engine A (its own model load, GPU pool and host tier) is a remote
 * hit in engine B with the tier-off greedy output; Redis killed while B has a request in flight:
 * every request still completes with the tier-off output (as misses), errors are counted, and a
 * new engine pointed at the dead Redis serves too. Also the URL parser. Skips when there is no
 * redis-server (scripts/install-deps installs it). */
#include <arpa/inet.h>
#include <check.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "offload/redis_store.h"
#include "server/engine/scheduler.h"
#include "tests/unit/tier_test_engine.h"

static char model_dir[1024];
static bool have_model;
static pid_t redis_pid = -1;
static int redis_port;

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t n = sizeof a;
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static bool redis_ping(int port) {
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, (struct timeval){0, 200000});
    bool ok = false;
    if (c && !c->err) {
        redisReply *r = redisCommand(c, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
    }
    if (c) redisFree(c);
    return ok;
}

static void redis_start(void) {
    redis_port = free_port();
    char port[16];
    snprintf(port, sizeof port, "%d", redis_port);
    redis_pid = fork();
    ck_assert_int_ge(redis_pid, 0);
    if (redis_pid == 0) {
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--loglevel", "warning", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100 && !redis_ping(redis_port); i++) usleep(50000);
    ck_assert_msg(redis_ping(redis_port), "redis-server did not start on port %d", redis_port);
}

static void redis_kill(void) {
    if (redis_pid <= 0) return;
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    redis_pid = -1;
}

static void engine_open(engine *e, bool remote) {
    engine_load(e, model_dir);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", redis_port);
    offload_config off = {.size_gib = 4.0 / 1024,
                          .policy = OFFLOAD_POLICY_WRITE_THROUGH,
                          .chunk_bytes = 1 << 20,
                          .remote_url = url,
                          .remote_timeout_ms = 500};
    engine_start(e, remote ? &off : NULL);
}

static void assert_same(const result *a, const result *b, const char *what) {
    ck_assert_msg(b->finish != KV_FINISH_ABORT, "%s: aborted", what);
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

static kv_block_store_stats remote_stats(engine *e) {
    scheduler_step(e->s); /* stats are a snapshot at the end of a step */
    scheduler_stats st = scheduler_get_stats(e->s);
    ck_assert_int_eq(st.host.n_stores, 1);
    ck_assert_str_eq(st.host.store_names[0], "remote");
    return st.host.stores[0];
}

START_TEST(url_parse) {
    redis_url u;
    kv_error err = {{0}};
    ck_assert_int_eq(redis_url_parse("redis://10.0.0.2:6380/3", &u, &err), 0);
    ck_assert_str_eq(u.host, "10.0.0.2");
    ck_assert_int_eq(u.port, 6380);
    ck_assert_int_eq(u.db, 3);
    ck_assert_int_eq(redis_url_parse("redis://cache", &u, &err), 0);
    ck_assert_int_eq(u.port, 6379);
    ck_assert_int_eq(u.db, 0);
    const char *bad[] = {"http://x:1",    "redis://",    "redis://h:0",     "redis://h:99999",
                         "redis://h:12x", "redis://h/x", "redis://h:1/2/3", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err.msg[0] = 0;
        ck_assert_msg(redis_url_parse(bad[i], &u, &err) == -1, "%s accepted", bad[i]);
        ck_assert(strstr(err.msg, "offload.remote.url") != NULL);
    }
}
END_TEST

START_TEST(shared_between_engines_and_survives_redis_death) {
    if (!have_model) return;
    int32_t p1[100], p2[100], p3[100];
    prompt_of(p1, 100, 11);
    prompt_of(p2, 100, 12);
    prompt_of(p3, 100, 13);
    result ref1, ref2, ref3, a, b;
    engine e;
    engine_open(&e, false);
    run(&e, p1, 100, &ref1);
    run(&e, p2, 100, &ref2);
    run(&e, p3, 100, &ref3);
    engine_close(&e);

    redis_start();
    engine ea, eb;
    engine_open(&ea, true);
    run(&ea, p1, 100, &a); /* computes and puts its blocks */
    assert_same(&ref1, &a, "A");
    kv_block_store_stats rs = remote_stats(&ea);
    ck_assert_int_ge(rs.n_put, 6);
    ck_assert_int_eq(rs.n_errors, 0);

    engine_open(&eb, true); /* another engine: its own pools and host tier */
    run(&eb, p1, 100, &b);
    assert_same(&ref1, &b, "B from remote");
    ck_assert_int_eq(b.n_cached_gpu, 0);
    ck_assert_int_eq(b.n_cached_remote, 96);
    rs = remote_stats(&eb);
    ck_assert_int_eq(rs.hits, 6);
    ck_assert_int_eq(rs.n_rejected, 0);
    printf("remote: B loaded 6 blocks from A's puts, %.1f us per GET\n",
           rs.read_seconds / (double)rs.hits * 1e6);

    /* Redis dies while B serves p2 (and A still computes p3 and puts it) */
    submit(&eb, p2, 100, &b);
    scheduler_step(eb.s);
    redis_kill();
    scheduler_run_until_idle(eb.s);
    ck_assert(b.done);
    assert_same(&ref2, &b, "B with Redis killed");
    run(&ea, p3, 100, &a);
    assert_same(&ref3, &a, "A with Redis dead");
    ck_assert_int_eq(a.n_cached_remote, 0);
    rs = remote_stats(&ea);
    ck_assert_int_gt(rs.n_errors, 0);
    printf("remote: after the kill A counts %llu errors, %llu failed puts\n",
           (unsigned long long)rs.n_errors, (unsigned long long)rs.n_put_failed);
    engine_close(&ea);
    engine_close(&eb);

    /* a fresh engine against the dead Redis: misses, the same output */
    engine_open(&e, true);
    run(&e, p1, 100, &b);
    assert_same(&ref1, &b, "new engine, Redis dead");
    ck_assert_int_eq(b.n_cached_remote, 0);
    ck_assert_int_gt(remote_stats(&e).n_errors, 0);
    engine_close(&e);
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
    if (system("command -v redis-server >/dev/null 2>&1") != 0) {
        printf("SKIP: no redis-server (scripts/install-deps installs it)\n");
        return 77;
    }
    signal(SIGPIPE, SIG_IGN); /* a write to the killed Redis */
    Suite *s = suite_create("tier_remote");
    TCase *tc = tcase_create("remote");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, url_parse);
    tcase_add_test(tc, shared_between_engines_and_survives_redis_death);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* the Redis child is killed by this process */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    redis_kill();
    return failed ? 1 : 0;
}
