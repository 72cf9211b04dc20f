/* The HTTP front end on libmicrohttpd: routing, optional API key, body limit, the OpenAI endpoints,
 * SSE streaming, and cancelling a request whose client went away. Owns the daemon, its threads and
 * the per-request channels; the engine (server_engine), tokenizer and metrics are borrowed.
 *
 * Threading: libmicrohttpd runs with internal polling threads on epoll (MHD_USE_INTERNAL_POLLING_
 * THREAD | MHD_USE_EPOLL, a small thread pool), so 1,000+ idle keep-alive connections cost a socket
 * and a few KiB each, not a thread. A request waiting for tokens is suspended
 * (MHD_suspend_connection) and resumed by the engine's event callback; thread-per-connection would
 * block a thread per stream (a content reader returning 0 blocks its thread) and cannot hold
 * thousands of idle connections. Suspended connections are invisible to libmicrohttpd's own
 * disconnect detection, so a watcher thread polls their sockets for hang-ups (EPOLLHUP/EPOLLERR,
 * not EPOLLRDHUP: a client that half-closes after its request still reads the answer) and
 * cancels their engine requests; a failed write or any abnormal end (NOTIFY_COMPLETED with a code
 * other than COMPLETED_OK) cancels too. The CPU work of a body (JSON parse, chat template,
 * tokenizing: seconds for a body of megabytes) runs on a small pool of workers with a bounded
 * queue (http_pool.c), its connection suspended meanwhile, so it never holds a polling thread:
 * /health keeps answering and a shutdown makes the tokenizer give up. */
#ifndef KVSERVE_HTTP_H
#define KVSERVE_HTTP_H

#include "model/common.h"
#include "model/sampler.h"
#include "model/tokenizer/tokenizer.h"
#include "server/engine/engine_api.h"
#include "server/chat/reasoning_parser.h"
#include "server/chat/tool_parser.h"
#include "server/metrics.h"

typedef struct http_server_options {
    const char *host;            /* "0.0.0.0", "127.0.0.1", "::" ... */
    int port;                    /* 0 = any free port (see http_server_port) */
    const char *api_key;         /* NULL = open; else required on /v1 paths as "Bearer KEY" */
    const char *allowed_origins; /* CORS: "*" or comma-separated origins; NULL = no CORS */
    long long max_body_bytes;    /* larger bodies get 413 */
    int n_threads;               /* polling threads */
    int n_tokenize_threads;      /* workers that parse and tokenize bodies (0 = 2) */
    int max_tokenize_queue;      /* bodies waiting for a worker; more get 503 (0 = 4096) */
    int max_connections;
    int connection_timeout_s;   /* idle or stalled connections close after this (0 = never) */
    int max_connections_per_ip; /* open connections from one client address (0 = no limit) */
    int max_logprobs;           /* largest logprobs a request may ask (0 = SAMPLER_MAX_LOGPROBS) */
    int structured_max_states;  /* DFA states of a constraint (0 = sc_limits_default) */
    long long structured_max_bytes; /* bytes of its regex (0 = sc_limits_default) */
    long long max_logprob_entries;  /* n x tokens x (logprobs + 1) per request (0 = no limit) */
    bool log_requests; /* one line per completion on stderr (id, status, tokens, TTFT, time) */
    const char *served_model_name;     /* the name in /v1/models and responses */
    const char *model_root;            /* "root" in /v1/models (the model path); may be NULL */
    tool_parser_kind tool_call_parser; /* chat output with tools; AUTO = the template's format */
    reasoning_parser_kind reasoning_parser; /* <think> in chat output to reasoning_content */
} http_server_options;

typedef struct http_server http_server;

/* Starts listening. Until http_server_set_model, /health answers 503 and model endpoints 503.
 * engine and m must outlive the server. */
int http_server_start(http_server **out, const http_server_options *opt,
                      const server_engine *engine, metrics *m, kv_error *err);
/* Marks the model loaded: tok (borrowed, outlives the server), the context length, and default
 * sampling parameters (copied; NULL = OpenAI defaults). Call once. */
void http_server_set_model(http_server *s, const tokenizer *tok, int max_model_len,
                           const sampler_params *defaults);
/* The model's chat template for /v1/chat/completions and /tokenize with messages (borrowed,
 * outlives the server; NULL = none: chat requests get 400). Call before http_server_set_model. */
struct chat_source;
void http_server_set_chat(http_server *s, const struct chat_source *cs);
/* The port actually bound (useful with port 0). */
int http_server_port(const http_server *s);
/* Cancels running requests, closes every connection and frees the server. Call before stopping the
 * engine: requests still in the engine get their final events delivered to nowhere. */
void http_server_stop(http_server *s);

#endif
