/* The host tier index: per-slot metadata in arrays sized for every slot the tier will have,
 * a chained hash table over slot ids, an LRU list of valid slots, the reuse counts of
 * reuse_gated. */
#include "offload/offload.h"

#include <stdlib.h>
#include <strings.h>

enum { SLOT_FREE, SLOT_STORING, SLOT_VALID, SLOT_LOADING };

typedef struct slot_meta {
    uint8_t hash[OFFLOAD_HASH_BYTES];
    int32_t bucket_next; /* next slot in the same hash bucket, -1 ends */
    int32_t lru_prev;    /* LRU neighbours (valid slots only), -1 ends */
    int32_t lru_next;
    int32_t n_readers; /* loads in flight from this slot */
    uint8_t state;
} slot_meta;

/* reuse_gated: uses of a hash, direct-mapped; a colliding hash takes the entry over. */
typedef struct reuse_entry {
    uint8_t hash[OFFLOAD_HASH_BYTES];
    uint32_t uses;
} reuse_entry;

struct offload {
    offload_config cfg;
    size_t block_bytes;
    host_pool *hp;
    int n_slots_total;

    slot_meta *slots; /* [n_slots_total] */
    int32_t *buckets; /* [bucket_mask + 1] first slot of each bucket, -1 when empty */
    uint64_t bucket_mask;
    int32_t lru_head; /* least recently used valid slot: the next victim */
    int32_t lru_tail; /* most recently used */
    int32_t last_store_slot;

    reuse_entry *reuse; /* [reuse_mask + 1], reuse_gated only */
    uint64_t reuse_mask;

    int n_storing, n_valid, n_loading;
    void (*on_evict)(void *user, const uint8_t *hash);
    void *on_evict_user;
    uint64_t hits, misses, stored_bytes, loaded_bytes, evictions, n_stores_skipped;
};

const char *const offload_policy_names[] = {"write_through", "on_evict", "reuse_gated", NULL};

bool offload_policy_parse(const char *s, offload_policy *out) {
    for (int i = 0; offload_policy_names[i]; i++) {
        if (strcasecmp(s, offload_policy_names[i]) == 0) {
            *out = (offload_policy)i;
            return true;
        }
    }
    return false;
}

const char *offload_policy_name(offload_policy p) {
    return (unsigned)p <= OFFLOAD_POLICY_REUSE_GATED ? offload_policy_names[p] : "?";
}

/* SHA-256 output is uniform: its leading bytes are a good table index as they are. */
static uint64_t hash_word(const uint8_t *h, int word) {
    uint64_t x;
    memcpy(&x, h + 8 * word, 8);
    return x;
}

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

offload *offload_create(backend *be, const offload_config *cfg, size_t block_bytes,
                        host_pool_progress_fn progress, void *progress_user, kv_error *err) {
    if (!(cfg->size_gib >= 0) || cfg->size_gib > 1 << 20) {
        kv_error_set(err, "offload.size_gib must be between 0 and 1048576, got %g", cfg->size_gib);
        return NULL;
    }
    if (cfg->policy == OFFLOAD_POLICY_REUSE_GATED && cfg->reuse_threshold < 0) {
        kv_error_set(err, "offload.reuse_threshold must be >= 0, got %d", cfg->reuse_threshold);
        return NULL;
    }
    host_pool_config hc = {
        .total_bytes = (size_t)(cfg->size_gib * (double)(1ull << 30)),
        .block_bytes = block_bytes,
        .chunk_bytes = cfg->chunk_bytes,
        .progress = progress,
        .progress_user = progress_user,
    };
    host_pool *hp = host_pool_create(be, &hc, err);
    if (!hp) return NULL;

    offload *o = kv_calloc(1, sizeof *o);
    o->cfg = *cfg;
    o->block_bytes = block_bytes;
    o->hp = hp;
    o->n_slots_total = host_pool_n_slots_total(hp);
    o->slots = kv_calloc((size_t)o->n_slots_total, sizeof *o->slots);
    o->bucket_mask = pow2_at_least((uint64_t)o->n_slots_total) - 1;
    o->buckets = kv_malloc((o->bucket_mask + 1) * sizeof *o->buckets);
    for (uint64_t b = 0; b <= o->bucket_mask; b++) o->buckets[b] = -1;
    o->lru_head = o->lru_tail = -1;
    o->last_store_slot = -1;
    if (cfg->policy == OFFLOAD_POLICY_REUSE_GATED) {
        uint64_t n = pow2_at_least(2 * (uint64_t)o->n_slots_total);
        if (n < 1024) n = 1024;
        o->reuse = kv_calloc(n, sizeof *o->reuse);
        o->reuse_mask = n - 1;
    }
    return o;
}

