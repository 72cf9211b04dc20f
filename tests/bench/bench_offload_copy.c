/* Offload copy benchmark: the pinned copy rate of the device (16 MiB copies, H2D and D2H), then
 * the rate at which offload/transfer stores and loads N KV blocks of Llama-3.1-8B's block_bytes,
 * with host slots in adjacent order (runs coalesce) and in random order (one copy per block),
 * each as GB/s and as a fraction of the pinned rate measured in the same run.
 *
 *   bench_offload_copy [--device cuda|cpu] [--blocks N] [--batch K] [--reps R]
 *
 * Target (DESIGN.md): loads at >= 90% of the pinned copy rate. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/backend.h"
#include "offload/host_pool.h"
#include "offload/transfer.h"
#include "tests/bench/bench_util.h"

typedef struct bench_args {
    const char *device;
    int n_blocks;
    int batch; /* blocks per transfer op; 0: all in one */
    int reps;
} bench_args;

/* GB/s of moving every block once through the transfer module in ops of `batch` blocks, all queued
 * at once and waited for at the end; median of reps after one warm-up. */
static double transfer_rate(backend *be, transfer *t, const transfer_pair *pairs, int n, int batch,
                            bool load, int reps, size_t block_bytes, int *n_copies) {
    int n_ops = (n + batch - 1) / batch;
    transfer_op **ops = kv_malloc((size_t)n_ops * sizeof *ops);
    double *gbs = kv_malloc((size_t)reps * sizeof *gbs);
    for (int r = -1; r < reps; r++) {
        be->ops->sync(be);
        double t0 = kv_now();
        for (int i = 0; i < n_ops; i++) {
            int first = i * batch, len = n - first < batch ? n - first : batch;
            ops[i] = load ? transfer_load(t, pairs + first, len, NULL)
                          : transfer_store(t, pairs + first, len, NULL);
        }
        for (int i = 0; i < n_ops; i++) transfer_wait(t, ops[i]);
        double dt = kv_now() - t0;
        *n_copies = 0;
        for (int i = 0; i < n_ops; i++) {
            *n_copies += transfer_op_n_copies(ops[i]);
            transfer_op_free(t, ops[i]);
        }
        if (r >= 0) gbs[r] = (double)n * (double)block_bytes / dt / 1e9;
    }
    double rate = bench_median(gbs, reps);
    free(gbs);
    free(ops);
    return rate;
}

static int parse_args(int argc, char **argv, bench_args *a) {
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--device") == 0 && v)
            a->device = v;
        else if (strcmp(argv[i], "--blocks") == 0 && v)
            a->n_blocks = atoi(v);
        else if (strcmp(argv[i], "--batch") == 0 && v)
            a->batch = atoi(v);
        else if (strcmp(argv[i], "--reps") == 0 && v)
            a->reps = atoi(v);
        else {
            fprintf(stderr, "usage: %s [--device cuda|cpu] [--blocks N] [--batch K] [--reps R]\n",
                    argv[0]);
            return -1;
        }
        i++;
    }
    return 0;
}

int main(int argc, char **argv) {
    bench_args a = {.device = backend_cuda_available() ? "cuda" : "cpu", .reps = 5};
    if (parse_args(argc, argv, &a) != 0) return 2;
    if (a.n_blocks <= 0) a.n_blocks = strcmp(a.device, "cuda") == 0 ? 2048 : 256;
    if (a.batch <= 0 || a.batch > a.n_blocks) a.batch = a.n_blocks;
    if (a.reps <= 0) a.reps = 1;
    kv_error err;
    backend *be = backend_create(a.device, 1, &err);
    if (!be) {
        fprintf(stderr, "bench_offload_copy: %s\n", err.msg);
        return 1;
    }
    /* Llama-3.1-8B, 16-token blocks, bf16: 32 x 2 x 8 x 16 x 128 x 2 = 2 MiB */
    backend_kv_layout l = {
        .n_layers = 32, .n_kv_heads = 8, .head_dim = 128, .block_size = 16, .dtype = KV_DTYPE_BF16};
    backend_kv_layout_finish(&l);
    size_t total = (size_t)a.n_blocks * l.block_bytes;

    double h2d = bench_pinned_rate(be, true, a.reps);
    double d2h = bench_pinned_rate(be, false, a.reps);

    double t0 = kv_now();
    host_pool_config hc = {.total_bytes = total, .block_bytes = l.block_bytes};
    host_pool *hp = host_pool_create(be, &hc, &err);
    KV_CHECK(hp != NULL);
    host_pool_wait_grown(hp);
    double pin_s = kv_now() - t0;
    KV_CHECK(host_pool_grow_poll(hp) == a.n_blocks);
    uint8_t *pool = be->ops->dev_alloc(be, total);
    transfer *t = transfer_create(be, hp, pool, a.n_blocks, NULL);

    printf("# offload copy benchmark: device %s, block_bytes %zu (Llama-3.1-8B, 16 tokens, bf16), "
           "%d blocks (%.2f GiB), %d blocks per op, median of %d\n",
           be->name, l.block_bytes, a.n_blocks, (double)total / (1 << 30), a.batch, a.reps);
    printf("# host tier pinned in %.2f s (%.1f GB/s, chunks of %d slots)\n", pin_s,
           (double)total / pin_s / 1e9, host_pool_slots_per_chunk(hp));
    printf("pinned copy 16 MiB:  H2D %6.1f GB/s   D2H %6.1f GB/s\n", h2d, d2h);
    printf("%-6s %-9s %8s %8s %10s\n", "op", "slots", "copies", "GB/s", "vs pinned");

    transfer_pair *pairs = kv_malloc((size_t)a.n_blocks * sizeof *pairs);
    for (int order = 0; order < 2; order++) {
        for (int i = 0; i < a.n_blocks; i++) pairs[i] = (transfer_pair){i, i};
        if (order == 1) { /* random slots: a fixed shuffle */
            uint64_t x = 0x2545f4914f6cdd1dull;
            for (int i = a.n_blocks - 1; i > 0; i--) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                int j = (int)(x % (uint64_t)(i + 1));
                int32_t tmp = pairs[i].slot;
                pairs[i].slot = pairs[j].slot;
                pairs[j].slot = tmp;
            }
        }
        for (int load = 0; load < 2; load++) {
            int n_copies = 0;
            double rate = transfer_rate(be, t, pairs, a.n_blocks, a.batch, load, a.reps,
                                        l.block_bytes, &n_copies);
            printf("%-6s %-9s %8d %8.1f %10.2f\n", load ? "load" : "store",
                   order ? "random" : "adjacent", n_copies, rate, rate / (load ? h2d : d2h));
        }
    }
    free(pairs);
    transfer_free(t);
    be->ops->dev_free(be, pool);
    host_pool_free(hp);
    backend_destroy(be);
    return 0;
}
