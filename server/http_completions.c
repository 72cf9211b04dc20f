/* POST /v1/completions: one engine request per choice (prompts x n), a per-request channel that the
 * engine fills from its thread, and the HTTP side that turns token events into text (streaming
 * detokenizer, stop strings), logprobs and JSON, either as one body or as SSE chunks. POST
 * /v1/chat/completions runs the same flow (http_chat.c renders its prompt) with chat-shaped JSON.
 *
 * Locking: completion.lock guards the event queue, suspended/aborting/conn and the engine_done
 * flags; everything else of a choice belongs to the connection's MHD thread. Engine calls (submit,
 * cancel) are made without holding the lock, because the engine may hold its own lock while it
 * calls on_event. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

#include "server/http_internal.h"
#include "server/chat/tool_stream.h"
#include "server/openai_chat.h"
#include "server/stop_strings.h"

typedef struct queued_event {
    int choice;
    engine_event ev;
} queued_event;

typedef struct choice_state {
    completion *c;
    int index; /* prompt * n + k */
    int prompt_index;
    uint64_t engine_id;
    bool submitted;
    bool engine_done; /* the engine sent its last event (under lock) */
    /* timing, engine thread, under lock */
    int n_timed;
    double last_token_time;
    /* output, MHD thread */
    bool done;        /* the output is complete */
    bool finish_sent; /* streaming: the chunk with finish_reason went out */
    bool prompt_ids_sent;
    bool text_sent; /* streaming: some text went out (a Llama 3.x call must be the whole output) */
    tokenizer_stream *ts;
    stop_matcher stop;
    char *text; /* whole text (non-streamed) or text not yet sent (streamed) */
    size_t text_len, text_cap;
    json_t *logprobs; /* NULL unless requested; entries not yet sent when streaming */
    /* non-streamed: the logprobs events kept compact (lp_record + ids + floats, about 8 bytes an
     * entry against ~250 as JSON objects) until the answer is built, one choice at a time */
    char *lp_raw;
    size_t lp_len, lp_cap;
    int text_offset; /* code points so far, for logprobs.text_offset */
    int32_t *ids;    /* generated tokens */
    int n_ids, cap_ids, n_ids_sent;
    kv_finish finish;
    json_t *stop_reason;
    int n_prompt_tokens, n_cached_gpu, n_cached_host, n_cached_disk, n_cached_remote;
    reasoning_stream rs; /* streamed chat with a reasoning parser: where the output is */
    tool_stream tools;   /* streamed chat with tools: the calls so far */
} choice_state;

struct completion {
    http_server *srv;
    metrics *metrics;
    server_engine engine;
    pthread_mutex_t lock;
    int refs; /* the connection's + one per engine request until its last event */
    struct MHD_Connection *conn; /* NULL once the connection ended */
    bool suspended;
    bool aborting; /* shutdown */
    bool client_gone;
    queued_event *queue;
    int n_queue, cap_queue;

    openai_completion_request req;
    bool chat;              /* /v1/chat/completions: chat JSON (openai_chat.h) */
    tool_parser_kind tools; /* chat with tools: the format of tool calls (NONE = no parsing) */
    reasoning_parser_kind reasoning; /* chat: <think> blocks to reasoning_content (NONE = kept) */
    choice_state *choices;
    int n_choices, n_done;
    char id[48];
    long long created;
    double arrival;
    double first_token; /* kv_now() of the first generated token; 0 = none yet */
    int status;         /* HTTP status answered, for the request log line */
    int watch_slot;
    char *error; /* the first engine failure */
    /* streamed output waiting for the socket */
    char *out;
    size_t out_len, out_pos, out_cap;
    bool stream_finished; /* data: [DONE] queued */
    completion *prev, *next;
};

/* The calls in choice `index`'s chat output: a forced tool_choice reads the output as their JSON,
 * else the model's tool-call format. Their ids derive from the response id and the choice, as the
 * streamed ones (tool_stream_init), so the n choices of one request never share a call id. */
static int completion_calls(const completion *c, int index, const char *text, size_t n,
                            tool_parse_result *out) {
    char salt[64];
    snprintf(salt, sizeof salt, "%s-%d", c->id, index);
    if (c->req.forced_tool) return openai_forced_tool_calls(c->req.forced_tool, text, n, salt, out);
    return tool_parser_parse(c->tools, text, n, salt, out);
}

/* ---- small buffers ---- */

