/* Unit tests for server/openai_chat and server/chat/chat_source: every invalid chat body names
 * its parameter, the template variables built from a valid one (tool call arguments parsed, tools
 * and documents defined as none), the rendered prompt's ids (byte tokenizer: id = byte), the
 * completions request built from it, the chat response shapes, and where templates are loaded
 * from. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "server/openai_chat.h"
#include "tests/unit/server_support.h"

static tokenizer *byte_tok;
static chat_source chatml;

#define LIT(s) s, strlen(s)

static const char chatml_src[] =
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{%- if m.tool_calls %}{%- for c in m.tool_calls %}<tool_call>{{ c.function.arguments | "
    "tojson }}</tool_call>{%- endfor %}{%- endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    "{%- if tools is none %}[no tools]{%- endif %}{{ extra }}";

static openai_model_info info_for(int max_model_len) {
    return (openai_model_info){.served_model_name = "m",
                               .tok = byte_tok,
                               .max_model_len = max_model_len,
                               .vocab_size = tokenizer_vocab_size(byte_tok)};
}

/* Renders body to text through openai_chat_prompt (ids are bytes). */
static char *render(const char *body) {
    openai_model_info info = info_for(4096);
    openai_chat_request req;
    openai_error e;
    ck_assert_msg(openai_chat_parse(&info, &chatml, LIT(body), false, &req, &e) == 0, "%s",
                  e.message);
    int32_t *ids;
    int n;
    ck_assert_msg(openai_chat_prompt(&info, &chatml, &req, &ids, &n, &e) == 0, "%s", e.message);
    char *text = kv_malloc((size_t)n + 1);
    for (int i = 0; i < n; i++) text[i] = (char)ids[i];
    text[n] = '\0';
    free(ids);
    openai_chat_request_free(&req);
    return text;
}

typedef struct bad_case {
    const char *body;
    const char *param;
    const char *code;
} bad_case;

static const bad_case bad_cases[] = {
    {"[]", NULL, "invalid_json"},
    {"{", NULL, "invalid_json"},
    {"{}", "messages", "missing_required_parameter"},
    {"{\"messages\": []}", "messages", "invalid_value"},
    {"{\"messages\": {}}", "messages", "invalid_value"},
    {"{\"messages\": [1]}", "messages", "invalid_value"},
    {"{\"messages\": [{\"content\": \"x\"}]}", "messages", "invalid_value"},
    {"{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}", "messages", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "content", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", "content",
     "invalid_value"},
    {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"function\": "
     "{\"name\": \"f\", \"arguments\": \"{x\"}}]}]}",
     "messages", "invalid_value"},
    {"{\"messages\": [{\"role\": \"assistant\", \"tool_calls\": [{}]}]}", "messages",
     "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": 1}", "tools",
     "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}", "tools",
     "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": \"required\"}",
     "tool_choice", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": {\"type\": "
     "\"function\", \"function\": {\"name\": \"f\"}}}",
     "tool_choice", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{\"type\": "
     "\"function\", \"function\": {\"name\": \"f\"}}], \"tool_choice\": {\"type\": "
     "\"function\", \"function\": {\"name\": \"g\"}}}",
     "tool_choice", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": \"maybe\"}",
     "tool_choice", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\": {\"type\": "
     "\"function\"}}",
     "tool_choice", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"add_generation_prompt\": 1}",
     "add_generation_prompt", "invalid_type"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"continue_final_message\": true}",
     "continue_final_message", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"chat_template_kwargs\": []}",
     "chat_template_kwargs", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
     "top_logprobs", "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": 1}", "logprobs",
     "invalid_type"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"echo\": true}", "echo",
     "invalid_value"},
    {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"model\": \"other\"}", "model",
     "model_not_found"},
};

START_TEST(every_invalid_chat_body_names_its_parameter) {
    const bad_case *c = &bad_cases[_i];
    openai_model_info info = info_for(4096);
    openai_chat_request req;
    openai_error e;
    ck_assert_msg(openai_chat_parse(&info, &chatml, LIT(c->body), false, &req, &e) != 0, "%s",
                  c->body);
    ck_assert_str_eq(e.param, c->param ? c->param : "");
    ck_assert_str_eq(e.code, c->code);
    ck_assert(e.message[0]);
}
END_TEST

