/* The engine's side of the host tier (offload/): lookups after GPU prefix hits, loads on the LOAD
 * stream, stores on the STORE stream, and polling of both; the engine never waits for a copy.
 *
 * Ordering (DESIGN.md): every transfer pins its GPU blocks (a block-pool reference, through the
 * transfer hooks) until a poll sees it complete, so a block is never recycled while a copy touches
 * it. Loads wait (`after`) for the last forward, which is the last kernel that may have read a
 * recycled block; a loading request is not scheduled until its load is seen complete. Stores wait
 * for the forward that wrote their blocks (the last one).
 *
 * Layered loads (TTFT of a prompt served from the host tier): the load of a request admitted when
 * the engine has nothing else (no other request running, loading or waiting) goes by layer groups
 * (transfer_load_layers) and the request is computed in the same step, its layer l kernels
 * waiting on COMPUTE for the copies of l's group, so the forward of the first groups overlaps the
 * copies of the last ones. That step's forward returns when the load is done (the logits wait
 * for every layer), so the engine thread is held for about the load; the rule makes sure no other
 * request could have run meanwhile (one that arrives meanwhile is taken at the next step, at most
 * about a load later): with anyone else about, the request waits LOADING as above and the others
 * run while it loads. The op stays tracked (blocks pinned, slots loading) until a poll sees it
 * done, like an abandoned load.
 *
 * Store policies: write_through stores each block once when it becomes full; reuse_gated when its
 * hash has been used reuse_threshold times (full + GPU hits); on_evict stores a cached block before
 * the GPU pool recycles it. The prefix cache's evict hook cannot pin a block that is mid-recycle,
 * so on_evict works ahead: before blocks are allocated, the LRU blocks that allocation would evict
 * are stored first and pinned; they return to the LRU tail (now also in the host tier) when the
 * store completes, and the allocation waits a step rather than recycle a block being read. */
#include <stdlib.h>

#include "server/engine/scheduler_internal.h"

typedef struct tier_op {
    transfer_op *op;
    int32_t *slots; /* loads: slots read */
    int n_slots;
    bool evict;   /* an on_evict store (its blocks count as soon available) */
    bool layered; /* a layered load (its latency is observed when done) */
    double t0;
} tier_op;

typedef struct sched_tier {
    tier_op *ops; /* stores and abandoned loads in flight */
    int n_ops, cap;
    transfer_pair *pending; /* stores to queue at the next flush */
    int n_pending, pending_cap;
    int n_evict_pinned;          /* blocks held by on_evict stores in flight */
    transfer_op *layered;        /* a layered load queued in this step, until its forward */
    backend_event **layer_ready; /* [n_layers] its events, for that forward */
} sched_tier;

static sched_tier *tier_of(const scheduler *s) {
    return s->tier_state;
}

static void tier_pin(void *user, int32_t block) {
    block_pool_ref(user, block);
}
static void tier_unpin(void *user, int32_t block) {
    block_pool_unref(user, block);
}

int sched_tier_init(scheduler *s, kv_error *err) {
    if (s->cfg.offload.size_gib <= 0) return 0;
    s->tier =
        offload_create(s->model->be, &s->cfg.offload, s->pool.layout.block_bytes, NULL, NULL, err);
    if (!s->tier) return -1;
    transfer_hooks hooks = {.user = &s->pool, .pin = tier_pin, .unpin = tier_unpin};
    s->xfer = transfer_create(s->model->be, offload_host_pool(s->tier), s->pool.base,
                              s->pool.n_blocks, &hooks);
    s->tier_state = kv_calloc(1, sizeof(sched_tier));
    tier_of(s)->layer_ready =
        kv_calloc((size_t)s->pool.layout.n_layers, sizeof *tier_of(s)->layer_ready);
    return 0;
}

static void tier_op_push(sched_tier *t, tier_op op) {
    if (t->n_ops == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 16;
        t->ops = kv_realloc(t->ops, (size_t)t->cap * sizeof *t->ops);
    }
    t->ops[t->n_ops++] = op;
}

/* A completed op: slots marked, counters, handle freed. */
static void tier_op_done(scheduler *s, tier_op *o) {
    sched_tier *t = tier_of(s);
    int n;
    const transfer_pair *pairs = transfer_op_pairs(o->op, &n);
    size_t bytes = (size_t)n * s->pool.layout.block_bytes;
    metrics *m = s->cfg.metrics;
    if (transfer_op_dir(o->op) == TRANSFER_STORE) {
        for (int i = 0; i < n; i++) offload_store_done(s->tier, pairs[i].slot);
        if (o->evict) t->n_evict_pinned -= n;
        if (m) metrics_counter_add(&m->host_stored_bytes, bytes);
    } else {
        for (int i = 0; i < o->n_slots; i++) offload_load_done(s->tier, o->slots[i]);
        if (m) metrics_counter_add(&m->host_loaded_bytes, bytes);
        if (m && o->layered)
            metrics_histogram_observe(&m->host_load_latency_seconds, kv_now() - o->t0);
    }
    transfer_op_free(s->xfer, o->op);
    free(o->slots);
}

