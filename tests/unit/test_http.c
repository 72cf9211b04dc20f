/* Unit tests for server/http over real sockets: routing and error statuses, the API key, the body
 * limit, completions (plain and SSE) driven by a fake engine, stop strings cancelling the engine
 * request, a closed connection cancelling it, keep-alive, 1,000 idle connections and 256 streams
 * at once, and shutdown with suspended requests. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/chat/chat_source.h"
#include "server/http.h"
#include "tests/unit/server_support.h"

#define SCRIPT_TEXT "Hello caf\xc3\xa9 END tail "

/* One server + fake engine per test (Check runs each test in its own process). */
typedef struct fixture {
    fake_engine engine;
    server_engine iface;
    metrics m;
    tokenizer *tok;
    http_server *srv;
    int port;
    int32_t script[256];
} fixture;

static fixture fx;

static void start_server(const char *api_key, long long max_body, bool ready) {
    int n = (int)strlen(SCRIPT_TEXT);
    for (int i = 0; i < n; i++) fx.script[i] = (unsigned char)SCRIPT_TEXT[i];
    fake_engine_start(&fx.engine, fx.script, n);
    fx.iface = fake_engine_iface(&fx.engine);
    metrics_init(&fx.m, "test-model");
    fx.tok = byte_tokenizer_new();
    http_server_options opt = {.host = "127.0.0.1",
                               .port = 0,
                               .api_key = api_key,
                               .max_body_bytes = max_body,
                               .n_threads = 2,
                               .max_connections = 2048,
                               .served_model_name = "test-model",
                               .model_root = "/models/test"};
    kv_error err;
    ck_assert_msg(http_server_start(&fx.srv, &opt, &fx.iface, &fx.m, &err) == 0, "%s", err.msg);
    fx.port = http_server_port(fx.srv);
    ck_assert_int_gt(fx.port, 0);
    if (ready) http_server_set_model(fx.srv, fx.tok, 64, NULL);
}

static void stop_server(void) {
    http_server_stop(fx.srv);
    fake_engine_stop(&fx.engine);
    tokenizer_free(fx.tok);
    metrics_free(&fx.m);
}

/* A server whose fake engine "generates" out (byte tokens, then EOS) under a Hermes chat source
 * with a plain template, and the given reasoning parser; the caller frees cs->tmpl after
 * stop_server. */
static void start_chat_server(const char *out, reasoning_parser_kind reasoning, chat_source *cs) {
    int n = (int)strlen(out);
    ck_assert_int_lt(n, (int)(sizeof fx.script / sizeof fx.script[0]));
    for (int i = 0; i < n; i++) fx.script[i] = (unsigned char)out[i];
    fx.script[n] = BYTE_TOK_EOS;
    fake_engine_start(&fx.engine, fx.script, n + 1);
    fx.iface = fake_engine_iface(&fx.engine);
    metrics_init(&fx.m, "test-model");
    fx.tok = byte_tokenizer_new();
    http_server_options opt = {.host = "127.0.0.1",
                               .port = 0,
                               .max_body_bytes = 1 << 20,
                               .n_threads = 2,
                               .max_connections = 64,
                               .served_model_name = "test-model",
                               .tool_call_parser = TOOL_PARSER_AUTO,
                               .reasoning_parser = reasoning};
    kv_error err;
    ck_assert(http_server_start(&fx.srv, &opt, &fx.iface, &fx.m, &err) == 0);
    fx.port = http_server_port(fx.srv);
    *cs = (chat_source){.bos_token = "", .eos_token = "", .tool_format = TOOL_PARSER_HERMES};
    const char tmpl[] = "{% for m in messages %}{{ m.content }}{% endfor %}";
    cs->tmpl = chat_template_parse(tmpl, strlen(tmpl), &err);
    ck_assert_ptr_nonnull(cs->tmpl);
    http_server_set_chat(fx.srv, cs);
    http_server_set_model(fx.srv, fx.tok, 512, NULL);
}

static json_t *parse_json(const char *s) {
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    ck_assert_msg(j != NULL, "not JSON (%s): %s", e.text, s);
    return j;
}

/* Status and, for errors, the error object's code and param. */
static void expect_error(const http_reply *r, int status, const char *code, const char *param) {
    ck_assert_msg(r->status == status, "status %d, want %d: %s", r->status, status, r->body);
    json_t *j = parse_json(r->body);
    json_t *err = json_object_get(j, "error");
    ck_assert_ptr_nonnull(err);
    ck_assert(json_is_string(json_object_get(err, "message")));
    ck_assert(json_is_string(json_object_get(err, "type")));
    if (code) ck_assert_str_eq(json_string_value(json_object_get(err, "code")), code);
    if (param)
        ck_assert_str_eq(json_string_value(json_object_get(err, "param")), param);
    else
        ck_assert(json_is_null(json_object_get(err, "param")));
    json_decref(j);
}

static json_t *complete(const char *body, int want_status) {
    http_reply r;
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "", body, &r), 0);
    ck_assert_msg(r.status == want_status, "status %d: %s", r.status, r.body);
    json_t *j = parse_json(r.body);
    http_reply_free(&r);
    return j;
}

static const char *choice_str(json_t *resp, int i, const char *key) {
    return json_string_value(
        json_object_get(json_array_get(json_object_get(resp, "choices"), i), key));
}

