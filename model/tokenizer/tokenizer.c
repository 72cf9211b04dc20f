/* Tokenizer loading and the encode/decode pipelines: reads tokenizer.json (+
 * tokenizer_config.json), builds the components, matches added tokens on the raw and normalized
 * text, then runs normalizer -> pre-tokenizer -> BPE -> post-processor, and ids -> pieces ->
 * decoders back. The components themselves live in tokenizer_{normalize,pretok,bpe,decode,util}.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/tokenizer/tokenizer_internal.h"

/* ---- added-token trie ---- */

static int32_t trie_new_node(tok_trie *t, uint8_t byte) {
    if (t->n_nodes == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->nodes = kv_realloc(t->nodes, (size_t)t->cap * sizeof(tok_trie_node));
    }
    t->nodes[t->n_nodes] = (tok_trie_node){-1, -1, -1, byte};
    return t->n_nodes++;
}

static int32_t trie_child(const tok_trie *t, int32_t node, uint8_t byte) {
    for (int32_t c = t->nodes[node].first_child; c >= 0; c = t->nodes[c].next_sibling)
        if (t->nodes[c].byte == byte) return c;
    return -1;
}

/* The first token inserted with a given content wins, as with Aho-Corasick pattern order. */
static void trie_insert(tok_trie *t, const char *s, size_t n, int32_t token) {
    if (n == 0) return;
    if (t->n_nodes == 0) trie_new_node(t, 0);
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = trie_child(t, node, (uint8_t)s[i]);
        if (c < 0) {
            c = trie_new_node(t, (uint8_t)s[i]);
            t->nodes[c].next_sibling = t->nodes[node].first_child;
            t->nodes[node].first_child = c;
        }
        node = c;
    }
    if (t->nodes[node].token < 0) t->nodes[node].token = token;
    t->n_tokens++;
}

/* Longest token starting at s[0..n); returns its length (0 if none) and its index in *token. */
static size_t trie_longest(const tok_trie *t, const char *s, size_t n, int32_t *token) {
    size_t best = 0;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        node = trie_child(t, node, (uint8_t)s[i]);
        if (node < 0) break;
        if (t->nodes[node].token >= 0) {
            best = i + 1;
            *token = t->nodes[node].token;
        }
    }
    return best;
}

/* ---- loading ---- */

static void tokenizer_free_parts(tokenizer *t) {
    tok_bpe_free(&t->model);
    if (t->normalizer) tok_normalizer_free(t->normalizer);
    free(t->normalizer);
    if (t->pretok) tok_pretok_free(t->pretok);
    free(t->pretok);
    if (t->decoder) tok_decoder_free(t->decoder);
    free(t->decoder);
    tok_postproc_free(&t->post);
    tok_shared_re_free(&t->re);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm_content);
    }
    free(t->added);
    free(t->added_by_id);
    free(t->trie_raw.nodes);
    free(t->trie_norm.nodes);
    tok_strmap_free(&t->added_map);
}

void tokenizer_free(tokenizer *tok) {
    if (!tok) return;
    tokenizer_free_parts(tok);
    free(tok);
}

static bool is_present(json_t *j) {
    return j && !json_is_null(j);
}

static int parse_added(tokenizer *t, json_t *arr, kv_error *err) {
    if (!is_present(arr)) return 0;
    if (!json_is_array(arr))
        return kv_error_set(err, "tokenizer.json: added_tokens must be an array");
    t->n_added = (int)json_array_size(arr);
    t->added = kv_calloc((size_t)t->n_added + 1, sizeof(tok_added));
    for (int i = 0; i < t->n_added; i++) {
        json_t *e = json_array_get(arr, (size_t)i);
        json_t *id = json_object_get(e, "id"), *content = json_object_get(e, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) > 1 << 24 || !json_is_string(content))
            return kv_error_set(err,
                                "tokenizer.json: added_tokens[%d] needs an integer \"id\" in "
                                "[0, 2^24] and a string \"content\"",
                                i);
        tok_added *a = &t->added[i];
        a->len = json_string_length(content);
        a->content = kv_malloc(a->len + 1);
        memcpy(a->content, json_string_value(content), a->len + 1);
        a->id = (int32_t)json_integer_value(id);
        a->special = json_is_true(json_object_get(e, "special"));
        a->lstrip = json_is_true(json_object_get(e, "lstrip"));
        a->rstrip = json_is_true(json_object_get(e, "rstrip"));
        a->single_word = json_is_true(json_object_get(e, "single_word"));
        json_t *norm = json_object_get(e, "normalized");
        a->normalized = json_is_boolean(norm) ? json_is_true(norm) : !a->special;
    }
    return 0;
}

