/* The daemon: start/stop, per-connection state, the checks every request goes through (API key,
 * route, method, body size) in that order, the small endpoints, and the disconnect watcher. The
 * completion flow is in http_completions.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "server/http_internal.h"

#define WATCH_WAKE UINT64_MAX

/* Per-connection, per-request state (libmicrohttpd's con_cls). */
typedef struct conn_ctx {
    const struct route *route;
    char *body;
    size_t len, cap;
    bool too_large;
    bool queued;  /* the body went to the pool (job) */
    http_job job; /* the route's prepare step on a pool worker */
    completion *c;
} conn_ctx;

typedef enum MHD_Result (*route_fn)(http_server *s, struct MHD_Connection *conn, conn_ctx *cx);

typedef struct route {
    const char *path;
    const char *method;      /* GET routes answer HEAD too */
    route_fn handle;         /* on the MHD thread; NULL for a route with prepare */
    http_prepare_fn prepare; /* on a pool worker (the body's CPU work), then answered */
} route;

/* ---- responses ---- */

/* The server of a connection (its socket context, set in on_connection). */
static http_server *conn_server(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* The Origin header when allowed_origins lets it in (as vLLM's --allowed-origins), else NULL. */
static const char *cors_origin(struct MHD_Connection *conn) {
    http_server *s = conn_server(conn);
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    if (!s || !s->opt.allowed_origins || !origin) return NULL;
    const char *list = s->opt.allowed_origins;
    size_t n = strlen(origin);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',') p++;
        size_t len = strcspn(p, ", ");
        if ((len == 1 && *p == '*') || (len == n && len && !strncmp(p, origin, n))) return origin;
        p += len;
    }
    return NULL;
}

void http_add_cors(struct MHD_Connection *conn, struct MHD_Response *r) {
    const char *origin = cors_origin(conn);
    if (!origin) return;
    bool any = !strcmp(conn_server(conn)->opt.allowed_origins, "*");
    MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, any ? "*" : origin);
    if (!any) MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Origin");
}

