/* Host slots: chunks pinned by a background thread, slot addresses, the engine's free list.
 * Slot s lives in chunk s / slots_per_chunk, so slot ids are fixed before any chunk exists and a
 * slot never straddles two chunks. */
#include "offload/host_pool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define PAGE_BYTES 4096

struct host_pool {
    backend *be;
    size_t block_bytes;
    int n_slots_total;
    int slots_per_chunk;
    int n_chunks_total;
    host_pool_progress_fn progress;
    void *progress_user;

    /* chunks[c] is written by the pinning thread before it publishes n_chunks_pinned > c under
     * mu and is never written again, so the engine reads published entries without the lock. */
    void **chunks; /* [n_chunks_total] */

    /* shared with the pinning thread, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cond; /* signalled when growth ends */
    int n_chunks_pinned;
    bool stop;
    bool grow_done;
    bool grow_failed;
    pthread_t thread;
    bool thread_started;

    /* engine thread only */
    int n_chunks_ready;
    int n_slots_ready;
    int n_slots_free;
    /* free list: doubly linked over slot ids so that a hinted slot leaves it in O(1) */
    int32_t *free_next; /* [n_slots_total], -1 ends */
    int32_t *free_prev;
    uint8_t *is_free;
    int32_t free_head, free_tail;
};

static size_t chunk_slots(const host_pool *hp, int c) {
    int first = c * hp->slots_per_chunk;
    int n = hp->n_slots_total - first;
    return (size_t)(n < hp->slots_per_chunk ? n : hp->slots_per_chunk);
}

/* The pinning thread: one host_alloc per chunk until the tier is complete, stopped, or the
 * allocation fails. Pages are touched here so that first-touch faults (plain memory on the CPU
 * backend) are paid in the background, not by the first store. */
static void *pin_thread_main(void *arg) {
    host_pool *hp = arg;
    size_t bytes_pinned = 0;
    size_t bytes_total = (size_t)hp->n_slots_total * hp->block_bytes;
    for (int c = 0; c < hp->n_chunks_total; c++) {
        pthread_mutex_lock(&hp->mu);
        bool stop = hp->stop;
        pthread_mutex_unlock(&hp->mu);
        if (stop) break;
        size_t bytes = chunk_slots(hp, c) * hp->block_bytes;
        uint8_t *p = hp->be->ops->host_alloc(hp->be, bytes);
        if (!p) {
            pthread_mutex_lock(&hp->mu);
            hp->grow_failed = true;
            pthread_mutex_unlock(&hp->mu);
            break;
        }
        for (size_t off = 0; off < bytes; off += PAGE_BYTES) p[off] = 0;
        hp->chunks[c] = p;
        pthread_mutex_lock(&hp->mu);
        hp->n_chunks_pinned = c + 1;
        pthread_mutex_unlock(&hp->mu);
        bytes_pinned += bytes;
        if (hp->progress) hp->progress(hp->progress_user, bytes_pinned, bytes_total, false);
    }
    if (hp->progress) hp->progress(hp->progress_user, bytes_pinned, bytes_total, true);
    pthread_mutex_lock(&hp->mu);
    hp->grow_done = true;
    pthread_cond_broadcast(&hp->cond);
    pthread_mutex_unlock(&hp->mu);
    return NULL;
}

host_pool *host_pool_create(backend *be, const host_pool_config *cfg, kv_error *err) {
    KV_CHECK(cfg->block_bytes > 0);
    if (cfg->total_bytes > 0 && cfg->total_bytes < cfg->block_bytes) {
        kv_error_set(err,
                     "offload.size_gib: a host tier of %zu bytes is smaller than one KV block "
                     "(%zu bytes)",
                     cfg->total_bytes, cfg->block_bytes);
        return NULL;
    }
    size_t n_slots = cfg->total_bytes / cfg->block_bytes;
    if (n_slots > INT32_MAX / 2) {
        kv_error_set(err,
                     "offload.size_gib: a host tier of %zu bytes holds too many KV blocks (%zu)",
                     cfg->total_bytes, n_slots);
        return NULL;
    }
    size_t chunk_bytes = cfg->chunk_bytes ? cfg->chunk_bytes : HOST_POOL_DEFAULT_CHUNK_BYTES;
    size_t per_chunk = chunk_bytes / cfg->block_bytes;
    if (per_chunk == 0) per_chunk = 1;
    if (per_chunk > n_slots) per_chunk = n_slots > 0 ? n_slots : 1; /* fits an int */

    host_pool *hp = kv_calloc(1, sizeof *hp);
    hp->be = be;
    hp->block_bytes = cfg->block_bytes;
    hp->n_slots_total = (int)n_slots;
    hp->slots_per_chunk = (int)per_chunk;
    hp->n_chunks_total = (int)((n_slots + per_chunk - 1) / per_chunk);
    hp->progress = cfg->progress;
    hp->progress_user = cfg->progress_user;
    hp->chunks = kv_calloc((size_t)hp->n_chunks_total, sizeof *hp->chunks);
    hp->free_next = kv_malloc(n_slots * sizeof *hp->free_next);
    hp->free_prev = kv_malloc(n_slots * sizeof *hp->free_prev);
    hp->is_free = kv_calloc(n_slots, 1);
    hp->free_head = hp->free_tail = -1;
    KV_CHECK(pthread_mutex_init(&hp->mu, NULL) == 0);
    KV_CHECK(pthread_cond_init(&hp->cond, NULL) == 0);
    if (n_slots == 0) {
        hp->grow_done = true;
        return hp;
    }
    KV_CHECK(pthread_create(&hp->thread, NULL, pin_thread_main, hp) == 0);
    hp->thread_started = true;
    return hp;
}