/* Builds the id index, the content map and the two tries (special tokens first, like Hugging
 * Face's AddedVocabulary). Normalized tokens are matched by their normalized content. */
static int index_added(tokenizer *t, kv_error *err) {
    t->n_vocab = t->model.n_ids;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id + 1 > t->n_vocab) t->n_vocab = t->added[i].id + 1;
    t->added_by_id = kv_malloc(((size_t)t->n_vocab + 1) * sizeof(int32_t));
    for (int i = 0; i <= t->n_vocab; i++) t->added_by_id[i] = -1;
    tok_strmap_init(&t->added_map, (uint32_t)t->n_added + 1);
    tok_ctx ctx;
    if (tok_ctx_init(&ctx, false, err)) return -1;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < t->n_added; i++) {
            tok_added *a = &t->added[i];
            if (a->special != (pass == 0) || a->len == 0) continue;
            t->added_by_id[a->id] = i;
            tok_strmap_put(&t->added_map, a->content, (uint32_t)a->len, a->id);
            if (!a->normalized) {
                trie_insert(&t->trie_raw, a->content, a->len, i);
                continue;
            }
            tok_buf nb = {0};
            bool lead = false;
            if (t->normalizer) {
                if (tok_normalize(t->normalizer, &ctx, a->content, a->len, &nb, &lead, err)) {
                    tok_buf_free(&nb);
                    tok_ctx_free(&ctx);
                    return -1;
                }
            } else {
                tok_buf_append(&nb, a->content, a->len);
            }
            a->norm_content = nb.data;
            a->norm_len = nb.len;
            trie_insert(&t->trie_norm, a->norm_content, a->norm_len, i);
        }
    }
    tok_ctx_free(&ctx);
    return 0;
}

/* A special-token field of tokenizer_config.json: "text" or {"content": "text", ...}. */
static const char *config_token(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* tokenizer_config.json: an explicit add_bos_token / add_eos_token rebuilds the post-processor
 * as transformers' update_post_processor does ([bos] $A [eos]). */
static int apply_config(tokenizer *t, const char *cfg_text, size_t cfg_len, kv_error *err) {
    json_error_t jerr;
    json_t *cfg = json_loadb(cfg_text, cfg_len, 0, &jerr);
    if (!cfg) return kv_error_set(err, "tokenizer_config.json: line %d: %s", jerr.line, jerr.text);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return kv_error_set(err, "tokenizer_config.json: not a JSON object");
    }
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    int32_t bos_id = bos ? tokenizer_token_to_id(t, bos) : -1;
    int32_t eos_id = eos ? tokenizer_token_to_id(t, eos) : -1;
    if (bos_id >= 0) t->bos_id = bos_id;
    if (eos_id >= 0) t->eos_id = eos_id;
    json_t *add_bos = json_object_get(cfg, "add_bos_token");
    json_t *add_eos = json_object_get(cfg, "add_eos_token");
    int rc = 0;
    if (json_is_boolean(add_bos) || json_is_boolean(add_eos)) {
        bool want_bos = json_is_true(add_bos), want_eos = json_is_true(add_eos);
        if (want_bos && bos_id < 0)
            rc = kv_error_set(err,
                              "tokenizer_config.json: add_bos_token is true but bos_token "
                              "\"%s\" is not a token",
                              bos ? bos : "(none)");
        else if (want_eos && eos_id < 0)
            rc = kv_error_set(err,
                              "tokenizer_config.json: add_eos_token is true but eos_token "
                              "\"%s\" is not a token",
                              eos ? eos : "(none)");
        else {
            tok_postproc_free(&t->post);
            t->post.present = true;
            if (want_bos) {
                t->post.prefix = kv_malloc(sizeof(int32_t));
                t->post.prefix[t->post.n_prefix++] = bos_id;
            }
            if (want_eos) {
                t->post.suffix = kv_malloc(sizeof(int32_t));
                t->post.suffix[t->post.n_suffix++] = eos_id;
            }
        }
    }
    json_decref(cfg);
    return rc;
}

