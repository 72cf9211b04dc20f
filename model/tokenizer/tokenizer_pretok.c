/* Tokenizer pre-tokenizers (ByteLevel, Split, Metaspace, Digits, Punctuation, Whitespace,
 * WhitespaceSplit, BertPreTokenizer, Sequence): parsing from tokenizer.json and cutting text into
 * words with Hugging Face's split behaviours. Regexes are PCRE2 (UTF + UCP, JIT). */
#include <stdlib.h>

#include <utf8proc.h>

#include "model/tokenizer/tokenizer_internal.h"

/* The GPT-2 split regex Hugging Face's ByteLevel pre-tokenizer uses. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

int tok_shared_re_init(tok_shared_re *r, kv_error *err) {
    *r = (tok_shared_re){0};
    if (tok_regex_compile(&r->gpt2, GPT2_PATTERN, "ByteLevel", err) ||
        tok_regex_compile(&r->whitespace, "\\w+|[^\\w\\s]+", "Whitespace", err) ||
        tok_regex_compile(&r->word_char, "\\w", "added tokens", err)) {
        tok_shared_re_free(r);
        return -1;
    }
    return 0;
}

void tok_shared_re_free(tok_shared_re *r) {
    if (r->gpt2) pcre2_code_free(r->gpt2);
    if (r->whitespace) pcre2_code_free(r->whitespace);
    if (r->word_char) pcre2_code_free(r->word_char);
    *r = (tok_shared_re){0};
}

/* ---- parsing ---- */

static int parse_behavior(json_t *j, tok_split_behavior dflt, tok_split_behavior *out,
                          const char *where, kv_error *err) {
    if (!j) {
        *out = dflt;
        return 0;
    }
    const char *s = json_is_string(j) ? json_string_value(j) : "";
    if (!strcmp(s, "Removed"))
        *out = TOK_SPLIT_REMOVED;
    else if (!strcmp(s, "Isolated"))
        *out = TOK_SPLIT_ISOLATED;
    else if (!strcmp(s, "MergedWithPrevious"))
        *out = TOK_SPLIT_MERGED_WITH_PREVIOUS;
    else if (!strcmp(s, "MergedWithNext"))
        *out = TOK_SPLIT_MERGED_WITH_NEXT;
    else if (!strcmp(s, "Contiguous"))
        *out = TOK_SPLIT_CONTIGUOUS;
    else
        return kv_error_set(err, "tokenizer.json: %s: unknown split behavior \"%s\"", where, s);
    return 0;
}

