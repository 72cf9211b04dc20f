/* Loading a model's chat template and special token strings (see chat_source.h). */
#include "server/chat/chat_source.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file (malloc'd, NUL-terminated); NULL when it cannot be read. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = (n + 4096 + 1) * 2;
            buf = kv_realloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = kv_malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* bos_token / eos_token: a string or {"content": string}. */
static char *token_string(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return kv_strdup(json_is_string(v) ? json_string_value(v) : "");
}

static int parse_into(chat_source *cs, chat_template **out, const char *src, size_t len,
                      const char *origin, kv_error *err) {
    kv_error perr = {{0}};
    *out = chat_template_parse(src, len, &perr);
    if (*out && cs->tool_format == TOOL_PARSER_NONE) cs->tool_format = tool_parser_detect(src, len);
    if (!*out) return kv_error_set(err, "chat template from %s: %s", origin, perr.msg);
    return 0;
}

int chat_source_load(chat_source *cs, const char *model_dir, const char *override_file,
                     kv_error *err) {
    memset(cs, 0, sizeof *cs);
    cs->tool_format = TOOL_PARSER_NONE;
    json_t *cfg = NULL;
    if (model_dir) {
        char *p = path_join(model_dir, "tokenizer_config.json");
        cfg = json_load_file(p, 0, NULL);
        free(p);
    }
    cs->bos_token = token_string(cfg, "bos_token");
    cs->eos_token = token_string(cfg, "eos_token");
    int rc = 0;
    if (override_file) {
        size_t n;
        char *src = read_file(override_file, &n);
        if (!src) {
            rc = kv_error_set(err, "cannot read the chat template %s", override_file);
            goto done;
        }
        cs->origin = kv_strdup(override_file);
        rc = parse_into(cs, &cs->tmpl, src, n, override_file, err);
        free(src);
        goto done;
    }
    json_t *ct = json_object_get(cfg, "chat_template");
    if (json_is_string(ct)) {
        cs->origin = kv_strdup("tokenizer_config.json");
        rc = parse_into(cs, &cs->tmpl, json_string_value(ct), json_string_length(ct), cs->origin,
                        err);
        goto done;
    }
    if (json_is_array(ct)) {
        cs->origin = kv_strdup("tokenizer_config.json");
        size_t i;
        json_t *item;
        json_array_foreach(ct, i, item) {
            json_t *name = json_object_get(item, "name"), *src = json_object_get(item, "template");
            if (!json_is_string(name) || !json_is_string(src)) continue;
            chat_template **slot = NULL;
            if (!strcmp(json_string_value(name), "default") && !cs->tmpl) slot = &cs->tmpl;
            if (!strcmp(json_string_value(name), "tool_use") && !cs->tmpl_tool_use)
                slot = &cs->tmpl_tool_use;
            if (slot && (rc = parse_into(cs, slot, json_string_value(src), json_string_length(src),
                                         cs->origin, err)))
                goto done;
        }
        if (!cs->tmpl && cs->tmpl_tool_use) { /* only a tool_use one: it serves every request */
            cs->tmpl = cs->tmpl_tool_use;
            cs->tmpl_tool_use = NULL;
        }
        goto done;
    }
    if (model_dir) {
        char *p = path_join(model_dir, "chat_template.jinja");
        size_t n;
        char *src = read_file(p, &n);
        if (src) {
            cs->origin = p;
            p = NULL;
            rc = parse_into(cs, &cs->tmpl, src, n, "chat_template.jinja", err);
            free(src);
        }
        free(p);
    }
done:
    json_decref(cfg);
    if (rc) chat_source_free(cs);
    return rc;
}

void chat_source_free(chat_source *cs) {
    chat_template_free(cs->tmpl);
    chat_template_free(cs->tmpl_tool_use);
    free(cs->origin);
    free(cs->bos_token);
    free(cs->eos_token);
    memset(cs, 0, sizeof *cs);
}

const chat_template *chat_source_pick(const chat_source *cs, bool tools) {
    if (tools && cs->tmpl_tool_use) return cs->tmpl_tool_use;
    return cs->tmpl;
}
