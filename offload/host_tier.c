/* The host tier behind tier.h: the bookkeeping of every copy in flight (which slots a load reads,
 * which slots a store fills, GPU blocks pinned by on_evict stores), so that a slot is marked
 * valid, or unpinned, exactly when a poll sees its copy complete; and the chain to the block
 * stores below (disk, remote) through the I/O thread (store_io).
 *
 * Stores chained below: a lookup that misses host memory asks the stores (in order) for the rest
 * of the run; such a block loads in two stages: a host slot is reserved for it (state storing, so
 * no lookup sees it and no eviction takes it), the I/O thread reads it there, then the usual
 * host -> GPU copy runs; the slot then becomes a valid host-tier slot. A store that fails to give
 * a block it said it held (torn file, Redis gone) ends the load's run there: load_poll says how
 * many leading blocks are in place and the engine recomputes the rest.
 * Blocks go down to the stores when they enter the host tier (write-through below the host tier):
 * when a store into a slot completes, the slot is pinned (a reader) while the I/O thread writes it
 * to every store that lacks it. Writing at entry, not at host eviction, makes a block shared with
 * other servers (remote) and safe from a crash (disk) as soon as it is computed, and never holds
 * up a host-tier eviction behind a disk write; the cost is write bandwidth for blocks that would
 * have stayed in DRAM. A block read from the remote store is also written to the disk store. */
#include "offload/host_tier.h"

#include <stdlib.h>
#include <string.h>

#include "offload/store_io.h"
#include "offload/transfer.h"

/* I/O threads: reads of a long prompt's blocks run this many at once (the disk's queue depth;
 * the remote store serializes on its one connection). */
#define HT_IO_THREADS 4

/* One job of the I/O thread: a fetch of a load, or a put down from a slot. */
typedef struct ht_job {
    store_job job;
    struct kv_tier_load *ld; /* fetch: its load; put: NULL */
    int idx;                 /* fetch: the block's index in the load */
    int32_t slot, block;
    bool done;
} ht_job;

struct kv_tier_load {
    transfer_op *op;  /* blocks in host memory (NULL: none) */
    transfer_op *op2; /* fetched blocks, queued once every fetch is back */
    int32_t *slots;   /* [n_slots] host slots read */
    int n_slots;
    ht_job *fetch; /* [n_fetch] */
    int n_fetch, n_fetch_done;
    bool fetch_finished; /* every fetch back and op2 queued */
    int n, n_ok;         /* blocks asked; leading blocks that will be in place */
    bool layered;
    bool abandoned; /* the engine stopped polling: its GPU blocks may be another's now */
    double t0;
};

typedef struct host_op {
    transfer_op *op;
    block_hash *h; /* [n] hashes of the slots stored (put down once valid) */
    bool evict;    /* an on_evict store */
    double t0;
} host_op;

typedef struct host_tier {
    kv_tier base;
    backend *be;
    offload *o;
    transfer *x;
    size_t block_bytes;
    int n_layers;
    kv_tier_done_fn done;
    void *done_user;
    host_op *ops; /* stores in flight */
    int n_ops, cap;
    kv_tier_load **abandoned; /* loads the engine stopped polling */
    int n_abandoned, cap_abandoned;
    int n_evict_pinned;

    kv_block_store *stores[KV_TIER_MAX_STORES];
    int n_stores;
    store_io *io;
    int n_puts_inflight, max_puts;
    /* put-downs waiting for room in flight: hashes, in order; their slots are not pinned, so
     * one evicted meanwhile is dropped (counted as skipped) */
    block_hash *put_wait;
    int put_wait_head, n_put_wait, cap_put_wait;
    uint64_t store_hits[KV_TIER_MAX_STORES], n_fetch_failed, n_puts_skipped;
    kv_tier_block_fn block_fn; /* KV events */
    void *block_user;
} host_tier;

static host_tier *ht(kv_tier *t) {
    return (host_tier *)t;
}
static const host_tier *htc(const kv_tier *t) {
    return (const host_tier *)t;
}

