/* Shared between http.c (daemon, routing, watcher) and http_completions.c (the completion flow).
 * Not for other modules. */
#ifndef KVSERVE_HTTP_INTERNAL_H
#define KVSERVE_HTTP_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

#include "server/http.h"
#include "model/structured/constraint_cache.h"
#include "server/openai.h"

typedef struct completion completion;

/* One watched socket (a connection with a request in the engine). */
typedef struct watch_slot {
    completion *c; /* NULL when the slot is free */
    uint32_t gen;  /* bumped on every reuse, so a stale epoll event is recognised */
    int fd;
} watch_slot;

struct http_server {
    http_server_options opt; /* strings owned (copied) */
    server_engine engine;
    metrics *metrics;
    struct MHD_Daemon *daemon;
    int port;
    long long start_time; /* unix seconds, "created" of /v1/models */

    /* model: written once by http_server_set_model before ready is set */
    const tokenizer *tok;
    int max_model_len;
    long long max_prompt_bytes; /* see openai_model_info; from the longest token */
    sampler_params defaults;
    sc_vocab *sc_vocab;        /* the tokens' bytes for structured outputs (owned) */
    struct sc_cache *sc_cache; /* compiled constraints by regex (owned) */
    sc_limits sc_limits;       /* from the structured_* knobs */
    const struct chat_source
        *chat; /* borrowed; NULL = no chat template (see http_server_set_chat) */
    atomic_bool ready;
    atomic_bool stopping;

    /* live completions (for shutdown) */
    pthread_mutex_t lock;
    pthread_cond_t idle;
    completion *live; /* doubly linked through completion.prev/next */
    int n_live;

    /* disconnect watcher */
    int epoll_fd;
    int wake_fd; /* eventfd: wakes the watcher to exit */
    pthread_t watcher;
    pthread_mutex_t watch_lock;
    watch_slot *slots;
    int n_slots;
};

/* The openai_model_info view of the loaded model. */
openai_model_info http_model_info(http_server *s);

/* Queues a JSON (or text) response that owns body. Returns MHD's result. */
enum MHD_Result http_respond(struct MHD_Connection *conn, int status, char *body,
                             const char *content_type);
/* Adds the CORS headers (Access-Control-Allow-Origin) when the request's Origin is allowed. */
void http_add_cors(struct MHD_Connection *conn, struct MHD_Response *r);
enum MHD_Result http_respond_error(struct MHD_Connection *conn, const openai_error *e);

/* Socket watching: http.c. watch returns a slot id (-1 when the socket cannot be watched). */
int http_watch(http_server *s, struct MHD_Connection *conn, completion *c);
void http_unwatch(http_server *s, int slot);

/* The completion flow: http_completions.c. */
/* Called with the whole body once it has arrived; *c_out receives the request state (NULL when the
 * request was answered at once, e.g. an error). */
enum MHD_Result completion_start(http_server *s, struct MHD_Connection *conn, const char *body,
                                 size_t len, completion **c_out);
/* The same flow for a request already parsed (moved into the completion: *req is left empty);
 * chat selects the chat JSON shapes, tools the format its non-streamed output is parsed for tool
 * calls in (NONE = not parsed). */
enum MHD_Result completion_start_request(http_server *s, struct MHD_Connection *conn,
                                         openai_completion_request *req, bool chat,
                                         tool_parser_kind tools, completion **c_out);
/* POST /v1/chat/completions (http_chat.c): renders the messages, then completion_start_request. */
enum MHD_Result chat_start(http_server *s, struct MHD_Connection *conn, const char *body,
                           size_t len, completion **c_out);
/* POST /tokenize whose body holds "messages" (http_chat.c); false when it holds none. */
bool chat_tokenize_wanted(const char *body, size_t len);
enum MHD_Result chat_tokenize(http_server *s, struct MHD_Connection *conn, const char *body,
                              size_t len);
/* Called when the access handler runs again for a non-streamed completion (after a resume). */
enum MHD_Result completion_continue(completion *c, struct MHD_Connection *conn);
/* The connection ended (normally or not): cancels what is left and drops the connection's ref. */
void completion_connection_closed(completion *c, bool ok);
/* The watcher saw the client hang up: cancels the engine requests. */
void completion_client_gone(completion *c);
/* Shutdown: ends the request as soon as possible (resumes it if suspended). The caller holds a
 * reference (completion_try_ref). */
void completion_abort(completion *c);
/* A reference for a completion found on the live list: false when it is already being freed. */
bool completion_try_ref(completion *c);
/* Sets stopping and returns every live completion with a reference taken (*out malloc'd). */
int completion_live_refs(http_server *s, completion ***out);
void completion_release(completion *c);

#endif