/* tool_choice required / a named function constrain the output to the tools' schemas; without
 * tools, or naming a function that is not among them, they are a 400 that says so. */
START_TEST(tool_choice_unsupported_says_why) {
    openai_model_info info = info_for(4096);
    openai_chat_request req;
    openai_error e;
    const char *required = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                           "\"tool_choice\": \"required\"}";
    ck_assert(openai_chat_parse(&info, &chatml, LIT(required), false, &req, &e) != 0);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "tool_choice");
    ck_assert_ptr_nonnull(strstr(e.message, "needs tools"));
    const char *named = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                        "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], "
                        "\"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": "
                        "\"get_weather\"}}}";
    ck_assert(openai_chat_parse(&info, &chatml, LIT(named), false, &req, &e) != 0);
    ck_assert_int_eq(e.status, 400);
    ck_assert_ptr_nonnull(strstr(e.message, "'get_weather', which is not in tools"));
}
END_TEST

START_TEST(template_variables) {
    openai_model_info info = info_for(4096);
    openai_chat_request req;
    openai_error e;
    const char *body =
        "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, "
        "{\"type\": \"text\", \"text\": \"b\"}]}, {\"role\": \"assistant\", \"content\": \"\", "
        "\"tool_calls\": [{\"id\": \"1\", \"type\": \"function\", \"function\": {\"name\": \"f\", "
        "\"arguments\": \"{\\\"x\\\": 1.5}\"}}]}], \"chat_template_kwargs\": {\"extra\": \"E\", "
        "\"add_generation_prompt\": false}}";
    ck_assert_msg(openai_chat_parse(&info, &chatml, LIT(body), false, &req, &e) == 0, "%s",
                  e.message);
    json_t *v = req.vars;
    ck_assert(json_is_null(json_object_get(v, "tools")));
    ck_assert(json_is_null(json_object_get(v, "documents")));
    ck_assert(json_is_false(json_object_get(v, "add_generation_prompt"))); /* kwargs win */
    ck_assert_str_eq(json_string_value(json_object_get(v, "bos_token")), "<s>");
    json_t *m0 = json_array_get(json_object_get(v, "messages"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(m0, "content")), "a\nb");
    json_t *m1 = json_array_get(json_object_get(v, "messages"), 1);
    json_t *args = json_object_get(
        json_object_get(json_array_get(json_object_get(m1, "tool_calls"), 0), "function"),
        "arguments");
    ck_assert(json_is_object(args));
    ck_assert(!req.has_tools);
    openai_chat_request_free(&req);
}
END_TEST

START_TEST(rendered_prompts) {
    char *t = render("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}");
    ck_assert_str_eq(t, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[no tools]");
    free(t);
    t = render("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": "
               "\"assistant\", \"content\": \"Once\"}], \"add_generation_prompt\": false, "
               "\"continue_final_message\": true}");
    ck_assert_str_eq(t, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nOnce");
    free(t);
    t = render("{\"messages\": [{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": "
               "[{\"function\": {\"name\": \"f\", \"arguments\": \"{\\\"b\\\": 1, \\\"a\\\": "
               "[2.0]}\"}}]}], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": "
               "\"f\"}}], \"add_generation_prompt\": false}");
    ck_assert_str_eq(t, "<|im_start|>assistant\n<tool_call>{\"b\": 1, \"a\": [2.0]}</tool_call>"
                        "<|im_end|>\n");
    free(t);
}
END_TEST

START_TEST(raise_exception_and_no_template) {
    openai_model_info info = info_for(4096);
    kv_error err;
    chat_source raising = {.bos_token = "", .eos_token = ""};
    const char *src = "{{ raise_exception('roles must alternate') }}";
    raising.tmpl = chat_template_parse(LIT(src), &err);
    ck_assert(raising.tmpl);
    const char *body = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}";
    openai_chat_request req;
    openai_error e;
    int32_t *ids = NULL;
    int n;
    ck_assert(openai_chat_parse(&info, &raising, LIT(body), false, &req, &e) == 0);
    ck_assert(openai_chat_prompt(&info, &raising, &req, &ids, &n, &e) != 0);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.message, "roles must alternate");
    chat_source none = {0};
    ck_assert(openai_chat_prompt(&info, &none, &req, &ids, &n, &e) != 0);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.code, "no_chat_template");
    openai_chat_request_free(&req);
    chat_template_free(raising.tmpl);
}
END_TEST

