/* Tokenizer plumbing: byte buffers, UTF-8 validation and lossy decoding, the vocabulary and
 * merge hash tables, and regex/literal pattern search with Hugging Face's split-span rules.
 * Owns no tokenizer state; every function works on what it is handed. */
#include <stdio.h>
#include <stdlib.h>

#include <utf8proc.h>

#include "model/tokenizer/tokenizer_internal.h"

/* ---- buffers ---- */

void tok_buf_reserve(tok_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    b->data = kv_realloc(b->data, cap);
    b->cap = cap;
}

void tok_buf_append(tok_buf *b, const char *s, size_t n) {
    tok_buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

void tok_buf_push(tok_buf *b, char c) {
    tok_buf_append(b, &c, 1);
}

void tok_buf_free(tok_buf *b) {
    free(b->data);
    *b = (tok_buf){0};
}

void tok_ids_push(tok_ids *v, int32_t id) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->data = kv_realloc(v->data, (size_t)v->cap * sizeof(int32_t));
    }
    v->data[v->n++] = id;
}

void tok_spans_push(tok_spans *v, size_t start, size_t end, bool is_match) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 32;
        v->data = kv_realloc(v->data, (size_t)v->cap * sizeof(tok_span));
    }
    v->data[v->n++] = (tok_span){start, end, is_match};
}

/* ---- UTF-8 ---- */

int tok_utf8_len(uint8_t c) {
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) return 2;
    if ((c & 0xf0) == 0xe0) return 3;
    return 4;
}

int tok_utf8_decode(const char *s, int32_t *cp) {
    const uint8_t *u = (const uint8_t *)s;
    int n = tok_utf8_len(u[0]);
    switch (n) {
    case 1:
        *cp = u[0];
        break;
    case 2:
        *cp = ((u[0] & 0x1f) << 6) | (u[1] & 0x3f);
        break;
    case 3:
        *cp = ((u[0] & 0x0f) << 12) | ((u[1] & 0x3f) << 6) | (u[2] & 0x3f);
        break;
    default:
        *cp = ((u[0] & 0x07) << 18) | ((u[1] & 0x3f) << 12) | ((u[2] & 0x3f) << 6) | (u[3] & 0x3f);
    }
    return n;
}

int tok_utf8_encode(int32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Length of the valid UTF-8 sequence at s[0..n), or -(length of the maximal invalid prefix of a
 * sequence) when it is invalid (the Unicode "maximal subpart" rule Rust and WHATWG follow). */
static int utf8_step(const uint8_t *s, size_t n) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        need = 1;
    else if (c == 0xe0)
        need = 2, lo = 0xa0;
    else if (c >= 0xe1 && c <= 0xec)
        need = 2;
    else if (c == 0xed)
        need = 2, hi = 0x9f;
    else if (c >= 0xee && c <= 0xef)
        need = 2;
    else if (c == 0xf0)
        need = 3, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3)
        need = 3;
    else if (c == 0xf4)
        need = 3, hi = 0x8f;
    else
        return -1;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n) return -i;
        uint8_t b = s[i];
        if (b < lo || b > hi) return -i;
        lo = 0x80, hi = 0xbf;
    }
    return need + 1;
}

bool tok_utf8_valid(const char *s, size_t n, size_t *bad_at) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_step(u + i, n - i);
        if (k < 0) {
            if (bad_at) *bad_at = i;
            return false;
        }
        i += (size_t)k;
    }
    return true;
}

void tok_utf8_lossy(tok_buf *out, const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, run = 0;
    tok_buf_reserve(out, n);
    while (i < n) {
        int k = utf8_step(u + i, n - i);
        if (k > 0) {
            i += (size_t)k;
            continue;
        }
        tok_buf_append(out, s + run, i - run);
        tok_buf_append(out, "\xef\xbf\xbd", 3);
        i += (size_t)(-k);
        run = i;
    }
    tok_buf_append(out, s + run, n - run);
}