static int ht_lookup(const kv_tier *t, const block_hash *h, int n, int *by_medium) {
    host_tier *x = (host_tier *)t; /* stores' contains has no side effect */
    int end[KV_TIER_MAX_STORES], asked[KV_TIER_MAX_STORES];
    for (int s = 0; s < x->n_stores; s++) end[s] = asked[s] = -1;
    if (by_medium)
        for (int m = 0; m < KV_TIER_N_MEDIA; m++) by_medium[m] = 0;
    int k = 0;
    while (k < n) {
        int medium = -1;
        if (offload_contains(x->o, h[k].b)) medium = KV_TIER_MEDIUM_HOST;
        /* each store is asked for a leading run once per gap of the ones before */
        for (int s = 0; s < x->n_stores && medium < 0; s++) {
            if (end[s] <= k && asked[s] != k) {
                asked[s] = k;
                end[s] = k + x->stores[s]->ops->contains(x->stores[s], h + k, n - k);
            }
            if (end[s] > k)
                medium = strcmp(x->stores[s]->ops->name, "disk") == 0 ? KV_TIER_MEDIUM_DISK
                                                                      : KV_TIER_MEDIUM_REMOTE;
        }
        if (medium < 0) break;
        if (by_medium) by_medium[medium]++;
        k++;
    }
    return k;
}

static void ht_submit(host_tier *x, ht_job *j, store_job_kind kind, const block_hash *h,
                      int32_t slot, int first_store, int n_stores) {
    j->job = (store_job){.kind = kind,
                         .h = *h,
                         .buf = offload_slot_ptr(x->o, slot),
                         .bytes = x->block_bytes,
                         .n_stores = n_stores,
                         .user = j};
    for (int s = 0; s < n_stores; s++) j->job.stores[s] = x->stores[first_store + s];
    j->slot = slot;
    store_io_submit(x->io, &j->job);
}

static void ht_block_event(host_tier *x, const char *medium, const block_hash *h, bool stored) {
    if (x->block_fn) x->block_fn(x->block_user, medium, h, stored);
}

static void ht_on_evict(void *user, const uint8_t *hash) {
    block_hash h;
    memcpy(h.b, hash, sizeof h.b);
    ht_block_event(user, "CPU", &h, false);
}

static void ht_set_block_hook(kv_tier *t, kv_tier_block_fn fn, void *user) {
    host_tier *x = ht(t);
    x->block_fn = fn;
    x->block_user = user;
    offload_set_evict_hook(x->o, fn ? ht_on_evict : NULL, x);
}

/* Copies a valid slot down to stores [first, n_stores); when too many copies are in flight, the
 * hash waits in put_wait (up to 4x max_puts, then it is skipped). A block read from the remote
 * store (first > 0) goes down at once or never. */
static void ht_put_down(host_tier *x, int32_t slot, const block_hash *h, int first) {
    if (first >= x->n_stores) return;
    if (x->n_puts_inflight >= x->max_puts) {
        if (first != 0 || x->n_put_wait >= 4 * x->max_puts) {
            x->n_puts_skipped++;
            return;
        }
        if (x->n_put_wait == x->cap_put_wait) { /* grow the ring, unrolled to its start */
            int cap = x->cap_put_wait ? 2 * x->cap_put_wait : 64;
            block_hash *v = kv_malloc((size_t)cap * sizeof *v);
            for (int i = 0; i < x->n_put_wait; i++)
                v[i] = x->put_wait[(x->put_wait_head + i) % x->cap_put_wait];
            free(x->put_wait);
            x->put_wait = v, x->cap_put_wait = cap, x->put_wait_head = 0;
        }
        x->put_wait[(x->put_wait_head + x->n_put_wait++) % x->cap_put_wait] = *h;
        return;
    }
    offload_read_begin(x->o, slot); /* no eviction while the I/O thread reads it */
    ht_job *j = kv_calloc(1, sizeof *j);
    ht_submit(x, j, STORE_JOB_PUT, h, slot, first, x->n_stores - first);
    x->n_puts_inflight++;
}

