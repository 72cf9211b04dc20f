/* The constraint cache: a short array kept in most-recent-first order under one mutex (capacity
 * is small, so a linear scan is cheaper than a map). Compiling happens outside the lock. */
#include "model/structured/constraint_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct sc_entry {
    char *re;
    size_t len;
    sc_constraint *c;
} sc_entry;

struct sc_cache {
    pthread_mutex_t lock;
    const sc_vocab *vocab;
    sc_entry *entries; /* [n], most recent first */
    int n, cap;
    long long hits, misses;
};

sc_cache *sc_cache_new(int capacity, const sc_vocab *vocab) {
    sc_cache *c = kv_calloc(1, sizeof *c);
    KV_CHECK(pthread_mutex_init(&c->lock, NULL) == 0);
    c->cap = capacity > 0 ? capacity : 1;
    c->vocab = vocab;
    c->entries = kv_calloc((size_t)c->cap, sizeof *c->entries);
    return c;
}

void sc_cache_free(sc_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) {
        free(c->entries[i].re);
        sc_constraint_unref(c->entries[i].c);
    }
    free(c->entries);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* Under the lock: the entry's constraint (moved to the front), or NULL. */
static sc_constraint *find(sc_cache *c, const char *re, size_t len) {
    for (int i = 0; i < c->n; i++) {
        sc_entry e = c->entries[i];
        if (e.len != len || memcmp(e.re, re, len)) continue;
        memmove(c->entries + 1, c->entries, (size_t)i * sizeof *c->entries);
        c->entries[0] = e;
        return sc_constraint_ref(e.c);
    }
    return NULL;
}

sc_constraint *sc_cache_get(sc_cache *c, const char *re, size_t len, const sc_limits *lim,
                            kv_error *err) {
    pthread_mutex_lock(&c->lock);
    sc_constraint *hit = find(c, re, len);
    if (hit) c->hits++;
    pthread_mutex_unlock(&c->lock);
    if (hit) return hit;
    sc_dfa *d = NULL;
    if (sc_regex_compile(re, len, lim, &d, err)) return NULL;
    sc_constraint *made = sc_constraint_new(d, c->vocab);
    pthread_mutex_lock(&c->lock);
    c->misses++;
    sc_constraint *other = find(c, re, len); /* compiled meanwhile by another thread */
    if (other) {
        pthread_mutex_unlock(&c->lock);
        sc_constraint_unref(made);
        return other;
    }
    if (c->n == c->cap) { /* evict the least recent */
        c->n--;
        free(c->entries[c->n].re);
        sc_constraint_unref(c->entries[c->n].c);
    }
    memmove(c->entries + 1, c->entries, (size_t)c->n * sizeof *c->entries);
    c->entries[0].re = kv_malloc(len + 1);
    memcpy(c->entries[0].re, re, len);
    c->entries[0].re[len] = 0;
    c->entries[0].len = len;
    c->entries[0].c = sc_constraint_ref(made);
    c->n++;
    pthread_mutex_unlock(&c->lock);
    return made;
}

void sc_cache_stats(sc_cache *c, long long *hits, long long *misses) {
    pthread_mutex_lock(&c->lock);
    *hits = c->hits;
    *misses = c->misses;
    pthread_mutex_unlock(&c->lock);
}
