/* The remote tier over hiredis: URL parsing, the two connections with their back-off, pipelined
 * EXISTS, GET and SET of header + payload. */
#include "offload/redis_store.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "offload/block_header.h"

#define RS_KEY_BYTES 160

/* One connection and its back-off. */
typedef struct rs_conn {
    redisContext *c;
    double retry_at; /* no connect attempt before this (kv_now) */
    double backoff;  /* seconds until the next attempt after a failure */
    struct timeval tv;
} rs_conn;

typedef struct redis_store {
    kv_block_store base;
    redis_url url;
    char prefix[96]; /* "kvserve:<ns hex>:" */
    size_t block_bytes;
    block_hash ns;
    rs_conn eng;             /* contains (engine thread) */
    rs_conn io;              /* get / put (I/O thread) */
    uint8_t *value;          /* [header + block_bytes] the put buffer (io_lock) */
    pthread_mutex_t io_lock; /* io and value: one get or put at a time on the connection */
    pthread_mutex_t lock;    /* st */
    kv_block_store_stats st;
} redis_store;

static redis_store *rs_of(kv_block_store *s) {
    return (redis_store *)s;
}

int redis_url_parse(const char *url, redis_url *out, kv_error *err) {
    const char *p = url;
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url || strncmp(p, "redis://", 8) != 0)
        return kv_error_set(err, "offload.remote.url must be redis://host[:port][/db] (got '%s')",
                            url ? url : "");
    p += 8;
    size_t n = strcspn(p, ":/");
    if (n == 0 || n >= sizeof out->host)
        return kv_error_set(err, "offload.remote.url '%s': no host, or a host too long", url);
    memcpy(out->host, p, n);
    p += n;
    if (*p == ':') {
        char *end;
        long v = strtol(++p, &end, 10);
        if (end == p || v < 1 || v > 65535 || (*end && *end != '/'))
            return kv_error_set(err, "offload.remote.url '%s': the port must be 1..65535", url);
        out->port = (int)v;
        p = end;
    }
    if (*p == '/') {
        char *end;
        long v = strtol(++p, &end, 10);
        if (*p && (end == p || v < 0 || v > 1 << 20 || *end))
            return kv_error_set(err, "offload.remote.url '%s': the database must be a number", url);
        out->db = (int)v;
        p = end;
    }
    if (*p) return kv_error_set(err, "offload.remote.url '%s': unexpected '%s'", url, p);
    return 0;
}

static void rs_count_error(redis_store *r) {
    pthread_mutex_lock(&r->lock);
    r->st.n_errors++;
    pthread_mutex_unlock(&r->lock);
}

static void conn_fail(redis_store *r, rs_conn *k) {
    if (k->c) redisFree(k->c);
    k->c = NULL;
    k->retry_at = kv_now() + k->backoff;
    k->backoff = k->backoff < 2.5 ? 2 * k->backoff : 5.0;
    rs_count_error(r);
}

/* The connection, made if needed and the back-off allows; NULL = treat as a miss. */
static redisContext *conn_get(redis_store *r, rs_conn *k) {
    if (k->c) return k->c;
    if (kv_now() < k->retry_at) return NULL;
    redisContext *c = redisConnectWithTimeout(r->url.host, r->url.port, k->tv);
    if (!c || c->err || redisSetTimeout(c, k->tv) != REDIS_OK) {
        if (c) redisFree(c);
        conn_fail(r, k);
        return NULL;
    }
    k->c = c;
    if (r->url.db != 0) {
        redisReply *rep = redisCommand(c, "SELECT %d", r->url.db);
        bool ok = rep && rep->type == REDIS_REPLY_STATUS;
        if (rep) freeReplyObject(rep);
        if (!ok) {
            conn_fail(r, k);
            return NULL;
        }
    }
    k->backoff = 0.1;
    return c;
}

static void key_of(const redis_store *r, const block_hash *h, char *out) {
    static const char digits[] = "0123456789abcdef";
    size_t n = strlen(r->prefix);
    memcpy(out, r->prefix, n);
    for (int i = 0; i < 32; i++) {
        out[n + 2 * i] = digits[h->b[i] >> 4];
        out[n + 2 * i + 1] = digits[h->b[i] & 15];
    }
    out[n + 64] = 0;
}

static int rs_contains(kv_block_store *s, const block_hash *h, int n) {
    redis_store *r = rs_of(s);
    redisContext *c = n > 0 ? conn_get(r, &r->eng) : NULL;
    if (!c) return 0;
    char key[RS_KEY_BYTES];
    for (int i = 0; i < n; i++) {
        key_of(r, &h[i], key);
        if (redisAppendCommand(c, "EXISTS %s", key) != REDIS_OK) {
            conn_fail(r, &r->eng);
            return 0;
        }
    }
    /* every reply is read (the pipeline must be drained), the leading run counted */
    int k = 0;
    bool run = true;
    for (int i = 0; i < n; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(c, (void **)&rep) != REDIS_OK || !rep) {
            conn_fail(r, &r->eng); /* a timeout or a dead server: the rest is a miss */
            return k;
        }
        bool yes = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
        freeReplyObject(rep);
        if (run && yes)
            k++;
        else
            run = false;
    }
    return k;
}

