/* Unit tests for server/openai: every validation error (status, type, param, code), the parsed
 * request for valid bodies, response shapes, and /tokenize and /detokenize against the stories260K
 * tokenizer's published ids (skipped when the test data is absent). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/openai.h"
#include "tests/unit/server_support.h"

static tokenizer *byte_tok;

#define LIT(s) s, strlen(s)

static openai_model_info info_for(const tokenizer *tok, int max_model_len) {
    return (openai_model_info){.served_model_name = "m",
                               .tok = tok,
                               .max_model_len = max_model_len,
                               .vocab_size = tok ? tokenizer_vocab_size(tok) : 0};
}

typedef struct bad_case {
    const char *body;
    int status;
    const char *param; /* NULL = null */
    const char *code;
} bad_case;

static const bad_case bad_cases[] = {
    {"[1]", 400, NULL, "invalid_json"},
    {"{", 400, NULL, "invalid_json"},
    {"{}", 400, "prompt", "missing_required_parameter"},
    {"{\"prompt\": null}", 400, "prompt", "missing_required_parameter"},
    {"{\"prompt\": 5}", 400, "prompt", "invalid_type"},
    {"{\"prompt\": []}", 400, "prompt", "invalid_value"},
    {"{\"prompt\": [1, \"a\"]}", 400, "prompt", "invalid_type"},
    {"{\"prompt\": [[1], \"a\"]}", 400, "prompt", "invalid_type"},
    {"{\"prompt\": [[1], [2.5]]}", 400, "prompt", "invalid_type"},
    {"{\"prompt\": [300]}", 400, "prompt", "invalid_value"},
    {"{\"prompt\": [-1]}", 400, "prompt", "invalid_value"},
    {"{\"prompt\": \"\"}", 400, "prompt", "invalid_value"},
    {"{\"prompt\": [[]]}", 400, "prompt", "invalid_value"},
    {"{\"prompt\": [1], \"model\": \"x\"}", 404, "model", "model_not_found"},
    {"{\"prompt\": [1], \"model\": 3}", 400, "model", "invalid_type"},
    {"{\"prompt\": [1], \"max_tokens\": 0}", 400, "max_tokens", "invalid_value"},
    {"{\"prompt\": [1], \"max_tokens\": \"5\"}", 400, "max_tokens", "invalid_type"},
    {"{\"prompt\": [1], \"max_tokens\": 1.5}", 400, "max_tokens", "invalid_type"},
    {"{\"prompt\": [1], \"max_tokens\": 40}", 400, "max_tokens", "context_length_exceeded"},
    {"{\"prompt\": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}", 400,
     "prompt", "context_length_exceeded"},
    {"{\"prompt\": [1], \"temperature\": -0.5}", 400, "temperature", "invalid_value"},
    {"{\"prompt\": [1], \"temperature\": \"hot\"}", 400, "temperature", "invalid_type"},
    {"{\"prompt\": [1], \"top_p\": 0}", 400, "top_p", "invalid_value"},
    {"{\"prompt\": [1], \"top_p\": 1.5}", 400, "top_p", "invalid_value"},
    {"{\"prompt\": [1], \"top_k\": -2}", 400, "top_k", "invalid_value"},
    {"{\"prompt\": [1], \"top_k\": 2.5}", 400, "top_k", "invalid_type"},
    {"{\"prompt\": [1], \"min_p\": 1.5}", 400, "min_p", "invalid_value"},
    {"{\"prompt\": [1], \"presence_penalty\": 3}", 400, "presence_penalty", "invalid_value"},
    {"{\"prompt\": [1], \"frequency_penalty\": -2.5}", 400, "frequency_penalty", "invalid_value"},
    {"{\"prompt\": [1], \"repetition_penalty\": 0}", 400, "repetition_penalty", "invalid_value"},
    {"{\"prompt\": [1], \"repetition_penalty\": 3}", 400, "repetition_penalty", "invalid_value"},
    {"{\"prompt\": [1], \"min_p\": 2}", 400, "min_p", "invalid_value"},
    {"{\"prompt\": [1], \"temperature\": 1e300}", 400, "temperature", "invalid_value"},
    {"{\"prompt\": [1], \"top_p\": 1e-50}", 400, "top_p", "invalid_value"},
    {"{\"prompt\": [1], \"top_k\": 3000000000}", 400, "top_k", "invalid_value"},
    {"{\"prompt\": [1], \"n\": 0}", 400, "n", "invalid_value"},
    {"{\"prompt\": [1], \"n\": 300}", 400, "n", "invalid_value"},
    {"{\"prompt\": [[1], [2]], \"n\": 200}", 400, "n", "invalid_value"},
    {"{\"prompt\": [1], \"seed\": \"1\"}", 400, "seed", "invalid_type"},
    {"{\"prompt\": [1], \"stop\": 5}", 400, "stop", "invalid_type"},
    {"{\"prompt\": [1], \"stop\": [\"\"]}", 400, "stop", "invalid_value"},
    {"{\"prompt\": [1], \"stop\": [1]}", 400, "stop", "invalid_type"},
    {"{\"prompt\": [1], \"stop_token_ids\": [300]}", 400, "stop_token_ids", "invalid_value"},
    {"{\"prompt\": [1], \"stop_token_ids\": \"5\"}", 400, "stop_token_ids", "invalid_type"},
    {"{\"prompt\": [1], \"stream\": \"yes\"}", 400, "stream", "invalid_type"},
    {"{\"prompt\": [1], \"stream_options\": {\"include_usage\": true}}", 400, "stream_options",
     "invalid_value"},
    {"{\"prompt\": [1], \"stream\": true, \"stream_options\": {\"include_usage\": 1}}", 400,
     "stream_options.include_usage", "invalid_type"},
    {"{\"prompt\": [1], \"stream\": true, \"stream_options\": 3}", 400, "stream_options",
     "invalid_type"},
    {"{\"prompt\": [1], \"logprobs\": 21}", 400, "logprobs", "invalid_value"},
    {"{\"prompt\": [1], \"logprobs\": -1}", 400, "logprobs", "invalid_value"},
    {"{\"prompt\": [1], \"logprobs\": true}", 400, "logprobs", "invalid_type"},
    {"{\"prompt\": [1], \"echo\": 1}", 400, "echo", "invalid_type"},
    {"{\"prompt\": [1], \"ignore_eos\": \"no\"}", 400, "ignore_eos", "invalid_type"},
    {"{\"prompt\": [1], \"min_tokens\": -1}", 400, "min_tokens", "invalid_value"},
    {"{\"prompt\": [1], \"min_tokens\": 20, \"max_tokens\": 10}", 400, "min_tokens",
     "invalid_value"},
    {"{\"prompt\": [1], \"cache_salt\": \"\"}", 400, "cache_salt", "invalid_value"},
    {"{\"prompt\": [1], \"cache_salt\": 5}", 400, "cache_salt", "invalid_value"},
    {"{\"prompt\": [1], \"suffix\": \"x\"}", 400, "suffix", "unsupported_parameter"},
    {"{\"prompt\": [1], \"logit_bias\": {\"100000\": 2}}", 400, "logit_bias", "invalid_value"},
    {"{\"prompt\": [1], \"logit_bias\": {\"1\": 100.5}}", 400, "logit_bias", "invalid_value"},
    {"{\"prompt\": [1], \"logit_bias\": {\"-1\": 1}}", 400, "logit_bias", "invalid_value"},
    {"{\"prompt\": [1], \"logit_bias\": [1]}", 400, "logit_bias", "invalid_value"},
    {"{\"prompt\": [1], \"response_format\": {\"type\": \"yaml\"}}", 400, "response_format",
     "unsupported"},
    {"{\"prompt\": [1], \"response_format\": {\"type\": \"json_schema\"}}", 400, "response_format",
     "invalid_value"},
    {"{\"prompt\": [1], \"guided_regex\": \"a\", \"guided_choice\": [\"b\"]}", 400, "guided_choice",
     "invalid_value"},
    {"{\"prompt\": [1], \"guided_choice\": []}", 400, "guided_choice", "invalid_value"},
    {"{\"prompt\": [1], \"guided_grammar\": \"x\"}", 400, "guided_grammar", "unsupported"},
    {"{\"prompt\": [1], \"guided_json\": \"{nope\"}", 400, "guided_json", "invalid_value"},
    /* without the tokens' bytes (no sc_vocab) structured outputs are refused, not ignored */
    {"{\"prompt\": [1], \"guided_regex\": \"a\"}", 400, "guided_regex", "unsupported"},
    {"{\"prompt\": [1], \"best_of\": 2}", 400, "best_of", "unsupported_parameter"},
    {"{\"prompt\": [1], \"prompt_logprobs\": 1}", 400, "prompt_logprobs", "unsupported_parameter"},
    {"{\"prompt\": [1], \"user\": 5}", 400, "user", "invalid_type"},
    {"{\"prompt\": [1], \"return_token_ids\": \"y\"}", 400, "return_token_ids", "invalid_type"},
    {"{\"prompt\": [1], \"include_stop_str_in_output\": 0}", 400, "include_stop_str_in_output",
     "invalid_type"},
};

