/* Tokenizer decoders (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence) as
 * Hugging Face's decode_chain, the post-processors that add special tokens (TemplateProcessing,
 * BertProcessing, RobertaProcessing, ByteLevel, Sequence), and streaming detokenization. */
#include <stdlib.h>

#include "model/tokenizer/tokenizer_internal.h"

/* ---- decoders: parsing ---- */

static int parse_char(json_t *j, int32_t *cp, const char *where, kv_error *err) {
    const char *s = json_is_string(j) ? json_string_value(j) : NULL;
    if (!s || !s[0] || (size_t)tok_utf8_len((uint8_t)s[0]) != json_string_length(j))
        return kv_error_set(err, "tokenizer.json: %s must be one character", where);
    tok_utf8_decode(s, cp);
    return 0;
}

int tok_decoder_parse(tok_decoder *d, json_t *j, kv_error *err) {
    *d = (tok_decoder){0};
    json_t *t = json_is_object(j) ? json_object_get(j, "type") : NULL;
    const char *type = json_is_string(t) ? json_string_value(t) : NULL;
    if (!type) return kv_error_set(err, "tokenizer.json: decoder without a \"type\"");
    if (!strcmp(type, "ByteLevel")) {
        d->kind = TOK_DEC_BYTE_LEVEL;
    } else if (!strcmp(type, "Metaspace")) {
        d->kind = TOK_DEC_METASPACE;
        if (parse_char(json_object_get(j, "replacement"), &d->strip_cp,
                       "decoder Metaspace: \"replacement\"", err))
            return -1;
        json_t *scheme = json_object_get(j, "prepend_scheme");
        d->prepend = !(json_is_string(scheme) && !strcmp(json_string_value(scheme), "never"));
        if (json_is_false(json_object_get(j, "add_prefix_space"))) d->prepend = false;
    } else if (!strcmp(type, "Replace")) {
        d->kind = TOK_DEC_REPLACE;
        json_t *c = json_object_get(j, "content");
        if (!json_is_string(c))
            return kv_error_set(err, "tokenizer.json: decoder Replace: \"content\" must be a "
                                     "string");
        if (tok_pattern_parse(&d->pattern, json_object_get(j, "pattern"), "decoder Replace", err))
            return -1;
        d->content = kv_strdup(json_string_value(c));
    } else if (!strcmp(type, "ByteFallback")) {
        d->kind = TOK_DEC_BYTE_FALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        d->kind = TOK_DEC_FUSE;
    } else if (!strcmp(type, "Strip")) {
        d->kind = TOK_DEC_STRIP;
        json_t *start = json_object_get(j, "start"), *stop = json_object_get(j, "stop");
        if (parse_char(json_object_get(j, "content"), &d->strip_cp, "decoder Strip: \"content\"",
                       err))
            return -1;
        if (!json_is_integer(start) || !json_is_integer(stop) || json_integer_value(start) < 0 ||
            json_integer_value(stop) < 0 || json_integer_value(start) > 1 << 20 ||
            json_integer_value(stop) > 1 << 20)
            return kv_error_set(err, "tokenizer.json: decoder Strip: \"start\" and \"stop\" must "
                                     "be small non-negative integers");
        d->strip_start = (int)json_integer_value(start);
        d->strip_stop = (int)json_integer_value(stop);
    } else if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "decoders");
        if (!json_is_array(arr))
            return kv_error_set(err, "tokenizer.json: decoder Sequence: \"decoders\" must be an "
                                     "array");
        d->kind = TOK_DEC_SEQUENCE;
        d->n_children = (int)json_array_size(arr);
        d->children = kv_calloc((size_t)d->n_children + 1, sizeof(tok_decoder));
        for (int i = 0; i < d->n_children; i++) {
            if (tok_decoder_parse(&d->children[i], json_array_get(arr, (size_t)i), err)) {
                d->n_children = i + 1;
                return -1;
            }
        }
    } else {
        return kv_error_set(err, "tokenizer.json: unsupported decoder type \"%s\"", type);
    }
    return 0;
}

