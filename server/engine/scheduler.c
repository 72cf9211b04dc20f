/* The engine's lifecycle and its edges: creation of the pool, prefix cache and sampler, the engine
 * thread, submit and cancel from other threads (an inbox under one mutex), finishing requests,
 * stats and metrics. The step itself is in scheduler_admit.c and scheduler_step.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "server/engine/kv_events.h"
#include "server/engine/scheduler_internal.h"

/* --- lists --- */

void sched_list_push(sched_list *l, sched_req *r) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->v = kv_realloc(l->v, (size_t)l->cap * sizeof *l->v);
    }
    l->v[l->n++] = r;
}

void sched_list_push_front(sched_list *l, sched_req *r) {
    sched_list_push(l, r);
    memmove(l->v + 1, l->v, (size_t)(l->n - 1) * sizeof *l->v);
    l->v[0] = r;
}

void sched_list_remove(sched_list *l, sched_req *r) {
    for (int i = 0; i < l->n; i++)
        if (l->v[i] == r) {
            memmove(l->v + i, l->v + i + 1, (size_t)(l->n - i - 1) * sizeof *l->v);
            l->n--;
            return;
        }
    KV_CHECK(!"request not in list");
}

/* --- model and config --- */

void scheduler_config_default(scheduler_config *c) {
    *c = (scheduler_config){.block_size = 16,
                            .max_num_seqs = 256,
                            .max_num_batched_tokens = 8192,
                            .max_queue = 4096,
                            .enable_prefix_caching = true,
                            .load_layer_groups = 4};
}

/* --- requests --- */

int sched_blocks_for(const scheduler *s, int n_tokens) {
    int bs = s->pool.layout.block_size;
    return (n_tokens + bs - 1) / bs;
}

void sched_req_hash_upto(scheduler *s, sched_req *r, int n_tokens) {
    int bs = s->pool.layout.block_size, n_full = n_tokens / bs;
    if (n_full <= r->n_hashed) return;
    if (n_full > r->hashes_cap) {
        r->hashes_cap = n_full + 8;
        r->hashes = kv_realloc(r->hashes, (size_t)r->hashes_cap * sizeof *r->hashes);
    }
    for (int i = r->n_hashed; i < n_full; i++)
        block_hash_next(&r->hashes[i], i ? &r->hashes[i - 1] : &r->root, r->tokens + i * bs, bs);
    r->n_hashed = n_full;
}

void sched_req_release_blocks(scheduler *s, sched_req *r) {
    block_pool_release(&s->pool, r->blocks, r->n_blocks);
    r->n_blocks = 0;
    r->n_registered = 0;
    r->n_stored = 0;
    if (r->cow_src >= 0) block_pool_unref(&s->pool, r->cow_src);
    r->cow_src = -1;
}

static void sched_req_free(sched_req *r) {
    sampler_params_free(&r->params);
    free(r->tokens), free(r->salt), free(r->blocks), free(r->hashes);
    free(r);
}

void sched_req_finish(scheduler *s, sched_req *r, int32_t token, const sampler_logprobs *lp,
                      kv_finish finish, int32_t stop_token, const char *error) {
    if (r->state == SCHED_REQ_LOADING) sched_tier_abandon(s, r);
    sched_req_release_blocks(s, r);
    if (!r->admitted_once) {
        pthread_mutex_lock(&s->lock);
        s->n_queued--;
        pthread_mutex_unlock(&s->lock);
    }
    engine_event ev = {.token = token,
                       .logprob = lp ? lp->logprob : 0.0f,
                       .finish = finish,
                       .stop_token = stop_token,
                       .error = error,
                       .n_prompt_tokens = r->n_prompt,
                       .n_cached_gpu = r->n_cached_gpu,
                       .n_cached_host = r->n_cached_host,
                       .n_cached_disk = r->n_cached_disk,
                       .n_cached_remote = r->n_cached_remote};
    if (lp) {
        ev.n_top = lp->n_top;
        for (int i = 0; i < lp->n_top; i++) {
            ev.top_ids[i] = lp->top[i].token;
            ev.top_logprobs[i] = lp->top[i].logprob;
        }
    }
    r->on_event(r->user, &ev);
    if (finish == KV_FINISH_ABORT)
        s->st.n_aborted++;
    else
        s->st.n_finished++;
    if (r->admitted_once) sampler_state_free(&r->st);
    sched_req_free(r);
}