static void append_bytes(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = kv_realloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static int count_code_points(const char *s, size_t n) {
    int cp = 0;
    for (size_t i = 0; i < n; i++) cp += ((unsigned char)s[i] & 0xC0) != 0x80;
    return cp;
}

/* ---- lifetime ---- */

/* Frees c's own memory; c is on no list and nobody else holds it. */
static void completion_destroy(completion *c) {
    for (int i = 0; i < c->n_choices; i++) {
        choice_state *ch = &c->choices[i];
        if (ch->ts) tokenizer_stream_free(ch->ts);
        stop_matcher_free(&ch->stop);
        tool_stream_free(&ch->tools);
        free(ch->text);
        json_decref(ch->logprobs);
        free(ch->lp_raw);
        json_decref(ch->stop_reason);
        free(ch->ids);
    }
    free(c->choices);
    free(c->queue);
    free(c->out);
    free(c->error);
    openai_completion_request_free(&c->req);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static openai_usage completion_usage(const completion *c);

/* One line per request at info level, as vLLM and llama-server log. */
static void completion_log(const completion *c) {
    if (!c->srv->opt.log_requests) return;
    openai_usage u = completion_usage(c);
    double now = kv_now();
    char ttft[32] = "-";
    if (c->first_token > 0)
        snprintf(ttft, sizeof ttft, "%.2f ms", (c->first_token - c->arrival) * 1e3);
    fprintf(stderr,
            "kvserve: %s status %d prompt_tokens %d completion_tokens %d cached_tokens gpu %d "
            "host %d disk %d remote %d ttft %s total %.2f ms%s\n",
            c->id, c->status, u.prompt_tokens, u.completion_tokens, u.cached_tokens_gpu,
            u.cached_tokens_host, u.cached_tokens_disk, u.cached_tokens_remote, ttft,
            (now - c->arrival) * 1e3, c->client_gone ? " (client gone)" : "");
}

/* The last reference went: leaves the live list (waking a shutdown that waits for it), frees. */
static void completion_free(completion *c) {
    http_server *s = c->srv;
    completion_log(c);
    pthread_mutex_lock(&s->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->live = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n_live--;
    pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->lock);
    completion_destroy(c);
}

/* Drops one reference (c->lock not held). */
static void completion_unref(completion *c) {
    pthread_mutex_lock(&c->lock);
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&c->lock);
    if (last) completion_free(c);
}

/* Cancels every engine request that has not ended (c->lock not held). */
static void cancel_engine_requests(completion *c) {
    uint64_t *ids = kv_malloc(sizeof *ids * (size_t)(c->n_choices ? c->n_choices : 1));
    int n = 0;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < c->n_choices; i++)
        if (c->choices[i].submitted && !c->choices[i].engine_done)
            ids[n++] = c->choices[i].engine_id;
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < n; i++) c->engine.cancel(c->engine.ctx, ids[i]);
    free(ids);
}

/* ---- the engine side: runs on the engine's thread ---- */

static void on_engine_event(void *user, const engine_event *ev) {
    choice_state *ch = user;
    completion *c = ch->c;
    double now = kv_now();
    bool last = ev->finish != KV_FINISH_NONE;

    pthread_mutex_lock(&c->lock);
    if (ev->token >= 0 && !ev->is_prompt) {
        if (c->first_token == 0) c->first_token = now;
        if (ch->n_timed == 0)
            metrics_histogram_observe(&c->metrics->time_to_first_token_seconds, now - c->arrival);
        else
            metrics_histogram_observe(&c->metrics->inter_token_latency_seconds,
                                      now - ch->last_token_time);
        ch->n_timed++;
        ch->last_token_time = now;
    }
    if (c->n_queue == c->cap_queue) {
        c->cap_queue = c->cap_queue ? c->cap_queue * 2 : 16;
        c->queue = kv_realloc(c->queue, sizeof *c->queue * (size_t)c->cap_queue);
    }
    queued_event *q = &c->queue[c->n_queue++];
    q->choice = ch->index;
    q->ev = *ev;
    q->ev.error = NULL;
    if (last && ev->error && !c->error) c->error = kv_strdup(ev->error);
    struct MHD_Connection *resume = NULL;
    if (c->suspended && c->conn) {
        c->suspended = false;
        resume = c->conn; /* stays valid: libmicrohttpd never closes a suspended connection */
    }
    if (last) ch->engine_done = true;
    bool free_now = last && --c->refs == 0;
    pthread_mutex_unlock(&c->lock);

    if (resume) MHD_resume_connection(resume);
    if (free_now) completion_free(c);
}

/* ---- the HTTP side: turning events into output (MHD thread) ---- */

static void choice_add_text(choice_state *ch, const char *s, size_t n) {
    append_bytes(&ch->text, &ch->text_len, &ch->text_cap, s, n);
}

/* The logprobs entry of one token: its text, logprob and the top alternatives (plus the token
 * itself, as vLLM does). */
static void choice_add_logprobs(completion *c, choice_state *ch, const engine_event *ev) {
    const tokenizer *tok = c->srv->tok;
    bool as_ids = c->req.return_tokens_as_token_ids;
    if (c->chat) {
        char *tops[SAMPLER_MAX_LOGPROBS];
        int n_top = ev->n_top < c->req.logprobs ? ev->n_top : c->req.logprobs;
        for (int i = 0; i < n_top; i++) tops[i] = openai_token_text(tok, ev->top_ids[i], as_ids);
        char *t = openai_token_text(tok, ev->token, as_ids);
        openai_chat_logprobs_append(ch->logprobs, t, ev->logprob, n_top, (const char *const *)tops,
                                    ev->top_logprobs);
        free(t);
        for (int i = 0; i < n_top; i++) free(tops[i]);
        return;
    }
    json_t *top = json_object();
    for (int i = 0; i < ev->n_top && i < SAMPLER_MAX_LOGPROBS; i++) {
        char *t = openai_token_text(tok, ev->top_ids[i], as_ids);
        if (!json_object_get(top, t))
            json_object_set_new(top, t, json_real(openai_logprob_value(ev->top_logprobs[i])));
        free(t);
    }
    char *t = openai_token_text(tok, ev->token, as_ids);
    if (!json_object_get(top, t))
        json_object_set_new(top, t, json_real(openai_logprob_value(ev->logprob)));
    openai_logprobs_append(ch->logprobs, t, ev->logprob, top, ch->text_offset);
    ch->text_offset += count_code_points(t, strlen(t));
    free(t);
}

