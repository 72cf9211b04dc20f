/* OpenAI response bodies: completion objects, streamed chunks, usage, legacy logprobs, and the
 * /tokenize and /detokenize endpoints (vLLM's shapes). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "server/openai.h"

json_t *openai_usage_json(const openai_usage *u) {
    json_t *details = json_pack("{s:i, s:i, s:i, s:i, s:i}", "cached_tokens",
                                u->cached_tokens_gpu + u->cached_tokens_host +
                                    u->cached_tokens_disk + u->cached_tokens_remote,
                                "cached_tokens_gpu", u->cached_tokens_gpu, "cached_tokens_host",
                                u->cached_tokens_host, "cached_tokens_disk", u->cached_tokens_disk,
                                "cached_tokens_remote", u->cached_tokens_remote);
    return json_pack("{s:i, s:i, s:i, s:o}", "prompt_tokens", u->prompt_tokens, "completion_tokens",
                     u->completion_tokens, "total_tokens", u->prompt_tokens + u->completion_tokens,
                     "prompt_tokens_details", details);
}

double openai_logprob_value(double lp) {
    if (isnan(lp) || lp < -9999.0) return -9999.0;
    return lp;
}

json_t *openai_logprobs_new(void) {
    return json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs",
                     "text_offset");
}

void openai_logprobs_append(json_t *lp, const char *token, double logprob, json_t *top,
                            int text_offset) {
    json_array_append_new(json_object_get(lp, "tokens"), json_string(token));
    json_array_append_new(json_object_get(lp, "token_logprobs"),
                          isnan(logprob) ? json_null() : json_real(openai_logprob_value(logprob)));
    json_array_append_new(json_object_get(lp, "top_logprobs"), top ? top : json_null());
    json_array_append_new(json_object_get(lp, "text_offset"), json_integer(text_offset));
}

char *openai_token_text(const tokenizer *tok, int32_t id, bool as_ids) {
    char *text = NULL;
    size_t len;
    if (!as_ids && tok && tokenizer_decode(tok, &id, 1, false, &text, &len, NULL) == 0) {
        /* a token that is part of a UTF-8 sequence decodes to U+FFFD, as in Hugging Face; never
         * let anything else through into JSON */
        openai_utf8_sanitize(text, len);
        return text;
    }
    free(text);
    char buf[32];
    snprintf(buf, sizeof buf, "token_id:%d", (int)id);
    return kv_strdup(buf);
}

static json_t *ids_json(const int32_t *ids, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(ids[i]));
    return a;
}

json_t *openai_choice_json(int index, const char *text, size_t text_len, json_t *logprobs,
                           kv_finish finish, json_t *stop_reason, const int32_t *prompt_ids,
                           int n_prompt_ids, const int32_t *ids, int n_ids) {
    const char *fin = kv_finish_name(finish);
    json_t *c = json_object();
    json_object_set_new(c, "index", json_integer(index));
    json_t *jtext = json_stringn(text ? text : "", text ? text_len : 0);
    if (!jtext) { /* not valid UTF-8: cannot happen with a conforming tokenizer, but never crash */
        char *copy = kv_malloc(text_len + 1);
        memcpy(copy, text, text_len);
        openai_utf8_sanitize(copy, text_len);
        jtext = json_stringn(copy, text_len);
        free(copy);
    }
    json_object_set_new(c, "text", jtext);
    json_object_set_new(c, "logprobs", logprobs ? logprobs : json_null());
    json_object_set_new(c, "finish_reason", fin ? json_string(fin) : json_null());
    json_object_set_new(c, "stop_reason", stop_reason ? stop_reason : json_null());
    if (prompt_ids) json_object_set_new(c, "prompt_token_ids", ids_json(prompt_ids, n_prompt_ids));
    if (ids) json_object_set_new(c, "token_ids", ids_json(ids, n_ids));
    return c;
}

json_t *openai_completion_json(const char *id, long long created, const char *model,
                               json_t *choices, json_t *usage) {
    json_t *r = json_object();
    json_object_set_new(r, "id", json_string(id));
    json_object_set_new(r, "object", json_string("text_completion"));
    json_object_set_new(r, "created", json_integer(created));
    json_object_set_new(r, "model", json_string(model));
    json_object_set_new(r, "choices", choices);
    if (usage) json_object_set_new(r, "usage", usage);
    return r;
}

char *openai_sse_event(json_t *j, size_t *len) {
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    KV_CHECK(body);
    size_t n = strlen(body);
    char *out = kv_malloc(n + 9);
    memcpy(out, "data: ", 6);
    memcpy(out + 6, body, n);
    memcpy(out + 6 + n, "\n\n", 3);
    free(body);
    *len = n + 8;
    return out;
}

