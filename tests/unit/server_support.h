/* Test support for the server tests: a byte-level tokenizer (id = byte, 256 = <eos>), a fake engine
 * that produces deterministic tokens from its own thread, and a small blocking HTTP/1.1 client. */
#ifndef KVSERVE_TEST_SERVER_SUPPORT_H
#define KVSERVE_TEST_SERVER_SUPPORT_H

#include <pthread.h>

#include "model/tokenizer/tokenizer.h"
#include "server/engine/engine_api.h"

/* ---- byte tokenizer: Hugging Face ByteLevel BPE with no merges: token id b is byte b ---- */
#define BYTE_TOK_EOS 256
tokenizer *byte_tokenizer_new(void);

/* ---- fake engine ---- */

typedef struct fake_request {
    uint64_t id;
    int32_t *prompt;
    int n_prompt;
    sampler_params params;
    char *cache_salt;
    engine_event_fn on_event;
    void *user;
    int n_sent; /* generated tokens sent */
    bool prompt_sent;
    bool cancelled;
} fake_request;

/* Request k emits script[(i + offset) % n_script] as token i, where offset = seed % n_script for
 * seeded requests (0 otherwise). It stops with LENGTH at max_tokens, with STOP at a stop_token_ids
 * entry or at BYTE_TOK_EOS (unless ignore_eos). Logprob of token i: -0.5 - 0.25 * (i % 3); top
 * alternatives: token, token + 1, ... with lower logprobs. Every event reports n_cached_gpu =
 * n_prompt / 2 and n_cached_host = 1. */
typedef struct fake_engine {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    bool stop;
    bool hold;      /* while true no tokens are produced (but see budget) */
    int budget;     /* steps allowed while holding */
    int max_active; /* submit beyond it answers BUSY */
    const int32_t *script;
    int n_script;
    fake_request **active;
    int n_active;
    uint64_t next_id;
    int n_submitted;
    int n_cancelled;         /* cancel calls for active requests */
    uint64_t last_seeds[16]; /* seeds of the first 16 submitted requests */
} fake_engine;

void fake_engine_start(fake_engine *e, const int32_t *script, int n_script);
void fake_engine_stop(fake_engine *e);
server_engine fake_engine_iface(fake_engine *e);
void fake_engine_hold(fake_engine *e, bool hold);
/* While holding, lets n more tokens out (one step of one request each). */
void fake_engine_allow(fake_engine *e, int n);
/* Waits (up to 20 s) until pred holds; returns whether it did. */
bool fake_engine_wait_active(fake_engine *e, int n_active);
bool fake_engine_wait_cancelled(fake_engine *e, int n_cancelled);
bool fake_engine_wait_submitted(fake_engine *e, int n_submitted);

/* ---- HTTP client ---- */

typedef struct http_reply {
    int status;
    char headers[8192];
    char *body; /* NUL-terminated, de-chunked */
    size_t body_len;
} http_reply;

int http_connect_local(int port);
/* Sends one request; extra_headers is "" or lines each ending in \r\n. */
void http_send(int fd, const char *method, const char *path, const char *extra_headers,
               const char *body);
/* Reads one response (Content-Length or chunked). Returns 0, or -1 when the connection closed. */
int http_read(int fd, http_reply *r);
void http_reply_free(http_reply *r);
/* One request on a new connection. */
int http_do(int port, const char *method, const char *path, const char *extra_headers,
            const char *body, http_reply *r);
/* A header value from a reply (case-insensitive name), copied into out; false when absent. */
bool http_header(const http_reply *r, const char *name, char *out, size_t size);

#endif