static bool json_bool_or(json_t *obj, const char *key, bool dflt) {
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int parse_metaspace(tok_pretok *p, json_t *j, kv_error *err) {
    p->kind = TOK_PRE_METASPACE;
    json_t *r = json_object_get(j, "replacement");
    const char *rep = json_is_string(r) ? json_string_value(r) : NULL;
    if (!rep || !rep[0] || (size_t)tok_utf8_len((uint8_t)rep[0]) != json_string_length(r))
        return kv_error_set(err, "tokenizer.json: pre_tokenizer Metaspace: \"replacement\" must "
                                 "be one character");
    memcpy(p->replacement, rep, json_string_length(r) + 1);
    tok_utf8_decode(rep, &p->replacement_cp);
    /* Newer files say prepend_scheme; older ones add_prefix_space (false means never). */
    json_t *scheme = json_object_get(j, "prepend_scheme");
    p->prepend_scheme = TOK_PREPEND_ALWAYS;
    if (json_is_string(scheme)) {
        const char *s = json_string_value(scheme);
        if (!strcmp(s, "always"))
            p->prepend_scheme = TOK_PREPEND_ALWAYS;
        else if (!strcmp(s, "first"))
            p->prepend_scheme = TOK_PREPEND_FIRST;
        else if (!strcmp(s, "never"))
            p->prepend_scheme = TOK_PREPEND_NEVER;
        else
            return kv_error_set(err,
                                "tokenizer.json: pre_tokenizer Metaspace: unknown "
                                "prepend_scheme \"%s\"",
                                s);
    }
    if (json_is_false(json_object_get(j, "add_prefix_space")))
        p->prepend_scheme = TOK_PREPEND_NEVER;
    p->split = json_bool_or(j, "split", true);
    return 0;
}

int tok_pretok_parse(tok_pretok *p, json_t *j, kv_error *err) {
    *p = (tok_pretok){0};
    json_t *t = json_is_object(j) ? json_object_get(j, "type") : NULL;
    const char *type = json_is_string(t) ? json_string_value(t) : NULL;
    if (!type) return kv_error_set(err, "tokenizer.json: pre_tokenizer without a \"type\"");
    if (!strcmp(type, "ByteLevel")) {
        p->kind = TOK_PRE_BYTE_LEVEL;
        p->add_prefix_space = json_bool_or(j, "add_prefix_space", true);
        p->use_regex = json_bool_or(j, "use_regex", true);
    } else if (!strcmp(type, "Split")) {
        p->kind = TOK_PRE_SPLIT;
        if (tok_pattern_parse(&p->pattern, json_object_get(j, "pattern"), "pre_tokenizer Split",
                              err) ||
            parse_behavior(json_object_get(j, "behavior"), TOK_SPLIT_ISOLATED, &p->behavior,
                           "pre_tokenizer Split", err))
            return -1;
        p->invert = json_bool_or(j, "invert", false);
    } else if (!strcmp(type, "Metaspace")) {
        return parse_metaspace(p, j, err);
    } else if (!strcmp(type, "Digits")) {
        p->kind = TOK_PRE_DIGITS;
        p->individual_digits = json_bool_or(j, "individual_digits", false);
    } else if (!strcmp(type, "Punctuation")) {
        p->kind = TOK_PRE_PUNCTUATION;
        return parse_behavior(json_object_get(j, "behavior"), TOK_SPLIT_ISOLATED, &p->behavior,
                              "pre_tokenizer Punctuation", err);
    } else if (!strcmp(type, "Whitespace")) {
        p->kind = TOK_PRE_WHITESPACE;
    } else if (!strcmp(type, "WhitespaceSplit")) {
        p->kind = TOK_PRE_WHITESPACE_SPLIT;
    } else if (!strcmp(type, "BertPreTokenizer")) {
        p->kind = TOK_PRE_BERT;
    } else if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr))
            return kv_error_set(err, "tokenizer.json: pre_tokenizer Sequence: \"pretokenizers\" "
                                     "must be an array");
        p->kind = TOK_PRE_SEQUENCE;
        p->n_children = (int)json_array_size(arr);
        p->children = kv_calloc((size_t)p->n_children + 1, sizeof(tok_pretok));
        for (int i = 0; i < p->n_children; i++) {
            if (tok_pretok_parse(&p->children[i], json_array_get(arr, (size_t)i), err)) {
                p->n_children = i + 1;
                return -1;
            }
        }
    } else {
        return kv_error_set(err, "tokenizer.json: unsupported pre_tokenizer type \"%s\"", type);
    }
    return 0;
}

void tok_pretok_free(tok_pretok *p) {
    if (!p) return;
    tok_pattern_free(&p->pattern);
    for (int i = 0; i < p->n_children; i++) tok_pretok_free(&p->children[i]);
    free(p->children);
    *p = (tok_pretok){0};
}

/* ---- splitting ---- */

/* Applies a split behavior to the spans of one piece and appends the resulting non-empty pieces
 * (Hugging Face NormalizedString::split followed by PreTokenizedString's empty-split filter). */
