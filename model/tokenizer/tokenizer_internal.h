/* Internals shared by the tokenizer_*.c files: byte buffers, UTF-8 helpers, hash tables, regex
 * patterns, and the component types (normalizers, pre-tokenizers, BPE model, post-processor,
 * decoders) that tokenizer.c assembles from tokenizer.json. Not part of the public API. */
#ifndef KVSERVE_TOKENIZER_INTERNAL_H
#define KVSERVE_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>

#include "model/tokenizer/tokenizer.h"

/* ---- growable byte buffer (always NUL-terminated when data != NULL) ---- */
typedef struct tok_buf {
    char *data;
    size_t len, cap;
} tok_buf;

void tok_buf_reserve(tok_buf *b, size_t extra);
void tok_buf_append(tok_buf *b, const char *s, size_t n);
void tok_buf_push(tok_buf *b, char c);
void tok_buf_free(tok_buf *b);

/* ---- growable id array ---- */
typedef struct tok_ids {
    int32_t *data;
    int n, cap;
} tok_ids;

void tok_ids_push(tok_ids *v, int32_t id);

/* ---- UTF-8 ---- */
/* Length in bytes of the first character of s (valid UTF-8 assumed, n >= 1). */
int tok_utf8_len(uint8_t first);
/* Decodes the character at s (valid UTF-8 assumed); returns its byte length. */
int tok_utf8_decode(const char *s, int32_t *cp);
int tok_utf8_encode(int32_t cp, char out[4]);
/* Strict validation; *bad_at gets the offset of the first invalid byte. */
bool tok_utf8_valid(const char *s, size_t n, size_t *bad_at);
/* Appends s to out, replacing each maximal invalid subsequence by U+FFFD exactly as Rust's
 * String::from_utf8_lossy does. */
void tok_utf8_lossy(tok_buf *out, const char *s, size_t n);
/* Rust char::is_whitespace (the Unicode White_Space property). */
bool tok_is_whitespace(int32_t cp);

/* ---- string -> id hash table (open addressing; keys point into caller-owned memory) ---- */
typedef struct tok_strmap {
    const char **keys;
    uint32_t *key_lens;
    int32_t *vals;
    uint32_t mask; /* capacity - 1; capacity is a power of two */
    uint32_t n;
} tok_strmap;

void tok_strmap_init(tok_strmap *m, uint32_t expected);
/* Inserts or overwrites; key memory must outlive the map. */
void tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t val);
/* -1 when absent. */
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len);
void tok_strmap_free(tok_strmap *m);

/* ---- (a, b) -> (rank, new id) merge table ---- */
typedef struct tok_merge_entry {
    uint64_t key; /* (a << 32) | b, UINT64_MAX when empty */
    uint32_t rank;
    int32_t new_id;
} tok_merge_entry;

typedef struct tok_mergemap {
    tok_merge_entry *slots;
    uint32_t mask;
    uint32_t n;
} tok_mergemap;

/* ---- scratch state of one encode call (regex match data, JIT stack) ---- */
typedef struct tok_ctx {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
} tok_ctx;

/* big_stack: a JIT stack of up to 8 MiB for split regexes over long text (encoding); decoding's
 * Replace patterns run on PCRE2's default 32 KiB stack. */
int tok_ctx_init(tok_ctx *c, bool big_stack, kv_error *err);
void tok_ctx_free(tok_ctx *c);

/* ---- patterns: a literal string or a PCRE2 regex (compiled UTF | UCP, JIT) ---- */
typedef struct tok_pattern {
    char *literal; /* NULL for a regex */
    size_t literal_len;
    pcre2_code *re;
} tok_pattern;

/* A span of a searched string: [start, end) and whether it is a match. */
typedef struct tok_span {
    size_t start, end;
    bool is_match;
} tok_span;

typedef struct tok_spans {
    tok_span *data;
    int n, cap;
} tok_spans;

void tok_spans_push(tok_spans *v, size_t start, size_t end, bool is_match);

/* Parses {"String": s} or {"Regex": r}; where names the field for errors. */
int tok_pattern_parse(tok_pattern *p, json_t *j, const char *where, kv_error *err);
int tok_regex_compile(pcre2_code **out, const char *pattern, const char *where, kv_error *err);
void tok_pattern_free(tok_pattern *p);
/* Splits s into spans covering it: matches and the gaps between them, with the empty-match rules
 * of the onig/regex iterators Hugging Face uses. An empty s gives one empty non-match span. */
int tok_pattern_spans(const tok_pattern *p, tok_ctx *ctx, const char *s, size_t n, tok_spans *out,
                      kv_error *err);