void sched_tier_free(scheduler *s) {
    if (!s->tier) return;
    sched_tier *t = tier_of(s);
    for (int i = 0; i < t->n_ops; i++) {
        transfer_wait(s->xfer, t->ops[i].op);
        tier_op_done(s, &t->ops[i]);
    }
    for (int i = 0; i < t->n_pending; i++) offload_store_abort(s->tier, t->pending[i].slot);
    transfer_free(s->xfer);
    offload_free(s->tier);
    if (s->last_compute) s->model->be->ops->event_free(s->model->be, s->last_compute);
    free(t->ops), free(t->pending), free(t->layer_ready), free(t);
    s->tier = NULL;
}

bool sched_tier_busy(const scheduler *s) {
    if (!s->tier) return false;
    if (tier_of(s)->n_ops > 0) return true;
    for (int i = 0; i < s->running.n; i++)
        if (s->running.v[i]->state == SCHED_REQ_LOADING) return true;
    return false;
}

int sched_tier_soon_free(const scheduler *s) {
    return s->tier ? tier_of(s)->n_evict_pinned : 0;
}

void sched_tier_poll(scheduler *s) {
    sched_tier *t = tier_of(s);
    offload_poll(s->tier);
    for (int i = 0; i < t->n_ops;) {
        if (!transfer_poll(s->xfer, t->ops[i].op)) {
            i++;
            continue;
        }
        tier_op_done(s, &t->ops[i]);
        t->ops[i] = t->ops[--t->n_ops];
    }
    /* finished loads make their requests runnable */
    for (int i = 0; i < s->running.n; i++) {
        sched_req *r = s->running.v[i];
        if (r->state != SCHED_REQ_LOADING || !transfer_poll(s->xfer, r->load_op)) continue;
        tier_op o = {.op = r->load_op, .slots = r->load_slots, .n_slots = r->n_load};
        if (s->cfg.metrics)
            metrics_histogram_observe(&s->cfg.metrics->host_load_latency_seconds,
                                      kv_now() - r->load_t0);
        tier_op_done(s, &o);
        r->load_op = NULL;
        r->load_slots = NULL;
        r->n_load = 0;
        r->state = SCHED_REQ_RUNNING;
    }
}

void sched_tier_abandon(scheduler *s, sched_req *r) {
    tier_op_push(tier_of(s), (tier_op){.op = r->load_op,
                                       .slots = r->load_slots,
                                       .n_slots = r->n_load,
                                       .t0 = r->load_t0});
    r->load_op = NULL;
    r->load_slots = NULL;
    r->n_load = 0;
}

int sched_tier_count(const scheduler *s, const sched_req *r, int first_block, int max_blocks) {
    if (!s->tier) return 0;
    int n = 0;
    while (n < max_blocks && offload_contains(s->tier, r->hashes[first_block + n].b)) n++;
    return n;
}

void sched_tier_pin(scheduler *s, sched_req *r, int first_block, int n, int32_t *slots) {
    for (int i = 0; i < n; i++) {
        int32_t slot = offload_lookup(s->tier, r->hashes[first_block + i].b);
        KV_CHECK(slot >= 0); /* counted by sched_tier_count with nothing stored since */
        offload_load_begin(s->tier, slot);
        slots[i] = slot;
    }
}

/* Layer groups pay while the one-token forward they overlap (~6 ms for an 8B model) is a fair
 * share of the load; strided group copies (rows of block_bytes / groups) run a little below a
 * whole-block copy, which costs more than the overlap saves on huge loads. Measured on the H100,
 * 8B bf16, 4 groups: 10K tokens 30.9 -> 27.1 ms TTFT, but 100K tokens 252 -> 270 ms; so loads
 * above 4 GiB (32K tokens of Llama-3.1-8B) go whole. */
#define SCHED_LAYERED_MAX_BYTES ((size_t)4 << 30)

bool sched_tier_can_layer(const scheduler *s, const sched_req *r, int n_host) {
    return s->model->ops->forward_layers && s->cfg.load_layer_groups > 1 && s->running.n == 0 &&
           s->waiting.n == 1 && s->waiting.v[0] == r &&
           (size_t)n_host * s->pool.layout.block_bytes <= SCHED_LAYERED_MAX_BYTES;
}