/* SSE body -> the JSON chunks in order; checks the framing and the final [DONE]. */
static json_t *parse_sse(const char *body) {
    json_t *chunks = json_array();
    const char *p = body;
    bool done = false;
    while (*p) {
        ck_assert_msg(!done, "data after [DONE]");
        ck_assert_msg(strncmp(p, "data: ", 6) == 0, "event does not start with 'data: ': %s", p);
        const char *end = strstr(p, "\n\n");
        ck_assert_msg(end != NULL, "event not ended by a blank line");
        char *data = strndup(p + 6, (size_t)(end - p - 6));
        if (strcmp(data, "[DONE]") == 0)
            done = true;
        else
            json_array_append_new(chunks, parse_json(data));
        free(data);
        p = end + 2;
    }
    ck_assert_msg(done, "no data: [DONE]");
    return chunks;
}

START_TEST(health_version_models_metrics) {
    start_server(NULL, 1 << 20, false);
    http_reply r;
    ck_assert_int_eq(http_do(fx.port, "GET", "/health", "", NULL, &r), 0);
    ck_assert_int_eq(r.status, 503); /* still loading */
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "", "{\"prompt\": [1]}", &r), 0);
    expect_error(&r, 503, "model_not_ready", NULL);
    http_reply_free(&r);

    http_server_set_model(fx.srv, fx.tok, 64, NULL);
    ck_assert_int_eq(http_do(fx.port, "GET", "/health", "", NULL, &r), 0);
    ck_assert_int_eq(r.status, 200);
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "GET", "/version", "", NULL, &r), 0);
    json_t *j = parse_json(r.body);
    ck_assert(json_is_string(json_object_get(j, "version")));
    json_decref(j);
    http_reply_free(&r);

    ck_assert_int_eq(http_do(fx.port, "GET", "/v1/models", "", NULL, &r), 0);
    j = parse_json(r.body);
    ck_assert_str_eq(json_string_value(json_object_get(j, "object")), "list");
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(m, "id")), "test-model");
    ck_assert_str_eq(json_string_value(json_object_get(m, "object")), "model");
    ck_assert_str_eq(json_string_value(json_object_get(m, "root")), "/models/test");
    ck_assert_int_eq(json_integer_value(json_object_get(m, "max_model_len")), 64);
    json_decref(j);
    http_reply_free(&r);

    json_decref(complete("{\"prompt\": [72], \"max_tokens\": 3}", 200));
    ck_assert_int_eq(http_do(fx.port, "GET", "/metrics", "", NULL, &r), 0);
    ck_assert_int_eq(r.status, 200);
    char ct[128];
    ck_assert(http_header(&r, "Content-Type", ct, sizeof ct));
    ck_assert_ptr_nonnull(strstr(ct, "text/plain"));
    ck_assert_ptr_nonnull(strstr(r.body, "# TYPE kvserve:time_to_first_token_seconds histogram"));
    ck_assert_ptr_nonnull(
        strstr(r.body, "kvserve:generation_tokens_total{model_name=\"test-model\"} 3"));
    ck_assert_ptr_nonnull(strstr(
        r.body,
        "kvserve:request_success_total{model_name=\"test-model\",finished_reason=\"length\"} 1"));
    http_reply_free(&r);
    stop_server();
}
END_TEST

START_TEST(unknown_routes_and_wrong_methods) {
    start_server(NULL, 1 << 20, true);
    http_reply r;
    ck_assert_int_eq(http_do(fx.port, "GET", "/v1/nothing", "", NULL, &r), 0);
    expect_error(&r, 404, "not_found", NULL);
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "GET", "/v1/completions", "", NULL, &r), 0);
    expect_error(&r, 405, "method_not_allowed", NULL);
    char allow[64];
    ck_assert(http_header(&r, "Allow", allow, sizeof allow));
    ck_assert_str_eq(allow, "POST");
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "POST", "/health", "", "{}", &r), 0);
    expect_error(&r, 405, "method_not_allowed", NULL);
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "DELETE", "/v1/models", "", NULL, &r), 0);
    ck_assert_int_eq(r.status, 405);
    http_reply_free(&r);
    stop_server();
}
END_TEST

START_TEST(api_key_guards_v1_only) {
    start_server("sekrit", 1 << 20, true);
    http_reply r;
    const char *body = "{\"prompt\": [72], \"max_tokens\": 1}";
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "", body, &r), 0);
    expect_error(&r, 401, "invalid_api_key", NULL);
    char v[64];
    ck_assert(http_header(&r, "WWW-Authenticate", v, sizeof v));
    http_reply_free(&r);
    ck_assert_int_eq(
        http_do(fx.port, "POST", "/v1/completions", "Authorization: Bearer sekri\r\n", body, &r),
        0);
    ck_assert_int_eq(r.status, 401);
    http_reply_free(&r);
    ck_assert_int_eq(
        http_do(fx.port, "POST", "/v1/completions", "Authorization: Bearer sekrit\r\n", body, &r),
        0);
    ck_assert_int_eq(r.status, 200);
    http_reply_free(&r);
    ck_assert_int_eq(
        http_do(fx.port, "GET", "/v1/models", "Authorization: Bearer sekrit\r\n", NULL, &r), 0);
    ck_assert_int_eq(r.status, 200);
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "GET", "/health", "", NULL, &r), 0); /* open, as in vLLM */
    ck_assert_int_eq(r.status, 200);
    http_reply_free(&r);
    stop_server();
}
END_TEST

