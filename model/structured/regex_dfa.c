/* Regex -> (regex_parse.c) AST -> Thompson NFA over byte sets -> DFA by subset construction over
 * byte classes, then dead states trimmed. */
#include "model/structured/regex_internal.h"

#include <stdlib.h>
#include <string.h>

void sc_limits_default(sc_limits *l) {
    l->max_regex_bytes = 256 * 1024;
    l->max_nfa_nodes = 200000;
    l->max_dfa_states = 20000;
    l->max_depth = 6;
}

/* ---- NFA ---- */

typedef struct nfa_edge {
    int to, next;
} nfa_edge;

typedef struct nfa {
    int *set;      /* [n] byte set index, -1 = epsilon-only node */
    int *target;   /* [n] where a byte of the set leads */
    int *eps_head; /* [n] first epsilon edge */
    int n, cap;
    nfa_edge *edges;
    int n_edges, cap_edges;
    bset *sets;
    int n_sets, cap_sets;
    int max_nodes;
    bool over;
} nfa;

static int nfa_new(nfa *a) {
    if (a->n >= a->max_nodes) {
        a->over = true;
        return 0;
    }
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 256;
        a->set = kv_realloc(a->set, (size_t)a->cap * sizeof(int));
        a->target = kv_realloc(a->target, (size_t)a->cap * sizeof(int));
        a->eps_head = kv_realloc(a->eps_head, (size_t)a->cap * sizeof(int));
    }
    a->set[a->n] = -1;
    a->target[a->n] = -1;
    a->eps_head[a->n] = -1;
    return a->n++;
}

static void nfa_eps(nfa *a, int from, int to) {
    if (a->over) return;
    if (a->n_edges == a->cap_edges) {
        a->cap_edges = a->cap_edges ? 2 * a->cap_edges : 256;
        a->edges = kv_realloc(a->edges, (size_t)a->cap_edges * sizeof *a->edges);
    }
    a->edges[a->n_edges] = (nfa_edge){to, a->eps_head[from]};
    a->eps_head[from] = a->n_edges++;
}

/* Adds transitions for node x starting at NFA node from; returns the exit node. */
static int nfa_build(nfa *a, const rx_node *ns, int x, int from) {
    if (a->over) return from;
    const rx_node *n = &ns[x];
    switch (n->kind) {
    case RX_EMPTY:
        return from;
    case RX_SET: {
        int c = nfa_new(a), t = nfa_new(a);
        if (a->over) return from;
        if (a->n_sets == a->cap_sets) {
            a->cap_sets = a->cap_sets ? 2 * a->cap_sets : 64;
            a->sets = kv_realloc(a->sets, (size_t)a->cap_sets * sizeof *a->sets);
        }
        a->sets[a->n_sets] = n->set;
        a->set[c] = a->n_sets++;
        a->target[c] = t;
        nfa_eps(a, from, c);
        return t;
    }
    case RX_CAT:
        return nfa_build(a, ns, n->b, nfa_build(a, ns, n->a, from));
    case RX_ALT: {
        int t = nfa_new(a);
        int x1 = nfa_new(a), x2 = nfa_new(a);
        nfa_eps(a, from, x1);
        nfa_eps(a, from, x2);
        nfa_eps(a, nfa_build(a, ns, n->a, x1), t);
        nfa_eps(a, nfa_build(a, ns, n->b, x2), t);
        return t;
    }
    case RX_REPEAT: {
        int cur = from;
        for (int i = 0; i < n->min && !a->over; i++) {
            int x1 = nfa_new(a); /* a fresh entry per copy keeps copies apart */
            nfa_eps(a, cur, x1);
            cur = nfa_build(a, ns, n->a, x1);
        }
        if (n->max < 0) {
            int loop = nfa_new(a);
            nfa_eps(a, cur, loop);
            int x1 = nfa_new(a);
            nfa_eps(a, loop, x1);
            nfa_eps(a, nfa_build(a, ns, n->a, x1), loop);
            return loop;
        }
        int t = nfa_new(a);
        nfa_eps(a, cur, t);
        for (int i = n->min; i < n->max && !a->over; i++) {
            int x1 = nfa_new(a);
            nfa_eps(a, cur, x1);
            cur = nfa_build(a, ns, n->a, x1);
            nfa_eps(a, cur, t);
        }
        return t;
    }
    }
    return from;
}

static void nfa_free(nfa *a) {
    free(a->set), free(a->target), free(a->eps_head), free(a->edges), free(a->sets);
}

/* ---- subset construction ---- */

