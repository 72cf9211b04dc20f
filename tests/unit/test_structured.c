/* Unit tests for model/structured: each regex construct against strings that must and must not
 * match, refusals with the construct named, limits; JSON Schema compilation (each keyword) checked
 * by matching hand-written JSON texts; token masks against a brute-force walk of every token. */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "model/structured/constraint_cache.h"
#include "model/structured/json_schema.h"
#include "model/structured/regex_dfa.h"
#include "model/structured/token_mask.h"

static sc_dfa *compile_ok(const char *re) {
    sc_dfa *d = NULL;
    kv_error err = {{0}};
    int rc = sc_regex_compile(re, strlen(re), NULL, &d, &err);
    ck_assert_msg(rc == 0, "regex %s: %s", re, err.msg);
    return d;
}

static void expect(const char *re, const char *const *yes, const char *const *no) {
    sc_dfa *d = compile_ok(re);
    for (int i = 0; yes[i]; i++)
        ck_assert_msg(sc_dfa_matches(d, yes[i], strlen(yes[i])), "%s should match \"%s\"", re,
                      yes[i]);
    for (int i = 0; no[i]; i++)
        ck_assert_msg(!sc_dfa_matches(d, no[i], strlen(no[i])), "%s should not match \"%s\"", re,
                      no[i]);
    sc_dfa_free(d);
}

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