START_TEST(body_over_the_limit_is_413) {
    start_server(NULL, 1024, true);
    char *big = malloc(3000);
    int n = snprintf(big, 3000, "{\"prompt\": \"");
    while (n < 2000) big[n++] = 'a';
    strcpy(big + n, "\"}");
    http_reply r;
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "", big, &r), 0);
    expect_error(&r, 413, "request_too_large", NULL);
    http_reply_free(&r);

    /* chunked upload: no Content-Length to check up front */
    int fd = http_connect_local(fx.port);
    const char *head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       "Content-Type: application/json\r\n\r\n";
    ck_assert_int_eq(write(fd, head, strlen(head)), (ssize_t)strlen(head));
    for (int i = 0; i < 4; i++) {
        char chunk[700];
        int len = snprintf(chunk, sizeof chunk, "200\r\n");
        memset(chunk + len, 'b', 512);
        len += 512;
        len += snprintf(chunk + len, sizeof chunk - (size_t)len, "\r\n");
        ck_assert_int_eq(write(fd, chunk, (size_t)len), len);
    }
    ck_assert_int_eq(write(fd, "0\r\n\r\n", 5), 5);
    ck_assert_int_eq(http_read(fd, &r), 0);
    expect_error(&r, 413, "request_too_large", NULL);
    http_reply_free(&r);
    close(fd);
    free(big);

    /* a body within the limit still works */
    json_decref(complete("{\"prompt\": [72], \"max_tokens\": 1}", 200));
    stop_server();
}
END_TEST

START_TEST(completion_text_finish_and_usage) {
    start_server(NULL, 1 << 20, true);
    json_t *j =
        complete("{\"model\": \"test-model\", \"prompt\": [72, 105], \"max_tokens\": 5}", 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "object")), "text_completion");
    ck_assert_str_eq(json_string_value(json_object_get(j, "model")), "test-model");
    ck_assert(strncmp(json_string_value(json_object_get(j, "id")), "cmpl-", 5) == 0);
    ck_assert(json_is_integer(json_object_get(j, "created")));
    ck_assert_str_eq(choice_str(j, 0, "text"), "Hello");
    ck_assert_str_eq(choice_str(j, 0, "finish_reason"), "length");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert(json_is_null(json_object_get(c0, "logprobs")));
    ck_assert(json_is_null(json_object_get(c0, "stop_reason")));
    ck_assert_ptr_null(json_object_get(c0, "token_ids")); /* only when asked */
    json_t *u = json_object_get(j, "usage");
    ck_assert_int_eq(json_integer_value(json_object_get(u, "prompt_tokens")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(u, "completion_tokens")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(u, "total_tokens")), 7);
    json_t *d = json_object_get(u, "prompt_tokens_details");
    ck_assert_int_eq(json_integer_value(json_object_get(d, "cached_tokens")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "cached_tokens_gpu")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "cached_tokens_host")), 1);
    json_decref(j);

    /* multi-byte characters come out whole; token ids when asked */
    j = complete("{\"prompt\": [72], \"max_tokens\": 11, \"return_token_ids\": true}", 200);
    ck_assert_str_eq(choice_str(j, 0, "text"), "Hello caf\xc3\xa9");
    c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(c0, "token_ids")), 11);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(c0, "token_ids"), 10)),
                     0xa9);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(c0, "prompt_token_ids"), 0)),
                     72);
    json_decref(j);
    stop_server();
}
END_TEST

START_TEST(stop_string_ends_and_cancels) {
    start_server(NULL, 1 << 20, true);
    json_t *j =
        complete("{\"prompt\": [72], \"max_tokens\": 40, \"stop\": [\"END\", \"zzz\"]}", 200);
    ck_assert_str_eq(choice_str(j, 0, "text"), "Hello caf\xc3\xa9 ");
    ck_assert_str_eq(choice_str(j, 0, "finish_reason"), "stop");
    ck_assert_str_eq(choice_str(j, 0, "stop_reason"), "END");
    json_decref(j);
    /* the engine was told to stop generating */
    ck_assert(fake_engine_wait_cancelled(&fx.engine, 1));

    j = complete("{\"prompt\": [72], \"max_tokens\": 40, \"stop\": \"END\", "
                 "\"include_stop_str_in_output\": true}",
                 200);
    ck_assert_str_eq(choice_str(j, 0, "text"), "Hello caf\xc3\xa9 END");
    json_decref(j);

    /* stop token ids: the token counts, its text does not show */
    j = complete("{\"prompt\": [72], \"max_tokens\": 40, \"stop_token_ids\": [32]}", 200);
    ck_assert_str_eq(choice_str(j, 0, "text"), "Hello");
    ck_assert_str_eq(choice_str(j, 0, "finish_reason"), "stop");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(c0, "stop_reason")), 32);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")), 6);
    json_decref(j);
    stop_server();
}
END_TEST

/* Concatenated text of the chunks of one choice; sets *finish to its finish_reason. */
static char *sse_text(json_t *chunks, int index, const char **finish, int *n_chunks) {
    char *text = calloc(1, 4096);
    *finish = NULL;
    *n_chunks = 0;
    for (size_t i = 0; i < json_array_size(chunks); i++) {
        json_t *ch = json_array_get(chunks, i);
        ck_assert_str_eq(json_string_value(json_object_get(ch, "object")), "text_completion");
        json_t *choices = json_object_get(ch, "choices");
        for (size_t k = 0; k < json_array_size(choices); k++) {
            json_t *c = json_array_get(choices, k);
            if (json_integer_value(json_object_get(c, "index")) != index) continue;
            ck_assert_msg(*finish == NULL, "a chunk after the finish_reason");
            strcat(text, json_string_value(json_object_get(c, "text")));
            if (json_is_string(json_object_get(c, "finish_reason")))
                *finish = json_string_value(json_object_get(c, "finish_reason"));
            (*n_chunks)++;
        }
    }
    return text;
}