/* One logprobs event as kept for a non-streamed answer: then n_top ids and n_top floats. */
typedef struct lp_record {
    int32_t token;
    float logprob;
    int32_t n_top;
} lp_record;

/* The event's logprobs now (streamed) or kept compact for the end (non-streamed). */
static void choice_logprobs_event(completion *c, choice_state *ch, const engine_event *ev) {
    if (c->req.stream) {
        choice_add_logprobs(c, ch, ev);
        return;
    }
    int n_top = ev->n_top < 0                      ? 0
                : ev->n_top > SAMPLER_MAX_LOGPROBS ? SAMPLER_MAX_LOGPROBS
                                                   : ev->n_top;
    lp_record r = {ev->token, ev->logprob, n_top};
    append_bytes(&ch->lp_raw, &ch->lp_len, &ch->lp_cap, (const char *)&r, sizeof r);
    append_bytes(&ch->lp_raw, &ch->lp_len, &ch->lp_cap, (const char *)ev->top_ids,
                 sizeof ev->top_ids[0] * (size_t)n_top);
    append_bytes(&ch->lp_raw, &ch->lp_len, &ch->lp_cap, (const char *)ev->top_logprobs,
                 sizeof ev->top_logprobs[0] * (size_t)n_top);
}

/* Turns the kept events into ch->logprobs' JSON (just before the choice is built) and frees them.
 */
static void choice_logprobs_build(completion *c, choice_state *ch) {
    for (size_t off = 0; ch->logprobs && off + sizeof(lp_record) <= ch->lp_len;) {
        engine_event ev = {0};
        lp_record r;
        memcpy(&r, ch->lp_raw + off, sizeof r);
        off += sizeof r;
        ev.token = r.token;
        ev.logprob = r.logprob;
        ev.n_top = r.n_top;
        memcpy(ev.top_ids, ch->lp_raw + off, sizeof ev.top_ids[0] * (size_t)r.n_top);
        off += sizeof ev.top_ids[0] * (size_t)r.n_top;
        memcpy(ev.top_logprobs, ch->lp_raw + off, sizeof ev.top_logprobs[0] * (size_t)r.n_top);
        off += sizeof ev.top_logprobs[0] * (size_t)r.n_top;
        choice_add_logprobs(c, ch, &ev);
    }
    free(ch->lp_raw);
    ch->lp_raw = NULL;
    ch->lp_len = ch->lp_cap = 0;
}

static void choice_finish(completion *c, choice_state *ch, kv_finish finish, json_t *stop_reason) {
    if (ch->done) {
        json_decref(stop_reason);
        return;
    }
    ch->done = true;
    ch->finish = finish;
    ch->stop_reason = stop_reason;
    c->n_done++;
    metrics_counter_add(&c->metrics->request_success[finish], 1);
    metrics_counter_add(&c->metrics->prompt_tokens,
                        (uint64_t)c->req.prompts[ch->prompt_index].n_ids);
    metrics_counter_add(&c->metrics->generation_tokens, (uint64_t)ch->n_ids);
    metrics_histogram_observe(&c->metrics->e2e_request_latency_seconds, kv_now() - c->arrival);
}

/* Runs text through the stop strings; true when one matched (the choice is then finished). */
static bool choice_push_text(completion *c, choice_state *ch, const char *s, size_t n) {
    char *out;
    size_t out_len;
    bool check = ch->n_ids >= c->req.params.min_tokens;
    bool hit = stop_matcher_push(&ch->stop, s, n, check, &out, &out_len);
    choice_add_text(ch, out, out_len);
    free(out);
    if (hit) choice_finish(c, ch, KV_FINISH_STOP, json_string(stop_matcher_matched(&ch->stop)));
    return hit;
}

static bool is_stop_token_id(const completion *c, int32_t id) {
    for (int i = 0; i < c->req.params.n_stop_token_ids; i++)
        if (c->req.params.stop_token_ids[i] == id) return true;
    return false;
}