/* A CORS preflight (OPTIONS with an allowed Origin): 204 with the methods and headers allowed. */
static enum MHD_Result respond_preflight(struct MHD_Connection *conn) {
    struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    KV_CHECK(r);
    http_add_cors(conn, r);
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, HEAD, OPTIONS");
    const char *want =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Headers");
    MHD_add_response_header(r, "Access-Control-Allow-Headers",
                            want ? want : "Authorization, Content-Type");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_NO_CONTENT, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result http_respond(struct MHD_Connection *conn, int status, char *body,
                             const char *content_type) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    KV_CHECK(r);
    if (content_type) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    http_add_cors(conn, r);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result http_respond_error(struct MHD_Connection *conn, const openai_error *e) {
    return http_respond(conn, e->status, openai_error_body(e), "application/json");
}

static enum MHD_Result respond_json(struct MHD_Connection *conn, int status, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    KV_CHECK(s);
    return http_respond(conn, status, s, "application/json");
}

openai_model_info http_model_info(http_server *s) {
    return (openai_model_info){
        .served_model_name = s->opt.served_model_name,
        .tok = s->tok,
        .max_model_len = s->max_model_len,
        .vocab_size = s->tok ? tokenizer_vocab_size(s->tok) : 0,
        .defaults = &s->defaults,
        .max_prompt_bytes = s->max_prompt_bytes,
        .max_logprobs = s->opt.max_logprobs,
        .max_logprob_entries = s->opt.max_logprob_entries,
        .sc_vocab = s->sc_vocab,
        .sc_cache = s->sc_cache,
        .sc_limits = &s->sc_limits,
        .cancel = &s->stopping,
    };
}

/* ---- endpoints ---- */

static enum MHD_Result not_ready(struct MHD_Connection *conn) {
    openai_error e;
    openai_error_set(&e, 503, "server_error", NULL, "model_not_ready",
                     "the model is still loading");
    return http_respond_error(conn, &e);
}

static enum MHD_Result handle_health(http_server *s, struct MHD_Connection *conn, conn_ctx *cx) {
    if (!atomic_load(&s->ready) || atomic_load(&s->stopping)) return not_ready(conn);
    return http_respond(conn, 200, kv_strdup(""), NULL);
}

static enum MHD_Result handle_version(http_server *s, struct MHD_Connection *conn, conn_ctx *cx) {
    return respond_json(conn, 200, json_pack("{s:s}", "version", KVSERVE_VERSION));
}

static enum MHD_Result handle_metrics(http_server *s, struct MHD_Connection *conn, conn_ctx *cx) {
    return http_respond(conn, 200, metrics_render(s->metrics),
                        "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result handle_models(http_server *s, struct MHD_Connection *conn, conn_ctx *cx) {
    if (!atomic_load(&s->ready)) return not_ready(conn);
    json_t *model =
        json_pack("{s:s, s:s, s:I, s:s, s:s, s:n, s:i}", "id", s->opt.served_model_name, "object",
                  "model", "created", (json_int_t)s->start_time, "owned_by", "kvserve", "root",
                  s->opt.model_root ? s->opt.model_root : s->opt.served_model_name, "parent",
                  "max_model_len", s->max_model_len);
    return respond_json(conn, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", model));
}

/* /tokenize and /detokenize: a body in, a JSON body out, through one openai_* function. */
typedef int (*token_endpoint_fn)(const openai_model_info *info, const char *body, size_t len,
                                 char **out, openai_error *err);

static void token_endpoint_prepare(http_server *s, const char *body, size_t len, http_prepared *out,
                                   token_endpoint_fn fn) {
    openai_model_info info = http_model_info(s);
    if (fn(&info, body, len, &out->body, &out->err)) out->failed = true;
}

static void tokenize_prepare(http_server *s, const char *body, size_t len, http_prepared *out) {
    if (chat_tokenize_wanted(body, len))
        chat_tokenize_prepare(s, body, len, out);
    else
        token_endpoint_prepare(s, body, len, out, openai_tokenize);
}

static void detokenize_prepare(http_server *s, const char *body, size_t len, http_prepared *out) {
    token_endpoint_prepare(s, body, len, out, openai_detokenize);
}

static const route routes[] = {
    {"/health", "GET", handle_health, NULL},
    {"/version", "GET", handle_version, NULL},
    {"/metrics", "GET", handle_metrics, NULL},
    {"/v1/models", "GET", handle_models, NULL},
    {"/v1/completions", "POST", NULL, completion_prepare},
    {"/v1/chat/completions", "POST", NULL, chat_prepare},
    {"/tokenize", "POST", NULL, tokenize_prepare},
    {"/detokenize", "POST", NULL, detokenize_prepare},
};

/* ---- the checks every request goes through ---- */

/* Compares without an early exit, so the time taken does not reveal how much of the key matched. */
static bool key_equal(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    unsigned diff = (unsigned)(na != nb);
    for (size_t i = 0; i < na; i++)
        diff |= (unsigned char)a[i] ^ (unsigned char)b[i % (nb ? nb : 1)];
    return diff == 0;
}

static bool authorized(http_server *s, struct MHD_Connection *conn, const char *url) {
    if (!s->opt.api_key) return true;
    if (strncmp(url, "/v1", 3) != 0 || (url[3] != '\0' && url[3] != '/')) return true; /* as vLLM */
    const char *h =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0) return false;
    return key_equal(h + 7, s->opt.api_key);
}

/* First call for a request (headers only): answers 503/401/404/405/413 at once, or accepts. */
static enum MHD_Result request_begin(http_server *s, struct MHD_Connection *conn, conn_ctx *cx,
                                     const char *url, const char *method) {
    openai_error e;
    /* a browser's preflight carries no credentials: answered before the key check, as vLLM */
    if (!strcmp(method, "OPTIONS") && cors_origin(conn)) return respond_preflight(conn);
    if (!authorized(s, conn, url)) {
        openai_error_set(&e, 401, "invalid_request_error", NULL, "invalid_api_key",
                         "Incorrect or missing API key (send 'Authorization: Bearer <key>')");
        return http_respond_error(conn, &e);
    }
    const route *r = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0] && !r; i++)
        if (strcmp(routes[i].path, url) == 0) r = &routes[i];
    if (!r) {
        openai_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "no route %s %.200s",
                         method, url);
        return http_respond_error(conn, &e);
    }
    bool get = !strcmp(r->method, "GET");
    if (strcmp(method, r->method) != 0 && !(get && !strcmp(method, "HEAD"))) {
        openai_error_set(&e, 405, "invalid_request_error", NULL, "method_not_allowed",
                         "%s is not allowed on %s (use %s)", method, r->path, r->method);
        char *body = openai_error_body(&e);
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, get ? "GET, HEAD" : r->method);
        http_add_cors(conn, resp);
        enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoll(cl, NULL, 10) > s->opt.max_body_bytes) {
        openai_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                         "the request body is larger than %lld bytes", s->opt.max_body_bytes);
        return http_respond_error(conn, &e);
    }
    if (atomic_load(&s->stopping)) {
        openai_error_set(&e, 503, "server_error", NULL, "shutting_down",
                         "the server is shutting down");
        return http_respond_error(conn, &e);
    }
    cx->route = r;
    return MHD_YES;
}

