/* Block copies between the device KV pool and host slots: coalescing, one copy_async per batch
 * (or, for a load by layer groups, one strided copy per run and group), an event per op (per
 * group), per-block counts of the ops in flight. */
#include "offload/transfer.h"

#include <stdlib.h>

struct transfer_op {
    transfer_dir dir;
    transfer_pair *pairs; /* [n_pairs], as given */
    int n_pairs;
    int n_copies;
    int n_layers, n_groups; /* layer groups (1: the whole blocks at once) */
    /* [n_groups] recorded on the op's stream after each group's copies; the last one ends the op;
     * NULL once done */
    backend_event **evs;
    bool done;
    transfer_op *prev, *next; /* every op not yet freed */
};

struct transfer {
    backend *be;
    host_pool *hp;
    uint8_t *pool;
    int n_blocks;
    size_t block_bytes;
    transfer_hooks hooks;
    uint16_t *n_loading; /* [n_blocks] loads in flight into each block */
    uint16_t *n_storing; /* [n_blocks] stores in flight from each block */
    transfer_op *ops;
    int n_inflight;
    /* scratch for one batch, grown as needed */
    transfer_pair *sorted;
    int32_t *slots;
    void **dsts;
    const void **srcs;
    size_t *sizes;
    int cap;
    transfer_stats stats;
};

transfer *transfer_create(backend *be, host_pool *hp, void *gpu_pool, int n_blocks,
                          const transfer_hooks *hooks) {
    KV_CHECK(n_blocks > 0 && gpu_pool != NULL);
    transfer *t = kv_calloc(1, sizeof *t);
    t->be = be;
    t->hp = hp;
    t->pool = gpu_pool;
    t->n_blocks = n_blocks;
    t->block_bytes = host_pool_block_bytes(hp);
    if (hooks) t->hooks = *hooks;
    t->n_loading = kv_calloc((size_t)n_blocks, sizeof *t->n_loading);
    t->n_storing = kv_calloc((size_t)n_blocks, sizeof *t->n_storing);
    return t;
}

static void op_finish(transfer *t, transfer_op *op) {
    op->done = true;
    for (int g = 0; g < op->n_groups; g++) t->be->ops->event_free(t->be, op->evs[g]);
    free(op->evs);
    op->evs = NULL;
    t->n_inflight--;
    for (int i = 0; i < op->n_pairs; i++) {
        int32_t b = op->pairs[i].block;
        if (op->dir == TRANSFER_LOAD)
            t->n_loading[b]--;
        else
            t->n_storing[b]--;
        if (t->hooks.unpin) t->hooks.unpin(t->hooks.user, b);
    }
}

static void op_unlink_free(transfer *t, transfer_op *op) {
    if (op->prev)
        op->prev->next = op->next;
    else
        t->ops = op->next;
    if (op->next) op->next->prev = op->prev;
    free(op->pairs);
    free(op);
}

void transfer_free(transfer *t) {
    if (!t) return;
    while (t->ops) {
        transfer_op *op = t->ops;
        transfer_wait(t, op);
        op_unlink_free(t, op);
    }
    free(t->n_loading);
    free(t->n_storing);
    free(t->sorted);
    free(t->slots);
    free(t->dsts);
    free(t->srcs);
    free(t->sizes);
    free(t);
}

static int pair_cmp_block(const void *a, const void *b) {
    const transfer_pair *x = a, *y = b;
    if (x->block != y->block) return x->block < y->block ? -1 : 1;
    return (x->slot > y->slot) - (x->slot < y->slot);
}