START_TEST(completion_request_from_chat) {
    openai_model_info info = info_for(64);
    openai_chat_request req;
    openai_error e;
    const char *body = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                       "\"max_completion_tokens\": 7, \"max_tokens\": 3, \"logprobs\": true, "
                       "\"top_logprobs\": 4, \"n\": 2, \"stop\": \"z\", \"seed\": 9, "
                       "\"stream\": true, \"stream_options\": {\"include_usage\": true}}";
    ck_assert(openai_chat_parse(&info, &chatml, LIT(body), false, &req, &e) == 0);
    int32_t ids[5] = {1, 2, 3, 4, 5};
    openai_completion_request cr;
    ck_assert_msg(openai_chat_to_completion(&info, &req, ids, 5, &cr, &e) == 0, "%s", e.message);
    ck_assert_int_eq(cr.n_prompts, 1);
    ck_assert_int_eq(cr.prompts[0].n_ids, 5);
    ck_assert_int_eq(cr.prompts[0].max_tokens, 7);
    ck_assert_int_eq(cr.logprobs, 4);
    ck_assert_int_eq(cr.n, 2);
    ck_assert_int_eq(cr.n_stop, 1);
    ck_assert(cr.stream && cr.include_usage && !cr.echo);
    openai_completion_request_free(&cr);
    openai_chat_request_free(&req);
    /* no max_tokens: all that fits, not completions' 16 */
    body = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}";
    ck_assert(openai_chat_parse(&info, &chatml, LIT(body), false, &req, &e) == 0);
    ck_assert(openai_chat_to_completion(&info, &req, ids, 5, &cr, &e) == 0);
    ck_assert_int_eq(cr.prompts[0].max_tokens, 64 - 5);
    openai_completion_request_free(&cr);
    openai_chat_request_free(&req);
    /* over the context: named as the client sent it */
    int32_t many[64] = {0};
    body = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}";
    ck_assert(openai_chat_parse(&info, &chatml, LIT(body), false, &req, &e) == 0);
    ck_assert(openai_chat_to_completion(&info, &req, many, 64, &cr, &e) != 0);
    ck_assert_str_eq(e.param, "messages");
    ck_assert_str_eq(e.code, "context_length_exceeded");
    openai_chat_request_free(&req);
}
END_TEST