static bool rs_get_locked(kv_block_store *s, const block_hash *h, void *dst, size_t bytes) {
    redis_store *r = rs_of(s);
    double t0 = kv_now();
    redisContext *c = conn_get(r, &r->io);
    if (!c) return false;
    char key[RS_KEY_BYTES];
    key_of(r, h, key);
    redisReply *rep = redisCommand(c, "GET %s", key);
    if (!rep) {
        conn_fail(r, &r->io);
        pthread_mutex_lock(&r->lock);
        r->st.misses++;
        pthread_mutex_unlock(&r->lock);
        return false;
    }
    kv_block_verdict v = KV_BLOCK_OK;
    bool miss = rep->type != REDIS_REPLY_STRING;
    if (!miss) {
        kv_block_header hd;
        size_t len = rep->len;
        const uint8_t *p = (const uint8_t *)rep->str;
        v = kv_block_header_parse(p, len, &hd);
        if (v == KV_BLOCK_OK) v = kv_block_header_expect(&hd, &r->ns, h, bytes);
        if (v == KV_BLOCK_OK && len != KV_BLOCK_HEADER_BYTES + bytes) v = KV_BLOCK_SHORT;
        if (v == KV_BLOCK_OK) v = kv_block_payload_check(&hd, p + KV_BLOCK_HEADER_BYTES, bytes);
        if (v == KV_BLOCK_OK) memcpy(dst, p + KV_BLOCK_HEADER_BYTES, bytes);
    }
    freeReplyObject(rep);
    if (!miss && v != KV_BLOCK_OK) { /* a bad value helps no server: delete it */
        redisReply *d = redisCommand(c, "DEL %s", key);
        if (d)
            freeReplyObject(d);
        else
            conn_fail(r, &r->io);
    }
    pthread_mutex_lock(&r->lock);
    if (miss)
        r->st.misses++;
    else if (v != KV_BLOCK_OK)
        r->st.n_rejected++;
    else {
        r->st.hits++;
        r->st.bytes_read += bytes;
        r->st.read_seconds += kv_now() - t0;
    }
    pthread_mutex_unlock(&r->lock);
    return !miss && v == KV_BLOCK_OK;
}

static bool rs_put_locked(kv_block_store *s, const block_hash *h, const void *src, size_t bytes) {
    redis_store *r = rs_of(s);
    if (bytes != r->block_bytes) return false;
    double t0 = kv_now();
    redisContext *c = conn_get(r, &r->io);
    bool ok = c != NULL;
    char key[RS_KEY_BYTES];
    key_of(r, h, key);
    if (ok) { /* another server may have put it already: save the bandwidth */
        redisReply *rep = redisCommand(c, "EXISTS %s", key);
        if (!rep) {
            conn_fail(r, &r->io);
            ok = false;
        } else {
            bool present = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
            freeReplyObject(rep);
            if (present) return true;
        }
    }
    if (ok) {
        kv_block_header_encode(r->value, &r->ns, h, src, bytes);
        memcpy(r->value + KV_BLOCK_HEADER_BYTES, src, bytes);
        redisReply *rep =
            redisCommand(c, "SET %s %b", key, r->value, KV_BLOCK_HEADER_BYTES + bytes);
        if (!rep)
            conn_fail(r, &r->io), ok = false;
        else
            ok = rep->type == REDIS_REPLY_STATUS, freeReplyObject(rep);
    }
    pthread_mutex_lock(&r->lock);
    if (ok) {
        r->st.n_put++;
        r->st.bytes_written += bytes;
        r->st.write_seconds += kv_now() - t0;
    } else {
        r->st.n_put_failed++;
    }
    pthread_mutex_unlock(&r->lock);
    return ok;
}

static bool rs_get(kv_block_store *s, const block_hash *h, void *dst, size_t bytes) {
    redis_store *r = rs_of(s);
    pthread_mutex_lock(&r->io_lock);
    bool ok = rs_get_locked(s, h, dst, bytes);
    pthread_mutex_unlock(&r->io_lock);
    return ok;
}

static bool rs_put(kv_block_store *s, const block_hash *h, const void *src, size_t bytes) {
    redis_store *r = rs_of(s);
    pthread_mutex_lock(&r->io_lock);
    bool ok = rs_put_locked(s, h, src, bytes);
    pthread_mutex_unlock(&r->io_lock);
    return ok;
}

static kv_block_store_stats rs_stats(kv_block_store *s) {
    redis_store *r = rs_of(s);
    pthread_mutex_lock(&r->lock);
    kv_block_store_stats st = r->st;
    pthread_mutex_unlock(&r->lock);
    return st;
}

static void rs_destroy(kv_block_store *s) {
    redis_store *r = rs_of(s);
    if (r->eng.c) redisFree(r->eng.c);
    if (r->io.c) redisFree(r->io.c);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->io_lock);
    free(r->value);
    free(r);
}

static const kv_block_store_ops redis_store_ops = {
    .name = "remote",
    .contains = rs_contains,
    .get = rs_get,
    .put = rs_put,
    .stats = rs_stats,
    .destroy = rs_destroy,
};

static struct timeval tv_of(int ms) {
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

kv_block_store *redis_store_create(const redis_store_config *cfg, kv_error *err) {
    redis_url u;
    if (redis_url_parse(cfg->url, &u, err)) return NULL;
    redis_store *r = kv_calloc(1, sizeof *r);
    r->base.ops = &redis_store_ops;
    r->url = u;
    r->block_bytes = cfg->block_bytes;
    r->ns = cfg->ns;
    int ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 1000;
    r->io = (rs_conn){.backoff = 0.1, .tv = tv_of(ms)};
    r->eng = (rs_conn){.backoff = 0.1, .tv = tv_of(ms / 5 > 5 ? ms / 5 : 5)};
    char ns_hex[65];
    for (int i = 0; i < 32; i++) snprintf(ns_hex + 2 * i, 3, "%02x", cfg->ns.b[i]);
    snprintf(r->prefix, sizeof r->prefix, "kvserve:%s:", ns_hex);
    r->value = kv_malloc(KV_BLOCK_HEADER_BYTES + cfg->block_bytes);
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->io_lock, NULL);
    return &r->base;
}