/* Every id the post-processor adds must be a token, so that what encode returns decodes. */
static int check_post_ids(const tokenizer *t, kv_error *err) {
    for (int i = 0; i < t->post.n_prefix + t->post.n_suffix; i++) {
        int32_t id =
            i < t->post.n_prefix ? t->post.prefix[i] : t->post.suffix[i - t->post.n_prefix];
        if (!tok_piece_of(t, id, NULL))
            return kv_error_set(err,
                                "tokenizer.json: post_processor adds id %d, which is not a "
                                "token",
                                id);
    }
    return 0;
}

static int load_parts(tokenizer *t, json_t *root, kv_error *err) {
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return kv_error_set(err, "tokenizer.json: missing \"model\" object");
    if (tok_shared_re_init(&t->re, err)) return -1;
    if (tok_bpe_parse(&t->model, model, err)) return -1;
    json_t *n = json_object_get(root, "normalizer"), *p = json_object_get(root, "pre_tokenizer");
    json_t *d = json_object_get(root, "decoder");
    if (is_present(n)) {
        t->normalizer = kv_calloc(1, sizeof(tok_normalizer));
        if (tok_normalizer_parse(t->normalizer, n, err)) return -1;
    }
    if (is_present(p)) {
        t->pretok = kv_calloc(1, sizeof(tok_pretok));
        if (tok_pretok_parse(t->pretok, p, err)) return -1;
    }
    if (is_present(d)) {
        t->decoder = kv_calloc(1, sizeof(tok_decoder));
        if (tok_decoder_parse(t->decoder, d, err)) return -1;
    }
    if (tok_postproc_parse(&t->post, json_object_get(root, "post_processor"), err)) return -1;
    if (parse_added(t, json_object_get(root, "added_tokens"), err)) return -1;
    if (index_added(t, err)) return -1;
    t->bos_id = t->post.n_prefix > 0 ? t->post.prefix[0] : -1;
    t->eos_id = -1;
    return check_post_ids(t, err);
}

int tokenizer_load_json(tokenizer **out, const char *json, size_t len, const char *config_json,
                        size_t config_len, kv_error *err) {
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) return kv_error_set(err, "tokenizer.json: line %d: %s", jerr.line, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return kv_error_set(err, "tokenizer.json: not a JSON object");
    }
    tokenizer *t = kv_calloc(1, sizeof(*t));
    int rc = load_parts(t, root, err);
    json_decref(root);
    if (rc == 0 && config_json) rc = apply_config(t, config_json, config_len, err);
    if (rc) {
        tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}

/* tokenizer.json of a large vocabulary is tens of MB; this only stops a wrong path from filling
 * memory. */
#define TOKENIZER_MAX_FILE_BYTES ((size_t)1 << 30)

int tokenizer_load(tokenizer **out, const char *path, kv_error *err) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return kv_error_set(err, "%s: %s", path, strerror(errno));
    tok_buf json_path = {0}, cfg_path = {0};
    if (S_ISDIR(st.st_mode)) {
        tok_buf_append(&json_path, path, strlen(path));
        tok_buf_append(&json_path, "/tokenizer.json", 15);
        tok_buf_append(&cfg_path, path, strlen(path));
    } else {
        tok_buf_append(&json_path, path, strlen(path));
        const char *slash = strrchr(path, '/');
        if (slash)
            tok_buf_append(&cfg_path, path, (size_t)(slash - path));
        else
            tok_buf_append(&cfg_path, ".", 1);
    }
    tok_buf_append(&cfg_path, "/tokenizer_config.json", 22);
    char *json = NULL, *cfg = NULL;
    size_t json_len = 0, cfg_len = 0;
    int rc = 0;
    json = kv_read_file(json_path.data, TOKENIZER_MAX_FILE_BYTES, &json_len, err);
    if (!json) rc = -1;
    if (rc == 0 && access(cfg_path.data, F_OK) == 0) {
        cfg = kv_read_file(cfg_path.data, TOKENIZER_MAX_FILE_BYTES, &cfg_len, err);
        if (!cfg) rc = -1;
    }
    if (rc == 0) {
        kv_error inner = {{0}};
        rc = tokenizer_load_json(out, json, json_len, cfg, cfg_len, &inner);
        /* name the file instead of the generic "tokenizer.json: " or "tokenizer_config.json: "
         * prefix */
        const char *msg = inner.msg, *file = json_path.data;
        if (!strncmp(msg, "tokenizer.json: ", 16)) {
            msg += 16;
        } else if (!strncmp(msg, "tokenizer_config.json: ", 23)) {
            msg += 23;
            file = cfg_path.data;
        }
        if (rc) kv_error_set(err, "%s: %s", file, msg);
    }
    free(json);
    free(cfg);
    tok_buf_free(&json_path);
    tok_buf_free(&cfg_path);
    return rc;
}