void tok_decoder_free(tok_decoder *d) {
    if (!d) return;
    tok_pattern_free(&d->pattern);
    free(d->content);
    for (int i = 0; i < d->n_children; i++) tok_decoder_free(&d->children[i]);
    free(d->children);
    *d = (tok_decoder){0};
}

/* ---- decoders: applying ---- */

/* Inverse of the GPT-2 bytes_to_unicode map; -1 for characters outside it. */
static int cp_to_byte(int32_t cp) {
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255)) return cp;
    if (cp >= 256 && cp <= 256 + 32) return cp - 256;
    if (cp >= 256 + 33 && cp <= 256 + 66) return cp - 256 - 33 + 127;
    if (cp == 256 + 67) return 173;
    return -1;
}

static void dec_byte_level(tok_strlist *l) {
    tok_buf bytes = {0};
    for (int i = 0; i < l->n; i++) {
        tok_buf *t = &l->items[i];
        size_t start = bytes.len;
        bool ok = true;
        for (size_t k = 0; k < t->len;) {
            int32_t cp;
            k += (size_t)tok_utf8_decode(t->data + k, &cp);
            int b = cp_to_byte(cp);
            if (b < 0) {
                ok = false;
                break;
            }
            tok_buf_push(&bytes, (char)b);
        }
        if (!ok) {
            bytes.len = start;
            tok_buf_append(&bytes, t->data, t->len);
        }
    }
    tok_buf text = {0};
    tok_utf8_lossy(&text, bytes.data ? bytes.data : "", bytes.len);
    tok_strlist_free(l);
    tok_strlist_add(l, text.data ? text.data : "", text.len);
    tok_buf_free(&bytes);
    tok_buf_free(&text);
}

static void dec_metaspace(const tok_decoder *d, tok_strlist *l) {
    for (int i = 0; i < l->n; i++) {
        tok_buf *t = &l->items[i];
        tok_buf out = {0};
        tok_buf_reserve(&out, t->len);
        for (size_t k = 0; k < t->len;) {
            int32_t cp;
            int n = tok_utf8_decode(t->data + k, &cp);
            if (cp == d->strip_cp) {
                if (!(i == 0 && d->prepend)) tok_buf_push(&out, ' ');
            } else {
                tok_buf_append(&out, t->data + k, (size_t)n);
            }
            k += (size_t)n;
        }
        tok_buf_free(t);
        *t = out;
    }
}