static kv_tier_load *ht_load(kv_tier *t, const block_hash *h, const int32_t *blocks, int n,
                             backend_event *after, int n_groups) {
    host_tier *x = ht(t);
    kv_tier_load *ld = kv_calloc(1, sizeof *ld);
    ld->slots = kv_malloc((size_t)(n > 0 ? n : 1) * sizeof *ld->slots);
    ld->fetch = kv_calloc((size_t)(n > 0 ? n : 1), sizeof *ld->fetch);
    transfer_pair *pairs = kv_malloc((size_t)(n > 0 ? n : 1) * sizeof *pairs);
    bool *in_host = kv_calloc((size_t)(n > 0 ? n : 1), sizeof *in_host);
    ld->n = ld->n_ok = n;
    /* first pin what host memory holds, so that no slot reserved below evicts it */
    for (int i = 0; i < n; i++) {
        if (!(in_host[i] = offload_contains(x->o, h[i].b))) continue;
        int32_t slot = offload_lookup(x->o, h[i].b);
        offload_load_begin(x->o, slot);
        pairs[ld->n_slots] = (transfer_pair){blocks[i], slot};
        ld->slots[ld->n_slots++] = slot;
    }
    for (int i = 0; i < n && x->n_stores > 0; i++) {
        if (in_host[i]) continue;
        int32_t slot = offload_store_begin(x->o, h[i].b);
        if (slot < 0) { /* no room (or the hash is being stored): the run ends here */
            ld->n_ok = i;
            x->n_fetch_failed++;
            break;
        }
        ht_job *j = &ld->fetch[ld->n_fetch++];
        j->ld = ld;
        j->idx = i;
        j->block = blocks[i];
        ht_submit(x, j, STORE_JOB_GET, &h[i], slot, 0, x->n_stores);
    }
    /* lookup said every block is present: without stores each one is in host memory */
    KV_CHECK(x->n_stores > 0 || ld->n_slots == n);
    KV_CHECK(n_groups <= 1 || ld->n_fetch == 0); /* layered loads: host blocks only */
    if (ld->n_fetch > 0 && after) /* the fetched blocks' copy, queued later, waits for it too */
        x->be->ops->event_wait(x->be, BACKEND_STREAM_LOAD, after);
    ld->fetch_finished = ld->n_fetch == 0;
    ld->layered = n_groups > 1;
    ld->t0 = kv_now();
    if (ld->n_slots > 0)
        ld->op = ld->layered
                     ? transfer_load_layers(x->x, pairs, ld->n_slots, after, x->n_layers, n_groups)
                     : transfer_load(x->x, pairs, ld->n_slots, after);
    free(pairs);
    free(in_host);
    return ld;
}

static backend_event *ht_load_layer_event(kv_tier *t, kv_tier_load *ld, int layer) {
    (void)t;
    return transfer_op_layer_event(ld->op, layer);
}

/* Every fetch is back: the failed ones end the run, the others' copy is queued. */
static void ht_load_fetched(host_tier *x, kv_tier_load *ld) {
    for (int i = 0; i < ld->n_fetch; i++)
        if (ld->fetch[i].job.served_by < 0 && ld->fetch[i].idx < ld->n_ok) {
            ld->n_ok = ld->fetch[i].idx;
            x->n_fetch_failed++;
        }
    transfer_pair *pairs = kv_malloc((size_t)(ld->n_fetch + 1) * sizeof *pairs);
    int k = 0;
    for (int i = 0; i < ld->n_fetch; i++) {
        ht_job *j = &ld->fetch[i];
        if (j->job.served_by < 0)
            offload_store_abort(x->o, j->slot);
        else if (j->idx < ld->n_ok && !ld->abandoned)
            pairs[k++] = (transfer_pair){j->block, j->slot};
    }
    /* an abandoned load's GPU blocks were released (and not pinned: only a queued copy pins its
     * blocks) when the engine gave it up, so they may hold another request's KV by now: the
     * fetched blocks only join host memory */
    /* the LOAD stream waited for the load's `after` when it was queued */
    if (k > 0) ld->op2 = transfer_load(x->x, pairs, k, NULL);
    free(pairs);
    ld->fetch_finished = true;
}

/* True once every stage of the load is complete. */
static bool ht_load_step(host_tier *x, kv_tier_load *ld) {
    if (!ld->fetch_finished) {
        if (ld->n_fetch_done < ld->n_fetch) return false;
        ht_load_fetched(x, ld);
    }
    if (ld->op && !transfer_poll(x->x, ld->op)) return false;
    if (ld->op2 && !transfer_poll(x->x, ld->op2)) return false;
    return true;
}