int tok_regex_spans(const pcre2_code *re, tok_ctx *ctx, const char *s, size_t n, tok_spans *out,
                    kv_error *err);

/* ---- normalizers ---- */
typedef enum tok_norm_kind {
    TOK_NORM_NFC,
    TOK_NORM_NFKC,
    TOK_NORM_NFD,
    TOK_NORM_NFKD,
    TOK_NORM_PREPEND,
    TOK_NORM_REPLACE,
    TOK_NORM_STRIP,
    TOK_NORM_LOWERCASE,
    TOK_NORM_SEQUENCE,
} tok_norm_kind;

typedef struct tok_normalizer {
    tok_norm_kind kind;
    char *content;                   /* Prepend: the prefix; Replace: the replacement */
    tok_pattern pattern;             /* Replace */
    bool strip_left, strip_right;    /* Strip */
    struct tok_normalizer *children; /* Sequence */
    int n_children;
} tok_normalizer;

int tok_normalizer_parse(tok_normalizer *n, json_t *j, kv_error *err);
void tok_normalizer_free(tok_normalizer *n);
/* Normalizes s into out (cleared first). *lead_removed is set when characters at the very start
 * were removed (the first normalized byte then no longer maps to original offset 0). */
int tok_normalize(const tok_normalizer *n, tok_ctx *ctx, const char *s, size_t len, tok_buf *out,
                  bool *lead_removed, kv_error *err);