/* --- KV events --- */

static void sched_on_gpu_evict(void *user, const block_hash *h) {
    scheduler *s = user;
    kv_events_block_removed(s->cfg.events, "GPU", h, 1);
}

/* --- creation --- */

scheduler *scheduler_create(model *model, const scheduler_config *cfg, kv_error *err) {
    if (cfg->n_gpu_blocks < 1)
        return kv_error_set(err, "scheduler: num_gpu_blocks must be at least 1"), NULL;
    if (cfg->block_size < 1 || (cfg->block_size & (cfg->block_size - 1)))
        return kv_error_set(err, "scheduler: block_size must be a power of two, got %d",
                            cfg->block_size),
               NULL;
    if (cfg->max_num_seqs < 1 || cfg->max_num_batched_tokens < 1 || cfg->max_queue < 1)
        return kv_error_set(err, "scheduler: max_num_seqs, max_num_batched_tokens and max_queue "
                                 "must be at least 1"),
               NULL;
    scheduler *s = kv_calloc(1, sizeof *s);
    s->model = model;
    s->cfg = *cfg;
    s->budget = cfg->max_num_batched_tokens < model->max_tokens ? cfg->max_num_batched_tokens
                                                                : model->max_tokens;
    s->max_model_len = cfg->max_model_len > 0 ? cfg->max_model_len : model->max_position;
    /* rows of logits: one per sequence plus the prompt-logprob rows, never more than tokens */
    s->out_cap = cfg->max_num_seqs + SCHED_PROMPT_LP_ROWS;
    if (s->out_cap > s->budget) s->out_cap = s->budget;

    backend_kv_layout l = model_kv_layout(model, cfg->block_size);
    block_pool_init(&s->pool, model->be, &l, cfg->n_gpu_blocks);
    prefix_cache_init(&s->pc, &s->pool);
    block_hash_namespace(&s->kv_ns, model->fingerprint, cfg->block_size);
    if (cfg->events) {
        s->pc.on_evict = sched_on_gpu_evict;
        s->pc.on_evict_user = s;
        kv_events_all_cleared(cfg->events); /* a new engine holds nothing (a restart) */
    }
    sampler_init(&s->smp, model->vocab, model->eos_ids, model->n_eos, cfg->seed);

    int T = s->budget, S = cfg->max_num_seqs;
    s->b_tokens = kv_malloc((size_t)T * sizeof(int32_t));
    s->b_positions = kv_malloc((size_t)T * sizeof(int32_t));
    s->b_out_rows = kv_malloc((size_t)T * sizeof(int32_t));
    s->b_seq_start = kv_malloc((size_t)(S + 1) * sizeof(int32_t));
    s->b_seq_len = kv_malloc((size_t)S * sizeof(int32_t));
    s->b_reqs = kv_malloc((size_t)S * sizeof *s->b_reqs);
    s->b_out_first = kv_malloc((size_t)S * sizeof(int));
    /* pinned when the backend can: logits then come back in one DMA copy, not through a
     * pageable bounce (1.5 ms instead of 0.7 ms for 64 rows of a 128K vocabulary on the H100) */
    size_t logits_bytes = (size_t)s->out_cap * (size_t)model->vocab * sizeof(float);
    s->logits = model->be->ops->host_alloc(model->be, logits_bytes);
    s->logits_pinned = s->logits != NULL;
    if (!s->logits) s->logits = kv_malloc(logits_bytes);
    s->lp = kv_malloc(SCHED_PROMPT_LP_ROWS * sizeof *s->lp);

    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_mutex_init(&s->stats_lock, NULL);
    s->st.n_blocks = cfg->n_gpu_blocks;
    s->snap = s->st;
    if (sched_tier_init(s, err)) {
        scheduler_free(s);
        return NULL;
    }
    return s;
}

static void *engine_main(void *arg);

void scheduler_start(scheduler *s) {
    KV_CHECK(!s->started);
    s->started = true;
    KV_CHECK(pthread_create(&s->thread, NULL, engine_main, s) == 0);
}