START_TEST(streaming_sse_frames_and_usage) {
    start_server(NULL, 1 << 20, true);
    http_reply r;
    ck_assert_int_eq(
        http_do(fx.port, "POST", "/v1/completions", "",
                "{\"prompt\": [72], \"max_tokens\": 40, \"stop\": [\"END\"], \"stream\": true,"
                " \"stream_options\": {\"include_usage\": true}}",
                &r),
        0);
    ck_assert_int_eq(r.status, 200);
    char ct[64];
    ck_assert(http_header(&r, "Content-Type", ct, sizeof ct));
    ck_assert_str_eq(ct, "text/event-stream");
    json_t *chunks = parse_sse(r.body);
    const char *finish;
    int n_chunks;
    char *text = sse_text(chunks, 0, &finish, &n_chunks);
    ck_assert_str_eq(text, "Hello caf\xc3\xa9 "); /* no part of "END" was ever sent */
    ck_assert_str_eq(finish, "stop");
    ck_assert_int_gt(n_chunks, 1);
    json_t *last = json_array_get(chunks, json_array_size(chunks) - 1);
    ck_assert_int_eq(json_array_size(json_object_get(last, "choices")), 0);
    json_t *u = json_object_get(last, "usage");
    ck_assert_int_eq(json_integer_value(json_object_get(u, "prompt_tokens")), 1);
    ck_assert(json_is_object(json_object_get(u, "prompt_tokens_details")));
    /* the same id in every chunk */
    const char *id = json_string_value(json_object_get(json_array_get(chunks, 0), "id"));
    for (size_t i = 0; i < json_array_size(chunks); i++)
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(chunks, i), "id")), id);
    free(text);
    json_decref(chunks);
    http_reply_free(&r);

    /* without include_usage: no usage chunk */
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "",
                             "{\"prompt\": [72], \"max_tokens\": 3, \"stream\": true}", &r),
                     0);
    chunks = parse_sse(r.body);
    text = sse_text(chunks, 0, &finish, &n_chunks);
    ck_assert_str_eq(text, "Hel");
    ck_assert_str_eq(finish, "length");
    for (size_t i = 0; i < json_array_size(chunks); i++)
        ck_assert_int_eq(json_array_size(json_object_get(json_array_get(chunks, i), "choices")), 1);
    free(text);
    json_decref(chunks);
    http_reply_free(&r);
    stop_server();
}
END_TEST

START_TEST(keep_alive_serves_several_requests) {
    start_server(NULL, 1 << 20, true);
    int fd = http_connect_local(fx.port);
    http_reply r;
    const char *bodies[] = {NULL, "{\"prompt\": [72], \"max_tokens\": 2}",
                            "{\"prompt\": [72], \"max_tokens\": 2, \"stream\": true}", NULL,
                            "{\"prompt\": [72], \"max_tokens\": 2}"};
    const char *paths[] = {"/health", "/v1/completions", "/v1/completions", "/version",
                           "/v1/completions"};
    for (int i = 0; i < 5; i++) {
        http_send(fd, bodies[i] ? "POST" : "GET", paths[i], "", bodies[i]);
        ck_assert_int_eq(http_read(fd, &r), 0);
        ck_assert_msg(r.status == 200, "request %d: %d %s", i, r.status, r.body);
        http_reply_free(&r);
    }
    close(fd);
    stop_server();
}
END_TEST

START_TEST(closed_connection_cancels_its_request) {
    start_server(NULL, 1 << 20, true);
    fake_engine_hold(&fx.engine, true);
    /* a streamed request waiting for its first token */
    int fd = http_connect_local(fx.port);
    http_send(fd, "POST", "/v1/completions", "",
              "{\"prompt\": [72], \"max_tokens\": 50, \"stream\": true}");
    ck_assert(fake_engine_wait_active(&fx.engine, 1));
    close(fd);
    ck_assert(fake_engine_wait_cancelled(&fx.engine, 1));
    /* a plain request waiting for its whole output, its client reset (a FIN alone is not a
     * hang-up: a half-closed client still reads the answer; tests/integration/test_hardening) */
    fd = http_connect_local(fx.port);
    http_send(fd, "POST", "/v1/completions", "", "{\"prompt\": [72], \"max_tokens\": 50}");
    /* submitted, not only active: the first request may still count as active, and a reset
     * before the request is read discards it */
    ck_assert(fake_engine_wait_submitted(&fx.engine, 2));
    ck_assert(fake_engine_wait_active(&fx.engine, 1));
    struct linger rst = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof rst);
    close(fd);
    ck_assert(fake_engine_wait_cancelled(&fx.engine, 2));
    /* a stream that already sent tokens */
    fd = http_connect_local(fx.port);
    http_send(fd, "POST", "/v1/completions", "",
              "{\"prompt\": [72], \"max_tokens\": 50, \"stream\": true}");
    ck_assert(fake_engine_wait_active(&fx.engine, 1));
    fake_engine_allow(&fx.engine, 3);
    char buf[4096];
    size_t got = 0;
    while (got < sizeof buf - 1) { /* until the first token's chunk arrived */
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        ck_assert_int_gt(n, 0);
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "data: {")) break;
    }
    close(fd);
    /* a FIN is seen when a write fails: the next tokens' chunks (the first write is answered
     * with a reset, the next fails) */
    fake_engine_allow(&fx.engine, 40);
    ck_assert(fake_engine_wait_cancelled(&fx.engine, 3));
    fake_engine_hold(&fx.engine, false);
    /* the server still serves */
    json_decref(complete("{\"prompt\": [72], \"max_tokens\": 1}", 200));
    stop_server();
}
END_TEST