/* ---- /tokenize, /detokenize ---- */

json_t *openai_load_object(const char *body, size_t len, openai_error *e) {
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root) {
        openai_error_set(e, 400, "invalid_request_error", NULL, "invalid_json",
                         "Invalid JSON in request body: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        openai_error_set(e, 400, "invalid_request_error", NULL, "invalid_json",
                         "the request body must be a JSON object");
        return NULL;
    }
    return root;
}

static char *dump_and_free(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    KV_CHECK(s);
    return s;
}

int openai_tokenize(const openai_model_info *info, const char *body, size_t len, char **out,
                    openai_error *e) {
    json_t *root = openai_load_object(body, len, e);
    if (!root) return -1;
    int rc = -1;
    int32_t *ids = NULL;
    int n_ids = 0;
    bool add_special = true;
    json_t *prompt = json_object_get(root, "prompt");
    json_t *special = json_object_get(root, "add_special_tokens");
    if (openai_check_model(info, root, e)) goto done;
    if (!prompt || json_is_null(prompt)) {
        openai_error_set(e, 400, "invalid_request_error", "prompt", "missing_required_parameter",
                         "'prompt' is required");
        goto done;
    }
    if (!json_is_string(prompt)) {
        openai_error_set(e, 400, "invalid_request_error", "prompt", "invalid_type",
                         "'prompt' must be a string");
        goto done;
    }
    if (special && !json_is_null(special)) {
        if (!json_is_boolean(special)) {
            openai_error_set(e, 400, "invalid_request_error", "add_special_tokens", "invalid_type",
                             "'add_special_tokens' must be a boolean");
            goto done;
        }
        add_special = json_is_true(special);
    }
    if (!info->tok) {
        openai_error_set(e, 503, "server_error", NULL, "model_not_ready",
                         "the tokenizer is not loaded yet");
        goto done;
    }
    if (openai_check_prompt_bytes(info, json_string_length(prompt), e)) goto done;
    if (openai_tokenize_prompt(info, json_string_value(prompt), json_string_length(prompt),
                               add_special, false, "prompt", "prompt", &ids, &n_ids, e))
        goto done;
    json_t *tokens = ids_json(ids, n_ids);
    *out = dump_and_free(json_pack("{s:o, s:i, s:i}", "tokens", tokens, "count", n_ids,
                                   "max_model_len", info->max_model_len));
    rc = 0;
done:
    free(ids);
    json_decref(root);
    return rc;
}

int openai_detokenize(const openai_model_info *info, const char *body, size_t len, char **out,
                      openai_error *e) {
    json_t *root = openai_load_object(body, len, e);
    if (!root) return -1;
    int rc = -1;
    int32_t *ids = NULL;
    json_t *tokens = json_object_get(root, "tokens");
    if (openai_check_model(info, root, e)) goto done;
    if (!tokens || json_is_null(tokens)) {
        openai_error_set(e, 400, "invalid_request_error", "tokens", "missing_required_parameter",
                         "'tokens' is required");
        goto done;
    }
    if (!json_is_array(tokens)) {
        openai_error_set(e, 400, "invalid_request_error", "tokens", "invalid_type",
                         "'tokens' must be an array of token ids");
        goto done;
    }
    if (!info->tok) {
        openai_error_set(e, 503, "server_error", NULL, "model_not_ready",
                         "the tokenizer is not loaded yet");
        goto done;
    }
    size_t n = json_array_size(tokens);
    ids = kv_malloc((n ? n : 1) * sizeof *ids);
    int vocab = tokenizer_vocab_size(info->tok);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(tokens, i);
        if (!json_is_integer(v)) {
            openai_error_set(e, 400, "invalid_request_error", "tokens", "invalid_type",
                             "'tokens' must be an array of token ids");
            goto done;
        }
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= vocab) {
            openai_error_set(e, 400, "invalid_request_error", "tokens", "invalid_value",
                             "token id %lld is out of vocabulary (size %d)", (long long)id, vocab);
            goto done;
        }
        ids[i] = (int32_t)id;
    }
    char *text = NULL;
    size_t text_len = 0;
    kv_error kerr;
    if (tokenizer_decode(info->tok, ids, (int)n, false, &text, &text_len, &kerr)) {
        openai_error_set(e, 400, "invalid_request_error", "tokens", "invalid_value",
                         "cannot detokenize: %s", kerr.msg);
        goto done;
    }
    openai_utf8_sanitize(text, text_len);
    *out = dump_and_free(json_pack("{s:s%}", "prompt", text, text_len));
    free(text);
    rc = 0;
done:
    free(ids);
    json_decref(root);
    return rc;
}