typedef struct dstate_table {
    int *off, *len; /* [n_states] into pool */
    int *pool;      /* sorted byte-node ids of each state */
    size_t n_pool, cap_pool;
    int n, cap;
    int *slots; /* open addressing: state id or -1 */
    size_t n_slots;
} dstate_table;

static uint64_t hash_ids(const int *ids, int n, bool acc) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)acc;
    for (int i = 0; i < n; i++) h = (h ^ (uint64_t)(uint32_t)ids[i]) * 1099511628211ull;
    return h;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

typedef struct closure_ctx {
    const nfa *a;
    int accept_node;
    int *mark;
    int stamp;
    int *stack;
    int *out;
} closure_ctx;

/* Epsilon closure of seeds: the byte nodes reached (sorted into c->out) and whether the accept
 * node is reached. */
static int closure(closure_ctx *c, const int *seeds, int n_seeds, bool *acc) {
    c->stamp++;
    int sp = 0, n_out = 0;
    *acc = false;
    for (int i = 0; i < n_seeds; i++)
        if (c->mark[seeds[i]] != c->stamp) c->mark[seeds[i]] = c->stamp, c->stack[sp++] = seeds[i];
    while (sp > 0) {
        int x = c->stack[--sp];
        if (x == c->accept_node) *acc = true;
        if (c->a->set[x] >= 0) c->out[n_out++] = x;
        for (int e = c->a->eps_head[x]; e >= 0; e = c->a->edges[e].next) {
            int y = c->a->edges[e].to;
            if (c->mark[y] != c->stamp) c->mark[y] = c->stamp, c->stack[sp++] = y;
        }
    }
    qsort(c->out, (size_t)n_out, sizeof(int), cmp_int);
    return n_out;
}

/* State id of the set, adding it when new (-2 when over the limit). */
static int table_get(dstate_table *t, bool **accept, const int *ids, int n, bool acc, int max) {
    uint64_t h = hash_ids(ids, n, acc);
    size_t i = (size_t)h & (t->n_slots - 1);
    while (t->slots[i] >= 0) {
        int s = t->slots[i];
        if (t->len[s] == n && (*accept)[s] == acc &&
            !memcmp(t->pool + t->off[s], ids, (size_t)n * sizeof(int)))
            return s;
        i = (i + 1) & (t->n_slots - 1);
    }
    if (t->n >= max) return -2;
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->off = kv_realloc(t->off, (size_t)t->cap * sizeof(int));
        t->len = kv_realloc(t->len, (size_t)t->cap * sizeof(int));
        *accept = kv_realloc(*accept, (size_t)t->cap * sizeof(bool));
    }
    if (t->n_pool + (size_t)n > t->cap_pool) {
        while (t->n_pool + (size_t)n > t->cap_pool)
            t->cap_pool = t->cap_pool ? 2 * t->cap_pool : 1024;
        t->pool = kv_realloc(t->pool, t->cap_pool * sizeof(int));
    }
    memcpy(t->pool + t->n_pool, ids, (size_t)n * sizeof(int));
    int s = t->n++;
    t->off[s] = (int)t->n_pool;
    t->len[s] = n;
    (*accept)[s] = acc;
    t->n_pool += (size_t)n;
    t->slots[i] = s;
    if ((size_t)t->n * 2 > t->n_slots) { /* grow and rehash */
        free(t->slots);
        t->n_slots *= 2;
        t->slots = kv_malloc(t->n_slots * sizeof(int));
        for (size_t k = 0; k < t->n_slots; k++) t->slots[k] = -1;
        for (int q = 0; q < t->n; q++) {
            size_t j =
                (size_t)hash_ids(t->pool + t->off[q], t->len[q], (*accept)[q]) & (t->n_slots - 1);
            while (t->slots[j] >= 0) j = (j + 1) & (t->n_slots - 1);
            t->slots[j] = q;
        }
    }
    return s;
}

/* The signature of state s under partition part: its block, then the block of each target. */
static uint64_t sig_hash(const sc_dfa *d, const int *part, int s) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uint32_t)part[s];
    const int32_t *row = d->delta + (size_t)s * d->n_classes;
    for (int c = 0; c < d->n_classes; c++)
        h = (h ^ (uint64_t)(uint32_t)(row[c] < 0 ? -1 : part[row[c]])) * 1099511628211ull;
    return h;
}