START_TEST(several_prompts_and_n) {
    start_server(NULL, 1 << 20, true);
    json_t *j =
        complete("{\"prompt\": [[72], [73, 74]], \"n\": 2, \"seed\": 3, \"max_tokens\": 3}", 200);
    json_t *choices = json_object_get(j, "choices");
    ck_assert_int_eq(json_array_size(choices), 4);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(choices, i), "index")),
                         i);
    /* seeds seed + k, as vLLM: the fake engine starts the script at seed % length */
    ck_assert_str_eq(choice_str(j, 0, "text"), "lo ");
    ck_assert_str_eq(choice_str(j, 1, "text"), "o c");
    ck_assert_str_eq(choice_str(j, 2, "text"), "lo ");
    json_t *u = json_object_get(j, "usage");
    ck_assert_int_eq(json_integer_value(json_object_get(u, "prompt_tokens")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(u, "completion_tokens")), 12);
    json_decref(j);
    stop_server();
}
END_TEST

START_TEST(echo_with_logprobs) {
    start_server(NULL, 1 << 20, true);
    json_t *j =
        complete("{\"prompt\": \"Hi\", \"echo\": true, \"logprobs\": 2, \"max_tokens\": 2}", 200);
    ck_assert_str_eq(choice_str(j, 0, "text"), "HiHe");
    json_t *lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    json_t *tokens = json_object_get(lp, "tokens");
    ck_assert_int_eq(json_array_size(tokens), 4);
    const char *want[] = {"H", "i", "H", "e"};
    for (int i = 0; i < 4; i++) {
        ck_assert_str_eq(json_string_value(json_array_get(tokens, (size_t)i)), want[i]);
        ck_assert_int_eq(
            json_integer_value(json_array_get(json_object_get(lp, "text_offset"), (size_t)i)), i);
    }
    ck_assert(json_is_null(json_array_get(json_object_get(lp, "token_logprobs"), 0)));
    ck_assert(json_is_null(json_array_get(json_object_get(lp, "top_logprobs"), 0)));
    ck_assert_double_eq_tol(
        json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 1)), -1.0, 1e-6);
    ck_assert_double_eq_tol(
        json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 3)), -0.75, 1e-6);
    json_t *top = json_array_get(json_object_get(lp, "top_logprobs"), 2);
    ck_assert_int_eq(json_object_size(top), 2); /* "H" and "I" (the chosen token is among them) */
    ck_assert_double_eq_tol(json_real_value(json_object_get(top, "I")), -1.5, 1e-6);
    json_decref(j);

    j = complete("{\"prompt\": [72], \"logprobs\": 0, \"max_tokens\": 1, "
                 "\"return_tokens_as_token_ids\": true}",
                 200);
    lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(lp, "tokens"), 0)),
                     "token_id:72");
    json_decref(j);
    stop_server();
}
END_TEST

START_TEST(bad_requests_name_their_parameter) {
    start_server(NULL, 1 << 20, true);
    http_reply r;
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "",
                             "{\"prompt\": [72], \"temperature\": -1}", &r),
                     0);
    expect_error(&r, 400, "invalid_value", "temperature");
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "",
                             "{\"prompt\": [72], \"model\": \"gpt-9\"}", &r),
                     0);
    expect_error(&r, 404, "model_not_found", "model");
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "",
                             "{\"prompt\": [72], \"max_tokens\": 64}", &r),
                     0);
    expect_error(&r, 400, "context_length_exceeded", "max_tokens");
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "", "not json", &r), 0);
    expect_error(&r, 400, "invalid_json", NULL);
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "",
                             "{\"prompt\": [72], \"max_tokens\": 7777}", &r),
                     0);
    ck_assert_int_eq(r.status, 400); /* the engine refused it */
    http_reply_free(&r);
    stop_server();
}
END_TEST

START_TEST(full_queue_is_503) {
    start_server(NULL, 1 << 20, true);
    fx.engine.max_active = 0;
    http_reply r;
    ck_assert_int_eq(http_do(fx.port, "POST", "/v1/completions", "", "{\"prompt\": [72]}", &r), 0);
    expect_error(&r, 503, "server_overloaded", NULL);
    http_reply_free(&r);
    /* refused, so never counted as a finished (aborted) request */
    ck_assert_int_eq(http_do(fx.port, "GET", "/metrics", "", NULL, &r), 0);
    ck_assert_ptr_nonnull(strstr(
        r.body,
        "kvserve:request_success_total{model_name=\"test-model\",finished_reason=\"abort\"} 0"));
    ck_assert_ptr_nonnull(
        strstr(r.body, "kvserve:prompt_tokens_total{model_name=\"test-model\"} 0"));
    http_reply_free(&r);
    stop_server();
}
END_TEST

START_TEST(tokenize_and_detokenize) {
    start_server(NULL, 1 << 20, true);
    http_reply r;
    ck_assert_int_eq(http_do(fx.port, "POST", "/tokenize", "", "{\"prompt\": \"Hi \xc3\xa9\"}", &r),
                     0);
    ck_assert_int_eq(r.status, 200);
    json_t *j = parse_json(r.body);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "count")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "max_model_len")), 64);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(j, "tokens"), 3)), 0xc3);
    json_decref(j);
    http_reply_free(&r);
    ck_assert_int_eq(
        http_do(fx.port, "POST", "/detokenize", "", "{\"tokens\": [72, 105, 32, 195, 169]}", &r),
        0);
    ck_assert_int_eq(r.status, 200);
    j = parse_json(r.body);
    ck_assert_str_eq(json_string_value(json_object_get(j, "prompt")), "Hi \xc3\xa9");
    json_decref(j);
    http_reply_free(&r);
    ck_assert_int_eq(http_do(fx.port, "POST", "/detokenize", "", "{\"tokens\": [72, 100000]}", &r),
                     0);
    expect_error(&r, 400, "invalid_value", "tokens");
    http_reply_free(&r);
    stop_server();
}
END_TEST

