/* The host DRAM tier as a kv_tier (offload/tier.h): offload.c's index over host_pool slots, copies
 * by transfer.c, and the block stores chained below it (disk, remote). What the engine sees of it
 * besides tier.h: its config (offload.h), create and add_stores. */
#ifndef KVSERVE_HOST_TIER_H
#define KVSERVE_HOST_TIER_H

#include "offload/offload.h"
#include "offload/tier.h"

/* Holds a reference on a GPU block while a copy touches it (the engine's block pool). */
typedef struct kv_tier_pin_hooks {
    void *user;
    void (*pin)(void *user, int32_t block);
    void (*unpin)(void *user, int32_t block);
} kv_tier_pin_hooks;

/* n_layers: of the KV layout (layer-group loads). gpu_pool: the device KV pool of n_blocks blocks
 * of block_bytes. done may be NULL. NULL and err set on a bad config. A 0-GiB config is an error
 * here: the engine makes no tier then. */
kv_tier *host_tier_create(backend *be, const offload_config *cfg, size_t block_bytes, int n_layers,
                          void *gpu_pool, int n_blocks, const kv_tier_pin_hooks *pins,
                          kv_tier_done_fn done, void *done_user, kv_error *err);
/* Chains block stores below the tier (at most KV_TIER_MAX_STORES, looked up in this order: disk
 * first, then remote) and starts the I/O thread; the tier owns them from now on (destroy). Call
 * once, before any other function. */
void host_tier_add_stores(kv_tier *t, kv_block_store *const *stores, int n);

#endif
