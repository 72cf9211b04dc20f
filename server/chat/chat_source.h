/* Where a model's chat template comes from: an override file (--chat-template), else
 * tokenizer_config.json's chat_template (a string, or a list of {name, template}: "default" and
 * "tool_use"), else chat_template.jinja in the model folder; plus bos_token/eos_token strings.
 * Owns the parsed templates; knows nothing of HTTP. */
#ifndef KVSERVE_CHAT_SOURCE_H
#define KVSERVE_CHAT_SOURCE_H

#include <stdbool.h>

#include "model/common.h"
#include "server/chat/chat_template.h"
#include "server/chat/tool_parser.h"

typedef struct chat_source {
    chat_template *tmpl;          /* the default template; NULL = the model has none */
    chat_template *tmpl_tool_use; /* "tool_use" of a named list; NULL = use tmpl */
    char *origin;                 /* where tmpl came from (for logs) */
    char *bos_token, *eos_token;  /* "" when not given */
    tool_parser_kind tool_format; /* tool_parser_detect over the templates' text (NONE = none) */
} chat_source;

/* Loads from model_dir (override_file NULL = none). A model without any template is not an error
 * (tmpl stays NULL); an unreadable override or a template that does not parse is. */
int chat_source_load(chat_source *cs, const char *model_dir, const char *override_file,
                     kv_error *err);
void chat_source_free(chat_source *cs);
/* The template for a request (tools given or not); NULL when the model has none. */
const chat_template *chat_source_pick(const chat_source *cs, bool tools);

#endif