static bool sig_equal(const sc_dfa *d, const int *part, int a, int b) {
    if (part[a] != part[b]) return false;
    const int32_t *ra = d->delta + (size_t)a * d->n_classes,
                  *rb = d->delta + (size_t)b * d->n_classes;
    for (int c = 0; c < d->n_classes; c++) {
        int x = ra[c] < 0 ? -1 : part[ra[c]], y = rb[c] < 0 ? -1 : part[rb[c]];
        if (x != y) return false;
    }
    return true;
}

#define MINIMIZE_BUDGET 20000000LL /* state x class visits, ~20 ms */

/* Merges equivalent states (Moore's partition refinement): the copies {m,n} expansion and the
 * two-copies-per-list regexes of JSON make are folded back, so fewer masks are ever built. */
static void dfa_minimize(sc_dfa *d) {
    int n = d->n_states, nc = d->n_classes;
    int *part = kv_malloc((size_t)n * sizeof(int)), *next = kv_malloc((size_t)n * sizeof(int));
    size_t n_slots = 16;
    while (n_slots < 2 * (size_t)n) n_slots *= 2;
    int *slots = kv_malloc(n_slots * sizeof(int));
    for (int q = 0; q < n; q++) part[q] = d->accept[q] ? 1 : 0;
    int n_blocks = 0, prev = -1;
    long long work = 0;
    while (n_blocks != prev) {
        /* each round costs n x classes; long refinement chains (long bounded strings) are cut
         * off: the unminimized DFA is just as correct, only larger */
        work += (long long)n * nc;
        if (work > MINIMIZE_BUDGET) {
            free(part), free(next), free(slots);
            return;
        }
        prev = n_blocks;
        for (size_t k = 0; k < n_slots; k++) slots[k] = -1;
        n_blocks = 0;
        for (int q = 0; q < n; q++) {
            size_t i = (size_t)sig_hash(d, part, q) & (n_slots - 1);
            while (slots[i] >= 0 && !sig_equal(d, part, slots[i], q)) i = (i + 1) & (n_slots - 1);
            if (slots[i] < 0) {
                slots[i] = q;
                next[q] = n_blocks++;
            } else {
                next[q] = next[slots[i]];
            }
        }
        memcpy(part, next, (size_t)n * sizeof(int));
    }
    if (n_blocks < n) {
        int32_t *delta = kv_malloc((size_t)n_blocks * nc * sizeof(int32_t));
        bool *accept = kv_malloc((size_t)n_blocks * sizeof(bool));
        for (int q = 0; q < n; q++) {
            accept[part[q]] = d->accept[q];
            for (int c = 0; c < nc; c++) {
                int32_t t = d->delta[(size_t)q * nc + c];
                delta[(size_t)part[q] * nc + c] = t < 0 ? -1 : part[t];
            }
        }
        free(d->delta);
        free(d->accept);
        d->delta = delta;
        d->accept = accept;
        d->start = part[d->start];
        d->n_states = n_blocks;
    }
    free(part), free(next), free(slots);
}

/* Marks states that cannot reach an accepting state dead (their transitions in become -1). */
static void dfa_trim(sc_dfa *d) {
    bool *live = kv_calloc((size_t)d->n_states, sizeof(bool));
    for (int s = 0; s < d->n_states; s++) live[s] = d->accept[s];
    for (bool changed = true; changed;) {
        changed = false;
        for (int s = d->n_states - 1; s >= 0; s--) {
            if (live[s]) continue;
            for (int c = 0; c < d->n_classes; c++) {
                int32_t t = d->delta[(size_t)s * d->n_classes + c];
                if (t >= 0 && live[t]) {
                    live[s] = true, changed = true;
                    break;
                }
            }
        }
    }
    for (size_t k = 0; k < (size_t)d->n_states * d->n_classes; k++)
        if (d->delta[k] >= 0 && !live[d->delta[k]]) d->delta[k] = -1;
    if (!live[d->start]) d->start = -1;
    free(live);
}

