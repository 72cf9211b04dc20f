/* The host tier behind tier.h: the bookkeeping of every copy in flight (which slots a load reads,
 * which slots a store fills, GPU blocks pinned by on_evict stores), so that a slot is marked
 * valid, or unpinned, exactly when a poll sees its copy complete. */
#include "offload/host_tier.h"

#include <stdlib.h>

#include "offload/transfer.h"

struct kv_tier_load {
    transfer_op *op;
    int32_t *slots; /* [n] slots read */
    int n;
    bool layered;
    double t0;
};

typedef struct host_op {
    transfer_op *op;
    kv_tier_load *load; /* abandoned load, or NULL for a store */
    bool evict;         /* an on_evict store */
    double t0;
} host_op;

typedef struct host_tier {
    kv_tier base;
    offload *o;
    transfer *x;
    size_t block_bytes;
    int n_layers;
    kv_tier_done_fn done;
    void *done_user;
    host_op *ops; /* stores and abandoned loads in flight */
    int n_ops, cap;
    int n_evict_pinned;
} host_tier;

static host_tier *ht(kv_tier *t) {
    return (host_tier *)t;
}
static const host_tier *htc(const kv_tier *t) {
    return (const host_tier *)t;
}

static int ht_lookup(const kv_tier *t, const block_hash *h, int n) {
    int k = 0;
    while (k < n && offload_contains(htc(t)->o, h[k].b)) k++;
    return k;
}

static kv_tier_load *ht_load(kv_tier *t, const block_hash *h, const int32_t *blocks, int n,
                             backend_event *after, int n_groups) {
    host_tier *x = ht(t);
    kv_tier_load *ld = kv_calloc(1, sizeof *ld);
    ld->slots = kv_malloc((size_t)n * sizeof *ld->slots);
    transfer_pair *pairs = kv_malloc((size_t)n * sizeof *pairs);
    for (int i = 0; i < n; i++) { /* pinned here: no later store can evict them */
        int32_t slot = offload_lookup(x->o, h[i].b);
        KV_CHECK(slot >= 0); /* the caller's lookup found it in this step */
        offload_load_begin(x->o, slot);
        ld->slots[i] = slot;
        pairs[i] = (transfer_pair){blocks[i], slot};
    }
    ld->n = n;
    ld->layered = n_groups > 1;
    ld->t0 = kv_now();
    ld->op = ld->layered ? transfer_load_layers(x->x, pairs, n, after, x->n_layers, n_groups)
                         : transfer_load(x->x, pairs, n, after);
    free(pairs);
    return ld;
}

static backend_event *ht_load_layer_event(kv_tier *t, kv_tier_load *ld, int layer) {
    (void)t;
    return transfer_op_layer_event(ld->op, layer);
}

/* A completed load or store: slots marked, callback told, handles freed. */
static void ht_load_finish(host_tier *x, kv_tier_load *ld) {
    for (int i = 0; i < ld->n; i++) offload_load_done(x->o, ld->slots[i]);
    if (x->done)
        x->done(x->done_user, KV_TIER_LOAD, (size_t)ld->n * x->block_bytes, kv_now() - ld->t0,
                ld->layered);
    transfer_op_free(x->x, ld->op);
    free(ld->slots);
    free(ld);
}

static void ht_op_finish(host_tier *x, host_op *o) {
    if (o->load) {
        ht_load_finish(x, o->load);
        return;
    }
    int n;
    const transfer_pair *pairs = transfer_op_pairs(o->op, &n);
    for (int i = 0; i < n; i++) offload_store_done(x->o, pairs[i].slot);
    if (o->evict) x->n_evict_pinned -= n;
    if (x->done)
        x->done(x->done_user, KV_TIER_STORE, (size_t)n * x->block_bytes, kv_now() - o->t0, false);
    transfer_op_free(x->x, o->op);
}

static void ht_op_push(host_tier *x, host_op op) {
    if (x->n_ops == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 16;
        x->ops = kv_realloc(x->ops, (size_t)x->cap * sizeof *x->ops);
    }
    x->ops[x->n_ops++] = op;
}

static bool ht_load_poll(kv_tier *t, kv_tier_load *ld) {
    host_tier *x = ht(t);
    if (!transfer_poll(x->x, ld->op)) return false;
    ht_load_finish(x, ld);
    return true;
}

static void ht_load_abandon(kv_tier *t, kv_tier_load *ld) {
    ht_op_push(ht(t), (host_op){.op = ld->op, .load = ld});
}

static int ht_store(kv_tier *t, const block_hash *h, const int32_t *blocks, int n,
                    backend_event *after, bool evict) {
    host_tier *x = ht(t);
    transfer_pair *pairs = kv_malloc((size_t)(n > 0 ? n : 1) * sizeof *pairs);
    int k = 0;
    for (int i = 0; i < n; i++) {
        int32_t slot = offload_store_begin(x->o, h[i].b); /* never evicts a loading slot */
        if (slot >= 0) pairs[k++] = (transfer_pair){blocks[i], slot};
    }
    if (k > 0) {
        transfer_op *op = transfer_store(x->x, pairs, k, after);
        if (evict) x->n_evict_pinned += k;
        ht_op_push(x, (host_op){.op = op, .evict = evict, .t0 = kv_now()});
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
    for (int i = 0; i < x->n_ops;) {
        if (!transfer_poll(x->x, x->ops[i].op)) {
            i++;
            continue;
        }
        ht_op_finish(x, &x->ops[i]);
        x->ops[i] = x->ops[--x->n_ops];
    }
}

static bool ht_busy(const kv_tier *t) {
    return htc(t)->n_ops > 0;
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
    };
    return st;
}

static void ht_wait_ready(kv_tier *t) {
    host_pool_wait_grown(offload_host_pool(ht(t)->o));
    offload_poll(ht(t)->o);
}

static void ht_check(const kv_tier *t) {
    offload_check_invariants(htc(t)->o);
}

static void ht_destroy(kv_tier *t) {
    host_tier *x = ht(t);
    for (int i = 0; i < x->n_ops; i++) {
        transfer_wait(x->x, x->ops[i].op);
        ht_op_finish(x, &x->ops[i]);
    }
    transfer_free(x->x);
    offload_free(x->o);
    free(x->ops);
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
    .destroy = ht_destroy,
};

kv_tier *host_tier_create(backend *be, const offload_config *cfg, size_t block_bytes, int n_layers,
                          void *gpu_pool, int n_blocks, const kv_tier_pin_hooks *pins,
                          kv_tier_done_fn done, void *done_user, kv_error *err) {
    offload *o = offload_create(be, cfg, block_bytes, NULL, NULL, err);
    if (!o) return NULL;
    host_tier *x = kv_calloc(1, sizeof *x);
    x->base.ops = &host_tier_ops;
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
