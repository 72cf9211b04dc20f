/* Scheduling one step (DESIGN.md "Engine loop", step 3): running requests first, in admission
 * order (one decode token each, or the next prefill chunk), then waiting requests in arrival order
 * while the token budget, max_num_seqs and the free blocks allow. A request that needs a block when
 * none is left preempts the newest running request, which releases its blocks and goes back to
 * the head of the waiting list; its tokens so far (prompt + generated) come back as a prefix,
 * served from the prefix cache or the host tier where they still are, recomputed otherwise.
 *
 * A full prefix hit (every token of the sequence in cached full blocks) computes only the last
 * token: the K/V of that token must be rewritten by the step that produces its logits, and the
 * block it lies in is shared, so the request takes a fresh block, copies the cached block into it
 * (one block_bytes device copy on the COMPUTE stream, ordered before the step's forward; the
 * source stays referenced until the forward is queued) and recomputes one token into its own
 * copy. Shared blocks are never written. */
#include <stdlib.h>

#include "server/engine/scheduler_internal.h"

/* Tokens of r to compute this step within budget, and the prompt-logprob rows they need within
 * extra_rows (*rows). 0 when the rows do not fit. */
static int sched_chunk(const sched_req *r, int budget, int extra_rows, int *rows) {
    int c = r->n_computed, n = r->n_tokens - c;
    if (n > budget) n = budget;
    *rows = 0;
    if (r->params.prompt_logprobs >= 0) {
        int lo = c > r->n_prompt_lp_sent ? c : r->n_prompt_lp_sent, hi = r->n_prompt - 1;
        if (lo < hi) {
            if (n > lo + extra_rows - c) n = lo + extra_rows - c;
            int end = c + n < hi ? c + n : hi;
            *rows = end > lo ? end - lo : 0;
        }
    }
    return n > 0 ? n : 0;
}

/* Appends n new blocks (the caller checked they are available). */
static void sched_req_grow(scheduler *s, sched_req *r, int n) {
    if (r->n_blocks + n > r->blocks_cap) {
        r->blocks_cap = (r->n_blocks + n) * 2;
        r->blocks = kv_realloc(r->blocks, (size_t)r->blocks_cap * sizeof *r->blocks);
    }
    KV_CHECK(block_pool_alloc_n(&s->pool, n, r->blocks + r->n_blocks) == 0);
    for (int i = 0; i < n; i++) sched_tier_block_used(s, r->blocks[r->n_blocks + i]);
    r->n_blocks += n;
}

static void sched_preempt(scheduler *s, sched_req *r) {
    if (r->state == SCHED_REQ_LOADING) sched_tier_abandon(s, r);
    sched_req_release_blocks(s, r);
    r->n_computed = 0;
    r->n_sched = 0;
    r->state = SCHED_REQ_WAITING;
    sched_list_remove(&s->running, r);
    sched_list_push_front(&s->waiting, r);
    s->st.n_preemptions++;
    if (s->cfg.metrics) metrics_counter_add(&s->cfg.metrics->num_preemptions, 1);
}

/* What admitting r would take, decided without touching the pool, the prefix cache or the tier
 * (sched_admit_plan), then done in one order (sched_admit_apply). */
typedef struct sched_admit_plan {
    int32_t *hits;   /* [n_hit] GPU prefix hits */
    int n_hit;       /* leading full blocks found in the GPU prefix cache */
    int n_evictable; /* of the hits, how many are CACHED (ref 0) and so count against can_alloc */
    bool cow;        /* every token hit: copy the last hit block and recompute its last token */
    int n_shared;    /* hits shared as they are (cow: all but the last) */
    int n_host;      /* blocks after the hits found in the host tier */
    int by_medium[KV_TIER_N_MEDIA]; /* of them, in host memory, on disk, remote */
    bool layered; /* the host load runs by layer groups and r computes in this step */
    int n_ready;  /* tokens whose K/V will be in blocks once loads are done */
    int n_new;    /* tokens to compute in this step (0 while loading) */
    int rows;     /* prompt-logprob rows they need */
    int n_total;  /* blocks r will hold */
    int n_alloc;  /* of them, new blocks */
} sched_admit_plan;

