/* Chat requests and responses (see openai_chat.h). */
#include "server/openai_chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bad(openai_error *e, const char *param, const char *fmt, const char *a) {
    return openai_error_set(e, 400, "invalid_request_error", param, "invalid_value", fmt, a);
}

static bool present(const json_t *v) {
    return v && !json_is_null(v);
}

static int get_bool(json_t *root, const char *key, bool def, bool *out, openai_error *e) {
    json_t *v = json_object_get(root, key);
    *out = def;
    if (!present(v)) return 0;
    if (!json_is_boolean(v))
        return openai_error_set(e, 400, "invalid_request_error", key, "invalid_type",
                                "'%s' must be a boolean", key);
    *out = json_is_true(v);
    return 0;
}

/* content: a string, null, or a list of {type: "text", text} parts (joined with "\n", as vLLM
 * does). Returns the string form (new reference) or NULL with e set. */
static json_t *message_content(json_t *content, const char *param, openai_error *e) {
    if (!present(content)) return json_null();
    if (json_is_string(content)) return json_incref(content);
    if (!json_is_array(content)) {
        bad(e, param, "'%s' must be a string or a list of content parts", param);
        return NULL;
    }
    char *text = kv_strdup("");
    size_t len = 0;
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *type = json_object_get(part, "type"), *t = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) ||
            strcmp(json_string_value(type), "text") != 0 || !json_is_string(t)) {
            free(text);
            bad(e, param, "'%s': only {\"type\": \"text\", \"text\": ...} parts are supported",
                param);
            return NULL;
        }
        size_t n = json_string_length(t);
        text = kv_realloc(text, len + n + 2);
        if (i > 0) text[len++] = '\n';
        memcpy(text + len, json_string_value(t), n);
        len += n;
        text[len] = '\0';
    }
    json_t *s = json_stringn(text, len);
    free(text);
    if (!s) bad(e, param, "'%s' is not valid UTF-8", param);
    return s;
}

/* Assistant tool_calls: each function.arguments JSON string becomes an object (templates iterate
 * over it), as vLLM does. */
static int message_tool_calls(json_t *msg, openai_error *e) {
    json_t *calls = json_object_get(msg, "tool_calls");
    if (!present(calls)) return 0;
    if (!json_is_array(calls)) return bad(e, "messages", "'%s' must be a list", "tool_calls");
    size_t i;
    json_t *call;
    json_array_foreach(calls, i, call) {
        json_t *fn = json_object_get(call, "function");
        if (!json_is_object(call) || !json_is_object(fn) ||
            !json_is_string(json_object_get(fn, "name")))
            return bad(e, "messages", "%s: each tool call needs a function with a name",
                       "tool_calls");
        json_t *args = json_object_get(fn, "arguments");
        if (!json_is_string(args)) continue;
        json_t *parsed =
            json_loadb(json_string_value(args), json_string_length(args), JSON_DECODE_ANY, NULL);
        if (!parsed)
            return bad(e, "messages", "%s: function.arguments is not valid JSON", "tool_calls");
        json_object_set_new(fn, "arguments", parsed);
    }
    return 0;
}

static int parse_messages(json_t *root, json_t **out, openai_error *e) {
    json_t *msgs = json_object_get(root, "messages");
    if (!present(msgs))
        return openai_error_set(e, 400, "invalid_request_error", "messages",
                                "missing_required_parameter", "'messages' is required");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return bad(e, "messages", "'%s' must be a non-empty list", "messages");
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool"};
    json_t *list = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        json_t *role = json_object_get(m, "role");
        bool known = false;
        for (size_t k = 0; json_is_string(role) && k < sizeof roles / sizeof roles[0]; k++)
            known |= !strcmp(json_string_value(role), roles[k]);
        if (!json_is_object(m) || !known) {
            json_decref(list);
            return bad(e, "messages",
                       "%s: each message needs a role of system, developer, user, assistant "
                       "or tool",
                       "messages");
        }
        json_t *copy = json_deep_copy(m);
        json_t *content = message_content(json_object_get(m, "content"), "content", e);
        if (!content || message_tool_calls(copy, e)) {
            json_decref(content);
            json_decref(copy);
            json_decref(list);
            return -1;
        }
        json_object_set_new(copy, "content", content);
        json_array_append_new(list, copy);
    }
    *out = list;
    return 0;
}

