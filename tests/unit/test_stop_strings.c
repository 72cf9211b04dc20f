/* Unit tests for server/stop_strings: matches across pushes, hold-back of possible starts, the
 * earliest match winning, include_stop, the min_tokens gate, and UTF-8 never being cut. */
#include <check.h>
#include <stdlib.h>

#include "server/stop_strings.h"

/* Pushes each piece; returns everything released (malloc'd) and sets *hit / *released_before_hit.
 */
static char *run(stop_matcher *m, const char *const *pieces, int n, bool *hit) {
    size_t cap = 256, len = 0;
    char *all = calloc(1, cap);
    *hit = false;
    for (int i = 0; i < n && !*hit; i++) {
        char *out;
        size_t out_len;
        *hit = stop_matcher_push(m, pieces[i], strlen(pieces[i]), true, &out, &out_len);
        ck_assert_uint_eq(strlen(out), out_len);
        ck_assert_uint_lt(len + out_len, cap);
        memcpy(all + len, out, out_len + 1);
        len += out_len;
        free(out);
    }
    if (!*hit) {
        char *out;
        size_t out_len;
        stop_matcher_flush(m, &out, &out_len);
        memcpy(all + len, out, out_len + 1);
        free(out);
    }
    return all;
}

START_TEST(stop_split_across_tokens_is_found_and_never_shown) {
    const char *stops[] = {"END"};
    stop_matcher m;
    stop_matcher_init(&m, stops, 1, false);
    char *out;
    size_t n;
    ck_assert(!stop_matcher_push(&m, "Hello E", 7, true, &out, &n));
    ck_assert_str_eq(out, "Hello "); /* "E" may start "END": held back */
    free(out);
    ck_assert(!stop_matcher_push(&m, "N", 1, true, &out, &n));
    ck_assert_str_eq(out, "");
    free(out);
    ck_assert(stop_matcher_push(&m, "D and more", 10, true, &out, &n));
    ck_assert_str_eq(out, "");
    ck_assert_str_eq(stop_matcher_matched(&m), "END");
    free(out);
    stop_matcher_free(&m);
}
END_TEST

START_TEST(held_text_is_released_when_it_stops_being_a_start) {
    const char *stops[] = {"END"};
    stop_matcher m;
    stop_matcher_init(&m, stops, 1, false);
    const char *pieces[] = {"a E", "N", "x"};
    bool hit;
    char *all = run(&m, pieces, 3, &hit);
    ck_assert(!hit);
    ck_assert_str_eq(all, "a ENx");
    free(all);
    stop_matcher_free(&m);
}
END_TEST

START_TEST(earliest_match_wins_then_longest) {
    const char *stops[] = {"world", "lo w", "lo"};
    stop_matcher m;
    stop_matcher_init(&m, stops, 3, false);
    const char *pieces[] = {"hello world"};
    bool hit;
    char *all = run(&m, pieces, 1, &hit);
    ck_assert(hit);
    ck_assert_str_eq(all, "hel");
    ck_assert_str_eq(stop_matcher_matched(&m),
                     "lo w"); /* "lo" starts at the same byte: longer wins */
    free(all);
    stop_matcher_free(&m);
}
END_TEST

START_TEST(include_stop_keeps_the_stop_string) {
    const char *stops[] = {"\n\n"};
    stop_matcher m;
    stop_matcher_init(&m, stops, 1, true);
    const char *pieces[] = {"line one\n", "\nline two"};
    bool hit;
    char *all = run(&m, pieces, 2, &hit);
    ck_assert(hit);
    ck_assert_str_eq(all, "line one\n\n");
    free(all);
    stop_matcher_free(&m);
}
END_TEST

START_TEST(no_match_before_check_but_text_is_held) {
    const char *stops[] = {"ab"};
    stop_matcher m;
    stop_matcher_init(&m, stops, 1, false);
    char *out;
    size_t n;
    /* min_tokens not reached: a whole stop string passes */
    ck_assert(!stop_matcher_push(&m, "xab", 3, false, &out, &n));
    ck_assert_str_eq(out, "xab");
    free(out);
    /* a possible start is still held back, and matches once checking starts */
    ck_assert(!stop_matcher_push(&m, "a", 1, false, &out, &n));
    ck_assert_str_eq(out, "");
    free(out);
    ck_assert(stop_matcher_push(&m, "b!", 2, true, &out, &n));
    ck_assert_str_eq(out, "");
    free(out);
    stop_matcher_free(&m);
}
END_TEST

START_TEST(utf8_is_never_cut) {
    /* "é" is C3 A9; the stop string starts with it: the hold-back is whole characters */
    const char *stops[] = {"\xc3\xa9t\xc3\xa9"};
    stop_matcher m;
    stop_matcher_init(&m, stops, 1, false);
    char *out;
    size_t n;
    ck_assert(!stop_matcher_push(&m, "caf\xc3\xa9", 5, true, &out, &n));
    ck_assert_str_eq(out, "caf");
    free(out);
    ck_assert(!stop_matcher_push(&m, "!", 1, true, &out, &n));
    ck_assert_str_eq(out, "\xc3\xa9!");
    free(out);
    stop_matcher_free(&m);
}
END_TEST

START_TEST(no_stops_passes_everything) {
    stop_matcher m;
    stop_matcher_init(&m, NULL, 0, false);
    const char *pieces[] = {"a", "b", "c"};
    bool hit;
    char *all = run(&m, pieces, 3, &hit);
    ck_assert(!hit);
    ck_assert_str_eq(all, "abc");
    free(all);
    stop_matcher_free(&m);
}
END_TEST

START_TEST(stop_inside_held_text_and_new_text) {
    /* the held "St" plus the new "op" completes "Stop" even though neither piece holds it */
    const char *stops[] = {"Stop", "top!"};
    stop_matcher m;
    stop_matcher_init(&m, stops, 2, false);
    const char *pieces[] = {"x St", "op!"};
    bool hit;
    char *all = run(&m, pieces, 2, &hit);
    ck_assert(hit);
    ck_assert_str_eq(all, "x ");
    ck_assert_str_eq(stop_matcher_matched(&m), "Stop");
    free(all);
    stop_matcher_free(&m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("stop_strings");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, stop_split_across_tokens_is_found_and_never_shown);
    tcase_add_test(tc, held_text_is_released_when_it_stops_being_a_start);
    tcase_add_test(tc, earliest_match_wins_then_longest);
    tcase_add_test(tc, include_stop_keeps_the_stop_string);
    tcase_add_test(tc, no_match_before_check_but_text_is_held);
    tcase_add_test(tc, utf8_is_never_cut);
    tcase_add_test(tc, no_stops_passes_everything);
    tcase_add_test(tc, stop_inside_held_text_and_new_text);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
