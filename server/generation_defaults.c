/* generation_config.json sampling defaults (see generation_defaults.h). */
#include "server/generation_defaults.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

/* The fields vLLM takes (get_diff_sampling_param); max_new_tokens is left to the requests. */
typedef struct gen_field {
    const char *name;
    bool integer;
    size_t offset;
} gen_field;

static const gen_field gen_fields[] = {
    {"temperature", false, offsetof(sampler_params, temperature)},
    {"top_p", false, offsetof(sampler_params, top_p)},
    {"top_k", true, offsetof(sampler_params, top_k)},
    {"min_p", false, offsetof(sampler_params, min_p)},
    {"repetition_penalty", false, offsetof(sampler_params, repetition_penalty)},
};

int generation_defaults_load(const char *source, const char *model_dir, sampler_params *out,
                             char *summary, size_t size, kv_error *err) {
    sampler_params_default(out);
    if (size) summary[0] = '\0';
    if (source && !strcmp(source, "vllm")) return 0;
    const char *dir = source && strcmp(source, "auto") != 0 ? source : model_dir;
    if (!dir) return 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        FILE *f = fopen(path, "r");
        if (!f && errno == ENOENT) return 0;
        if (f) fclose(f);
        return kv_error_set(err, "%s: %s (line %d)", path, jerr.text, jerr.line);
    }
    int rc = 0;
    size_t used = 0;
    if (!json_is_object(root)) {
        rc = kv_error_set(err, "%s: not a JSON object", path);
        goto done;
    }
    for (size_t i = 0; i < sizeof gen_fields / sizeof gen_fields[0]; i++) {
        const gen_field *f = &gen_fields[i];
        json_t *v = json_object_get(root, f->name);
        if (!v || json_is_null(v)) continue;
        if (f->integer ? !json_is_integer(v) : !json_is_number(v)) {
            rc = kv_error_set(err, "%s: '%s' must be %s", path, f->name,
                              f->integer ? "an integer" : "a number");
            goto done;
        }
        char *field = (char *)out + f->offset;
        if (f->integer) {
            json_int_t k = json_integer_value(v);
            *(int *)field = k <= 0 ? 0 : k > INT_MAX ? INT_MAX : (int)k;
        } else {
            *(float *)field = (float)json_number_value(v);
        }
        if (used < size) {
            int n = snprintf(summary + used, size - used, "%s%s=%g", used ? ", " : "", f->name,
                             json_number_value(v));
            if (n > 0) used += (size_t)n;
        }
    }
    kv_error verr;
    if (sampler_params_validate(out, INT_MAX, &verr))
        rc = kv_error_set(err, "%s: %s", path, verr.msg);
done:
    json_decref(root);
    if (rc) sampler_params_free(out);
    return rc;
}
