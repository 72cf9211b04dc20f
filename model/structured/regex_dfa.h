/* Regular expressions compiled to a byte-level DFA for constrained decoding: the subset JSON
 * Schema patterns and vLLM clients use (literals, classes, \d\w\s, . , quantifiers * + ? {m,n},
 * alternation, groups), matched against the whole output (anchors are implicit). Owns the
 * automaton; knows nothing of tokens or requests. A compiled DFA is read-only. */
#ifndef KVSERVE_REGEX_DFA_H
#define KVSERVE_REGEX_DFA_H

#include "model/common.h"

/* Bounds on the work one regex may cause; exceeding one is an error naming it. */
typedef struct sc_limits {
    size_t max_regex_bytes; /* the regex text (schemas compile to one) */
    int max_nfa_nodes;      /* after {m,n} expansion */
    int max_dfa_states;
    int max_depth; /* group nesting in a regex; object/array nesting and $ref depth in a schema */
} sc_limits;

/* 256 KiB of regex, 200k NFA nodes, 20k DFA states, depth 6 (nested JSON levels). */
void sc_limits_default(sc_limits *l);

/* Every byte is mapped to a class; transitions are per class. State -1 is dead. States from
 * which no accepting state can be reached are dead too, so a live state can always finish. */
typedef struct sc_dfa {
    int n_states, n_classes, start;
    uint8_t cls[256];
    int32_t *delta; /* [n_states][n_classes], -1 = dead */
    bool *accept;   /* [n_states] */
} sc_dfa;

/* Compiles re[0..len) (UTF-8). Errors (syntax, unsupported construct, a limit, a regex that
 * matches nothing) return -1 with a message naming the problem; *out is then NULL. */
int sc_regex_compile(const char *re, size_t len, const sc_limits *lim, sc_dfa **out, kv_error *err);
void sc_dfa_free(sc_dfa *d);

static inline int32_t sc_dfa_step(const sc_dfa *d, int32_t s, uint8_t b) {
    return s < 0 ? -1 : d->delta[(size_t)s * (size_t)d->n_classes + d->cls[b]];
}
/* The state after bytes from s (-1 once dead). */
int32_t sc_dfa_walk(const sc_dfa *d, int32_t s, const uint8_t *bytes, size_t n);
/* Whether the whole of s[0..n) matches. */
bool sc_dfa_matches(const sc_dfa *d, const char *s, size_t n);

#endif
