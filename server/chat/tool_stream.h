/* Streamed tool calls (as vLLM streams them): the output is fed as it is generated; content goes
 * out until a call begins, then each call as a delta.tool_calls entry with id, type and
 * function.name once its name is complete, then function.arguments in pieces as they are
 * generated. Text that merely looks like a call (a marker not followed by a call) stays content.
 * Pure text in, jansson out: knows nothing of HTTP. */
#ifndef KVSERVE_TOOL_STREAM_H
#define KVSERVE_TOOL_STREAM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "server/chat/tool_parser.h"

typedef struct tool_stream {
    tool_parser_kind kind;
    bool sent_content; /* some content went out (a Llama 3.x call must be the whole output) */
    bool in_calls;     /* a call region began: buf holds it from its marker on */
    bool dead;         /* the region stopped being calls: the rest is content */
    char *buf;         /* text held: a possible marker's start, or the call region */
    size_t len, cap;
    size_t *args_sent; /* per started call: argument bytes sent (SIZE_MAX: sent whole) */
    int n_started, cap_started;
    char salt[64];
} tool_stream;

/* kind: HERMES, LLAMA3_JSON or MISTRAL (others stream everything as content). salt goes into the
 * call ids (e.g. the response id). */
void tool_stream_init(tool_stream *s, tool_parser_kind kind, const char *salt);
void tool_stream_free(tool_stream *s);

typedef struct tool_stream_out {
    char *content; /* content to send now (malloc'd, NUL-terminated); NULL when none */
    size_t content_len;
    json_t *calls; /* delta.tool_calls entries to send now ({index, id?, type?, function}); NULL
                      when none */
} tool_stream_out;

/* Takes text[0..n) (the output generated since the last call; the stream keeps what it holds
 * back). done: the output has ended (what is held goes out). */
void tool_stream_feed(tool_stream *s, const char *text, size_t n, bool done, tool_stream_out *out);
void tool_stream_out_free(tool_stream_out *o);
/* Whether a call went out (the last chunk's finish_reason is then "tool_calls"). */
bool tool_stream_called(const tool_stream *s);

/* Non-streamed: parses text[0..n) (a whole call region, from its marker on) into calls
 * ({id, type, function: {name, arguments}} appended); false when it is not wholly calls. */
bool tool_stream_parse_region(tool_parser_kind kind, const char *text, size_t n, const char *salt,
                              json_t *calls);

#endif
