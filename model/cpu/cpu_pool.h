/* A small pool of worker threads owned by one CPU backend: runs one parallel loop at a time, the
 * calling thread taking part. Work is handed out in chunks from a shared counter, so uneven items
 * (causal attention rows) balance themselves. Knows nothing of tensors. */
#ifndef KVSERVE_CPU_POOL_H
#define KVSERVE_CPU_POOL_H

#include <stdint.h>

typedef struct cpu_pool cpu_pool;

/* Called with a range [begin, end) of items; thread is in [0, n_threads) (0 = the caller), so a
 * callback may use per-thread scratch. */
typedef void (*cpu_pool_fn)(void *ctx, int thread, int64_t begin, int64_t end);

/* n_threads counts the caller; 1 starts no worker. */
cpu_pool *cpu_pool_create(int n_threads);
void cpu_pool_free(cpu_pool *p);
int cpu_pool_n_threads(const cpu_pool *p);

/* Runs fn over [0, n) in chunks of `chunk` items on every thread and returns when all are done.
 * Runs inline when n <= chunk or the pool has one thread. One caller at a time. */
void cpu_pool_for(cpu_pool *p, int64_t n, int64_t chunk, cpu_pool_fn fn, void *ctx);

#endif