START_TEST(thousand_idle_keep_alive_connections) {
    start_server(NULL, 1 << 20, true);
    enum { N = 1000 };
    int *fds = malloc(sizeof *fds * N);
    http_reply r;
    for (int i = 0; i < N; i++) {
        fds[i] = http_connect_local(fx.port);
        ck_assert_int_ge(fds[i], 0);
        http_send(fds[i], "GET", "/health", "", NULL);
        ck_assert_int_eq(http_read(fds[i], &r), 0);
        ck_assert_int_eq(r.status, 200);
        http_reply_free(&r);
    }
    /* all 1000 still open and idle: a new client is served, and so is every old one */
    json_decref(complete("{\"prompt\": [72], \"max_tokens\": 2}", 200));
    for (int i = 0; i < N; i += 97) {
        http_send(fds[i], "GET", "/version", "", NULL);
        ck_assert_int_eq(http_read(fds[i], &r), 0);
        ck_assert_int_eq(r.status, 200);
        http_reply_free(&r);
    }
    for (int i = 0; i < N; i++) close(fds[i]);
    free(fds);
    stop_server();
}
END_TEST

START_TEST(two_hundred_fifty_six_streams_at_once) {
    start_server(NULL, 1 << 20, true);
    enum { N = 256 };
    int fds[N];
    fake_engine_hold(&fx.engine, true);
    for (int i = 0; i < N; i++) {
        fds[i] = http_connect_local(fx.port);
        ck_assert_int_ge(fds[i], 0);
        char body[128];
        snprintf(body, sizeof body,
                 "{\"prompt\": [72], \"max_tokens\": 12, \"seed\": %d, \"stream\": true}", i);
        http_send(fds[i], "POST", "/v1/completions", "", body);
    }
    ck_assert(fake_engine_wait_active(&fx.engine, N)); /* all in flight together */
    fake_engine_hold(&fx.engine, false);
    int n_script = (int)strlen(SCRIPT_TEXT);
    for (int i = 0; i < N; i++) {
        http_reply r;
        ck_assert_int_eq(http_read(fds[i], &r), 0);
        ck_assert_int_eq(r.status, 200);
        json_t *chunks = parse_sse(r.body);
        const char *finish;
        int n_chunks;
        char *text = sse_text(chunks, 0, &finish, &n_chunks);
        /* what the tokenizer decodes from the same 12 ids (the bytes of "é" may be cut) */
        int32_t ids[12];
        for (int k = 0; k < 12; k++)
            ids[k] = (unsigned char)SCRIPT_TEXT[(k + i % n_script) % n_script];
        char *want;
        size_t want_len;
        ck_assert_int_eq(tokenizer_decode(fx.tok, ids, 12, true, &want, &want_len, NULL), 0);
        ck_assert_msg(strcmp(text, want) == 0, "stream %d: '%s' vs '%s'", i, text, want);
        free(want);
        ck_assert_str_eq(finish, "length");
        free(text);
        json_decref(chunks);
        http_reply_free(&r);
        close(fds[i]);
    }
    stop_server();
}
END_TEST

START_TEST(shutdown_with_suspended_requests) {
    start_server(NULL, 1 << 20, true);
    fake_engine_hold(&fx.engine, true);
    int a = http_connect_local(fx.port), b = http_connect_local(fx.port);
    http_send(a, "POST", "/v1/completions", "",
              "{\"prompt\": [72], \"max_tokens\": 5, \"stream\": true}");
    http_send(b, "POST", "/v1/completions", "", "{\"prompt\": [72], \"max_tokens\": 5}");
    ck_assert(fake_engine_wait_active(&fx.engine, 2));
    http_server_stop(fx.srv); /* must not hang or abort with suspended connections */
    char buf[4096];
    while (read(a, buf, sizeof buf) > 0) {
    }
    while (read(b, buf, sizeof buf) > 0) {
    }
    close(a);
    close(b);
    fake_engine_stop(&fx.engine);
    tokenizer_free(fx.tok);
    metrics_free(&fx.m);
}
END_TEST

/* Streamed delta.tool_calls entries gathered as a client does: by index, the first entry of a
 * call with its id, type and name, later ones adding to function.arguments. */
static void gather_tool_calls(json_t *acc, json_t *entries) {
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e) {
        size_t idx = (size_t)json_integer_value(json_object_get(e, "index"));
        json_t *fn = json_object_get(e, "function");
        const char *args = json_string_value(json_object_get(fn, "arguments"));
        if (idx == json_array_size(acc)) {
            ck_assert_ptr_nonnull(json_object_get(e, "id"));
            ck_assert_str_eq(json_string_value(json_object_get(e, "type")), "function");
            ck_assert_ptr_nonnull(json_object_get(fn, "name"));
            json_array_append_new(acc, json_deep_copy(e));
            continue;
        }
        ck_assert_msg(idx + 1 == json_array_size(acc), "delta for call %zu out of order", idx);
        ck_assert_ptr_null(json_object_get(e, "id")); /* id and name come once */
        ck_assert_ptr_null(json_object_get(fn, "name"));
        json_t *have = json_object_get(json_array_get(acc, idx), "function");
        char joined[1024];
        snprintf(joined, sizeof joined, "%s%s",
                 json_string_value(json_object_get(have, "arguments")), args ? args : "");
        json_object_set_new(have, "arguments", json_string(joined));
    }
}

/* Chat with tools: the fake engine "generates" a Hermes tool call; it comes back as
 * message.tool_calls with finish_reason "tool_calls" when the request has tools (and not
 * tool_choice "none"), streamed or not, and as content otherwise. */