/* ---- encoding ---- */

typedef struct encoder {
    const tokenizer *t;
    tok_ctx ctx;
    tok_pieces pieces, tmp;
    tok_ids *out;
    int max_ids;               /* stop once out holds more than this many ids; < 0 = no limit */
    const atomic_bool *cancel; /* stop when it reads true; NULL = never */
} encoder;

/* 1 (TOKENIZER_OVER_LIMIT) once the ids so far are more than the limit: encoding stops there. */
static int over_limit(const encoder *e) {
    if (e->cancel && atomic_load_explicit(e->cancel, memory_order_relaxed))
        return TOKENIZER_CANCELLED;
    return e->max_ids >= 0 && e->out->n > e->max_ids ? TOKENIZER_OVER_LIMIT : 0;
}

/* Pre-tokenizes and runs the model over text that holds no added token. */
static int encode_plain(encoder *e, const char *s, size_t n, bool at_start, kv_error *err) {
    if (n == 0) return 0;
    tok_pieces_clear(&e->pieces);
    tok_pieces_add(&e->pieces, s, n, at_start);
    if (e->t->pretok &&
        tok_pretok_apply(e->t->pretok, &e->t->re, &e->ctx, &e->pieces, &e->tmp, err))
        return -1;
    for (int i = 0; i < e->pieces.n; i++) {
        tok_piece p = e->pieces.items[i];
        int rc = tok_bpe_encode(&e->t->model, e->pieces.text.data + p.off, p.len, e->cancel, e->out,
                                err);
        if (rc == 0) rc = over_limit(e);
        if (rc) return rc;
    }
    return 0;
}

static bool ends_with_word(const encoder *e, const char *s, size_t n) {
    if (n == 0) return false;
    size_t b = n - 1;
    while (b > 0 && ((uint8_t)s[b] & 0xc0) == 0x80) b--;
    return pcre2_match(e->t->re.word_char, (PCRE2_SPTR)s + b, n - b, 0,
                       PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, e->ctx.md, e->ctx.mctx) >= 0;
}

static bool starts_with_word(const encoder *e, const char *s, size_t n) {
    if (n == 0) return false;
    size_t k = (size_t)tok_utf8_len((uint8_t)s[0]);
    return pcre2_match(e->t->re.word_char, (PCRE2_SPTR)s, k <= n ? k : n, 0,
                       PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, e->ctx.md, e->ctx.mctx) >= 0;
}

/* Start of the whitespace run that ends s[0..n). */
static size_t trailing_space_start(const char *s, size_t n) {
    while (n > 0) {
        size_t b = n - 1;
        while (b > 0 && ((uint8_t)s[b] & 0xc0) == 0x80) b--;
        int32_t cp;
        tok_utf8_decode(s + b, &cp);
        if (!tok_is_whitespace(cp)) break;
        n = b;
    }
    return n;
}

static size_t leading_space_len(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        int32_t cp;
        int k = tok_utf8_decode(s + i, &cp);
        if (!tok_is_whitespace(cp)) break;
        i += (size_t)k;
    }
    return i;
}

typedef int (*gap_fn)(encoder *e, const char *s, size_t n, bool at_start, kv_error *err);

/* Hugging Face AddedVocabulary::find_matches: leftmost-longest added tokens in s, with
 * single_word / lstrip / rstrip, calling gap() on the text between them. */
