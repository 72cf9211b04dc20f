/* One interface for a KV tier below the GPU pool, the way model/backend.h is for compute: the
 * engine knows only this. A tier holds whole blocks by block hash; it moves them into and out of
 * the GPU pool with copies that run beside compute, and it never blocks the engine thread.
 * Implementations: the host tier (host_tier.c: pinned DRAM, offload.c index, transfer.c copies),
 * which chains the block stores below it (offload/block_store.h: disk, remote): a block found
 * only there loads in two stages (the I/O thread reads it into a reserved host slot, then the
 * usual host -> GPU copy), which load_poll hides.
 *
 * Contract (one engine thread calls every function):
 * - lookup is side-effect free: the leading run of hashes present now.
 * - load pins what it reads at once: a block found by lookup in this step can no longer be evicted,
 *   not even by this step's stores, until load_poll has said done. The GPU blocks it writes are
 *   referenced until then, and the copy waits for `after` (the last kernel that may have read
 * them).
 * - store reserves room (evicting least recently used blocks, never loading ones) and copies after
 *   `after` (the kernel that wrote the blocks); the GPU blocks stay referenced until it completes.
 *   What finds no room is skipped and counted.
 * - poll finishes completed copies; it never waits. */
#ifndef KVSERVE_TIER_H
#define KVSERVE_TIER_H

#include "kvcache/block_pool.h"
#include "kvcache/prefix_cache.h"
#include "offload/block_store.h"

/* Where a block found by lookup lies: what usage and metrics report per medium. */
typedef enum kv_tier_medium {
    KV_TIER_MEDIUM_HOST,   /* host DRAM: copied at once */
    KV_TIER_MEDIUM_DISK,   /* read by the I/O thread first */
    KV_TIER_MEDIUM_REMOTE, /* the same, from the remote store */
    KV_TIER_N_MEDIA,
} kv_tier_medium;

#define KV_TIER_MAX_STORES 2

typedef struct kv_tier kv_tier;
typedef struct kv_tier_load kv_tier_load;

typedef struct kv_tier_stats {
    uint64_t hits;             /* blocks found by loads */
    uint64_t misses;           /* reserved (lookups are side-effect free) */
    uint64_t stored_bytes;     /* completed stores */
    uint64_t loaded_bytes;     /* completed loads */
    uint64_t evictions;        /* blocks dropped to make room */
    uint64_t n_stores_skipped; /* stores that found no room (everything storing or loading) */
    int n_slots_total;         /* configured */
    int n_slots_ready;         /* usable so far */
    int n_free, n_storing, n_valid, n_loading;
    size_t block_bytes;
    size_t bytes_total, bytes_ready, bytes_used;
    bool growing; /* room still being prepared (pinning) */
    /* copies */
    int n_inflight;           /* loads and stores not yet seen complete */
    uint64_t n_layered_loads; /* loads queued by layer groups */
    int n_evict_pinned;       /* GPU blocks held by on_evict stores in flight */
    /* the stores below (disk, remote), in lookup order */
    int n_stores;
    const char *store_names[KV_TIER_MAX_STORES];
    kv_block_store_stats stores[KV_TIER_MAX_STORES];
    uint64_t store_hits[KV_TIER_MAX_STORES]; /* blocks loaded from each */
    uint64_t n_fetch_failed; /* blocks a store said it had but could not give (recomputed) */
    uint64_t n_puts_skipped; /* copies down to the stores dropped: too many in flight */
    int n_io_pending;        /* I/O thread jobs not yet seen complete */
} kv_tier_stats;

/* Told about each completed copy (metrics): bytes moved, seconds since it was queued. */
typedef enum kv_tier_dir {
    KV_TIER_LOAD,         /* host -> GPU */
    KV_TIER_STORE,        /* GPU -> host */
    KV_TIER_FETCH_DISK,   /* one block from the disk store into host memory */
    KV_TIER_FETCH_REMOTE, /* the same from the remote store */
} kv_tier_dir;
typedef void (*kv_tier_done_fn)(void *user, kv_tier_dir dir, size_t bytes, double seconds,
                                bool layered);

/* What the engine saw happen to a GPU block (the store policy's input). */
typedef enum kv_tier_event {
    KV_TIER_EVENT_BLOCK_FULL, /* the block's last token was computed */
    KV_TIER_EVENT_GPU_HIT,    /* a request reused it from the GPU prefix cache */
    KV_TIER_EVENT_GPU_EVICT,  /* the GPU prefix cache is about to recycle it */
} kv_tier_event;

/* Told when a block enters or leaves a medium of the tier (KV events): medium is "CPU" (host
 * DRAM) or "DISK"/"REMOTE" (a store below; stored only: store evictions are not reported). */
typedef void (*kv_tier_block_fn)(void *user, const char *medium, const block_hash *h, bool stored);

typedef struct kv_tier_ops {
    const char *name;
    /* How many of h[0..n) are present, as a leading run. No side effect. by_medium (NULL or
     * [KV_TIER_N_MEDIA]) gets how many of the run lie in each medium. */
    int (*lookup)(const kv_tier *t, const block_hash *h, int n, int *by_medium);
    /* Loads h[0..n) (all present: lookup said so in this step) into blocks[0..n). n_groups > 1:
     * by layer groups, load_layer_event then gives each layer's event; only when every block is
     * in host memory (lookup's by_medium). Never NULL. */
    kv_tier_load *(*load)(kv_tier *t, const block_hash *h, const int32_t *blocks, int n,
                          backend_event *after, int n_groups);
    backend_event *(*load_layer_event)(kv_tier *t, kv_tier_load *ld, int layer);
    /* True once the load is complete; the handle is then freed. *n_loaded: the leading blocks
     * now in place, n unless a store failed to give a block it had said it held (a torn file, a
     * Redis gone): the caller recomputes the rest. Never blocks. */
    bool (*load_poll)(kv_tier *t, kv_tier_load *ld, int *n_loaded);
    /* The caller stops polling it; the tier finishes it (blocks stay pinned until then). */
    void (*load_abandon)(kv_tier *t, kv_tier_load *ld);
    /* Stores the blocks not present yet, after `after`. evict: on_evict stores (their GPU blocks
     * count in n_evict_pinned until done). Returns how many were queued. */
    int (*store)(kv_tier *t, const block_hash *h, const int32_t *blocks, int n,
                 backend_event *after, bool evict);
    /* The store policy: should the block with this hash be stored now, after what the engine saw
     * (kv_tier_event)? False when present or being stored. (The host tier's policies live in
     * offload.c today; they move to one tier-agnostic module with the next tier.) */
    bool (*should_store)(kv_tier *t, const block_hash *h, kv_tier_event ev);
    void (*poll)(kv_tier *t);
    /* Copies in flight (stores or abandoned loads; loads held by the caller not counted). */
    bool (*busy)(const kv_tier *t);
    kv_tier_stats (*stats)(kv_tier *t);
    /* Waits until all room is prepared (tests, benchmarks). */
    void (*wait_ready)(kv_tier *t);
    /* Aborts on any inconsistency (tests). */
    void (*check)(const kv_tier *t);
    /* Optional: installs the block hook (NULL fn: none). */
    void (*set_block_hook)(kv_tier *t, kv_tier_block_fn fn, void *user);
    /* Waits for every copy in flight, then frees the tier. */
    void (*destroy)(kv_tier *t);
} kv_tier_ops;

struct kv_tier {
    const kv_tier_ops *ops;
};

#endif