START_TEST(chat_tool_calls) {
    static const char call[] =
        "Ok.<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>";
    chat_source cs;
    start_chat_server(call, REASONING_PARSER_NONE, &cs);
    const char *msgs = "\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]";
    const char *tools = "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]";
    const char *extra[] = {"", ", \"tool_choice\": \"none\"", ", \"stream\": true", NULL};
    for (int k = 0; k < 4; k++) {
        char body[512];
        snprintf(body, sizeof body, "{%s%s%s%s}", msgs, k < 3 ? ", " : "", k < 3 ? tools : "",
                 k < 3 ? extra[k] : "");
        http_reply r;
        ck_assert_int_eq(http_do(fx.port, "POST", "/v1/chat/completions", "", body, &r), 0);
        ck_assert_msg(r.status == 200, "%d: %s", r.status, r.body);
        if (k == 2) { /* streamed: "Ok." as content, then the call in deltas */
            json_t *chunks = parse_sse(r.body);
            char text[256] = "";
            json_t *last_calls = json_array();
            const char *fin = NULL;
            size_t i;
            json_t *chunk;
            json_array_foreach(chunks, i, chunk) {
                json_t *ch = json_array_get(json_object_get(chunk, "choices"), 0);
                json_t *delta = json_object_get(ch, "delta");
                const char *content = json_string_value(json_object_get(delta, "content"));
                if (content) strncat(text, content, sizeof text - strlen(text) - 1);
                if (json_object_get(delta, "tool_calls")) {
                    ck_assert_msg(!fin, "tool call after the finish");
                    gather_tool_calls(last_calls, json_object_get(delta, "tool_calls"));
                }
                if (json_is_string(json_object_get(ch, "finish_reason")))
                    fin = json_string_value(json_object_get(ch, "finish_reason"));
            }
            ck_assert_str_eq(text, "Ok.");
            ck_assert_str_eq(fin, "tool_calls");
            ck_assert_int_eq((int)json_array_size(last_calls), 1);
            json_t *c0 = json_array_get(last_calls, 0);
            ck_assert_int_eq(json_integer_value(json_object_get(c0, "index")), 0);
            ck_assert_str_eq(
                json_string_value(json_object_get(json_object_get(c0, "function"), "arguments")),
                "{\"x\": 1}");
            ck_assert_str_eq(
                json_string_value(json_object_get(json_object_get(c0, "function"), "name")), "f");
            json_decref(last_calls);
            json_decref(chunks);
            http_reply_free(&r);
            continue;
        }
        json_t *j = parse_json(r.body);
        json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
        json_t *msg = json_object_get(choice, "message");
        const char *fin = json_string_value(json_object_get(choice, "finish_reason"));
        json_t *calls = json_object_get(msg, "tool_calls");
        if (k == 0) {
            ck_assert_str_eq(fin, "tool_calls");
            ck_assert_str_eq(json_string_value(json_object_get(msg, "content")), "Ok.");
            ck_assert_int_eq((int)json_array_size(calls), 1);
            json_t *fn = json_object_get(json_array_get(calls, 0), "function");
            ck_assert_str_eq(json_string_value(json_object_get(fn, "name")), "f");
            ck_assert_str_eq(json_string_value(json_object_get(fn, "arguments")), "{\"x\": 1}");
        } else {
            ck_assert_str_eq(fin, "stop");
            ck_assert_str_eq(json_string_value(json_object_get(msg, "content")), call);
            ck_assert_int_eq((int)json_array_size(calls), 0);
        }
        json_decref(j);
        http_reply_free(&r);
    }
    stop_server();
    chat_template_free(cs.tmpl);
}
END_TEST

/* Chat with reasoning_parser deepseek_r1: the fake engine "generates" a think block, then text
 * and a Hermes call; the block comes back as reasoning_content and the call as tool_calls,
 * streamed (in pieces, the content after the reasoning) or not. */
START_TEST(chat_reasoning) {
    static const char out[] = "<think>a plan</think>Ok.<tool_call>{\"name\": \"f\", "
                              "\"arguments\": {\"x\": 1}}</tool_call>";
    chat_source cs;
    start_chat_server(out, REASONING_PARSER_DEEPSEEK_R1, &cs);
    const char *body = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": "
                       "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]";
    for (int stream = 0; stream < 2; stream++) {
        char req[512];
        snprintf(req, sizeof req, "%s%s}", body, stream ? ", \"stream\": true" : "");
        http_reply r;
        ck_assert_int_eq(http_do(fx.port, "POST", "/v1/chat/completions", "", req, &r), 0);
        ck_assert_msg(r.status == 200, "%d: %s", r.status, r.body);
        char reasoning[256] = "", text[256] = "";
        json_t *calls = NULL, *streamed = json_array();
        const char *fin = NULL;
        json_t *parsed = stream ? parse_sse(r.body) : parse_json(r.body);
        json_t *chunks = stream ? parsed : json_pack("[O]", parsed);
        size_t i;
        json_t *chunk;
        int n_reasoning = 0;
        json_array_foreach(chunks, i, chunk) {
            json_t *ch = json_array_get(json_object_get(chunk, "choices"), 0);
            json_t *msg = json_object_get(ch, stream ? "delta" : "message");
            const char *rc = json_string_value(json_object_get(msg, "reasoning_content"));
            if (rc) {
                strncat(reasoning, rc, sizeof reasoning - strlen(reasoning) - 1);
                n_reasoning++;
                ck_assert_msg(stream || !strchr(text, 'O'), "reasoning after content");
            }
            const char *content = json_string_value(json_object_get(msg, "content"));
            if (content) strncat(text, content, sizeof text - strlen(text) - 1);
            if (json_object_get(msg, "tool_calls") && stream)
                gather_tool_calls(streamed, json_object_get(msg, "tool_calls"));
            else if (json_object_get(msg, "tool_calls"))
                calls = json_object_get(msg, "tool_calls");
            if (json_is_string(json_object_get(ch, "finish_reason")))
                fin = json_string_value(json_object_get(ch, "finish_reason"));
        }
        if (stream) calls = streamed;
        ck_assert_str_eq(reasoning, "a plan");
        ck_assert_int_ge(n_reasoning, 1);
        ck_assert_str_eq(text, "Ok.");
        ck_assert_str_eq(fin, "tool_calls");
        ck_assert_int_eq((int)json_array_size(calls), 1);
        json_t *fn = json_object_get(json_array_get(calls, 0), "function");
        ck_assert_str_eq(json_string_value(json_object_get(fn, "name")), "f");
        ck_assert_str_eq(json_string_value(json_object_get(fn, "arguments")), "{\"x\": 1}");
        if (!stream) json_decref(parsed);
        json_decref(streamed);
        json_decref(chunks);
        http_reply_free(&r);
    }
    stop_server();
    chat_template_free(cs.tmpl);
}
END_TEST