void offload_free(offload *o) {
    if (!o) return;
    host_pool_free(o->hp);
    free(o->slots);
    free(o->buckets);
    free(o->reuse);
    free(o);
}

void offload_set_evict_hook(offload *o, void (*fn)(void *user, const uint8_t *hash), void *user) {
    o->on_evict = fn;
    o->on_evict_user = user;
}

host_pool *offload_host_pool(offload *o) {
    return o->hp;
}
int offload_poll(offload *o) {
    return host_pool_grow_poll(o->hp);
}
void *offload_slot_ptr(const offload *o, int32_t slot) {
    return host_pool_slot_ptr(o->hp, slot);
}

/* --- index --- */

static int32_t index_find(const offload *o, const uint8_t *hash) {
    if (o->n_slots_total == 0) return -1;
    for (int32_t s = o->buckets[hash_word(hash, 0) & o->bucket_mask]; s >= 0;
         s = o->slots[s].bucket_next) {
        if (memcmp(o->slots[s].hash, hash, OFFLOAD_HASH_BYTES) == 0) return s;
    }
    return -1;
}

static void index_insert(offload *o, int32_t s, const uint8_t *hash) {
    int32_t *head = &o->buckets[hash_word(hash, 0) & o->bucket_mask];
    memcpy(o->slots[s].hash, hash, OFFLOAD_HASH_BYTES);
    o->slots[s].bucket_next = *head;
    *head = s;
}

static void index_remove(offload *o, int32_t s) {
    int32_t *link = &o->buckets[hash_word(o->slots[s].hash, 0) & o->bucket_mask];
    while (*link != s) {
        KV_CHECK(*link >= 0);
        link = &o->slots[*link].bucket_next;
    }
    *link = o->slots[s].bucket_next;
    o->slots[s].bucket_next = -1;
}

/* --- LRU over valid slots --- */

static void lru_push_mru(offload *o, int32_t s) {
    slot_meta *m = &o->slots[s];
    m->lru_prev = o->lru_tail;
    m->lru_next = -1;
    if (o->lru_tail >= 0)
        o->slots[o->lru_tail].lru_next = s;
    else
        o->lru_head = s;
    o->lru_tail = s;
}

static void lru_remove(offload *o, int32_t s) {
    slot_meta *m = &o->slots[s];
    if (m->lru_prev >= 0)
        o->slots[m->lru_prev].lru_next = m->lru_next;
    else
        o->lru_head = m->lru_next;
    if (m->lru_next >= 0)
        o->slots[m->lru_next].lru_prev = m->lru_prev;
    else
        o->lru_tail = m->lru_prev;
    m->lru_prev = m->lru_next = -1;
}

/* --- policies --- */

/* Counts one use of the hash (ev != GPU_EVICT) and returns its uses so far. */
static uint32_t reuse_count(offload *o, const uint8_t *hash, offload_event ev) {
    reuse_entry *e = &o->reuse[hash_word(hash, 1) & o->reuse_mask];
    if (memcmp(e->hash, hash, OFFLOAD_HASH_BYTES) != 0) {
        if (ev == OFFLOAD_EVENT_GPU_EVICT) return 0; /* never used: keep the other hash's count */
        memcpy(e->hash, hash, OFFLOAD_HASH_BYTES);
        e->uses = 0;
    }
    if (ev != OFFLOAD_EVENT_GPU_EVICT && e->uses < UINT32_MAX) e->uses++;
    return e->uses;
}

