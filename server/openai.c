/* /v1/completions request validation. Every parameter is read by a typed getter that names the
 * parameter in its error; limits follow vLLM's SamplingParams checks where vLLM has one (the
 * sampling ranges are model/sampler.c's table, checked here on the value as sent). Unknown
 * keys are ignored, as vLLM does; known but unsupported ones with a non-default value are errors.
 */
#include "server/openai.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <utf8proc.h>

#define OPENAI_MAX_CHOICES  256  /* prompts x n in one request */
#define OPENAI_MAX_STOP     64   /* stop strings per request */
#define OPENAI_MAX_STOP_LEN 1024 /* bytes per stop string */
#define OPENAI_MAX_STOP_IDS 1024

int openai_error_set(openai_error *e, int status, const char *type, const char *param,
                     const char *code, const char *fmt, ...) {
    if (!e) return -1;
    e->status = status;
    e->type = type;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

void openai_utf8_sanitize(char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t len =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (len <= 0 || cp == 0) { /* invalid, or NUL (which would cut the C string) */
            s[i++] = '?';
            continue;
        }
        i += (size_t)len;
    }
}

char *openai_error_body(const openai_error *e) {
    char message[sizeof e->message];
    snprintf(message, sizeof message, "%s", e->message);
    openai_utf8_sanitize(message, strlen(message)); /* it may quote (or cut) the client's bytes */
    json_t *inner = json_pack("{s:s, s:s}", "message", message, "type", e->type);
    json_object_set_new(inner, "param", e->param[0] ? json_string(e->param) : json_null());
    json_object_set_new(inner, "code", e->code[0] ? json_string(e->code) : json_null());
    json_t *root = json_pack("{s:o}", "error", inner);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    KV_CHECK(s);
    return s;
}

static int bad_value(openai_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad_value(openai_error *e, const char *param, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return openai_error_set(e, 400, "invalid_request_error", param, "invalid_value", "%s", msg);
}

static int bad_type(openai_error *e, const char *param, const char *what) {
    return openai_error_set(e, 400, "invalid_request_error", param, "invalid_type",
                            "'%s' must be %s", param, what);
}

/* ---- typed getters: absent or null keeps *out ---- */

static bool present(const json_t *v) {
    return v && !json_is_null(v);
}

static int get_bool(json_t *root, const char *key, bool *out, openai_error *e) {
    json_t *v = json_object_get(root, key);
    if (!present(v)) return 0;
    if (!json_is_boolean(v)) return bad_type(e, key, "a boolean");
    *out = json_is_true(v);
    return 0;
}

/* An integer (a real with no fraction is accepted, as pydantic does) within [lo, hi]. */
static int get_int(json_t *root, const char *key, long long lo, long long hi, long long *out,
                   bool *given, openai_error *e) {
    json_t *v = json_object_get(root, key);
    if (!present(v)) return 0;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e18) {
        x = (long long)json_real_value(v);
    } else {
        return bad_type(e, key, "an integer");
    }
    if (x < lo || x > hi) {
        if (hi == LLONG_MAX)
            return bad_value(e, key, "'%s' must be at least %lld, got %lld", key, lo, x);
        return bad_value(e, key, "'%s' must be between %lld and %lld, got %lld", key, lo, hi, x);
    }
    *out = x;
    if (given) *given = true;
    return 0;
}

static int get_number(json_t *root, const char *key, double *out, openai_error *e) {
    json_t *v = json_object_get(root, key);
    if (!present(v)) return 0;
    if (!json_is_number(v)) return bad_type(e, key, "a number");
    *out = json_number_value(v);
    return 0;
}

/* ---- prompts ---- */

static int prompt_from_ids(const openai_model_info *info, json_t *arr, openai_prompt *p,
                           openai_error *e) {
    size_t n = json_array_size(arr);
    p->ids = kv_malloc((n ? n : 1) * sizeof *p->ids);
    p->n_ids = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v))
            return bad_type(e, "prompt",
                            "a string, an array of strings, an array of token ids or "
                            "an array of arrays of token ids");
        json_int_t id = json_integer_value(v);
        if (id < 0 || (info->vocab_size > 0 && id >= info->vocab_size) || id > INT32_MAX)
            return bad_value(e, "prompt", "token id %lld is out of vocabulary (size %d)",
                             (long long)id, info->vocab_size);
        p->ids[i] = (int32_t)id;
    }
    return 0;
}

