/* The offload tier's index: block hash -> host slot, slot states, LRU eviction over valid slots,
 * the store policies and the counters behind /metrics. Owns the host_pool. Issues no copies
 * (offload/transfer does) and knows nothing of requests: the engine thread calls every function.
 *
 * Slot life:  free --store_begin--> storing --store_done--> valid <--load_begin/load_done-->
 * loading valid --evicted by a store_begin that finds no free slot--> free Only valid slots with no
 * reader are in the LRU list; storing and loading slots are never evicted. */
#ifndef KVSERVE_OFFLOAD_H
#define KVSERVE_OFFLOAD_H

#include "offload/host_pool.h"

#define OFFLOAD_HASH_BYTES 32 /* SHA-256 block hash from kvcache/prefix_cache */

typedef struct offload offload;

/* When a block is copied to the host tier. */
typedef enum offload_policy {
    OFFLOAD_POLICY_WRITE_THROUGH, /* every block once, when it becomes full (default) */
    OFFLOAD_POLICY_ON_EVICT,      /* when the GPU prefix cache evicts it */
    OFFLOAD_POLICY_REUSE_GATED,   /* once the hash has been reused reuse_threshold times */
} offload_policy;

typedef struct offload_config {
    double size_gib; /* host tier size in GiB; 0 turns the tier off */
    offload_policy policy;
    int reuse_threshold; /* reuse_gated: hits (reuses) before a store; 0 = like write_through */
    size_t chunk_bytes;  /* pinning chunk; 0: HOST_POOL_DEFAULT_CHUNK_BYTES */
    /* the stores below the host tier (the engine makes them; NULL/0 = none) */
    const char *disk_path;  /* disk tier directory */
    double disk_size_gib;   /* its size limit */
    const char *remote_url; /* redis://host:port[/db] */
    int remote_timeout_ms;  /* get/put round trips (contains: a fifth of it); 0 = 1000 */
} offload_config;

/* The policy names in enum order, NULL-terminated ("write_through", "on_evict", "reuse_gated"). */
extern const char *const offload_policy_names[];
/* A policy by name (case-insensitive); false when unknown. */
bool offload_policy_parse(const char *s, offload_policy *out);
const char *offload_policy_name(offload_policy p);

/* What the engine saw happen to a GPU block; offload_should_store turns it into a decision. */
typedef enum offload_event {
    OFFLOAD_EVENT_BLOCK_FULL, /* the block's last token was computed (prefill or decode) */
    OFFLOAD_EVENT_GPU_HIT,    /* a request reused the block from the GPU prefix cache */
    OFFLOAD_EVENT_GPU_EVICT,  /* the GPU prefix cache is about to recycle it (contents intact) */
} offload_event;

typedef struct offload_stats {
    uint64_t hits;             /* offload_lookup found a valid slot */
    uint64_t misses;           /* offload_lookup found none */
    uint64_t stored_bytes;     /* completed stores */
    uint64_t loaded_bytes;     /* completed loads */
    uint64_t evictions;        /* valid slots dropped to make room */
    uint64_t n_stores_skipped; /* store_begin found every slot storing or loading */
    int n_slots_total;         /* configured */
    int n_slots_ready;         /* pinned so far */
    int n_free, n_storing, n_valid, n_loading;
    size_t block_bytes;
    size_t bytes_total, bytes_ready, bytes_used; /* used = valid + loading + storing slots */
    bool growing;                                /* slots still being pinned */
} offload_stats;

/* Creates the tier and starts pinning its memory in the background (see host_pool). block_bytes is
 * the KV layout's. A tier of 0 GiB is valid: every call below then does nothing (should_store is
 * false, lookup misses). NULL and err set on a bad config (negative or too small a size). */
offload *offload_create(backend *be, const offload_config *cfg, size_t block_bytes,
                        host_pool_progress_fn progress, void *progress_user, kv_error *err);
/* No transfer may be in flight. Stops the pinning thread and frees every chunk. */
void offload_free(offload *o);
host_pool *offload_host_pool(offload *o);
/* fn is told the hash of every valid slot evicted to make room (KV events); NULL = nobody. */
void offload_set_evict_hook(offload *o, void (*fn)(void *user, const uint8_t *hash), void *user);
/* Once per engine step: takes the slots pinned since the last call. Returns how many. */
int offload_poll(offload *o);

/* Policy: should the block with this hash be stored now? False when the tier is off, or the hash
 * is already stored or being stored. reuse_gated counts BLOCK_FULL and GPU_HIT as uses of a hash
 * (in a fixed-size table where a colliding hash resets the count) and says yes once
 * uses - 1 >= reuse_threshold; GPU_EVICT then retries a store that found no slot. */
bool offload_should_store(offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES], offload_event ev);

/* Reserves a slot for the hash (state storing) and returns it, or -1 when the hash is already in
 * the tier or every ready slot is storing or loading. Takes a free slot, preferring the one after
 * the previous store's so that a run of stores coalesces; else evicts the least recently used
 * valid slot. The caller queues the copy (transfer_store) and calls offload_store_done when it
 * completes, or offload_store_abort if it never queues it. */
int32_t offload_store_begin(offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES]);
void offload_store_done(offload *o, int32_t slot);
void offload_store_abort(offload *o, int32_t slot);

/* The slot holding this hash's data (valid or already loading), or -1. Counts a hit or a miss and
 * makes the slot most recently used. Lookups never return storing slots. */
int32_t offload_lookup(offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES]);
/* The valid (or loading) slot holding this hash, or -1; no counting, no LRU touch. */
int32_t offload_valid_slot(const offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES]);
/* Same without counting or touching (checks, /metrics). */
bool offload_contains(const offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES]);
/* Pins a slot found by offload_lookup in this same engine step while a load reads it (any number
 * of readers); offload_load_done unpins it when that load completes. */
void offload_load_begin(offload *o, int32_t slot);
void offload_load_done(offload *o, int32_t slot);
/* The same pin for a reader that is not a load (a block store's put copying the slot down to
 * disk or Redis): not counted in loaded_bytes. The slot counts as loading meanwhile. */
void offload_read_begin(offload *o, int32_t slot);
void offload_read_end(offload *o, int32_t slot);

void *offload_slot_ptr(const offload *o, int32_t slot);
offload_stats offload_get_stats(offload *o);
/* Walks every list and table and aborts on any inconsistency (tests). */
void offload_check_invariants(const offload *o);

#endif
