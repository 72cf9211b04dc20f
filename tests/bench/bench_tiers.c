/* bench_tiers: TTFT of prompts served from the disk tier and from the remote (Redis) tier next to
 * the host tier and recompute, in process, each with its GB/s and the ceiling it is bound by,
 * measured in the same run: the disk's O_DIRECT read rate (a 1 GiB file, 4 MiB reads, and the
 * tier's own pattern: one block file after another), Redis's GET rate on its connection (2 MiB
 * values), the pinned H2D copy rate.
 *
 * For each length: engine A (host tier + disk + remote) computes the prompt (cold) and writes
 * its blocks down; its host hit is timed; then a fresh engine with only the disk tier (its own
 * host tier, so every block comes from the files; O_DIRECT, so not from the page cache) and one
 * with only Redis time the same prompt.
 *
 *   bench_tiers --model DIR [--device cuda|cpu] [--load-format dummy] --disk-path DIR
 *               [--redis-url redis://127.0.0.1:6379] [--lens 10000,100000] [--quick]
 * On the H200: bench_tiers --model tests/bench/models/llama-3.1-8b --load-format dummy
 *   --device cuda --disk-path /tmp/kvserve-bench-disk --redis-url redis://127.0.0.1:6379
 * (start redis-server first, with no maxmemory below the prompt's KV: 12.5 GiB at 100K tokens). */
#include <fcntl.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvcache/prefix_cache.h"
#include "offload/redis_store.h"
#include "tests/bench/bench_util.h"

typedef struct args {
    const char *model, *device, *disk, *redis;
    model_load_format format;
    int lens[8], n_lens;
} args;

/* GB/s of reading a 1 GiB O_DIRECT file in 4 MiB reads (written first, then read back). */
static double disk_rate(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/bench_tiers_rate.tmp", dir);
    size_t chunk = 4u << 20, total = 1u << 30;
    void *buf = aligned_alloc(4096, chunk);
    memset(buf, 7, chunk);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_DIRECT, 0644);
    if (fd < 0) fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0) return 0;
    for (size_t off = 0; off < total; off += chunk)
        if (pwrite(fd, buf, chunk, (off_t)off) != (ssize_t)chunk) break;
    fsync(fd);
    close(fd);
    fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0) fd = open(path, O_RDONLY);
    double t0 = kv_now();
    size_t got = 0;
    for (size_t off = 0; off < total; off += chunk) {
        ssize_t n = pread(fd, buf, chunk, (off_t)off);
        if (n <= 0) break;
        got += (size_t)n;
    }
    double s = kv_now() - t0;
    close(fd);
    unlink(path);
    free(buf);
    return (double)got / s / 1e9;
}

/* GB/s of GET of one 2 MiB value, 64 times, on one connection. */
static double redis_rate(const char *url) {
    redis_url u;
    kv_error err = {{0}};
    if (redis_url_parse(url, &u, &err)) return 0;
    redisContext *c = redisConnect(u.host, u.port);
    if (!c || c->err) return 0;
    size_t n = 2u << 20;
    char *v = malloc(n);
    memset(v, 1, n);
    redisReply *r = redisCommand(c, "SET bench_tiers:rate %b", v, n);
    if (r) freeReplyObject(r);
    double t0 = kv_now();
    size_t got = 0;
    for (int i = 0; i < 64; i++) {
        r = redisCommand(c, "GET bench_tiers:rate");
        if (r && r->type == REDIS_REPLY_STRING) got += r->len;
        if (r) freeReplyObject(r);
    }
    double s = kv_now() - t0;
    r = redisCommand(c, "DEL bench_tiers:rate");
    if (r) freeReplyObject(r);
    redisFree(c);
    free(v);
    return (double)got / s / 1e9;
}

static scheduler *engine(model *m, int n_blocks, double host_gib, const char *disk,
                         const char *redis, int budget) {
    scheduler_config c;
    scheduler_config_default(&c);
    c.n_gpu_blocks = n_blocks;
    c.max_num_batched_tokens = budget;
    c.offload = (offload_config){.size_gib = host_gib,
                                 .policy = OFFLOAD_POLICY_WRITE_THROUGH,
                                 .disk_path = disk,
                                 .disk_size_gib = 2 * host_gib + 1,
                                 .remote_url = redis,
                                 .remote_timeout_ms = 5000};
    kv_error err = {{0}};
    scheduler *s = scheduler_create(m, &c, &err);
    if (!s) {
        fprintf(stderr, "bench_tiers: %s\n", err.msg);
        exit(1);
    }
    scheduler_wait_tier_ready(s); /* pinned, and the disk scanned */
    scheduler_step(s);
    return s;
}

static void parse_lens(args *a, const char *s) {
    a->n_lens = 0;
    for (char *end; *s && a->n_lens < 8; s = *end ? end + 1 : end) {
        a->lens[a->n_lens++] = (int)strtol(s, &end, 10);
        if (end == s) break;
    }
}

