/* The request fields that shape the output: logit_bias, response_format (json_object,
 * json_schema), vLLM's structured_outputs {json, regex, choice, json_object} and its older
 * guided_json / guided_regex / guided_choice. Each is validated (400 naming the field, and for a
 * schema the unsupported keyword) and compiled here, on the HTTP thread, into the sampler's
 * constraint. Also the calls of a chat whose tool_choice forced them (the output is their JSON). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/structured/constraint_cache.h"
#include "model/structured/json_schema.h"
#include "server/chat/tool_parser.h"
#include "server/openai.h"

#define OPENAI_MAX_BIAS           1024 /* logit_bias entries */
#define OPENAI_MAX_CHOICE_STRINGS 1024

static bool present(json_t *v) {
    return v && !json_is_null(v);
}

static int bad(openai_error *e, const char *param, const char *fmt, const char *a, const char *b) {
    return openai_error_set(e, 400, "invalid_request_error", param, "invalid_value", fmt, a, b);
}

static int parse_logit_bias(const openai_model_info *info, json_t *v, sampler_params *p,
                            openai_error *e) {
    if (!present(v)) return 0;
    if (!json_is_object(v))
        return bad(e, "logit_bias", "'%s' must be an object of token id -> bias%s", "logit_bias",
                   "");
    size_t n = json_object_size(v);
    if (n > OPENAI_MAX_BIAS)
        return openai_error_set(e, 400, "invalid_request_error", "logit_bias", "invalid_value",
                                "logit_bias: at most %d entries, got %zu", OPENAI_MAX_BIAS, n);
    p->bias_ids = kv_malloc((n ? n : 1) * sizeof(int32_t));
    p->bias_values = kv_malloc((n ? n : 1) * sizeof(float));
    p->n_bias = 0;
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        char *end = NULL;
        long long id = strtoll(key, &end, 10);
        if (!key[0] || *end || id < 0 || (info->vocab_size > 0 && id >= info->vocab_size) ||
            id > INT32_MAX)
            return openai_error_set(e, 400, "invalid_request_error", "logit_bias", "invalid_value",
                                    "logit_bias: '%.64s' is not a token id of the vocabulary "
                                    "(0..%d)",
                                    key, info->vocab_size - 1);
        if (!json_is_number(val) || json_number_value(val) < -SAMPLER_BIAS_MAX ||
            json_number_value(val) > SAMPLER_BIAS_MAX)
            return openai_error_set(e, 400, "invalid_request_error", "logit_bias", "invalid_value",
                                    "logit_bias: the bias of token %lld must be a number in "
                                    "[-100, 100]",
                                    id);
        p->bias_ids[p->n_bias] = (int32_t)id;
        p->bias_values[p->n_bias++] = (float)json_number_value(val);
    }
    return 0;
}

/* What one constraint field asks for, before compiling. */
typedef struct sc_request {
    const char *param; /* the field, for errors */
    json_t *schema;    /* json: borrowed or owned (owned_schema) */
    bool owned_schema;
    const char *regex;
    json_t *choice;
    bool json_object;
} sc_request;

/* A schema given as an object, or as a string holding one (vLLM accepts both). */
static int get_schema(json_t *v, const char *param, sc_request *r, openai_error *e) {
    if (json_is_string(v)) {
        json_error_t je;
        r->schema = json_loads(json_string_value(v), JSON_DECODE_ANY, &je);
        if (!r->schema)
            return openai_error_set(e, 400, "invalid_request_error", param, "invalid_value",
                                    "%s: the schema is not valid JSON: %.200s", param, je.text);
        r->owned_schema = true;
        return 0;
    }
    if (!json_is_object(v) && !json_is_boolean(v))
        return bad(e, param, "'%s' must be a JSON Schema (an object)%s", param, "");
    r->schema = v;
    return 0;
}

static int set_once(sc_request *r, const char *param, openai_error *e) {
    if (r->param)
        return bad(e, param, "only one structured-output constraint per request: '%s' and '%s'",
                   r->param, param);
    r->param = param;
    return 0;
}

