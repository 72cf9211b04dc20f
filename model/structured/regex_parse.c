/* The regex parser: recursive descent into the AST of regex_internal.h, UTF-8 aware ('.', negated
 * classes and \D\W\S take whole valid multi-byte characters; non-ASCII literals become their byte
 * sequences). Bounded: group nesting, node count (max_nfa_nodes), repetition counts. */
#include <stdlib.h>
#include <string.h>

#include "model/structured/regex_internal.h"

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

int sc_regex_parse(const char *re, size_t len, const sc_limits *lim, rx_node **nodes, int *n_nodes,
                   kv_error *err) {
    rx_parser p = {.s = re, .n = len, .lim = lim, .err = err};
    int root = rx_alt(&p);
    if (root >= 0 && p.i < p.n) root = rx_fail(&p, "regex: %s at byte %d", "unbalanced )");
    if (root < 0 || p.failed) {
        free(p.nodes);
        *nodes = NULL;
        *n_nodes = 0;
        return -1;
    }
    *nodes = p.nodes;
    *n_nodes = p.n_nodes;
    return root;
}