/* A route with a prepare step: the first call hands the body to the pool (the connection stays
 * suspended meanwhile; a full queue is 503), the call after the worker's resume answers. */
static enum MHD_Result request_prepared(http_server *s, struct MHD_Connection *conn, conn_ctx *cx) {
    if (!cx->queued) {
        if (!atomic_load(&s->ready)) return not_ready(conn);
        cx->queued = true;
        cx->job = (http_job){.conn = conn,
                             .prepare = cx->route->prepare,
                             .body = cx->body ? cx->body : "",
                             .len = cx->len};
        if (http_pool_submit(&s->pool, &cx->job)) return MHD_YES;
        openai_error e;
        openai_error_set(&e, 503, "server_error", NULL, "server_overloaded",
                         "the server is overloaded (tokenize queue full): retry later");
        return http_respond_error(conn, &e);
    }
    if (!http_pool_job_done(&s->pool, &cx->job)) return MHD_YES; /* not resumed by the pool */
    http_prepared *p = &cx->job.out;
    if (p->failed) return http_respond_error(conn, &p->err);
    if (p->has_request) return completion_start_request(s, conn, p, &cx->c);
    char *body = p->body;
    p->body = NULL;
    return http_respond(conn, 200, body ? body : kv_strdup("{}"), "application/json");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    http_server *s = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) {
        cx = kv_calloc(1, sizeof *cx);
        *con_cls = cx;
        return request_begin(s, conn, cx, url, method);
    }
    if (cx->c) return completion_continue(cx->c, conn);
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (cx->too_large) return MHD_YES;
        if (cx->len + n > (size_t)s->opt.max_body_bytes) { /* chunked upload over the limit */
            cx->too_large = true;
            free(cx->body);
            cx->body = NULL;
            cx->len = cx->cap = 0;
            return MHD_YES;
        }
        if (cx->len + n + 1 > cx->cap) {
            cx->cap = (cx->len + n + 1) * 2;
            cx->body = kv_realloc(cx->body, cx->cap);
        }
        memcpy(cx->body + cx->len, upload_data, n);
        cx->len += n;
        cx->body[cx->len] = '\0';
        return MHD_YES;
    }
    if (cx->too_large) {
        openai_error e;
        openai_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                         "the request body is larger than %lld bytes", s->opt.max_body_bytes);
        return http_respond_error(conn, &e);
    }
    if (!cx->route) return MHD_NO; /* answered on the first call */
    if (cx->route->prepare) return request_prepared(s, conn, cx);
    return cx->route->handle(s, conn, cx);
}