START_TEST(every_invalid_request_names_its_parameter) {
    openai_model_info info = info_for(byte_tok, 32);
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *bc = &bad_cases[i];
        openai_completion_request req;
        openai_error e;
        memset(&e, 0, sizeof e);
        int rc = openai_parse_completion(&info, bc->body, strlen(bc->body), &req, &e);
        ck_assert_msg(rc == -1, "accepted: %s", bc->body);
        ck_assert_msg(e.status == bc->status, "%s: status %d", bc->body, e.status);
        ck_assert_str_eq(e.type, "invalid_request_error");
        ck_assert_msg(strcmp(e.param, bc->param ? bc->param : "") == 0, "%s: param '%s'", bc->body,
                      e.param);
        ck_assert_msg(strcmp(e.code, bc->code) == 0, "%s: code '%s'", bc->body, e.code);
        ck_assert_msg(strlen(e.message) > 0, "%s: no message", bc->body);
        /* the body is {"error": {message, type, param, code}} */
        char *body = openai_error_body(&e);
        json_t *j = json_loads(body, 0, NULL);
        json_t *err = json_object_get(j, "error");
        ck_assert_str_eq(json_string_value(json_object_get(err, "message")), e.message);
        ck_assert_str_eq(json_string_value(json_object_get(err, "type")), "invalid_request_error");
        if (bc->param)
            ck_assert_str_eq(json_string_value(json_object_get(err, "param")), bc->param);
        else
            ck_assert(json_is_null(json_object_get(err, "param")));
        ck_assert_str_eq(json_string_value(json_object_get(err, "code")), bc->code);
        json_decref(j);
        free(body);
    }
}
END_TEST

