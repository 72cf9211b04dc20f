/* Host slots for the offload tier: memory of block_bytes per slot, from the backend's host_alloc
 * (pinned on CUDA), obtained in chunks by a background thread so the server serves at once while
 * the tier grows. Owns the chunks and the free list of slots. Knows nothing of hashes or
 * policies (offload/offload) nor of copies (offload/transfer).
 *
 * Threads: host_pool_create/free and every slot function run on the engine thread; only the
 * pinning thread calls host_alloc. New chunks reach the engine through host_pool_grow_poll. */
#ifndef KVSERVE_HOST_POOL_H
#define KVSERVE_HOST_POOL_H

#include "model/backend.h"

typedef struct host_pool host_pool;

/* Start-up logging. Called on the pinning thread after every chunk (done = false) and once when
 * growth ends (done = true: complete, stopped, or host_alloc failed with bytes_ready < total). */
typedef void (*host_pool_progress_fn)(void *user, size_t bytes_ready, size_t bytes_total,
                                      bool done);

#define HOST_POOL_DEFAULT_CHUNK_BYTES ((size_t)256 << 20)

typedef struct host_pool_config {
    size_t total_bytes; /* tier size; 0 turns the tier off (no slots, no thread) */
    size_t block_bytes; /* one slot = one KV block */
    size_t chunk_bytes; /* bytes per host_alloc, rounded down to whole slots; 0: the default */
    host_pool_progress_fn progress; /* may be NULL */
    void *progress_user;
} host_pool_config;

typedef struct host_pool_stats {
    size_t bytes_total; /* slots the tier will have, in bytes */
    size_t bytes_ready; /* slots handed to the engine so far (by host_pool_grow_poll) */
    int n_slots_total;
    int n_slots_ready;
    int n_slots_free;
    bool growing;     /* the pinning thread is still running */
    bool grow_failed; /* host_alloc returned NULL: the tier stays smaller than configured */
} host_pool_stats;

/* Starts the pinning thread (when total_bytes > 0) and returns at once with no usable slot.
 * total_bytes is rounded down to whole slots; a size in (0, block_bytes) or over INT32_MAX
 * slots is a config error (NULL, err set). The backend's host_alloc must be callable from
 * another thread. */
host_pool *host_pool_create(backend *be, const host_pool_config *cfg, kv_error *err);
/* Stops the pinning thread (waits for the host_alloc in progress) and frees every chunk. No copy
 * may still be in flight to or from a slot. */
void host_pool_free(host_pool *hp);
/* Asks the pinning thread to stop after the chunk in progress; returns at once. */
void host_pool_stop_growth(host_pool *hp);
/* Blocks until the pinning thread has ended (tests, benchmarks, --wait-for-tier). */
void host_pool_wait_grown(host_pool *hp);

/* Hands the chunks pinned since the last call to the engine: their slots join the free list in
 * ascending order. Never blocks for long (one mutex). Returns the number of new slots. */
int host_pool_grow_poll(host_pool *hp);

/* --- slots (engine thread) --- */
/* A free slot, or -1 when none is free. Takes `hint` when it is free (callers pass the slot after
 * the one they took last, so consecutive stores land in adjacent slots and coalesce); otherwise
 * the slot freed longest ago. */
int32_t host_pool_slot_alloc(host_pool *hp, int32_t hint);
void host_pool_slot_free(host_pool *hp, int32_t slot);
bool host_pool_slot_is_free(const host_pool *hp, int32_t slot);
/* Host address of a ready slot. */
void *host_pool_slot_ptr(const host_pool *hp, int32_t slot);
/* True when b directly follows a in memory (b == a + 1 in the same chunk): one copy covers both. */
bool host_pool_slots_adjacent(const host_pool *hp, int32_t a, int32_t b);

size_t host_pool_block_bytes(const host_pool *hp);
int host_pool_n_slots_total(const host_pool *hp);
int host_pool_n_slots_ready(const host_pool *hp);
int host_pool_n_slots_free(const host_pool *hp);
int host_pool_slots_per_chunk(const host_pool *hp);
host_pool_stats host_pool_get_stats(host_pool *hp);

#endif
