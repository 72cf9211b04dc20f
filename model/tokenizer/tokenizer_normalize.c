/* Tokenizer normalizers (NFC, NFKC, NFD, NFKD, Prepend, Replace, Strip, Lowercase, Sequence):
 * parsing from tokenizer.json and applying them to a string as Hugging Face tokenizers does.
 * Unicode normalization and case mapping come from utf8proc. */
#include <stdlib.h>

#include <utf8proc.h>

#include "model/tokenizer/tokenizer_internal.h"

static const char *json_type_name(json_t *j) {
    json_t *t = json_is_object(j) ? json_object_get(j, "type") : NULL;
    return json_is_string(t) ? json_string_value(t) : NULL;
}

static char *dup_json_string(json_t *j) {
    size_t n = json_string_length(j);
    char *s = kv_malloc(n + 1);
    memcpy(s, json_string_value(j), n + 1);
    return s;
}

int tok_normalizer_parse(tok_normalizer *n, json_t *j, kv_error *err) {
    *n = (tok_normalizer){0};
    const char *type = json_type_name(j);
    if (!type) return kv_error_set(err, "tokenizer.json: normalizer without a \"type\"");
    if (!strcmp(type, "NFC"))
        n->kind = TOK_NORM_NFC;
    else if (!strcmp(type, "NFKC"))
        n->kind = TOK_NORM_NFKC;
    else if (!strcmp(type, "NFD"))
        n->kind = TOK_NORM_NFD;
    else if (!strcmp(type, "NFKD"))
        n->kind = TOK_NORM_NFKD;
    else if (!strcmp(type, "Lowercase"))
        n->kind = TOK_NORM_LOWERCASE;
    else if (!strcmp(type, "Prepend")) {
        json_t *p = json_object_get(j, "prepend");
        if (!json_is_string(p))
            return kv_error_set(err, "tokenizer.json: normalizer Prepend: \"prepend\" must be a "
                                     "string");
        n->kind = TOK_NORM_PREPEND;
        n->content = dup_json_string(p);
    } else if (!strcmp(type, "Replace")) {
        json_t *c = json_object_get(j, "content");
        if (!json_is_string(c))
            return kv_error_set(err, "tokenizer.json: normalizer Replace: \"content\" must be a "
                                     "string");
        n->kind = TOK_NORM_REPLACE;
        if (tok_pattern_parse(&n->pattern, json_object_get(j, "pattern"), "normalizer Replace",
                              err))
            return -1;
        n->content = dup_json_string(c);
    } else if (!strcmp(type, "Strip")) {
        n->kind = TOK_NORM_STRIP;
        n->strip_left = json_is_true(json_object_get(j, "strip_left"));
        n->strip_right = json_is_true(json_object_get(j, "strip_right"));
    } else if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr))
            return kv_error_set(err, "tokenizer.json: normalizer Sequence: \"normalizers\" must "
                                     "be an array");
        n->kind = TOK_NORM_SEQUENCE;
        n->n_children = (int)json_array_size(arr);
        n->children = kv_calloc((size_t)n->n_children + 1, sizeof(tok_normalizer));
        for (int i = 0; i < n->n_children; i++) {
            if (tok_normalizer_parse(&n->children[i], json_array_get(arr, (size_t)i), err)) {
                n->n_children = i + 1;
                return -1;
            }
        }
    } else {
        return kv_error_set(err, "tokenizer.json: unsupported normalizer type \"%s\"", type);
    }
    return 0;
}

void tok_normalizer_free(tok_normalizer *n) {
    if (!n) return;
    free(n->content);
    tok_pattern_free(&n->pattern);
    for (int i = 0; i < n->n_children; i++) tok_normalizer_free(&n->children[i]);
    free(n->children);
    *n = (tok_normalizer){0};
}

static int unicode_normalize(tok_norm_kind kind, const char *s, size_t len, tok_buf *out,
                             kv_error *err) {
    utf8proc_option_t opt = UTF8PROC_STABLE;
    switch (kind) {
    case TOK_NORM_NFC:
        opt |= UTF8PROC_COMPOSE;
        break;
    case TOK_NORM_NFKC:
        opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
        break;
    case TOK_NORM_NFD:
        opt |= UTF8PROC_DECOMPOSE;
        break;
    default:
        opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
        break;
    }
    utf8proc_uint8_t *res = NULL;
    utf8proc_ssize_t n =
        utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &res, opt);
    if (n < 0) return kv_error_set(err, "tokenizer: normalization failed: %s", utf8proc_errmsg(n));
    out->len = 0;
    tok_buf_append(out, (const char *)res, (size_t)n);
    free(res);
    return 0;
}

