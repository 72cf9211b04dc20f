/* Where a model's chat template comes from: tokenizer_config.json's "chat_template" (a string, or a
 * list of {"name", "template"}: "default", and "tool_use" for requests with tools), else a
 * chat_template.jinja beside it; plus the special tokens transformers passes to the template.
 * Reads files only; parsing the template is chat_template_parse's job. */
#ifndef KVSERVE_CHAT_TEMPLATE_LOAD_H
#define KVSERVE_CHAT_TEMPLATE_LOAD_H

#include <jansson.h>
#include <stdbool.h>

#include "model/common.h"

typedef struct chat_template_files {
    char *default_template;  /* malloc'd text; NULL when the model has none */
    char *tool_use_template; /* the "tool_use" named template, or NULL */
    /* special tokens (strings or {"content": ...} in tokenizer_config.json); NULL when absent */
    char *bos_token, *eos_token, *unk_token, *pad_token;
} chat_template_files;

/* Reads model_dir/tokenizer_config.json (may be missing) and model_dir/chat_template.jinja.
 * 0 on success, even when no template is found (both fields NULL); -1 with err naming the file
 * when one exists but cannot be read or is malformed. *out is zeroed first; free with
 * chat_template_files_free. */
int chat_template_load(const char *model_dir, chat_template_files *out, kv_error *err);
void chat_template_files_free(chat_template_files *f);

/* The template a request uses: tool_use when it sends tools and the model has one, else the
 * default (NULL when the model has none; the caller answers with an error). */
const char *chat_template_files_pick(const chat_template_files *f, bool has_tools);

/* Sets bos_token/eos_token/unk_token/pad_token in vars for those the model defines. */
void chat_template_files_set_tokens(const chat_template_files *f, json_t *vars);

#endif
