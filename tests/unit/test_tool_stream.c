/* tool_stream: real model outputs fed in pieces (one byte at a time, a few bytes, all at once)
 * give the same content and calls as the non-streamed parse; names come once with the id, then
 * arguments in pieces; text that merely looks like a call stays content; Mistral v11 syntax. */
#include <check.h>
#include <string.h>

#include "server/chat/tool_stream.h"

typedef struct streamed {
    char content[4096];
    json_t *calls; /* gathered: [{id, type, function: {name, arguments}}] */
    int n_arg_pieces;
    bool name_before_args; /* every call's first entry came before its argument pieces */
} streamed;

static void gather(streamed *st, json_t *entries) {
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e) {
        size_t idx = (size_t)json_integer_value(json_object_get(e, "index"));
        json_t *fn = json_object_get(e, "function");
        const char *args = json_string_value(json_object_get(fn, "arguments"));
        ck_assert_ptr_nonnull(args);
        if (idx == json_array_size(st->calls)) {
            ck_assert_ptr_nonnull(json_object_get(e, "id"));
            ck_assert_str_eq(json_string_value(json_object_get(e, "type")), "function");
            ck_assert(json_is_string(json_object_get(fn, "name")));
            json_array_append_new(st->calls, json_deep_copy(e));
            if (*args) st->n_arg_pieces++;
            continue;
        }
        ck_assert_uint_eq(idx + 1, json_array_size(st->calls)); /* calls go out in order */
        ck_assert_ptr_null(json_object_get(e, "id"));
        ck_assert_ptr_null(json_object_get(fn, "name"));
        json_t *have = json_object_get(json_array_get(st->calls, idx), "function");
        size_t n = strlen(json_string_value(json_object_get(have, "arguments"))) + strlen(args);
        char *joined = malloc(n + 1);
        snprintf(joined, n + 1, "%s%s", json_string_value(json_object_get(have, "arguments")),
                 args);
        json_object_set_new(have, "arguments", json_string(joined));
        free(joined);
        st->n_arg_pieces++;
    }
}

/* Feeds text in pieces of `step` bytes (0: all at once). */
static void run(tool_parser_kind kind, const char *text, size_t step, streamed *st) {
    memset(st, 0, sizeof *st);
    st->calls = json_array();
    tool_stream s;
    tool_stream_init(&s, kind, "chatcmpl-test");
    size_t n = strlen(text), pos = 0;
    do {
        size_t k = step && n - pos > step ? step : n - pos;
        tool_stream_out o;
        tool_stream_feed(&s, text + pos, k, pos + k == n, &o);
        pos += k;
        if (o.content)
            strncat(st->content, o.content, sizeof st->content - strlen(st->content) - 1);
        if (o.calls) gather(st, o.calls);
        tool_stream_out_free(&o);
    } while (pos < n);
    ck_assert_int_eq(tool_stream_called(&s), json_array_size(st->calls) > 0);
    tool_stream_free(&s);
}

/* Streamed in every chunking, text gives content and calls (names, arguments as JSON) equal to
 * the non-streamed parse's; returns the number of calls. */
static int check_same_pieces(tool_parser_kind kind, const char *text, const char *want_content,
                             bool pieces) {
    tool_parse_result r;
    int n = tool_parser_parse(kind, text, strlen(text), "chatcmpl-test", &r);
    const size_t steps[] = {1, 3, 7, 0};
    for (int s = 0; s < 4; s++) {
        streamed st;
        run(kind, text, steps[s], &st);
        ck_assert_msg(!strcmp(st.content, want_content), "step %zu: content [%s], want [%s]",
                      steps[s], st.content, want_content);
        ck_assert_int_eq((int)json_array_size(st.calls), n);
        for (int i = 0; i < n; i++) {
            json_t *a = json_object_get(json_array_get(st.calls, (size_t)i), "function");
            json_t *b = json_object_get(json_array_get(r.calls, (size_t)i), "function");
            ck_assert_str_eq(json_string_value(json_object_get(a, "name")),
                             json_string_value(json_object_get(b, "name")));
            const char *sa = json_string_value(json_object_get(a, "arguments"));
            json_t *ja = json_loads(sa, JSON_DECODE_ANY, NULL);
            json_t *jb =
                json_loads(json_string_value(json_object_get(b, "arguments")), JSON_DECODE_ANY, 0);
            ck_assert_msg(ja && json_equal(ja, jb), "step %zu call %d: arguments [%s]", steps[s], i,
                          sa);
            json_decref(ja);
            json_decref(jb);
        }
        /* byte by byte, arguments of an object arrive in several pieces */
        if (steps[s] == 1 && n > 0 && pieces) ck_assert_int_gt(st.n_arg_pieces, n);
        json_decref(st.calls);
    }
    if (n) tool_parse_result_free(&r);
    return n;
}

