/* reasoning_parser: deepseek_r1 and qwen3 splitting (vLLM's reasoning parser semantics), and the
 * streamed steps fed a byte at a time giving the same reasoning and content. */
#include <check.h>
#include <string.h>

#include "server/chat/reasoning_parser.h"

/* Splits text and checks the reasoning (NULL = none) and the content. */
static void check_split(reasoning_parser_kind k, const char *text, const char *reasoning,
                        const char *content) {
    size_t r_off, r_len, c_off, n = strlen(text);
    bool has = reasoning_parser_split(k, text, n, &r_off, &r_len, &c_off);
    ck_assert_msg(has == (reasoning != NULL), "%s: has %d", text, has);
    if (reasoning) {
        ck_assert_uint_eq(r_len, strlen(reasoning));
        ck_assert_int_eq(memcmp(text + r_off, reasoning, r_len), 0);
    }
    ck_assert_uint_eq(n - c_off, strlen(content));
    ck_assert_int_eq(memcmp(text + c_off, content, n - c_off), 0);
}

START_TEST(deepseek_r1) {
    reasoning_parser_kind k = REASONING_PARSER_DEEPSEEK_R1;
    check_split(k, "<think>a plan</think>\n\nThe answer", "a plan", "\n\nThe answer");
    check_split(k, "a plan</think>The answer", "a plan", "The answer"); /* template opened it */
    check_split(k, "still thinking", "still thinking", "");             /* no end: all reasoning */
    check_split(k, "<think>cut off", "cut off", "");
    check_split(k, "<think></think>x", "", "x");
    check_split(k, "", "", "");
}
END_TEST

START_TEST(qwen3) {
    reasoning_parser_kind k = REASONING_PARSER_QWEN3;
    check_split(k, "<think>a plan</think>\n\nThe answer", "a plan", "\n\nThe answer");
    check_split(k, "a plan</think>The answer", NULL, "a plan</think>The answer");
    check_split(k, "<think>cut off", NULL, "<think>cut off"); /* no end: all content */
    check_split(k, "Hello", NULL, "Hello");
    check_split(REASONING_PARSER_NONE, "<think>a</think>b", NULL, "<think>a</think>b");
}
END_TEST

/* Streams text in pieces of step bytes; returns the reasoning and content gathered. */
static void stream(reasoning_parser_kind k, const char *text, size_t step, char *reasoning,
                   char *content) {
    reasoning_stream st = {0};
    char pending[256] = "";
    size_t n_pending = 0, n = strlen(text);
    reasoning[0] = content[0] = '\0';
    for (size_t i = 0; i <= n; i += step) {
        size_t add = i + step <= n ? step : n - i;
        memcpy(pending + n_pending, text + i, add);
        n_pending += add;
        pending[n_pending] = '\0';
        bool done = i + step > n;
        size_t r_off, r_len, used;
        if (!reasoning_stream_content(&st)) {
            reasoning_stream_step(k, &st, pending, n_pending, done, &r_off, &r_len, &used);
            strncat(reasoning, pending + r_off, r_len);
            memmove(pending, pending + used, n_pending - used + 1);
            n_pending -= used;
        }
        if (reasoning_stream_content(&st)) {
            strcat(content, pending);
            n_pending = 0;
            pending[0] = '\0';
        }
    }
}

START_TEST(streamed) {
    char r[256], c[256];
    for (size_t step = 1; step <= 9; step++) {
        stream(REASONING_PARSER_DEEPSEEK_R1, "<think>a plan</think>The answer", step, r, c);
        ck_assert_str_eq(r, "a plan");
        ck_assert_str_eq(c, "The answer");
        stream(REASONING_PARSER_DEEPSEEK_R1, "a <plan></think>x", step, r, c);
        ck_assert_str_eq(r, "a <plan>");
        ck_assert_str_eq(c, "x");
        stream(REASONING_PARSER_DEEPSEEK_R1, "no end </thin", step, r, c);
        ck_assert_str_eq(r, "no end </thin");
        ck_assert_str_eq(c, "");
        stream(REASONING_PARSER_QWEN3, "<think>a plan</think>The answer", step, r, c);
        ck_assert_str_eq(r, "a plan");
        ck_assert_str_eq(c, "The answer");
        stream(REASONING_PARSER_QWEN3, "<thinking> is a word", step, r, c);
        ck_assert_str_eq(r, "");
        ck_assert_str_eq(c, "<thinking> is a word");
        stream(REASONING_PARSER_QWEN3, "<thi", step, r, c);
        ck_assert_str_eq(r, "");
        ck_assert_str_eq(c, "<thi");
        stream(REASONING_PARSER_NONE, "<think>a</think>b", step, r, c);
        ck_assert_str_eq(c, "<think>a</think>b");
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("reasoning_parser");
    TCase *tc = tcase_create("split");
    tcase_add_test(tc, deepseek_r1);
    tcase_add_test(tc, qwen3);
    tcase_add_test(tc, streamed);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