/* Range errors come from sampler_param_check on the value as sent: the message quotes it the way
 * the client wrote it, not its float (1e300 is not "inf", 0.1 is not 0.100000001). */
typedef struct range_case {
    const char *body;
    const char *param;
    const char *message; /* a substring of the message */
} range_case;

static const range_case range_cases[] = {
    {"{\"prompt\": [1], \"temperature\": -1}", "temperature", "got -1"},
    {"{\"prompt\": [1], \"temperature\": 1e300}", "temperature",
     "and fit a 32-bit float, got 1e+300"},
    {"{\"prompt\": [1], \"top_p\": 0}", "top_p", "'top_p' must be in (0, 1], got 0"},
    {"{\"prompt\": [1], \"top_p\": 1.5}", "top_p", "got 1.5"},
    {"{\"prompt\": [1], \"top_p\": 1e-50}", "top_p", "got 1e-50 (0 as a 32-bit float)"},
    {"{\"prompt\": [1], \"top_k\": -2}", "top_k", "got -2"},
    {"{\"prompt\": [1], \"min_p\": 2}", "min_p", "'min_p' must be in [0, 1], got 2"},
    {"{\"prompt\": [1], \"min_p\": 1.1}", "min_p", "got 1.1"},
    {"{\"prompt\": [1], \"repetition_penalty\": 3}", "repetition_penalty", "in (0, 2], got 3"},
    {"{\"prompt\": [1], \"repetition_penalty\": -0.1}", "repetition_penalty", "got -0.1"},
    {"{\"prompt\": [1], \"presence_penalty\": 2.5}", "presence_penalty", "in [-2, 2], got 2.5"},
    {"{\"prompt\": [1], \"frequency_penalty\": -2.01}", "frequency_penalty", "got -2.01"},
};

START_TEST(range_errors_quote_the_value_as_sent) {
    openai_model_info info = info_for(byte_tok, 32);
    for (size_t i = 0; i < sizeof range_cases / sizeof range_cases[0]; i++) {
        const range_case *rc = &range_cases[i];
        openai_completion_request req;
        openai_error e;
        memset(&e, 0, sizeof e);
        ck_assert_msg(openai_parse_completion(&info, rc->body, strlen(rc->body), &req, &e) == -1,
                      "accepted: %s", rc->body);
        ck_assert_int_eq(e.status, 400);
        ck_assert_str_eq(e.param, rc->param);
        ck_assert_str_eq(e.code, "invalid_value");
        ck_assert_msg(strstr(e.message, rc->message), "%s: message '%s'", rc->body, e.message);
    }
}
END_TEST