/* Ends every request the engine still holds, inbox included. */
static void sched_abort_all(scheduler *s, const char *why) {
    pthread_mutex_lock(&s->lock);
    sched_req *in = s->inbox_head;
    s->inbox_head = s->inbox_tail = NULL;
    pthread_mutex_unlock(&s->lock);
    for (sched_req *r = in, *next; r; r = next) {
        next = r->next;
        sched_req_finish(s, r, -1, NULL, KV_FINISH_ABORT, -1, why);
    }
    while (s->running.n) {
        sched_req *r = s->running.v[s->running.n - 1];
        s->running.n--;
        sched_req_finish(s, r, -1, NULL, KV_FINISH_ABORT, -1, why);
    }
    while (s->waiting.n) {
        sched_req *r = s->waiting.v[s->waiting.n - 1];
        s->waiting.n--;
        sched_req_finish(s, r, -1, NULL, KV_FINISH_ABORT, -1, why);
    }
}

void scheduler_free(scheduler *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
    sched_abort_all(s, "engine shutting down");
    sched_tier_free(s);
    prefix_cache_free(&s->pc);
    block_pool_free(&s->pool);
    sampler_free(&s->smp);
    free(s->running.v), free(s->waiting.v), free(s->cancels);
    free(s->b_tokens), free(s->b_positions), free(s->b_out_rows), free(s->b_seq_start);
    free(s->b_seq_len), free(s->b_reqs), free(s->b_out_first), free(s->b_table);
    if (s->logits_pinned)
        s->model->be->ops->host_free(s->model->be, s->logits);
    else
        free(s->logits);
    free(s->lp);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->stats_lock);
    free(s);
}

/* --- submit and cancel (any thread) --- */

engine_submit_status scheduler_submit(scheduler *s, const engine_request *req, uint64_t *id,
                                      kv_error *err) {
    int n = req->n_prompt, vocab = s->model->vocab;
    if (n < 1)
        return kv_error_set(err, "prompt: must hold at least one token"), ENGINE_SUBMIT_REJECTED;
    for (int i = 0; i < n; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= vocab)
            return kv_error_set(err,
                                "prompt: token id %d at index %d is outside the vocabulary (%d)",
                                req->prompt[i], i, vocab),
                   ENGINE_SUBMIT_REJECTED;
    if (n >= s->max_model_len)
        return kv_error_set(err,
                            "prompt: %d tokens leave no room to generate in this model's maximum "
                            "context length of %d tokens",
                            n, s->max_model_len),
               ENGINE_SUBMIT_REJECTED;
    if (sched_blocks_for(s, n + 1) > s->pool.n_blocks)
        return kv_error_set(err, "prompt: %d tokens do not fit in the KV cache (%d blocks of %d)",
                            n, s->pool.n_blocks, s->pool.layout.block_size),
               ENGINE_SUBMIT_REJECTED;
    if (sampler_params_validate(req->params, vocab, err)) return ENGINE_SUBMIT_REJECTED;

    sched_req *r = kv_calloc(1, sizeof *r);
    sampler_params_copy(&r->params, req->params);
    /* in 64 bits: max_tokens may be INT_MAX ("as many as fit") */
    long long limit = (long long)n + r->params.max_tokens;
    r->cap = (int)(limit < s->max_model_len ? limit : s->max_model_len) + 1;
    r->tokens = kv_malloc((size_t)r->cap * sizeof *r->tokens);
    memcpy(r->tokens, req->prompt, (size_t)n * sizeof *r->tokens);
    r->n_prompt = r->n_tokens = n;
    r->salt = req->cache_salt ? kv_strdup(req->cache_salt) : NULL;
    r->on_event = req->on_event;
    r->user = req->user;
    r->cow_src = -1;
    block_hash_root(&r->root, &s->kv_ns, r->salt);

    pthread_mutex_lock(&s->lock);
    if (s->n_queued >= s->cfg.max_queue) {
        pthread_mutex_unlock(&s->lock);
        sched_req_free(r);
        kv_error_set(err, "the engine's queue is full (%d requests waiting)", s->cfg.max_queue);
        return ENGINE_SUBMIT_BUSY;
    }
    r->id = ++s->next_id;
    *id = r->id;
    if (s->inbox_tail)
        s->inbox_tail->next = r;
    else
        s->inbox_head = r;
    s->inbox_tail = r;
    s->n_queued++;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    return ENGINE_SUBMIT_OK;
}