/* One event. Returns true when a stop string ended the choice while the engine still runs it. */
static bool choice_event(completion *c, choice_state *ch, const engine_event *ev) {
    if (ch->done) return false;
    if (ev->is_prompt) {
        if (ch->logprobs && ev->token >= 0) choice_logprobs_event(c, ch, ev);
        return false;
    }
    if (ev->n_prompt_tokens > 0) {
        ch->n_prompt_tokens = ev->n_prompt_tokens;
        ch->n_cached_gpu = ev->n_cached_gpu;
        ch->n_cached_host = ev->n_cached_host;
        ch->n_cached_disk = ev->n_cached_disk;
        ch->n_cached_remote = ev->n_cached_remote;
    }
    bool last = ev->finish != KV_FINISH_NONE;
    if (ev->token >= 0) {
        if (ch->n_ids == ch->cap_ids) {
            ch->cap_ids = ch->cap_ids ? ch->cap_ids * 2 : 64;
            ch->ids = kv_realloc(ch->ids, sizeof *ch->ids * (size_t)ch->cap_ids);
        }
        ch->ids[ch->n_ids++] = ev->token;
        if (ch->logprobs) choice_logprobs_event(c, ch, ev);
        bool stop_token = ev->finish == KV_FINISH_STOP && ev->stop_token == ev->token;
        if (!stop_token) {
            char *piece = NULL;
            size_t n = 0;
            kv_error err;
            if (tokenizer_stream_push(ch->ts, ev->token, &piece, &n, &err) == 0) {
                bool hit = choice_push_text(c, ch, piece, n);
                free(piece);
                if (hit) return !last;
            } else {
                free(piece);
                if (!c->error) c->error = kv_strdup(err.msg);
                choice_finish(c, ch, KV_FINISH_ABORT, NULL);
                return !last;
            }
        }
    }
    if (!last) return false;
    char *rest = NULL;
    size_t n = 0;
    if (tokenizer_stream_finish(ch->ts, &rest, &n, NULL) == 0 && choice_push_text(c, ch, rest, n)) {
        free(rest);
        return false;
    }
    free(rest);
    stop_matcher_flush(&ch->stop, &rest, &n);
    choice_add_text(ch, rest, n);
    free(rest);
    switch (ev->finish) {
    case KV_FINISH_STOP:
        choice_finish(c, ch, KV_FINISH_STOP,
                      is_stop_token_id(c, ev->stop_token) ? json_integer(ev->stop_token) : NULL);
        break;
    case KV_FINISH_LENGTH:
        choice_finish(c, ch, KV_FINISH_LENGTH, NULL);
        break;
    default:
        choice_finish(c, ch, KV_FINISH_ABORT, NULL);
        break;
    }
    return false;
}

/* Takes every queued event and turns it into output. Returns whether the request was aborted. */
static bool completion_pump(completion *c) {
    for (;;) {
        pthread_mutex_lock(&c->lock);
        queued_event *q = c->queue;
        int n = c->n_queue;
        bool aborting = c->aborting;
        c->queue = NULL;
        c->n_queue = c->cap_queue = 0;
        pthread_mutex_unlock(&c->lock);
        if (n == 0) {
            free(q);
            if (aborting) {
                /* a shutdown that came while submit_all ran did not see the later submits */
                cancel_engine_requests(c);
                for (int i = 0; i < c->n_choices; i++)
                    choice_finish(c, &c->choices[i], KV_FINISH_ABORT, NULL);
            }
            return aborting;
        }
        for (int i = 0; i < n; i++) {
            choice_state *ch = &c->choices[q[i].choice];
            if (choice_event(c, ch, &q[i].ev)) c->engine.cancel(c->engine.ctx, ch->engine_id);
        }
        free(q);
    }
}

/* Suspends the connection unless events arrived or the request is over; true when suspended. */
static bool completion_try_suspend(completion *c, struct MHD_Connection *conn) {
    pthread_mutex_lock(&c->lock);
    bool suspend = c->n_queue == 0 && !c->aborting && c->n_done < c->n_choices;
    if (suspend) {
        /* under the lock, so the engine's resume always comes after this suspend */
        c->suspended = true;
        MHD_suspend_connection(conn);
    }
    pthread_mutex_unlock(&c->lock);
    return suspend;
}

static openai_usage completion_usage(const completion *c) {
    openai_usage u = {0};
    for (int p = 0; p < c->req.n_prompts; p++) u.prompt_tokens += c->req.prompts[p].n_ids;
    for (int i = 0; i < c->n_choices; i++) {
        const choice_state *ch = &c->choices[i];
        u.completion_tokens += ch->n_ids;
        if (i % c->req.n == 0) { /* cached tokens once per prompt, like prompt_tokens */
            u.cached_tokens_gpu += ch->n_cached_gpu;
            u.cached_tokens_host += ch->n_cached_host;
            u.cached_tokens_disk += ch->n_cached_disk;
            u.cached_tokens_remote += ch->n_cached_remote;
        }
    }
    return u;
}