/* The request ended: normally (COMPLETED_OK) or not (client gone, write error, shutdown); an
 * abnormal end cancels whatever the request still has in the engine. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    conn_ctx *cx = *con_cls;
    if (!cx) return;
    if (cx->c) completion_connection_closed(cx->c, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    http_prepared_free(&cx->job.out);
    free(cx->body);
    free(cx);
    *con_cls = NULL;
}

/* A new connection: its socket context is the server (for conn_server). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe) {
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) *socket_context = cls;
}

/* ---- disconnect watcher ---- */

int http_watch(http_server *s, struct MHD_Connection *conn, completion *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return -1;
    pthread_mutex_lock(&s->watch_lock);
    int slot = 0;
    while (slot < s->n_slots && s->slots[slot].c) slot++;
    if (slot == s->n_slots) {
        s->n_slots = s->n_slots ? s->n_slots * 2 : 64;
        s->slots = kv_realloc(s->slots, sizeof *s->slots * (size_t)s->n_slots);
        memset(s->slots + slot, 0, sizeof *s->slots * (size_t)(s->n_slots - slot));
    }
    watch_slot *w = &s->slots[slot];
    w->c = c;
    w->gen++;
    w->fd = ci->connect_fd;
    /* no events asked: EPOLLHUP and EPOLLERR (a real hang-up or a reset) are always reported.
     * Not EPOLLRDHUP: a client may shut down its sending side after the request and still read
     * the answer. A client that closes both sides is seen at the first write (a stream) or when
     * the answer is sent. One-shot, so a dead socket reports once. */
    struct epoll_event ev = {.events = EPOLLONESHOT,
                             .data.u64 = (uint64_t)slot | ((uint64_t)w->gen << 32)};
    if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, w->fd, &ev) != 0) {
        w->c = NULL;
        slot = -1;
    }
    pthread_mutex_unlock(&s->watch_lock);
    return slot;
}

/* Must run before libmicrohttpd closes the socket (it does in NOTIFY_COMPLETED), so the fd number
 * cannot belong to another connection yet. */
void http_unwatch(http_server *s, int slot) {
    pthread_mutex_lock(&s->watch_lock);
    watch_slot *w = &s->slots[slot];
    epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, w->fd, NULL);
    w->c = NULL;
    pthread_mutex_unlock(&s->watch_lock);
}

static void *watcher_main(void *arg) {
    http_server *s = arg;
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(s->epoll_fd, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            return NULL;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == WATCH_WAKE) return NULL;
            uint32_t slot = (uint32_t)evs[i].data.u64, gen = (uint32_t)(evs[i].data.u64 >> 32);
            pthread_mutex_lock(&s->watch_lock); /* the completion stays alive while watched */
            if ((int)slot < s->n_slots && s->slots[slot].c && s->slots[slot].gen == gen)
                completion_client_gone(s->slots[slot].c);
            pthread_mutex_unlock(&s->watch_lock);
        }
    }
}

/* ---- lifecycle ---- */

/* Each idle keep-alive connection is a file descriptor: lift the soft limit towards the hard one.
 */
static void raise_fd_limit(int max_connections) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = (rlim_t)max_connections + 256;
    if (rl.rlim_cur >= want) return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* After libmicrohttpd failed to start (it keeps no errno): binds the address the same way (with
 * SO_REUSEADDR, never SO_REUSEPORT, so a port another server listens on is refused) and returns
 * the errno, 0 when the bind works. */
static int probe_bind(const struct addrinfo *ai) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc = bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : errno;
    close(fd);
    return rc;
}

static void server_free(http_server *s) {
    free((char *)s->opt.host);
    free((char *)s->opt.api_key);
    free((char *)s->opt.allowed_origins);
    free((char *)s->opt.served_model_name);
    free((char *)s->opt.model_root);
    if (s->epoll_fd >= 0) close(s->epoll_fd);
    if (s->wake_fd >= 0) close(s->wake_fd);
    free(s->slots);
    http_pool_free(&s->pool);
    sampler_params_free(&s->defaults);
    sc_cache_free(s->sc_cache);
    sc_vocab_free(s->sc_vocab);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->watch_lock);
    pthread_cond_destroy(&s->idle);
    free(s);
}

