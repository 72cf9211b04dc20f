/* Unit tests for server/generation_defaults: the sampling fields of generation_config.json become
 * defaults ("auto"/NULL: the model folder; "vllm": none; else a folder), a missing file is OpenAI's
 * defaults, and a bad field is an error naming the file and the field. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/generation_defaults.h"

static char dir[] = "/tmp/kvserve-gen-XXXXXX";

static void write_config(const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(fields_become_defaults) {
    write_config("{\"bos_token_id\": 1, \"do_sample\": true, \"temperature\": 0.6, \"top_p\": 0.9, "
                 "\"top_k\": 20, \"min_p\": null, \"repetition_penalty\": 1.05}");
    sampler_params p;
    char taken[256];
    kv_error err;
    ck_assert_msg(generation_defaults_load(NULL, dir, &p, taken, sizeof taken, &err) == 0, "%s",
                  err.msg);
    ck_assert_float_eq_tol(p.temperature, 0.6f, 1e-6f);
    ck_assert_float_eq_tol(p.top_p, 0.9f, 1e-6f);
    ck_assert_int_eq(p.top_k, 20);
    ck_assert_float_eq(p.min_p, 0.0f);
    ck_assert_float_eq_tol(p.repetition_penalty, 1.05f, 1e-6f);
    ck_assert_int_eq(p.max_tokens, 16); /* max_new_tokens is not taken */
    ck_assert_str_eq(taken, "temperature=0.6, top_p=0.9, top_k=20, repetition_penalty=1.05");
    sampler_params_free(&p);
    /* "auto" is the model folder; a folder given reads that one; "vllm" reads none */
    ck_assert(generation_defaults_load("auto", dir, &p, taken, sizeof taken, &err) == 0);
    ck_assert_int_eq(p.top_k, 20);
    sampler_params_free(&p);
    ck_assert(generation_defaults_load(dir, "/nonexistent", &p, taken, sizeof taken, &err) == 0);
    ck_assert_int_eq(p.top_k, 20);
    sampler_params_free(&p);
    ck_assert(generation_defaults_load("vllm", dir, &p, taken, sizeof taken, &err) == 0);
    ck_assert_float_eq(p.temperature, 1.0f);
    ck_assert_str_eq(taken, "");
    sampler_params_free(&p);
}
END_TEST

START_TEST(missing_file_is_openai_defaults) {
    sampler_params p;
    char taken[64];
    kv_error err;
    ck_assert(generation_defaults_load(NULL, "/nonexistent-dir", &p, taken, sizeof taken, &err) ==
              0);
    ck_assert_float_eq(p.temperature, 1.0f);
    ck_assert_float_eq(p.top_p, 1.0f);
    ck_assert_int_eq(p.top_k, 0);
    ck_assert_str_eq(taken, "");
    sampler_params_free(&p);
}
END_TEST

START_TEST(bad_fields_are_errors) {
    static const char *const bad[][2] = {
        {"{\"temperature\": \"hot\"}", "temperature"},
        {"{\"top_k\": 2.5}", "top_k"},
        {"{\"top_p\": 0}", "top_p"},
        {"{\"temperature\": -1}", "temperature"},
        {"[1]", "object"},
        {"{", "generation_config.json"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_config(bad[i][0]);
        sampler_params p;
        char taken[64];
        kv_error err;
        ck_assert_msg(generation_defaults_load(NULL, dir, &p, taken, sizeof taken, &err) != 0, "%s",
                      bad[i][0]);
        ck_assert_msg(strstr(err.msg, "generation_config.json") && strstr(err.msg, bad[i][1]),
                      "%s: %s", bad[i][0], err.msg);
    }
}
END_TEST

int main(void) {
    if (!mkdtemp(dir)) return 1;
    Suite *s = suite_create("generation_defaults");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, fields_become_defaults);
    tcase_add_test(tc, missing_file_is_openai_defaults);
    tcase_add_test(tc, bad_fields_are_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char path[256];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    unlink(path);
    rmdir(dir);
    return failed ? 1 : 0;
}
