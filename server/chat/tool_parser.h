/* Tool calls in generated text (vLLM's tool parsers): Hermes/Qwen <tool_call> blocks, Llama 3.x
 * JSON, Mistral [TOOL_CALLS]; picking a format from a chat template's text. Pure text in, jansson
 * out: knows nothing of HTTP, requests or streaming. */
#ifndef KVSERVE_TOOL_PARSER_H
#define KVSERVE_TOOL_PARSER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* In the order of the tool_call_parser knob's names. */
typedef enum tool_parser_kind {
    TOOL_PARSER_AUTO, /* from the chat template (tool_parser_detect) */
    TOOL_PARSER_HERMES,
    TOOL_PARSER_LLAMA3_JSON,
    TOOL_PARSER_MISTRAL,
    TOOL_PARSER_NONE,
} tool_parser_kind;

/* The format a chat template's text speaks: "<tool_call>" -> HERMES, "[TOOL_CALLS]" -> MISTRAL,
 * "<|python_tag|>" or the "ipython" role -> LLAMA3_JSON, else NONE (text NULL -> NONE). */
tool_parser_kind tool_parser_detect(const char *text, size_t n);

/* What a parse found. */
typedef struct tool_parse_result {
    char *content; /* text outside the calls (malloc'd); NULL when there is none */
    size_t content_len;
    json_t *calls; /* [{id, type: "function", function: {name, arguments: JSON text}}] */
} tool_parse_result;

/* Parses text[0..n) in format kind (AUTO and NONE find nothing). Returns the number of calls; 0
 * when there are none or any of them does not parse, and then out holds nothing and the whole
 * text stays content. salt (any string, e.g. the response id) goes into the call ids
 * ("call_" + 24 hex), so that equal outputs of different requests get different ids. */
int tool_parser_parse(tool_parser_kind kind, const char *text, size_t n, const char *salt,
                      tool_parse_result *out);
void tool_parse_result_free(tool_parse_result *r);

/* Streaming: how many leading bytes of text[0..n) (the output not yet sent) can go out as content
 * now; the rest may be (the start of) a call, held until the output ends and then parsed.
 * at_start: nothing of this output has gone out yet (Llama 3.x calls are the whole output). */
size_t tool_parser_stream_safe(tool_parser_kind kind, const char *text, size_t n, bool at_start);

#endif
