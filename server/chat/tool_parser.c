/* Tool calls in generated text (see tool_parser.h). Each format follows vLLM's parser of the same
 * name: a call that does not parse makes the whole output content, never an error. */
#include "server/chat/tool_parser.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/common.h"
#include "server/chat/tool_stream.h"

static const char *find(const char *hay, size_t n, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; m <= n && i + m <= n; i++)
        if (!memcmp(hay + i, needle, m)) return hay + i;
    return NULL;
}

static bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

tool_parser_kind tool_parser_detect(const char *text, size_t n) {
    if (!text) return TOOL_PARSER_NONE;
    if (find(text, n, "<tool_call>")) return TOOL_PARSER_HERMES;
    if (find(text, n, "[TOOL_CALLS]")) return TOOL_PARSER_MISTRAL;
    if (find(text, n, "<|python_tag|>") || find(text, n, "ipython")) return TOOL_PARSER_LLAMA3_JSON;
    return TOOL_PARSER_NONE;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= ((const unsigned char *)p)[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* {id, type, function: {name, arguments}} from a parsed {name, <args_key>} object; NULL when it
 * has no string name. Arguments: an object or other value is dumped as JSON (vLLM's json.dumps,
 * ", " and ": " separators), a string is kept, none is "{}". */
static json_t *call_json(json_t *obj, const char *args_key, const char *salt, const char *text,
                         size_t n, int index) {
    json_t *name = json_object_get(obj, "name");
    if (!json_is_object(obj) || !json_is_string(name)) return NULL;
    json_t *args = json_object_get(obj, args_key);
    char *dumped = NULL;
    if (!args)
        dumped = kv_strdup("{}");
    else if (json_is_string(args))
        dumped = kv_strdup(json_string_value(args));
    else
        dumped = json_dumps(args, JSON_ENCODE_ANY);
    KV_CHECK(dumped);
    uint64_t h1 = fnv1a(0xcbf29ce484222325ULL, salt ? salt : "", salt ? strlen(salt) : 0);
    h1 = fnv1a(h1, &index, sizeof index);
    h1 = fnv1a(h1, text, n);
    uint64_t h2 = fnv1a(h1 ^ 0x9e3779b97f4a7c15ULL, dumped, strlen(dumped));
    char id[48];
    snprintf(id, sizeof id, "call_%016llx%08llx", (unsigned long long)h1,
             (unsigned long long)(h2 & 0xffffffffULL));
    json_t *call = json_pack("{s:s, s:s, s:{s:O, s:s}}", "id", id, "type", "function", "function",
                             "name", name, "arguments", dumped);
    free(dumped);
    return call;
}

/* One JSON value from p[0..n) (leading spaces skipped); *used = bytes consumed. */
static json_t *load_prefix(const char *p, size_t n, size_t *used) {
    size_t skip = 0;
    while (skip < n && is_space(p[skip])) skip++;
    json_error_t err;
    json_t *v = json_loadb(p + skip, n - skip, JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY, &err);
    if (v) *used = skip + err.position;
    return v;
}

static bool only_space(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!is_space(p[i])) return false;
    return true;
}

static void set_content(tool_parse_result *out, const char *p, size_t n) {
    if (only_space(p, n)) return; /* vLLM: no text before the calls is null content */
    out->content = kv_malloc(n + 1);
    memcpy(out->content, p, n);
    out->content[n] = '\0';
    out->content_len = n;
}

/* Hermes / Qwen: <tool_call>{json}</tool_call> ..., the last one may lack its close tag (cut by a
 * stop); text before the first is content. */
static int parse_hermes(const char *text, size_t n, const char *salt, tool_parse_result *out) {
    static const char open[] = "<tool_call>", close[] = "</tool_call>";
    const char *first = find(text, n, open);
    if (!first) return 0;
    const char *p = first, *end = text + n;
    while (p) {
        const char *body = p + strlen(open);
        const char *stop = find(body, (size_t)(end - body), close);
        size_t len = (size_t)((stop ? stop : end) - body), used = 0;
        json_t *obj = load_prefix(body, len, &used);
        json_t *call =
            obj && only_space(body + used, len - used)
                ? call_json(obj, "arguments", salt, text, n, (int)json_array_size(out->calls))
                : NULL;
        json_decref(obj);
        if (!call) return -1;
        json_array_append_new(out->calls, call);
        if (!stop) break;
        p = find(stop, (size_t)(end - stop), open);
    }
    set_content(out, text, (size_t)(first - text));
    return 0;
}

/* Llama 3.x JSON: the whole output is {"name", "parameters"} objects (after an optional
 * <|python_tag|>), separated by ';'. "arguments" is taken too, as vLLM does. */
static int parse_llama3(const char *text, size_t n, const char *salt, tool_parse_result *out) {
    static const char tag[] = "<|python_tag|>";
    size_t i = 0;
    while (i < n && is_space(text[i])) i++;
    if (n - i >= strlen(tag) && !memcmp(text + i, tag, strlen(tag))) i += strlen(tag);
    while (i < n && is_space(text[i])) i++;
    if (i == n || text[i] != '{') return 0;
    while (i < n) {
        size_t used = 0;
        json_t *obj = load_prefix(text + i, n - i, &used);
        const char *key = json_object_get(obj, "parameters") ? "parameters" : "arguments";
        json_t *call =
            obj ? call_json(obj, key, salt, text, n, (int)json_array_size(out->calls)) : NULL;
        json_decref(obj);
        if (!call) return -1;
        json_array_append_new(out->calls, call);
        i += used;
        while (i < n && is_space(text[i])) i++;
        if (i < n && text[i] == ';')
            i++;
        else if (i < n)
            return -1;
        while (i < n && is_space(text[i])) i++;
    }
    return 0;
}

/* Mistral: text, then [TOOL_CALLS][{"name", "arguments"}, ...] (or one object), or the v11
 * tokenizers' [TOOL_CALLS]name[ARGS]{...} (repeated for more calls). */
static int parse_mistral(const char *text, size_t n, const char *salt, tool_parse_result *out) {
    static const char tag[] = "[TOOL_CALLS]";
    const char *at = find(text, n, tag);
    if (!at) return 0;
    const char *body = at + strlen(tag);
    size_t len = (size_t)(text + n - body), used = 0;
    size_t lead = 0;
    while (lead < len && is_space(body[lead])) lead++;
    if (lead < len && body[lead] != '[' && body[lead] != '{') { /* v11: [TOOL_CALLS]name[ARGS]{} */
        if (!tool_stream_parse_region(TOOL_PARSER_MISTRAL, at, (size_t)(text + n - at), salt,
                                      out->calls))
            return -1;
        set_content(out, text, (size_t)(at - text));
        return 0;
    }
    json_t *v = load_prefix(body, len, &used);
    if (!v || !only_space(body + used, len - used)) {
        json_decref(v);
        return -1;
    }
    if (json_is_object(v)) v = json_pack("[o]", v);
    if (!json_is_array(v) || json_array_size(v) == 0) {
        json_decref(v);
        return -1;
    }
    size_t k;
    json_t *obj;
    json_array_foreach(v, k, obj) {
        json_t *call = call_json(obj, "arguments", salt, text, n, (int)k);
        if (!call) {
            json_decref(v);
            return -1;
        }
        json_array_append_new(out->calls, call);
    }
    json_decref(v);
    set_content(out, text, (size_t)(at - text));
    return 0;
}

int tool_parser_parse(tool_parser_kind kind, const char *text, size_t n, const char *salt,
                      tool_parse_result *out) {
    memset(out, 0, sizeof *out);
    if (!text) return 0;
    out->calls = json_array();
    int rc = 0;
    switch (kind) {
    case TOOL_PARSER_HERMES:
        rc = parse_hermes(text, n, salt, out);
        break;
    case TOOL_PARSER_LLAMA3_JSON:
        rc = parse_llama3(text, n, salt, out);
        break;
    case TOOL_PARSER_MISTRAL:
        rc = parse_mistral(text, n, salt, out);
        break;
    case TOOL_PARSER_AUTO:
    case TOOL_PARSER_NONE:
        break;
    }
    int n_calls = (int)json_array_size(out->calls);
    if (rc || n_calls == 0) {
        tool_parse_result_free(out);
        return 0;
    }
    return n_calls;
}

/* Bytes before marker in text, or before a tail of text that may be the marker's beginning. */
static size_t before_marker(const char *text, size_t n, const char *marker) {
    const char *at = find(text, n, marker);
    if (at) return (size_t)(at - text);
    size_t m = strlen(marker);
    for (size_t k = m - 1 < n ? m - 1 : n; k > 0; k--)
        if (!memcmp(text + n - k, marker, k)) return n - k;
    return n;
}

size_t tool_parser_stream_safe(tool_parser_kind kind, const char *text, size_t n, bool at_start) {
    static const char tag[] = "<|python_tag|>";
    switch (kind) {
    case TOOL_PARSER_HERMES:
        return before_marker(text, n, "<tool_call>");
    case TOOL_PARSER_MISTRAL:
        return before_marker(text, n, "[TOOL_CALLS]");
    case TOOL_PARSER_LLAMA3_JSON: {
        if (!at_start) return n;
        size_t i = 0;
        while (i < n && is_space(text[i])) i++;
        size_t rest = n - i, m = strlen(tag);
        if (rest == 0 || text[i] == '{' || !memcmp(text + i, tag, rest < m ? rest : m)) return 0;
        return n;
    }
    case TOOL_PARSER_AUTO:
    case TOOL_PARSER_NONE:
        break;
    }
    return n;
}

void tool_parse_result_free(tool_parse_result *r) {
    free(r->content);
    json_decref(r->calls);
    memset(r, 0, sizeof *r);
}