int openai_check_prompt_bytes(const openai_model_info *info, size_t len, openai_error *e) {
    if (info->max_prompt_bytes <= 0 || (long long)len <= info->max_prompt_bytes) return 0;
    return bad_value(e, "prompt",
                     "This model's maximum context length is %d tokens, and a prompt of %zu "
                     "bytes is longer than any %d tokens can be (at most %lld bytes)",
                     info->max_model_len, len, info->max_model_len, info->max_prompt_bytes);
}

int openai_tokenize_prompt(const openai_model_info *info, const char *text, size_t len,
                           bool add_special_tokens, bool limited, const char *param,
                           const char *what, int32_t **ids, int *n_ids, openai_error *e) {
    kv_error kerr = {{0}};
    int limit = limited && info->max_model_len > 0 ? info->max_model_len : -1;
    int rc = tokenizer_encode_cancel(info->tok, text, len, add_special_tokens, limit, info->cancel,
                                     ids, n_ids, &kerr);
    if (rc == TOKENIZER_CANCELLED)
        return openai_error_set(e, 503, "server_error", NULL, "shutting_down",
                                "the server is shutting down");
    if (rc == TOKENIZER_OVER_LIMIT)
        return openai_error_set(e, 400, "invalid_request_error", param, "context_length_exceeded",
                                "This model's maximum context length is %d tokens, but the prompt "
                                "has more than %d tokens.",
                                info->max_model_len, info->max_model_len);
    if (rc) return bad_value(e, param, "cannot tokenize the %s: %s", what, kerr.msg);
    return 0;
}

static int prompt_from_text(const openai_model_info *info, json_t *s, openai_prompt *p,
                            openai_error *e) {
    if (!info->tok)
        return openai_error_set(e, 503, "server_error", NULL, "model_not_ready",
                                "the tokenizer is not loaded yet");
    if (openai_check_prompt_bytes(info, json_string_length(s), e)) return -1;
    p->text = kv_strdup(json_string_value(s));
    return openai_tokenize_prompt(info, json_string_value(s), json_string_length(s), true, true,
                                  "prompt", "prompt", &p->ids, &p->n_ids, e);
}

static int parse_prompts(const openai_model_info *info, json_t *root,
                         openai_completion_request *req, openai_error *e) {
    json_t *v = json_object_get(root, "prompt");
    const char *shape = "a string, an array of strings, an array of token ids or an array of "
                        "arrays of token ids";
    if (!present(v))
        return openai_error_set(e, 400, "invalid_request_error", "prompt",
                                "missing_required_parameter", "'prompt' is required");
    if (json_is_string(v)) {
        req->prompts = kv_calloc(1, sizeof *req->prompts);
        req->n_prompts = 1;
        return prompt_from_text(info, v, &req->prompts[0], e);
    }
    if (!json_is_array(v)) return bad_type(e, "prompt", shape);
    size_t n = json_array_size(v);
    if (n == 0) return bad_value(e, "prompt", "'prompt' must not be empty");
    json_t *first = json_array_get(v, 0);
    if (json_is_integer(first)) { /* one prompt of token ids */
        req->prompts = kv_calloc(1, sizeof *req->prompts);
        req->n_prompts = 1;
        return prompt_from_ids(info, v, &req->prompts[0], e);
    }
    if (n > OPENAI_MAX_CHOICES)
        return bad_value(e, "prompt", "at most %d prompts per request, got %zu", OPENAI_MAX_CHOICES,
                         n);
    req->prompts = kv_calloc(n, sizeof *req->prompts);
    req->n_prompts = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(v, i);
        bool same_kind = json_is_string(first) ? json_is_string(item) : json_is_array(item);
        if (!same_kind || !(json_is_string(item) || json_is_array(item)))
            return bad_type(e, "prompt", shape);
        int rc = json_is_string(item) ? prompt_from_text(info, item, &req->prompts[i], e)
                                      : prompt_from_ids(info, item, &req->prompts[i], e);
        if (rc) return -1;
    }
    return 0;
}

/* ---- string lists ---- */