int main(int argc, char **argv) {
    args a = {
        .device = "cuda", .format = MODEL_LOAD_SAFETENSORS, .lens = {10000, 100000}, .n_lens = 2};
    static const struct option opts[] = {{"model", 1, 0, 'm'},       {"device", 1, 0, 'd'},
                                         {"load-format", 1, 0, 'f'}, {"disk-path", 1, 0, 'p'},
                                         {"redis-url", 1, 0, 'r'},   {"lens", 1, 0, 'l'},
                                         {"quick", 0, 0, 'q'},       {0, 0, 0, 0}};
    for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        if (o == 'm') a.model = optarg;
        if (o == 'd') a.device = optarg;
        if (o == 'f')
            a.format = strcmp(optarg, "dummy") ? MODEL_LOAD_SAFETENSORS : MODEL_LOAD_DUMMY;
        if (o == 'p') a.disk = optarg;
        if (o == 'r') a.redis = optarg;
        if (o == 'l') parse_lens(&a, optarg);
        if (o == 'q') a.lens[0] = 200, a.lens[1] = 400, a.n_lens = 2;
        if (o == '?') return 2;
    }
    if (!a.model || !a.disk) {
        fprintf(stderr, "usage: bench_tiers --model DIR --disk-path DIR [--redis-url URL] ...\n");
        return 2;
    }
    kv_error err = {{0}};
    backend *be = backend_create(a.device, 0, &err);
    if (!be) {
        fprintf(stderr, "bench_tiers: %s (skipped)\n", err.msg);
        return 77;
    }
    double h2d = bench_pinned_rate(be, true, 5);
    double disk_gbs = disk_rate(a.disk);
    double redis_gbs = a.redis ? redis_rate(a.redis) : 0;
    int max_len = 0;
    for (int i = 0; i < a.n_lens; i++) max_len = a.lens[i] > max_len ? a.lens[i] : max_len;
    int budget = 8192;
    model *m = model_load(a.model, be,
                          &(model_load_options){.format = a.format, .max_tokens = budget}, &err);
    if (!m) {
        fprintf(stderr, "bench_tiers: %s (skipped)\n", err.msg);
        return 77;
    }
    backend_kv_layout l = model_kv_layout(m, 16);
    int n_blocks = max_len / 16 + 64;
    double host_gib = (double)n_blocks * (double)l.block_bytes / (double)(1ull << 30) * 1.1;
    printf("# bench_tiers: %s on %s, %d layers, block %zu bytes\n", a.model, be->name, l.n_layers,
           l.block_bytes);
    printf("ceilings: pinned H2D %.1f GB/s; disk O_DIRECT 4 MiB reads %.2f GB/s (%s); Redis GET "
           "2 MiB %.2f GB/s%s\n\n",
           h2d, disk_gbs, a.disk, redis_gbs, a.redis ? "" : " (no --redis-url)");
    printf("| prompt tokens | recompute TTFT | host TTFT | disk TTFT (GB/s, %% of disk) | remote "
           "TTFT (GB/s, %% of GET) |\n|---|---|---|---|---|\n");
    for (int i = 0; i < a.n_lens; i++) {
        int n = a.lens[i] < m->max_position - 2 ? a.lens[i] : m->max_position - 2;
        int32_t *prompt = kv_malloc((size_t)n * sizeof *prompt);
        bench_fill_random(prompt, n, m->vocab, 1000 + (uint64_t)n);
        bench_probe p = {0};
        scheduler *s = engine(m, n_blocks, host_gib, a.disk, a.redis, budget);
        double cold = bench_ttft(s, prompt, n, NULL, &p);
        scheduler_run_until_idle(s); /* every block down to disk and Redis */
        prefix_cache_reset(scheduler_prefix_cache(s));
        double host = bench_ttft(s, prompt, n, NULL, &p);
        scheduler_free(s);
        double bytes = (double)(n / 16) * (double)l.block_bytes;
        s = engine(m, n_blocks, host_gib, a.disk, NULL, budget);
        double disk = bench_ttft(s, prompt, n, NULL, &p);
        int n_disk = p.n_cached_disk;
        scheduler_run_until_idle(s);
        scheduler_free(s);
        double remote = 0;
        int n_remote = 0;
        if (a.redis) {
            s = engine(m, n_blocks, host_gib, NULL, a.redis, budget);
            remote = bench_ttft(s, prompt, n, NULL, &p);
            n_remote = p.n_cached_remote;
            scheduler_run_until_idle(s);
            scheduler_free(s);
        }
        /* a row is only what it says when the tier served the whole prompt */
        if (n_disk < n / 16 * 16 - 16 || (a.redis && n_remote < n / 16 * 16 - 16))
            printf("(warning: only %d tokens from disk, %d from remote, of %d)\n", n_disk, n_remote,
                   n);
        printf("| %d | %.1f ms | %.1f ms | %.1f ms (%.2f GB/s, %.0f%%) | ", n, cold * 1e3,
               host * 1e3, disk * 1e3, bytes / disk / 1e9, 100 * bytes / disk / 1e9 / disk_gbs);
        if (a.redis)
            printf("%.1f ms (%.2f GB/s, %.0f%%) |\n", remote * 1e3, bytes / remote / 1e9,
                   redis_gbs > 0 ? 100 * bytes / remote / 1e9 / redis_gbs : 0);
        else
            printf("- |\n");
        free(prompt);
    }
    model_free(m);
    backend_destroy(be);
    return 0;
}
