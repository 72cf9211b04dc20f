/* POST /v1/chat/completions and /tokenize with messages: the messages are rendered through the
 * model's chat template and tokenized here, then the completion flow (http_completions.c) runs
 * them with chat-shaped output. Owns nothing beyond one request's parse. */
#include <stdlib.h>

#include "server/http_internal.h"
#include "server/openai_chat.h"

void http_server_set_chat(http_server *s, const chat_source *cs) {
    s->chat = cs;
}

static enum MHD_Result not_ready(struct MHD_Connection *conn) {
    openai_error e;
    openai_error_set(&e, 503, "server_error", NULL, "model_not_ready",
                     "the model is still loading");
    return http_respond_error(conn, &e);
}

enum MHD_Result chat_start(http_server *s, struct MHD_Connection *conn, const char *body,
                           size_t len, completion **c_out) {
    *c_out = NULL;
    if (!atomic_load(&s->ready)) return not_ready(conn);
    openai_model_info info = http_model_info(s);
    openai_error e;
    openai_chat_request creq;
    if (openai_chat_parse(&info, s->chat, body, len, false, &creq, &e))
        return http_respond_error(conn, &e);
    /* tool calls are parsed only when the request offers tools and lets the model call them */
    tool_parser_kind tools = s->opt.tool_call_parser;
    if (tools == TOOL_PARSER_AUTO) tools = s->chat ? s->chat->tool_format : TOOL_PARSER_NONE;
    if (tools == TOOL_PARSER_AUTO || !creq.has_tools || creq.tool_choice_none)
        tools = TOOL_PARSER_NONE;
    int32_t *ids = NULL;
    int n_ids = 0;
    openai_completion_request req;
    int rc = openai_chat_prompt(&info, s->chat, &creq, &ids, &n_ids, &e);
    if (rc == 0) rc = openai_chat_to_completion(&info, &creq, ids, n_ids, &req, &e);
    free(ids);
    openai_chat_request_free(&creq);
    if (rc) return http_respond_error(conn, &e);
    return completion_start_request(s, conn, &req, true, tools, c_out);
}

bool chat_tokenize_wanted(const char *body, size_t len) {
    json_t *root = json_loadb(body, len, 0, NULL);
    bool yes = json_is_object(root) && json_object_get(root, "messages") != NULL;
    json_decref(root);
    return yes;
}

enum MHD_Result chat_tokenize(http_server *s, struct MHD_Connection *conn, const char *body,
                              size_t len) {
    if (!atomic_load(&s->ready)) return not_ready(conn);
    openai_model_info info = http_model_info(s);
    openai_error e;
    openai_chat_request creq;
    if (openai_chat_parse(&info, s->chat, body, len, true, &creq, &e))
        return http_respond_error(conn, &e);
    int32_t *ids = NULL;
    int n_ids = 0;
    int rc = openai_chat_prompt(&info, s->chat, &creq, &ids, &n_ids, &e);
    openai_chat_request_free(&creq);
    if (rc) return http_respond_error(conn, &e);
    json_t *tokens = json_array();
    for (int i = 0; i < n_ids; i++) json_array_append_new(tokens, json_integer(ids[i]));
    free(ids);
    json_t *j = json_pack("{s:o, s:i, s:i}", "tokens", tokens, "count", n_ids, "max_model_len",
                          info.max_model_len);
    char *out = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    KV_CHECK(out);
    return http_respond(conn, 200, out, "application/json");
}