static int split_added(encoder *e, const tok_trie *trie, const char *s, size_t n, bool at_start,
                       gap_fn gap, kv_error *err) {
    if (trie->n_tokens == 0) return gap(e, s, n, at_start, err);
    size_t start_offset = 0, pos = 0;
    while (pos < n) {
        int32_t idx = -1;
        size_t mlen = trie_longest(trie, s + pos, n - pos, &idx);
        if (mlen == 0) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + mlen;
        pos = stop; /* the search resumes after the match, kept or not */
        const tok_added *a = &e->t->added[idx];
        if (a->single_word) {
            bool start_space = start == 0 || !ends_with_word(e, s, start);
            bool stop_space = stop == n || !starts_with_word(e, s + stop, n - stop);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = trailing_space_start(s, start);
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) stop += leading_space_len(s + stop, n - stop);
        if (start < start_offset) start = start_offset;
        if (start_offset < start) {
            int rc =
                gap(e, s + start_offset, start - start_offset, at_start && start_offset == 0, err);
            if (rc) return rc;
        }
        tok_ids_push(e->out, a->id);
        int lim = over_limit(e);
        if (lim) return lim;
        start_offset = stop;
    }
    if (start_offset < n)
        return gap(e, s + start_offset, n - start_offset, at_start && start_offset == 0, err);
    return 0;
}

static int normalized_gap(encoder *e, const char *s, size_t n, bool at_start, kv_error *err) {
    return encode_plain(e, s, n, at_start, err);
}

/* Text between non-normalized added tokens: normalize, then look for normalized added tokens. */
static int raw_gap(encoder *e, const char *s, size_t n, bool at_start, kv_error *err) {
    if (!e->t->normalizer)
        return split_added(e, &e->t->trie_norm, s, n, at_start, normalized_gap, err);
    bool lead_removed = false;
    tok_buf norm = {0};
    int rc = tok_normalize(e->t->normalizer, &e->ctx, s, n, &norm, &lead_removed, err);
    if (rc == 0)
        rc = split_added(e, &e->t->trie_norm, norm.data ? norm.data : "", norm.len,
                         at_start && !lead_removed, normalized_gap, err);
    tok_buf_free(&norm);
    return rc;
}

int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, bool add_special_tokens,
                     int32_t **ids, int *n_ids, kv_error *err) {
    return tokenizer_encode_limit(tok, text, len, add_special_tokens, -1, ids, n_ids, err);
}

int tokenizer_encode_limit(const tokenizer *tok, const char *text, size_t len,
                           bool add_special_tokens, int max_ids, int32_t **ids, int *n_ids,
                           kv_error *err) {
    return tokenizer_encode_cancel(tok, text, len, add_special_tokens, max_ids, NULL, ids, n_ids,
                                   err);
}

int tokenizer_encode_cancel(const tokenizer *tok, const char *text, size_t len,
                            bool add_special_tokens, int max_ids, const atomic_bool *cancel,
                            int32_t **ids, int *n_ids, kv_error *err) {
    *ids = NULL;
    *n_ids = 0;
    size_t bad;
    if (!text && len > 0) return kv_error_set(err, "tokenizer: NULL text");
    if (len > 0 && !tok_utf8_valid(text, len, &bad))
        return kv_error_set(err, "tokenizer: input is not valid UTF-8 (at byte %zu)", bad);
    if (len > (size_t)1 << 30) return kv_error_set(err, "tokenizer: input larger than 1 GiB");
    tok_ids out = {0};
    encoder e = {.t = tok, .out = &out, .max_ids = max_ids, .cancel = cancel};
    if (tok_ctx_init(&e.ctx, true, err)) return -1;
    bool add = add_special_tokens && tok->post.present;
    for (int i = 0; add && i < tok->post.n_prefix; i++) tok_ids_push(&out, tok->post.prefix[i]);
    int rc = over_limit(&e);
    if (rc == 0) rc = split_added(&e, &tok->trie_raw, len ? text : "", len, true, raw_gap, err);
    if (rc == 0) {
        for (int i = 0; add && i < tok->post.n_suffix; i++) tok_ids_push(&out, tok->post.suffix[i]);
        rc = over_limit(&e);
    }
    tok_ctx_free(&e.ctx);
    tok_pieces_free(&e.pieces);
    tok_pieces_free(&e.tmp);
    if (rc == TOKENIZER_CANCELLED) {
        free(out.data);
        return TOKENIZER_CANCELLED;
    }
    if (rc == TOKENIZER_OVER_LIMIT) {
        free(out.data);
        *n_ids = out.n; /* the ids produced when it stopped: more than max_ids */
        return TOKENIZER_OVER_LIMIT;
    }
    if (rc) {
        free(out.data);
        return -1;
    }
    if (!out.data) out.data = kv_malloc(sizeof(int32_t));
    *ids = out.data;
    *n_ids = out.n;
    return 0;
}

