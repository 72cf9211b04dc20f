/* The step after scheduling (DESIGN.md "Engine loop", steps 4-7): the batch of every scheduled
 * request's new tokens, the forward pass, the prefix-cache registration and host-tier stores of
 * blocks that became full, then sampling: prompt-logprob events, one token event per request whose
 * last token was computed, and the end of requests that stop. */
#include <stdlib.h>

#include "server/engine/kv_events.h"
#include "server/engine/scheduler_internal.h"

static void sched_emit(sched_req *r, const engine_event *ev) {
    r->on_event(r->user, ev);
}

static void sched_fill_top(engine_event *ev, const sampler_logprobs *lp) {
    ev->logprob = lp->logprob;
    ev->n_top = lp->n_top;
    for (int i = 0; i < lp->n_top; i++) {
        ev->top_ids[i] = lp->top[i].token;
        ev->top_logprobs[i] = lp->top[i].logprob;
    }
}

/* Fills the batch arrays from s->b_reqs[0, n_seqs) and their n_sched tokens. */
static void sched_build_batch(scheduler *s, int n_seqs, backend_batch *b) {
    int n_tok = 0, n_out = 0, max_blocks = 1;
    for (int i = 0; i < n_seqs; i++)
        if (s->b_reqs[i]->n_blocks > max_blocks) max_blocks = s->b_reqs[i]->n_blocks;
    size_t table_n = (size_t)n_seqs * (size_t)max_blocks;
    if (table_n > s->b_table_cap) {
        s->b_table_cap = table_n * 2;
        s->b_table = kv_realloc(s->b_table, s->b_table_cap * sizeof *s->b_table);
    }
    for (int i = 0; i < n_seqs; i++) {
        sched_req *r = s->b_reqs[i];
        int c = r->n_computed, end = c + r->n_sched;
        s->b_seq_start[i] = n_tok;
        s->b_out_first[i] = n_out;
        bool plp = r->params.prompt_logprobs >= 0;
        for (int p = c; p < end; p++) {
            s->b_tokens[n_tok] = r->tokens[p];
            s->b_positions[n_tok] = p;
            if (plp && p >= r->n_prompt_lp_sent && p < r->n_prompt - 1)
                s->b_out_rows[n_out++] = n_tok;
            n_tok++;
        }
        if (end == r->n_tokens) s->b_out_rows[n_out++] = n_tok - 1; /* the sampling row */
        s->b_seq_len[i] = end;
        KV_CHECK(sched_blocks_for(s, end) <= r->n_blocks);
        int32_t *row = s->b_table + (size_t)i * (size_t)max_blocks;
        memcpy(row, r->blocks, (size_t)r->n_blocks * sizeof *row);
        for (int j = r->n_blocks; j < max_blocks; j++) row[j] = 0;
    }
    s->b_seq_start[n_seqs] = n_tok;
    KV_CHECK(n_tok <= s->budget && n_out <= s->out_cap);
    *b = (backend_batch){.n_tokens = n_tok,
                         .n_seqs = n_seqs,
                         .tokens = s->b_tokens,
                         .positions = s->b_positions,
                         .seq_start = s->b_seq_start,
                         .seq_len = s->b_seq_len,
                         .block_table = s->b_table,
                         .max_blocks = max_blocks,
                         .n_out = n_out,
                         .out_rows = s->b_out_rows};
}

/* Registers r's blocks that are now full and computed in the prefix cache. A block whose hash is
 * already cached elsewhere (a twin computed at the same time, or a copied last block) stays
 * private. */
static void sched_register_full(scheduler *s, sched_req *r) {
    if (!s->cfg.enable_prefix_caching) return;
    int bs = s->pool.layout.block_size, n_full = r->n_computed / bs;
    sched_req_hash_upto(s, r, r->n_computed);
    for (int b = r->n_registered; b < n_full; b++)
        if (!block_pool_is_cached(&s->pool, r->blocks[b]) &&
            prefix_cache_insert(&s->pc, &r->hashes[b], r->tokens + b * bs, r->blocks[b]))
            kv_events_block_stored(s->cfg.events, "GPU", &r->hashes[b], 1,
                                   b > 0 ? &r->hashes[b - 1] : NULL, r->tokens + b * bs, bs);
    if (n_full > r->n_registered) r->n_registered = n_full;
}