static int parse_response_format(json_t *v, sc_request *r, openai_error *e) {
    if (!present(v)) return 0;
    json_t *type = json_is_object(v) ? json_object_get(v, "type") : NULL;
    if (!json_is_string(type))
        return bad(e, "response_format", "'%s' must be an object with a \"type\"%s",
                   "response_format", "");
    const char *t = json_string_value(type);
    if (!strcmp(t, "text")) return 0;
    if (set_once(r, "response_format", e)) return -1;
    if (!strcmp(t, "json_object")) {
        r->json_object = true;
        return 0;
    }
    if (!strcmp(t, "json_schema")) {
        json_t *js = json_object_get(v, "json_schema");
        if (!json_is_object(js))
            return bad(e, "response_format",
                       "'%s' of type json_schema needs a \"json_schema\" "
                       "object%s",
                       "response_format", "");
        json_t *s = json_object_get(js, "schema");
        if (!s) s = json_object_get(js, "json_schema"); /* some clients nest it once more */
        if (!present(s))
            return bad(e, "response_format", "'%s': json_schema needs a \"schema\"%s",
                       "response_format", "");
        json_t *strict = json_object_get(js, "strict");
        if (present(strict) && !json_is_boolean(strict))
            return bad(e, "response_format", "'%s': json_schema.strict must be a boolean%s",
                       "response_format", "");
        return get_schema(s, "response_format", r, e);
    }
    return openai_error_set(e, 400, "invalid_request_error", "response_format", "unsupported",
                            "response_format type '%.64s' is not supported (text, json_object, "
                            "json_schema)",
                            t);
}

static int parse_choice_list(json_t *v, const char *param, sc_request *r, openai_error *e) {
    if (!json_is_array(v) || json_array_size(v) == 0 ||
        json_array_size(v) > OPENAI_MAX_CHOICE_STRINGS)
        return bad(e, param, "'%s' must be a non-empty array of strings (at most 1024)%s", param,
                   "");
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s) || strlen(json_string_value(s)) != json_string_length(s))
            return bad(e, param, "'%s' must be a non-empty array of strings%s", param, "");
    }
    r->choice = v;
    return 0;
}

/* vLLM's structured_outputs object (and guided_*: the same meaning, flat). */
static int parse_vllm(json_t *root, sc_request *r, openai_error *e) {
    static const char *const unsupported[] = {"grammar", "structural_tag"};
    json_t *so = json_object_get(root, "structured_outputs");
    if (present(so)) {
        if (!json_is_object(so))
            return bad(e, "structured_outputs", "'%s' must be an object%s", "structured_outputs",
                       "");
        for (size_t k = 0; k < 2; k++)
            if (present(json_object_get(so, unsupported[k])))
                return openai_error_set(e, 400, "invalid_request_error", "structured_outputs",
                                        "unsupported",
                                        "structured_outputs.%s is not supported (json, regex, "
                                        "choice, json_object)",
                                        unsupported[k]);
        json_t *v;
        if (present(v = json_object_get(so, "json")) &&
            (set_once(r, "structured_outputs", e) || get_schema(v, "structured_outputs", r, e)))
            return -1;
        if (present(v = json_object_get(so, "regex"))) {
            if (set_once(r, "structured_outputs", e)) return -1;
            if (!json_is_string(v))
                return bad(e, "structured_outputs", "'%s.regex' must be a string%s",
                           "structured_outputs", "");
            r->regex = json_string_value(v);
        }
        if (present(v = json_object_get(so, "choice")) &&
            (set_once(r, "structured_outputs", e) ||
             parse_choice_list(v, "structured_outputs", r, e)))
            return -1;
        if (json_is_true(json_object_get(so, "json_object"))) {
            if (set_once(r, "structured_outputs", e)) return -1;
            r->json_object = true;
        }
    }
    json_t *v;
    if (present(json_object_get(root, "guided_grammar")))
        return openai_error_set(e, 400, "invalid_request_error", "guided_grammar", "unsupported",
                                "'guided_grammar' is not supported (guided_json, guided_regex, "
                                "guided_choice)");
    if (present(v = json_object_get(root, "guided_json")) &&
        (set_once(r, "guided_json", e) || get_schema(v, "guided_json", r, e)))
        return -1;
    if (present(v = json_object_get(root, "guided_regex"))) {
        if (set_once(r, "guided_regex", e)) return -1;
        if (!json_is_string(v))
            return bad(e, "guided_regex", "'%s' must be a string%s", "guided_regex", "");
        r->regex = json_string_value(v);
    }
    if (present(v = json_object_get(root, "guided_choice")) &&
        (set_once(r, "guided_choice", e) || parse_choice_list(v, "guided_choice", r, e)))
        return -1;
    return 0;
}

