/* Unit tests for server/config: the shipped configs/kvserve.json equals the built-in defaults, file
 * and flag precedence, and every kind of invalid input is rejected naming the key. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "server/config.h"

static char *source_path(const char *rel) {
    const char *src = getenv("KVSERVE_SOURCE");
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/%s", src ? src : ".", rel);
    return p;
}

static char *write_temp(const char *text) {
    char *path = strdup("/tmp/kvserve_test_config_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

START_TEST(shipped_file_lists_every_knob_with_its_default) {
    kv_config def, file;
    config_default(&def);
    config_default(&file);
    char *path = source_path("configs/kvserve.json");
    kv_error err;
    ck_assert_msg(config_load_file(&file, path, &err) == 0, "%s", err.msg);
    char *a = config_to_json(&def, false), *b = config_to_json(&file, false);
    ck_assert_str_eq(a, b);
    /* and the file's text is exactly the printed defaults: no knob missing from the file */
    FILE *f = fopen(path, "rb");
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    while (n > 0 && text[n - 1] == '\n') text[--n] = '\0';
    ck_assert_str_eq(text, a);
    free(a);
    free(b);
    free(path);
    config_free(&def);
    config_free(&file);
}
END_TEST

START_TEST(json_round_trip_keeps_every_value) {
    kv_config c;
    config_default(&c);
    kv_error err;
    const char *text =
        "{\"port\": 9001, \"model\": \"/m\", \"api_key\": \"k\", \"device\": \"cpu\","
        " \"block_size\": 32, \"gpu_memory_utilization\": 0.5, \"seed\": 7,"
        " \"enable_prefix_caching\": false, \"max_body_bytes\": 2048,"
        " \"offload\": {\"size_gib\": 1.5, \"store_policy\": \"reuse_gated\","
        " \"reuse_threshold\": 3}}";
    ck_assert_msg(config_apply_json(&c, text, strlen(text), "t", &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.port, 9001);
    ck_assert_str_eq(c.model, "/m");
    ck_assert_int_eq(c.device, CONFIG_DEVICE_CPU);
    ck_assert_int_eq(c.block_size, 32);
    ck_assert_double_eq(c.gpu_memory_utilization, 0.5);
    ck_assert_uint_eq(c.seed, 7);
    ck_assert(!c.enable_prefix_caching);
    ck_assert_int_eq(c.max_body_bytes, 2048);
    ck_assert_double_eq(c.offload.size_gib, 1.5);
    ck_assert_int_eq(c.offload.store_policy, OFFLOAD_POLICY_REUSE_GATED);
    ck_assert_int_eq(c.offload.reuse_threshold, 3);
    ck_assert_int_eq(c.offload.pin_chunk_mib, 256); /* absent: default kept */

    char *printed = config_to_json(&c, false);
    kv_config again;
    config_default(&again);
    ck_assert_msg(config_apply_json(&again, printed, strlen(printed), "printed", &err) == 0, "%s",
                  err.msg);
    char *printed2 = config_to_json(&again, false);
    ck_assert_str_eq(printed, printed2);
    free(printed);
    free(printed2);

    char *redacted = config_to_json(&c, true);
    ck_assert_ptr_nonnull(strstr(redacted, "\"api_key\": \"***\""));
    free(redacted);
    config_free(&c);
    config_free(&again);
}
END_TEST

static void expect_json_error(const char *text, const char *message) {
    kv_config c;
    config_default(&c);
    kv_error err = {{0}};
    ck_assert_int_eq(config_apply_json(&c, text, strlen(text), NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, message) != NULL, "for %s: got '%s', want '%s'", text, err.msg,
                  message);
    config_free(&c);
}

START_TEST(invalid_values_are_rejected_naming_the_key) {
    expect_json_error("{\"block_szie\": 16}", "config: unknown key 'block_szie'");
    expect_json_error("{\"block_size\": 7}",
                      "config: block_size must be a power of two between 1 and 256 (got 7)");
    expect_json_error("{\"block_size\": 512}", "block_size must be a power of two");
    expect_json_error("{\"block_size\": \"16\"}", "block_size must be a power of two");
    expect_json_error("{\"port\": 70000}",
                      "config: port must be an integer between 0 and 65535 (got 70000)");
    expect_json_error("{\"port\": 80.5}", "port must be an integer");
    expect_json_error("{\"gpu_memory_utilization\": 0}",
                      "gpu_memory_utilization must be a number in (0, 1]");
    expect_json_error("{\"gpu_memory_utilization\": 1.01}", "gpu_memory_utilization");
    expect_json_error("{\"device\": \"gpu\"}",
                      "config: device must be one of \"auto\", \"cuda\", \"cpu\" (got \"gpu\")");
    expect_json_error("{\"enable_prefix_caching\": 1}",
                      "enable_prefix_caching must be true or false");
    expect_json_error("{\"host\": 5}", "host must be a non-empty string");
    expect_json_error("{\"host\": null}", "host must be a non-empty string");
    expect_json_error("{\"seed\": -1}", "seed must be a non-negative integer");
    expect_json_error("{\"offload\": {\"sise_gib\": 1}}", "config: unknown key 'offload.sise_gib'");
    expect_json_error("{\"offload\": 4}", "config: offload must be an object");
    expect_json_error("{\"offload\": {\"store_policy\": \"always\"}}",
                      "offload.store_policy must be one of");
    expect_json_error("{\"offload\": {\"size_gib\": -1}}",
                      "offload.size_gib must be a number in [0,");
    expect_json_error("{\"max_num_seqs\": 0}", "max_num_seqs must be an integer between 1 and");
    expect_json_error("{\"port\": 1, \"port\": 2}", "duplicate");
    expect_json_error("[1]", "top level must be a JSON object");
    expect_json_error("{\"port\": ", "invalid JSON");
}
END_TEST

START_TEST(file_errors_name_the_file) {
    kv_config c;
    config_default(&c);
    kv_error err;
    ck_assert_int_eq(config_load_file(&c, "/nonexistent/kvserve.json", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "/nonexistent/kvserve.json"));
    char *path = write_temp("{\"block_size\": 3}");
    ck_assert_int_eq(config_load_file(&c, path, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "block_size must be a power of two"));
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    unlink(path);
    free(path);
    config_free(&c);
}
END_TEST

static int parse(kv_config *c, int argc, const char **argv, bool *help, kv_error *err) {
    config_default(c);
    return config_parse_args(c, argc, (char **)argv, help, err);
}

START_TEST(flags_override_the_file_whatever_their_order) {
    char *path = write_temp("{\"port\": 9000, \"block_size\": 32, \"offload\": {\"size_gib\": 2}}");
    const char *argv[] = {"kvserve",
                          "--port",
                          "9100",
                          "--config",
                          path,
                          "--set",
                          "offload.size_gib=8",
                          "--model=/models/x",
                          "--no-enable-prefix-caching",
                          "--max-queue",
                          "5",
                          "--offload-store-policy",
                          "on_evict",
                          "--api-key",
                          ""};
    kv_config c;
    bool help;
    kv_error err;
    ck_assert_msg(parse(&c, 15, argv, &help, &err) == 0, "%s", err.msg);
    ck_assert(!help);
    ck_assert_int_eq(c.port, 9100);     /* flag beats file, though given before --config */
    ck_assert_int_eq(c.block_size, 32); /* from the file */
    ck_assert_double_eq(c.offload.size_gib, 8);
    ck_assert_str_eq(c.model, "/models/x");
    ck_assert(!c.enable_prefix_caching);
    ck_assert_int_eq(c.max_queue, 5);
    ck_assert_int_eq(c.offload.store_policy, OFFLOAD_POLICY_ON_EVICT);
    ck_assert_ptr_null(c.api_key); /* "" = null for nullable strings */
    ck_assert_str_eq(config_served_model_name(&c), "/models/x");
    config_free(&c);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(bad_flags_are_errors) {
    kv_config c;
    bool help;
    kv_error err;
    const char *a1[] = {"kvserve", "--blok-size", "16"};
    ck_assert_int_eq(parse(&c, 3, a1, &help, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown option '--blok-size'"));
    config_free(&c);
    const char *a2[] = {"kvserve", "--port"};
    ck_assert_int_eq(parse(&c, 2, a2, &help, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "--port needs a value"));
    config_free(&c);
    const char *a3[] = {"kvserve", "--port", "80x"};
    ck_assert_int_eq(parse(&c, 3, a3, &help, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "port must be an integer"));
    config_free(&c);
    const char *a4[] = {"kvserve", "--set", "block_szie=16"};
    ck_assert_int_eq(parse(&c, 3, a4, &help, &err), -1);
    ck_assert_str_eq(err.msg, "config: unknown key 'block_szie'");
    config_free(&c);
    const char *a5[] = {"kvserve", "--set", "block_size"};
    ck_assert_int_eq(parse(&c, 3, a5, &help, &err), -1);
    config_free(&c);
    const char *a6[] = {"kvserve", "--enable-prefix-caching=maybe"};
    ck_assert_int_eq(parse(&c, 2, a6, &help, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "enable_prefix_caching must be true or false"));
    config_free(&c);
    const char *a7[] = {"kvserve", "/m1", "/m2"};
    ck_assert_int_eq(parse(&c, 3, a7, &help, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "unexpected argument '/m2'"));
    config_free(&c);
    const char *a8[] = {"kvserve", "--port", "1", "--help"};
    ck_assert_int_eq(parse(&c, 4, a8, &help, &err), 0);
    ck_assert(help);
    config_free(&c);
}
END_TEST

/* Issue 20: nan and inf parse as doubles but are no JSON number; they aborted the process. */
START_TEST(nan_and_inf_flags_are_errors_naming_the_knob) {
    kv_config c;
    bool help;
    kv_error err;
    const char *cases[][3] = {
        {"kvserve", "--offload-size-gib", "nan"},
        {"kvserve", "--gpu-memory-utilization", "nan"},
        {"kvserve", "--set", "offload.size_gib=inf"},
        {"kvserve", "--offload-size-gib", "-inf"},
        {"kvserve", "--gpu-memory-utilization", "NAN"},
    };
    const char *knob[] = {"offload.size_gib", "gpu_memory_utilization", "offload.size_gib",
                          "offload.size_gib", "gpu_memory_utilization"};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(parse(&c, 3, cases[i], &help, &err), -1);
        ck_assert_msg(strstr(err.msg, knob[i]) != NULL, "%s", err.msg);
        config_free(&c);
    }
    config_default(&c);
    ck_assert_int_eq(config_set(&c, "offload.size_gib", "infinity", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "offload.size_gib"));
    config_free(&c);
}
END_TEST

START_TEST(help_lists_every_knob) {
    char *path = strdup("/tmp/kvserve_help_XXXXXX");
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w+");
    config_print_help(f, "kvserve");
    rewind(f);
    char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    unlink(path);
    free(path);
    const char *flags[] = {
        "--block-size",     "--offload-size-gib",       "--offload-store-policy", "--api-key",
        "--max-body-bytes", "--gpu-memory-utilization", "--set key=value",        "--config"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        ck_assert_msg(strstr(text, flags[i]) != NULL, "help lacks %s", flags[i]);
}
END_TEST

int main(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, shipped_file_lists_every_knob_with_its_default);
    tcase_add_test(tc, json_round_trip_keeps_every_value);
    tcase_add_test(tc, invalid_values_are_rejected_naming_the_key);
    tcase_add_test(tc, file_errors_name_the_file);
    tcase_add_test(tc, flags_override_the_file_whatever_their_order);
    tcase_add_test(tc, bad_flags_are_errors);
    tcase_add_test(tc, nan_and_inf_flags_are_errors_naming_the_knob);
    tcase_add_test(tc, help_lists_every_knob);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