static int dec_replace(const tok_decoder *d, tok_ctx *ctx, tok_strlist *l, kv_error *err) {
    tok_spans sp = {0};
    size_t clen = strlen(d->content);
    for (int i = 0; i < l->n; i++) {
        tok_buf *t = &l->items[i];
        if (tok_pattern_spans(&d->pattern, ctx, t->data, t->len, &sp, err)) {
            free(sp.data);
            return -1;
        }
        tok_buf out = {0};
        tok_buf_append(&out, "", 0);
        for (int k = 0; k < sp.n; k++) {
            if (sp.data[k].is_match) /* empty matches too, as Hugging Face */
                tok_buf_append(&out, d->content, clen);
            else
                tok_buf_append(&out, t->data + sp.data[k].start, sp.data[k].end - sp.data[k].start);
        }
        tok_buf_free(t);
        *t = out;
    }
    free(sp.data);
    return 0;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void flush_bytes(tok_strlist *out, tok_buf *bytes) {
    if (bytes->len == 0) return;
    if (tok_utf8_valid(bytes->data, bytes->len, NULL)) {
        tok_strlist_add(out, bytes->data, bytes->len);
    } else {
        for (size_t i = 0; i < bytes->len; i++) tok_strlist_add(out, "\xef\xbf\xbd", 3);
    }
    bytes->len = 0;
}

static void dec_byte_fallback(tok_strlist *l) {
    tok_strlist out = {0};
    tok_buf bytes = {0};
    for (int i = 0; i < l->n; i++) {
        tok_buf *t = &l->items[i];
        /* u8::from_str_radix(&token[3..5], 16) accepts "hh" and "+h" */
        int hi = -1, lo = -1;
        if (t->len == 6 && !memcmp(t->data, "<0x", 3) && t->data[5] == '>') {
            hi = t->data[3] == '+' ? 0 : hex_digit(t->data[3]);
            lo = hex_digit(t->data[4]);
        }
        if (hi >= 0 && lo >= 0) {
            tok_buf_push(&bytes, (char)(hi * 16 + lo));
            continue;
        }
        flush_bytes(&out, &bytes);
        tok_strlist_add(&out, t->data, t->len);
    }
    flush_bytes(&out, &bytes);
    tok_buf_free(&bytes);
    tok_strlist_free(l);
    *l = out;
}

static void dec_fuse(tok_strlist *l) {
    tok_buf all = {0};
    tok_buf_append(&all, "", 0);
    for (int i = 0; i < l->n; i++) tok_buf_append(&all, l->items[i].data, l->items[i].len);
    tok_strlist_free(l);
    tok_strlist_add(l, all.data, all.len);
    tok_buf_free(&all);
}

static void dec_strip(const tok_decoder *d, tok_strlist *l) {
    for (int i = 0; i < l->n; i++) {
        tok_buf *t = &l->items[i];
        /* character boundaries of the token */
        int n_chars = 0;
        for (size_t k = 0; k < t->len; k += (size_t)tok_utf8_len((uint8_t)t->data[k])) n_chars++;
        size_t *starts = kv_malloc(((size_t)n_chars + 1) * sizeof(size_t));
        int c = 0;
        for (size_t k = 0; k < t->len; k += (size_t)tok_utf8_len((uint8_t)t->data[k]))
            starts[c++] = k;
        starts[n_chars] = t->len;
        int start_cut = 0;
        for (int k = 0; k < d->strip_start && k < n_chars; k++) {
            int32_t cp;
            tok_utf8_decode(t->data + starts[k], &cp);
            if (cp != d->strip_cp) break;
            start_cut = k + 1;
        }
        int stop_cut = n_chars;
        for (int k = 0; k < d->strip_stop && k < n_chars - start_cut; k++) {
            int idx = n_chars - k - 1;
            int32_t cp;
            tok_utf8_decode(t->data + starts[idx], &cp);
            if (cp != d->strip_cp) break;
            stop_cut = idx;
        }
        tok_buf out = {0};
        tok_buf_append(&out, t->data + starts[start_cut], starts[stop_cut] - starts[start_cut]);
        free(starts);
        tok_buf_free(t);
        *t = out;
    }
}

/* One token through the chain as bytes (see tokenizer_token_bytes). */
static int token_bytes_apply(const tok_decoder *d, tok_ctx *ctx, tok_strlist *l, kv_error *err) {
    tok_buf *t = &l->items[0];
    switch (d->kind) {
    case TOK_DEC_BYTE_LEVEL: {
        tok_buf bytes = {0};
        tok_buf_append(&bytes, "", 0);
        for (size_t k = 0; k < t->len;) {
            int32_t cp;
            k += (size_t)tok_utf8_decode(t->data + k, &cp);
            int b = cp_to_byte(cp);
            if (b < 0) {
                tok_buf_free(&bytes);
                return 0; /* not a byte-level piece: as it is */
            }
            tok_buf_push(&bytes, (char)b);
        }
        tok_buf_free(t);
        *t = bytes;
        return 0;
    }
    case TOK_DEC_METASPACE: {
        tok_buf out = {0};
        tok_buf_append(&out, "", 0);
        for (size_t k = 0; k < t->len;) {
            int32_t cp;
            int n = tok_utf8_decode(t->data + k, &cp);
            if (cp == d->strip_cp)
                tok_buf_push(&out, ' ');
            else
                tok_buf_append(&out, t->data + k, (size_t)n);
            k += (size_t)n;
        }
        tok_buf_free(t);
        *t = out;
        return 0;
    }
    case TOK_DEC_REPLACE:
        return dec_replace(d, ctx, l, err);
    case TOK_DEC_BYTE_FALLBACK:
        if (t->len == 6 && !memcmp(t->data, "<0x", 3) && t->data[5] == '>') {
            int hi = t->data[3] == '+' ? 0 : hex_digit(t->data[3]), lo = hex_digit(t->data[4]);
            if (hi >= 0 && lo >= 0) {
                t->data[0] = (char)(hi * 16 + lo);
                t->len = 1;
                t->data[1] = 0;
            }
        }
        return 0;
    case TOK_DEC_FUSE:
    case TOK_DEC_STRIP: /* they act on the text's ends, not on a token inside it */
        return 0;
    case TOK_DEC_SEQUENCE:
        for (int i = 0; i < d->n_children; i++)
            if (token_bytes_apply(&d->children[i], ctx, l, err)) return -1;
        return 0;
    }
    return 0;
}

int tokenizer_token_bytes(const tokenizer *tok, int32_t id, char **out, size_t *len,
                          kv_error *err) {
    *out = NULL;
    *len = 0;
    size_t plen;
    const char *p = tok_piece_of(tok, id, &plen);
    if (!p) return kv_error_set(err, "tokenizer: token id %d is out of range", id);
    if (tok->added_by_id[id] >= 0 && tok->added[tok->added_by_id[id]].special) {
        *out = kv_strdup("");
        return 0;
    }
    tok_strlist l = {0};
    tok_strlist_add(&l, p, plen);
    if (tok->decoder) {
        tok_ctx ctx;
        if (tok_ctx_init(&ctx, false, err) || token_bytes_apply(tok->decoder, &ctx, &l, err)) {
            tok_ctx_free(&ctx);
            tok_strlist_free(&l);
            return -1;
        }
        tok_ctx_free(&ctx);
    }
    tok_buf r = {0};
    tok_buf_append(&r, "", 0);
    tok_buf_append(&r, l.items[0].data, l.items[0].len);
    tok_strlist_free(&l);
    *out = r.data;
    *len = r.len;
    return 0;
}

int tok_decoder_apply(const tok_decoder *d, tok_ctx *ctx, tok_strlist *l, kv_error *err) {
    switch (d->kind) {
    case TOK_DEC_BYTE_LEVEL:
        dec_byte_level(l);
        return 0;
    case TOK_DEC_METASPACE:
        dec_metaspace(d, l);
        return 0;
    case TOK_DEC_REPLACE:
        return dec_replace(d, ctx, l, err);
    case TOK_DEC_BYTE_FALLBACK:
        dec_byte_fallback(l);
        return 0;
    case TOK_DEC_FUSE:
        dec_fuse(l);
        return 0;
    case TOK_DEC_STRIP:
        dec_strip(d, l);
        return 0;
    case TOK_DEC_SEQUENCE:
        for (int i = 0; i < d->n_children; i++)
            if (tok_decoder_apply(&d->children[i], ctx, l, err)) return -1;
        return 0;
    }
    return 0;
}

/* ---- post-processors ---- */

static void ids_append(int32_t **arr, int *n, const int32_t *ids, int k) {
    *arr = kv_realloc(*arr, ((size_t)*n + (size_t)k + 1) * sizeof(int32_t));
    if (k > 0) memcpy(*arr + *n, ids, (size_t)k * sizeof(int32_t));
    *n += k;
}

/* TemplateProcessing "single": SpecialToken pieces before $A go to prefix, after it to suffix. */
static int parse_template(tok_postproc *p, json_t *j, kv_error *err) {
    json_t *single = json_object_get(j, "single");
    json_t *specials = json_object_get(j, "special_tokens");
    if (!json_is_array(single))
        return kv_error_set(err, "tokenizer.json: post_processor TemplateProcessing: \"single\" "
                                 "must be an array");
    int32_t *pre = NULL, *suf = NULL;
    int n_pre = 0, n_suf = 0;
    bool seen_seq = false;
    size_t i;
    json_t *item;
    json_array_foreach(single, i, item) {
        json_t *sp = json_object_get(item, "SpecialToken");
        if (json_object_get(item, "Sequence")) {
            seen_seq = true;
            continue;
        }
        const char *name = json_string_value(json_object_get(sp, "id"));
        json_t *tok = name ? json_object_get(specials, name) : NULL;
        json_t *ids = json_object_get(tok, "ids");
        if (!name || !json_is_array(ids)) {
            free(pre), free(suf);
            return kv_error_set(err,
                                "tokenizer.json: post_processor TemplateProcessing: single[%zu] "
                                "names special token \"%s\" missing from special_tokens",
                                i, name ? name : "?");
        }
        size_t k;
        json_t *idj;
        json_array_foreach(ids, k, idj) {
            json_int_t v = json_integer_value(idj);
            if (!json_is_integer(idj) || v < 0 || v > (1 << 24)) {
                free(pre), free(suf);
                return kv_error_set(err,
                                    "tokenizer.json: post_processor special token \"%s\" has "
                                    "a bad id",
                                    name);
            }
            int32_t id = (int32_t)v;
            if (seen_seq)
                ids_append(&suf, &n_suf, &id, 1);
            else
                ids_append(&pre, &n_pre, &id, 1);
        }
    }
    ids_append(&p->prefix, &p->n_prefix, pre, n_pre);
    ids_append(&p->suffix, &p->n_suffix, suf, n_suf);
    free(pre), free(suf);
    return 0;
}

/* BertProcessing / RobertaProcessing: {"cls": [tok, id], "sep": [tok, id]} -> cls A sep. */
static int parse_cls_sep(tok_postproc *p, json_t *j, const char *type, kv_error *err) {
    json_t *cls = json_object_get(j, "cls"), *sep = json_object_get(j, "sep");
    json_t *ci = json_array_get(cls, 1), *si = json_array_get(sep, 1);
    if (!json_is_integer(ci) || !json_is_integer(si) || json_integer_value(ci) < 0 ||
        json_integer_value(si) < 0 || json_integer_value(ci) > 1 << 24 ||
        json_integer_value(si) > 1 << 24)
        return kv_error_set(err,
                            "tokenizer.json: post_processor %s: \"cls\" and \"sep\" must be "
                            "[token, id]",
                            type);
    int32_t c = (int32_t)json_integer_value(ci), s = (int32_t)json_integer_value(si);
    ids_append(&p->prefix, &p->n_prefix, &c, 1);
    ids_append(&p->suffix, &p->n_suffix, &s, 1);
    return 0;
}

static int parse_post(tok_postproc *p, json_t *j, kv_error *err) {
    json_t *t = json_is_object(j) ? json_object_get(j, "type") : NULL;
    const char *type = json_is_string(t) ? json_string_value(t) : NULL;
    if (!type) return kv_error_set(err, "tokenizer.json: post_processor without a \"type\"");
    if (!strcmp(type, "ByteLevel")) return 0; /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) return parse_template(p, j, err);
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing"))
        return parse_cls_sep(p, j, type, err);
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "processors");
        if (!json_is_array(arr))
            return kv_error_set(err, "tokenizer.json: post_processor Sequence: \"processors\" "
                                     "must be an array");
        size_t i;
        json_t *item;
        json_array_foreach(arr, i, item) {
            /* each processor wraps what the previous ones produced */
            tok_postproc inner = {0};
            if (parse_post(&inner, item, err)) {
                tok_postproc_free(&inner);
                return -1;
            }
            int32_t *pre = NULL, *suf = NULL;
            int n_pre = 0, n_suf = 0;
            ids_append(&pre, &n_pre, inner.prefix, inner.n_prefix);
            ids_append(&pre, &n_pre, p->prefix, p->n_prefix);
            ids_append(&suf, &n_suf, p->suffix, p->n_suffix);
            ids_append(&suf, &n_suf, inner.suffix, inner.n_suffix);
            free(p->prefix), free(p->suffix);
            p->prefix = pre, p->n_prefix = n_pre;
            p->suffix = suf, p->n_suffix = n_suf;
            tok_postproc_free(&inner);
        }
        return 0;
    }
    return kv_error_set(err, "tokenizer.json: unsupported post_processor type \"%s\"", type);
}

