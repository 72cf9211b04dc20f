/* POST /v1/chat/completions and /tokenize with messages (vLLM's shapes): validating messages,
 * tools and the chat options into template variables, rendering the prompt, and the chat
 * response, chunk and logprobs JSON. Sampling parameters go through the completions parser
 * (openai_parse_completion), so both endpoints accept and check them alike. Pure data in, JSON
 * out: owns no connection, no engine. */
#ifndef KVSERVE_OPENAI_CHAT_H
#define KVSERVE_OPENAI_CHAT_H

#include "server/chat/chat_source.h"
#include "server/openai.h"

/* A chat request between parsing and tokenizing. */
typedef struct openai_chat_request {
    json_t *vars;          /* template variables: messages, tools, add_generation_prompt, ... */
    json_t *completion;    /* the body for openai_parse_completion, "prompt" still to be set */
    bool has_tools;        /* tools were sent (picks the tool_use template) */
    bool tool_choice_none; /* tool_choice "none": the output is not parsed for calls */
    bool continue_final;   /* continue_final_message */
    bool add_special_tokens;
    bool tokenize_only;  /* for /tokenize: counted in full, not refused past max_model_len */
    char *final_content; /* continue_final_message: the last message's text */
    /* tool_choice "required" or a named function: the output is constrained to this schema
     * (guided_json of the completion body) and parsed as calls (forced_tool: the name, or ""
     * for required, whose output is [{"name", "parameters"}, ...]) */
    char *forced_tool;
    json_t *tool_schema;
} openai_chat_request;

/* Parses a chat body (for /tokenize when tokenize_only: only the template fields). 400 on every
 * invalid field, naming it. On error req holds nothing. */
int openai_chat_parse(const openai_model_info *info, const chat_source *cs, const char *body,
                      size_t len, bool tokenize_only, openai_chat_request *req, openai_error *e);
void openai_chat_request_free(openai_chat_request *req);

/* Renders the prompt and tokenizes it (no special tokens added unless add_special_tokens: the
 * template writes BOS itself). 400 when the model has no template or the template raises (the
 * message is the template's). *ids malloc'd. */
int openai_chat_prompt(const openai_model_info *info, const chat_source *cs,
                       const openai_chat_request *req, int32_t **ids, int *n_ids, openai_error *e);

/* The completions request for the rendered prompt (ids borrowed). */
int openai_chat_to_completion(const openai_model_info *info, openai_chat_request *req,
                              const int32_t *ids, int n_ids, openai_completion_request *out,
                              openai_error *e);

/* ---- response building ---- */

/* Chat logprobs: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
 */
json_t *openai_chat_logprobs_new(void);
void openai_chat_logprobs_append(json_t *lp, const char *token, double logprob, int n_top,
                                 const char *const *top_tokens, const float *top_logprobs);
size_t openai_chat_logprobs_count(json_t *lp);
/* A choice: message {role, content} (or, when stream, delta {content}); steals logprobs and
 * stop_reason (NULL -> null). */
json_t *openai_chat_choice_json(int index, const char *text, size_t n, json_t *logprobs,
                                kv_finish finish, json_t *stop_reason, bool stream);
/* A choice that called tools: message {role, content (NULL -> null), tool_calls} with
 * finish_reason "tool_calls" (vLLM's), or when stream the last chunk's delta {content,
 * tool_calls}, each call with its "index" (all of it in one delta). Steals calls
 * (tool_parse_result.calls), logprobs and stop_reason. */
json_t *openai_chat_tool_calls_choice_json(int index, const char *content, size_t n, json_t *calls,
                                           json_t *logprobs, json_t *stop_reason, bool stream);
/* The first chunk of a streamed choice: delta {role: "assistant", content: ""}. */
json_t *openai_chat_role_choice_json(int index);
/* {"id", "object": "chat.completion" | "chat.completion.chunk", "created", "model", "choices",
 * "usage"}; steals choices and usage (NULL -> omitted). */
json_t *openai_chat_json(const char *id, long long created, const char *model, json_t *choices,
                         json_t *usage, bool chunk);

#endif
