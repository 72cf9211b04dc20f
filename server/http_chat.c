/* POST /v1/chat/completions and /tokenize with messages: the messages are rendered through the
 * model's chat template and tokenized here, then the completion flow (http_completions.c) runs
 * them with chat-shaped output. Owns nothing beyond one request's parse. */
#include <stdlib.h>

#include "server/http_internal.h"
#include "server/openai_chat.h"

void http_server_set_chat(http_server *s, const chat_source *cs) {
    s->chat = cs;
}

static void fail(http_prepared *out) {
    out->failed = true;
}

void chat_prepare(http_server *s, const char *body, size_t len, http_prepared *out) {
    openai_model_info info = http_model_info(s);
    openai_error *e = &out->err;
    openai_chat_request creq;
    if (openai_chat_parse(&info, s->chat, body, len, false, &creq, e)) {
        fail(out);
        return;
    }
    /* tool calls are parsed only when the request offers tools and lets the model call them */
    tool_parser_kind tools = s->opt.tool_call_parser;
    if (tools == TOOL_PARSER_AUTO) tools = s->chat ? s->chat->tool_format : TOOL_PARSER_NONE;
    if (tools == TOOL_PARSER_AUTO || !creq.has_tools || creq.tool_choice_none)
        tools = TOOL_PARSER_NONE;
    int32_t *ids = NULL;
    int n_ids = 0;
    int rc = openai_chat_prompt(&info, s->chat, &creq, &ids, &n_ids, e);
    if (rc == 0) rc = openai_chat_to_completion(&info, &creq, ids, n_ids, &out->req, e);
    free(ids);
    openai_chat_request_free(&creq);
    if (rc) {
        fail(out);
        return;
    }
    out->has_request = true;
    out->chat = true;
    out->tools = tools;
}

bool chat_tokenize_wanted(const char *body, size_t len) {
    json_t *root = json_loadb(body, len, 0, NULL);
    bool yes = json_is_object(root) && json_object_get(root, "messages") != NULL;
    json_decref(root);
    return yes;
}

void chat_tokenize_prepare(http_server *s, const char *body, size_t len, http_prepared *out) {
    openai_model_info info = http_model_info(s);
    openai_error *e = &out->err;
    openai_chat_request creq;
    if (openai_chat_parse(&info, s->chat, body, len, true, &creq, e)) {
        fail(out);
        return;
    }
    int32_t *ids = NULL;
    int n_ids = 0;
    int rc = openai_chat_prompt(&info, s->chat, &creq, &ids, &n_ids, e);
    openai_chat_request_free(&creq);
    if (rc) {
        fail(out);
        return;
    }
    json_t *tokens = json_array();
    for (int i = 0; i < n_ids; i++) json_array_append_new(tokens, json_integer(ids[i]));
    free(ids);
    json_t *j = json_pack("{s:o, s:i, s:i}", "tokens", tokens, "count", n_ids, "max_model_len",
                          info.max_model_len);
    out->body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    KV_CHECK(out->body);
}