static int parse_stop(json_t *root, openai_completion_request *req, openai_error *e) {
    json_t *v = json_object_get(root, "stop");
    if (!present(v)) return 0;
    size_t n = json_is_string(v) ? 1 : json_array_size(v);
    if (!json_is_string(v) && !json_is_array(v))
        return bad_type(e, "stop", "a string or an array of strings");
    if (n > OPENAI_MAX_STOP)
        return bad_value(e, "stop", "at most %d stop strings, got %zu", OPENAI_MAX_STOP, n);
    req->stop = kv_calloc(n ? n : 1, sizeof *req->stop);
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_string(v) ? v : json_array_get(v, i);
        if (!json_is_string(s)) return bad_type(e, "stop", "a string or an array of strings");
        size_t len = json_string_length(s);
        if (len == 0) return bad_value(e, "stop", "stop strings must not be empty");
        if (len > OPENAI_MAX_STOP_LEN || strlen(json_string_value(s)) != len)
            return bad_value(e, "stop", "stop strings must be at most %d bytes without NUL",
                             OPENAI_MAX_STOP_LEN);
        req->stop[req->n_stop++] = kv_strdup(json_string_value(s));
    }
    return 0;
}

static int parse_stop_token_ids(const openai_model_info *info, json_t *root, sampler_params *p,
                                openai_error *e) {
    json_t *v = json_object_get(root, "stop_token_ids");
    if (!present(v)) return 0;
    if (!json_is_array(v)) return bad_type(e, "stop_token_ids", "an array of token ids");
    size_t n = json_array_size(v);
    if (n > OPENAI_MAX_STOP_IDS)
        return bad_value(e, "stop_token_ids", "at most %d stop token ids, got %zu",
                         OPENAI_MAX_STOP_IDS, n);
    free(p->stop_token_ids);
    p->stop_token_ids = kv_malloc((n ? n : 1) * sizeof *p->stop_token_ids);
    p->n_stop_token_ids = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *id = json_array_get(v, i);
        if (!json_is_integer(id)) return bad_type(e, "stop_token_ids", "an array of token ids");
        json_int_t x = json_integer_value(id);
        if (x < 0 || (info->vocab_size > 0 && x >= info->vocab_size) || x > INT32_MAX)
            return bad_value(e, "stop_token_ids", "token id %lld is out of vocabulary (size %d)",
                             (long long)x, info->vocab_size);
        p->stop_token_ids[p->n_stop_token_ids++] = (int32_t)x;
    }
    return 0;
}

/* ---- the request ---- */

int openai_check_model(const openai_model_info *info, json_t *root, openai_error *e) {
    json_t *v = json_object_get(root, "model");
    if (!present(v)) return 0;
    if (!json_is_string(v)) return bad_type(e, "model", "a string");
    if (strcmp(json_string_value(v), info->served_model_name) != 0)
        return openai_error_set(e, 404, "invalid_request_error", "model", "model_not_found",
                                "The model `%.200s` does not exist.", json_string_value(v));
    return 0;
}

/* Parameters kvserve knows but does not implement: an error when set to something other than
 * their default, so a client never silently gets a different behaviour. */
