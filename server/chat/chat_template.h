/* Hugging Face chat templates: a sandboxed Jinja subset rendered the way transformers'
 * apply_chat_template does (trim_blocks, lstrip_blocks, loopcontrols, Python-style tojson,
 * raise_exception, strftime_now). Owns the parsed template; knows nothing of HTTP or tokenizers.
 * Templates are outside input: every failure is a kv_error naming the line, never an abort. */
#ifndef KVSERVE_CHAT_TEMPLATE_H
#define KVSERVE_CHAT_TEMPLATE_H

#include <jansson.h>
#include <stddef.h>

#include "model/common.h"

typedef struct chat_template chat_template;

/* Limits of one render (a template is code from a model repository). */
typedef struct chat_template_limits {
    size_t max_output_bytes; /* rendered text */
    long max_iterations;     /* for-loop bodies, all loops together */
    int max_depth;           /* nested macro calls */
    long long now;           /* strftime_now's time, seconds since the epoch (shown in local
                                time); 0: the clock. Tests pin it. */
} chat_template_limits;

/* Defaults: 16 MiB of output, 1,000,000 loop iterations, macro depth 64, the clock. */
chat_template_limits chat_template_default_limits(void);

/* Parses src[0..len). NULL with err set ("line N: ...") on a malformed template. */
chat_template *chat_template_parse(const char *src, size_t len, kv_error *err);
void chat_template_free(chat_template *t);

/* Renders with vars (an object: messages, tools, add_generation_prompt, bos_token, ...; not
 * modified, borrowed). On success *out is a malloc'd NUL-terminated string the caller frees,
 * *out_len its length (may be NULL), and 0 is returned. On failure -1 with err set: a template
 * raise_exception("msg") gives exactly "msg"; other errors name the line. limits may be NULL. */
int chat_template_render(const chat_template *t, json_t *vars, const chat_template_limits *limits,
                         char **out, size_t *out_len, kv_error *err);

#endif
