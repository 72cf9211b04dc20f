/* Reasoning in generated text (vLLM's reasoning parsers): a <think>...</think> block goes to
 * reasoning_content, the rest stays content. Pure text in, offsets out: knows nothing of HTTP,
 * JSON or requests. */
#ifndef KVSERVE_REASONING_PARSER_H
#define KVSERVE_REASONING_PARSER_H

#include <stdbool.h>
#include <stddef.h>

/* In the order of the reasoning_parser knob's names. */
typedef enum reasoning_parser_kind {
    REASONING_PARSER_NONE,
    REASONING_PARSER_DEEPSEEK_R1, /* the output may start inside <think> (the template opened it);
                                     no </think> -> all of it is reasoning */
    REASONING_PARSER_QWEN3,       /* only an output starting with <think>; no </think> -> all of
                                     it is content */
} reasoning_parser_kind;

/* Where text[0..n) splits: reasoning is text[r_off .. r_off + r_len), content is text[c_off .. n).
 * Returns whether there is reasoning (false: r_len 0 and c_off 0, all is content). */
bool reasoning_parser_split(reasoning_parser_kind kind, const char *text, size_t n, size_t *r_off,
                            size_t *r_len, size_t *c_off);

/* Streaming, per choice: starts zeroed. */
typedef struct reasoning_stream {
    int phase; /* 0: nothing decided yet, 1: in reasoning, 2: content */
} reasoning_stream;

/* Feeds the unsent text[0..n) (done: the output has ended). Sets text[*r_off .. *r_off + *r_len)
 * as reasoning to go out now and *consumed (>= r_off + r_len: the tags as well) as the bytes the
 * caller drops from the front. What follows consumed is content once reasoning_stream_content(st);
 * before that it is held (a tag may be starting). Streamed like vLLM's: inside <think> the text
 * goes out as reasoning even for qwen3, whose non-streamed output with no </think> is content. */
void reasoning_stream_step(reasoning_parser_kind kind, reasoning_stream *st, const char *text,
                           size_t n, bool done, size_t *r_off, size_t *r_len, size_t *consumed);
bool reasoning_stream_content(const reasoning_stream *st);

#endif