static enum MHD_Result respond_full(completion *c, struct MHD_Connection *conn, bool aborting) {
    openai_error e;
    if (aborting) {
        c->status = 503;
        openai_error_set(&e, 503, "server_error", NULL, "shutting_down",
                         "the server is shutting down");
        return http_respond_error(conn, &e);
    }
    if (c->error) {
        c->status = 500;
        openai_error_set(&e, 500, "server_error", NULL, "engine_error", "%s", c->error);
        return http_respond_error(conn, &e);
    }
    /* the body's shell (id, usage...) with an empty choices array, then the choices one at a time
     * into its place: each choice's logprobs become JSON, then text, and the JSON goes, so the
     * peak is the body text plus one choice's tree, not every choice's tree at once. A quote
     * inside a JSON string is escaped, so '"choices":[]' can only be the key itself. */
    openai_usage u = completion_usage(c);
    const char *model = c->srv->opt.served_model_name;
    json_t *body =
        c->chat
            ? openai_chat_json(c->id, c->created, model, json_array(), openai_usage_json(&u), false)
            : openai_completion_json(c->id, c->created, model, json_array(), openai_usage_json(&u));
    char *shell = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    KV_CHECK(shell);
    static const char key[] = "\"choices\":[";
    char *at = strstr(shell, key);
    KV_CHECK(at && at[sizeof key - 1] == ']');
    size_t head = (size_t)(at - shell) + sizeof key - 1;
    char *out = NULL;
    size_t out_len = 0, out_cap = 0;
    append_bytes(&out, &out_len, &out_cap, shell, head);
    for (int i = 0; i < c->n_choices; i++) {
        choice_state *ch = &c->choices[i];
        const openai_prompt *p = &c->req.prompts[ch->prompt_index];
        choice_logprobs_build(c, ch);
        bool ids = c->req.return_token_ids;
        tool_parse_result calls = {0};
        /* chat: reasoning first, then tool calls in what remains */
        size_t r_off = 0, r_len = 0, c_off = 0;
        bool has_r = c->chat && reasoning_parser_split(c->reasoning, ch->text, ch->text_len, &r_off,
                                                       &r_len, &c_off);
        const char *text = ch->text ? ch->text + c_off : NULL;
        size_t text_len = ch->text_len - c_off;
        json_t *choice = NULL;
        if (c->chat && completion_calls(c, ch->index, text, text_len, &calls) > 0)
            choice = openai_chat_tool_calls_choice_json(ch->index, calls.content, calls.content_len,
                                                        json_incref(calls.calls), ch->logprobs,
                                                        ch->stop_reason, false);
        else if (c->chat)
            choice = openai_chat_choice_json(ch->index, text, text_len, ch->logprobs, ch->finish,
                                             ch->stop_reason, false);
        if (choice && c->reasoning != REASONING_PARSER_NONE)
            json_object_set_new(json_object_get(choice, "message"), "reasoning_content",
                                has_r ? json_stringn(ch->text + r_off, r_len) : json_null());
        if (!choice)
            choice = openai_choice_json(ch->index, ch->text, ch->text_len, ch->logprobs, ch->finish,
                                        ch->stop_reason, ids ? p->ids : NULL, p->n_ids,
                                        ids ? ch->ids : NULL, ch->n_ids);
        char *one = json_dumps(choice, JSON_COMPACT);
        json_decref(choice);
        KV_CHECK(one);
        if (i > 0) append_bytes(&out, &out_len, &out_cap, ",", 1);
        append_bytes(&out, &out_len, &out_cap, one, strlen(one));
        free(one);
        tool_parse_result_free(&calls);
        ch->logprobs = NULL;
        ch->stop_reason = NULL;
    }
    append_bytes(&out, &out_len, &out_cap, shell + head, strlen(shell + head));
    free(shell);
    return http_respond(conn, 200, out, "application/json");
}

enum MHD_Result completion_continue(completion *c, struct MHD_Connection *conn) {
    for (;;) {
        bool aborting = completion_pump(c);
        if (c->n_done == c->n_choices) return respond_full(c, conn, aborting);
        if (completion_try_suspend(c, conn)) return MHD_YES;
    }
}

/* ---- streaming ---- */

static void stream_append(completion *c, json_t *j) {
    size_t n;
    char *ev = openai_sse_event(j, &n);
    append_bytes(&c->out, &c->out_len, &c->out_cap, ev, n);
    free(ev);
}

/* A streamed chunk's body in the request's shape. */
static json_t *completion_body_json(completion *c, json_t *choices, json_t *usage) {
    const char *model = c->srv->opt.served_model_name;
    if (c->chat) return openai_chat_json(c->id, c->created, model, choices, usage, true);
    return openai_completion_json(c->id, c->created, model, choices, usage);
}

/* Turns what the choices have gathered into SSE chunks; ends the stream when every choice is done.
 */
