/* The engine's side of the offload tier (offload/tier.h, the only offload/ interface it uses):
 * lookups after GPU prefix hits, loads on the LOAD stream, stores on the STORE stream, and polling
 * of both; the engine never waits for a copy.
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
 * the GPU pool recycles it. A block cannot be pinned once the pool is recycling it,
 * so on_evict works ahead: before blocks are allocated, the LRU blocks that allocation would evict
 * are stored first and pinned; they return to the LRU tail (now also in the host tier) when the
 * store completes, and the allocation waits a step rather than recycle a block being read.
 * Each cached block is offered once per stay in the LRU (evict_offered, cleared when the block is
 * used again): the host tier may have evicted its copy again by the time the store is done (a
 * batch larger than the free slots evicts its own first blocks), and storing it again on the next
 * try would pin it again, so an allocation needing more blocks than the tier keeps would wait for
 * stores forever (found by test_scheduler_tier_fill: 8 GPU blocks, 4 slots). Offered once, the
 * wait is bounded by the blocks in the LRU, and the allocation then recycles them unstored. */
#include <stdlib.h>

#include "offload/disk_store.h"
#include "offload/host_tier.h"
#include "offload/redis_store.h"
#include "server/engine/kv_events.h"
#include "server/engine/scheduler_internal.h"

