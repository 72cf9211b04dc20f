/* KV events: the msgpack encoding of one batch on the engine thread, a bounded queue of encoded
 * batches, and the publisher thread that owns the ZMQ socket. */
#include "server/engine/kv_events.h"

#include <msgpack.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

typedef struct ev_batch {
    msgpack_sbuffer buf;
    struct ev_batch *next;
} ev_batch;

struct kv_events {
    void *ctx, *pub;
    char *topic;
    bool map_format;
    int max_queue;
    /* the batch being built (engine thread) */
    msgpack_sbuffer events; /* the events' encodings, back to back */
    int n_events;
    /* queue to the publisher */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    ev_batch *head, *tail;
    int n_queued;
    bool stop;
    pthread_t thread;
    kv_events_stats st;
};

uint64_t kv_events_hash_int(const block_hash *h) {
    uint64_t v = 0;
    for (int i = 24; i < 32; i++) v = v << 8 | h->b[i];
    return v;
}

/* A field: its name first in map form. */
static void field(kv_events *ev, msgpack_packer *pk, const char *name) {
    if (ev->map_format) msgpack_pack_str_with_body(pk, name, strlen(name));
}

static void pack_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* The tag ("type" in map form) and the container of n fields. */
static void begin_event(kv_events *ev, msgpack_packer *pk, const char *tag, int n_fields) {
    if (ev->map_format) {
        msgpack_pack_map(pk, (size_t)n_fields + 1);
        pack_str(pk, "type");
    } else {
        msgpack_pack_array(pk, (size_t)n_fields + 1);
    }
    pack_str(pk, tag);
    ev->n_events++;
}

static void pack_hashes(msgpack_packer *pk, const block_hash *h, int n) {
    msgpack_pack_array(pk, (size_t)n);
    for (int i = 0; i < n; i++) msgpack_pack_uint64(pk, kv_events_hash_int(&h[i]));
}

void kv_events_block_stored(kv_events *ev, const char *medium, const block_hash *h, int n,
                            const block_hash *parent, const int32_t *tokens, int block_size) {
    if (!ev || n <= 0) return;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ev->events, msgpack_sbuffer_write);
    /* vLLM's field order; the later fields (extra_keys, group_idx, ...) have their defaults and
     * are omitted, as its omit_defaults encoder does */
    begin_event(ev, &pk, "BlockStored", 7);
    field(ev, &pk, "block_hashes");
    pack_hashes(&pk, h, n);
    field(ev, &pk, "parent_block_hash");
    if (parent)
        msgpack_pack_uint64(&pk, kv_events_hash_int(parent));
    else
        msgpack_pack_nil(&pk);
    field(ev, &pk, "token_ids");
    int n_tokens = tokens ? n * block_size : 0; /* lower tiers do not keep the token ids */
    msgpack_pack_array(&pk, (size_t)n_tokens);
    for (int i = 0; i < n_tokens; i++) msgpack_pack_int32(&pk, tokens[i]);
    field(ev, &pk, "block_size");
    msgpack_pack_int(&pk, block_size);
    field(ev, &pk, "lora_id");
    msgpack_pack_nil(&pk);
    field(ev, &pk, "medium");
    pack_str(&pk, medium);
    field(ev, &pk, "lora_name");
    msgpack_pack_nil(&pk);
}

void kv_events_block_removed(kv_events *ev, const char *medium, const block_hash *h, int n) {
    if (!ev || n <= 0) return;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ev->events, msgpack_sbuffer_write);
    begin_event(ev, &pk, "BlockRemoved", 2);
    field(ev, &pk, "block_hashes");
    pack_hashes(&pk, h, n);
    field(ev, &pk, "medium");
    pack_str(&pk, medium);
}

void kv_events_all_cleared(kv_events *ev) {
    if (!ev) return;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &ev->events, msgpack_sbuffer_write);
    begin_event(ev, &pk, "AllBlocksCleared", 0);
}

void kv_events_flush(kv_events *ev) {
    if (!ev || ev->n_events == 0) return;
    ev_batch *b = kv_calloc(1, sizeof *b);
    msgpack_sbuffer_init(&b->buf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b->buf, msgpack_sbuffer_write);
    /* EventBatch: [ts, events, data_parallel_rank] */
    msgpack_pack_array(&pk, 3);
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    msgpack_pack_double(&pk, (double)t.tv_sec + (double)t.tv_nsec * 1e-9);
    msgpack_pack_array(&pk, (size_t)ev->n_events);
    msgpack_sbuffer_write(&b->buf, ev->events.data, ev->events.size);
    msgpack_pack_int(&pk, 0);
    msgpack_sbuffer_clear(&ev->events);
    pthread_mutex_lock(&ev->lock);
    ev->st.n_events += (uint64_t)ev->n_events;
    ev->n_events = 0;
    if (ev->n_queued >= ev->max_queue) {
        ev->st.n_batches_dropped++;
        pthread_mutex_unlock(&ev->lock);
        msgpack_sbuffer_destroy(&b->buf);
        free(b);
        return;
    }
    if (ev->tail)
        ev->tail->next = b;
    else
        ev->head = b;
    ev->tail = b;
    ev->n_queued++;
    pthread_cond_signal(&ev->wake);
    pthread_mutex_unlock(&ev->lock);
}