static int slot_cmp(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void scratch_reserve(transfer *t, int n) {
    if (n <= t->cap) return;
    int cap = t->cap ? t->cap : 64;
    while (cap < n) cap *= 2;
    t->sorted = kv_realloc(t->sorted, (size_t)cap * sizeof *t->sorted);
    t->slots = kv_realloc(t->slots, (size_t)cap * sizeof *t->slots);
    t->dsts = kv_realloc(t->dsts, (size_t)cap * sizeof *t->dsts);
    t->srcs = kv_realloc(t->srcs, (size_t)cap * sizeof *t->srcs);
    t->sizes = kv_realloc(t->sizes, (size_t)cap * sizeof *t->sizes);
    t->cap = cap;
}

/* Checks the pairs against each other and against the ops in flight (rules 2 and 3 of the
 * header), then coalesces them into t->dsts/srcs/sizes. Returns the number of copies. */
static int batch_build(transfer *t, transfer_dir dir, const transfer_pair *pairs, int n) {
    int n_ready = host_pool_n_slots_ready(t->hp);
    scratch_reserve(t, n);
    for (int i = 0; i < n; i++) {
        int32_t b = pairs[i].block, s = pairs[i].slot;
        KV_CHECK(b >= 0 && b < t->n_blocks);
        KV_CHECK(s >= 0 && s < n_ready);
        /* a block being loaded has no contents to store yet, nor room for a second load; a block a
         * store still reads must not be overwritten */
        KV_CHECK(t->n_loading[b] == 0);
        if (dir == TRANSFER_LOAD) KV_CHECK(t->n_storing[b] == 0);
        t->sorted[i] = pairs[i];
        t->slots[i] = s;
    }
    qsort(t->sorted, (size_t)n, sizeof *t->sorted, pair_cmp_block);
    if (dir == TRANSFER_LOAD) {
        for (int i = 1; i < n; i++) KV_CHECK(t->sorted[i].block != t->sorted[i - 1].block);
    } else {
        qsort(t->slots, (size_t)n, sizeof *t->slots, slot_cmp);
        for (int i = 1; i < n; i++) KV_CHECK(t->slots[i] != t->slots[i - 1]);
    }
    int n_copies = 0;
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && t->sorted[j + 1].block == t->sorted[j].block + 1 &&
               host_pool_slots_adjacent(t->hp, t->sorted[j].slot, t->sorted[j + 1].slot))
            j++;
        uint8_t *dev = t->pool + (size_t)t->sorted[i].block * t->block_bytes;
        void *host = host_pool_slot_ptr(t->hp, t->sorted[i].slot);
        t->dsts[n_copies] = dir == TRANSFER_LOAD ? (void *)dev : host;
        t->srcs[n_copies] = dir == TRANSFER_LOAD ? (const void *)host : dev;
        t->sizes[n_copies] = (size_t)(j - i + 1) * t->block_bytes;
        n_copies++;
        i = j + 1;
    }
    return n_copies;
}

/* First layer of group g: group g holds layers [group_first(g), group_first(g + 1)). */
static int group_first(int g, int n_layers, int n_groups) {
    return g * n_layers / n_groups;
}

/* Queues the copies of layers [lo, hi) of every block of the n_copies runs in t->dsts/srcs/sizes:
 * one strided copy per run (a row per block: the layers' bytes are contiguous in a block), or one
 * copy per block where the backend has no copy_2d_async. */
static void group_copy(transfer *t, int n_copies, size_t off, size_t width) {
    backend *be = t->be;
    size_t bb = t->block_bytes;
    for (int i = 0; i < n_copies; i++) {
        char *dst = (char *)t->dsts[i] + off;
        const char *src = (const char *)t->srcs[i] + off;
        size_t height = t->sizes[i] / bb;
        if (be->ops->copy_2d_async) {
            be->ops->copy_2d_async(be, BACKEND_STREAM_LOAD, dst, bb, src, bb, width, height);
            continue;
        }
        for (size_t r = 0; r < height; r++) {
            void *d = dst + r * bb;
            const void *sp = src + r * bb;
            be->ops->copy_async(be, BACKEND_STREAM_LOAD, 1, &d, &sp, &width);
        }
    }
}