int http_server_start(http_server **out, const http_server_options *opt,
                      const server_engine *engine, metrics *m, kv_error *err) {
    http_server *s = kv_calloc(1, sizeof *s);
    s->opt = *opt;
    s->opt.host = kv_strdup(opt->host ? opt->host : "0.0.0.0");
    s->opt.api_key = opt->api_key && opt->api_key[0] ? kv_strdup(opt->api_key) : NULL;
    s->opt.allowed_origins =
        opt->allowed_origins && opt->allowed_origins[0] ? kv_strdup(opt->allowed_origins) : NULL;
    s->opt.served_model_name = kv_strdup(opt->served_model_name ? opt->served_model_name : "");
    s->opt.model_root = opt->model_root ? kv_strdup(opt->model_root) : NULL;
    s->engine = *engine;
    s->metrics = m;
    s->start_time = (long long)time(NULL);
    s->epoll_fd = s->wake_fd = -1;
    sampler_params_default(&s->defaults);
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->watch_lock, NULL);
    pthread_cond_init(&s->idle, NULL);

    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", opt->port);
    int gai = getaddrinfo(s->opt.host, port, &hints, &ai);
    if (gai != 0) {
        kv_error_set(err, "http: cannot resolve host '%s': %s", s->opt.host, gai_strerror(gai));
        server_free(s);
        return -1;
    }
    s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    s->wake_fd = eventfd(0, EFD_CLOEXEC);
    struct epoll_event wake = {.events = EPOLLIN, .data.u64 = WATCH_WAKE};
    if (s->epoll_fd < 0 || s->wake_fd < 0 ||
        epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, s->wake_fd, &wake)) {
        kv_error_set(err, "http: epoll: %s", strerror(errno));
        freeaddrinfo(ai);
        server_free(s);
        return -1;
    }
    raise_fd_limit(opt->max_connections);

    /* no MHD_USE_ERROR_LOG: its messages are mostly clients that went away, which is normal here;
     * start-up failures come back as err */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)opt->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(opt->n_threads > 0 ? opt->n_threads : 1),
        MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(opt->max_connections > 0 ? opt->max_connections : 4096),
        MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)(opt->connection_timeout_s > 0 ? opt->connection_timeout_s : 0),
        MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)(opt->max_connections_per_ip > 0 ? opt->max_connections_per_ip : 0),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        s, MHD_OPTION_END);
    if (!s->daemon) {
        int bind_errno = probe_bind(ai);
        freeaddrinfo(ai);
        kv_error_set(err, "http: cannot listen on %s:%d: %s", s->opt.host, opt->port,
                     bind_errno == EADDRINUSE ? "address already in use"
                     : bind_errno             ? strerror(bind_errno)
                                              : "libmicrohttpd refused to start");
        server_free(s);
        return -1;
    }
    freeaddrinfo(ai);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : opt->port;
    if (http_pool_start(&s->pool, s, opt->n_tokenize_threads > 0 ? opt->n_tokenize_threads : 2,
                        opt->max_tokenize_queue > 0 ? opt->max_tokenize_queue : 4096, err)) {
        MHD_stop_daemon(s->daemon);
        server_free(s);
        return -1;
    }
    if (pthread_create(&s->watcher, NULL, watcher_main, s) != 0) {
        http_pool_stop(&s->pool);
        MHD_stop_daemon(s->daemon);
        server_free(s);
        return kv_error_set(err, "http: cannot start the watcher thread");
    }
    *out = s;
    return 0;
}

/* The most bytes of text that max_model_len tokens can cover: every token covers at most as many
 * bytes as its longest decoded form; doubled (+4) for normalization that shrinks the text (NFC
 * composition) and decoders that drop a leading space. 0 = unknown (no check). */
static long long prompt_byte_bound(const tokenizer *tok, int max_model_len) {
    if (!tok || max_model_len <= 0) return 0;
    size_t longest = 0;
    int n_vocab = tokenizer_vocab_size(tok);
    for (int32_t id = 0; id < n_vocab; id++) {
        char *text = NULL;
        size_t n = 0;
        if (tokenizer_decode(tok, &id, 1, false, &text, &n, NULL) == 0 && n > longest) longest = n;
        free(text);
    }
    return (long long)max_model_len * (2 * (long long)longest + 4);
}

