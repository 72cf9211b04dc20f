/* Unit tests for server/metrics: the Prometheus text exposition format (HELP/TYPE lines, counters
 * as _total, cumulative buckets with le="+Inf", _sum and _count), bucket edges (a value equal to a
 * bound falls in that bucket: "le" means <=), label escaping, and updates from several threads. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/metrics.h"

/* The value on the line that starts with prefix (a full series name with labels). */
static double series(const char *text, const char *prefix) {
    const char *p = text;
    size_t n = strlen(prefix);
    while ((p = strstr(p, prefix)) != NULL) {
        if ((p == text || p[-1] == '\n') && p[n] == ' ') return strtod(p + n + 1, NULL);
        p += n;
    }
    ck_abort_msg("no series %s", prefix);
    return 0;
}

START_TEST(histogram_buckets_are_cumulative_le) {
    metrics m;
    metrics_init(&m, "llama");
    metrics_histogram_observe(&m.time_to_first_token_seconds, 0.001);  /* == first bound */
    metrics_histogram_observe(&m.time_to_first_token_seconds, 0.0011); /* next bucket */
    metrics_histogram_observe(&m.time_to_first_token_seconds, 0.3);
    metrics_histogram_observe(&m.time_to_first_token_seconds, 5000.0); /* above the last bound */
    char *t = metrics_render(&m);
    const char *h = "kvserve:time_to_first_token_seconds";
    ck_assert_ptr_nonnull(strstr(t, "# HELP kvserve:time_to_first_token_seconds "));
    ck_assert_ptr_nonnull(strstr(t, "# TYPE kvserve:time_to_first_token_seconds histogram\n"));
    char name[256];
    snprintf(name, sizeof name, "%s_bucket{model_name=\"llama\",le=\"0.001\"}", h);
    ck_assert_double_eq(series(t, name), 1);
    snprintf(name, sizeof name, "%s_bucket{model_name=\"llama\",le=\"0.005\"}", h);
    ck_assert_double_eq(series(t, name), 2);
    snprintf(name, sizeof name, "%s_bucket{model_name=\"llama\",le=\"0.25\"}", h);
    ck_assert_double_eq(series(t, name), 2);
    snprintf(name, sizeof name, "%s_bucket{model_name=\"llama\",le=\"0.5\"}", h);
    ck_assert_double_eq(series(t, name), 3);
    snprintf(name, sizeof name, "%s_bucket{model_name=\"llama\",le=\"2560.0\"}", h);
    ck_assert_double_eq(series(t, name), 3);
    snprintf(name, sizeof name, "%s_bucket{model_name=\"llama\",le=\"+Inf\"}", h);
    ck_assert_double_eq(series(t, name), 4);
    snprintf(name, sizeof name, "%s_count{model_name=\"llama\"}", h);
    ck_assert_double_eq(series(t, name), 4);
    snprintf(name, sizeof name, "%s_sum{model_name=\"llama\"}", h);
    ck_assert_double_eq_tol(series(t, name), 5000.3021, 1e-9);
    free(t);
    metrics_free(&m);
}
END_TEST

/* The host tier's evictions and skipped stores are cumulative counts in kv_tier_stats; the engine
 * raises the counters to them each step. They render as counters and never go down. */
START_TEST(host_tier_totals_only_go_up) {
    metrics m;
    metrics_init(&m, "llama");
    const char *ev = "kvserve:host_kv_cache_evictions_total{model_name=\"llama\"}";
    const char *sk = "kvserve:host_kv_cache_stores_skipped_total{model_name=\"llama\"}";
    char *t = metrics_render(&m);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE kvserve:host_kv_cache_evictions_total counter\n"));
    ck_assert_ptr_nonnull(strstr(t, "# TYPE kvserve:host_kv_cache_stores_skipped_total counter\n"));
    ck_assert_double_eq(series(t, ev), 0);
    ck_assert_double_eq(series(t, sk), 0);
    free(t);
    metrics_counter_raise_to(&m.host_evictions, 497);
    metrics_counter_raise_to(&m.host_stores_skipped, 3);
    metrics_counter_raise_to(&m.host_evictions, 12); /* an older total: ignored */
    metrics_counter_raise_to(&m.host_stores_skipped, 0);
    t = metrics_render(&m);
    ck_assert_double_eq(series(t, ev), 497);
    ck_assert_double_eq(series(t, sk), 3);
    free(t);
    metrics_counter_raise_to(&m.host_evictions, 602);
    t = metrics_render(&m);
    ck_assert_double_eq(series(t, ev), 602);
    ck_assert_double_eq(series(t, sk), 3);
    free(t);
    metrics_free(&m);
}
END_TEST

