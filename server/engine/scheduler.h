/* The engine: one thread that owns the KV block pool, the prefix cache, the host tier and every
 * running request, and runs the loop of DESIGN.md ("Engine loop"): take requests and cancellations,
 * poll transfers, admit within the token budget (GPU prefix hits, host-tier hits, new blocks),
 * build one batch (decode tokens + chunked prefills), forward, store full blocks, sample, emit.
 * Other threads only submit and cancel (server/engine_api.h). Knows nothing of HTTP or text. */
#ifndef KVSERVE_SCHEDULER_H
#define KVSERVE_SCHEDULER_H

#include "model/model.h"
#include "offload/offload.h" /* offload_config: the host tier's config */
#include "offload/tier.h"
#include "server/engine/engine_api.h"
#include "server/metrics.h"

typedef struct scheduler_config {
    int n_gpu_blocks;           /* KV pool size in blocks (> 0) */
    int block_size;             /* tokens per KV block (a power of two) */
    int max_num_seqs;           /* requests running at once */
    int max_num_batched_tokens; /* tokens per step (clamped to the model's max_tokens) */
    int max_model_len;          /* prompt + generated tokens of one request; 0 = the model's */
    int max_queue;              /* requests waiting (not yet admitted once) before BUSY */
    bool enable_prefix_caching;
    uint64_t seed;          /* unseeded sampling (block hashes do not depend on it) */
    offload_config offload; /* size_gib 0 = no host tier */
    /* A prompt served from the host tier while the engine has nothing else to run is loaded in
     * this many layer groups and computed in the same step, layer group g waiting only for its
     * group's copies (scheduler_tier.c). 1 = off: the step waits for the whole load. */
    int load_layer_groups;
    metrics *metrics; /* NULL = none; updated by the engine thread */
    /* KV events (kv_events.h; borrowed, outlives the engine; NULL = none): GPU blocks registered
     * in / dropped from the prefix cache, host-tier and store blocks, one batch per step. */
    struct kv_events *events;
} scheduler_config;

/* block_size 16, max_num_seqs 256, max_num_batched_tokens 8192, max_queue 4096, prefix caching
 * on, seed 0, no tier, 4 load layer groups, no metrics; n_gpu_blocks must still be set. */
void scheduler_config_default(scheduler_config *c);

/* A snapshot of the engine's state (consistent as of the end of the last step). */
typedef struct scheduler_stats {
    int n_running, n_waiting, n_loading; /* loading: waiting for a host-tier load */
    int n_blocks, n_blocks_in_use, n_blocks_cached_free, n_blocks_free;
    int64_t n_steps;
    int64_t prefix_query_tokens, prefix_hit_tokens; /* GPU prefix cache */
    int64_t host_query_tokens, host_hit_tokens;     /* host tier */
    int64_t n_preemptions;
    int64_t n_prompt_tokens, n_generation_tokens;
    int64_t n_finished, n_aborted;
    int64_t n_cow_copies;    /* full-prefix hits served by copying the last cached block */
    int64_t n_layered_loads; /* host-tier loads computed while they ran, by layer groups */
    kv_tier_stats host;      /* zero when there is no tier */
    int n_transfers_inflight;
} scheduler_stats;

typedef struct scheduler scheduler;

/* Creates the engine over a model (borrowed: it must outlive the engine, which calls its forward
 * from the engine thread) with its own KV pool of cfg->n_gpu_blocks blocks. NULL and err set on a
 * bad config (no blocks, zero budget, tier size). No thread yet. */
scheduler *scheduler_create(model *m, const scheduler_config *cfg, kv_error *err);
/* Starts the engine thread. Without it, the caller drives the engine with scheduler_step (tests,
 * benchmarks) from one thread. */
void scheduler_start(scheduler *s);
/* Stops the thread (when started), ends every request with ABORT ("engine shutting down"), waits
 * for transfers, frees everything. */
void scheduler_free(scheduler *s);

/* engine_api.h's submit and cancel, callable from any thread. */
engine_submit_status scheduler_submit(scheduler *s, const engine_request *req, uint64_t *id,
                                      kv_error *err);
void scheduler_cancel(scheduler *s, uint64_t id);
/* The server_engine the HTTP layer takes. */
server_engine scheduler_server_engine(scheduler *s);

/* One engine step on the calling thread (only when the thread was not started). Returns true when
 * the engine still has work (requests or transfers), false when idle. */
bool scheduler_step(scheduler *s);
/* Steps until idle. */
void scheduler_run_until_idle(scheduler *s);

scheduler_stats scheduler_get_stats(scheduler *s);
/* Blocks until the host tier has pinned all its memory (tests, benchmarks; no-op without a tier).
 * Only without the thread. */
void scheduler_wait_tier_ready(scheduler *s);
/* Checks the pool, the prefix cache and the tier against the requests' block lists; aborts on any
 * inconsistency (tests). Only without the thread, or from it. */
void scheduler_check(scheduler *s);
/* The GPU prefix cache (tests: evict, inspect). Only without the thread. */
struct prefix_cache *scheduler_prefix_cache(scheduler *s);

#endif