START_TEST(response_shapes) {
    json_t *lp = openai_chat_logprobs_new();
    const char *tops[2] = {"a", "b"};
    float top_lp[2] = {-0.5f, -1.0f};
    openai_chat_logprobs_append(lp, "a", -0.5, 2, tops, top_lp);
    ck_assert_int_eq((int)openai_chat_logprobs_count(lp), 1);
    json_t *c = openai_chat_choice_json(0, "hi", 2, lp, KV_FINISH_STOP, NULL, false);
    json_t *j = openai_chat_json("chatcmpl-1", 5, "m", json_pack("[o]", c), NULL, false);
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(
        s, "{\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"logprobs\":{\"content\":[{"
           "\"bytes\":[97],\"logprob\":-0.5,\"token\":\"a\",\"top_logprobs\":[{\"bytes\":[97],"
           "\"logprob\":-0.5,\"token\":\"a\"},{\"bytes\":[98],\"logprob\":-1.0,\"token\":\"b\"}]}"
           "]},\"message\":{\"content\":\"hi\",\"role\":\"assistant\",\"tool_calls\":[]},"
           "\"stop_reason\":null}],\"created\":5,\"id\":\"chatcmpl-1\",\"model\":\"m\","
           "\"object\":\"chat.completion\"}");
    free(s);
    json_decref(j);
    j = openai_chat_json("chatcmpl-1", 5, "m", json_pack("[o]", openai_chat_role_choice_json(1)),
                         NULL, true);
    s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(s, "{\"choices\":[{\"delta\":{\"content\":\"\",\"role\":\"assistant\"},"
                        "\"finish_reason\":null,\"index\":1,\"logprobs\":null}],\"created\":5,"
                        "\"id\":\"chatcmpl-1\",\"model\":\"m\",\"object\":"
                        "\"chat.completion.chunk\"}");
    free(s);
    json_decref(j);
    /* tool calls: content null when no text came before them, finish_reason "tool_calls" */
    json_t *calls = json_pack("[{s:s, s:s, s:{s:s, s:s}}]", "id", "call_1", "type", "function",
                              "function", "name", "f", "arguments", "{\"x\": 1}");
    c = openai_chat_tool_calls_choice_json(0, NULL, 0, calls, NULL, NULL, false);
    s = json_dumps(c, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(s, "{\"finish_reason\":\"tool_calls\",\"index\":0,\"logprobs\":null,"
                        "\"message\":{\"content\":null,\"role\":\"assistant\",\"tool_calls\":[{"
                        "\"function\":{\"arguments\":\"{\\\"x\\\": 1}\",\"name\":\"f\"},\"id\":"
                        "\"call_1\",\"type\":\"function\"}]},\"stop_reason\":null}");
    free(s);
    json_decref(c);
    c = openai_chat_tool_calls_choice_json(2, "Let me look.", 12, json_array(), NULL,
                                           json_integer(7), false);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(c, "message"), "content")),
                     "Let me look.");
    ck_assert_int_eq(json_integer_value(json_object_get(c, "stop_reason")), 7);
    json_decref(c);
}
END_TEST

START_TEST(tool_choice_fields) {
    openai_model_info info = info_for(1024);
    openai_chat_request req;
    openai_error e;
    const char *tools = "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]";
    char body[512];
    snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], %s}",
             tools);
    ck_assert_int_eq(openai_chat_parse(&info, &chatml, body, strlen(body), false, &req, &e), 0);
    ck_assert(req.has_tools && !req.tool_choice_none);
    openai_chat_request_free(&req);
    snprintf(body, sizeof body,
             "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], %s, "
             "\"tool_choice\": \"none\"}",
             tools);
    ck_assert_int_eq(openai_chat_parse(&info, &chatml, body, strlen(body), false, &req, &e), 0);
    ck_assert(req.has_tools && req.tool_choice_none);
    openai_chat_request_free(&req);
}
END_TEST

/* Two tools of one name and a tool_choice naming it: the first one's parameters are the schema
 * (as vLLM picks it), and the other's are not kept (each match took a reference: the earlier
 * ones leaked, and the last one won). */
START_TEST(tool_choice_named_twice_takes_the_first) {
    openai_model_info info = info_for(1024);
    openai_chat_request req;
    openai_error e;
    const char *body =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": [{\"type\": "
        "\"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\", "
        "\"title\": \"first\"}}}, {\"type\": \"function\", \"function\": {\"name\": \"f\", "
        "\"parameters\": {\"type\": \"object\", \"title\": \"second\"}}}], \"tool_choice\": "
        "{\"type\": \"function\", \"function\": {\"name\": \"f\"}}}";
    ck_assert_int_eq(openai_chat_parse(&info, &chatml, body, strlen(body), false, &req, &e), 0);
    ck_assert_ptr_nonnull(req.tool_schema);
    ck_assert_str_eq(json_string_value(json_object_get(req.tool_schema, "title")), "first");
    openai_chat_request_free(&req);
}
END_TEST

/* Writes text to dir/name. */
static void write_file(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    fputs(text, f);
    fclose(f);
}

static char *render_with(const chat_source *cs, bool tools) {
    json_t *vars = json_pack("{s:[], s:s}", "messages", "bos_token", cs->bos_token);
    char *out = NULL;
    kv_error err;
    ck_assert(chat_template_render(chat_source_pick(cs, tools), vars, NULL, &out, NULL, &err) == 0);
    json_decref(vars);
    return out;
}