/* Compiled structured-output constraints kept for reuse (each holds its DFA and the masks of the
 * states requests visited). */
#define HTTP_CONSTRAINT_CACHE 32

/* Every token's bytes (tokenizer_token_bytes) in the trie the structured-output masks walk. */
static sc_vocab *structured_vocab(const tokenizer *tok) {
    if (!tok) return NULL;
    int n = tokenizer_vocab_size(tok);
    char **bytes = kv_calloc((size_t)n + 1, sizeof *bytes);
    size_t *lens = kv_calloc((size_t)n + 1, sizeof *lens);
    for (int32_t id = 0; id < n; id++)
        if (tokenizer_token_bytes(tok, id, &bytes[id], &lens[id], NULL)) lens[id] = 0;
    sc_vocab *v = sc_vocab_new(n, (const char *const *)bytes, lens);
    for (int32_t id = 0; id < n; id++) free(bytes[id]);
    free(bytes);
    free(lens);
    return v;
}

void http_server_set_model(http_server *s, const tokenizer *tok, int max_model_len,
                           const sampler_params *defaults) {
    s->tok = tok;
    sc_cache_free(s->sc_cache);
    sc_vocab_free(s->sc_vocab);
    s->sc_vocab = structured_vocab(tok);
    s->sc_cache = s->sc_vocab ? sc_cache_new(HTTP_CONSTRAINT_CACHE, s->sc_vocab) : NULL;
    sc_limits_default(&s->sc_limits);
    if (s->opt.structured_max_states > 0)
        s->sc_limits.max_dfa_states = s->opt.structured_max_states;
    if (s->opt.structured_max_bytes > 0)
        s->sc_limits.max_regex_bytes = (size_t)s->opt.structured_max_bytes;
    s->max_model_len = max_model_len;
    s->max_prompt_bytes = prompt_byte_bound(tok, max_model_len);
    if (defaults) {
        sampler_params_free(&s->defaults);
        sampler_params_copy(&s->defaults, defaults);
    }
    atomic_store(&s->ready, true);
}

int http_server_port(const http_server *s) {
    return s->port;
}

/* Waits up to seconds for every live completion to be freed; returns how many are left. */
static int wait_idle(http_server *s, int seconds) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += seconds;
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    while (s->n_live > 0 && rc == 0) rc = pthread_cond_timedwait(&s->idle, &s->lock, &deadline);
    int n_left = s->n_live;
    pthread_mutex_unlock(&s->lock);
    return n_left;
}

void http_server_stop(http_server *s) {
    /* 1. no new requests; 2. every live request ends (suspended ones are resumed: libmicrohttpd
     * refuses to stop with suspended connections); 3. close the connections; 4. wait for the engine
     * to send the last events of cancelled requests (bounded: with an engine that is already gone,
     * its requests and the server struct are left behind rather than freed under it). */
    completion **live;
    int n_live = completion_live_refs(s, &live);
    for (int i = 0; i < n_live; i++) {
        completion_abort(live[i]);
        completion_release(live[i]);
    }
    free(live);
    /* queued bodies are answered 503, the ones being tokenized give up (stopping is set) */
    http_pool_stop(&s->pool);
    /* the resumed streams write their finish chunks and [DONE] before the sockets close (bounded:
     * a client that stopped reading cannot hold the shutdown) */
    wait_idle(s, 5);
    MHD_stop_daemon(s->daemon);

    uint64_t one = 1;
    if (write(s->wake_fd, &one, sizeof one) != sizeof one) KV_CHECK(!"eventfd write");
    pthread_join(s->watcher, NULL);

    int n_left = wait_idle(s, 5);
    if (n_left == 0)
        server_free(s);
    else
        fprintf(stderr, "kvserve: http: %d requests still in the engine at shutdown\n", n_left);
}
