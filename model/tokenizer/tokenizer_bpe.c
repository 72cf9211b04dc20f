/* The BPE model of tokenizer.json: vocabulary and ranked merges in hash tables, and the
 * per-word merge loop (a min-heap of candidate merges over a linked list of symbols, the same
 * order Hugging Face applies: lowest rank first, leftmost on ties). Handles unk / fuse_unk,
 * byte_fallback, ignore_merges, continuing_subword_prefix and end_of_word_suffix. */
#include <stdio.h>
#include <stdlib.h>

#include "model/tokenizer/tokenizer_internal.h"

/* ---- merge table ---- */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static void mergemap_init(tok_mergemap *m, uint32_t expected) {
    uint32_t cap = 16;
    while (cap < expected * 2u + 1u) cap *= 2;
    m->slots = kv_malloc((size_t)cap * sizeof(tok_merge_entry));
    for (uint32_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->n = 0;
}

/* A later merge of the same pair overwrites the earlier one, as a Rust HashMap collect does. */
static void mergemap_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t i = (uint32_t)mix64(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & m->mask;
    if (m->slots[i].key == UINT64_MAX) m->n++;
    m->slots[i] = (tok_merge_entry){key, rank, new_id};
}

static const tok_merge_entry *mergemap_get(const tok_mergemap *m, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t i = (uint32_t)mix64(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX) {
        if (m->slots[i].key == key) return &m->slots[i];
        i = (i + 1) & m->mask;
    }
    return NULL;
}

/* ---- loading ---- */

static char *opt_string(json_t *j) {
    if (!json_is_string(j)) return NULL;
    return kv_strdup(json_string_value(j));
}

static int parse_vocab(tok_bpe *m, json_t *vocab, kv_error *err) {
    if (!json_is_object(vocab))
        return kv_error_set(err, "tokenizer.json: model.vocab must be an object");
    size_t total = 0, n = json_object_size(vocab);
    const char *key;
    json_t *val;
    int32_t max_id = -1;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) > (1 << 24))
            return kv_error_set(err,
                                "tokenizer.json: model.vocab[\"%.60s\"] must be an id in "
                                "[0, 2^24]",
                                key);
        total += strlen(key) + 1;
        if ((int32_t)json_integer_value(val) > max_id) max_id = (int32_t)json_integer_value(val);
    }
    m->vocab_text = kv_malloc(total + 1);
    m->n_ids = max_id + 1;
    m->id_to_piece = kv_calloc((size_t)m->n_ids + 1, sizeof(char *));
    m->piece_lens = kv_calloc((size_t)m->n_ids + 1, sizeof(uint32_t));
    tok_strmap_init(&m->vocab, (uint32_t)n);
    char *w = m->vocab_text;
    json_object_foreach(vocab, key, val) {
        size_t len = strlen(key);
        memcpy(w, key, len + 1);
        int32_t id = (int32_t)json_integer_value(val);
        tok_strmap_put(&m->vocab, w, (uint32_t)len, id);
        m->id_to_piece[id] = w;
        m->piece_lens[id] = (uint32_t)len;
        w += len + 1;
    }
    return 0;
}

/* Looks up a piece given as a JSON string in the vocabulary; -1 if absent. */
static int32_t vocab_id(const tok_bpe *m, const char *s) {
    return tok_strmap_get(&m->vocab, s, strlen(s));
}

static int parse_merges(tok_bpe *m, json_t *merges, kv_error *err) {
    size_t n = json_is_array(merges) ? json_array_size(merges) : 0;
    if (merges && !json_is_array(merges) && !json_is_null(merges))
        return kv_error_set(err, "tokenizer.json: model.merges must be an array");
    mergemap_init(&m->merges, (uint32_t)n);
    size_t prefix_len = m->continuing_subword_prefix ? strlen(m->continuing_subword_prefix) : 0;
    tok_buf joined = {0};
    char *owned = NULL;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(merges, i);
        const char *a = NULL, *b = NULL;
        if (json_is_string(e)) {
            /* "a b": exactly one space, as Hugging Face's convert_merges_to_hashmap */
            free(owned);
            owned = kv_strdup(json_string_value(e));
            char *sp = strchr(owned, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return free(owned), tok_buf_free(&joined),
                       kv_error_set(err,
                                    "tokenizer.json: model.merges[%zu] \"%.60s\" is not two "
                                    "tokens separated by one space",
                                    i, json_string_value(e));
            *sp = 0;
            a = owned;
            b = sp + 1;
        } else if (json_is_array(e) && json_array_size(e) == 2 &&
                   json_is_string(json_array_get(e, 0)) && json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1));
        } else {
            free(owned);
            tok_buf_free(&joined);
            return kv_error_set(err,
                                "tokenizer.json: model.merges[%zu] must be \"a b\" or "
                                "[\"a\", \"b\"]",
                                i);
        }
        int32_t ia = vocab_id(m, a), ib = vocab_id(m, b);
        joined.len = 0;
        tok_buf_append(&joined, a, strlen(a));
        size_t bl = strlen(b);
        if (bl >= prefix_len) tok_buf_append(&joined, b + prefix_len, bl - prefix_len);
        int32_t inew = tok_strmap_get(&m->vocab, joined.data, joined.len);
        if (ia < 0 || ib < 0 || inew < 0) {
            const char *missing = ia < 0 ? a : ib < 0 ? b : joined.data;
            kv_error_set(err,
                         "tokenizer.json: model.merges[%zu]: token \"%.60s\" is not in the "
                         "vocabulary",
                         i, missing);
            free(owned);
            tok_buf_free(&joined);
            return -1;
        }
        mergemap_put(&m->merges, ia, ib, (uint32_t)i, inew);
    }
    free(owned);
    tok_buf_free(&joined);
    return 0;
}

