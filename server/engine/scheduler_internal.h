/* The engine's private state, shared by scheduler.c (thread, submit/cancel, lifecycle),
 * scheduler_admit.c (scheduling, admission, preemption), scheduler_step.c (batch, forward,
 * sampling, events) and scheduler_tier.c (host-tier lookups, loads and stores). */
#ifndef KVSERVE_SCHEDULER_INTERNAL_H
#define KVSERVE_SCHEDULER_INTERNAL_H

#include <pthread.h>

#include "kvcache/prefix_cache.h"
#include "offload/tier.h"
#include "server/engine/scheduler.h"

/* Rows of prompt logprobs one step may ask for on top of one row per sequence. */
#define SCHED_PROMPT_LP_ROWS 256

typedef enum sched_req_state {
    SCHED_REQ_WAITING, /* queued or preempted: holds no blocks */
    SCHED_REQ_LOADING, /* admitted, blocks held, host-tier loads in flight */
    SCHED_REQ_RUNNING, /* in the running list */
} sched_req_state;

typedef struct sched_req {
    uint64_t id;
    sched_req_state state;
    struct sched_req *next; /* inbox link */

    int32_t *tokens; /* [cap] prompt, then generated tokens */
    int n_prompt, n_tokens, cap;
    int n_computed; /* leading tokens whose K/V are in blocks */

    sampler_params params;
    sampler_state st;
    char *salt;
    engine_event_fn on_event;
    void *user;

    int32_t *blocks; /* [blocks_cap] the sequence's blocks, position p in blocks[p / block_size] */
    int n_blocks, blocks_cap;
    int n_registered;   /* leading blocks already in the prefix cache (or tried) */
    block_hash root;    /* h_{-1} with this request's salt */
    block_hash *hashes; /* [hashes_cap] hashes of full blocks of tokens */
    int n_hashed, hashes_cap;
    int32_t cow_src; /* cached block copied into the last block this step (ref held), or -1 */

    /* host tier (scheduler_tier.c) */
    kv_tier_load *load;     /* in flight while LOADING */
    int load_first, load_n; /* its blocks: [load_first, load_first + load_n) */
    int n_stored;           /* leading full blocks already considered for a store */

    /* reporting */
    bool admitted_once;
    int n_cached_gpu, n_cached_host;    /* prompt tokens served by each cache at first admission */
    int n_cached_disk, n_cached_remote; /* of the host tier's, read from its stores */
    int n_prompt_lp_sent;               /* prompt positions whose logprob event was sent */
    int n_sched;                        /* tokens scheduled in the current step */
} sched_req;

/* A growable list of request pointers (running and waiting lists, in order). */
typedef struct sched_list {
    sched_req **v;
    int n, cap;
} sched_list;

struct scheduler {
    model *model; /* borrowed */
    scheduler_config cfg;
    int budget; /* tokens per step */
    int max_model_len;
    int out_cap; /* logit rows per step */

    block_pool pool;
    prefix_cache pc;
    block_hash kv_ns; /* the KV cache's namespace (block_hash_namespace): roots, disk, remote */
    sampler smp;

    /* offload tier (NULL when off) */
    kv_tier *tier;
    backend_event *last_compute;   /* event after the last forward, NULL before the first */
    struct sched_tier *tier_state; /* ops in flight, pending stores (scheduler_tier.c) */

    /* engine-thread state */
    sched_list running, waiting;
    uint64_t next_id;

    /* step scratch */
    int32_t *b_tokens, *b_positions, *b_seq_start, *b_seq_len, *b_out_rows, *b_table;
    size_t b_table_cap;
    float *logits;      /* [out_cap, vocab] rows of one step */
    bool logits_pinned; /* logits came from the backend's host_alloc */
    sched_req **b_reqs;
    int *b_out_first; /* [seqs] first out row of each sequence */
    sampler_logprobs *lp;

    /* inbox, cancellations, thread */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    sched_req *inbox_head, *inbox_tail;
    uint64_t *cancels;
    int n_cancels, cancels_cap;
    int n_queued; /* submitted and not yet admitted once */
    bool stop;
    bool started;
    bool last_step_ran; /* the last step launched a forward */
    pthread_t thread;