bool offload_should_store(offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES], offload_event ev) {
    if (o->n_slots_total == 0) return false;
    bool present = index_find(o, hash) >= 0;
    switch (o->cfg.policy) {
    case OFFLOAD_POLICY_WRITE_THROUGH:
        return !present && ev == OFFLOAD_EVENT_BLOCK_FULL;
    case OFFLOAD_POLICY_ON_EVICT:
        return !present && ev == OFFLOAD_EVENT_GPU_EVICT;
    case OFFLOAD_POLICY_REUSE_GATED: {
        uint32_t uses = reuse_count(o, hash, ev);
        return !present && uses >= 1 && uses - 1 >= (uint32_t)o->cfg.reuse_threshold;
    }
    }
    return false;
}

/* --- stores and loads --- */

int32_t offload_store_begin(offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES]) {
    if (o->n_slots_total == 0 || index_find(o, hash) >= 0) return -1;
    int32_t hint = o->last_store_slot >= 0 ? o->last_store_slot + 1 : -1;
    int32_t s = host_pool_slot_alloc(o->hp, hint);
    if (s < 0) {
        int32_t victim = o->lru_head;
        if (victim < 0) {
            o->n_stores_skipped++;
            return -1;
        }
        lru_remove(o, victim);
        if (o->on_evict) o->on_evict(o->on_evict_user, o->slots[victim].hash);
        index_remove(o, victim);
        o->slots[victim].state = SLOT_FREE;
        o->n_valid--;
        o->evictions++;
        host_pool_slot_free(o->hp, victim);
        s = host_pool_slot_alloc(o->hp, hint);
        KV_CHECK(s == victim);
    }
    slot_meta *m = &o->slots[s];
    KV_CHECK(m->state == SLOT_FREE);
    m->state = SLOT_STORING;
    m->n_readers = 0;
    m->lru_prev = m->lru_next = -1;
    index_insert(o, s, hash);
    o->n_storing++;
    o->last_store_slot = s;
    return s;
}

void offload_store_done(offload *o, int32_t slot) {
    KV_CHECK(slot >= 0 && slot < host_pool_n_slots_ready(o->hp));
    slot_meta *m = &o->slots[slot];
    KV_CHECK(m->state == SLOT_STORING);
    m->state = SLOT_VALID;
    o->n_storing--;
    o->n_valid++;
    lru_push_mru(o, slot);
    o->stored_bytes += o->block_bytes;
}

void offload_store_abort(offload *o, int32_t slot) {
    KV_CHECK(slot >= 0 && slot < host_pool_n_slots_ready(o->hp));
    slot_meta *m = &o->slots[slot];
    KV_CHECK(m->state == SLOT_STORING);
    index_remove(o, slot);
    m->state = SLOT_FREE;
    o->n_storing--;
    host_pool_slot_free(o->hp, slot);
}

int32_t offload_lookup(offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES]) {
    if (o->n_slots_total == 0) return -1;
    int32_t s = index_find(o, hash);
    if (s < 0 || o->slots[s].state == SLOT_STORING) {
        o->misses++;
        return -1;
    }
    o->hits++;
    if (o->slots[s].state == SLOT_VALID) {
        lru_remove(o, s);
        lru_push_mru(o, s);
    }
    return s;
}

int32_t offload_valid_slot(const offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES]) {
    int32_t s = index_find(o, hash);
    return s >= 0 && (o->slots[s].state == SLOT_VALID || o->slots[s].state == SLOT_LOADING) ? s
                                                                                            : -1;
}

bool offload_contains(const offload *o, const uint8_t hash[OFFLOAD_HASH_BYTES]) {
    int32_t s = index_find(o, hash);
    return s >= 0 && o->slots[s].state != SLOT_STORING;
}