/* ---- pre-tokenizers ---- */
typedef enum tok_split_behavior {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_WITH_PREVIOUS,
    TOK_SPLIT_MERGED_WITH_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

typedef enum tok_pretok_kind {
    TOK_PRE_BYTE_LEVEL,
    TOK_PRE_SPLIT,
    TOK_PRE_METASPACE,
    TOK_PRE_DIGITS,
    TOK_PRE_PUNCTUATION,
    TOK_PRE_WHITESPACE,
    TOK_PRE_WHITESPACE_SPLIT,
    TOK_PRE_BERT,
    TOK_PRE_SEQUENCE,
} tok_pretok_kind;

typedef enum tok_prepend_scheme {
    TOK_PREPEND_ALWAYS,
    TOK_PREPEND_FIRST,
    TOK_PREPEND_NEVER,
} tok_prepend_scheme;

typedef struct tok_pretok {
    tok_pretok_kind kind;
    bool add_prefix_space, use_regex; /* ByteLevel */
    tok_pattern pattern;         /* Split (ByteLevel/Whitespace use the shared regexes below) */
    tok_split_behavior behavior; /* Split, Punctuation */
    bool invert;                 /* Split */
    char replacement[5];         /* Metaspace: the replacement character, UTF-8 */
    int32_t replacement_cp;
    tok_prepend_scheme prepend_scheme; /* Metaspace */
    bool split;                        /* Metaspace */
    bool individual_digits;            /* Digits */
    struct tok_pretok *children;       /* Sequence */
    int n_children;
} tok_pretok;

/* Pieces of text being pre-tokenized; text of piece i is text.data[off, off + len).
 * at_start: the piece begins at original offset 0 (Metaspace prepend_scheme "first"). */
typedef struct tok_piece {
    size_t off, len;
    bool at_start;
} tok_piece;

typedef struct tok_pieces {
    tok_buf text;
    tok_piece *items;
    int n, cap;
} tok_pieces;

void tok_pieces_add(tok_pieces *p, const char *s, size_t len, bool at_start);
void tok_pieces_clear(tok_pieces *p);
void tok_pieces_free(tok_pieces *p);

/* Regexes compiled once per tokenizer and shared by components. */
typedef struct tok_shared_re {
    pcre2_code *gpt2;       /* ByteLevel use_regex */
    pcre2_code *whitespace; /* Whitespace pre-tokenizer: \w+|[^\w\s]+ with Rust's \w and \s */
    pcre2_code *word_char;  /* one Rust \w character (added tokens single_word) */
} tok_shared_re;

int tok_shared_re_init(tok_shared_re *r, kv_error *err);
void tok_shared_re_free(tok_shared_re *r);

int tok_pretok_parse(tok_pretok *p, json_t *j, kv_error *err);
void tok_pretok_free(tok_pretok *p);
/* Replaces the pieces in *io by the pre-tokenized pieces (tmp is scratch). */
int tok_pretok_apply(const tok_pretok *p, const tok_shared_re *re, tok_ctx *ctx, tok_pieces *io,
                     tok_pieces *tmp, kv_error *err);

/* ---- BPE model ---- */
typedef struct tok_bpe {
    tok_strmap vocab;
    tok_mergemap merges;
    char *vocab_text;         /* all pieces, NUL-separated; vocab keys point here */
    const char **id_to_piece; /* [n_ids], NULL where an id has no piece */
    uint32_t *piece_lens;
    int n_ids;      /* largest model id + 1 */
    int32_t unk_id; /* -1 when none */
    bool fuse_unk, byte_fallback, ignore_merges;
    char *continuing_subword_prefix; /* NULL when none */
    char *end_of_word_suffix;
    int32_t byte_ids[256]; /* <0xNN> ids for byte_fallback, -1 when absent */
} tok_bpe;

int tok_bpe_parse(tok_bpe *m, json_t *j, kv_error *err);
void tok_bpe_free(tok_bpe *m);
/* Appends the ids of one pre-tokenized word. */
/* 0, -1 on error, TOKENIZER_CANCELLED once *cancel (may be NULL) reads true. */
int tok_bpe_encode(const tok_bpe *m, const char *s, size_t len, const atomic_bool *cancel,
                   tok_ids *out, kv_error *err);

/* ---- post-processor (TemplateProcessing, Bert/Roberta, ByteLevel, Sequence) ---- */
typedef struct tok_postproc {
    bool present;
    int32_t *prefix, *suffix; /* ids around the sequence when add_special_tokens */
    int n_prefix, n_suffix;
} tok_postproc;

int tok_postproc_parse(tok_postproc *p, json_t *j, kv_error *err);
void tok_postproc_free(tok_postproc *p);

/* ---- decoders ---- */
typedef enum tok_dec_kind {
    TOK_DEC_BYTE_LEVEL,
    TOK_DEC_METASPACE,
    TOK_DEC_REPLACE,
    TOK_DEC_BYTE_FALLBACK,
    TOK_DEC_FUSE,
    TOK_DEC_STRIP,
    TOK_DEC_SEQUENCE,
} tok_dec_kind;

typedef struct tok_decoder {
    tok_dec_kind kind;
    tok_pattern pattern; /* Replace */
    char *content;       /* Replace */
    int32_t strip_cp;    /* Strip: the character; Metaspace: the replacement */
    int strip_start, strip_stop;
    bool prepend; /* Metaspace: prepend_scheme != never */
    struct tok_decoder *children;
    int n_children;
} tok_decoder;

/* A list of strings flowing through the decoder chain. */
typedef struct tok_strlist {
    tok_buf *items;
    int n, cap;
} tok_strlist;

void tok_strlist_add(tok_strlist *l, const char *s, size_t n);
void tok_strlist_free(tok_strlist *l);

int tok_decoder_parse(tok_decoder *d, json_t *j, kv_error *err);
void tok_decoder_free(tok_decoder *d);
/* Runs the chain over l in place (Hugging Face decode_chain). */
int tok_decoder_apply(const tok_decoder *d, tok_ctx *ctx, tok_strlist *l, kv_error *err);

/* ---- added tokens ---- */
typedef struct tok_added {
    char *content;
    size_t len;
    char *norm_content; /* content after the normalizer (normalized tokens only) */
    size_t norm_len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* Byte trie over added-token contents, for leftmost-longest matching. Children of a node are a
 * linked list (first_child, next_sibling); added-token sets are small. */
typedef struct tok_trie_node {
    int32_t first_child, next_sibling; /* -1 when none */
    int32_t token;                     /* index into added[], -1 when no token ends here */
    uint8_t byte;
} tok_trie_node;

typedef struct tok_trie {
    tok_trie_node *nodes;
    int n_nodes, cap;
    int n_tokens;
} tok_trie;

/* ---- the tokenizer ---- */
struct tokenizer {
    tok_bpe model;
    tok_normalizer *normalizer; /* NULL when none */
    tok_pretok *pretok;         /* NULL when none */
    tok_decoder *decoder;       /* NULL when none */
    tok_postproc post;
    tok_shared_re re;
    tok_added *added;
    int n_added;
    int32_t *added_by_id;         /* [n_vocab] index into added[] or -1 */
    tok_trie trie_raw, trie_norm; /* non-normalized / normalized added tokens */
    tok_strmap added_map;         /* content -> id */
    int n_vocab;
    int32_t bos_id, eos_id;
};

/* Token text of an id (added tokens first, then the model); NULL if none. */
const char *tok_piece_of(const tokenizer *t, int32_t id, size_t *len);

#endif
