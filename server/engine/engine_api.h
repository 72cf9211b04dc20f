/* The narrow interface the HTTP layer needs from the engine: submit a request (prompt ids, sampling
 * parameters, cache salt) with a callback that receives its token events, and cancel it. The real
 * engine (server/scheduler) is wired in through an adapter that fills server_engine; tests use a
 * fake engine. Text (detokenization, stop strings) stays on the HTTP side. */
#ifndef KVSERVE_ENGINE_API_H
#define KVSERVE_ENGINE_API_H

#include "model/common.h"
#include "model/sampler.h"

/* One event of a request. Events of a request arrive in order: prompt-logprob events first (only
 * when params.prompt_logprobs >= 0: one per prompt token from the second on), then one event per
 * generated token; the last event has finish != NONE and may carry a token too. */
typedef struct engine_event {
    int32_t token;  /* the sampled (or, with is_prompt, the prompt) token; -1 when none */
    bool is_prompt; /* a prompt-logprobs event */
    float logprob;  /* log-probability of token (raw distribution) */
    int n_top;      /* top_ids/top_logprobs entries, most likely first (params.logprobs or
                       prompt_logprobs of them) */
    int32_t top_ids[SAMPLER_MAX_LOGPROBS];
    float top_logprobs[SAMPLER_MAX_LOGPROBS];

    kv_finish finish;
    /* With finish == STOP: the token that stopped the request (an eos id or a stop_token_ids
     * entry); when it is this event's token, its text is not part of the output. */
    int32_t stop_token;
    const char
        *error; /* with ABORT: NULL when cancelled, else the reason (valid during the call) */
    /* On every generated-token event and on the last one: prompt tokens, and how many of them came
     * from the GPU prefix cache and from the host tier (not recomputed). The HTTP side keeps the
     * latest values (a request that a stop string ends is answered before its last event). */
    int n_prompt_tokens;
    int n_cached_gpu;
    int n_cached_host;   /* from host DRAM */
    int n_cached_disk;   /* read from the disk tier (through host memory) */
    int n_cached_remote; /* read from the remote tier (through host memory) */
} engine_event;

/* Called on the engine's thread (or inside submit); must not block. ev is valid during the call. */
typedef void (*engine_event_fn)(void *user, const engine_event *ev);

typedef struct engine_request {
    const int32_t *prompt; /* copied by submit */
    int n_prompt;
    const sampler_params *params; /* copied by submit */
    const char *cache_salt;       /* NULL = none; copied by submit */
    engine_event_fn on_event;
    void *user;
} engine_request;

typedef enum engine_submit_status {
    ENGINE_SUBMIT_OK,
    ENGINE_SUBMIT_BUSY,     /* the queue is full (max_queue): HTTP 503 */
    ENGINE_SUBMIT_REJECTED, /* the request cannot run (err says why): HTTP 400 */
} engine_submit_status;

typedef struct server_engine {
    void *ctx;
    /* Queues a request and sets *id (never reused). After OK, on_event is called until an event
     * with finish != NONE, then never again for this id. Any thread. */
    engine_submit_status (*submit)(void *ctx, const engine_request *req, uint64_t *id,
                                   kv_error *err);
    /* Asks the engine to end a request early: unless its last event was already sent, it sends one
     * with finish == ABORT soon after (blocks freed). Unknown or finished ids are ignored. Any
     * thread; must not call on_event synchronously. */
    void (*cancel)(void *ctx, uint64_t id);
} server_engine;

#endif
