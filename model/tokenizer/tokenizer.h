/* Hugging Face tokenizer.json (+ tokenizer_config.json): normalizers, pre-tokenizers, BPE model,
 * added tokens, post-processor and decoders, producing exactly the ids Hugging Face tokenizers
 * produces. Owns the vocabulary, merges and compiled regexes. Knows nothing of models or requests.
 * Thread safety: a loaded tokenizer is read-only; encode/decode may run on many threads at once. */
#ifndef KVSERVE_TOKENIZER_H
#define KVSERVE_TOKENIZER_H

#include <stdatomic.h>

#include "model/common.h"

typedef struct tokenizer tokenizer;

/* Loads path: a model directory (tokenizer.json, and tokenizer_config.json when present) or a
 * tokenizer.json file. A component type it does not know is an error naming it. */
int tokenizer_load(tokenizer **out, const char *path, kv_error *err);
/* Same, from tokenizer.json text (config_json may be NULL). */
int tokenizer_load_json(tokenizer **out, const char *json, size_t len, const char *config_json,
                        size_t config_len, kv_error *err);
void tokenizer_free(tokenizer *tok);

/* Encodes len bytes of text. add_special_tokens applies the post-processor (BOS etc.) as Hugging
 * Face's encode(text, add_special_tokens=...) does. *ids is malloc'd; the caller frees it.
 * Invalid UTF-8 is an error. */
int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, bool add_special_tokens,
                     int32_t **ids, int *n_ids, kv_error *err);

/* tokenizer_encode with a limit: once more than max_ids ids have been produced (checked after each
 * pre-tokenized piece, added token and the post-processor's ids) it stops and returns
 * TOKENIZER_OVER_LIMIT with *ids NULL and *n_ids the count when it stopped (> max_ids; a lower
 * bound of the full count, not the full count). Within the limit it returns 0 and exactly the ids
 * tokenizer_encode gives. max_ids < 0 means no limit. Errors return -1 as tokenizer_encode does.
 * Normalization and pre-tokenization still see the whole text; only the BPE work is cut. With no
 * pre-tokenizer (SentencePiece conversions such as llama2) the text between added tokens is one
 * piece, so the stop comes only after it. */
#define TOKENIZER_OVER_LIMIT 1
int tokenizer_encode_limit(const tokenizer *tok, const char *text, size_t len,
                           bool add_special_tokens, int max_ids, int32_t **ids, int *n_ids,
                           kv_error *err);
/* tokenizer_encode_limit that gives up once *cancel reads true (checked after each piece and every
 * few thousand BPE merges, so a shutdown does not wait for a long text): returns
 * TOKENIZER_CANCELLED with *ids NULL. cancel may be NULL (never cancelled). */
#define TOKENIZER_CANCELLED 2
int tokenizer_encode_cancel(const tokenizer *tok, const char *text, size_t len,
                            bool add_special_tokens, int max_ids, const atomic_bool *cancel,
                            int32_t **ids, int *n_ids, kv_error *err);

/* Decodes ids to text (malloc'd, NUL-terminated, *len bytes without the NUL); ids out of range are
 * an error. */
int tokenizer_decode(const tokenizer *tok, const int32_t *ids, int n_ids, bool skip_special_tokens,
                     char **text, size_t *len, kv_error *err);

/* The bytes id stands for in the middle of a text, for constrained decoding: the decoders' byte
 * mapping (ByteLevel, byte fallback, Metaspace and Replace; no first-token prefix stripping, no
 * UTF-8 repair, so a token may be part of a character). Special added tokens give *len 0. *out is
 * malloc'd (NUL-terminated); -1 when id is out of range. */
int tokenizer_token_bytes(const tokenizer *tok, int32_t id, char **out, size_t *len, kv_error *err);

int tokenizer_vocab_size(const tokenizer *tok); /* largest id + 1, added tokens included */
const char *tokenizer_id_to_token(const tokenizer *tok, int32_t id); /* raw piece; NULL if none */
int32_t tokenizer_token_to_id(const tokenizer *tok, const char *piece); /* -1 if none */
bool tokenizer_is_special(const tokenizer *tok, int32_t id);
int32_t tokenizer_bos_id(const tokenizer *tok); /* -1 when none */
int32_t tokenizer_eos_id(const tokenizer *tok); /* -1 when none */

/* Streaming detokenization: push ids one at a time and get back only complete UTF-8 text; the
 * concatenation of everything returned equals tokenizer_decode of all ids pushed. */
typedef struct tokenizer_stream tokenizer_stream;
tokenizer_stream *tokenizer_stream_new(const tokenizer *tok, bool skip_special_tokens);
/* Appends the text that became final with id to *out (malloc'd, caller frees; may be ""). */
int tokenizer_stream_push(tokenizer_stream *s, int32_t id, char **out, size_t *out_len,
                          kv_error *err);
/* Whatever is still held back (e.g. an incomplete UTF-8 sequence at the end, rendered as
 * Hugging Face would). */
int tokenizer_stream_finish(tokenizer_stream *s, char **out, size_t *out_len, kv_error *err);
void tokenizer_stream_free(tokenizer_stream *s);

#endif