int tok_postproc_parse(tok_postproc *p, json_t *j, kv_error *err) {
    *p = (tok_postproc){0};
    if (!j || json_is_null(j)) return 0;
    p->present = true;
    return parse_post(p, j, err);
}

void tok_postproc_free(tok_postproc *p) {
    free(p->prefix);
    free(p->suffix);
    *p = (tok_postproc){0};
}

/* ---- streaming detokenization ---- */

/* Hugging Face's DecodeStream: decode a window that starts one token before the new text, and
 * emit what follows the window's previous decoding once it does not end in U+FFFD (an incomplete
 * UTF-8 sequence still waiting for bytes). */
struct tokenizer_stream {
    const tokenizer *tok;
    bool skip_special;
    tok_ids ids;      /* the window */
    int prefix_index; /* ids[prefix_index..] are not yet emitted */
    tok_buf prefix;   /* decoding of ids[0..] as of the last emission */
};

tokenizer_stream *tokenizer_stream_new(const tokenizer *tok, bool skip_special_tokens) {
    tokenizer_stream *s = kv_calloc(1, sizeof(*s));
    s->tok = tok;
    s->skip_special = skip_special_tokens;
    tok_buf_append(&s->prefix, "", 0);
    return s;
}

static bool ends_with_replacement(const char *s, size_t n) {
    return n >= 3 && !memcmp(s + n - 3, "\xef\xbf\xbd", 3);
}

