/* tool_parser: real outputs of Hermes/Qwen, Llama 3.x and Mistral models (the shapes of vLLM's
 * tool parser tests), calls that do not parse staying content, and format detection. */
#include <check.h>
#include <string.h>

#include "server/chat/tool_parser.h"

static int parse(tool_parser_kind k, const char *text, tool_parse_result *r) {
    return tool_parser_parse(k, text, strlen(text), "chatcmpl-test", r);
}

/* call i has this name and these arguments (compared as JSON). */
static void check_call(const tool_parse_result *r, size_t i, const char *name, const char *args) {
    json_t *call = json_array_get(r->calls, i);
    ck_assert_ptr_nonnull(call);
    ck_assert_str_eq(json_string_value(json_object_get(call, "type")), "function");
    const char *id = json_string_value(json_object_get(call, "id"));
    ck_assert_ptr_nonnull(id);
    ck_assert_int_eq(strncmp(id, "call_", 5), 0);
    ck_assert_uint_eq(strlen(id), 29);
    json_t *fn = json_object_get(call, "function");
    ck_assert_str_eq(json_string_value(json_object_get(fn, "name")), name);
    json_t *got_args = json_object_get(fn, "arguments");
    ck_assert(json_is_string(got_args));
    json_t *got = json_loads(json_string_value(got_args), JSON_DECODE_ANY, NULL);
    json_t *want = json_loads(args, JSON_DECODE_ANY, NULL);
    ck_assert_ptr_nonnull(got);
    ck_assert_msg(json_equal(got, want), "arguments %s, want %s", json_string_value(got_args),
                  args);
    json_decref(got);
    json_decref(want);
}

START_TEST(hermes) {
    tool_parse_result r;
    /* Qwen2.5-7B-Instruct: one call, no text before */
    ck_assert_int_eq(parse(TOOL_PARSER_HERMES,
                           "<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": "
                           "{\"city\": \"Dallas\", \"state\": \"TX\", \"unit\": \"fahrenheit\"}}\n"
                           "</tool_call>",
                           &r),
                     1);
    ck_assert_ptr_null(r.content);
    check_call(&r, 0, "get_current_weather",
               "{\"city\": \"Dallas\", \"state\": \"TX\", \"unit\": \"fahrenheit\"}");
    /* vLLM's json.dumps separators */
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_object_get(json_array_get(r.calls, 0), "function"), "arguments")),
                     "{\"city\": \"Dallas\", \"state\": \"TX\", \"unit\": \"fahrenheit\"}");
    tool_parse_result_free(&r);
    /* Qwen3: thinking text first, two calls */
    const char *two = "Let me check both cities.\n<tool_call>\n{\"name\": \"get_weather\", "
                      "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n"
                      "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Tokyo\"}}\n"
                      "</tool_call>";
    ck_assert_int_eq(parse(TOOL_PARSER_HERMES, two, &r), 2);
    ck_assert_str_eq(r.content, "Let me check both cities.\n");
    check_call(&r, 0, "get_weather", "{\"city\": \"Paris\"}");
    check_call(&r, 1, "get_weather", "{\"city\": \"Tokyo\"}");
    const char *id0 = json_string_value(json_object_get(json_array_get(r.calls, 0), "id"));
    const char *id1 = json_string_value(json_object_get(json_array_get(r.calls, 1), "id"));
    ck_assert_str_ne(id0, id1);
    tool_parse_result_free(&r);
    /* cut before the close tag (a stop string): still a call */
    ck_assert_int_eq(
        parse(TOOL_PARSER_HERMES, "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n", &r), 1);
    check_call(&r, 0, "f", "{}");
    tool_parse_result_free(&r);
}
END_TEST

START_TEST(hermes_malformed) {
    tool_parse_result r;
    const char *bad[] = {
        "I would use <tool_call> here, but no.",
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}\n</tool_call>", /* brace short */
        "<tool_call>\n{\"arguments\": {}}\n</tool_call>",                         /* no name */
        "<tool_call>\n{\"name\": 3}\n</tool_call>",
        "<tool_call>\n{\"name\": \"f\"} trailing\n</tool_call>",
        /* one good call and one bad: all content, as vLLM */
        "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call><tool_call>{oops</tool_call>",
        "<tool_call></tool_call>",
        "plain text",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(parse(TOOL_PARSER_HERMES, bad[i], &r) == 0, "%s", bad[i]);
        ck_assert_ptr_null(r.calls);
        ck_assert_ptr_null(r.content);
    }
}
END_TEST

START_TEST(llama3_json) {
    tool_parse_result r;
    /* Llama-3.1-8B-Instruct with the JSON tool template */
    ck_assert_int_eq(parse(TOOL_PARSER_LLAMA3_JSON,
                           "{\"name\": \"get_current_weather\", \"parameters\": {\"city\": "
                           "\"San Francisco\", \"unit\": \"celsius\"}}",
                           &r),
                     1);
    ck_assert_ptr_null(r.content);
    check_call(&r, 0, "get_current_weather",
               "{\"city\": \"San Francisco\", \"unit\": \"celsius\"}");
    tool_parse_result_free(&r);
    /* after <|python_tag|>, two calls separated by ';', "arguments" spelling */
    ck_assert_int_eq(parse(TOOL_PARSER_LLAMA3_JSON,
                           "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; "
                           "{\"name\": \"b\", \"arguments\": {\"y\": [1, 2]}}",
                           &r),
                     2);
    check_call(&r, 0, "a", "{\"x\": 1}");
    check_call(&r, 1, "b", "{\"y\": [1, 2]}");
    tool_parse_result_free(&r);
    const char *bad[] = {
        "The answer is {\"name\": \"a\", \"parameters\": {}}", /* not the whole output */
        "{\"name\": \"a\", \"parameters\": {}} and more",
        "{\"name\": \"a\", \"parameters\": {}",
        "{\"title\": \"a\"}",
        "<|python_tag|>print(1)",
        "{}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(parse(TOOL_PARSER_LLAMA3_JSON, bad[i], &r) == 0, "%s", bad[i]);
        ck_assert_ptr_null(r.calls);
    }
}
END_TEST