static void split_emit(const char *s, bool at_start, tok_spans *sp, tok_split_behavior behavior,
                       tok_pieces *out) {
    int n = 0; /* spans compacted in place */
    bool prev_match = false;
    switch (behavior) {
    case TOK_SPLIT_REMOVED:
        for (int i = 0; i < sp->n; i++)
            if (!sp->data[i].is_match) sp->data[n++] = sp->data[i];
        break;
    case TOK_SPLIT_ISOLATED:
        n = sp->n;
        break;
    case TOK_SPLIT_CONTIGUOUS:
        for (int i = 0; i < sp->n; i++) {
            tok_span cur = sp->data[i];
            if (cur.is_match == prev_match && n > 0)
                sp->data[n - 1].end = cur.end;
            else
                sp->data[n++] = cur;
            prev_match = cur.is_match;
        }
        break;
    case TOK_SPLIT_MERGED_WITH_PREVIOUS:
        for (int i = 0; i < sp->n; i++) {
            tok_span cur = sp->data[i];
            if (cur.is_match && !prev_match && n > 0)
                sp->data[n - 1].end = cur.end;
            else
                sp->data[n++] = cur;
            prev_match = cur.is_match;
        }
        break;
    case TOK_SPLIT_MERGED_WITH_NEXT: {
        /* folded from the right; compacted towards the end of the array */
        int w = sp->n;
        for (int i = sp->n - 1; i >= 0; i--) {
            tok_span cur = sp->data[i];
            if (cur.is_match && !prev_match && w < sp->n)
                sp->data[w].start = cur.start;
            else
                sp->data[--w] = cur;
            prev_match = cur.is_match;
        }
        n = sp->n - w;
        memmove(sp->data, sp->data + w, (size_t)n * sizeof(tok_span));
        break;
    }
    }
    for (int i = 0; i < n; i++) {
        tok_span cur = sp->data[i];
        if (cur.end > cur.start)
            tok_pieces_add(out, s + cur.start, cur.end - cur.start, at_start && cur.start == 0);
    }
}

typedef bool (*char_pred)(int32_t cp);

/* One match span per matching character, as Hugging Face's Fn(char) -> bool pattern. */
static void char_spans(const char *s, size_t n, char_pred pred, int32_t only_cp, tok_spans *out) {
    out->n = 0;
    if (n == 0) {
        tok_spans_push(out, 0, 0, false);
        return;
    }
    size_t last = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        int k = tok_utf8_decode(s + i, &cp);
        bool hit = pred ? pred(cp) : cp == only_cp;
        if (hit) {
            if (last < i) tok_spans_push(out, last, i, false);
            tok_spans_push(out, i, i + (size_t)k, true);
            last = i + (size_t)k;
        }
        i += (size_t)k;
    }
    if (last < n) tok_spans_push(out, last, n, false);
}