void host_pool_stop_growth(host_pool *hp) {
    pthread_mutex_lock(&hp->mu);
    hp->stop = true;
    pthread_mutex_unlock(&hp->mu);
}

void host_pool_wait_grown(host_pool *hp) {
    pthread_mutex_lock(&hp->mu);
    while (!hp->grow_done) pthread_cond_wait(&hp->cond, &hp->mu);
    pthread_mutex_unlock(&hp->mu);
}

void host_pool_free(host_pool *hp) {
    if (!hp) return;
    host_pool_stop_growth(hp);
    if (hp->thread_started) KV_CHECK(pthread_join(hp->thread, NULL) == 0);
    for (int c = 0; c < hp->n_chunks_pinned; c++) hp->be->ops->host_free(hp->be, hp->chunks[c]);
    pthread_cond_destroy(&hp->cond);
    pthread_mutex_destroy(&hp->mu);
    free(hp->chunks);
    free(hp->free_next);
    free(hp->free_prev);
    free(hp->is_free);
    free(hp);
}

static void free_list_append(host_pool *hp, int32_t s) {
    hp->free_prev[s] = hp->free_tail;
    hp->free_next[s] = -1;
    if (hp->free_tail >= 0)
        hp->free_next[hp->free_tail] = s;
    else
        hp->free_head = s;
    hp->free_tail = s;
    hp->is_free[s] = 1;
    hp->n_slots_free++;
}

static void free_list_remove(host_pool *hp, int32_t s) {
    int32_t p = hp->free_prev[s], n = hp->free_next[s];
    if (p >= 0)
        hp->free_next[p] = n;
    else
        hp->free_head = n;
    if (n >= 0)
        hp->free_prev[n] = p;
    else
        hp->free_tail = p;
    hp->is_free[s] = 0;
    hp->n_slots_free--;
}

int host_pool_grow_poll(host_pool *hp) {
    pthread_mutex_lock(&hp->mu);
    int n_pinned = hp->n_chunks_pinned;
    pthread_mutex_unlock(&hp->mu);
    int before = hp->n_slots_ready;
    for (; hp->n_chunks_ready < n_pinned; hp->n_chunks_ready++) {
        int first = hp->n_chunks_ready * hp->slots_per_chunk;
        int end = first + (int)chunk_slots(hp, hp->n_chunks_ready);
        for (int32_t s = first; s < end; s++) free_list_append(hp, s);
        hp->n_slots_ready = end;
    }
    return hp->n_slots_ready - before;
}

int32_t host_pool_slot_alloc(host_pool *hp, int32_t hint) {
    int32_t s = (hint >= 0 && hint < hp->n_slots_ready && hp->is_free[hint]) ? hint : hp->free_head;
    if (s < 0) return -1;
    free_list_remove(hp, s);
    return s;
}

void host_pool_slot_free(host_pool *hp, int32_t slot) {
    KV_CHECK(slot >= 0 && slot < hp->n_slots_ready);
    KV_CHECK(!hp->is_free[slot]);
    free_list_append(hp, slot);
}

bool host_pool_slot_is_free(const host_pool *hp, int32_t slot) {
    KV_CHECK(slot >= 0 && slot < hp->n_slots_ready);
    return hp->is_free[slot];
}

void *host_pool_slot_ptr(const host_pool *hp, int32_t slot) {
    KV_CHECK(slot >= 0 && slot < hp->n_slots_ready);
    uint8_t *chunk = hp->chunks[slot / hp->slots_per_chunk];
    return chunk + (size_t)(slot % hp->slots_per_chunk) * hp->block_bytes;
}

bool host_pool_slots_adjacent(const host_pool *hp, int32_t a, int32_t b) {
    return b == a + 1 && a / hp->slots_per_chunk == b / hp->slots_per_chunk;
}

size_t host_pool_block_bytes(const host_pool *hp) {
    return hp->block_bytes;
}
int host_pool_n_slots_total(const host_pool *hp) {
    return hp->n_slots_total;
}
int host_pool_n_slots_ready(const host_pool *hp) {
    return hp->n_slots_ready;
}
int host_pool_n_slots_free(const host_pool *hp) {
    return hp->n_slots_free;
}
int host_pool_slots_per_chunk(const host_pool *hp) {
    return hp->slots_per_chunk;
}

host_pool_stats host_pool_get_stats(host_pool *hp) {
    host_pool_stats st = {0};
    st.bytes_total = (size_t)hp->n_slots_total * hp->block_bytes;
    st.bytes_ready = (size_t)hp->n_slots_ready * hp->block_bytes;
    st.n_slots_total = hp->n_slots_total;
    st.n_slots_ready = hp->n_slots_ready;
    st.n_slots_free = hp->n_slots_free;
    pthread_mutex_lock(&hp->mu);
    st.growing = !hp->grow_done;
    st.grow_failed = hp->grow_failed;
    pthread_mutex_unlock(&hp->mu);
    return st;
}