static transfer_op *transfer_queue(transfer *t, transfer_dir dir, const transfer_pair *pairs, int n,
                                   backend_event *after, int n_layers, int n_groups) {
    KV_CHECK(n > 0);
    int n_copies = batch_build(t, dir, pairs, n);
    backend_stream stream = dir == TRANSFER_LOAD ? BACKEND_STREAM_LOAD : BACKEND_STREAM_STORE;
    const backend_ops *ops = t->be->ops;
    if (after) ops->event_wait(t->be, stream, after);

    transfer_op *op = kv_calloc(1, sizeof *op);
    op->dir = dir;
    op->pairs = kv_malloc((size_t)n * sizeof *op->pairs);
    memcpy(op->pairs, pairs, (size_t)n * sizeof *pairs);
    op->n_pairs = n;
    op->n_copies = n_copies * n_groups;
    op->n_layers = n_layers;
    op->n_groups = n_groups;
    op->evs = kv_malloc((size_t)n_groups * sizeof *op->evs);
    if (n_groups == 1) {
        ops->copy_async(t->be, stream, n_copies, t->dsts, t->srcs, t->sizes);
        op->evs[0] = ops->event_record(t->be, stream);
    } else {
        size_t layer_bytes = t->block_bytes / (size_t)n_layers;
        for (int g = 0; g < n_groups; g++) {
            int lo = group_first(g, n_layers, n_groups),
                hi = group_first(g + 1, n_layers, n_groups);
            group_copy(t, n_copies, (size_t)lo * layer_bytes, (size_t)(hi - lo) * layer_bytes);
            op->evs[g] = ops->event_record(t->be, stream);
        }
    }
    op->next = t->ops;
    if (t->ops) t->ops->prev = op;
    t->ops = op;
    t->n_inflight++;
    for (int i = 0; i < n; i++) {
        int32_t b = pairs[i].block;
        if (dir == TRANSFER_LOAD)
            t->n_loading[b]++;
        else {
            KV_CHECK(t->n_storing[b] < UINT16_MAX);
            t->n_storing[b]++;
        }
        if (t->hooks.pin) t->hooks.pin(t->hooks.user, b);
    }
    uint64_t bytes = (uint64_t)n * t->block_bytes;
    if (dir == TRANSFER_LOAD) {
        t->stats.n_loads++;
        t->stats.n_layered_loads += n_groups > 1;
        t->stats.n_load_copies += (uint64_t)op->n_copies;
        t->stats.load_bytes += bytes;
    } else {
        t->stats.n_stores++;
        t->stats.n_store_copies += (uint64_t)op->n_copies;
        t->stats.store_bytes += bytes;
    }
    return op;
}

transfer_op *transfer_load(transfer *t, const transfer_pair *pairs, int n, backend_event *after) {
    return transfer_queue(t, TRANSFER_LOAD, pairs, n, after, 1, 1);
}

transfer_op *transfer_load_layers(transfer *t, const transfer_pair *pairs, int n,
                                  backend_event *after, int n_layers, int n_groups) {
    KV_CHECK(n_layers >= 1 && t->block_bytes % (size_t)n_layers == 0);
    if (n_groups > n_layers) n_groups = n_layers;
    if (n_groups < 1) n_groups = 1;
    return transfer_queue(t, TRANSFER_LOAD, pairs, n, after, n_layers, n_groups);
}

transfer_op *transfer_store(transfer *t, const transfer_pair *pairs, int n, backend_event *after) {
    return transfer_queue(t, TRANSFER_STORE, pairs, n, after, 1, 1);
}

backend_event *transfer_op_layer_event(const transfer_op *op, int layer) {
    KV_CHECK(op->dir == TRANSFER_LOAD && layer >= 0);
    if (op->done) return NULL;
    if (op->n_groups == 1) return op->evs[0];
    KV_CHECK(layer < op->n_layers);
    int g = op->n_groups - 1;
    while (layer < group_first(g, op->n_layers, op->n_groups)) g--;
    return op->evs[g];
}

/* The stream runs in order: the last event done means every group is. */
static backend_event *op_last_event(const transfer_op *op) {
    return op->evs[op->n_groups - 1];
}

bool transfer_poll(transfer *t, transfer_op *op) {
    if (op->done) return true;
    if (!t->be->ops->event_done(t->be, op_last_event(op))) return false;
    op_finish(t, op);
    return true;
}

void transfer_wait(transfer *t, transfer_op *op) {
    if (op->done) return;
    t->be->ops->event_sync(t->be, op_last_event(op));
    op_finish(t, op);
}

void transfer_op_free(transfer *t, transfer_op *op) {
    KV_CHECK(op->done);
    op_unlink_free(t, op);
}

const transfer_pair *transfer_op_pairs(const transfer_op *op, int *n) {
    *n = op->n_pairs;
    return op->pairs;
}

transfer_dir transfer_op_dir(const transfer_op *op) {
    return op->dir;
}
int transfer_op_n_copies(const transfer_op *op) {
    return op->n_copies;
}

bool transfer_block_busy(const transfer *t, int32_t block) {
    KV_CHECK(block >= 0 && block < t->n_blocks);
    return t->n_loading[block] > 0 || t->n_storing[block] > 0;
}

bool transfer_block_loading(const transfer *t, int32_t block) {
    KV_CHECK(block >= 0 && block < t->n_blocks);
    return t->n_loading[block] > 0;
}

transfer_stats transfer_get_stats(const transfer *t) {
    transfer_stats st = t->stats;
    st.n_inflight = t->n_inflight;
    return st;
}