static void stream_emit(completion *c) {
    for (int i = 0; i < c->n_choices; i++) {
        choice_state *ch = &c->choices[i];
        if (ch->finish_sent) continue;
        bool has_lp = ch->logprobs &&
                      (c->chat ? openai_chat_logprobs_count(ch->logprobs)
                               : json_array_size(json_object_get(ch->logprobs, "tokens"))) > 0;
        /* chat with tools: calls stream as delta.tool_calls (tool_stream.h), text that may start
         * one is held back */
        /* chat with a reasoning parser: the reasoning goes out as delta.reasoning_content and
         * leaves ch->text, with its tags; content waits until the reasoning has ended */
        json_t *reasoning = NULL;
        bool thinking =
            c->chat && c->reasoning != REASONING_PARSER_NONE && !reasoning_stream_content(&ch->rs);
        if (thinking) {
            size_t r_off, r_len, used;
            reasoning_stream_step(c->reasoning, &ch->rs, ch->text ? ch->text : "", ch->text_len,
                                  ch->done, &r_off, &r_len, &used);
            if (r_len) reasoning = json_stringn(ch->text + r_off, r_len);
            if (used) {
                memmove(ch->text, ch->text + used, ch->text_len - used + 1);
                ch->text_len -= used;
            }
            thinking = !reasoning_stream_content(&ch->rs);
        }
        /* a forced tool_choice: the constrained output is held whole and goes out as tool_calls
         * at the end (completion_calls) */
        bool forced = c->chat && c->req.forced_tool && !thinking;
        bool tools = c->chat && !c->req.forced_tool && c->tools != TOOL_PARSER_NONE && !thinking;
        size_t send = thinking ? 0 : ch->text_len; /* bytes of ch->text taken */
        const char *content = ch->text;
        size_t content_len = send;
        tool_stream_out calls = {0};
        tool_parse_result forced_calls = {0};
        int n_forced = 0;
        if (tools) {
            tool_stream_feed(&ch->tools, ch->text ? ch->text : "", ch->text_len, ch->done, &calls);
            content = calls.content;
            content_len = calls.content_len;
        } else if (forced && !ch->done) {
            send = content_len = 0;
        } else if (forced) {
            n_forced = completion_calls(c, ch->index, ch->text, ch->text_len, &forced_calls);
        }
        if (content_len == 0 && !calls.calls && !has_lp && !ch->done && !reasoning) {
            if (tools) ch->text_len = 0; /* the tool stream holds what it did not send */
            continue;
        }
        const openai_prompt *p = &c->req.prompts[ch->prompt_index];
        bool ids = c->req.return_token_ids;
        bool first = !ch->prompt_ids_sent;
        json_t *choice =
            n_forced ? openai_chat_tool_calls_choice_json(
                           ch->index, forced_calls.content, forced_calls.content_len,
                           json_incref(forced_calls.calls), has_lp ? ch->logprobs : NULL,
                           ch->stop_reason, true)
            : c->chat
                ? openai_chat_choice_json(ch->index, content, content_len,
                                          has_lp ? ch->logprobs : NULL,
                                          ch->done ? ch->finish : KV_FINISH_NONE,
                                          ch->done ? ch->stop_reason : NULL, true)
                : openai_choice_json(
                      ch->index, ch->text, ch->text_len, has_lp ? ch->logprobs : NULL,
                      ch->done ? ch->finish : KV_FINISH_NONE, ch->done ? ch->stop_reason : NULL,
                      ids && first ? p->ids : NULL, p->n_ids, ids ? ch->ids + ch->n_ids_sent : NULL,
                      ch->n_ids - ch->n_ids_sent);
        json_t *delta = json_object_get(choice, "delta");
        if (calls.calls) {
            json_object_set(delta, "tool_calls", calls.calls);
            if (content_len == 0) json_object_del(delta, "content"); /* vLLM's delta */
        }
        if (tools && ch->done && tool_stream_called(&ch->tools))
            json_object_set_new(choice, "finish_reason", json_string("tool_calls"));
        if (reasoning) {
            if (content_len == 0 && !calls.calls && !n_forced) json_object_del(delta, "content");
            json_object_set_new(delta, "reasoning_content", reasoning);
        }
        if (has_lp) ch->logprobs = c->chat ? openai_chat_logprobs_new() : openai_logprobs_new();
        if (ch->done) ch->stop_reason = NULL;
        json_t *usage = NULL;
        if (c->req.continuous_usage) {
            openai_usage u = {.prompt_tokens = p->n_ids,
                              .completion_tokens = ch->n_ids,
                              .cached_tokens_gpu = ch->n_cached_gpu,
                              .cached_tokens_host = ch->n_cached_host,
                              .cached_tokens_disk = ch->n_cached_disk,
                              .cached_tokens_remote = ch->n_cached_remote};
            usage = openai_usage_json(&u);
        }
        stream_append(c, completion_body_json(c, json_pack("[o]", choice), usage));
        tool_stream_out_free(&calls);
        tool_parse_result_free(&forced_calls);
        if (content_len > 0) ch->text_sent = true;
        if (ch->text) memmove(ch->text, ch->text + send, ch->text_len - send + 1);
        ch->text_len -= send;
        ch->n_ids_sent = ch->n_ids;
        ch->prompt_ids_sent = true;
        if (ch->done) ch->finish_sent = true;
    }
    if (c->stream_finished || c->n_done < c->n_choices) return;
    for (int i = 0; i < c->n_choices; i++)
        if (!c->choices[i].finish_sent) return;
    if (c->error) {
        openai_error e;
        openai_error_set(&e, 500, "server_error", NULL, "engine_error", "%s", c->error);
        char *body = openai_error_body(&e);
        append_bytes(&c->out, &c->out_len, &c->out_cap, "data: ", 6);
        append_bytes(&c->out, &c->out_len, &c->out_cap, body, strlen(body));
        append_bytes(&c->out, &c->out_len, &c->out_cap, "\n\n", 2);
        free(body);
    }
    if (c->req.include_usage) {
        openai_usage u = completion_usage(c);
        stream_append(c, completion_body_json(c, json_array(), openai_usage_json(&u)));
    }
    static const char done[] = "data: [DONE]\n\n";
    append_bytes(&c->out, &c->out_len, &c->out_cap, done, sizeof done - 1);
    c->stream_finished = true;
}