static int emit_suffix(tokenizer_stream *s, const char *text, size_t len, char **out,
                       size_t *out_len, kv_error *err) {
    if (len < s->prefix.len || memcmp(text, s->prefix.data, s->prefix.len) != 0)
        return kv_error_set(err, "tokenizer: streaming decode is not prefix-stable for this "
                                 "decoder");
    *out_len = len - s->prefix.len;
    *out = kv_malloc(*out_len + 1);
    memcpy(*out, text + s->prefix.len, *out_len);
    (*out)[*out_len] = 0;
    return 0;
}

int tokenizer_stream_push(tokenizer_stream *s, int32_t id, char **out, size_t *out_len,
                          kv_error *err) {
    *out = NULL;
    *out_len = 0;
    if (id < 0 || id >= tokenizer_vocab_size(s->tok) || !tok_piece_of(s->tok, id, NULL))
        return kv_error_set(err, "tokenizer: token id %d is out of range", id);
    tok_ids_push(&s->ids, id);
    char *text;
    size_t len;
    if (tokenizer_decode(s->tok, s->ids.data, s->ids.n, s->skip_special, &text, &len, err))
        return -1;
    if (len > s->prefix.len && !ends_with_replacement(text, len)) {
        if (emit_suffix(s, text, len, out, out_len, err)) {
            free(text);
            return -1;
        }
        /* keep ids[prefix_index..] as the next window's context */
        int keep_from = s->prefix_index;
        int new_prefix_index = s->ids.n - keep_from;
        memmove(s->ids.data, s->ids.data + keep_from, (size_t)new_prefix_index * sizeof(int32_t));
        s->ids.n = new_prefix_index;
        free(text);
        if (tokenizer_decode(s->tok, s->ids.data, s->ids.n, s->skip_special, &text, &len, err))
            return -1;
        s->prefix.len = 0;
        tok_buf_append(&s->prefix, text, len);
        s->prefix_index = new_prefix_index;
    } else {
        *out = kv_strdup("");
    }
    free(text);
    return 0;
}

int tokenizer_stream_finish(tokenizer_stream *s, char **out, size_t *out_len, kv_error *err) {
    *out = NULL;
    *out_len = 0;
    char *text;
    size_t len;
    if (tokenizer_decode(s->tok, s->ids.data, s->ids.n, s->skip_special, &text, &len, err))
        return -1;
    int rc = 0;
    if (len > s->prefix.len)
        rc = emit_suffix(s, text, len, out, out_len, err);
    else
        *out = kv_strdup("");
    free(text);
    s->ids.n = 0;
    s->prefix_index = 0;
    s->prefix.len = 0;
    return rc;
}

void tokenizer_stream_free(tokenizer_stream *s) {
    if (!s) return;
    free(s->ids.data);
    tok_buf_free(&s->prefix);
    free(s);
}