bool tok_is_whitespace(int32_t cp) {
    if (cp >= 0x09 && cp <= 0x0d) return true;
    if (cp == 0x20 || cp == 0x85) return true;
    if (cp < 0x80) return false;
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

/* ---- hash tables ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull ^ (n * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 29;
    return h;
}

static uint32_t table_capacity(uint32_t expected) {
    uint32_t cap = 16;
    while (cap < expected * 2u + 1u) cap *= 2;
    return cap;
}

void tok_strmap_init(tok_strmap *m, uint32_t expected) {
    uint32_t cap = table_capacity(expected);
    m->keys = kv_calloc(cap, sizeof(*m->keys));
    m->key_lens = kv_calloc(cap, sizeof(*m->key_lens));
    m->vals = kv_calloc(cap, sizeof(*m->vals));
    m->mask = cap - 1;
    m->n = 0;
}

static void strmap_grow(tok_strmap *m) {
    tok_strmap bigger;
    tok_strmap_init(&bigger, (m->mask + 1));
    for (uint32_t i = 0; i <= m->mask; i++)
        if (m->keys[i]) tok_strmap_put(&bigger, m->keys[i], m->key_lens[i], m->vals[i]);
    tok_strmap_free(m);
    *m = bigger;
}

void tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->mask + 1) strmap_grow(m);
    uint32_t i = (uint32_t)hash_bytes(key, len) & m->mask;
    while (m->keys[i]) {
        if (m->key_lens[i] == len && memcmp(m->keys[i], key, len) == 0) {
            m->vals[i] = val;
            return;
        }
        i = (i + 1) & m->mask;
    }
    m->keys[i] = key;
    m->key_lens[i] = len;
    m->vals[i] = val;
    m->n++;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len) {
    if (!m->keys) return -1;
    uint32_t i = (uint32_t)hash_bytes(key, len) & m->mask;
    while (m->keys[i]) {
        if (m->key_lens[i] == len && memcmp(m->keys[i], key, len) == 0) return m->vals[i];
        i = (i + 1) & m->mask;
    }
    return -1;
}

void tok_strmap_free(tok_strmap *m) {
    free(m->keys);
    free(m->key_lens);
    free(m->vals);
    *m = (tok_strmap){0};
}

/* ---- per-call context ---- */

int tok_ctx_init(tok_ctx *c, bool big_stack, kv_error *err) {
    *c = (tok_ctx){0};
    c->md = pcre2_match_data_create(1, NULL);
    c->mctx = pcre2_match_context_create(NULL);
    if (big_stack) c->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!c->md || !c->mctx || (big_stack && !c->jit_stack)) {
        tok_ctx_free(c);
        return kv_error_set(err, "tokenizer: out of memory for regex match data");
    }
    if (c->jit_stack) pcre2_jit_stack_assign(c->mctx, NULL, c->jit_stack);
    return 0;
}

void tok_ctx_free(tok_ctx *c) {
    if (c->md) pcre2_match_data_free(c->md);
    if (c->mctx) pcre2_match_context_free(c->mctx);
    if (c->jit_stack) pcre2_jit_stack_free(c->jit_stack);
    *c = (tok_ctx){0};
}

/* ---- patterns ---- */

/* Hugging Face compiles split regexes with Oniguruma, whose Unicode \s is the White_Space
 * property and \w is Alphabetic | Mark | Decimal_Number | Connector_Punctuation | Join_Control;
 * PCRE2's UCP classes differ at the edges (U+180E, combining marks, No digits). Rewriting the
 * escapes, in and out of character classes, keeps the pattern's meaning that of the reference. */
#define ONIG_WORD "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}"

static char *rewrite_class_escapes(const char *pat) {
    tok_buf b = {0};
    bool in_class = false;
    for (const char *p = pat; *p; p++) {
        if (p[0] == '\\' && p[1]) {
            char c = p[1];
            if (c == 's')
                tok_buf_append(&b, "\\p{White_Space}", 15);
            else if (c == 'S')
                tok_buf_append(&b, "\\P{White_Space}", 15);
            else if (c == 'w' && in_class)
                tok_buf_append(&b, ONIG_WORD, strlen(ONIG_WORD));
            else if (c == 'w')
                tok_buf_append(&b, "[" ONIG_WORD "]", strlen(ONIG_WORD) + 2);
            else if (c == 'W' && !in_class)
                tok_buf_append(&b, "[^" ONIG_WORD "]", strlen(ONIG_WORD) + 3);
            else
                tok_buf_append(&b, p, 2);
            p++;
            continue;
        }
        if (!in_class && p[0] == '[') {
            in_class = true;
            tok_buf_push(&b, *p);
            /* a ']' right after '[' or '[^' is a literal member */
            if (p[1] == '^') tok_buf_push(&b, *++p);
            if (p[1] == ']') tok_buf_push(&b, *++p);
            continue;
        }
        if (in_class && p[0] == '[' && p[1] == ':') {
            const char *end = strstr(p + 2, ":]");
            if (end) {
                tok_buf_append(&b, p, (size_t)(end + 2 - p));
                p = end + 1;
                continue;
            }
        }
        if (in_class && p[0] == ']') in_class = false;
        tok_buf_push(&b, *p);
    }
    if (!b.data) tok_buf_append(&b, "", 0);
    return b.data;
}

int tok_regex_compile(pcre2_code **out, const char *pattern, const char *where, kv_error *err) {
    char *pat = rewrite_class_escapes(pattern);
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                   &code, &off, NULL);
    free(pat);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof(msg));
        return kv_error_set(err, "tokenizer.json: %s: bad regex \"%.80s\" at offset %zu: %s", where,
                            pattern, (size_t)off, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter when unavailable */
    *out = re;
    return 0;
}