typedef struct sched_tier {
    block_hash *pend_h; /* reuse_gated stores of GPU hits, queued at the next flush */
    int32_t *pend_b;
    int n_pending, pending_cap;
    kv_tier_load *layered;       /* a layered load queued in this step, until its forward */
    backend_event **layer_ready; /* [n_layers] its events, for that forward */
    bool *evict_offered;         /* [n_blocks] on_evict store tried since the block was used */
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

static void tier_done(void *user, kv_tier_dir dir, size_t bytes, double seconds, bool layered) {
    metrics *m = user;
    (void)layered;
    if (!m) return;
    if (dir == KV_TIER_FETCH_DISK || dir == KV_TIER_FETCH_REMOTE) {
        metrics_store_tier *t = dir == KV_TIER_FETCH_DISK ? &m->disk : &m->remote;
        metrics_histogram_observe(&t->get_latency_seconds, seconds);
    } else if (dir == KV_TIER_STORE) {
        metrics_counter_add(&m->host_stored_bytes, bytes);
    } else {
        metrics_counter_add(&m->host_loaded_bytes, bytes);
        metrics_histogram_observe(&m->host_load_latency_seconds, seconds);
    }
}

static void tier_block_event(void *user, const char *medium, const block_hash *h, bool stored) {
    scheduler *s = user;
    if (stored)
        kv_events_block_stored(s->cfg.events, medium, h, 1, NULL, NULL, s->pool.layout.block_size);
    else
        kv_events_block_removed(s->cfg.events, medium, h, 1);
}

/* The remote store (redis_store.c) on this engine's namespace. */
static kv_block_store *tier_open_remote(scheduler *s, kv_error *err) {
    redis_store_config rc = {.url = s->cfg.offload.remote_url,
                             .timeout_ms = s->cfg.offload.remote_timeout_ms,
                             .block_bytes = s->pool.layout.block_bytes,
                             .ns = s->kv_ns};
    return redis_store_create(&rc, err);
}

/* The stores below the host tier, disk first (nearer, faster), then remote. */
static int tier_open_stores(scheduler *s, kv_block_store **stores, kv_error *err) {
    const offload_config *c = &s->cfg.offload;
    int n = 0;
    if (c->disk_path && *c->disk_path) {
        disk_store_config dc = {.path = c->disk_path,
                                .size_gib = c->disk_size_gib,
                                .block_bytes = s->pool.layout.block_bytes,
                                .ns = s->kv_ns};
        if (!(stores[n] = disk_store_create(&dc, err))) return -1;
        n++;
    }
    if (c->remote_url && *c->remote_url) {
        kv_block_store *r = tier_open_remote(s, err);
        if (!r) {
            for (int i = 0; i < n; i++) stores[i]->ops->destroy(stores[i]);
            return -1;
        }
        stores[n++] = r;
    }
    return n;
}

int sched_tier_init(scheduler *s, kv_error *err) {
    const offload_config *c = &s->cfg.offload;
    bool below = (c->disk_path && *c->disk_path) || (c->remote_url && *c->remote_url);
    /* the stores read into and write from host slots: they need a host tier (a minimal one
     * would hide a config mistake; say so instead) */
    if (below && c->size_gib <= 0)
        return kv_error_set(err, "offload.disk.path and offload.remote.url need the host tier: "
                                 "set offload.size_gib > 0 (blocks pass through host memory)");
    if (s->cfg.offload.size_gib <= 0) return 0;
    kv_tier_pin_hooks pins = {.user = &s->pool, .pin = tier_pin, .unpin = tier_unpin};
    s->tier = host_tier_create(s->model->be, &s->cfg.offload, s->pool.layout.block_bytes,
                               s->pool.layout.n_layers, s->pool.base, s->pool.n_blocks, &pins,
                               tier_done, s->cfg.metrics, err);
    if (!s->tier) return -1;
    kv_block_store *stores[KV_TIER_MAX_STORES];
    int n_stores = tier_open_stores(s, stores, err);
    if (n_stores < 0) {
        s->tier->ops->destroy(s->tier);
        s->tier = NULL;
        return -1;
    }
    host_tier_add_stores(s->tier, stores, n_stores);
    if (s->cfg.events) s->tier->ops->set_block_hook(s->tier, tier_block_event, s);
    s->tier_state = kv_calloc(1, sizeof(sched_tier));
    tier_of(s)->layer_ready =
        kv_calloc((size_t)s->pool.layout.n_layers, sizeof *tier_of(s)->layer_ready);
    tier_of(s)->evict_offered =
        kv_calloc((size_t)s->pool.n_blocks, sizeof *tier_of(s)->evict_offered);
    return 0;
}

void sched_tier_free(scheduler *s) {
    if (!s->tier) return;
    sched_tier *t = tier_of(s);
    s->tier->ops->destroy(s->tier);
    if (s->last_compute) s->model->be->ops->event_free(s->model->be, s->last_compute);
    free(t->pend_h), free(t->pend_b), free(t->layer_ready), free(t->evict_offered), free(t);
    s->tier = NULL;
}

bool sched_tier_busy(const scheduler *s) {
    if (!s->tier) return false;
    if (s->tier->ops->busy(s->tier)) return true;
    for (int i = 0; i < s->running.n; i++)
        if (s->running.v[i]->state == SCHED_REQ_LOADING) return true;
    return false;
}

int sched_tier_soon_free(const scheduler *s) {
    return s->tier ? s->tier->ops->stats(s->tier).n_evict_pinned : 0;
}

void sched_tier_poll(scheduler *s) {
    s->tier->ops->poll(s->tier);
    /* finished loads make their requests runnable */
    for (int i = 0; i < s->running.n; i++) {
        sched_req *r = s->running.v[i];
        int n_ok;
        if (r->state != SCHED_REQ_LOADING || !s->tier->ops->load_poll(s->tier, r->load, &n_ok))
            continue;
        r->load = NULL;
        int limit = (r->load_first + n_ok) * s->pool.layout.block_size;
        if (n_ok < r->load_n && r->n_computed > limit) {
            /* a store failed to give what it had said it held: the rest is recomputed, and not
             * reported as cached */
            int lost = r->n_computed - limit;
            r->n_computed = limit;
            int *from[] = {&r->n_cached_remote, &r->n_cached_disk, &r->n_cached_host};
            for (int k = 0; k < 3 && lost > 0; k++) {
                int d = *from[k] < lost ? *from[k] : lost;
                *from[k] -= d, lost -= d;
            }
        }
        r->state = SCHED_REQ_RUNNING;
    }
}

void sched_tier_abandon(scheduler *s, sched_req *r) {
    s->tier->ops->load_abandon(s->tier, r->load);
    r->load = NULL;
}

int sched_tier_count(const scheduler *s, const sched_req *r, int first_block, int max_blocks,
                     int *by_medium) {
    for (int m = 0; m < KV_TIER_N_MEDIA; m++) by_medium[m] = 0;
    if (!s->tier) return 0;
    return s->tier->ops->lookup(s->tier, r->hashes + first_block, max_blocks, by_medium);
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

void sched_tier_load(scheduler *s, sched_req *r, int first, int n, bool layered) {
    kv_tier_load *ld = s->tier->ops->load(s->tier, r->hashes + first, r->blocks + first, n,
                                          s->last_compute, layered ? s->cfg.load_layer_groups : 1);
    r->load_first = first;
    r->load_n = n;
    if (layered) {
        KV_CHECK(!tier_of(s)->layered);
        tier_of(s)->layered = ld;
    } else {
        r->load = ld;
    }
}

backend_event *const *sched_tier_layer_ready(scheduler *s) {
    sched_tier *t = s->tier ? tier_of(s) : NULL;
    if (!t || !t->layered) return NULL;
    for (int l = 0; l < s->pool.layout.n_layers; l++)
        t->layer_ready[l] = s->tier->ops->load_layer_event(s->tier, t->layered, l);
    /* tracked by the tier until a poll sees it done: the events stay valid until then */
    s->tier->ops->load_abandon(s->tier, t->layered);
    t->layered = NULL;
    return t->layer_ready;
}

/* Queues the pair for the next flush. */
static void tier_pend(scheduler *s, const block_hash *h, int32_t block) {
    sched_tier *t = tier_of(s);
    if (t->n_pending == t->pending_cap) {
        t->pending_cap = t->pending_cap ? 2 * t->pending_cap : 64;
        t->pend_h = kv_realloc(t->pend_h, (size_t)t->pending_cap * sizeof *t->pend_h);
        t->pend_b = kv_realloc(t->pend_b, (size_t)t->pending_cap * sizeof *t->pend_b);
    }
    t->pend_h[t->n_pending] = *h;
    t->pend_b[t->n_pending++] = block;
}

/* Stores every pending block as one op after the last forward (which wrote their blocks). */
static void tier_flush(scheduler *s, bool evict) {
    sched_tier *t = tier_of(s);
    if (t->n_pending == 0) return;
    s->tier->ops->store(s->tier, t->pend_h, t->pend_b, t->n_pending, s->last_compute, evict);
    t->n_pending = 0;
}

void sched_tier_flush(scheduler *s) {
    if (s->tier) tier_flush(s, false);
}

void sched_tier_gpu_hit(scheduler *s, const block_hash *h, int block_id) {
    if (s->tier && s->tier->ops->should_store(s->tier, h, KV_TIER_EVENT_GPU_HIT))
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
            if (s->tier->ops->should_store(s->tier, &r->hashes[b], KV_TIER_EVENT_BLOCK_FULL))
                tier_pend(s, &r->hashes[b], r->blocks[b]);
        if (n_full > r->n_stored) r->n_stored = n_full;
    }
    tier_flush(s, false);
}

void sched_tier_prepare_evict(scheduler *s, int n_blocks) {
    if (!s->tier || s->cfg.offload.policy != OFFLOAD_POLICY_ON_EVICT) return;
    int n = n_blocks - s->pool.n_free;
    if (n <= 0) return;
    /* gpu_hit stores pended in this step are flushed first so both lists do not mix */
    tier_flush(s, false);
    int32_t *ids = kv_malloc((size_t)n * sizeof *ids);
    n = block_pool_lru_peek(&s->pool, n, ids);
    sched_tier *t = tier_of(s);
    for (int i = 0; i < n; i++) {
        const block_hash *h = prefix_cache_block_hash(&s->pc, ids[i]);
        if (!h || t->evict_offered[ids[i]] ||
            !s->tier->ops->should_store(s->tier, h, KV_TIER_EVENT_GPU_EVICT))
            continue;
        t->evict_offered[ids[i]] = true; /* stored or skipped, it is not offered again */
        tier_pend(s, h, ids[i]);
    }
    free(ids);
    tier_flush(s, true); /* pins them: off the LRU until stored */
}

void sched_tier_block_used(scheduler *s, int32_t block_id) {
    if (s->tier) tier_of(s)->evict_offered[block_id] = false;
}

void scheduler_wait_tier_ready(scheduler *s) {
    if (s->tier) s->tier->ops->wait_ready(s->tier);
}