static int dfa_build(const nfa *a, int start_node, int accept_node, const sc_limits *lim, sc_dfa *d,
                     kv_error *err) {
    /* byte classes: bytes no set tells apart share a class */
    int n_cls = 1;
    memset(d->cls, 0, sizeof d->cls);
    int remap[512];
    for (int k = 0; k < a->n_sets; k++) {
        for (int q = 0; q < 2 * n_cls; q++) remap[q] = -1;
        int next = 0;
        uint8_t nc[256];
        for (int b = 0; b < 256; b++) {
            int key = d->cls[b] * 2 + (bset_has(&a->sets[k], b) ? 1 : 0);
            if (remap[key] < 0) remap[key] = next++;
            nc[b] = (uint8_t)remap[key];
        }
        memcpy(d->cls, nc, sizeof nc);
        n_cls = next;
    }
    d->n_classes = n_cls;
    int rep[256];
    for (int b = 255; b >= 0; b--) rep[d->cls[b]] = b;

    closure_ctx c = {.a = a, .accept_node = accept_node};
    c.mark = kv_calloc((size_t)a->n, sizeof(int));
    c.stack = kv_malloc((size_t)a->n * sizeof(int));
    c.out = kv_malloc((size_t)a->n * sizeof(int));
    int *seeds = kv_malloc((size_t)a->n * sizeof(int));
    dstate_table t = {0};
    t.n_slots = 1024;
    t.slots = kv_malloc(t.n_slots * sizeof(int));
    for (size_t k = 0; k < t.n_slots; k++) t.slots[k] = -1;
    bool *accept = NULL;
    size_t cap_delta = 0;
    int32_t *delta = NULL;
    int rc = 0;

    bool acc;
    int n = closure(&c, &start_node, 1, &acc);
    d->start = table_get(&t, &accept, c.out, n, acc, lim->max_dfa_states);
    for (int s = 0; s < t.n && rc == 0; s++) {
        if ((size_t)(s + 1) * (size_t)n_cls > cap_delta) {
            cap_delta = cap_delta ? 2 * cap_delta : (size_t)n_cls * 64;
            delta = kv_realloc(delta, cap_delta * sizeof(int32_t));
        }
        for (int cl = 0; cl < n_cls; cl++) {
            int b = rep[cl], n_seeds = 0;
            for (int k = 0; k < t.len[s]; k++) {
                int x = t.pool[t.off[s] + k];
                if (bset_has(&a->sets[a->set[x]], b)) seeds[n_seeds++] = a->target[x];
            }
            int32_t to = -1;
            if (n_seeds > 0) {
                n = closure(&c, seeds, n_seeds, &acc);
                to = table_get(&t, &accept, c.out, n, acc, lim->max_dfa_states);
                if (to == -2) {
                    rc = kv_error_set(err,
                                      "constraint too complex: its automaton needs more than %d "
                                      "states (max_dfa_states)",
                                      lim->max_dfa_states);
                    break;
                }
            }
            delta[(size_t)s * n_cls + cl] = to;
        }
    }
    d->n_states = t.n;
    d->delta = delta;
    d->accept = accept;
    free(c.mark), free(c.stack), free(c.out), free(seeds);
    free(t.off), free(t.len), free(t.pool), free(t.slots);
    return rc;
}

int sc_regex_compile(const char *re, size_t len, const sc_limits *lim, sc_dfa **out,
                     kv_error *err) {
    *out = NULL;
    sc_limits def;
    if (!lim) sc_limits_default(&def), lim = &def;
    if (len > lim->max_regex_bytes)
        return kv_error_set(err, "regex: %zu bytes, over the limit of %zu (max_regex_bytes)", len,
                            lim->max_regex_bytes);
    rx_node *nodes;
    int n_nodes;
    int root = sc_regex_parse(re, len, lim, &nodes, &n_nodes, err);
    if (root < 0) return -1;
    nfa a = {.max_nodes = lim->max_nfa_nodes};
    int start = nfa_new(&a);
    int accept = nfa_build(&a, nodes, root, start);
    free(nodes);
    if (a.over) {
        nfa_free(&a);
        return kv_error_set(err, "regex: too large: more than %d automaton nodes (max_nfa_nodes)",
                            lim->max_nfa_nodes);
    }
    sc_dfa *d = kv_calloc(1, sizeof *d);
    int rc = dfa_build(&a, start, accept, lim, d, err);
    nfa_free(&a);
    if (rc == 0) {
        dfa_trim(d);
        if (d->start < 0) rc = kv_error_set(err, "constraint admits no output at all");
        if (rc == 0) dfa_minimize(d);
    }
    if (rc) {
        sc_dfa_free(d);
        return -1;
    }
    *out = d;
    return 0;
}

void sc_dfa_free(sc_dfa *d) {
    if (!d) return;
    free(d->delta);
    free(d->accept);
    free(d);
}

int32_t sc_dfa_walk(const sc_dfa *d, int32_t s, const uint8_t *bytes, size_t n) {
    for (size_t i = 0; i < n && s >= 0; i++) s = sc_dfa_step(d, s, bytes[i]);
    return s;
}

bool sc_dfa_matches(const sc_dfa *d, const char *s, size_t n) {
    int32_t st = sc_dfa_walk(d, d->start, (const uint8_t *)s, n);
    return st >= 0 && d->accept[st];
}