int tok_pattern_parse(tok_pattern *p, json_t *j, const char *where, kv_error *err) {
    *p = (tok_pattern){0};
    json_t *s = json_is_object(j) ? json_object_get(j, "String") : NULL;
    json_t *r = json_is_object(j) ? json_object_get(j, "Regex") : NULL;
    if (json_is_string(s)) {
        p->literal_len = json_string_length(s);
        p->literal = kv_malloc(p->literal_len + 1);
        memcpy(p->literal, json_string_value(s), p->literal_len + 1);
        return 0;
    }
    if (json_is_string(r)) return tok_regex_compile(&p->re, json_string_value(r), where, err);
    return kv_error_set(err,
                        "tokenizer.json: %s: pattern must be {\"String\": ...} or "
                        "{\"Regex\": ...}",
                        where);
}

void tok_pattern_free(tok_pattern *p) {
    free(p->literal);
    if (p->re) pcre2_code_free(p->re);
    *p = (tok_pattern){0};
}

/* Emits the match [ms, me) and the gap before it. */
static void spans_add_match(tok_spans *out, size_t *prev, size_t ms, size_t me) {
    if (*prev != ms) tok_spans_push(out, *prev, ms, false);
    tok_spans_push(out, ms, me, true);
    *prev = me;
}

int tok_regex_spans(const pcre2_code *re, tok_ctx *ctx, const char *s, size_t n, tok_spans *out,
                    kv_error *err) {
    out->n = 0;
    if (n == 0) {
        tok_spans_push(out, 0, 0, false);
        return 0;
    }
    size_t prev = 0;              /* end of the last emitted span */
    size_t search = 0;            /* where the next search starts */
    size_t last_end = (size_t)-1; /* end of the last match, for the empty-match rule */
    while (search <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, search, PCRE2_NO_UTF_CHECK, ctx->md, ctx->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return kv_error_set(err, "tokenizer: regex match failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ctx->md);
        size_t ms = ov[0], me = ov[1];
        /* Like the onig iterator: an empty match right where the previous match ended is
         * skipped, and the search restarts one character later. */
        if (ms == me && last_end == me) {
            if (search >= n) break;
            search += (size_t)tok_utf8_len((uint8_t)s[search]);
            continue;
        }
        spans_add_match(out, &prev, ms, me);
        last_end = me;
        search = me;
        if (ms == me) {
            if (search >= n) break;
            search += (size_t)tok_utf8_len((uint8_t)s[search]);
        }
    }
    if (prev != n) tok_spans_push(out, prev, n, false);
    return 0;
}

int tok_pattern_spans(const tok_pattern *p, tok_ctx *ctx, const char *s, size_t n, tok_spans *out,
                      kv_error *err) {
    if (p->re) return tok_regex_spans(p->re, ctx, s, n, out, err);
    out->n = 0;
    if (n == 0) {
        tok_spans_push(out, 0, 0, false);
        return 0;
    }
    size_t prev = 0;
    if (p->literal_len > 0) {
        size_t i = 0;
        while (i + p->literal_len <= n) {
            const char *hit = memmem(s + i, n - i, p->literal, p->literal_len);
            if (!hit) break;
            size_t ms = (size_t)(hit - s);
            spans_add_match(out, &prev, ms, ms + p->literal_len);
            i = ms + p->literal_len;
        }
    }
    if (prev != n) tok_spans_push(out, prev, n, false);
    return 0;
}

/* ---- pieces and string lists ---- */

void tok_pieces_add(tok_pieces *p, const char *s, size_t len, bool at_start) {
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->items = kv_realloc(p->items, (size_t)p->cap * sizeof(tok_piece));
    }
    size_t off = p->text.len;
    tok_buf_append(&p->text, s, len);
    p->items[p->n++] = (tok_piece){off, len, at_start};
}

void tok_pieces_clear(tok_pieces *p) {
    p->n = 0;
    p->text.len = 0;
}

void tok_pieces_free(tok_pieces *p) {
    tok_buf_free(&p->text);
    free(p->items);
    *p = (tok_pieces){0};
}

void tok_strlist_add(tok_strlist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->items = kv_realloc(l->items, (size_t)l->cap * sizeof(tok_buf));
    }
    l->items[l->n] = (tok_buf){0};
    tok_buf_append(&l->items[l->n], s, n);
    l->n++;
}

void tok_strlist_free(tok_strlist *l) {
    for (int i = 0; i < l->n; i++) tok_buf_free(&l->items[i]);
    free(l->items);
    *l = (tok_strlist){0};
}