void sched_tier_load(scheduler *s, sched_req *r, int first, int n, const int32_t *slots,
                     bool layered) {
    transfer_pair *pairs = kv_malloc((size_t)n * sizeof *pairs);
    for (int i = 0; i < n; i++) pairs[i] = (transfer_pair){r->blocks[first + i], slots[i]};
    int32_t *own_slots = kv_malloc((size_t)n * sizeof *own_slots);
    memcpy(own_slots, slots, (size_t)n * sizeof *slots);
    if (layered) {
        sched_tier *t = tier_of(s);
        KV_CHECK(!t->layered);
        t->layered = transfer_load_layers(s->xfer, pairs, n, s->last_compute,
                                          s->pool.layout.n_layers, s->cfg.load_layer_groups);
        tier_op_push(t, (tier_op){.op = t->layered,
                                  .slots = own_slots,
                                  .n_slots = n,
                                  .layered = true,
                                  .t0 = kv_now()});
    } else {
        r->load_op = transfer_load(s->xfer, pairs, n, s->last_compute);
        r->load_slots = own_slots;
        r->n_load = n;
        r->load_t0 = kv_now();
    }
    free(pairs);
}

backend_event *const *sched_tier_layer_ready(scheduler *s) {
    sched_tier *t = s->tier ? tier_of(s) : NULL;
    if (!t || !t->layered) return NULL;
    for (int l = 0; l < s->pool.layout.n_layers; l++)
        t->layer_ready[l] = transfer_op_layer_event(t->layered, l);
    t->layered = NULL;
    return t->layer_ready;
}

/* Reserves a slot for block's hash and queues the pair for the next flush. */
static void tier_pend(scheduler *s, const block_hash *h, int32_t block) {
    sched_tier *t = tier_of(s);
    int32_t slot = offload_store_begin(s->tier, h->b);
    if (slot < 0) return;
    if (t->n_pending == t->pending_cap) {
        t->pending_cap = t->pending_cap ? 2 * t->pending_cap : 64;
        t->pending = kv_realloc(t->pending, (size_t)t->pending_cap * sizeof *t->pending);
    }
    t->pending[t->n_pending++] = (transfer_pair){block, slot};
}

/* Queues every pending store as one op after the last forward (which wrote their blocks). */
static void tier_flush(scheduler *s, bool evict) {
    sched_tier *t = tier_of(s);
    if (t->n_pending == 0) return;
    transfer_op *op = transfer_store(s->xfer, t->pending, t->n_pending, s->last_compute);
    if (evict) t->n_evict_pinned += t->n_pending;
    tier_op_push(t, (tier_op){.op = op, .evict = evict, .t0 = kv_now()});
    t->n_pending = 0;
}

void sched_tier_flush(scheduler *s) {
    if (s->tier) tier_flush(s, false);
}

void sched_tier_gpu_hit(scheduler *s, const block_hash *h, int block_id) {
    if (s->tier && offload_should_store(s->tier, h->b, OFFLOAD_EVENT_GPU_HIT))
        tier_pend(s, h, block_id);
}

void sched_tier_store_new(scheduler *s, int n_seqs) {
    if (!s->cfg.enable_prefix_caching) return;
    int bs = s->pool.layout.block_size;
    for (int i = 0; i < n_seqs; i++) {
        sched_req *r = s->b_reqs[i];
        int n_full = r->n_computed / bs;
        sched_req_hash_upto(s, r, r->n_computed);
        for (int b = r->n_stored; b < n_full; b++)
            if (offload_should_store(s->tier, r->hashes[b].b, OFFLOAD_EVENT_BLOCK_FULL))
                tier_pend(s, &r->hashes[b], r->blocks[b]);
        if (n_full > r->n_stored) r->n_stored = n_full;
    }
    tier_flush(s, false);
}

void sched_tier_prepare_evict(scheduler *s, int n_blocks) {
    if (!s->tier || s->cfg.offload.policy != OFFLOAD_POLICY_ON_EVICT) return;
    int n = n_blocks - s->pool.n_free;
    int32_t *ids = kv_malloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
    n = block_pool_lru_peek(&s->pool, n, ids);
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        const block_hash *h = prefix_cache_block_hash(&s->pc, id);
        if (h && offload_should_store(s->tier, h->b, OFFLOAD_EVENT_GPU_EVICT)) tier_pend(s, h, id);
    }
    free(ids);
    tier_flush(s, true); /* pins them: off the LRU until stored */
}

void scheduler_wait_tier_ready(scheduler *s) {
    if (!s->tier) return;
    host_pool_wait_grown(offload_host_pool(s->tier));
    offload_poll(s->tier);
}