/* The edges of each range are accepted and survive narrowing to float. */
START_TEST(range_edges_are_accepted) {
    openai_model_info info = info_for(byte_tok, 32);
    const char *body = "{\"prompt\": [1], \"temperature\": 0, \"top_p\": 1, \"top_k\": -1,"
                       " \"min_p\": 1, \"presence_penalty\": -2, \"frequency_penalty\": 2,"
                       " \"repetition_penalty\": 2}";
    openai_completion_request req;
    openai_error e;
    ck_assert_msg(openai_parse_completion(&info, body, strlen(body), &req, &e) == 0, "%s",
                  e.message);
    ck_assert_float_eq(req.params.repetition_penalty, 2.0f);
    ck_assert_int_eq(req.params.top_k, 0);
    kv_error kerr;
    ck_assert_int_eq(sampler_params_validate(&req.params, 256, &kerr), 0);
    openai_completion_request_free(&req);
}
END_TEST

START_TEST(defaults_follow_openai) {
    openai_model_info info = info_for(byte_tok, 64);
    openai_completion_request req;
    openai_error e;
    const char *body = "{\"prompt\": [5, 6, 7], \"user\": \"someone\", \"some_extension\": 1}";
    ck_assert_msg(openai_parse_completion(&info, body, strlen(body), &req, &e) == 0, "%s",
                  e.message);
    ck_assert_int_eq(req.n_prompts, 1);
    ck_assert_int_eq(req.prompts[0].n_ids, 3);
    ck_assert_ptr_null(req.prompts[0].text);
    ck_assert_int_eq(req.prompts[0].max_tokens, 16);
    ck_assert_int_eq(req.n, 1);
    ck_assert_float_eq(req.params.temperature, 1.0f);
    ck_assert_float_eq(req.params.top_p, 1.0f);
    ck_assert_int_eq(req.params.top_k, 0);
    ck_assert_float_eq(req.params.repetition_penalty, 1.0f);
    ck_assert(!req.params.has_seed);
    ck_assert_int_eq(req.logprobs, -1);
    ck_assert_int_eq(req.params.logprobs, -1);
    ck_assert_int_eq(req.params.prompt_logprobs, -1);
    ck_assert(!req.stream && !req.echo && !req.include_usage);
    ck_assert(req.skip_special_tokens);
    ck_assert_int_eq(req.n_stop, 0);
    ck_assert_ptr_null(req.cache_salt);
    openai_completion_request_free(&req);
}
END_TEST

START_TEST(valid_values_are_parsed) {
    openai_model_info info = info_for(byte_tok, 64);
    openai_completion_request req;
    openai_error e;
    const char *body =
        "{\"model\": \"m\", \"prompt\": [\"Hi\", \"a\\u00e9\"], \"max_tokens\": 8, "
        "\"temperature\": 0,"
        " \"top_p\": 0.5, \"top_k\": -1, \"min_p\": 0.1, \"n\": 3, \"seed\": -5, \"stop\": \"\\n\","
        " \"stop_token_ids\": [256, 10], \"stream\": true, \"stream_options\": {\"include_usage\": "
        "true},"
        " \"logprobs\": 5, \"echo\": true, \"presence_penalty\": -2, \"frequency_penalty\": 2,"
        " \"repetition_penalty\": 1.3, \"ignore_eos\": true, \"min_tokens\": 2, \"cache_salt\": "
        "\"tenant-a\","
        " \"return_token_ids\": true, \"return_tokens_as_token_ids\": true, \"best_of\": 1,"
        " \"suffix\": null, \"logit_bias\": {}}";
    ck_assert_msg(openai_parse_completion(&info, body, strlen(body), &req, &e) == 0, "%s",
                  e.message);
    ck_assert_int_eq(req.n_prompts, 2);
    ck_assert_str_eq(req.prompts[0].text, "Hi");
    ck_assert_int_eq(req.prompts[0].n_ids, 2);
    ck_assert_int_eq(req.prompts[0].ids[0], 'H');
    ck_assert_int_eq(req.prompts[1].n_ids, 3); /* "aé": a, C3, A9 */
    ck_assert_int_eq(req.params.max_tokens, 8);
    ck_assert_float_eq(req.params.temperature, 0.0f);
    ck_assert_int_eq(req.params.top_k, 0);
    ck_assert_int_eq(req.n, 3);
    ck_assert(req.params.has_seed);
    ck_assert_uint_eq(req.params.seed, (uint64_t)-5);
    ck_assert_int_eq(req.n_stop, 1);
    ck_assert_str_eq(req.stop[0], "\n");
    ck_assert_int_eq(req.params.n_stop_token_ids, 2);
    ck_assert_int_eq(req.params.stop_token_ids[0], 256);
    ck_assert(req.stream && req.include_usage && req.echo);
    ck_assert_int_eq(req.logprobs, 5);
    ck_assert_int_eq(req.params.logprobs, 5);
    ck_assert_int_eq(req.params.prompt_logprobs, 5); /* echo + logprobs */
    ck_assert_float_eq(req.params.presence_penalty, -2.0f);
    ck_assert(req.params.ignore_eos);
    ck_assert_int_eq(req.params.min_tokens, 2);
    ck_assert_str_eq(req.cache_salt, "tenant-a");
    ck_assert(req.return_token_ids && req.return_tokens_as_token_ids);
    openai_completion_request_free(&req);
}
END_TEST