static int check_same(tool_parser_kind kind, const char *text, const char *want_content) {
    return check_same_pieces(kind, text, want_content, true);
}

START_TEST(hermes_streams_like_the_parse) {
    ck_assert_int_eq(check_same(TOOL_PARSER_HERMES,
                                "<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": "
                                "{\"city\": \"Dallas\", \"state\": \"TX\", \"unit\": "
                                "\"fahrenheit\"}}\n</tool_call>",
                                ""),
                     1);
    ck_assert_int_eq(
        check_same(TOOL_PARSER_HERMES,
                   "Let me check both.\n<tool_call>\n{\"name\": \"a\", \"arguments\": "
                   "{\"q\": \"é \\\"x\\\" {}\"}}\n</tool_call>\n<tool_call>\n{\"name\": "
                   "\"b\", \"arguments\": {\"n\": [1, 2, {\"k\": null}]}}\n"
                   "</tool_call>",
                   "Let me check both.\n"),
        2);
    /* the last close tag cut by a stop string */
    ck_assert_int_eq(check_same(TOOL_PARSER_HERMES,
                                "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}", ""),
                     1);
    /* arguments before the name: they go out with it, whole */
    ck_assert_int_eq(
        check_same_pieces(TOOL_PARSER_HERMES,
                          "<tool_call>{\"arguments\": {\"x\": 1}, \"name\": \"f\"}</tool_call>", "",
                          false),
        1);
}
END_TEST

