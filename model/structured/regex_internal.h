/* Internals shared by the regex parser (regex_parse.c) and the automaton builder (regex_dfa.c):
 * byte sets and the AST. Not part of the API. */
#ifndef KVSERVE_REGEX_INTERNAL_H
#define KVSERVE_REGEX_INTERNAL_H

#include "model/structured/regex_dfa.h"

/* ---- byte sets ---- */

typedef struct bset {
    uint8_t b[32];
} bset;

static inline void bset_add(bset *s, int lo, int hi) {
    for (int c = lo; c <= hi; c++) s->b[c >> 3] |= (uint8_t)(1u << (c & 7));
}
static inline bool bset_has(const bset *s, int c) {
    return s->b[c >> 3] & (1u << (c & 7));
}
static inline bool bset_empty(const bset *s) {
    for (int i = 0; i < 32; i++)
        if (s->b[i]) return false;
    return true;
}

/* ---- AST ---- */

typedef enum rx_kind { RX_EMPTY, RX_SET, RX_CAT, RX_ALT, RX_REPEAT } rx_kind;

typedef struct rx_node {
    rx_kind kind;
    int a, b;     /* children (CAT, ALT: two; REPEAT: a) */
    int min, max; /* REPEAT; max -1 = unbounded */
    bset set;     /* SET */
} rx_node;

/* Parses re[0..len) into *nodes (malloc'd, *n_nodes of them); returns the root, or -1 with err
 * set (nothing to free then). */
int sc_regex_parse(const char *re, size_t len, const sc_limits *lim, rx_node **nodes, int *n_nodes,
                   kv_error *err);

#endif