static int parse_tools(json_t *root, openai_chat_request *req, openai_error *e) {
    json_t *tools = json_object_get(root, "tools");
    if (present(tools)) {
        if (!json_is_array(tools)) return bad(e, "tools", "'%s' must be a list", "tools");
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t) {
            json_t *fn = json_object_get(t, "function");
            if (!json_is_object(fn) || !json_is_string(json_object_get(fn, "name")))
                return bad(e, "tools", "%s: each tool needs a function with a name", "tools");
        }
        json_object_set(req->vars, "tools", tools);
        req->has_tools = json_array_size(tools) > 0;
    } else { /* as transformers: defined, and none */
        json_object_set_new(req->vars, "tools", json_null());
    }
    json_object_set_new(req->vars, "documents", json_null());
    json_t *choice = json_object_get(root, "tool_choice");
    if (!present(choice)) return 0;
    if (json_is_string(choice) && !strcmp(json_string_value(choice), "none"))
        req->tool_choice_none = true;
    if (json_is_string(choice) &&
        (!strcmp(json_string_value(choice), "auto") || !strcmp(json_string_value(choice), "none")))
        return 0;
    if (json_is_string(choice) && strcmp(json_string_value(choice), "required") != 0)
        return bad(e, "tool_choice", "'%s' must be auto, none, required or a named function",
                   "tool_choice");
    const char *name = NULL;
    if (!json_is_string(choice)) {
        json_t *fn = json_object_get(choice, "function");
        name = json_string_value(json_object_get(fn, "name"));
        if (!json_is_object(choice) || !name)
            return bad(e, "tool_choice", "'%s' must be auto, none, required or a named function",
                       "tool_choice");
    }
    if (!req->has_tools) return bad(e, "tool_choice", "'%s' needs tools", "tool_choice");
    /* the output is JSON: the named function's arguments, or for required a list of calls */
    json_t *alts = json_array(), *found = NULL;
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *fn = json_object_get(t, "function");
        json_t *params = json_object_get(fn, "parameters");
        const char *tname = json_string_value(json_object_get(fn, "name"));
        json_t *ps = params ? json_incref(params) : json_pack("{s:s}", "type", "object");
        if (name && !found && !strcmp(name, tname)) found = json_incref(ps); /* the first */
        json_array_append_new(alts, json_pack("{s:s, s:{s:{s:s}, s:o}, s:[s, s], s:b}", "type",
                                              "object", "properties", "name", "const", tname,
                                              "parameters", ps, "required", "name", "parameters",
                                              "additionalProperties", 0));
    }
    json_t *schema = NULL;
    if (name && !found) {
        json_decref(alts);
        return openai_error_set(e, 400, "invalid_request_error", "tool_choice", "invalid_value",
                                "tool_choice names function '%.100s', which is not in tools", name);
    }
    if (name)
        schema = found, json_decref(alts);
    else
        schema = json_pack("{s:s, s:i, s:{s:o}}", "type", "array", "minItems", 1, "items", "anyOf",
                           alts);
    req->tool_schema = schema;
    req->forced_tool = kv_strdup(name ? name : "");
    return 0;
}

/* The keys that are chat-only: not handed to the completions parser. */
static const char *const chat_only[] = {"messages",
                                        "tools",
                                        "tool_choice",
                                        "add_generation_prompt",
                                        "continue_final_message",
                                        "chat_template_kwargs",
                                        "max_completion_tokens",
                                        "top_logprobs",
                                        "logprobs",
                                        "parallel_tool_calls",
                                        "add_special_tokens",
                                        "prompt",
                                        "return_token_ids",
                                        "echo"};

/* logprobs (bool) + top_logprobs (int) -> the completions parser's logprobs; max_completion_tokens
 * over max_tokens, and neither = all that fits. */
static int completion_body(json_t *root, openai_chat_request *req, openai_error *e) {
    bool logprobs;
    if (get_bool(root, "logprobs", false, &logprobs, e)) return -1;
    json_t *top = json_object_get(root, "top_logprobs");
    if (present(top) && !json_is_integer(top))
        return openai_error_set(e, 400, "invalid_request_error", "top_logprobs", "invalid_type",
                                "'top_logprobs' must be an integer");
    if (present(top) && !logprobs)
        return bad(e, "top_logprobs", "when using '%s', 'logprobs' must be set to true",
                   "top_logprobs");
    json_t *echo = json_object_get(root, "echo");
    if (json_is_true(echo)) return bad(e, "echo", "'%s' is not supported on chat", "echo");
    json_t *body = json_deep_copy(root);
    for (size_t k = 0; k < sizeof chat_only / sizeof chat_only[0]; k++)
        json_object_del(body, chat_only[k]);
    if (logprobs)
        json_object_set_new(body, "logprobs", present(top) ? json_incref(top) : json_integer(0));
    json_t *mct = json_object_get(root, "max_completion_tokens");
    if (present(mct)) json_object_set(body, "max_tokens", mct);
    if (req->tool_schema) {
        static const char *const others[] = {"response_format", "structured_outputs", "guided_json",
                                             "guided_regex", "guided_choice"};
        for (size_t k = 0; k < sizeof others / sizeof *others; k++)
            if (present(json_object_get(body, others[k]))) {
                json_decref(body);
                return bad(e, others[k], "'%s' cannot be combined with a forced tool_choice",
                           others[k]);
            }
        json_object_set(body, "guided_json", req->tool_schema);
    }
    /* chat has no default of 16 tokens: all that fits (OpenAI, vLLM) */
    if (!present(json_object_get(body, "max_tokens")))
        json_object_set_new(body, "max_tokens", json_null());
    req->completion = body;
    return 0;
}

