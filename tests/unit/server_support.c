/* Test support for the server tests: byte tokenizer, fake engine, HTTP client. */
#include "tests/unit/server_support.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- byte tokenizer ---- */

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to 256 + k. */
static int byte_to_codepoint(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    int k = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) k++;
    return 256 + k;
}

tokenizer *byte_tokenizer_new(void) {
    json_t *vocab = json_object();
    for (int b = 0; b < 256; b++) {
        int cp = byte_to_codepoint(b);
        char s[4];
        if (cp < 0x80) {
            s[0] = (char)cp;
            s[1] = 0;
        } else {
            s[0] = (char)(0xC0 | (cp >> 6));
            s[1] = (char)(0x80 | (cp & 0x3F));
            s[2] = 0;
        }
        json_object_set_new(vocab, s, json_integer(b));
    }
    json_t *root = json_pack(
        "{s:s, s:[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}], s:n, s:{s:s, s:b, s:b, s:b}, s:n,"
        " s:{s:s, s:b, s:b, s:b}, s:{s:s, s:n, s:n, s:b, s:b, s:o, s:[]}}",
        "version", "1.0", "added_tokens", "id", BYTE_TOK_EOS, "content", "<eos>", "single_word", 0,
        "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1, "normalizer", "pre_tokenizer",
        "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0,
        "post_processor", "decoder", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
        "use_regex", 0, "model", "type", "BPE", "dropout", "unk_token", "fuse_unk", 0,
        "byte_fallback", 0, "vocab", vocab, "merges");
    if (!root) abort();
    char *text = json_dumps(root, 0);
    json_decref(root);
    tokenizer *tok = NULL;
    kv_error err;
    if (tokenizer_load_json(&tok, text, strlen(text), NULL, 0, &err)) {
        fprintf(stderr, "byte tokenizer: %s\n", err.msg);
        abort();
    }
    free(text);
    return tok;
}

/* ---- fake engine ---- */

static void fake_send(fake_request *r, const engine_event *ev) {
    r->on_event(r->user, ev);
}

static engine_event fake_base_event(const fake_request *r) {
    return (engine_event){.token = -1,
                          .n_prompt_tokens = r->n_prompt,
                          .n_cached_gpu = r->n_prompt / 2,
                          .n_cached_host = 1};
}

/* One step of one request: its prompt logprobs, or its next token. Returns true when it ended. */
static bool fake_step(fake_engine *e, fake_request *r) {
    if (r->cancelled) {
        engine_event ev = fake_base_event(r);
        ev.finish = KV_FINISH_ABORT;
        fake_send(r, &ev);
        return true;
    }
    if (!r->prompt_sent && r->params.prompt_logprobs >= 0) {
        for (int i = 1; i < r->n_prompt; i++) {
            engine_event ev = {.token = r->prompt[i], .is_prompt = true, .logprob = -1.0f};
            ev.n_top = r->params.prompt_logprobs;
            for (int k = 0; k < ev.n_top; k++) {
                ev.top_ids[k] = (r->prompt[i] + k) % 256;
                ev.top_logprobs[k] = -1.0f - (float)k;
            }
            fake_send(r, &ev);
        }
    }
    r->prompt_sent = true;
    int offset = r->params.has_seed ? (int)(r->params.seed % (uint64_t)e->n_script) : 0;
    int i = r->n_sent;
    int32_t tok = e->script[(i + offset) % e->n_script];
    engine_event ev = fake_base_event(r);
    ev.token = tok;
    ev.logprob = -0.5f - 0.25f * (float)(i % 3);
    if (r->params.logprobs >= 0) {
        ev.n_top = r->params.logprobs;
        for (int k = 0; k < ev.n_top; k++) {
            ev.top_ids[k] = (tok + k) % 256;
            ev.top_logprobs[k] = ev.logprob - (float)k;
        }
    }
    r->n_sent++;
    bool stop_id = false;
    for (int k = 0; k < r->params.n_stop_token_ids; k++)
        stop_id |= r->params.stop_token_ids[k] == tok;
    bool gen_ok = r->n_sent >= r->params.min_tokens;
    if (gen_ok && (stop_id || (tok == BYTE_TOK_EOS && !r->params.ignore_eos))) {
        ev.finish = KV_FINISH_STOP;
        ev.stop_token = tok;
    } else if (r->n_sent >= r->params.max_tokens) {
        ev.finish = KV_FINISH_LENGTH;
    }
    fake_send(r, &ev);
    return ev.finish != KV_FINISH_NONE;
}