START_TEST(max_tokens_against_the_context) {
    openai_model_info info = info_for(byte_tok, 20);
    openai_completion_request req;
    openai_error e;
    /* the default 16 is cut to what fits each prompt */
    const char *body = "{\"prompt\": [[1,1,1,1,1,1,1,1,1,1], [1]]}";
    ck_assert_msg(openai_parse_completion(&info, body, strlen(body), &req, &e) == 0, "%s",
                  e.message);
    ck_assert_int_eq(req.prompts[0].max_tokens, 10);
    ck_assert_int_eq(req.prompts[1].max_tokens, 16);
    openai_completion_request_free(&req);
    /* null: all that fits */
    body = "{\"prompt\": [1, 2, 3], \"max_tokens\": null}";
    ck_assert_msg(openai_parse_completion(&info, body, strlen(body), &req, &e) == 0, "%s",
                  e.message);
    ck_assert_int_eq(req.prompts[0].max_tokens, 17);
    openai_completion_request_free(&req);
    /* explicit and too long: an error that says the numbers */
    body = "{\"prompt\": [1, 2, 3], \"max_tokens\": 18}";
    ck_assert_int_eq(openai_parse_completion(&info, body, strlen(body), &req, &e), -1);
    ck_assert_str_eq(e.param, "max_tokens");
    ck_assert_ptr_nonnull(strstr(e.message, "maximum context length is 20 tokens"));
    ck_assert_ptr_nonnull(
        strstr(e.message, "requested 21 tokens (3 in the prompt, 18 in the completion)"));
}
END_TEST