START_TEST(hermes_lookalikes_stay_content) {
    const char *texts[] = {
        "The tag <tool_call> starts a call.",      "<tool_call>not json</tool_call>",
        "<tool_call>{\"nom\": \"f\"}</tool_call>", "<tool_c",
        "a <tool_call>{\"name\": 3}</tool_call>",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        for (size_t step = 0; step < 4; step++) {
            streamed st;
            run(TOOL_PARSER_HERMES, texts[i], step, &st);
            ck_assert_msg(!strcmp(st.content, texts[i]), "[%s] step %zu: content [%s]", texts[i],
                          step, st.content);
            ck_assert_int_eq((int)json_array_size(st.calls), 0);
            json_decref(st.calls);
        }
}
END_TEST

START_TEST(cut_off_call) {
    /* a call cut by max_tokens after its name went out stays a call (as vLLM streams it), its
     * arguments as far as they came; the non-streamed parse makes it content */
    const char *texts[] = {"<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1",
                           "[TOOL_CALLS]f[ARGS]{\"x\": 1"};
    tool_parser_kind kinds[] = {TOOL_PARSER_HERMES, TOOL_PARSER_MISTRAL};
    for (int i = 0; i < 2; i++) {
        streamed st;
        run(kinds[i], texts[i], 1, &st);
        ck_assert_str_eq(st.content, "");
        ck_assert_int_eq((int)json_array_size(st.calls), 1);
        json_t *fn = json_object_get(json_array_get(st.calls, 0), "function");
        ck_assert_str_eq(json_string_value(json_object_get(fn, "arguments")), "{\"x\": 1");
        json_decref(st.calls);
        tool_parse_result r;
        ck_assert_int_eq(tool_parser_parse(kinds[i], texts[i], strlen(texts[i]), "x", &r), 0);
    }
}
END_TEST

START_TEST(hermes_broken_after_a_call) {
    /* a good call, then a second that does not parse: the first stands, the rest is content */
    const char *text = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>\n"
                       "<tool_call>oops";
    for (size_t step = 0; step < 3; step++) {
        streamed st;
        run(TOOL_PARSER_HERMES, text, step, &st);
        ck_assert_int_eq((int)json_array_size(st.calls), 1);
        ck_assert_str_eq(st.content, "<tool_call>oops");
        json_t *fn = json_object_get(json_array_get(st.calls, 0), "function");
        ck_assert_str_eq(json_string_value(json_object_get(fn, "arguments")), "{}");
        json_decref(st.calls);
    }
}
END_TEST

START_TEST(llama3_streams_like_the_parse) {
    ck_assert_int_eq(check_same(TOOL_PARSER_LLAMA3_JSON,
                                "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", "
                                "\"days\": 1200.0}}",
                                ""),
                     1);
    ck_assert_int_eq(check_same(TOOL_PARSER_LLAMA3_JSON,
                                "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; "
                                "{\"name\": \"b\", \"arguments\": {\"y\": \"z\"}}",
                                ""),
                     2);
    /* text first: no call (a Llama 3.x call is the whole output) */
    streamed st;
    const char *text = "Sure: {\"name\": \"a\", \"parameters\": {}}";
    run(TOOL_PARSER_LLAMA3_JSON, text, 1, &st);
    ck_assert_str_eq(st.content, text);
    ck_assert_int_eq((int)json_array_size(st.calls), 0);
    json_decref(st.calls);
    run(TOOL_PARSER_LLAMA3_JSON, "{not a call}", 2, &st);
    ck_assert_str_eq(st.content, "{not a call}");
    json_decref(st.calls);
}
END_TEST

START_TEST(mistral_both_syntaxes) {
    /* the JSON list of v3 tokenizers */
    ck_assert_int_eq(
        check_same(TOOL_PARSER_MISTRAL,
                   "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                   "\"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {}}]",
                   ""),
        2);
    /* v11 tokenizers (Mistral Small 3.2, Devstral, Magistral): [TOOL_CALLS]name[ARGS]{...} */
    ck_assert_int_eq(check_same(TOOL_PARSER_MISTRAL,
                                "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\", \"days\": 2}",
                                ""),
                     1);
    ck_assert_int_eq(check_same(TOOL_PARSER_MISTRAL,
                                "Checking.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}"
                                "[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{\"tz\": \"CET\"}",
                                "Checking."),
                     2);
    tool_parse_result r;
    const char *v11 = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}";
    ck_assert_int_eq(tool_parser_parse(TOOL_PARSER_MISTRAL, v11, strlen(v11), "x", &r), 1);
    json_t *fn = json_object_get(json_array_get(r.calls, 0), "function");
    ck_assert_str_eq(json_string_value(json_object_get(fn, "name")), "get_weather");
    ck_assert_str_eq(json_string_value(json_object_get(fn, "arguments")), "{\"city\": \"Paris\"}");
    tool_parse_result_free(&r);
    /* lookalikes */
    const char *bad[] = {"[TOOL_CALLS] is the marker", "[TOOL_CALLS]f[ARGS]not json",
                         "[TOOL_CALLS]f[ARGS]{\"x\": 1} trailing", "[TOOL_CALLS]f(x)"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_int_eq(tool_parser_parse(TOOL_PARSER_MISTRAL, bad[i], strlen(bad[i]), "x", &r),
                         0);
        streamed st;
        run(TOOL_PARSER_MISTRAL, bad[i], 0, &st);
        if (i == 2) { /* the call went out before the trailing text showed */
            ck_assert_int_eq((int)json_array_size(st.calls), 1);
            ck_assert_str_eq(st.content, " trailing");
        } else {
            ck_assert_str_eq(st.content, bad[i]);
            ck_assert_int_eq((int)json_array_size(st.calls), 0);
        }
        json_decref(st.calls);
    }
}
END_TEST

START_TEST(none_streams_everything) {
    streamed st;
    run(TOOL_PARSER_NONE, "<tool_call>{\"name\": \"f\"}</tool_call>", 2, &st);
    ck_assert_str_eq(st.content, "<tool_call>{\"name\": \"f\"}</tool_call>");
    ck_assert_int_eq((int)json_array_size(st.calls), 0);
    json_decref(st.calls);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tool_stream");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, hermes_streams_like_the_parse);
    tcase_add_test(tc, hermes_lookalikes_stay_content);
    tcase_add_test(tc, hermes_broken_after_a_call);
    tcase_add_test(tc, cut_off_call);
    tcase_add_test(tc, llama3_streams_like_the_parse);
    tcase_add_test(tc, mistral_both_syntaxes);
    tcase_add_test(tc, none_streams_everything);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