/* libmicrohttpd's content reader for a streamed completion: copies out pending SSE bytes; with
 * none, gathers new events; with none of those either, suspends the connection until the engine
 * resumes it (returning 0 without suspending would make libmicrohttpd spin). */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    completion *c = cls;
    for (;;) {
        if (c->out_pos < c->out_len) {
            size_t n = c->out_len - c->out_pos < max ? c->out_len - c->out_pos : max;
            memcpy(buf, c->out + c->out_pos, n);
            c->out_pos += n;
            if (c->out_pos == c->out_len) c->out_pos = c->out_len = 0;
            return (ssize_t)n;
        }
        if (c->stream_finished) return MHD_CONTENT_READER_END_OF_STREAM;
        completion_pump(c);
        stream_emit(c);
        if (c->out_len > 0 || c->stream_finished) continue;
        if (completion_try_suspend(c, c->conn)) return 0;
    }
}

/* ---- start ---- */

static void make_id(char *out, size_t size, const char *prefix) {
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) { /* unique enough without entropy */
        uint64_t a = (uint64_t)(kv_now() * 1e9), b = (uint64_t)(uintptr_t)out;
        memcpy(r, &a, 8);
        memcpy(r + 8, &b, 8);
    }
    int n = snprintf(out, size, "%s", prefix);
    for (int i = 0; i < 16 && (size_t)n + 2 < size; i++)
        n += snprintf(out + n, size - (size_t)n, "%02x", r[i]);
}

static void choice_init(completion *c, choice_state *ch, int index, int prompt_index) {
    const openai_completion_request *req = &c->req;
    const openai_prompt *p = &req->prompts[prompt_index];
    const tokenizer *tok = c->srv->tok;
    ch->c = c;
    ch->index = index;
    ch->prompt_index = prompt_index;
    ch->finish = KV_FINISH_NONE;
    char salt[64];
    snprintf(salt, sizeof salt, "%s-%d", c->id, index);
    tool_stream_init(&ch->tools, c->chat ? c->tools : TOOL_PARSER_NONE, salt);
    ch->ts = tokenizer_stream_new(tok, req->skip_special_tokens);
    stop_matcher_init(&ch->stop, (const char *const *)req->stop, req->n_stop,
                      req->include_stop_str_in_output);
    if (req->logprobs >= 0)
        ch->logprobs = c->chat ? openai_chat_logprobs_new() : openai_logprobs_new();
    if (!req->echo) return;
    if (p->text) {
        choice_add_text(ch, p->text, strlen(p->text));
    } else {
        char *text = NULL;
        size_t n = 0;
        if (tokenizer_decode(tok, p->ids, p->n_ids, false, &text, &n, NULL) == 0)
            choice_add_text(ch, text, n);
        free(text);
    }
    if (ch->logprobs) { /* the first prompt token has no logprob */
        char *t = openai_token_text(tok, p->ids[0], req->return_tokens_as_token_ids);
        openai_logprobs_append(ch->logprobs, t, NAN, NULL, 0);
        ch->text_offset = count_code_points(t, strlen(t));
        free(t);
    }
}

static enum MHD_Result submit_all(completion *c, struct MHD_Connection *conn) {
    const openai_completion_request *req = &c->req;
    for (int i = 0; i < c->n_choices; i++) {
        choice_state *ch = &c->choices[i];
        const openai_prompt *p = &req->prompts[ch->prompt_index];
        sampler_params params;
        sampler_params_copy(&params, &req->params);
        params.max_tokens = p->max_tokens;
        if (params.min_tokens > params.max_tokens) params.min_tokens = params.max_tokens;
        if (params.has_seed) params.seed += (uint64_t)(i % req->n); /* n samples differ, as vLLM */
        engine_request er = {.prompt = p->ids,
                             .n_prompt = p->n_ids,
                             .params = &params,
                             .cache_salt = req->cache_salt,
                             .on_event = on_engine_event,
                             .user = ch};
        pthread_mutex_lock(&c->lock);
        c->refs++; /* events may arrive before submit returns */
        ch->submitted = true;
        pthread_mutex_unlock(&c->lock);
        kv_error err = {{0}};
        uint64_t id = 0;
        engine_submit_status st = c->engine.submit(c->engine.ctx, &er, &id, &err);
        sampler_params_free(&params);
        pthread_mutex_lock(&c->lock);
        ch->engine_id = id;
        if (st != ENGINE_SUBMIT_OK) {
            ch->submitted = false;
            c->refs--;
        }
        pthread_mutex_unlock(&c->lock);
        if (st == ENGINE_SUBMIT_OK) continue;
        cancel_engine_requests(c);
        /* refused: no choice counts as a finished request in the metrics */
        for (int k = 0; k < c->n_choices; k++) c->choices[k].done = true;
        c->n_done = c->n_choices;
        openai_error e;
        c->status = st == ENGINE_SUBMIT_BUSY ? 503 : 400;
        if (st == ENGINE_SUBMIT_BUSY)
            openai_error_set(&e, 503, "server_error", NULL, "server_overloaded",
                             "the server is overloaded (queue full): retry later");
        else
            openai_error_set(&e, 400, "invalid_request_error", NULL, "invalid_value", "%s",
                             err.msg);
        return http_respond_error(conn, &e);
    }
    c->watch_slot = http_watch(c->srv, conn, c);
    if (!req->stream) return completion_continue(c, conn);
    if (c->chat) /* chat streams open with the role of every choice */
        for (int i = 0; i < c->n_choices; i++)
            stream_append(c, completion_body_json(
                                 c, json_pack("[o]", openai_chat_role_choice_json(i)), NULL));

    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, c, NULL);
    KV_CHECK(r);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    http_add_cors(conn, r);
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