int openai_chat_parse(const openai_model_info *info, const chat_source *cs, const char *body,
                      size_t len, bool tokenize_only, openai_chat_request *req, openai_error *e) {
    memset(req, 0, sizeof *req);
    req->tokenize_only = tokenize_only;
    json_t *root = openai_load_object(body, len, e);
    if (!root) return -1;
    int rc = -1;
    req->vars = json_object();
    json_t *msgs = NULL;
    if (openai_check_model(info, root, e) || parse_messages(root, &msgs, e)) goto done;
    json_object_set_new(req->vars, "messages", msgs);
    if (parse_tools(root, req, e)) goto done;
    bool add_gen;
    if (get_bool(root, "add_generation_prompt", true, &add_gen, e) ||
        get_bool(root, "continue_final_message", false, &req->continue_final, e) ||
        get_bool(root, "add_special_tokens", false, &req->add_special_tokens, e))
        goto done;
    if (add_gen && req->continue_final) {
        bad(e, "continue_final_message", "%s",
            "continue_final_message and add_generation_prompt cannot both be true");
        goto done;
    }
    if (req->continue_final) {
        json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
        json_t *content = json_object_get(last, "content");
        if (strcmp(json_string_value(json_object_get(last, "role")), "assistant") != 0 ||
            !json_is_string(content)) {
            bad(e, "continue_final_message", "%s",
                "continue_final_message needs a final assistant message with content");
            goto done;
        }
        req->final_content = kv_strdup(json_string_value(content));
    }
    json_object_set_new(req->vars, "add_generation_prompt", json_boolean(add_gen));
    json_object_set_new(req->vars, "bos_token", json_string(cs ? cs->bos_token : ""));
    json_object_set_new(req->vars, "eos_token", json_string(cs ? cs->eos_token : ""));
    json_t *kw = json_object_get(root, "chat_template_kwargs");
    if (present(kw)) {
        if (!json_is_object(kw)) {
            bad(e, "chat_template_kwargs", "'%s' must be an object", "chat_template_kwargs");
            goto done;
        }
        json_object_update(req->vars, kw);
    }
    if (!tokenize_only && completion_body(root, req, e)) goto done;
    rc = 0;
done:
    json_decref(root);
    if (rc) openai_chat_request_free(req);
    return rc;
}

void openai_chat_request_free(openai_chat_request *req) {
    json_decref(req->vars);
    json_decref(req->completion);
    json_decref(req->tool_schema);
    free(req->final_content);
    free(req->forced_tool);
    memset(req, 0, sizeof *req);
}

/* The last occurrence of needle in hay[0..n), or NULL. */
static const char *find_last(const char *hay, size_t n, const char *needle) {
    size_t m = strlen(needle);
    if (m == 0 || m > n) return NULL;
    for (size_t i = n - m + 1; i-- > 0;)
        if (!memcmp(hay + i, needle, m)) return hay + i;
    return NULL;
}

int openai_chat_prompt(const openai_model_info *info, const chat_source *cs,
                       const openai_chat_request *req, int32_t **ids, int *n_ids, openai_error *e) {
    const chat_template *t = cs ? chat_source_pick(cs, req->has_tools) : NULL;
    if (!t)
        return openai_error_set(e, 400, "invalid_request_error", "messages", "no_chat_template",
                                "the model has no chat template (tokenizer_config.json has no "
                                "chat_template and there is no chat_template.jinja): give one "
                                "with --chat-template FILE, or use /v1/completions");
    if (!info->tok)
        return openai_error_set(e, 503, "server_error", NULL, "model_not_ready",
                                "the tokenizer is not loaded yet");
    char *text = NULL;
    size_t len = 0;
    kv_error kerr = {{0}};
    chat_template_limits lim = chat_template_default_limits();
    if (chat_template_render(t, req->vars, &lim, &text, &len, &kerr)) {
        openai_utf8_sanitize(kerr.msg, strlen(kerr.msg));
        return openai_error_set(e, 400, "invalid_request_error", "messages", "chat_template_error",
                                "%s", kerr.msg);
    }
    if (req->continue_final) { /* cut what the template wrote after the final message */
        const char *at = find_last(text, len, req->final_content);
        if (at) len = (size_t)(at - text) + strlen(req->final_content);
    }
    int rc = openai_check_prompt_bytes(info, len, e);
    if (rc == 0)
        rc = openai_tokenize_prompt(info, text, len, req->add_special_tokens, !req->tokenize_only,
                                    "messages", "rendered prompt", ids, n_ids, e);
    free(text);
    return rc;
}