/* Side-effect free: false when r's blocks or first chunk do not fit. */
static bool sched_admit_plan_make(scheduler *s, sched_req *r, int budget, int extra_rows,
                                  sched_admit_plan *p) {
    int bs = s->pool.layout.block_size;
    int n_full = r->n_tokens / bs;
    /* prompt logprobs need every prompt row computed: such a request skips the cache until they
     * are all sent (as vLLM does) */
    bool lookup = s->cfg.enable_prefix_caching &&
                  !(r->params.prompt_logprobs >= 0 && r->n_prompt_lp_sent < r->n_prompt - 1);
    if (lookup && n_full > 0)
        p->n_hit =
            prefix_cache_lookup(&s->pc, r->hashes, r->tokens, n_full, p->hits, &p->n_evictable);
    p->cow = p->n_hit > 0 && p->n_hit * bs == r->n_tokens;
    p->n_shared = p->cow ? p->n_hit - 1 : p->n_hit;
    if (lookup && !p->cow)
        p->n_host = sched_tier_count(s, r, p->n_hit, n_full - p->n_hit, p->by_medium);
    p->n_ready = p->cow ? r->n_tokens - 1 : (p->n_hit + p->n_host) * bs;
    if (p->n_ready == r->n_tokens) p->n_ready--; /* the host tier held every token */
    /* alone: computed in this step while its load runs by layer groups */
    p->layered = p->n_host > 0 && p->by_medium[KV_TIER_MEDIUM_HOST] == p->n_host &&
                 sched_tier_can_layer(s, r, p->n_host);
    if (p->n_host == 0 || p->layered) {
        int saved = r->n_computed;
        r->n_computed = p->n_ready;
        p->n_new = sched_chunk(r, budget, extra_rows, &p->rows);
        r->n_computed = saved;
        if (p->n_new == 0 && p->n_host == 0) return false;
        p->layered = p->layered && p->n_new > 0;
    }
    p->n_total = sched_blocks_for(s, p->n_ready + p->n_new);
    if (p->n_total < p->n_hit + p->n_host) p->n_total = p->n_hit + p->n_host;
    p->n_alloc = p->n_total - p->n_shared;
    return block_pool_can_alloc(&s->pool, p->n_alloc + p->n_evictable);
}

/* The invariant "what the plan counted in the tier stays there until loaded" holds by
 * construction: nothing here stores into the tier (GPU-hit stores are only pended, queued at the
 * next flush), and the load pins the counted blocks as it is queued (tier.h). */
static void sched_admit_apply(scheduler *s, sched_req *r, const sched_admit_plan *p) {
    for (int i = 0; i < p->n_hit; i++) {
        block_pool_ref(&s->pool, p->hits[i]);
        sched_tier_block_used(s, p->hits[i]);
    }
    if (r->blocks_cap < p->n_total) {
        r->blocks_cap = p->n_total + 4;
        r->blocks = kv_realloc(r->blocks, (size_t)r->blocks_cap * sizeof *r->blocks);
    }
    memcpy(r->blocks, p->hits, (size_t)p->n_shared * sizeof *p->hits);
    r->n_blocks = p->n_shared;
    r->n_registered = p->n_hit;
    r->n_stored = 0;
    for (int i = 0; i < p->n_shared; i++) sched_tier_gpu_hit(s, &r->hashes[i], p->hits[i]);
    sched_req_grow(s, r, p->n_alloc);
    if (p->cow) {
        int32_t src = p->hits[p->n_hit - 1], dst = r->blocks[p->n_shared];
        void *d = block_pool_ptr(&s->pool, dst);
        const void *sp = block_pool_ptr(&s->pool, src);
        size_t bytes = s->pool.layout.block_bytes;
        s->model->be->ops->copy_async(s->model->be, BACKEND_STREAM_COMPUTE, 1, &d, &sp, &bytes);
        r->cow_src = src; /* released once the step's forward is queued */
        s->st.n_cow_copies++;
    }
    if (p->n_host > 0) sched_tier_load(s, r, p->n_hit, p->n_host, p->layered);
}

/* Takes r from the waiting list's head into the running list if its blocks and first chunk fit.
 * Returns false (nothing taken, no counter touched) when they do not. */
