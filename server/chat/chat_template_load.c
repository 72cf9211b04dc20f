/* Chat template sources: tokenizer_config.json and chat_template.jinja of a model directory. */
#include "server/chat/chat_template_load.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#define CT_MAX_FILE (16u << 20)

/* A special token: "text" or {"content": "text", ...} (transformers' AddedToken). */
static char *token_text(json_t *v) {
    if (v && json_is_object(v)) v = json_object_get(v, "content");
    return v && json_is_string(v) ? kv_strdup(json_string_value(v)) : NULL;
}

void chat_template_files_free(chat_template_files *f) {
    free(f->default_template);
    free(f->tool_use_template);
    free(f->bos_token);
    free(f->eos_token);
    free(f->unk_token);
    free(f->pad_token);
    memset(f, 0, sizeof *f);
}

static int load_config(const char *path, chat_template_files *out, kv_error *err) {
    size_t len;
    kv_error rerr;
    char *text = kv_read_file(path, CT_MAX_FILE, &len, &rerr);
    if (!text) {
        if (errno == ENOENT) return 0;
        return kv_error_set(err, "%s", rerr.msg);
    }
    json_error_t jerr;
    json_t *cfg = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!cfg || !json_is_object(cfg)) {
        json_decref(cfg);
        return kv_error_set(err, "%s: not a JSON object (line %d: %s)", path, jerr.line, jerr.text);
    }
    json_t *ct = json_object_get(cfg, "chat_template");
    int rc = 0;
    if (ct && json_is_string(ct)) {
        out->default_template = kv_strdup(json_string_value(ct));
    } else if (ct && json_is_array(ct)) {
        size_t i;
        json_t *e;
        json_array_foreach(ct, i, e) {
            const char *name = json_string_value(json_object_get(e, "name"));
            const char *tmpl = json_string_value(json_object_get(e, "template"));
            if (!name || !tmpl) {
                rc = kv_error_set(
                    err, "%s: chat_template[%zu] needs string \"name\" and \"template\"", path, i);
                break;
            }
            char **slot = !strcmp(name, "default")    ? &out->default_template
                          : !strcmp(name, "tool_use") ? &out->tool_use_template
                                                      : NULL;
            if (slot && !*slot) *slot = kv_strdup(tmpl);
        }
    } else if (ct && !json_is_null(ct)) {
        rc = kv_error_set(err, "%s: chat_template must be a string or a list of named templates",
                          path);
    }
    out->bos_token = token_text(json_object_get(cfg, "bos_token"));
    out->eos_token = token_text(json_object_get(cfg, "eos_token"));
    out->unk_token = token_text(json_object_get(cfg, "unk_token"));
    out->pad_token = token_text(json_object_get(cfg, "pad_token"));
    json_decref(cfg);
    return rc;
}

int chat_template_load(const char *model_dir, chat_template_files *out, kv_error *err) {
    memset(out, 0, sizeof *out);
    size_t n = strlen(model_dir) + 64;
    char *path = kv_malloc(n);
    snprintf(path, n, "%s/tokenizer_config.json", model_dir);
    int rc = load_config(path, out, err);
    if (rc == 0 && !out->default_template && !out->tool_use_template) {
        snprintf(path, n, "%s/chat_template.jinja", model_dir);
        size_t len;
        kv_error rerr;
        char *text = kv_read_file(path, CT_MAX_FILE, &len, &rerr);
        if (text)
            out->default_template = text;
        else if (errno != ENOENT)
            rc = kv_error_set(err, "%s", rerr.msg);
    }
    free(path);
    if (rc) chat_template_files_free(out);
    return rc;
}

const char *chat_template_files_pick(const chat_template_files *f, bool has_tools) {
    if (has_tools && f->tool_use_template) return f->tool_use_template;
    return f->default_template;
}

void chat_template_files_set_tokens(const chat_template_files *f, json_t *vars) {
    const char *names[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    const char *vals[] = {f->bos_token, f->eos_token, f->unk_token, f->pad_token};
    for (int i = 0; i < 4; i++)
        if (vals[i]) json_object_set_new(vars, names[i], json_string(vals[i]));
}