static void fake_request_free(fake_request *r) {
    free(r->prompt);
    free(r->cache_salt);
    sampler_params_free(&r->params);
    free(r);
}

static void *fake_main(void *arg) {
    fake_engine *e = arg;
    pthread_mutex_lock(&e->lock);
    while (!e->stop) {
        bool any_cancel = false;
        for (int i = 0; i < e->n_active; i++) any_cancel |= e->active[i]->cancelled;
        if (e->n_active == 0 || (e->hold && !any_cancel && e->budget == 0)) {
            pthread_cond_wait(&e->cond, &e->lock);
            continue;
        }
        /* events are sent with the engine lock held, as a real engine may do */
        for (int i = 0; i < e->n_active;) {
            fake_request *r = e->active[i];
            bool go = !e->hold || r->cancelled || e->budget > 0;
            if (go && e->hold && !r->cancelled) e->budget--;
            if (go && fake_step(e, r)) {
                fake_request_free(r);
                e->active[i] = e->active[--e->n_active];
                pthread_cond_broadcast(&e->cond);
            } else {
                i++;
            }
        }
        pthread_mutex_unlock(&e->lock);
        usleep(200);
        pthread_mutex_lock(&e->lock);
    }
    /* whatever is left ends as aborted, so the server frees its channels */
    for (int i = 0; i < e->n_active; i++) {
        engine_event ev = fake_base_event(e->active[i]);
        ev.finish = KV_FINISH_ABORT;
        fake_send(e->active[i], &ev);
        fake_request_free(e->active[i]);
    }
    e->n_active = 0;
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

static engine_submit_status fake_submit(void *ctx, const engine_request *req, uint64_t *id,
                                        kv_error *err) {
    fake_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    if (e->n_active >= e->max_active) {
        pthread_mutex_unlock(&e->lock);
        return ENGINE_SUBMIT_BUSY;
    }
    if (req->params->max_tokens == 7777) { /* a value the tests use to provoke a rejection */
        pthread_mutex_unlock(&e->lock);
        kv_error_set(err, "fake engine rejects max_tokens=7777");
        return ENGINE_SUBMIT_REJECTED;
    }
    fake_request *r = calloc(1, sizeof *r);
    r->id = ++e->next_id;
    r->prompt = malloc(sizeof *r->prompt * (size_t)req->n_prompt);
    memcpy(r->prompt, req->prompt, sizeof *r->prompt * (size_t)req->n_prompt);
    r->n_prompt = req->n_prompt;
    sampler_params_copy(&r->params, req->params);
    r->cache_salt = req->cache_salt ? strdup(req->cache_salt) : NULL;
    r->on_event = req->on_event;
    r->user = req->user;
    if (e->n_submitted < 16) e->last_seeds[e->n_submitted] = req->params->seed;
    e->n_submitted++;
    e->active[e->n_active++] = r;
    *id = r->id;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
    return ENGINE_SUBMIT_OK;
}

static void fake_cancel(void *ctx, uint64_t id) {
    fake_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < e->n_active; i++)
        if (e->active[i]->id == id && !e->active[i]->cancelled) {
            e->active[i]->cancelled = true;
            e->n_cancelled++;
        }
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
}

void fake_engine_start(fake_engine *e, const int32_t *script, int n_script) {
    memset(e, 0, sizeof *e);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cond, NULL);
    e->script = script;
    e->n_script = n_script;
    e->max_active = 4096;
    e->active = calloc(4096, sizeof *e->active);
    pthread_create(&e->thread, NULL, fake_main, e);
}

void fake_engine_stop(fake_engine *e) {
    pthread_mutex_lock(&e->lock);
    e->stop = true;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->thread, NULL);
    free(e->active);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->cond);
}

server_engine fake_engine_iface(fake_engine *e) {
    return (server_engine){.ctx = e, .submit = fake_submit, .cancel = fake_cancel};
}

void fake_engine_hold(fake_engine *e, bool hold) {
    pthread_mutex_lock(&e->lock);
    e->hold = hold;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
}

void fake_engine_allow(fake_engine *e, int n) {
    pthread_mutex_lock(&e->lock);
    e->budget += n;
    pthread_cond_broadcast(&e->cond);
    pthread_mutex_unlock(&e->lock);
}

