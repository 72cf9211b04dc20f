/* KV events in vLLM's wire format (vllm/distributed/kv_events.py), for routers that route by
 * prefix (llm-d, NVIDIA Dynamo): BlockStored / BlockRemoved / AllBlocksCleared per medium
 * ("GPU", "CPU", "DISK"), batched per engine step into an EventBatch [ts, events,
 * data_parallel_rank], msgpack-encoded, sent on a ZMQ PUB socket as [topic, seq (u64 big endian),
 * payload]. Events are tagged arrays (vLLM's array_like structs: ["BlockStored", block_hashes,
 * parent_block_hash, token_ids, block_size, lora_id, medium, lora_name]) or, with map_format,
 * tagged maps ({"type": "BlockStored", "block_hashes": ...}, vLLM's newer encoding). Block hashes
 * are vLLM's integer form: the last 8 bytes of the 32-byte hash, big endian, as an unsigned int.
 *
 * Threads: the engine thread adds events and ends batches; a publisher thread sends them. The
 * queue between them is bounded: a batch that finds it full is dropped and counted, so a slow
 * subscriber or network never blocks the engine. */
#ifndef KVSERVE_KV_EVENTS_H
#define KVSERVE_KV_EVENTS_H

#include <stdbool.h>
#include <stdint.h>

#include "kvcache/prefix_cache.h"
#include "model/common.h"

typedef struct kv_events kv_events;

typedef struct kv_events_config {
    const char *endpoint; /* bound with a * host or ipc://, else connected (vLLM's rule) */
    const char *topic;    /* NULL = "" (vLLM's default) */
    int max_queue;        /* batches waiting for the publisher; 0 = 1024 */
    bool map_format;      /* events as tagged maps instead of tagged arrays */
} kv_events_config;

typedef struct kv_events_stats {
    uint64_t n_events, n_batches_sent, n_batches_dropped, n_send_errors;
} kv_events_stats;

/* Binds or connects the socket and starts the publisher. NULL and err set when the endpoint is
 * refused by ZMQ. */
kv_events *kv_events_create(const kv_events_config *cfg, kv_error *err);
/* Sends what is queued (briefly), stops the thread, closes the socket. NULL is a no-op. */
void kv_events_free(kv_events *ev);

/* --- engine thread: events of the current batch --- */
/* n blocks with hashes h[0..n) of block_size tokens each (tokens[0 .. n * block_size), or NULL:
 * token_ids empty, for the lower tiers), the first one's parent being *parent (NULL: the first
 * block of a sequence, or not known). */
void kv_events_block_stored(kv_events *ev, const char *medium, const block_hash *h, int n,
                            const block_hash *parent, const int32_t *tokens, int block_size);
void kv_events_block_removed(kv_events *ev, const char *medium, const block_hash *h, int n);
void kv_events_all_cleared(kv_events *ev);
/* Ends the batch (if it holds events) and queues it for the publisher; never blocks. */
void kv_events_flush(kv_events *ev);

kv_events_stats kv_events_get_stats(kv_events *ev);

/* vLLM's integer block hash of h. */
uint64_t kv_events_hash_int(const block_hash *h);

#endif