    /* stats (snapshot under stats_lock) */
    scheduler_stats st;
    pthread_mutex_t stats_lock;
    scheduler_stats snap;
};

/* --- lists --- */
void sched_list_push(sched_list *l, sched_req *r);
void sched_list_push_front(sched_list *l, sched_req *r);
void sched_list_remove(sched_list *l, sched_req *r);

/* --- requests (scheduler.c) --- */
int sched_blocks_for(const scheduler *s, int n_tokens);
/* Makes sure hashes cover every full block of the first n_tokens tokens. */
void sched_req_hash_upto(scheduler *s, sched_req *r, int n_tokens);
void sched_req_release_blocks(scheduler *s, sched_req *r);
/* Sends the last event (token may be -1) and frees the request; it must be in no list. */
void sched_req_finish(scheduler *s, sched_req *r, int32_t token, const sampler_logprobs *lp,
                      kv_finish finish, int32_t stop_token, const char *error);

/* --- scheduling (scheduler_admit.c) --- */
/* Decides this step's tokens for running and waiting requests (r->n_sched), allocating blocks,
 * preempting and admitting. Returns the number of scheduled sequences, in s->b_reqs. */
int sched_schedule(scheduler *s);

/* --- the step (scheduler_step.c) --- */
void sched_run_batch(scheduler *s, int n_seqs);

/* --- host tier (scheduler_tier.c) --- */
int sched_tier_init(scheduler *s, kv_error *err);
void sched_tier_free(scheduler *s);
/* Polls loads and stores: finished loads make requests runnable, finished stores mark slots. */
void sched_tier_poll(scheduler *s);
/* Admission's plan: how many blocks from first_block on are in the host tier (a leading run, at
 * most max_blocks). No side effect: nothing is pinned or counted. */
int sched_tier_count(const scheduler *s, const sched_req *r, int first_block, int max_blocks,
                     int *by_medium);
/* True when r, admitted with n_host host-tier blocks, may be computed in this step while its load
 * runs by layer groups: nothing else would run or load meanwhile, and the load is not so large that
 * whole-block copies win (rule in scheduler_tier.c). */
bool sched_tier_can_layer(const scheduler *s, const sched_req *r, int n_host);
/* Queues the load of r's blocks [first, first + n) (counted by sched_tier_count in this step;
 * the tier pins them at once, and stores are only queued at flushes, so nothing evicts them).
 * Layered (sched_tier_can_layer): by layer groups, r runs in this step (the forward waits per
 * group: sched_tier_layer_ready), and the load is tracked by the tier until a poll sees it done;
 * else r is LOADING until then. */
void sched_tier_load(scheduler *s, sched_req *r, int first, int n, bool layered);
/* The per-layer events ([n_layers]) this step's forward must wait for, or NULL when no layered
 * load was queued in this step. Valid until the next poll. */
backend_event *const *sched_tier_layer_ready(scheduler *s);
/* After the step's forward: stores of blocks that became full (per the store policy). */
void sched_tier_store_new(scheduler *s, int n_seqs);
/* Queues the stores pended since the last flush (GPU hits under reuse_gated). */
void sched_tier_flush(scheduler *s);
/* on_evict: stores (and pins until stored) the LRU blocks that allocating n_blocks would recycle
 * and that the tier does not hold yet, each at most once while it stays cached and unused (so
 * that the wait for those stores is bounded: see scheduler_tier.c). */
void sched_tier_prepare_evict(scheduler *s, int n_blocks);
/* Block id was taken from the free list or the LRU (allocated, or a GPU prefix hit): a later
 * eviction of it may be stored again. */
void sched_tier_block_used(scheduler *s, int32_t block_id);
/* Blocks pinned by on_evict stores in flight: available again once those complete. */
int sched_tier_soon_free(const scheduler *s);
/* Hit in the GPU cache (reuse_gated counts it). */
void sched_tier_gpu_hit(scheduler *s, const block_hash *h, int block_id);
bool sched_tier_busy(const scheduler *s);
/* A LOADING request is cancelled or preempted: its load stays tracked until it completes. */
void sched_tier_abandon(scheduler *s, sched_req *r);

#endif