START_TEST(counters_gauges_and_names) {
    metrics m;
    metrics_init(&m, "llama");
    metrics_counter_add(&m.prompt_tokens, 12);
    metrics_counter_add(&m.prefix_cache_hits, 32);
    metrics_counter_add(&m.request_success[KV_FINISH_LENGTH], 2);
    metrics_gauge_set(&m.kv_cache_usage_perc, 0.25);
    metrics_gauge_set(&m.num_requests_running, 3);
    metrics_counter_add(&m.host_loaded_bytes, 1u << 21);
    char *t = metrics_render(&m);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE kvserve:prompt_tokens_total counter\n"));
    ck_assert_double_eq(series(t, "kvserve:prompt_tokens_total{model_name=\"llama\"}"), 12);
    ck_assert_double_eq(series(t, "kvserve:prefix_cache_hits_total{model_name=\"llama\"}"), 32);
    ck_assert_double_eq(series(t, "kvserve:prefix_cache_queries_total{model_name=\"llama\"}"), 0);
    ck_assert_double_eq(
        series(t, "kvserve:request_success_total{model_name=\"llama\",finished_reason=\"length\"}"),
        2);
    ck_assert_double_eq(
        series(t, "kvserve:request_success_total{model_name=\"llama\",finished_reason=\"stop\"}"),
        0);
    ck_assert_ptr_nonnull(strstr(t, "# TYPE kvserve:kv_cache_usage_perc gauge\n"));
    ck_assert_double_eq(series(t, "kvserve:kv_cache_usage_perc{model_name=\"llama\"}"), 0.25);
    ck_assert_double_eq(series(t, "kvserve:num_requests_running{model_name=\"llama\"}"), 3);
    ck_assert_double_eq(series(t, "kvserve:host_loaded_bytes_total{model_name=\"llama\"}"),
                        1u << 21);
    const char *names[] = {"kvserve:num_requests_waiting",
                           "kvserve:num_preemptions_total",
                           "kvserve:generation_tokens_total",
                           "kvserve:inter_token_latency_seconds_bucket",
                           "kvserve:e2e_request_latency_seconds_bucket",
                           "kvserve:host_kv_cache_usage_perc",
                           "kvserve:host_prefix_cache_hits_total",
                           "kvserve:host_stored_bytes_total",
                           "kvserve:host_load_latency_seconds_bucket"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        ck_assert_msg(strstr(t, names[i]) != NULL, "missing %s", names[i]);
    /* every line is a comment or "name{labels} value" */
    for (const char *line = t; *line;) {
        const char *end = strchr(line, '\n');
        ck_assert_ptr_nonnull(end);
        if (*line != '#') {
            const char *brace = memchr(line, '}', (size_t)(end - line));
            ck_assert_msg(brace && brace[1] == ' ', "bad line: %.*s", (int)(end - line), line);
        }
        line = end + 1;
    }
    free(t);
    metrics_free(&m);
}
END_TEST

START_TEST(label_values_are_escaped) {
    metrics m;
    metrics_init(&m, "a\"b\\c\nd");
    char *t = metrics_render(&m);
    ck_assert_ptr_nonnull(strstr(t, "{model_name=\"a\\\"b\\\\c\\nd\"}"));
    free(t);
    metrics_free(&m);
}
END_TEST

static void *hammer(void *arg) {
    metrics *m = arg;
    for (int i = 0; i < 20000; i++) {
        metrics_counter_add(&m->generation_tokens, 1);
        metrics_histogram_observe(&m->inter_token_latency_seconds, 0.02);
    }
    return NULL;
}

START_TEST(updates_from_many_threads_add_up) {
    metrics m;
    metrics_init(&m, "x");
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, hammer, &m);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    char *t = metrics_render(&m);
    ck_assert_double_eq(series(t, "kvserve:generation_tokens_total{model_name=\"x\"}"), 80000);
    ck_assert_double_eq(series(t, "kvserve:inter_token_latency_seconds_count{model_name=\"x\"}"),
                        80000);
    ck_assert_double_eq(
        series(t, "kvserve:inter_token_latency_seconds_bucket{model_name=\"x\",le=\"0.025\"}"),
        80000);
    ck_assert_double_eq(
        series(t, "kvserve:inter_token_latency_seconds_bucket{model_name=\"x\",le=\"0.01\"}"), 0);
    free(t);
    metrics_free(&m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, histogram_buckets_are_cumulative_le);
    tcase_add_test(tc, counters_gauges_and_names);
    tcase_add_test(tc, host_tier_totals_only_go_up);
    tcase_add_test(tc, label_values_are_escaped);
    tcase_add_test(tc, updates_from_many_threads_add_up);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