static bool sched_admit(scheduler *s, sched_req *r, int budget, int *extra_rows) {
    int bs = s->pool.layout.block_size;
    sched_req_hash_upto(s, r, r->n_tokens);
    int n_full = r->n_tokens / bs;
    /* on_evict stores go first: they may take host slots the plan would count */
    sched_tier_prepare_evict(s, sched_blocks_for(s, r->n_tokens) + 1);
    sched_admit_plan p = {
        .hits = kv_malloc(((size_t)n_full + 1) * sizeof *p.hits),
    };
    bool ok = sched_admit_plan_make(s, r, budget, *extra_rows, &p);
    if (ok) sched_admit_apply(s, r, &p);
    free(p.hits);
    if (!ok) return false;
    int n_hit = p.n_hit, n_ready = p.n_ready, n_new = p.n_new, rows = p.rows;
    bool cow = p.cow;
    r->n_computed = n_ready;
    r->n_sched = n_new;
    *extra_rows -= rows;

    /* cache counters at every admission (a resumed request asks again, as in vLLM) */
    int gpu_tokens = cow ? r->n_tokens - 1 : n_hit * bs, host_tokens = n_ready - gpu_tokens;
    prefix_cache_record(&s->pc, r->n_tokens, gpu_tokens);
    if (s->tier) {
        s->st.host_query_tokens += r->n_tokens - gpu_tokens;
        s->st.host_hit_tokens += host_tokens;
    }
    metrics *m = s->cfg.metrics;
    if (m) {
        metrics_counter_add(&m->prefix_cache_queries, (uint64_t)r->n_tokens);
        metrics_counter_add(&m->prefix_cache_hits, (uint64_t)gpu_tokens);
        if (s->tier) {
            metrics_counter_add(&m->host_cache_queries, (uint64_t)(r->n_tokens - gpu_tokens));
            metrics_counter_add(&m->host_cache_hits, (uint64_t)host_tokens);
            metrics_counter_add(&m->disk.hit_tokens,
                                (uint64_t)p.by_medium[KV_TIER_MEDIUM_DISK] * bs);
            metrics_counter_add(&m->remote.hit_tokens,
                                (uint64_t)p.by_medium[KV_TIER_MEDIUM_REMOTE] * bs);
        }
    }
    if (!r->admitted_once) { /* what the request reports: its prompt tokens not recomputed */
        r->admitted_once = true;
        r->n_cached_gpu = gpu_tokens < r->n_prompt ? gpu_tokens : r->n_prompt;
        int tier_tokens = host_tokens;
        if (r->n_cached_gpu + tier_tokens > r->n_prompt)
            tier_tokens = r->n_prompt - r->n_cached_gpu;
        /* split by medium (the last block's token short of a full hit falls on any of them) */
        int remote = p.by_medium[KV_TIER_MEDIUM_REMOTE] * bs;
        r->n_cached_remote = remote < tier_tokens ? remote : tier_tokens;
        int disk = p.by_medium[KV_TIER_MEDIUM_DISK] * bs;
        r->n_cached_disk =
            disk < tier_tokens - r->n_cached_remote ? disk : tier_tokens - r->n_cached_remote;
        r->n_cached_host = tier_tokens - r->n_cached_remote - r->n_cached_disk;
        s->st.n_prompt_tokens += r->n_prompt;
        sampler_state_init(&s->smp, &r->st, &r->params, r->tokens, r->n_prompt);
        pthread_mutex_lock(&s->lock);
        s->n_queued--;
        pthread_mutex_unlock(&s->lock);
    }
    r->state = p.n_host > 0 && !p.layered ? SCHED_REQ_LOADING : SCHED_REQ_RUNNING;
    return true;
}

int sched_schedule(scheduler *s) {
    int budget = s->budget, extra_rows = SCHED_PROMPT_LP_ROWS, n = 0;
    bool preempted = false;
    for (int i = 0; i < s->running.n; i++) s->running.v[i]->n_sched = 0;

    for (int i = 0; i < s->running.n && budget > 0; i++) {
        sched_req *r = s->running.v[i];
        if (r->state != SCHED_REQ_RUNNING) continue; /* loading */
        int rows, n_new = sched_chunk(r, budget, extra_rows, &rows);
        if (n_new == 0) continue;
        int need = sched_blocks_for(s, r->n_computed + n_new) - r->n_blocks;
        if (need > 0) sched_tier_prepare_evict(s, need);
        if (need > 0 && !block_pool_can_alloc(&s->pool, need) &&
            block_pool_can_alloc(&s->pool, need - sched_tier_soon_free(s)))
            continue; /* blocks come back when on_evict stores finish: wait, do not preempt */
        while (need > 0 && !block_pool_can_alloc(&s->pool, need)) {
            sched_req *victim = s->running.v[s->running.n - 1];
            if (victim == r && (s->running.n == 1 || sched_tier_busy(s)))
                break; /* alone (or waiting for transfers to unpin blocks) */
            sched_preempt(s, victim);
            preempted = true;
            if (victim == r) break;
        }
        if (r->state != SCHED_REQ_RUNNING) break; /* r was the newest: nothing runs after it */
        if (need > 0 && !block_pool_can_alloc(&s->pool, need) && sched_tier_busy(s)) continue;
        if (need > 0 && !block_pool_can_alloc(&s->pool, need)) {
            /* the only request and the pool cannot hold it: end it rather than spin */
            sched_list_remove(&s->running, r);
            sched_req_finish(s, r, -1, NULL, KV_FINISH_ABORT, -1,
                             "the KV cache is too small for this request");
            i--;
            continue;
        }
        if (need > 0) sched_req_grow(s, r, need);
        r->n_sched = n_new;
        budget -= n_new;
        extra_rows -= rows;
        s->b_reqs[n++] = r;
    }

    /* admission: not in a step that had to preempt (the pool is short already) */
    while (!preempted && s->waiting.n > 0 && budget > 0 && s->running.n < s->cfg.max_num_seqs) {
        sched_req *r = s->waiting.v[0];
        if (!sched_admit(s, r, budget, &extra_rows)) break;
        sched_list_remove(&s->waiting, r);
        sched_list_push(&s->running, r);
        if (r->state == SCHED_REQ_RUNNING) {
            budget -= r->n_sched;
            s->b_reqs[n++] = r;
        }
    }
    return n;
}