START_TEST(regex_constructs) {
    expect("abc", L("abc"), L("ab", "abcd", "", "abd"));
    expect("a|bc|", L("a", "bc", ""), L("b", "abc"));
    expect("a*b+c?", L("b", "aab", "abbbc", "bc"), L("", "a", "acc", "ba"));
    expect("(ab){2,3}", L("abab", "ababab"), L("ab", "abababab", ""));
    expect("x{3}", L("xxx"), L("xx", "xxxx"));
    expect("x{2,}", L("xx", "xxxxxx"), L("x", ""));
    expect("[a-c0-2_]+", L("a", "c2_", "b0"), L("d", "3", ""));
    expect("[^a-c]", L("d", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"), L("a", "", "dd"));
    expect("\\d\\w\\s", L("1a ", "9_\t"), L("a1 ", "11x"));
    expect("\\D\\W\\S", L("a!b", "\xc3\xa9.\xc3\xa9"), L("1!b", "aab", "a! "));
    expect(
        ".", L("a", "\xc3\xa9", "\xe4\xb8\xad", "\xf4\x8f\xbf\xbf"),
        L("\n", "ab", "", "\xc3", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe0\x80\x80"));
    expect("^(?:a|b)(?P<n>c)$", L("ac", "bc"), L("c", "abc"));
    expect("\\.\\*\\\\\\x41\\u00e9", L(".*\\A\xc3\xa9"), L("x*\\A\xc3\xa9"));
    expect("[\xc3\xa9\xc3\xa8]x", L("\xc3\xa9x", "\xc3\xa8x"), L("ex", "\xc3\xa0x"));
    expect("a+?b*?", L("a", "aab"), L("b"));
    expect("(a|ab)(c|bcd)(d*)", L("abcd", "acd", "abbcdd"), L("ab", "abd"));
}
END_TEST

/* Equivalent states are merged: the minimal DFA of these languages has exactly this many states. */
START_TEST(regex_dfa_is_minimal) {
    const char *re[] = {"(a|a)(a|a)", "(ab){2,3}", "x*|x+", "[ab]*a[ab]{3}"};
    const int want[] = {3, 7, 1, 16};
    for (int i = 0; i < 4; i++) {
        sc_dfa *d = compile_ok(re[i]);
        ck_assert_msg(d->n_states == want[i], "%s: %d states, want %d", re[i], d->n_states,
                      want[i]);
        sc_dfa_free(d);
    }
}
END_TEST

START_TEST(regex_refusals_name_the_construct) {
    const char *bad[][2] = {{"(a", "missing )"},
                            {"a)", "unbalanced"},
                            {"[a-", "unterminated"},
                            {"*a", "quantifier without"},
                            {"(?=a)", "lookaround"},
                            {"\\1", "backreference"},
                            {"\\bword", "unsupported escape"},
                            {"a{3,2}", "n < m"},
                            {"[z-a]", "out of order"},
                            {"[^\xc3\xa9]", "non-ASCII"},
                            {"(?!)", "no output"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sc_dfa *d = NULL;
        kv_error err = {{0}};
        ck_assert_msg(sc_regex_compile(bad[i][0], strlen(bad[i][0]), NULL, &d, &err) == -1,
                      "%s compiled", bad[i][0]);
        ck_assert_ptr_null(d);
        ck_assert_msg(strstr(err.msg, bad[i][1]), "%s: message \"%s\" lacks \"%s\"", bad[i][0],
                      err.msg, bad[i][1]);
    }
}
END_TEST

START_TEST(regex_limits_are_errors) {
    sc_limits lim;
    sc_limits_default(&lim);
    lim.max_dfa_states = 50;
    sc_dfa *d = NULL;
    kv_error err = {{0}};
    const char *re = "[ab]*a[ab]{8}"; /* needs 2^9 DFA states */
    ck_assert_int_eq(sc_regex_compile(re, strlen(re), &lim, &d, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "max_dfa_states"));
    lim.max_dfa_states = 20000;
    lim.max_nfa_nodes = 1000;
    re = "(abc){500}";
    ck_assert_int_eq(sc_regex_compile(re, strlen(re), &lim, &d, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "max_nfa_nodes"));
    lim.max_regex_bytes = 4;
    ck_assert_int_eq(sc_regex_compile(re, strlen(re), &lim, &d, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "max_regex_bytes"));
}
END_TEST

static sc_dfa *schema_dfa(const char *schema_text, kv_error *err) {
    json_error_t je;
    json_t *s = json_loads(schema_text, 0, &je);
    ck_assert_msg(s != NULL, "bad test schema %s", schema_text);
    char *re = NULL;
    sc_dfa *d = NULL;
    if (sc_schema_regex(s, NULL, &re, err) == 0) {
        sc_regex_compile(re, strlen(re), NULL, &d, err);
        free(re);
    }
    json_decref(s);
    return d;
}

static void expect_schema(const char *schema, const char *const *yes, const char *const *no) {
    kv_error err = {{0}};
    sc_dfa *d = schema_dfa(schema, &err);
    ck_assert_msg(d != NULL, "schema %s: %s", schema, err.msg);
    for (int i = 0; yes[i]; i++)
        ck_assert_msg(sc_dfa_matches(d, yes[i], strlen(yes[i])), "%s should accept %s", schema,
                      yes[i]);
    for (int i = 0; no[i]; i++)
        ck_assert_msg(!sc_dfa_matches(d, no[i], strlen(no[i])), "%s should refuse %s", schema,
                      no[i]);
    sc_dfa_free(d);
}

START_TEST(schema_keywords) {
    expect_schema("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{"
                  "\"type\":\"string\"}},\"required\":[\"b\"]}",
                  L("{\"b\":\"x\"}", "{\"a\":1,\"b\":\"\"}", "{ \"a\": -12, \"b\": \"q\\\"\" }"),
                  L("{}", "{\"a\":1}", "{\"b\":\"x\",\"a\":1}", "{\"b\":\"x\",\"c\":1}",
                    "{\"a\":1.5,\"b\":\"x\"}", "{\"b\":\"x\"}   "));
    expect_schema("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"boolean\"},\"b\":{"
                  "\"type\":\"null\"}}}",
                  L("{}", "{\"a\":true}", "{\"b\":null}", "{\"a\":false,\"b\":null}"),
                  L("{\"a\":1}", "{,\"b\":null}", "{\"b\":null,}"));
    expect_schema("{\"type\":\"array\",\"items\":{\"enum\":[\"x\",1,null]},\"minItems\":1,"
                  "\"maxItems\":3}",
                  L("[\"x\"]", "[1,null,\"x\"]", "[ 1 , 1 ]"),
                  L("[]", "[1,1,1,1]", "[2]", "[\"y\"]"));
    expect_schema("{\"type\":\"array\",\"maxItems\":0}", L("[]"), L("[1]"));
    expect_schema("{\"const\":{\"k\":[1,2]}}", L("{\"k\":[1,2]}"), L("{\"k\":[1]}"));
    expect_schema("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
                  L("\"ab\"", "\"abc\"", "\"\\n\\u00e9\"", "\"\xc3\xa9\xc3\xa9\""),
                  L("\"a\"", "\"abcd\"", "ab", "\"a\nb\""));
    expect_schema("{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-\\\\d+$\"}", L("\"AB-12\""),
                  L("\"ab-12\"", "\"AB-\""));
    expect_schema("{\"type\":\"string\",\"format\":\"date\"}",
                  L("\"2024-02-28\"", "\"1999-12-31\""),
                  L("\"2024-02-30\"", "\"2024-13-01\"", "\"2024-1-01\""));
    expect_schema("{\"type\":\"string\",\"format\":\"date-time\"}",
                  L("\"2024-01-05T10:20:30Z\"", "\"2024-01-05T23:59:59.123+02:00\""),
                  L("\"2024-01-05 10:20:30Z\"", "\"2024-01-05T24:00:00Z\""));
    expect_schema("{\"type\":\"string\",\"format\":\"uuid\"}",
                  L("\"123e4567-e89b-12d3-a456-426614174000\""), L("\"123e4567\""));
    expect_schema("{\"type\":\"integer\",\"minimum\":-15,\"maximum\":205}",
                  L("-15", "-9", "0", "7", "99", "100", "199", "205"),
                  L("-16", "-0", "206", "300", "1000", "007", "1.0"));
    expect_schema("{\"type\":\"integer\",\"exclusiveMinimum\":10}", L("11", "99999"),
                  L("10", "9", "-1"));
    expect_schema("{\"type\":\"number\",\"minimum\":0,\"maximum\":10}",
                  L("0", "3.25", "10", "10.00", "9.999"), L("-1", "10.5", "11", "1e3"));
    expect_schema("{\"type\":\"number\"}", L("-0.5", "3", "1e10", "2.5E-3"),
                  L("01", ".5", "1.", "+1"));
    expect_schema("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":1}]}",
                  L("5", "\"a\""), L("\"ab\"", "true"));
    expect_schema("{\"type\":[\"boolean\",\"null\"]}", L("true", "null"), L("0"));
    expect_schema("{\"$defs\":{\"p\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":"
                  "\"integer\"}},\"required\":[\"x\"]}},\"type\":\"array\",\"items\":{\"$ref\":"
                  "\"#/$defs/p\"}}",
                  L("[{\"x\":1},{\"x\":2}]", "[]"), L("[{\"y\":1}]"));
    /* recursion: a tree whose children stop at the depth limit */
    expect_schema("{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},\"kids\":{"
                  "\"type\":\"array\",\"items\":{\"$ref\":\"#\"}}},\"required\":[\"v\"]}",
                  L("{\"v\":1}", "{\"v\":1,\"kids\":[{\"v\":2},{\"v\":3,\"kids\":[]}]}"),
                  L("{\"kids\":[]}"));
    expect_schema("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}",
                  L("{}", "{\"a\":1,\"b\":2}"), L("{\"a\":\"x\"}"));
    expect_schema("{}", L("1", "\"s\"", "{\"a\":[1,{\"b\":null}]}"), L("{a:1}", "[1,]"));
}
END_TEST

START_TEST(schema_refusals_name_the_keyword) {
    const char *bad[][2] = {
        {"{\"type\":\"object\",\"patternProperties\":{}}", "patternProperties"},
        {"{\"type\":\"string\",\"format\":\"email\"}", "email"},
        {"{\"type\":\"frob\"}", "frob"},
        {"{\"$ref\":\"#/$defs/missing\"}", "#/$defs/missing"},
        {"{\"type\":\"array\",\"items\":[{\"type\":\"integer\"}]}", "items"},
        {"{\"not\":{}}", "not"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\",\"minimum\":0.5}}}",
         "minimum"},
        {"{\"allOf\":[{},{}]}", "allOf"},
        {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":2}", "empty range"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kv_error err = {{0}};
        sc_dfa *d = schema_dfa(bad[i][0], &err);
        ck_assert_msg(d == NULL, "%s compiled", bad[i][0]);
        ck_assert_msg(strstr(err.msg, bad[i][1]), "%s: message \"%s\" lacks \"%s\"", bad[i][0],
                      err.msg, bad[i][1]);
    }
    /* the path of the offending keyword is in the message */
    kv_error err = {{0}};
    schema_dfa("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"format\":"
               "\"hostname\"}}}",
               &err);
    ck_assert_ptr_nonnull(strstr(err.msg, "#/properties/a"));
}
END_TEST

START_TEST(json_object_and_choice) {
    sc_limits lim;
    sc_limits_default(&lim);
    char *re = sc_json_object_regex(&lim);
    sc_dfa *d = compile_ok(re);
    free(re);
    const char *yes[] = {"{}", "{\"a\":1}", "{\"a\": [1, 2.5, {\"b\": \"c\"}], \"d\": null}",
                         "{\n\"x\":true\n}"};
    const char *no[] = {"[]", "1", "{\"a\":}", "{\"a\":1,}", "{     }", "{\"a\":01}"};
    for (size_t i = 0; i < 4; i++)
        ck_assert_msg(sc_dfa_matches(d, yes[i], strlen(yes[i])), "%s", yes[i]);
    for (size_t i = 0; i < 6; i++)
        ck_assert_msg(!sc_dfa_matches(d, no[i], strlen(no[i])), "%s", no[i]);
    sc_dfa_free(d);
    const char *choices[] = {"yes", "no", "a.b*"};
    re = sc_choice_regex(choices, 3);
    expect(re, L("yes", "no", "a.b*"), L("ye", "a.bb", "yesno"));
    free(re);
}
END_TEST

/* A small vocabulary of byte strings: a mask must equal the brute-force answer "the token's bytes
 * lead to a live state" for every token, in every state reached. */
START_TEST(token_mask_matches_brute_force) {
    const char *toks[] = {"{",  "}",    "\"",   "\"a",  "a",        "ab",   "abc", "1",
                          "12", ":",    ",",    " ",    "\":",      "null", "nu",  "ll",
                          "",   "true", "\xc3", "\xa9", "\xc3\xa9", "b"};
    int n = (int)(sizeof toks / sizeof toks[0]);
    size_t lens[64];
    for (int i = 0; i < n; i++) lens[i] = strlen(toks[i]);
    sc_vocab *v = sc_vocab_new(n, toks, lens);
    kv_error err = {{0}};
    sc_dfa *d = schema_dfa("{\"type\":\"object\",\"properties\":{\"ab\":{\"type\":[\"integer\","
                           "\"null\"]},\"c\":{\"type\":\"string\"}},\"required\":[\"ab\"]}",
                           &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    sc_constraint *c = sc_constraint_new(d, v);
    int32_t eos[1] = {16}; /* the empty token stands in for EOS */
    int checked = 0;
    for (int32_t s = 0; s < d->n_states; s++) {
        bool live = false;
        for (int cl = 0; cl < d->n_classes; cl++)
            live |= d->delta[(size_t)s * d->n_classes + cl] >= 0;
        if (!live && !d->accept[s]) continue;
        float logits[64];
        for (int i = 0; i < n; i++) logits[i] = 1.0f;
        int n_ok = sc_constraint_apply(c, s, logits, n, eos, 1);
        int count = 0;
        for (int t = 0; t < n; t++) {
            bool want =
                t == 16 ? d->accept[s]
                        : lens[t] > 0 && sc_dfa_walk(d, s, (const uint8_t *)toks[t], lens[t]) >= 0;
            ck_assert_msg((logits[t] == 1.0f) == want, "state %d token %d", s, t);
            count += want;
            if (t != 16 && want)
                ck_assert_int_eq(sc_constraint_advance(c, s, t, eos, 1),
                                 sc_dfa_walk(d, s, (const uint8_t *)toks[t], lens[t]));
        }
        ck_assert_int_eq(n_ok, count);
        checked++;
    }
    ck_assert_int_gt(checked, 10);
    /* a walk: {"ab":12} token by token, EOS only at the end */
    int32_t s = d->start;
    const int seq[] = {0, 2, 5, 12, 7, 1}; /* { " ab ": 1 } */
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        s = sc_constraint_advance(c, s, seq[i], eos, 1);
        ck_assert_int_ge(s, 0);
    }
    ck_assert(d->accept[s]);
    ck_assert_int_eq(sc_constraint_advance(c, s, 16, eos, 1), s);
    ck_assert_int_eq(sc_constraint_advance(c, s, 1, eos, 1), -1);
    sc_constraint_unref(c);
    sc_vocab_free(v);
}
END_TEST

START_TEST(constraint_cache_shares_and_evicts) {
    const char *toks[] = {"a", "b"};
    size_t lens[] = {1, 1};
    sc_vocab *v = sc_vocab_new(2, toks, lens);
    sc_cache *c = sc_cache_new(2, v);
    kv_error err = {{0}};
    sc_constraint *x = sc_cache_get(c, "a+", 2, NULL, &err);
    sc_constraint *y = sc_cache_get(c, "a+", 2, NULL, &err);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_eq(x, y); /* one DFA, one mask cache */
    ck_assert_ptr_null(sc_cache_get(c, "(a", 2, NULL, &err));
    ck_assert_ptr_nonnull(strstr(err.msg, "missing )"));
    sc_constraint *z = sc_cache_get(c, "b", 1, NULL, &err);
    sc_constraint *w = sc_cache_get(c, "ab", 2, NULL, &err); /* evicts a+ (least recent) */
    sc_constraint *x2 = sc_cache_get(c, "a+", 2, NULL, &err);
    ck_assert_ptr_ne(x2, x); /* recompiled; x stays valid for its holders */
    ck_assert(sc_dfa_matches(x->dfa, "aaa", 3));
    long long hits, misses;
    sc_cache_stats(c, &hits, &misses);
    ck_assert_int_eq(hits, 1);
    ck_assert_int_eq(misses, 4);
    sc_constraint_unref(x), sc_constraint_unref(y), sc_constraint_unref(z);
    sc_constraint_unref(w), sc_constraint_unref(x2);
    sc_cache_free(c);
    sc_vocab_free(v);
}
END_TEST

int main(void) {
    Suite *s = suite_create("structured");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, regex_constructs);
    tcase_add_test(tc, regex_dfa_is_minimal);
    tcase_add_test(tc, regex_refusals_name_the_construct);
    tcase_add_test(tc, regex_limits_are_errors);
    tcase_add_test(tc, schema_keywords);
    tcase_add_test(tc, schema_refusals_name_the_keyword);
    tcase_add_test(tc, json_object_and_choice);
    tcase_add_test(tc, token_mask_matches_brute_force);
    tcase_add_test(tc, constraint_cache_shares_and_evicts);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
