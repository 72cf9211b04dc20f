/* Compiled constraints shared between requests that send the same regex (schemas compile to one):
 * the DFA is built once and its token masks, filled on the engine thread, serve every request.
 * LRU over a few entries; thread-safe (HTTP threads look up while the engine uses entries). */
#ifndef KVSERVE_CONSTRAINT_CACHE_H
#define KVSERVE_CONSTRAINT_CACHE_H

#include "model/structured/token_mask.h"

typedef struct sc_cache sc_cache;

/* capacity entries at most (>= 1). vocab is borrowed and outlives the cache. */
sc_cache *sc_cache_new(int capacity, const sc_vocab *vocab);
void sc_cache_free(sc_cache *c);

/* A new reference to the constraint of re[0..len): found, or compiled under lim and kept. NULL
 * with err when it does not compile (errors are not cached). */
sc_constraint *sc_cache_get(sc_cache *c, const char *re, size_t len, const sc_limits *lim,
                            kv_error *err);
/* Lookups answered from the cache, and compiles (for tests and metrics). */
void sc_cache_stats(sc_cache *c, long long *hits, long long *misses);

#endif