static int reject_unsupported(json_t *root, openai_error *e) {
    json_t *v = json_object_get(root, "suffix");
    if (present(v) && !(json_is_string(v) && json_string_length(v) == 0))
        return openai_error_set(e, 400, "invalid_request_error", "suffix", "unsupported_parameter",
                                "'suffix' is not supported");
    v = json_object_get(root, "prompt_logprobs");
    if (present(v))
        return openai_error_set(e, 400, "invalid_request_error", "prompt_logprobs",
                                "unsupported_parameter",
                                "'prompt_logprobs' is not supported; use echo with logprobs");
    v = json_object_get(root, "best_of");
    if (present(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
        return openai_error_set(e, 400, "invalid_request_error", "best_of", "unsupported_parameter",
                                "'best_of' is not supported");
    v = json_object_get(root, "user");
    if (present(v) && !json_is_string(v)) return bad_type(e, "user", "a string");
    return 0;
}

/* The range check for one sampling parameter, on the value as sent (sampler.c owns the ranges). */
static int check_range(const char *key, double x, openai_error *e) {
    kv_error kerr;
    if (sampler_param_check(key, x, &kerr)) return bad_value(e, key, "%s", kerr.msg);
    return 0;
}

/* A number, range-checked before it is narrowed into *dst. */
static int get_ranged_float(json_t *root, const char *key, float *dst, openai_error *e) {
    double x = *dst;
    if (get_number(root, key, &x, e) || check_range(key, x, e)) return -1;
    *dst = (float)x;
    return 0;
}

static int parse_sampling(json_t *root, openai_completion_request *req, openai_error *e) {
    sampler_params *p = &req->params;
    long long i;

    if (get_ranged_float(root, "temperature", &p->temperature, e) ||
        get_ranged_float(root, "top_p", &p->top_p, e) ||
        get_ranged_float(root, "min_p", &p->min_p, e) ||
        get_ranged_float(root, "presence_penalty", &p->presence_penalty, e) ||
        get_ranged_float(root, "frequency_penalty", &p->frequency_penalty, e) ||
        get_ranged_float(root, "repetition_penalty", &p->repetition_penalty, e))
        return -1;

    i = p->top_k;
    if (get_int(root, "top_k", LLONG_MIN, LLONG_MAX, &i, NULL, e) ||
        check_range("top_k", (double)i, e))
        return -1;
    p->top_k = i <= 0 ? 0 : (int)i;

    bool seeded = false;
    long long seed = 0;
    if (get_int(root, "seed", LLONG_MIN, LLONG_MAX, &seed, &seeded, e)) return -1;
    if (seeded) {
        p->has_seed = true;
        p->seed = (uint64_t)seed;
    }
    if (get_bool(root, "ignore_eos", &p->ignore_eos, e)) return -1;

    /* max_tokens: default 16 as OpenAI; null = as many as fit (resolved per prompt) */
    i = 16;
    json_t *mt = json_object_get(root, "max_tokens");
    if (mt && json_is_null(mt)) i = INT_MAX;
    if (get_int(root, "max_tokens", 1, INT_MAX, &i, &req->max_tokens_given, e)) return -1;
    p->max_tokens = (int)i;

    i = 0;
    if (get_int(root, "min_tokens", 0, INT_MAX, &i, NULL, e)) return -1;
    if (i > p->max_tokens)
        return bad_value(e, "min_tokens",
                         "'min_tokens' must be less than or equal to max_tokens=%d, got %lld",
                         p->max_tokens, i);
    p->min_tokens = (int)i;

    i = -1;
    if (get_int(root, "logprobs", 0, SAMPLER_MAX_LOGPROBS, &i, NULL, e)) return -1;
    req->logprobs = (int)i;
    p->logprobs = (int)i;
    return 0;
}

static int parse_stream(json_t *root, openai_completion_request *req, openai_error *e) {
    if (get_bool(root, "stream", &req->stream, e)) return -1;
    json_t *so = json_object_get(root, "stream_options");
    if (!present(so)) return 0;
    if (!json_is_object(so)) return bad_type(e, "stream_options", "an object");
    if (!req->stream)
        return bad_value(e, "stream_options",
                         "'stream_options' can only be set when stream is true");
    json_t *v = json_object_get(so, "include_usage");
    if (present(v) && !json_is_boolean(v))
        return bad_type(e, "stream_options.include_usage", "a boolean");
    req->include_usage = json_is_true(v);
    v = json_object_get(so, "continuous_usage_stats");
    if (present(v) && !json_is_boolean(v))
        return bad_type(e, "stream_options.continuous_usage_stats", "a boolean");
    req->continuous_usage = json_is_true(v);
    return 0;
}

/* Context length: a prompt must leave room for one token; an explicit max_tokens must fit beside
 * every prompt; the default (16, or null = all that fits) is cut to what fits each prompt. */
static int check_lengths(const openai_model_info *info, openai_completion_request *req,
                         openai_error *e) {
    int longest = 0;
    for (int k = 0; k < req->n_prompts; k++) {
        int n = req->prompts[k].n_ids;
        if (n == 0) return bad_value(e, "prompt", "the prompt is empty (0 tokens)");
        if (n > longest) longest = n;
        req->prompts[k].max_tokens = req->params.max_tokens;
        if (info->max_model_len > n && req->params.max_tokens > info->max_model_len - n)
            req->prompts[k].max_tokens = info->max_model_len - n;
    }
    if (info->max_model_len <= 0) return 0;
    if (longest >= info->max_model_len)
        return openai_error_set(e, 400, "invalid_request_error", "prompt",
                                "context_length_exceeded",
                                "This model's maximum context length is %d tokens, but the prompt "
                                "has %d tokens.",
                                info->max_model_len, longest);
    int room = info->max_model_len - longest;
    if (req->params.max_tokens > room) {
        if (req->max_tokens_given)
            return openai_error_set(
                e, 400, "invalid_request_error", "max_tokens", "context_length_exceeded",
                "This model's maximum context length is %d tokens. However, you "
                "requested %lld tokens (%d in the prompt, %d in the completion). "
                "Please reduce the length of the prompt or completion.",
                info->max_model_len, (long long)longest + req->params.max_tokens, longest,
                req->params.max_tokens);
    }
    return 0;
}

/* Bounds the logprobs work (and body size) of one request, as vLLM's max_logprobs does: each
 * token of each choice carries logprobs + 1 entries, the echoed prompt included. */
static int check_logprobs_work(const openai_model_info *info, const openai_completion_request *req,
                               openai_error *e) {
    if (req->logprobs < 0) return 0;
    int max_lp = info->max_logprobs > 0 ? info->max_logprobs : SAMPLER_MAX_LOGPROBS;
    if (req->logprobs > max_lp)
        return bad_value(e, "logprobs", "logprobs must be at most %d (max_logprobs), got %d",
                         max_lp, req->logprobs);
    if (info->max_logprob_entries <= 0) return 0;
    long long entries = 0;
    for (int k = 0; k < req->n_prompts; k++) {
        const openai_prompt *p = &req->prompts[k];
        long long tokens = (long long)p->max_tokens + (req->echo ? p->n_ids : 0);
        entries += (long long)req->n * tokens * (req->logprobs + 1);
    }
    if (entries > info->max_logprob_entries)
        return bad_value(e, "logprobs",
                         "n x tokens x (logprobs + 1) is %lld, over the limit of %lld "
                         "(max_logprob_entries): lower n, max_tokens or logprobs",
                         entries, info->max_logprob_entries);
    return 0;
}

int openai_parse_completion(const openai_model_info *info, const char *body, size_t len,
                            openai_completion_request *req, openai_error *e) {
    memset(req, 0, sizeof *req);
    if (info->defaults)
        sampler_params_copy(&req->params, info->defaults);
    else
        sampler_params_default(&req->params);
    req->n = 1;
    req->logprobs = -1;
    req->skip_special_tokens = true;

    json_t *root = openai_load_object(body, len, e);
    if (!root) return -1;
    int rc = -1;
    long long n = 1;
    if (openai_check_model(info, root, e) || reject_unsupported(root, e) ||
        parse_sampling(root, req, e) || parse_stream(root, req, e) || parse_stop(root, req, e) ||
        parse_stop_token_ids(info, root, &req->params, e) ||
        openai_parse_structured(info, root, &req->params, e))
        goto done;
    if (get_int(root, "n", 1, OPENAI_MAX_CHOICES, &n, NULL, e)) goto done;
    req->n = (int)n;
    if (get_bool(root, "echo", &req->echo, e) ||
        get_bool(root, "include_stop_str_in_output", &req->include_stop_str_in_output, e) ||
        get_bool(root, "skip_special_tokens", &req->skip_special_tokens, e) ||
        get_bool(root, "return_token_ids", &req->return_token_ids, e) ||
        get_bool(root, "return_tokens_as_token_ids", &req->return_tokens_as_token_ids, e))
        goto done;
    json_t *salt = json_object_get(root, "cache_salt");
    if (present(salt)) {
        if (!json_is_string(salt) || json_string_length(salt) == 0 ||
            strlen(json_string_value(salt)) != json_string_length(salt)) {
            bad_value(e, "cache_salt", "'cache_salt' must be a non-empty string");
            goto done;
        }
        req->cache_salt = kv_strdup(json_string_value(salt));
    }
    if (req->echo && req->logprobs >= 0) req->params.prompt_logprobs = req->logprobs;
    if (parse_prompts(info, root, req, e)) goto done;
    if ((long long)req->n_prompts * req->n > OPENAI_MAX_CHOICES) {
        bad_value(e, "n", "at most %d choices per request (prompts x n), got %lld",
                  OPENAI_MAX_CHOICES, (long long)req->n_prompts * req->n);
        goto done;
    }
    rc = check_lengths(info, req, e);
    if (rc == 0) rc = check_logprobs_work(info, req, e);
done:
    json_decref(root);
    if (rc) openai_completion_request_free(req);
    return rc;
}

void openai_completion_request_free(openai_completion_request *req) {
    for (int k = 0; k < req->n_prompts; k++) {
        free(req->prompts[k].ids);
        free(req->prompts[k].text);
    }
    free(req->prompts);
    for (int k = 0; k < req->n_stop; k++) free(req->stop[k]);
    free(req->stop);
    free(req->cache_salt);
    free(req->forced_tool);
    sampler_params_free(&req->params);
    memset(req, 0, sizeof *req);
}