static bool is_numeric(int32_t cp) {
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

static bool is_punctuation(int32_t cp) {
    if (cp < 0x80)
        return (cp >= 0x21 && cp <= 0x2f) || (cp >= 0x3a && cp <= 0x40) ||
               (cp >= 0x5b && cp <= 0x60) || (cp >= 0x7b && cp <= 0x7e);
    utf8proc_category_t c = utf8proc_category(cp);
    return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

/* The GPT-2 bytes_to_unicode map in closed form: printable Latin-1 bytes map to themselves, the
 * other 68 bytes to U+0100.. in ascending byte order. */
static int32_t byte_to_cp(uint8_t b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    if (b <= 32) return 256 + b;
    if (b >= 127 && b <= 160) return 256 + 33 + (b - 127);
    return 256 + 67; /* 173 */
}

static void byte_level_map(const char *s, size_t n, tok_buf *out) {
    for (size_t i = 0; i < n; i++) {
        char enc[4];
        int k = tok_utf8_encode(byte_to_cp((uint8_t)s[i]), enc);
        tok_buf_append(out, enc, (size_t)k);
    }
}

static void flip(tok_spans *sp) {
    for (int i = 0; i < sp->n; i++) sp->data[i].is_match = !sp->data[i].is_match;
}

/* Pre-tokenizes one piece into out. */
static int pretok_piece(const tok_pretok *p, const tok_shared_re *re, tok_ctx *ctx, const char *s,
                        size_t n, bool at_start, tok_pieces *out, tok_spans *sp, tok_buf *scratch,
                        kv_error *err) {
    switch (p->kind) {
    case TOK_PRE_BYTE_LEVEL: {
        scratch->len = 0;
        if (p->add_prefix_space && (n == 0 || s[0] != ' ')) tok_buf_push(scratch, ' ');
        tok_buf_append(scratch, s, n);
        tok_pieces words = {0};
        if (p->use_regex) {
            if (tok_regex_spans(re->gpt2, ctx, scratch->data, scratch->len, sp, err)) {
                tok_pieces_free(&words);
                return -1;
            }
            split_emit(scratch->data, at_start, sp, TOK_SPLIT_ISOLATED, &words);
        } else if (scratch->len > 0) {
            tok_pieces_add(&words, scratch->data, scratch->len, at_start);
        }
        tok_buf mapped = {0};
        for (int i = 0; i < words.n; i++) {
            mapped.len = 0;
            byte_level_map(words.text.data + words.items[i].off, words.items[i].len, &mapped);
            tok_pieces_add(out, mapped.data, mapped.len, words.items[i].at_start);
        }
        tok_buf_free(&mapped);
        tok_pieces_free(&words);
        return 0;
    }
    case TOK_PRE_SPLIT:
        if (tok_pattern_spans(&p->pattern, ctx, s, n, sp, err)) return -1;
        if (p->invert) flip(sp);
        split_emit(s, at_start, sp, p->behavior, out);
        return 0;
    case TOK_PRE_METASPACE: {
        scratch->len = 0;
        bool starts =
            n >= strlen(p->replacement) && !memcmp(s, p->replacement, strlen(p->replacement));
        bool prepend = !starts && (p->prepend_scheme == TOK_PREPEND_ALWAYS ||
                                   (p->prepend_scheme == TOK_PREPEND_FIRST && at_start));
        /* the replacement of ' ' happens first, so a leading space counts as the replacement */
        if (n > 0 && s[0] == ' ') prepend = false;
        if (prepend) tok_buf_append(scratch, p->replacement, strlen(p->replacement));
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ')
                tok_buf_append(scratch, p->replacement, strlen(p->replacement));
            else
                tok_buf_push(scratch, s[i]);
        }
        if (!p->split) {
            if (scratch->len > 0) tok_pieces_add(out, scratch->data, scratch->len, at_start);
            return 0;
        }
        char_spans(scratch->data, scratch->len, NULL, p->replacement_cp, sp);
        split_emit(scratch->data, at_start, sp, TOK_SPLIT_MERGED_WITH_NEXT, out);
        return 0;
    }
    case TOK_PRE_DIGITS:
        char_spans(s, n, is_numeric, 0, sp);
        split_emit(s, at_start, sp,
                   p->individual_digits ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS, out);
        return 0;
    case TOK_PRE_PUNCTUATION:
        char_spans(s, n, is_punctuation, 0, sp);
        split_emit(s, at_start, sp, p->behavior, out);
        return 0;
    case TOK_PRE_WHITESPACE:
        if (tok_regex_spans(re->whitespace, ctx, s, n, sp, err)) return -1;
        flip(sp);
        split_emit(s, at_start, sp, TOK_SPLIT_REMOVED, out);
        return 0;
    case TOK_PRE_WHITESPACE_SPLIT:
        char_spans(s, n, tok_is_whitespace, 0, sp);
        split_emit(s, at_start, sp, TOK_SPLIT_REMOVED, out);
        return 0;
    case TOK_PRE_BERT: {
        tok_pieces words = {0};
        char_spans(s, n, tok_is_whitespace, 0, sp);
        split_emit(s, at_start, sp, TOK_SPLIT_REMOVED, &words);
        for (int i = 0; i < words.n; i++) {
            const char *w = words.text.data + words.items[i].off;
            char_spans(w, words.items[i].len, is_punctuation, 0, sp);
            split_emit(w, words.items[i].at_start, sp, TOK_SPLIT_ISOLATED, out);
        }
        tok_pieces_free(&words);
        return 0;
    }
    case TOK_PRE_SEQUENCE:
        break;
    }
    KV_CHECK(!"unreachable pre-tokenizer kind");
    return -1;
}

int tok_pretok_apply(const tok_pretok *p, const tok_shared_re *re, tok_ctx *ctx, tok_pieces *io,
                     tok_pieces *tmp, kv_error *err) {
    if (p->kind == TOK_PRE_SEQUENCE) {
        for (int i = 0; i < p->n_children; i++)
            if (tok_pretok_apply(&p->children[i], re, ctx, io, tmp, err)) return -1;
        return 0;
    }
    tok_pieces_clear(tmp);
    tok_spans sp = {0};
    tok_buf scratch = {0};
    int rc = 0;
    for (int i = 0; i < io->n && rc == 0; i++) {
        tok_piece pc = io->items[i];
        rc = pretok_piece(p, re, ctx, io->text.data + pc.off, pc.len, pc.at_start, tmp, &sp,
                          &scratch, err);
    }
    free(sp.data);
    tok_buf_free(&scratch);
    tok_pieces swap = *io;
    *io = *tmp;
    *tmp = swap;
    return rc;
}
