/* Regex -> AST (recursive descent) -> Thompson NFA over byte sets -> DFA by subset construction
 * over byte classes, then dead states trimmed. UTF-8 aware: '.', negated classes and \D\W\S take
 * whole (valid) multi-byte characters; non-ASCII literals become their byte sequences. */
#include "model/structured/regex_dfa.h"

#include <stdlib.h>
#include <string.h>

void sc_limits_default(sc_limits *l) {
    l->max_regex_bytes = 256 * 1024;
    l->max_nfa_nodes = 200000;
    l->max_dfa_states = 20000;
    l->max_depth = 6;
}

/* ---- byte sets ---- */

typedef struct bset {
    uint8_t b[32];
} bset;

static void bset_add(bset *s, int lo, int hi) {
    for (int c = lo; c <= hi; c++) s->b[c >> 3] |= (uint8_t)(1u << (c & 7));
}
static bool bset_has(const bset *s, int c) {
    return s->b[c >> 3] & (1u << (c & 7));
}
static bool bset_empty(const bset *s) {
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

typedef struct rx_parser {
    const char *s;
    size_t n, i;
    rx_node *nodes;
    int n_nodes, cap;
    int depth;
    const sc_limits *lim;
    kv_error *err;
    bool failed;
} rx_parser;

static int rx_fail(rx_parser *p, const char *fmt, const char *what) {
    if (!p->failed) kv_error_set(p->err, fmt, what, (int)p->i);
    p->failed = true;
    return -1;
}

static int rx_new(rx_parser *p, rx_kind k) {
    if (p->n_nodes >= p->lim->max_nfa_nodes)
        return rx_fail(p, "regex: too large (%s, at byte %d)", "more nodes than max_nfa_nodes");
    if (p->n_nodes == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->nodes = kv_realloc(p->nodes, (size_t)p->cap * sizeof *p->nodes);
    }
    p->nodes[p->n_nodes] = (rx_node){.kind = k, .a = -1, .b = -1};
    return p->n_nodes++;
}

static int rx_bin(rx_parser *p, rx_kind k, int a, int b) {
    if (a < 0 || b < 0) return -1;
    int n = rx_new(p, k);
    if (n < 0) return -1;
    p->nodes[n].a = a;
    p->nodes[n].b = b;
    return n;
}

static int rx_set(rx_parser *p, const bset *s) {
    int n = rx_new(p, RX_SET);
    if (n >= 0) p->nodes[n].set = *s;
    return n;
}

static int rx_range(rx_parser *p, int lo, int hi) {
    bset s = {{0}};
    bset_add(&s, lo, hi);
    return rx_set(p, &s);
}

/* A byte range followed by cont continuation bytes (the first of them in [lo2, hi2]). */
static int rx_utf8_seq(rx_parser *p, int lo, int hi, int lo2, int hi2, int cont) {
    int r = rx_bin(p, RX_CAT, rx_range(p, lo, hi), rx_range(p, lo2, hi2));
    for (int k = 1; k < cont; k++) r = rx_bin(p, RX_CAT, r, rx_range(p, 0x80, 0xbf));
    return r;
}

/* Any valid UTF-8 encoded character of 2..4 bytes (no overlongs, surrogates or > U+10FFFF). */
static int rx_multibyte(rx_parser *p) {
    static const int seqs[][5] = {{0xc2, 0xdf, 0x80, 0xbf, 1}, {0xe0, 0xe0, 0xa0, 0xbf, 2},
                                  {0xe1, 0xec, 0x80, 0xbf, 2}, {0xed, 0xed, 0x80, 0x9f, 2},
                                  {0xee, 0xef, 0x80, 0xbf, 2}, {0xf0, 0xf0, 0x90, 0xbf, 3},
                                  {0xf1, 0xf3, 0x80, 0xbf, 3}, {0xf4, 0xf4, 0x80, 0x8f, 3}};
    int r = -1;
    for (size_t k = 0; k < sizeof seqs / sizeof seqs[0]; k++) {
        const int *q = seqs[k];
        int x = rx_utf8_seq(p, q[0], q[1], q[2], q[3], q[4]);
        r = r < 0 ? x : rx_bin(p, RX_ALT, r, x);
    }
    return r;
}

/* UTF-8 bytes of code point cp into out; returns the count. */
static int utf8_put(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) return out[0] = (uint8_t)cp, 1;
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

static int rx_bytes(rx_parser *p, const uint8_t *b, int n) {
    int r = rx_range(p, b[0], b[0]);
    for (int k = 1; k < n; k++) r = rx_bin(p, RX_CAT, r, rx_range(p, b[k], b[k]));
    return r;
}

/* Decodes one UTF-8 character of the regex text at p->i (advancing); -1 when invalid. */
static int32_t rx_char(rx_parser *p) {
    const uint8_t *s = (const uint8_t *)p->s;
    uint8_t c = s[p->i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || p->i + (size_t)len > p->n) return -1;
    int32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
    for (int k = 1; k < len; k++) {
        if ((s[p->i + (size_t)k] & 0xc0) != 0x80) return -1;
        cp = (cp << 6) | (s[p->i + (size_t)k] & 0x3f);
    }
    p->i += (size_t)len;
    return cp;
}

/* A character class being built: ASCII/byte members, non-ASCII code point ranges, and whether
 * every multi-byte character is in (from a negated shorthand). */
typedef struct rx_class {
    bset ascii;
    bool all_multibyte;
    uint32_t ranges[64][2];
    int n_ranges;
} rx_class;

static void class_shorthand(rx_class *c, char k) {
    bset s = {{0}};
    char lk = (char)(k | 0x20);
    if (lk == 'd') bset_add(&s, '0', '9');
    if (lk == 'w')
        bset_add(&s, '0', '9'), bset_add(&s, 'a', 'z'), bset_add(&s, 'A', 'Z'),
            bset_add(&s, '_', '_');
    if (lk == 's') bset_add(&s, '\t', '\r'), bset_add(&s, ' ', ' ');
    if (k >= 'A' && k <= 'Z') { /* negated: every other ASCII char and all multi-byte ones */
        for (int b = 0; b < 128; b++)
            if (!bset_has(&s, b)) bset_add(&c->ascii, b, b);
        c->all_multibyte = true;
    } else {
        for (int i = 0; i < 32; i++) c->ascii.b[i] |= s.b[i];
    }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* After a backslash: a single character escape; returns the code point, or -2 for a shorthand
 * class (written into *sh), -1 on error. */
static int32_t rx_escape(rx_parser *p, char *sh) {
    if (p->i >= p->n) return rx_fail(p, "regex: %s at byte %d", "trailing backslash");
    char c = p->s[p->i++];
    switch (c) {
    case 'd':
    case 'D':
    case 'w':
    case 'W':
    case 's':
    case 'S':
        *sh = c;
        return -2;
    case 'n':
        return '\n';
    case 't':
        return '\t';
    case 'r':
        return '\r';
    case 'f':
        return '\f';
    case 'v':
        return '\v';
    case '0':
        return 0;
    case 'x':
    case 'u': {
        int nd = c == 'x' ? 2 : 4;
        int32_t v = 0;
        if (c == 'u' && p->i < p->n && p->s[p->i] == '{') {
            p->i++;
            nd = 0;
            while (p->i < p->n && p->s[p->i] != '}' && nd < 6) {
                int h = hexval(p->s[p->i++]);
                if (h < 0) return rx_fail(p, "regex: %s at byte %d", "bad \\u{...} escape");
                v = v * 16 + h, nd++;
            }
            if (p->i >= p->n || p->s[p->i] != '}' || nd == 0 || v > 0x10ffff)
                return rx_fail(p, "regex: %s at byte %d", "bad \\u{...} escape");
            p->i++;
            return v;
        }
        for (int k = 0; k < nd; k++) {
            int h = p->i < p->n ? hexval(p->s[p->i]) : -1;
            if (h < 0) return rx_fail(p, "regex: %s at byte %d", "bad \\x or \\u escape");
            v = v * 16 + h;
            p->i++;
        }
        if (v >= 0xd800 && v <= 0xdfff)
            return rx_fail(p, "regex: %s at byte %d", "surrogate \\u escapes are not supported");
        return v;
    }
    case 'b':
    case 'B':
    case 'A':
    case 'z':
    case 'Z':
    case 'p':
    case 'P':
    case 'k':
    case 'G':
        return rx_fail(p, "regex: %s at byte %d",
                       "unsupported escape (\\b \\B \\A \\z \\p \\k or a backreference)");
    default:
        if (c >= '1' && c <= '9')
            return rx_fail(p, "regex: %s at byte %d", "backreferences are not supported");
        if ((unsigned char)c >= 0x80) {
            p->i--;
            return rx_char(p);
        }
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            return rx_fail(p, "regex: %s at byte %d", "unknown escape");
        return (unsigned char)c; /* an escaped punctuation character */
    }
}

static int class_add(rx_parser *p, rx_class *c, int32_t lo, int32_t hi) {
    if (lo > hi) return rx_fail(p, "regex: %s at byte %d", "character range out of order");
    if (lo < 128) {
        bset_add(&c->ascii, lo, hi < 127 ? hi : 127);
        lo = 128;
    }
    if (lo > hi) return 0;
    if (c->n_ranges == 64)
        return rx_fail(p, "regex: %s at byte %d", "too many non-ASCII ranges in a class");
    c->ranges[c->n_ranges][0] = (uint32_t)lo;
    c->ranges[c->n_ranges][1] = (uint32_t)hi;
    c->n_ranges++;
    return 0;
}

/* Node of a finished class: the ASCII set, then each non-ASCII character as its byte sequence
 * (at most 512 of them), or every multi-byte character. */
static int class_node(rx_parser *p, const rx_class *c, bool negated) {
    bset ascii = c->ascii;
    bool multi = c->all_multibyte;
    if (negated) {
        if (c->n_ranges > 0 || c->all_multibyte)
            return rx_fail(p, "regex: %s at byte %d",
                           "negated classes with non-ASCII members are not supported");
        bset neg = {{0}};
        for (int b = 0; b < 128; b++)
            if (!bset_has(&ascii, b)) bset_add(&neg, b, b);
        ascii = neg;
        multi = true;
    }
    int r = bset_empty(&ascii) ? -1 : rx_set(p, &ascii);
    if (multi) {
        int m = rx_multibyte(p);
        r = r < 0 ? m : rx_bin(p, RX_ALT, r, m);
    } else {
        long total = 0;
        for (int k = 0; k < c->n_ranges; k++) total += c->ranges[k][1] - c->ranges[k][0] + 1;
        if (total > 512)
            return rx_fail(p, "regex: %s at byte %d",
                           "non-ASCII class ranges over 512 characters are not supported");
        for (int k = 0; k < c->n_ranges; k++) {
            for (uint32_t cp = c->ranges[k][0]; cp <= c->ranges[k][1]; cp++) {
                uint8_t b[4];
                int n = rx_bytes(p, b, utf8_put(cp, b));
                r = r < 0 ? n : rx_bin(p, RX_ALT, r, n);
            }
        }
    }
    if (r < 0 && !p->failed) {
        bset none = {{0}}; /* an empty class matches nothing */
        r = rx_set(p, &none);
    }
    return r;
}

static int rx_class_parse(rx_parser *p) {
    rx_class c;
    memset(&c, 0, sizeof c);
    bool negated = false;
    if (p->i < p->n && p->s[p->i] == '^') negated = true, p->i++;
    bool first = true;
    while (p->i < p->n && (p->s[p->i] != ']' || first)) {
        first = false;
        int32_t lo;
        char sh = 0;
        if (p->s[p->i] == '\\') {
            p->i++;
            lo = rx_escape(p, &sh);
            if (lo == -1) return -1;
            if (lo == -2) {
                class_shorthand(&c, sh);
                continue;
            }
        } else if (p->s[p->i] == '[' && p->i + 1 < p->n && p->s[p->i + 1] == ':') {
            return rx_fail(p, "regex: %s at byte %d", "POSIX classes [:...:] are not supported");
        } else {
            lo = rx_char(p);
            if (lo < 0) return rx_fail(p, "regex: %s at byte %d", "invalid UTF-8");
        }
        int32_t hi = lo;
        if (p->i + 1 < p->n && p->s[p->i] == '-' && p->s[p->i + 1] != ']') {
            p->i++;
            if (p->s[p->i] == '\\') {
                p->i++;
                hi = rx_escape(p, &sh);
                if (hi == -1) return -1;
                if (hi == -2)
                    return rx_fail(p, "regex: %s at byte %d", "class range to \\d/\\w/\\s");
            } else {
                hi = rx_char(p);
                if (hi < 0) return rx_fail(p, "regex: %s at byte %d", "invalid UTF-8");
            }
        }
        if (class_add(p, &c, lo, hi)) return -1;
    }
    if (p->i >= p->n) return rx_fail(p, "regex: %s at byte %d", "unterminated [ class");
    p->i++; /* ] */
    return class_node(p, &c, negated);
}

static int rx_alt(rx_parser *p);

static int rx_atom(rx_parser *p) {
    char c = p->s[p->i];
    if (c == '(') {
        p->i++;
        if (p->n - p->i >= 3 && !memcmp(p->s + p->i, "?!)", 3)) { /* (?!): matches nothing */
            p->i += 3;
            bset none = {{0}};
            return rx_set(p, &none);
        }
        if (p->i < p->n && p->s[p->i] == '?') {
            p->i++;
            if (p->i < p->n && p->s[p->i] == ':') {
                p->i++;
            } else if (p->i < p->n && (p->s[p->i] == 'P' || p->s[p->i] == '<') &&
                       !(p->i + 1 < p->n && (p->s[p->i + 1] == '=' || p->s[p->i + 1] == '!'))) {
                while (p->i < p->n && p->s[p->i] != '>') p->i++; /* named group: name ignored */
                if (p->i >= p->n) return rx_fail(p, "regex: %s at byte %d", "bad group name");
                p->i++;
            } else {
                return rx_fail(p, "regex: %s at byte %d",
                               "lookaround and inline flags (?...) are not supported");
            }
        }
        if (++p->depth > 64) return rx_fail(p, "regex: %s at byte %d", "groups nested too deep");
        int r = rx_alt(p);
        p->depth--;
        if (r < 0) return -1;
        if (p->i >= p->n || p->s[p->i] != ')')
            return rx_fail(p, "regex: %s at byte %d", "missing )");
        p->i++;
        return r;
    }
    if (c == '[') {
        p->i++;
        return rx_class_parse(p);
    }
    if (c == '.') {
        p->i++;
        bset s = {{0}};
        bset_add(&s, 0, 9);
        bset_add(&s, 11, 127);
        return rx_bin(p, RX_ALT, rx_set(p, &s), rx_multibyte(p));
    }
    if (c == '^' || c == '$') { /* the match is always whole: anchors match nothing extra */
        p->i++;
        return rx_new(p, RX_EMPTY);
    }
    if (c == '\\') {
        p->i++;
        char sh = 0;
        int32_t cp = rx_escape(p, &sh);
        if (cp == -1) return -1;
        if (cp == -2) {
            rx_class cl;
            memset(&cl, 0, sizeof cl);
            class_shorthand(&cl, sh);
            return class_node(p, &cl, false);
        }
        uint8_t b[4];
        return rx_bytes(p, b, utf8_put((uint32_t)cp, b));
    }
    if (c == '*' || c == '+' || c == '?' || c == '{')
        return rx_fail(p, "regex: %s at byte %d", "quantifier without a target");
    int32_t cp = rx_char(p);
    if (cp < 0) return rx_fail(p, "regex: %s at byte %d", "invalid UTF-8");
    uint8_t b[4];
    return rx_bytes(p, b, utf8_put((uint32_t)cp, b));
}

/* {m}, {m,}, {m,n} at p->i (after '{'); false (p->i restored) when it is not a quantifier. */
static bool rx_braces(rx_parser *p, int *min, int *max) {
    size_t save = p->i;
    long a = -1, b = -1;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9' && a < 100000)
        a = (a < 0 ? 0 : a * 10) + (p->s[p->i++] - '0');
    if (p->i < p->n && p->s[p->i] == ',') {
        p->i++;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9' && b < 100000)
            b = (b < 0 ? 0 : b * 10) + (p->s[p->i++] - '0');
        if (a < 0) a = 0;
    } else {
        b = a;
    }
    if (a < 0 || p->i >= p->n || p->s[p->i] != '}') {
        p->i = save;
        return false;
    }
    p->i++;
    *min = (int)a;
    *max = (int)b;
    return true;
}

static int rx_repeat(rx_parser *p) {
    int r = rx_atom(p);
    while (r >= 0 && p->i < p->n) {
        char c = p->s[p->i];
        int min, max;
        if (c == '*')
            min = 0, max = -1, p->i++;
        else if (c == '+')
            min = 1, max = -1, p->i++;
        else if (c == '?')
            min = 0, max = 1, p->i++;
        else if (c == '{') {
            p->i++;
            if (!rx_braces(p, &min, &max)) {
                p->i--;
                break;
            }
            if (max >= 0 && max < min)
                return rx_fail(p, "regex: %s at byte %d", "{m,n} with n < m");
            if (min > 10000 || max > 10000)
                return rx_fail(p, "regex: %s at byte %d", "repetition count over 10000");
        } else
            break;
        if (p->i < p->n && (p->s[p->i] == '?' || p->s[p->i] == '+')) p->i++; /* lazy/possessive */
        int n = rx_new(p, RX_REPEAT);
        if (n < 0) return -1;
        p->nodes[n].a = r;
        p->nodes[n].min = min;
        p->nodes[n].max = max;
        r = n;
    }
    return r;
}

static int rx_cat(rx_parser *p) {
    int r = rx_new(p, RX_EMPTY);
    while (r >= 0 && p->i < p->n && p->s[p->i] != '|' && p->s[p->i] != ')')
        r = rx_bin(p, RX_CAT, r, rx_repeat(p));
    return r;
}

static int rx_alt(rx_parser *p) {
    int r = rx_cat(p);
    while (r >= 0 && p->i < p->n && p->s[p->i] == '|') {
        p->i++;
        r = rx_bin(p, RX_ALT, r, rx_cat(p));
    }
    return r;
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
    rx_parser p = {.s = re, .n = len, .lim = lim, .err = err};
    int root = rx_alt(&p);
    if (root >= 0 && p.i < p.n) root = rx_fail(&p, "regex: %s at byte %d", "unbalanced )");
    if (root < 0 || p.failed) {
        free(p.nodes);
        return -1;
    }
    nfa a = {.max_nodes = lim->max_nfa_nodes};
    int start = nfa_new(&a);
    int accept = nfa_build(&a, p.nodes, root, start);
    free(p.nodes);
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