START_TEST(mistral) {
    tool_parse_result r;
    /* Mistral-7B-Instruct-v0.3 */
    ck_assert_int_eq(parse(TOOL_PARSER_MISTRAL,
                           "[TOOL_CALLS] [{\"name\": \"get_current_weather\", \"arguments\": "
                           "{\"location\": \"Paris, France\", \"format\": \"celsius\"}}, "
                           "{\"name\": \"get_time\", \"arguments\": {}}]",
                           &r),
                     2);
    ck_assert_ptr_null(r.content);
    check_call(&r, 0, "get_current_weather",
               "{\"location\": \"Paris, France\", \"format\": \"celsius\"}");
    check_call(&r, 1, "get_time", "{}");
    tool_parse_result_free(&r);
    ck_assert_int_eq(
        parse(TOOL_PARSER_MISTRAL,
              "Sure.[TOOL_CALLS][{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}]", &r),
        1);
    ck_assert_str_eq(r.content, "Sure.");
    check_call(&r, 0, "f", "{\"a\": 1}"); /* a string argument is kept as it is */
    tool_parse_result_free(&r);
    const char *bad[] = {
        "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}",
        "[TOOL_CALLS][]",
        "[TOOL_CALLS][{\"arguments\": {}}]",
        "[TOOL_CALLS] not json",
        "[{\"name\": \"f\", \"arguments\": {}}]", /* no marker */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(parse(TOOL_PARSER_MISTRAL, bad[i], &r) == 0, "%s", bad[i]);
        ck_assert_ptr_null(r.calls);
    }
}
END_TEST

START_TEST(other_kinds_and_detect) {
    tool_parse_result r;
    const char *h = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
    ck_assert_int_eq(parse(TOOL_PARSER_NONE, h, &r), 0);
    ck_assert_int_eq(parse(TOOL_PARSER_AUTO, h, &r), 0);
    ck_assert_int_eq(parse(TOOL_PARSER_MISTRAL, h, &r), 0);
    ck_assert_int_eq(tool_parser_parse(TOOL_PARSER_HERMES, NULL, 0, NULL, &r), 0);
    /* ids differ between requests (salt) for the same text */
    tool_parse_result a, b;
    ck_assert_int_eq(tool_parser_parse(TOOL_PARSER_HERMES, h, strlen(h), "chatcmpl-1", &a), 1);
    ck_assert_int_eq(tool_parser_parse(TOOL_PARSER_HERMES, h, strlen(h), "chatcmpl-2", &b), 1);
    ck_assert_str_ne(json_string_value(json_object_get(json_array_get(a.calls, 0), "id")),
                     json_string_value(json_object_get(json_array_get(b.calls, 0), "id")));
    tool_parse_result_free(&a);
    tool_parse_result_free(&b);
    /* snippets of the real templates */
    const char *qwen = "{{- \"\\n</tools>\\n\\nFor each function call, return a json object "
                       "with function name and arguments within <tool_call></tool_call> XML "
                       "tags:\\n\" }}";
    const char *mis = "{%- if message.tool_calls %}{{- \"[TOOL_CALLS] [\" }}";
    const char *llama = "{{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}";
    const char *plain = "{% for m in messages %}{{ m.content }}{% endfor %}";
    ck_assert_int_eq(tool_parser_detect(qwen, strlen(qwen)), TOOL_PARSER_HERMES);
    ck_assert_int_eq(tool_parser_detect(mis, strlen(mis)), TOOL_PARSER_MISTRAL);
    ck_assert_int_eq(tool_parser_detect(llama, strlen(llama)), TOOL_PARSER_LLAMA3_JSON);
    ck_assert_int_eq(tool_parser_detect(plain, strlen(plain)), TOOL_PARSER_NONE);
    ck_assert_int_eq(tool_parser_detect(NULL, 0), TOOL_PARSER_NONE);
}
END_TEST

START_TEST(stream_safe) {
    const char *t = "Let me check.<tool_call>{\"name\"";
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_HERMES, t, strlen(t), true), 13);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_HERMES, "Hi <tool_", 9, false), 3);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_HERMES, "a < b", 5, false), 5);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_HERMES, "<", 1, true), 0);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_MISTRAL, "ok [TOOL", 8, true), 3);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_MISTRAL, "[TOOL_CALLS][", 13, true), 0);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_LLAMA3_JSON, " {\"na", 5, true), 0);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_LLAMA3_JSON, "<|pyth", 6, true), 0);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_LLAMA3_JSON, "Hello", 5, true), 5);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_LLAMA3_JSON, "{x", 2, false), 2);
    ck_assert_uint_eq(tool_parser_stream_safe(TOOL_PARSER_NONE, "<tool_call>", 11, true), 11);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tool_parser");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, hermes);
    tcase_add_test(tc, hermes_malformed);
    tcase_add_test(tc, llama3_json);
    tcase_add_test(tc, mistral);
    tcase_add_test(tc, other_kinds_and_detect);
    tcase_add_test(tc, stream_safe);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