/* Prompt-logprob events for r's rows of this step (rows from *row on). */
static void sched_prompt_logprobs(scheduler *s, sched_req *r, int c, int *row) {
    int lo = c > r->n_prompt_lp_sent ? c : r->n_prompt_lp_sent, hi = c + r->n_sched;
    if (hi > r->n_prompt - 1) hi = r->n_prompt - 1;
    if (lo >= hi) return;
    int n = hi - lo, n_top = r->params.prompt_logprobs, vocab = s->model->vocab;
    if (n_top > vocab) n_top = vocab;
    sampler_prompt_logprobs(s->logits + (size_t)*row * vocab, n, vocab, r->tokens + lo + 1, n_top,
                            s->lp);
    for (int i = 0; i < n; i++) {
        engine_event ev = {.token = r->tokens[lo + 1 + i], .is_prompt = true, .stop_token = -1};
        sched_fill_top(&ev, &s->lp[i]);
        sched_emit(r, &ev);
    }
    r->n_prompt_lp_sent = hi;
    *row += n;
}

/* Samples r's next token from its logits row; emits it, and ends r when it stops. Returns true
 * when r finished (and was freed). */
static bool sched_sample(scheduler *s, sched_req *r, float *row) {
    sampler_logprobs lp;
    bool want_lp = r->params.logprobs >= 0;
    int32_t tok = sampler_sample(&s->smp, &r->params, &r->st, row, want_lp ? &lp : NULL);
    if (tok == SAMPLER_NO_TOKEN) { /* never a silent unconstrained token */
        sched_list_remove(&s->running, r);
        sched_req_finish(s, r, -1, NULL, KV_FINISH_ABORT, -1,
                         "no token is allowed at this point: the structured-output constraint, "
                         "logit_bias and min_tokens together rule out every token");
        return true;
    }
    kv_finish f = sampler_check_finish(&s->smp, &r->params, &r->st, tok);
    KV_CHECK(r->n_tokens < r->cap);
    r->tokens[r->n_tokens++] = tok;
    s->st.n_generation_tokens++;

    kv_finish finish = KV_FINISH_NONE;
    int32_t stop_token = -1;
    if (f == KV_FINISH_STOP) {
        finish = KV_FINISH_STOP;
        stop_token = tok;
    } else if (f == KV_FINISH_LENGTH || r->n_tokens >= s->max_model_len) {
        finish = KV_FINISH_LENGTH;
    }
    if (finish != KV_FINISH_NONE) {
        sched_list_remove(&s->running, r);
        sched_req_finish(s, r, tok, want_lp ? &lp : NULL, finish, stop_token, NULL);
        return true;
    }
    engine_event ev = {.token = tok, .stop_token = -1};
    if (want_lp) sched_fill_top(&ev, &lp);
    sched_emit(r, &ev);
    return false;
}

void sched_run_batch(scheduler *s, int n_seqs) {
    backend_batch b;
    sched_build_batch(s, n_seqs, &b);
    backend_event *const *layer_ready = sched_tier_layer_ready(s);
    if (layer_ready)
        s->model->ops->forward_layers(s->model, &b, s->pool.base, &s->pool.layout, s->logits,
                                      layer_ready);
    else
        model_forward(s->model, &b, s->pool.base, &s->pool.layout, s->logits);
    /* the forward is queued: copied-from cached blocks may be recycled again */
    for (int i = 0; i < n_seqs; i++) {
        sched_req *r = s->b_reqs[i];
        if (r->cow_src >= 0) block_pool_unref(&s->pool, r->cow_src);
        r->cow_src = -1;
    }
    if (s->tier) {
        if (s->last_compute) s->model->be->ops->event_free(s->model->be, s->last_compute);
        s->last_compute = s->model->be->ops->event_record(s->model->be, BACKEND_STREAM_COMPUTE);
    }
    /* K/V are written: full blocks join the prefix cache, then the host tier (after the event) */
    int *c0 = kv_malloc((size_t)n_seqs * sizeof *c0);
    for (int i = 0; i < n_seqs; i++) {
        sched_req *r = s->b_reqs[i];
        c0[i] = r->n_computed;
        r->n_computed += r->n_sched;
        sched_register_full(s, r);
    }
    if (s->tier) sched_tier_store_new(s, n_seqs);
    /* sample; a request may finish (and be freed) here, so nothing reads b_reqs after */
    int vocab = s->model->vocab;
    for (int i = 0; i < n_seqs; i++) {
        sched_req *r = s->b_reqs[i];
        int row = s->b_out_first[i];
        if (r->params.prompt_logprobs >= 0) sched_prompt_logprobs(s, r, c0[i], &row);
        if (r->n_computed == r->n_tokens) sched_sample(s, r, s->logits + (size_t)row * vocab);
    }
    free(c0);
}