START_TEST(response_shapes) {
    openai_usage u = {.prompt_tokens = 10,
                      .completion_tokens = 4,
                      .cached_tokens_gpu = 3,
                      .cached_tokens_host = 5,
                      .cached_tokens_disk = 16,
                      .cached_tokens_remote = 32};
    json_t *usage = openai_usage_json(&u);
    ck_assert_int_eq(json_integer_value(json_object_get(usage, "total_tokens")), 14);
    json_t *d = json_object_get(usage, "prompt_tokens_details");
    ck_assert_int_eq(json_integer_value(json_object_get(d, "cached_tokens")), 56);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "cached_tokens_disk")), 16);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "cached_tokens_remote")), 32);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "cached_tokens_gpu")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(d, "cached_tokens_host")), 5);

    json_t *lp = openai_logprobs_new();
    openai_logprobs_append(lp, "a", NAN, NULL, 0);
    json_t *top = json_pack("{s:f}", "b", -0.5);
    openai_logprobs_append(lp, "b", -INFINITY, top, 1);
    ck_assert(json_is_null(json_array_get(json_object_get(lp, "token_logprobs"), 0)));
    ck_assert_double_eq(json_real_value(json_array_get(json_object_get(lp, "token_logprobs"), 1)),
                        -9999.0);

    int32_t pids[] = {1, 2}, ids[] = {7};
    json_t *choice =
        openai_choice_json(0, "xy", 2, lp, KV_FINISH_STOP, json_string("\n"), pids, 2, ids, 1);
    json_t *resp =
        openai_completion_json("cmpl-1", 1700000000, "m", json_pack("[o]", choice), usage);
    char *text = json_dumps(resp, JSON_COMPACT);
    json_decref(resp);
    /* key names and nesting as OpenAI's legacy completions + vLLM's extensions */
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    ck_assert_str_eq(json_string_value(json_object_get(j, "object")), "text_completion");
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(c, "finish_reason")), "stop");
    ck_assert_str_eq(json_string_value(json_object_get(c, "stop_reason")), "\n");
    ck_assert_int_eq(
        json_array_size(json_object_get(json_object_get(c, "logprobs"), "text_offset")), 2);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(c, "token_ids"), 0)), 7);
    ck_assert_int_eq(json_array_size(json_object_get(c, "prompt_token_ids")), 2);
    json_decref(j);

    size_t n;
    char *ev = openai_sse_event(json_pack("{s:i}", "a", 1), &n);
    ck_assert_str_eq(ev, "data: {\"a\":1}\n\n");
    ck_assert_uint_eq(n, strlen(ev));
    free(ev);
    char *t = openai_token_text(byte_tok, 65, false);
    ck_assert_str_eq(t, "A");
    free(t);
    t = openai_token_text(byte_tok, 65, true);
    ck_assert_str_eq(t, "token_id:65");
    free(t);
}
END_TEST

START_TEST(tokenize_detokenize_errors) {
    openai_model_info info = info_for(byte_tok, 32);
    char *out = NULL;
    openai_error e;
    ck_assert_int_eq(openai_tokenize(&info, LIT("{}"), &out, &e), -1);
    ck_assert_str_eq(e.param, "prompt");
    ck_assert_int_eq(
        openai_tokenize(&info, LIT("{\"prompt\": \"a\", \"add_special_tokens\": 1}"), &out, &e),
        -1);
    ck_assert_str_eq(e.param, "add_special_tokens");
    ck_assert_int_eq(
        openai_tokenize(&info, LIT("{\"prompt\": \"a\", \"model\": \"zz\"}"), &out, &e), -1);
    ck_assert_int_eq(e.status, 404);
    ck_assert_int_eq(openai_detokenize(&info, LIT("{\"tokens\": [1, \"a\"]}"), &out, &e), -1);
    ck_assert_str_eq(e.code, "invalid_type");
    ck_assert_int_eq(openai_detokenize(&info, LIT("{\"tokens\": [-3]}"), &out, &e), -1);
    ck_assert_str_eq(e.code, "invalid_value");
    ck_assert_int_eq(openai_detokenize(&info, LIT("{}"), &out, &e), -1);
    ck_assert_str_eq(e.param, "tokens");
    openai_model_info none = info_for(NULL, 32);
    ck_assert_int_eq(openai_tokenize(&none, LIT("{\"prompt\": \"a\"}"), &out, &e), -1);
    ck_assert_int_eq(e.status, 503);
}
END_TEST

/* A text prompt over max_model_len tokens is refused once tokenizing passes the limit ("more than
 * N"); at the limit the exact count is said; /tokenize counts past it (byte_tok: a token a byte).
 */
START_TEST(text_prompt_over_the_context_stops_at_the_limit) {
    openai_model_info info = info_for(byte_tok, 8);
    openai_error e;
    openai_completion_request req;
    const char *body = "{\"prompt\": \"abcdefghij\"}";
    ck_assert_int_eq(openai_parse_completion(&info, LIT(body), &req, &e), -1);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.param, "prompt");
    ck_assert_str_eq(e.code, "context_length_exceeded");
    ck_assert_msg(strstr(e.message, "maximum context length is 8 tokens, but the prompt has more "
                                    "than 8 tokens"),
                  "%s", e.message);
    body = "{\"prompt\": [\"ab\", \"abcdefghij\"]}";
    ck_assert_int_eq(openai_parse_completion(&info, LIT(body), &req, &e), -1);
    ck_assert_str_eq(e.code, "context_length_exceeded");
    body = "{\"prompt\": \"abcdefgh\"}"; /* exactly 8: counted, the existing message */
    ck_assert_int_eq(openai_parse_completion(&info, LIT(body), &req, &e), -1);
    ck_assert_msg(strstr(e.message, "but the prompt has 8 tokens"), "%s", e.message);
    body = "{\"prompt\": \"abcdefg\"}";
    ck_assert_msg(openai_parse_completion(&info, LIT(body), &req, &e) == 0, "%s", e.message);
    ck_assert_int_eq(req.prompts[0].n_ids, 7);
    openai_completion_request_free(&req);
    char *out;
    body = "{\"prompt\": \"abcdefghij\"}";
    ck_assert_msg(openai_tokenize(&info, LIT(body), &out, &e) == 0, "%s", e.message);
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "count")), 10);
    json_decref(j);
    free(out);
}
END_TEST

