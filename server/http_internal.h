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

/* What a pool worker made of a request body, for the MHD thread to answer: an error, a 200 JSON
 * body, or a parsed completion request to start. */
typedef struct http_prepared {
    bool failed;
    openai_error err;
    char *body; /* owned; a 200 application/json answer */
    bool has_request;
    openai_completion_request req; /* has_request: moved into the completion when it starts */
    bool chat;
    tool_parser_kind tools;
    double arrival; /* kv_now() when the body had arrived */
} http_prepared;

/* The CPU work of one route (parse, render a chat template, tokenize): runs on a pool worker,
 * touches no MHD object. Fills *out. */
typedef void (*http_prepare_fn)(http_server *s, const char *body, size_t len, http_prepared *out);

/* One request handed to the pool: its connection is suspended from http_pool_submit until the
 * worker has filled out and resumed it. */
typedef struct http_job {
    struct MHD_Connection *conn;
    http_prepare_fn prepare;
    const char *body; /* borrowed from the connection's state, which outlives the job */
    size_t len;
    http_prepared out;
    bool done;             /* out is filled (under the pool's lock) */
    struct http_job *next; /* queue link */
} http_job;

/* The bounded pool that runs prepare functions off libmicrohttpd's polling threads, so a large
 * body being tokenized holds a worker, never /health or the shutdown (http_pool.c). */
typedef struct http_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t *threads;
    int n_threads;
    int max_queued; /* jobs waiting for a worker; one more is refused (503) */
    http_job *head, *tail;
    int n_queued;
    bool stop;
} http_pool;

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

    http_pool pool; /* tokenizing and chat rendering */
};

/* http_pool.c. start: n_threads workers (>= 1), up to max_queued waiting jobs. */
int http_pool_start(http_pool *p, http_server *s, int n_threads, int max_queued, kv_error *err);
/* Suspends conn and queues job (called from the access handler); false (nothing suspended) when
 * the queue is full or the pool is stopping. */
bool http_pool_submit(http_pool *p, http_job *job);
/* Whether the worker has filled job->out (the access handler runs again after the resume). */
bool http_pool_job_done(http_pool *p, const http_job *job);
/* Stops the workers: queued jobs are answered 503 shutting_down and resumed, running ones finish
 * (tokenizing gives up once the server's stopping flag is set). Before MHD_stop_daemon. */
void http_pool_stop(http_pool *p);
/* After http_pool_stop and MHD_stop_daemon (the access handler may still ask http_pool_job_done).
 */
void http_pool_free(http_pool *p);
void http_prepared_free(http_prepared *p);

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
/* POST /v1/completions' prepare step (a pool worker): parses and tokenizes the body. */
void completion_prepare(http_server *s, const char *body, size_t len, http_prepared *out);
/* Starts a prepared request (MHD thread; out->req is moved into the completion); *c_out receives
 * the request state (NULL when the request was answered at once, e.g. an error). chat selects the
 * chat JSON shapes, tools the format its non-streamed output is parsed for tool calls in. */
enum MHD_Result completion_start_request(http_server *s, struct MHD_Connection *conn,
                                         http_prepared *p, completion **c_out);
/* POST /v1/chat/completions' prepare step (http_chat.c): renders and tokenizes the messages. */
void chat_prepare(http_server *s, const char *body, size_t len, http_prepared *out);
/* POST /tokenize whose body holds "messages" (http_chat.c); false when it holds none. */
bool chat_tokenize_wanted(const char *body, size_t len);
void chat_tokenize_prepare(http_server *s, const char *body, size_t len, http_prepared *out);
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