static void *pub_main(void *arg) {
    kv_events *ev = arg;
    uint64_t seq = 0;
    pthread_mutex_lock(&ev->lock);
    for (;;) {
        while (!ev->head && !ev->stop) pthread_cond_wait(&ev->wake, &ev->lock);
        ev_batch *b = ev->head;
        if (!b) break; /* stopping, nothing left */
        if (!(ev->head = b->next)) ev->tail = NULL;
        ev->n_queued--;
        pthread_mutex_unlock(&ev->lock);
        uint8_t seq_be[8];
        for (int i = 0; i < 8; i++) seq_be[i] = (uint8_t)(seq >> (56 - 8 * i));
        seq++;
        bool ok = zmq_send(ev->pub, ev->topic, strlen(ev->topic), ZMQ_SNDMORE) >= 0 &&
                  zmq_send(ev->pub, seq_be, 8, ZMQ_SNDMORE) >= 0 &&
                  zmq_send(ev->pub, b->buf.data, b->buf.size, 0) >= 0;
        msgpack_sbuffer_destroy(&b->buf);
        free(b);
        pthread_mutex_lock(&ev->lock);
        if (ok)
            ev->st.n_batches_sent++;
        else
            ev->st.n_send_errors++;
    }
    pthread_mutex_unlock(&ev->lock);
    return NULL;
}

kv_events *kv_events_create(const kv_events_config *cfg, kv_error *err) {
    const char *ep = cfg->endpoint;
    if (!ep || !*ep) return kv_error_set(err, "kv_events.endpoint is empty"), NULL;
    kv_events *ev = kv_calloc(1, sizeof *ev);
    ev->ctx = zmq_ctx_new();
    ev->pub = zmq_socket(ev->ctx, ZMQ_PUB);
    int hwm = 100000, linger = 1000;
    zmq_setsockopt(ev->pub, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(ev->pub, ZMQ_LINGER, &linger, sizeof linger);
    /* vLLM's rule: bind a wildcard, ipc:// or inproc://; connect anything else */
    bool bind = strchr(ep, '*') || strstr(ep, "::") || !strncmp(ep, "ipc://", 6) ||
                !strncmp(ep, "inproc://", 9);
    if ((bind ? zmq_bind(ev->pub, ep) : zmq_connect(ev->pub, ep)) != 0) {
        kv_error_set(err, "kv_events.endpoint %s: cannot %s: %s", ep, bind ? "bind" : "connect",
                     zmq_strerror(zmq_errno()));
        zmq_close(ev->pub);
        zmq_ctx_term(ev->ctx);
        free(ev);
        return NULL;
    }
    ev->topic = kv_strdup(cfg->topic ? cfg->topic : "");
    ev->map_format = cfg->map_format;
    ev->max_queue = cfg->max_queue > 0 ? cfg->max_queue : 1024;
    msgpack_sbuffer_init(&ev->events);
    pthread_mutex_init(&ev->lock, NULL);
    pthread_cond_init(&ev->wake, NULL);
    KV_CHECK(pthread_create(&ev->thread, NULL, pub_main, ev) == 0);
    return ev;
}

void kv_events_free(kv_events *ev) {
    if (!ev) return;
    kv_events_flush(ev);
    pthread_mutex_lock(&ev->lock);
    ev->stop = true;
    pthread_cond_signal(&ev->wake);
    pthread_mutex_unlock(&ev->lock);
    pthread_join(ev->thread, NULL);
    zmq_close(ev->pub);
    zmq_ctx_term(ev->ctx);
    msgpack_sbuffer_destroy(&ev->events);
    pthread_cond_destroy(&ev->wake);
    pthread_mutex_destroy(&ev->lock);
    free(ev->topic);
    free(ev);
}

kv_events_stats kv_events_get_stats(kv_events *ev) {
    kv_events_stats st = {0};
    if (!ev) return st;
    pthread_mutex_lock(&ev->lock);
    st = ev->st;
    pthread_mutex_unlock(&ev->lock);
    return st;
}
