/* The token trie (sorted byte strings laid out in preorder with subtree skips, so a mask is one
 * linear pass that jumps over dead subtrees), per-state mask cache and token advance. */
#include "model/structured/token_mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct sort_ctx_item {
    const uint8_t *s;
    uint32_t n;
    int32_t id;
} sort_item;

static int cmp_item(const void *a, const void *b) {
    const sort_item *x = a, *y = b;
    uint32_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    if (x->n != y->n) return x->n < y->n ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

sc_vocab *sc_vocab_new(int n_tokens, const char *const *bytes, const size_t *lens) {
    sc_vocab *v = kv_calloc(1, sizeof *v);
    v->n_tokens = n_tokens;
    v->off = kv_malloc(((size_t)n_tokens + 1) * sizeof(uint32_t));
    size_t total = 0;
    for (int t = 0; t < n_tokens; t++) total += bytes[t] && lens[t] < 65535 ? lens[t] : 0;
    v->bytes = kv_malloc(total ? total : 1);
    size_t at = 0;
    int n_items = 0;
    sort_item *items = kv_malloc(((size_t)n_tokens + 1) * sizeof *items);
    for (int t = 0; t < n_tokens; t++) {
        v->off[t] = (uint32_t)at;
        size_t n = bytes[t] && lens[t] < 65535 ? lens[t] : 0;
        if (n) memcpy(v->bytes + at, bytes[t], n);
        if (n) items[n_items++] = (sort_item){v->bytes + at, (uint32_t)n, t};
        if ((int)n > v->max_len) v->max_len = (int)n;
        at += n;
    }
    v->off[n_tokens] = (uint32_t)at;
    qsort(items, (size_t)n_items, sizeof *items, cmp_item);
    v->sorted = kv_malloc(((size_t)n_items + 1) * sizeof(int32_t));
    size_t cap = (size_t)n_items * 2 + 16;
    v->node_byte = kv_malloc(cap);
    v->node_depth = kv_malloc(cap * sizeof(uint16_t));
    v->node_skip = kv_malloc(cap * sizeof(int32_t));
    v->node_tok = kv_malloc(cap * sizeof(int32_t));
    v->node_n_tok = kv_malloc(cap * sizeof(int32_t));
    int32_t *path = kv_malloc(((size_t)v->max_len + 1) * sizeof(int32_t)); /* node at depth d */
    int depth = 0, n = 0;
    const sort_item *prev = NULL;
    for (int k = 0; k < n_items; k++) {
        const sort_item *it = &items[k];
        v->sorted[k] = it->id;
        uint32_t common = 0;
        if (prev)
            while (common < prev->n && common < it->n && prev->s[common] == it->s[common]) common++;
        while (depth > (int)common) v->node_skip[path[--depth]] = n; /* close subtrees */
        for (uint32_t d = common; d < it->n; d++) {
            if ((size_t)n == cap) {
                cap *= 2;
                v->node_byte = kv_realloc(v->node_byte, cap);
                v->node_depth = kv_realloc(v->node_depth, cap * sizeof(uint16_t));
                v->node_skip = kv_realloc(v->node_skip, cap * sizeof(int32_t));
                v->node_tok = kv_realloc(v->node_tok, cap * sizeof(int32_t));
                v->node_n_tok = kv_realloc(v->node_n_tok, cap * sizeof(int32_t));
            }
            v->node_byte[n] = it->s[d];
            v->node_depth[n] = (uint16_t)(d + 1);
            v->node_tok[n] = k;
            v->node_n_tok[n] = 0;
            path[depth++] = n++;
        }
        v->node_n_tok[path[depth - 1]]++; /* duplicates share the node: consecutive in sorted */
        if (v->node_n_tok[path[depth - 1]] == 1) v->node_tok[path[depth - 1]] = k;
        prev = it;
    }
    while (depth > 0) v->node_skip[path[--depth]] = n;
    v->n_nodes = n;
    free(path);
    free(items);
    return v;
}

void sc_vocab_free(sc_vocab *v) {
    if (!v) return;
    free(v->bytes), free(v->off), free(v->node_byte), free(v->node_depth), free(v->node_skip);
    free(v->node_tok), free(v->node_n_tok), free(v->sorted);
    free(v);
}

sc_constraint *sc_constraint_new(sc_dfa *dfa, const sc_vocab *vocab) {
    sc_constraint *c = kv_calloc(1, sizeof *c);
    c->refs = 1;
    c->dfa = dfa;
    c->vocab = vocab;
    c->masks = kv_calloc((size_t)dfa->n_states, sizeof *c->masks);
    c->n_allowed = kv_calloc((size_t)dfa->n_states, sizeof *c->n_allowed);
    c->n_words = (vocab->n_tokens + 63) / 64;
    return c;
}

sc_constraint *sc_constraint_ref(sc_constraint *c) {
    if (c) __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void sc_constraint_unref(sc_constraint *c) {
    if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    for (int s = 0; s < c->dfa->n_states; s++) free(c->masks[s]);
    free(c->masks);
    free(c->n_allowed);
    sc_dfa_free(c->dfa);
    free(c);
}

const uint64_t *sc_constraint_mask(sc_constraint *c, int32_t state, int *n_allowed) {
    KV_CHECK(state >= 0 && state < c->dfa->n_states);
    if (!c->masks[state]) {
        const sc_vocab *v = c->vocab;
        const sc_dfa *d = c->dfa;
        uint64_t *m = kv_calloc((size_t)c->n_words + 1, sizeof(uint64_t));
        int32_t st[65536 / 64 + 1];
        int32_t *stack = v->max_len + 1 <= (int)(sizeof st / sizeof *st)
                             ? st
                             : kv_malloc(((size_t)v->max_len + 1) * sizeof(int32_t));
        stack[0] = state;
        int count = 0;
        for (int i = 0; i < v->n_nodes;) {
            int depth = v->node_depth[i];
            int32_t s = sc_dfa_step(d, stack[depth - 1], v->node_byte[i]);
            if (s < 0) {
                i = v->node_skip[i];
                continue;
            }
            stack[depth] = s;
            for (int k = 0; k < v->node_n_tok[i]; k++) {
                int32_t t = v->sorted[v->node_tok[i] + k];
                m[t >> 6] |= 1ull << (t & 63);
                count++;
            }
            i++;
        }
        if (stack != st) free(stack);
        c->masks[state] = m;
        c->n_allowed[state] = count;
    }
    if (n_allowed) *n_allowed = c->n_allowed[state];
    return c->masks[state];
}

int sc_constraint_apply(sc_constraint *c, int32_t state, float *logits, int n_logits,
                        const int32_t *eos_ids, int n_eos) {
    int n_allowed;
    const uint64_t *m = sc_constraint_mask(c, state, &n_allowed);
    float eos_keep[16];
    int n_keep = n_eos < 16 ? n_eos : 16;
    for (int k = 0; k < n_keep; k++)
        eos_keep[k] = eos_ids[k] >= 0 && eos_ids[k] < n_logits ? logits[eos_ids[k]] : 0.0f;
    int n_tok = c->vocab->n_tokens < n_logits ? c->vocab->n_tokens : n_logits;
    /* whole words first: structural states allow few tokens, string states almost all */
    int n_full = n_tok / 64;
    for (int w = 0; w < n_full; w++) {
        uint64_t bits = m[w];
        float *r = logits + (size_t)w * 64;
        if (bits == ~0ull) continue;
        if (bits == 0) {
            for (int j = 0; j < 64; j++) r[j] = -INFINITY;
            continue;
        }
        for (uint64_t z = ~bits; z; z &= z - 1) r[__builtin_ctzll(z)] = -INFINITY;
    }
    for (int t = n_full * 64; t < n_tok; t++)
        if (!(m[t >> 6] >> (t & 63) & 1)) logits[t] = -INFINITY;
    for (int t = n_tok; t < n_logits; t++) logits[t] = -INFINITY;
    if (c->dfa->accept[state]) {
        for (int k = 0; k < n_keep; k++) {
            if (eos_ids[k] < 0 || eos_ids[k] >= n_logits) continue;
            bool was_allowed = eos_ids[k] < n_tok && (m[eos_ids[k] >> 6] >> (eos_ids[k] & 63) & 1);
            if (!was_allowed) n_allowed++;
            logits[eos_ids[k]] = eos_keep[k];
        }
    }
    return n_allowed;
}

int32_t sc_constraint_advance(const sc_constraint *c, int32_t state, int32_t token,
                              const int32_t *eos_ids, int n_eos) {
    if (state < 0) return -1;
    for (int k = 0; k < n_eos; k++)
        if (token == eos_ids[k]) return c->dfa->accept[state] ? state : -1;
    const sc_vocab *v = c->vocab;
    if (token < 0 || token >= v->n_tokens || v->off[token + 1] == v->off[token]) return -1;
    return sc_dfa_walk(c->dfa, state, v->bytes + v->off[token], v->off[token + 1] - v->off[token]);
}