static int compile_constraint(const openai_model_info *info, sc_request *r, sampler_params *p,
                              openai_error *e) {
    sc_limits lim;
    sc_limits_default(&lim);
    if (info->sc_limits) lim = *info->sc_limits;
    kv_error err = {{0}};
    char *re = NULL;
    if (r->schema) {
        if (sc_schema_regex(r->schema, &lim, &re, &err))
            return openai_error_set(e, 400, "invalid_request_error", r->param, "invalid_value",
                                    "%s: %s", r->param, err.msg);
    } else if (r->json_object) {
        re = sc_json_object_regex(&lim);
    } else if (r->choice) {
        size_t n = json_array_size(r->choice);
        const char **list = kv_malloc(n * sizeof *list);
        for (size_t i = 0; i < n; i++) list[i] = json_string_value(json_array_get(r->choice, i));
        re = sc_choice_regex(list, (int)n);
        free(list);
    } else {
        re = kv_strdup(r->regex);
    }
    if (info->sc_cache) {
        p->constraint = sc_cache_get(info->sc_cache, re, strlen(re), &lim, &err);
    } else {
        sc_dfa *dfa = NULL;
        if (sc_regex_compile(re, strlen(re), &lim, &dfa, &err) == 0)
            p->constraint = sc_constraint_new(dfa, info->sc_vocab);
    }
    free(re);
    if (!p->constraint)
        return openai_error_set(e, 400, "invalid_request_error", r->param, "invalid_value",
                                "%s: %s", r->param, err.msg);
    return 0;
}

int openai_parse_structured(const openai_model_info *info, json_t *root, sampler_params *p,
                            openai_error *e) {
    if (parse_logit_bias(info, json_object_get(root, "logit_bias"), p, e)) return -1;
    sc_request r = {0};
    int rc = parse_response_format(json_object_get(root, "response_format"), &r, e);
    if (rc == 0) rc = parse_vllm(root, &r, e);
    if (rc == 0 && r.param && !info->sc_vocab)
        rc = openai_error_set(e, 400, "invalid_request_error", r.param, "unsupported",
                              "structured outputs need the model's tokenizer");
    if (rc == 0 && r.param) rc = compile_constraint(info, &r, p, e);
    if (r.owned_schema) json_decref(r.schema);
    return rc;
}

/* "call_" + 24 hex digits from salt and the call's index (FNV-1a: ids differ per response). */
static json_t *call_id(const char *salt, size_t index) {
    uint64_t h1 = 1469598103934665603ull, h2 = 0x9e3779b97f4a7c15ull ^ index;
    for (const char *p = salt; *p; p++) {
        h1 = (h1 ^ (uint8_t)*p) * 1099511628211ull;
        h2 = (h2 ^ (uint8_t)*p) * 0x100000001b3ull + index;
    }
    h1 ^= index * 0xff51afd7ed558ccdull;
    char id[40];
    snprintf(id, sizeof id, "call_%016llx%08x", (unsigned long long)h1, (unsigned)(h2 >> 32));
    return json_string(id);
}

static void add_call(json_t *calls, const char *name, json_t *args, const char *salt) {
    char *text = json_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY);
    KV_CHECK(text);
    json_array_append_new(
        calls, json_pack("{s:o, s:s, s:{s:s, s:s}}", "id", call_id(salt, json_array_size(calls)),
                         "type", "function", "function", "name", name, "arguments", text));
    free(text);
}

int openai_forced_tool_calls(const char *forced, const char *text, size_t n, const char *salt,
                             tool_parse_result *out) {
    memset(out, 0, sizeof *out);
    json_t *v = json_loadb(text ? text : "", n, JSON_DECODE_ANY, NULL);
    if (!v) return 0;
    json_t *calls = json_array();
    if (forced[0]) {
        add_call(calls, forced, v, salt);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *c;
        json_array_foreach(v, i, c) {
            const char *name = json_string_value(json_object_get(c, "name"));
            json_t *params = json_object_get(c, "parameters");
            if (!name || !params) continue;
            add_call(calls, name, params, salt);
        }
    }
    json_decref(v);
    if (json_array_size(calls) == 0) {
        json_decref(calls);
        return 0;
    }
    out->calls = calls;
    return (int)json_array_size(calls);
}