void scheduler_cancel(scheduler *s, uint64_t id) {
    pthread_mutex_lock(&s->lock);
    if (s->n_cancels == s->cancels_cap) {
        s->cancels_cap = s->cancels_cap ? 2 * s->cancels_cap : 16;
        s->cancels = kv_realloc(s->cancels, (size_t)s->cancels_cap * sizeof *s->cancels);
    }
    s->cancels[s->n_cancels++] = id;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
}

static engine_submit_status api_submit(void *ctx, const engine_request *req, uint64_t *id,
                                       kv_error *err) {
    return scheduler_submit(ctx, req, id, err);
}

static void api_cancel(void *ctx, uint64_t id) {
    scheduler_cancel(ctx, id);
}

server_engine scheduler_server_engine(scheduler *s) {
    return (server_engine){.ctx = s, .submit = api_submit, .cancel = api_cancel};
}

/* --- the step's edges --- */

/* Step 1: new requests join the waiting list; cancelled ones end with ABORT. */
static void sched_drain(scheduler *s) {
    pthread_mutex_lock(&s->lock);
    sched_req *in = s->inbox_head;
    s->inbox_head = s->inbox_tail = NULL;
    int n_cancels = s->n_cancels;
    uint64_t *cancels = NULL;
    if (n_cancels) {
        cancels = kv_malloc((size_t)n_cancels * sizeof *cancels);
        memcpy(cancels, s->cancels, (size_t)n_cancels * sizeof *cancels);
        s->n_cancels = 0;
    }
    pthread_mutex_unlock(&s->lock);
    for (sched_req *r = in, *next; r; r = next) {
        next = r->next;
        r->next = NULL;
        sched_list_push(&s->waiting, r);
    }
    for (int c = 0; c < n_cancels; c++) {
        sched_list *lists[2] = {&s->running, &s->waiting};
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < lists[k]->n; i++)
                if (lists[k]->v[i]->id == cancels[c]) {
                    sched_req *r = lists[k]->v[i];
                    sched_list_remove(lists[k], r);
                    sched_req_finish(s, r, -1, NULL, KV_FINISH_ABORT, -1, NULL);
                    k = 2;
                    break;
                }
    }
    free(cancels);
}

static void sched_publish(scheduler *s) {
    scheduler_stats *st = &s->st;
    st->n_running = st->n_loading = 0;
    for (int i = 0; i < s->running.n; i++) {
        if (s->running.v[i]->state == SCHED_REQ_LOADING)
            st->n_loading++;
        else
            st->n_running++;
    }
    st->n_waiting = s->waiting.n;
    st->n_blocks_in_use = block_pool_n_in_use(&s->pool);
    st->n_blocks_cached_free = s->pool.n_lru;
    st->n_blocks_free = s->pool.n_free;
    st->prefix_query_tokens = s->pc.n_query_tokens;
    st->prefix_hit_tokens = s->pc.n_hit_tokens;
    if (s->tier) {
        st->host = s->tier->ops->stats(s->tier);
        st->n_transfers_inflight = st->host.n_inflight;
        st->n_layered_loads = (int64_t)st->host.n_layered_loads;
    }
    metrics *m = s->cfg.metrics;
    if (m) {
        metrics_gauge_set(&m->num_requests_running, st->n_running);
        metrics_gauge_set(&m->num_requests_waiting, st->n_waiting + st->n_loading);
        metrics_gauge_set(&m->kv_cache_usage_perc, (double)st->n_blocks_in_use / st->n_blocks);
        if (s->tier) {
            metrics_counter_raise_to(&m->host_evictions, st->host.evictions);
            metrics_counter_raise_to(&m->host_stores_skipped, st->host.n_stores_skipped);
            for (int i = 0; i < st->host.n_stores; i++) {
                const kv_block_store_stats *b = &st->host.stores[i];
                metrics_store_tier *t =
                    strcmp(st->host.store_names[i], "disk") == 0 ? &m->disk : &m->remote;
                metrics_gauge_set(&t->usage_perc,
                                  b->bytes_limit ? (double)b->bytes_used / (double)b->bytes_limit
                                                 : 0.0);
                metrics_gauge_set(&t->blocks, (double)b->n_blocks);
                metrics_counter_raise_to(&t->hits, b->hits);
                metrics_counter_raise_to(&t->misses, b->misses);
                metrics_counter_raise_to(&t->rejected, b->n_rejected);
                metrics_counter_raise_to(&t->puts, b->n_put);
                metrics_counter_raise_to(&t->puts_failed, b->n_put_failed);
                metrics_counter_raise_to(&t->evictions, b->n_evicted);
                metrics_counter_raise_to(&t->errors, b->n_errors);
                metrics_counter_raise_to(&t->read_bytes, b->bytes_read);
                metrics_counter_raise_to(&t->written_bytes, b->bytes_written);
            }
        }
        if (s->tier && st->host.n_slots_total > 0)
            metrics_gauge_set(&m->host_cache_usage_perc,
                              (double)(st->host.n_valid + st->host.n_storing + st->host.n_loading) /
                                  st->host.n_slots_total);
    }
    pthread_mutex_lock(&s->stats_lock);
    s->snap = *st;
    pthread_mutex_unlock(&s->stats_lock);
}