/* ---- decoding and lookups ---- */

const char *tok_piece_of(const tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    int32_t a = t->added_by_id[id];
    if (a >= 0) {
        /* Hugging Face decodes a normalized added token to its normalized form */
        const tok_added *tk = &t->added[a];
        if (tk->normalized && tk->norm_content) {
            if (len) *len = tk->norm_len;
            return tk->norm_content;
        }
        if (len) *len = tk->len;
        return tk->content;
    }
    if (id < t->model.n_ids && t->model.id_to_piece[id]) {
        if (len) *len = t->model.piece_lens[id];
        return t->model.id_to_piece[id];
    }
    return NULL;
}

/* Hugging Face skips a piece whose text is the content of a special token (by text, not id). */
static bool is_special_piece(const tokenizer *t, const char *p, size_t len) {
    int32_t id = tok_strmap_get(&t->added_map, p, len);
    if (id < 0 || t->added_by_id[id] < 0) return false;
    const tok_added *a = &t->added[t->added_by_id[id]];
    return a->special && a->len == len && memcmp(a->content, p, len) == 0;
}

int tokenizer_decode(const tokenizer *tok, const int32_t *ids, int n_ids, bool skip_special_tokens,
                     char **text, size_t *len, kv_error *err) {
    *text = NULL;
    *len = 0;
    tok_strlist l = {0};
    for (int i = 0; i < n_ids; i++) {
        size_t plen;
        const char *p = tok_piece_of(tok, ids[i], &plen);
        if (!p) {
            tok_strlist_free(&l);
            return kv_error_set(err, "tokenizer: token id %d is out of range (vocabulary of %d)",
                                ids[i], tok->n_vocab);
        }
        if (skip_special_tokens && is_special_piece(tok, p, plen)) continue;
        tok_strlist_add(&l, p, plen);
    }
    tok_buf out = {0};
    tok_buf_append(&out, "", 0);
    if (tok->decoder) {
        tok_ctx ctx;
        if (tok_ctx_init(&ctx, false, err) || tok_decoder_apply(tok->decoder, &ctx, &l, err)) {
            tok_ctx_free(&ctx);
            tok_strlist_free(&l);
            tok_buf_free(&out);
            return -1;
        }
        tok_ctx_free(&ctx);
        for (int i = 0; i < l.n; i++) tok_buf_append(&out, l.items[i].data, l.items[i].len);
    } else {
        /* Hugging Face joins the pieces with spaces when there is no decoder. */
        for (int i = 0; i < l.n; i++) {
            if (i > 0) tok_buf_push(&out, ' ');
            tok_buf_append(&out, l.items[i].data, l.items[i].len);
        }
    }
    tok_strlist_free(&l);
    *text = out.data;
    *len = out.len;
    return 0;
}

int tokenizer_vocab_size(const tokenizer *tok) {
    return tok->n_vocab;
}

const char *tokenizer_id_to_token(const tokenizer *tok, int32_t id) {
    return tok_piece_of(tok, id, NULL);
}

int32_t tokenizer_token_to_id(const tokenizer *tok, const char *piece) {
    size_t n = strlen(piece);
    int32_t id = tok_strmap_get(&tok->added_map, piece, n);
    return id >= 0 ? id : tok_strmap_get(&tok->model.vocab, piece, n);
}

bool tokenizer_is_special(const tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab) return false;
    int32_t a = tok->added_by_id[id];
    return a >= 0 && tok->added[a].special;
}

int32_t tokenizer_bos_id(const tokenizer *tok) {
    return tok->bos_id;
}
int32_t tokenizer_eos_id(const tokenizer *tok) {
    return tok->eos_id;
}