int openai_chat_to_completion(const openai_model_info *info, openai_chat_request *req,
                              const int32_t *ids, int n_ids, openai_completion_request *out,
                              openai_error *e) {
    json_t *prompt = json_array();
    for (int i = 0; i < n_ids; i++) json_array_append_new(prompt, json_integer(ids[i]));
    json_object_set_new(req->completion, "prompt", prompt);
    char *body = json_dumps(req->completion, JSON_COMPACT);
    KV_CHECK(body);
    int rc = openai_parse_completion(info, body, strlen(body), out, e);
    free(body);
    if (rc == 0 && req->forced_tool) out->forced_tool = kv_strdup(req->forced_tool);
    if (rc && !strcmp(e->param, "guided_json") && req->forced_tool)
        snprintf(e->param, sizeof e->param, "tools");
    /* name the parameters as the client sent them */
    if (rc && !strcmp(e->param, "prompt")) snprintf(e->param, sizeof e->param, "messages");
    if (rc && !strcmp(e->param, "logprobs")) snprintf(e->param, sizeof e->param, "top_logprobs");
    return rc;
}

/* ---- response building ---- */

json_t *openai_chat_logprobs_new(void) {
    return json_pack("{s:[]}", "content");
}

static json_t *bytes_json(const char *s) {
    json_t *a = json_array();
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        json_array_append_new(a, json_integer(*p));
    return a;
}

static json_t *lp_entry(const char *token, double logprob) {
    return json_pack("{s:s, s:f, s:o}", "token", token, "logprob", openai_logprob_value(logprob),
                     "bytes", bytes_json(token));
}

void openai_chat_logprobs_append(json_t *lp, const char *token, double logprob, int n_top,
                                 const char *const *top_tokens, const float *top_logprobs) {
    json_t *entry = lp_entry(token, logprob);
    json_t *top = json_array();
    for (int i = 0; i < n_top; i++)
        json_array_append_new(top, lp_entry(top_tokens[i], top_logprobs[i]));
    json_object_set_new(entry, "top_logprobs", top);
    json_array_append_new(json_object_get(lp, "content"), entry);
}

size_t openai_chat_logprobs_count(json_t *lp) {
    return json_array_size(json_object_get(lp, "content"));
}

json_t *openai_chat_choice_json(int index, const char *text, size_t n, json_t *logprobs,
                                kv_finish finish, json_t *stop_reason, bool stream) {
    const char *fin = kv_finish_name(finish);
    json_t *content = json_stringn(text ? text : "", n);
    if (!content) content = json_string("");
    json_t *msg = stream ? json_pack("{s:o}", "content", content)
                         : json_pack("{s:s, s:o}", "role", "assistant", "content", content);
    if (!stream) json_object_set_new(msg, "tool_calls", json_array());
    return json_pack("{s:i, s:o, s:o, s:o, s:o}", "index", index, stream ? "delta" : "message", msg,
                     "logprobs", logprobs ? logprobs : json_null(), "finish_reason",
                     fin ? json_string(fin) : json_null(), "stop_reason",
                     stop_reason ? stop_reason : json_null());
}

json_t *openai_chat_tool_calls_choice_json(int index, const char *content, size_t n, json_t *calls,
                                           json_t *logprobs, json_t *stop_reason, bool stream) {
    json_t *text = content ? json_stringn(content, n) : json_null();
    if (!text) text = json_string(""); /* not UTF-8: cannot come from a conforming tokenizer */
    json_t *msg = json_pack("{s:o, s:o}", "content", text, "tool_calls", calls);
    if (!stream) json_object_set_new(msg, "role", json_string("assistant"));
    size_t k;
    json_t *call;
    if (stream)
        json_array_foreach(calls, k, call)
            json_object_set_new(call, "index", json_integer((json_int_t)k));
    return json_pack("{s:i, s:o, s:o, s:s, s:o}", "index", index, stream ? "delta" : "message", msg,
                     "logprobs", logprobs ? logprobs : json_null(), "finish_reason", "tool_calls",
                     "stop_reason", stop_reason ? stop_reason : json_null());
}

json_t *openai_chat_role_choice_json(int index) {
    return json_pack("{s:i, s:{s:s, s:s}, s:n, s:n}", "index", index, "delta", "role", "assistant",
                     "content", "", "logprobs", "finish_reason");
}

json_t *openai_chat_json(const char *id, long long created, const char *model, json_t *choices,
                         json_t *usage, bool chunk) {
    json_t *j = json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", id, "object",
                          chunk ? "chat.completion.chunk" : "chat.completion", "created",
                          (json_int_t)created, "model", model, "choices", choices);
    if (usage) json_object_set_new(j, "usage", usage);
    return j;
}
