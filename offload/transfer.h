/* Asynchronous block copies between the device KV pool and host slots: loads (host -> device) on
 * the LOAD stream, stores (device -> host) on the STORE stream, runs of adjacent blocks coalesced
 * into one copy, one copy_async call per batch, completion by events the engine polls.
 * Owns the in-flight operations and which device blocks they pin; knows nothing of hashes (the
 * engine marks offload slots done when a transfer completes). Engine thread only.
 *
 * Ordering rules (DESIGN.md, "Engine loop"), and how this API keeps them:
 *  1. A load completes before any kernel reads its blocks: the engine schedules the reading step
 *     only after transfer_poll says done, or (a load by layer groups) makes each layer's kernels
 *     wait for transfer_op_layer_event.
 *  2. A load into a recycled block waits for the last kernel that read the old contents: `after`
 *     = the compute event of the last step launched; the LOAD stream waits on it.
 *  3. A store waits for the kernel that wrote the block (`after`, the STORE stream waits on it),
 *     and the block is not recycled until the store completes: every in-flight op pins its blocks
 *     through hooks (block pool ref) and transfer_block_busy; loading into a block that a store
 *     still reads, or storing a block that a load still writes, aborts. */
#ifndef KVSERVE_TRANSFER_H
#define KVSERVE_TRANSFER_H

#include "offload/host_pool.h"

typedef struct transfer transfer;
typedef struct transfer_op transfer_op;

typedef struct transfer_pair {
    int32_t block; /* device block id in the KV pool */
    int32_t slot;  /* host slot */
} transfer_pair;

typedef enum transfer_dir { TRANSFER_LOAD, TRANSFER_STORE } transfer_dir;

/* Called when an op is queued (pin) and when it is seen complete (unpin), once per pair, so the
 * block pool can hold a reference on each block while a copy touches it. Both may be NULL. */
typedef struct transfer_hooks {
    void *user;
    void (*pin)(void *user, int32_t block);
    void (*unpin)(void *user, int32_t block);
} transfer_hooks;

typedef struct transfer_stats {
    uint64_t n_loads, n_stores;             /* ops queued */
    uint64_t n_layered_loads;               /* loads queued by layer groups (of n_loads) */
    uint64_t n_load_copies, n_store_copies; /* copies after coalescing */
    uint64_t load_bytes, store_bytes;       /* queued */
    int n_inflight;
} transfer_stats;

/* gpu_pool: the device KV pool of n_blocks blocks, block b at gpu_pool + b * block_bytes (the
 * host pool's block_bytes). hooks may be NULL. */
transfer *transfer_create(backend *be, host_pool *hp, void *gpu_pool, int n_blocks,
                          const transfer_hooks *hooks);
/* Waits for every op in flight, unpins, frees them (handles still held become invalid). */
void transfer_free(transfer *t);

/* Queues copies of slot -> block (load) or block -> slot (store) for n >= 1 pairs, after the
 * device work recorded by `after` (a COMPUTE event, borrowed: it may be freed on return; NULL only
 * when no step has run on these blocks since they were allocated). Pairs may come in any order;
 * runs with consecutive blocks AND adjacent slots become one copy. A load's blocks must be
 * distinct and a store's slots distinct. Returns a handle owned by the transfer. */
transfer_op *transfer_load(transfer *t, const transfer_pair *pairs, int n, backend_event *after);
transfer_op *transfer_store(transfer *t, const transfer_pair *pairs, int n, backend_event *after);

/* A load (same rules and checks as transfer_load) in layer groups: the blocks' layers
 * [g * n_layers / n_groups, (g + 1) * n_layers / n_groups) of every block, group after group, each
 * group a strided copy per run (copy_2d_async; one copy per block without it) with an event after
 * it. A block is [layer][...] contiguous, so a group's bytes are one range of each block.
 * n_groups is clamped to [1, n_layers]; block_bytes must be a multiple of n_layers. A step may then
 * read the blocks while the load runs if its layer l kernels wait for transfer_op_layer_event. */
transfer_op *transfer_load_layers(transfer *t, const transfer_pair *pairs, int n,
                                  backend_event *after, int n_layers, int n_groups);
/* The event after which layer `layer` of a load's blocks is in place (a load not by groups: its
 * only event), borrowed: valid until a poll sees the op done, so queue the waits on it before the
 * next poll. NULL once the op is seen done. */
backend_event *transfer_op_layer_event(const transfer_op *op, int layer);

/* True once the op's copies have completed; never blocks. The first true unpins its blocks. */
bool transfer_poll(transfer *t, transfer_op *op);
/* Blocks the host until the op is done (shutdown, tests, benchmarks; never the engine loop). */
void transfer_wait(transfer *t, transfer_op *op);
/* Frees a done op's handle. Freeing an op still in flight aborts: the engine keeps it until done
 * even when its request is cancelled, then marks the slots (offload_*_done). */
void transfer_op_free(transfer *t, transfer_op *op);

const transfer_pair *transfer_op_pairs(const transfer_op *op, int *n);
transfer_dir transfer_op_dir(const transfer_op *op);
int transfer_op_n_copies(const transfer_op *op);

/* True while a queued load writes or a queued store reads the block (not yet seen complete by a
 * poll): the block must not be recycled. */
bool transfer_block_busy(const transfer *t, int32_t block);
/* True while a load into the block is in flight: no kernel may read it yet. */
bool transfer_block_loading(const transfer *t, int32_t block);

transfer_stats transfer_get_stats(const transfer *t);

#endif