/* Rust's char::to_lowercase: the simple mapping, except U+0130 which lowercases to two chars. */
static void lowercase(const char *s, size_t len, tok_buf *out) {
    out->len = 0;
    tok_buf_reserve(out, len);
    for (size_t i = 0; i < len;) {
        int32_t cp;
        i += (size_t)tok_utf8_decode(s + i, &cp);
        char enc[4];
        if (cp == 0x130) {
            tok_buf_append(out, "i\xcc\x87", 3);
            continue;
        }
        int k = tok_utf8_encode(utf8proc_tolower(cp), enc);
        tok_buf_append(out, enc, (size_t)k);
    }
}

static void strip(const tok_normalizer *n, const char *s, size_t len, tok_buf *out,
                  bool *lead_removed) {
    size_t start = 0, end = len;
    if (n->strip_left) {
        while (start < end) {
            int32_t cp;
            int k = tok_utf8_decode(s + start, &cp);
            if (!tok_is_whitespace(cp)) break;
            start += (size_t)k;
        }
        if (start > 0) *lead_removed = true;
    }
    if (n->strip_right) {
        while (end > start) {
            size_t b = end - 1;
            while (b > start && ((uint8_t)s[b] & 0xc0) == 0x80) b--;
            int32_t cp;
            tok_utf8_decode(s + b, &cp);
            if (!tok_is_whitespace(cp)) break;
            end = b;
        }
    }
    out->len = 0;
    tok_buf_append(out, s + start, end - start);
}

static int replace(const tok_normalizer *n, tok_ctx *ctx, const char *s, size_t len, tok_buf *out,
                   bool *lead_removed, kv_error *err) {
    tok_spans spans = {0};
    if (tok_pattern_spans(&n->pattern, ctx, s, len, &spans, err)) {
        free(spans.data);
        return -1;
    }
    out->len = 0;
    size_t clen = strlen(n->content);
    for (int i = 0; i < spans.n; i++) {
        tok_span sp = spans.data[i];
        if (sp.is_match) { /* empty matches too, as Hugging Face */
            tok_buf_append(out, n->content, clen);
            if (sp.start == 0 && sp.end > 0 && clen == 0) *lead_removed = true;
        } else {
            tok_buf_append(out, s + sp.start, sp.end - sp.start);
        }
    }
    free(spans.data);
    return 0;
}

int tok_normalize(const tok_normalizer *n, tok_ctx *ctx, const char *s, size_t len, tok_buf *out,
                  bool *lead_removed, kv_error *err) {
    if (n->kind == TOK_NORM_SEQUENCE) {
        tok_buf cur = {0}, next = {0};
        tok_buf_append(&cur, s, len);
        for (int i = 0; i < n->n_children; i++) {
            if (tok_normalize(&n->children[i], ctx, cur.data, cur.len, &next, lead_removed, err)) {
                tok_buf_free(&cur);
                tok_buf_free(&next);
                return -1;
            }
            tok_buf t = cur;
            cur = next;
            next = t;
        }
        out->len = 0;
        tok_buf_append(out, cur.data, cur.len);
        tok_buf_free(&cur);
        tok_buf_free(&next);
        return 0;
    }
    switch (n->kind) {
    case TOK_NORM_NFC:
    case TOK_NORM_NFKC:
    case TOK_NORM_NFD:
    case TOK_NORM_NFKD:
        if (len == 0) break;
        return unicode_normalize(n->kind, s, len, out, err);
    case TOK_NORM_LOWERCASE:
        lowercase(s, len, out);
        return 0;
    case TOK_NORM_PREPEND:
        out->len = 0;
        /* Hugging Face prepends only to a non-empty string. */
        if (len > 0) tok_buf_append(out, n->content, strlen(n->content));
        tok_buf_append(out, s, len);
        return 0;
    case TOK_NORM_STRIP:
        strip(n, s, len, out, lead_removed);
        return 0;
    case TOK_NORM_REPLACE:
        return replace(n, ctx, s, len, out, lead_removed, err);
    default:
        break;
    }
    out->len = 0;
    tok_buf_append(out, s, len);
    return 0;
}