static bool fake_wait(fake_engine *e, const int *field, int want) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 20;
    pthread_mutex_lock(&e->lock);
    int rc = 0;
    while (*field < want && rc == 0) rc = pthread_cond_timedwait(&e->cond, &e->lock, &deadline);
    bool ok = *field >= want;
    pthread_mutex_unlock(&e->lock);
    return ok;
}

bool fake_engine_wait_active(fake_engine *e, int n_active) {
    return fake_wait(e, &e->n_active, n_active);
}
bool fake_engine_wait_cancelled(fake_engine *e, int n) {
    return fake_wait(e, &e->n_cancelled, n);
}

bool fake_engine_wait_submitted(fake_engine *e, int n) {
    return fake_wait(e, &e->n_submitted, n);
}

/* ---- HTTP client ---- */

int http_connect_local(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

void http_send(int fd, const char *method, const char *path, const char *extra_headers,
               const char *body) {
    char head[4096];
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s", method, path,
                     extra_headers ? extra_headers : "");
    if (body)
        n += snprintf(head + n, sizeof head - (size_t)n,
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n", strlen(body));
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    write_all(fd, head, (size_t)n);
    if (body) write_all(fd, body, strlen(body));
}

/* Reads one byte at a time: slow but never reads past the response (keep-alive safe). */
static int read_line(int fd, char *buf, size_t size) {
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        if (r <= 0) return -1;
        if (c == '\n') break;
        if (n + 1 < size) buf[n++] = c;
    }
    if (n > 0 && buf[n - 1] == '\r') n--;
    buf[n] = '\0';
    return (int)n;
}

static int read_exact(int fd, char *buf, size_t n) {
    while (n > 0) {
        ssize_t r = recv(fd, buf, n, 0);
        if (r <= 0) return -1;
        buf += r;
        n -= (size_t)r;
    }
    return 0;
}

bool http_header(const http_reply *r, const char *name, char *out, size_t size) {
    size_t nl = strlen(name);
    for (const char *p = r->headers; *p;) {
        const char *end = strchr(p, '\n');
        if (!end) end = p + strlen(p);
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ') v++;
            size_t len = (size_t)(end - v);
            if (len >= size) len = size - 1;
            memcpy(out, v, len);
            out[len] = '\0';
            return true;
        }
        p = *end ? end + 1 : end;
    }
    return false;
}

int http_read(int fd, http_reply *r) {
    memset(r, 0, sizeof *r);
    char line[8192];
    if (read_line(fd, line, sizeof line) < 0) return -1;
    if (sscanf(line, "HTTP/1.%*d %d", &r->status) != 1) return -1;
    size_t hl = 0;
    for (;;) {
        int n = read_line(fd, line, sizeof line);
        if (n < 0) return -1;
        if (n == 0) break;
        hl += (size_t)snprintf(r->headers + hl, sizeof r->headers - hl, "%s\n", line);
        if (hl >= sizeof r->headers) hl = sizeof r->headers - 1;
    }
    char v[64];
    size_t cap = 1024;
    r->body = malloc(cap);
    r->body_len = 0;
    if (http_header(r, "Transfer-Encoding", v, sizeof v) && strstr(v, "chunked")) {
        for (;;) {
            if (read_line(fd, line, sizeof line) < 0) return -1;
            size_t size = strtoul(line, NULL, 16);
            if (size == 0) {
                while (read_line(fd, line, sizeof line) > 0) {
                } /* trailers, then the empty line */
                break;
            }
            if (r->body_len + size + 1 > cap) {
                cap = (r->body_len + size + 1) * 2;
                r->body = realloc(r->body, cap);
            }
            if (read_exact(fd, r->body + r->body_len, size)) return -1;
            r->body_len += size;
            if (read_line(fd, line, sizeof line) < 0) return -1;
        }
    } else if (http_header(r, "Content-Length", v, sizeof v)) {
        size_t size = strtoul(v, NULL, 10);
        if (size + 1 > cap) r->body = realloc(r->body, size + 1);
        if (read_exact(fd, r->body, size)) return -1;
        r->body_len = size;
    }
    r->body[r->body_len] = '\0';
    return 0;
}

void http_reply_free(http_reply *r) {
    free(r->body);
    r->body = NULL;
}

int http_do(int port, const char *method, const char *path, const char *extra_headers,
            const char *body, http_reply *r) {
    int fd = http_connect_local(port);
    if (fd < 0) return -1;
    http_send(fd, method, path, extra_headers, body);
    int rc = http_read(fd, r);
    close(fd);
    return rc;
}
