/* The OpenAI-compatible wire format, shaped like vLLM's where vLLM extends it: /v1/completions
 * request validation into a parsed struct (with sampler_params filled), the error body, and
 * builders for completion responses, streamed chunks and usage. Also the /tokenize and /detokenize
 * bodies. Pure data in, JSON out: owns no connection, no engine, no threads. */
#ifndef KVSERVE_OPENAI_H
#define KVSERVE_OPENAI_H

#include <jansson.h>

#include "model/common.h"
#include "model/sampler.h"
#include "model/tokenizer/tokenizer.h"

/* An error for the client: HTTP status and the body {"error": {message, type, param, code}}. */
typedef struct openai_error {
    int status;       /* 400, 401, 404, 405, 413, 422, 500, 503 */
    const char *type; /* "invalid_request_error", "authentication_error", "server_error" */
    char param[64];   /* the offending parameter, "" = null */
    char code[48];    /* "" = null */
    char message[512];
} openai_error;

/* Replaces every byte of s[0..n) that is not part of valid UTF-8 with '?', in place, so that text
 * from outside (echoed names, parser messages, cut strings) can always go into JSON. */
void openai_utf8_sanitize(char *s, size_t n);

/* Fills e and returns -1. param and code may be NULL. */
int openai_error_set(openai_error *e, int status, const char *type, const char *param,
                     const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The error body as JSON text (malloc'd). */
char *openai_error_body(const openai_error *e);

/* What validation needs to know about the served model. */
typedef struct openai_model_info {
    const char *served_model_name;
    const tokenizer *tok; /* for string prompts; NULL makes them an error */
    int max_model_len;
    int vocab_size;                 /* token ids must be below it (0 = unchecked) */
    const sampler_params *defaults; /* server defaults (generation_config.json); NULL = OpenAI's */
    /* A text prompt longer than this many bytes cannot fit max_model_len whatever it tokenizes
     * to, so it is refused before tokenizing (0 = unchecked). */
    long long max_prompt_bytes;
    int max_logprobs;              /* largest logprobs accepted (0 = SAMPLER_MAX_LOGPROBS) */
    long long max_logprob_entries; /* n x tokens x (logprobs + 1) per request (0 = unchecked) */
    const sc_vocab *sc_vocab;      /* the tokens' bytes for structured outputs; NULL = refused */
    const sc_limits *sc_limits;    /* NULL = sc_limits_default */
    struct sc_cache *sc_cache;     /* constraints shared between requests; NULL = none */
    const atomic_bool *cancel;     /* tokenizing gives up (503) once it reads true; may be NULL */
} openai_model_info;

/* Refuses (400, param "prompt") a text of len bytes that is over info->max_prompt_bytes. */
int openai_check_prompt_bytes(const openai_model_info *info, size_t len, openai_error *e);

/* Tokenizes a text prompt. With limited (a prompt to generate from) and info->max_model_len set,
 * it stops early once the prompt is more than max_model_len tokens, which cannot fit: such a prompt
 * is refused (400 context_length_exceeded, param) saying it has more than max_model_len tokens,
 * without tokenizing the rest. /tokenize passes false: it counts prompts of any length (its work
 * is bounded by max_prompt_bytes). A prompt within the limit gets exactly tokenizer_encode's ids
 * (*ids malloc'd); one that cannot be tokenized is a 400 (invalid_value) "cannot tokenize the
 * <what>: ...". */
int openai_tokenize_prompt(const openai_model_info *info, const char *text, size_t len,
                           bool add_special_tokens, bool limited, const char *param,
                           const char *what, int32_t **ids, int *n_ids, openai_error *e);

/* One prompt of a request. */
typedef struct openai_prompt {
    int32_t *ids;
    int n_ids;
    char *text;     /* the prompt as the client sent it when it was a string; NULL for token ids */
    int max_tokens; /* max_tokens for this prompt: the request's, or the default cut to what fits */
} openai_prompt;

/* A validated POST /v1/completions request. */
typedef struct openai_completion_request {
    openai_prompt *prompts;
    int n_prompts;
    int n; /* choices per prompt */
    sampler_params
        params; /* max_tokens as requested (INT_MAX for null): see prompts[].max_tokens */
    bool max_tokens_given;
    bool stream;
    bool include_usage;    /* stream_options.include_usage */
    bool continuous_usage; /* stream_options.continuous_usage_stats */
    bool echo;
    int logprobs; /* -1 = none, else 0..SAMPLER_MAX_LOGPROBS */
    char **stop;  /* stop strings */
    int n_stop;
    bool include_stop_str_in_output;
    bool skip_special_tokens;
    char *cache_salt; /* NULL = none */
    bool return_token_ids;
    bool return_tokens_as_token_ids;
    char *forced_tool; /* chat tool_choice required ("") or named: see openai_chat_request */
} openai_completion_request;

/* Parses and validates body against the model. Every invalid value is an error naming the
 * parameter: 400 invalid_request_error; an unknown model is 404 with code model_not_found. On error
 * req holds nothing (no need to free it). */
int openai_parse_completion(const openai_model_info *info, const char *body, size_t len,
                            openai_completion_request *req, openai_error *err);
void openai_completion_request_free(openai_completion_request *req);

/* logit_bias, response_format, structured_outputs and guided_* of a completions or chat body into
 * p (openai_structured.c): 400 naming the field (and the unsupported schema keyword). */
int openai_parse_structured(const openai_model_info *info, json_t *root, sampler_params *p,
                            openai_error *e);

/* The tool calls of an output constrained by a forced tool_choice (forced: the function's name,
 * or "" for required: the output is [{"name", "parameters"}, ...]). Returns the number of calls
 * (0: out holds nothing, e.g. an output cut by max_tokens). */
struct tool_parse_result;
int openai_forced_tool_calls(const char *forced, const char *text, size_t n, const char *salt,
                             struct tool_parse_result *out);

/* The body's optional "model" against the served name: 400 when not a string, 404
 * model_not_found when another model; 0 when absent, null or ours. */
int openai_check_model(const openai_model_info *info, json_t *root, openai_error *err);

/* POST /tokenize {"prompt": str, "add_special_tokens": bool = true} (or "model" too): ids of the
 * prompt. POST /detokenize {"tokens": [int]}: the text. Bodies as malloc'd JSON text. */
int openai_tokenize(const openai_model_info *info, const char *body, size_t len, char **out,
                    openai_error *err);
int openai_detokenize(const openai_model_info *info, const char *body, size_t len, char **out,
                      openai_error *err);

/* ---- response building ---- */

typedef struct openai_usage {
    int prompt_tokens;
    int completion_tokens;
    int cached_tokens_gpu;    /* prompt tokens found in the GPU prefix cache */
    int cached_tokens_host;   /* prompt tokens loaded from the host tier's DRAM */
    int cached_tokens_disk;   /* prompt tokens read from the disk tier (through host memory) */
    int cached_tokens_remote; /* prompt tokens read from the remote tier (through host memory) */
} openai_usage;
/* The request body as a JSON object, or NULL with a 400 (invalid JSON, or not an object) in e. */
json_t *openai_load_object(const char *body, size_t len, openai_error *e);
json_t *openai_usage_json(const openai_usage *u);

/* Logprobs in the legacy completions shape: {tokens, token_logprobs, top_logprobs, text_offset}.
 * Entries are appended one token at a time; top_logprobs maps token text -> logprob. */
json_t *openai_logprobs_new(void);
/* token: its text; logprob NAN for "none" (the first prompt token); top: object or NULL (null). */
void openai_logprobs_append(json_t *lp, const char *token, double logprob, json_t *top,
                            int text_offset);
/* A token as shown in logprobs: its decoded text, or "token_id:N" with as_ids (malloc'd). */
char *openai_token_text(const tokenizer *tok, int32_t id, bool as_ids);
/* -inf (and NaN) become -9999.0 as in vLLM: JSON has no infinities. */
double openai_logprob_value(double lp);

/* One choice: text, logprobs (NULL -> null), finish_reason (NONE -> null), stop_reason (NULL ->
 * null; a string or an integer), token_ids and prompt_token_ids when ids != NULL. Steals logprobs
 * and stop_reason. */
json_t *openai_choice_json(int index, const char *text, size_t text_len, json_t *logprobs,
                           kv_finish finish, json_t *stop_reason, const int32_t *prompt_ids,
                           int n_prompt_ids, const int32_t *ids, int n_ids);
/* {"id", "object": "text_completion", "created", "model", "choices", "usage"}; steals choices
 * and usage (usage NULL -> omitted, json_null() -> null). */
json_t *openai_completion_json(const char *id, long long created, const char *model,
                               json_t *choices, json_t *usage);
/* "data: <json>\n\n" (malloc'd, *len set); steals j. */
char *openai_sse_event(json_t *j, size_t *len);

#endif