/* A completed load: slots marked (fetched ones join the host tier), callback told, freed. */
static void ht_load_finish(host_tier *x, kv_tier_load *ld) {
    for (int i = 0; i < ld->n_slots; i++) offload_load_done(x->o, ld->slots[i]);
    for (int i = 0; i < ld->n_fetch; i++) {
        ht_job *j = &ld->fetch[i];
        if (j->job.served_by < 0) continue;
        offload_store_done(x->o, j->slot);
        ht_block_event(x, "CPU", &j->job.h, true);
        x->store_hits[j->job.served_by]++;
        ht_put_down(x, j->slot, &j->job.h, 0); /* the stores before it lack it */
    }
    if (x->done)
        x->done(x->done_user, KV_TIER_LOAD, (size_t)ld->n_ok * x->block_bytes, kv_now() - ld->t0,
                ld->layered);
    if (ld->op) transfer_op_free(x->x, ld->op);
    if (ld->op2) transfer_op_free(x->x, ld->op2);
    free(ld->slots);
    free(ld->fetch);
    free(ld);
}

/* Submits waiting put-downs while there is room in flight. */
static void ht_put_resume(host_tier *x) {
    while (x->n_put_wait > 0 && x->n_puts_inflight < x->max_puts) {
        block_hash h = x->put_wait[x->put_wait_head];
        x->put_wait_head = (x->put_wait_head + 1) % x->cap_put_wait;
        x->n_put_wait--;
        int32_t slot = offload_valid_slot(x->o, h.b);
        if (slot < 0)
            x->n_puts_skipped++; /* evicted from host memory before its turn */
        else
            ht_put_down(x, slot, &h, 0);
    }
}

/* Takes the I/O thread's completed jobs: fetches marked, puts unpinned; then waiting put-downs
 * take the room freed. */
static void ht_io_poll(host_tier *x) {
    if (!x->io) return;
    for (store_job *sj = store_io_poll(x->io), *next; sj; sj = next) {
        next = sj->next;
        ht_job *j = sj->user;
        if (sj->kind == STORE_JOB_GET) {
            j->done = true;
            j->ld->n_fetch_done++;
            if (sj->served_by >= 0 && x->done) {
                bool disk = strcmp(sj->stores[sj->served_by]->ops->name, "disk") == 0;
                x->done(x->done_user, disk ? KV_TIER_FETCH_DISK : KV_TIER_FETCH_REMOTE,
                        x->block_bytes, sj->seconds, false);
            }
        } else {
            offload_read_end(x->o, j->slot);
            for (int s = 0; s < sj->n_stores; s++) /* present, or written now: not a failed put */
                if (sj->put_ok[s])
                    ht_block_event(x, strcmp(sj->stores[s]->ops->name, "disk") ? "REMOTE" : "DISK",
                                   &sj->h, true);
            x->n_puts_inflight--;
            free(j);
        }
    }
    ht_put_resume(x);
}

static void ht_op_finish(host_tier *x, host_op *o) {
    int n;
    const transfer_pair *pairs = transfer_op_pairs(o->op, &n);
    for (int i = 0; i < n; i++) offload_store_done(x->o, pairs[i].slot);
    for (int i = 0; i < n; i++) ht_block_event(x, "CPU", &o->h[i], true);
    for (int i = 0; i < n; i++) ht_put_down(x, pairs[i].slot, &o->h[i], 0);
    if (o->evict) x->n_evict_pinned -= n;
    if (x->done)
        x->done(x->done_user, KV_TIER_STORE, (size_t)n * x->block_bytes, kv_now() - o->t0, false);
    transfer_op_free(x->x, o->op);
    free(o->h);
}

static void ht_op_push(host_tier *x, host_op op) {
    if (x->n_ops == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 16;
        x->ops = kv_realloc(x->ops, (size_t)x->cap * sizeof *x->ops);
    }
    x->ops[x->n_ops++] = op;
}

static bool ht_load_poll(kv_tier *t, kv_tier_load *ld, int *n_loaded) {
    host_tier *x = ht(t);
    ht_io_poll(x);
    if (!ht_load_step(x, ld)) return false;
    *n_loaded = ld->n_ok;
    ht_load_finish(x, ld);
    return true;
}