void offload_load_begin(offload *o, int32_t slot) {
    KV_CHECK(slot >= 0 && slot < host_pool_n_slots_ready(o->hp));
    slot_meta *m = &o->slots[slot];
    KV_CHECK(m->state == SLOT_VALID || m->state == SLOT_LOADING);
    if (m->state == SLOT_VALID) {
        lru_remove(o, slot);
        m->state = SLOT_LOADING;
        o->n_valid--;
        o->n_loading++;
    }
    m->n_readers++;
}

void offload_load_done(offload *o, int32_t slot) {
    o->loaded_bytes += o->block_bytes;
    offload_read_end(o, slot);
}

void offload_read_begin(offload *o, int32_t slot) {
    offload_load_begin(o, slot);
}

void offload_read_end(offload *o, int32_t slot) {
    KV_CHECK(slot >= 0 && slot < host_pool_n_slots_ready(o->hp));
    slot_meta *m = &o->slots[slot];
    KV_CHECK(m->state == SLOT_LOADING && m->n_readers > 0);
    if (--m->n_readers > 0) return;
    m->state = SLOT_VALID;
    o->n_loading--;
    o->n_valid++;
    lru_push_mru(o, slot);
}

offload_stats offload_get_stats(offload *o) {
    host_pool_stats hs = host_pool_get_stats(o->hp);
    offload_stats st = {
        .hits = o->hits,
        .misses = o->misses,
        .stored_bytes = o->stored_bytes,
        .loaded_bytes = o->loaded_bytes,
        .evictions = o->evictions,
        .n_stores_skipped = o->n_stores_skipped,
        .n_slots_total = hs.n_slots_total,
        .n_slots_ready = hs.n_slots_ready,
        .n_free = hs.n_slots_free,
        .n_storing = o->n_storing,
        .n_valid = o->n_valid,
        .n_loading = o->n_loading,
        .block_bytes = o->block_bytes,
        .bytes_total = hs.bytes_total,
        .bytes_ready = hs.bytes_ready,
        .bytes_used = (size_t)(o->n_storing + o->n_valid + o->n_loading) * o->block_bytes,
        .growing = hs.growing,
    };
    return st;
}

void offload_check_invariants(const offload *o) {
    int n_ready = host_pool_n_slots_ready(o->hp);
    int count[4] = {0};
    for (int32_t s = 0; s < n_ready; s++) {
        const slot_meta *m = &o->slots[s];
        KV_CHECK(m->state <= SLOT_LOADING);
        count[m->state]++;
        KV_CHECK((m->state == SLOT_FREE) == host_pool_slot_is_free(o->hp, s));
        KV_CHECK((m->state == SLOT_LOADING) == (m->n_readers > 0));
        if (m->state != SLOT_FREE) KV_CHECK(index_find(o, m->hash) == s);
    }
    KV_CHECK(count[SLOT_FREE] == host_pool_n_slots_free(o->hp));
    KV_CHECK(count[SLOT_STORING] == o->n_storing);
    KV_CHECK(count[SLOT_VALID] == o->n_valid);
    KV_CHECK(count[SLOT_LOADING] == o->n_loading);
    /* the LRU list holds exactly the valid slots, linked both ways */
    int n_lru = 0;
    int32_t prev = -1;
    for (int32_t s = o->lru_head; s >= 0; s = o->slots[s].lru_next) {
        KV_CHECK(o->slots[s].state == SLOT_VALID && o->slots[s].lru_prev == prev);
        prev = s;
        KV_CHECK(++n_lru <= n_ready);
    }
    KV_CHECK(prev == o->lru_tail && n_lru == o->n_valid);
    /* the index holds exactly the slots that are not free */
    int n_indexed = 0;
    if (o->n_slots_total > 0) {
        for (uint64_t b = 0; b <= o->bucket_mask; b++) {
            for (int32_t s = o->buckets[b]; s >= 0; s = o->slots[s].bucket_next) {
                KV_CHECK(s < n_ready && o->slots[s].state != SLOT_FREE);
                KV_CHECK((hash_word(o->slots[s].hash, 0) & o->bucket_mask) == b);
                KV_CHECK(++n_indexed <= n_ready);
            }
        }
    }
    KV_CHECK(n_indexed == o->n_storing + o->n_valid + o->n_loading);
}