int tok_bpe_parse(tok_bpe *m, json_t *j, kv_error *err) {
    *m = (tok_bpe){0};
    m->unk_id = -1;
    for (int b = 0; b < 256; b++) m->byte_ids[b] = -1;
    json_t *type = json_object_get(j, "type");
    if (type && !(json_is_string(type) && !strcmp(json_string_value(type), "BPE")))
        return kv_error_set(err, "tokenizer.json: unsupported model type \"%s\"",
                            json_is_string(type) ? json_string_value(type) : "?");
    if (!type && !json_object_get(j, "merges"))
        return kv_error_set(err, "tokenizer.json: model has no \"type\" and no merges (only BPE "
                                 "is supported)");
    json_t *dropout = json_object_get(j, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) != 0.0)
        return kv_error_set(err,
                            "tokenizer.json: BPE dropout %g is not supported (encoding "
                            "would be random)",
                            json_number_value(dropout));
    m->fuse_unk = json_is_true(json_object_get(j, "fuse_unk"));
    m->byte_fallback = json_is_true(json_object_get(j, "byte_fallback"));
    m->ignore_merges = json_is_true(json_object_get(j, "ignore_merges"));
    m->continuing_subword_prefix = opt_string(json_object_get(j, "continuing_subword_prefix"));
    m->end_of_word_suffix = opt_string(json_object_get(j, "end_of_word_suffix"));
    if (parse_vocab(m, json_object_get(j, "vocab"), err)) return -1;
    if (parse_merges(m, json_object_get(j, "merges"), err)) return -1;
    json_t *unk = json_object_get(j, "unk_token");
    if (json_is_string(unk)) {
        m->unk_id = vocab_id(m, json_string_value(unk));
        if (m->unk_id < 0)
            return kv_error_set(err,
                                "tokenizer.json: model.unk_token \"%.60s\" is not in the "
                                "vocabulary",
                                json_string_value(unk));
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", b);
        m->byte_ids[b] = vocab_id(m, name);
    }
    return 0;
}

void tok_bpe_free(tok_bpe *m) {
    tok_strmap_free(&m->vocab);
    free(m->merges.slots);
    free(m->vocab_text);
    free(m->id_to_piece);
    free(m->piece_lens);
    free(m->continuing_subword_prefix);
    free(m->end_of_word_suffix);
    *m = (tok_bpe){0};
}

/* ---- the merge loop ---- */

typedef struct symbol {
    int32_t id;
    int prev, next; /* -1 at the ends */
    uint32_t len;   /* bytes; 0 once merged into its left neighbour */
} symbol;

typedef struct cand {
    uint32_t rank;
    int pos; /* index of the left symbol */
    int32_t new_id;
} cand;

typedef struct word {
    symbol *syms;
    int n, cap;
    cand *heap;
    int n_heap, cap_heap;
} word;

static void word_add(word *w, int32_t id, uint32_t len) {
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 32;
        w->syms = kv_realloc(w->syms, (size_t)w->cap * sizeof(symbol));
    }
    int i = w->n++;
    w->syms[i] = (symbol){id, i - 1, -1, len};
    if (i > 0) w->syms[i - 1].next = i;
}

static bool cand_less(cand a, cand b) {
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static void heap_push(word *w, cand c) {
    if (w->n_heap == w->cap_heap) {
        w->cap_heap = w->cap_heap ? w->cap_heap * 2 : 32;
        w->heap = kv_realloc(w->heap, (size_t)w->cap_heap * sizeof(cand));
    }
    int i = w->n_heap++;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!cand_less(c, w->heap[parent])) break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = c;
}