START_TEST(template_sources) {
    char dir[] = "/tmp/kvserve-chat-source-XXXXXX";
    ck_assert(mkdtemp(dir));
    chat_source cs;
    kv_error err;
    /* nothing: no template, not an error */
    ck_assert(chat_source_load(&cs, dir, NULL, &err) == 0);
    ck_assert(!cs.tmpl);
    ck_assert_str_eq(cs.bos_token, "");
    chat_source_free(&cs);
    /* chat_template.jinja */
    write_file(dir, "chat_template.jinja", "J{{ bos_token }}");
    write_file(dir, "tokenizer_config.json", "{\"bos_token\": {\"content\": \"<B>\"}}");
    ck_assert(chat_source_load(&cs, dir, NULL, &err) == 0);
    ck_assert_int_eq(cs.tool_format, TOOL_PARSER_NONE);
    char *out = render_with(&cs, false);
    ck_assert_str_eq(out, "J<B>");
    free(out);
    chat_source_free(&cs);
    /* tokenizer_config.json's string wins over the .jinja file */
    write_file(dir, "tokenizer_config.json", "{\"bos_token\": \"<s>\", \"chat_template\": \"S\"}");
    ck_assert(chat_source_load(&cs, dir, NULL, &err) == 0);
    out = render_with(&cs, true);
    ck_assert_str_eq(out, "S");
    free(out);
    chat_source_free(&cs);
    /* a named list: default, and tool_use when tools are sent */
    write_file(dir, "tokenizer_config.json",
               "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, {\"name\": "
               "\"default\", \"template\": \"D\"}]}");
    ck_assert(chat_source_load(&cs, dir, NULL, &err) == 0);
    ck_assert_int_eq(cs.tool_format, TOOL_PARSER_NONE);
    out = render_with(&cs, false);
    ck_assert_str_eq(out, "D");
    free(out);
    out = render_with(&cs, true);
    ck_assert_str_eq(out, "T");
    free(out);
    chat_source_free(&cs);
    /* the override beats everything; a missing one and a malformed one are errors */
    write_file(dir, "override.jinja", "O");
    char path[512];
    snprintf(path, sizeof path, "%s/override.jinja", dir);
    ck_assert(chat_source_load(&cs, dir, path, &err) == 0);
    out = render_with(&cs, false);
    ck_assert_str_eq(out, "O");
    free(out);
    chat_source_free(&cs);
    /* the tool-call format comes from the template text */
    write_file(dir, "override.jinja", "{{ '<tool_call>' }}");
    ck_assert(chat_source_load(&cs, dir, path, &err) == 0);
    ck_assert_int_eq(cs.tool_format, TOOL_PARSER_HERMES);
    chat_source_free(&cs);
    ck_assert(chat_source_load(&cs, dir, "/nonexistent/t.jinja", &err) != 0);
    ck_assert(strstr(err.msg, "/nonexistent/t.jinja"));
    write_file(dir, "override.jinja", "{% if %}");
    ck_assert(chat_source_load(&cs, dir, path, &err) != 0);
    const char *names[] = {"chat_template.jinja", "tokenizer_config.json", "override.jinja"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}
END_TEST

int main(void) {
    byte_tok = byte_tokenizer_new();
    kv_error err;
    chatml.tmpl = chat_template_parse(LIT(chatml_src), &err);
    if (!chatml.tmpl) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    chatml.bos_token = "<s>";
    chatml.eos_token = "</s>";
    Suite *s = suite_create("openai_chat");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, every_invalid_chat_body_names_its_parameter, 0,
                        (int)(sizeof bad_cases / sizeof bad_cases[0]));
    tcase_add_test(tc, tool_choice_unsupported_says_why);
    tcase_add_test(tc, template_variables);
    tcase_add_test(tc, rendered_prompts);
    tcase_add_test(tc, raise_exception_and_no_template);
    tcase_add_test(tc, completion_request_from_chat);
    tcase_add_test(tc, response_shapes);
    tcase_add_test(tc, tool_choice_fields);
    tcase_add_test(tc, tool_choice_named_twice_takes_the_first);
    tcase_add_test(tc, template_sources);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    chat_template_free(chatml.tmpl);
    tokenizer_free(byte_tok);
    return failed ? 1 : 0;
}