bool scheduler_step(scheduler *s) {
    sched_drain(s);
    if (s->tier) sched_tier_poll(s);
    int n_seqs = sched_schedule(s);
    sched_tier_flush(s);
    if (n_seqs > 0) sched_run_batch(s, n_seqs);
    s->last_step_ran = n_seqs > 0;
    s->st.n_steps++;
    sched_publish(s);
    kv_events_flush(s->cfg.events);
    return n_seqs > 0 || s->running.n > 0 || s->waiting.n > 0 || sched_tier_busy(s);
}

void scheduler_run_until_idle(scheduler *s) {
    KV_CHECK(!s->started);
    for (;;) {
        bool busy = scheduler_step(s);
        pthread_mutex_lock(&s->lock);
        bool more = s->inbox_head || s->n_cancels;
        pthread_mutex_unlock(&s->lock);
        if (!busy && !more) return;
    }
}

/* The engine thread: sleeps on the condvar while idle, else steps. A step that ran no batch
 * (everyone waits for a transfer) naps 50 us instead of spinning on the event queries. */
static void *engine_main(void *arg) {
    scheduler *s = arg;
    bool busy = false;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (!s->stop && !busy && !s->inbox_head && !s->n_cancels)
            pthread_cond_wait(&s->wake, &s->lock);
        bool stop = s->stop;
        pthread_mutex_unlock(&s->lock);
        if (stop) break;
        busy = scheduler_step(s);
        if (busy && !s->last_step_ran) nanosleep(&(struct timespec){0, 50000}, NULL);
    }
    return NULL;
}

scheduler_stats scheduler_get_stats(scheduler *s) {
    pthread_mutex_lock(&s->stats_lock);
    scheduler_stats st = s->snap;
    pthread_mutex_unlock(&s->stats_lock);
    return st;
}

prefix_cache *scheduler_prefix_cache(scheduler *s) {
    return &s->pc;
}

void scheduler_check(scheduler *s) {
    block_pool_check(&s->pool);
    prefix_cache_check(&s->pc);
    int32_t *holders = kv_calloc((size_t)s->pool.n_blocks, sizeof *holders);
    for (int i = 0; i < s->running.n; i++) {
        sched_req *r = s->running.v[i];
        KV_CHECK(r->state != SCHED_REQ_WAITING);
        for (int b = 0; b < r->n_blocks; b++) holders[r->blocks[b]]++;
        KV_CHECK(r->n_computed <= r->n_blocks * s->pool.layout.block_size);
    }
    for (int i = 0; i < s->waiting.n; i++) {
        KV_CHECK(s->waiting.v[i]->state == SCHED_REQ_WAITING);
        KV_CHECK(s->waiting.v[i]->n_blocks == 0);
    }
    bool transfers = sched_tier_busy(s);
    for (int b = 0; b < s->pool.n_blocks; b++) {
        if (transfers)
            KV_CHECK(s->pool.ref[b] >= holders[b]);
        else
            KV_CHECK(s->pool.ref[b] == holders[b]);
    }
    free(holders);
    if (s->tier) s->tier->ops->check(s->tier);
}