static void ht_load_abandon(kv_tier *t, kv_tier_load *ld) {
    host_tier *x = ht(t);
    ld->abandoned = true;
    if (x->n_abandoned == x->cap_abandoned) {
        x->cap_abandoned = x->cap_abandoned ? 2 * x->cap_abandoned : 8;
        x->abandoned = kv_realloc(x->abandoned, (size_t)x->cap_abandoned * sizeof *x->abandoned);
    }
    x->abandoned[x->n_abandoned++] = ld;
}

static int ht_store(kv_tier *t, const block_hash *h, const int32_t *blocks, int n,
                    backend_event *after, bool evict) {
    host_tier *x = ht(t);
    transfer_pair *pairs = kv_malloc((size_t)(n > 0 ? n : 1) * sizeof *pairs);
    block_hash *hs = kv_malloc((size_t)(n > 0 ? n : 1) * sizeof *hs);
    int k = 0;
    for (int i = 0; i < n; i++) {
        int32_t slot = offload_store_begin(x->o, h[i].b); /* never evicts a loading slot */
        if (slot >= 0) hs[k] = h[i], pairs[k++] = (transfer_pair){blocks[i], slot};
    }
    if (k > 0) {
        transfer_op *op = transfer_store(x->x, pairs, k, after);
        if (evict) x->n_evict_pinned += k;
        ht_op_push(x, (host_op){.op = op, .h = hs, .evict = evict, .t0 = kv_now()});
    } else {
        free(hs);
    }
    free(pairs);
    return k;
}

static bool ht_should_store(kv_tier *t, const block_hash *h, kv_tier_event ev) {
    return offload_should_store(ht(t)->o, h->b, (offload_event)ev);
}

static void ht_poll(kv_tier *t) {
    host_tier *x = ht(t);
    offload_poll(x->o);
    ht_io_poll(x);
    for (int i = 0; i < x->n_ops;) {
        if (!transfer_poll(x->x, x->ops[i].op)) {
            i++;
            continue;
        }
        ht_op_finish(x, &x->ops[i]);
        x->ops[i] = x->ops[--x->n_ops];
    }
    for (int i = 0; i < x->n_abandoned;) {
        if (!ht_load_step(x, x->abandoned[i])) {
            i++;
            continue;
        }
        ht_load_finish(x, x->abandoned[i]);
        x->abandoned[i] = x->abandoned[--x->n_abandoned];
    }
}

static bool ht_busy(const kv_tier *t) {
    const host_tier *x = htc(t);
    return x->n_ops > 0 || x->n_abandoned > 0 || x->n_put_wait > 0 ||
           (x->io && store_io_pending(x->io) > 0);
}

static kv_tier_stats ht_stats(kv_tier *t) {
    host_tier *x = ht(t);
    offload_stats os = offload_get_stats(x->o);
    transfer_stats ts = transfer_get_stats(x->x);
    kv_tier_stats st = {
        .hits = os.hits,
        .misses = os.misses,
        .stored_bytes = os.stored_bytes,
        .loaded_bytes = os.loaded_bytes,
        .evictions = os.evictions,
        .n_stores_skipped = os.n_stores_skipped,
        .n_slots_total = os.n_slots_total,
        .n_slots_ready = os.n_slots_ready,
        .n_free = os.n_free,
        .n_storing = os.n_storing,
        .n_valid = os.n_valid,
        .n_loading = os.n_loading,
        .block_bytes = os.block_bytes,
        .bytes_total = os.bytes_total,
        .bytes_ready = os.bytes_ready,
        .bytes_used = os.bytes_used,
        .growing = os.growing,
        .n_inflight = ts.n_inflight,
        .n_layered_loads = ts.n_layered_loads,
        .n_evict_pinned = x->n_evict_pinned,
        .n_stores = x->n_stores,
        .n_fetch_failed = x->n_fetch_failed,
        .n_puts_skipped = x->n_puts_skipped,
        .n_io_pending = x->io ? store_io_pending(x->io) : 0,
    };
    for (int s = 0; s < x->n_stores; s++) {
        st.store_names[s] = x->stores[s]->ops->name;
        st.stores[s] = x->stores[s]->ops->stats(x->stores[s]);
        st.store_hits[s] = x->store_hits[s];
    }
    return st;
}