void completion_prepare(http_server *s, const char *body, size_t len, http_prepared *out) {
    openai_model_info info = http_model_info(s);
    if (openai_parse_completion(&info, body, len, &out->req, &out->err)) {
        out->failed = true;
        return;
    }
    out->has_request = true;
}

enum MHD_Result completion_start_request(http_server *s, struct MHD_Connection *conn,
                                         http_prepared *p, completion **c_out) {
    *c_out = NULL;
    openai_error e;
    completion *c = kv_calloc(1, sizeof *c);
    c->req = p->req;
    memset(&p->req, 0, sizeof p->req);
    p->has_request = false;
    bool chat = p->chat;
    c->chat = chat;
    c->tools = p->tools;
    /* a constrained output (forced tool_choice, structured outputs) is held to the constraint
     * from its first token, so it has no think block: read as reasoning, a deepseek_r1 output
     * without </think> would all go to reasoning_content (and a forced call be lost) */
    bool constrained = c->req.forced_tool || c->req.params.constraint;
    c->reasoning = chat && !constrained ? s->opt.reasoning_parser : REASONING_PARSER_NONE;
    c->srv = s;
    c->metrics = s->metrics;
    c->engine = s->engine;
    c->refs = 1;
    c->conn = conn;
    c->watch_slot = -1;
    c->status = 200;
    c->arrival = p->arrival > 0 ? p->arrival : kv_now(); /* tokenizing counts in TTFT */
    c->created = (long long)time(NULL);
    make_id(c->id, sizeof c->id, chat ? "chatcmpl-" : "cmpl-");
    KV_CHECK(pthread_mutex_init(&c->lock, NULL) == 0);
    c->n_choices = c->req.n_prompts * c->req.n;
    c->choices = kv_calloc((size_t)c->n_choices, sizeof *c->choices);
    for (int i = 0; i < c->n_choices; i++) choice_init(c, &c->choices[i], i, i / c->req.n);
    /* join the live list unless shutting down (checked under the same lock http_server_stop
     * takes, so no request slips past the shutdown). Only now: http_server_stop takes a
     * reference to (and locks) whatever is on the list. */
    pthread_mutex_lock(&s->lock);
    bool stopping = atomic_load(&s->stopping);
    if (!stopping) {
        c->next = s->live;
        if (s->live) s->live->prev = c;
        s->live = c;
        s->n_live++;
    }
    pthread_mutex_unlock(&s->lock);
    if (stopping) {
        openai_error_set(&e, 503, "server_error", NULL, "shutting_down",
                         "the server is shutting down");
        completion_destroy(c);
        return http_respond_error(conn, &e);
    }
    *c_out = c;
    return submit_all(c, conn);
}

/* ---- endings ---- */

void completion_connection_closed(completion *c, bool ok) {
    if (c->watch_slot >= 0) http_unwatch(c->srv, c->watch_slot);
    c->watch_slot = -1;
    pthread_mutex_lock(&c->lock);
    c->conn = NULL;
    c->suspended = false;
    if (!ok) c->client_gone = true;
    pthread_mutex_unlock(&c->lock);
    cancel_engine_requests(c);
    for (int i = 0; i < c->n_choices; i++) /* whatever did not finish was aborted */
        choice_finish(c, &c->choices[i], KV_FINISH_ABORT, NULL);
    completion_unref(c);
}

void completion_client_gone(completion *c) {
    pthread_mutex_lock(&c->lock);
    c->client_gone = true;
    pthread_mutex_unlock(&c->lock);
    cancel_engine_requests(c);
}

void completion_abort(completion *c) {
    pthread_mutex_lock(&c->lock);
    c->aborting = true;
    struct MHD_Connection *resume = NULL;
    if (c->suspended && c->conn) {
        c->suspended = false;
        resume = c->conn;
    }
    pthread_mutex_unlock(&c->lock);
    cancel_engine_requests(c);
    if (resume) MHD_resume_connection(resume);
}

bool completion_try_ref(completion *c) {
    pthread_mutex_lock(&c->lock);
    bool alive = c->refs > 0;
    if (alive) c->refs++;
    pthread_mutex_unlock(&c->lock);
    return alive;
}

void completion_release(completion *c) {
    completion_unref(c);
}

int completion_live_refs(http_server *s, completion ***out) {
    pthread_mutex_lock(&s->lock);
    atomic_store(&s->stopping, true);
    *out = kv_malloc(sizeof **out * (size_t)(s->n_live + 1));
    int n = 0;
    for (completion *c = s->live; c; c = c->next)
        if (completion_try_ref(c)) (*out)[n++] = c;
    pthread_mutex_unlock(&s->lock);
    return n;
}