static cand heap_pop(word *w) {
    cand top = w->heap[0];
    cand last = w->heap[--w->n_heap];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        cand best = last;
        if (l < w->n_heap && cand_less(w->heap[l], best)) m = l, best = w->heap[l];
        if (r < w->n_heap && cand_less(w->heap[r], best)) m = r;
        if (m == i) break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (w->n_heap > 0) w->heap[i] = last;
    return top;
}

static void push_pair(const tok_bpe *m, word *w, int pos) {
    int nx = w->syms[pos].next;
    if (nx < 0) return;
    const tok_merge_entry *e = mergemap_get(&m->merges, w->syms[pos].id, w->syms[nx].id);
    if (e) heap_push(w, (cand){e->rank, pos, e->new_id});
}

/* false when cancelled (checked every 4096 merges: a piece of megabytes takes seconds). */
static bool merge_all(const tok_bpe *m, word *w, const atomic_bool *cancel) {
    w->n_heap = 0;
    for (int i = 0; i + 1 < w->n; i++) push_pair(m, w, i);
    for (unsigned step = 1; w->n_heap > 0; step++) {
        if (cancel && (step & 4095) == 0 && atomic_load_explicit(cancel, memory_order_relaxed))
            return false;
        cand top = heap_pop(w);
        symbol *s = &w->syms[top.pos];
        if (s->len == 0 || s->next < 0) continue;
        symbol *right = &w->syms[s->next];
        /* a stale candidate: the pair at pos changed since it was queued */
        const tok_merge_entry *e = mergemap_get(&m->merges, s->id, right->id);
        if (!e || e->new_id != top.new_id) continue;
        s->id = top.new_id;
        s->len += right->len;
        s->next = right->next;
        right->len = 0;
        if (s->next >= 0) w->syms[s->next].prev = top.pos;
        if (s->prev >= 0) push_pair(m, w, s->prev);
        push_pair(m, w, top.pos);
    }
    return true;
}

int tok_bpe_encode(const tok_bpe *m, const char *s, size_t len, const atomic_bool *cancel,
                   tok_ids *out, kv_error *err) {
    if (len == 0) return 0;
    if (m->ignore_merges) {
        int32_t id = tok_strmap_get(&m->vocab, s, len);
        if (id >= 0) {
            tok_ids_push(out, id);
            return 0;
        }
    }
    word w = {0};
    tok_buf piece = {0};
    int32_t unk = -1;
    uint32_t unk_len = 0;
    bool has_unk = false;
    for (size_t i = 0; i < len;) {
        size_t k = (size_t)tok_utf8_len((uint8_t)s[i]);
        if (i + k > len) k = len - i;
        const char *c = s + i;
        size_t clen = k;
        if (m->continuing_subword_prefix || m->end_of_word_suffix) {
            piece.len = 0;
            if (i > 0 && m->continuing_subword_prefix)
                tok_buf_append(&piece, m->continuing_subword_prefix,
                               strlen(m->continuing_subword_prefix));
            tok_buf_append(&piece, c, k);
            if (i + k == len && m->end_of_word_suffix)
                tok_buf_append(&piece, m->end_of_word_suffix, strlen(m->end_of_word_suffix));
            c = piece.data;
            clen = piece.len;
        }
        i += k;
        int32_t id = tok_strmap_get(&m->vocab, c, clen);
        if (id >= 0) {
            if (has_unk) {
                word_add(&w, unk, unk_len);
                has_unk = false;
            }
            word_add(&w, id, (uint32_t)k);
            continue;
        }
        if (m->byte_fallback) {
            bool all = true;
            for (size_t b = 0; b < clen; b++) all = all && m->byte_ids[(uint8_t)c[b]] >= 0;
            if (all) {
                /* Hugging Face adds these without flushing a pending unk first. */
                for (size_t b = 0; b < clen; b++) word_add(&w, m->byte_ids[(uint8_t)c[b]], 1);
                continue;
            }
        }
        if (m->unk_id >= 0) {
            if (has_unk && m->fuse_unk) {
                unk_len += (uint32_t)k;
            } else {
                if (has_unk) word_add(&w, unk, unk_len);
                unk = m->unk_id;
                unk_len = (uint32_t)k;
                has_unk = true;
            }
        }
        /* no unk token: Hugging Face drops the character */
    }
    if (has_unk) word_add(&w, unk, unk_len);
    tok_buf_free(&piece);
    bool done = merge_all(m, &w, cancel);
    for (int i = 0; done && i < w.n; i++)
        if (w.syms[i].len > 0) tok_ids_push(out, w.syms[i].id);
    free(w.syms);
    free(w.heap);
    (void)err;
    return done ? 0 : TOKENIZER_CANCELLED;
}