static void ht_wait_ready(kv_tier *t) {
    host_tier *x = ht(t);
    host_pool_wait_grown(offload_host_pool(x->o));
    offload_poll(x->o);
    for (int s = 0; s < x->n_stores; s++)
        if (x->stores[s]->ops->wait_ready) x->stores[s]->ops->wait_ready(x->stores[s]);
}

static void ht_check(const kv_tier *t) {
    offload_check_invariants(htc(t)->o);
}

static void ht_destroy(kv_tier *t) {
    host_tier *x = ht(t);
    for (int i = 0; i < x->n_ops; i++) {
        transfer_wait(x->x, x->ops[i].op);
        ht_op_finish(x, &x->ops[i]); /* may put blocks down: drained below */
    }
    if (x->io) store_io_drain(x->io);
    ht_io_poll(x);
    for (int i = 0; i < x->n_abandoned; i++) {
        kv_tier_load *ld = x->abandoned[i];
        KV_CHECK(ld->fetch_finished || ld->n_fetch_done == ld->n_fetch);
        if (!ld->fetch_finished) ht_load_fetched(x, ld);
        if (ld->op) transfer_wait(x->x, ld->op);
        if (ld->op2) transfer_wait(x->x, ld->op2);
        KV_CHECK(ht_load_step(x, ld));
        ht_load_finish(x, ld);
    }
    while (x->io && (store_io_pending(x->io) > 0 || x->n_put_wait > 0)) {
        store_io_drain(x->io);
        ht_io_poll(x); /* (submits waiting put-downs) */
    }
    store_io_free(x->io);
    for (int s = 0; s < x->n_stores; s++) x->stores[s]->ops->destroy(x->stores[s]);
    transfer_free(x->x);
    offload_free(x->o);
    free(x->ops);
    free(x->abandoned);
    free(x->put_wait);
    free(x);
}

static const kv_tier_ops host_tier_ops = {
    .name = "host",
    .lookup = ht_lookup,
    .load = ht_load,
    .load_layer_event = ht_load_layer_event,
    .load_poll = ht_load_poll,
    .load_abandon = ht_load_abandon,
    .store = ht_store,
    .should_store = ht_should_store,
    .poll = ht_poll,
    .busy = ht_busy,
    .stats = ht_stats,
    .wait_ready = ht_wait_ready,
    .check = ht_check,
    .set_block_hook = ht_set_block_hook,
    .destroy = ht_destroy,
};

kv_tier *host_tier_create(backend *be, const offload_config *cfg, size_t block_bytes, int n_layers,
                          void *gpu_pool, int n_blocks, const kv_tier_pin_hooks *pins,
                          kv_tier_done_fn done, void *done_user, kv_error *err) {
    offload *o = offload_create(be, cfg, block_bytes, NULL, NULL, err);
    if (!o) return NULL;
    host_tier *x = kv_calloc(1, sizeof *x);
    x->base.ops = &host_tier_ops;
    x->be = be;
    x->o = o;
    x->block_bytes = block_bytes;
    x->n_layers = n_layers;
    x->done = done;
    x->done_user = done_user;
    transfer_hooks hooks = {0};
    if (pins) hooks = (transfer_hooks){.user = pins->user, .pin = pins->pin, .unpin = pins->unpin};
    x->x = transfer_create(be, offload_host_pool(o), gpu_pool, n_blocks, &hooks);
    return &x->base;
}

void host_tier_add_stores(kv_tier *t, kv_block_store *const *stores, int n) {
    host_tier *x = ht(t);
    KV_CHECK(x->n_stores == 0 && n >= 0 && n <= KV_TIER_MAX_STORES);
    if (n == 0) return;
    for (int s = 0; s < n; s++) x->stores[s] = stores[s];
    x->n_stores = n;
    x->io = store_io_create(HT_IO_THREADS);
    /* puts in flight pin host slots: at most a quarter of them */
    x->max_puts = host_pool_n_slots_total(offload_host_pool(x->o)) / 4;
    if (x->max_puts < 4) x->max_puts = 4;
}
