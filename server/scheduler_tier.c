/* The engine's side of the host tier (offload/): lookups after GPU prefix hits, loads on the LOAD
 * stream, stores of full blocks on the STORE stream, and polling of both. */
#include "server/scheduler_internal.h"

int sched_tier_init(scheduler *s, kv_error *err) {
    if (s->cfg.offload.size_gib > 0) return kv_error_set(err, "offload: not available yet");
    return 0;
}
void sched_tier_free(scheduler *s) {}
void sched_tier_poll(scheduler *s) {}
int sched_tier_lookup(scheduler *s, sched_req *r, int first_block, int max_blocks, int32_t *slots) {
    return 0;
}
void sched_tier_load(scheduler *s, sched_req *r, int first, int n, const int32_t *slots) {}
void sched_tier_store_new(scheduler *s, int n_seqs) {}
void sched_tier_on_evict(void *ctx, const block_hash *h, int block_id) {}
void sched_tier_gpu_hit(scheduler *s, const block_hash *h, int block_id) {}
bool sched_tier_busy(const scheduler *s) { return false; }
void sched_tier_abandon(scheduler *s, sched_req *r) {}