/* A forced tool_choice with reasoning_parser deepseek_r1: the constraint holds the output to the
 * call's JSON from its first token (no think block can come), so the output is the call's
 * arguments, not reasoning, streamed or not. */
START_TEST(chat_forced_tool_with_reasoning) {
    static const char out[] = "{\"x\": 1}";
    chat_source cs;
    start_chat_server(out, REASONING_PARSER_DEEPSEEK_R1, &cs);
    const char *body =
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": [{\"type\": "
        "\"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\", "
        "\"properties\": {\"x\": {\"type\": \"integer\"}}}}}], \"tool_choice\": {\"type\": "
        "\"function\", \"function\": {\"name\": \"f\"}}";
    for (int stream = 0; stream < 2; stream++) {
        char req[1024];
        snprintf(req, sizeof req, "%s%s}", body, stream ? ", \"stream\": true" : "");
        http_reply r;
        ck_assert_int_eq(http_do(fx.port, "POST", "/v1/chat/completions", "", req, &r), 0);
        ck_assert_msg(r.status == 200, "%d: %s", r.status, r.body);
        json_t *parsed = stream ? parse_sse(r.body) : parse_json(r.body);
        json_t *chunks = stream ? parsed : json_pack("[O]", parsed);
        json_t *calls = json_array();
        const char *fin = NULL;
        char reasoning[256] = "";
        size_t i;
        json_t *chunk;
        json_array_foreach(chunks, i, chunk) {
            json_t *ch = json_array_get(json_object_get(chunk, "choices"), 0);
            json_t *msg = json_object_get(ch, stream ? "delta" : "message");
            const char *rc = json_string_value(json_object_get(msg, "reasoning_content"));
            if (rc) strncat(reasoning, rc, sizeof reasoning - strlen(reasoning) - 1);
            if (json_object_get(msg, "tool_calls"))
                gather_tool_calls(calls, json_object_get(msg, "tool_calls"));
            if (json_is_string(json_object_get(ch, "finish_reason")))
                fin = json_string_value(json_object_get(ch, "finish_reason"));
        }
        ck_assert_msg(!reasoning[0], "stream %d: the call went out as reasoning: %s", stream,
                      reasoning);
        ck_assert_msg(fin && !strcmp(fin, "tool_calls"), "stream %d: finish %s", stream,
                      fin ? fin : "(none)");
        ck_assert_int_eq((int)json_array_size(calls), 1);
        json_t *fn = json_object_get(json_array_get(calls, 0), "function");
        ck_assert_str_eq(json_string_value(json_object_get(fn, "name")), "f");
        json_t *args = json_loads(json_string_value(json_object_get(fn, "arguments")), 0, NULL);
        ck_assert_int_eq(json_integer_value(json_object_get(args, "x")), 1);
        json_decref(args);
        json_decref(calls);
        if (!stream) json_decref(parsed);
        json_decref(chunks);
        http_reply_free(&r);
    }
    stop_server();
    chat_template_free(cs.tmpl);
}
END_TEST

int main(void) {
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, health_version_models_metrics);
    tcase_add_test(tc, unknown_routes_and_wrong_methods);
    tcase_add_test(tc, api_key_guards_v1_only);
    tcase_add_test(tc, body_over_the_limit_is_413);
    tcase_add_test(tc, completion_text_finish_and_usage);
    tcase_add_test(tc, stop_string_ends_and_cancels);
    tcase_add_test(tc, streaming_sse_frames_and_usage);
    tcase_add_test(tc, keep_alive_serves_several_requests);
    tcase_add_test(tc, closed_connection_cancels_its_request);
    tcase_add_test(tc, several_prompts_and_n);
    tcase_add_test(tc, echo_with_logprobs);
    tcase_add_test(tc, bad_requests_name_their_parameter);
    tcase_add_test(tc, full_queue_is_503);
    tcase_add_test(tc, tokenize_and_detokenize);
    tcase_add_test(tc, thousand_idle_keep_alive_connections);
    tcase_add_test(tc, two_hundred_fifty_six_streams_at_once);
    tcase_add_test(tc, shutdown_with_suspended_requests);
    tcase_add_test(tc, chat_tool_calls);
    tcase_add_test(tc, chat_reasoning);
    tcase_add_test(tc, chat_forced_tool_with_reasoning);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