/* ---- against the stories260K tokenizer (Hugging Face ids published in the test data) ---- */

static char *testdata_path(const char *rel) {
    const char *root = getenv("KVSERVE_TESTDATA");
    if (!root) return NULL;
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/%s", root, rel);
    FILE *f = fopen(p, "rb");
    if (!f) {
        free(p);
        return NULL;
    }
    fclose(f);
    return p;
}

START_TEST(stories260k_tokenize_and_detokenize) {
    char *dir = testdata_path("models/stories260K");
    char *expected_path = testdata_path("models/stories260K/expected.json");
    tokenizer *tok;
    kv_error err;
    ck_assert_msg(tokenizer_load(&tok, dir, &err) == 0, "%s", err.msg);
    openai_model_info info = info_for(tok, 512);
    openai_error e;
    char *out;
    const char *body = "{\"prompt\": \"Once upon a time\"}";
    ck_assert_msg(openai_tokenize(&info, body, strlen(body), &out, &e) == 0, "%s", e.message);
    json_t *j = json_loads(out, 0, NULL);
    free(out);
    json_t *want = json_pack("[i,i,i,i,i]", 1, 403, 407, 261, 378);
    ck_assert(json_equal(json_object_get(j, "tokens"), want));
    ck_assert_int_eq(json_integer_value(json_object_get(j, "count")), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "max_model_len")), 512);
    json_decref(j);
    json_decref(want);

    /* the completion request tokenizes the same way (BOS added) */
    openai_completion_request req;
    ck_assert_msg(openai_parse_completion(&info, body, strlen(body), &req, &e) == 0, "%s",
                  e.message);
    ck_assert_int_eq(req.prompts[0].n_ids, 5);
    ck_assert_int_eq(req.prompts[0].ids[0], 1);
    ck_assert_int_eq(req.prompts[0].ids[4], 378);
    openai_completion_request_free(&req);

    /* llama2.c's published 200 greedy tokens decode to its published text */
    json_t *expected = json_load_file(expected_path, 0, NULL);
    ck_assert_ptr_nonnull(expected);
    json_t *g = json_object_get(expected, "greedy_from_bos");
    json_t *req_body = json_pack("{s:O}", "tokens", json_object_get(g, "ids"));
    char *text = json_dumps(req_body, 0);
    ck_assert_msg(openai_detokenize(&info, text, strlen(text), &out, &e) == 0, "%s", e.message);
    j = json_loads(out, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(j, "prompt")),
                     json_string_value(json_object_get(g, "text")));
    json_decref(j);
    free(out);
    free(text);
    json_decref(req_body);
    json_decref(expected);
    tokenizer_free(tok);
    free(dir);
    free(expected_path);
}
END_TEST

int main(void) {
    byte_tok = byte_tokenizer_new();
    Suite *s = suite_create("openai");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, every_invalid_request_names_its_parameter);
    tcase_add_test(tc, range_errors_quote_the_value_as_sent);
    tcase_add_test(tc, range_edges_are_accepted);
    tcase_add_test(tc, defaults_follow_openai);
    tcase_add_test(tc, valid_values_are_parsed);
    tcase_add_test(tc, max_tokens_against_the_context);
    tcase_add_test(tc, response_shapes);
    tcase_add_test(tc, tokenize_detokenize_errors);
    tcase_add_test(tc, text_prompt_over_the_context_stops_at_the_limit);
    char *dir = testdata_path("models/stories260K/tokenizer.json");
    if (dir)
        tcase_add_test(tc, stories260k_tokenize_and_detokenize);
    else
        printf(
            "SKIP: stories260k_tokenize_and_detokenize (no KVSERVE_TESTDATA/models/stories260K)\n");
    free(dir);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    tokenizer_free(byte_tok);
    return failed ? 1 : 0;
}
